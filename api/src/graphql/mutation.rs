//! Mutations: commands through the command handlers, and operators' work on
//! projections.

use std::sync::Arc;

use async_graphql::{Context, Object, ID};
use chrono::Utc;
use strata_commands::inventory::{InventoryCommand, InventoryError};
use strata_commands::orders::{AddressInput as DomainAddress, LineInput, OrderCommand, OrderError, PlaceOrder};
use strata_commands::{CommandError, Envelope};
use strata_projections::{rebuild, RebuildConfig};
use strata_schemas::values::Sku;
use strata_store::AppendError;
use uuid::Uuid;

use super::query::order_id;
use super::types::{PlaceOrderInput, PlaceOrderPayload, Written};
use super::{api, caller, error, internal, Api, Caller, Code, Needs};
use crate::auth::Permission;
use crate::projections::ProjectionStatus;

/// The root of mutations.
#[derive(Debug, Default)]
pub struct Mutation;

/// Namespace of ids derived from idempotency keys.
const IDEMPOTENCY: Uuid = Uuid::from_u128(0x5f1b_2c7e_8a43_4d0e_9b6f_2a1c_7e3d_9a10);

/// Longest idempotency key.
const MAX_KEY_LEN: usize = 128;

/// An idempotency key, checked.
fn check_key(key: &str) -> async_graphql::Result<&str> {
    if key.is_empty() || key.len() > MAX_KEY_LEN || key.chars().any(strata_schemas::values::is_forbidden_in_text) {
        return Err(error(Code::Validation, format!("idempotencyKey must have 1 to {MAX_KEY_LEN} characters and no control character")));
    }
    Ok(key)
}

/// Maps a command's failure to a coded error: the aggregate's refusal by
/// `refusal`, the rest by kind.
fn command_error<E: std::error::Error + 'static>(err: CommandError<E>, refusal: impl Fn(&E) -> Code) -> async_graphql::Error {
    match err {
        CommandError::Rejected(reason) => error(refusal(&reason), reason.to_string()),
        CommandError::Conflict { .. } | CommandError::CommandIdReused { .. } => error(Code::Conflict, err.to_string()),
        CommandError::InvalidTarget(invalid) => error(Code::Validation, invalid.to_string()),
        CommandError::Append(AppendError::InvalidEvent { source, .. }) => error(Code::Validation, format!("invalid event: {source}")),
        CommandError::Append(AppendError::Conflict { .. }) => error(Code::Conflict, err.to_string()),
        // Too large (STRATA_MAX_EVENT_BYTES), too many events: the request's fault.
        CommandError::Append(AppendError::InvalidRequest { reason }) => error(Code::Validation, reason),
        // The log is unreachable: nothing the caller did; the same request
        // (the same idempotency key) can be sent again once it is back.
        CommandError::Append(AppendError::Backend(_) | AppendError::Closed)
        | CommandError::Read(strata_store::ReadError::Backend(_) | strata_store::ReadError::Closed) => {
            tracing::warn!(error = %strata_store::chain(&err), "a command could not reach the event store");
            error(
                Code::Unavailable,
                "the event store is unavailable; send the same request again (with the same idempotency key) in a moment",
            )
        }
        other => internal(anyhow::Error::msg(strata_store::chain(&other))),
    }
}

/// Runs an operator's command on one SKU's inventory. With an idempotency
/// key, a retry (same `kind`, SKU and key) has one effect and answers the
/// first outcome.
async fn inventory_command(
    ctx: &Context<'_>,
    kind: &str,
    sku: &str,
    idempotency_key: Option<&str>,
    command: impl FnOnce(Sku) -> InventoryCommand,
) -> async_graphql::Result<Written> {
    let sku = Sku::parse(sku).map_err(|e| error(Code::Validation, e.to_string()))?;
    let command_id = match idempotency_key.map(check_key).transpose()? {
        Some(key) => Uuid::new_v5(&IDEMPOTENCY, format!("{kind}\u{0}{sku}\u{0}{key}").as_bytes()),
        None => Uuid::now_v7(),
    };
    let outcome = api(ctx)
        .inventory
        .handle(Envelope::new(command_id, command(sku)).by(actor(ctx)))
        .await
        .map_err(|err| command_error(err, inventory_refusal))?;
    Ok(Written::from(&outcome))
}

