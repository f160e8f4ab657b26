//! `strata bench e2e`: order placed → order confirmed, through the whole
//! pipeline in one process: the command handler appends `OrderPlaced` to a
//! scratch log, the relay puts it on the bus (in process, a fresh JetStream
//! stream or a fresh Kafka topic prefix), the saga orchestrator takes it from its consumer group
//! and drives reserve → authorize → ship → confirm → capture → commit
//! through the services. Orders are sent open-loop at `--rate` (each at its
//! scheduled time, whatever the backlog, so a slow pipeline shows as
//! latency rather than as a lower send rate); latency runs from the
//! scheduled send to the moment a follower of the log sees `OrderConfirmed`.
//! The clock starts after one warm-up order went all the way through.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use futures_util::StreamExt;
use serde_json::{json, Value};
use strata_commands::inventory::Inventory;
use strata_commands::orders::{Order, OrderCommand};
use strata_commands::{CommandHandler, Envelope, HandlerConfig};
use strata_sagas::fulfilment::scenario::{self, ScenarioConfig};
use strata_sagas::fulfilment::{self, Fulfilment, FulfilmentServices};
use strata_sagas::{Orchestrator, OrchestratorConfig, SystemClock};
use strata_store::bus::{Publisher, Subscriber};
use strata_store::relay::{Relay, RelayConfig};
use strata_store::{EventReader, Subscribe};
use tokio::sync::watch;
use uuid::Uuid;

use super::kit::{open_scratch, round, Latency, Report, Scratch, Summary};

/// `bench e2e`: its flags, and the event store and bus from the settings
/// (or, with `--url`, a running server instead).
#[derive(Debug, Clone, clap::Args)]
pub struct E2eBench {
    /// Where the scratch log goes (`STRATA_EVENT_STORE`; only the server or directory is used).
    #[arg(skip)]
    pub event_store_url: String,
    /// `memory`, `nats://HOST:4222` (a fresh stream is used) or
    /// `kafka://HOST:9092` / `kafka://mock` (a fresh topic prefix) (`STRATA_BUS`).
    #[arg(skip)]
    pub bus_url: String,
    /// Orders placed.
    #[arg(long, default_value_t = 2_000)]
    pub orders: usize,
    /// Orders per second offered.
    #[arg(long, default_value_t = 200.0)]
    pub rate: f64,
    /// Saga instances driven at once (in-process run only).
    #[arg(long, default_value_t = strata_sagas::OrchestratorConfig::default().concurrency)]
    pub saga_concurrency: usize,
    /// Drive this running server through GraphQL instead (mutation →
    /// order readable in the read model).
    #[arg(long)]
    pub url: Option<String>,
    /// A client token for `--url`.
    #[arg(long, env = "STRATA_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
}

/// Runs `bench e2e` (in this process, or through the server `--url`
/// names) and returns its JSON result.
pub async fn e2e(bench: &E2eBench) -> anyhow::Result<Value> {
    if let Some(url) = &bench.url {
        let token = bench.token.clone().context("--url needs --token (or STRATA_TOKEN): a client token of that server")?;
        return e2e_http(&E2eHttpBench { url: url.clone(), token, orders: bench.orders, rate: bench.rate }).await;
    }
    if bench.orders == 0 || bench.rate.is_nan() || bench.rate <= 0.0 {
        bail!("--orders and --rate must be positive");
    }
    Scratch::around(&bench.event_store_url, async |scratch| run(bench, scratch).await).await
}

