//! `strata projections list|status|rebuild|pause|resume`: operating the read
//! models of `STRATA_READ_MODEL` against the log of `STRATA_EVENT_STORE`.
//! Pause and resume reach every worker (the flag lives in the read-model
//! store); rebuild runs here, beside the live workers, and switches readers
//! when it is whole.

use std::sync::Arc;

use anyhow::bail;
use serde_json::{json, Value};
use strata_projections::sink::{MetaField, Target};
use strata_projections::{orders, rebuild, Projection, ReadModelSink, RebuildConfig};
use strata_store::{EventReader, Position, ReadAll};

use crate::progress::Progress;

/// The projection called `name`, or an error listing the known ones.
pub fn find(name: &str) -> anyhow::Result<Arc<dyn Projection>> {
    let all = orders::projections();
    let known: Vec<String> = all.iter().map(|p| p.name().to_owned()).collect();
    match all.into_iter().find(|p| p.name() == name) {
        Some(projection) => Ok(projection),
        None => bail!("unknown projection {name:?}; known: {}", known.join(", ")),
    }
}

/// A projection (read model) as operators see it, in `projections status`
/// and the GraphQL `projections` query.
#[derive(Debug, Clone, serde::Serialize, async_graphql::SimpleObject)]
#[graphql(name = "Projection")]
pub struct ProjectionStatus {
    /// Its name.
    pub name: String,
    /// Its code's version.
    pub version: u32,
    /// `running`, `paused`, `not built`, or what its workers last reported.
    pub state: String,
    /// Whether its workers hold their deliveries.
    pub paused: bool,
    /// The generation readers see.
    pub generation: Option<u64>,
    /// The generation being rebuilt beside it.
    pub rebuilding: Option<u64>,
    /// Highest log position applied.
    pub position: u64,
    /// The log's head.
    #[graphql(skip)]
    pub head: u64,
    /// Events behind the log's head.
    pub lag: u64,
    /// Age in seconds of the oldest event it has not applied (0 when caught
    /// up; null when that event could not be read).
    pub lag_seconds: Option<f64>,
    /// The rebuild running beside it, as the rebuild last reported (about
    /// every second); null when none runs.
    pub rebuild: Option<RebuildStatus>,
    /// Events the live generation has taken (applied, skipped or parked).
    #[graphql(skip)]
    pub events: u64,
    /// Events per second, as last reported.
    #[graphql(name = "rate")]
    pub rate_per_s: Option<u64>,
    /// The last error its workers reported.
    pub last_error: Option<String>,
    /// Events parked in its dead-letter table.
    pub dead_letters: u64,
    /// Times its workers found the read model lost (its backend restarted
    /// empty, its keys evicted) and rebuilt it from the log.
    pub losses: u64,
    /// The first parked events.
    #[graphql(skip)]
    pub parked: Vec<strata_projections::sink::DeadLetter>,
}

/// How far a running rebuild is.
#[derive(Debug, Clone, serde::Serialize, async_graphql::SimpleObject)]
#[graphql(name = "RebuildProgress")]
pub struct RebuildStatus {
    /// The generation being built.
    pub generation: u64,
    /// Log positions it has read.
    pub events_done: u64,
    /// The log's head when it began: what it reads before it switches readers.
    pub events_total: u64,
    /// Its rate since it began.
    pub events_per_second: f64,
    /// Seconds to go at that rate (null until it has a rate).
    pub eta_seconds: Option<f64>,
}

impl From<&strata_projections::sink::RebuildReading> for RebuildStatus {
    fn from(reading: &strata_projections::sink::RebuildReading) -> Self {
        Self {
            generation: reading.generation,
            events_done: reading.events_done,
            events_total: reading.events_total,
            events_per_second: reading.events_per_second(),
            eta_seconds: reading.eta_seconds(),
        }
    }
}

/// Age in seconds of the first event after `position` (0 when there is none).
async fn lag_seconds(log: &dyn EventReader, position: u64) -> anyhow::Result<f64> {
    let oldest = log.read_all(ReadAll::after(Position(position), 1)).await?;
    Ok(oldest.first().map_or(0.0, |event| (chrono::Utc::now() - event.recorded_at).num_milliseconds().max(0) as f64 / 1_000.0))
}

