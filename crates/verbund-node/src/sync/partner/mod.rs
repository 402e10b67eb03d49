//! The partner's side of federation sync: one link per registered partner. A link dials the
//! partner's node (mutual TLS, its pinned CA), says Hello, subscribes from our durable cursor
//! and applies each batch with the cursor in one transaction, acknowledges, pushes our outbox
//! (local edits of its records) and runs anti-entropy after connecting and periodically. A
//! broken link retries with exponential backoff; what it is doing is reported per partner.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, anyhow};
use prost::Message;
use tokio::task::JoinHandle;
use tonic::transport::Channel;
use uuid::Uuid;
use verbund_core::sync as merge;
use verbund_store::{QuarantineItem, ReplicaBatch, ReplicaItem, VerdictApply, VerdictOutcome};

use crate::link_state::LinkState;
use crate::pb;
use crate::pb::federation_client::FederationClient;
use crate::state::{NodeState, now_ms};
use crate::wire::{hlc_to_pb, item_to_store, state_from_pb, value_to_pb};

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
/// When the owner compared only some of the differing buckets, the next round comes this soon.
const DIGEST_MORE: Duration = Duration::from_millis(200);
/// Anti-entropy after a failed round is tried again this soon.
const DIGEST_RETRY: Duration = Duration::from_secs(10);
/// Quarantined items retried per round, and reported to the owner per Ack.
const QUARANTINE_RETRY: i64 = 500;
const QUARANTINE_REPORT: i64 = 20;

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

/// The partner speaks another protocol version (or is another organization): retrying does
/// not help until one side changes; the link says `incompatible`.
#[derive(Debug)]
struct Incompatible(String);

