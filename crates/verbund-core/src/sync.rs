//! The pure rules of federation sync: how the owner merges a partner's proposed field edits,
//! how a replica takes in the owner's state, how pending local edits show on a replica, and
//! the digests anti-entropy compares. No I/O.
//!
//! The owner is the merge point for its records. Every field carries a hybrid-logical-clock
//! version (node id breaks ties), and the merged value of a field is always the one with the
//! highest version, whatever order edits arrive in; so every copy that takes the owner's
//! state converges. An edit that is concurrent with the current value (someone else changed
//! the field since the version the proposer based its edit on) loses or wins by version, and
//! the loser is returned as a [`Conflict`] for the store to keep: nothing is dropped silently.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::hlc::Hlc;

use crate::model::{
    Change, ChangeOp, DomainError, FieldMap, Record, RecordKind, Value, VersionMap,
};

/// The version of the federation protocol this code speaks.
/// 2: share rules stream as snapshots (`snapshot_after`); a version-1 partner would take a
/// snapshot's first batch as the whole of it.
pub const PROTOCOL_VERSION: u32 = 2;

/// Number of anti-entropy buckets (records fall into one by a byte of their id).
pub const DIGEST_BUCKETS: usize = 256;

/// A field's value (None: cleared) and version at one copy.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FieldState {
    pub value: Option<Value>,
    pub version: Hlc,
}

/// One field change a partner proposes: the new value, the version the partner stamped it
/// with, and the version of the field the partner's edit was based on (None: the field had
/// never been written when the partner edited it).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FieldEdit {
    pub field: String,
    pub value: Option<Value>,
    pub version: Hlc,
    pub base: Option<Hlc>,
}

/// What merging one edit did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EditOutcome {
    /// The field is already at this version (a redelivery): nothing changes.
    Duplicate,
    /// Nobody changed the field since the proposer's base: the edit is taken.
    Applied,
    /// Concurrent with the current value. The higher version won (`incoming_won` says whose);
    /// the loser is kept in the conflict.
    Conflict {
        incoming_won: bool,
        conflict: Conflict,
    },
}

/// A concurrent edit that lost, with the value that won: kept for a person to review.
/// The origins are the nodes in the versions.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Conflict {
    pub field: String,
    pub winner: FieldState,
    pub loser: FieldState,
}

/// The current state of `field` in a record's maps (None: never written).
pub fn field_state(fields: &FieldMap, versions: &VersionMap, field: &str) -> Option<FieldState> {
    versions.get(field).map(|v| FieldState {
        value: fields.get(field).cloned(),
        version: v.clone(),
    })
}

fn set_field(fields: &mut FieldMap, versions: &mut VersionMap, field: &str, state: FieldState) {
    match state.value {
        Some(v) => {
            fields.insert(field.to_string(), v);
        }
        None => {
            fields.remove(field);
        }
    }
    versions.insert(field.to_string(), state.version);
}

/// Merges one proposed edit into a record's fields and versions, at the owner.
///
/// The result of the field is the higher of the current and the incoming version in every
/// case, so the final state does not depend on the order edits arrive in. An edit whose base
/// is the current version (and which is newer) is simply applied; otherwise it is concurrent
/// and the loser becomes a conflict.
pub fn merge_edit(
    fields: &mut FieldMap,
    versions: &mut VersionMap,
    edit: &FieldEdit,
) -> EditOutcome {
    let incoming = FieldState {
        value: edit.value.clone(),
        version: edit.version.clone(),
    };
    let Some(current) = field_state(fields, versions, &edit.field) else {
        set_field(fields, versions, &edit.field, incoming);
        return EditOutcome::Applied;
    };
    if current.version == edit.version {
        return EditOutcome::Duplicate;
    }
    let incoming_newer = edit.version > current.version;
    if edit.base.as_ref() == Some(&current.version) && incoming_newer {
        set_field(fields, versions, &edit.field, incoming);
        return EditOutcome::Applied;
    }
    if incoming_newer {
        set_field(fields, versions, &edit.field, incoming.clone());
        EditOutcome::Conflict {
            incoming_won: true,
            conflict: Conflict {
                field: edit.field.clone(),
                winner: incoming,
                loser: current,
            },
        }
    } else {
        EditOutcome::Conflict {
            incoming_won: false,
            conflict: Conflict {
                field: edit.field.clone(),
                winner: current,
                loser: incoming,
            },
        }
    }
}

