//! The partner's side of federation sync: one link per registered partner. A link dials the
//! partner's node (mutual TLS, its pinned CA), says Hello, subscribes from our durable cursor
//! and applies each batch with the cursor in one transaction, acknowledges, pushes our outbox
//! (local edits of its records) and runs anti-entropy after connecting and periodically. A
//! broken link retries with exponential backoff; what it is doing is reported per partner.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result, anyhow};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tonic::transport::Channel;
use verbund_core::sync as merge;
use verbund_store::{ReplicaBatch, ReplicaItem, VerdictApply, VerdictOutcome};

use crate::federation::{hlc_to_pb, item_to_store, state_from_pb, value_to_pb};
use crate::pb;
use crate::pb::federation_client::FederationClient;
use crate::service::{NodeState, now_ms};

/// Backoff after a failed session: doubling from the first to the last.
const BACKOFF_FIRST: Duration = Duration::from_millis(200);
const BACKOFF_MAX: Duration = Duration::from_secs(10);
/// How often the set of partners is looked at (links start and stop with it).
const SUPERVISE_EVERY: Duration = Duration::from_secs(1);
/// Anti-entropy runs after connecting and then this often.
const DIGEST_EVERY: Duration = Duration::from_secs(60);
/// The outbox is looked at this often even without a local edit (retries).
const OUTBOX_POLL: Duration = Duration::from_secs(2);
/// Outbox entries per Push.
const PUSH_BATCH: i64 = 100;

/// What one link is doing, for `partner status`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LinkStatus {
    /// connecting, connected, backing-off, incompatible
    pub state: String,
    pub endpoint: String,
    pub last_error: String,
    pub last_error_ms: i64,
}

/// The links of this node.
pub struct Links {
    status: Mutex<HashMap<String, LinkStatus>>,
    /// Owner side: the cursor each partner last acknowledged, and when it was last written.
    acks: Mutex<HashMap<String, (i64, std::time::Instant)>>,
    /// Bumped on every local edit of a replica: outbox pushers wake up.
    outbox: watch::Sender<u64>,
}

impl Default for Links {
    fn default() -> Self {
        Links {
            status: Mutex::new(HashMap::new()),
            acks: Mutex::new(HashMap::new()),
            outbox: watch::channel(0).0,
        }
    }
}

impl Links {
    pub fn outbox_changed(&self) {
        self.outbox.send_modify(|n| *n = n.wrapping_add(1));
    }

    fn set(&self, org: &str, f: impl FnOnce(&mut LinkStatus)) {
        let mut map = self.status.lock().unwrap_or_else(|p| p.into_inner());
        f(map.entry(org.to_string()).or_default());
    }

    fn remove(&self, org: &str) {
        let mut map = self.status.lock().unwrap_or_else(|p| p.into_inner());
        map.remove(org);
    }

    /// Notes a partner's acknowledged cursor; true when it is time to write it down.
    pub fn note_ack(&self, org: &str, cursor: i64) -> bool {
        let mut acks = self.acks.lock().unwrap_or_else(|p| p.into_inner());
        let now = std::time::Instant::now();
        match acks.get_mut(org) {
            Some((c, written)) => {
                *c = cursor;
                if now.duration_since(*written) >= Duration::from_secs(1) {
                    *written = now;
                    return true;
                }
                false
            }
            None => {
                acks.insert(org.to_string(), (cursor, now));
                true
            }
        }
    }

