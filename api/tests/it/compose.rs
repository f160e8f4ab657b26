//! `docker-compose.yml`, its Kafka + MongoDB override, the `Dockerfile` and
//! the files under `deploy/`, checked against the code: images cannot be
//! pulled here, so the test reads them. Every Strata role is a service with
//! roles the binary accepts, every variable is one Strata reads, URLs name
//! services of the file on their ports, health checks ask `/readyz`,
//! Prometheus scrapes every role on the port it listens on, and the
//! dashboard only queries series `/metrics` has. `docker compose config`
//! (or `docker-compose config`) also validates both files when a compose CLI
//! is installed.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use clap::Args;
use serde_yaml::Value;
use strata_api::config::{Overrides, Roles};

const ROLE_SERVICES: [(&str, &str); 5] = [
    ("strata-api", "api"),
    ("strata-relay", "relay"),
    ("strata-projector", "projector"),
    ("strata-saga", "saga"),
    ("strata-services", "services"),
];

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_owned()
}

fn yaml(path: &str) -> Value {
    let text = std::fs::read_to_string(root().join(path)).unwrap_or_else(|e| panic!("{path}: {e}"));
    let mut value: Value = serde_yaml::from_str(&text).unwrap_or_else(|e| panic!("{path}: {e}"));
    value.apply_merge().unwrap();
    value
}

fn text(value: &Value) -> String {
    match value {
        Value::String(text) => text.clone(),
        Value::Number(number) => number.to_string(),
        Value::Bool(flag) => flag.to_string(),
        other => panic!("not a scalar: {other:?}"),
    }
}

/// A service's environment as (name, value) pairs.
fn environment(service: &Value) -> Vec<(String, String)> {
    service["environment"].as_mapping().map(|env| env.iter().map(|(k, v)| (text(k), text(v))).collect()).unwrap_or_default()
}

fn env_value(service: &Value, name: &str) -> String {
    environment(service).into_iter().find(|(key, _)| key == name).map(|(_, value)| value).unwrap_or_else(|| panic!("no {name}"))
}

/// `(host, port)` of a URL like `scheme://[user:pass@]host:port/...`.
fn host_port(url: &str) -> (String, u16) {
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    let authority = rest.split(['/', '?']).next().unwrap();
    let authority = authority.rsplit_once('@').map_or(authority, |(_, host)| host);
    let (host, port) = authority.rsplit_once(':').unwrap_or_else(|| panic!("no port in {url}"));
    (host.to_owned(), port.parse().unwrap())
}

/// The container ports a service publishes (`"8080:8080"` → 8080).
fn published(service: &Value) -> Vec<u16> {
    service["ports"].as_sequence().into_iter().flatten().map(|port| text(port).rsplit(':').next().unwrap().parse().unwrap()).collect()
}

/// `(host address, host port, container port)` of each published port.
fn mappings(service: &Value) -> Vec<(String, u16, u16)> {
    service["ports"]
        .as_sequence()
        .into_iter()
        .flatten()
        .map(|port| {
            let mapping = text(port);
            let parts: Vec<&str> = mapping.split(':').collect();
            let [address, host, container] = parts.as_slice() else { panic!("publish as ADDRESS:HOST:CONTAINER, not {mapping:?}") };
            ((*address).to_owned(), host.parse().unwrap(), container.parse().unwrap())
        })
        .collect()
}

/// Ports a developer's own services and `cargo run` listen on, beside compose.
const DEVELOPER_PORTS: [u16; 7] = [5432, 4222, 6379, 8080, 9092, 27017, 27018];

/// Every variable the binary reads.
fn known_variables() -> BTreeSet<String> {
    let command = Overrides::augment_args(clap::Command::new("strata"));
    let mut known: BTreeSet<String> =
        command.get_arguments().filter_map(|arg| arg.get_env()).map(|env| env.to_string_lossy().into_owned()).collect();
    known.extend(strata_api::telemetry::ENVIRONMENT.iter().map(|name| (*name).to_owned()));
    known
}

