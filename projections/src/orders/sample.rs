//! Sample traffic of the domain, for benches and tests: orders that are
//! placed, reserved, paid, and then shipped, cancelled with compensation, or
//! left pending, with their fulfilment sagas' records, interleaved the way
//! concurrent orders interleave in the log.
//!
//! Deterministic for a seed (a small splitmix64 generator, no dependency), and
//! schema-valid, so the stores accept every payload.

use chrono::{DateTime, Utc};
use strata_schemas::events::{
    InventoryEvent, OrderCancelled, OrderConfirmed, OrderEvent, OrderPlaced, OrderShipped, PaymentAuthorized, PaymentCaptured,
    PaymentEvent, PaymentVoided, ReservationCommitted, ReservationReleased, SagaAborted, SagaCompleted, SagaEvent, SagaStarted,
    SagaStepFailed, SagaStepSucceeded, ShipmentCreated, ShipmentEvent, StockReserved, StockRestocked,
};
use strata_schemas::values::{Address, Cents, CountryCode, FulfilmentStep, OrderLine, Quantity, Sku};
use strata_schemas::DomainEvent;
use strata_store::{EventMetadata, ExpectedVersion, NewEvent, StreamAppend, StreamId};
use uuid::Uuid;

/// What to generate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SampleConfig {
    /// Seed of the generator.
    pub seed: u64,
    /// Orders.
    pub orders: usize,
    /// Distinct SKUs.
    pub skus: usize,
    /// Customers.
    pub customers: usize,
    /// Orders in flight at once (how much their events interleave).
    pub concurrency: usize,
}

impl Default for SampleConfig {
    fn default() -> Self {
        Self { seed: 1, orders: 100, skus: 20, customers: 10, concurrency: 8 }
    }
}

struct SplitMix(u64);

impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// One event appended to one stream (expected version `Any`).
fn append<E: DomainEvent>(stream: StreamId, event: E, id: Uuid) -> StreamAppend {
    StreamAppend {
        stream_id: stream,
        expected: ExpectedVersion::Any,
        events: vec![NewEvent {
            event_id: id,
            event_type: event.event_type().to_owned(),
            schema_version: event.schema_version(),
            payload: event.to_payload(),
            metadata: EventMetadata::default(),
        }],
    }
}

fn at(step: u64) -> DateTime<Utc> {
    DateTime::from_timestamp(1_800_000_000 + step as i64, 0).unwrap_or_default()
}

/// The SKU of number `n` in a sample.
pub fn sku(n: usize) -> Sku {
    Sku::parse(&format!("SKU-{n:05}")).unwrap_or_else(|_| unreachable!("sample SKUs are valid"))
}

fn units(n: i64) -> Quantity {
    Quantity::new(n).unwrap_or_else(|_| unreachable!("sample quantities are valid"))
}

fn cents(n: i64) -> Cents {
    Cents::new(n).unwrap_or_else(|_| unreachable!("sample amounts are valid"))
}

fn address() -> Address {
    Address {
        name: "Ada Lovelace".into(),
        street: "Rue de la Loi 16".into(),
        city: "Brussels".into(),
        postal_code: "1000".into(),
        country: CountryCode::parse("BE").unwrap_or_else(|_| unreachable!("BE is a country")),
    }
}

fn stream(category: &str, id: impl std::fmt::Display) -> StreamId {
    StreamId::new(category, id).unwrap_or_else(|_| unreachable!("sample stream ids are valid"))
}

/// Sample traffic: one append per event, in log order. Every SKU is restocked
/// first; then the orders' events interleave.
pub fn sample(config: SampleConfig) -> Vec<StreamAppend> {
    Sample::new(config).collect()
}

/// [`sample`] as an iterator: generates as it goes, so a million events need
/// no more memory than the orders in flight.
pub struct Sample {
    generator: Generator,
    restocked: usize,
    placed: usize,
    flows: Vec<std::collections::VecDeque<StreamAppend>>,
}

