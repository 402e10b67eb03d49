//! The demo's federation part: acme with its partner company, service provider and group
//! holding, each an organization with its own CA, pinned to each other, under the example
//! policy.

use super::*;

/// A partner organization of the demo: its own CA and one user certificate of it.
pub(super) struct DemoOrg {
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

pub(super) async fn federation(
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
        ops_listen: None,
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
