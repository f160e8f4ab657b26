//! The sink conformance suite: every case runs on the memory sink, on Redis
//! and on MongoDB, and their models are compared with memory ones.

use std::sync::Arc;

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use serde_json::json;
use strata_projections::orders::{self, OrdersProjection, OrdersQuery, StockProjection};
use strata_projections::sink::{document_key, stream_key, Batch, Change, Committed, MetaField, StreamGuard, Target};
use strata_projections::{Projection, Write};
use strata_store::Position;

use crate::support::{feed, fresh_sink, live_dump, log_with_orders, runner, Backend};

macro_rules! on_every_sink {
    ($($case:ident),* $(,)?) => {
        mod memory {
            $(#[tokio::test]
            async fn $case() {
                super::$case(crate::support::Backend::Memory).await;
            })*
        }
        mod redis {
            $(#[tokio::test]
            async fn $case() {
                super::$case(crate::support::Backend::Redis).await;
            })*
        }
        mod mongo {
            $(#[tokio::test]
            async fn $case() {
                super::$case(crate::support::Backend::Mongo).await;
            })*
        }
    };
}

on_every_sink!(
    replaying_any_prefix_twice_gives_the_same_model_as_once,
    any_delivery_order_with_duplicates_gives_the_model_of_the_log_in_order,
    a_commit_whose_guard_does_not_hold_writes_nothing,
    queries_follow_the_live_pointer_and_retired_generations_refuse_commits,
    pages_walk_an_index_in_placing_order_with_cursors,
    a_customer_id_cannot_name_another_customers_index,
    meta_fields_are_set_one_at_a_time,
    commits_to_the_live_generation_and_switches_are_announced,
);

fn projections() -> Vec<Arc<dyn Projection>> {
    vec![Arc::new(OrdersProjection), Arc::new(StockProjection)]
}

async fn replaying_any_prefix_twice_gives_the_same_model_as_once(backend: Backend) {
    let seed: u64 = rand::rng().random();
    println!("seed {seed}");
    let mut rng = StdRng::seed_from_u64(seed);
    let (log, events) = log_with_orders(seed, 40).await;
    for projection in projections() {
        // The reference: every event once, in log order, in memory.
        let (reference_sink, _) = fresh_sink(Backend::Memory).await.unwrap();
        feed(&runner(projection.clone(), &reference_sink, log.clone()).await, &events, 50).await;
        let reference = live_dump(&*reference_sink, projection.name()).await;
        assert!(!reference.documents.is_empty(), "{} built nothing", projection.name());

        let mut prefixes = vec![0, events.len()];
        prefixes.extend((0..4).map(|_| rng.random_range(1..events.len())));
        for prefix in prefixes {
            let Some((sink, cleanup)) = fresh_sink(backend).await else { return };
            let runner = runner(projection.clone(), &sink, log.clone()).await;
            let chunk = rng.random_range(1..80);
            feed(&runner, &events[..prefix], chunk).await;
            feed(&runner, &events[..prefix], chunk + 3).await;
            feed(&runner, &events[prefix..], chunk).await;
            let model = live_dump(&*sink, projection.name()).await;
            assert_eq!(model, reference, "{}: prefix {prefix} replayed twice differs (seed {seed})", projection.name());
            cleanup.run().await;
        }
    }
}

async fn any_delivery_order_with_duplicates_gives_the_model_of_the_log_in_order(backend: Backend) {
    let seed: u64 = rand::rng().random();
    println!("seed {seed}");
    let mut rng = StdRng::seed_from_u64(seed);
    let (log, events) = log_with_orders(seed, 30).await;
    for projection in projections() {
        let (reference_sink, _) = fresh_sink(Backend::Memory).await.unwrap();
        feed(&runner(projection.clone(), &reference_sink, log.clone()).await, &events, 64).await;
        let reference = live_dump(&*reference_sink, projection.name()).await;

        let Some((sink, cleanup)) = fresh_sink(backend).await else { return };
        let mut deliveries = events.clone();
        // A third again, as redeliveries, then any order at all.
        for _ in 0..events.len() / 3 {
            deliveries.push(events[rng.random_range(0..events.len())].clone());
        }
        deliveries.shuffle(&mut rng);
        feed(&runner(projection.clone(), &sink, log.clone()).await, &deliveries, rng.random_range(1..40)).await;
        let model = live_dump(&*sink, projection.name()).await;
        assert_eq!(model, reference, "{}: shuffled deliveries differ (seed {seed})", projection.name());
        cleanup.run().await;
    }
}