#[test]
fn the_compose_file_runs_every_role_on_services_it_defines_with_variables_the_binary_reads() {
    let compose = yaml("docker-compose.yml");
    let services = compose["services"].as_mapping().unwrap();
    let service = |name: &str| compose["services"].get(name).unwrap_or_else(|| panic!("no service {name}"));
    let known = known_variables();
    assert!(known.contains("STRATA_EVENT_STORE") && known.contains("STRATA_ROLES"), "{known:?}");

    // Every service says when it is healthy; every dependency waits for it.
    // Published ports are on loopback and clash with no developer service.
    for (name, definition) in services {
        let name = text(name);
        for (address, host, _) in mappings(definition) {
            assert_eq!(address, "127.0.0.1", "{name} publishes {host} beyond loopback");
            assert!(!DEVELOPER_PORTS.contains(&host), "{name} publishes {host}, which a developer's own service or `cargo run` takes");
        }
        assert!(definition["healthcheck"]["test"].is_sequence(), "{name} has no health check");
        for (dependency, condition) in definition["depends_on"].as_mapping().into_iter().flatten() {
            assert!(services.contains_key(dependency), "{name} depends on {dependency:?}, not a service");
            assert_eq!(condition["condition"], "service_healthy", "{name} → {dependency:?}");
        }
        for volume in definition["volumes"].as_sequence().into_iter().flatten() {
            let source = text(volume);
            let source = source.split(':').next().unwrap();
            if source.starts_with("./") {
                assert!(root().join(source).exists(), "{name} mounts {source}, which is not in the repository");
            }
        }
    }

    let mut roles_seen = BTreeSet::new();
    for (name, role) in ROLE_SERVICES {
        let strata = service(name);
        assert_eq!(strata["build"], ".", "{name} is built from the Dockerfile");
        let roles = Roles::parse(&env_value(strata, "STRATA_ROLES")).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(roles.to_string(), role, "{name} runs exactly its role");
        roles_seen.insert(role);
        for (variable, _) in environment(strata) {
            if variable.starts_with("STRATA_") || variable.starts_with("OTEL_") || variable == "RUST_LOG" {
                assert!(known.contains(&variable), "{name} sets {variable}, which strata does not read");
            }
        }
        assert_eq!(env_value(strata, "OTEL_SERVICE_NAME"), name);
        // Health: /readyz on the port it listens on.
        let listen: std::net::SocketAddr = env_value(strata, "STRATA_LISTEN").parse().unwrap();
        let health = strata["healthcheck"]["test"].as_sequence().unwrap().iter().map(text).collect::<Vec<_>>().join(" ");
        assert!(health.contains(&format!("127.0.0.1:{}/readyz", listen.port())), "{name}: {health}");
        if role == "api" {
            assert_eq!(published(strata), vec![listen.port()], "the api publishes its port");
        } else {
            assert_eq!(strata["deploy"]["replicas"], 2, "{name}: two replicas of each worker role");
            assert_eq!(strata["depends_on"]["strata-api"]["condition"], "service_healthy", "{name} waits for the migrating api");
        }
        // The backends it names are services here, on their ports.
        for (variable, expected) in
            [("STRATA_EVENT_STORE", ("postgres", 5432)), ("STRATA_BUS", ("nats", 4222)), ("STRATA_READ_MODEL", ("redis", 6379))]
        {
            let (host, port) = host_port(&env_value(strata, variable));
            assert_eq!((host.as_str(), port), expected, "{name} {variable}");
            assert!(published(service(&host)).contains(&port), "{host} serves {port}");
            assert!(service(&host)["profiles"].is_null(), "{host} runs without a profile");
            assert_eq!(strata["depends_on"][host.as_str()]["condition"], "service_healthy", "{name} waits for {host}");
        }
        let (collector, port) = host_port(&env_value(strata, "OTEL_EXPORTER_OTLP_ENDPOINT"));
        assert_eq!((collector.as_str(), port), ("otel-collector", 4318), "OTLP over HTTP to the collector");
    }
    assert_eq!(roles_seen.len(), 5);

    // Stateful backends keep their data in named volumes the file declares.
    let volumes = compose["volumes"].as_mapping().expect("named volumes");
    for (backend, path) in [
        ("postgres", "/var/lib/postgresql/data"),
        ("nats", "/data"),
        ("redis", "/data"),
        ("kafka", "/var/lib/kafka/data"),
        ("mongo", "/data/db"),
    ] {
        let mounted = service(backend)["volumes"].as_sequence().into_iter().flatten().map(text).find(|v| v.ends_with(&format!(":{path}")));
        let volume = mounted.unwrap_or_else(|| panic!("{backend} keeps {path} in no volume"));
        let name = volume.split(':').next().unwrap();
        assert!(volumes.contains_key(name), "{backend}'s volume {name} is not declared");
    }

    // The collector receives OTLP/HTTP on that port and hands traces to Jaeger.
    let collector = yaml("deploy/otel-collector.yaml");
    assert_eq!(text(&collector["receivers"]["otlp"]["protocols"]["http"]["endpoint"]), "0.0.0.0:4318");
    let (jaeger, _) = host_port(&text(&collector["exporters"]["otlp/jaeger"]["endpoint"]));
    assert!(services.contains_key(jaeger.as_str()));
    assert_eq!(collector["service"]["pipelines"]["traces"]["exporters"][0], "otlp/jaeger");

    // Prometheus scrapes every role on its listen port.
    let prometheus = yaml("deploy/prometheus.yml");
    let jobs = prometheus["scrape_configs"].as_sequence().unwrap();
    for (name, _) in ROLE_SERVICES {
        let listen: std::net::SocketAddr = env_value(service(name), "STRATA_LISTEN").parse().unwrap();
        let scraped = jobs.iter().flat_map(|job| job["dns_sd_configs"].as_sequence().into_iter().flatten()).any(|sd| {
            sd["names"].as_sequence().is_some_and(|names| names.iter().any(|n| n == name)) && sd["port"] == u64::from(listen.port())
        });
        assert!(scraped, "Prometheus does not scrape {name} on {}", listen.port());
    }
}

