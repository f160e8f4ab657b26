//! Consumer groups: a member's per-partition tracking of what it handed
//! out and what was acked (commits only a contiguous prefix; a nack or an
//! overdue delivery seeks back), rebalances, flow control, and
//! [`Subscriber`](crate::bus::Subscriber) for the bus.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use futures_util::stream::BoxStream;
use futures_util::StreamExt;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Headers, Message};
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use tokio::sync::mpsc;

use super::{headers, kafka, librdkafka_error, librdkafka_log, refused, KafkaBus, PartitionKey};
use crate::bus::WireEvent;
use crate::bus::{BusError, Delivery, Settlement, Subscriber, Subscription};

/// Per-partition bookkeeping of a consumer group member.
#[derive(Default)]
pub(super) struct Tracker {
    pub(super) partitions: HashMap<PartitionKey, Track>,
    /// Bumped for every partition this member starts tracking, so that
    /// deliveries and acks from before a rebalance are told apart.
    pub(super) generations: u64,
}

pub(super) struct Track {
    pub(super) generation: u64,
    /// Delivered offsets, acked or not, above the committed one.
    pub(super) pending: BTreeMap<i64, Slot>,
    /// How often each offset was delivered while this member held the partition.
    pub(super) deliveries: HashMap<i64, u64>,
    /// The next offset to commit, once it moved.
    pub(super) commit: Option<i64>,
    /// A seek back to this offset was asked for and its record has not come
    /// again yet: records above it are from before the seek (dropped, they
    /// come again after it), and the commit point cannot pass it.
    pub(super) rewound: Option<Rewound>,
}

#[derive(Debug, Clone, Copy)]
pub(super) struct Rewound {
    pub(super) offset: i64,
    /// When the seek was asked for; asked again if its record has not come
    /// back within `ack_wait` (a seek that timed out or failed).
    pub(super) at: Instant,
}

pub(super) struct Slot {
    pub(super) acked: bool,
    pub(super) since: Instant,
}

/// Which partition, offset and tenure a delivery belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Ticket {
    pub(super) key: PartitionKey,
    pub(super) offset: i64,
    pub(super) generation: u64,
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
pub(super) struct GroupEvents {
    pub(super) tracker: Arc<Mutex<Tracker>>,
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
                tracing::warn!(error = %crate::chain(&error), "committing revoked partitions failed; their records will come again");
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
            tracing::debug!(error = %crate::chain(&error), "resuming revoked partitions failed");
        }
    }
}

/// What a delivery's settlement asks of the member's loop.
pub(super) enum Signal {
    /// A commit point moved.
    Commit,
    /// Deliver from this offset again.
    Rewind(Ticket),
}

/// Is this consumer error one librdkafka recovers from by itself?
pub(super) fn transient(error: &KafkaError) -> bool {
    match error.rdkafka_error_code() {
        Some(code) => !matches!(code, RDKafkaErrorCode::Fatal | RDKafkaErrorCode::InvalidGroupId) && !refused(error),
        None => true,
    }
}

pub(super) type Handed = (Option<Ticket>, Result<Delivery, BusError>);

/// Records held for a subscriber with no room, beyond its channel, at which
/// the member pauses its partitions.
pub(super) const PAUSE_AT: usize = 1_024;
/// Held records below which it resumes them.
pub(super) const RESUME_BELOW: usize = 256;

/// A group member's loop: takes records off Kafka, hands them out, and
/// turns acks and nacks into commits and seeks.
pub(super) async fn consume(
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
                        tracing::debug!(error = %crate::chain(&error), "committing offsets failed; records will come again");
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
                        tracing::debug!(error = %crate::chain(&error), "Kafka consumer error (librdkafka recovers)");
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
pub(super) fn flow(consumer: &StreamConsumer<GroupEvents>, pause: bool) -> bool {
    let assignment = match consumer.assignment() {
        Ok(assignment) => assignment,
        Err(error) => {
            tracing::debug!(error = %crate::chain(&error), "reading the member's assignment failed");
            return !pause;
        }
    };
    let result = if pause { consumer.pause(&assignment) } else { consumer.resume(&assignment) };
    match result {
        Ok(()) => pause,
        Err(error) => {
            tracing::debug!(error = %crate::chain(&error), pause, "pausing or resuming partitions failed");
            !pause
        }
    }
}

/// Seeks each partition back to the lowest offset asked for.
pub(super) fn seek(consumer: &StreamConsumer<GroupEvents>, rewind: Vec<Ticket>) {
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
            tracing::debug!(%topic, partition, offset, error = %crate::chain(&error), "seeking back failed");
        }
    }
}

/// A stream over a channel's receiver.
pub(super) fn receiver_stream<T: Send + 'static>(receiver: mpsc::Receiver<T>) -> BoxStream<'static, T> {
    futures_util::stream::unfold(receiver, |mut receiver| async move { receiver.recv().await.map(|item| (item, receiver)) }).boxed()
}

pub(super) fn regex_escape(text: &str) -> String {
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

#[cfg(test)]
mod tests {
    use super::*;

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