fn target(generation: u64) -> Target {
    Target { projection: "conformance".into(), generation }
}

fn set(key: &str, value: i64) -> Write {
    Write::SetField { key: key.into(), field: "n".into(), value: json!(value) }
}

fn guarded(stream: &str, expected: u64, reached: u64, writes: Vec<Write>) -> Batch {
    Batch {
        guards: vec![StreamGuard { stream_id: stream.into(), expected: Some(expected), reached }],
        writes,
        dead_letters: vec![],
        position: Position(reached),
        events: reached - expected,
    }
}

async fn a_commit_whose_guard_does_not_hold_writes_nothing(backend: Backend) {
    let Some((sink, cleanup)) = fresh_sink(backend).await else { return };
    assert_eq!(sink.init_live("conformance", 1).await.unwrap(), 1);
    let first = guarded("thing-1", 0, 2, vec![set("a", 1)]);
    assert_eq!(sink.commit(&target(1), &first).await.unwrap(), Committed::Done);
    let before = sink.dump(&target(1)).await.unwrap();

    // The same batch again (a redelivery) and a batch planned from a stale
    // version: neither writes anything, and the conflict names the stream.
    for stale in [first.clone(), guarded("thing-1", 1, 3, vec![set("a", 99), set("b", 7)])] {
        let outcome = sink.commit(&target(1), &stale).await.unwrap();
        assert_eq!(outcome, Committed::Conflict { stream_id: "thing-1".into(), actual: 2 });
    }
    assert_eq!(sink.dump(&target(1)).await.unwrap(), before);
    assert_eq!(sink.stats(&target(1)).await.unwrap().events, 2);
    assert_eq!(sink.document("conformance", "a").await.unwrap().unwrap()["n"], json!(1));

    // SetMax never goes back.
    let max = |v| Write::SetMax { key: "a".into(), field: "at".into(), value: v };
    sink.commit(&target(1), &guarded("thing-2", 0, 1, vec![max(10)])).await.unwrap();
    sink.commit(&target(1), &guarded("thing-2", 1, 2, vec![max(5)])).await.unwrap();
    assert_eq!(sink.document("conformance", "a").await.unwrap().unwrap()["at"], json!(10));
    cleanup.run().await;
}

async fn queries_follow_the_live_pointer_and_retired_generations_refuse_commits(backend: Backend) {
    let Some((sink, cleanup)) = fresh_sink(backend).await else { return };
    assert_eq!(sink.document("conformance", "a").await.unwrap(), None, "no generation yet");
    assert_eq!(sink.init_live("conformance", 1).await.unwrap(), 1);
    assert_eq!(sink.init_live("conformance", 7).await.unwrap(), 1, "init_live keeps an existing pointer");
    sink.commit(&target(1), &guarded("s-1", 0, 1, vec![set("a", 1)])).await.unwrap();

    let next = sink.new_generation("conformance").await.unwrap();
    assert!(next > 1);
    // Not live, not rebuilding: refused.
    assert_eq!(sink.commit(&target(next), &guarded("s-1", 0, 1, vec![set("a", 2)])).await.unwrap(), Committed::Retired);
    sink.set_meta("conformance", MetaField::Rebuilding, Some(next.to_string())).await.unwrap();
    assert_eq!(sink.commit(&target(next), &guarded("s-1", 0, 1, vec![set("a", 2)])).await.unwrap(), Committed::Done);
    assert_eq!(sink.document("conformance", "a").await.unwrap().unwrap()["n"], json!(1), "readers stay on the live one");

    sink.switch_live("conformance", next).await.unwrap();
    sink.set_meta("conformance", MetaField::Rebuilding, None).await.unwrap();
    assert_eq!(sink.document("conformance", "a").await.unwrap().unwrap()["n"], json!(2));
    assert_eq!(sink.commit(&target(1), &guarded("s-1", 1, 2, vec![set("a", 3)])).await.unwrap(), Committed::Retired);

    sink.drop_generation(&target(1)).await.unwrap();
    assert_eq!(sink.dump(&target(1)).await.unwrap(), Default::default());
    sink.drop_generation(&target(next)).await.unwrap();
    assert_eq!(sink.document("conformance", "a").await.unwrap().unwrap()["n"], json!(2), "the live one is never dropped");
    assert!(sink.new_generation("conformance").await.unwrap() > next);
    cleanup.run().await;
}

