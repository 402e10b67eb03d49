//! The pure part of every local write: validation, defaults, field masks, lifecycles and the
//! per-field versions a write stamps. The store runs these inside its write transaction.

use crate::hlc::Hlc;
use crate::model::{Change, ChangeOp, DomainError, FieldMap, Record, RecordKind, Value};
use crate::schema::{self, FieldType};
use std::collections::BTreeMap;
use uuid::Uuid;

/// A reference the store must resolve before the write commits.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RefCheck {
    pub field: &'static str,
    pub id: Uuid,
    pub kinds: &'static [RecordKind],
}

/// Normalizes every field, rejecting unknown fields and bad values. Empty values are dropped.
pub fn normalize_fields(kind: RecordKind, input: FieldMap) -> Result<FieldMap, DomainError> {
    let mut out = FieldMap::new();
    for (name, value) in input {
        let spec = schema::field(kind, &name)
            .ok_or_else(|| DomainError::invalid(&name, format!("unknown field of {kind}")))?;
        if let Some(v) =
            schema::normalize(spec, value).map_err(|m| DomainError::invalid(&name, m))?
        {
            out.insert(name, v);
        }
    }
    Ok(out)
}

fn has(fields: &FieldMap, name: &str) -> bool {
    fields.contains_key(name)
}

fn require(fields: &FieldMap, name: &str) -> Result<(), DomainError> {
    if has(fields, name) {
        Ok(())
    } else {
        Err(DomainError::invalid(name, "is required"))
    }
}

/// The rules about which fields a complete record must have.
pub fn check_required(kind: RecordKind, fields: &FieldMap) -> Result<(), DomainError> {
    match kind {
        RecordKind::Account => require(fields, "name"),
        RecordKind::Contact => {
            if has(fields, "last_name") || has(fields, "email") {
                Ok(())
            } else {
                Err(DomainError::invalid(
                    "last_name",
                    "a contact needs a last name or an e-mail address",
                ))
            }
        }
        RecordKind::Lead => {
            if has(fields, "last_name") || has(fields, "company") {
                Ok(())
            } else {
                Err(DomainError::invalid(
                    "last_name",
                    "a lead needs a last name or a company",
                ))
            }
        }
        RecordKind::Opportunity => {
            require(fields, "name")?;
            require(fields, "account_id")?;
            require(fields, "stage")
        }
        RecordKind::ServiceCase => {
            require(fields, "subject")?;
            require(fields, "account_id")?;
            require(fields, "status")?;
            require(fields, "priority")
        }
        RecordKind::Activity => {
            require(fields, "related_id")?;
            require(fields, "channel")?;
            require(fields, "direction")?;
            require(fields, "occurred_at")
        }
    }
}

/// Defaults a new record gets when the caller leaves a field out.
fn apply_create_defaults(kind: RecordKind, fields: &mut FieldMap, now_ms: i64) {
    let mut default = |name: &str, v: Value| {
        fields.entry(name.to_string()).or_insert(v);
    };
    match kind {
        RecordKind::Lead => default("status", Value::Text("new".into())),
        RecordKind::ServiceCase => {
            default("status", Value::Text("new".into()));
            default("priority", Value::Text("normal".into()));
        }
        RecordKind::Activity => {
            default("occurred_at", Value::Int(now_ms));
        }
        _ => {}
    }
    if kind == RecordKind::Activity && !fields.contains_key("direction") {
        let internal = fields.get("channel").and_then(Value::as_text) == Some("note");
        fields.insert(
            "direction".into(),
            Value::Text(if internal { "internal" } else { "outbound" }.into()),
        );
    }
}

/// Case lifecycle: new → open → pending → resolved → closed, pending ↔ open, and a resolved
/// case may be reopened. Staying in the same status is always allowed.
pub fn case_transition_allowed(from: &str, to: &str) -> bool {
    from == to
        || matches!(
            (from, to),
            ("new", "open")
                | ("new", "pending")
                | ("new", "resolved")
                | ("open", "pending")
                | ("open", "resolved")
                | ("pending", "open")
                | ("pending", "resolved")
                | ("resolved", "closed")
                | ("resolved", "open")
        )
}

