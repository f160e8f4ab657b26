//! `strata bench flood --url`: what a flood of waiting requests does to
//! everyone else. A probe sends `stock(sku)` queries at a steady
//! `--probe-rate` (one at a time; a late one is sent at once) and records
//! their latency, first with the server idle, then while attackers
//! keep requests open, each with `--aliases` `order(id, waitFor: …)` fields
//! for writes that never come (each waits out the server's `waitFor`
//! bound, then sends again). With `--attack metrics` the attackers scrape
//! `/metrics` back to back instead (no token needed there). Reports the
//! probe's p50/p99 idle and under attack per run, and the median ratios of
//! the p50s and the p99s.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde_json::{json, Value};
use strata_commands::inventory::InventoryCommand;
use strata_schemas::values::Sku;

use super::kit::{machine, median, round, Latency};
use strata_api::client::{GraphQlClient, Refused};

/// `bench flood`: a running server and how to attack it.
#[derive(Debug, Clone, clap::Args)]
pub struct FloodBench {
    /// The server.
    #[arg(long)]
    pub url: String,
    /// An operator token of that server (it restocks the probe's SKU and sends the probe).
    #[arg(long, env = "STRATA_TOKEN", hide_env_values = true)]
    pub token: String,
    /// The attackers' token (default: --token).
    #[arg(long)]
    pub attacker_token: Option<String>,
    /// Attacking requests kept open at once.
    #[arg(long, default_value_t = 300)]
    pub attackers: usize,
    /// Aliased waiting fields per attacking request (the server allows 20 root fields).
    #[arg(long, default_value_t = 20)]
    pub aliases: usize,
    /// Probe queries per second.
    #[arg(long, default_value_t = 200.0)]
    pub probe_rate: f64,
    /// Seconds of probing per phase.
    #[arg(long, default_value_t = 10.0)]
    pub duration: f64,
    /// Idle/attack pairs (medians are reported).
    #[arg(long, default_value_t = 3)]
    pub runs: usize,
    /// What the attackers send: waiting GraphQL requests, or `/metrics` scrapes.
    #[arg(long, value_enum, default_value = "waiting")]
    pub attack: FloodAttack,
    /// Where to scrape with `--attack metrics` (default: --url + /metrics).
    #[arg(long)]
    pub metrics_url: Option<String>,
}

/// What `bench flood`'s attackers send.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum FloodAttack {
    /// Requests of aliased `order(waitFor:)` fields for writes that never come.
    Waiting,
    /// `GET /metrics`, back to back.
    Metrics,
}

const PROBE: &str = "query($sku: String!) { stock(sku: $sku) { available } }";

/// Probes at `rate` per second for `duration`; the latencies in ms.
async fn probe(client: &GraphQlClient, sku: &str, rate: f64, duration: Duration) -> anyhow::Result<Vec<f64>> {
    let started = Instant::now();
    let mut latencies = Vec::new();
    while started.elapsed() < duration {
        let due = started + Duration::from_secs_f64(latencies.len() as f64 / rate);
        tokio::time::sleep_until(due.into()).await;
        let sent = Instant::now();
        client.execute(PROBE, json!({ "sku": sku })).await.context("a probe query failed")?;
        latencies.push(sent.elapsed().as_secs_f64() * 1e3);
    }
    Ok(latencies)
}

