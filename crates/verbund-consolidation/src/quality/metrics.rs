//! Quality of a partition against the truth: pairwise precision, recall and F1 (over all pairs
//! of records put together), and B-cubed (per record, averaged).

use std::collections::HashMap;

/// Precision, recall and F1 of one measure.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Prf {
    pub precision: f64,
    pub recall: f64,
    pub f1: f64,
}

impl Prf {
    fn new(precision: f64, recall: f64) -> Self {
        let f1 = if precision + recall > 0.0 {
            2.0 * precision * recall / (precision + recall)
        } else {
            0.0
        };
        Prf {
            precision,
            recall,
            f1,
        }
    }
}

/// Both measures, and the counts behind the pairwise one.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Quality {
    pub pairwise: Prf,
    pub bcubed: Prf,
    pub true_pairs: u64,
    pub predicted_pairs: u64,
    pub correct_pairs: u64,
    pub records: u64,
    pub predicted_clusters: u64,
    pub true_entities: u64,
}

fn pairs(n: u64) -> u64 {
    n * n.saturating_sub(1) / 2
}

/// `labels[i] = (predicted cluster, true entity)` of record i.
pub fn quality(labels: &[(u32, u32)]) -> Quality {
    let mut cell: HashMap<(u32, u32), u64> = HashMap::new();
    let mut predicted: HashMap<u32, u64> = HashMap::new();
    let mut truth: HashMap<u32, u64> = HashMap::new();
    for &(p, t) in labels {
        *cell.entry((p, t)).or_default() += 1;
        *predicted.entry(p).or_default() += 1;
        *truth.entry(t).or_default() += 1;
    }
    let correct: u64 = cell.values().map(|&n| pairs(n)).sum();
    let predicted_pairs: u64 = predicted.values().map(|&n| pairs(n)).sum();
    let true_pairs: u64 = truth.values().map(|&n| pairs(n)).sum();
    let ratio = |a: u64, b: u64| if b == 0 { 1.0 } else { a as f64 / b as f64 };
    // B-cubed: each record in cell (p, t) has precision n/|p| and recall n/|t|.
    let (mut bp, mut br) = (0.0, 0.0);
    for (&(p, t), &n) in &cell {
        let n = n as f64;
        bp += n * n / predicted[&p] as f64;
        br += n * n / truth[&t] as f64;
    }
    let records = labels.len().max(1) as f64;
    Quality {
        pairwise: Prf::new(ratio(correct, predicted_pairs), ratio(correct, true_pairs)),
        bcubed: Prf::new(bp / records, br / records),
        true_pairs,
        predicted_pairs,
        correct_pairs: correct,
        records: labels.len() as u64,
        predicted_clusters: predicted.len() as u64,
        true_entities: truth.len() as u64,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn perfect_and_merged() {
        let perfect = quality(&[(0, 7), (0, 7), (1, 8)]);
        assert_eq!(perfect.pairwise.f1, 1.0);
        assert_eq!(perfect.bcubed.f1, 1.0);
        // Everything in one cluster: one correct pair of three predicted.
        let merged = quality(&[(0, 7), (0, 7), (0, 8)]);
        assert!((merged.pairwise.precision - 1.0 / 3.0).abs() < 1e-9);
        assert_eq!(merged.pairwise.recall, 1.0);
        // B-cubed precision: (2/3 + 2/3 + 1/3) / 3.
        assert!((merged.bcubed.precision - 5.0 / 9.0).abs() < 1e-9);
        assert_eq!(merged.bcubed.recall, 1.0);
    }
}
