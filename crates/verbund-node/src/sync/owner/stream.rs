//! The owner's change stream for one partner (Subscribe): the change log after the
//! partner's cursor, projected for it in batches, a share rule's records as a snapshot in
//! id order, then new commits as they come; heartbeats while idle.

use super::*;

/// The records a batch of changes touched, in order, and whether who may see them may have
/// changed (anything but an update of fields that decide no access). A snapshot row names a
/// share rule, not a record: its records come as a snapshot.
fn changed_records(changes: &[Change]) -> (Vec<Uuid>, bool) {
    let mut ids = Vec::with_capacity(changes.len());
    let mut reach_changed = false;
    for c in changes.iter().filter(|c| c.op != ChangeOp::Snapshot) {
        reach_changed |= c.op != ChangeOp::Update || c.fields.keys().any(|f| controls_access(f));
        ids.push(c.record_id);
    }
    (ids, reach_changed)
}

impl NodeState {
    /// Sends partner `p` what the records `ids` mean for it, as the batch that brings it to
    /// `position` (cursor, its mark, the snapshot position). The ledger rows and the batch's
    /// audit entry commit together (one writer job, one fsync) before the batch leaves.
    /// False: the stream is over (the partner went, or an error was sent to it).
    async fn send_batch(
        &self,
        p: &Principal,
        ids: Vec<Uuid>,
        reach_changed: bool,
        position: (i64, &str, &str),
        owner_last_seq: i64,
        tx: &mpsc::Sender<Result<pb::SyncBatch, Status>>,
    ) -> bool {
        let (cursor, mark, snapshot_after) = position;
        let Outgoing {
            items,
            ledger,
            policy,
        } = match self.items_of(p, ids, reach_changed).await {
            Ok(found) => found,
            Err(e) => {
                let _ = tx.send(Err(e.into())).await;
                return false;
            }
        };
        let audit = if items.is_empty() {
            Vec::new()
        } else {
            vec![NodeState::audit_draft(
                p,
                "sync",
                None,
                None,
                Vec::new(),
                "allow",
                if snapshot_after.is_empty() {
                    format!("{} record(s) sent, changes up to {cursor}", items.len())
                } else {
                    format!(
                        "{} record(s) sent of the snapshot at change {cursor}",
                        items.len()
                    )
                },
            )]
        };
        if let Err(e) = self
            .store
            .record_deliveries(&p.org, ledger, now_ms(), &policy, audit)
            .await
        {
            let _ = tx.send(Err(NodeError::from(e).into())).await;
            return false;
        }
        let batch = pb::SyncBatch {
            items,
            cursor,
            owner_last_seq,
            heartbeat: false,
            cursor_mark: mark.to_string(),
            reset: false,
            snapshot_after: snapshot_after.to_string(),
        };
        tx.send(Ok(batch)).await.is_ok()
    }

