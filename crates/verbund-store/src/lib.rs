//! Persistence of a Verbund node with sqlx: embedded SQLite (default) or PostgreSQL.
//!
//! Both backends share one schema shape and the same SQL text (`$n` placeholders work on both);
//! the code is written once in the `backend!` macro and instantiated per database, because a
//! fully generic `Repo<DB>` needs unwieldy trait bounds. All SQL lives in this crate and uses
//! bound parameters only.
//!
//! Invariants kept here:
//! - every write runs in one transaction of the one writer task (SQLite: on the writer's own
//!   connection, the only one that writes, `BEGIN IMMEDIATE` or a deferred BEGIN made while
//!   the writer waited, with the counter kept by the writer; PostgreSQL: the row lock on
//!   `node_state.last_seq`, taken first), so change sequence numbers commit in order and
//!   without gaps — a reader resuming "after seq N" never misses a change;
//! - the record row and its change-log row are written in the same transaction;
//! - references are resolved inside that transaction, so a concurrent delete cannot orphan them;
//! - nothing is written when validation fails (the plan is computed before any statement that
//!   modifies data, and an error rolls the transaction back).

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, watch};

pub mod backup;
mod cache;
use cache::RecordCache;
mod recent;
use recent::{CommittedChanges, RecentChanges};
mod rule_cache;
use rule_cache::RuleCache;
mod rows;
use rows::*;
mod sync_types;
pub use sync_types::*;
mod sum_deltas;
mod sync_notes;
use sum_deltas::{DeliverySumDeltas, ReplicaSumDeltas};
pub use sync_notes::{
    BucketSum, CopyState, DeliveryNote, DeliveryState, OutboxState, PeerAck, ReplicaInfo,
    StreamPosition, SyncNote,
};

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{PgPool, SqlitePool};
use uuid::Uuid;
use verbund_core::access::{RuleMatch, Share, ShareRule};
use verbund_core::audit::{self, AuditDraft, AuditEntry};
pub use verbund_core::write::FilterColumns;
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
    /// The store was closed (the node is shutting down): nothing was read or written.
    #[error("the store is closed (the node is shutting down)")]
    Closed,
    #[error("{0} exists already")]
    AlreadyExists(String),
    #[error("{0} not found")]
    NotFound(String),
}

impl From<sqlx::Error> for StoreError {
    fn from(e: sqlx::Error) -> Self {
        if matches!(e, sqlx::Error::PoolClosed) {
            return StoreError::Closed;
        }
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
    pub status: PartnerStatus,
    pub added_at_ms: i64,
    pub last_contact_ms: Option<i64>,
    /// The partner's revocation list (PEM), if one was loaded.
    pub crl_pem: Option<String>,
}

/// Where a partner stands in the registry (`partners.status`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PartnerStatus {
    /// Registered: its CA is trusted and its link runs.
    Active,
}

impl PartnerStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            PartnerStatus::Active => "active",
        }
    }

    pub fn parse(s: &str) -> Option<PartnerStatus> {
        match s {
            "active" => Some(PartnerStatus::Active),
            _ => None,
        }
    }
}

/// Reads of records, with one SQL for every reader: `Store` (a connection of the pool; on
/// SQLite the record cache first) and the writer inside its transaction, which sees what the
/// batch has written so far. Writes have no such trait: they are functions of the writer's
/// transaction (`backend/writer.rs` and the other `*_writes` parts), so what only the writer
/// does shows in the types.
pub trait RecordReads {
    /// The record `id` (a tombstone too), if it is stored.
    fn record(&mut self, id: Uuid) -> impl Future<Output = Result<Option<Record>>> + Send;
    /// The stored records among `ids` (tombstones too), in no particular order; unknown ids
    /// are skipped.
    fn records(&mut self, ids: &[Uuid]) -> impl Future<Output = Result<Vec<Record>>> + Send;
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
    /// Sync bookkeeping (ledger, acknowledgements, link errors).
    Sync(SyncNote),
    /// A write of the node's own tables that touches no record, no change log and no
    /// sequence number (its organization, a secret, the partner registry, steward
    /// decisions, a conflict's resolution): through the writer like every write, so that on
    /// SQLite only the writer's connection ever writes (see `with_backend`).
    Admin(AdminWrite),
    /// Clock recovery: every version beyond `limit_ms` (stamped while our clock ran ahead)
    /// in our pending outbox edits and our own records gets a fresh one from `stamp`.
    Restamp {
        limit_ms: u64,
        now_ms: i64,
        stamp: RestampFn,
        report: Arc<std::sync::Mutex<RestampReport>>,
    },
}

