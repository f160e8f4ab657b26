//! `strata bench rebuild`: the `orders` projection rebuilt from a scratch log
//! of `events` sample events (PostgreSQL or SQLite) into a fresh Redis key
//! prefix or MongoDB database: seconds, events/s, and the process's resident
//! memory before and at its peak during the rebuild (sampled every 50 ms), to
//! show it is streamed. The baseline is reading the same log alone, in the
//! same batches (the floor under any rebuild), alternating with the rebuild
//! run by run; `ratio` is the rebuild's rate over that. On MongoDB a second
//! baseline inserts the rebuilt model's documents into an empty collection in
//! unordered batches (the floor for writing that model):
//! `raw_write_seconds`, and `write_ratio` (its seconds over the rebuild's).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::bail;
use serde_json::Value;
use strata_projections::orders::sample::Sample;
use strata_projections::orders::OrdersProjection;
use strata_projections::{rebuild as rebuild_projection, ReadModelSink, RebuildConfig};
use strata_store::{EventReader, StreamAppend};

use super::kit::{alternate, median, open_scratch, round, Report, Scratch, Summary};
use super::project::{read_model_backend, sample_config, ScratchSink};
use strata_api::progress::Progress;

/// `bench rebuild`: its flags, and the event store and read models from the settings.
#[derive(Debug, Clone, clap::Args)]
pub struct RebuildBench {
    /// Where the scratch log is created (`STRATA_EVENT_STORE`: `postgres://…` or `sqlite://…`).
    #[arg(skip)]
    pub event_store_url: String,
    /// `redis://…` or `mongodb://…` (`STRATA_READ_MODEL`).
    #[arg(skip)]
    pub read_model_url: String,
    /// Sample events in the scratch log.
    #[arg(long, default_value_t = 1_000_000)]
    pub events: usize,
    /// Events read from the log per batch.
    #[arg(long, default_value_t = 5000)]
    pub batch_size: usize,
    /// Runs (medians are reported).
    #[arg(long, default_value_t = 1)]
    pub runs: usize,
}

/// Runs `bench rebuild` and returns its JSON result.
pub async fn rebuild(bench: &RebuildBench) -> anyhow::Result<Value> {
    read_model_backend(&bench.read_model_url)?;
    if bench.events == 0 || bench.batch_size == 0 || bench.runs == 0 {
        bail!("--events, --batch-size and --runs must be at least 1");
    }
    Scratch::around(&bench.event_store_url, async |scratch| run_all(bench, scratch).await).await
}

fn resident_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|statm| statm.split_whitespace().nth(1)?.parse::<u64>().ok())
        .map_or(0, |pages| pages * 4096)
}

async fn run_all(bench: &RebuildBench, scratch: &Scratch) -> anyhow::Result<Value> {
    let (store, backend) = open_scratch(scratch, 8).await?;
    // Fill a request at a time, up to 1 000 events each, one `StreamAppend`
    // per stream (its events in order): per-stream order holds, streams
    // interleave per request instead of per event.
    let mut progress = Progress::new("filling the log", "events", bench.events as u64);
    let mut request: Vec<StreamAppend> = Vec::new();
    let mut slots: std::collections::HashMap<strata_store::StreamId, usize> = std::collections::HashMap::new();
    let (mut in_request, mut written) = (0u64, 0u64);
    for append in Sample::new(sample_config(bench.events)).take(bench.events) {
        match slots.get(&append.stream_id) {
            Some(&slot) => request[slot].events.extend(append.events),
            None => {
                slots.insert(append.stream_id.clone(), request.len());
                request.push(append);
            }
        }
        in_request += 1;
        if in_request >= 1000 {
            store.append(std::mem::take(&mut request)).await?;
            slots.clear();
            written += in_request;
            in_request = 0;
            progress.set(written, bench.events as u64);
        }
    }
    if !request.is_empty() {
        store.append(request).await?;
    }
    progress.finish();
    let reader: Arc<dyn EventReader> = store.clone();

    let comparison =
        alternate(bench.runs, async |_| measure_rebuild(bench, &reader).await, async |_| read_log(bench, &reader).await).await?;
    let mut report = Report::new("rebuild")
        .with("backend", backend)
        .with("read_model", read_model_backend(&bench.read_model_url)?)
        .with("projection", "orders")
        .with("events", bench.events)
        .with("batch_size", bench.batch_size)
        .with("runs", bench.runs)
        .compared(&comparison, Some("read_log"));
    let write_ratios: Vec<f64> =
        comparison.runs.iter().filter_map(|(rebuild, _)| Some(rebuild.figure("raw_write_seconds")? / rebuild.seconds)).collect();
    if !write_ratios.is_empty() {
        report = report.with("write_ratio", round(median(write_ratios), 3));
    }
    Ok(report.finish())
}

