//! The operations endpoint of a real node process: `/healthz` and `/readyz` answer plain HTTP
//! without a client certificate, `/metrics` carries the named series and they move after a
//! write, per-partner series follow a real federation link, and the node tells systemd it
//! is ready through `$NOTIFY_SOCKET`.

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use support::federation::{create, pin, share, wait_until};
use support::{TestNode, fixed_port};
use verbund_node::pb;

/// A plain HTTP/1.1 GET: status code and body.
fn get(addr: &str, path: &str) -> (u16, String) {
    let mut stream = TcpStream::connect(addr).expect("connect to the ops endpoint");
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).unwrap();
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").expect("an HTTP answer");
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("a status line");
    // Bodies here are small and sent with Content-Length (not chunked).
    (status, body.to_string())
}

/// The value of the series whose line starts with `series` (name and labels), if present.
fn value(metrics: &str, series: &str) -> Option<f64> {
    metrics
        .lines()
        .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

#[test]
fn metrics_and_health_are_served_without_a_certificate_and_move_after_a_write() {
    let mut acme = TestNode::init("acme");
    acme.append_policy("g2, globex, partner");
    let ops = format!("127.0.0.1:{}", fixed_port());
    let cfg = std::fs::read_to_string(acme.config()).unwrap();
    let cfg = cfg.replace(
        "enabled = true\nlisten = \"127.0.0.1:0\"",
        &format!("enabled = true\nlisten = \"{ops}\""),
    );
    assert!(cfg.contains(&ops), "init writes an [ops] section");
    std::fs::write(acme.config(), cfg).unwrap();

    // systemd's side of Type=notify: a datagram socket named in $NOTIFY_SOCKET.
    let notify_dir = tempfile::tempdir().unwrap();
    let notify_path = notify_dir.path().join("notify");
    let notify = std::os::unix::net::UnixDatagram::bind(&notify_path).unwrap();
    notify
        .set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    acme.env
        .push(("NOTIFY_SOCKET".into(), notify_path.to_str().unwrap().into()));
    acme.run();
    let mut buf = [0u8; 128];
    let n = notify.recv(&mut buf).expect("READY=1 on the notify socket");
    assert_eq!(&buf[..n], b"READY=1");

    // Health without any certificate (plain TCP, no TLS at all).
    let (status, body) = get(&ops, "/healthz");
    assert_eq!((status, body.trim()), (200, "ok"));
    let (status, body) = get(&ops, "/readyz");
    assert_eq!(status, 200, "{body}");
    for check in [
        "database: ok",
        "policy: ok",
        "certificate: ok",
        "serving: ok",
    ] {
        assert!(body.contains(check), "{check} in {body}");
    }
    let (status, _) = get(&ops, "/nothing-here");
    assert_eq!(status, 404);
    // The probe a container HEALTHCHECK runs.
    let o = support::verbund(&["health", "--ops", &ops]);
    assert!(o.status.success(), "{}", support::stderr(&o));
    let o = support::verbund(&["health", "--ops", &ops, "--ready"]);
    assert!(o.status.success(), "{}", support::stderr(&o));
    assert!(support::stdout(&o).contains("database: ok"));
    let closed = format!("127.0.0.1:{}", fixed_port());
    let o = support::verbund(&["health", "--ops", &closed]);
    assert!(!o.status.success());

    let (status, before) = get(&ops, "/metrics");
    assert_eq!(status, 200);
    for series in [
        "verbund_db_pool_connections{state=\"idle\"}",
        "verbund_db_pool_max_connections",
        "verbund_conflicts_open",
        "verbund_audit_entries_written_total",
        "verbund_policy_reload_failures_total",
    ] {
        assert!(value(&before, series).is_some(), "{series} in\n{before}");
    }
    for series in [
        "verbund_certificate_expiry_seconds{kind=\"node\",org=\"acme\"",
        "verbund_certificate_expiry_seconds{kind=\"ca\",org=\"acme\"",
    ] {
        assert!(before.contains(series), "{series} in\n{before}");
    }
    assert!(
        before.trim_end().ends_with("# EOF"),
        "a complete exposition"
    );
    assert_eq!(value(&before, "verbund_policy_generation"), Some(1.0));
    let node_expiry = before
        .lines()
        .find(|l| l.starts_with("verbund_certificate_expiry_seconds{kind=\"node\""))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap();
    assert!(
        node_expiry > 300.0 * 86_400.0,
        "a fresh node certificate has about 397 days left: {node_expiry}"
    );

    // A write over mTLS, and a call the node refuses.
    let seq_before = value(&before, "verbund_change_seq").unwrap();
    let committed_before = value(
        &before,
        "verbund_writer_batches_total{outcome=\"committed\"}",
    )
    .unwrap_or(0.0);
    let jobs_before = value(&before, "verbund_writer_batch_jobs_count").unwrap_or(0.0);
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let mut accounts =
            pb::account_service_client::AccountServiceClient::new(acme.admin().await);
        accounts
            .create_account(pb::CreateAccountRequest {
                account: Some(pb::Account {
                    name: Some("Metrics GmbH".into()),
                    ..Default::default()
                }),
            })
            .await
            .unwrap();
        let bad = accounts
            .get_account(pb::GetRecordRequest {
                id: "not-an-id".into(),
            })
            .await
            .unwrap_err();
        assert_eq!(bad.code(), tonic::Code::InvalidArgument);
    });
    let (_, after) = get(&ops, "/metrics");
    let create_ok = "verbund_rpc_handled_total{grpc_service=\"verbund.v1.AccountService\",grpc_method=\"CreateAccount\",grpc_code=\"OK\"}";
    assert_eq!(value(&after, create_ok), Some(1.0), "{after}");
    let get_bad = "verbund_rpc_handled_total{grpc_service=\"verbund.v1.AccountService\",grpc_method=\"GetAccount\",grpc_code=\"INVALID_ARGUMENT\"}";
    assert_eq!(value(&after, get_bad), Some(1.0), "{after}");
    assert_eq!(
        value(
            &after,
            "verbund_rpc_duration_seconds_count{grpc_service=\"verbund.v1.AccountService\",grpc_method=\"CreateAccount\"}"
        ),
        Some(1.0)
    );
    assert!(value(&after, "verbund_change_seq").unwrap() > seq_before);
    assert!(
        value(
            &after,
            "verbund_writer_batches_total{outcome=\"committed\"}"
        )
        .unwrap()
            > committed_before
    );
    assert!(value(&after, "verbund_writer_batch_jobs_count").unwrap() > jobs_before);
    assert!(value(&after, "verbund_writer_batch_duration_seconds_count").unwrap() > jobs_before);

    // Per-partner series follow a real link: globex replicates what acme shares with it.
    let mut globex = TestNode::init("globex");
    globex.append_policy("g2, acme, partner");
    globex.run();
    pin(&acme, &globex);
    pin(&globex, &acme);
    let id = create(&acme, "account", &["name=Shared AG"]);
    share(&acme, &id, "globex", "partner-account");
    let theirs = create(&globex, "account", &["name=Globex Shared Ltd"]);
    share(&globex, &theirs, "acme", "partner-account");
    // acme's view of globex: the link up, globex's shared record held as a replica, nothing
    // behind either way, a pinned CA with an expiry.
    wait_until("acme reports globex's link, replicas and lag", || {
        let (_, m) = get(&ops, "/metrics");
        let v = |series: &str| value(&m, series);
        v("verbund_partner_link_state{partner=\"globex\",state=\"connected\"}") == Some(1.0)
            && v("verbund_partner_replicas{partner=\"globex\"}") == Some(1.0)
            && v("verbund_partner_lag_changes{partner=\"globex\",direction=\"inbound\"}")
                == Some(0.0)
            && v("verbund_partner_lag_changes{partner=\"globex\",direction=\"outbound\"}")
                == Some(0.0)
            && v("verbund_partner_snapshot_in_progress{partner=\"globex\"}") == Some(0.0)
            && v("verbund_partner_outbox_depth{partner=\"globex\"}") == Some(0.0)
            && v("verbund_partner_rejected_edits{partner=\"globex\"}") == Some(0.0)
            && v("verbund_partner_erasures_unacknowledged{partner=\"globex\"}") == Some(0.0)
            && m.contains("verbund_partner_last_contact_timestamp_seconds{partner=\"globex\"}")
            && m.contains("verbund_certificate_expiry_seconds{kind=\"partner_ca\",org=\"globex\"")
    });
    // Every family, now that each has series (an empty labelled family is not shown).
    let (_, last) = get(&ops, "/metrics");
    for (family, kind) in [
        ("verbund_rpc_handled", "counter"),
        ("verbund_rpc_duration_seconds", "histogram"),
        ("verbund_writer_batches", "counter"),
        ("verbund_writer_batch_jobs", "histogram"),
        ("verbund_writer_batch_duration_seconds", "histogram"),
        ("verbund_audit_entries_written", "counter"),
        ("verbund_db_pool_connections", "gauge"),
        ("verbund_db_pool_max_connections", "gauge"),
        ("verbund_partner_link_state", "gauge"),
        ("verbund_partner_lag_changes", "gauge"),
        ("verbund_partner_snapshot_in_progress", "gauge"),
        ("verbund_partner_outbox_depth", "gauge"),
        ("verbund_partner_rejected_edits", "gauge"),
        ("verbund_partner_replicas", "gauge"),
        ("verbund_partner_last_contact_timestamp_seconds", "gauge"),
        ("verbund_partner_erasures_unacknowledged", "gauge"),
        ("verbund_conflicts_open", "gauge"),
        ("verbund_change_seq", "gauge"),
        ("verbund_policy_generation", "gauge"),
        ("verbund_policy_reload_failures", "counter"),
        ("verbund_certificate_expiry_seconds", "gauge"),
    ] {
        let declared = format!("# TYPE {family} {kind}");
        assert!(last.contains(&declared), "{declared} missing in\n{last}");
    }
    drop(globex);
    drop(acme);
}