    /// The latest acknowledged cursor per partner (owner side).
    pub fn acked(&self) -> HashMap<String, i64> {
        self.acks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|(org, (c, _))| (org.clone(), *c))
            .collect()
    }

    pub fn snapshot(&self) -> HashMap<String, LinkStatus> {
        self.status
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

/// Starts the supervisor: a link for every registered partner with an endpoint, restarted
/// when its endpoint or anchor changes, stopped when the partner is removed.
pub fn spawn(state: Arc<NodeState>) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut running: HashMap<String, (String, JoinHandle<()>)> = HashMap::new();
        let mut stopping = state.stopping();
        loop {
            match state.store.list_partners().await {
                Ok(partners) => {
                    let mut wanted = HashMap::new();
                    for p in partners.iter().filter(|p| !p.endpoint.is_empty()) {
                        wanted.insert(p.org.clone(), format!("{}|{}", p.endpoint, p.fingerprint));
                    }
                    running.retain(|org, (key, handle)| {
                        let keep = wanted.get(org) == Some(key) && !handle.is_finished();
                        if !keep {
                            handle.abort();
                            state.links.remove(org);
                        }
                        keep
                    });
                    for (org, key) in wanted {
                        if let std::collections::hash_map::Entry::Vacant(slot) =
                            running.entry(org.clone())
                        {
                            slot.insert((key, tokio::spawn(run_link(state.clone(), org))));
                        }
                    }
                }
                Err(e) => tracing::warn!(error = %e, "cannot read the partner list"),
            }
            tokio::select! {
                _ = tokio::time::sleep(SUPERVISE_EVERY) => {}
                _ = stopping.changed() => {
                    for (_, (_, h)) in running.drain() {
                        h.abort();
                    }
                    return;
                }
            }
        }
    })
}

