//! Tamper evidence: the chain hash of an event and the canonical JSON it is
//! computed over.
//!
//! `hash = SHA-256("strata-event-chain-v2" ‖ previous hash ‖ global position ‖
//! event id ‖ stream id ‖ stream version ‖ event type ‖ schema version ‖
//! recorded-at (µs) ‖ canonical metadata ‖ canonical payload)`, every
//! variable-length field prefixed with its length: every stored column but the
//! category, which is the stream id's prefix and checked against it. The
//! previous hash of a stream's first event is all zeroes. Positions are taken
//! before the batch is planned (the log head is locked first), so moving an
//! event to another position breaks its hash.
//!
//! Logs written before v2 hold v1 hashes (`"strata-event-chain-v1"`, no
//! position); [`legacy_chain_hash`] verifies those, and a v1 hash after the
//! first v2 one in log order is refused (`crate::verify`).
//!
//! Canonical JSON sorts object keys and prints numbers the way `serde_json`
//! does, so a payload that went through PostgreSQL `jsonb` (which reorders keys
//! and drops whitespace) hashes the same as it did on append.

use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::ChainHash;

/// The fields an event's chain hash covers.
#[derive(Debug, Clone, Copy)]
pub struct HashInput<'a> {
    /// Hash of the previous event of the stream ([`ChainHash::GENESIS`] for the first).
    pub previous: &'a ChainHash,
    /// The event's global position (not covered by v1 hashes).
    pub position: u64,
    /// The event id.
    pub event_id: &'a uuid::Uuid,
    /// The stream id.
    pub stream_id: &'a str,
    /// The event's version in its stream.
    pub stream_version: u64,
    /// The event type.
    pub event_type: &'a str,
    /// The schema version as stored.
    pub schema_version: u32,
    /// Recorded time in microseconds since the Unix epoch.
    pub recorded_at_micros: i64,
    /// [`canonical_json`] of the metadata.
    pub metadata_json: &'a str,
    /// [`canonical_json`] of the payload as stored.
    pub payload_json: &'a str,
}

/// Computes the chain hash of one event (v2: the position included).
pub fn chain_hash(input: HashInput<'_>) -> ChainHash {
    let mut hasher = Sha256::new();
    hasher.update(b"strata-event-chain-v2");
    hasher.update(input.previous.0);
    hasher.update(input.position.to_be_bytes());
    content(hasher, &input)
}

/// The v1 hash of logs written before positions were covered.
pub fn legacy_chain_hash(input: HashInput<'_>) -> ChainHash {
    let mut hasher = Sha256::new();
    hasher.update(b"strata-event-chain-v1");
    hasher.update(input.previous.0);
    content(hasher, &input)
}

/// The running digest of the log up to an event: `SHA-256("strata-log-v1" ‖
/// digest before it ‖ position ‖ its stored hash)`, from all zeroes. An
/// anchor keeps it for a position; no prefix of another content has it.
pub fn log_digest(before: &ChainHash, position: u64, hash: &ChainHash) -> ChainHash {
    let mut hasher = Sha256::new();
    hasher.update(b"strata-log-v1");
    hasher.update(before.0);
    hasher.update(position.to_be_bytes());
    hasher.update(hash.0);
    ChainHash(hasher.finalize().into())
}

fn content(mut hasher: Sha256, input: &HashInput<'_>) -> ChainHash {
    hasher.update(input.event_id.as_bytes());
    field(&mut hasher, input.stream_id.as_bytes());
    hasher.update(input.stream_version.to_be_bytes());
    field(&mut hasher, input.event_type.as_bytes());
    hasher.update(input.schema_version.to_be_bytes());
    hasher.update(input.recorded_at_micros.to_be_bytes());
    field(&mut hasher, input.metadata_json.as_bytes());
    field(&mut hasher, input.payload_json.as_bytes());
    ChainHash(hasher.finalize().into())
}

