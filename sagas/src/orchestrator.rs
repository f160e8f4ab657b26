//! [`Orchestrator`]: runs the instances of one [`Saga`] against the event
//! store and the services.
//!
//! # Crash-recovery contract
//!
//! - An instance's state is its stream `<category>-<sagaId>` and nothing
//!   else: every decision is appended expecting the version it was made on,
//!   so two drivers of one instance (a replica and a restarted process, a
//!   timer and a redelivery) never both record a step; the loser reloads.
//! - Commands are sent before their outcome is recorded. A crash in between
//!   sends them again with the same ids, and the services answer a command id
//!   they already applied with its first outcome, so every effect happens
//!   once.
//! - Timers are events (`SagaStepRetryScheduled`, and each step's deadline
//!   counts from the event that began it), so they survive restarts; the
//!   in-memory timer list is only a cache of them.
//! - A trigger delivery from the bus is acked once the instance is started
//!   (`SagaStarted` stored) and driven as far as it can go now. Killed before,
//!   the bus delivers it again; after, [`Orchestrator::recover`] finds the
//!   instance: it scans the saga category from a low-water checkpoint (the
//!   first event of the oldest instance in flight) at start-up, and
//!   periodically for instances that made no progress for a while (their
//!   driver, possibly another replica, died).
//!
//! # Recording
//!
//! A forward step that succeeded is recorded together with the next
//! decision that is not a forward success (a retry, a failure, completion),
//! in one append: a happy instance costs two appends (started, completed)
//! instead of one per step. This is safe because a success is reproducible:
//! after a crash the step is sent again under the same command ids and the
//! services answer with its first outcome. Anything else (a refusal, a retry
//! timer, a failure and every compensation) is recorded before the
//! orchestrator acts on it, because sending a refused command again may get
//! another answer.
//!
//! Replicas share one consumer group; the expected version makes concurrent
//! drivers of one instance safe (see the issue note on partitioning).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration as StdDuration;

use chrono::{DateTime, Duration, Utc};
use futures_util::StreamExt;
use strata_schemas::events::{SagaEvent, SagaStarted};
use strata_schemas::DomainEvent;
use strata_store::bus::{Delivery, Subscriber, Subscription};
use strata_store::{
    AppendError, CheckpointStore, EventMetadata, EventReader, EventStore, ExpectedVersion, NewEvent, Position, ReadAll,
    ReadError, ReadStream, RecordedEvent, StreamAppend, StreamId,
};
use tokio::sync::{watch, Notify, Semaphore};
use uuid::Uuid;

use crate::saga::{Clock, Outcome, Saga, SagaConfig, Services};
use crate::state::{evolve, next, react, Next, Request, SagaState, SagaStatus};
use crate::SagaError;

fn low_water_name(category: &str) -> String {
    format!("saga-{category}-low-water")
}

/// What a scan saw of one instance.
#[derive(Debug, Clone, Copy)]
struct Seen {
    first: Position,
    last_at: DateTime<Utc>,
    terminal: bool,
    compensating: bool,
}

/// Reads the events of `category` after `after`: what each instance did,
/// and the last position read.
async fn scan(reader: &dyn EventReader, category: &str, after: Position) -> Result<(BTreeMap<Uuid, Seen>, Position), ReadError> {
    let mut seen: BTreeMap<Uuid, Seen> = BTreeMap::new();
    let mut after = after;
    loop {
        let request = ReadAll { category: Some(category.to_owned()), ..ReadAll::after(after, 1_000) };
        let page = reader.read_all(request).await?;
        let Some(last) = page.last() else { break };
        after = last.position;
        for recorded in &page {
            let Ok(saga_id) = recorded.stream_id.id().parse::<Uuid>() else { continue };
            let entry = seen.entry(saga_id).or_insert(Seen { first: recorded.position, last_at: recorded.recorded_at, terminal: false, compensating: false });
            entry.last_at = recorded.recorded_at;
            entry.terminal |= matches!(recorded.event_type.as_str(), "SagaCompleted" | "SagaAborted");
            entry.compensating |= recorded.event_type == "SagaStepFailed";
        }
    }
    Ok((seen, after))
}

