//! What the CLI prints: readable tables by default, JSON with `--json`.

use verbund_core::{FieldMap, RecordKind, schema};
use verbund_node::pb;

/// A record as the CLI shows it.
pub struct Shown {
    pub kind: RecordKind,
    pub fields: FieldMap,
    pub meta: pb::RecordMeta,
}

fn ts(t: &Option<prost_types::Timestamp>) -> String {
    t.as_ref()
        .map(|t| {
            verbund_core::civil::format_rfc3339_ms(
                t.seconds * 1000 + i64::from(t.nanos / 1_000_000),
            )
        })
        .unwrap_or_default()
}

fn value_text(kind: RecordKind, name: &str, fields: &FieldMap) -> String {
    match (schema::field(kind, name), fields.get(name)) {
        (Some(spec), Some(v)) => schema::display_value(spec, v),
        _ => String::new(),
    }
}

pub fn to_json(r: &Shown) -> serde_json::Value {
    serde_json::json!({
        "kind": r.kind.as_str(),
        "id": r.meta.id,
        "owner_org": r.meta.owner_org,
        "create_time": ts(&r.meta.create_time),
        "update_time": ts(&r.meta.update_time),
        "seq": r.meta.seq,
        "deleted": r.meta.deleted,
        "fields": r.fields,
    })
}

pub fn print_record(r: &Shown, json: bool) {
    if json {
        println!("{}", to_json(r));
        return;
    }
    let deleted = if r.meta.deleted { " [deleted]" } else { "" };
    println!("{} {}{deleted}", r.kind, r.meta.id);
    println!("  {:<14} {}", "owner", r.meta.owner_org);
    println!("  {:<14} {}", "created", ts(&r.meta.create_time));
    println!(
        "  {:<14} {} (change {})",
        "updated",
        ts(&r.meta.update_time),
        r.meta.seq
    );
    for spec in schema::fields(r.kind) {
        if r.fields.contains_key(spec.name) {
            println!(
                "  {:<14} {}",
                spec.name,
                value_text(r.kind, spec.name, &r.fields)
            );
        }
    }
}

/// The columns a list of this kind shows.
fn columns(kind: RecordKind) -> &'static [&'static str] {
    match kind {
        RecordKind::Account => &["name", "domain", "city", "country_code"],
        RecordKind::Contact => &["last_name", "first_name", "email", "phone"],
        RecordKind::Lead => &["last_name", "company", "email", "status"],
        RecordKind::Opportunity => &["name", "stage", "amount", "close_date"],
        RecordKind::ServiceCase => &["subject", "status", "priority", "assigned_org"],
        RecordKind::Activity => &["channel", "direction", "occurred_at", "subject"],
    }
}

fn truncate(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        s.to_string()
    } else {
        format!("{}…", s.chars().take(max - 1).collect::<String>())
    }
}

pub fn print_list(kind: RecordKind, records: &[Shown], json: bool) {
    if json {
        println!(
            "{}",
            serde_json::Value::Array(records.iter().map(to_json).collect())
        );
        return;
    }
    let cols = columns(kind);
    let mut rows: Vec<Vec<String>> = vec![
        std::iter::once("id".to_string())
            .chain(cols.iter().map(|c| c.to_string()))
            .collect(),
    ];
    for r in records {
        let mut row = vec![r.meta.id.clone()];
        row.extend(
            cols.iter()
                .map(|c| truncate(&value_text(kind, c, &r.fields), 40)),
        );
        rows.push(row);
    }
    print_table(&rows);
    println!(
        "({} {})",
        records.len(),
        if records.len() == 1 {
            "record"
        } else {
            "records"
        }
    );
}

pub fn print_mixed(records: &[Shown], json: bool) {
    if json {
        println!(
            "{}",
            serde_json::Value::Array(records.iter().map(to_json).collect())
        );
        return;
    }
    let mut rows = vec![vec![
        "kind".to_string(),
        "id".to_string(),
        "summary".to_string(),
    ]];
    for r in records {
        let summary: Vec<String> = columns(r.kind)
            .iter()
            .map(|c| value_text(r.kind, c, &r.fields))
            .filter(|s| !s.is_empty())
            .collect();
        rows.push(vec![
            r.kind.to_string(),
            r.meta.id.clone(),
            truncate(&summary.join(" · "), 70),
        ]);
    }
    print_table(&rows);
    println!("({} found)", records.len());
}

