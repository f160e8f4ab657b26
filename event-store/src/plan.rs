//! The backend-independent part of an append: validating the request
//! ([`prepare`]), deciding each request of a batch against the stream heads and
//! stored event ids ([`BatchPlanner`]), computing the hash chain, and turning
//! stored rows back into [`RecordedEvent`]s ([`StoredRow`]).
//!
//! Backends only load heads and existing ids, write the planned rows with
//! consecutive positions, and commit. Because the planner decides every request
//! of a group-commit batch in order against the heads as the earlier requests
//! of the batch left them, each request keeps its own expected-version check
//! and its own result.

use std::collections::{HashMap, HashSet};

use chrono::{DateTime, Utc};
use serde_json::Value;
use strata_schemas::SchemaRegistry;
use uuid::Uuid;

use crate::hash::{canonical_json, seal, ChainKey, HashInput};
use crate::{
    AppendError, AppendOutcome, ChainHash, EventMetadata, ExpectedVersion, Form, Position, ReadError, RecordedEvent, StreamAppend,
    StreamAppended, StreamId,
};

/// Largest accepted event as it travels: its stored size (payload and
/// metadata as canonical JSON, event type and stream id) plus
/// [`RECORD_OVERHEAD_BYTES`] for its bus envelope: 1 MiB unless configured
/// (`STRATA_MAX_EVENT_BYTES`), which is NATS's default `max_payload`.
pub const MAX_EVENT_BYTES: usize = 1 << 20;
/// The most a bus record adds to an event's stored size: its envelope
/// (event id, position, version, hash, times, JSON keys) and headers
/// (message id, type, position, trace context, log identity). A bus that
/// carries records of `max_event_bytes` carries every event the store accepts.
pub const RECORD_OVERHEAD_BYTES: usize = 4 << 10;
/// Most events accepted in one append call.
pub const MAX_EVENTS_PER_APPEND: usize = 10_000;

/// Size limits of one append call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AppendLimits {
    /// Largest event as it travels: its stored size (payload and metadata
    /// as canonical JSON, event type and stream id) plus
    /// [`RECORD_OVERHEAD_BYTES`].
    pub max_event_bytes: usize,
    /// Most events in one call.
    pub max_events: usize,
}

impl Default for AppendLimits {
    fn default() -> Self {
        Self { max_event_bytes: MAX_EVENT_BYTES, max_events: MAX_EVENTS_PER_APPEND }
    }
}

impl AppendLimits {
    /// The largest bus record (envelope and headers included) an accepted
    /// event can become: what every bus must carry.
    pub fn max_record_bytes(&self) -> usize {
        self.max_event_bytes
    }

    /// The largest stored size an accepted event may have.
    pub fn max_stored_bytes(&self) -> usize {
        self.max_event_bytes.saturating_sub(RECORD_OVERHEAD_BYTES)
    }
}

/// One event, validated and serialized, ready to be planned.
#[derive(Debug, Clone)]
pub(crate) struct PreparedEvent {
    pub(crate) event_id: Uuid,
    pub(crate) event_type: String,
    pub(crate) schema_version: u32,
    pub(crate) payload_json: String,
    pub(crate) metadata_json: String,
}

#[derive(Debug, Clone)]
pub(crate) struct PreparedStream {
    pub(crate) stream_id: StreamId,
    pub(crate) expected: ExpectedVersion,
    pub(crate) events: Vec<PreparedEvent>,
}

/// A validated append request.
#[derive(Debug, Clone)]
pub(crate) struct PreparedAppend {
    pub(crate) streams: Vec<PreparedStream>,
}

impl PreparedAppend {
    pub(crate) fn stream_ids(&self) -> impl Iterator<Item = &StreamId> {
        self.streams.iter().map(|stream| &stream.stream_id)
    }

    pub(crate) fn event_ids(&self) -> impl Iterator<Item = Uuid> + '_ {
        self.streams.iter().flat_map(|stream| stream.events.iter().map(|event| event.event_id))
    }

    pub(crate) fn n_events(&self) -> usize {
        self.streams.iter().map(|stream| stream.events.len()).sum()
    }
}

