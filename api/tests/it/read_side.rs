//! Done-when of the read side: commands handled on PostgreSQL reach the Redis
//! read models through JetStream, via a real `strata serve` process running
//! the relay and projector roles.

use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use strata_commands::inventory::{Inventory, InventoryCommand};
use strata_commands::orders::{AddressInput, LineInput, Order, OrderCommand, PlaceOrder};
use strata_commands::{CommandHandler, Envelope, HandlerConfig};
use strata_projections::orders::{self, OrderStatus, OrdersQuery, SagaStatus, StepStatus, StockView};
use strata_projections::{RedisSink, RedisSinkConfig};
use strata_schemas::values::{FulfilmentStep, Sku};
use strata_store::testkit::{report_unreachable, wait_until, Service};
use strata_store::{PostgresConfig, PostgresEventStore};
use uuid::Uuid;

use crate::support::TestDatabase;

fn place(order_id: Uuid, customer: &str, sku: &Sku, quantity: i64) -> Envelope<OrderCommand> {
    Envelope::new(
        Uuid::new_v4(),
        OrderCommand::Place(PlaceOrder {
            order_id,
            customer_id: customer.into(),
            lines: vec![LineInput { sku: sku.to_string(), quantity, unit_price_cents: 1250 }],
            payment_method: "card".into(),
            shipping_address: AddressInput {
                name: "Ada".into(),
                street: "Rue 1".into(),
                city: "Gent".into(),
                postal_code: "9000".into(),
                country: "BE".into(),
            },
            at: Utc::now(),
        }),
    )
}

/// PostgreSQL (a fresh database), a JetStream stream and a Redis key prefix of
/// the test's own, and `strata serve` running `roles` on them.
struct Stack {
    database: TestDatabase,
    store: Arc<PostgresEventStore>,
    sink: Arc<RedisSink>,
    nats: String,
    id: String,
    server: std::process::Child,
}

impl Stack {
    /// `None` (reported) when a service is unreachable outside CI.
    async fn start(roles: &str) -> Option<Self> {
        let nats = Service::Nats.url();
        let redis = Service::Redis.url();
        let database = TestDatabase::create().await?;
        let id = Uuid::new_v4().simple().to_string();
        let prefix = format!("test_{id}");
        let sink = match RedisSink::connect(RedisSinkConfig { key_prefix: prefix.clone(), ..RedisSinkConfig::new(redis.clone()) }).await {
            Ok(sink) => Arc::new(sink),
            Err(err) => {
                report_unreachable(Service::Redis, &redis, &err);
                return None;
            }
        };
        if let Err(err) = tokio::net::TcpStream::connect(nats.trim_start_matches("nats://")).await {
            report_unreachable(Service::Nats, &nats, &err);
            return None;
        }
        let registry = Arc::new(strata_schemas::catalog::registry().unwrap());
        let store = Arc::new(PostgresEventStore::connect(PostgresConfig::new(database.url.clone()), registry).await.unwrap());
        store.migrate().await.unwrap();
        let server = Command::new(env!("CARGO_BIN_EXE_strata"))
            .arg("serve")
            .env_remove("STRATA_LISTEN")
            .env("RUST_LOG", "warn")
            .env("STRATA_ROLES", roles)
            .env("STRATA_EVENT_STORE", &database.url)
            .env("STRATA_BUS", format!("{nats}?stream=TEST_{id}&subject_prefix=test_{id}"))
            .env("STRATA_READ_MODEL", format!("{redis}?key_prefix={prefix}"))
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        Some(Self { database, store, sink, nats, id, server })
    }

