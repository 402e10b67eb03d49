//! End to end: real `verbund` processes, certificates from `verbund init`, mutual TLS on
//! loopback: invalid input gets the right status code, names the field, and changes nothing.

mod support;

use support::TestNode;
use support::node_api::*;
use tonic::Code;
use verbund_node::pb;

/// Runs a bad request, expects `code` with `field` named, and checks nothing changed.
macro_rules! rejects {
    ($c:expr, $call:expr, $code:expr, $field:expr) => {{
        let before = snapshot(&mut $c).await;
        let err = $call.await.expect_err("the request should fail");
        assert_eq!(err.code(), $code, "{}", err.message());
        assert!(
            err.message().contains($field),
            "message {:?} should name {:?}",
            err.message(),
            $field
        );
        assert_eq!(
            snapshot(&mut $c).await,
            before,
            "a refused request changed stored data"
        );
    }};
}

#[tokio::test]
async fn invalid_input_gets_the_right_code_and_changes_nothing() {
    let node = TestNode::start("acme");
    let mut c = clients(node.admin().await);
    let f = fixture(&mut c).await;
    let acc = id(&f.account);
    let missing = uuid::Uuid::now_v7().to_string();
    let mut a = c.accounts.clone();
    let mut ct = c.contacts.clone();
    let mut o = c.opps.clone();
    let mut cs = c.cases.clone();
    let mut ac = c.activities.clone();
    let mut ld = c.leads.clone();
    let mut sr = c.search.clone();

    rejects!(
        c,
        a.create_account(pb::CreateAccountRequest {
            account: Some(pb::Account {
                domain: s("x.example"),
                ..Default::default()
            })
        }),
        Code::InvalidArgument,
        "name"
    );
    rejects!(
        c,
        a.create_account(pb::CreateAccountRequest { account: None }),
        Code::InvalidArgument,
        "account"
    );
    rejects!(
        c,
        a.create_account(pb::CreateAccountRequest {
            account: Some(pb::Account {
                name: s(&"x".repeat(201)),
                ..Default::default()
            })
        }),
        Code::InvalidArgument,
        "name"
    );
    rejects!(
        c,
        a.create_account(pb::CreateAccountRequest {
            account: Some(pb::Account {
                name: s("A"),
                annual_revenue: Some(pb::Money {
                    currency_code: "EUR".into(),
                    minor_units: -1
                }),
                ..Default::default()
            })
        }),
        Code::InvalidArgument,
        "annual_revenue"
    );
    rejects!(
        c,
        a.create_account(pb::CreateAccountRequest {
            account: Some(pb::Account {
                name: s("A"),
                annual_revenue: Some(pb::Money {
                    currency_code: "XYZ".into(),
                    minor_units: 1
                }),
                ..Default::default()
            })
        }),
        Code::InvalidArgument,
        "annual_revenue"
    );
    rejects!(
        c,
        ct.create_contact(pb::CreateContactRequest {
            contact: Some(pb::Contact {
                first_name: s("Anna"),
                ..Default::default()
            })
        }),
        Code::InvalidArgument,
        "last_name"
    );
    rejects!(
        c,
        ct.create_contact(pb::CreateContactRequest {
            contact: Some(pb::Contact {
                last_name: s("W"),
                email: s("not-an-email"),
                ..Default::default()
            })
        }),
        Code::InvalidArgument,
        "email"
    );
    rejects!(
        c,
        ct.create_contact(pb::CreateContactRequest {
            contact: Some(pb::Contact {
                last_name: s("W"),
                account_id: s(&missing),
                ..Default::default()
            })
        }),
        Code::InvalidArgument,
        "account_id"
    );
    rejects!(
        c,
        ld.create_lead(pb::CreateLeadRequest {
            lead: Some(pb::Lead {
                first_name: s("X"),
                ..Default::default()
            })
        }),
        Code::InvalidArgument,
        "last_name"
    );
    rejects!(
        c,
        o.create_opportunity(pb::CreateOpportunityRequest {
            opportunity: Some(pb::Opportunity {
                name: s("D"),
                account_id: s(&acc),
                ..Default::default()
            })
        }),
        Code::InvalidArgument,
        "stage"
    );
    rejects!(
        c,
        o.create_opportunity(pb::CreateOpportunityRequest {
            opportunity: Some(pb::Opportunity {
                name: s("D"),
                stage: 3,
                ..Default::default()
            })
        }),
        Code::InvalidArgument,
        "account_id"
    );
    rejects!(
        c,
        o.create_opportunity(pb::CreateOpportunityRequest {
            opportunity: Some(pb::Opportunity {
                name: s("D"),
                stage: 3,
                account_id: s(&acc),
                probability: Some(101),
                ..Default::default()
            })
        }),
        Code::InvalidArgument,
        "probability"
    );
    rejects!(
        c,
        o.create_opportunity(pb::CreateOpportunityRequest {
            opportunity: Some(pb::Opportunity {
                name: s("D"),
                stage: 99,
                account_id: s(&acc),
                ..Default::default()
            })
        }),
        Code::InvalidArgument,
        "stage"
    );
    rejects!(
        c,
        o.create_opportunity(pb::CreateOpportunityRequest {
            opportunity: Some(pb::Opportunity {
                name: s("D"),
                stage: 3,
                account_id: s(&id(&f.contact)),
                ..Default::default()
            })
        }),
        Code::InvalidArgument,
        "account_id"
    );
    rejects!(
        c,
        o.create_opportunity(pb::CreateOpportunityRequest {
            opportunity: Some(pb::Opportunity {
                name: s("D"),
                stage: 3,
                account_id: s(&acc),
                close_date: s("2027-02-30"),
                ..Default::default()
            })
        }),
        Code::InvalidArgument,
        "close_date"
    );
    rejects!(
        c,
        cs.create_service_case(pb::CreateServiceCaseRequest {
            service_case: Some(pb::ServiceCase {
                account_id: s(&acc),
                ..Default::default()
            })
        }),
        Code::InvalidArgument,
        "subject"
    );
    rejects!(
        c,
        cs.create_service_case(pb::CreateServiceCaseRequest {
            service_case: Some(pb::ServiceCase {
                subject: s("S"),
                account_id: s(&acc),
                contact_id: s(&missing),
                ..Default::default()
            })
        }),
        Code::InvalidArgument,
        "contact_id"
    );
    rejects!(
        c,
        cs.create_service_case(pb::CreateServiceCaseRequest {
            service_case: Some(pb::ServiceCase {
                subject: s("S"),
                account_id: s(&acc),
                assigned_org: s("Not An Org"),
                ..Default::default()
            })
        }),
        Code::InvalidArgument,
        "assigned_org"
    );
    rejects!(
        c,
        ac.create_activity(pb::CreateActivityRequest {
            activity: Some(pb::Activity {
                channel: 1,
                ..Default::default()
            })
        }),
        Code::InvalidArgument,
        "related_id"
    );
    rejects!(
        c,
        ac.create_activity(pb::CreateActivityRequest {
            activity: Some(pb::Activity {
                related_id: s(&missing),
                channel: 1,
                ..Default::default()
            })
        }),
        Code::InvalidArgument,
        "related_id"
    );
    // Updates: bad values, unknown mask paths, missing masks, illegal transitions, bad ids.
    rejects!(
        c,
        o.update_opportunity(pb::UpdateOpportunityRequest {
            id: id(&f.opp),
            opportunity: Some(pb::Opportunity {
                probability: Some(-5),
                ..Default::default()
            }),
            update_mask: mask(&["probability"])
        }),
        Code::InvalidArgument,
        "probability"
    );
    rejects!(
        c,
        o.update_opportunity(pb::UpdateOpportunityRequest {
            id: id(&f.opp),
            opportunity: Some(pb::Opportunity::default()),
            update_mask: mask(&["name"])
        }),
        Code::InvalidArgument,
        "name"
    );
    rejects!(
        c,
        o.update_opportunity(pb::UpdateOpportunityRequest {
            id: id(&f.opp),
            opportunity: Some(pb::Opportunity::default()),
            update_mask: mask(&["meta.owner_org"])
        }),
        Code::InvalidArgument,
        "update_mask"
    );
    rejects!(
        c,
        o.update_opportunity(pb::UpdateOpportunityRequest {
            id: id(&f.opp),
            opportunity: Some(pb::Opportunity::default()),
            update_mask: None
        }),
        Code::InvalidArgument,
        "update_mask"
    );
    rejects!(
        c,
        cs.update_service_case(pb::UpdateServiceCaseRequest {
            id: id(&f.case),
            service_case: Some(pb::ServiceCase {
                status: pb::CaseStatus::Closed as i32,
                ..Default::default()
            }),
            update_mask: mask(&["status"])
        }),
        Code::FailedPrecondition,
        "status"
    );
    rejects!(
        c,
        a.update_account(pb::UpdateAccountRequest {
            id: "not-a-uuid".into(),
            account: Some(pb::Account::default()),
            update_mask: mask(&["city"])
        }),
        Code::InvalidArgument,
        "id"
    );
    rejects!(
        c,
        a.update_account(pb::UpdateAccountRequest {
            id: missing.clone(),
            account: Some(pb::Account::default()),
            update_mask: mask(&["city"])
        }),
        Code::NotFound,
        &missing
    );
    rejects!(
        c,
        a.get_account(pb::GetRecordRequest { id: id(&f.contact) }),
        Code::NotFound,
        "not found"
    );
    rejects!(
        c,
        a.get_account(pb::GetRecordRequest { id: String::new() }),
        Code::InvalidArgument,
        "id"
    );
    rejects!(
        c,
        a.delete_account(pb::DeleteRecordRequest { id: acc.clone() }),
        Code::FailedPrecondition,
        "live related"
    );
    rejects!(
        c,
        a.list_accounts(pb::ListAccountsRequest {
            options: Some(pb::ListOptions {
                page_token: "garbage".into(),
                ..Default::default()
            })
        }),
        Code::InvalidArgument,
        "page_token"
    );
    rejects!(
        c,
        a.list_accounts(pb::ListAccountsRequest {
            options: Some(pb::ListOptions {
                page_size: -1,
                ..Default::default()
            })
        }),
        Code::InvalidArgument,
        "page_size"
    );
    rejects!(
        c,
        ct.list_contacts(pb::ListContactsRequest {
            options: None,
            account_id: "nope".into()
        }),
        Code::InvalidArgument,
        "account_id"
    );
    rejects!(
        c,
        sr.search(pb::SearchRequest {
            query: "x".into(),
            ..Default::default()
        }),
        Code::InvalidArgument,
        "query"
    );
}
