//! Read models that tell the truth: a view fed by several streams only ever
//! shows what some prefix of the log produces, whatever the replicas and the
//! delivery order; a read model that lost its data is noticed and rebuilt;
//! long gaps are filled in bounded batches; only the rebuild that reserved a
//! generation may switch to it.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_util::stream::BoxStream;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use strata_projections::orders::{self, OrderView, OrdersProjection, OrdersQuery, SagaStatus};
use strata_projections::sink::{Batch, Committed, MetaField, StreamGuard, Target};
use strata_projections::{Projection, ProjectionRunner, ReadModelSink, RunnerConfig, FILL_BUDGET};
use strata_schemas::events::{InventoryEvent, StockRestocked};
use strata_schemas::values::{Quantity, Sku};
use strata_schemas::DomainEvent;
use strata_store::bus::MemoryBus;
use strata_store::{
    EventMetadata, EventStore, ExpectedVersion, Form, NewEvent, Position, ReadAll, ReadError, ReadStream, RecordedEvent, StreamAppend,
    StreamHead, StreamId, Subscribe,
};
use uuid::Uuid;

use crate::runner::{live_equals_rebuild, Pipeline};
use crate::support::*;

macro_rules! on_every_sink {
    ($($case:ident),* $(,)?) => {
        mod memory {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                super::$case(crate::support::Backend::Memory).await;
            })*
        }
        mod redis {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                super::$case(crate::support::Backend::Redis).await;
            })*
        }
        mod mongo {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                super::$case(crate::support::Backend::Mongo).await;
            })*
        }
    };
}

on_every_sink!(
    a_view_fed_by_several_streams_only_ever_shows_what_a_prefix_of_the_log_produces,
    a_read_model_that_lost_its_data_is_rebuilt_from_the_log_without_waiting_for_an_event,
    a_lost_generation_is_reported_and_refuses_commits,
    only_the_rebuild_that_reserved_a_generation_may_switch_to_it,
);

/// Every view each order has after each prefix of the log (its absence
/// included): folds the log one event at a time in memory.
async fn views_of_every_prefix(
    log: Arc<strata_store::MemoryEventStore>,
    events: &[RecordedEvent],
) -> HashMap<Uuid, Vec<Option<OrderView>>> {
    let (sink, _) = fresh_sink(Backend::Memory).await.unwrap();
    let runner = runner(Arc::new(OrdersProjection), &sink, log).await;
    let mut views: HashMap<Uuid, Vec<Option<OrderView>>> = HashMap::new();
    for event in events {
        let Ok(order_id) = event.stream_id.id().parse::<Uuid>() else { continue };
        if !matches!(event.stream_id.category(), "order" | "fulfilment") {
            runner.handle(std::slice::from_ref(event)).await.unwrap();
            continue;
        }
        let seen = views.entry(order_id).or_insert_with(|| vec![None]);
        runner.handle(std::slice::from_ref(event)).await.unwrap();
        let view = orders::order(&*sink, order_id).await.unwrap();
        if seen.last() != Some(&view) {
            seen.push(view);
        }
    }
    views
}