fn check_transition(
    kind: RecordKind,
    before: Option<&FieldMap>,
    after: &FieldMap,
) -> Result<(), DomainError> {
    if kind != RecordKind::ServiceCase {
        return Ok(());
    }
    let to = after.get("status").and_then(Value::as_text).unwrap_or("");
    match before {
        None => {
            if to == "new" || to == "open" {
                Ok(())
            } else {
                Err(DomainError::precondition(
                    "status",
                    format!("a new case starts as new or open, not {to}"),
                ))
            }
        }
        Some(before) => {
            let from = before
                .get("status")
                .and_then(Value::as_text)
                .unwrap_or("new");
            if case_transition_allowed(from, to) {
                Ok(())
            } else {
                Err(DomainError::precondition(
                    "status",
                    format!("a case cannot go from {from} to {to}"),
                ))
            }
        }
    }
}

/// The references a record holds, for the store to resolve.
pub fn references(kind: RecordKind, fields: &FieldMap) -> Vec<RefCheck> {
    schema::fields(kind)
        .iter()
        .filter_map(|spec| match spec.ty {
            FieldType::Ref(kinds) => fields
                .get(spec.name)
                .and_then(Value::as_text)
                .and_then(|t| Uuid::parse_str(t).ok())
                .map(|id| RefCheck {
                    field: spec.name,
                    id,
                    kinds,
                }),
            _ => None,
        })
        .collect()
}

/// A write ready for the store: the record as it will be stored and its change-log entry
/// (`seq` is assigned by the store).
#[derive(Clone, Debug, PartialEq)]
pub struct WritePlan {
    pub record: Record,
    pub change: Change,
    pub refs: Vec<RefCheck>,
}

/// Plans the creation of a record owned by `owner_org`.
pub fn plan_create(
    kind: RecordKind,
    id: Uuid,
    owner_org: &str,
    input: FieldMap,
    hlc: Hlc,
    now_ms: i64,
) -> Result<WritePlan, DomainError> {
    let mut fields = normalize_fields(kind, input)?;
    apply_create_defaults(kind, &mut fields, now_ms);
    check_required(kind, &fields)?;
    check_transition(kind, None, &fields)?;
    let versions = fields.keys().map(|k| (k.clone(), hlc.clone())).collect();
    let change = Change {
        seq: 0,
        record_id: id,
        kind,
        op: ChangeOp::Create,
        hlc: hlc.clone(),
        fields: fields
            .iter()
            .map(|(k, v)| (k.clone(), Some(v.clone())))
            .collect(),
        at_ms: now_ms,
    };
    let refs = references(kind, &fields);
    let record = Record {
        id,
        kind,
        owner_org: owner_org.to_string(),
        created_at_ms: now_ms,
        updated_at_ms: now_ms,
        deleted: None,
        seq: 0,
        fields,
        versions,
    };
    Ok(WritePlan {
        record,
        change,
        refs,
    })
}

/// Checks the paths of an update mask: known, unique-insensitive, not empty.
pub fn check_mask(kind: RecordKind, mask: &[String]) -> Result<Vec<&'static str>, DomainError> {
    if mask.is_empty() {
        return Err(DomainError::invalid(
            "update_mask",
            "must name at least one field",
        ));
    }
    let mut out = Vec::new();
    for path in mask {
        let spec = schema::field(kind, path.trim()).ok_or_else(|| {
            DomainError::invalid(
                "update_mask",
                format!("{path:?} is not a field of {kind} that can be updated"),
            )
        })?;
        if !out.contains(&spec.name) {
            out.push(spec.name);
        }
    }
    Ok(out)
}

