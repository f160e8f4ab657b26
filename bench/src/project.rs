//! `strata bench project`: the `orders` projection committing sample traffic
//! into Redis (plan, one guarded script per batch with its checkpoint) or
//! MongoDB (plan, one transaction per batch), next to raw writes of the same
//! keys in the same process (Redis: the same field, index and stream-version
//! writes as plain pipelined HSET/ZADD/ZREM; MongoDB: the same writes as
//! upserts in one unordered `update` command per batch; no guards, no reads,
//! no transaction); runs alternate which goes first. Both split the events
//! over `workers` by stream, as replicas of a worker would.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Context};
use serde_json::Value;
use strata_projections::orders::sample::{requests, Sample, SampleConfig};
use strata_projections::orders::OrdersProjection;
use strata_projections::sink::Target;
use strata_projections::{Document, Projection, ProjectionRunner, ReadModelSink, RedisSink, RedisSinkConfig, RunnerConfig, Write};
use strata_store::{EventReader, EventStore, MemoryEventStore, Position, ReadAll, RecordedEvent};
use uuid::Uuid;

use super::kit::{alternate, Report, Share, Summary};
use strata_api::backend::registry;

/// `bench project`: its flags, and the read models from the settings.
#[derive(Debug, Clone, clap::Args)]
pub struct ProjectBench {
    /// `redis://…` or `mongodb://…` (`STRATA_READ_MODEL`).
    #[arg(skip)]
    pub read_model_url: String,
    /// Sample events projected per run.
    #[arg(long, default_value_t = 100_000)]
    pub events: usize,
    /// Events per commit.
    #[arg(long, default_value_t = 500)]
    pub batch_size: usize,
    /// Workers, each owning a share of the streams.
    #[arg(long, default_value_t = 4)]
    pub workers: usize,
    /// Runs (medians are reported; projection and raw alternate first).
    #[arg(long, default_value_t = 4)]
    pub runs: usize,
}

/// Runs `bench project` and returns its JSON result.
pub async fn project(bench: &ProjectBench) -> anyhow::Result<Value> {
    let backend = read_model_backend(&bench.read_model_url)?;
    if bench.events == 0 || bench.batch_size == 0 || bench.workers == 0 || bench.runs == 0 {
        bail!("--events, --batch-size, --workers and --runs must be at least 1");
    }
    let store = Arc::new(MemoryEventStore::new(registry()?));
    let traffic: Vec<_> = Sample::new(sample_config(bench.events)).take(bench.events).collect();
    for request in requests(traffic, 500) {
        store.append(request).await?;
    }
    let events = store.read_all(ReadAll::after(Position::START, bench.events)).await?;
    let writes = planned_writes(&events)?;
    let shares = split(&events, &writes, bench.workers);

    let count = events.len() as u64;
    let comparison = alternate(
        bench.runs,
        async |_| Ok(Summary::new("events", count, measure_strata(bench, &store, &shares).await?)),
        async |_| Ok(Summary::new("events", count, measure_raw(bench, &shares).await?)),
    )
    .await?;
    let baseline = if backend == "redis" { "raw_redis_pipeline" } else { "raw_mongo_bulk_update" };
    Ok(Report::new("project")
        .with("backend", backend)
        .with("projection", "orders")
        .with("events", events.len())
        .with("batch_size", bench.batch_size)
        .with("workers", bench.workers)
        .with("runs", bench.runs)
        .compared(&comparison, Some(baseline))
        .finish())
}

pub(crate) fn sample_config(events: usize) -> SampleConfig {
    SampleConfig { seed: 42, orders: events / 8 + 1, skus: 1000, customers: 1000, concurrency: 64 }
}

/// What the projection writes per event, folded in log order in memory.
fn planned_writes(events: &[RecordedEvent]) -> anyhow::Result<Vec<Vec<Write>>> {
    let projection = OrdersProjection;
    let mut documents: HashMap<String, Document> = HashMap::new();
    let mut all = Vec::with_capacity(events.len());
    for event in events {
        if !projection.event_types().contains(&event.event_type.as_str()) {
            all.push(Vec::new());
            continue;
        }
        let key = projection.document_key(event);
        let writes = projection.apply(event, key.as_ref().and_then(|k| documents.get(k)))?;
        for write in &writes {
            if let Write::SetField { key, field, value } = write {
                documents.entry(key.clone()).or_default().insert(field.clone(), value.clone());
            }
        }
        all.push(writes);
    }
    Ok(all)
}

/// `redis` or `mongodb`, from the read-model URL (what this build supports).
pub(crate) fn read_model_backend(url: &str) -> anyhow::Result<&'static str> {
    if url.starts_with("redis://") {
        return Ok("redis");
    }
    if cfg!(all(feature = "redis", feature = "mongo")) && url.starts_with("mongodb://") {
        return Ok("mongodb");
    }
    bail!("this bench needs STRATA_READ_MODEL=redis://HOST:6379 or mongodb://HOST:27017/ (a scratch database or key prefix is used and removed)")
}

/// A sink on a scratch key prefix or database, removed afterwards.
pub(crate) enum ScratchSink {
    Redis(Arc<RedisSink>),
    #[cfg(all(feature = "redis", feature = "mongo"))]
    Mongo(Arc<strata_projections::MongoSink>),
}

impl ScratchSink {
    pub(crate) async fn open(url: &str) -> anyhow::Result<Self> {
        #[cfg(all(feature = "redis", feature = "mongo"))]
        if url.starts_with("mongodb://") {
            return Ok(Self::Mongo(super::mongo::scratch_sink(url).await?));
        }
        let prefix = format!("bench_{}", Uuid::new_v4().simple());
        Ok(Self::Redis(Arc::new(scratch_sink(url, &prefix).await?)))
    }

