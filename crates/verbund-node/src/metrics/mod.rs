//! The node's metrics, one registry per node (no process-global state). Request and writer
//! series are recorded as they happen (the RPC layer in `rpc`, the store's batch hook);
//! everything else — per-partner sync state, conflicts, erasures, pool use, policy,
//! certificates — is read at scrape time from what the store and `link_state` already keep
//! (`ops::collect`), so the sync code carries no instrumentation. This module is a lower
//! layer: it knows nothing of the node's state.

pub mod rpc;

pub use rpc::RpcMetricsLayer;

use std::sync::Mutex;
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use verbund_store::BatchReport;

/// Label pairs of one series.
pub(crate) type Labels = Vec<(&'static str, String)>;
type HistogramFamily = Family<Labels, Histogram, fn() -> Histogram>;

fn rpc_buckets() -> Histogram {
    // 0.25 ms … ~8 s.
    Histogram::new(exponential_buckets(0.000_25, 2.0, 16))
}

/// Every series the node exports.
pub struct Metrics {
    pub(crate) registry: Registry,
    pub(crate) rpc_handled: Family<Labels, Counter>,
    pub(crate) rpc_seconds: HistogramFamily,
    pub(crate) writer_batches: Family<Labels, Counter>,
    pub(crate) writer_batch_jobs: Histogram,
    pub(crate) writer_batch_seconds: Histogram,
    pub(crate) audit_entries: Counter,
    pub(crate) pool_connections: Family<Labels, Gauge>,
    pub(crate) pool_max: Gauge,
    pub(crate) link_state: Family<Labels, Gauge>,
    pub(crate) lag: Family<Labels, Gauge>,
    pub(crate) snapshot_in_progress: Family<Labels, Gauge>,
    pub(crate) outbox_depth: Family<Labels, Gauge>,
    pub(crate) rejected_edits: Family<Labels, Gauge>,
    pub(crate) replicas: Family<Labels, Gauge>,
    pub(crate) quarantined: Family<Labels, Gauge>,
    pub(crate) last_contact: Family<Labels, Gauge>,
    pub(crate) erasures_unacked: Family<Labels, Gauge>,
    pub(crate) conflicts_open: Gauge,
    pub(crate) last_seq: Gauge,
    pub(crate) policy_generation: Gauge,
    pub(crate) policy_reload_failures: Counter,
    pub(crate) cert_expiry: Family<Labels, Gauge>,
    pub(crate) scrape_errors: Counter,
    /// Serializes scrapes: a refresh clears and refills the per-partner families.
    pub(crate) scrape: tokio::sync::Mutex<()>,
    /// The policy reload failures already counted (the policy keeps its own total).
    pub(crate) reload_failures_seen: Mutex<u64>,
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
            snapshot_in_progress: Family::default(),
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
            "partner_snapshot_in_progress",
            "1 while a partner's snapshot of a share rule (its records in id order) is being taken in",
            m.snapshot_in_progress.clone(),
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
}
