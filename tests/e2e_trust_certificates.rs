//! Federation trust end to end, certificates over time: revoked certificates (a node's own
//! revocation list and a partner's), a removed partner's open connection, renewal while
//! serving, CA rollovers (a node's under load, and both CAs pinned during a partner's), and
//! silent connections closed after the idle timeout.

mod support;

use support::trust::*;
use support::{TestNode, stderr, stdout, verbund};
use verbund_node::client::{ClientIdentity, connect};
use verbund_node::identity::PrincipalKind;
use verbund_node::pb;
use verbund_node::pki;

/// Calls a client makes through a certificate renewal or CA rollover, at least.
const MIN_CALLS: u32 = 60;

/// Polls `check` for up to 10 s (a signal is handled asynchronously by the node).
async fn eventually<F, Fut>(mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    for _ in 0..100 {
        if check().await {
            return true;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    false
}

#[tokio::test]
async fn a_revoked_certificate_is_refused_and_a_malformed_crl_never_replaces_a_good_one() {
    let acme = TestNode::start("acme");
    let config = acme.config();
    let config = config.to_str().unwrap();
    for user in ["bob", "carol"] {
        assert!(
            verbund(&["cert", "issue", "--config", config, "--user", user])
                .status
                .success()
        );
    }
    let bob = acme.identity_of("bob");
    let carol = acme.identity_of("carol");
    assert!(!call_fails(&acme, &bob).await);
    // Revoke bob by file, carol by serial.
    let o = verbund(&[
        "cert",
        "revoke",
        "--config",
        config,
        acme.home().join("users/bob.crt").to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let carol_serial = hex_serial(&acme.home().join("users/carol.crt"));
    let o = verbund(&["cert", "revoke", "--config", config, &carol_serial]);
    assert!(o.status.success(), "{}", stderr(&o));
    let o = verbund(&["crl", "export", "--config", config]);
    assert!(stdout(&o).contains("BEGIN X509 CRL"), "{}", stdout(&o));
    // Until the node reloads, the old (empty) list applies; after SIGHUP both are refused.
    acme.hup();
    assert!(
        eventually(|| call_fails(&acme, &bob)).await,
        "a revoked certificate was still accepted"
    );
    assert!(
        call_fails(&acme, &carol).await,
        "a certificate revoked by serial was still accepted"
    );
    assert!(
        !call_fails(&acme, &acme.admin_identity()).await,
        "the admin must still get in"
    );
    // A certificate of another CA cannot be revoked here.
    let stranger = pki::new_ca("umbrella").unwrap();
    let foreign = pki::issue(
        &stranger,
        "umbrella",
        PrincipalKind::User,
        "x",
        &[],
        &[],
        30,
    )
    .unwrap();
    let foreign_path = acme.home().join("foreign.crt");
    std::fs::write(&foreign_path, &foreign.cert_pem).unwrap();
    assert!(
        !verbund(&[
            "cert",
            "revoke",
            "--config",
            config,
            foreign_path.to_str().unwrap()
        ])
        .status
        .success()
    );
    // A malformed list is refused on reload; the node keeps serving with the last good list.
    std::fs::write(
        acme.home().join("ca/crl.pem"),
        "-----BEGIN X509 CRL-----\nbm90IGEgY3Js\n-----END X509 CRL-----\n",
    )
    .unwrap();
    acme.hup();
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    assert!(
        !call_fails(&acme, &acme.admin_identity()).await,
        "the node must keep serving"
    );
    assert!(
        call_fails(&acme, &bob).await,
        "the last good revocation list must stay in force"
    );
    // And the CLI refuses to extend a malformed list rather than silently starting over.
    let dave_serial = "0a0b0c";
    assert!(
        !verbund(&["cert", "revoke", "--config", config, dave_serial])
            .status
            .success()
    );
}

fn hex_serial(cert: &std::path::Path) -> String {
    let pem = std::fs::read_to_string(cert).unwrap();
    pki::serial_of(&pem)
        .unwrap()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[tokio::test]
async fn a_partner_removed_while_connected_loses_its_open_connection_within_the_max_age() {
    let mut acme = TestNode::start("acme");
    // A short maximum connection age for the test.
    acme.kill();
    let toml = std::fs::read_to_string(acme.config()).unwrap().replace(
        "max_connection_age_secs = 600",
        "max_connection_age_secs = 2",
    );
    std::fs::write(acme.config(), toml).unwrap();
    acme.run();
    let globex = TestNode::start("globex");
    let (_, fp) = export_ca(&globex);
    assert!(add_partner(&acme, &globex, &fp).status.success());
    let bob = pki::issue(
        &globex.ca_pair(),
        "globex",
        PrincipalKind::User,
        "bob",
        &[],
        &[],
        30,
    )
    .unwrap();
    let ch = connect(&acme.endpoint, &partner_client(&acme, &bob))
        .await
        .unwrap();
    let mut node = pb::node_service_client::NodeServiceClient::new(ch);
    assert!(node.who_am_i(pb::WhoAmIRequest {}).await.is_ok());
    // The contact shows in the partner list.
    let listed = stdout(&acme.cli(&["partner", "list", "--json"]));
    assert!(
        !listed.contains("\"never\""),
        "last contact not recorded: {listed}"
    );
    assert!(
        acme.cli(&["partner", "remove", "--org", "globex"])
            .status
            .success()
    );
    // The open connection is closed within the maximum age, and reconnecting is refused.
    let mut refused = false;
    for _ in 0..60 {
        if node.who_am_i(pb::WhoAmIRequest {}).await.is_err() {
            refused = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(
        refused,
        "a removed partner kept its open connection beyond the maximum connection age"
    );
}

#[tokio::test]
async fn a_partners_revocation_list_refuses_its_revoked_certificates() {
    let acme = TestNode::start("acme");
    let globex = TestNode::start("globex");
    let (_, fp) = export_ca(&globex);
    assert!(add_partner(&acme, &globex, &fp).status.success());
    let gcfg = globex.config();
    let gcfg = gcfg.to_str().unwrap();
    for user in ["bob", "carol"] {
        assert!(
            verbund(&["cert", "issue", "--config", gcfg, "--user", user])
                .status
                .success()
        );
    }
    let read = |u: &str, ext: &str| {
        std::fs::read_to_string(globex.home().join(format!("users/{u}.{ext}"))).unwrap()
    };
    let bob = pki::CertPair {
        cert_pem: read("bob", "crt"),
        key_pem: read("bob", "key"),
    };
    let carol = pki::CertPair {
        cert_pem: read("carol", "crt"),
        key_pem: read("carol", "key"),
    };
    assert!(!call_fails(&acme, &partner_client(&acme, &bob)).await);
    // globex revokes bob and hands its list to acme.
    assert!(
        verbund(&[
            "cert",
            "revoke",
            "--config",
            gcfg,
            globex.home().join("users/bob.crt").to_str().unwrap()
        ])
        .status
        .success()
    );
    let crl = stdout(&verbund(&["crl", "export", "--config", gcfg]));
    let crl_file = acme.home().join("globex-crl.pem");
    std::fs::write(&crl_file, &crl).unwrap();
    // A malformed list and a list signed by someone else are refused.
    let bad_file = acme.home().join("bad-crl.pem");
    std::fs::write(
        &bad_file,
        "-----BEGIN X509 CRL-----\nbm90IGEgY3Js\n-----END X509 CRL-----\n",
    )
    .unwrap();
    let o = acme.cli(&[
        "partner",
        "crl",
        "--org",
        "globex",
        "--file",
        bad_file.to_str().unwrap(),
    ]);
    assert!(
        stderr(&o).contains("INVALID_ARGUMENT: crl_pem"),
        "{}",
        stderr(&o)
    );
    let (acme_crl, _) = pki::revoke(&acme.ca_pair(), None, &[vec![1, 2, 3]]).unwrap();
    std::fs::write(&bad_file, acme_crl).unwrap();
    let o = acme.cli(&[
        "partner",
        "crl",
        "--org",
        "globex",
        "--file",
        bad_file.to_str().unwrap(),
    ]);
    assert!(
        stderr(&o).contains("not signed by the partner"),
        "{}",
        stderr(&o)
    );
    assert!(
        !call_fails(&acme, &partner_client(&acme, &bob)).await,
        "a refused list must change nothing"
    );
    // The real list applies at once: bob is refused, carol still gets in.
    let o = acme.cli(&[
        "partner",
        "crl",
        "--org",
        "globex",
        "--file",
        crl_file.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        call_fails(&acme, &partner_client(&acme, &bob)).await,
        "a certificate revoked by the partner was accepted"
    );
    assert!(!call_fails(&acme, &partner_client(&acme, &carol)).await);
    // globex revokes carol too; acme fetches the list from globex's node over mutual TLS
    // (which needs globex to trust acme's node).
    let (_, acme_fp) = export_ca(&acme);
    assert!(add_partner(&globex, &acme, &acme_fp).status.success());
    assert!(
        verbund(&[
            "cert",
            "revoke",
            "--config",
            gcfg,
            globex.home().join("users/carol.crt").to_str().unwrap()
        ])
        .status
        .success()
    );
    globex.hup();
    let o = acme.cli(&["partner", "crl", "--org", "globex", "--fetch"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        call_fails(&acme, &partner_client(&acme, &carol)).await,
        "the fetched list was not applied"
    );
}

/// The certificate the node presents to a new TLS handshake (raw rustls, admin identity).
/// A raw TLS connection to `node` as its admin (no HTTP/2 on top).
async fn admin_tls(node: &TestNode) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    use std::sync::Arc;
    let id = node.admin_identity();
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(pki::parse_certs(&id.ca_pem).unwrap().remove(0))
        .unwrap();
    let (cert, key) = id.cert_and_key.unwrap();
    let config = rustls::ClientConfig::builder_with_provider(verbund_node::tls::crypto_provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_client_auth_cert(
            pki::parse_certs(&cert).unwrap(),
            pki::parse_key(&key).unwrap(),
        )
        .unwrap();
    let addr = node.endpoint.trim_start_matches("https://").to_string();
    let tcp = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
    tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
        .unwrap()
}

async fn served_certificate(node: &TestNode) -> Vec<u8> {
    let tls = admin_tls(node).await;
    tls.get_ref().1.peer_certificates().unwrap()[0]
        .as_ref()
        .to_vec()
}

#[tokio::test]
async fn a_node_renews_its_certificate_while_serving_without_failed_calls() {
    let acme = TestNode::start("acme");
    let before = served_certificate(&acme).await;
    // A client calls in a loop, on new and existing connections, through the renewal.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (endpoint, id) = (acme.endpoint.clone(), acme.admin_identity());
    let flag = stop.clone();
    let caller = tokio::spawn(async move {
        let (mut ok, mut failed, mut i) = (0u32, 0u32, 0u32);
        let mut ch = connect(&endpoint, &id).await.unwrap();
        // A fixed amount of work, whatever the machine's speed: at least MIN_CALLS calls,
        // and on until the change under test is over.
        while !flag.load(std::sync::atomic::Ordering::Relaxed) || i < MIN_CALLS {
            if i % 10 == 0 {
                ch = connect(&endpoint, &id).await.unwrap(); // a fresh handshake now and then
            }
            i += 1;
            match pb::node_service_client::NodeServiceClient::new(ch.clone())
                .who_am_i(pb::WhoAmIRequest {})
                .await
            {
                Ok(_) => ok += 1,
                Err(_) => failed += 1,
            }
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        (ok, failed)
    });
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let o = verbund(&[
        "cert",
        "renew-node",
        "--config",
        acme.config().to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    acme.hup();
    let mut renewed = false;
    for _ in 0..50 {
        if served_certificate(&acme).await != before {
            renewed = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (ok, failed) = caller.await.unwrap();
    assert!(renewed, "the node still presents its old certificate");
    let file =
        pki::parse_certs(&std::fs::read_to_string(acme.home().join("tls/node.crt")).unwrap())
            .unwrap()
            .remove(0);
    assert_eq!(served_certificate(&acme).await, file.as_ref().to_vec());
    assert!(ok + failed >= MIN_CALLS, "{ok} calls");
    assert_eq!(failed, 0, "{failed} calls failed during the renewal");
}

#[tokio::test]
async fn a_ca_rollover_under_load_fails_no_call() {
    let acme = TestNode::start("acme");
    let config = acme.config();
    let config = config.to_str().unwrap().to_string();
    let home = acme.home();
    // The client: the admin certificate of the old CA throughout; for each new connection it
    // reads the CA file, as a client that gets the CA bundle distributed would.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (endpoint, flag, dir) = (acme.endpoint.clone(), stop.clone(), home.clone());
    let caller = tokio::spawn(async move {
        let (mut ok, mut failed, mut i) = (0u32, 0u32, 0u32);
        let identity = |dir: &std::path::Path| ClientIdentity {
            ca_pem: std::fs::read_to_string(dir.join("ca/ca.crt")).unwrap(),
            cert_and_key: Some((
                std::fs::read_to_string(dir.join("users/admin.crt")).unwrap(),
                std::fs::read_to_string(dir.join("users/admin.key")).unwrap(),
            )),
        };
        let mut ch = connect(&endpoint, &identity(&dir)).await.unwrap();
        // A fixed amount of work, whatever the machine's speed: at least MIN_CALLS calls,
        // and on until the change under test is over.
        while !flag.load(std::sync::atomic::Ordering::Relaxed) || i < MIN_CALLS {
            if i % 10 == 0 {
                match connect(&endpoint, &identity(&dir)).await {
                    Ok(c) => ch = c,
                    Err(_) => failed += 1,
                }
            }
            i += 1;
            match pb::node_service_client::NodeServiceClient::new(ch.clone())
                .who_am_i(pb::WhoAmIRequest {})
                .await
            {
                Ok(_) => ok += 1,
                Err(_) => failed += 1,
            }
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        (ok, failed)
    });
    let pause = || tokio::time::sleep(std::time::Duration::from_millis(400));
    pause().await;
    let old_ca = pki::parse_certs(&acme.ca_pem()).unwrap().remove(0);
    // 1. New CA; both trusted.
    let o = verbund(&["ca", "rollover", "--config", &config]);
    assert!(o.status.success(), "{}", stderr(&o));
    acme.hup();
    pause().await;
    // 2. The node switches to a certificate of the new CA.
    assert!(
        verbund(&["cert", "renew-node", "--config", &config])
            .status
            .success()
    );
    acme.hup();
    pause().await;
    let served = served_certificate(&acme).await;
    assert!(
        !verbund_node::tls::issued_by(&served.clone().into(), &old_ca),
        "the node still serves a certificate of the old CA"
    );
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (ok, failed) = caller.await.unwrap();
    assert!(ok + failed >= MIN_CALLS, "{ok} calls");
    assert_eq!(failed, 0, "{failed} calls failed during the CA rollover");
    // 3. Users get certificates of the new CA; 4. the old CA is retired.
    assert!(
        verbund(&["cert", "issue", "--config", &config, "--user", "admin2"])
            .status
            .success()
    );
    assert!(
        verbund(&["ca", "retire", "--config", &config])
            .status
            .success()
    );
    acme.hup();
    let new_admin = acme.identity_of("admin2");
    let old_admin = ClientIdentity {
        ca_pem: acme.ca_pem(),
        cert_and_key: acme.admin_identity().cert_and_key,
    };
    assert!(
        eventually(|| call_fails(&acme, &old_admin)).await,
        "the old CA's certificate still works after retirement"
    );
    assert!(
        !call_fails(&acme, &new_admin).await,
        "the new CA's certificate must work"
    );
    assert_eq!(pki::parse_certs(&acme.ca_pem()).unwrap().len(), 1);
}

#[tokio::test]
async fn partners_pin_both_cas_during_a_partners_ca_rollover() {
    let acme = TestNode::start("acme");
    let globex = TestNode::start("globex");
    let (_, acme_fp) = export_ca(&acme);
    let (_, globex_fp) = export_ca(&globex);
    assert!(add_partner(&acme, &globex, &globex_fp).status.success());
    assert!(add_partner(&globex, &acme, &acme_fp).status.success());
    let gcfg = globex.config();
    let gcfg = gcfg.to_str().unwrap();
    let old_bob = pki::issue(
        &globex.ca_pair(),
        "globex",
        PrincipalKind::User,
        "bob",
        &[],
        &[],
        30,
    )
    .unwrap();
    // globex rolls over; its node now presents a certificate of its new CA.
    assert!(
        verbund(&["ca", "rollover", "--config", gcfg])
            .status
            .success()
    );
    assert!(
        verbund(&["cert", "renew-node", "--config", gcfg])
            .status
            .success()
    );
    globex.hup();
    // The CA file now starts with the new CA, whose key issues.
    let new_ca = globex.ca_pair();
    let new_bob = pki::issue(&new_ca, "globex", PrincipalKind::User, "bob2", &[], &[], 30).unwrap();
    assert!(
        call_fails(&acme, &partner_client(&acme, &new_bob)).await,
        "acme must not trust globex's new CA before pinning it"
    );
    // acme pins both globex CAs, each confirmed by its fingerprint.
    let export = verbund(&["ca", "export", "--config", gcfg]);
    let fps: Vec<String> = stderr(&export)
        .lines()
        .filter_map(|l| l.rsplit(": ").next())
        .map(|f| f.trim().to_string())
        .collect();
    assert_eq!(fps.len(), 2, "{}", stderr(&export));
    let bundle = acme.home().join("globex-bundle.crt");
    std::fs::write(&bundle, stdout(&export)).unwrap();
    let o = acme.cli(&[
        "partner",
        "update-ca",
        "--org",
        "globex",
        "--ca",
        bundle.to_str().unwrap(),
        "--fingerprint",
        &fps[0],
    ]);
    assert!(
        stderr(&o).contains("INVALID_ARGUMENT: fingerprints"),
        "{}",
        stderr(&o)
    );
    let o = acme.cli(&[
        "partner",
        "update-ca",
        "--org",
        "globex",
        "--ca",
        bundle.to_str().unwrap(),
        "--fingerprint",
        &fps[0],
        "--fingerprint",
        &fps[1],
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        !call_fails(&acme, &partner_client(&acme, &old_bob)).await,
        "old-CA certificate refused during the overlap"
    );
    assert!(
        !call_fails(&acme, &partner_client(&acme, &new_bob)).await,
        "new-CA certificate refused during the overlap"
    );
    let o = acme.cli(&["partner", "ping", "--org", "globex"]);
    assert!(
        o.status.success(),
        "acme cannot dial globex's renewed node: {}",
        stderr(&o)
    );
    // globex retires its old CA; acme pins the new one alone: old certificates are refused.
    assert!(
        verbund(&["ca", "retire", "--config", gcfg])
            .status
            .success()
    );
    let export = verbund(&["ca", "export", "--config", gcfg]);
    std::fs::write(&bundle, stdout(&export)).unwrap();
    let fp = stderr(&export)
        .rsplit(": ")
        .next()
        .unwrap()
        .trim()
        .to_string();
    let o = acme.cli(&[
        "partner",
        "update-ca",
        "--org",
        "globex",
        "--ca",
        bundle.to_str().unwrap(),
        "--fingerprint",
        &fp,
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        call_fails(&acme, &partner_client(&acme, &old_bob)).await,
        "old-CA certificate accepted after the partner retired it"
    );
    assert!(!call_fails(&acme, &partner_client(&acme, &new_bob)).await);
}

/// A client that completes the handshake and then sends nothing loses its connection after
/// the idle timeout (here 2 s), not after the maximum connection age; a live client does not.
#[tokio::test]
async fn a_silent_connection_is_closed_after_the_idle_timeout() {
    use tokio::io::AsyncReadExt;
    let mut node = TestNode::init("acme");
    let config = std::fs::read_to_string(node.config()).unwrap();
    let config = config.replace("idle_timeout_secs = 90", "idle_timeout_secs = 2");
    assert!(config.contains("idle_timeout_secs = 2"));
    std::fs::write(node.config(), config).unwrap();
    node.run();

    let mut silent = admin_tls(&node).await;
    // Read whatever the node sends (its HTTP/2 settings) until it closes the connection.
    let closed = tokio::time::timeout(std::time::Duration::from_secs(60), async {
        let mut buf = [0u8; 1024];
        loop {
            match silent.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await;
    assert!(
        closed.is_ok(),
        "a silent connection stayed open for a minute"
    );

    // A client that talks keeps its connection across the idle timeout.
    let channel = node.admin().await;
    for _ in 0..3 {
        pb::node_service_client::NodeServiceClient::new(channel.clone())
            .who_am_i(pb::WhoAmIRequest {})
            .await
            .unwrap();
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    }
}
