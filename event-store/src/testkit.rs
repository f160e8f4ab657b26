//! Helpers for integration tests against real services (feature `testkit`,
//! for dev-dependencies only): service URLs from `STRATA_TEST_*`, loud
//! failure in CI when a service is down, fresh PostgreSQL databases, a
//! JetStream stream of one's own, and [`wait_until`] instead of sleeps.

pub mod proxy;

use std::future::Future;
use std::time::{Duration, Instant};

/// A service URL from `var`, or `default`.
pub fn service_url(var: &str, default: &str) -> String {
    std::env::var(var).unwrap_or_else(|_| default.to_owned())
}

/// Is this a CI run (`CI=true` or `CI=1`)?
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|ci| ci == "true" || ci == "1")
}

/// Fails loudly in CI, skips loudly elsewhere, when a service is down.
pub fn report_unreachable(service: &str, url: &str, how_to_start: &str, err: &dyn std::fmt::Display) {
    if in_ci() {
        panic!("{service} at {url} is unreachable in CI ({err}); start it with: {how_to_start}");
    }
    eprintln!("\n*** SKIPPED: {service} at {url} is unreachable ({err}); start it with: {how_to_start} ***\n");
}

/// Polls `condition` until it returns `Ok` or the deadline passes; then
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

type CleanupFn = Box<dyn FnOnce() -> std::pin::Pin<Box<dyn Future<Output = ()> + Send>> + Send>;

/// What to drop after a test passed (a database, a scratch directory). A
/// failed test keeps its leftovers for inspection.
pub struct Cleanup(Option<CleanupFn>);

impl Cleanup {
    /// Nothing to clean.
    pub fn none() -> Self {
        Self(None)
    }

    /// Runs `cleanup` when [`Cleanup::run`] is called.
    pub fn new<F, Fut>(cleanup: F) -> Self
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        Self(Some(Box::new(move || Box::pin(cleanup()))))
    }

    /// Cleans up.
    pub async fn run(self) {
        if let Some(cleanup) = self.0 {
            cleanup().await;
        }
    }
}

/// MongoDB for read-model tests: `STRATA_TEST_MONGO` (a real replica set,
/// e.g. `mongodb://127.0.0.1:27017/?replicaSet=rs0`), else the
/// `nx-27017` server `.ci/run` starts on port 27018.
pub mod mongo {
    /// The server's URL without a database.
    pub fn base_url() -> String {
        super::service_url("STRATA_TEST_MONGO", "mongodb://127.0.0.1:27018/?directConnection=true")
    }

    /// How to start the server when it is down.
    pub const HOW_TO_START: &str = "python3 -m venv .venv-mongo && .venv-mongo/bin/pip install nx-27017 && .venv-mongo/bin/nx-27017 --db memory --host 127.0.0.1 -p 27018 &";

    /// The URL of `database` on the test server (one database per test).
    pub fn url(database: &str) -> String {
        let base = base_url();
        let (address, options) = base.split_once('?').map_or((base.as_str(), None), |(a, o)| (a, Some(o)));
        let address = address.trim_end_matches('/');
        match options {
            Some(options) => format!("{address}/{database}?{options}"),
            None => format!("{address}/{database}"),
        }
    }

    /// A database name of one's own: `test_<uuid>`.
    pub fn fresh_database() -> String {
        format!("test_{}", uuid::Uuid::new_v4().simple())
    }
}

/// Fresh PostgreSQL databases, one per test.
#[cfg(feature = "postgres")]
pub mod postgres {
    use sqlx::{Connection, Executor, PgConnection};

    /// How to start the service when it is down.
    pub const HOW_TO_START: &str = "pg_ctlcluster --skip-systemctl-redirect 15 main start";

    /// `STRATA_TEST_POSTGRES`, defaulting to the loopback server.
    pub fn admin_url() -> String {
        super::service_url("STRATA_TEST_POSTGRES", "postgres://postgres@127.0.0.1:5432/postgres")
    }

    /// A freshly created, empty database.
    #[derive(Debug)]
    pub struct TestDatabase {
        /// Its URL.
        pub url: String,
        /// Its name.
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

    impl TestDatabase {
        /// Creates a database with a unique name; `None` (after a loud
        /// SKIPPED) when PostgreSQL is down outside CI, a panic in CI.
        pub async fn create() -> Option<Self> {
            let admin = admin_url();
            let mut connection = match PgConnection::connect(&admin).await {
                Ok(connection) => connection,
                Err(err) => {
                    super::report_unreachable("PostgreSQL", &admin, HOW_TO_START, &err);
                    return None;
                }
            };
            let name = format!("strata_test_{}", uuid::Uuid::new_v4().simple());
            connection.execute(format!("CREATE DATABASE {name}").as_str()).await.expect("create test database");
            Some(Self { url: with_database(&admin, &name), name })
        }

        /// Drops the database (after the test passed).
        pub async fn drop_database(self) {
            let mut connection = PgConnection::connect(&admin_url()).await.expect("admin connection");
            connection.execute(format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name).as_str()).await.expect("drop test database");
        }
    }
}

