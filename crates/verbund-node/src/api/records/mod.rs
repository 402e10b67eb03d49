//! The client API. Handlers are thin: they take the principal and run the generic record
//! operations below, which ask the enforcement point (`auth`) what the caller may see and do,
//! plan writes with `verbund_core::write`, commit them with the store, and return only the
//! fields the caller may read.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use futures::Stream;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};
use uuid::Uuid;
use verbund_core::write::{plan_create, plan_delete, plan_update, search_needles};
use verbund_core::{DomainError, Record, RecordKind};
use verbund_proto::v1 as pb;
use verbund_store::{ListQuery, SearchQuery, StoreError};

use verbund_core::access::{project, project_for_other_org};

use crate::api::Api;
use crate::auth;
use crate::convert::parse_id;
use crate::convert::{self, RecordMessage, invalid};
use crate::error::NodeError;
use crate::identity::Principal;
use crate::state::{NodeState, now_ms};

pub const DEFAULT_PAGE_SIZE: i64 = 50;
pub const MAX_PAGE_SIZE: i64 = 500;

fn not_found(kind: RecordKind, id: &str) -> Status {
    Status::not_found(format!("{kind} {id} not found"))
}

impl NodeState {
    /// Records a denial of `p` and returns PERMISSION_DENIED with `message`.
    async fn forbid(
        &self,
        p: &Principal,
        action: &str,
        kind: RecordKind,
        record_id: Option<String>,
        fields: Vec<String>,
        message: String,
    ) -> NodeError {
        let draft = Self::audit_draft(
            p,
            action,
            Some(kind),
            record_id,
            fields,
            "deny",
            message.clone(),
        );
        self.deny(draft, Status::permission_denied(message))
            .await
            .into()
    }

    pub async fn create<M: RecordMessage>(
        &self,
        p: &Principal,
        msg: Option<M>,
    ) -> Result<M, NodeError> {
        let kind = M::KIND;
        let msg = msg.ok_or_else(|| invalid(kind.as_str(), "is required"))?;
        let fields = msg.to_fields()?;
        let given: Vec<String> = fields.keys().cloned().collect();
        let policy = self.policy();
        let mut audit = Vec::new();
        let assigned = fields.get("assigned_org").and_then(|v| v.as_text()) == Some(&p.org);
        if let Err(why) = auth::may_create(&policy, &self.org, p, kind, &given, assigned) {
            return Err(self.forbid(p, "create", kind, None, given, why.0).await);
        }
        if !self.is_own(p) {
            // A partner adds activities to records shared with it; nothing else is created
            // on another organization's node.
            let related = fields
                .get("related_id")
                .and_then(|v| v.as_text())
                .ok_or_else(|| invalid("related_id", "is required"))?;
            let related_id = parse_id("related_id", related)?;
            let reached = self.reach_of(&p.org).await?;
            let target = reached.records.get(&related_id);
            let access = match target {
                Some(rec) => auth::reached_access(&policy, &self.org, p, rec, &reached),
                None => auth::RecordAccess::default(),
            };
            let target_kind = target.map_or(RecordKind::Activity, |r| r.kind);
            if !access.visible() {
                // Exactly what a missing record produces.
                let draft = Self::audit_draft(
                    p,
                    "create",
                    Some(kind),
                    Some(related_id.to_string()),
                    given,
                    "deny",
                    "related record not shared",
                );
                return Err(self
                    .deny(draft, invalid("related_id", format!("no account or contact or lead or opportunity or service_case with id {related_id}")))
                    .await.into());
            }
            if let Err(why) = auth::may_add_activity(p, target_kind, &access) {
                return Err(self
                    .forbid(
                        p,
                        "create",
                        kind,
                        Some(related_id.to_string()),
                        given,
                        why.0,
                    )
                    .await);
            }
            audit.push(Self::audit_draft(
                p,
                "create",
                Some(kind),
                None,
                given,
                "allow",
                auth::reason_of(&access),
            ));
        }
        let (clock, org) = (self.clock.clone(), self.org.clone());
        let rec = self
            .store
            .create_audited(
                move || {
                    let hlc = Self::stamp(&clock, None);
                    plan_create(kind, Uuid::now_v7(), &org, fields, hlc, now_ms())
                },
                audit,
            )
            .await?;
        tracing::debug!(kind = %kind, id = %rec.id, principal = %p, "created");
        let access = self.access_to(p, &rec).await?;
        Ok(M::from_record(&self.shown(p, &rec, &access.readable)))
    }

