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

/// A partner organization of the demo: its own CA and one user certificate of it.
struct DemoOrg {
    name: &'static str,
    ca: verbund_node::pki::CertPair,
}

impl DemoOrg {
    fn new(name: &'static str) -> Result<DemoOrg> {
        Ok(DemoOrg {
            name,
            ca: verbund_node::pki::new_ca(name)?,
        })
    }

    async fn connect(&self, user: &str, endpoint: &str, node_ca: &str) -> Result<Channel> {
        let cert = verbund_node::pki::issue(
            &self.ca,
            self.name,
            verbund_node::identity::PrincipalKind::User,
            user,
            &[],
            &[],
            30,
        )?;
        let id = ClientIdentity {
            ca_pem: node_ca.to_string(),
            cert_and_key: Some((cert.cert_pem, cert.key_pem)),
        };
        connect(endpoint, &id).await
    }
}

fn field_list(fields: &verbund_core::FieldMap) -> String {
    fields.keys().cloned().collect::<Vec<_>>().join(", ")
}

async fn federation(
    base: &std::path::Path,
    cfg: &NodeConfig,
    endpoint: &str,
    channel: &Channel,
    mueller: &str,
    deal: &str,
    anna: &str,
) -> Result<()> {
    let mut admin = pb::admin_service_client::AdminServiceClient::new(channel.clone());
    // globex gets a real organization directory: it runs its own node later (step 17).
    let globex_done = init(&InitArgs {
        org: "globex".into(),
        dir: base.join("globex"),
        name: "node1".into(),
        listen: "127.0.0.1:0".parse()?,
        dns: vec![],
        database_url: None,
    })
    .await?;
    let globex_cfg = NodeConfig::load(&globex_done.config_path)?;
    let globex = DemoOrg {
        name: "globex",
        ca: verbund_node::pki::CertPair {
            cert_pem: globex_cfg.read(&globex_cfg.tls.ca_cert)?,
            key_pem: globex_cfg.read(
                globex_cfg
                    .tls
                    .ca_key
                    .as_deref()
                    .context("globex's config names no CA key")?,
            )?,
        },
    };
    let provider = DemoOrg::new("servicepartner")?;
    let holding = DemoOrg::new("holding")?;

    step("10. three more organizations: a partner company, a service provider, the group holding");
    for org in [&globex, &provider, &holding] {
        let der = verbund_node::pki::parse_certs(&org.ca.cert_pem)?.remove(0);
        admin
            .add_partner(pb::AddPartnerRequest {
                org: org.name.into(),
                ca_pem: org.ca.cert_pem.clone(),
                endpoint: "https://127.0.0.1:9".into(),
                fingerprint: verbund_node::pki::fingerprint(der.as_ref()),
            })
            .await?;
        println!("partner {} pinned by the fingerprint of its CA", org.name);
    }
    // Their roles, as the operator would add them to policy/policy.csv in git.
    let policy_file = cfg.path(&cfg.policy.file);
    let mut text = std::fs::read_to_string(&policy_file)?;
    text.push_str("g2, globex, partner\ng2, servicepartner, supplier\ng2, holding, holding\n");
    std::fs::write(&policy_file, text)?;
    admin.reload_policy(pb::ReloadPolicyRequest {}).await?;
    println!("policy reloaded: globex partner, servicepartner supplier, holding holding");

    step(
        "11. acme shares: the account and the joint deal with globex; rules for cases and the group",
    );
    for (record, org, profile) in [
        (mueller, "globex", "partner-account"),
        (deal, "globex", "joint-deal"),
    ] {
        admin
            .add_share(pb::AddShareRequest {
                record_id: record.into(),
                org: org.into(),
                profile: profile.into(),
            })
            .await?;
        println!("shared {record} with {org} ({profile})");
    }
    for (org, rule, profile) in [
        ("servicepartner", "case-assigned", "supplier-case"),
        ("holding", "account-tag:group", "group"),
    ] {
        admin
            .add_share_rule(pb::AddShareRuleRequest {
                org: org.into(),
                rule: rule.into(),
                profile: profile.into(),
            })
            .await?;
        println!("rule: {rule} with {org} ({profile})");
    }

    let node_ca = cfg.read(&cfg.tls.ca_cert)?;
    step("12. globex (partner company) sees only the agreed fields, and edits the deal's stage");
    let bob = globex.connect("bob", endpoint, &node_ca).await?;
    let mut accounts = pb::account_service_client::AccountServiceClient::new(bob.clone());
    let listed = accounts
        .list_accounts(pb::ListAccountsRequest::default())
        .await?
        .into_inner();
    for a in &listed.accounts {
        println!(
            "globex sees account {:?} with fields: {}",
            a.name.clone().unwrap_or_default(),
            field_list(&a.to_fields()?)
        );
    }
    let mut opps = pb::opportunity_service_client::OpportunityServiceClient::new(bob.clone());
    let updated = opps
        .update_opportunity(pb::UpdateOpportunityRequest {
            id: deal.into(),
            opportunity: Some(pb::Opportunity {
                stage: pb::OpportunityStage::ClosedWon as i32,
                ..Default::default()
            }),
            update_mask: Some(prost_types::FieldMask {
                paths: vec!["stage".into()],
            }),
        })
        .await?
        .into_inner();
    println!(
        "globex set the deal's stage; it sees: {}",
        field_list(&updated.to_fields()?)
    );
    let refused = opps
        .update_opportunity(pb::UpdateOpportunityRequest {
            id: deal.into(),
            opportunity: Some(pb::Opportunity {
                description: s("our margin"),
                ..Default::default()
            }),
            update_mask: Some(prost_types::FieldMask {
                paths: vec!["description".into()],
            }),
        })
        .await;
    match refused {
        Err(e) => println!(
            "globex writing the description: {:?}: {}",
            e.code(),
            e.message()
        ),
        Ok(_) => bail!("the policy let a partner write a field it may not"),
    }

    step("13. servicepartner (supplier) works the case assigned to it, nothing else");
    let mut cases = pb::service_case_service_client::ServiceCaseServiceClient::new(channel.clone());
    let case = cases
        .create_service_case(pb::CreateServiceCaseRequest {
            service_case: Some(pb::ServiceCase {
                account_id: s(mueller),
                contact_id: s(anna),
                subject: s("Annual maintenance of press line 3"),
                priority: pb::CasePriority::Normal as i32,
                assigned_org: s("servicepartner"),
                ..Default::default()
            }),
        })
        .await?
        .into_inner();
    let sam = provider.connect("sam", endpoint, &node_ca).await?;
    let mut sam_cases = pb::service_case_service_client::ServiceCaseServiceClient::new(sam.clone());
    let theirs = sam_cases
        .list_service_cases(pb::ListServiceCasesRequest::default())
        .await?
        .into_inner();
    println!(
        "servicepartner sees {} cases assigned to it",
        theirs.service_cases.len()
    );
    sam_cases
        .update_service_case(pb::UpdateServiceCaseRequest {
            id: id_of(&case),
            service_case: Some(pb::ServiceCase {
                status: pb::CaseStatus::Open as i32,
                ..Default::default()
            }),
            update_mask: Some(prost_types::FieldMask {
                paths: vec!["status".into()],
            }),
        })
        .await?;
    let contact = pb::contact_service_client::ContactServiceClient::new(sam.clone())
        .get_contact(pb::GetRecordRequest { id: anna.into() })
        .await?
        .into_inner();
    println!(
        "it opened the case; of the case's contact it sees: {}",
        field_list(&contact.to_fields()?)
    );

    step("14. holding (group) reads what the subsidiary tags `group`; it cannot write");
    let gina = holding.connect("gina", endpoint, &node_ca).await?;
    let group_view = pb::account_service_client::AccountServiceClient::new(gina.clone())
        .list_accounts(pb::ListAccountsRequest::default())
        .await?
        .into_inner();
    for a in &group_view.accounts {
        println!(
            "holding sees {:?} ({} fields)",
            a.name.clone().unwrap_or_default(),
            a.to_fields()?.len()
        );
    }

    step("15. acme revokes the deal: globex's very next call no longer finds it");
    admin
        .revoke_share(pb::RevokeShareRequest {
            record_id: deal.into(),
            org: "globex".into(),
        })
        .await?;
    match opps
        .get_opportunity(pb::GetRecordRequest { id: deal.into() })
        .await
    {
        Err(e) => println!("globex reading the deal: {:?}", e.code()),
        Ok(_) => bail!("a revoked share still shows the record"),
    }

    step("16. the audit log: every cross-organization access, names not values, hash-chained");
    let log = admin
        .list_audit(pb::ListAuditRequest {
            page_size: 1000,
            ..Default::default()
        })
        .await?
        .into_inner();
    for e in log.entries.iter().rev().take(6).rev() {
        println!(
            "#{} {} {} {} {} [{}] {}",
            e.seq,
            e.principal,
            e.action,
            e.decision,
            e.kind,
            e.fields.join(","),
            e.reason
        );
    }
    let verified = admin
        .verify_audit(pb::VerifyAuditRequest {})
        .await?
        .into_inner();
    if !verified.intact {
        bail!("audit log broken: {}", verified.problem);
    }
    println!(
        "{} entries, chain intact, head {}",
        verified.checked, verified.head_hash
    );
    sync_demo(cfg, endpoint, channel, &globex_cfg, deal).await
}

