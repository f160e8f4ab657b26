//! The saga orchestrator of Strata and the order-fulfilment saga (docs/design.md §6).
//!
//! # The core (knows no domain)
//!
//! - [`Saga`]: a definition, pure: steps in order (each an action and an
//!   optional compensation, made of commands), a pivot after which steps can
//!   no longer fail, and the commands that close a failed instance.
//! - [`state`]: the state machine every instance runs, pure:
//!   [`state::evolve`] folds the instance's stream, [`state::next`] says what
//!   to do at a given time, [`state::react`] turns a command outcome into the
//!   events that record it (retries with backoff and a bound, deadlines,
//!   compensation in reverse).
//! - [`Orchestrator`]: runs instances against the event store (the instance's
//!   stream is its only state), the services ([`Services`]) and the bus
//!   (triggers through a consumer group), with durable timers and recovery
//!   after a crash. Its module docs state the crash-recovery contract.
//! - [`remote`]: the commands over the bus when the saga and the services
//!   run in different processes.
//!
//! # The reference domain
//!
//! [`fulfilment`]: OrderPlaced → reserve stock → authorize payment → create
//! shipment → confirm the order (the pivot) → capture the payment → commit the
//! stock; the in-process services that carry its commands to the command
//! handlers; and the audit of its invariants over the whole log.

mod orchestrator;
pub mod remote;
mod saga;
pub mod state;

pub mod fulfilment;

pub use orchestrator::{count_in_flight, list_stuck, resume, Driven, InFlight, Orchestrator, OrchestratorConfig, StuckSaga};
pub use saga::{command_id, Clock, ManualClock, Outcome, Phase, Saga, SagaConfig, Services, StepSpec, SystemClock};

use strata_schemas::DecodeError;
use strata_store::bus::BusError;
use strata_store::{AppendError, ReadError, StreamId};

/// Why the orchestrator could not go on. Never a domain answer: refusals of
/// the services are outcomes recorded in the saga's stream.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SagaError {
    /// Reading the log failed.
    #[error("reading the saga log failed")]
    Read(#[source] ReadError),
    /// Recording a decision failed (a conflict is handled inside).
    #[error("recording a saga decision failed")]
    Append(#[source] AppendError),
    /// An instance's stream holds an event that is not a saga event.
    #[error("saga stream {stream_id} holds an event that is not a saga event")]
    Undecodable {
        /// The stream.
        stream_id: StreamId,
        /// Why.
        #[source]
        source: DecodeError,
    },
    /// A definition's data does not serialize.
    #[error("saga data does not serialize: {0}")]
    Data(String),
    /// The trigger subscription failed.
    #[error("saga trigger subscription failed")]
    Bus(#[source] BusError),
}

#[cfg(test)]
mod tests {
    /// Architecture invariant: the core is usable without the reference domain.
    #[test]
    fn the_saga_core_never_uses_the_reference_domain() {
        let core = [
            ("saga.rs", include_str!("saga.rs")),
            ("state.rs", include_str!("state.rs")),
            ("orchestrator.rs", include_str!("orchestrator.rs")),
            ("remote.rs", include_str!("remote.rs")),
        ];
        for (file, source) in core {
            for forbidden in ["crate::fulfilment", "strata_commands", "super::fulfilment"] {
                assert!(!source.contains(forbidden), "{file} uses {forbidden}");
            }
        }
    }
}
