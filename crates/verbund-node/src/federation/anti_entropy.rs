//! The owner's side of anti-entropy (Digest): what a partner should hold of ours, bucket
//! digests compared in round 1, repairs for the differing buckets in round 2.

use super::*;

impl NodeState {
    /// What partner `p` should hold of ours: (id, digest) per record, plus the records.
    pub(super) async fn expected_of(
        &self,
        p: &Principal,
    ) -> Result<(Vec<(Uuid, u64)>, HashMap<Uuid, pb::SyncItem>), Status> {
        let reached = self.reach_of(&p.org).await?;
        let policy = self.policy();
        let mut entries = Vec::new();
        let mut items = HashMap::new();
        for rec in reached.records.values() {
            if rec.owner_org != self.org || rec.is_deleted() {
                continue;
            }
            let access = auth::reached_access(&policy, &self.org, p, rec, &reached);
            if !access.visible() {
                continue;
            }
            let projected = project(rec, &access.readable);
            entries.push((rec.id, merge::record_digest(&projected.versions, false)));
            items.insert(rec.id, upsert(&projected, &access.writable));
        }
        Ok((entries, items))
    }

    pub(super) async fn digest(
        &self,
        p: &Principal,
        req: pb::DigestRequest,
    ) -> Result<pb::DigestResponse, Status> {
        // Read before the expected set: the repairs reflect at least this state.
        let as_of_seq = *self.store.subscribe_commits().borrow();
        let (expected, mut items) = self.expected_of(p).await?;
        if req.detail_buckets.is_empty() {
            if req.buckets.len() != merge::DIGEST_BUCKETS {
                return Err(convert::invalid(
                    "buckets",
                    format!("must hold {} digests", merge::DIGEST_BUCKETS),
                ));
            }
            let ours = merge::bucket_digests(expected.iter().map(|(id, d)| (id, *d)));
            let differing = ours
                .iter()
                .zip(&req.buckets)
                .enumerate()
                .filter(|(_, (a, b))| a != b)
                .map(|(i, _)| i as u32)
                .collect();
            return Ok(pb::DigestResponse {
                differing_buckets: differing,
                repairs: Vec::new(),
                as_of_seq,
            });
        }
        let buckets: BTreeSet<usize> = req.detail_buckets.iter().map(|b| *b as usize).collect();
        if buckets.iter().any(|b| *b >= merge::DIGEST_BUCKETS) {
            return Err(convert::invalid("detail_buckets", "bucket out of range"));
        }
        let mut theirs = HashMap::new();
        for e in &req.entries {
            let id = Uuid::parse_str(&e.record_id)
                .map_err(|_| convert::invalid("entries.record_id", "not a UUID"))?;
            theirs.insert(id, e.digest);
        }
        let mut repairs = Vec::new();
        let mut ledger = Vec::new();
        let mut expected_ids = BTreeSet::new();
        for (id, digest) in &expected {
            if !buckets.contains(&merge::bucket_of(id)) {
                continue;
            }
            expected_ids.insert(*id);
            if theirs.get(id) != Some(digest)
                && let Some(item) = items.remove(id)
            {
                if let Some(pb::sync_item::Item::Upsert(st)) = &item.item {
                    let kind = convert::kind_from_pb("kind", st.kind)?;
                    ledger.push(verbund_store::DeliveryNote {
                        record_id: *id,
                        kind,
                        state: verbund_store::DeliveryState::Live,
                    });
                }
                repairs.push(item);
            }
        }
        let extra: Vec<Uuid> = theirs
            .keys()
            .filter(|id| !expected_ids.contains(id) && buckets.contains(&merge::bucket_of(id)))
            .copied()
            .collect();
        // Only what we really sent it can come back as a tombstone or an erasure; anything
        // else is a plain revoke (no hint whether such a record exists).
        let held: BTreeSet<Uuid> = self
            .store
            .deliveries_of(&p.org, &extra)
            .await
            .map_err(store_status)?
            .into_iter()
            .map(|d| d.record_id)
            .collect();
        for id in &extra {
            let found = if held.contains(id) {
                self.store.get(*id).await.map_err(store_status)?
            } else {
                None
            };
            match found {
                Some(r) if r.owner_org == self.org && r.is_deleted() => {
                    if self
                        .store
                        .erasure(*id)
                        .await
                        .map_err(store_status)?
                        .is_some()
                    {
                        repairs.push(erase(*id, r.kind));
                    } else {
                        repairs.push(upsert(&tombstone(&r), &BTreeSet::new()));
                    }
                }
                _ => repairs.push(revoke(*id, "not shared with your organization")),
            }
        }
        self.store
            .record_deliveries(&p.org, ledger, now_ms(), Vec::new())
            .await
            .map_err(store_status)?;
        Ok(pb::DigestResponse {
            differing_buckets: Vec::new(),
            repairs,
            as_of_seq,
        })
    }
}
