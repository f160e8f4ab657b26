//! The composition root: [`Application::build`] turns [`Settings`] into a
//! running process (the event store opened and migrated, this process's
//! roles started under their supervisor, its listeners bound) and
//! [`Application::run_until_stopped`] serves until the shutdown future
//! resolves, then stops the workers. `strata serve` is these two calls;
//! tests build the application in process on `127.0.0.1:0` and read the
//! addresses it bound.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use futures_util::future::{BoxFuture, FutureExt, Shared};
use strata_projections::ReadModelSink;
use tokio::net::TcpListener;

use crate::auth::Tokens;
use crate::backend::{registry, EventStoreBackend};
use crate::config::Settings;
use crate::graphql::{Api, Limits};
use crate::http::{self, AppState, GraphQl, ServerBounds};
use crate::workers::{connect_bus, connect_read_model, Bus, Workers};

/// Opens the event store the settings name (does not migrate).
pub async fn open_event_store(settings: &Settings) -> anyhow::Result<EventStoreBackend> {
    EventStoreBackend::connect(&settings.event_store, registry()?, settings.append_limits, settings.chain.key()).await
}

/// The tokens the api accepts: the configured ones, else a fresh
/// development token per role, printed, where that is allowed
/// ([`Settings::development_tokens`]).
pub fn tokens(settings: &Settings) -> anyhow::Result<Tokens> {
    let tokens = match &settings.tokens {
        Some(spec) => Tokens::parse(spec)?,
        None if settings.jwt.enabled() => Tokens::default(),
        None if !settings.development_tokens() => anyhow::bail!(
            "no authentication is configured: set STRATA_TOKENS or STRATA_JWT_SECRET / STRATA_JWT_JWKS (README.md, \"Opaque tokens\" and \"JWTs\"); \
             development tokens are made only for the embedded default listening on loopback, or with --dev (STRATA_DEV=1)"
        ),
        None => {
            let (tokens, printed) = Tokens::development();
            for (role, token) in printed {
                println!("token {role}: {token}");
            }
            println!(
                "(development tokens, new at every start; the client acts for customer {}; set STRATA_TOKENS or STRATA_JWT_* for your own)",
                crate::auth::DEVELOPMENT_CUSTOMER
            );
            tokens
        }
    };
    tokens.with_jwt(&settings.jwt)
}

/// A process built from its settings, serving once run.
pub struct Application {
    store: Arc<dyn strata_store::EventStore>,
    workers: Workers,
    bus: Option<Bus>,
    /// The main address (GraphQL, health, and `/metrics` unless it has its own).
    http: Option<(TcpListener, axum::Router)>,
    /// `STRATA_METRICS_LISTEN`'s address.
    metrics: Option<(TcpListener, axum::Router)>,
    bounds: ServerBounds,
}

