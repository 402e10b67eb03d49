//! What a write changes of anti-entropy's bucket sums (`delivery_sums`, `replica_sums`),
//! gathered per batch so the tables take one upsert per touched bucket, not one per row.

use std::collections::HashMap;

/// A row's share of its bucket's sums: `(bucket, sum_part, digest known)`.
pub(crate) type Share = (i64, i64, bool);

/// A live row's share: its bucket (None: from before buckets were kept, counts nowhere),
/// `sum_part`, and whether its digest is known.
/// The stored bucket is taken as it is (it is what the row counted in), never asserted:
/// stored data must not stop the writer.
pub(crate) fn share_of(bucket: Option<i64>, sum_part: Option<i64>) -> Option<Share> {
    let bucket = bucket?;
    Some((bucket, sum_part.unwrap_or(0), sum_part.is_some()))
}

/// (partner, bucket, policy key) of the owner's sums.
pub(crate) type DeliveryKey = (String, i64, String);
/// (owner, bucket) of the partner's sums.
pub(crate) type ReplicaKey = (String, i64);

/// The owner's ledger: per (partner, bucket, policy key) the change of the sum and the row
/// count. The policy key is the fingerprint the digest was computed under, or "" for a row
/// whose digest is unknown.
#[derive(Debug, Default)]
pub(crate) struct DeliverySumDeltas {
    pub(crate) by_key: HashMap<DeliveryKey, (i64, i64)>,
}

impl DeliverySumDeltas {
    /// `sign` +1 adds a live row's share, -1 takes it out.
    pub(crate) fn add(&mut self, org: &str, share: Share, policy: Option<&str>, sign: i64) {
        let (bucket, sum_part, known) = share;
        let key = match policy {
            Some(p) if known => p.to_string(),
            _ => String::new(),
        };
        let slot = self
            .by_key
            .entry((org.to_string(), bucket, key))
            .or_default();
        slot.0 += sign * sum_part;
        slot.1 += sign;
    }

    /// The entries that change something.
    pub(crate) fn changed(&self) -> Vec<(&DeliveryKey, &(i64, i64))> {
        let mut out: Vec<_> = self.by_key.iter().filter(|(_, d)| **d != (0, 0)).collect();
        // One order for every writer: two batches never take the same rows in opposite order.
        out.sort_by(|a, b| a.0.cmp(b.0));
        out
    }
}

/// The partner's replicas: per (owner, bucket) the change of the sum, of the rows without a
/// digest and of the row count.
#[derive(Debug, Default)]
pub(crate) struct ReplicaSumDeltas {
    pub(crate) by_key: HashMap<ReplicaKey, (i64, i64, i64)>,
}

impl ReplicaSumDeltas {
    pub(crate) fn add(&mut self, owner: &str, share: Share, sign: i64) {
        let (bucket, sum_part, known) = share;
        let slot = self.by_key.entry((owner.to_string(), bucket)).or_default();
        slot.0 += sign * sum_part;
        slot.1 += sign * i64::from(!known);
        slot.2 += sign;
    }

    pub(crate) fn changed(&self) -> Vec<(&ReplicaKey, &(i64, i64, i64))> {
        let mut out: Vec<_> = self
            .by_key
            .iter()
            .filter(|(_, d)| **d != (0, 0, 0))
            .collect();
        out.sort_by(|a, b| a.0.cmp(b.0));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use uuid::Uuid;

    #[test]
    fn a_row_taken_out_and_put_back_changes_nothing() {
        let id = Uuid::now_v7();
        let bucket = verbund_core::sync::bucket_of(&id) as i64;
        let share = share_of(Some(bucket), Some(17)).unwrap();
        let mut d = DeliverySumDeltas::default();
        d.add("globex", share, Some("p1"), -1);
        d.add("globex", share, Some("p1"), 1);
        assert!(d.changed().is_empty());
        // Under another policy it moves from one key to the other.
        d.add("globex", share, Some("p1"), -1);
        d.add("globex", share, Some("p2"), 1);
        let changed = d.changed();
        assert_eq!(changed.len(), 2);
        assert_eq!(
            changed[0],
            (&("globex".into(), bucket, "p1".into()), &(-17, -1))
        );
        assert_eq!(
            changed[1],
            (&("globex".into(), bucket, "p2".into()), &(17, 1))
        );
    }

    #[test]
    fn a_row_without_digest_counts_under_the_unknown_key() {
        let id = Uuid::now_v7();
        let bucket = verbund_core::sync::bucket_of(&id) as i64;
        let mut d = DeliverySumDeltas::default();
        d.add(
            "globex",
            share_of(Some(bucket), None).unwrap(),
            Some("p1"),
            1,
        );
        assert_eq!(
            d.changed(),
            vec![(&("globex".into(), bucket, String::new()), &(0, 1))]
        );
        let mut r = ReplicaSumDeltas::default();
        r.add("acme", share_of(Some(bucket), None).unwrap(), 1);
        r.add("acme", share_of(Some(bucket), Some(5)).unwrap(), 1);
        assert_eq!(r.changed(), vec![(&("acme".into(), bucket), &(5, 1, 2))]);
        // A row from before buckets were kept counts nowhere.
        assert_eq!(share_of(None, Some(5)), None);
    }
}
