//! The owner's side of federation sync (the `Federation` gRPC service): Hello, Subscribe
//! (the change log projected for the calling partner), Ack, Push (a partner's proposed edits,
//! merged per field) and Digest (anti-entropy). Every record a partner receives and every
//! edit it proposes goes through the enforcement point (`auth.rs`), exactly like the client
//! API; the owner is the merge point for its records.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};
use uuid::Uuid;
use verbund_core::access::{controls_access, project};
use verbund_core::sync::{self as merge, FieldEdit};
use verbund_core::{Change, ChangeOp, Record, RecordKind};
use verbund_store::{DeliveryNote, DeliveryState, ShareSnapshot, VerdictOutcome};

use crate::api::Api;
use crate::auth::{self};
use crate::convert;
use crate::error::NodeError;
use crate::identity::{Principal, PrincipalKind};
use crate::pb;
use crate::state::{NodeState, now_ms};
use crate::wire::{hlc_from_pb, state_to_pb, value_from_pb};

/// Items per batch unless the partner asks for fewer; and the most it may ask for.
pub const DEFAULT_BATCH: usize = 2_000;
pub const MAX_BATCH: usize = 5_000;
/// Batches queued for one partner's stream (back-pressure: a slow partner holds back only
/// its own stream, and at most this much of it sits in memory).
const STREAM_QUEUE: usize = 2;
/// An idle stream sends a heartbeat this often.
pub const HEARTBEAT: Duration = Duration::from_secs(5);
/// Changes a partner may propose in one Push.
pub const MAX_PUSH: usize = 500;

pub const CAPABILITIES: &[&str] = &["subscribe", "push", "digest", "erasure"];

/// What a batch of changes means for one partner: the items to send, and the rows its
/// delivery ledger must note first (computed under the policy with this fingerprint).
struct Outgoing {
    items: Vec<pb::SyncItem>,
    ledger: Vec<DeliveryNote>,
    policy: String,
}

fn upsert(rec: &Record, writable: &BTreeSet<String>) -> pb::SyncItem {
    pb::SyncItem {
        item: Some(pb::sync_item::Item::Upsert(state_to_pb(rec, writable))),
    }
}

fn revoke(id: Uuid, reason: &str) -> pb::SyncItem {
    pb::SyncItem {
        item: Some(pb::sync_item::Item::Revoke(pb::Revoke {
            record_id: id.to_string(),
            reason: reason.to_string(),
        })),
    }
}

fn erase(id: Uuid, kind: RecordKind) -> pb::SyncItem {
    pb::SyncItem {
        item: Some(pb::sync_item::Item::Erase(pb::Erasure {
            record_id: id.to_string(),
            kind: convert::kind_to_pb(kind) as i32,
        })),
    }
}

/// A tombstone as a partner receives it: no field values at all.
fn tombstone(rec: &Record) -> Record {
    Record {
        fields: Default::default(),
        versions: Default::default(),
        ..rec.clone()
    }
}

