//! Inventory, one aggregate per SKU (stream `inventory-<SKU>`).
//!
//! # Rules
//!
//! - A SKU exists once it has been restocked; reserving, releasing or
//!   committing an unknown SKU is [`InventoryError::UnknownSku`].
//! - Quantities are 1 to 10,000 units per command; zero or negative is
//!   [`InventoryError::InvalidQuantity`].
//! - `available = on hand − reserved`. A reservation larger than what is
//!   available is refused ([`InventoryError::OutOfStock`]) and nothing is
//!   reserved: stock is never oversold, also under concurrency, because every
//!   reservation is appended expecting the version its decision saw.
//! - One reservation per order and SKU: reserving again for the same order is
//!   [`InventoryError::AlreadyReserved`] (retries of the same command are
//!   answered by the handler's command-id idempotency before this rule).
//! - Releasing gives the whole reservation back to available stock; committing
//!   (on shipment) removes the reserved units from on-hand stock. Committing
//!   needs a reservation ([`InventoryError::NoReservation`]).
//! - **Fencing.** A release that finds no reservation for the order (nothing
//!   to undo: the reservation never arrived, or was refused) records
//!   [`ReservationFenced`]; a reservation for that order arriving later (a
//!   late or repeated forward command of a compensated saga) is refused
//!   ([`InventoryError::Fenced`]) and changes nothing. Fences are kept for
//!   [`FENCE_HORIZON`] after the stream's latest event; a reservation decided
//!   longer ago than that is refused as [`InventoryError::Expired`], so a
//!   forgotten fence can never be needed.
//! - **Prices.** A SKU's catalog price is set by an operator (`SetPrice`, or
//!   a restock that names one) and kept in its stream ([`PriceSet`], every
//!   price it had). A reservation names the unit price its order line
//!   carries, and is refused unless the catalog has exactly that price: a SKU
//!   with no price is not for sale ([`InventoryError::NoPrice`]), and a price
//!   that differs is [`InventoryError::PriceChanged`]. So an order whose
//!   stock was reserved is charged the catalog's total at that moment, never
//!   what a client made up. A price is 0 to [`MAX_UNIT_PRICE_CENTS`].
//! - **Returns.** Returning an order's line (its cancellation after
//!   confirmation) releases the reservation if the units were not committed
//!   yet, else puts the committed units back on hand ([`StockReturned`]).
//!   The caller names the quantity it committed; the saga returns each line
//!   it committed once (its command ids are deterministic).

use std::collections::BTreeMap;

use chrono::{DateTime, Duration, Utc};
use serde::{Deserialize, Serialize};
use strata_schemas::events::{
    InventoryEvent, PriceSet, ReservationCommitted, ReservationFenced, ReservationReleased, StockReserved, StockRestocked, StockReturned,
};
use strata_schemas::values::{Cents, InvalidValue, Quantity, Sku};
use uuid::Uuid;

use crate::Aggregate;

/// How long a fence is remembered after the stream's latest event, and how
/// old a reservation request may be.
pub const FENCE_HORIZON: Duration = Duration::days(1);

/// The highest unit price (one billion units of currency), as an order line
/// may carry it.
pub const MAX_UNIT_PRICE_CENTS: i64 = 100_000_000_000;

/// The inventory aggregate of one SKU.
#[derive(Debug)]
pub enum Inventory {}

/// One SKU's stock.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct InventoryState {
    /// Restocked at least once.
    pub known: bool,
    /// Units physically in stock (reserved ones included).
    pub on_hand: u64,
    /// Units held per order.
    pub reservations: BTreeMap<Uuid, Quantity>,
    /// Orders whose reservation is fenced, with when (see the module docs).
    #[serde(default)]
    pub fences: BTreeMap<Uuid, DateTime<Utc>>,
    /// The latest time carried by an event of the stream.
    #[serde(default)]
    pub latest_at: Option<DateTime<Utc>>,
    /// The catalog price of one unit; none: not for sale.
    #[serde(default)]
    pub unit_price_cents: Option<Cents>,
}

impl InventoryState {
    /// Units held by reservations.
    pub fn reserved(&self) -> u64 {
        self.reservations.values().map(|units| u64::from(units.get())).sum()
    }

    /// Units that can still be reserved.
    pub fn available(&self) -> u64 {
        self.on_hand.saturating_sub(self.reserved())
    }
}