/// The state-based join of two copies of a record's fields: per field, the higher version.
/// Commutative, associative and idempotent.
pub fn join(a: (&FieldMap, &VersionMap), b: (&FieldMap, &VersionMap)) -> (FieldMap, VersionMap) {
    let (mut fields, mut versions) = (a.0.clone(), a.1.clone());
    for (name, version) in b.1 {
        let newer = versions.get(name).is_none_or(|mine| version > mine);
        if newer {
            let state = FieldState {
                value: b.0.get(name).cloned(),
                version: version.clone(),
            };
            set_field(&mut fields, &mut versions, name, state);
        }
    }
    (fields, versions)
}

/// A replica takes in the owner's projection of a record. `owner_seq` orders the owner's
/// states of the record (its change sequence number): a state older than the one the replica
/// holds (`local_seq`), e.g. a stream batch arriving after a newer verdict, changes nothing
/// (None), because it cannot tell a field it lacks from a field it no longer shows. A newer
/// state is taken as it is: the owner is the merge point, and its later state supersedes
/// even a higher version held here (one the owner re-stamped after a clock fault, or lost in
/// a restore). The same state again (equal `owner_seq`, e.g. a wider projection after a
/// share) joins per field at the higher version; fields the owner no longer sends go.
pub fn take_owner_state(
    local: (&FieldMap, &VersionMap),
    local_seq: i64,
    owner: (&FieldMap, &VersionMap),
    owner_seq: i64,
) -> Option<(FieldMap, VersionMap)> {
    if owner_seq < local_seq {
        return None;
    }
    if owner_seq > local_seq {
        return Some((owner.0.clone(), owner.1.clone()));
    }
    let (mut fields, mut versions) = join(owner, local);
    versions.retain(|name, _| owner.1.contains_key(name));
    fields.retain(|name, _| versions.contains_key(name));
    Some((fields, versions))
}

/// What a replica shows: the owner's state with the partner's pending edits on top, in the
/// order they were made. A pending edit older than the owner's version of its field is not
/// shown: the owner already holds something newer (it lost, or a later edit of ours won).
pub fn overlay<'a>(
    shadow: (&FieldMap, &VersionMap),
    pending: impl IntoIterator<Item = &'a FieldEdit>,
) -> (FieldMap, VersionMap) {
    let (mut fields, mut versions) = (shadow.0.clone(), shadow.1.clone());
    for edit in pending {
        if shadow.1.get(&edit.field).is_some_and(|v| *v > edit.version) {
            continue;
        }
        let state = FieldState {
            value: edit.value.clone(),
            version: edit.version.clone(),
        };
        set_field(&mut fields, &mut versions, &edit.field, state);
    }
    (fields, versions)
}

/// The edits a local change of a replica proposes: the changed fields (None: cleared) at
/// their new versions, based on the versions the replica showed before.
pub fn edits_of(
    changed: &BTreeMap<String, Option<Value>>,
    new_versions: &VersionMap,
    shown_before: &VersionMap,
) -> Vec<FieldEdit> {
    changed
        .iter()
        .filter_map(|(field, value)| {
            Some(FieldEdit {
                field: field.clone(),
                value: value.clone(),
                version: new_versions.get(field)?.clone(),
                base: shown_before.get(field).cloned(),
            })
        })
        .collect()
}

/// The anti-entropy bucket of a record.
pub fn bucket_of(id: &Uuid) -> usize {
    // The last byte of a UUIDv7 is random, so records spread evenly.
    id.as_bytes()[15] as usize % DIGEST_BUCKETS
}

/// A digest of one record's versions (and whether it is a tombstone): two copies with the
/// same versions have the same digest.
pub fn record_digest(versions: &VersionMap, deleted: bool) -> u64 {
    record_digest_of(versions.iter(), deleted)
}

/// `record_digest` of versions given in name order (e.g. a projection's, filtered from a
/// record's without copying it).
pub fn record_digest_of<'a>(
    versions: impl Iterator<Item = (&'a String, &'a crate::Hlc)>,
    deleted: bool,
) -> u64 {
    let mut h = Sha256::new();
    h.update([u8::from(deleted)]);
    // The version's text form, written into one buffer (this runs for every record a batch
    // sends or takes in).
    let mut text = String::new();
    for (name, v) in versions {
        h.update(name.as_bytes());
        h.update([0]);
        text.clear();
        v.push_text(&mut text);
        h.update(text.as_bytes());
        h.update([0]);
    }
    first_u64(&h.finalize())
}

fn first_u64(bytes: &[u8]) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&bytes[..8]);
    u64::from_be_bytes(b)
}

/// The contribution of one record to its bucket's digest.
pub fn entry_digest(id: &Uuid, record_digest: u64) -> u64 {
    let mut h = Sha256::new();
    h.update(id.as_bytes());
    h.update(record_digest.to_be_bytes());
    first_u64(&h.finalize())
}

