//! The owner's side of anti-entropy (Digest). Round 1 compares the partner's 256 bucket sums
//! with those of the delivery ledger, which keeps the digest of every projection sent (the
//! database sums them: no record is read); round 2 computes, for the records of the
//! differing buckets only, what the partner should hold, and answers the repairs. A bucket
//! whose ledger rows have no digest that counts (from before digests were kept, or computed
//! under another policy: a reload may change projections) is compared record by record.

use super::*;

/// Buckets compared record by record per round (bounds the memory of a round; `more` asks
/// the partner to come back for the rest).
const DETAIL_BUCKETS_PER_ROUND: usize = 8;

/// Ledger rows compared record by record per round. A bucket holds 1/256 of what is shared
/// (about 3,900 rows at 1M), so at scale fewer buckets fit in a round: its memory follows
/// this bound, not the size of the share. A single bucket over it still goes alone.
const DETAIL_ROWS_PER_ROUND: i64 = 4_000;

/// The differing buckets (with their ledger rows) to compare in this round, in order: at most
/// `max_buckets`, and no more rows than `max_rows` unless the first bucket alone has more;
/// and whether others are left for a later round.
fn buckets_for_round(
    differing: &[(u32, i64)],
    max_buckets: usize,
    max_rows: i64,
) -> (Vec<u32>, bool) {
    let mut picked = Vec::new();
    let mut rows = 0i64;
    for &(bucket, n) in differing {
        if !picked.is_empty() && (picked.len() >= max_buckets || rows.saturating_add(n) > max_rows)
        {
            return (picked, true);
        }
        rows = rows.saturating_add(n);
        picked.push(bucket);
    }
    (picked, false)
}

/// What partner `p` should hold of one record: its projection (and the upsert carrying it),
/// or nothing.
struct Truth {
    digest: u64,
    kind: RecordKind,
    item: pb::SyncItem,
}

impl NodeState {
    /// What `p` should hold of each of `ids` (absent: nothing), through the enforcement
    /// point, reading only those records and the records around them.
    async fn truth_of(
        &self,
        p: &Principal,
        ids: &[Uuid],
    ) -> Result<HashMap<Uuid, Truth>, NodeError> {
        let records = self.store.get_many(ids).await?;
        let reached = self.reach_around(&p.org, &records).await?;
        let policy = self.policy();
        let mut out = HashMap::new();
        let mut access_of = auth::AccessMemo::new(&policy, &self.org, p, &reached);
        for rec in &records {
            if rec.owner_org != self.org || rec.is_deleted() {
                continue;
            }
            let access = access_of.access(rec);
            if !access.visible() {
                continue;
            }
            let projected = project(rec, &access.readable);
            out.insert(
                rec.id,
                Truth {
                    digest: merge::record_digest(&projected.versions, false),
                    kind: rec.kind,
                    item: upsert(&projected, &access.writable),
                },
            );
        }
        Ok(out)
    }

