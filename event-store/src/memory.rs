//! [`MemoryEventStore`]: the whole log in process memory, behind one mutex.
//! For unit tests and throwaway demos; it forgets everything on drop. It runs
//! the same planner as the durable backends, so it keeps every guarantee of
//! the seam except durability.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};

use async_trait::async_trait;
use futures_util::stream::BoxStream;
use strata_schemas::SchemaRegistry;
use tokio::sync::watch;
use uuid::Uuid;

use crate::plan::{prepare, AppendLimits, BatchPlanner, Head, StoredRow};
use crate::subscription::{follow, PageReader};
use crate::{
    AppendError, AppendOutcome, BackendError, CheckpointStore, Direction, EventReader, EventStore, Form, Position, ReadAll, ReadError,
    ReadStream, RecordedEvent, Snapshot, SnapshotStore, StreamAppend, StreamHead, StreamId, Subscribe,
};

#[derive(Default)]
struct State {
    rows: Vec<StoredRow>,
    streams: BTreeMap<StreamId, (Head, Vec<usize>)>,
    ids: HashMap<Uuid, usize>,
    snapshots: HashMap<StreamId, Snapshot>,
    checkpoints: HashMap<String, Position>,
}

struct Inner {
    registry: Arc<SchemaRegistry>,
    limits: AppendLimits,
    chain_key: Option<crate::hash::ChainKey>,
    /// New for every log: it keeps nothing.
    identity: crate::LogIdentity,
    state: Mutex<State>,
    wake: watch::Sender<u64>,
}

/// The in-memory backend. Cloning shares the same log.
#[derive(Clone)]
pub struct MemoryEventStore {
    inner: Arc<Inner>,
}

impl MemoryEventStore {
    /// An empty log validating against `registry`.
    pub fn new(registry: Arc<SchemaRegistry>) -> Self {
        Self::with_limits(registry, AppendLimits::default())
    }

    /// An empty log validating against `registry`, taking appends within `limits`.
    pub fn with_limits(registry: Arc<SchemaRegistry>, limits: AppendLimits) -> Self {
        Self::keyed(registry, limits, None)
    }

    /// An empty log whose hashes `chain_key` seals (v3) when given.
    pub fn keyed(registry: Arc<SchemaRegistry>, limits: AppendLimits, chain_key: Option<crate::hash::ChainKey>) -> Self {
        Self {
            inner: Arc::new(Inner {
                registry,
                limits,
                chain_key,
                identity: crate::LogIdentity::new_random(),
                state: Mutex::new(State::default()),
                wake: watch::channel(0).0,
            }),
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave the log half-written:
        // rows are pushed only after planning succeeded.
        self.inner.state.lock().unwrap_or_else(|poison| poison.into_inner())
    }

    fn page(&self, request: &ReadAll) -> Result<Vec<RecordedEvent>, ReadError> {
        let state = self.state();
        let start = usize::try_from(request.after.0).unwrap_or(usize::MAX);
        state
            .rows
            .iter()
            .skip(start)
            .filter(|row| {
                request.category.as_deref().is_none_or(|category| row.stream_id.split_once('-').map(|(c, _)| c) == Some(category))
            })
            .take(request.limit)
            .cloned()
            .map(|row| row.decode(&self.inner.registry, request.form))
            .collect()
    }
}

#[async_trait]
impl EventReader for MemoryEventStore {
    async fn read_stream(&self, stream_id: &StreamId, request: ReadStream) -> Result<Vec<RecordedEvent>, ReadError> {
        let state = self.state();
        let Some((_, indices)) = state.streams.get(stream_id) else {
            return Ok(Vec::new());
        };
        let from = request.from_version.max(1);
        let rows: Vec<&StoredRow> = match request.direction {
            Direction::Forward => {
                indices.iter().skip(usize::try_from(from - 1).unwrap_or(usize::MAX)).take(request.limit).map(|&i| &state.rows[i]).collect()
            }
            Direction::Backward => indices
                .iter()
                .take(usize::try_from(from).unwrap_or(usize::MAX))
                .rev()
                .take(request.limit)
                .map(|&i| &state.rows[i])
                .collect(),
        };
        rows.into_iter().cloned().map(|row| row.decode(&self.inner.registry, request.form)).collect()
    }

    async fn read_all(&self, request: ReadAll) -> Result<Vec<RecordedEvent>, ReadError> {
        self.page(&request)
    }

    fn subscribe(&self, request: Subscribe) -> BoxStream<'static, Result<RecordedEvent, ReadError>> {
        let this = self.clone();
        let read: PageReader = Arc::new(move |page| {
            let result = this.page(&page);
            Box::pin(async move { result })
        });
        follow(read, self.inner.wake.subscribe(), request)
    }

    async fn read_event(&self, event_id: Uuid, form: Form) -> Result<Option<RecordedEvent>, ReadError> {
        let row = {
            let state = self.state();
            state.ids.get(&event_id).map(|&i| state.rows[i].clone())
        };
        row.map(|row| row.decode(&self.inner.registry, form)).transpose()
    }

