//! The HTTP surface keeps its bounds (the subscriptions' WebSocket, rates,
//! request ids): served in-process on port 0 with small limits, and driven
//! by a raw `graphql-transport-ws` client and plain POSTs.

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
/// A second token of CLIENT's customer.
const SAME: &str = "ws-client-token-0003";
const AUDITOR: &str = "ws-auditor-token-0001";

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
    let mut tokens = Tokens::parse(&format!("client/c-1:{CLIENT},client/c-2:{OTHER},client/c-1:{SAME},auditor:{AUDITOR}")).unwrap();
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
        workers: None,
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

/// async-graphql reads messages from binary frames too: they count the same
/// (before, 200 binary `subscribe`s on one socket were all served).
#[tokio::test]
async fn subscriptions_sent_in_binary_frames_are_capped_the_same() {
    let address = serve(limits(), None).await;
    let mut socket = connect(address).await.unwrap();
    assert!(init(&mut socket, CLIENT).await);
    let binary = |id: &str| {
        let Message::Text(text) = subscribe(id) else { unreachable!() };
        Message::binary(text.as_bytes().to_vec())
    };
    // Two are served (the socket still answers a ping)...
    socket.send(binary("1")).await.unwrap();
    socket.send(binary("2")).await.unwrap();
    socket.send(Message::text(json!({ "type": "ping" }).to_string())).await.unwrap();
    assert_eq!(next_text(&mut socket).await.expect("open with two subscriptions")["type"], "pong");
    // ...and a flood past the cap ends the connection at the third.
    for id in 3..10_000 {
        if socket.send(binary(&id.to_string())).await.is_err() {
            break;
        }
    }
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

/// POSTs `{ __typename }` with `token`: the status, `Retry-After` and the first error's code.
async fn post(address: std::net::SocketAddr, token: &str) -> (u16, Option<u64>, Option<String>) {
    let response = reqwest::Client::new()
        .post(format!("http://{address}/graphql"))
        .bearer_auth(token)
        .json(&json!({ "query": "{ __typename }" }))
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    let retry_after = response.headers().get("retry-after").map(|value| value.to_str().unwrap().parse().unwrap());
    let body: Value = response.json().await.unwrap();
    (status, retry_after, body["errors"][0]["extensions"]["code"].as_str().map(str::to_owned))
}

/// The reason of the close frame the server ends `socket` with.
async fn close_reason(socket: &mut Socket) -> String {
    loop {
        match tokio::time::timeout(Duration::from_secs(10), socket.next()).await.expect("closed within 10s") {
            Some(Ok(Message::Close(frame))) => return frame.map(|frame| frame.reason.to_string()).unwrap_or_default(),
            Some(Ok(_)) => continue,
            other => panic!("expected a close frame, got {other:?}"),
        }
    }
}

#[tokio::test]
async fn each_token_has_its_rate_and_an_empty_bucket_answers_429_with_retry_after() {
    let quota = strata_api::rate::parse_rate("test", "3/min").unwrap();
    let address = serve(Limits { rate_per_token: quota, rate_per_ip: None, ..limits() }, None).await;
    for _ in 0..3 {
        assert_eq!(post(address, CLIENT).await, (200, None, None));
    }
    let (status, retry_after, code) = post(address, CLIENT).await;
    assert_eq!((status, code.as_deref()), (429, Some("RATE_LIMITED")));
    let retry_after = retry_after.expect("a Retry-After header");
    assert!((1..=20).contains(&retry_after), "Retry-After: {retry_after}");
    // The same token is refused at the WebSocket too, at the upgrade and at connection_init…
    let mut request = format!("ws://{address}/graphql").into_client_request().unwrap();
    request.headers_mut().insert("sec-websocket-protocol", "graphql-transport-ws".parse().unwrap());
    request.headers_mut().insert("authorization", format!("Bearer {CLIENT}").parse().unwrap());
    match tokio_tungstenite::connect_async(request).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => assert_eq!(response.status().as_u16(), 429),
        other => panic!("the upgrade with a throttled token: {:?}", other.map(|_| ())),
    }
    let mut socket = connect(address).await.unwrap();
    let init = json!({ "type": "connection_init", "payload": { "Authorization": format!("Bearer {CLIENT}") } });
    socket.send(Message::text(init.to_string())).await.unwrap();
    let reason = close_reason(&mut socket).await;
    assert!(reason.contains("too many requests"), "{reason}");
    // …while another token keeps its own bucket.
    assert_eq!(post(address, OTHER).await, (200, None, None));
}

