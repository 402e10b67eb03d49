//! The engine: records in, clusters out, incrementally.
//!
//! The clustering is a function of the set of records and steward decisions, not of the order
//! in which they arrived: candidate edges (pairs sharing a live block and scoring at least the
//! threshold) form a graph; within each connected component, steward links are applied first,
//! then edges by (score desc, record keys), each merge only if no pair across the two clusters
//! conflicts. A change recomputes only the components it touches (see `region.rs`).

use std::collections::HashMap;

use crate::constraints::Conflict;
use crate::keys::KeyHash;
use crate::score::{Evidence, Rarity};

/// What the engine needs from a kind of record (accounts, contacts).
pub trait Matcher: Sync {
    /// The record as the caller has it.
    type Input;
    /// What the matcher compares, normalized once per record version.
    type Features: Send + Sync;

    fn features(&self, input: &Self::Input) -> Self::Features;
    /// Block keys; two records are compared only when they share a block of at most the cap.
    /// Every key whose rarity `score` asks for must be among them.
    fn block_keys(&self, f: &Self::Features, out: &mut Vec<u64>);
    /// The pair's score; `rarity` tells how common a block key is. Must be symmetric.
    fn score(
        &self,
        a: &Self::Features,
        b: &Self::Features,
        rarity: &dyn Fn(u64) -> Rarity,
        explain: Option<&mut Vec<Evidence>>,
    ) -> f32;
    /// A constraint that keeps the pair apart whatever the score. Must be symmetric.
    fn conflict(&self, a: &Self::Features, b: &Self::Features) -> Option<Conflict>;
    /// Pairs scoring at least this are candidate edges.
    fn threshold(&self) -> f32;
}

/// Tuning that is not the matcher's.
#[derive(Clone, Copy, Debug)]
pub struct EngineOptions {
    /// Blocks with more members than this make no candidates (a common token or a shared
    /// switchboard would otherwise compare everything with everything).
    pub block_cap: usize,
    /// Threads for the batch build.
    pub threads: usize,
}

impl Default for EngineOptions {
    fn default() -> Self {
        EngineOptions {
            block_cap: 100,
            threads: 2,
        }
    }
}

/// A record whose cluster changed: before and after are cluster keys (the smallest record key
/// of the cluster), `None` when the record was absent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClusterChange {
    pub record: String,
    pub before: Option<String>,
    pub after: Option<String>,
}

/// A data steward's decision about a pair of records, kept by record key (so it outlives a
/// record's removal and applies again when it returns). The caller persists these.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum StewardDecision {
    Link(String, String),
    Unlink(String, String),
}

pub(crate) const NONE: u32 = u32::MAX;

/// Sizes of an engine.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EngineStats {
    pub records: usize,
    /// Distinct block keys.
    pub blocks: usize,
    /// Blocks with two to `block_cap` members (the ones that make candidates).
    pub live_blocks: usize,
    /// Candidate edges (pairs at or above the threshold).
    pub edges: usize,
    pub clusters: usize,
}

/// Records, blocks, candidate edges, clusters and steward decisions of one kind of record.
pub struct Engine<M: Matcher> {
    pub(crate) matcher: M,
    pub(crate) opts: EngineOptions,
    /// Slot by record key: by the key's 64-bit hash (no second copy of every key), with
    /// the rare colliding key in `id_overflow`.
    pub(crate) ids: HashMap<u64, u32, KeyHash>,
    pub(crate) id_overflow: HashMap<Box<str>, u32>,
    pub(crate) records: usize,
    /// Record key per slot; empty for a free slot.
    pub(crate) keys: Vec<Box<str>>,
    pub(crate) feats: Vec<Option<M::Features>>,
    pub(crate) free: Vec<u32>,
    pub(crate) blocks: HashMap<u64, crate::blocking::Members, KeyHash>,
    /// Candidate edges (score ≥ threshold), both directions.
    pub(crate) adj: Vec<Vec<(u32, f32)>>,
    /// The slot of the cluster's representative (its smallest record key); NONE when free.
    pub(crate) cluster_of: Vec<u32>,
    /// Members of clusters with more than one record, by representative.
    pub(crate) members: HashMap<u32, Vec<u32>>,
    pub(crate) links: HashMap<Box<str>, Vec<Box<str>>>,
    pub(crate) unlinks: HashMap<Box<str>, Vec<Box<str>>>,
}

fn ordered(a: &str, b: &str) -> (String, String) {
    if a <= b {
        (a.to_owned(), b.to_owned())
    } else {
        (b.to_owned(), a.to_owned())
    }
}

impl<M: Matcher> Engine<M> {
    pub fn new(matcher: M, opts: EngineOptions) -> Self {
        Engine {
            matcher,
            opts,
            ids: HashMap::default(),
            id_overflow: HashMap::new(),
            records: 0,
            keys: Vec::new(),
            feats: Vec::new(),
            free: Vec::new(),
            blocks: HashMap::default(),
            adj: Vec::new(),
            cluster_of: Vec::new(),
            members: HashMap::new(),
            links: HashMap::new(),
            unlinks: HashMap::new(),
        }
    }

