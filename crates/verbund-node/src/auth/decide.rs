//! The decisions of the enforcement point, as pure functions of the policy, the caller and
//! what it asks. The handlers call them before they act, and `policy check` explains a
//! decision by calling the very same functions, so the explanation cannot drift from what is
//! enforced. Each answer carries its reason in words (value-free: names of fields, kinds and
//! principals only), which also goes into the audit entry.

use verbund_core::access::controls_access;
use verbund_core::{Record, RecordKind};
use verbund_policy::{Act, Policy, Subject};

use super::{RecordAccess, subject};
use crate::identity::Principal;

/// Why a request is allowed or refused. A refusal caused by one field starts with the field's
/// name (`stage: ...`), as every field error of the API does.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reason(pub String);

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// `Ok` with the reason it is allowed, or `Err` with the reason it is refused.
pub type Decision = Result<Reason, Reason>;

fn allow(text: impl Into<String>) -> Decision {
    Ok(Reason(text.into()))
}

fn refuse(text: impl Into<String>) -> Decision {
    Err(Reason(text.into()))
}

/// May `p` create a record of `kind` with the fields `given`? `assigned`: the new record names
/// the caller's organization in `assigned_org` (the policy's condition). The own organization
/// creates what its roles allow; another organization only adds activities, writing only
/// fields its role lets it write and never a field that decides who sees a record (whether
/// the record it relates to is shared with it is `may_add_activity`).
pub fn may_create(
    policy: &Policy,
    node_org: &str,
    p: &Principal,
    kind: RecordKind,
    given: &[String],
    assigned: bool,
) -> Decision {
    let s = subject(p);
    if p.org == node_org {
        if policy.fields(&s, kind, Act::Create, false).is_empty() {
            return refuse(format!("{p} may not create {kind} records"));
        }
        let writable = policy.fields(&s, kind, Act::Write, assigned);
        if let Some(f) = given.iter().find(|f| !writable.contains(*f)) {
            return refuse(format!("{f}: {p} may not write this field of {kind}"));
        }
        return allow(format!("{p} may create {kind} records"));
    }
    if kind != RecordKind::Activity || policy.fields(&s, kind, Act::Create, false).is_empty() {
        return refuse(format!("{p} may not create {kind} records on this node"));
    }
    let writable = policy.fields(&s, kind, Act::Write, false);
    if let Some(f) = given
        .iter()
        .find(|f| f.as_str() != "related_id" && (!writable.contains(*f) || controls_access(f)))
    {
        return refuse(format!("{f}: {p} may not write this field of {kind}"));
    }
    allow(format!("{p} may add activities to records shared with it"))
}

/// May `p` add an activity to a record it has `access` to?
pub fn may_add_activity(p: &Principal, kind: RecordKind, access: &RecordAccess) -> Decision {
    if access.may_add_activity {
        allow(format!("{p} may add activities to this {kind}"))
    } else {
        refuse(format!("{p} may not add activities to this {kind}"))
    }
}

/// May `p` list records of `kind`, filtering on the fields `filter_fields`? A foreign caller
/// lists only what it reaches (and filters only its projection), so this asks the policy for
/// the own organization only. Filtering on a field one may not read would reveal its values.
pub fn may_list(
    policy: &Policy,
    node_org: &str,
    p: &Principal,
    kind: RecordKind,
    filter_fields: &[&str],
) -> Decision {
    if p.org != node_org {
        return allow(format!("{p} lists what its organization reaches"));
    }
    let s = subject(p);
    let readable = policy.fields(&s, kind, Act::Read, false);
    if readable.is_empty() && policy.fields(&s, kind, Act::Read, true).is_empty() {
        return refuse(format!("{p} may not read {kind} records"));
    }
    let filterable =
        |f: &str| readable.contains(f) || kind == RecordKind::Activity && f == "account_id";
    if let Some(f) = filter_fields.iter().find(|f| !filterable(f)) {
        return refuse(format!("{f}: {p} may not filter on this field of {kind}"));
    }
    allow(format!("{p} may read {kind} records"))
}

/// May `p` delete records of `kind` on this node? Only the owner's organization deletes.
pub fn may_delete(policy: &Policy, node_org: &str, p: &Principal, kind: RecordKind) -> Decision {
    if p.org != node_org {
        return refuse("records are deleted only by their owner's organization");
    }
    if policy
        .fields(&subject(p), kind, Act::Delete, false)
        .is_empty()
    {
        return refuse(format!("no policy line lets {p} delete {kind} records"));
    }
    allow(format!("{p} may delete {kind} records"))
}

/// May `p` read (`field` empty: any field of) a record it has `access` to?
pub fn may_read(p: &Principal, node_org: &str, rec: &Record, access: &RecordAccess) -> Decision {
    field_decision(p, node_org, rec, access, Act::Read, "")
}

/// May `p` write the fields `fields` of a record it has `access` to? The first field it may
/// not write is named.
pub fn may_write(
    p: &Principal,
    node_org: &str,
    rec: &Record,
    access: &RecordAccess,
    fields: &[String],
) -> Decision {
    for f in fields {
        field_decision(p, node_org, rec, access, Act::Write, f)?;
    }
    allow(format!("{p} may write these fields of this {}", rec.kind))
}

