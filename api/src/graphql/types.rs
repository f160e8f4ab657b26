//! The GraphQL types: read-model views, inputs, payloads, and the stock
//! DataLoader.

use std::collections::HashMap;
use std::sync::Arc;

use async_graphql::dataloader::{DataLoader, Loader};
use async_graphql::{ComplexObject, Context, Enum, InputObject, Json, Object, SimpleObject, ID};
use chrono::{DateTime, Utc};
use serde_json::Value;
use strata_commands::CommandOutcome;
use strata_projections::orders::{OrderView, StockView};
use strata_projections::ReadModelSink;
use strata_store::RecordedEvent;

use super::internal;

/// Where an order is in its life.
#[derive(Enum, Debug, Clone, Copy, PartialEq, Eq)]
#[graphql(remote = "strata_projections::orders::OrderStatus")]
pub enum OrderStatus {
    /// Placed; fulfilment under way.
    Pending,
    /// Stock reserved, payment authorized, shipment booked.
    Confirmed,
    /// Left the warehouse.
    Shipped,
    /// Cancelled on request or by compensation (see `failedStep`).
    Cancelled,
}

/// Where a fulfilment step is.
#[derive(Enum, Debug, Clone, Copy, PartialEq, Eq)]
#[graphql(remote = "strata_projections::orders::StepStatus")]
pub enum StepStatus {
    /// Not done yet.
    Pending,
    /// Failed transiently or got no answer; will be sent again.
    Retrying,
    /// Done.
    Done,
    /// Failed for good: the saga undoes every step that may have run.
    Failed,
    /// Done, then undone.
    Compensated,
    /// Never done, and fenced by the undo: a late command for it is refused.
    Cancelled,
    /// The saga is parked at this step until an operator resumes it.
    Stuck,
}

/// Where an order's saga is.
#[derive(Enum, Debug, Clone, Copy, PartialEq, Eq)]
#[graphql(remote = "strata_projections::orders::SagaStatus")]
pub enum SagaStatus {
    /// Going forward.
    Running,
    /// Undoing after a failure, or after its customer cancelled the order.
    Compensating,
    /// Every step done.
    Completed,
    /// Undone, and the order cancelled.
    Aborted,
    /// Parked: an undo (or a step after the confirmation) kept failing; see
    /// `sagaReason`. An operator resumes it with `resumeSaga`.
    Stuck,
}

/// An order as the read model shows it.
pub struct Order(pub OrderView);

/// One line of an order.
#[derive(SimpleObject, Debug, Clone)]
#[graphql(complex)]
pub struct OrderLine {
    /// The SKU.
    pub sku: String,
    /// Units.
    pub quantity: i64,
    /// Price of one unit, in cents.
    pub unit_price_cents: i64,
}

/// One step of the order's fulfilment saga.
#[derive(SimpleObject, Debug, Clone)]
pub struct SagaStep {
    /// `RESERVE_STOCK`, `AUTHORIZE_PAYMENT`, `CREATE_SHIPMENT`, `CONFIRM_ORDER`, `CAPTURE_PAYMENT` or `COMMIT_STOCK`.
    pub step: String,
    /// Where it is.
    pub status: StepStatus,
    /// Attempts that failed and were retried.
    pub retries: u32,
    /// The reason of the failure or of the last retry.
    pub last_error: Option<String>,
}

#[Object]
impl Order {
    /// The order id.
    async fn id(&self) -> ID {
        ID(self.0.order_id.to_string())
    }
    /// Who placed it.
    async fn customer_id(&self) -> ID {
        ID(self.0.customer_id.clone())
    }
    /// Where it is.
    async fn status(&self) -> OrderStatus {
        self.0.status.into()
    }
    /// The lines, as placed.
    async fn lines(&self) -> Vec<OrderLine> {
        self.0
            .lines
            .as_array()
            .into_iter()
            .flatten()
            .map(|line| OrderLine {
                sku: line.get("sku").and_then(Value::as_str).unwrap_or_default().to_owned(),
                quantity: line.get("quantity").and_then(Value::as_i64).unwrap_or(0),
                unit_price_cents: line.get("unitPriceCents").and_then(Value::as_i64).unwrap_or(0),
            })
            .collect()
    }
    /// Sum of the lines, in cents.
    async fn total_cents(&self) -> i64 {
        self.0.total_cents
    }
    /// Why it was cancelled.
    async fn cancel_reason(&self) -> Option<&str> {
        self.0.cancel_reason.as_deref()
    }
    /// The fulfilment step whose failure cancelled it.
    async fn failed_step(&self) -> Option<&str> {
        self.0.failed_step.as_deref()
    }
    /// The fulfilment saga's steps.
    async fn steps(&self) -> Vec<SagaStep> {
        self.0
            .steps
            .iter()
            .map(|step| SagaStep {
                step: step.step.clone(),
                status: step.status.into(),
                retries: step.retries,
                last_error: step.last_error.clone(),
            })
            .collect()
    }
    /// The saga, once it started.
    async fn saga_status(&self) -> Option<SagaStatus> {
        self.0.saga_status.map(Into::into)
    }
    /// Why the saga is undoing (a failure, or `cancelled: <reason>`), was
    /// undone, or is parked.
    async fn saga_reason(&self) -> Option<&str> {
        self.0.saga_reason.as_deref()
    }
    /// The last change the read model saw.
    async fn updated_at(&self) -> Option<DateTime<Utc>> {
        DateTime::from_timestamp_micros(self.0.updated_at_micros)
    }
    /// Its cursor in `orders`.
    async fn cursor(&self) -> String {
        self.0.cursor.to_string()
    }
}

