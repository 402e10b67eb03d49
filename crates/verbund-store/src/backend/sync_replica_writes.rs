//! Part of the `backend!` instantiation (see `lib.rs`): the partner's side of sync in the writer: replicas, batches with their cursor, quarantine, history resets, clock recovery, outbox edits and verdicts.
//! A macro so that the SQL is written once for SQLite and PostgreSQL.

macro_rules! backend_sync_replica_writes {
    ($db:ty, $pool:ty, $begin:expr, $savepoints:expr) => {
        // ---- Federation sync: partner side ----

        #[derive(Clone)]
        struct ReplicaRow {
            owner_org: String,
            state: CopyState,
            owner_seq: i64,
            shadow_fields: FieldMap,
            shadow_versions: verbund_core::VersionMap,
            /// Our edits the owner held before its history was reset (see `reset_owner`).
            reset_from: Option<BTreeMap<String, verbund_core::sync::FieldState>>,
        }

        async fn replica_row(tx: &mut Tx, id: Uuid) -> Result<Option<ReplicaRow>> {
            let row = sqlx::query("SELECT record_id, owner_org, state, owner_seq, shadow_fields, shadow_versions, reset_from FROM replicas WHERE record_id = $1")
                .bind(id.to_string())
                .fetch_optional(&mut **tx)
                .await?;
            row.map(|r| replica_from_row(&r)).transpose()
        }

        /// Clock recovery (see `WriteOp::Restamp`). Pending edits keep their values and bases;
        /// the replicas they show on are shown again. Own records keep their values; each
        /// re-stamped record is a new change, so partners take the new versions (a newer
        /// state of the owner supersedes, `sync::take_owner_state`).
        async fn restamp(tx: &mut Tx, limit_ms: u64, now_ms: i64, stamp: &mut RestampFn, report: &Arc<std::sync::Mutex<RestampReport>>, seq: &mut i64) -> Result<OpOutput> {
            let mut out = OpOutput::default();
            let mut counts = RestampReport::default();
            let ahead = |v: &Hlc| v.physical_ms > limit_ms;
            let rows = sqlx::query("SELECT push_key, record_id, edits FROM outbox WHERE state = 'pending' ORDER BY seq")
                .fetch_all(&mut **tx)
                .await?;
            let mut touched: Vec<Uuid> = Vec::new();
            for row in rows {
                let key: String = row.try_get("push_key")?;
                let id: String = row.try_get("record_id")?;
                let text: String = row.try_get("edits")?;
                let mut edits: Vec<verbund_core::sync::FieldEdit> =
                    serde_json::from_str(&text).map_err(|e| StoreError::Corrupt(format!("outbox edits: {e}")))?;
                if !edits.iter().any(|e| ahead(&e.version)) {
                    continue;
                }
                for e in edits.iter_mut().filter(|e| ahead(&e.version)) {
                    e.version = stamp();
                }
                sqlx::query("UPDATE outbox SET edits = $2 WHERE push_key = $1")
                    .bind(&key)
                    .bind(fields_to_json(&edits)?)
                    .execute(&mut **tx)
                    .await?;
                counts.outbox_entries += 1;
                let id = Uuid::parse_str(&id).map_err(|e| StoreError::Corrupt(e.to_string()))?;
                if !touched.contains(&id) {
                    touched.push(id);
                }
            }
            // The replicas they show on are shown again (their owners do not matter here).
            let mut work = ReplicaWork::load(tx, "", &touched).await?;
            for id in touched {
                work.reshow(tx, id, seq, &mut out).await?;
            }
            work.write_out(tx, &mut out).await?;
            // Own records written while the clock ran ahead carry a wall time ahead too.
            let rows = sqlx::query(
                "SELECT id, kind, owner_org, created_at_ms, updated_at_ms, deleted_version, seq, fields, versions FROM records \
                 WHERE updated_at_ms > $1 AND deleted_version IS NULL AND id NOT IN (SELECT record_id FROM replicas)",
            )
            .bind(limit_ms.min(i64::MAX as u64) as i64)
            .fetch_all(&mut **tx)
            .await?;
            for row in rows {
                let cur = record_row(&row)?.into_record()?;
                let mut next = cur.clone();
                let mut changed = BTreeMap::new();
                for (name, version) in next.versions.iter_mut() {
                    if ahead(version) {
                        *version = stamp();
                        changed.insert(name.clone(), cur.fields.get(name).cloned());
                    }
                }
                if changed.is_empty() {
                    continue;
                }
                next.updated_at_ms = now_ms;
                let hlc = next.versions.values().max().cloned().unwrap_or_else(&mut *stamp);
                let mut plan = WritePlan {
                    change: Change { seq: 0, record_id: cur.id, kind: cur.kind, op: ChangeOp::Update, hlc, fields: changed, at_ms: now_ms },
                    record: next,
                    refs: Vec::new(),
                };
                write_record_now(tx, &mut plan, *seq + 1, false, None).await?;
                *seq += 1;
                out.written.push(plan.record);
                out.changes.push(plan.change);
                counts.records += 1;
            }
            *report.lock().unwrap_or_else(|p| p.into_inner()) = counts;
            Ok(out)
        }

        /// After an owner's history reset (`reset_owner`), the owner's state of a record has
        /// arrived (`now`; None: it no longer shares the record). Each of our edits it had
        /// taken before and no longer has is offered again as a new outbox entry based on
        /// the owner's version; one that cannot be (the field or the record is no longer
        /// ours to write) is listed as a rejected entry that names the record and field.
        /// Returns the edits offered again (pending), in outbox order.
        async fn reoffer(tx: &mut Tx, owner: &str, id: Uuid, kind: RecordKind, held: &BTreeMap<String, verbund_core::sync::FieldState>, now: Option<&ReplicaState>, at_ms: i64) -> Result<Vec<verbund_core::sync::FieldEdit>> {
            let mut offered = Vec::new();
            for (field, ours) in held {
                let owner_version = now.and_then(|st| st.versions.get(field));
                if owner_version.is_some_and(|v| *v >= ours.version) {
                    continue; // the owner has our edit, or something newer
                }
                let edit = verbund_core::sync::FieldEdit {
                    field: field.clone(),
                    value: ours.value.clone(),
                    version: ours.version.clone(),
                    base: owner_version.cloned(),
                };
                let writable = now.is_some_and(|st| st.deleted.is_none() && st.writable.iter().any(|w| w == field));
                let (state, error) = match (now, writable) {
                    (_, true) => ("pending", None),
                    (Some(st), false) if st.deleted.is_none() => ("rejected", Some(format!("lost when {owner} went back to an earlier state (restored from a backup?): {field} is no longer writable for us"))),
                    _ => ("rejected", Some(format!("lost when {owner} went back to an earlier state (restored from a backup?): the record is no longer shared with us"))),
                };
                sqlx::query(
                    "INSERT INTO outbox (push_key, owner_org, record_id, kind, edits, state, attempts, last_error, created_ms) \
                     VALUES ($1, $2, $3, $4, $5, $6, 0, $7, $8)",
                )
                .bind(format!("reoffer-{}", Uuid::new_v4()))
                .bind(owner)
                .bind(id.to_string())
                .bind(kind.as_str())
                .bind(fields_to_json(&[&edit])?)
                .bind(state)
                .bind(error)
                .bind(at_ms)
                .execute(&mut **tx)
                .await?;
                tracing::warn!(record = %id, field = %field, owner, state, "an edit the owner had taken is gone from its history (restore?)");
                if state == "pending" {
                    offered.push(edit);
                }
            }
            sqlx::query("UPDATE replicas SET reset_from = NULL WHERE record_id = $1")
                .bind(id.to_string())
                .execute(&mut **tx)
                .await?;
            Ok(offered)
        }

        /// The owner's history changed under our cursor (it was restored from a backup):
        /// the cursor goes back to 0, every replica of the owner takes the owner's next
        /// state as it is (the held sequence numbers are no longer comparable), and our own
        /// edits the owner held are remembered until its state of the record arrives.
        async fn reset_owner(tx: &mut Tx, owner: &str, own_org: &str, at_ms: i64) -> Result<()> {
            let before: Option<i64> = sqlx::query_scalar("SELECT cursor FROM subscriptions WHERE owner_org = $1")
                .bind(owner)
                .fetch_optional(&mut **tx)
                .await?;
            let note = format!(
                "{owner}'s history no longer matched our cursor {} (restored from a backup?); at {at_ms} ms we started over from its beginning and offer again our edits it no longer has",
                before.unwrap_or(0)
            );
            sqlx::query(
                "INSERT INTO subscriptions (owner_org, cursor, owner_last_seq, cursor_mark, history_note) VALUES ($1, 0, 0, '', $2) \
                 ON CONFLICT (owner_org) DO UPDATE SET cursor = 0, cursor_mark = '', snapshot_after = '', history_note = excluded.history_note",
            )
            .bind(owner)
            .bind(&note)
            .execute(&mut **tx)
            .await?;
            let prefix = format!("{own_org}/");
            let rows = sqlx::query("SELECT record_id, shadow_fields, shadow_versions, reset_from FROM replicas WHERE owner_org = $1 AND state = 'live'")
                .bind(owner)
                .fetch_all(&mut **tx)
                .await?;
            for row in rows {
                let id: String = row.try_get("record_id")?;
                let fields: String = row.try_get("shadow_fields")?;
                let versions: String = row.try_get("shadow_versions")?;
                let earlier: Option<String> = row.try_get("reset_from")?;
                let fields: FieldMap = serde_json::from_str(&fields).map_err(|e| StoreError::Corrupt(format!("shadow of {id}: {e}")))?;
                let mut held: BTreeMap<String, verbund_core::sync::FieldState> = match earlier {
                    Some(t) => serde_json::from_str(&t).map_err(|e| StoreError::Corrupt(format!("reset_from of {id}: {e}")))?,
                    None => BTreeMap::new(),
                };
                for (name, version) in versions_from_json(&versions)? {
                    if version.node.starts_with(&prefix) && held.get(&name).is_none_or(|h| h.version < version) {
                        held.insert(name.clone(), verbund_core::sync::FieldState { value: fields.get(&name).cloned(), version });
                    }
                }
                let held = if held.is_empty() { None } else { Some(fields_to_json(&held)?) };
                sqlx::query("UPDATE replicas SET owner_seq = 0, reset_from = $2 WHERE record_id = $1")
                    .bind(&id)
                    .bind(held)
                    .execute(&mut **tx)
                    .await?;
            }
            sqlx::query("UPDATE replicas SET owner_seq = 0 WHERE owner_org = $1 AND state <> 'live'")
                .bind(owner)
                .execute(&mut **tx)
                .await?;
            tracing::warn!(owner, "{note}");
            Ok(())
        }

        /// The edit's writes go into `writes` (nothing reads them before the op ends).
        async fn replica_edit(tx: &mut Tx, writes: &mut Writes, kind: RecordKind, id: Uuid, key: &str, plan_fn: PlanFn, seq: &mut i64) -> Result<OpOutput> {
            let current = load_known(tx, writes, kind, id).await?;
            let replica = replica_row(tx, id).await?;
            let Some(replica) = replica.filter(|r| r.state == CopyState::Live) else {
                return Err(DomainError::NotFound { kind, id: id.to_string() }.into());
            };
            let Some(mut plan) = plan_fn(&current)? else {
                return Ok(OpOutput::unchanged(current));
            };
            write_record(tx, writes, &mut plan, *seq + 1, false, None).await?;
            *seq += 1;
            let edits = verbund_core::sync::edits_of(&plan.change.fields, &plan.record.versions, &current.versions);
            let row = (key.to_string(), replica.owner_org.clone(), fields_to_json(&edits)?);
            let qb = writes
                .statement(tx, "INSERT INTO outbox (push_key, owner_org, record_id, kind, edits, state, attempts, created_ms) ")
                .await?;
            qb.push_values([row], |mut b, (key, owner, edits)| {
                b.push_bind(key)
                    .push_bind(owner)
                    .push_bind(id.to_string())
                    .push_bind(kind.as_str())
                    .push_bind(edits)
                    .push_bind("pending")
                    .push_bind(0_i64)
                    .push_bind(plan.record.updated_at_ms);
            });
            Ok(OpOutput::one(plan))
        }

        async fn apply_verdict(tx: &mut Tx, v: VerdictApply, seq: &mut i64) -> Result<OpOutput> {
            let mut out = OpOutput::default();
            let row = sqlx::query("SELECT owner_org, record_id FROM outbox WHERE push_key = $1 AND owner_org = $2")
                .bind(&v.key)
                .bind(&v.owner_org)
                .fetch_optional(&mut **tx)
                .await?;
            let Some(row) = row else { return Ok(out) };
            let owner: String = row.try_get("owner_org")?;
            let id: String = row.try_get("record_id")?;
            let id = Uuid::parse_str(&id).map_err(|e| StoreError::Corrupt(e.to_string()))?;
            if v.outcome == VerdictOutcome::Rejected {
                sqlx::query("UPDATE outbox SET state = 'rejected', last_error = $2 WHERE push_key = $1")
                    .bind(&v.key)
                    .bind(&v.reason)
                    .execute(&mut **tx)
                    .await?;
            } else {
                sqlx::query("DELETE FROM outbox WHERE push_key = $1").bind(&v.key).execute(&mut **tx).await?;
            }
            let now = v.record.as_ref().map(|r| r.updated_at_ms).unwrap_or(0);
            let mut work = ReplicaWork::load(tx, &owner, &[id]).await?;
            if v.revoked {
                // We no longer see the record. Unless we applied owner changes after the
                // verdict was decided (they decide), our copy goes as with a revoke.
                let cursor: Option<i64> = sqlx::query_scalar("SELECT cursor FROM subscriptions WHERE owner_org = $1")
                    .bind(&owner)
                    .fetch_optional(&mut **tx)
                    .await?;
                if cursor.unwrap_or(0) <= v.as_of_seq {
                    work.purge(tx, id, false, v.at_ms, seq, &mut out).await?;
                    work.write_out(tx, &mut out).await?;
                    return Ok(out);
                }
            }
            if let Some(st) = v.record.filter(|st| st.id == id) {
                work.take_in(tx, st, false, now, seq, &mut out).await?;
            }
            // Whatever the verdict brought (it may be older than what we hold): show the
            // owner's state with the edits still pending, so a rejected edit disappears.
            work.reshow(tx, id, seq, &mut out).await?;
            work.write_out(tx, &mut out).await?;
            Ok(out)
        }
    };
}
