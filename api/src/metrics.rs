//! `GET /metrics`: Prometheus text exposition (format 0.0.4).
//!
//! Counted in this process by [`MeteredStore`] (a decorator around the
//! event store that the composition root installs): events appended and the
//! append latency histogram. Read when scraped, from the shared backends:
//! the log head, the relay's checkpoint, each projection's position and lag
//! (when this process has the read models), and the fulfilment sagas in
//! flight (running, compensating, stuck). Also counted here: GraphQL requests and their latency
//! (`strata_graphql_request_seconds`), and errors answered
//! (`strata_graphql_errors_total`).

//! `GET /metrics`: Prometheus text exposition, rendered by
//! `metrics-exporter-prometheus` from the `metrics` facade (names and labels
//! in README "Observability"; stable).
//!
//! Counted in this process by [`MeteredStore`] (a decorator around the
//! event store that the composition root installs): events appended and the
//! append latency histogram; by the GraphQL handler: requests, latency and
//! errors by code; by the libraries through the facade (the binary installs
//! [`process_metrics`]'s recorder globally): bus publishes and consumption,
//! saga steps by outcome. Read when scraped: the process's resources
//! (`process_*`), the log head, the relay's checkpoint, each projection's lag
//! and losses (when this process has the read models), and the fulfilment
//! sagas in flight (running, compensating, stuck).

use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use metrics::{Counter, Gauge, Histogram, Key, Label, Level, Metadata, Recorder, Unit};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle, PrometheusRecorder};
use strata_projections::{orders, ReadModelSink};
use strata_store::{AppendError, AppendOutcome, CheckpointStore, EventReader, EventStore, StreamAppend};

/// Upper bounds of the latency buckets, in seconds (every histogram).
const BUCKETS: [f64; 12] = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5];

/// The process's metrics: every handle (`/metrics`, the store decorator,
/// the GraphQL handler) shares this one, and [`install_global`] makes its
/// recorder the facade's, for the libraries' counters.
pub fn process_metrics() -> Arc<Metrics> {
    static METRICS: std::sync::OnceLock<Arc<Metrics>> = std::sync::OnceLock::new();
    METRICS.get_or_init(|| Arc::new(Metrics::default())).clone()
}

/// Makes [`process_metrics`] the recorder of the `metrics` facade (what the
/// libraries count goes to `/metrics`), keeps its histograms drained, and
/// sets `strata_build_info`. Once per process; later calls do nothing.
pub fn install_global(roles: &str) {
    static INSTALLED: std::sync::Once = std::sync::Once::new();
    INSTALLED.call_once(|| {
        let metrics = process_metrics();
        if metrics::set_global_recorder(Shared(metrics.recorder.clone())).is_err() {
            tracing::warn!("a metrics recorder was already installed; library metrics go there");
        }
        let handle = metrics.handle.clone();
        let _upkeep = std::thread::Builder::new().name("metrics-upkeep".into()).spawn(move || loop {
            std::thread::sleep(std::time::Duration::from_secs(5));
            handle.run_upkeep();
        });
    });
    let info =
        Key::from_parts("strata_build_info", vec![Label::new("version", env!("CARGO_PKG_VERSION")), Label::new("roles", roles.to_owned())]);
    process_metrics().recorder.register_gauge(&info, &METADATA).set(1.0);
}

static METADATA: Metadata<'static> = Metadata::new(module_path!(), Level::INFO, None);

/// The global recorder: the process's, shared with its [`Metrics`].
struct Shared(Arc<PrometheusRecorder>);

impl Recorder for Shared {
    fn describe_counter(&self, key: metrics::KeyName, unit: Option<Unit>, description: metrics::SharedString) {
        self.0.describe_counter(key, unit, description)
    }
    fn describe_gauge(&self, key: metrics::KeyName, unit: Option<Unit>, description: metrics::SharedString) {
        self.0.describe_gauge(key, unit, description)
    }
    fn describe_histogram(&self, key: metrics::KeyName, unit: Option<Unit>, description: metrics::SharedString) {
        self.0.describe_histogram(key, unit, description)
    }
    fn register_counter(&self, key: &Key, metadata: &Metadata<'_>) -> Counter {
        self.0.register_counter(key, metadata)
    }
    fn register_gauge(&self, key: &Key, metadata: &Metadata<'_>) -> Gauge {
        self.0.register_gauge(key, metadata)
    }
    fn register_histogram(&self, key: &Key, metadata: &Metadata<'_>) -> Histogram {
        self.0.register_histogram(key, metadata)
    }
}

