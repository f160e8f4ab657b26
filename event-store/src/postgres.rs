//! [`PostgresEventStore`]: the production log on PostgreSQL, through sqlx.
//!
//! # Gap-safe global order
//! A plain sequence does not give readers a safe order: a transaction that took
//! position 4 can commit after one that took 5, and a reader that already
//! delivered 5 would skip 4. Here positions come from the single row of
//! `strata_log_head`, locked by the first statement of an appending
//! transaction (`sql/postgres/lock_streams.sql`, before the stream heads) and
//! moved by the statement that inserts the events, the last one before COMMIT
//! (`sql/postgres/insert_events.sql`). The row lock is held until the
//! transaction ends, so positions are handed out in commit order (and a
//! rolled-back transaction gives its positions back); since the batch knows
//! its positions before it is planned, the chain hashes cover them. A reader
//! then needs nothing but `WHERE position > $after ORDER BY position`: if it
//! sees P, everything below P has committed. Only event writers ever hold
//! that lock, and only for a batch's three statements and its commit, so an
//! idle or long transaction elsewhere in the database never stalls readers;
//! writer connections also set `idle_in_transaction_session_timeout` so a
//! writer that hangs between its statements cannot hold the log head for long,
//! and turn JIT off and plans generic, so the locked section never becomes a
//! sequential scan or a compilation (see `connect`).
//!
//! # Group commit
//! That critical section serializes commits, so appends are batched: callers
//! hand their (already validated) requests to a queue; the committer task
//! takes everything queued, decide every request in order against the
//! locked stream heads (each keeps its own expected-version check and result,
//! see `plan.rs`), and write the whole batch in one transaction of four round
//! trips (BEGIN, lock heads, one write statement, COMMIT). With
//! `group_commit: false` every append runs its own transaction.
//!
//! # Failure modes
//! A concurrent creator of the same stream (another process) makes a batch fail
//! on a unique key; the batch is retried from scratch a bounded number of
//! times. Any other database error fails every request of the batch with
//! [`AppendError::Backend`]; the outcome is then unknown and a retry with the
//! same event ids is safe.

use std::collections::{BTreeSet, HashMap};
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, Once};
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use futures_util::stream::BoxStream;
use sqlx::postgres::{PgConnectOptions, PgListener, PgPool, PgPoolOptions, PgRow};
use sqlx::{Executor, Row};
use strata_schemas::SchemaRegistry;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use uuid::Uuid;

use crate::commit::{commit_or_split, BatchFailure, BatchWriter, CommitError, GroupCommit};
use crate::plan::{prepare, AppendLimits, BatchPlanner, Head, Planned, PreparedAppend, StoredRow};
use crate::subscription::{follow, PageReader};
use crate::{
    AppendError, AppendOutcome, BackendError, ChainHash, CheckpointStore, Direction, EventReader, EventStore, Form, Position, ReadAll,
    ReadError, ReadStream, RecordedEvent, Snapshot, SnapshotStore, StoredEvent, StreamAppend, StreamHead, StreamId, Subscribe,
};

const NOTIFY_CHANNEL: &str = "strata_events";
const MAX_BATCH_ATTEMPTS: usize = 5;

mod sql {
    pub(super) const LOCK_STREAMS: &str = include_str!("../sql/postgres/lock_streams.sql");
    pub(super) const FIND_EVENTS: &str = include_str!("../sql/postgres/find_events.sql");
    pub(super) const INSERT_EVENTS: &str = include_str!("../sql/postgres/insert_events.sql");
    pub(super) const READ_STREAM_FORWARD: &str = include_str!("../sql/postgres/read_stream_forward.sql");
    pub(super) const READ_STREAM_BACKWARD: &str = include_str!("../sql/postgres/read_stream_backward.sql");
    pub(super) const READ_ALL: &str = include_str!("../sql/postgres/read_all.sql");
    pub(super) const READ_CATEGORY: &str = include_str!("../sql/postgres/read_category.sql");
    pub(super) const STREAM_HEAD: &str = include_str!("../sql/postgres/stream_head.sql");
    pub(super) const STREAM_HEADS: &str = include_str!("../sql/postgres/stream_heads.sql");
    pub(super) const HEAD_POSITION: &str = include_str!("../sql/postgres/head_position.sql");
    pub(super) const CATEGORIES: &str = include_str!("../sql/postgres/categories.sql");
    pub(super) const READ_EVENT: &str = include_str!("../sql/postgres/read_event.sql");
    pub(super) const LOAD_SNAPSHOT: &str = include_str!("../sql/postgres/load_snapshot.sql");
    pub(super) const SAVE_SNAPSHOT: &str = include_str!("../sql/postgres/save_snapshot.sql");
    pub(super) const LOAD_CHECKPOINT: &str = include_str!("../sql/postgres/load_checkpoint.sql");
    pub(super) const SAVE_CHECKPOINT: &str = include_str!("../sql/postgres/save_checkpoint.sql");
}

