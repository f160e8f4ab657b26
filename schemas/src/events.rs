//! The Rust types of the reference domain's events, one struct per event type
//! and one enum per aggregate. Each struct is exactly its JSON Schema in
//! `schemas/events/` at the latest version (camelCase fields, no extras);
//! `tests` below round-trips a sample of every variant through its schema.
//!
//! Streams: `order-<orderId>`, `inventory-<SKU>`, `payment-<orderId>` and
//! `shipment-<orderId>` (one payment and one shipment per order).
//!
//! [`SagaEvent`] is not of the reference domain: it is the generic record of
//! any saga instance (stream `<saga category>-<sagaId>`, e.g.
//! `fulfilment-<orderId>`), written by `strata-sagas`.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::domain_events;
use crate::values::{Address, Cents, FulfilmentStep, OrderLine, Quantity, Sku};

/// An order was accepted (v2: money in cents, with the total).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct OrderPlaced {
    /// The order.
    pub order_id: Uuid,
    /// Who ordered.
    pub customer_id: String,
    /// At least one line, each SKU at most once.
    pub lines: Vec<OrderLine>,
    /// Sum of quantity × unit price over the lines.
    pub total_cents: Cents,
    /// How the customer pays (see the payments rules).
    pub payment_method: String,
    /// Where to ship.
    pub shipping_address: Address,
    /// When the order was placed; absent on orders written as v1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub placed_at: Option<DateTime<Utc>>,
}

/// Every fulfilment step succeeded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct OrderConfirmed {
    /// The order.
    pub order_id: Uuid,
    /// When.
    pub confirmed_at: DateTime<Utc>,
}

/// The confirmed order left the warehouse.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct OrderShipped {
    /// The order.
    pub order_id: Uuid,
    /// When.
    pub shipped_at: DateTime<Utc>,
}

/// The order was cancelled, on request or by compensation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct OrderCancelled {
    /// The order.
    pub order_id: Uuid,
    /// Why, in words.
    pub reason: String,
    /// The fulfilment step that failed, when the cancellation is a compensation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failed_step: Option<FulfilmentStep>,
    /// When.
    pub cancelled_at: DateTime<Utc>,
}

/// Units of a SKU arrived.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct StockRestocked {
    /// The SKU.
    pub sku: Sku,
    /// How many arrived.
    pub quantity: Quantity,
    /// When.
    pub restocked_at: DateTime<Utc>,
}

/// An operator set a SKU's catalog price.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PriceSet {
    /// The SKU.
    pub sku: Sku,
    /// What one unit costs from now on.
    pub unit_price_cents: Cents,
    /// When.
    pub set_at: DateTime<Utc>,
}

/// Units were set aside for an order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct StockReserved {
    /// The SKU.
    pub sku: Sku,
    /// For which order.
    pub order_id: Uuid,
    /// How many.
    pub quantity: Quantity,
    /// When.
    pub reserved_at: DateTime<Utc>,
}

/// An order's reservation went back to available stock.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ReservationReleased {
    /// The SKU.
    pub sku: Sku,
    /// The order whose reservation it was.
    pub order_id: Uuid,
    /// How many units went back.
    pub quantity: Quantity,
    /// When.
    pub released_at: DateTime<Utc>,
}

/// An order's reserved units were shipped and leave on-hand stock.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ReservationCommitted {
    /// The SKU.
    pub sku: Sku,
    /// The order.
    pub order_id: Uuid,
    /// How many units left.
    pub quantity: Quantity,
    /// When.
    pub committed_at: DateTime<Utc>,
}

/// A release found no reservation for the order: any later reservation of
/// the SKU for it is refused (a fence against a late reserve).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ReservationFenced {
    /// The SKU.
    pub sku: Sku,
    /// The order.
    pub order_id: Uuid,
    /// When.
    pub fenced_at: DateTime<Utc>,
}

/// Units an order had committed came back to on-hand stock (the order was
/// cancelled after confirmation).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct StockReturned {
    /// The SKU.
    pub sku: Sku,
    /// The order.
    pub order_id: Uuid,
    /// How many units came back.
    pub quantity: Quantity,
    /// When.
    pub returned_at: DateTime<Utc>,
}

/// The gateway held the order's amount.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PaymentAuthorized {
    /// The order paid for (also the payment's id).
    pub order_id: Uuid,
    /// The amount held.
    pub amount_cents: Cents,
    /// The payment method charged.
    pub payment_method: String,
    /// When.
    pub authorized_at: DateTime<Utc>,
}

/// The authorized amount was charged.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PaymentCaptured {
    /// The order.
    pub order_id: Uuid,
    /// The amount charged.
    pub amount_cents: Cents,
    /// When.
    pub captured_at: DateTime<Utc>,
}

