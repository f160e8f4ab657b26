//! [`KafkaBus`]: the bus on Apache Kafka (feature `kafka`, librdkafka through
//! `rdkafka`).
//!
//! # Layout
//!
//! - **Topics.** One per category, `<prefix>.<category>`, created on first
//!   use by the admin client with the configured partitions and replication
//!   (or, with [`KafkaConfig::create_topics`] off, left to exist already or
//!   to the broker's auto-creation: librdkafka's mock cluster has no
//!   CreateTopics).
//! - **Records.** Key = the stream id, partition = Kafka's own murmur2 hash
//!   of the key modulo the topic's partitions (what a Java producer would
//!   pick), so one stream stays in one partition, in order. Value = the same
//!   JSON as on JetStream; headers `strata-event-id`, `strata-event-type`,
//!   `strata-position` and `traceparent` (when the event has one).
//! - **Publishing.** An idempotent producer (`enable.idempotence`,
//!   `acks=all`): retries never reorder or double a record within a partition.
//! - **Dedupe by position.** Kafka keeps no message ids, so the bus keeps, per
//!   partition, the highest log position it holds, learnt from the
//!   partition's last record on first use and from every acknowledgement
//!   after; an event at or below it is a duplicate and is not sent. This
//!   holds because the relay publishes in log position order (and a stream
//!   is in one partition). A publish waits for the records an abandoned
//!   publish (a relay task killed mid-batch) left in flight before deciding.
//!
//! # Consumer groups
//!
//! A [`Subscription`] group is the Kafka group `<prefix>.<group>`. Offsets
//! are committed only up to the first delivery not yet acked in each
//! partition (auto commit off), so a member killed at any instant leaves its
//! partitions to another member from the last handled record. A nack, or a
//! delivery left unacked beyond `ack_wait`, seeks its partition back to it:
//! it and everything after it in that partition come again. On a rebalance
//! the revoked partitions' progress is committed before they move; their
//! deliveries not yet handed out are dropped and those in hand are forgotten
//! (their acks change nothing; the new owner delivers them again). Topics
//! that appear later join a subscription to every category through a
//! metadata refresh and a rebalance, so a deployment creates its topics up
//! front ([`KafkaBus::category_topic`]; `strata` does at start-up). Members of a group share work by partition,
//! so per-stream order holds without two members handling one stream.
//!
//! # Requests
//!
//! A service's requests go to `<prefix>_rpc.<service>` (consumer group
//! `<prefix>_rpc.<service>.responders`, so each request reaches one
//! responder); each requesting process reads answers from its own topic
//! `<prefix>_reply.<uuid>`, matched by the `strata-correlation-id` header. A
//! request carries its deadline (`strata-deadline`, Unix milliseconds): a
//! responder skips one that expired while no responder was running.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use async_trait::async_trait;
use futures_util::stream::BoxStream;
use futures_util::StreamExt;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::config::{ClientConfig, RDKafkaLogLevel};
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{BorrowedMessage, Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use tokio::sync::{mpsc, oneshot, Notify};
use uuid::Uuid;

use super::{encode_stored, Reply, WireEvent};
use super::{BusError, Delivery, IncomingRequest, Published, Publisher, Requester, Responder, Settlement, Subscriber, Subscription};
use crate::StoredEvent;

/// Header names on every event record.
pub mod headers {
    /// The event id (text).
    pub const EVENT_ID: &str = "strata-event-id";
    /// The event type.
    pub const EVENT_TYPE: &str = "strata-event-type";
    /// The global log position (decimal text).
    pub const POSITION: &str = "strata-position";
    /// The log that wrote the record (`<id>/<epoch>`).
    pub const LOG_ID: &str = super::super::LOG_ID_HEADER;
    /// The topic's partition count when the record was written (decimal).
    pub const PARTITIONS: &str = "strata-partitions";
    /// W3C trace context of the relay's publish span (else of the command
    /// that wrote the event).
    pub const TRACEPARENT: &str = super::super::TRACEPARENT_HEADER;
    /// Matches an answer to its request.
    pub const CORRELATION_ID: &str = "strata-correlation-id";
    /// The topic a request's answer goes to.
    pub const REPLY_TO: &str = "strata-reply-to";
    /// When a request stops mattering (Unix milliseconds).
    pub const DEADLINE: &str = super::super::DEADLINE_HEADER;
}

/// Where the bus lives and how its topics are made.
#[derive(Debug, Clone)]
pub struct KafkaConfig {
    /// `host:9092[,host2:9092]`.
    pub brokers: String,
    /// Topic (and group) prefix: letters, digits, `-`, `_`.
    pub topic_prefix: String,
    /// Partitions of a topic the bus creates.
    pub partitions: i32,
    /// Replication factor of a topic the bus creates.
    pub replication: i32,
    /// The longest a fetch waits at the broker for new records
    /// (`fetch.wait.max.ms`). A broker answers as soon as records arrive, so
    /// this only bounds idle polling; librdkafka's mock cluster always waits
    /// it out, so tests and `kafka://mock` benches use a few milliseconds.
    pub fetch_wait: Duration,
    /// Create missing topics with the admin client (`false`: they exist
    /// already, or the broker creates them on first use, as librdkafka's
    /// mock cluster does, which has no CreateTopics).
    pub create_topics: bool,
    /// The largest record the bus must carry: the store's largest event
    /// plus its envelope ([`crate::AppendLimits::max_record_bytes`]). The
    /// producer's `message.max.bytes` and the `max.message.bytes` of the
    /// topics the bus creates are set from it.
    pub max_record_bytes: usize,
    /// How long a group member may stay silent before its partitions go to
    /// another (`session.timeout.ms`; heartbeats every third of it, at
    /// most 3 s). Short sessions move partitions on a passing stall.
    pub session_timeout: Duration,
    /// How often the members following every category look for new topics
    /// (`topic.metadata.refresh.interval.ms`).
    pub metadata_refresh: Duration,
    /// `min.insync.replicas` of the topics the bus creates (`None`: the broker's default).
    pub min_insync_replicas: Option<i32>,
    /// librdkafka properties set on every client of the bus, after
    /// Strata's own (TLS, SASL, client id…): `rdkafka.<property>=…` in the
    /// URL, or `STRATA_KAFKA_<PROPERTY>` in the environment for secrets.
    pub properties: Vec<(String, String)>,
}

impl KafkaConfig {
    /// Prefix `strata`, 12 partitions, replication 1, 15 s sessions, new
    /// topics looked for every 30 s.
    pub fn new(brokers: impl Into<String>) -> Self {
        Self {
            brokers: brokers.into(),
            topic_prefix: "strata".into(),
            partitions: 12,
            replication: 1,
            fetch_wait: Duration::from_millis(100),
            create_topics: true,
            max_record_bytes: crate::AppendLimits::default().max_record_bytes(),
            session_timeout: Duration::from_secs(15),
            metadata_refresh: Duration::from_secs(30),
            min_insync_replicas: None,
            properties: Vec::new(),
        }
    }

    /// The group members' session settings.
    fn session(&self, config: &mut ClientConfig) {
        let session = self.session_timeout.as_millis().max(1_000);
        config
            .set("session.timeout.ms", session.to_string())
            .set("heartbeat.interval.ms", (session / 3).min(3_000).to_string())
            // A rebalance moves only the partitions that change owner: the
            // others keep being handled meanwhile.
            .set("partition.assignment.strategy", "cooperative-sticky");
    }

    /// The size limit of produce requests and topics: the largest record
    /// with room for Kafka's framing.
    fn max_message_bytes(&self) -> String {
        (self.max_record_bytes + KAFKA_FRAMING_BYTES).to_string()
    }

    fn check(&self) -> Result<(), BusError> {
        let prefix_ok = !self.topic_prefix.is_empty()
            && self.topic_prefix.len() <= 100
            && self.topic_prefix.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
        let invalid = |reason: String| BusError::backend("configuring Kafka", reason);
        if !prefix_ok {
            return Err(invalid(format!("topic prefix {:?} must be 1 to 100 letters, digits, '-' or '_'", self.topic_prefix)));
        }
        if self.partitions < 1 || self.replication < 1 {
            return Err(invalid("partitions and replication must be at least 1".into()));
        }
        if self.brokers.trim().is_empty() {
            return Err(invalid("no brokers given".into()));
        }
        Ok(())
    }

    /// The client settings every connection of the bus shares.
    fn client(&self) -> ClientConfig {
        let mut config = ClientConfig::new();
        config.set("bootstrap.servers", &self.brokers).set("socket.nagle.disable", "true");
        for (key, value) in &self.properties {
            config.set(key, value);
        }
        config
    }

    /// The producer settings (the bench's raw baseline uses the same).
    pub fn producer_settings(&self) -> ClientConfig {
        let mut config = self.client();
        config
            .set("enable.idempotence", "true")
            // A failure that could leave a gap in a partition is fatal
            // instead: dedupe by position relies on gapless partitions.
            .set("enable.gapless.guarantee", "true")
            .set("acks", "all")
            .set("linger.ms", "2")
            .set("batch.num.messages", "10000")
            .set("queue.buffering.max.messages", "1000000")
            // Every event the store accepts fits (librdkafka refuses a
            // larger record locally, on every retry).
            .set("message.max.bytes", self.max_message_bytes())
            // No record may be abandoned behind a later one: librdkafka's
            // gapless guarantee does not cover `message.timeout.ms`, so a
            // timed-out record 2 could be followed by a delivered record 3,
            // and dedupe by position would then take 2 as published. With
            // no timeout a record waits for its broker however long it is
            // away; every other failure that could leave a gap is fatal
            // (the producer is then rebuilt and the tails read again).
            .set("message.timeout.ms", "0");
        config
    }

    /// The topic of a category.
    pub fn topic(&self, category: &str) -> String {
        format!("{}.{category}", self.topic_prefix)
    }
}

/// Kafka's default partitioner (murmur2 of the key, as the Java client):
/// the partition of `key` among `partitions`.
pub fn partition_of(key: &[u8], partitions: i32) -> i32 {
    let hash = murmur2(key) & 0x7fff_ffff;
    (hash % partitions.max(1) as u32) as i32
}

fn murmur2(data: &[u8]) -> u32 {
    const SEED: u32 = 0x9747_b28c;
    const M: u32 = 0x5bd1_e995;
    let mut h = SEED ^ data.len() as u32;
    let mut chunks = data.chunks_exact(4);
    for chunk in &mut chunks {
        let mut k = u32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> 24;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M);
        h ^= k;
    }
    let tail = chunks.remainder();
    if tail.len() >= 3 {
        h ^= u32::from(tail[2]) << 16;
    }
    if tail.len() >= 2 {
        h ^= u32::from(tail[1]) << 8;
    }
    if !tail.is_empty() {
        h ^= u32::from(tail[0]);
        h = h.wrapping_mul(M);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^= h >> 15;
    h
}

type PartitionKey = (String, i32);

/// What the producer's delivery callback shares with the bus.
#[derive(Default)]
struct Acked {
    /// Per partition, the highest position the bus holds.
    heads: Mutex<HashMap<PartitionKey, u64>>,
    /// Event records sent and not yet acknowledged (or failed).
    in_flight: AtomicUsize,
    settled: Notify,
}

/// One record's way back from the delivery callback.
struct Sent {
    position: Option<u64>,
    done: oneshot::Sender<Result<(), KafkaError>>,
}

struct ProducerEvents(Arc<Acked>);

impl ClientContext for ProducerEvents {
    fn log(&self, level: RDKafkaLogLevel, facility: &str, message: &str) {
        librdkafka_log(level, facility, message);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        librdkafka_error(&error, reason);
    }
}

/// librdkafka's own log lines, as `tracing` events of target `librdkafka`
/// (instead of the `log` crate, which this process does not collect).
fn librdkafka_log(level: RDKafkaLogLevel, facility: &str, message: &str) {
    match level {
        RDKafkaLogLevel::Emerg | RDKafkaLogLevel::Alert | RDKafkaLogLevel::Critical | RDKafkaLogLevel::Error => {
            tracing::error!(target: "librdkafka", facility, "{message}")
        }
        RDKafkaLogLevel::Warning => tracing::warn!(target: "librdkafka", facility, "{message}"),
        RDKafkaLogLevel::Notice | RDKafkaLogLevel::Info => tracing::info!(target: "librdkafka", facility, "{message}"),
        RDKafkaLogLevel::Debug => tracing::debug!(target: "librdkafka", facility, "{message}"),
    }
}

/// librdkafka's error callback: a lost broker is a warning (it reconnects by
/// itself), an authorization or authentication failure an error.
fn librdkafka_error(error: &KafkaError, reason: &str) {
    if refused(error) {
        tracing::error!(target: "librdkafka", %error, "refused by Kafka: {reason}");
    } else {
        tracing::warn!(target: "librdkafka", %error, "{reason}");
    }
}

/// Whether Kafka refused the client for what it is, not for a passing fault:
/// authentication and authorization failures, which no retry mends.
fn refused(error: &KafkaError) -> bool {
    matches!(
        error.rdkafka_error_code(),
        Some(
            RDKafkaErrorCode::TopicAuthorizationFailed
                | RDKafkaErrorCode::GroupAuthorizationFailed
                | RDKafkaErrorCode::ClusterAuthorizationFailed
                | RDKafkaErrorCode::TransactionalIdAuthorizationFailed
                | RDKafkaErrorCode::SaslAuthenticationFailed
                | RDKafkaErrorCode::Authentication
                | RDKafkaErrorCode::DelegationTokenAuthorizationFailed
        )
    )
}

/// The context of the bus's other clients (tail reader, reply and request
/// readers): librdkafka's logs and errors bridged to `tracing`.
struct Bridged;

impl ClientContext for Bridged {
    fn log(&self, level: RDKafkaLogLevel, facility: &str, message: &str) {
        librdkafka_log(level, facility, message);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        librdkafka_error(&error, reason);
    }
}

impl ConsumerContext for Bridged {}

impl ProducerContext for ProducerEvents {
    type DeliveryOpaque = Box<Sent>;

    fn delivery(&self, result: &DeliveryResult<'_>, sent: Box<Sent>) {
        let outcome = match result {
            Ok(message) => {
                if let Some(position) = sent.position {
                    let mut heads = self.0.heads.lock().unwrap_or_else(|p| p.into_inner());
                    let head = heads.entry((message.topic().to_owned(), message.partition())).or_default();
                    *head = (*head).max(position);
                }
                Ok(())
            }
            Err((error, _)) => Err(error.clone()),
        };
        if sent.position.is_some() && self.0.in_flight.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.settled.notify_waiters();
        }
        let _ = sent.done.send(outcome);
    }
}

