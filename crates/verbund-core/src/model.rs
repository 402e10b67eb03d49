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
///
/// Stored and sent as plain JSON: a string, an integer, `{"currency", "minor_units"}` or a
/// list of strings (untagged). Read by a visitor that takes the variant from the JSON type
/// directly: serde's derived untagged reader buffers every value and tries the variants in
/// turn, which cost a copy of each value and an error per miss on every record read.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(untagged)]
pub enum Value {
    Text(String),
    Int(i64),
    Money(Money),
    List(Vec<String>),
}

impl<'de> Deserialize<'de> for Value {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Value, D::Error> {
        struct ValueVisitor;

        impl<'de> serde::de::Visitor<'de> for ValueVisitor {
            type Value = Value;

            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a text, an integer, an amount of money or a list of texts")
            }

            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Value, E> {
                Ok(Value::Text(v.to_string()))
            }

            fn visit_string<E: serde::de::Error>(self, v: String) -> Result<Value, E> {
                Ok(Value::Text(v))
            }

            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Value, E> {
                Ok(Value::Int(v))
            }

            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Value, E> {
                i64::try_from(v)
                    .map(Value::Int)
                    .map_err(|_| E::invalid_value(serde::de::Unexpected::Unsigned(v), &self))
            }

            fn visit_map<A: serde::de::MapAccess<'de>>(self, map: A) -> Result<Value, A::Error> {
                Money::deserialize(serde::de::value::MapAccessDeserializer::new(map))
                    .map(Value::Money)
            }

            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<Value, A::Error> {
                // As the untagged reader did: `[currency, minor_units]` is an amount (a
                // struct may be read from a sequence), texts only are a list.
                let mut items = Vec::new();
                while let Some(item) = seq.next_element::<Value>()? {
                    items.push(item);
                }
                if let [Value::Text(currency), Value::Int(minor_units)] = items.as_slice() {
                    return Ok(Value::Money(Money {
                        currency: currency.clone(),
                        minor_units: *minor_units,
                    }));
                }
                items
                    .into_iter()
                    .map(|item| match item {
                        Value::Text(t) => Ok(t),
                        _ => Err(serde::de::Error::invalid_type(
                            serde::de::Unexpected::Other("a value that is not a text"),
                            &"a list of texts",
                        )),
                    })
                    .collect::<Result<Vec<String>, A::Error>>()
                    .map(Value::List)
            }
        }

        d.deserialize_any(ValueVisitor)
    }
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

#[cfg(test)]
mod value_json_tests {
    use super::*;
    use proptest::prelude::*;

    /// The reader `Value` had before: serde's derived untagged one.
    #[derive(Debug, PartialEq, Deserialize)]
    #[serde(untagged)]
    enum Untagged {
        Text(String),
        Int(i64),
        Money(Money),
        List(Vec<String>),
    }

    impl From<Untagged> for Value {
        fn from(u: Untagged) -> Value {
            match u {
                Untagged::Text(t) => Value::Text(t),
                Untagged::Int(i) => Value::Int(i),
                Untagged::Money(m) => Value::Money(m),
                Untagged::List(l) => Value::List(l),
            }
        }
    }

    fn json() -> impl Strategy<Value = serde_json::Value> {
        use serde_json::Value as J;
        let leaf = prop_oneof![
            Just(J::Null),
            any::<bool>().prop_map(J::Bool),
            any::<i64>().prop_map(J::from),
            any::<u64>().prop_map(J::from),
            (-1e6f64..1e6).prop_map(J::from),
            "[a-zA-Z0-9 äöü€]{0,8}".prop_map(J::from),
            Just(J::from("currency")),
            Just(J::from("minor_units")),
        ];
        // Shapes an amount has (as a map or as `[currency, minor_units]`), near misses
        // included, besides anything at all.
        let amounts = prop_oneof![
            ("[A-Z]{3}", any::<i64>()).prop_map(|(c, n)| serde_json::json!([c, n])),
            ("[A-Z]{3}", any::<i64>(), any::<bool>()).prop_map(|(c, n, more)| if more {
                serde_json::json!([c, n, c])
            } else {
                serde_json::json!([n, c])
            }),
            ("[A-Z]{3}", any::<i64>(), "[a-z]{0,3}").prop_map(|(c, n, extra)| {
                let mut m = serde_json::json!({"currency": c, "minor_units": n});
                if !extra.is_empty() {
                    m[extra] = serde_json::json!(1);
                }
                m
            }),
        ];
        let any_json = leaf.prop_recursive(2, 8, 4, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(J::Array),
                prop::collection::btree_map(
                    prop_oneof![
                        Just("currency".to_string()),
                        Just("minor_units".to_string()),
                        "[a-z]{1,4}"
                    ],
                    inner,
                    0..4
                )
                .prop_map(|m| J::Object(m.into_iter().collect())),
            ]
        });
        prop_oneof![any_json, amounts]
    }

    proptest! {
        /// Whatever the JSON, the visitor reads what the untagged reader read, and refuses
        /// what it refused.
        #[test]
        fn reads_like_the_untagged_reader(j in json()) {
            let text = j.to_string();
            let new = serde_json::from_str::<Value>(&text).ok();
            let old = serde_json::from_str::<Untagged>(&text).ok().map(Value::from);
            prop_assert_eq!(new, old, "{}", text);
        }
    }

    #[test]
    fn every_variant_round_trips() {
        for v in [
            Value::Text("Köln".into()),
            Value::Int(-42),
            Value::Int(i64::MAX),
            Value::Money(Money {
                currency: "EUR".into(),
                minor_units: 1999,
            }),
            Value::List(vec!["a".into(), "b".into()]),
            Value::List(Vec::new()),
        ] {
            let text = serde_json::to_string(&v).unwrap();
            assert_eq!(serde_json::from_str::<Value>(&text).unwrap(), v, "{text}");
        }
        assert!(serde_json::from_str::<Value>("1.5").is_err());
        assert!(serde_json::from_str::<Value>("null").is_err());
        assert!(serde_json::from_str::<Value>("18446744073709551615").is_err());
    }
}
