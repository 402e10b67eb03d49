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
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, watch};

mod cache;
use cache::RecordCache;

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{PgPool, SqlitePool};
use uuid::Uuid;
use verbund_core::access::{RuleMatch, Share, ShareRule};
use verbund_core::audit::{self, AuditDraft, AuditEntry};
use verbund_core::write::{self, RefCheck, WritePlan};
use verbund_core::{Change, ChangeOp, DomainError, FieldMap, Hlc, Record, RecordKind, Value};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(transparent)]
    Domain(#[from] DomainError),
    // The cause is in the message and deliberately not a `source`: an error chain printed
    // with its causes would say it twice.
    #[error("database error: {0}")]
    Database(sqlx::Error),
    #[error("migration failed: {0}")]
    Migrate(sqlx::migrate::MigrateError),
    /// Stored data that cannot be decoded; never caused by client input.
    #[error("corrupt stored data: {0}")]
    Corrupt(String),
    #[error("invalid database configuration: {0}")]
    Config(String),
    /// The transaction holding this write failed before its commit; the write did not happen.
    #[error("write not stored: {0}")]
    CommitFailed(String),
    /// The commit itself failed (e.g. the connection dropped during COMMIT): the write may or
    /// may not be stored.
    #[error("outcome of the write unknown: {0}")]
    OutcomeUnknown(String),
    #[error("the store's writer has stopped")]
    WriterStopped,
    #[error("{0} exists already")]
    AlreadyExists(String),
    #[error("{0} not found")]
    NotFound(String),
}

impl From<sqlx::Error> for StoreError {
    fn from(e: sqlx::Error) -> Self {
        StoreError::Database(e)
    }
}

impl From<sqlx::migrate::MigrateError> for StoreError {
    fn from(e: sqlx::migrate::MigrateError) -> Self {
        StoreError::Migrate(e)
    }
}

/// A partner organization and its pinned trust anchor.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Partner {
    pub org: String,
    pub ca_pem: String,
    /// SHA-256 of the CA certificate (DER), lowercase hex.
    pub fingerprint: String,
    /// Where its node serves, `https://host:port`.
    pub endpoint: String,
    pub status: String,
    pub added_at_ms: i64,
    pub last_contact_ms: Option<i64>,
    /// The partner's revocation list (PEM), if one was loaded.
    pub crl_pem: Option<String>,
}

/// Plans a change from the current state of a record (None: nothing to change).
pub type PlanFn = Box<dyn FnOnce(&Record) -> Result<Option<WritePlan>, DomainError> + Send>;

/// Plans a new record (runs in the writer, so versions are stamped in commit order).
pub type CreateFn = Box<dyn FnOnce() -> Result<WritePlan, DomainError> + Send>;

/// A write waiting for the writer task.
pub enum WriteOp {
    Create(CreateFn),
    Modify {
        kind: RecordKind,
        id: Uuid,
        is_delete: bool,
        plan_fn: PlanFn,
    },
    /// Nothing but the job's audit entries (reads, denials).
    AuditOnly,
    /// A change to the sharing tables; the records whose reach it changes get an `access`
    /// change-log row stamped `Hlc` (so sync streams re-evaluate them).
    Share(ShareOp, Hlc),
    /// Owner side: a partner's proposed change, decided once per idempotency key.
    Merge {
        org: String,
        key: String,
        kind: RecordKind,
        id: Uuid,
        plan_fn: MergeFn,
    },
    /// Partner side: a batch of the owner's stream, applied with the new cursor.
    ReplicaBatch(ReplicaBatch),
    /// Partner side: a local edit of a replica; it shows at once and waits in the outbox.
    ReplicaEdit {
        kind: RecordKind,
        id: Uuid,
        key: String,
        plan_fn: PlanFn,
    },
    /// Partner side: the owner's verdict on an outbox entry.
    Verdict(VerdictApply),
    /// Owner side: erasure of a person's record (GDPR Art. 17).
    Erase {
        kind: RecordKind,
        id: Uuid,
        by: String,
        plan_fn: PlanFn,
    },
    /// Clock recovery: every version beyond `limit_ms` (stamped while our clock ran ahead)
    /// in our pending outbox edits and our own records gets a fresh one from `stamp`.
    Restamp {
        limit_ms: u64,
        now_ms: i64,
        stamp: RestampFn,
        report: Arc<std::sync::Mutex<RestampReport>>,
    },
}

/// A fresh version from the node's clock.
pub type RestampFn = Box<dyn FnMut() -> Hlc + Send>;

/// What clock recovery re-stamped.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RestampReport {
    /// Pending outbox entries (our edits of replicas) given fresh versions.
    pub outbox_entries: usize,
    /// Our own records whose fields were given fresh versions (a new change each).
    pub records: usize,
}

/// What one write job did: the record to answer with, every record it wrote (for the cache)
/// and its change-log rows.
#[derive(Default)]
struct OpOutput {
    reply: Option<Record>,
    written: Vec<Record>,
    changes: Vec<Change>,
    /// The op refused what was asked on its merits (a rejected push): the job's audit
    /// entries record a denial with this (value-free) reason.
    denied: Option<String>,
}

