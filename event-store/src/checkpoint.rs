//! The checkpoint seam: [`CheckpointStore`] keeps named positions in the
//! global log beside it, for the processes that follow the log (the relay).
//!
//! # Guarantees
//!
//! - A checkpoint only moves forward: saving a lower position than the stored
//!   one changes nothing, so a slow or restarted follower cannot undo progress.
//! - An unknown name reads as [`Position::START`].

use async_trait::async_trait;

use crate::{BackendError, Position, ReadError};

/// Named positions in the global log.
#[async_trait]
pub trait CheckpointStore: Send + Sync {
    /// The stored position of `name` ([`Position::START`] if none).
    async fn load_checkpoint(&self, name: &str) -> Result<Position, ReadError>;

    /// Moves `name` forward to `position` (never backwards).
    async fn save_checkpoint(&self, name: &str, position: Position) -> Result<(), BackendError>;
}
