//! The command handler's guarantees as generic cases over a backend.
//! Each backend module instantiates them with `handler_suite!(open)`.

use std::collections::HashSet;
use std::sync::Arc;

use serde_json::json;
use strata_commands::inventory::{Inventory, InventoryCommand, InventoryError};
use strata_commands::orders::{Order, OrderCommand};
use strata_commands::{Aggregate, CommandContext, CommandError, CommandHandler, Envelope, HandlerConfig};
use strata_schemas::events::{InventoryEvent, StockRestocked};
use strata_schemas::values::Quantity;
use strata_schemas::DomainEvent;
use strata_store::{EventMetadata, ExpectedVersion, Form, NewEvent, ReadStream, StreamAppend, StreamId};
use uuid::Uuid;

use crate::support::{at, fresh_sku, handler, inventory_stream, price, reserve, restock, stream_len, Fault, Faulty, Store};

macro_rules! handler_suite {
    ($open:path) => {
        handler_suite!(@cases $open;
            a_command_appends_events_stamped_with_every_metadata_field,
            a_refused_command_writes_nothing,
            repeating_a_command_id_returns_the_first_outcome_and_writes_nothing,
            concurrent_copies_of_a_command_have_exactly_one_effect,
            a_reply_lost_after_the_append_is_answered_when_the_command_is_sent_again,
            a_command_id_used_on_another_stream_is_refused,
            fifty_concurrent_orders_for_ten_units_reserve_exactly_ten,
            commands_on_one_stream_through_one_handler_queue_instead_of_conflicting,
            exhausted_retries_return_a_typed_conflict,
            a_stream_of_ten_thousand_events_loads_from_a_snapshot,
            a_snapshot_of_another_format_is_ignored_and_replaced,
            order_placed_v1_events_stored_earlier_are_read_as_v2,
            a_remembered_state_moved_by_another_writer_is_reloaded_on_conflict,
            a_refusal_on_remembered_state_is_checked_against_the_log,
            a_creating_command_for_a_stream_that_exists_is_decided_on_the_log,
        );
    };
    (@cases $open:path; $($case:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                let Some((store, cleanup)) = $open().await else { return };
                crate::suite::$case(store).await;
                cleanup.run().await;
            }
        )*
    };
}
pub(crate) use handler_suite;

const TRACEPARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

pub async fn a_command_appends_events_stamped_with_every_metadata_field(store: Store) {
    let config = HandlerConfig { traceparent: Some(Arc::new(|| Some(TRACEPARENT.to_owned()))), ..HandlerConfig::default() };
    let inventory = handler::<Inventory>(&store, config);
    let sku = fresh_sku();
    let first = inventory.handle(restock(&sku, 3).by("clerk-1")).await.unwrap();
    assert!(!first.replayed);
    assert_eq!((first.version, first.events.len(), first.attempts), (1, 1, 1));
    assert_eq!(first.events[0].event_id, strata_commands::event_id(first.command_id, 0));

    let correlation_id = Uuid::new_v4();
    let causation_id = Uuid::new_v4();
    let mut second = restock(&sku, 2);
    second.context = CommandContext {
        correlation_id: Some(correlation_id),
        causation_id: Some(causation_id),
        actor: Some("saga".into()),
        traceparent: Some("00-11111111111111111111111111111111-2222222222222222-01".into()),
    };
    let second_id = second.command_id;
    inventory.handle(second).await.unwrap();

    let events = store.read_stream(&inventory_stream(&sku), ReadStream::forward(10)).await.unwrap();
    assert_eq!(
        events[0].metadata,
        EventMetadata {
            correlation_id: Some(first.command_id),
            causation_id: Some(first.command_id),
            traceparent: Some(TRACEPARENT.into()),
            actor: Some("clerk-1".into()),
            command_id: Some(first.command_id),
        },
        "defaults: correlation and causation are the command, traceparent from the source"
    );
    assert_eq!(
        events[1].metadata,
        EventMetadata {
            correlation_id: Some(correlation_id),
            causation_id: Some(causation_id),
            traceparent: Some("00-11111111111111111111111111111111-2222222222222222-01".into()),
            actor: Some("saga".into()),
            command_id: Some(second_id),
        },
        "the command's context wins"
    );
    assert_eq!(inventory.load(sku.as_str()).await.unwrap().state.on_hand, 5);
}

