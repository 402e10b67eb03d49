//! The client API. Handlers are thin: they take the principal, ask `auth::authorize`, then run
//! the generic record operations below, which plan the write with `verbund_core::write` and
//! commit it with the store.

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use futures::Stream;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};
use uuid::Uuid;
use verbund_core::write::{plan_create, plan_delete, plan_update, search_needles};
use verbund_core::{DomainError, Hlc, HlcClock, Record, RecordKind};
use verbund_proto::v1 as pb;
use verbund_store::{ListQuery, SearchQuery, Store, StoreError};

use crate::auth::{self, Action, Scope};
use crate::convert::{self, RecordMessage, invalid};
use crate::identity::Principal;

pub const DEFAULT_PAGE_SIZE: i64 = 50;
pub const MAX_PAGE_SIZE: i64 = 500;
const WATCH_BATCH: i64 = 256;
/// Fallback poll for changes committed by another process sharing the database.
const WATCH_POLL: Duration = Duration::from_secs(1);

/// Everything the handlers share.
pub struct NodeState {
    pub store: Store,
    pub org: String,
    pub node_name: String,
    /// Ticked inside the store's writer (see `stamp`), so versions follow commit order.
    clock: Arc<Mutex<HlcClock>>,
    /// Set when the node shuts down: open Watch streams end so connections can drain.
    stopping: watch::Sender<bool>,
    /// Trust anchors of the TLS listener; partner changes apply to the next handshake.
    pub trust: Arc<crate::tls::FederationVerifier>,
    /// The listener's certificate (renewals apply to the next handshake).
    pub certificate: std::sync::OnceLock<Arc<crate::tls::NodeCertificate>>,
    /// A Watch stream ends after this long (the maximum connection age), so a long stream
    /// cannot keep a connection, and its caller's access, past that age; clients resume from
    /// their last sequence number.
    watch_max_age: Duration,
    /// This node's certificate and key (PEM), presented when it dials partners.
    pub node_identity: Mutex<(String, String)>,
    /// Where this organization's revocation list lives (served to partners).
    pub crl_path: std::path::PathBuf,
}

pub(crate) fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

pub fn store_status(e: StoreError) -> Status {
    match e {
        StoreError::Domain(d) => domain_status(d),
        StoreError::CommitFailed(_) | StoreError::WriterStopped => {
            tracing::error!(error = %e, "write not stored");
            Status::unavailable("the write was not stored; it is safe to retry")
        }
        StoreError::AlreadyExists(what) => Status::already_exists(format!("{what} exists already")),
        StoreError::NotFound(what) => Status::not_found(format!("{what} not found")),
        StoreError::OutcomeUnknown(_) => {
            tracing::error!(error = %e, "write outcome unknown");
            Status::unknown(
                "the database failed while committing; the write may or may not be stored",
            )
        }
        other => {
            tracing::error!(error = %other, "store failure");
            Status::internal("the node could not complete the request; see its log")
        }
    }
}

pub fn domain_status(e: DomainError) -> Status {
    match e {
        DomainError::Invalid { .. } => Status::invalid_argument(e.to_string()),
        DomainError::FailedPrecondition { .. } => Status::failed_precondition(e.to_string()),
        DomainError::NotFound { .. } | DomainError::Absent(_) => Status::not_found(e.to_string()),
        DomainError::AlreadyExists(_) => Status::already_exists(e.to_string()),
    }
}

