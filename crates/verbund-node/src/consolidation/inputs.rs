//! Records as the matching engine, the golden record and the figures take them. Pure.

use std::collections::{BTreeMap, BTreeSet};

use verbund_consolidation::figures::{Activity, Case, FiguresInput, Opportunity, Stage};
use verbund_consolidation::golden::{FieldValue, SourceRecord};
use verbund_consolidation::{AccountInput, ContactInput};
use verbund_core::{Hlc, Record, RecordKind, Value};

fn text(r: &Record, field: &str) -> Option<String> {
    r.text(field)
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .map(str::to_string)
}

/// An account as the matcher compares it; the subsidiary is the record's owner.
pub fn account_input(r: &Record) -> AccountInput {
    AccountInput {
        subsidiary: r.owner_org.clone(),
        name: text(r, "name").unwrap_or_default(),
        website: text(r, "domain").or_else(|| text(r, "website")),
        email: text(r, "email"),
        vat_id: text(r, "vat_id"),
        phone: text(r, "phone"),
        city: text(r, "city"),
        country: text(r, "country_code"),
    }
}

/// A contact as the matcher compares it; its employer is its account (same subsidiary).
pub fn contact_input(r: &Record) -> ContactInput {
    ContactInput {
        subsidiary: r.owner_org.clone(),
        first_name: text(r, "first_name").unwrap_or_default(),
        last_name: text(r, "last_name").unwrap_or_default(),
        email: text(r, "email"),
        phone: text(r, "phone").or_else(|| text(r, "mobile")),
        country: None,
        employer: text(r, "account_id"),
    }
}

/// A version as one ordered number (milliseconds, then the counter) for survivorship.
pub fn version_order(h: &Hlc) -> u64 {
    (h.physical_ms << 16) | u64::from(h.counter.min(0xffff))
}

fn value_text(v: &Value) -> Option<String> {
    match v {
        Value::Text(t) => Some(t.clone()),
        Value::Int(i) => Some(i.to_string()),
        Value::Money(m) => Some(verbund_core::schema::format_money(m)),
        Value::List(l) if !l.is_empty() => Some(l.join(", ")),
        Value::List(_) => None,
    }
}

/// The fields that never enter a golden record: links between records (they differ per
/// subsidiary by nature) and free text.
const NOT_GOLDEN: &[&str] = &["account_id", "tags", "description"];

/// One source of a golden record: every field the record shows with its version.
pub fn source_record(r: &Record) -> SourceRecord {
    let fields = r
        .fields
        .iter()
        .filter(|(name, _)| !NOT_GOLDEN.contains(&name.as_str()))
        .filter_map(|(name, v)| {
            let version = r.versions.get(name)?;
            Some((
                name.clone(),
                FieldValue {
                    value: value_text(v)?,
                    version: version_order(version),
                    updated_at: (version.physical_ms / 1000) as i64,
                },
            ))
        })
        .collect();
    SourceRecord {
        subsidiary: r.owner_org.clone(),
        record_id: r.id.to_string(),
        fields,
    }
}

fn secs(ms: u64) -> i64 {
    (ms / 1000) as i64
}

/// When a field last changed (Unix seconds), from its version.
fn changed_at(r: &Record, field: &str) -> i64 {
    r.versions
        .get(field)
        .map_or(secs(r.updated_at_ms.max(0) as u64), |h| secs(h.physical_ms))
}

