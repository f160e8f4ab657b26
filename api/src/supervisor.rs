//! Supervised workers (docs/design.md §8).
//!
//! Every worker of a process (the relay, each projection runner, the saga
//! orchestrator, the services' responder) runs under a [`Supervisor`]: one
//! *attempt* at a time, in its own task. An attempt that ends with an
//! error, panics, or ends without being asked to stop is logged, counted in
//! `strata_worker_restarts_total{worker}` and started again after a capped,
//! jittered pause ([`Backoff`]): the first pause is [`Backoff::initial`],
//! each next one doubles up to [`Backoff::max`], and each is drawn uniformly
//! between half of it and all of it, so replicas that failed together do not
//! come back together. An attempt that ran for [`Backoff::healthy_after`]
//! before failing starts the doubling over.
//!
//! [`WorkerHealth`] is what `/readyz` shows: each worker `up` (an attempt is
//! running, since when, restarts so far) or `restarting` (the last error,
//! since when it is down, the next attempt's pause). A process is not ready
//! while any of its workers is not up, so it never keeps serving with a role
//! silently gone.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use serde_json::{json, Value};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// One attempt of a worker: runs until `stop` turns true (then `Ok`) or fails.
pub type Attempt = Pin<Box<dyn Future<Output = anyhow::Result<()>> + Send + 'static>>;

/// How long the supervisor pauses between attempts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// The pause after the first failure.
    pub initial: Duration,
    /// The longest pause (`STRATA_WORKER_BACKOFF_MAX`).
    pub max: Duration,
    /// An attempt that ran this long before failing starts the doubling over.
    pub healthy_after: Duration,
}

impl Default for Backoff {
    /// 250 ms, doubling up to 30 s; reset after a minute of work.
    fn default() -> Self {
        Self { initial: Duration::from_millis(250), max: Duration::from_secs(30), healthy_after: Duration::from_secs(60) }
    }
}

impl Backoff {
    /// The pause before the next attempt when the nominal one is `nominal`:
    /// uniform in `[nominal / 2, nominal]`.
    pub fn jittered(nominal: Duration) -> Duration {
        let half = nominal / 2;
        half + half.mul_f64(rand::random::<f64>())
    }

    /// The nominal pause after `failures` failures in a row (1 = the first).
    pub fn nominal(&self, failures: u32) -> Duration {
        let doubled = self.initial.saturating_mul(1u32 << failures.saturating_sub(1).min(20));
        doubled.min(self.max.max(self.initial))
    }
}

/// A worker's state, as `/readyz` shows it.
#[derive(Debug, Clone, PartialEq)]
pub enum WorkerState {
    /// An attempt is running.
    Up {
        /// When it started.
        since: DateTime<Utc>,
        /// Attempts that ended before this one.
        restarts: u64,
    },
    /// The last attempt failed; the next one starts after a pause.
    Restarting {
        /// Since when the worker is down (the first failure of this run of failures).
        since: DateTime<Utc>,
        /// What ended the last attempt.
        last_error: String,
        /// Attempts that ended so far.
        restarts: u64,
        /// The pause before the next attempt.
        retry_in: Duration,
    },
    /// Asked to stop, and stopped.
    Stopped,
}

impl WorkerState {
    fn to_json(&self) -> Value {
        match self {
            Self::Up { since, restarts } => json!({ "status": "up", "since": since.to_rfc3339(), "restarts": restarts }),
            Self::Restarting { since, last_error, restarts, retry_in } => json!({
                "status": "restarting",
                "since": since.to_rfc3339(),
                "last_error": last_error,
                "restarts": restarts,
                "retry_in_ms": u64::try_from(retry_in.as_millis()).unwrap_or(u64::MAX),
            }),
            Self::Stopped => json!({ "status": "stopped" }),
        }
    }
}

/// The states of a process's workers, shared with `/readyz`.
#[derive(Debug, Default)]
pub struct WorkerHealth {
    workers: Mutex<BTreeMap<String, WorkerState>>,
}