fn invalid(reason: impl Into<String>) -> AppendError {
    AppendError::InvalidRequest { reason: reason.into() }
}

/// Validates an append request before it reaches the backend: shape, sizes,
/// metadata and every payload against its schema.
pub(crate) fn prepare(registry: &SchemaRegistry, limits: AppendLimits, request: Vec<StreamAppend>) -> Result<PreparedAppend, AppendError> {
    if request.is_empty() {
        return Err(invalid("no streams to append to"));
    }
    let n_events: usize = request.iter().map(|stream| stream.events.len()).sum();
    if n_events > limits.max_events {
        return Err(invalid(format!("{n_events} events in one append, the limit is {}", limits.max_events)));
    }
    let mut seen_streams = HashSet::new();
    let mut seen_ids = HashSet::new();
    let mut streams = Vec::with_capacity(request.len());
    for stream in request {
        if !seen_streams.insert(stream.stream_id.clone()) {
            return Err(invalid(format!("stream {} appears twice", stream.stream_id)));
        }
        if stream.events.is_empty() {
            return Err(invalid(format!("no events for stream {}", stream.stream_id)));
        }
        let mut events = Vec::with_capacity(stream.events.len());
        for event in stream.events {
            if !seen_ids.insert(event.event_id) {
                return Err(invalid(format!("event id {} appears twice", event.event_id)));
            }
            registry.validate(&event.event_type, event.schema_version, &event.payload).map_err(|source| AppendError::InvalidEvent {
                stream_id: stream.stream_id.clone(),
                event_id: event.event_id,
                source,
            })?;
            check_metadata(&event.metadata)?;
            // PostgreSQL refuses NUL in jsonb, and one refused row would fail
            // every append of its group-commit batch: refused here, on every
            // backend alike.
            if holds_nul(&event.payload) {
                return Err(invalid(format!("payload of event {} contains a NUL character (U+0000)", event.event_id)));
            }
            let payload_json = canonical_json(&event.payload);
            let metadata_json = metadata_json(&event.metadata);
            // Every bus is configured to carry an event of this size (its
            // record adds at most RECORD_OVERHEAD_BYTES), so an accepted
            // event can never be refused by the bus and stall the relay.
            let stored = stored_size(&payload_json, &metadata_json, &event.event_type, &stream.stream_id);
            if stored > limits.max_stored_bytes() {
                return Err(invalid(format!(
                    "event {} is {stored} bytes stored (payload, metadata, type and stream id); with its bus envelope (up to {RECORD_OVERHEAD_BYTES} bytes) that is over the limit of {} (STRATA_MAX_EVENT_BYTES)",
                    event.event_id, limits.max_event_bytes
                )));
            }
            events.push(PreparedEvent {
                event_id: event.event_id,
                event_type: event.event_type,
                schema_version: event.schema_version,
                payload_json,
                metadata_json,
            });
        }
        streams.push(PreparedStream { stream_id: stream.stream_id, expected: stream.expected, events });
    }
    Ok(PreparedAppend { streams })
}

/// Whether a NUL character appears in any string or key of `value`.
fn holds_nul(value: &serde_json::Value) -> bool {
    match value {
        serde_json::Value::String(text) => text.contains('\0'),
        serde_json::Value::Array(items) => items.iter().any(holds_nul),
        serde_json::Value::Object(fields) => fields.iter().any(|(key, value)| key.contains('\0') || holds_nul(value)),
        _ => false,
    }
}

fn check_metadata(metadata: &EventMetadata) -> Result<(), AppendError> {
    if let Some(traceparent) = &metadata.traceparent {
        if !is_traceparent(traceparent) {
            return Err(invalid(format!("traceparent {traceparent:?} is not a W3C traceparent (00-<32 hex>-<16 hex>-<2 hex>)")));
        }
    }
    if let Some(actor) = &metadata.actor {
        if actor.is_empty() || actor.len() > 256 || actor.chars().any(char::is_control) {
            return Err(invalid("actor must have 1 to 256 bytes and no control character"));
        }
    }
    Ok(())
}