/// The floor: reading (and decoding) the log alone, in the rebuild's batches.
async fn read_log(bench: &RebuildBench, reader: &Arc<dyn EventReader>) -> anyhow::Result<Summary> {
    let started = std::time::Instant::now();
    let mut after = strata_store::Position::START;
    let mut read = 0;
    loop {
        let batch = reader.read_all(strata_store::ReadAll::after(after, bench.batch_size)).await?;
        let Some(last) = batch.last() else { break };
        after = last.position;
        read += batch.len();
    }
    if read != bench.events {
        bail!("read {read} of {} events", bench.events);
    }
    Ok(Summary::new("events", read as u64, started.elapsed().as_secs_f64()))
}

/// The `orders` projection rebuilt into a scratch sink, with the process's
/// resident memory before and at its peak (sampled every 50 ms); on MongoDB
/// also `raw_write_seconds`: inserting the rebuilt model's documents plainly.
async fn measure_rebuild(bench: &RebuildBench, reader: &Arc<dyn EventReader>) -> anyhow::Result<Summary> {
    let sink_scratch = ScratchSink::open(&bench.read_model_url).await?;
    let summary = rebuild_into(bench, reader, &sink_scratch).await;
    sink_scratch.remove().await?;
    summary
}

async fn rebuild_into(bench: &RebuildBench, reader: &Arc<dyn EventReader>, sink_scratch: &ScratchSink) -> anyhow::Result<Summary> {
    let sink: Arc<dyn ReadModelSink> = sink_scratch.sink();
    let start_rss = resident_bytes();
    let peak = Arc::new(AtomicU64::new(start_rss));
    let sampler = {
        let peak = peak.clone();
        tokio::spawn(async move {
            loop {
                peak.fetch_max(resident_bytes(), Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
    };
    let config = RebuildConfig { batch_size: bench.batch_size, ..RebuildConfig::default() };
    let mut progress = Progress::new("rebuild", "positions", 0);
    let report =
        rebuild_projection(Arc::new(OrdersProjection), sink.clone(), reader.clone(), config, &mut |p| progress.set(p.position.0, p.head.0))
            .await;
    progress.finish();
    sampler.abort();
    let report = report?;
    if report.events != bench.events as u64 {
        bail!("the rebuild read {} of {} events", report.events, bench.events);
    }
    let peak = peak.load(Ordering::Relaxed).max(resident_bytes());
    let mut summary = Summary::new("events", report.events, report.seconds)
        .with("rss_before_mb", round(start_rss as f64 / 1e6, 0))
        .with("rss_peak_mb", round(peak as f64 / 1e6, 0));
    #[cfg(all(feature = "redis", feature = "mongo"))]
    if matches!(sink_scratch, ScratchSink::Mongo(_)) {
        let generation = sink.live_generation("orders").await?.unwrap_or(0);
        let dump = sink.dump(&strata_projections::sink::Target { projection: "orders".into(), generation }).await?;
        let (raw_seconds, written) = super::mongo::raw_inserts(&bench.read_model_url, &dump, bench.batch_size).await?;
        eprintln!("raw inserts of the rebuilt model ({written} documents): {raw_seconds:.2} s");
        summary = summary.with("raw_write_seconds", raw_seconds);
    }
    Ok(summary)
}
