//! [`SqliteEventStore`]: the embedded default, one SQLite file in WAL mode.
//!
//! SQLite has one writer at a time. Appends take the write lock up front
//! (`BEGIN IMMEDIATE`) on a single writer connection, so positions taken from
//! `strata_log_head` inside the transaction follow commit order, exactly as on
//! PostgreSQL. Commits are durable (`synchronous = FULL`). Readers use their
//! own connections and never block the writer.
//!
//! Subscriptions are woken by an in-process signal after each commit: the
//! embedded store is meant for one process. Another process appending to the
//! same file is seen by this process's subscribers at their next wake-up.

use std::collections::HashMap;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::Utc;
use futures_util::stream::BoxStream;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteRow, SqliteSynchronous};
use sqlx::{Connection, Row};
use strata_schemas::SchemaRegistry;
use tokio::sync::watch;

use crate::plan::{prepare, AppendLimits, BatchPlanner, Head, StoredRow};
use crate::subscription::{follow, PageReader};
use crate::{
    AppendError, AppendOutcome, BackendError, ChainHash, CheckpointStore, Direction, EventReader, EventStore, Form, Position, ReadAll,
    ReadError, ReadStream, RecordedEvent, Snapshot, SnapshotStore, StoredEvent, StreamAppend, StreamHead, StreamId, Subscribe,
};

mod sql {
    pub(super) const LOCK_STREAMS: &str = include_str!("../sql/sqlite/lock_streams.sql");
    pub(super) const FIND_EVENTS: &str = include_str!("../sql/sqlite/find_events.sql");
    pub(super) const TAKE_POSITIONS: &str = include_str!("../sql/sqlite/take_positions.sql");
    pub(super) const INSERT_EVENT: &str = include_str!("../sql/sqlite/insert_event.sql");
    pub(super) const UPSERT_STREAM: &str = include_str!("../sql/sqlite/upsert_stream.sql");
    pub(super) const READ_STREAM_FORWARD: &str = include_str!("../sql/sqlite/read_stream_forward.sql");
    pub(super) const READ_STREAM_BACKWARD: &str = include_str!("../sql/sqlite/read_stream_backward.sql");
    pub(super) const READ_ALL: &str = include_str!("../sql/sqlite/read_all.sql");
    pub(super) const READ_CATEGORY: &str = include_str!("../sql/sqlite/read_category.sql");
    pub(super) const STREAM_HEAD: &str = include_str!("../sql/sqlite/stream_head.sql");
    pub(super) const STREAM_HEADS: &str = include_str!("../sql/sqlite/stream_heads.sql");
    pub(super) const HEAD_POSITION: &str = include_str!("../sql/sqlite/head_position.sql");
    pub(super) const CATEGORIES: &str = include_str!("../sql/sqlite/categories.sql");
    pub(super) const READ_EVENT: &str = include_str!("../sql/sqlite/read_event.sql");
    pub(super) const LOAD_SNAPSHOT: &str = include_str!("../sql/sqlite/load_snapshot.sql");
    pub(super) const SAVE_SNAPSHOT: &str = include_str!("../sql/sqlite/save_snapshot.sql");
    pub(super) const LOAD_CHECKPOINT: &str = include_str!("../sql/sqlite/load_checkpoint.sql");
    pub(super) const SAVE_CHECKPOINT: &str = include_str!("../sql/sqlite/save_checkpoint.sql");
}

/// Where the file is and how many reader connections to keep.
#[derive(Debug, Clone)]
pub struct SqliteConfig {
    /// `sqlite://path/to/file.db` (created if missing).
    pub url: String,
    /// Reader connections.
    pub readers: u32,
}

impl SqliteConfig {
    /// Defaults for `url`: 4 readers.
    pub fn new(url: impl Into<String>) -> Self {
        Self { url: url.into(), readers: 4 }
    }
}