/// What a `WriteOp::Admin` writes.
pub enum AdminWrite {
    /// The organization the database belongs to, unless one is set already.
    Owner(String),
    /// Secret `name`, unless it is set already.
    Secret {
        name: String,
        fresh: String,
    },
    AddPartner(Partner),
    RemovePartner(String),
    PartnerAnchor(Partner),
    PartnerCrl {
        org: String,
        crl_pem: Option<String>,
    },
    StewardDecision(StewardDecisionRow),
    /// Fails with `Absent` if the conflict is not there or resolved already.
    ConflictResolved {
        id: Uuid,
        by: String,
        resolution: String,
        at_ms: i64,
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
    /// The changes (by seq) that brought another owner's record here for the first time
    /// (see migration 0026): our sync streams pass them by unread.
    first_foreign: Vec<i64>,
    /// The changes (by seq) of another owner's records that no record here referred to
    /// when they were written (looked up only for small batches on SQLite): the kept
    /// changes (`recent.rs`) let our sync streams pass them by without reading the log.
    unrelated_foreign: Vec<i64>,
    /// Records whose earlier change-log rows had their field names blanked.
    blanked: Vec<Uuid>,
}

impl OpOutput {
    fn one(plan: WritePlan) -> OpOutput {
        OpOutput {
            reply: Some(plan.record.clone()),
            written: vec![plan.record],
            changes: vec![plan.change],
            denied: None,
            first_foreign: Vec::new(),
            unrelated_foreign: Vec::new(),
            blanked: Vec::new(),
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

/// A window of the change log as the sync stream of one organization reads it.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct StreamChanges {
    /// The changes that may bear on what the organization shares, in order.
    pub changes: Vec<Change>,
    /// The ids among them of records another organization owns (our replicas of theirs).
    pub foreign: BTreeSet<Uuid>,
    /// How far the log was looked through: every change up to here is in `changes` or
    /// bears on nothing the organization shares.
    pub scanned_to: i64,
    /// The last change committed (and published) when the window was read: the stream has
    /// more to read while `scanned_to` is below it.
    pub last: i64,
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

/// Changes one read of the sync stream looks through at most: bounds a read that passes by
/// many changes bearing on nothing of the organization's (a partner's apply of its owner's
/// snapshot writes one per record).
const STREAM_WINDOW: i64 = 20_000;

/// How many queued writes one transaction commits at most.
const MAX_BATCH: usize = 256;

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// Filters of a List call. `after_id` is the keyset cursor: results are ordered by id
/// (UUIDv7, so creation order) and start after it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ListQuery {
    pub kind: Option<RecordKind>,
    pub filter: FilterColumns,
    pub updated_since_ms: Option<i64>,
    pub show_deleted: bool,
    pub after_id: Option<String>,
    pub limit: i64,
}

/// Indexed reference columns that sharing follows.
#[derive(Clone, Copy, Debug)]
enum RefColumn {
    AccountId,
    RelatedId,
    AssignedOrg,
}

impl RefColumn {
    fn sql(self) -> &'static str {
        match self {
            RefColumn::AccountId => "account_id",
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

/// The right to run one partner's sync link in this process (see `Store::try_link_lease`).
pub struct LinkLease {
    conn: Option<tokio::sync::Mutex<sqlx::PgConnection>>,
}

impl LinkLease {
    /// Whether the lease still holds: its connection answers (a lost connection has lost the
    /// lock, and another process may take the link).
    pub async fn alive(&self) -> bool {
        match &self.conn {
            None => true,
            Some(conn) => {
                let mut conn = conn.lock().await;
                sqlx::query("SELECT 1").execute(&mut *conn).await.is_ok()
            }
        }
    }
}

/// A data steward's decision about two records of the consolidated view.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StewardVerdict {
    Link,
    Unlink,
}

impl StewardVerdict {
    pub fn as_str(self) -> &'static str {
        match self {
            StewardVerdict::Link => "link",
            StewardVerdict::Unlink => "unlink",
        }
    }

    pub fn parse(s: &str) -> Option<StewardVerdict> {
        match s {
            "link" => Some(StewardVerdict::Link),
            "unlink" => Some(StewardVerdict::Unlink),
            _ => None,
        }
    }
}

/// A stored steward decision: `record_a` is the smaller id.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StewardDecisionRow {
    pub kind: RecordKind,
    pub record_a: Uuid,
    pub record_b: Uuid,
    pub decision: StewardVerdict,
    pub decided_by: String,
    pub decided_at_ms: i64,
}

/// Generates the store functions for one sqlx database type. The SQL is identical for both.
#[macro_use]
mod backend;

macro_rules! backend {
    ($module:ident, $db:ty, $pool:ty, $begin:expr, $savepoints:expr, $multi_statement:expr) => {
        mod $module {
            use super::*;
            use sqlx::{QueryBuilder, Row};

            type Tx = sqlx::Transaction<'static, $db>;

            /// Whether one query may hold several statements (see `Writes`).
            const MULTI_STATEMENT: bool = $multi_statement;

            backend_writer!($db, $pool, $begin, $savepoints);
            backend_admin_writes!($db, $pool, $begin, $savepoints);
            backend_sharing_writes!($db, $pool, $begin, $savepoints);
            backend_bucket_sums!($db, $pool, $begin, $savepoints);
            backend_sync_owner_writes!($db, $pool, $begin, $savepoints);
            backend_sync_replica_writes!($db, $pool, $begin, $savepoints);
            backend_sync_replica_batch!($db, $pool, $begin, $savepoints);
            backend_sharing_reads!($db, $pool, $begin, $savepoints);
            backend_sync_reads!($db, $pool, $begin, $savepoints);
            backend_reads!($db, $pool, $begin, $savepoints);
            backend_consolidation!($db, $pool, $begin, $savepoints);
        }
    };
}

backend!(
    sqlite_impl,
    sqlx::Sqlite,
    SqlitePool,
    "BEGIN IMMEDIATE",
    false,
    true
);
backend!(pg_impl, sqlx::Postgres, PgPool, "BEGIN", true, false);

/// `RecordReads` of a connection of either database (see `backend/reads.rs`).
macro_rules! record_reads {
    ($conn:ty, $module:ident) => {
        impl RecordReads for $conn {
            async fn record(&mut self, id: Uuid) -> Result<Option<Record>> {
                $module::record_on(self, id).await
            }

            async fn records(&mut self, ids: &[Uuid]) -> Result<Vec<Record>> {
                $module::records_on(self, ids).await
            }
        }
    };
}

record_reads!(sqlx::SqliteConnection, sqlite_impl);
record_reads!(sqlx::PgConnection, pg_impl);

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
    /// SQLite: the writer's own connection (see `with_backend`), closed with the store.
    writer_pool: Option<SqlitePool>,
    writes: mpsc::Sender<WriteJob>,
    /// The latest committed change sequence, published by the writer after each commit.
    commits: Arc<watch::Sender<i64>>,
    /// SQLite: an exclusive lock on `<db>.lock` held while the store is open (one writer process).
    _lock: Option<Arc<std::fs::File>>,
    /// PostgreSQL: the connection holding this process's advisory lock.
    _pg_lock: Option<Arc<tokio::sync::Mutex<sqlx::PgConnection>>>,
    /// PostgreSQL shared by several processes of the node: how to open a link lease.
    shared_pg: Option<Arc<PgConnectOptions>>,
    /// Only for SQLite, where this process is the only writer (see `cache`).
    cache: Option<Arc<RecordCache>>,
    /// Only for SQLite: the newest changes, kept by the writer (see `recent`).
    recent: Option<Arc<RecentChanges>>,
    /// Only for SQLite: the share rules as last read (see `rule_cache`).
    rules: Option<Arc<RuleCache>>,
    /// Called by the writer after every batch (metrics).
    batch_hook: ops::BatchHook,
}

/// What the writer task keeps in memory besides the database. Only the embedded SQLite
/// backend keeps anything (this process alone writes the file); PostgreSQL may be shared by
/// several processes of a node, so every batch reads everything from the database there.
#[derive(Default)]
struct WriterMemory {
    cache: Option<Arc<RecordCache>>,
    recent: Option<Arc<RecentChanges>>,
    rules: Option<Arc<RuleCache>>,
    /// The writer's copy of the sequence counter (SQLite): the last change committed. None
    /// at start, after a failed batch and on PostgreSQL: the batch reads (and locks) the
    /// counter in the database first. Saves that statement, a hand-off to SQLite's thread,
    /// in every write transaction.
    last_seq: Option<i64>,
    /// The head of the audit chain (seq, hash) as the writer last moved it; like
    /// `last_seq`, read from the database when None.
    audit_head: Option<(i64, String)>,
    /// SQLite: this process alone writes, so `last_seq` and `audit_head` are kept.
    keeps_seq: bool,
}

/// Bytes of records kept in memory by the SQLite backend (estimated; see `cache`): hot
/// records stay, and memory does not grow with the number of records stored.
const CACHE_BUDGET: usize = 32 << 20;

macro_rules! dispatch {
    ($self:ident, $f:ident ( $($arg:expr),* )) => {
        match &$self.backend {
            Backend::Sqlite(p) => sqlite_impl::$f(p $(, $arg)*).await,
            Backend::Postgres(p) => pg_impl::$f(p $(, $arg)*).await,
        }
    };
}

mod ops;
mod store;
mod store_open;
mod store_sync;

pub use ops::{BatchReport, OpsCounts, PoolUse};

/// Convenience for tests and tools: the text value of a field.
pub fn text_field<'a>(fields: &'a FieldMap, name: &str) -> Option<&'a str> {
    fields.get(name).and_then(Value::as_text)
}

/// Call once at the start of a process that opens SQLite stores, before any thread uses
/// SQLite: switches off SQLite's memory statistics (on by default), which take a
/// process-wide mutex around every allocation SQLite makes; nothing reads them here.
pub fn sqlite_process_setup() {
    // SAFETY: sqlite3_config must not run while another thread uses SQLite; the caller calls
    // this first thing in `main`, before any thread is started. MEMSTATUS takes one int.
    // Called after SQLite was initialized it returns SQLITE_MISUSE and changes nothing.
    unsafe {
        libsqlite3_sys::sqlite3_config(
            libsqlite3_sys::SQLITE_CONFIG_MEMSTATUS,
            0 as std::ffi::c_int,
        );
    }
}