fn is_traceparent(value: &str) -> bool {
    let parts: Vec<&str> = value.split('-').collect();
    let hex = |part: &str, len: usize| part.len() == len && part.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    parts.len() == 4
        && hex(parts[0], 2)
        && parts[0] != "ff"
        && hex(parts[1], 32)
        && parts[1].bytes().any(|b| b != b'0')
        && hex(parts[2], 16)
        && parts[2].bytes().any(|b| b != b'0')
        && hex(parts[3], 2)
}

/// An event's stored size in `stream_id`, as [`AppendLimits`] counts it:
/// payload and metadata as canonical JSON, event type and stream id.
pub fn stored_bytes(stream_id: &StreamId, event: &crate::NewEvent) -> usize {
    stored_size(&canonical_json(&event.payload), &metadata_json(&event.metadata), &event.event_type, stream_id)
}

fn stored_size(payload_json: &str, metadata_json: &str, event_type: &str, stream_id: &StreamId) -> usize {
    payload_json.len() + metadata_json.len() + event_type.len() + stream_id.as_str().len()
}

pub(crate) fn metadata_json(metadata: &EventMetadata) -> String {
    // Serializing a struct of strings and uuids cannot fail.
    let value = serde_json::to_value(metadata).unwrap_or(Value::Null);
    canonical_json(&value)
}

/// The head of a stream as the planner tracks it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Head {
    pub(crate) version: u64,
    pub(crate) hash: ChainHash,
}

/// An event already in the log, as far as idempotency needs to know it.
#[derive(Debug, Clone)]
pub(crate) struct StoredIdentity {
    pub(crate) event_id: Uuid,
    pub(crate) stream_id: StreamId,
    pub(crate) stream_version: u64,
    pub(crate) position: Position,
    pub(crate) event_type: String,
    pub(crate) schema_version: u32,
    pub(crate) payload_json: String,
    pub(crate) metadata_json: String,
}

/// A row to insert. Rows get consecutive positions in plan order.
#[derive(Debug, Clone)]
pub(crate) struct PlannedRow {
    pub(crate) event_id: Uuid,
    pub(crate) stream_id: StreamId,
    pub(crate) stream_version: u64,
    pub(crate) event_type: String,
    pub(crate) schema_version: u32,
    pub(crate) payload_json: String,
    pub(crate) metadata_json: String,
    pub(crate) recorded_at: DateTime<Utc>,
    pub(crate) hash: ChainHash,
}

/// A stream head to write after the batch.
#[derive(Debug, Clone)]
pub(crate) struct HeadChange {
    pub(crate) stream_id: StreamId,
    pub(crate) head: Head,
    /// The stream did not exist when the batch loaded its heads (PostgreSQL
    /// inserts those heads and updates the others).
    #[cfg_attr(not(feature = "postgres"), allow(dead_code))]
    pub(crate) created: bool,
}

#[derive(Debug, Clone, Copy)]
pub(crate) enum Location {
    Stored(Position),
    Row(usize),
}

/// What the planner decided for one request.
#[derive(Debug)]
pub(crate) enum Planned {
    /// Accepted: per stream, the version and location of each event. With
    /// `replayed`, every id was already stored and nothing joins the batch.
    Accepted { streams: Vec<(StreamId, Vec<(u64, Location)>)>, replayed: bool },
    /// Refused; nothing of it is in the batch.
    Failed(AppendError),
}

impl Planned {
    /// Turns a decision into the caller's result once the batch's first
    /// position is known (row `i` is at `first_position + i`).
    pub(crate) fn resolve(self, first_position: Position) -> Result<AppendOutcome, AppendError> {
        match self {
            Planned::Failed(err) => Err(err),
            Planned::Accepted { streams, replayed } => Ok(AppendOutcome {
                streams: streams
                    .into_iter()
                    .map(|(stream_id, events)| StreamAppended {
                        stream_id,
                        versions: events.iter().map(|(version, _)| *version).collect(),
                        positions: events
                            .iter()
                            .map(|(_, location)| match *location {
                                Location::Stored(position) => position,
                                Location::Row(row) => Position(first_position.0 + row as u64),
                            })
                            .collect(),
                    })
                    .collect(),
                replayed,
            }),
        }
    }
}