pub async fn a_refused_command_writes_nothing(store: Store) {
    let inventory = handler::<Inventory>(&store, HandlerConfig::default());
    let sku = fresh_sku();
    let err = inventory.handle(reserve(&sku, Uuid::new_v4(), 1)).await.unwrap_err();
    assert!(matches!(err, CommandError::Rejected(InventoryError::UnknownSku { .. })), "{err:?}");
    inventory.handle(restock(&sku, 1)).await.unwrap();
    let err = inventory.handle(reserve(&sku, Uuid::new_v4(), 1)).await.unwrap_err();
    assert!(matches!(err, CommandError::Rejected(InventoryError::NoPrice { .. })), "{err:?}");
    inventory.handle(price(&sku)).await.unwrap();
    let err = inventory.handle(reserve(&sku, Uuid::new_v4(), 0)).await.unwrap_err();
    assert!(matches!(err, CommandError::Rejected(InventoryError::InvalidQuantity(_))), "{err:?}");
    let err = inventory.handle(reserve(&sku, Uuid::new_v4(), 2)).await.unwrap_err();
    assert!(matches!(err, CommandError::Rejected(InventoryError::OutOfStock { .. })), "{err:?}");
    assert_eq!(stream_len(&store, &inventory_stream(&sku)).await, 2, "the restock and the price");
}

pub async fn repeating_a_command_id_returns_the_first_outcome_and_writes_nothing(store: Store) {
    let inventory = handler::<Inventory>(&store, HandlerConfig::default());
    let sku = fresh_sku();
    let restocked = restock(&sku, 5);
    let first_restock = inventory.handle(restocked.clone()).await.unwrap();
    inventory.handle(price(&sku)).await.unwrap();
    let reservation = reserve(&sku, Uuid::new_v4(), 2);
    let first_reservation = inventory.handle(reservation.clone()).await.unwrap();
    inventory.handle(reserve(&sku, Uuid::new_v4(), 3)).await.unwrap();

    // The state moved on (nothing is available now, and the same order is
    // already reserved): the repeat must still be the first outcome.
    let restarted = handler::<Inventory>(&store, HandlerConfig::default());
    for (envelope, first) in [(reservation, &first_reservation), (restocked, &first_restock)] {
        let again = restarted.handle(envelope).await.unwrap();
        assert!(again.replayed, "{again:?}");
        assert_eq!(again.events, first.events);
        assert_eq!(again.version, first.version);
    }
    assert_eq!(stream_len(&store, &inventory_stream(&sku)).await, 4);
    let state = restarted.load(sku.as_str()).await.unwrap().state;
    assert_eq!((state.on_hand, state.reserved()), (5, 5));
}

pub async fn concurrent_copies_of_a_command_have_exactly_one_effect(store: Store) {
    let inventory = handler::<Inventory>(&store, HandlerConfig::default());
    let sku = fresh_sku();
    inventory.handle(restock(&sku, 10)).await.unwrap();
    inventory.handle(price(&sku)).await.unwrap();
    let reservation = reserve(&sku, Uuid::new_v4(), 4);
    let copies: Vec<_> = (0..8)
        .map(|_| {
            let inventory = handler::<Inventory>(&store, HandlerConfig::default());
            let reservation = reservation.clone();
            tokio::spawn(async move { inventory.handle(reservation).await })
        })
        .collect();
    let mut outcomes = Vec::new();
    for copy in copies {
        outcomes.push(copy.await.unwrap().expect("every copy gets the outcome"));
    }
    let fresh = outcomes.iter().filter(|outcome| !outcome.replayed).count();
    assert!(fresh <= 1, "{fresh} copies claim to have written");
    assert!(outcomes.windows(2).all(|pair| pair[0].events == pair[1].events), "{outcomes:?}");
    assert_eq!(stream_len(&store, &inventory_stream(&sku)).await, 3);
    assert_eq!(inventory.load(sku.as_str()).await.unwrap().state.reserved(), 4);
}

