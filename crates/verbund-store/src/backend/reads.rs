//! Part of the `backend!` instantiation (see `lib.rs`): reads of records, the change log, the audit log and partners.
//! A macro so that the SQL is written once for SQLite and PostgreSQL.

macro_rules! backend_reads {
    ($db:ty, $pool:ty, $begin:expr, $savepoints:expr) => {
        pub async fn list_audit(pool: &$pool, q: &AuditQuery) -> Result<Vec<AuditEntry>> {
            let mut qb: QueryBuilder<$db> = QueryBuilder::new(
                "SELECT seq, at_ms, principal, org, action, kind, record_id, fields, decision, reason, prev_hash, hash FROM audit_log WHERE seq > ",
            );
            qb.push_bind(q.after_seq);
            if let Some(org) = &q.org {
                qb.push(" AND org = ").push_bind(org.clone());
            }
            if let Some(id) = &q.record_id {
                qb.push(" AND record_id = ").push_bind(id.clone());
            }
            if let Some(t) = q.since_ms {
                qb.push(" AND at_ms >= ").push_bind(t);
            }
            if let Some(t) = q.until_ms {
                qb.push(" AND at_ms < ").push_bind(t);
            }
            qb.push(" ORDER BY seq LIMIT ").push_bind(q.limit);
            let rows = qb.build().fetch_all(pool).await?;
            rows.iter()
                .map(|r| {
                    let fields: String = r.try_get("fields")?;
                    Ok(AuditEntry {
                        seq: r.try_get("seq")?,
                        draft: AuditDraft {
                            at_ms: r.try_get("at_ms")?,
                            principal: r.try_get("principal")?,
                            org: r.try_get("org")?,
                            action: r.try_get("action")?,
                            kind: r.try_get("kind")?,
                            record_id: r.try_get("record_id")?,
                            // A mangled list stays visible to verification as a mismatch.
                            fields: serde_json::from_str(&fields).unwrap_or_else(|_| vec![fields.clone()]),
                            decision: r.try_get("decision")?,
                            reason: r.try_get("reason")?,
                        },
                        prev_hash: r.try_get("prev_hash")?,
                        hash: r.try_get("hash")?,
                    })
                })
                .collect()
        }

        pub async fn audit_head(pool: &$pool) -> Result<(i64, String)> {
            let row = sqlx::query("SELECT seq, hash FROM audit_head WHERE id = 1").fetch_one(pool).await?;
            Ok((row.try_get("seq")?, row.try_get("hash")?))
        }

        /// Reads of records on one connection, from the pool or holding the writer's
        /// transaction (`Tx` derefs to it): `RecordReads` for this database's connection.
        pub async fn record_on(conn: &mut <$db as sqlx::Database>::Connection, id: Uuid) -> Result<Option<Record>> {
            let row = sqlx::query("SELECT id, kind, owner_org, created_at_ms, updated_at_ms, deleted_version, seq, fields, versions FROM records WHERE id = $1")
                .bind(id.to_string())
                .fetch_optional(&mut *conn)
                .await?;
            row.map(|r| record_row(&r)?.into_record()).transpose()
        }

        pub async fn records_on(conn: &mut <$db as sqlx::Database>::Connection, ids: &[Uuid]) -> Result<Vec<Record>> {
            let mut out = Vec::with_capacity(ids.len());
            // Bounded statements: SQLite limits the number of bound parameters.
            for chunk in ids.chunks(500) {
                let mut qb: QueryBuilder<$db> = QueryBuilder::new("SELECT ");
                qb.push(RECORD_COLUMNS).push(" FROM records WHERE id IN (");
                let mut sep = qb.separated(", ");
                for id in chunk {
                    sep.push_bind(id.to_string());
                }
                qb.push(")");
                for r in qb.build().fetch_all(&mut *conn).await? {
                    out.push(record_row(&r)?.into_record()?);
                }
            }
            Ok(out)
        }

        pub async fn get(pool: &$pool, id: Uuid) -> Result<Option<Record>> {
            pool.acquire().await?.record(id).await
        }

        pub async fn get_many(pool: &$pool, ids: &[Uuid]) -> Result<Vec<Record>> {
            if ids.is_empty() {
                return Ok(Vec::new());
            }
            pool.acquire().await?.records(ids).await
        }

        pub async fn list(pool: &$pool, q: &ListQuery) -> Result<Vec<Record>> {
            let mut qb: QueryBuilder<$db> = QueryBuilder::new("SELECT ");
            qb.push(RECORD_COLUMNS).push(" FROM records WHERE 1 = 1");
            if let Some(kind) = q.kind {
                qb.push(" AND kind = ").push_bind(kind.as_str());
            }
            // Column names are the static names of `FilterColumns`, never input.
            for (column, value) in q.filter.columns() {
                if let Some(v) = value {
                    qb.push(" AND ").push(column).push(" = ").push_bind(v.to_string());
                }
            }
            if let Some(since) = q.updated_since_ms {
                qb.push(" AND updated_at_ms >= ").push_bind(since);
            }
            if !q.show_deleted {
                qb.push(" AND deleted_version IS NULL");
            }
            if let Some(after) = &q.after_id {
                qb.push(" AND id > ").push_bind(after.clone());
            }
            qb.push(" ORDER BY id LIMIT ").push_bind(q.limit);
            let rows = qb.build().fetch_all(pool).await?;
            rows.iter().map(|r| record_row(r)?.into_record()).collect()
        }

        pub async fn search(pool: &$pool, q: &SearchQuery) -> Result<Vec<Record>> {
            let mut qb: QueryBuilder<$db> = QueryBuilder::new("SELECT ");
            qb.push(RECORD_COLUMNS).push(" FROM records WHERE deleted_version IS NULL AND (1 = 0");
            for n in &q.needles {
                qb.push(" OR search_text LIKE ").push_bind(like_pattern(n)).push(" ESCAPE '\\'");
            }
            qb.push(")");
            if !q.kinds.is_empty() {
                qb.push(" AND kind IN (");
                let mut sep = qb.separated(", ");
                for k in &q.kinds {
                    sep.push_bind(k.as_str());
                }
                qb.push(")");
            }
            if let Some(after) = &q.after_id {
                qb.push(" AND id > ").push_bind(after.clone());
            }
            qb.push(" ORDER BY id LIMIT ").push_bind(q.limit);
            let rows = qb.build().fetch_all(pool).await?;
            rows.iter().map(|r| record_row(r)?.into_record()).collect()
        }

        pub async fn changes_after(pool: &$pool, after_seq: i64, kinds: &[RecordKind], limit: i64) -> Result<Vec<Change>> {
            let mut qb: QueryBuilder<$db> = QueryBuilder::new("SELECT seq, record_id, kind, op, hlc, fields, at_ms FROM changes WHERE seq > ");
            qb.push_bind(after_seq);
            if !kinds.is_empty() {
                qb.push(" AND kind IN (");
                let mut sep = qb.separated(", ");
                for k in kinds {
                    sep.push_bind(k.as_str());
                }
                qb.push(")");
            }
            qb.push(" ORDER BY seq LIMIT ").push_bind(limit);
            let rows = qb.build().fetch_all(pool).await?;
            rows.iter().map(change_from_row).collect()
        }

        /// A change-log row as read (columns seq, record_id, kind, op, hlc, fields, at_ms).
        fn change_from_row(r: &<$db as sqlx::Database>::Row) -> Result<Change> {
            ChangeRow {
                seq: r.try_get("seq")?,
                record_id: r.try_get("record_id")?,
                kind: r.try_get("kind")?,
                op: r.try_get("op")?,
                hlc: r.try_get("hlc")?,
                fields: r.try_get("fields")?,
                at_ms: r.try_get("at_ms")?,
            }
            .into_change()
        }

        /// `changes_after` for the sync stream of `org`, in the window `(after_seq, upto]`:
        /// also the ids among them of records another organization owns (our replicas of
        /// theirs), found in the same query. Another owner's record without any record
        /// hanging off it is left out in SQL (nothing of it can bear on what we share): a
        /// partner's apply fills the change log with them, and reading each back cost more
        /// than applying it. Those that brought the record here first are passed by on
        /// their `first_foreign` mark, without a look-up. Returns how far the window was
        /// looked through: the last change returned when `limit` were, else `upto`.
        pub async fn stream_changes_after(pool: &$pool, after_seq: i64, upto: i64, org: &str, limit: i64) -> Result<StreamChanges> {
            let rows = sqlx::query(
                // Another owner's record: its values are not read (nothing of it is sent on).
                "SELECT c.seq, c.record_id, c.kind, c.op, c.hlc, \
                 CASE WHEN r.owner_org IS NOT NULL AND r.owner_org <> $3 THEN '{}' ELSE c.fields END AS fields, c.at_ms, r.owner_org \
                 FROM changes c LEFT JOIN records r ON r.id = c.record_id WHERE c.seq > $1 AND c.seq <= $4 AND NOT c.first_foreign \
                 AND (r.owner_org IS NULL OR r.owner_org = $3 \
                   OR EXISTS (SELECT 1 FROM records d WHERE d.account_id = c.record_id AND d.kind <> 'account' AND d.deleted_version IS NULL) \
                   OR EXISTS (SELECT 1 FROM records d WHERE d.contact_id = c.record_id AND d.deleted_version IS NULL) \
                   OR EXISTS (SELECT 1 FROM records d WHERE d.related_id = c.record_id AND d.deleted_version IS NULL)) \
                 ORDER BY c.seq LIMIT $2",
            )
            .bind(after_seq)
            .bind(limit)
            .bind(org)
            .bind(upto)
            .fetch_all(pool)
            .await?;
            let mut changes = Vec::with_capacity(rows.len());
            let mut foreign = BTreeSet::new();
            for r in &rows {
                let change = change_from_row(r)?;
                let owner: Option<String> = r.try_get("owner_org")?;
                if owner.is_some_and(|o| o != org) {
                    foreign.insert(change.record_id);
                }
                changes.push(change);
            }
            let scanned_to = match changes.last() {
                Some(last) if changes.len() as i64 >= limit => last.seq,
                _ => upto,
            };
            Ok(StreamChanges { changes, foreign, scanned_to, last: upto })
        }

        pub async fn list_partners(pool: &$pool) -> Result<Vec<Partner>> {
            let rows = sqlx::query(
                "SELECT org, ca_pem, fingerprint, endpoint, status, added_at_ms, last_contact_ms, crl_pem FROM partners ORDER BY org",
            )
            .fetch_all(pool)
            .await?;
            rows.iter()
                .map(|r| {
                    let status: String = r.try_get("status")?;
                    Ok(Partner {
                        org: r.try_get("org")?,
                        ca_pem: r.try_get("ca_pem")?,
                        fingerprint: r.try_get("fingerprint")?,
                        endpoint: r.try_get("endpoint")?,
                        status: PartnerStatus::parse(&status)
                            .ok_or_else(|| StoreError::Corrupt(format!("partner status {status:?}")))?,
                        added_at_ms: r.try_get("added_at_ms")?,
                        last_contact_ms: r.try_get("last_contact_ms")?,
                        crl_pem: r.try_get("crl_pem")?,
                    })
                })
                .collect()
        }

        /// The stored secret `name` (written by `WriteOp::Admin`).
        pub async fn node_secret(pool: &$pool, name: &str) -> Result<Option<String>> {
            Ok(sqlx::query_scalar("SELECT secret FROM node_secrets WHERE name = $1").bind(name).fetch_optional(pool).await?)
        }

        pub async fn node_owner(pool: &$pool) -> Result<Option<String>> {
            Ok(sqlx::query_scalar("SELECT org FROM node_owner").fetch_optional(pool).await?)
        }

        pub async fn last_seq(pool: &$pool) -> Result<i64> {
            Ok(sqlx::query_scalar("SELECT COALESCE(MAX(seq), 0) FROM changes").fetch_one(pool).await?)
        }

        pub async fn last_hlc(pool: &$pool) -> Result<Option<Hlc>> {
            // The newest version among the recent changes (a merged partner edit may carry
            // an older version than ours before it). The text form orders like the clock.
            let v: Option<String> = sqlx::query_scalar(
                "SELECT MAX(hlc) FROM changes WHERE seq > (SELECT COALESCE(MAX(seq), 0) FROM changes) - 10000",
            )
            .fetch_one(pool)
            .await?;
            v.map(|s| s.parse::<Hlc>().map_err(|e| StoreError::Corrupt(e.to_string()))).transpose()
        }

        pub async fn count(pool: &$pool, kind: RecordKind) -> Result<i64> {
            Ok(sqlx::query_scalar("SELECT COUNT(*) FROM records WHERE kind = $1 AND deleted_version IS NULL")
                .bind(kind.as_str())
                .fetch_one(pool)
                .await?)
        }
    };
}
