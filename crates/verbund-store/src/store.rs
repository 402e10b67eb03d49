//! The `Store` API: the writer's jobs and every read, each dispatched to the SQLite or
//! PostgreSQL instantiation of the SQL (opening a store: `store_open.rs`).

use super::*;

impl Store {
    pub fn backend_name(&self) -> &'static str {
        match self.backend {
            Backend::Sqlite(_) => "sqlite",
            Backend::Postgres(_) => "postgres",
        }
    }

    pub(crate) async fn submit_with_audit(
        &self,
        op: WriteOp,
        audit: Vec<AuditDraft>,
    ) -> Result<Option<Record>> {
        let (reply, rx) = oneshot::channel();
        self.writes
            .send(WriteJob { op, audit, reply })
            .await
            .map_err(|_| StoreError::WriterStopped)?;
        rx.await.map_err(|_| StoreError::WriterStopped)?
    }

    /// Runs a `WriteOp::Admin`; what is not there or is there already comes back as
    /// `NotFound` / `AlreadyExists`.
    pub(crate) async fn admin(&self, write: AdminWrite) -> Result<()> {
        match self
            .submit_with_audit(WriteOp::Admin(write), Vec::new())
            .await
        {
            Ok(_) => Ok(()),
            Err(StoreError::Domain(DomainError::Absent(what))) => Err(StoreError::NotFound(what)),
            Err(StoreError::Domain(DomainError::AlreadyExists(what))) => {
                Err(StoreError::AlreadyExists(what))
            }
            Err(e) => Err(e),
        }
    }

    async fn submit(&self, op: WriteOp, audit: Vec<AuditDraft>) -> Result<Record> {
        self.submit_with_audit(op, audit)
            .await?
            .ok_or_else(|| StoreError::Corrupt("a record write returned no record".into()))
    }

    /// Appends audit entries (reads, denials); returns once they are committed.
    pub async fn audit(&self, drafts: Vec<AuditDraft>) -> Result<()> {
        if drafts.is_empty() {
            return Ok(());
        }
        self.submit_with_audit(WriteOp::AuditOnly, drafts)
            .await
            .map(|_| ())
    }

    /// Changes the sharing tables, with its audit entry in the same transaction.
    pub async fn share(&self, op: ShareOp, hlc: Hlc, audit: AuditDraft) -> Result<()> {
        self.submit_with_audit(WriteOp::Share(op, hlc), vec![audit])
            .await
            .map(|_| ())
    }

    pub async fn list_shares(
        &self,
        org: Option<&str>,
        record_id: Option<Uuid>,
    ) -> Result<Vec<Share>> {
        dispatch!(self, list_shares(org, record_id))
    }

    /// The shares of these records with `org`.
    pub async fn shares_of_records(&self, org: &str, ids: &[Uuid]) -> Result<Vec<Share>> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        dispatch!(self, shares_of_records(org, ids))
    }

    pub async fn list_share_rules(&self, org: Option<&str>) -> Result<Vec<ShareRule>> {
        let Some(cache) = &self.rules else {
            return dispatch!(self, list_share_rules(org));
        };
        match cache.get(org) {
            Ok(kept) => Ok(kept.as_ref().clone()),
            Err(generation) => {
                let read = dispatch!(self, list_share_rules(org))?;
                cache.store(org, generation, Arc::new(read.clone()));
                Ok(read)
            }
        }
    }

    /// Live records (other than accounts) whose account is one of `account_ids`.
    pub async fn records_of_accounts(&self, account_ids: &[String]) -> Result<Vec<Record>> {
        dispatch!(self, records_of_accounts(account_ids))
    }

    /// Live activities related to one of `ids`.
    pub async fn activities_related_to(&self, ids: &[String]) -> Result<Vec<Record>> {
        dispatch!(self, activities_related_to(ids))
    }

    /// Live service cases assigned to `org`.
    pub async fn cases_assigned_to(&self, org: &str) -> Result<Vec<Record>> {
        dispatch!(self, cases_assigned_to(org))
    }

    /// Live accounts that may carry `tag` (a superset; check the tags themselves).
    pub async fn accounts_mentioning(&self, tag: &str) -> Result<Vec<Record>> {
        dispatch!(self, accounts_mentioning(tag))
    }

    /// What the snapshot change at `seq` is about (None: the change there is no snapshot).
    pub async fn share_snapshot(&self, seq: i64) -> Result<Option<ShareSnapshot>> {
        dispatch!(self, share_snapshot(seq))
    }

    /// The next `limit` live records after id `after` that `rule` may match for `org`, in id
    /// order (a superset; check the rule itself).
    pub async fn rule_members_after(
        &self,
        org: &str,
        rule: &RuleMatch,
        after: &str,
        limit: i64,
    ) -> Result<Vec<Record>> {
        dispatch!(self, rule_members_after(org, rule, after, limit))
    }

    pub async fn list_audit(&self, q: &AuditQuery) -> Result<Vec<AuditEntry>> {
        dispatch!(self, list_audit(q))
    }

    /// Walks the whole audit chain and compares its end with the recorded head.
    pub async fn verify_audit(&self) -> Result<AuditReport> {
        let mut verifier = audit::ChainVerifier::default();
        let mut after_seq = 0;
        // Read the head first: entries appended while we walk only extend the chain.
        let (head_seq, head_hash) = self.audit_head().await?;
        loop {
            let page = self
                .list_audit(&AuditQuery {
                    after_seq,
                    limit: 1000,
                    ..Default::default()
                })
                .await?;
            let Some(last) = page.last() else { break };
            after_seq = last.seq;
            for e in page.iter().take_while(|e| e.seq <= head_seq) {
                if let Err(b) = verifier.check(e) {
                    return Ok(AuditReport {
                        checked: verifier.checked(),
                        head_seq,
                        head_hash,
                        broken: Some(b),
                    });
                }
            }
            if after_seq >= head_seq {
                break;
            }
        }
        let broken = verifier.finish(head_seq, &head_hash).err();
        Ok(AuditReport {
            checked: verifier.checked(),
            head_seq,
            head_hash,
            broken,
        })
    }

    /// The newest audit entry's sequence number and hash (0 and the genesis hash if none).
    pub async fn audit_head(&self) -> Result<(i64, String)> {
        dispatch!(self, audit_head())
    }

    /// Stores a new record planned by [`verbund_core::write::plan_create`].
    pub async fn create(&self, plan: WritePlan) -> Result<Record> {
        self.create_with(move || Ok(plan)).await
    }

    /// Stores a new record planned by `plan_fn`, which runs in the writer: a version taken
    /// there is ordered like the commits.
    pub async fn create_with<F>(&self, plan_fn: F) -> Result<Record>
    where
        F: FnOnce() -> Result<WritePlan, DomainError> + Send + 'static,
    {
        self.create_audited(plan_fn, Vec::new()).await
    }

    /// `create_with`, committing `audit` with the record (the record id is filled in).
    pub async fn create_audited<F>(&self, plan_fn: F, audit: Vec<AuditDraft>) -> Result<Record>
    where
        F: FnOnce() -> Result<WritePlan, DomainError> + Send + 'static,
    {
        self.submit(WriteOp::Create(Box::new(plan_fn)), audit).await
    }

    /// Follows the latest committed change sequence.
    pub fn subscribe_commits(&self) -> watch::Receiver<i64> {
        self.commits.subscribe()
    }

    /// Updates a record inside one transaction: loads it, lets `plan_fn` plan the change from
    /// the current state (None = nothing to do, the current record is returned), resolves
    /// references and writes.
    pub async fn update<F>(&self, kind: RecordKind, id: Uuid, plan_fn: F) -> Result<Record>
    where
        F: FnOnce(&Record) -> Result<Option<WritePlan>, DomainError> + Send + 'static,
    {
        self.update_audited(kind, id, plan_fn, Vec::new()).await
    }

    /// `update`, committing `audit` with the change.
    pub async fn update_audited<F>(
        &self,
        kind: RecordKind,
        id: Uuid,
        plan_fn: F,
        audit: Vec<AuditDraft>,
    ) -> Result<Record>
    where
        F: FnOnce(&Record) -> Result<Option<WritePlan>, DomainError> + Send + 'static,
    {
        self.submit(
            WriteOp::Modify {
                kind,
                id,
                is_delete: false,
                plan_fn: Box::new(plan_fn),
            },
            audit,
        )
        .await
    }

    /// Turns a record into a tombstone; refused while live records still reference it.
    pub async fn delete<F>(&self, kind: RecordKind, id: Uuid, plan_fn: F) -> Result<Record>
    where
        F: FnOnce(&Record) -> Result<WritePlan, DomainError> + Send + 'static,
    {
        self.submit(
            WriteOp::Modify {
                kind,
                id,
                is_delete: true,
                plan_fn: Box::new(move |r: &Record| plan_fn(r).map(Some)),
            },
            Vec::new(),
        )
        .await
    }

    // ---- Federation sync ----

    /// Owner side: decides a partner's proposed change once per idempotency key (`plan_fn`
    /// runs in the writer on the current record) and returns the stored verdict.
    pub async fn merge_push<F>(
        &self,
        org: &str,
        key: &str,
        kind: RecordKind,
        id: Uuid,
        plan_fn: F,
        audit: Vec<AuditDraft>,
    ) -> Result<(Record, StoredVerdict)>
    where
        F: FnOnce(&Record) -> Result<MergePlan, DomainError> + Send + 'static,
    {
        let rec = self
            .submit(
                WriteOp::Merge {
                    org: org.to_string(),
                    key: key.to_string(),
                    kind,
                    id,
                    plan_fn: Box::new(plan_fn),
                },
                audit,
            )
            .await?;
        let verdict = self
            .push_verdict(org, key)
            .await?
            .ok_or_else(|| StoreError::Corrupt(format!("no verdict stored for push {key}")))?;
        Ok((rec, verdict))
    }

    pub async fn push_verdict(&self, org: &str, key: &str) -> Result<Option<StoredVerdict>> {
        dispatch!(self, push_verdict(org, key))
    }

    /// Owner side: erases a record (the plan removes its personal fields); the change log
    /// and conflict records of the record lose their values in the same transaction.
    pub async fn erase<F>(&self, kind: RecordKind, id: Uuid, by: &str, plan_fn: F) -> Result<Record>
    where
        F: FnOnce(&Record) -> Result<Option<WritePlan>, DomainError> + Send + 'static,
    {
        self.submit(
            WriteOp::Erase {
                kind,
                id,
                by: by.to_string(),
                plan_fn: Box::new(plan_fn),
            },
            Vec::new(),
        )
        .await
    }

    /// Partner side: applies a batch of an owner's stream and moves the cursor with it.
    pub async fn apply_replica_batch(&self, batch: ReplicaBatch) -> Result<()> {
        self.submit_with_audit(WriteOp::ReplicaBatch(batch), Vec::new())
            .await
            .map(|_| ())
    }

    /// Partner side: a local edit of a replica; shown at once, queued in the outbox.
    pub async fn edit_replica<F>(
        &self,
        kind: RecordKind,
        id: Uuid,
        key: &str,
        plan_fn: F,
    ) -> Result<Record>
    where
        F: FnOnce(&Record) -> Result<Option<WritePlan>, DomainError> + Send + 'static,
    {
        self.submit(
            WriteOp::ReplicaEdit {
                kind,
                id,
                key: key.to_string(),
                plan_fn: Box::new(plan_fn),
            },
            Vec::new(),
        )
        .await
    }

    /// Partner side: the owner's verdict on an outbox entry.
    pub async fn apply_verdict(&self, v: VerdictApply) -> Result<()> {
        self.submit_with_audit(WriteOp::Verdict(v), Vec::new())
            .await
            .map(|_| ())
    }

    /// `dependents_of(dependents)`, `shares_of_records(org, shares)` and
    /// `deliveries_of(org, deliveries)` at once (for a few ids on SQLite, one query).
    pub async fn surroundings(
        &self,
        org: &str,
        dependents: &[String],
        shares: &[Uuid],
        deliveries: &[Uuid],
    ) -> Result<Surroundings> {
        dispatch!(self, surroundings(org, dependents, shares, deliveries))
    }

    /// Live records whose account, contact or related record is one of `ids`.
    pub async fn dependents_of(&self, ids: &[String]) -> Result<Vec<Record>> {
        dispatch!(self, dependents_of(ids))
    }

    /// Of `ids`, those that may bear on what `org` shares (see the backend's comment): its
    /// own records, and those of `foreign` (records other organizations own) only when one
    /// of `org` hangs off them.
    pub async fn bearing_on_own(
        &self,
        ids: Vec<Uuid>,
        foreign: &BTreeSet<Uuid>,
        org: &str,
    ) -> Result<Vec<Uuid>> {
        if !ids.iter().any(|id| foreign.contains(id)) {
            return Ok(ids);
        }
        dispatch!(self, bearing_on_own(ids, foreign, org))
    }

    /// A record by id, tombstones included.
    pub async fn get(&self, id: Uuid) -> Result<Option<Record>> {
        let Some(cache) = &self.cache else {
            return dispatch!(self, get(id));
        };
        if let Some(r) = cache.get(&id) {
            return Ok(Some(r));
        }
        let generation = cache.generation();
        let found = dispatch!(self, get(id))?;
        if let Some(r) = &found {
            cache.fill(r, generation);
        }
        Ok(found)
    }

    /// Records by id (tombstones included), in no particular order; unknown ids are skipped.
    pub async fn get_many(&self, ids: &[Uuid]) -> Result<Vec<Record>> {
        let Some(cache) = &self.cache else {
            return dispatch!(self, get_many(ids));
        };
        // What the cache holds comes from it (the sync stream reads the records a write has
        // just changed); the rest in one query. A few are kept in the cache; a bulk read (a
        // snapshot batch) is not, as it would only push out the records in use.
        const FILL_AT_MOST: usize = 16;
        let mut found = Vec::with_capacity(ids.len());
        let mut missing = Vec::new();
        let mut seen = std::collections::HashSet::with_capacity(ids.len());
        for id in ids.iter().filter(|id| seen.insert(**id)) {
            match cache.get(id) {
                Some(r) => found.push(r),
                None => missing.push(*id),
            }
        }
        if missing.is_empty() {
            return Ok(found);
        }
        let generation = cache.generation();
        let loaded = dispatch!(self, get_many(&missing))?;
        if loaded.len() <= FILL_AT_MOST {
            for r in &loaded {
                cache.fill(r, generation);
            }
        }
        found.extend(loaded);
        Ok(found)
    }
}

