//! The [`ReadModelSink`] seam: where read models live, with their
//! checkpoints, generations and dead letters.
//!
//! # Guarantees (every backend; checked by the sink conformance suite)
//!
//! - **Writes and checkpoint together.** [`ReadModelSink::commit`] applies a
//!   batch's writes, its per-stream versions, its dead letters and its
//!   position atomically, or nothing of it.
//! - **Per-stream guards.** Each batch carries, per stream, the version the
//!   runner planned from and the version it reached. If any stored version
//!   differs from the planned one (another replica, or a redelivery, got there
//!   first) nothing is written and [`Committed::Conflict`] names the stream.
//!   This is what makes a redelivered event have no effect.
//! - **Only current generations take writes.** A commit to a generation
//!   that is neither live nor being rebuilt is refused
//!   ([`Committed::Retired`]), so a worker that planned against the old
//!   generation during a switch cannot write into it after it was dropped.
//! - **Generations.** A projection's read model lives in numbered
//!   generations; readers follow the one the `live` pointer names, and
//!   [`ReadModelSink::switch_live`] moves the pointer in one step, only for
//!   the rebuild that reserved the generation (compare-and-set on the
//!   `rebuilding` mark, across processes). Every query resolves the pointer
//!   and reads in one atomic operation, so a reader sees one whole
//!   generation, never half of two.
//! - **Loss is noticed.** Every generation has a marker written when it is
//!   created. A live pointer without its generation's marker, or no live
//!   pointer at all where a commit expected one, means the backend lost data
//!   (a Redis restarted without persistence, evicted keys):
//!   [`ReadModelSink::live_generation`] answers `None` and
//!   [`ReadModelSink::commit`] answers [`Committed::Lost`], so the runner
//!   rebuilds from the log instead of filling an empty model event by event.
//! - **Operator state** (paused, last error, rate) is shared by every process
//!   using the sink, so `strata projections pause` in one process pauses the
//!   workers of all.

use std::collections::BTreeMap;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use strata_store::Position;
use uuid::Uuid;

use crate::projection::{Document, Write};

mod memory;
#[cfg(feature = "mongo")]
mod mongo;
#[cfg(feature = "redis")]
mod redis;

pub use memory::MemorySink;
#[cfg(feature = "mongo")]
pub use mongo::{MongoSink, MongoSinkConfig};
#[cfg(feature = "redis")]
pub use redis::{RedisSink, RedisSinkConfig};

/// A failure of the read-model backend.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SinkError {
    /// The backend could not be reached or refused the request.
    #[error(transparent)]
    Backend(strata_store::BackendError),
    /// Stored data is not what Strata wrote.
    #[error("read model holds malformed data at {key}: {reason}")]
    Malformed {
        /// Where.
        key: String,
        /// Why.
        reason: String,
    },
}

impl SinkError {
    pub(crate) fn backend(context: &'static str, source: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> Self {
        Self::Backend(strata_store::BackendError::of(strata_store::Component::ReadModel, context, source))
    }
}

/// One generation of one projection: where the runner writes.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Target {
    /// Projection name.
    pub projection: String,
    /// Generation number (1, 2, …).
    pub generation: u64,
}

/// The runner's guard for one stream in a batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamGuard {
    /// The stream.
    pub stream_id: String,
    /// The version the batch was planned from (0: none applied); `None`
    /// sets the version without checking (a rebuild's sole writer).
    pub expected: Option<u64>,
    /// The version the batch reaches.
    pub reached: u64,
}

/// An event a projection could not apply, parked with its reason.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DeadLetter {
    /// The event.
    pub event_id: Uuid,
    /// Its type.
    pub event_type: String,
    /// Its stream.
    pub stream_id: String,
    /// Its version in the stream.
    pub stream_version: u64,
    /// Its global position.
    pub position: u64,
    /// Why it was parked (for a later event of a parked stream: which event
    /// parked the stream).
    pub reason: String,
    /// How many times `apply` was tried (0: parked behind an earlier event).
    pub attempts: u32,
}