    /// Stops the server and removes what the test made.
    async fn stop(mut self) {
        self.server.kill().unwrap();
        self.server.wait().unwrap();
        let client = async_nats::connect(&self.nats).await.unwrap();
        let _ = async_nats::jetstream::new(client).delete_stream(format!("TEST_{}", self.id)).await;
        self.sink.delete_all().await.unwrap();
        self.database.drop_database().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_reach_redis_read_models_through_jetstream() {
    let Some(stack) = Stack::start("relay,projector").await else { return };
    let (store, sink, id) = (stack.store.clone(), stack.sink.clone(), stack.id.clone());

    let orders_handler: CommandHandler<Order> = CommandHandler::new(store.clone(), Some(store.clone()), HandlerConfig::default());
    let stock_handler: CommandHandler<Inventory> = CommandHandler::new(store.clone(), Some(store.clone()), HandlerConfig::default());
    let sku = Sku::parse(&format!("SKU-{}", &id[..8]).to_uppercase()).unwrap();
    let (kept, cancelled) = (Uuid::new_v4(), Uuid::new_v4());
    let customer = format!("customer-{id}");
    let restock = InventoryCommand::Restock { sku: sku.clone(), quantity: 10, unit_price_cents: Some(1250), at: Utc::now() };
    stock_handler.handle(Envelope::new(Uuid::new_v4(), restock)).await.unwrap();
    orders_handler.handle(place(kept, &customer, &sku, 2)).await.unwrap();
    let reserve = InventoryCommand::Reserve { sku: sku.clone(), order_id: kept, quantity: 2, unit_price_cents: Some(1250), at: Utc::now() };
    stock_handler.handle(Envelope::new(Uuid::new_v4(), reserve)).await.unwrap();
    let confirm = OrderCommand::Confirm { order_id: kept, at: Utc::now() };
    orders_handler.handle(Envelope::new(Uuid::new_v4(), confirm)).await.unwrap();
    orders_handler.handle(place(cancelled, &customer, &sku, 1)).await.unwrap();
    let cancel = OrderCommand::Cancel {
        order_id: cancelled,
        reason: "card declined".into(),
        failed_step: Some(FulfilmentStep::AuthorizePayment),
        at: Utc::now(),
    };
    orders_handler.handle(Envelope::new(Uuid::new_v4(), cancel)).await.unwrap();

    let views = wait_until(Duration::from_secs(30), || {
        let (sink, customer) = (sink.clone(), customer.clone());
        async move {
            let query = OrdersQuery { customer_id: Some(customer), first: 10, ..Default::default() };
            let page = orders::orders(&*sink, &query).await.map_err(|e| e.to_string())?;
            let done = page.orders.len() == 2
                && page.orders[1].status == OrderStatus::Cancelled
                && page.orders[0].status == OrderStatus::Confirmed;
            if done {
                Ok(page.orders)
            } else {
                Err(format!("{:?}", page.orders.iter().map(|o| &o.status).collect::<Vec<_>>()))
            }
        }
    })
    .await;
    assert_eq!(views[0].order_id, kept);
    assert_eq!(views[0].total_cents, 2500);
    assert_eq!(views[0].steps[0].step, "RESERVE_STOCK");
    // No saga ran here: the view says so (its steps come from the saga only).
    assert_eq!((views[0].steps[0].status, views[0].saga_status), (StepStatus::Pending, None));
    assert_eq!(views[1].cancel_reason.as_deref(), Some("card declined"));
    assert_eq!(views[1].failed_step.as_deref(), Some("AUTHORIZE_PAYMENT"));

    let stock = wait_until(Duration::from_secs(30), || {
        let (sink, sku) = (sink.clone(), sku.clone());
        async move {
            match orders::stock(&*sink, sku.as_str()).await.map_err(|e| e.to_string())? {
                Some(stock) if stock.reserved == 2 => Ok(stock),
                other => Err(format!("{other:?}")),
            }
        }
    })
    .await;
    assert_eq!(stock, StockView { on_hand: 10, reserved: 2, available: 8, unit_price_cents: Some(1250) });
    let by_status =
        orders::orders(&*sink, &OrdersQuery { customer_id: Some(customer), status: Some(OrderStatus::Cancelled), first: 10, after: None })
            .await
            .unwrap();
    assert_eq!(by_status.orders.iter().map(|o| o.order_id).collect::<Vec<_>>(), vec![cancelled]);

    stack.stop().await;
}

/// Waits until the view of `order_id` satisfies `done`.
async fn view_until(sink: Arc<RedisSink>, order_id: Uuid, what: &'static str, done: fn(&orders::OrderView) -> bool) -> orders::OrderView {
    wait_until(Duration::from_secs(60), move || {
        let sink = sink.clone();
        async move {
            match orders::order(&*sink, order_id).await.map_err(|e| e.to_string())? {
                Some(view) if done(&view) => Ok(view),
                other => Err(format!("{what}: {other:?}")),
            }
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_saga_drives_placed_orders_and_its_steps_appear_in_the_order_view() {
    // Every role but the api, in one process.
    let Some(stack) = Stack::start("relay,projector,saga,services").await else { return };
    let (store, sink, id) = (stack.store.clone(), stack.sink.clone(), stack.id.clone());

    let orders_handler: CommandHandler<Order> = CommandHandler::new(store.clone(), None, HandlerConfig::default());
    let stock_handler: CommandHandler<Inventory> = CommandHandler::new(store.clone(), None, HandlerConfig::default());
    let sku = Sku::parse(&format!("SKU-{}", &id[..8]).to_uppercase()).unwrap();
    let restock = InventoryCommand::Restock { sku: sku.clone(), quantity: 10, unit_price_cents: Some(1250), at: Utc::now() };
    stock_handler.handle(Envelope::new(Uuid::new_v4(), restock)).await.unwrap();
    let (confirmed, declined, silent) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
    orders_handler.handle(place(confirmed, "c-1", &sku, 2)).await.unwrap();
    let mut envelope = place(declined, "c-1", &sku, 1);
    let OrderCommand::Place(order) = &mut envelope.command else { unreachable!() };
    order.payment_method = strata_commands::payments::METHOD_DECLINED.into();
    orders_handler.handle(envelope).await.unwrap();
    let mut envelope = place(silent, "c-1", &sku, 1);
    let OrderCommand::Place(order) = &mut envelope.command else { unreachable!() };
    order.payment_method = strata_commands::payments::METHOD_NO_ANSWER.into();
    orders_handler.handle(envelope).await.unwrap();

    let view = view_until(sink.clone(), confirmed, "confirmed", |v| v.saga_status == Some(SagaStatus::Completed)).await;
    assert_eq!(view.status, OrderStatus::Confirmed);
    assert!(view.steps.iter().all(|s| s.status == StepStatus::Done), "{:?}", view.steps);

    let view = view_until(sink.clone(), declined, "declined", |v| {
        v.saga_status == Some(SagaStatus::Aborted) && v.status == OrderStatus::Cancelled
    })
    .await;
    assert_eq!(view.failed_step.as_deref(), Some("AUTHORIZE_PAYMENT"));
    assert_eq!(view.cancel_reason.as_deref(), Some("payment declined: card declined"));
    let steps: Vec<(&str, StepStatus)> = view.steps.iter().take(3).map(|s| (s.step.as_str(), s.status)).collect();
    assert_eq!(
        steps,
        [("RESERVE_STOCK", StepStatus::Compensated), ("AUTHORIZE_PAYMENT", StepStatus::Failed), ("CREATE_SHIPMENT", StepStatus::Cancelled)]
    );
    assert_eq!(view.steps[1].last_error.as_deref(), Some("payment declined: card declined"));

    // The payment that never answers: retried while waiting, then its deadline cancels the order.
    let view = view_until(sink.clone(), silent, "retrying", |v| v.steps[1].retries >= 2).await;
    assert_eq!(view.steps[1].last_error.as_deref(), Some("no answer"));
    let view =
        view_until(sink.clone(), silent, "deadline", |v| v.status == OrderStatus::Cancelled && v.saga_status == Some(SagaStatus::Aborted))
            .await;
    assert_eq!(view.steps[1].status, StepStatus::Failed);
    assert!(view.cancel_reason.as_deref().unwrap().starts_with("deadline passed"), "{view:?}");
    let stock = orders::stock(&*sink, sku.as_str()).await.unwrap().unwrap();
    assert_eq!(
        stock,
        StockView { on_hand: 8, reserved: 0, available: 8, unit_price_cents: Some(1250) },
        "two units shipped, the rest released"
    );

    stack.stop().await;
}
