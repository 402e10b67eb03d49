//! Clustering of a region: per connected component, steward links first, then candidate
//! edges by (score desc, record keys), each merge checked against every pair across the two
//! clusters. A weak link cannot chain two clusters that conflict anywhere, and the order of
//! arrival plays no part: the component's records and decisions alone decide.

use std::collections::HashMap;

use crate::engine::{ClusterChange, Engine, Matcher, NONE};

/// Union-find over local indices that keeps each root's members (merge smaller into larger).
struct Groups {
    root: Vec<u32>,
    members: Vec<Vec<u32>>,
}

impl Groups {
    fn new(n: usize) -> Self {
        Groups {
            root: (0..n as u32).collect(),
            members: (0..n as u32).map(|i| vec![i]).collect(),
        }
    }

    fn find(&self, i: u32) -> u32 {
        self.root[i as usize]
    }

    fn merge(&mut self, a: u32, b: u32) {
        let (big, small) = if self.members[a as usize].len() >= self.members[b as usize].len() {
            (a, b)
        } else {
            (b, a)
        };
        let moved = std::mem::take(&mut self.members[small as usize]);
        for &m in &moved {
            self.root[m as usize] = big;
        }
        self.members[big as usize].extend(moved);
    }
}

impl<M: Matcher> Engine<M> {
    /// Splits a closed region into connected components (edges and steward links).
    fn components(&self, region: &[u32]) -> Vec<Vec<u32>> {
        let index: HashMap<u32, usize> = region.iter().enumerate().map(|(i, &s)| (s, i)).collect();
        let mut done = vec![false; region.len()];
        let mut out = Vec::new();
        for start in 0..region.len() {
            if done[start] {
                continue;
            }
            done[start] = true;
            let mut comp = vec![region[start]];
            let mut i = 0;
            while i < comp.len() {
                let s = comp[i];
                i += 1;
                let next: Vec<u32> = self.adj[s as usize]
                    .iter()
                    .map(|&(n, _)| n)
                    .chain(self.linked_slots(s))
                    .collect();
                for n in next {
                    if let Some(&j) = index.get(&n)
                        && !done[j]
                    {
                        done[j] = true;
                        comp.push(n);
                    }
                }
            }
            out.push(comp);
        }
        out
    }

    /// The clusters of one component, as lists of slots.
    fn cluster_component(&self, comp: &mut [u32]) -> Vec<Vec<u32>> {
        if comp.len() == 1 {
            return vec![comp.to_vec()];
        }
        comp.sort_unstable();
        let local = |s: u32| comp.binary_search(&s).ok().map(|i| i as u32);
        let key = |s: u32| &*self.keys[s as usize];
        let mut links: Vec<(u32, u32)> = Vec::new();
        let mut edges: Vec<(f32, u32, u32)> = Vec::new();
        for &s in comp.iter() {
            for t in self.linked_slots(s) {
                if key(s) < key(t) && local(t).is_some() {
                    links.push((s, t));
                }
            }
            for &(t, score) in &self.adj[s as usize] {
                if key(s) < key(t) && local(t).is_some() {
                    edges.push((score, s, t));
                }
            }
        }
        links.sort_unstable_by(|a, b| (key(a.0), key(a.1)).cmp(&(key(b.0), key(b.1))));
        edges.sort_unstable_by(|a, b| {
            b.0.total_cmp(&a.0)
                .then_with(|| (key(a.1), key(a.2)).cmp(&(key(b.1), key(b.2))))
        });
        let mut groups = Groups::new(comp.len());
        let slot_of = |l: u32| comp[l as usize];
        let steps = links
            .iter()
            .map(|&(a, b)| (a, b, true))
            .chain(edges.iter().map(|&(_, a, b)| (a, b, false)));
        for (a, b, by_steward) in steps {
            let (Some(la), Some(lb)) = (local(a), local(b)) else {
                continue;
            };
            let (ra, rb) = (groups.find(la), groups.find(lb));
            if ra == rb {
                continue;
            }
            // Steward links only yield to steward unlinks; matcher edges to every constraint.
            let blocked = groups.members[ra as usize].iter().any(|&x| {
                groups.members[rb as usize].iter().any(|&y| {
                    let (sx, sy) = (slot_of(x), slot_of(y));
                    if by_steward {
                        self.is_unlinked(sx, sy)
                    } else {
                        self.pair_conflict(sx, sy).is_some()
                    }
                })
            });
            if !blocked {
                groups.merge(ra, rb);
            }
        }
        groups
            .members
            .into_iter()
            .filter(|m| !m.is_empty())
            .map(|m| m.into_iter().map(slot_of).collect())
            .collect()
    }

