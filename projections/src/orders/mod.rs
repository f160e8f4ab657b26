//! The read models of the reference domain, built only on the public core.
//!
//! - [`OrdersProjection`] (`orders`): one view per order (status, lines,
//!   totals, the fulfilment saga: its status and each step's, attempts and
//!   last error, last update), fed by the order's stream and its saga's
//!   (`fulfilment-<orderId>`), and indexes for `orders(customerId, status,
//!   first, after)`: `all`, `customer:<id>`, `status:<STATUS>`,
//!   `customer:<id>:status:<STATUS>` (the id escaped, `%` as `%25` and `:`
//!   as `%3A`, so that no customer id names another's index: a customer
//!   `c-1:status:PENDING` is not c-1's pending orders), scored by the position of the
//!   `OrderPlaced` event (so pages come in placing order and a cursor is a
//!   position). The two streams are related
//!   ([`Projection::related_streams`]): the runner applies them in global
//!   order, so a view is always the fold of a prefix of the log (never a saga
//!   ABORTED beside an order still PENDING).
//! - [`StockProjection`] (`stock`): units on hand, reserved and available per
//!   SKU, from the inventory streams.
//!
//! Queries ([`order`], [`orders`], [`stock`]) read the live generation.

use std::sync::{Arc, LazyLock};

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use strata_schemas::events::{InventoryEvent, OrderEvent, SagaEvent};
use strata_schemas::values::SagaStep;
use strata_schemas::DomainEvent;
use strata_store::{RecordedEvent, StreamId};
use uuid::Uuid;

pub mod sample;

use crate::projection::{ApplyError, Document, Projection, Write};
use crate::sink::{ReadModelSink, SinkError};

/// Every projection of the domain.
pub fn projections() -> Vec<Arc<dyn Projection>> {
    vec![Arc::new(OrdersProjection), Arc::new(StockProjection)]
}

/// The names of the fulfilment saga's steps, in order ([`SagaStep::ALL`]).
pub const SAGA_STEPS: [&str; SagaStep::ALL.len()] = {
    let mut names = [""; SagaStep::ALL.len()];
    let mut i = 0;
    while i < names.len() {
        names[i] = SagaStep::ALL[i].name();
        i += 1;
    }
    names
};

/// The stream category of the fulfilment saga's instances.
const SAGA_CATEGORY: &str = "fulfilment";

/// Where an order is (docs/design.md §5; defined in `strata_schemas::values`).
pub use strata_schemas::values::OrderStatus;

/// Where an order's fulfilment saga is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum SagaStatus {
    /// Going forward.
    Running,
    /// Undoing after a failure or a cancellation.
    Compensating,
    /// Every step done.
    Completed,
    /// Undone (the order cancelled).
    Aborted,
    /// Parked: a compensation (or a step after the confirmation) kept
    /// failing; an operator must resume it.
    Stuck,
}

/// Where one fulfilment step is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum StepStatus {
    /// Not done yet.
    Pending,
    /// Failed transiently or got no answer; will be sent again.
    Retrying,
    /// Done.
    Done,
    /// Failed for good: the saga undoes what may have run.
    Failed,
    /// Done, then undone.
    Compensated,
    /// Never done, and fenced by the undo so it cannot happen late.
    Cancelled,
    /// The saga is parked at this step.
    Stuck,
}

/// The order views and their indexes.
#[derive(Debug, Clone, Copy, Default)]
pub struct OrdersProjection;

/// Stock per SKU.
#[derive(Debug, Clone, Copy, Default)]
pub struct StockProjection;

/// The event as its family's enum: matched exhaustively, so a new event
/// type of the family does not compile until the projection says what it does.
fn decode<E: DomainEvent>(event: &RecordedEvent) -> Result<E, ApplyError> {
    E::decode(&event.event_type, &event.payload).map_err(|err| ApplyError::new(strata_store::chain(&err)))
}

/// The event types of `families`, for [`Projection::event_types`].
fn type_names(families: &[&'static [(&'static str, u32)]]) -> Vec<&'static str> {
    families.iter().flat_map(|types| types.iter().map(|(name, _)| *name)).collect()
}

/// The document key of an order's view.
pub fn order_key(order_id: Uuid) -> String {
    format!("order:{order_id}")
}