    async fn stream_head(&self, stream_id: &StreamId) -> Result<Option<StreamHead>, ReadError> {
        Ok(self.state().streams.get(stream_id).map(|(head, _)| StreamHead {
            stream_id: stream_id.clone(),
            version: head.version,
            last_hash: head.hash,
        }))
    }

    async fn stream_heads(&self, after: Option<&StreamId>, limit: usize) -> Result<Vec<StreamHead>, ReadError> {
        let state = self.state();
        Ok(state
            .streams
            .iter()
            .filter(|(stream_id, _)| after.is_none_or(|after| *stream_id > after))
            .take(limit)
            .map(|(stream_id, (head, _))| StreamHead { stream_id: stream_id.clone(), version: head.version, last_hash: head.hash })
            .collect())
    }

    async fn head_position(&self) -> Result<Position, ReadError> {
        Ok(Position(self.state().rows.len() as u64))
    }

    async fn categories(&self) -> Result<Vec<String>, ReadError> {
        let mut categories: Vec<String> = self.state().streams.keys().map(|stream_id| stream_id.category().to_owned()).collect();
        categories.dedup();
        categories.sort();
        categories.dedup();
        Ok(categories)
    }

    async fn ping(&self) -> Result<(), ReadError> {
        Ok(())
    }

    async fn log_identity(&self) -> Result<crate::LogIdentity, ReadError> {
        Ok(self.inner.identity.clone())
    }

    fn backend_name(&self) -> &'static str {
        "memory"
    }
}

#[async_trait]
impl EventStore for MemoryEventStore {
    async fn append(&self, request: Vec<StreamAppend>) -> Result<AppendOutcome, AppendError> {
        let prepared = prepare(&self.inner.registry, self.inner.limits, request)?;
        let mut state = self.state();
        let heads = prepared
            .stream_ids()
            .filter_map(|stream_id| state.streams.get(stream_id).map(|(head, _)| (stream_id.clone(), *head)))
            .collect();
        let stored = prepared
            .event_ids()
            .filter_map(|event_id| state.ids.get(&event_id))
            .map(|&i| state.rows[i].identity())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|err| AppendError::InvalidRequest { reason: err.to_string() })?;
        let first_position = Position(state.rows.len() as u64 + 1);
        let mut planner = BatchPlanner::new(heads, stored, chrono::Utc::now(), first_position, self.inner.chain_key.as_ref());
        let planned = planner.plan(&prepared);
        let (rows, heads) = planner.finish();
        for row in rows {
            let index = state.rows.len();
            state.ids.insert(row.event_id, index);
            state.streams.entry(row.stream_id.clone()).or_insert_with(|| (heads_placeholder(), Vec::new())).1.push(index);
            state.rows.push(StoredRow {
                position: index as i64 + 1,
                event_id: row.event_id,
                stream_id: row.stream_id.to_string(),
                stream_version: row.stream_version as i64,
                event_type: row.event_type,
                schema_version: i64::from(row.schema_version),
                payload_json: row.payload_json,
                metadata_json: row.metadata_json,
                recorded_at_micros: row.recorded_at.timestamp_micros(),
                hash: row.hash.0.to_vec(),
            });
        }
        for change in heads {
            if let Some(entry) = state.streams.get_mut(&change.stream_id) {
                entry.0 = change.head;
            }
        }
        let head = state.rows.len() as u64;
        drop(state);
        self.inner.wake.send_replace(head);
        planned.resolve(first_position)
    }
}

#[async_trait]
impl SnapshotStore for MemoryEventStore {
    async fn load_snapshot(&self, stream_id: &StreamId) -> Result<Option<Snapshot>, ReadError> {
        Ok(self.state().snapshots.get(stream_id).cloned())
    }

    async fn save_snapshot(&self, snapshot: Snapshot) -> Result<(), BackendError> {
        let mut state = self.state();
        let replace = state
            .snapshots
            .get(&snapshot.stream_id)
            .is_none_or(|stored| stored.stream_version < snapshot.stream_version || stored.snapshot_version != snapshot.snapshot_version);
        if replace {
            state.snapshots.insert(snapshot.stream_id.clone(), snapshot);
        }
        Ok(())
    }
}

#[async_trait]
impl CheckpointStore for MemoryEventStore {
    async fn load_checkpoint(&self, name: &str) -> Result<Position, ReadError> {
        Ok(self.state().checkpoints.get(name).copied().unwrap_or(Position::START))
    }

    async fn save_checkpoint(&self, name: &str, position: Position) -> Result<(), BackendError> {
        let mut state = self.state();
        let stored = state.checkpoints.entry(name.to_owned()).or_insert(Position::START);
        *stored = (*stored).max(position);
        Ok(())
    }
}

fn heads_placeholder() -> Head {
    Head { version: 0, hash: crate::ChainHash::GENESIS }
}
