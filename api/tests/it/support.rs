//! Helpers: a raw HTTP GET, the binary, scratch SQLite files; PostgreSQL
//! databases come from `strata_store::testkit`.

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// `GET path` over a fresh TCP connection: (status, body).
pub async fn get(address: SocketAddr, path: &str) -> (u16, String) {
    let mut stream = tokio::net::TcpStream::connect(address).await.expect("connect");
    let request = format!("GET {path} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP response: {response:?}"));
    let body = response.split_once("\r\n\r\n").map(|(_, body)| body.to_owned()).unwrap_or_default();
    (status, body)
}

pub fn strata() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_strata"));
    command
        .env_remove("STRATA_EVENT_STORE")
        .env_remove("STRATA_LISTEN")
        .env_remove("STRATA_BUS")
        .env_remove("STRATA_READ_MODEL")
        .env_remove("STRATA_ROLES")
        .env_remove("STRATA_SAGA_STEP_DEADLINE")
        .env_remove("STRATA_TOKENS")
        .env_remove("STRATA_DEV")
        .env_remove("STRATA_JWT_SECRET")
        .env_remove("STRATA_JWT_JWKS")
        .env_remove("STRATA_JWT_ISSUER")
        .env_remove("STRATA_JWT_AUDIENCE")
        .env_remove("STRATA_JWT_ROLE_CLAIM")
        .env_remove("STRATA_CHAIN_KEY")
        .env_remove("STRATA_CHAIN_KEY_RETIRED")
        .env("RUST_LOG", "warn");
    command
}

pub fn run_ok(command: &mut Command) -> Output {
    let output = command.output().expect("run strata");
    assert!(
        output.status.success(),
        "strata failed: {}\nstdout: {}\nstderr: {}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

/// `strata audit invariants` on the log at `event_store`, with the saga
/// step deadline the run used: `Ok` with the report when every invariant
/// holds, else `Err` with what it printed (stderr too: an audit that could
/// not run says why there).
pub fn invariants(event_store: &str, step_deadline: &str) -> Result<String, String> {
    let output = strata()
        .args(["audit", "invariants"])
        .env("STRATA_EVENT_STORE", event_store)
        .env("STRATA_SAGA_STEP_DEADLINE", step_deadline)
        .output()
        .expect("run strata audit invariants");
    let report = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    if output.status.success() && report.contains("every invariant holds") {
        Ok(report)
    } else {
        Err(report)
    }
}

pub struct ScratchSqlite {
    pub dir: tempfile::TempDir,
    pub url: String,
}

pub fn scratch_sqlite() -> ScratchSqlite {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("strata.db").display());
    ScratchSqlite { dir, url }
}

pub use strata_store::testkit::postgres::TestDatabase;

/// The tests that start many `strata` processes (kill, saga chaos, replicas,
/// topology, traces) take turns: each process has its own PostgreSQL pool,
/// and two such tests at once exhaust the server's connections.
pub static MANY_PROCESSES: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A `strata serve` process with some roles, its log appended to a file,
/// that a test can SIGKILL and start again.
pub struct Role {
    pub name: &'static str,
    pub env: Vec<(&'static str, String)>,
    pub log: std::path::PathBuf,
    pub child: Option<Child>,
    pub starts: usize,
}

impl Role {
    pub fn start(&mut self) {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&self.log).unwrap();
        let mut command = Command::new(env!("CARGO_BIN_EXE_strata"));
        command
            .arg("serve")
            .env_remove("STRATA_LISTEN")
            .env("RUST_LOG", "info,sqlx=warn")
            .env("STRATA_ROLES", self.name)
            .stdout(Stdio::null())
            .stderr(log);
        for (key, value) in &self.env {
            command.env(key, value);
        }
        self.child = Some(command.spawn().expect("start strata"));
        self.starts += 1;
    }

    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().expect("SIGKILL"); // std's kill is SIGKILL on unix
            child.wait().unwrap();
        }
    }

    pub fn alive(&mut self) -> bool {
        self.child.as_mut().is_some_and(|c| c.try_wait().unwrap().is_none())
    }
}

impl Drop for Role {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The last 30 lines of a log file.
pub fn tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(30)..].join("\n")
}

