//! The one enforcement point. Every RPC of every service (client, admin, and the federation
//! API) asks here what the caller may see and do, record by record and field by field:
//!
//! - the class level comes from the casbin policy (`verbund_policy`): which fields of which
//!   kind a role may read or write, and under which condition;
//! - the record level, for principals of other organizations, comes from shares and share
//!   rules in the store (`verbund_core::access::reach`), read fresh on every call, so a revoke
//!   applies to the very next call;
//! - a foreign caller sees the intersection of its role's fields and its share profiles'
//!   fields; a record it reaches with no readable field does not exist for it (NOT_FOUND).
//!
//! Hard rules, whatever the policy says: only the own organization administers the node or
//! deletes records, and only it writes the fields that decide who sees a record.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use tonic::{Request, Status};
use uuid::Uuid;
use verbund_core::access::{self, Grant, GrantSource, Reach};
use verbund_core::audit::AuditDraft;
use verbund_core::{Record, RecordKind};
use verbund_policy::{Act, Policy, Subject};

use crate::error::store_status;
use crate::identity::Principal;
use crate::state::{NodeState, now_ms};
use crate::tls::ConnInfo;

/// The principal of a request, established at the TLS handshake.
pub fn principal<T>(req: &Request<T>) -> Result<Principal, Status> {
    req.extensions()
        .get::<ConnInfo>()
        .map(|c| c.principal.clone())
        .ok_or_else(|| Status::unauthenticated("no verified client certificate on this connection"))
}

pub fn subject(p: &Principal) -> Subject {
    Subject::principal(p.uri(), p.org.clone())
}

/// What one principal may do with one record.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RecordAccess {
    pub readable: BTreeSet<String>,
    pub writable: BTreeSet<String>,
    /// May add activities to this record (a foreign caller needs a share that allows it).
    pub may_add_activity: bool,
    /// The grants behind a foreign caller's access (empty for the own organization).
    pub grants: Vec<Grant>,
}

impl RecordAccess {
    pub fn visible(&self) -> bool {
        !self.readable.is_empty()
    }
}

/// Everything a foreign organization reaches, with the records themselves.
pub struct Reached {
    pub grants: Reach,
    pub records: HashMap<Uuid, Record>,
}

fn assigned_to(rec: &Record, org: &str) -> bool {
    rec.text("assigned_org") == Some(org)
}

/// Fields of `kind` that `subject` may `act` on, intersected over the profiles of `grants`
/// and united across grants. `assigned` is the record's condition attribute.
fn shared_fields(
    policy: &Policy,
    subject: &Subject,
    kind: RecordKind,
    act: Act,
    assigned: bool,
    grants: &[Grant],
) -> BTreeSet<String> {
    let own = policy.fields(subject, kind, act, assigned);
    let mut out = BTreeSet::new();
    for g in grants {
        let profile = policy.fields(&Subject::profile(&g.profile), kind, act, false);
        out.extend(own.intersection(&profile).cloned());
    }
    out
}

/// The access of principal `p` to `rec` on a node of `node_org`, given the grants through
/// which its organization reaches the record (ignored for the own organization).
pub fn record_access(
    policy: &Policy,
    node_org: &str,
    p: &Principal,
    rec: &Record,
    grants: &[Grant],
) -> RecordAccess {
    let s = subject(p);
    let assigned = assigned_to(rec, &p.org);
    if rec.is_deleted() && p.org != node_org {
        return RecordAccess::default();
    }
    if p.org == node_org {
        return RecordAccess {
            readable: (*policy.fields(&s, rec.kind, Act::Read, assigned)).clone(),
            writable: (*policy.fields(&s, rec.kind, Act::Write, assigned)).clone(),
            may_add_activity: !policy
                .fields(&s, RecordKind::Activity, Act::Create, false)
                .is_empty(),
            grants: Vec::new(),
        };
    }
    let readable = shared_fields(policy, &s, rec.kind, Act::Read, assigned, grants);
    let mut writable = shared_fields(policy, &s, rec.kind, Act::Write, assigned, grants);
    writable.retain(|f| !access::controls_access(f));
    // A record reached only as a reference carries nothing further.
    let anchors: Vec<Grant> = grants
        .iter()
        .filter(|g| !matches!(g.source, GrantSource::Reference(_)))
        .cloned()
        .collect();
    let may_add_activity = !readable.is_empty()
        && !policy
            .fields(&s, RecordKind::Activity, Act::Create, false)
            .is_empty()
        && anchors.iter().any(|g| {
            !policy
                .fields(
                    &Subject::profile(&g.profile),
                    RecordKind::Activity,
                    Act::Create,
                    false,
                )
                .is_empty()
        });
    RecordAccess {
        readable,
        writable,
        may_add_activity,
        grants: grants.to_vec(),
    }
}