#[tokio::test]
async fn each_address_has_its_rate_before_any_token_is_checked() {
    let quota = strata_api::rate::parse_rate("test", "4/min").unwrap();
    let address = serve(Limits { rate_per_token: None, rate_per_ip: quota, ..limits() }, None).await;
    // Guessing tokens spends the address's bucket…
    for guess in 0..4 {
        let (status, _, code) = post(address, &format!("guessed-token-{guess:08}")).await;
        assert_eq!((status, code.as_deref()), (401, Some("UNAUTHENTICATED")));
    }
    // …so then even a good token from that address waits, and so does an upgrade.
    let (status, retry_after, code) = post(address, CLIENT).await;
    assert_eq!((status, code.as_deref()), (429, Some("RATE_LIMITED")));
    assert!(retry_after.is_some_and(|seconds| seconds >= 1));
    assert_eq!(connect(address).await.err(), Some(429));
    // Every route shares the address's rate: `/readyz` asks every backend,
    // `/metrics` reads the log.
    for path in ["/readyz", "/metrics", "/healthz", "/graphiql/graphiql.min.js"] {
        let status = reqwest::get(format!("http://{address}{path}")).await.unwrap().status().as_u16();
        assert_eq!(status, 429, "{path}");
    }
}

#[tokio::test]
async fn without_limits_nothing_is_throttled() {
    let address = serve(Limits { rate_per_token: None, rate_per_ip: None, ..limits() }, None).await;
    for _ in 0..50 {
        assert_eq!(post(address, CLIENT).await.0, 200);
    }
}

#[tokio::test]
async fn every_answer_carries_a_request_id_its_own_or_the_callers() {
    let address = serve(limits(), None).await;
    let client = reqwest::Client::new();
    let fresh = client.get(format!("http://{address}/healthz")).send().await.unwrap();
    let id = fresh.headers().get("x-request-id").expect("a request id").to_str().unwrap().to_owned();
    uuid::Uuid::parse_str(&id).expect("a new id is a UUID");
    let refused = client.post(format!("http://{address}/graphql")).json(&json!({ "query": "{ __typename }" })).send().await.unwrap();
    assert_eq!(refused.status().as_u16(), 401);
    assert!(refused.headers().contains_key("x-request-id"), "refusals carry one too");
    let given = client
        .post(format!("http://{address}/graphql"))
        .bearer_auth(CLIENT)
        .header("x-request-id", "trace-me-42")
        .json(&json!({ "query": "{ __typename }" }))
        .send()
        .await
        .unwrap();
    assert_eq!(given.headers().get("x-request-id").unwrap(), "trace-me-42");
    // An id that would flood every log line of its request, or carry odd
    // characters into them, is replaced.
    for hostile in ["x".repeat(10_000), "a b\tc".to_owned(), "<script>".to_owned()] {
        let answer = client.get(format!("http://{address}/healthz")).header("x-request-id", &hostile).send().await.unwrap();
        let id = answer.headers().get("x-request-id").expect("a request id").to_str().unwrap().to_owned();
        assert!(uuid::Uuid::parse_str(&id).is_ok(), "{hostile:?} was kept: {id}");
    }
}

/// Sends `operation` (a query or mutation) as subscription `id`; returns the
/// messages about `id` up to its `complete` (or the socket's end).
async fn operation(socket: &mut Socket, id: &str, query: &str, variables: Value) -> Vec<Value> {
    let message = json!({ "id": id, "type": "subscribe", "payload": { "query": query, "variables": variables } });
    socket.send(Message::text(message.to_string())).await.unwrap();
    let mut answers = Vec::new();
    while let Some(answer) = next_text(socket).await {
        if answer["id"] != id {
            continue;
        }
        let done = matches!(answer["type"].as_str(), Some("complete" | "error"));
        answers.push(answer);
        if done {
            break;
        }
    }
    answers
}

