//! The HTTP surface: `POST /graphql` (bearer token required), `GET /graphql`
//! (GraphiQL, or the WebSocket of subscriptions: `graphql-transport-ws` or
//! `graphql-ws`, the token in the `Authorization` header of the upgrade or
//! in the `connection_init` payload as `{"Authorization": "Bearer …"}`),
//! `GET /healthz` (the process is up), `GET /readyz` (the event store and,
//! when this process has them, the bus and the read models answer; the
//! event store's commit listener, when there is one, heard from the database
//! within 30 s; every supervised worker of the process is up, listed under
//! `checks.workers.<name>`) and `GET /metrics`
//! (Prometheus, see [`crate::metrics`]). `/healthz`, `/readyz`, `/metrics`
//! and the GraphiQL page carry no data and need no token.
//!
//! Every refusal of `POST /graphql` is a GraphQL-shaped JSON body with
//! `extensions.code`, never a 5xx: no or bad token 401 `UNAUTHENTICATED`,
//! body over the limit 413, not JSON 415, malformed JSON or unknown keys
//! 400 (`VALIDATION`), over a rate ([`crate::rate`]) 429 `RATE_LIMITED`
//! with `Retry-After`; errors inside a well-formed request come with 200.
//! Every answer carries an `x-request-id` (the caller's when it is at most
//! 128 characters of letters, digits and `-_.:/+=`, else a new UUID) that
//! also names the request's tracing span.
//! Built by [`router`] so tests call it in-process; [`run`] serves it on a
//! listener it is handed until `shutdown` resolves.

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use async_graphql_axum::GraphQLProtocol;
use axum::extract::ws::WebSocketUpgrade;
use axum::extract::{ConnectInfo, FromRequestParts, Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{json, Value};
use strata_projections::ReadModelSink;
use strata_store::{CheckpointStore, EventStore};

use crate::auth::Caller;
use crate::endpoint::refuse;
pub use crate::endpoint::GraphQl;
use crate::graphql::{request_data, Code};
use crate::metrics::{render, Metrics, Sources};
use tokio::net::TcpListener;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::trace::TraceLayer;

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
    /// The GraphQL API, when this process serves it.
    pub graphql: Option<GraphQl>,
    /// The bus, when this process has one: its name (`memory`, `nats`) and publisher.
    pub bus: Option<(&'static str, Arc<dyn strata_store::bus::Publisher>)>,
    /// The states of this process's supervised workers (relay, projections,
    /// saga, services), when it runs any.
    pub workers: Option<Arc<crate::supervisor::WorkerHealth>>,
}

/// The application's routes.
pub fn router(state: AppState) -> Router {
    let metrics = by_address(Router::new().route("/metrics", get(metrics)), &state);
    layered(metrics.merge(service_routes(&state)).with_state(state))
}

/// [`router`] without `/metrics`, for when `STRATA_METRICS_LISTEN` serves
/// it on an address of its own ([`metrics_router`]).
pub fn router_without_metrics(state: AppState) -> Router {
    layered(service_routes(&state).with_state(state))
}

/// `/metrics` and `/healthz` alone: what `STRATA_METRICS_LISTEN` serves.
pub fn metrics_router(state: AppState) -> Router {
    let routes = by_address(Router::new().route("/metrics", get(metrics)).route("/healthz", get(healthz)), &state);
    layered(routes.with_state(state))
}

fn service_routes(state: &AppState) -> Router<AppState> {
    // `/graphql` takes from the address's rate itself (before the token's).
    let others = Router::new().route("/healthz", get(healthz)).route("/readyz", get(readyz)).route("/graphiql/{file}", get(graphiql_asset));
    by_address(others, state).route("/graphql", get(graphql_get).post(graphql_post))
}

/// `routes` within the per-address rate (`STRATA_RATE_LIMIT_IP`), where the
/// process has one (it serves GraphQL): `/readyz` asks every backend and
/// `/metrics` reads the log, so a flood of them from one address is refused
/// like a flood of queries.
fn by_address(routes: Router<AppState>, state: &AppState) -> Router<AppState> {
    match &state.graphql {
        Some(graphql) => routes.route_layer(axum::middleware::from_fn_with_state(graphql.clone(), admit_address_layer)),
        None => routes,
    }
}

async fn admit_address_layer(State(graphql): State<GraphQl>, request: Request, next: axum::middleware::Next) -> Response {
    match admit_address(&graphql, client_ip(&request)) {
        Ok(()) => next.run(request).await,
        Err(refusal) => *refusal,
    }
}

fn layered(router: Router) -> Router {
    router
        // Outermost last: a request gets an `x-request-id` (its own, or a new
        // UUID), is traced in a span naming it, and the answer echoes it.
        .layer(PropagateRequestIdLayer::x_request_id())
        .layer(TraceLayer::new_for_http().make_span_with(request_span))
        .layer(SetRequestIdLayer::x_request_id(MakeRequestUuid))
        .layer(axum::middleware::map_request(bound_request_id))
}

/// The longest `x-request-id` kept from a caller.
pub const MAX_REQUEST_ID_LEN: usize = 128;

/// A caller's `x-request-id` goes into every log line and trace of its
/// request: one longer than [`MAX_REQUEST_ID_LEN`] or with other than
/// letters, digits and `-_.:/+=` is dropped, and the request gets a new one.
async fn bound_request_id(mut request: Request) -> Request {
    let acceptable = |value: &axum::http::HeaderValue| {
        let bytes = value.as_bytes();
        !bytes.is_empty() && bytes.len() <= MAX_REQUEST_ID_LEN && bytes.iter().all(|b| b.is_ascii_alphanumeric() || b"-_.:/+=".contains(b))
    };
    let values = request.headers().get_all("x-request-id");
    let mut values = values.iter();
    let keep = matches!((values.next(), values.next()), (Some(value), None) if acceptable(value));
    if !keep {
        request.headers_mut().remove("x-request-id");
    }
    request
}

/// The span a request is served in: method, path and request id.
fn request_span(request: &Request) -> tracing::Span {
    let id = request.headers().get("x-request-id").and_then(|value| value.to_str().ok()).unwrap_or_default();
    let span = tracing::info_span!("http", method = %request.method(), path = request.uri().path(), request_id = id);
    // A caller's W3C trace context makes the request part of its trace.
    strata_store::trace::follow(&span, request.headers().get("traceparent").and_then(|value| value.to_str().ok()));
    span
}

async fn healthz() -> Json<Value> {
    Json(json!({ "status": "ok" }))
}

/// `/readyz` reports a commit listener silent for longer than this.
const LISTENER_SILENCE_LIMIT: Duration = Duration::from_secs(30);

async fn readyz(State(state): State<AppState>) -> (StatusCode, Json<Value>) {
    let mut checks = serde_json::Map::new();
    let mut ready = true;
    let backend = state.event_store.backend_name();
    let ping = tokio::time::timeout(Duration::from_secs(2), state.event_store.ping()).await;
    ready &= check(&mut checks, "event_store", backend, ping.map(|r| r.map_err(|e| strata_store::chain(&e))));
    if let Some(silence) = state.event_store.listener_silence() {
        // The listener hears its own heartbeat every 5 s and replaces a
        // connection silent for 15 s; silent for longer, it cannot reconnect.
        let heard = if silence <= LISTENER_SILENCE_LIMIT {
            Ok(Ok(()))
        } else {
            Ok(Err(format!("no notification from the database for {} s", silence.as_secs())))
        };
        ready &= check(&mut checks, "event_store_listener", backend, heard);
    }
    if let Some(read_model) = &state.read_model {
        let ping = tokio::time::timeout(Duration::from_secs(2), read_model.ping()).await;
        ready &= check(&mut checks, "read_model", read_model.backend_name(), ping.map(|r| r.map_err(|e| strata_store::chain(&e))));
    }
    if let Some((name, bus)) = &state.bus {
        let ping = tokio::time::timeout(Duration::from_secs(2), bus.ping()).await;
        ready &= check(&mut checks, "bus", name, ping.map(|r| r.map_err(|e| strata_store::chain(&e))));
    }
    if let Some(workers) = &state.workers {
        // A worker restarting after a failure makes the process unavailable:
        // it must not look healthy with a role gone.
        if !workers.all_up() {
            ready = false;
            tracing::warn!(workers = %workers.to_json(), "readiness: a worker is not up");
        }
        checks.insert("workers".to_owned(), workers.to_json());
    }
    let status = if ready { "ready" } else { "unavailable" };
    let code = if ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (code, Json(json!({ "status": status, "checks": checks })))
}

async fn metrics(State(state): State<AppState>) -> ([(axum::http::header::HeaderName, &'static str); 1], axum::body::Bytes) {
    let sources = Sources {
        log: state.event_store.clone(),
        checkpoints: state.checkpoints.clone(),
        read_model: state.read_model.clone(),
        metrics: state.metrics.clone(),
    };
    let text = render(&sources).await;
    ([(axum::http::header::CONTENT_TYPE, "text/plain; version=0.0.4")], axum::body::Bytes::copy_from_slice(text.as_bytes()))
}

/// The body of `POST /graphql`: exactly these keys.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct GraphQlBody {
    query: String,
    #[serde(default)]
    operation_name: Option<String>,
    #[serde(default)]
    variables: Option<Value>,
    #[serde(default)]
    extensions: Option<serde_json::Map<String, Value>>,
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers.get(header::AUTHORIZATION).and_then(|value| value.to_str().ok())
}

/// The client's address, when the server was started with it ([`run`] is).
fn client_ip(request: &Request) -> Option<IpAddr> {
    request.extensions().get::<ConnectInfo<SocketAddr>>().map(|info| info.0.ip())
}

/// Takes a request from its address's bucket, when the address is known.
fn admit_address(graphql: &GraphQl, ip: Option<IpAddr>) -> Result<(), Box<Response>> {
    match ip {
        Some(ip) => graphql.rates.check_ip(ip).map_err(|wait| rate_limited(wait, "this address")),
        None => Ok(()),
    }
}

/// Authenticates an `Authorization` header's value, within its token's rate.
fn admit_token(graphql: &GraphQl, header: Option<&str>) -> Result<Caller, Box<Response>> {
    let caller = graphql
        .tokens
        .authenticate(header, chrono::Utc::now())
        .map_err(|err| Box::new(refuse(StatusCode::UNAUTHORIZED, Code::Unauthenticated, err.to_string())))?;
    if let Some((_, token)) = header.and_then(|header| header.trim().split_once(' ')) {
        graphql.rates.check_token(token).map_err(|wait| rate_limited(wait, "this token"))?;
    }
    Ok(caller)
}

/// 429 with `Retry-After`.
fn rate_limited(wait: Duration, whose: &str) -> Box<Response> {
    let seconds = crate::rate::retry_after_seconds(wait);
    let mut response =
        refuse(StatusCode::TOO_MANY_REQUESTS, Code::RateLimited, format!("too many requests from {whose}; retry in {seconds} s"));
    response.headers_mut().insert(header::RETRY_AFTER, seconds.into());
    Box::new(response)
}

async fn graphql_post(State(state): State<AppState>, request: Request) -> Response {
    let started = std::time::Instant::now();
    let Some(graphql) = &state.graphql else {
        return refuse(StatusCode::NOT_FOUND, Code::NotFound, "this process does not serve GraphQL (STRATA_ROLES has no api)");
    };
    let ip = client_ip(&request);
    let (parts, body) = request.into_parts();
    let headers = parts.headers;
    let caller = match admit_address(graphql, ip).and_then(|()| admit_token(graphql, bearer(&headers))) {
        Ok(caller) => caller,
        Err(refusal) => return *refusal,
    };
    let limits = &graphql.api.limits;
    let json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .is_some_and(|value| value.trim_start().to_ascii_lowercase().starts_with("application/json"));
    if !json {
        return refuse(StatusCode::UNSUPPORTED_MEDIA_TYPE, Code::Validation, "send the request as Content-Type: application/json");
    }
    let Ok(bytes) = axum::body::to_bytes(body, limits.max_body_bytes).await else {
        return refuse(
            StatusCode::PAYLOAD_TOO_LARGE,
            Code::Validation,
            format!("the request body is larger than {} bytes", limits.max_body_bytes),
        );
    };
    let body: GraphQlBody = match serde_json::from_slice(&bytes) {
        Ok(body) => body,
        Err(err) => return refuse(StatusCode::BAD_REQUEST, Code::Validation, format!("malformed request: {err}")),
    };
    let variables = match body.variables {
        None | Some(Value::Null) => async_graphql::Variables::default(),
        Some(variables @ Value::Object(_)) => async_graphql::Variables::from_json(variables),
        Some(_) => return refuse(StatusCode::BAD_REQUEST, Code::Validation, "malformed request: variables must be an object"),
    };
    let _ = body.extensions;
    let mut request = async_graphql::Request::new(body.query).variables(variables);
    if let Some(name) = body.operation_name {
        request = request.operation_name(name);
    }
    request.data = request_data(&graphql.api, caller);
    let mut response = match tokio::time::timeout(limits.request_timeout, graphql.schema.execute(request)).await {
        Ok(response) => response,
        Err(_) => {
            let message = format!("the request took longer than {:?}; a mutation may or may not have been applied", limits.request_timeout);
            state.metrics.observe_graphql(started, []); // refuse() counts the error
            return refuse(StatusCode::OK, Code::Timeout, message);
        }
    };
    // Errors of parsing, validation and limits come without a code.
    for error in &mut response.errors {
        let extensions = error.extensions.get_or_insert_with(Default::default);
        if extensions.get("code").is_none() {
            extensions.set("code", Code::Validation.as_str());
        }
    }
    let codes = response.errors.iter().map(|error| {
        error
            .extensions
            .as_ref()
            .and_then(|extensions| extensions.get("code"))
            .and_then(|code| match code {
                async_graphql::Value::String(code) => Some(code.as_str()),
                async_graphql::Value::Enum(code) => Some(code.as_str()),
                _ => None,
            })
            .unwrap_or("UNKNOWN")
    });
    state.metrics.observe_graphql(started, codes);
    Json(response).into_response()
}

/// GraphiQL, or the subscriptions' WebSocket when the request upgrades.
async fn graphql_get(State(state): State<AppState>, request: Request) -> Response {
    let Some(graphql) = state.graphql.clone() else {
        return refuse(StatusCode::NOT_FOUND, Code::NotFound, "this process does not serve GraphQL (STRATA_ROLES has no api)");
    };
    let upgrading = request.headers().get(header::UPGRADE).is_some();
    if !upgrading {
        return ([(header::CONTENT_SECURITY_POLICY, GRAPHIQL_CSP)], Html(GRAPHIQL)).into_response();
    }
    let ip = client_ip(&request);
    if let Err(refusal) = admit_address(&graphql, ip) {
        return *refusal;
    }
    // A token at the upgrade is checked now; else at `connection_init`.
    let header = match bearer(request.headers()) {
        None => None,
        Some(header) => match admit_token(&graphql, Some(header)) {
            Ok(caller) => Some((header.to_owned(), caller)),
            Err(refusal) => return *refusal,
        },
    };
    let (mut parts, _) = request.into_parts();
    let protocol = match GraphQLProtocol::from_request_parts(&mut parts, &state).await {
        Ok(protocol) => protocol,
        Err(rejection) => return rejection.into_response(),
    };
    let upgrade = match WebSocketUpgrade::from_request_parts(&mut parts, &state).await {
        Ok(upgrade) => upgrade,
        Err(rejection) => return rejection.into_response(),
    };
    crate::ws::upgrade(graphql, header, ip, protocol, upgrade)
}

/// The GraphiQL page. Its scripts and styles are served here from
/// `api/graphiql/dist` (pinned npm packages, compiled in): the page makes no
/// request outside this server, and its Content-Security-Policy says so.
const GRAPHIQL: &str = include_str!("../graphiql/index.html");

/// Only this origin (and its WebSocket) for scripts, styles, fonts and
/// connections; GraphiQL's React sets inline styles, its fonts are data URLs.
const GRAPHIQL_CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; font-src 'self' data:; connect-src 'self' ws: wss:; frame-ancestors 'none'";

/// `GET /graphiql/<file>`: the page's assets.
async fn graphiql_asset(axum::extract::Path(file): axum::extract::Path<String>) -> Response {
    let (body, content_type): (&'static [u8], &str) = match file.as_str() {
        "graphiql.min.js" => (include_bytes!("../graphiql/dist/graphiql.min.js"), "text/javascript; charset=utf-8"),
        "graphiql.min.css" => (include_bytes!("../graphiql/dist/graphiql.min.css"), "text/css; charset=utf-8"),
        "react.production.min.js" => (include_bytes!("../graphiql/dist/react.production.min.js"), "text/javascript; charset=utf-8"),
        "react-dom.production.min.js" => (include_bytes!("../graphiql/dist/react-dom.production.min.js"), "text/javascript; charset=utf-8"),
        "strata-graphiql.js" => (include_bytes!("../graphiql/strata-graphiql.js"), "text/javascript; charset=utf-8"),
        _ => return StatusCode::NOT_FOUND.into_response(),
    };
    ([(header::CONTENT_TYPE, content_type), (header::CACHE_CONTROL, "public, max-age=3600")], body).into_response()
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
    serve(listener, state, ServerBounds::default(), shutdown).await
}

/// What a connection may hold before any token is checked (slow clients:
/// a connection that sends nothing, or a header or body a byte at a time).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServerBounds {
    /// Longest a client may take to send a request's headers, the first
    /// request's included: a connection that sends nothing is closed then
    /// too (`STRATA_HTTP_HEADER_TIMEOUT`).
    pub header_timeout: Duration,
    /// Longest a client may take to send a request's body
    /// (`STRATA_HTTP_BODY_TIMEOUT`).
    pub body_timeout: Duration,
    /// Most connections open at once; one more is closed as soon as it is
    /// accepted (`STRATA_MAX_CONNECTIONS`).
    pub max_connections: usize,
}

impl Default for ServerBounds {
    fn default() -> Self {
        Self { header_timeout: Duration::from_secs(10), body_timeout: Duration::from_secs(30), max_connections: 10_000 }
    }
}

/// [`run`] within `bounds`: each connection is served by hyper's HTTP/1
/// with a header-read timeout (axum's own `serve` sets none, so 2,000
/// half-sent requests stayed open for good), under a cap on open
/// connections, and stopped gracefully with the others on `shutdown`.
pub async fn serve(
    listener: TcpListener,
    state: AppState,
    bounds: ServerBounds,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    serve_router(listener, router(state), bounds, shutdown).await
}

/// [`serve`] with another router ([`router_without_metrics`], [`metrics_router`]).
pub async fn serve_router(
    listener: TcpListener,
    app: Router,
    bounds: ServerBounds,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let app = app.layer(tower_http::timeout::RequestBodyTimeoutLayer::new(bounds.body_timeout));
    let max_connections = bounds.max_connections.clamp(1, tokio::sync::Semaphore::MAX_PERMITS.min(u32::MAX as usize));
    let permits = Arc::new(tokio::sync::Semaphore::new(max_connections));
    // Told to every connection on shutdown: each finishes its request in
    // flight and closes; the server returns once all of them have.
    let (stopping, stop) = tokio::sync::watch::channel(false);
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(hyper_util::rt::TokioTimer::new()).header_read_timeout(bounds.header_timeout);
    tokio::pin!(shutdown);
    loop {
        let (stream, remote) = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // Out of file descriptors and the like: they pass.
                    tracing::warn!(error = %strata_store::chain(&error), "accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            metrics::counter!("strata_http_connections_refused_total").increment(1);
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let service = tower_http::add_extension::AddExtension::new(app.clone(), axum::extract::ConnectInfo(remote));
        let connection = http
            .serve_connection(hyper_util::rt::TokioIo::new(stream), hyper_util::service::TowerToHyperService::new(service))
            .with_upgrades();
        let mut stop = stop.clone();
        tokio::spawn(async move {
            tokio::pin!(connection);
            let ended = tokio::select! {
                ended = connection.as_mut() => ended,
                () = async { let _ = stop.wait_for(|stop| *stop).await; } => {
                    connection.as_mut().graceful_shutdown();
                    connection.await
                }
            };
            if let Err(error) = ended {
                tracing::debug!(error = %strata_store::chain(&error), "an HTTP connection ended with an error");
            }
            drop(permit);
        });
    }
    stopping.send_replace(true);
    // Every place back: every connection has closed (an upgraded one, a
    // WebSocket, gave its place back when it was handed over).
    let _all = permits.acquire_many(max_connections as u32).await;
    Ok(())
}