/// `bench flood --url`.
pub async fn flood(bench: &FloodBench) -> anyhow::Result<Value> {
    let positive = |x: f64| !x.is_nan() && x > 0.0;
    if bench.attackers == 0 || bench.aliases == 0 || bench.runs == 0 || !positive(bench.duration) || !positive(bench.probe_rate) {
        bail!("--attackers, --aliases, --probe-rate, --duration and --runs must be positive");
    }
    let client = GraphQlClient::new(&bench.url, &bench.token)?;
    let sku = format!("SKU-FLOOD-{}", rand::random::<u32>());
    let restocked = client
        .restock(
            &InventoryCommand::Restock { sku: Sku::parse(&sku)?, quantity: 1_000, unit_price_cents: Some(100), at: chrono::Utc::now() },
            None,
        )
        .await
        .context("restocking the probe's SKU (--token must be an operator's)")?;
    // The restock reaches the read model through the relay and the bus.
    client
        .execute(
            "query($sku: String!, $token: String) { stock(sku: $sku, waitFor: $token) { available } }",
            json!({ "sku": sku, "token": restocked }),
        )
        .await
        .context("the probe's SKU never became readable")?;
    let attacker = GraphQlClient::new(&bench.url, bench.attacker_token.as_deref().unwrap_or(&bench.token))?;
    let scraper = reqwest::Client::new();
    let metrics_url = bench.metrics_url.clone().unwrap_or_else(|| format!("{}/metrics", bench.url.trim_end_matches('/')));
    let duration = Duration::from_secs_f64(bench.duration);
    let mut runs = Vec::with_capacity(bench.runs);
    let (mut ratios, mut idle_p99s, mut attack_p99s) = (Vec::new(), Vec::new(), Vec::new());
    let mut p50_ratios = Vec::new();
    for run in 0..bench.runs {
        if run > 0 {
            // Let the previous run's aborted requests end on the server (they
            // wait out its waitFor bound, 5 s by default) before probing idle.
            tokio::time::sleep(Duration::from_secs(6)).await;
        }
        let idle = probe(&client, &sku, bench.probe_rate, duration).await?;
        let stop = Arc::new(AtomicBool::new(false));
        let (sent, timed_out) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
        let attackers: Vec<_> = (0..bench.attackers)
            .map(|_| {
                let (attacker, stop, sent, timed_out) = (attacker.clone(), stop.clone(), sent.clone(), timed_out.clone());
                let (scraper, metrics_url, attack) = (scraper.clone(), metrics_url.clone(), bench.attack);
                let aliases = bench.aliases;
                tokio::spawn(async move {
                    while !stop.load(Ordering::Relaxed) {
                        if attack == FloodAttack::Metrics {
                            sent.fetch_add(1, Ordering::Relaxed);
                            match scraper.get(&metrics_url).send().await {
                                Ok(response) if response.status().is_success() => {
                                    let _ = response.bytes().await;
                                }
                                Ok(response) => tracing::warn!(status = %response.status(), "a scrape was refused"),
                                Err(err) => tracing::warn!(%err, "a scrape failed"),
                            }
                            continue;
                        }
                        let order = uuid::Uuid::new_v4();
                        let fields: String = (0..aliases)
                            .map(|i| format!("a{i}: order(id: \"{order}\", waitFor: \"order-{order}@{}\") {{ status }} ", 1_000_000 + i))
                            .collect();
                        sent.fetch_add(1, Ordering::Relaxed);
                        if let Err(err) = attacker.execute(&format!("{{ {fields} }}"), json!({})).await {
                            if err.downcast_ref::<Refused>().is_some_and(|refused| refused.code == "TIMEOUT") {
                                timed_out.fetch_add(1, Ordering::Relaxed);
                            } else {
                                // Anything else (a refusal, a limit) would make the attack cheaper than it looks.
                                tracing::warn!(%err, "an attacking request was answered otherwise than TIMEOUT");
                            }
                        }
                    }
                })
            })
            .collect();
        // Let every attacker's request arrive before measuring.
        tokio::time::sleep(Duration::from_secs(1)).await;
        let attacked = probe(&client, &sku, bench.probe_rate, duration).await;
        stop.store(true, Ordering::Relaxed);
        for task in attackers {
            task.abort();
        }
        let attacked = attacked?;
        let (queries, attack_queries) = (idle.len(), attacked.len());
        let (idle, attacked) = (Latency::of(idle).context("no idle probe")?, Latency::of(attacked).context("no probe under attack")?);
        let (idle_p99, attack_p99) = (idle.p99_ms, attacked.p99_ms);
        ratios.push(attack_p99 / idle_p99);
        p50_ratios.push(attacked.p50_ms / idle.p50_ms);
        idle_p99s.push(idle_p99);
        attack_p99s.push(attack_p99);
        runs.push(json!({
            "idle": { "queries": queries, "p50_ms": round(idle.p50_ms, 2), "p99_ms": round(idle_p99, 2) },
            "attack": { "queries": attack_queries, "p50_ms": round(attacked.p50_ms, 2), "p99_ms": round(attack_p99, 2) },
            "attack_requests": sent.load(Ordering::Relaxed),
            "attack_requests_timed_out": timed_out.load(Ordering::Relaxed),
            "p50_ratio": round(attacked.p50_ms / idle.p50_ms, 2),
            "p99_ratio": round(attack_p99 / idle_p99, 2),
        }));
    }
    Ok(json!({
        "bench": "flood",
        "attack": match bench.attack { FloodAttack::Waiting => "waiting", FloodAttack::Metrics => "metrics" },
        "url": bench.url,
        "attackers": bench.attackers,
        "aliases": bench.aliases,
        "waiting_fields": bench.attackers * bench.aliases,
        "probe_rate": bench.probe_rate,
        "duration_s": bench.duration,
        "idle_p99_ms": round(median(idle_p99s), 2),
        "attack_p99_ms": round(median(attack_p99s), 2),
        "p50_ratio": round(median(p50_ratios), 2),
        "p99_ratio": round(median(ratios), 2),
        "runs": runs,
        "machine": machine(),
    }))
}