impl std::fmt::Display for Incompatible {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Incompatible {}

/// A process standing by for a link another process runs checks this often.
const LEASE_RETRY: Duration = Duration::from_secs(2);

/// Completes when the lease's connection stops answering (checked every few seconds).
async fn lease_lost(lease: &verbund_store::LinkLease) {
    loop {
        tokio::time::sleep(Duration::from_secs(5)).await;
        if !lease.alive().await {
            return;
        }
    }
}

async fn run_link(state: Arc<NodeState>, org: String) {
    let mut backoff = BACKOFF_FIRST;
    let mut last_error = String::new();
    loop {
        // With several processes on one database, one of them runs this link at a time; the
        // others stand by and take over when its lease goes (the process died).
        let lease = match state.store.try_link_lease(&org).await {
            Ok(Some(lease)) => lease,
            Ok(None) => {
                state.links.set(&org, |s| s.state = LinkState::Standby);
                tokio::time::sleep(LEASE_RETRY).await;
                continue;
            }
            Err(e) => {
                let msg = format!("cannot take the link's lease: {e}");
                tracing::warn!(partner = %org, error = %msg, "sync link waits");
                state.links.set(&org, |s| {
                    s.state = LinkState::BackingOff;
                    s.last_error = msg.clone();
                    s.last_error_ms = now_ms();
                });
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(BACKOFF_MAX);
                continue;
            }
        };
        state.links.set(&org, |s| s.state = LinkState::Connecting);
        let started = tokio::time::Instant::now();
        let outcome = tokio::select! {
            outcome = session(&state, &org) => outcome,
            _ = lease_lost(&lease) => Err(anyhow!("the link's lease was lost (database connection)")),
        };
        drop(lease);
        if started.elapsed() > Duration::from_secs(5) {
            backoff = BACKOFF_FIRST; // it ran for a while: a fresh failure starts small
        }
        if let Err(e) = outcome {
            let msg = format!("{e:#}");
            let incompatible = e.downcast_ref::<Incompatible>().is_some();
            // Said once per distinct error; the retries of an unreachable partner stay quiet.
            if msg != last_error {
                tracing::info!(partner = %org, error = %msg, "sync link down; retrying with backoff");
            } else {
                tracing::debug!(partner = %org, error = %msg, "sync link still down");
            }
            last_error = msg.clone();
            state.links.set(&org, |s| {
                s.state = if incompatible {
                    LinkState::Incompatible
                } else {
                    LinkState::BackingOff
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
            capabilities: crate::sync::owner::CAPABILITIES
                .iter()
                .map(|c| c.to_string())
                .collect(),
        })
        .await
        .map_err(|s| {
            if s.code() == tonic::Code::FailedPrecondition {
                // Hello refuses only an unsupported protocol version this way.
                return Incompatible(format!("hello refused: {}", s.message())).into();
            }
            match crate::dial::partner_refusal(&s, org, &state.org) {
                Some(why) => anyhow!("hello refused: {why}"),
                None => anyhow!("hello refused: {}: {}", s.code(), s.message()),
            }
        })?
        .into_inner();
    if hello.protocol_version != merge::PROTOCOL_VERSION || hello.org != org {
        return Err(Incompatible(format!(
            "partner answered protocol version {} as {}; expected version {} as {org}",
            hello.protocol_version,
            hello.org,
            merge::PROTOCOL_VERSION
        ))
        .into());
    }
    state.links.set(org, |s| {
        s.state = LinkState::Connected;
        s.last_error.clear();
        s.push_error.clear();
        s.repair_error.clear();
    });
    let _ = state.store.set_sync_error(org, None, now_ms()).await;
    tracing::info!(partner = %org, "sync link up");
    // What we could not take before may be takeable now (after an upgrade, a clock fix).
    if let Err(e) = retry_quarantine(state, org).await {
        tracing::warn!(partner = %org, error = %format!("{e:#}"), "retrying quarantined items failed");
    }
    // An owner whose latest change is older than a state we hold of it (e.g. the state a
    // verdict brought) went back in its history (restored from a backup), even if the change
    // at our cursor still matches: start over, as the owner itself would tell us otherwise.
    let held = state.store.max_replica_seq(org).await?;
    if held > hello.last_seq {
        tracing::warn!(partner = %org, held, owner_last_seq = hello.last_seq, "the owner is behind a state we hold of it (restored from a backup?): starting over");
        state
            .store
            .apply_replica_batch(ReplicaBatch {
                owner_org: org.to_string(),
                owner_last_seq: hello.last_seq,
                at_ms: now_ms(),
                from_stream: true,
                reset_for_org: Some(state.org.clone()),
                ..Default::default()
            })
            .await
            .context("starting over")?;
    }
    let (cursor, cursor_mark, snapshot_after) = state
        .store
        .subscription(org)
        .await?
        .map(|s| (s.cursor, s.cursor_mark, s.snapshot_after))
        .unwrap_or_default();
    let mut stream = client
        .subscribe(pb::SubscribeRequest {
            after_seq: cursor,
            max_batch: 0,
            cursor_mark,
            snapshot_after,
        })
        .await
        .map_err(|s| anyhow!("subscribe refused: {}: {}", s.code(), s.message()))?
        .into_inner();
    // Acknowledgements go off the apply path: the receiver applies batch after batch, and
    // the acknowledger sends the latest applied cursor (with the erasures carried out)
    // whenever it moved, coalescing those that came while it was sending.
    let (applied_tx, mut applied_rx) = tokio::sync::watch::channel(None::<i64>);
    let last_applied = applied_rx.clone();
    let receive = {
        let state = state.clone();
        async move {
            while let Some(batch) = stream
                .message()
                .await
                .map_err(|s| anyhow!("stream: {}: {}", s.code(), s.message()))?
            {
                if let Some(cursor) = apply_batch(&state, org, batch).await? {
                    applied_tx.send_replace(Some(cursor));
                }
            }
            Ok::<(), anyhow::Error>(())
        }
    };
    let acknowledger = {
        let (state, mut client) = (state.clone(), client.clone());
        async move {
            while applied_rx.changed().await.is_ok() {
                let applied = *applied_rx.borrow_and_update();
                if let Some(cursor) = applied {
                    acknowledge(&state, &mut client, org, cursor).await?;
                }
            }
            // The receiver ended; its outcome ends the session.
            std::future::pending::<()>().await;
            Ok::<(), anyhow::Error>(())
        }
    };
    let push = {
        let (state, mut client) = (state.clone(), client.clone());
        async move {
            let mut woken = state.links.outbox.subscribe();
            let mut backoff = BACKOFF_FIRST;
            loop {
                // A failed Push does not end the session: the stream keeps flowing, and the
                // entries stay pending for the next try.
                match push_outbox(&state, &mut client, org).await {
                    Ok(progressed) => {
                        backoff = BACKOFF_FIRST;
                        state.links.set(org, |s| s.push_error.clear());
                        if !progressed {
                            tokio::select! {
                                _ = woken.changed() => {}
                                _ = tokio::time::sleep(OUTBOX_POLL) => {}
                            }
                        }
                    }
                    Err(e) => {
                        let msg = format!("{e:#}");
                        tracing::info!(partner = %org, error = %msg, "pushing local edits failed; retrying");
                        state.links.set(org, |s| s.push_error = msg);
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(BACKOFF_MAX);
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
                if let Err(e) = retry_quarantine(&state, org).await {
                    tracing::warn!(partner = %org, error = %format!("{e:#}"), "retrying quarantined items failed");
                }
                // A failed round does not end the session either; it is tried again soon.
                let wait = match anti_entropy(&state, &mut client, org).await {
                    Ok(round) => {
                        state.links.set(org, |s| s.repair_error.clear());
                        if round.more {
                            DIGEST_MORE
                        } else if round.behind {
                            DIGEST_RETRY
                        } else {
                            DIGEST_EVERY
                        }
                    }
                    Err(e) => {
                        let msg = format!("{e:#}");
                        tracing::info!(partner = %org, error = %msg, "anti-entropy failed; retrying");
                        state.links.set(org, |s| s.repair_error = msg);
                        DIGEST_RETRY
                    }
                };
                tokio::time::sleep(wait).await;
            }
            #[allow(unreachable_code)]
            Ok::<(), anyhow::Error>(())
        }
    };
    let outcome = tokio::select! {
        r = receive => r,
        r = acknowledger => r,
        r = push => r,
        r = repair => r,
    };
    // A stream that ended cleanly (the owner's stream age) has its last batch acknowledged.
    let last = *last_applied.borrow();
    if outcome.is_ok()
        && let Some(cursor) = last
    {
        acknowledge(state, &mut client, org, cursor).await?;
    }
    outcome
}

/// Applies one batch of the owner's stream (with the cursor, in one transaction). Items we
/// cannot take go into quarantine in the same transaction; everything else flows. Returns
/// the cursor to acknowledge (None: a heartbeat that brought nothing).
async fn apply_batch(state: &NodeState, org: &str, batch: pb::SyncBatch) -> Result<Option<i64>> {
    let (items, quarantine) = convert_items(state, org, &batch.items, "s");
    let had_items = !batch.items.is_empty();
    let erases = items.iter().any(|i| matches!(i, ReplicaItem::Erase { .. }));
    if let Some(q) = quarantine.first() {
        tracing::warn!(
            partner = %org, n = quarantine.len(), record = %q.record_id, reason = %q.reason,
            "items of the stream we cannot take are kept in quarantine and retried"
        );
    }
    if batch.reset {
        tracing::warn!(partner = %org, "the owner's history changed under our cursor (restored from a backup?): starting over");
    }
    state
        .store
        .apply_replica_batch(ReplicaBatch {
            owner_org: org.to_string(),
            cursor: batch.cursor,
            cursor_mark: batch.cursor_mark,
            snapshot_after: batch.snapshot_after,
            owner_last_seq: batch.owner_last_seq,
            at_ms: now_ms(),
            items,
            from_stream: true,
            reset_for_org: batch.reset.then(|| state.org.clone()),
            quarantine,
            current_as_of: None,
        })
        .await
        .context("applying a batch")?;
    if erases {
        state.scrub_after_erasure();
    }
    if batch.heartbeat && !had_items {
        return Ok(None);
    }
    if batch.cursor == 0 && !erases {
        // Items without a position (new states of records we hold): the batch with the
        // position follows and is acknowledged.
        return Ok(None);
    }
    Ok(Some(batch.cursor))
}

/// The record an item is about, as sent (clipped: it may be anything).
fn item_record_id(item: &pb::SyncItem) -> String {
    let id = match item.item.as_ref() {
        Some(pb::sync_item::Item::Upsert(st)) => st.id.as_str(),
        Some(pb::sync_item::Item::Revoke(r)) => r.record_id.as_str(),
        Some(pb::sync_item::Item::Erase(e)) => e.record_id.as_str(),
        None => "",
    };
    if id.is_empty() {
        "(none)".into()
    } else {
        crate::convert::clip(id, 64)
    }
}

/// The items of a batch, checked, and those we cannot take (a field our schema does not
/// know, a version beyond the clock-skew bound, anything malformed): the latter go into
/// quarantine, to be reported and retried; no single item holds up the others. `origin`
/// says where they came from (`s`: the stream, `r`: repairs), which decides how a retry
/// may apply them.
fn convert_items(
    state: &NodeState,
    org: &str,
    items: &[pb::SyncItem],
    origin: &str,
) -> (Vec<ReplicaItem>, Vec<QuarantineItem>) {
    let now = now_ms().max(0) as u64;
    let mut out = Vec::with_capacity(items.len());
    let mut quarantine = Vec::new();
    for wire in items {
        let checked = item_to_store(org, wire)
            .map_err(|e| format!("{org} sent an item we cannot take: {}", e.message()))
            .and_then(|item| {
                if let ReplicaItem::Upsert(st) = &item {
                    for v in st.versions.values().chain(st.deleted.iter()) {
                        if let Some(reason) =
                            merge::too_far_ahead(v, now, state.max_clock_skew_ms, &state.org)
                        {
                            return Err(format!("record {}: {reason}", st.id));
                        }
                    }
                }
                Ok(item)
            });
        match checked {
            Ok(item) => {
                if let ReplicaItem::Upsert(st) = &item {
                    for v in st.versions.values() {
                        state.observe(v);
                    }
                }
                out.push(item);
            }
            Err(reason) => quarantine.push(QuarantineItem {
                owner_org: org.to_string(),
                record_id: item_record_id(wire),
                item: format!("{origin}:{}", hex::encode(wire.encode_to_vec())),
                reason: crate::convert::clip(&reason, 500),
                ..Default::default()
            }),
        }
    }
    (out, quarantine)
}

/// Tries the items of `org` in quarantine again: those we can take now are applied (a
/// stream item as the owner's latest state of its record, since a later item of the record
/// would have replaced it; a repair with the caution of a repair); the others stay.
async fn retry_quarantine(state: &NodeState, org: &str) -> Result<()> {
    let held = state
        .store
        .list_quarantine(Some(org), QUARANTINE_RETRY)
        .await?;
    if held.is_empty() {
        return Ok(());
    }
    for origin in ["s", "r"] {
        let mut wire = Vec::new();
        for q in held.iter().filter(|q| q.item.starts_with(origin)) {
            let bytes = q
                .item
                .split_once(':')
                .and_then(|(_, h)| hex::decode(h).ok())
                .ok_or_else(|| anyhow!("quarantined item of {} is unreadable", q.record_id))?;
            wire.push(pb::SyncItem::decode(bytes.as_slice()).context("a quarantined item")?);
        }
        if wire.is_empty() {
            continue;
        }
        let (items, quarantine) = convert_items(state, org, &wire, origin);
        let taken = items.len();
        state
            .store
            .apply_replica_batch(ReplicaBatch {
                owner_org: org.to_string(),
                at_ms: now_ms(),
                items,
                from_stream: origin == "s",
                quarantine,
                ..Default::default()
            })
            .await
            .context("applying quarantined items")?;
        if taken > 0 {
            tracing::info!(partner = %org, n = taken, "quarantined items taken in");
        }
    }
    Ok(())
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
    // What we keep in quarantine of its stream, so its operator sees it too.
    let quarantined = state
        .store
        .list_quarantine(Some(org), QUARANTINE_REPORT)
        .await?;
    let quarantined_total = if (quarantined.len() as i64) < QUARANTINE_REPORT {
        quarantined.len() as i64
    } else {
        state
            .store
            .quarantine_counts()
            .await?
            .into_iter()
            .find(|(o, _)| o == org)
            .map(|(_, n)| n)
            .unwrap_or(0)
    };
    client
        .ack(pb::AckRequest {
            cursor,
            erased: erased.iter().map(|id| id.to_string()).collect(),
            quarantined_total,
            quarantined: quarantined
                .into_iter()
                .map(|q| pb::QuarantinedItem {
                    record_id: q.record_id,
                    reason: q.reason,
                })
                .collect(),
        })
        .await
        .map_err(|s| anyhow!("ack: {}: {}", s.code(), s.message()))?;
    if !erased.is_empty() {
        state.store.mark_erasures_acked(&erased).await?;
        tracing::info!(partner = %org, n = erased.len(), "erasures carried out and acknowledged");
    }
    Ok(())
}

/// Proposes our pending edits of `org`'s records; applies the verdicts. Returns whether any
/// entry was settled (false: nothing pending, or every entry was deferred).
async fn push_outbox(
    state: &NodeState,
    client: &mut FederationClient<Channel>,
    org: &str,
) -> Result<bool> {
    let entries = state
        .store
        .list_outbox(
            Some(org),
            Some(verbund_store::OutboxState::Pending),
            PUSH_BATCH,
        )
        .await?;
    if entries.is_empty() {
        return Ok(false);
    }
    let mut settled = false;
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
            Ok(pb::VerdictOutcome::Deferred) => {
                // Not decided: stays pending, offered again (re-stamped if our clock was
                // wrong and has been corrected); the other entries go on.
                tracing::info!(partner = %org, key = %v.key, reason = %v.reason, "the owner deferred a local edit");
                let _ = state.store.outbox_attempt(&v.key, &v.reason).await;
                continue;
            }
            _ => {
                let _ = state
                    .store
                    .outbox_attempt(&v.key, "the owner answered an unknown verdict")
                    .await;
                continue;
            }
        };
        let mut record = match v.record.as_ref().map(|r| state_from_pb(org, r)).transpose() {
            Ok(r) => r,
            Err(e) => {
                let _ = state.store.outbox_attempt(&v.key, e.message()).await;
                continue;
            }
        };
        // A verdict's record is checked like the stream: a state from too far in the future
        // is not taken (the verdict itself is; the stream brings the state when it can).
        let now = now_ms().max(0) as u64;
        let ahead = record.as_ref().and_then(|r| {
            r.versions.values().find_map(|version| {
                merge::too_far_ahead(version, now, state.max_clock_skew_ms, &state.org)
            })
        });
        if let Some(reason) = ahead {
            tracing::warn!(partner = %org, key = %v.key, reason = %reason, "a verdict's record was not taken");
            record = None;
        }
        if let Some(r) = &record {
            for version in r.versions.values() {
                state.observe(version);
            }
        }
        settled = true;
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
                revoked: v.revoked,
                as_of_seq: v.as_of_seq,
                at_ms: now_ms(),
            })
            .await?;
    }
    Ok(settled)
}

pub mod anti_entropy;
pub use anti_entropy::{RoundOutcome, anti_entropy};