/// Where an append transaction is, for fault injection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AppendPhase {
    /// The stream heads of the batch are locked; nothing is written yet.
    StreamsLocked,
    /// Events and heads are written and positions taken; COMMIT is next.
    BeforeCommit,
}

/// Fault injection: called at each [`AppendPhase`] inside the transaction. It
/// may sleep (to widen races) or return `Err` to roll the transaction back.
pub type AppendHook = Arc<dyn Fn(AppendPhase) -> Pin<Box<dyn Future<Output = Result<(), String>> + Send>> + Send + Sync>;

/// How to connect and how to batch.
#[derive(Clone)]
pub struct PostgresConfig {
    /// `postgres://…` connection URL.
    pub url: String,
    /// Pool size (readers, committers and the listener share it).
    pub max_connections: u32,
    /// Batch concurrent appends into shared transactions.
    pub group_commit: bool,
    /// Committer tasks when `group_commit` is on.
    pub committers: usize,
    /// Most events one batch takes from the queue.
    pub max_batch_events: usize,
    /// Fault injection inside append transactions (tests only).
    pub hook: Option<AppendHook>,
}

impl std::fmt::Debug for PostgresConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresConfig")
            .field("max_connections", &self.max_connections)
            .field("group_commit", &self.group_commit)
            .field("committers", &self.committers)
            .field("max_batch_events", &self.max_batch_events)
            .field("hook", &self.hook.is_some())
            .finish_non_exhaustive()
    }
}

impl PostgresConfig {
    /// Defaults for `url`: 16 connections, group commit with 1 committer
    /// (measured faster than 2 on two cores: commits are serialized anyway).
    pub fn new(url: impl Into<String>) -> Self {
        Self { url: url.into(), max_connections: 16, group_commit: true, committers: 1, max_batch_events: 2_000, hook: None }
    }
}

struct Shared {
    pool: PgPool,
    registry: Arc<SchemaRegistry>,
    hook: Option<AppendHook>,
    wake: watch::Sender<u64>,
    /// When the listener last heard from the database (a notification, its
    /// own heartbeat, a reconnect); `None` before it started.
    last_heard: std::sync::Mutex<Option<std::time::Instant>>,
}

impl Shared {
    fn heard(&self) {
        *self.last_heard.lock().unwrap_or_else(|poison| poison.into_inner()) = Some(std::time::Instant::now());
    }
}

/// How often the listener sends itself a heartbeat notification; if nothing
/// at all arrives for [`LISTENER_SILENCE`], its connection is presumed
/// half-open and replaced.
const HEARTBEAT_EVERY: Duration = Duration::from_secs(5);
const LISTENER_SILENCE: Duration = Duration::from_secs(15);
/// The payload of a heartbeat (a position in every other notification).
const HEARTBEAT: &str = "heartbeat";

struct Inner {
    shared: Arc<Shared>,
    limits: AppendLimits,
    group_commit: Option<GroupCommit>,
    listener: Once,
    tasks: Mutex<Vec<JoinHandle<()>>>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        let tasks = self.tasks.get_mut().unwrap_or_else(|poison| poison.into_inner());
        for task in tasks.drain(..) {
            task.abort();
        }
    }
}

