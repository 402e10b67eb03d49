//! The class-level access policy of a node: a casbin model and a policy file (see `policies/`),
//! checked line by line when loaded, evaluated by casbin, and swapped atomically on reload.
//!
//! The policy says which role may do what on which record type and which fields, under which
//! attribute condition. Roles come from `g` lines (a principal URI → role) and `g2` lines (an
//! organization → role; `@own` is this node's own organization). Share profiles are policy
//! roles named `profile:<name>`: a share grants a partner at most what both its role and the
//! share's profile allow. Per-record shares are not casbin lines; they live in the store.
//!
//! Casbin is asked with `(subject, org, kind, action, field, assigned_org)`. Field sets are
//! cached per policy generation; a reload builds a new `Policy` (and a new cache) and swaps it
//! in, so no decision ever mixes two generations.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use casbin::{CoreApi, DefaultModel, Enforcer, StringAdapter};
use verbund_core::RecordKind;
use verbund_core::schema;

/// The object of node administration (partners, shares, audit, policy).
pub const NODE_OBJECT: &str = "node";
/// The role every principal of the node's own organization has (via an implicit `g2` line).
pub const OWN_ORG_ROLE: &str = "@own";
/// Prefix of share-profile roles.
pub const PROFILE_PREFIX: &str = "profile:";
/// The org value used when evaluating a share profile: never a valid organization id, so
/// `g2` lines and the `assigned_to_caller` condition never apply to profiles.
const PROFILE_ORG: &str = "@profile";
/// Conditions a `p` line may carry.
pub const CONDITIONS: &[&str] = &["always", "assigned_to_caller"];

/// What a principal wants to do, as the policy names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Act {
    Read,
    Create,
    Write,
    Delete,
    Administer,
}

impl Act {
    pub const ALL: [Act; 5] = [
        Act::Read,
        Act::Create,
        Act::Write,
        Act::Delete,
        Act::Administer,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Act::Read => "read",
            Act::Create => "create",
            Act::Write => "write",
            Act::Delete => "delete",
            Act::Administer => "administer",
        }
    }

    pub fn parse(s: &str) -> Option<Act> {
        Act::ALL.into_iter().find(|a| a.as_str() == s)
    }

    /// Whether the action is decided per field (read, write) or per record (the others).
    pub fn is_per_field(self) -> bool {
        matches!(self, Act::Read | Act::Write)
    }
}

/// Who asks: a principal (`verbund://org/kind/name` and its organization) or a share profile.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Subject {
    pub uri: String,
    pub org: String,
}

impl Subject {
    pub fn principal(uri: impl Into<String>, org: impl Into<String>) -> Subject {
        Subject {
            uri: uri.into(),
            org: org.into(),
        }
    }
    pub fn profile(name: &str) -> Subject {
        Subject {
            uri: format!("{PROFILE_PREFIX}{name}"),
            org: PROFILE_ORG.to_string(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error("cannot read {path}: {message}")]
    Io { path: String, message: String },
    #[error("{path}:{line}: {message}")]
    Line {
        path: String,
        line: usize,
        message: String,
    },
    #[error("policy model {path}: {message}")]
    Model { path: String, message: String },
}

/// One line of the policy file, kept for explanations.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PolicyLine {
    pub line_no: usize,
    /// `p`, `g` or `g2`.
    pub ptype: String,
    pub values: Vec<String>,
}

impl PolicyLine {
    pub fn render(&self) -> String {
        format!("{}, {}", self.ptype, self.values.join(", "))
    }
}

/// Why a decision came out as it did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Explanation {
    pub allowed: bool,
    /// The `p` lines that allowed it (`file:line: text`); empty when denied.
    pub rules: Vec<String>,
    /// The `g`/`g2` lines that give the subject its roles (`file:line: text`).
    pub roles: Vec<String>,
}

type CacheKey = (Subject, RecordKind, Act, bool);

/// One loaded generation of the policy.
pub struct Policy {
    enforcer: Enforcer,
    lines: Vec<PolicyLine>,
    profiles: BTreeSet<String>,
    /// The policy file, for messages.
    path: String,
    own_org: String,
    /// Of the model and policy texts: what a partner's projection was computed under.
    fingerprint: String,
    fields_cache: Mutex<HashMap<CacheKey, Arc<BTreeSet<String>>>>,
}

