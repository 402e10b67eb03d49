//! Record-level sharing as pure rules: which records an organization reaches through explicit
//! shares and share rules (and, from those, children and references), under which share
//! profile, and the projection of a record onto the fields a caller may read. No I/O: the
//! node fetches the candidate records and shares from the store and asks these functions.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::model::{Record, RecordKind, Value};

/// The share profile under which a record that a shared record *references* becomes visible
/// (e.g. the account of a shared opportunity): the minimum, defined in the policy.
pub const REFERENCE_PROFILE: &str = "reference";

/// An explicit share: this record with that organization under a named share profile.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Share {
    pub id: Uuid,
    pub record_id: Uuid,
    pub kind: RecordKind,
    pub org: String,
    pub profile: String,
    pub created_at_ms: i64,
    /// The principal (URI) who shared it.
    pub created_by: String,
}

/// What a share rule matches.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum RuleMatch {
    /// Every service case whose `assigned_org` is the rule's organization.
    CaseAssigned,
    /// Every account carrying this tag.
    AccountTag(String),
}

impl RuleMatch {
    pub fn describe(&self) -> String {
        match self {
            RuleMatch::CaseAssigned => "case-assigned".into(),
            RuleMatch::AccountTag(t) => format!("account-tag:{t}"),
        }
    }

    /// The kind of record the rule matches.
    pub fn kind(&self) -> RecordKind {
        match self {
            RuleMatch::CaseAssigned => RecordKind::ServiceCase,
            RuleMatch::AccountTag(_) => RecordKind::Account,
        }
    }

    /// Parses `case-assigned` or `account-tag:<tag>`.
    pub fn parse(s: &str) -> Option<RuleMatch> {
        if s == "case-assigned" {
            return Some(RuleMatch::CaseAssigned);
        }
        let tag = s.strip_prefix("account-tag:")?;
        crate::schema::is_valid_tag(tag).then(|| RuleMatch::AccountTag(tag.to_string()))
    }

    /// Whether `rec` matches this rule for organization `org` (live records only).
    pub fn matches(&self, rec: &Record, org: &str) -> bool {
        if rec.is_deleted() {
            return false;
        }
        match self {
            RuleMatch::CaseAssigned => {
                rec.kind == RecordKind::ServiceCase && rec.text("assigned_org") == Some(org)
            }
            RuleMatch::AccountTag(tag) => {
                rec.kind == RecordKind::Account
                    && rec
                        .fields
                        .get("tags")
                        .and_then(Value::as_list)
                        .is_some_and(|tags| tags.iter().any(|t| t == tag))
            }
        }
    }
}

/// A share rule: every record matching `rule` is shared with `org` under `profile`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShareRule {
    pub id: Uuid,
    pub org: String,
    pub rule: RuleMatch,
    pub profile: String,
    pub created_at_ms: i64,
    pub created_by: String,
}

/// Why an organization reaches a record.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum GrantSource {
    /// An explicit share (its id).
    Share(Uuid),
    /// A share rule (its id).
    Rule(Uuid),
    /// The record belongs to this shared record (a contact of a shared account, an activity of
    /// a shared record).
    Parent(Uuid),
    /// This shared record refers to the record (e.g. the account of a shared opportunity).
    Reference(Uuid),
}

impl std::fmt::Display for GrantSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            GrantSource::Share(id) => write!(f, "share {id}"),
            GrantSource::Rule(id) => write!(f, "share rule {id}"),
            GrantSource::Parent(id) => write!(f, "belongs to shared record {id}"),
            GrantSource::Reference(id) => write!(f, "referenced by shared record {id}"),
        }
    }
}

/// One way an organization reaches a record: a profile and its source.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Grant {
    pub profile: String,
    pub source: GrantSource,
}

/// Every record an organization reaches, with all the grants that reach it.
pub type Reach = BTreeMap<Uuid, Vec<Grant>>;