/// What this process counted, in a Prometheus recorder of its own (tests
/// make one each, so their counts are theirs).
pub struct Metrics {
    recorder: Arc<PrometheusRecorder>,
    handle: PrometheusHandle,
    /// When the sagas in flight were last counted (see [`render`]).
    sagas_counted: Arc<tokio::sync::Mutex<Option<std::time::Instant>>>,
    /// The last render, by the number of renders started before it (see [`render`]).
    rendered: Arc<tokio::sync::Mutex<(u64, Arc<str>)>>,
    /// Renders started so far.
    renders_started: Arc<std::sync::atomic::AtomicU64>,
    events_appended: Counter,
    append_failures: Counter,
    append: Histogram,
    graphql: Histogram,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        let recorder = PrometheusBuilder::new().set_buckets(&BUCKETS).expect("buckets are not empty").build_recorder();
        let handle = recorder.handle();
        for (name, help) in DESCRIPTIONS {
            let unit = name.ends_with("_seconds").then_some(Unit::Seconds);
            if name.contains("_total") && !name.starts_with("process_") {
                recorder.describe_counter((*name).into(), unit, (*help).into());
            } else if name.ends_with("_seconds") {
                recorder.describe_histogram((*name).into(), unit, (*help).into());
            } else {
                recorder.describe_gauge((*name).into(), unit, (*help).into());
            }
        }
        let counter = |name: &'static str| recorder.register_counter(&Key::from_static_name(name), &METADATA);
        let histogram = |name: &'static str| recorder.register_histogram(&Key::from_static_name(name), &METADATA);
        Self {
            events_appended: counter("strata_events_appended_total"),
            append_failures: counter("strata_append_failures_total"),
            append: histogram("strata_append_seconds"),
            graphql: histogram("strata_graphql_request_seconds"),
            recorder: Arc::new(recorder),
            handle,
            sagas_counted: Arc::default(),
            rendered: Arc::new(tokio::sync::Mutex::new((0, Arc::from("")))),
            renders_started: Arc::default(),
        }
    }
}

/// Every series and its help text (README "Observability" lists the same).
pub const DESCRIPTIONS: &[(&str, &str)] = &[
    ("strata_build_info", "Always 1; the version and roles of this process are its labels."),
    ("strata_events_appended_total", "Events appended by this process."),
    ("strata_append_failures_total", "Appends refused or failed in this process."),
    ("strata_append_seconds", "Latency of appends by this process."),
    ("strata_orders_placed_total", "Orders placed through this process's GraphQL API (a replayed placement does not count)."),
    ("strata_graphql_request_seconds", "Latency of GraphQL requests served by this process."),
    ("strata_graphql_errors_total", "Errors in GraphQL responses of this process, by code."),
    ("strata_bus_published_total", "Events the relay of this process put on the bus."),
    ("strata_bus_publish_seconds", "Latency of the relay's batch publishes (until the bus stored every event)."),
    ("strata_bus_consumed_total", "Bus deliveries handled by this process, by consumer group and result (acked, nacked)."),
    ("strata_saga_step_seconds", "Latency of saga step attempts (the commands sent and their answers), by saga, step and phase."),
    ("strata_saga_steps_total", "Saga step attempts by saga, step, phase and outcome (done, refused, no_answer, transient)."),
    ("strata_log_head_position", "The highest position in the log."),
    ("strata_relay_position", "The last position the relay put on the bus."),
    ("strata_projection_lag_events", "Events in the log the projection has not applied yet."),
    ("strata_projection_lag_seconds", "Age of the oldest event the projection has not applied yet (0 when caught up)."),
    (
        "strata_projection_rebuild_events",
        "A running rebuild's log positions read (kind=done) and to read (kind=total, the head when it began); 0 when none runs.",
    ),
    (
        "strata_projection_losses_total",
        "Times the read model was found lost (backend restarted empty, keys evicted) and rebuilt from the log.",
    ),
    ("strata_sagas", "Fulfilment sagas in flight, by state (stuck: parked until an operator resumes them)."),
    ("strata_worker_restarts_total", "Times a worker of this process failed and its supervisor started it again, by worker."),
    ("strata_kafka_producer_renewals_total", "Kafka producers replaced after a fatal error."),
    ("process_resident_memory_bytes", "Resident memory of this process."),
    ("process_cpu_seconds_total", "CPU time (user and system) this process used."),
    ("process_open_fds", "File descriptors this process holds open."),
    ("process_threads", "Threads of this process."),
    ("process_start_time_seconds", "When this process started, in seconds since the Unix epoch."),
];

