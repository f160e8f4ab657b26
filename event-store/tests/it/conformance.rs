//! The event store conformance suite: every guarantee of the `EventStore`
//! seam, as generic cases over `Arc<dyn EventStore>`. Each backend module
//! instantiates it with `conformance_suite!(open)`, where `open` returns a
//! fresh, empty store (or `None` when its service is down outside CI).

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use serde_json::json;
use strata_store::verify::verify_log;
use strata_store::{
    AppendError, CheckpointStore, Direction, EventMetadata, EventStore, ExpectedVersion, Form, NewEvent, Position, ReadAll, ReadStream,
    Snapshot, SnapshotStore, StreamAppend, Subscribe,
};
use uuid::Uuid;

use crate::support::{noted, stream, to};

macro_rules! conformance_suite {
    ($open:path) => {
        conformance_suite!(@cases $open;
            append_to_a_new_stream_assigns_versions_and_positions,
            append_with_stale_version_returns_conflict_with_actual_version,
            expected_any_always_appends,
            multi_stream_append_is_all_or_nothing,
            retry_with_the_same_event_ids_returns_the_original_result_and_writes_nothing,
            reusing_an_event_id_with_other_content_is_refused,
            reusing_only_some_event_ids_is_refused,
            invalid_payload_is_refused_naming_the_field_and_writes_nothing,
            unknown_event_type_or_version_is_refused,
            malformed_requests_are_refused_and_write_nothing,
            an_event_at_the_size_limit_is_stored_and_read_back_whole,
            read_stream_forward_and_backward_from_a_version,
            read_all_pages_in_position_order_and_filters_by_category,
            several_streams_read_at_once_after_their_versions_up_to_a_position,
            every_metadata_field_round_trips,
            old_versions_are_upcast_on_read_and_kept_as_stored_for_audit,
            subscription_catches_up_then_receives_live_events_once_in_order,
            categories_and_stream_heads_reflect_the_log,
            concurrent_appends_expecting_the_same_version_let_exactly_one_win,
            concurrent_retries_of_one_append_store_one_copy,
            a_clean_log_verifies_intact,
            an_event_is_found_by_its_id,
            the_newest_snapshot_is_kept_unless_its_format_changes,
            checkpoints_start_at_zero_and_only_move_forward,
        );
    };
    (@cases $open:path; $($case:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                let Some((store, cleanup)) = $open().await else { return };
                crate::conformance::$case(store).await;
                cleanup.run().await;
            }
        )*
    };
}
pub(crate) use conformance_suite;

/// What every backend offers: the log and the snapshots beside it.
pub trait Backend: EventStore + SnapshotStore + CheckpointStore {}
impl<T: EventStore + SnapshotStore + CheckpointStore> Backend for T {}

type Store = Arc<dyn Backend>;

async fn count_all(store: &Store) -> usize {
    store.read_all(ReadAll::after(Position::START, 100_000)).await.unwrap().len()
}

pub async fn append_to_a_new_stream_assigns_versions_and_positions(store: Store) {
    let s = stream("order");
    let first = store.append(to(&s, ExpectedVersion::NoStream, vec![noted("a"), noted("b")])).await.unwrap();
    assert!(!first.replayed);
    assert_eq!(first.streams[0].versions, vec![1, 2]);
    let [p1, p2] = first.streams[0].positions[..] else { panic!("{first:?}") };
    assert!(p1 < p2, "{first:?}");
    let second = store.append(to(&s, ExpectedVersion::Exact(2), vec![noted("c")])).await.unwrap();
    assert_eq!(second.streams[0].versions, vec![3]);
    assert!(second.streams[0].positions[0] > p2);
    assert_eq!(second.last_position(), store.head_position().await.unwrap());
    let events = store.read_stream(&s, ReadStream::forward(10)).await.unwrap();
    let texts: Vec<_> = events.iter().map(|e| e.payload["text"].as_str().unwrap()).collect();
    assert_eq!(texts, ["a", "b", "c"]);
}