/// What can be asked of a SKU's stock. Quantities arrive raw and are checked
/// by `decide`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", rename_all_fields = "camelCase")]
pub enum InventoryCommand {
    /// Units arrived, and the price from now on if it is named.
    Restock {
        /// The SKU.
        sku: Sku,
        /// How many (1 to 10,000).
        quantity: i64,
        /// The new catalog price of one unit, if it changes.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        unit_price_cents: Option<i64>,
        /// When.
        at: DateTime<Utc>,
    },
    /// An operator sets the catalog price of one unit.
    SetPrice {
        /// The SKU.
        sku: Sku,
        /// The price (0 to [`MAX_UNIT_PRICE_CENTS`]).
        unit_price_cents: i64,
        /// When.
        at: DateTime<Utc>,
    },
    /// Hold units for an order.
    Reserve {
        /// The SKU.
        sku: Sku,
        /// For which order.
        order_id: Uuid,
        /// How many (1 to 10,000).
        quantity: i64,
        /// The unit price the order line carries (what its customer is
        /// charged); refused unless it is the catalog's.
        #[serde(default)]
        unit_price_cents: Option<i64>,
        /// When.
        at: DateTime<Utc>,
    },
    /// Give an order's reservation back (compensation, cancellation).
    Release {
        /// The SKU.
        sku: Sku,
        /// Whose reservation.
        order_id: Uuid,
        /// When.
        at: DateTime<Utc>,
    },
    /// The order was cancelled after confirmation: give its line back
    /// (release the reservation if it was not committed, else return the
    /// committed units to on-hand stock).
    Return {
        /// The SKU.
        sku: Sku,
        /// Whose units.
        order_id: Uuid,
        /// How many units the order committed (1 to 10,000).
        quantity: i64,
        /// When.
        at: DateTime<Utc>,
    },
    /// The order shipped: its reserved units leave the stock.
    Commit {
        /// The SKU.
        sku: Sku,
        /// Whose reservation.
        order_id: Uuid,
        /// When.
        at: DateTime<Utc>,
    },
}

/// Why the inventory refused a command.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum InventoryError {
    /// The quantity is zero, negative or over the limit.
    #[error(transparent)]
    InvalidQuantity(InvalidValue),
    /// The price is negative or over [`MAX_UNIT_PRICE_CENTS`].
    #[error(transparent)]
    InvalidPrice(InvalidValue),
    /// The SKU has no catalog price: it is not for sale.
    #[error("no price for {sku}")]
    NoPrice {
        /// The SKU.
        sku: Sku,
    },
    /// The order line's price is not the catalog's.
    #[error("price changed: {sku} is {}", unit_price_cents.get())]
    PriceChanged {
        /// The SKU.
        sku: Sku,
        /// The catalog price of one unit.
        unit_price_cents: Cents,
    },
    /// The SKU was never restocked.
    #[error("unknown sku {sku}")]
    UnknownSku {
        /// The SKU.
        sku: Sku,
    },
    /// Not enough units available.
    #[error("out of stock: {requested} of {sku} requested, {available} available")]
    OutOfStock {
        /// The SKU.
        sku: Sku,
        /// Units asked for.
        requested: u32,
        /// Units available.
        available: u64,
    },
    /// The order already holds a reservation of this SKU.
    #[error("order {order_id} already holds a reservation")]
    AlreadyReserved {
        /// The order.
        order_id: Uuid,
    },
    /// The order holds no reservation of this SKU.
    #[error("order {order_id} holds no reservation")]
    NoReservation {
        /// The order.
        order_id: Uuid,
    },
    /// The order's reservation was fenced by a release that found nothing:
    /// this reservation arrived after its compensation.
    #[error("order {order_id} was released before this reservation arrived")]
    Fenced {
        /// The order.
        order_id: Uuid,
    },
    /// The reservation was decided longer than [`FENCE_HORIZON`] before the
    /// stream's latest event.
    #[error("the reservation request of {at} expired")]
    Expired {
        /// When it was decided.
        at: DateTime<Utc>,
    },
}

impl Aggregate for Inventory {
    const CATEGORY: &'static str = "inventory";
    const SNAPSHOT_VERSION: u32 = 1;
    type State = InventoryState;
    type Command = InventoryCommand;
    type Event = InventoryEvent;
    type Error = InventoryError;

