//! Helpers for end-to-end tests of federation sync: pinning partners, records through the
//! CLI, shares, sync status, and waiting for a state (never for a rate).

use std::process::Output;
use std::time::{Duration, Instant};

use serde_json::Value;

use super::{Backend, TestNode, stderr, stdout, verbund};

/// How long a test waits for a state before it fails.
pub const WAIT: Duration = Duration::from_secs(90);

pub fn json(o: &Output) -> Value {
    assert!(o.status.success(), "command failed: {}", stderr(o));
    serde_json::from_str(stdout(o).trim()).unwrap_or_else(|e| panic!("{e}: {}", stdout(o)))
}

pub fn export_ca(node: &TestNode) -> (std::path::PathBuf, String) {
    let o = verbund(&["ca", "export", "--config", node.config().to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    let fingerprint = stderr(&o).rsplit(": ").next().unwrap().trim().to_string();
    let path = node.home().join(format!("exported-{}.crt", node.org));
    std::fs::write(&path, stdout(&o)).unwrap();
    (path, fingerprint)
}

/// `host` pins `partner` (CA, endpoint).
pub fn pin(host: &TestNode, partner: &TestNode) {
    let (ca, fingerprint) = export_ca(partner);
    let o = host.cli(&[
        "partner",
        "add",
        "--org",
        &partner.org,
        "--ca",
        ca.to_str().unwrap(),
        "--endpoint",
        &partner.endpoint,
        "--fingerprint",
        &fingerprint,
    ]);
    assert!(o.status.success(), "partner add: {}", stderr(&o));
}

pub fn create(node: &TestNode, kind: &str, fields: &[&str]) -> String {
    let mut args = vec![kind, "create"];
    args.extend(fields);
    args.push("--json");
    json(&node.cli(&args))["id"].as_str().unwrap().to_string()
}

/// The record as `node` shows it to its admin (None: not there).
pub fn get(node: &TestNode, kind: &str, id: &str) -> Option<Value> {
    let o = node.cli(&[kind, "get", id, "--json"]);
    if !o.status.success() {
        assert!(
            stderr(&o).contains("NOT_FOUND"),
            "{kind} get: {}",
            stderr(&o)
        );
        return None;
    }
    Some(json(&o))
}

pub fn field(node: &TestNode, kind: &str, id: &str, name: &str) -> Option<String> {
    get(node, kind, id).and_then(|r| {
        r["fields"][name]
            .as_str()
            .map(str::to_string)
            .or_else(|| r["fields"].get(name).map(|v| v.to_string()))
    })
}

pub fn update(node: &TestNode, kind: &str, id: &str, fields: &[&str]) {
    let mut args = vec![kind, "update", id];
    args.extend(fields);
    let o = node.cli(&args);
    assert!(o.status.success(), "{kind} update: {}", stderr(&o));
}

pub fn wait_until(what: &str, mut ok: impl FnMut() -> bool) {
    let start = Instant::now();
    while start.elapsed() < WAIT {
        if ok() {
            return;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    panic!("timed out waiting until {what}");
}

/// `node`'s `partner status` row for `partner` (Null if none).
pub fn status_of(node: &TestNode, partner: &str) -> Value {
    let rows = json(&node.cli(&["partner", "status", "--json"]));
    rows.as_array()
        .unwrap()
        .iter()
        .find(|r| r["org"] == partner)
        .cloned()
        .unwrap_or(Value::Null)
}

/// `node`'s outbox entries (`verbund outbox list --json`).
pub fn outbox(node: &TestNode) -> Vec<Value> {
    json(&node.cli(&["outbox", "list", "--json"]))
        .as_array()
        .cloned()
        .unwrap_or_default()
}

pub fn share(owner: &TestNode, id: &str, org: &str, profile: &str) {
    let o = owner.cli(&[
        "share",
        "add",
        "--record",
        id,
        "--org",
        org,
        "--profile",
        profile,
    ]);
    assert!(o.status.success(), "share add: {}", stderr(&o));
}

/// The link of `node` to `owner` is up and reports no error.
pub fn link_healthy(node: &TestNode, owner: &str) -> bool {
    let s = status_of(node, owner);
    s["state"] == "connected" && s["last_error"] == ""
}

/// `owner` shares every record matching `rule` with `org` under `profile`; the rule's id.
pub fn share_rule(owner: &TestNode, org: &str, rule: &str, profile: &str) -> String {
    let o = owner.cli(&[
        "share",
        "rule",
        "add",
        "--org",
        org,
        "--rule",
        rule,
        "--profile",
        profile,
        "--json",
    ]);
    json(&o)["id"].as_str().unwrap().to_string()
}

/// Creates `n` accounts tagged `tag` on `node` (eight at a time).
pub async fn bulk_accounts(node: &TestNode, n: usize, tag: &str) {
    use verbund_core::{FieldMap, Value};
    let ch = node.admin().await;
    let mut pending = Vec::new();
    for i in 0..n {
        let mut fields = FieldMap::new();
        fields.insert("name".into(), Value::Text(format!("Bulk {tag} {i}")));
        fields.insert("tags".into(), Value::List(vec![tag.to_string()]));
        let mut client =
            verbund_node::pb::account_service_client::AccountServiceClient::new(ch.clone());
        pending.push(tokio::spawn(async move {
            client
                .create_account(verbund_node::pb::CreateAccountRequest {
                    account: Some(verbund_node::convert::message_from_fields(&fields)),
                })
                .await
                .unwrap();
        }));
        if pending.len() == 8 {
            for p in pending.drain(..) {
                p.await.unwrap();
            }
        }
    }
    for p in pending {
        p.await.unwrap();
    }
}

/// How many live replicas of `owner`'s records `node` holds.
pub fn replicas(node: &TestNode, owner: &str) -> i64 {
    status_of(node, owner)["replicas"].as_i64().unwrap_or(0)
}

/// acme and globex, running and pinned to each other; globex is acme's partner.
pub fn owner_and_partner() -> (TestNode, TestNode) {
    owner_and_partner_on(Backend::Sqlite)
}

/// `owner_and_partner` with both databases on `backend`.
pub fn owner_and_partner_on(backend: Backend) -> (TestNode, TestNode) {
    let mut acme = TestNode::init_fixed_on("acme", backend);
    acme.append_policy("g2, globex, partner");
    let mut globex = TestNode::init_fixed_on("globex", backend);
    acme.run();
    globex.run();
    pin(&acme, &globex);
    pin(&globex, &acme);
    (acme, globex)
}

/// `owner` shares every account tagged `tag` with `org` (profile partner-account); the rule's id.
pub fn add_tag_rule(owner: &TestNode, org: &str, tag: &str) -> String {
    share_rule(owner, org, &format!("account-tag:{tag}"), "partner-account")
}
