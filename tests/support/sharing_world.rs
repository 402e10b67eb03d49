//! Helpers for the end-to-end tests of sharing and policy: record calls that work for every
//! record kind, and the world they run in (acme's node with the shipped example policy, four
//! partner organizations with pinned CAs, and a set of linked records).

use std::collections::BTreeMap;

use tonic::transport::Channel;
use verbund_core::{FieldMap, Money, RecordKind, Value};
use verbund_node::client::{ClientIdentity, connect};
use verbund_node::convert::{any_record_fields, message_from_fields};
use verbund_node::identity::PrincipalKind;
use verbund_node::pb;
use verbund_node::pki;

use super::{TestNode, stderr};

// ------------------------------------------------------------------ generic record calls

/// A record as a client sees it: its fields and its metadata.
pub type Shown = (FieldMap, pb::RecordMeta);

pub fn shown(r: pb::any_record::Record) -> Shown {
    let (_, f, m) = any_record_fields(&pb::AnyRecord { record: Some(r) }).expect("a record");
    (f, m)
}

pub async fn get_any(ch: &Channel, kind: RecordKind, id: &str) -> Result<Shown, tonic::Status> {
    use pb::any_record::Record as R;
    let req = pb::GetRecordRequest { id: id.into() };
    Ok(match kind {
        RecordKind::Account => shown(R::Account(
            pb::account_service_client::AccountServiceClient::new(ch.clone())
                .get_account(req)
                .await?
                .into_inner(),
        )),
        RecordKind::Contact => shown(R::Contact(
            pb::contact_service_client::ContactServiceClient::new(ch.clone())
                .get_contact(req)
                .await?
                .into_inner(),
        )),
        RecordKind::Lead => shown(R::Lead(
            pb::lead_service_client::LeadServiceClient::new(ch.clone())
                .get_lead(req)
                .await?
                .into_inner(),
        )),
        RecordKind::Opportunity => shown(R::Opportunity(
            pb::opportunity_service_client::OpportunityServiceClient::new(ch.clone())
                .get_opportunity(req)
                .await?
                .into_inner(),
        )),
        RecordKind::ServiceCase => shown(R::ServiceCase(
            pb::service_case_service_client::ServiceCaseServiceClient::new(ch.clone())
                .get_service_case(req)
                .await?
                .into_inner(),
        )),
        RecordKind::Activity => shown(R::Activity(
            pb::activity_service_client::ActivityServiceClient::new(ch.clone())
                .get_activity(req)
                .await?
                .into_inner(),
        )),
    })
}

pub async fn delete_any(ch: &Channel, kind: RecordKind, id: &str) -> Result<(), tonic::Status> {
    let req = pb::DeleteRecordRequest { id: id.into() };
    match kind {
        RecordKind::Account => pb::account_service_client::AccountServiceClient::new(ch.clone())
            .delete_account(req)
            .await
            .map(|_| ()),
        RecordKind::Contact => pb::contact_service_client::ContactServiceClient::new(ch.clone())
            .delete_contact(req)
            .await
            .map(|_| ()),
        RecordKind::Lead => pb::lead_service_client::LeadServiceClient::new(ch.clone())
            .delete_lead(req)
            .await
            .map(|_| ()),
        RecordKind::Opportunity => {
            pb::opportunity_service_client::OpportunityServiceClient::new(ch.clone())
                .delete_opportunity(req)
                .await
                .map(|_| ())
        }
        RecordKind::ServiceCase => {
            pb::service_case_service_client::ServiceCaseServiceClient::new(ch.clone())
                .delete_service_case(req)
                .await
                .map(|_| ())
        }
        RecordKind::Activity => pb::activity_service_client::ActivityServiceClient::new(ch.clone())
            .delete_activity(req)
            .await
            .map(|_| ()),
    }
}

pub async fn create_any(
    ch: &Channel,
    kind: RecordKind,
    fields: &FieldMap,
) -> Result<String, tonic::Status> {
    let id = |m: Option<pb::RecordMeta>| m.map(|m| m.id).unwrap_or_default();
    Ok(match kind {
        RecordKind::Account => id(pb::account_service_client::AccountServiceClient::new(
            ch.clone(),
        )
        .create_account(pb::CreateAccountRequest {
            account: Some(message_from_fields(fields)),
        })
        .await?
        .into_inner()
        .meta),
        RecordKind::Contact => id(pb::contact_service_client::ContactServiceClient::new(
            ch.clone(),
        )
        .create_contact(pb::CreateContactRequest {
            contact: Some(message_from_fields(fields)),
        })
        .await?
        .into_inner()
        .meta),
        RecordKind::Lead => id(pb::lead_service_client::LeadServiceClient::new(ch.clone())
            .create_lead(pb::CreateLeadRequest {
                lead: Some(message_from_fields(fields)),
            })
            .await?
            .into_inner()
            .meta),
        RecordKind::Opportunity => id(
            pb::opportunity_service_client::OpportunityServiceClient::new(ch.clone())
                .create_opportunity(pb::CreateOpportunityRequest {
                    opportunity: Some(message_from_fields(fields)),
                })
                .await?
                .into_inner()
                .meta,
        ),
        RecordKind::ServiceCase => id(
            pb::service_case_service_client::ServiceCaseServiceClient::new(ch.clone())
                .create_service_case(pb::CreateServiceCaseRequest {
                    service_case: Some(message_from_fields(fields)),
                })
                .await?
                .into_inner()
                .meta,
        ),
        RecordKind::Activity => id(pb::activity_service_client::ActivityServiceClient::new(
            ch.clone(),
        )
        .create_activity(pb::CreateActivityRequest {
            activity: Some(message_from_fields(fields)),
        })
        .await?
        .into_inner()
        .meta),
    })
}