/// The PostgreSQL backend. Cloning shares the pool and the committers.
#[derive(Clone)]
pub struct PostgresEventStore {
    inner: Arc<Inner>,
}

fn backend(context: &'static str) -> impl FnOnce(sqlx::Error) -> BackendError {
    move |err| BackendError::new(context, err)
}

impl PostgresEventStore {
    /// Connects (lazily: the pool opens connections on demand) and starts the
    /// committers. Does not migrate; call [`PostgresEventStore::migrate`].
    pub async fn connect(config: PostgresConfig, registry: Arc<SchemaRegistry>) -> Result<Self, BackendError> {
        let options: PgConnectOptions = config.url.parse().map_err(|err| BackendError::new("parsing the PostgreSQL URL", err))?;
        let options = options.application_name("strata");
        let pool = PgPoolOptions::new()
            .max_connections(config.max_connections.max(2))
            .acquire_timeout(Duration::from_secs(10))
            .after_connect(|connection, _| {
                Box::pin(async move {
                    // Every statement here is short and keyed: no JIT (it once spent
                    // 86 ms compiling one lock of 300 stream heads) and generic plans
                    // (a custom plan for a large array of stream ids turned the
                    // locked lookup into a sequential scan while the log head was
                    // held). Measured in BENCHMARKS.md "Issue 19".
                    connection
                        .execute("SET idle_in_transaction_session_timeout = '10s'; SET jit = off; SET plan_cache_mode = force_generic_plan")
                        .await?;
                    Ok(())
                })
            })
            .connect_with(options)
            .await
            .map_err(backend("connecting to PostgreSQL"))?;
        let shared = Arc::new(Shared {
            pool,
            registry,
            hook: config.hook.clone(),
            wake: watch::channel(0).0,
            last_heard: std::sync::Mutex::new(None),
        });
        let (group_commit, tasks) = if config.group_commit {
            let (group_commit, tasks) = GroupCommit::start(shared.clone(), config.committers, config.max_batch_events);
            (Some(group_commit), tasks)
        } else {
            (None, Vec::new())
        };
        Ok(Self {
            inner: Arc::new(Inner {
                shared,
                limits: AppendLimits::default(),
                group_commit,
                listener: Once::new(),
                tasks: Mutex::new(tasks),
            }),
        })
    }

    /// Applies the embedded migrations (idempotent; concurrent callers are
    /// serialized by sqlx's advisory lock).
    pub async fn migrate(&self) -> Result<(), BackendError> {
        crate::migrate::migrator(crate::migrate::POSTGRES)
            .await?
            .run(&self.inner.shared.pool)
            .await
            .map_err(|err| BackendError::new("migrating the PostgreSQL schema", err))
    }

    fn start_listener(&self) {
        self.inner.listener.call_once(|| {
            let shared = Arc::downgrade(&self.inner.shared);
            let pool = self.inner.shared.pool.clone();
            let task = tokio::spawn(listen(pool, shared));
            self.inner.tasks.lock().unwrap_or_else(|poison| poison.into_inner()).push(task);
        });
    }

    async fn rows(shared: &Shared, request: &ReadAll) -> Result<Vec<PgRow>, ReadError> {
        let after = i64::try_from(request.after.0).unwrap_or(i64::MAX);
        let limit = i64::try_from(request.limit).unwrap_or(i64::MAX);
        match &request.category {
            None => sqlx::query(sql::READ_ALL).bind(after).bind(limit).fetch_all(&shared.pool).await,
            Some(category) => sqlx::query(sql::READ_CATEGORY).bind(after).bind(limit).bind(category).fetch_all(&shared.pool).await,
        }
        .map_err(|err| ReadError::Backend(backend("reading the global log")(err)))
    }

    async fn page(shared: &Shared, request: ReadAll) -> Result<Vec<RecordedEvent>, ReadError> {
        decode_rows(&Self::rows(shared, &request).await?, &shared.registry, request.form)
    }

