//! The owner's change stream for one partner (Subscribe): the change log after the
//! partner's cursor, projected for it in batches, a share rule's records as a snapshot in
//! id order, then new commits as they come; heartbeats while idle.

use super::stamps::StampLock;
use super::*;

/// The records a batch of changes touched, in order; and, when every change of the batch is
/// an update of fields that decide no access (so who may see what cannot have changed), the
/// fields each record had changed: None otherwise. A snapshot row names a share rule, not a
/// record: its records come as a snapshot.
fn changed_records(changes: &[Change]) -> (Vec<Uuid>, Option<UpdatedFields>) {
    let mut ids = Vec::with_capacity(changes.len());
    let mut updated = Some(UpdatedFields::new());
    for c in changes.iter().filter(|c| c.op != ChangeOp::Snapshot) {
        ids.push(c.record_id);
        if c.op != ChangeOp::Update || c.fields.keys().any(|f| controls_access(f)) {
            updated = None;
        }
        if let Some(u) = updated.as_mut() {
            u.entry(c.record_id)
                .or_default()
                .extend(c.fields.keys().cloned());
        }
    }
    (ids, updated)
}

/// A snapshot batch read ahead of its turn (see `take_prefetched`).
struct Prefetched {
    /// The last change committed before the read began.
    as_of: i64,
    members: Vec<Record>,
}

/// How long a caught-up stream waits for more before it notes that the partner's position
/// covers the changes it was not sent.
const HELD_QUIET: Duration = Duration::from_secs(1);

/// How long a caught-up stream waits for more before it commits the bookkeeping of batches
/// that went ahead of it (see `Ahead`); and the longest and the most it lets accumulate while
/// updates keep coming.
const AHEAD_QUIET: Duration = Duration::from_millis(50);
const AHEAD_AT_MOST: Duration = Duration::from_secs(1);
const AHEAD_NOTES: usize = 2_000;

/// The bookkeeping of batches sent ahead of it (new states of records the partner holds live
/// already, see `send_batch`): their ledger rows, what they sent and the position that
/// covers them, committed later in one writer job. While updates keep coming, this spares
/// each of them a ledger commit (an fsync), a position batch, its apply and its
/// acknowledgement on the partner: work that competed with the next update.
#[derive(Default)]
struct Ahead {
    ledger: Vec<DeliveryNote>,
    /// The policy fingerprint the ledger rows were computed under.
    policy: String,
    records: usize,
    batches: usize,
    /// The latest stamp sent ahead, and the change of ours it covers.
    position: i64,
    owner_seq: i64,
    since: Option<tokio::time::Instant>,
}

impl Ahead {
    fn is_empty(&self) -> bool {
        self.since.is_none()
    }

    fn due(&self) -> bool {
        self.ledger.len() >= AHEAD_NOTES || self.since.is_some_and(|t| t.elapsed() >= AHEAD_AT_MOST)
    }
}

/// What became of a batch.
#[derive(Debug, PartialEq, Eq)]
enum BatchFate {
    /// Sent: the partner's position is now this stamp, with this mark.
    Sent(i64, String),
    /// Sent ahead of its bookkeeping (kept in `Ahead`): the partner's position stays.
    Ahead,
    /// Nothing in it for the partner: not sent; the partner's position covers it once noted
    /// (`move_position`).
    Held,
    /// The stream is over (the partner went, or an error was sent to it).
    Over,
}

/// A batch without items (a heartbeat, or the first position of a stream).
fn cursor_only(position: i64, mark: &str, heartbeat: bool) -> pb::SyncBatch {
    pb::SyncBatch {
        cursor: position,
        owner_last_seq: position,
        heartbeat,
        cursor_mark: mark.to_string(),
        ..Default::default()
    }
}

/// The audit entry noting what a batch (or batches) sent the partner.
fn sync_audit(p: &Principal, reason: String) -> verbund_core::audit::AuditDraft {
    NodeState::audit_draft(p, "sync", None, None, Vec::new(), "allow", reason)
}

