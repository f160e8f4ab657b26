//! The roles of a process (docs/design.md §3, §9) and their backends: the bus
//! and the read models their URLs name ([`crate::urls`]), then the relay
//! (under a lease, so one is active among replicas) and one projection runner
//! per projection. The api role is served by [`crate::app::Application`]. Each worker runs under
//! the [`Supervisor`] (docs/design.md §8): one that fails is started again.
//!
//! A projection without a live generation (always the case for in-memory read
//! models, and for a fresh Redis) is first built from the log, then follows
//! the bus; the stream guards make the overlap between the two harmless.
//!
//! The saga role runs the order-fulfilment orchestrator: triggers
//! (`OrderPlaced`) from the bus through the consumer group
//! `saga-fulfilment`; its commands go to the services' handlers in this
//! process when it also has the services role, else as requests over the
//! bus to the processes that have it (which serve them with their handlers).

use std::sync::Arc;

use crate::backend::EventStoreBackend;
use crate::config::Settings;
use crate::supervisor::{Backoff, Supervisor, WorkerHealth};
use crate::urls::{BusUrl, ReadModelUrl};
use anyhow::{bail, Context};
use strata_commands::HandlerConfig;
use strata_projections::{ensure_live, orders, ProjectionRunner, ReadModelSink, RebuildConfig, RunnerConfig};
use strata_sagas::fulfilment::{self, Fulfilment, FulfilmentCommand, FulfilmentServices};
use strata_sagas::remote::RemoteServices;
use strata_sagas::{Orchestrator, OrchestratorConfig, Services, SystemClock};
use strata_store::bus::{MemoryBus, Publisher, Requester, Responder, Subscriber};
use strata_store::relay::{Relay, RelayConfig};

/// Both ends of the bus.
pub struct Bus {
    /// For the relay.
    pub publisher: Arc<dyn Publisher>,
    /// For projections and sagas.
    pub subscriber: Arc<dyn Subscriber>,
    /// Commands from the saga to services in another process (not in process).
    pub requester: Option<Arc<dyn Requester>>,
    /// The services' side of those commands.
    pub responder: Option<Arc<dyn Responder>>,
}

/// The categories of the reference domain's streams (the command handlers'
/// aggregates and the fulfilment saga).
pub const DOMAIN_CATEGORIES: [&str; 5] = [
    <strata_commands::orders::Order as strata_commands::Aggregate>::CATEGORY,
    <strata_commands::inventory::Inventory as strata_commands::Aggregate>::CATEGORY,
    <strata_commands::payments::Payment as strata_commands::Aggregate>::CATEGORY,
    <strata_commands::shipping::Shipment as strata_commands::Aggregate>::CATEGORY,
    fulfilment::CATEGORY,
];

/// Connects to the bus `url` names ([`BusUrl::parse`]).
pub async fn open_bus(url: &str, max_record_bytes: usize) -> anyhow::Result<Bus> {
    connect_bus(&BusUrl::parse(url)?, max_record_bytes).await
}

/// Connects to the bus. Every bus carries records of up to
/// `max_record_bytes` ([`strata_store::AppendLimits::max_record_bytes`]):
/// Kafka's producer and new topics are configured so, a NATS server with a
/// smaller `max_payload` is refused.
pub async fn connect_bus(url: &BusUrl, max_record_bytes: usize) -> anyhow::Result<Bus> {
    match url {
        BusUrl::Memory => {
            let bus = Arc::new(MemoryBus::new());
            Ok(Bus { publisher: bus.clone(), subscriber: bus, requester: None, responder: None })
        }
        #[cfg(feature = "nats")]
        BusUrl::Nats { url, config } => {
            let config = strata_store::bus::JetStreamConfig { max_record_bytes, ..config.clone() };
            let bus = Arc::new(
                strata_store::bus::JetStreamBus::connect(config).await.with_context(|| format!("connecting to NATS JetStream at {url}"))?,
            );
            Ok(Bus { publisher: bus.clone(), subscriber: bus.clone(), requester: Some(bus.clone()), responder: Some(bus) })
        }
        #[cfg(feature = "kafka")]
        BusUrl::Kafka { url, config } => {
            let config = strata_store::bus::KafkaConfig { max_record_bytes, ..config.clone() };
            let bus =
                Arc::new(strata_store::bus::KafkaBus::connect(config).await.with_context(|| format!("connecting to Kafka at {url}"))?);
            // The domain's topics exist before any group subscribes: a topic
            // that appears later costs every group following all categories a
            // rebalance.
            for category in DOMAIN_CATEGORIES {
                bus.category_topic(category).await.with_context(|| format!("creating the Kafka topic of {category}"))?;
            }
            Ok(Bus { publisher: bus.clone(), subscriber: bus.clone(), requester: Some(bus.clone()), responder: Some(bus) })
        }
    }
}

/// The Kafka settings of a `kafka://` URL ([`BusUrl::Kafka`]), with the
/// `STRATA_KAFKA_*` variables of this process's environment.
#[cfg(feature = "kafka")]
pub fn kafka_config(url: &str) -> anyhow::Result<strata_store::bus::KafkaConfig> {
    kafka_config_with(url, std::env::vars())
}