    /// Reclusters a closed region and reports the records whose cluster key changed.
    pub(crate) fn cluster_region(&mut self, region: &[u32], report: bool) -> Vec<ClusterChange> {
        let before: Vec<Option<String>> = region
            .iter()
            .filter(|_| report)
            .map(|&s| {
                let rep = self.cluster_of[s as usize];
                (rep != NONE).then(|| self.keys[rep as usize].to_string())
            })
            .collect();
        let mut clusters = Vec::new();
        for mut comp in self.components(region) {
            clusters.extend(self.cluster_component(&mut comp));
        }
        for &s in region {
            let rep = self.cluster_of[s as usize];
            self.members.remove(&rep);
        }
        for c in clusters {
            self.assign(c);
        }
        let mut changes = Vec::new();
        // (`before` is empty when not reporting.)
        for (&s, before) in region.iter().zip(before) {
            let after = self.keys[self.cluster_of[s as usize] as usize].to_string();
            if before.as_deref() != Some(after.as_str()) {
                changes.push(ClusterChange {
                    record: self.keys[s as usize].to_string(),
                    before,
                    after: Some(after),
                });
            }
        }
        changes
    }

    fn assign(&mut self, cluster: Vec<u32>) {
        let Some(&rep) = cluster
            .iter()
            .min_by(|a, b| self.keys[**a as usize].cmp(&self.keys[**b as usize]))
        else {
            return;
        };
        for &m in &cluster {
            self.cluster_of[m as usize] = rep;
        }
        if cluster.len() > 1 {
            self.members.insert(rep, cluster);
        }
    }

    /// Builds an engine from a whole set of records and decisions at once: every record's
    /// blocks, all candidate edges (on several threads), then the clusters per component —
    /// the same clusters incremental maintenance arrives at.
    pub fn build<K, I>(
        matcher: M,
        opts: crate::engine::EngineOptions,
        records: impl IntoIterator<Item = (K, I)>,
        decisions: &[crate::engine::StewardDecision],
    ) -> Self
    where
        K: AsRef<str>,
        I: std::borrow::Borrow<M::Input>,
    {
        let mut engine = Engine::new(matcher, opts);
        // As `decide` does: a later decision on a pair replaces an earlier one.
        for d in decisions {
            engine.record_decision(d);
        }
        let mut keys = Vec::new();
        for (record, input) in records {
            let record = record.as_ref();
            let feats = engine.matcher.features(input.borrow());
            keys.clear();
            engine.matcher.block_keys(&feats, &mut keys);
            keys.sort_unstable();
            keys.dedup();
            let slot = match engine.slot(record) {
                Some(s) => {
                    let mut old = Vec::new();
                    engine.block_keys_of(s, &mut old);
                    for k in &old {
                        if let Some(m) = engine.blocks.get_mut(k) {
                            m.remove(s);
                        }
                    }
                    s
                }
                None => engine.allocate_slot(record),
            };
            for &k in &keys {
                engine.blocks.entry(k).or_default().push(slot);
            }
            engine.feats[slot as usize] = Some(feats);
            engine.cluster_of[slot as usize] = slot;
        }
        engine.blocks.retain(|_, m| m.len() > 0);
        engine.score_all();
        let region: Vec<u32> = (0..engine.keys.len() as u32)
            .filter(|&s| engine.feats[s as usize].is_some())
            .collect();
        engine.cluster_region(&region, false);
        engine
    }
}