/// The Kafka bus. Cloning shares the producer and the admin client.
#[derive(Clone)]
pub struct KafkaBus {
    inner: Arc<Inner>,
}

struct Inner {
    config: KafkaConfig,
    /// Replaced by a new one after a fatal error ([`KafkaBus::renew_if_fatal`]).
    producer: std::sync::RwLock<Arc<ThreadedProducer<ProducerEvents>>>,
    admin: AdminClient<Bridged>,
    acked: Arc<Acked>,
    /// Topics known to exist, with their partition counts.
    topics: tokio::sync::Mutex<HashMap<String, i32>>,
    /// Partitions whose last record has been read (their head is known).
    tails_known: Mutex<HashSet<PartitionKey>>,
    /// The log this bus publishes ([`Publisher::bind_log`]).
    log: std::sync::RwLock<Option<super::BoundLog>>,
    /// Serializes publishes so dedupe decisions see each other's acks.
    publishing: tokio::sync::Mutex<()>,
    replies: tokio::sync::OnceCell<Arc<Replies>>,
}

impl std::fmt::Debug for KafkaBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaBus").field("config", &self.inner.config).finish()
    }
}

fn kafka(context: &'static str) -> impl FnOnce(KafkaError) -> BusError {
    move |error| BusError::backend(context, error)
}

/// How long a reply topic keeps answers (one hour).
const REPLY_RETENTION_MS: &str = "3600000";

/// Room for Kafka's record batch and request framing around one record.
const KAFKA_FRAMING_BYTES: usize = 64 << 10;

/// How long a metadata or admin call may take.
const ADMIN_TIMEOUT: Duration = Duration::from_secs(10);

