//! The reference domain's event contract: every schema file under
//! `schemas/events/`, embedded at compile time, and the upcasters between
//! their versions.
//!
//! Versioning, shown for real on `OrderPlaced`: v1 carried unit prices as
//! decimal strings (`"12.50"`); v2 carries integer cents and the order total.
//! Events stored as v1 stay as they were written (the log is immutable and its
//! hash chain covers them) and are read as v2 through [`order_placed_v1_to_v2`].

use serde_json::{Map, Value};

use crate::{SchemaError, SchemaRegistry};

/// `(event type, version, schema JSON)` for every file in `schemas/events/`.
/// A unit test checks that this list and the folder agree.
pub const SCHEMA_FILES: &[(&str, u32, &str)] = &[
    ("OrderPlaced", 1, include_str!("../events/OrderPlaced.v1.json")),
    ("OrderPlaced", 2, include_str!("../events/OrderPlaced.v2.json")),
    ("OrderConfirmed", 1, include_str!("../events/OrderConfirmed.v1.json")),
    ("OrderShipped", 1, include_str!("../events/OrderShipped.v1.json")),
    ("OrderCancelled", 1, include_str!("../events/OrderCancelled.v1.json")),
    ("StockRestocked", 1, include_str!("../events/StockRestocked.v1.json")),
    ("StockReserved", 1, include_str!("../events/StockReserved.v1.json")),
    ("ReservationReleased", 1, include_str!("../events/ReservationReleased.v1.json")),
    ("ReservationCommitted", 1, include_str!("../events/ReservationCommitted.v1.json")),
    ("ReservationFenced", 1, include_str!("../events/ReservationFenced.v1.json")),
    ("StockReturned", 1, include_str!("../events/StockReturned.v1.json")),
    ("PriceSet", 1, include_str!("../events/PriceSet.v1.json")),
    ("PaymentAuthorized", 1, include_str!("../events/PaymentAuthorized.v1.json")),
    ("PaymentCaptured", 1, include_str!("../events/PaymentCaptured.v1.json")),
    ("PaymentVoided", 1, include_str!("../events/PaymentVoided.v1.json")),
    ("PaymentRefunded", 1, include_str!("../events/PaymentRefunded.v1.json")),
    ("PaymentFenced", 1, include_str!("../events/PaymentFenced.v1.json")),
    ("ShipmentCreated", 1, include_str!("../events/ShipmentCreated.v1.json")),
    ("ShipmentCancelled", 1, include_str!("../events/ShipmentCancelled.v1.json")),
    ("ShipmentFenced", 1, include_str!("../events/ShipmentFenced.v1.json")),
    ("SagaStarted", 1, include_str!("../events/SagaStarted.v1.json")),
    ("SagaStepSucceeded", 1, include_str!("../events/SagaStepSucceeded.v1.json")),
    ("SagaStepRetryScheduled", 1, include_str!("../events/SagaStepRetryScheduled.v1.json")),
    ("SagaStepFailed", 1, include_str!("../events/SagaStepFailed.v1.json")),
    ("SagaCompleted", 1, include_str!("../events/SagaCompleted.v1.json")),
    ("SagaAborted", 1, include_str!("../events/SagaAborted.v1.json")),
    ("SagaCancelRequested", 1, include_str!("../events/SagaCancelRequested.v1.json")),
    ("SagaStuck", 1, include_str!("../events/SagaStuck.v1.json")),
    ("SagaResumed", 1, include_str!("../events/SagaResumed.v1.json")),
];

/// The registry of the reference domain: every schema in [`SCHEMA_FILES`] and
/// every upcaster.
pub fn registry() -> Result<SchemaRegistry, SchemaError> {
    let mut builder = SchemaRegistry::builder();
    for &(event_type, version, schema) in SCHEMA_FILES {
        builder = builder.schema(event_type, version, schema);
    }
    builder.upcaster("OrderPlaced", 1, order_placed_v1_to_v2).build()
}