pub async fn append_with_stale_version_returns_conflict_with_actual_version(store: Store) {
    let s = stream("order");
    store.append(to(&s, ExpectedVersion::NoStream, vec![noted("a"), noted("b")])).await.unwrap();
    let before = count_all(&store).await;
    for expected in [ExpectedVersion::Exact(1), ExpectedVersion::Exact(3), ExpectedVersion::NoStream, ExpectedVersion::Exact(0)] {
        let err = store.append(to(&s, expected, vec![noted("x")])).await.unwrap_err();
        match err {
            AppendError::Conflict { stream_id, expected: e, actual } => {
                assert_eq!((stream_id, e, actual), (s.clone(), expected, 2));
            }
            other => panic!("expected a conflict, got {other:?}"),
        }
    }
    let missing = stream("order");
    let err = store.append(to(&missing, ExpectedVersion::StreamExists, vec![noted("x")])).await.unwrap_err();
    assert!(matches!(err, AppendError::Conflict { actual: 0, .. }), "{err:?}");
    assert_eq!(count_all(&store).await, before, "a refused append wrote something");
    assert_eq!(store.stream_head(&missing).await.unwrap(), None);
}

pub async fn expected_any_always_appends(store: Store) {
    let s = stream("order");
    store.append(to(&s, ExpectedVersion::Any, vec![noted("a")])).await.unwrap();
    let outcome = store.append(to(&s, ExpectedVersion::Any, vec![noted("b")])).await.unwrap();
    assert_eq!(outcome.streams[0].versions, vec![2]);
    let outcome = store.append(to(&s, ExpectedVersion::StreamExists, vec![noted("c")])).await.unwrap();
    assert_eq!(outcome.streams[0].versions, vec![3]);
}

pub async fn multi_stream_append_is_all_or_nothing(store: Store) {
    let (a, b) = (stream("order"), stream("inventory"));
    store.append(to(&b, ExpectedVersion::NoStream, vec![noted("b1")])).await.unwrap();
    let head = store.head_position().await.unwrap();
    let request = vec![
        StreamAppend { stream_id: a.clone(), expected: ExpectedVersion::NoStream, events: vec![noted("a1")] },
        StreamAppend { stream_id: b.clone(), expected: ExpectedVersion::Exact(5), events: vec![noted("b2")] },
    ];
    let err = store.append(request).await.unwrap_err();
    assert!(matches!(&err, AppendError::Conflict { stream_id, actual: 1, .. } if *stream_id == b), "{err:?}");
    assert_eq!(store.stream_head(&a).await.unwrap(), None, "first stream was written");
    assert_eq!(store.head_position().await.unwrap(), head);
    let request = vec![
        StreamAppend { stream_id: a.clone(), expected: ExpectedVersion::NoStream, events: vec![noted("a1")] },
        StreamAppend { stream_id: b.clone(), expected: ExpectedVersion::Exact(1), events: vec![noted("b2"), noted("b3")] },
    ];
    let outcome = store.append(request).await.unwrap();
    assert_eq!(outcome.streams[0].versions, vec![1]);
    assert_eq!(outcome.streams[1].versions, vec![2, 3]);
    assert_eq!(store.stream_head(&b).await.unwrap().unwrap().version, 3);
}

pub async fn retry_with_the_same_event_ids_returns_the_original_result_and_writes_nothing(store: Store) {
    let s = stream("order");
    let events = vec![noted("a"), noted("b")];
    let first = store.append(to(&s, ExpectedVersion::NoStream, events.clone())).await.unwrap();
    store.append(to(&s, ExpectedVersion::Exact(2), vec![noted("c")])).await.unwrap();
    let before = count_all(&store).await;
    // The retry's expected version is stale by now: an idempotent retry must
    // still succeed with the original result.
    let retry = store.append(to(&s, ExpectedVersion::NoStream, events)).await.unwrap();
    assert!(retry.replayed);
    assert_eq!(retry.streams, first.streams);
    assert_eq!(count_all(&store).await, before, "the retry wrote a second copy");
}

pub async fn reusing_an_event_id_with_other_content_is_refused(store: Store) {
    let s = stream("order");
    let event = noted("a");
    store.append(to(&s, ExpectedVersion::Any, vec![event.clone()])).await.unwrap();
    let before = count_all(&store).await;
    let mut changed = event.clone();
    changed.payload = json!({ "text": "other" });
    let err = store.append(to(&s, ExpectedVersion::Any, vec![changed])).await.unwrap_err();
    assert!(matches!(&err, AppendError::EventIdReused { event_id, stored_version: 1, .. } if *event_id == event.event_id), "{err:?}");
    let elsewhere = stream("order");
    let err = store.append(to(&elsewhere, ExpectedVersion::Any, vec![event.clone()])).await.unwrap_err();
    assert!(matches!(err, AppendError::EventIdReused { .. }), "{err:?}");
    let mut other_metadata = event;
    other_metadata.metadata.actor = Some("mallory".into());
    let err = store.append(to(&s, ExpectedVersion::Any, vec![other_metadata])).await.unwrap_err();
    assert!(matches!(err, AppendError::EventIdReused { .. }), "{err:?}");
    assert_eq!(count_all(&store).await, before);
}

