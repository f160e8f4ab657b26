//! `strata bench …`: each benchmark prints one JSON object with its figures,
//! a baseline measured in the same process on the same service, and the ratio.
//!
//! - `bench append` (this module): appends through Strata vs the same rows by
//!   plain INSERTs;
//! - `bench commands` ([`commands`]): the command path (load, decide, append)
//!   vs raw appends of the same events;
//! - `bench flood --url` ([`flood`]): a probe query's latency idle and while
//!   thousands of `waitFor` fields wait.
//!
//! The benchmark never writes into the configured log: on PostgreSQL it
//! creates a scratch database on the same server (dropped afterwards), on
//! SQLite a scratch file in a temporary directory. The baseline table has the
//! same columns and indexes as `strata_events`; each baseline append is one
//! autocommitted statement (PostgreSQL) or one transaction (SQLite) with
//! `events_per_append` rows, durable like Strata's commits.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde_json::{json, Value};
use strata_store::{EventMetadata, EventStore, ExpectedVersion, NewEvent, StreamAppend, StreamId};
use uuid::Uuid;

use crate::backend::{registry, scheme, Scheme};

mod commands;
mod e2e;
mod flood;
#[cfg(all(feature = "redis", feature = "mongo"))]
mod mongo;
#[cfg(feature = "redis")]
mod project;
#[cfg(feature = "redis")]
mod rebuild;
#[cfg(feature = "nats")]
mod relay;
pub use commands::{commands, CommandsBench};
pub use e2e::{e2e, e2e_http, E2eBench, E2eHttpBench};
pub use flood::{flood, FloodBench};
#[cfg(feature = "redis")]
pub use project::{project, ProjectBench};
#[cfg(feature = "redis")]
pub use rebuild::{rebuild, RebuildBench};
#[cfg(feature = "nats")]
pub use relay::{relay, RelayBench};

/// Parameters of `bench append`.
#[derive(Debug, Clone)]
pub struct AppendBench {
    /// Where to run (only the server or directory is used; see module docs).
    pub event_store_url: String,
    /// Concurrent writers.
    pub writers: usize,
    /// Events per append call.
    pub events_per_append: usize,
    /// Measured time of each variant in each run.
    pub duration: Duration,
    /// Runs; Strata and the baseline alternate which goes first.
    pub runs: usize,
    /// Group commit on or off.
    pub group_commit: bool,
    /// PostgreSQL committer tasks (group commit; SQLite always has one).
    pub committers: usize,
}

#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Figures {
    appends: u64,
    events: u64,
    seconds: f64,
    p50_ms: f64,
    p95_ms: f64,
    p99_ms: f64,
}

impl Figures {
    pub(crate) fn from_latencies(mut latencies: Vec<Duration>, events_per_append: usize, seconds: f64) -> Self {
        latencies.sort_unstable();
        let at = |q: f64| {
            if latencies.is_empty() {
                return 0.0;
            }
            let index = ((latencies.len() as f64 * q).ceil() as usize).clamp(1, latencies.len()) - 1;
            latencies[index].as_secs_f64() * 1e3
        };
        Self {
            appends: latencies.len() as u64,
            events: (latencies.len() * events_per_append) as u64,
            seconds,
            p50_ms: at(0.50),
            p95_ms: at(0.95),
            p99_ms: at(0.99),
        }
    }

    pub(crate) fn events_per_s(&self) -> f64 {
        self.events as f64 / self.seconds.max(1e-9)
    }

    fn json(&self) -> Value {
        json!({
            "appends": self.appends,
            "events": self.events,
            "seconds": round(self.seconds, 3),
            "appends_per_s": round(self.appends as f64 / self.seconds.max(1e-9), 0),
            "events_per_s": round(self.events_per_s(), 0),
            "p50_ms": round(self.p50_ms, 3),
            "p95_ms": round(self.p95_ms, 3),
            "p99_ms": round(self.p99_ms, 3),
        })
    }
}

