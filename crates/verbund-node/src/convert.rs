//! Mapping between the wire messages and the core record model.

use std::collections::HashMap;

use prost_types::Timestamp;
use tonic::Status;
use verbund_core::{FieldMap, Hlc, Money, Record, RecordKind, Value};
use verbund_proto::v1 as pb;

/// A wire message that represents one record kind.
pub trait RecordMessage: prost::Message + Default + Clone + Send + Sync + 'static {
    const KIND: RecordKind;
    /// The fields present in the message (absent optional fields and UNSPECIFIED enums are left out).
    fn to_fields(&self) -> Result<FieldMap, Status>;
    fn from_record(r: &Record) -> Self;
    fn meta(&self) -> Option<&pb::RecordMeta>;
    fn clear_meta(&mut self);
}

/// INVALID_ARGUMENT naming the field: in the message ("field: why") and as a structured
/// `google.rpc.BadRequest` field violation in the status details, so clients can point at
/// the field without parsing text. Both are clipped: they may quote input, and a stock
/// client cannot read a status whose metadata exceeds its limit.
pub fn invalid(field: &str, message: impl std::fmt::Display) -> Status {
    use tonic_types::{ErrorDetails, StatusExt};
    let field = clip(field, 80);
    let description = clip(&message.to_string(), MAX_MESSAGE);
    Status::with_error_details(
        tonic::Code::InvalidArgument,
        clip(&format!("{field}: {description}"), MAX_MESSAGE),
        ErrorDetails::with_bad_request_violation(field, description),
    )
}

/// The longest status message this node sends (characters).
pub const MAX_MESSAGE: usize = 400;

pub fn ms_to_timestamp(ms: i64) -> Timestamp {
    Timestamp {
        seconds: ms.div_euclid(1000),
        nanos: (ms.rem_euclid(1000) * 1_000_000) as i32,
    }
}

pub fn timestamp_to_ms(field: &str, ts: &Timestamp) -> Result<i64, Status> {
    if !(0..1_000_000_000).contains(&ts.nanos) {
        return Err(invalid(field, "nanos must be in 0..1e9"));
    }
    ts.seconds
        .checked_mul(1000)
        .and_then(|ms| ms.checked_add(i64::from(ts.nanos / 1_000_000)))
        .ok_or_else(|| invalid(field, "is out of range"))
}

/// A version on the wire.
pub fn hlc_to_pb(h: &Hlc) -> pb::Hlc {
    pb::Hlc {
        physical_ms: h.physical_ms,
        counter: h.counter,
        node_id: h.node.clone(),
    }
}

pub fn meta_of(r: &Record) -> pb::RecordMeta {
    pb::RecordMeta {
        id: r.id.to_string(),
        owner_org: r.owner_org.clone(),
        create_time: Some(ms_to_timestamp(r.created_at_ms)),
        update_time: Some(ms_to_timestamp(r.updated_at_ms)),
        seq: r.seq,
        deleted: r.is_deleted(),
        field_versions: r
            .versions
            .iter()
            .map(|(k, v)| (k.clone(), hlc_to_pb(v)))
            .collect::<HashMap<_, _>>(),
    }
}

pub fn kind_to_pb(kind: RecordKind) -> pb::RecordKind {
    match kind {
        RecordKind::Account => pb::RecordKind::Account,
        RecordKind::Contact => pb::RecordKind::Contact,
        RecordKind::Lead => pb::RecordKind::Lead,
        RecordKind::Opportunity => pb::RecordKind::Opportunity,
        RecordKind::ServiceCase => pb::RecordKind::ServiceCase,
        RecordKind::Activity => pb::RecordKind::Activity,
    }
}

pub fn kind_from_pb(field: &str, v: i32) -> Result<RecordKind, Status> {
    match pb::RecordKind::try_from(v) {
        Ok(pb::RecordKind::Account) => Ok(RecordKind::Account),
        Ok(pb::RecordKind::Contact) => Ok(RecordKind::Contact),
        Ok(pb::RecordKind::Lead) => Ok(RecordKind::Lead),
        Ok(pb::RecordKind::Opportunity) => Ok(RecordKind::Opportunity),
        Ok(pb::RecordKind::ServiceCase) => Ok(RecordKind::ServiceCase),
        Ok(pb::RecordKind::Activity) => Ok(RecordKind::Activity),
        _ => Err(invalid(field, format!("unknown record kind {v}"))),
    }
}

