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
//! in one append: a happy instance costs three appends (started, the steps
//! up to the pivot, the rest and completion) instead of one per step. This is
//! safe because a success is reproducible: after a crash the step is sent
//! again under the same command ids and the services answer with its first
//! outcome. The pivot's success is recorded before any later command is
//! sent, so an undo knows whether steps after the pivot may have run
//! ([`crate::state::undo_scope`]). Anything else (a refusal, a retry timer, a
//! failure and every compensation) is recorded before the orchestrator acts
//! on it, because sending a refused command again may get another answer.
//!
//! # Cancellation, parking, resuming
//!
//! An event for which [`Saga::cancel_request`] names an instance (a client
//! cancelling the order) is recorded as `SagaCancelRequested` in that
//! instance, if it is running, completed or stuck going forward, and the
//! instance is driven to undo itself. A parked instance (`SagaStuck`) is not
//! driven until [`resume`] records `SagaResumed`; parked instances count as
//! in flight for the recovery scan (they hold its low-water mark), and
//! [`list_stuck`] lists them for operators.
//!
//! Replicas share one consumer group; the expected version makes concurrent
//! drivers of one instance safe (see the issue note on partitioning).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration as StdDuration;

use chrono::{DateTime, Duration, Utc};
use futures_util::StreamExt;
use strata_schemas::events::{SagaCancelRequested, SagaEvent, SagaPhase, SagaResumed, SagaStarted};
use strata_schemas::DomainEvent;
use strata_store::bus::{Delivery, Subscriber, Subscription};
use strata_store::{
    AppendError, CheckpointStore, EventMetadata, EventReader, EventStore, ExpectedVersion, NewEvent, Position, ReadAll, ReadError,
    ReadStream, RecordedEvent, StreamAppend, StreamId,
};
use tokio::sync::{watch, Notify, Semaphore};
use tracing::Instrument;
use uuid::Uuid;

use crate::saga::{Clock, Outcome, Saga, SagaConfig, Services};
use crate::state::{evolve, next, react, Next, Request, SagaState, SagaStatus};
use crate::SagaError;

fn low_water_name(category: &str) -> String {
    format!("saga-{category}-low-water")
}

/// Where a scan saw an instance, by the types of its events only.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SeenStatus {
    Running,
    Compensating,
    Terminal,
    Stuck,
}

/// What a scan saw of one instance.
#[derive(Debug, Clone)]
struct Seen {
    first: Position,
    last_at: DateTime<Utc>,
    status: SeenStatus,
    /// Undoing (a failure or a cancellation was recorded).
    undoing: bool,
    /// Its last event is `SagaResumed`: drive it now.
    resumed: bool,
    /// The last `SagaStuck` event, while parked.
    stuck: Option<StuckSaga>,
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
        for recorded in page {
            let Ok(saga_id) = recorded.stream_id.id().parse::<Uuid>() else { continue };
            let entry = seen.entry(saga_id).or_insert(Seen {
                first: recorded.position,
                last_at: recorded.recorded_at,
                status: SeenStatus::Running,
                undoing: false,
                resumed: false,
                stuck: None,
            });
            entry.last_at = recorded.recorded_at;
            entry.resumed = false;
            let event = match SagaEvent::decode(&recorded.event_type, &recorded.payload) {
                Ok(event) => event,
                Err(error) => {
                    // The schema registry checked it at append: a row that
                    // does not decode was written past it. Left as it was.
                    tracing::warn!(%saga_id, position = recorded.position.0, error = %strata_store::chain(&error), "recovery scan: an event of the saga does not decode");
                    continue;
                }
            };
            match event {
                // Recorded only in an instance that can undo itself, a
                // completed one included: in flight again.
                SagaEvent::SagaStepFailed(_) | SagaEvent::SagaCancelRequested(_) => {
                    entry.undoing = true;
                    entry.status = SeenStatus::Compensating;
                }
                SagaEvent::SagaCompleted(_) | SagaEvent::SagaAborted(_) => entry.status = SeenStatus::Terminal,
                SagaEvent::SagaStuck(stuck) => {
                    entry.status = SeenStatus::Stuck;
                    entry.stuck = Some(StuckSaga {
                        saga_id,
                        step: stuck.step,
                        phase: stuck.phase,
                        attempts: stuck.attempts,
                        reason: stuck.reason,
                        since: stuck.at,
                    });
                }
                SagaEvent::SagaResumed(_) => {
                    entry.status = if entry.undoing { SeenStatus::Compensating } else { SeenStatus::Running };
                    entry.resumed = true;
                    entry.stuck = None;
                }
                SagaEvent::SagaStarted(_) | SagaEvent::SagaStepSucceeded(_) | SagaEvent::SagaStepRetryScheduled(_) => {}
            }
        }
    }
    Ok((seen, after))
}