/// The edits of one proposed change, checked: known fields, present versions.
fn edits_from_pb(
    org: &str,
    kind: RecordKind,
    change: &pb::ProposedChange,
) -> Result<Vec<FieldEdit>, NodeError> {
    if change.edits.is_empty() {
        return Err(convert::invalid("changes.edits", "must name at least one field").into());
    }
    let names: Vec<String> = change.edits.iter().map(|e| e.name.clone()).collect();
    let canonical = verbund_core::write::check_mask(kind, &names)?;
    if canonical.len() != names.len() {
        return Err(convert::invalid("changes.edits", "names a field more than once").into());
    }
    // Versions carry the node that made them: a partner stamps only as itself.
    let own_prefix = format!("{org}/");
    change
        .edits
        .iter()
        .zip(canonical)
        .map(|(e, name)| {
            let version = hlc_from_pb("changes.edits.version", e.version.as_ref())?;
            if !version.node.starts_with(&own_prefix) {
                return Err(convert::invalid(
                    "changes.edits.version",
                    format!("node_id must be one of {org}'s nodes ({own_prefix}…)"),
                ));
            }
            Ok(FieldEdit {
                field: name.to_string(),
                value: value_from_pb(e.value.as_ref()),
                version,
                base: e
                    .base
                    .as_ref()
                    .map(|b| hlc_from_pb("changes.edits.base", Some(b)))
                    .transpose()?,
            })
        })
        .collect::<Result<_, Status>>()
        .map_err(NodeError::from)
}

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
    /// Federation calls come only from partner nodes.
    fn federation_caller<T>(&self, req: &Request<T>) -> Result<Principal, Status> {
        let p = auth::principal(req)?;
        if p.kind != PrincipalKind::Node || self.is_own(&p) {
            return Err(Status::permission_denied(format!(
                "{p}: the federation API is for partner nodes"
            )));
        }
        Ok(p)
    }

    /// The items the records `changed` (in order, repeats ignored) mean for partner `p`: its
    /// projection of each, a revoke for a record it held and no longer sees, a tombstone or
    /// an erasure for one it held that was deleted or erased; and the rows the partner's
    /// delivery ledger must note before anything is sent (only what changes there).
    /// `reach_changed`: who may see them may have changed, so the records around them are
    /// looked at again.
    async fn items_of(
        &self,
        p: &Principal,
        changed: Vec<Uuid>,
        reach_changed: bool,
    ) -> Result<Outgoing, NodeError> {
        let mut ids: Vec<Uuid> = Vec::new();
        let mut seen = BTreeSet::new();
        for id in changed {
            if seen.insert(id) {
                ids.push(id);
            }
        }
        if reach_changed {
            // The records it refers to (shown with it as references) are looked at again.
            let changed = self.store.get_many(&ids).await?;
            for r in &changed {
                for target in verbund_core::access::reference_targets(r) {
                    if seen.insert(target) {
                        ids.push(target);
                    }
                }
            }
            // A record that moved, appeared, vanished or changed its sharing takes the
            // records hanging off it along (contacts of an account, activities of a case).
            let mut frontier: Vec<String> = ids.iter().map(Uuid::to_string).collect();
            for _ in 0..2 {
                let found = self.store.dependents_of(&frontier).await?;
                frontier = found
                    .iter()
                    .filter(|r| seen.insert(r.id))
                    .map(|r| {
                        ids.push(r.id);
                        r.id.to_string()
                    })
                    .collect();
                if frontier.is_empty() {
                    break;
                }
            }
        }
        let policy = self.policy();
        let targets = self.store.get_many(&ids).await?;
        let reached = self.reach_around(&p.org, &targets).await?;
        let records: HashMap<Uuid, Record> = targets.into_iter().map(|r| (r.id, r)).collect();
        let delivered: HashMap<Uuid, verbund_store::Delivery> = self
            .store
            .deliveries_of(&p.org, &ids)
            .await?
            .into_iter()
            .map(|d| (d.record_id, d))
            .collect();
        let mut items = Vec::new();
        let mut ledger = Vec::new();
        for id in ids {
            let Some(rec) = records.get(&id) else {
                continue;
            };
            if rec.owner_org != self.org {
                continue; // replicas of other owners are never passed on
            }
            let held = delivered.get(&id).map(|d| d.state);
            let mut note = |state, digest| {
                ledger.push(DeliveryNote {
                    record_id: id,
                    kind: rec.kind,
                    state,
                    digest,
                })
            };
            if rec.is_deleted() {
                let erased = held.is_some() && self.store.erasure(id).await?.is_some();
                if erased {
                    // Whoever held the data, live or revoked since, purges it.
                    items.push(erase(id, rec.kind));
                    note(DeliveryState::Erased, None);
                } else if held == Some(DeliveryState::Live) {
                    items.push(upsert(&tombstone(rec), &BTreeSet::new()));
                    note(DeliveryState::Deleted, None);
                }
                continue;
            }
            let access = auth::reached_access(&policy, &self.org, p, rec, &reached);
            if access.visible() {
                let projected = project(rec, &access.readable);
                let digest = merge::record_digest(&projected.versions, false);
                items.push(upsert(&projected, &access.writable));
                note(DeliveryState::Live, Some(digest));
            } else if held == Some(DeliveryState::Live) {
                items.push(revoke(
                    id,
                    "the record is no longer shared with your organization",
                ));
                note(DeliveryState::Revoked, None);
            }
        }
        // Only what changes in the ledger is written: its state, or the digest of what the
        // partner holds (kept for anti-entropy's bucket sums), or the policy it was
        // computed under.
        let policy = policy.fingerprint().to_string();
        ledger.retain(|n| {
            delivered.get(&n.record_id).is_none_or(|d| {
                d.state != n.state
                    || d.digest != n.digest
                    || (n.digest.is_some() && d.policy.as_deref() != Some(policy.as_str()))
            })
        });
        Ok(Outgoing {
            items,
            ledger,
            policy,
        })
    }

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

    /// Decides one proposed change; the verdict is stored under its idempotency key. A
    /// refusal on the merits is a rejected verdict; a transient failure (the store, the
    /// audit log) fails the whole Push so the partner retries (decided keys stay decided).
    async fn push_one(
        &self,
        p: &Principal,
        change: &pb::ProposedChange,
    ) -> Result<pb::Verdict, Status> {
        // Read before anything is decided: the verdict reflects at least this state.
        let as_of_seq = *self.store.subscribe_commits().borrow();
        // The status it would get decides: a refusal on the merits becomes a verdict.
        match self
            .push_checked(p, change, as_of_seq)
            .await
            .map_err(Status::from)
        {
            Ok(v) => Ok(v),
            Err(status)
                if matches!(
                    status.code(),
                    tonic::Code::InvalidArgument
                        | tonic::Code::NotFound
                        | tonic::Code::PermissionDenied
                        | tonic::Code::FailedPrecondition
                ) =>
            {
                if status.code() != tonic::Code::NotFound {
                    // Refused before any record was looked at (malformed, forged): a denial.
                    // NOT_FOUND was audited where it was decided.
                    let draft = Self::audit_draft(
                        p,
                        "push",
                        convert::kind_from_pb("kind", change.kind).ok(),
                        Some(convert::clip(&change.record_id, 40)),
                        Vec::new(),
                        "deny",
                        format!("push rejected: {}", convert::clip(status.message(), 120)),
                    );
                    self.audit(vec![draft]).await?;
                }
                Ok(pb::Verdict {
                    key: change.key.clone(),
                    outcome: pb::VerdictOutcome::Rejected as i32,
                    reason: format!("{}: {}", status.code(), status.message()),
                    record: None,
                    // Not shared (or gone): the partner's copy goes, as with a revoke.
                    revoked: status.code() == tonic::Code::NotFound,
                    as_of_seq,
                })
            }
            Err(status) => Err(status),
        }
    }

    async fn push_checked(
        &self,
        p: &Principal,
        change: &pb::ProposedChange,
        as_of_seq: i64,
    ) -> Result<pb::Verdict, NodeError> {
        if change.key.is_empty() || change.key.len() > 128 {
            return Err(convert::invalid("changes.key", "must be 1 to 128 characters").into());
        }
        let id = Uuid::parse_str(&change.record_id)
            .map_err(|_| convert::invalid("changes.record_id", "not a UUID"))?;
        let kind = convert::kind_from_pb("changes.kind", change.kind)?;
        let edits = edits_from_pb(&p.org, kind, change)?;
        if let Some(stored) = self.store.push_verdict(&p.org, &change.key).await? {
            // A retry: the same verdict, nothing applied twice.
            let rec = self.store.get(stored.record_id).await?;
            return self.verdict(p, &change.key, &stored, rec, as_of_seq).await;
        }
        let now = now_ms();
        for e in &edits {
            if let Some(reason) = merge::too_far_ahead(
                &e.version,
                now.max(0) as u64,
                self.max_clock_skew_ms,
                &self.org,
            ) {
                // Not decided (and not stored): the clocks may agree again, and the partner
                // re-stamps the edit once its clock is right. Only this change waits.
                let draft = Self::audit_draft(
                    p,
                    "push",
                    Some(kind),
                    Some(id.to_string()),
                    vec![e.field.clone()],
                    "deny",
                    "push deferred: the version is beyond the clock-skew bound",
                );
                self.audit(vec![draft]).await?;
                return Ok(pb::Verdict {
                    key: change.key.clone(),
                    outcome: pb::VerdictOutcome::Deferred as i32,
                    reason: format!("{}: {reason}", e.field),
                    record: None,
                    revoked: false,
                    as_of_seq,
                });
            }
        }
        let not_shared = || Status::not_found(format!("{kind} {id} is not shared with {}", p.org));
        let rec = match self.store.get(id).await? {
            Some(r) if r.kind == kind && r.owner_org == self.org => r,
            _ => return Err(not_shared().into()),
        };
        let access = self.access_to(p, &rec).await?;
        if !access.visible() {
            let draft = Self::audit_draft(
                p,
                "push",
                Some(kind),
                Some(id.to_string()),
                edits.iter().map(|e| e.field.clone()).collect(),
                "deny",
                "not shared",
            );
            return Err(self.deny(draft, not_shared()).await.into());
        }
        for e in &edits {
            self.observe(&e.version);
        }
        let audit = vec![Self::audit_draft(
            p,
            "push",
            Some(kind),
            Some(id.to_string()),
            edits.iter().map(|e| e.field.clone()).collect(),
            "allow",
            auth::reason_of(&access),
        )];
        let (policy, node_org, who, grants, org) = (
            self.policy(),
            self.org.clone(),
            p.clone(),
            access.grants.clone(),
            p.org.clone(),
        );
        let (rec, stored) = self
            .store
            .merge_push(
                &p.org,
                &change.key,
                kind,
                id,
                move |cur| {
                    let now_access = auth::record_access(&policy, &node_org, &who, cur, &grants);
                    merge::plan_merge(
                        cur,
                        now_access.visible(),
                        &now_access.writable,
                        &org,
                        &edits,
                        now,
                    )
                },
                audit,
            )
            .await?;
        self.verdict(p, &change.key, &stored, Some(rec), as_of_seq)
            .await
    }

    async fn verdict(
        &self,
        p: &Principal,
        key: &str,
        stored: &verbund_store::StoredVerdict,
        rec: Option<Record>,
        as_of_seq: i64,
    ) -> Result<pb::Verdict, NodeError> {
        let record = match rec {
            Some(r) if !r.is_deleted() => {
                let access = self.access_to(p, &r).await?;
                access
                    .visible()
                    .then(|| state_to_pb(&project(&r, &access.readable), &access.writable))
            }
            _ => None,
        };
        // The partner no longer sees the record (unshared, deleted): its copy goes.
        let revoked = record.is_none();
        Ok(pb::Verdict {
            key: key.to_string(),
            outcome: match stored.outcome {
                VerdictOutcome::Applied => pb::VerdictOutcome::Applied,
                VerdictOutcome::AppliedWithConflict => pb::VerdictOutcome::AppliedWithConflict,
                VerdictOutcome::Rejected => pb::VerdictOutcome::Rejected,
            } as i32,
            reason: stored.reason.clone(),
            record,
            revoked,
            as_of_seq,
        })
    }
}

