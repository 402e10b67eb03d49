//! Reading the node's state into the metrics at scrape time: per-partner sync state from
//! the store and `link_state`, open conflicts, unacknowledged erasures, pool use, the policy
//! generation, certificate expiry. Pull-style, so the sync code carries no instrumentation.

use std::collections::HashMap;

use prometheus_client::encoding::text::encode;

use crate::metrics::Metrics;
use crate::state::{NodeState, now_ms};

/// Reads the current state and renders every series (OpenMetrics text). `own_ca_pem`:
/// this organization's CA file (one or two CAs), read fresh by the caller.
pub async fn scrape(m: &Metrics, state: &NodeState, own_ca_pem: Option<String>) -> String {
    let _one_at_a_time = m.scrape.lock().await;
    if let Err(e) = refresh(m, state, own_ca_pem).await {
        m.scrape_errors.inc();
        tracing::warn!(error = %e, "metrics: reading the node's state failed");
    }
    let mut out = String::new();
    if let Err(e) = encode(&mut out, &m.registry) {
        tracing::warn!(error = %e, "metrics: encoding failed");
    }
    out
}

async fn refresh(
    m: &Metrics,
    state: &NodeState,
    own_ca_pem: Option<String>,
) -> Result<(), verbund_store::StoreError> {
    let store = &state.store;
    let pool = store.pool_use();
    m.pool_connections.clear();
    m.pool_connections
        .get_or_create(&vec![("state", "idle".to_string())])
        .set(i64::from(pool.idle));
    m.pool_connections
        .get_or_create(&vec![("state", "in_use".to_string())])
        .set(i64::from(pool.open.saturating_sub(pool.idle)));
    m.pool_max.set(i64::from(pool.max));

    let policy = &state.policy;
    m.policy_generation
        .set(i64::try_from(policy.generation()).unwrap_or(i64::MAX));
    {
        let total = policy.reload_failures();
        let mut seen = m
            .reload_failures_seen
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if total > *seen {
            m.policy_reload_failures.inc_by(total - *seen);
            *seen = total;
        }
    }

    let now_s = now_ms() / 1000;
    let partners = store.list_partners().await?;
    m.cert_expiry.clear();
    let node_pem = state
        .node_identity
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .0
        .clone();
    for (kind, org, pem) in std::iter::once(("node", state.org.clone(), node_pem))
        .chain(own_ca_pem.map(|pem| ("ca", state.org.clone(), pem)))
        .chain(
            partners
                .iter()
                .map(|p| ("partner_ca", p.org.clone(), p.ca_pem.clone())),
        )
    {
        for (serial, not_after) in super::certificate_expiries(&pem) {
            m.cert_expiry
                .get_or_create(&vec![
                    ("kind", kind.to_string()),
                    ("org", org.clone()),
                    ("serial", serial),
                ])
                .set(not_after - now_s);
        }
    }

    let by_org = |rows: Vec<(String, i64)>| rows.into_iter().collect::<HashMap<_, _>>();
    let subs: HashMap<String, verbund_store::Subscription> = store
        .list_subscriptions()
        .await?
        .into_iter()
        .map(|s| (s.owner_org.clone(), s))
        .collect();
    let depths = by_org(store.outbox_depths().await?);
    let replicas = by_org(store.replica_counts().await?);
    let quarantined = by_org(store.quarantine_counts().await?);
    let counts = store.ops_counts().await?;
    let rejected = by_org(counts.rejected_edits);
    let unacked = by_org(counts.erasures_unacked);
    let last_seq = store.last_seq().await?;
    let mut acks: HashMap<String, i64> = store
        .peer_acks()
        .await?
        .into_iter()
        .map(|a| (a.org, a.acked_cursor))
        .collect();
    acks.extend(state.links.acked());
    let links = state.links.snapshot();

    m.conflicts_open.set(counts.conflicts_open);
    m.last_seq.set(last_seq);
    for family in [
        &m.link_state,
        &m.lag,
        &m.snapshot_in_progress,
        &m.outbox_depth,
        &m.rejected_edits,
        &m.replicas,
        &m.quarantined,
        &m.last_contact,
        &m.erasures_unacked,
    ] {
        family.clear();
    }
    for p in &partners {
        let org = p.org.clone();
        let label = || vec![("partner", org.clone())];
        let link = links
            .get(&org)
            .map(|l| l.state)
            .unwrap_or_default()
            .as_str()
            .to_string();
        m.link_state
            .get_or_create(&vec![("partner", org.clone()), ("state", link)])
            .set(1);
        let inbound = subs
            .get(&org)
            .map(|s| (s.owner_last_seq - s.cursor).max(0))
            .unwrap_or(0);
        m.lag
            .get_or_create(&vec![
                ("partner", org.clone()),
                ("direction", "inbound".to_string()),
            ])
            .set(inbound);
        let in_snapshot = subs.get(&org).is_some_and(|s| !s.snapshot_after.is_empty());
        m.snapshot_in_progress
            .get_or_create(&label())
            .set(i64::from(in_snapshot));
        if let Some(acked) = acks.get(&org) {
            // The partner's cursor is a position of its stream: ours is what it covers.
            let covered = store
                .stream_position(&org, *acked)
                .await?
                .map(|at| at.owner_seq)
                .unwrap_or(0);
            m.lag
                .get_or_create(&vec![
                    ("partner", org.clone()),
                    ("direction", "outbound".to_string()),
                ])
                .set((last_seq - covered).max(0));
        }
        let get = |m: &HashMap<String, i64>| m.get(&org).copied().unwrap_or(0);
        m.outbox_depth.get_or_create(&label()).set(get(&depths));
        m.rejected_edits.get_or_create(&label()).set(get(&rejected));
        m.replicas.get_or_create(&label()).set(get(&replicas));
        m.quarantined.get_or_create(&label()).set(get(&quarantined));
        m.erasures_unacked
            .get_or_create(&label())
            .set(get(&unacked));
        if let Some(ms) = p.last_contact_ms {
            m.last_contact.get_or_create(&label()).set(ms / 1000);
        }
    }
    Ok(())
}