#[ComplexObject]
impl OrderLine {
    /// The SKU's stock now (batched across the response).
    async fn stock(&self, ctx: &Context<'_>) -> async_graphql::Result<Option<Stock>> {
        ctx.data_unchecked::<DataLoader<StockLoader>>().load_one(self.sku.clone()).await
    }
}

/// Stock of one SKU.
#[derive(SimpleObject, Debug, Clone)]
pub struct Stock {
    /// The SKU.
    pub sku: String,
    /// Units in the warehouse (reserved included).
    pub on_hand: u64,
    /// Units held for orders.
    pub reserved: u64,
    /// Units that can be reserved.
    pub available: u64,
    /// The catalog price of one unit in cents; none: not for sale.
    pub unit_price_cents: Option<u64>,
}

impl Stock {
    /// From the read model.
    pub fn new(sku: String, view: StockView) -> Self {
        Self { sku, on_hand: view.on_hand, reserved: view.reserved, available: view.available, unit_price_cents: view.unit_price_cents }
    }
}

/// Loads the stock of every SKU a response asks for in one read.
pub struct StockLoader {
    /// The read models.
    pub sink: Arc<dyn ReadModelSink>,
}

impl Loader<String> for StockLoader {
    type Value = Stock;
    type Error = async_graphql::Error;

    async fn load(&self, keys: &[String]) -> Result<HashMap<String, Stock>, Self::Error> {
        let views = strata_projections::orders::stocks(&*self.sink, keys).await.map_err(internal)?;
        Ok(views.into_iter().map(|(sku, view)| (sku.clone(), Stock::new(sku, view))).collect())
    }
}

/// A page of orders.
#[derive(SimpleObject)]
pub struct OrderConnection {
    /// The orders, in placing order.
    pub nodes: Vec<Order>,
    /// Where the next page starts.
    pub page_info: PageInfo,
}

/// Cursor pagination.
#[derive(SimpleObject, Debug, Clone)]
pub struct PageInfo {
    /// Whether another page may follow.
    pub has_next_page: bool,
    /// Pass as `after` for the next page.
    pub end_cursor: Option<String>,
}

/// An event of the log, with its metadata.
#[derive(SimpleObject, Debug, Clone)]
pub struct Event {
    /// Its id.
    pub event_id: ID,
    /// Its type.
    pub event_type: String,
    /// The schema version it was written with.
    pub schema_version: u32,
    /// Its stream.
    pub stream_id: String,
    /// Its version in the stream.
    pub stream_version: u64,
    /// Its global position.
    pub position: u64,
    /// When it was recorded.
    pub recorded_at: DateTime<Utc>,
    /// Correlation, causation, trace, actor, command id.
    pub metadata: Json<Value>,
    /// The payload, upcast to the latest version.
    pub payload: Json<Value>,
    /// Its link in the stream's hash chain.
    pub hash: String,
}

impl From<RecordedEvent> for Event {
    fn from(event: RecordedEvent) -> Self {
        Self {
            event_id: ID(event.event_id.to_string()),
            event_type: event.event_type,
            schema_version: event.schema_version,
            stream_id: event.stream_id.to_string(),
            stream_version: event.stream_version,
            position: event.position.0,
            recorded_at: event.recorded_at,
            metadata: Json(serde_json::to_value(&event.metadata).unwrap_or(Value::Null)),
            payload: Json(event.payload),
            hash: event.hash.to_string(),
        }
    }
}

