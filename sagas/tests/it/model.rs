//! Model-based test of the order lifecycle: generated sequences of client
//! actions (orders with stocked, unstocked and unknown SKUs, cancellations
//! at any moment, restocks, redelivered triggers), service behaviours (lost
//! replies, commands held back and delivered late) and faults (the
//! orchestrator killed between any two commands, the clock jumping past
//! deadlines), run against the real command handlers and orchestrator on
//! the memory log. After each sequence settles (held commands delivered,
//! unacknowledged triggers redelivered, the faults over, timers fired, a new
//! orchestrator recovering), every order is terminal and matches its saga, and
//! `strata audit invariants` finds nothing.
//!
//! 500 cases by default; `STRATA_MODEL_CASES=10000 cargo test -p
//! strata-sagas --test it model` for more, `STRATA_MODEL_SEED=<hex>` to
//! replay a printed seed.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use chrono::Duration;
use proptest::prelude::*;
use proptest::test_runner::{Config, RngAlgorithm, TestCaseError, TestRng, TestRunner};
use strata_commands::inventory::{Inventory, InventoryCommand};
use strata_commands::orders::{AddressInput, LineInput, OrderCommand, OrderStatus, PlaceOrder};
use strata_commands::{CommandHandler, Envelope, HandlerConfig};
use strata_sagas::fulfilment::{Fulfilment, FulfilmentCommand, FulfilmentServices};
use strata_sagas::state::SagaStatus;
use strata_sagas::{Clock, ManualClock, Orchestrator, OrchestratorConfig, Outcome, Saga, SagaConfig, Services};
use strata_schemas::values::Sku;
use strata_store::{EventReader, MemoryEventStore, ReadStream, RecordedEvent, StreamId};
use tokio::sync::Notify;
use uuid::Uuid;

use crate::support::t0;

/// SKUs of the model: two that may be restocked, one never.
const SKUS: [&str; 3] = ["SKU-A", "SKU-B", "SKU-NEVER"];

