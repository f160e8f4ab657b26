//! The subscriptions' WebSocket (`GET /graphql` with an upgrade), with the
//! bounds the POST path has and a few of its own:
//!
//! - a connection must be acknowledged (a valid `connection_init`, its token
//!   there or at the upgrade) within [`Limits::ws_init_timeout`], else it is
//!   closed;
//! - frames and messages are at most [`Limits::max_ws_message_bytes`];
//! - at most [`Limits::max_ws_connections`] connections per process (more
//!   are refused before the upgrade) and
//!   [`Limits::max_ws_connections_per_token`] per token (more are refused
//!   at `connection_init`);
//! - at most [`Limits::max_subscriptions_per_connection`] subscriptions open
//!   at once, asked for in text or binary frames (one more closes the
//!   connection);
//! - a connection is closed when its token expires.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use async_graphql::http::ALL_WEBSOCKET_PROTOCOLS;
use async_graphql_axum::{GraphQLProtocol, GraphQLWebSocket};
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use sha2::{Digest, Sha256};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};

use crate::auth::Caller;
use crate::graphql::{error, request_data, Code, Limits};
use crate::http::GraphQl;

/// Open connections: in all, and per token.
pub struct Connections {
    all: Arc<Semaphore>,
    per_token: Arc<Mutex<HashMap<[u8; 32], usize>>>,
}

impl Connections {
    /// Room for `limits.max_ws_connections`.
    pub fn new(limits: &Limits) -> Self {
        Self { all: Arc::new(Semaphore::new(limits.max_ws_connections)), per_token: Arc::default() }
    }

    /// Open connections now.
    pub fn open(&self, limits: &Limits) -> usize {
        limits.max_ws_connections.saturating_sub(self.all.available_permits())
    }
}

/// A token's hold on one of its connections; released on drop.
struct TokenSlot {
    per_token: Arc<Mutex<HashMap<[u8; 32], usize>>>,
    key: [u8; 32],
}

impl Drop for TokenSlot {
    fn drop(&mut self) {
        let mut counts = self.per_token.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(count) = counts.get_mut(&self.key) {
            *count -= 1;
            if *count == 0 {
                counts.remove(&self.key);
            }
        }
    }
}

/// What the connection's watchers share.
#[derive(Default)]
struct Connection {
    authenticated: AtomicBool,
    expires: Mutex<Option<DateTime<Utc>>>,
    slot: Mutex<Option<TokenSlot>>,
    subscriptions: Mutex<HashSet<String>>,
    changed: Notify,
}

/// Upgrades to a GraphQL WebSocket within the bounds above; `header` is the
/// token presented at the upgrade (with who it speaks for), if any.
pub fn upgrade(graphql: GraphQl, header: Option<(String, Caller)>, protocol: GraphQLProtocol, upgrade: WebSocketUpgrade) -> Response {
    let limits = graphql.api.limits.clone();
    let Ok(permit) = graphql.connections.all.clone().try_acquire_owned() else {
        return crate::http::refuse(
            axum::http::StatusCode::SERVICE_UNAVAILABLE,
            Code::RateLimited,
            format!("too many WebSocket connections (at most {})", limits.max_ws_connections),
        );
    };
    upgrade
        .max_frame_size(limits.max_ws_message_bytes)
        .max_message_size(limits.max_ws_message_bytes)
        .protocols(ALL_WEBSOCKET_PROTOCOLS)
        .on_upgrade(move |socket| serve(socket, graphql, header, protocol, permit))
        .into_response()
}

