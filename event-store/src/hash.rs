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
//! v3 is the same content keyed: `HMAC-SHA-256(key, "strata-event-chain-v3" ‖
//! previous hash ‖ position ‖ …)` with a [`ChainKey`] the database does not
//! hold (`STRATA_CHAIN_KEY`), so a database user who rewrites events cannot
//! recompute their hashes. A writer with a key seals v3; events written
//! before keep their v1/v2 hashes. A [`ChainKeyring`] lists the keys a
//! verifier accepts, oldest first: in log order, hashes may only move forward
//! through v1, v2, then each key of the ring (`crate::verify`).
//!
//! Canonical JSON sorts object keys and prints numbers the way `serde_json`
//! does, so a payload that went through PostgreSQL `jsonb` (which reorders keys
//! and drops whitespace) hashes the same as it did on append.

use hmac::{Hmac, Mac};
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

/// Computes the unkeyed chain hash of one event (v2: the position included).
pub fn chain_hash(input: HashInput<'_>) -> ChainHash {
    let mut hasher = Sha256::new();
    hasher.update(b"strata-event-chain-v2");
    hasher.update(input.previous.0);
    hasher.update(input.position.to_be_bytes());
    content(&mut hasher, &input);
    ChainHash(hasher.finalize().into())
}

/// The v1 hash of logs written before positions were covered.
pub fn legacy_chain_hash(input: HashInput<'_>) -> ChainHash {
    let mut hasher = Sha256::new();
    hasher.update(b"strata-event-chain-v1");
    hasher.update(input.previous.0);
    content(&mut hasher, &input);
    ChainHash(hasher.finalize().into())
}

/// The hash a writer seals an event with: v3 under `key`, else v2.
pub fn seal(key: Option<&ChainKey>, input: HashInput<'_>) -> ChainHash {
    match key {
        Some(key) => key.chain_hash(input),
        None => chain_hash(input),
    }
}

/// A secret that keys the chain (v3): at least [`ChainKey::MIN_CHARS`]
/// printable characters without spaces (`openssl rand -base64 48` makes one).
/// Its `Debug` never shows it.
#[derive(Clone)]
pub struct ChainKey {
    mac: Hmac<Sha256>,
}

impl std::fmt::Debug for ChainKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ChainKey(..)")
    }
}

impl ChainKey {
    /// The shortest secret accepted.
    pub const MIN_CHARS: usize = 32;

    /// Keys the chain with `secret`; refuses a short one or one holding
    /// spaces or control characters (the reason says which, never the secret).
    pub fn new(secret: &str) -> Result<Self, String> {
        let chars = secret.chars().count();
        if chars < Self::MIN_CHARS {
            return Err(format!("a chain key needs at least {} characters, this one has {chars}", Self::MIN_CHARS));
        }
        if secret.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err("a chain key may not hold spaces or control characters".into());
        }
        let mac = <Hmac<Sha256> as Mac>::new_from_slice(secret.as_bytes()).map_err(|err| err.to_string())?;
        Ok(Self { mac })
    }

    /// The keyed (v3) hash of one event.
    pub fn chain_hash(&self, input: HashInput<'_>) -> ChainHash {
        let mut mac = self.mac.clone();
        mac.update(b"strata-event-chain-v3");
        mac.update(&input.previous.0);
        mac.update(&input.position.to_be_bytes());
        content(&mut mac, &input);
        ChainHash(mac.finalize().into_bytes().into())
    }
}

/// The keys a verifier accepts, oldest first: the retired ones
/// (`STRATA_CHAIN_KEY_RETIRED`) then the current one (`STRATA_CHAIN_KEY`).
#[derive(Debug, Clone, Default)]
pub struct ChainKeyring {
    keys: Vec<ChainKey>,
}

impl ChainKeyring {
    /// A ring of `retired` keys (oldest first) and the `current` one.
    pub fn new(retired: Vec<ChainKey>, current: Option<ChainKey>) -> Self {
        Self { keys: retired.into_iter().chain(current).collect() }
    }

    /// No key: only unkeyed hashes can be checked.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// The generations a hash can have, oldest first: 1 (v1), 2 (v2), then
    /// 3 + i for the ring's key i.
    pub(crate) fn newest_generation(&self) -> usize {
        2 + self.keys.len()
    }

    /// The hash of `input` in `generation` (see [`Self::newest_generation`]).
    pub(crate) fn hash_in(&self, generation: usize, input: HashInput<'_>) -> ChainHash {
        match generation {
            0 | 1 => legacy_chain_hash(input),
            2 => chain_hash(input),
            keyed => self.keys[(keyed - 3).min(self.keys.len() - 1)].chain_hash(input),
        }
    }
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

fn content(hasher: &mut impl sha2::digest::Update, input: &HashInput<'_>) {
    hasher.update(input.event_id.as_bytes());
    field(hasher, input.stream_id.as_bytes());
    hasher.update(&input.stream_version.to_be_bytes());
    field(hasher, input.event_type.as_bytes());
    hasher.update(&input.schema_version.to_be_bytes());
    hasher.update(&input.recorded_at_micros.to_be_bytes());
    field(hasher, input.metadata_json.as_bytes());
    field(hasher, input.payload_json.as_bytes());
}

fn field(hasher: &mut impl sha2::digest::Update, bytes: &[u8]) {
    hasher.update(&(bytes.len() as u64).to_be_bytes());
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
        // v3 covers the same fields, and depends on the key.
        let key = ChainKey::new(&"k".repeat(32)).unwrap();
        let keyed = key.chain_hash(base);
        assert_ne!(keyed, reference);
        assert_ne!(keyed, ChainKey::new(&"j".repeat(32)).unwrap().chain_hash(base));
        assert_eq!(keyed, seal(Some(&key), base));
        assert_eq!(reference, seal(None, base));
        for variant in variants {
            assert_ne!(key.chain_hash(variant), keyed, "{variant:?}");
        }
    }

    #[test]
    fn chain_keys_are_long_printable_secrets_never_shown() {
        assert!(ChainKey::new(&"x".repeat(31)).unwrap_err().contains("at least 32"));
        assert!(ChainKey::new(&format!("{} {}", "x".repeat(20), "y".repeat(20))).unwrap_err().contains("spaces"));
        assert!(ChainKey::new(&format!("{}\u{0}", "x".repeat(40))).is_err());
        let secret = "s3cr3t-".repeat(6);
        let key = ChainKey::new(&secret).unwrap();
        assert!(!format!("{key:?}").contains("s3cr3t"));
        let ring = ChainKeyring::new(vec![], Some(key));
        assert!(!format!("{ring:?}").contains("s3cr3t"));
    }

    #[test]
    fn the_log_digest_covers_position_hash_and_everything_before() {
        let a = log_digest(&ChainHash::GENESIS, 1, &ChainHash([1; 32]));
        assert_ne!(a, log_digest(&ChainHash::GENESIS, 2, &ChainHash([1; 32])));
        assert_ne!(a, log_digest(&ChainHash::GENESIS, 1, &ChainHash([2; 32])));
        assert_ne!(log_digest(&a, 2, &ChainHash([3; 32])), log_digest(&ChainHash::GENESIS, 2, &ChainHash([3; 32])));
    }
}