/// Wire enum → core text: `OPPORTUNITY_STAGE_CLOSED_WON` → `closed_won`; UNSPECIFIED → None.
pub fn enum_to_core<E: TryFrom<i32> + Copy>(
    field: &str,
    v: i32,
    name: fn(E) -> &'static str,
    prefix: &str,
) -> Result<Option<String>, Status> {
    if v == 0 {
        return Ok(None);
    }
    let e = E::try_from(v).map_err(|_| invalid(field, format!("unknown value {v}")))?;
    Ok(Some(
        name(e)
            .strip_prefix(prefix)
            .unwrap_or(name(e))
            .to_ascii_lowercase(),
    ))
}

/// Core text → wire enum value; unknown text (which validation prevents) maps to UNSPECIFIED.
pub fn enum_from_core(text: Option<&str>, from_name: fn(&str) -> Option<i32>, prefix: &str) -> i32 {
    text.and_then(|t| from_name(&format!("{prefix}{}", t.to_ascii_uppercase())))
        .unwrap_or(0)
}

/// Helper that collects present wire fields into a field map.
struct In(FieldMap);

impl In {
    fn new() -> Self {
        In(FieldMap::new())
    }
    fn text(&mut self, name: &str, v: &Option<String>) -> &mut Self {
        if let Some(s) = v {
            self.0.insert(name.to_string(), Value::Text(s.clone()));
        }
        self
    }
    fn opt(&mut self, name: &str, v: Option<String>) -> &mut Self {
        self.text(name, &v)
    }
    fn int(&mut self, name: &str, v: Option<i32>) -> &mut Self {
        if let Some(i) = v {
            self.0.insert(name.to_string(), Value::Int(i64::from(i)));
        }
        self
    }
    fn money(&mut self, name: &str, v: &Option<pb::Money>) -> &mut Self {
        if let Some(m) = v {
            self.0.insert(
                name.to_string(),
                Value::Money(Money {
                    currency: m.currency_code.clone(),
                    minor_units: m.minor_units,
                }),
            );
        }
        self
    }
    fn list(&mut self, name: &str, v: &[String]) -> &mut Self {
        if !v.is_empty() {
            self.0.insert(name.to_string(), Value::List(v.to_vec()));
        }
        self
    }
    fn instant(&mut self, name: &str, v: &Option<Timestamp>) -> Result<&mut Self, Status> {
        if let Some(ts) = v {
            self.0
                .insert(name.to_string(), Value::Int(timestamp_to_ms(name, ts)?));
        }
        Ok(self)
    }
    fn done(&mut self) -> FieldMap {
        std::mem::take(&mut self.0)
    }
}

fn text(r: &Record, name: &str) -> Option<String> {
    r.fields
        .get(name)
        .and_then(Value::as_text)
        .map(str::to_string)
}

fn money(r: &Record, name: &str) -> Option<pb::Money> {
    r.fields
        .get(name)
        .and_then(Value::as_money)
        .map(|m| pb::Money {
            currency_code: m.currency.clone(),
            minor_units: m.minor_units,
        })
}

fn int32(r: &Record, name: &str) -> Option<i32> {
    r.fields
        .get(name)
        .and_then(Value::as_int)
        .and_then(|i| i32::try_from(i).ok())
}

fn list(r: &Record, name: &str) -> Vec<String> {
    r.fields
        .get(name)
        .and_then(Value::as_list)
        .map(<[String]>::to_vec)
        .unwrap_or_default()
}

fn instant(r: &Record, name: &str) -> Option<Timestamp> {
    r.fields
        .get(name)
        .and_then(Value::as_int)
        .map(ms_to_timestamp)
}

macro_rules! enum_conv {
    ($to_core:ident, $from_core:ident, $ty:ty, $prefix:literal) => {
        fn $to_core(field: &str, v: i32) -> Result<Option<String>, Status> {
            enum_to_core::<$ty>(field, v, |e| e.as_str_name(), $prefix)
        }
        fn $from_core(r: &Record, field: &str) -> i32 {
            enum_from_core(
                r.fields.get(field).and_then(Value::as_text),
                |n| <$ty>::from_str_name(n).map(|e| e as i32),
                $prefix,
            )
        }
    };
}