    /// The slot of a present record.
    pub(crate) fn slot(&self, record: &str) -> Option<u32> {
        let h = crate::keys::key(crate::keys::KeyKind::Record, record);
        match self.ids.get(&h) {
            Some(&s) if *self.keys[s as usize] == *record => Some(s),
            _ => self.id_overflow.get(record).copied(),
        }
    }

    pub(crate) fn remember_slot(&mut self, record: &str, slot: u32) {
        let h = crate::keys::key(crate::keys::KeyKind::Record, record);
        match self.ids.entry(h) {
            std::collections::hash_map::Entry::Occupied(_) => {
                self.id_overflow.insert(record.into(), slot);
            }
            std::collections::hash_map::Entry::Vacant(v) => {
                v.insert(slot);
            }
        }
        self.records += 1;
    }

    pub(crate) fn forget_slot(&mut self, record: &str, slot: u32) {
        let h = crate::keys::key(crate::keys::KeyKind::Record, record);
        if self.ids.get(&h) == Some(&slot) {
            self.ids.remove(&h);
        } else {
            self.id_overflow.remove(record);
        }
        self.records -= 1;
    }

    pub fn matcher(&self) -> &M {
        &self.matcher
    }

    /// Number of records.
    pub fn len(&self) -> usize {
        self.records
    }

    pub fn is_empty(&self) -> bool {
        self.records == 0
    }

    pub fn contains(&self, record: &str) -> bool {
        self.slot(record).is_some()
    }

    /// The features of a record (for callers that match on clusters of another engine).
    pub fn features_of(&self, record: &str) -> Option<&M::Features> {
        self.slot(record)
            .and_then(|i| self.feats[i as usize].as_ref())
    }

    /// The cluster key (smallest record key of its cluster) of a record.
    pub fn cluster_of(&self, record: &str) -> Option<&str> {
        let i = self.slot(record)?;
        let rep = self.cluster_of[i as usize];
        (rep != NONE).then(|| &*self.keys[rep as usize])
    }

    /// The records of the cluster `record` belongs to, sorted.
    pub fn cluster_members(&self, record: &str) -> Vec<&str> {
        let Some(i) = self.slot(record) else {
            return Vec::new();
        };
        let mut out: Vec<&str> = self
            .members_of(i)
            .iter()
            .map(|&m| &*self.keys[m as usize])
            .collect();
        out.sort_unstable();
        out
    }

    pub(crate) fn members_of(&self, slot: u32) -> Vec<u32> {
        let rep = self.cluster_of[slot as usize];
        match self.members.get(&rep) {
            Some(m) => m.clone(),
            None => vec![slot],
        }
    }

    /// All clusters, each sorted, sorted by their first record: the partition the engine
    /// maintains (tests compare these).
    pub fn partition(&self) -> Vec<Vec<String>> {
        let mut out: Vec<Vec<String>> = Vec::new();
        for (slot, &rep) in self.cluster_of.iter().enumerate() {
            if rep == NONE || rep as usize != slot {
                continue;
            }
            let mut c: Vec<String> = self
                .members_of(slot as u32)
                .iter()
                .map(|&m| self.keys[m as usize].to_string())
                .collect();
            c.sort_unstable();
            out.push(c);
        }
        out.sort_unstable();
        out
    }

    /// Cluster keys and sizes, cheaply (for metrics over a million records).
    pub fn for_each_record(&self, mut f: impl FnMut(&str, &str)) {
        for (slot, &rep) in self.cluster_of.iter().enumerate() {
            if rep != NONE {
                f(&self.keys[slot], &self.keys[rep as usize]);
            }
        }
    }

    /// Sizes, for benchmarks.
    pub fn stats(&self) -> EngineStats {
        EngineStats {
            records: self.records,
            blocks: self.blocks.len(),
            live_blocks: self
                .blocks
                .values()
                .filter(|m| m.len() > 1 && m.len() <= self.opts.block_cap)
                .count(),
            edges: self.adj.iter().map(Vec::len).sum::<usize>() / 2,
            clusters: self
                .cluster_of
                .iter()
                .enumerate()
                .filter(|&(s, &r)| r as usize == s)
                .count(),
        }
    }

    /// The steward decisions in force, sorted (what the caller persists).
    pub fn decisions(&self) -> Vec<StewardDecision> {
        let mut out = Vec::new();
        for (map, link) in [(&self.links, true), (&self.unlinks, false)] {
            for (a, bs) in map {
                for b in bs {
                    if **a < **b {
                        out.push(if link {
                            StewardDecision::Link(a.to_string(), b.to_string())
                        } else {
                            StewardDecision::Unlink(a.to_string(), b.to_string())
                        });
                    }
                }
            }
        }
        out.sort_unstable();
        out
    }

