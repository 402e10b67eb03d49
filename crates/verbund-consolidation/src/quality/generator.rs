//! The seeded generator of the labelled data set: companies and their people, held by several
//! subsidiaries, each record a noisy copy, with the hard negatives of a company group.
//!
//! A "family" is generated at a time: a lone company; a group of two to four companies
//! sharing brand, domain, often city and switchboard (different industries, own VAT IDs); or a
//! GmbH & Co. KG next to its own GmbH — same name, domain, phone and city, only the VAT ID and
//! the legal form tell them apart. Each company appears at one to five subsidiaries; each copy
//! may respell the legal form or drop it, spell umlauts three ways, change case, carry a typo,
//! drop the industry word, and miss any field. People: one to three per company, colleagues
//! sometimes sharing a family name, nicknames, personal or free-mail addresses.

use super::rng::Rng;
use super::vocabulary::{COUNTRIES, Country, FIRST_NAMES, FREE_MAIL, SURNAMES, SYLLABLES};
use crate::accounts::AccountInput;
use crate::contacts::ContactInput;
use crate::normalize::{LegalForm, normalize_vat};

/// Size and seed of a data set.
#[derive(Clone, Copy, Debug)]
pub struct GeneratorParams {
    /// Account records to generate (the last family may add a few more).
    pub accounts: usize,
    pub subsidiaries: usize,
    pub seed: u64,
}

/// A generated record with the truth: the entity (company or person) it belongs to.
#[derive(Clone, Debug)]
pub struct Labelled<T> {
    pub key: String,
    pub input: T,
    pub truth: u32,
}

/// The records of one family.
#[derive(Default)]
pub struct Family {
    pub accounts: Vec<Labelled<AccountInput>>,
    pub contacts: Vec<Labelled<ContactInput>>,
}

pub(super) struct Company {
    pub(super) id: u32,
    pub(super) brand: String,
    pub(super) industry: Option<&'static str>,
    pub(super) form: LegalForm,
    pub(super) country: &'static Country,
    pub(super) city: String,
    pub(super) domain: String,
    pub(super) phone_area: String,
    pub(super) phone_number: String,
    pub(super) vat: String,
    pub(super) people: Vec<Person>,
}

pub(super) struct Person {
    pub(super) id: u32,
    pub(super) first: (&'static str, &'static str),
    pub(super) last: &'static str,
    pub(super) mobile: Option<String>,
    pub(super) free_mail: Option<String>,
}

/// Generates families until the account count is reached. Deterministic per seed.
pub struct Generator {
    params: GeneratorParams,
    rng: Rng,
    accounts: usize,
    contacts: usize,
    next_company: u32,
    next_person: u32,
}

fn weighted<'a, T>(rng: &mut Rng, items: &'a [(T, u32)]) -> &'a T {
    let total: u32 = items.iter().map(|(_, w)| w).sum();
    let mut x = rng.below(total as usize) as u32;
    for (item, w) in items {
        if x < *w {
            return item;
        }
        x -= w;
    }
    &items[items.len() - 1].0
}

/// ASCII for domains and mailboxes: umlauts as their transcription.
pub(super) fn ascii(s: &str) -> String {
    let mut out = String::new();
    for c in s.to_lowercase().chars() {
        match c {
            'ä' => out.push_str("ae"),
            'ö' => out.push_str("oe"),
            'ü' => out.push_str("ue"),
            'ß' => out.push_str("ss"),
            'ó' => out.push('o'),
            'ł' => out.push('l'),
            'ń' => out.push('n'),
            'ś' => out.push('s'),
            'è' | 'é' => out.push('e'),
            c if c.is_ascii_alphanumeric() => out.push(c),
            _ => {}
        }
    }
    out
}

fn capitalize(s: &str) -> String {
    let mut c = s.chars();
    match c.next() {
        Some(f) => f.to_uppercase().chain(c).collect(),
        None => String::new(),
    }
}

pub(super) fn digits(rng: &mut Rng, n: usize) -> String {
    (0..n)
        .map(|_| char::from(b'0' + rng.below(10) as u8))
        .collect()
}

