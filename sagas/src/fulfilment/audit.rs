//! [`audit`]: checks the invariants of order fulfilment over the whole log
//! (`strata audit invariants`). It reads every event once, folds each stream
//! with its aggregate's own `evolve`, and compares the streams of each order.
//!
//! Rules (each violation names its rule and the stream):
//! - `saga-in-flight`: every saga is terminal, or its last event is recent
//!   enough that it is still within its step deadline (plus the longest retry
//!   delay and a grace period); every order has a saga, or was placed within
//!   the grace period.
//! - `saga-settles`: no saga has been undoing (compensating after a failure
//!   or a cancellation) for longer than its bound (the time after which a
//!   part that cannot fail is parked, plus the step deadline and the grace
//!   period), even if it keeps retrying.
//! - `saga-stuck`: no saga is parked (`SagaStuck`) waiting for an operator.
//! - `order-matches-saga`: an order cancelled by its customer does not keep
//!   a saga that completed (the cancellation was never undone) past the
//!   grace period.
//! - `stock-conserved`: per SKU, no reservation ever exceeded the available
//!   units, every release or commit moved exactly the units its reservation
//!   held, no order got back more units than it committed, and restocked =
//!   available + reserved + shipped (committed minus returned) at the end.
//! - `no-double-capture`: no payment captured more than once.
//! - `charged-catalog-price`: an authorized payment is for exactly the
//!   catalog's total of its order's reservations (each line's units times
//!   its SKU's price when it was reserved): a client's price is never
//!   charged. (An order with a reservation made while its SKU had no price,
//!   which only a log written before catalog prices holds, is not judged.)
//! - `cancelled-order-released`: a cancelled order whose saga is over holds no
//!   reservation, no authorized or captured (unrefunded) payment, no booked
//!   shipment, and no committed stock that was not returned.
//! - `completed-order-settled`: a completed saga's order is confirmed (or
//!   shipped), its payment captured, every line's stock committed and its
//!   shipment booked.
//! - `aborted-order-cancelled`: an aborted saga's order is cancelled; a step
//!   it names is the one the saga failed at (a customer's cancellation names
//!   none); no step after the pivot failed.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use chrono::{DateTime, Duration, Utc};
use serde::Serialize;
use strata_commands::inventory::Inventory;
use strata_commands::orders::{Order, OrderState, OrderStatus};
use strata_commands::payments::{Payment, PaymentState, PaymentStatus};
use strata_commands::shipping::{Shipment, ShipmentState, ShipmentStatus};
use strata_commands::Aggregate;
use strata_schemas::events::{InventoryEvent, OrderEvent, PaymentEvent, SagaEvent, ShipmentEvent};
use strata_schemas::DomainEvent;
use strata_store::{EventReader, Position, ReadAll, ReadError};
use uuid::Uuid;

use super::{fulfilment_step, steps, Fulfilment, FulfilmentData, CATEGORY};
use crate::saga::{Saga, SagaConfig};
use crate::state::{evolve, SagaState, SagaStatus};

/// What the audit compares against.
#[derive(Debug, Clone)]
pub struct AuditConfig {
    /// "Now" for the in-flight rule.
    pub now: DateTime<Utc>,
    /// The saga's timing rules (deadline, longest retry delay).
    pub saga: SagaConfig,
    /// Extra time allowed to a saga in flight or an order without a saga yet.
    pub grace: Duration,
}

impl Default for AuditConfig {
    fn default() -> Self {
        Self { now: Utc::now(), saga: SagaConfig::default(), grace: Duration::seconds(30) }
    }
}

/// One broken invariant.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Violation {
    /// The rule (see the module docs).
    pub rule: &'static str,
    /// The stream or order concerned.
    pub subject: String,
    /// What was found.
    pub detail: String,
}

/// What the audit found.
#[derive(Debug, Clone, Default, Serialize)]
pub struct AuditReport {
    /// Events read.
    pub events: u64,
    /// Orders per status (`PENDING`, `CONFIRMED`, …).
    pub orders: BTreeMap<String, u64>,
    /// Sagas per status (`RUNNING`, `COMPENSATING`, `COMPLETED`, `ABORTED`).
    pub sagas: BTreeMap<String, u64>,
    /// Per SKU: restocked, available, reserved, shipped.
    pub stock: BTreeMap<String, StockFigures>,
    /// Every violation found.
    pub violations: Vec<Violation>,
}

/// Stock figures of one SKU at the end of the log.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct StockFigures {
    /// Units restocked in all.
    pub restocked: u64,
    /// On hand and not reserved.
    pub available: u64,
    /// Held by reservations.
    pub reserved: u64,
    /// Committed (left with shipments) and not returned.
    pub shipped: u64,
    /// Committed units that came back (orders cancelled after confirmation).
    pub returned: u64,
}