/// The view an order or saga stream feeds (`order-<id>`, `fulfilment-<id>`).
fn view_key(event: &RecordedEvent) -> Result<String, ApplyError> {
    let order_id: Uuid =
        event.stream_id.id().parse().map_err(|_| ApplyError::new(format!("stream {} is not named after an order id", event.stream_id)))?;
    Ok(order_key(order_id))
}

fn set(key: &str, field: &str, value: Value) -> Write {
    Write::SetField { key: key.to_owned(), field: field.to_owned(), value }
}

/// The index of a customer's orders (in one status): the id escaped so
/// that it cannot reach into another index's name.
fn customer_index(customer: &str, status: Option<&str>) -> String {
    let escaped = customer.replace('%', "%25").replace(':', "%3A");
    match status {
        Some(status) => format!("customer:{escaped}:status:{status}"),
        None => format!("customer:{escaped}"),
    }
}

fn index_writes(add: bool, customer: &str, status: &str, score: i64, key: &str) -> Vec<Write> {
    let mut writes = Vec::new();
    for index in [format!("status:{status}"), customer_index(customer, Some(status))] {
        writes.push(if add {
            Write::IndexAdd { index, score, member: key.to_owned() }
        } else {
            Write::IndexRemove { index, member: key.to_owned() }
        });
    }
    writes
}

impl OrdersProjection {
    /// Moves an order to `status`, keeping the status indexes in step.
    fn transition(
        key: &str,
        document: Option<&Document>,
        event: &RecordedEvent,
        status: OrderStatus,
        extra: &[(&str, Value)],
    ) -> Result<Vec<Write>, ApplyError> {
        let Some(mut order) = document.and_then(|d| d.get("order")).cloned() else {
            return Err(ApplyError::new(format!(
                "{} at {} version {} for an order without OrderPlaced",
                event.event_type, event.stream_id, event.stream_version
            )));
        };
        let old = order["status"].as_str().unwrap_or_default().to_owned();
        let customer = order["customerId"].as_str().unwrap_or_default().to_owned();
        let score = order["placedPosition"].as_i64().unwrap_or_default();
        order["status"] = json!(status);
        for (field, value) in extra {
            order[*field] = value.clone();
        }
        let mut writes = vec![set(key, "order", order)];
        if old != status.as_str() {
            writes.extend(index_writes(false, &customer, &old, score, key));
            writes.extend(index_writes(true, &customer, status.as_str(), score, key));
        }
        Ok(writes)
    }

    /// The saga's own field (`saga`): its status, and what an operator or a
    /// client needs to know about it.
    fn saga(key: &str, status: SagaStatus, undoing: bool, extra: Value) -> Write {
        let mut saga = json!({ "status": status, "undoing": undoing });
        if let (Some(saga), Value::Object(extra)) = (saga.as_object_mut(), extra) {
            saga.extend(extra);
        }
        set(key, "saga", saga)
    }
}

impl Projection for OrdersProjection {
    fn name(&self) -> &str {
        "orders"
    }

    fn version(&self) -> u32 {
        // 4: customer ids escaped in index names.
        4
    }

    fn categories(&self) -> &[&'static str] {
        &["order", SAGA_CATEGORY]
    }

    fn event_types(&self) -> &[&'static str] {
        static TYPES: LazyLock<Vec<&'static str>> = LazyLock::new(|| type_names(&[OrderEvent::TYPES, SagaEvent::TYPES]));
        &TYPES
    }

    fn related_streams(&self, event: &RecordedEvent) -> Vec<StreamId> {
        let other = match event.stream_id.category() {
            "order" => SAGA_CATEGORY,
            SAGA_CATEGORY => "order",
            _ => return Vec::new(),
        };
        StreamId::new(other, event.stream_id.id()).into_iter().collect()
    }

    fn document_key(&self, event: &RecordedEvent) -> Option<String> {
        // Only status changes read the view (its `order` field, or the saga's
        // when parking or resuming); every other event writes fields of its
        // own without reading.
        match event.event_type.as_str() {
            "OrderConfirmed" | "OrderShipped" | "OrderCancelled" | "SagaStuck" | "SagaResumed" => view_key(event).ok(),
            _ => None,
        }
    }

