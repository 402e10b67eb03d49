//! Blocking: records are compared only with records sharing a block key (VAT ID, domain,
//! phone, a name token, ...), never all pairs. A block with more members than the cap makes no
//! candidates at all, so a common token cannot blow up the work; whether a block is live
//! depends only on its size, never on arrival order.

use std::collections::HashSet;

use crate::engine::{Engine, Matcher};
use crate::score::Rarity;

/// The members of a block: up to three inline (most blocks — a VAT ID, a phone, a rare name —
/// hold a handful of records), more on the heap. Saves an allocation per block at a million
/// records.
#[derive(Clone, Debug)]
pub(crate) enum Members {
    Few(u8, [u32; 3]),
    Many(Vec<u32>),
}

impl Default for Members {
    fn default() -> Self {
        Members::Few(0, [0; 3])
    }
}

impl Members {
    pub(crate) fn as_slice(&self) -> &[u32] {
        match self {
            Members::Few(n, items) => &items[..usize::from(*n)],
            Members::Many(v) => v,
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.as_slice().len()
    }

    pub(crate) fn push(&mut self, slot: u32) {
        match self {
            Members::Few(n, items) if usize::from(*n) < items.len() => {
                items[usize::from(*n)] = slot;
                *n += 1;
            }
            Members::Few(_, items) => {
                let mut v = items.to_vec();
                v.push(slot);
                *self = Members::Many(v);
            }
            Members::Many(v) => v.push(slot),
        }
    }

    pub(crate) fn remove(&mut self, slot: u32) {
        match self {
            Members::Few(n, items) => {
                if let Some(pos) = items[..usize::from(*n)].iter().position(|&m| m == slot) {
                    items[pos] = items[usize::from(*n) - 1];
                    *n -= 1;
                }
            }
            Members::Many(v) => {
                if let Some(pos) = v.iter().position(|&m| m == slot) {
                    v.swap_remove(pos);
                }
                if v.len() <= 3 {
                    let mut items = [0; 3];
                    items[..v.len()].copy_from_slice(v);
                    *self = Members::Few(v.len() as u8, items);
                }
            }
        }
    }
}

impl<M: Matcher> Engine<M> {
    /// The sorted, distinct block keys of a present record (recomputed from its features
    /// rather than stored: a million records × eight keys is memory better spent elsewhere).
    pub(crate) fn block_keys_of(&self, slot: u32, out: &mut Vec<u64>) {
        out.clear();
        if let Some(f) = &self.feats[slot as usize] {
            self.matcher.block_keys(f, out);
        }
        out.sort_unstable();
        out.dedup();
    }

    /// Adds a record's slot to its blocks; returns the slots whose scores may have changed
    /// because a block crossed a rarity class (its weights) or the cap (its liveness).
    pub(crate) fn enter_blocks(&mut self, slot: u32, keys: &[u64]) -> Vec<u32> {
        let cap = self.opts.block_cap;
        let mut touched = Vec::new();
        for &k in keys {
            let members = self.blocks.entry(k).or_default();
            let before = members.len();
            members.push(slot);
            if Rarity::of(before, cap) != Rarity::of(before + 1, cap) && before > 0 {
                touched.extend(members.as_slice().iter().copied().filter(|&m| m != slot));
            }
        }
        touched
    }

    /// Removes a record's slot from its blocks; returns the slots whose scores may change.
    pub(crate) fn leave_blocks(&mut self, slot: u32, keys: &[u64]) -> Vec<u32> {
        let cap = self.opts.block_cap;
        let mut touched = Vec::new();
        for &k in keys {
            let Some(members) = self.blocks.get_mut(&k) else {
                continue;
            };
            let before = members.len();
            members.remove(slot);
            let after = members.len();
            if Rarity::of(before, cap) != Rarity::of(after, cap) {
                touched.extend(members.as_slice().iter().copied());
            }
            if after == 0 {
                self.blocks.remove(&k);
            }
        }
        touched
    }

