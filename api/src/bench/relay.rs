//! `strata bench relay`: the relay (read the log in order, publish with acks
//! in flight, move the checkpoint) from a scratch log of `events` events to a
//! fresh JetStream stream, next to raw pipelined JetStream publishing of the
//! same payloads (pre-encoded, same message ids, same batch size) to another
//! fresh stream, in the same process; runs alternate which goes first.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde_json::{json, Value};
use strata_store::bus::{encode_event, JetStreamBus, JetStreamConfig, Publisher};
use strata_store::relay::{Relay, RelayConfig};
use strata_store::{ExpectedVersion, Position, ReadAll, StreamAppend, StreamId};
use uuid::Uuid;

use super::{machine, median, new_event, open_scratch, order_placed_payload, round, Scratch, ScratchStore};

/// Parameters of `bench relay`.
#[derive(Debug, Clone)]
pub struct RelayBench {
    /// Where the scratch log goes (only the server or directory is used).
    pub event_store_url: String,
    /// `nats://HOST:4222`.
    pub bus_url: String,
    /// Events in the log.
    pub events: usize,
    /// Events per publish batch (relay and raw).
    pub batch_size: usize,
    /// Runs.
    pub runs: usize,
}

/// Runs `bench relay` and returns its JSON result.
pub async fn relay(bench: &RelayBench) -> anyhow::Result<Value> {
    if !bench.bus_url.starts_with("nats://") {
        bail!("bench relay needs STRATA_BUS=nats://HOST:4222");
    }
    if bench.events == 0 || bench.batch_size == 0 || bench.runs == 0 {
        bail!("--events, --batch-size and --runs must be at least 1");
    }
    let scratch = Scratch::create(&bench.event_store_url).await?;
    let result = run_all(bench, &scratch).await;
    scratch.remove().await?;
    result
}

async fn run_all(bench: &RelayBench, scratch: &Scratch) -> anyhow::Result<Value> {
    let (store, backend) = open_scratch(scratch, 8).await?;
    fill(&store, bench.events).await?;
    let log = store.read_all(ReadAll::after(Position::START, bench.events)).await?;
    let payloads: Vec<(String, String, Vec<u8>)> = log
        .iter()
        .map(|event| (strata_store::bus::subject("benchraw", &event.stream_id), event.event_id.to_string(), encode_event(event)))
        .collect();
    let mut runs = Vec::new();
    for run in 0..bench.runs {
        let (relayed, raw) = if run % 2 == 0 {
            let relayed = measure_relay(bench, &store, run).await?;
            (relayed, measure_raw(bench, &payloads).await?)
        } else {
            let raw = measure_raw(bench, &payloads).await?;
            (measure_relay(bench, &store, run).await?, raw)
        };
        let rate = |seconds: f64| bench.events as f64 / seconds.max(1e-9);
        eprintln!("run {}: relay {:.0} events/s, raw publish {:.0} events/s", run + 1, rate(relayed), rate(raw));
        runs.push((rate(relayed), rate(raw), relayed, raw));
    }
    let ratios: Vec<f64> = runs.iter().map(|(relay, raw, _, _)| relay / raw.max(1e-9)).collect();
    Ok(json!({
        "bench": "relay",
        "backend": backend,
        "bus": "nats",
        "events": bench.events,
        "batch_size": bench.batch_size,
        "runs": bench.runs,
        "events_per_s": round(median(runs.iter().map(|r| r.0).collect()), 0),
        "seconds": round(median(runs.iter().map(|r| r.2).collect()), 3),
        "baseline": {
            "events_per_s": round(median(runs.iter().map(|r| r.1).collect()), 0),
            "seconds": round(median(runs.iter().map(|r| r.3).collect()), 3),
        },
        "ratio": round(median(ratios.clone()), 3),
        "per_run": runs.iter().zip(&ratios).map(|((relay, raw, _, _), ratio)| json!({
            "events_per_s": round(*relay, 0), "baseline_events_per_s": round(*raw, 0), "ratio": round(*ratio, 3),
        })).collect::<Vec<_>>(),
        "machine": machine(),
    }))
}

/// Appends `count` OrderPlaced events, up to 100 per append, 10 per stream.
async fn fill(store: &Arc<dyn ScratchStore>, count: usize) -> anyhow::Result<()> {
    let payload = order_placed_payload();
    let mut written = 0;
    while written < count {
        let batch = (count - written).min(100);
        let mut appends = Vec::new();
        let mut left = batch;
        while left > 0 {
            let events = left.min(10);
            appends.push(StreamAppend {
                stream_id: StreamId::new("order", Uuid::new_v4().simple())?,
                expected: ExpectedVersion::NoStream,
                events: (0..events).map(|_| new_event(&payload)).collect(),
            });
            left -= events;
        }
        store.append(appends).await?;
        written += batch;
    }
    Ok(())
}

/// Seconds the relay takes to put the whole log on a fresh stream.
async fn measure_relay(bench: &RelayBench, store: &Arc<dyn ScratchStore>, run: usize) -> anyhow::Result<f64> {
    let id = Uuid::new_v4().simple().to_string();
    let bus = JetStreamBus::connect(JetStreamConfig {
        stream_name: format!("BENCH_RELAY_{id}"),
        subject_prefix: format!("benchrelay{id}"),
        ..JetStreamConfig::new(bench.bus_url.clone())
    })
    .await?;
    let publisher: Arc<dyn Publisher> = Arc::new(bus.clone());
    let relay = Relay::new(
        store.clone(),
        store.clone(),
        publisher,
        RelayConfig { name: format!("bench-{run}-{id}"), batch_size: bench.batch_size, ..RelayConfig::default() },
    );
    let started = Instant::now();
    let relayed = relay.catch_up().await?;
    let seconds = started.elapsed().as_secs_f64();
    bus.delete().await?;
    if relayed != bench.events {
        bail!("the relay published {relayed} of {} events", bench.events);
    }
    Ok(seconds)
}

/// Seconds raw pipelined publishing of the pre-encoded payloads takes.
async fn measure_raw(bench: &RelayBench, payloads: &[(String, String, Vec<u8>)]) -> anyhow::Result<f64> {
    let client = async_nats::connect(bench.bus_url.as_str()).await.context("connecting to NATS")?;
    let context = async_nats::jetstream::new(client);
    let name = format!("BENCH_RAW_{}", Uuid::new_v4().simple());
    context
        .get_or_create_stream(async_nats::jetstream::stream::Config {
            name: name.clone(),
            subjects: vec!["benchraw.>".into()],
            duplicate_window: Duration::from_secs(120),
            ..Default::default()
        })
        .await?;
    let started = Instant::now();
    for batch in payloads.chunks(bench.batch_size) {
        let mut acks = Vec::with_capacity(batch.len());
        for (subject, message_id, payload) in batch {
            let message =
                async_nats::jetstream::message::PublishMessage::build().payload(payload.clone().into()).message_id(message_id.as_str());
            acks.push(context.send_publish(subject.clone(), message).await?);
        }
        for ack in acks {
            ack.await?;
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    context.delete_stream(&name).await?;
    Ok(seconds)
}
