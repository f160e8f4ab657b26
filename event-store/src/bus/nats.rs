//! [`JetStreamBus`]: the bus on NATS JetStream (feature `nats`).
//!
//! One JetStream stream holds `<prefix>.>`; each event is published on its
//! subject with `Nats-Msg-Id` = event id, so the server drops a duplicate
//! within the stream's duplicate window. A consumer group is a durable pull
//! consumer with explicit acks, `ack_wait` and an optional category filter
//! (`<prefix>.<category>.>`, one filter subject: NATS 2.9).

use std::time::Duration;

use async_nats::jetstream::{self, consumer, stream, AckKind};
use async_trait::async_trait;
use futures_util::stream::BoxStream;
use futures_util::StreamExt;

use super::{encode_stored, subject, BusError, Delivery, Published, Publisher, Settlement, Subscriber, Subscription, WireEvent};
use super::{request_subject, IncomingRequest, Requester, Responder, LOG_ID_HEADER, TRACEPARENT_HEADER as TRACEPARENT};
use crate::StoredEvent;

/// Where the bus lives.
#[derive(Debug, Clone)]
pub struct JetStreamConfig {
    /// `nats://host:4222`.
    pub url: String,
    /// The JetStream stream name (letters, digits, `-`, `_`).
    pub stream_name: String,
    /// The subject prefix (one token), e.g. `strata`.
    pub subject_prefix: String,
    /// How long the server remembers message ids for dedupe.
    pub duplicate_window: Duration,
    /// The largest message the bus must carry: the store's largest event
    /// plus its envelope ([`crate::AppendLimits::max_record_bytes`]);
    /// a server whose `max_payload` is smaller is refused at connect.
    pub max_record_bytes: usize,
}

impl JetStreamConfig {
    /// Stream `STRATA` on subjects `strata.>`, a two-minute duplicate window.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            stream_name: "STRATA".into(),
            subject_prefix: "strata".into(),
            duplicate_window: Duration::from_secs(120),
            max_record_bytes: crate::AppendLimits::default().max_record_bytes(),
        }
    }
}

/// The JetStream bus. Cloning shares the connection.
#[derive(Clone)]
pub struct JetStreamBus {
    client: async_nats::Client,
    context: jetstream::Context,
    stream: stream::Stream,
    config: JetStreamConfig,
    /// The identity of the log this bus publishes (`<id>/<epoch>`), once bound.
    log: std::sync::Arc<std::sync::RwLock<Option<String>>>,
}

impl std::fmt::Debug for JetStreamBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JetStreamBus").field("config", &self.config).finish()
    }
}

impl JetStreamBus {
    /// Connects and creates the stream if it does not exist.
    pub async fn connect(config: JetStreamConfig) -> Result<Self, BusError> {
        let client = async_nats::connect(config.url.as_str()).await.map_err(|err| BusError::backend("connecting to NATS", err))?;
        // The limit covers payload and headers, as the record bound does.
        let max_payload = client.server_info().max_payload;
        if max_payload < config.max_record_bytes {
            return Err(BusError::backend(
                "checking the NATS server's max_payload",
                format!(
                    "it is {max_payload} bytes, but an event the store accepts can need {} (STRATA_MAX_EVENT_BYTES plus the envelope): raise max_payload in the server's configuration or lower STRATA_MAX_EVENT_BYTES",
                    config.max_record_bytes
                ),
            ));
        }
        let context = jetstream::new(client.clone());
        let stream = context
            .get_or_create_stream(stream::Config {
                name: config.stream_name.clone(),
                subjects: vec![format!("{}.>", config.subject_prefix)],
                duplicate_window: config.duplicate_window,
                ..Default::default()
            })
            .await
            .map_err(|err| BusError::backend("creating the JetStream stream", err))?;
        Ok(Self { client, context, stream, config, log: std::sync::Arc::default() })
    }

    /// Deletes the stream and everything in it (tests, teardown).
    pub async fn delete(self) -> Result<(), BusError> {
        self.context
            .delete_stream(&self.config.stream_name)
            .await
            .map_err(|err| BusError::backend("deleting the JetStream stream", err))?;
        Ok(())
    }
}

#[async_trait]
impl Publisher for JetStreamBus {
    async fn ping(&self) -> Result<(), BusError> {
        // A round trip to the server, and the stream still exists.
        match self.context.get_stream(&self.config.stream_name).await {
            Ok(_) => Ok(()),
            Err(e) => Err(BusError::backend("checking the JetStream stream", e)),
        }
    }

    async fn bind_log(&self, log: &super::BoundLog) -> Result<(), BusError> {
        // The stream's last message says which log wrote it (none: empty,
        // or written before logs had identities).
        let stream = self
            .context
            .get_stream(&self.config.stream_name)
            .await
            .map_err(|err| BusError::backend("reading the JetStream stream", err))?;
        let last = stream.cached_info().state.last_sequence;
        if last > 0 {
            match stream.get_raw_message(last).await {
                Ok(message) => {
                    let written_by = message.headers.get(LOG_ID_HEADER).and_then(|value| crate::LogIdentity::parse(value.as_str()));
                    let place = format!("JetStream stream {}", self.config.stream_name);
                    // Only the relay's events are judged (requests share no subject with them).
                    if let Ok(event) = WireEvent::decode(message.subject.as_str(), &message.payload) {
                        let origin = super::RecordOrigin {
                            place: &place,
                            log: written_by.as_ref(),
                            event_id: Some(event.event_id),
                            position: event.position.0,
                        };
                        log.judge(&origin).await?;
                    }
                }
                Err(err) => {
                    tracing::warn!(error = %crate::chain(&err), "could not read the stream's last message to check which log wrote it")
                }
            }
        }
        *self.log.write().unwrap_or_else(|p| p.into_inner()) = Some(log.identity.to_string());
        Ok(())
    }