/// Instances of `category` in flight, `running` and `compensating`, found
/// after the orchestrator's low-water checkpoint (for metrics; moves nothing).
pub async fn count_in_flight(reader: &dyn EventReader, checkpoints: &dyn CheckpointStore, category: &str) -> Result<(u64, u64), ReadError> {
    let low = checkpoints.load_checkpoint(&low_water_name(category)).await?;
    let (seen, _) = scan(reader, category, low).await?;
    let in_flight = seen.values().filter(|s| !s.terminal);
    let (compensating, running): (Vec<&Seen>, Vec<&Seen>) = in_flight.partition(|s| s.compensating);
    Ok((running.len() as u64, compensating.len() as u64))
}

/// How the orchestrator runs.
#[derive(Debug, Clone)]
pub struct OrchestratorConfig {
    /// The saga's timing rules.
    pub saga: SagaConfig,
    /// Instances driven at once by one process.
    pub concurrency: usize,
    /// An instance in flight with no event for this long is picked up by the
    /// periodic recovery scan (its driver is presumed dead).
    pub stall_after: StdDuration,
    /// How often that scan runs.
    pub sweep_every: StdDuration,
    /// The bus redelivers a trigger not acked within this time.
    pub ack_wait: StdDuration,
    /// The actor named on every event and command.
    pub actor: String,
}

impl Default for OrchestratorConfig {
    fn default() -> Self {
        Self {
            saga: SagaConfig::default(),
            concurrency: 64,
            stall_after: StdDuration::from_secs(10),
            sweep_every: StdDuration::from_secs(5),
            ack_wait: StdDuration::from_secs(10),
            actor: "strata-saga".into(),
        }
    }
}

/// Where a drive left an instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Driven {
    /// Terminal (or not a started instance).
    Finished(SagaStatus),
    /// Waiting for a timer.
    Waiting(DateTime<Utc>),
}

/// Runs the instances of `S`.
pub struct Orchestrator<S: Saga> {
    store: Arc<dyn EventStore>,
    checkpoints: Arc<dyn CheckpointStore>,
    services: Arc<dyn Services<S::Command>>,
    clock: Arc<dyn Clock>,
    config: OrchestratorConfig,
    timers: Mutex<BTreeSet<(DateTime<Utc>, Uuid)>>,
    timers_changed: Notify,
    turns: Mutex<HashMap<Uuid, Arc<tokio::sync::Mutex<()>>>>,
    cache: Mutex<HashMap<Uuid, SagaState<S::Data>>>,
}

impl<S: Saga> Orchestrator<S> {
    /// An orchestrator over `store`, sending commands through `services`.
    pub fn new(
        store: Arc<dyn EventStore>,
        checkpoints: Arc<dyn CheckpointStore>,
        services: Arc<dyn Services<S::Command>>,
        clock: Arc<dyn Clock>,
        config: OrchestratorConfig,
    ) -> Self {
        Self {
            store,
            checkpoints,
            services,
            clock,
            config,
            timers: Mutex::default(),
            timers_changed: Notify::new(),
            turns: Mutex::default(),
            cache: Mutex::default(),
        }
    }

    /// The stream of an instance.
    pub fn stream_id(saga_id: Uuid) -> StreamId {
        StreamId::new(S::CATEGORY, saga_id).expect("a saga category and a uuid make a valid stream id")
    }

    /// The checkpoint name of the recovery scan.
    pub fn low_water_name() -> String {
        low_water_name(S::CATEGORY)
    }

    /// Reads an instance's state from its stream.
    pub async fn load(&self, saga_id: Uuid) -> Result<SagaState<S::Data>, SagaError> {
        let stream_id = Self::stream_id(saga_id);
        let mut state = SagaState::default();
        loop {
            let request = ReadStream {
                from_version: state.version + 1,
                ..ReadStream::forward(1_000)
            };
            let page = self.store.read_stream(&stream_id, request).await.map_err(SagaError::Read)?;
            let len = page.len();
            for recorded in page {
                let event = SagaEvent::from_payload(&recorded.event_type, recorded.payload).map_err(|source| SagaError::Undecodable {
                    stream_id: stream_id.clone(),
                    source,
                })?;
                state = evolve::<S>(state, &event, recorded.stream_version);
            }
            if len < 1_000 {
                return Ok(state);
            }
        }
    }