/// Cache entries per generation before it is emptied (one entry per principal, kind, action).
const CACHE_LIMIT: usize = 50_000;

/// The name of an organization in casbin's role graph (see `from_texts`).
fn org_node(org: &str) -> String {
    if org == OWN_ORG_ROLE || org == PROFILE_ORG {
        org.to_string()
    } else {
        format!("org:{org}")
    }
}

fn is_role_name(s: &str) -> bool {
    let name = s.strip_prefix(PROFILE_PREFIX).unwrap_or(s);
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-_.".contains(&b))
}

/// `verbund://<org>/(user|node)/<name>`, as certificates carry it.
fn is_principal_uri(s: &str) -> bool {
    let Some(rest) = s.strip_prefix("verbund://") else {
        return false;
    };
    let parts: Vec<&str> = rest.split('/').collect();
    matches!(parts.as_slice(), [org, kind, name]
        if schema::is_valid_org_id(org)
            && (*kind == "user" || *kind == "node")
            && !name.is_empty()
            && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b)))
}

/// Checks one `p` line: `p, role, kind|node, action, field|*, condition`.
fn check_p(v: &[String]) -> Result<(), String> {
    let [role, object, act, field, cond] = v else {
        return Err(format!(
            "a p line has 5 values (role, kind, action, field, condition), found {}",
            v.len()
        ));
    };
    if !is_role_name(role) {
        return Err(format!("{role:?} is not a role name (a-z 0-9 - _ .)"));
    }
    let act = Act::parse(act).ok_or_else(|| {
        format!("unknown action {act:?} (read, create, write, delete, administer)")
    })?;
    if object == NODE_OBJECT {
        if act != Act::Administer {
            return Err(format!("the only action on {NODE_OBJECT} is administer"));
        }
    } else {
        let kind = RecordKind::parse(object).ok_or_else(|| {
            format!("unknown record kind {object:?} (account, contact, lead, opportunity, service_case, activity, or node)")
        })?;
        if act == Act::Administer {
            return Err(format!(
                "administer applies to {NODE_OBJECT}, not to {kind}"
            ));
        }
        if field != "*" && schema::field(kind, field).is_none() {
            return Err(format!("{kind} has no field {field:?}"));
        }
        if cond == "assigned_to_caller" && kind != RecordKind::ServiceCase {
            return Err("assigned_to_caller applies to service_case only".into());
        }
        if cond == "assigned_to_caller" && role.starts_with(PROFILE_PREFIX) {
            return Err("a share profile has no organization: use always".into());
        }
    }
    if !act.is_per_field() && field != "*" {
        return Err(format!(
            "{} is decided per record: its field must be *",
            act.as_str()
        ));
    }
    if !CONDITIONS.contains(&cond.as_str()) {
        return Err(format!(
            "unknown condition {cond:?} (always, assigned_to_caller)"
        ));
    }
    Ok(())
}

/// Parses and checks the policy file; every problem names its line.
pub fn parse_policy(path: &str, text: &str) -> Result<Vec<PolicyLine>, PolicyError> {
    let mut lines = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line_no = i + 1;
        let err = |message: String| PolicyError::Line {
            path: path.to_string(),
            line: line_no,
            message,
        };
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if line.contains('"') {
            return Err(err("quotes are not allowed in policy lines".into()));
        }
        let mut values: Vec<String> = line.split(',').map(|s| s.trim().to_string()).collect();
        let ptype = values.remove(0);
        if values.iter().any(String::is_empty) {
            return Err(err("empty value".into()));
        }
        match ptype.as_str() {
            "p" => check_p(&values).map_err(err)?,
            "g" => match values.as_slice() {
                [uri, role] => {
                    if !is_principal_uri(uri) {
                        return Err(err(format!(
                            "{uri:?} is not a principal (verbund://<org>/user|node/<name>)"
                        )));
                    }
                    if !is_role_name(role) || role.starts_with(PROFILE_PREFIX) {
                        return Err(err(format!("{role:?} is not a role a principal can have")));
                    }
                }
                _ => return Err(err("a g line has 2 values: principal, role".into())),
            },
            "g2" => match values.as_slice() {
                [org, role] => {
                    if org != OWN_ORG_ROLE && !schema::is_valid_org_id(org) {
                        return Err(err(format!(
                            "{org:?} is not an organization id or {OWN_ORG_ROLE}"
                        )));
                    }
                    if !is_role_name(role) || role.starts_with(PROFILE_PREFIX) {
                        return Err(err(format!(
                            "{role:?} is not a role an organization can have"
                        )));
                    }
                }
                _ => return Err(err("a g2 line has 2 values: organization, role".into())),
            },
            other => {
                return Err(err(format!(
                    "unknown line type {other:?} (p, g, g2 or a # comment)"
                )));
            }
        }
        lines.push(PolicyLine {
            line_no,
            ptype,
            values,
        });
    }
    // A role given to someone must exist: a typo would otherwise grant nothing, silently.
    let defined: std::collections::BTreeSet<&str> = lines
        .iter()
        .filter(|l| l.ptype == "p")
        .map(|l| l.values[0].as_str())
        .collect();
    if let Some(l) = lines
        .iter()
        .find(|l| (l.ptype == "g" || l.ptype == "g2") && !defined.contains(l.values[1].as_str()))
    {
        return Err(PolicyError::Line {
            path: path.to_string(),
            line: l.line_no,
            message: format!(
                "role {:?} is not defined by any p line (a typo?)",
                l.values[1]
            ),
        });
    }
    Ok(lines)
}

