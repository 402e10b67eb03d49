//! PostgreSQL for end-to-end tests: a fresh schema per test on the server named by
//! VERBUND_TEST_POSTGRES_URL, or a loud skip when it is not set.

use std::io::Write;

use sqlx::Connection as _;

pub const PG_ENV: &str = "VERBUND_TEST_POSTGRES_URL";

/// A fresh schema `<prefix>_<uuid>`: an admin pool, the schema's name and a database URL
/// that puts the node in it (`extra` is appended as further URL options). None (after saying
/// so on stderr) when the variable is not set.
pub async fn fresh_schema(
    prefix: &str,
    what: &str,
    extra: &str,
) -> Option<(sqlx::PgPool, String, String)> {
    if !available(what) {
        return None;
    }
    let url = std::env::var(PG_ENV).ok()?;
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

/// Whether PostgreSQL tests can run; when VERBUND_TEST_POSTGRES_URL is not set, says
/// "SKIPPED" loudly on stderr, naming `what`, and answers false.
pub fn available(what: &str) -> bool {
    if std::env::var(PG_ENV).is_ok() {
        return true;
    }
    let _ = writeln!(
        std::io::stderr(),
        "!!! SKIPPED {what}: {PG_ENV} is not set (.ci/run sets it)"
    );
    false
}

type Job<T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send>>;

/// Runs `f` on a runtime of its own, on a thread of its own: callable from plain tests and
/// from inside a tokio runtime alike. Err if it panicked (the panic stays on that thread).
fn try_blocking<T: Send + 'static>(
    f: impl FnOnce() -> Job<T> + Send + 'static,
) -> std::thread::Result<T> {
    std::thread::spawn(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(f())
    })
    .join()
}

fn blocking<T: Send + 'static>(f: impl FnOnce() -> Job<T> + Send + 'static) -> T {
    try_blocking(f).expect("a PostgreSQL helper failed")
}

/// A fresh schema of its own for one node on the server of VERBUND_TEST_POSTGRES_URL,
/// dropped when this value is (after the node's process is gone).
pub struct NodeSchema {
    pub name: String,
    /// The database URL that puts a node in the schema.
    pub url: String,
    server: String,
}

impl NodeSchema {
    /// Panics when VERBUND_TEST_POSTGRES_URL is not set: check `available` first.
    pub fn create(org: &str) -> NodeSchema {
        let server = std::env::var(PG_ENV).expect("VERBUND_TEST_POSTGRES_URL is set");
        // Named here (never from input); org names of tests are short lowercase words.
        let name = format!("vb_{org}_{}", uuid::Uuid::now_v7().simple());
        let (s, n) = (server.clone(), name.clone());
        blocking(move || {
            Box::pin(async move {
                let mut admin = sqlx::PgConnection::connect(&s)
                    .await
                    .expect("PostgreSQL is unreachable");
                sqlx::query(sqlx::AssertSqlSafe(format!("CREATE SCHEMA {n}")))
                    .execute(&mut admin)
                    .await
                    .unwrap();
            })
        });
        let sep = if server.contains('?') { '&' } else { '?' };
        let url = format!("{server}{sep}options[search_path]={name}");
        NodeSchema { name, url, server }
    }

    /// The tables of the schema holding `needle` in a visible row (as the row's text), with
    /// the number of such rows.
    pub fn tables_holding(&self, needle: &str) -> Vec<(String, i64)> {
        let (server, schema, needle) = (self.server.clone(), self.name.clone(), needle.to_string());
        blocking(move || {
            Box::pin(async move {
                let mut db = sqlx::PgConnection::connect(&server).await.unwrap();
                let tables: Vec<String> = sqlx::query_scalar(
                    "SELECT table_name::text FROM information_schema.tables \
                     WHERE table_schema = $1 AND table_type = 'BASE TABLE' ORDER BY 1",
                )
                .bind(&schema)
                .fetch_all(&mut db)
                .await
                .unwrap();
                let mut found = Vec::new();
                for table in tables {
                    // Schema and table names come from the catalog, the needle is bound.
                    let n: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
                        "SELECT COUNT(*) FROM {schema}.\"{table}\" t \
                         WHERE strpos(t::text, $1) > 0"
                    )))
                    .bind(&needle)
                    .fetch_one(&mut db)
                    .await
                    .unwrap();
                    if n > 0 {
                        found.push((table, n));
                    }
                }
                found
            })
        })
    }
}

impl Drop for NodeSchema {
    fn drop(&mut self) {
        let (server, name) = (self.server.clone(), self.name.clone());
        // Best effort: a schema left behind costs only space on a test server.
        let dropped = try_blocking(move || {
            Box::pin(async move {
                let Ok(mut db) = sqlx::PgConnection::connect(&server).await else {
                    return false;
                };
                let _ = sqlx::query("SET lock_timeout = '10s'")
                    .execute(&mut db)
                    .await;
                sqlx::query(sqlx::AssertSqlSafe(format!(
                    "DROP SCHEMA IF EXISTS {name} CASCADE"
                )))
                .execute(&mut db)
                .await
                .is_ok()
            })
        });
        if !matches!(dropped, Ok(true)) {
            let _ = writeln!(
                std::io::stderr(),
                "note: schema {} was not dropped",
                self.name
            );
        }
    }
}
