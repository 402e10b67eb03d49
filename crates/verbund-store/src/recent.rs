//! The newest changes of the log, kept in memory by the embedded SQLite backend, where this
//! process is the only writer. The writer hands each committed batch's changes over before it
//! publishes the commit, so the readers that follow every commit (the sync streams, Watch, the
//! consolidated view) take the changes they wake up for from here instead of reading the log
//! back: on SQLite each such read was a statement of 150–350 µs (every commit resets the
//! reading connection's page cache) on the path of every update to a partner.
//!
//! What it answers is what the SQL would answer: a read is served only if the kept changes
//! cover the whole window asked for, without a gap; otherwise the caller reads the log.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Mutex;

use uuid::Uuid;
use verbund_core::{Change, RecordKind};

/// Changes kept: two of a partner's largest apply batches, and plenty for the readers that
/// follow single updates.
pub const RECENT_CHANGES: usize = 4_096;

#[derive(Debug)]
pub struct RecentChanges {
    inner: Mutex<VecDeque<Entry>>,
    capacity: usize,
}

#[derive(Debug)]
struct Entry {
    /// As the log holds it: the names of the fields written, without values.
    change: Change,
    /// The owner of the change's record, when the batch wrote that record (else unknown:
    /// the stream must look the record up).
    owner: Option<String>,
    /// The change brought another owner's record here first (see migration 0026).
    first_foreign: bool,
    /// The change is of another owner's record no record here referred to when it was
    /// written: nothing of ours can depend on it (a record that refers to it later is a
    /// change of its own, which the stream sees).
    unrelated_foreign: bool,
}

/// What one committed batch did to the change log.
pub struct CommittedChanges<'a> {
    /// The batch's changes in sequence order.
    pub changes: Vec<Change>,
    /// The owner of each record the batch wrote.
    pub owners: HashMap<Uuid, &'a str>,
    pub first_foreign: &'a HashSet<i64>,
    /// The changes (by seq) of another owner's records no record here referred to.
    pub unrelated_foreign: &'a HashSet<i64>,
    /// Records whose earlier changes had their field names blanked (erasure, revoke).
    pub blanked: &'a [Uuid],
}