    /// A live record of `kind` that `p` may see, with its access; NOT_FOUND for a foreign
    /// caller whether the record is missing or not shared (audited either way).
    pub async fn read_visible(
        &self,
        p: &Principal,
        kind: RecordKind,
        id: &str,
        action: &str,
    ) -> Result<(Record, auth::RecordAccess), NodeError> {
        let uuid = parse_id("id", id)?;
        let found = self
            .store
            .get(uuid)
            .await?
            .filter(|r| r.kind == kind && !r.is_deleted());
        if self.is_own(p) {
            let rec = found.ok_or_else(|| not_found(kind, id))?;
            let access = self.access_to(p, &rec).await?;
            if let Err(why) = auth::may_read(p, &self.org, &rec, &access) {
                return Err(self
                    .forbid(p, action, kind, Some(uuid.to_string()), Vec::new(), why.0)
                    .await);
            }
            return Ok((rec, access));
        }
        let access = match &found {
            Some(rec) => self.access_to(p, rec).await?,
            None => auth::RecordAccess::default(),
        };
        match found {
            Some(rec) if access.visible() => Ok((rec, access)),
            _ => {
                let draft = Self::audit_draft(
                    p,
                    action,
                    Some(kind),
                    Some(uuid.to_string()),
                    Vec::new(),
                    "deny",
                    "not shared with the organization, or no such record",
                );
                Err(self.deny(draft, not_found(kind, id)).await.into())
            }
        }
    }

    pub async fn get<M: RecordMessage>(&self, p: &Principal, id: &str) -> Result<M, NodeError> {
        let (rec, access) = self.read_visible(p, M::KIND, id, "read").await?;
        if !self.is_own(p) {
            let fields = access.readable.iter().cloned().collect();
            self.audit(vec![Self::audit_draft(
                p,
                "read",
                Some(M::KIND),
                Some(rec.id.to_string()),
                fields,
                "allow",
                auth::reason_of(&access),
            )])
            .await?;
        }
        Ok(M::from_record(&self.shown(p, &rec, &access.readable)))
    }

    pub async fn update<M: RecordMessage>(
        &self,
        p: &Principal,
        id: &str,
        msg: Option<M>,
        mask: Option<prost_types::FieldMask>,
    ) -> Result<M, NodeError> {
        let kind = M::KIND;
        let field = kind.as_str();
        let msg = msg.ok_or_else(|| invalid(field, "is required"))?;
        let meta_id = msg.meta().map(|m| m.id.as_str()).unwrap_or("");
        let id = match (id.is_empty(), meta_id.is_empty()) {
            (false, false) if id != meta_id => {
                return Err(invalid("id", format!("differs from {field}.meta.id")).into());
            }
            (true, false) => meta_id,
            _ => id,
        };
        let uuid = parse_id("id", id)?;
        let mask =
            mask.ok_or_else(|| invalid("update_mask", "is required; name the fields to change"))?;
        // Canonical field names from here on: authorization, audit and the planner all see the
        // same names (a path with stray spaces must not slip past the write check).
        let mask = prost_types::FieldMask {
            paths: verbund_core::write::check_mask(kind, &mask.paths)?
                .into_iter()
                .map(str::to_string)
                .collect(),
        };
        let patch = msg.to_fields()?;
        let (found, access) = self.read_visible(p, kind, id, "update").await?;
        if let Err(why) = auth::may_write(p, &self.org, &found, &access, &mask.paths) {
            return Err(self
                .forbid(
                    p,
                    "update",
                    kind,
                    Some(uuid.to_string()),
                    mask.paths.clone(),
                    why.0,
                )
                .await);
        }
        if found.owner_org != self.org {
            return self
                .update_replica(p, &found, mask.paths, patch, &access)
                .await;
        }
        let mut audit = Vec::new();
        if !self.is_own(p) {
            audit.push(Self::audit_draft(
                p,
                "update",
                Some(kind),
                Some(uuid.to_string()),
                mask.paths.clone(),
                "allow",
                auth::reason_of(&access),
            ));
        }
        // Checked again on the record as the writer sees it: a concurrent reassignment (or
        // another change of the condition) wins over a write that was allowed a moment ago.
        let (clock, policy, node_org, who, grants) = (
            self.clock.clone(),
            self.policy(),
            self.org.clone(),
            p.clone(),
            access.grants.clone(),
        );
        let rec = self
            .store
            .update_audited(
                kind,
                uuid,
                move |cur| {
                    let now = auth::record_access(&policy, &node_org, &who, cur, &grants);
                    if !now.visible()
                        || auth::may_write(&who, &node_org, cur, &now, &mask.paths).is_err()
                    {
                        return Err(DomainError::NotFound {
                            kind,
                            id: cur.id.to_string(),
                        });
                    }
                    let hlc = Self::stamp(&clock, cur.versions.values().max());
                    plan_update(cur, &mask.paths, patch, hlc, now_ms())
                },
                audit,
            )
            .await
            .map_err(|e| match e {
                StoreError::Domain(DomainError::NotFound { .. }) => not_found(kind, id).into(),
                e => NodeError::from(e),
            })?;
        // The same grants still apply: a partner cannot write the fields that decide its reach,
        // and the own organization's access does not depend on grants. No second reach.
        let after = auth::record_access(&self.policy(), &self.org, p, &rec, &access.grants);
        Ok(M::from_record(&self.shown(p, &rec, &after.readable)))
    }

