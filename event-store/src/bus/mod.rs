//! The bus seam: [`Publisher`] and [`Subscriber`], the fan-out of the log to
//! projection workers and sagas (docs/design.md §1).
//!
//! # Guarantees (every backend; checked by the bus conformance suite)
//!
//! - **Durable publish.** `publish` returns only when the bus has stored every
//!   event, in the order given; an error means some may not be stored, and
//!   publishing the same events again is safe.
//! - **Dedupe.** Publishing an event the bus already holds stores nothing
//!   and reports `duplicate` (JetStream: the event id is the message id,
//!   within its duplicate window; Kafka: by position, below; in process:
//!   always).
//! - **At least once, explicitly acked.** Every delivery carries an
//!   [`Delivery::ack`]; a delivery not acked within the subscription's
//!   `ack_wait` (or nacked) is delivered again, with a higher
//!   `delivery_count`. Consumers must therefore tolerate redelivery
//!   (projections do, by committing the position with the read model).
//! - **Consumer groups.** Subscribers with the same group share the work:
//!   each message goes to one member at a time. Each group gets every message.
//!   The group remembers its progress across restarts (durable). On Kafka an
//!   ack that reaches a member after a rebalance moved the record's
//!   partition to another member does not count: the new owner delivers
//!   the record again (at least once, as everywhere).
//! - **Order.** A group receives each stream's messages in publish order
//!   (the in-process bus and JetStream keep the publish order across streams
//!   too; Kafka keeps it per partition, and a stream is in one partition);
//!   redeliveries can come after later messages. Per-stream order under
//!   redelivery is the consumer's concern (it knows each event's stream
//!   version).
//! - **Dedupe on Kafka** is by log position per partition (see
//!   [`kafka`]): publishers there must publish in position order, as the
//!   relay does.
//!
//! Subjects: `<prefix>.<category>.<stream id token>` (Kafka: topic
//! `<prefix>.<category>`, key = stream id), so a subscription can follow one
//! category.
//!
//! Beside events, the bus carries requests ([`Requester`] / [`Responder`]):
//! commands a saga sends to services in another process. A request is not
//! stored: it reaches one responder of the service (replicas share them), or
//! none, and the requester waits a bounded time for the answer. A request
//! that gets no answer in time may or may not have been handled; requests
//! must therefore be idempotent (commands carry their command id).

use std::fmt;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use futures_util::future::BoxFuture;
use futures_util::stream::BoxStream;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use uuid::Uuid;

use crate::{ChainHash, EventMetadata, Position, RecordedEvent, StoredEvent, StreamId};

#[cfg(feature = "kafka")]
pub mod kafka;
mod memory;
#[cfg(feature = "nats")]
mod nats;

#[cfg(feature = "kafka")]
pub use kafka::{KafkaBus, KafkaConfig};
pub use memory::MemoryBus;
#[cfg(feature = "nats")]
pub use nats::{JetStreamBus, JetStreamConfig};

/// A failure of the bus. Never a domain answer.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BusError {
    /// The bus could not be reached or refused the request.
    #[error(transparent)]
    Backend(crate::BackendError),
    /// A message on the bus is not a Strata event.
    #[error("message {message} on the bus is not a strata event: {reason}")]
    Malformed {
        /// Which message (subject or sequence).
        message: String,
        /// Why.
        reason: String,
    },
    /// The subscription request is malformed.
    #[error("invalid subscription: {reason}")]
    InvalidSubscription {
        /// What is wrong.
        reason: String,
    },
    /// The bus holds records another log wrote: publishing this log's
    /// positions there would be taken for theirs (docs/design.md §8).
    #[error(
        "{place} holds records of log {bus}, not of this log {log}: another database wrote it (a reset database, a restore whose epoch was not raised with `strata migrate --new-epoch`, or another deployment on the same prefix); give this deployment a prefix or stream of its own, or remove the old records"
    )]
    ForeignLog {
        /// The topic partition or stream.
        place: String,
        /// The identity on the bus (`<id>/<epoch>`).
        bus: String,
        /// This log's identity.
        log: String,
    },
    /// The bus's last record names this log, but the log holds another
    /// event (or none) at its position: the database went back in time.
    #[error(
        "{place} holds event {bus_event} at position {position}, but this log has {log_event} there: the database was restored from a backup (or reset) without `strata migrate --new-epoch`; run it, then start the relay again"
    )]
    Diverged {
        /// The topic partition or stream.
        place: String,
        /// The position both claim.
        position: u64,
        /// The event the bus holds there.
        bus_event: uuid::Uuid,
        /// What the log holds there.
        log_event: String,
    },
}

