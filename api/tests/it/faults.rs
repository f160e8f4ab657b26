//! Fault injection with the real binary: one `strata serve` with every role
//! on PostgreSQL + JetStream + Redis, or PostgreSQL + Kafka (librdkafka's
//! mock cluster) + MongoDB (nx-27017), one backend reached through a
//! [`FaultProxy`] (Kafka: its mock broker taken down). Orders are placed
//! around a cut of that backend that lasts longer than its client timeouts
//! (JetStream's 5 s publish ack, the PostgreSQL pool's 10 s acquire, the
//! MongoDB driver's 5 s server selection); then the backend comes back and, with
//! no restart of Strata by hand, every order settles as its rules say (each
//! view equal to its replay), `/readyz` was unavailable during the cut and
//! is ready after, the failed workers' restarts were counted, and `strata
//! audit invariants` holds.

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use strata_store::testkit::proxy::{Fault, FaultProxy};
use strata_store::testkit::{report_unreachable, wait_until, Service};
use uuid::Uuid;

use crate::graphql::{order_input, PLACE, RESTOCK};
use crate::support::{get, strata, Server, TestDatabase};

const OPERATOR: &str = "operator-token-for-faults-01";
const AUDITOR: &str = "auditor-token-for-faults-001";
/// Longer than every client timeout of the backend cut.
const CUT: Duration = Duration::from_secs(12);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Bus {
    Nats,
    /// librdkafka's mock cluster in this process.
    Kafka,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ReadModel {
    Redis,
    /// nx-27017, or `STRATA_TEST_MONGO`.
    Mongo,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Cut {
    Postgres,
    Bus,
    ReadModel,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jetstream_cut_while_orders_are_placed_every_order_settles_once_it_is_back() {
    orders_settle_around_a_cut(Bus::Nats, ReadModel::Redis, Cut::Bus).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_cut_while_sagas_run_every_order_settles_once_it_is_back() {
    orders_settle_around_a_cut(Bus::Nats, ReadModel::Redis, Cut::Postgres).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_cut_while_orders_are_placed_every_view_catches_up_once_it_is_back() {
    orders_settle_around_a_cut(Bus::Nats, ReadModel::Redis, Cut::ReadModel).await;
}

/// Every Kafka broker down (the mock cluster's broker) while orders are placed.
#[cfg(all(feature = "kafka", feature = "mongo"))]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_kafka_broker_down_while_orders_are_placed_every_order_settles_once_it_is_back() {
    orders_settle_around_a_cut(Bus::Kafka, ReadModel::Mongo, Cut::Bus).await;
}

#[cfg(all(feature = "kafka", feature = "mongo"))]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mongo_cut_while_orders_are_placed_every_view_catches_up_once_it_is_back() {
    orders_settle_around_a_cut(Bus::Kafka, ReadModel::Mongo, Cut::ReadModel).await;
}

/// `strata serve` on these event store, bus and read-model URLs (`roles`:
/// all when `None`), its stderr in `log`, with the tests' tokens.
fn serve(urls: [&str; 3], roles: Option<&str>, log: &std::path::Path) -> Server {
    let mut command = strata();
    command
        .env("STRATA_EVENT_STORE", urls[0])
        .env("STRATA_BUS", urls[1])
        .env("STRATA_READ_MODEL", urls[2])
        .env("STRATA_TOKENS", format!("operator:{OPERATOR},auditor:{AUDITOR}"))
        // The orders confirm whatever a cut delays (no step deadline is
        // reached), and restarts come quickly.
        .env("STRATA_SAGA_STEP_DEADLINE", "120s")
        .env("STRATA_SAGA_PARK_AFTER", "600s")
        .env("STRATA_WORKER_BACKOFF_MAX", "2s")
        .env("RUST_LOG", "warn,sqlx=error")
        .stderr(std::fs::File::create(log).unwrap());
    if let Some(roles) = roles {
        command.env("STRATA_ROLES", roles);
    }
    let mut server = Server::start(command);
    server.tokens.insert("operator".into(), OPERATOR.into());
    server.tokens.insert("auditor".into(), AUDITOR.into());
    server
}

/// `host:port` of a URL like `scheme://[user@]host:port[/path][?query]`.
fn authority(url: &str) -> String {
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    let rest = rest.rsplit_once('@').map_or(rest, |(_, rest)| rest);
    rest.split(['/', '?']).next().unwrap_or(rest).to_owned()
}

const VIEW: &str = "query($id: ID!) { order(id: $id) { status sagaStatus customerId totalCents cancelReason failedStep lines { sku quantity unitPriceCents } } orderAt(id: $id) { status customerId totalCents cancelReason failedStep lines { sku quantity unitPriceCents } } }";

/// Whether `order` is confirmed with its saga completed, and its view
/// equals its replay; the view when not.
async fn confirmed(server: &Server, order: &str) -> Result<(), Value> {
    let (status, body) = server.graphql(Some(AUDITOR), VIEW, json!({ "id": order })).await;
    if status != 200 || body.get("errors").is_some() {
        return Err(body);
    }
    let (view, replay) = (&body["data"]["order"], &body["data"]["orderAt"]);
    let settled = view["status"] == "CONFIRMED" && view["sagaStatus"] == "COMPLETED";
    let mut compared = view.clone();
    compared.as_object_mut().map(|fields| fields.remove("sagaStatus"));
    if settled && compared == *replay {
        Ok(())
    } else {
        Err(body["data"].clone())
    }
}

async fn place(server: &Server, n: usize) -> String {
    let input = order_input(&format!("customer-{}", n % 3), "SKU-F1", "card", Some(&format!("faults-{n}")));
    let data = server.ok("operator", PLACE, input).await;
    data["placeOrder"]["orderId"].as_str().expect("an order id").to_owned()
}

/// The value of a counter with these labels in `/metrics` (0 when absent).
async fn counter(server: &Server, series: &str) -> f64 {
    let (status, body) = get(server.address, "/metrics").await;
    assert_eq!(status, 200);
    body.lines().find_map(|line| line.strip_prefix(series)).and_then(|value| value.trim().parse().ok()).unwrap_or(0.0)
}

async fn orders_settle_around_a_cut(bus: Bus, read_model: ReadModel, cut: Cut) {
    let _turn = crate::support::MANY_PROCESSES.lock().await;
    let nats = Service::Nats.url();
    let redis = Service::Redis.url();
    let id = Uuid::new_v4().simple().to_string();
    let mongo = strata_store::testkit::mongo::url(&format!("test_{id}"));
    let Some(database) = TestDatabase::create().await else { return };
    let kafka = (bus == Bus::Kafka).then(strata_store::testkit::kafka::TestKafka::start);
    let bus_url = match &kafka {
        Some(kafka) => kafka.url(&kafka.config()),
        None => {
            if let Err(err) = tokio::net::TcpStream::connect(authority(&nats)).await {
                return report_unreachable(Service::Nats, &nats, &err);
            }
            format!("{nats}?stream=TEST_{id}&subject_prefix=test_{id}")
        }
    };
    let read_model_url = match read_model {
        ReadModel::Redis => format!("{redis}?key_prefix=test_{id}"),
        ReadModel::Mongo => mongo.clone(),
    };
    if let Err(err) = tokio::net::TcpStream::connect(authority(&read_model_url)).await {
        return report_unreachable(Service::of_url(&read_model_url).expect("a Redis or MongoDB URL"), &read_model_url, &err);
    }
    // The cut: a fault proxy in front of the backend, except for Kafka,
    // whose mock broker goes down (a broker advertises its own address, so
    // a proxy in front of it would be bypassed).
    let mock = match (cut, &kafka) {
        (Cut::Bus, Some(kafka)) => match kafka.mock() {
            Some(mock) => Some(mock),
            // A real broker cannot be taken down by the test: like a missing
            // service, that fails unless the run says to skip Kafka.
            None => {
                let why = std::io::Error::other("a real broker (STRATA_TEST_KAFKA) cannot be taken down; this test needs the mock cluster");
                return report_unreachable(Service::Kafka, &kafka.brokers, &why);
            }
        },
        _ => None,
    };
    let mut urls = [database.url.clone(), bus_url, read_model_url];
    let mut proxy = None;
    if mock.is_none() {
        let cut_url = &mut urls[match cut {
            Cut::Postgres => 0,
            Cut::Bus => 1,
            Cut::ReadModel => 2,
        }];
        let upstream = authority(cut_url);
        let started = FaultProxy::start(upstream.clone()).await.unwrap();
        *cut_url = cut_url.replacen(&upstream, &started.address().to_string(), 1);
        proxy = Some(started);
    }
    let set = |fault: Fault| match (&proxy, mock) {
        (Some(proxy), _) => proxy.set(fault),
        (None, Some(mock)) => {
            if fault == Fault::None {
                mock.broker_up(1).unwrap();
            } else {
                mock.broker_down(1).unwrap();
            }
        }
        (None, None) => unreachable!("a cut needs a proxy or the mock cluster"),
    };
    let [store_url, bus_url, read_model_url] = urls;

    let logs = tempfile::tempdir().unwrap();
    let log = logs.path().join("serve.log");
    let server = serve([&store_url, &bus_url, &read_model_url], None, &log);
    let context = |what: &str| format!("{bus:?} + {read_model:?}, {cut:?} cut: {what}\n--- serve log\n{}", crate::support::tail(&log));

    server.ok("operator", RESTOCK, json!({ "sku": "SKU-F1", "quantity": 10_000 })).await;
    let mut orders: Vec<String> = Vec::new();
    for n in 0..5 {
        orders.push(place(&server, n).await);
    }
    for order in &orders {
        wait_until(Duration::from_secs(30), || confirmed(&server, order)).await;
    }
    let (status, body) = get(server.address, "/readyz").await;
    assert_eq!(status, 200, "{}", context(&body));

    // The cut. PostgreSQL: with sagas in flight (placing needs it). The
    // others: orders placed during the cut (the log takes them).
    let cut_at = Instant::now();
    if cut == Cut::Postgres {
        for n in 5..15 {
            orders.push(place(&server, n).await);
        }
        set(Fault::Refuse);
    } else {
        set(Fault::Refuse);
        for n in 5..15 {
            orders.push(place(&server, n).await);
        }
    }
    let dependency = match cut {
        Cut::Postgres => "event_store",
        Cut::Bus => "bus",
        Cut::ReadModel => "read_model",
    };
    let unready = wait_until(CUT, || async {
        let (status, body) = get(server.address, "/readyz").await;
        let body: Value = serde_json::from_str(&body).unwrap_or_default();
        if status == 503 && body["checks"][dependency]["status"] == "down" {
            Ok(body)
        } else {
            Err((status, body))
        }
    })
    .await;
    assert_eq!(unready["status"], "unavailable", "{unready}");
    if cut == Cut::Postgres {
        // A mutation that cannot reach the log says so, and the same request
        // goes through once it is back (below).
        let input = order_input("customer-0", "SKU-F1", "card", Some("faults-during-the-cut"));
        assert_eq!(server.code("operator", PLACE, input).await, "UNAVAILABLE", "{}", context("placeOrder while PostgreSQL is cut"));
    }
    // The cut lasts CUT in all (the fault's length, not a wait for a condition).
    tokio::time::sleep_until((cut_at + CUT).into()).await;
    set(Fault::None);

    if cut == Cut::Postgres {
        let input = order_input("customer-0", "SKU-F1", "card", Some("faults-during-the-cut"));
        let placed = wait_until(Duration::from_secs(30), || async {
            let (_, body) = server.graphql(Some(OPERATOR), PLACE, input.clone()).await;
            body["data"]["placeOrder"]["orderId"].as_str().map(str::to_owned).ok_or(body)
        })
        .await;
        orders.push(placed);
    }
    // Back: everything settles with no restart of Strata by hand.
    let deadline = Duration::from_secs(90);
    for order in &orders {
        let started = Instant::now();
        loop {
            match confirmed(&server, order).await {
                Ok(()) => break,
                Err(view) if started.elapsed() > deadline => panic!("{}", context(&format!("order {order} did not settle: {view}"))),
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    }
    let ready = wait_until(Duration::from_secs(30), || async {
        let (status, body) = get(server.address, "/readyz").await;
        if status == 200 {
            Ok(body)
        } else {
            Err(body)
        }
    })
    .await;
    let ready: Value = serde_json::from_str(&ready).unwrap();
    for worker in ["relay", "projection-orders", "projection-stock", "saga-fulfilment"] {
        assert_eq!(ready["checks"]["workers"][worker]["status"], "up", "{}", context(&ready.to_string()));
    }
    if (bus, cut) == (Bus::Nats, Cut::Bus) {
        // JetStream's publish acks timed out: the relay failed and was restarted.
        let restarts = counter(&server, "strata_worker_restarts_total{worker=\"relay\"}").await;
        assert!(restarts >= 1.0, "{}", context(&format!("relay restarts: {restarts}")));
        assert!(ready["checks"]["workers"]["relay"]["restarts"].as_u64() >= Some(1), "{ready}");
    }

    if let Err(report) = crate::support::invariants(&database.url, "120s") {
        panic!("{}", context(&report));
    }

    drop(server);
    drop(proxy);
    match (bus, read_model) {
        (Bus::Nats, _) => crate::support::drop_scratch_backends(&nats, None, &id).await,
        (Bus::Kafka, _) => {}
    }
    match read_model {
        ReadModel::Redis => crate::support::drop_scratch_redis(&redis, &id).await,
        ReadModel::Mongo => crate::support::drop_scratch_mongo(&mongo).await,
    }
    database.drop_database().await;
}

/// Prints each process's state and log when the test panics.
struct LogsOnPanic(Vec<(&'static str, u32, std::path::PathBuf)>);

impl Drop for LogsOnPanic {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            return;
        }
        for (role, pid, log) in &self.0 {
            let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
            let state = status.lines().find(|line| line.starts_with("State:")).unwrap_or("State: gone");
            eprintln!("--- {role} (pid {pid}, {state})\n{}", crate::support::tail(log));
        }
    }
}

/// A role's process, and the links it has to each backend.
struct RoleProcess {
    role: &'static str,
    server: Server,
    log: std::path::PathBuf,
    /// Its own proxies: PostgreSQL, the bus, the read models (`None`: the
    /// role does not use that backend).
    links: [Option<FaultProxy>; 3],
}

/// Each role in a process of its own (api, relay, projector, saga,
/// services), each process reaching every backend it uses through fault
/// proxies of its own, on PostgreSQL + JetStream + Redis. In three phases,
/// one link of every process is cut at once (refused, then blackholed: the
/// client sees silence until its own timeouts), longer than every client
/// timeout, while orders are in flight; the other links of that process and
/// the other processes keep theirs. Every one of the 11 role-backend links
/// is cut alone once. Each process says it is unavailable while its link is
/// cut and ready after, and every order settles with no restart by hand.
/// (Kafka cannot be cut per process here: a broker advertises its own
/// address, so a proxy is bypassed, and the mock cluster's broker_down cuts
/// every process at once, which the Kafka test above does.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_roles_link_to_each_backend_cut_alone_every_order_settles_once_it_is_back() {
    let _turn = crate::support::MANY_PROCESSES.lock().await;
    let nats = Service::Nats.url();
    let redis = Service::Redis.url();
    let id = Uuid::new_v4().simple().to_string();
    let Some(database) = TestDatabase::create().await else { return };
    for url in [&nats, &redis] {
        if let Err(err) = tokio::net::TcpStream::connect(authority(url)).await {
            return report_unreachable(Service::of_url(url).expect("a NATS or Redis URL"), url, &err);
        }
    }
    let bus_url = format!("{nats}?stream=TEST_{id}&subject_prefix=test_{id}");
    let read_model_url = format!("{redis}?key_prefix=test_{id}");
    let logs = tempfile::tempdir().unwrap();
    // PostgreSQL, bus, read models: which each role opens.
    let uses = |role: &str| match role {
        "api" => [true, false, true],
        "projector" => [true, true, true],
        _ => [true, true, false],
    };
    let mut processes: Vec<RoleProcess> = Vec::new();
    for role in ["api", "relay", "projector", "saga", "services"] {
        let mut urls = [database.url.clone(), bus_url.clone(), read_model_url.clone()];
        let mut links: [Option<FaultProxy>; 3] = [None, None, None];
        for (at, used) in uses(role).into_iter().enumerate() {
            if used {
                let upstream = authority(&urls[at]);
                let proxy = FaultProxy::start(upstream.clone()).await.unwrap();
                urls[at] = urls[at].replacen(&upstream, &proxy.address().to_string(), 1);
                links[at] = Some(proxy);
            }
        }
        let log = logs.path().join(format!("{role}.log"));
        let server = serve([&urls[0], &urls[1], &urls[2]], Some(role), &log);
        processes.push(RoleProcess { role, server, log, links });
    }
    // A process that ended by itself shows as a refused connection: then
    // every process's state and log are printed (CI saw it once).
    let _report = LogsOnPanic(processes.iter().map(|p| (p.role, p.server.pid(), p.log.clone())).collect());
    let context = |processes: &[RoleProcess], what: &str| {
        let logs: String = processes.iter().map(|p| format!("--- {} log\n{}\n", p.role, crate::support::tail(&p.log))).collect();
        format!("role cuts: {what}\n{logs}")
    };
    let ready = |server: &Server| {
        let address = server.address;
        async move {
            let (status, body) = get(address, "/readyz").await;
            if status == 200 {
                Ok(())
            } else {
                Err(body)
            }
        }
    };
    for process in &processes {
        wait_until(Duration::from_secs(60), || ready(&process.server)).await;
    }
    let api = &processes[0].server;
    api.ok("operator", RESTOCK, json!({ "sku": "SKU-F1", "quantity": 10_000 })).await;

    // (process, link) cut in each phase: every link once, one per process at a time.
    const DEPENDENCY: [&str; 3] = ["event_store", "bus", "read_model"];
    let phases: [(&[(usize, usize)], Fault); 3] = [
        (&[(0, 0), (1, 1), (2, 2), (3, 0), (4, 1)], Fault::Refuse),
        (&[(0, 2), (1, 0), (2, 1), (3, 1), (4, 0)], Fault::Blackhole),
        (&[(2, 0)], Fault::Refuse),
    ];
    let mut orders: Vec<String> = Vec::new();
    let mut n = 0;
    for (phase, (cuts, fault)) in phases.iter().enumerate() {
        for _ in 0..4 {
            orders.push(place(&processes[0].server, n).await);
            n += 1;
        }
        let cut_at = Instant::now();
        for &(process, link) in *cuts {
            processes[process].links[link].as_ref().expect("a link the role uses").set(*fault);
        }
        // Orders placed during the cut too, unless the api's log is cut.
        if !cuts.contains(&(0, 0)) {
            for _ in 0..3 {
                orders.push(place(&processes[0].server, n).await);
                n += 1;
            }
        }
        for &(process, link) in *cuts {
            let address = processes[process].server.address;
            let unready = wait_until(CUT, || async move {
                let (status, body) = get(address, "/readyz").await;
                let body: Value = serde_json::from_str(&body).unwrap_or_default();
                if status == 503 && body["checks"][DEPENDENCY[link]]["status"] == "down" {
                    Ok(body)
                } else {
                    Err((status, body))
                }
            })
            .await;
            assert_eq!(unready["status"], "unavailable", "phase {phase}, {}: {unready}", processes[process].role);
        }
        tokio::time::sleep_until((cut_at + CUT).into()).await;
        for &(process, link) in *cuts {
            processes[process].links[link].as_ref().unwrap().set(Fault::None);
        }
        // Back: every process ready and every order settled, by themselves.
        for process in &processes {
            let started = Instant::now();
            while let Err(body) = ready(&process.server).await {
                if started.elapsed() > Duration::from_secs(60) {
                    panic!("{}", context(&processes, &format!("phase {phase}: {} not ready again: {body}", process.role)));
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        for order in &orders {
            let started = Instant::now();
            while let Err(view) = confirmed(&processes[0].server, order).await {
                if started.elapsed() > Duration::from_secs(90) {
                    panic!("{}", context(&processes, &format!("phase {phase}: order {order} did not settle: {view}")));
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    assert_eq!(orders.len(), 4 + 4 + 3 + 4 + 3);
    // The relay's publish acks timed out while its bus was refused: it was restarted.
    let restarts = counter(&processes[1].server, "strata_worker_restarts_total{worker=\"relay\"}").await;
    assert!(restarts >= 1.0, "{}", context(&processes, &format!("relay restarts: {restarts}")));

    if let Err(report) = crate::support::invariants(&database.url, "120s") {
        panic!("{}", context(&processes, &report));
    }
    drop(processes);
    crate::support::drop_scratch_backends(&nats, None, &id).await;
    crate::support::drop_scratch_redis(&redis, &id).await;
    database.drop_database().await;
}

/// A NATS server whose `max_payload` cannot carry the largest event the
/// store accepts is refused when the bus is opened (as `serve` opens it),
/// naming both sizes; with a bound that fits, the same server is taken.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nats_server_too_small_for_the_event_size_bound_is_refused_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let config = dir.path().join("nats.conf");
    std::fs::write(
        &config,
        format!("listen: 127.0.0.1:{port}\nmax_payload: 262144\njetstream {{ store_dir: \"{}\" }}\n", dir.path().join("js").display()),
    )
    .unwrap();
    let mut nats = match std::process::Command::new("nats-server").arg("-c").arg(&config).stderr(std::process::Stdio::null()).spawn() {
        Ok(nats) => nats,
        Err(err) => return report_unreachable(Service::Nats, "the nats-server binary on PATH (apt-get install nats-server)", &err),
    };
    wait_until(Duration::from_secs(10), || async { tokio::net::TcpStream::connect(("127.0.0.1", port)).await }).await;
    let bus = format!("nats://127.0.0.1:{port}");
    let refused =
        strata_api::workers::open_bus(&bus, strata_store::AppendLimits::default().max_record_bytes()).await.err().expect("refused");
    let message = format!("{refused:#}");
    assert!(
        message.contains("262144") && message.contains(&(1 << 20).to_string()) && message.contains("STRATA_MAX_EVENT_BYTES"),
        "{message}"
    );
    let fits = strata_store::AppendLimits { max_event_bytes: 256 << 10, ..strata_store::AppendLimits::default() };
    assert!(strata_api::workers::open_bus(&bus, fits.max_record_bytes()).await.is_ok());
    let _ = nats.kill();
    let _ = nats.wait();
}
