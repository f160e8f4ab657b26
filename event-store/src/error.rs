//! The errors of the event store seam. No driver type appears here: backend
//! causes are boxed behind [`BackendError`].

use std::error::Error as StdError;
use std::fmt;

use strata_schemas::{SchemaError, UpcastError};
use uuid::Uuid;

use crate::{ExpectedVersion, Position, StreamId};

/// A failure of a backend: the event store's database, the bus or the
/// read-model store (connection, IO, a refusal the engine gave). The cause
/// is kept for logs; it is never a domain answer. One type for the three,
/// so a retry policy, a `/readyz` check or a log reads them alike
/// ([`crate::bus::BusError::Backend`] and the sinks' `SinkError::Backend`
/// carry it).
#[derive(Debug)]
pub struct BackendError {
    component: Component,
    context: &'static str,
    source: Box<dyn StdError + Send + Sync>,
}

/// Which backend failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Component {
    /// The event store's database.
    EventStore,
    /// The bus (JetStream, Kafka).
    Bus,
    /// The read-model store (Redis, MongoDB).
    ReadModel,
}

impl BackendError {
    /// Wraps an event-store backend cause with what the store was doing.
    pub fn new(context: &'static str, source: impl Into<Box<dyn StdError + Send + Sync>>) -> Self {
        Self::of(Component::EventStore, context, source)
    }

    /// Wraps a cause of `component`'s backend with what it was doing.
    pub fn of(component: Component, context: &'static str, source: impl Into<Box<dyn StdError + Send + Sync>>) -> Self {
        Self { component, context, source: source.into() }
    }

    /// Which backend failed.
    pub fn component(&self) -> Component {
        self.component
    }

    /// What it was doing.
    pub fn context(&self) -> &'static str {
        self.context
    }
}

impl fmt::Display for BackendError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let backend = match self.component {
            Component::EventStore => "event store",
            Component::Bus => "bus",
            Component::ReadModel => "read-model",
        };
        write!(f, "{backend} backend failed while {}", self.context)
    }
}

/// An error and its causes on one line, `what failed: why: why deeper`.
///
/// The rule for every error of Strata: a message names what failed and
/// never repeats its source; the cause is reached through
/// [`StdError::source`]. So logs, `/readyz` and stored reasons print errors
/// through `chain` (or anyhow's `{:#}`), which says each cause once.
pub fn chain(error: &(dyn StdError + 'static)) -> String {
    let mut text = error.to_string();
    let mut cause = error.source();
    while let Some(error) = cause {
        text.push_str(": ");
        text.push_str(&error.to_string());
        cause = error.source();
    }
    text
}

impl StdError for BackendError {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        Some(&*self.source)
    }
}

/// Why an append was refused. Whatever the variant, nothing was written.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AppendError {
    /// The stream's version did not match the expected version.
    #[error("conflict on stream {stream_id}: expected {expected}, actual version {actual}")]
    Conflict {
        /// The stream whose check failed.
        stream_id: StreamId,
        /// What the writer expected.
        expected: ExpectedVersion,
        /// The stream's actual version (0 when it does not exist).
        actual: u64,
    },
    /// An event id is already stored with other content (or in another stream,
    /// or only some of the request's ids are stored).
    #[error("event id {event_id} is already stored with other content")]
    EventIdReused {
        /// The reused id.
        event_id: Uuid,
        /// Where the stored event lives.
        stored_stream_id: StreamId,
        /// Its stored version.
        stored_version: u64,
    },
    /// A payload does not match its schema, or its type or version is unknown.
    #[error("event {event_id} for stream {stream_id} is invalid: {source}")]
    InvalidEvent {
        /// The target stream.
        stream_id: StreamId,
        /// The refused event.
        event_id: Uuid,
        /// What the schema registry said, naming the field.
        #[source]
        source: SchemaError,
    },
    /// The request itself is malformed (no streams, no events, a stream or an
    /// event id twice, oversized payload, bad metadata).
    #[error("invalid append request: {reason}")]
    InvalidRequest {
        /// What is wrong.
        reason: String,
    },
    /// The store is shutting down and no longer takes appends.
    #[error("the event store is closed")]
    Closed,
    /// The backend failed; the append may or may not have been written.
    /// Retrying with the same event ids is safe.
    #[error(transparent)]
    Backend(#[from] BackendError),
}

/// Why a read failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReadError {
    /// A stored event could not be brought to the latest schema version.
    #[error("event at position {position} cannot be read as the latest version")]
    Upcast {
        /// Where the event is.
        position: Position,
        /// What the upcaster said.
        #[source]
        source: UpcastError,
    },
    /// A stored row does not decode (a corrupted or hand-edited row).
    #[error("stored event at position {position} is unreadable: {reason}")]
    Corrupt {
        /// Where the row is.
        position: Position,
        /// What does not decode.
        reason: String,
    },
    /// The read request is malformed.
    #[error("invalid read request: {reason}")]
    InvalidRequest {
        /// What is wrong.
        reason: String,
    },
    /// The store was closed while a subscription was waiting.
    #[error("the event store is closed")]
    Closed,
    /// The backend failed.
    #[error(transparent)]
    Backend(#[from] BackendError),
}
