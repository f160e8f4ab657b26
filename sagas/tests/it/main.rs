//! Integration tests of the saga orchestrator with the real command
//! handlers on the in-memory log: every branch of the scenario, a failure
//! sweep (a refusal at every step, every action and compensation repeated
//! and its reply lost), deadlines on a manual clock, and a crash at every
//! command of a saga followed by recovery in a new orchestrator.
#![allow(unreachable_pub, missing_docs)]

mod lifecycle;
mod model;
mod support;

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration as StdDuration, Instant};

use chrono::Duration;
use strata_commands::orders::OrderStatus;
use strata_sagas::fulfilment::scenario::Expected;
use strata_sagas::fulfilment::Fulfilment;
use strata_sagas::state::SagaStatus;
use strata_sagas::{Driven, Orchestrator};
use strata_schemas::values::FulfilmentStep;
use support::*;

async fn assert_ended_as(world: &World, order_id: uuid::Uuid, expected: Expected) {
    let order = world.order(order_id).await;
    match expected {
        Expected::Confirmed => assert_eq!(order.status, Some(OrderStatus::Confirmed), "order {order_id}: {order:?}"),
        Expected::Cancelled(step) => {
            assert_eq!(order.status, Some(OrderStatus::Cancelled), "order {order_id}: {order:?}");
            assert_eq!(order.failed_step, Some(step), "order {order_id}: {order:?}");
            assert!(order.cancel_reason.as_deref().is_some_and(|r| !r.is_empty()));
        }
    }
}

#[tokio::test]
async fn every_order_of_the_scenario_ends_as_its_rules_dictate_and_the_invariants_hold() {
    let world = World::new(40).await;
    let orchestrator = world.orchestrator(Arc::new(world.services()));
    let mut placed = Vec::new();
    for index in 0..40 {
        let (trigger, expected) = world.place(index, true).await;
        start_and_drive(&orchestrator, &trigger).await;
        placed.push((trigger, expected));
    }
    world.run_timers(&orchestrator).await;
    let mut branches = std::collections::BTreeSet::new();
    for (trigger, expected) in &placed {
        let order_id = trigger.stream_id.id().parse().unwrap();
        assert_ended_as(&world, order_id, *expected).await;
        branches.insert(format!("{expected:?}"));
    }
    assert_eq!(branches.len(), 4, "every branch is exercised: {branches:?}");
    let report = world.audit().await;
    assert_clean(&report);
    assert_eq!(report.sagas.get("COMPLETED").copied().unwrap_or(0) + report.sagas.get("ABORTED").copied().unwrap_or(0), 40);
}

#[tokio::test]
async fn failure_sweep_a_refusal_at_every_step_with_every_command_repeated_and_its_reply_lost() {
    let fault_sets: [&[Fault]; 4] = [&[], &[Fault::Repeat], &[Fault::LoseReplies], &[Fault::Repeat, Fault::LoseReplies]];
    let steps = [
        (Some("RESERVE_STOCK"), Expected::Cancelled(FulfilmentStep::ReserveStock)),
        (Some("AUTHORIZE_PAYMENT"), Expected::Cancelled(FulfilmentStep::AuthorizePayment)),
        (Some("CREATE_SHIPMENT"), Expected::Cancelled(FulfilmentStep::CreateShipment)),
        (Some("CONFIRM_ORDER"), Expected::Confirmed),
        (None, Expected::Confirmed),
    ];
    for faults in fault_sets {
        for (refused, expected) in steps {
            let world = World::new(4).await;
            // Order 0 has two lines, so reservations and releases are partial-able.
            let (trigger, _) = world.place(0, false).await;
            let order_id = trigger.stream_id.id().parse().unwrap();
            let mut all = faults.to_vec();
            all.extend(refused.map(Fault::Refuse));
            let services = FaultyServices::new(world.services(), &[order_id], all.clone());
            let orchestrator = world.orchestrator(Arc::new(services));
            start_and_drive(&orchestrator, &trigger).await;
            world.run_timers(&orchestrator).await;
            let state = orchestrator.load(order_id).await.unwrap();
            let order = world.order(order_id).await;
            match (refused, expected) {
                (Some("CONFIRM_ORDER"), _) => {
                    // The pivot itself refused: everything before it is undone
                    // and the order is cancelled without a fulfilment step.
                    assert_eq!(state.status, SagaStatus::Aborted, "{all:?}");
                    assert_eq!((order.status, order.failed_step), (Some(OrderStatus::Cancelled), None), "{all:?}");
                }
                _ => assert_ended_as(&world, order_id, expected).await,
            }
            let report = world.audit().await;
            assert!(report.violations.is_empty(), "{all:?}: {:#?}", report.violations);
        }
    }
}

