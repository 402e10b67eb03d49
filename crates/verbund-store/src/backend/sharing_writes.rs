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

        /// Live records a share rule may match (a superset; streams check the rule).
        async fn rule_candidates(tx: &mut Tx, org: &str, rule: &RuleMatch) -> Result<Vec<(String, String)>> {
            let rows = match rule {
                RuleMatch::CaseAssigned => {
                    sqlx::query("SELECT id, kind FROM records WHERE kind = 'service_case' AND assigned_org = $1 AND deleted_version IS NULL ORDER BY id")
                        .bind(org)
                        .fetch_all(&mut **tx)
                        .await?
                }
                RuleMatch::AccountTag(tag) => {
                    sqlx::query("SELECT id, kind FROM records WHERE kind = 'account' AND deleted_version IS NULL AND fields LIKE $1 ESCAPE '\\' ORDER BY id")
                        .bind(like_pattern(&format!("\"{tag}\"")))
                        .fetch_all(&mut **tx)
                        .await?
                }
            };
            rows.iter().map(|r| Ok((r.try_get("id")?, r.try_get("kind")?))).collect()
        }

        async fn share_op(tx: &mut Tx, op: ShareOp, hlc: Hlc, seq: &mut i64) -> Result<OpOutput> {
            let touched: Vec<(String, String)> = match &op {
                ShareOp::Add(share) => vec![(share.record_id.to_string(), share.kind.as_str().to_string())],
                ShareOp::Revoke { record_id, .. } => {
                    let kind: Option<String> = sqlx::query_scalar("SELECT kind FROM records WHERE id = $1")
                        .bind(record_id.to_string())
                        .fetch_optional(&mut **tx)
                        .await?;
                    kind.map(|k| vec![(record_id.to_string(), k)]).unwrap_or_default()
                }
                ShareOp::AddRule(rule) => rule_candidates(tx, &rule.org, &rule.rule).await?,
                ShareOp::RemoveRule(id) => {
                    let row = sqlx::query("SELECT org, rule FROM share_rules WHERE id = $1")
                        .bind(id.to_string())
                        .fetch_optional(&mut **tx)
                        .await?;
                    match row {
                        Some(row) => {
                            let (org, rule): (String, String) = (row.try_get("org")?, row.try_get("rule")?);
                            match RuleMatch::parse(&rule) {
                                Some(rule) => rule_candidates(tx, &org, &rule).await?,
                                None => Vec::new(),
                            }
                        }
                        None => Vec::new(),
                    }
                }
            };
            share_tables(tx, op).await?;
            Ok(OpOutput {
                changes: access_changes(touched, &hlc, seq)?,
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
