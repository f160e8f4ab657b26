//! The subscriptions' WebSocket keeps its bounds: served in-process on port 0
//! with small limits, and driven by a raw `graphql-transport-ws` client.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use strata_api::auth::Tokens;
use strata_api::backend::registry;
use strata_api::graphql::{Api, Limits};
use strata_api::http::{run, AppState, GraphQl};
use strata_store::MemoryEventStore;
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

type Socket = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

const CLIENT: &str = "ws-client-token-0001";
const OTHER: &str = "ws-client-token-0002";

fn limits() -> Limits {
    Limits {
        ws_init_timeout: Duration::from_millis(500),
        max_ws_message_bytes: 64 * 1024,
        max_ws_connections: 4,
        max_ws_connections_per_token: 2,
        max_subscriptions_per_connection: 2,
        ..Limits::default()
    }
}

/// A server on port 0 over an in-memory store with `limits`; `expiring`
/// is a client token that expires at the given time.
async fn serve(limits: Limits, expiring: Option<(&str, chrono::DateTime<chrono::Utc>)>) -> std::net::SocketAddr {
    let store = Arc::new(MemoryEventStore::new(registry().unwrap()));
    let sink = Arc::new(strata_projections::MemorySink::new());
    let api = Api::new(store.clone(), None, store.clone(), sink.clone(), limits);
    let mut tokens = Tokens::parse(&format!("client/c-1:{CLIENT},client/c-2:{OTHER}")).unwrap();
    if let Some((token, at)) = expiring {
        tokens.insert(token, strata_api::auth::Role::Client, Some("c-3".into()), Some(at));
    }
    let state = AppState {
        event_store: store.clone(),
        read_model: Some(sink),
        checkpoints: store,
        metrics: Default::default(),
        graphql: Some(GraphQl::new(api, tokens)),
        bus: None,
    };
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(run(listener, state, std::future::pending()));
    address
}

/// Opens a socket (no `connection_init` yet); the upgrade's HTTP status if refused.
async fn connect(address: std::net::SocketAddr) -> Result<Socket, u16> {
    let mut request = format!("ws://{address}/graphql").into_client_request().unwrap();
    request.headers_mut().insert("sec-websocket-protocol", "graphql-transport-ws".parse().unwrap());
    match tokio_tungstenite::connect_async(request).await {
        Ok((socket, _)) => Ok(socket),
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => Err(response.status().as_u16()),
        Err(other) => panic!("websocket upgrade: {other}"),
    }
}

/// Sends `connection_init` with `token`; true when acknowledged.
async fn init(socket: &mut Socket, token: &str) -> bool {
    let init = json!({ "type": "connection_init", "payload": { "Authorization": format!("Bearer {token}") } });
    socket.send(Message::text(init.to_string())).await.unwrap();
    matches!(next_text(socket).await, Some(text) if text["type"] == "connection_ack")
}

/// The next text message, or `None` once the server closed the socket (or failed it).
async fn next_text(socket: &mut Socket) -> Option<Value> {
    loop {
        let message = tokio::time::timeout(Duration::from_secs(10), socket.next()).await.expect("the server answers or closes within 10s");
        match message {
            Some(Ok(Message::Text(text))) => return Some(serde_json::from_str(&text).unwrap()),
            Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return None,
            Some(Ok(_)) => continue,
        }
    }
}

/// Waits for the server to close the socket; panics if it sends anything else.
async fn closed(socket: &mut Socket) {
    if let Some(message) = next_text(socket).await {
        panic!("expected the socket to close, got {message}");
    }
}

fn subscribe(id: &str) -> Message {
    let query = "subscription($id: ID!) { orderUpdated(id: $id) { status } }";
    let order = uuid::Uuid::new_v4().to_string();
    Message::text(json!({ "id": id, "type": "subscribe", "payload": { "query": query, "variables": { "id": order } } }).to_string())
}

#[tokio::test]
async fn a_socket_that_does_not_authenticate_in_time_is_closed() {
    let address = serve(limits(), None).await;
    // Silent.
    let started = Instant::now();
    let mut silent = connect(address).await.unwrap();
    closed(&mut silent).await;
    assert!(started.elapsed() >= Duration::from_millis(400), "closed before the init timeout: {:?}", started.elapsed());
    // A wrong token is refused and closed too.
    let mut wrong = connect(address).await.unwrap();
    assert!(!init(&mut wrong, "not-a-token-at-all-000").await);
    closed(&mut wrong).await;
    // A good one is acknowledged and outlives the timeout.
    let mut good = connect(address).await.unwrap();
    assert!(init(&mut good, CLIENT).await);
    tokio::time::sleep(Duration::from_millis(800)).await;
    good.send(Message::text(json!({ "type": "ping" }).to_string())).await.unwrap();
    assert_eq!(next_text(&mut good).await.expect("a pong")["type"], "pong");
}

