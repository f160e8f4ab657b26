//! Rebuilds: the next generation of a projection, built beside the live one
//! straight from the log, then switched to in one step.
//!
//! 1. Reserve generation N+1 and mark it `rebuilding` (only the live and the
//!    rebuilding generation take commits).
//! 2. Read the log in batches (the next batch is read while the current one is
//!    planned), plan each batch with the previous one's state carried over,
//!    and commit it while the next is planned: reads, planning and writes
//!    overlap, and memory holds about two batches, whatever the log's size.
//! 3. At the log's head, switch `live` to N+1: readers move in one step,
//!    from a whole old model to a whole new one. The switch is a
//!    compare-and-set on the `rebuilding` mark: a rebuild superseded by a
//!    newer one (another process, the CLI beside GraphQL) cannot switch.
//! 4. Catch up once more from the log: events committed to the log while the
//!    switch happened may have gone to the old generation; the stream guards
//!    make this final pass and the live workers (now writing N+1) agree.
//! 5. Drop the old generation.
//!
//! A rebuild that finds another one unfinished (a killed `projections
//! rebuild`, a projector killed while building at start-up) drops that
//! generation first. [`ensure_live`] builds a projection that has no live
//! generation (first start, or its data was lost), waiting for a replica
//! that is already building it instead of racing it.

use std::sync::Arc;
use std::time::{Duration, Instant};

use strata_store::{EventReader, Position, ReadAll, ReadError, RecordedEvent};
use tokio::sync::mpsc;

use crate::apply::{last_position, Carry, PlanError, Planner, RetryPolicy};
use crate::projection::Projection;
use crate::sink::{Committed, GenerationStats, MetaField, ReadModelSink, RebuildReading, SinkError, Target};

/// How a rebuild reads and writes.
#[derive(Debug, Clone)]
pub struct RebuildConfig {
    /// Events read from the log per batch.
    pub batch_size: usize,
    /// Retries of poison events (as in the runner).
    pub retry: RetryPolicy,
    /// How often it writes its [`RebuildReading`] into the projection's state.
    pub report_every: Duration,
}

impl Default for RebuildConfig {
    fn default() -> Self {
        Self { batch_size: 2000, retry: RetryPolicy::default(), report_every: Duration::from_secs(1) }
    }
}

/// Where a rebuild is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RebuildProgress {
    /// Position reached.
    pub position: Position,
    /// The log's head when the rebuild started.
    pub head: Position,
    /// Events read so far.
    pub events: u64,
}

/// What a rebuild did.
#[derive(Debug, Clone, PartialEq)]
pub struct RebuildReport {
    /// The new generation.
    pub generation: u64,
    /// The generation it replaced (dropped).
    pub previous: Option<u64>,
    /// Events read from the log.
    pub events: u64,
    /// Events the projection covered (followed categories).
    pub covered: u64,
    /// Dead letters in the new generation.
    pub dead_letters: u64,
    /// Whole duration.
    pub seconds: f64,
}