impl OpOutput {
    fn one(plan: WritePlan) -> OpOutput {
        OpOutput {
            reply: Some(plan.record.clone()),
            written: vec![plan.record],
            changes: vec![plan.change],
            denied: None,
        }
    }
    fn unchanged(current: Record) -> OpOutput {
        OpOutput {
            reply: Some(current),
            ..OpOutput::default()
        }
    }
}

pub use verbund_core::sync::{MergePlan, VerdictOutcome};

pub type MergeFn = Box<dyn FnOnce(&Record) -> Result<MergePlan, DomainError> + Send>;

/// A stored verdict (by idempotency key).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredVerdict {
    pub record_id: Uuid,
    pub outcome: VerdictOutcome,
    pub reason: String,
}

/// The owner's projection of one record, as a replica receives it.
#[derive(Clone, Debug, PartialEq)]
pub struct ReplicaState {
    pub id: Uuid,
    pub kind: RecordKind,
    pub owner_org: String,
    pub created_at_ms: i64,
    pub updated_at_ms: i64,
    pub fields: FieldMap,
    pub versions: verbund_core::VersionMap,
    pub writable: Vec<String>,
    pub deleted: Option<Hlc>,
    /// The owner's change sequence number of this state (orders states of one record).
    pub owner_seq: i64,
}

/// One item of an owner's stream.
#[derive(Clone, Debug, PartialEq)]
pub enum ReplicaItem {
    Upsert(ReplicaState),
    /// The record left our share: remove our copy.
    Revoke {
        id: Uuid,
    },
    /// The record was erased at the owner: purge it for good.
    Erase {
        id: Uuid,
    },
}

/// A batch of an owner's stream and the cursor it brings us to.
#[derive(Clone, Debug, PartialEq, Default)]
pub struct ReplicaBatch {
    pub owner_org: String,
    /// The owner's sequence number the batch brings us to (0: no cursor, e.g. repairs).
    pub cursor: i64,
    /// The owner's mark of its change at `cursor` (sent back when we subscribe again).
    pub cursor_mark: String,
    pub owner_last_seq: i64,
    pub at_ms: i64,
    pub items: Vec<ReplicaItem>,
    /// The items are the owner's current states in order (its stream, or repairs and
    /// retries known to be no older than what we hold): they may bring back a revoked copy.
    pub from_stream: bool,
    /// The owner's history changed under our cursor (restored from a backup): before the
    /// items, the cursor goes back to 0 and every replica of the owner takes the owner's
    /// next state as it is; our own edits it held (versions stamped by `<org>/…` nodes, this
    /// org) are offered again if the owner no longer has them.
    pub reset_for_org: Option<String>,
    /// Items we could not take: kept (one row per record) and retried later.
    pub quarantine: Vec<QuarantineItem>,
    /// Repairs the owner computed at its sequence number N: if our cursor is not beyond N,
    /// nothing we applied is newer, so they count as the owner's current state (as if from
    /// the stream: they may bring back a copy revoked here).
    pub current_as_of: Option<i64>,
}

/// An item of an owner's stream we could not take, as kept in quarantine.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct QuarantineItem {
    pub owner_org: String,
    /// The record the item is about (as sent; may not even be a UUID).
    pub record_id: String,
    /// The wire item, opaque to the store (the node encodes it).
    pub item: String,
    pub reason: String,
    pub first_ms: i64,
    pub last_ms: i64,
    pub attempts: i64,
}

/// The owner's verdict on one of our outbox entries.
#[derive(Clone, Debug, PartialEq)]
pub struct VerdictApply {
    /// The owner that answered (a verdict only ever settles that owner's entries).
    pub owner_org: String,
    pub key: String,
    pub outcome: VerdictOutcome,
    pub reason: String,
    /// The owner's projection after the merge (None: we no longer see the record).
    pub record: Option<ReplicaState>,
    /// We no longer see the record: our copy goes (as with a revoke) unless our cursor is
    /// beyond `as_of_seq` (we already applied newer owner changes, which decide instead).
    pub revoked: bool,
    pub as_of_seq: i64,
    pub at_ms: i64,
}

/// A local edit of a replica waiting for (or refused by) its owner.
#[derive(Clone, Debug, PartialEq)]
pub struct OutboxEntry {
    pub seq: i64,
    pub key: String,
    pub owner_org: String,
    pub record_id: Uuid,
    pub kind: RecordKind,
    pub edits: Vec<verbund_core::sync::FieldEdit>,
    /// pending or rejected
    pub state: String,
    pub attempts: i64,
    pub last_error: Option<String>,
    pub created_ms: i64,
}

/// Our subscription to an owner.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Subscription {
    pub owner_org: String,
    pub cursor: i64,
    pub owner_last_seq: i64,
    pub last_batch_ms: Option<i64>,
    pub last_error: Option<String>,
    pub last_error_ms: Option<i64>,
    /// The owner's mark of its change at `cursor`.
    pub cursor_mark: String,
    /// What happened when the owner's history last changed under us (empty: never).
    pub history_note: String,
}

