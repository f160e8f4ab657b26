//! GraphiQL works with no internet: headless Chromium (driven over the
//! DevTools protocol) loads `GET /graphql` from the real binary, every
//! request it makes stays on the server's origin (any other host is
//! unresolvable in this browser anyway), and a query typed into the editor
//! runs and shows its answer.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

use crate::support::{scratch_sqlite, Server};

const CLIENT: &str = "client-token-for-graphiql-01";
const CHROMIUM: &str = "/usr/bin/chromium";

/// One DevTools connection to a page: commands and the events seen so far.
struct Page {
    socket: tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>,
    next_id: u64,
    events: Vec<Value>,
}

impl Page {
    async fn call(&mut self, method: &str, params: Value) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        self.socket.send(Message::text(json!({ "id": id, "method": method, "params": params }).to_string())).await.unwrap();
        loop {
            let message =
                tokio::time::timeout(Duration::from_secs(30), self.socket.next()).await.expect("DevTools answers").unwrap().unwrap();
            let Message::Text(text) = message else { continue };
            let value: Value = serde_json::from_str(&text).unwrap();
            if value["id"] == id {
                assert!(value.get("error").is_none(), "{method}: {value}");
                return value["result"].clone();
            }
            self.events.push(value);
        }
    }

    /// Evaluates `expression` until `done` holds for its value (30 s at most).
    async fn until(&mut self, expression: &str, done: impl Fn(&Value) -> bool) -> Value {
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            let value = self.eval(expression).await;
            if done(&value) {
                return value;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{expression} is still {value}; the page says {}",
                self.eval("document.body.innerText.slice(0, 300)").await
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Evaluates `expression` in the page (awaiting a promise) and returns its value.
    async fn eval(&mut self, expression: &str) -> Value {
        let result = self.call("Runtime.evaluate", json!({ "expression": expression, "returnByValue": true, "awaitPromise": true })).await;
        result["result"]["value"].clone()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graphiql_loads_without_the_internet_and_runs_a_query_in_headless_chromium() {
    if !std::path::Path::new(CHROMIUM).exists() {
        return strata_store::testkit::report_missing("chromium", CHROMIUM, "apt-get install chromium");
    }
    let scratch = scratch_sqlite();
    let server = Server::spawn_app(strata_api::config::Overrides {
        event_store: Some(scratch.url.clone()),
        tokens: Some(format!("client/customer-ui:{CLIENT}")),
        ..Default::default()
    })
    .await;
    let origin = server.url();

    // A browser of its own: fresh profile, no background traffic, and every
    // host but the server's unresolvable.
    let profile = tempfile::tempdir().unwrap();
    let mut chromium = std::process::Command::new(CHROMIUM)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--remote-debugging-port=0",
            "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
            "about:blank",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .stderr(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("start chromium");
    // Chromium prints its DevTools endpoint on stderr.
    let stderr = chromium.stderr.take().unwrap();
    let (found, endpoint) = tokio::sync::oneshot::channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        let mut found = Some(found);
        for line in std::io::BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Some(url) = line.strip_prefix("DevTools listening on ") {
                if let Some(found) = found.take() {
                    let _ = found.send(url.trim().to_owned());
                }
            }
        }
    });
    let browser = tokio::time::timeout(Duration::from_secs(30), endpoint).await.expect("chromium started").unwrap();
    let port = browser.split(':').nth(2).and_then(|rest| rest.split('/').next()).unwrap().to_owned();
    let targets: Vec<Value> = reqwest::get(format!("http://127.0.0.1:{port}/json/list")).await.unwrap().json().await.unwrap();
    let target = targets.iter().find(|t| t["type"] == "page").expect("a page target");
    let (socket, _) = tokio_tungstenite::connect_async(target["webSocketDebuggerUrl"].as_str().unwrap()).await.unwrap();
    let mut page = Page { socket, next_id: 0, events: Vec::new() };
    page.call("Network.enable", json!({})).await;
    page.call("Runtime.enable", json!({})).await;
    page.call("Page.navigate", json!({ "url": format!("{origin}/graphql?token={CLIENT}") })).await;

    // The editor comes up (React, GraphiQL and the schema's introspection all loaded).
    let ready = "!!document.querySelector('.graphiql-query-editor .CodeMirror') && !!document.querySelector('.graphiql-execute-button')";
    page.until(ready, |value| *value == true).await;
    page.eval("document.querySelector('.graphiql-query-editor .CodeMirror').CodeMirror.setValue('query Orders { orders(first: 1) { nodes { id } pageInfo { hasNextPage } } }'); true").await;
    // GraphiQL takes the operation's name from the editor a moment after an
    // edit: until it has, a run still names the example's operation, so the
    // button is pressed again until the answer is this query's.
    let run = "(() => { const response = document.querySelector('.graphiql-response .CodeMirror'); \
        const text = response ? response.CodeMirror.getValue() : ''; \
        if (!text.includes('\"orders\"')) { document.querySelector('.graphiql-execute-button').click(); } \
        return text; })()";
    let answer = page.until(run, |value| value.as_str().is_some_and(|text| text.contains("\"orders\""))).await;
    let answer = answer.as_str().unwrap().to_owned();
    let answer: Value = serde_json::from_str(&answer).unwrap_or_else(|_| panic!("not JSON: {answer}"));
    assert_eq!(answer["data"]["orders"], json!({ "nodes": [], "pageInfo": { "hasNextPage": false } }), "{answer}");

    // Every request the page made went to the server (or was inline data).
    page.eval("true").await;
    let requested: Vec<String> = page
        .events
        .iter()
        .filter(|event| event["method"] == "Network.requestWillBeSent")
        .map(|event| event["params"]["request"]["url"].as_str().unwrap().to_owned())
        .collect();
    assert!(requested.iter().any(|url| url.ends_with("/graphiql/graphiql.min.js")), "{requested:#?}");
    assert!(
        requested.iter().filter(|url| url.starts_with(&format!("{origin}/graphql"))).count() >= 2,
        "the page and its queries: {requested:#?}"
    );
    let outside: Vec<&String> = requested.iter().filter(|url| !url.starts_with(&origin) && !url.starts_with("data:")).collect();
    assert!(outside.is_empty(), "requests outside the server: {outside:#?}");
    let failed: Vec<&Value> = page.events.iter().filter(|event| event["method"] == "Network.loadingFailed").collect();
    assert!(failed.is_empty(), "failed loads: {failed:#?}");

    let _ = chromium.kill();
    let _ = chromium.wait();
    drop(server);
}