pub async fn reusing_only_some_event_ids_is_refused(store: Store) {
    let s = stream("order");
    let event = noted("a");
    store.append(to(&s, ExpectedVersion::Any, vec![event.clone()])).await.unwrap();
    let err = store.append(to(&s, ExpectedVersion::Any, vec![event, noted("new")])).await.unwrap_err();
    assert!(matches!(err, AppendError::EventIdReused { .. }), "{err:?}");
    assert_eq!(count_all(&store).await, 1);
}

pub async fn invalid_payload_is_refused_naming_the_field_and_writes_nothing(store: Store) {
    let s = stream("order");
    let mut event = noted("ok");
    event.payload = json!({ "text": "ok", "n": -1 });
    let err = store.append(to(&s, ExpectedVersion::Any, vec![noted("fine"), event.clone()])).await.unwrap_err();
    match &err {
        AppendError::InvalidEvent { event_id, source, .. } => {
            assert_eq!(*event_id, event.event_id);
            assert!(source.to_string().contains("/n"), "{source}");
        }
        other => panic!("expected an invalid event, got {other:?}"),
    }
    assert!(err.to_string().contains("/n"), "{err}");
    let mut missing = noted("x");
    missing.payload = json!({ "txt": "typo" });
    let err = store.append(to(&s, ExpectedVersion::Any, vec![missing])).await.unwrap_err();
    assert!(err.to_string().contains("text"), "{err}");
    assert_eq!(count_all(&store).await, 0);
    assert_eq!(store.stream_head(&s).await.unwrap(), None);
}

pub async fn unknown_event_type_or_version_is_refused(store: Store) {
    let s = stream("order");
    let mut unknown = noted("x");
    unknown.event_type = "Teleported".into();
    let err = store.append(to(&s, ExpectedVersion::Any, vec![unknown])).await.unwrap_err();
    assert!(err.to_string().contains("Teleported"), "{err}");
    let mut future = noted("x");
    future.schema_version = 7;
    let err = store.append(to(&s, ExpectedVersion::Any, vec![future])).await.unwrap_err();
    assert!(matches!(err, AppendError::InvalidEvent { .. }), "{err:?}");
    assert_eq!(count_all(&store).await, 0);
}

pub async fn malformed_requests_are_refused_and_write_nothing(store: Store) {
    let s = stream("order");
    let invalid = |result: Result<_, AppendError>| match result {
        Err(AppendError::InvalidRequest { reason }) => reason,
        other => panic!("expected an invalid request, got {other:?}"),
    };
    invalid(store.append(vec![]).await);
    invalid(store.append(to(&s, ExpectedVersion::Any, vec![])).await);
    let twice = vec![
        StreamAppend { stream_id: s.clone(), expected: ExpectedVersion::Any, events: vec![noted("a")] },
        StreamAppend { stream_id: s.clone(), expected: ExpectedVersion::Any, events: vec![noted("b")] },
    ];
    invalid(store.append(twice).await);
    let event = noted("a");
    invalid(store.append(to(&s, ExpectedVersion::Any, vec![event.clone(), event])).await);
    let mut traced = noted("a");
    traced.metadata.traceparent = Some("not-a-traceparent".into());
    let reason = invalid(store.append(to(&s, ExpectedVersion::Any, vec![traced])).await);
    assert!(reason.contains("traceparent"), "{reason}");
    // One byte over what the bus can carry with the event's envelope.
    let limit = strata_store::AppendLimits::default().max_stored_bytes();
    let big = crate::support::noted_of_size(&s, limit + 1);
    let reason = invalid(store.append(to(&s, ExpectedVersion::Any, vec![big])).await);
    assert!(reason.contains("STRATA_MAX_EVENT_BYTES"), "{reason}");
    let too_many: Vec<NewEvent> = (0..=strata_store::MAX_EVENTS_PER_APPEND).map(|_| noted("n")).collect();
    invalid(store.append(to(&s, ExpectedVersion::Any, too_many)).await);
    // NUL anywhere in a payload (PostgreSQL's jsonb refuses it), or a control
    // character in the actor, is refused on every backend.
    let reason = invalid(store.append(to(&s, ExpectedVersion::Any, vec![noted("c\u{0}x")])).await);
    assert!(reason.contains("NUL"), "{reason}");
    let mut actor = noted("a");
    actor.metadata.actor = Some("graphql:\nclient".into());
    let reason = invalid(store.append(to(&s, ExpectedVersion::Any, vec![actor])).await);
    assert!(reason.contains("actor"), "{reason}");
    assert_eq!(count_all(&store).await, 0);
}

