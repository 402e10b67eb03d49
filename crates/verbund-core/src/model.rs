//! Records as the node stores and syncs them: a typed field map plus one version per field.

use crate::hlc::Hlc;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;
use uuid::Uuid;

/// The CRM record types.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RecordKind {
    Account,
    Contact,
    Lead,
    Opportunity,
    ServiceCase,
    Activity,
}

impl RecordKind {
    pub const ALL: [RecordKind; 6] = [
        RecordKind::Account,
        RecordKind::Contact,
        RecordKind::Lead,
        RecordKind::Opportunity,
        RecordKind::ServiceCase,
        RecordKind::Activity,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            RecordKind::Account => "account",
            RecordKind::Contact => "contact",
            RecordKind::Lead => "lead",
            RecordKind::Opportunity => "opportunity",
            RecordKind::ServiceCase => "service_case",
            RecordKind::Activity => "activity",
        }
    }

    pub fn parse(s: &str) -> Option<RecordKind> {
        RecordKind::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

impl fmt::Display for RecordKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An amount of money: integer minor units (cents) and an ISO 4217 code. Never a float.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Money {
    pub currency: String,
    pub minor_units: i64,
}

/// One field value. Dates are `YYYY-MM-DD` text, instants are Unix milliseconds, references
/// are record ids as text. An absent field is simply not in the map.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Value {
    Text(String),
    Int(i64),
    Money(Money),
    List(Vec<String>),
}

impl Value {
    pub fn as_text(&self) -> Option<&str> {
        match self {
            Value::Text(s) => Some(s),
            _ => None,
        }
    }
    pub fn as_int(&self) -> Option<i64> {
        match self {
            Value::Int(i) => Some(*i),
            _ => None,
        }
    }
    pub fn as_money(&self) -> Option<&Money> {
        match self {
            Value::Money(m) => Some(m),
            _ => None,
        }
    }
    pub fn as_list(&self) -> Option<&[String]> {
        match self {
            Value::List(l) => Some(l),
            _ => None,
        }
    }
}

pub type FieldMap = BTreeMap<String, Value>;
pub type VersionMap = BTreeMap<String, Hlc>;

/// A stored record. `versions` holds the version of every field ever written, including
/// fields that were cleared since (a clear is a write that sync must propagate).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Record {
    pub id: Uuid,
    pub kind: RecordKind,
    pub owner_org: String,
    pub created_at_ms: i64,
    pub updated_at_ms: i64,
    /// Set when the record is a tombstone; the version of the delete.
    pub deleted: Option<Hlc>,
    /// Node-local change sequence of the last change to this record.
    pub seq: i64,
    pub fields: FieldMap,
    pub versions: VersionMap,
}

impl Record {
    pub fn text(&self, field: &str) -> Option<&str> {
        self.fields.get(field).and_then(Value::as_text)
    }
    pub fn is_deleted(&self) -> bool {
        self.deleted.is_some()
    }
}

/// What a change did to a record.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ChangeOp {
    Create,
    Update,
    Delete,
    /// Who may see the record changed (a share, a share rule); its fields did not. The sync
    /// stream re-evaluates the record for every partner; Watch skips these.
    Access,
    /// A share rule was added or removed: the records it matches are streamed to its
    /// partner as a snapshot from this point. `record_id` names the rule, not a record.
    Snapshot,
}

impl ChangeOp {
    pub fn as_str(self) -> &'static str {
        match self {
            ChangeOp::Create => "create",
            ChangeOp::Update => "update",
            ChangeOp::Delete => "delete",
            ChangeOp::Access => "access",
            ChangeOp::Snapshot => "snapshot",
        }
    }
    pub fn parse(s: &str) -> Option<ChangeOp> {
        match s {
            "create" => Some(ChangeOp::Create),
            "update" => Some(ChangeOp::Update),
            "delete" => Some(ChangeOp::Delete),
            "access" => Some(ChangeOp::Access),
            "snapshot" => Some(ChangeOp::Snapshot),
            _ => None,
        }
    }
}

/// One entry of the change log: which fields changed to what (None = cleared), at which version.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Change {
    pub seq: i64,
    pub record_id: Uuid,
    pub kind: RecordKind,
    pub op: ChangeOp,
    pub hlc: Hlc,
    pub fields: BTreeMap<String, Option<Value>>,
    pub at_ms: i64,
}

/// Errors of the domain rules; the node maps them onto gRPC codes.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DomainError {
    /// Bad input; names the field.
    #[error("{field}: {message}")]
    Invalid { field: String, message: String },
    /// A legal value that the record's current state does not allow (e.g. a case transition).
    #[error("{field}: {message}")]
    FailedPrecondition { field: String, message: String },
    #[error("{kind} {id} not found")]
    NotFound { kind: RecordKind, id: String },
    /// Something other than a record (a share, a rule) is not there.
    #[error("{0} not found")]
    Absent(String),
    #[error("{0} exists already")]
    AlreadyExists(String),
}

impl DomainError {
    pub fn invalid(field: impl Into<String>, message: impl Into<String>) -> Self {
        DomainError::Invalid {
            field: field.into(),
            message: message.into(),
        }
    }
    pub fn precondition(field: impl Into<String>, message: impl Into<String>) -> Self {
        DomainError::FailedPrecondition {
            field: field.into(),
            message: message.into(),
        }
    }
}