    async fn publish(&self, events: &[StoredEvent]) -> Result<Vec<Published>, BusError> {
        let log = self.log.read().unwrap_or_else(|p| p.into_inner()).clone();
        // Send every message first, then collect the acks: many in flight.
        let mut pending = Vec::with_capacity(events.len());
        for event in events {
            let mut message =
                jetstream::message::PublishMessage::build().payload(encode_stored(event).into()).message_id(event.event_id.to_string());
            if let Some(traceparent) = event.header_traceparent() {
                message = message.header(TRACEPARENT, traceparent.as_str());
            }
            if let Some(log) = &log {
                message = message.header(LOG_ID_HEADER, log.as_str());
            }
            let ack = self
                .context
                .send_publish(subject(&self.config.subject_prefix, &event.stream_id), message)
                .await
                .map_err(|err| BusError::backend("publishing to JetStream", err))?;
            pending.push(ack);
        }
        let mut published = Vec::with_capacity(pending.len());
        for ack in pending {
            let ack = ack.await.map_err(|err| BusError::backend("waiting for a JetStream ack", err))?;
            published.push(Published { duplicate: ack.duplicate });
        }
        Ok(published)
    }
}

#[async_trait]
impl Subscriber for JetStreamBus {
    async fn subscribe(&self, subscription: Subscription) -> Result<BoxStream<'static, Result<Delivery, BusError>>, BusError> {
        subscription.check()?;
        let filter_subject = match &subscription.category {
            Some(category) => format!("{}.{category}.>", self.config.subject_prefix),
            None => String::new(),
        };
        let consumer: consumer::PullConsumer = self
            .stream
            .get_or_create_consumer(
                &subscription.group,
                consumer::pull::Config {
                    durable_name: Some(subscription.group.clone()),
                    ack_policy: consumer::AckPolicy::Explicit,
                    ack_wait: subscription.ack_wait,
                    filter_subject,
                    ..Default::default()
                },
            )
            .await
            .map_err(|err| BusError::backend("creating the durable consumer", err))?;
        let messages = consumer.messages().await.map_err(|err| BusError::backend("pulling from the durable consumer", err))?;
        let deliveries = messages.map(|message| {
            let message = message.map_err(|err| BusError::backend("receiving from JetStream", err))?;
            let delivery_count = message
                .info()
                .map(|info| info.delivered.max(1) as u64)
                .map_err(|err| BusError::backend("reading message metadata", err))?;
            let event = WireEvent::decode(message.subject.as_str(), &message.payload)?;
            let header = message.headers.as_ref().and_then(|headers| headers.get(TRACEPARENT)).map(|value| value.as_str().to_owned());
            Ok(Delivery::new(
                event,
                delivery_count,
                Box::new(move |settlement| {
                    Box::pin(async move {
                        let kind = match settlement {
                            Settlement::Ack => AckKind::Ack,
                            Settlement::Nack => AckKind::Nak(None),
                        };
                        // A double ack is enough to confirm the server recorded it.
                        let result = match kind {
                            AckKind::Ack => message.double_ack().await,
                            other => message.ack_with(other).await,
                        };
                        result.map_err(|err| BusError::backend("acknowledging a message", err))
                    })
                }),
            )
            .traced(header))
        });
        // The stream ends after its first error (the contract).
        let mut failed = false;
        Ok(deliveries
            .take_while(move |item| {
                let go_on = !failed;
                failed |= item.is_err();
                std::future::ready(go_on)
            })
            .boxed())
    }
}

#[async_trait]
impl Requester for JetStreamBus {
    async fn request(&self, service: &str, payload: Vec<u8>, timeout: Duration) -> Result<Option<Vec<u8>>, BusError> {
        let subject = request_subject(&self.config.subject_prefix, service);
        let mut headers = async_nats::HeaderMap::new();
        headers.insert(super::DEADLINE_HEADER, super::deadline_text(timeout).as_str());
        match tokio::time::timeout(timeout, self.client.request_with_headers(subject, headers, payload.into())).await {
            Ok(Ok(answer)) => Ok(Some(answer.payload.to_vec())),
            // No responder is "no answer" too: the service may come back.
            Ok(Err(err)) if matches!(err.kind(), async_nats::RequestErrorKind::TimedOut | async_nats::RequestErrorKind::NoResponders) => {
                Ok(None)
            }
            Ok(Err(err)) => Err(BusError::backend("sending a request", err)),
            Err(_elapsed) => Ok(None),
        }
    }
}

#[async_trait]
impl Responder for JetStreamBus {
    async fn serve(&self, service: &str) -> Result<BoxStream<'static, IncomingRequest>, BusError> {
        let subject = request_subject(&self.config.subject_prefix, service);
        let requests = self
            .client
            .queue_subscribe(subject, format!("{service}-responders"))
            .await
            .map_err(|err| BusError::backend("subscribing to requests", err))?;
        let client = self.client.clone();
        Ok(requests
            .map(move |message| {
                let client = client.clone();
                let reply = message.reply.map(|reply| -> super::Reply {
                    Box::new(move |answer: Vec<u8>| {
                        Box::pin(async move {
                            client.publish(reply, answer.into()).await.map_err(|err| BusError::backend("answering a request", err))
                        })
                    })
                });
                let deadline = message
                    .headers
                    .as_ref()
                    .and_then(|headers| headers.get(super::DEADLINE_HEADER))
                    .and_then(|value| super::parse_deadline(value.as_str().as_bytes()));
                IncomingRequest::new(message.payload.to_vec(), deadline, reply)
            })
            .boxed())
    }
}
