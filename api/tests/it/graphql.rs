//! The GraphQL API of the real binary, over real HTTP and WebSocket: every
//! operation, every role refusal, read-your-writes, the subscription,
//! `orderAt`; bad input and fuzzed requests (a clear coded error, never a
//! 5xx, nothing written). On the embedded stack, and on PostgreSQL +
//! JetStream + Redis with the saga in a process of its own.

use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

use strata_store::testkit::wait_until;

use strata_api::config::Overrides;

use crate::support::{scratch_sqlite, strata, Server};

const CLIENT: &str = "client-token-for-tests-0001";
/// The customer `CLIENT` acts for.
const CUSTOMER: &str = "customer-tests";
/// A second customer's client.
const OTHER: &str = "other-client-token-for-tests";
const OTHER_CUSTOMER: &str = "customer-other";
const AUDITOR: &str = "auditor-token-for-tests-01";
pub(crate) const OPERATOR: &str = "operator-token-for-tests-1";
const EXPIRED: &str = "expired-token-for-tests-01";

pub(crate) fn tokens() -> String {
    format!(
        "client/{CUSTOMER}:{CLIENT},client/{OTHER_CUSTOMER}:{OTHER},auditor:{AUDITOR},operator/ops:{OPERATOR},client/{CUSTOMER}:{EXPIRED}@2020-01-01T00:00:00Z"
    )
}

pub(crate) fn with_tokens(mut server: Server) -> Server {
    for (role, token) in [("client", CLIENT), ("other", OTHER), ("auditor", AUDITOR), ("operator", OPERATOR)] {
        server.tokens.insert(role.into(), token.into());
    }
    server
}

pub(crate) const PLACE: &str = "mutation($input: PlaceOrderInput!) { placeOrder(input: $input) { orderId consistencyToken written { streamId version position replayed } } }";
/// Restocks at the catalog price [`order_input`]'s lines carry (unless `$price` is given).
pub(crate) const RESTOCK: &str = "mutation($sku: String!, $quantity: Int!, $price: Int = 1250) { restock(sku: $sku, quantity: $quantity, unitPriceCents: $price) { streamId version consistencyToken } }";
pub(crate) const ORDER: &str = "query($id: ID!, $token: String) { order(id: $id, waitFor: $token) { id customerId status totalCents failedStep cancelReason sagaStatus sagaReason cursor lines { sku quantity unitPriceCents stock { available } } steps { step status retries lastError } } }";

pub(crate) fn order_input(customer: &str, sku: &str, payment: &str, key: Option<&str>) -> Value {
    json!({ "input": {
        "customerId": customer,
        "paymentMethod": payment,
        "idempotencyKey": key,
        "lines": [{ "sku": sku, "quantity": 2, "unitPriceCents": 1250 }],
        "shippingAddress": { "name": "Ada Lovelace", "street": "Rue de la Loi 16", "city": "Brussels", "postalCode": "1000", "country": "BE" },
    }})
}

async fn place(server: &Server, customer: &str, sku: &str, payment: &str) -> (String, String) {
    place_as(server, "client", customer, sku, payment).await
}

async fn place_as(server: &Server, role: &str, customer: &str, sku: &str, payment: &str) -> (String, String) {
    let data = server.ok(role, PLACE, order_input(customer, sku, payment, None)).await;
    (data["placeOrder"]["orderId"].as_str().unwrap().to_owned(), data["placeOrder"]["consistencyToken"].as_str().unwrap().to_owned())
}

/// Polls `order(id, waitFor: token)` until `done` holds.
async fn order_until(server: &Server, id: &str, token: Option<&str>, what: &str, done: impl Fn(&Value) -> bool) -> Value {
    wait_until(Duration::from_secs(60), || async {
        let data = server.ok("client", ORDER, json!({ "id": id, "token": token })).await;
        if done(&data["order"]) {
            Ok(data["order"].clone())
        } else {
            Err(format!("order {id} not {what}: {}", data["order"]))
        }
    })
    .await
}

/// A `graphql-transport-ws` subscription to `orderUpdated(id)`: every view
/// received, in order, until the server completes it.
struct Subscription {
    socket: tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>,
}

impl Subscription {
    /// Connects with the token in `connection_init`; `None` if the server refuses it.
    async fn open(server: &Server, token: &str, order_id: &str) -> Option<Self> {
        let mut request = format!("ws://{}/graphql", server.address).into_client_request().unwrap();
        request.headers_mut().insert("sec-websocket-protocol", "graphql-transport-ws".parse().unwrap());
        let (mut socket, _) = tokio_tungstenite::connect_async(request).await.expect("websocket upgrade");
        let init = json!({ "type": "connection_init", "payload": { "Authorization": format!("Bearer {token}") } });
        socket.send(Message::text(init.to_string())).await.unwrap();
        let ack = tokio::time::timeout(Duration::from_secs(10), socket.next()).await.expect("an answer to connection_init");
        match ack {
            Some(Ok(Message::Text(text))) if text.contains("connection_ack") => {}
            _ => return None,
        }
        let query = "subscription($id: ID!) { orderUpdated(id: $id) { status failedStep sagaStatus } }";
        let subscribe = json!({ "id": "1", "type": "subscribe", "payload": { "query": query, "variables": { "id": order_id } } });
        socket.send(Message::text(subscribe.to_string())).await.unwrap();
        Some(Self { socket })
    }

    /// The next view, or `None` when the server completed the subscription.
    async fn next(&mut self) -> Option<Value> {
        loop {
            let message = tokio::time::timeout(Duration::from_secs(60), self.socket.next())
                .await
                .expect("no message on the subscription within 60s")
                .expect("the socket closed")
                .expect("a websocket error");
            let Message::Text(text) = message else { continue };
            let message: Value = serde_json::from_str(&text).unwrap();
            match message["type"].as_str() {
                // A refused subscription answers its error as a payload.
                Some("next") if message["payload"].get("errors").is_some() => return None,
                Some("next") => return Some(message["payload"]["data"]["orderUpdated"].clone()),
                // A refused subscription (an `error` message) ends it too.
                Some("complete" | "error") => return None,
                Some("ping") => self.socket.send(Message::text(json!({ "type": "pong" }).to_string())).await.unwrap(),
                _ => panic!("unexpected message {message}"),
            }
        }
    }

    /// Every view until the server completes the subscription.
    async fn rest(&mut self) -> Vec<Value> {
        let mut views = Vec::new();
        while let Some(view) = self.next().await {
            views.push(view);
        }
        views
    }
}

