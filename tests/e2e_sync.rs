//! Federation sync end to end: real node processes of an owner (acme), a partner company
//! (globex), a service supplier (fixit) and a second partner that is also a supplier
//! (repairco), pinned to each other, over mutual TLS on loopback. Everything is checked the
//! way a user would see it: records read through each node's own API and CLI. The federation
//! scenario and the kill -9 during an initial share run twice: every node on SQLite, and every
//! node on PostgreSQL (a fresh schema each; skipped, loudly, without VERBUND_TEST_POSTGRES_URL).

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use serde_json::Value;
use support::federation::*;
use support::*;

struct Federation {
    acme: TestNode,
    globex: TestNode,
    fixit: TestNode,
    repairco: TestNode,
}

/// Four organizations; acme's policy gives globex the partner role, fixit the supplier role,
/// repairco both. Everyone pins acme and acme pins everyone. Every node's database is on
/// `backend`.
fn federation(backend: Backend) -> Federation {
    let mut acme = TestNode::init_fixed_on("acme", backend);
    acme.append_policy(
        "g2, globex, partner\ng2, fixit, supplier\ng2, repairco, partner\ng2, repairco, supplier",
    );
    let mut globex = TestNode::init_fixed_on("globex", backend);
    let mut fixit = TestNode::init_fixed_on("fixit", backend);
    let mut repairco = TestNode::init_fixed_on("repairco", backend);
    for n in [&mut acme, &mut globex, &mut fixit, &mut repairco] {
        n.run();
    }
    for partner in [&globex, &fixit, &repairco] {
        pin(&acme, partner);
        pin(partner, &acme);
    }
    Federation {
        acme,
        globex,
        fixit,
        repairco,
    }
}

#[test]
fn replicas_follow_the_owner_through_edits_conflicts_outages_revokes_and_erasure_on_sqlite() {
    replicas_follow_the_owner_through_edits_conflicts_outages_revokes_and_erasure(Backend::Sqlite);
}

#[test]
fn replicas_follow_the_owner_through_edits_conflicts_outages_revokes_and_erasure_on_postgresql() {
    if Backend::Postgres.available("PostgreSQL sync test (four nodes)") {
        replicas_follow_the_owner_through_edits_conflicts_outages_revokes_and_erasure(
            Backend::Postgres,
        );
    }
}

