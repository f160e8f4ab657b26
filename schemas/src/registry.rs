//! [`SchemaRegistry`]: compiled JSON Schemas per (event type, version) and the
//! upcasters between consecutive versions.
//!
//! Guarantees: a registry built successfully has, for every event type, a schema
//! for every version from 1 to its latest and an upcaster from every version
//! below the latest to the next, so [`SchemaRegistry::upcast`] always reaches
//! the latest version or reports the payload that an upcaster could not convert.

use std::collections::{BTreeMap, HashMap};
use std::fmt;

use serde_json::Value;

/// Converts a payload of version N into version N+1 of the same event type.
///
/// Upcasters are pure functions: no IO, no clock. An upcaster that cannot
/// convert a payload (because it is not a valid version-N payload) returns an
/// error message, which the reader surfaces as [`UpcastError::Failed`].
pub type Upcaster = fn(Value) -> Result<Value, String>;

/// One schema violation: where in the payload and what is wrong there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    /// JSON Pointer to the offending value in the payload (`""` for the root).
    pub path: String,
    /// What the schema expected, in words.
    pub message: String,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let path = if self.path.is_empty() { "/" } else { &self.path };
        write!(f, "{path}: {}", self.message)
    }
}

/// Why a payload was refused or a registry could not be built.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum SchemaError {
    /// No schema is registered for this event type.
    #[error("unknown event type {event_type:?}")]
    UnknownEventType {
        /// The type that was asked for.
        event_type: String,
    },
    /// The event type is known but not at this version.
    #[error("unknown version {version} of event type {event_type} (latest is {latest})")]
    UnknownVersion {
        /// The event type.
        event_type: String,
        /// The version that was asked for.
        version: u32,
        /// The latest registered version of the type.
        latest: u32,
    },
    /// The payload does not match the schema; every violation is listed.
    #[error("payload of {event_type} v{version} does not match its schema: {}", join(violations))]
    InvalidPayload {
        /// The event type.
        event_type: String,
        /// The version the payload was validated against.
        version: u32,
        /// Every violation found, each naming the field.
        violations: Vec<Violation>,
    },
    /// A schema file is not a valid JSON Schema (a programming error, found at start-up).
    #[error("schema of {event_type} v{version} is invalid: {reason}")]
    InvalidSchema {
        /// The event type.
        event_type: String,
        /// The version whose schema is broken.
        version: u32,
        /// What is wrong with it.
        reason: String,
    },
    /// The registered versions or upcasters of a type leave a hole.
    #[error("event type {event_type} is incomplete: {reason}")]
    Incomplete {
        /// The event type.
        event_type: String,
        /// Which version or upcaster is missing.
        reason: String,
    },
}

/// An event read from the log could not be brought to the latest version.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum UpcastError {
    /// The stored type or version is not in the registry.
    #[error(transparent)]
    Unknown(#[from] SchemaError),
    /// An upcaster refused the stored payload.
    #[error("upcasting {event_type} from v{from_version} failed: {reason}")]
    Failed {
        /// The event type.
        event_type: String,
        /// The version the failing upcaster starts from.
        from_version: u32,
        /// The upcaster's message.
        reason: String,
    },
}

fn join(violations: &[Violation]) -> String {
    violations.iter().map(ToString::to_string).collect::<Vec<_>>().join("; ")
}

struct EventTypeEntry {
    validators: BTreeMap<u32, jsonschema::Validator>,
    upcasters: BTreeMap<u32, Upcaster>,
    latest: u32,
}

/// Compiled schemas and upcasters for a set of event types. Cheap to share
/// behind an `Arc`; validation and upcasting take `&self`.
pub struct SchemaRegistry {
    types: HashMap<String, EventTypeEntry>,
}

impl fmt::Debug for SchemaRegistry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut types: Vec<_> = self.types.iter().map(|(name, entry)| (name.as_str(), entry.latest)).collect();
        types.sort_unstable();
        f.debug_struct("SchemaRegistry").field("types", &types).finish()
    }
}

