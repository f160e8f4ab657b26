//! Strata's benchmarks, `strata bench …` (the `strata-bench` binary, which
//! `strata bench` runs; kept out of the server so that it carries no bench
//! code and none of the drivers only a baseline needs). Each benchmark
//! prints one JSON object with its figures, a baseline measured in the same
//! process on the same service, and the ratio; what they share (scratch
//! places, alternating runs, typed results, the output's shape) is [`kit`];
//! the command line is [`cli`].
//!
//! - `bench append` ([`append`]): appends through Strata vs the same rows by
//!   plain INSERTs;
//! - `bench commands` ([`commands`]): the command path (load, decide, append)
//!   vs raw appends of the same events;
//! - `bench relay`, `bench project`, `bench rebuild`: the relay, the live
//!   projection and a rebuild vs raw publishing, raw writes, reading the log;
//! - `bench e2e` ([`e2e`]): order placed → confirmed through the whole
//!   pipeline, or through a running server's GraphQL API;
//! - `bench flood --url` ([`flood`]): a probe query's latency idle and while
//!   thousands of `waitFor` fields wait.
//!
//! A benchmark never writes into the configured log or read model: it makes
//! a scratch database, directory, stream or key prefix and removes it.

use serde_json::{json, Value};
use strata_store::{EventMetadata, NewEvent};
use uuid::Uuid;

mod append;
pub mod cli;
mod commands;
mod e2e;
mod flood;
pub mod kit;
#[cfg(all(feature = "redis", feature = "mongo"))]
mod mongo;
#[cfg(feature = "redis")]
mod project;
#[cfg(feature = "redis")]
mod rebuild;
#[cfg(feature = "nats")]
mod relay;
pub use append::{append, AppendBench};
pub use commands::{commands, CommandsBench};
pub use e2e::{e2e, E2eBench};
pub use flood::{flood, FloodAttack, FloodBench};
pub use kit::{Comparison, Latency, Report, Summary};
#[cfg(feature = "redis")]
pub use project::{project, ProjectBench};
#[cfg(feature = "redis")]
pub use rebuild::{rebuild, RebuildBench};
#[cfg(feature = "nats")]
pub use relay::{relay, RelayBench};

/// The payload every benchmark event carries: a realistic `OrderPlaced` v2.
pub fn order_placed_payload() -> Value {
    json!({
        "orderId": Uuid::new_v4().to_string(),
        "customerId": "customer-42",
        "lines": [
            { "sku": "SKU-RED-1", "quantity": 2, "unitPriceCents": 1250 },
            { "sku": "SKU-BLUE-7", "quantity": 1, "unitPriceCents": 4999 }
        ],
        "totalCents": 7499,
        "paymentMethod": "card",
        "shippingAddress": { "name": "Ada Lovelace", "street": "12 St James's Square", "city": "London", "postalCode": "SW1Y 4JH", "country": "GB" }
    })
}

pub(crate) fn new_event(payload: &Value) -> NewEvent {
    NewEvent {
        event_id: Uuid::new_v4(),
        event_type: "OrderPlaced".into(),
        schema_version: 2,
        payload: payload.clone(),
        metadata: EventMetadata {
            correlation_id: Some(Uuid::new_v4()),
            causation_id: None,
            traceparent: Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into()),
            actor: Some("bench".into()),
            command_id: Some(Uuid::new_v4()),
        },
    }
}

/// The Kafka settings of a bench's `STRATA_BUS`; `kafka://mock` starts
/// librdkafka's mock cluster in this process (a Kafka-protocol broker in
/// memory: ratios measured on it mean something, absolute rates are not a
/// real broker's).
#[cfg(feature = "kafka")]
pub(crate) fn kafka_config(url: &str) -> anyhow::Result<strata_store::bus::KafkaConfig> {
    if url == "kafka://mock" {
        // Lives until the process exits (clients of a destroyed mock block on close).
        let cluster = rdkafka::mocking::MockCluster::new(1).map_err(|e| anyhow::anyhow!("starting librdkafka's mock cluster: {e}"))?;
        let config =
            strata_store::bus::KafkaConfig { create_topics: false, ..strata_store::bus::KafkaConfig::new(cluster.bootstrap_servers()) };
        std::mem::forget(cluster);
        return Ok(config);
    }
    strata_api::workers::kafka_config(url)
}
