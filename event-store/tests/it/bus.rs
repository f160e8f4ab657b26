//! The bus conformance suite: every guarantee of the `Publisher` /
//! `Subscriber` seam on the in-process bus, on NATS JetStream (a stream and
//! subject prefix of its own per test) and on Kafka (a topic prefix of its
//! own, on librdkafka's mock cluster or `STRATA_TEST_KAFKA`).

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use futures_util::stream::BoxStream;
use futures_util::StreamExt;
use serde_json::json;
use strata_store::bus::{BusError, Delivery, MemoryBus, Publisher, Requester, Responder, Subscriber, Subscription};
use strata_store::{ChainHash, EventMetadata, Position, RecordedEvent, StoredEvent, StreamId};
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
            a_delivery_carries_the_trace_context_it_was_published_under,
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

fn event(stream_id: &StreamId, version: u64, position: u64) -> RecordedEvent {
    RecordedEvent {
        event_id: Uuid::new_v4(),
        event_type: "Noted".into(),
        schema_version: 1,
        stream_id: stream_id.clone(),
        stream_version: version,
        position: Position(position),
        recorded_at: chrono::DateTime::from_timestamp_micros(1_800_000_000_123_456).unwrap(),
        payload: json!({ "text": format!("{stream_id} v{version}") }),
        metadata: EventMetadata { correlation_id: Some(Uuid::new_v4()), actor: Some("test".into()), ..EventMetadata::default() },
        hash: ChainHash([7; 32]),
    }
}

/// `count` events spread over three streams, versions in order per stream,
/// positions in order as a log would have them.
fn events(category: &str, count: usize) -> Vec<RecordedEvent> {
    let streams: Vec<StreamId> = (0..3).map(|i| StreamId::new(category, format!("s{i}.x")).unwrap()).collect();
    (0..count).map(|i| event(&streams[i % 3], (i / 3) as u64 + 1, i as u64 + 1)).collect()
}

/// The guaranteed order: every stream's events in publish order (the
/// in-process bus and JetStream also keep the order across streams; Kafka
/// keeps it per partition), nothing missing, nothing extra, every field intact.
fn assert_same_per_stream(received: &[RecordedEvent], published: &[RecordedEvent]) {
    let per_stream = |events: &[RecordedEvent]| {
        let mut streams: std::collections::BTreeMap<String, Vec<RecordedEvent>> = Default::default();
        for event in events {
            streams.entry(event.stream_id.to_string()).or_default().push(event.clone());
        }
        streams
    };
    assert_eq!(per_stream(received), per_stream(published), "every field survives the bus, in publish order per stream");
}

/// Events as the relay hands them to the bus.
fn stored(events: &[RecordedEvent]) -> Vec<StoredEvent> {
    events.iter().map(StoredEvent::from).collect()
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
    let outcome = bus.publish(&stored(&published)).await.unwrap();
    assert!(outcome.iter().all(|p| !p.duplicate));
    let mut deliveries = bus.subscribe(subscription("readers")).await.unwrap();
    let received = take_acked(&mut deliveries, 20).await;
    assert_same_per_stream(&received, &published);
}

/// The relay publishes an event under its publish span's context (the
/// message's `traceparent` header); without one the event's own travels.
pub async fn a_delivery_carries_the_trace_context_it_was_published_under(bus: Shared) {
    let (appended, published_under) =
        ("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", "00-4bf92f3577b34da6a3ce929d0e0e4736-1111111111111111-01");
    let mut events = events("traced", 3);
    events[0].metadata.traceparent = Some(appended.into());
    events[1].metadata.traceparent = Some(appended.into());
    let mut stored = stored(&events);
    stored[0].bus_traceparent = Some(published_under.into());
    bus.publish(&stored).await.unwrap();
    let mut deliveries = bus.subscribe(subscription("tracers")).await.unwrap();
    let mut seen = std::collections::HashMap::new();
    for _ in 0..3 {
        let delivery = next(&mut deliveries).await;
        seen.insert(delivery.event.event_id, delivery.traceparent.clone());
        delivery.ack().await.unwrap();
    }
    assert_eq!(seen[&events[0].event_id].as_deref(), Some(published_under), "the header's context");
    assert_eq!(seen[&events[1].event_id].as_deref(), Some(appended), "the event's own");
    assert_eq!(seen[&events[2].event_id], None, "an untraced event has none");
}

pub async fn a_duplicate_event_id_is_stored_once(bus: Shared) {
    let e = events("order", 4);
    bus.publish(&stored(&e[..2])).await.unwrap();
    let again = bus.publish(&stored(&[e[1].clone(), e[2].clone()])).await.unwrap();
    assert_eq!(again.iter().map(|p| p.duplicate).collect::<Vec<_>>(), vec![true, false]);
    bus.publish(&stored(&e[3..])).await.unwrap();
    let mut deliveries = bus.subscribe(subscription("readers")).await.unwrap();
    let received = take_acked(&mut deliveries, 4).await;
    assert_same_per_stream(&received, &e);
    assert!(tokio::time::timeout(Duration::from_millis(500), deliveries.next()).await.is_err(), "the duplicate was delivered");
}

