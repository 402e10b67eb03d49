//! What operators watch: the writer's batches (through a hook the metrics install), the
//! pool's use, and counts read at scrape time (open conflicts, erasures not acknowledged,
//! rejected edits). Read-only; nothing here changes data.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use super::*;

/// One write batch of the writer, as reported to the hook after it ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BatchReport {
    /// Jobs (writes, merges, audit-only appends) in the batch.
    pub jobs: usize,
    /// Audit entries the batch carried (appended if it committed).
    pub audit_entries: usize,
    /// Whether the transaction committed.
    pub committed: bool,
    /// From BEGIN to the end of COMMIT (or of the failure).
    pub elapsed: Duration,
}

type HookFn = dyn Fn(&BatchReport) + Send + Sync;

/// The writer's hook, installed once (by the node's metrics) after the store opened.
#[derive(Clone, Default)]
pub(crate) struct BatchHook(Arc<OnceLock<Box<HookFn>>>);

impl std::fmt::Debug for BatchHook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.get().is_some() {
            "BatchHook(set)"
        } else {
            "BatchHook(unset)"
        })
    }
}

impl BatchHook {
    pub(crate) fn report(&self, report: &BatchReport) {
        if let Some(hook) = self.0.get() {
            hook(report);
        }
    }
}

/// Connections of the database pool.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PoolUse {
    /// Open connections (idle and in use).
    pub open: u32,
    pub idle: u32,
    pub max: u32,
}

/// Counts an operator alerts on, read from the database.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct OpsCounts {
    /// Conflicts (owner side) nobody has resolved yet.
    pub conflicts_open: i64,
    /// Per partner: erased records it received and has not acknowledged purging.
    pub erasures_unacked: Vec<(String, i64)>,
    /// Per owner: our edits of its records that it rejected (still in the outbox).
    pub rejected_edits: Vec<(String, i64)>,
}

const UNACKED_ERASURES_SQL: &str = "SELECT org, COUNT(*) FROM deliveries WHERE state = 'erased' AND erasure_acked_ms IS NULL GROUP BY org";
const REJECTED_EDITS_SQL: &str =
    "SELECT owner_org, COUNT(*) FROM outbox WHERE state = 'rejected' GROUP BY owner_org";
const OPEN_CONFLICTS_SQL: &str = "SELECT COUNT(*) FROM conflicts WHERE resolved_ms IS NULL";

impl Store {
    /// Installs the function the writer calls after every batch; false if one is set already.
    pub fn on_batch(&self, hook: impl Fn(&BatchReport) + Send + Sync + 'static) -> bool {
        self.batch_hook.0.set(Box::new(hook)).is_ok()
    }

    pub fn pool_use(&self) -> PoolUse {
        match &self.backend {
            Backend::Sqlite(p) => PoolUse {
                open: p.size(),
                idle: p.num_idle() as u32,
                max: p.options().get_max_connections(),
            },
            Backend::Postgres(p) => PoolUse {
                open: p.size(),
                idle: p.num_idle() as u32,
                max: p.options().get_max_connections(),
            },
        }
    }

    /// A round trip to the database (readiness).
    pub async fn ping(&self) -> Result<()> {
        let one: i32 = match &self.backend {
            Backend::Sqlite(p) => sqlx::query_scalar("SELECT 1").fetch_one(p).await?,
            Backend::Postgres(p) => sqlx::query_scalar("SELECT 1").fetch_one(p).await?,
        };
        if one != 1 {
            return Err(StoreError::Corrupt("SELECT 1 did not answer 1".into()));
        }
        Ok(())
    }

    pub async fn ops_counts(&self) -> Result<OpsCounts> {
        Ok(match &self.backend {
            Backend::Sqlite(p) => OpsCounts {
                conflicts_open: sqlx::query_scalar(OPEN_CONFLICTS_SQL).fetch_one(p).await?,
                erasures_unacked: sqlx::query_as(UNACKED_ERASURES_SQL).fetch_all(p).await?,
                rejected_edits: sqlx::query_as(REJECTED_EDITS_SQL).fetch_all(p).await?,
            },
            Backend::Postgres(p) => OpsCounts {
                conflicts_open: sqlx::query_scalar(OPEN_CONFLICTS_SQL).fetch_one(p).await?,
                erasures_unacked: sqlx::query_as(UNACKED_ERASURES_SQL).fetch_all(p).await?,
                rejected_edits: sqlx::query_as(REJECTED_EDITS_SQL).fetch_all(p).await?,
            },
        })
    }
}
