//! The command line of `strata bench …`: each bench's configuration is the
//! clap `Args` struct its function takes, with the backends filled in from
//! the settings (`STRATA_EVENT_STORE`, `STRATA_BUS`, `STRATA_READ_MODEL`,
//! `strata.toml` or the global flags, as for `strata`).

use clap::{Parser, Subcommand};
use strata_api::config::{Overrides, Settings};

/// `strata bench [GLOBAL FLAGS] <BENCH> [FLAGS]`.
#[derive(Debug, Parser)]
#[command(
    name = "strata bench",
    bin_name = "strata bench",
    version,
    about = "Measure throughput and latency; prints one JSON object per result"
)]
pub struct BenchCli {
    #[command(flatten)]
    overrides: Overrides,
    #[command(subcommand)]
    command: BenchCommand,
}

/// The benchmarks.
#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// Appends through Strata vs plain INSERTs on the same database.
    Append(crate::AppendBench),
    /// The relay (log → JetStream) vs raw pipelined JetStream publishing.
    #[cfg(feature = "nats")]
    Relay(crate::RelayBench),
    /// The orders projection into Redis or MongoDB vs raw writes of the same keys (STRATA_READ_MODEL).
    #[cfg(feature = "redis")]
    Project(crate::ProjectBench),
    /// Rebuild of the orders projection from a scratch log into Redis or MongoDB (STRATA_READ_MODEL).
    #[cfg(feature = "redis")]
    Rebuild(crate::RebuildBench),
    /// Order placed → order confirmed through relay, bus, saga and services,
    /// orders sent open-loop at a fixed rate: orders/s and p50/p95/p99.
    E2e(crate::E2eBench),
    /// A probe query's latency idle and while attackers hold thousands of
    /// `waitFor` fields open, through a running server's GraphQL.
    Flood(crate::FloodBench),
    /// The command path (load, decide, append) vs raw appends of the same events.
    Commands(crate::CommandsBench),
}

/// Runs the bench `cli` names and prints its JSON result on stdout.
pub async fn run(cli: BenchCli) -> anyhow::Result<()> {
    let settings = Settings::resolve(&cli.overrides)?;
    let result = match cli.command {
        BenchCommand::Append(bench) => {
            crate::append(&crate::AppendBench {
                event_store_url: settings.event_store.to_string(),
                chain_key: settings.chain.key(),
                ..bench
            })
            .await?
        }
        #[cfg(feature = "nats")]
        BenchCommand::Relay(bench) => {
            crate::relay(&crate::RelayBench {
                event_store_url: settings.event_store.to_string(),
                bus_url: settings.bus.to_string(),
                ..bench
            })
            .await?
        }
        #[cfg(feature = "redis")]
        BenchCommand::Project(bench) => {
            crate::project(&crate::ProjectBench { read_model_url: settings.read_model.to_string(), ..bench }).await?
        }
        #[cfg(feature = "redis")]
        BenchCommand::Rebuild(bench) => {
            crate::rebuild(&crate::RebuildBench {
                event_store_url: settings.event_store.to_string(),
                read_model_url: settings.read_model.to_string(),
                ..bench
            })
            .await?
        }
        BenchCommand::E2e(bench) => {
            crate::e2e(&crate::E2eBench { event_store_url: settings.event_store.to_string(), bus_url: settings.bus.to_string(), ..bench })
                .await?
        }
        BenchCommand::Flood(bench) => crate::flood(&bench).await?,
        BenchCommand::Commands(bench) => {
            crate::commands(&crate::CommandsBench { event_store_url: settings.event_store.to_string(), ..bench }).await?
        }
    };
    println!("{}", serde_json::to_string(&result)?);
    Ok(())
}