async fn pages_walk_an_index_in_placing_order_with_cursors(backend: Backend) {
    let (log, events) = log_with_orders(3, 60).await;
    let Some((sink, cleanup)) = fresh_sink(backend).await else { return };
    feed(&runner(Arc::new(OrdersProjection), &sink, log.clone()).await, &events, 100).await;

    let placed: Vec<(String, String)> = events
        .iter()
        .filter(|e| e.event_type == "OrderPlaced")
        .map(|e| (e.stream_id.id().to_owned(), e.payload["customerId"].as_str().unwrap().to_owned()))
        .collect();
    for (customer, status) in [(None, None), (Some("customer-3".to_owned()), None), (None, Some(orders::OrderStatus::Shipped))] {
        let mut seen = Vec::new();
        let mut after = None;
        loop {
            let query = OrdersQuery { customer_id: customer.clone(), status, first: 7, after };
            let page = orders::orders(&*sink, &query).await.unwrap();
            assert!(page.orders.len() <= 7);
            for order in &page.orders {
                if let Some(status) = &status {
                    assert_eq!(&order.status, status);
                }
                seen.push(order.order_id.to_string());
            }
            match page.next {
                Some(next) => after = Some(next),
                None => break,
            }
        }
        let expected: Vec<String> = placed
            .iter()
            .filter(|(_, c)| customer.as_ref().is_none_or(|customer| c == customer))
            .map(|(id, _)| id.clone())
            .filter(|id| status.is_none() || events.iter().any(|e| e.event_type == "OrderShipped" && e.stream_id.id() == id))
            .collect();
        assert!(!expected.is_empty());
        assert_eq!(seen, expected, "customer {customer:?} status {status:?}");
    }
    cleanup.run().await;
}

/// Index names were built by concatenation: a customer (a JWT subject) named
/// `c-1:status:PENDING` read c-1's pending orders.
async fn a_customer_id_cannot_name_another_customers_index(backend: Backend) {
    let customers = ["c-1", "c-1:status:PENDING", "c-1%3Astatus%3APENDING", "c-1:status"];
    let mut appends = strata_projections::orders::sample::sample(strata_projections::orders::sample::SampleConfig {
        seed: 11,
        orders: 24,
        customers: 4,
        ..Default::default()
    });
    let mut n = 0;
    for append in &mut appends {
        for event in &mut append.events {
            if event.event_type == "OrderPlaced" {
                event.payload["customerId"] = json!(customers[n % customers.len()]);
                n += 1;
            }
        }
    }
    let log = crate::support::memory_store();
    crate::support::append_all(&*log, appends).await;
    let events = crate::support::read_log(&*log).await;
    let Some((sink, cleanup)) = fresh_sink(backend).await else { return };
    feed(&runner(Arc::new(OrdersProjection), &sink, log.clone()).await, &events, 100).await;
    let placed_by = |customer: &str| -> Vec<String> {
        events
            .iter()
            .filter(|e| e.event_type == "OrderPlaced" && e.payload["customerId"] == json!(customer))
            .map(|e| e.stream_id.id().to_owned())
            .collect()
    };
    for customer in customers {
        for status in [None, Some(orders::OrderStatus::Pending), Some(orders::OrderStatus::Shipped), Some(orders::OrderStatus::Cancelled)] {
            let query = OrdersQuery { customer_id: Some(customer.to_owned()), status, first: 100, after: None };
            let page = orders::orders(&*sink, &query).await.unwrap();
            for order in &page.orders {
                assert_eq!(order.customer_id, customer, "{customer:?} {status:?} listed another customer's order");
            }
            if let Some(status) = status {
                assert!(page.orders.iter().all(|order| order.status == status), "{customer:?} {status:?}");
            } else {
                let seen: Vec<String> = page.orders.iter().map(|o| o.order_id.to_string()).collect();
                assert_eq!(seen, placed_by(customer), "every order of {customer:?}, in placing order");
            }
        }
    }
    cleanup.run().await;
}

