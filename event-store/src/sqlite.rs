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

use chrono::Utc;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{Connection, Row};
use strata_schemas::SchemaRegistry;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::commit::{BatchFailure, BatchWriter, CommitError, GroupCommit};
use crate::plan::{AppendLimits, BatchPlanner, Planned, PreparedAppend};
use crate::sql_backend::{sql_backend_impls, Queries, SqlBackend};
use crate::{AppendError, AppendOutcome, BackendError, Position, StreamId};

mod sql {
    pub(super) const LOCK_STREAMS: &str = include_str!("../sql/sqlite/lock_streams.sql");
    pub(super) const FIND_EVENTS: &str = include_str!("../sql/sqlite/find_events.sql");
    pub(super) const TAKE_POSITIONS: &str = include_str!("../sql/sqlite/take_positions.sql");
    pub(super) const INSERT_EVENTS: &str = include_str!("../sql/sqlite/insert_events.sql");
    pub(super) const UPSERT_STREAMS: &str = include_str!("../sql/sqlite/upsert_streams.sql");
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
    /// What one append may hold.
    pub limits: AppendLimits,
    /// Seals hashes with this key (v3) when set.
    pub chain_key: Option<crate::hash::ChainKey>,
}

impl SqliteConfig {
    /// Defaults for `url`: 4 readers, group commit of up to 2,000 events, an unkeyed chain.
    pub fn new(url: impl Into<String>) -> Self {
        Self { url: url.into(), readers: 4, group_commit: true, max_batch_events: 2_000, limits: AppendLimits::default(), chain_key: None }
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
        let writer = SqlitePoolOptions::new()
            .max_connections(1)
            .connect_with(options.clone())
            .await
            .map_err(|err| BackendError::new("opening the SQLite file", err))?;
        let readers = SqlitePoolOptions::new()
            .max_connections(config.readers.max(1))
            .connect_with(options.read_only(false))
            .await
            .map_err(|err| BackendError::new("opening the SQLite file", err))?;
        let writer = Arc::new(Writer { pool: writer, wake: watch::channel(0).0, chain_key: config.chain_key });
        let (group_commit, committers) = if config.group_commit {
            // One committer: SQLite has one writer at a time anyway.
            let (group_commit, committers) = GroupCommit::start(writer.clone(), 1, config.max_batch_events);
            (Some(group_commit), committers)
        } else {
            (None, Vec::new())
        };
        Ok(Self { inner: Arc::new(Inner { writer, readers, registry, limits: config.limits, group_commit, committers }) })
    }

    /// Applies the embedded migrations (idempotent).
    pub async fn migrate(&self) -> Result<(), BackendError> {
        crate::migrate::migrator(crate::migrate::SQLITE)
            .await?
            .run(&self.inner.writer.pool)
            .await
            .map_err(|err| BackendError::new("migrating the SQLite schema", err))
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
    chain_key: Option<crate::hash::ChainKey>,
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
                tracing::debug!(error = %crate::chain(&error), "append batch met a stored event id; retrying with the ids looked up");
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
        let mut planner = BatchPlanner::new(heads.clone(), stored, recorded_at, first_position, self.chain_key.as_ref());
        let mut planned: Vec<Planned> = appends.iter().map(|append| planner.plan(append)).collect();
        let conflicted = planned.iter().any(|planned| matches!(planned, Planned::Failed(AppendError::Conflict { .. })));
        if !look_up_ids && conflicted {
            let stored = find_events(&mut tx, appends).await?;
            planner = BatchPlanner::new(heads, stored, recorded_at, first_position, self.chain_key.as_ref());
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

impl SqlBackend for SqliteEventStore {
    type Db = sqlx::Sqlite;
    type Time = i64;
    type SmallInt = i64;
    const NAME: &'static str = "sqlite";
    const PINGING: &'static str = "pinging SQLite";
    const QUERIES: Queries = Queries {
        read_event: include_str!("../sql/sqlite/read_event.sql"),
        read_stream_forward: include_str!("../sql/sqlite/read_stream_forward.sql"),
        read_stream_backward: include_str!("../sql/sqlite/read_stream_backward.sql"),
        read_streams: include_str!("../sql/sqlite/read_streams.sql"),
        read_all: include_str!("../sql/sqlite/read_all.sql"),
        read_category: include_str!("../sql/sqlite/read_category.sql"),
        stream_head: include_str!("../sql/sqlite/stream_head.sql"),
        stream_heads: include_str!("../sql/sqlite/stream_heads.sql"),
        head_position: include_str!("../sql/sqlite/head_position.sql"),
        log_identity: include_str!("../sql/sqlite/log_identity.sql"),
        raise_epoch: include_str!("../sql/sqlite/raise_epoch.sql"),
        categories: include_str!("../sql/sqlite/categories.sql"),
        load_snapshot: include_str!("../sql/sqlite/load_snapshot.sql"),
        save_snapshot: include_str!("../sql/sqlite/save_snapshot.sql"),
        load_checkpoint: include_str!("../sql/sqlite/load_checkpoint.sql"),
        save_checkpoint: include_str!("../sql/sqlite/save_checkpoint.sql"),
    };

    fn readers(&self) -> &SqlitePool {
        &self.inner.readers
    }

    fn writers(&self) -> &SqlitePool {
        &self.inner.writer.pool
    }

    fn registry(&self) -> &SchemaRegistry {
        &self.inner.registry
    }

    fn limits(&self) -> AppendLimits {
        self.inner.limits
    }

    fn group_commit(&self) -> Option<&GroupCommit> {
        self.inner.group_commit.as_ref()
    }

    fn batch_writer(&self) -> &dyn BatchWriter {
        self.inner.writer.as_ref()
    }

    fn wake(&self) -> watch::Receiver<u64> {
        self.inner.writer.wake.subscribe()
    }

    fn micros(time: i64) -> i64 {
        time
    }

    fn time(at: chrono::DateTime<Utc>) -> i64 {
        at.timestamp_micros()
    }

    fn widen(value: i64) -> i64 {
        value
    }

    fn narrow(value: u32) -> i64 {
        i64::from(value)
    }
}

sql_backend_impls!(SqliteEventStore, sqlx::sqlite::SqliteRow);
use shared::{decode_head, decode_stored};
