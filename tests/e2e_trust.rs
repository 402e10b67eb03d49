//! Federation trust end to end: partner registry with pinned anchors, per-organization
//! verification of client certificates, partner principals on the client API.

mod support;

/// Calls a client makes through a certificate renewal or CA rollover, at least.
const MIN_CALLS: u32 = 60;

use support::{TestNode, stderr, stdout, verbund};
use tonic::Code;
use verbund_node::client::{ClientIdentity, connect};
use verbund_node::identity::PrincipalKind;
use verbund_node::pb;
use verbund_node::pki;

/// One record of every kind on a node (ids: account, contact, lead, opportunity, case, activity).
async fn every_kind(ch: &tonic::transport::Channel) -> Vec<String> {
    let s = |v: &str| Some(v.to_string());
    let id = |m: Option<pb::RecordMeta>| m.unwrap().id;
    let acc = pb::account_service_client::AccountServiceClient::new(ch.clone())
        .create_account(pb::CreateAccountRequest {
            account: Some(pb::Account {
                name: s("Every Kind AG"),
                ..Default::default()
            }),
        })
        .await
        .unwrap()
        .into_inner();
    let acc_id = id(acc.meta);
    let contact = pb::contact_service_client::ContactServiceClient::new(ch.clone())
        .create_contact(pb::CreateContactRequest {
            contact: Some(pb::Contact {
                account_id: s(&acc_id),
                last_name: s("Kind"),
                ..Default::default()
            }),
        })
        .await
        .unwrap()
        .into_inner();
    let lead = pb::lead_service_client::LeadServiceClient::new(ch.clone())
        .create_lead(pb::CreateLeadRequest {
            lead: Some(pb::Lead {
                company: s("Lead GmbH"),
                ..Default::default()
            }),
        })
        .await
        .unwrap()
        .into_inner();
    let opp = pb::opportunity_service_client::OpportunityServiceClient::new(ch.clone())
        .create_opportunity(pb::CreateOpportunityRequest {
            opportunity: Some(pb::Opportunity {
                account_id: s(&acc_id),
                name: s("Deal"),
                stage: pb::OpportunityStage::Proposal as i32,
                ..Default::default()
            }),
        })
        .await
        .unwrap()
        .into_inner();
    let case = pb::service_case_service_client::ServiceCaseServiceClient::new(ch.clone())
        .create_service_case(pb::CreateServiceCaseRequest {
            service_case: Some(pb::ServiceCase {
                account_id: s(&acc_id),
                subject: s("Case"),
                ..Default::default()
            }),
        })
        .await
        .unwrap()
        .into_inner();
    let case_id = id(case.meta);
    let act = pb::activity_service_client::ActivityServiceClient::new(ch.clone())
        .create_activity(pb::CreateActivityRequest {
            activity: Some(pb::Activity {
                related_id: s(&case_id),
                channel: pb::ActivityChannel::Note as i32,
                ..Default::default()
            }),
        })
        .await
        .unwrap()
        .into_inner();
    vec![
        acc_id,
        id(contact.meta),
        id(lead.meta),
        id(opp.meta),
        case_id,
        id(act.meta),
    ]
}

