//! `strata bench commands`: the command path against its ceiling.
//!
//! Writers send `Restock` commands to `inventory-<SKU>` aggregates picked at
//! random among `aggregates` (1 = one hot aggregate, where every writer
//! conflicts with every other). Each command is loaded (from its snapshot
//! when one exists), decided, and appended expecting the loaded version, with
//! conflicts retried by the handler. The ceiling, measured in the same
//! process on the same scratch database with runs alternating, appends the
//! same `StockRestocked` event straight to the store (`ExpectedVersion::Any`,
//! no load, no decision) over as many other aggregates (each run and variant
//! has its own, so neither disturbs the other): `ratio` is commands/s divided
//! by that append rate.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use chrono::Utc;
use rand::Rng;
use serde_json::{json, Value};
use strata_commands::inventory::{Inventory, InventoryCommand};
use strata_commands::{CommandHandler, Envelope, HandlerConfig};
use strata_schemas::values::Sku;
use strata_schemas::DomainEvent;
use strata_store::{EventMetadata, ExpectedVersion, NewEvent, StreamAppend, StreamId};
use uuid::Uuid;

use super::{drive, machine, median, open_scratch, round, Figures, Scratch, ScratchStore};

/// Parameters of `bench commands`.
#[derive(Debug, Clone)]
pub struct CommandsBench {
    /// Where to run (only the server or directory is used: a scratch database).
    pub event_store_url: String,
    /// Aggregates the commands spread over (1 = one hot aggregate).
    pub aggregates: usize,
    /// Concurrent writers.
    pub writers: usize,
    /// Measured time of each variant in each run.
    pub duration: Duration,
    /// Runs; commands and appends alternate which goes first.
    pub runs: usize,
}

/// Runs `bench commands` and returns its JSON result.
pub async fn commands(bench: &CommandsBench) -> anyhow::Result<Value> {
    if bench.aggregates == 0 || bench.writers == 0 || bench.runs == 0 {
        bail!("--aggregates, --writers and --runs must be at least 1");
    }
    let scratch = Scratch::create(&bench.event_store_url).await?;
    let result = run_all(bench, &scratch).await;
    scratch.remove().await?;
    result
}

struct CommandFigures {
    figures: Figures,
    retries: u64,
}

async fn run_all(bench: &CommandsBench, scratch: &Scratch) -> anyhow::Result<Value> {
    let (store, backend) = open_scratch(scratch, bench.writers as u32 + 4).await?;
    // Every run and variant gets its own aggregates, so the raw appends never
    // move a stream the handler remembers and each run starts as cold as the first.
    let skus = |prefix: String| -> anyhow::Result<Arc<Vec<Sku>>> {
        Ok(Arc::new((0..bench.aggregates).map(|i| Sku::parse(&format!("{prefix}-{i}"))).collect::<Result<_, _>>()?))
    };
    let handler = CommandHandler::<Inventory>::new(store.clone(), Some(store.clone()), HandlerConfig::default());
    let mut runs = Vec::new();
    for run in 0..bench.runs {
        let (command_skus, append_skus) = (skus(format!("C{run}"))?, skus(format!("A{run}"))?);
        let (commands, appends) = if run % 2 == 0 {
            let commands = measure_commands(bench, &handler, &command_skus).await?;
            (commands, measure_appends(bench, store.clone(), &append_skus).await?)
        } else {
            let appends = measure_appends(bench, store.clone(), &append_skus).await?;
            (measure_commands(bench, &handler, &command_skus).await?, appends)
        };
        eprintln!(
            "run {}: commands {:.0}/s (p99 {:.2} ms, {:.3} retries per command), appends {:.0}/s (p99 {:.2} ms)",
            run + 1,
            commands.figures.events_per_s(),
            commands.figures.p99_ms,
            retry_rate(&commands),
            appends.events_per_s(),
            appends.p99_ms
        );
        runs.push((commands, appends));
    }
    let summary = |all: Vec<Figures>, rate_key: &str| {
        json!({
            "seconds": round(median(all.iter().map(|f| f.seconds).collect()), 3),
            rate_key: round(median(all.iter().map(Figures::events_per_s).collect()), 0),
            "p50_ms": round(median(all.iter().map(|f| f.p50_ms).collect()), 3),
            "p95_ms": round(median(all.iter().map(|f| f.p95_ms).collect()), 3),
            "p99_ms": round(median(all.iter().map(|f| f.p99_ms).collect()), 3),
        })
    };
    let mut object = serde_json::Map::new();
    object.insert("bench".into(), json!("commands"));
    object.insert("backend".into(), json!(backend));
    object.insert("aggregates".into(), json!(bench.aggregates));
    object.insert("writers".into(), json!(bench.writers));
    object.insert("duration_s".into(), json!(bench.duration.as_secs_f64()));
    object.insert("runs".into(), json!(bench.runs));
    let main = summary(runs.iter().map(|(c, _)| c.figures).collect(), "commands_per_s");
    object.extend(main.as_object().context("object")?.clone());
    object.insert("conflict_retry_rate".into(), json!(round(median(runs.iter().map(|(c, _)| retry_rate(c)).collect()), 4)));
    object.insert("baseline".into(), summary(runs.iter().map(|(_, a)| *a).collect(), "events_per_s"));
    let ratios: Vec<f64> = runs.iter().map(|(c, a)| c.figures.events_per_s() / a.events_per_s().max(1e-9)).collect();
    object.insert("ratio".into(), json!(round(median(ratios.clone()), 3)));
    object.insert(
        "per_run".into(),
        Value::Array(
            runs.iter()
                .zip(&ratios)
                .map(|((c, a), ratio)| {
                    json!({
                        "commands_per_s": round(c.figures.events_per_s(), 0),
                        "conflict_retry_rate": round(retry_rate(c), 4),
                        "events_per_s": round(a.events_per_s(), 0),
                        "ratio": round(*ratio, 3),
                    })
                })
                .collect(),
        ),
    );
    object.insert("machine".into(), machine());
    Ok(Value::Object(object))
}