    async fn page_stored(shared: &Shared, request: ReadAll) -> Result<Vec<StoredEvent>, ReadError> {
        Self::rows(shared, &request)
            .await?
            .iter()
            .map(|row| {
                decode_stored(row)
                    .map_err(|err| ReadError::Backend(BackendError::new("decoding an event row", err)))?
                    .into_stored(&shared.registry)
            })
            .collect()
    }
}

/// Keeps one LISTEN connection and bumps the wake-up channel on every NOTIFY
/// and after every reconnect (notifications sent while disconnected are lost,
/// so subscribers must re-read). A heartbeat NOTIFY sent through the pool
/// every [`HEARTBEAT_EVERY`] proves the LISTEN connection alive; one that
/// hears nothing for [`LISTENER_SILENCE`] (half-open: the server or a
/// middlebox dropped it without a reset) is dropped and replaced.
async fn listen(pool: PgPool, shared: std::sync::Weak<Shared>) {
    let heartbeat = {
        let pool = pool.clone();
        let shared = shared.clone();
        tokio::spawn(async move {
            let mut every = tokio::time::interval(HEARTBEAT_EVERY);
            loop {
                every.tick().await;
                if shared.upgrade().is_none() {
                    return;
                }
                let sent = sqlx::query("SELECT pg_notify($1, $2)").bind(NOTIFY_CHANNEL).bind(HEARTBEAT).execute(&pool).await;
                if let Err(error) = sent {
                    tracing::debug!(%error, "event store listener heartbeat not sent");
                }
            }
        })
    };
    let _stop_heartbeat = AbortOnDrop(heartbeat);
    let mut backoff = Duration::from_millis(100);
    loop {
        let listener = async {
            let mut listener = PgListener::connect_with(&pool).await?;
            listener.listen(NOTIFY_CHANNEL).await?;
            Ok::<_, sqlx::Error>(listener)
        }
        .await;
        let mut listener = match listener {
            Ok(listener) => listener,
            Err(err) => {
                tracing::warn!(error = %err, "event store listener cannot connect; retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
                continue;
            }
        };
        backoff = Duration::from_millis(100);
        let Some(shared_now) = shared.upgrade() else { return };
        shared_now.heard();
        shared_now.wake.send_modify(|n| *n += 1);
        drop(shared_now);
        loop {
            // On silence the listener is dropped, so a cancelled receive
            // leaves nothing half-read behind.
            let received = tokio::time::timeout(LISTENER_SILENCE, listener.try_recv()).await;
            let Some(shared) = shared.upgrade() else { return };
            match received {
                Ok(Ok(Some(notification))) => {
                    shared.heard();
                    if notification.payload() != HEARTBEAT {
                        let position = notification.payload().parse::<u64>().unwrap_or(0);
                        shared.wake.send_modify(|n| *n = (*n).max(position).saturating_add(1));
                    }
                }
                // Connection lost; the next try_recv reconnects and listens again.
                Ok(Ok(None)) => shared.wake.send_modify(|n| *n += 1),
                Ok(Err(err)) => {
                    tracing::warn!(error = %err, "event store listener failed; reconnecting");
                    break;
                }
                Err(_) => {
                    tracing::warn!(
                        silent_s = LISTENER_SILENCE.as_secs(),
                        "event store listener heard nothing, not even its heartbeat; replacing its connection"
                    );
                    break;
                }
            }
        }
    }
}

/// Aborts a task when dropped.
struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

fn is_retryable(err: &CommitError) -> bool {
    let CommitError::Sql(err) = err else { return false };
    err.as_database_error().is_some_and(|db| {
        db.kind() == sqlx::error::ErrorKind::UniqueViolation
            && matches!(db.constraint(), Some("strata_streams_pkey" | "strata_events_event_id" | "strata_events_stream_version"))
    })
}

impl BatchWriter for Shared {
    fn commit_together<'a>(
        &'a self,
        appends: &'a [&'a PreparedAppend],
    ) -> Pin<Box<dyn Future<Output = Result<Vec<Result<AppendOutcome, AppendError>>, BatchFailure>> + Send + 'a>> {
        Box::pin(async move { commit_together(self, appends).await.map_err(BatchFailure::from) })
    }
}