    fn aggregate_id(command: &InventoryCommand) -> String {
        match command {
            InventoryCommand::Restock { sku, .. }
            | InventoryCommand::SetPrice { sku, .. }
            | InventoryCommand::Reserve { sku, .. }
            | InventoryCommand::Release { sku, .. }
            | InventoryCommand::Return { sku, .. }
            | InventoryCommand::Commit { sku, .. } => sku.to_string(),
        }
    }

    fn decide(state: &InventoryState, command: InventoryCommand) -> Result<Vec<InventoryEvent>, InventoryError> {
        match command {
            InventoryCommand::Restock { sku, quantity, unit_price_cents, at } => {
                let quantity = Quantity::new(quantity).map_err(InventoryError::InvalidQuantity)?;
                let price = unit_price_cents.map(price).transpose()?;
                let mut events: Vec<InventoryEvent> = vec![StockRestocked { sku: sku.clone(), quantity, restocked_at: at }.into()];
                if let Some(unit_price_cents) = price.filter(|&price| state.unit_price_cents != Some(price)) {
                    events.push(PriceSet { sku, unit_price_cents, set_at: at }.into());
                }
                Ok(events)
            }
            InventoryCommand::SetPrice { sku, unit_price_cents, at } => {
                let unit_price_cents = price(unit_price_cents)?;
                Ok(vec![PriceSet { sku, unit_price_cents, set_at: at }.into()])
            }
            InventoryCommand::Reserve { sku, order_id, quantity, unit_price_cents, at } => {
                let quantity = Quantity::new(quantity).map_err(InventoryError::InvalidQuantity)?;
                if state.fences.contains_key(&order_id) {
                    return Err(InventoryError::Fenced { order_id });
                }
                if state.latest_at.is_some_and(|latest| at < latest - FENCE_HORIZON) {
                    return Err(InventoryError::Expired { at });
                }
                if !state.known {
                    return Err(InventoryError::UnknownSku { sku });
                }
                if state.reservations.contains_key(&order_id) {
                    return Err(InventoryError::AlreadyReserved { order_id });
                }
                let Some(catalog) = state.unit_price_cents else {
                    return Err(InventoryError::NoPrice { sku });
                };
                if unit_price_cents != Some(catalog.get() as i64) {
                    return Err(InventoryError::PriceChanged { sku, unit_price_cents: catalog });
                }
                let available = state.available();
                if u64::from(quantity.get()) > available {
                    return Err(InventoryError::OutOfStock { sku, requested: quantity.get(), available });
                }
                Ok(vec![StockReserved { sku, order_id, quantity, reserved_at: at }.into()])
            }
            InventoryCommand::Release { sku, order_id, at } => match state.reservations.get(&order_id) {
                Some(&quantity) => Ok(vec![ReservationReleased { sku, order_id, quantity, released_at: at }.into()]),
                None if state.fences.contains_key(&order_id) => Err(InventoryError::NoReservation { order_id }),
                None => Ok(vec![ReservationFenced { sku, order_id, fenced_at: at }.into()]),
            },
            InventoryCommand::Return { sku, order_id, quantity, at } => {
                let quantity = Quantity::new(quantity).map_err(InventoryError::InvalidQuantity)?;
                if let Some(&reserved) = state.reservations.get(&order_id) {
                    return Ok(vec![ReservationReleased { sku, order_id, quantity: reserved, released_at: at }.into()]);
                }
                if !state.known {
                    return Err(InventoryError::UnknownSku { sku });
                }
                Ok(vec![StockReturned { sku, order_id, quantity, returned_at: at }.into()])
            }
            InventoryCommand::Commit { sku, order_id, at } => {
                let quantity = reservation(state, &sku, order_id)?;
                Ok(vec![ReservationCommitted { sku, order_id, quantity, committed_at: at }.into()])
            }
        }
    }

