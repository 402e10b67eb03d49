//! The account matcher: companies across subsidiaries.
//!
//! Evidence in points (threshold 8): an equal valid VAT ID is decisive (+15); the name says
//! most of the rest (exact +6 … clearly different −6, comparing tokens with typo tolerance,
//! weighted by rarity, so a shared brand weighs more than "Logistik"); a shared company domain and an
//! equal phone number add +3 each but cannot match alone — group companies share both; city
//! and legal form add a little. Constraints (see [`AccountMatcher::conflict`]) keep apart what
//! no score may join.

use crate::constraints::Conflict;
use crate::engine::Matcher;
use crate::keys::{KeyKind, key};
use crate::normalize::{
    LegalForm, domain_of_website, fold, normalize_company, normalize_email, normalize_phone,
    normalize_vat,
};
use crate::score::{Evidence, Rarity, Tally, Token, compare_names, tokens_of};

/// An account as a subsidiary holds it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AccountInput {
    pub subsidiary: String,
    pub name: String,
    pub website: Option<String>,
    /// The company's general address (its domain identifies the company unless free mail).
    pub email: Option<String>,
    pub vat_id: Option<String>,
    pub phone: Option<String>,
    pub city: Option<String>,
    /// ISO 3166-1 alpha-2; the default for national phone numbers and VAT IDs without prefix.
    pub country: Option<String>,
}

/// What the account matcher compares.
#[derive(Clone, Debug)]
pub struct AccountFeatures {
    /// Folded name without legal form and stop words.
    pub name: Box<str>,
    pub tokens: Box<[Token]>,
    pub legal_form: Option<LegalForm>,
    pub vat: Option<u64>,
    /// Website domain and e-mail domain (free mail excluded), at most two, sorted.
    pub domains: Box<[u64]>,
    pub phone: Option<u64>,
    pub city: Option<u64>,
}

/// Matches company accounts.
#[derive(Clone, Debug, Default)]
pub struct AccountMatcher;

const THRESHOLD: f32 = 8.0;

fn compact(name: &str) -> String {
    name.chars().filter(|c| *c != ' ').collect()
}

impl AccountMatcher {
    /// Name evidence: equal (+6; +8, a match on its own, when a token is very rare), equal but
    /// for typos (+5), one name the other with a word left out (+2: "Moorvera" for "Moorvera
    /// Druck"), otherwise
    /// each has words the other lacks: −3 when most weight agrees (group companies "Nordwind
    /// Logistik" and "Nordwind Software"), −6 when little does.
    fn name_points(
        &self,
        a: &AccountFeatures,
        b: &AccountFeatures,
        rarity: &dyn Fn(u64) -> Rarity,
        t: &mut Tally,
    ) {
        if a.name.is_empty() || b.name.is_empty() {
            return;
        }
        if compact(&a.name) == compact(&b.name) {
            let very_rare = a.tokens.iter().any(|k| rarity(k.key) == Rarity::VeryRare);
            if very_rare {
                t.add("name", 8.0, || "equal, with a very rare token".into());
            } else {
                t.add("name", 6.0, || "equal".into());
            }
            return;
        }
        let c = compare_names(&a.name, &a.tokens, &b.name, &b.tokens, &|k| {
            rarity(k).token_weight()
        });
        let (points, what) = match (c.a_covered, c.b_covered) {
            (true, true) => (5.0, "equal but for typos or word order"),
            (true, false) | (false, true) => (2.0, "one name is the other with a word left out"),
            _ if c.dice >= 0.6 => (-3.0, "different words beside common ones"),
            _ => (-6.0, "different"),
        };
        t.add("name", points, || {
            format!("{what} (weighted token agreement {:.2})", c.dice)
        });
    }
}

impl Matcher for AccountMatcher {
    type Input = AccountInput;
    type Features = AccountFeatures;

