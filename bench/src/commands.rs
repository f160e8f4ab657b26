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

use anyhow::bail;
use chrono::Utc;
use rand::Rng;
use serde_json::Value;
use strata_commands::inventory::{Inventory, InventoryCommand};
use strata_commands::{CommandHandler, Envelope, HandlerConfig};
use strata_schemas::values::Sku;
use strata_schemas::DomainEvent;
use strata_store::{EventMetadata, ExpectedVersion, NewEvent, StreamAppend, StreamId};
use uuid::Uuid;

use super::kit::{alternate, drive, open_scratch, Report, Scratch, ScratchStore, Summary};

/// `bench commands`: its flags, and the event store from the settings.
#[derive(Debug, Clone, clap::Args)]
pub struct CommandsBench {
    /// Where to run (`STRATA_EVENT_STORE`; only the server or directory is used: a scratch database).
    #[arg(skip)]
    pub event_store_url: String,
    /// Aggregates the commands spread over (1 = one hot aggregate).
    #[arg(long, default_value_t = 10_000)]
    pub aggregates: usize,
    /// Concurrent writers.
    #[arg(long, default_value_t = 16)]
    pub writers: usize,
    /// Seconds per measured variant per run.
    #[arg(long, default_value = "10", value_parser = crate::kit::seconds)]
    pub duration: Duration,
    /// Runs (medians are reported; commands and appends alternate first).
    #[arg(long, default_value_t = 3)]
    pub runs: usize,
}

/// Runs `bench commands` and returns its JSON result.
pub async fn commands(bench: &CommandsBench) -> anyhow::Result<Value> {
    if bench.aggregates == 0 || bench.writers == 0 || bench.runs == 0 {
        bail!("--aggregates, --writers and --runs must be at least 1");
    }
    Scratch::around(&bench.event_store_url, async |scratch| run_all(bench, scratch).await).await
}

async fn run_all(bench: &CommandsBench, scratch: &Scratch) -> anyhow::Result<Value> {
    let (store, backend) = open_scratch(scratch, bench.writers as u32 + 4).await?;
    // Every run and variant gets its own aggregates, so the raw appends never
    // move a stream the handler remembers and each run starts as cold as the first.
    let skus = |prefix: String| -> anyhow::Result<Arc<Vec<Sku>>> {
        Ok(Arc::new((0..bench.aggregates).map(|i| Sku::parse(&format!("{prefix}-{i}"))).collect::<Result<_, _>>()?))
    };
    let handler = CommandHandler::<Inventory>::new(store.clone(), Some(store.clone()), HandlerConfig::default());
    let comparison = alternate(
        bench.runs,
        async |run| measure_commands(bench, &handler, &skus(format!("C{run}"))?).await,
        async |run| measure_appends(bench, store.clone(), &skus(format!("A{run}"))?).await,
    )
    .await?;
    Ok(Report::new("commands")
        .with("backend", backend)
        .with("aggregates", bench.aggregates)
        .with("writers", bench.writers)
        .with("duration_s", bench.duration.as_secs_f64())
        .with("runs", bench.runs)
        .compared(&comparison, Some("raw_appends"))
        .finish())
}

/// Commands through the handler; `conflict_retry_rate` is the retries per command.
async fn measure_commands(bench: &CommandsBench, handler: &CommandHandler<Inventory>, skus: &Arc<Vec<Sku>>) -> anyhow::Result<Summary> {
    let (handler, skus) = (handler.clone(), skus.clone());
    let (latencies, retries, seconds) = drive(
        bench.writers,
        bench.duration,
        |_| (),
        move |()| {
            let (handler, skus) = (handler.clone(), skus.clone());
            async move {
                let sku = skus[rand::rng().random_range(0..skus.len())].clone();
                let command = InventoryCommand::Restock { sku, quantity: 1, unit_price_cents: None, at: Utc::now() };
                // A command that gives up after every retry fails the benchmark
                // rather than being counted as done.
                let outcome = handler.handle(Envelope::new(Uuid::new_v4(), command).by("bench")).await?;
                Ok(((), u64::from(outcome.attempts - 1)))
            }
        },
    )
    .await?;
    let commands = latencies.len().max(1) as f64;
    Ok(Summary::of_calls("commands", 1, &latencies, seconds).with("conflict_retry_rate", retries as f64 / commands))
}

async fn measure_appends(bench: &CommandsBench, store: Arc<dyn ScratchStore>, skus: &Arc<Vec<Sku>>) -> anyhow::Result<Summary> {
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
                let command = InventoryCommand::Restock { sku: sku.clone(), quantity: 1, unit_price_cents: None, at: Utc::now() };
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
    Ok(Summary::of_calls("events", 1, &latencies, seconds))
}
