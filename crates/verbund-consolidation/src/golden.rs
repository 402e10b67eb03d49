//! The golden record of a customer: per field, the value that survives by rules from a
//! configuration (source priority by subsidiary, most recent, most complete, most frequent),
//! with its lineage — subsidiary, record and field version.

use std::collections::{BTreeMap, HashMap};

use serde::Deserialize;

use crate::normalize::fold;

/// A survivorship rule. Rules of a field apply in order: the first that prefers one value
/// decides; ties go on to the next rule, and finally to (subsidiary, record id).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Rule {
    /// The subsidiary listed first in `source_priority` wins; unlisted ones come last.
    SourcePriority,
    /// The most recently updated value (then the higher field version).
    MostRecent,
    /// The value from the record with the most filled fields (then the longer value).
    MostComplete,
    /// The value most sources agree on (compared folded: case, umlauts, punctuation).
    MostFrequent,
}

/// Rules for one field.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FieldRules {
    pub rules: Vec<Rule>,
    /// Overrides the global source priority for this field.
    #[serde(default)]
    pub source_priority: Option<Vec<String>>,
}

/// The survivorship configuration (TOML):
///
/// ```toml
/// source_priority = ["acme-de", "acme-at"]
/// default_rules = ["source_priority", "most_recent"]
///
/// [fields.phone]
/// rules = ["most_recent"]
///
/// [fields.name]
/// rules = ["most_frequent", "source_priority"]
/// ```
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SurvivorshipConfig {
    #[serde(default)]
    pub source_priority: Vec<String>,
    #[serde(default = "default_rules")]
    pub default_rules: Vec<Rule>,
    #[serde(default)]
    pub fields: BTreeMap<String, FieldRules>,
}

fn default_rules() -> Vec<Rule> {
    vec![Rule::SourcePriority, Rule::MostRecent]
}

impl Default for SurvivorshipConfig {
    fn default() -> Self {
        SurvivorshipConfig {
            source_priority: Vec::new(),
            default_rules: default_rules(),
            fields: BTreeMap::new(),
        }
    }
}

/// A configuration that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("survivorship configuration: {0}")]
    Parse(#[from] toml::de::Error),
    #[error("survivorship configuration: field {0:?} has no rules")]
    NoRules(String),
}

impl SurvivorshipConfig {
    /// Parses the TOML text (the caller reads the file).
    pub fn from_toml(text: &str) -> Result<Self, ConfigError> {
        let config: SurvivorshipConfig = toml::from_str(text)?;
        if config.default_rules.is_empty() {
            return Err(ConfigError::NoRules("default_rules".into()));
        }
        if let Some((name, _)) = config.fields.iter().find(|(_, f)| f.rules.is_empty()) {
            return Err(ConfigError::NoRules(name.clone()));
        }
        Ok(config)
    }
}

/// One field of a source record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FieldValue {
    pub value: String,
    /// The field's version at its subsidiary.
    pub version: u64,
    /// When it was last changed (Unix seconds).
    pub updated_at: i64,
}

/// A source record of a customer (already limited to what the share's projection shows).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SourceRecord {
    pub subsidiary: String,
    pub record_id: String,
    pub fields: BTreeMap<String, FieldValue>,
}

/// Where a golden value comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Lineage {
    pub subsidiary: String,
    pub record_id: String,
    pub version: u64,
}

/// A surviving value and its origin.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GoldenField {
    pub value: String,
    pub lineage: Lineage,
    /// The rule that preferred it over the runner-up (`None`: no competitor, or only the
    /// final tie-break by subsidiary and record id).
    pub decided_by: Option<Rule>,
    /// How many sources had a value for the field.
    pub candidates: usize,
}

/// The golden record: surviving value per field.
pub type GoldenRecord = BTreeMap<String, GoldenField>;

struct Candidate<'a> {
    source: &'a SourceRecord,
    value: &'a FieldValue,
    folded: String,
}