#[test]
fn readiness_fails_and_names_the_check_when_the_node_certificate_has_expired() {
    let mut acme = TestNode::init("acme");
    let ops = format!("127.0.0.1:{}", fixed_port());
    let cfg = std::fs::read_to_string(acme.config()).unwrap().replace(
        "enabled = true\nlisten = \"127.0.0.1:0\"",
        &format!("enabled = true\nlisten = \"{ops}\""),
    );
    std::fs::write(acme.config(), cfg).unwrap();
    // The node's clock 400 days ahead (the fault-injection knob): its 397-day certificate is
    // past its end as far as the node can tell.
    acme.env.push((
        "VERBUND_CLOCK_OFFSET_MS".into(),
        (400_i64 * 86_400_000).to_string(),
    ));
    acme.run();
    let (status, body) = get(&ops, "/healthz");
    assert_eq!(status, 200, "alive all the same: {body}");
    let (status, body) = get(&ops, "/readyz");
    assert_eq!(status, 503, "{body}");
    assert!(body.starts_with("not ready"), "{body}");
    assert!(
        body.contains("certificate: FAILED (node certificate expired on"),
        "{body}"
    );
    assert!(body.contains("database: ok"), "{body}");
    let o = support::verbund(&["health", "--ops", &ops, "--ready"]);
    assert!(!o.status.success(), "verbund health --ready fails too");
    let (_, metrics) = get(&ops, "/metrics");
    let expiry = metrics
        .lines()
        .find(|l| l.starts_with("verbund_certificate_expiry_seconds{kind=\"node\""))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap();
    assert!(
        expiry < 0.0,
        "an expired certificate has negative seconds left: {expiry}"
    );
}