enum_conv!(
    lead_status_in,
    lead_status_out,
    pb::LeadStatus,
    "LEAD_STATUS_"
);
enum_conv!(
    stage_in,
    stage_out,
    pb::OpportunityStage,
    "OPPORTUNITY_STAGE_"
);
enum_conv!(
    case_status_in,
    case_status_out,
    pb::CaseStatus,
    "CASE_STATUS_"
);
enum_conv!(
    priority_in,
    priority_out,
    pb::CasePriority,
    "CASE_PRIORITY_"
);
enum_conv!(
    channel_in,
    channel_out,
    pb::ActivityChannel,
    "ACTIVITY_CHANNEL_"
);
enum_conv!(
    direction_in,
    direction_out,
    pb::ActivityDirection,
    "ACTIVITY_DIRECTION_"
);

pub fn lead_status_filter(v: i32) -> Result<Option<String>, Status> {
    lead_status_in("status", v)
}
pub fn stage_filter(v: i32) -> Result<Option<String>, Status> {
    stage_in("stage", v)
}
pub fn case_status_filter(v: i32) -> Result<Option<String>, Status> {
    case_status_in("status", v)
}
pub fn priority_filter(v: i32) -> Result<Option<String>, Status> {
    priority_in("priority", v)
}
pub fn channel_filter(v: i32) -> Result<Option<String>, Status> {
    channel_in("channel", v)
}

impl RecordMessage for pb::Account {
    const KIND: RecordKind = RecordKind::Account;
    fn to_fields(&self) -> Result<FieldMap, Status> {
        Ok(In::new()
            .text("name", &self.name)
            .text("domain", &self.domain)
            .text("vat_id", &self.vat_id)
            .text("industry", &self.industry)
            .text("phone", &self.phone)
            .text("email", &self.email)
            .text("website", &self.website)
            .text("street", &self.street)
            .text("city", &self.city)
            .text("postal_code", &self.postal_code)
            .text("country_code", &self.country_code)
            .list("tags", &self.tags)
            .money("annual_revenue", &self.annual_revenue)
            .text("description", &self.description)
            .done())
    }
    fn from_record(r: &Record) -> Self {
        pb::Account {
            meta: Some(meta_of(r)),
            name: text(r, "name"),
            domain: text(r, "domain"),
            vat_id: text(r, "vat_id"),
            industry: text(r, "industry"),
            phone: text(r, "phone"),
            email: text(r, "email"),
            website: text(r, "website"),
            street: text(r, "street"),
            city: text(r, "city"),
            postal_code: text(r, "postal_code"),
            country_code: text(r, "country_code"),
            tags: list(r, "tags"),
            annual_revenue: money(r, "annual_revenue"),
            description: text(r, "description"),
        }
    }
    fn meta(&self) -> Option<&pb::RecordMeta> {
        self.meta.as_ref()
    }
    fn clear_meta(&mut self) {
        self.meta = None;
    }
}

impl RecordMessage for pb::Contact {
    const KIND: RecordKind = RecordKind::Contact;
    fn to_fields(&self) -> Result<FieldMap, Status> {
        Ok(In::new()
            .text("account_id", &self.account_id)
            .text("first_name", &self.first_name)
            .text("last_name", &self.last_name)
            .text("email", &self.email)
            .text("phone", &self.phone)
            .text("mobile", &self.mobile)
            .text("title", &self.title)
            .text("department", &self.department)
            .text("description", &self.description)
            .done())
    }
    fn from_record(r: &Record) -> Self {
        pb::Contact {
            meta: Some(meta_of(r)),
            account_id: text(r, "account_id"),
            first_name: text(r, "first_name"),
            last_name: text(r, "last_name"),
            email: text(r, "email"),
            phone: text(r, "phone"),
            mobile: text(r, "mobile"),
            title: text(r, "title"),
            department: text(r, "department"),
            description: text(r, "description"),
        }
    }
    fn meta(&self) -> Option<&pb::RecordMeta> {
        self.meta.as_ref()
    }
    fn clear_meta(&mut self) {
        self.meta = None;
    }
}

impl RecordMessage for pb::Lead {
    const KIND: RecordKind = RecordKind::Lead;
    fn to_fields(&self) -> Result<FieldMap, Status> {
        Ok(In::new()
            .text("first_name", &self.first_name)
            .text("last_name", &self.last_name)
            .text("company", &self.company)
            .text("email", &self.email)
            .text("phone", &self.phone)
            .opt("status", lead_status_in("status", self.status)?)
            .text("source", &self.source)
            .text("description", &self.description)
            .done())
    }
    fn from_record(r: &Record) -> Self {
        pb::Lead {
            meta: Some(meta_of(r)),
            first_name: text(r, "first_name"),
            last_name: text(r, "last_name"),
            company: text(r, "company"),
            email: text(r, "email"),
            phone: text(r, "phone"),
            status: lead_status_out(r, "status"),
            source: text(r, "source"),
            description: text(r, "description"),
        }
    }
    fn meta(&self) -> Option<&pb::RecordMeta> {
        self.meta.as_ref()
    }
    fn clear_meta(&mut self) {
        self.meta = None;
    }
}