impl Metrics {
    fn observe_append(&self, started: Instant, result: &Result<AppendOutcome, AppendError>) {
        self.append.record(started.elapsed().as_secs_f64());
        match result {
            Ok(outcome) if !outcome.replayed => {
                let events: usize = outcome.streams.iter().map(|s| s.versions.len()).sum();
                self.events_appended.increment(events as u64);
            }
            Ok(_) => {}
            Err(_) => self.append_failures.increment(1),
        }
    }

    /// Records one GraphQL request and the error codes it answered.
    pub fn observe_graphql<'a>(&self, started: Instant, codes: impl IntoIterator<Item = &'a str>) {
        self.graphql.record(started.elapsed().as_secs_f64());
        for code in codes {
            let key = Key::from_parts("strata_graphql_errors_total", vec![Label::new("code", code.to_owned())]);
            self.recorder.register_counter(&key, &METADATA).increment(1);
        }
    }

    fn gauge(&self, name: &'static str, labels: Vec<Label>) -> Gauge {
        self.recorder.register_gauge(&Key::from_parts(name, labels), &METADATA)
    }

    fn counter(&self, name: &'static str, labels: Vec<Label>) -> Counter {
        self.recorder.register_counter(&Key::from_parts(name, labels), &METADATA)
    }
}

/// The event store, with its appends counted and timed.
pub struct MeteredStore {
    inner: Arc<dyn EventStore>,
    metrics: Arc<Metrics>,
}

impl MeteredStore {
    /// Wraps `inner`, counting into `metrics`.
    pub fn new(inner: Arc<dyn EventStore>, metrics: Arc<Metrics>) -> Self {
        Self { inner, metrics }
    }
}

strata_store::forward_event_reader!(MeteredStore, inner);

#[async_trait]
impl EventStore for MeteredStore {
    async fn append(&self, request: Vec<StreamAppend>) -> Result<AppendOutcome, AppendError> {
        let started = Instant::now();
        let result = self.inner.append(request).await;
        self.metrics.observe_append(started, &result);
        result
    }
}

/// Where the scrape-time figures come from.
#[derive(Clone)]
pub struct Sources {
    /// The log.
    pub log: Arc<dyn EventReader>,
    /// The relay's and the sagas' checkpoints.
    pub checkpoints: Arc<dyn CheckpointStore>,
    /// The read models, when this process has them.
    pub read_model: Option<Arc<dyn ReadModelSink>>,
    /// This process's counters.
    pub metrics: Arc<Metrics>,
}

/// How long a count of the sagas in flight serves scrapes before the sagas
/// are counted again.
pub const SAGA_COUNT_FOR: std::time::Duration = std::time::Duration::from_secs(5);

/// The exposition text: the scrape-time figures are set, then everything is
/// rendered. The log head, the relay's checkpoint and the projections' lag
/// are read at each scrape (a few keyed reads); the sagas in flight, which
/// take every saga event since the oldest one in flight (a stuck saga pins
/// it), are counted at most once per [`SAGA_COUNT_FOR`] however many
/// scrapes come (one counts, the others wait for it and render its count).
/// A figure whose source fails is left out (and logged).
///
/// One render runs at a time, and scrapes that arrive while one runs share
/// the next one (never one that started before they arrived, so a scrape
/// sees everything that happened before it): a flood of concurrent scrapes
/// costs about one render after another, not one per scrape.
pub async fn render(sources: &Sources) -> Arc<str> {
    use std::sync::atomic::Ordering;
    let m = &sources.metrics;
    let arrived_after = m.renders_started.load(Ordering::SeqCst);
    let mut rendered = m.rendered.lock().await;
    if rendered.0 > arrived_after {
        return rendered.1.clone();
    }
    let number = m.renders_started.fetch_add(1, Ordering::SeqCst) + 1;
    let text: Arc<str> = Arc::from(render_now(sources).await);
    *rendered = (number, text.clone());
    text
}