#[derive(Default)]
struct OrderFacts {
    order: OrderState,
    placed_at: Option<DateTime<Utc>>,
    payment: PaymentState,
    captures: u32,
    shipment: ShipmentState,
    saga: SagaState<FulfilmentData>,
    saga_last_at: Option<DateTime<Utc>>,
    /// When the saga began undoing (a failure or a cancellation).
    undoing_since: Option<DateTime<Utc>>,
    cancelled_at: Option<DateTime<Utc>>,
    /// Per SKU: units committed, units returned.
    committed: BTreeMap<String, (u64, u64)>,
    /// Per SKU: what its reservation is worth at the catalog price when it
    /// was made (`None`: the SKU had no price then).
    priced: BTreeMap<String, Option<u64>>,
}

/// Reads the whole log and checks every rule.
pub async fn audit(reader: Arc<dyn EventReader>, config: &AuditConfig) -> Result<AuditReport, ReadError> {
    let mut report = AuditReport::default();
    let mut orders: HashMap<Uuid, OrderFacts> = HashMap::new();
    let mut stock: BTreeMap<String, (<Inventory as Aggregate>::State, StockFigures)> = BTreeMap::new();
    let mut after = Position::START;
    loop {
        let page = reader.read_all(ReadAll::after(after, 2_000)).await?;
        let Some(last) = page.last() else { break };
        after = last.position;
        for recorded in page {
            report.events += 1;
            let subject = recorded.stream_id.to_string();
            let mut violation = |rule, detail: String| report.violations.push(Violation { rule, subject: subject.clone(), detail });
            let id = recorded.stream_id.id().parse::<Uuid>();
            match recorded.stream_id.category() {
                "order" => {
                    let (Ok(id), Ok(event)) = (id, OrderEvent::from_payload(&recorded.event_type, recorded.payload)) else { continue };
                    let facts = orders.entry(id).or_default();
                    match event {
                        OrderEvent::OrderPlaced(_) => facts.placed_at = Some(recorded.recorded_at),
                        OrderEvent::OrderCancelled(_) => facts.cancelled_at = Some(recorded.recorded_at),
                        _ => {}
                    }
                    facts.order = Order::evolve(std::mem::take(&mut facts.order), &event);
                }
                "payment" => {
                    let (Ok(id), Ok(event)) = (id, PaymentEvent::from_payload(&recorded.event_type, recorded.payload)) else { continue };
                    let facts = orders.entry(id).or_default();
                    if let PaymentEvent::PaymentAuthorized(authorized) = &event {
                        let worth: Option<Vec<u64>> = facts.priced.values().copied().collect();
                        match worth {
                            Some(worth) if worth.is_empty() => violation(
                                "charged-catalog-price",
                                format!("authorized {} with no stock reserved", authorized.amount_cents.get()),
                            ),
                            Some(worth) if worth.iter().sum::<u64>() != authorized.amount_cents.get() => violation(
                                "charged-catalog-price",
                                format!(
                                    "authorized {} for reservations worth {} at the catalog's prices",
                                    authorized.amount_cents.get(),
                                    worth.iter().sum::<u64>()
                                ),
                            ),
                            // Judged and right, or reserved before catalog prices.
                            _ => {}
                        }
                    }
                    if matches!(event, PaymentEvent::PaymentCaptured(_)) {
                        facts.captures += 1;
                        if facts.captures > 1 {
                            violation("no-double-capture", format!("captured {} times", facts.captures));
                        }
                    }
                    facts.payment = Payment::evolve(std::mem::take(&mut facts.payment), &event);
                }
                "shipment" => {
                    let (Ok(id), Ok(event)) = (id, ShipmentEvent::from_payload(&recorded.event_type, recorded.payload)) else { continue };
                    let facts = orders.entry(id).or_default();
                    facts.shipment = Shipment::evolve(std::mem::take(&mut facts.shipment), &event);
                }
                "inventory" => {
                    let Ok(event) = InventoryEvent::from_payload(&recorded.event_type, recorded.payload) else { continue };
                    let (state, figures) = stock.entry(recorded.stream_id.id().to_owned()).or_default();
                    let held = |order_id: &Uuid| state.reservations.get(order_id).map_or(0, |units| units.get());
                    match &event {
                        InventoryEvent::StockRestocked(restocked) => figures.restocked += u64::from(restocked.quantity.get()),
                        InventoryEvent::StockReserved(reserved) => {
                            let worth = state.unit_price_cents.map(|price| price.get().saturating_mul(u64::from(reserved.quantity.get())));
                            orders.entry(reserved.order_id).or_default().priced.insert(recorded.stream_id.id().to_owned(), worth);
                            if u64::from(reserved.quantity.get()) > state.available() {
                                violation(
                                    "stock-conserved",
                                    format!(
                                        "order {} reserved {} with {} available",
                                        reserved.order_id,
                                        reserved.quantity.get(),
                                        state.available()
                                    ),
                                );
                            }
                        }
                        InventoryEvent::ReservationReleased(released) => {
                            if held(&released.order_id) != released.quantity.get() {
                                violation(
                                    "stock-conserved",
                                    format!(
                                        "order {} released {} of a reservation of {}",
                                        released.order_id,
                                        released.quantity.get(),
                                        held(&released.order_id)
                                    ),
                                );
                            }
                        }
                        InventoryEvent::ReservationCommitted(committed) => {
                            if held(&committed.order_id) != committed.quantity.get() {
                                violation(
                                    "stock-conserved",
                                    format!(
                                        "order {} committed {} of a reservation of {}",
                                        committed.order_id,
                                        committed.quantity.get(),
                                        held(&committed.order_id)
                                    ),
                                );
                            }
                            figures.shipped += u64::from(committed.quantity.get());
                            let entry = orders
                                .entry(committed.order_id)
                                .or_default()
                                .committed
                                .entry(recorded.stream_id.id().to_owned())
                                .or_default();
                            entry.0 += u64::from(committed.quantity.get());
                        }
                        InventoryEvent::StockReturned(returned) => {
                            let units = u64::from(returned.quantity.get());
                            let entry = orders
                                .entry(returned.order_id)
                                .or_default()
                                .committed
                                .entry(recorded.stream_id.id().to_owned())
                                .or_default();
                            entry.1 += units;
                            if entry.1 > entry.0 {
                                violation(
                                    "stock-conserved",
                                    format!("order {} got {} units back of {} committed", returned.order_id, entry.1, entry.0),
                                );
                            }
                            figures.shipped = figures.shipped.saturating_sub(units);
                            figures.returned += units;
                        }
                        InventoryEvent::ReservationFenced(_) | InventoryEvent::PriceSet(_) => {}
                    }
                    *state = Inventory::evolve(std::mem::take(state), &event);
                }
                category if category == CATEGORY => {
                    let (Ok(id), Ok(event)) = (id, SagaEvent::from_payload(&recorded.event_type, recorded.payload)) else { continue };
                    let facts = orders.entry(id).or_default();
                    let was_undoing = facts.saga.failed.is_some();
                    facts.saga = evolve::<Fulfilment>(std::mem::take(&mut facts.saga), &event, recorded.stream_version);
                    facts.saga_last_at = Some(recorded.recorded_at);
                    if !was_undoing && facts.saga.failed.is_some() {
                        facts.undoing_since = Some(recorded.recorded_at);
                    }
                }
                _ => {}
            }
        }
    }
    let held = check_stock(&mut report, stock);
    for (order_id, facts) in &orders {
        let reservations = held.get(order_id).map_or(&[][..], Vec::as_slice);
        check_order(&mut report, config, *order_id, facts, reservations);
    }
    report.violations.sort_by(|a, b| (a.rule, &a.subject).cmp(&(b.rule, &b.subject)));
    Ok(report)
}