#[tonic::async_trait]
impl pb::federation_server::Federation for Api {
    async fn hello(
        &self,
        req: Request<pb::HelloRequest>,
    ) -> Result<Response<pb::HelloResponse>, Status> {
        let p = self.state.federation_caller(&req)?;
        let r = req.get_ref();
        if r.protocol_version != merge::PROTOCOL_VERSION {
            return Err(Status::failed_precondition(format!(
                "protocol version {} is not supported; this node speaks version {}",
                r.protocol_version,
                merge::PROTOCOL_VERSION
            )));
        }
        if r.org != p.org {
            return Err(convert::invalid(
                "org",
                format!(
                    "{} does not match the certificate's organization {}",
                    r.org, p.org
                ),
            ));
        }
        Ok(Response::new(pb::HelloResponse {
            protocol_version: merge::PROTOCOL_VERSION,
            org: self.state.org.clone(),
            capabilities: CAPABILITIES.iter().map(|c| c.to_string()).collect(),
            last_seq: *self.state.store.subscribe_commits().borrow(),
        }))
    }

    type SubscribeStream = ReceiverStream<Result<pb::SyncBatch, Status>>;

    async fn subscribe(
        &self,
        req: Request<pb::SubscribeRequest>,
    ) -> Result<Response<Self::SubscribeStream>, Status> {
        let p = self.state.federation_caller(&req)?;
        self.state
            .subscribe(&p, req.into_inner())
            .map(Response::new)
    }

