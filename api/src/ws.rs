//! The subscriptions' WebSocket (`GET /graphql` with an upgrade), with the
//! bounds the POST path has and a few of its own:
//!
//! - a connection must be acknowledged (a valid `connection_init`, its token
//!   there or at the upgrade) within [`Limits::ws_init_timeout`], else it is
//!   closed;
//! - frames and messages are at most [`Limits::max_ws_message_bytes`];
//! - at most [`Limits::max_ws_connections`] connections per process and
//!   [`Limits::max_ws_unauthenticated_per_address`] not yet authenticated
//!   per client address (more are refused before the upgrade), and
//!   [`Limits::max_ws_connections_per_token`] per principal (the role and
//!   subject the token speaks for; more are refused at `connection_init`);
//! - every operation sent over the socket takes from its token's rate, a
//!   query or mutation runs within [`Limits::request_timeout`] and its
//!   `waitFor`s share one deadline, and a subscription lasts at most
//!   [`Limits::max_subscription_lifetime`] (see `graphql::bounds`);
//! - at most [`Limits::max_subscriptions_per_connection`] subscriptions open
//!   at once, asked for in text or binary frames (one more closes the
//!   connection);
//! - a connection is closed when its token expires.

use std::collections::HashSet;
use std::net::IpAddr;
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
use tokio::sync::{Notify, OwnedSemaphorePermit};

use crate::auth::Caller;
pub use crate::endpoint::Connections;
use crate::endpoint::{refuse, GraphQl, Place};
use crate::graphql::{error, request_data, Code, OverSocket};

/// Who a token speaks for, as the per-principal cap counts it: its role and
/// subject, whatever the header's spelling or the token (two tokens of one
/// customer share the cap); a token without a subject counts alone.
fn principal_key(token: &str, caller: &Caller) -> [u8; 32] {
    match &caller.subject {
        Some(subject) => Sha256::digest(format!("{:?}\0{subject}", caller.role).as_bytes()).into(),
        None => Sha256::digest(format!("token\0{}", bare_token(token)).as_bytes()).into(),
    }
}

/// The token of an `Authorization` value (`Bearer <token>`).
fn bare_token(header: &str) -> &str {
    header.trim().split_once(' ').map_or(header.trim(), |(_, token)| token.trim())
}

/// What the connection's watchers share.
#[derive(Default)]
struct Connection {
    /// Its place among its address's unauthenticated connections, until
    /// it authenticates.
    address_slot: Mutex<Option<Place<IpAddr>>>,
    authenticated: AtomicBool,
    expires: Mutex<Option<DateTime<Utc>>>,
    slot: Mutex<Option<Place<[u8; 32]>>>,
    subscriptions: Mutex<HashSet<String>>,
    changed: Notify,
}

/// Upgrades to a GraphQL WebSocket within the bounds above; `header` is the
/// token presented at the upgrade (with who it speaks for), if any; `ip`
/// the client's address, when known.
pub fn upgrade(
    graphql: GraphQl,
    header: Option<(String, Caller)>,
    ip: Option<IpAddr>,
    protocol: GraphQLProtocol,
    upgrade: WebSocketUpgrade,
) -> Response {
    let limits = graphql.api.limits.clone();
    // Not yet authenticated: a place among its address's such connections.
    let address_slot = match (&header, ip) {
        (None, Some(ip)) => match Place::take(&graphql.connections.unauthenticated, ip, limits.max_ws_unauthenticated_per_address) {
            Some(slot) => Some(slot),
            None => {
                return refuse(
                    axum::http::StatusCode::TOO_MANY_REQUESTS,
                    Code::RateLimited,
                    format!(
                        "too many unauthenticated WebSocket connections from this address (at most {}); send the token with the upgrade or in connection_init",
                        limits.max_ws_unauthenticated_per_address
                    ),
                );
            }
        },
        _ => None,
    };
    let Ok(permit) = graphql.connections.all.clone().try_acquire_owned() else {
        return refuse(
            axum::http::StatusCode::SERVICE_UNAVAILABLE,
            Code::RateLimited,
            format!("too many WebSocket connections (at most {})", limits.max_ws_connections),
        );
    };
    upgrade
        .max_frame_size(limits.max_ws_message_bytes)
        .max_message_size(limits.max_ws_message_bytes)
        .protocols(ALL_WEBSOCKET_PROTOCOLS)
        .on_upgrade(move |socket| serve(socket, graphql, header, address_slot, protocol, permit))
        .into_response()
}

async fn serve(
    socket: WebSocket,
    graphql: GraphQl,
    header: Option<(String, Caller)>,
    address_slot: Option<Place<IpAddr>>,
    protocol: GraphQLProtocol,
    _permit: OwnedSemaphorePermit,
) {
    let limits = graphql.api.limits.clone();
    let connection = Arc::new(Connection { address_slot: Mutex::new(address_slot), ..Connection::default() });
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
                        // Authenticated: no longer counted against its address.
                        drop(watched.address_slot.lock().unwrap_or_else(|p| p.into_inner()).take());
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
    let socket_rates = graphql.rates.clone();
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
            let Some(place) = Place::take(&per_token, principal_key(&token, &caller), max_per_token) else {
                return Err(error(
                    Code::RateLimited,
                    format!("too many WebSocket connections for this token's principal (at most {max_per_token})"),
                ));
            };
            *watched.slot.lock().unwrap_or_else(|p| p.into_inner()) = Some(place);
            *watched.expires.lock().unwrap_or_else(|p| p.into_inner()) = caller.expires;
            watched.changed.notify_one();
            let mut data = request_data(&api, caller);
            data.insert(OverSocket { token: bare_token(&token).to_owned(), rates: socket_rates });
            Ok(data)
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
