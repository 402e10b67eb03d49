//! The demo's federation part: acme with its partner company, service provider and group
//! holding, each an organization with its own CA, pinned to each other, under the example
//! policy.

use super::*;

/// An organization of the demo with its own running node: its directory, config, endpoint,
/// an admin channel, and what stops the node.
pub(super) struct DemoNode {
    pub org: &'static str,
    pub cfg: NodeConfig,
    pub endpoint: String,
    pub admin: Channel,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<Result<()>>>,
}

/// A free loopback port, so every node's config names the address it really serves on and
/// the CLI can reach it with `--config` (kept running with `--keep-running`).
pub(super) fn free_port() -> Result<std::net::SocketAddr> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(l.local_addr()?)
}

impl DemoNode {
    /// `verbund init` and `verbund run` of one organization in `base/<org>`.
    pub(super) async fn start(base: &std::path::Path, org: &'static str) -> Result<DemoNode> {
        let done = init(&InitArgs {
            org: org.into(),
            dir: base.join(org),
            name: "node1".into(),
            listen: free_port()?,
            // Loopback on a free port: five nodes on one machine must not collide.
            ops_listen: Some(free_port()?),
            dns: vec![],
            database_url: None,
        })
        .await?;
        if org == "holding" {
            // The holding's node keeps the group's consolidated customer view.
            use std::io::Write;
            let mut f = std::fs::OpenOptions::new()
                .append(true)
                .open(&done.config_path)?;
            writeln!(f, "\n[consolidation]\nenabled = true")?;
        }
        let cfg = NodeConfig::load(&done.config_path)?;
        let node = Node::start(&cfg).await?;
        let endpoint = format!("https://{}", node.local_addr);
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(node.serve(async {
            let _ = stop_rx.await;
        }));
        let admin = connect(&endpoint, &ClientIdentity::from_config(&cfg)?).await?;
        Ok(DemoNode {
            org,
            cfg,
            endpoint,
            admin,
            stop: Some(stop_tx),
            task: Some(task),
        })
    }

    pub(super) fn config_path(&self) -> std::path::PathBuf {
        self.cfg.path(std::path::Path::new("node.toml"))
    }

    /// A user certificate of this organization, issued by its CA, to call `endpoint` (which
    /// trusts `node_ca`): how a person of this organization reaches a partner's node directly.
    pub(super) async fn user(&self, user: &str, endpoint: &str, node_ca: &str) -> Result<Channel> {
        let ca = verbund_node::pki::CertPair {
            cert_pem: self.cfg.read(&self.cfg.tls.ca_cert)?,
            key_pem: self.cfg.read(
                self.cfg
                    .tls
                    .ca_key
                    .as_deref()
                    .context("the demo's config names no CA key")?,
            )?,
        };
        let cert = verbund_node::pki::issue(
            &ca,
            self.org,
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

    pub(super) async fn stop(&mut self) -> Result<()> {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            task.await
                .with_context(|| format!("{}'s node task", self.org))??;
        }
        Ok(())
    }
}

/// Registers `b` at `a` and `a` at `b` (CA pinned by its fingerprint, endpoint), both at once:
/// each node's link dials the other as soon as it knows it.
pub(super) async fn pin_both(a: &DemoNode, b: &DemoNode) -> Result<()> {
    let add = |host: &DemoNode, partner: &DemoNode| {
        let mut admin = pb::admin_service_client::AdminServiceClient::new(host.admin.clone());
        let ca_pem = partner.cfg.read(&partner.cfg.tls.ca_cert);
        let (org, endpoint) = (partner.org, partner.endpoint.clone());
        async move {
            let ca_pem = ca_pem?;
            let der = verbund_node::pki::parse_certs(&ca_pem)?.remove(0);
            admin
                .add_partner(pb::AddPartnerRequest {
                    org: org.into(),
                    ca_pem,
                    endpoint,
                    fingerprint: verbund_node::pki::fingerprint(der.as_ref()),
                })
                .await?;
            anyhow::Ok(())
        }
    };
    let (x, y) = tokio::join!(add(a, b), add(b, a));
    x?;
    y?;
    Ok(())
}

fn field_list(fields: &verbund_core::FieldMap) -> String {
    fields.keys().cloned().collect::<Vec<_>>().join(", ")
}

pub(super) async fn federation(
    base: &std::path::Path,
    acme: &DemoNode,
    mueller: &str,
    deal: &str,
    anna: &str,
) -> Result<Vec<DemoNode>> {
    let cfg = &acme.cfg;
    let endpoint = acme.endpoint.as_str();
    let channel = &acme.admin;
    let mut admin = pb::admin_service_client::AdminServiceClient::new(channel.clone());

    step(
        "10. three more organizations, each running its own node: a partner company, a service provider, the group holding",
    );
    hint(&format!(
        "verbund init --org globex --dir {0}/globex && verbund run --config {0}/globex/node.toml   (likewise servicepartner, holding)",
        base.display()
    ));
    let mut others = Vec::new();
    for org in ["globex", "servicepartner", "holding"] {
        let node = DemoNode::start(base, org).await?;
        println!("node {org}/node1 serving on {}", node.endpoint);
        others.push(node);
    }
    hint(
        "verbund ca export --config globex/node.toml   (then, at acme:) verbund partner add --org globex --ca globex-ca.pem --endpoint https://… --fingerprint … --config acme/node.toml   (and the same the other way)",
    );
    for other in &others {
        pin_both(acme, other).await?;
        println!(
            "acme and {} pinned each other's CA by its fingerprint",
            other.org
        );
    }
    let (globex, provider, holding) = (&others[0], &others[1], &others[2]);
    // Their roles, as the operator would add them to policy/policy.csv in git.
    let policy_file = cfg.path(&cfg.policy.file);
    let mut text = std::fs::read_to_string(&policy_file)?;
    text.push_str("g2, globex, partner\ng2, servicepartner, supplier\ng2, holding, holding\n");
    std::fs::write(&policy_file, text)?;
    admin.reload_policy(pb::ReloadPolicyRequest {}).await?;
    hint(
        "add the g2 lines to acme/policy/policy.csv, then: verbund policy reload --config acme/node.toml",
    );
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
        hint(&format!(
            "verbund share add --record {record} --org {org} --profile {profile} --config acme/node.toml"
        ));
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
        hint(&format!(
            "verbund share rule add --org {org} --rule {rule} --profile {profile} --config acme/node.toml"
        ));
    }