/// Conflict retries per command.
fn retry_rate(commands: &CommandFigures) -> f64 {
    commands.retries as f64 / (commands.figures.appends.max(1)) as f64
}

async fn measure_commands(
    bench: &CommandsBench,
    handler: &CommandHandler<Inventory>,
    skus: &Arc<Vec<Sku>>,
) -> anyhow::Result<CommandFigures> {
    let (handler, skus) = (handler.clone(), skus.clone());
    let (latencies, retries, seconds) = drive(
        bench.writers,
        bench.duration,
        |_| (),
        move |()| {
            let (handler, skus) = (handler.clone(), skus.clone());
            async move {
                let sku = skus[rand::rng().random_range(0..skus.len())].clone();
                let command = InventoryCommand::Restock { sku, quantity: 1, at: Utc::now() };
                // A command that gives up after every retry fails the benchmark
                // rather than being counted as done.
                let outcome = handler.handle(Envelope::new(Uuid::new_v4(), command).by("bench")).await?;
                Ok(((), u64::from(outcome.attempts - 1)))
            }
        },
    )
    .await?;
    Ok(CommandFigures { figures: Figures::from_latencies(latencies, 1, seconds), retries })
}

async fn measure_appends(bench: &CommandsBench, store: Arc<dyn ScratchStore>, skus: &Arc<Vec<Sku>>) -> anyhow::Result<Figures> {
    let skus = skus.clone();
    let (latencies, _, seconds) = drive(
        bench.writers,
        bench.duration,
        |_| (),
        move |()| {
            let (store, skus) = (store.clone(), skus.clone());
            async move {
                let sku = skus[rand::rng().random_range(0..skus.len())].clone();
                let command_id = Uuid::new_v4();
                let command = InventoryCommand::Restock { sku: sku.clone(), quantity: 1, at: Utc::now() };
                let events = <Inventory as strata_commands::Aggregate>::decide(&Default::default(), command)?;
                let events = events
                    .iter()
                    .enumerate()
                    .map(|(index, event)| NewEvent {
                        event_id: strata_commands::event_id(command_id, index),
                        event_type: event.event_type().into(),
                        schema_version: event.schema_version(),
                        payload: event.to_payload(),
                        metadata: EventMetadata {
                            correlation_id: Some(command_id),
                            causation_id: Some(command_id),
                            traceparent: None,
                            actor: Some("bench".into()),
                            command_id: Some(command_id),
                        },
                    })
                    .collect();
                let request = vec![StreamAppend { stream_id: StreamId::new("inventory", &sku)?, expected: ExpectedVersion::Any, events }];
                store.append(request).await?;
                Ok(((), 0))
            }
        },
    )
    .await?;
    Ok(Figures::from_latencies(latencies, 1, seconds))
}
