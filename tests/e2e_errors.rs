//! What a client sees when its input is wrong: the status code and a message that names
//! the field and the rule, never the whole of a long input (a stock client must be able to
//! read it), with a real node over mutual TLS.

mod support;

use support::*;
use verbund_node::pb;

/// Well under any client's metadata limit.
const SHORT: usize = 600;

#[tokio::test]
async fn a_long_input_is_never_echoed_whole() {
    let node = TestNode::start("acme");
    let mut accounts = pb::account_service_client::AccountServiceClient::new(node.admin().await);
    let huge = "x".repeat(100_000);

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