    /// A local edit of another organization's record we hold a replica of: shown at once,
    /// queued in the outbox and proposed to the owner, whose verdict decides.
    async fn update_replica<M: RecordMessage>(
        &self,
        p: &Principal,
        rec: &Record,
        mask: Vec<String>,
        patch: verbund_core::FieldMap,
        access: &auth::RecordAccess,
    ) -> Result<M, NodeError> {
        let kind = rec.kind;
        if let Some(f) = mask
            .iter()
            .find(|f| verbund_core::access::controls_access(f))
        {
            return Err(Status::permission_denied(format!(
                "{f}: only the owner {} writes this field of its {kind} records",
                rec.owner_org
            ))
            .into());
        }
        // The owner told us which fields we may propose: refuse the others up front (the owner
        // checks again, so a list that is out of date is corrected by its verdict).
        let writable = match self.store.replica_info(rec.id).await? {
            Some(info) if info.state == verbund_store::CopyState::Live => info.writable,
            _ => {
                return Err(Status::not_found(format!(
                    "{kind} {} is no longer shared with us",
                    rec.id
                ))
                .into());
            }
        };
        if let Some(f) = mask.iter().find(|f| !writable.contains(f)) {
            return Err(Status::permission_denied(format!(
                "{f}: {} does not let {} write this field of its {kind} records",
                rec.owner_org, self.org
            ))
            .into());
        }
        let key = Uuid::now_v7().to_string();
        let clock = self.clock.clone();
        let id = rec.id;
        let updated = self
            .store
            .edit_replica(kind, id, &key, move |cur| {
                let hlc = Self::stamp(&clock, cur.versions.values().max());
                plan_update(cur, &mask, patch, hlc, now_ms())
            })
            .await
            .map_err(|e| match e {
                StoreError::Domain(DomainError::NotFound { .. }) => {
                    Status::not_found(format!("{kind} {id} is no longer shared with us")).into()
                }
                e => NodeError::from(e),
            })?;
        self.links.outbox_changed();
        tracing::debug!(principal = %p, record = %id, key, "replica edited; queued for its owner");
        Ok(M::from_record(&project(&updated, &access.readable)))
    }

    pub async fn delete(
        &self,
        p: &Principal,
        kind: RecordKind,
        id: &str,
    ) -> Result<pb::DeleteRecordResponse, NodeError> {
        let uuid = parse_id("id", id)?;
        if let Some(rec) = self.store.get(uuid).await?
            && rec.owner_org != self.org
            && self.is_own(p)
        {
            {
                return Err(Status::failed_precondition(format!(
                    "{kind} {uuid} belongs to {}; only its owner deletes it",
                    rec.owner_org
                ))
                .into());
            }
        }
        if let Err(why) = auth::may_delete(&self.policy(), &self.org, p, kind) {
            return Err(self
                .forbid(p, "delete", kind, Some(uuid.to_string()), Vec::new(), why.0)
                .await);
        }
        let clock = self.clock.clone();
        let rec = self
            .store
            .delete(kind, uuid, move |cur| {
                let hlc = Self::stamp(&clock, cur.versions.values().max());
                plan_delete(cur, hlc, now_ms())
            })
            .await
            .map_err(|e| match e {
                StoreError::Domain(DomainError::NotFound { .. }) => not_found(kind, id).into(),
                e => NodeError::from(e),
            })?;
        Ok(pb::DeleteRecordResponse {
            meta: Some(convert::meta_of(&rec)),
        })
    }
}

mod grpc;
mod reads;
pub use reads::{ListFilter, page_size};
pub(crate) use reads::{decode_token, encode_token, fingerprint};
