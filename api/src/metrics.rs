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

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use futures_util::stream::BoxStream;
use strata_projections::{orders, ReadModelSink};
use strata_store::{
    AppendError, AppendOutcome, CheckpointStore, EventReader, EventStore, Form, Position, ReadAll, ReadError, ReadStream, RecordedEvent,
    StreamAppend, StreamHead, StreamId, Subscribe,
};
use uuid::Uuid;

/// Upper bounds of the latency buckets, in seconds.
const BUCKETS: [f64; 12] = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5];

/// The process's counters: every handle (`/metrics`, the store decorator,
/// the GraphQL handler) shares this one.
pub fn process_metrics() -> Arc<Metrics> {
    static METRICS: std::sync::OnceLock<Arc<Metrics>> = std::sync::OnceLock::new();
    METRICS.get_or_init(Arc::default).clone()
}

/// A latency histogram (cumulative buckets, sum and count).
#[derive(Debug, Default)]
pub struct Histogram {
    count: AtomicU64,
    micros: AtomicU64,
    buckets: [AtomicU64; BUCKETS.len()],
}

impl Histogram {
    /// Records one observation.
    pub fn observe(&self, seconds: f64) {
        self.count.fetch_add(1, Ordering::Relaxed);
        self.micros.fetch_add((seconds * 1e6) as u64, Ordering::Relaxed);
        for (bucket, bound) in self.buckets.iter().zip(BUCKETS) {
            if seconds <= bound {
                bucket.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Observations so far.
    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    fn render(&self, out: &mut String, name: &str, help: &str) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        for (bucket, bound) in self.buckets.iter().zip(BUCKETS) {
            let _ = writeln!(out, "{name}_bucket{{le=\"{bound}\"}} {}", bucket.load(Ordering::Relaxed));
        }
        let count = self.count();
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {count}");
        let _ = writeln!(out, "{name}_sum {}", self.micros.load(Ordering::Relaxed) as f64 / 1e6);
        let _ = writeln!(out, "{name}_count {count}");
    }
}

/// What this process counted.
#[derive(Debug, Default)]
pub struct Metrics {
    events_appended: AtomicU64,
    append_failures: AtomicU64,
    append: Histogram,
    /// Latency of GraphQL requests served.
    pub graphql: Histogram,
    graphql_errors: AtomicU64,
}

impl Metrics {
    fn observe_append(&self, started: Instant, result: &Result<AppendOutcome, AppendError>) {
        self.append.observe(started.elapsed().as_secs_f64());
        match result {
            Ok(outcome) if !outcome.replayed => {
                let events: usize = outcome.streams.iter().map(|s| s.versions.len()).sum();
                self.events_appended.fetch_add(events as u64, Ordering::Relaxed);
            }
            Ok(_) => {}
            Err(_) => {
                self.append_failures.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Records one GraphQL request and the errors it answered.
    pub fn observe_graphql(&self, started: Instant, errors: usize) {
        self.graphql.observe(started.elapsed().as_secs_f64());
        self.graphql_errors.fetch_add(errors as u64, Ordering::Relaxed);
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

#[async_trait]
impl EventReader for MeteredStore {
    async fn read_stream(&self, stream_id: &StreamId, request: ReadStream) -> Result<Vec<RecordedEvent>, ReadError> {
        self.inner.read_stream(stream_id, request).await
    }
    async fn read_all(&self, request: ReadAll) -> Result<Vec<RecordedEvent>, ReadError> {
        self.inner.read_all(request).await
    }
    fn subscribe(&self, request: Subscribe) -> BoxStream<'static, Result<RecordedEvent, ReadError>> {
        self.inner.subscribe(request)
    }
    async fn read_all_stored(&self, request: ReadAll) -> Result<Vec<strata_store::StoredEvent>, ReadError> {
        self.inner.read_all_stored(request).await
    }
    fn subscribe_stored(&self, request: Subscribe) -> BoxStream<'static, Result<strata_store::StoredEvent, ReadError>> {
        self.inner.subscribe_stored(request)
    }
    async fn read_event(&self, event_id: Uuid, form: Form) -> Result<Option<RecordedEvent>, ReadError> {
        self.inner.read_event(event_id, form).await
    }
    async fn stream_head(&self, stream_id: &StreamId) -> Result<Option<StreamHead>, ReadError> {
        self.inner.stream_head(stream_id).await
    }
    async fn stream_heads(&self, after: Option<&StreamId>, limit: usize) -> Result<Vec<StreamHead>, ReadError> {
        self.inner.stream_heads(after, limit).await
    }
    async fn head_position(&self) -> Result<Position, ReadError> {
        self.inner.head_position().await
    }
    async fn categories(&self) -> Result<Vec<String>, ReadError> {
        self.inner.categories().await
    }
    async fn ping(&self) -> Result<(), ReadError> {
        self.inner.ping().await
    }
    fn listener_silence(&self) -> Option<std::time::Duration> {
        self.inner.listener_silence()
    }
    fn backend_name(&self) -> &'static str {
        self.inner.backend_name()
    }
}

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

/// The exposition text. A figure whose source fails is left out (and logged).
pub async fn render(sources: &Sources) -> String {
    let mut out = String::new();
    let m = &sources.metrics;
    let counter = |out: &mut String, name: &str, help: &str, value: u64| {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter\n{name} {value}");
    };
    counter(&mut out, "strata_events_appended_total", "Events appended by this process.", m.events_appended.load(Ordering::Relaxed));
    counter(
        &mut out,
        "strata_append_failures_total",
        "Appends refused or failed in this process.",
        m.append_failures.load(Ordering::Relaxed),
    );
    m.append.render(&mut out, "strata_append_seconds", "Latency of appends by this process.");
    m.graphql.render(&mut out, "strata_graphql_request_seconds", "Latency of GraphQL requests served by this process.");
    counter(
        &mut out,
        "strata_graphql_errors_total",
        "Errors in GraphQL responses of this process.",
        m.graphql_errors.load(Ordering::Relaxed),
    );

    let gauge = |out: &mut String, name: &str, help: &str| {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge");
    };
    let head = match sources.log.head_position().await {
        Ok(head) => {
            gauge(&mut out, "strata_log_head_position", "The highest position in the log.");
            let _ = writeln!(out, "strata_log_head_position {}", head.0);
            Some(head.0)
        }
        Err(error) => {
            tracing::warn!("metrics: reading the log head failed: {error}");
            None
        }
    };
    match sources.checkpoints.load_checkpoint("relay").await {
        Ok(position) => {
            gauge(&mut out, "strata_relay_position", "The last position the relay put on the bus.");
            let _ = writeln!(out, "strata_relay_position {}", position.0);
        }
        Err(error) => tracing::warn!("metrics: reading the relay checkpoint failed: {error}"),
    }
    if let (Some(sink), Some(head)) = (&sources.read_model, head) {
        let (mut lines, mut losses) = (String::new(), String::new());
        for projection in orders::projections() {
            match crate::projections::status(&**sink, &*sources.log, &*projection).await {
                Ok(status) => {
                    let position = status.position;
                    let _ = writeln!(
                        lines,
                        "strata_projection_lag_events{{projection=\"{}\"}} {}",
                        projection.name(),
                        head.saturating_sub(position)
                    );
                    let _ = writeln!(losses, "strata_projection_losses_total{{projection=\"{}\"}} {}", projection.name(), status.losses);
                }
                Err(error) => tracing::warn!(projection = projection.name(), "metrics: reading the projection failed: {error:#}"),
            }
        }
        if !lines.is_empty() {
            gauge(&mut out, "strata_projection_lag_events", "Events in the log the projection has not applied yet.");
            out.push_str(&lines);
            let _ = writeln!(
                out,
                "# HELP strata_projection_losses_total Times the read model was found lost (backend restarted empty, keys evicted) and rebuilt from the log.\n# TYPE strata_projection_losses_total counter"
            );
            out.push_str(&losses);
        }
    }
    match strata_sagas::count_in_flight(&*sources.log, &*sources.checkpoints, strata_sagas::fulfilment::CATEGORY).await {
        Ok(counts) => {
            gauge(&mut out, "strata_sagas", "Fulfilment sagas in flight, by state (stuck: parked until an operator resumes them).");
            let _ = writeln!(
                out,
                "strata_sagas{{state=\"running\"}} {}\nstrata_sagas{{state=\"compensating\"}} {}\nstrata_sagas{{state=\"stuck\"}} {}",
                counts.running, counts.compensating, counts.stuck
            );
        }
        Err(error) => tracing::warn!("metrics: counting sagas failed: {error}"),
    }
    out
}