/// The log a publisher is bound to: its identity, and a reader to check a
/// bus record against the event the log holds at the record's position.
#[derive(Clone)]
pub struct BoundLog {
    /// Which log.
    pub identity: crate::LogIdentity,
    /// The log itself.
    pub reader: std::sync::Arc<dyn crate::EventReader>,
}

impl std::fmt::Debug for BoundLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BoundLog").field("identity", &self.identity).finish_non_exhaustive()
    }
}

/// What a bus record says of itself, for [`BoundLog::judge`].
#[derive(Debug, Clone)]
pub struct RecordOrigin<'a> {
    /// The topic partition or stream.
    pub place: &'a str,
    /// The log that wrote it, from its header (`None`: from before identities).
    pub log: Option<&'a crate::LogIdentity>,
    /// Its event id.
    pub event_id: Option<uuid::Uuid>,
    /// Its log position.
    pub position: u64,
}

impl BoundLog {
    /// Whether a bus record (the last of a partition or stream) may be
    /// taken as this log's: written by this log's identity and epoch (or
    /// before identities), and the event this log holds at its position is
    /// the same event. An older epoch of this log is [`Provenance::Superseded`];
    /// another log, a newer epoch, or another event at that position (a
    /// database restored without a new epoch) is refused.
    pub async fn judge(&self, record: &RecordOrigin<'_>) -> Result<Provenance, BusError> {
        if provenance(record.place, record.log, &self.identity)? == Provenance::Superseded {
            return Ok(Provenance::Superseded);
        }
        let Some(event_id) = record.event_id else { return Ok(Provenance::Ours) };
        let page = self
            .reader
            .read_all_stored(crate::ReadAll::after(crate::Position(record.position.saturating_sub(1)), 1))
            .await
            .map_err(|err| BusError::backend("reading the log to check the bus's last record", err))?;
        let here = page.first().filter(|event| event.position.0 == record.position).map(|event| event.event_id);
        if here == Some(event_id) {
            return Ok(Provenance::Ours);
        }
        Err(BusError::Diverged {
            place: record.place.to_owned(),
            position: record.position,
            bus_event: event_id,
            log_event: here.map_or_else(|| "nothing".to_owned(), |id| format!("event {id}")),
        })
    }
}

/// What a bus record's log identity says about trusting its position.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Provenance {
    /// Written by this log (or before logs had identities): its position is ours.
    Ours,
    /// Written by this log before its last restore (an older epoch): its
    /// position may have been given again to another event since, so
    /// nothing it says is trusted and this log publishes again from its
    /// checkpoint (consumers skip what they had).
    Superseded,
}

/// Compares the identity a record carries (`None`: a record from before
/// identities) with this log's; another log, or a newer epoch of this one
/// (this database is an older copy), is refused.
pub fn provenance(place: &str, record: Option<&crate::LogIdentity>, log: &crate::LogIdentity) -> Result<Provenance, BusError> {
    match record {
        None => Ok(Provenance::Ours),
        Some(record) if record.id == log.id && record.epoch == log.epoch => Ok(Provenance::Ours),
        Some(record) if record.id == log.id && record.epoch < log.epoch => Ok(Provenance::Superseded),
        Some(record) => Err(BusError::ForeignLog { place: place.to_owned(), bus: record.to_string(), log: log.to_string() }),
    }
}

/// The header naming the log that wrote a record (`<id>/<epoch>`).
pub const LOG_ID_HEADER: &str = "strata-log-id";

impl BusError {
    #[cfg_attr(not(any(feature = "nats", feature = "kafka")), allow(dead_code))]
    pub(crate) fn backend(context: &'static str, source: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> Self {
        Self::Backend(crate::BackendError::of(crate::Component::Bus, context, source))
    }
}