/// The order's lines, each at the price its client saw, or the catalog's
/// price now when it sent none. A SKU without a catalog price cannot be
/// priced: not for sale. (The price is checked again when the stock is
/// reserved: one that changed meanwhile cancels the order there.)
async fn priced_lines(api: &Api, lines: Vec<super::types::OrderLineInput>) -> async_graphql::Result<Vec<LineInput>> {
    let mut priced = Vec::with_capacity(lines.len());
    for line in lines {
        let unit_price_cents = match line.unit_price_cents {
            Some(shown) => i64::from(shown),
            None => {
                let sku = Sku::parse(&line.sku).map_err(|e| error(Code::Validation, e.to_string()))?;
                let loaded = api.inventory.load(sku.as_str()).await.map_err(|err| command_error(err, inventory_refusal))?;
                match loaded.state.unit_price_cents {
                    Some(cents) => cents.get() as i64,
                    None => {
                        return Err(error(
                            Code::Validation,
                            format!("no price for {sku}: it is not for sale (unitPriceCents was not sent)"),
                        ))
                    }
                }
            }
        };
        priced.push(LineInput { sku: line.sku, quantity: line.quantity.into(), unit_price_cents });
    }
    Ok(priced)
}

fn order_refusal(err: &OrderError) -> Code {
    match err {
        OrderError::NotPlaced { .. } => Code::NotFound,
        OrderError::AlreadyPlaced { .. } | OrderError::WrongStatus { .. } => Code::Conflict,
        _ => Code::Validation,
    }
}

fn inventory_refusal(err: &InventoryError) -> Code {
    match err {
        InventoryError::InvalidQuantity(_) | InventoryError::InvalidPrice(_) => Code::Validation,
        InventoryError::UnknownSku { .. } => Code::NotFound,
        _ => Code::Conflict,
    }
}

/// Who the log records as the actor: `graphql:<role>[/<subject>]`.
fn actor(ctx: &Context<'_>) -> String {
    match ctx.data_opt::<Caller>() {
        Some(Caller { role, subject: Some(subject), .. }) => format!("graphql:{role}/{subject}"),
        Some(caller) => format!("graphql:{}", caller.role),
        None => "graphql".to_owned(),
    }
}

#[Object]
impl Mutation {
    /// Places an order; its fulfilment saga starts from it.
    #[graphql(guard = "Needs(Permission::Write)")]
    async fn place_order(&self, ctx: &Context<'_>, input: PlaceOrderInput) -> async_graphql::Result<PlaceOrderPayload> {
        let api = api(ctx);
        let customer_id = input.customer_id.0;
        if let Some(customer) = caller(ctx)?.customer() {
            if customer != customer_id {
                return Err(error(Code::Forbidden, format!("this client places orders for customer {customer:?} only")));
            }
        }
        let (order_id, command_id) = match input.idempotency_key.as_deref().map(check_key).transpose()? {
            Some(key) => {
                let name = format!("{customer_id}\u{0}{key}");
                (
                    Uuid::new_v5(&IDEMPOTENCY, format!("order\u{0}{name}").as_bytes()),
                    Uuid::new_v5(&IDEMPOTENCY, format!("place\u{0}{name}").as_bytes()),
                )
            }
            None => (Uuid::now_v7(), Uuid::now_v7()),
        };
        let lines = priced_lines(api, input.lines).await?;
        let address = input.shipping_address;
        let command = OrderCommand::Place(PlaceOrder {
            order_id,
            customer_id,
            lines,
            payment_method: input.payment_method,
            shipping_address: DomainAddress {
                name: address.name,
                street: address.street,
                city: address.city,
                postal_code: address.postal_code,
                country: address.country,
            },
            at: Utc::now(),
        });
        let outcome =
            api.orders.handle(Envelope::new(command_id, command).by(actor(ctx))).await.map_err(|err| command_error(err, order_refusal))?;
        let written = Written::from(&outcome);
        if !written.replayed {
            metrics::counter!("strata_orders_placed_total").increment(1);
        }
        Ok(PlaceOrderPayload { order_id: ID(order_id.to_string()), consistency_token: written.consistency_token.clone(), written })
    }

