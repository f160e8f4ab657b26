//! The bench kit: what every `strata bench …` shares instead of repeating it.
//!
//! - [`Scratch::around`]: a scratch database (PostgreSQL) or directory
//!   (SQLite) made for the bench and removed afterwards, also when the bench
//!   fails; [`open_scratch`] opens and migrates its store.
//! - [`alternate`]: runs of a measured variant and its baseline, alternating
//!   which goes first (neither always gets the warmer cache or the quieter
//!   second half), each run reported on stderr as it ends.
//! - [`Summary`]: what one variant did in one run (counts, seconds, latency
//!   percentiles, other figures), typed; [`Comparison`] holds a bench's runs.
//! - [`Report`]: the one JSON shape every bench prints (the keys the bench
//!   section of ARCHITECTURE.md names): `bench`, `backend`, the parameters,
//!   medians over the runs, `baseline`, `ratio`, `per_run`, `machine`.
//! - [`drive`]: closed-loop writers timing every call.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde_json::{json, Map, Value};
use strata_store::EventStore;
use uuid::Uuid;

use strata_api::backend::{registry, scheme, Scheme};
pub use strata_api::latency::{round, Latency};

/// Each percentile's median over runs.
fn median_latency(all: &[Latency]) -> Option<Latency> {
    let of = |pick: fn(&Latency) -> f64| median(all.iter().map(pick).collect());
    (!all.is_empty()).then(|| Latency {
        p50_ms: of(|l| l.p50_ms),
        p95_ms: of(|l| l.p95_ms),
        p99_ms: of(|l| l.p99_ms),
        max_ms: of(|l| l.max_ms),
    })
}

