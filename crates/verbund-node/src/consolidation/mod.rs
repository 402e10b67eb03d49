//! The consolidated customer view (the read side of a company group's holding node): the
//! matching engine (`verbund_consolidation`) kept in step with the node's own records and the
//! replicas its subsidiaries share with it. It reads the node's change log asynchronously
//! and keeps its state in memory (rebuilt at start from the records, with the stewards'
//! decisions from the store); a write never waits for it.
//!
//! What it matches is what the records on this node hold: for replicas, only what the
//! subsidiary's share shows the holding. A revoked or erased record is a tombstone here and
//! leaves its cluster; an erased person leaves with it.

mod inputs;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use tokio::sync::watch;
use uuid::Uuid;
use verbund_consolidation::{
    Changes, Consolidation, EngineOptions, StewardDecision, figures::FxRates,
    golden::SurvivorshipConfig,
};
use verbund_core::{Record, RecordKind};
use verbund_store::{ListQuery, StewardDecisionRow, StewardVerdict, Store};

pub use inputs::{account_input, contact_input, figures_input, source_record};

/// Settings of the consolidated view (`[consolidation]` in node.toml).
#[derive(Clone, Debug, Default)]
pub struct ConsolidationSettings {
    pub survivorship: SurvivorshipConfig,
    pub fx: Option<FxRates>,
}

impl ConsolidationSettings {
    /// The `[consolidation]` settings of node.toml (survivorship rules, exchange rates).
    pub fn from_config(cfg: &crate::config::NodeConfig) -> anyhow::Result<ConsolidationSettings> {
        use anyhow::Context;
        let c = &cfg.consolidation;
        let survivorship = match &c.survivorship {
            Some(path) => SurvivorshipConfig::from_toml(&cfg.read(path)?)
                .with_context(|| format!("[consolidation] survivorship = {}", path.display()))?,
            None => Default::default(),
        };
        let fx = match (&c.fx_base, c.fx_rates.is_empty()) {
            (None, true) => None,
            (Some(base), _) => Some(FxRates {
                base: base.clone(),
                rate_date: c.fx_rate_date.clone().context(
                    "[consolidation] fx_rate_date is required with exchange rates (it is shown with every converted figure)",
                )?,
                rates: c.fx_rates.clone(),
            }),
            (None, false) => anyhow::bail!("[consolidation] fx_rates need fx_base"),
        };
        Ok(ConsolidationSettings { survivorship, fx })
    }
}

/// Records read per page while building.
const BUILD_PAGE: i64 = 2_000;
/// Changes read per step while following the change log.
const FOLLOW_PAGE: i64 = 1_000;

/// The engine with the bookkeeping the API needs beside it.
struct Inner {
    engine: Consolidation,
    /// The change sequence number up to which the engine has taken in the change log.
    applied_seq: i64,
    /// The subsidiary (owner organization) of every account and contact in the engine,
    /// interned: the group's subsidiaries, and what a customer's sources are.
    org_of: HashMap<Box<str>, u16>,
    orgs: Vec<String>,
}

impl Inner {
    fn org_index(&mut self, org: &str) -> u16 {
        match self.orgs.iter().position(|o| o == org) {
            Some(i) => i as u16,
            None => {
                self.orgs.push(org.to_string());
                (self.orgs.len() - 1) as u16
            }
        }
    }

    fn take(&mut self, rec: &Record) -> Changes {
        let key = rec.id.to_string();
        if rec.is_deleted() {
            self.org_of.remove(key.as_str());
            return match rec.kind {
                RecordKind::Account => self.engine.remove_account(&key),
                _ => self.engine.remove_contact(&key),
            };
        }
        let org = self.org_index(&rec.owner_org);
        self.org_of.insert(key.as_str().into(), org);
        match rec.kind {
            RecordKind::Account => self.engine.upsert_account(&key, &account_input(rec)),
            _ => self.engine.upsert_contact(&key, &contact_input(rec)),
        }
    }

    fn forget(&mut self, kind: RecordKind, id: Uuid) {
        let key = id.to_string();
        self.org_of.remove(key.as_str());
        match kind {
            RecordKind::Account => {
                self.engine.remove_account(&key);
            }
            _ => {
                self.engine.remove_contact(&key);
            }
        }
    }
}

/// Why the view cannot answer right now.
#[derive(Debug, thiserror::Error)]
pub enum ViewError {
    #[error(
        "the consolidated view is not enabled on this node; set [consolidation] enabled = true in node.toml"
    )]
    Disabled,
    #[error("the consolidated view is still being built; try again shortly")]
    Building,
}