/// Where a benchmark ran.
pub(crate) fn machine() -> Value {
    json!({ "cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0), "os": std::env::consts::OS })
}

pub(crate) fn round(value: f64, decimals: i32) -> f64 {
    let factor = 10f64.powi(decimals);
    (value * factor).round() / factor
}

pub(crate) fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    if values.is_empty() {
        return 0.0;
    }
    let mid = values.len() / 2;
    if values.len() % 2 == 1 {
        values[mid]
    } else {
        (values[mid - 1] + values[mid]) / 2.0
    }
}

/// The payload every benchmark event carries: a realistic `OrderPlaced` v2.
pub fn order_placed_payload() -> Value {
    json!({
        "orderId": Uuid::new_v4().to_string(),
        "customerId": "customer-42",
        "lines": [
            { "sku": "SKU-RED-1", "quantity": 2, "unitPriceCents": 1250 },
            { "sku": "SKU-BLUE-7", "quantity": 1, "unitPriceCents": 4999 }
        ],
        "totalCents": 7499,
        "paymentMethod": "card",
        "shippingAddress": { "name": "Ada Lovelace", "street": "12 St James's Square", "city": "London", "postalCode": "SW1Y 4JH", "country": "GB" }
    })
}

pub(crate) fn new_event(payload: &Value) -> NewEvent {
    NewEvent {
        event_id: Uuid::new_v4(),
        event_type: "OrderPlaced".into(),
        schema_version: 2,
        payload: payload.clone(),
        metadata: EventMetadata {
            correlation_id: Some(Uuid::new_v4()),
            causation_id: None,
            traceparent: Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into()),
            actor: Some("bench".into()),
            command_id: Some(Uuid::new_v4()),
        },
    }
}

/// The scratch place a run writes to, and how to remove it.
pub(crate) enum Scratch {
    #[cfg(feature = "postgres")]
    Postgres {
        admin_url: String,
        name: String,
        url: String,
    },
    Sqlite {
        dir: tempfile::TempDir,
        url: String,
    },
}

impl Scratch {
    pub(crate) async fn create(url: &str) -> anyhow::Result<Self> {
        match scheme(url)? {
            #[cfg(feature = "postgres")]
            Scheme::Postgres => {
                use sqlx::{Connection, Executor};
                let mut admin = sqlx::PgConnection::connect(url).await.context("connecting to PostgreSQL")?;
                let name = format!("strata_bench_{}", Uuid::new_v4().simple());
                admin.execute(format!("CREATE DATABASE {name}").as_str()).await?;
                let options: sqlx::postgres::PgConnectOptions = url.parse()?;
                let url = format!("postgres://{}@{}:{}/{name}", options.get_username(), options.get_host(), options.get_port());
                Ok(Self::Postgres { admin_url: url_with_db(&url, options.get_database().unwrap_or("postgres")), name, url })
            }
            Scheme::Sqlite => {
                let dir = tempfile::tempdir()?;
                let url = format!("sqlite://{}", dir.path().join("bench.db").display());
                Ok(Self::Sqlite { dir, url })
            }
            _ => bail!("benchmarks need STRATA_EVENT_STORE=sqlite://… or postgres://…"),
        }
    }

    pub(crate) async fn remove(self) -> anyhow::Result<()> {
        match self {
            #[cfg(feature = "postgres")]
            Self::Postgres { admin_url, name, .. } => {
                use sqlx::{Connection, Executor};
                let mut admin = sqlx::PgConnection::connect(&admin_url).await?;
                admin.execute(format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)").as_str()).await?;
                Ok(())
            }
            Self::Sqlite { dir, .. } => Ok(dir.close()?),
        }
    }
}

/// A scratch store with everything the benchmarks use.
pub(crate) trait ScratchStore: EventStore + strata_store::SnapshotStore + strata_store::CheckpointStore {}
impl<T: EventStore + strata_store::SnapshotStore + strata_store::CheckpointStore> ScratchStore for T {}

/// Opens and migrates the store of a scratch place; returns it and its backend name.
pub(crate) async fn open_scratch(scratch: &Scratch, max_connections: u32) -> anyhow::Result<(Arc<dyn ScratchStore>, &'static str)> {
    let registry = registry()?;
    Ok(match scratch {
        #[cfg(feature = "postgres")]
        Scratch::Postgres { url, .. } => {
            let mut config = strata_store::PostgresConfig::new(url.clone());
            config.max_connections = max_connections;
            let store = strata_store::PostgresEventStore::connect(config, registry).await?;
            store.migrate().await?;
            (Arc::new(store), "postgres")
        }
        Scratch::Sqlite { url, .. } => {
            let store = strata_store::SqliteEventStore::connect(strata_store::SqliteConfig::new(url.clone()), registry).await?;
            store.migrate().await?;
            (Arc::new(store), "sqlite")
        }
    })
}

#[cfg(feature = "postgres")]
fn url_with_db(url: &str, database: &str) -> String {
    let base = url.rsplit_once('/').map_or(url, |(base, _)| base);
    format!("{base}/{database}")
}