#[tokio::test]
async fn a_frame_over_the_limit_closes_the_socket_before_it_is_buffered() {
    let address = serve(limits(), None).await;
    let mut socket = connect(address).await.unwrap();
    // 65 KiB of connection_init: over the limit, never parsed.
    let padding = "x".repeat(65 * 1024);
    let init = json!({ "type": "connection_init", "payload": { "Authorization": format!("Bearer {CLIENT}"), "pad": padding } });
    let _ = socket.send(Message::text(init.to_string())).await;
    closed(&mut socket).await;
    // Just under it is fine.
    let mut socket = connect(address).await.unwrap();
    let padding = "x".repeat(60 * 1024);
    let init = json!({ "type": "connection_init", "payload": { "Authorization": format!("Bearer {CLIENT}"), "pad": padding } });
    socket.send(Message::text(init.to_string())).await.unwrap();
    assert_eq!(next_text(&mut socket).await.expect("an ack")["type"], "connection_ack");
}

#[tokio::test]
async fn connections_are_capped_per_token_and_in_all() {
    let address = serve(limits(), None).await;
    let mut first = connect(address).await.unwrap();
    let mut second = connect(address).await.unwrap();
    assert!(init(&mut first, CLIENT).await);
    assert!(init(&mut second, CLIENT).await);
    // A third for the same token is refused at connection_init…
    let mut third = connect(address).await.unwrap();
    assert!(!init(&mut third, CLIENT).await, "a third connection for one token");
    closed(&mut third).await;
    // …while another token still gets one.
    let mut other = connect(address).await.unwrap();
    assert!(init(&mut other, OTHER).await);
    // Closing one frees its place.
    first.close(None).await.unwrap();
    drop(first);
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut again = loop {
        let mut socket = connect(address).await.unwrap();
        if init(&mut socket, CLIENT).await {
            break socket;
        }
        assert!(Instant::now() < deadline, "the closed connection's place was never freed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    // Three are open (second, other, again): one more fits once the refused
    // ones are gone, and the next upgrade is refused with 503 before any frame.
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut fourth = loop {
        match connect(address).await {
            Ok(socket) => break socket,
            Err(status) => assert!(Instant::now() < deadline, "no room for a fourth connection: {status}"),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(connect(address).await.err(), Some(503));
    assert!(init(&mut fourth, OTHER).await);
    again.send(Message::text(json!({ "type": "ping" }).to_string())).await.unwrap();
    assert_eq!(next_text(&mut again).await.unwrap()["type"], "pong");
    drop(second);
}

#[tokio::test]
async fn subscriptions_per_connection_are_capped() {
    let address = serve(limits(), None).await;
    let mut socket = connect(address).await.unwrap();
    assert!(init(&mut socket, CLIENT).await);
    socket.send(subscribe("1")).await.unwrap();
    socket.send(subscribe("2")).await.unwrap();
    // Completing one frees its place.
    socket.send(Message::text(json!({ "id": "1", "type": "complete" }).to_string())).await.unwrap();
    socket.send(subscribe("3")).await.unwrap();
    socket.send(Message::text(json!({ "type": "ping" }).to_string())).await.unwrap();
    // (The server may confirm the completion first.)
    let mut answer = next_text(&mut socket).await.expect("still open with two subscriptions");
    if answer["type"] == "complete" {
        assert_eq!(answer["id"], "1");
        answer = next_text(&mut socket).await.expect("still open with two subscriptions");
    }
    assert_eq!(answer["type"], "pong", "{answer}");
    // A third open one ends the connection.
    socket.send(subscribe("4")).await.unwrap();
    closed(&mut socket).await;
}

#[tokio::test]
async fn a_connection_is_closed_when_its_token_expires() {
    const EXPIRING: &str = "ws-client-token-expiring";
    let expires = chrono::Utc::now() + chrono::Duration::milliseconds(1_500);
    let address = serve(limits(), Some((EXPIRING, expires))).await;
    let mut socket = connect(address).await.unwrap();
    assert!(init(&mut socket, EXPIRING).await);
    socket.send(subscribe("1")).await.unwrap();
    closed(&mut socket).await;
    assert!(chrono::Utc::now() >= expires, "closed before the token expired");
    // And it cannot come back.
    let mut again = connect(address).await.unwrap();
    assert!(!init(&mut again, EXPIRING).await);
}
