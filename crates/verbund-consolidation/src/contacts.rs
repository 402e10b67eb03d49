//! The contact matcher: people across subsidiaries, on e-mail, phone, name and the
//! employer's cluster (from the account engine).
//!
//! Evidence in points (threshold 8): an equal personal e-mail address +9; family name equal
//! +4 (similar +2, different −6); first name equal after nicknames +3 (an initial or a typo
//! +1, different −5); the same employer cluster +3 (another employer −1); an equal phone +3.
//! Colleagues — same employer cluster, different first names or different work addresses —
//! are never one person, whatever the score.

use strsim::jaro_winkler;

use crate::constraints::Conflict;
use crate::engine::Matcher;
use crate::keys::{KeyKind, key};
use crate::normalize::{normalize_email, normalize_person, normalize_phone};
use crate::score::{Evidence, Rarity, Tally};

/// A contact as a subsidiary holds it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ContactInput {
    pub subsidiary: String,
    pub first_name: String,
    pub last_name: String,
    pub email: Option<String>,
    pub phone: Option<String>,
    /// ISO 3166-1 alpha-2 for national phone numbers.
    pub country: Option<String>,
    /// Record key of the account the contact works for (at the same subsidiary).
    pub employer: Option<String>,
}

/// A contact with its employer resolved to the employer's account cluster (what makes two
/// subsidiaries' records of one company "the same employer").
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ContactRecord {
    pub contact: ContactInput,
    /// Cluster key of the employer account; the employer's record key when it is unknown.
    pub employer_cluster: Option<String>,
}

/// What the contact matcher compares.
#[derive(Clone, Debug)]
pub struct ContactFeatures {
    pub first: Option<Box<str>>,
    pub last: Option<Box<str>>,
    /// A personal address (not a shared `info@` mailbox).
    pub email: Option<u64>,
    /// True when that address is at a company domain (not free mail).
    pub email_at_company: bool,
    pub phone: Option<u64>,
    pub employer: Option<u64>,
}

/// Matches contacts.
#[derive(Clone, Debug, Default)]
pub struct ContactMatcher;

const THRESHOLD: f32 = 8.0;

/// Same first name, an initial of it, or a typo of it.
fn first_names_compatible(a: &str, b: &str) -> (bool, bool) {
    if a == b {
        return (true, true);
    }
    let initial = (a.len() == 1 && b.starts_with(a)) || (b.len() == 1 && a.starts_with(b));
    (initial || jaro_winkler(a, b) >= 0.9, false)
}

impl Matcher for ContactMatcher {
    type Input = ContactRecord;
    type Features = ContactFeatures;

    fn features(&self, input: &ContactRecord) -> ContactFeatures {
        let c = &input.contact;
        let name = normalize_person(&c.first_name, &c.last_name);
        let email = c
            .email
            .as_deref()
            .and_then(normalize_email)
            .filter(|e| !e.role);
        ContactFeatures {
            first: name.first.map(String::into_boxed_str),
            last: name.last.map(String::into_boxed_str),
            email_at_company: email.as_ref().is_some_and(|e| !e.free_mail),
            email: email.map(|e| key(KeyKind::Email, &e.address)),
            phone: c
                .phone
                .as_deref()
                .and_then(|p| normalize_phone(p, c.country.as_deref()))
                .map(|p| key(KeyKind::Phone, &p)),
            employer: input
                .employer_cluster
                .as_deref()
                .map(|e| key(KeyKind::Employer, e)),
        }
    }

    fn block_keys(&self, f: &ContactFeatures, out: &mut Vec<u64>) {
        out.extend(f.email);
        out.extend(f.phone);
        if let Some(last) = f.last.as_deref() {
            let initial: String = f
                .first
                .as_deref()
                .and_then(|s| s.chars().next())
                .into_iter()
                .collect();
            out.push(key(KeyKind::LastFirstInitial, &format!("{last} {initial}")));
            if let Some(e) = f.employer {
                out.push(key(KeyKind::EmployerLast, &format!("{e:x} {last}")));
            }
        }
        if let (Some(first), Some(e)) = (f.first.as_deref(), f.employer) {
            out.push(key(KeyKind::EmployerFirst, &format!("{e:x} {first}")));
        }
    }

    fn score(
        &self,
        a: &ContactFeatures,
        b: &ContactFeatures,
        _rarity: &dyn Fn(u64) -> Rarity,
        explain: Option<&mut Vec<Evidence>>,
    ) -> f32 {
        let mut t = Tally::new(explain);
        if let (Some(x), Some(y)) = (a.email, b.email)
            && x == y
        {
            t.add("email", 9.0, || "equal personal address".into());
        }
        if let (Some(x), Some(y)) = (a.phone, b.phone)
            && x == y
        {
            t.add("phone", 3.0, || "equal (E.164)".into());
        }
        if let (Some(x), Some(y)) = (a.last.as_deref(), b.last.as_deref()) {
            if x == y {
                t.add("last_name", 4.0, || "equal".into());
            } else {
                let jw = jaro_winkler(x, y);
                if jw >= 0.92 {
                    t.add("last_name", 2.0, || format!("similar ({jw:.2})"));
                } else {
                    t.add("last_name", -6.0, || format!("different ({jw:.2})"));
                }
            }
        }
        if let (Some(x), Some(y)) = (a.first.as_deref(), b.first.as_deref()) {
            match first_names_compatible(x, y) {
                (_, true) => t.add("first_name", 3.0, || "equal (nicknames mapped)".into()),
                (true, false) => t.add("first_name", 1.0, || "initial or typo".into()),
                _ => t.add("first_name", -5.0, || "different".into()),
            }
        }
        if let (Some(x), Some(y)) = (a.employer, b.employer) {
            if x == y {
                t.add("employer", 3.0, || "same employer cluster".into());
            } else {
                t.add("employer", -1.0, || "different employers".into());
            }
        }
        t.score
    }

    fn conflict(&self, a: &ContactFeatures, b: &ContactFeatures) -> Option<Conflict> {
        let same_employer = matches!((a.employer, b.employer), (Some(x), Some(y)) if x == y);
        if !same_employer {
            return None;
        }
        if let (Some(x), Some(y)) = (a.first.as_deref(), b.first.as_deref())
            && !first_names_compatible(x, y).0
        {
            return Some(Conflict::ColleaguesWithDifferentFirstNames);
        }
        if let (Some(x), Some(y)) = (a.email, b.email)
            && x != y
            && a.email_at_company
            && b.email_at_company
        {
            return Some(Conflict::ColleaguesWithDifferentEmails);
        }
        None
    }

    fn threshold(&self) -> f32 {
        THRESHOLD
    }
}
