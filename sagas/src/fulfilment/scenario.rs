//! Deterministic order traffic for tests, the chaos test and `strata bench
//! e2e`: the stock to restock first and a mix of orders, each with the
//! outcome the domain's rules dictate.
//!
//! Every SKU is restocked with its catalog price ([`unit_price`]) and every
//! line carries that price, as a client that read the catalog sends it.
//!
//! Of every 20 orders: 12 confirm; 2 pay with `card-declined` and 1 buys a
//! SKU over the gateway's limit (fail `AUTHORIZE_PAYMENT`); 1 pays with
//! `card-no-answer` (the step's deadline fails it); 1 ships to `AQ` (fails
//! `CREATE_SHIPMENT`); 2 ask for a SKU that never has enough stock after a
//! line that does, and 1 shows its second line at a price the catalog does
//! not have (fail `RESERVE_STOCK` after reserving the first line, which
//! compensation must release). [`ScenarioConfig::failures`] turns failures off.

use chrono::{DateTime, Utc};
use strata_commands::inventory::InventoryCommand;
use strata_commands::orders::{AddressInput, LineInput, PlaceOrder};
use strata_schemas::values::{FulfilmentStep, Sku};
use uuid::Uuid;

/// How many plain SKUs orders spread over (`SKU-0` … `SKU-49`), each restocked
/// with plenty. Fifty, not five: every reservation of one SKU is a write to
/// one stream, which the store serializes, so a handful of hot SKUs would
/// measure that stream rather than the pipeline.
pub const PLAIN_SKUS: usize = 50;

fn plain_sku(n: usize) -> String {
    format!("SKU-{}", n % PLAIN_SKUS)
}
/// A SKU restocked with one unit; orders ask for two.
pub const SCARCE_SKU: &str = "SKU-SCARCE";
/// A SKU whose one unit costs more than the payment gateway authorizes.
pub const LUXURY_SKU: &str = "SKU-LUXURY";

/// The catalog price of a scenario SKU, in cents.
pub fn unit_price(sku: &str) -> i64 {
    match sku {
        SCARCE_SKU => 100,
        LUXURY_SKU => 600_000,
        plain => {
            let n: usize = plain.trim_start_matches("SKU-").parse().unwrap_or(0);
            [1_250, 999, 2_000][n % 3]
        }
    }
}

fn restock(sku: &str, quantity: i64, at: DateTime<Utc>) -> InventoryCommand {
    InventoryCommand::Restock { sku: Sku::parse(sku).expect("valid sku"), quantity, unit_price_cents: Some(unit_price(sku)), at }
}

/// What an order must end as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expected {
    /// Every step succeeds.
    Confirmed,
    /// Cancelled by compensation, naming this step.
    Cancelled(FulfilmentStep),
}

/// Which orders to make.
#[derive(Debug, Clone)]
pub struct ScenarioConfig {
    /// Varies ids and quantities.
    pub seed: u64,
    /// Include the failing orders (else every order confirms).
    pub failures: bool,
}

/// The restocks, each naming its SKU's price, that give every plain SKU
/// enough for `orders` orders (the luxury SKU one per 20 orders, and the
/// scarce SKU its single unit), at `at`.
pub fn restocks(orders: usize, at: DateTime<Utc>) -> Vec<InventoryCommand> {
    let per_sku = (orders * 6 / PLAIN_SKUS + 100) as i64;
    let mut commands = Vec::new();
    let mut stock = |sku: &str, mut left: i64| {
        while left > 0 {
            let quantity = left.min(10_000);
            commands.push(restock(sku, quantity, at));
            left -= quantity;
        }
    };
    for n in 0..PLAIN_SKUS {
        stock(&plain_sku(n), per_sku);
    }
    stock(LUXURY_SKU, (orders / 20 + 10) as i64);
    stock(SCARCE_SKU, 1);
    commands
}

/// The `index`-th order of the scenario and what it must end as.
pub fn order(config: &ScenarioConfig, index: usize, at: DateTime<Utc>) -> (PlaceOrder, Expected) {
    let order_id = Uuid::new_v5(&Uuid::from_u128(u128::from(config.seed)), format!("order-{index}").as_bytes());
    let mix = ((index as u64).wrapping_mul(7).wrapping_add(config.seed)) % 20;
    let sku = |n: usize| plain_sku(index + n);
    let quantity = 1 + ((index as u64 + config.seed) % 3) as i64;
    let line = |sku: String, quantity: i64| LineInput { unit_price_cents: unit_price(&sku), sku, quantity };
    let mut lines = vec![line(sku(0), quantity)];
    if index.is_multiple_of(2) {
        lines.push(line(sku(1), 1));
    }
    let mut payment_method = "card".to_owned();
    let mut country = "BE".to_owned();
    let expected = match mix {
        13 | 14 if config.failures => {
            payment_method = strata_commands::payments::METHOD_DECLINED.into();
            Expected::Cancelled(FulfilmentStep::AuthorizePayment)
        }
        15 if config.failures => {
            lines[0] = line(LUXURY_SKU.into(), 1);
            Expected::Cancelled(FulfilmentStep::AuthorizePayment)
        }
        16 if config.failures => {
            payment_method = strata_commands::payments::METHOD_NO_ANSWER.into();
            Expected::Cancelled(FulfilmentStep::AuthorizePayment)
        }
        17 if config.failures => {
            country = strata_commands::shipping::UNDELIVERABLE_COUNTRIES[0].into();
            Expected::Cancelled(FulfilmentStep::CreateShipment)
        }
        12 if config.failures => {
            // Shown at a price the catalog does not have: never charged.
            lines.truncate(1);
            let mut shown = line(sku(1), 1);
            shown.unit_price_cents -= 1;
            lines.push(shown);
            Expected::Cancelled(FulfilmentStep::ReserveStock)
        }
        18 | 19 if config.failures => {
            lines.truncate(1);
            lines.push(line(SCARCE_SKU.into(), 2));
            Expected::Cancelled(FulfilmentStep::ReserveStock)
        }
        _ => Expected::Confirmed,
    };
    let place = PlaceOrder {
        order_id,
        customer_id: format!("customer-{}", index % 50),
        lines,
        payment_method,
        shipping_address: AddressInput {
            name: "Ada Lovelace".into(),
            street: "Rue de la Loi 16".into(),
            city: "Brussels".into(),
            postal_code: "1000".into(),
            country,
        },
        at,
    };
    (place, expected)
}
