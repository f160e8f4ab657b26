//! Queries: the read models for everyone, the log for auditors and operators.

use std::time::{Duration, Instant};

use async_graphql::{Context, Object, ID};
use chrono::{DateTime, Utc};
use strata_commands::orders::{Order as OrderAggregate, OrderState};
use strata_commands::Aggregate;
use strata_projections::orders::{self, OrdersQuery};
use strata_schemas::events::OrderEvent;
use strata_schemas::DomainEvent;
use strata_store::{Position, ReadAll, StreamId};
use uuid::Uuid;

use super::types::{Event, Me, Order, OrderConnection, OrderLine, OrderSnapshot, OrderStatus, PageInfo, Stock, StuckSaga};
use super::{api, caller, error, internal, visible_to, Api, Code, Needs};
use crate::audit::{stream_events, StreamQuery};
use crate::auth::Permission;
use crate::projections::ProjectionStatus;

/// The root of queries.
#[derive(Debug, Default)]
pub struct Query;

/// Parses an order id.
pub(crate) fn order_id(id: &ID) -> async_graphql::Result<Uuid> {
    id.parse::<Uuid>().map_err(|_| error(Code::Validation, format!("{:?} is not an order id (a UUID)", id.as_str())))
}

/// The deadline every `waitFor` of one HTTP request shares: the first wait
/// starts it, `Limits::read_your_writes_wait` later all of them time out, so
/// a request's waiting is bounded as a whole, however many fields it has.
#[derive(Debug, Default)]
pub struct WaitBudget(std::sync::OnceLock<Instant>);

/// Waits until the read model `projection` has applied the write a
/// `consistencyToken` names (`<streamId>@<version>`): woken by the read
/// models' changes ([`crate::changes`]), within the request's [`WaitBudget`]
/// (or `Limits::read_your_writes_wait` without one).
pub(crate) async fn await_write(ctx: &Context<'_>, projection: &str, token: Option<&str>) -> async_graphql::Result<()> {
    let Some(token) = token else { return Ok(()) };
    let api = api(ctx);
    let parsed = token.rsplit_once('@').and_then(|(stream, version)| Some((StreamId::parse(stream).ok()?, version.parse::<u64>().ok()?)));
    let Some((stream_id, version)) = parsed else {
        return Err(error(Code::Validation, format!("waitFor: {token:?} is not a consistency token (the consistencyToken of a mutation)")));
    };
    let follows = crate::projections::find(projection).map(|p| p.categories().contains(&stream_id.category())).unwrap_or(false);
    if !follows {
        return Err(error(Code::Validation, format!("waitFor: the {projection} read model does not follow stream {stream_id}")));
    }
    // A client waits for stock (public) and for its own orders' streams
    // (the order's, and its saga's, payment's and shipment's, all keyed by
    // the order id). Another customer's order is waited for as if it were
    // never written (the budget, then TIMEOUT), so the answer's timing does
    // not say whether it exists.
    let caller = caller(ctx)?;
    let own_order = match caller.customer() {
        None => None,
        Some(_) if stream_id.category() == "inventory" => None,
        Some(_) => match stream_id.id().parse::<Uuid>() {
            Ok(order_id) => Some(order_id),
            Err(_) => {
                return Err(error(
                    Code::Validation,
                    format!(
                        "waitFor: a client waits for stock and for its orders' streams (<category>-<order id>@<version>), not {stream_id}"
                    ),
                ))
            }
        },
    };
    let wait = api.limits.read_your_writes_wait;
    let deadline = match ctx.data_opt::<WaitBudget>() {
        Some(budget) => *budget.0.get_or_init(|| Instant::now() + wait),
        None => Instant::now() + wait,
    };
    let watch = api.changes.watch(projection, strata_projections::sink::stream_key(stream_id.as_str()));
    loop {
        let seen = watch.seen();
        let look = orders::has_applied(&*api.read_model, projection, stream_id.as_str(), version);
        if api.changes.look(look).await.map_err(internal)? {
            // (A write applied with no order view, a parked first event,
            // ends the wait: the field then answers NOT_FOUND, as for any
            // order the caller cannot see.)
            let visible = match own_order {
                None => true,
                Some(order_id) => orders::order(&*api.read_model, order_id)
                    .await
                    .map_err(internal)?
                    .is_none_or(|view| visible_to(caller, &view.customer_id)),
            };
            if visible {
                return Ok(());
            }
        }
        let now = Instant::now();
        if now >= deadline {
            return Err(error(Code::Timeout, format!("the {projection} read model had not applied {token} after {wait:?}; try again")));
        }
        let pause = api.changes.pause(Duration::from_millis(5)).min(deadline - now);
        let _ = tokio::time::timeout(pause, watch.changed_since(seen)).await;
    }
}