/// What the bus said about one published event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Published {
    /// The bus already held this event id; nothing was stored.
    pub duplicate: bool,
}

/// Who subscribes, to what.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subscription {
    /// The consumer group (durable name): letters, digits, `-`, `_`.
    pub group: String,
    /// Only this category.
    pub category: Option<String>,
    /// A delivery not acked within this time is delivered again.
    pub ack_wait: Duration,
}

impl Subscription {
    /// Every category, redelivery after 30 s.
    pub fn group(group: impl Into<String>) -> Self {
        Self { group: group.into(), category: None, ack_wait: Duration::from_secs(30) }
    }

    pub(crate) fn check(&self) -> Result<(), BusError> {
        let valid = !self.group.is_empty()
            && self.group.len() <= 64
            && self.group.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
        if !valid {
            return Err(BusError::InvalidSubscription {
                reason: format!("group {:?} must be 1 to 64 letters, digits, '-' or '_'", self.group),
            });
        }
        if let Some(category) = &self.category {
            crate::validate_category(category)
                .map_err(|reason| BusError::InvalidSubscription { reason: format!("category {category:?}: {reason}") })?;
        }
        if self.ack_wait.is_zero() {
            return Err(BusError::InvalidSubscription { reason: "ack_wait must be positive".into() });
        }
        Ok(())
    }
}

/// Settles one delivery with the bus.
pub(crate) type Settle = Box<dyn FnOnce(Settlement) -> BoxFuture<'static, Result<(), BusError>> + Send>;

/// How a delivery is settled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Settlement {
    Ack,
    Nack,
}

/// The message header that carries the W3C trace context of an event on a
/// networked bus (NATS and Kafka headers).
pub const TRACEPARENT_HEADER: &str = "traceparent";

/// One message handed to a subscriber.
pub struct Delivery {
    /// The event.
    pub event: RecordedEvent,
    /// 1 for the first delivery, more for redeliveries.
    pub delivery_count: u64,
    /// The trace context the message travelled under (its `traceparent`
    /// header: the relay's publish span), else the event's own; a consumer's
    /// span is its child.
    pub traceparent: Option<String>,
    settle: Settle,
}

impl fmt::Debug for Delivery {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Delivery")
            .field("event_id", &self.event.event_id)
            .field("stream_id", &self.event.stream_id)
            .field("position", &self.event.position)
            .field("delivery_count", &self.delivery_count)
            .finish()
    }
}

impl Delivery {
    pub(crate) fn new(event: RecordedEvent, delivery_count: u64, settle: Settle) -> Self {
        let traceparent = event.metadata.traceparent.clone();
        Self { event, delivery_count, traceparent, settle }
    }

    /// The delivery with the trace context of its message header, when it had one.
    pub(crate) fn traced(mut self, header: Option<String>) -> Self {
        if header.is_some() {
            self.traceparent = header;
        }
        self
    }

    /// The message is handled: the group will not see it again.
    pub async fn ack(self) -> Result<(), BusError> {
        (self.settle)(Settlement::Ack).await
    }

    /// The message was not handled: deliver it again now.
    pub async fn nack(self) -> Result<(), BusError> {
        (self.settle)(Settlement::Nack).await
    }
}

/// Putting events on the bus (the relay holds one).
#[async_trait]
pub trait Publisher: Send + Sync {
    /// Publishes events in order, with many acknowledgements in flight; returns
    /// once the bus stored (or deduplicated) every one. The events travel as
    /// stored: their payload and metadata text is written into the message
    /// as it is ([`encode_stored`]), never parsed and encoded again.
    async fn publish(&self, events: &[StoredEvent]) -> Result<Vec<Published>, BusError>;

    /// Checks that the bus answers (for `/readyz`); in-process buses always do.
    async fn ping(&self) -> Result<(), BusError> {
        Ok(())
    }

    /// Binds the publisher to the log it publishes: every record it sends
    /// carries the log's identity ([`LOG_ID_HEADER`]), and a bus that holds
    /// another log's records is refused ([`BusError::ForeignLog`]). The
    /// relay binds before its first publish. Buses that keep nothing across
    /// processes (in-process) have nothing to check.
    async fn bind_log(&self, log: &BoundLog) -> Result<(), BusError> {
        let _ = log;
        Ok(())
    }

