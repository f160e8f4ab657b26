//! The runner fed by a real bus: end to end from the log, replicas sharing a
//! group, poison events, the stop policy, pause and resume.

use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use strata_projections::orders::{self, OrdersProjection, StockProjection};
use strata_projections::sink::{MetaField, Target};
use strata_projections::{ApplyError, Document, PoisonPolicy, Projection, ProjectionRunner, ReadModelSink, RunnerConfig, Write};
use strata_store::bus::{MemoryBus, Publisher, Subscriber};
use strata_store::relay::{Relay, RelayConfig};
use strata_store::{EventMetadata, EventReader, ExpectedVersion, MemoryEventStore, NewEvent, RecordedEvent, StreamAppend, StreamId};
use tokio::sync::watch;
use uuid::Uuid;

use crate::support::{append_all, fresh_sink, live_dump, memory_store, rebuilt, test_jetstream, wait_until, Backend};
use strata_projections::orders::sample::{sample, SampleConfig};

pub(crate) use self::Pipeline as LivePipeline;

/// The relay and `replicas` runners per projection, until dropped.
pub(crate) struct Pipeline {
    shutdown: watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Pipeline {
    pub(crate) fn start(
        store: Arc<MemoryEventStore>,
        publisher: Arc<dyn Publisher>,
        subscriber: Arc<dyn Subscriber>,
        sink: &Arc<dyn ReadModelSink>,
        projections: Vec<Arc<dyn Projection>>,
        replicas: usize,
    ) -> Self {
        let (shutdown, stop) = watch::channel(false);
        let mut tasks = Vec::new();
        let relay = Relay::new(store.clone(), store.clone(), publisher, RelayConfig::default());
        let mut relay_stop = stop.clone();
        tasks.push(tokio::spawn(async move {
            relay
                .run(async move {
                    let _ = relay_stop.changed().await;
                })
                .await
                .expect("relay runs");
        }));
        for projection in projections {
            for _ in 0..replicas {
                let runner = ProjectionRunner::new(projection.clone(), sink.clone(), store.clone(), RunnerConfig::default());
                let (subscriber, stop) = (subscriber.clone(), stop.clone());
                tasks.push(tokio::spawn(async move {
                    runner.run(subscriber, stop).await.expect("runner runs");
                }));
            }
        }
        Self { shutdown, tasks }
    }

    pub(crate) async fn stop(self) {
        let _ = self.shutdown.send(true);
        for task in self.tasks {
            task.await.expect("task ends cleanly");
        }
    }
}

pub(crate) async fn live_equals_rebuild(store: &Arc<MemoryEventStore>, sink: &Arc<dyn ReadModelSink>, projection: Arc<dyn Projection>) {
    let reference = rebuilt(projection.clone(), store.clone()).await;
    assert!(!reference.documents.is_empty());
    let name = projection.name().to_owned();
    wait_until(Duration::from_secs(30), || {
        let (sink, reference, name) = (sink.clone(), reference.clone(), name.clone());
        async move {
            match sink.live_generation(&name).await.unwrap() {
                Some(_) => {
                    let live = live_dump(&*sink, &name).await;
                    if live == reference {
                        Ok(())
                    } else {
                        Err(format!("{} of {} documents so far", live.documents.len(), reference.documents.len()))
                    }
                }
                None => Err("no live generation yet".to_owned()),
            }
        }
    })
    .await;
}

async fn end_to_end(backend: Backend, replicas: usize, writers: usize) {
    let Some((sink, cleanup)) = fresh_sink(backend).await else { return };
    let store = memory_store();
    let bus = Arc::new(MemoryBus::new());
    let pipeline = Pipeline::start(
        store.clone(),
        bus.clone(),
        bus.clone(),
        &sink,
        vec![Arc::new(OrdersProjection), Arc::new(StockProjection)],
        replicas,
    );
    // Several writers at once, like several API processes.
    let mut writing = Vec::new();
    for seed in 0..writers as u64 {
        let store = store.clone();
        writing.push(tokio::spawn(async move {
            let config = SampleConfig { seed: 100 + seed, orders: 60, ..SampleConfig::default() };
            append_all(&*store, sample(config)).await;
        }));
    }
    for task in writing {
        task.await.unwrap();
    }
    live_equals_rebuild(&store, &sink, Arc::new(OrdersProjection)).await;
    live_equals_rebuild(&store, &sink, Arc::new(StockProjection)).await;
    pipeline.stop().await;
    cleanup.run().await;
}

#[tokio::test]
async fn events_flow_from_the_log_through_the_bus_into_memory_read_models() {
    end_to_end(Backend::Memory, 1, 1).await;
}

#[tokio::test]
async fn events_flow_from_the_log_through_the_bus_into_redis_read_models() {
    end_to_end(Backend::Redis, 1, 1).await;
}

#[tokio::test]
async fn events_flow_from_the_log_through_the_bus_into_mongo_read_models() {
    end_to_end(Backend::Mongo, 1, 1).await;
}

#[tokio::test]
async fn three_replicas_sharing_a_group_build_the_same_model_as_a_rebuild() {
    end_to_end(Backend::Redis, 3, 4).await;
}

#[tokio::test]
async fn three_replicas_sharing_a_group_build_the_same_model_as_a_rebuild_in_mongo() {
    end_to_end(Backend::Mongo, 3, 4).await;
}

#[tokio::test]
async fn replicas_on_jetstream_and_redis_build_the_same_model_as_a_rebuild() {
    let Some((bus, bus_cleanup)) = test_jetstream().await else { return };
    replicas_equal_a_rebuild(Backend::Redis, Arc::new(bus), 7).await;
    bus_cleanup.run().await;
}

/// Two replicas sharing a Kafka consumer group (partitions split between
/// them; librdkafka's mock cluster or `STRATA_TEST_KAFKA`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_on_kafka_and_redis_build_the_same_model_as_a_rebuild() {
    let Some((bus, bus_cleanup)) = strata_store::testkit::kafka::bus().await else { return };
    replicas_equal_a_rebuild(Backend::Redis, Arc::new(bus), 17).await;
    bus_cleanup.run().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_on_kafka_and_mongo_build_the_same_model_as_a_rebuild() {
    let Some((bus, bus_cleanup)) = strata_store::testkit::kafka::bus().await else { return };
    replicas_equal_a_rebuild(Backend::Mongo, Arc::new(bus), 27).await;
    bus_cleanup.run().await;
}

/// Two projector replicas on `bus` and `backend` follow three sample
/// traffics (seeds from `seed`) and end equal to a rebuild from the log.
async fn replicas_equal_a_rebuild<B: Publisher + Subscriber + 'static>(backend: Backend, bus: Arc<B>, seed: u64) {
    let Some((sink, cleanup)) = fresh_sink(backend).await else { return };
    let store = memory_store();
    let pipeline = Pipeline::start(store.clone(), bus.clone(), bus, &sink, orders::projections(), 2);
    for offset in 0..3 {
        append_all(&*store, sample(SampleConfig { seed: seed + offset, orders: 50, ..SampleConfig::default() })).await;
    }
    live_equals_rebuild(&store, &sink, Arc::new(OrdersProjection)).await;
    live_equals_rebuild(&store, &sink, Arc::new(StockProjection)).await;
    pipeline.stop().await;
    cleanup.run().await;
}