#[derive(Debug, Clone)]
enum Action {
    /// A customer places an order (lines: SKU index and quantity).
    Place { lines: Vec<(usize, i64)>, method: usize, undeliverable: bool },
    /// The customer of order `n` (modulo the orders placed) cancels it.
    Cancel(usize),
    /// Units of a SKU arrive.
    Restock(usize, i64),
    /// The bus delivers order `n`'s `OrderPlaced` again.
    Redeliver(usize),
    /// The clock jumps, and due timers fire.
    Advance(i64),
    /// The orchestrator dies after this many more service calls.
    CrashAfter(usize),
    /// Commands held back by the network arrive now.
    DeliverHeld,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Behaviour {
    Answer,
    LoseReply,
    Hold,
}

fn action() -> impl Strategy<Value = Action> {
    prop_oneof![
        4 => (prop::collection::vec((0..3usize, 1..4i64), 1..3), 0..4usize, prop::bool::weighted(0.1))
            .prop_map(|(lines, method, undeliverable)| Action::Place { lines, method, undeliverable }),
        2 => (0..8usize).prop_map(Action::Cancel),
        2 => (0..2usize, 1..6i64).prop_map(|(sku, quantity)| Action::Restock(sku, quantity)),
        1 => (0..8usize).prop_map(Action::Redeliver),
        2 => (1..8_000i64).prop_map(Action::Advance),
        1 => (0..12usize).prop_map(Action::CrashAfter),
        1 => Just(Action::DeliverHeld),
    ]
}

fn behaviour() -> impl Strategy<Value = Behaviour> {
    prop_oneof![8 => Just(Behaviour::Answer), 1 => Just(Behaviour::LoseReply), 1 => Just(Behaviour::Hold)]
}

/// The services as the network and a dying orchestrator see them.
struct ModelServices {
    inner: FulfilmentServices,
    behaviours: Vec<Behaviour>,
    calls: AtomicUsize,
    held: Mutex<Vec<(Uuid, Uuid, FulfilmentCommand)>>,
    /// The call count at which the orchestrator "dies" (the call never returns).
    crash_at: Mutex<Option<usize>>,
    crashed: Notify,
    /// The faults are over: every command is answered.
    healed: std::sync::atomic::AtomicBool,
}

#[async_trait]
impl Services<FulfilmentCommand> for ModelServices {
    async fn execute(&self, command_id: Uuid, correlation_id: Uuid, command: &FulfilmentCommand) -> Outcome {
        let call = self.calls.fetch_add(1, Ordering::SeqCst);
        let crash = {
            let mut crash_at = self.crash_at.lock().unwrap();
            let due = crash_at.is_some_and(|at| call >= at);
            if due {
                *crash_at = None;
            }
            due
        };
        if crash {
            self.crashed.notify_one();
            std::future::pending::<()>().await;
        }
        let behaviour = if self.healed.load(Ordering::SeqCst) { Behaviour::Answer } else { self.behaviours[call % self.behaviours.len()] };
        match behaviour {
            Behaviour::Answer => self.inner.execute(command_id, correlation_id, command).await,
            Behaviour::LoseReply => {
                self.inner.execute(command_id, correlation_id, command).await;
                Outcome::Transient("reply lost".into())
            }
            Behaviour::Hold => {
                self.held.lock().unwrap().push((command_id, correlation_id, command.clone()));
                Outcome::NoAnswer
            }
        }
    }
}

/// A delivery the bus will make again until it is handled to the end.
#[derive(Debug, Clone)]
enum Delivery {
    Placed(Box<RecordedEvent>),
    Cancelled(Uuid, String),
}

struct Model {
    store: Arc<MemoryEventStore>,
    clock: Arc<ManualClock>,
    orders: CommandHandler<strata_commands::orders::Order>,
    inventory: CommandHandler<Inventory>,
    services: Arc<ModelServices>,
    orchestrator: Arc<Orchestrator<Fulfilment>>,
    config: SagaConfig,
    placed: Vec<(Uuid, RecordedEvent)>,
    unacked: Vec<Delivery>,
    crashes: usize,
    late: usize,
}

impl Model {
    fn new(behaviours: Vec<Behaviour>) -> Self {
        let store = Arc::new(MemoryEventStore::new(Arc::new(strata_schemas::catalog::registry().unwrap())));
        let clock = Arc::new(ManualClock::new(t0()));
        let services = Arc::new(ModelServices {
            inner: FulfilmentServices::new(store.clone(), None, HandlerConfig::default(), "model"),
            behaviours,
            calls: AtomicUsize::new(0),
            held: Mutex::default(),
            crash_at: Mutex::new(None),
            crashed: Notify::new(),
            healed: std::sync::atomic::AtomicBool::new(false),
        });
        let config = SagaConfig { park_after: Duration::seconds(30), ..SagaConfig::default() };
        let orchestrator = Arc::new(Self::orchestrator(&store, &clock, &services, &config));
        // SKU-A starts with some stock; SKU-B only gets what the actions
        // restock; SKU-NEVER never any.
        let inventory: CommandHandler<Inventory> = CommandHandler::new(store.clone(), None, HandlerConfig::default());
        let restock = InventoryCommand::Restock { sku: Sku::parse(SKUS[0]).unwrap(), quantity: 12, unit_price_cents: Some(250), at: t0() };
        futures_util::FutureExt::now_or_never(inventory.handle(Envelope::new(Uuid::new_v4(), restock)))
            .expect("the memory log answers at once")
            .unwrap();
        Self {
            orders: CommandHandler::new(store.clone(), None, HandlerConfig::default()),
            inventory: CommandHandler::new(store.clone(), None, HandlerConfig::default()),
            store,
            clock,
            services,
            orchestrator,
            config,
            placed: Vec::new(),
            unacked: Vec::new(),
            crashes: 0,
            late: 0,
        }
    }

    fn orchestrator(
        store: &Arc<MemoryEventStore>,
        clock: &Arc<ManualClock>,
        services: &Arc<ModelServices>,
        config: &SagaConfig,
    ) -> Orchestrator<Fulfilment> {
        let config = OrchestratorConfig { saga: config.clone(), ..OrchestratorConfig::default() };
        Orchestrator::new(store.clone(), store.clone(), services.clone(), clock.clone(), config)
    }