pub async fn an_event_at_the_size_limit_is_stored_and_read_back_whole(store: Store) {
    let s = stream("order");
    let limit = strata_store::AppendLimits::default().max_stored_bytes();
    let event = crate::support::noted_of_size(&s, limit);
    store.append(to(&s, ExpectedVersion::NoStream, vec![event.clone()])).await.unwrap();
    let read = store.read_all(ReadAll::after(Position::START, 10)).await.unwrap();
    assert_eq!(read.len(), 1);
    assert_eq!(read[0].payload, event.payload);
}

pub async fn read_stream_forward_and_backward_from_a_version(store: Store) {
    let s = stream("order");
    let events: Vec<NewEvent> = (1..=10).map(|i| noted(&i.to_string())).collect();
    store.append(to(&s, ExpectedVersion::NoStream, events)).await.unwrap();
    let texts = |events: Vec<strata_store::RecordedEvent>| -> Vec<u64> {
        events.iter().map(|e| e.payload["text"].as_str().unwrap().parse().unwrap()).collect()
    };
    let forward = store.read_stream(&s, ReadStream { from_version: 4, ..ReadStream::forward(3) }).await.unwrap();
    assert_eq!(texts(forward), [4, 5, 6]);
    let backward = store.read_stream(&s, ReadStream { from_version: 4, ..ReadStream::backward(10) }).await.unwrap();
    assert_eq!(texts(backward), [4, 3, 2, 1]);
    let last = store.read_stream(&s, ReadStream::backward(2)).await.unwrap();
    assert_eq!(texts(last), [10, 9]);
    let versions: Vec<u64> = store
        .read_stream(&s, ReadStream { direction: Direction::Forward, ..ReadStream::forward(100) })
        .await
        .unwrap()
        .iter()
        .map(|e| e.stream_version)
        .collect();
    assert_eq!(versions, (1..=10).collect::<Vec<_>>());
    assert!(store.read_stream(&stream("order"), ReadStream::forward(10)).await.unwrap().is_empty());
}

pub async fn several_streams_read_at_once_after_their_versions_up_to_a_position(store: Store) {
    let (a, b, c, absent) = (stream("order"), stream("fulfilment"), stream("order"), stream("order"));
    for i in 0..4 {
        for s in [&a, &b, &c] {
            store.append(to(s, ExpectedVersion::Any, vec![noted(&format!("{}{i}", s.category()))])).await.unwrap();
        }
    }
    let head = store.head_position().await.unwrap();
    // Every stream's events after its version, in position order, never above `until`.
    let wanted = [(a.clone(), 1), (b.clone(), 0), (absent.clone(), 0)];
    let until = store.read_stream(&b, ReadStream { from_version: 3, ..ReadStream::forward(1) }).await.unwrap()[0].position;
    let read = store.read_streams(&wanted, until, 100).await.unwrap();
    let got: Vec<(String, u64)> = read.iter().map(|e| (e.stream_id.to_string(), e.stream_version)).collect();
    let (a_id, b_id) = (a.to_string(), b.to_string());
    assert_eq!(got, [(b_id.clone(), 1), (a_id.clone(), 2), (b_id.clone(), 2), (a_id.clone(), 3), (b_id.clone(), 3)]);
    assert!(read.windows(2).all(|w| w[0].position < w[1].position));
    assert_eq!(read[0].payload["text"], "fulfilment0", "events are read whole and upcast");
    // The limit counts events of all streams; nothing wanted reads nothing.
    let all = [(a.clone(), 0), (b.clone(), 0), (c.clone(), 0)];
    assert_eq!(store.read_streams(&all, head, 100).await.unwrap().len(), 12);
    let limited = store.read_streams(&all, head, 5).await.unwrap();
    assert_eq!(limited.len(), 5);
    assert!(limited.windows(2).all(|w| w[0].position < w[1].position));
    assert!(store.read_streams(&[], head, 100).await.unwrap().is_empty());
    assert!(store.read_streams(&[(a, 4)], head, 100).await.unwrap().is_empty());
}