fn parse_id(field: &str, id: &str) -> Result<Uuid, Status> {
    if id.trim().is_empty() {
        return Err(invalid(field, "is required"));
    }
    Uuid::parse_str(id.trim())
        .map_err(|_| invalid(field, format!("{id:?} is not a record id (UUID)")))
}

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
fn next_page(records: &mut Vec<Record>, limit: i64, filter_fingerprint: u64) -> String {
    if records.len() as i64 <= limit {
        return String::new();
    }
    records.truncate(limit as usize);
    records
        .last()
        .map(|r| encode_token(&r.id.to_string(), filter_fingerprint))
        .unwrap_or_default()
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

/// What a node is, beyond its store and trust anchors (from `node.toml`).
pub struct NodeSettings {
    pub org: String,
    pub node_name: String,
    pub max_clock_skew_ms: u64,
    /// The maximum connection age; Watch streams end after it.
    pub watch_max_age: Duration,
    /// This node's certificate and key (PEM), presented when dialing partners.
    pub node_identity: (String, String),
    /// This organization's revocation list file.
    pub crl_path: std::path::PathBuf,
}

impl NodeState {
    pub async fn new(
        store: Store,
        settings: NodeSettings,
        trust: Arc<crate::tls::FederationVerifier>,
    ) -> Result<Arc<NodeState>, StoreError> {
        let NodeSettings {
            org,
            node_name,
            max_clock_skew_ms,
            watch_max_age,
            node_identity,
            crl_path,
        } = settings;
        let mut clock = HlcClock::new(format!("{org}/{node_name}"), max_clock_skew_ms);
        // Never hand out a version below one we already wrote, even if the wall clock went back.
        if let Some(last) = store.last_hlc().await? {
            clock.restore(&last);
        }
        let (stopping, _) = watch::channel(false);
        Ok(Arc::new(NodeState {
            store,
            org,
            node_name,
            clock: Arc::new(Mutex::new(clock)),
            stopping,
            trust,
            certificate: std::sync::OnceLock::new(),
            watch_max_age,
            node_identity: Mutex::new(node_identity),
            crl_path,
        }))
    }

    /// Ends every open Watch stream (called at shutdown).
    pub fn begin_shutdown(&self) {
        self.stopping.send_replace(true);
    }

    /// A new version for a local write, greater than `floor` (the newest version the record
    /// holds) and than anything this node stamped before. Called by the planning closures,
    /// which the store's single writer runs in commit order, so versions never go backwards.
    fn stamp(clock: &Mutex<HlcClock>, floor: Option<&Hlc>) -> Hlc {
        let mut clock = clock
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        clock.tick_after(floor, now_ms().max(0) as u64)
    }

    pub async fn create<M: RecordMessage>(
        &self,
        p: &Principal,
        msg: Option<M>,
    ) -> Result<M, Status> {
        auth::authorize(p, &self.org, Action::Create, Some(M::KIND))?;
        let field = M::KIND.as_str();
        let msg = msg.ok_or_else(|| invalid(field, "is required"))?;
        let fields = msg.to_fields()?;
        let (clock, org) = (self.clock.clone(), self.org.clone());
        let rec = self
            .store
            .create_with(move || {
                let hlc = Self::stamp(&clock, None);
                plan_create(M::KIND, Uuid::now_v7(), &org, fields, hlc, now_ms())
            })
            .await
            .map_err(store_status)?;
        tracing::debug!(kind = %M::KIND, id = %rec.id, principal = %p, "created");
        Ok(M::from_record(&rec))
    }

    /// A live record of `kind` the principal may read, or NOT_FOUND.
    pub async fn read(&self, p: &Principal, kind: RecordKind, id: &str) -> Result<Record, Status> {
        let uuid = parse_id("id", id)?;
        match auth::authorize(p, &self.org, Action::Read, Some(kind))? {
            Scope::All => {}
            Scope::Nothing => return Err(not_found(kind, id)),
        }
        match self.store.get(uuid).await.map_err(store_status)? {
            Some(r) if r.kind == kind && !r.is_deleted() => Ok(r),
            _ => Err(not_found(kind, id)),
        }
    }

    pub async fn get<M: RecordMessage>(&self, p: &Principal, id: &str) -> Result<M, Status> {
        Ok(M::from_record(&self.read(p, M::KIND, id).await?))
    }

    pub async fn update<M: RecordMessage>(
        &self,
        p: &Principal,
        id: &str,
        msg: Option<M>,
        mask: Option<prost_types::FieldMask>,
    ) -> Result<M, Status> {
        auth::authorize(p, &self.org, Action::Update, Some(M::KIND))?;
        let field = M::KIND.as_str();
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
        let patch = msg.to_fields()?;
        let clock = self.clock.clone();
        let rec = self
            .store
            .update(M::KIND, uuid, move |cur| {
                let hlc = Self::stamp(&clock, cur.versions.values().max());
                plan_update(cur, &mask.paths, patch, hlc, now_ms())
            })
            .await
            .map_err(|e| match e {
                StoreError::Domain(DomainError::NotFound { .. }) => not_found(M::KIND, id),
                e => store_status(e),
            })?;
        Ok(M::from_record(&rec))
    }

    pub async fn delete(
        &self,
        p: &Principal,
        kind: RecordKind,
        id: &str,
    ) -> Result<pb::DeleteRecordResponse, Status> {
        auth::authorize(p, &self.org, Action::Delete, Some(kind))?;
        let uuid = parse_id("id", id)?;
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

    pub async fn list<M: RecordMessage>(
        &self,
        p: &Principal,
        options: Option<pb::ListOptions>,
        filter: ListFilter,
    ) -> Result<(Vec<M>, String), Status> {
        let options = options.unwrap_or_default();
        let limit = page_size(options.page_size)?;
        let updated_since_ms = options
            .updated_since
            .as_ref()
            .map(|t| convert::timestamp_to_ms("options.updated_since", t))
            .transpose()?;
        let fp = fingerprint(&format!(
            "{}|{filter:?}|{updated_since_ms:?}|{}",
            M::KIND,
            options.show_deleted
        ));
        let after_id = decode_token(&options.page_token, fp)?;
        if auth::authorize(p, &self.org, Action::Enumerate, Some(M::KIND))? == Scope::Nothing {
            return Ok((Vec::new(), String::new()));
        }
        let q = ListQuery {
            kind: Some(M::KIND),
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
        let next = next_page(&mut records, limit, fp);
        Ok((records.iter().map(M::from_record).collect(), next))
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
        if auth::authorize(p, &self.org, Action::Enumerate, None)? == Scope::Nothing {
            return Ok(pb::SearchResponse::default());
        }
        let q = SearchQuery {
            needles,
            kinds,
            after_id,
            limit: limit + 1,
        };
        let mut records = self.store.search(&q).await.map_err(store_status)?;
        let next_page_token = next_page(&mut records, limit, fp);
        Ok(pb::SearchResponse {
            results: records.iter().map(convert::any_record).collect(),
            next_page_token,
        })
    }

    /// Streams change events after `after_seq` in order, then follows new commits.
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
        let scope = auth::authorize(p, &self.org, Action::Enumerate, None)?;
        let last = *self.store.subscribe_commits().borrow();
        if scope == Scope::All && req.after_seq > last {
            // E.g. a cursor from before a restore from backup: skipping ahead would hide changes.
            return Err(Status::out_of_range(format!(
                "after_seq {} is beyond the last change {last} of this node",
                req.after_seq
            )));
        }
        // Bounded: a slow client holds back its own stream, never the node.
        let (tx, rx) = mpsc::channel(128);
        let state = self.clone();
        let mut cursor = req.after_seq;
        let mut stopping = state.stopping.subscribe();
        let deadline = tokio::time::Instant::now() + self.watch_max_age;
        tokio::spawn(async move {
            if scope == Scope::Nothing {
                // A caller who may see nothing gets an open stream that never yields.
                tokio::select! {
                    _ = tx.closed() => {}
                    _ = stopping.wait_for(|s| *s) => {}
                    _ = tokio::time::sleep_until(deadline) => {}
                }
                return;
            }
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
                if batch.is_empty() {
                    tokio::select! {
                        _ = notify.changed() => {}
                        _ = tokio::time::sleep(WATCH_POLL) => {}
                        _ = tx.closed() => return,
                        _ = stopping.changed() => return,
                        _ = tokio::time::sleep_until(deadline) => return,
                    }
                    continue;
                }
                let ids: Vec<Uuid> = batch.iter().map(|c| c.record_id).collect();
                let records = match state.store.get_many(&ids).await {
                    Ok(r) => r,
                    Err(e) => {
                        let _ = tx.send(Err(store_status(e))).await;
                        return;
                    }
                };
                let by_id: std::collections::HashMap<Uuid, &Record> =
                    records.iter().map(|r| (r.id, r)).collect();
                for c in &batch {
                    let ev = pb::ChangeEvent {
                        seq: c.seq,
                        kind: convert::kind_to_pb(c.kind) as i32,
                        record_id: c.record_id.to_string(),
                        op: match c.op {
                            verbund_core::ChangeOp::Create => pb::ChangeOp::Create,
                            verbund_core::ChangeOp::Update => pb::ChangeOp::Update,
                            verbund_core::ChangeOp::Delete => pb::ChangeOp::Delete,
                        } as i32,
                        changed_fields: c.fields.keys().cloned().collect(),
                        version: Some(pb::Hlc {
                            physical_ms: c.hlc.physical_ms,
                            counter: c.hlc.counter,
                            node_id: c.hlc.node.clone(),
                        }),
                        change_time: Some(convert::ms_to_timestamp(c.at_ms)),
                        record: by_id.get(&c.record_id).map(|r| convert::any_record(r)),
                    };
                    if tx.send(Ok(ev)).await.is_err() {
                        return;
                    }
                    cursor = c.seq;
                }
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
