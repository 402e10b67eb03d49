//! A bounded in-memory cache of records for the embedded SQLite backend, where this process is
//! the only writer. The writer task updates it after every commit (write-through); readers
//! fill it on a miss only if no commit happened while they read, so a reader can never put an
//! older version over a newer one.

use std::collections::HashMap;
use std::sync::Mutex;

use uuid::Uuid;
use verbund_core::Record;

#[derive(Debug)]
pub struct RecordCache {
    inner: Mutex<Inner>,
    capacity: usize,
}

#[derive(Debug)]
struct Inner {
    map: HashMap<Uuid, Record>,
    /// Bumped by every commit.
    generation: u64,
}

impl RecordCache {
    pub fn new(capacity: usize) -> RecordCache {
        RecordCache {
            inner: Mutex::new(Inner {
                map: HashMap::new(),
                generation: 0,
            }),
            capacity: capacity.max(1),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding the lock cannot leave the map half-updated in a way that
        // matters (each operation is a single insert/remove), so keep going.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn get(&self, id: &Uuid) -> Option<Record> {
        self.lock().map.get(id).cloned()
    }

    /// The generation to pass to [`RecordCache::fill`] after reading from the database.
    pub fn generation(&self) -> u64 {
        self.lock().generation
    }

    /// Caches a record read from the database, unless a commit happened since `generation`.
    pub fn fill(&self, record: &Record, generation: u64) {
        let mut inner = self.lock();
        if inner.generation == generation {
            Self::insert(&mut inner, record.clone(), self.capacity);
        }
    }

    /// Records just committed by the writer.
    pub fn committed<'a>(&self, records: impl Iterator<Item = &'a Record>) {
        let mut inner = self.lock();
        inner.generation += 1;
        for r in records {
            Self::insert(&mut inner, r.clone(), self.capacity);
        }
    }

    fn insert(inner: &mut Inner, record: Record, capacity: usize) {
        if inner.map.len() >= capacity && !inner.map.contains_key(&record.id) {
            // Crude but bounded: drop an arbitrary tenth (HashMap order is effectively random).
            let drop: Vec<Uuid> = inner.map.keys().take(capacity / 10 + 1).copied().collect();
            for k in drop {
                inner.map.remove(&k);
            }
        }
        inner.map.insert(record.id, record);
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

    #[test]
    fn a_stale_read_never_overwrites_a_commit() {
        let c = RecordCache::new(10);
        let g = c.generation();
        // The writer commits seq 2 while a reader still holds seq 1 from the database.
        c.committed([rec(2)].iter());
        c.fill(&rec(1), g);
        assert_eq!(c.get(&Uuid::nil()).unwrap().seq, 2);
    }

    #[test]
    fn stays_bounded() {
        let c = RecordCache::new(100);
        for _ in 0..1_000 {
            let mut r = rec(1);
            r.id = Uuid::now_v7();
            c.committed([r].iter());
        }
        assert!(c.lock().map.len() <= 100);
    }
}
