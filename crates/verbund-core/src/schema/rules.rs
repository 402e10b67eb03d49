//! The value rules of the fields: validation and normalization of each field type, the text
//! forms the CLI parses and shows, and money.

use super::*;
use crate::civil;
use crate::currency;
use crate::model::{Money, Value};

fn type_error(ty: FieldType) -> &'static str {
    match ty {
        FieldType::Text { .. } => "must be text",
        FieldType::Email => "must be an e-mail address",
        FieldType::Phone => "must be a phone number",
        FieldType::Domain => "must be a domain name",
        FieldType::Url => "must be an http(s) URL",
        FieldType::Country => "must be an ISO 3166-1 alpha-2 country code",
        FieldType::OrgId => "must be an organization id",
        FieldType::Enum(_) => "must be one of the listed values",
        FieldType::Int { .. } => "must be a whole number",
        FieldType::Money => "must be an amount with an ISO 4217 currency",
        FieldType::Date => "must be a date YYYY-MM-DD",
        FieldType::Instant => "must be a point in time",
        FieldType::Ref(_) => "must be a record id",
        FieldType::Tags => "must be a list of tags",
    }
}

/// The officially assigned ISO 3166-1 alpha-2 codes (249), and XK (Kosovo), which is
/// user-assigned but used by the EU and most registries.
const COUNTRY_CODES: &str = "AD AE AF AG AI AL AM AO AQ AR AS AT AU AW AX AZ \
    BA BB BD BE BF BG BH BI BJ BL BM BN BO BQ BR BS BT BV BW BY BZ \
    CA CC CD CF CG CH CI CK CL CM CN CO CR CU CV CW CX CY CZ DE DJ DK DM DO DZ \
    EC EE EG EH ER ES ET FI FJ FK FM FO FR \
    GA GB GD GE GF GG GH GI GL GM GN GP GQ GR GS GT GU GW GY HK HM HN HR HT HU \
    ID IE IL IM IN IO IQ IR IS IT JE JM JO JP KE KG KH KI KM KN KP KR KW KY KZ \
    LA LB LC LI LK LR LS LT LU LV LY \
    MA MC MD ME MF MG MH MK ML MM MN MO MP MQ MR MS MT MU MV MW MX MY MZ \
    NA NC NE NF NG NI NL NO NP NR NU NZ OM PA PE PF PG PH PK PL PM PN PR PS PT PW PY \
    QA RE RO RS RU RW SA SB SC SD SE SG SH SI SJ SK SL SM SN SO SR SS ST SV SX SY SZ \
    TC TD TF TG TH TJ TK TL TM TN TO TR TT TV TW TZ UA UG UM US UY UZ \
    VA VC VE VG VI VN VU WF WS XK YE YT ZA ZM ZW";

/// Whether `code` (upper case) is an ISO 3166-1 alpha-2 country code.
pub fn is_country_code(code: &str) -> bool {
    code.len() == 2 && COUNTRY_CODES.split_whitespace().any(|c| c == code)
}

fn char_len(s: &str) -> usize {
    s.chars().count()
}

pub fn is_valid_email(s: &str) -> bool {
    if s.len() > 254 || s.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return false;
    }
    let Some((local, domain)) = s.rsplit_once('@') else {
        return false;
    };
    if local.is_empty()
        || local.len() > 64
        || local.contains('@')
        || local.starts_with('.')
        || local.ends_with('.')
        || local.contains("..")
    {
        return false;
    }
    if local.chars().any(|c| "()<>,;:\\\"[]".contains(c)) {
        return false;
    }
    is_valid_domain(&domain.to_ascii_lowercase())
}

/// Lowercase DNS name with at least two labels (`example.com`).
pub fn is_valid_domain(s: &str) -> bool {
    if s.len() > 253 || !s.contains('.') {
        return false;
    }
    s.split('.').all(|label| {
        !label.is_empty()
            && label.len() <= 63
            && !label.starts_with('-')
            && !label.ends_with('-')
            && label
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    })
}

/// An organization id: lowercase DNS-like name, 2–63 characters, labels of [a-z0-9-]
/// separated by dots (`acme`, `acme-logistics`, `eu.acme`).
pub fn is_valid_org_id(s: &str) -> bool {
    (2..=63).contains(&s.len())
        && s.split('.').all(|label| {
            !label.is_empty()
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        })
        && s.as_bytes()[0].is_ascii_lowercase()
}

fn is_valid_phone(s: &str) -> bool {
    let digits = s.bytes().filter(u8::is_ascii_digit).count();
    s.len() <= 40
        && digits >= 3
        && s.bytes()
            .all(|b| b.is_ascii_digit() || b" +-()/.".contains(&b))
        && s.bytes().filter(|b| *b == b'+').count() <= 1
        && (!s.contains('+') || s.trim_start().starts_with('+'))
}

