//! Publishing: the idempotent producer, its delivery callback (which learns
//! each partition's head), reading a partition's last record, and dedupe by
//! log position.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{BorrowedMessage, Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use tokio::sync::{oneshot, Notify};
use uuid::Uuid;

use super::{headers, kafka, librdkafka_error, librdkafka_log, partition_of, Bridged, KafkaBus, KafkaConfig, PartitionKey, ADMIN_TIMEOUT};
use crate::bus::encode_stored;
use crate::bus::{BusError, Published, Publisher};
use crate::StoredEvent;

/// What the producer's delivery callback shares with the bus.
#[derive(Default)]
pub(super) struct Acked {
    /// Per partition, the highest position the bus holds.
    pub(super) heads: Mutex<HashMap<PartitionKey, u64>>,
    /// Event records sent and not yet acknowledged (or failed).
    pub(super) in_flight: AtomicUsize,
    pub(super) settled: Notify,
}

/// One record's way back from the delivery callback.
pub(super) struct Sent {
    pub(super) position: Option<u64>,
    pub(super) done: oneshot::Sender<Result<(), KafkaError>>,
}

pub(super) struct ProducerEvents(pub(super) Arc<Acked>);

impl ClientContext for ProducerEvents {
    fn log(&self, level: RDKafkaLogLevel, facility: &str, message: &str) {
        librdkafka_log(level, facility, message);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        librdkafka_error(&error, reason);
    }
}

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

pub(super) struct Record<'a> {
    pub(super) topic: &'a str,
    pub(super) partition: Option<i32>,
    pub(super) key: &'a [u8],
    pub(super) payload: &'a [u8],
    pub(super) headers: Option<OwnedHeaders>,
}

/// A partition's last record, as far as dedupe is concerned.
pub(super) struct Tail {
    pub(super) key: PartitionKey,
    pub(super) position: u64,
    /// The log that wrote it (`None`: written before logs had identities).
    pub(super) log: Option<crate::LogIdentity>,
    /// Its event id.
    pub(super) event_id: Option<Uuid>,
    /// The topic's partition count when it was written.
    pub(super) partitions: Option<i32>,
}

/// Reads the last record of each partition (blocking) and returns the
/// position header of those that have one.
pub(super) fn read_tails(config: &KafkaConfig, partitions: &[PartitionKey]) -> Result<Vec<Tail>, BusError> {
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
            Some(Err(error)) => tracing::debug!(error = %crate::chain(&error), "reading a partition's last record"),
            None => {}
        }
    }
    Ok(heads)
}

/// A producer with the bus's settings whose acknowledgements update `acked`.
pub(super) fn new_producer(config: &KafkaConfig, acked: &Arc<Acked>) -> Result<Arc<ThreadedProducer<ProducerEvents>>, BusError> {
    let producer: ThreadedProducer<ProducerEvents> =
        config.producer_settings().create_with_context(ProducerEvents(acked.clone())).map_err(kafka("creating the Kafka producer"))?;
    Ok(Arc::new(producer))
}

pub(super) fn header<'a>(message: &'a BorrowedMessage<'_>, name: &str) -> Option<&'a [u8]> {
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

    async fn bind_log(&self, log: &crate::bus::BoundLog) -> Result<(), BusError> {
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
