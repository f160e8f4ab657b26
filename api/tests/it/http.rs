//! `/healthz`, `/readyz` and `/metrics`, served in-process on port 0, and by
//! the real binary over TCP with a graceful SIGTERM.

use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use strata_api::backend::{registry, EventStoreBackend};
use strata_api::http::{run, AppState};
use strata_store::testkit::wait_until;
use strata_store::MemoryEventStore;
use tokio::net::TcpListener;
use tokio::sync::oneshot;

use crate::support::{get, scratch_sqlite, strata, TestDatabase};

/// A fulfilment saga `n` that started and did nothing more (in flight).
fn saga_started(n: u128) -> strata_store::StreamAppend {
    use strata_schemas::DomainEvent;
    let started = strata_schemas::events::SagaEvent::from(strata_schemas::events::SagaStarted {
        saga_id: uuid::Uuid::from_u128(n),
        data: serde_json::json!({}),
        started_at: chrono::Utc::now(),
    });
    let event = strata_store::NewEvent {
        event_id: uuid::Uuid::new_v4(),
        event_type: started.event_type().into(),
        schema_version: started.schema_version(),
        payload: started.to_payload(),
        metadata: Default::default(),
    };
    let stream_id = strata_store::StreamId::new("fulfilment", uuid::Uuid::from_u128(n)).unwrap();
    strata_store::StreamAppend { stream_id, expected: strata_store::ExpectedVersion::NoStream, events: vec![event] }
}

async fn serve(state: AppState) -> (std::net::SocketAddr, oneshot::Sender<()>, tokio::task::JoinHandle<std::io::Result<()>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    let server = tokio::spawn(run(listener, state, async move {
        let _ = stopped.await;
    }));
    (address, stop, server)
}

#[tokio::test]
async fn healthz_and_readyz_answer_when_the_store_is_up() {
    let store = MemoryEventStore::new(registry().unwrap());
    let read_model = Arc::new(strata_projections::MemorySink::new());
    let store = Arc::new(store);
    let state = AppState {
        event_store: store.clone(),
        read_model: Some(read_model),
        checkpoints: store,
        metrics: Default::default(),
        graphql: None,
        bus: None,
        workers: None,
    };
    let (address, stop, server) = serve(state).await;
    let (status, body) = get(address, "/healthz").await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = get(address, "/readyz").await;
    assert_eq!(status, 200, "{body}");
    let body: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(body["checks"]["event_store"]["status"], "up");
    assert_eq!(body["checks"]["read_model"], serde_json::json!({"backend": "memory", "status": "up"}));
    assert_eq!(get(address, "/nope").await.0, 404);
    stop.send(()).unwrap();
    server.await.unwrap().unwrap();
}