fn replicas_follow_the_owner_through_edits_conflicts_outages_revokes_and_erasure(backend: Backend) {
    let Federation {
        mut acme,
        mut globex,
        fixit,
        mut repairco,
    } = federation(backend);

    // --- share → replica appears (only the partner's projection)
    let account = create(
        &acme,
        "account",
        &["name=Kunde AG", "industry=manufacturing"],
    );
    let contact = create(
        &acme,
        "contact",
        &[
            &format!("account_id={account}"),
            "first_name=Erika",
            "last_name=Muster",
            "email=erika@kunde.example",
        ],
    );
    let deal = create(
        &acme,
        "opportunity",
        &[
            &format!("account_id={account}"),
            "name=Pumpen 2027",
            "stage=qualification",
            "amount=120000 EUR",
            "description=internal notes",
        ],
    );
    let case = create(
        &acme,
        "case",
        &[
            &format!("account_id={account}"),
            "subject=Pumpe leckt",
            "assigned_org=fixit",
        ],
    );
    share(&acme, &account, "globex", "partner-account");
    share(&acme, &account, "repairco", "partner-account");
    share(&acme, &deal, "globex", "joint-deal");
    share(&acme, &deal, "repairco", "joint-deal");
    for org in ["fixit", "repairco"] {
        share_rule(&acme, org, "case-assigned", "supplier-case");
    }
    wait_until("globex holds the deal", || {
        get(&globex, "opportunity", &deal).is_some()
    });
    let replica = get(&globex, "opportunity", &deal).unwrap();
    assert_eq!(replica["owner_org"], "acme");
    assert_eq!(replica["fields"]["name"], "Pumpen 2027");
    assert!(
        replica["fields"].get("description").is_none(),
        "a partner's replica holds only what it may read: {replica}"
    );
    wait_until(
        "fixit holds the case and, as a reference, its account",
        || get(&fixit, "case", &case).is_some() && get(&fixit, "account", &account).is_some(),
    );
    wait_until("repairco holds the deal and the contact", || {
        get(&repairco, "opportunity", &deal).is_some()
            && get(&repairco, "contact", &contact).is_some()
    });
    assert!(
        get(&repairco, "case", &case).is_none(),
        "a case assigned to fixit is not repairco's"
    );
    assert!(get(&globex, "case", &case).is_none());

    // --- owner edit → every sharer sees it
    update(&acme, "opportunity", &deal, &["name=Pumpen 2027/28"]);
    for n in [&globex, &repairco] {
        wait_until("the owner's edit reached the partners", || {
            field(n, "opportunity", &deal, "name").as_deref() == Some("Pumpen 2027/28")
        });
    }

    // --- partner edit of a writable field → owner and the other sharer see it
    update(&globex, "opportunity", &deal, &["stage=proposal"]);
    assert_eq!(
        field(&globex, "opportunity", &deal, "stage").as_deref(),
        Some("proposal"),
        "a local edit shows at once"
    );
    for n in [&acme, &repairco] {
        wait_until("globex's edit reached the owner and repairco", || {
            field(n, "opportunity", &deal, "stage").as_deref() == Some("proposal")
        });
    }
    update(&fixit, "case", &case, &["status=open"]);
    wait_until("fixit's status reached acme", || {
        field(&acme, "case", &case, "status").as_deref() == Some("open")
    });

    // --- partner edit of a field it may not write → refused at once, replica unchanged
    let o = globex.cli(&["opportunity", "update", &deal, "name=Hijacked"]);
    assert!(
        !o.status.success()
            && stderr(&o).contains("PERMISSION_DENIED")
            && stderr(&o).contains("name"),
        "{}",
        stderr(&o)
    );
    assert_eq!(
        field(&globex, "opportunity", &deal, "name").as_deref(),
        Some("Pumpen 2027/28")
    );
    // --- and when the partner's view of what it may write is out of date (acme tightened its
    // policy), the owner rejects the edit and the replica returns to the owner's value
    let policy = std::fs::read_to_string(acme.policy_path()).unwrap();
    let tightened: String = policy
        .lines()
        .filter(|l| l.trim() != "p, partner, opportunity, write, close_date, always")
        .map(|l| format!("{l}\n"))
        .collect();
    assert_ne!(policy.len(), tightened.len());
    std::fs::write(acme.policy_path(), tightened).unwrap();
    let o = acme.cli(&["policy", "reload"]);
    assert!(o.status.success(), "{}", stderr(&o));
    update(&globex, "opportunity", &deal, &["close_date=2027-03-31"]);
    wait_until("the rejected edit is undone on globex", || {
        field(&globex, "opportunity", &deal, "close_date").is_none()
    });
    let rejected = json(&globex.cli(&["outbox", "list", "--state", "rejected", "--json"]));
    let rejected = rejected.as_array().unwrap();
    assert_eq!(rejected.len(), 1, "{rejected:?}");
    assert!(
        rejected[0]["last_error"]
            .as_str()
            .unwrap()
            .contains("close_date: globex may not write"),
        "{rejected:?}"
    );
    assert!(field(&acme, "opportunity", &deal, "close_date").is_none());

    // --- partner stopped while the owner edits → catches up after restart
    globex.kill();
    update(&acme, "opportunity", &deal, &["amount=150000 EUR"]);
    globex.run();
    wait_until("globex caught up", || {
        field(&globex, "opportunity", &deal, "amount").is_some_and(|a| a.contains("150000"))
    });

    // --- owner stopped while two partners edit the same field → outboxes drain, all
    // converge, one conflict kept
    acme.kill();
    update(&globex, "opportunity", &deal, &["next_step=Angebot Montag"]);
    update(
        &repairco,
        "opportunity",
        &deal,
        &["next_step=Angebot Dienstag"],
    );
    wait_until("globex reports its pending edit", || {
        status_of(&globex, "acme")["outbox_depth"] == 1
    });
    acme.run();
    wait_until("the outboxes drained", || {
        status_of(&globex, "acme")["outbox_depth"] == 0
            && status_of(&repairco, "acme")["outbox_depth"] == 0
    });
    let mut seen = BTreeSet::new();
    wait_until("all three agree on next_step", || {
        seen = [&acme, &globex, &repairco]
            .iter()
            .map(|n| field(n, "opportunity", &deal, "next_step"))
            .collect();
        seen.len() == 1 && seen.iter().next().unwrap().is_some()
    });
    let conflicts = json(&acme.cli(&["conflict", "list", "--record", &deal, "--json"]));
    let conflicts = conflicts.as_array().unwrap();
    assert_eq!(conflicts.len(), 1, "{conflicts:?}");
    assert_eq!(conflicts[0]["field"], "next_step");
    let values: BTreeSet<String> = [
        &conflicts[0]["winner"]["value"],
        &conflicts[0]["loser"]["value"],
    ]
    .iter()
    .map(|v| v.as_str().unwrap().to_string())
    .collect();
    assert_eq!(
        values,
        ["Angebot Dienstag".to_string(), "Angebot Montag".to_string()].into(),
        "both values are kept"
    );
    assert_eq!(
        seen.into_iter().next().unwrap().as_deref(),
        conflicts[0]["winner"]["value"].as_str()
    );
    // Resolving is a new write that every copy follows.
    let loser = conflicts[0]["loser"]["value"].as_str().unwrap().to_string();
    let id = conflicts[0]["id"].as_str().unwrap().to_string();
    let o = acme.cli(&["conflict", "resolve", &id, "--keep", "loser"]);
    assert!(o.status.success(), "{}", stderr(&o));
    for n in [&globex, &repairco] {
        wait_until("the resolution reached the partners", || {
            field(n, "opportunity", &deal, "next_step").as_deref() == Some(loser.as_str())
        });
    }
    assert!(
        json(&acme.cli(&["conflict", "list", "--json"]))
            .as_array()
            .unwrap()
            .is_empty()
    );

    // --- unshare → the partner's copy is gone
    let o = acme.cli(&["share", "revoke", "--record", &deal, "--org", "repairco"]);
    assert!(o.status.success(), "{}", stderr(&o));
    wait_until("repairco's copy of the deal is gone", || {
        get(&repairco, "opportunity", &deal).is_none()
    });
    assert!(
        get(&globex, "opportunity", &deal).is_some(),
        "globex keeps its share"
    );

    // --- case reassigned → the old supplier's copy goes, the new one's arrives
    update(&acme, "case", &case, &["assigned_org=repairco"]);
    wait_until("the case moved from fixit to repairco", || {
        get(&fixit, "case", &case).is_none() && get(&repairco, "case", &case).is_some()
    });
    // What fixit saw only through the case (the account's name) goes with it.
    wait_until("fixit's reference copy of the account is gone", || {
        get(&fixit, "account", &account).is_none()
    });

    // --- erasure → every holder purges and acknowledges, one of them after being offline
    repairco.kill();
    let erased = json(&acme.cli(&["erase", &contact, "--json"]));
    let receivers: BTreeMap<String, String> = erased["receivers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["org"].as_str().unwrap().into(),
                r["state"].as_str().unwrap().into(),
            )
        })
        .collect();
    assert_eq!(
        receivers.keys().cloned().collect::<Vec<_>>(),
        ["globex", "repairco"],
        "the organizations that received the contact"
    );
    assert!(get(&acme, "contact", &contact).is_none());
    let erasure_state = |org: &str| -> String {
        let s = json(&acme.cli(&["erasure", "status", &contact, "--json"]));
        s["receivers"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["org"] == org)
            .map(|r| r["state"].as_str().unwrap().to_string())
            .unwrap_or_default()
    };
    wait_until("globex acknowledged the erasure", || {
        erasure_state("globex") == "acknowledged"
    });
    assert!(get(&globex, "contact", &contact).is_none());
    assert_eq!(erasure_state("repairco"), "pending", "repairco is offline");
    repairco.run();
    wait_until("repairco purged on reconnect and acknowledged", || {
        erasure_state("repairco") == "acknowledged"
    });
    assert!(get(&repairco, "contact", &contact).is_none());
    // Nothing of the person is found on a holder any more.
    for n in [&globex, &repairco] {
        let found = json(&n.cli(&["search", "Muster", "--json"]));
        assert!(found.as_array().unwrap().is_empty(), "{found}");
    }
}