/// A stored conflict (owner side).
#[derive(Clone, Debug, PartialEq)]
pub struct ConflictRecord {
    pub id: Uuid,
    pub record_id: Uuid,
    pub kind: RecordKind,
    pub conflict: verbund_core::sync::Conflict,
    pub created_ms: i64,
    pub resolved_by: Option<String>,
    pub resolved_ms: Option<i64>,
    pub resolution: Option<String>,
}

/// An organization a record was sent to (owner side).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Delivery {
    pub org: String,
    pub record_id: Uuid,
    pub kind: RecordKind,
    /// live, deleted, revoked or erased
    pub state: String,
    pub first_sent_ms: i64,
    pub last_sent_ms: i64,
    pub erasure_acked_ms: Option<i64>,
}

/// An erased record (owner side).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Erasure {
    pub record_id: Uuid,
    pub kind: RecordKind,
    pub erased_ms: i64,
    pub erased_by: String,
}

/// A change to the sharing tables.
#[derive(Clone, Debug)]
pub enum ShareOp {
    Add(Share),
    Revoke { record_id: Uuid, org: String },
    AddRule(ShareRule),
    RemoveRule(Uuid),
}

/// A write and the audit entries that commit with it (in the same transaction; the entries of
/// a write that fails are kept with the decision `failed`).
pub struct WriteJob {
    op: WriteOp,
    audit: Vec<AuditDraft>,
    reply: oneshot::Sender<Result<Option<Record>>>,
}

/// The outcome of walking the audit chain.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuditReport {
    /// Entries found intact, from the first.
    pub checked: i64,
    pub head_seq: i64,
    pub head_hash: String,
    /// The first break, if any.
    pub broken: Option<audit::ChainBreak>,
}

/// Filters of `audit list`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AuditQuery {
    pub org: Option<String>,
    pub record_id: Option<String>,
    pub since_ms: Option<i64>,
    pub until_ms: Option<i64>,
    pub after_seq: i64,
    pub limit: i64,
}

/// How many queued writes one transaction commits at most.
const MAX_BATCH: usize = 256;

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

/// Indexed reference columns that sharing follows.
#[derive(Clone, Copy, Debug)]
enum RefColumn {
    AccountId,
    ContactId,
    RelatedId,
    AssignedOrg,
}

impl RefColumn {
    fn sql(self) -> &'static str {
        match self {
            RefColumn::AccountId => "account_id",
            RefColumn::ContactId => "contact_id",
            RefColumn::RelatedId => "related_id",
            RefColumn::AssignedOrg => "assigned_org",
        }
    }
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
#[macro_use]
mod backend;

macro_rules! backend {
    ($module:ident, $db:ty, $pool:ty, $begin:expr, $savepoints:expr) => {
        mod $module {
            use super::*;
            use sqlx::{QueryBuilder, Row};

            type Tx = sqlx::Transaction<'static, $db>;

            backend_writer!($db, $pool, $begin, $savepoints);
            backend_sharing_writes!($db, $pool, $begin, $savepoints);
            backend_sync_owner_writes!($db, $pool, $begin, $savepoints);
            backend_sync_replica_writes!($db, $pool, $begin, $savepoints);
            backend_sharing_reads!($db, $pool, $begin, $savepoints);
            backend_sync_reads!($db, $pool, $begin, $savepoints);
            backend_reads!($db, $pool, $begin, $savepoints);
        }
    };
}

backend!(
    sqlite_impl,
    sqlx::Sqlite,
    SqlitePool,
    "BEGIN IMMEDIATE",
    false
);
backend!(pg_impl, sqlx::Postgres, PgPool, "BEGIN", true);

static SQLITE_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");
static PG_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/postgres");

#[derive(Clone, Debug)]
enum Backend {
    Sqlite(SqlitePool),
    Postgres(PgPool),
}

/// A node's database. Reads go straight to the pool; writes queue for one writer task that
/// commits them in groups (one transaction, one fsync for many writes), which avoids lock
/// contention between writers and keeps change sequence numbers in commit order.
#[derive(Clone, Debug)]
pub struct Store {
    backend: Backend,
    writes: mpsc::Sender<WriteJob>,
    /// The latest committed change sequence, published by the writer after each commit.
    commits: Arc<watch::Sender<i64>>,
    /// SQLite: an exclusive lock on `<db>.lock` held while the store is open (one writer process).
    _lock: Option<Arc<std::fs::File>>,
    /// PostgreSQL: the connection holding this process's advisory lock.
    _pg_lock: Option<Arc<tokio::sync::Mutex<sqlx::PgConnection>>>,
    /// Only for SQLite, where this process is the only writer (see `cache`).
    cache: Option<Arc<RecordCache>>,
}

/// Records kept in memory by the SQLite backend.
const CACHE_CAPACITY: usize = 100_000;

macro_rules! dispatch {
    ($self:ident, $f:ident ( $($arg:expr),* )) => {
        match &$self.backend {
            Backend::Sqlite(p) => sqlite_impl::$f(p $(, $arg)*).await,
            Backend::Postgres(p) => pg_impl::$f(p $(, $arg)*).await,
        }
    };
}