/// The figures' input from the records of the customers: `customer_of` names the customer of
/// an account id. Opportunities, cases and activities count for the customer of their
/// account; a closed deal counts from when its stage last changed, a case is resolved from
/// when its status last changed.
pub fn figures_input(
    records: &[Record],
    customer_of: &BTreeMap<String, String>,
    subsidiaries: BTreeSet<String>,
) -> FiguresInput {
    let mut input = FiguresInput {
        subsidiaries,
        ..Default::default()
    };
    for (account, customer) in customer_of {
        if let Some(r) = records.iter().find(|r| r.id.to_string() == *account) {
            input
                .holders
                .entry(customer.clone())
                .or_default()
                .insert(r.owner_org.clone());
        }
    }
    for r in records.iter().filter(|r| !r.is_deleted()) {
        let Some(customer) = r.text("account_id").and_then(|a| customer_of.get(a)) else {
            continue;
        };
        let (customer, subsidiary) = (customer.clone(), r.owner_org.clone());
        match r.kind {
            RecordKind::Opportunity => {
                let Some(Value::Money(m)) = r.fields.get("amount") else {
                    continue;
                };
                let stage = match r.text("stage") {
                    Some("closed_won") => Stage::Won,
                    Some("closed_lost") => Stage::Lost,
                    _ => Stage::Open,
                };
                input.opportunities.push(Opportunity {
                    customer,
                    subsidiary,
                    amount_minor: m.minor_units,
                    currency: m.currency.clone(),
                    stage,
                    closed_at: (stage != Stage::Open).then(|| changed_at(r, "stage")),
                });
            }
            RecordKind::ServiceCase => {
                let resolved = matches!(r.text("status"), Some("resolved" | "closed"));
                input.cases.push(Case {
                    customer,
                    subsidiary,
                    opened_at: secs(r.created_at_ms.max(0) as u64),
                    resolved_at: resolved.then(|| changed_at(r, "status")),
                });
            }
            RecordKind::Activity => input.activities.push(Activity {
                customer,
                subsidiary,
                at: secs(r.created_at_ms.max(0) as u64),
            }),
            _ => {}
        }
    }
    input
}

#[cfg(test)]
mod tests {
    use super::*;
    use uuid::Uuid;
    use verbund_core::Money;

    fn rec(kind: RecordKind, owner: &str, fields: &[(&str, Value)]) -> Record {
        let mut r = Record {
            id: Uuid::now_v7(),
            kind,
            owner_org: owner.into(),
            created_at_ms: 1_000_000,
            updated_at_ms: 2_000_000,
            deleted: None,
            seq: 1,
            fields: Default::default(),
            versions: Default::default(),
        };
        for (k, v) in fields {
            r.fields.insert(k.to_string(), v.clone());
            r.versions
                .insert(k.to_string(), Hlc::new(3_000_000, 2, "n"));
        }
        r
    }

    #[test]
    fn accounts_contacts_and_sources_take_what_the_record_shows() {
        let acc = rec(
            RecordKind::Account,
            "sub-a",
            &[
                ("name", Value::Text("Müller GmbH".into())),
                ("domain", Value::Text("mueller.example".into())),
                ("tags", Value::List(vec!["group".into()])),
            ],
        );
        let a = account_input(&acc);
        assert_eq!(a.subsidiary, "sub-a");
        assert_eq!(a.website.as_deref(), Some("mueller.example"));
        assert_eq!(a.vat_id, None);
        let s = source_record(&acc);
        assert!(s.fields.contains_key("name") && !s.fields.contains_key("tags"));
        assert_eq!(s.fields["name"].updated_at, 3_000);
        let c = rec(
            RecordKind::Contact,
            "sub-a",
            &[
                ("first_name", Value::Text("Anna".into())),
                ("account_id", Value::Text(acc.id.to_string())),
            ],
        );
        assert_eq!(
            contact_input(&c).employer.as_deref(),
            Some(acc.id.to_string().as_str())
        );
    }

    #[test]
    fn figures_count_deals_and_cases_of_the_customers_accounts_only() {
        let acc = rec(RecordKind::Account, "sub-a", &[]);
        let other = Uuid::now_v7().to_string();
        let deal = |stage: &str, account: &str| {
            rec(
                RecordKind::Opportunity,
                "sub-a",
                &[
                    ("account_id", Value::Text(account.into())),
                    ("stage", Value::Text(stage.into())),
                    (
                        "amount",
                        Value::Money(Money {
                            currency: "EUR".into(),
                            minor_units: 100,
                        }),
                    ),
                ],
            )
        };
        let records = vec![
            acc.clone(),
            deal("proposal", &acc.id.to_string()),
            deal("closed_won", &acc.id.to_string()),
            deal("proposal", &other),
        ];
        let customer_of = BTreeMap::from([(acc.id.to_string(), "c1".to_string())]);
        let input = figures_input(&records, &customer_of, BTreeSet::from(["sub-a".into()]));
        assert_eq!(input.opportunities.len(), 2);
        let won = input
            .opportunities
            .iter()
            .find(|o| o.stage == Stage::Won)
            .unwrap();
        assert_eq!(won.closed_at, Some(3_000));
        assert!(input.holders["c1"].contains("sub-a"));
    }
}