/// Every change event of `node`'s log, until it has been quiet for a second.
async fn all_events(node: &TestNode) -> Vec<verbund_node::pb::ChangeEvent> {
    let mut stream =
        verbund_node::pb::change_service_client::ChangeServiceClient::new(node.admin().await)
            .watch(verbund_node::pb::WatchRequest {
                after_seq: 0,
                kinds: Vec::new(),
            })
            .await
            .unwrap()
            .into_inner();
    let mut out = Vec::new();
    while let Ok(Some(Ok(ev))) = tokio::time::timeout(Duration::from_secs(1), stream.next()).await {
        out.push(ev);
    }
    out
}

use tokio_stream::StreamExt as _;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_initial_share_survives_kill_9_of_either_side_and_arrives_exactly_once_on_sqlite() {
    a_large_initial_share_survives_kill_9_of_either_side_and_arrives_exactly_once(Backend::Sqlite)
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_initial_share_survives_kill_9_of_either_side_and_arrives_exactly_once_on_postgresql()
 {
    if Backend::Postgres.available("PostgreSQL sync test (kill -9 during an initial share)") {
        a_large_initial_share_survives_kill_9_of_either_side_and_arrives_exactly_once(
            Backend::Postgres,
        )
        .await;
    }
}

async fn a_large_initial_share_survives_kill_9_of_either_side_and_arrives_exactly_once(
    backend: Backend,
) {
    const N: usize = 3000;
    let (mut acme, mut globex) = owner_and_partner_on(backend);

    // Partner killed in the middle of the initial share.
    bulk_accounts(&acme, N, "bulk").await;
    let rule = |tag: &str| add_tag_rule(&acme, "globex", tag);
    rule("bulk");
    let start = Instant::now();
    while replicas(&globex, "acme") == 0 && start.elapsed() < WAIT {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let at_kill = replicas(&globex, "acme");
    globex.kill();
    eprintln!("globex killed holding {at_kill} of {N}");
    globex.run();
    wait_until("globex holds every shared account", || {
        replicas(&globex, "acme") == N as i64
    });

    // Owner killed in the middle of the next one.
    bulk_accounts(&acme, N, "more").await;
    rule("more");
    let start = Instant::now();
    while replicas(&globex, "acme") == N as i64 && start.elapsed() < WAIT {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let at_kill = replicas(&globex, "acme");
    acme.kill();
    eprintln!("acme killed while globex held {at_kill} of {}", 2 * N);
    acme.run();
    wait_until("globex holds every shared account", || {
        replicas(&globex, "acme") == 2 * N as i64
    });

    // Exactly once: one create per record in globex's own change log, no other change.
    let events = all_events(&globex).await;
    let mut creates: BTreeMap<String, usize> = BTreeMap::new();
    for ev in &events {
        assert_eq!(
            ev.op,
            verbund_node::pb::ChangeOp::Create as i32,
            "an identical state applied twice must change nothing: {ev:?}"
        );
        *creates.entry(ev.record_id.clone()).or_default() += 1;
    }
    assert_eq!(creates.len(), 2 * N);
    assert!(creates.values().all(|n| *n == 1));
    // And the owner knows globex acknowledged everything.
    wait_until("acme sees globex's acknowledgement", || {
        let s = json(&acme.cli(&["partner", "status", "--json"]));
        s[0]["partner_acked_cursor"].as_i64().unwrap_or(0) > 0
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn updates_in_flight_survive_kill_9_of_the_owner_on_sqlite() {
    updates_in_flight_survive_kill_9_of_the_owner(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn updates_in_flight_survive_kill_9_of_the_owner_on_postgresql() {
    if Backend::Postgres.available("PostgreSQL sync test (kill -9 during updates)") {
        updates_in_flight_survive_kill_9_of_the_owner(Backend::Postgres).await;
    }
}

/// Updates of records the partner holds leave the owner before their ledger rows and
/// position commit. The owner is killed -9 in the middle of a stream of them; once it is
/// back, the partner holds exactly the owner's last state of every record.
async fn updates_in_flight_survive_kill_9_of_the_owner(backend: Backend) {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use verbund_node::pb;
    const N: usize = 12;
    let (mut acme, globex) = owner_and_partner_on(backend);
    let mut accounts = pb::account_service_client::AccountServiceClient::new(acme.admin().await);
    let ids = tagged_accounts(&mut accounts, N, "Laufend", "laufend").await;
    add_tag_rule(&acme, "globex", "laufend");
    wait_until("globex holds every shared account", || {
        replicas(&globex, "acme") == N as i64
    });

    // Round after round of updates, until acme is killed under them.
    let done = Arc::new(AtomicUsize::new(0));
    let burst = {
        let (ids, done) = (ids.clone(), done.clone());
        tokio::spawn(async move {
            for round in 0.. {
                for id in &ids {
                    let updated = accounts
                        .update_account(city_update(id, format!("Ort {round}")))
                        .await;
                    if updated.is_err() {
                        return; // acme is gone
                    }
                    done.fetch_add(1, Ordering::SeqCst);
                }
            }
        })
    };
    let start = Instant::now();
    while done.load(Ordering::SeqCst) < 5 * N && start.elapsed() < WAIT {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(
        done.load(Ordering::SeqCst) >= 5 * N,
        "the updates went through"
    );
    acme.kill();
    burst.await.unwrap();
    acme.run();

    // Whatever acme committed before it died, globex ends up with it, record by record.
    let mut at_acme = pb::account_service_client::AccountServiceClient::new(acme.admin().await);
    let mut at_globex = pb::account_service_client::AccountServiceClient::new(globex.admin().await);
    let start = Instant::now();
    loop {
        let mut differing = Vec::new();
        for id in &ids {
            let req = || pb::GetRecordRequest { id: id.clone() };
            let owner = at_acme.get_account(req()).await.unwrap().into_inner().city;
            let partner = at_globex
                .get_account(req())
                .await
                .unwrap()
                .into_inner()
                .city;
            assert!(owner.is_some(), "acme kept {id}'s updates");
            if owner != partner {
                differing.push((id.clone(), owner, partner));
            }
        }
        if differing.is_empty() {
            break;
        }
        assert!(
            start.elapsed() < WAIT,
            "globex did not converge after acme's restart: {differing:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(replicas(&globex, "acme"), N as i64);
}

/// Updates of records the partner holds go ahead of their bookkeeping, which the stream
/// commits for many at once when they settle: then the partner's acknowledged position
/// covers them, and the owner's audit log notes what was sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_updates_is_noted_and_acknowledged_once_it_settles() {
    use verbund_node::pb;
    const N: usize = 4;
    let (acme, globex) = owner_and_partner_on(Backend::Sqlite);
    let mut accounts = pb::account_service_client::AccountServiceClient::new(acme.admin().await);
    let ids = tagged_accounts(&mut accounts, N, "Schub", "schub").await;
    add_tag_rule(&acme, "globex", "schub");
    wait_until("globex holds every shared account", || {
        replicas(&globex, "acme") == N as i64
    });
    let acked = || {
        json(&acme.cli(&["partner", "status", "--json"]))[0]["partner_acked_cursor"]
            .as_i64()
            .unwrap_or(0)
    };
    // The position after the share, once it stands still.
    let mut before = acked();
    loop {
        std::thread::sleep(Duration::from_millis(300));
        let now = acked();
        if now == before && now > 0 {
            break;
        }
        before = now;
    }
    let sync_entries = || -> Vec<Value> {
        let audit: Vec<Value> = serde_json::from_str(&stdout(&acme.cli(&[
            "audit", "list", "--org", "globex", "--limit", "100000", "--json",
        ])))
        .unwrap();
        audit
            .into_iter()
            .filter(|e| e["action"] == "sync")
            .collect()
    };
    let noted_before = sync_entries().len();

    for round in 0..3 {
        for id in &ids {
            accounts
                .update_account(city_update(id, format!("Ort {round}")))
                .await
                .unwrap();
        }
    }
    for id in &ids {
        wait_until("globex holds the last update", || {
            field(&globex, "account", id, "city").as_deref() == Some("Ort 2")
        });
    }
    // The updates went ahead of their bookkeeping, which the stream commits later in an
    // entry of its own ("… sent in k batch(es) …", written only for updates sent ahead: once
    // the stream is quiet, or after 1 s or 2,000 rows): a late acknowledgement of the share
    // cannot stand in for it.
    let ahead_noted = |entries: &[Value]| -> usize {
        entries
            .iter()
            .filter_map(|e| e["reason"].as_str())
            .filter(|r| r.contains("batch(es)"))
            .filter_map(|r| r.split(' ').next()?.parse::<usize>().ok())
            .sum()
    };
    wait_until("acme notes the updates that went ahead", || {
        ahead_noted(&sync_entries().split_off(noted_before)) >= N
    });
    wait_until(
        "globex acknowledges a position covering the updates",
        || acked() > before,
    );
    let noted: Vec<Value> = sync_entries().split_off(noted_before);
    // Each record once per batch it went in: at least once, at most once per round.
    let records = ahead_noted(&noted);
    assert!((N..=3 * N).contains(&records), "{records}: {noted:#?}");
    assert!(noted.iter().all(|e| e["decision"] == "allow"), "{noted:#?}");
}

/// `n` accounts named "`name` i AG" carrying `tag`, created over gRPC; their ids.
async fn tagged_accounts(
    accounts: &mut verbund_node::pb::account_service_client::AccountServiceClient<
        tonic::transport::Channel,
    >,
    n: usize,
    name: &str,
    tag: &str,
) -> Vec<String> {
    use verbund_node::pb;
    let mut ids = Vec::new();
    for i in 0..n {
        let created = accounts
            .create_account(pb::CreateAccountRequest {
                account: Some(pb::Account {
                    name: Some(format!("{name} {i} AG")),
                    tags: vec![tag.into()],
                    ..Default::default()
                }),
            })
            .await
            .unwrap()
            .into_inner();
        ids.push(created.meta.unwrap().id);
    }
    ids
}

/// An update of an account's city alone (a field that decides no access).
fn city_update(id: &str, city: String) -> verbund_node::pb::UpdateAccountRequest {
    use verbund_node::pb;
    pb::UpdateAccountRequest {
        id: id.to_string(),
        account: Some(pb::Account {
            city: Some(city),
            ..Default::default()
        }),
        update_mask: Some(prost_types::FieldMask {
            paths: vec!["city".into()],
        }),
    }
}

fn identity_from(
    host: &TestNode,
    node: &TestNode,
    cert: &str,
    key: &str,
) -> verbund_node::client::ClientIdentity {
    verbund_node::client::ClientIdentity {
        ca_pem: host.ca_pem(),
        cert_and_key: Some((
            std::fs::read_to_string(node.home().join(cert)).unwrap(),
            std::fs::read_to_string(node.home().join(key)).unwrap(),
        )),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_federation_api_serves_partner_nodes_only_their_share() {
    use verbund_node::pb;
    let mut acme = TestNode::init_fixed("acme");
    acme.append_policy("g2, globex, partner");
    let globex = TestNode::init_fixed("globex");
    acme.run();
    pin(&acme, &globex);
    let unshared = create(&acme, "account", &["name=Geheim GmbH"]);
    let shared = create(&acme, "account", &["name=Offen AG"]);
    share(&acme, &shared, "globex", "partner-account");

    let node = verbund_node::client::connect(
        &acme.endpoint,
        &identity_from(&acme, &globex, "tls/node.crt", "tls/node.key"),
    )
    .await
    .unwrap();
    let mut fed = pb::federation_client::FederationClient::new(node);

    // Hello: an incompatible version is refused clearly.
    let e = fed
        .hello(pb::HelloRequest {
            protocol_version: 99,
            org: "globex".into(),
            capabilities: vec![],
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::FailedPrecondition);
    assert!(
        e.message().contains("99") && e.message().contains("version 2"),
        "{}",
        e.message()
    );

    // Push: an unshared record is rejected as not shared and stays as it was; a field the
    // partner may not write is rejected naming it; a version of another node is refused.
    let push = |id: &str, field: &str, node_id: &str, key: &str| pb::PushRequest {
        changes: vec![pb::ProposedChange {
            key: key.into(),
            record_id: id.into(),
            kind: pb::RecordKind::Account as i32,
            edits: vec![pb::FieldEditMessage {
                name: field.into(),
                value: Some(pb::FieldValue {
                    value: Some(pb::field_value::Value::Text("Übernommen".into())),
                }),
                version: Some(pb::Hlc {
                    physical_ms: 1,
                    counter: 0,
                    node_id: node_id.into(),
                }),
                base: None,
            }],
        }],
    };
    let verdict = |r: pb::PushResponse| r.verdicts.into_iter().next().unwrap();
    let v = verdict(
        fed.push(push(&unshared, "name", "globex/node1", "k1"))
            .await
            .unwrap()
            .into_inner(),
    );
    assert_eq!(v.outcome, pb::VerdictOutcome::Rejected as i32);
    assert!(
        v.reason.contains("not shared") && v.record.is_none(),
        "{v:?}"
    );
    assert!(
        v.revoked,
        "a partner's copy of an unshared record goes: {v:?}"
    );
    let v = verdict(
        fed.push(push(&shared, "name", "globex/node1", "k2"))
            .await
            .unwrap()
            .into_inner(),
    );
    assert_eq!(v.outcome, pb::VerdictOutcome::Rejected as i32);
    assert!(v.reason.contains("name: globex may not write"), "{v:?}");
    assert!(!v.revoked && v.record.is_some(), "still shared: {v:?}");
    let v = verdict(
        fed.push(push(&shared, "name", "acme/node1", "k3"))
            .await
            .unwrap()
            .into_inner(),
    );
    assert_eq!(v.outcome, pb::VerdictOutcome::Rejected as i32);
    assert!(v.reason.contains("node_id"), "{v:?}");
    assert_eq!(
        field(&acme, "account", &unshared, "name").as_deref(),
        Some("Geheim GmbH")
    );
    assert_eq!(
        field(&acme, "account", &shared, "name").as_deref(),
        Some("Offen AG")
    );
    // Every refused push is audited as a denial with the reason, never as allowed.
    let audit: Vec<Value> = serde_json::from_str(&stdout(
        &acme.cli(&["audit", "list", "--org", "globex", "--json"]),
    ))
    .unwrap();
    let pushes: Vec<&Value> = audit.iter().filter(|e| e["action"] == "push").collect();
    assert!(
        pushes.len() >= 3 && pushes.iter().all(|e| e["decision"] == "deny"),
        "{pushes:#?}"
    );
    assert!(
        pushes.iter().any(|e| e["record_id"] == shared.as_str()
            && e["reason"]
                .as_str()
                .is_some_and(|r| r.contains("push rejected: name"))),
        "{pushes:#?}"
    );

    // Subscribe: only the shared record, only readable fields.
    let mut stream = fed
        .subscribe(pb::SubscribeRequest::default()) // from the beginning
        .await
        .unwrap()
        .into_inner();
    let mut got = Vec::new();
    while let Ok(Some(Ok(batch))) =
        tokio::time::timeout(Duration::from_secs(2), stream.next()).await
    {
        got.extend(batch.items);
    }
    let ids: BTreeSet<String> = got
        .iter()
        .filter_map(|i| match &i.item {
            Some(pb::sync_item::Item::Upsert(st)) => Some(st.id.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(ids, [shared.clone()].into(), "{got:?}");

    // Digest: naming an unshared id, or a deleted record it never held, gets a plain revoke,
    // nothing about the record.
    let gone = create(&acme, "account", &["name=Weg GmbH"]);
    let o = acme.cli(&["account", "delete", &gone]);
    assert!(o.status.success(), "{}", stderr(&o));
    let r = fed
        .digest(pb::DigestRequest {
            buckets: vec![],
            detail_buckets: (0..256).collect(),
            entries: vec![
                pb::BucketEntry {
                    record_id: unshared.clone(),
                    digest: 1,
                },
                pb::BucketEntry {
                    record_id: gone.clone(),
                    digest: 1,
                },
            ],
        })
        .await
        .unwrap()
        .into_inner();
    for item in &r.repairs {
        match &item.item {
            Some(pb::sync_item::Item::Revoke(rv)) => {
                assert!(rv.record_id == unshared || rv.record_id == gone, "{rv:?}")
            }
            Some(pb::sync_item::Item::Upsert(st)) => assert_eq!(st.id, shared),
            other => panic!("unexpected repair {other:?}"),
        }
    }

    // A partner's user (not its node) has no business with the federation API, and no
    // partner principal administers sync on acme's node.
    let user = verbund_node::client::connect(
        &acme.endpoint,
        &identity_from(&acme, &globex, "users/admin.crt", "users/admin.key"),
    )
    .await
    .unwrap();
    let e = pb::federation_client::FederationClient::new(user.clone())
        .push(push(&shared, "name", "globex/node1", "k4"))
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::PermissionDenied);
    let mut admin = pb::admin_service_client::AdminServiceClient::new(user);
    let denied = |r: Result<tonic::Response<pb::ErasureStatusResponse>, tonic::Status>| {
        assert_eq!(r.unwrap_err().code(), tonic::Code::PermissionDenied)
    };
    denied(
        admin
            .erase_record(pb::EraseRecordRequest {
                id: unshared.clone(),
            })
            .await,
    );
    denied(
        admin
            .erasure_status(pb::ErasureStatusRequest {
                id: unshared.clone(),
            })
            .await,
    );
    assert_eq!(
        admin
            .list_conflicts(pb::ListConflictsRequest {
                record_id: unshared.clone(),
                include_resolved: true,
            })
            .await
            .unwrap_err()
            .code(),
        tonic::Code::PermissionDenied
    );
    assert_eq!(
        admin
            .resolve_conflict(pb::ResolveConflictRequest {
                id: unshared.clone(),
                keep: "winner".into(),
            })
            .await
            .unwrap_err()
            .code(),
        tonic::Code::PermissionDenied
    );
    assert_eq!(
        admin
            .sync_status(pb::SyncStatusRequest {})
            .await
            .unwrap_err()
            .code(),
        tonic::Code::PermissionDenied
    );
    assert!(
        get(&acme, "account", &unshared).is_some(),
        "nothing was erased"
    );
}

/// The upserts of a partner's stream until one of `until` arrives, as (id, field names).
async fn upserts_until(
    stream: &mut tonic::Streaming<verbund_node::pb::SyncBatch>,
    until: &str,
) -> Vec<(String, BTreeSet<String>)> {
    use verbund_node::pb;
    let mut got = Vec::new();
    loop {
        let batch = tokio::time::timeout(Duration::from_secs(60), stream.next())
            .await
            .expect("the owner's stream went quiet")
            .expect("the owner's stream ended")
            .expect("the owner's stream failed");
        for item in batch.items {
            if let Some(pb::sync_item::Item::Upsert(st)) = item.item {
                let names = st.fields.iter().map(|f| f.name.clone()).collect();
                let done = st.id == until;
                got.push((st.id, names));
                if done {
                    return got;
                }
            }
        }
    }
}

/// A running owner `acme` that shares a joint deal with `globex`: globex sees the deal, and
/// of its account (`name`, city Ulm) only the name. Returns both nodes, the account and the
/// deal, and a connection to acme as globex's `who` ("tls/node" or "users/admin").
async fn joint_deal(
    name: &str,
    who: &str,
) -> (
    TestNode,
    TestNode,
    String,
    String,
    tonic::transport::Channel,
) {
    let mut acme = TestNode::init_fixed("acme");
    acme.append_policy("g2, globex, partner");
    let globex = TestNode::init_fixed("globex");
    acme.run();
    pin(&acme, &globex);
    let account = create(&acme, "account", &[&format!("name={name} AG"), "city=Ulm"]);
    let deal = create(
        &acme,
        "opportunity",
        &[
            &format!("account_id={account}"),
            &format!("name={name} deal"),
            "stage=qualification",
        ],
    );
    share(&acme, &deal, "globex", "joint-deal");
    let channel = verbund_node::client::connect(
        &acme.endpoint,
        &identity_from(&acme, &globex, &format!("{who}.crt"), &format!("{who}.key")),
    )
    .await
    .unwrap();
    (acme, globex, account, deal, channel)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partner_is_sent_nothing_when_only_fields_it_cannot_read_change() {
    use verbund_node::pb;
    let (acme, _globex, account, deal, node) = joint_deal("Verdeckt", "tls/node").await;
    let mut stream = pb::federation_client::FederationClient::new(node)
        .subscribe(pb::SubscribeRequest::default()) // from the beginning
        .await
        .unwrap()
        .into_inner();
    let mut first = upserts_until(&mut stream, &deal).await;
    if !first.iter().any(|(id, _)| *id == account) {
        first.extend(upserts_until(&mut stream, &account).await);
    }
    let of_account: Vec<_> = first.iter().filter(|(id, _)| *id == account).collect();
    assert!(
        of_account
            .iter()
            .all(|(_, names)| names.iter().all(|n| n == "name")),
        "only the name of the deal's account: {of_account:?}"
    );

    // The city changes (globex cannot read it), then the deal (it can): the stream, in
    // order, brings the deal and nothing about the account.
    update(&acme, "account", &account, &["city=Bonn"]);
    update(&acme, "opportunity", &deal, &["next_step=Angebot"]);
    let got = upserts_until(&mut stream, &deal).await;
    assert!(
        got.iter().all(|(id, _)| *id != account),
        "a change globex cannot see was sent: {got:?}"
    );
    // A change it can see still comes.
    update(&acme, "account", &account, &["name=Sichtbar AG"]);
    let got = upserts_until(&mut stream, &account).await;
    assert_eq!(
        got.last().map(|(_, n)| n.clone()),
        Some(["name".to_string()].into())
    );
}

/// The next batch of `stream` within `wait`, if any.
async fn batch_within(
    stream: &mut tonic::Streaming<verbund_node::pb::SyncBatch>,
    wait: Duration,
) -> Option<verbund_node::pb::SyncBatch> {
    match tokio::time::timeout(wait, stream.next()).await {
        Err(_) => None,
        Ok(next) => Some(
            next.expect("the owner's stream ended")
                .expect("the owner's stream failed"),
        ),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partners_cursor_says_nothing_of_changes_it_cannot_see() {
    use verbund_node::pb;
    let (acme, _globex, account, deal, node) = joint_deal("Leise", "tls/node").await;
    let mut client = pb::federation_client::FederationClient::new(node);
    let mut stream = client
        .subscribe(pb::SubscribeRequest::default())
        .await
        .unwrap()
        .into_inner();
    // Everything there is for globex (three changes: one batch), and the position it brings
    // it to.
    let cursor = loop {
        let batch = batch_within(&mut stream, Duration::from_secs(60))
            .await
            .expect("the deal came");
        let has_deal = batch
            .items
            .iter()
            .any(|i| matches!(&i.item, Some(pb::sync_item::Item::Upsert(st)) if st.id == deal));
        if has_deal {
            break batch.cursor;
        }
    };
    assert!(cursor > 0, "the deal came with a cursor");
    let hello = || {
        let mut client = client.clone();
        async move {
            client
                .hello(pb::HelloRequest {
                    protocol_version: verbund_core::sync::PROTOCOL_VERSION,
                    org: "globex".into(),
                    capabilities: Vec::new(),
                })
                .await
                .unwrap()
                .into_inner()
                .last_seq
        }
    };
    let told_before = hello().await;

    // Many changes globex cannot see: a field it cannot read, and records not shared.
    for i in 0..12 {
        update(&acme, "account", &account, &[&format!("city=Ort {i}")]);
        create(&acme, "account", &[&format!("name=Intern {i}")]);
    }
    // Past the time the owner waits before noting them: globex is sent no batch that moves
    // its cursor (a heartbeat repeats it), and Hello tells it the same as before.
    while let Some(batch) = batch_within(&mut stream, Duration::from_secs(3)).await {
        assert!(batch.items.is_empty(), "sent: {:?}", batch.items);
        assert_eq!(
            (batch.cursor, batch.heartbeat),
            (cursor, true),
            "globex's cursor moved with changes it cannot see"
        );
    }
    assert_eq!(
        hello().await,
        told_before,
        "Hello's last_seq moved with changes globex cannot see"
    );

    // A change it can see moves its cursor. The deal's new state goes ahead without a
    // position (cursor 0: globex holds the deal already, so it need not wait for acme's
    // bookkeeping), and the position follows at once, equal to the state's stamp.
    update(&acme, "opportunity", &deal, &["next_step=Angebot"]);
    let batch = loop {
        let batch = batch_within(&mut stream, Duration::from_secs(60))
            .await
            .expect("the deal's change came");
        if !batch.items.is_empty() {
            break batch;
        }
    };
    assert_eq!(
        (batch.cursor, batch.cursor_mark.as_str()),
        (0, ""),
        "an update of a record globex holds goes ahead of its position"
    );
    let stamps: Vec<i64> = batch
        .items
        .iter()
        .filter_map(|item| match &item.item {
            Some(pb::sync_item::Item::Upsert(st)) => Some(st.owner_seq),
            _ => None,
        })
        .collect();
    assert!(!stamps.is_empty(), "{:?}", batch.items);
    let batch = batch_within(&mut stream, Duration::from_secs(60))
        .await
        .expect("the position followed the update");
    assert!(batch.items.is_empty(), "sent twice: {:?}", batch.items);
    assert!(!batch.heartbeat);
    assert!(batch.cursor > cursor, "{} after {cursor}", batch.cursor);
    assert!(
        stamps.iter().all(|s| *s == batch.cursor),
        "stamps {stamps:?}, position {}",
        batch.cursor
    );
    let (cursor, mark) = (batch.cursor, batch.cursor_mark.clone());
    drop(stream);

    // More hidden changes, then globex comes back with its cursor: nothing to send, no
    // starting over, and its position still covers them (its cursor does not move).
    for i in 0..6 {
        update(&acme, "account", &account, &[&format!("city=Dorf {i}")]);
    }
    let mut again = client
        .subscribe(pb::SubscribeRequest {
            after_seq: cursor,
            cursor_mark: mark.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    while let Some(batch) = batch_within(&mut again, Duration::from_secs(3)).await {
        assert!(!batch.reset, "a known position started over");
        assert!(batch.items.is_empty(), "sent again: {:?}", batch.items);
        assert_eq!(batch.cursor, cursor);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_organizations_user_is_shown_no_sequence_numbers_of_ours() {
    use verbund_node::pb;
    // Through the joint deal globex reads the account's name, not its city.
    let (acme, _globex, account, deal, user) = joint_deal("Zaehl", "users/admin").await;
    let mut accounts = pb::account_service_client::AccountServiceClient::new(user.clone());
    let get = |mut c: pb::account_service_client::AccountServiceClient<_>| {
        let id = account.clone();
        async move {
            c.get_account(pb::GetRecordRequest { id })
                .await
                .unwrap()
                .into_inner()
                .meta
                .unwrap()
        }
    };
    let before = get(accounts.clone()).await;
    assert_eq!(before.seq, 0, "our sequence number was shown: {before:?}");
    // A change globex cannot read moves nothing it is shown.
    update(&acme, "account", &account, &["city=Bonn"]);
    let after = get(accounts.clone()).await;
    assert_eq!(
        (after.seq, after.update_time),
        (0, before.update_time),
        "globex saw that its account changed in a field it cannot read"
    );
    update(&acme, "account", &account, &["name=Zaehl SE"]);
    let renamed = accounts
        .get_account(pb::GetRecordRequest {
            id: account.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .meta
        .unwrap();
    assert!(renamed.update_time.unwrap().seconds >= before.update_time.unwrap().seconds);
    assert_ne!(
        renamed.field_versions["name"],
        before.field_versions["name"]
    );

    // Watch: globex's events carry tokens, not our sequence numbers, and resume from them.
    let watch = |after_seq: i64, ch: tonic::transport::Channel| {
        let account = account.clone();
        async move {
            let mut stream = pb::change_service_client::ChangeServiceClient::new(ch)
                .watch(pb::WatchRequest {
                    after_seq,
                    ..Default::default()
                })
                .await?
                .into_inner();
            // Up to the account's rename, the last change of all (visible to both).
            let mut got = Vec::new();
            loop {
                let ev = tokio::time::timeout(Duration::from_secs(60), stream.message())
                    .await
                    .expect("the watch went quiet before the rename")?
                    .expect("the watch ended before the rename");
                let rename = ev.record_id == account
                    && ev.op == pb::ChangeOp::Update as i32
                    && ev.changed_fields.iter().any(|f| f == "name");
                got.push((ev.seq, ev.record_id));
                if rename {
                    return Ok::<_, tonic::Status>(got);
                }
            }
        }
    };
    let theirs = watch(0, user.clone()).await.unwrap();
    let ours = watch(0, acme.admin().await).await.unwrap();
    let our_seqs: BTreeSet<i64> = ours.iter().map(|(s, _)| *s).collect();
    assert!(
        theirs.len() >= 3,
        "globex watches the deal and the account's name: {theirs:?}"
    );
    for (seq, id) in &theirs {
        assert!(
            !our_seqs.contains(seq),
            "globex was shown our sequence number {seq} ({id})"
        );
        assert!(*id == deal || *id == account, "{id}");
    }
    let resumed = watch(theirs[0].0, user.clone()).await.unwrap();
    assert_eq!(resumed, theirs[1..], "resuming after globex's first event");
    // A number that is not a token of ours (e.g. one of our sequence numbers) is refused.
    let e = watch(*our_seqs.iter().max().unwrap(), user.clone())
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e}");
    assert!(e.message().contains("after_seq"), "{e}");
}

#[test]
fn a_partners_own_contact_follows_its_rule_when_the_owner_tags_the_account_on_sqlite() {
    a_partners_own_contact_follows_its_rule_when_the_owner_tags_the_account(Backend::Sqlite);
}

#[test]
fn a_partners_own_contact_follows_its_rule_when_the_owner_tags_the_account_on_postgresql() {
    if Backend::Postgres.available("PostgreSQL sync test (a rule reaching through a replica)") {
        a_partners_own_contact_follows_its_rule_when_the_owner_tags_the_account(Backend::Postgres);
    }
}

/// Three organizations in a chain: acme shares an account with globex; globex keeps a contact
/// of its own at that account and shares, by rule, what hangs off accounts tagged `vip` with
/// initech. When acme tags the account, only a change of acme's record reaches globex (its
/// replica); globex's stream to initech must look at what of its own hangs off it and send
/// the contact. The account itself, acme's, never passes on to initech; untagging takes the
/// contact back.
fn a_partners_own_contact_follows_its_rule_when_the_owner_tags_the_account(backend: Backend) {
    let mut acme = TestNode::init_fixed_on("acme", backend);
    // globex's role may read an account's tags here (the default partner role may not).
    acme.append_policy("g2, globex, partner\np, partner, account, read, tags, always");
    let mut globex = TestNode::init_fixed_on("globex", backend);
    globex.append_policy("g2, initech, partner");
    let mut initech = TestNode::init_fixed_on("initech", backend);
    for n in [&mut acme, &mut globex, &mut initech] {
        n.run();
    }
    pin(&acme, &globex);
    pin(&globex, &acme);
    pin(&globex, &initech);
    pin(&initech, &globex);

    let account = create(&acme, "account", &["name=Kette AG", "city=Kassel"]);
    share(&acme, &account, "globex", "partner-account");
    wait_until("globex holds acme's account", || {
        get(&globex, "account", &account).is_some()
    });
    let contact = create(
        &globex,
        "contact",
        &[
            &format!("account_id={account}"),
            "first_name=Jana",
            "last_name=Glied",
        ],
    );
    // A record of globex's own that initech reaches directly: once it is there, initech's
    // link is up and has seen everything before it.
    let marker = create(&globex, "account", &["name=Marker GmbH"]);
    share(&globex, &marker, "initech", "partner-account");
    share_rule(&globex, "initech", "account-tag:vip", "partner-account");
    wait_until("initech holds globex's marker account", || {
        get(&initech, "account", &marker).is_some()
    });
    assert!(
        get(&initech, "contact", &contact).is_none(),
        "the contact's account is not tagged yet"
    );

    update(&acme, "account", &account, &["tags=vip"]);
    wait_until("globex's replica is tagged", || {
        field(&globex, "account", &account, "tags").is_some_and(|t| t.contains("vip"))
    });
    wait_until(
        "initech holds globex's contact at the tagged account",
        || get(&initech, "contact", &contact).is_some(),
    );
    let shown = get(&initech, "contact", &contact).unwrap();
    assert_eq!(shown["owner_org"], "globex");
    assert_eq!(shown["fields"]["last_name"], "Glied");
    assert!(
        get(&initech, "account", &account).is_none(),
        "acme's account passed on to a third organization"
    );

    // Untagged: the rule no longer reaches the account, so the contact is revoked.
    update(&acme, "account", &account, &["tags="]);
    wait_until("globex's replica is untagged", || {
        field(&globex, "account", &account, "tags").is_none_or(|t| !t.contains("vip"))
    });
    wait_until("initech's copy of the contact is revoked", || {
        get(&initech, "contact", &contact).is_none()
    });
    assert!(get(&initech, "account", &marker).is_some());
}