#[Object]
impl Query {
    /// One order, from the read model.
    #[graphql(guard = "Needs(Permission::Read)")]
    async fn order(&self, ctx: &Context<'_>, id: ID, wait_for: Option<String>) -> async_graphql::Result<Option<Order>> {
        let order_id = order_id(&id)?;
        let api = api(ctx);
        let caller = caller(ctx)?;
        await_write(ctx, "orders", wait_for.as_deref()).await?;
        match orders::order(&*api.read_model, order_id).await.map_err(internal)? {
            Some(view) if visible_to(caller, &view.customer_id) => Ok(Some(Order(view))),
            _ => Err(error(Code::NotFound, format!("order {order_id} not found"))),
        }
    }

    /// Who the token speaks for: its role, and for a client its customer.
    #[graphql(guard = "Needs(Permission::Read)")]
    async fn me(&self, ctx: &Context<'_>) -> async_graphql::Result<Me> {
        let caller = caller(ctx)?;
        Ok(Me { role: caller.role.as_str().to_uppercase(), subject: caller.subject.clone().map(ID), expires: caller.expires })
    }

    /// Orders by customer and status, in placing order, a page at a time
    /// (a client: its own customer's only, the default).
    #[graphql(guard = "Needs(Permission::Read)", complexity = "first.unwrap_or(20).max(1) as usize * child_complexity")]
    async fn orders(
        &self,
        ctx: &Context<'_>,
        customer_id: Option<ID>,
        status: Option<OrderStatus>,
        #[graphql(desc = "Page size, 1 to 100 (default 20).")] first: Option<i32>,
        #[graphql(desc = "The `endCursor` of the previous page.")] after: Option<String>,
        wait_for: Option<String>,
    ) -> async_graphql::Result<OrderConnection> {
        let api = api(ctx);
        // A client lists its own customer's orders: by default, and only.
        let customer_id = match (caller(ctx)?.customer(), customer_id) {
            (Some(own), None) => Some(ID(own.to_owned())),
            (Some(own), Some(asked)) if asked.0 != own => {
                return Err(error(Code::Forbidden, format!("this client lists customer {own:?}'s orders only")));
            }
            (_, asked) => asked,
        };
        let first = first.unwrap_or(20);
        if first < 1 || first as usize > api.limits.max_page {
            return Err(error(Code::Validation, format!("first must be 1 to {}, got {first}", api.limits.max_page)));
        }
        let after = match after {
            Some(cursor) => Some(cursor.parse::<i64>().map_err(|_| error(Code::Validation, format!("after: {cursor:?} is not a cursor")))?),
            None => None,
        };
        await_write(ctx, "orders", wait_for.as_deref()).await?;
        let query = OrdersQuery { customer_id: customer_id.map(|id| id.0), status: status.map(Into::into), first: first as usize, after };
        let page = orders::orders(&*api.read_model, &query).await.map_err(internal)?;
        let end_cursor = page.orders.last().map(|order| order.cursor.to_string());
        Ok(OrderConnection {
            page_info: PageInfo { has_next_page: page.next.is_some(), end_cursor },
            nodes: page.orders.into_iter().map(Order).collect(),
        })
    }

    /// A SKU's stock, from the read model.
    #[graphql(guard = "Needs(Permission::Read)")]
    async fn stock(&self, ctx: &Context<'_>, sku: String, wait_for: Option<String>) -> async_graphql::Result<Option<Stock>> {
        let api = api(ctx);
        // A SKU is checked like everywhere else before it builds a key.
        strata_schemas::values::Sku::parse(&sku).map_err(|e| error(Code::Validation, e.to_string()))?;
        await_write(ctx, "stock", wait_for.as_deref()).await?;
        match orders::stock(&*api.read_model, &sku).await.map_err(internal)? {
            Some(view) => Ok(Some(Stock::new(sku, view))),
            None => Err(error(Code::NotFound, format!("no stock of sku {sku:?}"))),
        }
    }

    /// Every projection: state, position, lag, rate, last error.
    #[graphql(guard = "Needs(Permission::Read)")]
    async fn projections(&self, ctx: &Context<'_>) -> async_graphql::Result<Vec<ProjectionStatus>> {
        let api = api(ctx);
        let mut all = Vec::new();
        // A projection's last error may name another customer's order.
        let client = caller(ctx)?.customer().is_some();
        for projection in orders::projections() {
            let mut status = crate::projections::status(&*api.read_model, &*api.store, projection.as_ref()).await.map_err(internal)?;
            if client {
                status.last_error = None;
            }
            all.push(status);
        }
        Ok(all)
    }

    /// Fulfilment sagas parked because an undo (or a step after the
    /// confirmation) kept failing, oldest first (auditors, operators).
    #[graphql(guard = "Needs(Permission::Audit)")]
    async fn stuck_sagas(&self, ctx: &Context<'_>) -> async_graphql::Result<Vec<StuckSaga>> {
        let api = api(ctx);
        let stuck = crate::sagas::stuck(&*api.store, &*api.checkpoints).await.map_err(internal)?;
        Ok(stuck.into_iter().map(StuckSaga::from).collect())
    }

