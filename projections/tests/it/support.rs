//! Helpers: a log filled with sample traffic, sinks of every backend (Redis
//! with a key prefix per test), and runners.

use std::sync::Arc;

use strata_projections::orders::sample::{sample, SampleConfig};
use strata_projections::sink::{Dump, Target};
use strata_projections::{
    MemorySink, MongoSink, MongoSinkConfig, Projection, ProjectionRunner, ReadModelSink, RedisSink, RedisSinkConfig, RunnerConfig,
};
use strata_schemas::catalog;
use strata_store::testkit::{report_unreachable, Service};
use strata_store::{EventReader, EventStore, MemoryEventStore, ReadAll, RecordedEvent, StreamAppend};
use uuid::Uuid;

pub use strata_store::testkit::{wait_until, Cleanup};

pub fn memory_store() -> Arc<MemoryEventStore> {
    Arc::new(MemoryEventStore::new(Arc::new(catalog::registry().expect("catalog builds"))))
}

/// A memory log holding `orders` sample orders; returns it and its events.
pub async fn log_with_orders(seed: u64, orders: usize) -> (Arc<MemoryEventStore>, Vec<RecordedEvent>) {
    let store = memory_store();
    append_all(&*store, sample(SampleConfig { seed, orders, ..SampleConfig::default() })).await;
    let events = read_log(&*store).await;
    (store, events)
}

pub async fn append_all(store: &dyn EventStore, appends: Vec<StreamAppend>) {
    for request in strata_projections::orders::sample::requests(appends, 64) {
        store.append(request).await.expect("sample traffic appends");
    }
}

pub async fn read_log(store: &dyn EventReader) -> Vec<RecordedEvent> {
    store.read_all(ReadAll::after(strata_store::Position::START, 1_000_000)).await.expect("read the log")
}

/// Which sink backends to run a case on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Memory,
    Redis,
    Mongo,
}

/// A Mongo sink on a database of its own (dropped by the cleanup); `None`
/// (loudly) when the server is down outside CI.
pub async fn fresh_mongo() -> Option<(Arc<MongoSink>, Cleanup)> {
    fresh_mongo_with(|sink| sink).await
}

/// [`fresh_mongo`], the sink configured by `configure`.
pub async fn fresh_mongo_with(configure: impl FnOnce(MongoSink) -> MongoSink) -> Option<(Arc<MongoSink>, Cleanup)> {
    use strata_store::testkit::mongo;
    let url = mongo::url(&mongo::fresh_database());
    match MongoSink::connect(MongoSinkConfig::new(url.clone())).await {
        Ok(sink) => {
            let sink = Arc::new(configure(sink));
            let teardown = sink.clone();
            Some((sink, Cleanup::new(move || async move { teardown.drop_database().await.expect("drop the test database") })))
        }
        Err(err) => {
            report_unreachable(Service::Mongo, &url, &err);
            None
        }
    }
}

/// A fresh, empty sink of `backend` (Redis: its own key prefix, deleted by
/// the cleanup); `None` (loudly) when Redis is down outside CI.
pub async fn fresh_sink(backend: Backend) -> Option<(Arc<dyn ReadModelSink>, Cleanup)> {
    match backend {
        Backend::Memory => Some((Arc::new(MemorySink::new()), Cleanup::none())),
        Backend::Redis => {
            let url = Service::Redis.url();
            let prefix = format!("test_{}", Uuid::new_v4().simple());
            let config = RedisSinkConfig { key_prefix: prefix.clone(), ..RedisSinkConfig::new(url.clone()) };
            match RedisSink::connect(config).await {
                Ok(sink) => {
                    let sink = Arc::new(sink);
                    let teardown = sink.clone();
                    let cleanup = Cleanup::new(move || async move { teardown.delete_all().await.expect("delete test keys") });
                    Some((sink, cleanup))
                }
                Err(err) => {
                    report_unreachable(Service::Redis, &url, &err);
                    None
                }
            }
        }
        Backend::Mongo => {
            let (sink, cleanup) = fresh_mongo().await?;
            Some((sink, cleanup))
        }
    }
}

/// A runner on a live generation that has seen nothing yet (without one, the
/// runner would first build the model from the whole log, and the events fed
/// to it would all be duplicates).
pub async fn runner(projection: Arc<dyn Projection>, sink: &Arc<dyn ReadModelSink>, log: Arc<dyn EventReader>) -> ProjectionRunner {
    sink.init_live(projection.name(), 1).await.expect("init the live generation");
    ProjectionRunner::new(projection, sink.clone(), log, RunnerConfig::default())
}

