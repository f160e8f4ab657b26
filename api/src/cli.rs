//! The `strata` command line: the clap tree and what each command runs.
//! `strata serve` is [`crate::app::Application`]; the rest are the audit,
//! operator and bench commands (README "CLI").

use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use strata_store::StreamId;

use crate::anchor::AnchorFile;
use crate::app::{open_event_store as open, shutdown_signal, Application};
use crate::audit::{self, StreamQuery};
use crate::config::{Overrides, Settings};
use crate::workers::connect_read_model;
use crate::{projections, sagas};

/// The command line (flags and the command).
#[derive(Debug, Parser)]
#[command(name = "strata", version, about = "Event-sourced CQRS backend", long_about = None)]
pub struct Cli {
    #[command(flatten)]
    overrides: Overrides,
    #[command(subcommand)]
    command: Option<Command>,
}

/// The commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Migrate the event store and serve HTTP (the default).
    Serve,
    /// Apply the event store's schema migrations and exit.
    Migrate {
        /// After restoring the database from a backup: raise the log's
        /// epoch, so that the bus's records of the old epoch are no longer
        /// taken as this log's (the relay publishes again from its
        /// checkpoint; readers skip what they had).
        #[arg(long)]
        new_epoch: bool,
    },
    /// Read and check the log as an auditor.
    #[command(subcommand)]
    Audit(AuditCommand),
    /// Operate the read models: list, status, rebuild, pause, resume.
    #[command(subcommand)]
    Projections(ProjectionsCommand),
    /// Operate the fulfilment sagas: list the stuck ones, resume one.
    #[command(subcommand)]
    Sagas(SagasCommand),
    /// Measure throughput and latency; prints one JSON object per result
    /// (`strata bench --help` lists the benches). Runs `strata-bench`, which
    /// `cargo build` puts beside `strata`.
    #[command(disable_help_flag = true)]
    Bench {
        /// The bench, its flags and any global flags, as `strata-bench` takes them.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<std::ffi::OsString>,
    },
    /// Run every role as separate local processes (with replicas), starting
    /// again any that exits or is killed; Ctrl-C stops them all.
    Topology {
        /// Processes with the api role.
        #[arg(long, default_value_t = 1)]
        api: usize,
        /// Processes of each worker role (relay, projector, saga, services).
        #[arg(long, default_value_t = 2)]
        replicas: usize,
        /// The first process's HTTP port (api first, then the workers' health
        /// and metrics ports, one each).
        #[arg(long, default_value_t = 8080)]
        base_port: u16,
        /// Where each process's log goes.
        #[arg(long, default_value = "strata-topology-logs")]
        logs: std::path::PathBuf,
    },
    /// Drive a running server through GraphQL with orders that confirm and
    /// orders that compensate; print a summary.
    Demo {
        /// Orders placed.
        #[arg(long, default_value_t = 100)]
        orders: usize,
        /// The server.
        #[arg(long, default_value = "http://127.0.0.1:8080")]
        url: String,
        /// An operator token (places orders for the scenario's customers and
        /// restocks), or a client token (its customer places every order;
        /// restocking then needs --operator-token).
        #[arg(long, env = "STRATA_TOKEN", hide_env_values = true)]
        token: String,
        /// An operator token to restock the scenario's SKUs with, beside a client --token.
        #[arg(long, env = "STRATA_OPERATOR_TOKEN", hide_env_values = true)]
        operator_token: Option<String>,
        /// Orders in flight at once.
        #[arg(long, default_value_t = 32)]
        concurrency: usize,
        /// Varies the orders (the same seed places the same orders again, idempotently).
        #[arg(long)]
        seed: Option<u64>,
        /// JSON summary instead of lines.
        #[arg(long)]
        json: bool,
    },
}