/// Why a rebuild failed. The live generation is untouched unless the switch
/// happened (then the new one is whole).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RebuildError {
    /// The sink failed.
    #[error(transparent)]
    Sink(#[from] SinkError),
    /// Reading the log failed.
    #[error("reading the log failed")]
    Log(#[from] ReadError),
    /// Planning failed (including a poison event under the stop policy).
    #[error(transparent)]
    Plan(#[from] PlanError),
    /// Another rebuild took over the generation.
    #[error("generation {generation} was retired while it was being rebuilt (another rebuild?)")]
    Retired {
        /// The generation.
        generation: u64,
    },
    /// Live workers kept racing the final catch-up.
    #[error("the final catch-up kept conflicting with live workers")]
    Conflicts,
}

/// Rebuilds `projection` from `log` into a new generation of `sink`.
pub async fn rebuild(
    projection: Arc<dyn Projection>,
    sink: Arc<dyn ReadModelSink>,
    log: Arc<dyn EventReader>,
    config: RebuildConfig,
    progress: &mut (dyn FnMut(RebuildProgress) + Send),
) -> Result<RebuildReport, RebuildError> {
    let started = Instant::now();
    let name = projection.name().to_owned();
    let previous = sink.live_generation(&name).await?;
    // A new rebuild supersedes an unfinished one (its process died, or it is
    // still running: its next commit is then refused as retired).
    if let Some(unfinished) = sink.meta(&name).await?.rebuilding.filter(|g| Some(*g) != previous) {
        tracing::warn!(projection = %name, generation = unfinished, "dropping the generation of an unfinished rebuild");
        sink.set_meta(&name, MetaField::Rebuilding, None).await?;
        sink.set_meta(&name, MetaField::RebuildProgress, None).await?;
        sink.drop_generation(&Target { projection: name.clone(), generation: unfinished }).await?;
    }
    let generation = sink.new_generation(&name).await?;
    sink.set_meta(&name, MetaField::Rebuilding, Some(generation.to_string())).await?;
    let target = Target { projection: name.clone(), generation };
    let result = build(&*projection, sink.clone(), log.clone(), &target, &config, progress).await;
    let outcome = async {
        let (events, covered, position) = result?;
        if !sink.switch_live(&name, generation).await? {
            return Err(RebuildError::Retired { generation });
        }
        // Events that reached the log around the switch: see the module docs.
        let (more, more_covered) = catch_up(&*projection, &*sink, &*log, &target, &config, position).await?;
        Ok::<_, RebuildError>((events + more, covered + more_covered))
    }
    .await;
    // Clear the mark only if it is still ours (a newer rebuild may have
    // superseded this one; its mark must stay).
    let meta = sink.meta(&name).await?;
    if meta.rebuilding == Some(generation) {
        sink.set_meta(&name, MetaField::Rebuilding, None).await?;
    }
    if meta.rebuild.is_some_and(|reading| reading.generation == generation) {
        sink.set_meta(&name, MetaField::RebuildProgress, None).await?;
    }
    let (events, covered) = match outcome {
        Ok(counts) => counts,
        Err(error) => {
            if sink.live_generation(&name).await? != Some(generation) {
                sink.drop_generation(&target).await?;
            }
            return Err(error);
        }
    };
    if let Some(previous) = previous.filter(|p| *p != generation) {
        tokio::time::sleep(sink.retire_grace()).await;
        sink.drop_generation(&Target { projection: name.clone(), generation: previous }).await?;
    }
    let dead_letters = sink.stats(&target).await?.dead_letters;
    Ok(RebuildReport { generation, previous, events, covered, dead_letters, seconds: started.elapsed().as_secs_f64() })
}

/// Builds `projection` from the log if it has no live generation (a first
/// start, or the backend lost it); `None` if it had one. When another worker
/// is already building it (its `rebuilding` generation makes progress),
/// waits for that build instead of superseding it.
pub async fn ensure_live(
    projection: Arc<dyn Projection>,
    sink: Arc<dyn ReadModelSink>,
    log: Arc<dyn EventReader>,
    config: RebuildConfig,
) -> Result<Option<RebuildReport>, RebuildError> {
    let name = projection.name().to_owned();
    let mut attempts = 0;
    loop {
        if sink.live_generation(&name).await?.is_some() {
            return Ok(None);
        }
        wait_for_other_build(&*sink, &name).await?;
        if sink.live_generation(&name).await?.is_some() {
            return Ok(None);
        }
        attempts += 1;
        match rebuild(projection.clone(), sink.clone(), log.clone(), config.clone(), &mut |_| {}).await {
            Ok(report) => return Ok(Some(report)),
            Err(RebuildError::Retired { .. }) if attempts < 5 => {
                tracing::info!(projection = %name, "another worker is building the read model; waiting for it");
            }
            Err(error) => return Err(error),
        }
    }
}

/// Waits while another worker's build makes progress (its generation's
/// position moves, or it switches); returns when there is none, it ended, or
/// it made no progress for ten seconds (its worker is presumed dead: a live
/// build commits a batch far more often).
async fn wait_for_other_build(sink: &dyn ReadModelSink, name: &str) -> Result<(), SinkError> {
    let mut last: Option<(u64, GenerationStats)> = None;
    let mut since = Instant::now();
    loop {
        let Some(generation) = sink.meta(name).await?.rebuilding else { return Ok(()) };
        if sink.live_generation(name).await?.is_some() {
            return Ok(());
        }
        let stats = sink.stats(&Target { projection: name.to_owned(), generation }).await?;
        if last.as_ref() != Some(&(generation, stats.clone())) {
            last = Some((generation, stats));
            since = Instant::now();
        } else if since.elapsed() > Duration::from_secs(10) {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Reads the log to its head into `target`, pipelined; returns events read,
/// events covered and the position reached.
async fn build(
    projection: &dyn Projection,
    sink: Arc<dyn ReadModelSink>,
    log: Arc<dyn EventReader>,
    target: &Target,
    config: &RebuildConfig,
    progress: &mut (dyn FnMut(RebuildProgress) + Send),
) -> Result<(u64, u64, Position), RebuildError> {
    let head = log.head_position().await?;
    let started_at = chrono::Utc::now();
    let reading = |position: Position| RebuildReading {
        generation: target.generation,
        events_done: position.0.min(head.0),
        events_total: head.0,
        started_at,
        at: chrono::Utc::now(),
    };
    report(&*sink, target, &reading(Position::START)).await;
    let mut last_report = Instant::now();
    let planner = Planner { projection, sink: sink.as_ref(), log: log.as_ref(), retry: config.retry, log_order: true };
    // The reader runs ahead by two batches.
    let (batches, mut incoming) = mpsc::channel::<Result<Vec<RecordedEvent>, ReadError>>(2);
    let batch_size = config.batch_size.max(1);
    let reader_log = log.clone();
    let reader = tokio::spawn(async move {
        let log = reader_log;
        let mut after = Position::START;
        loop {
            let batch = log.read_all(ReadAll::after(after, batch_size)).await;
            let done = match &batch {
                Ok(events) => {
                    after = last_position(events).max(after);
                    events.len() < batch_size || after >= head
                }
                Err(_) => true,
            };
            if batches.send(batch).await.is_err() || done {
                return;
            }
        }
    });

    let mut carry: Option<Carry> = None;
    let mut in_flight: Option<tokio::task::JoinHandle<Result<Committed, SinkError>>> = None;
    let mut events_read = 0;
    let mut covered = 0;
    let mut position = Position::START;
    let mut last_progress = Instant::now();
    let (mut waiting_reads, mut planning, mut waiting_commits) = (Duration::ZERO, Duration::ZERO, Duration::ZERO);
    loop {
        let clock = Instant::now();
        let Some(batch) = incoming.recv().await else { break };
        waiting_reads += clock.elapsed();
        let batch = batch?;
        if batch.is_empty() {
            break;
        }
        events_read += batch.len() as u64;
        position = last_position(&batch).max(position);
        let clock = Instant::now();
        let plan = planner.plan(target, &batch, carry.as_ref()).await?;
        planning += clock.elapsed();
        if let Some(stopped) = plan.stopped {
            settle(in_flight.take(), target).await?;
            return Err(stopped.into());
        }
        covered += plan.batch.events;
        let clock = Instant::now();
        settle(in_flight.take(), target).await?;
        waiting_commits += clock.elapsed();
        if last_report.elapsed() >= config.report_every {
            last_report = Instant::now();
            report(&*sink, target, &reading(position)).await;
        }
        let (sink, target) = (sink.clone(), target.clone());
        let batch = plan.batch;
        in_flight = Some(tokio::spawn(async move { sink.commit(&target, &batch).await }));
        carry = Some(plan.carry);
        if last_progress.elapsed() >= Duration::from_millis(200) {
            last_progress = Instant::now();
            progress(RebuildProgress { position, head, events: events_read });
        }
    }
    settle(in_flight.take(), target).await?;
    let _ = reader.await;
    // Where the time went: the slowest stage is the one the others wait for.
    tracing::debug!(
        projection = %target.projection,
        waiting_for_reads_s = waiting_reads.as_secs_f64(),
        planning_s = planning.as_secs_f64(),
        waiting_for_commits_s = waiting_commits.as_secs_f64(),
        "rebuild stages"
    );
    progress(RebuildProgress { position, head, events: events_read });
    report(&*sink, target, &reading(position)).await;
    Ok((events_read, covered, position))
}

/// Writes how far the rebuild is where `projections` reads it. Advisory: a
/// failed write is logged and the rebuild goes on (its commits would fail
/// on their own if the backend were gone).
async fn report(sink: &dyn ReadModelSink, target: &Target, reading: &RebuildReading) {
    let Ok(text) = serde_json::to_string(reading) else { return };
    if let Err(error) = sink.set_meta(&target.projection, MetaField::RebuildProgress, Some(text)).await {
        tracing::warn!(projection = %target.projection, error = %strata_store::chain(&error), "writing the rebuild's progress failed");
    }
}

async fn settle(in_flight: Option<tokio::task::JoinHandle<Result<Committed, SinkError>>>, target: &Target) -> Result<(), RebuildError> {
    let Some(handle) = in_flight else { return Ok(()) };
    let committed = handle.await.map_err(|e| SinkError::backend("committing a rebuild batch", e))??;
    match committed {
        Committed::Done => Ok(()),
        Committed::Retired | Committed::Lost => Err(RebuildError::Retired { generation: target.generation }),
        // Before the switch the rebuild is the only writer of its generation.
        Committed::Conflict { .. } => Err(RebuildError::Conflicts),
    }
}

/// Applies the log after `after` to `target` with fresh state per batch
/// (live workers may be writing the same generation now).
async fn catch_up(
    projection: &dyn Projection,
    sink: &dyn ReadModelSink,
    log: &dyn EventReader,
    target: &Target,
    config: &RebuildConfig,
    mut after: Position,
) -> Result<(u64, u64), RebuildError> {
    let planner = Planner { projection, sink, log, retry: config.retry, log_order: false };
    let (mut events, mut covered) = (0, 0);
    loop {
        let batch = log.read_all(ReadAll::after(after, config.batch_size.max(1))).await?;
        if batch.is_empty() {
            return Ok((events, covered));
        }
        let mut attempts = 0;
        loop {
            attempts += 1;
            let plan = planner.plan(target, &batch, None).await?;
            if let Some(stopped) = plan.stopped {
                return Err(stopped.into());
            }
            match sink.commit(target, &plan.batch).await? {
                Committed::Done => {
                    covered += plan.batch.events;
                    break;
                }
                Committed::Retired | Committed::Lost => return Err(RebuildError::Retired { generation: target.generation }),
                Committed::Conflict { .. } if attempts < 20 => continue,
                Committed::Conflict { .. } => return Err(RebuildError::Conflicts),
            }
        }
        events += batch.len() as u64;
        after = last_position(&batch);
    }
}