pub async fn a_reply_lost_after_the_append_is_answered_when_the_command_is_sent_again(store: Store) {
    let sku = fresh_sku();
    let crashing = CommandHandler::<Inventory>::new(
        Arc::new(Faulty { inner: store.clone(), fault: Fault::LoseReplyAfterAppend }),
        Some(store.clone()),
        HandlerConfig::default(),
    );
    let command = restock(&sku, 7);
    let err = crashing.handle(command.clone()).await.unwrap_err();
    assert!(matches!(err, CommandError::Append(_)), "{err:?}");
    assert_eq!(stream_len(&store, &inventory_stream(&sku)).await, 1, "the append happened");

    let restarted = handler::<Inventory>(&store, HandlerConfig::default());
    let outcome = restarted.handle(command).await.unwrap();
    assert!(outcome.replayed);
    let stored = store.read_stream(&inventory_stream(&sku), ReadStream::forward(10)).await.unwrap();
    assert_eq!(stored.len(), 1, "sending the command again wrote nothing");
    assert_eq!(outcome.events[0].position, stored[0].position);
    assert_eq!(restarted.load(sku.as_str()).await.unwrap().state.on_hand, 7);
}

pub async fn a_command_id_used_on_another_stream_is_refused(store: Store) {
    let inventory = handler::<Inventory>(&store, HandlerConfig::default());
    let (first_sku, second_sku) = (fresh_sku(), fresh_sku());
    let command_id = Uuid::new_v4();
    let command = |sku| Envelope::new(command_id, InventoryCommand::Restock { sku, quantity: 1, unit_price_cents: None, at: at() });
    inventory.handle(command(first_sku.clone())).await.unwrap();
    let err = inventory.handle(command(second_sku.clone())).await.unwrap_err();
    match err {
        CommandError::CommandIdReused { command_id: reused, stream_id } => {
            assert_eq!((reused, stream_id), (command_id, inventory_stream(&first_sku)));
        }
        other => panic!("expected CommandIdReused, got {other:?}"),
    }
    assert_eq!(stream_len(&store, &inventory_stream(&second_sku)).await, 0);
}

pub async fn fifty_concurrent_orders_for_ten_units_reserve_exactly_ten(store: Store) {
    let inventory = handler::<Inventory>(&store, HandlerConfig::default());
    let sku = fresh_sku();
    inventory.handle(restock(&sku, 10)).await.unwrap();
    inventory.handle(price(&sku)).await.unwrap();
    // One handler per order, as if each came from its own process: a shared
    // handler would queue them per stream and never conflict.
    let orders: Vec<_> = (0..50)
        .map(|_| {
            let inventory = handler::<Inventory>(&store, HandlerConfig::default());
            let reservation = reserve(&sku, Uuid::new_v4(), 1);
            tokio::spawn(async move { inventory.handle(reservation).await })
        })
        .collect();
    let (mut reserved, mut refused, mut attempts) = (0, 0, 0);
    for order in orders {
        match order.await.unwrap() {
            Ok(outcome) => {
                reserved += 1;
                attempts += outcome.attempts;
            }
            Err(CommandError::Rejected(InventoryError::OutOfStock { available: 0, .. })) => refused += 1,
            Err(other) => panic!("a conflict or failure surfaced: {other:?}"),
        }
    }
    assert_eq!((reserved, refused), (10, 40));
    let loaded = inventory.load(sku.as_str()).await.unwrap();
    assert_eq!((loaded.state.on_hand, loaded.state.reserved(), loaded.state.available()), (10, 10, 0));
    assert_eq!(loaded.version, 12);
    eprintln!("{}: 10 reservations took {attempts} attempts", store.backend_name());
}

