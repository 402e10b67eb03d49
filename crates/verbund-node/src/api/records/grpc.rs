//! The gRPC services of the client API, all backed by one `NodeState`: thin handlers that take
//! the principal and call the record operations.

use super::reads::*;
use super::*;

macro_rules! record_service {
    ($trait:path, $msg:ty, $create:ident, $create_req:ty, $create_field:ident, $get:ident, $update:ident, $update_req:ty, $update_field:ident, $delete:ident,
     $list:ident, $list_req:ty, $list_resp:ty, $items:ident, |$lr:ident| $filter:expr) => {
        #[tonic::async_trait]
        impl $trait for Api {
            async fn $create(&self, req: Request<$create_req>) -> Result<Response<$msg>, Status> {
                let p = auth::principal(&req)?;
                Ok(Response::new(
                    self.state
                        .create(&p, req.into_inner().$create_field)
                        .await?,
                ))
            }
            async fn $get(
                &self,
                req: Request<pb::GetRecordRequest>,
            ) -> Result<Response<$msg>, Status> {
                let p = auth::principal(&req)?;
                Ok(Response::new(
                    self.state.get::<$msg>(&p, &req.get_ref().id).await?,
                ))
            }
            async fn $update(&self, req: Request<$update_req>) -> Result<Response<$msg>, Status> {
                let p = auth::principal(&req)?;
                let r = req.into_inner();
                Ok(Response::new(
                    self.state
                        .update(&p, &r.id, r.$update_field, r.update_mask)
                        .await?,
                ))
            }
            async fn $delete(
                &self,
                req: Request<pb::DeleteRecordRequest>,
            ) -> Result<Response<pb::DeleteRecordResponse>, Status> {
                let p = auth::principal(&req)?;
                Ok(Response::new(
                    self.state
                        .delete(&p, <$msg as RecordMessage>::KIND, &req.get_ref().id)
                        .await?,
                ))
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
        Ok(Response::new(
            self.state.search(&p, req.into_inner()).await?,
        ))
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