#[tokio::test]
async fn metrics_count_this_process_appends_and_read_positions_lag_and_sagas_from_the_backends() {
    use strata_api::metrics::{MeteredStore, Metrics};
    use strata_store::{CheckpointStore, EventStore};
    let store = Arc::new(MemoryEventStore::new(registry().unwrap()));
    let metrics = Arc::new(Metrics::default());
    let metered: Arc<dyn EventStore> = Arc::new(MeteredStore::new(store.clone(), metrics.clone()));
    // Three orders and a fulfilment saga stuck half-way, through the metered store.
    let appends = strata_projections::orders::sample::sample(strata_projections::orders::sample::SampleConfig {
        seed: 3,
        orders: 3,
        ..Default::default()
    });
    let events: usize = appends.iter().map(|a| a.events.len()).sum();
    for request in strata_projections::orders::sample::requests(appends, 8) {
        metered.append(request).await.unwrap();
    }
    metered.append(vec![saga_started(9)]).await.unwrap();
    store.save_checkpoint("relay", strata_store::Position(2)).await.unwrap();
    let read_model = Arc::new(strata_projections::MemorySink::new());
    for projection in strata_projections::orders::projections() {
        strata_projections::rebuild(projection, read_model.clone(), store.clone(), Default::default(), &mut |_| {}).await.unwrap();
    }
    let head = events + 1;

    let state = AppState {
        event_store: metered,
        read_model: Some(read_model),
        checkpoints: store,
        metrics: metrics.clone(),
        graphql: None,
        bus: None,
        workers: None,
    };
    let (address, stop, server) = serve(state).await;
    let (status, body) = get(address, "/metrics").await;
    assert_eq!(status, 200, "{body}");
    let value = |line: &str| {
        body.lines().find_map(|l| l.strip_prefix(line).map(str::trim).map(str::to_owned)).unwrap_or_else(|| panic!("no {line} in\n{body}"))
    };
    assert_eq!(value("strata_events_appended_total "), head.to_string());
    assert_eq!(value("strata_log_head_position "), head.to_string());
    assert_eq!(value("strata_relay_position "), "2");
    assert_eq!(value("strata_append_seconds_count "), value("strata_append_seconds_bucket{le=\"+Inf\"} "));
    assert_eq!(value("strata_projection_lag_events{projection=\"orders\"} "), "0", "built up to the head");
    assert_eq!(value("strata_projection_lag_seconds{projection=\"orders\"} "), "0", "nothing unapplied");
    assert_eq!(value("strata_projection_rebuild_events{projection=\"orders\",kind=\"total\"} "), "0", "no rebuild runs");
    assert_eq!(value("strata_sagas{state=\"running\"} "), "1");
    assert_eq!(value("strata_sagas{state=\"compensating\"} "), "0");
    assert!(body.contains("# TYPE strata_append_seconds histogram"), "{body}");
    assert!(body.contains("# HELP strata_events_appended_total Events appended by this process."), "{body}");
    let resident: f64 = value("process_resident_memory_bytes ").parse().unwrap();
    assert!(resident > 1e6, "{body}");
    assert!(value("process_open_fds ").parse::<f64>().unwrap() >= 3.0, "{body}");
    // GraphQL errors are counted by code.
    metrics.observe_graphql(std::time::Instant::now(), ["VALIDATION", "FORBIDDEN", "VALIDATION"]);
    let (_, body) = get(address, "/metrics").await;
    assert!(body.contains("strata_graphql_errors_total{code=\"VALIDATION\"} 2"), "{body}");
    assert!(body.contains("strata_graphql_errors_total{code=\"FORBIDDEN\"} 1"), "{body}");
    stop.send(()).unwrap();
    server.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_reports_unavailable_when_postgres_goes_away() {
    let Some(database) = TestDatabase::create().await else { return };
    let (url, name) = (database.url.clone(), database.name.clone());
    let backend = EventStoreBackend::open(&url, registry().unwrap(), Default::default(), None).await.unwrap();
    backend.migrate().await.unwrap();
    let state = AppState {
        event_store: backend.store(),
        read_model: None,
        checkpoints: backend.checkpoints(),
        metrics: Default::default(),
        graphql: None,
        bus: None,
        workers: None,
    };
    let (address, stop, server) = serve(state).await;
    assert_eq!(get(address, "/readyz").await.0, 200);
    database.drop_database().await;
    let (status, body) = get(address, "/readyz").await;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("\"down\""), "{body}");
    assert!(!body.contains(&name), "readyz leaked backend detail: {body}");
    assert_eq!(get(address, "/healthz").await.0, 200, "the process is still up");
    stop.send(()).unwrap();
    server.await.unwrap().unwrap();
}

#[test]
fn the_binary_serves_on_the_embedded_default_and_stops_on_sigterm() {
    let scratch = scratch_sqlite();
    let mut child = strata()
        .current_dir(scratch.dir.path())
        .env("STRATA_LISTEN", "127.0.0.1:0")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let line = lines.by_ref().map_while(Result::ok).find(|line| line.contains("listening on")).expect("a listening line");
    let address: std::net::SocketAddr = line
        .split("http://")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|address| address.parse().ok())
        .unwrap_or_else(|| panic!("no address in {line:?}"));
    assert!(line.contains("sqlite"), "{line}");
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let (status, body) = runtime.block_on(get(address, "/readyz"));
    assert_eq!(status, 200, "{body}");
    assert!(scratch.dir.path().join("strata.db").exists(), "the default sqlite://strata.db was not created");
    let pid = child.id().to_string();
    assert!(std::process::Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            assert!(status.success(), "exit after SIGTERM: {status}");
            break;
        }
        assert!(std::time::Instant::now() < deadline, "strata did not stop after SIGTERM");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A bare state over an in-memory store, served within `bounds`.
