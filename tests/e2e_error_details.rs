//! INVALID_ARGUMENT carries the field twice: in the message ("email: …") and as a
//! `google.rpc.BadRequest` field violation in the status details, which a client decodes
//! without parsing text. Both for input the node refuses while converting a request and
//! for values the record schema refuses, over a real node.

mod support;

use support::TestNode;
use tonic_types::StatusExt;
use verbund_node::pb;

fn violation(status: &tonic::Status) -> (String, String) {
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
    let bad = status
        .get_details_bad_request()
        .unwrap_or_else(|| panic!("no BadRequest details in {status:?}"));
    assert_eq!(bad.field_violations.len(), 1, "{bad:?}");
    let v = &bad.field_violations[0];
    (v.field.clone(), v.description.clone())
}

#[tokio::test]
async fn field_errors_come_with_bad_request_details() {
    let acme = TestNode::start("acme");
    let mut accounts = pb::account_service_client::AccountServiceClient::new(acme.admin().await);

    // Refused while converting the request (an id that is not a UUID).
    let err = accounts
        .get_account(pb::GetRecordRequest {
            id: "not-an-id".into(),
        })
        .await
        .unwrap_err();
    let (field, description) = violation(&err);
    assert_eq!(field, "id");
    assert_eq!(err.message(), format!("id: {description}"));

    // Refused by the record schema (a malformed e-mail address).
    let err = accounts
        .create_account(pb::CreateAccountRequest {
            account: Some(pb::Account {
                name: Some("Details GmbH".into()),
                email: Some("no at sign".into()),
                ..Default::default()
            }),
        })
        .await
        .unwrap_err();
    let (field, description) = violation(&err);
    assert_eq!(field, "email");
    assert_eq!(err.message(), format!("email: {description}"));

    // Other codes carry no field violation.
    let err = accounts
        .get_account(pb::GetRecordRequest {
            id: uuid::Uuid::now_v7().to_string(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound);
    assert!(err.get_details_bad_request().is_none());
}
