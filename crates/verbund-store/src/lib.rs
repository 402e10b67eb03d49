//! Persistence of a Verbund node with sqlx: embedded SQLite (default) or PostgreSQL.
//!
//! Both backends share one schema shape and the same SQL text (`$n` placeholders work on both);
//! the code is written once in the `backend!` macro and instantiated per database, because a
//! fully generic `Repo<DB>` needs unwieldy trait bounds. All SQL lives in this crate and uses
//! bound parameters only.
//!
//! Invariants kept here:
//! - every write runs in one transaction that first bumps `node_state.last_seq`; this serializes
//!   writers (SQLite: `BEGIN IMMEDIATE`; PostgreSQL: the row lock), so change sequence numbers
//!   commit in order and without gaps — a reader resuming "after seq N" never misses a change;
//! - the record row and its change-log row are written in the same transaction;
//! - references are resolved inside that transaction, so a concurrent delete cannot orphan them;
//! - nothing is written when validation fails (the plan is computed before any statement that
//!   modifies data, and an error rolls the transaction back).

use std::collections::BTreeMap;
use std::str::FromStr;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{PgPool, SqlitePool};
use uuid::Uuid;
use verbund_core::write::{self, RefCheck, WritePlan};
use verbund_core::{Change, ChangeOp, DomainError, FieldMap, Hlc, Record, RecordKind, Value};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(transparent)]
    Domain(#[from] DomainError),
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    #[error("migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// Stored data that cannot be decoded; never caused by client input.
    #[error("corrupt stored data: {0}")]
    Corrupt(String),
    #[error("invalid database configuration: {0}")]
    Config(String),
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// Filters of a List call. `after_id` is the keyset cursor: results are ordered by id
/// (UUIDv7, so creation order) and start after it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ListQuery {
    pub kind: Option<RecordKind>,
    pub account_id: Option<String>,
    pub related_id: Option<String>,
    pub stage: Option<String>,
    pub status: Option<String>,
    pub priority: Option<String>,
    pub assigned_org: Option<String>,
    pub channel: Option<String>,
    pub updated_since_ms: Option<i64>,
    pub show_deleted: bool,
    pub after_id: Option<String>,
    pub limit: i64,
}

/// A full-text search: any of `needles` (already lowercased) as a substring of the search text.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SearchQuery {
    pub needles: Vec<String>,
    pub kinds: Vec<RecordKind>,
    pub after_id: Option<String>,
    pub limit: i64,
}

/// Escapes LIKE wildcards so user text matches literally (with `ESCAPE '\'`).
fn like_pattern(needle: &str) -> String {
    let mut p = String::with_capacity(needle.len() + 2);
    p.push('%');
    for c in needle.chars() {
        if matches!(c, '%' | '_' | '\\') {
            p.push('\\');
        }
        p.push(c);
    }
    p.push('%');
    p
}

fn kind_from_db(s: &str) -> Result<RecordKind> {
    RecordKind::parse(s).ok_or_else(|| StoreError::Corrupt(format!("unknown record kind {s:?}")))
}

fn versions_to_json(v: &BTreeMap<String, Hlc>) -> String {
    let m: BTreeMap<&String, String> = v.iter().map(|(k, h)| (k, h.to_string())).collect();
    serde_json::to_string(&m).unwrap_or_else(|_| "{}".into())
}

fn versions_from_json(s: &str) -> Result<BTreeMap<String, Hlc>> {
    let m: BTreeMap<String, String> =
        serde_json::from_str(s).map_err(|e| StoreError::Corrupt(format!("versions: {e}")))?;
    m.into_iter()
        .map(|(k, v)| {
            v.parse::<Hlc>()
                .map(|h| (k, h))
                .map_err(|e| StoreError::Corrupt(e.to_string()))
        })
        .collect()
}

