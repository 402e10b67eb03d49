//! Sync under faults, end to end with real node processes over mutual TLS on loopback: a
//! delete of a shared record, a clock running an hour ahead (on the partner, then on the
//! owner), an owner restored from a backup, and erased data on disk. Each test checks what
//! a user would see: records through each node's CLI, `partner status`, `outbox list`, and
//! the database files themselves. Each runs with every node on SQLite and again with every
//! node on PostgreSQL (a schema each), except the restore from a backup (SQLite's files).

mod support;

use std::path::Path;

use support::federation::*;
use support::*;

const HOUR_MS: &str = "3600000";

/// acme (owner) with globex as a partner company and fixit as a supplier, pinned both ways;
/// fixed ports so nodes keep their endpoint across restarts; every database on `backend`.
fn owner_with_partners(backend: Backend) -> (TestNode, TestNode, TestNode) {
    let mut acme = TestNode::init_fixed_on("acme", backend);
    acme.append_policy("g2, globex, partner\ng2, fixit, supplier");
    let mut globex = TestNode::init_fixed_on("globex", backend);
    let mut fixit = TestNode::init_fixed_on("fixit", backend);
    for n in [&mut acme, &mut globex, &mut fixit] {
        n.run();
    }
    for partner in [&globex, &fixit] {
        pin(&acme, partner);
        pin(partner, &acme);
    }
    (acme, globex, fixit)
}

/// An account shared with globex and a deal on it shared as a joint deal.
fn shared_deal(acme: &TestNode, globex: &TestNode, name: &str) -> (String, String) {
    let account = create(acme, "account", &[&format!("name={name} AG")]);
    let deal = create(
        acme,
        "opportunity",
        &[
            &format!("account_id={account}"),
            &format!("name={name} deal"),
            "stage=qualification",
        ],
    );
    share(acme, &account, "globex", "partner-account");
    share(acme, &deal, "globex", "joint-deal");
    wait_until("globex holds the deal", || {
        get(globex, "opportunity", &deal).is_some()
    });
    (account, deal)
}

fn restart_with_clock(node: &mut TestNode, offset_ms: Option<&str>) {
    node.kill();
    node.env = offset_ms
        .map(|o| vec![("VERBUND_CLOCK_OFFSET_MS".to_string(), o.to_string())])
        .unwrap_or_default();
    node.run();
}

#[test]
fn a_deleted_shared_record_leaves_every_holder_and_the_links_stay_healthy_on_sqlite() {
    a_deleted_shared_record_leaves_every_holder_and_the_links_stay_healthy(Backend::Sqlite);
}

#[test]
fn a_deleted_shared_record_leaves_every_holder_and_the_links_stay_healthy_on_postgresql() {
    if Backend::Postgres.available("PostgreSQL sync test (a deleted shared record)") {
        a_deleted_shared_record_leaves_every_holder_and_the_links_stay_healthy(Backend::Postgres);
    }
}

fn a_deleted_shared_record_leaves_every_holder_and_the_links_stay_healthy(backend: Backend) {
    let (acme, mut globex, fixit) = owner_with_partners(backend);
    let (account, deal) = shared_deal(&acme, &globex, "Loesch");
    let case = create(
        &acme,
        "case",
        &[
            &format!("account_id={account}"),
            "subject=Pumpe leckt",
            "assigned_org=fixit",
        ],
    );
    share_rule(&acme, "fixit", "case-assigned", "supplier-case");
    wait_until("fixit holds the case", || {
        get(&fixit, "case", &case).is_some()
    });

    // The owner deletes both: each holder's copy goes.
    for (kind, id) in [("opportunity", &deal), ("case", &case)] {
        let o = acme.cli(&[kind, "delete", id]);
        assert!(o.status.success(), "{kind} delete: {}", stderr(&o));
    }
    wait_until("the deleted deal left globex", || {
        get(&globex, "opportunity", &deal).is_none()
    });
    wait_until("the deleted case left fixit", || {
        get(&fixit, "case", &case).is_none()
    });

    // The links stay healthy: later changes flow, also across a restart of the partner.
    update(&acme, "account", &account, &["name=Loesch II AG"]);
    wait_until("a later edit reached globex", || {
        field(&globex, "account", &account, "name").as_deref() == Some("Loesch II AG")
    });
    assert!(
        link_healthy(&globex, "acme"),
        "{}",
        status_of(&globex, "acme")
    );
    assert!(
        link_healthy(&fixit, "acme"),
        "{}",
        status_of(&fixit, "acme")
    );
    globex.restart();
    update(&acme, "account", &account, &["name=Loesch III AG"]);
    wait_until("an edit after the restart reached globex", || {
        field(&globex, "account", &account, "name").as_deref() == Some("Loesch III AG")
    });
    assert!(get(&globex, "opportunity", &deal).is_none());
    let s = status_of(&globex, "acme");
    assert!(link_healthy(&globex, "acme"), "{s}");
    assert_eq!(s["quarantined"], 0, "nothing was set aside: {s}");
}

