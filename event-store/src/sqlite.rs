//! [`SqliteEventStore`]: the embedded default, one SQLite file in WAL mode.
//!
//! SQLite has one writer at a time. Appends take the write lock up front
//! (`BEGIN IMMEDIATE`) on a single writer connection, so positions taken from
//! `strata_log_head` inside the transaction follow commit order, exactly as on
//! PostgreSQL. Readers use their own connections and never block the writer.
//!
//! # Group commit and durability
//! Concurrent appends go through the same group commit as PostgreSQL
//! (`commit.rs`): one committer takes everything queued and writes it in one
//! transaction of a fixed number of statements (`Writer::write_batch`), so a
//! batch costs one WAL commit whatever its size. The settings are chosen for
//! durability, not for a benchmark: `journal_mode = WAL` (readers never block
//! the writer, a commit appends to the WAL instead of rewriting pages) and
//! `synchronous = FULL` (every commit fsyncs the WAL before the append is
//! acknowledged, so an acknowledged event survives a power loss, not only a
//! crash of the process; `NORMAL` would be faster and lose the last commits
//! on power loss). Group commit is what makes FULL affordable: one fsync per
//! batch, not per append. `busy_timeout = 10s` covers another process
//! holding the write lock briefly.
//!
//! Subscriptions are woken by an in-process signal after each commit: the
//! embedded store is meant for one process. Another process appending to the
//! same file is seen by this process's subscribers at their next wake-up.

use std::collections::{BTreeSet, HashMap};
use std::future::Future;
use std::pin::Pin;
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
use tokio::task::JoinHandle;

use crate::commit::{commit_or_split, BatchFailure, BatchWriter, CommitError, GroupCommit};
use crate::plan::{prepare, AppendLimits, BatchPlanner, Head, Planned, PreparedAppend, StoredRow};
use crate::subscription::{follow, PageReader};
use crate::{
    AppendError, AppendOutcome, BackendError, ChainHash, CheckpointStore, Direction, EventReader, EventStore, Form, Position, ReadAll,
    ReadError, ReadStream, RecordedEvent, Snapshot, SnapshotStore, StoredEvent, StreamAppend, StreamHead, StreamId, Subscribe,
};

mod sql {
    pub(super) const LOCK_STREAMS: &str = include_str!("../sql/sqlite/lock_streams.sql");
    pub(super) const FIND_EVENTS: &str = include_str!("../sql/sqlite/find_events.sql");
    pub(super) const TAKE_POSITIONS: &str = include_str!("../sql/sqlite/take_positions.sql");
    pub(super) const INSERT_EVENTS: &str = include_str!("../sql/sqlite/insert_events.sql");
    pub(super) const UPSERT_STREAMS: &str = include_str!("../sql/sqlite/upsert_streams.sql");
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
    /// Batch concurrent appends into shared transactions (one fsync each).
    pub group_commit: bool,
    /// Most events one batch takes from the queue.
    pub max_batch_events: usize,
}

impl SqliteConfig {
    /// Defaults for `url`: 4 readers, group commit of up to 2,000 events.
    pub fn new(url: impl Into<String>) -> Self {
        Self { url: url.into(), readers: 4, group_commit: true, max_batch_events: 2_000 }
    }
}

struct Inner {
    writer: Arc<Writer>,
    readers: SqlitePool,
    registry: Arc<SchemaRegistry>,
    limits: AppendLimits,
    group_commit: Option<GroupCommit>,
    committers: Vec<JoinHandle<()>>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        for task in self.committers.drain(..) {
            task.abort();
        }
    }
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
            .busy_timeout(Duration::from_secs(10))
            // Room for every INSERT shape (`ROWS_PER_INSERT`) beside the other statements.
            .statement_cache_capacity(ROWS_PER_INSERT + 64);
        let writer =
            SqlitePoolOptions::new().max_connections(1).connect_with(options.clone()).await.map_err(backend("opening the SQLite file"))?;
        let readers = SqlitePoolOptions::new()
            .max_connections(config.readers.max(1))
            .connect_with(options.read_only(false))
            .await
            .map_err(backend("opening the SQLite file"))?;
        let writer = Arc::new(Writer { pool: writer, wake: watch::channel(0).0 });
        let (group_commit, committers) = if config.group_commit {
            // One committer: SQLite has one writer at a time anyway.
            let (group_commit, committers) = GroupCommit::start(writer.clone(), 1, config.max_batch_events);
            (Some(group_commit), committers)
        } else {
            (None, Vec::new())
        };
        Ok(Self { inner: Arc::new(Inner { writer, readers, registry, limits: AppendLimits::default(), group_commit, committers }) })
    }

    /// Applies the embedded migrations (idempotent).
    pub async fn migrate(&self) -> Result<(), BackendError> {
        crate::migrate::migrator(crate::migrate::SQLITE)
            .await?
            .run(&self.inner.writer.pool)
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
}

