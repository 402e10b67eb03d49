//! Each partner's stamp clock (see `verbund_core::stamp`): the positions of its stream and
//! the order of the record states it receives, never our change sequence numbers. Whoever
//! reads states for a partner (its stream, a verdict, a repair) holds the partner's lock
//! while reading and stamping, so stamps go in the order the states were read.

use tokio::sync::OwnedMutexGuard;
use verbund_core::stamp::StampClock;

use crate::error::NodeError;
use crate::pb;
use crate::state::{NodeState, now_us};

/// One partner's clock, held: reads done while it is held come before its next stamp.
pub(crate) struct StampLock {
    org: String,
    clock: OwnedMutexGuard<Option<StampClock>>,
}

impl NodeState {
    /// Takes partner `org`'s stamp lock (waiting for a stream, verdict or repair of the same
    /// partner that holds it).
    pub(crate) async fn stamp_lock(&self, org: &str) -> Result<StampLock, NodeError> {
        let cell = {
            let mut clocks = self.stamps.clocks.lock().unwrap_or_else(|p| p.into_inner());
            clocks.entry(org.to_string()).or_default().clone()
        };
        let mut clock = cell.lock_owned().await;
        if clock.is_none() {
            let reserved = self.store.stamps_reserved(org).await?;
            *clock = Some(StampClock::resume(reserved));
        }
        Ok(StampLock {
            org: org.to_string(),
            clock,
        })
    }

    /// A stamp for partner `org` now (for a decision that reads nothing under the lock).
    pub(crate) async fn stamp_now(&self, org: &str) -> Result<i64, NodeError> {
        let mut lock = self.stamp_lock(org).await?;
        lock.next(self).await
    }
}

impl StampLock {
    /// The next stamp; a reservation ahead of it is stored first when needed.
    pub(crate) async fn next(&mut self, state: &NodeState) -> Result<i64, NodeError> {
        let clock = self.clock.get_or_insert_with(|| StampClock::resume(0));
        let (stamp, reserve) = clock.next(now_us());
        if let Some(r) = reserve {
            state.store.reserve_stamps(&self.org, r).await?;
        }
        clock.take(stamp, reserve);
        Ok(stamp)
    }

    /// Every stamp the partner may hold is at or below this (told in Hello: a partner that
    /// holds a higher one has seen a history we lost).
    pub(crate) fn reserved(&self) -> i64 {
        self.clock.as_ref().map(StampClock::reserved).unwrap_or(0)
    }
}

/// Puts `stamp` on every record state of `items` (the order the partner keeps them in).
pub(crate) fn stamp_items(items: &mut [pb::SyncItem], stamp: i64) {
    for item in items {
        if let Some(pb::sync_item::Item::Upsert(st)) = item.item.as_mut() {
            st.owner_seq = stamp;
        }
    }
}