struct Inner {
    writer: SqlitePool,
    readers: SqlitePool,
    registry: Arc<SchemaRegistry>,
    limits: AppendLimits,
    wake: watch::Sender<u64>,
}

/// The SQLite backend. Cloning shares the connections.
#[derive(Clone)]
pub struct SqliteEventStore {
    inner: Arc<Inner>,
}

fn backend(context: &'static str) -> impl FnOnce(sqlx::Error) -> BackendError {
    move |err| BackendError::new(context, err)
}

impl SqliteEventStore {
    /// Opens (creating if needed) the file. Does not migrate; call
    /// [`SqliteEventStore::migrate`].
    pub async fn connect(config: SqliteConfig, registry: Arc<SchemaRegistry>) -> Result<Self, BackendError> {
        let options = SqliteConnectOptions::from_str(&config.url)
            .map_err(|err| BackendError::new("parsing the SQLite URL", err))?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(Duration::from_secs(10));
        let writer =
            SqlitePoolOptions::new().max_connections(1).connect_with(options.clone()).await.map_err(backend("opening the SQLite file"))?;
        let readers = SqlitePoolOptions::new()
            .max_connections(config.readers.max(1))
            .connect_with(options.read_only(false))
            .await
            .map_err(backend("opening the SQLite file"))?;
        Ok(Self { inner: Arc::new(Inner { writer, readers, registry, limits: AppendLimits::default(), wake: watch::channel(0).0 }) })
    }

    /// Applies the embedded migrations (idempotent).
    pub async fn migrate(&self) -> Result<(), BackendError> {
        crate::migrate::migrator(crate::migrate::SQLITE)
            .await?
            .run(&self.inner.writer)
            .await
            .map_err(|err| BackendError::new("migrating the SQLite schema", err))
    }

    async fn rows(inner: &Inner, request: &ReadAll) -> Result<Vec<SqliteRow>, ReadError> {
        let after = i64::try_from(request.after.0).unwrap_or(i64::MAX);
        let limit = i64::try_from(request.limit).unwrap_or(i64::MAX);
        match &request.category {
            None => sqlx::query(sql::READ_ALL).bind(after).bind(limit).fetch_all(&inner.readers).await,
            Some(category) => sqlx::query(sql::READ_CATEGORY).bind(after).bind(limit).bind(category).fetch_all(&inner.readers).await,
        }
        .map_err(|err| ReadError::Backend(backend("reading the global log")(err)))
    }

    async fn page(inner: &Inner, request: ReadAll) -> Result<Vec<RecordedEvent>, ReadError> {
        decode_rows(&Self::rows(inner, &request).await?, &inner.registry, request.form)
    }

    async fn page_stored(inner: &Inner, request: ReadAll) -> Result<Vec<StoredEvent>, ReadError> {
        Self::rows(inner, &request)
            .await?
            .iter()
            .map(|row| {
                decode_stored(row)
                    .map_err(|err| ReadError::Backend(BackendError::new("decoding an event row", err)))?
                    .into_stored(&inner.registry)
            })
            .collect()
    }