#[test]
fn a_partner_clock_an_hour_ahead_defers_only_its_edits_and_recovers_after_the_fix_on_sqlite() {
    a_partner_clock_an_hour_ahead_defers_only_its_edits_and_recovers_after_the_fix(Backend::Sqlite);
}

#[test]
fn a_partner_clock_an_hour_ahead_defers_only_its_edits_and_recovers_after_the_fix_on_postgresql() {
    if Backend::Postgres.available("PostgreSQL sync test (a partner's clock ahead)") {
        a_partner_clock_an_hour_ahead_defers_only_its_edits_and_recovers_after_the_fix(
            Backend::Postgres,
        );
    }
}

fn a_partner_clock_an_hour_ahead_defers_only_its_edits_and_recovers_after_the_fix(
    backend: Backend,
) {
    let (acme, mut globex, _fixit) = owner_with_partners(backend);
    let (_, deal) = shared_deal(&acme, &globex, "Skew");

    restart_with_clock(&mut globex, Some(HOUR_MS));
    wait_until("globex is connected again", || {
        link_healthy(&globex, "acme")
    });
    update(&globex, "opportunity", &deal, &["stage=proposal"]);
    wait_until(
        "the owner deferred globex's edit, naming whose clock is ahead",
        || {
            outbox(&globex).iter().any(|e| {
                e["state"] == "pending"
                    && e["last_error"].as_str().is_some_and(|m| {
                        m.contains("globex's clock is about 3") && m.contains("s ahead of acme's")
                    })
            })
        },
    );
    // Only that edit waits: the owner's edits still reach globex, the link stays up.
    update(&acme, "opportunity", &deal, &["name=Skew deal 2"]);
    wait_until("the owner's edit reached globex despite the skew", || {
        field(&globex, "opportunity", &deal, "name").as_deref() == Some("Skew deal 2")
    });
    assert_eq!(status_of(&globex, "acme")["state"], "connected");
    assert_eq!(
        field(&acme, "opportunity", &deal, "stage").as_deref(),
        Some("qualification"),
        "a version an hour ahead is not taken"
    );

    // The clock is corrected: at start globex re-stamps the edit, says so, and it arrives.
    restart_with_clock(&mut globex, None);
    let note = status_of(&globex, "acme")["node_clock_note"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(
        note.contains("ahead of the wall clock") && note.contains("1 pending edit(s)"),
        "{note}"
    );
    wait_until("the re-stamped edit reached the owner", || {
        field(&acme, "opportunity", &deal, "stage").as_deref() == Some("proposal")
    });
    wait_until("globex's outbox is empty", || outbox(&globex).is_empty());
    update(&globex, "opportunity", &deal, &["stage=negotiation"]);
    wait_until("a new edit after the fix is taken at once", || {
        field(&acme, "opportunity", &deal, "stage").as_deref() == Some("negotiation")
    });
}

#[test]
fn an_owner_clock_an_hour_ahead_is_quarantined_at_the_partner_and_recovers_after_the_fix_on_sqlite()
{
    an_owner_clock_an_hour_ahead_is_quarantined_at_the_partner_and_recovers_after_the_fix(
        Backend::Sqlite,
    );
}

#[test]
fn an_owner_clock_an_hour_ahead_is_quarantined_at_the_partner_and_recovers_after_the_fix_on_postgresql()
 {
    if Backend::Postgres.available("PostgreSQL sync test (an owner's clock ahead)") {
        an_owner_clock_an_hour_ahead_is_quarantined_at_the_partner_and_recovers_after_the_fix(
            Backend::Postgres,
        );
    }
}

fn an_owner_clock_an_hour_ahead_is_quarantined_at_the_partner_and_recovers_after_the_fix(
    backend: Backend,
) {
    let (mut acme, globex, _fixit) = owner_with_partners(backend);
    let (_, deal) = shared_deal(&acme, &globex, "Vorlauf");

    restart_with_clock(&mut acme, Some(HOUR_MS));
    update(&acme, "opportunity", &deal, &["name=Vorlauf ahead"]);
    wait_until(
        "globex set the item aside, naming whose clock is ahead",
        || {
            let s = status_of(&globex, "acme");
            s["quarantined"] == 1
                && s["quarantine_note"].as_str().is_some_and(|n| {
                    n.contains("acme's clock is about 3") && n.contains("s ahead of globex's")
                })
        },
    );
    wait_until("acme sees what globex set aside", || {
        status_of(&acme, "globex")["partner_quarantined"] == 1
    });
    assert_eq!(
        field(&globex, "opportunity", &deal, "name").as_deref(),
        Some("Vorlauf deal")
    );
    // Everything else flows: globex's edit reaches acme, the link stays up.
    update(&globex, "opportunity", &deal, &["stage=proposal"]);
    wait_until("globex's edit reached the skewed owner", || {
        field(&acme, "opportunity", &deal, "stage").as_deref() == Some("proposal")
    });
    assert_eq!(status_of(&globex, "acme")["state"], "connected");

    // acme's clock is corrected: it re-stamps what it wrote ahead and globex takes it.
    restart_with_clock(&mut acme, None);
    let note = status_of(&acme, "globex")["node_clock_note"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(note.contains("re-stamped"), "{note}");
    wait_until("the owner's edit reached globex after the fix", || {
        field(&globex, "opportunity", &deal, "name").as_deref() == Some("Vorlauf ahead")
    });
    wait_until("nothing is left in quarantine, on either side", || {
        status_of(&globex, "acme")["quarantined"] == 0
            && status_of(&acme, "globex")["partner_quarantined"] == 0
    });
    assert_eq!(
        field(&globex, "opportunity", &deal, "stage").as_deref(),
        Some("proposal")
    );
}

/// SQLite only: the backup is a copy of the node's directory, database file included
/// (`verbund backup` and `restore` are SQLite's; PostgreSQL has pg_dump and pg_restore).
#[test]
fn partners_of_an_owner_restored_from_a_backup_converge_and_offer_lost_edits_again() {
    let (mut acme, globex, _fixit) = owner_with_partners(Backend::Sqlite);
    let (account, deal) = shared_deal(&acme, &globex, "Sicherung");
    let kept = create(
        &acme,
        "opportunity",
        &[
            &format!("account_id={account}"),
            "name=Kept deal",
            "stage=qualification",
        ],
    );
    share(&acme, &kept, "globex", "joint-deal");
    wait_until("globex holds both deals", || {
        get(&globex, "opportunity", &kept).is_some()
    });

    // A backup of acme's directory, taken while it is stopped.
    acme.kill();
    let backup = tempfile::tempdir().unwrap();
    copy_dir(&acme.home(), backup.path());
    acme.run();

    // After the backup: an owner edit, a partner edit the owner takes, an unshare, a new
    // shared record.
    update(&acme, "opportunity", &deal, &["name=Lost name"]);
    update(&globex, "opportunity", &deal, &["stage=proposal"]);
    wait_until("globex's edit was taken by acme", || {
        field(&acme, "opportunity", &deal, "stage").as_deref() == Some("proposal")
            && outbox(&globex).is_empty()
    });
    let o = acme.cli(&["share", "revoke", "--record", &kept, "--org", "globex"]);
    assert!(o.status.success(), "share revoke: {}", stderr(&o));
    let newer = create(
        &acme,
        "opportunity",
        &[
            &format!("account_id={account}"),
            "name=Newer deal",
            "stage=qualification",
        ],
    );
    share(&acme, &newer, "globex", "joint-deal");
    wait_until("globex saw all of it", || {
        field(&globex, "opportunity", &deal, "name").as_deref() == Some("Lost name")
            && get(&globex, "opportunity", &kept).is_none()
            && get(&globex, "opportunity", &newer).is_some()
    });

    // acme is restored from the backup.
    acme.kill();
    std::fs::remove_dir_all(acme.home()).unwrap();
    copy_dir(backup.path(), &acme.home());
    acme.run();

    wait_until("globex converged to the restored owner", || {
        field(&globex, "opportunity", &deal, "name").as_deref() == Some("Sicherung deal")
            && get(&globex, "opportunity", &kept).is_some()
            && get(&globex, "opportunity", &newer).is_none()
    });
    wait_until("globex's lost edit was offered again and taken", || {
        field(&acme, "opportunity", &deal, "stage").as_deref() == Some("proposal")
    });
    let s = status_of(&globex, "acme");
    assert!(
        s["history_note"]
            .as_str()
            .is_some_and(|n| n.contains("restored from a backup")),
        "{s}"
    );
    wait_until("the link is healthy and the outbox empty", || {
        link_healthy(&globex, "acme") && outbox(&globex).is_empty()
    });
    // Later changes flow as usual.
    update(&acme, "opportunity", &deal, &["name=After restore"]);
    wait_until("a later edit reached globex", || {
        field(&globex, "opportunity", &deal, "name").as_deref() == Some("After restore")
    });
}

/// Every file of a node's directory that holds `needle`.
fn files_holding(dir: &Path, needle: &[u8]) -> Vec<String> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let entry = entry.unwrap();
        let path = entry.path();
        if entry.file_type().unwrap().is_dir() {
            found.extend(files_holding(&path, needle));
        } else if let Ok(bytes) = std::fs::read(&path)
            && bytes.windows(needle.len()).any(|w| w == needle)
        {
            found.push(path.display().to_string());
        }
    }
    found
}

