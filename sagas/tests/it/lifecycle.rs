//! The order lifecycle's odd paths, with the real command handlers on the
//! memory log and a manual clock: an order for a SKU never stocked, a
//! customer cancelling at every step and after confirmation, a shipped order,
//! forward commands delivered after their compensation (fencing), and a
//! compensation that keeps failing until the saga is parked and resumed.

use std::sync::Arc;

use chrono::Duration;
use strata_commands::inventory::Inventory;
use strata_commands::orders::{AddressInput, LineInput, OrderCommand, OrderError, OrderStatus, PlaceOrder};
use strata_commands::payments::{Payment, PaymentStatus};
use strata_commands::shipping::{Shipment, ShipmentStatus};
use strata_commands::{CommandError, Envelope};
use strata_sagas::fulfilment::Fulfilment;
use strata_sagas::state::SagaStatus;
use strata_sagas::{Clock, Driven, Outcome, Phase, Saga};
use strata_schemas::values::FulfilmentStep;
use strata_store::{EventReader, ReadStream, RecordedEvent, StreamId};
use uuid::Uuid;

use crate::support::*;

fn place_order(lines: &[(&str, i64)], payment_method: &str) -> PlaceOrder {
    PlaceOrder {
        order_id: Uuid::new_v4(),
        customer_id: "c-odd".into(),
        lines: lines
            .iter()
            .map(|(sku, quantity)| LineInput {
                sku: (*sku).into(),
                quantity: *quantity,
                unit_price_cents: strata_sagas::fulfilment::scenario::unit_price(sku),
            })
            .collect(),
        payment_method: payment_method.into(),
        shipping_address: AddressInput {
            name: "Ada".into(),
            street: "Rue 1".into(),
            city: "Gent".into(),
            postal_code: "9000".into(),
            country: "BE".into(),
        },
        at: t0(),
    }
}

async fn place(world: &World, place: PlaceOrder) -> (Uuid, RecordedEvent) {
    let order_id = place.order_id;
    world.orders.handle(Envelope::new(Uuid::new_v4(), OrderCommand::Place(place))).await.unwrap();
    let events = world.store.read_stream(&StreamId::new("order", order_id).unwrap(), ReadStream::forward(1)).await.unwrap();
    (order_id, events[0].clone())
}

/// Asserts that nothing is held for `order_id`: no reservation of `skus`, no
/// payment authorized or captured, no shipment booked.
async fn assert_nothing_held(world: &World, order_id: Uuid, skus: &[&str]) {
    for sku in skus {
        let stock = world.state::<Inventory>(sku).await;
        assert!(!stock.reservations.contains_key(&order_id), "{sku} still reserved for {order_id}: {stock:?}");
    }
    let payment = world.state::<Payment>(&order_id.to_string()).await;
    assert!(!matches!(payment.status, Some(PaymentStatus::Authorized | PaymentStatus::Captured)), "payment left {:?}", payment.status);
    let shipment = world.state::<Shipment>(&order_id.to_string()).await;
    assert_ne!(shipment.status, Some(ShipmentStatus::Created), "shipment left booked");
}

#[tokio::test]
async fn an_order_for_a_sku_never_stocked_is_cancelled_at_reserve_stock_at_once_and_settles() {
    let world = World::new(4).await;
    let orchestrator = world.orchestrator(Arc::new(world.services()));
    let (order_id, trigger) = place(&world, place_order(&[("SKU-0", 1), ("SKU-NEVER-STOCKED", 2)], "card")).await;
    // No clock moves: it settles in one drive, with no retry and no timer.
    assert_eq!(start_and_drive(&orchestrator, &trigger).await, Driven::Finished(SagaStatus::Aborted));
    assert_eq!(orchestrator.next_due(), None);
    let order = world.order(order_id).await;
    assert_eq!((order.status, order.failed_step), (Some(OrderStatus::Cancelled), Some(FulfilmentStep::ReserveStock)));
    assert!(order.cancel_reason.as_deref().unwrap().contains("unknown sku SKU-NEVER-STOCKED"), "{order:?}");
    let saga_events = world.store.read_stream(&StreamId::new("fulfilment", order_id).unwrap(), ReadStream::forward(100)).await.unwrap();
    assert!(saga_events.iter().all(|e| e.event_type != "SagaStepRetryScheduled"), "nothing retried");
    assert!(saga_events.len() <= 8, "{} saga events", saga_events.len());
    assert_nothing_held(&world, order_id, &["SKU-0", "SKU-NEVER-STOCKED"]).await;
    // Restocking the SKU later does not let the old reservation in.
    let inventory: strata_commands::CommandHandler<Inventory> =
        strata_commands::CommandHandler::new(world.store.clone(), None, Default::default());
    let sku = strata_schemas::values::Sku::parse("SKU-NEVER-STOCKED").unwrap();
    inventory
        .handle(Envelope::new(
            Uuid::new_v4(),
            strata_commands::inventory::InventoryCommand::Restock { sku: sku.clone(), quantity: 5, unit_price_cents: Some(100), at: t0() },
        ))
        .await
        .unwrap();
    let late = strata_commands::inventory::InventoryCommand::Reserve { sku, order_id, quantity: 2, unit_price_cents: Some(100), at: t0() };
    assert!(inventory.handle(Envelope::new(Uuid::new_v4(), late)).await.is_err(), "the order's reservation is fenced");
    assert_clean(&world.audit().await);
}