/// State, position, lag, rate, last error and parked events of one projection.
pub async fn status(sink: &dyn ReadModelSink, log: &dyn EventReader, projection: &dyn Projection) -> anyhow::Result<ProjectionStatus> {
    let name = projection.name();
    let meta = sink.meta(name).await?;
    let head = log.head_position().await?.0;
    let live = sink.live_generation(name).await?;
    let (position, events, dead_letters, parked) = match live {
        Some(generation) => {
            let target = Target { projection: name.to_owned(), generation };
            let stats = sink.stats(&target).await?;
            let parked = sink.dead_letters(&target, 20).await?;
            (stats.position.0, stats.events, stats.dead_letters, parked)
        }
        None => (0, 0, 0, Vec::new()),
    };
    // Advisory: an event that cannot be read (its upcast fails) must not hide the rest of the status.
    let lag_seconds = if position < head {
        lag_seconds(log, position)
            .await
            .inspect_err(
                |error| tracing::warn!(projection = name, error = %format_args!("{error:#}"), "reading the oldest unapplied event failed"),
            )
            .ok()
    } else {
        Some(0.0)
    };
    // A reading of a rebuild that was superseded (its mark is another generation's) is stale.
    let rebuild = meta.rebuild.as_ref().filter(|reading| meta.rebuilding == Some(reading.generation)).map(RebuildStatus::from);
    let state = match (&meta.state, meta.paused, live) {
        (_, true, _) => "paused".to_owned(),
        (_, _, None) => "not built".to_owned(),
        (Some(state), _, _) => state.clone(),
        (None, _, _) => "idle".to_owned(),
    };
    Ok(ProjectionStatus {
        name: name.to_owned(),
        version: projection.version(),
        state,
        paused: meta.paused,
        generation: live,
        rebuilding: meta.rebuilding,
        position,
        head,
        lag: head.saturating_sub(position),
        lag_seconds,
        rebuild,
        events,
        rate_per_s: meta.rate,
        last_error: meta.last_error,
        dead_letters,
        losses: meta.losses,
        parked,
    })
}

/// Prints one line per projection (or JSON).
pub async fn list(sink: &dyn ReadModelSink, log: &dyn EventReader, as_json: bool) -> anyhow::Result<()> {
    let mut rows = Vec::new();
    for projection in orders::projections() {
        rows.push(serde_json::to_value(status(sink, log, projection.as_ref()).await?)?);
    }
    if as_json {
        println!("{}", serde_json::to_string(&rows)?);
        return Ok(());
    }
    println!("{:<12} {:>7} {:<10} {:>10} {:>10} {:>12}", "NAME", "VERSION", "STATE", "POSITION", "LAG", "DEAD LETTERS");
    for row in rows {
        println!(
            "{:<12} {:>7} {:<10} {:>10} {:>10} {:>12}",
            row["name"].as_str().unwrap_or_default(),
            row["version"],
            row["state"].as_str().unwrap_or_default(),
            row["position"],
            row["lag"],
            row["dead_letters"],
        );
    }
    Ok(())
}

/// Prints a projection's status (or JSON).
pub async fn print_status(sink: &dyn ReadModelSink, log: &dyn EventReader, name: &str, as_json: bool) -> anyhow::Result<()> {
    let status = serde_json::to_value(status(sink, log, find(name)?.as_ref()).await?)?;
    if as_json {
        println!("{}", serde_json::to_string(&status)?);
        return Ok(());
    }
    for key in [
        "name",
        "version",
        "state",
        "generation",
        "rebuilding",
        "position",
        "head",
        "lag",
        "lag_seconds",
        "rebuild",
        "events",
        "rate_per_s",
        "last_error",
        "dead_letters",
        "losses",
    ] {
        let value = &status[key];
        let text = match value {
            Value::String(text) => text.clone(),
            Value::Null => "-".to_owned(),
            other => other.to_string(),
        };
        println!("{key:<13} {text}");
    }
    for letter in status["parked"].as_array().into_iter().flatten() {
        println!(
            "parked        {} v{} {} ({}): {}",
            letter["streamId"].as_str().unwrap_or_default(),
            letter["streamVersion"],
            letter["eventType"].as_str().unwrap_or_default(),
            letter["eventId"].as_str().unwrap_or_default(),
            letter["reason"].as_str().unwrap_or_default(),
        );
    }
    Ok(())
}

/// Rebuilds `name` with a progress bar; prints the report as JSON.
pub async fn rebuild_one(sink: Arc<dyn ReadModelSink>, log: Arc<dyn EventReader>, name: &str, batch_size: usize) -> anyhow::Result<Value> {
    let projection = find(name)?;
    let head = log.head_position().await?.0;
    let mut progress = Progress::new("rebuild", "positions", head);
    let config = RebuildConfig { batch_size, ..RebuildConfig::default() };
    let report = rebuild(projection, sink, log, config, &mut |p| progress.set(p.position.0, p.head.0.max(head))).await?;
    progress.finish();
    Ok(json!({
        "projection": name,
        "generation": report.generation,
        "previous": report.previous,
        "events": report.events,
        "dead_letters": report.dead_letters,
        "seconds": report.seconds,
        "events_per_s": (report.events as f64 / report.seconds.max(1e-9)).round(),
    }))
}

/// Pauses or resumes every worker of `name`.
pub async fn set_paused(sink: &dyn ReadModelSink, name: &str, paused: bool) -> anyhow::Result<()> {
    find(name)?;
    sink.set_meta(name, MetaField::Paused, paused.then(|| "1".to_owned())).await?;
    Ok(())
}
