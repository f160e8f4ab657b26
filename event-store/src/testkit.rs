//! Helpers for integration tests against real services (feature `testkit`,
//! for dev-dependencies only): service URLs from `STRATA_TEST_*` or else
//! private servers the test binary starts itself ([`Service::url`]), a
//! failing test when a service is down (unless `STRATA_TEST_SKIP` names it
//! outside CI), fresh PostgreSQL databases, a JetStream stream of one's own,
//! and [`wait_until`] instead of sleeps.

mod private;
pub mod proxy;

use std::future::Future;
use std::time::{Duration, Instant};

/// Is this a CI run (`CI=true` or `CI=1`)?
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|ci| ci == "true" || ci == "1")
}

/// A service the integration tests talk to, named as `STRATA_TEST_SKIP`
/// names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Service {
    /// The PostgreSQL event store (`STRATA_TEST_POSTGRES`).
    Postgres,
    /// NATS JetStream, as a server or its binary (`STRATA_TEST_NATS`).
    Nats,
    /// A Redis read model (`STRATA_TEST_REDIS`).
    Redis,
    /// A real Kafka broker (`STRATA_TEST_KAFKA`; the mock needs none).
    Kafka,
    /// A MongoDB-compatible read model (`STRATA_TEST_MONGO`).
    Mongo,
}

impl Service {
    /// Every service, in the order `STRATA_TEST_SKIP` documents them.
    pub const ALL: [Service; 5] = [Service::Postgres, Service::Nats, Service::Redis, Service::Kafka, Service::Mongo];

    /// Its name in `STRATA_TEST_SKIP`.
    pub fn key(self) -> &'static str {
        match self {
            Service::Postgres => "postgres",
            Service::Nats => "nats",
            Service::Redis => "redis",
            Service::Kafka => "kafka",
            Service::Mongo => "mongo",
        }
    }

    /// The variable that names a running instance for the tests.
    pub fn variable(self) -> &'static str {
        match self {
            Service::Postgres => "STRATA_TEST_POSTGRES",
            Service::Nats => "STRATA_TEST_NATS",
            Service::Redis => "STRATA_TEST_REDIS",
            Service::Kafka => "STRATA_TEST_KAFKA",
            Service::Mongo => "STRATA_TEST_MONGO",
        }
    }

    /// The service's standard address on this machine, used when neither
    /// the variable nor the installed binary gives one.
    fn standard_url(self) -> &'static str {
        match self {
            Service::Postgres => "postgres://postgres@127.0.0.1:5432/postgres",
            Service::Nats => "nats://127.0.0.1:4222",
            Service::Redis => "redis://127.0.0.1:6379",
            Service::Kafka => "127.0.0.1:9092",
            Service::Mongo => "mongodb://127.0.0.1:27018/?directConnection=true",
        }
    }

    /// Where the tests reach the service: the URL its variable names, else
    /// a private server this test binary starts from the installed binary
    /// on a free loopback port (shared by the binary's tests, stopped and
    /// removed after it exits), else the standard local address. Kafka is
    /// the mock cluster unless `STRATA_TEST_KAFKA` names a broker
    /// ([`kafka::TestKafka`]), so only its variable counts here.
    pub fn url(self) -> String {
        std::env::var(self.variable()).ok().or_else(|| private::url(self)).unwrap_or_else(|| self.standard_url().to_owned())
    }

    /// How to get it on this kind of machine when nothing answers.
    pub fn how_to_start(self) -> &'static str {
        match self {
            Service::Postgres => "apt-get install postgresql (the tests start their own server from it), or set STRATA_TEST_POSTGRES",
            Service::Nats => "apt-get install nats-server (the tests start their own server from it), or set STRATA_TEST_NATS",
            Service::Redis => "apt-get install redis-server (the tests start their own server from it), or set STRATA_TEST_REDIS",
            Service::Kafka => "unset STRATA_TEST_KAFKA to use librdkafka's mock cluster",
            Service::Mongo => mongo::HOW_TO_START,
        }
    }

    /// The service a read-model or bus URL names, by its scheme.
    pub fn of_url(url: &str) -> Option<Service> {
        let scheme = url.split_once("://").map(|(scheme, _)| scheme)?;
        Service::ALL.into_iter().find(|service| match service {
            Service::Postgres => scheme == "postgres" || scheme == "postgresql",
            Service::Mongo => scheme == "mongodb",
            other => scheme == other.key(),
        })
    }
}

