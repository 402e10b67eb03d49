//! What a foreign organization reaches: the records and grants behind its access, read
//! fresh from the store on every call (so a revoke applies to the very next call).

use std::collections::HashMap;

use uuid::Uuid;
use verbund_core::access::{self, Reach};
use verbund_core::{Record, RecordKind};

use super::{Reached, RecordAccess, reached_access, record_access};
use crate::error::NodeError;
use crate::identity::Principal;
use crate::state::NodeState;

/// The live records referring to the records `of` (as account, contact or related record),
/// looked up already.
#[derive(Default)]
pub struct Referrers {
    pub of: std::collections::HashSet<Uuid>,
    pub records: Vec<Record>,
}

impl NodeState {
    /// Every record `org` reaches through shares and share rules, read fresh from the store.
    pub async fn reach_of(&self, org: &str) -> Result<Reached, NodeError> {
        let store = &self.store;
        let shares = store.list_shares(Some(org), None).await?;
        let rules = store.list_share_rules(Some(org)).await?;
        let ids: Vec<Uuid> = shares.iter().map(|s| s.record_id).collect();
        let mut direct = store.get_many(&ids).await?;
        for rule in &rules {
            let found = match &rule.rule {
                access::RuleMatch::CaseAssigned => store.cases_assigned_to(org).await,
                access::RuleMatch::AccountTag(tag) => store.accounts_mentioning(tag).await,
            };
            direct.extend(found?);
        }
        let directly_shared: Vec<&Record> = direct
            .iter()
            .filter(|r| !access::direct_grants(r, org, &shares, &rules).is_empty())
            .collect();
        let accounts: Vec<String> = directly_shared
            .iter()
            .filter(|r| r.kind == RecordKind::Account)
            .map(|r| r.id.to_string())
            .collect();
        let mut children = store.records_of_accounts(&accounts).await?;
        let parents: Vec<String> = directly_shared
            .iter()
            .map(|r| r.id.to_string())
            .chain(children.iter().map(|r| r.id.to_string()))
            .collect();
        children.extend(store.activities_related_to(&parents).await?);
        let targets: Vec<Uuid> = directly_shared
            .iter()
            .flat_map(|r| access::reference_targets(r))
            .collect();
        let referenced = store.get_many(&targets).await?;
        let grants = access::reach(org, &shares, &rules, &direct, &children, &referenced);
        Ok(self.own_reached(grants, direct.into_iter().chain(children).chain(referenced)))
    }

    /// The reached records among `candidates` with their grants. Only our own records are
    /// ever shared: replicas of other owners never pass on.
    fn own_reached(
        &self,
        mut grants: Reach,
        candidates: impl IntoIterator<Item = Record>,
    ) -> Reached {
        let records: HashMap<Uuid, Record> = candidates
            .into_iter()
            .filter(|r| grants.contains_key(&r.id) && r.owner_org == self.org)
            .map(|r| (r.id, r))
            .collect();
        grants.retain(|id, _| records.contains_key(id));
        Reached { grants, records }
    }

    /// What `org` reaches among the records `ids`: the same grants `reach_of` finds for them,
    /// computed from the records around them only (their parents, the records they belong
    /// to, the records that refer to them, and those records' shares), so the cost follows
    /// the number of records asked about, not the number shared with `org`.
    pub async fn reach_for(&self, org: &str, ids: &[Uuid]) -> Result<Reached, NodeError> {
        let targets = self.store.get_many(ids).await?;
        self.reach_around(org, &targets).await
    }

    /// `reach_for` of records the caller has loaded already.
    pub async fn reach_around(&self, org: &str, targets: &[Record]) -> Result<Reached, NodeError> {
        let (reached, _) = self
            .reach_around_known(org, targets, &Referrers::default(), &[])
            .await?;
        Ok(reached)
    }