impl Store {
    /// Opens (creating if needed) and migrates the database named by `url`:
    /// `postgres://…`/`postgresql://…`, `sqlite://path`, or a plain file path for SQLite.
    pub async fn open(url: &str) -> Result<Store> {
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            let opts =
                PgConnectOptions::from_str(url).map_err(|e| StoreError::Config(e.to_string()))?;
            return Store::open_postgres(opts).await;
        }
        let path = url
            .strip_prefix("sqlite://")
            .or_else(|| url.strip_prefix("sqlite:"))
            .unwrap_or(url);
        if path.is_empty() || path.contains(":memory:") {
            return Err(StoreError::Config(
                "an in-memory SQLite database would lose all data; give a file path".into(),
            ));
        }
        Store::open_sqlite(std::path::Path::new(path)).await
    }

    pub async fn open_sqlite(path: &std::path::Path) -> Result<Store> {
        let opts = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            // FULL: a confirmed write survives a power loss, not only a crash. Group commit
            // keeps the cost of that fsync shared between many writes.
            .synchronous(SqliteSynchronous::Full)
            .foreign_keys(true)
            // Erasure (GDPR Art. 17) must not leave the person in free pages: deleted and
            // overwritten content is zeroed on disk, not only unlinked.
            .pragma("secure_delete", "ON")
            .busy_timeout(Duration::from_secs(10));
        // The cache and the single writer assume this process alone writes the file.
        let lock_path = path.with_extension("lock");
        let lock = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|e| StoreError::Config(format!("cannot open {}: {e}", lock_path.display())))?;
        lock.try_lock().map_err(|_| {
            StoreError::Config(format!(
                "{} is in use by another verbund process (lock {} is held)",
                path.display(),
                lock_path.display()
            ))
        })?;
        let pool = SqlitePoolOptions::new()
            .max_connections(8)
            .connect_with(opts)
            .await?;
        SQLITE_MIGRATIONS.run(&pool).await?;
        let mut store = Store::with_backend(Backend::Sqlite(pool)).await?;
        store._lock = Some(Arc::new(lock));
        Ok(store)
    }

    pub async fn open_postgres(opts: PgConnectOptions) -> Result<Store> {
        // One process per node, as with SQLite's lock file: a session-level advisory lock on
        // the database and schema, held by a connection of its own for the process's life
        // (the pool's connections come and go).
        let (host, port) = (opts.get_host().to_string(), opts.get_port());
        let unreachable = |why: String| {
            StoreError::Config(format!(
                "cannot connect to PostgreSQL at {host}:{port}: {why}"
            ))
        };
        let mut holder = {
            use sqlx::Connection;
            match tokio::time::timeout(
                Duration::from_secs(10),
                sqlx::PgConnection::connect_with(&opts),
            )
            .await
            {
                Ok(Ok(c)) => c,
                Ok(Err(e)) => return Err(unreachable(e.to_string())),
                Err(_) => return Err(unreachable("no answer within 10 s".into())),
            }
        };
        // A process killed a moment ago may still hold it until its session ends: wait a
        // little before refusing.
        let mut held = false;
        for _ in 0..25 {
            held = sqlx::query_scalar(
                "SELECT pg_try_advisory_lock(hashtext('verbund:' || current_database() || '/' || current_schema()))",
            )
            .fetch_one(&mut holder)
            .await?;
            if held {
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        if !held {
            return Err(StoreError::Config(
                "another verbund process serves this PostgreSQL database (and schema); one process per node"
                    .into(),
            ));
        }
        let pool = PgPoolOptions::new()
            .max_connections(16)
            .acquire_timeout(Duration::from_secs(10))
            .connect_with(opts)
            .await?;
        PG_MIGRATIONS.run(&pool).await?;
        let mut store = Store::with_backend(Backend::Postgres(pool)).await?;
        store._pg_lock = Some(Arc::new(tokio::sync::Mutex::new(holder)));
        Ok(store)
    }

    /// Binds the database to organization `org` on first use; any other organization is
    /// refused (two organizations must never share a database).
    pub async fn claim_for(&self, org: &str) -> Result<()> {
        let owner: Option<String> = match &self.backend {
            Backend::Sqlite(p) => {
                sqlx::query_scalar("SELECT org FROM node_owner")
                    .fetch_optional(p)
                    .await?
            }
            Backend::Postgres(p) => {
                sqlx::query_scalar("SELECT org FROM node_owner")
                    .fetch_optional(p)
                    .await?
            }
        };
        match owner {
            Some(o) if o == org => Ok(()),
            Some(o) => Err(StoreError::Config(format!(
                "this database belongs to organization {o:?}; {org:?} cannot use it (give each organization its own database)"
            ))),
            None => {
                let sql = "INSERT INTO node_owner (org) VALUES ($1)";
                match &self.backend {
                    Backend::Sqlite(p) => {
                        sqlx::query(sql).bind(org).execute(p).await.map(|_| ())?
                    }
                    Backend::Postgres(p) => {
                        sqlx::query(sql).bind(org).execute(p).await.map(|_| ())?
                    }
                }
                Ok(())
            }
        }
    }

    async fn with_backend(backend: Backend) -> Result<Store> {
        let last_seq = match &backend {
            Backend::Sqlite(p) => sqlite_impl::last_seq(p).await?,
            Backend::Postgres(p) => pg_impl::last_seq(p).await?,
        };
        let commits = Arc::new(watch::channel(last_seq).0);
        let writer_commits = commits.clone();
        let (writes, mut rx) = mpsc::channel::<WriteJob>(4 * MAX_BATCH);
        let writer = backend.clone();
        let cache = matches!(backend, Backend::Sqlite(_))
            .then(|| Arc::new(RecordCache::new(CACHE_CAPACITY)));
        let writer_cache = cache.clone();
        tokio::spawn(async move {
            while let Some(first) = rx.recv().await {
                let mut batch = vec![first];
                while batch.len() < MAX_BATCH {
                    match rx.try_recv() {
                        Ok(job) => batch.push(job),
                        Err(_) => break,
                    }
                }
                match &writer {
                    Backend::Sqlite(p) => {
                        let cache = writer_cache.as_deref();
                        sqlite_impl::write_batch(p, batch, cache, &writer_commits).await
                    }
                    Backend::Postgres(p) => {
                        pg_impl::write_batch(p, batch, None, &writer_commits).await
                    }
                }
            }
        });
        Ok(Store {
            backend,
            writes,
            commits,
            _lock: None,
            _pg_lock: None,
            cache,
        })
    }

    pub fn backend_name(&self) -> &'static str {
        match self.backend {
            Backend::Sqlite(_) => "sqlite",
            Backend::Postgres(_) => "postgres",
        }
    }

    async fn submit_with_audit(
        &self,
        op: WriteOp,
        audit: Vec<AuditDraft>,
    ) -> Result<Option<Record>> {
        let (reply, rx) = oneshot::channel();
        self.writes
            .send(WriteJob { op, audit, reply })
            .await
            .map_err(|_| StoreError::WriterStopped)?;
        rx.await.map_err(|_| StoreError::WriterStopped)?
    }

    async fn submit(&self, op: WriteOp, audit: Vec<AuditDraft>) -> Result<Record> {
        self.submit_with_audit(op, audit)
            .await?
            .ok_or_else(|| StoreError::Corrupt("a record write returned no record".into()))
    }

    /// Appends audit entries (reads, denials); returns once they are committed.
    pub async fn audit(&self, drafts: Vec<AuditDraft>) -> Result<()> {
        if drafts.is_empty() {
            return Ok(());
        }
        self.submit_with_audit(WriteOp::AuditOnly, drafts)
            .await
            .map(|_| ())
    }

    /// Changes the sharing tables, with its audit entry in the same transaction.
    pub async fn share(&self, op: ShareOp, hlc: Hlc, audit: AuditDraft) -> Result<()> {
        self.submit_with_audit(WriteOp::Share(op, hlc), vec![audit])
            .await
            .map(|_| ())
    }

    pub async fn list_shares(
        &self,
        org: Option<&str>,
        record_id: Option<Uuid>,
    ) -> Result<Vec<Share>> {
        dispatch!(self, list_shares(org, record_id))
    }

    /// The shares of these records with `org`.
    pub async fn shares_of_records(&self, org: &str, ids: &[Uuid]) -> Result<Vec<Share>> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        dispatch!(self, shares_of_records(org, ids))
    }

    pub async fn list_share_rules(&self, org: Option<&str>) -> Result<Vec<ShareRule>> {
        dispatch!(self, list_share_rules(org))
    }

    /// Live records (other than accounts) whose account is one of `account_ids`.
    pub async fn records_of_accounts(&self, account_ids: &[String]) -> Result<Vec<Record>> {
        dispatch!(self, records_of_accounts(account_ids))
    }

    /// Live activities related to one of `ids`.
    pub async fn activities_related_to(&self, ids: &[String]) -> Result<Vec<Record>> {
        dispatch!(self, activities_related_to(ids))
    }

    /// Live service cases assigned to `org`.
    pub async fn cases_assigned_to(&self, org: &str) -> Result<Vec<Record>> {
        dispatch!(self, cases_assigned_to(org))
    }

    /// Live accounts that may carry `tag` (a superset; check the tags themselves).
    pub async fn accounts_mentioning(&self, tag: &str) -> Result<Vec<Record>> {
        dispatch!(self, accounts_mentioning(tag))
    }

    pub async fn list_audit(&self, q: &AuditQuery) -> Result<Vec<AuditEntry>> {
        dispatch!(self, list_audit(q))
    }

    /// Walks the whole audit chain and compares its end with the recorded head.
    pub async fn verify_audit(&self) -> Result<AuditReport> {
        let mut verifier = audit::ChainVerifier::default();
        let mut after_seq = 0;
        // Read the head first: entries appended while we walk only extend the chain.
        let (head_seq, head_hash) = self.audit_head().await?;
        loop {
            let page = self
                .list_audit(&AuditQuery {
                    after_seq,
                    limit: 1000,
                    ..Default::default()
                })
                .await?;
            let Some(last) = page.last() else { break };
            after_seq = last.seq;
            for e in page.iter().take_while(|e| e.seq <= head_seq) {
                if let Err(b) = verifier.check(e) {
                    return Ok(AuditReport {
                        checked: verifier.checked(),
                        head_seq,
                        head_hash,
                        broken: Some(b),
                    });
                }
            }
            if after_seq >= head_seq {
                break;
            }
        }
        let broken = verifier.finish(head_seq, &head_hash).err();
        Ok(AuditReport {
            checked: verifier.checked(),
            head_seq,
            head_hash,
            broken,
        })
    }

    /// The newest audit entry's sequence number and hash (0 and the genesis hash if none).
    pub async fn audit_head(&self) -> Result<(i64, String)> {
        dispatch!(self, audit_head())
    }

    /// Stores a new record planned by [`verbund_core::write::plan_create`].
    pub async fn create(&self, plan: WritePlan) -> Result<Record> {
        self.create_with(move || Ok(plan)).await
    }

    /// Stores a new record planned by `plan_fn`, which runs in the writer: a version taken
    /// there is ordered like the commits.
    pub async fn create_with<F>(&self, plan_fn: F) -> Result<Record>
    where
        F: FnOnce() -> Result<WritePlan, DomainError> + Send + 'static,
    {
        self.create_audited(plan_fn, Vec::new()).await
    }

    /// `create_with`, committing `audit` with the record (the record id is filled in).
    pub async fn create_audited<F>(&self, plan_fn: F, audit: Vec<AuditDraft>) -> Result<Record>
    where
        F: FnOnce() -> Result<WritePlan, DomainError> + Send + 'static,
    {
        self.submit(WriteOp::Create(Box::new(plan_fn)), audit).await
    }

    /// Follows the latest committed change sequence.
    pub fn subscribe_commits(&self) -> watch::Receiver<i64> {
        self.commits.subscribe()
    }

    /// Updates a record inside one transaction: loads it, lets `plan_fn` plan the change from
    /// the current state (None = nothing to do, the current record is returned), resolves
    /// references and writes.
    pub async fn update<F>(&self, kind: RecordKind, id: Uuid, plan_fn: F) -> Result<Record>
    where
        F: FnOnce(&Record) -> Result<Option<WritePlan>, DomainError> + Send + 'static,
    {
        self.update_audited(kind, id, plan_fn, Vec::new()).await
    }

    /// `update`, committing `audit` with the change.
    pub async fn update_audited<F>(
        &self,
        kind: RecordKind,
        id: Uuid,
        plan_fn: F,
        audit: Vec<AuditDraft>,
    ) -> Result<Record>
    where
        F: FnOnce(&Record) -> Result<Option<WritePlan>, DomainError> + Send + 'static,
    {
        self.submit(
            WriteOp::Modify {
                kind,
                id,
                is_delete: false,
                plan_fn: Box::new(plan_fn),
            },
            audit,
        )
        .await
    }

    /// Turns a record into a tombstone; refused while live records still reference it.
    pub async fn delete<F>(&self, kind: RecordKind, id: Uuid, plan_fn: F) -> Result<Record>
    where
        F: FnOnce(&Record) -> Result<WritePlan, DomainError> + Send + 'static,
    {
        self.submit(
            WriteOp::Modify {
                kind,
                id,
                is_delete: true,
                plan_fn: Box::new(move |r: &Record| plan_fn(r).map(Some)),
            },
            Vec::new(),
        )
        .await
    }

    // ---- Federation sync ----

    /// Owner side: decides a partner's proposed change once per idempotency key (`plan_fn`
    /// runs in the writer on the current record) and returns the stored verdict.
    pub async fn merge_push<F>(
        &self,
        org: &str,
        key: &str,
        kind: RecordKind,
        id: Uuid,
        plan_fn: F,
        audit: Vec<AuditDraft>,
    ) -> Result<(Record, StoredVerdict)>
    where
        F: FnOnce(&Record) -> Result<MergePlan, DomainError> + Send + 'static,
    {
        let rec = self
            .submit(
                WriteOp::Merge {
                    org: org.to_string(),
                    key: key.to_string(),
                    kind,
                    id,
                    plan_fn: Box::new(plan_fn),
                },
                audit,
            )
            .await?;
        let verdict = self
            .push_verdict(org, key)
            .await?
            .ok_or_else(|| StoreError::Corrupt(format!("no verdict stored for push {key}")))?;
        Ok((rec, verdict))
    }

    pub async fn push_verdict(&self, org: &str, key: &str) -> Result<Option<StoredVerdict>> {
        dispatch!(self, push_verdict(org, key))
    }

    /// Owner side: erases a record (the plan removes its personal fields); the change log
    /// and conflict records of the record lose their values in the same transaction.
    pub async fn erase<F>(&self, kind: RecordKind, id: Uuid, by: &str, plan_fn: F) -> Result<Record>
    where
        F: FnOnce(&Record) -> Result<Option<WritePlan>, DomainError> + Send + 'static,
    {
        self.submit(
            WriteOp::Erase {
                kind,
                id,
                by: by.to_string(),
                plan_fn: Box::new(plan_fn),
            },
            Vec::new(),
        )
        .await
    }

    /// Partner side: applies a batch of an owner's stream and moves the cursor with it.
    pub async fn apply_replica_batch(&self, batch: ReplicaBatch) -> Result<()> {
        self.submit_with_audit(WriteOp::ReplicaBatch(batch), Vec::new())
            .await
            .map(|_| ())
    }

    /// Partner side: a local edit of a replica; shown at once, queued in the outbox.
    pub async fn edit_replica<F>(
        &self,
        kind: RecordKind,
        id: Uuid,
        key: &str,
        plan_fn: F,
    ) -> Result<Record>
    where
        F: FnOnce(&Record) -> Result<Option<WritePlan>, DomainError> + Send + 'static,
    {
        self.submit(
            WriteOp::ReplicaEdit {
                kind,
                id,
                key: key.to_string(),
                plan_fn: Box::new(plan_fn),
            },
            Vec::new(),
        )
        .await
    }

    /// Partner side: the owner's verdict on an outbox entry.
    pub async fn apply_verdict(&self, v: VerdictApply) -> Result<()> {
        self.submit_with_audit(WriteOp::Verdict(v), Vec::new())
            .await
            .map(|_| ())
    }

    pub async fn deliveries_of(&self, org: &str, ids: &[Uuid]) -> Result<Vec<Delivery>> {
        dispatch!(self, deliveries_of(org, ids))
    }

    pub async fn deliveries_of_record(&self, id: Uuid) -> Result<Vec<Delivery>> {
        dispatch!(self, deliveries_of_record(id))
    }

    pub async fn live_deliveries(&self, org: &str) -> Result<Vec<Delivery>> {
        dispatch!(self, live_deliveries(org))
    }

    pub async fn pending_erasures(&self, org: &str) -> Result<Vec<Delivery>> {
        dispatch!(self, pending_erasures(org))
    }

    pub async fn record_deliveries(
        &self,
        org: &str,
        rows: &[(Uuid, RecordKind, &'static str)],
        at_ms: i64,
    ) -> Result<()> {
        if rows.is_empty() {
            return Ok(());
        }
        dispatch!(self, record_deliveries(org, rows, at_ms))
    }

    pub async fn ack_erasures(&self, org: &str, ids: &[Uuid], at_ms: i64) -> Result<()> {
        dispatch!(self, ack_erasures(org, ids, at_ms))
    }

    pub async fn record_peer_ack(&self, org: &str, cursor: i64, at_ms: i64) -> Result<()> {
        dispatch!(self, record_peer_ack(org, cursor, at_ms))
    }

    pub async fn peer_acks(&self) -> Result<Vec<(String, i64, i64)>> {
        dispatch!(self, peer_acks())
    }

    pub async fn erasure(&self, id: Uuid) -> Result<Option<Erasure>> {
        dispatch!(self, erasure(id))
    }

    pub async fn list_conflicts(
        &self,
        record_id: Option<Uuid>,
        include_resolved: bool,
    ) -> Result<Vec<ConflictRecord>> {
        dispatch!(self, list_conflicts(record_id, include_resolved))
    }

    pub async fn get_conflict(&self, id: Uuid) -> Result<Option<ConflictRecord>> {
        dispatch!(self, get_conflict(id))
    }

    pub async fn mark_conflict_resolved(
        &self,
        id: Uuid,
        by: &str,
        resolution: &str,
        at_ms: i64,
    ) -> Result<bool> {
        dispatch!(self, mark_conflict_resolved(id, by, resolution, at_ms))
    }

    pub async fn subscription(&self, owner: &str) -> Result<Option<Subscription>> {
        dispatch!(self, subscription(owner))
    }

    pub async fn list_subscriptions(&self) -> Result<Vec<Subscription>> {
        dispatch!(self, list_subscriptions())
    }

    pub async fn set_sync_error(&self, owner: &str, error: Option<&str>, at_ms: i64) -> Result<()> {
        dispatch!(self, set_sync_error(owner, error, at_ms))
    }

    pub async fn list_outbox(
        &self,
        owner: Option<&str>,
        state: Option<&str>,
        limit: i64,
    ) -> Result<Vec<OutboxEntry>> {
        dispatch!(self, list_outbox(owner, state, limit))
    }

    pub async fn outbox_attempt(&self, key: &str, error: &str) -> Result<()> {
        dispatch!(self, outbox_attempt(key, error))
    }

    /// Pending outbox entries per owner.
    pub async fn outbox_depths(&self) -> Result<Vec<(String, i64)>> {
        dispatch!(self, count_by_owner(true))
    }

    /// Live replicas per owner.
    pub async fn replica_counts(&self) -> Result<Vec<(String, i64)>> {
        dispatch!(self, count_by_owner(false))
    }

    /// After an erasure: moves everything in SQLite's write-ahead log into the database file
    /// (where `secure_delete` has zeroed the erased content) and truncates the log, whose old
    /// page images may still hold it. True if the log was emptied; false if readers kept it
    /// (call again later). PostgreSQL: nothing to do here; VACUUM (see the README).
    pub async fn scrub_erased(&self) -> Result<bool> {
        match &self.backend {
            Backend::Sqlite(p) => {
                let row = sqlx::query("PRAGMA wal_checkpoint(TRUNCATE)")
                    .fetch_one(p)
                    .await?;
                let busy: i64 = sqlx::Row::try_get(&row, 0)?;
                Ok(busy == 0)
            }
            Backend::Postgres(_) => Ok(true),
        }
    }

    /// Clock recovery: gives every version beyond `limit_ms` in our pending outbox edits and
    /// our own records a fresh one from `stamp` (see `WriteOp::Restamp`).
    pub async fn restamp_ahead(
        &self,
        limit_ms: u64,
        now_ms: i64,
        stamp: RestampFn,
    ) -> Result<RestampReport> {
        let report = Arc::new(std::sync::Mutex::new(RestampReport::default()));
        self.submit_with_audit(
            WriteOp::Restamp {
                limit_ms,
                now_ms,
                stamp,
                report: report.clone(),
            },
            Vec::new(),
        )
        .await?;
        let counts = report.lock().unwrap_or_else(|p| p.into_inner()).clone();
        Ok(counts)
    }

    /// Partner side: items of owners' streams we could not take (oldest first).
    pub async fn list_quarantine(
        &self,
        owner: Option<&str>,
        limit: i64,
    ) -> Result<Vec<QuarantineItem>> {
        dispatch!(self, list_quarantine(owner, limit))
    }

    /// Partner side: the newest owner sequence number among our replicas of `owner`.
    pub async fn max_replica_seq(&self, owner: &str) -> Result<i64> {
        dispatch!(self, max_replica_seq(owner))
    }

    /// Partner side: how many items of each owner are in quarantine.
    pub async fn quarantine_counts(&self) -> Result<Vec<(String, i64)>> {
        dispatch!(self, quarantine_counts())
    }

    pub async fn replica_digests(&self, owner: &str) -> Result<Vec<(Uuid, u64)>> {
        dispatch!(self, replica_digests(owner))
    }

    pub async fn unacked_erasures(&self, owner: &str) -> Result<Vec<Uuid>> {
        dispatch!(self, unacked_erasures(owner))
    }

    pub async fn mark_erasures_acked(&self, ids: &[Uuid]) -> Result<()> {
        dispatch!(self, mark_erasures_acked(ids))
    }

    pub async fn replica_info(&self, id: Uuid) -> Result<Option<(String, String, Vec<String>)>> {
        dispatch!(self, replica_info(id))
    }

    /// Live records whose account, contact or related record is one of `ids`.
    pub async fn dependents_of(&self, ids: &[String]) -> Result<Vec<Record>> {
        dispatch!(self, dependents_of(ids))
    }

    /// A record by id, tombstones included.
    pub async fn get(&self, id: Uuid) -> Result<Option<Record>> {
        let Some(cache) = &self.cache else {
            return dispatch!(self, get(id));
        };
        if let Some(r) = cache.get(&id) {
            return Ok(Some(r));
        }
        let generation = cache.generation();
        let found = dispatch!(self, get(id))?;
        if let Some(r) = &found {
            cache.fill(r, generation);
        }
        Ok(found)
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

    /// Registers a partner; ALREADY_EXISTS if its organization is registered.
    pub async fn add_partner(&self, p: &Partner) -> Result<()> {
        dispatch!(self, add_partner(p))
    }

    pub async fn list_partners(&self) -> Result<Vec<Partner>> {
        dispatch!(self, list_partners())
    }

    pub async fn remove_partner(&self, org: &str) -> Result<()> {
        dispatch!(self, remove_partner(org))
    }

    /// Replaces a partner's pinned CA(s), fingerprint(s) and revocation list in one statement.
    pub async fn set_partner_anchor(&self, p: &Partner) -> Result<()> {
        dispatch!(self, set_partner_anchor(p))
    }

    /// Stores (or clears) a partner's revocation list.
    pub async fn set_partner_crl(&self, org: &str, crl_pem: Option<&str>) -> Result<()> {
        dispatch!(self, set_partner_crl(org, crl_pem))
    }

    /// Notes that a partner's node or user was just seen.
    pub async fn touch_partner(&self, org: &str, at_ms: i64) -> Result<()> {
        dispatch!(self, touch_partner(org, at_ms))
    }

    pub async fn close(&self) {
        match &self.backend {
            Backend::Sqlite(p) => p.close().await,
            Backend::Postgres(p) => p.close().await,
        }
        if let Some(holder) = &self._pg_lock {
            let mut conn = holder.lock().await;
            let _ = sqlx::query("SELECT pg_advisory_unlock_all()")
                .execute(&mut *conn)
                .await;
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
