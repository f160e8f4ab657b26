//! The pure state machine every saga instance runs: [`SagaState`] folded from
//! the instance's stream by [`evolve`], [`next`] (what to do now) and
//! [`react`] (which events record a command's outcome). No IO, no clock:
//! `now` comes in as an argument, so tests walk every branch over events.
//!
//! # The rules
//!
//! - Steps run in order; a step's action is one [`Request`] of commands, sent
//!   until it is `Done` (every command of a request is idempotent, so a
//!   request is always sent whole again).
//! - A transient failure schedules a retry (`SagaStepRetryScheduled`, a
//!   durable timer); no answer does too but does not count as an attempt.
//! - A failable step (up to [`Saga::PIVOT`]) fails on a refusal, on
//!   [`SagaConfig::max_attempts`] transient failures, or when its deadline
//!   (from when it began) has passed while it is waiting to retry. A step
//!   that succeeded is never failed by its deadline.
//! - After a failure, every step that may have run ([`undo_scope`]: up to
//!   the pivot, or every step once one after the pivot is recorded) and has a
//!   compensation is compensated, in reverse order, then the abort commands
//!   run. The failed step may have done part of its work; later steps may
//!   have been run by a concurrent or stale driver whose successes were not
//!   recorded. Compensating a step that never ran finds nothing to undo, and
//!   the service fences it, so a late forward command cannot apply.
//! - A cancellation request ([`Saga::cancel_request`], recorded as
//!   `SagaCancelRequested`) of a running or completed instance compensates
//!   the same way (steps after the pivot included once one is recorded); it
//!   runs no abort commands (the requester already did what it asked for).
//!   An instance already undoing or over ignores it.
//! - Compensations, steps after the pivot and the abort cannot fail: they are
//!   retried, and once a part has failed [`SagaConfig::max_attempts`] times
//!   and [`SagaConfig::park_after`] has passed since it began, the instance
//!   is parked (`SagaStuck`, status [`SagaStatus::Stuck`]) with the reason,
//!   never retried forever. An operator's `SagaResumed` tries the part again
//!   with fresh attempts.

use chrono::{DateTime, Utc};
use strata_schemas::events::{
    SagaAborted, SagaCompleted, SagaEvent, SagaPhase, SagaStepFailed, SagaStepRetryScheduled, SagaStepSucceeded, SagaStuck,
};
use uuid::Uuid;

use crate::saga::{command_id, Outcome, Phase, Saga, SagaConfig};

/// The reason recorded when a command got no answer.
pub const NO_ANSWER: &str = "no answer";

/// Where an instance is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SagaStatus {
    /// No `SagaStarted` yet.
    #[default]
    New,
    /// Moving forward.
    Running,
    /// A step failed; undoing.
    Compensating,
    /// Every step succeeded (terminal).
    Completed,
    /// Failed (or cancelled) and compensated (terminal).
    Aborted,
    /// Parked: a part that cannot fail kept failing; waits for an operator.
    Stuck,
}

impl SagaStatus {
    /// Completed or aborted.
    pub fn is_terminal(self) -> bool {
        matches!(self, SagaStatus::Completed | SagaStatus::Aborted)
    }
}

/// An instance as folded from its stream.
#[derive(Debug, Clone, PartialEq)]
pub struct SagaState<D> {
    /// The instance (nil while new).
    pub saga_id: Uuid,
    /// Its data (`None` while new, or if the stored data no longer decodes).
    pub data: Option<D>,
    /// Stream version of the last event folded (0: none).
    pub version: u64,
    /// Where it is.
    pub status: SagaStatus,
    /// Forward steps that succeeded (they succeed in order).
    pub succeeded: usize,
    /// The step that failed (or the step a cancellation found it at) and why.
    pub failed: Option<(usize, String)>,
    /// Compensating because of a cancellation request, not a failure.
    pub cancelled: bool,
    /// Why it is parked (while [`SagaStatus::Stuck`]).
    pub stuck: Option<String>,
    /// Steps compensated so far.
    pub compensated: Vec<usize>,
    /// When the current part began (a failable step's deadline counts from it).
    pub began_at: Option<DateTime<Utc>>,
    /// Failed attempts of the current part.
    pub attempts: u32,
    /// Of those, the ones that counted (not "no answer").
    pub counted_failures: u32,
    /// When the current part is due again after a failure.
    pub retry_at: Option<DateTime<Utc>>,
    /// The last failure's reason.
    pub last_error: Option<String>,
}