    /// A new orchestrator (the old one's caches and timers are gone) that
    /// recovers what is in flight; `false` if it died again meanwhile.
    async fn restart(&mut self) -> bool {
        self.crashes += 1;
        self.orchestrator = Arc::new(Self::orchestrator(&self.store, &self.clock, &self.services, &self.config));
        let orchestrator = self.orchestrator.clone();
        self.crashable(async move { orchestrator.recover().await.map(|_| ()).map_err(|e| e.to_string()) }).await
    }

    /// Runs orchestrator work unless it "dies" first; `false` if it died.
    async fn crashable(&self, work: impl std::future::Future<Output = Result<(), String>>) -> bool {
        tokio::select! {
            result = work => {
                result.expect("orchestrator work");
                true
            }
            () = self.services.crashed.notified() => false,
        }
    }

    /// Hands a delivery to the orchestrator; unacknowledged if it died.
    async fn deliver(&mut self, delivery: Delivery) {
        let orchestrator = self.orchestrator.clone();
        let work = {
            let delivery = delivery.clone();
            async move {
                match delivery {
                    Delivery::Placed(event) => {
                        if let Some(saga_id) = orchestrator.start(&event).await.map_err(|e| e.to_string())? {
                            orchestrator.drive(saga_id).await.map_err(|e| e.to_string())?;
                        }
                    }
                    Delivery::Cancelled(saga_id, reason) => {
                        orchestrator.cancel(saga_id, &reason, None).await.map_err(|e| e.to_string())?;
                    }
                }
                Ok(())
            }
        };
        if !self.crashable(work).await {
            self.unacked.push(delivery);
            while !self.restart().await {}
        }
    }

    async fn apply(&mut self, action: &Action) {
        match action {
            Action::Place { lines, method, undeliverable } => {
                let index = self.placed.len();
                let order_id = Uuid::new_v5(&Uuid::from_u128(7), format!("model-{index}").as_bytes());
                let method =
                    ["card", "card", strata_commands::payments::METHOD_DECLINED, strata_commands::payments::METHOD_NO_ANSWER][*method];
                let place = PlaceOrder {
                    order_id,
                    customer_id: format!("customer-{}", index % 3),
                    lines: lines
                        .iter()
                        .map(|(sku, quantity)| LineInput { sku: SKUS[*sku].into(), quantity: *quantity, unit_price_cents: 250 })
                        .collect(),
                    payment_method: method.into(),
                    shipping_address: AddressInput {
                        name: "Ada".into(),
                        street: "Rue 1".into(),
                        city: "Gent".into(),
                        postal_code: "9000".into(),
                        country: if *undeliverable { "AQ" } else { "BE" }.into(),
                    },
                    at: self.clock.now(),
                };
                // Two lines of one SKU are refused by the order itself.
                if self.orders.handle(Envelope::new(Uuid::new_v4(), OrderCommand::Place(place))).await.is_err() {
                    return;
                }
                let events = self.store.read_stream(&StreamId::new("order", order_id).unwrap(), ReadStream::forward(1)).await.unwrap();
                self.placed.push((order_id, events[0].clone()));
                self.deliver(Delivery::Placed(Box::new(events[0].clone()))).await;
            }
            Action::Cancel(n) => {
                let Some((order_id, _)) = self.nth(*n) else { return };
                let command = OrderCommand::Cancel { order_id, reason: "changed my mind".into(), failed_step: None, at: self.clock.now() };
                if self.orders.handle(Envelope::new(Uuid::new_v4(), command)).await.is_ok() {
                    let events = self.store.read_stream(&StreamId::new("order", order_id).unwrap(), ReadStream::backward(1)).await.unwrap();
                    let (saga_id, reason) = Fulfilment::cancel_request(&events[0]).expect("a cancellation");
                    self.deliver(Delivery::Cancelled(saga_id, reason)).await;
                }
            }
            Action::Restock(sku, quantity) => {
                let command = InventoryCommand::Restock {
                    sku: Sku::parse(SKUS[*sku]).unwrap(),
                    quantity: *quantity,
                    unit_price_cents: Some(250),
                    at: self.clock.now(),
                };
                self.inventory.handle(Envelope::new(Uuid::new_v4(), command)).await.unwrap();
            }
            Action::Redeliver(n) => {
                if let Some((_, event)) = self.nth(*n) {
                    self.deliver(Delivery::Placed(Box::new(event))).await;
                }
            }
            Action::Advance(millis) => {
                self.clock.advance(Duration::milliseconds(*millis));
                let orchestrator = self.orchestrator.clone();
                if !self.crashable(async move { orchestrator.fire_due().await.map(|_| ()).map_err(|e| e.to_string()) }).await {
                    while !self.restart().await {}
                }
            }
            Action::CrashAfter(calls) => {
                *self.services.crash_at.lock().unwrap() = Some(self.services.calls.load(Ordering::SeqCst) + calls);
            }
            Action::DeliverHeld => self.deliver_held().await,
        }
    }

