//! Part of the `backend!` instantiation (see `lib.rs`): the partner's apply of the owner's
//! items, batched. A `ReplicaWork` loads the batch's rows with one query per table
//! (records, replicas, pending outbox edits), keeps them current in memory while the items
//! are applied in order, and writes them with multi-row statements at the end: a handful of
//! statements per batch, not several per record (sqlx hands every SQLite statement to a
//! worker thread; the number of statements, not the SQL, sets the cost).
//! A macro so that the SQL is written once for SQLite and PostgreSQL.

macro_rules! backend_sync_replica_batch {
    ($db:ty, $pool:ty, $begin:expr, $savepoints:expr) => {
        /// Ids per `IN (…)` list, and rows per multi-row write (within both databases'
        /// limits on bound parameters).
        const IN_CHUNK: usize = 1000;
        const ROWS_CHUNK: usize = 500;
        /// Records of a batch looked up for records here referring to them (see
        /// `replica_batch`).
        const DEPENDENTS_PROBE_AT_MOST: usize = 16;

        /// What a replica row written by the batch has beside its `ReplicaRow` (which stays
        /// in `ReplicaWork::replicas`, the one copy of its values).
        struct ReplicaWrite {
            kind: RecordKind,
            writable: Vec<String>,
            at_ms: i64,
        }

        /// The rows a batch of replica items reads and writes (see the module comment).
        struct ReplicaWork {
            owner: String,
            /// `records` rows by id as they stand in this transaction (None: no row); the
            /// rows the batch writes are written from here (one copy of each, taken, not
            /// cloned: copying records cost more than writing them).
            records: HashMap<Uuid, Option<Record>>,
            replicas: HashMap<Uuid, Option<ReplicaRow>>,
            /// Pending outbox edits per record, in outbox order.
            pending: HashMap<Uuid, Vec<verbund_core::sync::FieldEdit>>,
            /// Record rows to write, with an activity's derived account.
            record_writes: BTreeMap<Uuid, Option<Option<String>>>,
            replica_writes: BTreeMap<Uuid, ReplicaWrite>,
            /// Records whose change-log values go (revoked, erased).
            blank_changes: BTreeSet<Uuid>,
            /// The replicas of ours that are live in the database as it stands in this
            /// transaction: the live count per owner (`replica_counts`) moves by what the
            /// batch changes of them, once per batch (a trigger per row cost more than the
            /// row's own insert). With each, its share of the bucket sums (`replica_sums`,
            /// kept the same way; None: from before buckets were kept, counted in none).
            live_in_db: HashMap<Uuid, Option<crate::sum_deltas::Share>>,
            /// What the batch changed of our live count so far (written at `flush`).
            live_delta: i64,
            /// What the batch changed of the bucket sums so far (written at `flush`).
            sums: ReplicaSumDeltas,
        }

        fn in_list(qb: &mut QueryBuilder<$db>, ids: &[Uuid]) {
            let mut sep = qb.separated(", ");
            for id in ids {
                sep.push_bind(id.to_string());
            }
            qb.push(")");
        }

        fn parse_id(text: &str) -> Result<Uuid> {
            Uuid::parse_str(text).map_err(|e| StoreError::Corrupt(e.to_string()))
        }

        fn replica_from_row(row: &<$db as sqlx::Database>::Row) -> Result<ReplicaRow> {
            let id: String = row.try_get("record_id")?;
            let state: String = row.try_get("state")?;
            let fields: String = row.try_get("shadow_fields")?;
            let versions: String = row.try_get("shadow_versions")?;
            let reset_from: Option<String> = row.try_get("reset_from")?;
            let reset_from = reset_from
                .map(|t| serde_json::from_str(&t).map_err(|e| StoreError::Corrupt(format!("reset_from of {id}: {e}"))))
                .transpose()?;
            Ok(ReplicaRow {
                reset_from,
                owner_org: row.try_get("owner_org")?,
                state: CopyState::parse(&state).ok_or_else(|| StoreError::Corrupt(format!("replica state {state:?} of {id}")))?,
                owner_seq: row.try_get("owner_seq")?,
                shadow_fields: serde_json::from_str(&fields).map_err(|e| StoreError::Corrupt(format!("shadow of {id}: {e}")))?,
                shadow_versions: versions_from_json(&versions)?,
            })
        }

        impl ReplicaWork {
            /// Loads the rows of `ids`: one query per table and chunk of ids (one query in
            /// all on SQLite).
            async fn load(tx: &mut Tx, owner: &str, ids: &[Uuid]) -> Result<ReplicaWork> {
                Self::load_with(tx, owner, ids, true).await
            }

            /// `load`; `pending_edits`: false when this transaction has seen that no outbox
            /// edit is pending at all, so there is none to read.
            async fn load_with(tx: &mut Tx, owner: &str, ids: &[Uuid], pending_edits: bool) -> Result<ReplicaWork> {
                let mut work = ReplicaWork::empty(owner, ids);
                let ids = work.ids();
                let mut reads = Reads::new();
                Self::push_reads(tx, &mut reads, &ids).await?;
                let rows = reads.fetch(tx).await?;
                work.take_rows(&rows)?;
                if pending_edits {
                    work.read_pending(tx, &ids).await?;
                }
                Ok(work)
            }

            /// The work of `ids` before anything is read: no rows.
            fn empty(owner: &str, ids: &[Uuid]) -> ReplicaWork {
                ReplicaWork {
                    owner: owner.to_string(),
                    records: ids.iter().map(|id| (*id, None)).collect(),
                    replicas: ids.iter().map(|id| (*id, None)).collect(),
                    pending: HashMap::new(),
                    record_writes: BTreeMap::new(),
                    replica_writes: BTreeMap::new(),
                    blank_changes: BTreeSet::new(),
                    live_in_db: HashMap::new(),
                    live_delta: 0,
                    sums: ReplicaSumDeltas::default(),
                }
            }

            /// The batch's ids, each once, in order.
            fn ids(&self) -> Vec<Uuid> {
                self.records.keys().copied().collect::<BTreeSet<_>>().into_iter().collect()
            }

            /// Adds the reads of the records and replicas of `ids` to `reads` (one statement
            /// per table and chunk); each row names its table in `src` (see `take_rows`).
            async fn push_reads(tx: &mut Tx, reads: &mut Reads, ids: &[Uuid]) -> Result<()> {
                for chunk in ids.chunks(IN_CHUNK) {
                    let qb = reads.statement_of(tx, "SELECT 'record' AS src, ", chunk.len()).await?;
                    qb.push(RECORD_COLUMNS).push(" FROM records WHERE id IN (");
                    in_list(qb, chunk);
                    let qb = reads
                        .statement_of(
                            tx,
                            "SELECT 'replica' AS src, record_id, owner_org, state, owner_seq, shadow_fields, shadow_versions, reset_from, bucket, sum_part \
                             FROM replicas WHERE record_id IN (",
                            chunk.len(),
                        )
                        .await?;
                    in_list(qb, chunk);
                }
                Ok(())
            }

            /// Takes in the rows of `push_reads` (rows of other reads are passed by).
            fn take_rows(&mut self, rows: &[<$db as sqlx::Database>::Row]) -> Result<()> {
                for row in rows {
                    let src: String = row.try_get("src")?;
                    match src.as_str() {
                        "record" => {
                            let rec = record_row(row)?.into_record()?;
                            self.records.insert(rec.id, Some(rec));
                        }
                        "replica" => {
                            let id: String = row.try_get("record_id")?;
                            let (id, replica) = (parse_id(&id)?, replica_from_row(row)?);
                            if replica.state == CopyState::Live && replica.owner_org == self.owner {
                                let share = crate::sum_deltas::share_of(row.try_get("bucket")?, row.try_get("sum_part")?);
                                self.live_in_db.insert(id, share);
                            }
                            self.replicas.insert(id, Some(replica));
                        }
                        _ => {}
                    }
                }
                Ok(())
            }

            /// Reads our pending outbox edits of `ids`.
            async fn read_pending(&mut self, tx: &mut Tx, ids: &[Uuid]) -> Result<()> {
                for chunk in ids.chunks(IN_CHUNK) {
                    let mut qb: QueryBuilder<$db> = QueryBuilder::new("SELECT record_id, edits FROM outbox WHERE state = 'pending' AND record_id IN (");
                    in_list(&mut qb, chunk);
                    qb.push(" ORDER BY seq");
                    for row in qb.build().fetch_all(&mut **tx).await? {
                        let id: String = row.try_get("record_id")?;
                        let text: String = row.try_get("edits")?;
                        let edits: Vec<verbund_core::sync::FieldEdit> =
                            serde_json::from_str(&text).map_err(|e| StoreError::Corrupt(format!("outbox edits: {e}")))?;
                        self.pending.entry(parse_id(&id)?).or_default().extend(edits);
                    }
                }
                Ok(())
            }

            fn record(&self, id: Uuid) -> Option<Record> {
                self.records.get(&id).cloned().flatten()
            }

            fn replica(&self, id: Uuid) -> Option<ReplicaRow> {
                self.replicas.get(&id).cloned().flatten()
            }

            /// A row for a local record with this id that is not a replica of our owner
            /// (an owner must never overwrite another's records).
            fn foreign_collision(&self, id: Uuid) -> bool {
                self.records.get(&id).and_then(Option::as_ref).is_some_and(|r| r.owner_org != self.owner)
            }

            /// Keeps `row` as the replica of `id` and writes it at `flush`.
            fn save_replica(&mut self, id: Uuid, row: ReplicaRow, write: ReplicaWrite) {
                self.replicas.insert(id, Some(row));
                self.replica_writes.insert(id, write);
            }

            /// The account an activity related to `related` rolls up to.
            async fn account_of(&self, tx: &mut Tx, related: &str) -> Result<Option<String>> {
                if let Some(Some(rec)) = Uuid::parse_str(related).ok().and_then(|id| self.records.get(&id)) {
                    return Ok(if rec.kind == RecordKind::Account {
                        Some(related.to_string())
                    } else {
                        rec.text("account_id").map(str::to_string)
                    });
                }
                let row = sqlx::query("SELECT kind, account_id FROM records WHERE id = $1")
                    .bind(related)
                    .fetch_optional(&mut **tx)
                    .await?;
                Ok(match row {
                    Some(row) => {
                        let kind: String = row.try_get("kind")?;
                        if kind == "account" { Some(related.to_string()) } else { row.try_get("account_id")? }
                    }
                    None => None,
                })
            }

            /// Shows `next` as the record's row if it differs from the row as it stands, with
            /// a change-log row for local watchers.
            async fn show(&mut self, tx: &mut Tx, mut next: Record, seq: &mut i64, out: &mut OpOutput) -> Result<()> {
                let current = self.records.get(&next.id).and_then(Option::as_ref);
                if let Some(cur) = current {
                    if cur.fields == next.fields && cur.versions == next.versions && cur.deleted == next.deleted {
                        return Ok(());
                    }
                }
                let mut changed = BTreeMap::new();
                for name in next.versions.keys() {
                    let before = current.and_then(|c| c.versions.get(name));
                    if before != next.versions.get(name) {
                        // Names only: the change log keeps no values (see `append_changes`).
                        changed.insert(name.clone(), None);
                    }
                }
                let op = match (current, next.deleted.is_some()) {
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
                *seq += 1;
                next.seq = *seq;
                let activity_account = if next.kind == RecordKind::Activity {
                    Some(match next.text("related_id").map(str::to_string) {
                        Some(r) => self.account_of(tx, &r).await?,
                        None => None,
                    })
                } else {
                    None
                };
                if current.is_none() {
                    // Its first appearance here: nothing of ours can refer to it yet.
                    out.first_foreign.push(*seq);
                }
                out.changes.push(Change {
                    seq: *seq,
                    record_id: next.id,
                    kind: next.kind,
                    op,
                    hlc,
                    fields: if next.deleted.is_some() { BTreeMap::new() } else { changed },
                    at_ms: next.updated_at_ms,
                });
                self.record_writes.insert(next.id, activity_account);
                self.records.insert(next.id, Some(next));
                Ok(())
            }

            /// Shows the owner's state we hold of `id` with our pending edits on top (after
            /// a verdict or a re-stamp changed what is pending).
            async fn reshow(&mut self, tx: &mut Tx, id: Uuid, seq: &mut i64, out: &mut OpOutput) -> Result<()> {
                if let (Some(r), Some(cur)) = (self.replica(id), self.record(id)) {
                    if r.state == CopyState::Live {
                        let pending = self.pending.get(&id).cloned().unwrap_or_default();
                        let (fields, versions) = verbund_core::sync::overlay((&r.shadow_fields, &r.shadow_versions), pending.iter());
                        let next = Record { fields, versions, ..cur };
                        self.show(tx, next, seq, out).await?;
                    }
                }
                Ok(())
            }

            /// Takes in the owner's state of a record and shows it with our pending edits.
            /// `from_stream`: only the owner's ordered stream may bring back a revoked replica
            /// (a verdict or a repair computed before the revoke must not).
            async fn take_in(&mut self, tx: &mut Tx, mut st: ReplicaState, from_stream: bool, at_ms: i64, seq: &mut i64, out: &mut OpOutput) -> Result<()> {
                if st.owner_org != self.owner || self.foreign_collision(st.id) {
                    tracing::warn!(record = %st.id, owner = %self.owner, "ignored a replica that would overwrite a record of another owner");
                    return Ok(());
                }
                let existing = self.replicas.get(&st.id).and_then(Option::as_ref);
                if let Some(r) = existing {
                    if r.state.is_erased() {
                        // Erased: replaying an old batch must never bring the record back.
                        return Ok(());
                    }
                    if r.owner_org != self.owner {
                        return Ok(()); // another owner's record: never touched
                    }
                    if r.state == CopyState::Revoked && !from_stream {
                        return Ok(());
                    }
                    if r.state != CopyState::Revoked && st.owner_seq < r.owner_seq {
                        // An older state than the one we hold (a batch behind a newer verdict).
                        return Ok(());
                    }
                }
                if let Some(held) = existing.and_then(|r| r.reset_from.clone()) {
                    // The owner's history was reset: what it no longer has of ours goes out again.
                    let offered = reoffer(tx, &self.owner, st.id, st.kind, &held, Some(&st), at_ms).await?;
                    self.pending.entry(st.id).or_default().extend(offered);
                }
                let existing = self.replicas.get(&st.id).and_then(Option::as_ref);
                let (shadow_f, shadow_v) = match (&st.deleted, existing) {
                    (Some(_), _) => (FieldMap::new(), verbund_core::VersionMap::new()),
                    (None, Some(r)) if r.state == CopyState::Live => verbund_core::sync::take_owner_state(
                        (&r.shadow_fields, &r.shadow_versions),
                        r.owner_seq,
                        (&st.fields, &st.versions),
                        st.owner_seq,
                    )
                    .unwrap_or_else(|| (r.shadow_fields.clone(), r.shadow_versions.clone())),
                    // A first copy (or one back from a revoke): the owner's state as it came.
                    (None, _) => (std::mem::take(&mut st.fields), std::mem::take(&mut st.versions)),
                };
                let pending: &[verbund_core::sync::FieldEdit] = match self.pending.get(&st.id) {
                    Some(p) if st.deleted.is_none() => p,
                    _ => &[],
                };
                let (fields, versions) = verbund_core::sync::overlay((&shadow_f, &shadow_v), pending.iter());
                let state = if st.deleted.is_some() { CopyState::Deleted } else { CopyState::Live };
                let row = ReplicaRow {
                    owner_org: self.owner.clone(),
                    state,
                    owner_seq: st.owner_seq,
                    shadow_fields: shadow_f,
                    shadow_versions: shadow_v,
                    reset_from: None,
                };
                self.save_replica(st.id, row, ReplicaWrite { kind: st.kind, writable: std::mem::take(&mut st.writable), at_ms });
                let next = Record {
                    id: st.id,
                    kind: st.kind,
                    owner_org: self.owner.clone(),
                    created_at_ms: st.created_at_ms,
                    updated_at_ms: st.updated_at_ms,
                    deleted: st.deleted,
                    seq: 0,
                    fields,
                    versions,
                };
                self.show(tx, next, seq, out).await
            }

            /// Removes our copy of a record (revoked or erased): a value-free tombstone stays
            /// so the change log and local watchers stay consistent.
            async fn purge(&mut self, tx: &mut Tx, id: Uuid, erased: bool, at_ms: i64, seq: &mut i64, out: &mut OpOutput) -> Result<()> {
                if self.foreign_collision(id) {
                    return Ok(());
                }
                let existing = self.replica(id);
                if let Some(r) = &existing {
                    if r.owner_org != self.owner || r.state.is_erased() {
                        return Ok(());
                    }
                    if r.state == CopyState::Revoked && !erased {
                        return Ok(());
                    }
                }
                let current = self.record(id);
                let state = if erased { CopyState::ErasedUnacked } else { CopyState::Revoked };
                let Some(kind) = current.as_ref().map(|c| c.kind) else {
                    if erased {
                        // Never received: remember the erasure so a late batch cannot bring it in.
                        sqlx::query(
                            "INSERT INTO replicas (record_id, owner_org, kind, state, shadow_fields, shadow_versions, writable, owner_seq, updated_ms, bucket) \
                             VALUES ($1, $2, 'contact', $3, '{}', '{}', '[]', 0, $4, $5) \
                             ON CONFLICT (record_id) DO UPDATE SET state = excluded.state, digest = NULL, sum_part = NULL",
                        )
                        .bind(id.to_string())
                        .bind(&self.owner)
                        .bind(state.as_str())
                        .bind(at_ms)
                        .bind(verbund_core::sync::bucket_of(&id) as i64)
                        .execute(&mut **tx)
                        .await?;
                        if let Some(share) = self.live_in_db.remove(&id) {
                            self.live_delta -= 1;
                            if let Some(share) = share {
                                self.sums.add(&self.owner, share, -1);
                            }
                        }
                        let row = existing.map(|r| ReplicaRow { state, ..r }).unwrap_or(ReplicaRow {
                            owner_org: self.owner.clone(),
                            state,
                            owner_seq: 0,
                            shadow_fields: FieldMap::new(),
                            shadow_versions: verbund_core::VersionMap::new(),
                            reset_from: None,
                        });
                        self.replicas.insert(id, Some(row));
                    }
                    return Ok(());
                };
                let seq_held = existing.as_ref().map(|r| r.owner_seq).unwrap_or(0);
                let mut reset_from = existing.and_then(|r| r.reset_from);
                if !erased {
                    if let Some(held) = reset_from.take() {
                        let offered = reoffer(tx, &self.owner, id, kind, &held, None, at_ms).await?;
                        self.pending.entry(id).or_default().extend(offered);
                    }
                }
                let row = ReplicaRow {
                    owner_org: self.owner.clone(),
                    state,
                    owner_seq: seq_held,
                    shadow_fields: FieldMap::new(),
                    shadow_versions: verbund_core::VersionMap::new(),
                    reset_from,
                };
                self.save_replica(id, row, ReplicaWrite { kind, writable: Vec::new(), at_ms });
                let had_pending = self.pending.remove(&id).is_some_and(|p| !p.is_empty());
                if erased {
                    // Our own edits of an erased person go too: they hold personal data.
                    sqlx::query("DELETE FROM outbox WHERE record_id = $1").bind(id.to_string()).execute(&mut **tx).await?;
                } else if had_pending {
                    sqlx::query("UPDATE outbox SET state = 'rejected', last_error = 'the owner no longer shares this record' WHERE record_id = $1 AND state = 'pending'")
                        .bind(id.to_string())
                        .execute(&mut **tx)
                        .await?;
                }
                self.blank_changes.insert(id);
                let Some(cur) = current else { return Ok(()) };
                let tomb = cur.versions.values().max().cloned().unwrap_or_else(|| Hlc::new(at_ms.max(0) as u64, 0, self.owner.clone()));
                let next = Record {
                    deleted: Some(cur.deleted.clone().unwrap_or(tomb)),
                    fields: FieldMap::new(),
                    versions: verbund_core::VersionMap::new(),
                    updated_at_ms: at_ms,
                    ..cur
                };
                self.show(tx, next, seq, out).await
            }

            /// `flush` and run its writes.
            async fn write_out(self, tx: &mut Tx, out: &mut OpOutput) -> Result<()> {
                let mut writes = Writes::new();
                self.flush(tx, &mut writes, out).await?;
                writes.run(tx).await
            }

            /// Writes what the batch changed: multi-row upserts of replicas and records, and
            /// the change-log values of revoked and erased records blanked (into `writes`,
            /// which the caller runs). The records written go to `out` (for the record cache).
            async fn flush(mut self, tx: &mut Tx, writes: &mut Writes, out: &mut OpOutput) -> Result<()> {
                let mut replicas = Vec::with_capacity(self.replica_writes.len());
                for (id, w) in std::mem::take(&mut self.replica_writes) {
                    let Some(Some(row)) = self.replicas.remove(&id) else {
                        return Err(StoreError::Corrupt(format!("replica {id} to write is not in its batch")));
                    };
                    replicas.push((id, w, row));
                }
                let mut live_delta = self.live_delta;
                for (id, _, row) in &replicas {
                    live_delta += i64::from(row.state == CopyState::Live) - i64::from(self.live_in_db.contains_key(id));
                    if let Some(Some(share)) = self.live_in_db.get(id) {
                        self.sums.add(&self.owner, *share, -1);
                    }
                }
                if live_delta != 0 {
                    let qb = writes.statement(tx, "INSERT INTO replica_counts (owner_org, live) VALUES (").await?;
                    qb.push_bind(self.owner.clone())
                        .push(", ")
                        .push_bind(live_delta)
                        .push(") ON CONFLICT (owner_org) DO UPDATE SET live = replica_counts.live + excluded.live");
                }
                let mut records = Vec::with_capacity(self.record_writes.len());
                for (id, activity_account) in std::mem::take(&mut self.record_writes) {
                    let Some(Some(rec)) = self.records.remove(&id) else {
                        return Err(StoreError::Corrupt(format!("record {id} to write is not in its batch")));
                    };
                    records.push((rec, activity_account));
                }
                // The records' JSON, encoded once: a replica without pending edits holds the
                // same fields and versions as its record, and takes the same text.
                let mut record_json = Vec::with_capacity(records.len());
                for (rec, _) in &records {
                    record_json.push((fields_to_json(&rec.fields)?, versions_to_json(&rec.versions)));
                }
                let record_at: HashMap<Uuid, usize> = records.iter().enumerate().map(|(i, (rec, _))| (rec.id, i)).collect();
                for chunk in replicas.chunks(ROWS_CHUNK) {
                    let mut rows = Vec::with_capacity(chunk.len());
                    for (id, w, row) in chunk {
                        // Only a live copy counts in anti-entropy's bucket sums.
                        let digest = (row.state == CopyState::Live).then(|| verbund_core::sync::record_digest(&row.shadow_versions, false));
                        if let Some(d) = digest {
                            let share = (verbund_core::sync::bucket_of(id) as i64, verbund_core::sync::sum_part(id, d) as i64, true);
                            self.sums.add(&row.owner_org, share, 1);
                        }
                        let same = record_at.get(id).filter(|&&i| {
                            let rec = &records[i].0;
                            rec.fields == row.shadow_fields && rec.versions == row.shadow_versions
                        });
                        let (fields, versions) = match same {
                            Some(&i) => record_json[i].clone(),
                            None => (fields_to_json(&row.shadow_fields)?, versions_to_json(&row.shadow_versions)),
                        };
                        rows.push((id, w, row, fields, versions, fields_to_json(&w.writable)?, digest));
                    }
                    let qb = writes
                        .statement_of(
                            tx,
                            "INSERT INTO replicas (record_id, owner_org, kind, state, shadow_fields, shadow_versions, writable, owner_seq, updated_ms, digest, sum_part, bucket) ",
                            rows.len(),
                        )
                        .await?;
                    qb.push_values(rows, |mut b, (id, w, row, fields, versions, writable, digest)| {
                        b.push_bind(id.to_string())
                            .push_bind(row.owner_org.clone())
                            .push_bind(w.kind.as_str())
                            .push_bind(row.state.as_str())
                            .push_bind(fields)
                            .push_bind(versions)
                            .push_bind(writable)
                            .push_bind(row.owner_seq)
                            .push_bind(w.at_ms)
                            .push_bind(digest.map(|d| d as i64))
                            .push_bind(digest.map(|d| verbund_core::sync::sum_part(id, d) as i64))
                            .push_bind(verbund_core::sync::bucket_of(id) as i64);
                    });
                    qb.push(
                        " ON CONFLICT (record_id) DO UPDATE SET state = excluded.state, shadow_fields = excluded.shadow_fields, \
                         shadow_versions = excluded.shadow_versions, writable = excluded.writable, owner_seq = excluded.owner_seq, updated_ms = excluded.updated_ms, \
                         digest = excluded.digest, sum_part = excluded.sum_part, bucket = excluded.bucket",
                    );
                }
                apply_replica_sums(tx, writes, &self.sums).await?;
                let mut record_json = record_json.into_iter();
                for chunk in records.chunks(ROWS_CHUNK) {
                    let mut rows = Vec::with_capacity(chunk.len());
                    for (rec, activity_account) in chunk {
                        let mut idx = write::index_columns(rec);
                        if let Some(account) = activity_account {
                            idx.filter.account_id = account.clone();
                        }
                        let (fields, versions) = record_json
                            .next()
                            .ok_or_else(|| StoreError::Corrupt(format!("record {} to write has no encoding", rec.id)))?;
                        rows.push((rec, idx, fields, versions));
                    }
                    let qb = writes
                        .statement_of(
                            tx,
                            "INSERT INTO records (id, kind, owner_org, created_at_ms, updated_at_ms, deleted_version, seq, fields, versions, \
                             account_id, contact_id, related_id, stage, status, priority, assigned_org, channel, search_text) ",
                            rows.len(),
                        )
                        .await?;
                    qb.push_values(rows, |mut b, (rec, idx, fields, versions)| {
                        b.push_bind(rec.id.to_string());
                        bind_record_columns(&mut b, rec, rec.seq, fields, versions, idx);
                    });
                    qb.push(
                        " ON CONFLICT (id) DO UPDATE SET kind = excluded.kind, owner_org = excluded.owner_org, created_at_ms = excluded.created_at_ms, \
                         updated_at_ms = excluded.updated_at_ms, deleted_version = excluded.deleted_version, seq = excluded.seq, fields = excluded.fields, \
                         versions = excluded.versions, account_id = excluded.account_id, contact_id = excluded.contact_id, related_id = excluded.related_id, \
                         stage = excluded.stage, status = excluded.status, priority = excluded.priority, assigned_org = excluded.assigned_org, \
                         channel = excluded.channel, search_text = excluded.search_text",
                    );
                }
                let blank: Vec<Uuid> = self.blank_changes.into_iter().collect();
                for chunk in blank.chunks(IN_CHUNK) {
                    let qb = writes.statement_of(tx, "UPDATE changes SET fields = '{}' WHERE record_id IN (", chunk.len()).await?;
                    in_list(qb, chunk);
                }
                out.blanked.extend(blank);
                out.written.extend(records.into_iter().map(|(rec, _)| rec));
                Ok(())
            }
        }

        /// Applies a batch of the owner's items. Its writes, the quarantine and the cursor
        /// go into `writes`, which the writer runs with the batch's change log (one query on
        /// SQLite: one hand-off to its worker thread for all of an update's writes).
        async fn replica_batch(tx: &mut Tx, batch: ReplicaBatch, seq: &mut i64, writes: &mut Writes) -> Result<OpOutput> {
            let mut out = OpOutput::default();
            let ids: Vec<Uuid> = batch
                .items
                .iter()
                .map(|item| match item {
                    ReplicaItem::Upsert(st) => st.id,
                    ReplicaItem::Revoke { id } | ReplicaItem::Erase { id } => *id,
                })
                .collect();
            let owner = batch.owner_org.clone();
            let mut work = ReplicaWork::empty(&owner, &ids);
            // The position, whether anything of the owner waits in quarantine and whether any
            // edit of ours is pending, in one read; with it the batch's records and replicas
            // (one query on SQLite: every statement is a hand-off to its worker thread, an
            // update's latency). A reset changes the replicas first: they are read after it.
            let mut reads = Reads::new();
            let qb = reads
                .statement(tx, "SELECT 'position' AS src, s.cursor, s.snapshot_after, (SELECT COUNT(*) FROM quarantine q WHERE q.owner_org = ")
                .await?;
            qb.push_bind(owner.clone())
                .push(
                    ") AS quarantined, (SELECT COUNT(*) FROM (SELECT 1 FROM outbox WHERE state = 'pending' LIMIT 1) p) AS pending_edits \
                     FROM (SELECT 1 AS one) o LEFT JOIN subscriptions s ON s.owner_org = ",
                )
                .push_bind(owner.clone());
            let read_ahead = batch.reset_for_org.is_none();
            let unique_ids = work.ids();
            if read_ahead {
                ReplicaWork::push_reads(tx, &mut reads, &unique_ids).await?;
            }
            // A small batch on SQLite (an update): which of its records a record here refers
            // to, in the same query (the predicate of `stream_changes_after`). The changes of
            // the others are marked for the kept changes (`recent.rs`), so our own sync
            // streams pass them by without reading the log back after every apply. A bulk
            // batch is not looked up (its index probes would cost more than they save).
            let probe_dependents = MULTI_STATEMENT && read_ahead && unique_ids.len() <= DEPENDENTS_PROBE_AT_MOST;
            if probe_dependents {
                let qb = reads
                    .statement_of(
                        tx,
                        "SELECT 'dependent' AS src, account_id AS target FROM records \
                         WHERE deleted_version IS NULL AND kind <> 'account' AND account_id IN (",
                        unique_ids.len() * 3,
                    )
                    .await?;
                in_list(qb, &unique_ids);
                qb.push(" UNION ALL SELECT 'dependent', contact_id FROM records WHERE deleted_version IS NULL AND contact_id IN (");
                in_list(qb, &unique_ids);
                qb.push(" UNION ALL SELECT 'dependent', related_id FROM records WHERE deleted_version IS NULL AND related_id IN (");
                in_list(qb, &unique_ids);
            }
            let rows = reads.fetch(tx).await?;
            let mut referred = HashSet::new();
            if probe_dependents {
                for row in &rows {
                    if row.try_get::<String, _>("src")? == "dependent" {
                        let target: Option<String> = row.try_get("target")?;
                        if let Some(target) = target {
                            referred.insert(parse_id(&target)?);
                        }
                    }
                }
            }
            let row = rows
                .first()
                .filter(|row| row.try_get::<String, _>("src").is_ok_and(|src| src == "position"))
                .ok_or_else(|| StoreError::Corrupt("the position read returned no row".into()))?;
            let quarantined: i64 = row.try_get("quarantined")?;
            let pending_edits: i64 = row.try_get("pending_edits")?;
            let position = match (row.try_get::<Option<i64>, _>("cursor")?, row.try_get::<Option<String>, _>("snapshot_after")?) {
                (Some(cursor), Some(after)) => Some((cursor, after)),
                _ => None,
            };
            let stored = position.as_ref().map(|(c, _)| *c);
            if let Some(own_org) = &batch.reset_for_org {
                reset_owner(tx, &owner, own_org, batch.at_ms).await?;
            } else if batch.cursor > 0
                && position.as_ref().is_some_and(|(c, after)| crate::sync_notes::position_covers(*c, after, batch.cursor, &batch.snapshot_after))
            {
                // A batch the cursor already covers was applied: applying it again changes
                // nothing. Repairs (cursor 0) apply whatever the cursor.
                return Ok(out);
            }
            let from_stream = batch.from_stream || batch.current_as_of.is_some_and(|n| stored.unwrap_or(0) <= n);
            if quarantined > 0 {
                // A later item of a record supersedes the one we could not take.
                for chunk in ids.chunks(IN_CHUNK) {
                    let mut qb: QueryBuilder<$db> = QueryBuilder::new("DELETE FROM quarantine WHERE owner_org = ");
                    qb.push_bind(owner.clone()).push(" AND record_id IN (");
                    in_list(&mut qb, chunk);
                    qb.build().execute(&mut **tx).await?;
                }
            }
            // A reset may just have offered our edits again (`reset_owner`): read them then.
            let pending_edits = pending_edits > 0 || batch.reset_for_org.is_some();
            if read_ahead {
                work.take_rows(&rows[1..])?;
                if pending_edits {
                    work.read_pending(tx, &unique_ids).await?;
                }
            } else {
                work = ReplicaWork::load_with(tx, &owner, &ids, pending_edits).await?;
            }
            for item in batch.items {
                match item {
                    ReplicaItem::Upsert(st) => work.take_in(tx, st, from_stream, batch.at_ms, seq, &mut out).await?,
                    ReplicaItem::Revoke { id } => work.purge(tx, id, false, batch.at_ms, seq, &mut out).await?,
                    ReplicaItem::Erase { id } => work.purge(tx, id, true, batch.at_ms, seq, &mut out).await?,
                }
            }
            if probe_dependents {
                out.unrelated_foreign = out.changes.iter().filter(|c| !referred.contains(&c.record_id)).map(|c| c.seq).collect();
            }
            work.flush(tx, writes, &mut out).await?;
            for q in &batch.quarantine {
                let qb = writes
                    .statement(tx, "INSERT INTO quarantine (owner_org, record_id, item, reason, first_ms, last_ms, attempts) VALUES (")
                    .await?;
                qb.push_bind(owner.clone())
                    .push(", ")
                    .push_bind(q.record_id.clone())
                    .push(", ")
                    .push_bind(q.item.clone())
                    .push(", ")
                    .push_bind(q.reason.clone())
                    .push(", ")
                    .push_bind(batch.at_ms)
                    .push(", ")
                    .push_bind(batch.at_ms)
                    .push(
                        ", 1) ON CONFLICT (owner_org, record_id) DO UPDATE SET item = excluded.item, reason = excluded.reason, \
                         last_ms = excluded.last_ms, attempts = quarantine.attempts + 1",
                    );
            }
            if batch.cursor > 0 || stored.is_none() || batch.reset_for_org.is_some() {
                // Even a batch that changed nothing moves the cursor: what we know advances.
                // After a reset the cursor starts again below where it was.
                // The position (cursor, snapshot_after) only moves forward; at the same cursor a
                // snapshot in progress advances by record id, and an empty position (the change
                // at the cursor taken completely) is past every id.
                let on_conflict = if batch.reset_for_org.is_some() {
                    " ON CONFLICT (owner_org) DO UPDATE SET cursor = excluded.cursor, cursor_mark = excluded.cursor_mark, \
                     snapshot_after = excluded.snapshot_after, owner_last_seq = excluded.owner_last_seq, last_batch_ms = excluded.last_batch_ms"
                } else {
                    " ON CONFLICT (owner_org) DO UPDATE SET \
                     cursor_mark = CASE WHEN excluded.cursor > subscriptions.cursor OR (excluded.cursor = subscriptions.cursor AND subscriptions.snapshot_after <> '' \
                       AND (excluded.snapshot_after = '' OR excluded.snapshot_after > subscriptions.snapshot_after)) THEN excluded.cursor_mark ELSE subscriptions.cursor_mark END, \
                     snapshot_after = CASE WHEN excluded.cursor > subscriptions.cursor OR (excluded.cursor = subscriptions.cursor AND subscriptions.snapshot_after <> '' \
                       AND (excluded.snapshot_after = '' OR excluded.snapshot_after > subscriptions.snapshot_after)) THEN excluded.snapshot_after ELSE subscriptions.snapshot_after END, \
                     cursor = CASE WHEN excluded.cursor > subscriptions.cursor THEN excluded.cursor ELSE subscriptions.cursor END, \
                     owner_last_seq = excluded.owner_last_seq, last_batch_ms = excluded.last_batch_ms"
                };
                let qb = writes
                    .statement(tx, "INSERT INTO subscriptions (owner_org, cursor, cursor_mark, snapshot_after, owner_last_seq, last_batch_ms) ")
                    .await?;
                qb.push_values([()], |mut b, ()| {
                    b.push_bind(owner.clone())
                        .push_bind(batch.cursor)
                        .push_bind(batch.cursor_mark.clone())
                        .push_bind(batch.snapshot_after.clone())
                        .push_bind(batch.owner_last_seq)
                        .push_bind(batch.at_ms);
                });
                qb.push(on_conflict);
            }
            Ok(out)
        }
    };
}