/// A server on a port of its own, with the tokens it prints (development
/// tokens) or was given: a `strata serve` process ([`Server::start`], for
/// tests of the binary and of processes killed), or the application built
/// in this test process ([`Server::spawn_app`]).
pub struct Server {
    running: Running,
    pub address: SocketAddr,
    /// Where `/metrics` is served, when `STRATA_METRICS_LISTEN` moved it.
    pub metrics_address: Option<SocketAddr>,
    pub tokens: std::collections::HashMap<String, String>,
    http: reqwest::Client,
}

impl Server {
    /// Starts `command` (a `strata()` with its environment) on port 0 and
    /// reads its stdout up to the listening line; the rest is drained.
    pub fn start(mut command: Command) -> Self {
        use std::io::BufRead;
        let mut child = command.arg("serve").env("STRATA_LISTEN", "127.0.0.1:0").stdout(Stdio::piped()).spawn().expect("start strata");
        let mut lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
        let mut tokens = std::collections::HashMap::new();
        let mut metrics_address = None;
        let address = loop {
            let Some(Ok(line)) = lines.next() else {
                let status = child.wait().unwrap();
                panic!("strata serve exited ({status}) before listening");
            };
            if let Some((role, token)) = line.strip_prefix("token ").and_then(|rest| rest.split_once(": ")) {
                tokens.insert(role.to_owned(), token.to_owned());
            }
            if let Some(rest) = line.strip_prefix("strata metrics on http://") {
                metrics_address = rest.split('/').next().and_then(|a| a.parse().ok());
                continue;
            }
            // The api: "listening on http://…"; a worker role: "health and metrics on http://…)".
            if let Some(rest) = line.split("listening on http://").nth(1).or_else(|| line.split("metrics on http://").nth(1)) {
                break rest
                    .split_whitespace()
                    .next()
                    .and_then(|a| a.trim_end_matches(')').parse().ok())
                    .unwrap_or_else(|| panic!("no address in {line:?}"));
            }
        };
        std::thread::spawn(move || lines.for_each(drop));
        Self { running: Running::Process(child), address, metrics_address, tokens, http: client() }
    }

    /// Builds the application from `overrides` (listening on
    /// `127.0.0.1:0`) in this process, as `strata serve` would, and serves
    /// it until the server is dropped.
    pub async fn spawn_app(overrides: strata_api::config::Overrides) -> Self {
        let overrides = strata_api::config::Overrides { listen: Some("127.0.0.1:0".into()), ..overrides };
        let settings = strata_api::config::Settings::resolve(&overrides).expect("valid settings");
        let app = strata_api::app::Application::build(&settings).await.expect("the application starts");
        let address = app.address().expect("the application listens");
        let metrics_address = app.metrics_address();
        let store = app.event_store();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let served = tokio::spawn(app.run_until_stopped(async move {
            let _ = stopped.await;
        }));
        let running = Running::InProcess { stop: Some(stop), served: Some(served), store };
        Self { running, address, metrics_address, tokens: std::collections::HashMap::new(), http: client() }
    }

    /// Stops the server and waits until it has: the process killed, or the
    /// application's serving and workers ended (before a test drops the
    /// backends they write to).
    pub async fn stop(mut self) {
        if let Running::InProcess { stop, served, .. } = &mut self.running {
            if let (Some(stop), Some(served)) = (stop.take(), served.take()) {
                let _ = stop.send(());
                let ended = tokio::time::timeout(std::time::Duration::from_secs(30), served).await;
                ended.expect("the application stops within 30 s").expect("the application's task").expect("the application ran");
            }
        }
    }

    /// The pid of the `strata serve` process (panics for an application in process).
    pub fn pid(&self) -> u32 {
        match &self.running {
            Running::Process(child) => child.id(),
            Running::InProcess { .. } => panic!("this server runs in the test process"),
        }
    }

    /// The `strata serve` process (panics for an application in process).
    pub fn child(&mut self) -> &mut Child {
        match &mut self.running {
            Running::Process(child) => child,
            Running::InProcess { .. } => panic!("this server runs in the test process"),
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.address)
    }

    pub fn token(&self, role: &str) -> &str {
        self.tokens.get(role).unwrap_or_else(|| panic!("no {role} token"))
    }