    async fn append_once(&self, request: Vec<StreamAppend>) -> Result<AppendOutcome, AppendError> {
        let append = prepare(&self.inner.registry, self.inner.limits, request)?;
        let mut connection = self.inner.writer.acquire().await.map_err(backend("acquiring the SQLite writer"))?;
        let mut tx = connection.begin_with("BEGIN IMMEDIATE").await.map_err(backend("starting an append"))?;
        let stream_ids: Vec<&str> = append.stream_ids().map(StreamId::as_str).collect();
        let stream_ids = serde_json::to_string(&stream_ids).unwrap_or_default();
        let heads = sqlx::query(sql::LOCK_STREAMS)
            .bind(stream_ids)
            .fetch_all(&mut *tx)
            .await
            .map_err(backend("reading stream heads"))?
            .iter()
            .map(decode_head)
            .collect::<Result<HashMap<_, _>, _>>()
            .map_err(backend("decoding stream heads"))?;
        let event_ids: Vec<String> = append.event_ids().map(|id| id.simple().to_string()).collect();
        let stored = sqlx::query(sql::FIND_EVENTS)
            .bind(serde_json::to_string(&event_ids).unwrap_or_default())
            .fetch_all(&mut *tx)
            .await
            .map_err(backend("looking up event ids"))?
            .iter()
            .map(|row| {
                let row = decode_stored(row).map_err(backend("decoding a stored event"))?;
                row.identity().map_err(|err| AppendError::Backend(BackendError::new("decoding a stored event", err)))
            })
            .collect::<Result<Vec<_>, AppendError>>()?;
        // The write lock is held: positions after the head are this append's.
        let log_head: i64 = sqlx::query_scalar(sql::HEAD_POSITION).fetch_one(&mut *tx).await.map_err(backend("reading the log head"))?;
        let mut planner = BatchPlanner::new(heads, stored, Utc::now(), Position(log_head as u64 + 1));
        let planned = planner.plan(&append);
        let (rows, head_changes) = planner.finish();
        if rows.is_empty() {
            tx.rollback().await.map_err(backend("ending an append"))?;
            return planned.resolve(Position(0));
        }
        let base: i64 = sqlx::query(sql::TAKE_POSITIONS)
            .bind(rows.len() as i64)
            .fetch_one(&mut *tx)
            .await
            .and_then(|row| row.try_get("base"))
            .map_err(backend("taking positions"))?;
        if base != log_head {
            return Err(AppendError::Backend(BackendError::new(
                "taking positions",
                format!("the log head moved under the write lock: {log_head} then {base}"),
            )));
        }
        for (offset, row) in rows.iter().enumerate() {
            sqlx::query(sql::INSERT_EVENT)
                .bind(base + 1 + offset as i64)
                .bind(row.event_id)
                .bind(row.stream_id.as_str())
                .bind(row.stream_version as i64)
                .bind(row.stream_id.category())
                .bind(&row.event_type)
                .bind(i64::from(row.schema_version))
                .bind(&row.payload_json)
                .bind(&row.metadata_json)
                .bind(row.recorded_at.timestamp_micros())
                .bind(&row.hash.0[..])
                .execute(&mut *tx)
                .await
                .map_err(backend("inserting an event"))?;
        }
        for change in &head_changes {
            sqlx::query(sql::UPSERT_STREAM)
                .bind(change.stream_id.as_str())
                .bind(change.stream_id.category())
                .bind(change.head.version as i64)
                .bind(&change.head.hash.0[..])
                .execute(&mut *tx)
                .await
                .map_err(backend("moving a stream head"))?;
        }
        tx.commit().await.map_err(backend("committing an append"))?;
        self.inner.wake.send_modify(|n| *n += 1);
        planned.resolve(Position(base as u64 + 1))
    }
}

fn decode_head(row: &SqliteRow) -> Result<(StreamId, Head), sqlx::Error> {
    let stream_id: String = row.try_get("stream_id")?;
    let stream_id = StreamId::parse(&stream_id).map_err(|err| sqlx::Error::Decode(err.into()))?;
    let version: i64 = row.try_get("version")?;
    let hash: Vec<u8> = row.try_get("last_hash")?;
    let hash = ChainHash::from_slice(&hash).ok_or_else(|| sqlx::Error::Decode("stream hash is not 32 bytes".into()))?;
    Ok((stream_id, Head { version: version as u64, hash }))
}

fn decode_stored(row: &SqliteRow) -> Result<StoredRow, sqlx::Error> {
    Ok(StoredRow {
        position: row.try_get("position")?,
        event_id: row.try_get("event_id")?,
        stream_id: row.try_get("stream_id")?,
        stream_version: row.try_get("stream_version")?,
        event_type: row.try_get("event_type")?,
        schema_version: row.try_get("schema_version")?,
        payload_json: row.try_get("payload")?,
        metadata_json: row.try_get("metadata")?,
        recorded_at_micros: row.try_get("recorded_at")?,
        hash: row.try_get("hash")?,
    })
}

