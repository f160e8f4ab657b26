//! `/healthz` and `/readyz`, served in-process on port 0, and by the real
//! binary over TCP with a graceful SIGTERM.

use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use strata_api::backend::{registry, EventStoreBackend};
use strata_api::http::{run, AppState};
use strata_store::MemoryEventStore;
use tokio::net::TcpListener;
use tokio::sync::oneshot;

use crate::support::{TestDatabase, get, scratch_sqlite, strata};

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
    let (address, stop, server) = serve(AppState { event_store: Arc::new(store), read_model: Some(read_model) }).await;
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_reports_unavailable_when_postgres_goes_away() {
    let Some(database) = TestDatabase::create().await else { return };
    let (url, name) = (database.url.clone(), database.name.clone());
    let backend = EventStoreBackend::open(&url, registry().unwrap()).await.unwrap();
    backend.migrate().await.unwrap();
    let (address, stop, server) = serve(AppState { event_store: backend.store(), read_model: None }).await;
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
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
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