/// Rows per INSERT statement (eleven bound values each, far below SQLite's
/// 32,766 variables; at most this many statement shapes are prepared).
const ROWS_PER_INSERT: usize = 64;

/// `sql::INSERT_EVENTS` with `rows` groups of values.
fn insert_statement(rows: usize) -> String {
    let mut statement = String::with_capacity(sql::INSERT_EVENTS.len() + rows * 36);
    statement.push_str(sql::INSERT_EVENTS.trim_end());
    for row in 0..rows {
        statement.push_str(if row == 0 { " (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)" } else { ", (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)" });
    }
    statement
}

/// The single writer connection and the wake-up of subscribers after each commit.
struct Writer {
    pool: SqlitePool,
    wake: watch::Sender<u64>,
}

impl BatchWriter for Writer {
    fn commit_together<'a>(
        &'a self,
        appends: &'a [&'a PreparedAppend],
    ) -> Pin<Box<dyn Future<Output = Result<Vec<Result<AppendOutcome, AppendError>>, BatchFailure>> + Send + 'a>> {
        Box::pin(async move {
            let (planned, first_position) = self.write_batch_with_retries(appends).await.map_err(BatchFailure::from)?;
            if first_position.0 > 0 {
                self.wake.send_modify(|n| *n += 1);
            }
            Ok(planned.into_iter().map(|planned| planned.resolve(first_position)).collect())
        })
    }
}

impl Writer {
    /// [`Writer::write_batch`], once more with the reused ids looked up when
    /// the unique key on event_id refused a row the planner did not know was
    /// stored.
    async fn write_batch_with_retries(&self, appends: &[&PreparedAppend]) -> Result<(Vec<Planned>, Position), CommitError> {
        match self.write_batch(appends, false).await {
            Err(CommitError::Sql(sqlx::Error::Database(error))) if error.kind() == sqlx::error::ErrorKind::UniqueViolation => {
                tracing::debug!(%error, "append batch met a stored event id; retrying with the ids looked up");
                self.write_batch(appends, true).await
            }
            other => other,
        }
    }

