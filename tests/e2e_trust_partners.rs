//! Federation trust end to end: the partner registry with pinned anchors, per-organization
//! verification of client certificates, partner principals on the client API, and partner
//! certificates that are malformed, expired, premature or presented by a man in the middle.

mod support;

use support::trust::*;
use support::{TestNode, stderr, stdout};
use tonic::Code;
use verbund_node::client::connect;
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
