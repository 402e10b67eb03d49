//! Helpers for the end-to-end tests of federation trust: exporting a node's CA, adding a
//! partner by fingerprint, and clients of a partner talking to a host.

use verbund_node::client::{ClientIdentity, connect};
use verbund_node::pb;
use verbund_node::pki;

use super::{TestNode, stderr, stdout, verbund};

/// `verbund ca export` of a node: (PEM file path, fingerprint).
pub fn export_ca(node: &TestNode) -> (std::path::PathBuf, String) {
    let o = verbund(&["ca", "export", "--config", node.config().to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    let fingerprint = stderr(&o).rsplit(": ").next().unwrap().trim().to_string();
    assert_eq!(fingerprint.len(), 64, "{}", stderr(&o));
    let path = node.home().join(format!("exported-{}.crt", node.org));
    std::fs::write(&path, stdout(&o)).unwrap();
    (path, fingerprint)
}

pub fn add_partner(host: &TestNode, partner: &TestNode, fingerprint: &str) -> std::process::Output {
    let (ca, _) = export_ca(partner);
    host.cli(&[
        "partner",
        "add",
        "--org",
        &partner.org,
        "--ca",
        ca.to_str().unwrap(),
        "--endpoint",
        &partner.endpoint,
        "--fingerprint",
        fingerprint,
    ])
}

/// A client of `partner` (its certificate) talking to `host` (verifying host's CA).
pub fn partner_client(host: &TestNode, cert: &pki::CertPair) -> ClientIdentity {
    ClientIdentity {
        ca_pem: host.ca_pem(),
        cert_and_key: Some((cert.cert_pem.clone(), cert.key_pem.clone())),
    }
}

pub async fn call_fails(host: &TestNode, id: &ClientIdentity) -> bool {
    match connect(&host.endpoint, id).await {
        Err(_) => true,
        Ok(ch) => pb::node_service_client::NodeServiceClient::new(ch)
            .who_am_i(pb::WhoAmIRequest {})
            .await
            .is_err(),
    }
}