async fn a_view_fed_by_several_streams_only_ever_shows_what_a_prefix_of_the_log_produces(backend: Backend) {
    let seed: u64 = rand::rng().random();
    println!("seed {seed}");
    let mut rng = StdRng::seed_from_u64(seed);
    let (log, events) = log_with_orders(seed, 40).await;
    let valid = Arc::new(views_of_every_prefix(log.clone(), &events).await);
    assert!(
        valid.values().any(|views| views.iter().flatten().any(|v| v.saga_status == Some(SagaStatus::Aborted))),
        "the log has undone orders"
    );
    let reference = {
        let (sink, _) = fresh_sink(Backend::Memory).await.unwrap();
        feed(&runner(Arc::new(OrdersProjection), &sink, log.clone()).await, &events, 64).await;
        live_dump(&*sink, "orders").await
    };

    let Some((sink, cleanup)) = fresh_sink(backend).await else { return };
    sink.init_live("orders", 1).await.unwrap();
    // Every event once, a third again (redeliveries), in any order, split
    // between three replicas that commit chunks of any size, interleaved.
    let mut deliveries = events.clone();
    for _ in 0..events.len() / 3 {
        deliveries.push(events[rng.random_range(0..events.len())].clone());
    }
    deliveries.shuffle(&mut rng);
    let mut shares: Vec<Vec<RecordedEvent>> = vec![Vec::new(); 3];
    for delivery in deliveries {
        shares[rng.random_range(0..3)].push(delivery);
    }
    let done = Arc::new(AtomicBool::new(false));
    let snapshots = Arc::new(AtomicUsize::new(0));
    let reader = {
        let (sink, valid, done, snapshots) = (sink.clone(), valid.clone(), done.clone(), snapshots.clone());
        tokio::spawn(async move {
            let ids: Vec<Uuid> = valid.keys().copied().collect();
            while !done.load(Ordering::SeqCst) {
                for id in &ids {
                    let view = orders::order(&*sink, *id).await.unwrap();
                    assert!(
                        valid[id].contains(&view),
                        "order {id} showed a view no prefix of the log produces (seed {seed}):\n{view:#?}\nvalid:\n{:#?}",
                        valid[id]
                    );
                    snapshots.fetch_add(1, Ordering::SeqCst);
                }
                tokio::task::yield_now().await;
            }
        })
    };
    let mut replicas = Vec::new();
    for (n, share) in shares.into_iter().enumerate() {
        let replica = ProjectionRunner::new(Arc::new(OrdersProjection), sink.clone(), log.clone(), RunnerConfig::default());
        let mut rng = StdRng::seed_from_u64(seed ^ n as u64);
        replicas.push(tokio::spawn(async move {
            let mut rest = &share[..];
            while !rest.is_empty() {
                let chunk = rng.random_range(1..=12).min(rest.len());
                let (covered, _, stopped) = replica.handle(&rest[..chunk]).await.unwrap();
                assert!(stopped.is_none() && covered == chunk);
                rest = &rest[chunk..];
                for _ in 0..rng.random_range(0..4) {
                    tokio::task::yield_now().await;
                }
            }
        }));
    }
    for replica in replicas {
        replica.await.unwrap();
    }
    done.store(true, Ordering::SeqCst);
    reader.await.unwrap();
    assert!(snapshots.load(Ordering::SeqCst) > valid.len(), "the reader looked while the replicas worked");
    assert_eq!(live_dump(&*sink, "orders").await, reference, "the replicas end with the model of the log (seed {seed})");
    cleanup.run().await;
}

async fn a_read_model_that_lost_its_data_is_rebuilt_from_the_log_without_waiting_for_an_event(backend: Backend) {
    let Some((sink, wipe, cleanup)) = fresh_wipeable_sink(backend).await else { return };
    let store = memory_store();
    let bus = Arc::new(MemoryBus::new());
    let projections: Vec<Arc<dyn Projection>> = vec![Arc::new(OrdersProjection)];
    append_all(
        &*store,
        strata_projections::orders::sample::sample(strata_projections::orders::sample::SampleConfig {
            seed: 3,
            orders: 25,
            ..Default::default()
        }),
    )
    .await;
    // One runner: a second one still starting when the data goes could
    // rebuild it as its first build, and a loss it never saw is not counted.
    let pipeline = Pipeline::start(store.clone(), bus.clone(), bus.clone(), &sink, projections, 1);
    let count = |sink: Arc<dyn ReadModelSink>| async move {
        let page = orders::orders(&*sink, &OrdersQuery { first: 100, ..Default::default() }).await.map_err(|e| e.to_string())?;
        if page.orders.len() == 25 {
            Ok(())
        } else {
            Err(format!("{} orders", page.orders.len()))
        }
    };
    wait_until(Duration::from_secs(30), || count(sink.clone())).await;

    wipe().await;
    assert_eq!(sink.live_generation("orders").await.unwrap(), None, "the data is gone");
    // No event is appended: the runners notice the loss on their own.
    wait_until(Duration::from_secs(30), || {
        let sink = sink.clone();
        async move {
            count(sink.clone()).await?;
            let meta = sink.meta("orders").await.map_err(|e| e.to_string())?;
            if meta.losses >= 1 {
                Ok(())
            } else {
                Err(format!("rebuilt, not yet counted: {meta:?}"))
            }
        }
    })
    .await;
    let meta = sink.meta("orders").await.unwrap();
    assert!(meta.losses >= 1, "{meta:?}");
    assert!(meta.last_error.as_deref().unwrap_or_default().contains("lost its data"), "{meta:?}");
    live_equals_rebuild(&store, &sink, Arc::new(OrdersProjection)).await;
    pipeline.stop().await;
    cleanup.run().await;
}