pub async fn read_all_pages_in_position_order_and_filters_by_category(store: Store) {
    let (orders, stock) = (stream("order"), stream("stock"));
    for i in 0..5 {
        store.append(to(&orders, ExpectedVersion::Any, vec![noted(&format!("o{i}"))])).await.unwrap();
        store.append(to(&stock, ExpectedVersion::Any, vec![noted(&format!("s{i}"))])).await.unwrap();
    }
    let mut seen = Vec::new();
    let mut after = Position::START;
    loop {
        let page = store.read_all(ReadAll::after(after, 3)).await.unwrap();
        let Some(last) = page.last() else { break };
        assert!(page.len() <= 3);
        after = last.position;
        seen.extend(page);
    }
    assert_eq!(seen.len(), 10);
    assert!(seen.windows(2).all(|w| w[0].position < w[1].position));
    let category = store.read_all(ReadAll { category: Some("stock".into()), ..ReadAll::after(Position::START, 100) }).await.unwrap();
    let texts: Vec<_> = category.iter().map(|e| e.payload["text"].as_str().unwrap().to_owned()).collect();
    assert_eq!(texts, ["s0", "s1", "s2", "s3", "s4"]);
    let after_third =
        store.read_all(ReadAll { category: Some("stock".into()), ..ReadAll::after(category[2].position, 100) }).await.unwrap();
    assert_eq!(after_third.len(), 2);
}

pub async fn every_metadata_field_round_trips(store: Store) {
    let s = stream("order");
    let metadata = EventMetadata {
        correlation_id: Some(Uuid::new_v4()),
        causation_id: Some(Uuid::new_v4()),
        traceparent: Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into()),
        actor: Some("client:alice".into()),
        command_id: Some(Uuid::new_v4()),
    };
    let mut event = noted("with metadata");
    event.metadata = metadata.clone();
    let before = chrono::Utc::now() - chrono::Duration::seconds(5);
    let outcome = store.append(to(&s, ExpectedVersion::NoStream, vec![event.clone()])).await.unwrap();
    let read = store.read_stream(&s, ReadStream::forward(1)).await.unwrap().remove(0);
    assert_eq!(read.event_id, event.event_id);
    assert_eq!(read.event_type, "Noted");
    assert_eq!(read.schema_version, 1);
    assert_eq!(read.stream_id, s);
    assert_eq!(read.stream_version, 1);
    assert_eq!(read.position, outcome.streams[0].positions[0]);
    assert_eq!(read.metadata, metadata);
    assert_eq!(read.payload, event.payload);
    assert!(read.recorded_at > before && read.recorded_at < chrono::Utc::now() + chrono::Duration::seconds(5));
    assert_ne!(read.hash, strata_store::ChainHash::GENESIS);
    let global = store.read_all(ReadAll::after(Position::START, 10)).await.unwrap().remove(0);
    assert_eq!(global, read);
}

pub async fn old_versions_are_upcast_on_read_and_kept_as_stored_for_audit(store: Store) {
    let s = stream("order");
    let v1 = NewEvent {
        event_id: Uuid::new_v4(),
        event_type: "Counted".into(),
        schema_version: 1,
        payload: json!({ "n": 3 }),
        metadata: EventMetadata::default(),
    };
    let order_v1 = NewEvent {
        event_id: Uuid::new_v4(),
        event_type: "OrderPlaced".into(),
        schema_version: 1,
        payload: json!({
            "orderId": Uuid::new_v4().to_string(), "customerId": "c-1",
            "lines": [{ "sku": "SKU-1", "quantity": 3, "unitPrice": "2.50" }],
            "paymentMethod": "card",
            "shippingAddress": { "name": "N", "street": "S", "city": "C", "postalCode": "1", "country": "FR" }
        }),
        metadata: EventMetadata::default(),
    };
    store.append(to(&s, ExpectedVersion::NoStream, vec![v1, order_v1])).await.unwrap();
    let latest = store.read_stream(&s, ReadStream::forward(10)).await.unwrap();
    assert_eq!(latest[0].schema_version, 2);
    assert_eq!(latest[0].payload, json!({ "count": 3, "unit": "piece" }));
    assert_eq!(latest[1].schema_version, 2);
    assert_eq!(latest[1].payload["totalCents"], 750);
    let global = store.read_all(ReadAll::after(Position::START, 10)).await.unwrap();
    assert_eq!(global[0].payload, latest[0].payload);
    let stored = store.read_stream(&s, ReadStream { form: Form::AsStored, ..ReadStream::forward(10) }).await.unwrap();
    assert_eq!(stored[0].schema_version, 1);
    assert_eq!(stored[0].payload, json!({ "n": 3 }));
    assert_eq!(stored[1].payload["lines"][0]["unitPrice"], "2.50");
}

