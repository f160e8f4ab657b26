//! Test helpers: the schema registry the suite uses, event builders, service
//! URLs with loud failure in CI, fresh PostgreSQL databases, and
//! `wait_until`.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use strata_schemas::{catalog, SchemaRegistry};
use strata_store::{EventMetadata, ExpectedVersion, NewEvent, StreamAppend, StreamId};
use uuid::Uuid;

const NOTED_V1: &str = r#"{
  "type": "object", "additionalProperties": false, "required": ["text"],
  "properties": { "text": { "type": "string", "maxLength": 2000000 }, "n": { "type": "integer", "minimum": 0 } }
}"#;
const COUNTED_V1: &str = r#"{
  "type": "object", "additionalProperties": false, "required": ["n"],
  "properties": { "n": { "type": "integer" } }
}"#;
const COUNTED_V2: &str = r#"{
  "type": "object", "additionalProperties": false, "required": ["count", "unit"],
  "properties": { "count": { "type": "integer" }, "unit": { "type": "string" } }
}"#;

fn counted_v1_to_v2(payload: Value) -> Result<Value, String> {
    let n = payload.get("n").and_then(Value::as_i64).ok_or("n is missing")?;
    Ok(json!({ "count": n, "unit": "piece" }))
}

/// The reference catalog plus two test types: `Noted` (v1) and `Counted` (v1, v2).
pub fn registry() -> Arc<SchemaRegistry> {
    let mut builder = SchemaRegistry::builder();
    for &(event_type, version, schema) in catalog::SCHEMA_FILES {
        builder = builder.schema(event_type, version, schema);
    }
    Arc::new(
        builder
            .upcaster("OrderPlaced", 1, catalog::order_placed_v1_to_v2)
            .schema("Noted", 1, NOTED_V1)
            .schema("Counted", 1, COUNTED_V1)
            .schema("Counted", 2, COUNTED_V2)
            .upcaster("Counted", 1, counted_v1_to_v2)
            .build()
            .expect("test registry builds"),
    )
}

pub fn stream(category: &str) -> StreamId {
    StreamId::new(category, Uuid::new_v4().simple()).unwrap()
}

pub fn noted(text: &str) -> NewEvent {
    NewEvent {
        event_id: Uuid::new_v4(),
        event_type: "Noted".into(),
        schema_version: 1,
        payload: json!({ "text": text }),
        metadata: EventMetadata::default(),
    }
}

pub fn to(stream_id: &StreamId, expected: ExpectedVersion, events: Vec<NewEvent>) -> Vec<StreamAppend> {
    vec![StreamAppend {
        stream_id: stream_id.clone(),
        expected,
        events,
    }]
}

/// A service URL from `var`, or `default`.
pub fn service_url(var: &str, default: &str) -> String {
    std::env::var(var).unwrap_or_else(|_| default.to_owned())
}

/// Fails loudly in CI, skips loudly elsewhere, when a service is down.
pub fn report_unreachable(service: &str, url: &str, how_to_start: &str, err: &dyn std::fmt::Display) {
    if std::env::var("CI").is_ok_and(|ci| ci == "true" || ci == "1") {
        panic!("{service} at {url} is unreachable in CI ({err}); start it with: {how_to_start}");
    }
    eprintln!("\n*** SKIPPED: {service} at {url} is unreachable ({err}); start it with: {how_to_start} ***\n");
}

/// Polls `condition` until it returns `Some` or the deadline passes; then
/// panics with the last state it saw.
pub async fn wait_until<T, S: std::fmt::Debug, F, Fut>(deadline: Duration, mut condition: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, S>>,
{
    let start = Instant::now();
    loop {
        match condition().await {
            Ok(value) => return value,
            Err(state) if start.elapsed() > deadline => {
                panic!("condition not met within {deadline:?}; last state: {state:?}")
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
        }
    }
}

#[cfg(feature = "postgres")]
pub mod postgres {
    use sqlx::{Connection, Executor, PgConnection};

    pub const HOW_TO_START: &str = "pg_ctlcluster --skip-systemctl-redirect 15 main start";

    pub fn admin_url() -> String {
        super::service_url("STRATA_TEST_POSTGRES", "postgres://postgres@127.0.0.1:5432/postgres")
    }

    /// A freshly created, empty database; dropped by [`TestDatabase::drop_database`].
    pub struct TestDatabase {
        pub url: String,
        pub name: String,
    }

    fn with_database(url: &str, name: &str) -> String {
        let (base, query) = url.split_once('?').map_or((url, None), |(b, q)| (b, Some(q)));
        let base = base.rsplit_once('/').map_or(base, |(prefix, _)| prefix);
        match query {
            Some(query) => format!("{base}/{name}?{query}"),
            None => format!("{base}/{name}"),
        }
    }

    pub async fn fresh_database() -> Option<TestDatabase> {
        let admin = admin_url();
        let mut connection = match PgConnection::connect(&admin).await {
            Ok(connection) => connection,
            Err(err) => {
                super::report_unreachable("PostgreSQL", &admin, HOW_TO_START, &err);
                return None;
            }
        };
        let name = format!("strata_test_{}", uuid::Uuid::new_v4().simple());
        connection
            .execute(format!("CREATE DATABASE {name}").as_str())
            .await
            .expect("create test database");
        Some(TestDatabase {
            url: with_database(&admin, &name),
            name,
        })
    }

    impl TestDatabase {
        pub async fn drop_database(self) {
            let mut connection = PgConnection::connect(&admin_url()).await.expect("admin connection");
            connection
                .execute(format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name).as_str())
                .await
                .expect("drop test database");
        }
    }
}

/// Runs after a test passed: drops what the test created.
pub struct Cleanup(Option<Box<dyn FnOnce() -> std::pin::Pin<Box<dyn Future<Output = ()> + Send>> + Send>>);

impl Cleanup {
    pub fn none() -> Self {
        Self(None)
    }

    pub fn new<F, Fut>(cleanup: F) -> Self
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        Self(Some(Box::new(move || Box::pin(cleanup()))))
    }

    pub async fn run(self) {
        if let Some(cleanup) = self.0 {
            cleanup().await;
        }
    }
}