    fn apply(&self, event: &RecordedEvent, document: Option<&Document>) -> Result<Vec<Write>, ApplyError> {
        let at = event.recorded_at.timestamp_micros();
        let key = view_key(event)?;
        let mut writes = if event.stream_id.category() == SAGA_CATEGORY {
            Self::saga_writes(&key, document, decode(event)?)
        } else {
            Self::order_writes(&key, document, event, decode(event)?)?
        };
        writes.push(Write::SetMax { key, field: "updatedAt".into(), value: at });
        Ok(writes)
    }
}

impl OrdersProjection {
    fn order_writes(key: &str, document: Option<&Document>, event: &RecordedEvent, order: OrderEvent) -> Result<Vec<Write>, ApplyError> {
        Ok(match order {
            OrderEvent::OrderPlaced(placed) => {
                let score = event.position.0 as i64;
                let order = json!({
                    "orderId": placed.order_id,
                    "customerId": placed.customer_id,
                    "status": OrderStatus::Pending,
                    "lines": placed.lines,
                    "totalCents": placed.total_cents,
                    "paymentMethod": placed.payment_method,
                    "shippingAddress": placed.shipping_address,
                    "placedAt": placed.placed_at.unwrap_or(event.recorded_at),
                    "placedPosition": score,
                });
                let mut writes = vec![set(key, "order", order)];
                for index in ["all".to_owned(), customer_index(&placed.customer_id, None)] {
                    writes.push(Write::IndexAdd { index, score, member: key.to_owned() });
                }
                writes.extend(index_writes(true, &placed.customer_id, OrderStatus::Pending.as_str(), score, key));
                writes
            }
            OrderEvent::OrderConfirmed(_) => Self::transition(key, document, event, OrderStatus::Confirmed, &[])?,
            OrderEvent::OrderShipped(_) => Self::transition(key, document, event, OrderStatus::Shipped, &[])?,
            OrderEvent::OrderCancelled(cancelled) => {
                let extra = [("cancelReason", Value::from(cancelled.reason)), ("failedStep", json!(cancelled.failed_step))];
                Self::transition(key, document, event, OrderStatus::Cancelled, &extra)?
            }
        })
    }

    fn saga_writes(key: &str, document: Option<&Document>, saga: SagaEvent) -> Vec<Write> {
        match saga {
            SagaEvent::SagaStarted(_) => vec![Self::saga(key, SagaStatus::Running, false, json!({}))],
            SagaEvent::SagaCompleted(_) => vec![Self::saga(key, SagaStatus::Completed, false, json!({}))],
            SagaEvent::SagaStepSucceeded(e) => {
                // An undo has its own field: the step keeps what it was (DONE,
                // FAILED, or never done).
                let field = if e.compensation { format!("undo:{}", e.step) } else { format!("step:{}", e.step) };
                let status = if e.compensation { StepStatus::Compensated } else { StepStatus::Done };
                vec![set(key, &field, json!({ "status": status }))]
            }
            SagaEvent::SagaStepRetryScheduled(e) => {
                let retry = json!({"attempts": e.attempt, "lastError": e.reason, "compensation": e.compensation, "retryAt": e.retry_at});
                let mut writes = vec![set(key, &format!("retries:{}", e.step), retry)];
                if !e.compensation {
                    writes.push(set(key, &format!("step:{}", e.step), json!({ "status": StepStatus::Retrying })));
                }
                writes
            }
            SagaEvent::SagaStepFailed(e) => {
                vec![
                    set(key, &format!("step:{}", e.step), json!({ "status": StepStatus::Failed, "reason": e.reason })),
                    Self::saga(key, SagaStatus::Compensating, true, json!({})),
                ]
            }
            SagaEvent::SagaCancelRequested(e) => {
                vec![Self::saga(
                    key,
                    SagaStatus::Compensating,
                    true,
                    json!({ "reason": format!("cancelled: {}", e.reason), "cancelled": true }),
                )]
            }
            SagaEvent::SagaAborted(e) => {
                vec![Self::saga(key, SagaStatus::Aborted, true, json!({ "failedStep": e.failed_step, "reason": e.reason }))]
            }
            SagaEvent::SagaStuck(e) => {
                let undoing = document.and_then(|d| d.get("saga")).and_then(|s| s.get("undoing")).and_then(Value::as_bool).unwrap_or(false);
                vec![Self::saga(
                    key,
                    SagaStatus::Stuck,
                    undoing,
                    json!({ "stuckStep": e.step, "phase": e.phase, "reason": e.reason, "since": e.at }),
                )]
            }
            SagaEvent::SagaResumed(_) => {
                let undoing = document.and_then(|d| d.get("saga")).and_then(|s| s.get("undoing")).and_then(Value::as_bool).unwrap_or(false);
                let status = if undoing { SagaStatus::Compensating } else { SagaStatus::Running };
                vec![Self::saga(key, status, undoing, json!({}))]
            }
        }
    }
}

