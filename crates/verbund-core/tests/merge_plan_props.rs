//! Property tests of the owner's merge planning (`verbund_core::sync::plan_merge`), the
//! pure decision the owner's writer makes on a partner's proposed change:
//!
//! 1. A record the partner does not see, or an edit of a field it may not write, is
//!    rejected whole: nothing is written, no conflict is kept.
//! 2. Otherwise every field ends at the higher of its current and the proposed version, the
//!    record's versions never go down, and every concurrent edit that lost is kept as a
//!    conflict with both versions; an edit based on the current version is applied without
//!    one.
//! 3. The verdict says what happened: applied, applied with a conflict, or (only for the
//!    reasons in 1) rejected, with a reason that names fields, never values.

use std::collections::BTreeSet;

use proptest::prelude::*;
use uuid::Uuid;
use verbund_core::sync::{FieldEdit, VerdictOutcome, plan_merge};
use verbund_core::{FieldMap, Hlc, Record, RecordKind, Value, VersionMap};

/// Account fields with free text (any value is valid), besides the required name.
const FIELDS: [&str; 3] = ["city", "industry", "description"];

fn current(versions: &[(usize, u64)]) -> Record {
    let mut fields = FieldMap::new();
    let mut vmap = VersionMap::new();
    fields.insert("name".into(), Value::Text("Kunde AG".into()));
    vmap.insert("name".into(), Hlc::new(1, 0, "acme/n"));
    for (f, ms) in versions {
        fields.insert(FIELDS[*f].into(), Value::Text(format!("acme {ms}")));
        vmap.insert(FIELDS[*f].into(), Hlc::new(*ms, 0, "acme/n"));
    }
    Record {
        id: Uuid::nil(),
        kind: RecordKind::Account,
        owner_org: "acme".into(),
        created_at_ms: 0,
        updated_at_ms: 0,
        deleted: None,
        seq: 1,
        fields,
        versions: vmap,
    }
}

prop_compose! {
    fn arb_case()(
        cur in prop::collection::vec((0..3usize, 1..50u64), 0..3),
        edits in prop::collection::btree_map(0..3usize, (1..100u64, any::<bool>()), 1..4),
        writable in prop::collection::btree_set(0..3usize, 0..4),
        visible in prop::bool::weighted(0.85),
    ) -> (Vec<(usize, u64)>, Vec<(usize, u64, bool)>, BTreeSet<usize>, bool) {
        (cur, edits.into_iter().map(|(f, (ms, based))| (f, ms, based)).collect(), writable, visible)
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn plan_merge_keeps_the_higher_version_and_every_loser((cur, edits, writable, visible) in arb_case()) {
        let rec = current(&cur);
        let writable_names: BTreeSet<String> = writable.iter().map(|f| FIELDS[*f].to_string()).collect();
        let proposed: Vec<FieldEdit> = edits
            .iter()
            .map(|(f, ms, based)| {
                // Based on what the partner saw: the current version (then stamped above it,
                // as every node's clock does), or none it knew of.
                let base = if *based { rec.versions.get(FIELDS[*f]).cloned() } else { None };
                let ms = base.as_ref().map_or(*ms, |b| b.physical_ms + ms);
                FieldEdit {
                    field: FIELDS[*f].into(),
                    value: Some(Value::Text(format!("Wert {ms} §"))),
                    version: Hlc::new(ms, 0, "globex/n"),
                    base,
                }
            })
            .collect();
        let plan = plan_merge(&rec, visible, &writable_names, "globex", &proposed, 7).unwrap();
        let allowed = visible && proposed.iter().all(|e| writable_names.contains(&e.field));
        if !allowed {
            prop_assert_eq!(plan.outcome, VerdictOutcome::Rejected);
            prop_assert!(plan.write.is_none() && plan.conflicts.is_empty());
            prop_assert!(!plan.reason.contains('§'), "no values in {}", plan.reason);
            return Ok(());
        }
        let result = plan.write.as_ref().map(|w| &w.record).unwrap_or(&rec);
        for e in &proposed {
            let before = rec.versions.get(&e.field);
            let after = &result.versions[&e.field];
            let highest = before.map_or(e.version.clone(), |b| b.clone().max(e.version.clone()));
            prop_assert_eq!(after, &highest, "{} ends at the higher version", e.field);
            let concurrent = before.is_some_and(|b| *b != e.version && e.base.as_ref() != Some(b));
            let lost_or_overwritten = plan.conflicts.iter().any(|c| c.field == e.field);
            prop_assert_eq!(concurrent, lost_or_overwritten, "{}: conflict iff concurrent", e.field);
        }
        for (name, v) in &rec.versions {
            prop_assert!(result.versions[name] >= *v, "{} went back", name);
        }
        for c in &plan.conflicts {
            prop_assert!(c.winner.version > c.loser.version);
            prop_assert_eq!(&result.versions[&c.field], &c.winner.version);
        }
        let expected = if plan.conflicts.is_empty() { VerdictOutcome::Applied } else { VerdictOutcome::AppliedWithConflict };
        prop_assert_eq!(plan.outcome, expected);
    }
}