async fn run(bench: &E2eBench, scratch: &Scratch) -> anyhow::Result<Value> {
    let (store, backend) = open_scratch(scratch, 16).await?;
    let bus = BenchBus::open(&bench.bus_url).await?;
    let now = chrono::Utc::now();
    let inventory: CommandHandler<Inventory> = CommandHandler::new(store.clone(), None, HandlerConfig::default());
    // One warm-up order beside the measured ones.
    let total = bench.orders + 1;
    for command in scenario::restocks(total, now) {
        inventory.handle(Envelope::new(Uuid::new_v4(), command)).await?;
    }

    // Who saw which order confirmed, and when: the follower ends once every
    // order is confirmed, and reports how many so far.
    let (stop, stopped) = watch::channel(false);
    let (progress, mut seen) = watch::channel(0_usize);
    let follower = {
        let reader = store.clone() as Arc<dyn EventReader>;
        let head = reader.head_position().await?;
        let expected = total;
        tokio::spawn(async move {
            let mut confirmed: HashMap<Uuid, Instant> = HashMap::with_capacity(expected);
            let mut events = reader.subscribe(Subscribe { category: Some("order".into()), ..Subscribe::after(head) });
            while confirmed.len() < expected {
                let Some(event) = events.next().await else { break };
                let event = event?;
                if event.event_type == "OrderConfirmed" {
                    if let Ok(order_id) = event.stream_id.id().parse() {
                        confirmed.insert(order_id, Instant::now());
                        progress.send_replace(confirmed.len());
                    }
                }
            }
            anyhow::Ok(confirmed)
        })
    };
    let relay = {
        let relay = Relay::new(
            store.clone(),
            store.clone(),
            bus.publisher.clone(),
            RelayConfig { name: "bench-e2e".into(), ..RelayConfig::default() },
        );
        let mut stopped = stopped.clone();
        tokio::spawn(async move {
            relay
                .run(async move {
                    let _ = stopped.wait_for(|s| *s).await;
                })
                .await
        })
    };
    let orchestrator = {
        let services = FulfilmentServices::new(store.clone(), Some(store.clone()), HandlerConfig::default(), "saga:fulfilment");
        let orchestrator: Arc<Orchestrator<Fulfilment>> = Arc::new(Orchestrator::new(
            store.clone(),
            store.clone(),
            Arc::new(services),
            Arc::new(SystemClock),
            OrchestratorConfig { concurrency: bench.saga_concurrency, ..OrchestratorConfig::default() },
        ));
        tokio::spawn(orchestrator.run(bus.subscriber.clone(), fulfilment::TRIGGER_CATEGORY, stopped.clone()))
    };

    let orders: CommandHandler<Order> = CommandHandler::new(store.clone(), Some(store.clone()), HandlerConfig::default());
    let config = ScenarioConfig { seed: rand::random(), failures: false };
    // Warm up: the clock starts once one order went all the way through
    // (a Kafka group's first join alone takes ~3 s).
    let (warm_up, _) = scenario::order(&config, bench.orders, chrono::Utc::now());
    orders.handle(Envelope::new(Uuid::new_v4(), OrderCommand::Place(warm_up))).await?;
    if tokio::time::timeout(Duration::from_secs(60), seen.wait_for(|done| *done >= 1)).await.is_err() {
        bail!("the warm-up order was not confirmed within a minute");
    }
    let started = Instant::now();
    let mut sent: HashMap<Uuid, Instant> = HashMap::with_capacity(bench.orders);
    let mut placing = Vec::with_capacity(bench.orders);
    for index in 0..bench.orders {
        let due = started + Duration::from_secs_f64(index as f64 / bench.rate);
        tokio::time::sleep_until(due.into()).await;
        let (place, _) = scenario::order(&config, index, chrono::Utc::now());
        sent.insert(place.order_id, due);
        let orders = orders.clone();
        placing.push(tokio::spawn(async move { orders.handle(Envelope::new(Uuid::new_v4(), OrderCommand::Place(place))).await }));
    }
    for placed in placing {
        placed.await.context("placing an order")??;
    }
    let offered_seconds = started.elapsed().as_secs_f64();
    let all_confirmed = seen.wait_for(|done| *done >= total);
    if tokio::time::timeout(Duration::from_secs(120), all_confirmed).await.is_err() {
        let done = seen.borrow().saturating_sub(1);
        bail!("only {done} of {} orders confirmed within two minutes after the last was placed", bench.orders);
    }
    let confirmed = follower.await.context("following the log")??;
    let _ = stop.send(true);
    relay.await??;
    orchestrator.await??;
    let bus_name = bus.name;
    bus.remove().await?;

    let stages = stages(&*store).await?;
    let latencies: Vec<f64> = sent
        .iter()
        .filter_map(|(order_id, sent)| confirmed.get(order_id).map(|at| at.duration_since(*sent).as_secs_f64() * 1_000.0))
        .collect();
    let last = confirmed.values().max().copied().unwrap_or(started);
    let seconds = last.duration_since(started).as_secs_f64();
    let summary = Summary::new("orders", bench.orders as u64, seconds).timed(Latency::of(latencies));
    Ok(Report::new("e2e")
        .with("backend", backend)
        .with("bus", bus_name)
        .with("orders", bench.orders)
        .with("rate", bench.rate)
        .with("saga_concurrency", bench.saga_concurrency)
        .with("offered_orders_per_s", round(bench.orders as f64 / offered_seconds, 1))
        .summary(&[summary])
        .with("stages", stages)
        .finish())
}