pub async fn update_any(
    ch: &Channel,
    kind: RecordKind,
    id: &str,
    fields: &FieldMap,
    paths: Vec<String>,
) -> Result<(), tonic::Status> {
    let mask = Some(prost_types::FieldMask { paths });
    let id = id.to_string();
    match kind {
        RecordKind::Account => pb::account_service_client::AccountServiceClient::new(ch.clone())
            .update_account(pb::UpdateAccountRequest {
                id,
                account: Some(message_from_fields(fields)),
                update_mask: mask,
            })
            .await
            .map(|_| ()),
        RecordKind::Contact => pb::contact_service_client::ContactServiceClient::new(ch.clone())
            .update_contact(pb::UpdateContactRequest {
                id,
                contact: Some(message_from_fields(fields)),
                update_mask: mask,
            })
            .await
            .map(|_| ()),
        RecordKind::Lead => pb::lead_service_client::LeadServiceClient::new(ch.clone())
            .update_lead(pb::UpdateLeadRequest {
                id,
                lead: Some(message_from_fields(fields)),
                update_mask: mask,
            })
            .await
            .map(|_| ()),
        RecordKind::Opportunity => {
            pb::opportunity_service_client::OpportunityServiceClient::new(ch.clone())
                .update_opportunity(pb::UpdateOpportunityRequest {
                    id,
                    opportunity: Some(message_from_fields(fields)),
                    update_mask: mask,
                })
                .await
                .map(|_| ())
        }
        RecordKind::ServiceCase => {
            pb::service_case_service_client::ServiceCaseServiceClient::new(ch.clone())
                .update_service_case(pb::UpdateServiceCaseRequest {
                    id,
                    service_case: Some(message_from_fields(fields)),
                    update_mask: mask,
                })
                .await
                .map(|_| ())
        }
        RecordKind::Activity => pb::activity_service_client::ActivityServiceClient::new(ch.clone())
            .update_activity(pb::UpdateActivityRequest {
                id,
                activity: Some(message_from_fields(fields)),
                update_mask: mask,
            })
            .await
            .map(|_| ()),
    }
}

pub async fn list_any(ch: &Channel, kind: RecordKind) -> Result<Vec<Shown>, tonic::Status> {
    use pb::any_record::Record as R;
    let options = Some(pb::ListOptions {
        page_size: 500,
        ..Default::default()
    });
    Ok(match kind {
        RecordKind::Account => pb::account_service_client::AccountServiceClient::new(ch.clone())
            .list_accounts(pb::ListAccountsRequest { options })
            .await?
            .into_inner()
            .accounts
            .into_iter()
            .map(|m| shown(R::Account(m)))
            .collect(),
        RecordKind::Contact => pb::contact_service_client::ContactServiceClient::new(ch.clone())
            .list_contacts(pb::ListContactsRequest {
                options,
                ..Default::default()
            })
            .await?
            .into_inner()
            .contacts
            .into_iter()
            .map(|m| shown(R::Contact(m)))
            .collect(),
        RecordKind::Lead => pb::lead_service_client::LeadServiceClient::new(ch.clone())
            .list_leads(pb::ListLeadsRequest {
                options,
                ..Default::default()
            })
            .await?
            .into_inner()
            .leads
            .into_iter()
            .map(|m| shown(R::Lead(m)))
            .collect(),
        RecordKind::Opportunity => {
            pb::opportunity_service_client::OpportunityServiceClient::new(ch.clone())
                .list_opportunities(pb::ListOpportunitiesRequest {
                    options,
                    ..Default::default()
                })
                .await?
                .into_inner()
                .opportunities
                .into_iter()
                .map(|m| shown(R::Opportunity(m)))
                .collect()
        }
        RecordKind::ServiceCase => {
            pb::service_case_service_client::ServiceCaseServiceClient::new(ch.clone())
                .list_service_cases(pb::ListServiceCasesRequest {
                    options,
                    ..Default::default()
                })
                .await?
                .into_inner()
                .service_cases
                .into_iter()
                .map(|m| shown(R::ServiceCase(m)))
                .collect()
        }
        RecordKind::Activity => pb::activity_service_client::ActivityServiceClient::new(ch.clone())
            .list_activities(pb::ListActivitiesRequest {
                options,
                ..Default::default()
            })
            .await?
            .into_inner()
            .activities
            .into_iter()
            .map(|m| shown(R::Activity(m)))
            .collect(),
    })
}

