//! Shipping, one shipment per order (stream `shipment-<orderId>`), booked
//! with a simulated carrier.
//!
//! # Rules
//!
//! - The carrier does not deliver to the countries in
//!   [`UNDELIVERABLE_COUNTRIES`] (`AQ`, Antarctica): creating a shipment there
//!   is [`ShippingError::Undeliverable`] and nothing is booked. Every other
//!   ISO 3166 alpha-2 code is delivered.
//! - One shipment per order ([`ShippingError::AlreadyCreated`]).
//! - A created shipment can be cancelled once, with a reason (1 to 500
//!   characters).
//! - **Fencing.** Cancelling a shipment that does not exist (the booking
//!   never arrived, or was refused) records [`ShipmentFenced`]: a booking for
//!   the order arriving later (a late or repeated forward command of a
//!   compensated saga) is refused ([`ShippingError::Fenced`]).

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use strata_schemas::events::{ShipmentCancelled, ShipmentCreated, ShipmentEvent, ShipmentFenced};
use strata_schemas::values::{Address, InvalidValue};
use uuid::Uuid;

use crate::Aggregate;

/// Country codes the simulated carrier refuses.
pub const UNDELIVERABLE_COUNTRIES: &[&str] = &["AQ"];

/// The shipment aggregate.
#[derive(Debug)]
pub enum Shipment {}

/// Where a shipment is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ShipmentStatus {
    /// Booked with the carrier.
    Created,
    /// Cancelled (terminal).
    Cancelled,
    /// Cancelled before any booking arrived (terminal).
    Fenced,
}

/// A shipment as folded from its stream.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ShipmentState {
    /// `None` before creation.
    pub status: Option<ShipmentStatus>,
    /// Where to.
    pub address: Option<Address>,
}

/// What can be asked of a shipment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", rename_all_fields = "camelCase")]
pub enum ShipmentCommand {
    /// Book a shipment for an order.
    Create {
        /// The order.
        order_id: Uuid,
        /// Where to (already valid: it comes from the placed order).
        address: Address,
        /// When.
        at: DateTime<Utc>,
    },
    /// Cancel the booking.
    Cancel {
        /// The order.
        order_id: Uuid,
        /// Why.
        reason: String,
        /// When.
        at: DateTime<Utc>,
    },
}

/// Why a shipping command was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ShippingError {
    /// The carrier does not deliver there.
    #[error("the carrier does not deliver to {country}")]
    Undeliverable {
        /// The country code.
        country: String,
    },
    /// The address breaks a rule.
    #[error("shipping address: {0}")]
    InvalidAddress(InvalidValue),
    /// The order already has a shipment.
    #[error("order {order_id} already has a shipment")]
    AlreadyCreated {
        /// The order.
        order_id: Uuid,
    },
    /// The order's shipment was cancelled before this booking arrived.
    #[error("the shipment of order {order_id} was cancelled before this booking arrived")]
    Fenced {
        /// The order.
        order_id: Uuid,
    },
    /// The shipment was already cancelled.
    #[error("the shipment of order {order_id} is already cancelled")]
    AlreadyCancelled {
        /// The order.
        order_id: Uuid,
    },
    /// The reason is empty, longer than 500 characters, or has a control character.
    #[error("a cancellation needs a reason of 1 to 500 characters, without control characters")]
    InvalidReason,
}

impl Aggregate for Shipment {
    const CATEGORY: &'static str = "shipment";
    const SNAPSHOT_VERSION: u32 = 1;
    type State = ShipmentState;
    type Command = ShipmentCommand;
    type Event = ShipmentEvent;
    type Error = ShippingError;

    fn aggregate_id(command: &ShipmentCommand) -> String {
        match command {
            ShipmentCommand::Create { order_id, .. } | ShipmentCommand::Cancel { order_id, .. } => order_id.to_string(),
        }
    }

    fn creates_stream(command: &Self::Command) -> bool {
        matches!(command, ShipmentCommand::Create { .. })
    }