/// Where the time goes, from the log's own timestamps: placed → saga
/// started (relay, bus, delivery) and saga started → order confirmed (the
/// saga's steps through the services); p50 and p99 in milliseconds.
async fn stages(reader: &dyn EventReader) -> anyhow::Result<Value> {
    use strata_store::{Position, ReadAll};
    let mut placed = HashMap::new();
    let mut started = HashMap::new();
    let mut confirmed = HashMap::new();
    let mut after = Position::START;
    loop {
        let page = reader.read_all(ReadAll::after(after, 5_000)).await?;
        let Some(last) = page.last() else { break };
        after = last.position;
        for event in page {
            let table = match event.event_type.as_str() {
                "OrderPlaced" => &mut placed,
                "SagaStarted" => &mut started,
                "OrderConfirmed" => &mut confirmed,
                _ => continue,
            };
            table.insert(event.stream_id.id().to_owned(), event.recorded_at);
        }
    }
    let between = |from: &HashMap<String, chrono::DateTime<chrono::Utc>>, to: &HashMap<String, chrono::DateTime<chrono::Utc>>| {
        let ms: Vec<f64> = from
            .iter()
            .filter_map(|(id, at)| to.get(id).map(|end| (*end - *at).num_microseconds().unwrap_or(0) as f64 / 1_000.0))
            .collect();
        Latency::of(ms).map_or(Value::Null, |latency| Value::Object(latency.json()))
    };
    Ok(json!({
        "placed_to_saga_started": between(&placed, &started),
        "saga_started_to_confirmed": between(&started, &confirmed),
    }))
}

/// The bus of a run: in process, or a fresh JetStream stream removed after.
struct BenchBus {
    publisher: Arc<dyn Publisher>,
    subscriber: Arc<dyn Subscriber>,
    name: &'static str,
    #[cfg(feature = "nats")]
    jetstream: Option<strata_store::bus::JetStreamBus>,
}

impl BenchBus {
    async fn open(url: &str) -> anyhow::Result<Self> {
        if url == "memory" {
            let bus = Arc::new(strata_store::bus::MemoryBus::new());
            return Ok(Self {
                publisher: bus.clone(),
                subscriber: bus,
                name: "memory",
                #[cfg(feature = "nats")]
                jetstream: None,
            });
        }
        #[cfg(feature = "nats")]
        if url.starts_with("nats://") {
            use strata_store::bus::{JetStreamBus, JetStreamConfig};
            let id = Uuid::new_v4().simple().to_string();
            let bus = JetStreamBus::connect(JetStreamConfig {
                stream_name: format!("BENCH_E2E_{id}"),
                subject_prefix: format!("benche2e{id}"),
                ..JetStreamConfig::new(url.to_owned())
            })
            .await
            .with_context(|| format!("connecting to NATS at {url}"))?;
            let shared = Arc::new(bus.clone());
            return Ok(Self { publisher: shared.clone(), subscriber: shared, name: "nats", jetstream: Some(bus) });
        }
        #[cfg(feature = "kafka")]
        if url.starts_with("kafka://") {
            let config = strata_store::bus::KafkaConfig {
                topic_prefix: format!("benche2e{}", Uuid::new_v4().simple()),
                ..super::kafka_config(url)?
            };
            let bus =
                Arc::new(strata_store::bus::KafkaBus::connect(config).await.with_context(|| format!("connecting to Kafka at {url}"))?);
            // Topics made up front: their creation is not the pipeline's steady cost.
            for category in strata_api::workers::DOMAIN_CATEGORIES {
                bus.category_topic(category).await?;
            }
            return Ok(Self {
                publisher: bus.clone(),
                subscriber: bus,
                name: "kafka",
                #[cfg(feature = "nats")]
                jetstream: None,
            });
        }
        bail!("bench e2e needs STRATA_BUS=memory, nats://HOST:4222 or kafka://HOST:9092 (or kafka://mock) (got {url:?})")
    }