/// The golden record of one customer from its source records.
pub fn golden_record(config: &SurvivorshipConfig, sources: &[SourceRecord]) -> GoldenRecord {
    let completeness: HashMap<(&str, &str), usize> = sources
        .iter()
        .map(|s| {
            let filled = s
                .fields
                .values()
                .filter(|v| !v.value.trim().is_empty())
                .count();
            ((s.subsidiary.as_str(), s.record_id.as_str()), filled)
        })
        .collect();
    let mut by_field: BTreeMap<&str, Vec<Candidate>> = BTreeMap::new();
    for s in sources {
        for (name, value) in &s.fields {
            if !value.value.trim().is_empty() {
                by_field.entry(name).or_default().push(Candidate {
                    source: s,
                    value,
                    folded: fold(&value.value),
                });
            }
        }
    }
    let mut out = GoldenRecord::new();
    for (name, mut candidates) in by_field {
        let rules = config.fields.get(name);
        let priority = rules
            .and_then(|r| r.source_priority.as_ref())
            .unwrap_or(&config.source_priority);
        let rules: &[Rule] = rules.map_or(&config.default_rules, |r| &r.rules);
        let mut frequency: HashMap<&str, usize> = HashMap::new();
        for c in &candidates {
            *frequency.entry(c.folded.as_str()).or_default() += 1;
        }
        let frequency: HashMap<String, usize> = frequency
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v))
            .collect();
        let rank = |c: &Candidate, rule: Rule| -> (i64, i64) {
            match rule {
                Rule::SourcePriority => {
                    let p = priority
                        .iter()
                        .position(|s| *s == c.source.subsidiary)
                        .unwrap_or(priority.len());
                    (p as i64, 0)
                }
                Rule::MostRecent => (-c.value.updated_at, -(c.value.version as i64)),
                Rule::MostComplete => {
                    let filled =
                        completeness[&(c.source.subsidiary.as_str(), c.source.record_id.as_str())];
                    (-(filled as i64), -(c.value.value.chars().count() as i64))
                }
                Rule::MostFrequent => (-(frequency[&c.folded] as i64), 0),
            }
        };
        candidates.sort_by(|x, y| {
            rules
                .iter()
                .map(|&r| rank(x, r).cmp(&rank(y, r)))
                .find(|o| o.is_ne())
                .unwrap_or(std::cmp::Ordering::Equal)
                .then_with(|| {
                    (&x.source.subsidiary, &x.source.record_id)
                        .cmp(&(&y.source.subsidiary, &y.source.record_id))
                })
        });
        let decided_by = candidates.get(1).and_then(|runner_up| {
            rules
                .iter()
                .copied()
                .find(|&r| rank(&candidates[0], r) != rank(runner_up, r))
        });
        let winner = &candidates[0];
        out.insert(
            name.to_owned(),
            GoldenField {
                value: winner.value.value.clone(),
                lineage: Lineage {
                    subsidiary: winner.source.subsidiary.clone(),
                    record_id: winner.source.record_id.clone(),
                    version: winner.value.version,
                },
                decided_by,
                candidates: candidates.len(),
            },
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn source(sub: &str, id: &str, fields: &[(&str, &str, u64, i64)]) -> SourceRecord {
        SourceRecord {
            subsidiary: sub.into(),
            record_id: id.into(),
            fields: fields
                .iter()
                .map(|(n, v, version, at)| {
                    (
                        n.to_string(),
                        FieldValue {
                            value: v.to_string(),
                            version: *version,
                            updated_at: *at,
                        },
                    )
                })
                .collect(),
        }
    }

    const CONFIG: &str = r#"
        source_priority = ["de", "at"]
        default_rules = ["source_priority", "most_recent"]
        [fields.phone]
        rules = ["most_recent"]
        [fields.name]
        rules = ["most_frequent", "most_complete"]
    "#;

    #[test]
    fn rules_per_field_with_lineage() {
        let config = SurvivorshipConfig::from_toml(CONFIG).unwrap();
        let sources = [
            source(
                "at",
                "a1",
                &[
                    ("name", "Nordwind GmbH", 3, 100),
                    ("phone", "+43 1 234", 2, 500),
                    ("city", "Wien", 1, 100),
                ],
            ),
            source(
                "de",
                "d1",
                &[
                    ("name", "NORDWIND GMBH", 7, 50),
                    ("phone", "+49 30 1", 9, 90),
                    ("city", "Berlin", 1, 10),
                ],
            ),
            source(
                "it",
                "i1",
                &[("name", "Nordwind S.r.l.", 1, 900), ("city", "", 1, 900)],
            ),
        ];
        let g = golden_record(&config, &sources);
        // Most recent phone, whatever the priority.
        assert_eq!(g["phone"].value, "+43 1 234");
        assert_eq!(
            g["phone"].lineage,
            Lineage {
                subsidiary: "at".into(),
                record_id: "a1".into(),
                version: 2
            }
        );
        assert_eq!(g["phone"].decided_by, Some(Rule::MostRecent));
        // City by source priority; the empty value is no candidate.
        assert_eq!(g["city"].value, "Berlin");
        assert_eq!(g["city"].candidates, 2);
        assert_eq!(g["city"].decided_by, Some(Rule::SourcePriority));
        // Name: two sources agree once folded and beat the newer Italian one; between the two,
        // equally complete and long, the final tie-break by subsidiary decides.
        assert_eq!(g["name"].value, "Nordwind GmbH");
        assert_eq!(g["name"].lineage.subsidiary, "at");
        assert_eq!(g["name"].decided_by, None);
        let without_de: Vec<_> = sources
            .iter()
            .filter(|s| s.subsidiary != "de")
            .cloned()
            .collect();
        assert_eq!(
            golden_record(&config, &without_de)["name"].decided_by,
            Some(Rule::MostComplete)
        );
    }

    #[test]
    fn bad_configurations_are_rejected() {
        assert!(SurvivorshipConfig::from_toml("default_rules = [\"newest\"]").is_err());
        assert!(SurvivorshipConfig::from_toml("[fields.name]\nrules = []").is_err());
        assert!(SurvivorshipConfig::from_toml("unknown = 1").is_err());
        assert!(SurvivorshipConfig::from_toml("").is_ok());
    }
}