/// `strata audit …`.
#[derive(Debug, Subcommand)]
pub enum AuditCommand {
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
    /// Walk the hash chain, the positions and the stream heads, and report
    /// every problem (exit 1 if any).
    Verify {
        /// Only this stream.
        #[arg(long, conflicts_with = "anchor")]
        stream: Option<String>,
        /// Also prove the log still holds the prefix this anchor file
        /// (from `audit anchor`) was taken over, unchanged.
        #[arg(long)]
        anchor: Option<std::path::PathBuf>,
        /// The anchor must be signed by this Ed25519 public key (PEM).
        #[arg(long, requires = "anchor")]
        verify_key: Option<std::path::PathBuf>,
        /// JSON report.
        #[arg(long)]
        json: bool,
    },
    /// Verify the whole log and print its anchor (head position and digest,
    /// JSON) to keep outside the database; refuses a log that is not intact.
    Anchor {
        /// Write the anchor to this file instead of stdout.
        #[arg(long)]
        out: Option<std::path::PathBuf>,
        /// Sign the anchor with this Ed25519 private key (PKCS#8 PEM, from
        /// `audit keygen` or `openssl genpkey -algorithm ed25519`).
        #[arg(long)]
        sign_key: Option<std::path::PathBuf>,
        /// The last anchor taken: refuse a log that does not extend it, and
        /// name it in the new anchor.
        #[arg(long)]
        previous: Option<std::path::PathBuf>,
        /// Check the previous anchor's signature with this public key (PEM;
        /// default: the public half of --sign-key).
        #[arg(long, requires = "previous")]
        verify_key: Option<std::path::PathBuf>,
    },
    /// Make an Ed25519 key pair for signing anchors (PEM files; the private
    /// one readable by its owner only; existing files are never overwritten).
    Keygen {
        /// The private key file to create (for `audit anchor --sign-key`).
        #[arg(long)]
        sign_key: std::path::PathBuf,
        /// The public key file to create (for `--verify-key`).
        #[arg(long)]
        verify_key: std::path::PathBuf,
    },
    /// Check the order-fulfilment invariants over the whole log: sagas
    /// terminal or within their deadline, stock conserved, no double capture,
    /// nothing left held for a cancelled order (exit 1 on any violation).
    Invariants {
        /// JSON report.
        #[arg(long)]
        json: bool,
    },
}

/// `strata sagas …`.
#[derive(Debug, Subcommand)]
pub enum SagasCommand {
    /// List the sagas parked because an undo (or a step after the
    /// confirmation) kept failing.
    Stuck {
        /// JSON instead of lines.
        #[arg(long)]
        json: bool,
    },
    /// Try a parked saga's part again (the saga role picks it up within
    /// seconds).
    Resume {
        /// The order (the saga's id).
        order_id: uuid::Uuid,
    },
}

