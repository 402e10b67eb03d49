//! What the nodes show: records and field versions read over gRPC (bounded by a timeout),
//! and the conflict and outbox rows the CLI reports.

use super::*;

// ------------------------------------------------------------------ gRPC reads

pub type Versions = BTreeMap<String, Hlc>;

/// A record as one caller sees it.
#[derive(Clone, Debug, PartialEq)]
pub struct Seen {
    pub owner: String,
    pub fields: FieldMap,
    pub versions: Versions,
}

pub fn seen<M: RecordMessage>(m: &M) -> (String, Seen) {
    let meta = m.meta().cloned().unwrap_or_default();
    let versions = meta
        .field_versions
        .iter()
        .map(|(k, h)| {
            (
                k.clone(),
                Hlc::new(h.physical_ms, h.counter, h.node_id.clone()),
            )
        })
        .collect();
    (
        meta.id.clone(),
        Seen {
            owner: meta.owner_org.clone(),
            fields: m.to_fields().expect("a record the node sent converts"),
            versions,
        },
    )
}

pub fn status_text(s: tonic::Status) -> String {
    format!("{:?}: {}", s.code(), s.message())
}

pub async fn timed<T>(
    what: &str,
    f: impl std::future::Future<Output = Result<T, tonic::Status>>,
) -> Result<T, tonic::Status> {
    match tokio::time::timeout(RPC_TIMEOUT, f).await {
        Ok(r) => r,
        Err(_) => Err(tonic::Status::deadline_exceeded(format!(
            "{what}: no answer in {RPC_TIMEOUT:?}"
        ))),
    }
}

/// The record as the caller of `ch` sees it; None when it is not found (or not visible).
pub async fn get_record(ch: &Channel, kind: Kind, id: &str) -> Result<Option<Seen>, String> {
    let req = pb::GetRecordRequest { id: id.into() };
    let r = match kind {
        Kind::Account => timed(
            "get",
            pb::account_service_client::AccountServiceClient::new(ch.clone()).get_account(req),
        )
        .await
        .map(|r| seen(&r.into_inner()).1),
        Kind::Contact => timed(
            "get",
            pb::contact_service_client::ContactServiceClient::new(ch.clone()).get_contact(req),
        )
        .await
        .map(|r| seen(&r.into_inner()).1),
        Kind::Opportunity => timed(
            "get",
            pb::opportunity_service_client::OpportunityServiceClient::new(ch.clone())
                .get_opportunity(req),
        )
        .await
        .map(|r| seen(&r.into_inner()).1),
        Kind::Case => timed(
            "get",
            pb::service_case_service_client::ServiceCaseServiceClient::new(ch.clone())
                .get_service_case(req),
        )
        .await
        .map(|r| seen(&r.into_inner()).1),
    };
    match r {
        Ok(s) => Ok(Some(s)),
        Err(s) if s.code() == tonic::Code::NotFound => Ok(None),
        Err(s) => Err(status_text(s)),
    }
}

/// Every live record of `kind` the caller of `ch` sees (all pages).
pub async fn list_records(ch: &Channel, kind: Kind) -> Result<Vec<(String, Seen)>, String> {
    let mut out = Vec::new();
    let mut token = String::new();
    loop {
        let options = Some(pb::ListOptions {
            page_size: 500,
            page_token: token.clone(),
            ..Default::default()
        });
        let (page, next) = match kind {
            Kind::Account => {
                let r = timed(
                    "list",
                    pb::account_service_client::AccountServiceClient::new(ch.clone())
                        .list_accounts(pb::ListAccountsRequest { options }),
                )
                .await
                .map_err(status_text)?
                .into_inner();
                (
                    r.accounts.iter().map(seen).collect::<Vec<_>>(),
                    r.next_page_token,
                )
            }
            Kind::Contact => {
                let r = timed(
                    "list",
                    pb::contact_service_client::ContactServiceClient::new(ch.clone())
                        .list_contacts(pb::ListContactsRequest {
                            options,
                            ..Default::default()
                        }),
                )
                .await
                .map_err(status_text)?
                .into_inner();
                (r.contacts.iter().map(seen).collect(), r.next_page_token)
            }
            Kind::Opportunity => {
                let r = timed(
                    "list",
                    pb::opportunity_service_client::OpportunityServiceClient::new(ch.clone())
                        .list_opportunities(pb::ListOpportunitiesRequest {
                            options,
                            ..Default::default()
                        }),
                )
                .await
                .map_err(status_text)?
                .into_inner();
                (
                    r.opportunities.iter().map(seen).collect(),
                    r.next_page_token,
                )
            }
            Kind::Case => {
                let r = timed(
                    "list",
                    pb::service_case_service_client::ServiceCaseServiceClient::new(ch.clone())
                        .list_service_cases(pb::ListServiceCasesRequest {
                            options,
                            ..Default::default()
                        }),
                )
                .await
                .map_err(status_text)?
                .into_inner();
                (
                    r.service_cases.iter().map(seen).collect(),
                    r.next_page_token,
                )
            }
        };
        out.extend(page);
        if next.is_empty() {
            return Ok(out);
        }
        token = next;
    }
}

/// Every live record the caller of `ch` sees, by id.
/// Records by id, as one caller sees them.
pub type Listing = BTreeMap<String, (Kind, Seen)>;

pub async fn list_all(ch: &Channel) -> Result<Listing, String> {
    let mut all = BTreeMap::new();
    for kind in Kind::ALL {
        for (id, s) in list_records(ch, kind).await? {
            all.insert(id, (kind, s));
        }
    }
    Ok(all)
}

// ------------------------------------------------------------------ what the CLI reports

pub struct ConflictRow {
    pub record: String,
    pub field: String,
    pub winner: Option<Value>,
    pub loser: Option<Value>,
    pub loser_origin: String,
    /// When the losing edit was stamped (the physical part of its version), to tell apart
    /// two edits that set the same value.
    pub loser_ms: Option<i64>,
}

pub struct OutboxRow {
    pub record: String,
    pub fields: Vec<String>,
    pub state: String,
    pub last_error: String,
    pub created_ms: i64,
}

pub fn value_of(j: &Json) -> Option<Value> {
    if j.is_null() {
        None
    } else {
        Some(serde_json::from_value(j.clone()).unwrap_or_else(|e| panic!("{e}: {j}")))
    }
}

/// A field version lower than one the same node showed before.
pub struct Decrease {
    pub node: usize,
    pub kind: Kind,
    pub record: String,
    pub field: String,
    pub before: Hlc,
    pub before_op: usize,
    pub after: Hlc,
    pub after_op: usize,
}
