//! A bounded in-memory cache of records for the embedded SQLite backend, where this process is
//! the only writer. The writer task updates it after every commit (write-through); readers
//! fill it on a miss only if no commit happened while they read, so a reader can never put an
//! older version over a newer one. The cache is bounded in bytes (an estimate of each
//! record's heap size), not in records: a few wide records cannot blow it up, and at a
//! million records it holds no more than its budget.

use std::collections::HashMap;
use std::sync::Mutex;

use uuid::Uuid;
use verbund_core::{Record, Value};

/// The most records of one commit that are cached (see [`RecordCache::committed`]).
pub const CACHE_AT_MOST: usize = 64;

#[derive(Debug)]
pub struct RecordCache {
    inner: Mutex<Inner>,
    /// The most bytes the cached records may take (estimated).
    budget: usize,
}

#[derive(Debug)]
struct Inner {
    /// Each record with its estimated size.
    map: HashMap<Uuid, (Record, usize)>,
    bytes: usize,
    /// Bumped by every commit.
    generation: u64,
}

/// Estimated heap bytes of a cached record: its strings and the nodes of its maps (an
/// estimate that errs on the large side; what matters is that it grows with the record).
pub fn record_bytes(r: &Record) -> usize {
    const ENTRY: usize = 64; // a map node's share, key and value headers
    let value_bytes = |v: &Value| match v {
        Value::Text(t) => t.len(),
        Value::Int(_) => 8,
        Value::Money(m) => m.currency.len() + 8,
        Value::List(items) => items.iter().map(|i| i.len() + 24).sum(),
    };
    let fields: usize = r
        .fields
        .iter()
        .map(|(k, v)| ENTRY + k.len() + value_bytes(v))
        .sum();
    let versions: usize = r
        .versions
        .iter()
        .map(|(k, h)| ENTRY + k.len() + h.node.len() + 16)
        .sum();
    std::mem::size_of::<Record>() + ENTRY + r.owner_org.len() + fields + versions
}