async fn render_now(sources: &Sources) -> String {
    let m = &sources.metrics;
    process::record(m);
    read_backend_figures(sources).await;
    {
        let mut counted = m.sagas_counted.lock().await;
        if counted.is_none_or(|at| at.elapsed() >= SAGA_COUNT_FOR) {
            count_sagas(sources).await;
            *counted = Some(std::time::Instant::now());
        }
    }
    m.handle.render()
}

async fn read_backend_figures(sources: &Sources) {
    let m = &sources.metrics;
    let head = match sources.log.head_position().await {
        Ok(head) => {
            m.gauge("strata_log_head_position", vec![]).set(head.0 as f64);
            Some(head.0)
        }
        Err(error) => {
            tracing::warn!(error = %strata_store::chain(&error), "metrics: reading the log head failed");
            None
        }
    };
    match sources.checkpoints.load_checkpoint("relay").await {
        Ok(position) => m.gauge("strata_relay_position", vec![]).set(position.0 as f64),
        Err(error) => tracing::warn!(error = %strata_store::chain(&error), "metrics: reading the relay checkpoint failed"),
    }
    if let (Some(sink), Some(head)) = (&sources.read_model, head) {
        for projection in orders::projections() {
            match crate::projections::status(&**sink, &*sources.log, &*projection).await {
                Ok(status) => {
                    let label = || vec![Label::new("projection", projection.name().to_owned())];
                    m.gauge("strata_projection_lag_events", label()).set(head.saturating_sub(status.position) as f64);
                    if let Some(seconds) = status.lag_seconds {
                        m.gauge("strata_projection_lag_seconds", label()).set(seconds);
                    }
                    let (done, total) = status.rebuild.as_ref().map_or((0, 0), |rebuild| (rebuild.events_done, rebuild.events_total));
                    for (kind, value) in [("done", done), ("total", total)] {
                        let labels = vec![Label::new("projection", projection.name().to_owned()), Label::new("kind", kind)];
                        m.gauge("strata_projection_rebuild_events", labels).set(value as f64);
                    }
                    m.counter("strata_projection_losses_total", label()).absolute(status.losses);
                }
                Err(error) => {
                    tracing::warn!(projection = projection.name(), error = %format_args!("{error:#}"), "metrics: reading the projection failed")
                }
            }
        }
    }
}

async fn count_sagas(sources: &Sources) {
    let m = &sources.metrics;
    match strata_sagas::count_in_flight(&*sources.log, &*sources.checkpoints, strata_sagas::fulfilment::CATEGORY).await {
        Ok(counts) => {
            for (state, count) in [("running", counts.running), ("compensating", counts.compensating), ("stuck", counts.stuck)] {
                m.gauge("strata_sagas", vec![Label::new("state", state)]).set(count as f64);
            }
        }
        Err(error) => tracing::warn!(error = %strata_store::chain(&error), "metrics: counting sagas failed"),
    }
}

/// The `process_*` series, read from `/proc/self` (Linux; elsewhere absent).
mod process {
    use super::Metrics;

    pub(super) fn record(metrics: &Metrics) {
        let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else { return };
        // The fields after the command name (which may hold spaces), from field 3.
        let Some((_, rest)) = stat.rsplit_once(") ") else { return };
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let field = |n: usize| fields.get(n - 3).and_then(|value| value.parse::<f64>().ok());
        // Clock ticks per second: 100 on every Linux the binary targets.
        const TICKS: f64 = 100.0;
        if let (Some(user), Some(system)) = (field(14), field(15)) {
            // A float, so a gauge (the facade's counters are integers).
            metrics.gauge("process_cpu_seconds_total", vec![]).set((user + system) / TICKS);
        }
        if let Some(threads) = field(20) {
            metrics.gauge("process_threads", vec![]).set(threads);
        }
        if let Some(rss_pages) = field(24) {
            metrics.gauge("process_resident_memory_bytes", vec![]).set(rss_pages * 4096.0);
        }
        if let (Some(start_ticks), Some(boot)) = (field(22), boot_time()) {
            metrics.gauge("process_start_time_seconds", vec![]).set(boot + start_ticks / TICKS);
        }
        if let Ok(fds) = std::fs::read_dir("/proc/self/fd") {
            metrics.gauge("process_open_fds", vec![]).set(fds.count() as f64);
        }
    }

    fn boot_time() -> Option<f64> {
        let stat = std::fs::read_to_string("/proc/stat").ok()?;
        stat.lines().find_map(|line| line.strip_prefix("btime ")).and_then(|value| value.trim().parse().ok())
    }
}
