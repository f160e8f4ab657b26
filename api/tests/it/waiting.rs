//! Waiting readers cost nearly nothing: a thousand `waitFor` fields for a
//! write that has not landed look at the read model a few times each (when
//! they start, when woken, and at the safety net), not hundreds of times a
//! second; the write wakes them all at once.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use strata_api::auth::Tokens;
use strata_api::backend::registry;
use strata_api::graphql::{Api, Limits};
use strata_api::http::{run, AppState, GraphQl};
use strata_projections::sink::{Batch, Target};
use strata_projections::ReadModelSink;
use strata_store::MemoryEventStore;
use tokio::net::TcpListener;

use crate::support::CountingSink;

const CLIENT: &str = "waiting-client-token-01";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_waiting_fields_look_a_few_times_each_and_wake_on_the_write() {
    let sink = Arc::new(CountingSink::default());
    let store = Arc::new(MemoryEventStore::new(registry().unwrap()));
    let limits = Limits { read_your_writes_wait: Duration::from_secs(3), rate_per_token: None, rate_per_ip: None, ..Limits::default() };
    let api = Api::new(store.clone(), None, store.clone(), sink.clone(), limits);
    let state = AppState {
        event_store: store.clone(),
        read_model: Some(sink.clone()),
        checkpoints: store,
        metrics: Default::default(),
        graphql: Some(GraphQl::new(api, Tokens::parse(&format!("client/c-1:{CLIENT}")).unwrap())),
        bus: None,
        workers: None,
    };
    sink.init_live("orders", 1).await.unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(run(listener, state, std::future::pending()));

    // 50 requests of 20 aliased fields, all waiting for version 1 of one order stream.
    let order = uuid::Uuid::new_v4();
    let fields: String = (0..20).map(|i| format!("a{i}: order(id: \"{order}\", waitFor: \"order-{order}@1\") {{ status }} ")).collect();
    let client = reqwest::Client::new();
    let requests: Vec<_> = (0..50)
        .map(|_| {
            let request =
                client.post(format!("http://{address}/graphql")).bearer_auth(CLIENT).json(&json!({ "query": format!("{{ {fields} }}") }));
            tokio::spawn(async move { request.send().await.unwrap().json::<Value>().await.unwrap() })
        })
        .collect();
    // Once every field has looked once, the write lands (as the projector would commit it).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while sink.loads.load(Ordering::Relaxed) < 1_000 {
        assert!(tokio::time::Instant::now() < deadline, "the fields never all looked: {}", sink.loads.load(Ordering::Relaxed));
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let batch = Batch {
        guards: vec![strata_projections::sink::StreamGuard { stream_id: format!("order-{order}"), expected: Some(0), reached: 1 }],
        position: strata_store::Position(1),
        events: 1,
        ..Batch::default()
    };
    sink.commit(&Target { projection: "orders".into(), generation: 1 }, &batch).await.unwrap();
    for request in requests {
        // The write carried no document: each field, woken, finds no order
        // (rather than timing out).
        let answer = request.await.unwrap();
        let codes: Vec<&str> = answer["errors"].as_array().unwrap().iter().filter_map(|e| e["extensions"]["code"].as_str()).collect();
        assert_eq!(codes, vec!["NOT_FOUND"; 20], "{answer}");
    }
    // Each field looked when it started, maybe at its safety net, and once
    // woken: polling every 5 ms would have been hundreds of looks each.
    let loads = sink.loads.load(Ordering::Relaxed);
    assert!(loads <= 1_000 * 4, "{loads} looks for 1,000 waiting fields");
}