    /// Streams the owner's changes after `after_seq` to partner `p`, then follows new commits.
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
        let mut cursor = req.after_seq;
        let (tx, rx) = mpsc::channel(STREAM_QUEUE);
        let state = self.clone();
        let principal = p.clone();
        let mut stopping = self.stopping();
        let deadline = tokio::time::Instant::now() + self.watch_max_age();
        tokio::spawn(async move {
            let mut notify = state.store.subscribe_commits();
            // The partner's cursor must name a change of ours with the mark we sent with it.
            // If it does not (we were restored from a backup and reuse or have not reached
            // those sequence numbers), the partner starts over: a reset batch, then all of it.
            let mut mark = String::new();
            if cursor > 0 {
                let at_cursor = match state.store.changes_after(cursor - 1, &[], 1).await {
                    Ok(c) => c.into_iter().find(|c| c.seq == cursor),
                    Err(e) => {
                        let _ = tx.send(Err(NodeError::from(e).into())).await;
                        return;
                    }
                };
                let ours = at_cursor.map(|c| merge::change_mark(c.seq, &c.record_id, &c.hlc));
                let same = match &ours {
                    Some(m) => req.cursor_mark.is_empty() || *m == req.cursor_mark,
                    None => false,
                };
                if same {
                    mark = ours.unwrap_or_default();
                } else {
                    tracing::warn!(
                        partner = %principal.org,
                        cursor,
                        "the partner's cursor does not match our history (were we restored from a backup?); it starts over"
                    );
                    let reset = pb::SyncBatch {
                        items: Vec::new(),
                        cursor: 0,
                        owner_last_seq: *notify.borrow(),
                        heartbeat: false,
                        cursor_mark: String::new(),
                        reset: true,
                        snapshot_after: String::new(),
                    };
                    if tx.send(Ok(reset)).await.is_err() {
                        return;
                    }
                    cursor = 0;
                }
            }
            // Erasures it has not acknowledged yet go first (it may have been offline).
            match state.store.pending_erasures(&principal.org).await {
                Ok(pending) if !pending.is_empty() => {
                    let batch = pb::SyncBatch {
                        items: pending.iter().map(|d| erase(d.record_id, d.kind)).collect(),
                        cursor: 0,
                        owner_last_seq: *notify.borrow(),
                        heartbeat: false,
                        cursor_mark: String::new(),
                        reset: false,
                        snapshot_after: String::new(),
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
            // A snapshot in progress: what it is about and the last record id sent of it. The
            // partner may come back in the middle of one (its cursor names the snapshot's
            // change and how far it got).
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
                                "the change at after_seq is not a snapshot for your organization",
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
            loop {
                if *stopping.borrow() || tokio::time::Instant::now() >= deadline {
                    return;
                }
                if let Some((snap, after)) = snapshot.as_mut() {
                    // The next records of the rule, in id order; fewer than a batch: the last.
                    let ids = match state
                        .store
                        .rule_members_after(&snap.org, &snap.rule, after, max_batch as i64)
                        .await
                    {
                        Ok(ids) => ids,
                        Err(e) => {
                            let _ = tx.send(Err(NodeError::from(e).into())).await;
                            return;
                        }
                    };
                    let position = match ids.last() {
                        Some(last) if ids.len() == max_batch => last.to_string(),
                        _ => String::new(),
                    };
                    let owner_last_seq = *notify.borrow();
                    let sent = state
                        .send_batch(
                            &principal,
                            ids,
                            true,
                            (cursor, &mark, &position),
                            owner_last_seq,
                            &tx,
                        )
                        .await;
                    if !sent {
                        return;
                    }
                    if position.is_empty() {
                        snapshot = None;
                    } else {
                        *after = position;
                    }
                    continue;
                }
                let changes = match state
                    .store
                    .changes_after(cursor, &[], max_batch as i64)
                    .await
                {
                    Ok(c) => c,
                    Err(e) => {
                        let _ = tx.send(Err(NodeError::from(e).into())).await;
                        return;
                    }
                };
                if changes.is_empty() {
                    tokio::select! {
                        _ = notify.changed() => {}
                        _ = tokio::time::sleep(HEARTBEAT) => {
                            let beat = pb::SyncBatch {
                                items: Vec::new(),
                                cursor,
                                owner_last_seq: *notify.borrow(),
                                heartbeat: true,
                                cursor_mark: mark.clone(),
                                reset: false,
                                snapshot_after: String::new(),
                            };
                            if tx.send(Ok(beat)).await.is_err() {
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
                let head = match &cut {
                    Some((i, _)) => &changes[..*i],
                    None => &changes[..],
                };
                if let Some(last) = head.last() {
                    let (end, end_mark) = (
                        last.seq,
                        merge::change_mark(last.seq, &last.record_id, &last.hlc),
                    );
                    let (ids, reach_changed) = changed_records(head);
                    let owner_last_seq = *notify.borrow();
                    let sent = state
                        .send_batch(
                            &principal,
                            ids,
                            reach_changed,
                            (end, &end_mark, ""),
                            owner_last_seq,
                            &tx,
                        )
                        .await;
                    if !sent {
                        return;
                    }
                    cursor = end;
                    mark = end_mark;
                }
                if let Some((i, snap)) = cut {
                    let c = &changes[i];
                    cursor = c.seq;
                    mark = merge::change_mark(c.seq, &c.record_id, &c.hlc);
                    snapshot = Some((snap, String::new()));
                }
            }
        });
        Ok(ReceiverStream::new(rx))
    }
}