impl Policy {
    /// Builds a policy from the model text and the policy text. `own_org` is the node's
    /// organization: its principals get the `@own` role.
    pub async fn from_texts(
        model_path: &str,
        model: &str,
        policy_path: &str,
        policy: &str,
        own_org: &str,
    ) -> Result<Policy, PolicyError> {
        let lines = parse_policy(policy_path, policy)?;
        let model_err = |message: String| PolicyError::Model {
            path: model_path.to_string(),
            message,
        };
        let m = DefaultModel::from_str(model)
            .await
            .map_err(|e| model_err(e.to_string()))?;
        // Organizations go to casbin as `org:<id>`: casbin's role manager treats a name as
        // linked to itself, so an organization whose id equals a role name (`sales`, `admin`)
        // would otherwise hold that role without any g2 line.
        let mut csv: String = lines
            .iter()
            .map(|l| {
                if l.ptype == "g2" {
                    format!("g2, {}, {}\n", org_node(&l.values[0]), l.values[1])
                } else {
                    l.render() + "\n"
                }
            })
            .collect();
        csv.push_str(&format!("g2, {}, {OWN_ORG_ROLE}\n", org_node(own_org)));
        let enforcer = Enforcer::new(m, StringAdapter::new(csv))
            .await
            .map_err(|e| model_err(e.to_string()))?;
        let profiles = lines
            .iter()
            .filter(|l| l.ptype == "p")
            .filter_map(|l| l.values[0].strip_prefix(PROFILE_PREFIX))
            .map(str::to_string)
            .collect();
        let policy = Policy {
            enforcer,
            lines,
            profiles,
            path: policy_path.to_string(),
            own_org: own_org.to_string(),
            fingerprint: verbund_core::sync::text_fingerprint(&[model, policy, own_org]),
            fields_cache: Mutex::new(HashMap::new()),
        };
        // A model that cannot evaluate our request shape is refused now, not at the first call.
        policy
            .enforcer
            .enforce(policy.request(
                &Subject::principal("verbund://probe/user/probe", "probe"),
                "account",
                Act::Read,
                "name",
                false,
            ))
            .map_err(|e| {
                model_err(format!(
                    "cannot evaluate (subject, org, kind, action, field, assigned_org): {e}"
                ))
            })?;
        Ok(policy)
    }

    /// Loads the model and policy files.
    pub async fn load(model: &Path, policy: &Path, own_org: &str) -> Result<Policy, PolicyError> {
        let read = |p: &Path| {
            std::fs::read_to_string(p).map_err(|e| PolicyError::Io {
                path: p.display().to_string(),
                message: e.to_string(),
            })
        };
        let (model_text, policy_text) = (read(model)?, read(policy)?);
        Policy::from_texts(
            &model.display().to_string(),
            &model_text,
            &policy.display().to_string(),
            &policy_text,
            own_org,
        )
        .await
    }