async fn serve_bounded(bounds: strata_api::http::ServerBounds) -> std::net::SocketAddr {
    let store = Arc::new(MemoryEventStore::new(registry().unwrap()));
    let state = AppState {
        event_store: store.clone(),
        read_model: Some(Arc::new(strata_projections::MemorySink::new())),
        checkpoints: store,
        metrics: Default::default(),
        graphql: None,
        bus: None,
        workers: None,
    };
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(strata_api::http::serve(listener, state, bounds, std::future::pending()));
    address
}

/// Waits until the server ends `stream` (EOF, a reset, or an answer such as
/// 408 before it closes); panics if it stays open past `deadline`.
async fn ended_by_the_server(stream: &mut tokio::net::TcpStream, deadline: tokio::time::Instant) {
    use tokio::io::AsyncReadExt;
    let mut buffer = [0u8; 1024];
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buffer)).await {
            Err(_) => panic!("the server kept a slow connection open"),
            Ok(Ok(0) | Err(_)) => return,
            Ok(Ok(_)) => continue,
        }
    }
}

/// Slow-loris: 86e7a2f kept 2,000 half-sent requests open for good (axum's
/// `serve` has no header timeout). Now each is closed once the header
/// timeout passed, while normal requests answer beside them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_sent_requests_are_closed_at_the_header_timeout_while_others_answer() {
    use tokio::io::AsyncWriteExt;
    let bounds = strata_api::http::ServerBounds { header_timeout: Duration::from_secs(1), ..Default::default() };
    let address = serve_bounded(bounds).await;
    let mut slow = Vec::new();
    for i in 0..2_000 {
        let mut stream = tokio::net::TcpStream::connect(address).await.unwrap();
        // Half the headers, or nothing at all.
        if i % 2 == 0 {
            stream.write_all(b"POST /graphql HTTP/1.1\r\nHost: strata\r\nContent-Ty").await.unwrap();
        }
        slow.push(stream);
    }
    for _ in 0..20 {
        assert_eq!(get(address, "/healthz").await.0, 200, "a normal request beside 2,000 slow ones");
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    for stream in &mut slow {
        ended_by_the_server(stream, deadline).await;
    }
    assert_eq!(get(address, "/healthz").await.0, 200);
}

/// Past `max_connections` a connection is closed as soon as it is accepted;
/// a place that frees up is taken again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_past_the_cap_is_closed_at_once() {
    let bounds = strata_api::http::ServerBounds { max_connections: 5, header_timeout: Duration::from_secs(60), ..Default::default() };
    let address = serve_bounded(bounds).await;
    let mut held = Vec::new();
    for _ in 0..5 {
        held.push(tokio::net::TcpStream::connect(address).await.unwrap());
    }
    let mut extra = tokio::net::TcpStream::connect(address).await.unwrap();
    ended_by_the_server(&mut extra, tokio::time::Instant::now() + Duration::from_secs(10)).await;
    drop(held.pop());
    strata_store::testkit::wait_until(Duration::from_secs(10), || async {
        let mut stream = tokio::net::TcpStream::connect(address).await.map_err(|e| e.to_string())?;
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        stream.write_all(b"GET /healthz HTTP/1.1\r\nHost: strata\r\nConnection: close\r\n\r\n").await.map_err(|e| e.to_string())?;
        let mut answer = String::new();
        let _ = stream.read_to_string(&mut answer).await;
        if answer.starts_with("HTTP/1.1 200") {
            Ok(())
        } else {
            Err(format!("answered {answer:?}"))
        }
    })
    .await;
}

/// The log, counting the reads of the sagas' category (what counting the
/// sagas in flight costs).
struct CountingLog {
    inner: Arc<MemoryEventStore>,
    saga_reads: std::sync::atomic::AtomicUsize,
    head_reads: std::sync::atomic::AtomicUsize,
    /// When set, reading the head waits for a permit.
    head_gate: Option<Arc<tokio::sync::Semaphore>>,
}

impl CountingLog {
    fn over(inner: Arc<MemoryEventStore>, head_gate: Option<Arc<tokio::sync::Semaphore>>) -> Self {
        Self { inner, saga_reads: Default::default(), head_reads: Default::default(), head_gate }
    }
}

