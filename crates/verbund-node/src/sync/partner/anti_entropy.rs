//! The partner's side of anti-entropy: compare bucket sums with the owner and apply the
//! repairs of the buckets that differ.

use super::*;

/// What one anti-entropy round did.
pub struct RoundOutcome {
    /// Repairs received and applied.
    pub repairs: usize,
    /// The owner found more differing buckets than it compared: ask again soon.
    pub more: bool,
    /// Not compared: our stream had not caught up with the owner yet.
    pub behind: bool,
}

/// Compares the bucket sums of our replicas of `org`'s records (kept in the database: no
/// replica is read) with those of what it says we hold, and applies the repairs for the
/// buckets that differ (reading only our replicas in those buckets).
pub async fn anti_entropy(
    state: &NodeState,
    client: &mut FederationClient<Channel>,
    org: &str,
) -> Result<RoundOutcome> {
    // While the stream is still delivering (our cursor behind the owner's latest change as
    // of its last batch, or a snapshot in progress), the buckets differ by what is on its
    // way: comparing now would only repeat the stream's work. The round waits until we have
    // caught up.
    if let Some(sub) = state.store.subscription(org).await?
        && (sub.cursor < sub.owner_last_seq || !sub.snapshot_after.is_empty())
    {
        return Ok(RoundOutcome {
            repairs: 0,
            more: false,
            behind: true,
        });
    }
    state.store.backfill_digests().await?;
    let sums = state.store.replica_bucket_sums(org).await?;
    let answer = client
        .digest(pb::DigestRequest {
            buckets: sums.iter().map(|b| b.sum).collect(),
            ..Default::default()
        })
        .await
        .map_err(|s| anyhow!("digest: {}: {}", s.code(), s.message()))?
        .into_inner();
    let (differing, more) = (answer.differing_buckets, answer.more);
    if differing.is_empty() {
        return Ok(RoundOutcome {
            repairs: 0,
            more,
            behind: false,
        });
    }
    let detail = state
        .store
        .replica_digests_in(org, &differing)
        .await?
        .into_iter()
        .map(|(id, d)| pb::BucketEntry {
            record_id: id.to_string(),
            digest: d,
        })
        .collect();
    let answer = client
        .digest(pb::DigestRequest {
            buckets: Vec::new(),
            detail_buckets: differing,
            entries: detail,
        })
        .await
        .map_err(|s| anyhow!("digest: {}: {}", s.code(), s.message()))?
        .into_inner();
    let repairs = answer.repairs;
    let (items, quarantine) = convert_items(state, org, &repairs, "r");
    let n = repairs.len();
    if n == 0 {
        return Ok(RoundOutcome {
            repairs: 0,
            more,
            behind: false,
        });
    }
    // What each repair should leave behind: the owner's versions, or no live copy.
    let expected: Vec<(Uuid, Option<u64>)> = items
        .iter()
        .map(|item| match item {
            ReplicaItem::Upsert(st) if st.deleted.is_none() => {
                (st.id, Some(merge::record_digest(&st.versions, false)))
            }
            ReplicaItem::Upsert(st) => (st.id, None),
            ReplicaItem::Revoke { id } | ReplicaItem::Erase { id } => (*id, None),
        })
        .collect();
    let quarantined = quarantine.len();
    let erases = items.iter().any(|i| matches!(i, ReplicaItem::Erase { .. }));
    state
        .store
        .apply_replica_batch(ReplicaBatch {
            owner_org: org.to_string(),
            at_ms: now_ms(),
            items,
            quarantine,
            current_as_of: Some(answer.as_of_seq),
            ..Default::default()
        })
        .await?;
    acknowledge(state, client, org, 0).await?;
    if erases {
        state.scrub_after_erasure();
    }
    // A repair that changed nothing is reported with the reason, never repeated silently.
    let ids: Vec<Uuid> = expected.iter().map(|(id, _)| *id).collect();
    let held: HashMap<Uuid, u64> = state
        .store
        .replica_digests_of(org, &ids)
        .await?
        .into_iter()
        .collect();
    let missed: Vec<Uuid> = expected
        .iter()
        .filter(|(id, want)| held.get(id).copied() != *want)
        .map(|(id, _)| *id)
        .collect();
    if missed.is_empty() && quarantined == 0 {
        tracing::info!(partner = %org, repairs = n, "anti-entropy repaired replicas");
    } else {
        tracing::warn!(
            partner = %org,
            repairs = n,
            quarantined,
            not_taken = missed.len(),
            first = ?missed.first(),
            "anti-entropy: some repairs did not take (quarantined, or our stream is ahead of the repair and its items decide)"
        );
    }
    Ok(RoundOutcome {
        repairs: n,
        more,
        behind: false,
    })
}
