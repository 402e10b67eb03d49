//! The node's shared state: its store, identity, clock, policy, trust anchors and links,
//! built once at start (`NodeState::new`, which also recovers a clock that ran ahead) and
//! shared by every service. The hybrid logical clock is ticked only here.

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::watch;
use verbund_core::{Hlc, HlcClock, Record};
use verbund_policy::LivePolicy;
use verbund_store::{Store, StoreError};

/// Everything the handlers share.
pub struct NodeState {
    pub store: Store,
    pub org: String,
    pub node_name: String,
    /// Ticked inside the store's writer (see `stamp`), so versions follow commit order.
    pub(crate) clock: Arc<Mutex<HlcClock>>,
    /// Set when the node shuts down: open Watch streams end so connections can drain.
    pub(crate) stopping: watch::Sender<bool>,
    /// Trust anchors of the TLS listener; partner changes apply to the next handshake.
    pub trust: Arc<crate::tls::FederationVerifier>,
    /// The listener's certificate (renewals apply to the next handshake).
    pub certificate: std::sync::OnceLock<Arc<crate::tls::NodeCertificate>>,
    /// A Watch stream ends after this long (the maximum connection age), so a long stream
    /// cannot keep a connection, and its caller's access, past that age; clients resume from
    /// their last sequence number.
    pub(crate) watch_max_age: Duration,
    /// This node's certificate and key (PEM), presented when it dials partners.
    pub node_identity: Mutex<(String, String)>,
    /// Where this organization's revocation list lives (served to partners).
    pub crl_path: std::path::PathBuf,
    /// The access policy in force (reloadable).
    pub policy: Arc<LivePolicy>,
    /// Remote versions further ahead of our clock than this are refused.
    pub max_clock_skew_ms: u64,
    /// Our links to the partners that share with us (sync state, outbox wake-ups).
    pub links: Arc<crate::link_state::Links>,
    /// The consolidated customer view, when enabled (set once at start).
    pub consolidation: std::sync::OnceLock<Arc<crate::consolidation::ConsolidatedView>>,
    /// The node's metrics (served by the ops endpoint).
    pub metrics: Arc<crate::metrics::Metrics>,
    /// Owner side: each partner's stamp clock (its stream positions, the order of the
    /// states it receives).
    pub(crate) stamps: PartnerStamps,
    /// Seals the Watch positions shown to other organizations' callers (`verbund_core::token`).
    pub(crate) watch_tokens: verbund_core::token::TokenKey,
}

/// The node's wall clock in milliseconds. `VERBUND_CLOCK_OFFSET_MS` (signed) shifts it: a
/// fault-injection knob for tests of clock skew (a node whose clock runs ahead or behind)
/// with real processes; never set it in production.
pub(crate) fn now_ms() -> i64 {
    static OFFSET: std::sync::OnceLock<i64> = std::sync::OnceLock::new();
    let offset = *OFFSET.get_or_init(|| {
        std::env::var("VERBUND_CLOCK_OFFSET_MS")
            .ok()
            .and_then(|v| v.trim().parse::<i64>().ok())
            .unwrap_or(0)
    });
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
        .saturating_add(offset)
}

/// The stamp clocks of all partners (each loaded from the store on first use; used by the
/// owner side of sync, `sync/owner/stamps.rs`).
#[derive(Default)]
pub(crate) struct PartnerStamps {
    pub(crate) clocks: std::sync::Mutex<
        std::collections::HashMap<
            String,
            Arc<tokio::sync::Mutex<Option<verbund_core::stamp::StampClock>>>,
        >,
    >,
}

/// The node's wall clock in microseconds (shifted like `now_ms`).
pub(crate) fn now_us() -> i64 {
    let sub_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::from(d.subsec_micros() % 1_000))
        .unwrap_or(0);
    now_ms().saturating_mul(1_000).saturating_add(sub_ms)
}

/// What a node is, beyond its store and trust anchors (from `node.toml`).
pub struct NodeSettings {
    pub org: String,
    pub node_name: String,
    pub max_clock_skew_ms: u64,
    /// The maximum connection age; Watch streams end after it.
    pub watch_max_age: Duration,
    /// This node's certificate and key (PEM), presented when dialing partners.
    pub node_identity: (String, String),
    /// This organization's revocation list file.
    pub crl_path: std::path::PathBuf,
    pub policy: Arc<LivePolicy>,
}

