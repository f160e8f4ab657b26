//! Names and values as stored: collection and record ids, escaped field
//! names, and JSON ↔ BSON (integers as 64-bit integers, other numbers as
//! doubles).

use mongodb::bson::{Bson, Document as BsonDocument};
use serde_json::{Map, Number, Value};

use super::CHANGE_SLOTS;
use crate::projection::Document;
use crate::sink::DeadLetter;

/// `strata_<projection>_g<N>`
pub(super) fn collection_name(projection: &str, generation: u64) -> String {
    format!("strata_{projection}_g{generation}")
}

pub(super) fn change_id(seq: u64) -> String {
    format!("c:{}", seq % CHANGE_SLOTS)
}

/// A stored document's string `_id`.
pub(super) fn stored_id(stored: &BsonDocument) -> Option<String> {
    stored.get_str("_id").ok().map(str::to_owned)
}

pub(super) fn document_id(key: &str) -> String {
    format!("d:{key}")
}

pub(super) fn stream_id(stream: &str) -> String {
    format!("s:{stream}")
}

pub(super) fn entry_id(index: &str, member: &str) -> String {
    format!("i:{}:{index}:{member}", index.len())
}

pub(super) fn dead_id(letter: &DeadLetter) -> String {
    format!("x:{:020}:{}", letter.position, letter.event_id)
}

/// A stored number as `u64` (integers of any width, or whole doubles).
pub(super) fn number(value: Option<&Bson>) -> Option<u64> {
    match value? {
        Bson::Int32(n) => u64::try_from(*n).ok(),
        Bson::Int64(n) => u64::try_from(*n).ok(),
        Bson::Double(n) if n.fract() == 0.0 && *n >= 0.0 => Some(*n as u64),
        _ => None,
    }
}

pub(super) fn now_millis() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

pub(super) fn signed(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

/// Escapes a field name so that MongoDB takes it as one plain name.
pub(super) fn escape(name: &str) -> String {
    // An empty name is no valid update path ("f." refuses every commit of
    // the document, redelivered forever); a lone `%` cannot come from any
    // other name, since `%` itself is escaped.
    if name.is_empty() {
        return "%".to_owned();
    }
    let mut out = String::with_capacity(name.len());
    for c in name.chars() {
        match c {
            '%' => out.push_str("%25"),
            '.' => out.push_str("%2E"),
            '$' => out.push_str("%24"),
            '\0' => out.push_str("%00"),
            c => out.push(c),
        }
    }
    out
}

pub(super) fn unescape(name: &str) -> String {
    if name == "%" {
        return String::new();
    }
    if !name.contains('%') {
        return name.to_owned();
    }
    name.replace("%2E", ".").replace("%24", "$").replace("%00", "\0").replace("%25", "%")
}

/// JSON to BSON (see "Layout" for numbers and names).
pub(super) fn to_bson(value: &Value) -> Bson {
    match value {
        Value::Null => Bson::Null,
        Value::Bool(b) => Bson::Boolean(*b),
        Value::Number(n) => match n.as_i64() {
            Some(i) => Bson::Int64(i),
            None => Bson::Double(n.as_f64().unwrap_or(f64::NAN)),
        },
        Value::String(s) => Bson::String(s.clone()),
        Value::Array(items) => Bson::Array(items.iter().map(to_bson).collect()),
        Value::Object(fields) => Bson::Document(fields.iter().map(|(k, v)| (escape(k), to_bson(v))).collect()),
    }
}

pub(super) fn to_json(value: &Bson) -> Value {
    match value {
        Bson::Null | Bson::Undefined => Value::Null,
        Bson::Boolean(b) => Value::Bool(*b),
        Bson::Int32(i) => Value::from(*i),
        Bson::Int64(i) => Value::from(*i),
        Bson::Double(f) => Number::from_f64(*f).map_or(Value::Null, Value::Number),
        Bson::String(s) => Value::String(s.clone()),
        Bson::Array(items) => Value::Array(items.iter().map(to_json).collect()),
        Bson::Document(fields) => Value::Object(fields.iter().map(|(k, v)| (unescape(k), to_json(v))).collect::<Map<_, _>>()),
        other => other.clone().into_relaxed_extjson(),
    }
}

/// A stored read-model document (`None` without fields, as on Redis).
pub(super) fn parse_document(stored: &BsonDocument) -> Option<Document> {
    let fields = stored.get_document("f").ok()?;
    if fields.is_empty() {
        return None;
    }
    Some(fields.iter().map(|(k, v)| (unescape(k), to_json(v))).collect())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn field_names_and_values_round_trip() {
        let value =
            json!({"a.b": 1, "$x": [1, 2.5, null, "s", {"%": true, "n\u{0}ul": -3, "": "empty"}], "plain": {"deep.er": "v", "": {"": 0}}});
        assert_eq!(to_json(&to_bson(&value)), value);
        assert_eq!(
            (escape(""), unescape("%"), escape("%"), unescape(&escape("%"))),
            ("%".to_owned(), String::new(), "%25".to_owned(), "%".to_owned())
        );
        assert_eq!(escape("a.b$c%d\0"), "a%2Eb%24c%25d%00");
        assert_eq!(unescape(&escape("%2E.")), "%2E.");
    }
}
