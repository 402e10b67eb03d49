//! Part of the `backend!` instantiation (see `lib.rs`): the steward decisions of the
//! consolidated customer view. A decision is one statement (an upsert), outside the writer:
//! it touches no record, no change log and no sequence number.
//! A macro so that the SQL is written once for SQLite and PostgreSQL.

macro_rules! backend_consolidation {
    ($db:ty, $pool:ty, $begin:expr, $savepoints:expr) => {
        pub async fn list_steward_decisions(pool: &$pool) -> Result<Vec<StewardDecisionRow>> {
            let rows = sqlx::query(
                "SELECT kind, record_a, record_b, decision, decided_by, decided_at_ms FROM steward_decisions ORDER BY kind, record_a, record_b",
            )
            .fetch_all(pool)
            .await?;
            let corrupt = |e: String| StoreError::Corrupt(format!("steward_decisions: {e}"));
            rows.iter()
                .map(|r| {
                    let kind: String = r.try_get("kind")?;
                    let a: String = r.try_get("record_a")?;
                    let b: String = r.try_get("record_b")?;
                    let decision: String = r.try_get("decision")?;
                    Ok(StewardDecisionRow {
                        kind: kind_from_db(&kind)?,
                        record_a: Uuid::parse_str(&a).map_err(|e| corrupt(e.to_string()))?,
                        record_b: Uuid::parse_str(&b).map_err(|e| corrupt(e.to_string()))?,
                        decision: StewardVerdict::parse(&decision).ok_or_else(|| corrupt(format!("decision {decision:?}")))?,
                        decided_by: r.try_get("decided_by")?,
                        decided_at_ms: r.try_get("decided_at_ms")?,
                    })
                })
                .collect()
        }
    };
}
