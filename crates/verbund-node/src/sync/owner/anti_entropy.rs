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
            let differing: Vec<u32> = ours
                .iter()
                .zip(&req.buckets)
                .enumerate()
                .filter(|(_, (o, theirs))| o.unknown > 0 || o.sum != **theirs)
                .map(|(i, _)| i as u32)
                .collect();
            let more = differing.len() > DETAIL_BUCKETS_PER_ROUND;
            return Ok(pb::DigestResponse {
                differing_buckets: differing
                    .into_iter()
                    .take(DETAIL_BUCKETS_PER_ROUND)
                    .collect(),
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