pub async fn subscription_catches_up_then_receives_live_events_once_in_order(store: Store) {
    let s = stream("order");
    store.append(to(&s, ExpectedVersion::Any, vec![noted("0"), noted("1")])).await.unwrap();
    let mut subscription = store.subscribe(Subscribe { batch_size: 1, ..Subscribe::after(Position::START) });
    let mut from_middle = store.subscribe(Subscribe::after(Position(1)));
    let writer = {
        let store = store.clone();
        let s = s.clone();
        tokio::spawn(async move {
            for i in 2..20 {
                store.append(to(&s, ExpectedVersion::Any, vec![noted(&i.to_string())])).await.unwrap();
            }
        })
    };
    let mut texts = Vec::new();
    while texts.len() < 20 {
        let event = tokio::time::timeout(Duration::from_secs(10), subscription.next())
            .await
            .expect("subscription stalled")
            .expect("subscription ended")
            .unwrap();
        texts.push(event.payload["text"].as_str().unwrap().parse::<u32>().unwrap());
    }
    assert_eq!(texts, (0..20).collect::<Vec<_>>());
    let first = tokio::time::timeout(Duration::from_secs(10), from_middle.next()).await.unwrap().unwrap().unwrap();
    assert_eq!(first.payload["text"], "1");
    writer.await.unwrap();
    // Nothing more is delivered: no duplicates.
    let extra = tokio::time::timeout(Duration::from_millis(200), subscription.next()).await;
    assert!(extra.is_err(), "unexpected extra delivery: {extra:?}");
}

pub async fn categories_and_stream_heads_reflect_the_log(store: Store) {
    let (a, b, c) = (stream("order"), stream("payment"), stream("order"));
    for s in [&a, &b, &c] {
        store.append(to(s, ExpectedVersion::NoStream, vec![noted("x")])).await.unwrap();
    }
    store.append(to(&a, ExpectedVersion::Exact(1), vec![noted("y")])).await.unwrap();
    assert_eq!(store.categories().await.unwrap(), ["order", "payment"]);
    let head = store.stream_head(&a).await.unwrap().unwrap();
    assert_eq!(head.version, 2);
    let last = store.read_stream(&a, ReadStream::backward(1)).await.unwrap().remove(0);
    assert_eq!(head.last_hash, last.hash);
    let mut listed = Vec::new();
    let mut after = None;
    loop {
        let page = store.stream_heads(after.as_ref(), 2).await.unwrap();
        let Some(last) = page.last() else { break };
        after = Some(last.stream_id.clone());
        listed.extend(page.into_iter().map(|h| h.stream_id));
    }
    let mut expected = vec![a, b, c];
    expected.sort();
    assert_eq!(listed, expected);
    store.ping().await.unwrap();
}