fn decode_rows(rows: &[SqliteRow], registry: &SchemaRegistry, form: Form) -> Result<Vec<RecordedEvent>, ReadError> {
    rows.iter()
        .map(|row| {
            decode_stored(row).map_err(|err| ReadError::Backend(BackendError::new("decoding an event row", err)))?.decode(registry, form)
        })
        .collect()
}

fn decode_stream_head(row: &SqliteRow) -> Result<StreamHead, ReadError> {
    let (stream_id, head) = decode_head(row).map_err(|err| ReadError::Backend(BackendError::new("decoding a stream head", err)))?;
    Ok(StreamHead { stream_id, version: head.version, last_hash: head.hash })
}

#[async_trait]
impl EventReader for SqliteEventStore {
    async fn read_event(&self, event_id: uuid::Uuid, form: Form) -> Result<Option<RecordedEvent>, ReadError> {
        let row = sqlx::query(sql::READ_EVENT)
            .bind(event_id)
            .fetch_optional(&self.inner.readers)
            .await
            .map_err(backend("reading an event by id"))?;
        Ok(decode_rows(row.as_slice(), &self.inner.registry, form)?.pop())
    }

    async fn read_stream(&self, stream_id: &StreamId, request: ReadStream) -> Result<Vec<RecordedEvent>, ReadError> {
        let from = i64::try_from(request.from_version).unwrap_or(i64::MAX);
        let limit = i64::try_from(request.limit).unwrap_or(i64::MAX);
        let query = match request.direction {
            Direction::Forward => sql::READ_STREAM_FORWARD,
            Direction::Backward => sql::READ_STREAM_BACKWARD,
        };
        let rows = sqlx::query(query)
            .bind(stream_id.as_str())
            .bind(from)
            .bind(limit)
            .fetch_all(&self.inner.readers)
            .await
            .map_err(backend("reading a stream"))?;
        decode_rows(&rows, &self.inner.registry, request.form)
    }

    async fn read_all(&self, request: ReadAll) -> Result<Vec<RecordedEvent>, ReadError> {
        Self::page(&self.inner, request).await
    }

    fn subscribe(&self, request: Subscribe) -> BoxStream<'static, Result<RecordedEvent, ReadError>> {
        let inner = self.inner.clone();
        let wake = inner.wake.subscribe();
        let read: PageReader = Arc::new(move |page| {
            let inner = inner.clone();
            Box::pin(async move { Self::page(&inner, page).await })
        });
        follow(read, wake, request)
    }

    async fn read_all_stored(&self, request: ReadAll) -> Result<Vec<StoredEvent>, ReadError> {
        Self::page_stored(&self.inner, request).await
    }

    fn subscribe_stored(&self, request: Subscribe) -> BoxStream<'static, Result<StoredEvent, ReadError>> {
        let inner = self.inner.clone();
        let wake = inner.wake.subscribe();
        let read: PageReader<StoredEvent> = Arc::new(move |page| {
            let inner = inner.clone();
            Box::pin(async move { Self::page_stored(&inner, page).await })
        });
        follow(read, wake, request)
    }

    async fn stream_head(&self, stream_id: &StreamId) -> Result<Option<StreamHead>, ReadError> {
        let row = sqlx::query(sql::STREAM_HEAD)
            .bind(stream_id.as_str())
            .fetch_optional(&self.inner.readers)
            .await
            .map_err(backend("reading a stream head"))?;
        row.as_ref().map(decode_stream_head).transpose()
    }

    async fn stream_heads(&self, after: Option<&StreamId>, limit: usize) -> Result<Vec<StreamHead>, ReadError> {
        let rows = sqlx::query(sql::STREAM_HEADS)
            .bind(after.map_or("", StreamId::as_str))
            .bind(i64::try_from(limit).unwrap_or(i64::MAX))
            .fetch_all(&self.inner.readers)
            .await
            .map_err(backend("listing streams"))?;
        rows.iter().map(decode_stream_head).collect()
    }

    async fn head_position(&self) -> Result<Position, ReadError> {
        let position: i64 =
            sqlx::query_scalar(sql::HEAD_POSITION).fetch_one(&self.inner.readers).await.map_err(backend("reading the log head"))?;
        Ok(Position(position as u64))
    }

    async fn categories(&self) -> Result<Vec<String>, ReadError> {
        Ok(sqlx::query_scalar(sql::CATEGORIES).fetch_all(&self.inner.readers).await.map_err(backend("listing categories"))?)
    }

    async fn ping(&self) -> Result<(), ReadError> {
        sqlx::query("SELECT 1").execute(&self.inner.readers).await.map_err(backend("pinging SQLite"))?;
        Ok(())
    }

    fn backend_name(&self) -> &'static str {
        "sqlite"
    }
}

