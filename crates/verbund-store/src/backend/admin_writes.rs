//! Part of the `backend!` instantiation (see `lib.rs`): writes of the node's own tables in
//! the writer (`WriteOp::Admin`): its organization and secrets, the partner registry, steward
//! decisions, conflict resolutions. None touches a record, the change log or a sequence
//! number; they go through the writer so that on SQLite only its connection writes.
//! A macro so that the SQL is written once for SQLite and PostgreSQL.

macro_rules! backend_admin_writes {
    ($db:ty, $pool:ty, $begin:expr, $savepoints:expr) => {
        /// A write of the node's own tables (see `WriteOp::Admin`). What is not there or is
        /// there already fails this job alone (a domain error), not its batch.
        async fn admin_write(tx: &mut Tx, write: AdminWrite) -> Result<OpOutput> {
            let alone = |e: StoreError| match e {
                StoreError::NotFound(what) => StoreError::Domain(DomainError::Absent(what)),
                StoreError::AlreadyExists(what) => StoreError::Domain(DomainError::AlreadyExists(what)),
                e => e,
            };
            match write {
                AdminWrite::Owner(org) => {
                    sqlx::query("INSERT INTO node_owner (org) SELECT $1 WHERE NOT EXISTS (SELECT 1 FROM node_owner)")
                        .bind(org)
                        .execute(&mut **tx)
                        .await?;
                }
                AdminWrite::Secret { name, fresh } => {
                    sqlx::query("INSERT INTO node_secrets (name, secret) VALUES ($1, $2) ON CONFLICT (name) DO NOTHING")
                        .bind(name)
                        .bind(fresh)
                        .execute(&mut **tx)
                        .await?;
                }
                AdminWrite::AddPartner(p) => add_partner(tx, &p).await.map_err(alone)?,
                AdminWrite::RemovePartner(org) => remove_partner(tx, &org).await.map_err(alone)?,
                AdminWrite::PartnerAnchor(p) => set_partner_anchor(tx, &p).await.map_err(alone)?,
                AdminWrite::PartnerCrl { org, crl_pem } => set_partner_crl(tx, &org, crl_pem.as_deref()).await.map_err(alone)?,
                AdminWrite::StewardDecision(d) => save_steward_decision(tx, &d).await?,
                AdminWrite::ConflictResolved { id, by, resolution, at_ms } => {
                    if !mark_conflict_resolved(tx, id, &by, &resolution, at_ms).await? {
                        return Err(alone(StoreError::NotFound(format!("open conflict {id}"))));
                    }
                }
            }
            Ok(OpOutput::default())
        }

        async fn add_partner(tx: &mut Tx, p: &Partner) -> Result<()> {
            let r = sqlx::query(
                "INSERT INTO partners (org, ca_pem, fingerprint, endpoint, status, added_at_ms, last_contact_ms) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7)",
            )
            .bind(&p.org)
            .bind(&p.ca_pem)
            .bind(&p.fingerprint)
            .bind(&p.endpoint)
            .bind(p.status.as_str())
            .bind(p.added_at_ms)
            .bind(p.last_contact_ms)
            .execute(&mut **tx)
            .await;
            match r {
                Ok(_) => Ok(()),
                Err(e) if e.as_database_error().is_some_and(|d| d.is_unique_violation()) => {
                    Err(StoreError::AlreadyExists(format!("partner {}", p.org)))
                }
                Err(e) => Err(e.into()),
            }
        }

        async fn remove_partner(tx: &mut Tx, org: &str) -> Result<()> {
            let r = sqlx::query("DELETE FROM partners WHERE org = $1").bind(org).execute(&mut **tx).await?;
            if r.rows_affected() == 0 {
                return Err(StoreError::NotFound(format!("partner {org}")));
            }
            Ok(())
        }

        async fn set_partner_anchor(tx: &mut Tx, p: &Partner) -> Result<()> {
            let r = sqlx::query("UPDATE partners SET ca_pem = $1, fingerprint = $2, crl_pem = $3 WHERE org = $4")
                .bind(&p.ca_pem)
                .bind(&p.fingerprint)
                .bind(&p.crl_pem)
                .bind(&p.org)
                .execute(&mut **tx)
                .await?;
            if r.rows_affected() == 0 {
                return Err(StoreError::NotFound(format!("partner {}", p.org)));
            }
            Ok(())
        }

        async fn set_partner_crl(tx: &mut Tx, org: &str, crl_pem: Option<&str>) -> Result<()> {
            let r = sqlx::query("UPDATE partners SET crl_pem = $1 WHERE org = $2").bind(crl_pem).bind(org).execute(&mut **tx).await?;
            if r.rows_affected() == 0 {
                return Err(StoreError::NotFound(format!("partner {org}")));
            }
            Ok(())
        }

        async fn mark_conflict_resolved(tx: &mut Tx, id: Uuid, by: &str, resolution: &str, at_ms: i64) -> Result<bool> {
            let r = sqlx::query("UPDATE conflicts SET resolved_by = $2, resolution = $3, resolved_ms = $4 WHERE id = $1 AND resolved_ms IS NULL")
                .bind(id.to_string())
                .bind(by)
                .bind(resolution)
                .bind(at_ms)
                .execute(&mut **tx)
                .await?;
            Ok(r.rows_affected() > 0)
        }

        async fn save_steward_decision(tx: &mut Tx, d: &StewardDecisionRow) -> Result<()> {
            sqlx::query(
                "INSERT INTO steward_decisions (kind, record_a, record_b, decision, decided_by, decided_at_ms) \
                 VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (kind, record_a, record_b) DO UPDATE SET \
                 decision = excluded.decision, decided_by = excluded.decided_by, decided_at_ms = excluded.decided_at_ms",
            )
            .bind(d.kind.as_str())
            .bind(d.record_a.to_string())
            .bind(d.record_b.to_string())
            .bind(d.decision.as_str())
            .bind(&d.decided_by)
            .bind(d.decided_at_ms)
            .execute(&mut **tx)
            .await?;
            Ok(())
        }
    };
}