/// A reader's view of the records: `get` and `get_many` (the writer reads through the same
/// trait inside its transaction).
impl RecordReads for Store {
    async fn record(&mut self, id: Uuid) -> Result<Option<Record>> {
        self.get(id).await
    }

    async fn records(&mut self, ids: &[Uuid]) -> Result<Vec<Record>> {
        self.get_many(ids).await
    }
}

impl Store {
    pub async fn list(&self, q: &ListQuery) -> Result<Vec<Record>> {
        dispatch!(self, list(q))
    }

    pub async fn search(&self, q: &SearchQuery) -> Result<Vec<Record>> {
        dispatch!(self, search(q))
    }

    /// Change-log entries with seq > `after_seq`, in order.
    pub async fn changes_after(
        &self,
        after_seq: i64,
        kinds: &[RecordKind],
        limit: i64,
    ) -> Result<Vec<Change>> {
        if let Some(recent) = self.recent() {
            let published = *self.commits.borrow();
            let limit = usize::try_from(limit).unwrap_or(0);
            if let Some(kept) = recent.changes_after(after_seq, published, kinds, limit) {
                return Ok(kept);
            }
        }
        let mut changes = dispatch!(self, changes_after(after_seq, kinds, limit))?;
        if self.cache.is_some() {
            // The writer updates the record cache after its commit and publishes the commit
            // after that: a change is handed out only once published, so that whoever reads
            // its records next (the sync stream, Watch) gets them as committed, never the
            // cached state before it.
            let published = *self.commits.borrow();
            changes.retain(|c| c.seq <= published);
        }
        Ok(changes)
    }

