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
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    #[error("migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
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
    Share(ShareOp),
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

            /// Runs one write with sequence number `seq`. Ok(record, None): nothing changed.
            async fn run_op(tx: &mut Tx, op: WriteOp, seq: i64) -> Result<(Option<Record>, Option<Change>)> {
                match op {
                    WriteOp::Create(plan_fn) => {
                        let plan = create(tx, plan_fn()?, seq).await?;
                        Ok((Some(plan.record), Some(plan.change)))
                    }
                    WriteOp::Modify { kind, id, is_delete, plan_fn } => match modify(tx, kind, id, is_delete, plan_fn, seq).await? {
                        (_, Some(plan)) => Ok((Some(plan.record), Some(plan.change))),
                        (current, None) => Ok((Some(current), None)),
                    },
                    WriteOp::AuditOnly => Ok((None, None)),
                    WriteOp::Share(op) => {
                        share_op(tx, op).await?;
                        Ok((None, None))
                    }
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
                let outcome: Result<(Vec<Result<Option<Record>>>, i64)> = async {
                    let mut tx = pool.begin_with($begin).await?;
                    let mut seq = lock_seq(&mut tx).await?;
                    let mut results = Vec::with_capacity(ops.len());
                    let mut changes = Vec::new();
                    let mut audit_drafts = Vec::new();
                    for (op, mut drafts) in ops {
                        if $savepoints {
                            sqlx::query("SAVEPOINT verbund_write").execute(&mut *tx).await?;
                        }
                        let outcome = run_op(&mut tx, op, seq + 1).await;
                        match &outcome {
                            Ok((rec, _)) => {
                                for d in drafts.iter_mut().filter(|d| d.record_id.is_none()) {
                                    d.record_id = rec.as_ref().map(|r| r.id.to_string());
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
                            Ok((rec, Some(mut change))) => {
                                seq += 1;
                                change.seq = seq;
                                changes.push(change);
                                if $savepoints {
                                    sqlx::query("RELEASE SAVEPOINT verbund_write").execute(&mut *tx).await?;
                                }
                                results.push(Ok(rec));
                            }
                            Ok((rec, None)) => {
                                if $savepoints {
                                    sqlx::query("RELEASE SAVEPOINT verbund_write").execute(&mut *tx).await?;
                                }
                                results.push(Ok(rec));
                            }
                            Err(StoreError::Domain(e)) => {
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
                    Ok((results, seq))
                }
                .await;
                match outcome {
                    Ok((results, last_seq)) => {
                        if let Some(cache) = cache {
                            cache.committed(results.iter().filter_map(|o| o.as_ref().ok().and_then(Option::as_ref)));
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

            async fn share_op(tx: &mut Tx, op: ShareOp) -> Result<()> {
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
        let pool = PgPoolOptions::new()
            .max_connections(16)
            .acquire_timeout(Duration::from_secs(10))
            .connect_with(opts)
            .await?;
        PG_MIGRATIONS.run(&pool).await?;
        Store::with_backend(Backend::Postgres(pool)).await
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
    pub async fn share(&self, op: ShareOp, audit: AuditDraft) -> Result<()> {
        self.submit_with_audit(WriteOp::Share(op), vec![audit])
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
