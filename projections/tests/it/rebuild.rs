//! Rebuilds: beside the live generation, switched in one step, while readers
//! query and writers write.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use strata_projections::orders::sample::{sample, Sample, SampleConfig};
use strata_projections::orders::{self, OrdersProjection, OrdersQuery};
use strata_projections::sink::Target;
use strata_projections::{rebuild, RebuildConfig, RebuildProgress};
use strata_store::bus::MemoryBus;
use strata_store::EventReader;
use uuid::Uuid;

use crate::runner::{live_equals_rebuild, LivePipeline};
use crate::support::{append_all, fresh_sink, memory_store, read_log, Backend};

async fn rebuild_while_querying(backend: Backend) {
    let Some((sink, cleanup)) = fresh_sink(backend).await else { return };
    let store = memory_store();
    let bus = Arc::new(MemoryBus::new());
    let pipeline = LivePipeline::start(store.clone(), bus.clone(), bus.clone(), &sink, vec![Arc::new(OrdersProjection)], 1);
    append_all(&*store, sample(SampleConfig { seed: 21, orders: 300, ..SampleConfig::default() })).await;
    live_equals_rebuild(&store, &sink, Arc::new(OrdersProjection)).await;
    let first = sink.live_generation("orders").await.unwrap().unwrap();

    let known: Vec<(Uuid, String)> = read_log(&*store)
        .await
        .iter()
        .filter(|e| e.event_type == "OrderPlaced")
        .map(|e| (e.stream_id.id().parse().unwrap(), e.payload["customerId"].as_str().unwrap().to_owned()))
        .collect();
    let known = Arc::new(known);

    // Readers: every known order, whole, all the time; and the first page.
    let done = Arc::new(AtomicBool::new(false));
    let queries = Arc::new(AtomicU64::new(0));
    let mut readers = Vec::new();
    for reader in 0..3 {
        let (sink, known, done, queries) = (sink.clone(), known.clone(), done.clone(), queries.clone());
        readers.push(tokio::spawn(async move {
            let mut i = reader * 97;
            while !done.load(Ordering::Relaxed) {
                let (id, customer) = &known[i % known.len()];
                let order = orders::order(&*sink, *id).await.unwrap();
                let order = order.unwrap_or_else(|| panic!("order {id} missing during the rebuild"));
                assert_eq!(&order.customer_id, customer);
                assert!(order.lines.as_array().is_some_and(|l| !l.is_empty()), "order {id} partial: {order:?}");
                let page = orders::orders(&*sink, &OrdersQuery { first: 50, ..Default::default() }).await.unwrap();
                assert_eq!(page.orders.len(), 50, "a page of the oldest orders is always full");
                assert_eq!(page.orders[0].order_id, known[0].0, "the oldest order is always first");
                queries.fetch_add(1, Ordering::Relaxed);
                i += 1;
                // The memory sink never waits: let the rebuild run.
                tokio::task::yield_now().await;
            }
        }));
    }
    // A writer keeps adding orders through the live pipeline meanwhile.
    let writer = {
        let store = store.clone();
        tokio::spawn(async move {
            append_all(&*store, sample(SampleConfig { seed: 22, orders: 100, ..SampleConfig::default() })).await;
        })
    };

    let mut progress: Vec<RebuildProgress> = Vec::new();
    let config = RebuildConfig { batch_size: 97, ..RebuildConfig::default() };
    let report = rebuild(Arc::new(OrdersProjection), sink.clone(), store.clone(), config, &mut |p| progress.push(p))
        .await
        .expect("the rebuild succeeds");
    writer.await.unwrap();
    done.store(true, Ordering::Relaxed);
    for reader in readers {
        reader.await.expect("no reader saw a missing or partial order");
    }
    assert!(queries.load(Ordering::Relaxed) > 0);

    assert_eq!(report.previous, Some(first));
    assert!(report.generation > first);
    assert_eq!(sink.live_generation("orders").await.unwrap(), Some(report.generation));
    let old = Target { projection: "orders".into(), generation: first };
    assert_eq!(sink.dump(&old).await.unwrap(), Default::default(), "the old generation is dropped");
    assert!(progress.windows(2).all(|w| w[0].position <= w[1].position), "progress moves forward");
    let last = progress.last().expect("progress was reported");
    assert!(last.position >= last.head, "the build reached the head it started from");
    assert_eq!(sink.meta("orders").await.unwrap().rebuilding, None);

    // The live workers now write to the new generation, and it is whole.
    live_equals_rebuild(&store, &sink, Arc::new(OrdersProjection)).await;
    assert_eq!(store.head_position().await.unwrap(), read_log(&*store).await.last().unwrap().position);
    pipeline.stop().await;
    cleanup.run().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rebuild_while_readers_query_never_shows_a_missing_or_partial_order_in_memory() {
    rebuild_while_querying(Backend::Memory).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rebuild_while_readers_query_never_shows_a_missing_or_partial_order_in_redis() {
    rebuild_while_querying(Backend::Redis).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rebuild_while_readers_query_never_shows_a_missing_or_partial_order_in_mongo() {
    rebuild_while_querying(Backend::Mongo).await;
}

async fn unfinished_rebuild(backend: Backend) {
    let Some((sink, cleanup)) = fresh_sink(backend).await else { return };
    let (log, events) = crate::support::log_with_orders(31, 20).await;
    let first = rebuild(Arc::new(OrdersProjection), sink.clone(), log.clone(), RebuildConfig::default(), &mut |_| {}).await.unwrap();
    // A rebuild that died half way: a generation marked rebuilding, with data.
    let orphan = Target { projection: "orders".into(), generation: sink.new_generation("orders").await.unwrap() };
    sink.set_meta("orders", strata_projections::sink::MetaField::Rebuilding, Some(orphan.generation.to_string())).await.unwrap();
    crate::support::feed_target(&*sink, &orphan, &events[..10]).await;
    assert!(!sink.dump(&orphan).await.unwrap().stream_versions.is_empty());

    let next = rebuild(Arc::new(OrdersProjection), sink.clone(), log.clone(), RebuildConfig::default(), &mut |_| {}).await.unwrap();
    assert_eq!(next.previous, Some(first.generation));
    assert!(next.generation > orphan.generation);
    assert_eq!(sink.dump(&orphan).await.unwrap(), Default::default(), "the unfinished generation is dropped");
    cleanup.run().await;
}

#[tokio::test]
async fn a_rebuild_drops_the_generation_of_an_unfinished_one_in_memory() {
    unfinished_rebuild(Backend::Memory).await;
}

#[tokio::test]
async fn a_rebuild_drops_the_generation_of_an_unfinished_one_in_redis() {
    unfinished_rebuild(Backend::Redis).await;
}

#[tokio::test]
async fn a_rebuild_drops_the_generation_of_an_unfinished_one_in_mongo() {
    unfinished_rebuild(Backend::Mongo).await;
}

/// Orders, slowly (a rebuild of it takes long enough to be overtaken).
struct Slow(OrdersProjection);

impl strata_projections::Projection for Slow {
    fn name(&self) -> &str {
        self.0.name()
    }
    fn version(&self) -> u32 {
        1
    }
    fn categories(&self) -> &[&'static str] {
        self.0.categories()
    }
    fn event_types(&self) -> &[&'static str] {
        self.0.event_types()
    }
    fn document_key(&self, event: &strata_store::RecordedEvent) -> Option<String> {
        self.0.document_key(event)
    }
    fn apply(
        &self,
        event: &strata_store::RecordedEvent,
        document: Option<&strata_projections::Document>,
    ) -> Result<Vec<strata_projections::Write>, strata_projections::ApplyError> {
        std::thread::sleep(std::time::Duration::from_millis(2));
        self.0.apply(event, document)
    }
}

async fn superseded_rebuild(backend: Backend) {
    let Some((sink, cleanup)) = fresh_sink(backend).await else { return };
    let (log, _) = crate::support::log_with_orders(41, 40).await;
    let slow = {
        let (sink, log) = (sink.clone(), log.clone());
        let config = RebuildConfig { batch_size: 10, ..RebuildConfig::default() };
        tokio::spawn(async move { rebuild(Arc::new(Slow(OrdersProjection)), sink, log, config, &mut |_| {}).await })
    };
    let overtaken = crate::support::wait_until(std::time::Duration::from_secs(10), || {
        let sink = sink.clone();
        async move { sink.meta("orders").await.unwrap().rebuilding.ok_or("not started") }
    })
    .await;
    let report = rebuild(Arc::new(OrdersProjection), sink.clone(), log.clone(), RebuildConfig::default(), &mut |_| {})
        .await
        .expect("the newer rebuild wins");
    let error = slow.await.unwrap().expect_err("the overtaken rebuild fails");
    assert!(matches!(error, strata_projections::RebuildError::Retired { .. }), "{error}");
    assert_eq!(sink.live_generation("orders").await.unwrap(), Some(report.generation));
    let old = Target { projection: "orders".into(), generation: overtaken };
    assert_eq!(sink.dump(&old).await.unwrap(), Default::default(), "nothing of the overtaken build is left");
    assert_eq!(sink.meta("orders").await.unwrap().rebuilding, None);
    crate::runner::live_equals_rebuild(&log, &sink, Arc::new(OrdersProjection)).await;
    cleanup.run().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_newer_rebuild_supersedes_a_running_one_in_memory() {
    superseded_rebuild(Backend::Memory).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_newer_rebuild_supersedes_a_running_one_in_redis() {
    superseded_rebuild(Backend::Redis).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_newer_rebuild_supersedes_a_running_one_in_mongo() {
    superseded_rebuild(Backend::Mongo).await;
}

/// A rebuild says how far it is where any process reads it (the
/// projection's state in the read model): readings taken while a rebuild
/// runs (200,000 events in memory, fewer on Redis and MongoDB) never go back, count toward the head the rebuild
/// began at, name its generation, give an ETA that shrinks as it goes, and
/// are gone once it has switched readers.
async fn rebuild_reports_progress(backend: Backend, events: usize) {
    use strata_projections::sink::RebuildReading;

    let Some((sink, cleanup)) = fresh_sink(backend).await else { return };
    let store = memory_store();
    let config = SampleConfig { seed: 42, orders: events / 8 + 1, skus: 1_000, customers: 1_000, concurrency: 64 };
    append_all(&*store, Sample::new(config).take(events).collect()).await;
    let head = store.head_position().await.unwrap().0;
    assert!(head >= events as u64, "{head} events");
    let done = Arc::new(AtomicBool::new(false));
    let watcher = {
        let (sink, done) = (sink.clone(), done.clone());
        tokio::spawn(async move {
            let mut readings: Vec<RebuildReading> = Vec::new();
            while !done.load(Ordering::Relaxed) {
                let meta = sink.meta("orders").await.unwrap();
                // What `projections` shows: the reading of the generation being rebuilt.
                if let Some(reading) = meta.rebuild.filter(|reading| meta.rebuilding == Some(reading.generation)) {
                    if readings.last() != Some(&reading) {
                        readings.push(reading);
                    }
                }
                tokio::time::sleep(std::time::Duration::from_millis(2)).await;
            }
            readings
        })
    };
    // A reading after every batch, a hundred batches: the watcher sees many whatever the backend's speed.
    let config = RebuildConfig { batch_size: (events / 100).max(1), report_every: std::time::Duration::ZERO, ..RebuildConfig::default() };
    let report = rebuild(Arc::new(OrdersProjection), sink.clone(), store.clone(), config, &mut |_| {}).await.unwrap();
    done.store(true, Ordering::Relaxed);
    let readings = watcher.await.unwrap();

    eprintln!(
        "rebuild of {head} events: {:.2} s, {} readings, ETA {:?} s",
        report.seconds,
        readings.len(),
        readings.iter().filter_map(RebuildReading::eta_seconds).map(|eta| (eta * 100.0).round() / 100.0).collect::<Vec<_>>()
    );
    assert!(readings.len() >= 5, "{} readings of a rebuild of {head} events in {:.1} s", readings.len(), report.seconds);
    for reading in &readings {
        assert_eq!(reading.generation, report.generation, "{reading:?}");
        assert_eq!(reading.events_total, head, "the total is the head it began at: {reading:?}");
        assert!(reading.events_done <= reading.events_total, "{reading:?}");
    }
    for pair in readings.windows(2) {
        let (before, after) = (&pair[0], &pair[1]);
        assert!(after.events_done >= before.events_done && after.at >= before.at, "went back: {before:?} then {after:?}");
    }
    // Converging: once 90 % is read, no ETA is as long as the longest of the first half.
    let longest = |readings: Vec<&RebuildReading>| {
        readings.into_iter().filter_map(RebuildReading::eta_seconds).fold(None, |a: Option<f64>, b| Some(a.map_or(b, |a| a.max(b))))
    };
    let early = longest(readings.iter().filter(|r| r.events_done * 2 < r.events_total).collect());
    let late = longest(readings.iter().filter(|r| r.events_done * 10 >= r.events_total * 9).collect());
    match (early, late) {
        (Some(early), Some(late)) => assert!(late < early, "the ETA did not shrink: {early} s early, {late} s after 90 %: {readings:?}"),
        _ => panic!("the watcher missed the first half or the last tenth: {readings:?}"),
    }
    let last = readings.last().unwrap();
    assert!(last.eta_seconds().unwrap() < report.seconds, "{last:?} after {} s", report.seconds);
    let meta = sink.meta("orders").await.unwrap();
    assert_eq!((meta.rebuild, meta.rebuilding), (None, None), "nothing left once it switched");
    cleanup.run().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rebuild_reports_monotonic_progress_and_an_eta_that_converges() {
    rebuild_reports_progress(Backend::Memory, 200_000).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rebuild_reports_its_progress_on_redis() {
    rebuild_reports_progress(Backend::Redis, 20_000).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rebuild_reports_its_progress_on_mongo() {
    rebuild_reports_progress(Backend::Mongo, 5_000).await;
}