    /// `changes_after` (all kinds) for the sync stream of `org`: the next changes after
    /// `after_seq` that may bear on what it shares, at most `limit`, read from a window of
    /// at most `STREAM_WINDOW` changes (see `StreamChanges`). Another owner's records come
    /// without field values (the stream sends nothing of them).
    pub async fn stream_changes_after(
        &self,
        after_seq: i64,
        org: &str,
        limit: i64,
    ) -> Result<StreamChanges> {
        // Handed out only once published (see `changes_after`); without the record cache,
        // what is committed. The writer commits in the order of the change log, so every
        // change up to `last` is there to read.
        let last = match self.cache {
            Some(_) => *self.commits.borrow(),
            None => self.last_seq().await?,
        };
        let upto = last.min(after_seq.saturating_add(STREAM_WINDOW));
        if upto <= after_seq {
            return Ok(StreamChanges {
                scanned_to: after_seq,
                last,
                ..StreamChanges::default()
            });
        }
        if let Some(recent) = self.recent() {
            let kept_limit = usize::try_from(limit).unwrap_or(0);
            if let Some((changes, scanned_to)) =
                recent.stream_changes_after(after_seq, upto, org, kept_limit)
            {
                return Ok(StreamChanges {
                    changes,
                    foreign: BTreeSet::new(),
                    scanned_to,
                    last,
                });
            }
        }
        let mut read = dispatch!(self, stream_changes_after(after_seq, upto, org, limit))?;
        read.last = last;
        Ok(read)
    }

