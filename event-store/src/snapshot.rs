//! The snapshot seam: [`SnapshotStore`] keeps, per stream, the newest folded
//! state of an aggregate so that loading a long stream reads only its tail.
//!
//! # Guarantees
//!
//! - A snapshot is a cache beside the log, never a source of truth: losing
//!   one (or the whole table) costs a longer fold and nothing else.
//! - One snapshot per stream. Saving keeps the one with the higher stream
//!   version, except that a snapshot of another `snapshot_version` (the
//!   aggregate's state format) always replaces the stored one, so a format
//!   change cannot leave an unusable snapshot in place forever.
//! - The store does not interpret `state` or `snapshot_version`: the command
//!   handler ignores a snapshot whose format is not the aggregate's current one.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde_json::Value;

use crate::{BackendError, ReadError, StreamId};

/// The folded state of one stream at one version.
#[derive(Debug, Clone, PartialEq)]
pub struct Snapshot {
    /// The stream the state was folded from.
    pub stream_id: StreamId,
    /// The format of `state`, owned by the aggregate (bump it when the state
    /// type changes and old snapshots are ignored).
    pub snapshot_version: u32,
    /// The stream version the state includes (events 1..=stream_version).
    pub stream_version: u64,
    /// The serialized state.
    pub state: Value,
    /// When it was taken (microsecond precision on SQL backends).
    pub taken_at: DateTime<Utc>,
}

/// Reading and writing snapshots. Every event store backend implements it
/// beside its log (same database, same file, same process memory).
#[async_trait]
pub trait SnapshotStore: Send + Sync {
    /// The stored snapshot of a stream, whatever its format; `None` if there is none.
    async fn load_snapshot(&self, stream_id: &StreamId) -> Result<Option<Snapshot>, ReadError>;

    /// Stores a snapshot under the rules of the module docs.
    async fn save_snapshot(&self, snapshot: Snapshot) -> Result<(), BackendError>;
}
