//! Sync bookkeeping that goes through the writer (so it never meets "database is locked"),
//! and the states of the sync tables as enums.

use uuid::Uuid;
use verbund_core::RecordKind;

/// What an organization holds of a record according to the owner's delivery ledger.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeliveryState {
    Live,
    Deleted,
    Revoked,
    /// Erased at the owner: the organization owes an acknowledgement.
    Erased,
}

impl DeliveryState {
    pub fn as_str(self) -> &'static str {
        match self {
            DeliveryState::Live => "live",
            DeliveryState::Deleted => "deleted",
            DeliveryState::Revoked => "revoked",
            DeliveryState::Erased => "erased",
        }
    }

    pub fn parse(s: &str) -> Option<DeliveryState> {
        Some(match s {
            "live" => DeliveryState::Live,
            "deleted" => DeliveryState::Deleted,
            "revoked" => DeliveryState::Revoked,
            "erased" => DeliveryState::Erased,
            _ => return None,
        })
    }
}

/// Where one of our edits of a partner's record stands (`outbox.state`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OutboxState {
    /// Waiting for the owner's verdict (or being retried).
    Pending,
    /// Refused by the owner, or lost in its history: kept with the reason, no longer shown.
    Rejected,
}

impl OutboxState {
    pub fn as_str(self) -> &'static str {
        match self {
            OutboxState::Pending => "pending",
            OutboxState::Rejected => "rejected",
        }
    }

    pub fn parse(s: &str) -> Option<OutboxState> {
        match s {
            "pending" => Some(OutboxState::Pending),
            "rejected" => Some(OutboxState::Rejected),
            _ => None,
        }
    }
}

/// What a partner holds of an owner's record (`replicas.state`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CopyState {
    Live,
    Deleted,
    Revoked,
    /// Erased here; the owner has not yet been told.
    ErasedUnacked,
    /// Erased here and acknowledged to the owner.
    Erased,
}

impl CopyState {
    pub fn as_str(self) -> &'static str {
        match self {
            CopyState::Live => "live",
            CopyState::Deleted => "deleted",
            CopyState::Revoked => "revoked",
            CopyState::ErasedUnacked => "erased-unacked",
            CopyState::Erased => "erased",
        }
    }

    pub fn parse(s: &str) -> Option<CopyState> {
        Some(match s {
            "live" => CopyState::Live,
            "deleted" => CopyState::Deleted,
            "revoked" => CopyState::Revoked,
            "erased-unacked" => CopyState::ErasedUnacked,
            "erased" => CopyState::Erased,
            _ => return None,
        })
    }

    pub fn is_erased(self) -> bool {
        matches!(self, CopyState::ErasedUnacked | CopyState::Erased)
    }
}

/// One row the owner notes in its delivery ledger before a batch leaves.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeliveryNote {
    pub record_id: Uuid,
    pub kind: RecordKind,
    pub state: DeliveryState,
    /// Live: the record digest of the projection sent (`sync::record_digest`).
    pub digest: Option<u64>,
}

/// One bucket of a delivery ledger or of the replicas held: the sum of its records'
/// `sum_part`s (modulo 2^32), how many of its rows have no digest that counts (none yet,
/// or computed under another policy: such a bucket must be compared record by record), and
/// how many rows it has (what comparing it record by record costs).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BucketSum {
    pub sum: u64,
    pub unknown: i64,
    pub rows: i64,
}

/// What a partner holds of an owner's record, as a local edit needs to know it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReplicaInfo {
    pub owner_org: String,
    pub state: CopyState,
    /// The fields the owner lets us propose changes to.
    pub writable: Vec<String>,
}

/// The cursor a partner last acknowledged (owner side).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerAck {
    pub org: String,
    pub acked_cursor: i64,
    pub acked_ms: i64,
}

/// Owner side: a position of a partner's stream, as its cursor names it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StreamPosition {
    pub stream_pos: i64,
    /// Our changes up to this one are in the partner's hands at this position.
    pub owner_seq: i64,
    /// The token sent with the cursor (the partner sends it back on Subscribe).
    pub mark: String,
}

/// A sync bookkeeping write, run by the writer like any other write.
#[derive(Clone, Debug)]
pub enum SyncNote {
    /// Owner: what partner `org` is about to hold (a record enters before it leaves).
    Deliveries {
        org: String,
        rows: Vec<DeliveryNote>,
        at_ms: i64,
        /// Fingerprint of the policy the projections were computed under.
        policy: String,
        /// The stream position the batch brings the partner to.
        position: Option<StreamPosition>,
    },
    /// Owner: partner `org`'s stream position `stream_pos` now covers our changes up to
    /// `owner_seq` (nothing after its batch was for it).
    PositionMoved {
        org: String,
        stream_pos: i64,
        owner_seq: i64,
    },
    /// Owner: the stamps given out to partner `org` stay at or below `reserved`.
    StampsReserved { org: String, reserved: i64 },
    /// Owner: the cursor partner `org` acknowledged (its positions before it are dropped).
    PeerAck {
        org: String,
        cursor: i64,
        at_ms: i64,
    },
    /// Owner: erasures partner `org` carried out.
    ErasuresAcked {
        org: String,
        ids: Vec<Uuid>,
        at_ms: i64,
    },
    /// Partner: the owner received our acknowledgement of these erasures.
    ErasureAcksSent { ids: Vec<Uuid> },
    /// Partner: a failed attempt at proposing an outbox entry.
    OutboxAttempt { key: String, error: String },
    /// Partner: the last error of the link to `owner` (None: it works again).
    LinkError {
        owner: String,
        error: Option<String>,
        at_ms: i64,
    },
    /// A partner's node or user was just seen (`partners.last_contact_ms`). Through the
    /// writer: a direct write waited for the writer's lock, over a second during a large
    /// share.
    PartnerContact { org: String, at_ms: i64 },
    /// Both sides: rows from before digests were kept get their bucket (and a replica its
    /// digest), at most `limit` rows per table.
    BackfillDigests { limit: i64 },
}

/// Whether a partner's stored stream position (`cursor`, snapshot `after`) covers a batch's
/// position: a later change, or the same snapshot at least as far along. An empty snapshot
/// position means the change at the cursor was taken completely, which is past every id.
pub(crate) fn position_covers(
    cursor: i64,
    after: &str,
    batch_cursor: i64,
    batch_after: &str,
) -> bool {
    cursor > batch_cursor
        || (cursor == batch_cursor
            && (after.is_empty() || (!batch_after.is_empty() && after >= batch_after)))
}

#[cfg(test)]
mod position_tests {
    use super::position_covers;

    #[test]
    fn a_snapshot_advances_by_id_and_completes_past_every_id() {
        assert!(position_covers(5, "", 4, "zz"), "a later change covers");
        assert!(!position_covers(4, "", 5, "a"), "an earlier one does not");
        assert!(
            !position_covers(5, "b", 5, "c"),
            "further along the same snapshot"
        );
        assert!(position_covers(5, "c", 5, "b"), "behind where we are");
        assert!(position_covers(5, "c", 5, "c"), "the same batch again");
        assert!(!position_covers(5, "c", 5, ""), "the snapshot's completion");
        assert!(
            position_covers(5, "", 5, "c"),
            "completed covers every part"
        );
        assert!(position_covers(5, "", 5, ""), "the same change again");
    }
}
