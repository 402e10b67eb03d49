//! PostgreSQL for end-to-end tests: a fresh schema per test on the server named by
//! VERBUND_TEST_POSTGRES_URL, or a loud skip when it is not set.

use std::io::Write;

pub const PG_ENV: &str = "VERBUND_TEST_POSTGRES_URL";

/// A fresh schema `<prefix>_<uuid>`: an admin pool, the schema's name and a database URL
/// that puts the node in it (`extra` is appended as further URL options). None (after saying
/// so on stderr) when the variable is not set.
pub async fn fresh_schema(
    prefix: &str,
    what: &str,
    extra: &str,
) -> Option<(sqlx::PgPool, String, String)> {
    let Ok(url) = std::env::var(PG_ENV) else {
        let _ = writeln!(
            std::io::stderr(),
            "!!! SKIPPED {what}: {PG_ENV} is not set (.ci/run sets it)"
        );
        return None;
    };
    // Named here (never from input).
    let schema = format!("{prefix}_{}", uuid::Uuid::now_v7().simple());
    let admin = sqlx::PgPool::connect(&url)
        .await
        .expect("PostgreSQL is unreachable");
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE SCHEMA {schema}")))
        .execute(&admin)
        .await
        .unwrap();
    let sep = if url.contains('?') { '&' } else { '?' };
    let db_url = format!("{url}{sep}options[search_path]={schema}{extra}");
    Some((admin, schema, db_url))
}