/// The decision on one field (or, `field` empty, on at least one field) for reading or
/// writing, with the reason a reader of `policy check` needs.
pub fn field_decision(
    p: &Principal,
    node_org: &str,
    rec: &Record,
    access: &RecordAccess,
    act: Act,
    field: &str,
) -> Decision {
    let kind = rec.kind;
    let foreign = p.org != node_org;
    if foreign && rec.is_deleted() {
        return refuse("the record is deleted");
    }
    if foreign && access.grants.is_empty() {
        return refuse(format!(
            "no share or share rule reaches this {kind} for {}: it does not exist for them",
            p.org
        ));
    }
    let set = if act == Act::Write {
        &access.writable
    } else {
        &access.readable
    };
    let verb = act.as_str();
    let ok = if field.is_empty() {
        !set.is_empty()
    } else {
        set.contains(field)
    };
    let what = if !field.is_empty() {
        format!("{kind}.{field}")
    } else if ok {
        // At least one field, not every field: the lists of fields say which.
        format!("fields of this {kind} (those listed below)")
    } else {
        format!("a field of this {kind}")
    };
    if ok {
        allow(format!("{p} may {verb} {what}"))
    } else if foreign && act == Act::Write && controls_access(field) {
        refuse(format!(
            "{field}: decides who sees the record; only its owner writes it"
        ))
    } else if foreign {
        refuse(format!(
            "{}neither combination of {}'s role and the share profiles lets it {verb} {what}",
            field_prefix(field),
            p.org
        ))
    } else {
        refuse(format!(
            "{}no policy line lets {p} {verb} {what}",
            field_prefix(field)
        ))
    }
}

fn field_prefix(field: &str) -> String {
    if field.is_empty() {
        String::new()
    } else {
        format!("{field}: ")
    }
}

/// May `p` resolve a conflict on `field` of a `kind` record by writing the loser back? That is
/// a write by `p`, so the policy's write right decides.
pub fn may_resolve(policy: &Policy, p: &Principal, kind: RecordKind, field: &str) -> Decision {
    if policy
        .fields(&subject(p), kind, Act::Write, false)
        .contains(field)
    {
        allow(format!("{p} may write {kind}.{field}"))
    } else {
        refuse(format!("{field}: {p} may not write this field of {kind}"))
    }
}

/// Would sharing a `kind` record with `org` under `profile` show anything? A share the policy
/// turns into nothing (the organization's role ∩ the profile is empty) is a mistake to say.
pub fn may_share(policy: &Policy, org: &str, kind: RecordKind, profile: &str) -> Decision {
    let org_subject = Subject::principal(format!("verbund://{org}/node/-"), org.to_string());
    let role = policy.fields(&org_subject, kind, Act::Read, true);
    let shown = policy.fields(&Subject::profile(profile), kind, Act::Read, false);
    if role.intersection(&shown).next().is_none() {
        return refuse(format!(
            "the policy lets {org} read no field of a {kind} under profile {profile}; the share would show nothing"
        ));
    }
    allow(format!("shared with {org} under profile {profile}"))
}

/// The decision `policy check` explains for `act` (on `field`, or on any field when empty):
/// the same function the handler of that action calls.
pub fn decide(
    policy: &Policy,
    node_org: &str,
    p: &Principal,
    rec: &Record,
    access: &RecordAccess,
    act: Act,
    field: &str,
) -> Decision {
    if p.org != node_org && (rec.is_deleted() || access.grants.is_empty()) {
        // The record does not exist for them, whatever they ask.
        return field_decision(p, node_org, rec, access, Act::Read, "");
    }
    match act {
        Act::Read | Act::Write => field_decision(p, node_org, rec, access, act, field),
        Act::Create => may_add_activity(p, rec.kind, access),
        Act::Delete | Act::Administer => may_delete(policy, node_org, p, rec.kind),
    }
}

/// May `p` read the consolidated customer view? Only the own organization, with a role that
/// reads accounts (the view shows what the node's accounts show, across subsidiaries).
pub fn may_view_consolidation(policy: &Policy, node_org: &str, p: &Principal) -> Decision {
    if p.org != node_org {
        return refuse(format!(
            "{p} may not use the consolidated view: it serves only {node_org}'s own roles"
        ));
    }
    let s = subject(p);
    if policy
        .fields(&s, RecordKind::Account, Act::Read, false)
        .is_empty()
    {
        return refuse(format!("no policy line lets {p} read account records"));
    }
    allow(format!("{p} may read the consolidated view"))
}

/// May `p` link or unlink records as a data steward? The view's readers who may also write
/// records of `kind`.
pub fn may_steward(policy: &Policy, node_org: &str, p: &Principal, kind: RecordKind) -> Decision {
    may_view_consolidation(policy, node_org, p)?;
    if policy
        .fields(&subject(p), kind, Act::Write, false)
        .is_empty()
    {
        return refuse(format!(
            "{p} may not link or unlink {kind} records: no policy line lets it write them"
        ));
    }
    allow(format!("{p} may link and unlink {kind} records"))
}
