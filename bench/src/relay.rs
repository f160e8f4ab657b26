//! `strata bench relay`: the relay (read the log in order, publish with acks
//! in flight, move the checkpoint) from a scratch log of `events` events to a
//! fresh JetStream stream or Kafka topic prefix, next to raw pipelined
//! publishing of the same records (pre-encoded, same message ids or keys,
//! partitions and headers, same producer settings, same batch size) to
//! another fresh one, in the same process; runs alternate which goes first.
//!
//! `STRATA_BUS=kafka://mock` runs both against librdkafka's mock cluster
//! started in this process (a Kafka-protocol broker in memory: the ratio is
//! meaningful, the absolute rate is not a real broker's).

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde_json::Value;
use strata_store::bus::{encode_event, JetStreamBus, JetStreamConfig, Publisher};
#[cfg(feature = "kafka")]
use strata_store::bus::{KafkaBus, KafkaConfig};
use strata_store::relay::{Relay, RelayConfig};
use strata_store::{ExpectedVersion, Position, ReadAll, StreamAppend, StreamId};
use uuid::Uuid;

use super::kit::{alternate, open_scratch, Report, Scratch, ScratchStore, Summary};
use super::{new_event, order_placed_payload};

/// `bench relay`: its flags, and the event store and bus from the settings.
#[derive(Debug, Clone, clap::Args)]
pub struct RelayBench {
    /// Where the scratch log goes (`STRATA_EVENT_STORE`; only the server or directory is used).
    #[arg(skip)]
    pub event_store_url: String,
    /// `nats://HOST:4222`, `kafka://HOST:9092` or `kafka://mock` (`STRATA_BUS`).
    #[arg(skip)]
    pub bus_url: String,
    /// Events in the scratch log.
    #[arg(long, default_value_t = 100_000)]
    pub events: usize,
    /// Events per publish batch (relay and raw).
    #[arg(long, default_value_t = 500)]
    pub batch_size: usize,
    /// Runs (medians are reported; relay and raw alternate first).
    #[arg(long, default_value_t = 3)]
    pub runs: usize,
}

/// Runs `bench relay` and returns its JSON result.
pub async fn relay(bench: &RelayBench) -> anyhow::Result<Value> {
    if !bench.bus_url.starts_with("nats://") && !bench.bus_url.starts_with("kafka://") {
        bail!("bench relay needs STRATA_BUS=nats://HOST:4222 or kafka://HOST:9092 (or kafka://mock)");
    }
    if bench.events == 0 || bench.batch_size == 0 || bench.runs == 0 {
        bail!("--events, --batch-size and --runs must be at least 1");
    }
    Scratch::around(&bench.event_store_url, async |scratch| run_all(bench, scratch).await).await
}

/// Where the bench publishes.
enum Target {
    Nats(String),
    #[cfg(feature = "kafka")]
    Kafka(KafkaConfig),
}

impl Target {
    fn open(url: &str) -> anyhow::Result<Self> {
        if url.starts_with("nats://") {
            return Ok(Self::Nats(url.to_owned()));
        }
        #[cfg(feature = "kafka")]
        {
            Ok(Self::Kafka(super::kafka_config(url)?))
        }
        #[cfg(not(feature = "kafka"))]
        bail!("this strata was built without the kafka feature")
    }

    fn name(&self) -> &'static str {
        match self {
            Self::Nats(_) => "nats",
            #[cfg(feature = "kafka")]
            Self::Kafka(_) => "kafka",
        }
    }
}