#[tokio::test]
async fn a_payment_that_never_answers_cancels_the_order_after_its_deadline_on_a_manual_clock() {
    let world = World::new(20).await;
    let orchestrator = world.orchestrator(Arc::new(world.services()));
    // Scenario order 7 (seed 7) pays with card-no-answer.
    let (trigger, expected) = world.place(7, true).await;
    assert_eq!(expected, Expected::Cancelled(FulfilmentStep::AuthorizePayment));
    let order_id = trigger.stream_id.id().parse().unwrap();

    let Driven::Waiting(first_timer) = start_and_drive(&orchestrator, &trigger).await else { panic!("should wait") };
    assert!(first_timer > t0());
    // Just before the deadline: retried, still pending.
    world.clock.advance(world.config.step_deadline - Duration::milliseconds(10));
    orchestrator.fire_due().await.unwrap();
    assert_eq!(world.order(order_id).await.status, Some(OrderStatus::Pending));
    let state = orchestrator.load(order_id).await.unwrap();
    assert_eq!(state.status, SagaStatus::Running);
    assert!(state.attempts >= 2, "sent again while waiting: {state:?}");
    let deadline = orchestrator.next_due().expect("a timer is set");
    assert!(deadline <= t0() + world.config.step_deadline, "the next timer is the deadline at the latest");

    // Past the deadline: compensated and cancelled.
    world.clock.advance(Duration::milliseconds(20));
    orchestrator.fire_due().await.unwrap();
    let order = world.order(order_id).await;
    assert_eq!(order.status, Some(OrderStatus::Cancelled));
    assert_eq!(order.failed_step, Some(FulfilmentStep::AuthorizePayment));
    assert!(order.cancel_reason.as_deref().unwrap().contains("deadline passed"), "{order:?}");
    assert_clean(&world.audit().await);

    // A stale timer firing later changes nothing.
    let version = orchestrator.load(order_id).await.unwrap().version;
    world.clock.advance(Duration::seconds(60));
    assert_eq!(orchestrator.drive(order_id).await.unwrap(), Driven::Finished(SagaStatus::Aborted));
    assert_eq!(orchestrator.load(order_id).await.unwrap().version, version);
}

#[tokio::test]
async fn timers_are_durable_a_new_orchestrator_finds_a_waiting_saga_and_fires_its_deadline() {
    let world = World::new(20).await;
    let (trigger, _) = world.place(7, true).await;
    let order_id = trigger.stream_id.id().parse().unwrap();
    {
        let first = world.orchestrator(Arc::new(world.services()));
        assert!(matches!(start_and_drive(&first, &trigger).await, Driven::Waiting(_)));
    } // the first orchestrator and its in-memory timers are gone
    world.clock.advance(world.config.step_deadline + Duration::seconds(1));
    let second = world.orchestrator(Arc::new(world.services()));
    assert_eq!(second.recover().await.unwrap(), 1);
    assert_eq!(world.order(order_id).await.status, Some(OrderStatus::Cancelled));
    assert_eq!(second.recover().await.unwrap(), 0, "nothing left in flight");
}

/// Kills an orchestrator after its `k`-th service call (the call after it
/// never returns and the task is aborted there), then recovers with a new one.
async fn crash_at(index: usize, k: usize) -> (usize, bool) {
    let world = World::new(4).await;
    let (trigger, expected) = world.place(index, true).await;
    assert_eq!(expected == Expected::Confirmed, index == 0, "order {index} is not the branch this test expects");
    let order_id = trigger.stream_id.id().parse().unwrap();
    let mut services = FaultyServices::new(world.services(), &[order_id], vec![]);
    services.hang_after = Some(k);
    let services = Arc::new(services);
    let first: Arc<Orchestrator<Fulfilment>> = Arc::new(world.orchestrator(services.clone()));
    let task = {
        let (first, trigger) = (first.clone(), trigger.clone());
        tokio::spawn(async move {
            let saga_id = first.start(&trigger).await.unwrap().unwrap();
            first.drive(saga_id).await.unwrap()
        })
    };
    let deadline = Instant::now() + StdDuration::from_secs(10);
    while services.calls.load(Ordering::SeqCst) <= k && !task.is_finished() {
        assert!(Instant::now() < deadline, "the first orchestrator never reached call {k}");
        tokio::task::yield_now().await;
    }
    let crashed = !task.is_finished();
    task.abort();
    let _ = task.await;

    let second = world.orchestrator(Arc::new(world.services()));
    second.recover().await.unwrap();
    world.run_timers(&second).await;
    assert_ended_as(&world, order_id, expected).await;
    let report = world.audit().await;
    assert!(report.violations.is_empty(), "crash after call {k} of order {index}: {:#?}", report.violations);
    (services.calls.load(Ordering::SeqCst), crashed)
}