impl Application {
    /// Settles who may call (before anything is opened), opens and migrates
    /// the event store, opens the bus and read models this process's roles
    /// need, starts the roles' workers and binds the listeners, printing
    /// the lines `strata serve` prints (the addresses, the development
    /// tokens).
    pub async fn build(settings: &Settings) -> anyhow::Result<Self> {
        // `Some` exactly when this process has the api role.
        let tokens = if settings.roles.api { Some(tokens(settings)?) } else { None };
        let backend = open_event_store(settings).await?;
        backend.migrate().await.context("migrating the event store")?;
        let roles = settings.roles;
        let bus = if roles.relay || roles.projector || roles.saga || roles.services {
            Some(connect_bus(&settings.bus, settings.append_limits.max_record_bytes()).await?)
        } else {
            None
        };
        let read_model = if roles.projector || roles.api { Some(connect_read_model(&settings.read_model).await?) } else { None };
        let workers = Workers::start(settings, &backend, bus.as_ref(), read_model.clone(), settings.worker_backoff()).await?;
        crate::metrics::install_global(&roles.to_string());
        let store = backend.store();
        let state = |graphql: Option<GraphQl>| AppState {
            event_store: store.clone(),
            read_model: read_model.clone(),
            checkpoints: backend.checkpoints(),
            metrics: crate::metrics::process_metrics(),
            graphql,
            bus: bus.as_ref().map(|bus| (settings.bus.backend_name(), bus.publisher.clone())),
            workers: Some(workers.health()),
        };
        let metrics_listener = match settings.metrics_listen {
            Some(address) => {
                let listener = TcpListener::bind(address).await.with_context(|| format!("binding {address} (STRATA_METRICS_LISTEN)"))?;
                println!("strata metrics on http://{}/metrics", listener.local_addr()?);
                Some(listener)
            }
            None => None,
        };
        // The api role serves GraphQL; any process serves its health and
        // metrics when given an address (compose scrapes every role).
        let (http, state) = if roles.api || settings.listen_configured {
            let listener = TcpListener::bind(settings.listen).await.with_context(|| format!("binding {}", settings.listen))?;
            let address = listener.local_addr()?;
            let graphql = match tokens {
                Some(tokens) => Some(graphql(settings, &backend, read_model.clone(), tokens)?),
                None => None,
            };
            if graphql.is_some() {
                // The development tokens were printed before the listening line.
                println!(
                    "strata listening on http://{address} (event store: {}; GraphiQL at http://{address}/graphql)",
                    store.backend_name()
                );
            } else {
                println!("strata running {roles} (event store: {}; health and metrics on http://{address})", store.backend_name());
            }
            tracing::info!(%address, backend = store.backend_name(), %roles, "serving");
            let state = state(graphql);
            let router = if metrics_listener.is_some() { http::router_without_metrics(state.clone()) } else { http::router(state.clone()) };
            (Some((listener, router)), state)
        } else {
            println!("strata running {roles} (event store: {})", store.backend_name());
            (None, state(None))
        };
        let metrics = metrics_listener.map(|listener| (listener, http::metrics_router(state)));
        Ok(Self { store, workers, bus, http, metrics, bounds: settings.http_bounds })
    }

    /// The main address, when this process listens there.
    pub fn address(&self) -> Option<SocketAddr> {
        self.http.as_ref().and_then(|(listener, _)| listener.local_addr().ok())
    }

    /// The event store it serves (the metered one `/metrics` counts).
    pub fn event_store(&self) -> Arc<dyn strata_store::EventStore> {
        self.store.clone()
    }

    /// `STRATA_METRICS_LISTEN`'s address, when set.
    pub fn metrics_address(&self) -> Option<SocketAddr> {
        self.metrics.as_ref().and_then(|(listener, _)| listener.local_addr().ok())
    }

    /// Serves until `shutdown` resolves (then lets requests in flight end),
    /// and stops the workers.
    pub async fn run_until_stopped(self, shutdown: impl Future<Output = ()> + Send + 'static) -> anyhow::Result<()> {
        let shutdown: Shared<BoxFuture<'static, ()>> = shutdown.boxed().shared();
        let bounds = self.bounds;
        let serve = |server: Option<(TcpListener, axum::Router)>| {
            let shutdown = shutdown.clone();
            async move {
                match server {
                    Some((listener, router)) => http::serve_router(listener, router, bounds, shutdown).await,
                    None => Ok(()),
                }
            }
        };
        let (served, metrics_served) = if self.http.is_none() && self.metrics.is_none() {
            shutdown.clone().await;
            (Ok(()), Ok(()))
        } else {
            tokio::join!(serve(self.http), serve(self.metrics))
        };
        // The workers run under their supervisor, restarted when they fail
        // (`/readyz` shows each one); they stop once serving has.
        self.workers.stop().await;
        if let Some(requester) = self.bus.as_ref().and_then(|bus| bus.requester.as_ref()) {
            requester.close().await;
        }
        served?;
        metrics_served?;
        tracing::info!("stopped");
        Ok(())
    }
}

/// The GraphQL endpoint of the api role.
fn graphql(
    settings: &Settings,
    backend: &EventStoreBackend,
    read_model: Option<Arc<dyn ReadModelSink>>,
    tokens: Tokens,
) -> anyhow::Result<GraphQl> {
    let Some(read_model) = read_model else { anyhow::bail!("the api role needs the read models") };
    let limits = Limits { rate_per_token: settings.rate_per_token, rate_per_ip: settings.rate_per_ip, ..Limits::default() };
    let api = Api::new(backend.store(), Some(backend.snapshots()), backend.checkpoints(), read_model, limits);
    Ok(GraphQl::new(api, tokens))
}

/// Resolves on Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = terminate => {},
    }
}