#[async_trait::async_trait]
impl strata_store::EventReader for CountingLog {
    async fn read_stream(
        &self,
        stream_id: &strata_store::StreamId,
        request: strata_store::ReadStream,
    ) -> Result<Vec<strata_store::RecordedEvent>, strata_store::ReadError> {
        self.inner.read_stream(stream_id, request).await
    }
    async fn read_all(&self, request: strata_store::ReadAll) -> Result<Vec<strata_store::RecordedEvent>, strata_store::ReadError> {
        if request.category.as_deref() == Some(strata_sagas::fulfilment::CATEGORY) {
            self.saga_reads.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
        self.inner.read_all(request).await
    }
    fn subscribe(
        &self,
        request: strata_store::Subscribe,
    ) -> futures_util::stream::BoxStream<'static, Result<strata_store::RecordedEvent, strata_store::ReadError>> {
        self.inner.subscribe(request)
    }
    async fn read_event(
        &self,
        event_id: uuid::Uuid,
        form: strata_store::Form,
    ) -> Result<Option<strata_store::RecordedEvent>, strata_store::ReadError> {
        self.inner.read_event(event_id, form).await
    }
    async fn stream_head(&self, stream_id: &strata_store::StreamId) -> Result<Option<strata_store::StreamHead>, strata_store::ReadError> {
        self.inner.stream_head(stream_id).await
    }
    async fn stream_heads(
        &self,
        after: Option<&strata_store::StreamId>,
        limit: usize,
    ) -> Result<Vec<strata_store::StreamHead>, strata_store::ReadError> {
        self.inner.stream_heads(after, limit).await
    }
    async fn head_position(&self) -> Result<strata_store::Position, strata_store::ReadError> {
        self.head_reads.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        if let Some(gate) = &self.head_gate {
            gate.acquire().await.expect("the gate stays open").forget();
        }
        self.inner.head_position().await
    }
    async fn categories(&self) -> Result<Vec<String>, strata_store::ReadError> {
        self.inner.categories().await
    }
    async fn log_identity(&self) -> Result<strata_store::LogIdentity, strata_store::ReadError> {
        self.inner.log_identity().await
    }
    async fn ping(&self) -> Result<(), strata_store::ReadError> {
        self.inner.ping().await
    }
    fn backend_name(&self) -> &'static str {
        "counting"
    }
}

/// Counting the sagas in flight reads every saga event since the oldest in
/// flight: a flood of scrapes counts them once per `SAGA_COUNT_FOR`, not
/// once per scrape (before, each scrape did).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_scrapes_counts_the_sagas_in_flight_once() {
    use strata_api::metrics::{render, Metrics, Sources};
    let store = Arc::new(MemoryEventStore::new(registry().unwrap()));
    for n in 0..3 {
        strata_store::EventStore::append(&*store, vec![saga_started(n)]).await.unwrap();
    }
    let sources =
        |log: Arc<CountingLog>| Sources { log, checkpoints: store.clone(), read_model: None, metrics: Arc::new(Metrics::default()) };
    // What one count reads.
    let once = Arc::new(CountingLog::over(store.clone(), None));
    let text = render(&sources(once.clone())).await;
    assert!(text.contains("strata_sagas{state=\"running\"} 3"), "{text}");
    let per_count = once.saga_reads.load(std::sync::atomic::Ordering::SeqCst);
    assert!(per_count >= 1);
    // A hundred scrapes at once.
    let flooded = Arc::new(CountingLog::over(store.clone(), None));
    let sources = sources(flooded.clone());
    let texts = futures_util::future::join_all((0..100).map(|_| render(&sources))).await;
    assert!(texts.iter().all(|text| text.contains("strata_sagas{state=\"running\"} 3")));
    assert_eq!(flooded.saga_reads.load(std::sync::atomic::Ordering::SeqCst), per_count, "the sagas were counted more than once");
}