/// Collects schemas and upcasters; [`SchemaRegistryBuilder::build`] checks that
/// every type is complete.
#[derive(Default)]
pub struct SchemaRegistryBuilder {
    schemas: BTreeMap<(String, u32), Value>,
    upcasters: BTreeMap<(String, u32), Upcaster>,
    errors: Vec<SchemaError>,
}

impl SchemaRegistryBuilder {
    /// Registers the JSON Schema (as JSON text) of `event_type` at `version`
    /// (versions start at 1).
    pub fn schema(mut self, event_type: &str, version: u32, schema_json: &str) -> Self {
        match serde_json::from_str::<Value>(schema_json) {
            Ok(schema) => {
                self.schemas.insert((event_type.to_owned(), version), schema);
            }
            Err(err) => {
                self.errors.push(SchemaError::InvalidSchema { event_type: event_type.to_owned(), version, reason: err.to_string() })
            }
        }
        self
    }

    /// Registers the upcaster from `from_version` to `from_version + 1`.
    pub fn upcaster(mut self, event_type: &str, from_version: u32, upcaster: Upcaster) -> Self {
        self.upcasters.insert((event_type.to_owned(), from_version), upcaster);
        self
    }

    /// Compiles every schema and checks that versions 1..=latest all have a
    /// schema and versions 1..latest all have an upcaster.
    pub fn build(self) -> Result<SchemaRegistry, SchemaError> {
        if let Some(err) = self.errors.into_iter().next() {
            return Err(err);
        }
        let mut types: HashMap<String, EventTypeEntry> = HashMap::new();
        for ((event_type, version), schema) in self.schemas {
            if version == 0 {
                return Err(SchemaError::Incomplete { event_type, reason: "versions start at 1".into() });
            }
            let validator = jsonschema::options()
                .should_validate_formats(true)
                .build(&schema)
                .map_err(|err| SchemaError::InvalidSchema { event_type: event_type.clone(), version, reason: err.to_string() })?;
            let entry = types.entry(event_type).or_insert_with(|| EventTypeEntry {
                validators: BTreeMap::new(),
                upcasters: BTreeMap::new(),
                latest: 0,
            });
            entry.latest = entry.latest.max(version);
            entry.validators.insert(version, validator);
        }
        for ((event_type, from_version), upcaster) in self.upcasters {
            let Some(entry) = types.get_mut(&event_type) else {
                return Err(SchemaError::Incomplete { event_type, reason: "an upcaster is registered but no schema".into() });
            };
            entry.upcasters.insert(from_version, upcaster);
        }
        for (event_type, entry) in &types {
            for version in 1..=entry.latest {
                if !entry.validators.contains_key(&version) {
                    return Err(SchemaError::Incomplete { event_type: event_type.clone(), reason: format!("no schema for v{version}") });
                }
                if version < entry.latest && !entry.upcasters.contains_key(&version) {
                    return Err(SchemaError::Incomplete {
                        event_type: event_type.clone(),
                        reason: format!("no upcaster from v{version} to v{}", version + 1),
                    });
                }
            }
            if let Some(&from) = entry.upcasters.keys().find(|&&from| from >= entry.latest) {
                return Err(SchemaError::Incomplete {
                    event_type: event_type.clone(),
                    reason: format!("upcaster from v{from} leads past the latest version"),
                });
            }
        }
        Ok(SchemaRegistry { types })
    }
}

impl SchemaRegistry {
    /// Starts an empty registry.
    pub fn builder() -> SchemaRegistryBuilder {
        SchemaRegistryBuilder::default()
    }

    fn entry(&self, event_type: &str) -> Result<&EventTypeEntry, SchemaError> {
        self.types.get(event_type).ok_or_else(|| SchemaError::UnknownEventType { event_type: event_type.to_owned() })
    }

    /// The latest version of `event_type`.
    pub fn latest_version(&self, event_type: &str) -> Result<u32, SchemaError> {
        Ok(self.entry(event_type)?.latest)
    }

    /// Every registered event type, sorted.
    pub fn event_types(&self) -> Vec<&str> {
        let mut names: Vec<&str> = self.types.keys().map(String::as_str).collect();
        names.sort_unstable();
        names
    }

