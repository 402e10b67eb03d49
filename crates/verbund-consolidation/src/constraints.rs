//! Constraints: facts that keep two records apart whatever their score. A score can be
//! fooled by shared brand, domain and switchboard; these cannot.

use std::fmt;

/// Why two records can never be one customer (or one person).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Conflict {
    /// Two different valid VAT IDs: two legal entities.
    DifferentVatIds,
    /// Different legal forms (a GmbH & Co. KG next to its own GmbH) without an equal VAT ID
    /// saying it is one company that changed its form.
    DifferentLegalForms,
    /// Colleagues: at the same employer, with different first names.
    ColleaguesWithDifferentFirstNames,
    /// Colleagues: at the same employer, with different personal work addresses.
    ColleaguesWithDifferentEmails,
    /// A data steward decided these records are different.
    UnlinkedBySteward,
}

impl fmt::Display for Conflict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Conflict::DifferentVatIds => "different valid VAT IDs",
            Conflict::DifferentLegalForms => "different legal forms and no equal VAT ID",
            Conflict::ColleaguesWithDifferentFirstNames => {
                "same employer, different first names (colleagues)"
            }
            Conflict::ColleaguesWithDifferentEmails => {
                "same employer, different work e-mail addresses (colleagues)"
            }
            Conflict::UnlinkedBySteward => "unlinked by a data steward",
        })
    }
}
