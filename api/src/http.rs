//! The HTTP surface for now: `GET /healthz` (the process is up) and
//! `GET /readyz` (the event store answers). Built by [`router`] so tests call
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
use strata_store::EventStore;
use tokio::net::TcpListener;

/// What the handlers share.
#[derive(Clone)]
pub struct AppState {
    /// The event store.
    pub event_store: Arc<dyn EventStore>,
}

/// The application's routes.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(state)
}

async fn healthz() -> Json<Value> {
    Json(json!({ "status": "ok" }))
}

async fn readyz(State(state): State<AppState>) -> (StatusCode, Json<Value>) {
    let backend = state.event_store.backend_name();
    let ping = tokio::time::timeout(Duration::from_secs(2), state.event_store.ping()).await;
    match ping {
        Ok(Ok(())) => (
            StatusCode::OK,
            Json(json!({ "status": "ready", "checks": { "event_store": { "backend": backend, "status": "up" } } })),
        ),
        failure => {
            let cause = match failure {
                Ok(Err(err)) => err.to_string(),
                _ => "timed out after 2s".to_owned(),
            };
            tracing::warn!(backend, %cause, "readiness check failed");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                Json(json!({ "status": "unavailable", "checks": { "event_store": { "backend": backend, "status": "down" } } })),
            )
        }
    }
}

/// Serves `router(state)` on `listener` until `shutdown` resolves, then
/// finishes in-flight requests.
pub async fn run(listener: TcpListener, state: AppState, shutdown: impl Future<Output = ()> + Send + 'static) -> std::io::Result<()> {
    axum::serve(listener, router(state)).with_graceful_shutdown(shutdown).await
}