impl KafkaBus {
    /// Creates the producer and admin client and checks that a broker answers.
    pub async fn connect(config: KafkaConfig) -> Result<Self, BusError> {
        config.check()?;
        let acked = Arc::new(Acked::default());
        let producer = new_producer(&config, &acked)?;
        let admin: AdminClient<Bridged> = config.client().create_with_context(Bridged).map_err(kafka("creating the Kafka admin client"))?;
        let bus = Self {
            inner: Arc::new(Inner {
                config,
                producer: std::sync::RwLock::new(producer),
                admin,
                acked,
                topics: tokio::sync::Mutex::new(HashMap::new()),
                tails_known: Mutex::new(HashSet::new()),
                log: std::sync::RwLock::new(None),
                publishing: tokio::sync::Mutex::new(()),
                replies: tokio::sync::OnceCell::new(),
            }),
        };
        bus.ping().await?;
        Ok(bus)
    }

    /// The log this bus publishes, once bound.
    fn bound(&self) -> Option<super::BoundLog> {
        self.inner.log.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The producer now in use.
    fn producer(&self) -> Arc<ThreadedProducer<ProducerEvents>> {
        self.inner.producer.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// After a fatal producer error (the idempotent producer cannot go on
    /// without risking a gap or a duplicate), every later send would fail:
    /// the producer is replaced by a new one (a new producer id) and the
    /// partitions' heads are read again from their last records. Returns the
    /// fatal error that was found, if any.
    fn renew_if_fatal(&self) -> Option<String> {
        let mut producer = self.inner.producer.write().unwrap_or_else(|p| p.into_inner());
        let (code, reason) = producer.client().fatal_error()?;
        let fatal = format!("{reason} ({code:?})");
        metrics::counter!("strata_kafka_producer_renewals_total").increment(1);
        match new_producer(&self.inner.config, &self.inner.acked) {
            Ok(renewed) => {
                tracing::error!(error = %fatal, "the Kafka producer failed fatally; replaced by a new one");
                *producer = renewed;
            }
            Err(error) => tracing::error!(error = %fatal, %error, "the Kafka producer failed fatally and could not be replaced yet"),
        }
        drop(producer);
        self.forget_heads();
        Some(fatal)
    }

    /// Forgets every partition's head, so that the next publish reads them
    /// again from the partitions' last records (after a failed publish, or
    /// when the relay lost its lease: what this process believed may no
    /// longer be what the broker holds).
    fn forget_heads(&self) {
        self.inner.tails_known.lock().unwrap_or_else(|p| p.into_inner()).clear();
        self.inner.acked.heads.lock().unwrap_or_else(|p| p.into_inner()).clear();
    }

    /// Deletes every topic of this bus's prefix (tests, teardown); a broker
    /// without DeleteTopics keeps them.
    pub async fn delete_topics(&self) {
        let prefix = &self.inner.config.topic_prefix;
        let producer = self.producer();
        let listed = tokio::task::spawn_blocking(move || producer.client().fetch_metadata(None, ADMIN_TIMEOUT)).await;
        let Ok(Ok(metadata)) = listed else { return };
        let mine: Vec<String> = metadata
            .topics()
            .iter()
            .map(|topic| topic.name().to_owned())
            .filter(|name| [".", "_rpc.", "_reply."].iter().any(|tail| name.starts_with(&format!("{prefix}{tail}"))))
            .collect();
        if mine.is_empty() {
            return;
        }
        let names: Vec<&str> = mine.iter().map(String::as_str).collect();
        let options = AdminOptions::new().request_timeout(Some(ADMIN_TIMEOUT));
        if let Err(error) = self.inner.admin.delete_topics(&names, &options).await {
            tracing::debug!(%error, "deleting topics failed");
        }
    }

    /// The settings this bus was opened with.
    pub fn config(&self) -> &KafkaConfig {
        &self.inner.config
    }

    /// Makes sure the topic of `category` exists (creating it as the bus
    /// would) and returns its name and partition count.
    pub async fn category_topic(&self, category: &str) -> Result<(String, i32), BusError> {
        let topic = self.inner.config.topic(category);
        let partitions = self.ensure_topic(&topic, self.inner.config.partitions).await?;
        Ok((topic, partitions))
    }

    /// Makes sure `topic` exists and returns its partition count.
    async fn ensure_topic(&self, topic: &str, partitions: i32) -> Result<i32, BusError> {
        self.ensure_topic_with(topic, partitions, &[]).await
    }

    /// [`KafkaBus::ensure_topic`] with more topic settings for a new topic.
    async fn ensure_topic_with(&self, topic: &str, partitions: i32, settings: &[(&str, &str)]) -> Result<i32, BusError> {
        let mut topics = self.inner.topics.lock().await;
        if let Some(&count) = topics.get(topic) {
            return Ok(count);
        }
        if self.inner.config.create_topics {
            let max_message_bytes = self.inner.config.max_message_bytes();
            let min_insync = self.inner.config.min_insync_replicas.map(|n| n.to_string());
            let mut new = NewTopic::new(topic, partitions, TopicReplication::Fixed(self.inner.config.replication))
                .set("max.message.bytes", &max_message_bytes);
            if let Some(min_insync) = &min_insync {
                new = new.set("min.insync.replicas", min_insync);
            }
            for (key, value) in settings {
                new = new.set(key, value);
            }
            let options = AdminOptions::new().operation_timeout(Some(ADMIN_TIMEOUT)).request_timeout(Some(ADMIN_TIMEOUT));
            let results = self.inner.admin.create_topics([&new], &options).await.map_err(kafka("creating a Kafka topic"))?;
            for result in results {
                match result {
                    Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                    Err((_, code)) => return Err(BusError::backend("creating a Kafka topic", KafkaError::AdminOp(code))),
                }
            }
        }
        // Otherwise the topic exists, or the broker creates it on this metadata request.
        let count = self.partition_count(topic).await?;
        topics.insert(topic.to_owned(), count);
        Ok(count)
    }

    /// Reads the topic's partition count from metadata, waiting for a new
    /// topic's leaders to be known.
    async fn partition_count(&self, topic: &str) -> Result<i32, BusError> {
        let deadline = Instant::now() + ADMIN_TIMEOUT;
        loop {
            let producer = self.producer();
            let name = topic.to_owned();
            let metadata = tokio::task::spawn_blocking(move || {
                let metadata = producer.client().fetch_metadata(Some(&name), Duration::from_secs(5))?;
                Ok::<_, KafkaError>(
                    metadata.topics().first().map(|t| (t.error(), t.partitions().iter().all(|p| p.leader() >= 0), t.partitions().len())),
                )
            })
            .await
            .map_err(|join| BusError::backend("reading Kafka metadata", join))?
            .map_err(kafka("reading Kafka metadata"))?;
            match metadata {
                Some((None, true, count)) if count > 0 => return Ok(count as i32),
                other if Instant::now() >= deadline => {
                    return Err(BusError::backend("reading Kafka metadata", format!("topic {topic} is not ready: {other:?}")))
                }
                _ => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    }

    /// Learns the highest position held by each partition not seen yet,
    /// from its last record.
    async fn learn_tails(&self, partitions: Vec<PartitionKey>) -> Result<(), BusError> {
        let unknown: Vec<PartitionKey> = {
            let known = self.inner.tails_known.lock().unwrap_or_else(|p| p.into_inner());
            partitions.into_iter().filter(|key| !known.contains(key)).collect()
        };
        if unknown.is_empty() {
            return Ok(());
        }
        let config = self.inner.config.clone();
        let wanted = unknown.clone();
        let tails = tokio::task::spawn_blocking(move || read_tails(&config, &wanted))
            .await
            .map_err(|join| BusError::backend("reading the last records", join))??;
        // A tail's position is ours to trust only if this log wrote it, and
        // holds the same event there.
        let log = self.bound();
        let counts = self.inner.topics.lock().await.clone();
        let mut heads = Vec::with_capacity(tails.len());
        for tail in tails {
            // Streams are placed by hashing over the partition count: with
            // another count they would land in other partitions, behind or
            // ahead of their earlier events.
            if let (Some(was), Some(&now)) = (tail.partitions, counts.get(&tail.key.0)) {
                if was != now {
                    return Err(BusError::backend(
                        "checking the topic's partitions",
                        format!(
                            "topic {} had {was} partitions when its records were written and has {now} now: streams would move to other partitions and lose their order; a topic's partition count must not change (recreate it with {was}, or move to a new topic_prefix)",
                            tail.key.0
                        ),
                    ));
                }
            }
            let provenance = match &log {
                Some(log) => {
                    let place = format!("Kafka partition {}/{}", tail.key.0, tail.key.1);
                    let origin =
                        super::RecordOrigin { place: &place, log: tail.log.as_ref(), event_id: tail.event_id, position: tail.position };
                    log.judge(&origin).await?
                }
                None => super::Provenance::Ours,
            };
            if provenance == super::Provenance::Ours {
                heads.push((tail.key, tail.position));
            } else {
                tracing::warn!(topic = %tail.key.0, partition = tail.key.1, "the partition's last record is from before this log's last restore; publishing again from the checkpoint");
            }
        }
        let mut held = self.inner.acked.heads.lock().unwrap_or_else(|p| p.into_inner());
        for (key, position) in heads {
            let head = held.entry(key).or_default();
            *head = (*head).max(position);
        }
        drop(held);
        self.inner.tails_known.lock().unwrap_or_else(|p| p.into_inner()).extend(unknown);
        Ok(())
    }

    /// Waits until no event record of an earlier (abandoned) publish is in flight.
    async fn settle_in_flight(&self) -> Result<(), BusError> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(35);
        loop {
            let settled = self.inner.acked.settled.notified();
            if self.inner.acked.in_flight.load(Ordering::Acquire) == 0 {
                return Ok(());
            }
            if tokio::time::timeout_at(deadline, settled).await.is_err() {
                return Err(BusError::backend("publishing to Kafka", "records of an earlier publish are still in flight"));
            }
        }
    }

    /// Sends one record; waits while the producer's queue is full.
    async fn send(&self, record: Record<'_>, sent: Box<Sent>) -> Result<(), BusError> {
        let mut sent = sent;
        let producer = self.producer();
        loop {
            let mut base = BaseRecord::with_opaque_to(record.topic, sent).key(record.key).payload(record.payload);
            if let Some(partition) = record.partition {
                base = base.partition(partition);
            }
            if let Some(headers) = &record.headers {
                base = base.headers(headers.clone());
            }
            match producer.send(base) {
                Ok(()) => return Ok(()),
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                    sent = back.delivery_opaque;
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
                Err((error, _)) => {
                    self.renew_if_fatal();
                    return Err(BusError::backend("producing to Kafka", error));
                }
            }
        }
    }
}

struct Record<'a> {
    topic: &'a str,
    partition: Option<i32>,
    key: &'a [u8],
    payload: &'a [u8],
    headers: Option<OwnedHeaders>,
}

/// A partition's last record, as far as dedupe is concerned.
struct Tail {
    key: PartitionKey,
    position: u64,
    /// The log that wrote it (`None`: written before logs had identities).
    log: Option<crate::LogIdentity>,
    /// Its event id.
    event_id: Option<Uuid>,
    /// The topic's partition count when it was written.
    partitions: Option<i32>,
}

/// Reads the last record of each partition (blocking) and returns the
/// position header of those that have one.
fn read_tails(config: &KafkaConfig, partitions: &[PartitionKey]) -> Result<Vec<Tail>, BusError> {
    let consumer: BaseConsumer<Bridged> = config
        .client()
        .set("group.id", format!("{}.tail-reader", config.topic_prefix))
        .set("enable.auto.commit", "false")
        .create_with_context(Bridged)
        .map_err(kafka("creating the tail reader"))?;
    let mut assignment = TopicPartitionList::new();
    let mut waiting = HashSet::new();
    for (topic, partition) in partitions {
        let (low, high) = consumer.fetch_watermarks(topic, *partition, ADMIN_TIMEOUT).map_err(kafka("reading watermarks"))?;
        if high > low {
            assignment.add_partition_offset(topic, *partition, Offset::Offset(high - 1)).map_err(kafka("assigning a partition"))?;
            waiting.insert((topic.clone(), *partition));
        }
    }
    let mut heads = Vec::new();
    if waiting.is_empty() {
        return Ok(heads);
    }
    consumer.assign(&assignment).map_err(kafka("assigning partitions"))?;
    let deadline = Instant::now() + ADMIN_TIMEOUT;
    while !waiting.is_empty() {
        if Instant::now() >= deadline {
            return Err(BusError::backend("reading the last records", format!("{} partitions did not answer", waiting.len())));
        }
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(message)) => {
                let key = (message.topic().to_owned(), message.partition());
                if waiting.remove(&key) {
                    if let Some(position) = header(&message, headers::POSITION).and_then(|v| std::str::from_utf8(v).ok()?.parse().ok()) {
                        let log = header(&message, headers::LOG_ID).and_then(|v| crate::LogIdentity::parse(std::str::from_utf8(v).ok()?));
                        let event_id = header(&message, headers::EVENT_ID).and_then(|v| Uuid::try_parse_ascii(v).ok());
                        let partitions = header(&message, headers::PARTITIONS).and_then(|v| std::str::from_utf8(v).ok()?.parse().ok());
                        heads.push(Tail { key, position, log, event_id, partitions });
                    }
                }
            }
            Some(Err(error)) => tracing::debug!(%error, "reading a partition's last record"),
            None => {}
        }
    }
    Ok(heads)
}

