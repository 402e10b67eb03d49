//! 1. `join` and 2. `merge_edit` (see main.rs).

use super::*;

// ---------------------------------------------------------------------------------------------
// 1. join
// ---------------------------------------------------------------------------------------------

proptest! {
    #![proptest_config(config())]

    #[test]
    fn join_is_commutative(a in state_strategy(), b in state_strategy()) {
        prop_assert_eq!(j(&a, &b), j(&b, &a));
    }

    #[test]
    fn join_is_associative(a in state_strategy(), b in state_strategy(), c in state_strategy()) {
        prop_assert_eq!(j(&j(&a, &b), &c), j(&a, &j(&b, &c)));
    }

    #[test]
    fn join_is_idempotent(a in state_strategy(), b in state_strategy()) {
        prop_assert_eq!(j(&a, &a), a.clone());
        let ab = j(&a, &b);
        prop_assert_eq!(j(&ab, &b), ab.clone());
        prop_assert_eq!(j(&ab, &a), ab.clone());
    }

    #[test]
    fn join_takes_the_higher_version_of_every_field(a in state_strategy(), b in state_strategy()) {
        let mut expected = a.1.clone();
        for (field, version) in &b.1 {
            let e = expected.entry(field.clone()).or_insert_with(|| version.clone());
            if version > e {
                *e = version.clone();
            }
        }
        prop_assert_eq!(j(&a, &b), state_from(&expected));
    }
}

// ---------------------------------------------------------------------------------------------
// 2. merge_edit order independence
// ---------------------------------------------------------------------------------------------

/// A starting record and edits on it, each edit at a version no other edit (or the start) of
/// its field has, based on None or on a version of its field that came before it (the start's
/// or an earlier edit's).
fn edits_strategy() -> impl Strategy<Value = (State, Vec<FieldEdit>)> {
    let raw_edit = (
        field_strategy(),
        hlc_strategy(),
        prop::option::of(any::<Index>()),
    );
    (state_strategy(), prop::collection::vec(raw_edit, 0..12)).prop_map(|(start, raw)| {
        let mut seen: BTreeMap<String, Vec<Hlc>> = start
            .1
            .iter()
            .map(|(f, v)| (f.clone(), vec![v.clone()]))
            .collect();
        let mut edits = Vec::new();
        for (field, version, base_pick) in raw {
            let earlier = seen.entry(field.clone()).or_default();
            if earlier.contains(&version) {
                continue;
            }
            let base = match base_pick {
                Some(i) if !earlier.is_empty() => Some(earlier[i.index(earlier.len())].clone()),
                _ => None,
            };
            earlier.push(version.clone());
            edits.push(FieldEdit {
                value: value_of(&field, &version),
                field,
                version,
                base,
            });
        }
        (start, edits)
    })
}

/// Merges `edits` in order into `start`; checks every outcome against the rules and that no
/// version vanished without a trace; returns the final record and the conflicts.
fn merge_all(start: &State, edits: &[FieldEdit]) -> Result<(State, Vec<Conflict>), TestCaseError> {
    let mut state = start.clone();
    let mut conflicts = Vec::new();
    // (field, version) overwritten by an applied edit whose author had that version as base.
    let mut overwritten = BTreeSet::new();
    for edit in edits {
        let before = state.1.get(&edit.field).cloned();
        let outcome = sync::merge_edit(&mut state.0, &mut state.1, edit);
        let after = state.1.get(&edit.field).cloned();
        match outcome {
            EditOutcome::Applied => {
                prop_assert_eq!(after.as_ref(), Some(&edit.version));
                if let Some(prev) = before {
                    prop_assert_eq!(
                        edit.base.as_ref(),
                        Some(&prev),
                        "applied over an unseen version"
                    );
                    prop_assert!(edit.version > prev);
                    overwritten.insert((edit.field.clone(), prev));
                }
            }
            EditOutcome::Duplicate => prop_assert_eq!(&before, &after),
            EditOutcome::Conflict {
                incoming_won,
                conflict,
            } => {
                prop_assert!(conflict.winner.version > conflict.loser.version);
                prop_assert_eq!(&conflict.field, &edit.field);
                let incoming = if incoming_won {
                    &conflict.winner
                } else {
                    &conflict.loser
                };
                prop_assert_eq!(&incoming.version, &edit.version);
                prop_assert_eq!(&incoming.value, &edit.value);
                prop_assert_eq!(after.as_ref(), Some(&conflict.winner.version));
                conflicts.push(conflict);
            }
        }
    }
    // Nothing silently lost: every version is current, a conflict's loser, or was seen (as its
    // base) by the author of an edit that replaced it.
    let all = start
        .1
        .iter()
        .map(|(f, v)| (f.clone(), v.clone()))
        .chain(edits.iter().map(|e| (e.field.clone(), e.version.clone())));
    for (field, version) in all {
        let kept = state.1.get(&field) == Some(&version)
            || conflicts
                .iter()
                .any(|c| c.field == field && c.loser.version == version)
            || overwritten.contains(&(field.clone(), version.clone()));
        prop_assert!(kept, "{field} at {version} vanished");
    }
    Ok((state, conflicts))
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn merge_edit_is_order_independent(
        (start, edits, order_a, order_b) in edits_strategy().prop_flat_map(|(start, edits)| {
            let n = edits.len();
            (
                Just(start),
                Just(edits),
                Just((0..n).collect::<Vec<_>>()).prop_shuffle(),
                Just((0..n).collect::<Vec<_>>()).prop_shuffle(),
            )
        })
    ) {
        let in_order = |order: &[usize]| order.iter().map(|&i| edits[i].clone()).collect::<Vec<_>>();
        let (a, _) = merge_all(&start, &in_order(&order_a))?;
        let (b, _) = merge_all(&start, &in_order(&order_b))?;
        prop_assert_eq!(&a, &b);

        // Per field, the highest version among the start and the edits, with its value.
        let mut highest = start.1.clone();
        for e in &edits {
            let h = highest.entry(e.field.clone()).or_insert_with(|| e.version.clone());
            if e.version > *h {
                *h = e.version.clone();
            }
        }
        prop_assert_eq!(a, state_from(&highest));
    }
}
