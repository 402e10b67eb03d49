//! The fields of every record type, their types and limits. The value rules (validation,
//! normalization, text forms) are in `rules`.

use crate::model::RecordKind;

/// Largest amount accepted, in minor units: keeps sums of many amounts far from i64 overflow.
pub const MAX_MINOR_UNITS: i64 = 1_000_000_000_000_000; // 10^15
pub const MAX_TAGS: usize = 32;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FieldType {
    /// Free text up to `max` characters.
    Text {
        max: usize,
    },
    Email,
    Phone,
    /// A DNS domain such as `example.com`; stored lowercase.
    Domain,
    /// An http(s) URL.
    Url,
    /// ISO 3166-1 alpha-2 country code, stored uppercase.
    Country,
    /// A verbund organization id (lowercase DNS-like name).
    OrgId,
    Enum(&'static [&'static str]),
    Int {
        min: i64,
        max: i64,
    },
    Money,
    /// `YYYY-MM-DD`.
    Date,
    /// Unix milliseconds.
    Instant,
    /// The id of a record of one of these kinds.
    Ref(&'static [RecordKind]),
    /// Short lowercase labels.
    Tags,
}

#[derive(Clone, Copy, Debug)]
pub struct FieldSpec {
    pub name: &'static str,
    pub ty: FieldType,
    /// Included in full-text search (names, e-mail addresses, domains, phone numbers).
    pub searchable: bool,
}

const fn f(name: &'static str, ty: FieldType) -> FieldSpec {
    FieldSpec {
        name,
        ty,
        searchable: false,
    }
}
const fn s(name: &'static str, ty: FieldType) -> FieldSpec {
    FieldSpec {
        name,
        ty,
        searchable: true,
    }
}

const NAME: FieldType = FieldType::Text { max: 200 };
const SHORT: FieldType = FieldType::Text { max: 100 };
const LONG: FieldType = FieldType::Text { max: 10_000 };

pub const OPPORTUNITY_STAGES: &[&str] = &[
    "prospecting",
    "qualification",
    "proposal",
    "negotiation",
    "closed_won",
    "closed_lost",
];
pub const CASE_STATUSES: &[&str] = &["new", "open", "pending", "resolved", "closed"];
pub const CASE_PRIORITIES: &[&str] = &["low", "normal", "high", "urgent"];
pub const LEAD_STATUSES: &[&str] = &["new", "working", "qualified", "disqualified"];
pub const ACTIVITY_CHANNELS: &[&str] = &["email", "call", "meeting", "note", "web"];
pub const ACTIVITY_DIRECTIONS: &[&str] = &["inbound", "outbound", "internal"];

const ACCOUNT: &[FieldSpec] = &[
    s("name", NAME),
    s("domain", FieldType::Domain),
    s("vat_id", FieldType::Text { max: 32 }),
    f("industry", SHORT),
    s("phone", FieldType::Phone),
    s("email", FieldType::Email),
    f("website", FieldType::Url),
    f("street", NAME),
    f("city", SHORT),
    f("postal_code", FieldType::Text { max: 20 }),
    f("country_code", FieldType::Country),
    f("tags", FieldType::Tags),
    f("annual_revenue", FieldType::Money),
    f("description", LONG),
];

const CONTACT: &[FieldSpec] = &[
    f("account_id", FieldType::Ref(&[RecordKind::Account])),
    s("first_name", SHORT),
    s("last_name", SHORT),
    s("email", FieldType::Email),
    s("phone", FieldType::Phone),
    s("mobile", FieldType::Phone),
    f("title", SHORT),
    f("department", SHORT),
    f("description", LONG),
];

const LEAD: &[FieldSpec] = &[
    s("first_name", SHORT),
    s("last_name", SHORT),
    s("company", NAME),
    s("email", FieldType::Email),
    s("phone", FieldType::Phone),
    f("status", FieldType::Enum(LEAD_STATUSES)),
    f("source", SHORT),
    f("description", LONG),
];

const OPPORTUNITY: &[FieldSpec] = &[
    f("account_id", FieldType::Ref(&[RecordKind::Account])),
    s("name", NAME),
    f("stage", FieldType::Enum(OPPORTUNITY_STAGES)),
    f("amount", FieldType::Money),
    f("probability", FieldType::Int { min: 0, max: 100 }),
    f("close_date", FieldType::Date),
    f("next_step", FieldType::Text { max: 500 }),
    f("description", LONG),
];

const SERVICE_CASE: &[FieldSpec] = &[
    f("account_id", FieldType::Ref(&[RecordKind::Account])),
    f("contact_id", FieldType::Ref(&[RecordKind::Contact])),
    s("subject", NAME),
    f("description", LONG),
    f("status", FieldType::Enum(CASE_STATUSES)),
    f("priority", FieldType::Enum(CASE_PRIORITIES)),
    f("assigned_org", FieldType::OrgId),
    f("due_date", FieldType::Date),
];

const ACTIVITY: &[FieldSpec] = &[
    f(
        "related_id",
        FieldType::Ref(&[
            RecordKind::Account,
            RecordKind::Contact,
            RecordKind::Lead,
            RecordKind::Opportunity,
            RecordKind::ServiceCase,
        ]),
    ),
    f("channel", FieldType::Enum(ACTIVITY_CHANNELS)),
    f("direction", FieldType::Enum(ACTIVITY_DIRECTIONS)),
    f("occurred_at", FieldType::Instant),
    s("subject", NAME),
    f("body", LONG),
];

pub fn fields(kind: RecordKind) -> &'static [FieldSpec] {
    match kind {
        RecordKind::Account => ACCOUNT,
        RecordKind::Contact => CONTACT,
        RecordKind::Lead => LEAD,
        RecordKind::Opportunity => OPPORTUNITY,
        RecordKind::ServiceCase => SERVICE_CASE,
        RecordKind::Activity => ACTIVITY,
    }
}

pub fn field(kind: RecordKind, name: &str) -> Option<&'static FieldSpec> {
    fields(kind).iter().find(|f| f.name == name)
}

mod rules;
pub use rules::*;