/// One atomic unit of work for [`ReadModelSink::commit`].
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Batch {
    /// Per-stream version guards.
    pub guards: Vec<StreamGuard>,
    /// The read-model writes, in order.
    pub writes: Vec<Write>,
    /// Events parked by this batch; their streams become parked from the
    /// first one's version.
    pub dead_letters: Vec<DeadLetter>,
    /// The highest global position the batch covers (the generation's
    /// position moves forward to it, never back).
    pub position: Position,
    /// How many events the batch covers (applied, skipped by type, or parked).
    pub events: u64,
}

/// The result of a commit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Committed {
    /// Everything was written.
    Done,
    /// The generation is neither live nor being rebuilt (a rebuild replaced
    /// it): nothing was written; plan again against the live one.
    Retired,
    /// The backend lost the read model (no live pointer, or the
    /// generation's marker is gone): nothing was written; rebuild it.
    Lost,
    /// A guard did not hold: nothing was written.
    Conflict {
        /// The stream whose stored version differed.
        stream_id: String,
        /// Its stored version.
        actual: u64,
    },
}

/// What the runner needs before planning a batch.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Loaded {
    /// Applied version per requested stream (0: none).
    pub stream_versions: Vec<u64>,
    /// For each requested stream, the version from which it is parked.
    pub parked_from: Vec<Option<u64>>,
    /// Each requested document.
    pub documents: Vec<Option<Document>>,
}

/// One entry of an index page.
#[derive(Debug, Clone, PartialEq)]
pub struct IndexEntry {
    /// The score (the next page's cursor).
    pub score: i64,
    /// The document key.
    pub key: String,
    /// The document, if it exists.
    pub document: Option<Document>,
}

/// Shared operator state of a projection.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Meta {
    /// Workers hold their deliveries while paused.
    pub paused: bool,
    /// What the last worker to report was doing (`running`, `stopped`, …).
    pub state: Option<String>,
    /// The last error a worker reported.
    pub last_error: Option<String>,
    /// Events per second over the last report interval.
    pub rate: Option<u64>,
    /// Generation being rebuilt, if any.
    pub rebuilding: Option<u64>,
    /// Times a worker found the read model lost and rebuilt it.
    pub losses: u64,
    /// How far the running rebuild is, as it last said (about every second).
    pub rebuild: Option<RebuildReading>,
}

/// A running rebuild's last report of its progress, kept beside the
/// projection's state so any process can show it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RebuildReading {
    /// The generation being built.
    pub generation: u64,
    /// Log positions read so far.
    pub events_done: u64,
    /// The log's head when the rebuild began: what it reads before it switches.
    pub events_total: u64,
    /// When it began.
    pub started_at: chrono::DateTime<chrono::Utc>,
    /// When it said this.
    pub at: chrono::DateTime<chrono::Utc>,
}

impl RebuildReading {
    /// Events per second since it began (0 before a second's worth).
    pub fn events_per_second(&self) -> f64 {
        let seconds = (self.at - self.started_at).num_milliseconds() as f64 / 1_000.0;
        if seconds > 0.0 {
            self.events_done as f64 / seconds
        } else {
            0.0
        }
    }

    /// Seconds to go at that rate; `None` before it has a rate.
    pub fn eta_seconds(&self) -> Option<f64> {
        let rate = self.events_per_second();
        (rate > 0.0).then(|| self.events_total.saturating_sub(self.events_done) as f64 / rate)
    }
}

/// One field of [`Meta`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetaField {
    /// `1` when paused.
    Paused,
    /// What the worker is doing.
    State,
    /// The last error.
    LastError,
    /// Events per second.
    Rate,
    /// Generation being rebuilt.
    Rebuilding,
    /// Times the read model was found lost.
    Losses,
    /// The running rebuild's [`RebuildReading`], as JSON.
    RebuildProgress,
}

impl MetaField {
    /// The stored field name.
    pub fn as_str(self) -> &'static str {
        match self {
            MetaField::Paused => "paused",
            MetaField::State => "state",
            MetaField::LastError => "lastError",
            MetaField::Rate => "rate",
            MetaField::Rebuilding => "rebuilding",
            MetaField::Losses => "losses",
            MetaField::RebuildProgress => "rebuildProgress",
        }
    }
}