async fn a_lost_generation_is_reported_and_refuses_commits(backend: Backend) {
    let Some((sink, wipe, cleanup)) = fresh_wipeable_sink(backend).await else { return };
    let target = Target { projection: "conformance".into(), generation: 1 };
    let batch = |expected, reached| Batch {
        guards: vec![StreamGuard { stream_id: "s-1".into(), expected: Some(expected), reached }],
        writes: vec![strata_projections::Write::SetField { key: "a".into(), field: "n".into(), value: serde_json::json!(1) }],
        dead_letters: vec![],
        position: strata_store::Position(reached),
        events: 1,
    };
    assert_eq!(sink.init_live("conformance", 1).await.unwrap(), 1);
    assert_eq!(sink.commit(&target, &batch(0, 1)).await.unwrap(), Committed::Done);
    wipe().await;
    assert_eq!(sink.live_generation("conformance").await.unwrap(), None);
    assert_eq!(sink.commit(&target, &batch(1, 2)).await.unwrap(), Committed::Lost, "a commit into a lost model is refused");
    assert_eq!(sink.commit(&target, &batch(0, 1)).await.unwrap(), Committed::Lost, "whatever its guards");
    assert_eq!(sink.document("conformance", "a").await.unwrap(), None);
    cleanup.run().await;
}

async fn only_the_rebuild_that_reserved_a_generation_may_switch_to_it(backend: Backend) {
    let Some((sink, cleanup)) = fresh_sink(backend).await else { return };
    assert_eq!(sink.init_live("conformance", 1).await.unwrap(), 1);
    // Two rebuilds reserve a generation each; the second supersedes the first.
    let first = sink.new_generation("conformance").await.unwrap();
    sink.set_meta("conformance", MetaField::Rebuilding, Some(first.to_string())).await.unwrap();
    let second = sink.new_generation("conformance").await.unwrap();
    sink.set_meta("conformance", MetaField::Rebuilding, Some(second.to_string())).await.unwrap();
    assert!(!sink.switch_live("conformance", first).await.unwrap(), "the superseded rebuild cannot switch");
    assert_eq!(sink.live_generation("conformance").await.unwrap(), Some(1));
    assert!(sink.switch_live("conformance", second).await.unwrap());
    assert_eq!(sink.live_generation("conformance").await.unwrap(), Some(second));
    assert_eq!(sink.meta("conformance").await.unwrap().rebuilding, None, "the switch clears the mark");
    assert!(!sink.switch_live("conformance", second).await.unwrap(), "a switch happens once");
    cleanup.run().await;
}

#[tokio::test]
async fn a_gap_longer_than_the_fill_budget_is_filled_in_bounded_batches() {
    let store = memory_store();
    let sku = Sku::parse("SKU-LONG").unwrap();
    let n = FILL_BUDGET * 2 + 10;
    for _ in 0..n {
        let event = InventoryEvent::from(StockRestocked {
            sku: sku.clone(),
            quantity: Quantity::new(1).unwrap(),
            restocked_at: chrono::Utc::now(),
        });
        let append = StreamAppend {
            stream_id: StreamId::new("inventory", &sku).unwrap(),
            expected: ExpectedVersion::Any,
            events: vec![NewEvent {
                event_id: Uuid::new_v4(),
                event_type: event.event_type().into(),
                schema_version: 1,
                payload: event.to_payload(),
                metadata: EventMetadata::default(),
            }],
        };
        store.append(vec![append]).await.unwrap();
    }
    let events = read_log(&*store).await;
    let (sink, _) = fresh_sink(Backend::Memory).await.unwrap();
    let runner = runner(Arc::new(strata_projections::orders::StockProjection), &sink, store.clone()).await;
    // Only the last event is delivered: everything before it is a gap.
    let (covered, handled, stopped) = runner.handle(&events[n - 1..]).await.unwrap();
    assert_eq!((covered, stopped.is_none()), (1, true));
    assert!(handled.attempts >= 3, "{n} events in batches of at most {FILL_BUDGET}: {handled:?}");
    assert_eq!(handled.events, n as u64);
    let stock = orders::stock(&*sink, "SKU-LONG").await.unwrap().unwrap();
    assert_eq!(stock.on_hand, n as u64);
}