    fn request(
        &self,
        subject: &Subject,
        object: &str,
        act: Act,
        field: &str,
        assigned_to_caller: bool,
    ) -> (String, String, String, String, String, String) {
        // Profiles have no organization, so the condition never holds for them.
        let org = org_node(&subject.org);
        let assigned_org = if assigned_to_caller && subject.org != PROFILE_ORG {
            org.clone()
        } else {
            String::new()
        };
        (
            subject.uri.clone(),
            org,
            object.to_string(),
            act.as_str().to_string(),
            field.to_string(),
            assigned_org,
        )
    }

    /// One decision. An evaluation error denies (fail closed) and is logged.
    pub fn allows(
        &self,
        subject: &Subject,
        object: &str,
        act: Act,
        field: &str,
        assigned_to_caller: bool,
    ) -> bool {
        match self
            .enforcer
            .enforce(self.request(subject, object, act, field, assigned_to_caller))
        {
            Ok(allowed) => allowed,
            Err(e) => {
                tracing::error!(error = %e, subject = %subject.uri, object, action = act.as_str(), field, "policy evaluation failed; denying");
                false
            }
        }
    }

    /// The fields of `kind` the subject may read or write (per-field actions), or `{"*"}` /
    /// nothing for per-record actions.
    pub fn fields(
        &self,
        subject: &Subject,
        kind: RecordKind,
        act: Act,
        assigned_to_caller: bool,
    ) -> Arc<BTreeSet<String>> {
        let key = (subject.clone(), kind, act, assigned_to_caller);
        if let Some(hit) = self.cache().get(&key) {
            return hit.clone();
        }
        let set: BTreeSet<String> = if act.is_per_field() {
            schema::fields(kind)
                .iter()
                .filter(|f| self.allows(subject, kind.as_str(), act, f.name, assigned_to_caller))
                .map(|f| f.name.to_string())
                .collect()
        } else if self.allows(subject, kind.as_str(), act, "*", assigned_to_caller) {
            ["*".to_string()].into()
        } else {
            BTreeSet::new()
        };
        let set = Arc::new(set);
        let mut cache = self.cache();
        if cache.len() >= CACHE_LIMIT {
            cache.clear();
        }
        cache.insert(key, set.clone());
        set
    }

    fn cache(&self) -> std::sync::MutexGuard<'_, HashMap<CacheKey, Arc<BTreeSet<String>>>> {
        self.fields_cache
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Whether the subject may administer the node.
    pub fn may_administer(&self, subject: &Subject) -> bool {
        self.allows(subject, NODE_OBJECT, Act::Administer, "*", false)
    }