fn field(hasher: &mut Sha256, bytes: &[u8]) {
    hasher.update((bytes.len() as u64).to_be_bytes());
    hasher.update(bytes);
}

/// JSON text with object keys sorted at every level and no whitespace.
pub fn canonical_json(value: &Value) -> String {
    let mut out = String::new();
    write_canonical(value, &mut out);
    out
}

fn write_canonical(value: &Value, out: &mut String) {
    match value {
        Value::Object(map) => {
            let mut entries: Vec<(&String, &Value)> = map.iter().collect();
            entries.sort_unstable_by(|a, b| a.0.cmp(b.0));
            out.push('{');
            for (index, (key, value)) in entries.into_iter().enumerate() {
                if index > 0 {
                    out.push(',');
                }
                write_string(key, out);
                out.push(':');
                write_canonical(value, out);
            }
            out.push('}');
        }
        Value::Array(items) => {
            out.push('[');
            for (index, item) in items.iter().enumerate() {
                if index > 0 {
                    out.push(',');
                }
                write_canonical(item, out);
            }
            out.push(']');
        }
        Value::String(text) => write_string(text, out),
        scalar => out.push_str(&scalar.to_string()),
    }
}

fn write_string(text: &str, out: &mut String) {
    // serde_json's escaping of a string never fails.
    out.push_str(&serde_json::to_string(text).unwrap_or_default());
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn canonical_json_sorts_keys_at_every_level() {
        let value: Value = serde_json::from_str(r#"{"b":1,"a":{"d":[{"z":1,"y":2}],"c":"x"}}"#).unwrap();
        assert_eq!(canonical_json(&value), r#"{"a":{"c":"x","d":[{"y":2,"z":1}]},"b":1}"#);
    }

    #[test]
    fn canonical_json_survives_a_text_round_trip() {
        let value = json!({"price": 12.5, "big": 1e20, "tiny": 1.5e-7, "n": -3, "s": "é\"\n"});
        let text = canonical_json(&value);
        let again: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(canonical_json(&again), text);
    }

    #[test]
    fn any_field_change_changes_the_hash() {
        let id = uuid::Uuid::nil();
        let base = HashInput {
            previous: &ChainHash::GENESIS,
            position: 7,
            event_id: &id,
            stream_id: "order-1",
            stream_version: 1,
            event_type: "OrderPlaced",
            schema_version: 2,
            recorded_at_micros: 1,
            metadata_json: "{}",
            payload_json: r#"{"a":1}"#,
        };
        let reference = chain_hash(base);
        let previous = ChainHash([1; 32]);
        let variants = [
            HashInput { previous: &previous, ..base },
            HashInput { position: 8, ..base },
            HashInput { stream_id: "order-2", ..base },
            HashInput { stream_version: 2, ..base },
            HashInput { event_type: "OrderPlacedX", ..base },
            HashInput { schema_version: 1, ..base },
            HashInput { recorded_at_micros: 2, ..base },
            HashInput { metadata_json: r#"{"actor":"x"}"#, ..base },
            HashInput { payload_json: r#"{"a":2}"#, ..base },
        ];
        for variant in variants {
            assert_ne!(chain_hash(variant), reference, "{variant:?}");
        }
        // v1 ignores the position and differs from v2.
        assert_eq!(legacy_chain_hash(base), legacy_chain_hash(HashInput { position: 8, ..base }));
        assert_ne!(legacy_chain_hash(base), reference);
    }

    #[test]
    fn the_log_digest_covers_position_hash_and_everything_before() {
        let a = log_digest(&ChainHash::GENESIS, 1, &ChainHash([1; 32]));
        assert_ne!(a, log_digest(&ChainHash::GENESIS, 2, &ChainHash([1; 32])));
        assert_ne!(a, log_digest(&ChainHash::GENESIS, 1, &ChainHash([2; 32])));
        assert_ne!(log_digest(&a, 2, &ChainHash([3; 32])), log_digest(&ChainHash::GENESIS, 2, &ChainHash([3; 32])));
    }
}