/// What a test does when its service is unreachable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Unreachable {
    /// Fail, naming the URL and how to start the service.
    Fail,
    /// Skip, because `STRATA_TEST_SKIP` names the service (never in CI).
    Skip,
}

/// The rule: a missing service fails the test unless the run names it in
/// `skip` (`STRATA_TEST_SKIP=redis,kafka`, `all` for every service); under
/// CI nothing is skipped.
pub fn on_unreachable(service: Service, ci: bool, skip: Option<&str>) -> Unreachable {
    on_missing(service.key(), ci, skip)
}

/// The same rule for anything a test needs by `key` in `STRATA_TEST_SKIP`
/// (a service, or a tool: `chromium`, `compose`).
pub fn on_missing(key: &str, ci: bool, skip: Option<&str>) -> Unreachable {
    let named = skip.is_some_and(|skip| skip.split(',').map(str::trim).any(|name| name == key || name == "all"));
    if named && !ci {
        Unreachable::Skip
    } else {
        Unreachable::Fail
    }
}

/// Panics naming the URL and how to start `service`, unless
/// `STRATA_TEST_SKIP` names it outside CI: then it says SKIPPED loudly and
/// the caller returns early.
pub fn report_unreachable(service: Service, url: &str, err: &dyn std::fmt::Display) {
    let skip = std::env::var("STRATA_TEST_SKIP").ok();
    match on_unreachable(service, in_ci(), skip.as_deref()) {
        Unreachable::Skip => eprintln!("\n*** SKIPPED (STRATA_TEST_SKIP names {}): {url} is unreachable ({err}) ***\n", service.key()),
        Unreachable::Fail => panic!(
            "{} at {url} is unreachable ({err}); start it with: {}  (or name it in STRATA_TEST_SKIP={} to skip, outside CI)",
            service.key(),
            service.how_to_start(),
            service.key()
        ),
    }
}

