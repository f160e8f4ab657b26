//! Pure tests of the fulfilment saga over events: every branch, walked
//! through `next` / `react` / `evolve` with scripted outcomes and no IO.

use chrono::{DateTime, Duration, Utc};
use strata_schemas::events::{SagaEvent, SagaStarted};
use strata_schemas::values::{Address, Cents, CountryCode, OrderLine, Quantity, Sku};
use uuid::Uuid;

use super::*;
use crate::saga::{Outcome, Phase, SagaConfig};
use crate::state::{evolve, next, react, Next, SagaState, SagaStatus, NO_ANSWER};

fn t0() -> DateTime<Utc> {
    DateTime::from_timestamp(1_800_000_000, 0).unwrap()
}

fn data(lines: usize) -> FulfilmentData {
    FulfilmentData {
        order_id: Uuid::from_u128(42),
        lines: (0..lines)
            .map(|i| OrderLine {
                sku: Sku::parse(&format!("SKU-{i}")).unwrap(),
                quantity: Quantity::new(2).unwrap(),
                unit_price_cents: Cents::new(500).unwrap(),
            })
            .collect(),
        total_cents: Cents::new(1000 * lines as i64).unwrap(),
        payment_method: "card".into(),
        shipping_address: Address {
            name: "Ada".into(),
            street: "Rue 1".into(),
            city: "Gent".into(),
            postal_code: "9000".into(),
            country: CountryCode::parse("BE").unwrap(),
        },
    }
}

fn started(lines: usize) -> SagaState<FulfilmentData> {
    let event: SagaEvent =
        SagaStarted { saga_id: Uuid::from_u128(42), data: serde_json::to_value(data(lines)).unwrap(), started_at: t0() }.into();
    evolve::<Fulfilment>(SagaState::default(), &event, 1)
}

