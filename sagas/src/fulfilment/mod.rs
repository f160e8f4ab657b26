//! The order-fulfilment saga (docs/design.md §6), one instance per order (stream
//! `fulfilment-<orderId>`), started by `OrderPlaced`.
//!
//! | # | step | action | compensation |
//! |---|---|---|---|
//! | 0 | `RESERVE_STOCK` | reserve every line (inventory) | release every line |
//! | 1 | `AUTHORIZE_PAYMENT` | authorize the total (payments) | void the authorization (refund if captured) |
//! | 2 | `CREATE_SHIPMENT` | book the shipment (shipping) | cancel the shipment |
//! | 3 | `CONFIRM_ORDER` (pivot) | confirm the order | — |
//! | 4 | `CAPTURE_PAYMENT` | capture the payment | refund it |
//! | 5 | `COMMIT_STOCK` | commit every line's reservation | return every line (release it if not committed yet) |
//!
//! A failed instance is closed by cancelling the order with the failed step
//! and the reason (`OrderCancelled.failedStep`; none when the confirmation
//! itself failed because the order was cancelled meanwhile).
//!
//! A client's `OrderCancelled` is a cancellation request
//! ([`Saga::cancel_request`]): a running instance undoes what may have run,
//! and a completed one (a confirmed order, not yet shipped: a shipped order
//! cannot be cancelled) undoes everything — the payment refunded, the
//! shipment cancelled, the committed stock returned. The saga's own
//! cancellation of the order reaches an instance that is already undoing,
//! which ignores it.
//!
//! Which branch an order takes follows from the domain's deterministic rules:
//! a SKU without enough stock, without a catalog price, or whose catalog
//! price is not the line's fails `RESERVE_STOCK`; payment method
//! `card-declined` or a total over 5,000.00 fails `AUTHORIZE_PAYMENT`;
//! `card-no-answer` makes the payment service never answer, so the step's
//! deadline fails it; a shipping country in
//! [`strata_commands::shipping::UNDELIVERABLE_COUNTRIES`] fails
//! `CREATE_SHIPMENT`.

mod audit;
pub mod scenario;
mod services;

pub use audit::{audit, AuditConfig, AuditReport, Violation};
pub use services::{FulfilmentCommand, FulfilmentServices};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use strata_commands::inventory::InventoryCommand;
use strata_commands::orders::OrderCommand;
use strata_commands::payments::PaymentCommand;
use strata_commands::shipping::ShipmentCommand;
use strata_schemas::events::OrderEvent;
use strata_schemas::values::{Address, Cents, FulfilmentStep, OrderLine, SagaStep};
use strata_schemas::DomainEvent;
use strata_store::RecordedEvent;
use uuid::Uuid;

use crate::saga::{Phase, Saga, StepSpec};

/// The saga definition.
#[derive(Debug)]
pub enum Fulfilment {}

/// Step indexes, in order ([`SagaStep::index`]).
pub mod steps {
    use strata_schemas::values::SagaStep;

    /// Reserve stock.
    pub const RESERVE_STOCK: usize = SagaStep::ReserveStock.index();
    /// Authorize the payment.
    pub const AUTHORIZE_PAYMENT: usize = SagaStep::AuthorizePayment.index();
    /// Book the shipment.
    pub const CREATE_SHIPMENT: usize = SagaStep::CreateShipment.index();
    /// Confirm the order (the pivot).
    pub const CONFIRM_ORDER: usize = SagaStep::ConfirmOrder.index();
    /// Capture the payment.
    pub const CAPTURE_PAYMENT: usize = SagaStep::CapturePayment.index();
    /// Commit the reserved stock.
    pub const COMMIT_STOCK: usize = SagaStep::CommitStock.index();
}

/// The saga's steps as its definition lists them ([`SagaStep::ALL`]).
const STEP_SPECS: [StepSpec; SagaStep::ALL.len()] = {
    let mut specs = [StepSpec { name: "" }; SagaStep::ALL.len()];
    let mut i = 0;
    while i < specs.len() {
        specs[i] = StepSpec { name: SagaStep::ALL[i].name() };
        i += 1;
    }
    specs
};

/// The stream category of the instances.
pub const CATEGORY: &str = "fulfilment";
/// The category whose events start instances.
pub const TRIGGER_CATEGORY: &str = "order";
/// The service name the saga's commands are requested under when the
/// services run in another process ([`crate::remote`]).
pub const SERVICES: &str = "fulfilment-services";

/// What an instance carries: the order as placed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FulfilmentData {
    /// The order.
    pub order_id: Uuid,
    /// Its lines.
    pub lines: Vec<OrderLine>,
    /// Its total.
    pub total_cents: Cents,
    /// How it is paid.
    pub payment_method: String,
    /// Where it goes.
    pub shipping_address: Address,
}

