//! The value types of the reference domain that travel inside events: SKUs,
//! quantities, money, addresses. Each is parsed once (`parse`/`TryFrom`) and
//! trusted after; deserializing checks the same rules, so an event decoded from
//! the log never holds an invalid value.

use std::fmt;

use serde::{Deserialize, Serialize};

/// A value that breaks its type's rules; `field` names it for error messages.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {field}: {reason}")]
pub struct InvalidValue {
    /// Which kind of value (`sku`, `quantity`, `country`, …).
    pub field: &'static str,
    /// What is wrong with it.
    pub reason: String,
}

fn invalid(field: &'static str, reason: impl Into<String>) -> InvalidValue {
    InvalidValue { field, reason: reason.into() }
}

/// Whether `c` is a control character text fields refuse: C0 and C1
/// (U+0000–U+001F, U+007F–U+009F), invisible in logs and views (and NUL is
/// refused by PostgreSQL); see also [`is_forbidden_format`].
pub fn is_forbidden_control(c: char) -> bool {
    c <= '\u{1f}' || ('\u{7f}'..='\u{9f}').contains(&c)
}

/// Whether `c` is an invisible formatting character text fields refuse:
/// the direction overrides, embeddings and isolates (U+202A–U+202E,
/// U+2066–U+2069) and marks (U+200E, U+200F, U+061C) that make a text read
/// otherwise than it is stored, and the zero-width space, word joiner,
/// invisible operators and byte-order mark (U+200B, U+2060–U+2064, U+FEFF)
/// that make two texts look alike. The zero-width joiner and non-joiner
/// (U+200C, U+200D) stay: scripts and emoji need them.
pub fn is_forbidden_format(c: char) -> bool {
    matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}' | '\u{200e}' | '\u{200f}' | '\u{061c}' | '\u{200b}' | '\u{2060}'..='\u{2064}' | '\u{feff}')
}

/// Whether text fields refuse `c` ([`is_forbidden_control`] or [`is_forbidden_format`]).
pub fn is_forbidden_in_text(c: char) -> bool {
    is_forbidden_control(c) || is_forbidden_format(c)
}

/// Checks free text: no control or invisible formatting characters; `field`
/// names it in the error.
pub fn check_no_control(field: &'static str, value: &str) -> Result<(), InvalidValue> {
    match value.chars().find(|c| is_forbidden_in_text(*c)) {
        Some(c) if is_forbidden_control(c) => Err(invalid(field, format!("contains the control character U+{:04X}", u32::from(c)))),
        Some(c) => Err(invalid(field, format!("contains the invisible formatting character U+{:04X}", u32::from(c)))),
        None => Ok(()),
    }
}

/// A stock keeping unit: 1 to 64 characters, upper-case ASCII letters, digits
/// and `-`, not starting with `-` (e.g. `SKU-42`). Usable as a stream id part.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Sku(String);

impl Sku {
    /// Parses a SKU.
    pub fn parse(input: &str) -> Result<Self, InvalidValue> {
        if input.is_empty() || input.len() > 64 {
            return Err(invalid("sku", format!("{input:?} must have 1 to 64 characters")));
        }
        if input.starts_with('-') || !input.chars().all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '-') {
            return Err(invalid("sku", format!("{input:?} must be upper-case letters, digits and '-', not starting with '-'")));
        }
        Ok(Self(input.to_owned()))
    }

    /// The SKU text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Sku {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl TryFrom<String> for Sku {
    type Error = InvalidValue;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::parse(&value)
    }
}

impl From<Sku> for String {
    fn from(value: Sku) -> Self {
        value.0
    }
}

/// A number of units: 1 to [`Quantity::MAX`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "i64", into = "u32")]
pub struct Quantity(u32);

impl Quantity {
    /// The most units one line, reservation or restock may carry.
    pub const MAX: u32 = 10_000;

