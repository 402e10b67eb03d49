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

use std::collections::BTreeSet;

use verbund_core::access::project;
use verbund_policy::Act;

use crate::auth;
use crate::convert::parse_id;
use crate::convert::{self, RecordMessage, invalid};
use crate::error::{domain_status, store_status};
use crate::identity::Principal;
use crate::state::{NodeState, now_ms};

pub const DEFAULT_PAGE_SIZE: i64 = 50;
pub const MAX_PAGE_SIZE: i64 = 500;
const WATCH_BATCH: i64 = 256;
/// Fallback poll for changes committed by another process sharing the database.
const WATCH_POLL: Duration = Duration::from_secs(1);

fn not_found(kind: RecordKind, id: &str) -> Status {
    Status::not_found(format!("{kind} {id} not found"))
}

/// Page tokens are opaque to clients: base64 of the last id and a fingerprint of the filters,
/// so a token cannot be reused with different filters.
fn encode_token(after_id: &str, filter_fingerprint: u64) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .encode(format!("{after_id}|{filter_fingerprint:016x}"))
}

fn decode_token(token: &str, filter_fingerprint: u64) -> Result<Option<String>, Status> {
    if token.is_empty() {
        return Ok(None);
    }
    let bad = || {
        invalid(
            "page_token",
            "is not a token from a previous response with the same filters",
        )
    };
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(token)
        .map_err(|_| bad())?;
    let text = String::from_utf8(raw).map_err(|_| bad())?;
    let (id, fp) = text.split_once('|').ok_or_else(bad)?;
    if u64::from_str_radix(fp, 16).ok() != Some(filter_fingerprint) {
        return Err(bad());
    }
    Uuid::parse_str(id).map_err(|_| bad())?;
    Ok(Some(id.to_string()))
}

/// Queries fetch `limit + 1` rows: an extra row means there is a next page, which starts after
/// the last row returned.
/// Cuts a page fetched with one item more than `limit` and gives the next page's token
/// (empty on the last page).
fn next_page<T>(
    items: &mut Vec<T>,
    limit: i64,
    filter_fingerprint: u64,
    record: impl Fn(&T) -> &Record,
) -> String {
    if items.len() as i64 <= limit {
        return String::new();
    }
    items.truncate(limit as usize);
    items
        .last()
        .map(|t| encode_token(&record(t).id.to_string(), filter_fingerprint))
        .unwrap_or_default()
}

/// One page of what a foreign caller reaches: in id order after `after_id`, the records
/// `keep` accepts, at most `limit`, and the next page's token.
fn foreign_page(
    reached: Vec<(Record, auth::RecordAccess)>,
    after_id: Option<&str>,
    limit: i64,
    filter_fingerprint: u64,
    keep: impl Fn(&Record) -> bool,
) -> (Vec<(Record, auth::RecordAccess)>, String) {
    let mut page: Vec<(Record, auth::RecordAccess)> = reached
        .into_iter()
        .filter(|(r, _)| after_id.is_none_or(|a| r.id.to_string().as_str() > a))
        .filter(|(r, _)| keep(r))
        .take(limit as usize + 1)
        .collect();
    let next = next_page(&mut page, limit, filter_fingerprint, |(r, _)| r);
    (page, next)
}

/// FNV-1a: stable across processes and releases (unlike std's hasher).
fn fingerprint(text: &str) -> u64 {
    text.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

pub fn page_size(requested: i32) -> Result<i64, Status> {
    match requested {
        n if n < 0 => Err(invalid("page_size", "must not be negative")),
        0 => Ok(DEFAULT_PAGE_SIZE),
        n => Ok(i64::from(n).min(MAX_PAGE_SIZE)),
    }
}

/// The filters of a List call apart from paging.
#[derive(Default, Debug)]
pub struct ListFilter {
    pub account_id: Option<String>,
    pub related_id: Option<String>,
    pub stage: Option<String>,
    pub status: Option<String>,
    pub priority: Option<String>,
    pub assigned_org: Option<String>,
    pub channel: Option<String>,
}

impl ListFilter {
    /// The record fields the set filters look at.
    pub fn fields(&self) -> Vec<&'static str> {
        [
            ("account_id", self.account_id.is_some()),
            ("related_id", self.related_id.is_some()),
            ("stage", self.stage.is_some()),
            ("status", self.status.is_some()),
            ("priority", self.priority.is_some()),
            ("assigned_org", self.assigned_org.is_some()),
            ("channel", self.channel.is_some()),
        ]
        .into_iter()
        .filter_map(|(f, set)| set.then_some(f))
        .collect()
    }

    /// Whether a projected record passes the filters. A field the caller may not read is
    /// absent from the projection, so filtering on it matches nothing and reveals nothing.
    /// An activity's account filter matches activities directly on that account.
    pub fn matches(&self, rec: &Record) -> bool {
        let account_field = if rec.kind == RecordKind::Activity {
            "related_id"
        } else {
            "account_id"
        };
        [
            (account_field, &self.account_id),
            ("related_id", &self.related_id),
            ("stage", &self.stage),
            ("status", &self.status),
            ("priority", &self.priority),
            ("assigned_org", &self.assigned_org),
            ("channel", &self.channel),
        ]
        .into_iter()
        .all(|(field, wanted)| wanted.as_deref().is_none_or(|w| rec.text(field) == Some(w)))
    }
}