/// A fresh mark for a stream position (random: it says nothing but which position it is).
fn new_mark() -> String {
    Uuid::new_v4().simple().to_string()
}

impl NodeState {
    /// Sends partner `p` what the records `ids` mean for it, as the batch that brings it to
    /// a new position of its stream: a stamp (see `stamps.rs`) that covers our changes up to
    /// `owner_seq` (and, while a snapshot is in progress, its records up to
    /// `snapshot_after`). The ledger rows, the batch's audit entry and the position commit
    /// together (one writer job, one fsync) before the batch leaves; only new states of
    /// records the partner holds live already go ahead of them. `more`: the stream has
    /// more to send right away (the partner's lag shows 1 until it comes).
    /// `may_hold`: a batch with nothing for the partner is not sent at all, and its position
    /// does not move: the partner learns nothing of changes it cannot see, not even that
    /// they happened.
    #[allow(clippy::too_many_arguments)]
    async fn send_batch(
        &self,
        p: &Principal,
        ids: Vec<Uuid>,
        held: Option<(StampLock, Vec<Record>)>,
        updated: Option<UpdatedFields>,
        (owner_seq, snapshot_after): (i64, &str),
        more: bool,
        may_hold: bool,
        ahead: &mut Ahead,
        tx: &mpsc::Sender<Result<pb::SyncBatch, Status>>,
    ) -> BatchFate {
        if may_hold && ids.is_empty() {
            return BatchFate::Held; // nothing to look at, nothing to send
        }
        let stamped = async {
            // The states are read and stamped under the partner's lock (their order).
            let (mut lock, preloaded) = match held {
                Some(held) => held,
                None => (self.stamp_lock(&p.org).await?, Vec::new()),
            };
            let mut out = self.items_of(p, ids, preloaded, updated.as_ref()).await?;
            if may_hold && out.items.is_empty() && out.ledger.is_empty() {
                return Ok::<_, NodeError>(None);
            }
            let stamp = lock.next(self).await?;
            stamp_items(&mut out.items, stamp);
            Ok(Some((stamp, out)))
        };
        let (position, out) = match stamped.await {
            Ok(Some(found)) => found,
            Ok(None) => return BatchFate::Held,
            Err(e) => {
                let _ = tx.send(Err(e.into())).await;
                return BatchFate::Over;
            }
        };
        let Outgoing {
            items,
            mut ledger,
            policy,
            updates_only,
        } = out;
        // New states of records the partner holds live already leave at once, without a
        // position (cursor 0: the partner applies them and its cursor stays), ahead of their
        // bookkeeping, which commits later with that of the next ones (`Ahead`); then the
        // position follows alone. Should we fail before that commit, the partner's cursor
        // still stands before these changes and it is sent them again, so nothing is lost,
        // and the ledger's older digest only makes anti-entropy send a record once more. A
        // first delivery, a revoke, a deletion or an erasure waits for its ledger row, which
        // decides what the partner is later sent of the record.
        // Rows of another policy generation are noted on their own; the partner's position
        // then moves, which the caller must learn even if this batch goes ahead.
        let mut moved = None;
        if !ahead.is_empty() && ahead.policy != policy {
            match self.send_ahead_bookkeeping(p, ahead, tx).await {
                BatchFate::Over => return BatchFate::Over,
                BatchFate::Sent(at, at_mark) => moved = Some((at, at_mark)),
                BatchFate::Held | BatchFate::Ahead => {}
            }
        }
        if updates_only && snapshot_after.is_empty() {
            let records = items.len();
            let batch = pb::SyncBatch {
                items,
                ..Default::default()
            };
            if tx.send(Ok(batch)).await.is_err() {
                return BatchFate::Over;
            }
            ahead.ledger.append(&mut ledger);
            ahead.policy = policy;
            ahead.records += records;
            ahead.batches += 1;
            (ahead.position, ahead.owner_seq) = (position, owner_seq);
            ahead.since.get_or_insert_with(tokio::time::Instant::now);
            if ahead.due() {
                return self.send_ahead_bookkeeping(p, ahead, tx).await;
            }
            return match moved {
                Some((at, at_mark)) => BatchFate::Sent(at, at_mark),
                None => BatchFate::Ahead,
            };
        }
        // This batch's position covers what went ahead: their bookkeeping commits with its.
        let before = std::mem::take(ahead);
        let mut rows = before.ledger.clone();
        rows.append(&mut ledger);
        let audit = match (items.len() + before.records, snapshot_after.is_empty()) {
            (0, _) => Vec::new(),
            (n, true) => vec![sync_audit(
                p,
                format!("{n} record(s) sent, changes up to {owner_seq}"),
            )],
            (n, false) => vec![sync_audit(
                p,
                format!("{n} record(s) sent of the snapshot at change {owner_seq}"),
            )],
        };
        let mark = new_mark();
        let noted = StreamPosition {
            stream_pos: position,
            owner_seq,
            mark: mark.clone(),
        };
        if let Err(e) = self
            .store
            .record_deliveries(&p.org, rows, now_ms(), &policy, audit, Some(noted))
            .await
        {
            // What went ahead was sent: its bookkeeping is tried again as the stream ends.
            *ahead = before;
            let _ = tx.send(Err(NodeError::from(e).into())).await;
            return BatchFate::Over;
        }
        let batch = pb::SyncBatch {
            items,
            cursor: position,
            owner_last_seq: position + i64::from(more),
            heartbeat: false,
            cursor_mark: mark.clone(),
            reset: false,
            snapshot_after: snapshot_after.to_string(),
        };
        if tx.send(Ok(batch)).await.is_ok() {
            BatchFate::Sent(position, mark)
        } else {
            BatchFate::Over
        }
    }