async fn run_link(state: Arc<NodeState>, org: String) {
    let mut backoff = BACKOFF_FIRST;
    let mut last_error = String::new();
    loop {
        state.links.set(&org, |s| s.state = "connecting".into());
        let started = tokio::time::Instant::now();
        let outcome = session(&state, &org).await;
        if started.elapsed() > Duration::from_secs(5) {
            backoff = BACKOFF_FIRST; // it ran for a while: a fresh failure starts small
        }
        if let Err(e) = outcome {
            let msg = format!("{e:#}");
            let incompatible = msg.contains("protocol version");
            // Said once per distinct error; the retries of an unreachable partner stay quiet.
            if msg != last_error {
                tracing::info!(partner = %org, error = %msg, "sync link down; retrying with backoff");
            } else {
                tracing::debug!(partner = %org, error = %msg, "sync link still down");
            }
            last_error = msg.clone();
            state.links.set(&org, |s| {
                s.state = if incompatible {
                    "incompatible".into()
                } else {
                    "backing-off".into()
                };
                s.last_error = msg.clone();
                s.last_error_ms = now_ms();
            });
            let _ = state.store.set_sync_error(&org, Some(&msg), now_ms()).await;
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
}

/// One connected session with partner `org`, until something fails or the stream ends.
async fn session(state: &Arc<NodeState>, org: &str) -> Result<()> {
    let partner = state
        .store
        .list_partners()
        .await?
        .into_iter()
        .find(|p| p.org == org)
        .ok_or_else(|| anyhow!("partner {org} is no longer registered"))?;
    state
        .links
        .set(org, |s| s.endpoint = partner.endpoint.clone());
    let channel = state
        .partner_channel(&partner)
        .await
        .map_err(|s| anyhow!("{}", s.message()))?;
    let mut client = FederationClient::new(channel)
        .max_decoding_message_size(64 << 20)
        .max_encoding_message_size(64 << 20);
    let hello = client
        .hello(pb::HelloRequest {
            protocol_version: merge::PROTOCOL_VERSION,
            org: state.org.clone(),
            capabilities: crate::federation::CAPABILITIES
                .iter()
                .map(|c| c.to_string())
                .collect(),
        })
        .await
        .map_err(|s| anyhow!("hello refused: {}: {}", s.code(), s.message()))?
        .into_inner();
    if hello.protocol_version != merge::PROTOCOL_VERSION || hello.org != org {
        return Err(anyhow!(
            "partner answered protocol version {} as {}; expected version {} as {org}",
            hello.protocol_version,
            hello.org,
            merge::PROTOCOL_VERSION
        ));
    }
    state.links.set(org, |s| {
        s.state = "connected".into();
        s.last_error.clear();
    });
    let _ = state.store.set_sync_error(org, None, now_ms()).await;
    tracing::info!(partner = %org, "sync link up");
    let cursor = state
        .store
        .subscription(org)
        .await?
        .map(|s| s.cursor)
        .unwrap_or(0);
    let mut stream = client
        .subscribe(pb::SubscribeRequest {
            after_seq: cursor,
            max_batch: 0,
        })
        .await
        .map_err(|s| anyhow!("subscribe refused: {}: {}", s.code(), s.message()))?
        .into_inner();
    let receive = {
        let (state, mut client) = (state.clone(), client.clone());
        async move {
            while let Some(batch) = stream
                .message()
                .await
                .map_err(|s| anyhow!("stream: {}: {}", s.code(), s.message()))?
            {
                apply_batch(&state, &mut client, org, batch).await?;
            }
            Ok::<(), anyhow::Error>(())
        }
    };
    let push = {
        let (state, mut client) = (state.clone(), client.clone());
        async move {
            let mut woken = state.links.outbox.subscribe();
            loop {
                let pushed = push_outbox(&state, &mut client, org).await?;
                if pushed == 0 {
                    tokio::select! {
                        _ = woken.changed() => {}
                        _ = tokio::time::sleep(OUTBOX_POLL) => {}
                    }
                }
            }
            #[allow(unreachable_code)]
            Ok::<(), anyhow::Error>(())
        }
    };
    let repair = {
        let (state, mut client) = (state.clone(), client.clone());
        async move {
            loop {
                anti_entropy(&state, &mut client, org).await?;
                tokio::time::sleep(DIGEST_EVERY).await;
            }
            #[allow(unreachable_code)]
            Ok::<(), anyhow::Error>(())
        }
    };
    tokio::select! {
        r = receive => r,
        r = push => r,
        r = repair => r,
    }
}

/// Applies one batch of the owner's stream (with the cursor, in one transaction), then
/// acknowledges the cursor and any erasures carried out.
async fn apply_batch(
    state: &NodeState,
    client: &mut FederationClient<Channel>,
    org: &str,
    batch: pb::SyncBatch,
) -> Result<()> {
    let items = convert_items(state, org, &batch.items)?;
    let had_items = !items.is_empty();
    state
        .store
        .apply_replica_batch(ReplicaBatch {
            owner_org: org.to_string(),
            cursor: batch.cursor,
            owner_last_seq: batch.owner_last_seq,
            at_ms: now_ms(),
            items,
        })
        .await
        .context("applying a batch")?;
    if batch.heartbeat && !had_items {
        return Ok(());
    }
    acknowledge(state, client, org, batch.cursor).await
}

/// The items of a batch, checked. An item we cannot take (a field our schema does not know,
/// a version beyond the clock-skew bound) fails the whole batch: the cursor stays, the link
/// reports the error and retries, and nothing is skipped silently.
fn convert_items(state: &NodeState, org: &str, items: &[pb::SyncItem]) -> Result<Vec<ReplicaItem>> {
    let now = now_ms().max(0) as u64;
    let mut out = Vec::with_capacity(items.len());
    for item in items {
        let item = item_to_store(org, item)
            .map_err(|e| anyhow!("{org} sent an item we cannot take: {}", e.message()))?;
        if let ReplicaItem::Upsert(st) = &item {
            for v in st.versions.values().chain(st.deleted.iter()) {
                if let Some(reason) = merge::too_far_ahead(v, now, state.max_clock_skew_ms) {
                    return Err(anyhow!("{org} sent record {}: {reason}", st.id));
                }
            }
            for v in st.versions.values() {
                state.observe(v);
            }
        }
        out.push(item);
    }
    Ok(out)
}

async fn acknowledge(
    state: &NodeState,
    client: &mut FederationClient<Channel>,
    org: &str,
    cursor: i64,
) -> Result<()> {
    let erased = state.store.unacked_erasures(org).await?;
    let cursor = match cursor {
        0 => state
            .store
            .subscription(org)
            .await?
            .map(|s| s.cursor)
            .unwrap_or(0),
        c => c,
    };
    client
        .ack(pb::AckRequest {
            cursor,
            erased: erased.iter().map(|id| id.to_string()).collect(),
        })
        .await
        .map_err(|s| anyhow!("ack: {}: {}", s.code(), s.message()))?;
    if !erased.is_empty() {
        state.store.mark_erasures_acked(&erased).await?;
        tracing::info!(partner = %org, n = erased.len(), "erasures carried out and acknowledged");
    }
    Ok(())
}

/// Proposes our pending edits of `org`'s records; applies the verdicts. Returns how many
/// entries were pushed.
async fn push_outbox(
    state: &NodeState,
    client: &mut FederationClient<Channel>,
    org: &str,
) -> Result<usize> {
    let entries = state
        .store
        .list_outbox(Some(org), Some("pending"), PUSH_BATCH)
        .await?;
    if entries.is_empty() {
        return Ok(0);
    }
    let changes = entries
        .iter()
        .map(|e| pb::ProposedChange {
            key: e.key.clone(),
            record_id: e.record_id.to_string(),
            kind: crate::convert::kind_to_pb(e.kind) as i32,
            edits: e
                .edits
                .iter()
                .map(|f| pb::FieldEditMessage {
                    name: f.field.clone(),
                    value: f.value.as_ref().map(value_to_pb),
                    version: Some(hlc_to_pb(&f.version)),
                    base: f.base.as_ref().map(hlc_to_pb),
                })
                .collect(),
        })
        .collect();
    let verdicts = match client.push(pb::PushRequest { changes }).await {
        Ok(r) => r.into_inner().verdicts,
        Err(s) => {
            let msg = format!("push: {}: {}", s.code(), s.message());
            for e in &entries {
                let _ = state.store.outbox_attempt(&e.key, &msg).await;
            }
            return Err(anyhow!(msg));
        }
    };
    for v in verdicts {
        let outcome = match pb::VerdictOutcome::try_from(v.outcome) {
            Ok(pb::VerdictOutcome::Applied) => VerdictOutcome::Applied,
            Ok(pb::VerdictOutcome::AppliedWithConflict) => VerdictOutcome::AppliedWithConflict,
            Ok(pb::VerdictOutcome::Rejected) => VerdictOutcome::Rejected,
            _ => {
                let _ = state
                    .store
                    .outbox_attempt(&v.key, "the owner answered an unknown verdict")
                    .await;
                continue;
            }
        };
        let record = match v.record.as_ref().map(|r| state_from_pb(org, r)).transpose() {
            Ok(r) => r,
            Err(e) => {
                let _ = state.store.outbox_attempt(&v.key, e.message()).await;
                continue;
            }
        };
        if let Some(r) = &record {
            for version in r.versions.values() {
                state.observe(version);
            }
        }
        if outcome == VerdictOutcome::Rejected {
            tracing::info!(partner = %org, key = %v.key, reason = %v.reason, "the owner rejected a local edit");
        }
        state
            .store
            .apply_verdict(VerdictApply {
                owner_org: org.to_string(),
                key: v.key,
                outcome,
                reason: v.reason,
                record,
            })
            .await?;
    }
    Ok(entries.len())
}

/// Compares bucket digests of our replicas of `org`'s records with what it says we should
/// hold, and applies the repairs for the buckets that differ.
pub async fn anti_entropy(
    state: &NodeState,
    client: &mut FederationClient<Channel>,
    org: &str,
) -> Result<usize> {
    let entries = state.store.replica_digests(org).await?;
    let buckets = merge::bucket_digests(entries.iter().map(|(id, d)| (id, *d)));
    let differing = client
        .digest(pb::DigestRequest {
            buckets,
            ..Default::default()
        })
        .await
        .map_err(|s| anyhow!("digest: {}: {}", s.code(), s.message()))?
        .into_inner()
        .differing_buckets;
    if differing.is_empty() {
        return Ok(0);
    }
    let wanted: std::collections::BTreeSet<usize> = differing.iter().map(|b| *b as usize).collect();
    let detail = entries
        .iter()
        .filter(|(id, _)| wanted.contains(&merge::bucket_of(id)))
        .map(|(id, d)| pb::BucketEntry {
            record_id: id.to_string(),
            digest: *d,
        })
        .collect();
    let repairs = client
        .digest(pb::DigestRequest {
            buckets: Vec::new(),
            detail_buckets: differing,
            entries: detail,
        })
        .await
        .map_err(|s| anyhow!("digest: {}: {}", s.code(), s.message()))?
        .into_inner()
        .repairs;
    let items = convert_items(state, org, &repairs)?;
    let n = items.len();
    if n > 0 {
        tracing::info!(partner = %org, repairs = n, "anti-entropy repaired replicas");
        state
            .store
            .apply_replica_batch(ReplicaBatch {
                owner_org: org.to_string(),
                cursor: 0,
                owner_last_seq: 0,
                at_ms: now_ms(),
                items,
            })
            .await?;
        acknowledge(state, client, org, 0).await?;
    }
    Ok(n)
}