/// The first error code among `answers` (in a `next` payload or an `error` message).
fn error_code(answers: &[Value]) -> Option<String> {
    answers.iter().find_map(|answer| {
        let errors = if answer["type"] == "error" { &answer["payload"] } else { &answer["payload"]["errors"] };
        errors[0]["extensions"]["code"].as_str().map(str::to_owned)
    })
}

/// Sockets that have not authenticated hold a place of their address's:
/// past the cap the upgrade is refused (429), and a socket that
/// authenticates gives its place back.
#[tokio::test]
async fn unauthenticated_sockets_are_capped_per_address() {
    let address = serve(Limits { max_ws_unauthenticated_per_address: 2, ..limits() }, None).await;
    let mut first = connect(address).await.unwrap();
    let _second = connect(address).await.unwrap();
    assert_eq!(connect(address).await.err(), Some(429), "a third unauthenticated socket from one address");
    assert!(init(&mut first, CLIENT).await);
    let mut third = connect(address).await.expect("the authenticated socket gave its place back");
    assert!(init(&mut third, OTHER).await);
    // A token at the upgrade is checked there: such a socket takes no place.
    let mut request = format!("ws://{address}/graphql").into_client_request().unwrap();
    request.headers_mut().insert("sec-websocket-protocol", "graphql-transport-ws".parse().unwrap());
    request.headers_mut().insert("authorization", format!("Bearer {OTHER}").parse().unwrap());
    let _ = connect(address).await.expect("one place is free again");
    tokio_tungstenite::connect_async(request).await.expect("a socket with its token at the upgrade is not capped per address");
}

/// Two tokens of one customer share the per-token cap: it counts who a
/// token speaks for, not the token's text.
#[tokio::test]
async fn the_per_token_cap_counts_the_principal() {
    let address = serve(limits(), None).await;
    let mut first = connect(address).await.unwrap();
    let mut second = connect(address).await.unwrap();
    assert!(init(&mut first, CLIENT).await);
    assert!(init(&mut second, SAME).await);
    let mut third = connect(address).await.unwrap();
    assert!(!init(&mut third, SAME).await, "a third connection for customer c-1, through its second token");
    let mut other = connect(address).await.unwrap();
    assert!(init(&mut other, OTHER).await, "another customer has its own");
}

/// Queries sent over a socket take from the token's rate like POSTs (before,
/// 40 in a burst at a 5/s limit were all answered).
#[tokio::test]
async fn operations_over_a_socket_take_from_the_tokens_rate() {
    let quota = strata_api::rate::parse_rate("test", "5/min").unwrap();
    let address = serve(Limits { rate_per_token: quota, rate_per_ip: None, ..limits() }, None).await;
    let mut socket = connect(address).await.unwrap();
    assert!(init(&mut socket, CLIENT).await, "connection_init takes one");
    let mut answered = 0;
    let mut limited = 0;
    for n in 0..40 {
        let answers = operation(&mut socket, &format!("q{n}"), "{ __typename }", json!({})).await;
        match error_code(&answers).as_deref() {
            None => answered += 1,
            Some("RATE_LIMITED") => limited += 1,
            Some(other) => panic!("unexpected {other}: {answers:?}"),
        }
    }
    assert_eq!((answered, limited), (4, 36), "the bucket holds 5, connection_init took one");
    // The same bucket as POSTs.
    assert_eq!(post(address, CLIENT).await.0, 429);
}

/// A query over a socket runs within the request timeout, like a POST; its
/// waitFor does not wait past it.
#[tokio::test]
async fn a_query_over_a_socket_times_out_like_a_post() {
    let limits = Limits { request_timeout: Duration::from_millis(300), read_your_writes_wait: Duration::from_secs(20), ..limits() };
    let address = serve(limits, None).await;
    let mut socket = connect(address).await.unwrap();
    assert!(init(&mut socket, CLIENT).await);
    let order = uuid::Uuid::new_v4();
    let query = "query($id: ID!, $t: String) { order(id: $id, waitFor: $t) { status } }";
    let started = Instant::now();
    let answers = operation(&mut socket, "1", query, json!({ "id": order, "t": format!("order-{order}@1") })).await;
    assert_eq!(error_code(&answers).as_deref(), Some("TIMEOUT"), "{answers:?}");
    assert!(started.elapsed() < Duration::from_secs(10), "waited {:?}", started.elapsed());
}

