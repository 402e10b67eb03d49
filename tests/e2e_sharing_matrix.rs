//! Sharing and policy end to end: a real node of `acme` with the shipped example policy, real
//! partner certificates over mutual TLS, and a matrix of every record RPC × record kind ×
//! principal × field, checked against a hand-written table of what each principal must see
//! and may write; and the audit log of that cross-org access (without values, with tampering
//! detected).

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use support::sharing_world::*;
use support::*;
use tonic::Code;
use verbund_core::{FieldMap, RecordKind};
use verbund_node::client::{ClientIdentity, connect};
use verbund_node::pb;

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