    /// Cancels an order on the customer's request, before it ships (a
    /// shipped order is a `CONFLICT`). Its saga then undoes what was done: a
    /// pending order's reservations, authorization and booking; a confirmed
    /// order's payment refunded, shipment cancelled and stock returned. Watch
    /// `order { sagaStatus steps }` until the saga is `ABORTED`.
    #[graphql(guard = "Needs(Permission::Write)")]
    async fn cancel_order(&self, ctx: &Context<'_>, order_id: ID, reason: String) -> async_graphql::Result<Written> {
        let api = api(ctx);
        let order_id = self::order_id(&order_id)?;
        let caller = caller(ctx)?;
        if let Some(customer) = caller.customer() {
            // From the log, not the read model: a client's own order it has
            // just placed may not be projected yet.
            let state = api.orders.load(&order_id.to_string()).await.map_err(internal)?.state;
            if state.placed.as_ref().is_none_or(|placed| placed.customer_id != customer) {
                return Err(error(Code::NotFound, format!("order {order_id} does not exist")));
            }
        }
        let command = OrderCommand::Cancel { order_id, reason, failed_step: None, at: Utc::now() };
        let outcome = api
            .orders
            .handle(Envelope::new(Uuid::now_v7(), command).by(actor(ctx)))
            .await
            .map_err(|err| command_error(err, order_refusal))?;
        Ok(Written::from(&outcome))
    }

    /// Adds units of a SKU to the warehouse (operators). With an
    /// `idempotencyKey`, a retried restock (same SKU and key) adds the units
    /// once.
    #[graphql(guard = "Needs(Permission::Operate)")]
    async fn restock(
        &self,
        ctx: &Context<'_>,
        sku: String,
        quantity: i32,
        #[graphql(desc = "The SKU's catalog price from now on, if it changes (see setPrice).")] unit_price_cents: Option<i32>,
        idempotency_key: Option<String>,
    ) -> async_graphql::Result<Written> {
        let unit_price_cents = unit_price_cents.map(i64::from);
        inventory_command(ctx, "restock", &sku, idempotency_key.as_deref(), |sku| InventoryCommand::Restock {
            sku,
            quantity: quantity.into(),
            unit_price_cents,
            at: Utc::now(),
        })
        .await
    }

    /// Sets a SKU's catalog price, what one unit is charged from now on (an
    /// event in the SKU's stream: its history is kept). An order is priced
    /// when its stock is reserved: a line shown at another price is
    /// cancelled then, never charged differently.
    #[graphql(guard = "Needs(Permission::Operate)")]
    async fn set_price(
        &self,
        ctx: &Context<'_>,
        sku: String,
        unit_price_cents: i32,
        idempotency_key: Option<String>,
    ) -> async_graphql::Result<Written> {
        inventory_command(ctx, "price", &sku, idempotency_key.as_deref(), |sku| InventoryCommand::SetPrice {
            sku,
            unit_price_cents: unit_price_cents.into(),
            at: Utc::now(),
        })
        .await
    }

