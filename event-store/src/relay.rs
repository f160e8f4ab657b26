//! The relay: follows the global log in commit order and puts every event on
//! the bus (docs/design.md §1).
//!
//! # Guarantees
//!
//! - **Nothing lost.** The checkpoint moves only after the bus acknowledged
//!   every event up to it, so a relay killed at any instant restarts from a
//!   position whose events are all on the bus, and publishes the rest.
//! - **Duplicates are harmless.** Events published before a kill but after
//!   the last checkpoint are published again with the same message id (the
//!   event id): the bus drops them within its duplicate window, and consumers
//!   tolerate redelivery anyway.
//! - **Order.** Events go out in global position order, a batch at a time,
//!   with the whole batch's acks in flight together.
//! - Events go out as the latest schema version ([`crate::Form::Latest`]),
//!   as stored: the relay reads payload and metadata as the log's JSON text
//!   ([`EventReader::read_all_stored`]) and the bus writes that text into its
//!   messages unparsed; only a payload of an older schema version is upcast.
//!
//! Exactly one relay is active per log: [`Relay::run_while_leader`] works only
//! while it holds the lease named after its checkpoint, and stops when the
//! lease is lost. Two active relays (a lease lost but not yet noticed) would
//! stay correct (dedupe, a forward-only checkpoint), only doing work twice.

use std::sync::Arc;

use futures_util::StreamExt;

use crate::bus::{BusError, Publisher};
use crate::lease::Lease;
use crate::{BackendError, CheckpointStore, EventReader, Position, ReadAll, ReadError, StoredEvent, Subscribe};

/// A page of the log being read.
type PageRead = tokio::task::JoinHandle<Result<Vec<StoredEvent>, ReadError>>;

/// How a relay runs.
#[derive(Debug, Clone)]
pub struct RelayConfig {
    /// The checkpoint name.
    pub name: String,
    /// Events per publish batch.
    pub batch_size: usize,
    /// The longest an idle relay waits before reading the log again when no
    /// wake-up came (see [`Subscribe::poll_every`]).
    pub poll_every: std::time::Duration,
}

impl Default for RelayConfig {
    fn default() -> Self {
        Self { name: "relay".into(), batch_size: 500, poll_every: std::time::Duration::from_secs(1) }
    }
}

/// What one step did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Published this many events and moved the checkpoint past them.
    Processed(usize),
    /// Nothing new in the log.
    Idle,
}