    /// Parses a quantity; zero, negative and over [`Quantity::MAX`] are refused.
    pub fn new(units: i64) -> Result<Self, InvalidValue> {
        if units < 1 {
            return Err(invalid("quantity", format!("{units} is not positive")));
        }
        if units > i64::from(Self::MAX) {
            return Err(invalid("quantity", format!("{units} is over the limit of {}", Self::MAX)));
        }
        Ok(Self(units as u32))
    }

    /// The number of units.
    pub fn get(self) -> u32 {
        self.0
    }
}

impl fmt::Display for Quantity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl TryFrom<i64> for Quantity {
    type Error = InvalidValue;
    fn try_from(value: i64) -> Result<Self, Self::Error> {
        Self::new(value)
    }
}

impl From<Quantity> for u32 {
    fn from(value: Quantity) -> Self {
        value.0
    }
}

/// An amount of money in integer cents, 0 to [`Cents::MAX`]. No floats, ever.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default, Serialize, Deserialize)]
#[serde(try_from = "i64", into = "u64")]
pub struct Cents(u64);

impl Cents {
    /// The largest amount the contract carries (one trillion units of currency).
    pub const MAX: u64 = 100_000_000_000_000;
    /// Zero.
    pub const ZERO: Cents = Cents(0);

    /// Parses an amount; negative or over [`Cents::MAX`] is refused.
    pub fn new(cents: i64) -> Result<Self, InvalidValue> {
        if cents < 0 {
            return Err(invalid("amount", format!("{cents} cents is negative")));
        }
        if cents as u64 > Self::MAX {
            return Err(invalid("amount", format!("{cents} cents is over the limit")));
        }
        Ok(Self(cents as u64))
    }

    /// The amount in cents.
    pub fn get(self) -> u64 {
        self.0
    }

    /// `self * quantity`, `None` past [`Cents::MAX`].
    pub fn times(self, quantity: Quantity) -> Option<Cents> {
        self.0.checked_mul(u64::from(quantity.get())).filter(|&total| total <= Self::MAX).map(Cents)
    }

    /// `self + other`, `None` past [`Cents::MAX`].
    pub fn plus(self, other: Cents) -> Option<Cents> {
        self.0.checked_add(other.0).filter(|&total| total <= Self::MAX).map(Cents)
    }
}

impl fmt::Display for Cents {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{:02}", self.0 / 100, self.0 % 100)
    }
}

impl TryFrom<i64> for Cents {
    type Error = InvalidValue;
    fn try_from(value: i64) -> Result<Self, Self::Error> {
        Self::new(value)
    }
}

impl From<Cents> for u64 {
    fn from(value: Cents) -> Self {
        value.0
    }
}

/// An ISO 3166-1 alpha-2 country code, two upper-case ASCII letters (`BE`).
/// Only the shape is checked; whether a carrier delivers there is a shipping rule.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct CountryCode(String);

impl CountryCode {
    /// Parses a country code.
    pub fn parse(input: &str) -> Result<Self, InvalidValue> {
        if input.len() != 2 || !input.chars().all(|c| c.is_ascii_uppercase()) {
            return Err(invalid("country", format!("{input:?} is not an ISO 3166 alpha-2 code (two upper-case letters)")));
        }
        Ok(Self(input.to_owned()))
    }

    /// The two letters.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for CountryCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl TryFrom<String> for CountryCode {
    type Error = InvalidValue;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::parse(&value)
    }
}

impl From<CountryCode> for String {
    fn from(value: CountryCode) -> Self {
        value.0
    }
}

/// A postal address. Text fields are non-empty and bounded (checked by
/// [`Address::check`], which the order and shipping deciders call).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Address {
    /// Recipient.
    pub name: String,
    /// Street and number.
    pub street: String,
    /// City.
    pub city: String,
    /// Postal code.
    pub postal_code: String,
    /// Country.
    pub country: CountryCode,
}