    fn decide(state: &ShipmentState, command: ShipmentCommand) -> Result<Vec<ShipmentEvent>, ShippingError> {
        match command {
            ShipmentCommand::Create { order_id, address, at } => {
                match state.status {
                    Some(ShipmentStatus::Fenced) => return Err(ShippingError::Fenced { order_id }),
                    Some(_) => return Err(ShippingError::AlreadyCreated { order_id }),
                    None => {}
                }
                address.check().map_err(ShippingError::InvalidAddress)?;
                if UNDELIVERABLE_COUNTRIES.contains(&address.country.as_str()) {
                    return Err(ShippingError::Undeliverable { country: address.country.to_string() });
                }
                Ok(vec![ShipmentCreated { order_id, address, created_at: at }.into()])
            }
            ShipmentCommand::Cancel { order_id, reason, at } => match state.status {
                None => Ok(vec![ShipmentFenced { order_id, fenced_at: at }.into()]),
                Some(ShipmentStatus::Cancelled | ShipmentStatus::Fenced) => Err(ShippingError::AlreadyCancelled { order_id }),
                Some(ShipmentStatus::Created) => {
                    if reason.trim().is_empty()
                        || reason.chars().count() > 500
                        || reason.chars().any(strata_schemas::values::is_forbidden_in_text)
                    {
                        return Err(ShippingError::InvalidReason);
                    }
                    Ok(vec![ShipmentCancelled { order_id, reason, cancelled_at: at }.into()])
                }
            },
        }
    }

    fn evolve(mut state: ShipmentState, event: &ShipmentEvent) -> ShipmentState {
        match event {
            ShipmentEvent::ShipmentCreated(created) => {
                state.status = Some(ShipmentStatus::Created);
                state.address = Some(created.address.clone());
            }
            ShipmentEvent::ShipmentCancelled(_) => state.status = Some(ShipmentStatus::Cancelled),
            ShipmentEvent::ShipmentFenced(_) => state.status = Some(ShipmentStatus::Fenced),
        }
        state
    }
}

#[cfg(test)]
mod tests {
    use strata_schemas::values::CountryCode;

    use super::*;
    use crate::testing::given;

    fn at() -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000, 0).unwrap()
    }
    fn id() -> Uuid {
        Uuid::from_u128(9)
    }
    fn address(country: &str) -> Address {
        Address {
            name: "Ada".into(),
            street: "Rue 1".into(),
            city: "Gent".into(),
            postal_code: "9000".into(),
            country: CountryCode::parse(country).unwrap(),
        }
    }
    fn created() -> ShipmentEvent {
        ShipmentCreated { order_id: id(), address: address("BE"), created_at: at() }.into()
    }
    fn cancel(reason: &str) -> ShipmentCommand {
        ShipmentCommand::Cancel { order_id: id(), reason: reason.into(), at: at() }
    }

    #[test]
    fn a_shipment_is_created_for_a_deliverable_country() {
        let state =
            given::<Shipment>([]).when(ShipmentCommand::Create { order_id: id(), address: address("BE"), at: at() }).then([created()]);
        assert_eq!(state.status, Some(ShipmentStatus::Created));
    }

    #[test]
    fn the_undeliverable_country_is_refused() {
        given::<Shipment>([])
            .when(ShipmentCommand::Create { order_id: id(), address: address("AQ"), at: at() })
            .then_error(ShippingError::Undeliverable { country: "AQ".into() });
    }

    #[test]
    fn an_address_with_an_empty_street_is_refused() {
        let mut bad = address("BE");
        bad.street = String::new();
        given::<Shipment>([])
            .when(ShipmentCommand::Create { order_id: id(), address: bad, at: at() })
            .then_error_matches(|err| matches!(err, ShippingError::InvalidAddress(v) if v.field == "street"));
    }

    #[test]
    fn a_second_shipment_for_one_order_is_refused() {
        given::<Shipment>([created()])
            .when(ShipmentCommand::Create { order_id: id(), address: address("BE"), at: at() })
            .then_error(ShippingError::AlreadyCreated { order_id: id() });
    }

    #[test]
    fn a_created_shipment_is_cancelled_once() {
        let cancelled: ShipmentEvent = ShipmentCancelled { order_id: id(), reason: "payment failed".into(), cancelled_at: at() }.into();
        given::<Shipment>([created()]).when(cancel("payment failed")).then([cancelled.clone()]);
        given::<Shipment>([created(), cancelled]).when(cancel("again")).then_error(ShippingError::AlreadyCancelled { order_id: id() });
    }

    #[test]
    fn cancelling_without_a_shipment_or_a_reason_is_refused() {
        let fenced: ShipmentEvent = ShipmentFenced { order_id: id(), fenced_at: at() }.into();
        let state = given::<Shipment>([]).when(cancel("x")).then([fenced.clone()]);
        assert_eq!(state.status, Some(ShipmentStatus::Fenced));
        given::<Shipment>([fenced.clone()])
            .when(ShipmentCommand::Create { order_id: id(), address: address("BE"), at: at() })
            .then_error(ShippingError::Fenced { order_id: id() });
        given::<Shipment>([fenced]).when(cancel("x")).then_error(ShippingError::AlreadyCancelled { order_id: id() });
        given::<Shipment>([created()]).when(cancel("")).then_error(ShippingError::InvalidReason);
    }
}
