//! Admin RPCs of federation sync: sync state per partner, the outbox, conflicts (list and
//! resolve), and erasure (erase a person, and who has acknowledged it). Own administrators
//! only, like every admin RPC.

use std::collections::HashMap;

use tonic::Status;
use uuid::Uuid;
use verbund_core::write::{plan_erase, plan_update};
use verbund_core::{DomainError, Hlc, Value};
use verbund_store::{ConflictRecord, StoreError};

use crate::auth;
use crate::convert;
use crate::convert::parse_id as parse_uuid;
use crate::error::NodeError;
use crate::identity::Principal;
use crate::pb;
use crate::state::{NodeState, now_ms};
use crate::wire::hlc_to_pb;

/// The organization of the node that stamped a version (`<org>/<node>`).
fn origin(h: &Hlc) -> String {
    h.node.split('/').next().unwrap_or_default().to_string()
}

fn side(value: &Option<Value>, version: &Hlc) -> pb::ConflictSide {
    pb::ConflictSide {
        value_json: value
            .as_ref()
            .and_then(|v| serde_json::to_string(v).ok())
            .unwrap_or_default(),
        version: Some(hlc_to_pb(version)),
        origin_org: origin(version),
    }
}

fn conflict_to_pb(c: &ConflictRecord) -> pb::Conflict {
    pb::Conflict {
        id: c.id.to_string(),
        record_id: c.record_id.to_string(),
        kind: convert::kind_to_pb(c.kind) as i32,
        field: c.conflict.field.clone(),
        winner: Some(side(&c.conflict.winner.value, &c.conflict.winner.version)),
        loser: Some(side(&c.conflict.loser.value, &c.conflict.loser.version)),
        created_ms: c.created_ms,
        resolved_by: c.resolved_by.clone().unwrap_or_default(),
        resolved_ms: c.resolved_ms.unwrap_or(0),
        resolution: c.resolution.clone().unwrap_or_default(),
    }
}

impl NodeState {
    pub async fn sync_status(&self, p: &Principal) -> Result<pb::SyncStatusResponse, NodeError> {
        self.administer(p, "sync status").await?;
        let store = &self.store;
        let partners = store.list_partners().await?;
        let subs: HashMap<String, verbund_store::Subscription> = store
            .list_subscriptions()
            .await?
            .into_iter()
            .map(|s| (s.owner_org.clone(), s))
            .collect();
        let depths: HashMap<String, i64> = store.outbox_depths().await?.into_iter().collect();
        let replicas: HashMap<String, i64> = store.replica_counts().await?.into_iter().collect();
        let mut acks: HashMap<String, i64> = store
            .peer_acks()
            .await?
            .into_iter()
            .map(|a| (a.org, a.acked_cursor))
            .collect();
        acks.extend(self.links.acked());
        let quarantined: HashMap<String, i64> =
            store.quarantine_counts().await?.into_iter().collect();
        let mut quarantine_notes: HashMap<String, String> = HashMap::new();
        for q in store.list_quarantine(None, 1_000).await? {
            quarantine_notes
                .entry(q.owner_org.clone())
                .or_insert_with(|| format!("{}: {}", q.record_id, q.reason));
        }
        let partner_quarantine = self.links.partner_quarantine();
        let links = self.links.snapshot();
        let partners = partners
            .into_iter()
            .map(|partner| {
                let sub = subs.get(&partner.org).cloned().unwrap_or_default();
                let link = links.get(&partner.org).cloned().unwrap_or_default();
                let (last_error, last_error_ms) = if !link.last_error.is_empty() {
                    (link.last_error.clone(), link.last_error_ms)
                } else if !link.push_error.is_empty() || !link.repair_error.is_empty() {
                    // The session is up, but pushing or anti-entropy failed last time.
                    let both = [link.push_error.as_str(), link.repair_error.as_str()];
                    let msg = both
                        .iter()
                        .filter(|m| !m.is_empty())
                        .copied()
                        .collect::<Vec<_>>()
                        .join("; ");
                    (msg, link.last_error_ms)
                } else {
                    (
                        sub.last_error.clone().unwrap_or_default(),
                        sub.last_error_ms.unwrap_or(0),
                    )
                };
                pb::PartnerSyncState {
                    endpoint: partner.endpoint.clone(),
                    state: link.state.as_str().to_string(),
                    cursor: sub.cursor,
                    lag: (sub.owner_last_seq - sub.cursor).max(0),
                    outbox_depth: depths.get(&partner.org).copied().unwrap_or(0),
                    last_error,
                    last_error_ms,
                    last_batch_ms: sub.last_batch_ms.unwrap_or(0),
                    replicas: replicas.get(&partner.org).copied().unwrap_or(0),
                    partner_acked_cursor: acks.get(&partner.org).copied().unwrap_or(0),
                    quarantined: quarantined.get(&partner.org).copied().unwrap_or(0),
                    quarantine_note: quarantine_notes
                        .get(&partner.org)
                        .cloned()
                        .unwrap_or_default(),
                    partner_quarantined: partner_quarantine
                        .get(&partner.org)
                        .map(|q| q.0)
                        .unwrap_or(0),
                    partner_quarantine_note: partner_quarantine
                        .get(&partner.org)
                        .map(|q| q.1.clone())
                        .unwrap_or_default(),
                    history_note: sub.history_note.clone(),
                    snapshot_after: sub.snapshot_after.clone(),
                    org: partner.org,
                }
            })
            .collect();
        Ok(pb::SyncStatusResponse {
            partners,
            clock_note: self.links.clock_note(),
        })
    }

