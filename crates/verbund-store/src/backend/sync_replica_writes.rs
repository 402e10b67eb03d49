//! Part of the `backend!` instantiation (see `lib.rs`): the partner's side of sync in the writer: replicas, batches with their cursor, quarantine, history resets, clock recovery, outbox edits and verdicts.
//! A macro so that the SQL is written once for SQLite and PostgreSQL.

macro_rules! backend_sync_replica_writes {
    ($db:ty, $pool:ty, $begin:expr, $savepoints:expr) => {
        // ---- Federation sync: partner side ----

        struct ReplicaRow {
            owner_org: String,
            state: String,
            owner_seq: i64,
            shadow_fields: FieldMap,
            shadow_versions: verbund_core::VersionMap,
            /// Our edits the owner held before its history was reset (see `reset_owner`).
            reset_from: Option<BTreeMap<String, verbund_core::sync::FieldState>>,
        }

        async fn replica_row(tx: &mut Tx, id: Uuid) -> Result<Option<ReplicaRow>> {
            let row = sqlx::query("SELECT owner_org, state, owner_seq, shadow_fields, shadow_versions, reset_from FROM replicas WHERE record_id = $1")
                .bind(id.to_string())
                .fetch_optional(&mut **tx)
                .await?;
            let Some(row) = row else { return Ok(None) };
            let fields: String = row.try_get("shadow_fields")?;
            let versions: String = row.try_get("shadow_versions")?;
            let reset_from: Option<String> = row.try_get("reset_from")?;
            let reset_from = reset_from
                .map(|t| serde_json::from_str(&t).map_err(|e| StoreError::Corrupt(format!("reset_from of {id}: {e}"))))
                .transpose()?;
            Ok(Some(ReplicaRow {
                reset_from,
                owner_org: row.try_get("owner_org")?,
                state: row.try_get("state")?,
                owner_seq: row.try_get("owner_seq")?,
                shadow_fields: serde_json::from_str(&fields).map_err(|e| StoreError::Corrupt(format!("shadow of {id}: {e}")))?,
                shadow_versions: versions_from_json(&versions)?,
            }))
        }

        #[allow(clippy::too_many_arguments)]
        async fn save_replica(tx: &mut Tx, id: Uuid, owner: &str, kind: RecordKind, state: &str, fields: &FieldMap, versions: &verbund_core::VersionMap, writable: &[String], owner_seq: i64, at_ms: i64) -> Result<()> {
            sqlx::query(
                "INSERT INTO replicas (record_id, owner_org, kind, state, shadow_fields, shadow_versions, writable, owner_seq, updated_ms) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) \
                 ON CONFLICT (record_id) DO UPDATE SET state = excluded.state, shadow_fields = excluded.shadow_fields, \
                 shadow_versions = excluded.shadow_versions, writable = excluded.writable, owner_seq = excluded.owner_seq, updated_ms = excluded.updated_ms",
            )
            .bind(id.to_string())
            .bind(owner)
            .bind(kind.as_str())
            .bind(state)
            .bind(fields_to_json(fields)?)
            .bind(versions_to_json(versions))
            .bind(fields_to_json(&writable)?)
            .bind(owner_seq)
            .bind(at_ms)
            .execute(&mut **tx)
            .await?;
            Ok(())
        }

        async fn pending_edits(tx: &mut Tx, id: Uuid) -> Result<Vec<verbund_core::sync::FieldEdit>> {
            let rows = sqlx::query("SELECT edits FROM outbox WHERE record_id = $1 AND state = 'pending' ORDER BY seq")
                .bind(id.to_string())
                .fetch_all(&mut **tx)
                .await?;
            let mut out = Vec::new();
            for r in rows {
                let text: String = r.try_get("edits")?;
                let edits: Vec<verbund_core::sync::FieldEdit> =
                    serde_json::from_str(&text).map_err(|e| StoreError::Corrupt(format!("outbox edits: {e}")))?;
                out.extend(edits);
            }
            Ok(out)
        }

        /// The row for a local record with this id, if it is not a replica of `owner`
        /// (an owner must never overwrite our own records).
        async fn foreign_collision(tx: &mut Tx, id: Uuid, owner: &str) -> Result<bool> {
            let found: Option<String> = sqlx::query_scalar("SELECT owner_org FROM records WHERE id = $1")
                .bind(id.to_string())
                .fetch_optional(&mut **tx)
                .await?;
            Ok(found.is_some_and(|o| o != owner))
        }

        async fn load_any(tx: &mut Tx, id: Uuid) -> Result<Option<Record>> {
            let row = sqlx::query("SELECT id, kind, owner_org, created_at_ms, updated_at_ms, deleted_version, seq, fields, versions FROM records WHERE id = $1")
                .bind(id.to_string())
                .fetch_optional(&mut **tx)
                .await?;
            row.map(|r| record_row(&r)?.into_record()).transpose()
        }

        /// Writes what the replica shows (`next`) if it differs from the stored row, with a
        /// change-log row for local watchers.
        async fn show_replica(tx: &mut Tx, current: Option<Record>, mut next: Record, seq: &mut i64, out: &mut OpOutput) -> Result<()> {
            if let Some(cur) = &current {
                if cur.fields == next.fields && cur.versions == next.versions && cur.deleted == next.deleted {
                    return Ok(());
                }
            }
            let mut changed = BTreeMap::new();
            for name in next.versions.keys() {
                let before = current.as_ref().and_then(|c| c.versions.get(name));
                if before != next.versions.get(name) {
                    changed.insert(name.clone(), next.fields.get(name).cloned());
                }
            }
            let op = match (&current, next.deleted.is_some()) {
                (_, true) => ChangeOp::Delete,
                (None, false) => ChangeOp::Create,
                (Some(c), false) if c.deleted.is_some() => ChangeOp::Create,
                _ => ChangeOp::Update,
            };
            let hlc = next
                .versions
                .values()
                .max()
                .cloned()
                .or_else(|| next.deleted.clone())
                .unwrap_or_else(|| Hlc::new(next.updated_at_ms.max(0) as u64, 0, next.owner_org.clone()));
            next.seq = *seq + 1;
            let mut plan = WritePlan {
                change: Change {
                    seq: *seq + 1,
                    record_id: next.id,
                    kind: next.kind,
                    op,
                    hlc,
                    fields: if next.deleted.is_some() { BTreeMap::new() } else { changed },
                    at_ms: next.updated_at_ms,
                },
                record: next,
                refs: Vec::new(),
            };
            let activity_account = if plan.record.kind == RecordKind::Activity {
                let related = plan.record.text("related_id").map(str::to_string);
                match related {
                    Some(r) => {
                        let row = sqlx::query("SELECT kind, account_id FROM records WHERE id = $1")
                            .bind(&r)
                            .fetch_optional(&mut **tx)
                            .await?;
                        Some(match row {
                            Some(row) => {
                                let kind: String = row.try_get("kind")?;
                                if kind == "account" { Some(r) } else { row.try_get("account_id")? }
                            }
                            None => None,
                        })
                    }
                    None => Some(None),
                }
            } else {
                None
            };
            write_record(tx, &mut plan, *seq + 1, current.is_none(), activity_account).await?;
            *seq += 1;
            out.written.push(plan.record);
            out.changes.push(plan.change);
            Ok(())
        }

        /// Takes in the owner's state of a record and shows it with our pending edits.
        /// `from_stream`: only the owner's ordered stream may bring back a revoked replica (a
        /// verdict or a repair computed before the revoke must not).
        #[allow(clippy::too_many_arguments)]
        async fn take_in(tx: &mut Tx, owner: &str, st: ReplicaState, from_stream: bool, at_ms: i64, seq: &mut i64, out: &mut OpOutput) -> Result<()> {
            if st.owner_org != owner || foreign_collision(tx, st.id, owner).await? {
                tracing::warn!(record = %st.id, owner, "ignored a replica that would overwrite a record of another owner");
                return Ok(());
            }
            let existing = replica_row(tx, st.id).await?;
            if existing.as_ref().is_some_and(|r| r.state.starts_with("erased")) {
                // Erased: replaying an old batch must never bring the record back.
                return Ok(());
            }
            if let Some(r) = &existing {
                if r.owner_org != owner {
                    return Ok(()); // another owner's record: never touched
                }
                if r.state == "revoked" && !from_stream {
                    return Ok(());
                }
            }
            if existing.as_ref().is_some_and(|r| r.state != "revoked" && st.owner_seq < r.owner_seq) {
                // An older state than the one we hold (a batch behind a newer verdict).
                return Ok(());
            }
            let current = load_any(tx, st.id).await?;
            let (shadow_f, shadow_v) = match (&st.deleted, &existing) {
                (Some(_), _) => (FieldMap::new(), verbund_core::VersionMap::new()),
                (None, Some(r)) if r.state == "live" => verbund_core::sync::take_owner_state(
                    (&r.shadow_fields, &r.shadow_versions),
                    r.owner_seq,
                    (&st.fields, &st.versions),
                    st.owner_seq,
                )
                .unwrap_or_else(|| (r.shadow_fields.clone(), r.shadow_versions.clone())),
                (None, _) => (st.fields.clone(), st.versions.clone()),
            };
            let state = if st.deleted.is_some() { "deleted" } else { "live" };
            save_replica(tx, st.id, owner, st.kind, state, &shadow_f, &shadow_v, &st.writable, st.owner_seq, at_ms).await?;
            if let Some(held) = existing.and_then(|r| r.reset_from) {
                // The owner's history was reset: what it no longer has of ours goes out again.
                reoffer(tx, owner, st.id, st.kind, &held, Some(&st), at_ms).await?;
            }
            let pending = if st.deleted.is_some() { Vec::new() } else { pending_edits(tx, st.id).await? };
            let (fields, versions) = verbund_core::sync::overlay((&shadow_f, &shadow_v), pending.iter());
            let next = Record {
                id: st.id,
                kind: st.kind,
                owner_org: owner.to_string(),
                created_at_ms: st.created_at_ms,
                updated_at_ms: st.updated_at_ms,
                deleted: st.deleted.clone(),
                seq: 0,
                fields,
                versions,
            };
            show_replica(tx, current, next, seq, out).await
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
            for id in touched {
                if let (Some(r), Some(cur)) = (replica_row(tx, id).await?, load_any(tx, id).await?) {
                    if r.state == "live" {
                        let pending = pending_edits(tx, id).await?;
                        let (fields, versions) = verbund_core::sync::overlay((&r.shadow_fields, &r.shadow_versions), pending.iter());
                        let next = Record { fields, versions, ..cur.clone() };
                        show_replica(tx, Some(cur), next, seq, &mut out).await?;
                    }
                }
            }
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
                write_record(tx, &mut plan, *seq + 1, false, None).await?;
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
        async fn reoffer(tx: &mut Tx, owner: &str, id: Uuid, kind: RecordKind, held: &BTreeMap<String, verbund_core::sync::FieldState>, now: Option<&ReplicaState>, at_ms: i64) -> Result<()> {
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
                .bind(fields_to_json(&vec![edit])?)
                .bind(state)
                .bind(error)
                .bind(at_ms)
                .execute(&mut **tx)
                .await?;
                tracing::warn!(record = %id, field = %field, owner, state, "an edit the owner had taken is gone from its history (restore?)");
            }
            sqlx::query("UPDATE replicas SET reset_from = NULL WHERE record_id = $1")
                .bind(id.to_string())
                .execute(&mut **tx)
                .await?;
            Ok(())
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
                 ON CONFLICT (owner_org) DO UPDATE SET cursor = 0, cursor_mark = '', history_note = excluded.history_note",
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

        /// Removes our copy of a record (revoked or erased): a value-free tombstone stays so
        /// the change log and local watchers stay consistent.
        async fn purge_replica(tx: &mut Tx, owner: &str, id: Uuid, erased: bool, at_ms: i64, seq: &mut i64, out: &mut OpOutput) -> Result<()> {
            if foreign_collision(tx, id, owner).await? {
                return Ok(());
            }
            let existing = replica_row(tx, id).await?;
            if let Some(r) = &existing {
                if r.owner_org != owner || r.state.starts_with("erased") {
                    return Ok(());
                }
                if r.state == "revoked" && !erased {
                    return Ok(());
                }
            }
            let current = load_any(tx, id).await?;
            let kind = current.as_ref().map(|c| c.kind);
            let state = if erased { "erased-unacked" } else { "revoked" };
            let Some(kind) = kind else {
                if erased {
                    // Never received: remember the erasure so a late batch cannot bring it in.
                    sqlx::query(
                        "INSERT INTO replicas (record_id, owner_org, kind, state, shadow_fields, shadow_versions, writable, owner_seq, updated_ms) \
                         VALUES ($1, $2, 'contact', $3, '{}', '{}', '[]', 0, $4) ON CONFLICT (record_id) DO UPDATE SET state = excluded.state",
                    )
                    .bind(id.to_string())
                    .bind(owner)
                    .bind(state)
                    .bind(at_ms)
                    .execute(&mut **tx)
                    .await?;
                }
                return Ok(());
            };
            let seq_held = existing.as_ref().map(|r| r.owner_seq).unwrap_or(0);
            save_replica(tx, id, owner, kind, state, &FieldMap::new(), &verbund_core::VersionMap::new(), &[], seq_held, at_ms).await?;
            if let Some(held) = existing.and_then(|r| r.reset_from).filter(|_| !erased) {
                reoffer(tx, owner, id, kind, &held, None, at_ms).await?;
            }
            if erased {
                // Our own edits of an erased person go too: they hold personal data.
                sqlx::query("DELETE FROM outbox WHERE record_id = $1").bind(id.to_string()).execute(&mut **tx).await?;
            } else {
                sqlx::query("UPDATE outbox SET state = 'rejected', last_error = 'the owner no longer shares this record' WHERE record_id = $1 AND state = 'pending'")
                    .bind(id.to_string())
                    .execute(&mut **tx)
                    .await?;
            }
            sqlx::query("UPDATE changes SET fields = '{}' WHERE record_id = $1")
                .bind(id.to_string())
                .execute(&mut **tx)
                .await?;
            let Some(cur) = current else { return Ok(()) };
            let tomb = cur.versions.values().max().cloned().unwrap_or_else(|| Hlc::new(at_ms.max(0) as u64, 0, owner.to_string()));
            let next = Record {
                deleted: Some(cur.deleted.clone().unwrap_or(tomb)),
                fields: FieldMap::new(),
                versions: verbund_core::VersionMap::new(),
                updated_at_ms: at_ms,
                ..cur.clone()
            };
            show_replica(tx, Some(cur), next, seq, out).await
        }

        async fn replica_batch(tx: &mut Tx, batch: ReplicaBatch, seq: &mut i64) -> Result<OpOutput> {
            let mut out = OpOutput::default();
            let stored: Option<i64> = sqlx::query_scalar("SELECT cursor FROM subscriptions WHERE owner_org = $1")
                .bind(&batch.owner_org)
                .fetch_optional(&mut **tx)
                .await?;
            let owner = batch.owner_org.clone();
            if let Some(own_org) = &batch.reset_for_org {
                reset_owner(tx, &owner, own_org, batch.at_ms).await?;
            } else if batch.cursor > 0 && stored.is_some_and(|c| c >= batch.cursor) {
                // A batch the cursor already covers was applied: applying it again changes
                // nothing. Repairs (cursor 0) apply whatever the cursor.
                return Ok(out);
            }
            let from_stream = batch.from_stream || batch.current_as_of.is_some_and(|n| stored.unwrap_or(0) <= n);
            let quarantined: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM quarantine WHERE owner_org = $1")
                .bind(&owner)
                .fetch_one(&mut **tx)
                .await?;
            for item in batch.items {
                let id = match &item {
                    ReplicaItem::Upsert(st) => st.id,
                    ReplicaItem::Revoke { id } | ReplicaItem::Erase { id } => *id,
                };
                if quarantined > 0 {
                    // A later item of the record supersedes the one we could not take.
                    sqlx::query("DELETE FROM quarantine WHERE owner_org = $1 AND record_id = $2")
                        .bind(&owner)
                        .bind(id.to_string())
                        .execute(&mut **tx)
                        .await?;
                }
                match item {
                    ReplicaItem::Upsert(st) => take_in(tx, &owner, st, from_stream, batch.at_ms, seq, &mut out).await?,
                    ReplicaItem::Revoke { id } => purge_replica(tx, &owner, id, false, batch.at_ms, seq, &mut out).await?,
                    ReplicaItem::Erase { id } => purge_replica(tx, &owner, id, true, batch.at_ms, seq, &mut out).await?,
                }
            }
            for q in &batch.quarantine {
                sqlx::query(
                    "INSERT INTO quarantine (owner_org, record_id, item, reason, first_ms, last_ms, attempts) VALUES ($1, $2, $3, $4, $5, $5, 1) \
                     ON CONFLICT (owner_org, record_id) DO UPDATE SET item = excluded.item, reason = excluded.reason, \
                     last_ms = excluded.last_ms, attempts = quarantine.attempts + 1",
                )
                .bind(&owner)
                .bind(&q.record_id)
                .bind(&q.item)
                .bind(&q.reason)
                .bind(batch.at_ms)
                .execute(&mut **tx)
                .await?;
            }
            if batch.cursor > 0 || stored.is_none() || batch.reset_for_org.is_some() {
                // Even a batch that changed nothing moves the cursor: what we know advances.
                // After a reset the cursor starts again below where it was.
                let sql = if batch.reset_for_org.is_some() {
                    "INSERT INTO subscriptions (owner_org, cursor, cursor_mark, owner_last_seq, last_batch_ms) VALUES ($1, $2, $3, $4, $5) \
                     ON CONFLICT (owner_org) DO UPDATE SET cursor = excluded.cursor, cursor_mark = excluded.cursor_mark, \
                     owner_last_seq = excluded.owner_last_seq, last_batch_ms = excluded.last_batch_ms"
                } else {
                    "INSERT INTO subscriptions (owner_org, cursor, cursor_mark, owner_last_seq, last_batch_ms) VALUES ($1, $2, $3, $4, $5) \
                     ON CONFLICT (owner_org) DO UPDATE SET \
                     cursor_mark = CASE WHEN excluded.cursor > subscriptions.cursor THEN excluded.cursor_mark ELSE subscriptions.cursor_mark END, \
                     cursor = CASE WHEN excluded.cursor > subscriptions.cursor THEN excluded.cursor ELSE subscriptions.cursor END, \
                     owner_last_seq = excluded.owner_last_seq, last_batch_ms = excluded.last_batch_ms"
                };
                sqlx::query(sql)
                    .bind(&owner)
                    .bind(batch.cursor)
                    .bind(&batch.cursor_mark)
                    .bind(batch.owner_last_seq)
                    .bind(batch.at_ms)
                    .execute(&mut **tx)
                    .await?;
            }
            Ok(out)
        }

        async fn replica_edit(tx: &mut Tx, kind: RecordKind, id: Uuid, key: &str, plan_fn: PlanFn, seq: &mut i64) -> Result<OpOutput> {
            let current = load(tx, kind, id).await?;
            let replica = replica_row(tx, id).await?;
            let Some(replica) = replica.filter(|r| r.state == "live") else {
                return Err(DomainError::NotFound { kind, id: id.to_string() }.into());
            };
            let Some(mut plan) = plan_fn(&current)? else {
                return Ok(OpOutput::unchanged(current));
            };
            write_record(tx, &mut plan, *seq + 1, false, None).await?;
            *seq += 1;
            let edits = verbund_core::sync::edits_of(&plan.change.fields, &plan.record.versions, &current.versions);
            sqlx::query(
                "INSERT INTO outbox (push_key, owner_org, record_id, kind, edits, state, attempts, created_ms) \
                 VALUES ($1, $2, $3, $4, $5, 'pending', 0, $6)",
            )
            .bind(key)
            .bind(&replica.owner_org)
            .bind(id.to_string())
            .bind(kind.as_str())
            .bind(fields_to_json(&edits)?)
            .bind(plan.record.updated_at_ms)
            .execute(&mut **tx)
            .await?;
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
            if v.revoked {
                // We no longer see the record. Unless we applied owner changes after the
                // verdict was decided (they decide), our copy goes as with a revoke.
                let cursor: Option<i64> = sqlx::query_scalar("SELECT cursor FROM subscriptions WHERE owner_org = $1")
                    .bind(&owner)
                    .fetch_optional(&mut **tx)
                    .await?;
                if cursor.unwrap_or(0) <= v.as_of_seq {
                    purge_replica(tx, &owner, id, false, v.at_ms, seq, &mut out).await?;
                    return Ok(out);
                }
            }
            if let Some(st) = v.record.filter(|st| st.id == id) {
                take_in(tx, &owner, st, false, now, seq, &mut out).await?;
            }
            // Whatever the verdict brought (it may be older than what we hold): show the
            // owner's state with the edits still pending, so a rejected edit disappears.
            if let (Some(r), Some(cur)) = (replica_row(tx, id).await?, load_any(tx, id).await?) {
                if r.state == "live" {
                    let pending = pending_edits(tx, id).await?;
                    let (fields, versions) = verbund_core::sync::overlay((&r.shadow_fields, &r.shadow_versions), pending.iter());
                    let next = Record { fields, versions, ..cur.clone() };
                    show_replica(tx, Some(cur), next, seq, &mut out).await?;
                }
            }
            Ok(out)
        }
    };
}
