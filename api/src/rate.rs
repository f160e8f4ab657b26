//! Rate limits on `/graphql` (POST and the WebSocket upgrade), by the
//! generic cell rate algorithm of `governor`: each client address has a
//! bucket checked before its token is (so guessing tokens or sending
//! unverifiable JWTs is bounded per address), and each token a bucket
//! checked after. A bucket holds one second's worth of requests and refills
//! continuously; an empty one answers 429 with `Retry-After` and
//! `RATE_LIMITED`.

use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::state::keyed::DefaultKeyedStateStore;
use governor::{Quota, RateLimiter};
use sha2::{Digest, Sha256};

type Keyed<K> = RateLimiter<K, DefaultKeyedStateStore<K>, DefaultClock>;

/// `STRATA_RATE_LIMIT` when nothing is set: requests per second per token.
pub const DEFAULT_PER_TOKEN: u32 = 1_000;
/// `STRATA_RATE_LIMIT_IP` when nothing is set: requests per second per client address.
pub const DEFAULT_PER_IP: u32 = 2_000;

/// A quota of `n` requests per second (`None` for 0: unlimited).
pub fn per_second(n: u32) -> Option<Quota> {
    NonZeroU32::new(n).map(Quota::per_second)
}

/// Forget idle buckets every this many checks.
const SWEEP_EVERY: u64 = 10_000;

/// Parses `off`, `N` or `N/s` (per second) or `N/min` for `variable`.
pub fn parse_rate(variable: &str, text: &str) -> anyhow::Result<Option<Quota>> {
    let text = text.trim();
    if text.eq_ignore_ascii_case("off") {
        return Ok(None);
    }
    let (number, per_minute) = match (text.strip_suffix("/min"), text.strip_suffix("/s")) {
        (Some(number), _) => (number, true),
        (None, Some(number)) => (number, false),
        (None, None) => (text, false),
    };
    let n = number
        .trim()
        .parse::<u32>()
        .ok()
        .and_then(NonZeroU32::new)
        .ok_or_else(|| anyhow::anyhow!("{variable}: {text:?} is not a rate like 1000/s, 600/min or off"))?;
    Ok(Some(if per_minute { Quota::per_minute(n) } else { Quota::per_second(n) }))
}

/// The buckets of one process.
pub struct RateLimits {
    per_token: Option<Keyed<[u8; 32]>>,
    per_ip: Option<Keyed<IpAddr>>,
    checks: AtomicU64,
}

impl RateLimits {
    /// Limits with these quotas (`None`: unlimited).
    pub fn new(per_token: Option<Quota>, per_ip: Option<Quota>) -> Self {
        Self { per_token: per_token.map(RateLimiter::keyed), per_ip: per_ip.map(RateLimiter::keyed), checks: AtomicU64::new(0) }
    }

    /// Takes one request from `ip`'s bucket; how long to wait if empty.
    pub fn check_ip(&self, ip: IpAddr) -> Result<(), Duration> {
        self.sweep();
        let Some(limiter) = &self.per_ip else { return Ok(()) };
        limiter.check_key(&ip).map_err(|not_until| not_until.wait_time_from(DefaultClock::default().now()))
    }

    /// Takes one request from `token`'s bucket; how long to wait if empty.
    pub fn check_token(&self, token: &str) -> Result<(), Duration> {
        let Some(limiter) = &self.per_token else { return Ok(()) };
        let key: [u8; 32] = Sha256::digest(token.trim().as_bytes()).into();
        limiter.check_key(&key).map_err(|not_until| not_until.wait_time_from(DefaultClock::default().now()))
    }

    /// Drops buckets that are full again, now and then, so a flood of
    /// addresses or tokens does not grow memory for good.
    fn sweep(&self) {
        if self.checks.fetch_add(1, Ordering::Relaxed) % SWEEP_EVERY != SWEEP_EVERY - 1 {
            return;
        }
        if let Some(limiter) = &self.per_token {
            limiter.retain_recent();
            limiter.shrink_to_fit();
        }
        if let Some(limiter) = &self.per_ip {
            limiter.retain_recent();
            limiter.shrink_to_fit();
        }
    }
}

/// `Retry-After`'s whole seconds for a wait (at least 1).
pub fn retry_after_seconds(wait: Duration) -> u64 {
    (wait.as_secs() + u64::from(wait.subsec_nanos() > 0)).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_parse_and_bad_ones_name_the_variable() {
        assert!(parse_rate("STRATA_RATE_LIMIT", "off").unwrap().is_none());
        assert_eq!(parse_rate("X", "50").unwrap(), Some(Quota::per_second(NonZeroU32::new(50).unwrap())));
        assert_eq!(parse_rate("X", "50/s").unwrap(), Some(Quota::per_second(NonZeroU32::new(50).unwrap())));
        assert_eq!(parse_rate("X", "600/min").unwrap(), Some(Quota::per_minute(NonZeroU32::new(600).unwrap())));
        for bad in ["0", "-1", "fast", "10/h", ""] {
            let err = parse_rate("STRATA_RATE_LIMIT_IP", bad).unwrap_err().to_string();
            assert!(err.contains("STRATA_RATE_LIMIT_IP"), "{bad}: {err}");
        }
    }

    #[test]
    fn a_bucket_empties_per_key_and_says_how_long_to_wait() {
        let limits = RateLimits::new(parse_rate("X", "3/min").unwrap(), parse_rate("X", "2/min").unwrap());
        for _ in 0..3 {
            limits.check_token("a").unwrap();
        }
        let wait = limits.check_token("a").unwrap_err();
        assert!(wait > Duration::from_secs(5) && wait <= Duration::from_secs(20), "{wait:?}");
        assert_eq!(retry_after_seconds(wait), wait.as_secs() + 1);
        limits.check_token("b").expect("another token has its own bucket");
        let ip: IpAddr = "127.0.0.1".parse().unwrap();
        limits.check_ip(ip).unwrap();
        limits.check_ip(ip).unwrap();
        assert!(limits.check_ip(ip).is_err());
        limits.check_ip("127.0.0.2".parse().unwrap()).expect("another address has its own bucket");
        let unlimited = RateLimits::new(None, None);
        for _ in 0..10_000 {
            unlimited.check_token("a").unwrap();
            unlimited.check_ip(ip).unwrap();
        }
    }

    #[test]
    fn retry_after_rounds_up_to_whole_seconds() {
        assert_eq!(retry_after_seconds(Duration::from_millis(1)), 1);
        assert_eq!(retry_after_seconds(Duration::ZERO), 1);
        assert_eq!(retry_after_seconds(Duration::from_secs(2)), 2);
        assert_eq!(retry_after_seconds(Duration::from_millis(2_100)), 3);
    }
}