/// The consolidated view of one node.
pub struct ConsolidatedView {
    pub settings: ConsolidationSettings,
    enabled: bool,
    inner: RwLock<Option<Inner>>,
    /// The change sequence number the view has taken in (for callers that wait for it).
    applied: watch::Sender<i64>,
}

/// A read of the engine under the lock (never held across an await).
pub struct ViewRead<'a> {
    guard: std::sync::RwLockReadGuard<'a, Option<Inner>>,
}

impl ViewRead<'_> {
    fn inner(&self) -> &Inner {
        // `read` only hands out a guard holding a built view.
        self.guard.as_ref().unwrap_or_else(|| unreachable!())
    }

    pub fn engine(&self) -> &Consolidation {
        &self.inner().engine
    }

    pub fn subsidiary_of(&self, record: &str) -> Option<&str> {
        let inner = self.inner();
        inner
            .org_of
            .get(record)
            .and_then(|i| inner.orgs.get(*i as usize))
            .map(String::as_str)
    }

    /// The subsidiaries holding at least one account or contact in the view.
    pub fn subsidiaries(&self) -> BTreeSet<String> {
        self.inner().orgs.iter().cloned().collect()
    }

    pub fn applied_seq(&self) -> i64 {
        self.inner().applied_seq
    }
}

impl ConsolidatedView {
    pub fn new(enabled: bool, settings: ConsolidationSettings) -> Arc<ConsolidatedView> {
        Arc::new(ConsolidatedView {
            settings,
            enabled,
            inner: RwLock::new(None),
            applied: watch::channel(0).0,
        })
    }

    pub fn enabled(&self) -> bool {
        self.enabled
    }

    pub fn read(&self) -> Result<ViewRead<'_>, ViewError> {
        if !self.enabled {
            return Err(ViewError::Disabled);
        }
        let guard = self.inner.read().unwrap_or_else(|p| p.into_inner());
        if guard.is_none() {
            return Err(ViewError::Building);
        }
        Ok(ViewRead { guard })
    }

    /// Runs `f` on the built engine (a steward's decision).
    pub fn write<T>(&self, f: impl FnOnce(&mut Consolidation) -> T) -> Result<T, ViewError> {
        if !self.enabled {
            return Err(ViewError::Disabled);
        }
        let mut guard = self.inner.write().unwrap_or_else(|p| p.into_inner());
        let inner = guard.as_mut().ok_or(ViewError::Building)?;
        Ok(f(&mut inner.engine))
    }

    /// Waits until the view has taken in the change log up to `seq` (or `timeout` passed).
    pub async fn wait_for(&self, seq: i64, timeout: Duration) -> bool {
        let mut rx = self.applied.subscribe();
        tokio::time::timeout(timeout, rx.wait_for(|s| *s >= seq))
            .await
            .is_ok_and(|r| r.is_ok())
    }

    /// Builds the view from the store, then follows the change log until `stop` is set.
    /// Failures are logged and retried: the view is the read side and never stops the node.
    pub async fn run(self: Arc<Self>, store: Store, mut stop: watch::Receiver<bool>) {
        if !self.enabled {
            return;
        }
        loop {
            match self.build(&store).await {
                Ok(()) => break,
                Err(e) => {
                    tracing::error!(error = %format!("{e:#}"), "building the consolidated view failed; retrying in 5 s");
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_secs(5)) => {}
                        _ = stop.changed() => return,
                    }
                }
            }
        }
        let mut commits = store.subscribe_commits();
        loop {
            match self.follow(&store).await {
                Ok(true) => continue,
                Ok(false) => {}
                Err(e) => {
                    tracing::warn!(error = %format!("{e:#}"), "the consolidated view could not read the change log; retrying");
                }
            }
            tokio::select! {
                _ = commits.changed() => {}
                // Other processes may write the same database (PostgreSQL).
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                _ = stop.changed() => return,
            }
        }
    }

    async fn build(&self, store: &Store) -> anyhow::Result<()> {
        let started = std::time::Instant::now();
        let seq = store.last_seq().await?;
        let decisions = store.list_steward_decisions().await?;
        // Each page becomes the engine's inputs at once: the records themselves are never all
        // in memory.
        let mut inputs = BuildInputs::default();
        for kind in [RecordKind::Account, RecordKind::Contact] {
            let mut after_id = None;
            loop {
                let page = store
                    .list(&ListQuery {
                        kind: Some(kind),
                        after_id: after_id.clone(),
                        limit: BUILD_PAGE,
                        ..Default::default()
                    })
                    .await?;
                after_id = page.last().map(|r| r.id.to_string());
                let done = (page.len() as i64) < BUILD_PAGE;
                inputs.take_page(page);
                if done {
                    break;
                }
            }
        }
        let inner = tokio::task::spawn_blocking(move || inputs.build(&decisions)).await?;
        let n = inner.org_of.len();
        *self.inner.write().unwrap_or_else(|p| p.into_inner()) = Some(Inner {
            applied_seq: seq,
            ..inner
        });
        self.applied.send_replace(seq);
        tracing::info!(
            records = n,
            seq,
            ms = started.elapsed().as_millis() as u64,
            "consolidated view built"
        );
        Ok(())
    }

    /// Takes in the next changes of accounts and contacts; `true` when there may be more.
    async fn follow(&self, store: &Store) -> anyhow::Result<bool> {
        let after = self.read()?.applied_seq();
        // How far the log is readable before it is read: a read that finds nothing has
        // looked through at least this far. (Read after it, a change committed in between
        // would be passed over for good.)
        let readable = store.readable_seq().await?;
        let changes = store
            .changes_after(
                after,
                &[RecordKind::Account, RecordKind::Contact],
                FOLLOW_PAGE,
            )
            .await?;
        let Some(last) = changes.last().map(|c| c.seq) else {
            // Nothing of ours changed; other kinds may have.
            if readable > after {
                self.advance(readable);
            }
            return Ok(false);
        };
        let mut kinds: BTreeMap<Uuid, RecordKind> = BTreeMap::new();
        // A snapshot row names a share rule, not a record: nothing of the view changed.
        for c in changes
            .iter()
            .filter(|c| c.op != verbund_core::ChangeOp::Snapshot)
        {
            kinds.insert(c.record_id, c.kind);
        }
        let ids: Vec<Uuid> = kinds.keys().copied().collect();
        let records: HashMap<Uuid, Record> = store
            .get_many(&ids)
            .await?
            .into_iter()
            .map(|r| (r.id, r))
            .collect();
        {
            let mut guard = self.inner.write().unwrap_or_else(|p| p.into_inner());
            let Some(inner) = guard.as_mut() else {
                return Ok(false);
            };
            for (id, kind) in &kinds {
                match records.get(id) {
                    Some(rec) if matches!(rec.kind, RecordKind::Account | RecordKind::Contact) => {
                        inner.take(rec);
                    }
                    _ => inner.forget(*kind, *id),
                }
            }
            inner.applied_seq = last;
        }
        self.applied.send_replace(last);
        Ok(changes.len() as i64 == FOLLOW_PAGE)
    }

    fn advance(&self, seq: i64) {
        let mut guard = self.inner.write().unwrap_or_else(|p| p.into_inner());
        if let Some(inner) = guard.as_mut()
            && inner.applied_seq < seq
        {
            inner.applied_seq = seq;
            drop(guard);
            self.applied.send_replace(seq);
        }
    }
}