    /// Starts rebuilding a projection from the log beside the live one;
    /// readers switch to it when it is whole (watch `projections`).
    #[graphql(guard = "Needs(Permission::Operate)")]
    async fn rebuild_projection(&self, ctx: &Context<'_>, name: String) -> async_graphql::Result<ProjectionStatus> {
        let api = api(ctx).clone();
        let projection = find(&name)?;
        if !api.start_rebuild(&name) {
            return Err(error(Code::Conflict, format!("projection {name} is already being rebuilt")));
        }
        let before = status(&api, &name).await?;
        let worker = api.clone();
        tokio::spawn(async move {
            let result = rebuild(projection, worker.read_model.clone(), worker.store.clone(), RebuildConfig::default(), &mut |_| {}).await;
            match result {
                Ok(report) => {
                    tracing::info!(projection = %name, events = report.events, seconds = report.seconds, "rebuilt through GraphQL")
                }
                Err(error) => tracing::error!(projection = %name, error = %strata_store::chain(&error), "rebuild through GraphQL failed"),
            }
            worker.end_rebuild(&name);
        });
        Ok(before)
    }

    /// Tries a stuck saga's parked part again with fresh attempts (after the
    /// cause was fixed); the saga role picks it up within seconds. `false`
    /// if the order's saga is not stuck.
    #[graphql(guard = "Needs(Permission::Operate)")]
    async fn resume_saga(&self, ctx: &Context<'_>, order_id: ID) -> async_graphql::Result<bool> {
        let api = api(ctx);
        let order_id = self::order_id(&order_id)?;
        crate::sagas::resume(&*api.store, order_id, &actor(ctx)).await.map_err(internal)
    }

    /// Holds a projection's workers (they keep their deliveries).
    #[graphql(guard = "Needs(Permission::Operate)")]
    async fn pause_projection(&self, ctx: &Context<'_>, name: String) -> async_graphql::Result<ProjectionStatus> {
        set_paused(api(ctx), &name, true).await
    }

    /// Lets a paused projection's workers go on.
    #[graphql(guard = "Needs(Permission::Operate)")]
    async fn resume_projection(&self, ctx: &Context<'_>, name: String) -> async_graphql::Result<ProjectionStatus> {
        set_paused(api(ctx), &name, false).await
    }
}

fn find(name: &str) -> async_graphql::Result<Arc<dyn strata_projections::Projection>> {
    crate::projections::find(name).map_err(|e| error(Code::NotFound, e.to_string()))
}

async fn status(api: &Api, name: &str) -> async_graphql::Result<ProjectionStatus> {
    let projection = find(name)?;
    crate::projections::status(&*api.read_model, &*api.store, projection.as_ref()).await.map_err(internal)
}

async fn set_paused(api: &Api, name: &str, paused: bool) -> async_graphql::Result<ProjectionStatus> {
    find(name)?;
    crate::projections::set_paused(&*api.read_model, name, paused).await.map_err(internal)?;
    status(api, name).await
}

#[cfg(test)]
mod tests {
    use strata_commands::orders::OrderError;
    use strata_store::{AppendError, BackendError, ReadError};

    use super::{command_error, order_refusal, CommandError};

    fn code(err: CommandError<OrderError>) -> String {
        let error = command_error(err, order_refusal);
        error.extensions.as_ref().and_then(|e| e.get("code")).map(|code| code.to_string()).unwrap_or_default()
    }

    #[test]
    fn an_oversized_append_is_validation_and_an_unreachable_store_is_unavailable() {
        let too_big = AppendError::InvalidRequest { reason: "event … over the limit of 16384 (STRATA_MAX_EVENT_BYTES)".into() };
        assert_eq!(code(CommandError::Append(too_big)), "\"VALIDATION\"");
        let refused = || BackendError::new("connecting", "Connection refused (os error 111)");
        assert_eq!(code(CommandError::Append(AppendError::Backend(refused()))), "\"UNAVAILABLE\"");
        assert_eq!(code(CommandError::Append(AppendError::Closed)), "\"UNAVAILABLE\"");
        assert_eq!(code(CommandError::Read(ReadError::Backend(refused()))), "\"UNAVAILABLE\"");
        let corrupt = ReadError::Corrupt { position: strata_store::Position(7), reason: "bad row".into() };
        assert_eq!(code(CommandError::Read(corrupt)), "\"INTERNAL\"", "a corrupt row is ours, not the caller's");
    }
}