fn is_valid_url(s: &str) -> bool {
    if s.len() > 2048 || s.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return false;
    }
    let Some(rest) = s
        .strip_prefix("https://")
        .or_else(|| s.strip_prefix("http://"))
    else {
        return false;
    };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    let host = match authority.rsplit_once(':') {
        Some((h, port)) => {
            let valid_port = (1..=5).contains(&port.len())
                && port.bytes().all(|b| b.is_ascii_digit())
                && port.parse::<u32>().is_ok_and(|p| (1..=65535).contains(&p));
            if !valid_port {
                return false;
            }
            h
        }
        None => authority,
    };
    is_valid_domain(&host.to_ascii_lowercase())
}

pub fn is_valid_tag(t: &str) -> bool {
    (1..=50).contains(&t.len())
        && t.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-_:.".contains(&b))
}

/// Checks and normalizes one value for a field. Returns `Ok(None)` when the value is empty
/// (which means "absent"); the error message does not repeat the field name.
pub fn normalize(spec: &FieldSpec, value: Value) -> Result<Option<Value>, String> {
    let ty = spec.ty;
    match (ty, value) {
        (FieldType::Text { max }, Value::Text(t)) => {
            let t = t.trim();
            if t.is_empty() {
                return Ok(None);
            }
            if char_len(t) > max {
                return Err(format!("must be at most {max} characters"));
            }
            if t.chars()
                .any(|c| c.is_control() && c != '\n' && c != '\t' && c != '\r')
            {
                return Err("must not contain control characters".into());
            }
            Ok(Some(Value::Text(t.to_string())))
        }
        (FieldType::Email, Value::Text(t)) => {
            let t = t.trim();
            if t.is_empty() {
                return Ok(None);
            }
            if !is_valid_email(t) {
                return Err(format!("{t:?} is not a valid e-mail address"));
            }
            // The domain part is case-insensitive; keep the local part as typed.
            let (local, domain) = t.rsplit_once('@').unwrap_or((t, ""));
            Ok(Some(Value::Text(format!(
                "{local}@{}",
                domain.to_ascii_lowercase()
            ))))
        }
        (FieldType::Phone, Value::Text(t)) => {
            let t = t.trim();
            if t.is_empty() {
                return Ok(None);
            }
            if !is_valid_phone(t) {
                return Err(format!(
                    "{t:?} is not a valid phone number (digits, spaces, + - ( ) / . only; at most 40)"
                ));
            }
            Ok(Some(Value::Text(t.to_string())))
        }
        (FieldType::Domain, Value::Text(t)) => {
            let t = t.trim().trim_end_matches('.').to_ascii_lowercase();
            if t.is_empty() {
                return Ok(None);
            }
            if !is_valid_domain(&t) {
                return Err(format!("{t:?} is not a valid domain name"));
            }
            Ok(Some(Value::Text(t)))
        }
        (FieldType::Url, Value::Text(t)) => {
            let t = t.trim();
            if t.is_empty() {
                return Ok(None);
            }
            if !is_valid_url(t) {
                return Err(format!("{t:?} is not a valid http(s) URL"));
            }
            Ok(Some(Value::Text(t.to_string())))
        }
        (FieldType::Country, Value::Text(t)) => {
            let t = t.trim().to_ascii_uppercase();
            if t.is_empty() {
                return Ok(None);
            }
            if t.len() != 2 || !is_country_code(&t) {
                let shown: String = t.chars().take(10).collect();
                return Err(format!(
                    "{shown:?} is not an ISO 3166-1 alpha-2 country code"
                ));
            }
            Ok(Some(Value::Text(t)))
        }
        (FieldType::OrgId, Value::Text(t)) => {
            let t = t.trim();
            if t.is_empty() {
                return Ok(None);
            }
            if !is_valid_org_id(t) {
                return Err(format!(
                    "{t:?} is not a valid organization id (lowercase letters, digits, '-' and '.')"
                ));
            }
            Ok(Some(Value::Text(t.to_string())))
        }
        (FieldType::Enum(values), Value::Text(t)) => {
            let t = t.trim().to_ascii_lowercase();
            if t.is_empty() {
                return Ok(None);
            }
            if !values.contains(&t.as_str()) {
                return Err(format!("{t:?} is not one of {}", values.join(", ")));
            }
            Ok(Some(Value::Text(t)))
        }
        (FieldType::Int { min, max }, Value::Int(i)) => {
            if i < min || i > max {
                return Err(format!("must be between {min} and {max}"));
            }
            Ok(Some(Value::Int(i)))
        }
        (FieldType::Money, Value::Money(m)) => {
            let currency = m.currency.trim().to_ascii_uppercase();
            if currency.is_empty() {
                return Err("currency is required (ISO 4217, e.g. EUR)".into());
            }
            if currency::minor_digits(&currency).is_none() {
                return Err(format!("{currency:?} is not an ISO 4217 currency code"));
            }
            if m.minor_units < 0 {
                return Err("must not be negative".into());
            }
            if m.minor_units > MAX_MINOR_UNITS {
                return Err("is too large".into());
            }
            Ok(Some(Value::Money(Money {
                currency,
                minor_units: m.minor_units,
            })))
        }
        (FieldType::Date, Value::Text(t)) => {
            let t = t.trim();
            if t.is_empty() {
                return Ok(None);
            }
            if civil::parse_date(t).is_none() {
                return Err(format!("{t:?} is not a valid date YYYY-MM-DD"));
            }
            Ok(Some(Value::Text(t.to_string())))
        }
        (FieldType::Instant, Value::Int(ms)) => {
            // 1900-01-01 .. 9999-12-31
            if !(-2_208_988_800_000..=253_402_300_799_000).contains(&ms) {
                return Err("is out of range".into());
            }
            Ok(Some(Value::Int(ms)))
        }
        (FieldType::Ref(_), Value::Text(t)) => {
            let t = t.trim();
            if t.is_empty() {
                return Ok(None);
            }
            match uuid::Uuid::parse_str(t) {
                Ok(u) => Ok(Some(Value::Text(u.hyphenated().to_string()))),
                Err(_) => Err(format!("{t:?} is not a record id (UUID)")),
            }
        }
        (FieldType::Tags, Value::List(tags)) => {
            let mut out: Vec<String> = Vec::new();
            for t in tags {
                let t = t.trim().to_ascii_lowercase();
                if t.is_empty() {
                    continue;
                }
                if !is_valid_tag(&t) {
                    return Err(format!(
                        "tag {t:?} must be 1-50 characters of a-z 0-9 - _ : ."
                    ));
                }
                if !out.contains(&t) {
                    out.push(t);
                }
            }
            if out.len() > MAX_TAGS {
                return Err(format!("at most {MAX_TAGS} tags"));
            }
            out.sort();
            if out.is_empty() {
                Ok(None)
            } else {
                Ok(Some(Value::List(out)))
            }
        }
        _ => Err(type_error(ty).into()),
    }
}