#[tokio::test]
async fn a_customer_cancelling_a_confirmed_order_gets_the_payment_refunded_the_shipment_cancelled_and_the_stock_returned() {
    let world = World::new(4).await;
    let orchestrator = world.orchestrator(Arc::new(world.services()));
    let before = world.state::<Inventory>("SKU-0").await;
    let (order_id, trigger) = place(&world, place_order(&[("SKU-0", 3), ("SKU-1", 1)], "card")).await;
    assert_eq!(start_and_drive(&orchestrator, &trigger).await, Driven::Finished(SagaStatus::Completed));
    assert_eq!(world.state::<Inventory>("SKU-0").await.on_hand, before.on_hand - 3, "committed");

    world.customer_cancels(&orchestrator, order_id).await.unwrap();
    let saga = orchestrator.load(order_id).await.unwrap();
    assert_eq!(saga.status, SagaStatus::Aborted, "{saga:?}");
    assert_eq!(world.order(order_id).await.status, Some(OrderStatus::Cancelled));
    assert_eq!(world.state::<Payment>(&order_id.to_string()).await.status, Some(PaymentStatus::Refunded));
    assert_eq!(world.state::<Shipment>(&order_id.to_string()).await.status, Some(ShipmentStatus::Cancelled));
    let after = world.state::<Inventory>("SKU-0").await;
    assert_eq!((after.on_hand, after.available()), (before.on_hand, before.available()), "committed units are back");
    let report = world.audit().await;
    assert_clean(&report);
    assert_eq!(report.stock["SKU-0"].returned, 3);
    // A second cancellation is refused by the order and changes nothing.
    let version = saga.version;
    assert!(matches!(world.customer_cancels(&orchestrator, order_id).await, Err(CommandError::Rejected(OrderError::WrongStatus { .. }))));
    assert_eq!(orchestrator.load(order_id).await.unwrap().version, version);
}

#[tokio::test]
async fn a_shipped_order_cannot_be_cancelled_and_keeps_its_effects() {
    let world = World::new(4).await;
    let orchestrator = world.orchestrator(Arc::new(world.services()));
    let (order_id, trigger) = place(&world, place_order(&[("SKU-0", 1)], "card")).await;
    start_and_drive(&orchestrator, &trigger).await;
    world.orders.handle(Envelope::new(Uuid::new_v4(), OrderCommand::MarkShipped { order_id, at: t0() })).await.unwrap();
    let refused = world.customer_cancels(&orchestrator, order_id).await;
    assert!(matches!(refused, Err(CommandError::Rejected(OrderError::WrongStatus { status: OrderStatus::Shipped, .. }))), "{refused:?}");
    assert_eq!(orchestrator.load(order_id).await.unwrap().status, SagaStatus::Completed);
    assert_eq!(world.state::<Payment>(&order_id.to_string()).await.status, Some(PaymentStatus::Captured));
    assert_clean(&world.audit().await);
}

/// The customer cancels while the saga waits at `step` (its action got no
/// answer); with `applied`, the action did happen (its reply was lost), else
/// it is delivered only after the compensation ran.
async fn cancel_while_waiting_at(step: &'static str, applied: bool) {
    let world = World::new(4).await;
    let skus = ["SKU-0", "SKU-1"];
    let (order_id, trigger) = place(&world, place_order(&[("SKU-0", 2), ("SKU-1", 1)], "card")).await;
    let services = Arc::new(HookedServices::new(world.services(), &[order_id], move |name, phase, _| {
        if name == step && phase == Phase::Action {
            Intercept::Hold(Outcome::NoAnswer)
        } else {
            Intercept::Pass
        }
    }));
    let orchestrator = world.orchestrator(services.clone());
    assert!(matches!(start_and_drive(&orchestrator, &trigger).await, Driven::Waiting(_)), "waits at {step}");
    if applied {
        services.deliver_held().await;
    }
    services.set_hook(|_, _, _| Intercept::Pass);
    world.customer_cancels(&orchestrator, order_id).await.unwrap_or_else(|e| panic!("cancel at {step}: {e}"));
    world.run_timers(&orchestrator).await;
    if !applied {
        for outcome in services.deliver_held().await {
            assert!(matches!(outcome, Outcome::Refused(_) | Outcome::Done), "late {step}: {outcome:?}");
        }
    }
    let saga = orchestrator.load(order_id).await.unwrap();
    assert_eq!(saga.status, SagaStatus::Aborted, "cancelled at {step} (applied {applied}): {saga:?}");
    assert_eq!(world.order(order_id).await.status, Some(OrderStatus::Cancelled));
    assert_nothing_held(&world, order_id, &skus).await;
    let report = world.audit().await;
    assert!(report.violations.is_empty(), "cancelled at {step} (applied {applied}): {:#?}", report.violations);
}