/// [`kafka_config`] with the environment given.
#[cfg(feature = "kafka")]
pub fn kafka_config_with(
    url: &str,
    environment: impl IntoIterator<Item = (String, String)>,
) -> anyhow::Result<strata_store::bus::KafkaConfig> {
    crate::urls::kafka_config(url, environment)
}

/// Connects to the read models `url` names ([`ReadModelUrl::parse`]).
pub async fn open_read_model(url: &str) -> anyhow::Result<Arc<dyn ReadModelSink>> {
    connect_read_model(&ReadModelUrl::parse(url)?).await
}

/// Connects to the read models.
pub async fn connect_read_model(url: &ReadModelUrl) -> anyhow::Result<Arc<dyn ReadModelSink>> {
    Ok(match url {
        ReadModelUrl::Memory => Arc::new(strata_projections::MemorySink::new()),
        #[cfg(feature = "redis")]
        ReadModelUrl::Redis { url, config } => {
            Arc::new(strata_projections::RedisSink::connect(config.clone()).await.with_context(|| format!("connecting to Redis at {url}"))?)
        }
        #[cfg(feature = "mongo")]
        ReadModelUrl::Mongo { url, config } => Arc::new(
            strata_projections::MongoSink::connect(config.clone()).await.with_context(|| format!("connecting to MongoDB at {url}"))?,
        ),
    })
}

/// Builds a projection from the log if it has no live generation (waiting
/// for a replica that is already building it).
async fn build_if_missing(
    projection: Arc<dyn strata_projections::Projection>,
    sink: Arc<dyn ReadModelSink>,
    backend: &EventStoreBackend,
) -> anyhow::Result<()> {
    let name = projection.name().to_owned();
    let report = ensure_live(projection, sink, backend.reader(), RebuildConfig::default())
        .await
        .with_context(|| format!("building read model {name} from the log"))?;
    if let Some(report) = report {
        tracing::info!(projection = %name, events = report.events, seconds = report.seconds, "read model built from the log");
    }
    Ok(())
}

/// How long the saga waits for the services' answer to a command when they
/// run in another process (then it sends the command again, same id).
const COMMAND_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

/// The orchestrator's settings: the defaults, with the step deadline of
/// `STRATA_SAGA_STEP_DEADLINE` and the parking bound of `STRATA_SAGA_PARK_AFTER`.
pub fn orchestrator_config(settings: &Settings) -> OrchestratorConfig {
    let mut config = OrchestratorConfig::default();
    if let Ok(deadline) = chrono::Duration::from_std(settings.saga_step_deadline) {
        config.saga.step_deadline = deadline;
    }
    if let Ok(park_after) = chrono::Duration::from_std(settings.saga_park_after) {
        config.saga.park_after = park_after;
    }
    config
}

/// The four services of the fulfilment domain, in this process.
fn fulfilment_services(backend: &EventStoreBackend) -> FulfilmentServices {
    FulfilmentServices::new(backend.store(), Some(backend.snapshots()), HandlerConfig::default(), "saga:fulfilment")
}

/// The running workers of a process, each under the [`Supervisor`]: one
/// that ends with an error is started again (docs/design.md §8).
pub struct Workers {
    supervisor: Supervisor,
}