/// The grants that share `rec` directly with `org`: its explicit shares and matching rules.
pub fn direct_grants(rec: &Record, org: &str, shares: &[Share], rules: &[ShareRule]) -> Vec<Grant> {
    if rec.is_deleted() {
        return Vec::new();
    }
    let mut grants: Vec<Grant> = shares
        .iter()
        .filter(|s| s.record_id == rec.id && s.org == org && s.kind == rec.kind)
        .map(|s| Grant {
            profile: s.profile.clone(),
            source: GrantSource::Share(s.id),
        })
        .collect();
    grants.extend(
        rules
            .iter()
            .filter(|r| r.org == org && r.rule.matches(rec, org))
            .map(|r| Grant {
                profile: r.profile.clone(),
                source: GrantSource::Rule(r.id),
            }),
    );
    grants
}

/// The references of a record that sharing it makes minimally visible.
pub fn reference_targets(rec: &Record) -> Vec<Uuid> {
    let fields: &[&str] = match rec.kind {
        RecordKind::Opportunity | RecordKind::Contact => &["account_id"],
        RecordKind::ServiceCase => &["account_id", "contact_id"],
        _ => &[],
    };
    fields
        .iter()
        .filter_map(|f| rec.text(f))
        .filter_map(|t| Uuid::parse_str(t).ok())
        .collect()
}

/// What an organization reaches, from the candidates the store found:
/// - `direct`: records named by its shares and records its rules may match;
/// - `children`: records whose `account_id` is a directly shared account, and activities whose
///   related record is among `direct` or those records;
/// - `referenced`: the records `reference_targets` names for the direct records.
///
/// Candidates that do not qualify are ignored, so the store may over-fetch.
pub fn reach(
    org: &str,
    shares: &[Share],
    rules: &[ShareRule],
    direct: &[impl std::borrow::Borrow<Record>],
    children: &[impl std::borrow::Borrow<Record>],
    referenced: &[Record],
) -> Reach {
    use std::borrow::Borrow;
    let mut out: Reach = BTreeMap::new();
    let mut seen = BTreeSet::new();
    for rec in direct.iter().map(Borrow::borrow) {
        if !seen.insert(rec.id) {
            continue;
        }
        let grants = direct_grants(rec, org, shares, rules);
        if !grants.is_empty() {
            out.insert(rec.id, grants);
        }
    }
    let direct_ids: BTreeSet<Uuid> = out.keys().copied().collect();
    let profiles_of = |out: &Reach, id: Uuid| -> Vec<String> {
        let mut p: Vec<String> = out
            .get(&id)
            .map(|g| g.iter().map(|g| g.profile.clone()).collect())
            .unwrap_or_default();
        p.sort();
        p.dedup();
        p
    };
    let parent_of = |rec: &Record, field: &str| -> Option<Uuid> {
        rec.text(field).and_then(|t| Uuid::parse_str(t).ok())
    };
    // Records of shared accounts first (contacts, opportunities, cases, activities, by their
    // account_id): activities may hang off them. The profile decides which kinds show.
    let mut child_grants: Vec<(Uuid, Grant)> = Vec::new();
    for rec in children
        .iter()
        .map(Borrow::borrow)
        .filter(|r| !r.is_deleted())
    {
        if rec.kind == RecordKind::Account {
            continue;
        }
        if let Some(account) = parent_of(rec, "account_id").filter(|a| direct_ids.contains(a)) {
            for profile in profiles_of(&out, account) {
                child_grants.push((
                    rec.id,
                    Grant {
                        profile,
                        source: GrantSource::Parent(account),
                    },
                ));
            }
        }
    }
    for (id, g) in child_grants.drain(..) {
        out.entry(id).or_default().push(g);
    }
    for rec in children
        .iter()
        .map(Borrow::borrow)
        .filter(|r| !r.is_deleted())
    {
        if rec.kind != RecordKind::Activity {
            continue;
        }
        let Some(related) = parent_of(rec, "related_id") else {
            continue;
        };
        // Only through a direct share or a contact reached as a child, never through a
        // reference (the minimum view of a referenced record carries nothing further).
        let parent_grants: Vec<String> = out
            .get(&related)
            .map(|gs| {
                gs.iter()
                    .filter(|g| !matches!(g.source, GrantSource::Reference(_)))
                    .map(|g| g.profile.clone())
                    .collect()
            })
            .unwrap_or_default();
        let mut parent_grants = parent_grants;
        parent_grants.sort();
        parent_grants.dedup();
        for profile in parent_grants {
            child_grants.push((
                rec.id,
                Grant {
                    profile,
                    source: GrantSource::Parent(related),
                },
            ));
        }
    }
    for (id, g) in child_grants {
        out.entry(id).or_default().push(g);
    }
    let live_referenced: BTreeSet<Uuid> = referenced
        .iter()
        .chain(direct.iter().map(Borrow::borrow))
        .filter(|r| !r.is_deleted())
        .map(|r| r.id)
        .collect();
    for rec in direct
        .iter()
        .map(Borrow::borrow)
        .filter(|r| direct_ids.contains(&r.id))
    {
        for target in reference_targets(rec) {
            if live_referenced.contains(&target) {
                out.entry(target).or_default().push(Grant {
                    profile: REFERENCE_PROFILE.to_string(),
                    source: GrantSource::Reference(rec.id),
                });
            }
        }
    }
    for grants in out.values_mut() {
        grants.sort();
        grants.dedup();
    }
    out
}