/// The authorization was released before capture; nothing was charged.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PaymentVoided {
    /// The order.
    pub order_id: Uuid,
    /// The amount that was held.
    pub amount_cents: Cents,
    /// When.
    pub voided_at: DateTime<Utc>,
}

/// A captured payment was refunded in full.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PaymentRefunded {
    /// The order.
    pub order_id: Uuid,
    /// The amount given back.
    pub amount_cents: Cents,
    /// When.
    pub refunded_at: DateTime<Utc>,
}

/// A void found no payment for the order: a later authorization for it is
/// refused (a fence against a late authorize).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PaymentFenced {
    /// The order.
    pub order_id: Uuid,
    /// When.
    pub fenced_at: DateTime<Utc>,
}

/// A shipment was booked with the carrier.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ShipmentCreated {
    /// The order shipped (also the shipment's id).
    pub order_id: Uuid,
    /// Where to.
    pub address: Address,
    /// When.
    pub created_at: DateTime<Utc>,
}

/// A booked shipment was cancelled.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ShipmentCancelled {
    /// The order.
    pub order_id: Uuid,
    /// Why.
    pub reason: String,
    /// When.
    pub cancelled_at: DateTime<Utc>,
}

/// A cancellation found no shipment for the order: a later booking for it
/// is refused (a fence against a late create).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ShipmentFenced {
    /// The order.
    pub order_id: Uuid,
    /// When.
    pub fenced_at: DateTime<Utc>,
}

/// A saga instance began; `data` is what its definition needs to build commands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SagaStarted {
    /// The instance (the id part of its stream).
    pub saga_id: Uuid,
    /// The definition's data (a JSON object).
    pub data: serde_json::Value,
    /// When.
    pub started_at: DateTime<Utc>,
}

/// A step's action (`compensation: false`) or compensation succeeded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SagaStepSucceeded {
    /// The step's name.
    pub step: String,
    /// True for the compensation.
    pub compensation: bool,
    /// When.
    pub at: DateTime<Utc>,
}

/// An attempt failed transiently (or got no answer); the step is sent again
/// at `retry_at` with the same command ids. The timer is this event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SagaStepRetryScheduled {
    /// The step's name.
    pub step: String,
    /// True for the compensation.
    pub compensation: bool,
    /// The attempt that failed (1 for the first).
    pub attempt: u32,
    /// What went wrong.
    pub reason: String,
    /// When to send again.
    pub retry_at: DateTime<Utc>,
    /// When.
    pub at: DateTime<Utc>,
}

/// A step's action failed for good; compensation begins.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SagaStepFailed {
    /// The step's name.
    pub step: String,
    /// Why (a refusal, a passed deadline, attempts exhausted).
    pub reason: String,
    /// When.
    pub at: DateTime<Utc>,
}

/// Every step succeeded (terminal).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SagaCompleted {
    /// When.
    pub at: DateTime<Utc>,
}

/// A step failed and every completed step was compensated (terminal).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SagaAborted {
    /// The step that failed.
    pub failed_step: String,
    /// Why it failed.
    pub reason: String,
    /// When.
    pub at: DateTime<Utc>,
}

/// Something outside the saga (a client cancelling the order) asked the
/// instance to undo what it did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SagaCancelRequested {
    /// Why, as the requester said it.
    pub reason: String,
    /// When.
    pub at: DateTime<Utc>,
}

/// Which part of a step a [`SagaStuck`] names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum SagaPhase {
    /// The step's action.
    Action,
    /// The step's compensation.
    Compensation,
    /// The commands that close a failed instance.
    Abort,
}

/// A part that cannot fail kept failing past its bound: the instance is
/// parked until an operator resumes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SagaStuck {
    /// The step's name.
    pub step: String,
    /// Which part of it.
    pub phase: SagaPhase,
    /// Attempts made.
    pub attempts: u32,
    /// The last failure.
    pub reason: String,
    /// When.
    pub at: DateTime<Utc>,
}

/// An operator resumed a stuck instance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SagaResumed {
    /// When.
    pub at: DateTime<Utc>,
}

domain_events! {
    /// Everything that happens to a saga instance (stream `<category>-<sagaId>`).
    pub enum SagaEvent {
        /// See [`SagaStarted`].
        SagaStarted(SagaStarted) = 1,
        /// See [`SagaStepSucceeded`].
        SagaStepSucceeded(SagaStepSucceeded) = 1,
        /// See [`SagaStepRetryScheduled`].
        SagaStepRetryScheduled(SagaStepRetryScheduled) = 1,
        /// See [`SagaStepFailed`].
        SagaStepFailed(SagaStepFailed) = 1,
        /// See [`SagaCompleted`].
        SagaCompleted(SagaCompleted) = 1,
        /// See [`SagaAborted`].
        SagaAborted(SagaAborted) = 1,
        /// See [`SagaCancelRequested`].
        SagaCancelRequested(SagaCancelRequested) = 1,
        /// See [`SagaStuck`].
        SagaStuck(SagaStuck) = 1,
        /// See [`SagaResumed`].
        SagaResumed(SagaResumed) = 1,
    }
}

