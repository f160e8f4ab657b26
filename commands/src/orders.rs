//! Orders (stream `order-<orderId>`).
//!
//! # Rules
//!
//! - **Place**: a customer id of 1 to 128 characters; 1 to 100 lines, each a
//!   valid SKU (upper-case letters, digits, `-`), a quantity of 1 to 10,000
//!   and a unit price of 0 or more cents, each SKU at most once; a payment
//!   method of 1 to 64 characters; a shipping address with non-empty name,
//!   street, city and postal code and an ISO 3166 alpha-2 country. The total
//!   is computed (Σ quantity × unit price) and stored with the order. Placing
//!   an order id twice is [`OrderError::AlreadyPlaced`].
//! - **Statuses**: `PENDING` → `CONFIRMED` → `SHIPPED`, or `CANCELLED` from
//!   `PENDING` or `CONFIRMED`. `SHIPPED` and `CANCELLED` are terminal: nothing
//!   changes after them ([`OrderError::WrongStatus`]).
//! - **Cancel** needs a reason (1 to 500 characters) and names the failed
//!   fulfilment step when it is a compensation.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use strata_schemas::events::{OrderCancelled, OrderConfirmed, OrderEvent, OrderPlaced, OrderShipped};
use strata_schemas::values::{check_no_control, Address, Cents, CountryCode, FulfilmentStep, InvalidValue, OrderLine, Quantity, Sku};
use uuid::Uuid;

use crate::Aggregate;

/// Most lines one order may have.
pub const MAX_LINES: usize = 100;

/// The order aggregate.
#[derive(Debug)]
pub enum Order {}

/// Where an order is in its life (defined with the domain's other words in
/// `strata_schemas::values`).
pub use strata_schemas::values::OrderStatus;

/// An order as folded from its stream; `placed` is `None` before it is placed.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OrderState {
    /// The order as placed.
    pub placed: Option<OrderPlaced>,
    /// Current status (`None`: not placed).
    pub status: Option<OrderStatus>,
    /// Why it was cancelled.
    pub cancel_reason: Option<String>,
    /// Which step failed, when cancelled by compensation.
    pub failed_step: Option<FulfilmentStep>,
}

/// A line as the caller sent it, checked by `decide`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LineInput {
    /// The SKU text.
    pub sku: String,
    /// Units (1 to 10,000).
    pub quantity: i64,
    /// Price of one unit in cents (0 or more).
    pub unit_price_cents: i64,
}

/// An address as the caller sent it, checked by `decide`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AddressInput {
    /// Recipient.
    pub name: String,
    /// Street and number.
    pub street: String,
    /// City.
    pub city: String,
    /// Postal code.
    pub postal_code: String,
    /// ISO 3166 alpha-2 code.
    pub country: String,
}

impl AddressInput {
    /// Checks every field.
    pub fn parse(self) -> Result<Address, InvalidValue> {
        let address = Address {
            name: self.name,
            street: self.street,
            city: self.city,
            postal_code: self.postal_code,
            country: CountryCode::parse(&self.country)?,
        };
        address.check()?;
        Ok(address)
    }
}

/// Place an order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PlaceOrder {
    /// The new order's id.
    pub order_id: Uuid,
    /// Who orders.
    pub customer_id: String,
    /// What.
    pub lines: Vec<LineInput>,
    /// How they pay.
    pub payment_method: String,
    /// Where to.
    pub shipping_address: AddressInput,
    /// When.
    pub at: DateTime<Utc>,
}

/// What can be asked of an order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", rename_all_fields = "camelCase")]
pub enum OrderCommand {
    /// Place a new order.
    Place(PlaceOrder),
    /// Every fulfilment step succeeded.
    Confirm {
        /// The order.
        order_id: Uuid,
        /// When.
        at: DateTime<Utc>,
    },
    /// The order left the warehouse.
    MarkShipped {
        /// The order.
        order_id: Uuid,
        /// When.
        at: DateTime<Utc>,
    },
    /// Cancel, on request (`failed_step: None`) or as a compensation.
    Cancel {
        /// The order.
        order_id: Uuid,
        /// Why (1 to 500 characters).
        reason: String,
        /// The fulfilment step that failed, for a compensation.
        failed_step: Option<FulfilmentStep>,
        /// When.
        at: DateTime<Utc>,
    },
}

