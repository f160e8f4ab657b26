//! [`Saga`]: the definition of a saga, pure data and pure functions, and the
//! seams the orchestrator drives it through ([`Services`], [`Clock`]).
//!
//! A definition names its steps in forward order; each step has an action
//! and, optionally, a compensation, both made of commands the definition
//! builds from the instance's data. Steps up to and including the *pivot*
//! may fail (a refusal, a passed deadline, exhausted attempts), which
//! compensates every step up to the failed one in reverse order; steps after
//! the pivot cannot fail and are retried until they succeed.
//!
//! Command ids are derived from (saga id, step, action or compensation, index)
//! by [`command_id`], so a command sent again after a crash or a retry is the
//! same command and the services apply it once.

use std::fmt::Debug;

use async_trait::async_trait;
use chrono::{DateTime, Duration, Utc};
use serde::de::DeserializeOwned;
use serde::Serialize;
use strata_store::RecordedEvent;
use uuid::Uuid;

/// One step of a definition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StepSpec {
    /// Upper-case name (`RESERVE_STOCK`), stored in the saga's events.
    pub name: &'static str,
}

/// What a part of a step is: its action, its compensation, or the final
/// abort commands that run once every compensation is done.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Phase {
    /// Moving forward.
    Action,
    /// Undoing a completed (or failed, possibly partial) step.
    Compensation,
    /// After the compensations: tell the world the saga failed.
    Abort,
}

impl Phase {
    /// `action`, `compensation` or `abort` (part of command ids).
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Action => "action",
            Phase::Compensation => "compensation",
            Phase::Abort => "abort",
        }
    }
}

/// A saga definition. Implemented on a marker type; everything is pure.
pub trait Saga: Send + Sync + 'static {
    /// Stream category of the instances (`fulfilment` → `fulfilment-<sagaId>`).
    const CATEGORY: &'static str;
    /// The steps in forward order.
    const STEPS: &'static [StepSpec];
    /// Index of the last step that may fail; later steps are retried until done.
    const PIVOT: usize;

    /// What an instance carries (stored in `SagaStarted`).
    type Data: Clone + Debug + PartialEq + Serialize + DeserializeOwned + Send + Sync;
    /// What it asks of the services.
    type Command: Clone + Debug + Send + Sync;

    /// Whether an event of the log starts an instance, and with what.
    fn start(event: &RecordedEvent) -> Option<(Uuid, Self::Data)>;

    /// The commands of a step's action or compensation (empty: nothing to do).
    fn commands(data: &Self::Data, step: usize, phase: Phase, at: DateTime<Utc>) -> Vec<Self::Command>;

    /// The commands that close a failed instance once compensated.
    fn abort_commands(data: &Self::Data, failed_step: usize, reason: &str, at: DateTime<Utc>) -> Vec<Self::Command>;

    /// Whether an event of the log asks an instance to undo what it did (a
    /// cancellation), and which instance, with the reason. Only instances
    /// still running or completed react (see [`crate::state`]).
    fn cancel_request(event: &RecordedEvent) -> Option<(Uuid, String)> {
        let _ = event;
        None
    }
}

/// The id of the `index`-th command of a step part of an instance: the same
/// inputs give the same id forever.
pub fn command_id(saga_id: Uuid, step: &str, phase: Phase, index: usize) -> Uuid {
    Uuid::new_v5(&saga_id, format!("{step}/{}/{index}", phase.as_str()).as_bytes())
}

/// How the services answered a command.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(tag = "outcome", content = "reason", rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Outcome {
    /// Applied (now or earlier: a replayed command id is `Done` too), or
    /// nothing was left to undo.
    Done,
    /// Refused by a business rule; sending it again gives the same answer.
    Refused(String),
    /// Failed for a reason that may pass (a backend error, contention).
    Transient(String),
    /// No answer: the effect is unknown, so the command is sent again (same
    /// id) until the step's deadline.
    NoAnswer,
}

/// Carries a definition's commands to the services that own them. In one
/// process it calls their command handlers; it never retries on its own (the
/// orchestrator retries, durably).
#[async_trait]
pub trait Services<C>: Send + Sync {
    /// Applies one command under `command_id`, idempotently.
    async fn execute(&self, command_id: Uuid, correlation_id: Uuid, command: &C) -> Outcome;
}

/// Where "now" comes from. Tests use [`ManualClock`] and never sleep.
pub trait Clock: Send + Sync {
    /// The current time.
    fn now(&self) -> DateTime<Utc>;
}

/// The wall clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> DateTime<Utc> {
        Utc::now()
    }
}

/// A clock that moves only when told.
#[derive(Debug)]
pub struct ManualClock(std::sync::Mutex<DateTime<Utc>>);

impl ManualClock {
    /// Starts at `at`.
    pub fn new(at: DateTime<Utc>) -> Self {
        Self(std::sync::Mutex::new(at))
    }

    /// Moves forward by `by`.
    pub fn advance(&self, by: Duration) {
        let mut now = self.0.lock().unwrap_or_else(|poison| poison.into_inner());
        *now += by;
    }
}

impl Clock for ManualClock {
    fn now(&self) -> DateTime<Utc> {
        *self.0.lock().unwrap_or_else(|poison| poison.into_inner())
    }
}

/// Timing rules shared by every step of a definition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SagaConfig {
    /// A failable step must succeed within this time from when it began (the
    /// previous step's success), else it fails and compensation begins.
    pub step_deadline: Duration,
    /// A failable step fails after this many transient failures.
    pub max_attempts: u32,
    /// First retry delay; doubles per attempt.
    pub backoff_base: Duration,
    /// Retry delays never exceed this.
    pub backoff_max: Duration,
    /// A part that cannot fail (a compensation, a step after the pivot, the
    /// abort) is parked as stuck once it failed `max_attempts` times and this
    /// long has passed since it began.
    pub park_after: Duration,
}

impl Default for SagaConfig {
    fn default() -> Self {
        Self {
            step_deadline: Duration::seconds(5),
            max_attempts: 8,
            backoff_base: Duration::milliseconds(50),
            backoff_max: Duration::seconds(2),
            park_after: Duration::seconds(60),
        }
    }
}

impl SagaConfig {
    /// The delay before attempt `failed + 1`, doubled per failure, capped, with
    /// a jitter of up to a quarter derived from the saga id (deterministic, so
    /// replicas and replays agree, yet instances spread out).
    pub fn backoff(&self, saga_id: Uuid, failed: u32) -> Duration {
        let exponent = failed.saturating_sub(1).min(20);
        let base = self.backoff_base.num_milliseconds().max(1);
        let delay = base.saturating_mul(1_i64 << exponent).min(self.backoff_max.num_milliseconds().max(1));
        let spread = (saga_id.as_u128() as u64 ^ u64::from(failed)).wrapping_mul(0x9E37_79B9_7F4A_7C15) % 1_000;
        Duration::milliseconds(delay + delay * spread as i64 / 4_000)
    }
}