/// A valid VAT ID of the country: a random body and the check digits that pass.
fn vat_for(rng: &mut Rng, country: &str) -> String {
    loop {
        let candidate = match country {
            "DE" => format!("DE{}{}", 1 + rng.below(9), digits(rng, 7)),
            "AT" => format!("ATU{}", digits(rng, 7)),
            "IT" => format!("IT{}", digits(rng, 10)),
            "PL" => format!("PL{}{}", 1 + rng.below(9), digits(rng, 8)),
            _ => format!("BE0{}{}", 2 + rng.below(8), digits(rng, 6)),
        };
        let tail: &[&str] = if country == "BE" { &["00"] } else { &["0"] };
        let width = tail[0].len();
        for check in 0..10usize.pow(width as u32) {
            let id = format!("{candidate}{check:0width$}");
            if normalize_vat(&id, None).is_some() {
                return id;
            }
        }
    }
}

impl Generator {
    pub fn new(params: GeneratorParams) -> Self {
        Generator {
            params,
            rng: Rng::new(params.seed),
            accounts: 0,
            contacts: 0,
            next_company: 0,
            next_person: 0,
        }
    }

    /// The accounts of a data set, in generation order.
    pub fn accounts(params: GeneratorParams) -> impl Iterator<Item = Labelled<AccountInput>> {
        let mut g = Generator::new(params);
        std::iter::from_fn(move || g.next_family()).flat_map(|f| f.accounts)
    }

    /// The contacts of the same data set (generated again from the seed, to stream both).
    pub fn contacts(params: GeneratorParams) -> impl Iterator<Item = Labelled<ContactInput>> {
        let mut g = Generator::new(params);
        std::iter::from_fn(move || g.next_family()).flat_map(|f| f.contacts)
    }

    fn brand(rng: &mut Rng) -> String {
        if rng.chance(0.25) {
            return (*rng.pick(SURNAMES)).to_owned();
        }
        let n = if rng.chance(0.6) { 2 } else { 3 };
        let s: String = (0..n).map(|_| *rng.pick(SYLLABLES)).collect();
        capitalize(&s)
    }

    fn company(&mut self, rng: &mut Rng, brand: &str, country: &'static Country) -> Company {
        let id = self.next_company;
        self.next_company += 1;
        let industry = rng.chance(0.85).then(|| *rng.pick(country.industries));
        let mut domain_base = match industry {
            Some(i) if rng.chance(0.5) => format!("{}-{}", ascii(brand), ascii(i)),
            _ => ascii(brand),
        };
        // Brands repeat across unrelated companies (surnames, short brands); their domains do
        // not: a company tag keeps domains unique, as registries do.
        if brand.chars().count() < 12 {
            domain_base = format!("{domain_base}-{id:x}");
        }
        // Half in a big city, half in one of many small towns.
        let city = if rng.chance(0.5) || country.code != "DE" {
            (*rng.pick(country.cities)).to_owned()
        } else {
            let suffixes = [
                "dorf", "heim", "hausen", "feld", "stadt", "bach", "berg", "au", "ingen", "rode",
            ];
            capitalize(&format!("{}{}", rng.pick(SYLLABLES), rng.pick(&suffixes)))
        };
        let mut people: Vec<Person> = Vec::new();
        for i in 0..1 + rng.below(3) {
            let pid = self.next_person;
            self.next_person += 1;
            let mut first = *rng.pick(FIRST_NAMES);
            // Colleagues with one family name (relatives): a hard negative for contacts.
            let last = match people.first() {
                Some(p) if rng.chance(0.15) => {
                    while first.0 == p.first.0 {
                        first = *rng.pick(FIRST_NAMES);
                    }
                    p.last
                }
                _ => *rng.pick(SURNAMES),
            };
            people.push(Person {
                id: pid,
                first,
                last,
                mobile: rng
                    .chance(0.5)
                    .then(|| format!("15{}{}", rng.below(10), digits(rng, 7))),
                free_mail: (i == 0 && rng.chance(0.1)).then(|| (*rng.pick(FREE_MAIL)).to_owned()),
            });
        }
        let area_len = 1 + rng.below(3);
        let phone_area = format!("{}{}", 2 + rng.below(8), digits(rng, area_len));
        let number_len = 5 + rng.below(3);
        let phone_number = digits(rng, number_len);
        Company {
            id,
            brand: brand.to_owned(),
            industry,
            form: *weighted(rng, country.forms),
            country,
            city,
            domain: format!("{domain_base}.{}", country.tld),
            phone_area,
            phone_number,
            vat: vat_for(rng, country.code),
            people,
        }
    }

