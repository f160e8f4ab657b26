//! `bench append`: appends through Strata vs the same rows by plain
//! INSERTs, on a scratch database (PostgreSQL) or file (SQLite). The
//! baseline table has the same columns and indexes as `strata_events`; each
//! baseline append is one autocommitted statement (PostgreSQL) or one
//! transaction (SQLite) with `events_per_append` rows, durable like Strata's
//! commits.

use std::sync::Arc;
use std::time::Duration;

use anyhow::bail;
use serde_json::Value;
use strata_store::{EventStore, ExpectedVersion, StreamAppend, StreamId};
use uuid::Uuid;

use super::kit::{alternate, drive, Report, Scratch, Summary};
use super::{new_event, order_placed_payload};
use strata_api::backend::registry;

/// `bench append`: its flags, and the event store from the settings.
#[derive(Debug, Clone, clap::Args)]
pub struct AppendBench {
    /// Where to run (`STRATA_EVENT_STORE`; only the server or directory is used; see module docs).
    #[arg(skip)]
    pub event_store_url: String,
    /// Concurrent writers.
    #[arg(long, default_value_t = 16)]
    pub writers: usize,
    /// Events per append.
    #[arg(long, default_value_t = 1)]
    pub events_per_append: usize,
    /// Seconds per measured variant per run.
    #[arg(long, default_value = "10", value_parser = crate::kit::seconds)]
    pub duration: Duration,
    /// Runs (medians are reported; Strata and baseline alternate first).
    #[arg(long, default_value_t = 3)]
    pub runs: usize,
    /// One transaction per append (no group commit).
    #[arg(long = "no-group-commit", action = clap::ArgAction::SetFalse)]
    pub group_commit: bool,
    /// Committer tasks of PostgreSQL group commit.
    #[arg(long, default_value_t = strata_store::PostgresConfig::new("").committers)]
    pub committers: usize,
    /// Strata's appends sealed under this key (`STRATA_CHAIN_KEY`), if set.
    #[arg(skip)]
    pub chain_key: Option<strata_store::ChainKey>,
}

/// Runs `bench append` and returns its JSON result.
pub async fn append(bench: &AppendBench) -> anyhow::Result<Value> {
    if bench.writers == 0 || bench.events_per_append == 0 || bench.runs == 0 {
        bail!("--writers, --events-per-append and --runs must be at least 1");
    }
    Scratch::around(&bench.event_store_url, async |scratch| run_all(bench, scratch).await).await
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
            config.chain_key = bench.chain_key.clone();
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
            config.chain_key = bench.chain_key.clone();
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
    let comparison = alternate(
        bench.runs,
        async |_| measure_strata(bench, store.clone()).await,
        async |_| measure_baseline(bench, baseline.clone()).await,
    )
    .await?;
    let mut report = Report::new("append")
        .with("backend", backend)
        .with("writers", bench.writers)
        .with("events_per_append", bench.events_per_append)
        .with("duration_s", bench.duration.as_secs_f64())
        .with("runs", bench.runs)
        .with("group_commit", bench.group_commit)
        .with("keyed_chain", bench.chain_key.is_some());
    if backend == "postgres" && bench.group_commit {
        report = report.with("committers", bench.committers);
    }
    Ok(report.compared(&comparison, None).finish())
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

async fn measure_strata(bench: &AppendBench, store: Arc<dyn EventStore>) -> anyhow::Result<Summary> {
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
    Ok(Summary::of_calls("events", per_append as u64, &latencies, seconds).also("appends", latencies.len() as u64))
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

async fn measure_baseline(bench: &AppendBench, baseline: Arc<Baseline>) -> anyhow::Result<Summary> {
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
    Ok(Summary::of_calls("events", per_append as u64, &latencies, seconds).also("appends", latencies.len() as u64))
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