#[async_trait]
impl EventStore for SqliteEventStore {
    async fn append(&self, request: Vec<StreamAppend>) -> Result<AppendOutcome, AppendError> {
        self.append_once(request).await
    }
}

#[async_trait]
impl SnapshotStore for SqliteEventStore {
    async fn load_snapshot(&self, stream_id: &StreamId) -> Result<Option<Snapshot>, ReadError> {
        let Some(row) = sqlx::query(sql::LOAD_SNAPSHOT)
            .bind(stream_id.as_str())
            .fetch_optional(&self.inner.readers)
            .await
            .map_err(backend("reading a snapshot"))?
        else {
            return Ok(None);
        };
        let decode = || -> Result<Snapshot, Box<dyn std::error::Error + Send + Sync>> {
            let state: String = row.try_get("state")?;
            let taken_at: i64 = row.try_get("taken_at")?;
            Ok(Snapshot {
                stream_id: stream_id.clone(),
                snapshot_version: u32::try_from(row.try_get::<i64, _>("snapshot_version")?)?,
                stream_version: u64::try_from(row.try_get::<i64, _>("stream_version")?)?,
                state: serde_json::from_str(&state)?,
                taken_at: chrono::DateTime::from_timestamp_micros(taken_at).ok_or("snapshot time out of range")?,
            })
        };
        decode().map(Some).map_err(|err| ReadError::Backend(BackendError::new("decoding a snapshot", err)))
    }

    async fn save_snapshot(&self, snapshot: Snapshot) -> Result<(), BackendError> {
        sqlx::query(sql::SAVE_SNAPSHOT)
            .bind(snapshot.stream_id.as_str())
            .bind(i64::from(snapshot.snapshot_version))
            .bind(i64::try_from(snapshot.stream_version).unwrap_or(i64::MAX))
            .bind(snapshot.state.to_string())
            .bind(snapshot.taken_at.timestamp_micros())
            .execute(&self.inner.writer)
            .await
            .map_err(backend("saving a snapshot"))?;
        Ok(())
    }
}

#[async_trait]
impl CheckpointStore for SqliteEventStore {
    async fn load_checkpoint(&self, name: &str) -> Result<Position, ReadError> {
        let position: Option<i64> = sqlx::query_scalar(sql::LOAD_CHECKPOINT)
            .bind(name)
            .fetch_optional(&self.inner.readers)
            .await
            .map_err(backend("reading a checkpoint"))?;
        Ok(Position(position.map_or(0, |position| position.max(0) as u64)))
    }

    async fn save_checkpoint(&self, name: &str, position: Position) -> Result<(), BackendError> {
        sqlx::query(sql::SAVE_CHECKPOINT)
            .bind(name)
            .bind(i64::try_from(position.0).unwrap_or(i64::MAX))
            .bind(chrono::Utc::now().timestamp_micros())
            .execute(&self.inner.writer)
            .await
            .map_err(backend("saving a checkpoint"))?;
        Ok(())
    }
}