/// What one record adds to its bucket's sum: 32 bits of its entry digest (so a bucket sum of
/// up to 2^31 records fits a signed 64-bit database SUM exactly).
pub fn sum_part(id: &Uuid, record_digest: u64) -> u64 {
    entry_digest(id, record_digest) >> 32
}

/// Bucket sums over (record id, record digest) entries: per bucket the sum of the entries'
/// `sum_part` modulo 2^32. Unlike XOR, a sum can be kept by a database (`SUM` of a stored
/// column per bucket), so neither node reads every record to compare. Order does not
/// matter and an empty bucket is 0.
pub fn bucket_sums<'a>(entries: impl IntoIterator<Item = (&'a Uuid, u64)>) -> Vec<u64> {
    let mut buckets = vec![0u64; DIGEST_BUCKETS];
    for (id, digest) in entries {
        let b = &mut buckets[bucket_of(id)];
        *b = (*b + sum_part(id, digest)) & SUM_MASK;
    }
    buckets
}

/// Bucket sums are kept modulo 2^32.
pub const SUM_MASK: u64 = 0xffff_ffff;

/// A short fingerprint of some texts (e.g. the policy a projection was computed under).
pub fn text_fingerprint(parts: &[&str]) -> String {
    let mut h = Sha256::new();
    for p in parts {
        h.update((p.len() as u64).to_be_bytes());
        h.update(p.as_bytes());
    }
    format!("{:016x}", first_u64(&h.finalize()))
}

/// The owner's decision on one proposed change.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VerdictOutcome {
    Applied,
    AppliedWithConflict,
    Rejected,
}

impl VerdictOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            VerdictOutcome::Applied => "applied",
            VerdictOutcome::AppliedWithConflict => "applied_with_conflict",
            VerdictOutcome::Rejected => "rejected",
        }
    }
    pub fn parse(s: &str) -> Option<VerdictOutcome> {
        [
            VerdictOutcome::Applied,
            VerdictOutcome::AppliedWithConflict,
            VerdictOutcome::Rejected,
        ]
        .into_iter()
        .find(|v| v.as_str() == s)
    }
}

/// What the owner's writer decided for a proposed change, planned from the current record.
pub struct MergePlan {
    pub write: Option<crate::write::WritePlan>,
    pub conflicts: Vec<Conflict>,
    pub outcome: VerdictOutcome,
    /// Value-free: field names and rules only.
    pub reason: String,
    pub at_ms: i64,
}

/// Longest rejection reason kept and sent (characters): it may quote the rejected input.
pub const MAX_REASON: usize = 400;

fn clip(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        None => s.to_string(),
        Some((cut, _)) => format!("{}…", &s[..cut]),
    }
}

