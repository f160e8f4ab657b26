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

use chrono::{DateTime, Utc};
use sqlx::postgres::{PgConnectOptions, PgListener, PgPool, PgPoolOptions};
use sqlx::{Executor, Row};
use strata_schemas::SchemaRegistry;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use uuid::Uuid;

use crate::commit::{BatchFailure, BatchWriter, CommitError, GroupCommit};
use crate::plan::{AppendLimits, BatchPlanner, Planned, PreparedAppend};
use crate::sql_backend::{sql_backend_impls, Queries, SqlBackend};
use crate::{AppendError, AppendOutcome, BackendError, Position};

const NOTIFY_CHANNEL: &str = "strata_events";
const MAX_BATCH_ATTEMPTS: usize = 5;

mod sql {
    pub(super) const LOCK_STREAMS: &str = include_str!("../sql/postgres/lock_streams.sql");
    pub(super) const FIND_EVENTS: &str = include_str!("../sql/postgres/find_events.sql");
    pub(super) const INSERT_EVENTS: &str = include_str!("../sql/postgres/insert_events.sql");
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
    /// What one append may hold.
    pub limits: AppendLimits,
    /// Seals hashes with this key (v3) when set.
    pub chain_key: Option<crate::hash::ChainKey>,
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
        Self {
            url: url.into(),
            max_connections: 16,
            group_commit: true,
            committers: 1,
            max_batch_events: 2_000,
            hook: None,
            limits: AppendLimits::default(),
            chain_key: None,
        }
    }
}