/// Parses the text form a person types on the command line (`12.50 EUR`, `a,b,c`,
/// `2026-11-23T10:00:00Z`) into a value for the field. Normalization happens later.
pub fn parse_text(spec: &FieldSpec, text: &str) -> Result<Value, String> {
    match spec.ty {
        FieldType::Int { .. } => text
            .trim()
            .parse::<i64>()
            .map(Value::Int)
            .map_err(|_| "must be a whole number".into()),
        FieldType::Money => parse_money(text).map(Value::Money),
        FieldType::Instant => {
            let t = text.trim();
            if let Ok(ms) = t.parse::<i64>() {
                return Ok(Value::Int(ms));
            }
            civil::parse_rfc3339_ms(t)
                .map(Value::Int)
                .ok_or_else(|| "must be an RFC 3339 time such as 2026-11-23T10:00:00Z".into())
        }
        FieldType::Enum(allowed) => {
            // Named here: a value the wire enum does not know would arrive as "unset".
            let v = text.trim().to_ascii_lowercase();
            if allowed.contains(&v.as_str()) {
                Ok(Value::Text(v))
            } else {
                let shown: String = text.chars().take(40).collect();
                Err(format!("{shown:?} is not one of {}", allowed.join(", ")))
            }
        }
        FieldType::Tags => Ok(Value::List(
            text.split(',')
                .map(|t| t.trim().to_string())
                .filter(|t| !t.is_empty())
                .collect(),
        )),
        _ => Ok(Value::Text(text.to_string())),
    }
}

