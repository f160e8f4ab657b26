//! The vocabulary of the event store: stream ids, versions, positions, the
//! event to append and the event as recorded. Parsed once at the edge
//! (`StreamId::parse`, `Position`), trusted everywhere after.

use std::fmt;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use uuid::Uuid;

/// Longest accepted stream id, in bytes.
pub const MAX_STREAM_ID_LEN: usize = 200;

/// A stream id of the form `category-id`, e.g. `order-7f1d…`. The category is
/// everything before the first `-`: ASCII letters, digits and `_`, starting
/// with a letter. The id part is non-empty and has no whitespace or control
/// characters.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct StreamId(String);

/// A string that is not a valid [`StreamId`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid stream id {input:?}: {reason}")]
pub struct InvalidStreamId {
    /// What was given.
    pub input: String,
    /// What is wrong with it.
    pub reason: &'static str,
}

impl StreamId {
    /// Parses `category-id`.
    pub fn parse(input: &str) -> Result<Self, InvalidStreamId> {
        let fail = |reason| InvalidStreamId { input: input.to_owned(), reason };
        if input.len() > MAX_STREAM_ID_LEN {
            return Err(fail("longer than 200 bytes"));
        }
        let Some((category, id)) = input.split_once('-') else {
            return Err(fail("expected category-id"));
        };
        validate_category(category).map_err(fail)?;
        if id.is_empty() {
            return Err(fail("the id after the category is empty"));
        }
        if id.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(fail("whitespace or control characters in the id"));
        }
        Ok(Self(input.to_owned()))
    }

    /// Builds `category-id` from its parts.
    pub fn new(category: &str, id: impl fmt::Display) -> Result<Self, InvalidStreamId> {
        Self::parse(&format!("{category}-{id}"))
    }

    /// The category: the part before the first `-`.
    pub fn category(&self) -> &str {
        self.0.split_once('-').map_or(&self.0, |(category, _)| category)
    }

    /// The id part after the category.
    pub fn id(&self) -> &str {
        self.0.split_once('-').map_or("", |(_, id)| id)
    }

    /// The whole stream id.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Checks a category name (letters, digits, `_`, starting with a letter, at most 64 bytes).
pub fn validate_category(category: &str) -> Result<(), &'static str> {
    if category.is_empty() || category.len() > 64 {
        return Err("the category must have 1 to 64 characters");
    }
    if !category.starts_with(|c: char| c.is_ascii_alphabetic()) || !category.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
        return Err("the category must be ASCII letters, digits or _, starting with a letter");
    }
    Ok(())
}

impl fmt::Display for StreamId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl TryFrom<String> for StreamId {
    type Error = InvalidStreamId;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::parse(&value)
    }
}

impl From<StreamId> for String {
    fn from(value: StreamId) -> Self {
        value.0
    }
}

impl std::str::FromStr for StreamId {
    type Err = InvalidStreamId;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

/// A position in the global log. Positions start at 1 and only grow in the
/// order readers see them; [`Position::START`] (0) is "before the first event".
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Position(pub u64);

impl Position {
    /// Before the first event: reading after it reads the whole log.
    pub const START: Position = Position(0);
}

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// What the writer believes about the stream's current version (the number of
/// events in it). A mismatch is [`crate::AppendError::Conflict`] and nothing is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ExpectedVersion {
    /// No check.
    Any,
    /// The stream must not exist yet (same as `Exact(0)`).
    NoStream,
    /// The stream must have at least one event.
    StreamExists,
    /// The stream must have exactly this many events.
    Exact(u64),
}

impl ExpectedVersion {
    /// Does a stream at `actual` (`0` = absent) satisfy this expectation?
    pub fn accepts(self, actual: u64) -> bool {
        match self {
            ExpectedVersion::Any => true,
            ExpectedVersion::NoStream => actual == 0,
            ExpectedVersion::StreamExists => actual > 0,
            ExpectedVersion::Exact(expected) => actual == expected,
        }
    }
}

impl fmt::Display for ExpectedVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ExpectedVersion::Any => f.write_str("any"),
            ExpectedVersion::NoStream => f.write_str("no stream"),
            ExpectedVersion::StreamExists => f.write_str("stream exists"),
            ExpectedVersion::Exact(version) => write!(f, "version {version}"),
        }
    }
}

/// Who and what caused an event, and how to follow it across services.
/// Every field is optional for the store; the command side fills them all.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EventMetadata {
    /// Shared by every event that one business flow produced.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub correlation_id: Option<Uuid>,
    /// The event or command that directly caused this one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub causation_id: Option<Uuid>,
    /// W3C trace context of the command that wrote the event.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traceparent: Option<String>,
    /// The authenticated user or service that issued the command.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub actor: Option<String>,
    /// The command that wrote the event.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command_id: Option<Uuid>,
}