fn opt_id(field: &str, v: &str) -> Result<Option<String>, Status> {
    if v.is_empty() {
        Ok(None)
    } else {
        parse_id(field, v).map(|u| Some(u.to_string()))
    }
}

fn opt_org(field: &str, v: &str) -> Result<Option<String>, Status> {
    if v.is_empty() {
        return Ok(None);
    }
    if !verbund_core::schema::is_valid_org_id(v) {
        return Err(invalid(
            field,
            format!("{v:?} is not a valid organization id"),
        ));
    }
    Ok(Some(v.to_string()))
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
    ) -> Status {
        let draft = Self::audit_draft(
            p,
            action,
            Some(kind),
            record_id,
            fields,
            "deny",
            message.clone(),
        );
        self.deny(draft, Status::permission_denied(message)).await
    }

    /// The first name in `fields` that is not in `allowed` (unknown names are never allowed:
    /// callers pass canonical field names, see `check_mask`).
    fn first_forbidden<'a>(
        fields: impl IntoIterator<Item = &'a String>,
        allowed: &BTreeSet<String>,
    ) -> Option<String> {
        fields.into_iter().find(|f| !allowed.contains(*f)).cloned()
    }

    pub async fn create<M: RecordMessage>(
        &self,
        p: &Principal,
        msg: Option<M>,
    ) -> Result<M, Status> {
        let kind = M::KIND;
        let msg = msg.ok_or_else(|| invalid(kind.as_str(), "is required"))?;
        let fields = msg.to_fields()?;
        let given: Vec<String> = fields.keys().cloned().collect();
        let policy = self.policy();
        let s = auth::subject(p);
        let mut audit = Vec::new();
        if self.is_own(p) {
            if policy.fields(&s, kind, Act::Create, false).is_empty() {
                let msg = format!("{p} may not create {kind} records");
                return Err(self.forbid(p, "create", kind, None, given, msg).await);
            }
            let assigned = fields.get("assigned_org").and_then(|v| v.as_text()) == Some(&p.org);
            let writable = policy.fields(&s, kind, Act::Write, assigned);
            if let Some(f) = Self::first_forbidden(&given, &writable) {
                let msg = format!("{f}: {p} may not write this field of {kind}");
                return Err(self.forbid(p, "create", kind, None, given, msg).await);
            }
        } else {
            // A partner adds activities to records shared with it; nothing else is created
            // on another organization's node.
            if kind != RecordKind::Activity
                || policy.fields(&s, kind, Act::Create, false).is_empty()
            {
                let msg = format!("{p} may not create {kind} records on this node");
                return Err(self.forbid(p, "create", kind, None, given, msg).await);
            }
            let writable = policy.fields(&s, kind, Act::Write, false);
            if let Some(f) = given.iter().find(|f| {
                f.as_str() != "related_id"
                    && (!writable.contains(*f) || verbund_core::access::controls_access(f))
            }) {
                let msg = format!("{f}: {p} may not write this field of {kind}");
                return Err(self
                    .forbid(p, "create", kind, None, given.clone(), msg)
                    .await);
            }
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
                    .await);
            }
            if !access.may_add_activity {
                let msg = format!("{p} may not add activities to this record");
                return Err(self
                    .forbid(p, "create", kind, Some(related_id.to_string()), given, msg)
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
            .await
            .map_err(store_status)?;
        tracing::debug!(kind = %kind, id = %rec.id, principal = %p, "created");
        let access = self.access_to(p, &rec).await?;
        Ok(M::from_record(&project(&rec, &access.readable)))
    }

    /// A live record of `kind` that `p` may see, with its access; NOT_FOUND for a foreign
    /// caller whether the record is missing or not shared (audited either way).
    pub async fn read_visible(
        &self,
        p: &Principal,
        kind: RecordKind,
        id: &str,
        action: &str,
    ) -> Result<(Record, auth::RecordAccess), Status> {
        let uuid = parse_id("id", id)?;
        let found = self
            .store
            .get(uuid)
            .await
            .map_err(store_status)?
            .filter(|r| r.kind == kind && !r.is_deleted());
        if self.is_own(p) {
            let rec = found.ok_or_else(|| not_found(kind, id))?;
            let access = self.access_to(p, &rec).await?;
            if !access.visible() {
                let msg = format!("{p} may not read {kind} records");
                return Err(self
                    .forbid(p, action, kind, Some(uuid.to_string()), Vec::new(), msg)
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
                Err(self.deny(draft, not_found(kind, id)).await)
            }
        }
    }

    pub async fn get<M: RecordMessage>(&self, p: &Principal, id: &str) -> Result<M, Status> {
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
        Ok(M::from_record(&project(&rec, &access.readable)))
    }

    pub async fn update<M: RecordMessage>(
        &self,
        p: &Principal,
        id: &str,
        msg: Option<M>,
        mask: Option<prost_types::FieldMask>,
    ) -> Result<M, Status> {
        let kind = M::KIND;
        let field = kind.as_str();
        let msg = msg.ok_or_else(|| invalid(field, "is required"))?;
        let meta_id = msg.meta().map(|m| m.id.as_str()).unwrap_or("");
        let id = match (id.is_empty(), meta_id.is_empty()) {
            (false, false) if id != meta_id => {
                return Err(invalid("id", format!("differs from {field}.meta.id")));
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
            paths: verbund_core::write::check_mask(kind, &mask.paths)
                .map_err(domain_status)?
                .into_iter()
                .map(str::to_string)
                .collect(),
        };
        let patch = msg.to_fields()?;
        let (found, access) = self.read_visible(p, kind, id, "update").await?;
        if let Some(f) = Self::first_forbidden(&mask.paths, &access.writable) {
            let msg = format!("{f}: {p} may not write this field of {kind}");
            return Err(self
                .forbid(
                    p,
                    "update",
                    kind,
                    Some(uuid.to_string()),
                    mask.paths.clone(),
                    msg,
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
                    if !now.visible() || Self::first_forbidden(&mask.paths, &now.writable).is_some()
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
                StoreError::Domain(DomainError::NotFound { .. }) => not_found(kind, id),
                e => store_status(e),
            })?;
        // The same grants still apply: a partner cannot write the fields that decide its reach,
        // and the own organization's access does not depend on grants. No second reach.
        let after = auth::record_access(&self.policy(), &self.org, p, &rec, &access.grants);
        Ok(M::from_record(&project(&rec, &after.readable)))
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
    ) -> Result<M, Status> {
        let kind = rec.kind;
        if let Some(f) = mask
            .iter()
            .find(|f| verbund_core::access::controls_access(f))
        {
            return Err(Status::permission_denied(format!(
                "{f}: only the owner {} writes this field of its {kind} records",
                rec.owner_org
            )));
        }
        // The owner told us which fields we may propose: refuse the others up front (the owner
        // checks again, so a list that is out of date is corrected by its verdict).
        let writable = match self
            .store
            .replica_info(rec.id)
            .await
            .map_err(store_status)?
        {
            Some((_, state, writable)) if state == "live" => writable,
            _ => {
                return Err(Status::not_found(format!(
                    "{kind} {} is no longer shared with us",
                    rec.id
                )));
            }
        };
        if let Some(f) = mask.iter().find(|f| !writable.contains(f)) {
            return Err(Status::permission_denied(format!(
                "{f}: {} does not let {} write this field of its {kind} records",
                rec.owner_org, self.org
            )));
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
                    Status::not_found(format!("{kind} {id} is no longer shared with us"))
                }
                e => store_status(e),
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
    ) -> Result<pb::DeleteRecordResponse, Status> {
        let uuid = parse_id("id", id)?;
        if let Some(rec) = self.store.get(uuid).await.map_err(store_status)?
            && rec.owner_org != self.org
            && self.is_own(p)
        {
            {
                return Err(Status::failed_precondition(format!(
                    "{kind} {uuid} belongs to {}; only its owner deletes it",
                    rec.owner_org
                )));
            }
        }
        let policy = self.policy();
        if !self.is_own(p)
            || policy
                .fields(&auth::subject(p), kind, Act::Delete, false)
                .is_empty()
        {
            let msg = format!("{p} may not delete {kind} records on this node");
            return Err(self
                .forbid(p, "delete", kind, Some(uuid.to_string()), Vec::new(), msg)
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
                StoreError::Domain(DomainError::NotFound { .. }) => not_found(kind, id),
                e => store_status(e),
            })?;
        Ok(pb::DeleteRecordResponse {
            meta: Some(convert::meta_of(&rec)),
        })
    }

    /// Audits what a foreign caller was shown by a List, Search or Watch.
    async fn audit_shown(
        &self,
        p: &Principal,
        action: &str,
        shown: &[(Record, auth::RecordAccess)],
    ) -> Result<(), Status> {
        if self.is_own(p) || shown.is_empty() {
            return Ok(());
        }
        let drafts = shown
            .iter()
            .map(|(r, a)| {
                Self::audit_draft(
                    p,
                    action,
                    Some(r.kind),
                    Some(r.id.to_string()),
                    a.readable.iter().cloned().collect(),
                    "allow",
                    auth::reason_of(a),
                )
            })
            .collect();
        self.audit(drafts).await
    }

    /// The records among `candidates` that an own-organization principal may see, projected.
    fn own_visible(
        &self,
        p: &Principal,
        candidates: Vec<Record>,
    ) -> Vec<(Record, auth::RecordAccess)> {
        let policy = self.policy();
        let mut out = Vec::with_capacity(candidates.len());
        for rec in candidates {
            let access = auth::record_access(&policy, &self.org, p, &rec, &[]);
            if access.visible() {
                out.push((project(&rec, &access.readable), access));
            }
        }
        out
    }

    /// Everything a foreign caller reaches, projected, in id order.
    async fn foreign_visible(
        &self,
        p: &Principal,
    ) -> Result<(Vec<(Record, auth::RecordAccess)>, auth::Reached), Status> {
        let policy = self.policy();
        let reached = self.reach_of(&p.org).await?;
        let mut out = Vec::new();
        for rec in reached.records.values() {
            let access = auth::reached_access(&policy, &self.org, p, rec, &reached);
            if access.visible() {
                out.push((project(rec, &access.readable), access));
            }
        }
        out.sort_by_key(|(r, _)| r.id);
        Ok((out, reached))
    }

    pub async fn list<M: RecordMessage>(
        &self,
        p: &Principal,
        options: Option<pb::ListOptions>,
        filter: ListFilter,
    ) -> Result<(Vec<M>, String), Status> {
        let kind = M::KIND;
        let options = options.unwrap_or_default();
        let limit = page_size(options.page_size)?;
        let updated_since_ms = options
            .updated_since
            .as_ref()
            .map(|t| convert::timestamp_to_ms("options.updated_since", t))
            .transpose()?;
        let fp = fingerprint(&format!(
            "{}|{filter:?}|{updated_since_ms:?}|{}",
            kind, options.show_deleted
        ));
        let after_id = decode_token(&options.page_token, fp)?;
        if self.is_own(p) {
            let policy = self.policy();
            let s = auth::subject(p);
            let readable = policy.fields(&s, kind, Act::Read, false);
            if readable.is_empty() && policy.fields(&s, kind, Act::Read, true).is_empty() {
                let msg = format!("{p} may not read {kind} records");
                return Err(self.forbid(p, "list", kind, None, Vec::new(), msg).await);
            }
            // Filtering on a field one may not read would reveal its values.
            if let Some(f) = filter.fields().into_iter().find(|f| {
                !(readable.contains(*f) || kind == RecordKind::Activity && *f == "account_id")
            }) {
                let msg = format!("{f}: {p} may not filter on this field of {kind}");
                return Err(self
                    .forbid(p, "list", kind, None, vec![f.to_string()], msg)
                    .await);
            }
            let q = ListQuery {
                kind: Some(kind),
                account_id: filter.account_id,
                related_id: filter.related_id,
                stage: filter.stage,
                status: filter.status,
                priority: filter.priority,
                assigned_org: filter.assigned_org,
                channel: filter.channel,
                updated_since_ms,
                show_deleted: options.show_deleted,
                after_id,
                limit: limit + 1,
            };
            let mut records = self.store.list(&q).await.map_err(store_status)?;
            let next = next_page(&mut records, limit, fp, |r| r);
            let shown = self.own_visible(p, records);
            return Ok((shown.iter().map(|(r, _)| M::from_record(r)).collect(), next));
        }
        let (all, _) = self.foreign_visible(p).await?;
        let (page, next) = foreign_page(all, after_id.as_deref(), limit, fp, |r| {
            r.kind == kind
                && updated_since_ms.is_none_or(|t| r.updated_at_ms >= t)
                && filter.matches(r)
        });
        self.audit_shown(p, "list", &page).await?;
        Ok((page.iter().map(|(r, _)| M::from_record(r)).collect(), next))
    }

    pub async fn search(
        &self,
        p: &Principal,
        req: pb::SearchRequest,
    ) -> Result<pb::SearchResponse, Status> {
        let needles = search_needles(&req.query).map_err(domain_status)?;
        let limit = page_size(req.page_size)?;
        let mut kinds = req
            .kinds
            .iter()
            .map(|k| convert::kind_from_pb("kinds", *k))
            .collect::<Result<Vec<_>, _>>()?;
        kinds.sort();
        kinds.dedup();
        let fp = fingerprint(&format!("{needles:?}|{kinds:?}"));
        let after_id = decode_token(&req.page_token, fp)?;
        // Only what the caller may read can match: the search text of the projection.
        let hit = |r: &Record| {
            let text = verbund_core::write::search_text(r.kind, &r.fields);
            needles.iter().any(|n| text.contains(n.as_str()))
        };
        if self.is_own(p) {
            let q = SearchQuery {
                needles: needles.clone(),
                kinds,
                after_id,
                limit: limit + 1,
            };
            let mut records = self.store.search(&q).await.map_err(store_status)?;
            let next_page_token = next_page(&mut records, limit, fp, |r| r);
            let shown = self.own_visible(p, records);
            return Ok(pb::SearchResponse {
                results: shown
                    .iter()
                    .filter(|(r, _)| hit(r))
                    .map(|(r, _)| convert::any_record(r))
                    .collect(),
                next_page_token,
            });
        }
        let (all, _) = self.foreign_visible(p).await?;
        let (page, next_page_token) = foreign_page(all, after_id.as_deref(), limit, fp, |r| {
            (kinds.is_empty() || kinds.contains(&r.kind)) && hit(r)
        });
        self.audit_shown(p, "search", &page).await?;
        Ok(pb::SearchResponse {
            results: page.iter().map(|(r, _)| convert::any_record(r)).collect(),
            next_page_token,
        })
    }

    /// The events of a batch of changes that `p` may see, projected.
    async fn visible_events(
        &self,
        p: &Principal,
        batch: &[verbund_core::Change],
    ) -> Result<Vec<pb::ChangeEvent>, Status> {
        let ids: Vec<Uuid> = batch.iter().map(|c| c.record_id).collect();
        let policy = self.policy();
        // Own organization: the records themselves; foreign: what it reaches.
        let reached = if self.is_own(p) {
            let recs = self.store.get_many(&ids).await.map_err(store_status)?;
            auth::Reached {
                grants: Default::default(),
                records: recs.into_iter().map(|r| (r.id, r)).collect(),
            }
        } else {
            self.reach_of(&p.org).await?
        };
        let mut shown = Vec::new();
        let mut events = Vec::new();
        for c in batch {
            if c.op == verbund_core::ChangeOp::Access {
                continue; // sharing bookkeeping, not a change of the record
            }
            let Some(rec) = reached.records.get(&c.record_id) else {
                continue;
            };
            let access = auth::reached_access(&policy, &self.org, p, rec, &reached);
            if !access.visible() {
                continue;
            }
            let changed: Vec<String> = c
                .fields
                .keys()
                .filter(|f| access.readable.contains(*f))
                .cloned()
                .collect();
            if changed.is_empty() && c.op == verbund_core::ChangeOp::Update {
                continue;
            }
            let projected = project(rec, &access.readable);
            events.push(pb::ChangeEvent {
                seq: c.seq,
                kind: convert::kind_to_pb(c.kind) as i32,
                record_id: c.record_id.to_string(),
                op: match c.op {
                    verbund_core::ChangeOp::Create => pb::ChangeOp::Create,
                    verbund_core::ChangeOp::Update => pb::ChangeOp::Update,
                    verbund_core::ChangeOp::Delete | verbund_core::ChangeOp::Access => {
                        pb::ChangeOp::Delete
                    }
                } as i32,
                changed_fields: changed,
                version: Some(convert::hlc_to_pb(&c.hlc)),
                change_time: Some(convert::ms_to_timestamp(c.at_ms)),
                record: Some(convert::any_record(&projected)),
            });
            shown.push((projected, access));
        }
        self.audit_shown(p, "watch", &shown).await?;
        Ok(events)
    }

    /// Streams change events after `after_seq` in order, then follows new commits. Each
    /// batch is checked against the shares and policy in force when it is sent.
    pub fn watch(
        self: &Arc<Self>,
        p: &Principal,
        req: pb::WatchRequest,
    ) -> Result<ReceiverStream<Result<pb::ChangeEvent, Status>>, Status> {
        if req.after_seq < 0 {
            return Err(invalid("after_seq", "must not be negative"));
        }
        let kinds = req
            .kinds
            .iter()
            .map(|k| convert::kind_from_pb("kinds", *k))
            .collect::<Result<Vec<_>, _>>()?;
        let last = *self.store.subscribe_commits().borrow();
        if self.is_own(p) && req.after_seq > last {
            // E.g. a cursor from before a restore from backup: skipping ahead would hide changes.
            return Err(Status::out_of_range(format!(
                "after_seq {} is beyond the last change {last} of this node",
                req.after_seq
            )));
        }
        // Bounded: a slow client holds back its own stream, never the node.
        let (tx, rx) = mpsc::channel(128);
        let state = self.clone();
        let principal = p.clone();
        let mut cursor = req.after_seq;
        let mut stopping = state.stopping.subscribe();
        let deadline = tokio::time::Instant::now() + self.watch_max_age;
        tokio::spawn(async move {
            let mut notify = state.store.subscribe_commits();
            loop {
                if *stopping.borrow() || tokio::time::Instant::now() >= deadline {
                    return;
                }
                let batch = match state.store.changes_after(cursor, &kinds, WATCH_BATCH).await {
                    Ok(b) => b,
                    Err(e) => {
                        let _ = tx.send(Err(store_status(e))).await;
                        return;
                    }
                };
                let Some(batch_end) = batch.last().map(|c| c.seq) else {
                    tokio::select! {
                        _ = notify.changed() => {}
                        _ = tokio::time::sleep(WATCH_POLL) => {}
                        _ = tx.closed() => return,
                        _ = stopping.changed() => return,
                        _ = tokio::time::sleep_until(deadline) => return,
                    }
                    continue;
                };
                let events = match state.visible_events(&principal, &batch).await {
                    Ok(ev) => ev,
                    Err(status) => {
                        let _ = tx.send(Err(status)).await;
                        return;
                    }
                };
                for ev in events {
                    if tx.send(Ok(ev)).await.is_err() {
                        return;
                    }
                }
                cursor = batch_end;
            }
        });
        Ok(ReceiverStream::new(rx))
    }
}

/// The gRPC services, all backed by one `NodeState`.
#[derive(Clone)]
pub struct Api {
    pub state: Arc<NodeState>,
}

macro_rules! record_service {
    ($trait:path, $msg:ty, $create:ident, $create_req:ty, $create_field:ident, $get:ident, $update:ident, $update_req:ty, $update_field:ident, $delete:ident,
     $list:ident, $list_req:ty, $list_resp:ty, $items:ident, |$lr:ident| $filter:expr) => {
        #[tonic::async_trait]
        impl $trait for Api {
            async fn $create(&self, req: Request<$create_req>) -> Result<Response<$msg>, Status> {
                let p = auth::principal(&req)?;
                self.state
                    .create(&p, req.into_inner().$create_field)
                    .await
                    .map(Response::new)
            }
            async fn $get(
                &self,
                req: Request<pb::GetRecordRequest>,
            ) -> Result<Response<$msg>, Status> {
                let p = auth::principal(&req)?;
                self.state
                    .get::<$msg>(&p, &req.get_ref().id)
                    .await
                    .map(Response::new)
            }
            async fn $update(&self, req: Request<$update_req>) -> Result<Response<$msg>, Status> {
                let p = auth::principal(&req)?;
                let r = req.into_inner();
                self.state
                    .update(&p, &r.id, r.$update_field, r.update_mask)
                    .await
                    .map(Response::new)
            }
            async fn $delete(
                &self,
                req: Request<pb::DeleteRecordRequest>,
            ) -> Result<Response<pb::DeleteRecordResponse>, Status> {
                let p = auth::principal(&req)?;
                self.state
                    .delete(&p, <$msg as RecordMessage>::KIND, &req.get_ref().id)
                    .await
                    .map(Response::new)
            }
            async fn $list(&self, req: Request<$list_req>) -> Result<Response<$list_resp>, Status> {
                let p = auth::principal(&req)?;
                let $lr = req.into_inner();
                let filter: ListFilter = $filter;
                let (items, next_page_token) =
                    self.state.list::<$msg>(&p, $lr.options, filter).await?;
                Ok(Response::new(<$list_resp>::from_parts(
                    items,
                    next_page_token,
                )))
            }
        }
    };
}

/// Builds a List response from its items and next page token.
trait ListResponse<M> {
    fn from_parts(items: Vec<M>, next_page_token: String) -> Self;
}

macro_rules! list_response {
    ($resp:ty, $msg:ty, $items:ident) => {
        impl ListResponse<$msg> for $resp {
            fn from_parts($items: Vec<$msg>, next_page_token: String) -> Self {
                Self {
                    $items,
                    next_page_token,
                }
            }
        }
    };
}

list_response!(pb::ListAccountsResponse, pb::Account, accounts);
list_response!(pb::ListContactsResponse, pb::Contact, contacts);
list_response!(pb::ListLeadsResponse, pb::Lead, leads);
list_response!(
    pb::ListOpportunitiesResponse,
    pb::Opportunity,
    opportunities
);
list_response!(pb::ListServiceCasesResponse, pb::ServiceCase, service_cases);
list_response!(pb::ListActivitiesResponse, pb::Activity, activities);

record_service!(
    pb::account_service_server::AccountService,
    pb::Account,
    create_account,
    pb::CreateAccountRequest,
    account,
    get_account,
    update_account,
    pb::UpdateAccountRequest,
    account,
    delete_account,
    list_accounts,
    pb::ListAccountsRequest,
    pb::ListAccountsResponse,
    accounts,
    |_r| ListFilter::default()
);

record_service!(
    pb::contact_service_server::ContactService,
    pb::Contact,
    create_contact,
    pb::CreateContactRequest,
    contact,
    get_contact,
    update_contact,
    pb::UpdateContactRequest,
    contact,
    delete_contact,
    list_contacts,
    pb::ListContactsRequest,
    pb::ListContactsResponse,
    contacts,
    |r| ListFilter {
        account_id: opt_id("account_id", &r.account_id)?,
        ..Default::default()
    }
);

record_service!(
    pb::lead_service_server::LeadService,
    pb::Lead,
    create_lead,
    pb::CreateLeadRequest,
    lead,
    get_lead,
    update_lead,
    pb::UpdateLeadRequest,
    lead,
    delete_lead,
    list_leads,
    pb::ListLeadsRequest,
    pb::ListLeadsResponse,
    leads,
    |r| ListFilter {
        status: convert::lead_status_filter(r.status)?,
        ..Default::default()
    }
);

record_service!(
    pb::opportunity_service_server::OpportunityService,
    pb::Opportunity,
    create_opportunity,
    pb::CreateOpportunityRequest,
    opportunity,
    get_opportunity,
    update_opportunity,
    pb::UpdateOpportunityRequest,
    opportunity,
    delete_opportunity,
    list_opportunities,
    pb::ListOpportunitiesRequest,
    pb::ListOpportunitiesResponse,
    opportunities,
    |r| ListFilter {
        account_id: opt_id("account_id", &r.account_id)?,
        stage: convert::stage_filter(r.stage)?,
        ..Default::default()
    }
);

record_service!(
    pb::service_case_service_server::ServiceCaseService,
    pb::ServiceCase,
    create_service_case,
    pb::CreateServiceCaseRequest,
    service_case,
    get_service_case,
    update_service_case,
    pb::UpdateServiceCaseRequest,
    service_case,
    delete_service_case,
    list_service_cases,
    pb::ListServiceCasesRequest,
    pb::ListServiceCasesResponse,
    service_cases,
    |r| ListFilter {
        account_id: opt_id("account_id", &r.account_id)?,
        status: convert::case_status_filter(r.status)?,
        priority: convert::priority_filter(r.priority)?,
        assigned_org: opt_org("assigned_org", &r.assigned_org)?,
        ..Default::default()
    }
);

record_service!(
    pb::activity_service_server::ActivityService,
    pb::Activity,
    create_activity,
    pb::CreateActivityRequest,
    activity,
    get_activity,
    update_activity,
    pb::UpdateActivityRequest,
    activity,
    delete_activity,
    list_activities,
    pb::ListActivitiesRequest,
    pb::ListActivitiesResponse,
    activities,
    |r| ListFilter {
        account_id: opt_id("account_id", &r.account_id)?,
        related_id: opt_id("related_id", &r.related_id)?,
        channel: convert::channel_filter(r.channel)?,
        ..Default::default()
    }
);

#[tonic::async_trait]
impl pb::search_service_server::SearchService for Api {
    async fn search(
        &self,
        req: Request<pb::SearchRequest>,
    ) -> Result<Response<pb::SearchResponse>, Status> {
        let p = auth::principal(&req)?;
        self.state
            .search(&p, req.into_inner())
            .await
            .map(Response::new)
    }
}

type EventStream = Pin<Box<dyn Stream<Item = Result<pb::ChangeEvent, Status>> + Send>>;

#[tonic::async_trait]
impl pb::change_service_server::ChangeService for Api {
    type WatchStream = EventStream;
    async fn watch(&self, req: Request<pb::WatchRequest>) -> Result<Response<EventStream>, Status> {
        let p = auth::principal(&req)?;
        let stream = self.state.watch(&p, req.into_inner())?;
        Ok(Response::new(Box::pin(stream)))
    }
}

#[tonic::async_trait]
impl pb::node_service_server::NodeService for Api {
    async fn get_revocation_list(
        &self,
        req: Request<pb::GetRevocationListRequest>,
    ) -> Result<Response<pb::GetRevocationListResponse>, Status> {
        // Public to every verified caller: a CRL is signed, published material.
        auth::principal(&req)?;
        let crl_pem = match tokio::fs::read_to_string(&self.state.crl_path).await {
            Ok(pem) => pem,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(e) => {
                tracing::error!(error = %e, "cannot read the revocation list");
                return Err(Status::unavailable(
                    "the revocation list cannot be read right now",
                ));
            }
        };
        Ok(Response::new(pb::GetRevocationListResponse { crl_pem }))
    }

    async fn who_am_i(
        &self,
        req: Request<pb::WhoAmIRequest>,
    ) -> Result<Response<pb::WhoAmIResponse>, Status> {
        let p = auth::principal(&req)?;
        Ok(Response::new(pb::WhoAmIResponse {
            org: p.org.clone(),
            kind: p.kind.as_str().to_string(),
            name: p.name.clone(),
            node_org: self.state.org.clone(),
            node_name: self.state.node_name.clone(),
            // Our change rate is none of another organization's business.
            last_seq: if self.state.is_own(&p) {
                *self.state.store.subscribe_commits().borrow()
            } else {
                0
            },
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_tokens_are_bound_to_filters() {
        let id = Uuid::now_v7().to_string();
        let t = encode_token(&id, 7);
        assert_eq!(decode_token(&t, 7).unwrap(), Some(id));
        assert_eq!(
            decode_token(&t, 8).unwrap_err().code(),
            tonic::Code::InvalidArgument
        );
        assert!(decode_token("!!!", 7).is_err());
        assert_eq!(decode_token("", 7).unwrap(), None);
    }

    #[test]
    fn page_size_is_clamped() {
        assert_eq!(page_size(0).unwrap(), DEFAULT_PAGE_SIZE);
        assert_eq!(page_size(10_000).unwrap(), MAX_PAGE_SIZE);
        assert!(page_size(-1).is_err());
    }
}