    pub(super) async fn digest(
        &self,
        p: &Principal,
        req: pb::DigestRequest,
    ) -> Result<pb::DigestResponse, NodeError> {
        self.store.backfill_digests().await?;
        // What is compared and repaired is read under the partner's stamp lock, and stamped
        // with it: a partner whose cursor is not beyond that stamp takes the repairs (its
        // stream's states were read before them), and keeps them over older states.
        let mut lock = self.stamp_lock(&p.org).await?;
        let policy = self.policy().fingerprint().to_string();
        if req.detail_buckets.is_empty() {
            let as_of_seq = lock.next(self).await?;
            if req.buckets.len() != merge::DIGEST_BUCKETS {
                return Err(convert::invalid(
                    "buckets",
                    format!("must hold {} sums", merge::DIGEST_BUCKETS),
                )
                .into());
            }
            let ours = self.store.delivery_bucket_sums(&p.org, &policy).await?;
            let differing: Vec<(u32, i64)> = ours
                .iter()
                .zip(&req.buckets)
                .enumerate()
                .filter(|(_, (o, theirs))| o.unknown > 0 || o.sum != **theirs)
                .map(|(i, (o, _))| (i as u32, o.rows))
                .collect();
            let (differing_buckets, more) =
                buckets_for_round(&differing, DETAIL_BUCKETS_PER_ROUND, DETAIL_ROWS_PER_ROUND);
            return Ok(pb::DigestResponse {
                differing_buckets,
                repairs: Vec::new(),
                as_of_seq,
                more,
            });
        }
        let buckets: BTreeSet<u32> = req.detail_buckets.iter().copied().collect();
        if buckets.iter().any(|b| *b as usize >= merge::DIGEST_BUCKETS) {
            return Err(convert::invalid("detail_buckets", "bucket out of range").into());
        }
        let mut theirs = HashMap::new();
        for e in &req.entries {
            let id = Uuid::parse_str(&e.record_id)
                .map_err(|_| convert::invalid("entries.record_id", "not a UUID"))?;
            if buckets.contains(&(merge::bucket_of(&id) as u32)) {
                theirs.insert(id, e.digest);
            }
        }
        let bucket_list: Vec<u32> = buckets.iter().copied().collect();
        let ledger: HashMap<Uuid, verbund_store::Delivery> = self
            .store
            .live_deliveries_in(&p.org, &bucket_list)
            .await?
            .into_iter()
            .map(|d| (d.record_id, d))
            .collect();
        let candidates: Vec<Uuid> = ledger
            .keys()
            .chain(theirs.keys())
            .copied()
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        let mut truth = self.truth_of(p, &candidates).await?;
        let visible: BTreeSet<Uuid> = truth.keys().copied().collect();
        let mut repairs = Vec::new();
        let mut notes = Vec::new();
        for id in &candidates {
            let Some(t) = truth.remove(id) else {
                continue;
            };
            let noted = ledger.get(id).is_some_and(|d| {
                d.digest == Some(t.digest) && d.policy.as_deref() == Some(policy.as_str())
            });
            if !noted {
                notes.push(DeliveryNote {
                    record_id: *id,
                    kind: t.kind,
                    state: DeliveryState::Live,
                    digest: Some(t.digest),
                });
            }
            if theirs.get(id) != Some(&t.digest) {
                repairs.push(t.item);
            }
        }
        // What it should not hold (any more): only what we really sent it can come back as
        // a tombstone or an erasure; anything else is a plain revoke (no hint whether such a
        // record exists). The ledger follows.
        let extra: Vec<Uuid> = candidates
            .iter()
            .filter(|id| !visible.contains(id))
            .copied()
            .collect();
        let held: HashMap<Uuid, verbund_store::Delivery> = self
            .store
            .deliveries_of(&p.org, &extra)
            .await?
            .into_iter()
            .map(|d| (d.record_id, d))
            .collect();
        for id in &extra {
            let found = match held.get(id) {
                Some(_) => self.store.get(*id).await?,
                None => None,
            };
            let (item, state) = match found {
                Some(r) if r.owner_org == self.org && r.is_deleted() => {
                    if self.store.erasure(*id).await?.is_some() {
                        (erase(*id, r.kind), DeliveryState::Erased)
                    } else {
                        (
                            upsert(&tombstone(&r), &BTreeSet::new()),
                            DeliveryState::Deleted,
                        )
                    }
                }
                _ => (
                    revoke(*id, "not shared with your organization"),
                    DeliveryState::Revoked,
                ),
            };
            if theirs.contains_key(id) {
                repairs.push(item);
            }
            if let Some(d) = held.get(id).filter(|d| d.state == DeliveryState::Live) {
                notes.push(DeliveryNote {
                    record_id: *id,
                    kind: d.kind,
                    state,
                    digest: None,
                });
            }
        }
        let as_of_seq = lock.next(self).await?;
        drop(lock);
        stamp_items(&mut repairs, as_of_seq);
        self.store
            .record_deliveries(&p.org, notes, now_ms(), &policy, Vec::new(), None)
            .await?;
        Ok(pb::DigestResponse {
            differing_buckets: Vec::new(),
            repairs,
            as_of_seq,
            more: false,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::buckets_for_round;

    #[test]
    fn a_round_takes_differing_buckets_up_to_a_bound_of_rows_and_of_buckets() {
        // Small buckets (a share of 100k: ~390 rows each): eight per round.
        let small: Vec<(u32, i64)> = (0..10).map(|b| (b, 390)).collect();
        assert_eq!(
            buckets_for_round(&small, 8, 4_000),
            ((0..8).collect(), true)
        );
        // Large ones (1M: ~3,900 rows each): one per round, the next one later.
        let large = [(3, 3_900), (9, 3_900)];
        assert_eq!(buckets_for_round(&large, 8, 4_000), (vec![3], true));
        // A bucket over the bound alone still goes (a round always makes progress).
        assert_eq!(buckets_for_round(&[(7, 9_000)], 8, 4_000), (vec![7], false));
        // All of them fit: nothing left.
        assert_eq!(
            buckets_for_round(&[(1, 10), (2, 0)], 8, 4_000),
            (vec![1, 2], false)
        );
        assert_eq!(buckets_for_round(&[], 8, 4_000), (vec![], false));
    }
}