    /// Drops what this publisher still holds queued and not yet sent, and
    /// forgets what it learnt of the bus: its relay lost the lease, and a
    /// new leader publishes now. Buses that queue nothing do nothing.
    async fn abandon(&self) {}
}

/// Taking events off the bus (projection workers and sagas hold one).
#[async_trait]
pub trait Subscriber: Send + Sync {
    /// Joins a consumer group and streams its deliveries. The stream ends
    /// after its first error; subscribe again to go on (the group remembers
    /// what was acked).
    async fn subscribe(&self, subscription: Subscription) -> Result<BoxStream<'static, Result<Delivery, BusError>>, BusError>;
}

/// Sends a request to a service and waits for its answer.
#[async_trait]
pub trait Requester: Send + Sync {
    /// Sends `payload` to `service` and returns the answer, or `None` when no
    /// answer came within `timeout` (no responder is serving the service, it
    /// did not answer, or the answer was lost). An error means the bus
    /// failed; the request may not have been sent.
    async fn request(&self, service: &str, payload: Vec<u8>, timeout: Duration) -> Result<Option<Vec<u8>>, BusError>;

    /// Removes what this requester made on the bus for its answers (Kafka:
    /// its reply topic), when its process stops. Buses that make nothing do
    /// nothing.
    async fn close(&self) {}
}

/// Serves the requests of a service; every responder of one service shares
/// its requests, each request reaching one of them.
#[async_trait]
pub trait Responder: Send + Sync {
    /// Joins `service`'s responders and streams its requests. The stream
    /// ends when the connection does; serve again to go on.
    async fn serve(&self, service: &str) -> Result<BoxStream<'static, IncomingRequest>, BusError>;
}

/// Sends an answer back to a requester.
pub(crate) type Reply = Box<dyn FnOnce(Vec<u8>) -> BoxFuture<'static, Result<(), BusError>> + Send>;

/// The header of a request that says when its requester stops waiting
/// (Unix milliseconds, decimal text).
pub const DEADLINE_HEADER: &str = "strata-deadline";

/// One request taken off the bus.
pub struct IncomingRequest {
    /// What was asked.
    pub payload: Vec<u8>,
    /// When the requester stops waiting for the answer, if it said.
    pub deadline: Option<std::time::SystemTime>,
    reply: Option<Reply>,
}

impl fmt::Debug for IncomingRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IncomingRequest").field("bytes", &self.payload.len()).finish()
    }
}

impl IncomingRequest {
    #[cfg_attr(not(any(feature = "nats", feature = "kafka")), allow(dead_code))]
    pub(crate) fn new(payload: Vec<u8>, deadline: Option<std::time::SystemTime>, reply: Option<Reply>) -> Self {
        Self { payload, deadline, reply }
    }

    /// A request that wants no answer (what a bus hands out for a request
    /// sent without a reply address; also for driving a responder in tests).
    pub fn without_reply(payload: Vec<u8>, deadline: Option<std::time::SystemTime>) -> Self {
        Self { payload, deadline, reply: None }
    }

    /// Has the requester stopped waiting? A responder that is behind skips
    /// such requests instead of working for nobody (the requester has sent
    /// the request again, and that copy waits behind this one).
    pub fn expired(&self) -> bool {
        self.deadline.is_some_and(|deadline| deadline <= std::time::SystemTime::now())
    }

    /// Answers the request (nothing happens if the requester asked for no answer).
    pub async fn reply(self, payload: Vec<u8>) -> Result<(), BusError> {
        match self.reply {
            Some(reply) => reply(payload).await,
            None => Ok(()),
        }
    }
}

/// A request deadline as the header carries it.
#[cfg_attr(not(any(feature = "nats", feature = "kafka")), allow(dead_code))]
pub(crate) fn deadline_text(timeout: Duration) -> String {
    let at = std::time::SystemTime::now() + timeout;
    at.duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64).to_string()
}