    /// POST /graphql with `token` (None: no Authorization header).
    pub async fn graphql(&self, token: Option<&str>, query: &str, variables: serde_json::Value) -> (u16, serde_json::Value) {
        let body = serde_json::json!({ "query": query, "variables": variables });
        self.post(token, "application/json", body.to_string().into_bytes()).await
    }

    /// POST /graphql with a raw body.
    pub async fn post(&self, token: Option<&str>, content_type: &str, body: Vec<u8>) -> (u16, serde_json::Value) {
        let mut request = self.http.post(format!("{}/graphql", self.url())).header("content-type", content_type).body(body);
        if let Some(token) = token {
            request = request.header("authorization", format!("Bearer {token}"));
        }
        let response = request.send().await.expect("POST /graphql");
        let status = response.status().as_u16();
        let text = response.text().await.unwrap();
        let body = serde_json::from_str(&text).unwrap_or_else(|_| panic!("HTTP {status}: not JSON: {text:?}"));
        (status, body)
    }

    /// The `data` of an operation that must succeed.
    pub async fn ok(&self, role: &str, query: &str, variables: serde_json::Value) -> serde_json::Value {
        let (status, body) = self.graphql(Some(self.token(role)), query, variables).await;
        assert!(status == 200 && body.get("errors").is_none(), "{query}: HTTP {status} {body}");
        body["data"].clone()
    }

    /// The `extensions.code` of an operation that must fail.
    pub async fn code(&self, role: &str, query: &str, variables: serde_json::Value) -> String {
        let (status, body) = self.graphql(Some(self.token(role)), query, variables).await;
        assert_eq!(status, 200, "{body}");
        body["errors"][0]["extensions"]["code"].as_str().unwrap_or_else(|| panic!("{query}: no error code in {body}")).to_owned()
    }

    /// The log's head position: read through `/metrics` from a process;
    /// from the store of an application in process (whose `/metrics` also
    /// counts the other applications of the test binary: the `metrics`
    /// facade has one recorder per process).
    pub async fn head(&self) -> u64 {
        if let Running::InProcess { store, .. } = &self.running {
            return store.head_position().await.expect("the log's head").0;
        }
        let (status, body) = get(self.address, "/metrics").await;
        assert_eq!(status, 200);
        body.lines()
            .find_map(|line| line.strip_prefix("strata_log_head_position "))
            .and_then(|value| value.trim().parse().ok())
            .unwrap_or_else(|| panic!("no head position in /metrics"))
    }
}

/// How a [`Server`] runs.
enum Running {
    Process(Child),
    InProcess {
        stop: Option<tokio::sync::oneshot::Sender<()>>,
        served: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
        store: std::sync::Arc<dyn strata_store::EventStore>,
    },
}

/// One connection per request: the server closes a connection after
/// answering a request whose body it did not read (a refused or malformed
/// one), and a pooled client that reused it right then got
/// `IncompleteMessage` (the fuzz test, twice in CI).
fn client() -> reqwest::Client {
    reqwest::Client::builder().pool_max_idle_per_host(0).build().expect("an HTTP client")
}

impl Drop for Server {
    fn drop(&mut self) {
        match &mut self.running {
            Running::Process(child) => {
                let _ = child.kill();
                let _ = child.wait();
            }
            // Stops serving, then the workers (or the test's runtime ends first).
            Running::InProcess { stop, .. } => {
                if let Some(stop) = stop.take() {
                    let _ = stop.send(());
                }
            }
        }
    }
}

/// Removes what a distributed test made under `id`: its JetStream stream
/// (`TEST_<id>`) and, given Redis, its key prefix (`test_<id>`).
#[cfg(feature = "nats")]
pub async fn drop_scratch_backends(nats: &str, redis: Option<&str>, id: &str) {
    let client = async_nats::connect(nats).await.unwrap();
    let _ = async_nats::jetstream::new(client).delete_stream(format!("TEST_{id}")).await;
    if let Some(redis) = redis {
        drop_scratch_redis(redis, id).await;
    }
}

