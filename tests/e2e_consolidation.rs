//! The consolidated customer view end to end: two subsidiaries run their own nodes and share
//! the accounts they tag `group` (with contacts and deals) with their holding's node. The
//! holding sees one customer where both subsidiaries hold the company, spelled differently,
//! with a golden record naming the origin of every value, its persons and figures; an edit, a
//! revoke and an erasure at a subsidiary reach the view; a steward's unlink and link persist
//! across a restart; a subsidiary's principal gets nothing from the holding's view.

mod support;

use serde_json::Value;
use support::federation::*;
use support::*;

fn group() -> (TestNode, TestNode, TestNode) {
    let mut holding = TestNode::init_fixed("holding");
    {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(holding.config())
            .unwrap();
        writeln!(f, "\n[consolidation]\nenabled = true").unwrap();
    }
    let mut subs = Vec::new();
    for org in ["sub-nord", "sub-sued"] {
        let mut sub = TestNode::init_fixed(org);
        sub.append_policy("g2, holding, holding");
        sub.run();
        subs.push(sub);
    }
    holding.run();
    for sub in &subs {
        pin(&holding, sub);
        pin(sub, &holding);
        share_rule(sub, "holding", "account-tag:group", "group");
    }
    let sued = subs.pop().unwrap();
    let nord = subs.pop().unwrap();
    (holding, nord, sued)
}

fn customers(holding: &TestNode) -> Vec<Value> {
    let v = json(&holding.cli(&["customer", "list", "--json"]));
    v["customers"].as_array().cloned().unwrap_or_default()
}

fn customer(holding: &TestNode, id: &str) -> Option<Value> {
    let o = holding.cli(&["customer", "get", id, "--json"]);
    o.status.success().then(|| json(&o))
}

fn golden<'a>(c: &'a Value, field: &str) -> Option<&'a Value> {
    c["golden"].as_array()?.iter().find(|g| g["field"] == field)
}

fn golden_value(c: &Value, field: &str) -> Option<String> {
    golden(c, field).and_then(|g| g["value"].as_str().map(str::to_string))
}

