//! The node's metrics, one registry per node (no process-global state). Request and writer
//! series are recorded as they happen (the RPC layer, the store's batch hook); everything
//! else — per-partner sync state, conflicts, erasures, pool use, policy, certificates — is
//! read at scrape time from what the store and `link_state` already keep (`refresh`), so the
//! sync code carries no instrumentation.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use verbund_store::BatchReport;

use crate::state::{NodeState, now_ms};

/// Label pairs of one series.
type Labels = Vec<(&'static str, String)>;
type HistogramFamily = Family<Labels, Histogram, fn() -> Histogram>;

fn rpc_buckets() -> Histogram {
    // 0.25 ms … ~8 s.
    Histogram::new(exponential_buckets(0.000_25, 2.0, 16))
}

/// Every series the node exports.
pub struct Metrics {
    registry: Registry,
    rpc_handled: Family<Labels, Counter>,
    rpc_seconds: HistogramFamily,
    writer_batches: Family<Labels, Counter>,
    writer_batch_jobs: Histogram,
    writer_batch_seconds: Histogram,
    audit_entries: Counter,
    pool_connections: Family<Labels, Gauge>,
    pool_max: Gauge,
    link_state: Family<Labels, Gauge>,
    lag: Family<Labels, Gauge>,
    outbox_depth: Family<Labels, Gauge>,
    rejected_edits: Family<Labels, Gauge>,
    replicas: Family<Labels, Gauge>,
    quarantined: Family<Labels, Gauge>,
    last_contact: Family<Labels, Gauge>,
    erasures_unacked: Family<Labels, Gauge>,
    conflicts_open: Gauge,
    last_seq: Gauge,
    policy_generation: Gauge,
    policy_reload_failures: Counter,
    cert_expiry: Family<Labels, Gauge>,
    scrape_errors: Counter,
    /// Serializes scrapes: a refresh clears and refills the per-partner families.
    scrape: tokio::sync::Mutex<()>,
    /// The policy reload failures already counted (the policy keeps its own total).
    reload_failures_seen: Mutex<u64>,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut m = Metrics {
            registry: Registry::with_prefix("verbund"),
            rpc_handled: Family::default(),
            rpc_seconds: Family::new_with_constructor(rpc_buckets),
            writer_batches: Family::default(),
            writer_batch_jobs: Histogram::new(exponential_buckets(1.0, 2.0, 9)),
            writer_batch_seconds: Histogram::new(exponential_buckets(0.000_25, 2.0, 16)),
            audit_entries: Counter::default(),
            pool_connections: Family::default(),
            pool_max: Gauge::default(),
            link_state: Family::default(),
            lag: Family::default(),
            outbox_depth: Family::default(),
            rejected_edits: Family::default(),
            replicas: Family::default(),
            quarantined: Family::default(),
            last_contact: Family::default(),
            erasures_unacked: Family::default(),
            conflicts_open: Gauge::default(),
            last_seq: Gauge::default(),
            policy_generation: Gauge::default(),
            policy_reload_failures: Counter::default(),
            cert_expiry: Family::default(),
            scrape_errors: Counter::default(),
            scrape: tokio::sync::Mutex::new(()),
            reload_failures_seen: Mutex::new(0),
        };
        let r = &mut m.registry;
        r.register(
            "rpc_handled",
            "gRPC calls finished, by service, method and status code",
            m.rpc_handled.clone(),
        );
        r.register(
            "rpc_duration_seconds",
            "Time from request to the last byte of the answer (streams: their whole life)",
            m.rpc_seconds.clone(),
        );
        r.register(
            "writer_batches",
            "Write batches of the store's single writer, by outcome (committed, failed)",
            m.writer_batches.clone(),
        );
        r.register(
            "writer_batch_jobs",
            "Jobs (writes, merges, audit appends) per write batch",
            m.writer_batch_jobs.clone(),
        );
        r.register(
            "writer_batch_duration_seconds",
            "Time of one write batch from BEGIN to the end of COMMIT",
            m.writer_batch_seconds.clone(),
        );
        r.register(
            "audit_entries_written",
            "Audit entries committed by this process",
            m.audit_entries.clone(),
        );
        r.register(
            "db_pool_connections",
            "Database pool connections by state (idle, in_use)",
            m.pool_connections.clone(),
        );
        r.register(
            "db_pool_max_connections",
            "Largest number of connections the database pool opens",
            m.pool_max.clone(),
        );
        r.register(
            "partner_link_state",
            "1 for the state the sync link to a partner is in (idle, connecting, connected, backing-off, incompatible)",
            m.link_state.clone(),
        );
        r.register(
            "partner_lag_changes",
            "Changes behind: inbound = the partner's changes we have not applied; outbound = our changes the partner has not acknowledged",
            m.lag.clone(),
        );
        r.register(
            "partner_outbox_depth",
            "Our edits of a partner's records waiting to be pushed",
            m.outbox_depth.clone(),
        );
        r.register(
            "partner_rejected_edits",
            "Our edits of a partner's records that it rejected (kept in the outbox)",
            m.rejected_edits.clone(),
        );
        r.register(
            "partner_replicas",
            "Records of a partner held here as replicas",
            m.replicas.clone(),
        );
        r.register(
            "partner_quarantined",
            "Items of a partner's stream held in quarantine",
            m.quarantined.clone(),
        );
        r.register(
            "partner_last_contact_timestamp_seconds",
            "When a partner's node last connected to us (Unix time)",
            m.last_contact.clone(),
        );
        r.register(
            "partner_erasures_unacknowledged",
            "Erased records a partner received and has not acknowledged purging",
            m.erasures_unacked.clone(),
        );
        r.register(
            "conflicts_open",
            "Merge conflicts nobody has resolved",
            m.conflicts_open.clone(),
        );
        r.register(
            "change_seq",
            "The node's last committed change sequence number",
            m.last_seq.clone(),
        );
        r.register(
            "policy_generation",
            "Generation of the access policy in force (1 at start, +1 per reload)",
            m.policy_generation.clone(),
        );
        r.register(
            "policy_reload_failures",
            "Policy reloads refused (the previous policy stayed in force)",
            m.policy_reload_failures.clone(),
        );
        r.register(
            "certificate_expiry_seconds",
            "Seconds until a certificate expires (negative: expired): the node's own (kind=node), its CAs (kind=ca) and each partner's pinned CA (kind=partner_ca)",
            m.cert_expiry.clone(),
        );
        r.register(
            "metrics_scrape_errors",
            "Scrapes whose database reads failed (their series kept the previous values)",
            m.scrape_errors.clone(),
        );
        m
    }

    /// One finished gRPC call.
    pub fn rpc_finished(&self, service: &str, method: &str, code: &str, elapsed: Duration) {
        self.rpc_handled
            .get_or_create(&vec![
                ("grpc_service", service.to_string()),
                ("grpc_method", method.to_string()),
                ("grpc_code", code.to_string()),
            ])
            .inc();
        self.rpc_seconds
            .get_or_create(&vec![
                ("grpc_service", service.to_string()),
                ("grpc_method", method.to_string()),
            ])
            .observe(elapsed.as_secs_f64());
    }

    /// The store writer's report of one batch.
    pub fn writer_batch(&self, report: &BatchReport) {
        let outcome = if report.committed {
            "committed"
        } else {
            "failed"
        };
        self.writer_batches
            .get_or_create(&vec![("outcome", outcome.to_string())])
            .inc();
        self.writer_batch_jobs.observe(report.jobs as f64);
        self.writer_batch_seconds
            .observe(report.elapsed.as_secs_f64());
        if report.committed {
            self.audit_entries.inc_by(report.audit_entries as u64);
        }
    }

    /// Reads the current state and renders every series (OpenMetrics text). `own_ca_pem`:
    /// this organization's CA file (one or two CAs), read fresh by the caller.
    pub async fn scrape(&self, state: &NodeState, own_ca_pem: Option<String>) -> String {
        let _one_at_a_time = self.scrape.lock().await;
        if let Err(e) = self.refresh(state, own_ca_pem).await {
            self.scrape_errors.inc();
            tracing::warn!(error = %e, "metrics: reading the node's state failed");
        }
        let mut out = String::new();
        if let Err(e) = encode(&mut out, &self.registry) {
            tracing::warn!(error = %e, "metrics: encoding failed");
        }
        out
    }

    async fn refresh(
        &self,
        state: &NodeState,
        own_ca_pem: Option<String>,
    ) -> Result<(), verbund_store::StoreError> {
        let store = &state.store;
        let pool = store.pool_use();
        self.pool_connections.clear();
        self.pool_connections
            .get_or_create(&vec![("state", "idle".to_string())])
            .set(i64::from(pool.idle));
        self.pool_connections
            .get_or_create(&vec![("state", "in_use".to_string())])
            .set(i64::from(pool.open.saturating_sub(pool.idle)));
        self.pool_max.set(i64::from(pool.max));

        let policy = &state.policy;
        self.policy_generation
            .set(i64::try_from(policy.generation()).unwrap_or(i64::MAX));
        {
            let total = policy.reload_failures();
            let mut seen = self
                .reload_failures_seen
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            if total > *seen {
                self.policy_reload_failures.inc_by(total - *seen);
                *seen = total;
            }
        }

        let now_s = now_ms() / 1000;
        let partners = store.list_partners().await?;
        self.cert_expiry.clear();
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
                self.cert_expiry
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
            .map(|(org, cursor, _)| (org, cursor))
            .collect();
        acks.extend(state.links.acked());
        let links = state.links.snapshot();

        self.conflicts_open.set(counts.conflicts_open);
        self.last_seq.set(last_seq);
        for family in [
            &self.link_state,
            &self.lag,
            &self.outbox_depth,
            &self.rejected_edits,
            &self.replicas,
            &self.quarantined,
            &self.last_contact,
            &self.erasures_unacked,
        ] {
            family.clear();
        }
        for p in &partners {
            let org = p.org.clone();
            let label = || vec![("partner", org.clone())];
            let link = links
                .get(&org)
                .map(|l| l.state.clone())
                .filter(|s| !s.is_empty())
                .unwrap_or_else(|| "idle".to_string());
            self.link_state
                .get_or_create(&vec![("partner", org.clone()), ("state", link)])
                .set(1);
            let inbound = subs
                .get(&org)
                .map(|s| (s.owner_last_seq - s.cursor).max(0))
                .unwrap_or(0);
            self.lag
                .get_or_create(&vec![
                    ("partner", org.clone()),
                    ("direction", "inbound".to_string()),
                ])
                .set(inbound);
            if let Some(acked) = acks.get(&org) {
                self.lag
                    .get_or_create(&vec![
                        ("partner", org.clone()),
                        ("direction", "outbound".to_string()),
                    ])
                    .set((last_seq - acked).max(0));
            }
            let get = |m: &HashMap<String, i64>| m.get(&org).copied().unwrap_or(0);
            self.outbox_depth.get_or_create(&label()).set(get(&depths));
            self.rejected_edits
                .get_or_create(&label())
                .set(get(&rejected));
            self.replicas.get_or_create(&label()).set(get(&replicas));
            self.quarantined
                .get_or_create(&label())
                .set(get(&quarantined));
            self.erasures_unacked
                .get_or_create(&label())
                .set(get(&unacked));
            if let Some(ms) = p.last_contact_ms {
                self.last_contact.get_or_create(&label()).set(ms / 1000);
            }
        }
        Ok(())
    }
}