fn fields_to_json<T: serde::Serialize>(f: &T) -> Result<String> {
    serde_json::to_string(f).map_err(|e| StoreError::Corrupt(format!("fields: {e}")))
}

/// The raw columns of a `records` row.
struct RecordRow {
    id: String,
    kind: String,
    owner_org: String,
    created_at_ms: i64,
    updated_at_ms: i64,
    deleted_version: Option<String>,
    seq: i64,
    fields: String,
    versions: String,
}

impl RecordRow {
    fn into_record(self) -> Result<Record> {
        let fields: FieldMap = serde_json::from_str(&self.fields)
            .map_err(|e| StoreError::Corrupt(format!("fields of {}: {e}", self.id)))?;
        Ok(Record {
            id: Uuid::parse_str(&self.id)
                .map_err(|e| StoreError::Corrupt(format!("id {}: {e}", self.id)))?,
            kind: kind_from_db(&self.kind)?,
            owner_org: self.owner_org,
            created_at_ms: self.created_at_ms,
            updated_at_ms: self.updated_at_ms,
            deleted: self
                .deleted_version
                .map(|v| v.parse::<Hlc>())
                .transpose()
                .map_err(|e| StoreError::Corrupt(e.to_string()))?,
            seq: self.seq,
            fields,
            versions: versions_from_json(&self.versions)?,
        })
    }
}

struct ChangeRow {
    seq: i64,
    record_id: String,
    kind: String,
    op: String,
    hlc: String,
    fields: String,
    at_ms: i64,
}

impl ChangeRow {
    fn into_change(self) -> Result<Change> {
        Ok(Change {
            seq: self.seq,
            record_id: Uuid::parse_str(&self.record_id)
                .map_err(|e| StoreError::Corrupt(e.to_string()))?,
            kind: kind_from_db(&self.kind)?,
            op: ChangeOp::parse(&self.op)
                .ok_or_else(|| StoreError::Corrupt(format!("change op {:?}", self.op)))?,
            hlc: self
                .hlc
                .parse()
                .map_err(|e: verbund_core::hlc::ParseHlcError| {
                    StoreError::Corrupt(e.to_string())
                })?,
            fields: serde_json::from_str(&self.fields)
                .map_err(|e| StoreError::Corrupt(format!("change fields: {e}")))?,
            at_ms: self.at_ms,
        })
    }
}

/// What a resolved reference told us.
struct RefTarget {
    kind: RecordKind,
    account_id: Option<String>,
}

fn ref_error(r: &RefCheck, found: Option<&RefTarget>) -> DomainError {
    let wanted: Vec<&str> = r.kinds.iter().map(|k| k.as_str()).collect();
    match found {
        None => DomainError::invalid(
            r.field,
            format!("no {} with id {}", wanted.join(" or "), r.id),
        ),
        Some(t) => DomainError::invalid(
            r.field,
            format!("{} is a {}, not a {}", r.id, t.kind, wanted.join(" or ")),
        ),
    }
}