pub async fn an_unacked_delivery_is_redelivered_after_ack_wait_and_a_nack_at_once(bus: Shared) {
    let e = events("order", 2);
    bus.publish(&stored(&e)).await.unwrap();
    let mut deliveries = bus.subscribe(subscription("readers")).await.unwrap();
    let first = next(&mut deliveries).await;
    assert_eq!(first.delivery_count, 1);
    let first_id = first.event.event_id;
    drop(first); // never acked
    let second = next(&mut deliveries).await;
    assert_eq!(second.delivery_count, 1);
    let both: HashSet<Uuid> = [first_id, second.event.event_id].into();
    assert_eq!(both, e.iter().map(|e| e.event_id).collect(), "two different events first");
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
    groups_share_work(bus, true).await;
}

/// Kafka: an ack that reaches a member after a rebalance moved its partition
/// does not count (the new owner delivers the record again), so members
/// sharing a group may both see a record while the group forms.
pub async fn groups_each_get_everything_and_members_share_their_groups_work_at_least_once(bus: Shared) {
    groups_share_work(bus, false).await;
}

async fn groups_share_work(bus: Shared, acked_once: bool) {
    let e = events("order", 30);
    bus.publish(&stored(&e)).await.unwrap();
    let mut other_group = bus.subscribe(subscription("audit")).await.unwrap();
    assert_same_per_stream(&take_acked(&mut other_group, 30).await, &e);

    let mut members = [bus.subscribe(subscription("workers")).await.unwrap(), bus.subscribe(subscription("workers")).await.unwrap()];
    let mut seen: Vec<Uuid> = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while seen.len() < 30 {
        assert!(tokio::time::Instant::now() < deadline, "the members got {} of 30", seen.len());
        let (delivery, _, _) = futures_util::future::select_all(members.iter_mut().map(|m| Box::pin(next(m)))).await;
        seen.push(delivery.event.event_id);
        delivery.ack().await.unwrap();
    }
    let mut distinct: HashSet<Uuid> = seen.iter().copied().collect();
    if acked_once {
        assert_eq!(distinct.len(), 30, "an acked event went to two members of one group");
    }
    while distinct.len() < 30 {
        assert!(tokio::time::Instant::now() < deadline, "the members got {} of 30", distinct.len());
        let (delivery, _, _) = futures_util::future::select_all(members.iter_mut().map(|m| Box::pin(next(m)))).await;
        distinct.insert(delivery.event.event_id);
        delivery.ack().await.unwrap();
    }
    assert_eq!(distinct, e.iter().map(|e| e.event_id).collect());
}

pub async fn a_group_follows_only_its_category(bus: Shared) {
    let orders = events("order", 3);
    let stock = events("inventory", 3);
    let mixed: Vec<RecordedEvent> = orders.iter().zip(&stock).flat_map(|(o, s)| [o.clone(), s.clone()]).collect();
    bus.publish(&stored(&mixed)).await.unwrap();
    let only_stock = Subscription { category: Some("inventory".into()), ..subscription("stock") };
    let mut deliveries = bus.subscribe(only_stock).await.unwrap();
    assert_same_per_stream(&take_acked(&mut deliveries, 3).await, &stock);
    let bad = Subscription { category: Some("not a category".into()), ..subscription("bad") };
    assert!(matches!(bus.subscribe(bad).await, Err(BusError::InvalidSubscription { .. })));
}

pub async fn a_resubscribed_group_resumes_after_what_it_acked(bus: Shared) {
    let e = events("order", 10);
    bus.publish(&stored(&e)).await.unwrap();
    let mut first = bus.subscribe(subscription("readers")).await.unwrap();
    let acked: HashSet<Uuid> = take_acked(&mut first, 5).await.iter().map(|e| e.event_id).collect();
    drop(first);
    let mut again = bus.subscribe(subscription("readers")).await.unwrap();
    let mut rest = HashSet::new();
    while rest.len() < 5 {
        let delivery = next(&mut again).await;
        assert!(!acked.contains(&delivery.event.event_id), "an acked event came back: {delivery:?}");
        rest.insert(delivery.event.event_id);
        delivery.ack().await.unwrap();
    }
    let all: HashSet<Uuid> = e.iter().map(|e| e.event_id).collect();
    assert_eq!(rest, all.difference(&acked).copied().collect());
}

mod memory {
    use super::*;

    async fn open() -> Option<(Shared, Cleanup)> {
        Some((Arc::new(MemoryBus::new()), Cleanup::none()))
    }