/// What both stacks must do the same way; `sku` is fresh. The saga runs.
async fn reads_writes_roles_and_audit(server: &Server, sku: &str) {
    // Restock, then read it back at once with the consistency token.
    let restocked = server.ok("operator", RESTOCK, json!({ "sku": sku, "quantity": 10 })).await;
    let token = restocked["restock"]["consistencyToken"].as_str().unwrap();
    let stock = server
        .ok(
            "client",
            "query($sku: String!, $t: String) { stock(sku: $sku, waitFor: $t) { sku onHand reserved available } }",
            json!({ "sku": sku, "t": token }),
        )
        .await;
    assert_eq!(stock["stock"], json!({ "sku": sku, "onHand": 10, "reserved": 0, "available": 10 }));

    // A retried restock with a key adds the units once.
    let keyed = "mutation($sku: String!) { restock(sku: $sku, quantity: 5, idempotencyKey: \"delivery-1\") { version replayed } }";
    let first = server.ok("operator", keyed, json!({ "sku": sku })).await;
    let retried = server.ok("operator", keyed, json!({ "sku": sku })).await;
    assert_eq!((first["restock"]["replayed"].as_bool(), retried["restock"]["replayed"].as_bool()), (Some(false), Some(true)));
    assert_eq!(first["restock"]["version"], retried["restock"]["version"]);

    // Idempotent placing: the same key answers the same order and writes once.
    let customer = CUSTOMER.to_owned();
    let first = server.ok("client", PLACE, order_input(&customer, sku, "card", Some("cart-1"))).await;
    let again = server.ok("client", PLACE, order_input(&customer, sku, "card", Some("cart-1"))).await;
    assert_eq!(first["placeOrder"]["orderId"], again["placeOrder"]["orderId"]);
    assert_eq!(first["placeOrder"]["written"]["replayed"], false);
    assert_eq!(again["placeOrder"]["written"]["replayed"], true);
    let order_id = first["placeOrder"]["orderId"].as_str().unwrap().to_owned();

    // Read-your-writes: readable at once, never NOT_FOUND.
    let token = first["placeOrder"]["consistencyToken"].as_str().unwrap();
    let read = server.ok("client", ORDER, json!({ "id": order_id, "token": token })).await;
    assert_eq!(read["order"]["id"], order_id.as_str());
    assert_eq!(read["order"]["totalCents"], 2500);
    assert_eq!(read["order"]["lines"][0]["sku"], sku);

    // The saga confirms it; every step is shown; nested stock is loaded
    // (the stock view is another projection, which may apply the
    // reservation after the order's view: waited for, not assumed).
    let confirmed = order_until(server, &order_id, None, "completed with its stock reserved", |o| {
        o["sagaStatus"] == "COMPLETED" && o["lines"][0]["stock"]["available"].as_u64().is_some_and(|available| available <= 13)
    })
    .await;
    assert_eq!(confirmed["status"], "CONFIRMED");
    let steps: Vec<&str> = confirmed["steps"].as_array().unwrap().iter().map(|s| s["status"].as_str().unwrap()).collect();
    assert_eq!(steps, ["DONE"; 6]);

    // Pagination over one customer's orders.
    for _ in 0..2 {
        let (id, token) = place(server, &customer, sku, "card").await;
        // Settled, so that nothing writes to the log while refusals are checked below.
        order_until(server, &id, Some(&token), "completed", |o| o["sagaStatus"] == "COMPLETED").await;
    }
    let page = "query($c: ID!, $after: String) { orders(customerId: $c, first: 2, after: $after) { nodes { id } pageInfo { hasNextPage endCursor } } }";
    let mut seen = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while seen.len() < 3 {
        seen.clear();
        let mut after = Value::Null;
        loop {
            let data = server.ok("client", page, json!({ "c": customer, "after": after })).await;
            let orders = &data["orders"];
            seen.extend(orders["nodes"].as_array().unwrap().iter().map(|n| n["id"].as_str().unwrap().to_owned()));
            if orders["pageInfo"]["hasNextPage"] != true {
                break;
            }
            after = orders["pageInfo"]["endCursor"].clone();
        }
        assert!(Instant::now() < deadline, "three orders never listed: {seen:?}");
    }
    assert_eq!(seen[0], order_id, "pages come in placing order");
    assert_eq!(seen.iter().collect::<std::collections::HashSet<_>>().len(), 3, "no order twice across pages: {seen:?}");

    // Two customers: a client sees and touches its own customer's orders
    // only; another customer's order does not exist for it.
    let me = server.ok("client", "{ me { role subject } }", json!({})).await;
    assert_eq!(me["me"], json!({ "role": "CLIENT", "subject": CUSTOMER }));
    let own = server.ok("client", "{ orders(first: 100) { nodes { id customerId } } }", json!({})).await;
    let own = own["orders"]["nodes"].as_array().unwrap().clone();
    assert!(own.iter().all(|o| o["customerId"] == CUSTOMER) && own.iter().any(|o| o["id"] == order_id.as_str()), "{own:?}");
    let head = server.head().await;
    let cancel = "mutation($id: ID!, $r: String!) { cancelOrder(orderId: $id, reason: $r) { version } }";
    assert_eq!(server.code("other", ORDER, json!({ "id": order_id })).await, "NOT_FOUND");
    assert_eq!(server.code("other", cancel, json!({ "id": order_id, "r": "mine now" })).await, "NOT_FOUND");
    assert_eq!(server.code("other", PLACE, order_input(CUSTOMER, sku, "card", None)).await, "FORBIDDEN");
    let listed = "query($c: ID!) { orders(customerId: $c) { nodes { id } } }";
    assert_eq!(server.code("other", listed, json!({ "c": CUSTOMER })).await, "FORBIDDEN");
    let theirs = server.ok("other", "{ orders { nodes { id } } }", json!({})).await;
    assert_eq!(theirs["orders"]["nodes"], json!([]), "the other customer has no order");
    let mut spying = Subscription::open(server, OTHER, &order_id).await.expect("the connection itself is accepted");
    assert_eq!(spying.next().await, None, "another customer's order cannot be followed");
    // Waiting for another customer's write answers as for a write that was
    // never made: the whole budget, then TIMEOUT (before, it answered at
    // once when the order existed).
    let nobody = uuid::Uuid::new_v4();
    let (theirs, missing) = tokio::join!(
        async {
            let started = Instant::now();
            (server.code("other", ORDER, json!({ "id": order_id, "token": format!("order-{order_id}@1") })).await, started.elapsed())
        },
        async {
            let started = Instant::now();
            (server.code("other", ORDER, json!({ "id": nobody, "token": format!("order-{nobody}@1") })).await, started.elapsed())
        },
    );
    assert_eq!((theirs.0.as_str(), missing.0.as_str()), ("TIMEOUT", "TIMEOUT"));
    assert!(theirs.1 >= Duration::from_secs(4), "another customer's existing order answered after {:?}", theirs.1);
    let everyone = server.ok("auditor", listed, json!({ "c": CUSTOMER })).await;
    assert!(!everyone["orders"]["nodes"].as_array().unwrap().is_empty(), "auditors read every customer's orders");
    assert_eq!(server.head().await, head, "a refused cross-customer operation wrote to the log");

    // Every role refusal, and none of them writes.
    let head = server.head().await;
    for (role, operation, variables) in [
        ("auditor", PLACE, order_input(&customer, sku, "card", None)),
        ("auditor", RESTOCK, json!({ "sku": sku, "quantity": 1 })),
        ("client", RESTOCK, json!({ "sku": sku, "quantity": 1 })),
        ("auditor", "mutation($id: ID!) { cancelOrder(orderId: $id, reason: \"no\") { version } }", json!({ "id": order_id })),
        ("auditor", "mutation { rebuildProjection(name: \"orders\") { name } }", json!({})),
        ("client", "mutation { pauseProjection(name: \"orders\") { name } }", json!({})),
        ("client", "mutation { resumeProjection(name: \"orders\") { name } }", json!({})),
        ("client", "mutation { rebuildProjection(name: \"orders\") { name } }", json!({})),
        ("client", "query($s: String!) { streamEvents(streamId: $s) { eventId } }", json!({ "s": format!("order-{order_id}") })),
        ("client", "{ globalEvents { eventId } }", json!({})),
        ("client", "query($id: ID!) { orderAt(id: $id, version: 1) { version } }", json!({ "id": order_id })),
        ("client", "{ stuckSagas { orderId } }", json!({})),
        ("client", "mutation($id: ID!) { resumeSaga(orderId: $id) }", json!({ "id": order_id })),
        ("auditor", "mutation($id: ID!) { resumeSaga(orderId: $id) }", json!({ "id": order_id })),
    ] {
        assert_eq!(server.code(role, operation, variables).await, "FORBIDDEN", "{role}: {operation}");
    }
    assert_eq!(server.head().await, head, "a refused operation wrote to the log");

    // Auditors replay the order as of each version and time.
    let stream = format!("order-{order_id}");
    let events = server
        .ok(
            "auditor",
            "query($s: String!) { streamEvents(streamId: $s) { eventType streamVersion position recordedAt metadata } }",
            json!({ "s": stream }),
        )
        .await;
    let events = events["streamEvents"].as_array().unwrap().clone();
    let types: Vec<&str> = events.iter().map(|e| e["eventType"].as_str().unwrap()).collect();
    assert_eq!(types, ["OrderPlaced", "OrderConfirmed"]);
    assert_eq!(events[0]["metadata"]["actor"], format!("graphql:client/{CUSTOMER}"), "{}", events[0]["metadata"]);
    let at = "query($id: ID!, $v: Int, $t: DateTime) { orderAt(id: $id, version: $v, asOf: $t) { version status totalCents events { eventType } } }";
    let v1 = server.ok("auditor", at, json!({ "id": order_id, "v": 1 })).await;
    assert_eq!((v1["orderAt"]["version"].as_u64(), v1["orderAt"]["status"].as_str()), (Some(1), Some("PENDING")));
    let v2 = server.ok("operator", at, json!({ "id": order_id, "v": 2 })).await;
    assert_eq!((v2["orderAt"]["version"].as_u64(), v2["orderAt"]["status"].as_str()), (Some(2), Some("CONFIRMED")));
    let as_of = server.ok("auditor", at, json!({ "id": order_id, "t": events[0]["recordedAt"] })).await;
    assert_eq!(as_of["orderAt"]["version"], 1);
    assert_eq!(server.code("auditor", at, json!({ "id": order_id, "v": 3 })).await, "VALIDATION");
    assert_eq!(server.code("auditor", at, json!({ "id": order_id, "v": 1, "t": events[0]["recordedAt"] })).await, "VALIDATION");
    assert_eq!(server.code("auditor", at, json!({ "id": order_id, "t": "2001-01-01T00:00:00Z" })).await, "NOT_FOUND");
    let global = server
        .ok("auditor", "query($p: Int!) { globalEvents(fromPosition: $p, limit: 3) { position } }", json!({ "p": events[0]["position"] }))
        .await;
    let positions: Vec<u64> = global["globalEvents"].as_array().unwrap().iter().map(|e| e["position"].as_u64().unwrap()).collect();
    assert_eq!(positions.len(), 3);
    assert_eq!(positions[0], events[0]["position"].as_u64().unwrap());
    assert!(positions.windows(2).all(|w| w[0] < w[1]), "{positions:?}");
    let unknown =
        server.code("auditor", "{ streamEvents(streamId: \"order-00000000-0000-0000-0000-000000000000\") { eventId } }", json!({})).await;
    assert_eq!(unknown, "NOT_FOUND");

    // Operators see no stuck saga here, and resuming one that is not stuck
    // changes nothing.
    let stuck = server.ok("auditor", "{ stuckSagas { orderId step reason } }", json!({})).await;
    assert_eq!(stuck["stuckSagas"], json!([]));
    let resumed = server.ok("operator", "mutation($id: ID!) { resumeSaga(orderId: $id) }", json!({ "id": order_id })).await;
    assert_eq!(resumed["resumeSaga"], false);

    // Cancelling a confirmed order: unknown, then twice (the second
    // conflicts); its saga undoes everything and the stock comes back.
    let stock_query = "query($sku: String!) { stock(sku: $sku) { available } }";
    let available = |data: Value| data["stock"]["available"].as_u64().unwrap();
    let before = available(server.ok("client", stock_query, json!({ "sku": sku })).await);
    let nobody = "00000000-0000-0000-0000-000000000001";
    assert_eq!(server.code("client", cancel, json!({ "id": nobody, "r": "changed my mind" })).await, "NOT_FOUND");
    server.ok("client", cancel, json!({ "id": order_id, "r": "changed my mind" })).await;
    assert_eq!(server.code("client", cancel, json!({ "id": order_id, "r": "again" })).await, "CONFLICT");
    let cancelled = order_until(server, &order_id, None, "undone", |o| o["status"] == "CANCELLED" && o["sagaStatus"] == "ABORTED").await;
    assert_eq!(cancelled["cancelReason"], "changed my mind");
    assert_eq!((cancelled["failedStep"].as_str(), cancelled["sagaReason"].as_str()), (None, Some("cancelled: changed my mind")));
    let steps: Vec<(&str, &str)> =
        cancelled["steps"].as_array().unwrap().iter().map(|s| (s["step"].as_str().unwrap(), s["status"].as_str().unwrap())).collect();
    assert_eq!(
        steps,
        [
            ("RESERVE_STOCK", "COMPENSATED"),
            ("AUTHORIZE_PAYMENT", "COMPENSATED"),
            ("CREATE_SHIPMENT", "COMPENSATED"),
            ("CONFIRM_ORDER", "DONE"),
            ("CAPTURE_PAYMENT", "COMPENSATED"),
            ("COMMIT_STOCK", "COMPENSATED")
        ],
        "every step undone: the payment refunded, the shipment cancelled, the stock returned"
    );
    wait_until(Duration::from_secs(30), || async {
        let now = available(server.ok("client", stock_query, json!({ "sku": sku })).await);
        if now == before + 2 {
            Ok(())
        } else {
            Err(format!("{now} available, {before} + 2 expected"))
        }
    })
    .await;

    // An order for a SKU never stocked is cancelled at RESERVE_STOCK, saying why.
    let (never, token) = place(server, &customer, &format!("{sku}-NEVER"), "card").await;
    let refused = order_until(server, &never, Some(&token), "cancelled", |o| o["sagaStatus"] == "ABORTED").await;
    assert_eq!((refused["status"].as_str(), refused["failedStep"].as_str()), (Some("CANCELLED"), Some("RESERVE_STOCK")));
    assert!(refused["cancelReason"].as_str().unwrap().contains("unknown sku"), "{refused}");
    let steps: Vec<&str> = refused["steps"].as_array().unwrap().iter().map(|s| s["status"].as_str().unwrap()).collect();
    assert_eq!(steps, ["FAILED", "CANCELLED", "CANCELLED", "PENDING", "PENDING", "PENDING"], "{refused}");

    // Operators: pause, resume, rebuild (readers switch to a new generation).
    let projection = "{ projections { name state paused generation rebuilding position lag } }";
    let pause = server.ok("operator", "mutation { pauseProjection(name: \"stock\") { name paused state } }", json!({})).await;
    assert_eq!(pause["pauseProjection"], json!({ "name": "stock", "paused": true, "state": "paused" }));
    let resume = server.ok("operator", "mutation { resumeProjection(name: \"stock\") { paused } }", json!({})).await;
    assert_eq!(resume["resumeProjection"]["paused"], false);
    let before = server.ok("client", projection, json!({})).await;
    let generation = |data: &Value| {
        data["projections"].as_array().unwrap().iter().find(|p| p["name"] == "orders").unwrap()["generation"].as_u64().unwrap()
    };
    let old = generation(&before);
    server.ok("operator", "mutation { rebuildProjection(name: \"orders\") { name } }", json!({})).await;
    wait_until(Duration::from_secs(60), || async {
        let now = generation(&server.ok("client", projection, json!({})).await);
        if now > old {
            Ok(())
        } else {
            Err(format!("the rebuild has not switched readers (generation {now})"))
        }
    })
    .await;
    // Once switched, no rebuild is shown and, caught up, the lag is 0 in seconds too.
    let lags = "{ projections { name lag lagSeconds rebuild { eventsDone eventsTotal etaSeconds } } }";
    let orders = wait_until(Duration::from_secs(60), || async {
        let data = server.ok("client", lags, json!({})).await;
        let orders = data["projections"].as_array().unwrap().iter().find(|p| p["name"] == "orders").unwrap().clone();
        if orders["rebuild"].is_null() && orders["lag"] == 0 {
            Ok(orders)
        } else {
            Err(orders)
        }
    })
    .await;
    assert_eq!(orders["lagSeconds"], json!(0.0), "{orders}");
    let after = server.ok("client", ORDER, json!({ "id": order_id })).await;
    assert_eq!(after["order"]["status"], "CANCELLED", "the rebuilt read model has the order");
    assert_eq!(server.code("operator", "mutation { pauseProjection(name: \"nope\") { name } }", json!({})).await, "NOT_FOUND");

    // GraphQL latency is in /metrics.
    let (_, metrics) = crate::support::get(server.address, "/metrics").await;
    let count: u64 = metrics.lines().find_map(|l| l.strip_prefix("strata_graphql_request_seconds_count ")).unwrap().parse().unwrap();
    assert!(count > 30, "{count}");
}

