//! Property tests of the pure federation merge rules in `verbund_core::sync`:
//!
//! 1. `join` is commutative, associative and idempotent, and per field it is the higher version.
//! 2. `merge_edit` gives the same record whatever order a set of edits arrives in: per field
//!    the highest version, and every overwritten or rejected version is accounted for.
//! 3. A simulated owner-mediated sync between an owner and two partners over a network that
//!    reorders, duplicates and delays messages converges, and loses no edit silently. It even
//!    reorders one partner's pushes, which the real system sends in the order they were made.
//! 4. In that simulation a partner's replica never goes back in time: neither its shadow nor
//!    what it shows loses a field or falls to an older version of one, however stale or
//!    repeated the owner states it receives (each carries the owner's sequence number).
//!
//! Values are a deterministic function of (field, version), so two copies holding the same
//! version of a field always hold the same value, as they do in the federation.

use std::collections::hash_map::DefaultHasher;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::hash::{Hash, Hasher};

use proptest::prelude::*;
use proptest::sample::Index;
use verbund_core::sync::{self, Conflict, EditOutcome, FieldEdit};
use verbund_core::{FieldMap, Hlc, HlcClock, Value, VersionMap};

const FIELDS: [&str; 3] = ["name", "phone", "stage"];
const OWNER: &str = "acme/n";
const PARTNERS: [&str; 2] = ["globex/n", "fixit/n"];
const NODES: [&str; 3] = [OWNER, PARTNERS[0], PARTNERS[1]];
/// Large enough that `receive` never refuses a version in these tests.
const MAX_SKEW_MS: u64 = 1_000_000;

type State = (FieldMap, VersionMap);

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: 128,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

/// The value a field holds at `version`: a clear (None) for some versions, else a text that
/// names the field and the version. Deterministic, so one version means one value.
fn value_of(field: &str, version: &Hlc) -> Option<Value> {
    let mut h = DefaultHasher::new();
    (field, version).hash(&mut h);
    if h.finish().is_multiple_of(5) {
        None
    } else {
        Some(Value::Text(format!("{field}@{version}")))
    }
}

/// Writes `field` at `version` (with its deterministic value) into a record's maps.
fn write(state: &mut State, field: &str, version: &Hlc) {
    match value_of(field, version) {
        Some(v) => {
            state.0.insert(field.to_string(), v);
        }
        None => {
            state.0.remove(field);
        }
    }
    state.1.insert(field.to_string(), version.clone());
}

/// A record whose every field holds the deterministic value of its version.
fn state_from(versions: &BTreeMap<String, Hlc>) -> State {
    let mut state = (FieldMap::new(), VersionMap::new());
    for (field, version) in versions {
        write(&mut state, field, version);
    }
    state
}

/// Versions at 0..50 ms, half of them bunched in the first few ms so that equal milliseconds
/// (ties broken by counter, then node) and equal versions come up often.
fn hlc_strategy() -> impl Strategy<Value = Hlc> {
    let ms = prop_oneof![0u64..4, 0u64..50];
    (ms, 0u32..3, 0usize..NODES.len()).prop_map(|(ms, c, n)| Hlc::new(ms, c, NODES[n]))
}

fn field_strategy() -> impl Strategy<Value = String> {
    prop::sample::select(FIELDS.to_vec()).prop_map(str::to_string)
}

fn state_strategy() -> impl Strategy<Value = State> {
    prop::collection::btree_map(field_strategy(), hlc_strategy(), 0..=FIELDS.len())
        .prop_map(|versions| state_from(&versions))
}

fn j(a: &State, b: &State) -> State {
    sync::join((&a.0, &a.1), (&b.0, &b.1))
}

// The properties, by what they look at; every module uses the states and strategies above.
mod merge;
mod simulation;