/// What one walk did: every request sent (step name, phase, attempt,
/// commands), the events recorded, and where it ended.
struct Walk {
    sent: Vec<(&'static str, Phase, u32, usize)>,
    events: Vec<SagaEvent>,
    state: SagaState<FulfilmentData>,
    now: DateTime<Utc>,
}

/// Walks an instance to the end, answering each request with `answer` and
/// jumping the clock to every timer (at most `limit` requests).
fn walk(mut state: SagaState<FulfilmentData>, config: &SagaConfig, mut answer: impl FnMut(&'static str, Phase, u32) -> Outcome) -> Walk {
    let mut now = t0();
    let mut walk = Walk { sent: Vec::new(), events: Vec::new(), state: state.clone(), now };
    for _ in 0..200 {
        let events = match next::<Fulfilment>(&state, config, now) {
            Next::Finished => break,
            Next::WaitUntil(until) => {
                assert!(until > now, "a timer in the past would spin");
                now = until;
                continue;
            }
            Next::Record(events) => events,
            Next::Send(request) => {
                let name = Fulfilment::STEPS[request.step].name;
                walk.sent.push((name, request.phase, request.attempt, request.commands.len()));
                let outcome = answer(name, request.phase, request.attempt);
                now += Duration::milliseconds(1);
                react::<Fulfilment>(&state, &request, &outcome, config, now)
            }
        };
        for event in events {
            let version = state.version + 1;
            state = evolve::<Fulfilment>(state, &event, version);
            walk.events.push(event);
        }
    }
    walk.state = state;
    walk.now = now;
    walk
}

fn done(_: &str, _: Phase, _: u32) -> Outcome {
    Outcome::Done
}

fn forward(names: &[&'static str]) -> Vec<(&'static str, Phase)> {
    names.iter().map(|name| (*name, Phase::Action)).collect()
}

fn parts(walk: &Walk) -> Vec<(&'static str, Phase)> {
    walk.sent.iter().map(|(name, phase, _, _)| (*name, *phase)).collect()
}

#[test]
fn every_step_succeeding_completes_after_capture_and_commit() {
    let walk = walk(started(2), &SagaConfig::default(), done);
    assert_eq!(
        parts(&walk),
        forward(&["RESERVE_STOCK", "AUTHORIZE_PAYMENT", "CREATE_SHIPMENT", "CONFIRM_ORDER", "CAPTURE_PAYMENT", "COMMIT_STOCK"])
    );
    assert_eq!(walk.sent[0].3, 2, "one reservation per line");
    assert_eq!(walk.sent[5].3, 2, "one commit per line");
    assert_eq!(walk.state.status, SagaStatus::Completed);
    assert!(matches!(walk.events.last(), Some(SagaEvent::SagaCompleted(_))));
}

#[test]
fn a_refusal_at_each_failable_step_compensates_every_step_up_to_the_pivot_in_reverse_then_cancels_the_order() {
    // Steps after the failed one never ran here, but a concurrent or stale
    // driver may have run them: compensating them fences them.
    let every: &[&str] = &["CREATE_SHIPMENT", "AUTHORIZE_PAYMENT", "RESERVE_STOCK"];
    for failing in ["RESERVE_STOCK", "AUTHORIZE_PAYMENT", "CREATE_SHIPMENT", "CONFIRM_ORDER"] {
        let compensated = every;
        let walk = walk(started(1), &SagaConfig::default(), |name, phase, _| {
            if name == failing && phase == Phase::Action {
                Outcome::Refused("no".into())
            } else {
                Outcome::Done
            }
        });
        let undone: Vec<&str> = walk.sent.iter().filter(|s| s.1 == Phase::Compensation).map(|s| s.0).collect();
        assert_eq!(undone, compensated, "failing at {failing}");
        assert_eq!(walk.sent.last().map(|s| (s.0, s.1)), Some((failing, Phase::Abort)), "the abort names the failed step");
        assert_eq!(walk.state.status, SagaStatus::Aborted);
        let Some(SagaEvent::SagaAborted(aborted)) = walk.events.last() else { panic!("{:?}", walk.events.last()) };
        assert_eq!((aborted.failed_step.as_str(), aborted.reason.as_str()), (failing, "no"));
        assert!(!walk.sent.iter().any(|s| s.0 == "CAPTURE_PAYMENT"), "nothing after the failure runs");
    }
}

#[test]
fn the_abort_cancels_the_order_naming_the_failed_step() {
    let commands = Fulfilment::abort_commands(&data(1), steps::AUTHORIZE_PAYMENT, "payment declined: card declined", t0());
    let [FulfilmentCommand::Order(strata_commands::orders::OrderCommand::Cancel { failed_step, reason, .. })] = commands.as_slice() else {
        panic!("{commands:?}")
    };
    assert_eq!(*failed_step, Some(strata_schemas::values::FulfilmentStep::AuthorizePayment));
    assert_eq!(reason, "payment declined: card declined");
    assert_eq!(fulfilment_step(steps::CONFIRM_ORDER), None);
}

#[test]
fn transient_failures_are_retried_with_growing_delays_then_succeed() {
    let config = SagaConfig::default();
    let walk = walk(started(1), &config, |name, _, attempt| {
        if name == "AUTHORIZE_PAYMENT" && attempt < 4 {
            Outcome::Transient("database unreachable".into())
        } else {
            Outcome::Done
        }
    });
    let attempts: Vec<u32> = walk.sent.iter().filter(|s| s.0 == "AUTHORIZE_PAYMENT").map(|s| s.2).collect();
    assert_eq!(attempts, [1, 2, 3, 4]);
    let delays: Vec<Duration> = walk
        .events
        .iter()
        .filter_map(|event| match event {
            SagaEvent::SagaStepRetryScheduled(retry) => Some(retry.retry_at - retry.at),
            _ => None,
        })
        .collect();
    assert_eq!(delays.len(), 3);
    assert!(delays.windows(2).all(|pair| pair[1] > pair[0]), "{delays:?}");
    assert_eq!(walk.state.status, SagaStatus::Completed);
}

#[test]
fn transient_failures_beyond_the_bound_fail_the_step() {
    let config = SagaConfig { max_attempts: 3, ..SagaConfig::default() };
    let walk = walk(started(1), &config, |name, phase, _| {
        if name == "CREATE_SHIPMENT" && phase == Phase::Action {
            Outcome::Transient("carrier api 503".into())
        } else {
            Outcome::Done
        }
    });
    assert_eq!(walk.sent.iter().filter(|s| s.0 == "CREATE_SHIPMENT" && s.1 == Phase::Action).count(), 3);
    let Some((step, reason)) = &walk.state.failed else { panic!("not failed") };
    assert_eq!((*step, reason.as_str()), (steps::CREATE_SHIPMENT, "gave up after 3 attempts: carrier api 503"));
    assert_eq!(walk.state.status, SagaStatus::Aborted);
}

#[test]
fn no_answer_is_sent_again_until_the_deadline_then_fails_the_step() {
    let config = SagaConfig { max_attempts: 2, ..SagaConfig::default() };
    let walk =
        walk(
            started(1),
            &config,
            |name, phase, _| {
                if name == "AUTHORIZE_PAYMENT" && phase == Phase::Action {
                    Outcome::NoAnswer
                } else {
                    Outcome::Done
                }
            },
        );
    let sent = walk.sent.iter().filter(|s| s.0 == "AUTHORIZE_PAYMENT" && s.1 == Phase::Action).count();
    assert!(sent > config.max_attempts as usize, "no answer does not count as an attempt: {sent}");
    let failed_at = walk
        .events
        .iter()
        .find_map(|event| match event {
            SagaEvent::SagaStepFailed(failed) => Some(failed.clone()),
            _ => None,
        })
        .expect("the step failed");
    assert!(failed_at.reason.starts_with("deadline passed"), "{}", failed_at.reason);
    assert!(failed_at.reason.contains(NO_ANSWER));
    let began = t0() + Duration::milliseconds(1);
    assert!(failed_at.at >= began + config.step_deadline, "failed before its deadline");
    assert_eq!(walk.state.status, SagaStatus::Aborted);
    let undone: Vec<&str> = walk.sent.iter().filter(|s| s.1 == Phase::Compensation).map(|s| s.0).collect();
    assert_eq!(undone, ["CREATE_SHIPMENT", "AUTHORIZE_PAYMENT", "RESERVE_STOCK"], "the unanswered payment is voided in case it happened");
}

#[test]
fn a_deadline_passing_after_the_step_succeeded_does_nothing() {
    let config = SagaConfig::default();
    let mut state = started(1);
    let now = t0() + Duration::milliseconds(5);
    let Next::Send(request) = next::<Fulfilment>(&state, &config, now) else { panic!() };
    for event in react::<Fulfilment>(&state, &request, &Outcome::Done, &config, now) {
        let version = state.version + 1;
        state = evolve::<Fulfilment>(state, &event, version);
    }
    // Long after RESERVE_STOCK's deadline, and the next step's, nothing fails:
    // the next step is sent (its deadline counts once it is being retried).
    let late = now + config.step_deadline * 10;
    let Next::Send(request) = next::<Fulfilment>(&state, &config, late) else { panic!("expected a send") };
    assert_eq!((request.step, request.phase), (steps::AUTHORIZE_PAYMENT, Phase::Action));
}

#[test]
fn steps_after_the_pivot_and_compensations_do_not_fail_they_retry_within_the_parking_bound() {
    let config = SagaConfig { max_attempts: 2, ..SagaConfig::default() };
    let walk_capture = walk(started(1), &config, |name, _, attempt| {
        if name == "CAPTURE_PAYMENT" && attempt < 6 {
            Outcome::Refused("authorization expired".into())
        } else {
            Outcome::Done
        }
    });
    assert_eq!(walk_capture.sent.iter().filter(|s| s.0 == "CAPTURE_PAYMENT").count(), 6);
    assert_eq!(walk_capture.state.status, SagaStatus::Completed);

    let walk_release = walk(started(1), &config, |name, phase, attempt| match (name, phase) {
        ("AUTHORIZE_PAYMENT", Phase::Action) => Outcome::Refused("declined".into()),
        ("RESERVE_STOCK", Phase::Compensation) if attempt < 5 => Outcome::Transient("database unreachable".into()),
        _ => Outcome::Done,
    });
    assert_eq!(walk_release.sent.iter().filter(|s| s.0 == "RESERVE_STOCK" && s.1 == Phase::Compensation).count(), 5);
    assert_eq!(walk_release.state.status, SagaStatus::Aborted);
}

#[test]
fn command_ids_are_the_same_on_every_attempt_and_differ_between_parts() {
    let config = SagaConfig::default();
    let mut state = started(2);
    let Next::Send(first) = next::<Fulfilment>(&state, &config, t0()) else { panic!() };
    for event in react::<Fulfilment>(&state, &first, &Outcome::Transient("x".into()), &config, t0()) {
        let version = state.version + 1;
        state = evolve::<Fulfilment>(state, &event, version);
    }
    let Next::Send(second) = next::<Fulfilment>(&state, &config, t0() + Duration::seconds(1)) else { panic!() };
    let ids = |request: &crate::state::Request<FulfilmentCommand>| request.commands.iter().map(|(id, _)| *id).collect::<Vec<_>>();
    assert_eq!(ids(&first), ids(&second));
    assert_eq!(second.attempt, 2);
    assert_ne!(ids(&first)[0], ids(&first)[1], "each line has its own id");
    let release = crate::saga::command_id(state.saga_id, "RESERVE_STOCK", Phase::Compensation, 0);
    assert!(!ids(&first).contains(&release));
}

#[test]
fn an_order_placed_event_starts_an_instance_and_other_events_do_not() {
    let recorded = |event_type: &str, payload: serde_json::Value| strata_store::RecordedEvent {
        event_id: Uuid::from_u128(1),
        event_type: event_type.into(),
        schema_version: 2,
        stream_id: strata_store::StreamId::new("order", Uuid::from_u128(42)).unwrap(),
        stream_version: 1,
        position: strata_store::Position(1),
        recorded_at: t0(),
        payload,
        metadata: Default::default(),
        hash: strata_store::ChainHash::default(),
    };
    let data = data(1);
    let placed = serde_json::json!({
        "orderId": data.order_id, "customerId": "c-1", "lines": data.lines, "totalCents": data.total_cents,
        "paymentMethod": "card", "shippingAddress": data.shipping_address,
    });
    let (saga_id, started) = Fulfilment::start(&recorded("OrderPlaced", placed)).expect("starts");
    assert_eq!((saga_id, started), (data.order_id, data));
    assert!(Fulfilment::start(&recorded("OrderConfirmed", serde_json::json!({}))).is_none());
}

/// Records `event` into `state`.
fn record(state: SagaState<FulfilmentData>, event: SagaEvent) -> SagaState<FulfilmentData> {
    let version = state.version + 1;
    evolve::<Fulfilment>(state, &event, version)
}

fn cancel_request(at: DateTime<Utc>) -> SagaEvent {
    strata_schemas::events::SagaCancelRequested { reason: "changed my mind".into(), at }.into()
}

/// Walks `state` forward with every command done until `steps` steps succeeded.
fn advanced(steps: usize) -> SagaState<FulfilmentData> {
    let config = SagaConfig::default();
    let mut state = started(2);
    while state.succeeded < steps {
        let Next::Send(request) = next::<Fulfilment>(&state, &config, t0()) else { panic!("not sending at {}", state.succeeded) };
        for event in react::<Fulfilment>(&state, &request, &Outcome::Done, &config, t0()) {
            state = record(state, event);
        }
    }
    state
}

#[test]
fn a_part_that_cannot_fail_is_parked_after_its_bound_and_an_operator_resumes_it() {
    let config = SagaConfig { max_attempts: 3, park_after: Duration::seconds(30), ..SagaConfig::default() };
    let walk = walk(started(1), &config, |name, phase, _| match (name, phase) {
        ("AUTHORIZE_PAYMENT", Phase::Action) => Outcome::Refused("declined".into()),
        ("RESERVE_STOCK", Phase::Compensation) => Outcome::Refused("inventory says no".into()),
        _ => Outcome::Done,
    });
    assert_eq!(walk.state.status, SagaStatus::Stuck, "{:?}", walk.events.last());
    let Some(SagaEvent::SagaStuck(stuck)) = walk.events.last() else { panic!("{:?}", walk.events.last()) };
    assert_eq!((stuck.step.as_str(), stuck.phase), ("RESERVE_STOCK", strata_schemas::events::SagaPhase::Compensation));
    assert!(stuck.attempts >= config.max_attempts, "{stuck:?}");
    assert!(stuck.reason.contains("inventory says no"), "{stuck:?}");
    let began = walk.events.iter().rev().find_map(|event| match event {
        SagaEvent::SagaStepSucceeded(success) if success.compensation => Some(success.at),
        _ => None,
    });
    assert!(stuck.at >= began.unwrap() + config.park_after, "parked before its bound");
    assert_eq!(next::<Fulfilment>(&walk.state, &config, walk.now + Duration::days(1)), Next::Finished, "a parked saga is not driven");

    // The operator fixes the cause and resumes: the parked part runs again.
    let resumed = record(walk.state.clone(), strata_schemas::events::SagaResumed { at: walk.now }.into());
    assert_eq!(resumed.status, SagaStatus::Compensating);
    let after = super::tests::walk(resumed, &config, done);
    assert_eq!(after.sent.first().map(|s| (s.0, s.1, s.2)), Some(("RESERVE_STOCK", Phase::Compensation, 1)), "fresh attempts");
    assert_eq!(after.state.status, SagaStatus::Aborted);
}

#[test]
fn a_cancellation_before_the_pivot_undoes_every_step_up_to_it_and_runs_no_abort() {
    let state = record(advanced(1), cancel_request(t0()));
    assert_eq!(state.status, SagaStatus::Compensating);
    assert!(state.cancelled);
    let walk = walk(state, &SagaConfig::default(), done);
    let undone: Vec<&str> = walk.sent.iter().filter(|s| s.1 == Phase::Compensation).map(|s| s.0).collect();
    assert_eq!(undone, ["CREATE_SHIPMENT", "AUTHORIZE_PAYMENT", "RESERVE_STOCK"]);
    assert!(!walk.sent.iter().any(|s| s.1 == Phase::Abort), "the customer already cancelled the order");
    let Some(SagaEvent::SagaAborted(aborted)) = walk.events.last() else { panic!("{:?}", walk.events.last()) };
    assert_eq!(aborted.reason, "cancelled: changed my mind");
    assert_eq!(walk.state.status, SagaStatus::Aborted);
}

#[test]
fn a_cancellation_after_completion_undoes_every_step_in_reverse() {
    let completed = walk(started(2), &SagaConfig::default(), done).state;
    assert_eq!(completed.status, SagaStatus::Completed);
    let walk = walk(record(completed, cancel_request(t0())), &SagaConfig::default(), done);
    let undone: Vec<(&str, usize)> = walk.sent.iter().filter(|s| s.1 == Phase::Compensation).map(|s| (s.0, s.3)).collect();
    assert_eq!(
        undone,
        [("COMMIT_STOCK", 2), ("CAPTURE_PAYMENT", 1), ("CREATE_SHIPMENT", 1), ("AUTHORIZE_PAYMENT", 1), ("RESERVE_STOCK", 2)],
        "every line returned, the payment refunded, the shipment cancelled"
    );
    assert_eq!(walk.state.status, SagaStatus::Aborted);
}

#[test]
fn a_cancellation_after_the_pivot_while_running_undoes_every_step() {
    let state = record(advanced(steps::CAPTURE_PAYMENT), cancel_request(t0()));
    let walk = walk(state, &SagaConfig::default(), done);
    let undone: Vec<&str> = walk.sent.iter().filter(|s| s.1 == Phase::Compensation).map(|s| s.0).collect();
    assert_eq!(undone, ["COMMIT_STOCK", "CAPTURE_PAYMENT", "CREATE_SHIPMENT", "AUTHORIZE_PAYMENT", "RESERVE_STOCK"]);
}

#[test]
fn a_cancellation_of_an_instance_already_undoing_or_over_changes_nothing() {
    let config = SagaConfig::default();
    let failed = walk(started(1), &config, |name, phase, _| {
        if name == "AUTHORIZE_PAYMENT" && phase == Phase::Action {
            Outcome::Refused("declined".into())
        } else {
            Outcome::Done
        }
    });
    assert_eq!(failed.state.status, SagaStatus::Aborted);
    assert_eq!(record(failed.state.clone(), cancel_request(t0())).status, SagaStatus::Aborted);
    let mut compensating = advanced(1);
    compensating = record(
        compensating,
        strata_schemas::events::SagaStepFailed { step: "AUTHORIZE_PAYMENT".into(), reason: "declined".into(), at: t0() }.into(),
    );
    let again = record(compensating.clone(), cancel_request(t0()));
    assert_eq!((again.status, again.cancelled, again.failed.clone()), (SagaStatus::Compensating, false, compensating.failed));
    assert_eq!(record(SagaState::default(), cancel_request(t0())).status, SagaStatus::New);
}