/// The owner's merge of a proposed change, planned on the current record inside the writer:
/// the proposing organization must see the record (`visible`) and may write only
/// `writable` fields; values obey the same normalization and rules as a local write; the
/// case lifecycle holds; then each field is merged by version (`merge_edit`) and every
/// concurrent loser becomes a conflict. Rejections carry a reason without values.
pub fn plan_merge(
    cur: &Record,
    visible: bool,
    writable: &BTreeSet<String>,
    org: &str,
    edits: &[FieldEdit],
    now: i64,
) -> Result<MergePlan, DomainError> {
    let reject = |reason: String| MergePlan {
        write: None,
        conflicts: Vec::new(),
        outcome: VerdictOutcome::Rejected,
        // Sent to the partner and kept: a reason may quote the rejected input, never whole.
        reason: clip(&reason, MAX_REASON),
        at_ms: now,
    };
    if cur.is_deleted() || !visible {
        return Ok(reject(format!("the record is not shared with {org}")));
    }
    if let Some(e) = edits.iter().find(|e| !writable.contains(&e.field)) {
        return Ok(reject(format!(
            "{}: {org} may not write this field of {}",
            e.field, cur.kind
        )));
    }
    // Values obey the same rules as a local write (types, limits, enums, normalization).
    let values: FieldMap = edits
        .iter()
        .filter_map(|e| e.value.clone().map(|v| (e.field.clone(), v)))
        .collect();
    let normalized = match crate::write::normalize_fields(cur.kind, values) {
        Ok(n) => n,
        Err(e) => return Ok(reject(e.to_string())),
    };
    let mut fields = cur.fields.clone();
    let mut versions = cur.versions.clone();
    let mut conflicts = Vec::new();
    let mut changed = BTreeMap::new();
    for e in edits {
        let e = FieldEdit {
            value: e.value.as_ref().and(normalized.get(&e.field).cloned()),
            ..e.clone()
        };
        match merge_edit(&mut fields, &mut versions, &e) {
            EditOutcome::Duplicate => {}
            EditOutcome::Applied => {
                changed.insert(e.field.clone(), e.value.clone());
            }
            EditOutcome::Conflict {
                incoming_won,
                conflict,
            } => {
                if incoming_won {
                    changed.insert(e.field.clone(), e.value.clone());
                }
                conflicts.push(conflict);
            }
        }
    }
    let outcome = if conflicts.is_empty() {
        VerdictOutcome::Applied
    } else {
        VerdictOutcome::AppliedWithConflict
    };
    let reason = conflicts
        .iter()
        .map(|c| {
            format!(
                "{}: concurrent edits; {} kept, {} kept as a conflict",
                c.field, c.winner.version, c.loser.version
            )
        })
        .collect::<Vec<_>>()
        .join("; ");
    if changed.is_empty() {
        return Ok(MergePlan {
            write: None,
            conflicts,
            outcome,
            reason,
            at_ms: now,
        });
    }
    if let (RecordKind::ServiceCase, Some(Some(Value::Text(to))), Some(from)) =
        (cur.kind, changed.get("status"), cur.text("status"))
        && from != to
        && !crate::write::case_transition_allowed(from, to)
    {
        return Ok(reject(format!(
            "status: a case cannot go from {from} to {to}"
        )));
    }
    let next = Record {
        fields,
        versions,
        updated_at_ms: now,
        ..cur.clone()
    };
    if let Err(e) = crate::write::check_required(cur.kind, &next.fields) {
        return Ok(reject(e.to_string()));
    }
    let hlc = changed
        .keys()
        .filter_map(|f| next.versions.get(f))
        .max()
        .cloned()
        .unwrap_or_else(|| Hlc::new(now.max(0) as u64, 0, org.to_string()));
    Ok(MergePlan {
        write: Some(crate::write::WritePlan {
            change: Change {
                seq: 0,
                record_id: cur.id,
                kind: cur.kind,
                op: ChangeOp::Update,
                hlc,
                fields: changed,
                at_ms: now,
            },
            record: next,
            refs: Vec::new(),
        }),
        conflicts,
        outcome,
        reason,
        at_ms: now,
    })
}