/// Polls `check` every 20 ms for up to 30 s; returns how long it took.
async fn within<F, Fut>(what: &str, mut check: F) -> Result<Duration>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let started = std::time::Instant::now();
    while started.elapsed() < Duration::from_secs(30) {
        if check().await {
            return Ok(started.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    bail!("{what} did not happen within 30 s")
}

async fn pin(admin: &Channel, org: &str, ca_pem: String, endpoint: &str) -> Result<()> {
    let der = verbund_node::pki::parse_certs(&ca_pem)?.remove(0);
    pb::admin_service_client::AdminServiceClient::new(admin.clone())
        .add_partner(pb::AddPartnerRequest {
            org: org.into(),
            ca_pem,
            endpoint: endpoint.into(),
            fingerprint: verbund_node::pki::fingerprint(der.as_ref()),
        })
        .await?;
    Ok(())
}

async fn sync_demo(
    acme_cfg: &NodeConfig,
    acme_endpoint: &str,
    acme: &Channel,
    globex_cfg: &NodeConfig,
    deal: &str,
) -> Result<()> {
    step("17. globex runs its own node: acme's shared deal is replicated there and kept in step");
    let node = Node::start(globex_cfg).await?;
    let globex_endpoint = format!("https://{}", node.local_addr);
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(node.serve(async {
        let _ = stop_rx.await;
    }));
    let globex = connect(&globex_endpoint, &ClientIdentity::from_config(globex_cfg)?).await?;
    println!("node globex/node1 serving on {globex_endpoint}");
    // acme pinned globex without an endpoint so far; now each node knows where the other is.
    let mut acme_admin = pb::admin_service_client::AdminServiceClient::new(acme.clone());
    acme_admin
        .remove_partner(pb::RemovePartnerRequest {
            org: "globex".into(),
        })
        .await?;
    pin(
        acme,
        "globex",
        globex_cfg.read(&globex_cfg.tls.ca_cert)?,
        &globex_endpoint,
    )
    .await?;
    pin(
        &globex,
        "acme",
        acme_cfg.read(&acme_cfg.tls.ca_cert)?,
        acme_endpoint,
    )
    .await?;
    acme_admin
        .add_share(pb::AddShareRequest {
            record_id: deal.into(),
            org: "globex".into(),
            profile: "joint-deal".into(),
        })
        .await?;
    println!("acme shares the deal with globex again (joint-deal)");
    let mut globex_opps =
        pb::opportunity_service_client::OpportunityServiceClient::new(globex.clone());
    let mut acme_opps = pb::opportunity_service_client::OpportunityServiceClient::new(acme.clone());
    let get = |c: &pb::opportunity_service_client::OpportunityServiceClient<Channel>| {
        let mut c = c.clone();
        let id = deal.to_string();
        async move {
            c.get_opportunity(pb::GetRecordRequest { id })
                .await
                .ok()
                .map(|r| r.into_inner())
        }
    };
    let took = within("the replica to appear at globex", || {
        let g = get(&globex_opps);
        async move { g.await.is_some() }
    })
    .await?;
    let replica = get(&globex_opps).await.context("replica")?;
    println!(
        "replica on globex's node after {} ms, owner {}:",
        took.as_millis(),
        replica
            .meta
            .as_ref()
            .map(|m| m.owner_org.as_str())
            .unwrap_or("?")
    );
    output::print_record(&shown(&replica)?, false);

    let step_text = "Termin bei Müller am Montag";
    globex_opps
        .update_opportunity(pb::UpdateOpportunityRequest {
            id: deal.into(),
            opportunity: Some(pb::Opportunity {
                next_step: s(step_text),
                ..Default::default()
            }),
            update_mask: Some(prost_types::FieldMask {
                paths: vec!["next_step".into()],
            }),
        })
        .await?;
    let took = within("globex's edit to reach acme", || {
        let g = get(&acme_opps);
        async move { g.await.and_then(|o| o.next_step).as_deref() == Some(step_text) }
    })
    .await?;
    println!(
        "globex edited next_step on its own node; acme (the merge point) has it after {} ms",
        took.as_millis()
    );
    acme_opps
        .update_opportunity(pb::UpdateOpportunityRequest {
            id: deal.into(),
            opportunity: Some(pb::Opportunity {
                amount: money(265_000),
                ..Default::default()
            }),
            update_mask: Some(prost_types::FieldMask {
                paths: vec!["amount".into()],
            }),
        })
        .await?;
    let took = within("acme's edit to reach globex", || {
        let g = get(&globex_opps);
        async move { g.await.and_then(|o| o.amount).map(|m| m.minor_units) == Some(26_500_000) }
    })
    .await?;
    println!(
        "acme raised the amount; globex's replica has it after {} ms",
        took.as_millis()
    );
    let status = pb::admin_service_client::AdminServiceClient::new(globex.clone())
        .sync_status(pb::SyncStatusRequest {})
        .await?
        .into_inner();
    for p in &status.partners {
        println!(
            "globex's link to {}: {}, cursor {}, lag {}, outbox {}, replicas {}",
            p.org, p.state, p.cursor, p.lag, p.outbox_depth, p.replicas
        );
    }
    acme_admin
        .revoke_share(pb::RevokeShareRequest {
            record_id: deal.into(),
            org: "globex".into(),
        })
        .await?;
    let took = within("the revoke to reach globex", || {
        let g = get(&globex_opps);
        async move { g.await.is_none() }
    })
    .await?;
    println!(
        "acme revoked the share; globex's copy is gone after {} ms",
        took.as_millis()
    );
    let _ = globex_opps;
    let _ = stop_tx.send(());
    server.await.context("globex node task")??;
    Ok(())
}