fn print_table(rows: &[Vec<String>]) {
    let n = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..n)
        .map(|i| {
            rows.iter()
                .filter_map(|r| r.get(i))
                .map(|c| c.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    for row in rows {
        let line: Vec<String> = row
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{c:<w$}", w = widths[i]))
            .collect();
        println!("{}", line.join("  ").trim_end());
    }
}

pub fn print_event(ev: &pb::ChangeEvent, json: bool) {
    let op = pb::ChangeOp::try_from(ev.op)
        .map(|o| {
            o.as_str_name()
                .trim_start_matches("CHANGE_OP_")
                .to_lowercase()
        })
        .unwrap_or_default();
    let kind = pb::RecordKind::try_from(ev.kind)
        .map(|k| {
            k.as_str_name()
                .trim_start_matches("RECORD_KIND_")
                .to_lowercase()
        })
        .unwrap_or_default();
    if json {
        println!(
            "{}",
            serde_json::json!({"seq": ev.seq, "kind": kind, "record_id": ev.record_id, "op": op, "changed_fields": ev.changed_fields, "change_time": ts(&ev.change_time)})
        );
    } else {
        println!(
            "#{:<6} {:<7} {:<12} {}  {}",
            ev.seq,
            op,
            kind,
            ev.record_id,
            ev.changed_fields.join(",")
        );
    }
}

pub fn print_fields(kind: RecordKind) {
    println!("fields of {kind}:");
    for f in schema::fields(kind) {
        let ty = match f.ty {
            schema::FieldType::Text { max } => format!("text (≤ {max})"),
            schema::FieldType::Enum(values) => values.join(" | "),
            schema::FieldType::Int { min, max } => format!("whole number {min}..{max}"),
            schema::FieldType::Money => "amount with currency, e.g. \"1200.50 EUR\"".into(),
            schema::FieldType::Date => "date YYYY-MM-DD".into(),
            schema::FieldType::Instant => "time, RFC 3339".into(),
            schema::FieldType::Ref(kinds) => format!(
                "id of {}",
                kinds
                    .iter()
                    .map(|k| k.as_str())
                    .collect::<Vec<_>>()
                    .join(" or ")
            ),
            schema::FieldType::Tags => "comma-separated tags".into(),
            other => format!("{other:?}").to_lowercase(),
        };
        println!("  {:<14} {ty}", f.name);
    }
}

fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code::*;
    match code {
        Ok => "OK",
        Cancelled => "CANCELLED",
        Unknown => "UNKNOWN",
        InvalidArgument => "INVALID_ARGUMENT",
        DeadlineExceeded => "DEADLINE_EXCEEDED",
        NotFound => "NOT_FOUND",
        AlreadyExists => "ALREADY_EXISTS",
        PermissionDenied => "PERMISSION_DENIED",
        ResourceExhausted => "RESOURCE_EXHAUSTED",
        FailedPrecondition => "FAILED_PRECONDITION",
        Aborted => "ABORTED",
        OutOfRange => "OUT_OF_RANGE",
        Unimplemented => "UNIMPLEMENTED",
        Internal => "INTERNAL",
        Unavailable => "UNAVAILABLE",
        DataLoss => "DATA_LOSS",
        Unauthenticated => "UNAUTHENTICATED",
    }
}

/// Errors print the gRPC status and message when there is one.
pub fn print_error(e: &anyhow::Error) {
    if let Some(status) = e.downcast_ref::<tonic::Status>() {
        use verbund_node::dial::{TlsRefusal, tls_refusal};
        match tls_refusal(status) {
            Some(TlsRefusal::CertificateRequired) => eprintln!(
                "error: the node requires a client certificate: set [client] cert and key in node.toml (or VERBUND_CONFIG), issued by `verbund cert issue`"
            ),
            Some(TlsRefusal::CertificateRefused) => eprintln!(
                "error: the node refused our client certificate (not issued by a CA it trusts, or revoked)"
            ),
            None => eprintln!("error: {}: {}", code_name(status.code()), status.message()),
        }
    } else {
        eprintln!("error: {e:#}");
    }
}
