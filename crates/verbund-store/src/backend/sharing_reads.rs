//! Part of the `backend!` instantiation (see `lib.rs`): reads of shares, rules and the candidate records sharing needs.
//! A macro so that the SQL is written once for SQLite and PostgreSQL.

macro_rules! backend_sharing_reads {
    ($db:ty, $pool:ty, $begin:expr, $savepoints:expr) => {
        const SHARE_COLUMNS: &str = "id, record_id, kind, org, profile, created_at_ms, created_by";

        fn share_row(r: &<$db as sqlx::Database>::Row) -> Result<Share> {
            let id: String = r.try_get("id")?;
            let record_id: String = r.try_get("record_id")?;
            let kind: String = r.try_get("kind")?;
            Ok(Share {
                id: Uuid::parse_str(&id).map_err(|e| StoreError::Corrupt(e.to_string()))?,
                record_id: Uuid::parse_str(&record_id).map_err(|e| StoreError::Corrupt(e.to_string()))?,
                kind: kind_from_db(&kind)?,
                org: r.try_get("org")?,
                profile: r.try_get("profile")?,
                created_at_ms: r.try_get("created_at_ms")?,
                created_by: r.try_get("created_by")?,
            })
        }

        pub async fn list_shares(pool: &$pool, org: Option<&str>, record_id: Option<Uuid>) -> Result<Vec<Share>> {
            let mut qb: QueryBuilder<$db> = QueryBuilder::new("SELECT id, record_id, kind, org, profile, created_at_ms, created_by FROM shares WHERE 1 = 1");
            if let Some(org) = org {
                qb.push(" AND org = ").push_bind(org.to_string());
            }
            if let Some(id) = record_id {
                qb.push(" AND record_id = ").push_bind(id.to_string());
            }
            qb.push(" ORDER BY id");
            let rows = qb.build().fetch_all(pool).await?;
            rows.iter().map(share_row).collect()
        }

        /// The shares of these records with `org`.
        pub async fn shares_of_records(pool: &$pool, org: &str, ids: &[Uuid]) -> Result<Vec<Share>> {
            let mut out = Vec::new();
            for chunk in ids.chunks(500) {
                let mut qb: QueryBuilder<$db> = QueryBuilder::new("SELECT ");
                qb.push(SHARE_COLUMNS).push(" FROM shares WHERE org = ").push_bind(org.to_string()).push(" AND record_id IN (");
                let mut sep = qb.separated(", ");
                for id in chunk {
                    sep.push_bind(id.to_string());
                }
                qb.push(")");
                for r in qb.build().fetch_all(pool).await? {
                    out.push(share_row(&r)?);
                }
            }
            Ok(out)
        }

        pub async fn list_share_rules(pool: &$pool, org: Option<&str>) -> Result<Vec<ShareRule>> {
            let mut qb: QueryBuilder<$db> = QueryBuilder::new("SELECT id, org, rule, profile, created_at_ms, created_by FROM share_rules WHERE 1 = 1");
            if let Some(org) = org {
                qb.push(" AND org = ").push_bind(org.to_string());
            }
            qb.push(" ORDER BY id");
            let rows = qb.build().fetch_all(pool).await?;
            rows.iter()
                .map(|r| {
                    let id: String = r.try_get("id")?;
                    let rule: String = r.try_get("rule")?;
                    Ok(ShareRule {
                        id: Uuid::parse_str(&id).map_err(|e| StoreError::Corrupt(e.to_string()))?,
                        org: r.try_get("org")?,
                        rule: RuleMatch::parse(&rule).ok_or_else(|| StoreError::Corrupt(format!("share rule {rule:?}")))?,
                        profile: r.try_get("profile")?,
                        created_at_ms: r.try_get("created_at_ms")?,
                        created_by: r.try_get("created_by")?,
                    })
                })
                .collect()
        }

        /// Live records whose indexed `column` is one of `ids`; `kind` narrows, `not_kind`
        /// excludes. The column is chosen by the caller from a fixed set, never from input.
        async fn live_by_column(pool: &$pool, column: RefColumn, ids: &[String], kind: Option<RecordKind>, not_kind: Option<RecordKind>) -> Result<Vec<Record>> {
            let mut out = Vec::new();
            for chunk in ids.chunks(500) {
                let mut qb: QueryBuilder<$db> = QueryBuilder::new("SELECT ");
                qb.push(RECORD_COLUMNS).push(" FROM records WHERE deleted_version IS NULL AND ").push(column.sql()).push(" IN (");
                let mut sep = qb.separated(", ");
                for id in chunk {
                    sep.push_bind(id.clone());
                }
                qb.push(")");
                if let Some(k) = kind {
                    qb.push(" AND kind = ").push_bind(k.as_str());
                }
                if let Some(k) = not_kind {
                    qb.push(" AND kind <> ").push_bind(k.as_str());
                }
                let rows = qb.build().fetch_all(pool).await?;
                for r in &rows {
                    out.push(record_row(r)?.into_record()?);
                }
            }
            Ok(out)
        }

        pub async fn records_of_accounts(pool: &$pool, ids: &[String]) -> Result<Vec<Record>> {
            live_by_column(pool, RefColumn::AccountId, ids, None, Some(RecordKind::Account)).await
        }

        pub async fn activities_related_to(pool: &$pool, ids: &[String]) -> Result<Vec<Record>> {
            live_by_column(pool, RefColumn::RelatedId, ids, Some(RecordKind::Activity), None).await
        }

        pub async fn cases_assigned_to(pool: &$pool, org: &str) -> Result<Vec<Record>> {
            live_by_column(pool, RefColumn::AssignedOrg, &[org.to_string()], Some(RecordKind::ServiceCase), None).await
        }

        /// Live accounts whose stored fields mention `"tag"`: a superset of the accounts
        /// carrying the tag, which the caller narrows with the share rule itself.
        pub async fn accounts_mentioning(pool: &$pool, tag: &str) -> Result<Vec<Record>> {
            let mut qb: QueryBuilder<$db> = QueryBuilder::new("SELECT ");
            qb.push(RECORD_COLUMNS)
                .push(" FROM records WHERE deleted_version IS NULL AND kind = 'account' AND fields LIKE ")
                .push_bind(like_pattern(&format!("\"{tag}\"")))
                .push(" ESCAPE '\\'");
            let rows = qb.build().fetch_all(pool).await?;
            rows.iter().map(|r| record_row(r)?.into_record()).collect()
        }

        /// What the snapshot change at `seq` is about (None: no snapshot there).
        pub async fn share_snapshot(pool: &$pool, seq: i64) -> Result<Option<ShareSnapshot>> {
            let Some(row) = sqlx::query("SELECT seq, rule_id, org, rule, removed FROM share_snapshots WHERE seq = $1")
                .bind(seq)
                .fetch_optional(pool)
                .await?
            else {
                return Ok(None);
            };
            let rule_id: String = row.try_get("rule_id")?;
            let rule: String = row.try_get("rule")?;
            Ok(Some(ShareSnapshot {
                seq: row.try_get("seq")?,
                rule_id: Uuid::parse_str(&rule_id).map_err(|e| StoreError::Corrupt(e.to_string()))?,
                org: row.try_get("org")?,
                rule: RuleMatch::parse(&rule).ok_or_else(|| StoreError::Corrupt(format!("share snapshot rule {rule}")))?,
                removed: row.try_get("removed")?,
            }))
        }

        /// The next `limit` live records after `after` (by id; empty: from the start) that
        /// `rule` may match for `org`: a superset, which the caller narrows with the rule.
        /// One batch of records at a time.
        pub async fn rule_members_after(pool: &$pool, org: &str, rule: &RuleMatch, after: &str, limit: i64) -> Result<Vec<Record>> {
            // Whole rows: the snapshot sends them, and the scan reads them anyway; reading
            // them again by id cost the owner a second read of every record shared.
            let mut qb: QueryBuilder<$db> = QueryBuilder::new("SELECT ");
            qb.push(RECORD_COLUMNS);
            match rule {
                RuleMatch::CaseAssigned => {
                    qb.push(" FROM records WHERE kind = 'service_case' AND assigned_org = ").push_bind(org.to_string());
                }
                RuleMatch::AccountTag(tag) => {
                    qb.push(" FROM records WHERE kind = 'account' AND fields LIKE ")
                        .push_bind(like_pattern(&format!("\"{tag}\"")))
                        .push(" ESCAPE '\\'");
                }
            }
            qb.push(" AND deleted_version IS NULL AND id > ").push_bind(after.to_string()).push(" ORDER BY id LIMIT ").push_bind(limit);
            let rows = qb.build().fetch_all(pool).await?;
            rows.iter().map(|r| record_row(r)?.into_record()).collect()
        }
    };
}