async fn run_all(bench: &RelayBench, scratch: &Scratch) -> anyhow::Result<Value> {
    let target = Target::open(&bench.bus_url)?;
    let (store, backend) = open_scratch(scratch, 8).await?;
    fill(&store, bench.events).await?;
    let log = store.read_all_stored(ReadAll::after(Position::START, bench.events)).await?;
    let raw = Raw::prepare(&target, &log).await?;
    let events = bench.events as u64;
    let comparison = alternate(
        bench.runs,
        async |run| Ok(Summary::new("events", events, measure_relay(bench, &target, &store, run).await?)),
        async |_| Ok(Summary::new("events", events, raw.measure(bench).await?)),
    )
    .await?;
    Ok(Report::new("relay")
        .with("backend", backend)
        .with("bus", target.name())
        .with("events", bench.events)
        .with("batch_size", bench.batch_size)
        .with("runs", bench.runs)
        .compared(&comparison, Some(raw_name(&target)))
        .finish())
}

/// Appends `count` OrderPlaced events, up to 100 per append, 10 per stream.
async fn fill(store: &Arc<dyn ScratchStore>, count: usize) -> anyhow::Result<()> {
    let payload = order_placed_payload();
    let mut written = 0;
    while written < count {
        let batch = (count - written).min(100);
        let mut appends = Vec::new();
        let mut left = batch;
        while left > 0 {
            let events = left.min(10);
            appends.push(StreamAppend {
                stream_id: StreamId::new("order", Uuid::new_v4().simple())?,
                expected: ExpectedVersion::NoStream,
                events: (0..events).map(|_| new_event(&payload)).collect(),
            });
            left -= events;
        }
        store.append(appends).await?;
        written += batch;
    }
    Ok(())
}

fn raw_name(target: &Target) -> &'static str {
    match target {
        Target::Nats(_) => "raw_publish",
        #[cfg(feature = "kafka")]
        Target::Kafka(_) => "raw_produce",
    }
}

/// Seconds the relay takes to put the whole log on a fresh stream (topic prefix).
async fn measure_relay(bench: &RelayBench, target: &Target, store: &Arc<dyn ScratchStore>, run: usize) -> anyhow::Result<f64> {
    let id = Uuid::new_v4().simple().to_string();
    let (publisher, nats): (Arc<dyn Publisher>, Option<JetStreamBus>) = match target {
        Target::Nats(url) => {
            let bus = JetStreamBus::connect(JetStreamConfig {
                stream_name: format!("BENCH_RELAY_{id}"),
                subject_prefix: format!("benchrelay{id}"),
                ..JetStreamConfig::new(url.clone())
            })
            .await?;
            (Arc::new(bus.clone()), Some(bus))
        }
        #[cfg(feature = "kafka")]
        Target::Kafka(config) => {
            let bus = KafkaBus::connect(KafkaConfig { topic_prefix: format!("benchrelay{id}"), ..config.clone() }).await?;
            // Topic creation is a one-off, not the relay's steady cost.
            bus.category_topic("order").await?;
            (Arc::new(bus), None)
        }
    };
    let relay = Relay::new(
        store.clone(),
        store.clone(),
        publisher,
        RelayConfig { name: format!("bench-{run}-{id}"), batch_size: bench.batch_size, ..RelayConfig::default() },
    );
    let started = Instant::now();
    let relayed = relay.catch_up().await?;
    let seconds = started.elapsed().as_secs_f64();
    if let Some(bus) = nats {
        bus.delete().await?;
    }
    if relayed != bench.events {
        bail!("the relay published {relayed} of {} events", bench.events);
    }
    Ok(seconds)
}

/// The raw baseline: the log's records pre-encoded for the bus.
enum Raw {
    /// Subject, message id, bytes.
    Nats(String, Vec<(String, String, Vec<u8>)>),
    #[cfg(feature = "kafka")]
    Kafka(KafkaConfig, Vec<KafkaRecord>),
}

#[cfg(feature = "kafka")]
struct KafkaRecord {
    key: Vec<u8>,
    payload: Vec<u8>,
    headers: rdkafka::message::OwnedHeaders,
    partition: Option<i32>,
}