/// Runs `bench append` and returns its JSON result.
pub async fn append(bench: &AppendBench) -> anyhow::Result<Value> {
    if bench.writers == 0 || bench.events_per_append == 0 || bench.runs == 0 {
        bail!("--writers, --events-per-append and --runs must be at least 1");
    }
    let scratch = Scratch::create(&bench.event_store_url).await?;
    let result = run_all(bench, &scratch).await;
    scratch.remove().await?;
    result
}

async fn run_all(bench: &AppendBench, scratch: &Scratch) -> anyhow::Result<Value> {
    let registry = registry()?;
    let (store, baseline, backend): (Arc<dyn EventStore>, Baseline, &str) = match scratch {
        #[cfg(feature = "postgres")]
        Scratch::Postgres { url, .. } => {
            let mut config = strata_store::PostgresConfig::new(url.clone());
            config.max_connections = bench.writers as u32 + 4;
            config.group_commit = bench.group_commit;
            config.committers = bench.committers;
            let store = strata_store::PostgresEventStore::connect(config, registry).await?;
            store.migrate().await?;
            let pool = sqlx::postgres::PgPoolOptions::new().max_connections(bench.writers as u32).connect(url).await?;
            sqlx::raw_sql(
                "CREATE TABLE bench_baseline (LIKE strata_events INCLUDING ALL);
                 CREATE SEQUENCE bench_baseline_position OWNED BY bench_baseline.position;
                 ALTER TABLE bench_baseline ALTER COLUMN position SET DEFAULT nextval('bench_baseline_position');",
            )
            .execute(&pool)
            .await?;
            (Arc::new(store), Baseline::Postgres(pool), "postgres")
        }
        Scratch::Sqlite { url, .. } => {
            let mut config = strata_store::SqliteConfig::new(url.clone());
            config.group_commit = bench.group_commit;
            let store = strata_store::SqliteEventStore::connect(config, registry).await?;
            store.migrate().await?;
            let options: sqlx::sqlite::SqliteConnectOptions = url.parse()?;
            let pool = sqlx::sqlite::SqlitePoolOptions::new()
                .max_connections(1)
                .connect_with(
                    options
                        .journal_mode(sqlx::sqlite::SqliteJournalMode::Wal)
                        .synchronous(sqlx::sqlite::SqliteSynchronous::Full)
                        .busy_timeout(Duration::from_secs(10)),
                )
                .await?;
            sqlx::raw_sql(
                "CREATE TABLE bench_baseline (
                    position INTEGER PRIMARY KEY, event_id BLOB NOT NULL UNIQUE, stream_id TEXT NOT NULL,
                    stream_version INTEGER NOT NULL, category TEXT NOT NULL, event_type TEXT NOT NULL,
                    schema_version INTEGER NOT NULL, payload TEXT NOT NULL, metadata TEXT NOT NULL,
                    recorded_at INTEGER NOT NULL, hash BLOB NOT NULL, UNIQUE (stream_id, stream_version));
                 CREATE INDEX bench_baseline_category_position ON bench_baseline (category, position);",
            )
            .execute(&pool)
            .await?;
            (Arc::new(store), Baseline::Sqlite(pool), "sqlite")
        }
    };
    let baseline = Arc::new(baseline);
    let mut runs = Vec::new();
    for run in 0..bench.runs {
        let (strata, plain) = if run % 2 == 0 {
            let strata = measure_strata(bench, store.clone()).await?;
            (strata, measure_baseline(bench, baseline.clone()).await?)
        } else {
            let plain = measure_baseline(bench, baseline.clone()).await?;
            (measure_strata(bench, store.clone()).await?, plain)
        };
        eprintln!(
            "run {}: strata {:.0} events/s (p99 {:.2} ms), baseline {:.0} events/s (p99 {:.2} ms)",
            run + 1,
            strata.events_per_s(),
            strata.p99_ms,
            plain.events_per_s(),
            plain.p99_ms
        );
        runs.push((strata, plain));
    }
    let pick = |figures: &dyn Fn(&(Figures, Figures)) -> Figures| {
        let all: Vec<Figures> = runs.iter().map(figures).collect();
        json!({
            "seconds": round(median(all.iter().map(|f| f.seconds).collect()), 3),
            "appends_per_s": round(median(all.iter().map(|f| f.appends as f64 / f.seconds).collect()), 0),
            "events_per_s": round(median(all.iter().map(Figures::events_per_s).collect()), 0),
            "p50_ms": round(median(all.iter().map(|f| f.p50_ms).collect()), 3),
            "p95_ms": round(median(all.iter().map(|f| f.p95_ms).collect()), 3),
            "p99_ms": round(median(all.iter().map(|f| f.p99_ms).collect()), 3),
        })
    };
    let ratio = median(runs.iter().map(|(s, b)| s.events_per_s() / b.events_per_s().max(1e-9)).collect());
    let mut result = pick(&|run| run.0);
    let fields = result.as_object_mut().context("object")?;
    let mut object = serde_json::Map::new();
    object.insert("bench".into(), json!("append"));
    object.insert("backend".into(), json!(backend));
    object.insert("writers".into(), json!(bench.writers));
    object.insert("events_per_append".into(), json!(bench.events_per_append));
    object.insert("duration_s".into(), json!(bench.duration.as_secs_f64()));
    object.insert("runs".into(), json!(bench.runs));
    object.insert("group_commit".into(), json!(bench.group_commit));
    if backend == "postgres" && bench.group_commit {
        object.insert("committers".into(), json!(bench.committers));
    }
    object.append(fields);
    object.insert("baseline".into(), pick(&|run| run.1));
    object.insert("ratio".into(), json!(round(ratio, 3)));
    object.insert(
        "per_run".into(),
        Value::Array(
            runs.iter()
                .map(|(s, b)| json!({ "strata": s.json(), "baseline": b.json(), "ratio": round(s.events_per_s() / b.events_per_s().max(1e-9), 3) }))
                .collect(),
        ),
    );
    object.insert("machine".into(), machine());
    Ok(Value::Object(object))
}