/// An order replayed from its stream as of a version or a time.
#[derive(SimpleObject, Debug, Clone)]
pub struct OrderSnapshot {
    /// The order.
    pub id: ID,
    /// The stream version the state includes.
    pub version: u64,
    /// When the last included event was recorded.
    pub recorded_at: DateTime<Utc>,
    /// Its status then.
    pub status: Option<OrderStatus>,
    /// Who placed it.
    pub customer_id: Option<ID>,
    /// Its lines.
    pub lines: Vec<OrderLine>,
    /// Sum of the lines, in cents.
    pub total_cents: Option<i64>,
    /// Why it was cancelled, if it was by then.
    pub cancel_reason: Option<String>,
    /// The step that failed, if it was cancelled by compensation.
    pub failed_step: Option<String>,
    /// The events replayed.
    pub events: Vec<Event>,
}

/// A line to order.
#[derive(InputObject, Debug, Clone)]
pub struct OrderLineInput {
    /// The SKU (upper-case letters, digits and dashes).
    pub sku: String,
    /// Units (1 to 10,000).
    pub quantity: i32,
    /// The price of one unit in cents as the client showed it; the catalog's
    /// price when absent. The order is charged the catalog's price: a line
    /// whose price is not the catalog's when its stock is reserved cancels
    /// the order (reason `price changed: <SKU> is <cents>`).
    pub unit_price_cents: Option<i32>,
}

/// Where to ship.
#[derive(InputObject, Debug, Clone)]
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

/// An order to place.
#[derive(InputObject, Debug, Clone)]
pub struct PlaceOrderInput {
    /// Who orders.
    pub customer_id: ID,
    /// What (1 to 100 lines, one per SKU).
    pub lines: Vec<OrderLineInput>,
    /// How they pay.
    pub payment_method: String,
    /// Where to.
    pub shipping_address: AddressInput,
    /// The same key (for the same customer) places the order once and
    /// answers the same order id every time.
    pub idempotency_key: Option<String>,
}

/// What a command wrote.
#[derive(SimpleObject, Debug, Clone)]
pub struct Written {
    /// The stream it wrote to.
    pub stream_id: String,
    /// The stream's version after it.
    pub version: u64,
    /// The global position of its last event.
    pub position: u64,
    /// Pass as `waitFor` to a query to read this write back.
    pub consistency_token: String,
    /// True when this command had already been applied (nothing new written).
    pub replayed: bool,
}

impl From<&CommandOutcome> for Written {
    fn from(outcome: &CommandOutcome) -> Self {
        Self {
            stream_id: outcome.stream_id.to_string(),
            version: outcome.version,
            position: outcome.events.last().map_or(0, |event| event.position.0),
            consistency_token: format!("{}@{}", outcome.stream_id, outcome.version),
            replayed: outcome.replayed,
        }
    }
}

/// What `placeOrder` answers.
#[derive(SimpleObject, Debug, Clone)]
pub struct PlaceOrderPayload {
    /// The order.
    pub order_id: ID,
    /// Pass as `waitFor` to read the order back at once.
    pub consistency_token: String,
    /// What was written.
    pub written: Written,
}

/// A fulfilment saga parked because an undo (or a step after the
/// confirmation) kept failing; `resumeSaga` tries it again.
#[derive(SimpleObject, Debug, Clone)]
pub struct StuckSaga {
    /// The order (the saga's id).
    pub order_id: ID,
    /// The step it is parked at.
    pub step: String,
    /// `ACTION`, `COMPENSATION` or `ABORT`.
    pub phase: String,
    /// Attempts made before it was parked.
    pub attempts: u32,
    /// The last failure.
    pub reason: String,
    /// When it was parked.
    pub since: DateTime<Utc>,
}

impl From<strata_sagas::StuckSaga> for StuckSaga {
    fn from(stuck: strata_sagas::StuckSaga) -> Self {
        Self {
            order_id: ID(stuck.saga_id.to_string()),
            step: stuck.step,
            phase: serde_json::to_value(stuck.phase).ok().and_then(|v| v.as_str().map(str::to_owned)).unwrap_or_default(),
            attempts: stuck.attempts,
            reason: stuck.reason,
            since: stuck.since,
        }
    }
}

/// Who a token speaks for.
#[derive(SimpleObject, Debug, Clone)]
pub struct Me {
    /// `CLIENT`, `AUDITOR` or `OPERATOR`.
    pub role: String,
    /// A client's customer; an auditor's or operator's name, if its token has one.
    pub subject: Option<ID>,
    /// When the token expires, if it does.
    pub expires: Option<DateTime<Utc>>,
}
