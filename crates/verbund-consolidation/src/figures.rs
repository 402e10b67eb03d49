//! Group figures per customer and for the group, from opportunities, cases and activities
//! already attributed to customers (cluster keys). Pure: the caller passes the time `as_of`.
//!
//! Money never changes currency silently: amounts are summed per currency; a conversion is
//! shown only with configured rates, names its rate date, and lists what had no rate.

use std::collections::{BTreeMap, BTreeSet};

/// Seconds in the "last 12 months" window (365 days).
pub const TWELVE_MONTHS_SECS: i64 = 365 * 86_400;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stage {
    Open,
    Won,
    Lost,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Opportunity {
    pub customer: String,
    pub subsidiary: String,
    /// Minor units (cents) of `currency`.
    pub amount_minor: i64,
    pub currency: String,
    pub stage: Stage,
    /// When it was won or lost (Unix seconds).
    pub closed_at: Option<i64>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Case {
    pub customer: String,
    pub subsidiary: String,
    pub opened_at: i64,
    pub resolved_at: Option<i64>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Activity {
    pub customer: String,
    pub subsidiary: String,
    pub at: i64,
}

/// Configured exchange rates: units of `base` for one unit of each currency.
#[derive(Clone, Debug, PartialEq)]
pub struct FxRates {
    pub base: String,
    /// The date the rates are from, shown with every converted figure.
    pub rate_date: String,
    pub rates: BTreeMap<String, f64>,
}

/// Amounts per currency, and their conversion when rates are configured.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Money {
    pub per_currency: BTreeMap<String, i64>,
    pub converted: Option<Converted>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Converted {
    pub base: String,
    pub amount_minor: i64,
    pub rate_date: String,
    /// Currencies without a rate, left out of `amount_minor` (and shown here instead).
    pub unconverted: BTreeMap<String, i64>,
}

impl Money {
    fn add(&mut self, currency: &str, amount: i64) {
        *self.per_currency.entry(currency.to_owned()).or_default() += amount;
    }

    fn convert(&mut self, rates: Option<&FxRates>) {
        let Some(r) = rates else { return };
        let mut total = 0.0;
        let mut unconverted = BTreeMap::new();
        for (currency, &amount) in &self.per_currency {
            let rate = if *currency == r.base {
                Some(1.0)
            } else {
                r.rates.get(currency).copied()
            };
            match rate {
                Some(rate) => total += amount as f64 * rate,
                None => {
                    unconverted.insert(currency.clone(), amount);
                }
            }
        }
        self.converted = Some(Converted {
            base: r.base.clone(),
            amount_minor: total.round() as i64,
            rate_date: r.rate_date.clone(),
            unconverted,
        });
    }
}

/// The figures of one customer (or of the whole group).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Figures {
    pub open_pipeline: Money,
    /// Won with `closed_at` in (as_of − 365 days, as_of].
    pub won_last_12_months: Money,
    pub open_cases: u64,
    pub resolved_cases: u64,
    /// Mean time from opening to resolution of resolved cases, in seconds.
    pub mean_resolution_secs: Option<i64>,
    /// Latest activity or case event (Unix seconds).
    pub last_interaction: Option<i64>,
    /// Subsidiaries serving the customer (holding one of its accounts, or doing business).
    pub served_by: BTreeSet<String>,
    /// The group's other subsidiaries: cross-selling.
    pub not_served_by: BTreeSet<String>,
    resolution_total_secs: i64,
}

/// What the figures are computed from.
#[derive(Clone, Debug, Default)]
pub struct FiguresInput {
    /// All subsidiaries of the group.
    pub subsidiaries: BTreeSet<String>,
    /// Per customer: the subsidiaries holding one of its account records.
    pub holders: BTreeMap<String, BTreeSet<String>>,
    pub opportunities: Vec<Opportunity>,
    pub cases: Vec<Case>,
    pub activities: Vec<Activity>,
}

/// Figures per customer and for the group.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct GroupFigures {
    pub customers: BTreeMap<String, Figures>,
    pub group: Figures,
    /// Customers served by exactly one subsidiary.
    pub single_subsidiary_customers: u64,
}

impl Figures {
    fn absorb_case(&mut self, c: &Case, as_of: i64) {
        match c.resolved_at {
            Some(r) if r <= as_of => {
                self.resolved_cases += 1;
                self.resolution_total_secs += (r - c.opened_at).max(0);
                self.touch(r);
            }
            _ => self.open_cases += 1,
        }
        self.touch(c.opened_at);
    }

    fn touch(&mut self, at: i64) {
        self.last_interaction = Some(self.last_interaction.map_or(at, |l| l.max(at)));
    }

    fn finish(&mut self, subsidiaries: &BTreeSet<String>, rates: Option<&FxRates>) {
        self.mean_resolution_secs = (self.resolved_cases > 0)
            .then(|| self.resolution_total_secs / self.resolved_cases as i64);
        self.not_served_by = subsidiaries.difference(&self.served_by).cloned().collect();
        self.open_pipeline.convert(rates);
        self.won_last_12_months.convert(rates);
    }
}

/// Computes the figures. Events after `as_of` are ignored.
pub fn group_figures(input: &FiguresInput, as_of: i64, rates: Option<&FxRates>) -> GroupFigures {
    let mut out = GroupFigures::default();
    for (customer, holders) in &input.holders {
        let f = out.customers.entry(customer.clone()).or_default();
        f.served_by.extend(holders.iter().cloned());
    }
    let window_start = as_of - TWELVE_MONTHS_SECS;
    for o in &input.opportunities {
        for f in [
            out.customers.entry(o.customer.clone()).or_default(),
            &mut out.group,
        ] {
            f.served_by.insert(o.subsidiary.clone());
            match (o.stage, o.closed_at) {
                (Stage::Open, _) => f.open_pipeline.add(&o.currency, o.amount_minor),
                (Stage::Won, Some(at)) if at > window_start && at <= as_of => {
                    f.won_last_12_months.add(&o.currency, o.amount_minor)
                }
                _ => {}
            }
        }
    }
    for c in input.cases.iter().filter(|c| c.opened_at <= as_of) {
        for f in [
            out.customers.entry(c.customer.clone()).or_default(),
            &mut out.group,
        ] {
            f.served_by.insert(c.subsidiary.clone());
            f.absorb_case(c, as_of);
        }
    }
    for a in input.activities.iter().filter(|a| a.at <= as_of) {
        for f in [
            out.customers.entry(a.customer.clone()).or_default(),
            &mut out.group,
        ] {
            f.served_by.insert(a.subsidiary.clone());
            f.touch(a.at);
        }
    }
    for f in out.customers.values_mut() {
        f.finish(&input.subsidiaries, rates);
        out.group.served_by.extend(f.served_by.iter().cloned());
    }
    out.single_subsidiary_customers = out
        .customers
        .values()
        .filter(|f| f.served_by.len() == 1)
        .count() as u64;
    out.group.finish(&input.subsidiaries, rates);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: i64 = 86_400;
    const NOW: i64 = 1_000 * DAY;

    fn opp(
        customer: &str,
        sub: &str,
        amount: i64,
        currency: &str,
        stage: Stage,
        closed: Option<i64>,
    ) -> Opportunity {
        Opportunity {
            customer: customer.into(),
            subsidiary: sub.into(),
            amount_minor: amount,
            currency: currency.into(),
            stage,
            closed_at: closed,
        }
    }

    fn input() -> FiguresInput {
        FiguresInput {
            subsidiaries: ["de", "at", "pl"].iter().map(|s| s.to_string()).collect(),
            holders: [
                (
                    "c1".to_string(),
                    ["de".to_string(), "at".to_string()].into(),
                ),
                ("c2".to_string(), ["pl".to_string()].into()),
            ]
            .into(),
            opportunities: vec![
                opp("c1", "de", 10_000, "EUR", Stage::Open, None),
                opp("c1", "at", 5_000, "EUR", Stage::Open, None),
                opp("c1", "de", 2_000, "CHF", Stage::Open, None),
                opp("c1", "de", 7_000, "EUR", Stage::Won, Some(NOW - 10 * DAY)),
                // Won 400 days ago: outside the window.
                opp("c1", "de", 9_000, "EUR", Stage::Won, Some(NOW - 400 * DAY)),
                opp("c2", "pl", 3_000, "PLN", Stage::Lost, Some(NOW - DAY)),
            ],
            cases: vec![
                Case {
                    customer: "c1".into(),
                    subsidiary: "at".into(),
                    opened_at: NOW - 5 * DAY,
                    resolved_at: Some(NOW - 3 * DAY),
                },
                Case {
                    customer: "c1".into(),
                    subsidiary: "at".into(),
                    opened_at: NOW - 4 * DAY,
                    resolved_at: Some(NOW),
                },
                Case {
                    customer: "c2".into(),
                    subsidiary: "pl".into(),
                    opened_at: NOW - 2 * DAY,
                    resolved_at: None,
                },
            ],
            activities: vec![Activity {
                customer: "c2".into(),
                subsidiary: "pl".into(),
                at: NOW - DAY / 2,
            }],
        }
    }

    #[test]
    fn per_currency_without_rates() {
        let g = group_figures(&input(), NOW, None);
        let c1 = &g.customers["c1"];
        assert_eq!(
            c1.open_pipeline.per_currency,
            [("CHF".to_string(), 2_000), ("EUR".to_string(), 15_000)].into()
        );
        assert_eq!(c1.open_pipeline.converted, None);
        assert_eq!(
            c1.won_last_12_months.per_currency,
            [("EUR".to_string(), 7_000)].into()
        );
        assert_eq!((c1.open_cases, c1.resolved_cases), (0, 2));
        assert_eq!(c1.mean_resolution_secs, Some(3 * DAY));
        assert_eq!(c1.last_interaction, Some(NOW));
        assert_eq!(c1.not_served_by, ["pl".to_string()].into());
        let c2 = &g.customers["c2"];
        assert_eq!(c2.open_cases, 1);
        assert_eq!(c2.last_interaction, Some(NOW - DAY / 2));
        assert_eq!(g.single_subsidiary_customers, 1);
        assert_eq!(g.group.open_pipeline.per_currency["EUR"], 15_000);
        assert_eq!(g.group.open_cases, 1);
    }

    #[test]
    fn conversion_shows_its_date_and_what_it_left_out() {
        let rates = FxRates {
            base: "EUR".into(),
            rate_date: "2026-11-27".into(),
            rates: [("PLN".to_string(), 0.23)].into(),
        };
        let g = group_figures(&input(), NOW, Some(&rates));
        let conv = g.customers["c1"].open_pipeline.converted.clone().unwrap();
        assert_eq!(conv.amount_minor, 15_000);
        assert_eq!(conv.rate_date, "2026-11-27");
        assert_eq!(conv.unconverted, [("CHF".to_string(), 2_000)].into());
    }
}
