//! The `strata` binary: parses the command line and hands each command its
//! resources. With no subcommand it runs `serve`.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use strata_api::audit::{self, StreamQuery};
use strata_api::backend::{registry, EventStoreBackend};
use strata_api::bench::{self, AppendBench, CommandsBench};
use strata_api::config::{Overrides, Settings};
use strata_api::http::{self, AppState};
use strata_store::StreamId;

#[derive(Debug, Parser)]
#[command(name = "strata", version, about = "Event-sourced CQRS backend")]
struct Cli {
    #[command(flatten)]
    overrides: Overrides,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Migrate the event store and serve HTTP (the default).
    Serve,
    /// Apply the event store's schema migrations and exit.
    Migrate,
    /// Read and check the log as an auditor.
    #[command(subcommand)]
    Audit(AuditCommand),
    /// Measure throughput and latency; prints one JSON object per result.
    #[command(subcommand)]
    Bench(BenchCommand),
}

#[derive(Debug, Subcommand)]
enum AuditCommand {
    /// Print a stream's events with their metadata.
    Stream {
        /// Stream id (category-id).
        id: String,
        /// Only events up to this version.
        #[arg(long, conflicts_with = "as_of")]
        at_version: Option<u64>,
        /// Only events recorded at or before this RFC 3339 time.
        #[arg(long)]
        as_of: Option<chrono::DateTime<chrono::Utc>>,
        /// Payloads as written, without upcasting.
        #[arg(long)]
        as_stored: bool,
        /// JSON instead of one line per event.
        #[arg(long)]
        json: bool,
    },
    /// Walk the hash chain and report every broken link (exit 1 if any).
    Verify {
        /// Only this stream.
        #[arg(long)]
        stream: Option<String>,
        /// JSON report.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
enum BenchCommand {
    /// Appends through Strata vs plain INSERTs on the same database.
    Append {
        /// Concurrent writers.
        #[arg(long, default_value_t = 16)]
        writers: usize,
        /// Events per append.
        #[arg(long, default_value_t = 1)]
        events_per_append: usize,
        /// Seconds per measured variant per run.
        #[arg(long, default_value_t = 10.0)]
        duration: f64,
        /// Runs (medians are reported; Strata and baseline alternate first).
        #[arg(long, default_value_t = 3)]
        runs: usize,
        /// One transaction per append on PostgreSQL.
        #[arg(long)]
        no_group_commit: bool,
        /// Committer tasks of PostgreSQL group commit.
        #[arg(long, default_value_t = strata_store::PostgresConfig::new("").committers)]
        committers: usize,
    },
    /// The relay (log → JetStream) vs raw pipelined JetStream publishing.
    #[cfg(feature = "nats")]
    Relay {
        /// Events in the scratch log.
        #[arg(long, default_value_t = 100_000)]
        events: usize,
        /// Events per publish batch.
        #[arg(long, default_value_t = 500)]
        batch_size: usize,
        /// Runs (medians are reported; relay and raw alternate first).
        #[arg(long, default_value_t = 3)]
        runs: usize,
    },
    /// The command path (load, decide, append) vs raw appends of the same events.
    Commands {
        /// Aggregates the commands spread over (1 = one hot aggregate).
        #[arg(long, default_value_t = 10_000)]
        aggregates: usize,
        /// Concurrent writers.
        #[arg(long, default_value_t = 16)]
        writers: usize,
        /// Seconds per measured variant per run.
        #[arg(long, default_value_t = 10.0)]
        duration: f64,
        /// Runs (medians are reported; commands and appends alternate first).
        #[arg(long, default_value_t = 3)]
        runs: usize,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,sqlx=warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("error: cannot start the runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

async fn open(settings: &Settings) -> anyhow::Result<EventStoreBackend> {
    EventStoreBackend::open(&settings.event_store, registry()?).await
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let settings = Settings::resolve(&cli.overrides)?;
    match cli.command.unwrap_or(Command::Serve) {
        Command::Serve => {
            let backend = open(&settings).await?;
            backend.migrate().await.context("migrating the event store")?;
            let listener = tokio::net::TcpListener::bind(settings.listen)
                .await
                .with_context(|| format!("binding {}", settings.listen))?;
            let address = listener.local_addr()?;
            let store = backend.store();
            println!("strata listening on http://{address} (event store: {})", store.backend_name());
            tracing::info!(%address, backend = store.backend_name(), "serving");
            http::run(listener, AppState { event_store: store }, shutdown_signal()).await?;
            tracing::info!("stopped");
        }
        Command::Migrate => {
            let backend = open(&settings).await?;
            backend.migrate().await.context("migrating the event store")?;
            println!("event store migrated ({})", backend.store().backend_name());
        }
        Command::Audit(AuditCommand::Stream { id, at_version, as_of, as_stored, json }) => {
            let stream_id = StreamId::parse(&id)?;
            let backend = open(&settings).await?;
            let query = StreamQuery { at_version, as_of, as_stored };
            audit::print_stream(backend.store().as_ref(), &stream_id, &query, json).await?;
        }
        Command::Audit(AuditCommand::Verify { stream, json }) => {
            let stream_id = stream.as_deref().map(StreamId::parse).transpose()?;
            let backend = open(&settings).await?;
            if !audit::verify(backend.store().as_ref(), stream_id.as_ref(), json).await? {
                return Ok(ExitCode::from(1));
            }
        }
        Command::Bench(BenchCommand::Append { writers, events_per_append, duration, runs, no_group_commit, committers }) => {
            let result = bench::append(&AppendBench {
                event_store_url: settings.event_store.clone(),
                writers,
                events_per_append,
                duration: Duration::from_secs_f64(duration),
                runs,
                group_commit: !no_group_commit,
                committers,
            })
            .await?;
            println!("{}", serde_json::to_string(&result)?);
        }
        #[cfg(feature = "nats")]
        Command::Bench(BenchCommand::Relay { events, batch_size, runs }) => {
            let result = bench::relay(&bench::RelayBench {
                event_store_url: settings.event_store.clone(),
                bus_url: settings.bus.clone(),
                events,
                batch_size,
                runs,
            })
            .await?;
            println!("{}", serde_json::to_string(&result)?);
        }
        Command::Bench(BenchCommand::Commands { aggregates, writers, duration, runs }) => {
            let result = bench::commands(&CommandsBench {
                event_store_url: settings.event_store.clone(),
                aggregates,
                writers,
                duration: Duration::from_secs_f64(duration),
                runs,
            })
            .await?;
            println!("{}", serde_json::to_string(&result)?);
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Resolves on Ctrl-C or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = terminate => {},
    }
}