async fn meta_fields_are_set_one_at_a_time(backend: Backend) {
    let Some((sink, cleanup)) = fresh_sink(backend).await else { return };
    sink.set_meta("conformance", MetaField::Paused, Some("1".into())).await.unwrap();
    sink.set_meta("conformance", MetaField::State, Some("running".into())).await.unwrap();
    sink.set_meta("conformance", MetaField::Rate, Some("42".into())).await.unwrap();
    let meta = sink.meta("conformance").await.unwrap();
    assert!(meta.paused);
    assert_eq!(meta.state.as_deref(), Some("running"));
    assert_eq!(meta.rate, Some(42));
    sink.set_meta("conformance", MetaField::Paused, None).await.unwrap();
    let meta = sink.meta("conformance").await.unwrap();
    assert!(!meta.paused);
    assert_eq!(meta.state.as_deref(), Some("running"), "other fields untouched");
    cleanup.run().await;
}

async fn next_change(feed: &mut strata_projections::sink::ChangeFeed) -> Change {
    tokio::time::timeout(std::time::Duration::from_secs(10), futures_util::StreamExt::next(feed))
        .await
        .expect("a change within 10 s")
        .expect("the feed is open")
}

async fn commits_to_the_live_generation_and_switches_are_announced(backend: Backend) {
    let Some((sink, cleanup)) = fresh_sink(backend).await else { return };
    assert_eq!(sink.init_live("conformance", 1).await.unwrap(), 1);
    let mut feed = sink.changes().await.unwrap().expect("every sink has a change feed");
    assert_eq!(next_change(&mut feed).await, Change::Everything, "a feed starts by telling readers to look");
    sink.commit(&target(1), &guarded("s-1", 0, 1, vec![set("a", 1), set("b", 1), set("a", 2)])).await.unwrap();
    let applied = |stream: &str, documents: &[&str]| Change::Applied {
        projection: "conformance".into(),
        keys: std::iter::once(stream_key(stream)).chain(documents.iter().map(|key| document_key(key))).collect(),
    };
    assert_eq!(next_change(&mut feed).await, applied("s-1", &["a", "b"]));
    // A refused commit and one into a generation being rebuilt are silent:
    // the next change is the following live commit.
    assert!(matches!(sink.commit(&target(1), &guarded("s-1", 0, 1, vec![set("a", 3)])).await.unwrap(), Committed::Conflict { .. }));
    let next = sink.new_generation("conformance").await.unwrap();
    sink.set_meta("conformance", MetaField::Rebuilding, Some(next.to_string())).await.unwrap();
    assert_eq!(sink.commit(&target(next), &guarded("s-9", 0, 1, vec![set("z", 1)])).await.unwrap(), Committed::Done);
    sink.commit(&target(1), &guarded("s-2", 0, 1, vec![set("c", 1)])).await.unwrap();
    assert_eq!(next_change(&mut feed).await, applied("s-2", &["c"]));
    assert!(sink.switch_live("conformance", next).await.unwrap());
    assert_eq!(next_change(&mut feed).await, Change::Everything, "a switch changes everything");
    // Another reader of the same backend hears the same.
    let mut other = sink.changes().await.unwrap().unwrap();
    assert_eq!(next_change(&mut other).await, Change::Everything);
    sink.commit(&target(next), &guarded("s-3", 0, 1, vec![])).await.unwrap();
    assert_eq!(next_change(&mut feed).await, applied("s-3", &[]));
    assert_eq!(next_change(&mut other).await, applied("s-3", &[]));
    cleanup.run().await;
}