/// `rec` with only the fields in `readable` (values and versions): what a caller who may read
/// exactly those fields gets to see.
pub fn project(rec: &Record, readable: &BTreeSet<String>) -> Record {
    let mut out = rec.clone();
    out.fields.retain(|k, _| readable.contains(k));
    out.versions.retain(|k, _| readable.contains(k));
    out
}

/// What another organization is shown of `rec`: its readable fields (`project`), and
/// metadata that says nothing about changes it cannot see: no sequence number of ours (0),
/// and as update time the time of the newest version it can read (or the delete).
pub fn project_for_other_org(rec: &Record, readable: &BTreeSet<String>) -> Record {
    let mut out = project(rec, readable);
    out.seq = 0;
    let newest = out
        .versions
        .values()
        .chain(out.deleted.as_ref())
        .map(|v| i64::try_from(v.physical_ms).unwrap_or(i64::MAX))
        .max();
    out.updated_at_ms = newest.unwrap_or(out.created_at_ms).max(out.created_at_ms);
    out
}

/// Fields that decide who can see a record (assignment, tags, the links to its parent). Only
/// the owning organization may write them: a partner could otherwise share records with
/// itself or move them out of someone else's reach.
pub fn controls_access(field: &str) -> bool {
    matches!(
        field,
        "assigned_org" | "tags" | "account_id" | "contact_id" | "related_id"
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hlc::Hlc;
    use crate::model::FieldMap;

    #[test]
    fn another_org_is_not_shown_when_a_field_it_cannot_read_changed() {
        let mut r = rec(
            RecordKind::Account,
            &[
                ("name", Value::Text("A".into())),
                ("city", Value::Text("Ulm".into())),
            ],
        );
        r.created_at_ms = 1_000;
        r.versions
            .insert("name".into(), Hlc::new(2_000, 0, "acme/n"));
        r.versions
            .insert("city".into(), Hlc::new(9_000, 3, "acme/n"));
        r.updated_at_ms = 9_000;
        r.seq = 77;
        let name_only: BTreeSet<String> = ["name".to_string()].into();
        let shown = project_for_other_org(&r, &name_only);
        assert_eq!((shown.seq, shown.updated_at_ms), (0, 2_000));
        assert!(!shown.fields.contains_key("city"));
        r.deleted = Some(Hlc::new(12_000, 0, "acme/n"));
        assert_eq!(project_for_other_org(&r, &name_only).updated_at_ms, 12_000);
        assert_eq!(
            project_for_other_org(&r, &BTreeSet::new()).updated_at_ms,
            12_000
        );
    }

    fn rec(kind: RecordKind, fields: &[(&str, Value)]) -> Record {
        let fields: FieldMap = fields
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect();
        let versions = fields
            .keys()
            .map(|k| (k.clone(), Hlc::new(1, 0, "acme/n1")))
            .collect();
        Record {
            id: Uuid::now_v7(),
            kind,
            owner_org: "acme".into(),
            created_at_ms: 1,
            updated_at_ms: 1,
            deleted: None,
            seq: 1,
            fields,
            versions,
        }
    }

    fn text(s: impl Into<String>) -> Value {
        Value::Text(s.into())
    }

    fn share(r: &Record, org: &str, profile: &str) -> Share {
        Share {
            id: Uuid::now_v7(),
            record_id: r.id,
            kind: r.kind,
            org: org.into(),
            profile: profile.into(),
            created_at_ms: 1,
            created_by: "verbund://acme/user/admin".into(),
        }
    }

    #[test]
    fn shared_opportunity_reaches_its_account_only_as_reference() {
        let account = rec(RecordKind::Account, &[("name", text("Kunde"))]);
        let opp = rec(
            RecordKind::Opportunity,
            &[("name", text("Deal")), ("account_id", text(account.id))],
        );
        let shares = vec![share(&opp, "globex", "joint-deal")];
        let r = reach(
            "globex",
            &shares,
            &[],
            std::slice::from_ref(&opp),
            &[] as &[Record],
            std::slice::from_ref(&account),
        );
        assert_eq!(r[&opp.id][0].profile, "joint-deal");
        assert_eq!(r[&account.id].len(), 1);
        assert_eq!(r[&account.id][0].profile, REFERENCE_PROFILE);
        // Nobody else reaches anything.
        assert!(
            reach(
                "initech",
                &shares,
                &[],
                &[opp],
                &[] as &[Record],
                &[account]
            )
            .is_empty()
        );
    }

    #[test]
    fn account_share_reaches_contacts_and_their_activities_not_others() {
        let account = rec(RecordKind::Account, &[("name", text("Kunde"))]);
        let other = rec(RecordKind::Account, &[("name", text("Fremd"))]);
        let contact = rec(RecordKind::Contact, &[("account_id", text(account.id))]);
        let foreign_contact = rec(RecordKind::Contact, &[("account_id", text(other.id))]);
        let call = rec(RecordKind::Activity, &[("related_id", text(contact.id))]);
        let shares = vec![share(&account, "globex", "partner-account")];
        let r = reach(
            "globex",
            &shares,
            &[],
            &[account.clone(), other.clone()],
            &[contact.clone(), foreign_contact.clone(), call.clone()],
            &[],
        );
        assert!(r.contains_key(&account.id) && r.contains_key(&contact.id));
        assert!(r.contains_key(&call.id));
        assert!(!r.contains_key(&other.id) && !r.contains_key(&foreign_contact.id));
    }

    #[test]
    fn case_rule_follows_assignment_and_tombstones_are_never_reached() {
        let mut case = rec(RecordKind::ServiceCase, &[("assigned_org", text("fixit"))]);
        let rule = ShareRule {
            id: Uuid::now_v7(),
            org: "fixit".into(),
            rule: RuleMatch::CaseAssigned,
            profile: "supplier-case".into(),
            created_at_ms: 1,
            created_by: "x".into(),
        };
        let rules = vec![rule];
        assert_eq!(direct_grants(&case, "fixit", &[], &rules).len(), 1);
        case.fields.insert("assigned_org".into(), text("repairco"));
        assert!(direct_grants(&case, "fixit", &[], &rules).is_empty());
        case.fields.insert("assigned_org".into(), text("fixit"));
        case.deleted = Some(Hlc::new(2, 0, "acme/n1"));
        assert!(direct_grants(&case, "fixit", &[], &rules).is_empty());
    }

    #[test]
    fn tag_rule_and_projection() {
        let account = rec(
            RecordKind::Account,
            &[
                ("name", text("Kunde")),
                ("tags", Value::List(vec!["group".into()])),
                ("vat_id", text("DE123")),
            ],
        );
        assert!(RuleMatch::AccountTag("group".into()).matches(&account, "holding"));
        assert!(!RuleMatch::AccountTag("key".into()).matches(&account, "holding"));
        let readable: BTreeSet<String> = ["name".to_string()].into();
        let p = project(&account, &readable);
        assert_eq!(p.fields.keys().collect::<Vec<_>>(), vec!["name"]);
        assert_eq!(p.versions.keys().collect::<Vec<_>>(), vec!["name"]);
        assert_eq!(
            RuleMatch::parse("account-tag:group"),
            Some(RuleMatch::AccountTag("group".into()))
        );
        assert_eq!(
            RuleMatch::parse("case-assigned"),
            Some(RuleMatch::CaseAssigned)
        );
        assert_eq!(RuleMatch::parse("account-tag:Bad Tag"), None);
        assert_eq!(RuleMatch::parse("all"), None);
    }
}