/// Decides the requests of one batch, in order, against the loaded heads and
/// stored ids, and accumulates the rows and head changes to write.
pub(crate) struct BatchPlanner {
    heads: HashMap<StreamId, Head>,
    existed: HashSet<StreamId>,
    stored: HashMap<Uuid, StoredIdentity>,
    in_batch: HashMap<Uuid, usize>,
    recorded_at: DateTime<Utc>,
    first_position: Position,
    rows: Vec<PlannedRow>,
    /// Seals v3 hashes when set, v2 otherwise.
    chain_key: Option<ChainKey>,
}

impl BatchPlanner {
    /// `heads`: the stored heads of (at least) every stream the batch touches;
    /// `stored`: every stored event whose id the batch uses; `first_position`:
    /// the position the batch's first row will have (the log head is held, so
    /// the hashes can cover positions); `chain_key`: the key that seals the
    /// batch's hashes (v3), if the chain is keyed.
    pub(crate) fn new(
        heads: HashMap<StreamId, Head>,
        stored: Vec<StoredIdentity>,
        recorded_at: DateTime<Utc>,
        first_position: Position,
        chain_key: Option<&ChainKey>,
    ) -> Self {
        // Microsecond precision: what PostgreSQL keeps, so the hash survives a round trip.
        let recorded_at = DateTime::from_timestamp_micros(recorded_at.timestamp_micros()).unwrap_or(recorded_at);
        Self {
            existed: heads.keys().cloned().collect(),
            heads,
            stored: stored.into_iter().map(|event| (event.event_id, event)).collect(),
            in_batch: HashMap::new(),
            recorded_at,
            first_position,
            rows: Vec::new(),
            chain_key: chain_key.cloned(),
        }
    }

    /// Decides one request; on success its rows join the batch.
    pub(crate) fn plan(&mut self, append: &PreparedAppend) -> Planned {
        match self.replay(append) {
            Ok(Some(replay)) => return replay,
            Ok(None) => {}
            Err(err) => return Planned::Failed(err),
        }
        // Check every stream before touching the batch: all or nothing.
        for stream in &append.streams {
            let actual = self.heads.get(&stream.stream_id).map_or(0, |head| head.version);
            if !stream.expected.accepts(actual) {
                return Planned::Failed(AppendError::Conflict { stream_id: stream.stream_id.clone(), expected: stream.expected, actual });
            }
        }
        let mut written = Vec::with_capacity(append.streams.len());
        for stream in &append.streams {
            let mut head = self.heads.get(&stream.stream_id).copied().unwrap_or(Head { version: 0, hash: ChainHash::GENESIS });
            let mut rows = Vec::with_capacity(stream.events.len());
            for event in &stream.events {
                let stream_version = head.version + 1;
                let hash = seal(
                    self.chain_key.as_ref(),
                    HashInput {
                        previous: &head.hash,
                        position: self.first_position.0 + self.rows.len() as u64,
                        event_id: &event.event_id,
                        stream_id: stream.stream_id.as_str(),
                        stream_version,
                        event_type: &event.event_type,
                        schema_version: event.schema_version,
                        recorded_at_micros: self.recorded_at.timestamp_micros(),
                        metadata_json: &event.metadata_json,
                        payload_json: &event.payload_json,
                    },
                );
                self.in_batch.insert(event.event_id, self.rows.len());
                rows.push((stream_version, Location::Row(self.rows.len())));
                self.rows.push(PlannedRow {
                    event_id: event.event_id,
                    stream_id: stream.stream_id.clone(),
                    stream_version,
                    event_type: event.event_type.clone(),
                    schema_version: event.schema_version,
                    payload_json: event.payload_json.clone(),
                    metadata_json: event.metadata_json.clone(),
                    recorded_at: self.recorded_at,
                    hash,
                });
                head = Head { version: stream_version, hash };
            }
            self.heads.insert(stream.stream_id.clone(), head);
            written.push((stream.stream_id.clone(), rows));
        }
        Planned::Accepted { streams: written, replayed: false }
    }