impl Workers {
    /// Starts the relay, projector, saga and services roles that `settings`
    /// asks for, each under supervision, pausing between attempts as
    /// `backoff` says.
    pub async fn start(
        settings: &Settings,
        backend: &EventStoreBackend,
        bus: Option<&Bus>,
        read_model: Option<Arc<dyn ReadModelSink>>,
        backoff: Backoff,
    ) -> anyhow::Result<Self> {
        let mut supervisor = Supervisor::new(backoff);
        if settings.roles.projector {
            let (Some(bus), Some(sink)) = (bus, read_model) else {
                bail!("the projector role needs a bus and a read model");
            };
            for projection in orders::projections() {
                let name = projection.name().to_owned();
                // Built before the process serves, as a first start expects
                // (queries then see the whole log); if the read model is
                // down now, the attempt below builds it once it is back.
                if let Err(error) = build_if_missing(projection.clone(), sink.clone(), backend).await {
                    tracing::warn!(projection = %name, "building the read model at start failed; its worker tries again: {error:#}");
                }
                let (sink, subscriber, backend) = (sink.clone(), bus.subscriber.clone(), backend.clone());
                supervisor.spawn(format!("projection-{name}"), move |stop| {
                    let (projection, sink, subscriber, backend) = (projection.clone(), sink.clone(), subscriber.clone(), backend.clone());
                    Box::pin(async move {
                        // In the attempt: a read model that is down at start
                        // is built when it is back.
                        build_if_missing(projection.clone(), sink.clone(), &backend).await?;
                        let runner = ProjectionRunner::new(projection, sink, backend.reader(), RunnerConfig::default());
                        runner.run(subscriber, stop).await.map_err(anyhow::Error::from)
                    })
                });
            }
        }
        if settings.roles.relay {
            let Some(bus) = bus else { bail!("the relay role needs a bus") };
            let relay = Arc::new(Relay::new(backend.reader(), backend.checkpoints(), bus.publisher.clone(), RelayConfig::default()));
            let lease = backend.lease(settings.event_store.as_str())?;
            supervisor.spawn("relay", move |mut stop| {
                let (relay, lease) = (relay.clone(), lease.clone());
                Box::pin(async move {
                    let shutdown = async move {
                        let _ = stop.wait_for(|stop| *stop).await;
                    };
                    relay.run_while_leader(lease.as_ref(), shutdown).await.map_err(anyhow::Error::from)
                })
            });
        }
        if settings.roles.saga {
            let Some(bus) = bus else { bail!("the saga role needs a bus") };
            let services: Arc<dyn Services<FulfilmentCommand>> = if settings.roles.services {
                Arc::new(fulfilment_services(backend))
            } else {
                let Some(requester) = bus.requester.clone() else {
                    bail!("the saga role without the services role needs a bus that carries commands (nats://… or kafka://…)");
                };
                Arc::new(RemoteServices::new(requester, fulfilment::SERVICES, COMMAND_TIMEOUT))
            };
            let orchestrator = Arc::new(Orchestrator::<Fulfilment>::new(
                backend.store(),
                backend.checkpoints(),
                services,
                Arc::new(SystemClock),
                orchestrator_config(settings),
            ));
            let subscriber = bus.subscriber.clone();
            supervisor.spawn("saga-fulfilment", move |stop| {
                let (orchestrator, subscriber) = (orchestrator.clone(), subscriber.clone());
                Box::pin(async move { orchestrator.run(subscriber, fulfilment::TRIGGER_CATEGORY, stop).await.map_err(anyhow::Error::from) })
            });
        } else if settings.roles.services {
            let Some(responder) = bus.and_then(|bus| bus.responder.clone()) else {
                bail!("the services role without the saga role needs a bus that carries commands (nats://… or kafka://…)");
            };
            let services: Arc<dyn Services<FulfilmentCommand>> = Arc::new(fulfilment_services(backend));
            supervisor.spawn("services", move |stop| {
                let (responder, services) = (responder.clone(), services.clone());
                Box::pin(async move {
                    strata_sagas::remote::serve(responder, fulfilment::SERVICES, services, 256, stop).await.map_err(anyhow::Error::from)
                })
            });
        }
        Ok(Self { supervisor })
    }

    /// The workers' states, for `/readyz`.
    pub fn health(&self) -> Arc<WorkerHealth> {
        self.supervisor.health()
    }

    /// Asks every worker to stop and waits for them.
    pub async fn stop(self) {
        self.supervisor.stop().await;
    }
}

#[cfg(all(test, feature = "kafka"))]
mod tests {
    use std::time::Duration;

    use super::kafka_config_with;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
    }

    #[test]
    fn kafka_urls_take_strata_options_librdkafka_properties_and_secrets_from_the_environment() {
        let defaults = kafka_config_with("kafka://h1:9092,h2:9092", env(&[("PATH", "/bin")])).unwrap();
        assert_eq!(defaults.brokers, "h1:9092,h2:9092");
        assert_eq!((defaults.partitions, defaults.replication, defaults.min_insync_replicas), (12, 1, None));
        assert_eq!((defaults.session_timeout, defaults.metadata_refresh), (Duration::from_secs(15), Duration::from_secs(30)));
        assert!(defaults.properties.is_empty());

        let url = "kafka://b:9093?topic_prefix=shop&partitions=24&replication=3&min_insync_replicas=2&session_timeout_ms=20000&metadata_refresh_ms=60000&rdkafka.security.protocol=SASL_SSL&rdkafka.sasl.mechanism=SCRAM-SHA-512&rdkafka.sasl.username=strata";
        let config = kafka_config_with(url, env(&[("STRATA_KAFKA_SASL_PASSWORD", "s3cret"), ("STRATA_BUS", "ignored")])).unwrap();
        assert_eq!(
            (config.topic_prefix.as_str(), config.partitions, config.replication, config.min_insync_replicas),
            ("shop", 24, 3, Some(2))
        );
        assert_eq!((config.session_timeout, config.metadata_refresh), (Duration::from_secs(20), Duration::from_secs(60)));
        let properties: Vec<(&str, &str)> = config.properties.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        assert_eq!(
            properties,
            [
                ("security.protocol", "SASL_SSL"),
                ("sasl.mechanism", "SCRAM-SHA-512"),
                ("sasl.username", "strata"),
                ("sasl.password", "s3cret")
            ]
        );

        for (bad, says) in [
            ("kafka://b:9092?partition=3", "unknown option \"partition\""),
            ("kafka://b:9092?rdkafka.=x", "names no librdkafka property"),
            ("kafka://b:9092?session_timeout_ms=soon", "session_timeout_ms must be a number"),
        ] {
            let err = kafka_config_with(bad, env(&[])).unwrap_err().to_string();
            assert!(err.contains(says), "{bad}: {err}");
        }
    }
}
