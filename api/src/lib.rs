//! The composition root of Strata: the only crate that reads configuration,
//! picks backends from URLs, binds sockets and talks to the terminal.
//! Libraries below it take typed config and ready-made trait objects.
//!
//! - [`app`]: the composition root: `Application::build(settings)` and `run_until_stopped` (what `strata serve` is);
//! - [`cli`]: the command line (the clap tree and what each command runs; `main.rs` only starts it);
//! - [`config`]: settings from flags, environment and `strata.toml` (flags win);
//! - [`urls`]: the event store, bus and read-model URLs, parsed once into their backends' settings;
//! - [`backend`]: the event store picked by the URL scheme;
//! - [`endpoint`]: the GraphQL endpoint's parts that [`http`] and [`ws`] share (schema, tokens, socket caps, rates, refusals);
//! - [`http`]: the axum app (`router()`) and `run(listener, shutdown)`;
//! - [`graphql`]: the GraphQL schema (queries, mutations, subscription) over the commands and read models;
//! - [`auth`]: bearer tokens and roles;
//! - [`changes`]: `waitFor` and `orderUpdated` woken by the read models' changes;
//! - [`client`]: a small GraphQL client for `strata demo` and the benchmarks (`strata-bench`);
//! - [`metrics`]: `/metrics` (Prometheus text) and the store decorator that counts appends;
//! - [`audit`]: `strata audit …` (stream, verify, anchor, keygen, invariants);
//! - [`latency`]: latency percentiles as `strata demo` and the benchmarks report them;
//! - [`anchor`]: anchor files, chained and signed (Ed25519) for auditors;
//! - [`progress`]: progress bars on a terminal, plain lines otherwise;
//! - [`workers`]: the relay, projector, saga and services roles and their backends;
//! - [`projections`]: `strata projections …` (list, status, rebuild, pause, resume);
//! - [`rate`]: rate limits per token and per client address;
//! - [`sagas`]: `strata sagas …` (stuck, resume);
//! - [`supervisor`]: every worker restarted with capped, jittered backoff when it fails; their states for `/readyz`;
//! - [`topology`]: `strata topology`, every role as local processes, restarted when they exit;
//! - [`telemetry`]: logs (text or JSON) and OpenTelemetry traces (`OTEL_*`);
//! - [`ws`]: the subscriptions' WebSocket and its bounds.

pub mod anchor;
pub mod app;
pub mod audit;
pub mod auth;
pub mod backend;
pub mod changes;
pub mod cli;
pub mod client;
pub mod config;
pub mod demo;
pub mod endpoint;
pub mod graphql;
pub mod http;
pub mod latency;
pub mod metrics;
pub mod progress;
pub mod projections;
pub mod rate;
pub mod sagas;
pub mod supervisor;
pub mod telemetry;
pub mod topology;
pub mod urls;
pub mod workers;
pub mod ws;