    /// Checks `payload` against the schema of `event_type` at `version`.
    /// Every violation is reported with the JSON Pointer of the field.
    pub fn validate(&self, event_type: &str, version: u32, payload: &Value) -> Result<(), SchemaError> {
        let entry = self.entry(event_type)?;
        let validator = entry.validators.get(&version).ok_or_else(|| SchemaError::UnknownVersion {
            event_type: event_type.to_owned(),
            version,
            latest: entry.latest,
        })?;
        if validator.is_valid(payload) {
            return Ok(());
        }
        let violations = validator
            .iter_errors(payload)
            .map(|err| Violation { path: err.instance_path().to_string(), message: err.to_string() })
            .collect();
        Err(SchemaError::InvalidPayload { event_type: event_type.to_owned(), version, violations })
    }

    /// Brings a payload stored as `version` to the latest version of its type,
    /// returning that version and the converted payload. A payload already at
    /// the latest version is returned untouched.
    pub fn upcast(&self, event_type: &str, version: u32, payload: Value) -> Result<(u32, Value), UpcastError> {
        let entry = self.entry(event_type)?;
        if version == 0 || version > entry.latest {
            return Err(SchemaError::UnknownVersion { event_type: event_type.to_owned(), version, latest: entry.latest }.into());
        }
        let mut payload = payload;
        for from_version in version..entry.latest {
            let upcaster = entry.upcasters[&from_version];
            payload =
                upcaster(payload).map_err(|reason| UpcastError::Failed { event_type: event_type.to_owned(), from_version, reason })?;
        }
        Ok((entry.latest, payload))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const V1: &str = r#"{"type":"object","required":["n"],"properties":{"n":{"type":"integer","minimum":0}},"additionalProperties":false}"#;
    const V2: &str = r#"{"type":"object","required":["count"],"properties":{"count":{"type":"integer"}},"additionalProperties":false}"#;

    fn rename(payload: Value) -> Result<Value, String> {
        let n = payload.get("n").cloned().ok_or("missing n")?;
        Ok(json!({ "count": n }))
    }

    fn registry() -> SchemaRegistry {
        SchemaRegistry::builder().schema("Counted", 1, V1).schema("Counted", 2, V2).upcaster("Counted", 1, rename).build().unwrap()
    }

    #[test]
    fn invalid_payload_names_the_offending_field() {
        let err = registry().validate("Counted", 1, &json!({ "n": -3 })).unwrap_err();
        let SchemaError::InvalidPayload { violations, .. } = &err else { panic!("unexpected {err:?}") };
        assert_eq!(violations[0].path, "/n");
        assert!(err.to_string().contains("/n"), "{err}");
    }

    #[test]
    fn unknown_type_and_version_are_refused() {
        let registry = registry();
        assert!(matches!(registry.validate("Nope", 1, &json!({})), Err(SchemaError::UnknownEventType { .. })));
        assert!(matches!(registry.validate("Counted", 3, &json!({})), Err(SchemaError::UnknownVersion { latest: 2, .. })));
    }

    #[test]
    fn upcast_walks_every_version_to_the_latest() {
        let (version, payload) = registry().upcast("Counted", 1, json!({ "n": 4 })).unwrap();
        assert_eq!((version, payload), (2, json!({ "count": 4 })));
        let (version, payload) = registry().upcast("Counted", 2, json!({ "count": 5 })).unwrap();
        assert_eq!((version, payload), (2, json!({ "count": 5 })));
    }

    #[test]
    fn a_missing_upcaster_is_refused_at_build_time() {
        let err = SchemaRegistry::builder().schema("Counted", 1, V1).schema("Counted", 2, V2).build().unwrap_err();
        assert!(matches!(err, SchemaError::Incomplete { .. }), "{err}");
    }

    #[test]
    fn a_failing_upcaster_is_reported_with_its_version() {
        let err = registry().upcast("Counted", 1, json!({ "m": 1 })).unwrap_err();
        assert!(matches!(err, UpcastError::Failed { from_version: 1, .. }), "{err}");
    }
}