/// For a tool a test needs (`key` as `STRATA_TEST_SKIP` names it) that
/// is not installed: panics naming how to install it, unless
/// `STRATA_TEST_SKIP` names it outside CI; then it says SKIPPED loudly and
/// the caller returns early.
pub fn report_missing(key: &str, what: &str, how_to_install: &str) {
    let skip = std::env::var("STRATA_TEST_SKIP").ok();
    match on_missing(key, in_ci(), skip.as_deref()) {
        Unreachable::Skip => eprintln!("\n*** SKIPPED (STRATA_TEST_SKIP names {key}): {what} is not installed ***\n"),
        Unreachable::Fail => {
            panic!("{what} is not installed; install it with: {how_to_install}  (or name it in STRATA_TEST_SKIP={key} to skip, outside CI)")
        }
    }
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
/// e.g. `mongodb://127.0.0.1:27017/?replicaSet=rs0`), else a private
/// `nx-27017` (on `PATH`, in `.venv-mongo` or in `~/.cache/strata-venv-mongo`).
pub mod mongo {
    /// The server's URL without a database.
    pub fn base_url() -> String {
        super::Service::Mongo.url()
    }

    /// How to get the server when none answers.
    pub const HOW_TO_START: &str =
        "python3 -m venv .venv-mongo && .venv-mongo/bin/pip install nx-27017 (the tests start their own server from it), or set STRATA_TEST_MONGO";

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

    /// The test server's `postgres` database ([`super::Service::url`]).
    pub fn admin_url() -> String {
        super::Service::Postgres.url()
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
        /// SKIPPED) when PostgreSQL is down and `STRATA_TEST_SKIP` names it, else a panic.
        pub async fn create() -> Option<Self> {
            let admin = admin_url();
            let mut connection = match PgConnection::connect(&admin).await {
                Ok(connection) => connection,
                Err(err) => {
                    super::report_unreachable(super::Service::Postgres, &admin, &err);
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
/// NATS is down and `STRATA_TEST_SKIP` names it.
#[cfg(feature = "nats")]
pub async fn jetstream() -> Option<(crate::bus::JetStreamBus, Cleanup)> {
    use crate::bus::{JetStreamBus, JetStreamConfig};

    let url = Service::Nats.url();
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
            report_unreachable(Service::Nats, &url, &err);
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
                super::report_unreachable(super::Service::Kafka, &kafka.brokers, &err);
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{on_missing, on_unreachable, Service, Unreachable};

    #[test]
    fn a_missing_service_fails_unless_the_run_names_it_to_skip() {
        assert_eq!(on_unreachable(Service::Redis, false, None), Unreachable::Fail);
        assert_eq!(on_unreachable(Service::Redis, false, Some("")), Unreachable::Fail);
        assert_eq!(on_unreachable(Service::Redis, false, Some("kafka, mongo")), Unreachable::Fail);
        assert_eq!(on_unreachable(Service::Redis, false, Some("kafka, redis")), Unreachable::Skip);
        assert_eq!(on_unreachable(Service::Postgres, false, Some("all")), Unreachable::Skip);
        // A name is matched whole: "nat" does not skip NATS.
        assert_eq!(on_unreachable(Service::Nats, false, Some("nat")), Unreachable::Fail);
    }

    #[test]
    fn ci_skips_nothing_even_when_the_run_names_a_service() {
        for service in Service::ALL {
            assert_eq!(on_unreachable(service, true, Some("all")), Unreachable::Fail);
            assert_eq!(on_unreachable(service, true, Some(service.key())), Unreachable::Fail);
        }
    }

    /// A missing tool (Chromium, a compose CLI) follows the same rule.
    #[test]
    fn a_missing_tool_fails_unless_the_run_names_it_outside_ci() {
        assert_eq!(on_missing("chromium", false, None), Unreachable::Fail);
        assert_eq!(on_missing("chromium", false, Some("compose")), Unreachable::Fail);
        assert_eq!(on_missing("chromium", false, Some("redis, chromium")), Unreachable::Skip);
        assert_eq!(on_missing("compose", false, Some("all")), Unreachable::Skip);
        assert_eq!(on_missing("compose", true, Some("compose")), Unreachable::Fail);
    }

    #[test]
    fn a_service_is_known_by_its_url_scheme() {
        assert_eq!(Service::of_url("redis://127.0.0.1:6379?key_prefix=x"), Some(Service::Redis));
        assert_eq!(Service::of_url("mongodb://127.0.0.1:27018/db"), Some(Service::Mongo));
        assert_eq!(Service::of_url("nats://127.0.0.1:4222"), Some(Service::Nats));
        assert_eq!(Service::of_url("postgresql://x/y"), Some(Service::Postgres));
        assert_eq!(Service::of_url("kafka://mock"), Some(Service::Kafka));
        assert_eq!(Service::of_url("sqlite:strata.db"), None);
    }

    /// Where no variable names Redis, the tests of a binary share one
    /// private server, not the machine's: it answers PING on a port of its
    /// own, and asking again gives the same one.
    #[test]
    fn without_a_url_the_tests_of_a_binary_share_a_private_server() {
        use std::io::{Read, Write};

        let url = Service::Redis.url();
        if let Ok(named) = std::env::var(Service::Redis.variable()) {
            assert_eq!(url, named, "the variable wins");
            return;
        }
        if super::private::url(Service::Redis).is_none() {
            assert_eq!(url, Service::Redis.standard_url(), "without redis-server, the standard port");
            return;
        }
        assert_eq!(Service::Redis.url(), url, "one server per test binary");
        let address = url.strip_prefix("redis://").expect("a redis URL");
        assert_ne!(address, "127.0.0.1:6379", "not the machine's server");
        let mut connection = std::net::TcpStream::connect(address).expect("the private server listens");
        connection.write_all(b"PING\r\n").unwrap();
        let mut answer = [0; 7];
        connection.read_exact(&mut answer).unwrap();
        assert_eq!(&answer, b"+PONG\r\n");
    }
}