/// Commits a batch in one transaction, retrying races (a concurrent writer
/// creating the same stream, a stored event id) a bounded number of times.
async fn commit_together(shared: &Shared, appends: &[&PreparedAppend]) -> Result<Vec<Result<AppendOutcome, AppendError>>, CommitError> {
    let mut attempt = 0;
    let mut look_up_ids = false;
    loop {
        attempt += 1;
        match commit_batch(shared, appends, look_up_ids).await {
            Ok((planned, first_position)) => {
                if first_position.0 > 0 {
                    shared.wake.send_modify(|n| *n += 1);
                }
                return Ok(planned.into_iter().map(|planned| planned.resolve(first_position)).collect());
            }
            Err(err) if attempt < MAX_BATCH_ATTEMPTS && is_retryable(&err) => {
                look_up_ids = true;
                tracing::debug!(attempt, "append batch met a stored event id or raced another writer; retrying");
            }
            Err(err) => return Err(err),
        }
    }
}

/// One transaction for the whole batch: BEGIN, lock the heads, (look up
/// reused ids), plan, one write statement, COMMIT. Returns each request's
/// decision and the position of the batch's first row (`0` when nothing was
/// written).
async fn commit_batch(shared: &Shared, appends: &[&PreparedAppend], look_up_ids: bool) -> Result<(Vec<Planned>, Position), CommitError> {
    let started = std::time::Instant::now();
    let mut tx = shared.pool.begin().await?;
    let begun = started.elapsed();
    let stream_ids: Vec<String> = appends
        .iter()
        .flat_map(|append| append.stream_ids().map(|id| id.as_str().to_owned()))
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let locked_rows = sqlx::query(sql::LOCK_STREAMS).bind(&stream_ids).fetch_all(&mut *tx).await?;
    let log_position: i64 = match locked_rows.first() {
        Some(row) => row.try_get("log_position")?,
        None => return Err(CommitError::Aborted("the log head row is missing".into())),
    };
    let heads = locked_rows
        .iter()
        .filter(|row| row.try_get::<Option<String>, _>("stream_id").is_ok_and(|id| id.is_some()))
        .map(decode_head)
        .collect::<Result<HashMap<_, _>, _>>()?;
    let first_position = Position(log_position as u64 + 1);
    let locked = started.elapsed();
    run_hook(shared, AppendPhase::StreamsLocked).await?;
    // Reused ids are rare (retries): look them up only when a request
    // conflicts (a retry of an append that already landed conflicts with its
    // own events) or when the unique key on event_id caught one (`look_up_ids`).
    let recorded_at = Utc::now();
    let mut stored = if look_up_ids { find_events(&mut tx, appends).await? } else { Vec::new() };
    let mut planner = BatchPlanner::new(heads.clone(), stored.clone(), recorded_at, first_position);
    let mut planned: Vec<Planned> = appends.iter().map(|append| planner.plan(append)).collect();
    let conflicted = planned.iter().any(|planned| matches!(planned, Planned::Failed(AppendError::Conflict { .. })));
    if !look_up_ids && conflicted {
        stored = find_events(&mut tx, appends).await?;
        planner = BatchPlanner::new(heads, stored, recorded_at, first_position);
        planned = appends.iter().map(|append| planner.plan(append)).collect();
    }
    let (rows, head_changes) = planner.finish();
    if rows.is_empty() {
        tx.rollback().await?;
        return Ok((planned, Position(0)));
    }
    let (existing, created): (Vec<_>, Vec<_>) = head_changes.into_iter().partition(|change| !change.created);
    let n_rows = rows.len() as i64;
    let written = sqlx::query(sql::INSERT_EVENTS)
        .bind(n_rows)
        .bind(rows.iter().map(|r| r.event_id).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.stream_id.as_str().to_owned()).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.stream_version as i64).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.stream_id.category().to_owned()).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.event_type.clone()).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.schema_version as i32).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.payload_json.clone()).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.metadata_json.clone()).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.recorded_at).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.hash.0.to_vec()).collect::<Vec<_>>())
        .bind(existing.iter().map(|c| c.stream_id.as_str().to_owned()).collect::<Vec<_>>())
        .bind(existing.iter().map(|c| c.head.version as i64).collect::<Vec<_>>())
        .bind(existing.iter().map(|c| c.head.hash.0.to_vec()).collect::<Vec<_>>())
        .bind(created.iter().map(|c| c.stream_id.as_str().to_owned()).collect::<Vec<_>>())
        .bind(created.iter().map(|c| c.stream_id.category().to_owned()).collect::<Vec<_>>())
        .bind(created.iter().map(|c| c.head.version as i64).collect::<Vec<_>>())
        .bind(created.iter().map(|c| c.head.hash.0.to_vec()).collect::<Vec<_>>())
        .fetch_one(&mut *tx)
        .await?;
    let base: i64 = written.try_get("base")?;
    let (updated, inserted_heads): (i64, i64) = (written.try_get("updated")?, written.try_get("created")?);
    if base != log_position {
        return Err(CommitError::Aborted(format!("the log head moved under its lock: {log_position} then {base}")));
    }
    if updated != existing.len() as i64 || inserted_heads != created.len() as i64 {
        // The heads were locked, so this cannot happen; refuse to commit if it does.
        return Err(CommitError::Aborted(format!(
            "stream heads moved under a lock: updated {updated} of {}, created {inserted_heads} of {}",
            existing.len(),
            created.len()
        )));
    }
    let inserted = started.elapsed();
    run_hook(shared, AppendPhase::BeforeCommit).await?;
    tx.commit().await?;
    tracing::trace!(
        requests = appends.len(),
        rows = n_rows,
        ?begun,
        ?locked,
        ?inserted,
        committed = ?started.elapsed(),
        "append batch committed"
    );
    Ok((planned, Position(base as u64 + 1)))
}

