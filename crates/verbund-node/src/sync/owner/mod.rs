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
use verbund_store::{DeliveryNote, DeliveryState, ShareSnapshot, StreamPosition, VerdictOutcome};

use crate::api::Api;
use crate::auth::{self};
use crate::convert;
use crate::error::NodeError;
use crate::identity::{Principal, PrincipalKind};
use crate::pb;
use crate::state::{NodeState, now_ms};
use crate::wire::{hlc_from_pb, projected_state_to_pb, state_to_pb, value_from_pb};

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

/// The fields each record had changed by a batch of plain updates.
type UpdatedFields = HashMap<Uuid, BTreeSet<String>>;

/// What a batch of changes means for one partner: the items to send, and the rows its
/// delivery ledger must note first (computed under the policy with this fingerprint).
struct Outgoing {
    items: Vec<pb::SyncItem>,
    ledger: Vec<DeliveryNote>,
    policy: String,
    /// Every item is a new state of a record the partner holds live already and keeps:
    /// no first delivery, revoke, deletion or erasure (see `send_batch`: such a batch may
    /// leave before its bookkeeping commits).
    updates_only: bool,
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
    /// `updated`: None when who may see them may have changed, so the records around them
    /// are looked at again; else the fields each record had changed, and a record the
    /// partner holds whose changed fields it may not read is not sent at all (nothing it can
    /// see changed, and it is not told which record changed in what it cannot see).
    /// `preloaded`: records of `changed` read already (under the partner's stamp lock).
    async fn items_of(
        &self,
        p: &Principal,
        changed: Vec<Uuid>,
        preloaded: Vec<Record>,
        updated: Option<&UpdatedFields>,
    ) -> Result<Outgoing, NodeError> {
        let reach_changed = updated.is_none();
        let mut ids: Vec<Uuid> = Vec::new();
        let mut seen = BTreeSet::new();
        for id in changed {
            if seen.insert(id) {
                ids.push(id);
            }
        }
        // Records read on the way are kept: the batch reads each record once.
        let mut loaded: HashMap<Uuid, Record> = preloaded.into_iter().map(|r| (r.id, r)).collect();
        // What refers to which records, as found here, so that the reach does not ask again.
        let mut referrers = auth::Referrers::default();
        if reach_changed {
            // The records it refers to (shown with it as references) are looked at again.
            let unread: Vec<Uuid> = ids
                .iter()
                .filter(|id| !loaded.contains_key(id))
                .copied()
                .collect();
            let read = self.store.get_many(&unread).await?;
            loaded.extend(read.into_iter().map(|r| (r.id, r)));
            let mut targets = Vec::new();
            for id in &ids {
                if let Some(r) = loaded.get(id) {
                    targets.extend(verbund_core::access::reference_targets(r));
                }
            }
            for target in targets {
                if seen.insert(target) {
                    ids.push(target);
                }
            }
            // A record that moved, appeared, vanished or changed its sharing takes the
            // records hanging off it along (contacts of an account, activities of a case).
            let mut frontier: Vec<String> = ids.iter().map(Uuid::to_string).collect();
            for _ in 0..2 {
                let found = self.store.dependents_of(&frontier).await?;
                referrers
                    .of
                    .extend(frontier.iter().filter_map(|t| Uuid::parse_str(t).ok()));
                frontier = Vec::new();
                for r in found {
                    referrers.records.push(r.clone());
                    if seen.insert(r.id) {
                        ids.push(r.id);
                        frontier.push(r.id.to_string());
                        loaded.insert(r.id, r);
                    }
                }
                if frontier.is_empty() {
                    break;
                }
            }
        }
        let policy = self.policy();
        let missing: Vec<Uuid> = ids
            .iter()
            .filter(|id| !loaded.contains_key(id))
            .copied()
            .collect();
        let mut targets: Vec<Record> = self.store.get_many(&missing).await?;
        targets.extend(loaded.into_values());
        if !targets.iter().any(|r| r.owner_org == self.org) {
            // Only replicas of other owners (our apply of their streams): nothing to pass on.
            return Ok(Outgoing {
                items: Vec::new(),
                ledger: Vec::new(),
                policy: policy.fingerprint().to_string(),
                updates_only: false,
            });
        }
        // What the partner holds is read with its reach.
        let (reached, delivered) = self
            .reach_around_known(&p.org, &targets, &referrers, &ids)
            .await?;
        let records: HashMap<Uuid, Record> = targets.into_iter().map(|r| (r.id, r)).collect();
        let delivered: HashMap<Uuid, verbund_store::Delivery> =
            delivered.into_iter().map(|d| (d.record_id, d)).collect();
        let mut items = Vec::new();
        let mut ledger = Vec::new();
        let mut updates_only = true;
        let mut access_of = auth::AccessMemo::new(&policy, &self.org, p, &reached);
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
                updates_only = false;
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
            let access = access_of.access(rec);
            let unseen_update = held == Some(DeliveryState::Live)
                && updated
                    .and_then(|u| u.get(&id))
                    .is_some_and(|fields| fields.iter().all(|f| !access.readable.contains(f)));
            if access.visible() && unseen_update {
                continue;
            }
            if access.visible() {
                updates_only &= held == Some(DeliveryState::Live);
                // The projection goes out as it is built: no copy of the record first.
                let readable = &access.readable;
                let digest = merge::record_digest_of(
                    rec.versions
                        .iter()
                        .filter(|(name, _)| readable.contains(*name)),
                    false,
                );
                items.push(pb::SyncItem {
                    item: Some(pb::sync_item::Item::Upsert(projected_state_to_pb(
                        rec,
                        readable,
                        &access.writable,
                    ))),
                });
                note(DeliveryState::Live, Some(digest));
            } else if held == Some(DeliveryState::Live) {
                updates_only = false;
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
            updates_only: updates_only && !items.is_empty(),
            items,
            ledger,
            policy,
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
        // Not our change sequence number: the bound of the stamps the partner may hold of us.
        // One it holds beyond it comes from a history we lost (restored from a backup).
        let last_seq = self
            .state
            .stamp_lock(&p.org)
            .await
            .map_err(Status::from)?
            .reserved();
        Ok(Response::new(pb::HelloResponse {
            protocol_version: merge::PROTOCOL_VERSION,
            org: self.state.org.clone(),
            capabilities: CAPABILITIES.iter().map(|c| c.to_string()).collect(),
            last_seq,
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
mod push;
mod stamps;
mod stream;

use stamps::stamp_items;