impl RecordCache {
    /// A cache holding at most `budget` bytes of records.
    pub fn new(budget: usize) -> RecordCache {
        RecordCache {
            inner: Mutex::new(Inner {
                map: HashMap::new(),
                bytes: 0,
                generation: 0,
            }),
            budget: budget.max(1),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding the lock cannot leave the map half-updated in a way that
        // matters (each operation is a single insert/remove), so keep going.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn get(&self, id: &Uuid) -> Option<Record> {
        self.lock().map.get(id).map(|(r, _)| r.clone())
    }

    /// Forgets every record (after a commit whose outcome is unknown).
    pub fn clear(&self) {
        let mut inner = self.lock();
        inner.generation += 1;
        inner.map.clear();
        inner.bytes = 0;
    }

    /// The generation to pass to [`RecordCache::fill`] after reading from the database.
    pub fn generation(&self) -> u64 {
        self.lock().generation
    }

    /// Caches a record read from the database, unless a commit happened since `generation`.
    pub fn fill(&self, record: &Record, generation: u64) {
        let mut inner = self.lock();
        if inner.generation == generation {
            Self::insert(&mut inner, record.clone(), self.budget);
        }
    }

    /// Records just committed by the writer. A bulk write (a partner's apply of a share's
    /// batch) only takes its records' old copies out: caching thousands of records no one
    /// has asked for would push out the ones in use, and cost the writer the copies.
    pub fn committed(&self, records: Vec<Record>) {
        let mut inner = self.lock();
        inner.generation += 1;
        if records.len() > CACHE_AT_MOST {
            for r in &records {
                if let Some((_, old)) = inner.map.remove(&r.id) {
                    inner.bytes -= old;
                }
            }
            drop(inner);
            return; // the records are dropped outside the lock
        }
        for r in records {
            Self::insert(&mut inner, r, self.budget);
        }
    }

    fn insert(inner: &mut Inner, record: Record, budget: usize) {
        let size = record_bytes(&record);
        if size > budget / 4 {
            // Too large to be worth a quarter of the cache: not cached (and a stale copy goes).
            if let Some((_, old)) = inner.map.remove(&record.id) {
                inner.bytes -= old;
            }
            return;
        }
        if let Some((_, old)) = inner.map.remove(&record.id) {
            inner.bytes -= old;
        }
        if inner.bytes + size > budget {
            // Crude but bounded: drop arbitrary entries (HashMap order is effectively random)
            // until a tenth of the budget is free.
            let target = budget - budget / 10;
            let mut drop = Vec::new();
            let mut freed = 0;
            for (k, (_, n)) in inner.map.iter() {
                if inner.bytes - freed + size <= target {
                    break;
                }
                freed += n;
                drop.push(*k);
            }
            for k in drop {
                inner.map.remove(&k);
            }
            inner.bytes -= freed;
        }
        inner.bytes += size;
        inner.map.insert(record.id, (record, size));
    }

    #[cfg(test)]
    fn bytes(&self) -> usize {
        self.lock().bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use verbund_core::RecordKind;

    fn rec(seq: i64) -> Record {
        Record {
            id: Uuid::nil(),
            kind: RecordKind::Account,
            owner_org: "acme".into(),
            created_at_ms: 0,
            updated_at_ms: 0,
            deleted: None,
            seq,
            fields: Default::default(),
            versions: Default::default(),
        }
    }

    fn rec_of(id: u128, seq: i64) -> Record {
        Record {
            id: Uuid::from_u128(id),
            ..rec(seq)
        }
    }

    #[test]
    fn clear_forgets_every_record_and_stops_a_fill_in_flight() {
        let c = RecordCache::new(10_000_000);
        c.committed(vec![rec_of(1, 1), rec_of(2, 1)]);
        let generation = c.generation();
        c.clear();
        assert!(c.get(&Uuid::from_u128(1)).is_none());
        assert!(c.get(&Uuid::from_u128(2)).is_none());
        assert_eq!(c.bytes(), 0);
        // A reader that read before the clear must not put its copy back.
        c.fill(&rec_of(1, 1), generation);
        assert!(c.get(&Uuid::from_u128(1)).is_none());
    }

    #[test]
    fn a_bulk_commit_takes_old_copies_out_and_caches_none() {
        let c = RecordCache::new(10_000_000);
        c.committed(vec![rec_of(1, 1), rec_of(2, 1)]);
        assert_eq!(c.get(&Uuid::from_u128(1)).map(|r| r.seq), Some(1));
        let bulk: Vec<Record> = (1..=(CACHE_AT_MOST as u128 + 1))
            .map(|i| rec_of(i, 2))
            .collect();
        c.committed(bulk);
        // The old copies are gone (a read goes to the database), and nothing new came in.
        assert!(c.get(&Uuid::from_u128(1)).is_none());
        assert!(c.get(&Uuid::from_u128(2)).is_none());
        assert!(c.get(&Uuid::from_u128(3)).is_none());
        assert_eq!(c.bytes(), 0);
        // A small commit is cached as before.
        c.committed(vec![rec_of(3, 3)]);
        assert_eq!(c.get(&Uuid::from_u128(3)).map(|r| r.seq), Some(3));
    }

    #[test]
    fn a_stale_read_never_overwrites_a_commit() {
        let c = RecordCache::new(100_000);
        let g = c.generation();
        // The writer commits seq 2 while a reader still holds seq 1 from the database.
        c.committed(vec![rec(2)]);
        c.fill(&rec(1), g);
        assert_eq!(c.get(&Uuid::nil()).unwrap().seq, 2);
    }

    #[test]
    fn stays_bounded_in_bytes_and_counts_exactly() {
        let one = record_bytes(&rec(1));
        let budget = 100 * one;
        let c = RecordCache::new(budget);
        let mut ids = Vec::new();
        for i in 0..1_000 {
            let mut r = rec(i);
            r.id = Uuid::now_v7();
            ids.push(r.id);
            c.committed(vec![r.clone()]);
            assert!(c.bytes() <= budget, "over budget after {i}");
        }
        let held: usize = c.lock().map.values().map(|(_, n)| *n).sum();
        assert_eq!(held, c.bytes(), "the running total is exact");
        // The newest record is always there; replacing a record does not count it twice.
        let last = *ids.last().unwrap();
        assert!(c.get(&last).is_some());
        let before = c.bytes();
        let mut again = rec(2_000);
        again.id = last;
        c.committed(vec![again.clone()]);
        assert_eq!(c.bytes(), before);
        assert_eq!(c.get(&last).unwrap().seq, 2_000);
    }

    #[test]
    fn a_record_too_large_for_the_cache_is_not_kept() {
        let c = RecordCache::new(1_000);
        let mut big = rec(1);
        big.fields
            .insert("notes".into(), Value::Text("x".repeat(10_000)));
        c.committed(vec![big.clone()]);
        assert!(c.get(&Uuid::nil()).is_none());
        assert_eq!(c.bytes(), 0);
    }
}