/// An event to append. The `event_id` makes retries idempotent: appending an id
/// that is already stored with the same content returns the original result.
#[derive(Debug, Clone, PartialEq)]
pub struct NewEvent {
    /// Unique id of the event (derive it from the command id to make retries safe).
    pub event_id: Uuid,
    /// Event type, registered in the schema registry.
    pub event_type: String,
    /// Schema version the payload is written as (normally the latest).
    pub schema_version: u32,
    /// The payload, validated against `schemas/` on append.
    pub payload: Value,
    /// Correlation, causation, trace, actor and command.
    pub metadata: EventMetadata,
}

/// Events to append to one stream, guarded by an expected version.
#[derive(Debug, Clone, PartialEq)]
pub struct StreamAppend {
    /// The target stream.
    pub stream_id: StreamId,
    /// Checked against the stream's version before anything is written.
    pub expected: ExpectedVersion,
    /// At least one event.
    pub events: Vec<NewEvent>,
}

/// The result of an append, per stream, in the order of the request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppendOutcome {
    /// One entry per stream of the request.
    pub streams: Vec<StreamAppended>,
    /// True when every event id was already stored with the same content: this
    /// is the original result and nothing was written.
    pub replayed: bool,
}

/// Where one stream's events landed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamAppended {
    /// The stream.
    pub stream_id: StreamId,
    /// The stream version of each appended event, in order.
    pub versions: Vec<u64>,
    /// The global position of each appended event, in order.
    pub positions: Vec<Position>,
}

impl StreamAppended {
    /// The stream version after the append (use it as the next expected version).
    pub fn last_version(&self) -> u64 {
        self.versions.last().copied().unwrap_or(0)
    }
}

impl AppendOutcome {
    /// The highest global position written by (or replayed for) this append.
    pub fn last_position(&self) -> Position {
        self.streams.iter().flat_map(|stream| stream.positions.iter().copied()).max().unwrap_or(Position::START)
    }
}

/// SHA-256 over an event and the previous event's hash in its stream.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct ChainHash(pub [u8; 32]);

impl ChainHash {
    /// The "previous hash" of a stream's first event.
    pub const GENESIS: ChainHash = ChainHash([0; 32]);

    /// Reads a stored hash; `None` unless exactly 32 bytes.
    pub fn from_slice(bytes: &[u8]) -> Option<Self> {
        Some(Self(bytes.try_into().ok()?))
    }

    /// Reads the 64 hex digits [`Display`](fmt::Display) prints.
    pub fn from_hex(text: &str) -> Option<Self> {
        let text = text.as_bytes();
        if text.len() != 64 {
            return None;
        }
        let digit = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
        let mut bytes = [0; 32];
        for (byte, pair) in bytes.iter_mut().zip(text.chunks(2)) {
            *byte = digit(pair[0])? << 4 | digit(pair[1])?;
        }
        Some(Self(bytes))
    }
}

impl fmt::Display for ChainHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for byte in self.0 {
            write!(f, "{byte:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for ChainHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ChainHash({self})")
    }
}

/// An event as stored in the log, with every piece of metadata of docs/design.md §4.
#[derive(Debug, Clone, PartialEq)]
pub struct RecordedEvent {
    /// The event's unique id.
    pub event_id: Uuid,
    /// Its type.
    pub event_type: String,
    /// The schema version of `payload`: the latest one unless read
    /// [`Form::AsStored`].
    pub schema_version: u32,
    /// The stream it belongs to.
    pub stream_id: StreamId,
    /// Its version in the stream (1 for the first event).
    pub stream_version: u64,
    /// Its position in the global log.
    pub position: Position,
    /// When the store recorded it (microsecond precision).
    pub recorded_at: DateTime<Utc>,
    /// The payload.
    pub payload: Value,
    /// Correlation, causation, trace, actor and command.
    pub metadata: EventMetadata,
    /// The chain hash stored with the event.
    pub hash: ChainHash,
}

/// An event as the log stores it: payload and metadata as their stored JSON
/// text, never parsed. The relay reads these and puts them on the bus as
/// they are (see [`crate::bus`]); a payload of an older schema version is
/// upcast (parsed, upcast, written again) so the bus always carries the
/// latest version.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredEvent {
    /// The event's unique id.
    pub event_id: Uuid,
    /// Its type.
    pub event_type: String,
    /// The schema version of `payload` (the latest one).
    pub schema_version: u32,
    /// The stream it belongs to.
    pub stream_id: StreamId,
    /// Its version in the stream.
    pub stream_version: u64,
    /// Its position in the global log.
    pub position: Position,
    /// When the store recorded it.
    pub recorded_at: DateTime<Utc>,
    /// The payload's JSON text.
    pub payload: String,
    /// The metadata's JSON text ([`EventMetadata`]).
    pub metadata: String,
    /// The chain hash stored with the event.
    pub hash: ChainHash,
    /// The W3C `traceparent` the event travels under on the bus (its
    /// `traceparent` header), when it differs from the one in its metadata:
    /// the relay sets it to its publish span. Not stored in the log.
    pub bus_traceparent: Option<String>,
}

