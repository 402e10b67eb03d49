//! What the store indexes of a record: the derived columns lists filter on, and the search
//! text with the needles a query becomes.

use super::*;

/// The seven indexed columns a List call filters on, declared once: the filter a client
/// sends, the store's list query and a record's index columns all carry this struct.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct FilterColumns {
    pub account_id: Option<String>,
    pub related_id: Option<String>,
    pub stage: Option<String>,
    pub status: Option<String>,
    pub priority: Option<String>,
    pub assigned_org: Option<String>,
    pub channel: Option<String>,
}

impl FilterColumns {
    /// Column (and record field) names with their values, in a fixed order.
    pub fn columns(&self) -> [(&'static str, Option<&str>); 7] {
        [
            ("account_id", self.account_id.as_deref()),
            ("related_id", self.related_id.as_deref()),
            ("stage", self.stage.as_deref()),
            ("status", self.status.as_deref()),
            ("priority", self.priority.as_deref()),
            ("assigned_org", self.assigned_org.as_deref()),
            ("channel", self.channel.as_deref()),
        ]
    }

    /// The names of the columns that are set.
    pub fn set_fields(&self) -> Vec<&'static str> {
        self.columns()
            .into_iter()
            .filter_map(|(f, v)| v.map(|_| f))
            .collect()
    }

    /// Whether a (projected) record passes these filters. A field the caller may not read is
    /// absent from a projection, so filtering on it matches nothing and reveals nothing. An
    /// activity's account filter matches activities directly on that account.
    pub fn matches(&self, rec: &Record) -> bool {
        self.columns().into_iter().all(|(field, wanted)| {
            let field = if field == "account_id" && rec.kind == RecordKind::Activity {
                "related_id"
            } else {
                field
            };
            wanted.is_none_or(|w| rec.text(field) == Some(w))
        })
    }
}

/// Columns the store keeps beside the JSON fields for filtering and search.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct IndexColumns {
    pub filter: FilterColumns,
    pub contact_id: Option<String>,
    pub search_text: String,
}

/// Index columns of a record. For an account, `account_id` is its own id, so "everything of an
/// account" is one indexed lookup; an activity's `account_id` is filled by the store from the
/// record it belongs to.
pub fn index_columns(record: &Record) -> IndexColumns {
    let text = |n: &str| {
        record
            .fields
            .get(n)
            .and_then(Value::as_text)
            .map(str::to_string)
    };
    let status_field = match record.kind {
        RecordKind::ServiceCase | RecordKind::Lead => text("status"),
        _ => None,
    };
    IndexColumns {
        filter: FilterColumns {
            account_id: if record.kind == RecordKind::Account {
                Some(record.id.to_string())
            } else {
                text("account_id")
            },
            related_id: text("related_id"),
            stage: text("stage"),
            status: status_field,
            priority: text("priority"),
            assigned_org: text("assigned_org"),
            channel: text("channel"),
        },
        contact_id: text("contact_id"),
        search_text: search_text(record.kind, &record.fields),
    }
}

/// Lowercased searchable text; phone numbers also as bare digits so "030 1234" finds
/// "+49 (30) 1234".
pub fn search_text(kind: RecordKind, fields: &FieldMap) -> String {
    let mut out = String::new();
    for spec in schema::fields(kind).iter().filter(|s| s.searchable) {
        if let Some(t) = fields.get(spec.name).and_then(Value::as_text) {
            out.push_str(&t.to_lowercase());
            out.push('\n');
            if spec.ty == FieldType::Phone {
                out.extend(t.chars().filter(char::is_ascii_digit));
                out.push('\n');
            }
        }
    }
    out
}

/// The forms of a search query to look for: the lowercased text, and its digits when it looks
/// like a phone number.
pub fn search_needles(query: &str) -> Result<Vec<String>, DomainError> {
    let q = query.trim().to_lowercase();
    if q.chars().count() < 2 {
        return Err(DomainError::invalid(
            "query",
            "must have at least 2 characters",
        ));
    }
    if q.chars().count() > 200 {
        return Err(DomainError::invalid(
            "query",
            "must be at most 200 characters",
        ));
    }
    if q.chars().any(char::is_control) {
        return Err(DomainError::invalid(
            "query",
            "must not contain control characters",
        ));
    }
    let mut needles = vec![q.clone()];
    let digits: String = q.chars().filter(char::is_ascii_digit).collect();
    if digits.len() >= 3
        && q.chars()
            .all(|c| c.is_ascii_digit() || " +-()/.".contains(c))
        && digits != q
    {
        needles.push(digits);
    }
    Ok(needles)
}