    let node_ca = cfg.read(&cfg.tls.ca_cert)?;
    step("12. globex (partner company) sees only the agreed fields, and edits the deal's stage");
    hint("a globex user may also call acme's node directly, with a certificate of globex's CA");
    let bob = globex.user("bob", endpoint, &node_ca).await?;
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

    step(
        "13. servicepartner (supplier) works the case assigned to it on its own node; the status syncs back",
    );
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
    let case_id = id_of(&case);
    let mut sam_cases =
        pb::service_case_service_client::ServiceCaseServiceClient::new(provider.admin.clone());
    let took = within("the assigned case to reach servicepartner's node", || {
        let mut c = sam_cases.clone();
        let id = case_id.clone();
        async move {
            c.get_service_case(pb::GetRecordRequest { id })
                .await
                .is_ok()
        }
    })
    .await?;
    let theirs = sam_cases
        .list_service_cases(pb::ListServiceCasesRequest::default())
        .await?
        .into_inner();
    println!(
        "servicepartner's node holds the {} cases assigned to it (the new one after {} ms), nothing else",
        theirs.service_cases.len(),
        took.as_millis()
    );
    hint("verbund case list --config servicepartner/node.toml");
    sam_cases
        .update_service_case(pb::UpdateServiceCaseRequest {
            id: case_id.clone(),
            service_case: Some(pb::ServiceCase {
                status: pb::CaseStatus::Open as i32,
                ..Default::default()
            }),
            update_mask: Some(prost_types::FieldMask {
                paths: vec!["status".into()],
            }),
        })
        .await?;
    hint(&format!(
        "verbund case update {case_id} status=open --config servicepartner/node.toml"
    ));
    let took = within("servicepartner's status to reach acme", || {
        let mut c = cases.clone();
        let id = case_id.clone();
        async move {
            c.get_service_case(pb::GetRecordRequest { id })
                .await
                .is_ok_and(|r| r.into_inner().status == pb::CaseStatus::Open as i32)
        }
    })
    .await?;
    println!(
        "servicepartner opened the case on its own node; acme has the status after {} ms",
        took.as_millis()
    );
    let contact = pb::contact_service_client::ContactServiceClient::new(provider.admin.clone())
        .get_contact(pb::GetRecordRequest { id: anna.into() })
        .await;
    match contact {
        Ok(c) => println!(
            "of the case's contact, servicepartner's node holds: {}",
            field_list(&c.into_inner().to_fields()?)
        ),
        Err(e) => println!(
            "the case's contact is not on servicepartner's node: {:?}",
            e.code()
        ),
    }

    step(
        "14. holding (group) holds what the subsidiary tags `group` on its own node; it cannot write",
    );
    let mut group_accounts =
        pb::account_service_client::AccountServiceClient::new(holding.admin.clone());
    let mueller_id = mueller.to_string();
    within("the group's account to reach the holding's node", || {
        let mut c = group_accounts.clone();
        let id = mueller_id.clone();
        async move { c.get_account(pb::GetRecordRequest { id }).await.is_ok() }
    })
    .await?;
    let group_view = group_accounts
        .list_accounts(pb::ListAccountsRequest::default())
        .await?
        .into_inner();
    for a in &group_view.accounts {
        println!(
            "holding's node holds {:?} ({} fields)",
            a.name.clone().unwrap_or_default(),
            a.to_fields()?.len()
        );
    }
    hint("verbund account list --config holding/node.toml");
    let refused = group_accounts
        .update_account(pb::UpdateAccountRequest {
            id: mueller.into(),
            account: Some(pb::Account {
                city: s("Berlin"),
                ..Default::default()
            }),
            update_mask: Some(prost_types::FieldMask {
                paths: vec!["city".into()],
            }),
        })
        .await;
    match refused {
        Err(e) => println!("holding editing the city: {:?}: {}", e.code(), e.message()),
        Ok(_) => bail!("the holding could edit a subsidiary's account"),
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
    hint(&format!(
        "verbund share revoke --record {deal} --org globex --config acme/node.toml"
    ));
    let globex_opps =
        pb::opportunity_service_client::OpportunityServiceClient::new(globex.admin.clone());
    let took = within("globex's node to drop its copy", || {
        let mut c = globex_opps.clone();
        let id = deal.to_string();
        async move {
            c.get_opportunity(pb::GetRecordRequest { id })
                .await
                .is_err()
        }
    })
    .await?;
    println!(
        "globex's own node dropped its copy after {} ms",
        took.as_millis()
    );

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
    sync_demo(acme, globex, deal).await?;
    let logistics = group_demo(base, acme, holding, mueller).await?;
    others.push(logistics);
    Ok(others)
}