impl Saga for Fulfilment {
    const CATEGORY: &'static str = CATEGORY;
    const STEPS: &'static [StepSpec] = &STEP_SPECS;
    const PIVOT: usize = steps::CONFIRM_ORDER;

    type Data = FulfilmentData;
    type Command = FulfilmentCommand;

    fn start(event: &RecordedEvent) -> Option<(Uuid, FulfilmentData)> {
        if event.event_type != "OrderPlaced" {
            return None;
        }
        let OrderEvent::OrderPlaced(placed) = OrderEvent::decode(&event.event_type, &event.payload).ok()? else {
            return None;
        };
        let data = FulfilmentData {
            order_id: placed.order_id,
            lines: placed.lines,
            total_cents: placed.total_cents,
            payment_method: placed.payment_method,
            shipping_address: placed.shipping_address,
        };
        Some((placed.order_id, data))
    }

    fn commands(data: &FulfilmentData, step: usize, phase: Phase, at: DateTime<Utc>) -> Vec<FulfilmentCommand> {
        let order_id = data.order_id;
        let each_line = |command: &dyn Fn(&OrderLine) -> InventoryCommand| -> Vec<FulfilmentCommand> {
            data.lines.iter().map(|line| FulfilmentCommand::Inventory(command(line))).collect()
        };
        match (step, phase) {
            // Each line is reserved at the price it carries, which the
            // inventory refuses unless it is the catalog's: what is then
            // authorized (the order's total) is the catalog's total.
            (steps::RESERVE_STOCK, Phase::Action) => each_line(&|line| InventoryCommand::Reserve {
                sku: line.sku.clone(),
                order_id,
                quantity: i64::from(line.quantity.get()),
                unit_price_cents: Some(line.unit_price_cents.get() as i64),
                at,
            }),
            (steps::RESERVE_STOCK, Phase::Compensation) => {
                each_line(&|line| InventoryCommand::Release { sku: line.sku.clone(), order_id, at })
            }
            (steps::AUTHORIZE_PAYMENT, Phase::Action) => vec![FulfilmentCommand::Payment(PaymentCommand::Authorize {
                order_id,
                amount_cents: data.total_cents.get() as i64,
                payment_method: data.payment_method.clone(),
                at,
            })],
            (steps::AUTHORIZE_PAYMENT, Phase::Compensation) => vec![FulfilmentCommand::Payment(PaymentCommand::Void { order_id, at })],
            (steps::CREATE_SHIPMENT, Phase::Action) => {
                vec![FulfilmentCommand::Shipment(ShipmentCommand::Create { order_id, address: data.shipping_address.clone(), at })]
            }
            (steps::CREATE_SHIPMENT, Phase::Compensation) => {
                vec![FulfilmentCommand::Shipment(ShipmentCommand::Cancel { order_id, reason: "order cancelled".into(), at })]
            }
            (steps::CONFIRM_ORDER, Phase::Action) => vec![FulfilmentCommand::Order(OrderCommand::Confirm { order_id, at })],
            (steps::CAPTURE_PAYMENT, Phase::Action) => vec![FulfilmentCommand::Payment(PaymentCommand::Capture { order_id, at })],
            (steps::CAPTURE_PAYMENT, Phase::Compensation) => vec![FulfilmentCommand::Payment(PaymentCommand::Refund { order_id, at })],
            (steps::COMMIT_STOCK, Phase::Action) => each_line(&|line| InventoryCommand::Commit { sku: line.sku.clone(), order_id, at }),
            (steps::COMMIT_STOCK, Phase::Compensation) => each_line(&|line| InventoryCommand::Return {
                sku: line.sku.clone(),
                order_id,
                quantity: i64::from(line.quantity.get()),
                at,
            }),
            _ => Vec::new(),
        }
    }

    fn abort_commands(data: &FulfilmentData, failed_step: usize, reason: &str, at: DateTime<Utc>) -> Vec<FulfilmentCommand> {
        vec![FulfilmentCommand::Order(OrderCommand::Cancel {
            order_id: data.order_id,
            reason: reason.to_owned(),
            failed_step: fulfilment_step(failed_step),
            at,
        })]
    }

    fn cancel_request(event: &RecordedEvent) -> Option<(Uuid, String)> {
        if event.event_type != "OrderCancelled" {
            return None;
        }
        let OrderEvent::OrderCancelled(cancelled) = OrderEvent::decode(&event.event_type, &event.payload).ok()? else {
            return None;
        };
        Some((cancelled.order_id, cancelled.reason))
    }
}

/// The order's name for a failed step (the three steps an order can fail at).
pub fn fulfilment_step(step: usize) -> Option<FulfilmentStep> {
    SagaStep::at(step).and_then(SagaStep::failed_step)
}

#[cfg(test)]
mod tests;