    /// Changes whenever the model or policy text does (a reload may change projections).
    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }

    pub fn has_profile(&self, name: &str) -> bool {
        self.profiles.contains(name)
    }

    pub fn profiles(&self) -> impl Iterator<Item = &str> {
        self.profiles.iter().map(String::as_str)
    }

    /// The decision and the policy lines behind it.
    pub fn explain(
        &self,
        subject: &Subject,
        object: &str,
        act: Act,
        field: &str,
        assigned_to_caller: bool,
    ) -> Explanation {
        let allowed = self.allows(subject, object, act, field, assigned_to_caller);
        let rules = if allowed {
            self.matching_lines(subject, object, act, field, assigned_to_caller)
                .map(|l| format!("{}:{}: {}", self.path, l.line_no, l.render()))
                .collect()
        } else {
            Vec::new()
        };
        Explanation {
            allowed,
            rules,
            roles: self.role_lines(subject),
        }
    }

    /// The roles of a subject: itself, its `g` roles and its organization's `g2` roles,
    /// transitively (the model's `g`/`g2` with the implicit `@own` line).
    fn roles_of(&self, subject: &Subject) -> BTreeSet<String> {
        let mut roles: BTreeSet<String> = [subject.uri.clone()].into();
        let mut org_roles: BTreeSet<String> = [org_node(&subject.org)].into();
        if subject.org == self.own_org {
            org_roles.insert(OWN_ORG_ROLE.to_string());
        }
        loop {
            let before = roles.len() + org_roles.len();
            for l in &self.lines {
                if l.ptype == "g" && roles.contains(&l.values[0]) {
                    roles.insert(l.values[1].clone());
                }
                if l.ptype == "g2" && org_roles.contains(&org_node(&l.values[0])) {
                    org_roles.insert(l.values[1].clone());
                }
            }
            if roles.len() + org_roles.len() == before {
                break;
            }
        }
        roles.extend(org_roles);
        roles
    }

    /// The `p` lines that match the request, read directly from the file (a property test
    /// holds this reading equal to casbin's decision).
    pub fn matching_lines<'a>(
        &'a self,
        subject: &Subject,
        object: &str,
        act: Act,
        field: &str,
        assigned_to_caller: bool,
    ) -> impl Iterator<Item = &'a PolicyLine> + 'a {
        let roles = self.roles_of(subject);
        // Profiles have no organization, so the condition never holds for them.
        let assigned = assigned_to_caller && subject.org != PROFILE_ORG;
        let (object, field) = (object.to_string(), field.to_string());
        self.lines.iter().filter(move |l| {
            let v = &l.values;
            l.ptype == "p"
                && roles.contains(&v[0])
                && v[1] == object
                && v[2] == act.as_str()
                && (v[3] == "*" || v[3] == field)
                && (v[4] == "always" || (v[4] == "assigned_to_caller" && assigned))
        })
    }

    /// The `g`/`g2` lines (transitively) that give the subject its roles.
    fn role_lines(&self, subject: &Subject) -> Vec<String> {
        let mut out = Vec::new();
        let mut frontier: Vec<(&str, String)> = vec![("g", subject.uri.clone())];
        if subject.org == self.own_org {
            out.push(format!("(implicit) g2, {}, {OWN_ORG_ROLE}", self.own_org));
            frontier.push(("g2", OWN_ORG_ROLE.to_string()));
        }
        frontier.push(("g2", org_node(&subject.org)));
        let mut seen = BTreeSet::new();
        while let Some((ptype, name)) = frontier.pop() {
            if !seen.insert((ptype, name.clone())) {
                continue;
            }
            let key = |v: &str| {
                if ptype == "g2" {
                    org_node(v)
                } else {
                    v.to_string()
                }
            };
            for l in self
                .lines
                .iter()
                .filter(|l| l.ptype == ptype && key(&l.values[0]) == name)
            {
                out.push(format!("{}:{}: {}", self.path, l.line_no, l.render()));
                frontier.push((ptype, l.values[1].clone()));
            }
        }
        out
    }
}

/// The policy in force, and where it comes from; `reload` swaps in a new generation only if
/// it loads completely.
pub struct LivePolicy {
    current: RwLock<Arc<Policy>>,
    model: PathBuf,
    policy: PathBuf,
    own_org: String,
    /// 1 for the policy loaded at start, +1 per successful reload (metrics).
    generation: AtomicU64,
    /// Reloads refused since start (metrics).
    reload_failures: AtomicU64,
}

impl LivePolicy {
    pub async fn open(
        model: PathBuf,
        policy: PathBuf,
        own_org: &str,
    ) -> Result<LivePolicy, PolicyError> {
        let loaded = Policy::load(&model, &policy, own_org).await?;
        Ok(LivePolicy {
            current: RwLock::new(Arc::new(loaded)),
            model,
            policy,
            own_org: own_org.to_string(),
            generation: AtomicU64::new(1),
            reload_failures: AtomicU64::new(0),
        })
    }

    /// The policy in force. Hold the `Arc` for one request so it sees one generation.
    pub fn current(&self) -> Arc<Policy> {
        self.current
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    /// Re-reads the files. On any error the policy in force stays, and the error says why.
    pub async fn reload(&self) -> Result<(), PolicyError> {
        let loaded = match Policy::load(&self.model, &self.policy, &self.own_org).await {
            Ok(loaded) => loaded,
            Err(e) => {
                self.reload_failures.fetch_add(1, Ordering::Relaxed);
                return Err(e);
            }
        };
        *self
            .current
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = Arc::new(loaded);
        self.generation.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// The generation in force: 1 at start, one more per successful reload.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Relaxed)
    }

    /// Reloads refused since start (the previous generation stayed in force).
    pub fn reload_failures(&self) -> u64 {
        self.reload_failures.load(Ordering::Relaxed)
    }

    pub fn paths(&self) -> (&Path, &Path) {
        (&self.model, &self.policy)
    }
}

#[cfg(test)]
mod tests;
