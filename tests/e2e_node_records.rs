//! End to end: real `verbund` processes, certificates from `verbund init`, mutual TLS on
//! loopback, and what a user sees through the API: every record type's create, read, update
//! and delete, pagination, watching changes from a sequence, a restart, and concurrent updates.

mod support;

use std::collections::HashSet;

use support::TestNode;
use support::node_api::*;
use tokio_stream::StreamExt;
use tonic::Code;
use verbund_node::pb;

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

/// `verbund watch` follows until its limit even though the node ends every stream and
/// connection after `max_connection_age_secs` (here 2 s): it resumes after the last event
/// it showed, so nothing is lost and nothing shown twice.
#[test]
fn the_cli_watch_outlives_the_nodes_stream_and_connection_age() {
    use std::process::{Command, Stdio};
    let mut node = TestNode::init("acme");
    let cfg = std::fs::read_to_string(node.config()).unwrap();
    assert!(cfg.contains("max_connection_age_secs = 600"), "{cfg}");
    std::fs::write(
        node.config(),
        cfg.replace(
            "max_connection_age_secs = 600",
            "max_connection_age_secs = 2",
        ),
    )
    .unwrap();
    node.run();
    let before = support::federation::create(&node, "account", &["name=Vorher AG"]);
    let after_seq = support::federation::get(&node, "account", &before).unwrap()["seq"]
        .as_i64()
        .unwrap();
    let config = node.config();
    let watch = Command::new(support::bin())
        .args([
            "watch",
            "--after-seq",
            &after_seq.to_string(),
            "--limit",
            "3",
            "--json",
            "--config",
            config.to_str().unwrap(),
            "--node",
            &node.endpoint,
        ])
        .env("VERBUND_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut ids = Vec::new();
    for name in ["Eins AG", "Zwei AG", "Drei AG"] {
        ids.push(support::federation::create(
            &node,
            "account",
            &[&format!("name={name}")],
        ));
        // Past the node's stream and connection age: each create lands on a new stream.
        std::thread::sleep(std::time::Duration::from_millis(2_500));
    }
    let out = watch.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", support::stderr(&out));
    let events: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let seen: Vec<&str> = events
        .iter()
        .map(|e| e["record_id"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(
        seen,
        ids.iter().map(String::as_str).collect::<Vec<_>>(),
        "{events:#?}"
    );
}
