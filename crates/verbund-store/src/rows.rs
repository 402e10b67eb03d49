//! The columns of stored rows as the database holds them and their decoding into the
//! domain types: record and change-log rows, versions and field maps as JSON, record kinds,
//! LIKE patterns, and what a resolved reference tells. Shared by both backends' SQL.

use super::*;

/// Escapes LIKE wildcards so user text matches literally (with `ESCAPE '\'`).
pub(crate) fn like_pattern(needle: &str) -> String {
    let mut p = String::with_capacity(needle.len() + 2);
    p.push('%');
    for c in needle.chars() {
        if matches!(c, '%' | '_' | '\\') {
            p.push('\\');
        }
        p.push(c);
    }
    p.push('%');
    p
}

pub(crate) fn kind_from_db(s: &str) -> Result<RecordKind> {
    RecordKind::parse(s).ok_or_else(|| StoreError::Corrupt(format!("unknown record kind {s:?}")))
}

/// The JSON object of field → version text. Written straight into one string: building a
/// map of strings first cost a partner taking in a share ~3% of its CPU.
pub(crate) fn versions_to_json(v: &BTreeMap<String, Hlc>) -> String {
    let mut out = String::with_capacity(2 + v.len() * 48);
    let mut text = String::with_capacity(48);
    out.push('{');
    for (i, (name, hlc)) in v.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        push_json_string(&mut out, name);
        out.push(':');
        text.clear();
        hlc.push_text(&mut text);
        push_json_string(&mut out, &text);
    }
    out.push('}');
    out
}

/// `s` as a JSON string literal (quoted and escaped as serde_json escapes it).
pub(crate) fn push_json_string(out: &mut String, s: &str) {
    if s.bytes()
        .all(|b| b >= 0x20 && b != b'"' && b != b'\\' && b != 0x7f)
    {
        out.push('"');
        out.push_str(s);
        out.push('"');
    } else {
        out.push_str(&serde_json::to_string(s).unwrap_or_else(|_| "\"\"".into()));
    }
}

pub(crate) fn versions_from_json(s: &str) -> Result<BTreeMap<String, Hlc>> {
    use serde::de::Deserializer as _;
    let mut de = serde_json::Deserializer::from_str(s);
    let versions = de
        .deserialize_map(VersionsVisitor)
        .and_then(|v| de.end().map(|()| v))
        .map_err(|e| StoreError::Corrupt(format!("versions: {e}")))?;
    Ok(versions)
}

/// Reads a versions object straight into `Hlc`s: each version's text is parsed where it
/// lies in the JSON (no `String` per version on the way; every record read decodes one).
pub(crate) struct VersionsVisitor;

impl<'de> serde::de::Visitor<'de> for VersionsVisitor {
    type Value = BTreeMap<String, Hlc>;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a map of field names to version texts")
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(
        self,
        mut map: A,
    ) -> std::result::Result<Self::Value, A::Error> {
        let mut out = BTreeMap::new();
        while let Some(name) = map.next_key::<String>()? {
            let version = map.next_value::<HlcText>()?.0;
            out.insert(name, version);
        }
        Ok(out)
    }
}

/// One version's text, parsed from the JSON string as it lies (borrowed unless escaped).
pub(crate) struct HlcText(Hlc);

impl<'de> serde::Deserialize<'de> for HlcText {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct TextVisitor;
        impl<'de> serde::de::Visitor<'de> for TextVisitor {
            type Value = HlcText;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a version text")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> std::result::Result<HlcText, E> {
                v.parse::<Hlc>().map(HlcText).map_err(E::custom)
            }
        }
        d.deserialize_str(TextVisitor)
    }
}

pub(crate) fn fields_to_json<T: serde::Serialize>(f: &T) -> Result<String> {
    serde_json::to_string(f).map_err(|e| StoreError::Corrupt(format!("fields: {e}")))
}

/// The raw columns of a `records` row.
pub(crate) struct RecordRow {
    pub(crate) id: String,
    pub(crate) kind: String,
    pub(crate) owner_org: String,
    pub(crate) created_at_ms: i64,
    pub(crate) updated_at_ms: i64,
    pub(crate) deleted_version: Option<String>,
    pub(crate) seq: i64,
    pub(crate) fields: String,
    pub(crate) versions: String,
}