    fn nth(&self, n: usize) -> Option<(Uuid, RecordedEvent)> {
        (!self.placed.is_empty()).then(|| self.placed[n % self.placed.len()].clone())
    }

    async fn deliver_held(&mut self) {
        let held = std::mem::take(&mut *self.services.held.lock().unwrap());
        self.late += held.len();
        for (command_id, correlation_id, command) in held {
            self.services.inner.execute(command_id, correlation_id, &command).await;
        }
    }

    /// Lets everything end: late commands arrive, the bus redelivers, the
    /// clock runs to every timer, a recovering orchestrator drives what is
    /// in flight, and an operator resumes what got parked.
    async fn settle(&mut self) -> Result<(), TestCaseError> {
        // The faults end (a network that never answers settles nothing).
        *self.services.crash_at.lock().unwrap() = None;
        self.services.healed.store(true, Ordering::SeqCst);
        for _ in 0..50 {
            self.deliver_held().await;
            for delivery in std::mem::take(&mut self.unacked) {
                self.deliver(delivery).await;
            }
            while !self.restart().await {}
            while let Some(due) = self.orchestrator.next_due() {
                let now = self.clock.now();
                if due > now {
                    self.clock.advance(due - now);
                }
                self.orchestrator.fire_due().await.unwrap();
            }
            let stuck = strata_sagas::list_stuck(&*self.store, &*self.store, strata_sagas::fulfilment::CATEGORY).await.unwrap();
            for saga in &stuck {
                strata_sagas::resume::<Fulfilment>(&*self.store, saga.saga_id, "operator", self.clock.now()).await.unwrap();
            }
            let quiet = self.services.held.lock().unwrap().is_empty() && self.unacked.is_empty() && stuck.is_empty();
            if quiet && self.orchestrator.scan_in_flight(false).await.unwrap().is_empty() {
                return Ok(());
            }
        }
        Err(TestCaseError::fail("the orders never settled"))
    }

