//! What a client sees when its input is wrong: the status code and a message that names
//! the field and the rule, never the whole of a long input (a stock client must be able to
//! read it), with a real node over mutual TLS.

mod support;

use bytes::{Buf, BufMut};
use support::*;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use verbund_node::pb;

/// Well under any client's metadata limit.
const SHORT: usize = 600;

#[tokio::test]
async fn a_long_input_is_never_echoed_whole() {
    let node = TestNode::start("acme");
    let mut accounts = pb::account_service_client::AccountServiceClient::new(node.admin().await);
    let huge = "x".repeat(100_000);

    let mut admin = pb::admin_service_client::AdminServiceClient::new(node.admin().await);
    let e = admin
        .ping_partner(pb::PingPartnerRequest { org: huge.clone() })
        .await
        .unwrap_err();
    assert!(e.message().len() < 1100, "{} bytes", e.message().len());

    let e = accounts
        .get_account(pb::GetRecordRequest { id: huge.clone() })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e:?}");
    assert!(e.message().len() < SHORT, "{} bytes", e.message().len());

    let created = accounts
        .create_account(pb::CreateAccountRequest {
            account: Some(pb::Account {
                name: Some("Kurz AG".into()),
                ..Default::default()
            }),
        })
        .await
        .unwrap()
        .into_inner();
    let id = created.meta.unwrap().id;
    let e = accounts
        .update_account(pb::UpdateAccountRequest {
            id: id.clone(),
            account: Some(pb::Account::default()),
            update_mask: Some(prost_types::FieldMask {
                paths: vec![huge.clone()],
            }),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e:?}");
    assert!(e.message().starts_with("update_mask: "), "{}", e.message());
    assert!(e.message().len() < SHORT, "{} bytes", e.message().len());

    let e = accounts
        .update_account(pb::UpdateAccountRequest {
            id,
            account: Some(pb::Account {
                website: Some(huge),
                ..Default::default()
            }),
            update_mask: Some(prost_types::FieldMask {
                paths: vec!["website".into()],
            }),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e:?}");
    assert!(e.message().starts_with("website"), "{}", e.message());
    assert!(e.message().len() < SHORT, "{} bytes", e.message().len());
}

#[test]
fn a_wrong_choice_is_named_with_the_allowed_values() {
    let node = TestNode::start("acme");
    let o = node.cli(&["opportunity", "create", "name=Deal", "stage=won", "--json"]);
    assert!(!o.status.success());
    let err = stderr(&o);
    assert!(
        err.contains("stage: \"won\" is not one of") && err.contains("closed_won"),
        "{err}"
    );
    for (kind, pair) in [("case", "priority=critical"), ("activity", "channel=fax")] {
        let o = node.cli(&[kind, "create", pair, "--json"]);
        let err = stderr(&o);
        assert!(
            !o.status.success() && err.contains("is not one of"),
            "{err}"
        );
    }
}

/// Sends bytes as they are, to play a broken or hostile client.
#[derive(Clone, Default)]
struct RawCodec;
struct Raw;

impl Codec for RawCodec {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = Raw;
    type Decoder = Raw;
    fn encoder(&mut self) -> Raw {
        Raw
    }
    fn decoder(&mut self) -> Raw {
        Raw
    }
}

impl Encoder for Raw {
    type Item = Vec<u8>;
    type Error = tonic::Status;
    fn encode(&mut self, item: Vec<u8>, buf: &mut EncodeBuf<'_>) -> Result<(), tonic::Status> {
        buf.put_slice(&item);
        Ok(())
    }
}

impl Decoder for Raw {
    type Item = Vec<u8>;
    type Error = tonic::Status;
    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<Vec<u8>>, tonic::Status> {
        let v = buf.chunk().to_vec();
        buf.advance(v.len());
        Ok(Some(v))
    }
}

#[tokio::test]
async fn a_malformed_or_oversized_message_is_the_clients_fault() {
    let node = TestNode::start("acme");
    let mut grpc = tonic::client::Grpc::new(node.admin().await);
    let path = "/verbund.v1.AccountService/GetAccount";
    let mut call = async |bytes: Vec<u8>| {
        grpc.ready().await.unwrap();
        grpc.unary(
            tonic::Request::new(bytes),
            tonic::codegen::http::uri::PathAndQuery::from_static(path),
            RawCodec,
        )
        .await
        .unwrap_err()
    };
    // Field 1 (id) as a string that is not UTF-8; a length beyond the end; a wrong wire type;
    // a varint that never ends.
    for bad in [
        vec![0x0a, 0x02, 0xff, 0xfe],
        vec![0x0a, 0x05, b'a'],
        vec![0x0d, 0x01],
        vec![
            0x08, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
        ],
    ] {
        let e = call(bad.clone()).await;
        assert_eq!(e.code(), tonic::Code::InvalidArgument, "{bad:?}: {e:?}");
    }
    let e = call(vec![0u8; verbund_node::server::MAX_MESSAGE_BYTES + 1]).await;
    assert_eq!(e.code(), tonic::Code::ResourceExhausted, "{e:?}");
    // The node still serves.
    let mut accounts = pb::account_service_client::AccountServiceClient::new(node.admin().await);
    let e = accounts
        .get_account(pb::GetRecordRequest {
            id: uuid::Uuid::now_v7().to_string(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::NotFound);
}

/// A self-signed CA whose subject has only a common name (no O=).
fn ca_without_org() -> String {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::default();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "Globex Root");
    params.self_signed(&key).unwrap().pem()
}

#[tokio::test]
async fn partner_add_names_what_is_wrong_and_never_the_right_fingerprint() {
    let acme = TestNode::start("acme");
    let globex = TestNode::start("globex");
    let mut admin = pb::admin_service_client::AdminServiceClient::new(acme.admin().await);
    let add = |ca_pem: String, fingerprint: String| pb::AddPartnerRequest {
        org: "globex".into(),
        ca_pem,
        endpoint: globex.endpoint.clone(),
        fingerprint,
    };

    // A CA that does not name the partner's organization.
    let pem = ca_without_org();
    let cert = verbund_node::pki::parse_certs(&pem).unwrap().remove(0);
    let fp = verbund_node::pki::fingerprint(cert.as_ref());
    let e = admin.add_partner(add(pem, fp)).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e:?}");
    assert!(
        e.message().starts_with("ca_pem: ") && e.message().contains("O=globex"),
        "{}",
        e.message()
    );

    // A wrong fingerprint: the message names the one given, not the right one.
    let right = {
        let cert = verbund_node::pki::parse_certs(&globex.ca_pem())
            .unwrap()
            .remove(0);
        verbund_node::pki::fingerprint(cert.as_ref())
    };
    let wrong = "ab".repeat(32);
    let e = admin
        .add_partner(add(globex.ca_pem(), wrong.clone()))
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e:?}");
    assert!(
        e.message().contains(&wrong) && !e.message().contains(&right),
        "{}",
        e.message()
    );
    // Nothing was trusted; the right fingerprint works.
    assert!(admin.add_partner(add(globex.ca_pem(), right)).await.is_ok());
}