    fn evolve(mut state: InventoryState, event: &InventoryEvent) -> InventoryState {
        let at = match event {
            InventoryEvent::StockRestocked(event) => {
                state.known = true;
                state.on_hand += u64::from(event.quantity.get());
                event.restocked_at
            }
            InventoryEvent::StockReserved(event) => {
                state.reservations.insert(event.order_id, event.quantity);
                event.reserved_at
            }
            InventoryEvent::ReservationReleased(event) => {
                state.reservations.remove(&event.order_id);
                event.released_at
            }
            InventoryEvent::ReservationCommitted(event) => {
                state.reservations.remove(&event.order_id);
                state.on_hand = state.on_hand.saturating_sub(u64::from(event.quantity.get()));
                event.committed_at
            }
            InventoryEvent::ReservationFenced(event) => {
                // Forget fences no reservation can need any more (a request
                // older than the horizon is refused as expired). Pruned here,
                // where fences are added, so other events cost nothing.
                let horizon = state.latest_at.map_or(event.fenced_at, |latest| latest.max(event.fenced_at)) - FENCE_HORIZON;
                state.fences.retain(|_, fenced_at| *fenced_at >= horizon);
                state.fences.insert(event.order_id, event.fenced_at);
                event.fenced_at
            }
            InventoryEvent::StockReturned(event) => {
                state.on_hand += u64::from(event.quantity.get());
                event.returned_at
            }
            InventoryEvent::PriceSet(event) => {
                state.unit_price_cents = Some(event.unit_price_cents);
                event.set_at
            }
        };
        state.latest_at = Some(state.latest_at.map_or(at, |latest| latest.max(at)));
        state
    }
}

fn price(cents: i64) -> Result<Cents, InventoryError> {
    if cents > MAX_UNIT_PRICE_CENTS {
        return Err(InventoryError::InvalidPrice(InvalidValue {
            field: "unitPriceCents",
            reason: format!("{cents} cents is over the limit of {MAX_UNIT_PRICE_CENTS}"),
        }));
    }
    Cents::new(cents).map_err(|mut invalid| {
        invalid.field = "unitPriceCents";
        InventoryError::InvalidPrice(invalid)
    })
}

