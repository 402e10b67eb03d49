//! Sharing and policy end to end, on a real node of `acme` with the shipped example policy
//! and real partner certificates over mutual TLS: revocation and reassignment apply to the
//! very next call, a malformed policy is refused on reload, `policy check` explains with
//! policy lines and shares, and admin RPCs taking a record id are denied to every foreign
//! principal.

mod support;

use std::time::Duration;

use support::sharing_world::*;
use support::*;
use tonic::Code;
use verbund_core::RecordKind;
use verbund_node::pb;

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