/// `OrderPlaced` v1 → v2: `lines[].unitPrice` (decimal string with two
/// decimals) becomes `lines[].unitPriceCents`, and `totalCents` is added.
pub fn order_placed_v1_to_v2(payload: Value) -> Result<Value, String> {
    let Value::Object(mut order) = payload else {
        return Err("payload is not an object".into());
    };
    let Some(Value::Array(lines)) = order.remove("lines") else {
        return Err("lines is missing or not an array".into());
    };
    let mut total: u64 = 0;
    let mut upcast_lines = Vec::with_capacity(lines.len());
    for (index, line) in lines.into_iter().enumerate() {
        let Value::Object(mut line) = line else {
            return Err(format!("lines/{index} is not an object"));
        };
        let price = line
            .remove("unitPrice")
            .and_then(|price| price.as_str().map(str::to_owned))
            .ok_or_else(|| format!("lines/{index}/unitPrice is missing"))?;
        let cents = parse_cents(&price).ok_or_else(|| format!("lines/{index}/unitPrice {price:?} is not a price"))?;
        let quantity = line.get("quantity").and_then(Value::as_u64).ok_or_else(|| format!("lines/{index}/quantity is missing"))?;
        total = quantity.checked_mul(cents).and_then(|line_total| total.checked_add(line_total)).ok_or("order total overflows")?;
        line.insert("unitPriceCents".into(), cents.into());
        upcast_lines.push(Value::Object(line));
    }
    order.insert("lines".into(), Value::Array(upcast_lines));
    order.insert("totalCents".into(), total.into());
    Ok(Value::Object(order.into_iter().collect::<Map<_, _>>()))
}

fn parse_cents(price: &str) -> Option<u64> {
    let (units, cents) = price.split_once('.')?;
    if cents.len() != 2 || units.is_empty() {
        return None;
    }
    let units: u64 = units.parse().ok()?;
    let cents: u64 = cents.parse().ok()?;
    units.checked_mul(100)?.checked_add(cents)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn every_schema_file_is_in_the_catalog() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("events");
        let mut on_disk: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|entry| entry.unwrap().file_name().into_string().unwrap())
            .filter(|name| name.ends_with(".json"))
            .collect();
        on_disk.sort();
        let mut listed: Vec<String> = SCHEMA_FILES.iter().map(|(event_type, version, _)| format!("{event_type}.v{version}.json")).collect();
        listed.sort();
        assert_eq!(on_disk, listed, "schemas/events and SCHEMA_FILES disagree");
    }

    #[test]
    fn the_catalog_builds_and_knows_order_placed_v2_as_latest() {
        let registry = registry().unwrap();
        assert_eq!(registry.latest_version("OrderPlaced").unwrap(), 2);
    }

    #[test]
    fn a_stored_v1_order_is_read_as_a_valid_v2_order() {
        let registry = registry().unwrap();
        let v1 = json!({
            "orderId": "7f1d7a3e-8f1f-4c1e-9a55-0d4bb2b0c001",
            "customerId": "c-1",
            "lines": [
                { "sku": "SKU-1", "quantity": 2, "unitPrice": "12.50" },
                { "sku": "SKU-2", "quantity": 1, "unitPrice": "0.99" }
            ],
            "paymentMethod": "card",
            "shippingAddress": { "name": "A", "street": "S 1", "city": "C", "postalCode": "1000", "country": "BE" }
        });
        registry.validate("OrderPlaced", 1, &v1).unwrap();
        let (version, v2) = registry.upcast("OrderPlaced", 1, v1).unwrap();
        assert_eq!(version, 2);
        assert_eq!(v2["lines"][0]["unitPriceCents"], 1250);
        assert_eq!(v2["lines"][1]["unitPriceCents"], 99);
        assert_eq!(v2["totalCents"], 2599);
        registry.validate("OrderPlaced", 2, &v2).unwrap();
    }

    #[test]
    fn a_malformed_v1_price_fails_the_upcast_instead_of_guessing() {
        let err = order_placed_v1_to_v2(json!({
            "lines": [{ "sku": "S", "quantity": 1, "unitPrice": "12.5" }]
        }))
        .unwrap_err();
        assert!(err.contains("unitPrice"), "{err}");
    }
}