impl<D> Default for SagaState<D> {
    fn default() -> Self {
        Self {
            saga_id: Uuid::nil(),
            data: None,
            version: 0,
            status: SagaStatus::New,
            succeeded: 0,
            failed: None,
            cancelled: false,
            stuck: None,
            compensated: Vec::new(),
            began_at: None,
            attempts: 0,
            counted_failures: 0,
            retry_at: None,
            last_error: None,
        }
    }
}

/// Commands to send, as one unit, with their ids.
#[derive(Debug, Clone, PartialEq)]
pub struct Request<C> {
    /// Index of the step.
    pub step: usize,
    /// Action, compensation or abort.
    pub phase: Phase,
    /// 1 for the first attempt.
    pub attempt: u32,
    /// The commands, each with its deterministic id.
    pub commands: Vec<(Uuid, C)>,
}

/// What to do now for an instance.
#[derive(Debug, Clone, PartialEq)]
pub enum Next<C> {
    /// Send these commands, then record [`react`]'s events.
    Send(Request<C>),
    /// Record these events (a deadline passed).
    Record(Vec<SagaEvent>),
    /// Nothing before this time (a retry timer or the step's deadline).
    WaitUntil(DateTime<Utc>),
    /// Nothing ever again (terminal, or not started).
    Finished,
}

fn step_index<S: Saga>(name: &str) -> Option<usize> {
    S::STEPS.iter().position(|step| step.name == name)
}

/// Folds one event (at stream `version`) into the state.
pub fn evolve<S: Saga>(mut state: SagaState<S::Data>, event: &SagaEvent, version: u64) -> SagaState<S::Data> {
    state.version = version;
    let fresh_part = |state: &mut SagaState<S::Data>, at: DateTime<Utc>| {
        state.began_at = Some(at);
        state.attempts = 0;
        state.counted_failures = 0;
        state.retry_at = None;
        state.last_error = None;
    };
    match event {
        SagaEvent::SagaStarted(started) => {
            state.saga_id = started.saga_id;
            state.data = serde_json::from_value(started.data.clone()).ok();
            state.status = SagaStatus::Running;
            fresh_part(&mut state, started.started_at);
        }
        SagaEvent::SagaStepSucceeded(success) => {
            if let Some(index) = step_index::<S>(&success.step) {
                if success.compensation {
                    if !state.compensated.contains(&index) {
                        state.compensated.push(index);
                    }
                } else {
                    state.succeeded = state.succeeded.max(index + 1);
                }
            }
            fresh_part(&mut state, success.at);
        }
        SagaEvent::SagaStepRetryScheduled(retry) => {
            state.attempts = retry.attempt;
            if retry.reason != NO_ANSWER {
                state.counted_failures += 1;
            }
            state.retry_at = Some(retry.retry_at);
            state.last_error = Some(retry.reason.clone());
        }
        SagaEvent::SagaStepFailed(failure) => {
            state.status = SagaStatus::Compensating;
            state.failed = Some((step_index::<S>(&failure.step).unwrap_or(0), failure.reason.clone()));
            fresh_part(&mut state, failure.at);
        }
        SagaEvent::SagaCompleted(_) => state.status = SagaStatus::Completed,
        SagaEvent::SagaAborted(_) => state.status = SagaStatus::Aborted,
        SagaEvent::SagaCancelRequested(request) => {
            let undoing = state.status == SagaStatus::Compensating || (state.status == SagaStatus::Stuck && state.failed.is_some());
            if matches!(state.status, SagaStatus::Running | SagaStatus::Completed | SagaStatus::Stuck) && !undoing {
                // Named after the step it was at; what is undone is
                // `undo_scope`.
                let at_step = state.succeeded.min(S::STEPS.len() - 1);
                state.status = SagaStatus::Compensating;
                state.failed = Some((at_step, clip(format!("cancelled: {}", request.reason))));
                state.cancelled = true;
                state.stuck = None;
                fresh_part(&mut state, request.at);
            }
        }
        SagaEvent::SagaStuck(stuck) => {
            state.status = SagaStatus::Stuck;
            state.stuck = Some(stuck.reason.clone());
            state.retry_at = None;
        }
        SagaEvent::SagaResumed(resumed) => {
            if state.status == SagaStatus::Stuck {
                state.status = if state.failed.is_some() { SagaStatus::Compensating } else { SagaStatus::Running };
                state.stuck = None;
                fresh_part(&mut state, resumed.at);
            }
        }
    }
    state
}