impl Projection for StockProjection {
    fn name(&self) -> &str {
        "stock"
    }

    fn version(&self) -> u32 {
        // 2: the catalog price (`PriceSet`).
        2
    }

    fn categories(&self) -> &[&'static str] {
        &["inventory"]
    }

    fn event_types(&self) -> &[&'static str] {
        // Every inventory event but the fence, which changes no stock.
        static TYPES: LazyLock<Vec<&'static str>> =
            LazyLock::new(|| type_names(&[InventoryEvent::TYPES]).into_iter().filter(|name| *name != "ReservationFenced").collect());
        &TYPES
    }

    fn document_key(&self, event: &RecordedEvent) -> Option<String> {
        Some(format!("sku:{}", event.stream_id.id()))
    }

    fn apply(&self, event: &RecordedEvent, document: Option<&Document>) -> Result<Vec<Write>, ApplyError> {
        let current = document.and_then(|d| d.get("stock"));
        let field = |name: &str| current.and_then(|s| s.get(name)).and_then(Value::as_u64).unwrap_or(0);
        let (mut on_hand, mut reserved) = (field("onHand"), field("reserved"));
        let mut price = current.and_then(|s| s.get("unitPriceCents")).and_then(Value::as_u64);
        let sku = match decode(event)? {
            InventoryEvent::StockRestocked(e) => {
                on_hand += u64::from(e.quantity.get());
                e.sku
            }
            InventoryEvent::StockReserved(e) => {
                reserved += u64::from(e.quantity.get());
                e.sku
            }
            InventoryEvent::ReservationReleased(e) => {
                reserved = reserved.saturating_sub(u64::from(e.quantity.get()));
                e.sku
            }
            InventoryEvent::ReservationCommitted(e) => {
                reserved = reserved.saturating_sub(u64::from(e.quantity.get()));
                on_hand = on_hand.saturating_sub(u64::from(e.quantity.get()));
                e.sku
            }
            InventoryEvent::StockReturned(e) => {
                on_hand += u64::from(e.quantity.get());
                e.sku
            }
            InventoryEvent::PriceSet(e) => {
                price = Some(e.unit_price_cents.get());
                e.sku
            }
            InventoryEvent::ReservationFenced(_) => return Err(ApplyError::new("stock does not handle ReservationFenced")),
        };
        let key = format!("sku:{}", event.stream_id.id());
        let stock = json!({
            "sku": sku,
            "onHand": on_hand,
            "reserved": reserved,
            "available": on_hand.saturating_sub(reserved),
            "unitPriceCents": price,
        });
        Ok(vec![set(&key, "stock", stock), Write::SetMax { key, field: "updatedAt".into(), value: event.recorded_at.timestamp_micros() }])
    }
}

/// One fulfilment step as the read model sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StepView {
    /// One of [`SAGA_STEPS`].
    pub step: String,
    /// Where it is.
    pub status: StepStatus,
    /// Attempts that failed and were retried (action or undo).
    #[serde(default)]
    pub retries: u32,
    /// The reason of the failure or of the last retry.
    #[serde(default)]
    pub last_error: Option<String>,
}

/// An order as clients read it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OrderView {
    /// The order.
    pub order_id: Uuid,
    /// Who placed it.
    pub customer_id: String,
    /// Where it is.
    pub status: OrderStatus,
    /// The lines, as placed.
    pub lines: Value,
    /// Sum of the lines.
    pub total_cents: i64,
    /// Why it was cancelled.
    pub cancel_reason: Option<String>,
    /// The step whose failure cancelled it (none when its customer did).
    pub failed_step: Option<String>,
    /// The six steps of [`SAGA_STEPS`] (all `PENDING` before the saga starts).
    pub steps: Vec<StepView>,
    /// The saga (none before it starts).
    pub saga_status: Option<SagaStatus>,
    /// Why the saga is undoing, was undone, or is parked.
    pub saga_reason: Option<String>,
    /// Last change, in microseconds since the epoch.
    pub updated_at_micros: i64,
    /// The position of its `OrderPlaced` event (its cursor).
    pub cursor: i64,
}