/// A producer with the bus's settings whose acknowledgements update `acked`.
fn new_producer(config: &KafkaConfig, acked: &Arc<Acked>) -> Result<Arc<ThreadedProducer<ProducerEvents>>, BusError> {
    let producer: ThreadedProducer<ProducerEvents> =
        config.producer_settings().create_with_context(ProducerEvents(acked.clone())).map_err(kafka("creating the Kafka producer"))?;
    Ok(Arc::new(producer))
}

fn header<'a>(message: &'a BorrowedMessage<'_>, name: &str) -> Option<&'a [u8]> {
    message.headers()?.iter().find(|h| h.key == name).and_then(|h| h.value)
}

/// The headers of an event's record, naming the log that wrote it and the
/// topic's partition count when known.
pub fn event_headers(event: &StoredEvent, log: Option<&crate::LogIdentity>, partitions: Option<i32>) -> OwnedHeaders {
    let id = event.event_id.to_string();
    let position = event.position.0.to_string();
    let mut headers = OwnedHeaders::new_with_capacity(6)
        .insert(Header { key: headers::EVENT_ID, value: Some(id.as_bytes()) })
        .insert(Header { key: headers::EVENT_TYPE, value: Some(event.event_type.as_bytes()) })
        .insert(Header { key: headers::POSITION, value: Some(position.as_bytes()) });
    if let Some(log) = log {
        headers = headers.insert(Header { key: headers::LOG_ID, value: Some(log.to_string().as_bytes()) });
    }
    if let Some(partitions) = partitions {
        headers = headers.insert(Header { key: headers::PARTITIONS, value: Some(partitions.to_string().as_bytes()) });
    }
    if let Some(traceparent) = &event.header_traceparent() {
        headers = headers.insert(Header { key: headers::TRACEPARENT, value: Some(traceparent.as_bytes()) });
    }
    headers
}

#[async_trait]
impl Publisher for KafkaBus {
    async fn ping(&self) -> Result<(), BusError> {
        if let Some(fatal) = self.renew_if_fatal() {
            return Err(BusError::backend("reaching Kafka", format!("the producer had failed fatally and was replaced: {fatal}")));
        }
        let producer = self.producer();
        tokio::task::spawn_blocking(move || producer.client().fetch_metadata(None, Duration::from_secs(5)).map(|_| ()))
            .await
            .map_err(|join| BusError::backend("reaching Kafka", join))?
            .map_err(kafka("reaching Kafka"))
    }

    async fn publish(&self, events: &[StoredEvent]) -> Result<Vec<Published>, BusError> {
        let _one_at_a_time = self.inner.publishing.lock().await;
        let result = self.publish_in_order(events).await;
        if result.is_err() {
            // What failed may have left the partitions otherwise than this
            // process believes; the next publish reads their tails again.
            self.renew_if_fatal();
            self.forget_heads();
        }
        result
    }

    async fn bind_log(&self, log: &super::BoundLog) -> Result<(), BusError> {
        *self.inner.log.write().unwrap_or_else(|p| p.into_inner()) = Some(log.clone());
        // The tails are judged against this log before any publish.
        self.forget_heads();
        Ok(())
    }

    async fn abandon(&self) {
        // A relay that lost its lease must not deliver what it still has
        // queued behind the new leader's records. Records already sent to
        // a broker cannot be called back; they are duplicates the readers'
        // stream guards skip.
        let producer = self.producer();
        producer.purge(rdkafka::producer::PurgeConfig::default().queue());
        self.forget_heads();
    }
}