fn confirmed_without_placing(order_id: Uuid) -> StreamAppend {
    StreamAppend {
        stream_id: StreamId::new("order", order_id).unwrap(),
        expected: ExpectedVersion::Any,
        events: vec![NewEvent {
            event_id: Uuid::new_v4(),
            event_type: "OrderConfirmed".into(),
            schema_version: 1,
            payload: json!({"orderId": order_id, "confirmedAt": "2027-01-15T08:00:00Z"}),
            metadata: EventMetadata::default(),
        }],
    }
}

fn shipped(order_id: Uuid) -> StreamAppend {
    StreamAppend {
        stream_id: StreamId::new("order", order_id).unwrap(),
        expected: ExpectedVersion::Any,
        events: vec![NewEvent {
            event_id: Uuid::new_v4(),
            event_type: "OrderShipped".into(),
            schema_version: 1,
            payload: json!({"orderId": order_id, "shippedAt": "2027-01-15T09:00:00Z"}),
            metadata: EventMetadata::default(),
        }],
    }
}

async fn poison(backend: Backend) {
    let Some((sink, cleanup)) = fresh_sink(backend).await else { return };
    let store = memory_store();
    let bus = Arc::new(MemoryBus::new());
    let pipeline = Pipeline::start(store.clone(), bus.clone(), bus.clone(), &sink, vec![Arc::new(OrdersProjection)], 1);
    // An order stream that starts with a confirmation: the projection cannot
    // apply it (no OrderPlaced). Its later event is parked behind it; the
    // sample orders around it are unaffected.
    let broken = Uuid::new_v4();
    let mut traffic = sample(SampleConfig { seed: 11, orders: 20, ..SampleConfig::default() });
    let middle = traffic.len() / 2;
    traffic.insert(middle, confirmed_without_placing(broken));
    traffic.push(shipped(broken));
    append_all(&*store, traffic).await;

    let target = |generation| Target { projection: "orders".into(), generation };
    let letters = wait_until(Duration::from_secs(30), || {
        let sink = sink.clone();
        async move {
            let live = sink.live_generation("orders").await.unwrap().ok_or("no live generation")?;
            let letters = sink.dead_letters(&target(live), 10).await.unwrap();
            if letters.len() == 2 {
                Ok(letters)
            } else {
                Err("waiting for two dead letters")
            }
        }
    })
    .await;
    assert_eq!(letters[0].event_type, "OrderConfirmed");
    assert_eq!(letters[0].attempts, 3, "retried before parking");
    assert!(letters[0].reason.contains("without OrderPlaced"), "{}", letters[0].reason);
    assert_eq!(letters[1].event_type, "OrderShipped");
    assert_eq!(letters[1].attempts, 0, "parked behind the first");
    assert!(letters[1].reason.contains("parked since version 1"), "{}", letters[1].reason);
    assert_eq!(orders::order(&*sink, broken).await.unwrap(), None);

    // Everything else is there: the live model equals a rebuild, which parks
    // the same two events.
    live_equals_rebuild(&store, &sink, Arc::new(OrdersProjection)).await;
    let live = sink.live_generation("orders").await.unwrap().unwrap();
    assert_eq!(sink.stats(&target(live)).await.unwrap().dead_letters, 2);
    pipeline.stop().await;
    cleanup.run().await;
}