/// `strata projections …`.
#[derive(Debug, Subcommand)]
pub enum ProjectionsCommand {
    /// One line per projection: version, state, position, lag, dead letters.
    List {
        /// JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// State, position, lag, rate, last error and parked events.
    Status {
        /// Projection name.
        name: String,
        /// JSON instead of lines.
        #[arg(long)]
        json: bool,
    },
    /// Build the next generation from the log beside the live one, then
    /// switch readers to it and drop the old one.
    Rebuild {
        /// Projection name.
        name: String,
        /// Events read from the log per batch.
        #[arg(long, default_value_t = 2000)]
        batch_size: usize,
    },
    /// Hold the projection's workers (they keep their deliveries).
    Pause {
        /// Projection name.
        name: String,
    },
    /// Let the projection's workers go on.
    Resume {
        /// Projection name.
        name: String,
    },
}

/// What a binary's `main` does around its command: starts telemetry and a
/// multi-threaded runtime, runs `command` to its end, prints an error with
/// its causes, and flushes the spans still queued for export last.
pub fn start<F>(command: F) -> ExitCode
where
    F: std::future::Future<Output = anyhow::Result<ExitCode>>,
{
    let _telemetry = match crate::telemetry::init() {
        Ok(telemetry) => telemetry,
        Err(err) => {
            eprintln!("error: {err:#}");
            return ExitCode::FAILURE;
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("error: cannot start the runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(command) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

/// Runs the command `cli` names (`serve` when none); the exit code of the
/// checks that can fail (`audit verify`, `audit invariants`, `demo`, …).
pub async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    // strata-bench resolves the settings itself, from the same flags.
    if let Some(Command::Bench { args }) = &cli.command {
        return run_bench(args);
    }
    let settings = Settings::resolve(&cli.overrides)?;
    match cli.command.unwrap_or(Command::Serve) {
        Command::Serve => Application::build(&settings).await?.run_until_stopped(shutdown_signal()).await?,
        Command::Migrate { new_epoch } => {
            let backend = open(&settings).await?;
            backend.migrate().await.context("migrating the event store")?;
            println!("event store migrated ({})", backend.store().backend_name());
            if new_epoch {
                println!("log identity now {}", backend.raise_epoch().await?);
            }
        }
        Command::Audit(AuditCommand::Stream { id, at_version, as_of, as_stored, json }) => {
            let stream_id = StreamId::parse(&id)?;
            let backend = open(&settings).await?;
            let query = StreamQuery { at_version, as_of, as_stored };
            audit::print_stream(backend.store().as_ref(), &stream_id, &query, json).await?;
        }
        Command::Audit(AuditCommand::Verify { stream, anchor, verify_key, json }) => {
            let stream_id = stream.as_deref().map(StreamId::parse).transpose()?;
            let anchor = anchor.as_deref().map(AnchorFile::read).transpose()?;
            let verify_key = verify_key.as_deref().map(crate::anchor::read_verifying_key).transpose()?;
            let given = anchor.as_ref().map(|file| audit::GivenAnchor { file, verify_key: verify_key.as_ref() });
            let backend = open(&settings).await?;
            if !audit::verify(backend.store().as_ref(), stream_id.as_ref(), given, &settings.chain.keyring(), json).await? {
                return Ok(ExitCode::from(1));
            }
        }
        Command::Audit(AuditCommand::Anchor { out, sign_key, previous, verify_key }) => {
            let sign_key = sign_key.as_deref().map(crate::anchor::read_signing_key).transpose()?;
            let previous = previous.as_deref().map(AnchorFile::read).transpose()?;
            let verify_key = verify_key.as_deref().map(crate::anchor::read_verifying_key).transpose()?;
            let options = audit::AnchorOptions {
                out: out.as_deref(),
                sign_key: sign_key.as_ref(),
                previous: previous.as_ref().map(|file| audit::GivenAnchor { file, verify_key: verify_key.as_ref() }),
            };
            let backend = open(&settings).await?;
            if !audit::anchor(backend.store().as_ref(), &settings.chain.keyring(), options).await? {
                return Ok(ExitCode::from(1));
            }
        }
        Command::Audit(AuditCommand::Keygen { sign_key, verify_key }) => {
            crate::anchor::write_key_pair(&sign_key, &verify_key)?;
            eprintln!("wrote {} (private: keep it with the auditor) and {}", sign_key.display(), verify_key.display());
        }
        Command::Audit(AuditCommand::Invariants { json }) => {
            let backend = open(&settings).await?;
            let saga = crate::workers::orchestrator_config(&settings).saga;
            if !audit::invariants(backend.reader(), saga, json).await? {
                return Ok(ExitCode::from(1));
            }
        }
        Command::Sagas(SagasCommand::Stuck { json }) => {
            let backend = open(&settings).await?;
            sagas::print_stuck(&*backend.reader(), &*backend.checkpoints(), json).await?;
        }
        Command::Sagas(SagasCommand::Resume { order_id }) => {
            let backend = open(&settings).await?;
            if !sagas::resume(&*backend.store(), order_id, "cli:operator").await? {
                eprintln!("the saga of order {order_id} is not stuck; nothing to resume");
                return Ok(ExitCode::from(1));
            }
            println!("saga of order {order_id} resumed");
        }
        Command::Projections(command) => {
            let backend = open(&settings).await?;
            let sink = connect_read_model(&settings.read_model).await?;
            if sink.backend_name() == "memory" {
                eprintln!("note: STRATA_READ_MODEL=memory: this process sees its own empty read models; point it at redis://… or mongodb://… to operate a running server's");
            }
            let log = backend.reader();
            match command {
                ProjectionsCommand::List { json } => projections::list(&*sink, &*log, json).await?,
                ProjectionsCommand::Status { name, json } => projections::print_status(&*sink, &*log, &name, json).await?,
                ProjectionsCommand::Rebuild { name, batch_size } => {
                    let report = projections::rebuild_one(sink, log, &name, batch_size).await?;
                    println!("{}", serde_json::to_string(&report)?);
                }
                ProjectionsCommand::Pause { name } => {
                    projections::set_paused(&*sink, &name, true).await?;
                    println!("projection {name} paused");
                }
                ProjectionsCommand::Resume { name } => {
                    projections::set_paused(&*sink, &name, false).await?;
                    println!("projection {name} resumed");
                }
            }
        }
        Command::Bench { .. } => unreachable!("run_bench ran before the settings were resolved"),
        Command::Topology { api, replicas, base_port, logs } => {
            let config = crate::topology::TopologyConfig { api, replicas, base_port, logs };
            crate::topology::run(&config, shutdown_signal()).await?;
        }
        Command::Demo { orders, url, token, operator_token, concurrency, seed, json } => {
            let config = crate::demo::DemoConfig {
                url,
                token,
                operator_token,
                orders,
                concurrency,
                seed: seed.unwrap_or_else(rand::random),
                settle_timeout: Duration::from_secs(120),
            };
            let summary = crate::demo::demo(&config).await?;
            if json {
                println!("{}", serde_json::to_string(&summary)?);
            } else {
                print_demo(&summary);
            }
            if summary["unexpected"].as_u64() != Some(0) {
                return Ok(ExitCode::from(1));
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `strata bench ARGS` runs `strata-bench` with the same global flags
/// before ARGS (the environment is inherited), found beside this
/// executable or on PATH; its output and exit code are the command's.
fn run_bench(args: &[std::ffi::OsString]) -> anyhow::Result<ExitCode> {
    let argv: Vec<std::ffi::OsString> = std::env::args_os().skip(1).collect();
    let command_line = bench_command_line(&argv, args);
    let beside = std::env::current_exe().ok().map(|exe| exe.with_file_name(format!("strata-bench{}", std::env::consts::EXE_SUFFIX)));
    let program = beside.filter(|path| path.is_file()).map_or_else(|| "strata-bench".into(), std::ffi::OsString::from);
    let status = match std::process::Command::new(&program).args(&command_line).status() {
        Ok(status) => status,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => anyhow::bail!(
            "strata bench runs strata-bench, found neither beside {} nor on PATH; build it with `cargo build --release -p strata-bench` (or `cargo build --release`, which builds both)",
            std::env::current_exe().map_or_else(|_| "strata".into(), |exe| exe.display().to_string())
        ),
        Err(err) => return Err(anyhow::Error::new(err).context(format!("starting {}", std::path::Path::new(&program).display()))),
    };
    Ok(status.code().and_then(|code| u8::try_from(code).ok()).map_or(ExitCode::FAILURE, ExitCode::from))
}

/// The command line for `strata-bench`: this one's arguments without the
/// `bench` that clap took as the command (the last `bench` before the
/// bench's own arguments, so that global flags on either side of it are
/// kept).
fn bench_command_line(argv: &[std::ffi::OsString], bench_args: &[std::ffi::OsString]) -> Vec<std::ffi::OsString> {
    let before_args = argv.len().saturating_sub(bench_args.len());
    match argv[..before_args].iter().rposition(|arg| arg == "bench") {
        Some(at) => argv[..at].iter().chain(&argv[at + 1..]).cloned().collect(),
        None => bench_args.to_vec(),
    }
}

/// The demo's summary, for people.
fn print_demo(summary: &serde_json::Value) {
    println!("orders      {}", summary["orders"]);
    println!("confirmed   {}", summary["confirmed"]);
    for (step, count) in summary["cancelled"].as_object().into_iter().flatten() {
        println!("cancelled   {count} at {step}");
    }
    println!("unexpected  {} (orders that ended otherwise than the scenario's rules say)", summary["unexpected"]);
    println!("place       p50 {} ms, p99 {} ms (placeOrder mutation)", summary["place"]["p50_ms"], summary["place"]["p99_ms"]);
    println!(
        "settle      p50 {} ms, p99 {} ms (placed → saga completed or compensated)",
        summary["settle"]["p50_ms"], summary["settle"]["p99_ms"]
    );
    println!("seconds     {}", summary["seconds"]);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(line: &str) -> Vec<std::ffi::OsString> {
        line.split_whitespace().map(Into::into).collect()
    }

    #[test]
    fn strata_bench_gets_the_global_flags_on_either_side_and_the_bench_without_the_word_bench() {
        let cases = [
            ("bench append --runs 1", "append --runs 1"),
            ("--event-store sqlite://x.db bench append --runs 1", "--event-store sqlite://x.db append --runs 1"),
            ("bench --bus memory e2e --orders 5", "--bus memory e2e --orders 5"),
            // A flag's value that is the word bench stays.
            ("--event-store bench bench --help", "--event-store bench --help"),
        ];
        for (strata, expected) in cases {
            let argv = words(strata);
            let Some(Command::Bench { args }) = Cli::try_parse_from(std::iter::once("strata".into()).chain(argv.clone())).unwrap().command
            else {
                panic!("{strata}: not the bench command")
            };
            assert_eq!(bench_command_line(&argv, &args), words(expected), "{strata}");
        }
    }
}
