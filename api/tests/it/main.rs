//! Integration tests of the `strata` binary and its HTTP surface: the app
//! served in-process on port 0, and the real binary driven like a user would.

#![allow(missing_docs, unreachable_pub)]

mod cli;
mod compose;
#[cfg(all(feature = "postgres", feature = "nats", feature = "redis"))]
mod faults;
mod graphiql;
mod graphql;
mod http;
#[cfg(all(feature = "postgres", feature = "nats", feature = "redis"))]
mod kill;
#[cfg(all(feature = "postgres", feature = "nats", feature = "redis"))]
mod read_side;
#[cfg(all(feature = "postgres", feature = "nats", feature = "redis"))]
mod replicas;
#[cfg(all(feature = "postgres", feature = "nats"))]
mod saga_chaos;
mod support;
#[cfg(all(feature = "postgres", feature = "nats", feature = "redis"))]
mod topology;
#[cfg(all(feature = "postgres", feature = "nats", feature = "redis"))]
mod traces;
mod waiting;
mod ws;
