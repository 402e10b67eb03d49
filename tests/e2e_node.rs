//! End to end: real `verbund` processes, certificates from `verbund init`, mutual TLS on
//! loopback, and what a user sees through the API and the CLI.

mod support;

use std::collections::HashSet;

use prost_types::FieldMask;
use support::{TestNode, stderr, stdout, verbund};
use tokio_stream::StreamExt;
use tonic::Code;
use tonic::transport::Channel;
use verbund_node::client::{ClientIdentity, connect};
use verbund_node::pb;

fn s(v: &str) -> Option<String> {
    Some(v.to_string())
}

fn mask(paths: &[&str]) -> Option<FieldMask> {
    Some(FieldMask {
        paths: paths.iter().map(|p| p.to_string()).collect(),
    })
}

fn id<T: verbund_node::convert::RecordMessage>(m: &T) -> String {
    m.meta().unwrap().id.clone()
}

struct Clients {
    accounts: pb::account_service_client::AccountServiceClient<Channel>,
    contacts: pb::contact_service_client::ContactServiceClient<Channel>,
    leads: pb::lead_service_client::LeadServiceClient<Channel>,
    opps: pb::opportunity_service_client::OpportunityServiceClient<Channel>,
    cases: pb::service_case_service_client::ServiceCaseServiceClient<Channel>,
    activities: pb::activity_service_client::ActivityServiceClient<Channel>,
    search: pb::search_service_client::SearchServiceClient<Channel>,
    changes: pb::change_service_client::ChangeServiceClient<Channel>,
    node: pb::node_service_client::NodeServiceClient<Channel>,
}