    /// The newest changes kept in memory, unless the store is closed (a closed store answers
    /// nothing, not even from memory).
    fn recent(&self) -> Option<&RecentChanges> {
        let closed = match &self.backend {
            Backend::Sqlite(p) => p.is_closed(),
            Backend::Postgres(p) => p.is_closed(),
        };
        self.recent.as_deref().filter(|_| !closed)
    }

    /// Forgets the newest changes kept in memory (SQLite): the next reads of the change log
    /// go to the database. For tests that compare both answers.
    #[doc(hidden)]
    pub fn forget_recent_changes(&self) {
        if let Some(recent) = &self.recent {
            recent.clear();
        }
    }

    /// The last change a reader of the log is sure to find: on SQLite the last one published
    /// by the writer (`changes_after` hands out nothing beyond it), else the last committed.
    pub async fn readable_seq(&self) -> Result<i64> {
        match self.cache {
            Some(_) => Ok(*self.commits.borrow()),
            None => self.last_seq().await,
        }
    }

    pub async fn last_seq(&self) -> Result<i64> {
        dispatch!(self, last_seq())
    }

    /// The newest version this node ever wrote, to restore its clock after a restart.
    pub async fn last_hlc(&self) -> Result<Option<Hlc>> {
        dispatch!(self, last_hlc())
    }