domain_events! {
    /// Everything that happens to an order (stream `order-<orderId>`).
    pub enum OrderEvent {
        /// See [`OrderPlaced`].
        OrderPlaced(OrderPlaced) = 2,
        /// See [`OrderConfirmed`].
        OrderConfirmed(OrderConfirmed) = 1,
        /// See [`OrderShipped`].
        OrderShipped(OrderShipped) = 1,
        /// See [`OrderCancelled`].
        OrderCancelled(OrderCancelled) = 1,
    }
}

domain_events! {
    /// Everything that happens to one SKU's stock (stream `inventory-<SKU>`).
    pub enum InventoryEvent {
        /// See [`StockRestocked`].
        StockRestocked(StockRestocked) = 1,
        /// See [`StockReserved`].
        StockReserved(StockReserved) = 1,
        /// See [`ReservationReleased`].
        ReservationReleased(ReservationReleased) = 1,
        /// See [`ReservationCommitted`].
        ReservationCommitted(ReservationCommitted) = 1,
        /// See [`ReservationFenced`].
        ReservationFenced(ReservationFenced) = 1,
        /// See [`StockReturned`].
        StockReturned(StockReturned) = 1,
        /// See [`PriceSet`].
        PriceSet(PriceSet) = 1,
    }
}

domain_events! {
    /// Everything that happens to an order's payment (stream `payment-<orderId>`).
    pub enum PaymentEvent {
        /// See [`PaymentAuthorized`].
        PaymentAuthorized(PaymentAuthorized) = 1,
        /// See [`PaymentCaptured`].
        PaymentCaptured(PaymentCaptured) = 1,
        /// See [`PaymentVoided`].
        PaymentVoided(PaymentVoided) = 1,
        /// See [`PaymentRefunded`].
        PaymentRefunded(PaymentRefunded) = 1,
        /// See [`PaymentFenced`].
        PaymentFenced(PaymentFenced) = 1,
    }
}