    /// A stream's events from a version (auditors, operators).
    #[graphql(guard = "Needs(Permission::Audit)", complexity = "limit.max(1) as usize * child_complexity")]
    async fn stream_events(
        &self,
        ctx: &Context<'_>,
        stream_id: String,
        #[graphql(default = 1)] from_version: u64,
        #[graphql(default = 100)] limit: i32,
    ) -> async_graphql::Result<Vec<Event>> {
        let api = api(ctx);
        let limit = event_limit(api, limit)?;
        let stream = StreamId::parse(&stream_id).map_err(|e| error(Code::Validation, e.to_string()))?;
        if api.store.stream_head(&stream).await.map_err(internal)?.is_none() {
            return Err(error(Code::NotFound, format!("stream {stream} does not exist")));
        }
        let request = strata_store::ReadStream { from_version: from_version.max(1), ..strata_store::ReadStream::forward(limit) };
        let events = api.store.read_stream(&stream, request).await.map_err(internal)?;
        Ok(events.into_iter().map(Event::from).collect())
    }

    /// The log in position order from a position (auditors, operators).
    #[graphql(guard = "Needs(Permission::Audit)", complexity = "limit.max(1) as usize * child_complexity")]
    async fn global_events(
        &self,
        ctx: &Context<'_>,
        #[graphql(default = 1)] from_position: u64,
        #[graphql(default = 100)] limit: i32,
    ) -> async_graphql::Result<Vec<Event>> {
        let api = api(ctx);
        let limit = event_limit(api, limit)?;
        let events = api.store.read_all(ReadAll::after(Position(from_position.saturating_sub(1)), limit)).await.map_err(internal)?;
        Ok(events.into_iter().map(Event::from).collect())
    }

    /// An order replayed from its stream as of a version or a time (auditors, operators).
    #[graphql(guard = "Needs(Permission::Audit)")]
    async fn order_at(
        &self,
        ctx: &Context<'_>,
        id: ID,
        version: Option<u64>,
        as_of: Option<DateTime<Utc>>,
    ) -> async_graphql::Result<OrderSnapshot> {
        let order_id = order_id(&id)?;
        if version.is_some() && as_of.is_some() {
            return Err(error(Code::Validation, "give version or asOf, not both"));
        }
        if version == Some(0) {
            return Err(error(Code::Validation, "versions start at 1"));
        }
        let api = api(ctx);
        let stream = StreamId::new(OrderAggregate::CATEGORY, order_id).map_err(internal)?;
        let head = api.store.stream_head(&stream).await.map_err(internal)?;
        let Some(head) = head else {
            return Err(error(Code::NotFound, format!("order {order_id} not found")));
        };
        if let Some(version) = version.filter(|v| *v > head.version) {
            return Err(error(
                Code::Validation,
                format!("order {order_id} has {} events; version {version} does not exist yet", head.version),
            ));
        }
        let query = StreamQuery { at_version: version, as_of, as_stored: false };
        let events = stream_events(&*api.store, &stream, &query).await.map_err(internal)?;
        let Some(last) = events.last() else {
            return Err(error(
                Code::NotFound,
                format!("order {order_id} did not exist at {}", as_of.map(|t| t.to_rfc3339()).unwrap_or_default()),
            ));
        };
        let (version, recorded_at) = (last.stream_version, last.recorded_at);
        let mut state = OrderState::default();
        for event in &events {
            let decoded = OrderEvent::decode(&event.event_type, &event.payload).map_err(internal)?;
            state = OrderAggregate::evolve(state, &decoded);
        }
        let placed = state.placed.as_ref();
        Ok(OrderSnapshot {
            id,
            version,
            recorded_at,
            status: state.status.map(OrderStatus::from),
            customer_id: placed.map(|p| ID(p.customer_id.clone())),
            lines: placed
                .map(|p| {
                    p.lines
                        .iter()
                        .map(|line| OrderLine {
                            sku: line.sku.to_string(),
                            quantity: i64::from(line.quantity.get()),
                            unit_price_cents: line.unit_price_cents.get() as i64,
                        })
                        .collect()
                })
                .unwrap_or_default(),
            total_cents: placed.map(|p| p.total_cents.get() as i64),
            cancel_reason: state.cancel_reason.clone(),
            failed_step: state.failed_step.map(|step| step.to_string()),
            events: events.into_iter().map(Event::from).collect(),
        })
    }
}

fn event_limit(api: &Api, limit: i32) -> async_graphql::Result<usize> {
    if limit < 1 || limit as usize > api.limits.max_events {
        return Err(error(Code::Validation, format!("limit must be 1 to {}, got {limit}", api.limits.max_events)));
    }
    Ok(limit as usize)
}
