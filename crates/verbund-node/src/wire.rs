//! The federation protocol's wire messages and the store's sync types, both ways: versions,
//! values, a record's projected state, stream items. Shared by the owner side
//! (`federation`) and the partner side (`links`); checks what it decodes (known fields,
//! well-formed ids and versions).

use std::collections::BTreeSet;

use tonic::Status;
use uuid::Uuid;
use verbund_core::{Hlc, Record, Value};
use verbund_store::{ReplicaItem, ReplicaState};

use crate::convert;
use crate::error::NodeError;
use crate::pb;

pub use crate::convert::hlc_to_pb;

pub fn hlc_from_pb(field: &str, h: Option<&pb::Hlc>) -> Result<Hlc, Status> {
    let h = h.ok_or_else(|| convert::invalid(field, "is required"))?;
    if h.node_id.is_empty() || h.node_id.len() > 200 {
        return Err(convert::invalid(
            field,
            "node_id must be 1 to 200 characters",
        ));
    }
    Ok(Hlc::new(h.physical_ms, h.counter, h.node_id.clone()))
}

pub fn value_to_pb(v: &Value) -> pb::FieldValue {
    use pb::field_value::Value as V;
    pb::FieldValue {
        value: Some(match v {
            Value::Text(s) => V::Text(s.clone()),
            Value::Int(i) => V::Int(*i),
            Value::Money(m) => V::Money(pb::Money {
                currency_code: m.currency.clone(),
                minor_units: m.minor_units,
            }),
            Value::List(l) => V::List(pb::StringList { items: l.clone() }),
        }),
    }
}

pub fn value_from_pb(v: Option<&pb::FieldValue>) -> Option<Value> {
    use pb::field_value::Value as V;
    Some(match v?.value.as_ref()? {
        V::Text(s) => Value::Text(s.clone()),
        V::Int(i) => Value::Int(*i),
        V::Money(m) => Value::Money(verbund_core::Money {
            currency: m.currency_code.clone(),
            minor_units: m.minor_units,
        }),
        V::List(l) => Value::List(l.items.clone()),
    })
}

/// The owner's projection of `rec` for a partner, on the wire.
pub fn state_to_pb(rec: &Record, writable: &BTreeSet<String>) -> pb::RecordState {
    state_to_pb_where(rec, |_| true, writable)
}

/// `state_to_pb(&project(rec, readable), writable)` without copying the record first.
pub fn projected_state_to_pb(
    rec: &Record,
    readable: &BTreeSet<String>,
    writable: &BTreeSet<String>,
) -> pb::RecordState {
    state_to_pb_where(rec, |name| readable.contains(name), writable)
}

fn state_to_pb_where(
    rec: &Record,
    shown: impl Fn(&str) -> bool,
    writable: &BTreeSet<String>,
) -> pb::RecordState {
    pb::RecordState {
        id: rec.id.to_string(),
        kind: convert::kind_to_pb(rec.kind) as i32,
        owner_org: rec.owner_org.clone(),
        create_time_ms: rec.created_at_ms,
        update_time_ms: rec.updated_at_ms,
        fields: rec
            .versions
            .iter()
            .filter(|(name, _)| shown(name))
            .map(|(name, version)| pb::VersionedField {
                name: name.clone(),
                value: rec.fields.get(name).map(value_to_pb),
                version: Some(hlc_to_pb(version)),
            })
            .collect(),
        writable: writable.iter().cloned().collect(),
        deleted: rec.deleted.as_ref().map(hlc_to_pb),
        owner_seq: rec.seq,
    }
}

/// A record state received from `owner`; fields the schema does not know are refused.
pub fn state_from_pb(owner: &str, st: &pb::RecordState) -> Result<ReplicaState, Status> {
    let id = Uuid::parse_str(&st.id).map_err(|_| convert::invalid("record.id", "not a UUID"))?;
    let kind = convert::kind_from_pb("record.kind", st.kind)?;
    if st.owner_org != owner {
        return Err(convert::invalid(
            "record.owner_org",
            format!("{} sent a record of {}", owner, st.owner_org),
        ));
    }
    let names: Vec<String> = st.fields.iter().map(|f| f.name.clone()).collect();
    // A tombstone carries no fields at all; a live state names only fields we know.
    if !names.is_empty() {
        // The domain's status for an unknown field, as every handler sends it.
        verbund_core::write::check_mask(kind, &names).map_err(NodeError::from)?;
    }
    let mut fields = verbund_core::FieldMap::new();
    let mut versions = verbund_core::VersionMap::new();
    for f in &st.fields {
        versions.insert(
            f.name.clone(),
            hlc_from_pb("record.fields.version", f.version.as_ref())?,
        );
        if let Some(v) = value_from_pb(f.value.as_ref()) {
            fields.insert(f.name.clone(), v);
        }
    }
    Ok(ReplicaState {
        id,
        kind,
        owner_org: owner.to_string(),
        created_at_ms: st.create_time_ms,
        updated_at_ms: st.update_time_ms,
        fields,
        versions,
        writable: st.writable.clone(),
        owner_seq: st.owner_seq,
        deleted: st
            .deleted
            .as_ref()
            .map(|d| hlc_from_pb("record.deleted", Some(d)))
            .transpose()?,
    })
}

pub fn item_to_store(owner: &str, item: &pb::SyncItem) -> Result<ReplicaItem, Status> {
    let parse =
        |s: &str| Uuid::parse_str(s).map_err(|_| convert::invalid("record_id", "not a UUID"));
    match item.item.as_ref() {
        Some(pb::sync_item::Item::Upsert(st)) => Ok(ReplicaItem::Upsert(state_from_pb(owner, st)?)),
        Some(pb::sync_item::Item::Revoke(r)) => Ok(ReplicaItem::Revoke {
            id: parse(&r.record_id)?,
        }),
        Some(pb::sync_item::Item::Erase(e)) => Ok(ReplicaItem::Erase {
            id: parse(&e.record_id)?,
        }),
        None => Err(convert::invalid("item", "is empty")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use verbund_core::access::project;
    use verbund_core::{Hlc, Value};

    #[test]
    fn a_projection_built_in_place_is_the_projected_record_s() {
        let mut rec = Record {
            id: Uuid::now_v7(),
            kind: verbund_core::RecordKind::Account,
            owner_org: "acme".into(),
            created_at_ms: 1,
            updated_at_ms: 2,
            deleted: None,
            seq: 7,
            fields: Default::default(),
            versions: Default::default(),
        };
        for (i, name) in ["city", "name", "phone", "website"].iter().enumerate() {
            rec.fields
                .insert(name.to_string(), Value::Text(format!("{name} {i}")));
            rec.versions
                .insert(name.to_string(), Hlc::new(10 + i as u64, 0, "acme/node1"));
        }
        // A version without a value (a cleared field) counts as well.
        rec.versions
            .insert("domain".into(), Hlc::new(20, 1, "acme/node1"));
        let readable: BTreeSet<String> = ["name", "domain", "website"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let writable: BTreeSet<String> = ["name".to_string()].into();
        let projected = project(&rec, &readable);
        assert_eq!(
            projected_state_to_pb(&rec, &readable, &writable),
            state_to_pb(&projected, &writable)
        );
        assert_eq!(
            verbund_core::sync::record_digest_of(
                rec.versions.iter().filter(|(n, _)| readable.contains(*n)),
                false
            ),
            verbund_core::sync::record_digest(&projected.versions, false)
        );
    }
}