/// Which part of a step a [`Phase`] is, as stored.
fn stored_phase(phase: Phase) -> SagaPhase {
    match phase {
        Phase::Action => SagaPhase::Action,
        Phase::Compensation => SagaPhase::Compensation,
        Phase::Abort => SagaPhase::Abort,
    }
}

/// The part the instance is at: a step and a phase.
fn current_part<S: Saga>(state: &SagaState<S::Data>, data: &S::Data, at: DateTime<Utc>) -> Option<(usize, Phase)> {
    match state.status {
        SagaStatus::Running if state.succeeded < S::STEPS.len() => Some((state.succeeded, Phase::Action)),
        SagaStatus::Compensating => {
            let (failed, _) = state.failed.as_ref()?;
            let pending = (0..=undo_scope::<S>(state))
                .rev()
                .find(|step| !state.compensated.contains(step) && !S::commands(data, *step, Phase::Compensation, at).is_empty());
            Some(pending.map_or((*failed, Phase::Abort), |step| (step, Phase::Compensation)))
        }
        _ => None,
    }
}

/// The last step an undoing instance compensates: every step that may have
/// run, recorded or not. Forward successes up to the pivot may be unrecorded
/// (a driver records them together, and a concurrent or stale driver may have
/// run further than the recorded state shows), but they are recorded before
/// any command after the pivot is sent (see the orchestrator's "Recording").
/// So: up to the pivot while no step after it is recorded, else every step.
/// Compensating a step that never ran finds nothing to undo and fences it
/// (its services refuse the late forward command).
pub fn undo_scope<S: Saga>(state: &SagaState<S::Data>) -> usize {
    let last = S::STEPS.len() - 1;
    let reached = if state.succeeded > S::PIVOT { last } else { S::PIVOT.min(last) };
    state.failed.as_ref().map_or(reached, |(failed, _)| reached.max(*failed))
}

fn failable<S: Saga>(step: usize, phase: Phase) -> bool {
    phase == Phase::Action && step <= S::PIVOT
}

/// What to do now.
pub fn next<S: Saga>(state: &SagaState<S::Data>, config: &SagaConfig, now: DateTime<Utc>) -> Next<S::Command> {
    let Some(data) = &state.data else {
        return Next::Finished;
    };
    let Some((step, phase)) = current_part::<S>(state, data, now) else {
        if state.status == SagaStatus::Running {
            return Next::Record(vec![SagaCompleted { at: now }.into()]);
        }
        return Next::Finished;
    };
    if let Some(retry_at) = state.retry_at {
        if failable::<S>(step, phase) {
            let deadline = state.began_at.unwrap_or(now) + config.step_deadline;
            if now >= deadline {
                let last = state.last_error.as_deref().unwrap_or(NO_ANSWER);
                let reason = format!("deadline passed after {} attempts ({last})", state.attempts);
                return Next::Record(vec![SagaStepFailed { step: S::STEPS[step].name.into(), reason: clip(reason), at: now }.into()]);
            }
            if now < retry_at {
                return Next::WaitUntil(retry_at.min(deadline));
            }
        } else if now < retry_at {
            return Next::WaitUntil(retry_at);
        }
    }
    let commands = match phase {
        // A cancellation's requester already did what it asked for.
        Phase::Abort if state.cancelled => Vec::new(),
        Phase::Abort => {
            let (failed, reason) = state.failed.as_ref().expect("compensating has a failure");
            S::abort_commands(data, *failed, reason, now)
        }
        _ => S::commands(data, step, phase, now),
    };
    let name = S::STEPS[step].name;
    if phase == Phase::Abort && commands.is_empty() {
        return Next::Record(react::<S>(
            state,
            &Request { step, phase, attempt: state.attempts + 1, commands: Vec::new() },
            &Outcome::Done,
            config,
            now,
        ));
    }
    Next::Send(Request {
        step,
        phase,
        attempt: state.attempts + 1,
        commands: commands
            .into_iter()
            .enumerate()
            .map(|(index, command)| (command_id(state.saga_id, name, phase, index), command))
            .collect(),
    })
}