    /// The next `limit` records of a share rule's snapshot after record id `after`, in id
    /// order, read whole under partner `org`'s stamp lock, like every state it is sent.
    async fn snapshot_members(
        &self,
        org: &str,
        snap: &ShareSnapshot,
        after: &str,
        limit: usize,
    ) -> Result<(StampLock, Vec<Record>), NodeError> {
        let lock = self.stamp_lock(org).await?;
        let members = self
            .store
            .rule_members_after(&snap.org, &snap.rule, after, limit as i64)
            .await?;
        Ok((lock, members))
    }

    /// The next records of a snapshot read ahead, without the stamp lock, with the last
    /// change committed before the read began. (The committed one, read from the database:
    /// the one the writer has published may lag behind a commit whose records the read
    /// already sees, or a commit after the read.)
    async fn prefetch_members(
        &self,
        snap: &ShareSnapshot,
        after: &str,
        limit: usize,
    ) -> Result<Prefetched, NodeError> {
        let as_of = self.store.last_seq().await?;
        let members = self
            .store
            .rule_members_after(&snap.org, &snap.rule, after, limit as i64)
            .await?;
        Ok(Prefetched { as_of, members })
    }

    /// A batch read ahead, under partner `org`'s stamp lock: as read if no change was
    /// committed since its read began (every write of a record commits a change, so the
    /// records are as they would be read now); else read again under the lock.
    async fn take_prefetched(
        &self,
        org: &str,
        snap: &ShareSnapshot,
        after: &str,
        limit: usize,
        read: Result<Prefetched, NodeError>,
    ) -> Result<(StampLock, Vec<Record>), NodeError> {
        let read = read?;
        let lock = self.stamp_lock(org).await?;
        if self.store.last_seq().await? == read.as_of {
            return Ok((lock, read.members));
        }
        drop(lock);
        self.snapshot_members(org, snap, after, limit).await
    }