async fn find_events(
    tx: &mut sqlx::Transaction<'static, sqlx::Postgres>,
    appends: &[&PreparedAppend],
) -> Result<Vec<crate::plan::StoredIdentity>, sqlx::Error> {
    let event_ids: Vec<Uuid> = appends.iter().flat_map(|append| append.event_ids()).collect();
    sqlx::query(sql::FIND_EVENTS)
        .bind(&event_ids)
        .fetch_all(&mut **tx)
        .await?
        .iter()
        .map(|row| decode_stored(row).and_then(|row| row.identity().map_err(|err| sqlx::Error::Decode(err.into()))))
        .collect()
}

async fn run_hook(shared: &Shared, phase: AppendPhase) -> Result<(), CommitError> {
    match &shared.hook {
        Some(hook) => hook(phase).await.map_err(CommitError::Aborted),
        None => Ok(()),
    }
}

fn decode_head(row: &PgRow) -> Result<(StreamId, Head), sqlx::Error> {
    let stream_id: String = row.try_get("stream_id")?;
    let stream_id = StreamId::parse(&stream_id).map_err(|err| sqlx::Error::Decode(err.into()))?;
    let version: i64 = row.try_get("version")?;
    let hash: Vec<u8> = row.try_get("last_hash")?;
    let hash = ChainHash::from_slice(&hash).ok_or_else(|| sqlx::Error::Decode("stream hash is not 32 bytes".into()))?;
    Ok((stream_id, Head { version: version as u64, hash }))
}

fn decode_stored(row: &PgRow) -> Result<StoredRow, sqlx::Error> {
    let recorded_at: DateTime<Utc> = row.try_get("recorded_at")?;
    Ok(StoredRow {
        position: row.try_get("position")?,
        event_id: row.try_get("event_id")?,
        stream_id: row.try_get("stream_id")?,
        stream_version: row.try_get("stream_version")?,
        event_type: row.try_get("event_type")?,
        schema_version: i64::from(row.try_get::<i32, _>("schema_version")?),
        payload_json: row.try_get("payload")?,
        metadata_json: row.try_get("metadata")?,
        recorded_at_micros: recorded_at.timestamp_micros(),
        hash: row.try_get("hash")?,
    })
}

