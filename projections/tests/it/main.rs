//! Integration tests of the read side: the sink conformance suite (memory and
//! Redis), the runner fed by a bus, poison events, pause, replicas,
//! rebuilds under load, prefix-consistent views and lost read models.
#![allow(unreachable_pub, missing_docs)]

mod rebuild;
mod runner;
mod sink;
mod standalone;
mod support;
mod truth;