    pub async fn list_outbox(
        &self,
        p: &Principal,
        req: pb::ListOutboxRequest,
    ) -> Result<pb::ListOutboxResponse, NodeError> {
        self.administer(p, "list outbox").await?;
        let state =
            match req.state.as_str() {
                "" => None,
                s => Some(verbund_store::OutboxState::parse(s).ok_or_else(|| {
                    convert::invalid("state", "must be pending, rejected or empty")
                })?),
            };
        let entries = self
            .store
            .list_outbox(None, state, 1000)
            .await?
            .into_iter()
            .map(|e| pb::OutboxEntry {
                key: e.key,
                owner_org: e.owner_org,
                record_id: e.record_id.to_string(),
                kind: convert::kind_to_pb(e.kind) as i32,
                fields: e.edits.iter().map(|f| f.field.clone()).collect(),
                state: e.state.as_str().to_string(),
                attempts: e.attempts.clamp(0, i32::MAX as i64) as i32,
                last_error: e.last_error.unwrap_or_default(),
                created_ms: e.created_ms,
            })
            .collect();
        Ok(pb::ListOutboxResponse { entries })
    }

    pub async fn list_conflicts(
        &self,
        p: &Principal,
        req: pb::ListConflictsRequest,
    ) -> Result<pb::ListConflictsResponse, NodeError> {
        self.administer(p, "list conflicts").await?;
        let record = match req.record_id.as_str() {
            "" => None,
            s => Some(parse_uuid("record_id", s)?),
        };
        let conflicts = self
            .store
            .list_conflicts(record, req.include_resolved)
            .await?;
        Ok(pb::ListConflictsResponse {
            conflicts: conflicts.iter().map(conflict_to_pb).collect(),
        })
    }

    /// Resolves a conflict: keep the winner as it is, or write the losing value back (a new
    /// write by the resolver, which the policy must allow and which syncs like any other).
    pub async fn resolve_conflict(
        &self,
        p: &Principal,
        req: pb::ResolveConflictRequest,
    ) -> Result<pb::Conflict, NodeError> {
        self.administer(p, "resolve conflict").await?;
        let id = parse_uuid("id", &req.id)?;
        let c = self
            .store
            .get_conflict(id)
            .await?
            .ok_or_else(|| Status::not_found(format!("conflict {id} not found")))?;
        if c.resolved_ms.is_some() {
            return Err(Status::failed_precondition(format!(
                "conflict {id} was resolved already ({})",
                c.resolution.clone().unwrap_or_default()
            ))
            .into());
        }
        match req.keep.as_str() {
            "winner" => {}
            "loser" => {
                let rec = self
                    .store
                    .get(c.record_id)
                    .await?
                    .filter(|r| !r.is_deleted())
                    .ok_or_else(|| {
                        Status::not_found(format!("record {} not found", c.record_id))
                    })?;
                let field = c.conflict.field.clone();
                if let Err(why) = auth::may_resolve(&self.policy(), p, rec.kind, &field) {
                    return Err(Status::permission_denied(why.0).into());
                }
                let mut patch = verbund_core::FieldMap::new();
                if let Some(v) = c.conflict.loser.value.clone() {
                    patch.insert(field.clone(), v);
                }
                let mask = vec![field];
                let stamp = self.stamper();
                self.store
                    .update(rec.kind, rec.id, move |cur| {
                        plan_update(cur, &mask, patch, stamp(cur), now_ms())
                    })
                    .await?;
            }
            _ => return Err(convert::invalid("keep", "must be winner or loser").into()),
        }
        self.store
            .mark_conflict_resolved(id, &p.uri(), &req.keep, now_ms())
            .await?;
        let c = self
            .store
            .get_conflict(id)
            .await?
            .ok_or_else(|| Status::not_found(format!("conflict {id} not found")))?;
        Ok(conflict_to_pb(&c))
    }