impl Address {
    /// Checks the text fields against the limits of the schema.
    pub fn check(&self) -> Result<(), InvalidValue> {
        for (field, value, max) in [
            ("address name", &self.name, 200),
            ("street", &self.street, 200),
            ("city", &self.city, 100),
            ("postal code", &self.postal_code, 20),
        ] {
            let length = value.trim().chars().count();
            if length == 0 {
                return Err(invalid(field, "is empty"));
            }
            if value.chars().count() > max {
                return Err(invalid(field, format!("is longer than {max} characters")));
            }
            check_no_control(field, value)?;
        }
        Ok(())
    }
}

/// One line of an order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct OrderLine {
    /// What.
    pub sku: Sku,
    /// How many.
    pub quantity: Quantity,
    /// Price of one unit.
    pub unit_price_cents: Cents,
}

/// Where an order is in its life (docs/design.md §5): what the order
/// aggregate folds, the read model stores and indexes, and GraphQL shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum OrderStatus {
    /// Placed; fulfilment under way.
    Pending,
    /// Stock reserved, payment authorized, shipment booked.
    Confirmed,
    /// Left the warehouse (terminal).
    Shipped,
    /// Cancelled on request or by compensation (terminal).
    Cancelled,
}

impl OrderStatus {
    /// Every status.
    pub const ALL: [OrderStatus; 4] = [Self::Pending, Self::Confirmed, Self::Shipped, Self::Cancelled];

    /// As stored and indexed (`PENDING`, …).
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "PENDING",
            Self::Confirmed => "CONFIRMED",
            Self::Shipped => "SHIPPED",
            Self::Cancelled => "CANCELLED",
        }
    }
}

impl fmt::Display for OrderStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The steps of order fulfilment, in the order the saga runs them; the
/// confirmation is its pivot (docs/design.md §6).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum SagaStep {
    /// Reserve every line's stock (inventory).
    ReserveStock,
    /// Authorize the payment (payments).
    AuthorizePayment,
    /// Book the shipment (shipping).
    CreateShipment,
    /// Confirm the order (the pivot: no step after it fails the order).
    ConfirmOrder,
    /// Capture the payment.
    CapturePayment,
    /// Commit the reserved stock.
    CommitStock,
}

impl SagaStep {
    /// Every step, in order: a step's index is its place here.
    pub const ALL: [SagaStep; 6] =
        [Self::ReserveStock, Self::AuthorizePayment, Self::CreateShipment, Self::ConfirmOrder, Self::CapturePayment, Self::CommitStock];

    /// Its place in [`SagaStep::ALL`].
    pub const fn index(self) -> usize {
        self as usize
    }

    /// The step at `index`, if there is one.
    pub const fn at(index: usize) -> Option<SagaStep> {
        if index < Self::ALL.len() {
            Some(Self::ALL[index])
        } else {
            None
        }
    }

    /// As stored in the saga's events and the order view (`RESERVE_STOCK`, …).
    pub const fn name(self) -> &'static str {
        match self {
            Self::ReserveStock => "RESERVE_STOCK",
            Self::AuthorizePayment => "AUTHORIZE_PAYMENT",
            Self::CreateShipment => "CREATE_SHIPMENT",
            Self::ConfirmOrder => "CONFIRM_ORDER",
            Self::CapturePayment => "CAPTURE_PAYMENT",
            Self::CommitStock => "COMMIT_STOCK",
        }
    }

    /// The name a compensated order gives this step when it failed: only
    /// the steps before the pivot can fail an order.
    pub const fn failed_step(self) -> Option<FulfilmentStep> {
        match self {
            Self::ReserveStock => Some(FulfilmentStep::ReserveStock),
            Self::AuthorizePayment => Some(FulfilmentStep::AuthorizePayment),
            Self::CreateShipment => Some(FulfilmentStep::CreateShipment),
            Self::ConfirmOrder | Self::CapturePayment | Self::CommitStock => None,
        }
    }
}

/// The step of order fulfilment that failed, named on a compensated order
/// (the [`SagaStep`]s before the pivot).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum FulfilmentStep {
    /// Reserving stock (inventory).
    ReserveStock,
    /// Authorizing the payment (payments).
    AuthorizePayment,
    /// Booking the shipment (shipping).
    CreateShipment,
}

