//! A fulfilment world on the in-memory log: the services, an orchestrator on
//! a manual clock, fault injection around the services, and helpers that
//! place orders and drive sagas to the end without sleeping.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use chrono::{DateTime, Duration, Utc};
use strata_commands::inventory::Inventory;
use strata_commands::orders::{Order, OrderState};
use strata_commands::{CommandHandler, Envelope, HandlerConfig};
use strata_sagas::fulfilment::scenario::{self, Expected, ScenarioConfig};
use strata_sagas::fulfilment::{audit, AuditConfig, AuditReport, Fulfilment, FulfilmentCommand, FulfilmentServices};
use strata_sagas::{command_id, Driven, ManualClock, Orchestrator, OrchestratorConfig, Outcome, Phase, Saga, SagaConfig, Services};
use strata_schemas::catalog;
use strata_store::{EventReader, EventStore, MemoryEventStore, ReadStream, RecordedEvent, StreamId};
use uuid::Uuid;

pub fn t0() -> DateTime<Utc> {
    DateTime::from_timestamp(1_800_000_000, 0).unwrap()
}

/// A fault injected around the services.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// The action of this step is refused.
    Refuse(&'static str),
    /// Every command is applied, then its reply is lost (a transient error
    /// is returned), so the saga sends it again.
    LoseReplies,
    /// Every command is sent twice in a row; the second answer is returned.
    Repeat,
}

/// Services with faults, recognising each command by its deterministic id.
pub struct FaultyServices {
    inner: FulfilmentServices,
    faults: Vec<Fault>,
    parts: HashMap<Uuid, (&'static str, Phase)>,
    lost: Mutex<HashMap<Uuid, usize>>,
    /// Commands executed (each call to the inner services).
    pub calls: AtomicUsize,
    /// After this many calls, every call hangs forever (a crash stand-in).
    pub hang_after: Option<usize>,
}

impl FaultyServices {
    pub fn new(inner: FulfilmentServices, saga_ids: &[Uuid], faults: Vec<Fault>) -> Self {
        let mut parts = HashMap::new();
        for saga_id in saga_ids {
            for step in Fulfilment::STEPS {
                for phase in [Phase::Action, Phase::Compensation, Phase::Abort] {
                    for index in 0..4 {
                        parts.insert(command_id(*saga_id, step.name, phase, index), (step.name, phase));
                    }
                }
            }
        }
        Self { inner, faults, parts, lost: Mutex::default(), calls: AtomicUsize::new(0), hang_after: None }
    }

    async fn call(&self, command_id: Uuid, correlation_id: Uuid, command: &FulfilmentCommand) -> Outcome {
        let calls = self.calls.fetch_add(1, Ordering::SeqCst) + 1;
        if self.hang_after.is_some_and(|after| calls > after) {
            std::future::pending::<()>().await;
        }
        self.inner.execute(command_id, correlation_id, command).await
    }
}

#[async_trait]
impl Services<FulfilmentCommand> for FaultyServices {
    async fn execute(&self, command_id: Uuid, correlation_id: Uuid, command: &FulfilmentCommand) -> Outcome {
        let part = self.parts.get(&command_id).copied();
        for fault in &self.faults {
            if let (Fault::Refuse(step), Some((name, Phase::Action))) = (fault, part) {
                if *step == name {
                    return Outcome::Refused("injected refusal".into());
                }
            }
        }
        let mut outcome = self.call(command_id, correlation_id, command).await;
        if self.faults.contains(&Fault::Repeat) {
            let again = self.call(command_id, correlation_id, command).await;
            assert!(outcome != Outcome::Done || again == Outcome::Done, "a repeated command {part:?} answered {again:?} after Done");
            outcome = again;
        }
        if self.faults.contains(&Fault::LoseReplies) {
            let mut lost = self.lost.lock().unwrap();
            let count = lost.entry(command_id).or_default();
            if *count == 0 {
                *count += 1;
                return Outcome::Transient("reply lost (injected)".into());
            }
        }
        outcome
    }
}

/// A log with stock, services, a manual clock.
pub struct World {
    pub store: Arc<MemoryEventStore>,
    pub clock: Arc<ManualClock>,
    pub orders: CommandHandler<Order>,
    pub config: SagaConfig,
}

impl World {
    pub async fn new(orders: usize) -> Self {
        let store = Arc::new(MemoryEventStore::new(Arc::new(catalog::registry().unwrap())));
        let inventory: CommandHandler<Inventory> = CommandHandler::new(store.clone(), None, HandlerConfig::default());
        for command in scenario::restocks(orders, t0()) {
            inventory.handle(Envelope::new(Uuid::new_v4(), command)).await.unwrap();
        }
        let orders = CommandHandler::new(store.clone(), None, HandlerConfig::default());
        Self { store, clock: Arc::new(ManualClock::new(t0())), orders, config: SagaConfig::default() }
    }