fn clients(ch: Channel) -> Clients {
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

async fn account(c: &mut Clients, name: &str) -> pb::Account {
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
struct Fixture {
    account: pb::Account,
    contact: pb::Contact,
    lead: pb::Lead,
    opp: pb::Opportunity,
    case: pb::ServiceCase,
    activity: pb::Activity,
}

async fn fixture(c: &mut Clients) -> Fixture {
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

#[tokio::test]
async fn crud_of_every_record_type_over_mtls() {
    let node = TestNode::start("acme");
    let mut c = clients(node.admin().await);
    let f = fixture(&mut c).await;

    // What was stored is what comes back, normalized, with owner and per-field versions.
    let acc = c
        .accounts
        .get_account(pb::GetRecordRequest { id: id(&f.account) })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(acc.domain.as_deref(), Some("mueller.example"));
    let meta = acc.meta.as_ref().unwrap();
    assert_eq!(meta.owner_org, "acme");
    assert_eq!(meta.field_versions["name"].node_id, "acme/node1");
    assert_eq!(
        uuid::Uuid::parse_str(&meta.id).unwrap().get_version_num(),
        7
    );
    assert_eq!(
        c.contacts
            .get_contact(pb::GetRecordRequest { id: id(&f.contact) })
            .await
            .unwrap()
            .into_inner(),
        f.contact
    );
    assert_eq!(
        c.leads
            .get_lead(pb::GetRecordRequest { id: id(&f.lead) })
            .await
            .unwrap()
            .into_inner()
            .status,
        pb::LeadStatus::New as i32
    );
    assert_eq!(
        c.opps
            .get_opportunity(pb::GetRecordRequest { id: id(&f.opp) })
            .await
            .unwrap()
            .into_inner(),
        f.opp
    );
    assert_eq!(
        c.cases
            .get_service_case(pb::GetRecordRequest { id: id(&f.case) })
            .await
            .unwrap()
            .into_inner()
            .status,
        pb::CaseStatus::New as i32
    );
    let act = c
        .activities
        .get_activity(pb::GetRecordRequest {
            id: id(&f.activity),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(act.direction, pb::ActivityDirection::Outbound as i32);
    assert!(act.occurred_at.is_some());

    // Update with a mask: only the named fields change, even if the message carries more.
    let updated = c
        .opps
        .update_opportunity(pb::UpdateOpportunityRequest {
            id: id(&f.opp),
            opportunity: Some(pb::Opportunity {
                stage: pb::OpportunityStage::Negotiation as i32,
                name: s("IGNORED"),
                ..Default::default()
            }),
            update_mask: mask(&["stage"]),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(updated.stage, pb::OpportunityStage::Negotiation as i32);
    assert_eq!(updated.name, f.opp.name);
    assert_eq!(updated.probability, Some(40));
    let (before, after) = (f.opp.meta.as_ref().unwrap(), updated.meta.as_ref().unwrap());
    assert!(after.seq > before.seq);
    assert_eq!(after.field_versions["name"], before.field_versions["name"]);
    assert_ne!(
        after.field_versions["stage"],
        before.field_versions["stage"]
    );
    // A masked field that is absent is cleared.
    let cleared = c
        .opps
        .update_opportunity(pb::UpdateOpportunityRequest {
            id: id(&f.opp),
            opportunity: Some(pb::Opportunity::default()),
            update_mask: mask(&["close_date"]),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(cleared.close_date, None);
    for (i, status) in [
        pb::CaseStatus::Open,
        pb::CaseStatus::Pending,
        pb::CaseStatus::Resolved,
        pb::CaseStatus::Open,
    ]
    .into_iter()
    .enumerate()
    {
        let r = c
            .cases
            .update_service_case(pb::UpdateServiceCaseRequest {
                id: id(&f.case),
                service_case: Some(pb::ServiceCase {
                    status: status as i32,
                    ..Default::default()
                }),
                update_mask: mask(&["status"]),
            })
            .await;
        assert!(r.is_ok(), "step {i}: {r:?}");
    }
    for (kind_update, result) in [
        (
            "contact",
            c.contacts
                .update_contact(pb::UpdateContactRequest {
                    id: id(&f.contact),
                    contact: Some(pb::Contact {
                        title: s("CTO"),
                        ..Default::default()
                    }),
                    update_mask: mask(&["title"]),
                })
                .await
                .map(|r| r.into_inner().title),
        ),
        (
            "lead",
            c.leads
                .update_lead(pb::UpdateLeadRequest {
                    id: id(&f.lead),
                    lead: Some(pb::Lead {
                        status: pb::LeadStatus::Working as i32,
                        ..Default::default()
                    }),
                    update_mask: mask(&["status"]),
                })
                .await
                .map(|r| Some(r.into_inner().status.to_string())),
        ),
        (
            "account",
            c.accounts
                .update_account(pb::UpdateAccountRequest {
                    id: id(&f.account),
                    account: Some(pb::Account {
                        city: s("Stuttgart"),
                        ..Default::default()
                    }),
                    update_mask: mask(&["city"]),
                })
                .await
                .map(|r| r.into_inner().city),
        ),
        (
            "activity",
            c.activities
                .update_activity(pb::UpdateActivityRequest {
                    id: id(&f.activity),
                    activity: Some(pb::Activity {
                        body: s("Notes"),
                        ..Default::default()
                    }),
                    update_mask: mask(&["body"]),
                })
                .await
                .map(|r| r.into_inner().body),
        ),
    ] {
        assert!(
            result.as_ref().is_ok_and(Option::is_some),
            "{kind_update}: {result:?}"
        );
    }

    // Lists with the filters a CRM user needs.
    let contacts = c
        .contacts
        .list_contacts(pb::ListContactsRequest {
            options: None,
            account_id: id(&f.account),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(contacts.contacts.len(), 1);
    let by_stage = c
        .opps
        .list_opportunities(pb::ListOpportunitiesRequest {
            options: None,
            account_id: String::new(),
            stage: pb::OpportunityStage::Negotiation as i32,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(by_stage.opportunities.len(), 1);
    let proposal = c
        .opps
        .list_opportunities(pb::ListOpportunitiesRequest {
            options: None,
            account_id: String::new(),
            stage: pb::OpportunityStage::Proposal as i32,
        })
        .await
        .unwrap()
        .into_inner();
    assert!(proposal.opportunities.is_empty());
    let cases = c
        .cases
        .list_service_cases(pb::ListServiceCasesRequest {
            options: None,
            account_id: id(&f.account),
            status: pb::CaseStatus::Open as i32,
            priority: pb::CasePriority::High as i32,
            assigned_org: "servicepartner".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(cases.service_cases.len(), 1);
    let acts = c
        .activities
        .list_activities(pb::ListActivitiesRequest {
            options: None,
            account_id: id(&f.account),
            related_id: String::new(),
            channel: 0,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        acts.activities.len(),
        1,
        "activities of a case roll up to its account"
    );
    let hits = c
        .search
        .search(pb::SearchRequest {
            query: "MÜLLER".into(),
            kinds: vec![],
            page_size: 0,
            page_token: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(hits.results.len(), 1);

    // Deletes leave tombstones; the account can go once nothing live refers to it.
    let err = c
        .accounts
        .delete_account(pb::DeleteRecordRequest { id: id(&f.account) })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    let tomb = c
        .activities
        .delete_activity(pb::DeleteRecordRequest {
            id: id(&f.activity),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(tomb.meta.unwrap().deleted);
    c.cases
        .delete_service_case(pb::DeleteRecordRequest { id: id(&f.case) })
        .await
        .unwrap();
    c.opps
        .delete_opportunity(pb::DeleteRecordRequest { id: id(&f.opp) })
        .await
        .unwrap();
    c.contacts
        .delete_contact(pb::DeleteRecordRequest { id: id(&f.contact) })
        .await
        .unwrap();
    c.leads
        .delete_lead(pb::DeleteRecordRequest { id: id(&f.lead) })
        .await
        .unwrap();
    c.accounts
        .delete_account(pb::DeleteRecordRequest { id: id(&f.account) })
        .await
        .unwrap();
    let gone = c
        .accounts
        .get_account(pb::GetRecordRequest { id: id(&f.account) })
        .await
        .unwrap_err();
    assert_eq!(gone.code(), Code::NotFound);
    assert_eq!(
        c.accounts
            .delete_account(pb::DeleteRecordRequest { id: id(&f.account) })
            .await
            .unwrap_err()
            .code(),
        Code::NotFound
    );
    let with_deleted = c
        .accounts
        .list_accounts(pb::ListAccountsRequest {
            options: Some(pb::ListOptions {
                show_deleted: true,
                ..Default::default()
            }),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(
        with_deleted
            .accounts
            .iter()
            .all(|a| a.meta.as_ref().unwrap().deleted)
    );
    assert_eq!(with_deleted.accounts.len(), 1);
    assert!(
        c.accounts
            .list_accounts(pb::ListAccountsRequest { options: None })
            .await
            .unwrap()
            .into_inner()
            .accounts
            .is_empty()
    );
}

#[tokio::test]
async fn clients_without_or_with_foreign_certificates_are_refused() {
    let node = TestNode::start("acme");
    let stranger = TestNode::start("globex");
    let mut acme = clients(node.admin().await);
    let f = fixture(&mut acme).await;
    let me = acme
        .node
        .who_am_i(pb::WhoAmIRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (me.org.as_str(), me.kind.as_str(), me.name.as_str()),
        ("acme", "user", "admin")
    );

    // No client certificate at all.
    let anonymous = ClientIdentity {
        ca_pem: node.ca_pem(),
        cert_and_key: None,
    };
    let refused = match connect(&node.endpoint, &anonymous).await {
        Err(_) => true,
        Ok(ch) => pb::node_service_client::NodeServiceClient::new(ch)
            .who_am_i(pb::WhoAmIRequest {})
            .await
            .is_err(),
    };
    assert!(refused, "a client without a certificate was served");

    // A certificate from another organization's CA: every record RPC fails, whatever the id.
    let (cert, key) = stranger.admin_identity().cert_and_key.unwrap();
    let foreign = ClientIdentity {
        ca_pem: node.ca_pem(),
        cert_and_key: Some((cert, key)),
    };
    match connect(&node.endpoint, &foreign).await {
        Err(_) => {}
        Ok(ch) => {
            let mut x = clients(ch);
            let get = |id: String| pb::GetRecordRequest { id };
            let del = |id: String| pb::DeleteRecordRequest { id };
            assert!(x.node.who_am_i(pb::WhoAmIRequest {}).await.is_err());
            assert!(x.accounts.get_account(get(id(&f.account))).await.is_err());
            assert!(
                x.accounts
                    .update_account(pb::UpdateAccountRequest {
                        id: id(&f.account),
                        account: Some(pb::Account::default()),
                        update_mask: mask(&["city"])
                    })
                    .await
                    .is_err()
            );
            assert!(
                x.accounts
                    .delete_account(del(id(&f.account)))
                    .await
                    .is_err()
            );
            assert!(x.contacts.get_contact(get(id(&f.contact))).await.is_err());
            assert!(
                x.contacts
                    .update_contact(pb::UpdateContactRequest {
                        id: id(&f.contact),
                        contact: Some(pb::Contact::default()),
                        update_mask: mask(&["title"])
                    })
                    .await
                    .is_err()
            );
            assert!(
                x.contacts
                    .delete_contact(del(id(&f.contact)))
                    .await
                    .is_err()
            );
            assert!(x.leads.get_lead(get(id(&f.lead))).await.is_err());
            assert!(
                x.leads
                    .update_lead(pb::UpdateLeadRequest {
                        id: id(&f.lead),
                        lead: Some(pb::Lead::default()),
                        update_mask: mask(&["source"])
                    })
                    .await
                    .is_err()
            );
            assert!(x.leads.delete_lead(del(id(&f.lead))).await.is_err());
            assert!(x.opps.get_opportunity(get(id(&f.opp))).await.is_err());
            assert!(
                x.opps
                    .update_opportunity(pb::UpdateOpportunityRequest {
                        id: id(&f.opp),
                        opportunity: Some(pb::Opportunity::default()),
                        update_mask: mask(&["next_step"])
                    })
                    .await
                    .is_err()
            );
            assert!(x.opps.delete_opportunity(del(id(&f.opp))).await.is_err());
            assert!(x.cases.get_service_case(get(id(&f.case))).await.is_err());
            assert!(
                x.cases
                    .update_service_case(pb::UpdateServiceCaseRequest {
                        id: id(&f.case),
                        service_case: Some(pb::ServiceCase::default()),
                        update_mask: mask(&["due_date"])
                    })
                    .await
                    .is_err()
            );
            assert!(x.cases.delete_service_case(del(id(&f.case))).await.is_err());
            assert!(
                x.activities
                    .get_activity(get(id(&f.activity)))
                    .await
                    .is_err()
            );
            assert!(
                x.activities
                    .update_activity(pb::UpdateActivityRequest {
                        id: id(&f.activity),
                        activity: Some(pb::Activity::default()),
                        update_mask: mask(&["body"])
                    })
                    .await
                    .is_err()
            );
            assert!(
                x.activities
                    .delete_activity(del(id(&f.activity)))
                    .await
                    .is_err()
            );
            assert!(
                x.search
                    .search(pb::SearchRequest {
                        query: "müller".into(),
                        ..Default::default()
                    })
                    .await
                    .is_err()
            );
            assert!(
                x.changes
                    .watch(pb::WatchRequest {
                        after_seq: 0,
                        kinds: vec![]
                    })
                    .await
                    .is_err()
            );
        }
    }
    // Nothing the stranger tried changed anything, and the good case still works.
    assert_eq!(
        acme.accounts
            .get_account(pb::GetRecordRequest { id: id(&f.account) })
            .await
            .unwrap()
            .into_inner(),
        f.account
    );
    assert_eq!(
        acme.activities
            .get_activity(pb::GetRecordRequest {
                id: id(&f.activity)
            })
            .await
            .unwrap()
            .into_inner(),
        f.activity
    );

    // A further user issued with `verbund cert issue` is recognised by name.
    let o = verbund(&[
        "cert",
        "issue",
        "--config",
        node.config().to_str().unwrap(),
        "--user",
        "anna",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let ch = connect(&node.endpoint, &node.identity_of("anna"))
        .await
        .unwrap();
    let who = pb::node_service_client::NodeServiceClient::new(ch)
        .who_am_i(pb::WhoAmIRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(who.name, "anna");
    let again = verbund(&[
        "cert",
        "issue",
        "--config",
        node.config().to_str().unwrap(),
        "--user",
        "anna",
    ]);
    assert!(
        !again.status.success(),
        "issuing over an existing key must be refused"
    );
}

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

/// Everything a user can see, to compare before and after a refused request.
async fn snapshot(c: &mut Clients) -> Vec<pb::AnyRecord> {
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

#[tokio::test]
async fn pagination_returns_every_record_exactly_once() {
    let node = TestNode::start("acme");
    let mut c = clients(node.admin().await);
    let acc = account(&mut c, "Paging AG").await;
    let mut created = Vec::new();
    for i in 0..137 {
        let ct = c
            .contacts
            .create_contact(pb::CreateContactRequest {
                contact: Some(pb::Contact {
                    account_id: s(&id(&acc)),
                    last_name: s(&format!("Person {i}")),
                    ..Default::default()
                }),
            })
            .await
            .unwrap()
            .into_inner();
        created.push(id(&ct));
    }
    let mut seen = Vec::new();
    let mut token = String::new();
    let mut pages = 0;
    loop {
        let resp = c
            .contacts
            .list_contacts(pb::ListContactsRequest {
                options: Some(pb::ListOptions {
                    page_size: 10,
                    page_token: token.clone(),
                    ..Default::default()
                }),
                account_id: id(&acc),
            })
            .await
            .unwrap()
            .into_inner();
        assert!(resp.contacts.len() <= 10);
        // A record created while paging lands after the cursor and is seen once too.
        if pages == 3 {
            let late = c
                .contacts
                .create_contact(pb::CreateContactRequest {
                    contact: Some(pb::Contact {
                        account_id: s(&id(&acc)),
                        last_name: s("Late"),
                        ..Default::default()
                    }),
                })
                .await
                .unwrap()
                .into_inner();
            created.push(id(&late));
        }
        seen.extend(resp.contacts.iter().map(id));
        pages += 1;
        if resp.next_page_token.is_empty() {
            break;
        }
        // The token only works with the same filters.
        if pages == 1 {
            let err = c
                .contacts
                .list_contacts(pb::ListContactsRequest {
                    options: Some(pb::ListOptions {
                        page_size: 10,
                        page_token: resp.next_page_token.clone(),
                        ..Default::default()
                    }),
                    account_id: String::new(),
                })
                .await
                .unwrap_err();
            assert_eq!(err.code(), Code::InvalidArgument);
        }
        token = resp.next_page_token;
    }
    assert_eq!(seen.len(), created.len());
    assert_eq!(
        seen.iter().collect::<HashSet<_>>().len(),
        seen.len(),
        "no duplicates"
    );
    assert_eq!(seen, created, "every record once, in creation order");
    // Page size is clamped to the maximum rather than refused.
    let big = c
        .contacts
        .list_contacts(pb::ListContactsRequest {
            options: Some(pb::ListOptions {
                page_size: 100_000,
                ..Default::default()
            }),
            account_id: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(big.contacts.len(), 138);
}

#[tokio::test]
async fn watch_resumes_from_a_sequence_without_gaps_or_duplicates() {
    let node = TestNode::start("acme");
    let mut c = clients(node.admin().await);
    for i in 0..20 {
        account(&mut c, &format!("Account {i}")).await;
    }
    // Read the first 12 events, then drop the stream as a crashed app would.
    let mut stream = c
        .changes
        .watch(pb::WatchRequest {
            after_seq: 0,
            kinds: vec![],
        })
        .await
        .unwrap()
        .into_inner();
    let mut seqs = Vec::new();
    while seqs.len() < 12 {
        let ev = stream.next().await.unwrap().unwrap();
        assert_eq!(ev.op, pb::ChangeOp::Create as i32);
        assert!(ev.record.is_some());
        seqs.push(ev.seq);
    }
    drop(stream);
    // Writes continue while nobody watches, and while the resumed stream runs.
    let mut writer = clients(node.admin().await);
    let bg = tokio::spawn(async move {
        for i in 0..30 {
            account(&mut writer, &format!("Later {i}")).await;
        }
    });
    let resume_at = *seqs.last().unwrap();
    let mut stream = c
        .changes
        .watch(pb::WatchRequest {
            after_seq: resume_at,
            kinds: vec![],
        })
        .await
        .unwrap()
        .into_inner();
    while seqs.len() < 50 {
        let ev = tokio::time::timeout(std::time::Duration::from_secs(20), stream.next())
            .await
            .expect("watch stalled")
            .unwrap()
            .unwrap();
        seqs.push(ev.seq);
    }
    bg.await.unwrap();
    assert_eq!(
        seqs,
        (1..=50).collect::<Vec<i64>>(),
        "contiguous, ordered, no duplicates"
    );
    // Kind filters apply; an update shows its changed fields.
    let acc = account(&mut c, "Filtered").await;
    c.accounts
        .update_account(pb::UpdateAccountRequest {
            id: id(&acc),
            account: Some(pb::Account {
                city: s("Köln"),
                ..Default::default()
            }),
            update_mask: mask(&["city"]),
        })
        .await
        .unwrap();
    let mut only = c
        .changes
        .watch(pb::WatchRequest {
            after_seq: 51,
            kinds: vec![pb::RecordKind::Account as i32],
        })
        .await
        .unwrap()
        .into_inner();
    let ev = only.next().await.unwrap().unwrap();
    assert_eq!(
        (ev.seq, ev.op, ev.changed_fields.clone()),
        (52, pb::ChangeOp::Update as i32, vec!["city".to_string()])
    );
    let err = c
        .changes
        .watch(pb::WatchRequest {
            after_seq: -1,
            kinds: vec![],
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    // A cursor beyond the node's last change (e.g. after a restore) is refused, not skipped.
    let err = c
        .changes
        .watch(pb::WatchRequest {
            after_seq: 1_000,
            kinds: vec![],
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::OutOfRange);
}

#[tokio::test]
async fn a_restart_keeps_all_data() {
    let mut node = TestNode::start("acme");
    let mut c = clients(node.admin().await);
    let f = fixture(&mut c).await;
    let updated = c
        .opps
        .update_opportunity(pb::UpdateOpportunityRequest {
            id: id(&f.opp),
            opportunity: Some(pb::Opportunity {
                next_step: s("Sign"),
                ..Default::default()
            }),
            update_mask: mask(&["next_step"]),
        })
        .await
        .unwrap()
        .into_inner();
    let before = snapshot(&mut c).await;
    node.restart(); // SIGKILL, then start again: no graceful shutdown.
    let mut c = clients(node.admin().await);
    assert_eq!(snapshot(&mut c).await, before);
    // The change sequence and the clock continue after the restart.
    let again = c
        .opps
        .update_opportunity(pb::UpdateOpportunityRequest {
            id: id(&f.opp),
            opportunity: Some(pb::Opportunity {
                next_step: s("Signed"),
                ..Default::default()
            }),
            update_mask: mask(&["next_step"]),
        })
        .await
        .unwrap()
        .into_inner();
    let (m1, m2) = (updated.meta.unwrap(), again.meta.unwrap());
    assert_eq!(m2.seq, m1.seq + 1);
    let (v1, v2) = (
        &m1.field_versions["next_step"],
        &m2.field_versions["next_step"],
    );
    assert!((v2.physical_ms, v2.counter) > (v1.physical_ms, v1.counter));
}

#[tokio::test]
async fn health_and_reflection_are_served_over_mtls() {
    let node = TestNode::start("acme");
    let ch = node.admin().await;
    let mut health = tonic_health::pb::health_client::HealthClient::new(ch.clone());
    let resp = health
        .check(tonic_health::pb::HealthCheckRequest {
            service: "verbund.v1.AccountService".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        resp.status,
        tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    );
    use tonic_reflection::pb::v1 as refl;
    let mut client = refl::server_reflection_client::ServerReflectionClient::new(ch);
    let req = refl::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(
            refl::server_reflection_request::MessageRequest::ListServices(String::new()),
        ),
    };
    let mut stream = client
        .server_reflection_info(tokio_stream::iter(vec![req]))
        .await
        .unwrap()
        .into_inner();
    let Some(refl::server_reflection_response::MessageResponse::ListServicesResponse(list)) =
        stream.next().await.unwrap().unwrap().message_response
    else {
        panic!("unexpected reflection answer");
    };
    let names: HashSet<String> = list.service.into_iter().map(|s| s.name).collect();
    for svc in [
        "verbund.v1.AccountService",
        "verbund.v1.ChangeService",
        "verbund.v1.SearchService",
        "grpc.health.v1.Health",
    ] {
        assert!(names.contains(svc), "{svc} missing from {names:?}");
    }
}

#[tokio::test]
async fn cli_manages_records_with_tables_json_and_clear_errors() {
    let node = TestNode::start("acme");
    let o = node.cli(&[
        "account",
        "create",
        "name=Nordlicht Logistik AG",
        "domain=nordlicht.example",
        "tags=logistics,group",
        "annual_revenue=1200000.50 EUR",
        "--json",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let created: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    let acc = created["id"].as_str().unwrap().to_string();
    assert_eq!(
        created["fields"]["annual_revenue"]["minor_units"],
        120_000_050
    );
    let o = node.cli(&[
        "contact",
        "create",
        &format!("account_id={acc}"),
        "last_name=Petersen",
        "email=j.petersen@nordlicht.example",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains("Petersen"));
    let o = node.cli(&[
        "opportunity",
        "create",
        &format!("account_id={acc}"),
        "name=Fleet deal",
        "stage=qualification",
        "amount=50000 EUR",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let o = node.cli(&["account", "update", &acc, "city=Hamburg", "domain="]);
    assert!(o.status.success(), "{}", stderr(&o));
    let o = node.cli(&["account", "get", &acc]);
    let text = stdout(&o);
    assert!(
        text.contains("Hamburg")
            && !text.contains("nordlicht.example")
            && text.contains("1200000.50 EUR"),
        "{text}"
    );
    let o = node.cli(&["opportunity", "list", "--stage", "qualification"]);
    assert!(
        stdout(&o).contains("Fleet deal") && stdout(&o).contains("(1 record)"),
        "{}",
        stdout(&o)
    );
    let o = node.cli(&["search", "petersen", "--json"]);
    let hits: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(hits.as_array().unwrap().len(), 1);
    // Errors: the gRPC status and message, non-zero exit.
    let o = node.cli(&[
        "opportunity",
        "create",
        &format!("account_id={acc}"),
        "name=Bad",
        "stage=proposal",
        "probability=150",
    ]);
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("INVALID_ARGUMENT: probability"),
        "{}",
        stderr(&o)
    );
    let o = node.cli(&["account", "delete", &acc]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("FAILED_PRECONDITION"), "{}", stderr(&o));
    let o = node.cli(&["account", "get", &uuid::Uuid::now_v7().to_string()]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("NOT_FOUND"), "{}", stderr(&o));
    let o = node.cli(&["whoami"]);
    assert!(
        stdout(&o).contains("verbund://acme/user/admin"),
        "{}",
        stdout(&o)
    );
    let o = node.cli(&["watch", "--limit", "3"]);
    assert_eq!(stdout(&o).lines().count(), 3, "{}", stdout(&o));
}

#[tokio::test]
async fn concurrent_updates_keep_versions_in_commit_order() {
    let node = TestNode::start("acme");
    let mut c = clients(node.admin().await);
    let acc = account(&mut c, "Contended GmbH").await;
    let mut tasks = Vec::new();
    for i in 0..40 {
        let mut accounts = c.accounts.clone();
        let id = id(&acc);
        tasks.push(tokio::spawn(async move {
            accounts
                .update_account(pb::UpdateAccountRequest {
                    id,
                    account: Some(pb::Account {
                        city: s(&format!("City {i}")),
                        ..Default::default()
                    }),
                    update_mask: mask(&["city"]),
                })
                .await
                .unwrap()
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let mut stream = c
        .changes
        .watch(pb::WatchRequest {
            after_seq: 0,
            kinds: vec![],
        })
        .await
        .unwrap()
        .into_inner();
    let mut versions = Vec::new();
    while versions.len() < 41 {
        let ev = stream.next().await.unwrap().unwrap();
        let v = ev.version.unwrap();
        versions.push((v.physical_ms, v.counter));
    }
    assert!(
        versions.windows(2).all(|w| w[0] < w[1]),
        "versions follow the change sequence: {versions:?}"
    );
    let now = c
        .accounts
        .get_account(pb::GetRecordRequest { id: id(&acc) })
        .await
        .unwrap()
        .into_inner();
    let v = &now.meta.unwrap().field_versions["city"];
    assert_eq!(
        (v.physical_ms, v.counter),
        *versions.last().unwrap(),
        "the stored value is the last committed one"
    );
}