/// Two sinks on one MongoDB database, as two processes would have (each
/// with its own client and in-process turn-taking), race to commit the same
/// stream's next version 100 times: each time exactly one commit lands, and
/// the model and the counters show exactly those.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_processes_racing_on_mongo_commit_each_version_once() {
    use strata_projections::{MongoSink, MongoSinkConfig, ReadModelSink};
    let Some((first, cleanup)) = crate::support::fresh_mongo().await else { return };
    let url = strata_store::testkit::mongo::url(first.database().name());
    let second = std::sync::Arc::new(MongoSink::connect(MongoSinkConfig::new(url)).await.unwrap());
    assert_eq!(first.init_live("conformance", 1).await.unwrap(), 1);
    let mut landed = 0;
    for version in 0..100_u64 {
        let batch = |who: i64| guarded("s-1", version, version + 1, vec![set("a", who), set(&format!("v{version}"), who)]);
        let (at, one, two) = (target(1), batch(1), batch(2));
        let (a, b) = tokio::join!(first.commit(&at, &one), second.commit(&at, &two));
        let outcomes = [a.unwrap(), b.unwrap()];
        let done = outcomes.iter().filter(|o| **o == Committed::Done).count();
        assert_eq!(done, 1, "version {version}: {outcomes:?}");
        assert!(
            outcomes.contains(&Committed::Conflict { stream_id: "s-1".into(), actual: version + 1 }),
            "version {version}: {outcomes:?}"
        );
        landed += 1;
    }
    let dump = first.dump(&target(1)).await.unwrap();
    assert_eq!(dump.stream_versions["s-1"], 100);
    assert_eq!(dump.documents.len(), 101, "one document per version, and `a`");
    assert_eq!(first.stats(&target(1)).await.unwrap().events, landed);
    cleanup.run().await;
}

/// A removed document and a removed index entry leave nothing in the
/// generation's collection: they are deleted in the commit's transaction,
/// not kept as empty records. A document removed and written again in
/// later batches comes back whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removals_leave_no_records_behind_in_mongo() {
    use mongodb::bson::doc;
    use strata_projections::ReadModelSink;
    let Some((sink, cleanup)) = crate::support::fresh_mongo().await else { return };
    assert_eq!(sink.init_live("conformance", 1).await.unwrap(), 1);
    let add = |member: &str| Write::IndexAdd { index: "all".into(), score: 1, member: member.into() };
    let remove = |member: &str| Write::IndexRemove { index: "all".into(), member: member.into() };
    let delete = |key: &str| Write::DeleteDocument { key: key.into() };
    let batches = [
        vec![set("a", 1), set("b", 1), add("a"), add("b")],
        vec![delete("a"), remove("a")],
        vec![delete("b"), remove("b"), set("a", 2), add("a")],
    ];
    for (version, writes) in batches.into_iter().enumerate() {
        let version = version as u64;
        assert_eq!(sink.commit(&target(1), &guarded("s-1", version, version + 1, writes)).await.unwrap(), Committed::Done);
    }
    let collection = sink.generation_collection(&target(1));
    let ids = |filter| {
        let collection = collection.clone();
        async move {
            use futures_util::TryStreamExt;
            let found: Vec<mongodb::bson::Document> = collection.find(filter).await.unwrap().try_collect().await.unwrap();
            let mut ids: Vec<String> = found.iter().filter_map(|d| d.get_str("_id").ok().map(str::to_owned)).collect();
            ids.sort();
            ids
        }
    };
    assert_eq!(ids(doc! { "_id": { "$regex": "^d:" } }).await, vec!["d:a".to_owned()], "the deleted document's record is gone");
    assert_eq!(ids(doc! { "_id": { "$regex": "^i:" } }).await.len(), 1, "the removed entry's record is gone");
    assert_eq!(
        ids(doc! { "f": { "$exists": false }, "ix": { "$exists": false }, "_id": { "$regex": "^[di]:" } }).await,
        Vec::<String>::new()
    );
    let dump = sink.dump(&target(1)).await.unwrap();
    assert_eq!(dump.documents.len(), 1);
    assert_eq!(dump.documents["a"]["n"], json!(2));
    assert_eq!(dump.indexes["all"], vec![(1, "a".to_owned())]);
    cleanup.run().await;
}