/// A client waits for stock and for streams keyed by an order id; a token
/// of another stream is refused at once (that says nothing about what
/// exists).
#[tokio::test]
async fn a_client_waits_only_for_stock_and_order_tokens() {
    let address = serve(limits(), None).await;
    let query = "query($t: String) { order(id: \"00000000-0000-0000-0000-000000000001\", waitFor: $t) { status } }";
    let body: Value = reqwest::Client::new()
        .post(format!("http://{address}/graphql"))
        .bearer_auth(CLIENT)
        .json(&json!({ "query": query, "variables": { "t": "order-not-an-order-id@1" } }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(body["errors"][0]["extensions"]["code"], "VALIDATION", "{body}");
}

/// `orderUpdated` on an order nobody placed ends with NOT_FOUND after the
/// grace, not left open.
#[tokio::test]
async fn following_an_order_that_does_not_appear_ends_with_not_found() {
    let address = serve(Limits { subscription_not_found_after: Duration::from_millis(300), ..limits() }, None).await;
    let mut socket = connect(address).await.unwrap();
    assert!(init(&mut socket, CLIENT).await);
    let started = Instant::now();
    let query = "subscription($id: ID!) { orderUpdated(id: $id) { status } }";
    let answers = operation(&mut socket, "1", query, json!({ "id": uuid::Uuid::new_v4() })).await;
    assert_eq!(error_code(&answers).as_deref(), Some("NOT_FOUND"), "{answers:?}");
    assert_eq!(answers.last().unwrap()["type"], "complete", "{answers:?}");
    assert!(started.elapsed() >= Duration::from_millis(250), "answered before the grace: {:?}", started.elapsed());
}

/// A subscription lasts at most its lifetime, then completes.
#[tokio::test]
async fn a_subscription_completes_at_its_lifetime() {
    let limits = Limits { max_subscription_lifetime: Duration::from_millis(500), ..limits() };
    let address = serve(limits, None).await;
    let mut socket = connect(address).await.unwrap();
    assert!(init(&mut socket, CLIENT).await);
    let started = Instant::now();
    let query = "subscription($id: ID!) { orderUpdated(id: $id) { status } }";
    let answers = operation(&mut socket, "1", query, json!({ "id": uuid::Uuid::new_v4() })).await;
    assert_eq!(answers.last().map(|a| a["type"].clone()), Some(json!("complete")), "{answers:?}");
    assert_eq!(error_code(&answers), None, "ended by its lifetime (the 10 s grace is longer): {answers:?}");
    assert!(started.elapsed() >= Duration::from_millis(450), "completed after {:?}", started.elapsed());
    // The connection stays open.
    socket.send(Message::text(json!({ "type": "ping" }).to_string())).await.unwrap();
    assert_eq!(next_text(&mut socket).await.unwrap()["type"], "pong");
}

/// A list's size counts toward the complexity bound: a thousand events of
/// ten fields each is over it, a hundred is not.
#[tokio::test]
async fn the_events_asked_for_count_toward_complexity() {
    let address = serve(limits(), None).await;
    let fields = "eventId eventType schemaVersion streamId streamVersion position recordedAt metadata payload hash";
    let ask = |limit: u32| {
        let query = format!("{{ globalEvents(limit: {limit}) {{ {fields} }} }}");
        async move {
            let body: Value = reqwest::Client::new()
                .post(format!("http://{address}/graphql"))
                .bearer_auth(AUDITOR)
                .json(&json!({ "query": query }))
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            body
        }
    };
    let refused = ask(1_000).await;
    let message = refused["errors"][0]["message"].as_str().unwrap_or_default().to_owned();
    assert!(message.contains("too complex"), "{refused}");
    let answered = ask(100).await;
    assert_eq!(answered["data"]["globalEvents"], json!([]), "{answered}");
}