pub async fn commands_on_one_stream_through_one_handler_queue_instead_of_conflicting(store: Store) {
    let inventory = handler::<Inventory>(&store, HandlerConfig::default());
    let sku = fresh_sku();
    let tasks: Vec<_> = (0..20)
        .map(|_| {
            let inventory = inventory.clone();
            let command = restock(&sku, 1);
            tokio::spawn(async move { inventory.handle(command).await })
        })
        .collect();
    for task in tasks {
        let outcome = task.await.unwrap().unwrap();
        assert_eq!(outcome.attempts, 1, "a command conflicted with its own handler: {outcome:?}");
    }
    assert_eq!(inventory.load(sku.as_str()).await.unwrap().state.on_hand, 20);
}

pub async fn exhausted_retries_return_a_typed_conflict(store: Store) {
    let sku = fresh_sku();
    let inventory = handler::<Inventory>(&store, HandlerConfig::default());
    inventory.handle(restock(&sku, 1)).await.unwrap();
    inventory.handle(price(&sku)).await.unwrap();
    let contended = CommandHandler::<Inventory>::new(
        Arc::new(Faulty { inner: store.clone(), fault: Fault::RaceEveryAppend }),
        None,
        HandlerConfig { max_attempts: 3, ..HandlerConfig::default() },
    );
    let err = contended.handle(reserve(&sku, Uuid::new_v4(), 1)).await.unwrap_err();
    match err {
        CommandError::Conflict { stream_id, attempts, actual } => {
            assert_eq!((stream_id, attempts), (inventory_stream(&sku), 3));
            assert_eq!(actual, 5, "the rival had appended three times");
        }
        other => panic!("expected a conflict, got {other:?}"),
    }
    let events = store.read_stream(&inventory_stream(&sku), ReadStream::forward(10)).await.unwrap();
    assert!(events.iter().all(|event| event.event_type != "StockReserved"), "the reservation was written");
}

/// Appends `count` restocks of one unit straight to the store, 1,000 per append.
async fn restocked_directly(store: &Store, stream_id: &StreamId, count: usize) {
    let sku = strata_schemas::values::Sku::parse(stream_id.id()).unwrap();
    let mut version = 0;
    while version < count {
        let batch = (count - version).min(1_000);
        let events = (0..batch)
            .map(|_| {
                let event =
                    InventoryEvent::from(StockRestocked { sku: sku.clone(), quantity: Quantity::new(1).unwrap(), restocked_at: at() });
                NewEvent {
                    event_id: Uuid::new_v4(),
                    event_type: event.event_type().into(),
                    schema_version: event.schema_version(),
                    payload: event.to_payload(),
                    metadata: EventMetadata::default(),
                }
            })
            .collect();
        store
            .append(vec![StreamAppend { stream_id: stream_id.clone(), expected: ExpectedVersion::Exact(version as u64), events }])
            .await
            .unwrap();
        version += batch;
    }
}

pub async fn a_stream_of_ten_thousand_events_loads_from_a_snapshot(store: Store) {
    let sku = fresh_sku();
    let stream_id = inventory_stream(&sku);
    restocked_directly(&store, &stream_id, 10_000).await;
    let inventory = handler::<Inventory>(&store, HandlerConfig::default());
    let cold = inventory.load(sku.as_str()).await.unwrap();
    assert_eq!((cold.snapshot_version, cold.events_folded), (None, 10_000));

    inventory.handle(restock(&sku, 5)).await.unwrap();
    let snapshot = store.load_snapshot(&stream_id).await.unwrap().expect("a snapshot was taken");
    assert_eq!((snapshot.stream_version, snapshot.snapshot_version), (10_001, Inventory::SNAPSHOT_VERSION));

    let warm = inventory.load(sku.as_str()).await.unwrap();
    assert_eq!((warm.snapshot_version, warm.events_folded, warm.version), (Some(10_001), 0, 10_001));
    let without_snapshots = CommandHandler::<Inventory>::new(store.clone(), None, HandlerConfig::default());
    let folded = without_snapshots.load(sku.as_str()).await.unwrap();
    assert_eq!(folded.events_folded, 10_001);
    assert_eq!(warm.state, folded.state, "the snapshot is the folded state");
    assert_eq!(warm.state.on_hand, 10_005);

    inventory.handle(restock(&sku, 1)).await.unwrap();
    let after = inventory.load(sku.as_str()).await.unwrap();
    assert_eq!((after.snapshot_version, after.events_folded, after.state.on_hand), (Some(10_001), 1, 10_006));
}