    /// Every order ended, as its saga says, and the audit finds nothing.
    async fn check(&self) -> Result<(), TestCaseError> {
        let mut statuses = HashMap::new();
        for (order_id, _) in &self.placed {
            let order = self.orders.load(&order_id.to_string()).await.unwrap().state;
            let saga = self.orchestrator.load(*order_id).await.unwrap();
            let fits = matches!(
                (saga.status, order.status),
                (SagaStatus::Completed, Some(OrderStatus::Confirmed)) | (SagaStatus::Aborted, Some(OrderStatus::Cancelled))
            );
            prop_assert!(fits, "order {order_id}: saga {:?}, order {:?} ({:?})", saga.status, order.status, saga.failed);
            let confirmed = self
                .store
                .read_stream(&StreamId::new("order", *order_id).unwrap(), ReadStream::forward(10))
                .await
                .unwrap()
                .iter()
                .any(|e| e.event_type == "OrderConfirmed");
            let end = match (saga.status, saga.cancelled) {
                (SagaStatus::Aborted, true) if confirmed => "cancelled after confirmation",
                (SagaStatus::Aborted, true) => "cancelled by the customer",
                (SagaStatus::Aborted, false) => "failed",
                _ => "completed",
            };
            *statuses.entry(end).or_insert(0) += 1;
        }
        {
            let mut tally = TALLY.lock().unwrap();
            for (end, count) in statuses {
                *tally.entry(end).or_insert(0) += count;
            }
            *tally.entry("orchestrator restarts").or_insert(0) += self.crashes;
            *tally.entry("late commands delivered").or_insert(0) += self.late;
        }
        let config =
            strata_sagas::fulfilment::AuditConfig { now: self.clock.now(), saga: self.config.clone(), grace: Duration::seconds(30) };
        let report = strata_sagas::fulfilment::audit(self.store.clone() as Arc<dyn EventReader>, &config).await.unwrap();
        prop_assert!(report.violations.is_empty(), "audit: {:#?}", report.violations);
        Ok(())
    }
}

/// What the cases did, in all (printed, so a run that exercised nothing shows).
static TALLY: Mutex<std::collections::BTreeMap<&'static str, usize>> = Mutex::new(std::collections::BTreeMap::new());

fn seed() -> [u8; 32] {
    match std::env::var("STRATA_MODEL_SEED") {
        Ok(hex) => {
            let bytes: Vec<u8> = (0..hex.len()).step_by(2).map(|i| u8::from_str_radix(&hex[i..i + 2], 16).expect("a hex seed")).collect();
            bytes.try_into().expect("a 32-byte seed")
        }
        Err(_) => rand::random(),
    }
}

#[test]
fn generated_lifecycles_always_settle_with_every_invariant_holding() {
    let cases = std::env::var("STRATA_MODEL_CASES").ok().and_then(|n| n.parse().ok()).unwrap_or(500);
    let seed = seed();
    let hex: String = seed.iter().map(|b| format!("{b:02x}")).collect();
    println!("model test: {cases} cases, STRATA_MODEL_SEED={hex}");
    let config = Config { cases, failure_persistence: None, ..Config::default() };
    let mut runner = TestRunner::new_with_rng(config, TestRng::from_seed(RngAlgorithm::ChaCha, &seed));
    let strategy = (prop::collection::vec(action(), 1..14), prop::collection::vec(behaviour(), 1..12));
    let result = runner.run(&strategy, |(actions, behaviours)| {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap();
        runtime.block_on(async {
            let mut model = Model::new(behaviours);
            for action in &actions {
                model.apply(action).await;
            }
            model.settle().await?;
            model.check().await
        })
    });
    if let Err(error) = result {
        panic!("model test failed (replay with STRATA_MODEL_SEED={hex}): {error}");
    }
    let tally = TALLY.lock().unwrap();
    println!("model test: {tally:?}");
    for end in ["completed", "failed", "cancelled by the customer", "cancelled after confirmation"] {
        assert!(tally.get(end).copied().unwrap_or(0) > 0, "no order ended {end} in {cases} cases: {tally:?}");
    }
}

/// Runs one sequence to the end and checks it.
async fn run_case(actions: &[Action], behaviours: Vec<Behaviour>) -> Result<(), TestCaseError> {
    let mut model = Model::new(behaviours);
    for action in actions {
        model.apply(action).await;
    }
    model.settle().await?;
    model.check().await
}

#[tokio::test]
async fn found_by_the_model_a_cancellation_after_completion_whose_undo_lost_a_reply_settles() {
    let actions = [Action::Place { lines: vec![(0, 1)], method: 0, undeliverable: false }, Action::Advance(60), Action::Cancel(0)];
    let behaviours = vec![
        Behaviour::LoseReply,
        Behaviour::Answer,
        Behaviour::Answer,
        Behaviour::Answer,
        Behaviour::Answer,
        Behaviour::Answer,
        Behaviour::Answer,
    ];
    run_case(&actions, behaviours).await.unwrap();
}
