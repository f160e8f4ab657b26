//! The distributed topology as local processes (`strata topology`: one api,
//! two replicas of each worker role) on PostgreSQL + JetStream + Redis, and
//! on PostgreSQL + Kafka (librdkafka's mock cluster) + MongoDB (nx-27017), with
//! orders flowing through GraphQL while the test SIGKILLs a process of each
//! role (api, relay, projector, saga, services) at seeded random moments, at
//! least 35 times; the supervisor starts each again. Then every order is
//! settled, `strata audit invariants` and `strata audit verify` hold, and
//! every order's read-model view equals its replay (`orderAt`).
//!
//! Replay a run with `STRATA_KILL_SEED=<the printed seed>`.

use std::collections::HashMap;
use std::io::BufRead;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};
use strata_store::testkit::{report_unreachable, wait_until, Service};
use uuid::Uuid;

use crate::graphql::{order_input, PLACE, RESTOCK};
use crate::support::{strata, TestDatabase};

const OPERATOR: &str = "operator-token-for-topology-1";
const AUDITOR: &str = "auditor-token-for-topology-01";
const KILLS: usize = 35;
const ROLES: [&str; 5] = ["api", "relay", "projector", "saga", "services"];

/// The `strata topology` supervisor; stopped (with its processes) on drop.
struct Supervisor {
    child: std::process::Child,
    /// Current pid of each process, by name (`api-1`, `relay-2`, …).
    pids: Arc<Mutex<HashMap<String, u32>>>,
    /// The exits it reported: (name, pid).
    exits: Arc<Mutex<Vec<(String, u32)>>>,
    up: Arc<AtomicBool>,
}

impl Drop for Supervisor {
    fn drop(&mut self) {
        let _ = std::process::Command::new("kill").arg("-TERM").arg(self.child.id().to_string()).status();
        let _ = self.child.wait();
    }
}

/// A free run of `count` ports, below the kernel's ephemeral range: a port
/// in it can be taken as the source port of any outgoing connection while
/// its process is dead, and the restarted process then fails to bind it
/// ("Address already in use", seen on the Kafka + MongoDB run).
fn free_ports(count: u16) -> u16 {
    let ephemeral_from = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|range| range.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32_768);
    let mut rng = rand::rng();
    loop {
        let base: u16 = rng.random_range(10_000..ephemeral_from.saturating_sub(count).max(10_001));
        let listeners: Vec<_> = (base..base + count).map(|port| std::net::TcpListener::bind(("127.0.0.1", port))).collect();
        if listeners.iter().all(Result::is_ok) {
            return base;
        }
    }
}

