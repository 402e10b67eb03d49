//! Backup and restore end to end, with real node processes over mutual TLS: `verbund backup`
//! of a running owner, more writes, `verbund restore` into the stopped owner, and the partner
//! converging to the restored owner. Also what a restore refuses.

mod support;

use support::federation::*;
use support::*;

fn backup(config: &std::path::Path, to: &std::path::Path) -> std::process::Output {
    verbund(&["backup", "--config", path_str(config), "--to", path_str(to)])
}

fn restore(config: &std::path::Path, from: &std::path::Path) -> std::process::Output {
    verbund(&[
        "restore",
        "--config",
        path_str(config),
        "--from",
        path_str(from),
    ])
}

#[test]
fn an_online_backup_restored_into_the_owner_brings_its_partner_back_to_that_state() {
    let (mut acme, globex) = owner_and_partner();
    let account = create(&acme, "account", &["name=Sicherung AG"]);
    let deal = create(
        &acme,
        "opportunity",
        &[
            &format!("account_id={account}"),
            "name=Before backup",
            "stage=qualification",
        ],
    );
    share(&acme, &account, "globex", "partner-account");
    share(&acme, &deal, "globex", "joint-deal");
    wait_until("globex holds the deal", || {
        get(&globex, "opportunity", &deal).is_some()
    });

    // Online: the node keeps running while the copy is taken.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("acme.backup");
    let config = acme.config();
    let o = backup(&config, &file);
    assert!(o.status.success(), "backup: {}", stderr(&o));
    assert!(stdout(&o).contains("organization acme"), "{}", stdout(&o));
    // A backup never overwrites a file.
    let again = backup(&config, &file);
    assert!(!again.status.success());
    assert!(
        stderr(&again).contains("exists already"),
        "{}",
        stderr(&again)
    );

    // After the backup: an edit and a new shared deal, both seen by globex.
    update(&acme, "opportunity", &deal, &["name=After backup"]);
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
    wait_until("globex saw the later changes", || {
        field(&globex, "opportunity", &deal, "name").as_deref() == Some("After backup")
            && get(&globex, "opportunity", &newer).is_some()
    });

    // A running node's database is never replaced.
    let o = restore(&config, &file);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("stop it first"), "{}", stderr(&o));

    acme.kill();
    let o = restore(&config, &file);
    assert!(o.status.success(), "restore: {}", stderr(&o));
    let out = stdout(&o);
    assert!(out.contains("kept as"), "{out}");
    // What the restore replaced is kept, with the later deal in it.
    let kept: Vec<_> = std::fs::read_dir(acme.home().join("data"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .filter(|n| n.contains("before-restore"))
        .collect();
    assert!(!kept.is_empty(), "the replaced database is kept");
    acme.run();

    // acme is back at the backup; globex follows it.
    assert_eq!(
        field(&acme, "opportunity", &deal, "name").as_deref(),
        Some("Before backup")
    );
    assert!(get(&acme, "opportunity", &newer).is_none());
    wait_until("globex converged to the restored owner", || {
        field(&globex, "opportunity", &deal, "name").as_deref() == Some("Before backup")
            && get(&globex, "opportunity", &newer).is_none()
    });
    // Writes flow as usual afterwards.
    update(&acme, "opportunity", &deal, &["name=After restore"]);
    wait_until("a later edit reached globex", || {
        field(&globex, "opportunity", &deal, "name").as_deref() == Some("After restore")
    });
}

#[test]
fn a_restore_refuses_another_organizations_backup_and_a_file_that_is_no_backup() {
    let (mut acme, mut globex) = owner_and_partner();
    let dir = tempfile::tempdir().unwrap();
    let globex_backup = dir.path().join("globex.backup");
    let o = backup(&globex.config(), &globex_backup);
    assert!(o.status.success(), "backup: {}", stderr(&o));
    acme.kill();
    globex.kill();
    let config = acme.config();
    let o = restore(&config, &globex_backup);
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("backup of globex, not of acme"),
        "{}",
        stderr(&o)
    );
    let junk = dir.path().join("junk.backup");
    std::fs::write(&junk, b"not a database at all, just text").unwrap();
    let o = restore(&config, &junk);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("junk.backup"), "{}", stderr(&o));
    // Nothing was replaced: acme starts with its own data.
    acme.run();
    let o = acme.cli(&["account", "list", "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
}
