//! Requests to services over Kafka: a topic per service read by one
//! consumer group of responders, a reply topic per requesting process, and
//! deadlines carried in a header.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use futures_util::stream::BoxStream;
use rdkafka::admin::AdminOptions;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::{Header, Message, OwnedHeaders};
use rdkafka::{Offset, TopicPartitionList};
use tokio::sync::{mpsc, oneshot};
use uuid::Uuid;

use super::consume::{receiver_stream, transient};
use super::publish::{header, Record, Sent};
use super::{headers, kafka, Bridged, KafkaBus, ADMIN_TIMEOUT, REPLY_RETENTION_MS};
use crate::bus::{BusError, IncomingRequest, Reply, Requester, Responder};

/// The requesting side of a process: its reply topic and who waits for what.
pub(super) struct Replies {
    pub(super) topic: String,
    pub(super) waiting: Mutex<HashMap<Uuid, oneshot::Sender<Vec<u8>>>>,
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
                                tracing::debug!(error = %crate::chain(&error), "reading answers");
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

pub(super) fn check_service(service: &str) -> Result<(), BusError> {
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
            Err(error) => tracing::warn!(topic = %replies.topic, error = %crate::chain(&error), "the reply topic was not deleted"),
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
        let deadline = crate::bus::deadline_text(timeout);
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
                        tracing::debug!(error = %crate::chain(&error), "reading requests");
                        continue;
                    }
                    Err(error) => {
                        tracing::warn!(error = %crate::chain(&error), "reading requests failed; serve again to go on");
                        return;
                    }
                };
                let text = |name| header(&message, name).and_then(|v| std::str::from_utf8(v).ok()).map(str::to_owned);
                let deadline = header(&message, headers::DEADLINE).and_then(crate::bus::parse_deadline);
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
