//! Helpers for the end-to-end tests of one node's client API: a client for every service,
//! one record of every kind linked the way a CRM user links them, and a snapshot of all a
//! user can see.

use prost_types::FieldMask;
use tonic::transport::Channel;
use verbund_node::pb;

pub fn s(v: &str) -> Option<String> {
    Some(v.to_string())
}

pub fn mask(paths: &[&str]) -> Option<FieldMask> {
    Some(FieldMask {
        paths: paths.iter().map(|p| p.to_string()).collect(),
    })
}

pub fn id<T: verbund_node::convert::RecordMessage>(m: &T) -> String {
    m.meta().unwrap().id.clone()
}

pub struct Clients {
    pub accounts: pb::account_service_client::AccountServiceClient<Channel>,
    pub contacts: pb::contact_service_client::ContactServiceClient<Channel>,
    pub leads: pb::lead_service_client::LeadServiceClient<Channel>,
    pub opps: pb::opportunity_service_client::OpportunityServiceClient<Channel>,
    pub cases: pb::service_case_service_client::ServiceCaseServiceClient<Channel>,
    pub activities: pb::activity_service_client::ActivityServiceClient<Channel>,
    pub search: pb::search_service_client::SearchServiceClient<Channel>,
    pub changes: pb::change_service_client::ChangeServiceClient<Channel>,
    pub node: pb::node_service_client::NodeServiceClient<Channel>,
}

pub fn clients(ch: Channel) -> Clients {
    Clients {
        accounts: pb::account_service_client::AccountServiceClient::new(ch.clone()),
        contacts: pb::contact_service_client::ContactServiceClient::new(ch.clone()),
        leads: pb::lead_service_client::LeadServiceClient::new(ch.clone()),
        opps: pb::opportunity_service_client::OpportunityServiceClient::new(ch.clone()),
        cases: pb::service_case_service_client::ServiceCaseServiceClient::new(ch.clone()),
        activities: pb::activity_service_client::ActivityServiceClient::new(ch.clone()),
        search: pb::search_service_client::SearchServiceClient::new(ch.clone()),
        changes: pb::change_service_client::ChangeServiceClient::new(ch.clone()),
        node: pb::node_service_client::NodeServiceClient::new(ch),
    }
}

pub async fn account(c: &mut Clients, name: &str) -> pb::Account {
    c.accounts
        .create_account(pb::CreateAccountRequest {
            account: Some(pb::Account {
                name: s(name),
                ..Default::default()
            }),
        })
        .await
        .unwrap()
        .into_inner()
}

/// One record of every kind, linked the way a CRM user links them.
pub struct Fixture {
    pub account: pb::Account,
    pub contact: pb::Contact,
    pub lead: pb::Lead,
    pub opp: pb::Opportunity,
    pub case: pb::ServiceCase,
    pub activity: pb::Activity,
}

pub async fn fixture(c: &mut Clients) -> Fixture {
    let account = c
        .accounts
        .create_account(pb::CreateAccountRequest {
            account: Some(pb::Account {
                name: s("Müller Maschinenbau GmbH"),
                domain: s("Mueller.Example"),
                phone: s("+49 711 555 0100"),
                tags: vec!["key".into()],
                annual_revenue: Some(pb::Money {
                    currency_code: "EUR".into(),
                    minor_units: 4_800_000_000,
                }),
                ..Default::default()
            }),
        })
        .await
        .unwrap()
        .into_inner();
    let contact = c
        .contacts
        .create_contact(pb::CreateContactRequest {
            contact: Some(pb::Contact {
                account_id: s(&id(&account)),
                first_name: s("Anna"),
                last_name: s("Weber"),
                email: s("anna@mueller.example"),
                ..Default::default()
            }),
        })
        .await
        .unwrap()
        .into_inner();
    let lead = c
        .leads
        .create_lead(pb::CreateLeadRequest {
            lead: Some(pb::Lead {
                company: s("Start-up GmbH"),
                email: s("info@startup.example"),
                ..Default::default()
            }),
        })
        .await
        .unwrap()
        .into_inner();
    let opp = c
        .opps
        .create_opportunity(pb::CreateOpportunityRequest {
            opportunity: Some(pb::Opportunity {
                account_id: s(&id(&account)),
                name: s("Press line retrofit"),
                stage: pb::OpportunityStage::Proposal as i32,
                amount: Some(pb::Money {
                    currency_code: "EUR".into(),
                    minor_units: 24_000_000,
                }),
                probability: Some(40),
                close_date: s("2027-03-31"),
                ..Default::default()
            }),
        })
        .await
        .unwrap()
        .into_inner();
    let case = c
        .cases
        .create_service_case(pb::CreateServiceCaseRequest {
            service_case: Some(pb::ServiceCase {
                account_id: s(&id(&account)),
                contact_id: s(&id(&contact)),
                subject: s("Pressure drops"),
                priority: pb::CasePriority::High as i32,
                assigned_org: s("servicepartner"),
                ..Default::default()
            }),
        })
        .await
        .unwrap()
        .into_inner();
    let activity = c
        .activities
        .create_activity(pb::CreateActivityRequest {
            activity: Some(pb::Activity {
                related_id: s(&id(&case)),
                channel: pb::ActivityChannel::Call as i32,
                subject: s("Customer called"),
                ..Default::default()
            }),
        })
        .await
        .unwrap()
        .into_inner();
    Fixture {
        account,
        contact,
        lead,
        opp,
        case,
        activity,
    }
}

/// Everything a user can see, to compare before and after a refused request.
pub async fn snapshot(c: &mut Clients) -> Vec<pb::AnyRecord> {
    use pb::any_record::Record as R;
    let wrap = |r: R| pb::AnyRecord { record: Some(r) };
    let mut out = Vec::new();
    let opts = || {
        Some(pb::ListOptions {
            page_size: 500,
            show_deleted: true,
            ..Default::default()
        })
    };
    out.extend(
        c.accounts
            .list_accounts(pb::ListAccountsRequest { options: opts() })
            .await
            .unwrap()
            .into_inner()
            .accounts
            .into_iter()
            .map(|m| wrap(R::Account(m))),
    );
    out.extend(
        c.contacts
            .list_contacts(pb::ListContactsRequest {
                options: opts(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
            .contacts
            .into_iter()
            .map(|m| wrap(R::Contact(m))),
    );
    out.extend(
        c.opps
            .list_opportunities(pb::ListOpportunitiesRequest {
                options: opts(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
            .opportunities
            .into_iter()
            .map(|m| wrap(R::Opportunity(m))),
    );
    out.extend(
        c.cases
            .list_service_cases(pb::ListServiceCasesRequest {
                options: opts(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
            .service_cases
            .into_iter()
            .map(|m| wrap(R::ServiceCase(m))),
    );
    out.extend(
        c.activities
            .list_activities(pb::ListActivitiesRequest {
                options: opts(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
            .activities
            .into_iter()
            .map(|m| wrap(R::Activity(m))),
    );
    out.extend(
        c.leads
            .list_leads(pb::ListLeadsRequest {
                options: opts(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
            .leads
            .into_iter()
            .map(|m| wrap(R::Lead(m))),
    );
    out
}