impl Meta {
    /// Reads the state from stored fields.
    pub fn from_fields<'a>(fields: impl IntoIterator<Item = (&'a str, &'a str)>) -> Self {
        let mut meta = Meta::default();
        for (field, value) in fields {
            match field {
                "paused" => meta.paused = value == "1",
                "state" => meta.state = Some(value.to_owned()),
                "lastError" => meta.last_error = Some(value.to_owned()),
                "rate" => meta.rate = value.parse().ok(),
                "rebuilding" => meta.rebuilding = value.parse().ok(),
                "losses" => meta.losses = value.parse().unwrap_or(0),
                "rebuildProgress" => meta.rebuild = serde_json::from_str(value).ok(),
                _ => {}
            }
        }
        meta
    }
}

/// Progress of one generation.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GenerationStats {
    /// Highest global position committed.
    pub position: Position,
    /// Events committed (applied, skipped by type, or parked).
    pub events: u64,
    /// Events parked.
    pub dead_letters: u64,
}

/// Everything in one generation, for comparisons (tests, `rebuild --verify`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Dump {
    /// Every document.
    pub documents: BTreeMap<String, Document>,
    /// Every index, by score then key.
    pub indexes: BTreeMap<String, Vec<(i64, String)>>,
    /// Applied version per stream.
    pub stream_versions: BTreeMap<String, u64>,
}

/// A read-model backend (held as `Arc<dyn ReadModelSink>`).
#[async_trait]
pub trait ReadModelSink: Send + Sync {
    /// `memory`, `redis`, …
    fn backend_name(&self) -> &'static str;

    /// Checks that the backend answers.
    async fn ping(&self) -> Result<(), SinkError>;

    /// The generation readers follow, if any; `None` also when the pointer
    /// names a generation whose marker is gone (its data was lost).
    async fn live_generation(&self, projection: &str) -> Result<Option<u64>, SinkError>;

    /// Reserves a new generation number (greater than any before) and writes
    /// its marker.
    async fn new_generation(&self, projection: &str) -> Result<u64, SinkError>;

    /// Makes readers follow `generation`, in one step, if it is the one the
    /// `rebuilding` mark names (the mark is cleared with the switch); `false`
    /// (nothing changed) if another rebuild superseded it.
    async fn switch_live(&self, projection: &str, generation: u64) -> Result<bool, SinkError>;

    /// Sets the live pointer to `generation` (writing its marker) only if
    /// there is none yet; returns the live generation afterwards.
    async fn init_live(&self, projection: &str, generation: u64) -> Result<u64, SinkError>;

    /// Deletes everything of a generation that is not live.
    async fn drop_generation(&self, target: &Target) -> Result<(), SinkError>;

    /// Stream versions, parked markers and documents, in request order.
    async fn load(&self, target: &Target, streams: &[String], documents: &[String]) -> Result<Loaded, SinkError>;

    /// Commits a batch atomically (see the module guarantees).
    async fn commit(&self, target: &Target, batch: &Batch) -> Result<Committed, SinkError>;

    /// How long a rebuild waits after its switch before it drops the
    /// generation it replaced, so that queries already reading that one
    /// finish on it (zero where a query reads in one atomic step).
    fn retire_grace(&self) -> std::time::Duration {
        std::time::Duration::ZERO
    }

    /// Whether this backend bounds the size of one stored document (then
    /// the runner asks [`ReadModelSink::oversized`] before committing a
    /// write to a document, and parks the event that would pass the bound,
    /// since its commit could never succeed).
    fn bounds_documents(&self) -> bool {
        false
    }

    /// Why `document`, stored under `key`, would not fit this backend; `None`
    /// when it fits.
    fn oversized(&self, _key: &str, _document: &Document) -> Option<String> {
        None
    }

    /// A document of the live generation.
    async fn document(&self, projection: &str, key: &str) -> Result<Option<Document>, SinkError>;

    /// Up to `limit` entries of a live index with scores above `after`, in
    /// score order, each with its document.
    async fn page(&self, projection: &str, index: &str, after: Option<i64>, limit: usize) -> Result<Vec<IndexEntry>, SinkError>;

