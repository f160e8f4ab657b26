//! One trace per order across processes: an OTLP (http/protobuf) receiver in
//! this test, and api / relay+projector / saga / services as four `strata`
//! processes on PostgreSQL + JetStream + Redis exporting to it. The order is
//! placed under a `traceparent` the test chose, so its trace id is known.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::routing::post;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use prost::Message;
use serde_json::{json, Value};
use strata_store::testkit::postgres::TestDatabase;
use strata_store::testkit::{report_unreachable, wait_until, Service};

use crate::graphql::{order_input, tokens, with_tokens, ORDER, PLACE, RESTOCK};
use crate::support::{strata, Role, Server};

/// A span as the receiver got it.
#[derive(Debug, Clone)]
struct Received {
    service: String,
    name: String,
    trace_id: String,
    span_id: String,
    parent: String,
    links: Vec<String>,
}

#[derive(Clone, Default)]
struct Receiver {
    spans: Arc<Mutex<Vec<Received>>>,
    requests: Arc<Mutex<usize>>,
}

impl Receiver {
    /// Serves `POST /v1/traces` on a port of its own; returns the endpoint.
    async fn start(&self) -> String {
        let receiver = self.clone();
        let app = axum::Router::new().route(
            "/v1/traces",
            post(move |body: Bytes| {
                let receiver = receiver.clone();
                async move {
                    let request = ExportTraceServiceRequest::decode(body).expect("an OTLP protobuf export");
                    receiver.take(request);
                    // An empty ExportTraceServiceResponse.
                    ([("content-type", "application/x-protobuf")], Vec::<u8>::new())
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        format!("http://{address}")
    }

    fn take(&self, request: ExportTraceServiceRequest) {
        *self.requests.lock().unwrap() += 1;
        let mut spans = self.spans.lock().unwrap();
        for resource_spans in request.resource_spans {
            let service = resource_spans
                .resource
                .iter()
                .flat_map(|resource| &resource.attributes)
                .find(|attribute| attribute.key == "service.name")
                .and_then(|attribute| match attribute.value.as_ref()?.value.as_ref()? {
                    AnyValue::StringValue(name) => Some(name.clone()),
                    _ => None,
                })
                .unwrap_or_default();
            for span in resource_spans.scope_spans.into_iter().flat_map(|scope| scope.spans) {
                spans.push(Received {
                    service: service.clone(),
                    name: span.name,
                    trace_id: hex(&span.trace_id),
                    span_id: hex(&span.span_id),
                    parent: hex(&span.parent_span_id),
                    links: span.links.iter().map(|link| hex(&link.trace_id)).collect(),
                });
            }
        }
    }

    fn spans(&self) -> Vec<Received> {
        self.spans.lock().unwrap().clone()
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

/// The span `name` of `service` in `trace`, whose parent is one of `parents`.
fn child<'a>(trace: &'a [Received], service: &str, name: &str, parents: &[&Received]) -> Option<&'a Received> {
    trace.iter().find(|span| span.service == service && span.name == name && parents.iter().any(|parent| parent.span_id == span.parent))
}

/// Places an order under a new trace (the caller's span `caller_span`) and
/// waits until it is `status`; returns the trace id.
async fn place_traced(server: &Server, caller_span: &str, payment: &str, status: &str) -> String {
    let trace_id = hex(&uuid::Uuid::new_v4().into_bytes());
    let response = reqwest::Client::new()
        .post(format!("{}/graphql", server.url()))
        .bearer_auth(server.token("operator"))
        .header("traceparent", format!("00-{trace_id}-{caller_span}-01"))
        .json(&json!({ "query": PLACE, "variables": order_input("customer-trace", "SKU-TRACE", payment, None) }))
        .send()
        .await
        .unwrap();
    let placed: Value = response.json().await.unwrap();
    let order_id = placed["data"]["placeOrder"]["orderId"].as_str().unwrap_or_else(|| panic!("{placed}")).to_owned();
    let token = placed["data"]["placeOrder"]["consistencyToken"].clone();
    wait_until(Duration::from_secs(60), || async {
        let data = server.ok("operator", ORDER, json!({ "id": order_id, "token": token })).await;
        if data["order"]["status"] == status {
            Ok(())
        } else {
            Err(data["order"].clone())
        }
    })
    .await;
    trace_id
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_order_is_one_trace_across_api_relay_projector_saga_and_services() {
    let _turn = crate::support::MANY_PROCESSES.lock().await;
    let nats = Service::Nats.url();
    if let Err(err) = tokio::net::TcpStream::connect(nats.trim_start_matches("nats://")).await {
        report_unreachable(Service::Nats, &nats, &err);
        return;
    }
    let redis = Service::Redis.url();
    let Some(database) = TestDatabase::create().await else { return };
    let id = uuid::Uuid::new_v4().simple().to_string();
    let receiver = Receiver::default();
    let endpoint = receiver.start().await;
    let env: Vec<(&'static str, String)> = vec![
        ("STRATA_EVENT_STORE", database.url.clone()),
        ("STRATA_BUS", format!("{nats}?stream=TEST_{id}&subject_prefix=test_{id}")),
        ("STRATA_READ_MODEL", format!("{redis}?key_prefix=test_{id}")),
        ("STRATA_TOKENS", tokens()),
        ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.clone()),
        ("OTEL_BSP_SCHEDULE_DELAY", "100".into()),
        // Longer than one unanswered request (2 s), so a retry waits for a timer.
        ("STRATA_SAGA_STEP_DEADLINE", "3s".into()),
    ];
    let logs = tempfile::tempdir().unwrap();
    // Each worker process also serves its health and metrics on a port of its own.
    let mut ports = Vec::new();
    let mut roles: Vec<Role> = [("relay,projector", "strata-relay-projector"), ("saga", "strata-saga"), ("services", "strata-services")]
        .into_iter()
        .map(|(roles, service)| {
            let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
            ports.push(port);
            let mut env = env.clone();
            env.push(("OTEL_SERVICE_NAME", service.into()));
            env.push(("STRATA_LISTEN", port.to_string()));
            Role { name: roles, env, log: logs.path().join(format!("{service}.log")), child: None, starts: 0 }
        })
        .collect();
    let mut api = strata();
    // Its log in JSON, with tower-http's request events (inside the http span).
    let api_log = logs.path().join("strata-api.log");
    api.envs(env.iter().map(|(key, value)| (*key, value.as_str())))
        .env("STRATA_ROLES", "api")
        .env("OTEL_SERVICE_NAME", "strata-api")
        .env("STRATA_LOG_FORMAT", "json")
        .env("RUST_LOG", "info,tower_http=debug")
        .stderr(std::fs::File::create(&api_log).unwrap());
    let server = with_tokens(Server::start(api));
    roles.iter_mut().for_each(Role::start);

    server.ok("operator", RESTOCK, json!({ "sku": "SKU-TRACE", "quantity": 5 })).await;
    // The order is placed under the test's own trace context.
    let caller_span = "00f067aa0ba902b7";
    let trace_id = place_traced(&server, caller_span, "card", "CONFIRMED").await;

    // Every process exports its part of the order's trace; the links between
    // them are parent links, except the projection's batch (a link).
    let expected = ["strata-api", "strata-relay-projector", "strata-saga", "strata-services"];
    let trace = wait_until(Duration::from_secs(30), || async {
        let spans = receiver.spans();
        let trace: Vec<Received> = spans.iter().filter(|span| span.trace_id == trace_id).cloned().collect();
        let services: std::collections::BTreeSet<&str> = trace.iter().map(|span| span.service.as_str()).collect();
        let linked = spans.iter().any(|span| span.name == "projection.apply" && span.links.contains(&trace_id));
        let service_command = trace.iter().any(|span| span.service == "strata-services" && span.name == "command");
        // Spans are exported when they end, a batch at a time per process: a
        // saga trigger covers the whole drive, so its children (and the
        // publishes of the saga's records) can arrive before it. Wait until
        // no span received points at a parent not received yet.
        let dangling = trace
            .iter()
            .filter(|span| span.parent != caller_span && !trace.iter().any(|other| other.span_id == span.parent))
            .count();
        if expected.iter().all(|service| services.contains(service)) && linked && service_command && dangling == 0 {
            Ok(trace)
        } else {
            Err(format!(
                "the trace so far has {services:?}, a linked projection batch: {linked}, {dangling} spans whose parent has not arrived; {} spans received",
                spans.len()
            ))
        }
    })
    .await;

    let http = trace
        .iter()
        .find(|span| span.service == "strata-api" && span.name == "http" && span.parent == caller_span)
        .unwrap_or_else(|| panic!("no http span under the caller's: {trace:#?}"));
    let command = trace
        .iter()
        .find(|span| span.service == "strata-api" && span.name == "command" && span.parent != caller_span)
        .unwrap_or_else(|| panic!("no command span in the api: {trace:#?}"));
    let by_id: HashMap<&str, &Received> = trace.iter().map(|span| (span.span_id.as_str(), span)).collect();
    let mut ancestor = command;
    while ancestor.span_id != http.span_id {
        ancestor = by_id.get(ancestor.parent.as_str()).unwrap_or_else(|| panic!("the command span is not under the http span: {trace:#?}"));
    }
    assert!(child(&trace, "strata-api", "append", &[command]).is_some(), "no append under the command: {trace:#?}");
    let publishes: Vec<&Received> = trace.iter().filter(|span| span.name == "relay.publish").collect();
    assert!(
        publishes.iter().any(|publish| publish.service == "strata-relay-projector" && publish.parent == command.span_id),
        "the relay's publish is not the child of the api's command: {trace:#?}"
    );
    // Each event that drives the saga (the order placed, then the saga's own
    // records) is a trigger under the relay's publish of it.
    let triggers: Vec<&Received> = trace.iter().filter(|span| span.name == "saga.trigger").collect();
    assert!(!triggers.is_empty(), "no saga trigger: {trace:#?}");
    for trigger in &triggers {
        assert!(
            child(&trace, "strata-saga", "saga.trigger", &publishes).is_some() && publishes.iter().any(|p| p.span_id == trigger.parent),
            "a saga trigger not under a publish: {trace:#?}"
        );
    }
    // A step runs under the trigger that drove it, or (on a busy machine,
    // when the recovery scan or a timer drove it) under a saga.drive that is
    // itself under a trigger of this order.
    let drives: Vec<&Received> =
        trace.iter().filter(|span| span.name == "saga.drive" && triggers.iter().any(|trigger| trigger.span_id == span.parent)).collect();
    assert_eq!(drives.len(), trace.iter().filter(|span| span.name == "saga.drive").count(), "a saga.drive outside a trigger: {trace:#?}");
    let steps: Vec<&Received> = trace.iter().filter(|span| span.service == "strata-saga" && span.name == "saga.step").collect();
    assert!(
        steps.iter().all(|step| triggers.iter().chain(&drives).any(|parent| parent.span_id == step.parent)),
        "saga steps outside a trigger or a drive under one: {trace:#?}"
    );
    assert!(steps.len() >= 3, "fewer than three saga steps: {trace:#?}");
    let served = child(&trace, "strata-services", "service.command", &steps)
        .unwrap_or_else(|| panic!("no service command under a step: {trace:#?}"));
    assert!(child(&trace, "strata-services", "command", &[served]).is_some(), "the service's command is not its child: {trace:#?}");
    assert!(trace.iter().all(|span| span.span_id != span.parent), "{trace:#?}");

    // The api's JSON log lines written inside the request carry its trace and span ids.
    let log = std::fs::read_to_string(&api_log).unwrap();
    let in_request = log
        .lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .find(|line| line["trace_id"] == trace_id.as_str())
        .unwrap_or_else(|| panic!("no log line with trace id {trace_id}:\n{log}"));
    assert_eq!(in_request["span_id"], http.span_id.as_str(), "{in_request}");
    assert_eq!(in_request["span"]["name"], "http", "{in_request}");

    // A payment that never answers: the saga retries on a timer, then undoes
    // the order after the step's deadline; that work, driven by timers and
    // not by an event, stays in the order's trace (saga.drive under the trigger).
    let unanswered = place_traced(&server, caller_span, "card-no-answer", "CANCELLED").await;
    wait_until(Duration::from_secs(30), || async {
        let trace: Vec<Received> = receiver.spans().into_iter().filter(|span| span.trace_id == unanswered).collect();
        let triggers: Vec<&Received> = trace.iter().filter(|span| span.name == "saga.trigger").collect();
        let drives: Vec<&Received> =
            trace.iter().filter(|span| span.name == "saga.drive" && triggers.iter().any(|t| t.span_id == span.parent)).collect();
        let steps_in_drives =
            trace.iter().filter(|span| span.name == "saga.step" && drives.iter().any(|d| d.span_id == span.parent)).count();
        let served = trace.iter().any(|span| span.name == "service.command" && span.service == "strata-services");
        if !drives.is_empty() && steps_in_drives > 0 && served {
            Ok(())
        } else {
            Err(format!("{} timer drives under a trigger, {steps_in_drives} steps in them: {trace:#?}", drives.len()))
        }
    })
    .await;

    // The workers' /metrics: the bus traffic and the saga's steps, counted
    // through the metrics crate in the process that did them.
    let scrape = |address| async move {
        let (status, body) = crate::support::get(address, "/metrics").await;
        assert_eq!(status, 200, "{body}");
        body
    };
    let value = |body: &str, prefix: &str| -> f64 {
        body.lines()
            .find(|line| line.starts_with(prefix))
            .and_then(|line| line.rsplit(' ').next()?.parse().ok())
            .unwrap_or_else(|| panic!("no {prefix} in\n{body}"))
    };
    let relay = scrape(ports[0]).await;
    assert!(value(&relay, "strata_bus_published_total ") >= 4.0, "{relay}");
    assert!(value(&relay, "strata_bus_consumed_total{group=\"projection-orders\",result=\"acked\"}") >= 1.0, "{relay}");
    assert!(relay.contains("strata_build_info{version=\"") && relay.contains("roles=\"relay,projector\"} 1"), "{relay}");
    let saga = scrape(ports[1]).await;
    assert!(
        value(&saga, "strata_saga_steps_total{saga=\"fulfilment\",step=\"RESERVE_STOCK\",phase=\"action\",outcome=\"done\"}") >= 1.0,
        "{saga}"
    );
    assert!(value(&saga, "strata_saga_step_seconds_count{saga=\"fulfilment\",step=\"RESERVE_STOCK\",phase=\"action\"}") >= 1.0, "{saga}");
    let services = scrape(ports[2]).await;
    assert!(value(&services, "strata_events_appended_total ") >= 3.0, "{services}");
    let (status, ready) = crate::support::get(ports[2], "/readyz").await;
    assert_eq!(status, 200, "{ready}");
    let (status, _) = crate::support::get(ports[2], "/graphql").await;
    assert_eq!(status, 404, "no GraphQL without the api role");

    drop(roles);
    drop(server);
    crate::support::drop_scratch_backends(&nats, Some(&redis), &id).await;
    database.drop_database().await;
}