pub async fn concurrent_appends_expecting_the_same_version_let_exactly_one_win(store: Store) {
    let s = stream("order");
    store.append(to(&s, ExpectedVersion::NoStream, vec![noted("seed")])).await.unwrap();
    let tasks: Vec<_> = (0..20)
        .map(|i| {
            let store = store.clone();
            let s = s.clone();
            tokio::spawn(async move { store.append(to(&s, ExpectedVersion::Exact(1), vec![noted(&i.to_string())])).await })
        })
        .collect();
    let mut wins = 0;
    for task in tasks {
        match task.await.unwrap() {
            Ok(outcome) => {
                wins += 1;
                assert_eq!(outcome.streams[0].versions, vec![2]);
            }
            Err(AppendError::Conflict { actual: 2, .. }) => {}
            Err(other) => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(wins, 1);
    assert_eq!(store.stream_head(&s).await.unwrap().unwrap().version, 2);
}

pub async fn concurrent_retries_of_one_append_store_one_copy(store: Store) {
    let s = stream("order");
    let events = vec![noted("a"), noted("b")];
    let tasks: Vec<_> = (0..10)
        .map(|_| {
            let store = store.clone();
            let request = to(&s, ExpectedVersion::NoStream, events.clone());
            tokio::spawn(async move { store.append(request).await })
        })
        .collect();
    let mut outcomes = Vec::new();
    for task in tasks {
        outcomes.push(task.await.unwrap().unwrap());
    }
    assert_eq!(outcomes.iter().filter(|o| !o.replayed).count(), 1);
    assert!(outcomes.iter().all(|o| o.streams == outcomes[0].streams));
    assert_eq!(count_all(&store).await, 2);
}

pub async fn a_clean_log_verifies_intact(store: Store) {
    for _ in 0..3 {
        let s = stream("order");
        for i in 0..4 {
            store.append(to(&s, ExpectedVersion::Any, vec![noted(&i.to_string()), noted("more")])).await.unwrap();
        }
    }
    let mut calls = 0;
    let report = verify_log(store.as_ref(), 5, None, &Default::default(), &mut |_, _| calls += 1).await.unwrap();
    assert!(report.is_intact(), "{report:?}");
    assert_eq!(report.events_checked, 24);
    assert_eq!(report.streams_checked, 3);
    assert!(calls >= 4, "progress was reported {calls} times");
}

pub async fn an_event_is_found_by_its_id(store: Store) {
    let s = stream("order");
    let events = vec![noted("a"), noted("b")];
    let second_id = events[1].event_id;
    let outcome = store.append(to(&s, ExpectedVersion::NoStream, events)).await.unwrap();
    let found = store.read_event(second_id, Form::Latest).await.unwrap().expect("stored event");
    assert_eq!(found.stream_id, s);
    assert_eq!(found.stream_version, 2);
    assert_eq!(found.position, outcome.streams[0].positions[1]);
    assert_eq!(found.payload, json!({ "text": "b" }));
    assert!(store.read_event(Uuid::new_v4(), Form::Latest).await.unwrap().is_none());
}

pub async fn the_newest_snapshot_is_kept_unless_its_format_changes(store: Store) {
    let s = stream("order");
    assert!(store.load_snapshot(&s).await.unwrap().is_none());
    let snapshot = |format: u32, version: u64| Snapshot {
        stream_id: s.clone(),
        snapshot_version: format,
        stream_version: version,
        state: json!({ "format": format, "version": version }),
        taken_at: chrono::DateTime::from_timestamp_micros(1_700_000_000_000_000).unwrap(),
    };
    store.save_snapshot(snapshot(1, 200)).await.unwrap();
    store.save_snapshot(snapshot(1, 100)).await.unwrap();
    assert_eq!(store.load_snapshot(&s).await.unwrap(), Some(snapshot(1, 200)), "an older snapshot replaced a newer one");
    store.save_snapshot(snapshot(2, 50)).await.unwrap();
    assert_eq!(store.load_snapshot(&s).await.unwrap(), Some(snapshot(2, 50)), "a new format must replace the old one");
    store.save_snapshot(snapshot(2, 300)).await.unwrap();
    assert_eq!(store.load_snapshot(&s).await.unwrap(), Some(snapshot(2, 300)));
    assert!(store.load_snapshot(&stream("order")).await.unwrap().is_none(), "snapshots are per stream");
}

pub async fn checkpoints_start_at_zero_and_only_move_forward(store: Store) {
    assert_eq!(store.load_checkpoint("relay").await.unwrap(), Position::START);
    store.save_checkpoint("relay", Position(40)).await.unwrap();
    store.save_checkpoint("relay", Position(12)).await.unwrap();
    assert_eq!(store.load_checkpoint("relay").await.unwrap(), Position(40), "a checkpoint moved backwards");
    store.save_checkpoint("relay", Position(41)).await.unwrap();
    assert_eq!(store.load_checkpoint("relay").await.unwrap(), Position(41));
    assert_eq!(store.load_checkpoint("other").await.unwrap(), Position::START, "checkpoints are per name");
}