impl Raw {
    async fn prepare(target: &Target, log: &[strata_store::StoredEvent]) -> anyhow::Result<Self> {
        match target {
            Target::Nats(url) => Ok(Self::Nats(
                url.clone(),
                log.iter()
                    .map(|event| {
                        let decoded = event.decode().with_context(|| format!("decoding event {} of the scratch log", event.position))?;
                        Ok((strata_store::bus::subject("benchraw", &event.stream_id), event.event_id.to_string(), encode_event(&decoded)))
                    })
                    .collect::<anyhow::Result<_>>()?,
            )),
            #[cfg(feature = "kafka")]
            Target::Kafka(config) => Ok(Self::Kafka(
                config.clone(),
                log.iter()
                    .map(|event| KafkaRecord {
                        key: event.stream_id.as_str().as_bytes().to_vec(),
                        payload: strata_store::bus::encode_stored(event),
                        headers: strata_store::bus::kafka::event_headers(event, None, None),
                        partition: None,
                    })
                    .collect(),
            )),
        }
    }

    async fn measure(&self, bench: &RelayBench) -> anyhow::Result<f64> {
        match self {
            Self::Nats(url, payloads) => measure_raw_nats(bench, url, payloads).await,
            #[cfg(feature = "kafka")]
            Self::Kafka(config, records) => measure_raw_kafka(bench, config, records).await,
        }
    }
}

/// Seconds raw pipelined publishing of the pre-encoded payloads takes.
async fn measure_raw_nats(bench: &RelayBench, url: &str, payloads: &[(String, String, Vec<u8>)]) -> anyhow::Result<f64> {
    let client = async_nats::connect(url).await.context("connecting to NATS")?;
    let context = async_nats::jetstream::new(client);
    let name = format!("BENCH_RAW_{}", Uuid::new_v4().simple());
    context
        .get_or_create_stream(async_nats::jetstream::stream::Config {
            name: name.clone(),
            subjects: vec!["benchraw.>".into()],
            duplicate_window: Duration::from_secs(120),
            ..Default::default()
        })
        .await?;
    let started = Instant::now();
    for batch in payloads.chunks(bench.batch_size) {
        let mut acks = Vec::with_capacity(batch.len());
        for (subject, message_id, payload) in batch {
            let message =
                async_nats::jetstream::message::PublishMessage::build().payload(payload.clone().into()).message_id(message_id.as_str());
            acks.push(context.send_publish(subject.clone(), message).await?);
        }
        for ack in acks {
            ack.await?;
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    context.delete_stream(&name).await?;
    Ok(seconds)
}

/// Seconds raw pipelined producing of the pre-encoded records takes: the
/// bus's producer settings, its partitions (murmur2 of the key), its
/// headers, a batch of sends then their acks, batch after batch.
#[cfg(feature = "kafka")]
async fn measure_raw_kafka(bench: &RelayBench, config: &KafkaConfig, records: &[KafkaRecord]) -> anyhow::Result<f64> {
    use rdkafka::producer::{FutureProducer, FutureRecord};

    let config = KafkaConfig { topic_prefix: format!("benchraw{}", Uuid::new_v4().simple()), ..config.clone() };
    let (topic, partitions) = KafkaBus::connect(config.clone()).await?.category_topic("order").await?;
    let producer: FutureProducer = config.producer_settings().create().context("creating the raw producer")?;
    let started = Instant::now();
    for batch in records.chunks(bench.batch_size) {
        let mut acks = Vec::with_capacity(batch.len());
        for record in batch {
            let partition = record.partition.unwrap_or_else(|| strata_store::bus::kafka::partition_of(&record.key, partitions));
            let message =
                FutureRecord::to(&topic).key(&record.key).payload(&record.payload).headers(record.headers.clone()).partition(partition);
            acks.push(producer.send_result(message).map_err(|(error, _)| anyhow::anyhow!("producing: {error}"))?);
        }
        for ack in acks {
            ack.await.context("the producer dropped a record")?.map_err(|(error, _)| anyhow::anyhow!("producing: {error}"))?;
        }
    }
    Ok(started.elapsed().as_secs_f64())
}
