//! The GraphQL endpoint's parts, shared by `POST /graphql` ([`crate::http`])
//! and the subscriptions' WebSocket ([`crate::ws`]): the schema and its
//! state, the tokens, the caps on open sockets, the rates, and the one shape
//! of a refusal.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;
use tokio::sync::Semaphore;

use crate::auth::Tokens;
use crate::graphql::{Api, Code, Limits, StrataSchema};

/// The GraphQL endpoint's parts.
#[derive(Clone)]
pub struct GraphQl {
    /// The executable schema.
    pub schema: StrataSchema,
    /// Its resolvers' state (limits, read models).
    pub api: Arc<Api>,
    /// The accepted tokens.
    pub tokens: Arc<Tokens>,
    /// The open subscription WebSockets.
    pub connections: Arc<Connections>,
    /// Requests per token and per client address.
    pub rates: Arc<crate::rate::RateLimits>,
}

impl GraphQl {
    /// The endpoint over `api`, accepting `tokens`.
    pub fn new(api: Api, tokens: Tokens) -> Self {
        let api = Arc::new(api);
        let connections = Arc::new(Connections::new(&api.limits));
        let rates = Arc::new(crate::rate::RateLimits::new(api.limits.rate_per_token, api.limits.rate_per_ip));
        Self { schema: crate::graphql::schema(api.clone()), api, tokens: Arc::new(tokens), connections, rates }
    }
}

/// Open connections: in all, per principal, and not yet authenticated per
/// client address.
pub struct Connections {
    pub(crate) all: Arc<Semaphore>,
    pub(crate) per_token: Counts<[u8; 32]>,
    pub(crate) unauthenticated: Counts<IpAddr>,
}

impl Connections {
    /// Room for `limits.max_ws_connections`.
    pub fn new(limits: &Limits) -> Self {
        Self { all: Arc::new(Semaphore::new(limits.max_ws_connections)), per_token: Arc::default(), unauthenticated: Arc::default() }
    }

    /// Open connections now.
    pub fn open(&self, limits: &Limits) -> usize {
        limits.max_ws_connections.saturating_sub(self.all.available_permits())
    }
}

/// Counts of open connections by some key (a principal, an address).
pub(crate) type Counts<K> = Arc<Mutex<HashMap<K, usize>>>;

/// One connection's place among those of its key (its principal's, or its
/// address's unauthenticated ones); given back on drop.
pub(crate) struct Place<K: Eq + std::hash::Hash + Clone> {
    counts: Counts<K>,
    key: K,
}

impl<K: Eq + std::hash::Hash + Clone> Place<K> {
    /// A place for `key`, unless it holds `max` already.
    pub(crate) fn take(counts: &Counts<K>, key: K, max: usize) -> Option<Self> {
        let mut held = counts.lock().unwrap_or_else(|p| p.into_inner());
        let count = held.entry(key.clone()).or_default();
        if *count >= max {
            return None;
        }
        *count += 1;
        Some(Self { counts: counts.clone(), key })
    }
}

impl<K: Eq + std::hash::Hash + Clone> Drop for Place<K> {
    fn drop(&mut self) {
        let mut held = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(count) = held.get_mut(&self.key) {
            *count -= 1;
            if *count == 0 {
                held.remove(&self.key);
            }
        }
    }
}

/// A request-level refusal, shaped like a GraphQL response.
pub(crate) fn refuse(status: StatusCode, code: Code, message: impl Into<String>) -> Response {
    metrics::counter!("strata_graphql_errors_total", "code" => code.as_str()).increment(1);
    let body = json!({ "data": null, "errors": [{ "message": message.into(), "extensions": { "code": code.as_str() } }] });
    (status, Json(body)).into_response()
}
