//! The noise of one copy of a record: what differs between subsidiaries' spellings.

use super::generator::{Company, Generator, Person, ascii};
use super::rng::Rng;
use super::vocabulary::spellings;
use crate::accounts::AccountInput;
use crate::contacts::ContactInput;

/// Umlauts and ß written as the character, its transcription, or the bare vowel.
fn umlaut_variant(rng: &mut Rng, s: &str) -> String {
    let style = rng.below(10);
    if style < 6 {
        return s.to_owned();
    }
    let mut out = String::with_capacity(s.len() + 4);
    for c in s.chars() {
        let (t, bare) = match c {
            'ä' => ("ae", "a"),
            'ö' => ("oe", "o"),
            'ü' => ("ue", "u"),
            'Ä' => ("Ae", "A"),
            'Ö' => ("Oe", "O"),
            'Ü' => ("Ue", "U"),
            'ß' => ("ss", "ss"),
            _ => {
                out.push(c);
                continue;
            }
        };
        out.push_str(if style < 9 { t } else { bare });
    }
    out
}

/// One random edit (substitution, deletion, transposition, insertion) after the first letter.
fn typo(rng: &mut Rng, s: &str) -> String {
    let mut chars: Vec<char> = s.chars().collect();
    if chars.len() < 4 {
        return s.to_owned();
    }
    let i = 1 + rng.below(chars.len() - 2);
    let letter = char::from(b'a' + rng.below(26) as u8);
    match rng.below(4) {
        0 => chars[i] = letter,
        1 => {
            chars.remove(i);
        }
        2 => chars.swap(i, i + 1),
        _ => chars.insert(i, letter),
    }
    chars.into_iter().collect()
}

fn phone_text(
    rng: &mut Rng,
    country: &str,
    calling: &str,
    trunk: &str,
    area: &str,
    number: &str,
) -> String {
    match rng.below(5) {
        0 => format!("+{calling} {area} {number}"),
        1 => format!("{trunk}{area} {number}"),
        2 => format!("{trunk}{area}/{number}"),
        3 if !trunk.is_empty() => format!("+{calling} ({trunk}){area} {number}"),
        _ => format!(
            "00{calling} {area}-{number}{}",
            if country == "DE" && rng.chance(0.1) {
                "-0"
            } else {
                ""
            }
        ),
    }
}

impl Generator {
    pub(super) fn account_copy(
        &self,
        rng: &mut Rng,
        c: &Company,
        subsidiary: &str,
    ) -> AccountInput {
        let mut name = umlaut_variant(rng, &c.brand);
        if rng.chance(0.12) {
            name = typo(rng, &name);
        }
        if let Some(i) = c.industry
            && !rng.chance(0.04)
        {
            name = format!("{name} {}", umlaut_variant(rng, i));
        }
        if !rng.chance(0.1) {
            let form = rng.pick(spellings(c.form));
            if !form.is_empty() {
                name = format!("{name} {form}");
            }
        }
        match rng.below(20) {
            0 => name = name.to_uppercase(),
            1 => name = name.to_lowercase(),
            _ => {}
        }
        let website = rng.chance(0.65).then(|| match rng.below(4) {
            0 => format!("https://www.{}", c.domain),
            1 => format!("www.{}", c.domain),
            2 => c.domain.clone(),
            _ => format!("http://{}/kontakt", c.domain),
        });
        let email = if rng.chance(0.35) {
            Some(format!("info@{}", c.domain))
        } else if rng.chance(0.05) {
            Some(format!(
                "{}@{}",
                ascii(&c.brand),
                rng.pick(super::vocabulary::FREE_MAIL)
            ))
        } else {
            None
        };
        let vat_id = rng.chance(0.55).then(|| {
            let (p, n) = c.vat.split_at(2);
            let text = match rng.below(3) {
                0 => c.vat.clone(),
                1 => format!(
                    "{p} {}",
                    n.as_bytes()
                        .chunks(3)
                        .map(|x| String::from_utf8_lossy(x).into_owned())
                        .collect::<Vec<_>>()
                        .join(" ")
                ),
                _ => c.vat.to_lowercase(),
            };
            // Now and then a typo in a digit: the check digit catches it.
            if rng.chance(0.02) {
                typo_digit(rng, &text)
            } else {
                text
            }
        });
        let country_known = rng.chance(0.9);
        let phone = rng.chance(0.55).then(|| {
            let text = phone_text(
                rng,
                c.country.code,
                c.country.calling_code,
                c.country.trunk,
                &c.phone_area,
                &c.phone_number,
            );
            if !country_known && !text.starts_with('+') && !text.starts_with("00") {
                format!(
                    "+{} {} {}",
                    c.country.calling_code, c.phone_area, c.phone_number
                )
            } else {
                text
            }
        });
        AccountInput {
            subsidiary: subsidiary.to_owned(),
            name,
            website,
            email,
            vat_id,
            phone,
            city: rng.chance(0.85).then(|| umlaut_variant(rng, &c.city)),
            country: country_known.then(|| c.country.code.to_owned()),
        }
    }

    pub(super) fn contact_copy(
        rng: &mut Rng,
        c: &Company,
        p: &Person,
        subsidiary: &str,
        employer: &str,
    ) -> ContactInput {
        let (full, nick) = p.first;
        let first = if !nick.is_empty() && rng.chance(0.2) {
            nick.to_owned()
        } else if rng.chance(0.05) {
            format!("{}.", full.chars().next().unwrap_or('X'))
        } else {
            umlaut_variant(rng, full)
        };
        let mut last = umlaut_variant(rng, p.last);
        if rng.chance(0.05) {
            last = typo(rng, &last);
        }
        let email = if let Some(fm) = &p.free_mail {
            rng.chance(0.7)
                .then(|| format!("{}.{}{}@{fm}", ascii(full), ascii(p.last), p.id % 100))
        } else {
            rng.chance(0.7)
                .then(|| format!("{}.{}@{}", ascii(full), ascii(p.last), c.domain))
        };
        let phone = p
            .mobile
            .as_ref()
            .filter(|_| rng.chance(0.6))
            .map(|m| match rng.below(3) {
                0 => format!("+{} {m}", c.country.calling_code),
                1 => format!(
                    "{}{m}",
                    if c.country.trunk.is_empty() {
                        ""
                    } else {
                        c.country.trunk
                    }
                ),
                _ => format!("00{} {} {}", c.country.calling_code, &m[..3], &m[3..]),
            });
        ContactInput {
            subsidiary: subsidiary.to_owned(),
            first_name: first,
            last_name: last,
            email,
            phone,
            country: Some(c.country.code.to_owned()),
            employer: Some(employer.to_owned()),
        }
    }
}

fn typo_digit(rng: &mut Rng, s: &str) -> String {
    let positions: Vec<usize> = s
        .char_indices()
        .filter(|(_, c)| c.is_ascii_digit())
        .map(|(i, _)| i)
        .collect();
    if positions.is_empty() {
        return s.to_owned();
    }
    let i = positions[rng.below(positions.len())];
    let mut out = s.to_owned();
    let d = char::from(b'0' + rng.below(10) as u8);
    out.replace_range(i..i + 1, &d.to_string());
    out
}