/// Plans an update: only the fields named in `mask` change (set from `patch`, or cleared when
/// `patch` lacks them). Returns `None` when the update changes nothing, so a no-op does not
/// bump versions or the change log.
pub fn plan_update(
    current: &Record,
    mask: &[String],
    mut patch: FieldMap,
    hlc: Hlc,
    now_ms: i64,
) -> Result<Option<WritePlan>, DomainError> {
    let kind = current.kind;
    if current.is_deleted() {
        return Err(DomainError::NotFound {
            kind,
            id: current.id.to_string(),
        });
    }
    let paths = check_mask(kind, mask)?;
    let mut named = FieldMap::new();
    for p in &paths {
        if let Some(v) = patch.remove(*p) {
            named.insert((*p).to_string(), v);
        }
    }
    let named = normalize_fields(kind, named)?;
    let mut fields = current.fields.clone();
    let mut changed: BTreeMap<String, Option<Value>> = BTreeMap::new();
    for p in &paths {
        let new = named.get(*p).cloned();
        if fields.get(*p) != new.as_ref() {
            match &new {
                Some(v) => fields.insert((*p).to_string(), v.clone()),
                None => fields.remove(*p),
            };
            changed.insert((*p).to_string(), new);
        }
    }
    check_required(kind, &fields)?;
    check_transition(kind, Some(&current.fields), &fields)?;
    if changed.is_empty() {
        return Ok(None);
    }
    let mut versions = current.versions.clone();
    for k in changed.keys() {
        versions.insert(k.clone(), hlc.clone());
    }
    // Only references that changed need resolving again.
    let refs = references(kind, &fields)
        .into_iter()
        .filter(|r| changed.contains_key(r.field))
        .collect();
    let record = Record {
        fields,
        versions,
        updated_at_ms: now_ms,
        ..current.clone()
    };
    let change = Change {
        seq: 0,
        record_id: current.id,
        kind,
        op: ChangeOp::Update,
        hlc,
        fields: changed,
        at_ms: now_ms,
    };
    Ok(Some(WritePlan {
        record,
        change,
        refs,
    }))
}

/// Plans a delete: the record becomes a tombstone carrying the delete's version, so that sync
/// can propagate it; its field values stay until an erasure removes them.
pub fn plan_delete(current: &Record, hlc: Hlc, now_ms: i64) -> Result<WritePlan, DomainError> {
    if current.is_deleted() {
        return Err(DomainError::NotFound {
            kind: current.kind,
            id: current.id.to_string(),
        });
    }
    let record = Record {
        deleted: Some(hlc.clone()),
        updated_at_ms: now_ms,
        ..current.clone()
    };
    let change = Change {
        seq: 0,
        record_id: current.id,
        kind: current.kind,
        op: ChangeOp::Delete,
        hlc,
        fields: BTreeMap::new(),
        at_ms: now_ms,
    };
    Ok(WritePlan {
        record,
        change,
        refs: Vec::new(),
    })
}

/// Fields an erasure keeps: links to other records, which identify no person.
pub const ERASURE_KEEPS: &[&str] = &["account_id"];

/// Plans the erasure of a person (GDPR Art. 17): every field but the links to other records
/// is removed, each removal a versioned write, and the record becomes a tombstone that holds
/// no personal data. Only contacts and leads are persons; other records are deleted instead.
/// None: already erased (nothing personal left).
pub fn plan_erase(
    current: &Record,
    hlc: Hlc,
    now_ms: i64,
) -> Result<Option<WritePlan>, DomainError> {
    if !matches!(current.kind, RecordKind::Contact | RecordKind::Lead) {
        return Err(DomainError::precondition(
            "id",
            format!(
                "{} records are not persons; erasure applies to contacts and leads (delete others)",
                current.kind
            ),
        ));
    }
    let removed: Vec<String> = current
        .fields
        .keys()
        .filter(|f| !ERASURE_KEEPS.contains(&f.as_str()))
        .cloned()
        .collect();
    if removed.is_empty() && current.is_deleted() {
        return Ok(None);
    }
    let mut record = Record {
        deleted: Some(current.deleted.clone().unwrap_or_else(|| hlc.clone())),
        updated_at_ms: now_ms,
        ..current.clone()
    };
    let mut fields = BTreeMap::new();
    for f in &removed {
        record.fields.remove(f);
        record.versions.insert(f.clone(), hlc.clone());
        fields.insert(f.clone(), None);
    }
    let change = Change {
        seq: 0,
        record_id: current.id,
        kind: current.kind,
        op: ChangeOp::Delete,
        hlc,
        fields,
        at_ms: now_ms,
    };
    Ok(Some(WritePlan {
        record,
        change,
        refs: Vec::new(),
    }))
}