#[tokio::test]
async fn a_poison_event_is_parked_with_the_rest_of_its_stream_in_memory() {
    poison(Backend::Memory).await;
}

#[tokio::test]
async fn a_poison_event_is_parked_with_the_rest_of_its_stream_in_redis() {
    poison(Backend::Redis).await;
}

#[tokio::test]
async fn a_poison_event_is_parked_with_the_rest_of_its_stream_in_mongo() {
    poison(Backend::Mongo).await;
}

/// Every event of an order stream, kept in the stream's document under its
/// version: a document that only grows.
struct Journal;

impl Projection for Journal {
    fn name(&self) -> &str {
        "journal"
    }
    fn version(&self) -> u32 {
        1
    }
    fn categories(&self) -> &[&'static str] {
        OrdersProjection.categories()
    }
    fn event_types(&self) -> &[&'static str] {
        OrdersProjection.event_types()
    }
    fn document_key(&self, event: &RecordedEvent) -> Option<String> {
        Some(event.stream_id.as_str().to_owned())
    }
    fn apply(&self, event: &RecordedEvent, _: Option<&Document>) -> Result<Vec<Write>, ApplyError> {
        let key = event.stream_id.as_str().to_owned();
        Ok(vec![Write::SetField { key, field: format!("v{}", event.stream_version), value: event.payload.clone() }])
    }
}