    /// The next family; `None` once enough accounts were generated.
    pub fn next_family(&mut self) -> Option<Family> {
        if self.accounts >= self.params.accounts {
            return None;
        }
        let mut rng = self.rng.fork();
        let country = weighted(&mut rng, COUNTRIES);
        let brand = Self::brand(&mut rng);
        let mut companies = vec![self.company(&mut rng, &brand, country)];
        let kind = rng.below(100);
        if kind < 10 {
            // A group: several companies under one brand and domain, each named by its
            // industry (a brand-only name would be any of them).
            let domain = format!("{}-{:x}.{}", ascii(&brand), companies[0].id, country.tld);
            companies[0].domain = domain.clone();
            if companies[0].industry.is_none() {
                companies[0].industry = Some(*rng.pick(country.industries));
            }
            for _ in 0..1 + rng.below(3) {
                let mut c = self.company(&mut rng, &brand, country);
                while c.industry.is_none() || companies.iter().any(|o| o.industry == c.industry) {
                    c.industry = Some(*rng.pick(country.industries));
                }
                c.domain = domain.clone();
                if rng.chance(0.7) {
                    c.city = companies[0].city.clone();
                }
                if rng.chance(0.5) {
                    c.phone_area = companies[0].phone_area.clone();
                    c.phone_number = companies[0].phone_number.clone();
                }
                companies.push(c);
            }
        } else if kind < 16 && country.code == "DE" {
            // A GmbH & Co. KG and its own GmbH: only VAT ID and legal form differ.
            companies[0].form = LegalForm::GmbhCoKg;
            let mut g = self.company(&mut rng, &brand, country);
            g.form = LegalForm::Gmbh;
            g.industry = companies[0].industry;
            g.domain = companies[0].domain.clone();
            g.city = companies[0].city.clone();
            g.phone_area = companies[0].phone_area.clone();
            g.phone_number = companies[0].phone_number.clone();
            companies.push(g);
        }
        let mut family = Family::default();
        for c in &companies {
            self.emit(&mut rng, c, &mut family);
        }
        Some(family)
    }

    fn emit(&mut self, rng: &mut Rng, c: &Company, family: &mut Family) {
        let k = self.params.subsidiaries.max(1);
        let copies = (*weighted(rng, &[(1usize, 35), (2, 30), (3, 20), (4, 10), (5, 5)])).min(k);
        // Distinct subsidiaries.
        let mut subs: Vec<usize> = (0..k).collect();
        for i in 0..copies {
            let j = i + rng.below(k - i);
            subs.swap(i, j);
        }
        let mut people_seen = vec![false; c.people.len()];
        for (n, &sub) in subs[..copies].iter().enumerate() {
            let subsidiary = format!("sub-{}", sub + 1);
            let key = format!("a{}", self.accounts);
            self.accounts += 1;
            family.accounts.push(Labelled {
                key: key.clone(),
                input: self.account_copy(rng, c, &subsidiary),
                truth: c.id,
            });
            for (i, p) in c.people.iter().enumerate() {
                let last_copy = n + 1 == copies;
                if rng.chance(0.55) || (last_copy && !people_seen[i]) {
                    people_seen[i] = true;
                    let ckey = format!("c{}", self.contacts);
                    self.contacts += 1;
                    let input = Self::contact_copy(rng, c, p, &subsidiary, &key);
                    family.contacts.push(Labelled {
                        key: ckey,
                        input,
                        truth: p.id,
                    });
                }
            }
        }
    }
}