domain_events! {
    /// Everything that happens to an order's shipment (stream `shipment-<orderId>`).
    pub enum ShipmentEvent {
        /// See [`ShipmentCreated`].
        ShipmentCreated(ShipmentCreated) = 1,
        /// See [`ShipmentCancelled`].
        ShipmentCancelled(ShipmentCancelled) = 1,
        /// See [`ShipmentFenced`].
        ShipmentFenced(ShipmentFenced) = 1,
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use serde_json::json;

    use super::*;
    use crate::catalog::{registry, SCHEMA_FILES};
    use crate::values::CountryCode;
    use crate::DomainEvent;

    fn at() -> DateTime<Utc> {
        DateTime::parse_from_rfc3339("2026-11-23T10:00:00.123456Z").unwrap().into()
    }

    fn address() -> Address {
        Address {
            name: "Ada".into(),
            street: "Rue 1".into(),
            city: "Gent".into(),
            postal_code: "9000".into(),
            country: CountryCode::parse("BE").unwrap(),
        }
    }

    /// One sample of every variant of every enum.
    fn samples() -> Vec<(&'static str, u32, serde_json::Value)> {
        let order_id = Uuid::from_u128(7);
        let sku = Sku::parse("SKU-1").unwrap();
        let quantity = Quantity::new(2).unwrap();
        let amount = Cents::new(2500).unwrap();
        let mut out = Vec::new();
        let mut push = |event_type, version, payload| out.push((event_type, version, payload));
        for event in [
            OrderEvent::from(OrderPlaced {
                order_id,
                customer_id: "c-1".into(),
                lines: vec![OrderLine { sku: sku.clone(), quantity, unit_price_cents: Cents::new(1250).unwrap() }],
                total_cents: amount,
                payment_method: "card".into(),
                shipping_address: address(),
                placed_at: Some(at()),
            }),
            OrderConfirmed { order_id, confirmed_at: at() }.into(),
            OrderShipped { order_id, shipped_at: at() }.into(),
            OrderCancelled {
                order_id,
                reason: "payment declined".into(),
                failed_step: Some(FulfilmentStep::AuthorizePayment),
                cancelled_at: at(),
            }
            .into(),
        ] {
            push(event.event_type(), event.schema_version(), round_trip(event));
        }
        for event in [
            InventoryEvent::from(StockRestocked { sku: sku.clone(), quantity, restocked_at: at() }),
            StockReserved { sku: sku.clone(), order_id, quantity, reserved_at: at() }.into(),
            ReservationReleased { sku: sku.clone(), order_id, quantity, released_at: at() }.into(),
            ReservationCommitted { sku: sku.clone(), order_id, quantity, committed_at: at() }.into(),
            ReservationFenced { sku: sku.clone(), order_id, fenced_at: at() }.into(),
            StockReturned { sku: sku.clone(), order_id, quantity, returned_at: at() }.into(),
            PriceSet { sku: sku.clone(), unit_price_cents: Cents::new(1250).unwrap(), set_at: at() }.into(),
        ] {
            push(event.event_type(), event.schema_version(), round_trip(event));
        }
        for event in [
            PaymentEvent::from(PaymentAuthorized { order_id, amount_cents: amount, payment_method: "card".into(), authorized_at: at() }),
            PaymentCaptured { order_id, amount_cents: amount, captured_at: at() }.into(),
            PaymentVoided { order_id, amount_cents: amount, voided_at: at() }.into(),
            PaymentRefunded { order_id, amount_cents: amount, refunded_at: at() }.into(),
            PaymentFenced { order_id, fenced_at: at() }.into(),
        ] {
            push(event.event_type(), event.schema_version(), round_trip(event));
        }
        for event in [
            ShipmentEvent::from(ShipmentCreated { order_id, address: address(), created_at: at() }),
            ShipmentCancelled { order_id, reason: "order cancelled".into(), cancelled_at: at() }.into(),
            ShipmentFenced { order_id, fenced_at: at() }.into(),
        ] {
            push(event.event_type(), event.schema_version(), round_trip(event));
        }
        let step = || "AUTHORIZE_PAYMENT".to_owned();
        for event in [
            SagaEvent::from(SagaStarted { saga_id: order_id, data: json!({ "orderId": order_id }), started_at: at() }),
            SagaStepSucceeded { step: step(), compensation: true, at: at() }.into(),
            SagaStepRetryScheduled { step: step(), compensation: false, attempt: 2, reason: "no answer".into(), retry_at: at(), at: at() }
                .into(),
            SagaStepFailed { step: step(), reason: "card declined".into(), at: at() }.into(),
            SagaCompleted { at: at() }.into(),
            SagaAborted { failed_step: step(), reason: "card declined".into(), at: at() }.into(),
            SagaCancelRequested { reason: "changed my mind".into(), at: at() }.into(),
            SagaStuck { step: step(), phase: SagaPhase::Compensation, attempts: 8, reason: "refused: no".into(), at: at() }.into(),
            SagaResumed { at: at() }.into(),
        ] {
            push(event.event_type(), event.schema_version(), round_trip(event));
        }
        out
    }

    fn round_trip<E: DomainEvent>(event: E) -> serde_json::Value {
        let payload = event.to_payload();
        let back = E::from_payload(event.event_type(), payload.clone()).unwrap();
        assert_eq!(back, event, "{} does not round-trip", event.event_type());
        payload
    }

    #[test]
    fn every_event_variant_matches_its_latest_schema_and_round_trips() {
        let registry = registry().unwrap();
        for (event_type, version, payload) in samples() {
            assert_eq!(registry.latest_version(event_type).unwrap(), version, "{event_type} writes an old version");
            registry.validate(event_type, version, &payload).unwrap_or_else(|err| panic!("{event_type}: {err}\n{payload:#}"));
        }
    }

    #[test]
    fn every_schema_file_has_a_rust_event_type_and_back() {
        let in_rust: BTreeSet<&str> = OrderEvent::TYPES
            .iter()
            .chain(InventoryEvent::TYPES)
            .chain(PaymentEvent::TYPES)
            .chain(ShipmentEvent::TYPES)
            .chain(SagaEvent::TYPES)
            .map(|(event_type, _)| *event_type)
            .collect();
        let in_schemas: BTreeSet<&str> = SCHEMA_FILES.iter().map(|(event_type, _, _)| *event_type).collect();
        assert_eq!(in_rust, in_schemas);
        assert_eq!(samples().len(), in_rust.len(), "a variant has no sample");
    }

    #[test]
    fn a_payload_breaking_a_value_rule_does_not_decode() {
        let err = InventoryEvent::from_payload(
            "StockReserved",
            json!({ "sku": "SKU-1", "orderId": Uuid::nil(), "quantity": 0, "reservedAt": at() }),
        )
        .unwrap_err();
        // The cause is the error's source (a message never repeats it).
        let cause = std::error::Error::source(&err).map(ToString::to_string).unwrap_or_default();
        assert!(cause.contains("quantity"), "{err}: {cause}");
        assert!(matches!(OrderEvent::from_payload("StockReserved", json!({})), Err(crate::DecodeError::UnknownType { .. })));
    }
}
