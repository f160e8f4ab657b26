//! The bus conformance suite: every guarantee of the `Publisher` /
//! `Subscriber` seam on the in-process bus and on NATS JetStream (a stream
//! and subject prefix of its own per test).

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use futures_util::stream::BoxStream;
use futures_util::StreamExt;
use serde_json::json;
use strata_store::bus::{BusError, Delivery, MemoryBus, Publisher, Subscriber, Subscription};
use strata_store::{ChainHash, EventMetadata, Position, RecordedEvent, StreamId};
use uuid::Uuid;

use crate::support::Cleanup;

pub trait Bus: Publisher + Subscriber {}
impl<T: Publisher + Subscriber> Bus for T {}

type Shared = Arc<dyn Bus>;
type Deliveries = BoxStream<'static, Result<Delivery, BusError>>;

macro_rules! bus_suite {
    ($open:path) => {
        bus_suite!(@cases $open;
            a_group_receives_published_events_in_order,
            a_duplicate_event_id_is_stored_once,
            an_unacked_delivery_is_redelivered_after_ack_wait_and_a_nack_at_once,
            groups_each_get_everything_and_members_share_their_groups_work,
            a_group_follows_only_its_category,
            a_resubscribed_group_resumes_after_what_it_acked,
        );
    };
    (@cases $open:path; $($case:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                let Some((bus, cleanup)) = $open().await else { return };
                crate::bus::$case(bus).await;
                cleanup.run().await;
            }
        )*
    };
}

fn event(stream_id: &StreamId, version: u64) -> RecordedEvent {
    RecordedEvent {
        event_id: Uuid::new_v4(),
        event_type: "Noted".into(),
        schema_version: 1,
        stream_id: stream_id.clone(),
        stream_version: version,
        position: Position(version),
        recorded_at: chrono::DateTime::from_timestamp_micros(1_800_000_000_123_456).unwrap(),
        payload: json!({ "text": format!("{stream_id} v{version}") }),
        metadata: EventMetadata { correlation_id: Some(Uuid::new_v4()), actor: Some("test".into()), ..EventMetadata::default() },
        hash: ChainHash([7; 32]),
    }
}

/// `count` events spread over three streams, versions in order per stream.
fn events(category: &str, count: usize) -> Vec<RecordedEvent> {
    let streams: Vec<StreamId> = (0..3).map(|i| StreamId::new(category, format!("s{i}.x")).unwrap()).collect();
    (0..count).map(|i| event(&streams[i % 3], (i / 3) as u64 + 1)).collect()
}

fn subscription(group: &str) -> Subscription {
    Subscription { ack_wait: Duration::from_secs(1), ..Subscription::group(group) }
}

async fn next(deliveries: &mut Deliveries) -> Delivery {
    tokio::time::timeout(Duration::from_secs(15), deliveries.next())
        .await
        .expect("a delivery within 15 s")
        .expect("the subscription is open")
        .expect("a delivery, not an error")
}

async fn take_acked(deliveries: &mut Deliveries, count: usize) -> Vec<RecordedEvent> {
    let mut taken = Vec::new();
    for _ in 0..count {
        let delivery = next(deliveries).await;
        taken.push(delivery.event.clone());
        delivery.ack().await.unwrap();
    }
    taken
}

pub async fn a_group_receives_published_events_in_order(bus: Shared) {
    let published = events("order", 20);
    let outcome = bus.publish(&published).await.unwrap();
    assert!(outcome.iter().all(|p| !p.duplicate));
    let mut deliveries = bus.subscribe(subscription("readers")).await.unwrap();
    let received = take_acked(&mut deliveries, 20).await;
    assert_eq!(received, published, "every field survives the bus, in publish order");
}

pub async fn a_duplicate_event_id_is_stored_once(bus: Shared) {
    let e = events("order", 4);
    bus.publish(&e[..2]).await.unwrap();
    let again = bus.publish(&[e[1].clone(), e[2].clone()]).await.unwrap();
    assert_eq!(again.iter().map(|p| p.duplicate).collect::<Vec<_>>(), vec![true, false]);
    bus.publish(&e[3..]).await.unwrap();
    let mut deliveries = bus.subscribe(subscription("readers")).await.unwrap();
    let received = take_acked(&mut deliveries, 4).await;
    assert_eq!(received, e, "the duplicate was delivered: {received:?}");
}

pub async fn an_unacked_delivery_is_redelivered_after_ack_wait_and_a_nack_at_once(bus: Shared) {
    let e = events("order", 2);
    bus.publish(&e).await.unwrap();
    let mut deliveries = bus.subscribe(subscription("readers")).await.unwrap();
    let first = next(&mut deliveries).await;
    assert_eq!((first.event.event_id, first.delivery_count), (e[0].event_id, 1));
    drop(first); // never acked
    let second = next(&mut deliveries).await;
    assert_eq!(second.event.event_id, e[1].event_id);
    second.nack().await.unwrap();
    let mut redelivered = HashSet::new();
    while redelivered.len() < 2 {
        let delivery = next(&mut deliveries).await;
        assert!(delivery.delivery_count >= 2, "{delivery:?}");
        redelivered.insert(delivery.event.event_id);
        delivery.ack().await.unwrap();
    }
    assert_eq!(redelivered, e.iter().map(|e| e.event_id).collect());
}

