//! Explain: why two records are, or are not, one customer.

use std::fmt;

use crate::constraints::Conflict;
use crate::engine::{Engine, Matcher, StewardDecision};
use crate::score::Evidence;

/// The decision on a pair, in the order the engine applies them.
#[derive(Clone, Debug, PartialEq)]
pub enum Decision {
    /// A data steward linked them; the matcher is not asked.
    LinkedBySteward,
    /// A data steward unlinked them; nothing joins them.
    UnlinkedBySteward,
    /// A constraint keeps them apart whatever the score.
    KeptApart(Conflict),
    /// Score at least the threshold and compared (they share a live block).
    Match,
    /// Compared, but the score is below the threshold.
    NoMatch,
    /// Never compared: no live block in common (they may still share a cluster through
    /// others).
    NotCompared,
}

impl fmt::Display for Decision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Decision::LinkedBySteward => f.write_str("linked by a data steward"),
            Decision::UnlinkedBySteward => f.write_str("unlinked by a data steward"),
            Decision::KeptApart(c) => write!(f, "kept apart: {c}"),
            Decision::Match => f.write_str("match"),
            Decision::NoMatch => f.write_str("no match"),
            Decision::NotCompared => f.write_str("not compared (no common block)"),
        }
    }
}

/// For a pair: the evidence per attribute, the score, the constraint, the decision, and
/// whether they ended in one cluster.
#[derive(Clone, Debug, PartialEq)]
pub struct Explanation {
    pub a: String,
    pub b: String,
    pub evidence: Vec<Evidence>,
    pub score: f32,
    pub threshold: f32,
    pub conflict: Option<Conflict>,
    pub steward: Option<StewardDecision>,
    pub decision: Decision,
    pub same_cluster: bool,
}

impl<M: Matcher> Engine<M> {
    /// Explains a pair of records; `None` when either is unknown.
    pub fn explain(&self, a: &str, b: &str) -> Option<Explanation> {
        let (sa, sb) = (self.slot(a)?, self.slot(b)?);
        let mut evidence = Vec::new();
        let score = self.pair_score(sa, sb, Some(&mut evidence));
        let threshold = self.matcher.threshold();
        let linked = self.linked_slots(sa).any(|s| s == sb);
        let unlinked = self.is_unlinked(sa, sb);
        let (lo, hi) = if a <= b { (a, b) } else { (b, a) };
        let steward = if linked {
            Some(StewardDecision::Link(lo.to_owned(), hi.to_owned()))
        } else if unlinked {
            Some(StewardDecision::Unlink(lo.to_owned(), hi.to_owned()))
        } else {
            None
        };
        let conflict = match (&self.feats[sa as usize], &self.feats[sb as usize]) {
            (Some(fa), Some(fb)) => self.matcher.conflict(fa, fb),
            _ => None,
        };
        let decision = if unlinked {
            Decision::UnlinkedBySteward
        } else if linked {
            Decision::LinkedBySteward
        } else if let Some(c) = &conflict {
            Decision::KeptApart(c.clone())
        } else if !self.share_live_block(sa, sb) {
            Decision::NotCompared
        } else if score >= threshold {
            Decision::Match
        } else {
            Decision::NoMatch
        };
        Some(Explanation {
            a: a.to_owned(),
            b: b.to_owned(),
            evidence,
            score,
            threshold,
            conflict,
            steward,
            decision,
            same_cluster: self.cluster_of[sa as usize] == self.cluster_of[sb as usize],
        })
    }
}