/// `1234.50 EUR` or `EUR 1234.50` → minor units using the currency's exponent.
pub fn parse_money(text: &str) -> Result<Money, String> {
    let parts: Vec<&str> = text.split_whitespace().collect();
    let (amount, code) = match parts.as_slice() {
        [a, c] if c.chars().all(|ch| ch.is_ascii_alphabetic()) => (*a, *c),
        [c, a] if c.chars().all(|ch| ch.is_ascii_alphabetic()) => (*a, *c),
        _ => return Err("must look like \"1234.50 EUR\"".into()),
    };
    let code = code.to_ascii_uppercase();
    let digits = currency::minor_digits(&code)
        .ok_or_else(|| format!("{code:?} is not an ISO 4217 currency code"))?
        as usize;
    if amount.starts_with('-') {
        return Err("must not be negative".into());
    }
    let (int_part, frac_part) = amount.split_once('.').unwrap_or((amount, ""));
    if int_part.is_empty()
        || !int_part.bytes().all(|b| b.is_ascii_digit())
        || !frac_part.bytes().all(|b| b.is_ascii_digit())
    {
        return Err(format!("{amount:?} is not a decimal amount"));
    }
    if frac_part.len() > digits {
        return Err(format!("{code} has {digits} decimal places"));
    }
    let mut minor_text = String::from(int_part);
    minor_text.push_str(frac_part);
    minor_text.extend(std::iter::repeat_n('0', digits - frac_part.len()));
    let minor_units = minor_text
        .parse::<i64>()
        .map_err(|_| "is too large".to_string())?;
    Ok(Money {
        currency: code,
        minor_units,
    })
}

/// `123450, EUR` → `1234.50 EUR`.
pub fn format_money(m: &Money) -> String {
    let digits = currency::minor_digits(&m.currency).unwrap_or(2) as u32;
    if digits == 0 {
        return format!("{} {}", m.minor_units, m.currency);
    }
    let scale = 10i64.pow(digits);
    format!(
        "{}.{:0width$} {}",
        m.minor_units / scale,
        (m.minor_units % scale).abs(),
        m.currency,
        width = digits as usize
    )
}