/// The live generation's contents.
pub async fn live_dump(sink: &dyn ReadModelSink, projection: &str) -> Dump {
    let generation = sink.live_generation(projection).await.unwrap().expect("a live generation");
    sink.dump(&Target { projection: projection.to_owned(), generation }).await.unwrap()
}

/// Feeds `events` to a runner in chunks of `chunk` (a bus without a bus).
pub async fn feed(runner: &ProjectionRunner, events: &[RecordedEvent], chunk: usize) {
    for part in events.chunks(chunk.max(1)) {
        let (covered, _, stopped) = runner.handle(part).await.expect("handle a chunk");
        assert!(stopped.is_none(), "unexpected stop: {stopped:?}");
        assert_eq!(covered, part.len());
    }
}

/// What a fresh rebuild from `log` gives: the model every live run must equal.
pub async fn rebuilt(projection: Arc<dyn Projection>, log: Arc<dyn EventReader>) -> Dump {
    let sink: Arc<dyn ReadModelSink> = Arc::new(MemorySink::new());
    let name = projection.name().to_owned();
    strata_projections::rebuild(projection, sink.clone(), log, Default::default(), &mut |_| {}).await.expect("rebuild into memory");
    live_dump(&*sink, &name).await
}

pub use strata_store::testkit::jetstream as test_jetstream;

/// Commits `events` straight into `target` (one guarded batch per event), as
/// a rebuild in progress would.
pub async fn feed_target(sink: &dyn ReadModelSink, target: &Target, events: &[RecordedEvent]) {
    use strata_projections::sink::{Batch, Committed, StreamGuard};
    let mut versions = std::collections::HashMap::new();
    for event in events {
        let expected = versions.get(event.stream_id.as_str()).copied().unwrap_or(0);
        let batch = Batch {
            guards: vec![StreamGuard {
                stream_id: event.stream_id.as_str().to_owned(),
                expected: Some(expected),
                reached: event.stream_version,
            }],
            writes: vec![],
            dead_letters: vec![],
            position: event.position,
            events: 1,
        };
        assert_eq!(sink.commit(target, &batch).await.unwrap(), Committed::Done);
        versions.insert(event.stream_id.as_str().to_owned(), event.stream_version);
    }
}

/// Forgets everything a sink holds, as a Redis restarted without
/// persistence would.
pub type Wipe = Arc<dyn Fn() -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>> + Send + Sync>;

/// Like [`fresh_sink`], with a way to wipe it.
pub async fn fresh_wipeable_sink(backend: Backend) -> Option<(Arc<dyn ReadModelSink>, Wipe, Cleanup)> {
    match backend {
        Backend::Memory => {
            let sink = Arc::new(MemorySink::new());
            let wiped = sink.clone();
            let wipe: Wipe = Arc::new(move || {
                let wiped = wiped.clone();
                Box::pin(async move { wiped.clear() })
            });
            Some((sink, wipe, Cleanup::none()))
        }
        Backend::Redis => {
            let url = Service::Redis.url();
            let prefix = format!("test_{}", Uuid::new_v4().simple());
            let config = RedisSinkConfig { key_prefix: prefix, ..RedisSinkConfig::new(url.clone()) };
            match RedisSink::connect(config).await {
                Ok(sink) => {
                    let sink = Arc::new(sink);
                    let (wiped, teardown) = (sink.clone(), sink.clone());
                    let wipe: Wipe = Arc::new(move || {
                        let wiped = wiped.clone();
                        Box::pin(async move { wiped.delete_all().await.expect("wipe the test keys") })
                    });
                    let cleanup = Cleanup::new(move || async move { teardown.delete_all().await.expect("delete test keys") });
                    Some((sink, wipe, cleanup))
                }
                Err(err) => {
                    report_unreachable(Service::Redis, &url, &err);
                    None
                }
            }
        }
        Backend::Mongo => {
            // Dropping the database is what a new, empty server looks like.
            let (sink, cleanup) = fresh_mongo().await?;
            let wiped = sink.clone();
            let wipe: Wipe = Arc::new(move || {
                let wiped = wiped.clone();
                Box::pin(async move { wiped.drop_database().await.expect("wipe the test database") })
            });
            Some((sink, wipe, cleanup))
        }
    }
}