impl OrderView {
    /// Reads a view from its document; `None` if the order was not placed.
    pub fn from_document(document: &Document) -> Option<Self> {
        let order = document.get("order")?;
        let text = |v: &Value| v.as_str().map(str::to_owned);
        let saga = document.get("saga");
        let saga_status: Option<SagaStatus> = saga.and_then(|s| s.get("status")).and_then(|s| serde_json::from_value(s.clone()).ok());
        let stuck_step = saga.filter(|_| saga_status == Some(SagaStatus::Stuck)).and_then(|s| s.get("stuckStep")).and_then(Value::as_str);
        let steps = SAGA_STEPS
            .iter()
            .map(|step| {
                let saga_step = document.get(&format!("step:{step}"));
                let retries = document.get(&format!("retries:{step}"));
                let done: Option<StepStatus> = saga_step.and_then(|s| s.get("status")).and_then(|s| serde_json::from_value(s.clone()).ok());
                let undone = document.contains_key(&format!("undo:{step}"));
                let status = match (done, undone) {
                    _ if stuck_step == Some(step) => StepStatus::Stuck,
                    (Some(StepStatus::Failed), _) => StepStatus::Failed,
                    (Some(StepStatus::Done | StepStatus::Retrying), true) => StepStatus::Compensated,
                    (None | Some(StepStatus::Pending), true) => StepStatus::Cancelled,
                    (Some(status), _) => status,
                    (None, false) => StepStatus::Pending,
                };
                StepView {
                    step: (*step).into(),
                    status,
                    retries: retries.and_then(|r| r.get("attempts")).and_then(Value::as_u64).unwrap_or(0) as u32,
                    last_error: saga_step.and_then(|s| s.get("reason")).or_else(|| retries.and_then(|r| r.get("lastError"))).and_then(text),
                }
            })
            .collect();
        Some(Self {
            order_id: order.get("orderId").and_then(Value::as_str)?.parse().ok()?,
            customer_id: order.get("customerId").and_then(text)?,
            status: serde_json::from_value(order.get("status")?.clone()).ok()?,
            lines: order.get("lines").cloned().unwrap_or(Value::Null),
            total_cents: order.get("totalCents").and_then(Value::as_i64).unwrap_or(0),
            cancel_reason: order.get("cancelReason").and_then(text),
            failed_step: order.get("failedStep").and_then(text),
            steps,
            saga_status,
            saga_reason: saga.and_then(|s| s.get("reason")).and_then(text),
            updated_at_micros: document.get("updatedAt").and_then(Value::as_i64).unwrap_or(0),
            cursor: order.get("placedPosition").and_then(Value::as_i64).unwrap_or(0),
        })
    }

    /// Nothing more will change unless someone acts: shipped, undone, or
    /// completed and still confirmed (a customer's cancellation reopens it).
    pub fn is_settled(&self) -> bool {
        matches!(
            (self.status, self.saga_status),
            (OrderStatus::Shipped, _) | (_, Some(SagaStatus::Aborted)) | (OrderStatus::Confirmed, Some(SagaStatus::Completed))
        )
    }
}

/// Stock of one SKU.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StockView {
    /// Units in the warehouse (reserved included).
    pub on_hand: u64,
    /// Units held for orders.
    pub reserved: u64,
    /// Units that can be reserved.
    pub available: u64,
    /// The catalog price of one unit; none: not for sale.
    #[serde(default)]
    pub unit_price_cents: Option<u64>,
}

/// Filter and page of [`orders`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OrdersQuery {
    /// Only this customer's orders.
    pub customer_id: Option<String>,
    /// Only orders in this status.
    pub status: Option<OrderStatus>,
    /// Page size (1 to 100).
    pub first: usize,
    /// The cursor of the last order of the previous page.
    pub after: Option<i64>,
}

/// One page of orders.
#[derive(Debug, Clone, PartialEq)]
pub struct OrdersPage {
    /// The orders, in placing order.
    pub orders: Vec<OrderView>,
    /// The cursor for the next page, if there may be one.
    pub next: Option<i64>,
}

