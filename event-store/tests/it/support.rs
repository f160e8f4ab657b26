//! Test helpers: the schema registry the suite uses, event builders, service
//! URLs with loud failure in CI, fresh PostgreSQL databases, and
//! `wait_until`.

use std::sync::Arc;

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

/// A `Noted` event whose stored size in `stream_id` is exactly `bytes`.
pub fn noted_of_size(stream_id: &StreamId, bytes: usize) -> NewEvent {
    noted_of_size_with(stream_id, bytes, EventMetadata::default())
}

/// The same with `metadata` (counted in the size).
pub fn noted_of_size_with(stream_id: &StreamId, bytes: usize, metadata: EventMetadata) -> NewEvent {
    let mut event = noted("");
    event.metadata = metadata;
    let empty = strata_store::stored_bytes(stream_id, &event);
    event.payload = json!({ "text": "x".repeat(bytes - empty) });
    assert_eq!(strata_store::stored_bytes(stream_id, &event), bytes);
    event
}

pub fn to(stream_id: &StreamId, expected: ExpectedVersion, events: Vec<NewEvent>) -> Vec<StreamAppend> {
    vec![StreamAppend { stream_id: stream_id.clone(), expected, events }]
}

pub use strata_store::testkit::wait_until;

/// Sixty concurrent single-event appends, six of them with the text
/// `poison` that the backend under test was set up to refuse below every
/// validation: each poison append fails alone with a backend error, the 54
/// others (sharing its group-commit batches) commit, and nothing poisoned is
/// stored.
pub async fn poison_appends_fail_alone<S>(store: S)
where
    S: strata_store::EventStore + strata_store::EventReader + Clone + 'static,
{
    use strata_store::{AppendError, Position, ReadAll};
    let appends: Vec<_> = (0..60)
        .map(|i| {
            let store = store.clone();
            tokio::spawn(async move {
                let text = if i % 10 == 3 { "poison".to_owned() } else { format!("fine {i}") };
                (text.clone(), store.append(to(&stream("order"), ExpectedVersion::NoStream, vec![noted(&text)])).await)
            })
        })
        .collect();
    let (mut committed, mut refused) = (0, 0);
    for task in appends {
        let (text, result) = task.await.unwrap();
        match (text.as_str(), result) {
            ("poison", Err(AppendError::Backend(_))) => refused += 1,
            ("poison", other) => panic!("the poison append was not refused: {other:?}"),
            (_, Ok(_)) => committed += 1,
            (text, Err(err)) => panic!("{text} failed with its batch: {err}"),
        }
    }
    assert_eq!((committed, refused), (54, 6));
    let stored = store.read_all(ReadAll::after(Position::START, 1_000)).await.unwrap();
    assert_eq!(stored.len(), 54);
    assert!(stored.iter().all(|event| event.payload["text"] != "poison"));
}

#[cfg(feature = "postgres")]
pub mod postgres {
    pub use strata_store::testkit::postgres::TestDatabase;

    pub async fn fresh_database() -> Option<TestDatabase> {
        TestDatabase::create().await
    }
}

pub use strata_store::testkit::Cleanup;

#[cfg(feature = "nats")]
pub use strata_store::testkit::jetstream as test_jetstream;

/// One test of this binary run in a process of its own (an `#[ignore]`d
/// test that another starts), for the starting test to stop (SIGSTOP),
/// continue and kill; killed when dropped, however the test ends.
pub struct TestProcess {
    child: std::process::Child,
    said: std::sync::mpsc::Receiver<String>,
}

impl TestProcess {
    /// Runs the ignored test `name` (its full path) with `env`.
    pub fn start(name: &str, env: &[(&str, &str)]) -> Self {
        use std::io::BufRead;
        let mut command = std::process::Command::new(std::env::current_exe().unwrap());
        command.args(["--exact", name, "--ignored", "--nocapture", "--test-threads", "1"]).stdout(std::process::Stdio::piped());
        for (key, value) in env {
            command.env(key, value);
        }
        let mut child = command.spawn().unwrap();
        let (tell, said) = std::sync::mpsc::channel();
        let stdout = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tell.send(line);
            }
        });
        Self { child, said }
    }

    /// Waits (30 s at most) for a line of its output that ends with `word`.
    pub fn wait_for(&self, word: &str) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match self.said.recv_timeout(left) {
                // libtest's "test … ... " precedes the first word on its line.
                Ok(line) if line.split_whitespace().last() == Some(word) => return,
                Ok(_) => {}
                Err(error) => panic!("the test process did not say {word}: {error}"),
            }
        }
    }

    /// Sends it a signal (`-STOP`, `-CONT`, …).
    pub fn signal(&self, name: &str) {
        let pid = self.child.id().to_string();
        assert!(std::process::Command::new("kill").args([name, &pid]).status().unwrap().success(), "kill {name} {pid}");
    }

    /// Waits for it to exit by itself: whether it succeeded.
    pub fn wait(mut self) -> bool {
        let status = self.child.wait().unwrap();
        status.success()
    }
}

impl Drop for TestProcess {
    fn drop(&mut self) {
        // A stopped process does not stay behind the test.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