struct Shared {
    pool: PgPool,
    registry: Arc<SchemaRegistry>,
    hook: Option<AppendHook>,
    chain_key: Option<crate::hash::ChainKey>,
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
                    // 86 ms compiling one lock of 300 stream heads), generic plans
                    // (a custom plan for a large array of stream ids turned the
                    // locked lookup into a sequential scan while the log head was
                    // held), and no sequential scans: a generic plan is made once
                    // per connection, often while `strata_streams` is nearly empty,
                    // and a scan chosen then stayed for the connection's life, a
                    // scan of every stream head per batch under the log head's
                    // lock. Every statement has a key to use. Measured in
                    // BENCHMARKS.md "Issue 19".
                    connection
                        .execute(
                            "SET idle_in_transaction_session_timeout = '10s'; SET jit = off; \
                             SET plan_cache_mode = force_generic_plan; SET enable_seqscan = off",
                        )
                        .await?;
                    Ok(())
                })
            })
            .connect_with(options)
            .await
            .map_err(|err| BackendError::new("connecting to PostgreSQL", err))?;
        let shared = Arc::new(Shared {
            pool,
            registry,
            hook: config.hook.clone(),
            chain_key: config.chain_key.clone(),
            wake: watch::channel(0).0,
            last_heard: std::sync::Mutex::new(None),
        });
        let (group_commit, tasks) = if config.group_commit {
            let (group_commit, tasks) = GroupCommit::start(shared.clone(), config.committers, config.max_batch_events);
            (Some(group_commit), tasks)
        } else {
            (None, Vec::new())
        };
        Ok(Self { inner: Arc::new(Inner { shared, limits: config.limits, group_commit, listener: Once::new(), tasks: Mutex::new(tasks) }) })
    }

    /// Applies the embedded migrations (idempotent; concurrent callers are
    /// serialized by sqlx's advisory lock).
    ///
    /// A role that may not create tables (the INSERT/SELECT role README
    /// "Tamper evidence" shows) cannot run the migrator at all, which
    /// creates its own table if missing: when the schema is current already
    /// (migrated by its owner), that is not an error.
    pub async fn migrate(&self) -> Result<(), BackendError> {
        let ran = crate::migrate::migrator(crate::migrate::POSTGRES).await?.run(&self.inner.shared.pool).await;
        let Err(error) = ran else { return Ok(()) };
        let denied =
            matches!(&error, sqlx::migrate::MigrateError::Execute(sqlx::Error::Database(db)) if db.code().as_deref() == Some("42501"));
        if denied && self.schema_is_current().await.unwrap_or(false) {
            tracing::debug!("this role may not migrate, and the schema is current: going on");
            return Ok(());
        }
        Err(BackendError::new("migrating the PostgreSQL schema", error))
    }

    /// Whether every migration this build knows has been applied.
    async fn schema_is_current(&self) -> Result<bool, sqlx::Error> {
        let pool = &self.inner.shared.pool;
        let exists: bool = sqlx::query_scalar("SELECT to_regclass('_sqlx_migrations') IS NOT NULL").fetch_one(pool).await?;
        if !exists {
            return Ok(false);
        }
        let applied: Option<i64> = sqlx::query_scalar("SELECT max(version) FROM _sqlx_migrations WHERE success").fetch_one(pool).await?;
        let latest = crate::migrate::POSTGRES.0.iter().map(|(version, _, _)| *version).max().unwrap_or(0);
        Ok(applied == Some(latest))
    }

    fn start_listener(&self) {
        self.inner.listener.call_once(|| {
            let shared = Arc::downgrade(&self.inner.shared);
            let pool = self.inner.shared.pool.clone();
            let task = tokio::spawn(listen(pool, shared));
            self.inner.tasks.lock().unwrap_or_else(|poison| poison.into_inner()).push(task);
        });
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
                    tracing::debug!(error = %crate::chain(&error), "event store listener heartbeat not sent");
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
                tracing::warn!(error = %crate::chain(&err), "event store listener cannot connect; retrying");
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
                    tracing::warn!(error = %crate::chain(&err), "event store listener failed; reconnecting");
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
    let mut planner = BatchPlanner::new(heads.clone(), stored.clone(), recorded_at, first_position, shared.chain_key.as_ref());
    let mut planned: Vec<Planned> = appends.iter().map(|append| planner.plan(append)).collect();
    let conflicted = planned.iter().any(|planned| matches!(planned, Planned::Failed(AppendError::Conflict { .. })));
    if !look_up_ids && conflicted {
        stored = find_events(&mut tx, appends).await?;
        planner = BatchPlanner::new(heads, stored, recorded_at, first_position, shared.chain_key.as_ref());
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

impl SqlBackend for PostgresEventStore {
    type Db = sqlx::Postgres;
    type Time = DateTime<Utc>;
    type SmallInt = i32;
    const NAME: &'static str = "postgres";
    const PINGING: &'static str = "pinging PostgreSQL";
    const QUERIES: Queries = Queries {
        read_event: include_str!("../sql/postgres/read_event.sql"),
        read_stream_forward: include_str!("../sql/postgres/read_stream_forward.sql"),
        read_stream_backward: include_str!("../sql/postgres/read_stream_backward.sql"),
        read_streams: include_str!("../sql/postgres/read_streams.sql"),
        read_all: include_str!("../sql/postgres/read_all.sql"),
        read_category: include_str!("../sql/postgres/read_category.sql"),
        stream_head: include_str!("../sql/postgres/stream_head.sql"),
        stream_heads: include_str!("../sql/postgres/stream_heads.sql"),
        head_position: include_str!("../sql/postgres/head_position.sql"),
        log_identity: include_str!("../sql/postgres/log_identity.sql"),
        raise_epoch: include_str!("../sql/postgres/raise_epoch.sql"),
        categories: include_str!("../sql/postgres/categories.sql"),
        load_snapshot: include_str!("../sql/postgres/load_snapshot.sql"),
        save_snapshot: include_str!("../sql/postgres/save_snapshot.sql"),
        load_checkpoint: include_str!("../sql/postgres/load_checkpoint.sql"),
        save_checkpoint: include_str!("../sql/postgres/save_checkpoint.sql"),
    };

    fn readers(&self) -> &PgPool {
        &self.inner.shared.pool
    }

    fn writers(&self) -> &PgPool {
        &self.inner.shared.pool
    }

    fn registry(&self) -> &SchemaRegistry {
        &self.inner.shared.registry
    }

    fn limits(&self) -> AppendLimits {
        self.inner.limits
    }

    fn group_commit(&self) -> Option<&GroupCommit> {
        self.inner.group_commit.as_ref()
    }

    fn batch_writer(&self) -> &dyn BatchWriter {
        self.inner.shared.as_ref()
    }

    fn wake(&self) -> watch::Receiver<u64> {
        self.start_listener();
        self.inner.shared.wake.subscribe()
    }

    fn listener_silence(&self) -> Option<Duration> {
        let last_heard = *self.inner.shared.last_heard.lock().unwrap_or_else(|poison| poison.into_inner());
        last_heard.map(|at| at.elapsed())
    }

    fn micros(time: DateTime<Utc>) -> i64 {
        time.timestamp_micros()
    }

    fn time(at: DateTime<Utc>) -> DateTime<Utc> {
        at
    }

    fn widen(value: i32) -> i64 {
        i64::from(value)
    }

    fn narrow(value: u32) -> i32 {
        i32::try_from(value).unwrap_or(i32::MAX)
    }
}

sql_backend_impls!(PostgresEventStore, sqlx::postgres::PgRow);
use shared::{decode_head, decode_stored};