    pub fn services(&self) -> FulfilmentServices {
        FulfilmentServices::new(self.store.clone(), None, HandlerConfig::default(), "saga-test")
    }

    pub fn orchestrator(&self, services: Arc<dyn Services<FulfilmentCommand>>) -> Orchestrator<Fulfilment> {
        let config = OrchestratorConfig { saga: self.config.clone(), ..OrchestratorConfig::default() };
        Orchestrator::new(self.store.clone(), self.store.clone(), services, self.clock.clone(), config)
    }

    /// Places scenario order `index`; returns its OrderPlaced event and expected end.
    pub async fn place(&self, index: usize, failures: bool) -> (RecordedEvent, Expected) {
        let (place, expected) = scenario::order(&ScenarioConfig { seed: 7, failures }, index, t0());
        let order_id = place.order_id;
        self.orders.handle(Envelope::new(Uuid::new_v4(), strata_commands::orders::OrderCommand::Place(place))).await.unwrap();
        let stream = StreamId::new("order", order_id).unwrap();
        let events = self.store.read_stream(&stream, ReadStream::forward(10)).await.unwrap();
        (events[0].clone(), expected)
    }

    pub async fn order(&self, order_id: Uuid) -> OrderState {
        self.orders.load(&order_id.to_string()).await.unwrap().state
    }

    /// Moves the clock to each timer and fires it until no saga waits.
    pub async fn run_timers(&self, orchestrator: &Orchestrator<Fulfilment>) {
        for _ in 0..10_000 {
            let Some(due) = orchestrator.next_due() else { return };
            let now = strata_sagas::Clock::now(&*self.clock);
            if due > now {
                self.clock.advance(due - now);
            }
            orchestrator.fire_due().await.unwrap();
        }
        panic!("timers never ran out");
    }