/// Why an order command was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum OrderError {
    /// No lines.
    #[error("an order needs at least one line")]
    EmptyOrder,
    /// More than [`MAX_LINES`] lines.
    #[error("an order has at most {max} lines, got {got}")]
    TooManyLines {
        /// The limit.
        max: usize,
        /// Lines sent.
        got: usize,
    },
    /// A line breaks a value rule.
    #[error("line {index}: {source}")]
    InvalidLine {
        /// Zero-based index of the line.
        index: usize,
        /// What is wrong.
        source: InvalidValue,
    },
    /// A SKU appears on two lines.
    #[error("sku {sku} appears on more than one line")]
    DuplicateSku {
        /// The SKU.
        sku: Sku,
    },
    /// The total does not fit the money type.
    #[error("the order total is too large")]
    TotalTooLarge,
    /// Customer id empty or too long.
    #[error("the customer id must have 1 to 128 characters")]
    InvalidCustomer,
    /// Payment method empty or too long.
    #[error("the payment method must have 1 to 64 characters")]
    InvalidPaymentMethod,
    /// The shipping address breaks a rule.
    #[error("shipping address: {0}")]
    InvalidAddress(InvalidValue),
    /// A text field holds a control character (U+0000–U+001F, U+007F).
    #[error(transparent)]
    InvalidText(InvalidValue),
    /// The cancellation reason is empty or longer than 500 characters.
    #[error("a cancellation needs a reason of 1 to 500 characters")]
    InvalidReason,
    /// The order id is already placed.
    #[error("order {order_id} is already placed")]
    AlreadyPlaced {
        /// The order.
        order_id: Uuid,
    },
    /// The order does not exist.
    #[error("order {order_id} does not exist")]
    NotPlaced {
        /// The order.
        order_id: Uuid,
    },
    /// The order's status does not allow the command.
    #[error("cannot {action} an order that is {status:?}")]
    WrongStatus {
        /// The current status.
        status: OrderStatus,
        /// What was asked (`confirm`, `ship`, `cancel`).
        action: &'static str,
    },
}

impl Aggregate for Order {
    const CATEGORY: &'static str = "order";
    const SNAPSHOT_VERSION: u32 = 1;
    type State = OrderState;
    type Command = OrderCommand;
    type Event = OrderEvent;
    type Error = OrderError;

    fn aggregate_id(command: &OrderCommand) -> String {
        match command {
            OrderCommand::Place(place) => place.order_id,
            OrderCommand::Confirm { order_id, .. } | OrderCommand::MarkShipped { order_id, .. } | OrderCommand::Cancel { order_id, .. } => {
                *order_id
            }
        }
        .to_string()
    }

    fn creates_stream(command: &Self::Command) -> bool {
        matches!(command, OrderCommand::Place(_))
    }

    fn decide(state: &OrderState, command: OrderCommand) -> Result<Vec<OrderEvent>, OrderError> {
        match command {
            OrderCommand::Place(place) => {
                if state.status.is_some() {
                    return Err(OrderError::AlreadyPlaced { order_id: place.order_id });
                }
                Ok(vec![place_order(place)?.into()])
            }
            OrderCommand::Confirm { order_id, at } => {
                require(state, order_id, OrderStatus::Pending, "confirm")?;
                Ok(vec![OrderConfirmed { order_id, confirmed_at: at }.into()])
            }
            OrderCommand::MarkShipped { order_id, at } => {
                require(state, order_id, OrderStatus::Confirmed, "ship")?;
                Ok(vec![OrderShipped { order_id, shipped_at: at }.into()])
            }
            OrderCommand::Cancel { order_id, reason, failed_step, at } => {
                let status = state.status.ok_or(OrderError::NotPlaced { order_id })?;
                if !matches!(status, OrderStatus::Pending | OrderStatus::Confirmed) {
                    return Err(OrderError::WrongStatus { status, action: "cancel" });
                }
                if reason.trim().is_empty() || reason.chars().count() > 500 {
                    return Err(OrderError::InvalidReason);
                }
                check_no_control("cancellation reason", &reason).map_err(OrderError::InvalidText)?;
                Ok(vec![OrderCancelled { order_id, reason, failed_step, cancelled_at: at }.into()])
            }
        }
    }

