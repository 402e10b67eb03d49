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

use crate::identity::Principal;
use crate::state::{NodeState, now_ms};
use crate::tls::ConnInfo;

mod decide;
mod reach;
pub use decide::*;
pub use reach::Referrers;

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

/// Everything a foreign organization reaches (of our own records), with the records
/// themselves.
pub struct Reached {
    pub grants: Reach,
    /// From `reach_of`: every reached record. From `reach_around`/`reach_for` (the sync
    /// stream, anti-entropy, single reads): only what `reached_access` reads besides the
    /// record asked about, the reached records an activity belongs to; those callers have the
    /// records themselves, and a sync batch would otherwise copy thousands of them.
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

/// `reached_access` for the records of one batch sent to one foreign principal. What decides
/// the access to a record that is not an activity is its kind, whether it is assigned to the
/// caller's organization, and the profiles of its grants (and which of them are references
/// only); records alike in these get the same fields, computed once. A snapshot batch of
/// 2,000 accounts under one rule computes them once, not 2,000 times. The grants of a shared
/// access are those of the first record computed (its fields are what matter here).
pub struct AccessMemo<'a> {
    policy: &'a Policy,
    node_org: &'a str,
    p: &'a Principal,
    reached: &'a Reached,
    seen: HashMap<AccessKey<'a>, RecordAccess>,
}

/// A record's kind, whether it is assigned to the caller's organization, and its grants'
/// profiles (each with whether it is a reference only).
type AccessKey<'a> = (RecordKind, bool, Vec<(&'a str, bool)>);

impl<'a> AccessMemo<'a> {
    pub fn new(
        policy: &'a Policy,
        node_org: &'a str,
        p: &'a Principal,
        reached: &'a Reached,
    ) -> AccessMemo<'a> {
        AccessMemo {
            policy,
            node_org,
            p,
            reached,
            seen: HashMap::new(),
        }
    }

    /// The access of the principal to `rec`, as `reached_access` computes it.
    pub fn access(&mut self, rec: &Record) -> std::borrow::Cow<'_, RecordAccess> {
        use std::borrow::Cow;
        let (policy, node_org, p, reached) = (self.policy, self.node_org, self.p, self.reached);
        // Activities depend on their parent records, the own organization on nothing
        // shared, and a tombstone shows nothing: computed as they are.
        if p.org == node_org || rec.kind == RecordKind::Activity || rec.is_deleted() {
            return Cow::Owned(reached_access(policy, node_org, p, rec, reached));
        }
        let grants: &'a [Grant] = reached.grants.get(&rec.id).map_or(&[], Vec::as_slice);
        let key = (
            rec.kind,
            assigned_to(rec, &p.org),
            grants
                .iter()
                .map(|g| {
                    let reference = matches!(g.source, GrantSource::Reference(_));
                    (g.profile.as_str(), reference)
                })
                .collect::<Vec<_>>(),
        );
        Cow::Borrowed(
            self.seen
                .entry(key)
                .or_insert_with(|| record_access(policy, node_org, p, rec, grants)),
        )
    }
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
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::PrincipalKind;
    use verbund_core::{Hlc, Value};

    const MODEL: &str = include_str!("../../../../policies/model.conf");
    const POLICY: &str = include_str!("../../../../policies/policy.csv");

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
    fn the_access_memo_gives_what_reached_access_gives() {
        let pol = policy();
        let sue = p("fixit", "sue");
        let mine = case("fixit");
        let also_mine = case("fixit");
        let theirs = case("other");
        let plain = case("fixit");
        let referenced = case("fixit");
        let mut tomb = case("fixit");
        tomb.deleted = Some(Hlc::new(2, 0, "acme/n"));
        let reference = Grant {
            profile: "supplier-case".into(),
            source: GrantSource::Reference(Uuid::nil()),
        };
        let mut grants = Reach::new();
        for r in [&mine, &also_mine, &theirs, &tomb] {
            grants.insert(r.id, vec![grant("supplier-case")]);
        }
        grants.insert(referenced.id, vec![reference]);
        let reached = Reached {
            grants,
            records: HashMap::new(),
        };
        let mut memo = AccessMemo::new(&pol, "acme", &sue, &reached);
        // Twice over, so that the second round is answered from what the first computed.
        for _ in 0..2 {
            for r in [&mine, &also_mine, &theirs, &plain, &referenced, &tomb] {
                let expected = reached_access(&pol, "acme", &sue, r, &reached);
                let got = memo.access(r);
                assert_eq!(got.readable, expected.readable, "{r:?}");
                assert_eq!(got.writable, expected.writable, "{r:?}");
                assert_eq!(got.may_add_activity, expected.may_add_activity, "{r:?}");
            }
        }
        // Alike records share one computation: assigned with a rule grant, assigned without
        // grants, assigned as a reference, not assigned.
        assert_eq!(memo.seen.len(), 4);
        assert!(memo.access(&mine).visible() && !memo.access(&plain).visible());
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

    #[test]
    fn decisions_name_the_field_and_the_reason() {
        let pol = policy();
        let own = p("acme", "x");
        let bob = p("globex", "bob");
        // The example policy gives the own organization `readonly`: no create, no delete.
        let why = may_create(&pol, "acme", &own, RecordKind::Account, &[], false).unwrap_err();
        assert!(why.0.contains("may not create account"), "{why}");
        let why = may_delete(&pol, "acme", &bob, RecordKind::Account).unwrap_err();
        assert!(why.0.contains("only by their owner"), "{why}");
        // A partner creates activities only, and never writes a field deciding visibility.
        let why = may_create(&pol, "acme", &bob, RecordKind::Account, &[], false).unwrap_err();
        assert!(why.0.contains("may not create account"), "{why}");
        let given = vec!["related_id".to_string(), "assigned_org".to_string()];
        let why = may_create(&pol, "acme", &bob, RecordKind::Activity, &given, false);
        assert!(why.unwrap_err().0.starts_with("assigned_org: "));
        // Foreign lists are decided by reach, not here.
        assert!(may_list(&pol, "acme", &bob, RecordKind::Lead, &["stage"]).is_ok());
        // A supplier reads cases' status but the example policy shows it no case as `group`.
        let sue = p("fixit", "sue");
        let rec = case("fixit");
        let access = record_access(&pol, "acme", &sue, &rec, &[grant("supplier-case")]);
        assert!(may_write(&sue, "acme", &rec, &access, &["status".into()]).is_ok());
        let why = may_write(&sue, "acme", &rec, &access, &["subject".into()]).unwrap_err();
        assert!(why.0.starts_with("subject: "), "{why}");
        let why = may_write(&sue, "acme", &rec, &access, &["assigned_org".into()]).unwrap_err();
        assert!(why.0.contains("only its owner writes it"), "{why}");
        // The explanation of `policy check` is the handler's decision.
        assert_eq!(
            decide(&pol, "acme", &sue, &rec, &access, Act::Write, "subject").unwrap_err(),
            may_write(&sue, "acme", &rec, &access, &["subject".into()]).unwrap_err(),
        );
        let unshared = record_access(&pol, "acme", &sue, &rec, &[]);
        let why = decide(&pol, "acme", &sue, &rec, &unshared, Act::Delete, "").unwrap_err();
        assert!(why.0.contains("no share or share rule reaches"), "{why}");
        // A share that shows nothing is refused with the reason.
        let why = may_share(&pol, "globex", RecordKind::ServiceCase, "group").unwrap_err();
        assert!(why.0.contains("would show nothing"), "{why}");
        assert!(may_share(&pol, "fixit", RecordKind::ServiceCase, "supplier-case").is_ok());
    }
}