    bus_suite!(open);
}

/// Answers every request of `service` with `<name>:<payload>` (or never,
/// when `silent`), until the test ends.
async fn responder(bus: &dyn Responder, service: &str, name: &'static str, silent: bool) {
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

/// Requests until both responders of a service answered (members of a
/// group join at their own pace, and a Kafka group pauses while it
/// rebalances): each answer is to its request and comes from one of the
/// service's responders.
pub async fn each_request_is_answered_once_by_one_of_the_services_responders<B: Requester + Responder>(bus: &B) {
    responder(bus, "stock", "first", false).await;
    responder(bus, "stock", "second", false).await;
    responder(bus, "billing", "other", false).await;
    let mut answered_by = HashSet::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let mut i = 0;
    while answered_by.len() < 2 || i < 40 {
        assert!(tokio::time::Instant::now() < deadline, "after {i} requests only {answered_by:?} answered");
        let answer = bus.request("stock", format!("r{i}").into_bytes(), Duration::from_secs(30)).await.unwrap().expect("an answer");
        let answer = String::from_utf8(answer).unwrap();
        let (name, echoed) = answer.split_once(':').unwrap();
        assert_eq!(echoed, format!("r{i}"), "the answer is to this request");
        assert!(name == "first" || name == "second", "answered by another service: {answer}");
        answered_by.insert(name.to_owned());
        i += 1;
    }
}

/// A request to a silent responder, or to a service nobody serves, is `None`
/// after its timeout.
pub async fn a_request_nobody_answers_or_nobody_serves_is_none<B: Requester + Responder>(bus: &B) {
    responder(bus, "gateway", "silent", true).await;
    let answer = bus.request("gateway", b"hello".to_vec(), Duration::from_millis(300)).await.unwrap();
    assert_eq!(answer, None);
    let answer = bus.request("nobody-serves-this", b"hello".to_vec(), Duration::from_secs(1)).await.unwrap();
    assert_eq!(answer, None);
}

/// A request carries when its requester stops waiting, so that a responder
/// that is behind can skip what nobody waits for any more.
pub async fn a_request_carries_when_its_requester_stops_waiting<B: Requester + Responder>(bus: &B) {
    let mut requests = bus.serve("clock").await.unwrap();
    // A first request waits for the responder to join (a Kafka group takes seconds).
    let warm_up = async {
        let request = requests.next().await.expect("a request");
        request.reply(b"ready".to_vec()).await.unwrap();
    };
    let (answer, ()) = tokio::join!(bus.request("clock", b"warm-up".to_vec(), Duration::from_secs(60)), warm_up);
    assert_eq!(answer.unwrap().as_deref(), Some(&b"ready"[..]));
    let before = std::time::SystemTime::now();
    let timeout = Duration::from_millis(800);
    let (answer, request) = tokio::join!(bus.request("clock", b"late".to_vec(), timeout), async {
        let request = tokio::time::timeout(Duration::from_secs(30), requests.next()).await.expect("the request came").expect("a request");
        let deadline = request.deadline.expect("the request says when its requester stops waiting");
        assert!(deadline + Duration::from_millis(1) >= before + timeout, "{deadline:?} is the request's time plus its timeout");
        assert!(deadline <= std::time::SystemTime::now() + timeout, "{deadline:?}");
        assert!(!request.expired(), "taken before its deadline");
        request
    });
    assert_eq!(answer.unwrap(), None, "not answered in time");
    assert!(request.expired(), "the requester stopped waiting");
}

#[cfg(feature = "nats")]
mod jetstream {
    use super::*;

    async fn open() -> Option<(Shared, Cleanup)> {
        let (bus, cleanup) = crate::support::test_jetstream().await?;
        Some((Arc::new(bus), cleanup))
    }

    bus_suite!(open);

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn each_request_is_answered_once_by_one_of_the_services_responders() {
        let Some((bus, cleanup)) = crate::support::test_jetstream().await else { return };
        super::each_request_is_answered_once_by_one_of_the_services_responders(&bus).await;
        cleanup.run().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_request_carries_when_its_requester_stops_waiting() {
        let Some((bus, cleanup)) = crate::support::test_jetstream().await else { return };
        super::a_request_carries_when_its_requester_stops_waiting(&bus).await;
        cleanup.run().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_request_nobody_answers_or_nobody_serves_is_none() {
        let Some((bus, cleanup)) = crate::support::test_jetstream().await else { return };
        super::a_request_nobody_answers_or_nobody_serves_is_none(&bus).await;
        // NATS knows at once that nobody serves a service.
        let started = std::time::Instant::now();
        let answer = bus.request("nobody-serves-this", b"hello".to_vec(), Duration::from_secs(30)).await.unwrap();
        assert_eq!(answer, None);
        assert!(started.elapsed() < Duration::from_secs(30), "no responder is known at once, not after the timeout");
        cleanup.run().await;
    }
}

#[cfg(feature = "kafka")]
mod kafka {
    use super::*;

    async fn open() -> Option<(Shared, Cleanup)> {
        let (bus, cleanup) = strata_store::testkit::kafka::bus().await?;
        Some((Arc::new(bus), cleanup))
    }

    bus_suite!(@cases open;
        a_group_receives_published_events_in_order,
        a_duplicate_event_id_is_stored_once,
        an_unacked_delivery_is_redelivered_after_ack_wait_and_a_nack_at_once,
        groups_each_get_everything_and_members_share_their_groups_work_at_least_once,
        a_group_follows_only_its_category,
        a_resubscribed_group_resumes_after_what_it_acked,
        a_delivery_carries_the_trace_context_it_was_published_under,
    );

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn each_request_is_answered_once_by_one_of_the_services_responders() {
        let Some((bus, cleanup)) = strata_store::testkit::kafka::bus().await else { return };
        super::each_request_is_answered_once_by_one_of_the_services_responders(&bus).await;
        cleanup.run().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_request_carries_when_its_requester_stops_waiting() {
        let Some((bus, cleanup)) = strata_store::testkit::kafka::bus().await else { return };
        super::a_request_carries_when_its_requester_stops_waiting(&bus).await;
        cleanup.run().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_request_nobody_answers_or_nobody_serves_is_none() {
        let Some((bus, cleanup)) = strata_store::testkit::kafka::bus().await else { return };
        super::a_request_nobody_answers_or_nobody_serves_is_none(&bus).await;
        cleanup.run().await;
    }

    /// A member whose subscriber stops reading keeps polling (its partitions
    /// paused, what it fetched held back): a member that joins gets its
    /// share of the partitions at the rebalance, not after librdkafka's
    /// `max.poll.interval.ms` (5 min), and once the first reads again the
    /// two together deliver every record.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_member_whose_subscriber_stops_reading_still_hands_partitions_over() {
        let Some((bus, cleanup)) = strata_store::testkit::kafka::bus().await else { return };
        // 48 streams over the 12 partitions, 40 events each: more than a
        // member holds for its subscriber before it pauses its partitions.
        let streams: Vec<StreamId> = (0..48).map(|i| StreamId::new("order", format!("flow{i}")).unwrap()).collect();
        let e: Vec<RecordedEvent> = (0..1_920).map(|i| event(&streams[i % 48], (i / 48) as u64 + 1, i as u64 + 1)).collect();
        bus.publish(&stored(&e)).await.unwrap();
        let patient = |group| Subscription { ack_wait: Duration::from_secs(120), ..Subscription::group(group) };
        let mut stalled = bus.subscribe(patient("flow")).await.unwrap();
        // The first member takes one record, then reads nothing for a while.
        let first = next(&mut stalled).await;
        let mut joined = bus.subscribe(patient("flow")).await.unwrap();
        let mut seen: HashSet<Uuid> = HashSet::from([first.event.event_id]);
        first.ack().await.unwrap();
        let taken = tokio::time::timeout(Duration::from_secs(60), joined.next())
            .await
            .expect("the joining member got partitions while the first one's subscriber did not read")
            .expect("the subscription is open")
            .expect("a delivery");
        seen.insert(taken.event.event_id);
        taken.ack().await.unwrap();
        // Both read: every record arrives (an unacked one may come twice
        // while partitions move; none is missing).
        let all: HashSet<Uuid> = e.iter().map(|e| e.event_id).collect();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        while seen.len() < all.len() {
            assert!(tokio::time::Instant::now() < deadline, "the members delivered {} of {}", seen.len(), all.len());
            let mut members = [&mut stalled, &mut joined];
            let (delivery, _, _) = futures_util::future::select_all(members.iter_mut().map(|m| Box::pin(next(m)))).await;
            seen.insert(delivery.event.event_id);
            delivery.ack().await.unwrap();
        }
        assert_eq!(seen, all);
        cleanup.run().await;
    }

    /// A request sent while no responder ran, answered by one that started
    /// before its deadline; a request whose deadline passed is skipped.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_responder_that_starts_late_answers_what_is_still_awaited() {
        let Some((bus, cleanup)) = strata_store::testkit::kafka::bus().await else { return };
        let expired = bus.request("late", b"old".to_vec(), Duration::from_millis(200)).await.unwrap();
        assert_eq!(expired, None);
        let waiting = tokio::spawn({
            let bus = bus.clone();
            async move { bus.request("late", b"new".to_vec(), Duration::from_secs(20)).await }
        });
        responder(&bus, "late", "late", false).await;
        let answer = waiting.await.unwrap().unwrap().expect("the late responder answers the awaited request");
        assert_eq!(answer, b"late:new");
        cleanup.run().await;
    }
}