impl KafkaBus {
    /// [`Publisher::publish`] under the publishing lock.
    async fn publish_in_order(&self, events: &[StoredEvent]) -> Result<Vec<Published>, BusError> {
        self.settle_in_flight().await?;
        // Where each event goes.
        let mut routes = Vec::with_capacity(events.len());
        let mut counts = Vec::with_capacity(events.len());
        for event in events {
            let topic = self.inner.config.topic(event.stream_id.category());
            let partitions = self.ensure_topic(&topic, self.inner.config.partitions).await?;
            let partition = partition_of(event.stream_id.as_str().as_bytes(), partitions);
            routes.push((topic, partition));
            counts.push(partitions);
        }
        let mut touched: Vec<PartitionKey> = routes.clone();
        touched.sort();
        touched.dedup();
        self.learn_tails(touched).await?;
        // Decide duplicates against what the bus holds and what this call sends.
        let mut heads: HashMap<PartitionKey, u64> = {
            let held = self.inner.acked.heads.lock().unwrap_or_else(|p| p.into_inner());
            routes.iter().map(|key| (key.clone(), held.get(key).copied().unwrap_or(0))).collect()
        };
        let log = self.bound().map(|log| log.identity);
        let mut published = Vec::with_capacity(events.len());
        let mut waits = Vec::with_capacity(events.len());
        for ((event, route), partitions) in events.iter().zip(&routes).zip(counts) {
            let head = heads.entry(route.clone()).or_default();
            if event.position.0 <= *head {
                published.push(Published { duplicate: true });
                continue;
            }
            *head = event.position.0;
            published.push(Published { duplicate: false });
            let (done, wait) = oneshot::channel();
            let payload = encode_stored(event);
            self.inner.acked.in_flight.fetch_add(1, Ordering::AcqRel);
            let record = Record {
                topic: &route.0,
                partition: Some(route.1),
                key: event.stream_id.as_str().as_bytes(),
                payload: &payload,
                headers: Some(event_headers(event, log.as_ref(), Some(partitions))),
            };
            if let Err(error) = self.send(record, Box::new(Sent { position: Some(event.position.0), done })).await {
                self.inner.acked.in_flight.fetch_sub(1, Ordering::AcqRel);
                return Err(error);
            }
            waits.push(wait);
        }
        for wait in waits {
            match wait.await {
                Ok(Ok(())) => {}
                Ok(Err(error)) => return Err(BusError::backend("waiting for a Kafka acknowledgement", error)),
                Err(_) => return Err(BusError::backend("waiting for a Kafka acknowledgement", "the producer dropped the record")),
            }
        }
        Ok(published)
    }
}

/// Per-partition bookkeeping of a consumer group member.
#[derive(Default)]
struct Tracker {
    partitions: HashMap<PartitionKey, Track>,
    /// Bumped for every partition this member starts tracking, so that
    /// deliveries and acks from before a rebalance are told apart.
    generations: u64,
}

struct Track {
    generation: u64,
    /// Delivered offsets, acked or not, above the committed one.
    pending: BTreeMap<i64, Slot>,
    /// How often each offset was delivered while this member held the partition.
    deliveries: HashMap<i64, u64>,
    /// The next offset to commit, once it moved.
    commit: Option<i64>,
    /// A seek back to this offset was asked for and its record has not come
    /// again yet: records above it are from before the seek (dropped, they
    /// come again after it), and the commit point cannot pass it.
    rewound: Option<Rewound>,
}

#[derive(Debug, Clone, Copy)]
struct Rewound {
    offset: i64,
    /// When the seek was asked for; asked again if its record has not come
    /// back within `ack_wait` (a seek that timed out or failed).
    at: Instant,
}

struct Slot {
    acked: bool,
    since: Instant,
}

/// Which partition, offset and tenure a delivery belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Ticket {
    key: PartitionKey,
    offset: i64,
    generation: u64,
}

impl Tracker {
    /// Records a delivery; returns its ticket and how often it was delivered,
    /// or `None` for a record fetched before a seek back that has not landed
    /// yet (not handed out: it comes again after the seek).
    fn delivered(&mut self, key: PartitionKey, offset: i64) -> Option<(Ticket, u64)> {
        let generations = &mut self.generations;
        let track = self.partitions.entry(key.clone()).or_insert_with(|| {
            *generations += 1;
            Track { generation: *generations, pending: BTreeMap::new(), deliveries: HashMap::new(), commit: None, rewound: None }
        });
        if let Some(rewound) = track.rewound {
            match offset.cmp(&rewound.offset) {
                std::cmp::Ordering::Greater => return None,
                std::cmp::Ordering::Equal => track.rewound = None,
                std::cmp::Ordering::Less => {}
            }
        }
        let count = track.deliveries.entry(offset).or_default();
        *count += 1;
        track.pending.insert(offset, Slot { acked: false, since: Instant::now() });
        Some((Ticket { key, offset, generation: track.generation }, *count))
    }

    fn track(&mut self, ticket: &Ticket) -> Option<&mut Track> {
        self.partitions.get_mut(&ticket.key).filter(|track| track.generation == ticket.generation)
    }

    /// Is the ticket's partition still this member's, in the same tenure?
    #[cfg(test)]
    fn owns(&self, ticket: &Ticket) -> bool {
        self.partitions.get(&ticket.key).is_some_and(|track| track.generation == ticket.generation)
    }

    /// The ticket's delivery leaves the member's queue for its subscriber:
    /// false if its partition moved meanwhile (the new owner delivers it) or
    /// it was rewound. Its `ack_wait` starts now, not when it was fetched, so
    /// a subscriber that is busy with earlier records does not make records
    /// still queued here expire.
    fn hand_out(&mut self, ticket: &Ticket) -> bool {
        let Some(track) = self.track(ticket) else { return false };
        let Some(slot) = track.pending.get_mut(&ticket.offset) else { return false };
        slot.since = Instant::now();
        true
    }

    /// Marks a delivery handled; true if the partition's commit point moved.
    fn ack(&mut self, ticket: &Ticket) -> bool {
        let Some(track) = self.track(ticket) else { return false };
        let Some(slot) = track.pending.get_mut(&ticket.offset) else { return false };
        slot.acked = true;
        let mut moved = false;
        while let Some(entry) = track.pending.first_entry() {
            if !entry.get().acked {
                break;
            }
            let (offset, _) = entry.remove_entry();
            track.commit = Some(offset + 1);
            moved = true;
        }
        if moved {
            let commit = track.commit.unwrap_or(0);
            track.deliveries.retain(|&offset, _| offset >= commit);
        }
        moved
    }

    /// Forgets the ticket's offset and everything after it in the partition
    /// (they come again after a seek), and holds the commit point at or below
    /// it until it comes again; true if the partition is still tracked.
    fn rewind(&mut self, ticket: &Ticket) -> bool {
        let offset = ticket.offset;
        let Some(track) = self.track(ticket) else { return false };
        let _ = track.pending.split_off(&offset);
        let offset = track.rewound.map_or(offset, |rewound| rewound.offset.min(offset));
        track.rewound = Some(Rewound { offset, at: Instant::now() });
        true
    }

    /// Per partition, the first unacked delivery older than `ack_wait`, or a
    /// seek back whose record has not come again within `ack_wait`.
    fn expired(&self, ack_wait: Duration) -> Vec<Ticket> {
        let now = Instant::now();
        self.partitions
            .iter()
            .filter_map(|(key, track)| {
                let ticket = |offset| Ticket { key: key.clone(), offset, generation: track.generation };
                if let Some(rewound) = track.rewound {
                    let first = track.pending.iter().find(|(_, slot)| !slot.acked).map_or(rewound.offset, |(&offset, _)| offset);
                    return (now.duration_since(rewound.at) >= ack_wait).then(|| ticket(first));
                }
                let (&offset, slot) = track.pending.iter().find(|(_, slot)| !slot.acked)?;
                (now.duration_since(slot.since) >= ack_wait).then(|| ticket(offset))
            })
            .collect()
    }

    /// Are deliveries of these partitions still being handled?
    #[cfg(test)]
    fn busy(&self, partitions: &HashSet<PartitionKey>) -> bool {
        partitions.iter().any(|key| self.partitions.get(key).is_some_and(|track| track.pending.values().any(|slot| !slot.acked)))
    }

    fn commits(&self, only: Option<&HashSet<PartitionKey>>) -> TopicPartitionList {
        let mut list = TopicPartitionList::new();
        for ((topic, partition), track) in &self.partitions {
            if only.is_some_and(|only| !only.contains(&(topic.clone(), *partition))) {
                continue;
            }
            if let Some(commit) = track.commit {
                let _ = list.add_partition_offset(topic, *partition, Offset::Offset(commit));
            }
        }
        list
    }
}

