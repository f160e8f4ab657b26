//! Latency percentiles (nearest rank, in milliseconds) as `strata demo` and
//! the benchmarks report them.

use std::time::Duration;

use serde_json::{json, Map, Value};

/// Latency percentiles in milliseconds (nearest rank).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Latency {
    /// Median.
    pub p50_ms: f64,
    /// 95th percentile.
    pub p95_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
    /// Slowest.
    pub max_ms: f64,
}

impl Latency {
    /// The percentiles of `ms`, in any order; `None` when there is none.
    pub fn of(mut ms: Vec<f64>) -> Option<Self> {
        if ms.is_empty() {
            return None;
        }
        ms.sort_by(f64::total_cmp);
        let at = |q: f64| ms[((ms.len() as f64 * q).ceil() as usize).clamp(1, ms.len()) - 1];
        Some(Self { p50_ms: at(0.50), p95_ms: at(0.95), p99_ms: at(0.99), max_ms: ms[ms.len() - 1] })
    }

    /// The percentiles of timed calls.
    pub fn of_durations(durations: &[Duration]) -> Option<Self> {
        Self::of(durations.iter().map(|d| d.as_secs_f64() * 1e3).collect())
    }

    /// `p50_ms`, `p95_ms`, `p99_ms`, `max_ms`.
    pub fn json(&self) -> Map<String, Value> {
        let mut object = Map::new();
        for (key, value) in [("p50_ms", self.p50_ms), ("p95_ms", self.p95_ms), ("p99_ms", self.p99_ms), ("max_ms", self.max_ms)] {
            object.insert(key.into(), json!(round(value, 2)));
        }
        object
    }
}

/// `value` rounded to `decimals` places.
pub fn round(value: f64, decimals: i32) -> f64 {
    let factor = 10f64.powi(decimals);
    (value * factor).round() / factor
}