/// Inventory with a new state format: its snapshots are not Inventory's.
enum InventoryNextFormat {}

impl Aggregate for InventoryNextFormat {
    const CATEGORY: &'static str = Inventory::CATEGORY;
    const SNAPSHOT_VERSION: u32 = Inventory::SNAPSHOT_VERSION + 1;
    type State = <Inventory as Aggregate>::State;
    type Command = <Inventory as Aggregate>::Command;
    type Event = <Inventory as Aggregate>::Event;
    type Error = <Inventory as Aggregate>::Error;

    fn aggregate_id(command: &Self::Command) -> String {
        Inventory::aggregate_id(command)
    }
    fn decide(state: &Self::State, command: Self::Command) -> Result<Vec<Self::Event>, Self::Error> {
        Inventory::decide(state, command)
    }
    fn evolve(state: Self::State, event: &Self::Event) -> Self::State {
        Inventory::evolve(state, event)
    }
}

pub async fn a_snapshot_of_another_format_is_ignored_and_replaced(store: Store) {
    let sku = fresh_sku();
    let stream_id = inventory_stream(&sku);
    restocked_directly(&store, &stream_id, 150).await;
    handler::<Inventory>(&store, HandlerConfig::default()).handle(restock(&sku, 1)).await.unwrap();
    assert_eq!(store.load_snapshot(&stream_id).await.unwrap().unwrap().snapshot_version, 1);

    let next = handler::<InventoryNextFormat>(&store, HandlerConfig::default());
    let loaded = next.load(sku.as_str()).await.unwrap();
    assert_eq!((loaded.snapshot_version, loaded.events_folded), (None, 151), "the old format was used");
    next.handle(restock(&sku, 1)).await.unwrap();
    let snapshot = store.load_snapshot(&stream_id).await.unwrap().unwrap();
    assert_eq!((snapshot.snapshot_version, snapshot.stream_version), (2, 152));
    assert_eq!(next.load(sku.as_str()).await.unwrap().events_folded, 0);
}

pub async fn order_placed_v1_events_stored_earlier_are_read_as_v2(store: Store) {
    let order_id = Uuid::new_v4();
    let stream_id = StreamId::new("order", order_id).unwrap();
    let v1_event_id = Uuid::new_v4();
    store
        .append(vec![StreamAppend {
            stream_id: stream_id.clone(),
            expected: ExpectedVersion::NoStream,
            events: vec![NewEvent {
                event_id: v1_event_id,
                event_type: "OrderPlaced".into(),
                schema_version: 1,
                payload: json!({
                    "orderId": order_id,
                    "customerId": "c-1",
                    "lines": [
                        { "sku": "SKU-1", "quantity": 2, "unitPrice": "12.50" },
                        { "sku": "SKU-2", "quantity": 1, "unitPrice": "0.99" }
                    ],
                    "paymentMethod": "card",
                    "shippingAddress": { "name": "A", "street": "S 1", "city": "C", "postalCode": "1000", "country": "BE" }
                }),
                metadata: EventMetadata::default(),
            }],
        }])
        .await
        .unwrap();

    let orders = handler::<Order>(&store, HandlerConfig::default());
    orders
        .handle(Envelope::new(Uuid::new_v4(), OrderCommand::Confirm { order_id, at: at() }))
        .await
        .expect("a v1 order is confirmed like any other");
    let state = orders.load(&order_id.to_string()).await.unwrap().state;
    let placed = state.placed.expect("placed");
    assert_eq!(placed.total_cents.get(), 2599);
    assert_eq!(placed.lines[0].unit_price_cents.get(), 1250);
    assert_eq!(placed.placed_at, None, "v1 did not record it");
    let stored = store.read_event(v1_event_id, Form::AsStored).await.unwrap().unwrap();
    assert_eq!(stored.schema_version, 1, "the log keeps what was written");
    let ids: HashSet<Uuid> = [v1_event_id].into();
    assert!(ids.contains(&stored.event_id));
}

