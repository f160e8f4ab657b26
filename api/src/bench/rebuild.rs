//! `strata bench rebuild`: the `orders` projection rebuilt from a scratch log
//! of `events` sample events (PostgreSQL or SQLite) into a fresh Redis key
//! prefix or MongoDB database: seconds, events/s, and the process's resident
//! memory before and at its peak during the rebuild (sampled every 50 ms), to
//! show it is streamed. The baseline is reading the same log alone, in the
//! same batches (the floor under any rebuild); `ratio` is the rebuild's rate
//! over that. On MongoDB a second baseline, `raw_write`, inserts the rebuilt
//! model's documents into an empty collection in unordered batches (the floor
//! for writing that model), and `write_ratio` compares the two.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::bail;
use serde_json::{json, Value};
use strata_projections::orders::sample::Sample;
use strata_projections::orders::OrdersProjection;
use strata_projections::{rebuild as rebuild_projection, ReadModelSink, RebuildConfig};
use strata_store::{EventReader, StreamAppend};

use super::project::{read_model_backend, sample_config, ScratchSink};
use super::{machine, median, open_scratch, round, Scratch};
use crate::progress::Progress;

/// Parameters of `bench rebuild`.
#[derive(Debug, Clone)]
pub struct RebuildBench {
    /// Where the scratch log is created (`postgres://…` or `sqlite://…`).
    pub event_store_url: String,
    /// `redis://…` or `mongodb://…`
    pub read_model_url: String,
    /// Sample events in the scratch log.
    pub events: usize,
    /// Events read per batch.
    pub batch_size: usize,
    /// Runs.
    pub runs: usize,
}

/// Runs `bench rebuild` and returns its JSON result.
pub async fn rebuild(bench: &RebuildBench) -> anyhow::Result<Value> {
    read_model_backend(&bench.read_model_url)?;
    if bench.events == 0 || bench.batch_size == 0 || bench.runs == 0 {
        bail!("--events, --batch-size and --runs must be at least 1");
    }
    let scratch = Scratch::create(&bench.event_store_url).await?;
    let result = run_all(bench, &scratch).await;
    scratch.remove().await?;
    result
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

    let mut seconds = Vec::new();
    let mut peaks = Vec::new();
    let mut before = Vec::new();
    let mut reads = Vec::new();
    let mut raw_writes: Vec<f64> = Vec::new();
    for run in 0..bench.runs {
        // The floor: reading (and decoding) the log alone, in the same batches.
        let started = std::time::Instant::now();
        let mut after = strata_store::Position::START;
        let mut read = 0;
        loop {
            let batch = reader.read_all(strata_store::ReadAll::after(after, bench.batch_size)).await?;
            let Some(last) = batch.last() else { break };
            after = last.position;
            read += batch.len();
        }
        let read_seconds = started.elapsed().as_secs_f64();
        if read != bench.events {
            bail!("read {read} of {} events", bench.events);
        }
        reads.push(read_seconds);

        let sink_scratch = ScratchSink::open(&bench.read_model_url).await?;
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
        let report = rebuild_projection(Arc::new(OrdersProjection), sink.clone(), reader.clone(), config, &mut |p| {
            progress.set(p.position.0, p.head.0)
        })
        .await?;
        progress.finish();
        sampler.abort();
        if report.events != bench.events as u64 {
            bail!("the rebuild read {} of {} events", report.events, bench.events);
        }
        let peak = peak.load(Ordering::Relaxed).max(resident_bytes());
        eprintln!(
            "run {}: {:.2} s, {:.0} events/s (reading alone {:.2} s), resident {:.0} MB before, {:.0} MB at peak",
            run + 1,
            report.seconds,
            report.events as f64 / report.seconds,
            read_seconds,
            start_rss as f64 / 1e6,
            peak as f64 / 1e6
        );
        seconds.push(report.seconds);
        peaks.push(peak as f64 / 1e6);
        before.push(start_rss as f64 / 1e6);
        #[cfg(all(feature = "redis", feature = "mongo"))]
        if matches!(sink_scratch, ScratchSink::Mongo(_)) {
            let generation = sink.live_generation("orders").await?.unwrap_or(0);
            let dump = sink.dump(&strata_projections::sink::Target { projection: "orders".into(), generation }).await?;
            let (raw_seconds, written) = super::mongo::raw_inserts(&bench.read_model_url, &dump, bench.batch_size).await?;
            eprintln!("run {}: raw inserts of the rebuilt model ({written} documents) {raw_seconds:.2} s", run + 1);
            raw_writes.push(raw_seconds);
        }
        sink_scratch.remove().await?;
    }
    let median_seconds = median(seconds.clone());
    let read_seconds = median(reads.clone());
    let ratio = median(reads.iter().zip(&seconds).map(|(read, rebuild)| read / rebuild).collect());
    let read_model = read_model_backend(&bench.read_model_url)?;
    let mut result = json!({
        "bench": "rebuild",
        "backend": backend,
        "read_model": read_model,
        "projection": "orders",
        "events": bench.events,
        "batch_size": bench.batch_size,
        "runs": bench.runs,
        "seconds": round(median_seconds, 2),
        "events_per_s": round(bench.events as f64 / median_seconds.max(1e-9), 0),
        "rss_before_mb": round(median(before), 0),
        "rss_peak_mb": round(median(peaks), 0),
        "baseline": { "bench": "read_log", "seconds": round(read_seconds, 2), "events_per_s": round(bench.events as f64 / read_seconds.max(1e-9), 0) },
        "ratio": round(ratio, 3),
        "machine": machine(),
    });
    if !raw_writes.is_empty() {
        let write_ratio = median(raw_writes.iter().zip(&seconds).map(|(raw, rebuild)| raw / rebuild).collect());
        result["raw_write"] = json!({ "bench": "raw_mongo_insert_of_the_model", "seconds": round(median(raw_writes), 2) });
        result["write_ratio"] = json!(round(write_ratio, 3));
    }
    Ok(result)
}
