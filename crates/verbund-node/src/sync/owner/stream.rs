//! The owner's change stream for one partner (Subscribe): the change log after the
//! partner's cursor, projected for it in batches, a share rule's records as a snapshot in
//! id order, then new commits as they come; heartbeats while idle.

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

/// How long a caught-up stream waits for more before it sends a cursor held back.
const HELD_QUIET: Duration = Duration::from_secs(1);

/// What became of a batch.
#[derive(Debug, PartialEq, Eq)]
enum BatchFate {
    Sent,
    /// Nothing in it for the partner: not sent, only the stream's cursor moved (see
    /// `cursor_only`).
    Held,
    /// The stream is over (the partner went, or an error was sent to it).
    Over,
}

/// A batch without items that only moves the partner's cursor (a heartbeat, or changes with
/// nothing in them for it).
fn cursor_only(cursor: i64, mark: &str, owner_last_seq: i64, heartbeat: bool) -> pb::SyncBatch {
    pb::SyncBatch {
        cursor,
        owner_last_seq,
        heartbeat,
        cursor_mark: mark.to_string(),
        ..Default::default()
    }
}

impl NodeState {
    /// Sends partner `p` what the records `ids` mean for it, as the batch that brings it to
    /// `position` (cursor, its mark, the snapshot position). The ledger rows and the batch's
    /// audit entry commit together (one writer job, one fsync) before the batch leaves.
    /// `may_hold`: a batch with nothing for the partner is not sent at all. Sending it would
    /// make the partner commit its cursor (an fsync on its side for nothing) at the moment
    /// of each change it cannot see; the cursor goes with the next batch, or once the stream
    /// is quiet (it still says that the owner's change log moved: the cursor is the owner's
    /// sequence number, not yet one per partner).
    #[allow(clippy::too_many_arguments)]
    async fn send_batch(
        &self,
        p: &Principal,
        ids: Vec<Uuid>,
        updated: Option<UpdatedFields>,
        position: (i64, &str, &str),
        owner_last_seq: i64,
        may_hold: bool,
        tx: &mpsc::Sender<Result<pb::SyncBatch, Status>>,
    ) -> BatchFate {
        let (cursor, mark, snapshot_after) = position;
        let Outgoing {
            items,
            ledger,
            policy,
        } = match self.items_of(p, ids, updated.as_ref()).await {
            Ok(found) => found,
            Err(e) => {
                let _ = tx.send(Err(e.into())).await;
                return BatchFate::Over;
            }
        };
        if may_hold && items.is_empty() && ledger.is_empty() {
            return BatchFate::Held;
        }
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
            return BatchFate::Over;
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
        if tx.send(Ok(batch)).await.is_ok() {
            BatchFate::Sent
        } else {
            BatchFate::Over
        }
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
                        owner_last_seq: *notify.borrow(),
                        reset: true,
                        ..Default::default()
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
                    // Cursor 0: these move no cursor of the partner's.
                    let batch = pb::SyncBatch {
                        items: pending.iter().map(|d| erase(d.record_id, d.kind)).collect(),
                        owner_last_seq: *notify.borrow(),
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
            // Since when the partner's cursor lags behind ours (batches held back).
            let mut held_since: Option<tokio::time::Instant> = None;
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
                            None,
                            (cursor, &mark, &position),
                            owner_last_seq,
                            false,
                            &tx,
                        )
                        .await;
                    if sent == BatchFate::Over {
                        return;
                    }
                    held_since = None;
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
                    // Caught up. A cursor held back goes out once things are quiet, as a batch
                    // the partner acknowledges (it does not acknowledge heartbeats), so that
                    // both sides see it caught up; otherwise a heartbeat now and then.
                    let (wait, heartbeat) = if held_since.is_some() {
                        (HELD_QUIET, false)
                    } else {
                        (HEARTBEAT, true)
                    };
                    tokio::select! {
                        _ = notify.changed() => {}
                        _ = tokio::time::sleep(wait) => {
                            let beat = cursor_only(cursor, &mark, *notify.borrow(), heartbeat);
                            if tx.send(Ok(beat)).await.is_err() {
                                return;
                            }
                            held_since = None;
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
                    let (ids, updated) = changed_records(head);
                    let owner_last_seq = *notify.borrow();
                    let sent = state
                        .send_batch(
                            &principal,
                            ids,
                            updated,
                            (end, &end_mark, ""),
                            owner_last_seq,
                            true,
                            &tx,
                        )
                        .await;
                    match sent {
                        BatchFate::Over => return,
                        BatchFate::Sent => held_since = None,
                        BatchFate::Held => {
                            // Changes keep coming and none is for the partner: its cursor
                            // still moves now and then, so that a reconnect does not go
                            // through all of them again.
                            let since = *held_since.get_or_insert_with(tokio::time::Instant::now);
                            if since.elapsed() >= HEARTBEAT {
                                let advance = cursor_only(end, &end_mark, owner_last_seq, false);
                                if tx.send(Ok(advance)).await.is_err() {
                                    return;
                                }
                                held_since = None;
                            }
                        }
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