#[test]
fn a_partner_that_has_not_pinned_us_back_is_named_as_the_cause() {
    use support::federation::{pin, status_of, wait_until};
    let acme = TestNode::start("acme");
    let globex = TestNode::start("globex");
    pin(&acme, &globex); // but globex has not added acme
    let list = stdout(&acme.cli(&["partner", "list"]));
    assert!(list.contains("(1 partner)"), "{list}");
    let o = acme.cli(&["partner", "ping", "--org", "globex"]);
    assert!(!o.status.success());
    let err = stderr(&o);
    assert!(
        err.contains("globex refused our certificate: has globex added acme as a partner")
            || err.contains("most likely it refused our certificate: has globex added acme"),
        "{err}"
    );
    wait_until("the link says the same", || {
        status_of(&acme, "globex")["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("has globex added acme as a partner"))
    });
}

#[test]
fn a_client_without_a_certificate_is_told_that_the_node_requires_one() {
    let node = TestNode::start("acme");
    let ca = node.home().join("ca/ca.crt");
    let o = verbund(&[
        "whoami",
        "--node",
        &node.endpoint,
        "--node-ca",
        ca.to_str().unwrap(),
    ]);
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("the node requires a client certificate"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn a_failed_init_leaves_nothing_behind_and_addresses_become_ip_names() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("acme");
    let init = |db: &str| {
        verbund(&[
            "init",
            "--org",
            "acme",
            "--dir",
            home.to_str().unwrap(),
            "--listen",
            "127.0.0.1:0",
            "--dns",
            "10.1.2.3",
            "--dns",
            "node.acme.example",
            "--database-url",
            db,
        ])
    };
    // Nothing listens on port 1: the database is unreachable.
    let o = init("postgres://verbund@127.0.0.1:1/none");
    assert!(!o.status.success());
    let err = stderr(&o);
    assert!(
        err.contains("cannot connect to PostgreSQL at 127.0.0.1:1: ")
            && err.matches("refused").count() == 1,
        "names the host and the cause, once: {err}"
    );
    assert!(
        !home.join("node.toml").exists() && !home.join("ca").exists(),
        "a failed init removes what it made"
    );
    let db = format!("sqlite://{}", dir.path().join("acme.db").display());
    let o = init(&db);
    assert!(o.status.success(), "a retry works: {}", stderr(&o));
    let out = stdout(&o);
    assert!(
        out.contains("IP:10.1.2.3")
            && out.contains("DNS:node.acme.example")
            && !out.contains("DNS:10.1.2.3"),
        "{out}"
    );
}

#[test]
fn a_list_offers_only_the_filters_of_its_kind() {
    let help = |kind: &str| stdout(&verbund(&[kind, "list", "--help"]));
    let account = help("account");
    for foreign in ["--stage", "--priority", "--channel", "--status"] {
        assert!(!account.contains(foreign), "account list offers {foreign}");
    }
    let case = help("case");
    assert!(
        case.contains("--priority") && !case.contains("--stage"),
        "{case}"
    );
}

#[test]
fn watch_says_that_it_follows_and_policy_check_claims_only_what_it_lists() {
    let node = TestNode::start("acme");
    let id = support::federation::create(&node, "account", &["name=Watch AG"]);
    let o = node.cli(&["watch", "--after-seq", "0", "--limit", "1"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("then each new change as it is committed"),
        "{}",
        stderr(&o)
    );
    // The explanation never claims more than the fields it lists.
    let o = node.cli(&[
        "policy",
        "check",
        "--as",
        "verbund://acme/user/nobody",
        "--action",
        "read",
        "--record",
        &id,
    ]);
    let out = stdout(&o);
    assert!(!out.contains("any field"), "{out}");
}
