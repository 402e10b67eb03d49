//! Part of the `backend!` instantiation (see `lib.rs`): the group-commit writer: the sequence counter, the change log, references, record rows, the jobs of a batch and the audit chain.
//! A macro so that the SQL is written once for SQLite and PostgreSQL.

macro_rules! backend_writer {
    ($db:ty, $pool:ty, $begin:expr, $savepoints:expr) => {
        fn record_row(row: &<$db as sqlx::Database>::Row) -> Result<RecordRow> {
            Ok(RecordRow {
                id: row.try_get("id")?,
                kind: row.try_get("kind")?,
                owner_org: row.try_get("owner_org")?,
                created_at_ms: row.try_get("created_at_ms")?,
                updated_at_ms: row.try_get("updated_at_ms")?,
                deleted_version: row.try_get("deleted_version")?,
                seq: row.try_get("seq")?,
                fields: row.try_get("fields")?,
                versions: row.try_get("versions")?,
            })
        }

        const RECORD_COLUMNS: &str = "id, kind, owner_org, created_at_ms, updated_at_ms, deleted_version, seq, fields, versions";

        /// A statement joins the ones before it (see `Writes`) only while they carry no more
        /// rows (or ids) than this in all: what an update writes is a few one-row statements,
        /// while a bulk batch's multi-row statements each run alone (sqlx caches a prepared
        /// query per connection by its text, and bulk statements joined in ever new
        /// combinations grew a partner's memory by 20–70 MiB; the hand-offs saved are
        /// nothing beside a 500-row insert).
        const COMBINED_ROWS_AT_MOST: usize = 64;

        /// Writes of one transaction that nothing reads in between, run together: on SQLite
        /// as one query of several statements, so one hand-off to sqlx's worker thread
        /// instead of one per statement (each cost an update ~35 µs of latency; sqlx binds
        /// the `?` of the statements in order), on PostgreSQL one statement at a time (a
        /// prepared statement holds one). Values only through `push_bind`: a `$n` would
        /// number across the statements on SQLite.
        ///
        /// The writer's `Writes` also know what the batch's transaction has written so far,
        /// so that an op reads a record it did not write from the record cache (SQLite).
        struct Writes {
            statements: Gathered,
            /// The records committed as the cache holds them (SQLite; see `load_known`).
            cache: Option<Arc<RecordCache>>,
            /// Records this transaction wrote: their rows differ from the cache's.
            written: HashSet<Uuid>,
        }

        /// Statements gathered into one query while they may join (see `Writes`, `Reads`).
        #[derive(Default)]
        struct Gathered {
            pending: Option<QueryBuilder<$db>>,
            /// Rows (or ids) the pending statements carry.
            rows: usize,
        }

        impl Gathered {
            /// Starts the next statement with `sql`, of `rows` rows (or ids). Returns the
            /// query gathered before it when the statement cannot join it: the caller runs
            /// that first.
            fn start(&mut self, sql: &str, rows: usize) -> Option<QueryBuilder<$db>> {
                match self.pending.take() {
                    Some(mut qb) if MULTI_STATEMENT && self.rows + rows <= COMBINED_ROWS_AT_MOST => {
                        qb.push("; ").push(sql);
                        self.pending = Some(qb);
                        self.rows += rows;
                        None
                    }
                    before => {
                        self.pending = Some(QueryBuilder::new(sql));
                        self.rows = rows;
                        before
                    }
                }
            }

            /// The statement started last, for its values.
            fn current(&mut self) -> Result<&mut QueryBuilder<$db>> {
                self.pending.as_mut().ok_or_else(|| StoreError::Corrupt("a statement was not started".into()))
            }

            /// What is gathered, leaving nothing.
            fn take(&mut self) -> Option<QueryBuilder<$db>> {
                self.rows = 0;
                self.pending.take()
            }
        }

        impl Writes {
            fn new() -> Writes {
                Writes { statements: Gathered::default(), cache: None, written: HashSet::new() }
            }

            fn with_cache(cache: Option<Arc<RecordCache>>) -> Writes {
                Writes { cache, ..Writes::new() }
            }

            /// Starts the next statement with `sql`, of one row; its values follow on the
            /// builder returned.
            async fn statement(&mut self, tx: &mut Tx, sql: &str) -> Result<&mut QueryBuilder<$db>> {
                self.statement_of(tx, sql, 1).await
            }

            /// `statement` of `rows` rows (or ids).
            async fn statement_of(&mut self, tx: &mut Tx, sql: &str, rows: usize) -> Result<&mut QueryBuilder<$db>> {
                if let Some(mut before) = self.statements.start(sql, rows) {
                    before.build().execute(&mut **tx).await?;
                }
                self.statements.current()
            }

            /// Runs what is pending.
            async fn run(mut self, tx: &mut Tx) -> Result<()> {
                self.run_pending(tx).await
            }

            /// Runs what is pending and goes on empty.
            async fn run_pending(&mut self, tx: &mut Tx) -> Result<()> {
                if let Some(mut qb) = self.statements.take() {
                    qb.build().execute(&mut **tx).await?;
                }
                Ok(())
            }

            /// Drops what is pending, unwritten (the op that left it failed).
            fn discard(&mut self) {
                self.statements.take();
            }
        }

        /// Reads of one transaction that do not depend on each other, fetched together: on
        /// SQLite one query of several statements (one hand-off to sqlx's worker thread; the
        /// rows of all come back in order), on PostgreSQL one statement at a time. Values
        /// only through `push_bind` (see `Writes`).
        struct Reads {
            statements: Gathered,
            rows: Vec<<$db as sqlx::Database>::Row>,
        }

        impl Reads {
            fn new() -> Reads {
                Reads { statements: Gathered::default(), rows: Vec::new() }
            }

            /// Starts the next statement with `sql`, of one row; its values follow on the
            /// builder returned.
            async fn statement(&mut self, tx: &mut Tx, sql: &str) -> Result<&mut QueryBuilder<$db>> {
                self.statement_of(tx, sql, 1).await
            }

            /// `statement` of `rows` rows (or ids).
            async fn statement_of(&mut self, tx: &mut Tx, sql: &str, rows: usize) -> Result<&mut QueryBuilder<$db>> {
                if let Some(mut before) = self.statements.start(sql, rows) {
                    self.rows.extend(before.build().fetch_all(&mut **tx).await?);
                }
                self.statements.current()
            }

            /// The rows of every statement, in order.
            async fn fetch(mut self, tx: &mut Tx) -> Result<Vec<<$db as sqlx::Database>::Row>> {
                if let Some(mut qb) = self.statements.take() {
                    self.rows.extend(qb.build().fetch_all(&mut **tx).await?);
                }
                Ok(self.rows)
            }
        }

        /// Locks the node's sequence counter for this transaction and reads it. Every write
        /// transaction does this first, which serializes writers across processes (the row
        /// lock on PostgreSQL; SQLite's write lock), so sequence numbers commit in order.
        async fn lock_seq(tx: &mut Tx) -> Result<i64> {
            Ok(sqlx::query_scalar("UPDATE node_state SET last_seq = last_seq WHERE id = 1 RETURNING last_seq")
                .fetch_one(&mut **tx)
                .await?)
        }

        /// Appends the batch's change-log rows (multi-row inserts) and stores the new counter.
        /// A row names the fields its change wrote, without their values: every reader (the
        /// sync stream, Watch) needs only the names and reads values from the record, so the
        /// log holds no second copy of the data (less to write; nothing personal to erase).
        /// `first_foreign`: the seqs of changes that brought another owner's record here for
        /// the first time (see migration 0026).
        async fn append_changes(tx: &mut Tx, writes: &mut Writes, changes: &[Change], first_foreign: &HashSet<i64>) -> Result<()> {
            for chunk in changes.chunks(500) {
                let mut rows = Vec::with_capacity(chunk.len());
                for c in chunk {
                    let names: BTreeMap<&String, Option<()>> = c.fields.keys().map(|name| (name, None)).collect();
                    rows.push((c.seq, c.record_id.to_string(), c.kind.as_str(), c.op.as_str(), c.hlc.to_string(), fields_to_json(&names)?, c.at_ms, first_foreign.contains(&c.seq)));
                }
                let qb = writes
                    .statement_of(tx, "INSERT INTO changes (seq, record_id, kind, op, hlc, fields, at_ms, first_foreign) ", rows.len())
                    .await?;
                qb.push_values(rows, |mut b, (seq, id, kind, op, hlc, fields, at_ms, first)| {
                    b.push_bind(seq)
                        .push_bind(id)
                        .push_bind(kind)
                        .push_bind(op)
                        .push_bind(hlc)
                        .push_bind(fields)
                        .push_bind(at_ms)
                        .push_bind(first);
                });
            }
            if let Some(last) = changes.last() {
                writes.statement(tx, "UPDATE node_state SET last_seq = ").await?.push_bind(last.seq).push(" WHERE id = 1");
            }
            Ok(())
        }

        async fn resolve_ref(tx: &mut Tx, r: &RefCheck) -> Result<RefTarget> {
            let row = sqlx::query("SELECT kind, account_id FROM records WHERE id = $1 AND deleted_version IS NULL")
                .bind(r.id.to_string())
                .fetch_optional(&mut **tx)
                .await?;
            let Some(row) = row else { return Err(ref_error(r, None).into()) };
            let kind: String = row.try_get("kind")?;
            let target = RefTarget { kind: kind_from_db(&kind)?, account_id: row.try_get("account_id")? };
            if !r.kinds.contains(&target.kind) {
                return Err(ref_error(r, Some(&target)).into());
            }
            Ok(target)
        }

        /// Resolves references; for an activity, also finds the account it rolls up to.
        async fn resolve_refs(tx: &mut Tx, plan: &WritePlan) -> Result<Option<Option<String>>> {
            let mut activity_account = None;
            for r in &plan.refs {
                let target = resolve_ref(tx, r).await?;
                if plan.record.kind == RecordKind::Activity && r.field == "related_id" {
                    activity_account = Some(if target.kind == RecordKind::Account { Some(r.id.to_string()) } else { target.account_id });
                }
            }
            Ok(activity_account)
        }

        /// Writes the record row: one statement, so on SQLite a failure leaves nothing behind.
        /// The statement goes into `writes` (see `Writes`): whoever needs its outcome at once
        /// runs it.
        async fn write_record(tx: &mut Tx, writes: &mut Writes, plan: &mut WritePlan, seq: i64, insert: bool, activity_account: Option<Option<String>>) -> Result<()> {
            plan.record.seq = seq;
            plan.change.seq = seq;
            let rec = &plan.record;
            let mut idx = write::index_columns(rec);
            if rec.kind == RecordKind::Activity {
                idx.filter.account_id = match activity_account {
                    Some(a) => a,
                    None => {
                        // related_id unchanged: keep the derived account.
                        sqlx::query_scalar("SELECT account_id FROM records WHERE id = $1")
                            .bind(rec.id.to_string())
                            .fetch_optional(&mut **tx)
                            .await?
                            .flatten()
                    }
                };
            }
            let (fields, versions) = (fields_to_json(&rec.fields)?, versions_to_json(&rec.versions));
            let id = rec.id.to_string();
            let qb = writes
                .statement(
                    tx,
                    if insert {
                        "INSERT INTO records (id, kind, owner_org, created_at_ms, updated_at_ms, deleted_version, seq, fields, versions, \
                         account_id, contact_id, related_id, stage, status, priority, assigned_org, channel, search_text) VALUES ("
                    } else {
                        "UPDATE records SET (kind, owner_org, created_at_ms, updated_at_ms, deleted_version, seq, fields, versions, \
                         account_id, contact_id, related_id, stage, status, priority, assigned_org, channel, search_text) = ("
                    },
                )
                .await?;
            let mut values = qb.separated(", ");
            if insert {
                values.push_bind(id.clone());
            }
            bind_record_columns(&mut values, rec, seq, fields, versions, idx);
            qb.push(")");
            if !insert {
                qb.push(" WHERE id = ").push_bind(id);
            }
            Ok(())
        }

        /// Binds a record row's columns after its id, in the order both record writes name
        /// them (kind … search_text).
        fn bind_record_columns<Sep: std::fmt::Display>(
            values: &mut sqlx::query_builder::Separated<'_, $db, Sep>,
            rec: &Record,
            seq: i64,
            fields: String,
            versions: String,
            idx: write::IndexColumns,
        ) {
            values
                .push_bind(rec.kind.as_str())
                .push_bind(rec.owner_org.clone())
                .push_bind(rec.created_at_ms)
                .push_bind(rec.updated_at_ms)
                .push_bind(rec.deleted.as_ref().map(|h| h.to_string()))
                .push_bind(seq)
                .push_bind(fields)
                .push_bind(versions)
                .push_bind(idx.filter.account_id)
                .push_bind(idx.contact_id)
                .push_bind(idx.filter.related_id)
                .push_bind(idx.filter.stage)
                .push_bind(idx.filter.status)
                .push_bind(idx.filter.priority)
                .push_bind(idx.filter.assigned_org)
                .push_bind(idx.filter.channel)
                .push_bind(idx.search_text);
        }

        /// `write_record`, run at once.
        async fn write_record_now(tx: &mut Tx, plan: &mut WritePlan, seq: i64, insert: bool, activity_account: Option<Option<String>>) -> Result<()> {
            let mut writes = Writes::new();
            write_record(tx, &mut writes, plan, seq, insert, activity_account).await?;
            writes.run(tx).await
        }

        async fn create(tx: &mut Tx, mut plan: WritePlan, seq: i64) -> Result<WritePlan> {
            let activity_account = resolve_refs(tx, &plan).await?;
            match write_record_now(tx, &mut plan, seq, true, activity_account).await {
                Err(StoreError::Database(e)) if e.as_database_error().is_some_and(|d| d.is_unique_violation()) => {
                    Err(DomainError::invalid("id", format!("a record with id {} exists already", plan.record.id)).into())
                }
                other => other.map(|()| plan),
            }
        }

        /// The record `id` of `kind` as this transaction sees it (the readers' read, `RecordReads`).
        async fn load(tx: &mut Tx, kind: RecordKind, id: Uuid) -> Result<Record> {
            match tx.record(id).await? {
                Some(rec) if rec.kind == kind => Ok(rec),
                _ => Err(DomainError::NotFound { kind, id: id.to_string() }.into()),
            }
        }

        /// `load`, from the record cache when this transaction has not written the record:
        /// the cache holds what was committed last (the writer puts every record it writes
        /// there after its commit, and a reader's fill never puts an older version over a
        /// newer), and this transaction holds the write lock. Saves an update's read, a
        /// hand-off to SQLite's worker thread.
        async fn load_known(tx: &mut Tx, writes: &Writes, kind: RecordKind, id: Uuid) -> Result<Record> {
            if let Some(cache) = writes.cache.as_ref().filter(|_| !writes.written.contains(&id)) {
                if let Some(rec) = cache.get(&id) {
                    return if rec.kind == kind { Ok(rec) } else { Err(DomainError::NotFound { kind, id: id.to_string() }.into()) };
                }
            }
            load(tx, kind, id).await
        }

        /// Live records that reference `id` (other than itself).
        async fn dependents(tx: &mut Tx, id: Uuid) -> Result<i64> {
            let id = id.to_string();
            Ok(sqlx::query_scalar(
                "SELECT COUNT(*) FROM records WHERE deleted_version IS NULL AND id <> $1 \
                 AND (account_id = $1 OR contact_id = $1 OR related_id = $1)",
            )
            .bind(id)
            .fetch_one(&mut **tx)
            .await?)
        }

        /// Ok(None): the plan changed nothing; the caller gets `current` back unchanged.
        /// The record's writes go into `writes` (nothing reads them before the op ends).
        async fn modify(tx: &mut Tx, writes: &mut Writes, kind: RecordKind, id: Uuid, is_delete: bool, plan_fn: PlanFn, seq: i64) -> Result<(Record, Option<WritePlan>)> {
            let current = load_known(tx, writes, kind, id).await?;
            let Some(mut plan) = plan_fn(&current)? else {
                return Ok((current, None));
            };
            if is_delete {
                let n = dependents(tx, id).await?;
                if n > 0 {
                    return Err(DomainError::precondition(
                        "id",
                        format!("{kind} {id} still has {n} live related record(s) (contacts, opportunities, cases or activities); delete or move them first"),
                    )
                    .into());
                }
            }
            let activity_account = resolve_refs(tx, &plan).await?;
            write_record(tx, writes, &mut plan, seq, false, activity_account).await?;
            if kind != RecordKind::Activity && kind != RecordKind::Account && plan.change.fields.contains_key("account_id") {
                // Activities roll up to the account of the record they belong to: follow a move.
                let account = plan.record.fields.get("account_id").and_then(Value::as_text).map(str::to_string);
                let qb = writes.statement(tx, "UPDATE records SET account_id = ").await?;
                qb.push_bind(account).push(" WHERE related_id = ").push_bind(id.to_string()).push(" AND kind = 'activity'");
            }
            Ok((current, Some(plan)))
        }

        /// Runs one write; every change it makes takes the next sequence number after `seq`
        /// (which it advances).
        /// An op may leave writes in `writes` (see `Writes`); the caller runs them before
        /// anything else reads.
        async fn run_op(tx: &mut Tx, op: WriteOp, seq: &mut i64, writes: &mut Writes) -> Result<OpOutput> {
            match op {
                WriteOp::Create(plan_fn) => {
                    let plan = create(tx, plan_fn()?, *seq + 1).await?;
                    *seq += 1;
                    Ok(OpOutput::one(plan))
                }
                WriteOp::Modify { kind, id, is_delete, plan_fn } => match modify(tx, writes, kind, id, is_delete, plan_fn, *seq + 1).await? {
                    (_, Some(plan)) => {
                        *seq += 1;
                        Ok(OpOutput::one(plan))
                    }
                    (current, None) => Ok(OpOutput::unchanged(current)),
                },
                WriteOp::AuditOnly => Ok(OpOutput::default()),
                WriteOp::Share(op, hlc) => share_op(tx, op, hlc, seq).await,
                WriteOp::Merge { org, key, kind, id, plan_fn } => merge_op(tx, writes, &org, &key, kind, id, plan_fn, seq).await,
                WriteOp::ReplicaBatch(batch) => replica_batch(tx, batch, seq, writes).await,
                WriteOp::ReplicaEdit { kind, id, key, plan_fn } => replica_edit(tx, writes, kind, id, &key, plan_fn, seq).await,
                WriteOp::Verdict(v) => apply_verdict(tx, v, seq).await,
                WriteOp::Erase { kind, id, by, plan_fn } => erase_op(tx, kind, id, &by, plan_fn, seq).await,
                WriteOp::Sync(note) => sync_note(tx, note).await,
                WriteOp::Admin(write) => admin_write(tx, write).await,
                WriteOp::Restamp { limit_ms, now_ms, mut stamp, report } => restamp(tx, limit_ms, now_ms, &mut stamp, &report, seq).await,
            }
        }

        /// Group commit: all jobs in one transaction and one commit (one fsync). A job that
        /// fails a domain rule fails alone: on SQLite its single failed statement wrote
        /// nothing; on PostgreSQL, where an error aborts the transaction, each job runs in a
        /// savepoint. Any database error fails the whole batch (nothing is committed).
        /// Replies go out only after the commit.
        /// True if the batch committed.
        /// `begun`: a transaction the writer began while it waited (see `with_backend`), else
        /// one is begun here.
        pub async fn write_batch(pool: &$pool, begun: Option<Tx>, jobs: Vec<WriteJob>, memory: &mut WriterMemory, commits: &watch::Sender<i64>) -> bool {
            // Whether the batch may change the share rules (then the kept ones are stale
            // once it ends, whatever its outcome: a failed COMMIT may have committed).
            let rules_touched = jobs.iter().any(|j| matches!(j.op, WriteOp::Share(ShareOp::AddRule(_) | ShareOp::RemoveRule(_), _)));
            let mut ops = Vec::with_capacity(jobs.len());
            let mut replies = Vec::with_capacity(jobs.len());
            for j in jobs {
                ops.push((j.op, j.audit));
                replies.push(j.reply);
            }
            #[allow(clippy::type_complexity)]
            let outcome: Result<(Vec<Result<Option<Record>>>, Vec<Record>, i64, Vec<Change>, (HashSet<i64>, HashSet<i64>), Vec<Uuid>, Option<(i64, String)>)> = async {
                let mut tx = match begun {
                    Some(tx) => tx,
                    None => pool.begin_with($begin).await?,
                };
                // On SQLite only the writer's connection writes (its transaction takes the
                // write lock at BEGIN IMMEDIATE or, begun ahead, at its first write); the
                // counter's row lock is what serializes writers on PostgreSQL.
                let mut seq = match memory.last_seq {
                    Some(last) => last,
                    None => lock_seq(&mut tx).await?,
                };
                let mut results = Vec::with_capacity(ops.len());
                let mut changes = Vec::new();
                let mut first_foreign = HashSet::new();
                let mut unrelated_foreign = HashSet::new();
                let mut written = Vec::new();
                let mut blanked = Vec::new();
                let mut audit_drafts = Vec::new();
                // What an op leaves unwritten (see `run_op`): written before the next op reads,
                // or with the change log after the last.
                let mut writes = Writes::with_cache(memory.cache.clone());
                for (op, mut drafts) in ops {
                    writes.run_pending(&mut tx).await?;
                    if $savepoints {
                        sqlx::query("SAVEPOINT verbund_write").execute(&mut *tx).await?;
                    }
                    let before = seq;
                    let mut outcome = run_op(&mut tx, op, &mut seq, &mut writes).await;
                    if $savepoints && outcome.is_ok() {
                        // Inside the op's savepoint: a failure is the op's.
                        if let Err(e) = writes.run_pending(&mut tx).await {
                            outcome = Err(e);
                        }
                    }
                    match &outcome {
                        Ok(out) => {
                            for d in drafts.iter_mut().filter(|d| d.record_id.is_none()) {
                                d.record_id = out.reply.as_ref().map(|r| r.id.to_string());
                            }
                            if let Some(reason) = &out.denied {
                                for d in &mut drafts {
                                    d.decision = "deny".into();
                                    d.reason = reason.clone();
                                }
                            }
                        }
                        Err(StoreError::Domain(_)) => {
                            for d in &mut drafts {
                                d.decision = "failed".into();
                            }
                        }
                        Err(_) => {}
                    }
                    audit_drafts.append(&mut drafts);
                    match outcome {
                        Ok(out) => {
                            writes.written.extend(out.written.iter().map(|r| r.id));
                            changes.extend(out.changes);
                            first_foreign.extend(out.first_foreign);
                            unrelated_foreign.extend(out.unrelated_foreign);
                            written.extend(out.written);
                            blanked.extend(out.blanked);
                            if $savepoints {
                                sqlx::query("RELEASE SAVEPOINT verbund_write").execute(&mut *tx).await?;
                            }
                            results.push(Ok(out.reply));
                        }
                        Err(StoreError::Domain(e)) => {
                            seq = before;
                            writes.discard();
                            if $savepoints {
                                sqlx::query("ROLLBACK TO SAVEPOINT verbund_write").execute(&mut *tx).await?;
                                sqlx::query("RELEASE SAVEPOINT verbund_write").execute(&mut *tx).await?;
                            }
                            results.push(Err(StoreError::Domain(e)));
                        }
                        Err(e) => return Err(e),
                    }
                }
                // The last op's writes, the change log, the counter and the audit chain: one
                // query on SQLite.
                append_changes(&mut tx, &mut writes, &changes, &first_foreign).await?;
                let audit_head = append_audit(&mut tx, &mut writes, audit_drafts, memory.audit_head.clone()).await?;
                writes.run(&mut tx).await?;
                if let Err(e) = tx.commit().await {
                    return Err(StoreError::OutcomeUnknown(e.to_string()));
                }
                Ok((results, written, seq, changes, (first_foreign, unrelated_foreign), blanked, audit_head))
            }
            .await;
            if outcome.is_err() {
                // Whatever happened, the next batch reads the counter and the head from the
                // database.
                memory.last_seq = None;
                memory.audit_head = None;
                // A failed COMMIT may have committed: what the ring and the cache hold may be
                // stale.
                if let Some(recent) = &memory.recent {
                    recent.clear();
                }
                if let Some(cache) = &memory.cache {
                    cache.clear();
                }
            }
            if rules_touched && let Some(rules) = &memory.rules {
                // Before the commit is published: whoever it wakes reads the new rules.
                rules.changed();
            }
            match outcome {
                Ok((results, written, last_seq, changes, (first_foreign, unrelated_foreign), blanked, audit_head)) => {
                    if memory.keeps_seq {
                        memory.last_seq = Some(last_seq);
                        if audit_head.is_some() {
                            memory.audit_head = audit_head;
                        }
                    }
                    // Both before the commit is published: whoever it wakes finds them.
                    if let Some(recent) = &memory.recent {
                        recent.committed(CommittedChanges {
                            owners: written.iter().map(|r| (r.id, r.owner_org.as_str())).collect(),
                            changes,
                            first_foreign: &first_foreign,
                            unrelated_foreign: &unrelated_foreign,
                            blanked: &blanked,
                        });
                    }
                    if let Some(cache) = &memory.cache {
                        cache.committed(written);
                    }
                    // Wake change streams whether or not the writers' callers still wait.
                    commits.send_if_modified(|seq| {
                        let newer = last_seq > *seq;
                        if newer {
                            *seq = last_seq;
                        }
                        newer
                    });
                    for (reply, result) in replies.into_iter().zip(results) {
                        let _ = reply.send(result);
                    }
                    true
                }
                Err(StoreError::OutcomeUnknown(msg)) => {
                    tracing::error!(error = %msg, "commit of a write batch failed; its outcome is unknown");
                    for reply in replies {
                        let _ = reply.send(Err(StoreError::OutcomeUnknown(msg.clone())));
                    }
                    false
                }
                Err(StoreError::Closed) => {
                    // A task still writing while the node shuts down: not a failure of the store.
                    tracing::info!("the store is closed (shutting down); a write batch was not stored");
                    for reply in replies {
                        let _ = reply.send(Err(StoreError::Closed));
                    }
                    false
                }
                Err(e) => {
                    tracing::error!(error = %e, "write batch failed; nothing of it was committed");
                    let msg = e.to_string();
                    for reply in replies {
                        let _ = reply.send(Err(StoreError::CommitFailed(msg.clone())));
                    }
                    false
                }
            }
        }

        /// Chains the batch's audit drafts after the head (`known`: as the writer last
        /// committed it, else read from the database) and moves the head. Returns the new
        /// head, or None if the batch has no audit entry.
        async fn append_audit(tx: &mut Tx, writes: &mut Writes, drafts: Vec<AuditDraft>, known: Option<(i64, String)>) -> Result<Option<(i64, String)>> {
            if drafts.is_empty() {
                return Ok(None);
            }
            let (head_seq, head_hash) = match known {
                Some(head) => head,
                None => {
                    let row = sqlx::query("SELECT seq, hash FROM audit_head WHERE id = 1").fetch_one(&mut **tx).await?;
                    (row.try_get("seq")?, row.try_get("hash")?)
                }
            };
            let entries = audit::chain(head_seq, &head_hash, drafts);
            let Some((last_seq, last_hash)) = entries.last().map(|e| (e.seq, e.hash.clone())) else { return Ok(None) };
            let mut entries = entries.into_iter().peekable();
            while entries.peek().is_some() {
                let mut rows = Vec::with_capacity(400);
                for e in entries.by_ref().take(400) {
                    let fields = fields_to_json(&e.draft.fields)?;
                    rows.push((e, fields));
                }
                let qb = writes
                    .statement_of(
                        tx,
                        "INSERT INTO audit_log (seq, at_ms, principal, org, action, kind, record_id, fields, decision, reason, prev_hash, hash) ",
                        rows.len(),
                    )
                    .await?;
                qb.push_values(rows, |mut b, (e, fields)| {
                    b.push_bind(e.seq)
                        .push_bind(e.draft.at_ms)
                        .push_bind(e.draft.principal)
                        .push_bind(e.draft.org)
                        .push_bind(e.draft.action)
                        .push_bind(e.draft.kind)
                        .push_bind(e.draft.record_id)
                        .push_bind(fields)
                        .push_bind(e.draft.decision)
                        .push_bind(e.draft.reason)
                        .push_bind(e.prev_hash)
                        .push_bind(e.hash);
                });
            }
            let qb = writes.statement(tx, "UPDATE audit_head SET seq = ").await?;
            qb.push_bind(last_seq).push(", hash = ").push_bind(last_hash.clone()).push(" WHERE id = 1");
            Ok(Some((last_seq, last_hash)))
        }
    };
}