    /// Commits the bookkeeping of the batches sent ahead (ledger rows, one audit entry, the
    /// position covering them) and sends the partner that position.
    async fn send_ahead_bookkeeping(
        &self,
        p: &Principal,
        ahead: &mut Ahead,
        tx: &mpsc::Sender<Result<pb::SyncBatch, Status>>,
    ) -> BatchFate {
        let done = std::mem::take(ahead);
        if done.is_empty() {
            return BatchFate::Held;
        }
        let audit = vec![sync_audit(
            p,
            format!(
                "{} record(s) sent in {} batch(es), changes up to {}",
                done.records, done.batches, done.owner_seq
            ),
        )];
        let mark = new_mark();
        let noted = StreamPosition {
            stream_pos: done.position,
            owner_seq: done.owner_seq,
            mark: mark.clone(),
        };
        if let Err(e) = self
            .store
            .record_deliveries(
                &p.org,
                done.ledger.clone(),
                now_ms(),
                &done.policy,
                audit,
                Some(noted),
            )
            .await
        {
            // Kept: the stream's end tries once more (a failed group commit may be another
            // job's fault).
            *ahead = done;
            let _ = tx.send(Err(NodeError::from(e).into())).await;
            return BatchFate::Over;
        }
        if tx
            .send(Ok(cursor_only(done.position, &mark, false)))
            .await
            .is_ok()
        {
            BatchFate::Sent(done.position, mark)
        } else {
            BatchFate::Over
        }
    }

    /// A partner without a position (new, or starting over) gets one first, covering none
    /// of our changes, so that changes it is never sent can move it on in place.
    async fn first_position(&self, p: &Principal) -> Result<(i64, String), NodeError> {
        let position = self.stamp_now(&p.org).await?;
        let mark = new_mark();
        let noted = StreamPosition {
            stream_pos: position,
            owner_seq: 0,
            mark: mark.clone(),
        };
        self.store
            .record_deliveries(&p.org, Vec::new(), now_ms(), "", Vec::new(), Some(noted))
            .await?;
        Ok((position, mark))
    }

