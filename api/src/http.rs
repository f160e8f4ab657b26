//! The HTTP surface for now: `GET /healthz` (the process is up),
//! `GET /readyz` (the event store and, when this process has them, the read
//! models answer) and `GET /metrics` (Prometheus, see [`crate::metrics`]). Built by [`router`] so tests call
//! it in-process; [`run`] serves it on a listener it is handed until
//! `shutdown` resolves.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{json, Value};
use strata_projections::ReadModelSink;
use strata_store::{CheckpointStore, EventStore};

use crate::metrics::{render, Metrics, Sources};
use tokio::net::TcpListener;

/// What the handlers share.
#[derive(Clone)]
pub struct AppState {
    /// The event store.
    pub event_store: Arc<dyn EventStore>,
    /// The read models, when this process serves them.
    pub read_model: Option<Arc<dyn ReadModelSink>>,
    /// The checkpoints beside the log (relay, sagas), for `/metrics`.
    pub checkpoints: Arc<dyn CheckpointStore>,
    /// This process's counters.
    pub metrics: Arc<Metrics>,
}

/// The application's routes.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(state)
}

async fn healthz() -> Json<Value> {
    Json(json!({ "status": "ok" }))
}

async fn readyz(State(state): State<AppState>) -> (StatusCode, Json<Value>) {
    let mut checks = serde_json::Map::new();
    let mut ready = true;
    let backend = state.event_store.backend_name();
    let ping = tokio::time::timeout(Duration::from_secs(2), state.event_store.ping()).await;
    ready &= check(&mut checks, "event_store", backend, ping.map(|r| r.map_err(|e| e.to_string())));
    if let Some(read_model) = &state.read_model {
        let ping = tokio::time::timeout(Duration::from_secs(2), read_model.ping()).await;
        ready &= check(&mut checks, "read_model", read_model.backend_name(), ping.map(|r| r.map_err(|e| e.to_string())));
    }
    let status = if ready { "ready" } else { "unavailable" };
    let code = if ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (code, Json(json!({ "status": status, "checks": checks })))
}

async fn metrics(State(state): State<AppState>) -> ([(axum::http::header::HeaderName, &'static str); 1], String) {
    let sources = Sources {
        log: state.event_store.clone(),
        checkpoints: state.checkpoints.clone(),
        read_model: state.read_model.clone(),
        metrics: state.metrics.clone(),
    };
    let text = render(&sources).await;
    ([(axum::http::header::CONTENT_TYPE, "text/plain; version=0.0.4")], text)
}

/// Records one dependency's check; true when it is up.
fn check(
    checks: &mut serde_json::Map<String, Value>,
    name: &str,
    backend: &str,
    ping: Result<Result<(), String>, tokio::time::error::Elapsed>,
) -> bool {
    let up = matches!(ping, Ok(Ok(())));
    if !up {
        let cause = match ping {
            Ok(Err(err)) => err,
            _ => "timed out after 2s".to_owned(),
        };
        tracing::warn!(dependency = name, backend, %cause, "readiness check failed");
    }
    checks.insert(name.to_owned(), json!({ "backend": backend, "status": if up { "up" } else { "down" } }));
    up
}

/// Serves `router(state)` on `listener` until `shutdown` resolves, then
/// finishes in-flight requests.
pub async fn run(listener: TcpListener, state: AppState, shutdown: impl Future<Output = ()> + Send + 'static) -> std::io::Result<()> {
    axum::serve(listener, router(state)).with_graceful_shutdown(shutdown).await
}