    /// Live records of a kind.
    pub async fn count(&self, kind: RecordKind) -> Result<i64> {
        dispatch!(self, count(kind))
    }

    /// Registers a partner; ALREADY_EXISTS if its organization is registered.
    pub async fn add_partner(&self, p: &Partner) -> Result<()> {
        self.admin(AdminWrite::AddPartner(p.clone())).await
    }

    pub async fn list_partners(&self) -> Result<Vec<Partner>> {
        dispatch!(self, list_partners())
    }

    pub async fn remove_partner(&self, org: &str) -> Result<()> {
        self.admin(AdminWrite::RemovePartner(org.to_string())).await
    }

    /// Replaces a partner's pinned CA(s), fingerprint(s) and revocation list in one statement.
    pub async fn set_partner_anchor(&self, p: &Partner) -> Result<()> {
        self.admin(AdminWrite::PartnerAnchor(p.clone())).await
    }

    /// Stores (or clears) a partner's revocation list.
    pub async fn set_partner_crl(&self, org: &str, crl_pem: Option<&str>) -> Result<()> {
        let (org, crl_pem) = (org.to_string(), crl_pem.map(str::to_string));
        self.admin(AdminWrite::PartnerCrl { org, crl_pem }).await
    }

    /// Notes that a partner's node or user was just seen.
    pub async fn touch_partner(&self, org: &str, at_ms: i64) -> Result<()> {
        let org = org.to_string();
        self.note(SyncNote::PartnerContact { org, at_ms }, Vec::new())
            .await
    }

    /// Stores a steward decision of the consolidated view (replacing one about the same pair).
    pub async fn save_steward_decision(&self, d: &StewardDecisionRow) -> Result<()> {
        self.admin(AdminWrite::StewardDecision(d.clone())).await
    }

    pub async fn list_steward_decisions(&self) -> Result<Vec<StewardDecisionRow>> {
        dispatch!(self, list_steward_decisions())
    }

    /// The right to run the sync link with partner `org` in this process. Always granted
    /// unless several processes share the database; then one process at a time holds it: a
    /// session-level advisory lock on a connection the lease keeps, released when the lease
    /// is dropped or the process dies. `None`: another process holds it.
    pub async fn try_link_lease(&self, org: &str) -> Result<Option<LinkLease>> {
        let Some(opts) = &self.shared_pg else {
            return Ok(Some(LinkLease { conn: None }));
        };
        use sqlx::Connection;
        let mut conn = tokio::time::timeout(
            Duration::from_secs(10),
            sqlx::PgConnection::connect_with(opts),
        )
        .await
        .map_err(|_| StoreError::Config("PostgreSQL gave no connection within 10 s".into()))??;
        let held: bool = sqlx::query_scalar(
            "SELECT pg_try_advisory_lock(hashtext('verbund-link:' || current_database() || '/' || current_schema() || '/' || $1))",
        )
        .bind(org)
        .fetch_one(&mut conn)
        .await?;
        Ok(held.then(|| LinkLease {
            conn: Some(tokio::sync::Mutex::new(conn)),
        }))
    }

    pub async fn close(&self) {
        match &self.backend {
            Backend::Sqlite(p) => p.close().await,
            Backend::Postgres(p) => p.close().await,
        }
        if let Some(p) = &self.writer_pool {
            p.close().await;
        }
        if let Some(holder) = &self._pg_lock {
            let mut conn = holder.lock().await;
            let _ = sqlx::query("SELECT pg_advisory_unlock_all()")
                .execute(&mut *conn)
                .await;
        }
    }
}
