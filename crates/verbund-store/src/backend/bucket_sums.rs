//! Part of the `backend!` instantiation (see `lib.rs`): anti-entropy's bucket sums, kept in
//! `delivery_sums` (owner) and `replica_sums` (partner) by the writes that change the rows.
//! A macro so that the SQL is written once for SQLite and PostgreSQL.

macro_rules! backend_bucket_sums {
    ($db:ty, $pool:ty, $begin:expr, $savepoints:expr) => {
        /// Adds what a write changed to the owner's ledger sums: one upsert per chunk of
        /// touched keys; keys left without rows go.
        async fn apply_delivery_sums(tx: &mut Tx, deltas: &DeliverySumDeltas) -> Result<()> {
            let changed = deltas.changed();
            for chunk in changed.chunks(256) {
                let mut qb: QueryBuilder<$db> = QueryBuilder::new("INSERT INTO delivery_sums (org, bucket, policy, s, n) ");
                qb.push_values(chunk, |mut b, ((org, bucket, policy), (s, n))| {
                    b.push_bind(org.clone()).push_bind(*bucket).push_bind(policy.clone()).push_bind(*s).push_bind(*n);
                });
                qb.push(" ON CONFLICT (org, bucket, policy) DO UPDATE SET s = delivery_sums.s + excluded.s, n = delivery_sums.n + excluded.n");
                qb.build().execute(&mut **tx).await?;
            }
            let emptied: BTreeSet<&str> = changed.iter().filter(|(_, (_, n))| *n < 0).map(|((org, _, _), _)| org.as_str()).collect();
            for org in emptied {
                // Rows of an old policy fingerprint go once re-sent under the new one.
                sqlx::query("DELETE FROM delivery_sums WHERE org = $1 AND n = 0").bind(org).execute(&mut **tx).await?;
            }
            Ok(())
        }

        /// Adds what a write changed to the partner's replica sums (with the write's other
        /// statements, see `Writes`).
        async fn apply_replica_sums(tx: &mut Tx, writes: &mut Writes, deltas: &ReplicaSumDeltas) -> Result<()> {
            for chunk in deltas.changed().chunks(256) {
                let qb = writes.statement_of(tx, "INSERT INTO replica_sums (owner_org, bucket, s, unknown, n) ", chunk.len()).await?;
                qb.push_values(chunk, |mut b, ((owner, bucket), (s, unknown, n))| {
                    b.push_bind(owner.clone()).push_bind(*bucket).push_bind(*s).push_bind(*unknown).push_bind(*n);
                });
                qb.push(
                    " ON CONFLICT (owner_org, bucket) DO UPDATE SET s = replica_sums.s + excluded.s, \
                     unknown = replica_sums.unknown + excluded.unknown, n = replica_sums.n + excluded.n",
                );
            }
            Ok(())
        }
    };
}
