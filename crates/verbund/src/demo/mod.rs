//! `verbund demo`: an organization, a node and a day of CRM work, then its partner company,
//! its service provider and its group holding working with it under the example policy
//! (shares, field projection, revocation, audit), and finally the partner company running its
//! own node that holds a synced replica of the shared deal (edits both ways, revoke) — all
//! through the real API over mutual TLS, with real certificates of four organizations, on the
//! embedded database in a temporary directory.

use std::time::Duration;

use anyhow::{Context, Result, bail};
use tokio_stream::StreamExt;
use tonic::transport::Channel;
use verbund_node::client::{ClientIdentity, connect};
use verbund_node::config::NodeConfig;
use verbund_node::convert::RecordMessage;
use verbund_node::pb;
use verbund_node::server::Node;

use crate::init::{InitArgs, init};
use crate::output::{self, Shown};

fn shown<M: RecordMessage>(m: &M) -> Result<Shown> {
    Ok(Shown {
        kind: M::KIND,
        fields: m.to_fields()?,
        meta: m.meta().cloned().unwrap_or_default(),
    })
}

fn id_of<M: RecordMessage>(m: &M) -> String {
    m.meta().map(|m| m.id.clone()).unwrap_or_default()
}

fn money(eur: i64) -> Option<pb::Money> {
    Some(pb::Money {
        currency_code: "EUR".into(),
        minor_units: eur * 100,
    })
}

fn s(v: &str) -> Option<String> {
    Some(v.to_string())
}

fn step(title: &str) {
    println!("\n== {title}");
}