/// A GraphQL operation against `url`, retried while the api is down or
/// restarting (mutations carry idempotency keys, so a retry is safe).
async fn graphql(client: &reqwest::Client, url: &str, token: &str, query: &str, variables: Value) -> Value {
    wait_until(Duration::from_secs(60), || async {
        let response = client
            .post(format!("{url}/graphql"))
            .bearer_auth(token)
            .json(&json!({ "query": query, "variables": variables }))
            .timeout(Duration::from_secs(10))
            .send()
            .await
            .map_err(|error| error.to_string())?;
        let body: Value = response.json().await.map_err(|error| error.to_string())?;
        let Some(errors) = body.get("errors") else { return Ok(body["data"].clone()) };
        // Only what a restart explains is retried; anything else is a failure.
        let code = errors[0]["extensions"]["code"].as_str().unwrap_or_default();
        assert!(matches!(code, "INTERNAL" | "UNAVAILABLE" | "TIMEOUT" | "RATE_LIMITED" | "CONFLICT"), "{query}: {errors}");
        Err(errors.to_string())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_role_killed_at_random_moments_while_orders_flow_leaves_every_view_equal_to_its_replay() {
    let _turn = crate::support::MANY_PROCESSES.lock().await;
    let nats = Service::Nats.url();
    let redis = Service::Redis.url();
    if let Err(err) = tokio::net::TcpStream::connect(nats.trim_start_matches("nats://")).await {
        return report_unreachable(Service::Nats, &nats, &err);
    }
    let id = Uuid::new_v4().simple().to_string();
    let bus = format!("{nats}?stream=TEST_{id}&subject_prefix=test_{id}");
    let read_model = format!("{redis}?key_prefix=test_{id}");
    if kill_every_role(&bus, &read_model, Duration::from_millis(20)).await {
        crate::support::drop_scratch_backends(&nats, Some(&redis), &id).await;
    }
}

/// The same on Kafka (librdkafka's mock cluster, or `STRATA_TEST_KAFKA`)
/// and MongoDB (nx-27017, or `STRATA_TEST_MONGO`).
#[cfg(all(feature = "kafka", feature = "mongo"))]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_role_killed_at_random_moments_on_kafka_and_mongo_leaves_every_view_equal_to_its_replay() {
    let _turn = crate::support::MANY_PROCESSES.lock().await;
    let kafka = strata_store::testkit::kafka::TestKafka::start();
    let bus = kafka.url(&kafka.config());
    let mongo = strata_store::testkit::mongo::url(&format!("test_{}", Uuid::new_v4().simple()));
    if let Err(err) = strata_projections::MongoSink::connect(strata_projections::MongoSinkConfig::new(mongo.clone())).await {
        return report_unreachable(Service::Mongo, &mongo, &err);
    }
    // nx-27017 (a wire server in Python over SQLite, every transaction
    // taking turns) applies a few hundred events a second: a slower flow,
    // so that the views can catch up within the settle deadline.
    // `STRATA_TOPOLOGY_PAUSE_MS=20` runs it at the JetStream test's rate.
    let pause = std::env::var("STRATA_TOPOLOGY_PAUSE_MS").ok().and_then(|ms| ms.parse().ok()).unwrap_or(200);
    if kill_every_role(&bus, &mongo, Duration::from_millis(pause)).await {
        crate::support::drop_scratch_mongo(&mongo).await;
    }
}

/// Runs `strata topology` on `bus` and `read_model` while orders flow (each
/// of four writers pausing `pause` between orders) and every role is killed
/// in turn; true when it ran (PostgreSQL was there).
async fn kill_every_role(bus: &str, read_model: &str, pause: Duration) -> bool {
    let Some(database) = TestDatabase::create().await else { return false };
    let seed: u64 = std::env::var("STRATA_KILL_SEED").ok().and_then(|seed| seed.parse().ok()).unwrap_or_else(|| rand::rng().random());
    println!("seed {seed} ({bus}, {read_model})");
    let mut rng = StdRng::seed_from_u64(seed);
    let logs = tempfile::tempdir().unwrap();
    let base = free_ports(9);
    let url = format!("http://127.0.0.1:{base}");

    let mut command = strata();
    command
        .args(["topology", "--api", "1", "--replicas", "2", "--base-port", &base.to_string(), "--logs"])
        .arg(logs.path())
        .env("STRATA_EVENT_STORE", &database.url)
        .env("STRATA_BUS", bus)
        .env("STRATA_READ_MODEL", read_model)
        .env("STRATA_TOKENS", format!("operator:{OPERATOR},auditor:{AUDITOR}"))
        // Long enough that a step outlives the kills of the services
        // answering it (they are back within a second).
        .env("STRATA_SAGA_STEP_DEADLINE", "20s")
        .env("RUST_LOG", "info,sqlx=warn")
        .stdout(std::process::Stdio::piped());
    let mut child = command.spawn().expect("start strata topology");
    let stdout = child.stdout.take().unwrap();
    let supervisor = Supervisor { child, pids: Arc::default(), exits: Arc::default(), up: Arc::default() };
    let (pids, exits, up) = (supervisor.pids.clone(), supervisor.exits.clone(), supervisor.up.clone());
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).lines().map_while(Result::ok) {
            let words: Vec<&str> = line.split_whitespace().collect();
            match words.as_slice() {
                ["started", name, "pid", pid, ..] => {
                    pids.lock().unwrap().insert((*name).to_owned(), pid.parse().unwrap_or_default());
                }
                ["exited", name, "pid", pid, ..] => exits.lock().unwrap().push(((*name).to_owned(), pid.parse().unwrap_or_default())),
                ["topology", "up:", ..] => up.store(true, Ordering::SeqCst),
                _ => {}
            }
        }
    });
    wait_until(Duration::from_secs(60), || async {
        if supervisor.up.load(Ordering::SeqCst) {
            Ok(())
        } else {
            Err("the topology is not up")
        }
    })
    .await;
    assert_eq!(supervisor.pids.lock().unwrap().len(), 9, "1 api and 2 of each worker role");

    let client = reqwest::Client::new();
    for sku in ["SKU-T1", "SKU-T2"] {
        graphql(&client, &url, OPERATOR, RESTOCK, json!({ "sku": sku, "quantity": 10_000 })).await;
    }

    // Orders flow (four at a time) until the kills are over: most for
    // stocked SKUs, every fifth for a SKU never stocked (it compensates).
    let stop = Arc::new(AtomicBool::new(false));
    let placed: Arc<Mutex<Vec<String>>> = Arc::default();
    let writers: Vec<_> = (0..4)
        .map(|writer| {
            let (client, url, stop, placed) = (client.clone(), url.clone(), stop.clone(), placed.clone());
            tokio::spawn(async move {
                let mut n = 0usize;
                while !stop.load(Ordering::SeqCst) {
                    n += 1;
                    let sku = if n.is_multiple_of(5) {
                        "SKU-NEVER"
                    } else if n.is_multiple_of(2) {
                        "SKU-T1"
                    } else {
                        "SKU-T2"
                    };
                    let key = format!("topology-{writer}-{n}");
                    let input = order_input(&format!("customer-{}", n % 7), sku, "card", Some(&key));
                    let data = graphql(&client, &url, OPERATOR, PLACE, input).await;
                    placed.lock().unwrap().push(data["placeOrder"]["orderId"].as_str().unwrap().to_owned());
                    // A steady flow (with 20 ms pauses up to ~200 orders/s from the four), not a flood.
                    tokio::time::sleep(pause).await;
                }
            })
        })
        .collect();

    // The kills: every role in turn (shuffled rounds), a random replica, at
    // a random moment.
    let mut plan: Vec<&str> = Vec::new();
    while plan.len() < KILLS {
        let mut round = ROLES.to_vec();
        round.shuffle(&mut rng);
        plan.extend(round);
    }
    let mut killed: HashMap<&str, usize> = HashMap::new();
    for role in &plan {
        tokio::time::sleep(Duration::from_millis(rng.random_range(150..700))).await;
        let replica = if *role == "api" { 1 } else { rng.random_range(1..=2) };
        let name = format!("{role}-{replica}");
        let pid = supervisor.pids.lock().unwrap()[&name];
        let status = std::process::Command::new("kill").arg("-KILL").arg(pid.to_string()).status().unwrap();
        assert!(
            status.success(),
            "seed {seed}: {name} (pid {pid}) was not running: it ended by itself, or the supervisor had not started it again\n--- its log\n{}",
            crate::support::tail(&logs.path().join(format!("{name}.log")))
        );
        *killed.entry(role).or_default() += 1;
        // Wait for the supervisor to report the exit and start it again
        // before the next kill.
        wait_until(Duration::from_secs(30), || async {
            let reported = supervisor.exits.lock().unwrap().contains(&(name.clone(), pid));
            if reported && supervisor.pids.lock().unwrap()[&name] != pid {
                Ok(())
            } else {
                Err(format!("{name} not started again"))
            }
        })
        .await;
    }
    stop.store(true, Ordering::SeqCst);
    for writer in writers {
        writer.await.unwrap();
    }
    let orders = placed.lock().unwrap().clone();
    println!("{} kills ({killed:?}); {} orders placed", plan.len(), orders.len());
    assert!(ROLES.iter().all(|role| killed.get(role).copied().unwrap_or(0) >= 7), "{killed:?}");
    assert!(orders.len() >= 20, "too few orders flowed: {}", orders.len());

    // Every order settles, and its view equals its replay.
    const VIEW: &str = "query($id: ID!) { order(id: $id) { status customerId totalCents cancelReason failedStep sagaStatus sagaReason steps { step status retries lastError } lines { sku quantity unitPriceCents } } orderAt(id: $id) { status customerId totalCents cancelReason failedStep lines { sku quantity unitPriceCents } } }";
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    for order in &orders {
        loop {
            let data = graphql(&client, &url, AUDITOR, VIEW, json!({ "id": order })).await;
            let (view, replay) = (&data["order"], &data["orderAt"]);
            let settled = matches!(
                (view["status"].as_str(), view["sagaStatus"].as_str()),
                (Some("CONFIRMED"), Some("COMPLETED")) | (Some("CANCELLED"), Some("ABORTED"))
            );
            let mut compared = view.clone();
            for field in ["sagaStatus", "sagaReason", "steps"] {
                compared.as_object_mut().unwrap().remove(field);
            }
            if settled && compared == *replay {
                break;
            }
            if std::time::Instant::now() > deadline {
                let stuck = strata().args(["sagas", "stuck"]).env("STRATA_EVENT_STORE", &database.url).output().unwrap();
                // What the log holds of the saga, and what the invariants say.
                let saga = strata()
                    .args(["audit", "stream", &format!("fulfilment-{order}")])
                    .env("STRATA_EVENT_STORE", &database.url)
                    .output()
                    .unwrap();
                let lag = strata()
                    .args(["projections", "list"])
                    .env("STRATA_EVENT_STORE", &database.url)
                    .env("STRATA_READ_MODEL", read_model)
                    .output()
                    .unwrap();
                let invariants = crate::support::invariants(&database.url, "20s").unwrap_or_else(|report| report);
                let supervisor_log: String = std::fs::read_dir(logs.path())
                    .unwrap()
                    .filter_map(Result::ok)
                    .map(|entry| format!("--- {}\n{}", entry.path().display(), crate::support::tail(&entry.path())))
                    .collect();
                panic!(
                    "seed {seed}: order {order} not settled or not its replay within 120 s:\nview {view}\nreplay {replay}\nstuck sagas: {}\nthe saga's stream in the log:\n{}\naudit invariants:\n{}\nprojections:\n{}\n{supervisor_log}",
                    String::from_utf8_lossy(&stuck.stdout),
                    String::from_utf8_lossy(&saga.stdout),
                    invariants,
                    String::from_utf8_lossy(&lag.stdout),
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    if let Err(report) = crate::support::invariants(&database.url, "20s") {
        panic!("seed {seed}: {report}");
    }
    let output = strata().args(["audit", "verify"]).env("STRATA_EVENT_STORE", &database.url).output().unwrap();
    // stderr too: an audit that cannot run (no connection left) says why there.
    let report = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    assert!(output.status.success() && report.contains("chain intact"), "seed {seed}: {report}");

    drop(supervisor);
    database.drop_database().await;
    true
}
