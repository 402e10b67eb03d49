//! Part of the `backend!` instantiation (see `lib.rs`): the owner's side of sync in the writer: partner pushes merged once per key, conflicts, erasure; and the sync bookkeeping of both sides (delivery ledger, acknowledgements, link errors).
//! A macro so that the SQL is written once for SQLite and PostgreSQL.

macro_rules! backend_sync_owner_writes {
    ($db:ty, $pool:ty, $begin:expr, $savepoints:expr) => {
        // ---- Federation sync: owner side ----

        async fn stored_verdict(tx: &mut Tx, org: &str, key: &str) -> Result<Option<StoredVerdict>> {
            let row = sqlx::query("SELECT record_id, outcome, reason FROM push_receipts WHERE org = $1 AND push_key = $2")
                .bind(org)
                .bind(key)
                .fetch_optional(&mut **tx)
                .await?;
            row.map(|r| verdict_row(&r)).transpose()
        }

        fn verdict_row(r: &<$db as sqlx::Database>::Row) -> Result<StoredVerdict> {
            let id: String = r.try_get("record_id")?;
            let outcome: String = r.try_get("outcome")?;
            Ok(StoredVerdict {
                record_id: Uuid::parse_str(&id).map_err(|e| StoreError::Corrupt(e.to_string()))?,
                outcome: VerdictOutcome::parse(&outcome).ok_or_else(|| StoreError::Corrupt(format!("verdict {outcome:?}")))?,
                reason: r.try_get("reason")?,
            })
        }

        fn value_json(v: &Option<Value>) -> Result<Option<String>> {
            v.as_ref().map(fields_to_json).transpose()
        }

        /// The merge's writes go into `writes` (nothing reads them before the op ends).
        #[allow(clippy::too_many_arguments)] // the op's fields, as `run_op` takes them apart
        async fn merge_op(tx: &mut Tx, writes: &mut Writes, org: &str, key: &str, kind: RecordKind, id: Uuid, plan_fn: MergeFn, seq: &mut i64) -> Result<OpOutput> {
            if stored_verdict(tx, org, key).await?.is_some() {
                // Decided before: the caller reads the stored verdict; nothing is applied twice.
                return Ok(OpOutput::unchanged(load_known(tx, writes, kind, id).await?));
            }
            let current = load_known(tx, writes, kind, id).await?;
            let plan = plan_fn(&current)?;
            let mut out = OpOutput::unchanged(current);
            if plan.outcome == VerdictOutcome::Rejected {
                // Audited as a denial, naming what was refused (a field, "not shared"),
                // never a value.
                let what = plan.reason.split(':').next().unwrap_or_default();
                out.denied = Some(format!("push rejected: {what}"));
            }
            if let Some(mut write) = plan.write {
                let activity_account = resolve_refs(tx, &write).await?;
                write_record(tx, writes, &mut write, *seq + 1, false, activity_account).await?;
                *seq += 1;
                out = OpOutput::one(write);
            }
            let now = plan.at_ms;
            for c in &plan.conflicts {
                let row = (
                    Uuid::now_v7().to_string(),
                    value_json(&c.winner.value)?,
                    c.winner.version.to_string(),
                    value_json(&c.loser.value)?,
                    c.loser.version.to_string(),
                );
                let qb = writes
                    .statement(
                        tx,
                        "INSERT INTO conflicts (id, record_id, kind, field, winner_value, winner_version, loser_value, loser_version, created_ms) ",
                    )
                    .await?;
                qb.push_values([row], |mut b, (conflict_id, winner, winner_version, loser, loser_version)| {
                    b.push_bind(conflict_id)
                        .push_bind(id.to_string())
                        .push_bind(kind.as_str())
                        .push_bind(c.field.clone())
                        .push_bind(winner)
                        .push_bind(winner_version)
                        .push_bind(loser)
                        .push_bind(loser_version)
                        .push_bind(now);
                });
            }
            let qb = writes.statement(tx, "INSERT INTO push_receipts (org, push_key, record_id, outcome, reason, at_ms) ").await?;
            qb.push_values([()], |mut b, ()| {
                b.push_bind(org.to_string())
                    .push_bind(key.to_string())
                    .push_bind(id.to_string())
                    .push_bind(plan.outcome.as_str())
                    .push_bind(plan.reason.clone())
                    .push_bind(now);
            });
            Ok(out)
        }

        async fn erase_op(tx: &mut Tx, kind: RecordKind, id: Uuid, by: &str, plan_fn: PlanFn, seq: &mut i64) -> Result<OpOutput> {
            let current = load(tx, kind, id).await?;
            let Some(mut plan) = plan_fn(&current)? else {
                return Ok(OpOutput::unchanged(current));
            };
            write_record_now(tx, &mut plan, *seq + 1, false, None).await?;
            *seq += 1;
            // The old values must not survive anywhere on this node: the change log and the
            // conflict records held them.
            sqlx::query("UPDATE changes SET fields = '{}' WHERE record_id = $1")
                .bind(id.to_string())
                .execute(&mut **tx)
                .await?;
            sqlx::query("UPDATE conflicts SET winner_value = NULL, loser_value = NULL WHERE record_id = $1")
                .bind(id.to_string())
                .execute(&mut **tx)
                .await?;
            // Every organization that ever received the record now owes an acknowledgement.
            // The live rows first: they leave the bucket sums.
            let was_live = sqlx::query(
                "UPDATE deliveries SET state = 'erased', erasure_acked_ms = NULL WHERE record_id = $1 AND state = 'live' \
                 RETURNING org, bucket, sum_part, policy",
            )
            .bind(id.to_string())
            .fetch_all(&mut **tx)
            .await?;
            let mut sums = DeliverySumDeltas::default();
            for row in was_live {
                let org: String = row.try_get("org")?;
                let policy: Option<String> = row.try_get("policy")?;
                if let Some(share) = crate::sum_deltas::share_of(row.try_get("bucket")?, row.try_get("sum_part")?) {
                    sums.add(&org, share, policy.as_deref(), -1);
                }
            }
            apply_delivery_sums(tx, &sums).await?;
            sqlx::query("UPDATE deliveries SET state = 'erased', erasure_acked_ms = NULL WHERE record_id = $1 AND state <> 'erased'")
                .bind(id.to_string())
                .execute(&mut **tx)
                .await?;
            sqlx::query("INSERT INTO erasures (record_id, kind, erased_ms, erased_by) VALUES ($1, $2, $3, $4) ON CONFLICT (record_id) DO NOTHING")
                .bind(id.to_string())
                .bind(kind.as_str())
                .bind(plan.record.updated_at_ms)
                .bind(by)
                .execute(&mut **tx)
                .await?;
            let mut out = OpOutput::one(plan);
            out.blanked.push(id);
            Ok(out)
        }

        /// Sync bookkeeping, in the writer's transaction (one statement per note, or per
        /// chunk of rows).
        async fn sync_note(tx: &mut Tx, note: SyncNote) -> Result<OpOutput> {
            match note {
                SyncNote::Deliveries { org, rows, at_ms, policy, position } => {
                    record_deliveries(tx, &org, &rows, at_ms, &policy).await?;
                    if let Some(p) = position {
                        sqlx::query("INSERT INTO stream_positions (org, stream_pos, owner_seq, mark) VALUES ($1, $2, $3, $4)")
                            .bind(&org)
                            .bind(p.stream_pos)
                            .bind(p.owner_seq)
                            .bind(&p.mark)
                            .execute(&mut **tx)
                            .await?;
                    }
                }
                SyncNote::PositionMoved { org, stream_pos, owner_seq } => {
                    sqlx::query("UPDATE stream_positions SET owner_seq = $3 WHERE org = $1 AND stream_pos = $2 AND owner_seq < $3")
                        .bind(org)
                        .bind(stream_pos)
                        .bind(owner_seq)
                        .execute(&mut **tx)
                        .await?;
                }
                SyncNote::StampsReserved { org, reserved } => {
                    sqlx::query(
                        "INSERT INTO stream_stamps (org, reserved) VALUES ($1, $2) \
                         ON CONFLICT (org) DO UPDATE SET reserved = excluded.reserved WHERE stream_stamps.reserved < excluded.reserved",
                    )
                    .bind(org)
                    .bind(reserved)
                    .execute(&mut **tx)
                    .await?;
                }
                SyncNote::BackfillDigests { limit } => backfill_digests(tx, limit).await?,
                SyncNote::PeerAck { org, cursor, at_ms } => {
                    sqlx::query(
                        "INSERT INTO sync_peers (org, acked_cursor, acked_ms) VALUES ($1, $2, $3) \
                         ON CONFLICT (org) DO UPDATE SET acked_cursor = excluded.acked_cursor, acked_ms = excluded.acked_ms",
                    )
                    .bind(&org)
                    .bind(cursor)
                    .bind(at_ms)
                    .execute(&mut **tx)
                    .await?;
                    // The partner holds this position durably: it never resumes from an
                    // earlier one (unless restored from a backup, and then it starts over).
                    sqlx::query("DELETE FROM stream_positions WHERE org = $1 AND stream_pos < $2")
                        .bind(&org)
                        .bind(cursor)
                        .execute(&mut **tx)
                        .await?;
                }
                SyncNote::ErasuresAcked { org, ids, at_ms } => {
                    for chunk in ids.chunks(500) {
                        let mut qb: QueryBuilder<$db> = QueryBuilder::new("UPDATE deliveries SET erasure_acked_ms = ");
                        qb.push_bind(at_ms).push(" WHERE org = ").push_bind(org.clone());
                        qb.push(" AND state = 'erased' AND erasure_acked_ms IS NULL AND record_id IN (");
                        let mut sep = qb.separated(", ");
                        for id in chunk {
                            sep.push_bind(id.to_string());
                        }
                        qb.push(")");
                        qb.build().execute(&mut **tx).await?;
                    }
                }
                SyncNote::ErasureAcksSent { ids } => {
                    for chunk in ids.chunks(500) {
                        let mut qb: QueryBuilder<$db> = QueryBuilder::new("UPDATE replicas SET state = 'erased' WHERE state = 'erased-unacked' AND record_id IN (");
                        let mut sep = qb.separated(", ");
                        for id in chunk {
                            sep.push_bind(id.to_string());
                        }
                        qb.push(")");
                        qb.build().execute(&mut **tx).await?;
                    }
                }
                SyncNote::OutboxAttempt { key, error } => {
                    sqlx::query("UPDATE outbox SET attempts = attempts + 1, last_error = $2 WHERE push_key = $1")
                        .bind(key)
                        .bind(error)
                        .execute(&mut **tx)
                        .await?;
                }
                SyncNote::PartnerContact { org, at_ms } => {
                    sqlx::query("UPDATE partners SET last_contact_ms = $1 WHERE org = $2").bind(at_ms).bind(org).execute(&mut **tx).await?;
                }
                SyncNote::LinkError { owner, error, at_ms } => {
                    sqlx::query(
                        "INSERT INTO subscriptions (owner_org, cursor, owner_last_seq, last_error, last_error_ms) VALUES ($1, 0, 0, $2, $3) \
                         ON CONFLICT (owner_org) DO UPDATE SET last_error = excluded.last_error, last_error_ms = excluded.last_error_ms",
                    )
                    .bind(owner)
                    .bind(error)
                    .bind(at_ms)
                    .execute(&mut **tx)
                    .await?;
                }
            }
            Ok(OpOutput::default())
        }

        /// Rows from before digests were kept: the bucket of every row, the digest of a live
        /// replica (a delivery's digest stays unknown until anti-entropy compares it).
        async fn backfill_digests(tx: &mut Tx, limit: i64) -> Result<()> {
            let ids: Vec<String> = sqlx::query_scalar("SELECT record_id FROM deliveries WHERE bucket IS NULL LIMIT $1")
                .bind(limit)
                .fetch_all(&mut **tx)
                .await?;
            // A row without a bucket counted in no sum; with one, a live row counts.
            let mut delivery_sums = DeliverySumDeltas::default();
            for id in ids {
                let uuid = Uuid::parse_str(&id).map_err(|e| StoreError::Corrupt(e.to_string()))?;
                let bucket = verbund_core::sync::bucket_of(&uuid) as i64;
                let now_counted = sqlx::query("UPDATE deliveries SET bucket = $2 WHERE record_id = $1 AND bucket IS NULL RETURNING org, state, sum_part, policy")
                    .bind(&id)
                    .bind(bucket)
                    .fetch_all(&mut **tx)
                    .await?;
                for row in now_counted {
                    let state: String = row.try_get("state")?;
                    if state != DeliveryState::Live.as_str() {
                        continue;
                    }
                    let org: String = row.try_get("org")?;
                    let policy: Option<String> = row.try_get("policy")?;
                    if let Some(share) = crate::sum_deltas::share_of(Some(bucket), row.try_get("sum_part")?) {
                        delivery_sums.add(&org, share, policy.as_deref(), 1);
                    }
                }
            }
            apply_delivery_sums(tx, &delivery_sums).await?;
            let mut replica_sums = ReplicaSumDeltas::default();
            let rows = sqlx::query("SELECT record_id, owner_org, state, shadow_versions FROM replicas WHERE bucket IS NULL LIMIT $1")
                .bind(limit)
                .fetch_all(&mut **tx)
                .await?;
            for row in rows {
                let id: String = row.try_get("record_id")?;
                let state: String = row.try_get("state")?;
                let versions: String = row.try_get("shadow_versions")?;
                let uuid = Uuid::parse_str(&id).map_err(|e| StoreError::Corrupt(e.to_string()))?;
                let digest = (state == CopyState::Live.as_str())
                    .then(|| versions_from_json(&versions).map(|v| verbund_core::sync::record_digest(&v, false)))
                    .transpose()?;
                let bucket = verbund_core::sync::bucket_of(&uuid) as i64;
                let sum_part = digest.map(|d| verbund_core::sync::sum_part(&uuid, d) as i64);
                sqlx::query("UPDATE replicas SET bucket = $2, digest = $3, sum_part = $4 WHERE record_id = $1")
                    .bind(&id)
                    .bind(bucket)
                    .bind(digest.map(|d| d as i64))
                    .bind(sum_part)
                    .execute(&mut **tx)
                    .await?;
                if state == CopyState::Live.as_str() {
                    let owner: String = row.try_get("owner_org")?;
                    replica_sums.add(&owner, (bucket, sum_part.unwrap_or(0), sum_part.is_some()), 1);
                }
            }
            let mut writes = Writes::new();
            apply_replica_sums(tx, &mut writes, &replica_sums).await?;
            writes.run(tx).await
        }

        /// Records, before sending, what a partner is about to hold: a record reaches the
        /// ledger before it leaves the node, so erasure can find every copy.
        /// Each live row keeps the digest of the projection sent (and its share of the
        /// bucket sum), so anti-entropy sums buckets in the database.
        async fn record_deliveries(tx: &mut Tx, org: &str, rows: &[DeliveryNote], at_ms: i64, policy: &str) -> Result<()> {
            // One row per record (the last note of it counts): a record twice in one upsert
            // is an error in PostgreSQL, and would count twice in the bucket sums.
            let mut seen = HashSet::with_capacity(rows.len());
            let mut unique: Vec<&DeliveryNote> = rows.iter().rev().filter(|r| seen.insert(r.record_id)).collect();
            unique.reverse();
            let rows = unique;
            let mut sums = DeliverySumDeltas::default();
            for chunk in rows.chunks(500) {
                // The rows as they stand: what they counted in the bucket sums, and whether
                // they were erased (an erased row stays so).
                let mut qb: QueryBuilder<$db> = QueryBuilder::new("SELECT record_id, state, bucket, sum_part, policy FROM deliveries WHERE org = ");
                qb.push_bind(org.to_string()).push(" AND record_id IN (");
                let mut sep = qb.separated(", ");
                for row in chunk {
                    sep.push_bind(row.record_id.to_string());
                }
                qb.push(")");
                let mut erased_before = HashSet::new();
                for old in qb.build().fetch_all(&mut **tx).await? {
                    let id: String = old.try_get("record_id")?;
                    let id = Uuid::parse_str(&id).map_err(|e| StoreError::Corrupt(e.to_string()))?;
                    let state: String = old.try_get("state")?;
                    if state == DeliveryState::Erased.as_str() {
                        erased_before.insert(id);
                    } else if state == DeliveryState::Live.as_str() {
                        let policy: Option<String> = old.try_get("policy")?;
                        if let Some(share) = crate::sum_deltas::share_of(old.try_get("bucket")?, old.try_get("sum_part")?) {
                            sums.add(org, share, policy.as_deref(), -1);
                        }
                    }
                }
                let mut qb: QueryBuilder<$db> = QueryBuilder::new(
                    "INSERT INTO deliveries (org, record_id, kind, state, first_sent_ms, last_sent_ms, digest, sum_part, bucket, policy) ",
                );
                qb.push_values(chunk, |mut b, row| {
                    let live = row.state == DeliveryState::Live;
                    let digest = row.digest.filter(|_| live);
                    let sum_part = digest.map(|d| verbund_core::sync::sum_part(&row.record_id, d) as i64);
                    let bucket = verbund_core::sync::bucket_of(&row.record_id) as i64;
                    if live && !erased_before.contains(&row.record_id) {
                        sums.add(org, (bucket, sum_part.unwrap_or(0), sum_part.is_some()), Some(policy), 1);
                    }
                    b.push_bind(org.to_string())
                        .push_bind(row.record_id.to_string())
                        .push_bind(row.kind.as_str())
                        .push_bind(row.state.as_str())
                        .push_bind(at_ms)
                        .push_bind(at_ms)
                        .push_bind(digest.map(|d| d as i64))
                        .push_bind(sum_part)
                        .push_bind(bucket)
                        .push_bind(digest.map(|_| policy.to_string()));
                });
                qb.push(
                    " ON CONFLICT (org, record_id) DO UPDATE SET state = CASE WHEN deliveries.state = 'erased' THEN deliveries.state ELSE excluded.state END, \
                     last_sent_ms = excluded.last_sent_ms, digest = excluded.digest, sum_part = excluded.sum_part, bucket = excluded.bucket, policy = excluded.policy",
                );
                qb.build().execute(&mut **tx).await?;
            }
            if rows.is_empty() {
                return Ok(());
            }
            // A record erased meanwhile stays owed an erasure by whoever gets it now (the
            // erasure and this note are serialized by the writer; only this batch's rows).
            for chunk in rows.chunks(500) {
                let mut qb: QueryBuilder<$db> = QueryBuilder::new("UPDATE deliveries SET state = 'erased' WHERE org = ");
                qb.push_bind(org.to_string()).push(" AND state <> 'erased' AND record_id IN (SELECT record_id FROM erasures WHERE record_id IN (");
                let mut sep = qb.separated(", ");
                for row in chunk {
                    sep.push_bind(row.record_id.to_string());
                }
                qb.push(")) RETURNING record_id, bucket, sum_part, policy");
                for gone in qb.build().fetch_all(&mut **tx).await? {
                    // Only a row written live above counted; a revoked one did not.
                    let id: String = gone.try_get("record_id")?;
                    let id = Uuid::parse_str(&id).map_err(|e| StoreError::Corrupt(e.to_string()))?;
                    if chunk.iter().any(|r| r.record_id == id && r.state == DeliveryState::Live) {
                        let policy: Option<String> = gone.try_get("policy")?;
                        if let Some(share) = crate::sum_deltas::share_of(gone.try_get("bucket")?, gone.try_get("sum_part")?) {
                            sums.add(org, share, policy.as_deref(), -1);
                        }
                    }
                }
            }
            apply_delivery_sums(tx, &sums).await?;
            Ok(())
        }
    };
}