impl RecordRow {
    pub(crate) fn into_record(self) -> Result<Record> {
        let fields: FieldMap = serde_json::from_str(&self.fields)
            .map_err(|e| StoreError::Corrupt(format!("fields of {}: {e}", self.id)))?;
        Ok(Record {
            id: Uuid::parse_str(&self.id)
                .map_err(|e| StoreError::Corrupt(format!("id {}: {e}", self.id)))?,
            kind: kind_from_db(&self.kind)?,
            owner_org: self.owner_org,
            created_at_ms: self.created_at_ms,
            updated_at_ms: self.updated_at_ms,
            deleted: self
                .deleted_version
                .map(|v| v.parse::<Hlc>())
                .transpose()
                .map_err(|e| StoreError::Corrupt(e.to_string()))?,
            seq: self.seq,
            fields,
            versions: versions_from_json(&self.versions)?,
        })
    }
}

pub(crate) struct ChangeRow {
    pub(crate) seq: i64,
    pub(crate) record_id: String,
    pub(crate) kind: String,
    pub(crate) op: String,
    pub(crate) hlc: String,
    pub(crate) fields: String,
    pub(crate) at_ms: i64,
}

impl ChangeRow {
    pub(crate) fn into_change(self) -> Result<Change> {
        Ok(Change {
            seq: self.seq,
            record_id: Uuid::parse_str(&self.record_id)
                .map_err(|e| StoreError::Corrupt(e.to_string()))?,
            kind: kind_from_db(&self.kind)?,
            op: ChangeOp::parse(&self.op)
                .ok_or_else(|| StoreError::Corrupt(format!("change op {:?}", self.op)))?,
            hlc: self
                .hlc
                .parse()
                .map_err(|e: verbund_core::hlc::ParseHlcError| {
                    StoreError::Corrupt(e.to_string())
                })?,
            fields: serde_json::from_str(&self.fields)
                .map_err(|e| StoreError::Corrupt(format!("change fields: {e}")))?,
            at_ms: self.at_ms,
        })
    }
}

/// What a resolved reference told us.
pub(crate) struct RefTarget {
    pub(crate) kind: RecordKind,
    pub(crate) account_id: Option<String>,
}

pub(crate) fn ref_error(r: &RefCheck, found: Option<&RefTarget>) -> DomainError {
    let wanted: Vec<&str> = r.kinds.iter().map(|k| k.as_str()).collect();
    match found {
        None => DomainError::invalid(
            r.field,
            format!("no {} with id {}", wanted.join(" or "), r.id),
        ),
        Some(t) => DomainError::invalid(
            r.field,
            format!("{} is a {}, not a {}", r.id, t.kind, wanted.join(" or ")),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_are_written_as_serde_json_writes_the_map_of_their_texts() {
        let mut v = BTreeMap::new();
        v.insert(
            "name".to_string(),
            Hlc::new(1_764_000_000_123, 3, "acme/node1"),
        );
        v.insert(
            "a \"quoted\" \\ field\n".to_string(),
            Hlc::new(5, 0, "n\u{1}\u{7f}ü"),
        );
        v.insert("ü".to_string(), Hlc::new(u64::MAX, u32::MAX, "x"));
        for versions in [BTreeMap::new(), v] {
            let texts: BTreeMap<&String, String> =
                versions.iter().map(|(k, h)| (k, h.to_string())).collect();
            let written = versions_to_json(&versions);
            assert_eq!(written, serde_json::to_string(&texts).unwrap());
            assert_eq!(versions_from_json(&written).unwrap(), versions);
        }
    }

    #[test]
    fn like_escapes_wildcards() {
        assert_eq!(like_pattern("50%_a\\b"), "%50\\%\\_a\\\\b%");
    }

    #[test]
    fn versions_json_round_trip() {
        let mut v = BTreeMap::new();
        v.insert("name".to_string(), Hlc::new(5, 1, "acme/n1"));
        assert_eq!(versions_from_json(&versions_to_json(&v)).unwrap(), v);
        assert!(versions_from_json("{\"name\": \"bogus\"}").is_err());
        for bad in [
            "[]",
            "{\"name\": 5}",
            "{} x",
            "{\"name\": \"0000000000000005.00000001.n\"",
            "",
        ] {
            assert!(versions_from_json(bad).is_err(), "{bad:?}");
        }
        // Escaped text is read as well as borrowed text.
        assert_eq!(
            versions_from_json("{\"name\": \"0000000000000005.00000001.acme\\/n1\"}").unwrap(),
            v
        );
    }

    #[test]
    fn partner_status_keeps_its_stored_name() {
        assert_eq!(PartnerStatus::Active.as_str(), "active");
        assert_eq!(PartnerStatus::parse("active"), Some(PartnerStatus::Active));
        assert_eq!(PartnerStatus::parse("Active"), None);
    }
}
