//! [`ProjectionRunner`]: the live worker of one projection, fed by the bus.
//!
//! Each chunk of deliveries is planned against the live generation, committed
//! in one sink call (writes, stream versions, dead letters, position), and
//! only then acked. Killed at any instant, the worker loses nothing (unacked
//! deliveries come back) and doubles nothing (the stream guards make a
//! redelivered event a no-op). Replicas share the consumer group; per-stream
//! order holds because each commit is guarded by the stream versions it was
//! planned from, and a replica that sees a later event first fills the gap
//! from the log.
//!
//! A read model that lost its data (the sink answers no live generation, or
//! a commit is [`Committed::Lost`]: a Redis restarted without persistence,
//! flushed, its keys evicted) is rebuilt from the log at once, with an error
//! in the log and the projection's `losses` counted; the runner also checks
//! for that every [`RunnerConfig::check_every`] while idle, so a loss is
//! noticed without waiting for the next event.
//!
//! Workers are `loop { step }`: [`ProjectionRunner::handle`] takes one chunk,
//! so tests drive it without a bus.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use strata_store::bus::{Delivery, Subscriber, Subscription};
use strata_store::{EventReader, RecordedEvent};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tracing::Instrument;

use crate::apply::{PlanError, Planner, RetryPolicy};
use crate::projection::Projection;
use crate::rebuild::{ensure_live, RebuildConfig, RebuildError};
use crate::sink::{Committed, MetaField, ReadModelSink, SinkError, Target};

/// How long a stopping runner waits for its acks still in flight.
pub const ACK_DRAIN: Duration = Duration::from_secs(5);

/// How a runner works.
#[derive(Debug, Clone)]
pub struct RunnerConfig {
    /// Deliveries planned and committed together.
    pub batch_size: usize,
    /// Redelivery timeout of the subscription.
    pub ack_wait: Duration,
    /// Attempts before an event is parked (or the projection stops).
    pub retry: RetryPolicy,
    /// Commit attempts when guards conflict (replicas racing on a stream).
    pub max_conflicts: u32,
    /// Longest wait between attempts after a backend failure.
    pub max_backoff: Duration,
    /// How often the rate and state are reported to the sink.
    pub report_every: Duration,
    /// How often an idle runner checks that its read model still exists.
    pub check_every: Duration,
    /// How a lost read model is rebuilt.
    pub rebuild: RebuildConfig,
}

impl Default for RunnerConfig {
    fn default() -> Self {
        Self {
            batch_size: 500,
            // A healthy worker acks within milliseconds; after a crash the
            // deliveries it held come back to the others this soon.
            ack_wait: Duration::from_secs(10),
            retry: RetryPolicy::default(),
            max_conflicts: 20,
            max_backoff: Duration::from_secs(5),
            report_every: Duration::from_secs(1),
            check_every: Duration::from_secs(2),
            rebuild: RebuildConfig::default(),
        }
    }
}

