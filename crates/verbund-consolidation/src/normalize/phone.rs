//! Phone numbers to E.164.
//!
//! A small normalizer instead of the `phonenumber` crate: the matcher needs only a canonical
//! form to compare, not validation against every numbering plan, and it runs on every record
//! of a million-record consolidation, where a regex-driven parser per number costs more than
//! the whole scoring. It knows the calling code and trunk prefix of the countries listed
//! below; numbers written internationally (`+`, `00`) work for any country.

/// (ISO country, calling code, national trunk prefix if the country drops one).
const COUNTRIES: &[(&str, &str, Option<char>)] = &[
    ("DE", "49", Some('0')),
    ("AT", "43", Some('0')),
    ("CH", "41", Some('0')),
    ("NL", "31", Some('0')),
    ("BE", "32", Some('0')),
    ("FR", "33", Some('0')),
    ("GB", "44", Some('0')),
    ("IE", "353", Some('0')),
    ("SE", "46", Some('0')),
    ("FI", "358", Some('0')),
    ("US", "1", Some('1')),
    ("CA", "1", Some('1')),
    // Italy keeps its leading 0 after the calling code; these have no trunk prefix.
    ("IT", "39", None),
    ("ES", "34", None),
    ("PL", "48", None),
    ("DK", "45", None),
    ("NO", "47", None),
    ("CZ", "420", None),
    ("LU", "352", None),
    ("PT", "351", None),
];

/// E.164 (`+4930123456`) of a number as people write it (`+49 (0)30 123456`, `0049 30
/// 123456`, `030/123456` with `default_country` DE). `None` when the number is too short or
/// too long for E.164, or national without a known default country.
pub fn normalize_phone(input: &str, default_country: Option<&str>) -> Option<String> {
    // An extension is not part of the line's identity.
    let lower = input.to_lowercase();
    let main = lower.split(['x', ';']).next().unwrap_or("");
    let main = main.split("ext").next().unwrap_or("");
    let international = main.trim_start().starts_with('+');
    // "(0)" after a calling code is the trunk prefix written for national callers.
    let main = main.replace("(0)", "");
    let digits: String = main.chars().filter(char::is_ascii_digit).collect();
    let e164 = if international {
        digits
    } else if let Some(rest) = digits.strip_prefix("00") {
        rest.to_owned()
    } else {
        let country = default_country?.to_ascii_uppercase();
        let (_, code, trunk) = COUNTRIES.iter().find(|(c, _, _)| *c == country)?;
        let national = match trunk {
            Some(t) => digits.strip_prefix(*t)?,
            None => digits.as_str(),
        };
        format!("{code}{national}")
    };
    if !(8..=15).contains(&e164.len()) || e164.starts_with('0') {
        return None;
    }
    Some(format!("+{e164}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spellings_meet() {
        for p in [
            "+49 30 1234567",
            "+49 (0)30 1234567",
            "0049 30 1234567",
            "030/1234567",
            "(030) 123 45 67",
        ] {
            assert_eq!(
                normalize_phone(p, Some("DE")).as_deref(),
                Some("+49301234567"),
                "{p}"
            );
        }
        assert_eq!(
            normalize_phone("06 12 34 56 78", Some("FR")).as_deref(),
            Some("+33612345678")
        );
        assert_eq!(
            normalize_phone("02 1234567", Some("IT")).as_deref(),
            Some("+39021234567")
        );
        assert_eq!(
            normalize_phone("+43 1 234567 ext. 12", None).as_deref(),
            Some("+431234567")
        );
    }

    #[test]
    fn rejects() {
        assert_eq!(normalize_phone("030 1234567", None), None);
        assert_eq!(normalize_phone("12", Some("DE")), None);
        assert_eq!(normalize_phone("+49 1234567890123456", None), None);
        assert_eq!(normalize_phone("hello", Some("DE")), None);
    }
}
