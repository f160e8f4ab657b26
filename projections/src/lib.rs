//! The read side of Strata: projections, the runner that feeds them from the
//! bus, the sinks that hold read models (in-memory, Redis), rebuilds and dead
//! letters; and, in [`orders`], the read models of the reference domain.
//!
//! The generic core ([`projection`], [`sink`], [`runner`], [`rebuild`]) knows
//! nothing of the domain; [`orders`] uses only its public API. Projections
//! read the log through `Arc<dyn EventReader>`: appending is impossible by
//! type.

mod apply;
pub mod orders;
pub mod projection;
pub mod rebuild;
pub mod runner;
pub mod sink;

pub use apply::{PlanError, RetryPolicy, FILL_BUDGET};
pub use projection::{ApplyError, Document, PoisonPolicy, Projection, Write};
pub use rebuild::{ensure_live, rebuild, RebuildConfig, RebuildError, RebuildProgress, RebuildReport};
pub use runner::{Handled, ProjectionRunner, RunnerConfig, RunnerError};
pub use sink::{MemorySink, ReadModelSink, SinkError};
#[cfg(feature = "mongo")]
pub use sink::{MongoSink, MongoSinkConfig};
#[cfg(feature = "redis")]
pub use sink::{RedisSink, RedisSinkConfig};