/// The embedded default (SQLite in a scratch directory, every role, the
/// test tokens) built in this test process.
async fn embedded(deadline: &str) -> (crate::support::ScratchSqlite, Server) {
    embedded_with(deadline, Overrides::default()).await
}

/// [`embedded`] with more settings.
async fn embedded_with(deadline: &str, overrides: Overrides) -> (crate::support::ScratchSqlite, Server) {
    let scratch = scratch_sqlite();
    let overrides = Overrides {
        event_store: Some(scratch.url.clone()),
        tokens: Some(tokens()),
        saga_step_deadline: Some(deadline.into()),
        ..overrides
    };
    let server = with_tokens(Server::spawn_app(overrides).await);
    (scratch, server)
}

/// The embedded default as a `strata serve` process, for the tests of the
/// binary (its signals, the `demo` and `bench` commands driving it).
fn embedded_process(deadline: &str) -> (crate::support::ScratchSqlite, Server) {
    let scratch = scratch_sqlite();
    let mut command = strata();
    command.current_dir(scratch.dir.path()).env("STRATA_TOKENS", tokens()).env("STRATA_SAGA_STEP_DEADLINE", deadline);
    let server = with_tokens(Server::start(command));
    (scratch, server)
}

/// The client does not set the price (86e7a2f authorized and captured
/// whatever `unitPriceCents` a client sent: 9,999 units at 0 cents shipped).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_pays_the_catalog_price_or_its_order_is_cancelled_never_charged_less() {
    let (scratch, server) = embedded("5s").await;
    let line = |sku: &str, quantity: i64, price: Option<i64>| {
        let mut input = order_input(CUSTOMER, sku, "card", None);
        input["input"]["lines"] = json!([{ "sku": sku, "quantity": quantity, "unitPriceCents": price }]);
        input
    };
    let placed = |data: Value| {
        (data["placeOrder"]["orderId"].as_str().unwrap().to_owned(), data["placeOrder"]["consistencyToken"].as_str().unwrap().to_owned())
    };
    let settled = |order: &Value| matches!(order["status"].as_str(), Some("CONFIRMED" | "CANCELLED"));
    server.ok("operator", RESTOCK, json!({ "sku": "SKU-PRICED", "quantity": 10_000, "price": 1250 })).await;

    // 9,999 units at 0 cents: cancelled at RESERVE_STOCK, nothing authorized.
    let (cheap, token) = placed(server.ok("client", PLACE, line("SKU-PRICED", 9_999, Some(0))).await);
    let order = order_until(&server, &cheap, Some(&token), "settled", settled).await;
    assert_eq!(
        (order["status"].as_str(), order["failedStep"].as_str(), order["cancelReason"].as_str()),
        (Some("CANCELLED"), Some("RESERVE_STOCK"), Some("price changed: SKU-PRICED is 1250")),
        "{order}"
    );
    let payment = "query($s: String!) { streamEvents(streamId: $s, limit: 10) { eventType } }";
    let payment = server.ok("auditor", payment, json!({ "s": format!("payment-{cheap}") })).await;
    assert_eq!(payment["streamEvents"], json!([{ "eventType": "PaymentFenced" }]), "nothing authorized, only fenced by the undo");

    // No price sent: the catalog's, and that is what the order totals.
    let (fair, token) = placed(server.ok("client", PLACE, line("SKU-PRICED", 3, None)).await);
    let order = order_until(&server, &fair, Some(&token), "settled", settled).await;
    assert_eq!((order["status"].as_str(), order["totalCents"].as_i64()), (Some("CONFIRMED"), Some(3 * 1250)), "{order}");
    assert_eq!(order["lines"][0]["unitPriceCents"], 1250);

    // The operator changes the price: a client still showing the old one is
    // cancelled, one showing the new one pays it.
    let set = "mutation($sku: String!, $p: Int!) { setPrice(sku: $sku, unitPriceCents: $p) { consistencyToken } }";
    let changed = server.ok("operator", set, json!({ "sku": "SKU-PRICED", "p": 1500 })).await;
    let stock = server
        .ok(
            "client",
            "query($t: String) { stock(sku: \"SKU-PRICED\", waitFor: $t) { unitPriceCents } }",
            json!({ "t": changed["setPrice"]["consistencyToken"] }),
        )
        .await;
    assert_eq!(stock["stock"]["unitPriceCents"], 1500, "{stock}");
    let (stale, token) = placed(server.ok("client", PLACE, line("SKU-PRICED", 1, Some(1250))).await);
    let order = order_until(&server, &stale, Some(&token), "settled", settled).await;
    assert_eq!(order["cancelReason"].as_str(), Some("price changed: SKU-PRICED is 1500"), "{order}");
    let (current, token) = placed(server.ok("client", PLACE, line("SKU-PRICED", 1, Some(1500))).await);
    let order = order_until(&server, &current, Some(&token), "settled", settled).await;
    assert_eq!((order["status"].as_str(), order["totalCents"].as_i64()), (Some("CONFIRMED"), Some(1500)), "{order}");

    // A SKU in stock without a price is not for sale: refused when the
    // client sends no price, cancelled when it makes one up.
    server.ok("operator", RESTOCK, json!({ "sku": "SKU-UNPRICED", "quantity": 5, "price": null })).await;
    assert_eq!(server.code("client", PLACE, line("SKU-UNPRICED", 1, None)).await, "VALIDATION");
    let (made_up, token) = placed(server.ok("client", PLACE, line("SKU-UNPRICED", 1, Some(1))).await);
    let order = order_until(&server, &made_up, Some(&token), "settled", settled).await;
    assert_eq!(order["cancelReason"].as_str(), Some("no price for SKU-UNPRICED"), "{order}");

    // Prices are the operator's, and bounded.
    assert_eq!(server.code("client", set, json!({ "sku": "SKU-PRICED", "p": 1 })).await, "FORBIDDEN");
    assert_eq!(server.code("operator", set, json!({ "sku": "SKU-PRICED", "p": -1 })).await, "VALIDATION");
    assert_eq!(server.code("operator", set, json!({ "sku": "bad sku", "p": 1 })).await, "VALIDATION");

    // The oracle agrees: every authorization is the catalog's total.
    let output = strata().current_dir(scratch.dir.path()).args(["audit", "invariants", "--json"]).output().unwrap();
    let report: Value = serde_json::from_slice(&output.stdout).unwrap_or_else(|_| panic!("{}", String::from_utf8_lossy(&output.stderr)));
    assert_eq!(report["violations"], json!([]), "{report}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graphql_on_the_embedded_stack() {
    let (_scratch, server) = embedded_process("1s");
    reads_writes_roles_and_audit(&server, "SKU-EMBEDDED").await;

    // The subscription follows an order whose payment never answers:
    // PENDING while the step retries, then CANCELLED at its 1 s deadline.
    server.ok("operator", RESTOCK, json!({ "sku": "SKU-SUB", "quantity": 5 })).await;
    let (order_id, _) = place(&server, CUSTOMER, "SKU-SUB", "card-no-answer").await;
    let mut subscription = Subscription::open(&server, CLIENT, &order_id).await.expect("subscription accepted");
    let views = subscription.rest().await;
    assert_eq!(views.first().unwrap()["status"], "PENDING", "{views:?}");
    let last = views.last().unwrap();
    assert_eq!(
        (last["status"].as_str(), last["failedStep"].as_str(), last["sagaStatus"].as_str()),
        (Some("CANCELLED"), Some("AUTHORIZE_PAYMENT"), Some("ABORTED")),
        "{views:?}"
    );
    assert!(Subscription::open(&server, "not-a-token-at-all-000", &order_id).await.is_none(), "a bad token must not subscribe");
    assert!(Subscription::open(&server, EXPIRED, &order_id).await.is_none(), "an expired token must not subscribe");

    // SIGTERM while a subscription waits (for an order that never comes):
    // the server still stops, cleanly and promptly.
    let _open = Subscription::open(&server, CLIENT, "00000000-0000-0000-0000-0000000000aa").await.expect("subscription accepted");
    let mut server = server;
    let pid = server.pid().to_string();
    assert!(std::process::Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
    let status = wait_until(Duration::from_secs(15), || {
        let exited = server.child().try_wait().unwrap();
        async move { exited.ok_or("strata did not stop after SIGTERM with a subscription open") }
    })
    .await;
    assert!(status.success(), "exit after SIGTERM: {status}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_a_coded_error_never_a_5xx_and_writes_nothing() {
    let (_scratch, server) = embedded("5s").await;
    server.ok("operator", RESTOCK, json!({ "sku": "SKU-BAD", "quantity": 5 })).await;
    let head = server.head().await;
    let valid = json!({ "query": PLACE, "variables": order_input(CUSTOMER, "SKU-BAD", "card", None) }).to_string();

    // Tokens.
    for (token, says) in
        [(None, "missing bearer token"), (Some("wrong-token-wrong-token"), "invalid token"), (Some(EXPIRED), "token expired")]
    {
        let (status, body) = server.post(token, "application/json", valid.clone().into_bytes()).await;
        assert_eq!(status, 401, "{body}");
        assert_eq!(body["errors"][0]["extensions"]["code"], "UNAUTHENTICATED");
        assert!(body["errors"][0]["message"].as_str().unwrap().contains(says), "{body}");
    }
    // Bodies.
    for (content_type, body, status) in [
        ("application/json", b"{\"query\": ".to_vec(), 400),
        ("application/json", br#"{"query": "{ projections { name } }", "debug": true}"#.to_vec(), 400),
        ("application/json", br#"{"query": "{ projections { name } }", "variables": [1]}"#.to_vec(), 400),
        ("application/json", br#"[{"query": "{ projections { name } }"}]"#.to_vec(), 400),
        ("text/plain", br#"{"query": "{ projections { name } }"}"#.to_vec(), 415),
        (
            "application/json",
            format!("{{\"query\": \"{{ projections {{ name }} }}\", \"x\": \"{}\"}}", "a".repeat(100_000)).into_bytes(),
            413,
        ),
    ] {
        let (got, answer) = server.post(Some(CLIENT), content_type, body).await;
        assert_eq!(got, status, "{answer}");
        assert_eq!(answer["errors"][0]["extensions"]["code"], "VALIDATION", "{answer}");
    }
    // Queries: malformed, unknown fields, too deep, invalid orders.
    let deep = format!("{{ __schema {{ types {}{}  }} }}", "{ ofType ".repeat(30), "{ name }".to_owned() + &"}".repeat(30));
    // More root fields than the limit (20), directly or through a fragment.
    let aliases = |n: usize, field: &str| (0..n).map(|i| format!("a{i}: {field}")).collect::<Vec<_>>().join(" ");
    let twenty = format!("{{ {} }}", aliases(20, "projections { name }"));
    let (status, body) = server.graphql(Some(CLIENT), &twenty, json!({})).await;
    assert!(status == 200 && body.get("errors").is_none(), "twenty root fields are allowed: {body}");
    let order_field =
        "order(id: \"00000000-0000-0000-0000-000000000001\", waitFor: \"order-00000000-0000-0000-0000-000000000001@9\") { id }";
    let mut cases = vec![
        (format!("{{ {} }}", aliases(21, "projections { name }")), json!({})),
        (format!("query {{ ...F }} fragment F on Query {{ {} }}", aliases(21, "projections { name }")), json!({})),
        (format!("{{ {} }}", aliases(350, order_field)), json!({})),
        (format!("mutation {{ {} }}", aliases(21, "restock(sku: \"SKU-BAD\", quantity: 1) { version }")), json!({})),
        ("{ projections { name ".to_owned(), json!({})),
        ("{ projections { nme } }".to_owned(), json!({})),
        ("{ order(id: \"not-a-uuid\") { id } }".to_owned(), json!({})),
        ("{ orders(first: 1000) { nodes { id } } }".to_owned(), json!({})),
        ("{ orders(after: \"x\") { nodes { id } } }".to_owned(), json!({})),
        ("{ stock(sku: \"SKU-BAD\", waitFor: \"nonsense\") { sku } }".to_owned(), json!({})),
        ("{ stock(sku: \"SKU-BAD\", waitFor: \"order-00000000-0000-0000-0000-000000000000@1\") { sku } }".to_owned(), json!({})),
        (deep, json!({})),
        (RESTOCK.to_owned(), json!({ "sku": "sku lower", "quantity": 1 })),
        (RESTOCK.to_owned(), json!({ "sku": "SKU-BAD", "quantity": 0 })),
        (RESTOCK.to_owned(), json!({ "sku": "SKU-BAD", "quantity": "many" })),
        (RESTOCK.to_owned(), json!({ "sku": "SKU-BAD", "quantity": 1, "price": -1 })),
        ("mutation { setPrice(sku: \"SKU-BAD\", unitPriceCents: -1) { version } }".to_owned(), json!({})),
        ("mutation { setPrice(sku: \"sku lower\", unitPriceCents: 1) { version } }".to_owned(), json!({})),
    ];
    let mut invalid_orders = Vec::new();
    for (pointer, value) in [
        ("/input/lines", json!([])),
        ("/input/lines/0/quantity", json!(0)),
        ("/input/lines/0/quantity", json!(10_001)),
        ("/input/lines/0/unitPriceCents", json!(-1)),
        ("/input/lines/0/sku", json!("bad sku")),
        ("/input/shippingAddress/country", json!("XX1")),
        ("/input/shippingAddress/country", json!("be")),
        ("/input/customerId", json!("")),
        ("/input/customerId", json!("c-1\u{202e}")),
        ("/input/paymentMethod", json!("card\u{85}")),
        ("/input/paymentMethod", json!("")),
        ("/input/idempotencyKey", json!("")),
        ("/input/lines/0/color", json!("red")),
    ] {
        let mut variables = order_input(CUSTOMER, "SKU-BAD", "card", None);
        *variables.pointer_mut(pointer).unwrap_or(&mut Value::Null) = value.clone();
        if pointer.ends_with("color") {
            variables["input"]["lines"][0]["color"] = value;
        }
        invalid_orders.push((PLACE.to_owned(), variables));
    }
    cases.extend(invalid_orders);
    for (query, variables) in cases {
        // The operator may restock and place for any customer: only the
        // input's validity is under test.
        let (status, body) = server.graphql(Some(OPERATOR), &query, variables.clone()).await;
        assert_eq!(status, 200, "{query} {variables}: {body}");
        let code = body["errors"][0]["extensions"]["code"].as_str().unwrap_or_else(|| panic!("{query} {variables}: no error in {body}"));
        assert!(["VALIDATION", "NOT_FOUND"].contains(&code), "{query} {variables}: {body}");
        assert!(!body.to_string().contains("sqlx") && !body.to_string().contains("panicked"), "{body}");
    }
    assert_eq!(server.head().await, head, "bad input wrote to the log");
    // A SKU that no SKU can be is VALIDATION before it builds a key, not a lookup.
    for sku in ["sku lower", "SKU:status:X", "SKU-\u{0}"] {
        let code = server.code("client", "query($s: String!) { stock(sku: $s) { sku } }", json!({ "s": sku })).await;
        assert_eq!(code, "VALIDATION", "stock({sku:?})");
    }
}

/// Thousands of generated malformed requests: every answer is a coded
/// error below 500, the server stays up, and the log does not move.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fuzzed_requests_never_panic_never_5xx_never_write() {
    // Thousands of requests a second from one token: over the default rate
    // limit (tested in ws.rs), which would hide what each answer says.
    let (_scratch, server) = embedded_with("5s", Overrides { rate_limit: Some("off".into()), ..Overrides::default() }).await;
    server.ok("operator", RESTOCK, json!({ "sku": "SKU-FUZZ", "quantity": 5 })).await;
    let head = server.head().await;
    let seed: u64 = rand::random();
    eprintln!("fuzz seed {seed}");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    // Every request carries variables the domain refuses, so even a query
    // the mutation leaves valid cannot write.
    let broken_values = [json!(0), json!(-5), json!(1.5), json!("x"), json!(null), json!([]), json!({}), json!(1e300), json!("ß∂ƒ")];
    let garbage = "{}()[]!@#$%^&*<>?/\\\"'|~`:=;+-abcXYZ019\u{0}\u{7f}é漢";
    for round in 0..3_000 {
        let mut variables = order_input(CUSTOMER, "SKU-FUZZ", "card", None);
        variables["input"]["lines"][0]["quantity"] = broken_values[rng.random_range(0..broken_values.len())].clone();
        if variables["input"]["lines"][0]["quantity"] == json!(null) {
            variables["input"]["lines"] = json!([]);
        }
        let mut query: Vec<char> = PLACE.chars().collect();
        for _ in 0..rng.random_range(0..4) {
            let at = rng.random_range(0..=query.len());
            match rng.random_range(0..3) {
                0 => query.insert(at, garbage.chars().nth(rng.random_range(0..garbage.chars().count())).unwrap()),
                1 if at < query.len() => {
                    query.remove(at);
                }
                _ => query.truncate(at),
            }
        }
        let query: String = query.into_iter().collect();
        let body = match round % 4 {
            0 | 1 => json!({ "query": query, "variables": variables }).to_string().into_bytes(),
            2 => {
                let mut bytes = json!({ "query": PLACE, "variables": variables }).to_string().into_bytes();
                let cut = rng.random_range(0..bytes.len());
                bytes.truncate(cut);
                if rng.random_bool(0.5) && !bytes.is_empty() {
                    let at = rng.random_range(0..bytes.len());
                    bytes[at] = rng.random();
                }
                bytes
            }
            _ => (0..rng.random_range(0..200)).map(|_| rng.random::<u8>()).collect(),
        };
        let content_type = if round % 17 == 0 { "application/x-www-form-urlencoded" } else { "application/json" };
        let (status, answer) = server.post(Some(CLIENT), content_type, body.clone()).await;
        assert!(status < 500, "seed {seed} round {round}: HTTP {status} for {:?}: {answer}", String::from_utf8_lossy(&body));
        let code = answer["errors"][0]["extensions"]["code"].as_str();
        assert!(
            matches!(code, Some("VALIDATION" | "NOT_FOUND")),
            "seed {seed} round {round}: {:?} answered {answer}",
            String::from_utf8_lossy(&body)
        );
    }
    // Valid orders but for one control character in one text field: each
    // is refused naming its field.
    let controls: Vec<char> = ('\u{0}'..='\u{1f}').chain(['\u{7f}']).collect();
    for round in 0..300 {
        let mut variables = order_input(CUSTOMER, "SKU-FUZZ", "card", Some("fuzz-key"));
        let pointer = [
            "/input/paymentMethod",
            "/input/idempotencyKey",
            "/input/shippingAddress/name",
            "/input/shippingAddress/street",
            "/input/shippingAddress/city",
            "/input/shippingAddress/postalCode",
            "/input/lines/0/sku",
        ][round % 7];
        let field = variables.pointer_mut(pointer).unwrap();
        let mut text: Vec<char> = field.as_str().unwrap().chars().collect();
        text.insert(rng.random_range(0..=text.len()), controls[rng.random_range(0..controls.len())]);
        *field = Value::String(text.into_iter().collect());
        let (status, answer) = server.graphql(Some(CLIENT), PLACE, variables.clone()).await;
        assert_eq!(status, 200, "seed {seed}: {variables}: {answer}");
        assert_eq!(answer["errors"][0]["extensions"]["code"], "VALIDATION", "seed {seed}: {variables}: {answer}");
    }
    // Alias floods of any size are refused before any resolver runs.
    for _ in 0..30 {
        let n = rng.random_range(21..2_000);
        let fields: Vec<String> = (0..n)
            .map(|i| format!("a{i}: order(id: \"{}\", waitFor: \"order-{}@7\") {{ id }}", uuid::Uuid::new_v4(), uuid::Uuid::new_v4()))
            .collect();
        let query = format!("{{ {} }}", fields.join(" "));
        let (status, answer) = server.post(Some(CLIENT), "application/json", json!({ "query": query }).to_string().into_bytes()).await;
        assert!(status == 200 || status == 413, "seed {seed}: {n} aliases: HTTP {status}: {answer}");
        assert_eq!(answer["errors"][0]["extensions"]["code"], "VALIDATION", "seed {seed}: {n} aliases: {answer}");
    }
    let deep_json = format!("{}{}", "[".repeat(50_000), "]".repeat(50_000));
    let (status, _) = server.post(Some(CLIENT), "application/json", deep_json.into_bytes()).await;
    assert!(status < 500);
    assert_eq!(server.head().await, head, "a fuzzed request wrote to the log");
    server.ok("client", "{ projections { name } }", json!({})).await;
}

#[test]
fn serve_prints_a_development_token_per_role_and_refuses_requests_without_one() {
    let scratch = scratch_sqlite();
    let mut command = strata();
    command.current_dir(scratch.dir.path());
    let server = Server::start(command);
    let mut roles: Vec<&String> = server.tokens.keys().collect();
    roles.sort();
    assert_eq!(roles, ["auditor", "client", "operator"]);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let (status, _) = server.graphql(None, "{ projections { name } }", json!({})).await;
        assert_eq!(status, 401);
        let data = server.ok("client", "{ projections { name } }", json!({})).await;
        assert_eq!(data["projections"][0]["name"], "orders");
        assert_eq!(server.code("auditor", RESTOCK, json!({ "sku": "SKU-1", "quantity": 1 })).await, "FORBIDDEN");
        // GraphiQL's introspection (graphql-js's, with nine levels of ofType) fits the limits.
        let type_ref = format!("kind name {}{}", "ofType { kind name ".repeat(9), "}".repeat(9));
        let introspection = format!(
            "query IntrospectionQuery {{ __schema {{ queryType {{ name }} mutationType {{ name }} subscriptionType {{ name }} \
             types {{ ...FullType }} directives {{ name description locations args {{ ...InputValue }} }} }} }} \
             fragment FullType on __Type {{ kind name description fields(includeDeprecated: true) {{ name description args {{ ...InputValue }} \
             type {{ ...TypeRef }} isDeprecated deprecationReason }} inputFields {{ ...InputValue }} interfaces {{ ...TypeRef }} \
             enumValues(includeDeprecated: true) {{ name description isDeprecated deprecationReason }} possibleTypes {{ ...TypeRef }} }} \
             fragment InputValue on __InputValue {{ name description type {{ ...TypeRef }} defaultValue }} \
             fragment TypeRef on __Type {{ {type_ref} }}"
        );
        let schema = server.ok("client", &introspection, json!({})).await;
        let types = schema["__schema"]["types"].as_array().unwrap();
        assert!(types.iter().any(|t| t["name"] == "PlaceOrderInput"), "introspection lists the schema's types");
        let (status, page) = crate::support::get(server.address, "/graphql").await;
        assert_eq!(status, 200);
        assert!(page.contains("GraphiQL"), "GET /graphql serves GraphiQL");
    });
}

/// Control characters in text are VALIDATION naming the field, before any
/// write; on PostgreSQL (whose jsonb refuses NUL) they used to fail every
/// append sharing their group-commit batch.
async fn hostile_text_is_refused_and_costs_other_writers_nothing(server: &Server) {
    let head = server.head().await;
    let hostile = |customer: &str| {
        let mut input = order_input(customer, "SKU-HOSTILE", "card", None);
        input["input"]["shippingAddress"]["street"] = json!("Rue 1");
        input
    };
    let mut tasks = Vec::new();
    for i in 0..30 {
        let (url, input) = (server.url(), hostile(&format!("c\u{0}{i}")));
        tasks.push(tokio::spawn(async move {
            let body = json!({ "query": PLACE, "variables": input });
            let response = reqwest::Client::new().post(format!("{url}/graphql")).bearer_auth(OPERATOR).json(&body).send().await.unwrap();
            let body: Value = response.json().await.unwrap();
            ("hostile", body["errors"][0]["extensions"]["code"].as_str().unwrap_or("none").to_owned(), body.to_string())
        }));
    }
    for i in 0..120 {
        let url = server.url();
        tasks.push(tokio::spawn(async move {
            // No price: each restock writes one event.
            let body = json!({ "query": RESTOCK, "variables": { "sku": format!("SKU-BUSY-{}", i % 7), "quantity": 1, "price": null } });
            let response = reqwest::Client::new().post(format!("{url}/graphql")).bearer_auth(OPERATOR).json(&body).send().await.unwrap();
            let body: Value = response.json().await.unwrap();
            ("restock", body["errors"][0]["extensions"]["code"].as_str().unwrap_or("none").to_owned(), body.to_string())
        }));
    }
    let mut restocked = 0;
    for task in tasks {
        let (kind, code, body) = task.await.unwrap();
        match kind {
            "hostile" => {
                assert_eq!(code, "VALIDATION", "{body}");
                assert!(body.contains("customer id") && body.contains("control character"), "{body}");
            }
            _ => {
                assert_eq!(code, "none", "a valid restock failed beside hostile input: {body}");
                restocked += 1;
            }
        }
    }
    assert_eq!(restocked, 120);
    assert_eq!(server.head().await, head + 120, "only the restocks wrote");
}

#[cfg(all(feature = "postgres", feature = "nats", feature = "redis"))]
mod distributed {
    use super::*;
    use strata_store::testkit::postgres::TestDatabase;
    use strata_store::testkit::{report_unreachable, Service};

    /// PostgreSQL + JetStream + Redis, with the api, relay and projector in
    /// one process and the saga with its services in another, started late:
    /// orders stay PENDING until it runs, so the subscription sees PENDING
    /// and then CONFIRMED.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn graphql_on_postgres_jetstream_redis() {
        on_jetstream(ReadModel::Redis).await;
    }

    /// The same on PostgreSQL + JetStream + MongoDB (nx-27017, or
    /// `STRATA_TEST_MONGO`).
    #[cfg(feature = "mongo")]
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn graphql_on_postgres_jetstream_mongo() {
        on_jetstream(ReadModel::Mongo).await;
    }

    /// [`distributed`] on a JetStream stream of its own.
    async fn on_jetstream(read_model: ReadModel) {
        let nats = Service::Nats.url();
        if let Err(err) = tokio::net::TcpStream::connect(nats.trim_start_matches("nats://")).await {
            report_unreachable(Service::Nats, &nats, &err);
            return;
        }
        let id = uuid::Uuid::new_v4().simple().to_string();
        distributed(&format!("{nats}?stream=TEST_{id}&subject_prefix=test_{id}"), "nats", read_model, &id).await;
        crate::support::drop_scratch_backends(&nats, None, &id).await;
    }

    /// PostgreSQL + Kafka + MongoDB: neither NATS nor Redis.
    #[cfg(all(feature = "kafka", feature = "mongo"))]
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn graphql_on_postgres_kafka_mongo() {
        let kafka = strata_store::testkit::kafka::TestKafka::start();
        let config = kafka.config();
        distributed(&kafka.url(&config), "kafka", ReadModel::Mongo, &config.topic_prefix).await;
    }

    #[derive(Clone, Copy)]
    enum ReadModel {
        Redis,
        #[cfg_attr(not(feature = "mongo"), allow(dead_code))]
        Mongo,
    }

    /// The same on PostgreSQL + Kafka + Redis (librdkafka's mock cluster in
    /// this process, or `STRATA_TEST_KAFKA`): no NATS at all.
    #[cfg(feature = "kafka")]
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn graphql_on_postgres_kafka_redis() {
        let kafka = strata_store::testkit::kafka::TestKafka::start();
        let config = kafka.config();
        distributed(&kafka.url(&config), "kafka", ReadModel::Redis, &config.topic_prefix).await;
    }

    async fn distributed(bus: &str, backend: &str, read_model: ReadModel, id: &str) {
        let redis = Service::Redis.url();
        let mongo = strata_store::testkit::mongo::url(&format!("test_{id}"));
        let (read_model_url, read_model_backend) = match read_model {
            ReadModel::Redis => (format!("{redis}?key_prefix=test_{id}"), "redis"),
            ReadModel::Mongo => (mongo.clone(), "mongodb"),
        };
        let Some(database) = TestDatabase::create().await else { return };
        let env = |command: &mut std::process::Command| {
            command
                .env("STRATA_EVENT_STORE", &database.url)
                .env("STRATA_BUS", bus)
                .env("STRATA_READ_MODEL", &read_model_url)
                .env("STRATA_TOKENS", tokens());
        };
        // The api, relay and projector in this process; the saga joins later, from a process of its own.
        let server = with_tokens(
            Server::spawn_app(Overrides {
                event_store: Some(database.url.clone()),
                bus: Some(bus.to_owned()),
                read_model: Some(read_model_url.clone()),
                tokens: Some(tokens()),
                roles: Some("api,relay,projector".into()),
                ..Overrides::default()
            })
            .await,
        );

        let (status, ready) = crate::support::get(server.address, "/readyz").await;
        assert_eq!(status, 200, "{ready}");
        let ready: Value = serde_json::from_str(&ready).unwrap();
        assert_eq!(ready["checks"]["bus"], json!({ "backend": backend, "status": "up" }), "{ready}");
        assert_eq!(ready["checks"]["read_model"]["backend"], read_model_backend, "{ready}");
        let restocked = server.ok("operator", RESTOCK, json!({ "sku": "SKU-PG", "quantity": 10 })).await;
        // The projectors are live once the restock is read back (a Kafka
        // consumer group's first join alone takes ~3 s).
        let token = restocked["restock"]["consistencyToken"].as_str().unwrap().to_owned();
        strata_store::testkit::wait_until(Duration::from_secs(60), || {
            let (server, token) = (&server, token.clone());
            async move {
                let query = "query($t: String) { stock(sku: \"SKU-PG\", waitFor: $t) { onHand } }";
                let (_, body) = server.graphql(Some(server.token("operator")), query, json!({ "t": token })).await;
                if body["data"]["stock"]["onHand"] == 10 {
                    Ok(())
                } else {
                    Err(body)
                }
            }
        })
        .await;
        let (order_id, token) = place_as(&server, "operator", "customer-pg", "SKU-PG", "card").await;
        let read = server.ok("operator", ORDER, json!({ "id": order_id, "token": token })).await;
        assert_eq!(read["order"]["status"], "PENDING");
        let mut subscription = Subscription::open(&server, OPERATOR, &order_id).await.expect("subscription accepted");
        let first = subscription.next().await.unwrap();
        assert_eq!(first["status"], "PENDING");
        assert_eq!(first["sagaStatus"], Value::Null, "no saga runs yet");

        let mut saga = strata();
        env(&mut saga);
        saga.arg("serve").env("STRATA_ROLES", "saga,services").stdout(std::process::Stdio::null());
        let mut saga = saga.spawn().unwrap();
        let views = subscription.rest().await;
        let last = views.last().unwrap_or_else(|| panic!("no view after PENDING"));
        assert_eq!((last["status"].as_str(), last["sagaStatus"].as_str()), (Some("CONFIRMED"), Some("COMPLETED")), "{views:?}");

        reads_writes_roles_and_audit(&server, "SKU-PG-2").await;
        hostile_text_is_refused_and_costs_other_writers_nothing(&server).await;

        saga.kill().unwrap();
        saga.wait().unwrap();
        server.stop().await;
        match read_model {
            ReadModel::Redis => crate::support::drop_scratch_redis(&redis, id).await,
            ReadModel::Mongo => crate::support::drop_scratch_mongo(&mongo).await,
        }
        database.drop_database().await;
    }
}

#[test]
fn demo_drives_a_running_server_and_every_order_ends_as_its_rules_say() {
    let (_scratch, server) = embedded_process("1s");
    let demo = || {
        let args =
            ["demo", "--orders", "40", "--seed", "7", "--json", "--url", &server.url(), "--token", CLIENT, "--operator-token", OPERATOR];
        crate::support::run_ok(strata().args(args))
    };
    let output = demo();
    let summary: Value = serde_json::from_slice(&output.stdout).unwrap_or_else(|_| panic!("{}", String::from_utf8_lossy(&output.stdout)));
    assert_eq!(summary["orders"], 40, "{summary}");
    assert_eq!(summary["unexpected"], 0, "{summary}");
    // Seed 7 walks every residue of the scenario's mix twice in 40 orders
    // (RESERVE_STOCK: twice a scarce SKU, once a price the catalog does not have).
    assert_eq!(summary["confirmed"], 24, "{summary}");
    assert_eq!(summary["cancelled"], json!({ "AUTHORIZE_PAYMENT": 8, "CREATE_SHIPMENT": 2, "RESERVE_STOCK": 6 }), "{summary}");
    assert!(summary["settle"]["p99_ms"].as_f64().unwrap() >= summary["settle"]["p50_ms"].as_f64().unwrap());
    // The same seed again places the same orders: nothing new is written.
    let again = demo();
    let again: Value = serde_json::from_slice(&again.stdout).unwrap();
    assert_eq!(again["confirmed"], 24, "{again}");
}

mod batching {
    use std::sync::atomic::Ordering;
    use std::sync::Arc;

    use serde_json::{json, Value};
    use strata_api::auth::Role;
    use strata_api::graphql::{request_data, schema, Api, Limits};
    use strata_store::MemoryEventStore;

    use crate::support::CountingSink;

    /// Five orders of five SKUs: one `orders` query with `lines { stock }`
    /// reads every SKU's stock in one batched load, not one read per line.
    #[tokio::test]
    async fn nested_stock_of_a_page_of_orders_is_loaded_in_one_batch() {
        let store = Arc::new(MemoryEventStore::new(strata_api::backend::registry().unwrap()));
        let sink = Arc::new(CountingSink::default());
        let api = Arc::new(Api::new(store.clone(), None, store.clone(), sink.clone(), Limits::default()));
        let schema = schema(api.clone());
        let run = |query: String| {
            let schema = schema.clone();
            let data = request_data(&api, strata_api::auth::Caller { role: Role::Operator, subject: None, expires: None });
            async move {
                let mut request = async_graphql::Request::new(query);
                request.data = data;
                let response = schema.execute(request).await;
                assert!(response.errors.is_empty(), "{:?}", response.errors);
                response.data.into_json().unwrap()
            }
        };
        for n in 0..5 {
            run(format!("mutation {{ restock(sku: \"SKU-B{n}\", quantity: {}, unitPriceCents: 100) {{ version }} }}", 10 + n)).await;
            run(format!(
                "mutation {{ placeOrder(input: {{ customerId: \"batch\", paymentMethod: \"card\", lines: [{{ sku: \"SKU-B{n}\", quantity: 1, unitPriceCents: 100 }}], shippingAddress: {{ name: \"A\", street: \"S\", city: \"C\", postalCode: \"1\", country: \"BE\" }} }}) {{ orderId }} }}"
            ))
            .await;
        }
        for projection in strata_projections::orders::projections() {
            strata_projections::rebuild(projection, sink.clone(), store.clone(), Default::default(), &mut |_| {}).await.unwrap();
        }
        let (loads, documents) = (sink.loads.load(Ordering::SeqCst), sink.documents.load(Ordering::SeqCst));
        let data: Value =
            run("{ orders(customerId: \"batch\", first: 10) { nodes { lines { sku stock { sku available } } } } }".into()).await;
        let stocks: Vec<Value> = data["orders"]["nodes"].as_array().unwrap().iter().map(|n| n["lines"][0]["stock"].clone()).collect();
        assert_eq!(stocks.len(), 5);
        for (n, stock) in stocks.iter().enumerate() {
            assert_eq!(stock, &json!({ "sku": format!("SKU-B{n}"), "available": 10 + n }));
        }
        assert_eq!(sink.loads.load(Ordering::SeqCst) - loads, 1, "five nested stocks must be one load");
        assert_eq!(sink.documents.load(Ordering::SeqCst) - documents, 0, "no per-item document reads");
    }
}

/// JWT bearer tokens (HS256 here; RS256/ES256 from a JWKS file are covered
/// by the auth module's tests): a client JWT acts for its `sub`, and an
/// expired, wrongly signed, unsigned or incomplete one is 401.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwt_clients_act_for_their_subject_and_bad_jwts_are_refused() {
    use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
    const SECRET: &str = "jwt-secret-for-the-tests-of-strata-0001";
    let scratch = scratch_sqlite();
    let mut server = Server::spawn_app(Overrides {
        event_store: Some(scratch.url.clone()),
        jwt_secret: Some(SECRET.into()),
        jwt_issuer: Some("https://idp.test".into()),
        tokens: Some(format!("operator:{OPERATOR}")),
        ..Overrides::default()
    })
    .await;
    server.tokens.insert("operator".into(), OPERATOR.into());
    let jwt = |claims: Value, secret: &str| {
        encode(&Header::new(Algorithm::HS256), &claims, &EncodingKey::from_secret(secret.as_bytes())).unwrap()
    };
    let exp = (chrono::Utc::now() + chrono::Duration::hours(1)).timestamp();
    let good = json!({ "sub": "c-jwt", "role": "client", "exp": exp, "iss": "https://idp.test" });
    server.tokens.insert("jwt".into(), jwt(good.clone(), SECRET));
    let me = server.ok("jwt", "{ me { role subject } }", json!({})).await;
    assert_eq!(me["me"], json!({ "role": "CLIENT", "subject": "c-jwt" }));
    server.ok("operator", RESTOCK, json!({ "sku": "SKU-JWT", "quantity": 5 })).await;
    let placed = server.ok("jwt", PLACE, order_input("c-jwt", "SKU-JWT", "card", None)).await;
    let order_id = placed["placeOrder"]["orderId"].as_str().unwrap().to_owned();
    wait_until(Duration::from_secs(30), || async {
        let (_, read) = server.graphql(Some(server.token("jwt")), ORDER, json!({ "id": order_id })).await;
        if read["data"]["order"]["sagaStatus"] == "COMPLETED" {
            Ok(())
        } else {
            Err(read.to_string())
        }
    })
    .await;
    assert_eq!(server.code("jwt", PLACE, order_input("c-other", "SKU-JWT", "card", None)).await, "FORBIDDEN");
    let head = server.head().await;
    let mut expired = good.clone();
    expired["exp"] = json!((chrono::Utc::now() - chrono::Duration::hours(2)).timestamp());
    let mut no_role = good.clone();
    no_role.as_object_mut().unwrap().remove("role");
    let mut other_issuer = good.clone();
    other_issuer["iss"] = json!("https://evil.test");
    use base64::Engine;
    let b64 = |v: &Value| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string());
    for (token, says) in [
        (jwt(expired, SECRET), "token expired"),
        (jwt(good.clone(), "not-the-secret-of-this-server-at-all-0001"), "invalid token"),
        (jwt(no_role, SECRET), "invalid token"),
        (jwt(other_issuer, SECRET), "invalid token"),
        (format!("{}.{}.", b64(&json!({ "alg": "none" })), b64(&good)), "invalid token"),
    ] {
        let (status, body) = server.graphql(Some(&token), PLACE, order_input("c-jwt", "SKU-JWT", "card", None)).await;
        assert_eq!(status, 401, "{body}");
        assert!(body["errors"][0]["message"].as_str().unwrap().contains(says), "{body}");
    }
    assert_eq!(server.head().await, head, "a refused token wrote to the log");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_flood_probes_idle_and_under_waiting_requests() {
    let (_scratch, server) = embedded_process("5s");
    let output = strata()
        .args(["bench", "flood", "--url", &server.url(), "--token", OPERATOR, "--attacker-token", CLIENT])
        .args(["--attackers", "4", "--aliases", "3", "--duration", "0.5", "--runs", "1"])
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    let result: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!((result["bench"].as_str(), result["waiting_fields"].as_u64()), (Some("flood"), Some(12)), "{result}");
    let run = &result["runs"][0];
    assert!(run["idle"]["queries"].as_u64().unwrap() > 0 && run["attack"]["queries"].as_u64().unwrap() > 0, "{result}");
    assert!(run["attack_requests"].as_u64().unwrap() >= 4, "{result}");
    assert!(result["p99_ratio"].as_f64().unwrap() > 0.0, "{result}");
}