/// Commits what is done before partitions move to another member.
struct GroupEvents {
    tracker: Arc<Mutex<Tracker>>,
}

impl ClientContext for GroupEvents {
    fn log(&self, level: RDKafkaLogLevel, facility: &str, message: &str) {
        librdkafka_log(level, facility, message);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        librdkafka_error(&error, reason);
    }
}

impl ConsumerContext for GroupEvents {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let Rebalance::Revoke(list) = rebalance else { return };
        let revoked: HashSet<PartitionKey> =
            list.elements().iter().map(|element| (element.topic().to_owned(), element.partition())).collect();
        // Deliveries still in hand are not waited for (this callback runs on
        // the runtime's thread: blocking it would stall the very work it
        // waits for); their acks arrive too late and the next owner does
        // them again, which consumers tolerate.
        let mut tracker = self.tracker.lock().unwrap_or_else(|p| p.into_inner());
        let commits = tracker.commits(Some(&revoked));
        if commits.count() > 0 {
            if let Err(error) = consumer.commit(&commits, CommitMode::Sync) {
                tracing::warn!(%error, "committing revoked partitions failed; their records will come again");
            }
        }
        // Deliveries of these partitions not yet handed out are dropped
        // (`owns`), and late acks change nothing: the new owner has them.
        tracker.partitions.retain(|key, _| !revoked.contains(key));
        drop(tracker);
        // A pause outlives the assignment in librdkafka: a partition revoked
        // while paused would come back paused, and its resume would fetch
        // from where this member stopped reading in its earlier tenure, not
        // from the group's commit. Resumed here, while still assigned, it
        // comes back as new.
        if let Err(error) = consumer.resume(list) {
            tracing::debug!(%error, "resuming revoked partitions failed");
        }
    }
}

/// What a delivery's settlement asks of the member's loop.
enum Signal {
    /// A commit point moved.
    Commit,
    /// Deliver from this offset again.
    Rewind(Ticket),
}

/// Is this consumer error one librdkafka recovers from by itself?
fn transient(error: &KafkaError) -> bool {
    match error.rdkafka_error_code() {
        Some(code) => !matches!(code, RDKafkaErrorCode::Fatal | RDKafkaErrorCode::InvalidGroupId) && !refused(error),
        None => true,
    }
}

type Handed = (Option<Ticket>, Result<Delivery, BusError>);

/// Records held for a subscriber with no room, beyond its channel, at which
/// the member pauses its partitions.
const PAUSE_AT: usize = 1_024;
/// Held records below which it resumes them.
const RESUME_BELOW: usize = 256;

/// A group member's loop: takes records off Kafka, hands them out, and
/// turns acks and nacks into commits and seeks.
async fn consume(
    consumer: StreamConsumer<GroupEvents>,
    tracker: Arc<Mutex<Tracker>>,
    deliveries: mpsc::Sender<Handed>,
    signal: mpsc::UnboundedSender<Signal>,
    mut signals: mpsc::UnboundedReceiver<Signal>,
    ack_wait: Duration,
) {
    let mut check = tokio::time::interval((ack_wait / 4).clamp(Duration::from_millis(20), Duration::from_secs(1)));
    check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Flow control: records the subscriber has no room for wait here; past
    // `PAUSE_AT` of them the member's partitions are paused (resumed below
    // `RESUME_BELOW`), and the loop keeps polling all along, so
    // that rebalances, commits and seeks go on however slowly the
    // subscriber reads (a loop stuck on a full channel would stop polling:
    // its partitions would move only after `max.poll.interval.ms`).
    let mut waiting: VecDeque<Handed> = VecDeque::new();
    let mut paused = false;
    loop {
        tokio::select! {
            // Settlements first: acks sent just before the stream was dropped still commit.
            biased;
            Some(first) = signals.recv() => {
                // Take every signal that is ready, then commit once.
                let mut batch = vec![first];
                while let Ok(next) = signals.try_recv() {
                    batch.push(next);
                }
                let mut rewind = Vec::new();
                let mut commit = false;
                {
                    let mut tracker = tracker.lock().unwrap_or_else(|p| p.into_inner());
                    for signal in batch {
                        match signal {
                            Signal::Commit => commit = true,
                            Signal::Rewind(ticket) => {
                                if tracker.rewind(&ticket) {
                                    rewind.push(ticket);
                                }
                            }
                        }
                    }
                }
                if commit {
                    let commits = tracker.lock().unwrap_or_else(|p| p.into_inner()).commits(None);
                    if let Err(error) = consumer.commit(&commits, CommitMode::Async) {
                        tracing::debug!(%error, "committing offsets failed; records will come again");
                    }
                }
                seek(&consumer, rewind);
            }
            () = deliveries.closed() => return,
            permit = deliveries.reserve(), if !waiting.is_empty() => {
                let Ok(permit) = permit else { return };
                if let Some(handed) = waiting.pop_front() {
                    permit.send(handed);
                }
                if waiting.len() <= RESUME_BELOW && paused {
                    paused = flow(&consumer, false);
                }
            }
            message = consumer.recv() => {
                let message = match message {
                    Ok(message) => message,
                    Err(error) if transient(&error) => {
                        tracing::debug!(%error, "Kafka consumer error (librdkafka recovers)");
                        continue;
                    }
                    Err(error) => {
                        let _ = deliveries.send((None, Err(BusError::backend("consuming from Kafka", error)))).await;
                        return;
                    }
                };
                let key = (message.topic().to_owned(), message.partition());
                let offset = message.offset();
                let name = format!("{}/{}@{}", key.0, key.1, offset);
                let decoded = WireEvent::decode(&name, message.payload().unwrap_or_default());
                let header = message.headers().and_then(|headers| {
                    headers.iter().find(|header| header.key == headers::TRACEPARENT).and_then(|header| header.value).and_then(|value| std::str::from_utf8(value).ok()).map(str::to_owned)
                });
                drop(message);
                let event = match decoded {
                    Ok(event) => event,
                    Err(error) => {
                        let _ = deliveries.send((None, Err(error))).await;
                        return;
                    }
                };
                let Some((ticket, count)) = tracker.lock().unwrap_or_else(|p| p.into_inner()).delivered(key, offset) else {
                    tracing::debug!(record = %name, "dropping a record fetched before a seek back");
                    continue;
                };
                let (signal, tracker, handed) = (signal.clone(), tracker.clone(), ticket.clone());
                let delivery = Delivery::new(event, count, Box::new(move |settlement| {
                    Box::pin(async move {
                        let message = match settlement {
                            Settlement::Ack => {
                                let moved = tracker.lock().unwrap_or_else(|p| p.into_inner()).ack(&ticket);
                                if !moved {
                                    return Ok(());
                                }
                                Signal::Commit
                            }
                            Settlement::Nack => Signal::Rewind(ticket),
                        };
                        signal.send(message).map_err(|_| BusError::backend("acknowledging a Kafka record", "the subscription has ended"))
                    })
                })).traced(header);
                let handed = (Some(handed), Ok(delivery));
                let handed = if waiting.is_empty() {
                    match deliveries.try_send(handed) {
                        Ok(()) => continue,
                        Err(mpsc::error::TrySendError::Full(handed)) => handed,
                        Err(mpsc::error::TrySendError::Closed(_)) => return,
                    }
                } else {
                    handed
                };
                waiting.push_back(handed);
                // Paused only well ahead of the subscriber, so that it
                // always finds a full queue (its batches stay large).
                // A record while paused (fetched before the pause, or of a
                // partition assigned since) pauses again.
                if waiting.len() >= PAUSE_AT {
                    paused = flow(&consumer, true);
                }
            }
            _ = check.tick() => {
                let expired = tracker.lock().unwrap_or_else(|p| p.into_inner()).expired(ack_wait);
                if !expired.is_empty() {
                    {
                        let mut tracker = tracker.lock().unwrap_or_else(|p| p.into_inner());
                        for ticket in &expired {
                            tracker.rewind(ticket);
                        }
                    }
                    seek(&consumer, expired);
                }
            }
        }
    }
}