#[tokio::test]
async fn an_event_that_would_grow_a_mongo_document_past_its_limit_is_parked_not_redelivered() {
    // MongoDB refuses a document over 16 MiB on every retry; the bound is
    // lowered here so that a few events reach it.
    const LIMIT: usize = 1_000;
    let Some((mongo, cleanup)) = crate::support::fresh_mongo_with(|sink| sink.with_document_limit(LIMIT)).await else { return };
    let sink: Arc<dyn ReadModelSink> = mongo;
    let store = memory_store();
    let bus = Arc::new(MemoryBus::new());
    let pipeline = Pipeline::start(store.clone(), bus.clone(), bus.clone(), &sink, vec![Arc::new(Journal)], 1);
    let (big, small) = (Uuid::new_v4(), [Uuid::new_v4(), Uuid::new_v4()]);
    let mut traffic = Vec::new();
    for round in 0..30 {
        traffic.push(shipped(big));
        if round < 2 {
            traffic.extend(small.iter().map(|id| shipped(*id)));
        }
    }
    append_all(&*store, traffic).await;

    // Where the document passes the bound, computed from the sink's own
    // measure of the document the stream's first versions make.
    let events = crate::support::read_log(&*store).await;
    let key = format!("order-{big}");
    let mut document = Document::new();
    let mut first_over = None;
    for event in events.iter().filter(|e| e.stream_id.as_str() == key) {
        document.insert(format!("v{}", event.stream_version), event.payload.clone());
        if sink.oversized(&key, &document).is_some() {
            first_over = Some(event.stream_version);
            break;
        }
    }
    let first_over = first_over.expect("30 events pass 1,000 bytes");
    assert!(first_over > 2, "the bound is passed after some events fit: {first_over}");

    let target = |generation| Target { projection: "journal".into(), generation };
    let head = events.last().unwrap().position;
    let letters = wait_until(Duration::from_secs(30), || {
        let sink = sink.clone();
        async move {
            let live = sink.live_generation("journal").await.unwrap().ok_or("no live generation")?;
            let stats = sink.stats(&target(live)).await.unwrap();
            if stats.position != head {
                return Err(format!("at {:?} of {head:?}", stats.position));
            }
            Ok(sink.dead_letters(&target(live), 100).await.unwrap())
        }
    })
    .await;
    // The event that would pass the bound and every later one of its
    // stream are parked; the first says why.
    assert_eq!(letters.len() as u64, 30 - first_over + 1, "{letters:?}");
    assert!(letters.iter().all(|l| l.stream_id == key));
    assert_eq!(letters[0].stream_version, first_over);
    assert!(letters[0].reason.contains("over the 1000 the sink writes"), "{}", letters[0].reason);
    assert!(letters[1].reason.contains(&format!("parked since version {first_over}")), "{}", letters[1].reason);
    // The stream's document holds what fitted; the other streams are whole.
    let stored = sink.document("journal", &key).await.unwrap().expect("the big stream's document");
    assert_eq!(stored.len() as u64, first_over - 1);
    for id in small {
        let stored = sink.document("journal", &format!("order-{id}")).await.unwrap().expect("a small stream's document");
        assert_eq!(stored.len(), 2);
    }
    // A rebuild parks the same events.
    let before = crate::support::live_dump(&*sink, "journal").await;
    let report = strata_projections::rebuild(Arc::new(Journal), sink.clone(), store.clone(), Default::default(), &mut |_| {})
        .await
        .expect("rebuild");
    assert_eq!(report.dead_letters, 30 - first_over + 1);
    assert_eq!(crate::support::live_dump(&*sink, "journal").await.documents, before.documents);
    pipeline.stop().await;
    cleanup.run().await;
}

/// Orders, but stopping on a poison event.
struct Strict(OrdersProjection);