/// A request deadline read from its header.
#[cfg_attr(not(any(feature = "nats", feature = "kafka")), allow(dead_code))]
pub(crate) fn parse_deadline(text: &[u8]) -> Option<std::time::SystemTime> {
    let millis: u64 = std::str::from_utf8(text).ok()?.trim().parse().ok()?;
    std::time::UNIX_EPOCH.checked_add(Duration::from_millis(millis))
}

/// The subject of a service's requests: `<prefix>_rpc.<service>`, outside
/// the events' `<prefix>.>` so that no stream stores (or acknowledges) it.
pub fn request_subject(prefix: &str, service: &str) -> String {
    format!("{prefix}_rpc.{service}")
}

/// The subject of an event: `<prefix>.<category>.<token of the stream id>`.
/// The id part is escaped so that `.`, `*`, `>` and other bytes a NATS token
/// cannot hold never split or widen a subject.
pub fn subject(prefix: &str, stream_id: &StreamId) -> String {
    let mut token = String::with_capacity(stream_id.id().len());
    for byte in stream_id.id().bytes() {
        if byte.is_ascii_alphanumeric() || byte == b'-' {
            token.push(byte as char);
        } else {
            token.push_str(&format!("_{byte:02X}"));
        }
    }
    format!("{prefix}.{}.{token}", stream_id.category())
}

/// The bytes an event travels as on a networked bus (JSON with every field
/// of [`RecordedEvent`]; the hash as 64 hex digits).
pub fn encode_event(event: &RecordedEvent) -> Vec<u8> {
    WireEvent::encode(event)
}

/// The bytes a stored event travels as: the same JSON as [`encode_event`],
/// written around the stored payload and metadata text without parsing it.
pub fn encode_stored(event: &StoredEvent) -> Vec<u8> {
    fn put<T: Serialize + ?Sized>(out: &mut Vec<u8>, value: &T) {
        serde_json::to_writer(&mut *out, value).expect("scalars serialize");
    }
    let mut out = Vec::with_capacity(320 + event.event_type.len() + event.payload.len() + event.metadata.len());
    out.extend_from_slice(b"{\"eventId\":");
    put(&mut out, &event.event_id);
    out.extend_from_slice(b",\"eventType\":");
    put(&mut out, event.event_type.as_str());
    out.extend_from_slice(b",\"schemaVersion\":");
    put(&mut out, &event.schema_version);
    out.extend_from_slice(b",\"streamId\":");
    put(&mut out, event.stream_id.as_str());
    out.extend_from_slice(b",\"streamVersion\":");
    put(&mut out, &event.stream_version);
    out.extend_from_slice(b",\"position\":");
    put(&mut out, &event.position);
    out.extend_from_slice(b",\"recordedAt\":");
    put(&mut out, &event.recorded_at);
    out.extend_from_slice(b",\"payload\":");
    out.extend_from_slice(event.payload.as_bytes());
    out.extend_from_slice(b",\"metadata\":");
    out.extend_from_slice(event.metadata.as_bytes());
    out.extend_from_slice(b",\"hash\":\"");
    out.extend_from_slice(event.hash.to_string().as_bytes());
    out.extend_from_slice(b"\"}");
    out
}

/// The wire form of an event on the bus (JSON), for the networked backends.
#[derive(Debug, Serialize, Deserialize)]
#[cfg_attr(not(any(feature = "nats", feature = "kafka")), allow(dead_code))]
#[serde(rename_all = "camelCase")]
pub(crate) struct WireEvent {
    event_id: Uuid,
    event_type: String,
    schema_version: u32,
    stream_id: StreamId,
    stream_version: u64,
    position: Position,
    recorded_at: DateTime<Utc>,
    payload: Value,
    metadata: EventMetadata,
    hash: String,
}