/// Whether a remote version lies too far in the future of the node `here` (an organization
/// id): the reason, if it does, naming whose clock is ahead and by how much.
pub fn too_far_ahead(version: &Hlc, now_ms: u64, max_skew_ms: u64, here: &str) -> Option<String> {
    let ahead = version.physical_ms.saturating_sub(now_ms);
    (ahead > max_skew_ms).then(|| {
        let stamped_by = version.node.split('/').next().unwrap_or_default();
        format!(
            "{stamped_by}'s clock is about {} s ahead of {here}'s (a version stamped by {} is {ahead} ms ahead; the bound is {max_skew_ms} ms): correct the clock that is wrong",
            ahead.div_ceil(1000),
            version.node
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(ms: u64, node: &str) -> Hlc {
        Hlc::new(ms, 0, node)
    }

    /// Digests are stored and compared between nodes of different versions: the text the
    /// digest hashes must stay the versions' `Display` form.
    #[test]
    fn a_record_digest_hashes_the_versions_display_form() {
        let versions: VersionMap = [
            (
                "city".to_string(),
                Hlc::new(0x1234_5678_9abc, 7, "acme/node1"),
            ),
            ("name".to_string(), Hlc::new(1, u32::MAX, "globex/n")),
        ]
        .into();
        for deleted in [false, true] {
            let mut reference = Sha256::new();
            reference.update([u8::from(deleted)]);
            for (name, v) in &versions {
                reference.update(name.as_bytes());
                reference.update([0]);
                reference.update(v.to_string().as_bytes());
                reference.update([0]);
            }
            assert_eq!(
                record_digest(&versions, deleted),
                first_u64(&reference.finalize())
            );
        }
    }

    fn t(s: &str) -> Option<Value> {
        Some(Value::Text(s.into()))
    }

    fn start() -> (FieldMap, VersionMap) {
        let mut f = FieldMap::new();
        let mut v = VersionMap::new();
        f.insert("name".into(), Value::Text("Acme".into()));
        v.insert("name".into(), h(10, "acme/n"));
        (f, v)
    }

    fn edit(value: &str, ms: u64, node: &str, base: u64) -> FieldEdit {
        FieldEdit {
            field: "name".into(),
            value: t(value),
            version: h(ms, node),
            base: Some(h(base, "acme/n")),
        }
    }

    #[test]
    fn an_edit_on_the_current_version_applies_and_a_redelivery_is_a_duplicate() {
        let (mut f, mut v) = start();
        let e = edit("Acme AG", 20, "globex/n", 10);
        assert_eq!(merge_edit(&mut f, &mut v, &e), EditOutcome::Applied);
        assert_eq!(f["name"], Value::Text("Acme AG".into()));
        assert_eq!(merge_edit(&mut f, &mut v, &e), EditOutcome::Duplicate);
    }

    #[test]
    fn concurrent_edits_keep_the_higher_version_and_the_loser() {
        let (mut f, mut v) = start();
        let a = edit("A", 20, "globex/n", 10);
        let b = edit("B", 30, "fixit/n", 10);
        merge_edit(&mut f, &mut v, &b);
        match merge_edit(&mut f, &mut v, &a) {
            EditOutcome::Conflict {
                incoming_won: false,
                conflict,
            } => {
                assert_eq!(conflict.loser.value, t("A"));
                assert_eq!(conflict.winner.value, t("B"));
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(f["name"], Value::Text("B".into()));
        // The other order ends in the same state.
        let (mut f2, mut v2) = start();
        merge_edit(&mut f2, &mut v2, &a);
        assert!(matches!(
            merge_edit(&mut f2, &mut v2, &b),
            EditOutcome::Conflict {
                incoming_won: true,
                ..
            }
        ));
        assert_eq!((f, v), (f2, v2));
    }

    #[test]
    fn ties_in_time_are_broken_by_node() {
        let (mut f, mut v) = start();
        merge_edit(&mut f, &mut v, &edit("G", 20, "globex/n", 10));
        merge_edit(&mut f, &mut v, &edit("F", 20, "fixit/n", 10));
        assert_eq!(f["name"], Value::Text("G".into()), "globex/n > fixit/n");
    }

    #[test]
    fn a_clear_is_a_write() {
        let (mut f, mut v) = start();
        let e = FieldEdit {
            field: "name".into(),
            value: None,
            version: h(20, "globex/n"),
            base: Some(h(10, "acme/n")),
        };
        merge_edit(&mut f, &mut v, &e);
        assert!(!f.contains_key("name"));
        assert_eq!(v["name"], h(20, "globex/n"));
    }

    #[test]
    fn a_replica_keeps_a_newer_version_and_drops_unsent_fields() {
        let (mut local_f, mut local_v) = start();
        local_f.insert("phone".into(), Value::Text("1".into()));
        local_v.insert("phone".into(), h(5, "acme/n"));
        local_f.insert("name".into(), Value::Text("new".into()));
        local_v.insert("name".into(), h(50, "acme/n"));
        let (owner_f, owner_v) = start();
        let (f, v) = take_owner_state((&local_f, &local_v), 3, (&owner_f, &owner_v), 3).unwrap();
        assert_eq!(f["name"], Value::Text("new".into()));
        assert!(!f.contains_key("phone") && !v.contains_key("phone"));
        // An older state of the owner changes nothing.
        assert!(take_owner_state((&local_f, &local_v), 4, (&owner_f, &owner_v), 3).is_none());
        // A newer state is taken as it is, even below a version held here (a restored or
        // re-stamped owner).
        let (f, v) = take_owner_state((&local_f, &local_v), 3, (&owner_f, &owner_v), 4).unwrap();
        assert_eq!((f, v), (owner_f, owner_v));
    }

    #[test]
    fn digests_ignore_order_and_see_every_version() {
        let a = Uuid::now_v7();
        let b = Uuid::now_v7();
        let (_, v) = start();
        let d1 = bucket_sums([(&a, record_digest(&v, false)), (&b, 7)]);
        let d2 = bucket_sums([(&b, 7), (&a, record_digest(&v, false))]);
        assert_eq!(d1, d2);
        assert!(d1.iter().all(|s| *s <= SUM_MASK));
        // The same versions under another id count differently.
        let c = Uuid::now_v7();
        assert_ne!(sum_part(&a, 7), sum_part(&c, 7));
        assert_ne!(record_digest(&v, false), record_digest(&v, true));
        let mut v2 = v.clone();
        v2.insert("name".into(), h(11, "acme/n"));
        assert_ne!(record_digest(&v, false), record_digest(&v2, false));
    }

    #[test]
    fn skew_bound() {
        assert!(too_far_ahead(&h(1_000, "globex/n"), 500, 600, "acme").is_none());
        let why = too_far_ahead(&h(3_600_500, "globex/n"), 500, 60_000, "acme").unwrap();
        assert!(
            why.starts_with("globex's clock is about 3600 s ahead of acme's"),
            "{why}"
        );
    }
}
