//! Incremental maintenance: a record arrives, changes or leaves, and only the region of the
//! candidate graph it touches is reclustered — the connected components around the records
//! whose edges changed, plus the clusters they were in. Everything outside keeps its clusters,
//! which are exactly what a batch run would give, because a component's clusters depend only
//! on the component.

use std::collections::{HashSet, VecDeque};

use crate::engine::{ClusterChange, Engine, Matcher, NONE};

impl<M: Matcher> Engine<M> {
    /// Inserts or replaces a record and reclusters around it.
    pub fn upsert(&mut self, record: &str, input: &M::Input) -> Vec<ClusterChange> {
        let feats = self.matcher.features(input);
        self.upsert_features(record, feats)
    }

    /// Changes a present record's features in place (for a caller that derives part of them
    /// from elsewhere, such as a contact's employer cluster) and reclusters around it.
    pub fn modify(
        &mut self,
        record: &str,
        change: impl FnOnce(&mut M::Features),
    ) -> Vec<ClusterChange>
    where
        M::Features: Clone,
    {
        let Some(mut feats) = self.features_of(record).cloned() else {
            return Vec::new();
        };
        change(&mut feats);
        self.upsert_features(record, feats)
    }

    fn upsert_features(&mut self, record: &str, feats: M::Features) -> Vec<ClusterChange> {
        let mut keys = Vec::new();
        self.matcher.block_keys(&feats, &mut keys);
        keys.sort_unstable();
        keys.dedup();
        let slot = match self.slot(record) {
            Some(s) => {
                let mut old_keys = Vec::new();
                self.block_keys_of(s, &mut old_keys);
                let mut touched = self.leave_blocks(s, &old_keys);
                touched.extend(self.enter_blocks(s, &keys));
                self.feats[s as usize] = Some(feats);
                touched.push(s);
                return self.rescore_and_recluster(touched, Vec::new());
            }
            None => self.allocate_slot(record),
        };
        let mut touched = self.enter_blocks(slot, &keys);
        self.feats[slot as usize] = Some(feats);
        self.cluster_of[slot as usize] = slot;
        touched.push(slot);
        let mut changes = self.rescore_and_recluster(touched, Vec::new());
        // A new record that stays alone is still a change (it appeared).
        if !changes.iter().any(|c| c.record == record) {
            changes.push(ClusterChange {
                record: record.to_owned(),
                before: None,
                after: self.cluster_of(record).map(str::to_owned),
            });
        }
        changes
    }

    /// Removes a record (revoked, erased, unshared); its steward decisions stay, as data.
    pub fn remove(&mut self, record: &str) -> Vec<ClusterChange> {
        let Some(slot) = self.slot(record) else {
            return Vec::new();
        };
        let before = self.cluster_of(record).map(str::to_owned);
        let mates: Vec<u32> = self
            .members_of(slot)
            .into_iter()
            .filter(|&m| m != slot)
            .collect();
        let mut old_keys = Vec::new();
        self.block_keys_of(slot, &mut old_keys);
        let mut touched = self.leave_blocks(slot, &old_keys);
        self.feats[slot as usize] = None;
        touched.push(slot);
        let mut changes = self.rescore_and_recluster(touched, mates);
        self.forget_slot(record, slot);
        self.keys[slot as usize] = Box::from("");
        self.cluster_of[slot as usize] = NONE;
        self.free.push(slot);
        changes.retain(|c| c.record != record);
        changes.push(ClusterChange {
            record: record.to_owned(),
            before,
            after: None,
        });
        changes
    }

    pub(crate) fn allocate_slot(&mut self, record: &str) -> u32 {
        let slot = match self.free.pop() {
            Some(s) => {
                self.keys[s as usize] = record.into();
                s
            }
            None => {
                self.keys.push(record.into());
                self.feats.push(None);
                self.adj.push(Vec::new());
                self.cluster_of.push(NONE);
                (self.keys.len() - 1) as u32
            }
        };
        self.remember_slot(record, slot);
        slot
    }

    fn rescore_and_recluster(
        &mut self,
        mut touched: Vec<u32>,
        extra: Vec<u32>,
    ) -> Vec<ClusterChange> {
        touched.sort_unstable();
        touched.dedup();
        let former = self.rescore(&touched);
        let mut seeds = touched;
        seeds.extend(former);
        self.recluster(seeds, extra)
    }

    /// Reclusters the region around `seeds` (and `extra`): their components in the candidate
    /// graph (edges and steward links) and the clusters any of them is in.
    pub(crate) fn recluster(&mut self, seeds: Vec<u32>, extra: Vec<u32>) -> Vec<ClusterChange> {
        let mut in_region: HashSet<u32> = HashSet::new();
        let mut queue: VecDeque<u32> = VecDeque::new();
        for s in seeds.into_iter().chain(extra) {
            if self.feats[s as usize].is_some() && in_region.insert(s) {
                queue.push_back(s);
            }
        }
        while let Some(s) = queue.pop_front() {
            let next: Vec<u32> = self.adj[s as usize]
                .iter()
                .map(|&(n, _)| n)
                .chain(self.linked_slots(s))
                .chain(self.members_of(s))
                .collect();
            for n in next {
                if self.feats[n as usize].is_some() && in_region.insert(n) {
                    queue.push_back(n);
                }
            }
        }
        let mut region: Vec<u32> = in_region.into_iter().collect();
        region.sort_unstable();
        self.cluster_region(&region, true)
    }
}
