//! [`MemoryBus`]: the in-process bus of the embedded default. Same contract
//! as JetStream (durable groups, explicit acks, redelivery after `ack_wait`,
//! dedupe by event id), without durability across restarts of the process.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};

use async_trait::async_trait;
use futures_util::stream::BoxStream;
use futures_util::StreamExt;
use tokio::sync::Notify;
use tokio::time::Instant;
use uuid::Uuid;

use super::{BusError, Delivery, Published, Publisher, Settlement, Subscriber, Subscription};
use crate::{RecordedEvent, StoredEvent};

#[derive(Default)]
struct Group {
    category: Option<String>,
    /// The first sequence never handed out.
    next: usize,
    /// Handed out and not settled: sequence → (delivery count, redelivery deadline).
    in_flight: BTreeMap<usize, (u64, Instant)>,
    /// Nacked: deliver again at once.
    nacked: VecDeque<usize>,
}

/// An event with the trace context it was published under.
type Message = (RecordedEvent, Option<String>);

#[derive(Default)]
struct State {
    messages: Vec<Message>,
    ids: HashSet<Uuid>,
    groups: HashMap<String, Group>,
}

#[derive(Default)]
struct Inner {
    state: Mutex<State>,
    wake: Notify,
}

/// The in-process bus. Cloning shares it.
#[derive(Clone, Default)]
pub struct MemoryBus {
    inner: Arc<Inner>,
}

impl MemoryBus {
    /// An empty bus.
    pub fn new() -> Self {
        Self::default()
    }
}

impl Inner {
    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|poison| poison.into_inner())
    }

    /// The next delivery of a group, or the time to look again.
    fn next(&self, name: &str, ack_wait: std::time::Duration) -> Result<(Message, u64, usize), Option<Instant>> {
        let now = Instant::now();
        let mut state = self.state();
        let State { messages, groups, .. } = &mut *state;
        let group = groups.get_mut(name).expect("subscribed groups exist");
        let expired = group.in_flight.iter().find(|(_, (_, deadline))| *deadline <= now).map(|(&sequence, _)| sequence);
        // A nacked message acked since (through a later redelivery) is done.
        let redeliver = expired.or_else(|| {
            while let Some(sequence) = group.nacked.pop_front() {
                if group.in_flight.contains_key(&sequence) {
                    return Some(sequence);
                }
            }
            None
        });
        if let Some(sequence) = redeliver {
            let entry = group.in_flight.get_mut(&sequence).expect("redeliveries are in flight");
            entry.0 += 1;
            entry.1 = now + ack_wait;
            return Ok((messages[sequence].clone(), entry.0, sequence));
        }
        while group.next < messages.len() {
            let sequence = group.next;
            group.next += 1;
            let message = &messages[sequence];
            if group.category.as_deref().is_none_or(|category| message.0.stream_id.category() == category) {
                group.in_flight.insert(sequence, (1, now + ack_wait));
                return Ok((message.clone(), 1, sequence));
            }
        }
        Err(group.in_flight.values().map(|(_, deadline)| *deadline).min())
    }

    fn settle(&self, name: &str, sequence: usize, settlement: Settlement) {
        let mut state = self.state();
        let Some(group) = state.groups.get_mut(name) else { return };
        match settlement {
            Settlement::Ack => {
                group.in_flight.remove(&sequence);
            }
            Settlement::Nack => {
                if group.in_flight.contains_key(&sequence) && !group.nacked.contains(&sequence) {
                    group.nacked.push_back(sequence);
                }
            }
        }
        drop(state);
        if settlement == Settlement::Nack {
            self.wake.notify_waiters();
        }
    }
}

#[async_trait]
impl Publisher for MemoryBus {
    async fn publish(&self, events: &[StoredEvent]) -> Result<Vec<Published>, BusError> {
        // In process, consumers take events whole: parse once, here.
        let events = events
            .iter()
            .map(|event| {
                let decoded = event
                    .decode()
                    .map_err(|error| BusError::Malformed { message: event.event_id.to_string(), reason: error.to_string() })?;
                Ok((decoded, event.bus_traceparent.clone()))
            })
            .collect::<Result<Vec<Message>, BusError>>()?;
        let mut state = self.inner.state();
        let published = events
            .into_iter()
            .map(|message| {
                let duplicate = !state.ids.insert(message.0.event_id);
                if !duplicate {
                    state.messages.push(message);
                }
                Published { duplicate }
            })
            .collect();
        drop(state);
        self.inner.wake.notify_waiters();
        Ok(published)
    }
}

#[async_trait]
impl Subscriber for MemoryBus {
    async fn subscribe(&self, subscription: Subscription) -> Result<BoxStream<'static, Result<Delivery, BusError>>, BusError> {
        subscription.check()?;
        {
            let mut state = self.inner.state();
            let group = state
                .groups
                .entry(subscription.group.clone())
                .or_insert_with(|| Group { category: subscription.category.clone(), ..Group::default() });
            if group.category != subscription.category {
                return Err(BusError::InvalidSubscription {
                    reason: format!("group {} already follows another category", subscription.group),
                });
            }
        }
        let inner = self.inner.clone();
        let stream = futures_util::stream::unfold((inner, subscription), |(inner, subscription)| async move {
            loop {
                // Register for wake-ups before looking, so a publish between
                // the look and the wait is not missed.
                let waker = inner.clone();
                let notified = waker.wake.notified();
                tokio::pin!(notified);
                notified.as_mut().enable();
                match inner.next(&subscription.group, subscription.ack_wait) {
                    Ok(((event, traceparent), delivery_count, sequence)) => {
                        let settle_inner = inner.clone();
                        let group = subscription.group.clone();
                        let delivery = Delivery::new(
                            event,
                            delivery_count,
                            Box::new(move |settlement| {
                                Box::pin(async move {
                                    settle_inner.settle(&group, sequence, settlement);
                                    Ok(())
                                })
                            }),
                        )
                        .traced(traceparent);
                        return Some((Ok(delivery), (inner, subscription)));
                    }
                    Err(Some(deadline)) => {
                        tokio::select! {
                            () = &mut notified => {}
                            () = tokio::time::sleep_until(deadline) => {}
                        }
                    }
                    Err(None) => notified.await,
                }
            }
        });
        Ok(stream.boxed())
    }
}