    /// Streams the owner's changes after the partner's position `after_seq` to partner `p`,
    /// then follows new commits.
    pub fn subscribe(
        self: &Arc<Self>,
        p: &Principal,
        req: pb::SubscribeRequest,
    ) -> Result<ReceiverStream<Result<pb::SyncBatch, Status>>, Status> {
        if req.after_seq < 0 {
            return Err(convert::invalid("after_seq", "must not be negative"));
        }
        if req.snapshot_after.len() > 64 {
            return Err(convert::invalid(
                "snapshot_after",
                "must be a record id as sent with a batch",
            ));
        }
        let max_batch = match req.max_batch as usize {
            0 => DEFAULT_BATCH,
            n => n.min(MAX_BATCH),
        };
        // The partner's position (its cursor) and what it stands for here: our changes up to
        // `cursor` are in its hands.
        let mut position = req.after_seq;
        let mut cursor = 0;
        let (tx, rx) = mpsc::channel(STREAM_QUEUE);
        let state = self.clone();
        let principal = p.clone();
        let mut stopping = self.stopping();
        let deadline = tokio::time::Instant::now() + self.watch_max_age();
        tokio::spawn(async move {
            let mut notify = state.store.subscribe_commits();
            // The partner's cursor must be a position we gave it, with the mark we sent with
            // it. If it is not (we were restored from a backup, or it comes from before this
            // version), the partner starts over: a reset batch, then all of it.
            let mut mark = String::new();
            if position > 0 {
                let known = match state.store.stream_position(&principal.org, position).await {
                    Ok(known) => known,
                    Err(e) => {
                        let _ = tx.send(Err(NodeError::from(e).into())).await;
                        return;
                    }
                };
                match known {
                    Some(at) if req.cursor_mark.is_empty() || at.mark == req.cursor_mark => {
                        cursor = at.owner_seq;
                        mark = at.mark;
                    }
                    _ => {
                        tracing::warn!(
                            partner = %principal.org,
                            position,
                            "the partner's cursor is not a position we know (were we restored from a backup?); it starts over"
                        );
                        let reset = pb::SyncBatch {
                            reset: true,
                            ..Default::default()
                        };
                        if tx.send(Ok(reset)).await.is_err() {
                            return;
                        }
                        position = 0;
                    }
                }
            }
            // Erasures it has not acknowledged yet go first (it may have been offline).
            match state.store.pending_erasures(&principal.org).await {
                Ok(pending) if !pending.is_empty() => {
                    // Cursor 0: these move no cursor of the partner's.
                    let batch = pb::SyncBatch {
                        items: pending.iter().map(|d| erase(d.record_id, d.kind)).collect(),
                        ..Default::default()
                    };
                    if tx.send(Ok(batch)).await.is_err() {
                        return;
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    let _ = tx.send(Err(NodeError::from(e).into())).await;
                    return;
                }
            }
            if position == 0 {
                match state.first_position(&principal).await {
                    Ok((first, first_mark)) => {
                        if tx
                            .send(Ok(cursor_only(first, &first_mark, false)))
                            .await
                            .is_err()
                        {
                            return;
                        }
                        (position, mark) = (first, first_mark);
                    }
                    Err(e) => {
                        let _ = tx.send(Err(e.into())).await;
                        return;
                    }
                }
            }
            // A snapshot in progress: what it is about and the last record id sent of it. The
            // partner may come back in the middle of one (its position stands for the
            // snapshot's change and it says how far it got).
            let mut snapshot: Option<(ShareSnapshot, String)> = None;
            if cursor > 0 && !req.snapshot_after.is_empty() {
                match state.store.share_snapshot(cursor).await {
                    Ok(Some(snap)) if snap.org == principal.org => {
                        snapshot = Some((snap, req.snapshot_after.clone()));
                    }
                    Ok(_) => {
                        let _ = tx
                            .send(Err(convert::invalid(
                                "snapshot_after",
                                "the position after_seq is not in a snapshot for your organization",
                            )))
                            .await;
                        return;
                    }
                    Err(e) => {
                        let _ = tx.send(Err(NodeError::from(e).into())).await;
                        return;
                    }
                }
            }
            // Since when our cursor is ahead of what the partner's position is noted to cover
            // (changes with nothing for it).
            let mut held_since: Option<tokio::time::Instant> = None;
            let mut ahead = Ahead::default();
            // The snapshot's next batch, read while the one before it was sent.
            let mut prefetched: Option<Result<Prefetched, NodeError>> = None;
            // Every way out of the loop passes by the bookkeeping of what went ahead.
            let streamed = async {
                loop {
                    if *stopping.borrow() || tokio::time::Instant::now() >= deadline {
                        return;
                    }
                    if let Some((snap, after)) = snapshot.as_mut() {
                        // The next records of the rule, in id order; fewer than a batch: the last.
                        let read = match prefetched.take() {
                            Some(read) => {
                                state
                                    .take_prefetched(&principal.org, snap, after, max_batch, read)
                                    .await
                            }
                            None => {
                                state
                                    .snapshot_members(&principal.org, snap, after, max_batch)
                                    .await
                            }
                        };
                        let (lock, members) = match read {
                            Ok(read) => read,
                            Err(e) => {
                                let _ = tx.send(Err(e.into())).await;
                                return;
                            }
                        };
                        let ids: Vec<Uuid> = members.iter().map(|r| r.id).collect();
                        let next_after = match ids.last() {
                            Some(last) if ids.len() == max_batch => last.to_string(),
                            _ => String::new(),
                        };
                        // The batch after this one is read while this one is looked at,
                        // committed and sent, without the stamp lock (a push of the partner
                        // must not wait for our batches): it is taken only if nothing was
                        // committed since the read began, else read again (`take_prefetched`).
                        let next_read = async {
                            if next_after.is_empty() {
                                return None;
                            }
                            Some(state.prefetch_members(snap, &next_after, max_batch).await)
                        };
                        let (sent, next) = futures::future::join(
                            state.send_batch(
                                &principal,
                                ids,
                                Some((lock, members)),
                                None,
                                (cursor, &next_after),
                                !next_after.is_empty(),
                                false,
                                &mut ahead,
                                &tx,
                            ),
                            next_read,
                        )
                        .await;
                        prefetched = next;
                        match sent {
                            BatchFate::Sent(at, at_mark) => (position, mark) = (at, at_mark),
                            BatchFate::Held | BatchFate::Ahead => {}
                            BatchFate::Over => return,
                        }
                        held_since = None;
                        if next_after.is_empty() {
                            snapshot = None;
                        } else {
                            *after = next_after;
                        }
                        continue;
                    }
                    let read = match state
                        .store
                        .stream_changes_after(cursor, &state.org, max_batch as i64)
                        .await
                    {
                        Ok(c) => c,
                        Err(e) => {
                            let _ = tx.send(Err(NodeError::from(e).into())).await;
                            return;
                        }
                    };
                    let (changes, foreign) = (read.changes, read.foreign);
                    if read.scanned_to <= cursor {
                        // Caught up. Once things are quiet, the partner's position is noted to
                        // cover the changes held back (nothing is sent for them); otherwise a
                        // heartbeat now and then.
                        let wait = if !ahead.is_empty() {
                            AHEAD_QUIET
                        } else if held_since.is_some() {
                            HELD_QUIET
                        } else {
                            HEARTBEAT
                        };
                        tokio::select! {
                            _ = notify.changed() => {}
                            _ = tokio::time::sleep(wait) => {
                                if !ahead.is_empty() {
                                    match state.send_ahead_bookkeeping(&principal, &mut ahead, &tx).await {
                                        BatchFate::Sent(at, at_mark) => (position, mark) = (at, at_mark),
                                        BatchFate::Over => return,
                                        BatchFate::Held | BatchFate::Ahead => {}
                                    }
                                } else if held_since.take().is_some() {
                                    if let Err(e) = state.store.move_position(&principal.org, position, cursor).await {
                                        let _ = tx.send(Err(NodeError::from(e).into())).await;
                                        return;
                                    }
                                } else if tx.send(Ok(cursor_only(position, &mark, true))).await.is_err() {
                                    return;
                                }
                            }
                            _ = tx.closed() => return,
                            _ = stopping.changed() => return,
                            _ = tokio::time::sleep_until(deadline) => return,
                        }
                        continue;
                    }
                    // A snapshot of a rule for this partner cuts the batch: the changes before it
                    // go first, then the snapshot, then the changes after it.
                    let mut cut = None;
                    for (i, c) in changes.iter().enumerate() {
                        if c.op != ChangeOp::Snapshot {
                            continue;
                        }
                        match state.store.share_snapshot(c.seq).await {
                            Ok(Some(snap)) if snap.org == principal.org => {
                                cut = Some((i, snap));
                                break;
                            }
                            Ok(_) => {}
                            Err(e) => {
                                let _ = tx.send(Err(NodeError::from(e).into())).await;
                                return;
                            }
                        }
                    }
                    // Where the batch before a snapshot ends; without one, where the read ended
                    // (changes it passed by bear on nothing of the partner's).
                    let (head, head_end) = match &cut {
                        Some((i, _)) => (&changes[..*i], changes[..*i].last().map(|c| c.seq)),
                        None => (&changes[..], Some(read.scanned_to)),
                    };
                    if let Some(end) = head_end {
                        let (ids, mut updated) = changed_records(head);
                        // Other owners' records (our replicas of them) pass by unread unless a
                        // record of ours hangs off them.
                        let ids = match state.store.bearing_on_own(ids, &foreign, &state.org).await
                        {
                            Ok(ids) => ids,
                            Err(e) => {
                                let _ = tx.send(Err(NodeError::from(e).into())).await;
                                return;
                            }
                        };
                        if ids.iter().any(|id| foreign.contains(id)) {
                            // Their changes came without the fields they changed: what hangs
                            // off them is looked at in full.
                            updated = None;
                        }
                        let more = cut.is_some() || read.scanned_to < read.last;
                        let sent = state
                            .send_batch(
                                &principal,
                                ids,
                                None,
                                updated,
                                (end, ""),
                                more,
                                true,
                                &mut ahead,
                                &tx,
                            )
                            .await;
                        match sent {
                            BatchFate::Over => return,
                            BatchFate::Sent(at, at_mark) => {
                                (position, mark) = (at, at_mark);
                                held_since = None;
                            }
                            BatchFate::Ahead => held_since = None,
                            BatchFate::Held => {
                                // Changes keep coming and none is for the partner: its position
                                // is still noted to cover them now and then, so that a reconnect
                                // does not go through all of them again.
                                let since =
                                    *held_since.get_or_insert_with(tokio::time::Instant::now);
                                if ahead.due() || since.elapsed() >= HEARTBEAT {
                                    // Only a position that covers what went ahead may be moved on.
                                    match state
                                        .send_ahead_bookkeeping(&principal, &mut ahead, &tx)
                                        .await
                                    {
                                        BatchFate::Sent(at, at_mark) => {
                                            (position, mark) = (at, at_mark)
                                        }
                                        BatchFate::Over => return,
                                        BatchFate::Held | BatchFate::Ahead => {}
                                    }
                                    if let Err(e) = state
                                        .store
                                        .move_position(&principal.org, position, end)
                                        .await
                                    {
                                        let _ = tx.send(Err(NodeError::from(e).into())).await;
                                        return;
                                    }
                                    held_since = None;
                                }
                            }
                        }
                        cursor = end;
                    }
                    if let Some((i, snap)) = cut {
                        cursor = changes[i].seq;
                        snapshot = Some((snap, String::new()));
                    }
                }
            };
            streamed.await;
            // The partner may be gone (or the node stopping): the ledger still notes what it
            // was sent, so that erasure and anti-entropy know.
            if !ahead.is_empty() {
                let _ = state
                    .send_ahead_bookkeeping(&principal, &mut ahead, &tx)
                    .await;
            }
        });
        Ok(ReceiverStream::new(rx))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use verbund_core::{Hlc, Value};

    fn change(id: Uuid, op: ChangeOp, fields: &[&str]) -> Change {
        Change {
            seq: 1,
            record_id: id,
            kind: RecordKind::Account,
            op,
            hlc: Hlc::new(1, 0, "acme/node1"),
            fields: fields
                .iter()
                .map(|f| (f.to_string(), Some(Value::Text("x".into()))))
                .collect(),
            at_ms: 1,
        }
    }

    #[test]
    fn plain_updates_name_the_fields_each_record_had_changed() {
        let (a, b) = (Uuid::now_v7(), Uuid::now_v7());
        let (ids, updated) = changed_records(&[
            change(a, ChangeOp::Update, &["city"]),
            change(b, ChangeOp::Update, &["name"]),
            change(a, ChangeOp::Update, &["phone"]),
        ]);
        assert_eq!(ids, vec![a, b, a]);
        let updated = updated.expect("only plain updates");
        assert_eq!(
            updated[&a],
            ["city".to_string(), "phone".to_string()].into()
        );
        assert_eq!(updated[&b], ["name".to_string()].into());
    }

    #[test]
    fn anything_that_may_change_who_sees_what_names_no_fields() {
        let a = Uuid::now_v7();
        for other in [
            change(a, ChangeOp::Create, &["name"]),
            change(a, ChangeOp::Delete, &[]),
            change(a, ChangeOp::Access, &[]),
            change(a, ChangeOp::Update, &["assigned_org"]),
        ] {
            let (_, updated) =
                changed_records(&[change(a, ChangeOp::Update, &["city"]), other.clone()]);
            assert!(updated.is_none(), "{other:?}");
        }
    }
}