/// Generates the store functions for one sqlx database type. The SQL is identical for both.
macro_rules! backend {
    ($module:ident, $db:ty, $pool:ty, $begin:expr) => {
        mod $module {
            use super::*;
            use sqlx::{QueryBuilder, Row};

            type Tx = sqlx::Transaction<'static, $db>;

            fn record_row(row: &<$db as sqlx::Database>::Row) -> Result<RecordRow> {
                Ok(RecordRow {
                    id: row.try_get("id")?,
                    kind: row.try_get("kind")?,
                    owner_org: row.try_get("owner_org")?,
                    created_at_ms: row.try_get("created_at_ms")?,
                    updated_at_ms: row.try_get("updated_at_ms")?,
                    deleted_version: row.try_get("deleted_version")?,
                    seq: row.try_get("seq")?,
                    fields: row.try_get("fields")?,
                    versions: row.try_get("versions")?,
                })
            }

            const RECORD_COLUMNS: &str = "id, kind, owner_org, created_at_ms, updated_at_ms, deleted_version, seq, fields, versions";

            pub async fn begin(pool: &$pool) -> Result<Tx> {
                let mut tx = pool.begin_with($begin).await?;
                // Taking the next sequence number first serializes writers (see crate docs).
                let _: i64 = sqlx::query_scalar("UPDATE node_state SET last_seq = last_seq + 1 WHERE id = 1 RETURNING last_seq")
                    .fetch_one(&mut *tx)
                    .await?;
                Ok(tx)
            }

            async fn current_seq(tx: &mut Tx) -> Result<i64> {
                Ok(sqlx::query_scalar("SELECT last_seq FROM node_state WHERE id = 1").fetch_one(&mut **tx).await?)
            }

            async fn resolve_ref(tx: &mut Tx, r: &RefCheck) -> Result<RefTarget> {
                let row = sqlx::query("SELECT kind, account_id FROM records WHERE id = $1 AND deleted_version IS NULL")
                    .bind(r.id.to_string())
                    .fetch_optional(&mut **tx)
                    .await?;
                let Some(row) = row else { return Err(ref_error(r, None).into()) };
                let kind: String = row.try_get("kind")?;
                let target = RefTarget { kind: kind_from_db(&kind)?, account_id: row.try_get("account_id")? };
                if !r.kinds.contains(&target.kind) {
                    return Err(ref_error(r, Some(&target)).into());
                }
                Ok(target)
            }

            /// Resolves references; for an activity, also finds the account it rolls up to.
            async fn resolve_refs(tx: &mut Tx, plan: &WritePlan) -> Result<Option<Option<String>>> {
                let mut activity_account = None;
                for r in &plan.refs {
                    let target = resolve_ref(tx, r).await?;
                    if plan.record.kind == RecordKind::Activity && r.field == "related_id" {
                        activity_account = Some(if target.kind == RecordKind::Account { Some(r.id.to_string()) } else { target.account_id });
                    }
                }
                Ok(activity_account)
            }

            async fn write_record(tx: &mut Tx, plan: &mut WritePlan, insert: bool, activity_account: Option<Option<String>>) -> Result<()> {
                let seq = current_seq(tx).await?;
                plan.record.seq = seq;
                plan.change.seq = seq;
                let rec = &plan.record;
                let mut idx = write::index_columns(rec);
                if rec.kind == RecordKind::Activity {
                    idx.account_id = match activity_account {
                        Some(a) => a,
                        None => {
                            // related_id unchanged: keep the derived account.
                            sqlx::query_scalar("SELECT account_id FROM records WHERE id = $1")
                                .bind(rec.id.to_string())
                                .fetch_optional(&mut **tx)
                                .await?
                                .flatten()
                        }
                    };
                }
                let sql = if insert {
                    "INSERT INTO records (id, kind, owner_org, created_at_ms, updated_at_ms, deleted_version, seq, fields, versions, \
                     account_id, contact_id, related_id, stage, status, priority, assigned_org, channel, search_text) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18)"
                } else {
                    "UPDATE records SET kind = $2, owner_org = $3, created_at_ms = $4, updated_at_ms = $5, deleted_version = $6, \
                     seq = $7, fields = $8, versions = $9, account_id = $10, contact_id = $11, related_id = $12, stage = $13, \
                     status = $14, priority = $15, assigned_org = $16, channel = $17, search_text = $18 WHERE id = $1"
                };
                sqlx::query(sql)
                    .bind(rec.id.to_string())
                    .bind(rec.kind.as_str())
                    .bind(&rec.owner_org)
                    .bind(rec.created_at_ms)
                    .bind(rec.updated_at_ms)
                    .bind(rec.deleted.as_ref().map(|h| h.to_string()))
                    .bind(seq)
                    .bind(fields_to_json(&rec.fields)?)
                    .bind(versions_to_json(&rec.versions))
                    .bind(idx.account_id)
                    .bind(idx.contact_id)
                    .bind(idx.related_id)
                    .bind(idx.stage)
                    .bind(idx.status)
                    .bind(idx.priority)
                    .bind(idx.assigned_org)
                    .bind(idx.channel)
                    .bind(idx.search_text)
                    .execute(&mut **tx)
                    .await?;
                let c = &plan.change;
                sqlx::query("INSERT INTO changes (seq, record_id, kind, op, hlc, fields, at_ms) VALUES ($1, $2, $3, $4, $5, $6, $7)")
                    .bind(seq)
                    .bind(c.record_id.to_string())
                    .bind(c.kind.as_str())
                    .bind(c.op.as_str())
                    .bind(c.hlc.to_string())
                    .bind(fields_to_json(&c.fields)?)
                    .bind(c.at_ms)
                    .execute(&mut **tx)
                    .await?;
                Ok(())
            }

            pub async fn create(pool: &$pool, mut plan: WritePlan) -> Result<Record> {
                let mut tx = begin(pool).await?;
                let exists: Option<String> = sqlx::query_scalar("SELECT id FROM records WHERE id = $1")
                    .bind(plan.record.id.to_string())
                    .fetch_optional(&mut *tx)
                    .await?;
                if exists.is_some() {
                    return Err(DomainError::invalid("id", format!("a record with id {} exists already", plan.record.id)).into());
                }
                let activity_account = resolve_refs(&mut tx, &plan).await?;
                write_record(&mut tx, &mut plan, true, activity_account).await?;
                tx.commit().await?;
                Ok(plan.record)
            }

            async fn load(tx: &mut Tx, kind: RecordKind, id: Uuid) -> Result<Record> {
                let row = sqlx::query("SELECT id, kind, owner_org, created_at_ms, updated_at_ms, deleted_version, seq, fields, versions FROM records WHERE id = $1 AND kind = $2")
                    .bind(id.to_string())
                    .bind(kind.as_str())
                    .fetch_optional(&mut **tx)
                    .await?;
                match row {
                    Some(row) => record_row(&row)?.into_record(),
                    None => Err(DomainError::NotFound { kind, id: id.to_string() }.into()),
                }
            }

            /// Live records that reference `id` (other than itself).
            async fn dependents(tx: &mut Tx, id: Uuid) -> Result<i64> {
                let id = id.to_string();
                Ok(sqlx::query_scalar(
                    "SELECT COUNT(*) FROM records WHERE deleted_version IS NULL AND id <> $1 \
                     AND (account_id = $1 OR contact_id = $1 OR related_id = $1)",
                )
                .bind(id)
                .fetch_one(&mut **tx)
                .await?)
            }

            pub async fn modify<F>(pool: &$pool, kind: RecordKind, id: Uuid, is_delete: bool, plan_fn: F) -> Result<Record>
            where
                F: FnOnce(&Record) -> Result<Option<WritePlan>, DomainError>,
            {
                let mut tx = begin(pool).await?;
                let current = load(&mut tx, kind, id).await?;
                let Some(mut plan) = plan_fn(&current)? else {
                    // Nothing changes: roll back so the sequence number is not consumed.
                    tx.rollback().await?;
                    return Ok(current);
                };
                if is_delete {
                    let n = dependents(&mut tx, id).await?;
                    if n > 0 {
                        return Err(DomainError::precondition(
                            "id",
                            format!("{kind} {id} still has {n} live related record(s) (contacts, opportunities, cases or activities); delete or move them first"),
                        )
                        .into());
                    }
                }
                let activity_account = resolve_refs(&mut tx, &plan).await?;
                write_record(&mut tx, &mut plan, false, activity_account).await?;
                tx.commit().await?;
                Ok(plan.record)
            }

            pub async fn get(pool: &$pool, id: Uuid) -> Result<Option<Record>> {
                let row = sqlx::query("SELECT id, kind, owner_org, created_at_ms, updated_at_ms, deleted_version, seq, fields, versions FROM records WHERE id = $1")
                    .bind(id.to_string())
                    .fetch_optional(pool)
                    .await?;
                row.map(|r| record_row(&r)?.into_record()).transpose()
            }

            pub async fn get_many(pool: &$pool, ids: &[Uuid]) -> Result<Vec<Record>> {
                if ids.is_empty() {
                    return Ok(Vec::new());
                }
                let mut qb: QueryBuilder<$db> = QueryBuilder::new("SELECT ");
                qb.push(RECORD_COLUMNS).push(" FROM records WHERE id IN (");
                let mut sep = qb.separated(", ");
                for id in ids {
                    sep.push_bind(id.to_string());
                }
                qb.push(")");
                let rows = qb.build().fetch_all(pool).await?;
                rows.iter().map(|r| record_row(r)?.into_record()).collect()
            }

            pub async fn list(pool: &$pool, q: &ListQuery) -> Result<Vec<Record>> {
                let mut qb: QueryBuilder<$db> = QueryBuilder::new("SELECT ");
                qb.push(RECORD_COLUMNS).push(" FROM records WHERE 1 = 1");
                if let Some(kind) = q.kind {
                    qb.push(" AND kind = ").push_bind(kind.as_str());
                }
                for (column, value) in [
                    (" AND account_id = ", &q.account_id),
                    (" AND related_id = ", &q.related_id),
                    (" AND stage = ", &q.stage),
                    (" AND status = ", &q.status),
                    (" AND priority = ", &q.priority),
                    (" AND assigned_org = ", &q.assigned_org),
                    (" AND channel = ", &q.channel),
                ] {
                    if let Some(v) = value {
                        qb.push(column).push_bind(v.clone());
                    }
                }
                if let Some(since) = q.updated_since_ms {
                    qb.push(" AND updated_at_ms >= ").push_bind(since);
                }
                if !q.show_deleted {
                    qb.push(" AND deleted_version IS NULL");
                }
                if let Some(after) = &q.after_id {
                    qb.push(" AND id > ").push_bind(after.clone());
                }
                qb.push(" ORDER BY id LIMIT ").push_bind(q.limit);
                let rows = qb.build().fetch_all(pool).await?;
                rows.iter().map(|r| record_row(r)?.into_record()).collect()
            }

            pub async fn search(pool: &$pool, q: &SearchQuery) -> Result<Vec<Record>> {
                let mut qb: QueryBuilder<$db> = QueryBuilder::new("SELECT ");
                qb.push(RECORD_COLUMNS).push(" FROM records WHERE deleted_version IS NULL AND (1 = 0");
                for n in &q.needles {
                    qb.push(" OR search_text LIKE ").push_bind(like_pattern(n)).push(" ESCAPE '\\'");
                }
                qb.push(")");
                if !q.kinds.is_empty() {
                    qb.push(" AND kind IN (");
                    let mut sep = qb.separated(", ");
                    for k in &q.kinds {
                        sep.push_bind(k.as_str());
                    }
                    qb.push(")");
                }
                if let Some(after) = &q.after_id {
                    qb.push(" AND id > ").push_bind(after.clone());
                }
                qb.push(" ORDER BY id LIMIT ").push_bind(q.limit);
                let rows = qb.build().fetch_all(pool).await?;
                rows.iter().map(|r| record_row(r)?.into_record()).collect()
            }

            pub async fn changes_after(pool: &$pool, after_seq: i64, kinds: &[RecordKind], limit: i64) -> Result<Vec<Change>> {
                let mut qb: QueryBuilder<$db> = QueryBuilder::new("SELECT seq, record_id, kind, op, hlc, fields, at_ms FROM changes WHERE seq > ");
                qb.push_bind(after_seq);
                if !kinds.is_empty() {
                    qb.push(" AND kind IN (");
                    let mut sep = qb.separated(", ");
                    for k in kinds {
                        sep.push_bind(k.as_str());
                    }
                    qb.push(")");
                }
                qb.push(" ORDER BY seq LIMIT ").push_bind(limit);
                let rows = qb.build().fetch_all(pool).await?;
                rows.iter()
                    .map(|r| {
                        ChangeRow {
                            seq: r.try_get("seq")?,
                            record_id: r.try_get("record_id")?,
                            kind: r.try_get("kind")?,
                            op: r.try_get("op")?,
                            hlc: r.try_get("hlc")?,
                            fields: r.try_get("fields")?,
                            at_ms: r.try_get("at_ms")?,
                        }
                        .into_change()
                    })
                    .collect()
            }

            pub async fn last_seq(pool: &$pool) -> Result<i64> {
                Ok(sqlx::query_scalar("SELECT COALESCE(MAX(seq), 0) FROM changes").fetch_one(pool).await?)
            }

            pub async fn last_hlc(pool: &$pool) -> Result<Option<Hlc>> {
                let v: Option<String> = sqlx::query_scalar("SELECT hlc FROM changes ORDER BY seq DESC LIMIT 1").fetch_optional(pool).await?;
                v.map(|s| s.parse::<Hlc>().map_err(|e| StoreError::Corrupt(e.to_string()))).transpose()
            }

            pub async fn count(pool: &$pool, kind: RecordKind) -> Result<i64> {
                Ok(sqlx::query_scalar("SELECT COUNT(*) FROM records WHERE kind = $1 AND deleted_version IS NULL")
                    .bind(kind.as_str())
                    .fetch_one(pool)
                    .await?)
            }
        }
    };
}