/// The engine's form of stored decisions of one kind.
pub fn decisions_of(rows: &[StewardDecisionRow], kind: RecordKind) -> Vec<StewardDecision> {
    rows.iter()
        .filter(|d| d.kind == kind)
        .map(|d| {
            let (a, b) = (d.record_a.to_string(), d.record_b.to_string());
            match d.decision {
                StewardVerdict::Link => StewardDecision::Link(a, b),
                StewardVerdict::Unlink => StewardDecision::Unlink(a, b),
            }
        })
        .collect()
}

/// What the build collects page by page: the engine's inputs and each record's subsidiary.
#[derive(Default)]
struct BuildInputs {
    accounts: Vec<(String, verbund_consolidation::AccountInput)>,
    contacts: Vec<(String, verbund_consolidation::ContactInput)>,
    org_of: HashMap<Box<str>, u16>,
    orgs: Vec<String>,
}

impl BuildInputs {
    fn take_page(&mut self, page: Vec<Record>) {
        for r in page.iter().filter(|r| !r.is_deleted()) {
            let org = match self.orgs.iter().position(|o| *o == r.owner_org) {
                Some(i) => i as u16,
                None => {
                    self.orgs.push(r.owner_org.clone());
                    (self.orgs.len() - 1) as u16
                }
            };
            self.org_of.insert(r.id.to_string().into(), org);
            match r.kind {
                RecordKind::Account => self.accounts.push((r.id.to_string(), account_input(r))),
                RecordKind::Contact => self.contacts.push((r.id.to_string(), contact_input(r))),
                _ => {}
            }
        }
    }

    fn build(self, decisions: &[StewardDecisionRow]) -> Inner {
        let engine = Consolidation::build(
            EngineOptions::default(),
            self.accounts,
            self.contacts,
            &decisions_of(decisions, RecordKind::Account),
            &decisions_of(decisions, RecordKind::Contact),
        );
        Inner {
            engine,
            applied_seq: 0,
            org_of: self.org_of,
            orgs: self.orgs,
        }
    }
}