#[test]
fn the_kafka_mongo_override_switches_every_role_to_services_of_its_profile() {
    let compose = yaml("docker-compose.yml");
    let overlay = yaml("docker-compose.kafka-mongo.yml");
    for (name, _) in ROLE_SERVICES {
        let strata = &overlay["services"][name];
        let bus = env_value(strata, "STRATA_BUS");
        #[cfg(feature = "kafka")]
        strata_api::workers::kafka_config(&bus).unwrap_or_else(|e| panic!("{name}: {bus}: {e}"));
        let read_model = env_value(strata, "STRATA_READ_MODEL");
        assert!(read_model.starts_with("mongodb://") && read_model.contains("replicaSet=rs0"), "{read_model}");
        for (url, service) in [(&bus, "kafka"), (&read_model, "mongo")] {
            let (host, port) = host_port(url);
            assert_eq!(host, service);
            let backend = &compose["services"][service];
            assert_eq!(backend["profiles"][0], "kafka-mongo", "{service} is in the kafka-mongo profile");
            // Containers reach Kafka on its PLAINTEXT listener (the host has its own).
            let serves = match service {
                "kafka" => env_value(backend, "KAFKA_LISTENERS").split(',').any(|l| l == format!("PLAINTEXT://:{port}")),
                _ => published(backend).contains(&port),
            };
            assert!(serves, "{service} serves {port}");
            assert_eq!(strata["depends_on"][service]["condition"], "service_healthy");
        }
    }
    let kafka = &compose["services"]["kafka"];
    assert!(env_value(kafka, "KAFKA_PROCESS_ROLES").contains("controller"), "KRaft: no ZooKeeper");
    // Containers reach it as kafka:9092; the host through a listener it
    // advertises as 127.0.0.1 on the port it publishes.
    let advertised = env_value(kafka, "KAFKA_ADVERTISED_LISTENERS");
    assert!(advertised.split(',').any(|listener| listener == "PLAINTEXT://kafka:9092"), "{advertised}");
    let host_listener = advertised.split(',').find_map(|listener| listener.strip_prefix("HOST://")).expect("a host listener");
    let (host, port) = host_listener.rsplit_once(':').unwrap();
    assert_eq!(host, "127.0.0.1");
    assert!(
        mappings(kafka).iter().any(|(_, published, container)| (*published, *container) == (port.parse().unwrap(), port.parse().unwrap())),
        "{advertised}"
    );
    // It carries Strata's largest event.
    let largest: usize = env_value(kafka, "KAFKA_MESSAGE_MAX_BYTES").parse().unwrap();
    assert!(largest >= strata_store::AppendLimits::default().max_record_bytes(), "{largest}");
    let mongo = &compose["services"]["mongo"];
    let command = mongo["command"].as_sequence().unwrap().iter().map(text).collect::<Vec<_>>();
    assert!(command.windows(2).any(|pair| pair == ["--replSet", "rs0"]), "{command:?}");
    let health = mongo["healthcheck"]["test"].as_sequence().unwrap().iter().map(text).collect::<Vec<_>>().join(" ");
    assert!(health.contains("rs.initiate") && health.contains("'rs0'"), "the health check initiates the replica set: {health}");
    assert!(health.contains("isWritablePrimary"), "healthy only with a writable primary: {health}");
}