    /// Starts the instance `event` triggers, if any; `Some(id)` also when it
    /// was already started.
    pub async fn start(&self, event: &RecordedEvent) -> Result<Option<Uuid>, SagaError> {
        let Some((saga_id, data)) = S::start(event) else {
            return Ok(None);
        };
        let data = serde_json::to_value(&data).map_err(|source| SagaError::Data(source.to_string()))?;
        let started: SagaEvent = SagaStarted { saga_id, data, started_at: self.clock.now() }.into();
        match self.append(saga_id, 0, vec![started.clone()], Some(event.event_id)).await {
            Ok(()) => {
                let state = evolve::<S>(SagaState::default(), &started, 1);
                self.cache.lock().unwrap_or_else(|p| p.into_inner()).insert(saga_id, state);
                Ok(Some(saga_id))
            }
            Err(SagaError::Append(AppendError::Conflict { .. })) => Ok(Some(saga_id)),
            Err(error) => Err(error),
        }
    }

    /// Appends `events` to an instance's stream, expecting it at `version`.
    async fn append(&self, saga_id: Uuid, version: u64, events: Vec<SagaEvent>, causation: Option<Uuid>) -> Result<(), SagaError> {
        let expected = if version == 0 { ExpectedVersion::NoStream } else { ExpectedVersion::Exact(version) };
        let metadata = EventMetadata {
            correlation_id: Some(saga_id),
            causation_id: causation,
            actor: Some(self.config.actor.clone()),
            ..EventMetadata::default()
        };
        let events = events
            .iter()
            .map(|event| NewEvent {
                event_id: Uuid::new_v4(),
                event_type: event.event_type().to_owned(),
                schema_version: event.schema_version(),
                payload: event.to_payload(),
                metadata: metadata.clone(),
            })
            .collect();
        let append = StreamAppend { stream_id: Self::stream_id(saga_id), expected, events };
        self.store.append(vec![append]).await.map(|_| ()).map_err(SagaError::Append)
    }

    /// Drives an instance as far as it can go now: sends what is due,
    /// records outcomes, and stops at a timer or a terminal state.
    pub async fn drive(&self, saga_id: Uuid) -> Result<Driven, SagaError> {
        let turn = self.turns.lock().unwrap_or_else(|p| p.into_inner()).entry(saga_id).or_default().clone();
        let result = {
            let _held = turn.lock().await;
            self.drive_held(saga_id).await
        };
        let mut turns = self.turns.lock().unwrap_or_else(|p| p.into_inner());
        if Arc::strong_count(&turn) <= 2 {
            turns.remove(&saga_id);
        }
        result
    }

    async fn drive_held(&self, saga_id: Uuid) -> Result<Driven, SagaError> {
        let cached = self.cache.lock().unwrap_or_else(|p| p.into_inner()).remove(&saga_id);
        let mut state = match cached {
            Some(state) => state,
            None => self.load(saga_id).await?,
        };
        // Forward successes not yet recorded, and the version recorded so far
        // (see "Recording" in the module docs).
        let mut unrecorded: Vec<SagaEvent> = Vec::new();
        let mut recorded = state.version;
        loop {
            let now = self.clock.now();
            let (events, causation) = match next::<S>(&state, &self.config.saga, now) {
                Next::Finished if unrecorded.is_empty() => return Ok(Driven::Finished(state.status)),
                Next::WaitUntil(until) if unrecorded.is_empty() => {
                    self.schedule(until, saga_id);
                    self.cache.lock().unwrap_or_else(|p| p.into_inner()).insert(saga_id, state);
                    return Ok(Driven::Waiting(until));
                }
                Next::Finished | Next::WaitUntil(_) => (Vec::new(), None),
                Next::Record(events) => (events, None),
                Next::Send(request) => {
                    let outcome = self.execute(saga_id, &request).await;
                    if outcome != Outcome::Done {
                        tracing::debug!(%saga_id, step = S::STEPS[request.step].name, phase = request.phase.as_str(), ?outcome, "step attempt did not succeed");
                    }
                    let now = self.clock.now();
                    let causation = request.commands.first().map(|(id, _)| *id);
                    (react::<S>(&state, &request, &outcome, &self.config.saga, now), causation)
                }
            };
            let forward_success = matches!(events.as_slice(), [SagaEvent::SagaStepSucceeded(success)] if !success.compensation);
            for event in &events {
                let version = state.version + 1;
                state = evolve::<S>(state, event, version);
            }
            unrecorded.extend(events);
            if forward_success {
                continue;
            }
            match self.append(saga_id, recorded, std::mem::take(&mut unrecorded), causation).await {
                Ok(()) => recorded = state.version,
                // Another driver moved the instance: decide again on what it
                // wrote (successes not recorded here are sent again, and the
                // services answer them with their first outcome).
                Err(SagaError::Append(AppendError::Conflict { .. })) => {
                    state = self.load(saga_id).await?;
                    recorded = state.version;
                }
                Err(error) => return Err(error),
            }
        }
    }