/// Scrapes that arrive while a render runs share the next one, never one
/// that started before they arrived: a hundred at once read the log head
/// twice, and a scrape after an append sees it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_scrapes_share_one_render_that_started_after_they_arrived() {
    use std::sync::atomic::Ordering::SeqCst;
    use strata_api::metrics::{render, Metrics, Sources};
    let store = Arc::new(MemoryEventStore::new(registry().unwrap()));
    strata_store::EventStore::append(&*store, vec![saga_started(1)]).await.unwrap();
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let log = Arc::new(CountingLog::over(store.clone(), Some(gate.clone())));
    let sources = Sources { log: log.clone(), checkpoints: store.clone(), read_model: None, metrics: Arc::new(Metrics::default()) };
    // The first scrape's render waits in its head read; the other 99 arrive
    // meanwhile (one poll each), then the gate opens.
    let opener = tokio::spawn({
        let (log, gate) = (log.clone(), gate.clone());
        async move {
            wait_until(Duration::from_secs(10), || {
                let reads = log.head_reads.load(SeqCst);
                async move {
                    if reads >= 1 {
                        Ok(())
                    } else {
                        Err(reads)
                    }
                }
            })
            .await;
            gate.add_permits(1_000);
        }
    });
    let texts = futures_util::future::join_all((0..100).map(|_| render(&sources))).await;
    opener.await.unwrap();
    assert!(texts.iter().all(|text| text.contains("strata_log_head_position 1")), "{}", texts[0]);
    assert_eq!(log.head_reads.load(SeqCst), 2, "the one that was running, then one for everyone who arrived during it");
    strata_store::EventStore::append(&*store, vec![saga_started(2)]).await.unwrap();
    let after = render(&sources).await;
    assert!(after.contains("strata_log_head_position 2"), "a scrape after an append sees it: {after}");
    assert_eq!(log.head_reads.load(SeqCst), 3);
}

/// The composition root in process: `Application::build` on a scratch
/// SQLite log and port 0, a write and a read through its GraphQL, and a
/// clean stop when the shutdown future resolves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_application_builds_in_process_serves_graphql_and_stops() {
    use strata_api::app::Application;
    use strata_api::config::{Overrides, Settings};
    let scratch = scratch_sqlite();
    let overrides = Overrides {
        event_store: Some(scratch.url.clone()),
        listen: Some("127.0.0.1:0".into()),
        tokens: Some("operator:app-test-operator-token-01".into()),
        ..Overrides::default()
    };
    let settings = Settings::resolve(&overrides).unwrap();
    let app = Application::build(&settings).await.unwrap();
    let address = app.address().expect("the api role listens");
    assert_eq!(app.metrics_address(), None);
    let (stop, stopped) = oneshot::channel::<()>();
    let running = tokio::spawn(app.run_until_stopped(async move {
        let _ = stopped.await;
    }));
    let graphql = |query: &'static str, variables: serde_json::Value| async move {
        let response = reqwest::Client::new()
            .post(format!("http://{address}/graphql"))
            .bearer_auth("app-test-operator-token-01")
            .json(&serde_json::json!({ "query": query, "variables": variables }))
            .send()
            .await
            .unwrap();
        let body: serde_json::Value = response.json().await.unwrap();
        assert!(body.get("errors").is_none(), "{body}");
        body["data"].clone()
    };
    let written = graphql(crate::graphql::RESTOCK, serde_json::json!({ "sku": "SKU-APP-1", "quantity": 7 })).await;
    let token = written["restock"]["consistencyToken"].clone();
    let read = graphql(
        "query($sku: String!, $t: String) { stock(sku: $sku, waitFor: $t) { available } }",
        serde_json::json!({ "sku": "SKU-APP-1", "t": token }),
    )
    .await;
    assert_eq!(read["stock"]["available"], 7, "{read}");
    stop.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(30), running).await.expect("stops once asked").unwrap().unwrap();
}

/// `STRATA_METRICS_LISTEN` moves `/metrics` to an address of its own (to
/// be firewalled apart from the API): the API's address answers it 404.
#[tokio::test]
async fn metrics_listen_serves_metrics_on_their_own_address_only() {
    let scratch = scratch_sqlite();
    let server = crate::support::Server::spawn_app(strata_api::config::Overrides {
        event_store: Some(scratch.url.clone()),
        metrics_listen: Some("127.0.0.1:0".into()),
        ..Default::default()
    })
    .await;
    let metrics = server.metrics_address.expect("the metrics address is printed");
    let (status, body) = get(metrics, "/metrics").await;
    assert_eq!(status, 200);
    assert!(body.contains("strata_build_info"), "{body}");
    assert_eq!(get(metrics, "/healthz").await.0, 200);
    assert_eq!(get(metrics, "/graphql").await.0, 404, "the metrics address serves no API");
    assert_eq!(get(server.address, "/metrics").await.0, 404, "the API address no longer serves metrics");
    assert_eq!(get(server.address, "/healthz").await.0, 200);
}