/// Instances of a saga category in flight, found after the orchestrator's
/// low-water checkpoint.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct InFlight {
    /// Going forward.
    pub running: u64,
    /// Undoing after a failure or a cancellation.
    pub compensating: u64,
    /// Parked until an operator resumes them.
    pub stuck: u64,
}

/// Counts the instances of `category` in flight (for metrics; moves nothing).
pub async fn count_in_flight(reader: &dyn EventReader, checkpoints: &dyn CheckpointStore, category: &str) -> Result<InFlight, ReadError> {
    let low = checkpoints.load_checkpoint(&low_water_name(category)).await?;
    let (seen, _) = scan(reader, category, low).await?;
    let mut counts = InFlight::default();
    for entry in seen.values() {
        match entry.status {
            SeenStatus::Running => counts.running += 1,
            SeenStatus::Compensating => counts.compensating += 1,
            SeenStatus::Stuck => counts.stuck += 1,
            SeenStatus::Terminal => {}
        }
    }
    Ok(counts)
}

/// A parked instance, as an operator sees it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct StuckSaga {
    /// The instance.
    pub saga_id: Uuid,
    /// The step it is parked at.
    pub step: String,
    /// Which part of the step.
    pub phase: SagaPhase,
    /// Attempts made before it was parked.
    pub attempts: u32,
    /// The last failure.
    pub reason: String,
    /// When it was parked.
    pub since: DateTime<Utc>,
}