    fn evolve(mut state: OrderState, event: &OrderEvent) -> OrderState {
        match event {
            OrderEvent::OrderPlaced(placed) => {
                state.placed = Some(placed.clone());
                state.status = Some(OrderStatus::Pending);
            }
            OrderEvent::OrderConfirmed(_) => state.status = Some(OrderStatus::Confirmed),
            OrderEvent::OrderShipped(_) => state.status = Some(OrderStatus::Shipped),
            OrderEvent::OrderCancelled(cancelled) => {
                state.status = Some(OrderStatus::Cancelled);
                state.cancel_reason = Some(cancelled.reason.clone());
                state.failed_step = cancelled.failed_step;
            }
        }
        state
    }
}

fn require(state: &OrderState, order_id: Uuid, wanted: OrderStatus, action: &'static str) -> Result<(), OrderError> {
    match state.status {
        None => Err(OrderError::NotPlaced { order_id }),
        Some(status) if status == wanted => Ok(()),
        Some(status) => Err(OrderError::WrongStatus { status, action }),
    }
}

fn place_order(place: PlaceOrder) -> Result<OrderPlaced, OrderError> {
    let customer_id = place.customer_id;
    if customer_id.trim().is_empty() || customer_id.chars().count() > 128 {
        return Err(OrderError::InvalidCustomer);
    }
    check_no_control("customer id", &customer_id).map_err(OrderError::InvalidText)?;
    if place.lines.is_empty() {
        return Err(OrderError::EmptyOrder);
    }
    if place.lines.len() > MAX_LINES {
        return Err(OrderError::TooManyLines { max: MAX_LINES, got: place.lines.len() });
    }
    let mut lines: Vec<OrderLine> = Vec::with_capacity(place.lines.len());
    let mut total = Cents::ZERO;
    for (index, line) in place.lines.into_iter().enumerate() {
        let invalid = |source| OrderError::InvalidLine { index, source };
        let line = OrderLine {
            sku: Sku::parse(&line.sku).map_err(invalid)?,
            quantity: Quantity::new(line.quantity).map_err(invalid)?,
            unit_price_cents: Cents::new(line.unit_price_cents).map_err(invalid)?,
        };
        if lines.iter().any(|seen| seen.sku == line.sku) {
            return Err(OrderError::DuplicateSku { sku: line.sku });
        }
        total =
            line.unit_price_cents.times(line.quantity).and_then(|line_total| total.plus(line_total)).ok_or(OrderError::TotalTooLarge)?;
        lines.push(line);
    }
    let payment_method = place.payment_method;
    if payment_method.trim().is_empty() || payment_method.chars().count() > 64 {
        return Err(OrderError::InvalidPaymentMethod);
    }
    check_no_control("payment method", &payment_method).map_err(OrderError::InvalidText)?;
    let shipping_address = place.shipping_address.parse().map_err(OrderError::InvalidAddress)?;
    Ok(OrderPlaced {
        order_id: place.order_id,
        customer_id,
        lines,
        total_cents: total,
        payment_method,
        shipping_address,
        placed_at: Some(place.at),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::given;

    fn at() -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000, 0).unwrap()
    }
    fn id() -> Uuid {
        Uuid::from_u128(42)
    }
    fn line(sku: &str, quantity: i64, unit_price_cents: i64) -> LineInput {
        LineInput { sku: sku.into(), quantity, unit_price_cents }
    }
    fn address(country: &str) -> AddressInput {
        AddressInput {
            name: "Ada".into(),
            street: "Rue 1".into(),
            city: "Gent".into(),
            postal_code: "9000".into(),
            country: country.into(),
        }
    }
    fn place(lines: Vec<LineInput>) -> PlaceOrder {
        PlaceOrder {
            order_id: id(),
            customer_id: "c-1".into(),
            lines,
            payment_method: "card".into(),
            shipping_address: address("BE"),
            at: at(),
        }
    }
    fn placed() -> OrderEvent {
        place_order(place(vec![line("SKU-1", 2, 1250), line("SKU-2", 1, 99)])).unwrap().into()
    }
    fn confirmed() -> OrderEvent {
        OrderConfirmed { order_id: id(), confirmed_at: at() }.into()
    }
    fn shipped() -> OrderEvent {
        OrderShipped { order_id: id(), shipped_at: at() }.into()
    }
    fn cancelled(failed_step: Option<FulfilmentStep>) -> OrderEvent {
        OrderCancelled { order_id: id(), reason: "changed my mind".into(), failed_step, cancelled_at: at() }.into()
    }
    fn cancel(failed_step: Option<FulfilmentStep>) -> OrderCommand {
        OrderCommand::Cancel { order_id: id(), reason: "changed my mind".into(), failed_step, at: at() }
    }

    #[test]
    fn placing_an_order_computes_its_total() {
        let state =
            given::<Order>([]).when(OrderCommand::Place(place(vec![line("SKU-1", 2, 1250), line("SKU-2", 1, 99)]))).then([placed()]);
        let order = state.placed.unwrap();
        assert_eq!(order.total_cents.get(), 2599);
        assert_eq!(state.status, Some(OrderStatus::Pending));
    }

    #[test]
    fn an_order_without_lines_is_refused() {
        given::<Order>([]).when(OrderCommand::Place(place(vec![]))).then_error(OrderError::EmptyOrder);
    }

    #[test]
    fn zero_or_negative_quantities_are_refused_naming_the_line() {
        for quantity in [0, -2] {
            given::<Order>([])
                .when(OrderCommand::Place(place(vec![line("SKU-1", 1, 100), line("SKU-2", quantity, 100)])))
                .then_error_matches(|err| matches!(err, OrderError::InvalidLine { index: 1, source } if source.field == "quantity"));
        }
    }

    #[test]
    fn malformed_skus_and_negative_prices_are_refused() {
        given::<Order>([])
            .when(OrderCommand::Place(place(vec![line("sku one", 1, 100)])))
            .then_error_matches(|err| matches!(err, OrderError::InvalidLine { index: 0, source } if source.field == "sku"));
        given::<Order>([])
            .when(OrderCommand::Place(place(vec![line("SKU-1", 1, -1)])))
            .then_error_matches(|err| matches!(err, OrderError::InvalidLine { index: 0, source } if source.field == "amount"));
    }

    #[test]
    fn a_sku_on_two_lines_is_refused() {
        given::<Order>([])
            .when(OrderCommand::Place(place(vec![line("SKU-1", 1, 100), line("SKU-1", 2, 100)])))
            .then_error(OrderError::DuplicateSku { sku: Sku::parse("SKU-1").unwrap() });
    }

    #[test]
    fn too_many_lines_or_an_overflowing_total_is_refused() {
        let lines = (0..=MAX_LINES).map(|i| line(&format!("SKU-{i}"), 1, 1)).collect();
        given::<Order>([])
            .when(OrderCommand::Place(place(lines)))
            .then_error(OrderError::TooManyLines { max: MAX_LINES, got: MAX_LINES + 1 });
        given::<Order>([])
            .when(OrderCommand::Place(place(vec![line("SKU-1", 10_000, Cents::MAX as i64)])))
            .then_error(OrderError::TotalTooLarge);
    }

    #[test]
    fn control_characters_in_any_text_are_refused_naming_the_field() {
        let with = |edit: &dyn Fn(&mut PlaceOrder)| {
            let mut order = place(vec![line("SKU-1", 1, 1)]);
            edit(&mut order);
            order
        };
        for (order, field) in [
            (with(&|o| o.customer_id = "c\u{0}x".into()), "customer id"),
            (with(&|o| o.customer_id = "c\u{7f}".into()), "customer id"),
            (with(&|o| o.payment_method = "card\r\n".into()), "payment method"),
            (with(&|o| o.shipping_address.street = "Rue\u{1b}[31m 1".into()), "street"),
            (with(&|o| o.shipping_address.name = "Ada\tL".into()), "address name"),
        ] {
            given::<Order>([]).when(OrderCommand::Place(order)).then_error_matches(|err| {
                let (OrderError::InvalidText(value) | OrderError::InvalidAddress(value)) = err else { return false };
                value.field == field && value.reason.contains("control character")
            });
        }
        let placed = OrderPlaced {
            order_id: id(),
            customer_id: "c-1".into(),
            lines: vec![],
            total_cents: Cents::ZERO,
            payment_method: "card".into(),
            shipping_address: address("BE").parse().unwrap(),
            placed_at: None,
        };
        given::<Order>([placed.into()])
            .when(OrderCommand::Cancel { order_id: id(), reason: "no\u{0}".into(), failed_step: None, at: at() })
            .then_error_matches(|err| matches!(err, OrderError::InvalidText(value) if value.field == "cancellation reason"));
        // Text that only looks odd is fine.
        assert_eq!(
            given::<Order>([]).when(OrderCommand::Place(with(&|o| o.customer_id = "Zoë 🌱 — c/1".into()))).result().map(|e| e.len()),
            Ok(1)
        );
    }

    #[test]
    fn bad_customer_payment_method_or_address_is_refused() {
        let mut no_customer = place(vec![line("SKU-1", 1, 1)]);
        no_customer.customer_id = "  ".into();
        given::<Order>([]).when(OrderCommand::Place(no_customer)).then_error(OrderError::InvalidCustomer);
        let mut no_method = place(vec![line("SKU-1", 1, 1)]);
        no_method.payment_method = String::new();
        given::<Order>([]).when(OrderCommand::Place(no_method)).then_error(OrderError::InvalidPaymentMethod);
        let mut bad_country = place(vec![line("SKU-1", 1, 1)]);
        bad_country.shipping_address = address("Belgium");
        given::<Order>([])
            .when(OrderCommand::Place(bad_country))
            .then_error_matches(|err| matches!(err, OrderError::InvalidAddress(v) if v.field == "country"));
        let mut no_city = place(vec![line("SKU-1", 1, 1)]);
        no_city.shipping_address.city = String::new();
        given::<Order>([])
            .when(OrderCommand::Place(no_city))
            .then_error_matches(|err| matches!(err, OrderError::InvalidAddress(v) if v.field == "city"));
    }

    #[test]
    fn placing_the_same_order_id_twice_is_refused() {
        given::<Order>([placed()])
            .when(OrderCommand::Place(place(vec![line("SKU-1", 1, 1)])))
            .then_error(OrderError::AlreadyPlaced { order_id: id() });
    }

    #[test]
    fn a_pending_order_is_confirmed_then_shipped() {
        given::<Order>([placed()]).when(OrderCommand::Confirm { order_id: id(), at: at() }).then([confirmed()]);
        let state = given::<Order>([placed(), confirmed()]).when(OrderCommand::MarkShipped { order_id: id(), at: at() }).then([shipped()]);
        assert_eq!(state.status, Some(OrderStatus::Shipped));
    }

    #[test]
    fn shipping_a_pending_order_or_confirming_twice_is_refused() {
        given::<Order>([placed()])
            .when(OrderCommand::MarkShipped { order_id: id(), at: at() })
            .then_error(OrderError::WrongStatus { status: OrderStatus::Pending, action: "ship" });
        given::<Order>([placed(), confirmed()])
            .when(OrderCommand::Confirm { order_id: id(), at: at() })
            .then_error(OrderError::WrongStatus { status: OrderStatus::Confirmed, action: "confirm" });
    }

    #[test]
    fn commands_on_an_order_that_does_not_exist_are_refused() {
        given::<Order>([]).when(OrderCommand::Confirm { order_id: id(), at: at() }).then_error(OrderError::NotPlaced { order_id: id() });
        given::<Order>([]).when(cancel(None)).then_error(OrderError::NotPlaced { order_id: id() });
    }

    #[test]
    fn a_compensated_cancellation_names_the_failed_step() {
        let state = given::<Order>([placed()])
            .when(cancel(Some(FulfilmentStep::AuthorizePayment)))
            .then([cancelled(Some(FulfilmentStep::AuthorizePayment))]);
        assert_eq!(state.status, Some(OrderStatus::Cancelled));
        assert_eq!(state.failed_step, Some(FulfilmentStep::AuthorizePayment));
        given::<Order>([placed(), confirmed()]).when(cancel(None)).then([cancelled(None)]);
    }

    #[test]
    fn a_cancellation_needs_a_reason() {
        given::<Order>([placed()])
            .when(OrderCommand::Cancel { order_id: id(), reason: " ".into(), failed_step: None, at: at() })
            .then_error(OrderError::InvalidReason);
    }

    #[test]
    fn nothing_changes_after_a_terminal_status() {
        for (history, status) in
            [(vec![placed(), confirmed(), shipped()], OrderStatus::Shipped), (vec![placed(), cancelled(None)], OrderStatus::Cancelled)]
        {
            given::<Order>(history.clone()).when(cancel(None)).then_error(OrderError::WrongStatus { status, action: "cancel" });
            given::<Order>(history.clone())
                .when(OrderCommand::Confirm { order_id: id(), at: at() })
                .then_error(OrderError::WrongStatus { status, action: "confirm" });
            given::<Order>(history)
                .when(OrderCommand::MarkShipped { order_id: id(), at: at() })
                .then_error(OrderError::WrongStatus { status, action: "ship" });
        }
    }
}