    pub(crate) fn is_unlinked(&self, a: u32, b: u32) -> bool {
        let (ka, kb) = (&self.keys[a as usize], &self.keys[b as usize]);
        self.unlinks
            .get(ka)
            .is_some_and(|v| v.iter().any(|x| x == kb))
    }

    pub(crate) fn linked_slots(&self, slot: u32) -> impl Iterator<Item = u32> + '_ {
        self.links
            .get(&self.keys[slot as usize])
            .into_iter()
            .flatten()
            .filter_map(|k| self.slot(k))
    }

    pub(crate) fn rarity(&self, key: u64) -> Rarity {
        Rarity::of(
            self.blocks.get(&key).map_or(0, |m| m.len()),
            self.opts.block_cap,
        )
    }

    /// The score of a pair, always computed with the smaller record key first so that the
    /// floating-point result does not depend on which side asked.
    pub(crate) fn pair_score(&self, a: u32, b: u32, explain: Option<&mut Vec<Evidence>>) -> f32 {
        let (lo, hi) = if self.keys[a as usize] <= self.keys[b as usize] {
            (a, b)
        } else {
            (b, a)
        };
        match (&self.feats[lo as usize], &self.feats[hi as usize]) {
            (Some(fa), Some(fb)) => self.matcher.score(fa, fb, &|k| self.rarity(k), explain),
            _ => f32::NEG_INFINITY,
        }
    }

    pub(crate) fn pair_conflict(&self, a: u32, b: u32) -> Option<Conflict> {
        if self.is_unlinked(a, b) {
            return Some(Conflict::UnlinkedBySteward);
        }
        match (&self.feats[a as usize], &self.feats[b as usize]) {
            (Some(fa), Some(fb)) => self.matcher.conflict(fa, fb),
            _ => None,
        }
    }

    fn add_decision(map: &mut HashMap<Box<str>, Vec<Box<str>>>, a: &str, b: &str) -> bool {
        let la = map.entry(a.into()).or_default();
        if la.iter().any(|x| &**x == b) {
            return false;
        }
        la.push(b.into());
        map.entry(b.into()).or_default().push(a.into());
        true
    }

    fn drop_decision(map: &mut HashMap<Box<str>, Vec<Box<str>>>, a: &str, b: &str) -> bool {
        let mut dropped = false;
        for (x, y) in [(a, b), (b, a)] {
            if let Some(v) = map.get_mut(x) {
                let before = v.len();
                v.retain(|k| &**k != y);
                dropped |= v.len() != before;
                if v.is_empty() {
                    map.remove(x);
                }
            }
        }
        dropped
    }

    /// Records a steward decision (replacing an opposite one on the same pair) and reclusters.
    pub fn decide(&mut self, decision: StewardDecision) -> Vec<ClusterChange> {
        let (StewardDecision::Link(a, b) | StewardDecision::Unlink(a, b)) = &decision;
        if !self.record_decision(&decision) {
            return Vec::new();
        }
        self.recluster_around_keys(&[a, b])
    }

    /// Stores a decision, replacing an opposite one on the same pair; false when it was
    /// already in force.
    pub(crate) fn record_decision(&mut self, decision: &StewardDecision) -> bool {
        let (a, b, link) = match decision {
            StewardDecision::Link(a, b) => (a.as_str(), b.as_str(), true),
            StewardDecision::Unlink(a, b) => (a.as_str(), b.as_str(), false),
        };
        if a == b {
            return false;
        }
        let (a, b) = ordered(a, b);
        if link {
            Self::drop_decision(&mut self.unlinks, &a, &b);
            Self::add_decision(&mut self.links, &a, &b)
        } else {
            Self::drop_decision(&mut self.links, &a, &b);
            Self::add_decision(&mut self.unlinks, &a, &b)
        }
    }

    /// Withdraws a steward decision on a pair; the matcher decides again.
    pub fn forget_decision(&mut self, a: &str, b: &str) -> Vec<ClusterChange> {
        let l = Self::drop_decision(&mut self.links, a, b);
        let u = Self::drop_decision(&mut self.unlinks, a, b);
        if !(l || u) {
            return Vec::new();
        }
        self.recluster_around_keys(&[a, b])
    }

    /// A steward takes a record out of its cluster: an unlink against every other member.
    pub fn unlink_from_cluster(&mut self, record: &str) -> Vec<ClusterChange> {
        let mates: Vec<String> = self
            .cluster_members(record)
            .into_iter()
            .filter(|m| *m != record)
            .map(str::to_owned)
            .collect();
        for m in &mates {
            let (a, b) = ordered(record, m);
            Self::drop_decision(&mut self.links, &a, &b);
            Self::add_decision(&mut self.unlinks, &a, &b);
        }
        if mates.is_empty() {
            return Vec::new();
        }
        self.recluster_around_keys(&[record])
    }

    fn recluster_around_keys(&mut self, keys: &[&str]) -> Vec<ClusterChange> {
        let seeds: Vec<u32> = keys.iter().filter_map(|k| self.slot(k)).collect();
        self.recluster(seeds, Vec::new())
    }
}
