//! `strata topology`: the distributed topology as local processes — every
//! role in processes of its own (`strata serve` with one role each), with
//! replicas, kept running: a process that exits, or is killed, is started
//! again. The same split as `docker-compose.yml`, on the services this
//! machine runs (README "Running the distributed topology").
//!
//! Each process gets `STRATA_ROLES=<role>`, `STRATA_LISTEN=127.0.0.1:<port>`
//! (api first, then each worker: health and metrics) and
//! `OTEL_SERVICE_NAME=strata-<role>`; everything else (`STRATA_EVENT_STORE`,
//! `STRATA_BUS`, `STRATA_READ_MODEL`, tokens, `OTEL_*`) is inherited. Their
//! output goes to `<logs>/<role>-<n>.log`. The supervisor prints one line per
//! event on stdout (`started <name> pid <pid> http://<address>`, `exited
//! <name> …`), which scripts and the topology test read.
//!
//! Ctrl-C or SIGTERM stops every process (SIGTERM, then SIGKILL after 10 s).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::Context;
use tokio::process::{Child, Command};

/// What to start.
#[derive(Debug, Clone)]
pub struct TopologyConfig {
    /// Replicas of the api role.
    pub api: usize,
    /// Replicas of each worker role (relay, projector, saga, services).
    pub replicas: usize,
    /// The first process's port; the others follow.
    pub base_port: u16,
    /// Where each process's log goes.
    pub logs: PathBuf,
}

/// The roles, in start order: the api migrates the log the others use.
pub const ROLES: [&str; 5] = ["api", "relay", "projector", "saga", "services"];

struct Process {
    name: String,
    role: &'static str,
    address: SocketAddr,
    child: Option<Child>,
    /// The running process's id (a reaped child no longer tells it).
    pid: u32,
    started: Instant,
    /// Quick exits in a row (each doubles the wait before the next start).
    failures: u32,
}

/// Runs the topology until `shutdown` resolves.
pub async fn run(config: &TopologyConfig, shutdown: impl std::future::Future<Output = ()>) -> anyhow::Result<()> {
    if config.api == 0 || config.replicas == 0 {
        anyhow::bail!("--api and --replicas must be at least 1");
    }
    std::fs::create_dir_all(&config.logs).with_context(|| format!("creating {}", config.logs.display()))?;
    let exe = std::env::current_exe().context("finding the strata binary")?;
    let mut processes = Vec::new();
    let mut port = config.base_port;
    for role in ROLES {
        let count = if role == "api" { config.api } else { config.replicas };
        for n in 1..=count {
            processes.push(Process {
                name: format!("{role}-{n}"),
                role,
                address: SocketAddr::from(([127, 0, 0, 1], port)),
                child: None,
                pid: 0,
                started: Instant::now(),
                failures: 0,
            });
            port = port.checked_add(1).context("ran out of ports")?;
        }
    }
    for process in &mut processes {
        start(&exe, config, process)?;
        if process.role == "api" && process.name == "api-1" {
            // The first api migrates the log; the others wait for it.
            wait_ready(process.address, Duration::from_secs(60)).await;
        }
    }
    println!("topology up: {} processes", processes.len());
    tokio::pin!(shutdown);
    let mut check = tokio::time::interval(Duration::from_millis(50));
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            _ = check.tick() => {}
        }
        for process in &mut processes {
            let exited = match process.child.as_mut().map(Child::try_wait) {
                Some(Ok(Some(status))) => Some(status.to_string()),
                Some(Ok(None)) => None,
                Some(Err(error)) => Some(error.to_string()),
                None => None,
            };
            if let Some(status) = exited {
                let pid = process.pid;
                process.child = None;
                let quick = process.started.elapsed() < Duration::from_secs(2);
                process.failures = if quick { process.failures + 1 } else { 0 };
                let wait = Duration::from_millis(100) * 2u32.pow(process.failures.min(6));
                println!("exited {} pid {pid} ({status}); starting again in {} ms", process.name, wait.as_millis());
                tokio::time::sleep(wait).await;
                start(&exe, config, process)?;
            }
        }
    }
    stop(&mut processes).await;
    Ok(())
}

fn start(exe: &std::path::Path, config: &TopologyConfig, process: &mut Process) -> anyhow::Result<()> {
    let log_path = config.logs.join(format!("{}.log", process.name));
    let log =
        std::fs::OpenOptions::new().create(true).append(true).open(&log_path).with_context(|| format!("opening {}", log_path.display()))?;
    let child = Command::new(exe)
        .arg("serve")
        .env("STRATA_ROLES", process.role)
        .env("STRATA_LISTEN", process.address.to_string())
        .env("OTEL_SERVICE_NAME", format!("strata-{}", process.role))
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("starting {}", process.name))?;
    process.pid = child.id().unwrap_or_default();
    println!("started {} pid {} http://{} log {}", process.name, process.pid, process.address, log_path.display());
    process.child = Some(child);
    process.started = Instant::now();
    Ok(())
}

/// Waits until `/readyz` answers 200 (or the deadline passes).
async fn wait_ready(address: SocketAddr, deadline: Duration) {
    let client = reqwest::Client::new();
    let started = Instant::now();
    while started.elapsed() < deadline {
        if let Ok(response) = client.get(format!("http://{address}/readyz")).send().await {
            if response.status().is_success() {
                return;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    println!("warning: {address} was not ready within {deadline:?}");
}

async fn stop(processes: &mut [Process]) {
    for process in processes.iter() {
        if let Some(pid) = process.child.as_ref().and_then(Child::id) {
            // SIGTERM through kill(1): this crate has no unsafe code for libc.
            let _ = std::process::Command::new("kill").arg("-TERM").arg(pid.to_string()).status();
        }
    }
    for process in processes.iter_mut() {
        if let Some(mut child) = process.child.take() {
            if tokio::time::timeout(Duration::from_secs(10), child.wait()).await.is_err() {
                let _ = child.kill().await;
            }
            println!("stopped {}", process.name);
        }
    }
}