/// A JetStream bus with a stream and subject prefix of its own (`TEST_<uuid>`,
/// `test_<uuid>`), and the cleanup that deletes them; `None` (loudly) when
/// NATS is down outside CI.
#[cfg(feature = "nats")]
pub async fn jetstream() -> Option<(crate::bus::JetStreamBus, Cleanup)> {
    use crate::bus::{JetStreamBus, JetStreamConfig};

    let url = service_url("STRATA_TEST_NATS", "nats://127.0.0.1:4222");
    let id = uuid::Uuid::new_v4().simple().to_string();
    let config =
        JetStreamConfig { stream_name: format!("TEST_{id}"), subject_prefix: format!("test_{id}"), ..JetStreamConfig::new(url.clone()) };
    match JetStreamBus::connect(config).await {
        Ok(bus) => {
            let teardown = bus.clone();
            let cleanup = Cleanup::new(move || async move { teardown.delete().await.expect("delete the test stream") });
            Some((bus, cleanup))
        }
        Err(err) => {
            report_unreachable("NATS JetStream", &url, "nats-server -a 127.0.0.1 -p 4222 -js -sd /var/lib/nats-server &", &err);
            None
        }
    }
}

/// Kafka for tests: a real broker when `STRATA_TEST_KAFKA=host:port` is set,
/// else librdkafka's mock cluster (a Kafka-protocol endpoint on a loopback
/// port, in this process, that child processes can reach too). Each bus gets
/// a topic prefix of its own.
#[cfg(feature = "kafka")]
pub mod kafka {
    use super::Cleanup;
    use crate::bus::{KafkaBus, KafkaConfig};

    /// librdkafka's mock cluster, kept for the whole test process.
    pub type Mock = rdkafka::mocking::MockCluster<'static, rdkafka::producer::DefaultProducerContext>;

    /// A Kafka endpoint for a test.
    pub struct TestKafka {
        /// `host:port` of the broker(s).
        pub brokers: String,
        mock: Option<&'static Mock>,
    }

    impl std::fmt::Debug for TestKafka {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.debug_struct("TestKafka").field("brokers", &self.brokers).field("mock", &self.mock.is_some()).finish()
        }
    }

    impl TestKafka {
        /// `STRATA_TEST_KAFKA`, or a new mock cluster of one broker.
        pub fn start() -> Self {
            if let Ok(brokers) = std::env::var("STRATA_TEST_KAFKA") {
                return Self { brokers, mock: None };
            }
            // The cluster lives until the test process exits: clients still
            // connected to a destroyed mock block when they close.
            let cluster: &'static Mock =
                Box::leak(Box::new(rdkafka::mocking::MockCluster::new(1).expect("librdkafka's mock cluster starts")));
            Self { brokers: cluster.bootstrap_servers(), mock: Some(cluster) }
        }

        /// The mock cluster, to cause its faults (`broker_down`, injected
        /// errors); `None` on a real broker (`STRATA_TEST_KAFKA`).
        pub fn mock(&self) -> Option<&'static Mock> {
            self.mock
        }

        /// Settings with a fresh topic prefix (`test_<uuid>`); on the mock
        /// cluster topics are auto-created (it has no CreateTopics).
        pub fn config(&self) -> KafkaConfig {
            KafkaConfig {
                topic_prefix: format!("test_{}", uuid::Uuid::new_v4().simple()),
                create_topics: self.mock.is_none(),
                // The mock holds every fetch for its full wait, even when records arrive.
                fetch_wait: std::time::Duration::from_millis(if self.mock.is_some() { 5 } else { 100 }),
                // Members killed by the tests hand their partitions over
                // quickly, and topics made during a test are found at once.
                session_timeout: std::time::Duration::from_secs(6),
                metadata_refresh: std::time::Duration::from_secs(1),
                ..KafkaConfig::new(self.brokers.clone())
            }
        }

        /// `kafka://brokers?topic_prefix=…` for a child process.
        pub fn url(&self, config: &KafkaConfig) -> String {
            format!(
                "kafka://{}?topic_prefix={}&create_topics={}&fetch_wait_ms={}&session_timeout_ms={}&metadata_refresh_ms={}",
                self.brokers,
                config.topic_prefix,
                config.create_topics,
                config.fetch_wait.as_millis(),
                config.session_timeout.as_millis(),
                config.metadata_refresh.as_millis()
            )
        }
    }

    /// A Kafka bus with a topic prefix of its own on a [`TestKafka`]; the
    /// cleanup deletes its topics (a real broker; the mock stays until the
    /// test process exits).
    pub async fn bus() -> Option<(KafkaBus, Cleanup)> {
        let kafka = TestKafka::start();
        let config = kafka.config();
        match KafkaBus::connect(config).await {
            Ok(bus) => {
                let teardown = bus.clone();
                let real = kafka.mock.is_none();
                let cleanup = Cleanup::new(move || async move {
                    // The mock has no DeleteTopics (and stays until the process exits).
                    if real {
                        teardown.delete_topics().await;
                    }
                });
                Some((bus, cleanup))
            }
            Err(err) => {
                super::report_unreachable("Kafka", &kafka.brokers, "unset STRATA_TEST_KAFKA to use the mock cluster", &err);
                None
            }
        }
    }
}