impl WorkerHealth {
    fn set(&self, name: &str, state: WorkerState) {
        self.workers.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).insert(name.to_owned(), state);
    }

    /// Each worker's state, by name.
    pub fn states(&self) -> BTreeMap<String, WorkerState> {
        self.workers.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).clone()
    }

    /// Whether every worker is up (true when there are none).
    pub fn all_up(&self) -> bool {
        self.states().values().all(|state| matches!(state, WorkerState::Up { .. }))
    }

    /// `{"<name>": {"status": "up"|"restarting"|"stopped", …}}` for `/readyz`.
    pub fn to_json(&self) -> Value {
        Value::Object(self.states().into_iter().map(|(name, state)| (name, state.to_json())).collect())
    }
}

/// Runs workers, restarting each one that ends on its own.
pub struct Supervisor {
    stop: watch::Sender<bool>,
    backoff: Backoff,
    health: Arc<WorkerHealth>,
    tasks: Vec<(String, JoinHandle<()>)>,
}

impl Supervisor {
    /// A supervisor pausing between attempts as `backoff` says.
    pub fn new(backoff: Backoff) -> Self {
        Self { stop: watch::channel(false).0, backoff, health: Arc::default(), tasks: Vec::new() }
    }

    /// The workers' states.
    pub fn health(&self) -> Arc<WorkerHealth> {
        self.health.clone()
    }

    /// Supervises `worker` under `name`: `start(stop)` makes one attempt,
    /// which must end `Ok` soon after `stop` turns true.
    pub fn spawn<F>(&mut self, name: impl Into<String>, start: F)
    where
        F: Fn(watch::Receiver<bool>) -> Attempt + Send + Sync + 'static,
    {
        let name = name.into();
        let task = tokio::spawn(supervise(name.clone(), start, self.stop.subscribe(), self.backoff, self.health.clone()));
        self.tasks.push((name, task));
    }

    /// Asks every worker to stop and waits for them.
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        for (name, task) in self.tasks {
            if let Err(join) = task.await {
                tracing::warn!(worker = %name, "supervisor panicked: {join}");
            }
        }
    }
}