#[test]
fn the_dockerfile_builds_in_one_stage_and_runs_as_a_user_with_a_readyz_health_check() {
    let dockerfile = std::fs::read_to_string(root().join("Dockerfile")).unwrap();
    let instructions: Vec<&str> = dockerfile.lines().map(str::trim).filter(|line| !line.is_empty() && !line.starts_with('#')).collect();
    let stages = instructions.iter().filter(|line| line.starts_with("FROM ")).count();
    assert!(stages >= 2, "multi-stage: {stages} stages");
    assert!(instructions.iter().any(|line| line.starts_with("COPY --from=build ")), "the runtime stage takes only the binary");
    let user = instructions.iter().rev().find_map(|line| line.strip_prefix("USER ")).expect("a USER");
    assert!(!matches!(user.trim(), "root" | "0"), "runs as {user}");
    let compose = yaml("docker-compose.yml");
    let listen: std::net::SocketAddr = env_value(&compose["services"]["strata-api"], "STRATA_LISTEN").parse().unwrap();
    assert!(instructions.contains(&format!("EXPOSE {}", listen.port()).as_str()), "EXPOSE the compose port");
    let health = instructions.iter().find(|line| line.starts_with("HEALTHCHECK")).expect("a HEALTHCHECK");
    assert!(health.contains(&format!("127.0.0.1:{}/readyz", listen.port())), "{health}");
    assert!(instructions.iter().any(|line| line.starts_with("ENTRYPOINT [\"strata\"]")));
    assert!(dockerfile.contains("--locked"), "the image builds what Cargo.lock pins");
    // Dependencies are not rebuilt for every change of Strata's sources.
    assert!(dockerfile.contains("--mount=type=cache,target=/src/target"), "the target directory is a build cache");
}

#[test]
fn the_dashboard_queries_only_series_strata_exports() {
    let dashboard: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(root().join("deploy/grafana/dashboards/strata.json")).unwrap()).unwrap();
    let exported: BTreeSet<&str> = strata_api::metrics::DESCRIPTIONS.iter().map(|(name, _)| *name).collect();
    let mut queried = BTreeSet::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().unwrap() {
            let expr = target["expr"].as_str().unwrap();
            for word in expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
                if word.starts_with("strata_") {
                    let series = ["_bucket", "_count", "_sum"].iter().find_map(|suffix| word.strip_suffix(suffix)).unwrap_or(word);
                    assert!(exported.contains(series), "the dashboard queries {word}, which /metrics does not have");
                    queried.insert(series.to_owned());
                }
            }
        }
    }
    for needed in
        ["strata_orders_placed_total", "strata_append_seconds", "strata_relay_position", "strata_projection_lag_events", "strata_sagas"]
    {
        assert!(queried.contains(needed), "the dashboard shows no {needed}");
    }
}

#[test]
fn a_compose_cli_accepts_both_files_when_one_is_installed() {
    let compose_cli = [vec!["docker", "compose"], vec!["docker-compose"]]
        .into_iter()
        .find(|cli| std::process::Command::new(cli[0]).args(&cli[1..]).arg("version").output().is_ok_and(|output| output.status.success()));
    let Some(cli) = compose_cli else {
        return strata_store::testkit::report_missing("compose", "a docker compose CLI", "apt-get install docker-compose");
    };
    for files in [vec!["docker-compose.yml"], vec!["docker-compose.yml", "docker-compose.kafka-mongo.yml"]] {
        let mut command = std::process::Command::new(cli[0]);
        command.args(&cli[1..]).current_dir(root());
        for file in &files {
            command.args(["-f", file]);
        }
        command.args(["--profile", "kafka-mongo", "config", "-q"]);
        // No default secret: without tokens the files do not even resolve.
        let output = command.env_remove("STRATA_TOKENS").output().unwrap();
        assert!(!output.status.success(), "{cli:?} config {files:?} resolved without STRATA_TOKENS");
        assert!(String::from_utf8_lossy(&output.stderr).contains("STRATA_TOKENS"), "{}", String::from_utf8_lossy(&output.stderr));
        let output = command.env("STRATA_TOKENS", "operator:compose-config-check-token").output().unwrap();
        assert!(output.status.success(), "{cli:?} config {files:?}: {}", String::from_utf8_lossy(&output.stderr));
    }
}