    /// `reach_around`, where the records referring to some targets are known already (the
    /// sync stream looked them up while following dependents): only the rest are looked up.
    /// The grants are those of our own records; its `records` hold only what `reached_access`
    /// looks at besides the record itself, the records an activity belongs to: the targets
    /// are not copied (a sync batch looks at thousands of them). Also reads what `org` was
    /// delivered of `delivered_of`, with the same look-ups (see `Store::surroundings`).
    pub async fn reach_around_known(
        &self,
        org: &str,
        targets: &[Record],
        known: &Referrers,
        delivered_of: &[Uuid],
    ) -> Result<(Reached, Vec<verbund_store::Delivery>), NodeError> {
        let store = &self.store;
        let ids: Vec<Uuid> = targets.iter().map(|r| r.id).collect();
        let id_of = |r: &Record, f: &str| r.text(f).and_then(|t| Uuid::parse_str(t).ok());
        // The records an activity belongs to, and the accounts of both.
        let related_ids: Vec<Uuid> = targets
            .iter()
            .filter_map(|r| id_of(r, "related_id"))
            .collect();
        let related = store.get_many(&related_ids).await?;
        // An account's `account_id` is its own id: what is loaded already is not read again.
        let loaded: std::collections::HashSet<Uuid> =
            targets.iter().chain(&related).map(|r| r.id).collect();
        let account_ids: Vec<Uuid> = targets
            .iter()
            .chain(&related)
            .filter_map(|r| id_of(r, "account_id"))
            .filter(|id| !loaded.contains(id))
            .collect();
        let accounts = store.get_many(&account_ids).await?;
        // Records that may refer to a target (making it visible as a reference).
        let id_texts: Vec<String> = ids
            .iter()
            .filter(|id| !known.of.contains(id))
            .map(Uuid::to_string)
            .collect();
        // The shares of the records at hand are read with the look-up of the records
        // referring to them (and the deliveries asked for), and those of referrers found
        // there after: on the way of an update, usually none.
        let mut seen = std::collections::HashSet::new();
        let at_hand: Vec<Uuid> = targets
            .iter()
            .chain(&related)
            .chain(&accounts)
            .chain(&known.records)
            .filter(|r| seen.insert(r.id))
            .map(|r| r.id)
            .collect();
        let verbund_store::Surroundings {
            dependents: referrers,
            mut shares,
            deliveries,
        } = store
            .surroundings(org, &id_texts, &at_hand, delivered_of)
            .await?;
        let found: Vec<Uuid> = referrers
            .iter()
            .filter(|r| seen.insert(r.id))
            .map(|r| r.id)
            .collect();
        shares.extend(store.shares_of_records(org, &found).await?);
        let mut direct: Vec<&Record> = Vec::new();
        let mut listed = std::collections::HashSet::new();
        for r in targets
            .iter()
            .chain(&related)
            .chain(&accounts)
            .chain(&referrers)
            .chain(&known.records)
        {
            if listed.insert(r.id) {
                direct.push(r);
            }
        }
        let rules = store.list_share_rules(Some(org)).await?;
        let children: Vec<&Record> = targets.iter().chain(&related).collect();
        let mut grants = access::reach(org, &shares, &rules, &direct, &children, targets);
        // Only our own records are ever shared (as in `own_reached`).
        let own: HashMap<Uuid, &Record> = direct
            .iter()
            .filter(|r| r.owner_org == self.org)
            .map(|r| (r.id, *r))
            .collect();
        grants.retain(|id, _| own.contains_key(id));
        let mut records = HashMap::new();
        for (id, gs) in &grants {
            if own.get(id).is_some_and(|r| r.kind == RecordKind::Activity) {
                for g in gs {
                    if let access::GrantSource::Parent(parent) = g.source
                        && let Some(pr) = own.get(&parent).filter(|_| grants.contains_key(&parent))
                    {
                        records.entry(parent).or_insert_with(|| (*pr).clone());
                    }
                }
            }
        }
        Ok((Reached { grants, records }, deliveries))
    }

    /// The access of `p` to a stored record (reading the reach for a foreign caller).
    pub async fn access_to(&self, p: &Principal, rec: &Record) -> Result<RecordAccess, NodeError> {
        let policy = self.policy();
        if self.is_own(p) {
            return Ok(record_access(&policy, &self.org, p, rec, &[]));
        }
        if rec.owner_org != self.org {
            return Ok(RecordAccess::default());
        }
        let reached = self.reach_for(&p.org, &[rec.id]).await?;
        Ok(reached_access(&policy, &self.org, p, rec, &reached))
    }
}