impl Sample {
    /// The traffic of `config`.
    pub fn new(config: SampleConfig) -> Self {
        Self {
            generator: Generator { rng: SplitMix(config.seed), ids: SplitMix(config.seed ^ 0x5EED_5EED), config },
            restocked: 0,
            placed: 0,
            flows: Vec::new(),
        }
    }
}

impl Iterator for Sample {
    type Item = StreamAppend;

    fn next(&mut self) -> Option<StreamAppend> {
        let config = self.generator.config;
        if self.restocked < config.skus.max(1) {
            let n = self.restocked;
            self.restocked += 1;
            let event = InventoryEvent::from(StockRestocked { sku: sku(n), quantity: units(10_000), restocked_at: at(0) });
            let id = self.generator.id();
            return Some(append(stream("inventory", sku(n)), event, id));
        }
        while self.flows.len() < config.concurrency.max(1) && self.placed < config.orders {
            self.placed += 1;
            let flow = self.generator.order_flow(self.placed as u64);
            self.flows.push(flow.into());
        }
        if self.flows.is_empty() {
            return None;
        }
        let pick = self.generator.rng.below(self.flows.len());
        let next = self.flows[pick].pop_front();
        if self.flows[pick].is_empty() {
            self.flows.swap_remove(pick);
        }
        next
    }
}

struct Generator {
    rng: SplitMix,
    ids: SplitMix,
    config: SampleConfig,
}

impl Generator {
    fn id(&mut self) -> Uuid {
        Uuid::from_u64_pair(self.ids.next(), self.ids.next())
    }