/// Every parked instance of `category`, oldest first (parked instances hold
/// the recovery scan's low-water mark, so the scan from it sees them all).
pub async fn list_stuck(reader: &dyn EventReader, checkpoints: &dyn CheckpointStore, category: &str) -> Result<Vec<StuckSaga>, ReadError> {
    let low = checkpoints.load_checkpoint(&low_water_name(category)).await?;
    let (seen, _) = scan(reader, category, low).await?;
    let mut stuck: Vec<StuckSaga> = seen.into_values().filter(|s| s.status == SeenStatus::Stuck).filter_map(|s| s.stuck).collect();
    stuck.sort_by_key(|s| s.since);
    Ok(stuck)
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
        load::<S>(&*self.store, saga_id).await
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
            traceparent: strata_store::trace::current(),
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
    ///
    /// Driven by an event, it runs in that event's span. Driven by a timer or
    /// the recovery scan (a retry, a deadline, a restart), it runs in a
    /// `saga.drive` span, the child of the span that started the instance
    /// (the `traceparent` of its first event), so the order's trace goes on.
    pub async fn drive(&self, saga_id: Uuid) -> Result<Driven, SagaError> {
        if strata_store::trace::exporting() && strata_store::trace::current().is_none() {
            let span = tracing::info_span!("saga.drive", saga = S::CATEGORY, %saga_id);
            let started = self.store.read_stream(&Self::stream_id(saga_id), ReadStream::forward(1)).await.ok();
            let parent = started.and_then(|events| events.into_iter().next()).and_then(|first| first.metadata.traceparent);
            strata_store::trace::follow(&span, parent.as_deref());
            return self.drive_in_turn(saga_id).instrument(span).await;
        }
        self.drive_in_turn(saga_id).await
    }

    async fn drive_in_turn(&self, saga_id: Uuid) -> Result<Driven, SagaError> {
        let turn = self.turn(saga_id);
        let result = {
            let _held = turn.lock().await;
            self.drive_held(saga_id).await
        };
        self.end_turn(saga_id, turn);
        result
    }

    /// The instance's turn: one drive or cancellation at a time per process.
    fn turn(&self, saga_id: Uuid) -> Arc<tokio::sync::Mutex<()>> {
        self.turns.lock().unwrap_or_else(|p| p.into_inner()).entry(saga_id).or_default().clone()
    }

    /// Forgets the turn when no one else waits for it.
    fn end_turn(&self, saga_id: Uuid, turn: Arc<tokio::sync::Mutex<()>>) {
        let mut turns = self.turns.lock().unwrap_or_else(|p| p.into_inner());
        if Arc::strong_count(&turn) <= 2 {
            turns.remove(&saga_id);
        }
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
                    let span = tracing::info_span!(
                        "saga.step",
                        saga = S::CATEGORY,
                        %saga_id,
                        step = S::STEPS[request.step].name,
                        phase = request.phase.as_str(),
                        outcome = tracing::field::Empty,
                    );
                    let started = std::time::Instant::now();
                    let outcome = self.execute(saga_id, &request).instrument(span.clone()).await;
                    span.record("outcome", tracing::field::debug(&outcome));
                    let (step, phase) = (S::STEPS[request.step].name, request.phase.as_str());
                    metrics::histogram!("strata_saga_step_seconds", "saga" => S::CATEGORY, "step" => step, "phase" => phase)
                        .record(started.elapsed().as_secs_f64());
                    let result = match outcome {
                        Outcome::Done => "done",
                        Outcome::Refused(_) => "refused",
                        Outcome::Transient(_) => "transient",
                        Outcome::NoAnswer => "no_answer",
                    };
                    metrics::counter!("strata_saga_steps_total", "saga" => S::CATEGORY, "step" => step, "phase" => phase, "outcome" => result)
                        .increment(1);
                    if outcome != Outcome::Done {
                        tracing::debug!(%saga_id, step = S::STEPS[request.step].name, phase = request.phase.as_str(), ?outcome, "step attempt did not succeed");
                    }
                    let now = self.clock.now();
                    let causation = request.commands.first().map(|(id, _)| *id);
                    (react::<S>(&state, &request, &outcome, &self.config.saga, now), causation)
                }
            };
            // Successes are buffered up to (not including) the pivot's: see
            // "Recording" in the module docs.
            let forward_success = matches!(events.as_slice(), [SagaEvent::SagaStepSucceeded(success)]
                if !success.compensation && S::STEPS.iter().position(|step| step.name == success.step).is_some_and(|step| step < S::PIVOT));
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
        let oldest_in_flight = seen.values().filter(|s| s.status != SeenStatus::Terminal).map(|s| s.first).min();
        let low_water = oldest_in_flight.map_or(after, |first| Position(first.0.saturating_sub(1)));
        if low_water > low {
            if let Err(error) = self.checkpoints.save_checkpoint(&name, low_water).await {
                tracing::warn!(error = %strata_store::chain(&error), "could not save the saga low-water checkpoint");
            }
        }
        let stalled_before = self.clock.now() - Duration::from_std(self.config.stall_after).unwrap_or(Duration::seconds(10));
        let busy: BTreeSet<Uuid> = self.turns.lock().unwrap_or_else(|p| p.into_inner()).keys().copied().collect();
        Ok(seen
            .into_iter()
            .filter(|(id, s)| match s.status {
                SeenStatus::Terminal | SeenStatus::Stuck => false,
                SeenStatus::Running | SeenStatus::Compensating => {
                    !stalled_only || ((s.resumed || s.last_at < stalled_before) && !busy.contains(id))
                }
            })
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

    /// Records a cancellation request in an instance that can still undo
    /// itself (running, completed, or stuck going forward) and drives it;
    /// `false` if there is no such instance (not started, already undoing or
    /// aborted: nothing to do).
    pub async fn cancel(&self, saga_id: Uuid, reason: &str, causation: Option<Uuid>) -> Result<bool, SagaError> {
        let turn = self.turn(saga_id);
        let requested = {
            let _held = turn.lock().await;
            loop {
                let cached = self.cache.lock().unwrap_or_else(|p| p.into_inner()).remove(&saga_id);
                let state = match cached {
                    Some(state) => state,
                    None => match self.load(saga_id).await {
                        Ok(state) => state,
                        Err(error) => break Err(error),
                    },
                };
                let undoing = state.status == SagaStatus::Compensating || state.failed.is_some();
                if state.status == SagaStatus::New || state.status == SagaStatus::Aborted || undoing {
                    break Ok(false);
                }
                let request: SagaEvent = SagaCancelRequested { reason: reason.chars().take(400).collect(), at: self.clock.now() }.into();
                match self.append(saga_id, state.version, vec![request], causation).await {
                    Ok(()) => break Ok(true),
                    Err(SagaError::Append(AppendError::Conflict { .. })) => continue,
                    Err(error) => break Err(error),
                }
            }
        };
        self.end_turn(saga_id, turn);
        let requested = requested?;
        if requested {
            self.drive(saga_id).await?;
        }
        Ok(requested)
    }

    /// Handles one trigger delivery: start (or record a cancellation), drive,
    /// then ack (nack on error).
    ///
    /// Runs in a `saga.trigger` span, the child of the trace context the
    /// trigger travelled under, so the steps join the order's trace.
    pub async fn handle(&self, delivery: Delivery) {
        let span = tracing::info_span!(
            "saga.trigger",
            saga = S::CATEGORY,
            event_type = %delivery.event.event_type,
            stream_id = %delivery.event.stream_id,
        );
        strata_store::trace::follow(&span, delivery.traceparent.as_deref());
        let result = async {
            if let Some((saga_id, reason)) = S::cancel_request(&delivery.event) {
                return self.cancel(saga_id, &reason, Some(delivery.event.event_id)).await.map(|_| None);
            }
            match self.start(&delivery.event).await? {
                Some(saga_id) => self.drive(saga_id).await.map(Some),
                None => Ok(None),
            }
        }
        .instrument(span)
        .await;
        let acked = if result.is_ok() { "acked" } else { "nacked" };
        metrics::counter!("strata_bus_consumed_total", "group" => format!("saga-{}", S::CATEGORY), "result" => acked).increment(1);
        let settled = match result {
            Ok(_) => delivery.ack().await,
            Err(error) => {
                tracing::warn!(event_id = %delivery.event.event_id, error = %strata_store::chain(&error), "saga trigger failed, redelivering");
                delivery.nack().await
            }
        };
        if let Err(error) = settled {
            tracing::warn!(error = %strata_store::chain(&error), "settling a saga trigger failed");
        }
    }

    /// Runs until `stop`: recovers, then drives triggers from the bus (group
    /// `saga-<category>`, category `trigger_category`), timers and the
    /// periodic recovery scan, `concurrency` instances at a time. In-flight
    /// work finishes before it returns.
    pub async fn run(
        self: Arc<Self>,
        subscriber: Arc<dyn Subscriber>,
        trigger_category: &str,
        mut stop: watch::Receiver<bool>,
    ) -> Result<(), SagaError> {
        let permits = Arc::new(Semaphore::new(self.config.concurrency.max(1)));
        let spawn_drive = |orchestrator: Arc<Self>, permits: Arc<Semaphore>, saga_id: Uuid| async move {
            let permit = permits.acquire_owned().await.expect("never closed");
            tokio::spawn(async move {
                if let Err(error) = orchestrator.drive(saga_id).await {
                    tracing::warn!(%saga_id, error = %strata_store::chain(&error), "driving a saga failed (the recovery scan will retry)");
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
                        tracing::warn!(error = %strata_store::chain(&error), "saga trigger subscription failed, resubscribing");
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
                        Err(error) => tracing::warn!(error = %strata_store::chain(&error), "saga recovery scan failed"),
                    }
                }
            }
        }
        let _all = permits.acquire_many(self.config.concurrency.max(1) as u32).await;
        Ok(())
    }
}