    pub async fn audit(&self) -> AuditReport {
        let config = AuditConfig { now: strata_sagas::Clock::now(&*self.clock), saga: self.config.clone(), grace: Duration::seconds(30) };
        audit(self.store.clone() as Arc<dyn EventReader>, &config).await.unwrap()
    }
}

/// Starts and drives one saga from its trigger.
pub async fn start_and_drive(orchestrator: &Orchestrator<Fulfilment>, trigger: &RecordedEvent) -> Driven {
    let saga_id = orchestrator.start(trigger).await.unwrap().expect("OrderPlaced starts a saga");
    orchestrator.drive(saga_id).await.unwrap()
}

pub fn assert_clean(report: &AuditReport) {
    assert!(report.violations.is_empty(), "invariants broken: {:#?}", report.violations);
}

#[allow(dead_code)]
pub fn store_of(world: &World) -> Arc<dyn EventStore> {
    world.store.clone()
}

/// What a [`HookedServices`] hook does with one command.
pub enum Intercept {
    /// Send it to the real services.
    Pass,
    /// Do not send it; answer this.
    Answer(Outcome),
    /// Keep it (to deliver late with [`HookedServices::deliver_held`]) and
    /// answer this.
    Hold(Outcome),
}

type Hook = Box<dyn Fn(&'static str, Phase, &FulfilmentCommand) -> Intercept + Send + Sync>;

/// Services whose commands a test intercepts by step and phase.
pub struct HookedServices {
    inner: FulfilmentServices,
    parts: HashMap<Uuid, (&'static str, Phase)>,
    hook: Mutex<Hook>,
    held: Mutex<Vec<(Uuid, Uuid, FulfilmentCommand)>>,
}

impl HookedServices {
    pub fn new(
        inner: FulfilmentServices,
        saga_ids: &[Uuid],
        hook: impl Fn(&'static str, Phase, &FulfilmentCommand) -> Intercept + Send + Sync + 'static,
    ) -> Self {
        let mut parts = HashMap::new();
        for saga_id in saga_ids {
            for step in Fulfilment::STEPS {
                for phase in [Phase::Action, Phase::Compensation, Phase::Abort] {
                    for index in 0..8 {
                        parts.insert(command_id(*saga_id, step.name, phase, index), (step.name, phase));
                    }
                }
            }
        }
        Self { inner, parts, hook: Mutex::new(Box::new(hook)), held: Mutex::default() }
    }

    /// Replaces the hook.
    pub fn set_hook(&self, hook: impl Fn(&'static str, Phase, &FulfilmentCommand) -> Intercept + Send + Sync + 'static) {
        *self.hook.lock().unwrap() = Box::new(hook);
    }

    /// Delivers every held command to the real services now; their outcomes.
    pub async fn deliver_held(&self) -> Vec<Outcome> {
        let held = std::mem::take(&mut *self.held.lock().unwrap());
        let mut outcomes = Vec::new();
        for (command_id, correlation_id, command) in held {
            outcomes.push(self.inner.execute(command_id, correlation_id, &command).await);
        }
        outcomes
    }
}

#[async_trait]
impl Services<FulfilmentCommand> for HookedServices {
    async fn execute(&self, command_id: Uuid, correlation_id: Uuid, command: &FulfilmentCommand) -> Outcome {
        let intercept = match self.parts.get(&command_id) {
            Some((step, phase)) => (self.hook.lock().unwrap())(step, *phase, command),
            None => Intercept::Pass,
        };
        match intercept {
            Intercept::Pass => self.inner.execute(command_id, correlation_id, command).await,
            Intercept::Answer(outcome) => outcome,
            Intercept::Hold(outcome) => {
                self.held.lock().unwrap().push((command_id, correlation_id, command.clone()));
                outcome
            }
        }
    }
}

impl World {
    /// Cancels an order as its customer would, and hands the cancellation to
    /// the orchestrator as the bus would.
    pub async fn customer_cancels(
        &self,
        orchestrator: &Orchestrator<Fulfilment>,
        order_id: Uuid,
    ) -> Result<(), strata_commands::CommandError<strata_commands::orders::OrderError>> {
        let command = strata_commands::orders::OrderCommand::Cancel {
            order_id,
            reason: "changed my mind".into(),
            failed_step: None,
            at: strata_sagas::Clock::now(&*self.clock),
        };
        self.orders.handle(Envelope::new(Uuid::new_v4(), command)).await?;
        let stream = StreamId::new("order", order_id).unwrap();
        let events = self.store.read_stream(&stream, ReadStream::backward(1)).await.unwrap();
        let (saga_id, reason) = <Fulfilment as Saga>::cancel_request(&events[0]).expect("an OrderCancelled asks to cancel");
        orchestrator.cancel(saga_id, &reason, Some(events[0].event_id)).await.unwrap();
        Ok(())
    }

    /// The folded state of one aggregate.
    pub async fn state<A: strata_commands::Aggregate>(&self, id: &str) -> A::State {
        let handler: CommandHandler<A> = CommandHandler::new(self.store.clone(), None, HandlerConfig::default());
        handler.load(id).await.unwrap().state
    }
}
