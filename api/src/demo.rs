//! `strata demo --orders N`: drives a running server through GraphQL like a
//! shop would. It restocks the scenario's SKUs, places N orders of the
//! fulfilment scenario (`strata_sagas::fulfilment::scenario`: most confirm,
//! some are declined, over the payment limit, unanswered by the gateway,
//! undeliverable or short of stock, and compensate), follows each one until
//! its saga settles, and summarises: confirmed, cancelled by failed step,
//! orders that ended otherwise than the scenario's rules say, and the
//! placed → settled latency.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::bail;
use futures_util::StreamExt;
use serde_json::{json, Value};
use strata_sagas::fulfilment::scenario::{self, Expected, ScenarioConfig};
use tokio::sync::Mutex;

use crate::client::GraphQlClient;
use crate::latency::Latency;
use crate::progress::Progress;

/// Parameters of `strata demo`.
#[derive(Debug, Clone)]
pub struct DemoConfig {
    /// The server (`http://127.0.0.1:8080`).
    pub url: String,
    /// A client or operator token; a client's orders are all its customer's.
    pub token: String,
    /// The token that restocks the scenario's SKUs (an operator's); `token`
    /// when unset.
    pub operator_token: Option<String>,
    /// Orders placed.
    pub orders: usize,
    /// Orders in flight at once.
    pub concurrency: usize,
    /// Varies order ids (the same seed places the same orders: idempotent).
    pub seed: u64,
    /// Longest wait for one order to settle.
    pub settle_timeout: Duration,
}

/// How one order ended.
struct Settled {
    status: String,
    failed_step: Option<String>,
    expected: Expected,
    place_ms: f64,
    settle_ms: f64,
}

const FOLLOW: &str = "query($id: ID!, $token: String) { order(id: $id, waitFor: $token) { status failedStep sagaStatus } }";

/// Runs the demo; the summary as JSON (also printed by the CLI).
pub async fn demo(config: &DemoConfig) -> anyhow::Result<Value> {
    if config.orders == 0 {
        bail!("--orders must be at least 1");
    }
    let client = GraphQlClient::new(&config.url, &config.token)?;
    let operator = GraphQlClient::new(&config.url, config.operator_token.as_deref().unwrap_or(&config.token))?;
    for (n, restock) in scenario::restocks(config.orders, chrono::Utc::now()).iter().enumerate() {
        let restocked = operator.restock(restock, Some(&format!("demo-{}-{}-{n}", config.seed, config.orders))).await;
        if let Err(error) = restocked {
            if error.downcast_ref::<crate::client::Refused>().is_some_and(|refused| refused.code == "FORBIDDEN") {
                bail!("restocking the demo's SKUs needs an operator: pass an operator --token, or --operator-token beside a client's");
            }
            return Err(error);
        }
    }
    // A client places every order for its own customer.
    let customer = client.customer().await?;
    let scenario = ScenarioConfig { seed: config.seed, failures: true };
    let progress = Arc::new(Mutex::new((Progress::new("demo", "orders", config.orders as u64), 0_u64)));
    let started = Instant::now();
    let results: Vec<anyhow::Result<Settled>> = futures_util::stream::iter(0..config.orders)
        .map(|index| {
            let (client, scenario, progress, customer) = (client.clone(), scenario.clone(), progress.clone(), customer.clone());
            async move {
                let (mut order, expected) = scenario::order(&scenario, index, chrono::Utc::now());
                if let Some(customer) = customer {
                    order.customer_id = customer;
                }
                let placing = Instant::now();
                let (order_id, token) = client.place_order(&order, &format!("demo-{}-{index}", scenario.seed)).await?;
                let place_ms = placing.elapsed().as_secs_f64() * 1e3;
                let deadline = Instant::now() + config.settle_timeout;
                let mut token = Some(token);
                loop {
                    let data = client.execute(FOLLOW, json!({ "id": order_id, "token": token.take() })).await?;
                    let order = &data["order"];
                    let saga = order["sagaStatus"].as_str().unwrap_or_default();
                    if matches!(saga, "COMPLETED" | "ABORTED") {
                        let mut guard = progress.lock().await;
                        guard.1 += 1;
                        let done = guard.1;
                        guard.0.set(done, config.orders as u64);
                        return Ok(Settled {
                            status: order["status"].as_str().unwrap_or_default().to_owned(),
                            failed_step: order["failedStep"].as_str().map(str::to_owned),
                            expected,
                            place_ms,
                            settle_ms: placing.elapsed().as_secs_f64() * 1e3,
                        });
                    }
                    if Instant::now() >= deadline {
                        bail!("order {order_id} did not settle within {:?} (saga {saga:?})", config.settle_timeout);
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        })
        .buffer_unordered(config.concurrency.max(1))
        .collect()
        .await;
    let seconds = started.elapsed().as_secs_f64();
    if let Ok(progress) = Arc::try_unwrap(progress) {
        progress.into_inner().0.finish();
    }
    let mut settled = Vec::with_capacity(results.len());
    for result in results {
        settled.push(result?);
    }
    Ok(summary(config, &settled, seconds))
}

fn summary(config: &DemoConfig, settled: &[Settled], seconds: f64) -> Value {
    let mut cancelled: BTreeMap<String, usize> = BTreeMap::new();
    let mut confirmed = 0;
    let mut unexpected = 0;
    for order in settled {
        let as_expected = match (order.expected, order.status.as_str()) {
            (Expected::Confirmed, "CONFIRMED" | "SHIPPED") => true,
            (Expected::Cancelled(step), "CANCELLED") => order.failed_step.as_deref() == Some(step.to_string().as_str()),
            _ => false,
        };
        unexpected += usize::from(!as_expected);
        if order.status == "CANCELLED" {
            *cancelled.entry(order.failed_step.clone().unwrap_or_else(|| "none".into())).or_default() += 1;
        } else {
            confirmed += 1;
        }
    }
    let percentiles = |values: Vec<f64>| Latency::of(values).map_or(json!({ "p50_ms": 0.0, "p99_ms": 0.0 }), |l| Value::Object(l.json()));
    json!({
        "demo": config.url,
        "orders": settled.len(),
        "confirmed": confirmed,
        "cancelled": cancelled,
        "unexpected": unexpected,
        "seconds": crate::latency::round(seconds, 2),
        "place": percentiles(settled.iter().map(|o| o.place_ms).collect()),
        "settle": percentiles(settled.iter().map(|o| o.settle_ms).collect()),
    })
}