fn reservation(state: &InventoryState, sku: &Sku, order_id: Uuid) -> Result<Quantity, InventoryError> {
    if !state.known {
        return Err(InventoryError::UnknownSku { sku: sku.clone() });
    }
    state.reservations.get(&order_id).copied().ok_or(InventoryError::NoReservation { order_id })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::given;

    fn at() -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000, 0).unwrap()
    }
    fn sku() -> Sku {
        Sku::parse("SKU-1").unwrap()
    }
    fn order(n: u128) -> Uuid {
        Uuid::from_u128(n)
    }
    fn units(n: i64) -> Quantity {
        Quantity::new(n).unwrap()
    }
    fn restocked(n: i64) -> InventoryEvent {
        StockRestocked { sku: sku(), quantity: units(n), restocked_at: at() }.into()
    }
    fn reserved(order_id: Uuid, n: i64) -> InventoryEvent {
        StockReserved { sku: sku(), order_id, quantity: units(n), reserved_at: at() }.into()
    }
    fn reserve(order_id: Uuid, quantity: i64) -> InventoryCommand {
        InventoryCommand::Reserve { sku: sku(), order_id, quantity, unit_price_cents: Some(PRICE), at: at() }
    }
    const PRICE: i64 = 1250;
    fn priced(cents: i64) -> InventoryEvent {
        PriceSet { sku: sku(), unit_price_cents: Cents::new(cents).unwrap(), set_at: at() }.into()
    }

    #[test]
    fn restocking_adds_units_on_hand() {
        let state = given::<Inventory>([restocked(3)])
            .when(InventoryCommand::Restock { sku: sku(), quantity: 7, unit_price_cents: None, at: at() })
            .then([restocked(7)]);
        assert_eq!((state.on_hand, state.available()), (10, 10));
    }

    #[test]
    fn restocking_zero_negative_or_too_many_units_is_refused() {
        for quantity in [0, -4, 10_001] {
            given::<Inventory>([])
                .when(InventoryCommand::Restock { sku: sku(), quantity, unit_price_cents: None, at: at() })
                .then_error_matches(|err| matches!(err, InventoryError::InvalidQuantity(v) if v.field == "quantity"));
        }
    }

    #[test]
    fn reserving_what_is_available_holds_it() {
        let state = given::<Inventory>([restocked(5), priced(PRICE), reserved(order(1), 2)])
            .when(reserve(order(2), 3))
            .then([reserved(order(2), 3)]);
        assert_eq!((state.on_hand, state.reserved(), state.available()), (5, 5, 0));
    }

    #[test]
    fn reserving_more_than_available_is_refused() {
        given::<Inventory>([restocked(5), priced(PRICE), reserved(order(1), 4)])
            .when(reserve(order(2), 2))
            .then_error(InventoryError::OutOfStock { sku: sku(), requested: 2, available: 1 });
    }

    #[test]
    fn reserving_an_unknown_sku_is_refused() {
        given::<Inventory>([]).when(reserve(order(1), 1)).then_error(InventoryError::UnknownSku { sku: sku() });
    }

    #[test]
    fn reserving_zero_or_negative_units_is_refused() {
        for quantity in [0, -1] {
            given::<Inventory>([restocked(5)])
                .when(reserve(order(1), quantity))
                .then_error_matches(|err| matches!(err, InventoryError::InvalidQuantity(_)));
        }
    }

    #[test]
    fn reserving_twice_for_one_order_is_refused() {
        given::<Inventory>([restocked(5), reserved(order(1), 1)])
            .when(reserve(order(1), 1))
            .then_error(InventoryError::AlreadyReserved { order_id: order(1) });
    }

    #[test]
    fn releasing_gives_the_units_back() {
        let state = given::<Inventory>([restocked(5), reserved(order(1), 4)])
            .when(InventoryCommand::Release { sku: sku(), order_id: order(1), at: at() })
            .then([ReservationReleased { sku: sku(), order_id: order(1), quantity: units(4), released_at: at() }.into()]);
        assert_eq!((state.on_hand, state.available()), (5, 5));
    }

    #[test]
    fn committing_removes_the_reserved_units_from_stock() {
        let state = given::<Inventory>([restocked(5), reserved(order(1), 4)])
            .when(InventoryCommand::Commit { sku: sku(), order_id: order(1), at: at() })
            .then([ReservationCommitted { sku: sku(), order_id: order(1), quantity: units(4), committed_at: at() }.into()]);
        assert_eq!((state.on_hand, state.reserved(), state.available()), (1, 0, 1));
    }

    fn fenced(order_id: Uuid, fenced_at: DateTime<Utc>) -> InventoryEvent {
        ReservationFenced { sku: sku(), order_id, fenced_at }.into()
    }

    #[test]
    fn a_release_without_a_reservation_fences_the_order_against_a_late_reserve() {
        let state = given::<Inventory>([restocked(5)])
            .when(InventoryCommand::Release { sku: sku(), order_id: order(9), at: at() })
            .then([fenced(order(9), at())]);
        assert_eq!(state.available(), 5);
        given::<Inventory>([restocked(5), fenced(order(9), at())])
            .when(reserve(order(9), 1))
            .then_error(InventoryError::Fenced { order_id: order(9) });
        given::<Inventory>([restocked(5), fenced(order(9), at())])
            .when(InventoryCommand::Release { sku: sku(), order_id: order(9), at: at() })
            .then_error(InventoryError::NoReservation { order_id: order(9) });
        // Other orders are not fenced.
        given::<Inventory>([restocked(5), priced(PRICE), fenced(order(9), at())]).when(reserve(order(8), 1)).then([reserved(order(8), 1)]);
    }

    #[test]
    fn an_unknown_sku_is_fenced_too_so_a_restock_cannot_let_a_late_reserve_in() {
        given::<Inventory>([]).when(InventoryCommand::Release { sku: sku(), order_id: order(9), at: at() }).then([fenced(order(9), at())]);
        given::<Inventory>([fenced(order(9), at()), restocked(5)])
            .when(reserve(order(9), 1))
            .then_error(InventoryError::Fenced { order_id: order(9) });
    }

    #[test]
    fn fences_are_forgotten_after_the_horizon_and_older_requests_expire() {
        let later = at() + FENCE_HORIZON + Duration::seconds(1);
        let state = given::<Inventory>([restocked(5), fenced(order(9), at())])
            .when(InventoryCommand::Release { sku: sku(), order_id: order(8), at: later })
            .then([fenced(order(8), later)]);
        assert_eq!(state.fences.keys().copied().collect::<Vec<_>>(), vec![order(8)]);
        given::<Inventory>([restocked(5), fenced(order(9), at()), fenced(order(8), later)])
            .when(reserve(order(9), 1))
            .then_error(InventoryError::Expired { at: at() });
    }

    #[test]
    fn returning_a_committed_line_puts_its_units_back_and_an_uncommitted_one_is_released() {
        let committed: InventoryEvent =
            ReservationCommitted { sku: sku(), order_id: order(1), quantity: units(4), committed_at: at() }.into();
        let back = InventoryCommand::Return { sku: sku(), order_id: order(1), quantity: 4, at: at() };
        let state = given::<Inventory>([restocked(5), reserved(order(1), 4), committed]).when(back.clone()).then([StockReturned {
            sku: sku(),
            order_id: order(1),
            quantity: units(4),
            returned_at: at(),
        }
        .into()]);
        assert_eq!((state.on_hand, state.reserved(), state.available()), (5, 0, 5));
        given::<Inventory>([restocked(5), reserved(order(1), 3)]).when(back.clone()).then([ReservationReleased {
            sku: sku(),
            order_id: order(1),
            quantity: units(3),
            released_at: at(),
        }
        .into()]);
        given::<Inventory>([]).when(back).then_error(InventoryError::UnknownSku { sku: sku() });
    }

    #[test]
    fn committing_without_a_reservation_is_refused() {
        given::<Inventory>([restocked(5), reserved(order(9), 1)])
            .when(InventoryCommand::Commit { sku: sku(), order_id: order(8), at: at() })
            .then_error(InventoryError::NoReservation { order_id: order(8) });
        given::<Inventory>([])
            .when(InventoryCommand::Commit { sku: sku(), order_id: order(8), at: at() })
            .then_error(InventoryError::UnknownSku { sku: sku() });
    }

    #[test]
    fn a_released_reservation_can_be_reserved_again() {
        given::<Inventory>([
            restocked(1),
            priced(PRICE),
            reserved(order(1), 1),
            ReservationReleased { sku: sku(), order_id: order(1), quantity: units(1), released_at: at() }.into(),
        ])
        .when(reserve(order(2), 1))
        .then([reserved(order(2), 1)]);
    }

    #[test]
    fn a_sku_without_a_price_is_not_for_sale_and_a_line_at_another_price_is_refused() {
        given::<Inventory>([restocked(5)]).when(reserve(order(1), 1)).then_error(InventoryError::NoPrice { sku: sku() });
        let catalog = Cents::new(1999).unwrap();
        given::<Inventory>([restocked(5), priced(1999)])
            .when(reserve(order(1), 1))
            .then_error(InventoryError::PriceChanged { sku: sku(), unit_price_cents: catalog });
        let unpriced = InventoryCommand::Reserve { sku: sku(), order_id: order(1), quantity: 1, unit_price_cents: None, at: at() };
        given::<Inventory>([restocked(5), priced(1999)])
            .when(unpriced)
            .then_error(InventoryError::PriceChanged { sku: sku(), unit_price_cents: catalog });
        // The refusal names the catalog's price in cents.
        assert_eq!(InventoryError::PriceChanged { sku: sku(), unit_price_cents: catalog }.to_string(), "price changed: SKU-1 is 1999");
        assert_eq!(InventoryError::NoPrice { sku: sku() }.to_string(), "no price for SKU-1");
        // The price in force is the latest one.
        given::<Inventory>([restocked(5), priced(1999), priced(PRICE)]).when(reserve(order(1), 1)).then([reserved(order(1), 1)]);
    }

    #[test]
    fn an_operator_sets_prices_and_a_restock_may_name_one() {
        let state = given::<Inventory>([]).when(InventoryCommand::SetPrice { sku: sku(), unit_price_cents: 0, at: at() }).then([priced(0)]);
        assert_eq!(state.unit_price_cents, Some(Cents::ZERO));
        let restock = |cents| InventoryCommand::Restock { sku: sku(), quantity: 2, unit_price_cents: Some(cents), at: at() };
        let state = given::<Inventory>([]).when(restock(PRICE)).then([restocked(2), priced(PRICE)]);
        assert_eq!((state.on_hand, state.unit_price_cents), (2, Some(Cents::new(PRICE).unwrap())));
        // The same price again is no new event.
        given::<Inventory>([priced(PRICE)]).when(restock(PRICE)).then([restocked(2)]);
        for cents in [-1, MAX_UNIT_PRICE_CENTS + 1] {
            given::<Inventory>([])
                .when(InventoryCommand::SetPrice { sku: sku(), unit_price_cents: cents, at: at() })
                .then_error_matches(|err| matches!(err, InventoryError::InvalidPrice(v) if v.field == "unitPriceCents"));
            given::<Inventory>([]).when(restock(cents)).then_error_matches(|err| matches!(err, InventoryError::InvalidPrice(_)));
        }
    }
}