/// Pauses (or resumes) fetching for every partition the member holds;
/// true if they are paused afterwards. librdkafka drops what it fetched
/// ahead for a paused partition and fetches again, on resume, from the
/// record after the last one it returned, so nothing is skipped.
fn flow(consumer: &StreamConsumer<GroupEvents>, pause: bool) -> bool {
    let assignment = match consumer.assignment() {
        Ok(assignment) => assignment,
        Err(error) => {
            tracing::debug!(%error, "reading the member's assignment failed");
            return !pause;
        }
    };
    let result = if pause { consumer.pause(&assignment) } else { consumer.resume(&assignment) };
    match result {
        Ok(()) => pause,
        Err(error) => {
            tracing::debug!(%error, pause, "pausing or resuming partitions failed");
            !pause
        }
    }
}

/// Seeks each partition back to the lowest offset asked for.
fn seek(consumer: &StreamConsumer<GroupEvents>, rewind: Vec<Ticket>) {
    let mut lowest: HashMap<PartitionKey, i64> = HashMap::new();
    for ticket in rewind {
        let entry = lowest.entry(ticket.key).or_insert(ticket.offset);
        *entry = (*entry).min(ticket.offset);
    }
    for ((topic, partition), offset) in lowest {
        if let Err(error) = consumer.seek(&topic, partition, Offset::Offset(offset), Duration::from_secs(5)) {
            // The partition moved away meanwhile (its revocation forgets it
            // and the new owner starts at the commit), or the seek timed out:
            // the partition stays held at `offset` and is sought again once
            // `ack_wait` passed without its record.
            tracing::debug!(%topic, partition, offset, %error, "seeking back failed");
        }
    }
}

/// A stream over a channel's receiver.
fn receiver_stream<T: Send + 'static>(receiver: mpsc::Receiver<T>) -> BoxStream<'static, T> {
    futures_util::stream::unfold(receiver, |mut receiver| async move { receiver.recv().await.map(|item| (item, receiver)) }).boxed()
}

fn regex_escape(text: &str) -> String {
    text.chars().flat_map(|c| if c.is_ascii_alphanumeric() || c == '_' { vec![c] } else { vec!['\\', c] }).collect()
}

#[async_trait]
impl Subscriber for KafkaBus {
    async fn subscribe(&self, subscription: Subscription) -> Result<BoxStream<'static, Result<Delivery, BusError>>, BusError> {
        subscription.check()?;
        let config = &self.inner.config;
        let topic = match &subscription.category {
            Some(category) => {
                let topic = config.topic(category);
                self.ensure_topic(&topic, config.partitions).await?;
                topic
            }
            // Every category, present and future (metadata is refreshed every second).
            None => format!("^{}\\..+", regex_escape(&config.topic_prefix)),
        };
        let tracker = Arc::new(Mutex::new(Tracker::default()));
        let mut settings = config.client();
        settings
            .set("group.id", format!("{}.{}", config.topic_prefix, subscription.group))
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "earliest")
            .set("topic.metadata.refresh.interval.ms", config.metadata_refresh.as_millis().max(100).to_string())
            .set("fetch.wait.max.ms", config.fetch_wait.as_millis().to_string());
        config.session(&mut settings);
        let consumer: StreamConsumer<GroupEvents> =
            settings.create_with_context(GroupEvents { tracker: tracker.clone() }).map_err(kafka("creating a Kafka consumer"))?;
        consumer.subscribe(&[&topic]).map_err(kafka("subscribing to Kafka topics"))?;
        let (deliveries, receiver) = mpsc::channel(64);
        let (signal, signals) = mpsc::unbounded_channel();
        tokio::spawn(consume(consumer, tracker.clone(), deliveries, signal, signals, subscription.ack_wait));
        // A delivery whose partition moved to another member while it waited
        // here is not handed out (the new owner delivers it), nor one rewound
        // meanwhile (it comes again after the seek).
        Ok(receiver_stream(receiver)
            .filter_map(move |(ticket, delivery)| {
                let current = ticket.is_none_or(|ticket| tracker.lock().unwrap_or_else(|p| p.into_inner()).hand_out(&ticket));
                std::future::ready(current.then_some(delivery))
            })
            .boxed())
    }
}

/// The requesting side of a process: its reply topic and who waits for what.
struct Replies {
    topic: String,
    waiting: Mutex<HashMap<Uuid, oneshot::Sender<Vec<u8>>>>,
}

impl KafkaBus {
    async fn replies(&self) -> Result<Arc<Replies>, BusError> {
        self.inner
            .replies
            .get_or_try_init(|| async {
                let topic = format!("{}_reply.{}", self.inner.config.topic_prefix, Uuid::new_v4().simple());
                // Answers matter for seconds: a topic left by a process that
                // died (its exit deletes it, see `close`) keeps nothing for long.
                self.ensure_topic_with(&topic, 1, &[("retention.ms", REPLY_RETENTION_MS)]).await?;
                let consumer: StreamConsumer<Bridged> = self
                    .inner
                    .config
                    .client()
                    .set("group.id", topic.clone())
                    .set("enable.auto.commit", "false")
                    .set("fetch.wait.max.ms", self.inner.config.fetch_wait.min(Duration::from_millis(20)).as_millis().to_string())
                    .create_with_context(Bridged)
                    .map_err(kafka("creating the reply reader"))?;
                let mut assignment = TopicPartitionList::new();
                assignment.add_partition_offset(&topic, 0, Offset::Beginning).map_err(kafka("assigning the reply topic"))?;
                consumer.assign(&assignment).map_err(kafka("assigning the reply topic"))?;
                let replies = Arc::new(Replies { topic, waiting: Mutex::new(HashMap::new()) });
                let weak = Arc::downgrade(&replies);
                tokio::spawn(async move {
                    loop {
                        let message = match consumer.recv().await {
                            Ok(message) => message,
                            Err(error) => {
                                tracing::debug!(%error, "reading answers");
                                continue;
                            }
                        };
                        let Some(replies) = weak.upgrade() else { return };
                        let id = header(&message, headers::CORRELATION_ID).and_then(|v| Uuid::try_parse_ascii(v).ok());
                        if let Some(id) = id {
                            let waiter = replies.waiting.lock().unwrap_or_else(|p| p.into_inner()).remove(&id);
                            if let Some(waiter) = waiter {
                                let _ = waiter.send(message.payload().unwrap_or_default().to_vec());
                            }
                        }
                    }
                });
                Ok(replies)
            })
            .await
            .cloned()
    }

    fn request_topic(&self, service: &str) -> String {
        format!("{}_rpc.{service}", self.inner.config.topic_prefix)
    }
}

fn check_service(service: &str) -> Result<(), BusError> {
    if service.is_empty() || !service.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') {
        return Err(BusError::InvalidSubscription { reason: format!("service {service:?} must be letters, digits, '-' or '_'") });
    }
    Ok(())
}

#[async_trait]
impl Requester for KafkaBus {
    async fn close(&self) {
        let Some(replies) = self.inner.replies.get() else { return };
        let options = AdminOptions::new().request_timeout(Some(ADMIN_TIMEOUT));
        match self.inner.admin.delete_topics(&[replies.topic.as_str()], &options).await {
            Ok(_) => tracing::debug!(topic = %replies.topic, "reply topic deleted"),
            Err(error) => tracing::warn!(topic = %replies.topic, %error, "the reply topic was not deleted"),
        }
    }

    async fn request(&self, service: &str, payload: Vec<u8>, timeout: Duration) -> Result<Option<Vec<u8>>, BusError> {
        check_service(service)?;
        let replies = self.replies().await?;
        let topic = self.request_topic(service);
        self.ensure_topic(&topic, self.inner.config.partitions).await?;
        let id = Uuid::new_v4();
        let (answer, wait) = oneshot::channel();
        replies.waiting.lock().unwrap_or_else(|p| p.into_inner()).insert(id, answer);
        let forget = || replies.waiting.lock().unwrap_or_else(|p| p.into_inner()).remove(&id);
        let correlation = id.to_string();
        let deadline = super::deadline_text(timeout);
        let headers = OwnedHeaders::new_with_capacity(3)
            .insert(Header { key: headers::CORRELATION_ID, value: Some(correlation.as_bytes()) })
            .insert(Header { key: headers::REPLY_TO, value: Some(replies.topic.as_bytes()) })
            .insert(Header { key: headers::DEADLINE, value: Some(deadline.as_bytes()) });
        let (done, sent) = oneshot::channel();
        let record = Record { topic: &topic, partition: None, key: correlation.as_bytes(), payload: &payload, headers: Some(headers) };
        if let Err(error) = self.send(record, Box::new(Sent { position: None, done })).await {
            forget();
            return Err(error);
        }
        let outcome = tokio::time::timeout(timeout, async {
            match sent.await {
                Ok(Ok(())) => {}
                Ok(Err(error)) => return Err(BusError::backend("sending a request", error)),
                Err(_) => return Err(BusError::backend("sending a request", "the producer dropped the record")),
            }
            Ok(wait.await.ok())
        })
        .await;
        forget();
        match outcome {
            Ok(Ok(answer)) => Ok(answer),
            Ok(Err(error)) => Err(error),
            // No answer in time: the service may be down, or slow; the caller retries.
            Err(_elapsed) => Ok(None),
        }
    }
}