/// Runs `writers` tasks for `duration`. Each task starts from `init(i)` and
/// calls `step(state)` until the time is up, threading its state through and
/// timing every call; `step` also returns a count it wants summed (retries).
pub(crate) async fn drive<S, F, Fut>(
    writers: usize,
    duration: Duration,
    init: impl Fn(usize) -> S,
    step: F,
) -> anyhow::Result<(Vec<Duration>, u64, f64)>
where
    S: Send + 'static,
    F: Fn(S) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = anyhow::Result<(S, u64)>> + Send + 'static,
{
    let started = Instant::now();
    let deadline = started + duration;
    let tasks: Vec<_> = (0..writers)
        .map(|writer| {
            let mut state = init(writer);
            let step = step.clone();
            tokio::spawn(async move {
                let (mut latencies, mut counted) = (Vec::new(), 0);
                while Instant::now() < deadline {
                    let start = Instant::now();
                    let (next, count) = step(state).await?;
                    latencies.push(start.elapsed());
                    state = next;
                    counted += count;
                }
                anyhow::Ok((latencies, counted))
            })
        })
        .collect();
    let (mut latencies, mut counted) = (Vec::new(), 0);
    for task in tasks {
        let (task_latencies, task_counted) = task.await??;
        latencies.extend(task_latencies);
        counted += task_counted;
    }
    Ok((latencies, counted, started.elapsed().as_secs_f64()))
}

/// A writer's stream and its version; a new stream every 100 events.
struct WriterStream {
    stream_id: StreamId,
    version: u64,
}

impl WriterStream {
    fn fresh() -> anyhow::Result<Self> {
        Ok(Self { stream_id: StreamId::new("order", Uuid::new_v4().simple())?, version: 0 })
    }

    fn advance(mut self, events: usize) -> anyhow::Result<Self> {
        self.version += events as u64;
        if self.version >= 100 {
            Self::fresh()
        } else {
            Ok(self)
        }
    }
}

async fn measure_strata(bench: &AppendBench, store: Arc<dyn EventStore>) -> anyhow::Result<Figures> {
    let payload = Arc::new(order_placed_payload());
    let per_append = bench.events_per_append;
    let (latencies, _, seconds) = drive(
        bench.writers,
        bench.duration,
        |_| WriterStream::fresh(),
        move |stream| {
            let (store, payload) = (store.clone(), payload.clone());
            async move {
                let stream = stream?;
                let events = (0..per_append).map(|_| new_event(&payload)).collect();
                let request =
                    vec![StreamAppend { stream_id: stream.stream_id.clone(), expected: ExpectedVersion::Exact(stream.version), events }];
                store.append(request).await?;
                Ok((stream.advance(per_append), 0))
            }
        },
    )
    .await?;
    Ok(Figures::from_latencies(latencies, per_append, seconds))
}

enum Baseline {
    #[cfg(feature = "postgres")]
    Postgres(sqlx::PgPool),
    Sqlite(sqlx::SqlitePool),
}