impl RecordMessage for pb::Opportunity {
    const KIND: RecordKind = RecordKind::Opportunity;
    fn to_fields(&self) -> Result<FieldMap, Status> {
        Ok(In::new()
            .text("account_id", &self.account_id)
            .text("name", &self.name)
            .opt("stage", stage_in("stage", self.stage)?)
            .money("amount", &self.amount)
            .int("probability", self.probability)
            .text("close_date", &self.close_date)
            .text("next_step", &self.next_step)
            .text("description", &self.description)
            .done())
    }
    fn from_record(r: &Record) -> Self {
        pb::Opportunity {
            meta: Some(meta_of(r)),
            account_id: text(r, "account_id"),
            name: text(r, "name"),
            stage: stage_out(r, "stage"),
            amount: money(r, "amount"),
            probability: int32(r, "probability"),
            close_date: text(r, "close_date"),
            next_step: text(r, "next_step"),
            description: text(r, "description"),
        }
    }
    fn meta(&self) -> Option<&pb::RecordMeta> {
        self.meta.as_ref()
    }
    fn clear_meta(&mut self) {
        self.meta = None;
    }
}

impl RecordMessage for pb::ServiceCase {
    const KIND: RecordKind = RecordKind::ServiceCase;
    fn to_fields(&self) -> Result<FieldMap, Status> {
        Ok(In::new()
            .text("account_id", &self.account_id)
            .text("contact_id", &self.contact_id)
            .text("subject", &self.subject)
            .text("description", &self.description)
            .opt("status", case_status_in("status", self.status)?)
            .opt("priority", priority_in("priority", self.priority)?)
            .text("assigned_org", &self.assigned_org)
            .text("due_date", &self.due_date)
            .done())
    }
    fn from_record(r: &Record) -> Self {
        pb::ServiceCase {
            meta: Some(meta_of(r)),
            account_id: text(r, "account_id"),
            contact_id: text(r, "contact_id"),
            subject: text(r, "subject"),
            description: text(r, "description"),
            status: case_status_out(r, "status"),
            priority: priority_out(r, "priority"),
            assigned_org: text(r, "assigned_org"),
            due_date: text(r, "due_date"),
        }
    }
    fn meta(&self) -> Option<&pb::RecordMeta> {
        self.meta.as_ref()
    }
    fn clear_meta(&mut self) {
        self.meta = None;
    }
}

impl RecordMessage for pb::Activity {
    const KIND: RecordKind = RecordKind::Activity;
    fn to_fields(&self) -> Result<FieldMap, Status> {
        Ok(In::new()
            .text("related_id", &self.related_id)
            .opt("channel", channel_in("channel", self.channel)?)
            .opt("direction", direction_in("direction", self.direction)?)
            .instant("occurred_at", &self.occurred_at)?
            .text("subject", &self.subject)
            .text("body", &self.body)
            .done())
    }
    fn from_record(r: &Record) -> Self {
        pb::Activity {
            meta: Some(meta_of(r)),
            related_id: text(r, "related_id"),
            channel: channel_out(r, "channel"),
            direction: direction_out(r, "direction"),
            occurred_at: instant(r, "occurred_at"),
            subject: text(r, "subject"),
            body: text(r, "body"),
        }
    }
    fn meta(&self) -> Option<&pb::RecordMeta> {
        self.meta.as_ref()
    }
    fn clear_meta(&mut self) {
        self.meta = None;
    }
}

/// Any record as the `AnyRecord` oneof.
pub fn any_record(r: &Record) -> pb::AnyRecord {
    use pb::any_record::Record as R;
    let record = match r.kind {
        RecordKind::Account => R::Account(pb::Account::from_record(r)),
        RecordKind::Contact => R::Contact(pb::Contact::from_record(r)),
        RecordKind::Lead => R::Lead(pb::Lead::from_record(r)),
        RecordKind::Opportunity => R::Opportunity(pb::Opportunity::from_record(r)),
        RecordKind::ServiceCase => R::ServiceCase(pb::ServiceCase::from_record(r)),
        RecordKind::Activity => R::Activity(pb::Activity::from_record(r)),
    };
    pb::AnyRecord {
        record: Some(record),
    }
}