impl NodeState {
    pub async fn new(
        store: Store,
        settings: NodeSettings,
        trust: Arc<crate::tls::FederationVerifier>,
    ) -> Result<Arc<NodeState>, StoreError> {
        let NodeSettings {
            org,
            node_name,
            max_clock_skew_ms,
            watch_max_age,
            node_identity,
            crl_path,
            policy,
        } = settings;
        let mut clock = HlcClock::new(format!("{org}/{node_name}"), max_clock_skew_ms);
        // Never hand out a version below one we already wrote, even if the wall clock went
        // back a little. A persisted clock beyond the skew bound of the wall clock means the
        // clock ran ahead before (and has been corrected): its versions would be refused by
        // every partner, so the clock follows the wall clock again and what it stamped
        // ahead is re-stamped below (`recover_clock`).
        let wall = now_ms().max(0) as u64;
        let limit = wall.saturating_add(max_clock_skew_ms);
        let mut ran_ahead = None;
        if let Some(last) = store.last_hlc().await? {
            if last.physical_ms > limit {
                ran_ahead = Some(last.physical_ms - wall);
            } else {
                clock.restore(&last);
            }
        }
        let watch_tokens =
            verbund_core::token::TokenKey::from_secret(&store.node_secret("watch-token").await?);
        let (stopping, _) = watch::channel(false);
        let metrics = Arc::new(crate::metrics::Metrics::new());
        let batch_metrics = metrics.clone();
        store.on_batch(move |report| batch_metrics.writer_batch(report));
        let state = Arc::new(NodeState {
            store,
            org,
            node_name,
            clock: Arc::new(Mutex::new(clock)),
            stopping,
            trust,
            certificate: std::sync::OnceLock::new(),
            watch_max_age,
            node_identity: Mutex::new(node_identity),
            crl_path,
            policy,
            max_clock_skew_ms,
            links: Arc::new(crate::link_state::Links::default()),
            consolidation: std::sync::OnceLock::new(),
            metrics,
            stamps: Default::default(),
            watch_tokens,
        });
        if let Some(ahead_ms) = ran_ahead {
            state.recover_clock(limit, ahead_ms).await?;
        }
        Ok(state)
    }

    /// Our clock ran ahead of the wall clock (now corrected) by `ahead_ms`: the versions we
    /// stamped beyond `limit_ms` get fresh ones, so our refused edits are delivered and our
    /// records' changes are taken by partners again. Said in the log and in `partner status`.
    async fn recover_clock(&self, limit_ms: u64, ahead_ms: u64) -> Result<(), StoreError> {
        let clock = self.clock.clone();
        let report = self
            .store
            .restamp_ahead(
                limit_ms,
                now_ms(),
                Box::new(move || Self::stamp(&clock, None)),
            )
            .await?;
        let note = format!(
            "at start our clock was {} s ahead of the wall clock (it ran ahead before and was corrected): it follows the wall clock again; {} pending edit(s) and {} record(s) were re-stamped",
            ahead_ms.div_ceil(1000),
            report.outbox_entries,
            report.records
        );
        tracing::warn!("{note}");
        self.links.set_clock_note(note);
        Ok(())
    }

    pub fn stopping(&self) -> watch::Receiver<bool> {
        self.stopping.subscribe()
    }

    pub fn watch_max_age(&self) -> Duration {
        self.watch_max_age
    }

    /// A version stamper for a planning closure that runs in the writer: above the record's
    /// newest version and everything this node stamped before (versions follow commits).
    pub fn stamper(&self) -> impl Fn(&Record) -> Hlc + Send + 'static {
        let clock = self.clock.clone();
        move |cur: &Record| Self::stamp(&clock, cur.versions.values().max())
    }

    /// A fresh version from our clock (for bookkeeping rows such as access changes).
    pub fn tick(&self) -> Hlc {
        Self::stamp(&self.clock, None)
    }

    /// Our clock takes in a version we received, so what we stamp next is above it.
    /// Versions beyond the skew bound are refused before they get here.
    pub fn observe(&self, remote: &Hlc) {
        let mut clock = self.clock.lock().unwrap_or_else(|p| p.into_inner());
        if let Err(e) = clock.receive(remote, now_ms().max(0) as u64) {
            tracing::warn!(error = %e, "a received version was not taken into the clock");
        }
    }

    /// Ends every open Watch stream (called at shutdown).
    pub fn begin_shutdown(&self) {
        self.stopping.send_replace(true);
    }

    /// A new version for a local write, greater than `floor` (the newest version the record
    /// holds) and than anything this node stamped before. Called by the planning closures,
    /// which the store's single writer runs in commit order, so versions never go backwards.
    pub(crate) fn stamp(clock: &Mutex<HlcClock>, floor: Option<&Hlc>) -> Hlc {
        let mut clock = clock
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        clock.tick_after(floor, now_ms().max(0) as u64)
    }
}
