//! The node's logs as an operator reads them: `--log-format json` gives one JSON object per
//! line; every call's events carry the request id (the client's `x-request-id`, echoed back)
//! and the principal; every refused handshake names its reason; no field value is logged.

mod support;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use support::TestNode;
use support::trust::call_fails;
use verbund_node::client::ClientIdentity;
use verbund_node::identity::PrincipalKind;
use verbund_node::{pb, pki};

const SECRET_NAME: &str = "Confidential Customer Name AG";

/// The node's log lines (JSON) once `done` holds for them, or after 60 s.
fn log_lines(path: &std::path::Path, done: impl Fn(&[Value]) -> bool) -> Vec<Value> {
    let start = Instant::now();
    loop {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        let lines: Vec<Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
            .collect();
        if done(&lines) || start.elapsed() > Duration::from_secs(60) {
            return lines;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn refused_because(lines: &[Value], reason: &str) -> bool {
    lines.iter().any(|l| {
        l["fields"]["message"]
            .as_str()
            .is_some_and(|m| m.starts_with("TLS handshake refused"))
            && l["fields"]["reason"]
                .as_str()
                .is_some_and(|r| r.contains(reason))
    })
}

fn create_logged(lines: &[Value]) -> Option<&Value> {
    lines.iter().find(|l| {
        l["fields"]["message"] == "rpc finished"
            && l["span"]["method"] == "verbund.v1.AccountService/CreateAccount"
    })
}

#[test]
fn json_logs_carry_request_id_and_principal_and_name_refusal_reasons() {
    let mut acme = TestNode::init("acme");
    let log = acme.home().join("node.log");
    let mut child = Command::new(support::bin())
        .args(["--log-format", "json", "run", "--config"])
        .arg(acme.config())
        .env("VERBUND_LOG", "info,verbund_node::metrics=debug")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let mut serving = String::new();
    for line in BufReader::new(child.stdout.take().unwrap()).lines() {
        let line = line.unwrap();
        if let Some(addr) = line.split(" serving on ").nth(1) {
            serving = addr.split_whitespace().next().unwrap().to_string();
            break;
        }
    }
    assert!(!serving.is_empty(), "the node did not start");
    acme.endpoint = format!("https://{serving}");

    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let mut accounts =
            pb::account_service_client::AccountServiceClient::new(acme.admin().await);
        let mut req = tonic::Request::new(pb::CreateAccountRequest {
            account: Some(pb::Account {
                name: Some(SECRET_NAME.into()),
                ..Default::default()
            }),
        });
        req.metadata_mut()
            .insert("x-request-id", "test-req-42".parse().unwrap());
        let resp = accounts.create_account(req).await.unwrap();
        assert_eq!(
            resp.metadata().get("x-request-id").unwrap(),
            "test-req-42",
            "the request id is echoed"
        );
        // No client certificate at all.
        let anonymous = ClientIdentity {
            ca_pem: acme.ca_pem(),
            cert_and_key: None,
        };
        assert!(call_fails(&acme, &anonymous).await);
        // A certificate from a CA the node does not trust.
        let stranger_ca = pki::new_ca("globex").unwrap();
        let stranger = pki::issue(
            &stranger_ca,
            "globex",
            PrincipalKind::User,
            "mallory",
            &[],
            &[],
            30,
        )
        .unwrap();
        let stranger = ClientIdentity {
            ca_pem: acme.ca_pem(),
            cert_and_key: Some((stranger.cert_pem, stranger.key_pem)),
        };
        assert!(call_fails(&acme, &stranger).await);
    });

    let lines = log_lines(&log, |lines| {
        create_logged(lines).is_some()
            && refused_because(lines, "presented no certificate")
            && refused_because(lines, "not issued by a trusted CA")
    });
    let _ = child.kill();
    let _ = child.wait();
    let text = std::fs::read_to_string(&log).unwrap();

    let create = create_logged(&lines).unwrap_or_else(|| panic!("no rpc line in\n{text}"));
    assert_eq!(create["span"]["request_id"], "test-req-42", "{create}");
    assert_eq!(create["span"]["principal"], "verbund://acme/user/admin");
    assert_eq!(create["fields"]["code"], "OK");
    assert!(
        refused_because(&lines, "presented no certificate"),
        "no refusal naming the missing certificate in\n{text}"
    );
    assert!(
        refused_because(&lines, "not issued by a trusted CA"),
        "no refusal naming the unknown CA in\n{text}"
    );
    assert!(
        !text.contains(SECRET_NAME),
        "a field value reached the log:\n{text}"
    );
}