    async fn ack(&self, req: Request<pb::AckRequest>) -> Result<Response<pb::AckResponse>, Status> {
        let p = self.state.federation_caller(&req)?;
        let r = req.into_inner();
        if r.cursor < 0 {
            return Err(convert::invalid("cursor", "must not be negative"));
        }
        let ids = r
            .erased
            .iter()
            .map(|s| Uuid::parse_str(s).map_err(|_| convert::invalid("erased", "not a UUID")))
            .collect::<Result<Vec<_>, _>>()?;
        let store = &self.state.store;
        let now = now_ms();
        // The acknowledged cursor is for status reports: kept in memory, written at most once
        // a second per partner. Erasure acknowledgements are written at once.
        if self.state.links.note_ack(&p.org, r.cursor) {
            // Off the partner's path: it does not wait for our bookkeeping.
            let (store, org, cursor) = (store.clone(), p.org.clone(), r.cursor);
            tokio::spawn(async move {
                if let Err(e) = store.record_peer_ack(&org, cursor, now).await {
                    tracing::warn!(partner = %org, error = %e, "could not note the acknowledged cursor");
                }
            });
        }
        let note = r
            .quarantined
            .first()
            .map(|q| {
                format!(
                    "{}: {}",
                    convert::clip(&q.record_id, 40),
                    convert::clip(&q.reason, 300)
                )
            })
            .unwrap_or_default();
        self.state
            .links
            .note_partner_quarantine(&p.org, r.quarantined_total.max(0), note);
        if !ids.is_empty() {
            store
                .ack_erasures(&p.org, &ids, now)
                .await
                .map_err(NodeError::from)?;
        }
        Ok(Response::new(pb::AckResponse {}))
    }

    async fn push(
        &self,
        req: Request<pb::PushRequest>,
    ) -> Result<Response<pb::PushResponse>, Status> {
        let p = self.state.federation_caller(&req)?;
        let r = req.into_inner();
        if r.changes.len() > MAX_PUSH {
            return Err(convert::invalid(
                "changes",
                format!("at most {MAX_PUSH} changes per push"),
            ));
        }
        let mut verdicts = Vec::with_capacity(r.changes.len());
        for change in &r.changes {
            verdicts.push(self.state.push_one(&p, change).await?);
        }
        Ok(Response::new(pb::PushResponse { verdicts }))
    }

    async fn digest(
        &self,
        req: Request<pb::DigestRequest>,
    ) -> Result<Response<pb::DigestResponse>, Status> {
        let p = self.state.federation_caller(&req)?;
        self.state
            .digest(&p, req.into_inner())
            .await
            .map(Response::new)
            .map_err(Status::from)
    }
}

mod anti_entropy;