    fn order_flow(&mut self, clock: u64) -> Vec<StreamAppend> {
        let skus = self.config.skus.max(1);
        let order_id = self.id();
        let order = stream("order", order_id);
        let first_sku = self.rng.below(skus);
        let n_lines = (1 + self.rng.below(3)).min(skus);
        let lines: Vec<OrderLine> = (0..n_lines)
            .map(|i| OrderLine {
                sku: sku((first_sku + i) % skus),
                quantity: units(1 + self.rng.below(4) as i64),
                unit_price_cents: cents(100 + self.rng.below(5000) as i64),
            })
            .collect();
        let total: u64 = lines.iter().map(|l| u64::from(l.quantity.get()) * l.unit_price_cents.get()).sum();
        let amount = cents(total as i64);
        let customer_id = format!("customer-{}", self.rng.below(self.config.customers.max(1)));
        let placed = OrderEvent::from(OrderPlaced {
            order_id,
            customer_id,
            lines: lines.clone(),
            total_cents: amount,
            payment_method: "card".into(),
            shipping_address: address(),
            placed_at: Some(at(clock)),
        });
        let mut flow = vec![append(order.clone(), placed, self.id())];
        let saga = stream("fulfilment", order_id);
        let started = SagaEvent::from(SagaStarted {
            saga_id: order_id,
            data: serde_json::json!({
                "orderId": order_id, "lines": lines, "totalCents": amount, "paymentMethod": "card", "shippingAddress": address(),
            }),
            started_at: at(clock),
        });
        flow.push(append(saga.clone(), started, self.id()));
        let step = |name: &str, compensation: bool, clock: u64| {
            SagaEvent::from(SagaStepSucceeded { step: name.into(), compensation, at: at(clock) })
        };
        for line in &lines {
            let event =
                InventoryEvent::from(StockReserved { sku: line.sku.clone(), order_id, quantity: line.quantity, reserved_at: at(clock) });
            flow.push(append(stream("inventory", &line.sku), event, self.id()));
        }
        let payment = stream("payment", order_id);
        let authorized = PaymentEvent::from(PaymentAuthorized {
            order_id,
            amount_cents: amount,
            payment_method: "card".into(),
            authorized_at: at(clock),
        });
        flow.push(append(payment.clone(), authorized, self.id()));
        match self.rng.below(10) {
            0..=6 => {
                let shipment = ShipmentEvent::from(ShipmentCreated { order_id, address: address(), created_at: at(clock) });
                flow.push(append(stream("shipment", order_id), shipment, self.id()));
                let confirmed = OrderEvent::from(OrderConfirmed { order_id, confirmed_at: at(clock + 1) });
                flow.push(append(order.clone(), confirmed, self.id()));
                for name in ["RESERVE_STOCK", "AUTHORIZE_PAYMENT", "CREATE_SHIPMENT", "CONFIRM_ORDER"] {
                    flow.push(append(saga.clone(), step(name, false, clock + 1), self.id()));
                }
                for line in &lines {
                    let event = InventoryEvent::from(ReservationCommitted {
                        sku: line.sku.clone(),
                        order_id,
                        quantity: line.quantity,
                        committed_at: at(clock + 2),
                    });
                    flow.push(append(stream("inventory", &line.sku), event, self.id()));
                }
                let captured = PaymentEvent::from(PaymentCaptured { order_id, amount_cents: amount, captured_at: at(clock + 2) });
                flow.push(append(payment, captured, self.id()));
                for name in ["CAPTURE_PAYMENT", "COMMIT_STOCK"] {
                    flow.push(append(saga.clone(), step(name, false, clock + 2), self.id()));
                }
                flow.push(append(saga, SagaEvent::from(SagaCompleted { at: at(clock + 2) }), self.id()));
                let shipped = OrderEvent::from(OrderShipped { order_id, shipped_at: at(clock + 3) });
                flow.push(append(order, shipped, self.id()));
            }
            7 | 8 => {
                let reason = "the carrier refused the address";
                for name in ["RESERVE_STOCK", "AUTHORIZE_PAYMENT"] {
                    flow.push(append(saga.clone(), step(name, false, clock + 1), self.id()));
                }
                let failed = SagaEvent::from(SagaStepFailed { step: "CREATE_SHIPMENT".into(), reason: reason.into(), at: at(clock + 1) });
                flow.push(append(saga.clone(), failed, self.id()));
                for line in &lines {
                    let event = InventoryEvent::from(ReservationReleased {
                        sku: line.sku.clone(),
                        order_id,
                        quantity: line.quantity,
                        released_at: at(clock + 1),
                    });
                    flow.push(append(stream("inventory", &line.sku), event, self.id()));
                }
                let voided = PaymentEvent::from(PaymentVoided { order_id, amount_cents: amount, voided_at: at(clock + 1) });
                flow.push(append(payment, voided, self.id()));
                for name in ["CREATE_SHIPMENT", "AUTHORIZE_PAYMENT", "RESERVE_STOCK"] {
                    flow.push(append(saga.clone(), step(name, true, clock + 1), self.id()));
                }
                let cancelled = OrderEvent::from(OrderCancelled {
                    order_id,
                    reason: reason.into(),
                    failed_step: Some(FulfilmentStep::CreateShipment),
                    cancelled_at: at(clock + 1),
                });
                flow.push(append(order, cancelled, self.id()));
                let aborted =
                    SagaEvent::from(SagaAborted { failed_step: "CREATE_SHIPMENT".into(), reason: reason.into(), at: at(clock + 1) });
                flow.push(append(saga, aborted, self.id()));
            }
            _ => {}
        }
        flow
    }
}

/// Groups appends, in order, into requests of at most `max` streams with no
/// stream twice (a store request appends to each stream once).
pub fn requests(appends: Vec<StreamAppend>, max: usize) -> Vec<Vec<StreamAppend>> {
    let mut requests = Vec::new();
    let mut current: Vec<StreamAppend> = Vec::new();
    let mut streams = std::collections::HashSet::new();
    for append in appends {
        if current.len() >= max.max(1) || streams.contains(&append.stream_id) {
            requests.push(std::mem::take(&mut current));
            streams.clear();
        }
        streams.insert(append.stream_id.clone());
        current.push(append);
    }
    if !current.is_empty() {
        requests.push(current);
    }
    requests
}