async fn serve(
    socket: WebSocket,
    graphql: GraphQl,
    header: Option<(String, Caller)>,
    protocol: GraphQLProtocol,
    _permit: OwnedSemaphorePermit,
) {
    let limits = graphql.api.limits.clone();
    let connection = Arc::new(Connection::default());
    let (sink, stream) = socket.split();
    // Outgoing: the ack authenticates the connection; a completed
    // subscription frees its place.
    let watched = connection.clone();
    let sink = sink.with(move |message: Message| {
        if let Message::Text(text) = &message {
            if let Ok(message) = serde_json::from_str::<Value>(text) {
                match message["type"].as_str() {
                    Some("connection_ack") => {
                        watched.authenticated.store(true, Ordering::SeqCst);
                        watched.changed.notify_one();
                    }
                    Some("complete") => {
                        if let Some(id) = message["id"].as_str() {
                            watched.subscriptions.lock().unwrap_or_else(|p| p.into_inner()).remove(id);
                        }
                    }
                    _ => {}
                }
            }
        }
        futures_util::future::ready(Ok::<_, axum::Error>(message))
    });
    // Incoming: count open subscriptions; one too many ends the connection.
    // Binary frames count too: async-graphql reads a message from either
    // kind (200 `subscribe`s in binary frames were all served before).
    let watched = connection.clone();
    let max_subscriptions = limits.max_subscriptions_per_connection;
    let stream = stream.map(move |message| {
        let parsed = match &message {
            Ok(Message::Text(text)) => serde_json::from_str::<Value>(text),
            Ok(Message::Binary(bytes)) => serde_json::from_slice::<Value>(bytes),
            _ => return message,
        };
        let Ok(parsed) = parsed else { return message };
        let id = parsed["id"].as_str().unwrap_or_default().to_owned();
        let mut open = watched.subscriptions.lock().unwrap_or_else(|p| p.into_inner());
        match parsed["type"].as_str() {
            Some("subscribe" | "start") => {
                open.insert(id);
                if open.len() > max_subscriptions {
                    return Err(axum::Error::new(format!("more than {max_subscriptions} subscriptions on one connection")));
                }
            }
            Some("complete" | "stop") => {
                open.remove(&id);
            }
            _ => {}
        }
        message
    });

    let (api, tokens, rates, per_token) =
        (graphql.api.clone(), graphql.tokens.clone(), graphql.rates.clone(), graphql.connections.per_token.clone());
    let max_per_token = limits.max_ws_connections_per_token;
    let watched = connection.clone();
    let serving = GraphQLWebSocket::new_with_pair(sink, stream, graphql.schema.clone(), protocol)
        .on_connection_init(move |payload| async move {
            let (token, caller) = match header {
                Some(presented) => presented,
                None => {
                    let header = ["Authorization", "authorization"].iter().find_map(|key| payload.get(key).and_then(Value::as_str));
                    let caller = tokens.authenticate(header, Utc::now()).map_err(|err| error(Code::Unauthenticated, err.to_string()))?;
                    if let Some((_, token)) = header.and_then(|header| header.trim().split_once(' ')) {
                        rates.check_token(token).map_err(|wait| {
                            let seconds = crate::rate::retry_after_seconds(wait);
                            error(Code::RateLimited, format!("too many requests from this token; retry in {seconds} s"))
                        })?;
                    }
                    (header.unwrap_or_default().to_owned(), caller)
                }
            };
            let key: [u8; 32] = Sha256::digest(token.as_bytes()).into();
            {
                let mut counts = per_token.lock().unwrap_or_else(|p| p.into_inner());
                let count = counts.entry(key).or_default();
                if *count >= max_per_token {
                    return Err(error(
                        Code::RateLimited,
                        format!("too many WebSocket connections for this token (at most {max_per_token})"),
                    ));
                }
                *count += 1;
            }
            *watched.slot.lock().unwrap_or_else(|p| p.into_inner()) = Some(TokenSlot { per_token, key });
            *watched.expires.lock().unwrap_or_else(|p| p.into_inner()) = caller.expires;
            watched.changed.notify_one();
            Ok(request_data(&api, caller))
        })
        .serve();
    tokio::pin!(serving);
    let init_deadline = tokio::time::sleep(limits.ws_init_timeout);
    tokio::pin!(init_deadline);
    loop {
        let authenticated = connection.authenticated.load(Ordering::SeqCst);
        let expires = *connection.expires.lock().unwrap_or_else(|p| p.into_inner());
        let until_expiry = expires.map(|at| (at - Utc::now()).to_std().unwrap_or_default());
        tokio::select! {
            () = &mut serving => break,
            () = &mut init_deadline, if !authenticated => {
                tracing::debug!("closing a WebSocket that did not authenticate in time");
                break;
            }
            () = async { tokio::time::sleep(until_expiry.unwrap_or_default()).await }, if until_expiry.is_some() => {
                tracing::debug!("closing a WebSocket whose token expired");
                break;
            }
            () = connection.changed.notified() => {}
        }
    }
    // Dropping `serving` closes the socket and ends its subscriptions.
}
