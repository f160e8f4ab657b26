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

mod consume;
mod partition;
mod publish;
mod rpc;

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::config::{ClientConfig, RDKafkaLogLevel};
use rdkafka::consumer::ConsumerContext;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{BaseRecord, Producer, ThreadedProducer};
use rdkafka::ClientContext;

use super::{BusError, Publisher};

pub use partition::partition_of;
pub use publish::event_headers;
use publish::{new_producer, read_tails, Acked, ProducerEvents, Record, Sent};
use rpc::Replies;

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

type PartitionKey = (String, i32);

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
        tracing::error!(target: "librdkafka", error = %crate::chain(error), "refused by Kafka: {reason}");
    } else {
        tracing::warn!(target: "librdkafka", error = %crate::chain(error), "{reason}");
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
            Err(error) => {
                tracing::error!(error = %fatal, error = %crate::chain(&error), "the Kafka producer failed fatally and could not be replaced yet")
            }
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
            tracing::debug!(error = %crate::chain(&error), "deleting topics failed");
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
    /// from its last record: every partition of the topics `partitions`
    /// belong to, not only those a publish targets, since another log's
    /// records in any of them make the topic foreign, even where this log's
    /// streams would not land.
    async fn learn_tails(&self, partitions: Vec<PartitionKey>) -> Result<(), BusError> {
        let counts = self.inner.topics.lock().await.clone();
        let topics: BTreeSet<String> = partitions.iter().map(|(topic, _)| topic.clone()).collect();
        let every: BTreeSet<PartitionKey> = topics
            .into_iter()
            .flat_map(|topic| {
                let count = counts.get(&topic).copied().unwrap_or(0);
                (0..count).map(move |partition| (topic.clone(), partition))
            })
            .chain(partitions)
            .collect();
        let unknown: Vec<PartitionKey> = {
            let known = self.inner.tails_known.lock().unwrap_or_else(|p| p.into_inner());
            every.into_iter().filter(|key| !known.contains(key)).collect()
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
