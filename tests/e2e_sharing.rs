//! Sharing and policy end to end: a real node of `acme` with the shipped example policy, real
//! partner certificates over mutual TLS, and a matrix of every record RPC × record kind ×
//! principal × field, checked against a hand-written table of what each principal must see
//! and may write.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use support::*;
use tonic::Code;
use tonic::transport::Channel;
use verbund_core::{FieldMap, Money, RecordKind, Value};
use verbund_node::client::{ClientIdentity, connect};
use verbund_node::convert::{any_record_fields, message_from_fields};
use verbund_node::identity::PrincipalKind;
use verbund_node::pb;
use verbund_node::pki;

// ------------------------------------------------------------------ generic record calls

/// A record as a client sees it: its fields and its metadata.
type Shown = (FieldMap, pb::RecordMeta);

fn shown(r: pb::any_record::Record) -> Shown {
    let (_, f, m) = any_record_fields(&pb::AnyRecord { record: Some(r) }).expect("a record");
    (f, m)
}

async fn get_any(ch: &Channel, kind: RecordKind, id: &str) -> Result<Shown, tonic::Status> {
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

async fn delete_any(ch: &Channel, kind: RecordKind, id: &str) -> Result<(), tonic::Status> {
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

async fn create_any(
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

async fn update_any(
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

async fn list_any(ch: &Channel, kind: RecordKind) -> Result<Vec<Shown>, tonic::Status> {
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

fn t(s: &str) -> Value {
    Value::Text(s.into())
}

fn fm(pairs: &[(&str, Value)]) -> FieldMap {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.clone()))
        .collect()
}

fn eur(minor_units: i64) -> Value {
    Value::Money(Money {
        currency: "EUR".into(),
        minor_units,
    })
}

/// A partner organization: its CA pinned at acme, and one user certificate.
struct Org {
    name: &'static str,
    ca: pki::CertPair,
}

impl Org {
    fn new(name: &'static str) -> Org {
        Org {
            name,
            ca: pki::new_ca(name).unwrap(),
        }
    }
    fn user(&self, host: &TestNode, user: &str) -> ClientIdentity {
        let cert =
            pki::issue(&self.ca, self.name, PrincipalKind::User, user, &[], &[], 30).unwrap();
        ClientIdentity {
            ca_pem: host.ca_pem(),
            cert_and_key: Some((cert.cert_pem, cert.key_pem)),
        }
    }
}

async fn pin(admin: &Channel, org: &Org) {
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
struct World {
    acme: TestNode,
    admin: Channel,
    ids: BTreeMap<&'static str, (RecordKind, String)>,
    orgs: BTreeMap<&'static str, Org>,
}

impl World {
    fn id(&self, name: &str) -> &str {
        &self.ids[name].1
    }
    /// A user certificate of a partner organization, for calls to acme.
    fn user(&self, org: &str, user: &str) -> ClientIdentity {
        self.orgs[org].user(&self.acme, user)
    }
    async fn connect(&self, org: &str, user: &str) -> Channel {
        connect(&self.acme.endpoint, &self.user(org, user))
            .await
            .unwrap()
    }
}

const MARK: &str = "zqx";

/// acme's node with the example policy, four partner organizations, and records:
/// - A1 account tagged `group`, shared with globex (partner-account); C1 its contact; O2 an
///   opportunity on it; K2 an unassigned case on it;
/// - A2 account not shared; C2 its contact; O1 an opportunity on A2 shared with globex
///   (joint-deal); K1 a case on A2 (contact C2) assigned to fixit; L1 a lead;
/// - T1 an activity on O1, T2 an activity on K1.
///
/// Rules: cases assigned to fixit / repairco go to them (supplier-case); accounts tagged
/// `group` go to holding (group).
async fn world() -> World {
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

// ------------------------------------------------------------------ the expectations

fn set(fields: &[&str]) -> BTreeSet<String> {
    fields.iter().map(|s| s.to_string()).collect()
}

fn all(kind: RecordKind) -> BTreeSet<String> {
    verbund_core::schema::fields(kind)
        .iter()
        .map(|f| f.name.to_string())
        .collect()
}

/// What a principal must see (readable) and may write of one record; None: nothing at all.
type Expect = Option<(BTreeSet<String>, BTreeSet<String>)>;

const PARTNER_ACCOUNT: &[&str] = &[
    "name",
    "domain",
    "industry",
    "website",
    "city",
    "country_code",
];
const PARTNER_CONTACT: &[&str] = &[
    "account_id",
    "first_name",
    "last_name",
    "email",
    "phone",
    "title",
    "department",
];
const PARTNER_OPP: &[&str] = &[
    "account_id",
    "name",
    "stage",
    "amount",
    "probability",
    "close_date",
    "next_step",
];
const ACTIVITY_FIELDS: &[&str] = &[
    "related_id",
    "channel",
    "direction",
    "occurred_at",
    "subject",
    "body",
];
const SUPPLIER_CASE: &[&str] = &[
    "account_id",
    "contact_id",
    "subject",
    "description",
    "status",
    "priority",
    "assigned_org",
    "due_date",
];

/// The table, written from the policy's intent (policies/policy.csv), not from the code.
fn expect(principal: &str, record: &str) -> Expect {
    let kind_of = |r: &str| match &r[..1] {
        "A" => RecordKind::Account,
        "C" => RecordKind::Contact,
        "O" => RecordKind::Opportunity,
        "K" => RecordKind::ServiceCase,
        "L" => RecordKind::Lead,
        _ => RecordKind::Activity,
    };
    let none = BTreeSet::new;
    match principal {
        "own admin" => Some((all(kind_of(record)), all(kind_of(record)))),
        "own readonly" => Some((all(kind_of(record)), none())),
        "partner with share" => match record {
            "A1" => Some((set(PARTNER_ACCOUNT), none())),
            "C1" => Some((set(PARTNER_CONTACT), none())),
            "O1" => Some((
                set(PARTNER_OPP),
                set(&["stage", "next_step", "amount", "close_date"]),
            )),
            // The account of the shared deal: its name only.
            "A2" => Some((set(&["name"]), none())),
            "T1" => Some((set(ACTIVITY_FIELDS), none())),
            _ => None,
        },
        "supplier assigned" => match record {
            "K1" => Some((set(SUPPLIER_CASE), set(&["status"]))),
            "A2" => Some((set(&["name"]), none())),
            "C2" => Some((set(&["first_name", "last_name", "phone"]), none())),
            "T2" => Some((set(ACTIVITY_FIELDS), none())),
            _ => None,
        },
        "group holding" => match record {
            "A1" | "C1" | "O2" | "K2" | "T3" => Some((all(kind_of(record)), none())),
            _ => None,
        },
        // partner without share, supplier not assigned
        _ => None,
    }
}

const RECORDS: &[&str] = &[
    "A1", "A2", "C1", "C2", "L1", "O1", "O2", "K1", "K2", "T1", "T2", "T3",
];

/// The fields a client was shown must be exactly the readable ones that hold a value, and
/// the versions exactly those of readable fields.
fn check_shown(who: &str, record: &str, got: &Shown, full: &Shown, readable: &BTreeSet<String>) {
    let got_fields: BTreeSet<String> = got.0.keys().cloned().collect();
    let want: BTreeSet<String> = full
        .0
        .keys()
        .filter(|k| readable.contains(*k))
        .cloned()
        .collect();
    assert_eq!(got_fields, want, "{who} reading {record}: fields");
    for (k, v) in &got.0 {
        assert_eq!(
            Some(v),
            full.0.get(k),
            "{who} reading {record}: value of {k}"
        );
    }
    let got_versions: BTreeSet<String> = got.1.field_versions.keys().cloned().collect();
    let want_versions: BTreeSet<String> = full
        .1
        .field_versions
        .keys()
        .filter(|k| readable.contains(*k))
        .cloned()
        .collect();
    assert_eq!(
        got_versions, want_versions,
        "{who} reading {record}: versions"
    );
}

// ------------------------------------------------------------------ the matrix

#[tokio::test]
async fn every_rpc_kind_principal_and_field_against_the_table() {
    let w = world().await;
    let acme = &w.acme;
    let config = acme.config();
    let o = verbund(&[
        "cert",
        "issue",
        "--config",
        path_str(&config),
        "--user",
        "rita",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let principals: Vec<(&str, ClientIdentity)> = vec![
        ("own admin", acme.admin_identity()),
        ("own readonly", acme.identity_of("rita")),
        ("partner with share", w.user("globex", "bob")),
        ("partner without share", w.user("umbrella", "ute")),
        ("supplier assigned", w.user("fixit", "sue")),
        ("supplier not assigned", w.user("repairco", "rob")),
        ("group holding", w.user("holding", "gina")),
    ];
    // The full records, as the owner's admin sees them.
    let mut full: BTreeMap<&str, Shown> = BTreeMap::new();
    for r in RECORDS {
        let (kind, id) = &w.ids[r];
        full.insert(r, get_any(&w.admin, *kind, id).await.unwrap());
    }
    for (who, identity) in &principals {
        let ch = connect(&acme.endpoint, identity).await.unwrap();
        // Get and, field by field, Update.
        for r in RECORDS {
            let (kind, id) = &w.ids[r];
            let got = get_any(&ch, *kind, id).await;
            match expect(who, r) {
                None => {
                    let e = got.expect_err(&format!("{who} must not see {r}"));
                    assert_eq!(e.code(), Code::NotFound, "{who} get {r}: {e}");
                    assert!(!e.message().contains(MARK), "{who}: the error leaks data");
                }
                Some((readable, _)) => {
                    check_shown(who, r, &got.unwrap(), &full[r], &readable);
                }
            }
            for spec in verbund_core::schema::fields(*kind) {
                let f = spec.name;
                // Write back the current value: allowed writes change nothing.
                let value: FieldMap = full[r]
                    .0
                    .get(f)
                    .map(|v| [(f.to_string(), v.clone())].into())
                    .unwrap_or_default();
                let res = update_any(&ch, *kind, id, &value, vec![f.to_string()]).await;
                match expect(who, r) {
                    None => {
                        let e = res.expect_err(&format!("{who} updated unseen {r}.{f}"));
                        assert_eq!(e.code(), Code::NotFound, "{who} update {r}.{f}: {e}");
                    }
                    Some((_, writable)) if writable.contains(f) => {
                        // Clearing an empty optional field or rewriting a value is fine; a
                        // rule of the record may still refuse (not the policy).
                        if let Err(e) = res {
                            assert!(
                                !matches!(e.code(), Code::PermissionDenied | Code::NotFound),
                                "{who} update {r}.{f} must be allowed: {e}"
                            );
                        }
                    }
                    Some(_) => {
                        let e = res.expect_err(&format!("{who} wrote {r}.{f}"));
                        assert_eq!(
                            e.code(),
                            Code::PermissionDenied,
                            "{who} update {r}.{f}: {e}"
                        );
                        assert!(
                            e.message().starts_with(&format!("{f}: ")),
                            "{who} update {r}.{f}: the error names the field: {e}"
                        );
                    }
                }
            }
        }
        // List and Search: exactly the visible records, each with exactly its fields.
        for kind in RecordKind::ALL {
            let listed = list_any(&ch, kind).await.unwrap();
            let want: BTreeSet<&str> = RECORDS
                .iter()
                .filter(|r| w.ids[**r].0 == kind && expect(who, r).is_some())
                .copied()
                .collect();
            let got: BTreeSet<&str> = listed
                .iter()
                .map(|(_, m)| {
                    RECORDS
                        .iter()
                        .find(|r| w.ids[**r].1 == m.id)
                        .copied()
                        .unwrap_or("?")
                })
                .collect();
            assert_eq!(got, want, "{who} list {kind}");
            for item in &listed {
                let r = RECORDS.iter().find(|r| w.ids[**r].1 == item.1.id).unwrap();
                check_shown(who, r, item, &full[r], &expect(who, r).unwrap().0);
            }
        }
        let hits = pb::search_service_client::SearchServiceClient::new(ch.clone())
            .search(pb::SearchRequest {
                query: MARK.into(),
                page_size: 500,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        let got: BTreeSet<String> = hits
            .results
            .into_iter()
            .map(|a| shown(a.record.unwrap()).1.id)
            .collect();
        let want: BTreeSet<String> = RECORDS
            .iter()
            .filter(|r| expect(who, r).is_some())
            .map(|r| w.ids[*r].1.clone())
            .collect();
        assert_eq!(got, want, "{who} search");
        // A value the caller may not read finds nothing.
        let hidden = pb::search_service_client::SearchServiceClient::new(ch.clone())
            .search(pb::SearchRequest {
                query: "info@example.com".into(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        if !who.starts_with("own") && *who != "group holding" {
            assert!(
                hidden.results.is_empty(),
                "{who} found an account by its hidden e-mail"
            );
        }
        // Watch from the start: only visible records, projected.
        let mut stream = pb::change_service_client::ChangeServiceClient::new(ch.clone())
            .watch(pb::WatchRequest::default())
            .await
            .unwrap()
            .into_inner();
        let mut seen = BTreeSet::new();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
        while let Ok(Ok(Some(ev))) = tokio::time::timeout_at(deadline, stream.message()).await {
            let rec = shown(ev.record.unwrap().record.unwrap());
            let Some(r) = RECORDS.iter().find(|r| w.ids[**r].1 == rec.1.id) else {
                // Records created and deleted by an earlier principal's turn: only the own
                // organization sees their changes (tombstones never reach partners).
                assert!(
                    who.starts_with("own") || !rec.1.deleted,
                    "{who} watched {rec:?}"
                );
                assert!(
                    who.starts_with("own"),
                    "{who} watched a record outside the table"
                );
                continue;
            };
            let (readable, _) = expect(who, r).unwrap_or_else(|| panic!("{who} watched {r}"));
            check_shown(who, r, &rec, &full[r], &readable);
            assert!(
                ev.changed_fields.iter().all(|f| readable.contains(f)),
                "{who} watch {r}: changed fields"
            );
            seen.insert(*r);
        }
        let want: BTreeSet<&str> = RECORDS
            .iter()
            .filter(|r| expect(who, r).is_some())
            .copied()
            .collect();
        assert_eq!(seen, want, "{who} watch");
        // Delete: only the own admin (on a throwaway record); everyone else is refused.
        for r in RECORDS {
            let (kind, id) = &w.ids[r];
            if *who == "own admin" {
                continue;
            }
            let e = delete_any(&ch, *kind, id)
                .await
                .expect_err("delete refused");
            assert_eq!(e.code(), Code::PermissionDenied, "{who} delete {r}: {e}");
        }
        // Administration: the own admin only.
        let admin = pb::admin_service_client::AdminServiceClient::new(ch.clone())
            .list_shares(pb::ListSharesRequest::default())
            .await;
        assert_eq!(admin.is_ok(), *who == "own admin", "{who} administer");
        // Creates: records of every kind by the own admin, activities by partners on what
        // they may add to, nothing else.
        for kind in RecordKind::ALL {
            if kind == RecordKind::Activity {
                continue;
            }
            let mut fields = full[RECORDS.iter().find(|r| w.ids[**r].0 == kind).unwrap()]
                .0
                .clone();
            fields.remove("tags");
            let res = create_any(&ch, kind, &fields).await;
            if *who == "own admin" {
                let id = res.unwrap();
                delete_any(&ch, kind, &id).await.unwrap();
            } else {
                assert_eq!(
                    res.unwrap_err().code(),
                    Code::PermissionDenied,
                    "{who} create {kind}"
                );
            }
        }
        for r in ["A1", "A2", "O1", "K1", "L1"] {
            let mut fields = full["T1"].0.clone();
            fields.insert("related_id".into(), t(w.id(r)));
            let res = create_any(&ch, RecordKind::Activity, &fields).await;
            let allowed = match *who {
                "own admin" => true,
                "partner with share" => matches!(r, "A1" | "O1"),
                "supplier assigned" => r == "K1",
                _ => false,
            };
            match res {
                Ok(id) => {
                    assert!(allowed, "{who} added an activity to {r}");
                    // The new activity is the caller's to see, and then gone again.
                    if let Err(e) = get_any(&ch, RecordKind::Activity, &id).await {
                        panic!("{who} cannot see the activity it added to {r}: {e}");
                    }
                    delete_any(&w.admin, RecordKind::Activity, &id)
                        .await
                        .unwrap();
                }
                Err(e) => {
                    assert!(!allowed, "{who} could not add an activity to {r}: {e}");
                    // Roles that may add no activity at all are refused outright; the
                    // others learn nothing about records they do not see.
                    let may_add_some = !matches!(*who, "group holding" | "own readonly");
                    let code = if may_add_some && expect(who, r).is_none() {
                        Code::InvalidArgument // as if the record did not exist
                    } else {
                        Code::PermissionDenied
                    };
                    assert_eq!(e.code(), code, "{who} activity on {r}: {e}");
                }
            }
        }
    }
    // An organization that is not a partner does not even get a connection.
    let initech = Org::new("initech");
    let stranger = initech.user(acme, "ivan");
    let refused = match connect(&acme.endpoint, &stranger).await {
        Err(_) => true,
        Ok(ch) => get_any(&ch, RecordKind::Account, w.id("A1")).await.is_err(),
    };
    assert!(refused, "an unknown organization got an answer");
    // Nothing changed that the table did not allow: the records are as created.
    for r in RECORDS {
        let (kind, id) = &w.ids[r];
        let now = get_any(&w.admin, *kind, id).await.unwrap();
        assert_eq!(now.0, full[r].0, "{r} changed");
    }
}

// ------------------------------------------------------------------ revocation, reassignment

#[tokio::test]
async fn revoke_and_reassignment_apply_to_the_very_next_call() {
    let w = world().await;
    let acme = &w.acme;
    let bob = w.connect("globex", "bob").await;
    let sue = w.connect("fixit", "sue").await;
    let rob = w.connect("repairco", "rob").await;
    get_any(&bob, RecordKind::Opportunity, w.id("O1"))
        .await
        .unwrap();
    get_any(&bob, RecordKind::Account, w.id("A2"))
        .await
        .unwrap();
    let o = acme.cli(&["share", "revoke", "--record", w.id("O1"), "--org", "globex"]);
    assert!(o.status.success(), "{}", stderr(&o));
    // The next call, on the same open connection: gone, and so is the deal's account.
    for (kind, r) in [
        (RecordKind::Opportunity, "O1"),
        (RecordKind::Account, "A2"),
        (RecordKind::Activity, "T1"),
    ] {
        let e = get_any(&bob, kind, w.id(r)).await.unwrap_err();
        assert_eq!(e.code(), Code::NotFound, "{r} after revoke");
    }
    assert!(
        list_any(&bob, RecordKind::Opportunity)
            .await
            .unwrap()
            .is_empty()
    );
    let e = update_any(
        &bob,
        RecordKind::Opportunity,
        w.id("O1"),
        &fm(&[("stage", t("negotiation"))]),
        vec!["stage".into()],
    )
    .await
    .unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    // The shared account stays shared.
    get_any(&bob, RecordKind::Account, w.id("A1"))
        .await
        .unwrap();
    // Revoking again: NOT_FOUND with a clear message.
    let o = acme.cli(&["share", "revoke", "--record", w.id("O1"), "--org", "globex"]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("not found"), "{}", stderr(&o));

    // Reassign K1 from fixit to repairco: fixit loses it (and its account and contact), at
    // once; repairco gains it.
    get_any(&sue, RecordKind::ServiceCase, w.id("K1"))
        .await
        .unwrap();
    assert_eq!(
        get_any(&rob, RecordKind::ServiceCase, w.id("K1"))
            .await
            .unwrap_err()
            .code(),
        Code::NotFound
    );
    update_any(
        &w.admin,
        RecordKind::ServiceCase,
        w.id("K1"),
        &fm(&[("assigned_org", t("repairco"))]),
        vec!["assigned_org".into()],
    )
    .await
    .unwrap();
    for (kind, r) in [
        (RecordKind::ServiceCase, "K1"),
        (RecordKind::Account, "A2"),
        (RecordKind::Contact, "C2"),
        (RecordKind::Activity, "T2"),
    ] {
        assert_eq!(
            get_any(&sue, kind, w.id(r)).await.unwrap_err().code(),
            Code::NotFound,
            "fixit still sees {r}"
        );
        get_any(&rob, kind, w.id(r)).await.unwrap();
    }
    let e = update_any(
        &sue,
        RecordKind::ServiceCase,
        w.id("K1"),
        &fm(&[("status", t("open"))]),
        vec!["status".into()],
    )
    .await
    .unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    // repairco works the case now: status within the lifecycle, nothing else.
    update_any(
        &rob,
        RecordKind::ServiceCase,
        w.id("K1"),
        &fm(&[("status", t("open"))]),
        vec!["status".into()],
    )
    .await
    .unwrap();
    let e = update_any(
        &rob,
        RecordKind::ServiceCase,
        w.id("K1"),
        &fm(&[("status", t("new"))]),
        vec!["status".into()],
    )
    .await
    .unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "{e}");
    let e = update_any(
        &rob,
        RecordKind::ServiceCase,
        w.id("K1"),
        &fm(&[("assigned_org", t("fixit"))]),
        vec!["assigned_org".into()],
    )
    .await
    .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied);
    assert!(e.message().starts_with("assigned_org: "), "{e}");
    // A mask path with stray spaces names the same field and gets the same answer.
    for path in [" assigned_org", "assigned_org ", " description"] {
        let e = update_any(
            &rob,
            RecordKind::ServiceCase,
            w.id("K1"),
            &fm(&[("assigned_org", t("fixit")), ("description", t("x"))]),
            vec![path.into()],
        )
        .await
        .unwrap_err();
        assert_eq!(e.code(), Code::PermissionDenied, "{path:?}: {e}");
    }
    let k1 = get_any(&w.admin, RecordKind::ServiceCase, w.id("K1"))
        .await
        .unwrap();
    assert_eq!(k1.0.get("assigned_org"), Some(&t("repairco")));
    // Removing the rule ends repairco's access at once, too.
    let o = acme.cli(&["share", "rule", "list", "--org", "repairco", "--json"]);
    let rules: Vec<serde_json::Value> = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(rules.len(), 1, "{}", stdout(&o));
    assert_eq!(rules[0]["rule"], "case-assigned");
    let rule_id = rules[0]["id"].as_str().unwrap();
    let o = acme.cli(&["share", "rule", "remove", "--id", rule_id]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(
        get_any(&rob, RecordKind::ServiceCase, w.id("K1"))
            .await
            .unwrap_err()
            .code(),
        Code::NotFound
    );
    let o = acme.cli(&["share", "rule", "remove", "--id", rule_id]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("not found"), "{}", stderr(&o));
}

// ------------------------------------------------------------------ audit

#[tokio::test]
async fn the_audit_log_records_cross_org_access_without_values_and_detects_tampering() {
    let w = world().await;
    let acme = &w.acme;
    let bob = w.connect("globex", "bob").await;
    get_any(&bob, RecordKind::Account, w.id("A1"))
        .await
        .unwrap();
    list_any(&bob, RecordKind::Contact).await.unwrap();
    get_any(&bob, RecordKind::Lead, w.id("L1"))
        .await
        .unwrap_err();
    update_any(
        &bob,
        RecordKind::Opportunity,
        w.id("O1"),
        &fm(&[("stage", t("negotiation"))]),
        vec!["stage".into()],
    )
    .await
    .unwrap();
    update_any(
        &bob,
        RecordKind::Opportunity,
        w.id("O1"),
        &fm(&[("description", t("geheim"))]),
        vec!["description".into()],
    )
    .await
    .unwrap_err();

    let o = acme.cli(&["audit", "list", "--org", "globex", "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let text = stdout(&o);
    let entries: Vec<serde_json::Value> = serde_json::from_str(&text).unwrap();
    let find = |action: &str, record: &str, decision: &str| {
        entries.iter().find(|e| {
            e["action"] == action && e["record_id"] == w.id(record) && e["decision"] == decision
        })
    };
    let read = find("read", "A1", "allow").expect("the read of A1");
    assert_eq!(read["principal"], "verbund://globex/user/bob");
    assert!(
        read["fields"]
            .as_array()
            .unwrap()
            .iter()
            .any(|f| f == "name")
    );
    assert!(read["reason"].as_str().unwrap().contains("partner-account"));
    assert!(
        find("list", "C1", "allow").is_some(),
        "list results are audited"
    );
    assert!(
        find("read", "L1", "deny").is_some(),
        "a denied read is audited"
    );
    assert!(find("update", "O1", "allow").is_some());
    let denied = find("update", "O1", "deny").expect("the denied update");
    assert_eq!(denied["fields"], serde_json::json!(["description"]));
    // Shares made by acme's admin are on record too.
    let all = stdout(&acme.cli(&["audit", "list", "--record", w.id("O1"), "--json"]));
    assert!(all.contains("\"action\":\"share\""), "{all}");
    // Names, never values.
    for value in [MARK, "negotiation", "geheim", "Berlin", "anna@example.com"] {
        assert!(
            !text.contains(value),
            "the audit log holds the value {value:?}"
        );
    }
    let o = acme.cli(&["audit", "verify"]);
    assert!(o.status.success(), "{}{}", stdout(&o), stderr(&o));
    assert!(stdout(&o).contains("intact"), "{}", stdout(&o));

    // An intruder edits one entry directly in the database.
    let db = acme.home().join("data/verbund.db");
    let pool =
        sqlx::SqlitePool::connect_with(sqlx::sqlite::SqliteConnectOptions::new().filename(&db))
            .await
            .unwrap();
    sqlx::query(
        "UPDATE audit_log SET decision = 'allow' WHERE decision = 'deny' AND action = 'update'",
    )
    .execute(&pool)
    .await
    .unwrap();
    pool.close().await;
    let o = acme.cli(&["audit", "verify"]);
    assert!(!o.status.success(), "verify passed a tampered log");
    assert!(stdout(&o).contains("TAMPERED"), "{}", stdout(&o));
    assert!(
        stdout(&o).contains("does not match its hash"),
        "{}",
        stdout(&o)
    );
}

// ------------------------------------------------------------------ policy reload and check

#[tokio::test]
async fn a_malformed_policy_is_refused_on_reload_and_the_old_one_stays() {
    let w = world().await;
    let acme = &w.acme;
    let bob = w.connect("globex", "bob").await;
    get_any(&bob, RecordKind::Account, w.id("A1"))
        .await
        .unwrap();
    let good = std::fs::read_to_string(acme.policy_path()).unwrap();
    // A typo that would, if loaded, drop the partner's role.
    let broken = good.replace(
        "g2, globex, partner",
        "g2, globex, partner\np, partner, account, read, nmae, always",
    );
    std::fs::write(acme.policy_path(), &broken).unwrap();
    let o = acme.cli(&["policy", "reload"]);
    assert!(!o.status.success());
    let line = broken.lines().position(|l| l.contains("nmae")).unwrap() + 1;
    assert!(
        stderr(&o).contains(&format!("policy.csv:{line}: account has no field \"nmae\"")),
        "{}",
        stderr(&o)
    );
    // SIGHUP refuses it as well; the old policy stays in force.
    acme.hup();
    tokio::time::sleep(Duration::from_millis(300)).await;
    get_any(&bob, RecordKind::Account, w.id("A1"))
        .await
        .unwrap();
    // A good change applies without a restart: without its role globex sees nothing.
    std::fs::write(acme.policy_path(), good.replace("g2, globex, partner", "")).unwrap();
    let o = acme.cli(&["policy", "reload"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(
        get_any(&bob, RecordKind::Account, w.id("A1"))
            .await
            .unwrap_err()
            .code(),
        Code::NotFound
    );
}

#[tokio::test]
async fn policy_check_explains_with_policy_lines_and_shares() {
    let w = world().await;
    let acme = &w.acme;
    let check = |field: &str| {
        acme.cli(&[
            "policy",
            "check",
            "--as",
            "verbund://globex/user/bob",
            "--action",
            "write",
            "--record",
            w.id("O1"),
            "--field",
            field,
        ])
    };
    let o = check("stage");
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    assert!(out.starts_with("allow: "), "{out}");
    assert!(
        out.contains("policy.csv:")
            && out.contains("p, partner, opportunity, write, stage, always"),
        "{out}"
    );
    assert!(
        out.contains("p, profile:joint-deal, opportunity, write, stage, always"),
        "{out}"
    );
    assert!(out.contains("g2, globex, partner"), "{out}");
    assert!(
        out.contains("share ") && out.contains("(profile joint-deal)"),
        "{out}"
    );
    let denied = check("description");
    let out = stdout(&denied);
    assert!(out.starts_with("deny: "), "{out}");
    assert!(!denied.status.success(), "a deny fails the command");
    // Unshared record: deny, and why.
    let o = acme.cli(&[
        "policy",
        "check",
        "--as",
        "verbund://globex/user/bob",
        "--action",
        "read",
        "--record",
        w.id("L1"),
    ]);
    assert!(
        stdout(&o).starts_with("deny: no share or share rule reaches"),
        "{}",
        stdout(&o)
    );
    // Bad input is named.
    let o = acme.cli(&[
        "policy",
        "check",
        "--as",
        "bob",
        "--action",
        "read",
        "--record",
        w.id("L1"),
    ]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("principal"), "{}", stderr(&o));
}

#[tokio::test]
async fn admin_rpcs_taking_a_record_id_are_denied_to_every_foreign_principal() {
    let w = world().await;
    for (org, user) in [("globex", "bob"), ("umbrella", "ute"), ("holding", "gina")] {
        let ch = w.connect(org, user).await;
        let mut admin = pb::admin_service_client::AdminServiceClient::new(ch);
        let id = w.id("O1").to_string();
        let codes = [
            admin
                .add_share(pb::AddShareRequest {
                    record_id: id.clone(),
                    org: org.into(),
                    profile: "joint-deal".into(),
                })
                .await
                .map(|_| ()),
            admin
                .list_shares(pb::ListSharesRequest {
                    record_id: id.clone(),
                    ..Default::default()
                })
                .await
                .map(|_| ()),
            admin
                .revoke_share(pb::RevokeShareRequest {
                    record_id: id.clone(),
                    org: "globex".into(),
                })
                .await
                .map(|_| ()),
            admin
                .check_access(pb::CheckAccessRequest {
                    principal: format!("verbund://{org}/user/{user}"),
                    action: "read".into(),
                    record_id: id.clone(),
                    field: String::new(),
                })
                .await
                .map(|_| ()),
            admin
                .list_audit(pb::ListAuditRequest {
                    record_id: id.clone(),
                    ..Default::default()
                })
                .await
                .map(|_| ()),
        ];
        for (i, r) in codes.into_iter().enumerate() {
            assert_eq!(
                r.unwrap_err().code(),
                Code::PermissionDenied,
                "{org} admin rpc #{i}"
            );
        }
    }
    // Nothing changed: globex still has its share of O1.
    let o = w
        .acme
        .cli(&["share", "list", "--record", w.id("O1"), "--json"]);
    assert!(stdout(&o).contains("\"org\":\"globex\""), "{}", stdout(&o));
}