pub async fn a_remembered_state_moved_by_another_writer_is_reloaded_on_conflict(store: Store) {
    let here = handler::<Inventory>(&store, HandlerConfig::default());
    let elsewhere = handler::<Inventory>(&store, HandlerConfig::default());
    let sku = fresh_sku();
    here.handle(restock(&sku, 2)).await.unwrap();
    here.handle(price(&sku)).await.unwrap();
    elsewhere.handle(reserve(&sku, Uuid::new_v4(), 2)).await.unwrap();
    // `here` remembers 2 available at version 2; the log is at version 3 with 0.
    let outcome = here.handle(restock(&sku, 1)).await.unwrap();
    assert_eq!((outcome.attempts, outcome.version), (2, 4), "the stale state must conflict once, then reload");
    let err = here.handle(reserve(&sku, Uuid::new_v4(), 2)).await.unwrap_err();
    assert!(matches!(err, CommandError::Rejected(InventoryError::OutOfStock { requested: 2, available: 1, .. })), "{err:?}");
}

pub async fn a_refusal_on_remembered_state_is_checked_against_the_log(store: Store) {
    let here = handler::<Inventory>(&store, HandlerConfig::default());
    let elsewhere = handler::<Inventory>(&store, HandlerConfig::default());
    let sku = fresh_sku();
    let order_id = Uuid::new_v4();
    here.handle(restock(&sku, 1)).await.unwrap();
    here.handle(price(&sku)).await.unwrap();
    here.handle(reserve(&sku, order_id, 1)).await.unwrap();
    // `here` remembers nothing available; another process releases the unit.
    elsewhere.handle(Envelope::new(Uuid::new_v4(), InventoryCommand::Release { sku: sku.clone(), order_id, at: at() })).await.unwrap();
    let outcome = here.handle(reserve(&sku, Uuid::new_v4(), 1)).await.expect("the unit is available in the log");
    assert_eq!(outcome.version, 5);
}

pub async fn a_creating_command_for_a_stream_that_exists_is_decided_on_the_log(store: Store) {
    use strata_commands::payments::{Payment, PaymentCommand, PaymentError};
    let order_id = Uuid::new_v4();
    let authorize = |amount_cents| PaymentCommand::Authorize { order_id, amount_cents, payment_method: "card".into(), at: at() };
    let first = Envelope::new(Uuid::new_v4(), authorize(100));
    let here = handler::<Payment>(&store, HandlerConfig::default());
    let created = here.handle(first.clone()).await.unwrap();
    assert_eq!((created.version, created.attempts), (1, 1), "a new stream is created without a conflict");

    // Another process, which never read the stream, creates it again.
    let elsewhere = handler::<Payment>(&store, HandlerConfig::default());
    let err = elsewhere.handle(Envelope::new(Uuid::new_v4(), authorize(200))).await.unwrap_err();
    assert!(matches!(err, CommandError::Rejected(PaymentError::AlreadyAuthorized { .. })), "{err:?}");
    // The same command sent again there is its first outcome, not a refusal.
    let again = handler::<Payment>(&store, HandlerConfig::default()).handle(first).await.unwrap();
    assert!(again.replayed, "{again:?}");
    assert_eq!(again.events, created.events);
    let payment = StreamId::new("payment", order_id).unwrap();
    assert_eq!(stream_len(&store, &payment).await, 1);
}