#[async_trait]
impl Responder for KafkaBus {
    async fn serve(&self, service: &str) -> Result<BoxStream<'static, IncomingRequest>, BusError> {
        check_service(service)?;
        let topic = self.request_topic(service);
        self.ensure_topic(&topic, self.inner.config.partitions).await?;
        let mut settings = self.inner.config.client();
        settings
            .set("group.id", format!("{topic}.responders"))
            .set("enable.auto.commit", "true")
            .set("auto.offset.reset", "earliest")
            .set("fetch.wait.max.ms", self.inner.config.fetch_wait.min(Duration::from_millis(20)).as_millis().to_string());
        self.inner.config.session(&mut settings);
        let consumer: StreamConsumer<Bridged> = settings.create_with_context(Bridged).map_err(kafka("creating a request reader"))?;
        consumer.subscribe(&[&topic]).map_err(kafka("subscribing to requests"))?;
        let (requests, receiver) = mpsc::channel(256);
        let bus = self.clone();
        tokio::spawn(async move {
            loop {
                let message = tokio::select! {
                    () = requests.closed() => return,
                    message = consumer.recv() => message,
                };
                let message = match message {
                    Ok(message) => message,
                    Err(error) if transient(&error) => {
                        tracing::debug!(%error, "reading requests");
                        continue;
                    }
                    Err(error) => {
                        tracing::warn!(%error, "reading requests failed; serve again to go on");
                        return;
                    }
                };
                let text = |name| header(&message, name).and_then(|v| std::str::from_utf8(v).ok()).map(str::to_owned);
                let deadline = header(&message, headers::DEADLINE).and_then(super::parse_deadline);
                if deadline.is_some_and(|deadline| deadline <= SystemTime::now()) {
                    tracing::debug!("skipping a request whose requester stopped waiting");
                    continue;
                }
                let (correlation, reply_to) = (text(headers::CORRELATION_ID), text(headers::REPLY_TO));
                let payload = message.payload().unwrap_or_default().to_vec();
                drop(message);
                let reply = match (correlation, reply_to) {
                    (Some(correlation), Some(reply_to)) => {
                        let bus = bus.clone();
                        Some(Box::new(move |answer: Vec<u8>| -> futures_util::future::BoxFuture<'static, Result<(), BusError>> {
                            Box::pin(async move {
                                let headers = OwnedHeaders::new_with_capacity(1)
                                    .insert(Header { key: headers::CORRELATION_ID, value: Some(correlation.as_bytes()) });
                                let (done, sent) = oneshot::channel();
                                let record = Record {
                                    topic: &reply_to,
                                    partition: Some(0),
                                    key: correlation.as_bytes(),
                                    payload: &answer,
                                    headers: Some(headers),
                                };
                                bus.send(record, Box::new(Sent { position: None, done })).await?;
                                match sent.await {
                                    Ok(Ok(())) => Ok(()),
                                    Ok(Err(error)) => Err(BusError::backend("answering a request", error)),
                                    Err(_) => Err(BusError::backend("answering a request", "the producer dropped the record")),
                                }
                            })
                        }) as Reply)
                    }
                    _ => None,
                };
                if requests.send(IncomingRequest::new(payload, deadline, reply)).await.is_err() {
                    return;
                }
            }
        });
        Ok(receiver_stream(receiver))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn murmur2_matches_the_java_client() {
        // Vectors from Kafka's own tests of `Utils.murmur2`.
        assert_eq!(murmur2(b"21") as i32, -973_932_308);
        assert_eq!(murmur2(b"foobar") as i32, -790_332_482);
        assert_eq!(murmur2(b"a-little-bit-long-string") as i32, -985_981_536);
        assert_eq!(murmur2(b"a-little-bit-longer-string") as i32, -1_486_304_829);
        assert_eq!(murmur2(b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8") as i32, -58_897_971);
        assert_eq!(murmur2(b"abc") as i32, 479_470_107);
    }

    #[test]
    fn a_stream_always_lands_in_one_partition() {
        let first = partition_of(b"order-42", 8);
        assert!((0..8).contains(&first));
        assert!((0..100).all(|_| partition_of(b"order-42", 8) == first));
        let spread: HashSet<i32> = (0..200).map(|i| partition_of(format!("order-{i}").as_bytes(), 8)).collect();
        assert_eq!(spread.len(), 8, "200 streams reach every partition");
    }

    #[test]
    fn acks_commit_only_a_contiguous_prefix_and_a_nack_rewinds() {
        let mut tracker = Tracker::default();
        let key = ("t".to_owned(), 0);
        let tickets: Vec<Ticket> = (0..4)
            .map(|offset| {
                let (ticket, count) = tracker.delivered(key.clone(), offset).expect("no seek pending");
                assert_eq!(count, 1);
                ticket
            })
            .collect();
        assert!(!tracker.ack(&tickets[1]), "offset 0 is not done yet");
        assert!(tracker.ack(&tickets[0]));
        assert_eq!(tracker.partitions[&key].commit, Some(2));
        assert!(tracker.rewind(&tickets[2]));
        assert!(!tracker.ack(&tickets[3]), "a rewound offset's late ack changes nothing");
        assert!(!tracker.hand_out(&tickets[3]), "a rewound delivery still queued is not handed out");
        let (again, count) = tracker.delivered(key.clone(), 2).expect("the offset sought");
        assert_eq!(count, 2, "the second delivery of offset 2");
        assert!(tracker.ack(&again));
        assert_eq!(tracker.partitions[&key].commit, Some(3));
        assert!(tracker.expired(Duration::ZERO).is_empty());
        let (late, _) = tracker.delivered(key.clone(), 3).expect("after the seek");
        assert_eq!(tracker.expired(Duration::ZERO), vec![late.clone()]);
        assert!(tracker.busy(&HashSet::from([key.clone()])));
        // The partition moves away and comes back: old tickets are stale.
        tracker.partitions.clear();
        let (fresh, _) = tracker.delivered(key.clone(), 3).expect("a new tenure");
        assert!(!tracker.owns(&late) && tracker.owns(&fresh));
        assert!(!tracker.ack(&late), "an ack from an earlier tenure changes nothing");
    }

    /// A record fetched before a seek back must not move the commit past the
    /// offset sought: committing 6 while 5 was never handled loses 5 to a
    /// crash (found under kills at full rate on Kafka).
    #[test]
    fn records_from_before_a_seek_back_never_move_the_commit_past_it() {
        let mut tracker = Tracker::default();
        let key = ("t".to_owned(), 0);
        let five = tracker.delivered(key.clone(), 5).expect("first").0;
        assert!(tracker.rewind(&five), "the subscriber nacked offset 5");
        assert!(tracker.delivered(key.clone(), 6).is_none(), "6 was fetched before the seek landed: dropped, it comes again");
        assert_eq!(tracker.partitions[&key].commit, None);
        // The seek did not land (timed out): it is asked again after ack_wait.
        assert_eq!(tracker.expired(Duration::ZERO), vec![Ticket { offset: 5, ..five.clone() }]);
        assert!(tracker.expired(Duration::from_secs(60)).is_empty());
        let again = tracker.delivered(key.clone(), 5).expect("the record sought").0;
        let six = tracker.delivered(key.clone(), 6).expect("after the seek").0;
        assert!(tracker.hand_out(&again) && tracker.hand_out(&six));
        assert!(!tracker.ack(&six), "5 is not done");
        assert!(tracker.ack(&again));
        assert_eq!(tracker.partitions[&key].commit, Some(7));
        // A lower rewind wins over a higher one asked for in the same round.
        let seven = tracker.delivered(key.clone(), 7).expect("next").0;
        let eight = tracker.delivered(key.clone(), 8).expect("next").0;
        assert!(tracker.rewind(&eight) && tracker.rewind(&seven));
        assert!(tracker.delivered(key.clone(), 8).is_none());
        assert!(tracker.delivered(key.clone(), 7).is_some());
    }
}