/// The largest page.
pub const MAX_PAGE: usize = 100;

/// An order's view, if it was placed.
pub async fn order(sink: &dyn ReadModelSink, order_id: Uuid) -> Result<Option<OrderView>, SinkError> {
    let document = sink.document("orders", &order_key(order_id)).await?;
    Ok(document.as_ref().and_then(OrderView::from_document))
}

/// A page of orders by customer and status (both optional).
pub async fn orders(sink: &dyn ReadModelSink, query: &OrdersQuery) -> Result<OrdersPage, SinkError> {
    let index = match (&query.customer_id, &query.status) {
        (Some(customer), Some(status)) => customer_index(customer, Some(status.as_str())),
        (Some(customer), None) => customer_index(customer, None),
        (None, Some(status)) => format!("status:{}", status.as_str()),
        (None, None) => "all".to_owned(),
    };
    let first = query.first.clamp(1, MAX_PAGE);
    let entries = sink.page("orders", &index, query.after, first + 1).await?;
    let more = entries.len() > first;
    // Every node is checked against the filter too, not only the index
    // named for it: an index that ever held another's order shows nothing.
    let orders: Vec<OrderView> = entries
        .iter()
        .take(first)
        .filter_map(|entry| entry.document.as_ref().and_then(OrderView::from_document))
        .filter(|view| query.customer_id.as_ref().is_none_or(|customer| &view.customer_id == customer))
        .filter(|view| query.status.is_none_or(|status| view.status == status))
        .collect();
    let next = if more { entries.get(first - 1).map(|e| e.score) } else { None };
    Ok(OrdersPage { orders, next })
}

/// A SKU's stock, if it was ever restocked or reserved.
pub async fn stock(sink: &dyn ReadModelSink, sku: &str) -> Result<Option<StockView>, SinkError> {
    let document = sink.document("stock", &stock_key(sku)).await?;
    Ok(document.as_ref().and_then(StockView::from_document))
}

/// The stock of many SKUs in two round trips whatever their number (the
/// live generation, then every document in one pipelined read): what a
/// GraphQL DataLoader batches nested `stock` fields into. SKUs never
/// restocked nor reserved are absent from the map.
pub async fn stocks(sink: &dyn ReadModelSink, skus: &[String]) -> Result<std::collections::HashMap<String, StockView>, SinkError> {
    let mut found = std::collections::HashMap::new();
    let Some(generation) = sink.live_generation("stock").await? else {
        return Ok(found);
    };
    let target = crate::sink::Target { projection: "stock".into(), generation };
    let keys: Vec<String> = skus.iter().map(|sku| stock_key(sku)).collect();
    let loaded = sink.load(&target, &[], &keys).await?;
    for (sku, document) in skus.iter().zip(loaded.documents) {
        if let Some(view) = document.as_ref().and_then(StockView::from_document) {
            found.insert(sku.clone(), view);
        }
    }
    Ok(found)
}

/// Whether `projection`'s live read model has applied `stream_id` up to
/// `version` (read-your-writes: a writer waits on this before reading its
/// own write back). Exact per stream, whatever order the bus delivered
/// other streams in; `false` while the projection is not built.
pub async fn has_applied(sink: &dyn ReadModelSink, projection: &str, stream_id: &str, version: u64) -> Result<bool, SinkError> {
    let Some(generation) = sink.live_generation(projection).await? else {
        return Ok(false);
    };
    let target = crate::sink::Target { projection: projection.into(), generation };
    let loaded = sink.load(&target, &[stream_id.to_owned()], &[]).await?;
    Ok(loaded.stream_versions.first().copied().unwrap_or(0) >= version)
}

fn stock_key(sku: &str) -> String {
    format!("sku:{sku}")
}

impl StockView {
    /// Reads a SKU's stock from its document.
    pub fn from_document(document: &Document) -> Option<Self> {
        let stock = document.get("stock")?;
        let field = |name: &str| stock.get(name).and_then(Value::as_u64).unwrap_or(0);
        Some(Self {
            on_hand: field("onHand"),
            reserved: field("reserved"),
            available: field("available"),
            unit_price_cents: stock.get("unitPriceCents").and_then(Value::as_u64),
        })
    }
}