async fn supervise<F>(name: String, start: F, mut stop: watch::Receiver<bool>, backoff: Backoff, health: Arc<WorkerHealth>)
where
    F: Fn(watch::Receiver<bool>) -> Attempt + Send + Sync + 'static,
{
    let mut restarts = 0u64;
    let mut failures = 0u32;
    let mut down_since: Option<DateTime<Utc>> = None;
    loop {
        if *stop.borrow() {
            break;
        }
        health.set(&name, WorkerState::Up { since: Utc::now(), restarts });
        let started = Instant::now();
        // Its own task, so that a panic ends the attempt and not the supervisor.
        let outcome = tokio::spawn(start(stop.clone())).await;
        if *stop.borrow() {
            if let Ok(Err(error)) = &outcome {
                tracing::warn!(worker = %name, "stopped with an error: {error:#}");
            }
            break;
        }
        let error = match outcome {
            Ok(Ok(())) => "ended without being asked to stop".to_owned(),
            Ok(Err(error)) => format!("{error:#}"),
            Err(join) => format!("panicked: {join}"),
        };
        if started.elapsed() >= backoff.healthy_after {
            failures = 0;
            down_since = None;
        }
        failures = failures.saturating_add(1);
        restarts += 1;
        let since = *down_since.get_or_insert_with(Utc::now);
        let retry_in = Backoff::jittered(backoff.nominal(failures));
        metrics::counter!("strata_worker_restarts_total", "worker" => name.clone()).increment(1);
        tracing::error!(worker = %name, restarts, retry_in_ms = retry_in.as_millis() as u64, "worker stopped: {error}; restarting");
        health.set(&name, WorkerState::Restarting { since, last_error: error, restarts, retry_in });
        tokio::select! {
            () = tokio::time::sleep(retry_in) => {}
            _ = stop.wait_for(|stop| *stop) => break,
        }
    }
    health.set(&name, WorkerState::Stopped);
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;

    fn quick() -> Backoff {
        Backoff { initial: Duration::from_millis(5), max: Duration::from_millis(20), healthy_after: Duration::from_secs(60) }
    }

    async fn wait_until(what: &str, mut condition: impl FnMut() -> bool) {
        strata_store::testkit::wait_until(Duration::from_secs(10), || std::future::ready(if condition() { Ok(()) } else { Err(what) }))
            .await;
    }

    #[test]
    fn the_pause_doubles_up_to_the_cap_and_is_jittered_within_half_of_it() {
        let backoff = Backoff { initial: Duration::from_millis(250), max: Duration::from_secs(30), healthy_after: Duration::from_secs(60) };
        let nominal: Vec<u128> = (1..=10).map(|n| backoff.nominal(n).as_millis()).collect();
        assert_eq!(nominal, [250, 500, 1000, 2000, 4000, 8000, 16000, 30000, 30000, 30000]);
        assert_eq!(backoff.nominal(u32::MAX), Duration::from_secs(30));
        let draws: Vec<Duration> = (0..200).map(|_| Backoff::jittered(Duration::from_secs(8))).collect();
        assert!(draws.iter().all(|d| *d >= Duration::from_secs(4) && *d <= Duration::from_secs(8)), "{draws:?}");
        assert!(draws.iter().any(|d| *d != draws[0]), "every draw was the same: not jittered");
    }

    #[tokio::test]
    async fn a_failing_worker_is_restarted_until_it_runs_and_its_state_says_so() {
        let mut supervisor = Supervisor::new(quick());
        let health = supervisor.health();
        let attempts = Arc::new(AtomicU32::new(0));
        let counted = attempts.clone();
        supervisor.spawn("flaky", move |mut stop| {
            let attempt = counted.fetch_add(1, Ordering::SeqCst);
            Box::pin(async move {
                match attempt {
                    0 => anyhow::bail!("backend refused"),
                    1 => panic!("worker bug"),
                    2 => Ok(()),
                    _ => {
                        let _ = stop.wait_for(|stop| *stop).await;
                        Ok(())
                    }
                }
            })
        });
        wait_until("the fourth attempt runs", || attempts.load(Ordering::SeqCst) >= 4).await;
        wait_until("the worker is up", || health.all_up()).await;
        let states = health.states();
        assert!(matches!(states["flaky"], WorkerState::Up { restarts: 3, .. }), "{states:?}");
        supervisor.stop().await;
        assert_eq!(health.states()["flaky"], WorkerState::Stopped);
        assert_eq!(attempts.load(Ordering::SeqCst), 4, "no attempt after the stop");
    }

    #[tokio::test]
    async fn a_worker_that_keeps_failing_shows_restarting_with_its_error_and_is_not_ready() {
        let backoff = Backoff { initial: Duration::from_secs(30), max: Duration::from_secs(30), healthy_after: Duration::from_secs(60) };
        let mut supervisor = Supervisor::new(backoff);
        let health = supervisor.health();
        supervisor.spawn("relay", |_| Box::pin(async { anyhow::bail!("publishing failed: no ack") }));
        supervisor.spawn("steady", |mut stop| {
            Box::pin(async move {
                let _ = stop.wait_for(|stop| *stop).await;
                Ok(())
            })
        });
        wait_until("the relay is restarting", || matches!(health.states().get("relay"), Some(WorkerState::Restarting { .. }))).await;
        assert!(!health.all_up());
        let shown = health.to_json();
        assert_eq!(shown["relay"]["status"], "restarting");
        assert_eq!(shown["relay"]["last_error"], "publishing failed: no ack");
        assert_eq!(shown["relay"]["restarts"], 1);
        let retry = shown["relay"]["retry_in_ms"].as_u64().unwrap_or_default();
        assert!((15_000..=30_000).contains(&retry), "{shown}");
        assert_eq!(shown["steady"]["status"], "up");
        // Stopping does not wait out the pause.
        tokio::time::timeout(Duration::from_secs(5), supervisor.stop()).await.expect("stop waits for no pause");
    }
}