/// Removes the Redis keys of a distributed test (prefix `test_<id>`).
pub async fn drop_scratch_redis(redis: &str, id: &str) {
    #[cfg(feature = "redis")]
    {
        let config =
            strata_projections::RedisSinkConfig { key_prefix: format!("test_{id}"), ..strata_projections::RedisSinkConfig::new(redis) };
        strata_projections::RedisSink::connect(config).await.unwrap().delete_all().await.unwrap();
    }
    #[cfg(not(feature = "redis"))]
    let _ = (redis, id);
}

/// Drops the MongoDB database of a distributed test.
pub async fn drop_scratch_mongo(url: &str) {
    #[cfg(feature = "mongo")]
    strata_projections::MongoSink::connect(strata_projections::MongoSinkConfig::new(url)).await.unwrap().drop_database().await.unwrap();
    #[cfg(not(feature = "mongo"))]
    let _ = url;
}

/// A memory sink that counts the reads made of it: `load` (stream versions
/// and documents of a batch, what `waitFor` and the DataLoader use) and
/// single `document` reads.
#[derive(Default)]
pub struct CountingSink {
    pub inner: strata_projections::MemorySink,
    pub loads: std::sync::atomic::AtomicUsize,
    pub documents: std::sync::atomic::AtomicUsize,
}

mod counting {
    use std::sync::atomic::Ordering;

    use async_trait::async_trait;
    use strata_projections::sink::{
        Batch, ChangeFeed, Committed, DeadLetter, Dump, GenerationStats, IndexEntry, Loaded, Meta, MetaField, Target,
    };
    use strata_projections::{Document, ReadModelSink, SinkError};

    use super::CountingSink;

    #[async_trait]
    impl ReadModelSink for CountingSink {
        fn backend_name(&self) -> &'static str {
            "counting"
        }
        async fn ping(&self) -> Result<(), SinkError> {
            self.inner.ping().await
        }
        async fn live_generation(&self, projection: &str) -> Result<Option<u64>, SinkError> {
            self.inner.live_generation(projection).await
        }
        async fn new_generation(&self, projection: &str) -> Result<u64, SinkError> {
            self.inner.new_generation(projection).await
        }
        async fn switch_live(&self, projection: &str, generation: u64) -> Result<bool, SinkError> {
            self.inner.switch_live(projection, generation).await
        }
        async fn init_live(&self, projection: &str, generation: u64) -> Result<u64, SinkError> {
            self.inner.init_live(projection, generation).await
        }
        async fn drop_generation(&self, target: &Target) -> Result<(), SinkError> {
            self.inner.drop_generation(target).await
        }
        async fn load(&self, target: &Target, streams: &[String], documents: &[String]) -> Result<Loaded, SinkError> {
            self.loads.fetch_add(1, Ordering::SeqCst);
            self.inner.load(target, streams, documents).await
        }
        async fn commit(&self, target: &Target, batch: &Batch) -> Result<Committed, SinkError> {
            self.inner.commit(target, batch).await
        }
        async fn document(&self, projection: &str, key: &str) -> Result<Option<Document>, SinkError> {
            self.documents.fetch_add(1, Ordering::SeqCst);
            self.inner.document(projection, key).await
        }
        async fn page(&self, projection: &str, index: &str, after: Option<i64>, limit: usize) -> Result<Vec<IndexEntry>, SinkError> {
            self.inner.page(projection, index, after, limit).await
        }
        async fn stats(&self, target: &Target) -> Result<GenerationStats, SinkError> {
            self.inner.stats(target).await
        }
        async fn dead_letters(&self, target: &Target, limit: usize) -> Result<Vec<DeadLetter>, SinkError> {
            self.inner.dead_letters(target, limit).await
        }
        async fn meta(&self, projection: &str) -> Result<Meta, SinkError> {
            self.inner.meta(projection).await
        }
        async fn set_meta(&self, projection: &str, field: MetaField, value: Option<String>) -> Result<(), SinkError> {
            self.inner.set_meta(projection, field, value).await
        }
        async fn dump(&self, target: &Target) -> Result<Dump, SinkError> {
            self.inner.dump(target).await
        }
        async fn changes(&self) -> Result<Option<ChangeFeed>, SinkError> {
            self.inner.changes().await
        }
    }
}