/// The events that record `outcome` of `request`.
pub fn react<S: Saga>(
    state: &SagaState<S::Data>,
    request: &Request<S::Command>,
    outcome: &Outcome,
    config: &SagaConfig,
    now: DateTime<Utc>,
) -> Vec<SagaEvent> {
    let name = S::STEPS[request.step].name.to_owned();
    // Undoing (a compensation or the abort) does not touch the step's own
    // status in views.
    let compensation = request.phase != Phase::Action;
    let retry = |reason: String| -> Vec<SagaEvent> {
        let counted = reason != NO_ANSWER;
        let failures = state.counted_failures + u32::from(counted);
        if failable::<S>(request.step, request.phase) {
            if counted && failures >= config.max_attempts {
                let reason = format!("gave up after {failures} attempts: {reason}");
                return vec![SagaStepFailed { step: name.clone(), reason: clip(reason), at: now }.into()];
            }
        } else if request.attempt >= config.max_attempts && now >= state.began_at.unwrap_or(now) + config.park_after {
            let reason = format!("parked after {} attempts: {reason}", request.attempt);
            return vec![SagaStuck {
                step: name.clone(),
                phase: stored_phase(request.phase),
                attempts: request.attempt,
                reason: clip(reason),
                at: now,
            }
            .into()];
        }
        let retry_at = now + config.backoff(state.saga_id, failures.max(state.attempts + 1));
        vec![SagaStepRetryScheduled { step: name.clone(), compensation, attempt: request.attempt, reason: clip(reason), retry_at, at: now }
            .into()]
    };
    match outcome {
        Outcome::Done => match request.phase {
            Phase::Action => {
                let mut events: Vec<SagaEvent> = vec![SagaStepSucceeded { step: name.clone(), compensation, at: now }.into()];
                if request.step + 1 == S::STEPS.len() {
                    events.push(SagaCompleted { at: now }.into());
                }
                events
            }
            Phase::Compensation => vec![SagaStepSucceeded { step: name, compensation, at: now }.into()],
            Phase::Abort => {
                let reason = state.failed.as_ref().map_or_else(|| "failed".to_owned(), |(_, reason)| reason.clone());
                vec![SagaAborted { failed_step: name, reason: clip(reason), at: now }.into()]
            }
        },
        Outcome::Refused(reason) if failable::<S>(request.step, request.phase) => {
            vec![SagaStepFailed { step: name, reason: clip(reason.clone()), at: now }.into()]
        }
        Outcome::Refused(reason) => retry(format!("refused: {reason}")),
        Outcome::Transient(reason) => retry(reason.clone()),
        Outcome::NoAnswer => retry(NO_ANSWER.to_owned()),
    }
}

/// Reasons are stored with at most 500 characters (the schema's limit).
fn clip(reason: String) -> String {
    if reason.trim().is_empty() {
        return "unknown".into();
    }
    if reason.chars().count() <= 500 {
        return reason;
    }
    reason.chars().take(497).chain("...".chars()).collect()
}
