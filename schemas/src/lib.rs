//! The event contract of Strata.
//!
//! Every event type has one JSON Schema file per version under `schemas/events/`
//! (`<Type>.v<N>.json`). A [`SchemaRegistry`] holds the compiled schemas and the
//! upcasters that turn version N into N+1, so that:
//!
//! - the event store validates every payload on append against the schema of the
//!   version it is written as, and refuses unknown types or versions;
//! - readers always see the latest version of a type: an event stored as an older
//!   version is upcast, one step at a time, when it is read.
//!
//! The Rust side of the contract is [`events`] (one struct per event type, one
//! enum per aggregate, mapped to the stored form by [`DomainEvent`]) and
//! [`values`] (SKUs, quantities, cents, addresses, parsed once).
//!
//! This crate does no IO and knows nothing about storage. [`catalog`] is the
//! reference domain's contract; a user with their own domain builds their own
//! registry with [`SchemaRegistry::builder`].

pub mod catalog;
mod domain_event;
pub mod events;
mod registry;
pub mod values;

pub use domain_event::{DecodeError, DomainEvent};
pub use registry::{SchemaError, SchemaRegistry, SchemaRegistryBuilder, UpcastError, Upcaster, Violation};
#[doc(hidden)]
pub use serde as __serde;