/// The record inside an `AnyRecord`, as kind + field map + meta (for clients such as the CLI).
pub fn any_record_fields(a: &pb::AnyRecord) -> Option<(RecordKind, FieldMap, pb::RecordMeta)> {
    use pb::any_record::Record as R;
    fn parts<M: RecordMessage>(m: &M) -> Option<(RecordKind, FieldMap, pb::RecordMeta)> {
        Some((
            M::KIND,
            m.to_fields().ok()?,
            m.meta().cloned().unwrap_or_default(),
        ))
    }
    match a.record.as_ref()? {
        R::Account(m) => parts(m),
        R::Contact(m) => parts(m),
        R::Lead(m) => parts(m),
        R::Opportunity(m) => parts(m),
        R::ServiceCase(m) => parts(m),
        R::Activity(m) => parts(m),
    }
}

/// Builds a wire message from a field map (the inverse of `to_fields`), for clients.
pub fn message_from_fields<M: RecordMessage>(fields: &FieldMap) -> M {
    let r = Record {
        id: uuid::Uuid::nil(),
        kind: M::KIND,
        owner_org: String::new(),
        created_at_ms: 0,
        updated_at_ms: 0,
        deleted: None,
        seq: 0,
        fields: fields.clone(),
        versions: Default::default(),
    };
    let mut m = M::from_record(&r);
    m.clear_meta();
    m
}

/// A record id from a request: required, a UUID; the field is named when it is not.
pub fn parse_id(field: &str, id: &str) -> Result<uuid::Uuid, Status> {
    if id.trim().is_empty() {
        return Err(invalid(field, "is required"));
    }
    uuid::Uuid::parse_str(id.trim())
        .map_err(|_| invalid(field, format!("{id:?} is not a record id (UUID)")))
}

/// At most `max` characters of an input, for messages: an error never echoes a long input
/// whole (a 1 MB id would come back as a 1 MB message).
pub fn clip(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        None => s.to_string(),
        Some((cut, _)) => format!("{}…", &s[..cut]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invalid_names_the_field_in_text_and_details_clipped() {
        use tonic_types::StatusExt;
        let status = invalid("email", "is not a valid e-mail address");
        assert_eq!(status.message(), "email: is not a valid e-mail address");
        let bad = status.get_details_bad_request().unwrap();
        assert_eq!(bad.field_violations.len(), 1);
        assert_eq!(bad.field_violations[0].field, "email");
        assert_eq!(
            bad.field_violations[0].description,
            "is not a valid e-mail address"
        );
        let long = "x".repeat(10_000);
        let status = invalid(&long, &long);
        let bad = status.get_details_bad_request().unwrap();
        assert!(bad.field_violations[0].field.chars().count() <= 81);
        assert!(bad.field_violations[0].description.chars().count() <= MAX_MESSAGE + 1);
        assert!(status.details().len() < 2_000);
    }

    #[test]
    fn fields_round_trip_through_messages() {
        let mut f = FieldMap::new();
        f.insert("name".into(), Value::Text("Deal".into()));
        f.insert("stage".into(), Value::Text("closed_won".into()));
        f.insert("probability".into(), Value::Int(90));
        f.insert(
            "amount".into(),
            Value::Money(Money {
                currency: "EUR".into(),
                minor_units: 5000,
            }),
        );
        let m: pb::Opportunity = message_from_fields(&f);
        assert!(m.meta.is_none());
        assert_eq!(m.stage, pb::OpportunityStage::ClosedWon as i32);
        assert_eq!(m.to_fields().unwrap(), f);
    }

    #[test]
    fn unknown_enum_names_the_field() {
        let m = pb::Opportunity {
            stage: 42,
            ..Default::default()
        };
        let err = m.to_fields().unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument);
        assert!(err.message().starts_with("stage:"));
    }

    #[test]
    fn timestamps() {
        assert_eq!(timestamp_to_ms("t", &ms_to_timestamp(-1)).unwrap(), -1);
        assert_eq!(
            timestamp_to_ms("t", &ms_to_timestamp(1_795_424_400_250)).unwrap(),
            1_795_424_400_250
        );
        assert!(
            timestamp_to_ms(
                "t",
                &Timestamp {
                    seconds: i64::MAX,
                    nanos: 0
                }
            )
            .is_err()
        );
        assert!(
            timestamp_to_ms(
                "t",
                &Timestamp {
                    seconds: 0,
                    nanos: -1
                }
            )
            .is_err()
        );
    }
}
