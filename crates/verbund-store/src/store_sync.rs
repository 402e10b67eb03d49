//! The `Store` API of federation sync: the owner's delivery ledger, conflicts, erasure
//! acknowledgements, the partner's subscriptions, outbox, quarantine and replicas, the
//! digests anti-entropy sums, and the sync bookkeeping that goes through the writer.

use super::*;

impl Store {
    pub async fn deliveries_of(&self, org: &str, ids: &[Uuid]) -> Result<Vec<Delivery>> {
        dispatch!(self, deliveries_of(org, ids))
    }

    pub async fn deliveries_of_record(&self, id: Uuid) -> Result<Vec<Delivery>> {
        dispatch!(self, deliveries_of_record(id))
    }

    pub async fn live_deliveries(&self, org: &str) -> Result<Vec<Delivery>> {
        dispatch!(self, live_deliveries(org))
    }

    pub async fn pending_erasures(&self, org: &str) -> Result<Vec<Delivery>> {
        dispatch!(self, pending_erasures(org))
    }

    /// Sync bookkeeping through the writer, with `audit` entries in the same commit.
    pub(crate) async fn note(&self, note: SyncNote, audit: Vec<AuditDraft>) -> Result<()> {
        self.submit_with_audit(WriteOp::Sync(note), audit)
            .await
            .map(|_| ())
    }

    /// Owner: notes in the delivery ledger what partner `org` is about to hold, the batch's
    /// audit entries, and the stream position the batch brings it to, in one commit (before
    /// the batch leaves).
    pub async fn record_deliveries(
        &self,
        org: &str,
        rows: Vec<DeliveryNote>,
        at_ms: i64,
        policy: &str,
        audit: Vec<AuditDraft>,
        position: Option<StreamPosition>,
    ) -> Result<()> {
        if rows.is_empty() && audit.is_empty() && position.is_none() {
            return Ok(());
        }
        let (org, policy) = (org.to_string(), policy.to_string());
        let note = SyncNote::Deliveries {
            org,
            rows,
            at_ms,
            policy,
            position,
        };
        self.note(note, audit).await
    }

    /// Owner: partner `org`'s stream position `stream_pos` (its latest) now covers our
    /// changes up to `owner_seq`.
    pub async fn move_position(&self, org: &str, stream_pos: i64, owner_seq: i64) -> Result<()> {
        let org = org.to_string();
        let note = SyncNote::PositionMoved {
            org,
            stream_pos,
            owner_seq,
        };
        self.note(note, Vec::new()).await
    }

    /// Owner: what partner `org`'s cursor `stream_pos` stands for (None: not a position we
    /// gave it, or one it has acknowledged a later one since).
    pub async fn stream_position(
        &self,
        org: &str,
        stream_pos: i64,
    ) -> Result<Option<StreamPosition>> {
        dispatch!(self, stream_position(org, stream_pos))
    }

    /// Owner: the stamps given out to partner `org` stay at or below this (0: none yet).
    pub async fn stamps_reserved(&self, org: &str) -> Result<i64> {
        dispatch!(self, stamps_reserved(org))
    }

    pub async fn reserve_stamps(&self, org: &str, reserved: i64) -> Result<()> {
        let org = org.to_string();
        self.note(SyncNote::StampsReserved { org, reserved }, Vec::new())
            .await
    }

    pub async fn ack_erasures(&self, org: &str, ids: &[Uuid], at_ms: i64) -> Result<()> {
        if ids.is_empty() {
            return Ok(());
        }
        let (org, ids) = (org.to_string(), ids.to_vec());
        self.note(SyncNote::ErasuresAcked { org, ids, at_ms }, Vec::new())
            .await
    }

    pub async fn record_peer_ack(&self, org: &str, cursor: i64, at_ms: i64) -> Result<()> {
        let org = org.to_string();
        self.note(SyncNote::PeerAck { org, cursor, at_ms }, Vec::new())
            .await
    }

    pub async fn peer_acks(&self) -> Result<Vec<PeerAck>> {
        dispatch!(self, peer_acks())
    }

    pub async fn erasure(&self, id: Uuid) -> Result<Option<Erasure>> {
        dispatch!(self, erasure(id))
    }

    pub async fn list_conflicts(
        &self,
        record_id: Option<Uuid>,
        include_resolved: bool,
    ) -> Result<Vec<ConflictRecord>> {
        dispatch!(self, list_conflicts(record_id, include_resolved))
    }

    pub async fn get_conflict(&self, id: Uuid) -> Result<Option<ConflictRecord>> {
        dispatch!(self, get_conflict(id))
    }

    pub async fn mark_conflict_resolved(
        &self,
        id: Uuid,
        by: &str,
        resolution: &str,
        at_ms: i64,
    ) -> Result<bool> {
        let (by, resolution) = (by.to_string(), resolution.to_string());
        let write = AdminWrite::ConflictResolved {
            id,
            by,
            resolution,
            at_ms,
        };
        match self.admin(write).await {
            Ok(()) => Ok(true),
            Err(StoreError::NotFound(_)) => Ok(false),
            Err(e) => Err(e),
        }
    }

    pub async fn subscription(&self, owner: &str) -> Result<Option<Subscription>> {
        dispatch!(self, subscription(owner))
    }

    pub async fn list_subscriptions(&self) -> Result<Vec<Subscription>> {
        dispatch!(self, list_subscriptions())
    }

    pub async fn set_sync_error(&self, owner: &str, error: Option<&str>, at_ms: i64) -> Result<()> {
        let (owner, error) = (owner.to_string(), error.map(str::to_string));
        self.note(
            SyncNote::LinkError {
                owner,
                error,
                at_ms,
            },
            Vec::new(),
        )
        .await
    }