/// One baseline row, shaped like a `strata_events` row.
struct Row {
    event_id: Uuid,
    stream_id: String,
    stream_version: i64,
    payload: String,
    metadata: String,
    hash: Vec<u8>,
}

async fn measure_baseline(bench: &AppendBench, baseline: Arc<Baseline>) -> anyhow::Result<Figures> {
    let payload = Arc::new(strata_store::hash::canonical_json(&order_placed_payload()));
    let per_append = bench.events_per_append;
    let (latencies, _, seconds) = drive(
        bench.writers,
        bench.duration,
        |_| WriterStream::fresh(),
        move |stream| {
            let (baseline, payload) = (baseline.clone(), payload.clone());
            async move {
                let stream = stream?;
                let rows: Vec<Row> = (0..per_append)
                    .map(|i| {
                        let event = new_event(&Value::Null);
                        Row {
                            event_id: event.event_id,
                            stream_id: stream.stream_id.to_string(),
                            stream_version: (stream.version + 1 + i as u64) as i64,
                            payload: payload.to_string(),
                            metadata: serde_json::to_string(&event.metadata).unwrap_or_default(),
                            hash: Uuid::new_v4().as_bytes().repeat(2),
                        }
                    })
                    .collect();
                insert_baseline(&baseline, rows).await?;
                Ok((stream.advance(per_append), 0))
            }
        },
    )
    .await?;
    Ok(Figures::from_latencies(latencies, per_append, seconds))
}

async fn insert_baseline(baseline: &Baseline, rows: Vec<Row>) -> anyhow::Result<()> {
    let now = chrono::Utc::now();
    match baseline {
        #[cfg(feature = "postgres")]
        Baseline::Postgres(pool) => {
            sqlx::query(
                "INSERT INTO bench_baseline (event_id, stream_id, stream_version, category, event_type, schema_version, payload, metadata, recorded_at, hash)
                 SELECT e.event_id, e.stream_id, e.stream_version, 'order', 'OrderPlaced', 2, e.payload::jsonb, e.metadata::jsonb, $6, e.hash
                 FROM UNNEST($1::uuid[], $2::text[], $3::bigint[], $4::text[], $5::text[], $7::bytea[])
                      AS e(event_id, stream_id, stream_version, payload, metadata, hash)",
            )
            .bind(rows.iter().map(|r| r.event_id).collect::<Vec<_>>())
            .bind(rows.iter().map(|r| r.stream_id.clone()).collect::<Vec<_>>())
            .bind(rows.iter().map(|r| r.stream_version).collect::<Vec<_>>())
            .bind(rows.iter().map(|r| r.payload.clone()).collect::<Vec<_>>())
            .bind(rows.iter().map(|r| r.metadata.clone()).collect::<Vec<_>>())
            .bind(now)
            .bind(rows.iter().map(|r| r.hash.clone()).collect::<Vec<_>>())
            .execute(pool)
            .await?;
        }
        Baseline::Sqlite(pool) => {
            let mut tx = pool.begin().await?;
            for row in &rows {
                sqlx::query(
                    "INSERT INTO bench_baseline (event_id, stream_id, stream_version, category, event_type, schema_version, payload, metadata, recorded_at, hash)
                     VALUES ($1, $2, $3, 'order', 'OrderPlaced', 2, $4, $5, $6, $7)",
                )
                .bind(row.event_id)
                .bind(&row.stream_id)
                .bind(row.stream_version)
                .bind(&row.payload)
                .bind(&row.metadata)
                .bind(now.timestamp_micros())
                .bind(&row.hash)
                .execute(&mut *tx)
                .await?;
            }
            tx.commit().await?;
        }
    }
    Ok(())
}

/// The Kafka settings of a bench's `STRATA_BUS`; `kafka://mock` starts
/// librdkafka's mock cluster in this process (a Kafka-protocol broker in
/// memory: ratios measured on it mean something, absolute rates are not a
/// real broker's).
#[cfg(feature = "kafka")]
pub(crate) fn kafka_config(url: &str) -> anyhow::Result<strata_store::bus::KafkaConfig> {
    if url == "kafka://mock" {
        // Lives until the process exits (clients of a destroyed mock block on close).
        let cluster = rdkafka::mocking::MockCluster::new(1).map_err(|e| anyhow::anyhow!("starting librdkafka's mock cluster: {e}"))?;
        let config =
            strata_store::bus::KafkaConfig { create_topics: false, ..strata_store::bus::KafkaConfig::new(cluster.bootstrap_servers()) };
        std::mem::forget(cluster);
        return Ok(config);
    }
    crate::workers::kafka_config(url)
}
