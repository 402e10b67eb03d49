//! End to end: real `verbund` processes, certificates from `verbund init`, mutual TLS on
//! loopback: who may connect (clients without or with foreign certificates are refused),
//! health and reflection over mutual TLS, and records through the CLI.

mod support;

use std::collections::HashSet;

use support::node_api::*;
use support::{TestNode, stderr, stdout, verbund};
use tokio_stream::StreamExt;
use verbund_node::client::{ClientIdentity, connect};
use verbund_node::pb;

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
