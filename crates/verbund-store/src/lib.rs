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
macro_rules! backend {
    ($module:ident, $db:ty, $pool:ty, $begin:expr, $savepoints:expr) => {
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

            /// Locks the node's sequence counter for this transaction and reads it. Every write
            /// transaction does this first, which serializes writers across processes (the row
            /// lock on PostgreSQL; SQLite's write lock), so sequence numbers commit in order.
            async fn lock_seq(tx: &mut Tx) -> Result<i64> {
                Ok(sqlx::query_scalar("UPDATE node_state SET last_seq = last_seq WHERE id = 1 RETURNING last_seq")
                    .fetch_one(&mut **tx)
                    .await?)
            }

            /// Appends the batch's change-log rows (multi-row inserts) and stores the new counter.
            async fn append_changes(tx: &mut Tx, changes: &[Change]) -> Result<()> {
                for chunk in changes.chunks(500) {
                    let mut qb: QueryBuilder<$db> = QueryBuilder::new("INSERT INTO changes (seq, record_id, kind, op, hlc, fields, at_ms) ");
                    let mut rows = Vec::with_capacity(chunk.len());
                    for c in chunk {
                        rows.push((c, fields_to_json(&c.fields)?));
                    }
                    qb.push_values(rows, |mut b, (c, fields)| {
                        b.push_bind(c.seq)
                            .push_bind(c.record_id.to_string())
                            .push_bind(c.kind.as_str())
                            .push_bind(c.op.as_str())
                            .push_bind(c.hlc.to_string())
                            .push_bind(fields)
                            .push_bind(c.at_ms);
                    });
                    qb.build().execute(&mut **tx).await?;
                }
                if let Some(last) = changes.last() {
                    sqlx::query("UPDATE node_state SET last_seq = $1 WHERE id = 1").bind(last.seq).execute(&mut **tx).await?;
                }
                Ok(())
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

            /// Writes the record row: one statement, so on SQLite a failure leaves nothing behind.
            async fn write_record(tx: &mut Tx, plan: &mut WritePlan, seq: i64, insert: bool, activity_account: Option<Option<String>>) -> Result<()> {
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
                Ok(())
            }

            async fn create(tx: &mut Tx, mut plan: WritePlan, seq: i64) -> Result<WritePlan> {
                let activity_account = resolve_refs(tx, &plan).await?;
                match write_record(tx, &mut plan, seq, true, activity_account).await {
                    Err(StoreError::Database(e)) if e.as_database_error().is_some_and(|d| d.is_unique_violation()) => {
                        Err(DomainError::invalid("id", format!("a record with id {} exists already", plan.record.id)).into())
                    }
                    other => other.map(|()| plan),
                }
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

            /// Ok(None): the plan changed nothing; the caller gets `current` back unchanged.
            async fn modify(tx: &mut Tx, kind: RecordKind, id: Uuid, is_delete: bool, plan_fn: PlanFn, seq: i64) -> Result<(Record, Option<WritePlan>)> {
                let current = load(tx, kind, id).await?;
                let Some(mut plan) = plan_fn(&current)? else {
                    return Ok((current, None));
                };
                if is_delete {
                    let n = dependents(tx, id).await?;
                    if n > 0 {
                        return Err(DomainError::precondition(
                            "id",
                            format!("{kind} {id} still has {n} live related record(s) (contacts, opportunities, cases or activities); delete or move them first"),
                        )
                        .into());
                    }
                }
                let activity_account = resolve_refs(tx, &plan).await?;
                write_record(tx, &mut plan, seq, false, activity_account).await?;
                if kind != RecordKind::Activity && kind != RecordKind::Account && plan.change.fields.contains_key("account_id") {
                    // Activities roll up to the account of the record they belong to: follow a move.
                    sqlx::query("UPDATE records SET account_id = $1 WHERE related_id = $2 AND kind = 'activity'")
                        .bind(plan.record.fields.get("account_id").and_then(Value::as_text).map(str::to_string))
                        .bind(id.to_string())
                        .execute(&mut **tx)
                        .await?;
                }
                Ok((current, Some(plan)))
            }

            /// Runs one write; every change it makes takes the next sequence number after `seq`
            /// (which it advances).
            async fn run_op(tx: &mut Tx, op: WriteOp, seq: &mut i64) -> Result<OpOutput> {
                match op {
                    WriteOp::Create(plan_fn) => {
                        let plan = create(tx, plan_fn()?, *seq + 1).await?;
                        *seq += 1;
                        Ok(OpOutput::one(plan))
                    }
                    WriteOp::Modify { kind, id, is_delete, plan_fn } => match modify(tx, kind, id, is_delete, plan_fn, *seq + 1).await? {
                        (_, Some(plan)) => {
                            *seq += 1;
                            Ok(OpOutput::one(plan))
                        }
                        (current, None) => Ok(OpOutput::unchanged(current)),
                    },
                    WriteOp::AuditOnly => Ok(OpOutput::default()),
                    WriteOp::Share(op, hlc) => share_op(tx, op, hlc, seq).await,
                    WriteOp::Merge { org, key, kind, id, plan_fn } => merge_op(tx, &org, &key, kind, id, plan_fn, seq).await,
                    WriteOp::ReplicaBatch(batch) => replica_batch(tx, batch, seq).await,
                    WriteOp::ReplicaEdit { kind, id, key, plan_fn } => replica_edit(tx, kind, id, &key, plan_fn, seq).await,
                    WriteOp::Verdict(v) => apply_verdict(tx, v, seq).await,
                    WriteOp::Erase { kind, id, by, plan_fn } => erase_op(tx, kind, id, &by, plan_fn, seq).await,
                    WriteOp::Restamp { limit_ms, now_ms, mut stamp, report } => restamp(tx, limit_ms, now_ms, &mut stamp, &report, seq).await,
                }
            }

            /// Group commit: all jobs in one transaction and one commit (one fsync). A job that
            /// fails a domain rule fails alone: on SQLite its single failed statement wrote
            /// nothing; on PostgreSQL, where an error aborts the transaction, each job runs in a
            /// savepoint. Any database error fails the whole batch (nothing is committed).
            /// Replies go out only after the commit.
            pub async fn write_batch(pool: &$pool, jobs: Vec<WriteJob>, cache: Option<&RecordCache>, commits: &watch::Sender<i64>) {
                let mut ops = Vec::with_capacity(jobs.len());
                let mut replies = Vec::with_capacity(jobs.len());
                for j in jobs {
                    ops.push((j.op, j.audit));
                    replies.push(j.reply);
                }
                let outcome: Result<(Vec<Result<Option<Record>>>, Vec<Record>, i64)> = async {
                    let mut tx = pool.begin_with($begin).await?;
                    let mut seq = lock_seq(&mut tx).await?;
                    let mut results = Vec::with_capacity(ops.len());
                    let mut changes = Vec::new();
                    let mut written = Vec::new();
                    let mut audit_drafts = Vec::new();
                    for (op, mut drafts) in ops {
                        if $savepoints {
                            sqlx::query("SAVEPOINT verbund_write").execute(&mut *tx).await?;
                        }
                        let before = seq;
                        let outcome = run_op(&mut tx, op, &mut seq).await;
                        match &outcome {
                            Ok(out) => {
                                for d in drafts.iter_mut().filter(|d| d.record_id.is_none()) {
                                    d.record_id = out.reply.as_ref().map(|r| r.id.to_string());
                                }
                                if let Some(reason) = &out.denied {
                                    for d in &mut drafts {
                                        d.decision = "deny".into();
                                        d.reason = reason.clone();
                                    }
                                }
                            }
                            Err(StoreError::Domain(_)) => {
                                for d in &mut drafts {
                                    d.decision = "failed".into();
                                }
                            }
                            Err(_) => {}
                        }
                        audit_drafts.append(&mut drafts);
                        match outcome {
                            Ok(out) => {
                                changes.extend(out.changes);
                                written.extend(out.written);
                                if $savepoints {
                                    sqlx::query("RELEASE SAVEPOINT verbund_write").execute(&mut *tx).await?;
                                }
                                results.push(Ok(out.reply));
                            }
                            Err(StoreError::Domain(e)) => {
                                seq = before;
                                if $savepoints {
                                    sqlx::query("ROLLBACK TO SAVEPOINT verbund_write").execute(&mut *tx).await?;
                                    sqlx::query("RELEASE SAVEPOINT verbund_write").execute(&mut *tx).await?;
                                }
                                results.push(Err(StoreError::Domain(e)));
                            }
                            Err(e) => return Err(e),
                        }
                    }
                    append_changes(&mut tx, &changes).await?;
                    append_audit(&mut tx, audit_drafts).await?;
                    if let Err(e) = tx.commit().await {
                        return Err(StoreError::OutcomeUnknown(e.to_string()));
                    }
                    Ok((results, written, seq))
                }
                .await;
                match outcome {
                    Ok((results, written, last_seq)) => {
                        if let Some(cache) = cache {
                            cache.committed(written.iter());
                        }
                        // Wake change streams whether or not the writers' callers still wait.
                        commits.send_if_modified(|seq| {
                            let newer = last_seq > *seq;
                            if newer {
                                *seq = last_seq;
                            }
                            newer
                        });
                        for (reply, result) in replies.into_iter().zip(results) {
                            let _ = reply.send(result);
                        }
                    }
                    Err(StoreError::OutcomeUnknown(msg)) => {
                        tracing::error!(error = %msg, "commit of a write batch failed; its outcome is unknown");
                        for reply in replies {
                            let _ = reply.send(Err(StoreError::OutcomeUnknown(msg.clone())));
                        }
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "write batch failed; nothing of it was committed");
                        let msg = e.to_string();
                        for reply in replies {
                            let _ = reply.send(Err(StoreError::CommitFailed(msg.clone())));
                        }
                    }
                }
            }

            /// Chains the batch's audit drafts after the recorded head and moves the head.
            async fn append_audit(tx: &mut Tx, drafts: Vec<AuditDraft>) -> Result<()> {
                if drafts.is_empty() {
                    return Ok(());
                }
                let row = sqlx::query("SELECT seq, hash FROM audit_head WHERE id = 1").fetch_one(&mut **tx).await?;
                let (head_seq, head_hash): (i64, String) = (row.try_get("seq")?, row.try_get("hash")?);
                let entries = audit::chain(head_seq, &head_hash, drafts);
                for chunk in entries.chunks(400) {
                    let mut rows = Vec::with_capacity(chunk.len());
                    for e in chunk {
                        rows.push((e, fields_to_json(&e.draft.fields)?));
                    }
                    let mut qb: QueryBuilder<$db> = QueryBuilder::new(
                        "INSERT INTO audit_log (seq, at_ms, principal, org, action, kind, record_id, fields, decision, reason, prev_hash, hash) ",
                    );
                    qb.push_values(rows, |mut b, (e, fields)| {
                        b.push_bind(e.seq)
                            .push_bind(e.draft.at_ms)
                            .push_bind(e.draft.principal.clone())
                            .push_bind(e.draft.org.clone())
                            .push_bind(e.draft.action.clone())
                            .push_bind(e.draft.kind.clone())
                            .push_bind(e.draft.record_id.clone())
                            .push_bind(fields)
                            .push_bind(e.draft.decision.clone())
                            .push_bind(e.draft.reason.clone())
                            .push_bind(e.prev_hash.clone())
                            .push_bind(e.hash.clone());
                    });
                    qb.build().execute(&mut **tx).await?;
                }
                if let Some(last) = entries.last() {
                    sqlx::query("UPDATE audit_head SET seq = $1, hash = $2 WHERE id = 1")
                        .bind(last.seq)
                        .bind(&last.hash)
                        .execute(&mut **tx)
                        .await?;
                }
                Ok(())
            }

            /// `access` change-log rows for records whose reach changed: sync streams look at
            /// them again for every partner.
            fn access_changes(ids: Vec<(String, String)>, hlc: &Hlc, seq: &mut i64) -> Result<Vec<Change>> {
                let at_ms = hlc.physical_ms as i64;
                ids.into_iter()
                    .map(|(id, kind)| {
                        *seq += 1;
                        Ok(Change {
                            seq: *seq,
                            record_id: Uuid::parse_str(&id).map_err(|e| StoreError::Corrupt(e.to_string()))?,
                            kind: kind_from_db(&kind)?,
                            op: ChangeOp::Access,
                            hlc: hlc.clone(),
                            fields: BTreeMap::new(),
                            at_ms,
                        })
                    })
                    .collect()
            }

            /// Live records a share rule may match (a superset; streams check the rule).
            async fn rule_candidates(tx: &mut Tx, org: &str, rule: &RuleMatch) -> Result<Vec<(String, String)>> {
                let rows = match rule {
                    RuleMatch::CaseAssigned => {
                        sqlx::query("SELECT id, kind FROM records WHERE kind = 'service_case' AND assigned_org = $1 AND deleted_version IS NULL ORDER BY id")
                            .bind(org)
                            .fetch_all(&mut **tx)
                            .await?
                    }
                    RuleMatch::AccountTag(tag) => {
                        sqlx::query("SELECT id, kind FROM records WHERE kind = 'account' AND deleted_version IS NULL AND fields LIKE $1 ESCAPE '\\' ORDER BY id")
                            .bind(like_pattern(&format!("\"{tag}\"")))
                            .fetch_all(&mut **tx)
                            .await?
                    }
                };
                rows.iter().map(|r| Ok((r.try_get("id")?, r.try_get("kind")?))).collect()
            }

            async fn share_op(tx: &mut Tx, op: ShareOp, hlc: Hlc, seq: &mut i64) -> Result<OpOutput> {
                let touched: Vec<(String, String)> = match &op {
                    ShareOp::Add(share) => vec![(share.record_id.to_string(), share.kind.as_str().to_string())],
                    ShareOp::Revoke { record_id, .. } => {
                        let kind: Option<String> = sqlx::query_scalar("SELECT kind FROM records WHERE id = $1")
                            .bind(record_id.to_string())
                            .fetch_optional(&mut **tx)
                            .await?;
                        kind.map(|k| vec![(record_id.to_string(), k)]).unwrap_or_default()
                    }
                    ShareOp::AddRule(rule) => rule_candidates(tx, &rule.org, &rule.rule).await?,
                    ShareOp::RemoveRule(id) => {
                        let row = sqlx::query("SELECT org, rule FROM share_rules WHERE id = $1")
                            .bind(id.to_string())
                            .fetch_optional(&mut **tx)
                            .await?;
                        match row {
                            Some(row) => {
                                let (org, rule): (String, String) = (row.try_get("org")?, row.try_get("rule")?);
                                match RuleMatch::parse(&rule) {
                                    Some(rule) => rule_candidates(tx, &org, &rule).await?,
                                    None => Vec::new(),
                                }
                            }
                            None => Vec::new(),
                        }
                    }
                };
                share_tables(tx, op).await?;
                Ok(OpOutput {
                    changes: access_changes(touched, &hlc, seq)?,
                    ..OpOutput::default()
                })
            }

            async fn share_tables(tx: &mut Tx, op: ShareOp) -> Result<()> {
                match op {
                    ShareOp::Add(share) => {
                        let kind: Option<String> = sqlx::query_scalar("SELECT kind FROM records WHERE id = $1 AND deleted_version IS NULL")
                            .bind(share.record_id.to_string())
                            .fetch_optional(&mut **tx)
                            .await?;
                        if kind.as_deref() != Some(share.kind.as_str()) {
                            return Err(DomainError::NotFound { kind: share.kind, id: share.record_id.to_string() }.into());
                        }
                        let exists: Option<String> = sqlx::query_scalar("SELECT profile FROM shares WHERE record_id = $1 AND org = $2")
                            .bind(share.record_id.to_string())
                            .bind(&share.org)
                            .fetch_optional(&mut **tx)
                            .await?;
                        if let Some(profile) = exists {
                            return Err(DomainError::AlreadyExists(format!(
                                "a share of {} {} with {} (profile {profile}; revoke it to change the profile)",
                                share.kind, share.record_id, share.org
                            ))
                            .into());
                        }
                        sqlx::query("INSERT INTO shares (id, record_id, kind, org, profile, created_at_ms, created_by) VALUES ($1, $2, $3, $4, $5, $6, $7)")
                            .bind(share.id.to_string())
                            .bind(share.record_id.to_string())
                            .bind(share.kind.as_str())
                            .bind(&share.org)
                            .bind(&share.profile)
                            .bind(share.created_at_ms)
                            .bind(&share.created_by)
                            .execute(&mut **tx)
                            .await?;
                    }
                    ShareOp::Revoke { record_id, org } => {
                        let r = sqlx::query("DELETE FROM shares WHERE record_id = $1 AND org = $2")
                            .bind(record_id.to_string())
                            .bind(&org)
                            .execute(&mut **tx)
                            .await?;
                        if r.rows_affected() == 0 {
                            return Err(DomainError::Absent(format!("a share of record {record_id} with {org}")).into());
                        }
                    }
                    ShareOp::AddRule(rule) => {
                        let exists: Option<String> = sqlx::query_scalar("SELECT id FROM share_rules WHERE org = $1 AND rule = $2")
                            .bind(&rule.org)
                            .bind(rule.rule.describe())
                            .fetch_optional(&mut **tx)
                            .await?;
                        if let Some(id) = exists {
                            return Err(DomainError::AlreadyExists(format!("share rule {id} ({} with {})", rule.rule.describe(), rule.org)).into());
                        }
                        sqlx::query("INSERT INTO share_rules (id, org, rule, profile, created_at_ms, created_by) VALUES ($1, $2, $3, $4, $5, $6)")
                            .bind(rule.id.to_string())
                            .bind(&rule.org)
                            .bind(rule.rule.describe())
                            .bind(&rule.profile)
                            .bind(rule.created_at_ms)
                            .bind(&rule.created_by)
                            .execute(&mut **tx)
                            .await?;
                    }
                    ShareOp::RemoveRule(id) => {
                        let r = sqlx::query("DELETE FROM share_rules WHERE id = $1").bind(id.to_string()).execute(&mut **tx).await?;
                        if r.rows_affected() == 0 {
                            return Err(DomainError::Absent(format!("share rule {id}")).into());
                        }
                    }
                }
                Ok(())
            }

            // ---- Federation sync: owner side ----

            async fn stored_verdict(tx: &mut Tx, org: &str, key: &str) -> Result<Option<StoredVerdict>> {
                let row = sqlx::query("SELECT record_id, outcome, reason FROM push_receipts WHERE org = $1 AND push_key = $2")
                    .bind(org)
                    .bind(key)
                    .fetch_optional(&mut **tx)
                    .await?;
                row.map(|r| verdict_row(&r)).transpose()
            }

            fn verdict_row(r: &<$db as sqlx::Database>::Row) -> Result<StoredVerdict> {
                let id: String = r.try_get("record_id")?;
                let outcome: String = r.try_get("outcome")?;
                Ok(StoredVerdict {
                    record_id: Uuid::parse_str(&id).map_err(|e| StoreError::Corrupt(e.to_string()))?,
                    outcome: VerdictOutcome::parse(&outcome).ok_or_else(|| StoreError::Corrupt(format!("verdict {outcome:?}")))?,
                    reason: r.try_get("reason")?,
                })
            }

            fn value_json(v: &Option<Value>) -> Result<Option<String>> {
                v.as_ref().map(fields_to_json).transpose()
            }

            async fn merge_op(tx: &mut Tx, org: &str, key: &str, kind: RecordKind, id: Uuid, plan_fn: MergeFn, seq: &mut i64) -> Result<OpOutput> {
                if stored_verdict(tx, org, key).await?.is_some() {
                    // Decided before: the caller reads the stored verdict; nothing is applied twice.
                    return Ok(OpOutput::unchanged(load(tx, kind, id).await?));
                }
                let current = load(tx, kind, id).await?;
                let plan = plan_fn(&current)?;
                let mut out = OpOutput::unchanged(current);
                if plan.outcome == VerdictOutcome::Rejected {
                    // Audited as a denial, naming what was refused (a field, "not shared"),
                    // never a value.
                    let what = plan.reason.split(':').next().unwrap_or_default();
                    out.denied = Some(format!("push rejected: {what}"));
                }
                if let Some(mut write) = plan.write {
                    let activity_account = resolve_refs(tx, &write).await?;
                    write_record(tx, &mut write, *seq + 1, false, activity_account).await?;
                    *seq += 1;
                    out = OpOutput::one(write);
                }
                let now = plan.at_ms;
                for c in &plan.conflicts {
                    sqlx::query(
                        "INSERT INTO conflicts (id, record_id, kind, field, winner_value, winner_version, loser_value, loser_version, created_ms) \
                         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
                    )
                    .bind(Uuid::now_v7().to_string())
                    .bind(id.to_string())
                    .bind(kind.as_str())
                    .bind(&c.field)
                    .bind(value_json(&c.winner.value)?)
                    .bind(c.winner.version.to_string())
                    .bind(value_json(&c.loser.value)?)
                    .bind(c.loser.version.to_string())
                    .bind(now)
                    .execute(&mut **tx)
                    .await?;
                }
                sqlx::query("INSERT INTO push_receipts (org, push_key, record_id, outcome, reason, at_ms) VALUES ($1, $2, $3, $4, $5, $6)")
                    .bind(org)
                    .bind(key)
                    .bind(id.to_string())
                    .bind(plan.outcome.as_str())
                    .bind(&plan.reason)
                    .bind(now)
                    .execute(&mut **tx)
                    .await?;
                Ok(out)
            }

            async fn erase_op(tx: &mut Tx, kind: RecordKind, id: Uuid, by: &str, plan_fn: PlanFn, seq: &mut i64) -> Result<OpOutput> {
                let current = load(tx, kind, id).await?;
                let Some(mut plan) = plan_fn(&current)? else {
                    return Ok(OpOutput::unchanged(current));
                };
                write_record(tx, &mut plan, *seq + 1, false, None).await?;
                *seq += 1;
                // The old values must not survive anywhere on this node: the change log and the
                // conflict records held them.
                sqlx::query("UPDATE changes SET fields = '{}' WHERE record_id = $1")
                    .bind(id.to_string())
                    .execute(&mut **tx)
                    .await?;
                sqlx::query("UPDATE conflicts SET winner_value = NULL, loser_value = NULL WHERE record_id = $1")
                    .bind(id.to_string())
                    .execute(&mut **tx)
                    .await?;
                // Every organization that ever received the record now owes an acknowledgement.
                sqlx::query("UPDATE deliveries SET state = 'erased', erasure_acked_ms = NULL WHERE record_id = $1 AND state <> 'erased'")
                    .bind(id.to_string())
                    .execute(&mut **tx)
                    .await?;
                sqlx::query("INSERT INTO erasures (record_id, kind, erased_ms, erased_by) VALUES ($1, $2, $3, $4) ON CONFLICT (record_id) DO NOTHING")
                    .bind(id.to_string())
                    .bind(kind.as_str())
                    .bind(plan.record.updated_at_ms)
                    .bind(by)
                    .execute(&mut **tx)
                    .await?;
                Ok(OpOutput::one(plan))
            }

            // ---- Federation sync: partner side ----

            struct ReplicaRow {
                owner_org: String,
                state: String,
                owner_seq: i64,
                shadow_fields: FieldMap,
                shadow_versions: verbund_core::VersionMap,
                /// Our edits the owner held before its history was reset (see `reset_owner`).
                reset_from: Option<BTreeMap<String, verbund_core::sync::FieldState>>,
            }

            async fn replica_row(tx: &mut Tx, id: Uuid) -> Result<Option<ReplicaRow>> {
                let row = sqlx::query("SELECT owner_org, state, owner_seq, shadow_fields, shadow_versions, reset_from FROM replicas WHERE record_id = $1")
                    .bind(id.to_string())
                    .fetch_optional(&mut **tx)
                    .await?;
                let Some(row) = row else { return Ok(None) };
                let fields: String = row.try_get("shadow_fields")?;
                let versions: String = row.try_get("shadow_versions")?;
                let reset_from: Option<String> = row.try_get("reset_from")?;
                let reset_from = reset_from
                    .map(|t| serde_json::from_str(&t).map_err(|e| StoreError::Corrupt(format!("reset_from of {id}: {e}"))))
                    .transpose()?;
                Ok(Some(ReplicaRow {
                    reset_from,
                    owner_org: row.try_get("owner_org")?,
                    state: row.try_get("state")?,
                    owner_seq: row.try_get("owner_seq")?,
                    shadow_fields: serde_json::from_str(&fields).map_err(|e| StoreError::Corrupt(format!("shadow of {id}: {e}")))?,
                    shadow_versions: versions_from_json(&versions)?,
                }))
            }

            #[allow(clippy::too_many_arguments)]
            async fn save_replica(tx: &mut Tx, id: Uuid, owner: &str, kind: RecordKind, state: &str, fields: &FieldMap, versions: &verbund_core::VersionMap, writable: &[String], owner_seq: i64, at_ms: i64) -> Result<()> {
                sqlx::query(
                    "INSERT INTO replicas (record_id, owner_org, kind, state, shadow_fields, shadow_versions, writable, owner_seq, updated_ms) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) \
                     ON CONFLICT (record_id) DO UPDATE SET state = excluded.state, shadow_fields = excluded.shadow_fields, \
                     shadow_versions = excluded.shadow_versions, writable = excluded.writable, owner_seq = excluded.owner_seq, updated_ms = excluded.updated_ms",
                )
                .bind(id.to_string())
                .bind(owner)
                .bind(kind.as_str())
                .bind(state)
                .bind(fields_to_json(fields)?)
                .bind(versions_to_json(versions))
                .bind(fields_to_json(&writable)?)
                .bind(owner_seq)
                .bind(at_ms)
                .execute(&mut **tx)
                .await?;
                Ok(())
            }

            async fn pending_edits(tx: &mut Tx, id: Uuid) -> Result<Vec<verbund_core::sync::FieldEdit>> {
                let rows = sqlx::query("SELECT edits FROM outbox WHERE record_id = $1 AND state = 'pending' ORDER BY seq")
                    .bind(id.to_string())
                    .fetch_all(&mut **tx)
                    .await?;
                let mut out = Vec::new();
                for r in rows {
                    let text: String = r.try_get("edits")?;
                    let edits: Vec<verbund_core::sync::FieldEdit> =
                        serde_json::from_str(&text).map_err(|e| StoreError::Corrupt(format!("outbox edits: {e}")))?;
                    out.extend(edits);
                }
                Ok(out)
            }

            /// The row for a local record with this id, if it is not a replica of `owner`
            /// (an owner must never overwrite our own records).
            async fn foreign_collision(tx: &mut Tx, id: Uuid, owner: &str) -> Result<bool> {
                let found: Option<String> = sqlx::query_scalar("SELECT owner_org FROM records WHERE id = $1")
                    .bind(id.to_string())
                    .fetch_optional(&mut **tx)
                    .await?;
                Ok(found.is_some_and(|o| o != owner))
            }

            async fn load_any(tx: &mut Tx, id: Uuid) -> Result<Option<Record>> {
                let row = sqlx::query("SELECT id, kind, owner_org, created_at_ms, updated_at_ms, deleted_version, seq, fields, versions FROM records WHERE id = $1")
                    .bind(id.to_string())
                    .fetch_optional(&mut **tx)
                    .await?;
                row.map(|r| record_row(&r)?.into_record()).transpose()
            }

            /// Writes what the replica shows (`next`) if it differs from the stored row, with a
            /// change-log row for local watchers.
            async fn show_replica(tx: &mut Tx, current: Option<Record>, mut next: Record, seq: &mut i64, out: &mut OpOutput) -> Result<()> {
                if let Some(cur) = &current {
                    if cur.fields == next.fields && cur.versions == next.versions && cur.deleted == next.deleted {
                        return Ok(());
                    }
                }
                let mut changed = BTreeMap::new();
                for name in next.versions.keys() {
                    let before = current.as_ref().and_then(|c| c.versions.get(name));
                    if before != next.versions.get(name) {
                        changed.insert(name.clone(), next.fields.get(name).cloned());
                    }
                }
                let op = match (&current, next.deleted.is_some()) {
                    (_, true) => ChangeOp::Delete,
                    (None, false) => ChangeOp::Create,
                    (Some(c), false) if c.deleted.is_some() => ChangeOp::Create,
                    _ => ChangeOp::Update,
                };
                let hlc = next
                    .versions
                    .values()
                    .max()
                    .cloned()
                    .or_else(|| next.deleted.clone())
                    .unwrap_or_else(|| Hlc::new(next.updated_at_ms.max(0) as u64, 0, next.owner_org.clone()));
                next.seq = *seq + 1;
                let mut plan = WritePlan {
                    change: Change {
                        seq: *seq + 1,
                        record_id: next.id,
                        kind: next.kind,
                        op,
                        hlc,
                        fields: if next.deleted.is_some() { BTreeMap::new() } else { changed },
                        at_ms: next.updated_at_ms,
                    },
                    record: next,
                    refs: Vec::new(),
                };
                let activity_account = if plan.record.kind == RecordKind::Activity {
                    let related = plan.record.text("related_id").map(str::to_string);
                    match related {
                        Some(r) => {
                            let row = sqlx::query("SELECT kind, account_id FROM records WHERE id = $1")
                                .bind(&r)
                                .fetch_optional(&mut **tx)
                                .await?;
                            Some(match row {
                                Some(row) => {
                                    let kind: String = row.try_get("kind")?;
                                    if kind == "account" { Some(r) } else { row.try_get("account_id")? }
                                }
                                None => None,
                            })
                        }
                        None => Some(None),
                    }
                } else {
                    None
                };
                write_record(tx, &mut plan, *seq + 1, current.is_none(), activity_account).await?;
                *seq += 1;
                out.written.push(plan.record);
                out.changes.push(plan.change);
                Ok(())
            }

            /// Takes in the owner's state of a record and shows it with our pending edits.
            /// `from_stream`: only the owner's ordered stream may bring back a revoked replica (a
            /// verdict or a repair computed before the revoke must not).
            #[allow(clippy::too_many_arguments)]
            async fn take_in(tx: &mut Tx, owner: &str, st: ReplicaState, from_stream: bool, at_ms: i64, seq: &mut i64, out: &mut OpOutput) -> Result<()> {
                if st.owner_org != owner || foreign_collision(tx, st.id, owner).await? {
                    tracing::warn!(record = %st.id, owner, "ignored a replica that would overwrite a record of another owner");
                    return Ok(());
                }
                let existing = replica_row(tx, st.id).await?;
                if existing.as_ref().is_some_and(|r| r.state.starts_with("erased")) {
                    // Erased: replaying an old batch must never bring the record back.
                    return Ok(());
                }
                if let Some(r) = &existing {
                    if r.owner_org != owner {
                        return Ok(()); // another owner's record: never touched
                    }
                    if r.state == "revoked" && !from_stream {
                        return Ok(());
                    }
                }
                if existing.as_ref().is_some_and(|r| r.state != "revoked" && st.owner_seq < r.owner_seq) {
                    // An older state than the one we hold (a batch behind a newer verdict).
                    return Ok(());
                }
                let current = load_any(tx, st.id).await?;
                let (shadow_f, shadow_v) = match (&st.deleted, &existing) {
                    (Some(_), _) => (FieldMap::new(), verbund_core::VersionMap::new()),
                    (None, Some(r)) if r.state == "live" => verbund_core::sync::take_owner_state(
                        (&r.shadow_fields, &r.shadow_versions),
                        r.owner_seq,
                        (&st.fields, &st.versions),
                        st.owner_seq,
                    )
                    .unwrap_or_else(|| (r.shadow_fields.clone(), r.shadow_versions.clone())),
                    (None, _) => (st.fields.clone(), st.versions.clone()),
                };
                let state = if st.deleted.is_some() { "deleted" } else { "live" };
                save_replica(tx, st.id, owner, st.kind, state, &shadow_f, &shadow_v, &st.writable, st.owner_seq, at_ms).await?;
                if let Some(held) = existing.and_then(|r| r.reset_from) {
                    // The owner's history was reset: what it no longer has of ours goes out again.
                    reoffer(tx, owner, st.id, st.kind, &held, Some(&st), at_ms).await?;
                }
                let pending = if st.deleted.is_some() { Vec::new() } else { pending_edits(tx, st.id).await? };
                let (fields, versions) = verbund_core::sync::overlay((&shadow_f, &shadow_v), pending.iter());
                let next = Record {
                    id: st.id,
                    kind: st.kind,
                    owner_org: owner.to_string(),
                    created_at_ms: st.created_at_ms,
                    updated_at_ms: st.updated_at_ms,
                    deleted: st.deleted.clone(),
                    seq: 0,
                    fields,
                    versions,
                };
                show_replica(tx, current, next, seq, out).await
            }

            /// Clock recovery (see `WriteOp::Restamp`). Pending edits keep their values and bases;
            /// the replicas they show on are shown again. Own records keep their values; each
            /// re-stamped record is a new change, so partners take the new versions (a newer
            /// state of the owner supersedes, `sync::take_owner_state`).
            async fn restamp(tx: &mut Tx, limit_ms: u64, now_ms: i64, stamp: &mut RestampFn, report: &Arc<std::sync::Mutex<RestampReport>>, seq: &mut i64) -> Result<OpOutput> {
                let mut out = OpOutput::default();
                let mut counts = RestampReport::default();
                let ahead = |v: &Hlc| v.physical_ms > limit_ms;
                let rows = sqlx::query("SELECT push_key, record_id, edits FROM outbox WHERE state = 'pending' ORDER BY seq")
                    .fetch_all(&mut **tx)
                    .await?;
                let mut touched: Vec<Uuid> = Vec::new();
                for row in rows {
                    let key: String = row.try_get("push_key")?;
                    let id: String = row.try_get("record_id")?;
                    let text: String = row.try_get("edits")?;
                    let mut edits: Vec<verbund_core::sync::FieldEdit> =
                        serde_json::from_str(&text).map_err(|e| StoreError::Corrupt(format!("outbox edits: {e}")))?;
                    if !edits.iter().any(|e| ahead(&e.version)) {
                        continue;
                    }
                    for e in edits.iter_mut().filter(|e| ahead(&e.version)) {
                        e.version = stamp();
                    }
                    sqlx::query("UPDATE outbox SET edits = $2 WHERE push_key = $1")
                        .bind(&key)
                        .bind(fields_to_json(&edits)?)
                        .execute(&mut **tx)
                        .await?;
                    counts.outbox_entries += 1;
                    let id = Uuid::parse_str(&id).map_err(|e| StoreError::Corrupt(e.to_string()))?;
                    if !touched.contains(&id) {
                        touched.push(id);
                    }
                }
                for id in touched {
                    if let (Some(r), Some(cur)) = (replica_row(tx, id).await?, load_any(tx, id).await?) {
                        if r.state == "live" {
                            let pending = pending_edits(tx, id).await?;
                            let (fields, versions) = verbund_core::sync::overlay((&r.shadow_fields, &r.shadow_versions), pending.iter());
                            let next = Record { fields, versions, ..cur.clone() };
                            show_replica(tx, Some(cur), next, seq, &mut out).await?;
                        }
                    }
                }
                // Own records written while the clock ran ahead carry a wall time ahead too.
                let rows = sqlx::query(
                    "SELECT id, kind, owner_org, created_at_ms, updated_at_ms, deleted_version, seq, fields, versions FROM records \
                     WHERE updated_at_ms > $1 AND deleted_version IS NULL AND id NOT IN (SELECT record_id FROM replicas)",
                )
                .bind(limit_ms.min(i64::MAX as u64) as i64)
                .fetch_all(&mut **tx)
                .await?;
                for row in rows {
                    let cur = record_row(&row)?.into_record()?;
                    let mut next = cur.clone();
                    let mut changed = BTreeMap::new();
                    for (name, version) in next.versions.iter_mut() {
                        if ahead(version) {
                            *version = stamp();
                            changed.insert(name.clone(), cur.fields.get(name).cloned());
                        }
                    }
                    if changed.is_empty() {
                        continue;
                    }
                    next.updated_at_ms = now_ms;
                    let hlc = next.versions.values().max().cloned().unwrap_or_else(&mut *stamp);
                    let mut plan = WritePlan {
                        change: Change { seq: 0, record_id: cur.id, kind: cur.kind, op: ChangeOp::Update, hlc, fields: changed, at_ms: now_ms },
                        record: next,
                        refs: Vec::new(),
                    };
                    write_record(tx, &mut plan, *seq + 1, false, None).await?;
                    *seq += 1;
                    out.written.push(plan.record);
                    out.changes.push(plan.change);
                    counts.records += 1;
                }
                *report.lock().unwrap_or_else(|p| p.into_inner()) = counts;
                Ok(out)
            }

            /// After an owner's history reset (`reset_owner`), the owner's state of a record has
            /// arrived (`now`; None: it no longer shares the record). Each of our edits it had
            /// taken before and no longer has is offered again as a new outbox entry based on
            /// the owner's version; one that cannot be (the field or the record is no longer
            /// ours to write) is listed as a rejected entry that names the record and field.
            async fn reoffer(tx: &mut Tx, owner: &str, id: Uuid, kind: RecordKind, held: &BTreeMap<String, verbund_core::sync::FieldState>, now: Option<&ReplicaState>, at_ms: i64) -> Result<()> {
                for (field, ours) in held {
                    let owner_version = now.and_then(|st| st.versions.get(field));
                    if owner_version.is_some_and(|v| *v >= ours.version) {
                        continue; // the owner has our edit, or something newer
                    }
                    let edit = verbund_core::sync::FieldEdit {
                        field: field.clone(),
                        value: ours.value.clone(),
                        version: ours.version.clone(),
                        base: owner_version.cloned(),
                    };
                    let writable = now.is_some_and(|st| st.deleted.is_none() && st.writable.iter().any(|w| w == field));
                    let (state, error) = match (now, writable) {
                        (_, true) => ("pending", None),
                        (Some(st), false) if st.deleted.is_none() => ("rejected", Some(format!("lost when {owner} went back to an earlier state (restored from a backup?): {field} is no longer writable for us"))),
                        _ => ("rejected", Some(format!("lost when {owner} went back to an earlier state (restored from a backup?): the record is no longer shared with us"))),
                    };
                    sqlx::query(
                        "INSERT INTO outbox (push_key, owner_org, record_id, kind, edits, state, attempts, last_error, created_ms) \
                         VALUES ($1, $2, $3, $4, $5, $6, 0, $7, $8)",
                    )
                    .bind(format!("reoffer-{}", Uuid::new_v4()))
                    .bind(owner)
                    .bind(id.to_string())
                    .bind(kind.as_str())
                    .bind(fields_to_json(&vec![edit])?)
                    .bind(state)
                    .bind(error)
                    .bind(at_ms)
                    .execute(&mut **tx)
                    .await?;
                    tracing::warn!(record = %id, field = %field, owner, state, "an edit the owner had taken is gone from its history (restore?)");
                }
                sqlx::query("UPDATE replicas SET reset_from = NULL WHERE record_id = $1")
                    .bind(id.to_string())
                    .execute(&mut **tx)
                    .await?;
                Ok(())
            }

            /// The owner's history changed under our cursor (it was restored from a backup):
            /// the cursor goes back to 0, every replica of the owner takes the owner's next
            /// state as it is (the held sequence numbers are no longer comparable), and our own
            /// edits the owner held are remembered until its state of the record arrives.
            async fn reset_owner(tx: &mut Tx, owner: &str, own_org: &str, at_ms: i64) -> Result<()> {
                let before: Option<i64> = sqlx::query_scalar("SELECT cursor FROM subscriptions WHERE owner_org = $1")
                    .bind(owner)
                    .fetch_optional(&mut **tx)
                    .await?;
                let note = format!(
                    "{owner}'s history no longer matched our cursor {} (restored from a backup?); at {at_ms} ms we started over from its beginning and offer again our edits it no longer has",
                    before.unwrap_or(0)
                );
                sqlx::query(
                    "INSERT INTO subscriptions (owner_org, cursor, owner_last_seq, cursor_mark, history_note) VALUES ($1, 0, 0, '', $2) \
                     ON CONFLICT (owner_org) DO UPDATE SET cursor = 0, cursor_mark = '', history_note = excluded.history_note",
                )
                .bind(owner)
                .bind(&note)
                .execute(&mut **tx)
                .await?;
                let prefix = format!("{own_org}/");
                let rows = sqlx::query("SELECT record_id, shadow_fields, shadow_versions, reset_from FROM replicas WHERE owner_org = $1 AND state = 'live'")
                    .bind(owner)
                    .fetch_all(&mut **tx)
                    .await?;
                for row in rows {
                    let id: String = row.try_get("record_id")?;
                    let fields: String = row.try_get("shadow_fields")?;
                    let versions: String = row.try_get("shadow_versions")?;
                    let earlier: Option<String> = row.try_get("reset_from")?;
                    let fields: FieldMap = serde_json::from_str(&fields).map_err(|e| StoreError::Corrupt(format!("shadow of {id}: {e}")))?;
                    let mut held: BTreeMap<String, verbund_core::sync::FieldState> = match earlier {
                        Some(t) => serde_json::from_str(&t).map_err(|e| StoreError::Corrupt(format!("reset_from of {id}: {e}")))?,
                        None => BTreeMap::new(),
                    };
                    for (name, version) in versions_from_json(&versions)? {
                        if version.node.starts_with(&prefix) && held.get(&name).is_none_or(|h| h.version < version) {
                            held.insert(name.clone(), verbund_core::sync::FieldState { value: fields.get(&name).cloned(), version });
                        }
                    }
                    let held = if held.is_empty() { None } else { Some(fields_to_json(&held)?) };
                    sqlx::query("UPDATE replicas SET owner_seq = 0, reset_from = $2 WHERE record_id = $1")
                        .bind(&id)
                        .bind(held)
                        .execute(&mut **tx)
                        .await?;
                }
                sqlx::query("UPDATE replicas SET owner_seq = 0 WHERE owner_org = $1 AND state <> 'live'")
                    .bind(owner)
                    .execute(&mut **tx)
                    .await?;
                tracing::warn!(owner, "{note}");
                Ok(())
            }

            /// Removes our copy of a record (revoked or erased): a value-free tombstone stays so
            /// the change log and local watchers stay consistent.
            async fn purge_replica(tx: &mut Tx, owner: &str, id: Uuid, erased: bool, at_ms: i64, seq: &mut i64, out: &mut OpOutput) -> Result<()> {
                if foreign_collision(tx, id, owner).await? {
                    return Ok(());
                }
                let existing = replica_row(tx, id).await?;
                if let Some(r) = &existing {
                    if r.owner_org != owner || r.state.starts_with("erased") {
                        return Ok(());
                    }
                    if r.state == "revoked" && !erased {
                        return Ok(());
                    }
                }
                let current = load_any(tx, id).await?;
                let kind = current.as_ref().map(|c| c.kind);
                let state = if erased { "erased-unacked" } else { "revoked" };
                let Some(kind) = kind else {
                    if erased {
                        // Never received: remember the erasure so a late batch cannot bring it in.
                        sqlx::query(
                            "INSERT INTO replicas (record_id, owner_org, kind, state, shadow_fields, shadow_versions, writable, owner_seq, updated_ms) \
                             VALUES ($1, $2, 'contact', $3, '{}', '{}', '[]', 0, $4) ON CONFLICT (record_id) DO UPDATE SET state = excluded.state",
                        )
                        .bind(id.to_string())
                        .bind(owner)
                        .bind(state)
                        .bind(at_ms)
                        .execute(&mut **tx)
                        .await?;
                    }
                    return Ok(());
                };
                let seq_held = existing.as_ref().map(|r| r.owner_seq).unwrap_or(0);
                save_replica(tx, id, owner, kind, state, &FieldMap::new(), &verbund_core::VersionMap::new(), &[], seq_held, at_ms).await?;
                if let Some(held) = existing.and_then(|r| r.reset_from).filter(|_| !erased) {
                    reoffer(tx, owner, id, kind, &held, None, at_ms).await?;
                }
                if erased {
                    // Our own edits of an erased person go too: they hold personal data.
                    sqlx::query("DELETE FROM outbox WHERE record_id = $1").bind(id.to_string()).execute(&mut **tx).await?;
                } else {
                    sqlx::query("UPDATE outbox SET state = 'rejected', last_error = 'the owner no longer shares this record' WHERE record_id = $1 AND state = 'pending'")
                        .bind(id.to_string())
                        .execute(&mut **tx)
                        .await?;
                }
                sqlx::query("UPDATE changes SET fields = '{}' WHERE record_id = $1")
                    .bind(id.to_string())
                    .execute(&mut **tx)
                    .await?;
                let Some(cur) = current else { return Ok(()) };
                let tomb = cur.versions.values().max().cloned().unwrap_or_else(|| Hlc::new(at_ms.max(0) as u64, 0, owner.to_string()));
                let next = Record {
                    deleted: Some(cur.deleted.clone().unwrap_or(tomb)),
                    fields: FieldMap::new(),
                    versions: verbund_core::VersionMap::new(),
                    updated_at_ms: at_ms,
                    ..cur.clone()
                };
                show_replica(tx, Some(cur), next, seq, out).await
            }

            async fn replica_batch(tx: &mut Tx, batch: ReplicaBatch, seq: &mut i64) -> Result<OpOutput> {
                let mut out = OpOutput::default();
                let stored: Option<i64> = sqlx::query_scalar("SELECT cursor FROM subscriptions WHERE owner_org = $1")
                    .bind(&batch.owner_org)
                    .fetch_optional(&mut **tx)
                    .await?;
                let owner = batch.owner_org.clone();
                if let Some(own_org) = &batch.reset_for_org {
                    reset_owner(tx, &owner, own_org, batch.at_ms).await?;
                } else if batch.cursor > 0 && stored.is_some_and(|c| c >= batch.cursor) {
                    // A batch the cursor already covers was applied: applying it again changes
                    // nothing. Repairs (cursor 0) apply whatever the cursor.
                    return Ok(out);
                }
                let from_stream = batch.from_stream || batch.current_as_of.is_some_and(|n| stored.unwrap_or(0) <= n);
                let quarantined: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM quarantine WHERE owner_org = $1")
                    .bind(&owner)
                    .fetch_one(&mut **tx)
                    .await?;
                for item in batch.items {
                    let id = match &item {
                        ReplicaItem::Upsert(st) => st.id,
                        ReplicaItem::Revoke { id } | ReplicaItem::Erase { id } => *id,
                    };
                    if quarantined > 0 {
                        // A later item of the record supersedes the one we could not take.
                        sqlx::query("DELETE FROM quarantine WHERE owner_org = $1 AND record_id = $2")
                            .bind(&owner)
                            .bind(id.to_string())
                            .execute(&mut **tx)
                            .await?;
                    }
                    match item {
                        ReplicaItem::Upsert(st) => take_in(tx, &owner, st, from_stream, batch.at_ms, seq, &mut out).await?,
                        ReplicaItem::Revoke { id } => purge_replica(tx, &owner, id, false, batch.at_ms, seq, &mut out).await?,
                        ReplicaItem::Erase { id } => purge_replica(tx, &owner, id, true, batch.at_ms, seq, &mut out).await?,
                    }
                }
                for q in &batch.quarantine {
                    sqlx::query(
                        "INSERT INTO quarantine (owner_org, record_id, item, reason, first_ms, last_ms, attempts) VALUES ($1, $2, $3, $4, $5, $5, 1) \
                         ON CONFLICT (owner_org, record_id) DO UPDATE SET item = excluded.item, reason = excluded.reason, \
                         last_ms = excluded.last_ms, attempts = quarantine.attempts + 1",
                    )
                    .bind(&owner)
                    .bind(&q.record_id)
                    .bind(&q.item)
                    .bind(&q.reason)
                    .bind(batch.at_ms)
                    .execute(&mut **tx)
                    .await?;
                }
                if batch.cursor > 0 || stored.is_none() || batch.reset_for_org.is_some() {
                    // Even a batch that changed nothing moves the cursor: what we know advances.
                    // After a reset the cursor starts again below where it was.
                    let sql = if batch.reset_for_org.is_some() {
                        "INSERT INTO subscriptions (owner_org, cursor, cursor_mark, owner_last_seq, last_batch_ms) VALUES ($1, $2, $3, $4, $5) \
                         ON CONFLICT (owner_org) DO UPDATE SET cursor = excluded.cursor, cursor_mark = excluded.cursor_mark, \
                         owner_last_seq = excluded.owner_last_seq, last_batch_ms = excluded.last_batch_ms"
                    } else {
                        "INSERT INTO subscriptions (owner_org, cursor, cursor_mark, owner_last_seq, last_batch_ms) VALUES ($1, $2, $3, $4, $5) \
                         ON CONFLICT (owner_org) DO UPDATE SET \
                         cursor_mark = CASE WHEN excluded.cursor > subscriptions.cursor THEN excluded.cursor_mark ELSE subscriptions.cursor_mark END, \
                         cursor = CASE WHEN excluded.cursor > subscriptions.cursor THEN excluded.cursor ELSE subscriptions.cursor END, \
                         owner_last_seq = excluded.owner_last_seq, last_batch_ms = excluded.last_batch_ms"
                    };
                    sqlx::query(sql)
                        .bind(&owner)
                        .bind(batch.cursor)
                        .bind(&batch.cursor_mark)
                        .bind(batch.owner_last_seq)
                        .bind(batch.at_ms)
                        .execute(&mut **tx)
                        .await?;
                }
                Ok(out)
            }

            async fn replica_edit(tx: &mut Tx, kind: RecordKind, id: Uuid, key: &str, plan_fn: PlanFn, seq: &mut i64) -> Result<OpOutput> {
                let current = load(tx, kind, id).await?;
                let replica = replica_row(tx, id).await?;
                let Some(replica) = replica.filter(|r| r.state == "live") else {
                    return Err(DomainError::NotFound { kind, id: id.to_string() }.into());
                };
                let Some(mut plan) = plan_fn(&current)? else {
                    return Ok(OpOutput::unchanged(current));
                };
                write_record(tx, &mut plan, *seq + 1, false, None).await?;
                *seq += 1;
                let edits = verbund_core::sync::edits_of(&plan.change.fields, &plan.record.versions, &current.versions);
                sqlx::query(
                    "INSERT INTO outbox (push_key, owner_org, record_id, kind, edits, state, attempts, created_ms) \
                     VALUES ($1, $2, $3, $4, $5, 'pending', 0, $6)",
                )
                .bind(key)
                .bind(&replica.owner_org)
                .bind(id.to_string())
                .bind(kind.as_str())
                .bind(fields_to_json(&edits)?)
                .bind(plan.record.updated_at_ms)
                .execute(&mut **tx)
                .await?;
                Ok(OpOutput::one(plan))
            }

            async fn apply_verdict(tx: &mut Tx, v: VerdictApply, seq: &mut i64) -> Result<OpOutput> {
                let mut out = OpOutput::default();
                let row = sqlx::query("SELECT owner_org, record_id FROM outbox WHERE push_key = $1 AND owner_org = $2")
                    .bind(&v.key)
                    .bind(&v.owner_org)
                    .fetch_optional(&mut **tx)
                    .await?;
                let Some(row) = row else { return Ok(out) };
                let owner: String = row.try_get("owner_org")?;
                let id: String = row.try_get("record_id")?;
                let id = Uuid::parse_str(&id).map_err(|e| StoreError::Corrupt(e.to_string()))?;
                if v.outcome == VerdictOutcome::Rejected {
                    sqlx::query("UPDATE outbox SET state = 'rejected', last_error = $2 WHERE push_key = $1")
                        .bind(&v.key)
                        .bind(&v.reason)
                        .execute(&mut **tx)
                        .await?;
                } else {
                    sqlx::query("DELETE FROM outbox WHERE push_key = $1").bind(&v.key).execute(&mut **tx).await?;
                }
                let now = v.record.as_ref().map(|r| r.updated_at_ms).unwrap_or(0);
                if v.revoked {
                    // We no longer see the record. Unless we applied owner changes after the
                    // verdict was decided (they decide), our copy goes as with a revoke.
                    let cursor: Option<i64> = sqlx::query_scalar("SELECT cursor FROM subscriptions WHERE owner_org = $1")
                        .bind(&owner)
                        .fetch_optional(&mut **tx)
                        .await?;
                    if cursor.unwrap_or(0) <= v.as_of_seq {
                        purge_replica(tx, &owner, id, false, v.at_ms, seq, &mut out).await?;
                        return Ok(out);
                    }
                }
                if let Some(st) = v.record.filter(|st| st.id == id) {
                    take_in(tx, &owner, st, false, now, seq, &mut out).await?;
                }
                // Whatever the verdict brought (it may be older than what we hold): show the
                // owner's state with the edits still pending, so a rejected edit disappears.
                if let (Some(r), Some(cur)) = (replica_row(tx, id).await?, load_any(tx, id).await?) {
                    if r.state == "live" {
                        let pending = pending_edits(tx, id).await?;
                        let (fields, versions) = verbund_core::sync::overlay((&r.shadow_fields, &r.shadow_versions), pending.iter());
                        let next = Record { fields, versions, ..cur.clone() };
                        show_replica(tx, Some(cur), next, seq, &mut out).await?;
                    }
                }
                Ok(out)
            }

            fn share_row(r: &<$db as sqlx::Database>::Row) -> Result<Share> {
                let id: String = r.try_get("id")?;
                let record_id: String = r.try_get("record_id")?;
                let kind: String = r.try_get("kind")?;
                Ok(Share {
                    id: Uuid::parse_str(&id).map_err(|e| StoreError::Corrupt(e.to_string()))?,
                    record_id: Uuid::parse_str(&record_id).map_err(|e| StoreError::Corrupt(e.to_string()))?,
                    kind: kind_from_db(&kind)?,
                    org: r.try_get("org")?,
                    profile: r.try_get("profile")?,
                    created_at_ms: r.try_get("created_at_ms")?,
                    created_by: r.try_get("created_by")?,
                })
            }

            pub async fn list_shares(pool: &$pool, org: Option<&str>, record_id: Option<Uuid>) -> Result<Vec<Share>> {
                let mut qb: QueryBuilder<$db> = QueryBuilder::new("SELECT id, record_id, kind, org, profile, created_at_ms, created_by FROM shares WHERE 1 = 1");
                if let Some(org) = org {
                    qb.push(" AND org = ").push_bind(org.to_string());
                }
                if let Some(id) = record_id {
                    qb.push(" AND record_id = ").push_bind(id.to_string());
                }
                qb.push(" ORDER BY id");
                let rows = qb.build().fetch_all(pool).await?;
                rows.iter().map(share_row).collect()
            }

            /// The shares of these records with `org`.
            pub async fn shares_of_records(pool: &$pool, org: &str, ids: &[Uuid]) -> Result<Vec<Share>> {
                let mut out = Vec::new();
                for chunk in ids.chunks(500) {
                    let mut qb: QueryBuilder<$db> = QueryBuilder::new("SELECT id, record_id, kind, org, profile, created_at_ms, created_by FROM shares WHERE org = ");
                    qb.push_bind(org.to_string()).push(" AND record_id IN (");
                    let mut sep = qb.separated(", ");
                    for id in chunk {
                        sep.push_bind(id.to_string());
                    }
                    qb.push(")");
                    for r in qb.build().fetch_all(pool).await? {
                        out.push(share_row(&r)?);
                    }
                }
                Ok(out)
            }

            pub async fn list_share_rules(pool: &$pool, org: Option<&str>) -> Result<Vec<ShareRule>> {
                let mut qb: QueryBuilder<$db> = QueryBuilder::new("SELECT id, org, rule, profile, created_at_ms, created_by FROM share_rules WHERE 1 = 1");
                if let Some(org) = org {
                    qb.push(" AND org = ").push_bind(org.to_string());
                }
                qb.push(" ORDER BY id");
                let rows = qb.build().fetch_all(pool).await?;
                rows.iter()
                    .map(|r| {
                        let id: String = r.try_get("id")?;
                        let rule: String = r.try_get("rule")?;
                        Ok(ShareRule {
                            id: Uuid::parse_str(&id).map_err(|e| StoreError::Corrupt(e.to_string()))?,
                            org: r.try_get("org")?,
                            rule: RuleMatch::parse(&rule).ok_or_else(|| StoreError::Corrupt(format!("share rule {rule:?}")))?,
                            profile: r.try_get("profile")?,
                            created_at_ms: r.try_get("created_at_ms")?,
                            created_by: r.try_get("created_by")?,
                        })
                    })
                    .collect()
            }

            /// Live records whose indexed `column` is one of `ids`; `kind` narrows, `not_kind`
            /// excludes. The column is chosen by the caller from a fixed set, never from input.
            async fn live_by_column(pool: &$pool, column: RefColumn, ids: &[String], kind: Option<RecordKind>, not_kind: Option<RecordKind>) -> Result<Vec<Record>> {
                let mut out = Vec::new();
                for chunk in ids.chunks(500) {
                    let mut qb: QueryBuilder<$db> = QueryBuilder::new("SELECT ");
                    qb.push(RECORD_COLUMNS).push(" FROM records WHERE deleted_version IS NULL AND ").push(column.sql()).push(" IN (");
                    let mut sep = qb.separated(", ");
                    for id in chunk {
                        sep.push_bind(id.clone());
                    }
                    qb.push(")");
                    if let Some(k) = kind {
                        qb.push(" AND kind = ").push_bind(k.as_str());
                    }
                    if let Some(k) = not_kind {
                        qb.push(" AND kind <> ").push_bind(k.as_str());
                    }
                    let rows = qb.build().fetch_all(pool).await?;
                    for r in &rows {
                        out.push(record_row(r)?.into_record()?);
                    }
                }
                Ok(out)
            }

            pub async fn records_of_accounts(pool: &$pool, ids: &[String]) -> Result<Vec<Record>> {
                live_by_column(pool, RefColumn::AccountId, ids, None, Some(RecordKind::Account)).await
            }

            pub async fn activities_related_to(pool: &$pool, ids: &[String]) -> Result<Vec<Record>> {
                live_by_column(pool, RefColumn::RelatedId, ids, Some(RecordKind::Activity), None).await
            }

            pub async fn cases_assigned_to(pool: &$pool, org: &str) -> Result<Vec<Record>> {
                live_by_column(pool, RefColumn::AssignedOrg, &[org.to_string()], Some(RecordKind::ServiceCase), None).await
            }

            /// Live accounts whose stored fields mention `"tag"`: a superset of the accounts
            /// carrying the tag, which the caller narrows with the share rule itself.
            pub async fn accounts_mentioning(pool: &$pool, tag: &str) -> Result<Vec<Record>> {
                let mut qb: QueryBuilder<$db> = QueryBuilder::new("SELECT ");
                qb.push(RECORD_COLUMNS)
                    .push(" FROM records WHERE deleted_version IS NULL AND kind = 'account' AND fields LIKE ")
                    .push_bind(like_pattern(&format!("\"{tag}\"")))
                    .push(" ESCAPE '\\'");
                let rows = qb.build().fetch_all(pool).await?;
                rows.iter().map(|r| record_row(r)?.into_record()).collect()
            }

            // ---- Federation sync: reads and bookkeeping outside the writer ----

            pub async fn push_verdict(pool: &$pool, org: &str, key: &str) -> Result<Option<StoredVerdict>> {
                let row = sqlx::query("SELECT record_id, outcome, reason FROM push_receipts WHERE org = $1 AND push_key = $2")
                    .bind(org)
                    .bind(key)
                    .fetch_optional(pool)
                    .await?;
                row.map(|r| verdict_row(&r)).transpose()
            }

            fn delivery_row(r: &<$db as sqlx::Database>::Row) -> Result<Delivery> {
                let id: String = r.try_get("record_id")?;
                let kind: String = r.try_get("kind")?;
                Ok(Delivery {
                    org: r.try_get("org")?,
                    record_id: Uuid::parse_str(&id).map_err(|e| StoreError::Corrupt(e.to_string()))?,
                    kind: kind_from_db(&kind)?,
                    state: r.try_get("state")?,
                    first_sent_ms: r.try_get("first_sent_ms")?,
                    last_sent_ms: r.try_get("last_sent_ms")?,
                    erasure_acked_ms: r.try_get("erasure_acked_ms")?,
                })
            }

            const DELIVERY_COLUMNS: &str = "org, record_id, kind, state, first_sent_ms, last_sent_ms, erasure_acked_ms";

            pub async fn deliveries_of(pool: &$pool, org: &str, ids: &[Uuid]) -> Result<Vec<Delivery>> {
                let mut out = Vec::new();
                for chunk in ids.chunks(500) {
                    let mut qb: QueryBuilder<$db> = QueryBuilder::new("SELECT ");
                    qb.push(DELIVERY_COLUMNS).push(" FROM deliveries WHERE org = ").push_bind(org.to_string()).push(" AND record_id IN (");
                    let mut sep = qb.separated(", ");
                    for id in chunk {
                        sep.push_bind(id.to_string());
                    }
                    qb.push(")");
                    for r in qb.build().fetch_all(pool).await? {
                        out.push(delivery_row(&r)?);
                    }
                }
                Ok(out)
            }

            pub async fn deliveries_of_record(pool: &$pool, id: Uuid) -> Result<Vec<Delivery>> {
                let mut qb: QueryBuilder<$db> = QueryBuilder::new("SELECT ");
                qb.push(DELIVERY_COLUMNS).push(" FROM deliveries WHERE record_id = ").push_bind(id.to_string()).push(" ORDER BY org");
                qb.build().fetch_all(pool).await?.iter().map(|r| delivery_row(r)).collect()
            }

            pub async fn live_deliveries(pool: &$pool, org: &str) -> Result<Vec<Delivery>> {
                let mut qb: QueryBuilder<$db> = QueryBuilder::new("SELECT ");
                qb.push(DELIVERY_COLUMNS).push(" FROM deliveries WHERE org = ").push_bind(org.to_string()).push(" AND state = 'live' ORDER BY record_id");
                qb.build().fetch_all(pool).await?.iter().map(|r| delivery_row(r)).collect()
            }

            pub async fn pending_erasures(pool: &$pool, org: &str) -> Result<Vec<Delivery>> {
                let mut qb: QueryBuilder<$db> = QueryBuilder::new("SELECT ");
                qb.push(DELIVERY_COLUMNS).push(" FROM deliveries WHERE org = ").push_bind(org.to_string())
                    .push(" AND state = 'erased' AND erasure_acked_ms IS NULL ORDER BY record_id");
                qb.build().fetch_all(pool).await?.iter().map(|r| delivery_row(r)).collect()
            }

            /// Records, before sending, what each partner is about to hold: a record reaches the
            /// ledger before it leaves the node, so erasure can find every copy.
            pub async fn record_deliveries(pool: &$pool, org: &str, rows: &[(Uuid, RecordKind, &'static str)], at_ms: i64) -> Result<()> {
                let mut tx = pool.begin().await?;
                for chunk in rows.chunks(200) {
                    let mut qb: QueryBuilder<$db> = QueryBuilder::new("INSERT INTO deliveries (org, record_id, kind, state, first_sent_ms, last_sent_ms) ");
                    qb.push_values(chunk, |mut b, (id, kind, state)| {
                        b.push_bind(org.to_string())
                            .push_bind(id.to_string())
                            .push_bind(kind.as_str())
                            .push_bind(*state)
                            .push_bind(at_ms)
                            .push_bind(at_ms);
                    });
                    qb.push(" ON CONFLICT (org, record_id) DO UPDATE SET state = CASE WHEN deliveries.state = 'erased' THEN deliveries.state ELSE excluded.state END, last_sent_ms = excluded.last_sent_ms");
                    qb.build().execute(&mut *tx).await?;
                }
                // A record erased meanwhile stays owed an erasure by whoever gets it now.
                sqlx::query("UPDATE deliveries SET state = 'erased' WHERE org = $1 AND state <> 'erased' AND record_id IN (SELECT record_id FROM erasures)")
                    .bind(org)
                    .execute(&mut *tx)
                    .await?;
                tx.commit().await?;
                Ok(())
            }

            pub async fn ack_erasures(pool: &$pool, org: &str, ids: &[Uuid], at_ms: i64) -> Result<()> {
                for id in ids {
                    sqlx::query("UPDATE deliveries SET erasure_acked_ms = $3 WHERE org = $1 AND record_id = $2 AND state = 'erased' AND erasure_acked_ms IS NULL")
                        .bind(org)
                        .bind(id.to_string())
                        .bind(at_ms)
                        .execute(pool)
                        .await?;
                }
                Ok(())
            }

            pub async fn record_peer_ack(pool: &$pool, org: &str, cursor: i64, at_ms: i64) -> Result<()> {
                sqlx::query(
                    "INSERT INTO sync_peers (org, acked_cursor, acked_ms) VALUES ($1, $2, $3) \
                     ON CONFLICT (org) DO UPDATE SET acked_cursor = excluded.acked_cursor, acked_ms = excluded.acked_ms",
                )
                .bind(org)
                .bind(cursor)
                .bind(at_ms)
                .execute(pool)
                .await?;
                Ok(())
            }

            pub async fn peer_acks(pool: &$pool) -> Result<Vec<(String, i64, i64)>> {
                let rows = sqlx::query("SELECT org, acked_cursor, acked_ms FROM sync_peers ORDER BY org").fetch_all(pool).await?;
                rows.iter().map(|r| Ok((r.try_get("org")?, r.try_get("acked_cursor")?, r.try_get("acked_ms")?))).collect()
            }

            pub async fn erasure(pool: &$pool, id: Uuid) -> Result<Option<Erasure>> {
                let row = sqlx::query("SELECT record_id, kind, erased_ms, erased_by FROM erasures WHERE record_id = $1")
                    .bind(id.to_string())
                    .fetch_optional(pool)
                    .await?;
                row.map(|r| {
                    let kind: String = r.try_get("kind")?;
                    Ok(Erasure { record_id: id, kind: kind_from_db(&kind)?, erased_ms: r.try_get("erased_ms")?, erased_by: r.try_get("erased_by")? })
                })
                .transpose()
            }

            fn conflict_row(r: &<$db as sqlx::Database>::Row) -> Result<ConflictRecord> {
                let corrupt = |e: String| StoreError::Corrupt(e);
                let id: String = r.try_get("id")?;
                let record_id: String = r.try_get("record_id")?;
                let kind: String = r.try_get("kind")?;
                let value = |col: &str| -> Result<Option<Value>> {
                    let text: Option<String> = r.try_get(col)?;
                    text.map(|t| serde_json::from_str(&t).map_err(|e| corrupt(format!("conflict value: {e}")))).transpose()
                };
                let version = |col: &str| -> Result<Hlc> {
                    let text: String = r.try_get(col)?;
                    text.parse().map_err(|e: verbund_core::hlc::ParseHlcError| corrupt(e.to_string()))
                };
                Ok(ConflictRecord {
                    id: Uuid::parse_str(&id).map_err(|e| corrupt(e.to_string()))?,
                    record_id: Uuid::parse_str(&record_id).map_err(|e| corrupt(e.to_string()))?,
                    kind: kind_from_db(&kind)?,
                    conflict: verbund_core::sync::Conflict {
                        field: r.try_get("field")?,
                        winner: verbund_core::sync::FieldState { value: value("winner_value")?, version: version("winner_version")? },
                        loser: verbund_core::sync::FieldState { value: value("loser_value")?, version: version("loser_version")? },
                    },
                    created_ms: r.try_get("created_ms")?,
                    resolved_by: r.try_get("resolved_by")?,
                    resolved_ms: r.try_get("resolved_ms")?,
                    resolution: r.try_get("resolution")?,
                })
            }

            const CONFLICT_COLUMNS: &str = "id, record_id, kind, field, winner_value, winner_version, loser_value, loser_version, created_ms, resolved_by, resolved_ms, resolution";

            pub async fn list_conflicts(pool: &$pool, record_id: Option<Uuid>, include_resolved: bool) -> Result<Vec<ConflictRecord>> {
                let mut qb: QueryBuilder<$db> = QueryBuilder::new("SELECT ");
                qb.push(CONFLICT_COLUMNS).push(" FROM conflicts WHERE 1 = 1");
                if let Some(id) = record_id {
                    qb.push(" AND record_id = ").push_bind(id.to_string());
                }
                if !include_resolved {
                    qb.push(" AND resolved_ms IS NULL");
                }
                qb.push(" ORDER BY created_ms, id LIMIT 1000");
                qb.build().fetch_all(pool).await?.iter().map(|r| conflict_row(r)).collect()
            }

            pub async fn get_conflict(pool: &$pool, id: Uuid) -> Result<Option<ConflictRecord>> {
                let mut qb: QueryBuilder<$db> = QueryBuilder::new("SELECT ");
                qb.push(CONFLICT_COLUMNS).push(" FROM conflicts WHERE id = ").push_bind(id.to_string());
                qb.build().fetch_optional(pool).await?.map(|r| conflict_row(&r)).transpose()
            }

            pub async fn mark_conflict_resolved(pool: &$pool, id: Uuid, by: &str, resolution: &str, at_ms: i64) -> Result<bool> {
                let r = sqlx::query("UPDATE conflicts SET resolved_by = $2, resolution = $3, resolved_ms = $4 WHERE id = $1 AND resolved_ms IS NULL")
                    .bind(id.to_string())
                    .bind(by)
                    .bind(resolution)
                    .bind(at_ms)
                    .execute(pool)
                    .await?;
                Ok(r.rows_affected() > 0)
            }

            fn subscription_row(r: &<$db as sqlx::Database>::Row) -> Result<Subscription> {
                Ok(Subscription {
                    owner_org: r.try_get("owner_org")?,
                    cursor: r.try_get("cursor")?,
                    owner_last_seq: r.try_get("owner_last_seq")?,
                    last_batch_ms: r.try_get("last_batch_ms")?,
                    last_error: r.try_get("last_error")?,
                    last_error_ms: r.try_get("last_error_ms")?,
                    cursor_mark: r.try_get("cursor_mark")?,
                    history_note: r.try_get("history_note")?,
                })
            }

            pub async fn subscription(pool: &$pool, owner: &str) -> Result<Option<Subscription>> {
                sqlx::query("SELECT owner_org, cursor, owner_last_seq, last_batch_ms, last_error, last_error_ms, cursor_mark, history_note FROM subscriptions WHERE owner_org = $1")
                    .bind(owner)
                    .fetch_optional(pool)
                    .await?
                    .map(|r| subscription_row(&r))
                    .transpose()
            }

            pub async fn list_subscriptions(pool: &$pool) -> Result<Vec<Subscription>> {
                sqlx::query("SELECT owner_org, cursor, owner_last_seq, last_batch_ms, last_error, last_error_ms, cursor_mark, history_note FROM subscriptions ORDER BY owner_org")
                    .fetch_all(pool)
                    .await?
                    .iter()
                    .map(|r| subscription_row(r))
                    .collect()
            }

            pub async fn set_sync_error(pool: &$pool, owner: &str, error: Option<&str>, at_ms: i64) -> Result<()> {
                sqlx::query(
                    "INSERT INTO subscriptions (owner_org, cursor, owner_last_seq, last_error, last_error_ms) VALUES ($1, 0, 0, $2, $3) \
                     ON CONFLICT (owner_org) DO UPDATE SET last_error = excluded.last_error, last_error_ms = excluded.last_error_ms",
                )
                .bind(owner)
                .bind(error)
                .bind(at_ms)
                .execute(pool)
                .await?;
                Ok(())
            }

            fn outbox_row(r: &<$db as sqlx::Database>::Row) -> Result<OutboxEntry> {
                let id: String = r.try_get("record_id")?;
                let kind: String = r.try_get("kind")?;
                let edits: String = r.try_get("edits")?;
                Ok(OutboxEntry {
                    seq: r.try_get("seq")?,
                    key: r.try_get("push_key")?,
                    owner_org: r.try_get("owner_org")?,
                    record_id: Uuid::parse_str(&id).map_err(|e| StoreError::Corrupt(e.to_string()))?,
                    kind: kind_from_db(&kind)?,
                    edits: serde_json::from_str(&edits).map_err(|e| StoreError::Corrupt(format!("outbox edits: {e}")))?,
                    state: r.try_get("state")?,
                    attempts: r.try_get("attempts")?,
                    last_error: r.try_get("last_error")?,
                    created_ms: r.try_get("created_ms")?,
                })
            }

            const OUTBOX_COLUMNS: &str = "seq, push_key, owner_org, record_id, kind, edits, state, attempts, last_error, created_ms";

            pub async fn list_outbox(pool: &$pool, owner: Option<&str>, state: Option<&str>, limit: i64) -> Result<Vec<OutboxEntry>> {
                let mut qb: QueryBuilder<$db> = QueryBuilder::new("SELECT ");
                qb.push(OUTBOX_COLUMNS).push(" FROM outbox WHERE 1 = 1");
                if let Some(o) = owner {
                    qb.push(" AND owner_org = ").push_bind(o.to_string());
                }
                if let Some(st) = state {
                    qb.push(" AND state = ").push_bind(st.to_string());
                }
                qb.push(" ORDER BY seq LIMIT ").push_bind(limit);
                qb.build().fetch_all(pool).await?.iter().map(|r| outbox_row(r)).collect()
            }

            pub async fn outbox_attempt(pool: &$pool, key: &str, error: &str) -> Result<()> {
                sqlx::query("UPDATE outbox SET attempts = attempts + 1, last_error = $2 WHERE push_key = $1")
                    .bind(key)
                    .bind(error)
                    .execute(pool)
                    .await?;
                Ok(())
            }

            pub async fn count_by_owner(pool: &$pool, table_outbox: bool) -> Result<Vec<(String, i64)>> {
                let sql = if table_outbox {
                    "SELECT owner_org, COUNT(*) AS n FROM outbox WHERE state = 'pending' GROUP BY owner_org"
                } else {
                    "SELECT owner_org, COUNT(*) AS n FROM replicas WHERE state = 'live' GROUP BY owner_org"
                };
                sqlx::query(sql).fetch_all(pool).await?.iter().map(|r| Ok((r.try_get("owner_org")?, r.try_get("n")?))).collect()
            }

            /// Items of owners' streams we could not take (all owners for None), oldest first.
            pub async fn list_quarantine(pool: &$pool, owner: Option<&str>, limit: i64) -> Result<Vec<QuarantineItem>> {
                let mut qb: QueryBuilder<$db> =
                    QueryBuilder::new("SELECT owner_org, record_id, item, reason, first_ms, last_ms, attempts FROM quarantine WHERE 1 = 1");
                if let Some(o) = owner {
                    qb.push(" AND owner_org = ").push_bind(o.to_string());
                }
                qb.push(" ORDER BY first_ms, record_id LIMIT ").push_bind(limit);
                qb.build()
                    .fetch_all(pool)
                    .await?
                    .iter()
                    .map(|r| {
                        Ok(QuarantineItem {
                            owner_org: r.try_get("owner_org")?,
                            record_id: r.try_get("record_id")?,
                            item: r.try_get("item")?,
                            reason: r.try_get("reason")?,
                            first_ms: r.try_get("first_ms")?,
                            last_ms: r.try_get("last_ms")?,
                            attempts: r.try_get("attempts")?,
                        })
                    })
                    .collect()
            }

            /// The newest owner sequence number among our replicas of `owner` (0: none).
            pub async fn max_replica_seq(pool: &$pool, owner: &str) -> Result<i64> {
                let n: Option<i64> = sqlx::query_scalar("SELECT MAX(owner_seq) FROM replicas WHERE owner_org = $1")
                    .bind(owner)
                    .fetch_one(pool)
                    .await?;
                Ok(n.unwrap_or(0))
            }

            pub async fn quarantine_counts(pool: &$pool) -> Result<Vec<(String, i64)>> {
                sqlx::query("SELECT owner_org, COUNT(*) AS n FROM quarantine GROUP BY owner_org")
                    .fetch_all(pool)
                    .await?
                    .iter()
                    .map(|r| Ok((r.try_get("owner_org")?, r.try_get("n")?)))
                    .collect()
            }

            /// (record id, digest of the owner's versions) of every replica of `owner` we hold.
            pub async fn replica_digests(pool: &$pool, owner: &str) -> Result<Vec<(Uuid, u64)>> {
                let rows = sqlx::query("SELECT record_id, state, shadow_versions FROM replicas WHERE owner_org = $1 AND state = 'live'")
                    .bind(owner)
                    .fetch_all(pool)
                    .await?;
                rows.iter()
                    .map(|r| {
                        let id: String = r.try_get("record_id")?;
                        let state: String = r.try_get("state")?;
                        let versions: String = r.try_get("shadow_versions")?;
                        Ok((
                            Uuid::parse_str(&id).map_err(|e| StoreError::Corrupt(e.to_string()))?,
                            verbund_core::sync::record_digest(&versions_from_json(&versions)?, state == "deleted"),
                        ))
                    })
                    .collect()
            }

            pub async fn unacked_erasures(pool: &$pool, owner: &str) -> Result<Vec<Uuid>> {
                let ids: Vec<String> = sqlx::query_scalar("SELECT record_id FROM replicas WHERE owner_org = $1 AND state = 'erased-unacked'")
                    .bind(owner)
                    .fetch_all(pool)
                    .await?;
                ids.iter().map(|i| Uuid::parse_str(i).map_err(|e| StoreError::Corrupt(e.to_string()))).collect()
            }

            pub async fn mark_erasures_acked(pool: &$pool, ids: &[Uuid]) -> Result<()> {
                for id in ids {
                    sqlx::query("UPDATE replicas SET state = 'erased' WHERE record_id = $1 AND state = 'erased-unacked'")
                        .bind(id.to_string())
                        .execute(pool)
                        .await?;
                }
                Ok(())
            }

            /// Our replica's owner and writable fields (None: not a replica).
            pub async fn replica_info(pool: &$pool, id: Uuid) -> Result<Option<(String, String, Vec<String>)>> {
                let row = sqlx::query("SELECT owner_org, state, writable FROM replicas WHERE record_id = $1")
                    .bind(id.to_string())
                    .fetch_optional(pool)
                    .await?;
                row.map(|r| {
                    let writable: String = r.try_get("writable")?;
                    Ok((
                        r.try_get("owner_org")?,
                        r.try_get("state")?,
                        serde_json::from_str(&writable).map_err(|e| StoreError::Corrupt(format!("writable: {e}")))?,
                    ))
                })
                .transpose()
            }

            /// Live records that refer to one of `ids` as account, contact or related record.
            pub async fn dependents_of(pool: &$pool, ids: &[String]) -> Result<Vec<Record>> {
                let mut out = live_by_column(pool, RefColumn::AccountId, ids, None, None).await?;
                out.extend(live_by_column(pool, RefColumn::ContactId, ids, None, None).await?);
                out.extend(live_by_column(pool, RefColumn::RelatedId, ids, None, None).await?);
                Ok(out)
            }

            pub async fn list_audit(pool: &$pool, q: &AuditQuery) -> Result<Vec<AuditEntry>> {
                let mut qb: QueryBuilder<$db> = QueryBuilder::new(
                    "SELECT seq, at_ms, principal, org, action, kind, record_id, fields, decision, reason, prev_hash, hash FROM audit_log WHERE seq > ",
                );
                qb.push_bind(q.after_seq);
                if let Some(org) = &q.org {
                    qb.push(" AND org = ").push_bind(org.clone());
                }
                if let Some(id) = &q.record_id {
                    qb.push(" AND record_id = ").push_bind(id.clone());
                }
                if let Some(t) = q.since_ms {
                    qb.push(" AND at_ms >= ").push_bind(t);
                }
                if let Some(t) = q.until_ms {
                    qb.push(" AND at_ms < ").push_bind(t);
                }
                qb.push(" ORDER BY seq LIMIT ").push_bind(q.limit);
                let rows = qb.build().fetch_all(pool).await?;
                rows.iter()
                    .map(|r| {
                        let fields: String = r.try_get("fields")?;
                        Ok(AuditEntry {
                            seq: r.try_get("seq")?,
                            draft: AuditDraft {
                                at_ms: r.try_get("at_ms")?,
                                principal: r.try_get("principal")?,
                                org: r.try_get("org")?,
                                action: r.try_get("action")?,
                                kind: r.try_get("kind")?,
                                record_id: r.try_get("record_id")?,
                                // A mangled list stays visible to verification as a mismatch.
                                fields: serde_json::from_str(&fields).unwrap_or_else(|_| vec![fields.clone()]),
                                decision: r.try_get("decision")?,
                                reason: r.try_get("reason")?,
                            },
                            prev_hash: r.try_get("prev_hash")?,
                            hash: r.try_get("hash")?,
                        })
                    })
                    .collect()
            }

            pub async fn audit_head(pool: &$pool) -> Result<(i64, String)> {
                let row = sqlx::query("SELECT seq, hash FROM audit_head WHERE id = 1").fetch_one(pool).await?;
                Ok((row.try_get("seq")?, row.try_get("hash")?))
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
                let mut out = Vec::with_capacity(ids.len());
                // Bounded statements: SQLite limits the number of bound parameters.
                for chunk in ids.chunks(500) {
                    let mut qb: QueryBuilder<$db> = QueryBuilder::new("SELECT ");
                    qb.push(RECORD_COLUMNS).push(" FROM records WHERE id IN (");
                    let mut sep = qb.separated(", ");
                    for id in chunk {
                        sep.push_bind(id.to_string());
                    }
                    qb.push(")");
                    for r in qb.build().fetch_all(pool).await? {
                        out.push(record_row(&r)?.into_record()?);
                    }
                }
                Ok(out)
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

            pub async fn add_partner(pool: &$pool, p: &Partner) -> Result<()> {
                let r = sqlx::query(
                    "INSERT INTO partners (org, ca_pem, fingerprint, endpoint, status, added_at_ms, last_contact_ms) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7)",
                )
                .bind(&p.org)
                .bind(&p.ca_pem)
                .bind(&p.fingerprint)
                .bind(&p.endpoint)
                .bind(&p.status)
                .bind(p.added_at_ms)
                .bind(p.last_contact_ms)
                .execute(pool)
                .await;
                match r {
                    Ok(_) => Ok(()),
                    Err(e) if e.as_database_error().is_some_and(|d| d.is_unique_violation()) => {
                        Err(StoreError::AlreadyExists(format!("partner {}", p.org)))
                    }
                    Err(e) => Err(e.into()),
                }
            }

            pub async fn list_partners(pool: &$pool) -> Result<Vec<Partner>> {
                let rows = sqlx::query(
                    "SELECT org, ca_pem, fingerprint, endpoint, status, added_at_ms, last_contact_ms, crl_pem FROM partners ORDER BY org",
                )
                .fetch_all(pool)
                .await?;
                rows.iter()
                    .map(|r| {
                        Ok(Partner {
                            org: r.try_get("org")?,
                            ca_pem: r.try_get("ca_pem")?,
                            fingerprint: r.try_get("fingerprint")?,
                            endpoint: r.try_get("endpoint")?,
                            status: r.try_get("status")?,
                            added_at_ms: r.try_get("added_at_ms")?,
                            last_contact_ms: r.try_get("last_contact_ms")?,
                            crl_pem: r.try_get("crl_pem")?,
                        })
                    })
                    .collect()
            }

            pub async fn remove_partner(pool: &$pool, org: &str) -> Result<()> {
                let r = sqlx::query("DELETE FROM partners WHERE org = $1").bind(org).execute(pool).await?;
                if r.rows_affected() == 0 {
                    return Err(StoreError::NotFound(format!("partner {org}")));
                }
                Ok(())
            }

            pub async fn set_partner_anchor(pool: &$pool, p: &Partner) -> Result<()> {
                let r = sqlx::query("UPDATE partners SET ca_pem = $1, fingerprint = $2, crl_pem = $3 WHERE org = $4")
                    .bind(&p.ca_pem)
                    .bind(&p.fingerprint)
                    .bind(&p.crl_pem)
                    .bind(&p.org)
                    .execute(pool)
                    .await?;
                if r.rows_affected() == 0 {
                    return Err(StoreError::NotFound(format!("partner {}", p.org)));
                }
                Ok(())
            }

            pub async fn set_partner_crl(pool: &$pool, org: &str, crl_pem: Option<&str>) -> Result<()> {
                let r = sqlx::query("UPDATE partners SET crl_pem = $1 WHERE org = $2").bind(crl_pem).bind(org).execute(pool).await?;
                if r.rows_affected() == 0 {
                    return Err(StoreError::NotFound(format!("partner {org}")));
                }
                Ok(())
            }

            pub async fn touch_partner(pool: &$pool, org: &str, at_ms: i64) -> Result<()> {
                sqlx::query("UPDATE partners SET last_contact_ms = $1 WHERE org = $2").bind(at_ms).bind(org).execute(pool).await?;
                Ok(())
            }

            pub async fn last_seq(pool: &$pool) -> Result<i64> {
                Ok(sqlx::query_scalar("SELECT COALESCE(MAX(seq), 0) FROM changes").fetch_one(pool).await?)
            }

            pub async fn last_hlc(pool: &$pool) -> Result<Option<Hlc>> {
                // The newest version among the recent changes (a merged partner edit may carry
                // an older version than ours before it). The text form orders like the clock.
                let v: Option<String> = sqlx::query_scalar(
                    "SELECT MAX(hlc) FROM changes WHERE seq > (SELECT COALESCE(MAX(seq), 0) FROM changes) - 10000",
                )
                .fetch_one(pool)
                .await?;
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