/// Where `node`'s database holds `needle`: on SQLite the files of its directory; on
/// PostgreSQL the tables of its schema with a visible row holding it (dead row versions stay
/// in PostgreSQL's files until vacuumed, as the README says, and the files are the server's).
fn places_holding(node: &TestNode, needle: &str) -> Vec<String> {
    match &node.pg {
        None => files_holding(&node.home(), needle.as_bytes()),
        Some(schema) => schema
            .tables_holding(needle)
            .into_iter()
            .map(|(table, rows)| format!("{}.{table} ({rows} rows)", schema.name))
            .collect(),
    }
}

#[test]
fn erased_personal_data_is_gone_from_the_database_files_of_every_node_on_sqlite() {
    erased_personal_data_is_gone_from_the_database_of_every_node(Backend::Sqlite);
}

/// On PostgreSQL, through SQL: no visible row of any table of either node holds the person.
#[test]
fn erased_personal_data_is_gone_from_the_database_tables_of_every_node_on_postgresql() {
    if Backend::Postgres.available("PostgreSQL sync test (erased personal data)") {
        erased_personal_data_is_gone_from_the_database_of_every_node(Backend::Postgres);
    }
}

fn erased_personal_data_is_gone_from_the_database_of_every_node(backend: Backend) {
    let (acme, globex, _fixit) = owner_with_partners(backend);
    let (account, _) = shared_deal(&acme, &globex, "Privat");
    let email = "zq.erase.7731@kunde.example";
    let last_name = "Xylophonova";
    let contact = create(
        &acme,
        "contact",
        &[
            &format!("account_id={account}"),
            "first_name=Quirina",
            &format!("last_name={last_name}"),
            &format!("email={email}"),
        ],
    );
    update(&acme, "contact", &contact, &["phone=+49 30 1234567"]);
    wait_until("globex holds the contact", || {
        get(&globex, "contact", &contact).is_some()
    });
    for node in [&acme, &globex] {
        assert!(
            !places_holding(node, email).is_empty(),
            "the test looks in the right place: {} holds the address before",
            node.org
        );
    }
    let o = acme.cli(&["erase", &contact]);
    assert!(o.status.success(), "erase: {}", stderr(&o));
    let said = stdout(&o);
    assert!(
        said.contains(" erased at 20") && !said.contains(" ms"),
        "a time a person can read: {said}"
    );
    wait_until("globex acknowledged the erasure", || {
        let s = json(&acme.cli(&["erasure", "status", &contact, "--json"]));
        s["receivers"]
            .as_array()
            .is_some_and(|r| r.iter().all(|r| r["state"] == "acknowledged"))
    });
    wait_until("no database of either node holds the person", || {
        [&acme, &globex]
            .iter()
            .all(|n| places_holding(n, email).is_empty() && places_holding(n, last_name).is_empty())
    });
}
