//! Integration tests of strata-store: one binary, a module per backend.
#![allow(unreachable_pub, missing_docs)]

mod bus;
mod conformance;
mod memory;
#[cfg(feature = "postgres")]
mod postgres;
mod relay;
#[cfg(feature = "sqlite")]
mod sqlite;
mod support;
#[cfg(any(feature = "sqlite", feature = "postgres"))]
mod tamper;