    async fn remove(self) -> anyhow::Result<()> {
        #[cfg(feature = "nats")]
        if let Some(bus) = self.jetstream {
            bus.delete().await?;
        }
        Ok(())
    }
}

/// Parameters of `bench e2e --url`: through a running server's GraphQL API.
#[derive(Debug, Clone)]
struct E2eHttpBench {
    /// The server (`http://127.0.0.1:8080`).
    url: String,
    /// An operator token (it restocks the bench's SKUs).
    token: String,
    /// Orders placed.
    orders: usize,
    /// Orders per second offered.
    rate: f64,
}

/// `bench e2e --url`: each order is a `placeOrder` mutation sent open-loop
/// at its scheduled time, followed by `order(id, waitFor: token)`; latency
/// runs from the scheduled send until the order is readable in the read
/// model (mutation → relay → bus → projection → query). The mutation's own
/// latency is reported beside it.
async fn e2e_http(bench: &E2eHttpBench) -> anyhow::Result<Value> {
    if bench.orders == 0 || bench.rate.is_nan() || bench.rate <= 0.0 {
        bail!("--orders and --rate must be positive");
    }
    let client = strata_api::client::GraphQlClient::new(&bench.url, &bench.token)?;
    for restock in scenario::restocks(bench.orders, chrono::Utc::now()) {
        client.restock(&restock, None).await.context("restocking the bench's SKUs (--token must be an operator's)")?;
    }
    let customer = client.customer().await?;
    let config = ScenarioConfig { seed: rand::random(), failures: false };
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(bench.orders);
    for index in 0..bench.orders {
        let due = started + Duration::from_secs_f64(index as f64 / bench.rate);
        tokio::time::sleep_until(due.into()).await;
        let client = client.clone();
        let (mut order, _) = scenario::order(&config, index, chrono::Utc::now());
        if let Some(customer) = &customer {
            order.customer_id = customer.clone();
        }
        let key = format!("bench-{}-{index}", config.seed);
        tasks.push(tokio::spawn(async move {
            let (order_id, token) = client.place_order(&order, &key).await?;
            let placed = due.elapsed();
            client
                .execute(
                    "query($id: ID!, $token: String) { order(id: $id, waitFor: $token) { status } }",
                    json!({ "id": order_id, "token": token }),
                )
                .await?;
            anyhow::Ok((placed, due.elapsed(), Instant::now()))
        }));
    }
    let offered_seconds = started.elapsed().as_secs_f64();
    let (mut placed, mut visible, mut last) = (Vec::new(), Vec::new(), started);
    for task in tasks {
        let (place, seen, at) = task.await.context("an order task panicked")??;
        placed.push(place.as_secs_f64() * 1e3);
        visible.push(seen.as_secs_f64() * 1e3);
        last = last.max(at);
    }
    let seconds = last.duration_since(started).as_secs_f64();
    let mutation = Latency::of(placed).map_or(Value::Null, |latency| Value::Object(latency.json()));
    let summary = Summary::new("orders", bench.orders as u64, seconds).timed(Latency::of(visible));
    Ok(Report::new("e2e")
        .with("via", "graphql")
        .with("url", bench.url.as_str())
        .with("orders", bench.orders)
        .with("rate", bench.rate)
        .with("offered_orders_per_s", round(bench.orders as f64 / offered_seconds, 1))
        .summary(&[summary])
        .with("mutation", mutation)
        .finish())
}