    /// Sends a request's commands at once (they target different streams and
    /// each is idempotent); the first answer that is not `Done`, in the
    /// request's order, is the request's answer.
    async fn execute(&self, saga_id: Uuid, request: &Request<S::Command>) -> Outcome {
        let sends = request.commands.iter().map(|(command_id, command)| self.services.execute(*command_id, saga_id, command));
        let outcomes = futures_util::future::join_all(sends).await;
        outcomes.into_iter().find(|outcome| *outcome != Outcome::Done).unwrap_or(Outcome::Done)
    }

    fn schedule(&self, at: DateTime<Utc>, saga_id: Uuid) {
        self.timers.lock().unwrap_or_else(|p| p.into_inner()).insert((at, saga_id));
        self.timers_changed.notify_one();
    }

    /// The earliest timer, if any.
    pub fn next_due(&self) -> Option<DateTime<Utc>> {
        self.timers.lock().unwrap_or_else(|p| p.into_inner()).first().map(|(at, _)| *at)
    }

    /// Takes the instances whose timers are due by the clock.
    fn take_due(&self) -> Vec<Uuid> {
        let now = self.clock.now();
        let mut timers = self.timers.lock().unwrap_or_else(|p| p.into_inner());
        let mut due = BTreeSet::new();
        while let Some(&(at, saga_id)) = timers.first() {
            if at > now {
                break;
            }
            timers.pop_first();
            due.insert(saga_id);
        }
        due.into_iter().collect()
    }

    /// Drives every instance whose timer is due; returns how many.
    pub async fn fire_due(&self) -> Result<usize, SagaError> {
        let due = self.take_due();
        for saga_id in &due {
            self.drive(*saga_id).await?;
        }
        Ok(due.len())
    }

    /// Scans the instances in flight (from the low-water checkpoint) and
    /// returns those to drive: all of them when `stalled_only` is false
    /// (start-up), else those with no event for [`OrchestratorConfig::stall_after`].
    /// Moves the checkpoint to just before the oldest instance in flight.
    pub async fn scan_in_flight(&self, stalled_only: bool) -> Result<Vec<Uuid>, SagaError> {
        let name = Self::low_water_name();
        let low = self.checkpoints.load_checkpoint(&name).await.map_err(SagaError::Read)?;
        let (seen, after) = scan(&*self.store, S::CATEGORY, low).await.map_err(SagaError::Read)?;
        let oldest_in_flight = seen.values().filter(|s| !s.terminal).map(|s| s.first).min();
        let low_water = oldest_in_flight.map_or(after, |first| Position(first.0.saturating_sub(1)));
        if low_water > low {
            if let Err(error) = self.checkpoints.save_checkpoint(&name, low_water).await {
                tracing::warn!(%error, "could not save the saga low-water checkpoint");
            }
        }
        let stalled_before = self.clock.now() - Duration::from_std(self.config.stall_after).unwrap_or(Duration::seconds(10));
        let busy: BTreeSet<Uuid> = self.turns.lock().unwrap_or_else(|p| p.into_inner()).keys().copied().collect();
        Ok(seen
            .into_iter()
            .filter(|(id, s)| !s.terminal && (!stalled_only || (s.last_at < stalled_before && !busy.contains(id))))
            .map(|(id, _)| id)
            .collect())
    }

    /// Start-up recovery: drives every instance in flight; returns how many.
    pub async fn recover(&self) -> Result<usize, SagaError> {
        let in_flight = self.scan_in_flight(false).await?;
        for saga_id in &in_flight {
            self.drive(*saga_id).await?;
        }
        Ok(in_flight.len())
    }

