//! Kill tests with the real binary: a relay process and two projector
//! replicas (PostgreSQL → JetStream → Redis, and → MongoDB) are SIGKILLed at
//! seeded random moments while a writer appends several thousand events;
//! after the last restart the read models must equal models rebuilt from the
//! log from scratch.

use std::sync::Arc;
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use strata_projections::orders::sample::{requests, sample, SampleConfig};
use strata_projections::sink::{Dump, Target};
use strata_projections::{orders, MemorySink, ReadModelSink, RedisSink, RedisSinkConfig};
use strata_store::testkit::{report_unreachable, wait_until, Service};
use strata_store::{EventReader, EventStore, PostgresConfig, PostgresEventStore};
use uuid::Uuid;

use crate::support::{tail, Role, TestDatabase};

async fn live_dump(sink: &dyn ReadModelSink, projection: &str) -> Option<Dump> {
    let generation = sink.live_generation(projection).await.ok()??;
    sink.dump(&Target { projection: projection.to_owned(), generation }).await.ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_relay_and_projector_replicas_at_random_moments_loses_and_doubles_nothing() {
    let _turn = crate::support::MANY_PROCESSES.lock().await;
    let redis = Service::Redis.url();
    let id = Uuid::new_v4().simple().to_string();
    let prefix = format!("test_{id}");
    let sink = match RedisSink::connect(RedisSinkConfig { key_prefix: prefix.clone(), ..RedisSinkConfig::new(redis.clone()) }).await {
        Ok(sink) => Arc::new(sink),
        Err(err) => return report_unreachable(Service::Redis, &redis, &err),
    };
    kill_and_compare(sink.clone(), &format!("{redis}?key_prefix={prefix}"), &id).await;
    sink.delete_all().await.unwrap();
}

/// The same with MongoDB read models (nx-27017, or `STRATA_TEST_MONGO`).
#[cfg(feature = "mongo")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_relay_and_projector_replicas_writing_to_mongo_loses_and_doubles_nothing() {
    use strata_projections::{MongoSink, MongoSinkConfig};
    use strata_store::testkit::mongo;
    let _turn = crate::support::MANY_PROCESSES.lock().await;
    let id = Uuid::new_v4().simple().to_string();
    let url = mongo::url(&format!("test_{id}"));
    let sink = match MongoSink::connect(MongoSinkConfig::new(url.clone())).await {
        Ok(sink) => Arc::new(sink),
        Err(err) => return report_unreachable(Service::Mongo, &url, &err),
    };
    kill_and_compare(sink.clone(), &url, &id).await;
    sink.drop_database().await.unwrap();
}

/// Runs the relay and two projectors into `read_model_url` (which `sink`
/// reads) under kills, then compares with a rebuild.
async fn kill_and_compare(sink: Arc<dyn ReadModelSink>, read_model_url: &str, id: &str) {
    let nats = Service::Nats.url();
    let Some(database) = TestDatabase::create().await else { return };
    if let Err(err) = tokio::net::TcpStream::connect(nats.trim_start_matches("nats://")).await {
        return report_unreachable(Service::Nats, &nats, &err);
    }
    let registry = Arc::new(strata_schemas::catalog::registry().unwrap());
    let store = PostgresEventStore::connect(PostgresConfig::new(database.url.clone()), registry).await.unwrap();
    store.migrate().await.unwrap();

    // Replay a run with STRATA_KILL_SEED=<the printed seed>.
    let seed: u64 = std::env::var("STRATA_KILL_SEED").ok().and_then(|seed| seed.parse().ok()).unwrap_or_else(|| rand::rng().random());
    println!("seed {seed}");
    let mut rng = StdRng::seed_from_u64(seed);
    let dir = tempfile::tempdir().unwrap();
    let env = vec![
        ("STRATA_EVENT_STORE", database.url.clone()),
        ("STRATA_BUS", format!("{nats}?stream=TEST_{id}&subject_prefix=test_{id}")),
        ("STRATA_READ_MODEL", read_model_url.to_owned()),
    ];
    // One relay and two projector replicas sharing the consumer groups.
    let mut roles = [
        Role { name: "relay", env: env.clone(), log: dir.path().join("relay.log"), child: None, starts: 0 },
        Role { name: "projector", env: env.clone(), log: dir.path().join("projector-1.log"), child: None, starts: 0 },
        Role { name: "projector", env, log: dir.path().join("projector-2.log"), child: None, starts: 0 },
    ];
    for role in &mut roles {
        role.start();
    }

    // The writer: several thousand events, a request at a time.
    let writer = {
        let store = store.clone();
        tokio::spawn(async move {
            let traffic = sample(SampleConfig { seed, orders: 450, ..SampleConfig::default() });
            let n = traffic.len();
            for request in requests(traffic, 20) {
                store.append(request).await.expect("append");
                // Pacing, not synchronisation: spreads the writes over a few
                // seconds so the kills land while events are still flowing.
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            n
        })
    };
    let mut kills = 0;
    while !writer.is_finished() {
        tokio::time::sleep(Duration::from_millis(rng.random_range(100..600))).await;
        let which = rng.random_range(0..roles.len());
        let role = &mut roles[which];
        assert!(role.alive(), "{} died on its own:\n{}", role.name, tail(&role.log));
        role.kill();
        kills += 1;
        if rng.random_bool(0.5) {
            tokio::time::sleep(Duration::from_millis(rng.random_range(0..300))).await;
        }
        role.start();
    }
    let events = writer.await.unwrap();
    assert!(events >= 3000, "only {events} events");
    assert!(kills >= 4, "only {kills} kills (seed {seed})");
    println!("{events} events, {kills} kills, starts: relay {}, projectors {} and {}", roles[0].starts, roles[1].starts, roles[2].starts);

    // Every read model equals a fresh rebuild from the log.
    let log: Arc<dyn EventReader> = Arc::new(store.clone());
    for projection in orders::projections() {
        let fresh: Arc<dyn ReadModelSink> = Arc::new(MemorySink::new());
        strata_projections::rebuild(projection.clone(), fresh.clone(), log.clone(), Default::default(), &mut |_| {}).await.unwrap();
        let expected = live_dump(&*fresh, projection.name()).await.unwrap();
        assert!(!expected.documents.is_empty());
        let name = projection.name().to_owned();
        let sink = sink.clone();
        wait_until(Duration::from_secs(90), move || {
            let (sink, expected, name) = (sink.clone(), expected.clone(), name.clone());
            async move {
                match live_dump(&*sink, &name).await {
                    Some(live) if live == expected => Ok(()),
                    Some(live) => Err(format!(
                        "{name}: {} of {} documents, {} of {} streams (seed {seed})",
                        live.documents.len(),
                        expected.documents.len(),
                        live.stream_versions.len(),
                        expected.stream_versions.len()
                    )),
                    None => Err(format!("{name}: no live generation (seed {seed})")),
                }
            }
        })
        .await;
    }
    for role in &mut roles {
        assert!(role.alive(), "{} died on its own:\n{}", role.name, tail(&role.log));
        role.kill();
    }

    // Clean up what the test made.
    let client = async_nats::connect(&nats).await.unwrap();
    let _ = async_nats::jetstream::new(client).delete_stream(format!("TEST_{id}")).await;
    database.drop_database().await;
}