    /// One transaction for the whole batch: take the write lock, read the
    /// heads and reused ids, plan every request in order, insert the rows
    /// and move the heads (one statement each, whatever the batch's size:
    /// every statement is a hop to sqlx's SQLite thread, and those hops, not
    /// SQLite, were the cost), commit (one fsync). Returns each request's decision
    /// and the position of the batch's first row (`0` when nothing was
    /// written).
    async fn write_batch(&self, appends: &[&PreparedAppend], look_up_ids: bool) -> Result<(Vec<Planned>, Position), CommitError> {
        let started = std::time::Instant::now();
        let mut connection = self.pool.acquire().await?;
        let mut tx = connection.begin_with("BEGIN IMMEDIATE").await?;
        let begun = started.elapsed();
        let stream_ids: BTreeSet<&str> = appends.iter().flat_map(|append| append.stream_ids().map(StreamId::as_str)).collect();
        let locked_rows =
            sqlx::query(sql::LOCK_STREAMS).bind(serde_json::to_string(&stream_ids).unwrap_or_default()).fetch_all(&mut *tx).await?;
        let log_head: i64 = match locked_rows.first() {
            Some(row) => row.try_get("log_position")?,
            None => return Err(CommitError::Aborted("the log head row is missing".into())),
        };
        let heads = locked_rows
            .iter()
            .filter(|row| row.try_get::<Option<String>, _>("stream_id").is_ok_and(|id| id.is_some()))
            .map(decode_head)
            .collect::<Result<HashMap<_, _>, _>>()?;
        let read = started.elapsed();
        // The write lock is held: positions after the head are this batch's.
        let first_position = Position(log_head as u64 + 1);
        // Reused ids are rare (retries): look them up only when a request
        // conflicts (a retry of an append that already landed conflicts with
        // its own events) or the unique key on event_id caught one.
        let recorded_at = Utc::now();
        let stored = if look_up_ids { find_events(&mut tx, appends).await? } else { Vec::new() };
        let mut planner = BatchPlanner::new(heads.clone(), stored, recorded_at, first_position);
        let mut planned: Vec<Planned> = appends.iter().map(|append| planner.plan(append)).collect();
        let conflicted = planned.iter().any(|planned| matches!(planned, Planned::Failed(AppendError::Conflict { .. })));
        if !look_up_ids && conflicted {
            let stored = find_events(&mut tx, appends).await?;
            planner = BatchPlanner::new(heads, stored, recorded_at, first_position);
            planned = appends.iter().map(|append| planner.plan(append)).collect();
        }
        let (rows, head_changes) = planner.finish();
        if rows.is_empty() {
            tx.rollback().await?;
            return Ok((planned, Position(0)));
        }
        let base: i64 = sqlx::query(sql::TAKE_POSITIONS).bind(rows.len() as i64).fetch_one(&mut *tx).await?.try_get("base")?;
        if base != log_head {
            return Err(CommitError::Aborted(format!("the log head moved under the write lock: {log_head} then {base}")));
        }
        let taken = started.elapsed();
        let mut inserted = 0;
        for (chunk_index, chunk) in rows.chunks(ROWS_PER_INSERT).enumerate() {
            let statement = insert_statement(chunk.len());
            let mut query = sqlx::query(&statement);
            for (offset, row) in chunk.iter().enumerate() {
                query = query
                    .bind(base + 1 + (chunk_index * ROWS_PER_INSERT + offset) as i64)
                    .bind(row.event_id)
                    .bind(row.stream_id.as_str())
                    .bind(row.stream_version as i64)
                    .bind(row.stream_id.category())
                    .bind(&row.event_type)
                    .bind(i64::from(row.schema_version))
                    .bind(&row.payload_json)
                    .bind(&row.metadata_json)
                    .bind(row.recorded_at.timestamp_micros())
                    .bind(&row.hash.0[..]);
            }
            inserted += query.execute(&mut *tx).await?.rows_affected();
        }
        let inserted_at = started.elapsed();
        let heads_json: Vec<serde_json::Value> = head_changes
            .iter()
            .map(|change| {
                serde_json::json!([
                    change.stream_id.as_str(),
                    change.stream_id.category(),
                    change.head.version,
                    change.head.hash.to_string()
                ])
            })
            .collect();
        let moved = sqlx::query(sql::UPSERT_STREAMS)
            .bind(serde_json::Value::Array(heads_json).to_string())
            .execute(&mut *tx)
            .await?
            .rows_affected();
        if inserted != rows.len() as u64 || moved != head_changes.len() as u64 {
            return Err(CommitError::Aborted(format!(
                "wrote {inserted} of {} rows and {moved} of {} stream heads",
                rows.len(),
                head_changes.len()
            )));
        }
        let written = started.elapsed();
        tx.commit().await?;
        tracing::trace!(
            requests = appends.len(),
            rows = rows.len(),
            ?begun,
            ?read,
            ?taken,
            ?inserted_at,
            ?written,
            committed = ?started.elapsed(),
            "append batch committed"
        );
        Ok((planned, Position(base as u64 + 1)))
    }
}

async fn find_events(
    tx: &mut sqlx::Transaction<'_, sqlx::Sqlite>,
    appends: &[&PreparedAppend],
) -> Result<Vec<crate::plan::StoredIdentity>, sqlx::Error> {
    let event_ids: Vec<String> = appends.iter().flat_map(|append| append.event_ids()).map(|id| id.simple().to_string()).collect();
    sqlx::query(sql::FIND_EVENTS)
        .bind(serde_json::to_string(&event_ids).unwrap_or_default())
        .fetch_all(&mut **tx)
        .await?
        .iter()
        .map(|row| decode_stored(row).and_then(|row| row.identity().map_err(|err| sqlx::Error::Decode(err.into()))))
        .collect()
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
        let wake = inner.writer.wake.subscribe();
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
        let wake = inner.writer.wake.subscribe();
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
        let append = prepare(&self.inner.registry, self.inner.limits, request)?;
        match &self.inner.group_commit {
            Some(group_commit) => group_commit.append(append).await,
            None => commit_or_split(self.inner.writer.as_ref(), &[&append]).await.pop().unwrap_or(Err(AppendError::Closed)),
        }
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
            .execute(&self.inner.writer.pool)
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
            .execute(&self.inner.writer.pool)
            .await
            .map_err(backend("saving a checkpoint"))?;
        Ok(())
    }
}