/// Why the relay stopped.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RelayError {
    /// Reading the log failed.
    #[error("relay: reading the log failed")]
    Read(#[from] ReadError),
    /// Publishing failed; the checkpoint did not move.
    #[error("relay: publishing failed")]
    Publish(#[from] BusError),
    /// Saving the checkpoint failed; the batch will be published again.
    #[error("relay: saving the checkpoint failed")]
    Checkpoint(#[from] BackendError),
    /// Taking the relay lease failed.
    #[error("relay: taking the lease failed")]
    Lease(#[source] BackendError),
}

/// Log → bus.
pub struct Relay {
    reader: Arc<dyn EventReader>,
    checkpoints: Arc<dyn CheckpointStore>,
    publisher: Arc<dyn Publisher>,
    config: RelayConfig,
    /// Set once the publisher is bound to this log ([`Publisher::bind_log`]).
    bound: tokio::sync::OnceCell<()>,
}

impl Relay {
    /// A relay reading `reader`, remembering its position in `checkpoints`.
    pub fn new(
        reader: Arc<dyn EventReader>,
        checkpoints: Arc<dyn CheckpointStore>,
        publisher: Arc<dyn Publisher>,
        config: RelayConfig,
    ) -> Self {
        Self { reader, checkpoints, publisher, config, bound: tokio::sync::OnceCell::new() }
    }

    /// Publishes the next batch after the checkpoint, then moves the checkpoint.
    pub async fn step(&self) -> Result<Step, RelayError> {
        let after = self.checkpoints.load_checkpoint(&self.config.name).await?;
        let events = self.reader.read_all_stored(ReadAll::after(after, self.config.batch_size.max(1))).await?;
        if events.is_empty() {
            return Ok(Step::Idle);
        }
        let count = events.len();
        self.publish_batch(events).await?;
        Ok(Step::Processed(count))
    }

    /// Relays everything up to the log's current end, reading the next batch
    /// while the current one is being published (two batches read ahead at
    /// most). Returns how many events went out. The checkpoint still moves
    /// only after each batch's acks.
    pub async fn catch_up(&self) -> Result<usize, RelayError> {
        let batch_size = self.config.batch_size.max(1);
        let mut after = self.checkpoints.load_checkpoint(&self.config.name).await?;
        let (batches, mut ready) = tokio::sync::mpsc::channel(2);
        let reader = self.reader.clone();
        let reading = tokio::spawn(async move {
            // Two pages in flight: positions are dense, so the page after a
            // full one starts where it ends and can be read at the same
            // time. A page that is short or not dense (an old log with gaps)
            // discards the read ahead of it, and reading goes on after it.
            let read = |after: Position| {
                let reader = reader.clone();
                tokio::spawn(async move { reader.read_all_stored(ReadAll::after(after, batch_size)).await })
            };
            let step = batch_size as u64;
            let mut ahead: std::collections::VecDeque<(Position, PageRead)> = std::collections::VecDeque::new();
            loop {
                while ahead.len() < 2 {
                    let start = ahead.back().map_or(after, |(start, _)| Position(start.0 + step));
                    ahead.push_back((start, read(start)));
                }
                let (start, page) = ahead.pop_front().expect("two pages in flight");
                let events = match page.await {
                    Ok(result) => result?,
                    Err(join) => std::panic::resume_unwind(join.into_panic()),
                };
                let Some(last) = events.last().map(|event| event.position) else {
                    return Ok::<(), ReadError>(());
                };
                if events.len() < batch_size || last.0 != start.0 + step {
                    ahead.clear();
                }
                after = last;
                if batches.send(events).await.is_err() {
                    return Ok(());
                }
            }
        });
        let mut relayed = 0;
        while let Some(events) = ready.recv().await {
            relayed += events.len();
            self.publish_batch(events).await?;
        }
        match reading.await {
            Ok(result) => result?,
            Err(join) => std::panic::resume_unwind(join.into_panic()),
        }
        Ok(relayed)
    }

    /// Waits for the lease, relays while holding it, and waits again when it is
    /// lost; returns when `shutdown` resolves or on an error.
    pub async fn run_while_leader(&self, lease: &dyn Lease, shutdown: impl std::future::Future<Output = ()>) -> Result<(), RelayError> {
        tokio::pin!(shutdown);
        loop {
            let mut guard = tokio::select! {
                () = &mut shutdown => return Ok(()),
                guard = lease.acquire(&self.config.name) => guard.map_err(RelayError::Lease)?,
            };
            tracing::info!(relay = %self.config.name, "holding the relay lease");
            tokio::select! {
                () = &mut shutdown => return Ok(()),
                () = guard.lost() => {
                    tracing::warn!(relay = %self.config.name, "relay lease lost; stopping");
                    self.publisher.abandon().await;
                }
                result = self.run(std::future::pending()) => return result,
            }
        }
    }

    /// Runs until `shutdown` resolves or an error: catches up from the
    /// checkpoint, then follows new commits (woken by the store, never by a
    /// timer; a bounded poll, [`RelayConfig::poll_every`], covers a lost
    /// wake-up), publishing whatever is ready as one batch.
    pub async fn run(&self, shutdown: impl std::future::Future<Output = ()>) -> Result<(), RelayError> {
        let after = self.checkpoints.load_checkpoint(&self.config.name).await?;
        let batch_size = self.config.batch_size.max(1);
        let mut batches = self
            .reader
            .subscribe_stored(Subscribe { batch_size, poll_every: self.config.poll_every, ..Subscribe::after(after) })
            .ready_chunks(batch_size);
        tokio::pin!(shutdown);
        loop {
            let batch = tokio::select! {
                () = &mut shutdown => return Ok(()),
                batch = batches.next() => batch,
            };
            let Some(batch) = batch else { return Ok(()) };
            let events = batch.into_iter().collect::<Result<Vec<_>, _>>()?;
            self.publish_batch(events).await?;
        }
    }

    /// Publishes a batch and only then moves the checkpoint past it.
    ///
    /// An event stored with a `traceparent` is published in a `relay.publish`
    /// span, a child of the span that appended it, and travels under that
    /// span's context (so a consumer's span is the relay's child). The spans
    /// last as long as the batch's publish.
    async fn publish_batch(&self, mut events: Vec<StoredEvent>) -> Result<(), RelayError> {
        let Some(last) = events.last().map(|event| event.position) else {
            return Ok(());
        };
        let mut spans = Vec::new();
        if crate::trace::exporting() {
            for event in &mut events {
                let Some(parent) = event.traceparent() else { continue };
                let span = tracing::info_span!("relay.publish", stream_id = %event.stream_id, position = %event.position, event_type = %event.event_type);
                crate::trace::follow(&span, Some(&parent));
                event.bus_traceparent = crate::trace::of(&span);
                spans.push(span);
            }
        }
        self.bound
            .get_or_try_init(|| async {
                let identity = self.reader.log_identity().await?;
                tracing::info!(relay = %self.config.name, log = %identity, "publishing this log");
                self.publisher.bind_log(&crate::bus::BoundLog { identity, reader: self.reader.clone() }).await?;
                Ok::<_, RelayError>(())
            })
            .await?;
        let started = std::time::Instant::now();
        self.publisher.publish(&events).await?;
        metrics::histogram!("strata_bus_publish_seconds").record(started.elapsed().as_secs_f64());
        metrics::counter!("strata_bus_published_total").increment(events.len() as u64);
        drop(spans);
        self.checkpoints.save_checkpoint(&self.config.name, last).await?;
        tracing::debug!(events = events.len(), position = %last, "relayed");
        Ok(())
    }
}