#[tokio::test]
async fn a_cancellation_racing_the_saga_at_every_step_ends_with_nothing_held() {
    for step in Fulfilment::STEPS {
        for applied in [true, false] {
            cancel_while_waiting_at(step.name, applied).await;
        }
    }
}

#[tokio::test]
async fn a_forward_command_delivered_after_its_compensation_is_refused_and_changes_nothing() {
    for step in ["RESERVE_STOCK", "AUTHORIZE_PAYMENT", "CREATE_SHIPMENT"] {
        let world = World::new(4).await;
        let (order_id, trigger) = place(&world, place_order(&[("SKU-0", 2), ("SKU-1", 1)], "card")).await;
        let services = Arc::new(HookedServices::new(world.services(), &[order_id], move |name, phase, _| {
            if name == step && phase == Phase::Action {
                Intercept::Hold(Outcome::NoAnswer)
            } else {
                Intercept::Pass
            }
        }));
        let orchestrator = world.orchestrator(services.clone());
        start_and_drive(&orchestrator, &trigger).await;
        // Past the step's deadline the saga compensates: nothing to undo.
        world.run_timers(&orchestrator).await;
        let order = world.order(order_id).await;
        assert_eq!(order.status, Some(OrderStatus::Cancelled), "{step}");
        assert!(order.cancel_reason.as_deref().unwrap().contains("deadline passed"), "{order:?}");
        // Now the delayed command arrives: every copy (one per attempt) is refused.
        let outcomes = services.deliver_held().await;
        assert!(!outcomes.is_empty());
        for outcome in outcomes {
            assert!(matches!(&outcome, Outcome::Refused(reason) if reason.contains("before this")), "late {step}: {outcome:?}");
        }
        assert_nothing_held(&world, order_id, &["SKU-0", "SKU-1"]).await;
        assert_clean(&world.audit().await);
    }
}

#[tokio::test]
async fn a_compensation_that_keeps_failing_parks_the_saga_until_an_operator_resumes_it() {
    let mut world = World::new(4).await;
    world.config.park_after = Duration::seconds(10);
    let (order_id, trigger) = place(&world, place_order(&[("SKU-0", 1)], "card-declined")).await;
    let services = Arc::new(HookedServices::new(world.services(), &[order_id], |name, phase, _| {
        if name == "RESERVE_STOCK" && phase == Phase::Compensation {
            Intercept::Answer(Outcome::Transient("inventory database unreachable".into()))
        } else {
            Intercept::Pass
        }
    }));
    let orchestrator = world.orchestrator(services.clone());
    start_and_drive(&orchestrator, &trigger).await;
    world.run_timers(&orchestrator).await;
    let saga = orchestrator.load(order_id).await.unwrap();
    assert_eq!(saga.status, SagaStatus::Stuck, "{saga:?}");
    let stuck = strata_sagas::list_stuck(&*world.store, &*world.store, strata_sagas::fulfilment::CATEGORY).await.unwrap();
    assert_eq!(stuck.len(), 1);
    assert_eq!((stuck[0].saga_id, stuck[0].step.as_str()), (order_id, "RESERVE_STOCK"));
    assert!(stuck[0].reason.contains("inventory database unreachable"), "{:?}", stuck[0]);
    let report = world.audit().await;
    let rules: Vec<&str> = report.violations.iter().map(|v| v.rule).collect();
    assert!(rules.contains(&"saga-stuck"), "the audit reports the parked saga: {rules:?}");
    let counts = strata_sagas::count_in_flight(&*world.store, &*world.store, strata_sagas::fulfilment::CATEGORY).await.unwrap();
    assert_eq!((counts.running, counts.compensating, counts.stuck), (0, 0, 1));
    // The recovery scan leaves it alone.
    assert_eq!(orchestrator.recover().await.unwrap(), 0);

    // The operator fixes the inventory and resumes it.
    services.set_hook(|_, _, _| Intercept::Pass);
    assert!(strata_sagas::resume::<Fulfilment>(&*world.store, order_id, "operator", world.clock.now()).await.unwrap());
    assert!(
        !strata_sagas::resume::<Fulfilment>(&*world.store, order_id, "operator", world.clock.now()).await.unwrap(),
        "only a parked saga resumes"
    );
    let picked = orchestrator.scan_in_flight(true).await.unwrap();
    assert_eq!(picked, vec![order_id], "a resumed saga is picked up at the next sweep");
    assert_eq!(orchestrator.drive(order_id).await.unwrap(), Driven::Finished(SagaStatus::Aborted));
    assert_eq!(world.order(order_id).await.status, Some(OrderStatus::Cancelled));
    assert_clean(&world.audit().await);
}