backend!(sqlite_impl, sqlx::Sqlite, SqlitePool, "BEGIN IMMEDIATE");
backend!(pg_impl, sqlx::Postgres, PgPool, "BEGIN");

static SQLITE_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");
static PG_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/postgres");

/// A node's database.
#[derive(Clone, Debug)]
pub enum Store {
    Sqlite(SqlitePool),
    Postgres(PgPool),
}

macro_rules! dispatch {
    ($self:ident, $f:ident ( $($arg:expr),* )) => {
        match $self {
            Store::Sqlite(p) => sqlite_impl::$f(p $(, $arg)*).await,
            Store::Postgres(p) => pg_impl::$f(p $(, $arg)*).await,
        }
    };
}

impl Store {
    /// Opens (creating if needed) and migrates the database named by `url`:
    /// `postgres://…`/`postgresql://…`, `sqlite://path`, or a plain file path for SQLite.
    pub async fn open(url: &str) -> Result<Store> {
        let store = if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            let opts =
                PgConnectOptions::from_str(url).map_err(|e| StoreError::Config(e.to_string()))?;
            Store::open_postgres(opts).await?
        } else {
            let path = url
                .strip_prefix("sqlite://")
                .or_else(|| url.strip_prefix("sqlite:"))
                .unwrap_or(url);
            if path.is_empty() || path.contains(":memory:") {
                return Err(StoreError::Config(
                    "an in-memory SQLite database would lose all data; give a file path".into(),
                ));
            }
            Store::open_sqlite(std::path::Path::new(path)).await?
        };
        Ok(store)
    }

    pub async fn open_sqlite(path: &std::path::Path) -> Result<Store> {
        let opts = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            // NORMAL is durable across application crashes in WAL mode; FULL adds an fsync per
            // commit for power loss. We choose FULL: a CRM must not lose a confirmed write.
            .synchronous(SqliteSynchronous::Full)
            .foreign_keys(true)
            .busy_timeout(Duration::from_secs(10));
        let pool = SqlitePoolOptions::new()
            .max_connections(8)
            .connect_with(opts)
            .await?;
        SQLITE_MIGRATIONS.run(&pool).await?;
        Ok(Store::Sqlite(pool))
    }

    pub async fn open_postgres(opts: PgConnectOptions) -> Result<Store> {
        let pool = PgPoolOptions::new()
            .max_connections(16)
            .acquire_timeout(Duration::from_secs(10))
            .connect_with(opts)
            .await?;
        PG_MIGRATIONS.run(&pool).await?;
        Ok(Store::Postgres(pool))
    }

    pub fn backend_name(&self) -> &'static str {
        match self {
            Store::Sqlite(_) => "sqlite",
            Store::Postgres(_) => "postgres",
        }
    }

    /// Stores a new record planned by [`verbund_core::write::plan_create`].
    pub async fn create(&self, plan: WritePlan) -> Result<Record> {
        dispatch!(self, create(plan))
    }

    /// Updates a record inside one transaction: loads it, lets `plan_fn` plan the change from
    /// the current state (None = nothing to do), resolves references and writes.
    pub async fn update<F>(&self, kind: RecordKind, id: Uuid, plan_fn: F) -> Result<Record>
    where
        F: FnOnce(&Record) -> Result<Option<WritePlan>, DomainError>,
    {
        dispatch!(self, modify(kind, id, false, plan_fn))
    }

    /// Turns a record into a tombstone; refused while live records still reference it.
    pub async fn delete<F>(&self, kind: RecordKind, id: Uuid, plan_fn: F) -> Result<Record>
    where
        F: FnOnce(&Record) -> Result<WritePlan, DomainError>,
    {
        dispatch!(
            self,
            modify(kind, id, true, |r: &Record| plan_fn(r).map(Some))
        )
    }

    /// A record by id, tombstones included.
    pub async fn get(&self, id: Uuid) -> Result<Option<Record>> {
        dispatch!(self, get(id))
    }

    /// Records by id (tombstones included), in no particular order; unknown ids are skipped.
    pub async fn get_many(&self, ids: &[Uuid]) -> Result<Vec<Record>> {
        dispatch!(self, get_many(ids))
    }

    pub async fn list(&self, q: &ListQuery) -> Result<Vec<Record>> {
        dispatch!(self, list(q))
    }

    pub async fn search(&self, q: &SearchQuery) -> Result<Vec<Record>> {
        dispatch!(self, search(q))
    }

    /// Change-log entries with seq > `after_seq`, in order.
    pub async fn changes_after(
        &self,
        after_seq: i64,
        kinds: &[RecordKind],
        limit: i64,
    ) -> Result<Vec<Change>> {
        dispatch!(self, changes_after(after_seq, kinds, limit))
    }

    pub async fn last_seq(&self) -> Result<i64> {
        dispatch!(self, last_seq())
    }

    /// The newest version this node ever wrote, to restore its clock after a restart.
    pub async fn last_hlc(&self) -> Result<Option<Hlc>> {
        dispatch!(self, last_hlc())
    }

    /// Live records of a kind.
    pub async fn count(&self, kind: RecordKind) -> Result<i64> {
        dispatch!(self, count(kind))
    }

    pub async fn close(&self) {
        match self {
            Store::Sqlite(p) => p.close().await,
            Store::Postgres(p) => p.close().await,
        }
    }
}

/// Convenience for tests and tools: the text value of a field.
pub fn text_field<'a>(fields: &'a FieldMap, name: &str) -> Option<&'a str> {
    fields.get(name).and_then(Value::as_text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn like_escapes_wildcards() {
        assert_eq!(like_pattern("50%_a\\b"), "%50\\%\\_a\\\\b%");
    }

    #[test]
    fn versions_json_round_trip() {
        let mut v = BTreeMap::new();
        v.insert("name".to_string(), Hlc::new(5, 1, "acme/n1"));
        assert_eq!(versions_from_json(&versions_to_json(&v)).unwrap(), v);
        assert!(versions_from_json("{\"name\": \"bogus\"}").is_err());
    }
}