    fn features(&self, input: &AccountInput) -> AccountFeatures {
        let country = input.country.as_deref();
        let company = normalize_company(&input.name);
        let name = company.core();
        let tokens = tokens_of(&name, KeyKind::NameToken);
        let mut domains: Vec<u64> = Vec::with_capacity(2);
        if let Some(d) = input.website.as_deref().and_then(domain_of_website) {
            domains.push(key(KeyKind::Domain, &d));
        }
        if let Some(e) = input.email.as_deref().and_then(normalize_email)
            && !e.free_mail
        {
            domains.push(key(KeyKind::Domain, &e.domain));
        }
        domains.sort_unstable();
        domains.dedup();
        AccountFeatures {
            legal_form: company.legal_form,
            vat: input
                .vat_id
                .as_deref()
                .and_then(|v| normalize_vat(v, country))
                .map(|v| key(KeyKind::Vat, &v.id)),
            domains: domains.into_boxed_slice(),
            phone: input
                .phone
                .as_deref()
                .and_then(|p| normalize_phone(p, country))
                .map(|p| key(KeyKind::Phone, &p)),
            city: input
                .city
                .as_deref()
                .map(fold)
                .filter(|c| !c.is_empty())
                .map(|c| key(KeyKind::City, &c)),
            tokens,
            name: name.into_boxed_str(),
        }
    }

    fn block_keys(&self, f: &AccountFeatures, out: &mut Vec<u64>) {
        out.extend(f.vat);
        out.extend(f.domains.iter().copied());
        out.extend(f.phone);
        out.extend(f.tokens.iter().map(|t| t.key));
        let c = compact(&f.name);
        if !c.is_empty() {
            out.push(key(KeyKind::CompactName, &c));
        }
        // Two typo-tolerant keys: the start, and the two ends, of the compact name.
        let chars: Vec<char> = c.chars().collect();
        if chars.len() >= 7 {
            let prefix: String = chars[..5].iter().collect();
            out.push(key(KeyKind::NamePrefix, &prefix));
            let ends: String = chars[..3].iter().chain(&chars[chars.len() - 3..]).collect();
            out.push(key(KeyKind::NameEnds, &ends));
        }
    }

    fn score(
        &self,
        a: &AccountFeatures,
        b: &AccountFeatures,
        rarity: &dyn Fn(u64) -> Rarity,
        explain: Option<&mut Vec<Evidence>>,
    ) -> f32 {
        let mut t = Tally::new(explain);
        if let (Some(x), Some(y)) = (a.vat, b.vat)
            && x == y
        {
            t.add("vat_id", 15.0, || "equal".into());
        }
        self.name_points(a, b, rarity, &mut t);
        if a.domains.iter().any(|d| b.domains.contains(d)) {
            t.add("domain", 3.0, || "shared company domain".into());
        }
        if let (Some(x), Some(y)) = (a.phone, b.phone)
            && x == y
        {
            t.add("phone", 3.0, || "equal (E.164)".into());
        }
        if let (Some(x), Some(y)) = (a.city, b.city) {
            if x == y {
                t.add("city", 2.0, || "equal".into());
            } else {
                t.add("city", -2.0, || "different".into());
            }
        }
        if let (Some(x), Some(y)) = (a.legal_form, b.legal_form)
            && x == y
        {
            t.add("legal_form", 1.0, || format!("both {}", x.as_str()));
        }
        t.score
    }

    /// Two different valid VAT IDs are two companies. Different legal forms of one name (a
    /// GmbH & Co. KG and its own GmbH) are two companies unless an equal VAT ID says it is one
    /// company that changed its form: domain and phone do not count, because exactly these
    /// companies share them.
    fn conflict(&self, a: &AccountFeatures, b: &AccountFeatures) -> Option<Conflict> {
        let same_vat = match (a.vat, b.vat) {
            (Some(x), Some(y)) if x != y => return Some(Conflict::DifferentVatIds),
            (Some(_), Some(_)) => true,
            _ => false,
        };
        match (a.legal_form, b.legal_form) {
            (Some(x), Some(y)) if x != y && !same_vat => Some(Conflict::DifferentLegalForms),
            _ => None,
        }
    }

    fn threshold(&self) -> f32 {
        THRESHOLD
    }
}