    /// Handles one trigger delivery: start, drive, then ack (nack on error).
    pub async fn handle(&self, delivery: Delivery) {
        let result = async {
            match self.start(&delivery.event).await? {
                Some(saga_id) => self.drive(saga_id).await.map(Some),
                None => Ok(None),
            }
        }
        .await;
        let settled = match result {
            Ok(_) => delivery.ack().await,
            Err(error) => {
                tracing::warn!(event_id = %delivery.event.event_id, "saga trigger failed, redelivering: {error}");
                delivery.nack().await
            }
        };
        if let Err(error) = settled {
            tracing::warn!("settling a saga trigger failed: {error}");
        }
    }

    /// Runs until `stop`: recovers, then drives triggers from the bus (group
    /// `saga-<category>`, category `trigger_category`), timers and the
    /// periodic recovery scan, `concurrency` instances at a time. In-flight
    /// work finishes before it returns.
    pub async fn run(self: Arc<Self>, subscriber: Arc<dyn Subscriber>, trigger_category: &str, mut stop: watch::Receiver<bool>) -> Result<(), SagaError> {
        let permits = Arc::new(Semaphore::new(self.config.concurrency.max(1)));
        let spawn_drive = |orchestrator: Arc<Self>, permits: Arc<Semaphore>, saga_id: Uuid| async move {
            let permit = permits.acquire_owned().await.expect("never closed");
            tokio::spawn(async move {
                if let Err(error) = orchestrator.drive(saga_id).await {
                    tracing::warn!(%saga_id, "driving a saga failed (the recovery scan will retry): {error}");
                }
                drop(permit);
            });
        };
        for saga_id in self.scan_in_flight(false).await? {
            spawn_drive(self.clone(), permits.clone(), saga_id).await;
        }
        let subscription = Subscription {
            category: Some(trigger_category.to_owned()),
            ack_wait: self.config.ack_wait,
            ..Subscription::group(format!("saga-{}", S::CATEGORY))
        };
        let mut deliveries = subscriber.subscribe(subscription.clone()).await.map_err(SagaError::Bus)?;
        let mut sweep = tokio::time::interval(self.config.sweep_every);
        sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        sweep.tick().await;
        let stopped = async move {
            let _ = stop.wait_for(|stop| *stop).await;
        };
        tokio::pin!(stopped);
        loop {
            let wait = self.next_due().map(|due| (due - self.clock.now()).to_std().unwrap_or_default());
            tokio::select! {
                biased;
                () = &mut stopped => break,
                _ = async { tokio::time::sleep(wait.unwrap_or_default()).await }, if wait.is_some() => {
                    for saga_id in self.take_due() {
                        spawn_drive(self.clone(), permits.clone(), saga_id).await;
                    }
                }
                _ = self.timers_changed.notified() => {}
                delivery = deliveries.next() => match delivery {
                    Some(Ok(delivery)) => {
                        let permit = permits.clone().acquire_owned().await.expect("never closed");
                        let orchestrator = self.clone();
                        tokio::spawn(async move {
                            orchestrator.handle(delivery).await;
                            drop(permit);
                        });
                    }
                    Some(Err(error)) => {
                        tracing::warn!("saga trigger subscription failed, resubscribing: {error}");
                        tokio::time::sleep(StdDuration::from_millis(500)).await;
                        deliveries = subscriber.subscribe(subscription.clone()).await.map_err(SagaError::Bus)?;
                    }
                    None => {
                        deliveries = subscriber.subscribe(subscription.clone()).await.map_err(SagaError::Bus)?;
                    }
                },
                _ = sweep.tick() => {
                    match self.scan_in_flight(true).await {
                        Ok(stalled) => {
                            if !stalled.is_empty() {
                                tracing::info!(count = stalled.len(), "picking up stalled sagas");
                            }
                            for saga_id in stalled {
                                spawn_drive(self.clone(), permits.clone(), saga_id).await;
                            }
                        }
                        Err(error) => tracing::warn!("saga recovery scan failed: {error}"),
                    }
                }
            }
        }
        let _all = permits.acquire_many(self.config.concurrency.max(1) as u32).await;
        Ok(())
    }
}
