//! Normalization of what identifies a company or a person: pure string functions, no I/O.
//!
//! Every comparison in the engine happens on these forms, so both sides of a pair always go
//! through the same function: a folding that loses information (`ue` → `u`) is harmless as long
//! as it is applied everywhere.

mod company;
mod person;
mod phone;
mod vat;
mod web;

pub use company::{CompanyName, LegalForm, normalize_company};
pub use person::{PersonName, normalize_person};
pub use phone::normalize_phone;
pub use vat::{Vat, de_check_digit, normalize_vat};
pub use web::{Email, domain_of_website, is_free_mail, is_role_mailbox, normalize_email};

/// Lowercases, folds umlauts, ß and common Latin diacritics to ASCII, and turns the German
/// transcriptions `ae`, `oe`, `ue` into the plain vowel, so that Müller, Mueller and Muller
/// all become `muller`. Dots vanish (`G.m.b.H.` → `gmbh`), `&` and `+` become a separate `&`
/// token, every other non-alphanumeric character separates tokens. The result is tokens
/// separated by single spaces.
pub fn fold(input: &str) -> String {
    let mut ascii = String::with_capacity(input.len());
    for c in input.chars() {
        for l in c.to_lowercase() {
            push_folded(&mut ascii, l);
        }
    }
    // `ae`/`oe`/`ue` → vowel, then collapse separators.
    let bytes = ascii.as_bytes();
    let mut out = String::with_capacity(bytes.len());
    let mut i = 0;
    let mut pending_space = false;
    while i < bytes.len() {
        let b = bytes[i];
        if b == b' ' {
            pending_space = !out.is_empty();
            i += 1;
            continue;
        }
        if pending_space {
            out.push(' ');
            pending_space = false;
        }
        // An `e` after a, o or u (in the output, so that the result has none left and
        // folding twice changes nothing).
        if b == b'e' && matches!(out.as_bytes().last(), Some(b'a' | b'o' | b'u')) {
            i += 1;
            continue;
        }
        out.push(b as char);
        i += 1;
    }
    out
}

fn push_folded(out: &mut String, c: char) {
    let mapped: &str = match c {
        'a'..='z' | '0'..='9' => {
            out.push(c);
            return;
        }
        '.' | '\'' | '’' | '`' | '´' => return,
        '&' | '+' => " & ",
        'ä' | 'á' | 'à' | 'â' | 'ã' | 'å' | 'ą' | 'ā' => "a",
        'æ' => "a",
        'ö' | 'ó' | 'ò' | 'ô' | 'õ' | 'ø' | 'ō' | 'ő' => "o",
        'œ' => "o",
        'ü' | 'ú' | 'ù' | 'û' | 'ū' | 'ů' | 'ű' => "u",
        'é' | 'è' | 'ê' | 'ë' | 'ę' | 'ě' | 'ē' => "e",
        'í' | 'ì' | 'î' | 'ï' | 'ı' | 'ī' => "i",
        'ß' => "ss",
        'ç' | 'ć' | 'č' => "c",
        'ñ' | 'ń' | 'ň' => "n",
        'ł' => "l",
        'ś' | 'š' | 'ş' => "s",
        'ź' | 'ż' | 'ž' => "z",
        'ř' => "r",
        'ý' | 'ÿ' => "y",
        'ğ' => "g",
        'ď' => "d",
        'ť' => "t",
        _ => " ",
    };
    out.push_str(mapped);
}

/// The tokens of [`fold`].
pub fn fold_tokens(input: &str) -> Vec<String> {
    fold(input)
        .split(' ')
        .filter(|t| !t.is_empty())
        .map(str::to_owned)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn umlauts_and_transcriptions_meet() {
        assert_eq!(fold("Müller"), "muller");
        assert_eq!(fold("Mueller"), "muller");
        assert_eq!(fold("MULLER"), "muller");
        assert_eq!(fold("Straße"), "strasse");
        assert_eq!(fold("Łódź"), "lodz");
        assert_eq!(fold("aee"), fold(&fold("aee")));
    }

    #[test]
    fn dots_join_and_separators_collapse() {
        assert_eq!(fold("G.m.b.H."), "gmbh");
        assert_eq!(fold("  Nord-Wind,  Logistik "), "nord wind logistik");
        assert_eq!(fold("Müller & Söhne"), "muller & sohne");
        assert_eq!(fold("A+B"), "a & b");
    }
}