impl From<&RecordedEvent> for StoredEvent {
    fn from(event: &RecordedEvent) -> Self {
        Self {
            event_id: event.event_id,
            event_type: event.event_type.clone(),
            schema_version: event.schema_version,
            stream_id: event.stream_id.clone(),
            stream_version: event.stream_version,
            position: event.position,
            recorded_at: event.recorded_at,
            payload: serde_json::to_string(&event.payload).expect("JSON values serialize"),
            metadata: serde_json::to_string(&event.metadata).expect("metadata serializes"),
            hash: event.hash,
            bus_traceparent: None,
        }
    }
}

impl StoredEvent {
    /// Parses payload and metadata into a [`RecordedEvent`].
    pub fn decode(&self) -> Result<RecordedEvent, serde_json::Error> {
        Ok(RecordedEvent {
            event_id: self.event_id,
            event_type: self.event_type.clone(),
            schema_version: self.schema_version,
            stream_id: self.stream_id.clone(),
            stream_version: self.stream_version,
            position: self.position,
            recorded_at: self.recorded_at,
            payload: serde_json::from_str(&self.payload)?,
            metadata: serde_json::from_str(&self.metadata)?,
            hash: self.hash,
        })
    }

    /// The metadata's `traceparent`, read without building the whole metadata.
    pub fn traceparent(&self) -> Option<String> {
        #[derive(Deserialize)]
        struct Trace {
            traceparent: Option<String>,
        }
        serde_json::from_str::<Trace>(&self.metadata).ok()?.traceparent
    }

    /// The `traceparent` header of its bus message: [`Self::bus_traceparent`],
    /// else the metadata's.
    pub fn header_traceparent(&self) -> Option<String> {
        self.bus_traceparent.clone().or_else(|| self.traceparent())
    }
}

/// How payloads are returned by reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Form {
    /// Upcast to the latest version of the event type (what every reader but
    /// the auditor wants).
    #[default]
    Latest,
    /// Exactly as written, with the version it was written as (audit, hash
    /// verification).
    AsStored,
}

/// Which way to read a stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Direction {
    /// Ascending versions.
    #[default]
    Forward,
    /// Descending versions.
    Backward,
}

/// A page of one stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReadStream {
    /// First version to return (inclusive). Forward from 1 reads from the
    /// start; backward from `u64::MAX` reads from the end.
    pub from_version: u64,
    /// Which way.
    pub direction: Direction,
    /// At most this many events.
    pub limit: usize,
    /// Upcast or as stored.
    pub form: Form,
}

impl ReadStream {
    /// Forward from the first event, up to `limit` events.
    pub fn forward(limit: usize) -> Self {
        Self { from_version: 1, direction: Direction::Forward, limit, form: Form::Latest }
    }

    /// Backward from the last event, up to `limit` events.
    pub fn backward(limit: usize) -> Self {
        Self { from_version: u64::MAX, direction: Direction::Backward, limit, form: Form::Latest }
    }
}

/// A page of the global log, optionally of one category.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadAll {
    /// Return events strictly after this position.
    pub after: Position,
    /// At most this many events.
    pub limit: usize,
    /// Only streams of this category.
    pub category: Option<String>,
    /// Upcast or as stored.
    pub form: Form,
}

impl ReadAll {
    /// Everything after `after`, `limit` at a time, upcast.
    pub fn after(after: Position, limit: usize) -> Self {
        Self { after, limit, category: None, form: Form::Latest }
    }
}

/// Which log this is: an id made when the log was first migrated, and an
/// epoch raised after each restore from a backup (docs/design.md §8). The
/// relay stamps it on every bus record (`strata-log-id: <id>/<epoch>`), so
/// a bus holding another log's records is recognised instead of trusted.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct LogIdentity {
    /// 32 hex digits, made once.
    pub id: String,
    /// Raised by `strata migrate --new-epoch` after a restore.
    pub epoch: u64,
}

impl LogIdentity {
    /// A new identity at epoch 0 (a log that keeps nothing, like the in-memory one).
    pub fn new_random() -> Self {
        Self { id: Uuid::new_v4().simple().to_string(), epoch: 0 }
    }

    /// Parses `<id>/<epoch>`, the header form.
    pub fn parse(text: &str) -> Option<Self> {
        let (id, epoch) = text.split_once('/')?;
        let id_ok = !id.is_empty() && id.len() <= 64 && id.bytes().all(|b| b.is_ascii_alphanumeric());
        id_ok.then_some(())?;
        Some(Self { id: id.to_owned(), epoch: epoch.parse().ok()? })
    }
}

impl std::fmt::Display for LogIdentity {
    /// `<id>/<epoch>`, the header form.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.id, self.epoch)
    }
}

/// The current head of a stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamHead {
    /// The stream.
    pub stream_id: StreamId,
    /// Number of events in it.
    pub version: u64,
    /// Hash of its last event.
    pub last_hash: ChainHash,
}