    /// `Ok(Some)` when every id is already stored (or earlier in this batch)
    /// with the same content, `Ok(None)` when none is, an error otherwise.
    fn replay(&self, append: &PreparedAppend) -> Result<Option<Planned>, AppendError> {
        let total = append.n_events();
        let mut found = 0;
        let mut streams = Vec::with_capacity(append.streams.len());
        let mut first_mismatch = None;
        for stream in &append.streams {
            let mut events = Vec::with_capacity(stream.events.len());
            for event in &stream.events {
                let known = if let Some(stored) = self.stored.get(&event.event_id) {
                    Some((
                        &stored.stream_id,
                        stored.stream_version,
                        &stored.event_type,
                        stored.schema_version,
                        &stored.payload_json,
                        &stored.metadata_json,
                        Location::Stored(stored.position),
                    ))
                } else {
                    self.in_batch.get(&event.event_id).map(|&row| {
                        let r = &self.rows[row];
                        (
                            &r.stream_id,
                            r.stream_version,
                            &r.event_type,
                            r.schema_version,
                            &r.payload_json,
                            &r.metadata_json,
                            Location::Row(row),
                        )
                    })
                };
                let Some((stream_id, version, event_type, schema_version, payload, metadata, location)) = known else {
                    continue;
                };
                found += 1;
                let same = stream_id == &stream.stream_id
                    && event_type == &event.event_type
                    && schema_version == event.schema_version
                    && payload == &event.payload_json
                    && metadata == &event.metadata_json;
                if !same && first_mismatch.is_none() {
                    first_mismatch = Some((event.event_id, stream_id.clone(), version));
                }
                events.push((version, location));
            }
            streams.push((stream.stream_id.clone(), events));
        }
        if found == 0 {
            return Ok(None);
        }
        if let Some((event_id, stored_stream_id, stored_version)) = first_mismatch {
            return Err(AppendError::EventIdReused { event_id, stored_stream_id, stored_version });
        }
        if found < total {
            // Some ids stored, some not: not a retry of one earlier append.
            let (event_id, stored_stream_id, stored_version) = append
                .streams
                .iter()
                .flat_map(|stream| stream.events.iter())
                .find_map(|event| {
                    self.stored.get(&event.event_id).map(|s| (s.event_id, s.stream_id.clone(), s.stream_version)).or_else(|| {
                        self.in_batch.get(&event.event_id).map(|&row| {
                            let r = &self.rows[row];
                            (r.event_id, r.stream_id.clone(), r.stream_version)
                        })
                    })
                })
                .expect("found > 0");
            return Err(AppendError::EventIdReused { event_id, stored_stream_id, stored_version });
        }
        Ok(Some(Planned::Accepted { streams, replayed: true }))
    }

    /// The rows (in position order) and the head of every stream they touch.
    pub(crate) fn finish(self) -> (Vec<PlannedRow>, Vec<HeadChange>) {
        let touched: HashSet<&StreamId> = self.rows.iter().map(|row| &row.stream_id).collect();
        let mut changes: Vec<HeadChange> = touched
            .into_iter()
            .map(|stream_id| HeadChange {
                stream_id: stream_id.clone(),
                head: self.heads[stream_id],
                created: !self.existed.contains(stream_id),
            })
            .collect();
        changes.sort_by(|a, b| a.stream_id.cmp(&b.stream_id));
        (self.rows, changes)
    }
}

/// A stored event row as every backend reads it back.
#[derive(Debug, Clone)]
pub(crate) struct StoredRow {
    pub(crate) position: i64,
    pub(crate) event_id: Uuid,
    pub(crate) stream_id: String,
    pub(crate) stream_version: i64,
    pub(crate) event_type: String,
    pub(crate) schema_version: i64,
    pub(crate) payload_json: String,
    pub(crate) metadata_json: String,
    pub(crate) recorded_at_micros: i64,
    pub(crate) hash: Vec<u8>,
}

