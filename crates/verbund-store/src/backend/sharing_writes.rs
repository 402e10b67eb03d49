//! Part of the `backend!` instantiation (see `lib.rs`): share and rule changes in the writer, with the access rows of the records whose reach they change.
//! A macro so that the SQL is written once for SQLite and PostgreSQL.

macro_rules! backend_sharing_writes {
    ($db:ty, $pool:ty, $begin:expr, $savepoints:expr) => {
        /// `access` change-log rows for records whose reach changed: sync streams look at
        /// them again for every partner.
        fn access_changes(ids: Vec<(String, String)>, hlc: &Hlc, seq: &mut i64) -> Result<Vec<Change>> {
            let at_ms = hlc.physical_ms as i64;
            ids.into_iter()
                .map(|(id, kind)| {
                    *seq += 1;
                    Ok(Change {
                        seq: *seq,
                        record_id: Uuid::parse_str(&id).map_err(|e| StoreError::Corrupt(e.to_string()))?,
                        kind: kind_from_db(&kind)?,
                        op: ChangeOp::Access,
                        hlc: hlc.clone(),
                        fields: BTreeMap::new(),
                        at_ms,
                    })
                })
                .collect()
        }

        /// The change-log row that starts a rule's snapshot for its partner (added or
        /// removed), with what it is about kept beside it: one row however many records the
        /// rule matches. Streams take the matching records from there, in id order.
        async fn snapshot_change(tx: &mut Tx, rule_id: Uuid, org: &str, rule: &RuleMatch, removed: bool, hlc: &Hlc, seq: &mut i64) -> Result<Change> {
            *seq += 1;
            sqlx::query("INSERT INTO share_snapshots (seq, rule_id, org, rule, removed) VALUES ($1, $2, $3, $4, $5)")
                .bind(*seq)
                .bind(rule_id.to_string())
                .bind(org)
                .bind(rule.describe())
                .bind(removed)
                .execute(&mut **tx)
                .await?;
            Ok(Change {
                seq: *seq,
                record_id: rule_id,
                kind: rule.kind(),
                op: ChangeOp::Snapshot,
                hlc: hlc.clone(),
                fields: BTreeMap::new(),
                at_ms: hlc.physical_ms as i64,
            })
        }

        async fn share_op(tx: &mut Tx, op: ShareOp, hlc: Hlc, seq: &mut i64) -> Result<OpOutput> {
            let mut changes = Vec::new();
            match &op {
                ShareOp::Add(share) => {
                    changes = access_changes(vec![(share.record_id.to_string(), share.kind.as_str().to_string())], &hlc, seq)?;
                }
                ShareOp::Revoke { record_id, .. } => {
                    let kind: Option<String> = sqlx::query_scalar("SELECT kind FROM records WHERE id = $1")
                        .bind(record_id.to_string())
                        .fetch_optional(&mut **tx)
                        .await?;
                    changes = access_changes(kind.map(|k| vec![(record_id.to_string(), k)]).unwrap_or_default(), &hlc, seq)?;
                }
                ShareOp::AddRule(_) | ShareOp::RemoveRule(_) => {}
            }
            // A rule's snapshot row follows the rule's own change (the row of a removed rule
            // is read before it goes).
            let snapshot = match &op {
                ShareOp::AddRule(rule) => Some((rule.id, rule.org.clone(), rule.rule.clone(), false)),
                ShareOp::RemoveRule(id) => {
                    let row = sqlx::query("SELECT org, rule FROM share_rules WHERE id = $1")
                        .bind(id.to_string())
                        .fetch_optional(&mut **tx)
                        .await?;
                    match row {
                        Some(row) => {
                            let (org, rule): (String, String) = (row.try_get("org")?, row.try_get("rule")?);
                            RuleMatch::parse(&rule).map(|rule| (*id, org, rule, true))
                        }
                        None => None,
                    }
                }
                _ => None,
            };
            share_tables(tx, op).await?;
            if let Some((rule_id, org, rule, removed)) = snapshot {
                changes.push(snapshot_change(tx, rule_id, &org, &rule, removed, &hlc, seq).await?);
            }
            Ok(OpOutput {
                changes,
                ..OpOutput::default()
            })
        }

        async fn share_tables(tx: &mut Tx, op: ShareOp) -> Result<()> {
            match op {
                ShareOp::Add(share) => {
                    let kind: Option<String> = sqlx::query_scalar("SELECT kind FROM records WHERE id = $1 AND deleted_version IS NULL")
                        .bind(share.record_id.to_string())
                        .fetch_optional(&mut **tx)
                        .await?;
                    if kind.as_deref() != Some(share.kind.as_str()) {
                        return Err(DomainError::NotFound { kind: share.kind, id: share.record_id.to_string() }.into());
                    }
                    let exists: Option<String> = sqlx::query_scalar("SELECT profile FROM shares WHERE record_id = $1 AND org = $2")
                        .bind(share.record_id.to_string())
                        .bind(&share.org)
                        .fetch_optional(&mut **tx)
                        .await?;
                    if let Some(profile) = exists {
                        return Err(DomainError::AlreadyExists(format!(
                            "a share of {} {} with {} (profile {profile}; revoke it to change the profile)",
                            share.kind, share.record_id, share.org
                        ))
                        .into());
                    }
                    sqlx::query("INSERT INTO shares (id, record_id, kind, org, profile, created_at_ms, created_by) VALUES ($1, $2, $3, $4, $5, $6, $7)")
                        .bind(share.id.to_string())
                        .bind(share.record_id.to_string())
                        .bind(share.kind.as_str())
                        .bind(&share.org)
                        .bind(&share.profile)
                        .bind(share.created_at_ms)
                        .bind(&share.created_by)
                        .execute(&mut **tx)
                        .await?;
                }
                ShareOp::Revoke { record_id, org } => {
                    let r = sqlx::query("DELETE FROM shares WHERE record_id = $1 AND org = $2")
                        .bind(record_id.to_string())
                        .bind(&org)
                        .execute(&mut **tx)
                        .await?;
                    if r.rows_affected() == 0 {
                        return Err(DomainError::Absent(format!("a share of record {record_id} with {org}")).into());
                    }
                }
                ShareOp::AddRule(rule) => {
                    let exists: Option<String> = sqlx::query_scalar("SELECT id FROM share_rules WHERE org = $1 AND rule = $2")
                        .bind(&rule.org)
                        .bind(rule.rule.describe())
                        .fetch_optional(&mut **tx)
                        .await?;
                    if let Some(id) = exists {
                        return Err(DomainError::AlreadyExists(format!("share rule {id} ({} with {})", rule.rule.describe(), rule.org)).into());
                    }
                    sqlx::query("INSERT INTO share_rules (id, org, rule, profile, created_at_ms, created_by) VALUES ($1, $2, $3, $4, $5, $6)")
                        .bind(rule.id.to_string())
                        .bind(&rule.org)
                        .bind(rule.rule.describe())
                        .bind(&rule.profile)
                        .bind(rule.created_at_ms)
                        .bind(&rule.created_by)
                        .execute(&mut **tx)
                        .await?;
                }
                ShareOp::RemoveRule(id) => {
                    let r = sqlx::query("DELETE FROM share_rules WHERE id = $1").bind(id.to_string()).execute(&mut **tx).await?;
                    if r.rows_affected() == 0 {
                        return Err(DomainError::Absent(format!("share rule {id}")).into());
                    }
                }
            }
            Ok(())
        }
    };
}
