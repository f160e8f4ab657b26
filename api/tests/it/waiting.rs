//! Waiting readers cost nearly nothing: a thousand `waitFor` fields for a
//! write that has not landed look at the read model a few times each (when
//! they start, when woken, and at the safety net), not hundreds of times a
//! second; the write wakes them all at once.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde_json::{json, Value};
use strata_api::auth::Tokens;
use strata_api::backend::registry;
use strata_api::graphql::{Api, Limits};
use strata_api::http::{run, AppState, GraphQl};
use strata_projections::sink::{
    Batch, ChangeFeed, Committed, DeadLetter, Dump, GenerationStats, IndexEntry, Loaded, Meta, MetaField, ReadModelSink, SinkError, Target,
};
use strata_projections::{Document, MemorySink};
use strata_store::MemoryEventStore;
use tokio::net::TcpListener;

/// A memory sink that counts how often readers look at stream versions.
#[derive(Default)]
struct Counting {
    inner: MemorySink,
    loads: AtomicU64,
}

#[async_trait]
impl ReadModelSink for Counting {
    fn backend_name(&self) -> &'static str {
        "counting"
    }
    async fn ping(&self) -> Result<(), SinkError> {
        self.inner.ping().await
    }
    async fn live_generation(&self, projection: &str) -> Result<Option<u64>, SinkError> {
        self.inner.live_generation(projection).await
    }
    async fn new_generation(&self, projection: &str) -> Result<u64, SinkError> {
        self.inner.new_generation(projection).await
    }
    async fn switch_live(&self, projection: &str, generation: u64) -> Result<bool, SinkError> {
        self.inner.switch_live(projection, generation).await
    }
    async fn init_live(&self, projection: &str, generation: u64) -> Result<u64, SinkError> {
        self.inner.init_live(projection, generation).await
    }
    async fn drop_generation(&self, target: &Target) -> Result<(), SinkError> {
        self.inner.drop_generation(target).await
    }
    async fn load(&self, target: &Target, streams: &[String], documents: &[String]) -> Result<Loaded, SinkError> {
        self.loads.fetch_add(1, Ordering::Relaxed);
        self.inner.load(target, streams, documents).await
    }
    async fn commit(&self, target: &Target, batch: &Batch) -> Result<Committed, SinkError> {
        self.inner.commit(target, batch).await
    }
    async fn document(&self, projection: &str, key: &str) -> Result<Option<Document>, SinkError> {
        self.inner.document(projection, key).await
    }
    async fn page(&self, projection: &str, index: &str, after: Option<i64>, limit: usize) -> Result<Vec<IndexEntry>, SinkError> {
        self.inner.page(projection, index, after, limit).await
    }
    async fn stats(&self, target: &Target) -> Result<GenerationStats, SinkError> {
        self.inner.stats(target).await
    }
    async fn dead_letters(&self, target: &Target, limit: usize) -> Result<Vec<DeadLetter>, SinkError> {
        self.inner.dead_letters(target, limit).await
    }
    async fn meta(&self, projection: &str) -> Result<Meta, SinkError> {
        self.inner.meta(projection).await
    }
    async fn set_meta(&self, projection: &str, field: MetaField, value: Option<String>) -> Result<(), SinkError> {
        self.inner.set_meta(projection, field, value).await
    }
    async fn dump(&self, target: &Target) -> Result<Dump, SinkError> {
        self.inner.dump(target).await
    }
    async fn changes(&self) -> Result<Option<ChangeFeed>, SinkError> {
        self.inner.changes().await
    }
}

const CLIENT: &str = "waiting-client-token-01";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_waiting_fields_look_a_few_times_each_and_wake_on_the_write() {
    let sink = Arc::new(Counting::default());
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
