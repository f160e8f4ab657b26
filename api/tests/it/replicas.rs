//! Every role split into replicas on PostgreSQL + JetStream + Redis — an api,
//! a relay, two projectors and two saga workers (each with its services) —
//! while `strata demo` drives orders of every branch through GraphQL and the
//! test SIGKILLs projector and saga replicas at seeded random moments. A
//! reader meanwhile pages through every order view and fails on a view no
//! prefix of the log produces (a saga ABORTED beside an order not CANCELLED,
//! a saga COMPLETED beside an order still PENDING). In the end the demo
//! counts no order that ended otherwise than its rules say, and `strata
//! audit invariants` finds nothing.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};
use strata_store::testkit::{report_unreachable, wait_until, Service};
use uuid::Uuid;

use crate::support::{strata, tail, Role, Server, TestDatabase};

const CLIENT: &str = "client-token-for-replicas-01";
const OPERATOR: &str = "operator-token-for-replicas-1";
const ORDERS: usize = 240;
const MIN_KILLS: usize = 12;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_ends_every_order_as_its_rules_say_while_replicas_are_killed_and_no_view_is_torn() {
    let _turn = crate::support::MANY_PROCESSES.lock().await;
    let nats = Service::Nats.url();
    let redis = Service::Redis.url();
    let Some(database) = TestDatabase::create().await else { return };
    if let Err(err) = tokio::net::TcpStream::connect(nats.trim_start_matches("nats://")).await {
        return report_unreachable(Service::Nats, &nats, &err);
    }
    let seed: u64 = rand::rng().random();
    println!("seed {seed}");
    let mut rng = StdRng::seed_from_u64(seed);
    let id = Uuid::new_v4().simple().to_string();
    let dir = tempfile::tempdir().unwrap();
    let env = vec![
        ("STRATA_EVENT_STORE", database.url.clone()),
        ("STRATA_BUS", format!("{nats}?stream=TEST_{id}&subject_prefix=test_{id}")),
        ("STRATA_READ_MODEL", format!("{redis}?key_prefix=test_{id}")),
        ("STRATA_TOKENS", format!("client/customer-demo:{CLIENT},operator:{OPERATOR}")),
        // Long enough that a step outlives the kills of the replica driving
        // it; the orders whose payment never answers wait this long.
        ("STRATA_SAGA_STEP_DEADLINE", "20s".to_owned()),
    ];
    let role = |name: &'static str, log: &str| Role { name, env: env.clone(), log: dir.path().join(log), child: None, starts: 0 };
    let mut relay = role("relay", "relay.log");
    let mut replicas = [
        role("projector", "projector-1.log"),
        role("projector", "projector-2.log"),
        role("saga,services", "saga-1.log"),
        role("saga,services", "saga-2.log"),
    ];
    // The api first: it migrates the database the others need.
    let mut api = strata();
    for (key, value) in &env {
        api.env(key, value);
    }
    api.env("STRATA_ROLES", "api");
    let server = Server::start(api);
    relay.start();
    for replica in &mut replicas {
        replica.start();
    }

    // The reader: every view it sees must be one a prefix of the log gives.
    let (done, views_seen) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicUsize::new(0)));
    let reader = {
        let (url, done, views_seen) = (server.url(), done.clone(), views_seen.clone());
        tokio::spawn(async move {
            let http = reqwest::Client::new();
            let page = "query($after: String) { orders(first: 100, after: $after) { nodes { id status sagaStatus failedStep } pageInfo { hasNextPage endCursor } } }";
            while !done.load(Ordering::SeqCst) {
                let mut after = Value::Null;
                loop {
                    let body = json!({ "query": page, "variables": { "after": after } });
                    let response = http.post(format!("{url}/graphql")).bearer_auth(CLIENT).json(&body).send().await;
                    let Ok(response) = response else { break };
                    let data: Value = response.json().await.unwrap_or_default();
                    let Some(orders) = data["data"]["orders"].as_object().cloned() else { break };
                    for view in orders["nodes"].as_array().into_iter().flatten() {
                        let (status, saga) = (view["status"].as_str().unwrap_or_default(), view["sagaStatus"].as_str().unwrap_or_default());
                        let torn = (saga == "ABORTED" && status != "CANCELLED") || (saga == "COMPLETED" && status == "PENDING");
                        assert!(!torn, "a view no prefix of the log produces (seed {seed}): {view}");
                        views_seen.fetch_add(1, Ordering::Relaxed);
                    }
                    if orders["pageInfo"]["hasNextPage"] != true {
                        break;
                    }
                    after = orders["pageInfo"]["endCursor"].clone();
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
    };

    let mut demo = std::process::Command::new(env!("CARGO_BIN_EXE_strata"));
    demo.args([
        "demo",
        "--orders",
        &ORDERS.to_string(),
        "--seed",
        &seed.to_string(),
        "--concurrency",
        "16",
        "--json",
        "--url",
        &server.url(),
        "--token",
        CLIENT,
        "--operator-token",
        OPERATOR,
    ])
    .stdout(std::process::Stdio::piped())
    .stderr(std::process::Stdio::piped());
    let demo = demo.spawn().unwrap();
    let pid = demo.id();
    let demo = tokio::task::spawn_blocking(move || demo.wait_with_output().unwrap());

    // Kill projector and saga replicas while the demo runs (at least
    // MIN_KILLS times), restarting each after a moment.
    let mut kills = 0;
    while !demo.is_finished() || kills < MIN_KILLS {
        tokio::time::sleep(Duration::from_millis(rng.random_range(200..900))).await;
        let replica = &mut replicas[rng.random_range(0..replicas.len())];
        assert!(replica.alive(), "{} died on its own:\n{}", replica.name, tail(&replica.log));
        replica.kill();
        kills += 1;
        if rng.random_bool(0.3) {
            tokio::time::sleep(Duration::from_millis(rng.random_range(0..400))).await;
        }
        replica.start();
        if kills > 200 {
            let _ = std::process::Command::new("kill").arg(pid.to_string()).status();
            panic!("the demo did not finish after {kills} kills (seed {seed})");
        }
    }
    let output = demo.await.unwrap();
    done.store(true, Ordering::SeqCst);
    reader.await.unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "demo failed (seed {seed}): {stdout}\n{}", String::from_utf8_lossy(&output.stderr));
    let summary: Value = serde_json::from_str(stdout.trim()).unwrap_or_else(|_| panic!("{stdout}"));
    println!("{kills} kills; the reader saw {} views; demo: {summary}", views_seen.load(Ordering::Relaxed));
    assert_eq!(summary["orders"], ORDERS, "{summary}");
    assert_eq!(summary["unexpected"], 0, "orders ended otherwise than their rules say (seed {seed}): {summary}");
    assert!(views_seen.load(Ordering::Relaxed) > ORDERS, "the reader looked while the demo ran");

    // Every saga terminal, nothing left held: the auditor agrees.
    wait_until(Duration::from_secs(60), || async { crate::support::invariants(&database.url, "20s") }).await;
    for replica in &mut replicas {
        assert!(replica.alive(), "{} died on its own:\n{}", replica.name, tail(&replica.log));
        replica.kill();
    }
    relay.kill();
    drop(server);
    crate::support::drop_scratch_backends(&nats, Some(&redis), &id).await;
    database.drop_database().await;
}
