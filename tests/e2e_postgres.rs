//! End to end on PostgreSQL: a real node process whose database is the PostgreSQL server named
//! by VERBUND_TEST_POSTGRES_URL (a fresh schema per test). Skipped, loudly, without it.

mod support;

use std::io::Write;

use support::{TestNode, stderr, verbund};
use verbund_node::pb;

const PG_ENV: &str = "VERBUND_TEST_POSTGRES_URL";

#[tokio::test]
async fn a_node_on_postgresql_serves_and_keeps_data_across_restarts() {
    let Ok(url) = std::env::var(PG_ENV) else {
        let _ = writeln!(
            std::io::stderr(),
            "!!! SKIPPED PostgreSQL end-to-end test: {PG_ENV} is not set (.ci/run sets it)"
        );
        return;
    };
    // A fresh schema, named here (never from input).
    let schema = format!("verbund_e2e_{}", uuid::Uuid::now_v7().simple());
    let admin = sqlx::PgPool::connect(&url)
        .await
        .expect("PostgreSQL is unreachable");
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE SCHEMA {schema}")))
        .execute(&admin)
        .await
        .unwrap();
    let sep = if url.contains('?') { '&' } else { '?' };
    let db_url = format!("{url}{sep}options[search_path]={schema}");

    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("acme");
    let o = verbund(&[
        "init",
        "--org",
        "acme",
        "--dir",
        home.to_str().unwrap(),
        "--listen",
        "127.0.0.1:0",
        "--database-url",
        &db_url,
    ]);
    assert!(o.status.success(), "init failed: {}", stderr(&o));
    let mut node = TestNode::adopt("acme", dir);
    node.run();

    let ch = node.admin().await;
    let mut accounts = pb::account_service_client::AccountServiceClient::new(ch.clone());
    let acc = accounts
        .create_account(pb::CreateAccountRequest {
            account: Some(pb::Account {
                name: Some("Postgres GmbH".into()),
                ..Default::default()
            }),
        })
        .await
        .unwrap()
        .into_inner();
    let id = acc.meta.as_ref().unwrap().id.clone();
    let err = accounts
        .create_account(pb::CreateAccountRequest {
            account: Some(pb::Account::default()),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);

    node.restart();
    let mut accounts = pb::account_service_client::AccountServiceClient::new(node.admin().await);
    let got = accounts
        .get_account(pb::GetRecordRequest { id: id.clone() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got, acc);
    let rows: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "SELECT COUNT(*) FROM {schema}.changes"
    )))
    .fetch_one(&admin)
    .await
    .unwrap();
    assert_eq!(
        rows, 1,
        "exactly one change: the refused create left nothing"
    );

    // Guards: a second process of the node on the same database, and a second organization
    // initialized on it, are refused with a clear message (and change nothing).
    let second = verbund(&["run", "--config", node.config().to_str().unwrap()]);
    assert!(!second.status.success());
    assert!(
        stderr(&second).contains("another verbund process serves this PostgreSQL database"),
        "{}",
        stderr(&second)
    );
    let other = tempfile::tempdir().unwrap();
    let init_second = || {
        verbund(&[
            "init",
            "--org",
            "pgorg2",
            "--dir",
            other.path().join("pgorg2").to_str().unwrap(),
            "--listen",
            "127.0.0.1:0",
            "--database-url",
            &db_url,
        ])
    };
    let o = init_second();
    assert!(
        !o.status.success(),
        "a second organization on acme's database"
    );
    node.kill();
    let o = init_second();
    assert!(
        !o.status.success(),
        "a second organization on acme's database"
    );
    assert!(
        stderr(&o).contains("belongs to organization \"acme\""),
        "{}",
        stderr(&o)
    );
    assert!(
        !other.path().join("pgorg2/node.toml").exists(),
        "a failed init leaves nothing behind"
    );
    sqlx::query(sqlx::AssertSqlSafe(format!("DROP SCHEMA {schema} CASCADE")))
        .execute(&admin)
        .await
        .unwrap();
}