pub async fn groups_each_get_everything_and_members_share_their_groups_work(bus: Shared) {
    let e = events("order", 30);
    bus.publish(&e).await.unwrap();
    let mut other_group = bus.subscribe(subscription("audit")).await.unwrap();
    assert_eq!(take_acked(&mut other_group, 30).await, e);

    let mut members = [bus.subscribe(subscription("workers")).await.unwrap(), bus.subscribe(subscription("workers")).await.unwrap()];
    let mut seen: Vec<Uuid> = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while seen.len() < 30 {
        assert!(tokio::time::Instant::now() < deadline, "the members got {} of 30", seen.len());
        let (delivery, _, _) = futures_util::future::select_all(members.iter_mut().map(|m| Box::pin(next(m)))).await;
        seen.push(delivery.event.event_id);
        delivery.ack().await.unwrap();
    }
    let distinct: HashSet<Uuid> = seen.iter().copied().collect();
    assert_eq!(distinct.len(), 30, "an acked event went to two members of one group");
    assert_eq!(distinct, e.iter().map(|e| e.event_id).collect());
}

pub async fn a_group_follows_only_its_category(bus: Shared) {
    let orders = events("order", 3);
    let stock = events("inventory", 3);
    let mixed: Vec<RecordedEvent> = orders.iter().zip(&stock).flat_map(|(o, s)| [o.clone(), s.clone()]).collect();
    bus.publish(&mixed).await.unwrap();
    let only_stock = Subscription { category: Some("inventory".into()), ..subscription("stock") };
    let mut deliveries = bus.subscribe(only_stock).await.unwrap();
    assert_eq!(take_acked(&mut deliveries, 3).await, stock);
    let bad = Subscription { category: Some("not a category".into()), ..subscription("bad") };
    assert!(matches!(bus.subscribe(bad).await, Err(BusError::InvalidSubscription { .. })));
}

pub async fn a_resubscribed_group_resumes_after_what_it_acked(bus: Shared) {
    let e = events("order", 10);
    bus.publish(&e).await.unwrap();
    let mut first = bus.subscribe(subscription("readers")).await.unwrap();
    assert_eq!(take_acked(&mut first, 5).await, e[..5]);
    drop(first);
    let mut again = bus.subscribe(subscription("readers")).await.unwrap();
    let acked: HashSet<Uuid> = e[..5].iter().map(|e| e.event_id).collect();
    let mut rest = HashSet::new();
    while rest.len() < 5 {
        let delivery = next(&mut again).await;
        assert!(!acked.contains(&delivery.event.event_id), "an acked event came back: {delivery:?}");
        rest.insert(delivery.event.event_id);
        delivery.ack().await.unwrap();
    }
    assert_eq!(rest, e[5..].iter().map(|e| e.event_id).collect());
}

mod memory {
    use super::*;

    async fn open() -> Option<(Shared, Cleanup)> {
        Some((Arc::new(MemoryBus::new()), Cleanup::none()))
    }

    bus_suite!(open);
}

#[cfg(feature = "nats")]
mod jetstream {
    use super::*;

    async fn open() -> Option<(Shared, Cleanup)> {
        let (bus, cleanup) = crate::support::test_jetstream().await?;
        Some((Arc::new(bus), cleanup))
    }

    bus_suite!(open);

    use strata_store::bus::{Requester, Responder};

    /// Answers every request of `service` with `<name>:<payload>` (or never,
    /// when `silent`), until the test ends.
    async fn responder(bus: &strata_store::bus::JetStreamBus, service: &str, name: &'static str, silent: bool) {
        let mut requests = bus.serve(service).await.unwrap();
        tokio::spawn(async move {
            while let Some(request) = requests.next().await {
                if !silent {
                    let answer = format!("{name}:{}", String::from_utf8_lossy(&request.payload));
                    request.reply(answer.into_bytes()).await.unwrap();
                }
            }
        });
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn each_request_is_answered_once_by_one_of_the_services_responders() {
        let Some((bus, cleanup)) = crate::support::test_jetstream().await else { return };
        responder(&bus, "stock", "first", false).await;
        responder(&bus, "stock", "second", false).await;
        responder(&bus, "billing", "other", false).await;
        let mut answered_by = HashSet::new();
        for i in 0..40 {
            let answer = bus.request("stock", format!("r{i}").into_bytes(), Duration::from_secs(5)).await.unwrap().expect("an answer");
            let answer = String::from_utf8(answer).unwrap();
            let (name, echoed) = answer.split_once(':').unwrap();
            assert_eq!(echoed, format!("r{i}"), "the answer is to this request");
            assert!(name == "first" || name == "second", "answered by another service: {answer}");
            answered_by.insert(name.to_owned());
        }
        assert_eq!(answered_by.len(), 2, "responders of one service share its requests");
        cleanup.run().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_request_nobody_answers_or_nobody_serves_is_none() {
        let Some((bus, cleanup)) = crate::support::test_jetstream().await else { return };
        responder(&bus, "gateway", "silent", true).await;
        let answer = bus.request("gateway", b"hello".to_vec(), Duration::from_millis(300)).await.unwrap();
        assert_eq!(answer, None);
        let started = std::time::Instant::now();
        let answer = bus.request("nobody-serves-this", b"hello".to_vec(), Duration::from_secs(30)).await.unwrap();
        assert_eq!(answer, None);
        assert!(started.elapsed() < Duration::from_secs(30), "no responder is known at once, not after the timeout");
        cleanup.run().await;
    }
}