#[cfg_attr(not(any(feature = "nats", feature = "kafka")), allow(dead_code))]
impl WireEvent {
    pub(crate) fn encode(event: &RecordedEvent) -> Vec<u8> {
        // Borrowed, so encoding copies nothing but the output bytes.
        #[derive(Serialize)]
        #[serde(rename_all = "camelCase")]
        struct WireRef<'a> {
            event_id: Uuid,
            event_type: &'a str,
            schema_version: u32,
            stream_id: &'a str,
            stream_version: u64,
            position: Position,
            recorded_at: DateTime<Utc>,
            payload: &'a Value,
            metadata: &'a EventMetadata,
            hash: String,
        }
        let wire = WireRef {
            event_id: event.event_id,
            event_type: &event.event_type,
            schema_version: event.schema_version,
            stream_id: event.stream_id.as_str(),
            stream_version: event.stream_version,
            position: event.position,
            recorded_at: event.recorded_at,
            payload: &event.payload,
            metadata: &event.metadata,
            hash: event.hash.to_string(),
        };
        serde_json::to_vec(&wire).expect("wire events serialize")
    }

    pub(crate) fn decode(message: &str, bytes: &[u8]) -> Result<RecordedEvent, BusError> {
        let malformed = |reason: String| BusError::Malformed { message: message.to_owned(), reason };
        let wire: WireEvent = serde_json::from_slice(bytes).map_err(|err| malformed(err.to_string()))?;
        let hash = decode_hash(&wire.hash).ok_or_else(|| malformed("hash is not 64 hex digits".into()))?;
        Ok(RecordedEvent {
            event_id: wire.event_id,
            event_type: wire.event_type,
            schema_version: wire.schema_version,
            stream_id: wire.stream_id,
            stream_version: wire.stream_version,
            position: wire.position,
            recorded_at: wire.recorded_at,
            payload: wire.payload,
            metadata: wire.metadata,
            hash,
        })
    }
}

#[cfg_attr(not(any(feature = "nats", feature = "kafka")), allow(dead_code))]
fn decode_hash(hex: &str) -> Option<ChainHash> {
    if hex.len() != 64 {
        return None;
    }
    let mut bytes = [0u8; 32];
    for (i, byte) in bytes.iter_mut().enumerate() {
        *byte = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(ChainHash(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The bus's backend failure is the store's [`crate::BackendError`]:
    /// same words as before, the cause reached once through the chain.
    #[test]
    fn a_bus_backend_failure_is_the_shared_backend_error() {
        let error = BusError::backend("publishing to JetStream", std::io::Error::other("timed out"));
        assert_eq!(crate::chain(&error), "bus backend failed while publishing to JetStream: timed out");
        let BusError::Backend(backend) = &error else { panic!("{error:?}") };
        assert_eq!((backend.component(), backend.context()), (crate::Component::Bus, "publishing to JetStream"));
        let store = crate::BackendError::new("reading the global log", std::io::Error::other("refused"));
        assert_eq!(crate::chain(&store), "event store backend failed while reading the global log: refused");
    }

    #[test]
    fn stored_text_travels_as_the_same_bytes_as_an_encoded_event() {
        let event = RecordedEvent {
            event_id: Uuid::new_v4(),
            event_type: "Noted \"quoted\"".into(),
            schema_version: 2,
            stream_id: StreamId::parse("order-a.b").unwrap(),
            stream_version: 3,
            position: Position(41),
            recorded_at: DateTime::from_timestamp_micros(1_800_000_000_123_456).unwrap(),
            payload: serde_json::json!({ "text": "é\u{1}", "n": [1, 2.5, null] }),
            metadata: EventMetadata { traceparent: Some("00-ab-cd-01".into()), actor: Some("ann".into()), ..EventMetadata::default() },
            hash: ChainHash([9; 32]),
        };
        let stored = StoredEvent::from(&event);
        assert_eq!(encode_stored(&stored), encode_event(&event));
        assert_eq!(WireEvent::decode("m", &encode_stored(&stored)).unwrap(), event);
        assert_eq!(stored.traceparent().as_deref(), Some("00-ab-cd-01"));
        assert_eq!(stored.decode().unwrap(), event);
    }

    #[test]
    fn subjects_escape_what_a_nats_token_cannot_hold() {
        let stream_id = StreamId::parse("order-a.b*c>d_e").unwrap();
        assert_eq!(subject("strata", &stream_id), "strata.order.a_2Eb_2Ac_3Ed_5Fe");
        let plain = StreamId::parse("inventory-SKU-1").unwrap();
        assert_eq!(subject("strata", &plain), "strata.inventory.SKU-1");
    }
}
