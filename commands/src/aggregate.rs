//! [`Aggregate`]: a consistency boundary whose state is folded from one event
//! stream. The core knows nothing of any domain; a domain implements this
//! trait on a marker type and gets loading, appending, retries, idempotency
//! and snapshots from [`crate::CommandHandler`].
//!
//! # Contract
//!
//! - `decide` and `evolve` are pure and synchronous: no IO, no clock, no
//!   randomness. Time and ids come in with the command, so deciding the same
//!   command against the same state always gives the same events. The handler
//!   relies on it: a retried command reproduces the same event ids and payloads.
//! - `decide` refuses by returning `Err` and then nothing is written; a refusal
//!   is a domain answer, never an infrastructure failure.
//! - `evolve` never fails: events are facts already accepted by `decide`.

use std::fmt::Debug;

use serde::de::DeserializeOwned;
use serde::Serialize;
use strata_schemas::DomainEvent;

/// A consistency boundary: one stream `CATEGORY-<id>` and the rules that guard it.
pub trait Aggregate: Send + Sync + 'static {
    /// The stream category (`order`, `inventory`, …).
    const CATEGORY: &'static str;
    /// The format of [`Aggregate::State`] in snapshots. Bump it whenever the
    /// state type changes: stored snapshots of another format are ignored and
    /// the state is folded from the log again.
    const SNAPSHOT_VERSION: u32;

    /// The folded state. `Default` is the state of an absent stream.
    type State: Default + Clone + Debug + Serialize + DeserializeOwned + Send + Sync;
    /// What callers ask for. Cloned when a conflict makes the handler decide again.
    type Command: Clone + Debug + Send + Sync;
    /// What happened (the stream's event family).
    type Event: DomainEvent;
    /// Why a command is refused.
    type Error: std::error::Error + Send + Sync + 'static;

    /// The id part of the stream a command targets (`<id>` in `CATEGORY-<id>`).
    fn aggregate_id(command: &Self::Command) -> String;

    /// Decides a command against the current state: the new events, or a refusal.
    fn decide(state: &Self::State, command: Self::Command) -> Result<Vec<Self::Event>, Self::Error>;

    /// Applies one event to the state.
    fn evolve(state: Self::State, event: &Self::Event) -> Self::State;

    /// Whether a command normally targets a stream that does not exist yet
    /// (placing an order, authorizing a payment). The handler then decides it
    /// on [`Aggregate::State`]'s default without reading the stream, and
    /// falls back to reading it if the stream exists. Default: false.
    fn creates_stream(command: &Self::Command) -> bool {
        let _ = command;
        false
    }

    /// Folds events onto a state (what loading does after the snapshot).
    fn fold<'a>(state: Self::State, events: impl IntoIterator<Item = &'a Self::Event>) -> Self::State {
        events.into_iter().fold(state, Self::evolve)
    }
}