    pub async fn erase_record(
        &self,
        p: &Principal,
        req: pb::EraseRecordRequest,
    ) -> Result<pb::ErasureStatusResponse, NodeError> {
        self.administer(p, "erase record").await?;
        let id = parse_uuid("id", &req.id)?;
        let rec = self
            .store
            .get(id)
            .await?
            .ok_or_else(|| Status::not_found(format!("record {id} not found")))?;
        if rec.owner_org != self.org {
            return Err(Status::failed_precondition(format!(
                "record {id} belongs to {}; erasure is done by its owner and reaches every copy",
                rec.owner_org
            ))
            .into());
        }
        let stamp = self.stamper();
        self.store
            .erase(rec.kind, id, &p.uri(), move |cur| {
                plan_erase(cur, stamp(cur), now_ms())
            })
            .await
            .map_err(|e| match e {
                StoreError::Domain(DomainError::NotFound { .. }) => {
                    Status::not_found(format!("record {id} not found")).into()
                }
                e => NodeError::from(e),
            })?;
        tracing::info!(record = %id, by = %p, "record erased; partners are told");
        self.scrub_after_erasure();
        self.erasure_report(id).await
    }

    /// After an erasure, the database files must not hold the person any more: erased
    /// content is zeroed as it is freed (SQLite `secure_delete`), and the write-ahead log,
    /// whose old pages may still hold it, is checkpointed and truncated; tried until no
    /// reader holds it back (a few seconds at most).
    pub fn scrub_after_erasure(&self) {
        let store = self.store.clone();
        tokio::spawn(async move {
            for _ in 0..50 {
                match store.scrub_erased().await {
                    Ok(true) => return,
                    Ok(false) => {}
                    Err(e) => {
                        tracing::warn!(error = %e, "could not scrub the log after an erasure")
                    }
                }
                tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            }
            tracing::warn!(
                "the write-ahead log stayed in use; it is scrubbed at the next erasure or checkpoint"
            );
        });
    }

    pub async fn erasure_status(
        &self,
        p: &Principal,
        req: pb::ErasureStatusRequest,
    ) -> Result<pb::ErasureStatusResponse, NodeError> {
        self.administer(p, "erasure status").await?;
        let id = parse_uuid("id", &req.id)?;
        self.erasure_report(id).await
    }

    async fn erasure_report(&self, id: Uuid) -> Result<pb::ErasureStatusResponse, NodeError> {
        let erasure = self
            .store
            .erasure(id)
            .await?
            .ok_or_else(|| Status::not_found(format!("record {id} was not erased")))?;
        let receivers = self
            .store
            .deliveries_of_record(id)
            .await?
            .into_iter()
            .map(|d| pb::ErasureReceipt {
                state: if d.erasure_acked_ms.is_some() {
                    "acknowledged".into()
                } else {
                    "pending".into()
                },
                acknowledged_ms: d.erasure_acked_ms.unwrap_or(0),
                org: d.org,
            })
            .collect();
        Ok(pb::ErasureStatusResponse {
            record_id: id.to_string(),
            kind: convert::kind_to_pb(erasure.kind) as i32,
            erased_ms: erasure.erased_ms,
            receivers,
        })
    }
}