/// The access of `p` to `rec` given what its organization reaches. An activity shows only
/// through a related record the caller may itself see under the same profile: sharing an
/// account must not reveal the notes on its unshared opportunities and cases.
pub fn reached_access(
    policy: &Policy,
    node_org: &str,
    p: &Principal,
    rec: &Record,
    reached: &Reached,
) -> RecordAccess {
    let grants = reached.grants.get(&rec.id).cloned().unwrap_or_default();
    if p.org == node_org || rec.kind != RecordKind::Activity {
        return record_access(policy, node_org, p, rec, &grants);
    }
    let grants: Vec<Grant> = grants
        .into_iter()
        .filter(|g| match g.source {
            GrantSource::Parent(parent) => reached.records.get(&parent).is_some_and(|pr| {
                let same_profile: Vec<Grant> = reached
                    .grants
                    .get(&parent)
                    .map(|gs| {
                        gs.iter()
                            .filter(|x| x.profile == g.profile)
                            .cloned()
                            .collect()
                    })
                    .unwrap_or_default();
                record_access(policy, node_org, p, pr, &same_profile).visible()
            }),
            _ => true,
        })
        .collect();
    record_access(policy, node_org, p, rec, &grants)
}

/// A short, value-free description of why access was granted.
pub fn reason_of(a: &RecordAccess) -> String {
    if a.grants.is_empty() {
        return "own organization (policy)".into();
    }
    a.grants
        .iter()
        .map(|g| format!("{} (profile {})", g.source, g.profile))
        .collect::<Vec<_>>()
        .join("; ")
}

impl NodeState {
    pub fn is_own(&self, p: &Principal) -> bool {
        p.org == self.org
    }

    pub fn policy(&self) -> Arc<Policy> {
        self.policy.current()
    }

    /// An audit entry about `p` (values never go in).
    pub fn audit_draft(
        p: &Principal,
        action: &str,
        kind: Option<RecordKind>,
        record_id: Option<String>,
        fields: Vec<String>,
        decision: &str,
        reason: impl Into<String>,
    ) -> AuditDraft {
        AuditDraft {
            at_ms: now_ms(),
            principal: p.uri(),
            org: p.org.clone(),
            action: action.to_string(),
            kind: kind.map(|k| k.as_str().to_string()),
            record_id,
            fields,
            decision: decision.to_string(),
            reason: reason.into(),
        }
    }

    /// Writes audit entries; if they cannot be written the call fails (nothing is served that
    /// is not on record).
    pub async fn audit(&self, drafts: Vec<AuditDraft>) -> Result<(), Status> {
        self.store.audit(drafts).await.map_err(|e| {
            tracing::error!(error = %e, "audit entries could not be written; refusing the call");
            Status::unavailable("the audit log cannot be written right now; try again")
        })
    }

    /// Records a denial and returns the status to send.
    pub async fn deny(&self, draft: AuditDraft, status: Status) -> Status {
        if let Err(e) = self.audit(vec![draft]).await {
            return e;
        }
        status
    }

    /// Node administration: the own organization's principals with the administer right.
    pub async fn administer(&self, p: &Principal, what: &str) -> Result<(), Status> {
        if self.is_own(p) && self.policy().may_administer(&subject(p)) {
            return Ok(());
        }
        let draft = Self::audit_draft(
            p,
            "administer",
            None,
            None,
            Vec::new(),
            "deny",
            format!("{what}: no administer right"),
        );
        Err(self
            .deny(
                draft,
                Status::permission_denied(format!("{p} may not administer this node ({what})")),
            )
            .await)
    }

