//! The event store seam: [`EventReader`] and [`EventStore`].
//!
//! # Guarantees (every backend; checked by the conformance suite)
//!
//! - **Expected version.** An append names, per stream, what it expects (any,
//!   no stream, stream exists, exact N). On a mismatch the whole call fails with
//!   [`AppendError::Conflict`] carrying the actual version, and nothing is written.
//! - **Atomicity.** One call may append to several streams; all of it is
//!   written or none of it.
//! - **Idempotent ids.** If every event id of a call is already stored with the
//!   same content, the call succeeds with the original versions and positions
//!   (`replayed = true`) and writes nothing; if any id is stored with other
//!   content, or only some are, it fails with [`AppendError::EventIdReused`].
//! - **Validation.** Every payload is checked against its JSON Schema before
//!   anything is written; an unknown type or version or an invalid payload is
//!   [`AppendError::InvalidEvent`] naming the field.
//! - **Global order.** Positions grow in the order readers see events: a reader
//!   that has seen position P never later sees a new event below P, and no
//!   committed event is ever skipped. Positions may have gaps.
//! - **Hash chain.** Each event stores a hash over its content and the previous
//!   event of its stream ([`crate::hash`]); [`crate::verify`] walks it.
//! - **Upcasting.** Reads return the latest version of each event type unless
//!   [`crate::Form::AsStored`] is asked for.
//!
//! # Failure modes
//!
//! [`AppendError::Backend`] means the outcome is unknown (the commit may have
//! happened): retrying with the same event ids is always safe. A subscription
//! ends after its first error; resubscribe from the last position processed.

use async_trait::async_trait;
use futures_util::stream::BoxStream;
use uuid::Uuid;

use crate::{
    AppendError, AppendOutcome, Form, Position, ReadAll, ReadError, ReadStream, RecordedEvent, StoredEvent, StreamAppend, StreamHead,
    StreamId,
};

/// Where a subscription starts and what it follows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subscribe {
    /// Deliver events strictly after this position.
    pub after: Position,
    /// Only streams of this category.
    pub category: Option<String>,
    /// Events fetched per read while catching up.
    pub batch_size: usize,
    /// While idle, read again at least this often even if no wake-up came
    /// (a lost notification, a listener whose connection went half-open):
    /// a bound on how long a commit can go unseen, not the way commits are
    /// normally seen.
    pub poll_every: std::time::Duration,
}

impl Subscribe {
    /// Every event after `after`, 500 per read, polled every 5 s at most.
    pub fn after(after: Position) -> Self {
        Self { after, category: None, batch_size: 500, poll_every: std::time::Duration::from_secs(5) }
    }
}

/// Reading the log. Projections and auditors hold an `Arc<dyn EventReader>`, so
/// appending is impossible for them by type.
#[async_trait]
pub trait EventReader: Send + Sync {
    /// Reads a page of one stream. An absent stream reads as empty.
    async fn read_stream(&self, stream_id: &StreamId, request: ReadStream) -> Result<Vec<RecordedEvent>, ReadError>;

    /// Reads several streams at once: the events of each `(stream, version)`
    /// after that version, at or below `until`, in position order, at most
    /// `limit` in all (upcast). The SQL backends answer in one query; this
    /// default reads the streams one after the other.
    async fn read_streams(&self, after: &[(StreamId, u64)], until: Position, limit: usize) -> Result<Vec<RecordedEvent>, ReadError> {
        let mut events = Vec::new();
        for (stream_id, version) in after {
            let mut from = version.saturating_add(1);
            loop {
                let mut request = ReadStream::forward(limit.max(1));
                request.from_version = from;
                let page = self.read_stream(stream_id, request).await?;
                let full = page.len() >= limit.max(1);
                let Some(last) = page.last().map(|e| e.stream_version) else { break };
                let past = page.iter().any(|e| e.position > until);
                events.extend(page.into_iter().filter(|e| e.position <= until));
                // Positions grow with versions: past `until`, the rest is too.
                if !full || past {
                    break;
                }
                from = last + 1;
            }
        }
        events.sort_by_key(|e| e.position);
        events.truncate(limit);
        Ok(events)
    }

    /// Reads a page of the global log in position order.
    async fn read_all(&self, request: ReadAll) -> Result<Vec<RecordedEvent>, ReadError>;

    /// Follows the global log: catches up from `after`, then delivers new events
    /// as they commit, woken by the backend's notification (PostgreSQL
    /// LISTEN/NOTIFY, an in-process signal), never by a busy poll; while idle
    /// it also reads again every [`Subscribe::poll_every`], so a lost
    /// notification delays an event by that much at most. Each event is
    /// delivered once, in position order. The stream ends after an error.
    fn subscribe(&self, request: Subscribe) -> BoxStream<'static, Result<RecordedEvent, ReadError>>;

    /// Reads a page of the global log as stored text ([`StoredEvent`]), for
    /// the relay. The SQL backends hand over the stored JSON text unparsed;
    /// the default reads whole events and writes them out again.
    async fn read_all_stored(&self, request: ReadAll) -> Result<Vec<StoredEvent>, ReadError> {
        Ok(self.read_all(request).await?.iter().map(StoredEvent::from).collect())
    }