#[test]
fn the_holding_sees_one_customer_across_subsidiaries_kept_in_step() {
    let (mut holding, nord, sued) = group();
    let mueller_nord = create(
        &nord,
        "account",
        &[
            "name=Müller Maschinenbau GmbH",
            "vat_id=DE123456788",
            "domain=mueller-maschinenbau.example",
            "city=Stuttgart",
            "country_code=DE",
            "tags=group",
        ],
    );
    let mueller_sued = create(
        &sued,
        "account",
        &[
            "name=Mueller Maschinenbau G.m.b.H.",
            "vat_id=DE 123 456 788",
            "domain=mueller-maschinenbau.example",
            "city=Stuttgart",
            "country_code=DE",
            "tags=group",
        ],
    );
    let nordlicht = create(
        &sued,
        "account",
        &["name=Nordlicht Logistik AG", "city=Hamburg", "tags=group"],
    );
    let anna_nord = create(
        &nord,
        "contact",
        &[
            &format!("account_id={mueller_nord}"),
            "first_name=Anna",
            "last_name=Weber",
            "email=anna.weber@mueller-maschinenbau.example",
        ],
    );
    create(
        &sued,
        "contact",
        &[
            &format!("account_id={mueller_sued}"),
            "first_name=Anna",
            "last_name=Weber",
            "email=anna.weber@mueller-maschinenbau.example",
        ],
    );
    create(
        &nord,
        "opportunity",
        &[
            &format!("account_id={mueller_nord}"),
            "name=Retrofit line 3",
            "stage=proposal",
            "amount=1000.00 EUR",
        ],
    );

    // One customer for Müller (two sources), one for Nordlicht; everything created above has
    // arrived (each record is a change of its own: the person of both subsidiaries and the
    // deal come after their accounts).
    wait_until("the holding's view shows two customers", || {
        let list = customers(&holding);
        list.len() == 2
            && list.iter().any(|c| c["accounts"] == 2)
            && customer(&holding, &mueller_nord).is_some_and(|c| {
                c["persons"].as_array().is_some_and(|p| {
                    p.iter()
                        .any(|p| p["sources"].as_array().is_some_and(|s| s.len() == 2))
                }) && c["figures"]["open_pipeline"]
                    .as_array()
                    .is_some_and(|p| !p.is_empty())
            })
    });
    let c = customer(&holding, &mueller_sued).unwrap();
    let subsidiaries: Vec<&str> = c["sources"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|s| s["subsidiary"].as_str())
        .collect();
    assert!(
        subsidiaries.contains(&"sub-nord") && subsidiaries.contains(&"sub-sued"),
        "{c}"
    );
    let name = golden(&c, "name").unwrap();
    assert!(
        name["record_id"] == mueller_nord.as_str() || name["record_id"] == mueller_sued.as_str(),
        "lineage names a source record: {name}"
    );
    assert!(name["version"].is_string(), "{name}");
    // Anna at both subsidiaries is one person.
    let persons = c["persons"].as_array().unwrap();
    assert_eq!(persons.len(), 1, "{c}");
    assert_eq!(persons[0]["sources"].as_array().unwrap().len(), 2, "{c}");
    // The deal at sub-nord is the customer's open pipeline, in its currency.
    assert_eq!(
        c["figures"]["open_pipeline"][0]["minor_units"], 100_000,
        "{c}"
    );
    assert!(
        c["figures"]["served_by"]
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s == "sub-nord"),
        "{c}"
    );

    // A subsidiary's edit reaches the golden record (the most recent value), with its origin.
    update(&nord, "account", &mueller_nord, &["city=Esslingen"]);
    wait_until("the edit reached the golden record", || {
        customer(&holding, &mueller_nord).is_some_and(|c| {
            golden_value(&c, "city").as_deref() == Some("Esslingen")
                && golden(&c, "city").unwrap()["record_id"] == mueller_nord.as_str()
        })
    });

    // A steward keeps sub-sued's record apart; it persists across a restart, and a link
    // brings it back.
    let o = holding.cli(&["customer", "unlink", &mueller_sued]);
    assert!(o.status.success(), "unlink: {}", stderr(&o));
    assert_eq!(customers(&holding).len(), 3);
    let o = holding.cli(&[
        "customer",
        "explain",
        &mueller_nord,
        &mueller_sued,
        "--json",
    ]);
    let e = json(&o);
    assert_eq!(e["steward"], "unlink", "{e}");
    assert_eq!(e["same_cluster"], false, "{e}");
    holding.restart();
    wait_until("the rebuilt view keeps the unlink", || {
        holding
            .cli(&["customer", "list", "--json"])
            .status
            .success()
            && customers(&holding).len() == 3
    });
    let o = holding.cli(&["customer", "link", &mueller_nord, &mueller_sued]);
    assert!(o.status.success(), "link: {}", stderr(&o));
    assert_eq!(customers(&holding).len(), 2);

    // A revoke (the tag removed at sub-sued) takes Nordlicht out of the view.
    update(&sued, "account", &nordlicht, &["tags="]);
    wait_until("the revoked account left the view", || {
        customers(&holding).len() == 1 && customer(&holding, &nordlicht).is_none()
    });

    // An erasure at sub-nord: Anna's record there leaves the person.
    let o = nord.cli(&["erase", &anna_nord]);
    assert!(o.status.success(), "erase: {}", stderr(&o));
    wait_until("the erased person left the view", || {
        customer(&holding, &mueller_nord).is_some_and(|c| {
            c["persons"].as_array().is_some_and(|p| {
                p.len() == 1 && p[0]["sources"].as_array().is_some_and(|s| s.len() == 1)
            }) && !c.to_string().contains(&anna_nord)
        })
    });

    // The group figures cover the remaining customer.
    let g = json(&holding.cli(&["group", "figures", "--json"]));
    assert_eq!(g["customers"], 1, "{g}");
}

#[test]
fn a_subsidiarys_principal_gets_nothing_from_the_holdings_view() {
    let (holding, nord, _sued) = group();
    let ca = holding.home().join("ca/ca.crt");
    let cert = nord.home().join("users/admin.crt");
    let key = nord.home().join("users/admin.key");
    let id = uuid_like();
    let other = "01930000-0000-7000-8000-000000000002".to_string();
    for args in [
        vec!["customer", "list"],
        vec!["customer", "get", id.as_str()],
        vec!["customer", "explain", id.as_str(), id.as_str()],
        vec!["customer", "unlink", id.as_str()],
        vec!["customer", "link", id.as_str(), other.as_str()],
        vec!["group", "figures"],
    ] {
        let mut full: Vec<&str> = args.clone();
        full.extend([
            "--node",
            holding.endpoint.as_str(),
            "--node-ca",
            path_str(&ca),
            "--cert",
            path_str(&cert),
            "--key",
            path_str(&key),
        ]);
        let o = verbund(&full);
        assert!(!o.status.success(), "{args:?} was served to sub-nord");
        assert!(
            stderr(&o).contains("PERMISSION_DENIED"),
            "{args:?}: {}",
            stderr(&o)
        );
    }
}

fn uuid_like() -> String {
    "01930000-0000-7000-8000-000000000001".to_string()
}