    pub async fn list_outbox(
        &self,
        owner: Option<&str>,
        state: Option<OutboxState>,
        limit: i64,
    ) -> Result<Vec<OutboxEntry>> {
        dispatch!(self, list_outbox(owner, state, limit))
    }

    pub async fn outbox_attempt(&self, key: &str, error: &str) -> Result<()> {
        let (key, error) = (key.to_string(), error.to_string());
        self.note(SyncNote::OutboxAttempt { key, error }, Vec::new())
            .await
    }

    /// Pending outbox entries per owner.
    pub async fn outbox_depths(&self) -> Result<Vec<(String, i64)>> {
        dispatch!(self, count_by_owner(true))
    }

    /// Live replicas per owner.
    pub async fn replica_counts(&self) -> Result<Vec<(String, i64)>> {
        dispatch!(self, count_by_owner(false))
    }

    /// After an erasure: moves everything in SQLite's write-ahead log into the database file
    /// (where `secure_delete` has zeroed the erased content) and truncates the log, whose old
    /// page images may still hold it. True if the log was emptied; false if readers kept it
    /// (call again later). PostgreSQL: nothing to do here; VACUUM (see the README).
    pub async fn scrub_erased(&self) -> Result<bool> {
        match &self.backend {
            Backend::Sqlite(p) => {
                let row = sqlx::query("PRAGMA wal_checkpoint(TRUNCATE)")
                    .fetch_one(p)
                    .await?;
                let busy: i64 = sqlx::Row::try_get(&row, 0)?;
                Ok(busy == 0)
            }
            Backend::Postgres(_) => Ok(true),
        }
    }

    /// Clock recovery: gives every version beyond `limit_ms` in our pending outbox edits and
    /// our own records a fresh one from `stamp` (see `WriteOp::Restamp`).
    pub async fn restamp_ahead(
        &self,
        limit_ms: u64,
        now_ms: i64,
        stamp: RestampFn,
    ) -> Result<RestampReport> {
        let report = Arc::new(std::sync::Mutex::new(RestampReport::default()));
        self.submit_with_audit(
            WriteOp::Restamp {
                limit_ms,
                now_ms,
                stamp,
                report: report.clone(),
            },
            Vec::new(),
        )
        .await?;
        let counts = report.lock().unwrap_or_else(|p| p.into_inner()).clone();
        Ok(counts)
    }

    /// Partner side: items of owners' streams we could not take (oldest first).
    pub async fn list_quarantine(
        &self,
        owner: Option<&str>,
        limit: i64,
    ) -> Result<Vec<QuarantineItem>> {
        dispatch!(self, list_quarantine(owner, limit))
    }

    /// Partner side: the newest owner sequence number among our replicas of `owner`.
    pub async fn max_replica_seq(&self, owner: &str) -> Result<i64> {
        dispatch!(self, max_replica_seq(owner))
    }

    /// Partner side: how many items of each owner are in quarantine.
    pub async fn quarantine_counts(&self) -> Result<Vec<(String, i64)>> {
        dispatch!(self, quarantine_counts())
    }

    /// Partner: the bucket sums of the live replicas of `owner` (anti-entropy round 1).
    pub async fn replica_bucket_sums(&self, owner: &str) -> Result<Vec<BucketSum>> {
        dispatch!(self, replica_bucket_sums(owner))
    }

    /// Partner: (id, digest) of the live replicas of `owner` in `buckets` (round 2).
    pub async fn replica_digests_in(
        &self,
        owner: &str,
        buckets: &[u32],
    ) -> Result<Vec<(Uuid, u64)>> {
        dispatch!(self, replica_digests_in(owner, buckets))
    }

    /// Partner: (id, digest) of the live replicas of `owner` among `ids`.
    pub async fn replica_digests_of(&self, owner: &str, ids: &[Uuid]) -> Result<Vec<(Uuid, u64)>> {
        dispatch!(self, replica_digests_of(owner, ids))
    }

    /// Owner: the bucket sums of partner `org`'s live ledger rows (see `BucketSum`).
    pub async fn delivery_bucket_sums(&self, org: &str, policy: &str) -> Result<Vec<BucketSum>> {
        dispatch!(self, delivery_bucket_sums(org, policy))
    }

    /// Owner: partner `org`'s live ledger rows in `buckets`.
    pub async fn live_deliveries_in(&self, org: &str, buckets: &[u32]) -> Result<Vec<Delivery>> {
        dispatch!(self, live_deliveries_in(org, buckets))
    }

    /// Gives rows from before digests were kept their bucket (and replicas their digest),
    /// in writer jobs of bounded size; a no-op once done (a partial index finds them).
    pub async fn backfill_digests(&self) -> Result<()> {
        while dispatch!(self, digests_missing())? {
            self.note(SyncNote::BackfillDigests { limit: 2_000 }, Vec::new())
                .await?;
        }
        Ok(())
    }

    pub async fn unacked_erasures(&self, owner: &str) -> Result<Vec<Uuid>> {
        dispatch!(self, unacked_erasures(owner))
    }

    pub async fn mark_erasures_acked(&self, ids: &[Uuid]) -> Result<()> {
        if ids.is_empty() {
            return Ok(());
        }
        let ids = ids.to_vec();
        self.note(SyncNote::ErasureAcksSent { ids }, Vec::new())
            .await
    }

    /// Partner: our replica's owner, state and writable fields (None: not a replica).
    pub async fn replica_info(&self, id: Uuid) -> Result<Option<ReplicaInfo>> {
        dispatch!(self, replica_info(id))
    }
}
