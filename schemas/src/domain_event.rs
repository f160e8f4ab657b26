//! [`DomainEvent`]: how a Rust event type maps to the stored form (event type
//! name, schema version, JSON payload) and back. The command side writes
//! events through it and folds what it reads through it; it never hand-builds
//! JSON.
//!
//! [`domain_events!`](crate::domain_events) declares an enum of event structs
//! and derives the mapping, so the type name, the schema file and the Rust
//! variant cannot drift apart (a test checks every variant against its schema).

use serde_json::Value;

/// A stored event could not be turned into the Rust type.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// The event type is not one of this enum's variants.
    #[error("event type {event_type:?} is not an event of {expected}")]
    UnknownType {
        /// The stored type.
        event_type: String,
        /// The Rust enum that was asked for.
        expected: &'static str,
    },
    /// The payload does not deserialize into the variant's struct.
    #[error("payload of {event_type} does not decode")]
    Payload {
        /// The stored type.
        event_type: String,
        /// What serde said.
        #[source]
        source: serde_json::Error,
    },
}

/// An event type family (usually all events of one aggregate).
pub trait DomainEvent: Sized + Clone + std::fmt::Debug + PartialEq + Send + Sync + 'static {
    /// Every `(event type, schema version written)` of the family.
    const TYPES: &'static [(&'static str, u32)];

    /// The stored type name of this event.
    fn event_type(&self) -> &'static str;

    /// The schema version this code writes (the latest).
    fn schema_version(&self) -> u32;

    /// The JSON payload, as the schema of [`DomainEvent::schema_version`] describes it.
    fn to_payload(&self) -> Value;

    /// Rebuilds an event from its stored type and a payload of the latest version.
    fn from_payload(event_type: &str, payload: Value) -> Result<Self, DecodeError>;

    /// [`DomainEvent::from_payload`] from a borrowed payload (a read side
    /// that keeps the event).
    fn decode(event_type: &str, payload: &Value) -> Result<Self, DecodeError>;

    /// Whether `event_type` is one of this family's.
    fn has_type(event_type: &str) -> bool {
        Self::TYPES.iter().any(|(name, _)| *name == event_type)
    }
}

/// Declares an enum whose variants wrap one event struct each, and implements
/// [`DomainEvent`] for it. Each variant is named after its event type and
/// given the schema version it writes:
///
/// ```ignore
/// domain_events! {
///     /// Everything that happens to an order.
///     pub enum OrderEvent {
///         OrderPlaced(OrderPlaced) = 2,
///         OrderConfirmed(OrderConfirmed) = 1,
///     }
/// }
/// ```
#[macro_export]
macro_rules! domain_events {
    (
        $(#[$meta:meta])*
        pub enum $name:ident {
            $( $(#[$variant_meta:meta])* $variant:ident($payload:ty) = $version:literal ),+ $(,)?
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, PartialEq)]
        pub enum $name {
            $( $(#[$variant_meta])* $variant($payload), )+
        }

        impl $crate::DomainEvent for $name {
            const TYPES: &'static [(&'static str, u32)] = &[ $( (stringify!($variant), $version), )+ ];

            fn event_type(&self) -> &'static str {
                match self { $( Self::$variant(_) => stringify!($variant), )+ }
            }

            fn schema_version(&self) -> u32 {
                match self { $( Self::$variant(_) => $version, )+ }
            }

            fn to_payload(&self) -> ::serde_json::Value {
                let value = match self { $( Self::$variant(event) => ::serde_json::to_value(event), )+ };
                // Event structs are plain data with string keys: serializing cannot fail.
                value.expect("event structs serialize to JSON")
            }

            fn from_payload(event_type: &str, payload: ::serde_json::Value) -> Result<Self, $crate::DecodeError> {
                match event_type {
                    $(
                        stringify!($variant) => ::serde_json::from_value(payload)
                            .map(Self::$variant)
                            .map_err(|source| $crate::DecodeError::Payload { event_type: event_type.to_owned(), source }),
                    )+
                    other => Err($crate::DecodeError::UnknownType {
                        event_type: other.to_owned(),
                        expected: stringify!($name),
                    }),
                }
            }

            fn decode(event_type: &str, payload: &::serde_json::Value) -> Result<Self, $crate::DecodeError> {
                match event_type {
                    $(
                        stringify!($variant) => <$payload as $crate::__serde::Deserialize>::deserialize(payload)
                            .map(Self::$variant)
                            .map_err(|source| $crate::DecodeError::Payload { event_type: event_type.to_owned(), source }),
                    )+
                    other => Err($crate::DecodeError::UnknownType {
                        event_type: other.to_owned(),
                        expected: stringify!($name),
                    }),
                }
            }
        }

        $(
            impl From<$payload> for $name {
                fn from(event: $payload) -> Self {
                    Self::$variant(event)
                }
            }
        )+
    };
}