pub async fn run(keep: bool) -> Result<()> {
    let dir = tempfile::Builder::new().prefix("verbund-demo-").tempdir()?;
    let org_dir = dir.path().join("acme");
    step(
        "1. verbund init --org acme: CA, node certificate, admin certificate, node.toml, database",
    );
    let done = init(&InitArgs {
        org: "acme".into(),
        dir: org_dir.clone(),
        name: "node1".into(),
        listen: "127.0.0.1:0".parse()?,
        ops_listen: None,
        dns: vec![],
        database_url: None,
    })
    .await?;
    println!("organization acme in {}", org_dir.display());
    println!("CA fingerprint {}", done.ca_fingerprint);

    step("2. start the node (mutual TLS only, embedded SQLite)");
    let cfg = NodeConfig::load(&done.config_path)?;
    let node = Node::start(&cfg).await?;
    let endpoint = format!("https://{}", node.local_addr);
    println!("node acme/node1 serving on {endpoint}");
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(node.serve(async {
        let _ = stop_rx.await;
    }));

    let admin = ClientIdentity::from_config(&cfg)?;
    let channel = connect(&endpoint, &admin).await?;
    let mut nodes = pb::node_service_client::NodeServiceClient::new(channel.clone());
    let me = nodes.who_am_i(pb::WhoAmIRequest {}).await?.into_inner();
    println!("connected as verbund://{}/{}/{}", me.org, me.kind, me.name);

    step("3. a client without a certificate is refused");
    let anonymous = ClientIdentity {
        ca_pem: admin.ca_pem.clone(),
        cert_and_key: None,
    };
    let refused = match connect(&endpoint, &anonymous).await {
        Err(_) => true,
        Ok(ch) => pb::node_service_client::NodeServiceClient::new(ch)
            .who_am_i(pb::WhoAmIRequest {})
            .await
            .is_err(),
    };
    if !refused {
        bail!("a client without a certificate was served; the node is not enforcing mutual TLS");
    }
    println!("refused, as it must be");

    step("4. accounts and contacts");
    let mut accounts = pb::account_service_client::AccountServiceClient::new(channel.clone());
    let mut contacts = pb::contact_service_client::ContactServiceClient::new(channel.clone());
    let mueller = accounts
        .create_account(pb::CreateAccountRequest {
            account: Some(pb::Account {
                name: s("Müller Maschinenbau GmbH"),
                domain: s("mueller-maschinenbau.example"),
                vat_id: s("DE123456789"),
                industry: s("Machinery"),
                phone: s("+49 711 555 0100"),
                city: s("Stuttgart"),
                country_code: s("DE"),
                tags: vec!["key-account".into(), "group".into()],
                annual_revenue: money(48_000_000),
                ..Default::default()
            }),
        })
        .await?
        .into_inner();
    let nordlicht = accounts
        .create_account(pb::CreateAccountRequest {
            account: Some(pb::Account {
                name: s("Nordlicht Logistik AG"),
                domain: s("nordlicht.example"),
                city: s("Hamburg"),
                country_code: s("DE"),
                ..Default::default()
            }),
        })
        .await?
        .into_inner();
    let anna = contacts
        .create_contact(pb::CreateContactRequest {
            contact: Some(pb::Contact {
                account_id: s(&id_of(&mueller)),
                first_name: s("Anna"),
                last_name: s("Weber"),
                email: s("anna.weber@mueller-maschinenbau.example"),
                phone: s("+49 711 555 0142"),
                title: s("Head of Procurement"),
                ..Default::default()
            }),
        })
        .await?
        .into_inner();
    contacts
        .create_contact(pb::CreateContactRequest {
            contact: Some(pb::Contact {
                account_id: s(&id_of(&nordlicht)),
                first_name: s("Jonas"),
                last_name: s("Petersen"),
                email: s("j.petersen@nordlicht.example"),
                ..Default::default()
            }),
        })
        .await?
        .into_inner();
    let list = accounts
        .list_accounts(pb::ListAccountsRequest { options: None })
        .await?
        .into_inner();
    output::print_list(
        verbund_core::RecordKind::Account,
        &list
            .accounts
            .iter()
            .map(shown)
            .collect::<Result<Vec<_>>>()?,
        false,
    );

    step("5. an opportunity moves from proposal to negotiation (update with a field mask)");
    let mut opps = pb::opportunity_service_client::OpportunityServiceClient::new(channel.clone());
    let deal = opps
        .create_opportunity(pb::CreateOpportunityRequest {
            opportunity: Some(pb::Opportunity {
                account_id: s(&id_of(&mueller)),
                name: s("Retrofit of press line 3"),
                stage: pb::OpportunityStage::Proposal as i32,
                amount: money(240_000),
                probability: Some(40),
                close_date: s("2027-03-31"),
                next_step: s("Send revised quote"),
                ..Default::default()
            }),
        })
        .await?
        .into_inner();
    let deal = opps
        .update_opportunity(pb::UpdateOpportunityRequest {
            id: id_of(&deal),
            opportunity: Some(pb::Opportunity {
                stage: pb::OpportunityStage::Negotiation as i32,
                probability: Some(60),
                ..Default::default()
            }),
            update_mask: Some(prost_types::FieldMask {
                paths: vec!["stage".into(), "probability".into()],
            }),
        })
        .await?
        .into_inner();
    output::print_record(&shown(&deal)?, false);

    step("6. invalid input is refused with the field named, and nothing changes");
    let bad = opps
        .update_opportunity(pb::UpdateOpportunityRequest {
            id: id_of(&deal),
            opportunity: Some(pb::Opportunity {
                probability: Some(140),
                ..Default::default()
            }),
            update_mask: Some(prost_types::FieldMask {
                paths: vec!["probability".into()],
            }),
        })
        .await;
    match bad {
        Err(status) => println!("{:?}: {}", status.code(), status.message()),
        Ok(_) => bail!("an invalid probability was accepted"),
    }

    step("7. a service case through its lifecycle, with activities");
    let mut cases = pb::service_case_service_client::ServiceCaseServiceClient::new(channel.clone());
    let case = cases
        .create_service_case(pb::CreateServiceCaseRequest {
            service_case: Some(pb::ServiceCase {
                account_id: s(&id_of(&mueller)),
                contact_id: s(&id_of(&anna)),
                subject: s("Hydraulic pressure drops on press line 3"),
                priority: pb::CasePriority::High as i32,
                assigned_org: s("servicepartner"),
                due_date: s("2026-12-04"),
                ..Default::default()
            }),
        })
        .await?
        .into_inner();
    for status in [pb::CaseStatus::Open, pb::CaseStatus::Resolved] {
        cases
            .update_service_case(pb::UpdateServiceCaseRequest {
                id: id_of(&case),
                service_case: Some(pb::ServiceCase {
                    status: status as i32,
                    ..Default::default()
                }),
                update_mask: Some(prost_types::FieldMask {
                    paths: vec!["status".into()],
                }),
            })
            .await?;
    }
    let illegal = cases
        .update_service_case(pb::UpdateServiceCaseRequest {
            id: id_of(&case),
            service_case: Some(pb::ServiceCase {
                status: pb::CaseStatus::New as i32,
                ..Default::default()
            }),
            update_mask: Some(prost_types::FieldMask {
                paths: vec!["status".into()],
            }),
        })
        .await;
    match illegal {
        Err(status) => println!("resolved -> new: {:?}: {}", status.code(), status.message()),
        Ok(_) => bail!("an illegal case transition was accepted"),
    }
    let mut activities = pb::activity_service_client::ActivityServiceClient::new(channel.clone());
    for (channel_kind, subject) in [
        (
            pb::ActivityChannel::Call,
            "Anna reports pressure drops since Monday",
        ),
        (pb::ActivityChannel::Email, "Sent maintenance checklist"),
        (pb::ActivityChannel::Note, "Seal kit replaced on site"),
    ] {
        activities
            .create_activity(pb::CreateActivityRequest {
                activity: Some(pb::Activity {
                    related_id: s(&id_of(&case)),
                    channel: channel_kind as i32,
                    subject: s(subject),
                    ..Default::default()
                }),
            })
            .await?;
    }
    let acts = activities
        .list_activities(pb::ListActivitiesRequest {
            options: None,
            account_id: id_of(&mueller),
            related_id: String::new(),
            channel: 0,
        })
        .await?
        .into_inner();
    output::print_list(
        verbund_core::RecordKind::Activity,
        &acts
            .activities
            .iter()
            .map(shown)
            .collect::<Result<Vec<_>>>()?,
        false,
    );

    step("8. search across names, e-mail addresses, domains and phone numbers");
    let mut search = pb::search_service_client::SearchServiceClient::new(channel.clone());
    for q in ["müller", "0142", "nordlicht.example"] {
        let res = search
            .search(pb::SearchRequest {
                query: q.into(),
                kinds: vec![],
                page_size: 10,
                page_token: String::new(),
            })
            .await?
            .into_inner();
        println!("search {q:?}:");
        let found: Vec<Shown> = res
            .results
            .iter()
            .filter_map(verbund_node::convert::any_record_fields)
            .map(|(kind, fields, meta)| Shown { kind, fields, meta })
            .collect();
        output::print_mixed(&found, false);
    }

    step("9. the change stream (Watch), as an app reacting to changes sees it");
    let mut changes = pb::change_service_client::ChangeServiceClient::new(channel.clone());
    let mut stream = changes
        .watch(pb::WatchRequest {
            after_seq: 0,
            kinds: vec![],
        })
        .await?
        .into_inner();
    let mut last = 0;
    while let Ok(Some(ev)) = tokio::time::timeout(Duration::from_millis(500), stream.next()).await {
        let ev = ev?;
        last = ev.seq;
        output::print_event(&ev, false);
    }
    println!("{last} changes; an app resumes with after_seq={last}");

    federation(
        dir.path(),
        &cfg,
        &endpoint,
        &channel,
        &id_of(&mueller),
        &id_of(&deal),
        &id_of(&anna),
    )
    .await?;

    let _ = stop_tx.send(());
    server.await.context("node task")??;
    if keep {
        let kept = dir.keep();
        println!(
            "\nDemo directory kept at {}; run the node again with:\n  verbund run --config {}",
            kept.display(),
            kept.join("acme/node.toml").display()
        );
    } else {
        println!(
            "\nDemo finished; its temporary directory is removed. (Keep it with: verbund demo --keep)"
        );
    }
    Ok(())
}

mod federation;
mod sync;
use federation::*;
use sync::*;