    /// Progress of a generation.
    async fn stats(&self, target: &Target) -> Result<GenerationStats, SinkError>;

    /// Up to `limit` dead letters of a generation, by position.
    async fn dead_letters(&self, target: &Target, limit: usize) -> Result<Vec<DeadLetter>, SinkError>;

    /// Shared operator state.
    async fn meta(&self, projection: &str) -> Result<Meta, SinkError>;

    /// Sets (or, with `None`, clears) one field of the shared operator state;
    /// fields are set one at a time so that workers, rebuilds and operators
    /// never overwrite each other's fields.
    async fn set_meta(&self, projection: &str, field: MetaField, value: Option<String>) -> Result<(), SinkError>;

    /// Everything in a generation.
    async fn dump(&self, target: &Target) -> Result<Dump, SinkError>;

    /// What live generations change from now on, by every process using this
    /// backend, so readers wait for a change instead of polling; `None` when
    /// the backend cannot tell. At most once: a feed may miss changes while
    /// it reconnects, and says so with [`Change::Everything`].
    async fn changes(&self) -> Result<Option<ChangeFeed>, SinkError> {
        Ok(None)
    }
}

/// The changes a backend reports ([`ReadModelSink::changes`]); it ends when
/// its connection does.
pub type ChangeFeed = std::pin::Pin<Box<dyn futures_util::Stream<Item = Change> + Send>>;

/// A change to what readers see.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// A commit to `projection`'s live generation moved these keys:
    /// [`stream_key`]s of its streams and [`document_key`]s of its documents.
    Applied {
        /// The projection.
        projection: String,
        /// What moved.
        keys: Vec<String>,
    },
    /// Anything may have changed (a switch to a rebuilt generation, or
    /// changes missed while the feed reconnected): readers look again.
    Everything,
}

/// The key of a stream's applied version in a [`Change::Applied`].
pub fn stream_key(stream_id: &str) -> String {
    format!("s:{stream_id}")
}

/// The key of a document in a [`Change::Applied`].
pub fn document_key(key: &str) -> String {
    format!("d:{key}")
}

impl Change {
    /// What a committed `batch` changes in `projection` (its streams and the
    /// documents it writes).
    pub fn of(projection: &str, batch: &Batch) -> Self {
        let mut keys: Vec<String> = batch.guards.iter().map(|guard| stream_key(&guard.stream_id)).collect();
        let mut documents: Vec<&str> = batch
            .writes
            .iter()
            .filter_map(|write| match write {
                Write::SetField { key, .. } | Write::SetMax { key, .. } | Write::DeleteDocument { key } => Some(key.as_str()),
                _ => None,
            })
            .collect();
        documents.sort_unstable();
        documents.dedup();
        keys.extend(documents.into_iter().map(document_key));
        Self::Applied { projection: projection.to_owned(), keys }
    }

    /// One line per key after the projection's name (Redis pub/sub payload).
    pub fn to_text(&self) -> String {
        match self {
            Change::Applied { projection, keys } => {
                std::iter::once(projection.as_str()).chain(keys.iter().map(String::as_str)).collect::<Vec<_>>().join("\n")
            }
            Change::Everything => String::new(),
        }
    }

    /// Reads [`Change::to_text`]; an empty text is [`Change::Everything`].
    pub fn from_text(text: &str) -> Self {
        let mut lines = text.split('\n');
        match lines.next().filter(|projection| !projection.is_empty()) {
            Some(projection) => Change::Applied { projection: projection.to_owned(), keys: lines.map(str::to_owned).collect() },
            None => Change::Everything,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::SinkError;

    /// The read model's backend failure is the store's `BackendError`,
    /// in the words it had before.
    #[test]
    fn a_read_model_backend_failure_is_the_shared_backend_error() {
        let error = SinkError::backend("writing a batch", std::io::Error::other("connection reset"));
        assert_eq!(strata_store::chain(&error), "read-model backend failed while writing a batch: connection reset");
        let SinkError::Backend(backend) = &error else { panic!("{error:?}") };
        assert_eq!(backend.component(), strata_store::Component::ReadModel);
    }
}