/// `verbund ca export` of a node: (PEM file path, fingerprint).
fn export_ca(node: &TestNode) -> (std::path::PathBuf, String) {
    let o = verbund(&["ca", "export", "--config", node.config().to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    let fingerprint = stderr(&o).rsplit(": ").next().unwrap().trim().to_string();
    assert_eq!(fingerprint.len(), 64, "{}", stderr(&o));
    let path = node.home().join(format!("exported-{}.crt", node.org));
    std::fs::write(&path, stdout(&o)).unwrap();
    (path, fingerprint)
}

fn add_partner(host: &TestNode, partner: &TestNode, fingerprint: &str) -> std::process::Output {
    let (ca, _) = export_ca(partner);
    host.cli(&[
        "partner",
        "add",
        "--org",
        &partner.org,
        "--ca",
        ca.to_str().unwrap(),
        "--endpoint",
        &partner.endpoint,
        "--fingerprint",
        fingerprint,
    ])
}

/// A client of `partner` (its certificate) talking to `host` (verifying host's CA).
fn partner_client(host: &TestNode, cert: &pki::CertPair) -> ClientIdentity {
    ClientIdentity {
        ca_pem: host.ca_pem(),
        cert_and_key: Some((cert.cert_pem.clone(), cert.key_pem.clone())),
    }
}

async fn call_fails(host: &TestNode, id: &ClientIdentity) -> bool {
    match connect(&host.endpoint, id).await {
        Err(_) => true,
        Ok(ch) => pb::node_service_client::NodeServiceClient::new(ch)
            .who_am_i(pb::WhoAmIRequest {})
            .await
            .is_err(),
    }
}

#[tokio::test]
async fn partner_add_refuses_a_fingerprint_that_does_not_match() {
    let acme = TestNode::start("acme");
    let globex = TestNode::start("globex");
    let (_, fingerprint) = export_ca(&globex);
    let wrong = fingerprint.chars().rev().collect::<String>();
    let o = add_partner(&acme, &globex, &wrong);
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("INVALID_ARGUMENT: fingerprint"),
        "{}",
        stderr(&o)
    );
    let o = acme.cli(&["partner", "list", "--json"]);
    assert_eq!(stdout(&o).trim(), "[]", "nothing was trusted");
    // Separators and case do not matter; the right fingerprint pins the partner.
    let spaced: String = fingerprint
        .to_uppercase()
        .as_bytes()
        .chunks(2)
        .map(|c| String::from_utf8_lossy(c).into_owned())
        .collect::<Vec<_>>()
        .join(":");
    let o = add_partner(&acme, &globex, &spaced);
    assert!(o.status.success(), "{}", stderr(&o));
    let o = acme.cli(&["partner", "list"]);
    assert!(
        stdout(&o).contains("globex")
            && stdout(&o).contains(&fingerprint)
            && stdout(&o).contains("active"),
        "{}",
        stdout(&o)
    );
    let o = add_partner(&acme, &globex, &fingerprint);
    assert!(stderr(&o).contains("ALREADY_EXISTS"), "{}", stderr(&o));
    // Our own organization, bad ids and bad endpoints are refused.
    let (ca, fp) = export_ca(&acme);
    let o = acme.cli(&[
        "partner",
        "add",
        "--org",
        "acme",
        "--ca",
        ca.to_str().unwrap(),
        "--endpoint",
        "https://x.example:1",
        "--fingerprint",
        &fp,
    ]);
    assert!(
        stderr(&o).contains("INVALID_ARGUMENT: org"),
        "{}",
        stderr(&o)
    );
    let o = acme.cli(&[
        "partner",
        "add",
        "--org",
        "Not Valid",
        "--ca",
        ca.to_str().unwrap(),
        "--endpoint",
        "https://x.example:1",
        "--fingerprint",
        &fp,
    ]);
    assert!(
        stderr(&o).contains("INVALID_ARGUMENT: org"),
        "{}",
        stderr(&o)
    );
    let o = acme.cli(&[
        "partner",
        "add",
        "--org",
        "initech",
        "--ca",
        ca.to_str().unwrap(),
        "--endpoint",
        "ftp://x",
        "--fingerprint",
        &fp,
    ]);
    assert!(
        stderr(&o).contains("INVALID_ARGUMENT: endpoint"),
        "{}",
        stderr(&o)
    );
}

#[tokio::test]
async fn a_partner_principal_sees_nothing_and_may_write_nothing() {
    let acme = TestNode::start("acme");
    let globex = TestNode::start("globex");
    // Before it is pinned, globex's admin is refused at the handshake.
    let globex_admin = pki::CertPair {
        cert_pem: globex.admin_identity().cert_and_key.unwrap().0,
        key_pem: globex.admin_identity().cert_and_key.unwrap().1,
    };
    assert!(call_fails(&acme, &partner_client(&acme, &globex_admin)).await);
    let (_, fp) = export_ca(&globex);
    assert!(add_partner(&acme, &globex, &fp).status.success());

    // Own data on acme.
    let own = acme.admin().await;
    let mut accounts = pb::account_service_client::AccountServiceClient::new(own.clone());
    let acc = accounts
        .create_account(pb::CreateAccountRequest {
            account: Some(pb::Account {
                name: Some("Secret AG".into()),
                ..Default::default()
            }),
        })
        .await
        .unwrap()
        .into_inner();
    let acc_id = acc.meta.unwrap().id;
    let mut contacts = pb::contact_service_client::ContactServiceClient::new(own.clone());
    let contact = contacts
        .create_contact(pb::CreateContactRequest {
            contact: Some(pb::Contact {
                account_id: Some(acc_id.clone()),
                last_name: Some("Weber".into()),
                ..Default::default()
            }),
        })
        .await
        .unwrap()
        .into_inner();
    let contact_id = contact.meta.unwrap().id;

    // globex's admin, a partner principal, calls acme's client API directly.
    let ch = connect(&acme.endpoint, &partner_client(&acme, &globex_admin))
        .await
        .unwrap();
    let who = pb::node_service_client::NodeServiceClient::new(ch.clone())
        .who_am_i(pb::WhoAmIRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (
            who.org.as_str(),
            who.kind.as_str(),
            who.name.as_str(),
            who.node_org.as_str()
        ),
        ("globex", "user", "admin", "acme")
    );
    let mut a = pb::account_service_client::AccountServiceClient::new(ch.clone());
    let mut c = pb::contact_service_client::ContactServiceClient::new(ch.clone());
    // Reads of records it has no share of: NOT_FOUND, exactly like a missing record.
    let e = a
        .get_account(pb::GetRecordRequest { id: acc_id.clone() })
        .await
        .unwrap_err();
    let missing = a
        .get_account(pb::GetRecordRequest {
            id: uuid::Uuid::now_v7().to_string(),
        })
        .await
        .unwrap_err();
    assert_eq!((e.code(), missing.code()), (Code::NotFound, Code::NotFound));
    assert_eq!(
        c.get_contact(pb::GetRecordRequest {
            id: contact_id.clone()
        })
        .await
        .unwrap_err()
        .code(),
        Code::NotFound
    );
    assert!(
        a.list_accounts(pb::ListAccountsRequest { options: None })
            .await
            .unwrap()
            .into_inner()
            .accounts
            .is_empty()
    );
    let hits = pb::search_service_client::SearchServiceClient::new(ch.clone())
        .search(pb::SearchRequest {
            query: "secret".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(hits.results.is_empty());
    // Creates and deletes: PERMISSION_DENIED; updates of unshared records: NOT_FOUND.
    let e = a
        .create_account(pb::CreateAccountRequest {
            account: Some(pb::Account {
                name: Some("X".into()),
                ..Default::default()
            }),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied);
    let e = a
        .update_account(pb::UpdateAccountRequest {
            id: acc_id.clone(),
            account: Some(pb::Account {
                name: Some("Mine".into()),
                ..Default::default()
            }),
            update_mask: Some(prost_types::FieldMask {
                paths: vec!["name".into()],
            }),
        })
        .await
        .unwrap_err();
    // An update of a record not shared with the caller: as if the record did not exist.
    assert_eq!(e.code(), Code::NotFound);
    assert_eq!(
        c.delete_contact(pb::DeleteRecordRequest {
            id: contact_id.clone()
        })
        .await
        .unwrap_err()
        .code(),
        Code::PermissionDenied
    );
    // Every record RPC that takes an id, for every kind: NOT_FOUND for reads, PERMISSION_DENIED
    // for writes, for records that exist on acme but are not shared with globex.
    let ids = every_kind(&own).await;
    let get = |id: &str| pb::GetRecordRequest { id: id.to_string() };
    let del = |id: &str| pb::DeleteRecordRequest { id: id.to_string() };
    let m = |f: &str| {
        Some(prost_types::FieldMask {
            paths: vec![f.to_string()],
        })
    };
    let mut x_leads = pb::lead_service_client::LeadServiceClient::new(ch.clone());
    let mut x_opps = pb::opportunity_service_client::OpportunityServiceClient::new(ch.clone());
    let mut x_cases = pb::service_case_service_client::ServiceCaseServiceClient::new(ch.clone());
    let mut x_acts = pb::activity_service_client::ActivityServiceClient::new(ch.clone());
    let codes = [
        a.get_account(get(&ids[0])).await.map(|_| ()),
        c.get_contact(get(&ids[1])).await.map(|_| ()),
        x_leads.get_lead(get(&ids[2])).await.map(|_| ()),
        x_opps.get_opportunity(get(&ids[3])).await.map(|_| ()),
        x_cases.get_service_case(get(&ids[4])).await.map(|_| ()),
        x_acts.get_activity(get(&ids[5])).await.map(|_| ()),
    ];
    for (i, r) in codes.into_iter().enumerate() {
        assert_eq!(r.unwrap_err().code(), Code::NotFound, "get of kind #{i}");
    }
    let writes = [
        a.update_account(pb::UpdateAccountRequest {
            id: ids[0].clone(),
            account: Some(pb::Account::default()),
            update_mask: m("city"),
        })
        .await
        .map(|_| ()),
        a.delete_account(del(&ids[0])).await.map(|_| ()),
        c.update_contact(pb::UpdateContactRequest {
            id: ids[1].clone(),
            contact: Some(pb::Contact::default()),
            update_mask: m("title"),
        })
        .await
        .map(|_| ()),
        c.delete_contact(del(&ids[1])).await.map(|_| ()),
        x_leads
            .update_lead(pb::UpdateLeadRequest {
                id: ids[2].clone(),
                lead: Some(pb::Lead::default()),
                update_mask: m("source"),
            })
            .await
            .map(|_| ()),
        x_leads.delete_lead(del(&ids[2])).await.map(|_| ()),
        x_opps
            .update_opportunity(pb::UpdateOpportunityRequest {
                id: ids[3].clone(),
                opportunity: Some(pb::Opportunity::default()),
                update_mask: m("next_step"),
            })
            .await
            .map(|_| ()),
        x_opps.delete_opportunity(del(&ids[3])).await.map(|_| ()),
        x_cases
            .update_service_case(pb::UpdateServiceCaseRequest {
                id: ids[4].clone(),
                service_case: Some(pb::ServiceCase::default()),
                update_mask: m("due_date"),
            })
            .await
            .map(|_| ()),
        x_cases.delete_service_case(del(&ids[4])).await.map(|_| ()),
        x_acts
            .update_activity(pb::UpdateActivityRequest {
                id: ids[5].clone(),
                activity: Some(pb::Activity::default()),
                update_mask: m("body"),
            })
            .await
            .map(|_| ()),
        x_acts.delete_activity(del(&ids[5])).await.map(|_| ()),
    ];
    // Updates (even) writes: NOT_FOUND, as if the record did not exist; deletes (odd):
    // PERMISSION_DENIED, which partners get for every delete, shared or not.
    for (i, r) in writes.into_iter().enumerate() {
        let expected = if i % 2 == 0 {
            Code::NotFound
        } else {
            Code::PermissionDenied
        };
        assert_eq!(r.unwrap_err().code(), expected, "write #{i}");
    }
    // Administration is for acme only.
    let e = pb::admin_service_client::AdminServiceClient::new(ch)
        .list_partners(pb::ListPartnersRequest {})
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied);
    // Nothing changed.
    let still = accounts
        .get_account(pb::GetRecordRequest { id: acc_id })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(still.name.as_deref(), Some("Secret AG"));
}

#[tokio::test]
async fn a_partner_ca_can_never_mint_identities_of_others() {
    let acme = TestNode::start("acme");
    let globex = TestNode::start("globex");
    let initech = TestNode::start("initech");
    for p in [&globex, &initech] {
        let (_, fp) = export_ca(p);
        assert!(add_partner(&acme, p, &fp).status.success());
    }
    let globex_ca = globex.ca_pair();
    // Good case: a globex user minted by globex's CA.
    let good = pki::issue(
        &globex_ca,
        "globex",
        PrincipalKind::User,
        "bob",
        &[],
        &[],
        30,
    )
    .unwrap();
    assert!(
        !call_fails(&acme, &partner_client(&acme, &good)).await,
        "a valid partner certificate must work"
    );
    // globex's CA claiming another partner, or claiming us.
    let as_initech = pki::issue(
        &globex_ca,
        "initech",
        PrincipalKind::User,
        "mallory",
        &[],
        &[],
        30,
    )
    .unwrap();
    assert!(
        call_fails(&acme, &partner_client(&acme, &as_initech)).await,
        "globex minted an initech identity"
    );
    let as_acme = pki::issue(
        &globex_ca,
        "acme",
        PrincipalKind::User,
        "admin",
        &[],
        &[],
        30,
    )
    .unwrap();
    assert!(
        call_fails(&acme, &partner_client(&acme, &as_acme)).await,
        "globex minted an acme identity"
    );
    // A CA certificate used as a client certificate is refused.
    assert!(
        call_fails(&acme, &partner_client(&acme, &globex_ca)).await,
        "a CA certificate was accepted as a leaf"
    );
    // An unknown organization's CA is refused.
    let stranger = pki::new_ca("umbrella").unwrap();
    let unknown = pki::issue(
        &stranger,
        "umbrella",
        PrincipalKind::User,
        "x",
        &[],
        &[],
        30,
    )
    .unwrap();
    assert!(call_fails(&acme, &partner_client(&acme, &unknown)).await);
}

#[tokio::test]
async fn removing_a_partner_refuses_its_new_connections() {
    let acme = TestNode::start("acme");
    let globex = TestNode::start("globex");
    let (_, fp) = export_ca(&globex);
    assert!(add_partner(&acme, &globex, &fp).status.success());
    let bob = pki::issue(
        &globex.ca_pair(),
        "globex",
        PrincipalKind::User,
        "bob",
        &[],
        &[],
        30,
    )
    .unwrap();
    assert!(!call_fails(&acme, &partner_client(&acme, &bob)).await);
    let o = acme.cli(&["partner", "remove", "--org", "globex"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        call_fails(&acme, &partner_client(&acme, &bob)).await,
        "a removed partner connected again"
    );
    let o = acme.cli(&["partner", "remove", "--org", "globex"]);
    assert!(stderr(&o).contains("NOT_FOUND"), "{}", stderr(&o));
    // The registry survives a restart; re-adding restores access.
    assert!(add_partner(&acme, &globex, &fp).status.success());
    let mut acme = acme;
    acme.restart();
    assert!(!call_fails(&acme, &partner_client(&acme, &bob)).await);
}

/// A certificate signed by `ca` with exactly the given SANs and validity, for the cases
/// `verbund` itself never issues.
fn mint(
    ca: &pki::CertPair,
    sans: Vec<rcgen::SanType>,
    not_before: time::OffsetDateTime,
    not_after: time::OffsetDateTime,
) -> pki::CertPair {
    let issuer = rcgen::Issuer::from_ca_cert_pem(
        &ca.cert_pem,
        rcgen::KeyPair::from_pem(&ca.key_pem).unwrap(),
    )
    .unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::default();
    params.subject_alt_names = sans;
    params.not_before = not_before;
    params.not_after = not_after;
    params.is_ca = rcgen::IsCa::ExplicitNoCa;
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    params.use_authority_key_identifier_extension = true;
    let cert = params.signed_by(&key, &issuer).unwrap();
    pki::CertPair {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    }
}

fn uri(u: &str) -> rcgen::SanType {
    rcgen::SanType::URI(u.try_into().unwrap())
}

#[tokio::test]
async fn malformed_expired_and_premature_partner_certificates_are_refused() {
    let acme = TestNode::start("acme");
    let globex = TestNode::start("globex");
    let (_, fp) = export_ca(&globex);
    assert!(add_partner(&acme, &globex, &fp).status.success());
    let ca = globex.ca_pair();
    let now = time::OffsetDateTime::now_utc();
    let day = time::Duration::days(1);
    // The good case, minted the same way, works.
    let good = mint(
        &ca,
        vec![uri("verbund://globex/user/bob")],
        now - day,
        now + day,
    );
    assert!(
        !call_fails(&acme, &partner_client(&acme, &good)).await,
        "the well-formed certificate must work"
    );
    let two = mint(
        &ca,
        vec![
            uri("verbund://globex/user/bob"),
            uri("verbund://globex/user/eve"),
        ],
        now - day,
        now + day,
    );
    assert!(
        call_fails(&acme, &partner_client(&acme, &two)).await,
        "two URI SANs were accepted"
    );
    let none = mint(
        &ca,
        vec![rcgen::SanType::DnsName(
            "bob.globex.example".try_into().unwrap(),
        )],
        now - day,
        now + day,
    );
    assert!(
        call_fails(&acme, &partner_client(&acme, &none)).await,
        "a certificate without URI SAN was accepted"
    );
    let expired = mint(
        &ca,
        vec![uri("verbund://globex/user/bob")],
        now - day * 10,
        now - day,
    );
    assert!(
        call_fails(&acme, &partner_client(&acme, &expired)).await,
        "an expired certificate was accepted"
    );
    let premature = mint(
        &ca,
        vec![uri("verbund://globex/user/bob")],
        now + day,
        now + day * 10,
    );
    assert!(
        call_fails(&acme, &partner_client(&acme, &premature)).await,
        "a not-yet-valid certificate was accepted"
    );
    let bad_uri = mint(
        &ca,
        vec![uri("verbund://globex/admin/bob")],
        now - day,
        now + day,
    );
    assert!(
        call_fails(&acme, &partner_client(&acme, &bad_uri)).await,
        "a malformed principal URI was accepted"
    );
}

/// Polls `check` for up to 10 s (a signal is handled asynchronously by the node).
async fn eventually<F, Fut>(mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    for _ in 0..100 {
        if check().await {
            return true;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    false
}

#[tokio::test]
async fn a_revoked_certificate_is_refused_and_a_malformed_crl_never_replaces_a_good_one() {
    let acme = TestNode::start("acme");
    let config = acme.config();
    let config = config.to_str().unwrap();
    for user in ["bob", "carol"] {
        assert!(
            verbund(&["cert", "issue", "--config", config, "--user", user])
                .status
                .success()
        );
    }
    let bob = acme.identity_of("bob");
    let carol = acme.identity_of("carol");
    assert!(!call_fails(&acme, &bob).await);
    // Revoke bob by file, carol by serial.
    let o = verbund(&[
        "cert",
        "revoke",
        "--config",
        config,
        acme.home().join("users/bob.crt").to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let carol_serial = hex_serial(&acme.home().join("users/carol.crt"));
    let o = verbund(&["cert", "revoke", "--config", config, &carol_serial]);
    assert!(o.status.success(), "{}", stderr(&o));
    let o = verbund(&["crl", "export", "--config", config]);
    assert!(stdout(&o).contains("BEGIN X509 CRL"), "{}", stdout(&o));
    // Until the node reloads, the old (empty) list applies; after SIGHUP both are refused.
    acme.hup();
    assert!(
        eventually(|| call_fails(&acme, &bob)).await,
        "a revoked certificate was still accepted"
    );
    assert!(
        call_fails(&acme, &carol).await,
        "a certificate revoked by serial was still accepted"
    );
    assert!(
        !call_fails(&acme, &acme.admin_identity()).await,
        "the admin must still get in"
    );
    // A certificate of another CA cannot be revoked here.
    let stranger = pki::new_ca("umbrella").unwrap();
    let foreign = pki::issue(
        &stranger,
        "umbrella",
        PrincipalKind::User,
        "x",
        &[],
        &[],
        30,
    )
    .unwrap();
    let foreign_path = acme.home().join("foreign.crt");
    std::fs::write(&foreign_path, &foreign.cert_pem).unwrap();
    assert!(
        !verbund(&[
            "cert",
            "revoke",
            "--config",
            config,
            foreign_path.to_str().unwrap()
        ])
        .status
        .success()
    );
    // A malformed list is refused on reload; the node keeps serving with the last good list.
    std::fs::write(
        acme.home().join("ca/crl.pem"),
        "-----BEGIN X509 CRL-----\nbm90IGEgY3Js\n-----END X509 CRL-----\n",
    )
    .unwrap();
    acme.hup();
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    assert!(
        !call_fails(&acme, &acme.admin_identity()).await,
        "the node must keep serving"
    );
    assert!(
        call_fails(&acme, &bob).await,
        "the last good revocation list must stay in force"
    );
    // And the CLI refuses to extend a malformed list rather than silently starting over.
    let dave_serial = "0a0b0c";
    assert!(
        !verbund(&["cert", "revoke", "--config", config, dave_serial])
            .status
            .success()
    );
}

fn hex_serial(cert: &std::path::Path) -> String {
    let pem = std::fs::read_to_string(cert).unwrap();
    pki::serial_of(&pem)
        .unwrap()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[tokio::test]
async fn a_partner_removed_while_connected_loses_its_open_connection_within_the_max_age() {
    let mut acme = TestNode::start("acme");
    // A short maximum connection age for the test.
    acme.kill();
    let toml = std::fs::read_to_string(acme.config()).unwrap().replace(
        "max_connection_age_secs = 600",
        "max_connection_age_secs = 2",
    );
    std::fs::write(acme.config(), toml).unwrap();
    acme.run();
    let globex = TestNode::start("globex");
    let (_, fp) = export_ca(&globex);
    assert!(add_partner(&acme, &globex, &fp).status.success());
    let bob = pki::issue(
        &globex.ca_pair(),
        "globex",
        PrincipalKind::User,
        "bob",
        &[],
        &[],
        30,
    )
    .unwrap();
    let ch = connect(&acme.endpoint, &partner_client(&acme, &bob))
        .await
        .unwrap();
    let mut node = pb::node_service_client::NodeServiceClient::new(ch);
    assert!(node.who_am_i(pb::WhoAmIRequest {}).await.is_ok());
    // The contact shows in the partner list.
    let listed = stdout(&acme.cli(&["partner", "list", "--json"]));
    assert!(
        !listed.contains("\"never\""),
        "last contact not recorded: {listed}"
    );
    assert!(
        acme.cli(&["partner", "remove", "--org", "globex"])
            .status
            .success()
    );
    // The open connection is closed within the maximum age, and reconnecting is refused.
    let mut refused = false;
    for _ in 0..60 {
        if node.who_am_i(pb::WhoAmIRequest {}).await.is_err() {
            refused = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(
        refused,
        "a removed partner kept its open connection beyond the maximum connection age"
    );
}

#[tokio::test]
async fn dialing_a_partner_refuses_a_man_in_the_middle_with_another_partners_valid_certificate() {
    let acme = TestNode::start("acme");
    let globex = TestNode::start("globex");
    let initech = TestNode::start("initech");
    // Mutual pinning: acme trusts globex and initech; both trust acme.
    let (_, acme_fp) = export_ca(&acme);
    for p in [&globex, &initech] {
        let (_, fp) = export_ca(p);
        assert!(add_partner(&acme, p, &fp).status.success());
        assert!(add_partner(p, &acme, &acme_fp).status.success());
    }
    let o = acme.cli(&["partner", "ping", "--org", "globex"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stdout(&o).contains("partner node globex/node1")
            && stdout(&o).contains("verbund://acme/node/node1"),
        "{}",
        stdout(&o)
    );
    // globex's entry now points at initech's node (DNS hijack, a proxy): initech's certificate
    // is valid, but for initech, so acme must refuse to talk.
    let (globex_ca, fp) = export_ca(&globex);
    assert!(
        acme.cli(&["partner", "remove", "--org", "globex"])
            .status
            .success()
    );
    let o = acme.cli(&[
        "partner",
        "add",
        "--org",
        "globex",
        "--ca",
        globex_ca.to_str().unwrap(),
        "--endpoint",
        &initech.endpoint,
        "--fingerprint",
        &fp,
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let o = acme.cli(&["partner", "ping", "--org", "globex"]);
    assert!(
        !o.status.success(),
        "acme talked to initech believing it was globex: {}",
        stdout(&o)
    );
    assert!(
        stderr(&o).contains("FAILED_PRECONDITION")
            && stderr(&o).contains("cannot reach partner globex"),
        "{}",
        stderr(&o)
    );
    eprintln!("refusal as the operator sees it: {}", stderr(&o));
    // And initech itself is still reachable as initech.
    assert!(
        acme.cli(&["partner", "ping", "--org", "initech"])
            .status
            .success()
    );
}

#[tokio::test]
async fn a_partners_revocation_list_refuses_its_revoked_certificates() {
    let acme = TestNode::start("acme");
    let globex = TestNode::start("globex");
    let (_, fp) = export_ca(&globex);
    assert!(add_partner(&acme, &globex, &fp).status.success());
    let gcfg = globex.config();
    let gcfg = gcfg.to_str().unwrap();
    for user in ["bob", "carol"] {
        assert!(
            verbund(&["cert", "issue", "--config", gcfg, "--user", user])
                .status
                .success()
        );
    }
    let read = |u: &str, ext: &str| {
        std::fs::read_to_string(globex.home().join(format!("users/{u}.{ext}"))).unwrap()
    };
    let bob = pki::CertPair {
        cert_pem: read("bob", "crt"),
        key_pem: read("bob", "key"),
    };
    let carol = pki::CertPair {
        cert_pem: read("carol", "crt"),
        key_pem: read("carol", "key"),
    };
    assert!(!call_fails(&acme, &partner_client(&acme, &bob)).await);
    // globex revokes bob and hands its list to acme.
    assert!(
        verbund(&[
            "cert",
            "revoke",
            "--config",
            gcfg,
            globex.home().join("users/bob.crt").to_str().unwrap()
        ])
        .status
        .success()
    );
    let crl = stdout(&verbund(&["crl", "export", "--config", gcfg]));
    let crl_file = acme.home().join("globex-crl.pem");
    std::fs::write(&crl_file, &crl).unwrap();
    // A malformed list and a list signed by someone else are refused.
    let bad_file = acme.home().join("bad-crl.pem");
    std::fs::write(
        &bad_file,
        "-----BEGIN X509 CRL-----\nbm90IGEgY3Js\n-----END X509 CRL-----\n",
    )
    .unwrap();
    let o = acme.cli(&[
        "partner",
        "crl",
        "--org",
        "globex",
        "--file",
        bad_file.to_str().unwrap(),
    ]);
    assert!(
        stderr(&o).contains("INVALID_ARGUMENT: crl_pem"),
        "{}",
        stderr(&o)
    );
    let (acme_crl, _) = pki::revoke(&acme.ca_pair(), None, &[vec![1, 2, 3]]).unwrap();
    std::fs::write(&bad_file, acme_crl).unwrap();
    let o = acme.cli(&[
        "partner",
        "crl",
        "--org",
        "globex",
        "--file",
        bad_file.to_str().unwrap(),
    ]);
    assert!(
        stderr(&o).contains("not signed by the partner"),
        "{}",
        stderr(&o)
    );
    assert!(
        !call_fails(&acme, &partner_client(&acme, &bob)).await,
        "a refused list must change nothing"
    );
    // The real list applies at once: bob is refused, carol still gets in.
    let o = acme.cli(&[
        "partner",
        "crl",
        "--org",
        "globex",
        "--file",
        crl_file.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        call_fails(&acme, &partner_client(&acme, &bob)).await,
        "a certificate revoked by the partner was accepted"
    );
    assert!(!call_fails(&acme, &partner_client(&acme, &carol)).await);
    // globex revokes carol too; acme fetches the list from globex's node over mutual TLS
    // (which needs globex to trust acme's node).
    let (_, acme_fp) = export_ca(&acme);
    assert!(add_partner(&globex, &acme, &acme_fp).status.success());
    assert!(
        verbund(&[
            "cert",
            "revoke",
            "--config",
            gcfg,
            globex.home().join("users/carol.crt").to_str().unwrap()
        ])
        .status
        .success()
    );
    globex.hup();
    let o = acme.cli(&["partner", "crl", "--org", "globex", "--fetch"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        call_fails(&acme, &partner_client(&acme, &carol)).await,
        "the fetched list was not applied"
    );
}

/// The certificate the node presents to a new TLS handshake (raw rustls, admin identity).
/// A raw TLS connection to `node` as its admin (no HTTP/2 on top).
async fn admin_tls(node: &TestNode) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    use std::sync::Arc;
    let id = node.admin_identity();
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(pki::parse_certs(&id.ca_pem).unwrap().remove(0))
        .unwrap();
    let (cert, key) = id.cert_and_key.unwrap();
    let config = rustls::ClientConfig::builder_with_provider(verbund_node::tls::crypto_provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_client_auth_cert(
            pki::parse_certs(&cert).unwrap(),
            pki::parse_key(&key).unwrap(),
        )
        .unwrap();
    let addr = node.endpoint.trim_start_matches("https://").to_string();
    let tcp = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
    tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
        .unwrap()
}

async fn served_certificate(node: &TestNode) -> Vec<u8> {
    let tls = admin_tls(node).await;
    tls.get_ref().1.peer_certificates().unwrap()[0]
        .as_ref()
        .to_vec()
}

#[tokio::test]
async fn a_node_renews_its_certificate_while_serving_without_failed_calls() {
    let acme = TestNode::start("acme");
    let before = served_certificate(&acme).await;
    // A client calls in a loop, on new and existing connections, through the renewal.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (endpoint, id) = (acme.endpoint.clone(), acme.admin_identity());
    let flag = stop.clone();
    let caller = tokio::spawn(async move {
        let (mut ok, mut failed, mut i) = (0u32, 0u32, 0u32);
        let mut ch = connect(&endpoint, &id).await.unwrap();
        // A fixed amount of work, whatever the machine's speed: at least MIN_CALLS calls,
        // and on until the change under test is over.
        while !flag.load(std::sync::atomic::Ordering::Relaxed) || i < MIN_CALLS {
            if i % 10 == 0 {
                ch = connect(&endpoint, &id).await.unwrap(); // a fresh handshake now and then
            }
            i += 1;
            match pb::node_service_client::NodeServiceClient::new(ch.clone())
                .who_am_i(pb::WhoAmIRequest {})
                .await
            {
                Ok(_) => ok += 1,
                Err(_) => failed += 1,
            }
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        (ok, failed)
    });
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let o = verbund(&[
        "cert",
        "renew-node",
        "--config",
        acme.config().to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    acme.hup();
    let mut renewed = false;
    for _ in 0..50 {
        if served_certificate(&acme).await != before {
            renewed = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (ok, failed) = caller.await.unwrap();
    assert!(renewed, "the node still presents its old certificate");
    let file =
        pki::parse_certs(&std::fs::read_to_string(acme.home().join("tls/node.crt")).unwrap())
            .unwrap()
            .remove(0);
    assert_eq!(served_certificate(&acme).await, file.as_ref().to_vec());
    assert!(ok + failed >= MIN_CALLS, "{ok} calls");
    assert_eq!(failed, 0, "{failed} calls failed during the renewal");
}

#[tokio::test]
async fn a_ca_rollover_under_load_fails_no_call() {
    let acme = TestNode::start("acme");
    let config = acme.config();
    let config = config.to_str().unwrap().to_string();
    let home = acme.home();
    // The client: the admin certificate of the old CA throughout; for each new connection it
    // reads the CA file, as a client that gets the CA bundle distributed would.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (endpoint, flag, dir) = (acme.endpoint.clone(), stop.clone(), home.clone());
    let caller = tokio::spawn(async move {
        let (mut ok, mut failed, mut i) = (0u32, 0u32, 0u32);
        let identity = |dir: &std::path::Path| ClientIdentity {
            ca_pem: std::fs::read_to_string(dir.join("ca/ca.crt")).unwrap(),
            cert_and_key: Some((
                std::fs::read_to_string(dir.join("users/admin.crt")).unwrap(),
                std::fs::read_to_string(dir.join("users/admin.key")).unwrap(),
            )),
        };
        let mut ch = connect(&endpoint, &identity(&dir)).await.unwrap();
        // A fixed amount of work, whatever the machine's speed: at least MIN_CALLS calls,
        // and on until the change under test is over.
        while !flag.load(std::sync::atomic::Ordering::Relaxed) || i < MIN_CALLS {
            if i % 10 == 0 {
                match connect(&endpoint, &identity(&dir)).await {
                    Ok(c) => ch = c,
                    Err(_) => failed += 1,
                }
            }
            i += 1;
            match pb::node_service_client::NodeServiceClient::new(ch.clone())
                .who_am_i(pb::WhoAmIRequest {})
                .await
            {
                Ok(_) => ok += 1,
                Err(_) => failed += 1,
            }
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        (ok, failed)
    });
    let pause = || tokio::time::sleep(std::time::Duration::from_millis(400));
    pause().await;
    let old_ca = pki::parse_certs(&acme.ca_pem()).unwrap().remove(0);
    // 1. New CA; both trusted.
    let o = verbund(&["ca", "rollover", "--config", &config]);
    assert!(o.status.success(), "{}", stderr(&o));
    acme.hup();
    pause().await;
    // 2. The node switches to a certificate of the new CA.
    assert!(
        verbund(&["cert", "renew-node", "--config", &config])
            .status
            .success()
    );
    acme.hup();
    pause().await;
    let served = served_certificate(&acme).await;
    assert!(
        !verbund_node::tls::issued_by(&served.clone().into(), &old_ca),
        "the node still serves a certificate of the old CA"
    );
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (ok, failed) = caller.await.unwrap();
    assert!(ok + failed >= MIN_CALLS, "{ok} calls");
    assert_eq!(failed, 0, "{failed} calls failed during the CA rollover");
    // 3. Users get certificates of the new CA; 4. the old CA is retired.
    assert!(
        verbund(&["cert", "issue", "--config", &config, "--user", "admin2"])
            .status
            .success()
    );
    assert!(
        verbund(&["ca", "retire", "--config", &config])
            .status
            .success()
    );
    acme.hup();
    let new_admin = acme.identity_of("admin2");
    let old_admin = ClientIdentity {
        ca_pem: acme.ca_pem(),
        cert_and_key: acme.admin_identity().cert_and_key,
    };
    assert!(
        eventually(|| call_fails(&acme, &old_admin)).await,
        "the old CA's certificate still works after retirement"
    );
    assert!(
        !call_fails(&acme, &new_admin).await,
        "the new CA's certificate must work"
    );
    assert_eq!(pki::parse_certs(&acme.ca_pem()).unwrap().len(), 1);
}

#[tokio::test]
async fn partners_pin_both_cas_during_a_partners_ca_rollover() {
    let acme = TestNode::start("acme");
    let globex = TestNode::start("globex");
    let (_, acme_fp) = export_ca(&acme);
    let (_, globex_fp) = export_ca(&globex);
    assert!(add_partner(&acme, &globex, &globex_fp).status.success());
    assert!(add_partner(&globex, &acme, &acme_fp).status.success());
    let gcfg = globex.config();
    let gcfg = gcfg.to_str().unwrap();
    let old_bob = pki::issue(
        &globex.ca_pair(),
        "globex",
        PrincipalKind::User,
        "bob",
        &[],
        &[],
        30,
    )
    .unwrap();
    // globex rolls over; its node now presents a certificate of its new CA.
    assert!(
        verbund(&["ca", "rollover", "--config", gcfg])
            .status
            .success()
    );
    assert!(
        verbund(&["cert", "renew-node", "--config", gcfg])
            .status
            .success()
    );
    globex.hup();
    // The CA file now starts with the new CA, whose key issues.
    let new_ca = globex.ca_pair();
    let new_bob = pki::issue(&new_ca, "globex", PrincipalKind::User, "bob2", &[], &[], 30).unwrap();
    assert!(
        call_fails(&acme, &partner_client(&acme, &new_bob)).await,
        "acme must not trust globex's new CA before pinning it"
    );
    // acme pins both globex CAs, each confirmed by its fingerprint.
    let export = verbund(&["ca", "export", "--config", gcfg]);
    let fps: Vec<String> = stderr(&export)
        .lines()
        .filter_map(|l| l.rsplit(": ").next())
        .map(|f| f.trim().to_string())
        .collect();
    assert_eq!(fps.len(), 2, "{}", stderr(&export));
    let bundle = acme.home().join("globex-bundle.crt");
    std::fs::write(&bundle, stdout(&export)).unwrap();
    let o = acme.cli(&[
        "partner",
        "update-ca",
        "--org",
        "globex",
        "--ca",
        bundle.to_str().unwrap(),
        "--fingerprint",
        &fps[0],
    ]);
    assert!(
        stderr(&o).contains("INVALID_ARGUMENT: fingerprints"),
        "{}",
        stderr(&o)
    );
    let o = acme.cli(&[
        "partner",
        "update-ca",
        "--org",
        "globex",
        "--ca",
        bundle.to_str().unwrap(),
        "--fingerprint",
        &fps[0],
        "--fingerprint",
        &fps[1],
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        !call_fails(&acme, &partner_client(&acme, &old_bob)).await,
        "old-CA certificate refused during the overlap"
    );
    assert!(
        !call_fails(&acme, &partner_client(&acme, &new_bob)).await,
        "new-CA certificate refused during the overlap"
    );
    let o = acme.cli(&["partner", "ping", "--org", "globex"]);
    assert!(
        o.status.success(),
        "acme cannot dial globex's renewed node: {}",
        stderr(&o)
    );
    // globex retires its old CA; acme pins the new one alone: old certificates are refused.
    assert!(
        verbund(&["ca", "retire", "--config", gcfg])
            .status
            .success()
    );
    let export = verbund(&["ca", "export", "--config", gcfg]);
    std::fs::write(&bundle, stdout(&export)).unwrap();
    let fp = stderr(&export)
        .rsplit(": ")
        .next()
        .unwrap()
        .trim()
        .to_string();
    let o = acme.cli(&[
        "partner",
        "update-ca",
        "--org",
        "globex",
        "--ca",
        bundle.to_str().unwrap(),
        "--fingerprint",
        &fp,
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        call_fails(&acme, &partner_client(&acme, &old_bob)).await,
        "old-CA certificate accepted after the partner retired it"
    );
    assert!(!call_fails(&acme, &partner_client(&acme, &new_bob)).await);
}

/// A client that completes the handshake and then sends nothing loses its connection after
/// the idle timeout (here 2 s), not after the maximum connection age; a live client does not.
#[tokio::test]
async fn a_silent_connection_is_closed_after_the_idle_timeout() {
    use tokio::io::AsyncReadExt;
    let mut node = TestNode::init("acme");
    let config = std::fs::read_to_string(node.config()).unwrap();
    let config = config.replace("idle_timeout_secs = 90", "idle_timeout_secs = 2");
    assert!(config.contains("idle_timeout_secs = 2"));
    std::fs::write(node.config(), config).unwrap();
    node.run();

    let mut silent = admin_tls(&node).await;
    // Read whatever the node sends (its HTTP/2 settings) until it closes the connection.
    let closed = tokio::time::timeout(std::time::Duration::from_secs(60), async {
        let mut buf = [0u8; 1024];
        loop {
            match silent.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await;
    assert!(
        closed.is_ok(),
        "a silent connection stayed open for a minute"
    );

    // A client that talks keeps its connection across the idle timeout.
    let channel = node.admin().await;
    for _ in 0..3 {
        pb::node_service_client::NodeServiceClient::new(channel.clone())
            .who_am_i(pb::WhoAmIRequest {})
            .await
            .unwrap();
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    }
}
