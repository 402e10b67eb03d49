//! The results and inputs of the sync operations of the store: what an owner stores of a
//! partner's verdicts, conflicts, deliveries and erasures, and what a partner applies and
//! keeps of an owner's stream (replica batches, outbox, subscription, quarantine).

use super::*;

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
    /// The snapshot at `cursor` is taken up to this record id (empty: complete).
    pub snapshot_after: String,
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
    pub state: OutboxState,
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
    /// The owner's snapshot at `cursor` is applied up to this record id (empty: the change
    /// at `cursor` is applied completely).
    pub snapshot_after: String,
}

/// A share rule's snapshot: the change at `seq` that starts streaming the rule's records
/// to `org` (after the rule was added, or, `removed`, after it went).
#[derive(Clone, Debug, PartialEq)]
pub struct ShareSnapshot {
    pub seq: i64,
    pub rule_id: Uuid,
    pub org: String,
    pub rule: RuleMatch,
    pub removed: bool,
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
    pub state: DeliveryState,
    /// Live: the digest of the projection sent, and the policy it was computed under.
    pub digest: Option<u64>,
    pub policy: Option<String>,
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

/// What `Store::surroundings` reads around some records at once.
#[derive(Debug, Default)]
pub struct Surroundings {
    /// Live records that refer to one of the records (`dependents_of`).
    pub dependents: Vec<Record>,
    /// Their shares with the organization (`shares_of_records`).
    pub shares: Vec<Share>,
    /// What the organization was delivered of them (`deliveries_of`).
    pub deliveries: Vec<Delivery>,
}