/// Why a runner stopped, or a chunk failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RunnerError {
    /// The sink failed.
    #[error(transparent)]
    Sink(#[from] SinkError),
    /// Planning failed (log read, or a poison event under the stop policy).
    #[error(transparent)]
    Plan(#[from] PlanError),
    /// The bus failed.
    #[error(transparent)]
    Bus(#[from] strata_store::bus::BusError),
    /// Building the read model from the log (it had none, or lost it) failed.
    #[error("rebuilding the read model from the log failed")]
    Rebuild(#[source] Box<RebuildError>),
    /// Replicas kept racing on the same streams.
    #[error("gave up after {attempts} conflicting commits (last on stream {stream_id})")]
    Conflicts {
        /// Attempts made.
        attempts: u32,
        /// The stream of the last conflict.
        stream_id: String,
    },
}

/// What one chunk did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Handled {
    /// Events the commit covered (applied, skipped by type, or parked).
    pub events: u64,
    /// Commit attempts (1 unless replicas raced).
    pub attempts: u32,
}

/// The live worker of one projection.
pub struct ProjectionRunner {
    projection: Arc<dyn Projection>,
    sink: Arc<dyn ReadModelSink>,
    log: Arc<dyn EventReader>,
    config: RunnerConfig,
    /// The live generation as last seen. Safe to cache: a commit to a
    /// generation that was switched away from is refused (`Retired`), and then
    /// the runner looks again.
    target: std::sync::Mutex<Option<Target>>,
    /// This runner saw a live generation: its absence later is a loss.
    seen_live: std::sync::atomic::AtomicBool,
}

impl ProjectionRunner {
    /// A runner; nothing happens until [`run`](Self::run) or
    /// [`handle`](Self::handle).
    pub fn new(projection: Arc<dyn Projection>, sink: Arc<dyn ReadModelSink>, log: Arc<dyn EventReader>, config: RunnerConfig) -> Self {
        Self { projection, sink, log, config, target: std::sync::Mutex::new(None), seen_live: std::sync::atomic::AtomicBool::new(false) }
    }

    /// The consumer group of a projection.
    pub fn group(projection: &str) -> String {
        format!("projection-{projection}")
    }

    fn planner(&self) -> Planner<'_> {
        Planner {
            projection: self.projection.as_ref(),
            sink: self.sink.as_ref(),
            log: self.log.as_ref(),
            retry: self.config.retry,
            log_order: false,
        }
    }

    /// The live generation; built from the log first if there is none (a
    /// first start, or the read model lost its data).
    pub async fn target(&self) -> Result<Target, RunnerError> {
        if let Some(target) = self.target.lock().unwrap_or_else(|p| p.into_inner()).clone() {
            return Ok(target);
        }
        let name = self.projection.name();
        let generation = loop {
            match self.sink.live_generation(name).await? {
                Some(generation) => break generation,
                None => self.build_missing().await?,
            }
        };
        self.seen_live.store(true, std::sync::atomic::Ordering::Relaxed);
        let target = Target { projection: name.to_owned(), generation };
        *self.target.lock().unwrap_or_else(|p| p.into_inner()) = Some(target.clone());
        Ok(target)
    }

    /// Builds the read model from the log because it has no live generation;
    /// after this runner saw one, that is a loss: said loudly and counted.
    async fn build_missing(&self) -> Result<(), RunnerError> {
        let name = self.projection.name();
        let lost = self.seen_live.load(std::sync::atomic::Ordering::Relaxed);
        if lost {
            tracing::error!(
                projection = name,
                "the read model lost its data (no live generation, or its marker is gone); rebuilding it from the log"
            );
        }
        self.report_state(name, "rebuilding").await;
        let report = ensure_live(self.projection.clone(), self.sink.clone(), self.log.clone(), self.config.rebuild.clone())
            .await
            .map_err(|error| RunnerError::Rebuild(Box::new(error)))?;
        // It was live when that returned: gone again later is a loss.
        self.seen_live.store(true, std::sync::atomic::Ordering::Relaxed);
        if lost {
            let losses = self.sink.meta(name).await.map(|meta| meta.losses).unwrap_or(0) + 1;
            let _ = self.sink.set_meta(name, MetaField::Losses, Some(losses.to_string())).await;
            let events = report.as_ref().map_or(0, |r| r.events);
            self.report_error(
                name,
                &format!("the read model lost its data at {}; rebuilt from the log ({events} events)", chrono::Utc::now().to_rfc3339()),
            )
            .await;
        }
        if let Some(report) = report {
            tracing::info!(projection = name, events = report.events, seconds = report.seconds, "read model built from the log");
        }
        self.report_state(name, "running").await;
        Ok(())
    }

    /// Checks that the read model still exists (rebuilding it if not) and
    /// follows a switch to a new generation.
    pub async fn check_live(&self) -> Result<(), RunnerError> {
        let live = self.sink.live_generation(self.projection.name()).await?;
        let cached = self.target.lock().unwrap_or_else(|p| p.into_inner()).as_ref().map(|t| t.generation);
        if live.is_none() || live != cached {
            *self.target.lock().unwrap_or_else(|p| p.into_inner()) = None;
            self.target().await?;
        }
        Ok(())
    }

    /// Plans and commits `events` (in as many batches as fills need); returns
    /// how many of them (a prefix) are done and may be acked, and the poison
    /// error if the projection must stop.
    pub async fn handle(&self, events: &[RecordedEvent]) -> Result<(usize, Handled, Option<PlanError>), RunnerError> {
        let mut done = 0;
        let mut handled = Handled::default();
        loop {
            let (covered, more, stopped) = self.handle_batch(&events[done..]).await?;
            done += covered;
            handled.events += more.events;
            handled.attempts += more.attempts;
            // A batch that covered nothing but filled from the log made
            // progress; one that did neither would loop forever.
            if stopped.is_some() || done >= events.len() || (covered == 0 && more.events == 0) {
                return Ok((done, handled, stopped));
            }
        }
    }

    async fn handle_batch(&self, events: &[RecordedEvent]) -> Result<(usize, Handled, Option<PlanError>), RunnerError> {
        let planner = self.planner();
        let mut attempts = 0;
        loop {
            attempts += 1;
            let target = self.target().await?;
            let plan = planner.plan(&target, events, None).await?;
            match self.sink.commit(&target, &plan.batch).await? {
                Committed::Done => {
                    let handled = Handled { events: plan.batch.events, attempts };
                    return Ok((plan.covered, handled, plan.stopped));
                }
                Committed::Retired | Committed::Lost => {
                    // Lost: the next `target` rebuilds the read model.
                    *self.target.lock().unwrap_or_else(|p| p.into_inner()) = None;
                    continue;
                }
                Committed::Conflict { stream_id, actual } => {
                    tracing::debug!(projection = self.projection.name(), stream = %stream_id, actual, "commit conflict; planning again");
                    if attempts >= self.config.max_conflicts {
                        return Err(RunnerError::Conflicts { attempts, stream_id });
                    }
                }
            }
        }
    }

    /// Follows the bus until `shutdown` turns true or the projection stops on
    /// a poison event. Backend failures are retried with backoff (deliveries
    /// stay unacked and come back).
    ///
    /// Acks travel in the background (on JetStream each is a round trip to
    /// the server): the next chunk is planned while the last one's acks are
    /// in flight. Those still in flight at the end are awaited for at most
    /// [`ACK_DRAIN`]; an ack lost anyway is a redelivery, which the stream
    /// guards make harmless.
    pub async fn run(&self, subscriber: Arc<dyn Subscriber>, shutdown: watch::Receiver<bool>) -> Result<(), RunnerError> {
        let mut acks = JoinSet::new();
        let result = self.follow(subscriber, shutdown, &mut acks).await;
        let drained = tokio::time::timeout(ACK_DRAIN, async { while acks.join_next().await.is_some() {} }).await;
        if drained.is_err() {
            tracing::warn!(
                projection = self.projection.name(),
                pending = acks.len(),
                "acks still in flight at the end; they will be redelivered"
            );
        }
        result
    }

    async fn follow(
        &self,
        subscriber: Arc<dyn Subscriber>,
        mut shutdown: watch::Receiver<bool>,
        acks: &mut JoinSet<()>,
    ) -> Result<(), RunnerError> {
        let name = self.projection.name().to_owned();
        let mut backoff = Duration::from_millis(50);
        let mut report = Report::new(self.config.report_every);
        self.report_state(&name, "running").await;
        'subscribe: loop {
            if *shutdown.borrow() {
                return Ok(());
            }
            let subscription = Subscription { ack_wait: self.config.ack_wait, ..Subscription::group(Self::group(&name)) };
            let stream = match subscriber.subscribe(subscription).await {
                Ok(stream) => stream,
                Err(error) => {
                    self.report_error(&name, &strata_store::chain(&error)).await;
                    if sleep_or_shutdown(backoff, &mut shutdown).await {
                        return Ok(());
                    }
                    backoff = (backoff * 2).min(self.config.max_backoff);
                    continue;
                }
            };
            let mut chunks = stream.ready_chunks(self.config.batch_size);
            let mut check = tokio::time::interval(self.config.check_every);
            check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                let chunk = tokio::select! {
                    chunk = chunks.next() => chunk,
                    _ = shutdown.changed() => return Ok(()),
                    _ = check.tick() => {
                        if let Err(error) = self.check_live().await {
                            tracing::warn!(projection = %name, error = %strata_store::chain(&error), "checking the read model failed");
                            self.report_error(&name, &strata_store::chain(&error)).await;
                        }
                        continue;
                    }
                };
                let Some(chunk) = chunk else { continue 'subscribe };
                let mut deliveries = Vec::with_capacity(chunk.len());
                let mut failed = None;
                for delivery in chunk {
                    match delivery {
                        Ok(delivery) => deliveries.push(delivery),
                        Err(error) => failed = Some(error),
                    }
                }
                if self.wait_while_paused(&name, &mut shutdown).await {
                    return Ok(());
                }
                match self.settle(deliveries, acks).await {
                    Ok((handled, stopped)) => {
                        backoff = Duration::from_millis(50);
                        if let Some(rate) = report.count(handled.events) {
                            let _ = self.sink.set_meta(&name, MetaField::Rate, Some(rate.to_string())).await;
                        }
                        if let Some(stopped) = stopped {
                            let message = stopped.to_string();
                            self.report_error(&name, &message).await;
                            self.report_state(&name, "stopped").await;
                            return Err(stopped.into());
                        }
                    }
                    Err(error) => {
                        tracing::warn!(projection = %name, error = %strata_store::chain(&error), "projection chunk failed; deliveries will come back");
                        self.report_error(&name, &strata_store::chain(&error)).await;
                        if sleep_or_shutdown(backoff, &mut shutdown).await {
                            return Ok(());
                        }
                        backoff = (backoff * 2).min(self.config.max_backoff);
                        continue 'subscribe;
                    }
                }
                if let Some(error) = failed {
                    tracing::warn!(projection = %name, error = %strata_store::chain(&error), "subscription failed; subscribing again");
                    continue 'subscribe;
                }
            }
        }
    }

    /// Handles a chunk of deliveries and acks what was committed (in a task
    /// of `acks`).
    ///
    /// The chunk is applied in one `projection.apply` span linked to the
    /// trace of each event in it (a batch has no single parent).
    async fn settle(&self, deliveries: Vec<Delivery>, acks: &mut JoinSet<()>) -> Result<(Handled, Option<PlanError>), RunnerError> {
        let events: Vec<RecordedEvent> = deliveries.iter().map(|d| d.event.clone()).collect();
        let span = tracing::info_span!("projection.apply", projection = self.projection.name(), events = events.len());
        for delivery in &deliveries {
            strata_store::trace::link(&span, delivery.traceparent.as_deref());
        }
        let (covered, handled, stopped) = match self.handle(&events).instrument(span).await {
            Ok(done) => done,
            Err(error) => {
                // Give them back now rather than after the ack timeout.
                metrics::counter!("strata_bus_consumed_total", "group" => Self::group(self.projection.name()), "result" => "nacked")
                    .increment(deliveries.len() as u64);
                let _ = futures_util::future::join_all(deliveries.into_iter().map(Delivery::nack)).await;
                return Err(error);
            }
        };
        metrics::counter!("strata_bus_consumed_total", "group" => Self::group(self.projection.name()), "result" => "acked")
            .increment(covered as u64);
        while acks.try_join_next().is_some() {}
        let settled: Vec<Delivery> = deliveries.into_iter().take(covered).collect();
        acks.spawn(async move {
            for result in futures_util::future::join_all(settled.into_iter().map(Delivery::ack)).await {
                // A lost ack means a redelivery, which the guards make harmless.
                if let Err(error) = result {
                    tracing::debug!(error = %strata_store::chain(&error), "ack failed; the event will be redelivered and skipped");
                }
            }
        });
        Ok((handled, stopped))
    }

    /// Holds the worker while the projection is paused; true on shutdown.
    async fn wait_while_paused(&self, name: &str, shutdown: &mut watch::Receiver<bool>) -> bool {
        let mut announced = false;
        loop {
            match self.sink.meta(name).await {
                Ok(meta) if !meta.paused => {
                    if announced {
                        self.report_state(name, "running").await;
                    }
                    return false;
                }
                Ok(_) if !announced => {
                    announced = true;
                    self.report_state(name, "paused").await;
                }
                Ok(_) => {}
                Err(error) => tracing::warn!(projection = name, error = %strata_store::chain(&error), "reading the pause flag failed"),
            }
            if sleep_or_shutdown(Duration::from_millis(200), shutdown).await {
                return true;
            }
        }
    }

    async fn report_state(&self, name: &str, state: &str) {
        if let Err(error) = self.sink.set_meta(name, MetaField::State, Some(state.to_owned())).await {
            tracing::warn!(projection = name, error = %strata_store::chain(&error), "reporting the projection state failed");
        }
    }

    async fn report_error(&self, name: &str, error: &str) {
        if let Err(e) = self.sink.set_meta(name, MetaField::LastError, Some(error.to_owned())).await {
            tracing::warn!(projection = name, error = %strata_store::chain(&e), "reporting the last error failed");
        }
    }
}

/// Sleeps; true if shutdown was asked meanwhile.
async fn sleep_or_shutdown(duration: Duration, shutdown: &mut watch::Receiver<bool>) -> bool {
    tokio::select! {
        _ = tokio::time::sleep(duration) => *shutdown.borrow(),
        _ = shutdown.changed() => true,
    }
}

/// Counts events and says the rate once per interval.
struct Report {
    every: Duration,
    since: Instant,
    events: u64,
}

impl Report {
    fn new(every: Duration) -> Self {
        Self { every, since: Instant::now(), events: 0 }
    }

    fn count(&mut self, events: u64) -> Option<u64> {
        self.events += events;
        let elapsed = self.since.elapsed();
        if elapsed < self.every {
            return None;
        }
        let rate = (self.events as f64 / elapsed.as_secs_f64()).round() as u64;
        self.since = Instant::now();
        self.events = 0;
        Some(rate)
    }
}