#[tokio::test]
async fn a_projection_has_seen_the_events_it_does_not_follow_so_its_lag_ends_at_zero() {
    let (log, events) = log_with_orders(9, 10).await;
    let (sink, _) = fresh_sink(Backend::Memory).await.unwrap();
    let stock = runner(Arc::new(strata_projections::orders::StockProjection), &sink, log).await;
    feed(&stock, &events, 50).await;
    assert_ne!(events.last().unwrap().stream_id.category(), "inventory", "the log ends with events stock does not follow");
    let stats = sink.stats(&Target { projection: "stock".into(), generation: 1 }).await.unwrap();
    assert_eq!(stats.position, events.last().unwrap().position);
}

/// The log, counting the reads the planner makes.
struct CountingLog {
    log: Arc<strata_store::MemoryEventStore>,
    stream_reads: AtomicUsize,
    multi_stream_reads: AtomicUsize,
}

#[async_trait::async_trait]
impl strata_store::EventReader for CountingLog {
    async fn read_stream(&self, stream_id: &StreamId, request: ReadStream) -> Result<Vec<RecordedEvent>, ReadError> {
        self.stream_reads.fetch_add(1, Ordering::SeqCst);
        self.log.read_stream(stream_id, request).await
    }
    async fn read_streams(&self, after: &[(StreamId, u64)], until: Position, limit: usize) -> Result<Vec<RecordedEvent>, ReadError> {
        self.multi_stream_reads.fetch_add(1, Ordering::SeqCst);
        self.log.read_streams(after, until, limit).await
    }
    async fn read_all(&self, request: ReadAll) -> Result<Vec<RecordedEvent>, ReadError> {
        self.log.read_all(request).await
    }
    fn subscribe(&self, request: Subscribe) -> BoxStream<'static, Result<RecordedEvent, ReadError>> {
        self.log.subscribe(request)
    }
    async fn read_event(&self, event_id: Uuid, form: Form) -> Result<Option<RecordedEvent>, ReadError> {
        self.log.read_event(event_id, form).await
    }
    async fn stream_head(&self, stream_id: &StreamId) -> Result<Option<StreamHead>, ReadError> {
        self.log.stream_head(stream_id).await
    }
    async fn stream_heads(&self, after: Option<&StreamId>, limit: usize) -> Result<Vec<StreamHead>, ReadError> {
        self.log.stream_heads(after, limit).await
    }
    async fn head_position(&self) -> Result<Position, ReadError> {
        self.log.head_position().await
    }
    async fn categories(&self) -> Result<Vec<String>, ReadError> {
        self.log.categories().await
    }
    async fn log_identity(&self) -> Result<strata_store::LogIdentity, ReadError> {
        self.log.log_identity().await
    }
    async fn ping(&self) -> Result<(), ReadError> {
        self.log.ping().await
    }
    fn backend_name(&self) -> &'static str {
        "counting"
    }
}

#[tokio::test]
async fn a_batch_reads_its_related_streams_in_one_query_and_ends_with_the_model_of_the_log() {
    let (log, events) = log_with_orders(21, 30).await;
    let reference = {
        let (sink, _) = fresh_sink(Backend::Memory).await.unwrap();
        feed(&runner(Arc::new(OrdersProjection), &sink, log.clone()).await, &events, 1).await;
        live_dump(&*sink, "orders").await
    };
    let counting = Arc::new(CountingLog { log, stream_reads: AtomicUsize::new(0), multi_stream_reads: AtomicUsize::new(0) });
    let (sink, _) = fresh_sink(Backend::Memory).await.unwrap();
    let batched = runner(Arc::new(OrdersProjection), &sink, counting.clone()).await;
    // Each order's events and its saga's, interleaved, in one batch: every
    // event has a related stream to check before it is applied.
    let followed = events.iter().filter(|e| matches!(e.stream_id.category(), "order" | "fulfilment")).count();
    let streams: std::collections::HashSet<&str> =
        events.iter().filter(|e| matches!(e.stream_id.category(), "order" | "fulfilment")).map(|e| e.stream_id.as_str()).collect();
    assert!(followed > 2 * streams.len(), "streams of several events each: {followed} events, {} streams", streams.len());
    let (covered, handled, stopped) = batched.handle(&events).await.unwrap();
    assert_eq!((covered, stopped.is_none()), (events.len(), true));
    let (single, multi) = (counting.stream_reads.load(Ordering::SeqCst), counting.multi_stream_reads.load(Ordering::SeqCst));
    assert_eq!(single, 0, "no stream read on its own: the log has no gaps and the related streams are short");
    assert_eq!(multi as u32, handled.attempts, "one read of the related streams per planned batch ({handled:?})");
    assert_eq!(live_dump(&*sink, "orders").await, reference, "one batch ends with the model of the log");
}
