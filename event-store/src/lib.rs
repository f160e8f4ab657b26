//! The event store of Strata: an append-only log of events grouped in streams,
//! with a global order that readers can follow.
//!
//! The seam is two traits, [`EventReader`] (read, subscribe) and [`EventStore`]
//! (append), held as `Arc<dyn …>`. Backends, picked by the composition root:
//!
//! - [`MemoryEventStore`]: in-process, for unit tests and the embedded demo;
//! - `SqliteEventStore` (feature `sqlite`, default): the embedded default, one
//!   file, durable commits with group commit (see `sqlite` module docs);
//! - `PostgresEventStore` (feature `postgres`): the production log, with group
//!   commit and a gap-safe global order (see `postgres` module docs).
//!
//! Every backend passes the same conformance suite (`tests/it/conformance.rs`).
//! The shared append logic (expected versions, idempotent ids, hash chain) lives
//! in one backend-independent planner, so the backends differ only in IO.

pub mod bus;
mod checkpoint;
#[cfg(any(feature = "sqlite", feature = "postgres"))]
mod commit;
mod error;
pub mod hash;
pub mod lease;
mod memory;
mod plan;
pub mod relay;
mod snapshot;
mod store;
mod subscription;
pub mod trace;
mod types;
pub mod verify;

#[cfg(feature = "testkit")]
pub mod testkit;

#[cfg(any(feature = "sqlite", feature = "postgres"))]
mod migrate;
#[cfg(feature = "postgres")]
mod postgres;
#[cfg(any(feature = "sqlite", feature = "postgres"))]
mod sql_backend;
#[cfg(feature = "sqlite")]
mod sqlite;

pub use checkpoint::CheckpointStore;
pub use error::{chain, AppendError, BackendError, Component, ReadError};
pub use hash::{ChainKey, ChainKeyring};
pub use memory::MemoryEventStore;
pub use plan::{stored_bytes, AppendLimits, MAX_EVENTS_PER_APPEND, MAX_EVENT_BYTES, RECORD_OVERHEAD_BYTES};
pub use snapshot::{Snapshot, SnapshotStore};
pub use store::{EventReader, EventStore, Subscribe};
pub use types::{
    validate_category, AppendOutcome, ChainHash, Direction, EventMetadata, ExpectedVersion, Form, InvalidStreamId, LogIdentity, NewEvent,
    Position, ReadAll, ReadStream, RecordedEvent, StoredEvent, StreamAppend, StreamAppended, StreamHead, StreamId, MAX_STREAM_ID_LEN,
};

#[cfg(feature = "postgres")]
pub use postgres::{AppendHook, AppendPhase, PostgresConfig, PostgresEventStore};
#[cfg(feature = "sqlite")]
pub use sqlite::{SqliteConfig, SqliteEventStore};

/// What [`forward_event_reader!`] names from the crate's dependencies.
#[doc(hidden)]
pub mod __private {
    pub use async_trait::async_trait;
    pub use futures_util::stream::BoxStream;
    pub use uuid::Uuid;
}