#[tokio::test]
async fn killed_after_any_command_a_new_orchestrator_finishes_every_branch_with_each_effect_once() {
    // Scenario orders (seed 7): 0 confirms, 1 is declined, 7 never gets a
    // payment answer (so it waits for its deadline), 10 fails
    // CREATE_SHIPMENT, 13 fails RESERVE_STOCK after reserving its first line.
    for index in [0, 1, 7, 10, 13] {
        let mut k = 0;
        loop {
            let (_, crashed) = crash_at(index, k).await;
            if !crashed {
                break;
            }
            k += 1;
        }
        assert!(k >= 2, "order {index}: only {k} crash points");
    }
}

#[tokio::test]
async fn the_audit_reports_a_leaked_payment_and_a_saga_stuck_past_its_deadline() {
    let world = World::new(20).await;
    let orchestrator = world.orchestrator(Arc::new(world.services()));
    // A declined order (index 1) ends cancelled; a late authorization is
    // refused (its void fenced the payment), so someone writes one behind
    // the services' back.
    let (declined, _) = world.place(1, true).await;
    start_and_drive(&orchestrator, &declined).await;
    let declined_id: uuid::Uuid = declined.stream_id.id().parse().unwrap();
    let payments: strata_commands::CommandHandler<strata_commands::payments::Payment> =
        strata_commands::CommandHandler::new(world.store.clone(), None, Default::default());
    let late = strata_commands::payments::PaymentCommand::Authorize {
        order_id: declined_id,
        amount_cents: 100,
        payment_method: "card".into(),
        at: t0(),
    };
    let refused = payments.handle(strata_commands::Envelope::new(uuid::Uuid::new_v4(), late)).await;
    assert!(
        matches!(refused, Err(strata_commands::CommandError::Rejected(strata_commands::payments::PaymentError::Fenced { .. }))),
        "{refused:?}"
    );
    let rogue: strata_schemas::events::PaymentEvent = strata_schemas::events::PaymentAuthorized {
        order_id: declined_id,
        amount_cents: strata_schemas::values::Cents::new(100).unwrap(),
        payment_method: "card".into(),
        authorized_at: t0(),
    }
    .into();
    use strata_schemas::DomainEvent;
    let append = strata_store::StreamAppend {
        stream_id: strata_store::StreamId::new("payment", declined_id).unwrap(),
        expected: strata_store::ExpectedVersion::Any,
        events: vec![strata_store::NewEvent {
            event_id: uuid::Uuid::new_v4(),
            event_type: rogue.event_type().into(),
            schema_version: rogue.schema_version(),
            payload: rogue.to_payload(),
            metadata: Default::default(),
        }],
    };
    strata_store::EventStore::append(&*world.store, vec![append]).await.unwrap();
    // The no-answer order (index 7) waits; nobody drives it past its deadline.
    let (waiting, _) = world.place(7, true).await;
    start_and_drive(&orchestrator, &waiting).await;
    world.clock.advance(Duration::minutes(10));

    let report = world.audit().await;
    let rules: Vec<(&str, String)> = report.violations.iter().map(|v| (v.rule, v.subject.clone())).collect();
    assert!(rules.contains(&("cancelled-order-released", format!("order-{declined_id}"))), "{rules:?}");
    assert!(rules.contains(&("saga-in-flight", format!("order-{}", waiting.stream_id.id()))), "{rules:?}");
    // The rogue authorization is not the catalog's total of its reservations either.
    assert!(rules.contains(&("charged-catalog-price", format!("payment-{declined_id}"))), "{rules:?}");
    assert_eq!(rules.len(), 3, "{rules:?}");
}