impl StoredRow {
    /// Decodes the row; with [`Form::Latest`], upcasts the payload.
    pub(crate) fn decode(self, registry: &SchemaRegistry, form: Form) -> Result<RecordedEvent, ReadError> {
        let position = Position(u64::try_from(self.position).unwrap_or(0));
        let corrupt = |reason: String| ReadError::Corrupt { position, reason };
        let stream_id = StreamId::parse(&self.stream_id).map_err(|err| corrupt(err.to_string()))?;
        let payload: Value = serde_json::from_str(&self.payload_json).map_err(|err| corrupt(format!("payload: {err}")))?;
        let metadata: EventMetadata = serde_json::from_str(&self.metadata_json).map_err(|err| corrupt(format!("metadata: {err}")))?;
        let schema_version = u32::try_from(self.schema_version).map_err(|_| corrupt("schema version out of range".into()))?;
        let stream_version = u64::try_from(self.stream_version).map_err(|_| corrupt("stream version out of range".into()))?;
        let recorded_at =
            DateTime::from_timestamp_micros(self.recorded_at_micros).ok_or_else(|| corrupt("recorded time out of range".into()))?;
        let hash = ChainHash::from_slice(&self.hash).ok_or_else(|| corrupt("hash is not 32 bytes".into()))?;
        let (schema_version, payload) = match form {
            Form::AsStored => (schema_version, payload),
            Form::Latest => {
                registry.upcast(&self.event_type, schema_version, payload).map_err(|source| ReadError::Upcast { position, source })?
            }
        };
        Ok(RecordedEvent {
            event_id: self.event_id,
            event_type: self.event_type,
            schema_version,
            stream_id,
            stream_version,
            position,
            recorded_at,
            payload,
            metadata,
            hash,
        })
    }

    /// The row as stored text, for the relay: nothing is parsed unless the
    /// payload is of an older schema version than the latest (then it is
    /// upcast, as [`Form::Latest`] reads do).
    #[cfg(any(feature = "sqlite", feature = "postgres"))]
    pub(crate) fn into_stored(self, registry: &SchemaRegistry) -> Result<crate::StoredEvent, ReadError> {
        let schema_version = u32::try_from(self.schema_version).unwrap_or(0);
        if registry.latest_version(&self.event_type).ok() != Some(schema_version) {
            return self.decode(registry, Form::Latest).map(|event| crate::StoredEvent::from(&event));
        }
        let position = Position(u64::try_from(self.position).unwrap_or(0));
        let corrupt = |reason: String| ReadError::Corrupt { position, reason };
        Ok(crate::StoredEvent {
            event_id: self.event_id,
            stream_id: StreamId::parse(&self.stream_id).map_err(|err| corrupt(err.to_string()))?,
            stream_version: u64::try_from(self.stream_version).map_err(|_| corrupt("stream version out of range".into()))?,
            position,
            recorded_at: DateTime::from_timestamp_micros(self.recorded_at_micros)
                .ok_or_else(|| corrupt("recorded time out of range".into()))?,
            hash: ChainHash::from_slice(&self.hash).ok_or_else(|| corrupt("hash is not 32 bytes".into()))?,
            event_type: self.event_type,
            schema_version,
            payload: self.payload_json,
            metadata: self.metadata_json,
            bus_traceparent: None,
        })
    }

    /// The identity idempotency compares, from a row read back.
    pub(crate) fn identity(&self) -> Result<StoredIdentity, ReadError> {
        let position = Position(u64::try_from(self.position).unwrap_or(0));
        let corrupt = |reason: String| ReadError::Corrupt { position, reason };
        let canonical =
            |text: &str| serde_json::from_str::<Value>(text).map(|value| canonical_json(&value)).map_err(|err| corrupt(err.to_string()));
        Ok(StoredIdentity {
            event_id: self.event_id,
            stream_id: StreamId::parse(&self.stream_id).map_err(|err| corrupt(err.to_string()))?,
            stream_version: u64::try_from(self.stream_version).unwrap_or(0),
            position,
            event_type: self.event_type.clone(),
            schema_version: u32::try_from(self.schema_version).unwrap_or(0),
            payload_json: canonical(&self.payload_json)?,
            metadata_json: canonical(&self.metadata_json)?,
        })
    }
}