    /// Every other slot sharing a live block with `slot`, each once, in no particular order.
    pub(crate) fn candidates(&self, slot: u32, seen: &mut HashSet<u32>, out: &mut Vec<u32>) {
        seen.clear();
        out.clear();
        let mut keys = Vec::new();
        self.block_keys_of(slot, &mut keys);
        for k in &keys {
            let Some(members) = self.blocks.get(k) else {
                continue;
            };
            if members.len() > self.opts.block_cap {
                continue;
            }
            for &m in members.as_slice() {
                if m != slot && seen.insert(m) {
                    out.push(m);
                }
            }
        }
    }

    /// Whether two slots share a live block (for explain).
    pub(crate) fn share_live_block(&self, a: u32, b: u32) -> bool {
        let (mut ka, mut kb) = (Vec::new(), Vec::new());
        self.block_keys_of(a, &mut ka);
        self.block_keys_of(b, &mut kb);
        ka.iter().any(|k| {
            kb.contains(k)
                && self
                    .blocks
                    .get(k)
                    .is_some_and(|m| m.len() <= self.opts.block_cap)
        })
    }

    fn drop_edges(&mut self, slot: u32) -> Vec<u32> {
        let old = std::mem::take(&mut self.adj[slot as usize]);
        for &(n, _) in &old {
            self.adj[n as usize].retain(|&(m, _)| m != slot);
        }
        old.into_iter().map(|(n, _)| n).collect()
    }

    /// Rescores the edges of `slots` against their candidates. Returns the former neighbours
    /// (they may have lost an edge and must be reclustered too).
    pub(crate) fn rescore(&mut self, slots: &[u32]) -> Vec<u32> {
        let set: HashSet<u32> = slots.iter().copied().collect();
        let mut former = Vec::new();
        for &s in slots {
            former.extend(self.drop_edges(s));
        }
        let threshold = self.matcher.threshold();
        let mut seen = HashSet::new();
        let mut cands = Vec::new();
        for &s in slots {
            if self.feats[s as usize].is_none() {
                continue;
            }
            self.candidates(s, &mut seen, &mut cands);
            for &c in &cands {
                // A pair inside the set is scored once, from its smaller slot.
                if set.contains(&c) && c < s {
                    continue;
                }
                let score = self.pair_score(s, c, None);
                if score >= threshold {
                    self.adj[s as usize].push((c, score));
                    self.adj[c as usize].push((s, score));
                }
            }
        }
        former
    }

    /// All candidate edges of all records, from scratch, on `opts.threads` threads.
    pub(crate) fn score_all(&mut self) {
        let n = self.keys.len();
        let threads = self.opts.threads.max(1);
        let threshold = self.matcher.threshold();
        let this = &*self;
        let parts: Vec<Vec<(u32, u32, f32)>> = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..threads)
                .map(|t| {
                    scope.spawn(move || {
                        let mut edges = Vec::new();
                        // stamp[m] == s + 1: m already considered for s (no per-pair allocation).
                        let mut stamp = vec![0u32; n];
                        let mut keys = Vec::new();
                        for s in (t..n).step_by(threads) {
                            if this.feats[s].is_none() {
                                continue;
                            }
                            let s32 = s as u32;
                            this.block_keys_of(s32, &mut keys);
                            for k in &keys {
                                let Some(members) = this.blocks.get(k) else {
                                    continue;
                                };
                                if members.len() > this.opts.block_cap {
                                    continue;
                                }
                                for &m in members.as_slice() {
                                    if m <= s32 || stamp[m as usize] == s32 + 1 {
                                        continue;
                                    }
                                    stamp[m as usize] = s32 + 1;
                                    let score = this.pair_score(s32, m, None);
                                    if score >= threshold {
                                        edges.push((s32, m, score));
                                    }
                                }
                            }
                        }
                        edges
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().unwrap_or_else(|e| std::panic::resume_unwind(e)))
                .collect()
        });
        for a in self.adj.iter_mut() {
            a.clear();
        }
        for (a, b, s) in parts.into_iter().flatten() {
            self.adj[a as usize].push((b, s));
            self.adj[b as usize].push((a, s));
        }
    }
}