fn decode_rows(rows: &[PgRow], registry: &SchemaRegistry, form: crate::Form) -> Result<Vec<RecordedEvent>, ReadError> {
    rows.iter()
        .map(|row| {
            decode_stored(row).map_err(|err| ReadError::Backend(BackendError::new("decoding an event row", err)))?.decode(registry, form)
        })
        .collect()
}

fn decode_stream_head(row: &PgRow) -> Result<StreamHead, ReadError> {
    let (stream_id, head) = decode_head(row).map_err(|err| ReadError::Backend(BackendError::new("decoding a stream head", err)))?;
    Ok(StreamHead { stream_id, version: head.version, last_hash: head.hash })
}

#[async_trait]
impl EventReader for PostgresEventStore {
    async fn read_event(&self, event_id: Uuid, form: Form) -> Result<Option<RecordedEvent>, ReadError> {
        let row = sqlx::query(sql::READ_EVENT)
            .bind(event_id)
            .fetch_optional(&self.inner.shared.pool)
            .await
            .map_err(backend("reading an event by id"))?;
        Ok(decode_rows(row.as_slice(), &self.inner.shared.registry, form)?.pop())
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
            .fetch_all(&self.inner.shared.pool)
            .await
            .map_err(backend("reading a stream"))?;
        decode_rows(&rows, &self.inner.shared.registry, request.form)
    }

    async fn read_all(&self, request: ReadAll) -> Result<Vec<RecordedEvent>, ReadError> {
        Self::page(&self.inner.shared, request).await
    }

    fn subscribe(&self, request: Subscribe) -> BoxStream<'static, Result<RecordedEvent, ReadError>> {
        self.start_listener();
        let shared = self.inner.shared.clone();
        let wake = shared.wake.subscribe();
        let read: PageReader = Arc::new(move |page| {
            let shared = shared.clone();
            Box::pin(async move { Self::page(&shared, page).await })
        });
        // Keep the store (committers, listener) alive as long as a subscriber reads.
        let keep_alive = self.clone();
        let stream = follow(read, wake, request);
        Box::pin(futures_util::StreamExt::map(stream, move |item| {
            let _ = &keep_alive;
            item
        }))
    }

    async fn read_all_stored(&self, request: ReadAll) -> Result<Vec<StoredEvent>, ReadError> {
        Self::page_stored(&self.inner.shared, request).await
    }

    fn subscribe_stored(&self, request: Subscribe) -> BoxStream<'static, Result<StoredEvent, ReadError>> {
        self.start_listener();
        let shared = self.inner.shared.clone();
        let wake = shared.wake.subscribe();
        let read: PageReader<StoredEvent> = Arc::new(move |page| {
            let shared = shared.clone();
            Box::pin(async move { Self::page_stored(&shared, page).await })
        });
        let keep_alive = self.clone();
        let stream = follow(read, wake, request);
        Box::pin(futures_util::StreamExt::map(stream, move |item| {
            let _ = &keep_alive;
            item
        }))
    }

    async fn stream_head(&self, stream_id: &StreamId) -> Result<Option<StreamHead>, ReadError> {
        let row = sqlx::query(sql::STREAM_HEAD)
            .bind(stream_id.as_str())
            .fetch_optional(&self.inner.shared.pool)
            .await
            .map_err(backend("reading a stream head"))?;
        row.as_ref().map(decode_stream_head).transpose()
    }

    async fn stream_heads(&self, after: Option<&StreamId>, limit: usize) -> Result<Vec<StreamHead>, ReadError> {
        let rows = sqlx::query(sql::STREAM_HEADS)
            .bind(after.map_or("", StreamId::as_str))
            .bind(i64::try_from(limit).unwrap_or(i64::MAX))
            .fetch_all(&self.inner.shared.pool)
            .await
            .map_err(backend("listing streams"))?;
        rows.iter().map(decode_stream_head).collect()
    }

    async fn head_position(&self) -> Result<Position, ReadError> {
        let position: i64 =
            sqlx::query_scalar(sql::HEAD_POSITION).fetch_one(&self.inner.shared.pool).await.map_err(backend("reading the log head"))?;
        Ok(Position(position as u64))
    }

    async fn categories(&self) -> Result<Vec<String>, ReadError> {
        sqlx::query_scalar(sql::CATEGORIES)
            .fetch_all(&self.inner.shared.pool)
            .await
            .map_err(|err| ReadError::Backend(BackendError::new("listing categories", err)))
    }

    async fn ping(&self) -> Result<(), ReadError> {
        sqlx::query("SELECT 1").execute(&self.inner.shared.pool).await.map_err(backend("pinging PostgreSQL"))?;
        Ok(())
    }

    fn listener_silence(&self) -> Option<Duration> {
        let last_heard = *self.inner.shared.last_heard.lock().unwrap_or_else(|poison| poison.into_inner());
        last_heard.map(|at| at.elapsed())
    }

    fn backend_name(&self) -> &'static str {
        "postgres"
    }
}

