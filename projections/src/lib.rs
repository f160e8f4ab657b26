//! The read side of Strata: the projection runner, checkpoints stored with the
//! read model, sinks (Redis, MongoDB, in-memory), rebuilds and dead letters.
//!
//! Empty on purpose until issue 5 lands: this crate exists now so the
//! workspace has its final shape. It exports nothing yet.