    /// Every record `org` reaches through shares and share rules, read fresh from the store.
    pub async fn reach_of(&self, org: &str) -> Result<Reached, Status> {
        let store = &self.store;
        let shares = store
            .list_shares(Some(org), None)
            .await
            .map_err(store_status)?;
        let rules = store
            .list_share_rules(Some(org))
            .await
            .map_err(store_status)?;
        let ids: Vec<Uuid> = shares.iter().map(|s| s.record_id).collect();
        let mut direct = store.get_many(&ids).await.map_err(store_status)?;
        for rule in &rules {
            let found = match &rule.rule {
                access::RuleMatch::CaseAssigned => store.cases_assigned_to(org).await,
                access::RuleMatch::AccountTag(tag) => store.accounts_mentioning(tag).await,
            };
            direct.extend(found.map_err(store_status)?);
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
        let mut children = store
            .records_of_accounts(&accounts)
            .await
            .map_err(store_status)?;
        let parents: Vec<String> = directly_shared
            .iter()
            .map(|r| r.id.to_string())
            .chain(children.iter().map(|r| r.id.to_string()))
            .collect();
        children.extend(
            store
                .activities_related_to(&parents)
                .await
                .map_err(store_status)?,
        );
        let targets: Vec<Uuid> = directly_shared
            .iter()
            .flat_map(|r| access::reference_targets(r))
            .collect();
        let referenced = store.get_many(&targets).await.map_err(store_status)?;
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
    pub async fn reach_for(&self, org: &str, ids: &[Uuid]) -> Result<Reached, Status> {
        let targets = self.store.get_many(ids).await.map_err(store_status)?;
        self.reach_around(org, &targets).await
    }

    /// `reach_for` of records the caller has loaded already.
    pub async fn reach_around(&self, org: &str, targets: &[Record]) -> Result<Reached, Status> {
        let store = &self.store;
        let ids: Vec<Uuid> = targets.iter().map(|r| r.id).collect();
        let id_of = |r: &Record, f: &str| r.text(f).and_then(|t| Uuid::parse_str(t).ok());
        // The records an activity belongs to, and the accounts of both.
        let related_ids: Vec<Uuid> = targets
            .iter()
            .filter_map(|r| id_of(r, "related_id"))
            .collect();
        let related = store.get_many(&related_ids).await.map_err(store_status)?;
        let account_ids: Vec<Uuid> = targets
            .iter()
            .chain(&related)
            .filter_map(|r| id_of(r, "account_id"))
            .collect();
        let accounts = store.get_many(&account_ids).await.map_err(store_status)?;
        // Records that may refer to a target (making it visible as a reference).
        let id_texts: Vec<String> = ids.iter().map(Uuid::to_string).collect();
        let referrers = store.dependents_of(&id_texts).await.map_err(store_status)?;
        let mut direct: Vec<Record> = Vec::new();
        let mut seen = std::collections::HashSet::new();
        for r in targets
            .iter()
            .chain(&related)
            .chain(&accounts)
            .chain(&referrers)
        {
            if seen.insert(r.id) {
                direct.push(r.clone());
            }
        }
        let all: Vec<Uuid> = direct.iter().map(|r| r.id).collect();
        let shares = store
            .shares_of_records(org, &all)
            .await
            .map_err(store_status)?;
        let rules = store
            .list_share_rules(Some(org))
            .await
            .map_err(store_status)?;
        let children: Vec<Record> = targets.iter().chain(&related).cloned().collect();
        let grants = access::reach(org, &shares, &rules, &direct, &children, targets);
        Ok(self.own_reached(grants, direct))
    }

    /// The access of `p` to a stored record (reading the reach for a foreign caller).
    pub async fn access_to(&self, p: &Principal, rec: &Record) -> Result<RecordAccess, Status> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::PrincipalKind;
    use verbund_core::{Hlc, Value};

    const MODEL: &str = include_str!("../../../policies/model.conf");
    const POLICY: &str = include_str!("../../../policies/policy.csv");

    fn policy() -> Policy {
        let text = format!("{POLICY}\ng2, globex, partner\ng2, fixit, supplier\n");
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(Policy::from_texts("m", MODEL, "p", &text, "acme"))
            .unwrap()
    }

    fn p(org: &str, name: &str) -> Principal {
        Principal {
            org: org.into(),
            kind: PrincipalKind::User,
            name: name.into(),
        }
    }

    fn case(assigned: &str) -> Record {
        let mut r = Record {
            id: Uuid::now_v7(),
            kind: RecordKind::ServiceCase,
            owner_org: "acme".into(),
            created_at_ms: 1,
            updated_at_ms: 1,
            deleted: None,
            seq: 1,
            fields: Default::default(),
            versions: Default::default(),
        };
        for (k, v) in [
            ("subject", "Pumpe"),
            ("assigned_org", assigned),
            ("status", "new"),
        ] {
            r.fields.insert(k.into(), Value::Text(v.into()));
            r.versions.insert(k.into(), Hlc::new(1, 0, "acme/n"));
        }
        r
    }

    fn grant(profile: &str) -> Grant {
        Grant {
            profile: profile.into(),
            source: GrantSource::Rule(Uuid::nil()),
        }
    }

    #[test]
    fn supplier_sees_assigned_cases_only_and_writes_status_only() {
        let pol = policy();
        let sue = p("fixit", "sue");
        let a = record_access(
            &pol,
            "acme",
            &sue,
            &case("fixit"),
            &[grant("supplier-case")],
        );
        assert!(a.readable.contains("subject") && a.readable.contains("status"));
        assert_eq!(a.writable, ["status".to_string()].into());
        assert!(a.may_add_activity);
        // Reassigned: the policy condition fails even if a stale grant were presented.
        let b = record_access(
            &pol,
            "acme",
            &sue,
            &case("repairco"),
            &[grant("supplier-case")],
        );
        assert!(!b.visible() && b.writable.is_empty());
        // No grant, no access.
        assert!(!record_access(&pol, "acme", &sue, &case("fixit"), &[]).visible());
    }

    #[test]
    fn a_share_never_grants_more_than_the_role() {
        let pol = policy();
        let bob = p("globex", "bob");
        // The group profile reads everything of a case; the partner role reads no case field.
        let a = record_access(&pol, "acme", &bob, &case("fixit"), &[grant("group")]);
        assert!(!a.visible());
        // Own organization: the policy alone.
        let own = record_access(&pol, "acme", &p("acme", "x"), &case("fixit"), &[]);
        assert!(
            own.visible() && own.writable.is_empty(),
            "readonly by default"
        );
    }
}
