//! The saga orchestrator of Strata (durable state as an event stream,
//! deadlines, retries, compensation, resume after a crash) and the
//! order-fulfilment saga.
//!
//! Empty on purpose until issue 6 lands: this crate exists now so the
//! workspace has its final shape. It exports nothing yet.