/// Checks conservation per SKU; returns the SKUs each order still holds.
fn check_stock(
    report: &mut AuditReport,
    stock: BTreeMap<String, (<Inventory as Aggregate>::State, StockFigures)>,
) -> HashMap<Uuid, Vec<String>> {
    let mut held: HashMap<Uuid, Vec<String>> = HashMap::new();
    for (sku, (state, mut figures)) in stock {
        for order_id in state.reservations.keys() {
            held.entry(*order_id).or_default().push(sku.clone());
        }
        figures.reserved = state.reserved();
        figures.available = state.available();
        let on_hand = figures.restocked.checked_sub(figures.shipped);
        // `shipped` is net of returns, so on hand = restocked - shipped.
        if on_hand != Some(state.on_hand) || figures.restocked != figures.available + figures.reserved + figures.shipped {
            report.violations.push(Violation {
                rule: "stock-conserved",
                subject: format!("inventory-{sku}"),
                detail: format!(
                    "restocked {} != available {} + reserved {} + shipped {} (on hand {})",
                    figures.restocked, figures.available, figures.reserved, figures.shipped, state.on_hand
                ),
            });
        }
        report.stock.insert(sku, figures);
    }
    held
}

fn check_order(report: &mut AuditReport, config: &AuditConfig, order_id: Uuid, facts: &OrderFacts, reservations: &[String]) {
    let subject = format!("order-{order_id}");
    let mut violation = |rule, detail: String| report.violations.push(Violation { rule, subject: subject.clone(), detail });
    let order_status = facts.order.status;
    let saga = &facts.saga;
    let lines = facts.order.placed.as_ref().map_or(0, |placed| placed.lines.len());
    let status_name = match order_status {
        Some(status) => format!("{status:?}").to_uppercase(),
        None => "NONE".into(),
    };
    *report.orders.entry(status_name).or_default() += 1;
    *report.sagas.entry(format!("{:?}", saga.status).to_uppercase()).or_default() += 1;
    let allowed = config.saga.step_deadline + config.saga.backoff_max + config.grace;
    match (saga.status, facts.saga_last_at, facts.placed_at) {
        (SagaStatus::New, _, Some(placed_at)) if placed_at + config.grace < config.now => {
            violation("saga-in-flight", format!("placed at {placed_at} and no saga started"));
        }
        (SagaStatus::Running | SagaStatus::Compensating, Some(last_at), _) if last_at + allowed < config.now => {
            violation(
                "saga-in-flight",
                format!("saga {:?} with no progress since {last_at} ({})", saga.status, saga.last_error.as_deref().unwrap_or("no error")),
            );
        }
        (SagaStatus::Stuck, _, _) => {
            violation("saga-stuck", format!("saga parked: {}", saga.stuck.as_deref().unwrap_or("no reason recorded")));
        }
        _ => {}
    }
    let settle_within = config.saga.park_after + config.saga.step_deadline + config.grace;
    if let (SagaStatus::Compensating, Some(since)) = (saga.status, facts.undoing_since) {
        if since + settle_within < config.now {
            violation("saga-settles", format!("undoing since {since} ({})", saga.last_error.as_deref().unwrap_or("no error")));
        }
    }
    if let (Some(OrderStatus::Cancelled), SagaStatus::Completed, Some(cancelled_at)) = (order_status, saga.status, facts.cancelled_at) {
        if cancelled_at + config.grace < config.now {
            violation("order-matches-saga", format!("cancelled at {cancelled_at} but its saga stays completed (nothing undone)"));
        }
    }
    let committed_lines = facts.committed.values().filter(|(committed, returned)| committed > returned).count();
    let committed_skus = || facts.committed.iter().filter(|(_, (c, r))| c > r).map(|(sku, _)| sku.as_str()).collect::<Vec<_>>().join(", ");
    match saga.status {
        SagaStatus::Completed => {
            if !matches!(order_status, Some(OrderStatus::Confirmed | OrderStatus::Shipped)) {
                violation("completed-order-settled", format!("saga completed but the order is {order_status:?}"));
            }
            if facts.payment.status != Some(PaymentStatus::Captured) || facts.captures != 1 {
                violation("completed-order-settled", format!("saga completed but the payment is {:?}", facts.payment.status));
            }
            if committed_lines != lines {
                violation("completed-order-settled", format!("saga completed but {committed_lines} of {lines} lines committed"));
            }
            if !reservations.is_empty() {
                violation("completed-order-settled", format!("saga completed but stock still reserved for {}", reservations.join(", ")));
            }
            if facts.shipment.status != Some(ShipmentStatus::Created) {
                violation("completed-order-settled", format!("saga completed but the shipment is {:?}", facts.shipment.status));
            }
        }
        SagaStatus::Aborted => {
            if order_status != Some(OrderStatus::Cancelled) {
                violation("aborted-order-cancelled", format!("saga aborted but the order is {order_status:?}"));
            }
            let failed = saga.failed.as_ref().map(|(step, _)| *step);
            // The customer may have cancelled first (no step named), but a
            // step the order names is the saga's.
            let expected = if saga.cancelled { None } else { failed.and_then(fulfilment_step) };
            if facts.order.failed_step.is_some() && facts.order.failed_step != expected {
                violation(
                    "aborted-order-cancelled",
                    format!(
                        "saga failed at {:?} but the order names {:?}",
                        failed.map(|s| Fulfilment::STEPS[s].name),
                        facts.order.failed_step
                    ),
                );
            }
            if !saga.cancelled && failed.is_some_and(|step| step > steps::CONFIRM_ORDER) {
                violation("aborted-order-cancelled", "a step after the pivot failed".into());
            }
        }
        _ => {}
    }
    if order_status == Some(OrderStatus::Cancelled) && saga.status.is_terminal() {
        if matches!(facts.payment.status, Some(PaymentStatus::Authorized | PaymentStatus::Captured)) {
            violation("cancelled-order-released", format!("payment left {:?}", facts.payment.status));
        }
        if facts.shipment.status == Some(ShipmentStatus::Created) {
            violation("cancelled-order-released", "shipment left booked".into());
        }
        if !reservations.is_empty() {
            violation("cancelled-order-released", format!("stock still reserved for {}", reservations.join(", ")));
        }
        if committed_lines > 0 {
            violation("cancelled-order-released", format!("stock committed and not returned for {}", committed_skus()));
        }
    }
}