mod index;
pub use index::*;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Money;
    use proptest::prelude::*;

    fn hlc(ms: u64) -> Hlc {
        Hlc::new(ms, 0, "acme/n1")
    }

    fn fm(pairs: &[(&str, Value)]) -> FieldMap {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect()
    }

    fn t(s: &str) -> Value {
        Value::Text(s.into())
    }

    const ACC: &str = "0190f0c4-8a6e-7b3c-9d1e-000000000001";

    #[test]
    fn required_fields_name_the_field() {
        let id = Uuid::now_v7();
        let err = plan_create(
            RecordKind::Account,
            id,
            "acme",
            fm(&[("domain", t("acme.example"))]),
            hlc(1),
            1,
        )
        .unwrap_err();
        assert_eq!(err, DomainError::invalid("name", "is required"));
        let err = plan_create(
            RecordKind::Contact,
            id,
            "acme",
            fm(&[("first_name", t("Anna"))]),
            hlc(1),
            1,
        )
        .unwrap_err();
        assert!(matches!(err, DomainError::Invalid { ref field, .. } if field == "last_name"));
        assert!(
            plan_create(
                RecordKind::Contact,
                id,
                "acme",
                fm(&[("email", t("a@b.example"))]),
                hlc(1),
                1
            )
            .is_ok()
        );
        let err = plan_create(
            RecordKind::Opportunity,
            id,
            "acme",
            fm(&[("name", t("Deal")), ("stage", t("proposal"))]),
            hlc(1),
            1,
        )
        .unwrap_err();
        assert!(matches!(err, DomainError::Invalid { ref field, .. } if field == "account_id"));
        let err = plan_create(
            RecordKind::ServiceCase,
            id,
            "acme",
            fm(&[("account_id", t(ACC))]),
            hlc(1),
            1,
        )
        .unwrap_err();
        assert!(matches!(err, DomainError::Invalid { ref field, .. } if field == "subject"));
        let err = plan_create(
            RecordKind::Account,
            id,
            "acme",
            fm(&[("name", t("A")), ("colour", t("red"))]),
            hlc(1),
            1,
        )
        .unwrap_err();
        assert!(matches!(err, DomainError::Invalid { ref field, .. } if field == "colour"));
    }

    #[test]
    fn create_defaults_and_versions() {
        let id = Uuid::now_v7();
        let p = plan_create(
            RecordKind::ServiceCase,
            id,
            "acme",
            fm(&[("account_id", t(ACC)), ("subject", t("Broken"))]),
            hlc(7),
            7,
        )
        .unwrap();
        assert_eq!(p.record.text("status"), Some("new"));
        assert_eq!(p.record.text("priority"), Some("normal"));
        assert!(
            p.record
                .fields
                .keys()
                .all(|k| p.record.versions[k] == hlc(7))
        );
        assert_eq!(
            p.refs,
            vec![RefCheck {
                field: "account_id",
                id: Uuid::parse_str(ACC).unwrap(),
                kinds: &[RecordKind::Account]
            }]
        );
        let a = plan_create(
            RecordKind::Activity,
            id,
            "acme",
            fm(&[("related_id", t(ACC)), ("channel", t("note"))]),
            hlc(7),
            99,
        )
        .unwrap();
        assert_eq!(a.record.text("direction"), Some("internal"));
        assert_eq!(a.record.fields["occurred_at"], Value::Int(99));
    }

    #[test]
    fn case_lifecycle() {
        let id = Uuid::now_v7();
        let err = plan_create(
            RecordKind::ServiceCase,
            id,
            "acme",
            fm(&[
                ("account_id", t(ACC)),
                ("subject", t("x")),
                ("status", t("closed")),
            ]),
            hlc(1),
            1,
        )
        .unwrap_err();
        assert!(matches!(err, DomainError::FailedPrecondition { .. }));
        let mut rec = plan_create(
            RecordKind::ServiceCase,
            id,
            "acme",
            fm(&[("account_id", t(ACC)), ("subject", t("x"))]),
            hlc(1),
            1,
        )
        .unwrap()
        .record;
        let status = vec!["status".to_string()];
        let step = |rec: &Record, to: &str, ms: u64| {
            plan_update(rec, &status, fm(&[("status", t(to))]), hlc(ms), ms as i64)
        };
        assert!(
            matches!(step(&rec, "closed", 2).unwrap_err(), DomainError::FailedPrecondition { ref field, .. } if field == "status")
        );
        for (i, to) in ["open", "pending", "resolved", "open", "resolved", "closed"]
            .iter()
            .enumerate()
        {
            rec = step(&rec, to, 10 + i as u64).unwrap().unwrap().record;
        }
        assert!(step(&rec, "open", 30).is_err());
        assert!(case_transition_allowed("resolved", "open"));
        assert!(!case_transition_allowed("closed", "open"));
    }

    #[test]
    fn mask_changes_only_named_fields() {
        let id = Uuid::now_v7();
        let rec = plan_create(
            RecordKind::Opportunity,
            id,
            "acme",
            fm(&[
                ("account_id", t(ACC)),
                ("name", t("Deal")),
                ("stage", t("proposal")),
                ("probability", Value::Int(40)),
            ]),
            hlc(1),
            1,
        )
        .unwrap()
        .record;
        // The patch carries a new name too, but only "stage" is in the mask.
        let patch = fm(&[("name", t("Other")), ("stage", t("negotiation"))]);
        let p = plan_update(&rec, &["stage".into()], patch, hlc(5), 5)
            .unwrap()
            .unwrap();
        assert_eq!(p.record.text("name"), Some("Deal"));
        assert_eq!(p.record.text("stage"), Some("negotiation"));
        assert_eq!(p.record.versions["stage"], hlc(5));
        assert_eq!(p.record.versions["name"], hlc(1));
        assert_eq!(p.change.fields.keys().collect::<Vec<_>>(), vec!["stage"]);
        // A masked field absent from the patch is cleared, and the clear is versioned.
        let p = plan_update(&rec, &["probability".into()], FieldMap::new(), hlc(6), 6)
            .unwrap()
            .unwrap();
        assert!(!p.record.fields.contains_key("probability"));
        assert_eq!(p.record.versions["probability"], hlc(6));
        assert_eq!(p.change.fields["probability"], None);
        // Clearing a required field is refused.
        assert!(plan_update(&rec, &["name".into()], FieldMap::new(), hlc(7), 7).is_err());
        // Setting the same value is a no-op.
        assert!(
            plan_update(
                &rec,
                &["stage".into()],
                fm(&[("stage", t("proposal"))]),
                hlc(8),
                8
            )
            .unwrap()
            .is_none()
        );
        // Unknown and empty masks are refused.
        assert!(
            matches!(plan_update(&rec, &["meta.owner_org".into()], FieldMap::new(), hlc(9), 9).unwrap_err(), DomainError::Invalid { ref field, .. } if field == "update_mask")
        );
        assert!(plan_update(&rec, &[], FieldMap::new(), hlc(9), 9).is_err());
    }

    #[test]
    fn delete_tombstones() {
        let id = Uuid::now_v7();
        let rec = plan_create(
            RecordKind::Account,
            id,
            "acme",
            fm(&[("name", t("A"))]),
            hlc(1),
            1,
        )
        .unwrap()
        .record;
        let d = plan_delete(&rec, hlc(2), 2).unwrap();
        assert_eq!(d.record.deleted, Some(hlc(2)));
        assert!(plan_delete(&d.record, hlc(3), 3).is_err());
        assert!(
            plan_update(
                &d.record,
                &["name".into()],
                fm(&[("name", t("B"))]),
                hlc(3),
                3
            )
            .is_err()
        );
    }

    #[test]
    fn search_text_and_needles() {
        let f = fm(&[
            ("name", t("Müller GmbH")),
            ("phone", t("+49 (30) 1234-567")),
            ("industry", t("Steel")),
        ]);
        let s = search_text(RecordKind::Account, &f);
        assert!(s.contains("müller gmbh"));
        assert!(s.contains("49301234567"));
        assert!(!s.contains("steel"));
        assert_eq!(
            search_needles(" 030 1234 ").unwrap(),
            vec!["030 1234".to_string(), "0301234".to_string()]
        );
        assert!(search_needles("a").is_err());
        assert!(search_needles("ab\0").is_err());
    }

    fn arb_opportunity_patch() -> impl Strategy<Value = FieldMap> {
        (
            proptest::option::of("[a-zA-Z ]{0,20}"),
            proptest::option::of(prop::sample::select(schema::OPPORTUNITY_STAGES.to_vec())),
            proptest::option::of(-5i64..120),
            proptest::option::of(-10i64..1_000_000),
        )
            .prop_map(|(name, stage, prob, amount)| {
                let mut m = FieldMap::new();
                if let Some(n) = name {
                    m.insert("name".into(), Value::Text(n));
                }
                if let Some(s) = stage {
                    m.insert("stage".into(), Value::Text(s.into()));
                }
                if let Some(p) = prob {
                    m.insert("probability".into(), Value::Int(p));
                }
                if let Some(a) = amount {
                    m.insert(
                        "amount".into(),
                        Value::Money(Money {
                            currency: "EUR".into(),
                            minor_units: a,
                        }),
                    );
                }
                m
            })
    }

    proptest! {
        /// Whatever the mask and patch, an update either fails without effect or changes exactly
        /// the named fields, and every changed field carries the new version.
        #[test]
        fn update_touches_only_masked_fields(patch in arb_opportunity_patch(), mask in proptest::sample::subsequence(vec!["name", "stage", "probability", "amount", "close_date"], 0..5)) {
            let id = Uuid::now_v7();
            let rec = plan_create(RecordKind::Opportunity, id, "acme",
                fm(&[("account_id", t(ACC)), ("name", t("Deal")), ("stage", t("proposal")), ("probability", Value::Int(40))]), hlc(1), 1).unwrap().record;
            let mask: Vec<String> = mask.into_iter().map(String::from).collect();
            match plan_update(&rec, &mask, patch, hlc(2), 2) {
                Err(_) | Ok(None) => {}
                Ok(Some(p)) => {
                    for (k, v) in &p.record.fields {
                        if !mask.contains(k) { prop_assert_eq!(Some(v), rec.fields.get(k)); }
                    }
                    for k in p.change.fields.keys() {
                        prop_assert!(mask.contains(k));
                        prop_assert_eq!(&p.record.versions[k], &hlc(2));
                    }
                    prop_assert!(check_required(RecordKind::Opportunity, &p.record.fields).is_ok());
                    if let Some(Value::Int(pr)) = p.record.fields.get("probability") { prop_assert!((0..=100).contains(pr)); }
                    if let Some(Value::Money(m)) = p.record.fields.get("amount") { prop_assert!(m.minor_units >= 0); }
                }
            }
        }
    }
}
