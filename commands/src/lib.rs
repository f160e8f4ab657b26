//! The write side of Strata.
//!
//! # The core (knows no domain)
//!
//! - [`Aggregate`]: pure, synchronous `decide(&State, Command)` and
//!   `evolve(State, &Event)`; time and ids come in the command.
//! - [`CommandHandler`]: loads the stream (from a snapshot when one is
//!   usable), decides, appends with the loaded version as expected version,
//!   retries a bounded number of times on conflict, and makes command ids
//!   idempotent (event ids are UUIDv5 of the command id). See [`handler`].
//! - [`testing`]: given / when / then over events, no IO.
//!
//! # The reference domain: order fulfilment
//!
//! Four aggregates built only on the public core, used by the saga, the
//! projections and the API. Their rules are part of the contract (the demo and
//! the saga tests depend on them):
//!
//! - [`orders`] (`order-<orderId>`): place, confirm, mark shipped, cancel.
//! - [`inventory`] (`inventory-<SKU>`): restock, reserve, release, commit.
//!   Never oversells.
//! - [`payments`] (`payment-<orderId>`): authorize, capture, void, refund,
//!   with deterministic gateway rules ([`payments::gateway_rule`]).
//! - [`shipping`] (`shipment-<orderId>`): create, cancel, with a deterministic
//!   carrier rule ([`shipping::UNDELIVERABLE_COUNTRIES`]).

mod aggregate;
pub mod handler;
pub mod testing;

pub mod inventory;
pub mod orders;
pub mod payments;
pub mod shipping;

pub use aggregate::Aggregate;
pub use handler::{
    event_id, AppliedEvent, CommandContext, CommandError, CommandHandler, CommandOutcome, Envelope, HandlerConfig, Loaded,
    TraceparentSource,
};