/// What one variant did in one run.
#[derive(Debug, Clone, PartialEq)]
pub struct Summary {
    /// Units done, each reported as `<unit>_per_s`; the first is the one
    /// rates and ratios are about (`events`, `commands`, `orders`).
    pub counts: Vec<(&'static str, u64)>,
    /// Wall time of the run.
    pub seconds: f64,
    /// Latency of each timed call, when calls were timed.
    pub latency: Option<Latency>,
    /// Other figures of the run, reported under their own key.
    pub figures: Vec<(&'static str, f64)>,
}

impl Summary {
    /// `count` units done in `seconds`.
    pub fn new(unit: &'static str, count: u64, seconds: f64) -> Self {
        Self { counts: vec![(unit, count)], seconds, latency: None, figures: Vec::new() }
    }

    /// Closed-loop calls timed by [`drive`], each doing `per_call` units.
    pub fn of_calls(unit: &'static str, per_call: u64, latencies: &[Duration], seconds: f64) -> Self {
        Self::new(unit, latencies.len() as u64 * per_call, seconds).timed(Latency::of_durations(latencies))
    }

    /// Another count of the same run (`appends` beside `events`).
    pub fn also(mut self, unit: &'static str, count: u64) -> Self {
        self.counts.push((unit, count));
        self
    }

    /// The latency of the run's calls.
    pub fn timed(mut self, latency: Option<Latency>) -> Self {
        self.latency = latency;
        self
    }

    /// Another figure of the run (`conflict_retry_rate`, `rss_peak_mb`).
    pub fn with(mut self, key: &'static str, value: f64) -> Self {
        self.figures.push((key, value));
        self
    }

    /// The first unit per second.
    pub fn rate(&self) -> f64 {
        self.counts.first().map_or(0.0, |(_, count)| *count as f64 / self.seconds.max(1e-9))
    }

    /// The figure named `key`, if the run has it.
    pub fn figure(&self, key: &str) -> Option<f64> {
        self.figures.iter().find(|(k, _)| *k == key).map(|(_, v)| *v)
    }

    /// The medians over runs of one variant: `seconds`, a `<unit>_per_s`
    /// per unit (the median of the runs' rates), the latency percentiles and
    /// the other figures. Keys come from the first run.
    pub fn medians(all: &[Self]) -> Map<String, Value> {
        let mut object = Map::new();
        let Some(first) = all.first() else { return object };
        object.insert("seconds".into(), json!(round(median(all.iter().map(|s| s.seconds).collect()), 3)));
        for (index, (unit, _)) in first.counts.iter().enumerate() {
            let rates = all.iter().filter_map(|s| s.counts.get(index).map(|(_, count)| *count as f64 / s.seconds.max(1e-9)));
            object.insert(format!("{unit}_per_s"), json!(round(median(rates.collect()), 1)));
        }
        if let Some(latency) = median_latency(&all.iter().filter_map(|s| s.latency).collect::<Vec<_>>()) {
            object.extend(latency.json());
        }
        for (key, _) in &first.figures {
            object.insert((*key).into(), json!(round(median(all.iter().filter_map(|s| s.figure(key)).collect()), 4)));
        }
        object
    }

    /// One line for people: `10123 events/s (p99 1.20 ms)`.
    fn line(&self) -> String {
        let unit = self.counts.first().map_or("units", |(unit, _)| unit);
        let mut line = format!("{:.0} {unit}/s in {:.2} s", self.rate(), self.seconds);
        if let Some(latency) = self.latency {
            line.push_str(&format!(" (p50 {:.2} ms, p99 {:.2} ms)", latency.p50_ms, latency.p99_ms));
        }
        for (key, value) in &self.figures {
            line.push_str(&format!(", {key} {value:.3}"));
        }
        line
    }
}

/// A bench's runs: its measured variant and the baseline, run by run.
#[derive(Debug, Clone, Default)]
pub struct Comparison {
    /// Measured variant and baseline, in run order.
    pub runs: Vec<(Summary, Summary)>,
}

impl Comparison {
    /// Each run's rate over its baseline's.
    pub fn ratios(&self) -> Vec<f64> {
        self.runs.iter().map(|(main, baseline)| main.rate() / baseline.rate().max(1e-9)).collect()
    }

    /// The measured variant of every run.
    pub fn main(&self) -> Vec<Summary> {
        self.runs.iter().map(|(main, _)| main.clone()).collect()
    }

    /// The baseline of every run.
    pub fn baseline(&self) -> Vec<Summary> {
        self.runs.iter().map(|(_, baseline)| baseline.clone()).collect()
    }
}

/// Runs `runs` pairs of `main` and `baseline` (each given the run's index),
/// main first in even runs and baseline first in odd ones; each run's
/// figures go to stderr as it ends.
pub async fn alternate(
    runs: usize,
    mut main: impl AsyncFnMut(usize) -> anyhow::Result<Summary>,
    mut baseline: impl AsyncFnMut(usize) -> anyhow::Result<Summary>,
) -> anyhow::Result<Comparison> {
    let mut comparison = Comparison::default();
    for run in 0..runs {
        let pair = if run % 2 == 0 {
            let measured = main(run).await?;
            (measured, baseline(run).await?)
        } else {
            let base = baseline(run).await?;
            (main(run).await?, base)
        };
        eprintln!("run {}: {} · baseline {} · ratio {:.3}", run + 1, pair.0.line(), pair.1.line(), pair.0.rate() / pair.1.rate().max(1e-9));
        comparison.runs.push(pair);
    }
    Ok(comparison)
}

/// A bench's result, in the key order every bench prints.
#[derive(Debug, Clone)]
pub struct Report(Map<String, Value>);

impl Report {
    /// A report of the bench named `bench`.
    pub fn new(bench: &str) -> Self {
        let mut object = Map::new();
        object.insert("bench".into(), json!(bench));
        Self(object)
    }

    /// A parameter or a figure under its own key.
    pub fn with(mut self, key: &str, value: impl Into<Value>) -> Self {
        self.0.insert(key.into(), value.into());
        self
    }

    /// The medians of a variant's runs at the top level.
    pub fn summary(mut self, all: &[Summary]) -> Self {
        self.0.extend(Summary::medians(all));
        self
    }

    /// The measured variant's medians at the top level, the baseline's under
    /// `baseline` (named `baseline_name` when it is not the same thing done
    /// plainly), the median `ratio` and every run.
    pub fn compared(mut self, comparison: &Comparison, baseline_name: Option<&str>) -> Self {
        self.0.extend(Summary::medians(&comparison.main()));
        let mut baseline = Map::new();
        if let Some(name) = baseline_name {
            baseline.insert("bench".into(), json!(name));
        }
        baseline.extend(Summary::medians(&comparison.baseline()));
        self.0.insert("baseline".into(), Value::Object(baseline));
        let ratios = comparison.ratios();
        self.0.insert("ratio".into(), json!(round(median(ratios.clone()), 3)));
        let per_run = comparison.runs.iter().zip(ratios).map(|((main, baseline), ratio)| {
            let mut run = Summary::medians(std::slice::from_ref(main));
            run.insert("baseline".into(), Value::Object(Summary::medians(std::slice::from_ref(baseline))));
            run.insert("ratio".into(), json!(round(ratio, 3)));
            Value::Object(run)
        });
        self.0.insert("per_run".into(), Value::Array(per_run.collect()));
        self
    }

    /// The JSON object, with the machine it ran on.
    pub fn finish(mut self) -> Value {
        self.0.insert("machine".into(), machine());
        Value::Object(self.0)
    }
}

/// One worker's share of a projection bench's events, each with its writes.
#[cfg(feature = "redis")]
pub(crate) type Share = Vec<(strata_store::RecordedEvent, Vec<strata_projections::Write>)>;

/// A number of seconds (`10`, `0.5`) as a duration (a bench flag).
pub(crate) fn seconds(text: &str) -> Result<Duration, String> {
    let seconds: f64 = text.parse().map_err(|_| format!("{text:?} is not a number of seconds"))?;
    Duration::try_from_secs_f64(seconds).map_err(|_| format!("{text:?} is not a duration in seconds"))
}

/// Where a benchmark ran.
pub(crate) fn machine() -> Value {
    json!({ "cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0), "os": std::env::consts::OS })
}

pub(crate) fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    if values.is_empty() {
        return 0.0;
    }
    let mid = values.len() / 2;
    if values.len() % 2 == 1 {
        values[mid]
    } else {
        (values[mid - 1] + values[mid]) / 2.0
    }
}

/// The scratch place a bench writes to, and how to remove it.
pub(crate) enum Scratch {
    #[cfg(feature = "postgres")]
    Postgres {
        admin_url: String,
        name: String,
        url: String,
    },
    Sqlite {
        dir: tempfile::TempDir,
        url: String,
    },
}

impl Scratch {
    /// Runs `bench` on a scratch place of the server or directory `url`
    /// names, and removes the place afterwards, whether the bench succeeded
    /// or not (its error wins over a failed removal).
    pub(crate) async fn around<T>(url: &str, bench: impl AsyncFnOnce(&Scratch) -> anyhow::Result<T>) -> anyhow::Result<T> {
        let scratch = Self::create(url).await?;
        let result = bench(&scratch).await;
        let removed = scratch.remove().await;
        match (result, removed) {
            (Ok(value), removed) => removed.map(|()| value),
            (Err(error), Ok(())) => Err(error),
            (Err(error), Err(removal)) => Err(error.context(format!("(removing the scratch place failed too: {removal:#})"))),
        }
    }

    async fn create(url: &str) -> anyhow::Result<Self> {
        match scheme(url)? {
            #[cfg(feature = "postgres")]
            Scheme::Postgres => {
                use sqlx::{Connection, Executor};
                let mut admin = sqlx::PgConnection::connect(url).await.context("connecting to PostgreSQL")?;
                let name = format!("strata_bench_{}", Uuid::new_v4().simple());
                admin.execute(format!("CREATE DATABASE {name}").as_str()).await?;
                let options: sqlx::postgres::PgConnectOptions = url.parse()?;
                let url = format!("postgres://{}@{}:{}/{name}", options.get_username(), options.get_host(), options.get_port());
                Ok(Self::Postgres { admin_url: url_with_db(&url, options.get_database().unwrap_or("postgres")), name, url })
            }
            Scheme::Sqlite => {
                let dir = tempfile::tempdir()?;
                let url = format!("sqlite://{}", dir.path().join("bench.db").display());
                Ok(Self::Sqlite { dir, url })
            }
            _ => bail!("benchmarks need STRATA_EVENT_STORE=sqlite://… or postgres://…"),
        }
    }

    async fn remove(self) -> anyhow::Result<()> {
        match self {
            #[cfg(feature = "postgres")]
            Self::Postgres { admin_url, name, .. } => {
                use sqlx::{Connection, Executor};
                let mut admin = sqlx::PgConnection::connect(&admin_url).await?;
                admin.execute(format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)").as_str()).await?;
                Ok(())
            }
            Self::Sqlite { dir, .. } => Ok(dir.close()?),
        }
    }

    /// The scratch store's URL.
    #[cfg(test)]
    fn url(&self) -> &str {
        match self {
            #[cfg(feature = "postgres")]
            Self::Postgres { url, .. } => url,
            Self::Sqlite { url, .. } => url,
        }
    }
}

#[cfg(feature = "postgres")]
fn url_with_db(url: &str, database: &str) -> String {
    let base = url.rsplit_once('/').map_or(url, |(base, _)| base);
    format!("{base}/{database}")
}

/// A scratch store with everything the benchmarks use.
pub(crate) trait ScratchStore: EventStore + strata_store::SnapshotStore + strata_store::CheckpointStore {}
impl<T: EventStore + strata_store::SnapshotStore + strata_store::CheckpointStore> ScratchStore for T {}

/// Opens and migrates the store of a scratch place; returns it and its backend name.
pub(crate) async fn open_scratch(scratch: &Scratch, max_connections: u32) -> anyhow::Result<(Arc<dyn ScratchStore>, &'static str)> {
    let registry = registry()?;
    Ok(match scratch {
        #[cfg(feature = "postgres")]
        Scratch::Postgres { url, .. } => {
            let mut config = strata_store::PostgresConfig::new(url.clone());
            config.max_connections = max_connections;
            let store = strata_store::PostgresEventStore::connect(config, registry).await?;
            store.migrate().await?;
            (Arc::new(store), "postgres")
        }
        Scratch::Sqlite { url, .. } => {
            let store = strata_store::SqliteEventStore::connect(strata_store::SqliteConfig::new(url.clone()), registry).await?;
            store.migrate().await?;
            (Arc::new(store), "sqlite")
        }
    })
}

/// Runs `writers` tasks for `duration`. Each task starts from `init(i)` and
/// calls `step(state)` until the time is up, threading its state through and
/// timing every call; `step` also returns a count it wants summed (retries).
/// Returns every call's latency, the sum, and the seconds it took.
pub(crate) async fn drive<S, F, Fut>(
    writers: usize,
    duration: Duration,
    init: impl Fn(usize) -> S,
    step: F,
) -> anyhow::Result<(Vec<Duration>, u64, f64)>
where
    S: Send + 'static,
    F: Fn(S) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = anyhow::Result<(S, u64)>> + Send + 'static,
{
    let started = Instant::now();
    let deadline = started + duration;
    let tasks: Vec<_> = (0..writers)
        .map(|writer| {
            let mut state = init(writer);
            let step = step.clone();
            tokio::spawn(async move {
                let (mut latencies, mut counted) = (Vec::new(), 0);
                while Instant::now() < deadline {
                    let start = Instant::now();
                    let (next, count) = step(state).await?;
                    latencies.push(start.elapsed());
                    state = next;
                    counted += count;
                }
                anyhow::Ok((latencies, counted))
            })
        })
        .collect();
    let (mut latencies, mut counted) = (Vec::new(), 0);
    for task in tasks {
        let (task_latencies, task_counted) = task.await??;
        latencies.extend(task_latencies);
        counted += task_counted;
    }
    Ok((latencies, counted, started.elapsed().as_secs_f64()))
}

#[cfg(test)]
mod tests {
    use std::cell::RefCell;

    use super::*;

    #[test]
    fn percentiles_are_nearest_rank_and_none_without_samples() {
        let latency = Latency::of((1..=100).rev().map(f64::from).collect()).unwrap();
        assert_eq!((latency.p50_ms, latency.p95_ms, latency.p99_ms, latency.max_ms), (50.0, 95.0, 99.0, 100.0));
        let one = Latency::of(vec![7.0]).unwrap();
        assert_eq!((one.p50_ms, one.p99_ms), (7.0, 7.0));
        assert_eq!(Latency::of(Vec::new()), None);
        assert_eq!(median(vec![3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(vec![4.0, 1.0, 2.0, 3.0]), 2.5);
        assert_eq!(median(Vec::new()), 0.0);
    }

    #[tokio::test]
    async fn runs_alternate_which_variant_goes_first_and_the_report_takes_medians() {
        let order = RefCell::new(Vec::new());
        // Main does 100, 300, 200 events in one second; the baseline 100 each.
        let comparison = alternate(
            3,
            async |run| {
                order.borrow_mut().push(format!("main {run}"));
                Ok(Summary::new("events", [100, 300, 200][run], 1.0).also("appends", 10).with("retry_rate", run as f64))
            },
            async |run| {
                order.borrow_mut().push(format!("baseline {run}"));
                Ok(Summary::of_calls("events", 2, &[Duration::from_millis(5); 25], 0.5))
            },
        )
        .await
        .unwrap();
        assert_eq!(order.into_inner(), ["main 0", "baseline 0", "baseline 1", "main 1", "main 2", "baseline 2"]);
        assert_eq!(comparison.ratios(), [1.0, 3.0, 2.0]);

        let report = Report::new("append").with("backend", "sqlite").compared(&comparison, None).finish();
        assert_eq!(report["bench"], "append");
        assert_eq!(report["events_per_s"], 200.0);
        assert_eq!(report["appends_per_s"], 10.0);
        assert_eq!(report["retry_rate"], 1.0);
        assert_eq!(report["ratio"], 2.0);
        assert_eq!((report["baseline"]["events_per_s"].as_f64(), report["baseline"]["p99_ms"].as_f64()), (Some(100.0), Some(5.0)));
        assert!(report.get("p50_ms").is_none(), "main was not timed call by call: {report}");
        assert_eq!(report["per_run"].as_array().map(Vec::len), Some(3));
        assert_eq!((report["per_run"][1]["events_per_s"].as_f64(), report["per_run"][1]["ratio"].as_f64()), (Some(300.0), Some(3.0)));
        assert!(report["machine"]["cpus"].as_u64().unwrap() >= 1);
        let keys: Vec<&str> = report.as_object().unwrap().keys().map(String::as_str).collect();
        assert_eq!(keys[..2], ["bench", "backend"], "the name and the backend come first: {keys:?}");
    }

    #[tokio::test]
    async fn a_scratch_directory_is_removed_after_the_bench_and_after_its_failure() {
        let mut seen = None;
        let value = Scratch::around("sqlite://unused.db", async |scratch| {
            let (store, backend) = open_scratch(scratch, 1).await?;
            assert_eq!(backend, "sqlite");
            assert_eq!(store.head_position().await?, strata_store::Position::START);
            seen = Some(scratch.url().trim_start_matches("sqlite://").to_owned());
            Ok(42)
        })
        .await
        .unwrap();
        assert_eq!(value, 42);
        let file = std::path::PathBuf::from(seen.take().unwrap());
        assert!(!file.parent().unwrap().exists(), "{} outlived its bench", file.display());

        let failed = Scratch::around("sqlite://unused.db", async |scratch| -> anyhow::Result<()> {
            seen = Some(scratch.url().trim_start_matches("sqlite://").to_owned());
            bail!("the bench broke")
        })
        .await;
        assert_eq!(failed.unwrap_err().to_string(), "the bench broke");
        let file = std::path::PathBuf::from(seen.unwrap());
        assert!(!file.parent().unwrap().exists(), "{} outlived its failed bench", file.display());
        assert!(Scratch::around("memory", async |_| Ok(())).await.unwrap_err().to_string().contains("sqlite://"));
    }
}