impl RecentChanges {
    pub fn new(capacity: usize) -> RecentChanges {
        RecentChanges {
            inner: Mutex::new(VecDeque::new()),
            capacity: capacity.max(1),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<Entry>> {
        // A panic while holding the lock leaves at worst a stale ring; clear it and go on.
        self.inner.lock().unwrap_or_else(|poisoned| {
            let mut ring = poisoned.into_inner();
            ring.clear();
            ring
        })
    }

    /// Takes in a committed batch (the writer calls this after the commit, before publishing
    /// it). A change that does not follow the last one kept starts the ring over: what is
    /// kept is always an unbroken run of the log.
    pub fn committed(&self, batch: CommittedChanges<'_>) {
        let mut ring = self.lock();
        if !batch.blanked.is_empty() {
            let blanked: HashSet<&Uuid> = batch.blanked.iter().collect();
            for e in ring.iter_mut() {
                if blanked.contains(&e.change.record_id) {
                    e.change.fields.clear();
                }
            }
        }
        let skip = batch.changes.len().saturating_sub(self.capacity);
        let mut changes = batch.changes.into_iter();
        if skip > 0 {
            // Only the newest are kept: the older ones are a gap before them.
            ring.clear();
            changes.nth(skip - 1);
        }
        for mut change in changes {
            if ring
                .back()
                .is_some_and(|last| last.change.seq + 1 != change.seq)
            {
                ring.clear();
            }
            for value in change.fields.values_mut() {
                *value = None;
            }
            let owner = batch
                .owners
                .get(&change.record_id)
                .map(|o| (*o).to_string());
            let first_foreign = batch.first_foreign.contains(&change.seq);
            let unrelated_foreign = batch.unrelated_foreign.contains(&change.seq);
            ring.push_back(Entry {
                change,
                owner,
                first_foreign,
                unrelated_foreign,
            });
            if ring.len() > self.capacity {
                ring.pop_front();
            }
        }
    }

    /// Forgets every kept change: reads go to the log until the next commit.
    pub fn clear(&self) {
        self.lock().clear();
    }

    /// The entries with a sequence number in `(after, upto]`, if every one of them is kept.
    fn window(
        ring: &VecDeque<Entry>,
        after: i64,
        upto: i64,
    ) -> Option<impl Iterator<Item = &Entry>> {
        let first = ring.front()?.change.seq;
        let last = ring.back()?.change.seq;
        if first > after + 1 || last < upto {
            return None;
        }
        // The ring is an unbroken run: the entry of seq s is at s - first.
        let start = usize::try_from(after + 1 - first).ok()?;
        Some(
            ring.iter()
                .skip(start)
                .take_while(move |e| e.change.seq <= upto),
        )
    }

    /// `changes_after` up to `upto` (the published commit): the changes after `after` of
    /// the given kinds (all if empty), at most `limit`. None: not all of them are kept.
    pub fn changes_after(
        &self,
        after: i64,
        upto: i64,
        kinds: &[RecordKind],
        limit: usize,
    ) -> Option<Vec<Change>> {
        if after >= upto {
            return Some(Vec::new());
        }
        let ring = self.lock();
        let window = Self::window(&ring, after, upto)?;
        Some(
            window
                .filter(|e| kinds.is_empty() || kinds.contains(&e.change.kind))
                .take(limit)
                .map(|e| e.change.clone())
                .collect(),
        )
    }

    /// The sync stream's read of `(after, upto]` for `org` (see `stream_changes_after`): the
    /// changes of records `org` owns and of records the batch did not write whose owner is
    /// unknown here are what the SQL decides on, so a window with a change of another
    /// owner's record (other than the first, and other than one no record here referred
    /// to when it was written: both are passed by) or of a record of unknown owner is left
    /// to the SQL. Returns the changes, at most `limit`, and how far the
    /// window was looked through.
    pub fn stream_changes_after(
        &self,
        after: i64,
        upto: i64,
        org: &str,
        limit: usize,
    ) -> Option<(Vec<Change>, i64)> {
        if after >= upto {
            return Some((Vec::new(), after));
        }
        let ring = self.lock();
        let window = Self::window(&ring, after, upto)?;
        let mut changes = Vec::new();
        for e in window {
            if changes.len() >= limit {
                break;
            }
            if e.first_foreign || e.unrelated_foreign {
                continue;
            }
            if e.owner.as_deref() != Some(org) {
                return None;
            }
            changes.push(e.change.clone());
        }
        let scanned_to = match changes.last() {
            Some(last) if changes.len() >= limit => last.seq,
            _ => upto,
        };
        Some((changes, scanned_to))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;
    use verbund_core::{ChangeOp, Hlc, Value};

    fn change(seq: i64, id: Uuid, kind: RecordKind) -> Change {
        Change {
            seq,
            record_id: id,
            kind,
            op: ChangeOp::Update,
            hlc: Hlc {
                physical_ms: 1,
                counter: 0,
                node: "n".into(),
            },
            fields: BTreeMap::from([("city".to_string(), Some(Value::Text("Köln".into())))]),
            at_ms: seq,
        }
    }

    fn commit(ring: &RecentChanges, changes: Vec<Change>, owner: &str) {
        let owners = changes.iter().map(|c| (c.record_id, owner)).collect();
        ring.committed(CommittedChanges {
            changes,
            owners,
            first_foreign: &HashSet::new(),
            unrelated_foreign: &HashSet::new(),
            blanked: &[],
        });
    }

    fn seqs(changes: &[Change]) -> Vec<i64> {
        changes.iter().map(|c| c.seq).collect()
    }

    #[test]
    fn serves_only_a_window_it_holds_whole() {
        let ring = RecentChanges::new(8);
        let id = Uuid::now_v7();
        assert_eq!(ring.changes_after(0, 3, &[], 10), None, "nothing kept yet");
        assert_eq!(
            ring.changes_after(3, 3, &[], 10),
            Some(vec![]),
            "nothing after the end"
        );
        commit(
            &ring,
            (4..=6)
                .map(|s| change(s, id, RecordKind::Account))
                .collect(),
            "acme",
        );
        assert_eq!(ring.changes_after(2, 6, &[], 10), None, "seq 3 is not kept");
        let got = ring.changes_after(3, 6, &[], 10).unwrap();
        assert_eq!(seqs(&got), vec![4, 5, 6]);
        assert!(
            got.iter().all(|c| c.fields.values().all(Option::is_none)),
            "names only"
        );
        assert_eq!(
            seqs(&ring.changes_after(4, 5, &[], 10).unwrap()),
            vec![5],
            "up to the published"
        );
        assert_eq!(ring.changes_after(4, 7, &[], 10), None, "7 is not kept yet");
        assert_eq!(seqs(&ring.changes_after(3, 6, &[], 2).unwrap()), vec![4, 5]);
        assert_eq!(
            ring.changes_after(3, 6, &[RecordKind::Contact], 10),
            Some(vec![])
        );
    }

    #[test]
    fn a_gap_or_an_overflow_starts_over() {
        let ring = RecentChanges::new(4);
        let id = Uuid::now_v7();
        commit(
            &ring,
            (1..=3)
                .map(|s| change(s, id, RecordKind::Account))
                .collect(),
            "acme",
        );
        commit(&ring, vec![change(5, id, RecordKind::Account)], "acme");
        assert_eq!(ring.changes_after(0, 5, &[], 10), None);
        assert_eq!(ring.changes_after(3, 5, &[], 10), None, "seq 4 never came");
        assert_eq!(seqs(&ring.changes_after(4, 5, &[], 10).unwrap()), vec![5]);
        commit(
            &ring,
            (6..=15)
                .map(|s| change(s, id, RecordKind::Account))
                .collect(),
            "acme",
        );
        assert_eq!(
            ring.changes_after(10, 15, &[], 10),
            None,
            "only the last 4 are kept"
        );
        assert_eq!(
            seqs(&ring.changes_after(11, 15, &[], 10).unwrap()),
            vec![12, 13, 14, 15]
        );
        commit(&ring, vec![change(16, id, RecordKind::Account)], "acme");
        assert_eq!(ring.changes_after(11, 16, &[], 10), None, "12 fell out");
        ring.clear();
        assert_eq!(ring.changes_after(15, 16, &[], 10), None);
    }

    #[test]
    fn the_stream_passes_by_other_owners_records_nothing_here_refers_to() {
        let ring = RecentChanges::new(16);
        let (ours, theirs, referred) = (Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7());
        commit(&ring, vec![change(1, ours, RecordKind::Account)], "acme");
        ring.committed(CommittedChanges {
            changes: vec![
                change(2, theirs, RecordKind::Account),
                change(3, ours, RecordKind::Account),
            ],
            owners: HashMap::from([(theirs, "globex"), (ours, "acme")]),
            first_foreign: &HashSet::new(),
            unrelated_foreign: &HashSet::from([2]),
            blanked: &[],
        });
        let (got, scanned) = ring.stream_changes_after(0, 3, "acme", 10).unwrap();
        assert_eq!((seqs(&got), scanned), (vec![1, 3], 3));
        // One that a record here refers to is the SQL's to decide.
        ring.committed(CommittedChanges {
            changes: vec![change(4, referred, RecordKind::Account)],
            owners: HashMap::from([(referred, "globex")]),
            first_foreign: &HashSet::new(),
            unrelated_foreign: &HashSet::new(),
            blanked: &[],
        });
        assert_eq!(ring.stream_changes_after(0, 4, "acme", 10), None);
        let (got, scanned) = ring.stream_changes_after(1, 3, "acme", 10).unwrap();
        assert_eq!((seqs(&got), scanned), (vec![3], 3));
    }

    #[test]
    fn the_stream_leaves_other_owners_records_to_the_sql() {
        let ring = RecentChanges::new(16);
        let (ours, theirs, first) = (Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7());
        commit(&ring, vec![change(1, ours, RecordKind::Account)], "acme");
        ring.committed(CommittedChanges {
            changes: vec![change(2, first, RecordKind::Account)],
            owners: HashMap::from([(first, "globex")]),
            first_foreign: &HashSet::from([2]),
            unrelated_foreign: &HashSet::new(),
            blanked: &[],
        });
        let (got, scanned) = ring.stream_changes_after(0, 2, "acme", 10).unwrap();
        assert_eq!(
            (seqs(&got), scanned),
            (vec![1], 2),
            "the first of another owner's is passed by"
        );
        let (got, scanned) = ring.stream_changes_after(0, 2, "acme", 1).unwrap();
        assert_eq!((seqs(&got), scanned), (vec![1], 1));
        commit(
            &ring,
            vec![change(3, theirs, RecordKind::Account)],
            "globex",
        );
        assert_eq!(ring.stream_changes_after(0, 3, "acme", 10), None);
        ring.committed(CommittedChanges {
            changes: vec![change(4, ours, RecordKind::Account)],
            owners: HashMap::new(),
            first_foreign: &HashSet::new(),
            unrelated_foreign: &HashSet::new(),
            blanked: &[],
        });
        assert_eq!(
            ring.stream_changes_after(3, 4, "acme", 10),
            None,
            "owner unknown"
        );
        assert_eq!(
            ring.stream_changes_after(4, 4, "acme", 10),
            Some((vec![], 4))
        );
    }

    #[test]
    fn blanking_clears_the_names_of_earlier_changes_only() {
        let ring = RecentChanges::new(16);
        let (erased, other) = (Uuid::now_v7(), Uuid::now_v7());
        commit(
            &ring,
            vec![
                change(1, erased, RecordKind::Contact),
                change(2, other, RecordKind::Contact),
            ],
            "acme",
        );
        ring.committed(CommittedChanges {
            changes: vec![change(3, erased, RecordKind::Contact)],
            owners: HashMap::from([(erased, "acme")]),
            first_foreign: &HashSet::new(),
            unrelated_foreign: &HashSet::new(),
            blanked: &[erased],
        });
        let got = ring.changes_after(0, 3, &[], 10).unwrap();
        let names: Vec<usize> = got.iter().map(|c| c.fields.len()).collect();
        assert_eq!(names, vec![0, 1, 1]);
    }
}