/// A value as a person reads it.
pub fn display_value(spec: &FieldSpec, v: &Value) -> String {
    match (spec.ty, v) {
        (FieldType::Instant, Value::Int(ms)) => civil::format_rfc3339_ms(*ms),
        (_, Value::Text(t)) => t.clone(),
        (_, Value::Int(i)) => i.to_string(),
        (_, Value::Money(m)) => format_money(m),
        (_, Value::List(l)) => l.join(","),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn spec(kind: RecordKind, name: &str) -> &'static FieldSpec {
        field(kind, name).unwrap()
    }

    #[test]
    fn a_choice_field_names_a_wrong_value_and_the_allowed_ones() {
        let stage = spec(RecordKind::Opportunity, "stage");
        assert_eq!(
            parse_text(stage, "Proposal").unwrap(),
            Value::Text("proposal".into())
        );
        let why = parse_text(stage, "won").unwrap_err();
        assert!(
            why.starts_with("\"won\" is not one of ") && why.contains("closed_won"),
            "{why}"
        );
        let long = "x".repeat(10_000);
        assert!(
            parse_text(stage, &long).unwrap_err().len() < 400,
            "no echo of a long input"
        );
    }

    #[test]
    fn country_codes_are_the_assigned_ones() {
        assert_eq!(COUNTRY_CODES.split_whitespace().count(), 250);
        for ok in ["DE", "AT", "CH", "US", "GB", "XK"] {
            assert!(is_country_code(ok), "{ok}");
        }
        for bad in ["XX", "UK", "EU", "D", "DEU"] {
            assert!(!is_country_code(bad), "{bad}");
        }
    }

    #[test]
    fn email_rules() {
        let e = spec(RecordKind::Contact, "email");
        assert_eq!(
            normalize(e, Value::Text(" Anna.Weber@Example.COM ".into())).unwrap(),
            Some(Value::Text("Anna.Weber@example.com".into()))
        );
        for bad in [
            "anna",
            "anna@",
            "@example.com",
            "anna@example",
            "an na@example.com",
            "a@b@example.com",
            "anna..x@example.com",
        ] {
            assert!(normalize(e, Value::Text(bad.into())).is_err(), "{bad}");
        }
        assert_eq!(normalize(e, Value::Text("  ".into())).unwrap(), None);
    }

    #[test]
    fn enum_and_int_and_types() {
        let stage = spec(RecordKind::Opportunity, "stage");
        assert!(
            normalize(stage, Value::Text("Proposal".into()))
                .unwrap()
                .is_some()
        );
        assert!(normalize(stage, Value::Text("won".into())).is_err());
        let p = spec(RecordKind::Opportunity, "probability");
        assert!(normalize(p, Value::Int(101)).is_err());
        assert!(normalize(p, Value::Int(-1)).is_err());
        assert!(normalize(p, Value::Int(100)).is_ok());
        assert!(normalize(p, Value::Text("50".into())).is_err());
    }

    #[test]
    fn money_rules() {
        let amount = spec(RecordKind::Opportunity, "amount");
        let ok = Value::Money(Money {
            currency: "eur".into(),
            minor_units: 100,
        });
        assert_eq!(
            normalize(amount, ok).unwrap(),
            Some(Value::Money(Money {
                currency: "EUR".into(),
                minor_units: 100
            }))
        );
        assert!(
            normalize(
                amount,
                Value::Money(Money {
                    currency: "EUR".into(),
                    minor_units: -1
                })
            )
            .is_err()
        );
        assert!(
            normalize(
                amount,
                Value::Money(Money {
                    currency: "ABC".into(),
                    minor_units: 1
                })
            )
            .is_err()
        );
        assert_eq!(parse_money("1234.5 EUR").unwrap().minor_units, 123_450);
        assert_eq!(parse_money("JPY 500").unwrap().minor_units, 500);
        assert!(parse_money("1.5 JPY").is_err());
        assert!(parse_money("-3 EUR").is_err());
        assert_eq!(
            format_money(&Money {
                currency: "EUR".into(),
                minor_units: 123_405
            }),
            "1234.05 EUR"
        );
        assert_eq!(
            format_money(&Money {
                currency: "KWD".into(),
                minor_units: 1_005
            }),
            "1.005 KWD"
        );
    }

    #[test]
    fn lengths_are_bounded() {
        let name = spec(RecordKind::Account, "name");
        assert!(normalize(name, Value::Text("x".repeat(200))).is_ok());
        assert!(normalize(name, Value::Text("x".repeat(201))).is_err());
        assert!(normalize(name, Value::Text("ü".repeat(200))).is_ok());
    }

    #[test]
    fn org_ids() {
        for ok in ["acme", "acme-logistics", "eu.acme", "a1"] {
            assert!(is_valid_org_id(ok), "{ok}");
        }
        for bad in [
            "A", "Acme", "a", "-acme", "acme-", "ac_me", "acme..x", "1acme", "",
        ] {
            assert!(!is_valid_org_id(bad), "{bad}");
        }
    }

    #[test]
    fn misc_types() {
        for bad in [
            "https://a.example:/",
            "https://a.example:99999999",
            "https://a.example/\u{1b}]0;x\u{7}",
            "https://a.example/\0",
            "ftp://acme.example",
        ] {
            let website = spec(RecordKind::Account, "website");
            assert!(
                normalize(website, Value::Text(bad.into())).is_err(),
                "{bad:?}"
            );
        }
        let website = spec(RecordKind::Account, "website");
        assert!(normalize(website, Value::Text("https://a.example:8443/x".into())).is_ok());
        assert!(
            normalize(
                spec(RecordKind::Account, "website"),
                Value::Text("https://acme.example/x".into())
            )
            .is_ok()
        );
        assert!(
            normalize(
                spec(RecordKind::Account, "website"),
                Value::Text("ftp://acme.example".into())
            )
            .is_err()
        );
        assert!(
            normalize(
                spec(RecordKind::Account, "phone"),
                Value::Text("+49 (30) 1234-567".into())
            )
            .is_ok()
        );
        assert!(
            normalize(
                spec(RecordKind::Account, "phone"),
                Value::Text("call me".into())
            )
            .is_err()
        );
        assert!(
            normalize(
                spec(RecordKind::Account, "country_code"),
                Value::Text("de".into())
            )
            .unwrap()
                == Some(Value::Text("DE".into()))
        );
        let tags = normalize(
            spec(RecordKind::Account, "tags"),
            Value::List(vec!["Group".into(), "key".into(), "group".into()]),
        )
        .unwrap();
        assert_eq!(tags, Some(Value::List(vec!["group".into(), "key".into()])));
        assert!(
            normalize(
                spec(RecordKind::ServiceCase, "account_id"),
                Value::Text("nope".into())
            )
            .is_err()
        );
    }

    proptest! {
        #[test]
        fn money_text_round_trip(minor in 0i64..MAX_MINOR_UNITS, code in prop::sample::select(vec!["EUR", "JPY", "KWD", "USD"])) {
            let m = Money { currency: code.to_string(), minor_units: minor };
            prop_assert_eq!(parse_money(&format_money(&m)).unwrap(), m);
        }

        #[test]
        fn normalize_is_idempotent(text in "\\PC{0,80}") {
            for kind in RecordKind::ALL {
                for spec in fields(kind) {
                    if let Ok(v) = parse_text(spec, &text)
                        && let Ok(Some(n)) = normalize(spec, v)
                    {
                        prop_assert_eq!(normalize(spec, n.clone()).unwrap(), Some(n));
                    }
                }
            }
        }
    }
}