// ------------------------------------------------------------------ the world

pub fn t(s: &str) -> Value {
    Value::Text(s.into())
}

pub fn fm(pairs: &[(&str, Value)]) -> FieldMap {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.clone()))
        .collect()
}

pub fn eur(minor_units: i64) -> Value {
    Value::Money(Money {
        currency: "EUR".into(),
        minor_units,
    })
}

/// A partner organization: its CA pinned at acme, and one user certificate.
pub struct Org {
    pub name: &'static str,
    pub ca: pki::CertPair,
}

impl Org {
    pub fn new(name: &'static str) -> Org {
        Org {
            name,
            ca: pki::new_ca(name).unwrap(),
        }
    }
    pub fn user(&self, host: &TestNode, user: &str) -> ClientIdentity {
        let cert =
            pki::issue(&self.ca, self.name, PrincipalKind::User, user, &[], &[], 30).unwrap();
        ClientIdentity {
            ca_pem: host.ca_pem(),
            cert_and_key: Some((cert.cert_pem, cert.key_pem)),
        }
    }
}

pub async fn pin(admin: &Channel, org: &Org) {
    let der = pki::parse_certs(&org.ca.cert_pem).unwrap().remove(0);
    pb::admin_service_client::AdminServiceClient::new(admin.clone())
        .add_partner(pb::AddPartnerRequest {
            org: org.name.into(),
            ca_pem: org.ca.cert_pem.clone(),
            endpoint: "https://127.0.0.1:9".into(),
            fingerprint: pki::fingerprint(der.as_ref()),
        })
        .await
        .unwrap();
}

/// The records of the world, by short name.
pub struct World {
    pub acme: TestNode,
    pub admin: Channel,
    pub ids: BTreeMap<&'static str, (RecordKind, String)>,
    pub orgs: BTreeMap<&'static str, Org>,
}

impl World {
    pub fn id(&self, name: &str) -> &str {
        &self.ids[name].1
    }
    /// A user certificate of a partner organization, for calls to acme.
    pub fn user(&self, org: &str, user: &str) -> ClientIdentity {
        self.orgs[org].user(&self.acme, user)
    }
    pub async fn connect(&self, org: &str, user: &str) -> Channel {
        connect(&self.acme.endpoint, &self.user(org, user))
            .await
            .unwrap()
    }
}

pub const MARK: &str = "zqx";

