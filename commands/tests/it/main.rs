//! Integration tests of the command handler against every event store
//! backend: one generic suite (`suite.rs`) instantiated per backend.
#![allow(unreachable_pub, missing_docs)]

mod memory;
#[cfg(feature = "postgres")]
mod postgres;
mod sqlite;
mod suite;
mod support;