impl Projection for Strict {
    fn name(&self) -> &str {
        "strict_orders"
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
    fn poison_policy(&self) -> PoisonPolicy {
        PoisonPolicy::Stop
    }
    fn document_key(&self, event: &RecordedEvent) -> Option<String> {
        self.0.document_key(event)
    }
    fn apply(&self, event: &RecordedEvent, document: Option<&Document>) -> Result<Vec<Write>, ApplyError> {
        self.0.apply(event, document)
    }
}

#[tokio::test]
async fn under_the_stop_policy_a_poison_event_stops_the_projection_before_it() {
    let (sink, _) = fresh_sink(Backend::Memory).await.unwrap();
    let store = memory_store();
    let good = sample(SampleConfig { seed: 5, orders: 5, ..SampleConfig::default() });
    append_all(&*store, good).await;
    let broken = Uuid::new_v4();
    append_all(&*store, vec![confirmed_without_placing(broken)]).await;
    append_all(&*store, sample(SampleConfig { seed: 6, orders: 5, ..SampleConfig::default() })).await;
    let events = crate::support::read_log(&*store).await;
    let poison_at = events.iter().position(|e| e.stream_id.id() == broken.to_string()).unwrap();

    let runner = ProjectionRunner::new(Arc::new(Strict(OrdersProjection)), sink.clone(), store.clone(), RunnerConfig::default());
    // A live generation that has seen nothing yet (else the runner would
    // build it from the log first, and stop there).
    sink.init_live("strict_orders", 1).await.unwrap();
    let (covered, _, stopped) = runner.handle(&events).await.unwrap();
    assert_eq!(covered, poison_at, "everything before the poison event is committed, nothing after");
    let stopped = stopped.expect("the projection stops");
    assert!(stopped.to_string().contains("without OrderPlaced"), "{stopped}");
    let generation = sink.live_generation("strict_orders").await.unwrap().unwrap();
    let stats = sink.stats(&Target { projection: "strict_orders".into(), generation }).await.unwrap();
    assert_eq!(stats.position, events[poison_at - 1].position);
    assert_eq!(stats.dead_letters, 0);

    // The worker loop reports it and stops.
    let bus = Arc::new(MemoryBus::new());
    bus.publish(&events.iter().map(strata_store::StoredEvent::from).collect::<Vec<_>>()).await.unwrap();
    let (_shutdown, stop) = watch::channel(false);
    let error = runner.run(bus, stop).await.expect_err("the runner stops");
    assert!(error.to_string().contains("stopped at event"), "{error}");
    let meta = sink.meta("strict_orders").await.unwrap();
    assert_eq!(meta.state.as_deref(), Some("stopped"));
    assert!(meta.last_error.unwrap().contains("without OrderPlaced"));
}

#[tokio::test]
async fn a_paused_projection_holds_its_events_until_resumed() {
    let (sink, _) = fresh_sink(Backend::Memory).await.unwrap();
    let store = memory_store();
    let bus = Arc::new(MemoryBus::new());
    sink.set_meta("orders", MetaField::Paused, Some("1".into())).await.unwrap();
    let pipeline = Pipeline::start(store.clone(), bus.clone(), bus.clone(), &sink, vec![Arc::new(OrdersProjection)], 1);
    append_all(&*store, sample(SampleConfig { seed: 9, orders: 10, ..SampleConfig::default() })).await;
    let head = store.head_position().await.unwrap();
    // The runner has the events in hand (it announced the pause with them).
    wait_until(Duration::from_secs(10), || {
        let sink = sink.clone();
        async move {
            let meta = sink.meta("orders").await.unwrap();
            if meta.state.as_deref() == Some("paused") {
                Ok(())
            } else {
                Err(meta)
            }
        }
    })
    .await;
    let generation = sink.live_generation("orders").await.unwrap().unwrap_or(1);
    let target = Target { projection: "orders".into(), generation };
    assert_eq!(sink.stats(&target).await.unwrap().events, 0, "nothing applied while paused");

    sink.set_meta("orders", MetaField::Paused, None).await.unwrap();
    wait_until(Duration::from_secs(10), || {
        let (sink, target) = (sink.clone(), target.clone());
        async move {
            let stats = sink.stats(&target).await.unwrap();
            if stats.position == head {
                Ok(())
            } else {
                Err(stats)
            }
        }
    })
    .await;
    assert_eq!(sink.meta("orders").await.unwrap().state.as_deref(), Some("running"));
    pipeline.stop().await;
}

/// Acks travel in the background while the runner plans its next chunk; a
/// stopped runner has sent them all: its group resumes after everything it
/// applied, with the first event appended after the stop.
#[tokio::test]
async fn a_stopped_runner_has_acked_everything_it_applied() {
    let Some((sink, cleanup)) = fresh_sink(Backend::Memory).await else { return };
    let store = memory_store();
    let bus = Arc::new(MemoryBus::new());
    let pipeline = Pipeline::start(store.clone(), bus.clone(), bus.clone(), &sink, vec![Arc::new(OrdersProjection)], 1);
    append_all(&*store, sample(SampleConfig { seed: 5, orders: 40, ..SampleConfig::default() })).await;
    live_equals_rebuild(&store, &sink, Arc::new(OrdersProjection)).await;
    pipeline.stop().await;

    let stopped_at = store.head_position().await.unwrap();
    append_all(&*store, sample(SampleConfig { seed: 6, orders: 1, ..SampleConfig::default() })).await;
    let later = store.read_all_stored(strata_store::ReadAll::after(stopped_at, 1_000)).await.unwrap();
    assert!(!later.is_empty());
    bus.publish(&later).await.unwrap();
    let group = strata_store::bus::Subscription::group(ProjectionRunner::group("orders"));
    let mut deliveries = bus.subscribe(group).await.unwrap();
    let first = tokio::time::timeout(Duration::from_secs(10), futures_util::StreamExt::next(&mut deliveries))
        .await
        .expect("a delivery within 10 s")
        .expect("the subscription is open")
        .unwrap();
    assert!(
        first.event.position > stopped_at,
        "an event the stopped runner applied came back (position {} <= {}): its ack was never sent",
        first.event.position,
        stopped_at
    );
    cleanup.run().await;
}