impl From<FulfilmentStep> for SagaStep {
    fn from(step: FulfilmentStep) -> Self {
        match step {
            FulfilmentStep::ReserveStock => SagaStep::ReserveStock,
            FulfilmentStep::AuthorizePayment => SagaStep::AuthorizePayment,
            FulfilmentStep::CreateShipment => SagaStep::CreateShipment,
        }
    }
}

impl fmt::Display for FulfilmentStep {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(SagaStep::from(*self).name())
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn text_refuses_controls_and_invisible_formatting_but_keeps_joiners() {
        use super::check_no_control;
        for (text, says) in [
            ("a\u{0}b", "control character U+0000"),
            ("a\u{85}b", "control character U+0085"),
            ("a\u{9b}b", "control character U+009B"),
            ("evil\u{202e}gnp.exe", "invisible formatting character U+202E"),
            ("a\u{2067}b", "invisible formatting character U+2067"),
            ("pay\u{200b}pal", "invisible formatting character U+200B"),
            ("\u{feff}Ada", "invisible formatting character U+FEFF"),
        ] {
            let err = check_no_control("name", text).unwrap_err();
            assert!(err.reason.contains(says), "{text:?}: {}", err.reason);
        }
        for fine in ["Ada Lovelace", "Rue de la Loi 16", "می\u{200c}خواهم", "👩\u{200d}💻", "漢字", "Zoë"] {
            check_no_control("name", fine).unwrap();
        }
    }

    use super::*;

    #[test]
    fn each_step_is_named_as_it_serializes_and_found_at_its_index() {
        for (index, step) in SagaStep::ALL.into_iter().enumerate() {
            assert_eq!(step.index(), index);
            assert_eq!(SagaStep::at(index), Some(step));
            assert_eq!(serde_json::to_value(step).unwrap(), step.name());
            if let Some(failed) = step.failed_step() {
                assert_eq!(SagaStep::from(failed), step);
                assert_eq!(serde_json::to_value(failed).unwrap(), step.name());
                assert_eq!(failed.to_string(), step.name());
            }
        }
        assert_eq!(SagaStep::at(SagaStep::ALL.len()), None);
        let failable: Vec<_> = SagaStep::ALL.into_iter().filter_map(SagaStep::failed_step).collect();
        assert_eq!(failable, [FulfilmentStep::ReserveStock, FulfilmentStep::AuthorizePayment, FulfilmentStep::CreateShipment]);
        for status in OrderStatus::ALL {
            assert_eq!(serde_json::to_value(status).unwrap(), status.as_str());
        }
    }

    #[test]
    fn values_refuse_what_their_rules_forbid() {
        assert!(Sku::parse("SKU-1").is_ok());
        for bad in ["", "-SKU", "sku-1", "SKU 1", &"A".repeat(65)] {
            assert_eq!(Sku::parse(bad).unwrap_err().field, "sku", "{bad:?}");
        }
        assert!(Quantity::new(0).is_err());
        assert!(Quantity::new(-3).is_err());
        assert!(Quantity::new(10_001).is_err());
        assert_eq!(Quantity::new(10_000).unwrap().get(), 10_000);
        assert!(Cents::new(-1).is_err());
        assert_eq!(Cents::new(1250).unwrap().to_string(), "12.50");
        assert!(CountryCode::parse("be").is_err());
        assert!(CountryCode::parse("BEL").is_err());
        assert_eq!(Cents::new(Cents::MAX as i64).unwrap().times(Quantity::new(2).unwrap()), None);
    }

    #[test]
    fn deserializing_checks_the_same_rules() {
        assert!(serde_json::from_str::<Quantity>("0").is_err());
        assert!(serde_json::from_str::<Sku>("\"bad sku\"").is_err());
        assert!(serde_json::from_str::<Cents>("-5").is_err());
        assert_eq!(serde_json::from_str::<Quantity>("3").unwrap().get(), 3);
    }
}