#[async_trait]
impl EventStore for PostgresEventStore {
    async fn append(&self, request: Vec<StreamAppend>) -> Result<AppendOutcome, AppendError> {
        let append = prepare(&self.inner.shared.registry, self.inner.limits, request)?;
        match &self.inner.group_commit {
            Some(group_commit) => group_commit.append(append).await,
            None => commit_or_split(self.inner.shared.as_ref(), &[&append]).await.pop().unwrap_or(Err(AppendError::Closed)),
        }
    }
}

#[async_trait]
impl SnapshotStore for PostgresEventStore {
    async fn load_snapshot(&self, stream_id: &StreamId) -> Result<Option<Snapshot>, ReadError> {
        let Some(row) = sqlx::query(sql::LOAD_SNAPSHOT)
            .bind(stream_id.as_str())
            .fetch_optional(&self.inner.shared.pool)
            .await
            .map_err(backend("reading a snapshot"))?
        else {
            return Ok(None);
        };
        let decode = || -> Result<Snapshot, Box<dyn std::error::Error + Send + Sync>> {
            let state: String = row.try_get("state")?;
            Ok(Snapshot {
                stream_id: stream_id.clone(),
                snapshot_version: u32::try_from(row.try_get::<i32, _>("snapshot_version")?)?,
                stream_version: u64::try_from(row.try_get::<i64, _>("stream_version")?)?,
                state: serde_json::from_str(&state)?,
                taken_at: row.try_get("taken_at")?,
            })
        };
        decode().map(Some).map_err(|err| ReadError::Backend(BackendError::new("decoding a snapshot", err)))
    }

    async fn save_snapshot(&self, snapshot: Snapshot) -> Result<(), BackendError> {
        sqlx::query(sql::SAVE_SNAPSHOT)
            .bind(snapshot.stream_id.as_str())
            .bind(i32::try_from(snapshot.snapshot_version).unwrap_or(i32::MAX))
            .bind(i64::try_from(snapshot.stream_version).unwrap_or(i64::MAX))
            .bind(snapshot.state.to_string())
            .bind(snapshot.taken_at)
            .execute(&self.inner.shared.pool)
            .await
            .map_err(backend("saving a snapshot"))?;
        Ok(())
    }
}

#[async_trait]
impl CheckpointStore for PostgresEventStore {
    async fn load_checkpoint(&self, name: &str) -> Result<Position, ReadError> {
        let position: Option<i64> = sqlx::query_scalar(sql::LOAD_CHECKPOINT)
            .bind(name)
            .fetch_optional(&self.inner.shared.pool)
            .await
            .map_err(backend("reading a checkpoint"))?;
        Ok(Position(position.map_or(0, |position| position.max(0) as u64)))
    }

    async fn save_checkpoint(&self, name: &str, position: Position) -> Result<(), BackendError> {
        sqlx::query(sql::SAVE_CHECKPOINT)
            .bind(name)
            .bind(i64::try_from(position.0).unwrap_or(i64::MAX))
            .bind(chrono::Utc::now())
            .execute(&self.inner.shared.pool)
            .await
            .map_err(backend("saving a checkpoint"))?;
        Ok(())
    }
}