    pub(crate) fn sink(&self) -> Arc<dyn ReadModelSink> {
        match self {
            Self::Redis(sink) => sink.clone(),
            #[cfg(all(feature = "redis", feature = "mongo"))]
            Self::Mongo(sink) => sink.clone(),
        }
    }

    pub(crate) async fn remove(&self) -> anyhow::Result<()> {
        match self {
            Self::Redis(sink) => sink.delete_all().await?,
            #[cfg(all(feature = "redis", feature = "mongo"))]
            Self::Mongo(sink) => sink.drop_database().await?,
        }
        Ok(())
    }
}

/// Splits the events over workers by stream, keeping each stream's order.
fn split(events: &[RecordedEvent], writes: &[Vec<Write>], workers: usize) -> Arc<Vec<Share>> {
    let mut shares: Vec<Share> = vec![Vec::new(); workers];
    for (event, writes) in events.iter().zip(writes) {
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        event.stream_id.as_str().hash(&mut hasher);
        shares[(hasher.finish() % workers as u64) as usize].push((event.clone(), writes.clone()));
    }
    Arc::new(shares)
}

async fn measure_strata(bench: &ProjectBench, store: &Arc<MemoryEventStore>, shares: &Arc<Vec<Share>>) -> anyhow::Result<f64> {
    let scratch = ScratchSink::open(&bench.read_model_url).await?;
    let sink = scratch.sink();
    let log: Arc<dyn EventReader> = store.clone();
    // The events as deliveries would hold them, copied before the clock starts.
    let inputs: Vec<Vec<RecordedEvent>> = shares.iter().map(|share| share.iter().map(|(e, _)| e.clone()).collect()).collect();
    // A live generation the workers write into (without one they would build
    // the model from the log first).
    sink.init_live("orders", 1).await?;
    let started = Instant::now();
    let mut tasks = Vec::new();
    for events in inputs {
        let runner = ProjectionRunner::new(Arc::new(OrdersProjection), sink.clone(), log.clone(), RunnerConfig::default());
        let batch_size = bench.batch_size;
        tasks.push(tokio::spawn(async move {
            for chunk in events.chunks(batch_size) {
                let (covered, _, stopped) = runner.handle(chunk).await?;
                if covered != chunk.len() || stopped.is_some() {
                    bail!("the projection stopped: {stopped:?}");
                }
            }
            Ok(())
        }));
    }
    for task in tasks {
        task.await??;
    }
    let seconds = started.elapsed().as_secs_f64();
    let generation = sink.live_generation("orders").await?.context("no live generation")?;
    let stats = sink.stats(&Target { projection: "orders".into(), generation }).await?;
    let followed = OrdersProjection.categories();
    let expected: usize = shares.iter().flatten().filter(|(event, _)| followed.contains(&event.stream_id.category())).count();
    if stats.events != expected as u64 {
        bail!("the projection committed {} of {expected} events", stats.events);
    }
    scratch.remove().await?;
    Ok(seconds)
}

async fn measure_raw(bench: &ProjectBench, shares: &Arc<Vec<Share>>) -> anyhow::Result<f64> {
    #[cfg(all(feature = "redis", feature = "mongo"))]
    if bench.read_model_url.starts_with("mongodb://") {
        return super::mongo::raw_writes(&bench.read_model_url, shares, bench.batch_size).await;
    }
    let prefix = format!("bench_{}", Uuid::new_v4().simple());
    let client = redis::Client::open(bench.read_model_url.as_str())?;
    let connection = client.get_multiplexed_async_connection().await?;
    let base = format!("{{{prefix}:orders}}:g1:");
    let started = Instant::now();
    let mut tasks = Vec::new();
    for worker in 0..shares.len() {
        let (shares, batch_size, base, mut connection) = (shares.clone(), bench.batch_size, base.clone(), connection.clone());
        tasks.push(tokio::spawn(async move {
            for chunk in shares[worker].chunks(batch_size) {
                let mut pipe = redis::pipe();
                for (event, writes) in chunk {
                    for write in writes {
                        match write {
                            Write::SetField { key, field, value } => {
                                pipe.cmd("HSET").arg(format!("{base}d:{key}")).arg(field).arg(value.to_string()).ignore();
                            }
                            Write::SetMax { key, field, value } => {
                                pipe.cmd("HSET").arg(format!("{base}d:{key}")).arg(field).arg(*value).ignore();
                            }
                            Write::DeleteDocument { key } => {
                                pipe.cmd("DEL").arg(format!("{base}d:{key}")).ignore();
                            }
                            Write::IndexAdd { index, score, member } => {
                                pipe.cmd("ZADD").arg(format!("{base}i:{index}")).arg(*score).arg(member).ignore();
                            }
                            Write::IndexRemove { index, member } => {
                                pipe.cmd("ZREM").arg(format!("{base}i:{index}")).arg(member).ignore();
                            }
                        }
                    }
                    pipe.cmd("HSET").arg(format!("{base}streams")).arg(event.stream_id.as_str()).arg(event.stream_version).ignore();
                }
                pipe.query_async::<()>(&mut connection).await?;
            }
            Ok::<_, anyhow::Error>(())
        }));
    }
    for task in tasks {
        task.await??;
    }
    let seconds = started.elapsed().as_secs_f64();
    scratch_sink(&bench.read_model_url, &prefix).await?.delete_all().await?;
    Ok(seconds)
}

/// The Redis sink of a bench's scratch key prefix.
pub(crate) async fn scratch_sink(url: &str, prefix: &str) -> anyhow::Result<RedisSink> {
    let config = RedisSinkConfig { key_prefix: prefix.to_owned(), ..RedisSinkConfig::new(url) };
    Ok(RedisSink::connect(config).await?)
}