    /// [`EventReader::subscribe`] as stored text, for the relay.
    fn subscribe_stored(&self, request: Subscribe) -> BoxStream<'static, Result<StoredEvent, ReadError>> {
        Box::pin(futures_util::StreamExt::map(self.subscribe(request), |item| item.map(|event| StoredEvent::from(&event))))
    }

    /// One event by id, `None` if no event has that id. The command handler
    /// uses it to tell whether a command id was already applied.
    async fn read_event(&self, event_id: Uuid, form: Form) -> Result<Option<RecordedEvent>, ReadError>;

    /// The head of one stream, `None` if it does not exist.
    async fn stream_head(&self, stream_id: &StreamId) -> Result<Option<StreamHead>, ReadError>;

    /// Stream heads in stream-id order, after `after` (for audits).
    async fn stream_heads(&self, after: Option<&StreamId>, limit: usize) -> Result<Vec<StreamHead>, ReadError>;

    /// The highest position readers can see now.
    async fn head_position(&self) -> Result<Position, ReadError>;

    /// Every category that has at least one stream, sorted.
    async fn categories(&self) -> Result<Vec<String>, ReadError>;

    /// Which log this is ([`crate::LogIdentity`]).
    async fn log_identity(&self) -> Result<crate::LogIdentity, ReadError>;

    /// Checks that the backend answers (for `/readyz`).
    async fn ping(&self) -> Result<(), ReadError>;

    /// How long the backend's commit listener has heard nothing from the
    /// database (PostgreSQL: no notification, not even its own heartbeat);
    /// `None` when there is no listener (in-process backends, or nobody
    /// subscribed yet). `/readyz` reports a listener silent for too long.
    fn listener_silence(&self) -> Option<std::time::Duration> {
        None
    }

    /// `memory`, `sqlite` or `postgres`.
    fn backend_name(&self) -> &'static str;
}

/// Appending to the log, on top of reading it.
#[async_trait]
pub trait EventStore: EventReader {
    /// Appends events to one or more streams atomically, each stream guarded by
    /// its expected version. See the module docs for every guarantee.
    async fn append(&self, request: Vec<StreamAppend>) -> Result<AppendOutcome, AppendError>;
}

/// Implements [`EventReader`] for a decorator by handing every read to its
/// field `$inner` (anything that implements `EventReader`, `Arc<dyn …>`
/// included): `forward_event_reader!(MeteredStore, inner);`. A decorator of
/// the writing side (metrics, injected append faults) then reads exactly as
/// what it wraps, including the methods with defaults (`read_streams`,
/// `read_all_stored`, `listener_silence`) that a hand-written forwarding
/// forgot and so read one stream at a time. A decorator that changes reads
/// implements the trait itself.
#[macro_export]
macro_rules! forward_event_reader {
    ($decorator:ty, $inner:ident) => {
        #[$crate::__private::async_trait]
        impl $crate::EventReader for $decorator {
            async fn read_stream(
                &self,
                stream_id: &$crate::StreamId,
                request: $crate::ReadStream,
            ) -> ::std::result::Result<::std::vec::Vec<$crate::RecordedEvent>, $crate::ReadError> {
                self.$inner.read_stream(stream_id, request).await
            }
            async fn read_streams(
                &self,
                after: &[($crate::StreamId, u64)],
                until: $crate::Position,
                limit: usize,
            ) -> ::std::result::Result<::std::vec::Vec<$crate::RecordedEvent>, $crate::ReadError> {
                self.$inner.read_streams(after, until, limit).await
            }
            async fn read_all(
                &self,
                request: $crate::ReadAll,
            ) -> ::std::result::Result<::std::vec::Vec<$crate::RecordedEvent>, $crate::ReadError> {
                self.$inner.read_all(request).await
            }
            fn subscribe(
                &self,
                request: $crate::Subscribe,
            ) -> $crate::__private::BoxStream<'static, ::std::result::Result<$crate::RecordedEvent, $crate::ReadError>> {
                self.$inner.subscribe(request)
            }
            async fn read_all_stored(
                &self,
                request: $crate::ReadAll,
            ) -> ::std::result::Result<::std::vec::Vec<$crate::StoredEvent>, $crate::ReadError> {
                self.$inner.read_all_stored(request).await
            }
            fn subscribe_stored(
                &self,
                request: $crate::Subscribe,
            ) -> $crate::__private::BoxStream<'static, ::std::result::Result<$crate::StoredEvent, $crate::ReadError>> {
                self.$inner.subscribe_stored(request)
            }
            async fn read_event(
                &self,
                event_id: $crate::__private::Uuid,
                form: $crate::Form,
            ) -> ::std::result::Result<::std::option::Option<$crate::RecordedEvent>, $crate::ReadError> {
                self.$inner.read_event(event_id, form).await
            }
            async fn stream_head(
                &self,
                stream_id: &$crate::StreamId,
            ) -> ::std::result::Result<::std::option::Option<$crate::StreamHead>, $crate::ReadError> {
                self.$inner.stream_head(stream_id).await
            }
            async fn stream_heads(
                &self,
                after: ::std::option::Option<&$crate::StreamId>,
                limit: usize,
            ) -> ::std::result::Result<::std::vec::Vec<$crate::StreamHead>, $crate::ReadError> {
                self.$inner.stream_heads(after, limit).await
            }
            async fn head_position(&self) -> ::std::result::Result<$crate::Position, $crate::ReadError> {
                self.$inner.head_position().await
            }
            async fn categories(&self) -> ::std::result::Result<::std::vec::Vec<::std::string::String>, $crate::ReadError> {
                self.$inner.categories().await
            }
            async fn log_identity(&self) -> ::std::result::Result<$crate::LogIdentity, $crate::ReadError> {
                self.$inner.log_identity().await
            }
            async fn ping(&self) -> ::std::result::Result<(), $crate::ReadError> {
                self.$inner.ping().await
            }
            fn listener_silence(&self) -> ::std::option::Option<::std::time::Duration> {
                self.$inner.listener_silence()
            }
            fn backend_name(&self) -> &'static str {
                self.$inner.backend_name()
            }
        }
    };
}