/// acme's node with the example policy, four partner organizations, and records:
/// - A1 account tagged `group`, shared with globex (partner-account); C1 its contact; O2 an
///   opportunity on it; K2 an unassigned case on it;
/// - A2 account not shared; C2 its contact; O1 an opportunity on A2 shared with globex
///   (joint-deal); K1 a case on A2 (contact C2) assigned to fixit; L1 a lead;
/// - T1 an activity on O1, T2 an activity on K1.
///
/// Rules: cases assigned to fixit / repairco go to them (supplier-case); accounts tagged
/// `group` go to holding (group).
pub async fn world() -> World {
    let orgs: BTreeMap<&'static str, Org> = ["globex", "umbrella", "fixit", "repairco", "holding"]
        .into_iter()
        .map(|n| (n, Org::new(n)))
        .collect();
    let mut acme = TestNode::init("acme");
    acme.append_policy(
        "g2, globex, partner\ng2, umbrella, partner\ng2, fixit, supplier\ng2, repairco, supplier\ng2, holding, holding",
    );
    acme.run();
    let admin = acme.admin().await;
    for o in orgs.values() {
        pin(&admin, o).await;
    }
    let mut ids = BTreeMap::new();
    let mut add = async |name: &'static str, kind: RecordKind, fields: FieldMap| {
        let id = create_any(&admin, kind, &fields).await.unwrap();
        ids.insert(name, (kind, id.clone()));
        id
    };
    let account = |name: &str, tags: &[&str]| {
        fm(&[
            ("name", t(&format!("{name} {MARK} GmbH"))),
            ("domain", t(&format!("{}.example", name.to_lowercase()))),
            ("vat_id", t("DE123456789")),
            ("industry", t("Maschinenbau")),
            ("phone", t("+49 30 1234567")),
            ("email", t("info@example.com")),
            ("website", t("https://example.com")),
            ("street", t("Hauptstr. 1")),
            ("city", t("Berlin")),
            ("postal_code", t("10115")),
            ("country_code", t("DE")),
            (
                "tags",
                Value::List(tags.iter().map(|s| s.to_string()).collect()),
            ),
            ("annual_revenue", eur(100_000_000)),
            ("description", t("Schlüsselkunde")),
        ])
    };
    let a1 = add("A1", RecordKind::Account, account("Alpha", &["group"])).await;
    let a2 = add("A2", RecordKind::Account, account("Beta", &["key"])).await;
    let contact = |account: &str, last: &str| {
        fm(&[
            ("account_id", t(account)),
            ("first_name", t("Anna")),
            ("last_name", t(&format!("{last} {MARK}"))),
            ("email", t("anna@example.com")),
            ("phone", t("+49 30 7654321")),
            ("mobile", t("+49 170 1234567")),
            ("title", t("Einkauf")),
            ("department", t("Einkauf")),
            ("description", t("privat: mag Tee")),
        ])
    };
    add("C1", RecordKind::Contact, contact(&a1, "Weber")).await;
    let c2 = add("C2", RecordKind::Contact, contact(&a2, "Schulz")).await;
    let opp = |account: &str, name: &str| {
        fm(&[
            ("account_id", t(account)),
            ("name", t(&format!("{name} {MARK}"))),
            ("stage", t("proposal")),
            ("amount", eur(5_000_000)),
            ("probability", Value::Int(40)),
            ("close_date", t("2027-03-31")),
            ("next_step", t("Angebot")),
            ("description", t("intern: Marge 30%")),
        ])
    };
    let o1 = add("O1", RecordKind::Opportunity, opp(&a2, "Joint deal")).await;
    let o2 = add("O2", RecordKind::Opportunity, opp(&a1, "Own deal")).await;
    let case = |account: &str, contact: Option<&str>, assigned: Option<&str>| {
        let mut f = fm(&[
            ("account_id", t(account)),
            ("subject", t(&format!("Pumpe defekt {MARK}"))),
            ("description", t("Pumpe 3 läuft heiß")),
            ("status", t("new")),
            ("priority", t("high")),
            ("due_date", t("2027-01-15")),
        ]);
        if let Some(c) = contact {
            f.insert("contact_id".into(), t(c));
        }
        if let Some(a) = assigned {
            f.insert("assigned_org".into(), t(a));
        }
        f
    };
    let k1 = add(
        "K1",
        RecordKind::ServiceCase,
        case(&a2, Some(&c2), Some("fixit")),
    )
    .await;
    add("K2", RecordKind::ServiceCase, case(&a1, None, None)).await;
    add(
        "L1",
        RecordKind::Lead,
        fm(&[
            ("first_name", t("Lea")),
            ("last_name", t(&format!("Lead {MARK}"))),
            ("company", t("Gamma AG")),
            ("email", t("lea@gamma.example")),
            ("phone", t("+49 40 555")),
            ("status", t("new")),
            ("source", t("Messe")),
            ("description", t("heiß")),
        ]),
    )
    .await;
    let activity = |related: &str, subject: &str| {
        fm(&[
            ("related_id", t(related)),
            ("channel", t("call")),
            ("direction", t("outbound")),
            ("occurred_at", Value::Int(1_790_000_000_000)),
            ("subject", t(&format!("{subject} {MARK}"))),
            ("body", t("Notiz")),
        ])
    };
    add("T1", RecordKind::Activity, activity(&o1, "Call about deal")).await;
    add("T2", RecordKind::Activity, activity(&k1, "Call about pump")).await;
    // A note on an opportunity of the account shared with globex, but not on anything
    // globex may see: it must stay hidden from globex (the holding sees it).
    add("T3", RecordKind::Activity, activity(&o2, "Margin note")).await;
    let ok = |o: std::process::Output| assert!(o.status.success(), "{}", stderr(&o));
    ok(acme.cli(&[
        "share",
        "add",
        "--record",
        &a1,
        "--org",
        "globex",
        "--profile",
        "partner-account",
    ]));
    ok(acme.cli(&[
        "share",
        "add",
        "--record",
        &o1,
        "--org",
        "globex",
        "--profile",
        "joint-deal",
    ]));
    for org in ["fixit", "repairco"] {
        ok(acme.cli(&[
            "share",
            "rule",
            "add",
            "--org",
            org,
            "--rule",
            "case-assigned",
            "--profile",
            "supplier-case",
        ]));
    }
    ok(acme.cli(&[
        "share",
        "rule",
        "add",
        "--org",
        "holding",
        "--rule",
        "account-tag:group",
        "--profile",
        "group",
    ]));
    World {
        acme,
        admin,
        ids,
        orgs,
    }
}