/// Reads an instance's state from its stream.
async fn load<S: Saga>(reader: &dyn EventReader, saga_id: Uuid) -> Result<SagaState<S::Data>, SagaError> {
    let stream_id = Orchestrator::<S>::stream_id(saga_id);
    let mut state = SagaState::default();
    loop {
        let request = ReadStream { from_version: state.version + 1, ..ReadStream::forward(1_000) };
        let page = reader.read_stream(&stream_id, request).await.map_err(SagaError::Read)?;
        let len = page.len();
        for recorded in page {
            let event = SagaEvent::from_payload(&recorded.event_type, recorded.payload)
                .map_err(|source| SagaError::Undecodable { stream_id: stream_id.clone(), source })?;
            state = evolve::<S>(state, &event, recorded.stream_version);
        }
        if len < 1_000 {
            return Ok(state);
        }
    }
}

/// Records `SagaResumed` in a parked instance of `S` (an operator's decision):
/// the part it was parked at is tried again with fresh attempts by the next
/// orchestrator that scans for it. `false` if the instance is not parked.
pub async fn resume<S: Saga>(store: &dyn EventStore, saga_id: Uuid, actor: &str, now: DateTime<Utc>) -> Result<bool, SagaError> {
    let stream_id = Orchestrator::<S>::stream_id(saga_id);
    loop {
        let state = load::<S>(store, saga_id).await?;
        if state.status != SagaStatus::Stuck {
            return Ok(false);
        }
        let event: SagaEvent = SagaResumed { at: now }.into();
        let append = StreamAppend {
            stream_id: stream_id.clone(),
            expected: ExpectedVersion::Exact(state.version),
            events: vec![NewEvent {
                event_id: Uuid::new_v4(),
                event_type: event.event_type().to_owned(),
                schema_version: event.schema_version(),
                payload: event.to_payload(),
                metadata: EventMetadata { correlation_id: Some(saga_id), actor: Some(actor.to_owned()), ..EventMetadata::default() },
            }],
        };
        match store.append(vec![append]).await {
            Ok(_) => return Ok(true),
            Err(AppendError::Conflict { .. }) => continue,
            Err(error) => return Err(SagaError::Append(error)),
        }
    }
}
