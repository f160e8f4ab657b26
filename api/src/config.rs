//! Settings. Each is declared once, in [`Overrides`]: a flag, its `STRATA_*`
//! variable and its `strata.toml` key. Sources, strongest first: flags,
//! variables, the file, defaults (docs/design.md §3); clap resolves flags
//! and variables, this module merges the file and the defaults underneath
//! and parses everything into [`Settings`] (the backend URLs into
//! [`crate::urls`]' types), so a bad value stops the process at start.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context};
use serde::Deserialize;
use strata_store::{ChainKey, ChainKeyring};

use crate::urls::{BusUrl, EventStoreUrl, ReadModelUrl};

/// The default event store: a SQLite file in the working directory.
pub const DEFAULT_EVENT_STORE: &str = "sqlite://strata.db";
/// The default HTTP listen address.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8080";
/// `STRATA_BUS` when nothing is set: the in-process bus.
pub const DEFAULT_BUS: &str = "memory";
/// `STRATA_READ_MODEL` when nothing is set: in-memory read models.
pub const DEFAULT_READ_MODEL: &str = "memory";
/// `STRATA_ROLES` when nothing is set: everything in one process.
pub const DEFAULT_ROLES: &str = "all";

/// Every setting, declared once: as a flag and its `STRATA_*` variable
/// (clap), and as the same key without `STRATA_` in `strata.toml` (serde).
/// Unset = `None`; [`Settings::resolve`] merges flags and variables over the
/// file over the defaults and parses the result.
#[derive(Debug, Clone, Default, clap::Args, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Overrides {
    /// Event store URL: sqlite://PATH or postgres://…
    #[arg(long, env = "STRATA_EVENT_STORE", global = true)]
    pub event_store: Option<String>,
    /// HTTP listen address.
    #[arg(long, env = "STRATA_LISTEN", global = true)]
    pub listen: Option<String>,
    /// Serve `/metrics` on this address instead of the HTTP one.
    #[arg(long, env = "STRATA_METRICS_LISTEN", global = true)]
    pub metrics_listen: Option<String>,
    /// The bus: `memory`, `nats://HOST:4222` or `kafka://HOST:9092`.
    #[arg(long, env = "STRATA_BUS", global = true)]
    pub bus: Option<String>,
    /// Read models: `memory` or `redis://HOST:6379`.
    #[arg(long, env = "STRATA_READ_MODEL", global = true)]
    pub read_model: Option<String>,
    /// Roles of this process: `all`, or a comma list of api,relay,projector,saga,services.
    #[arg(long, env = "STRATA_ROLES", global = true)]
    pub roles: Option<String>,
    /// How long a saga step may take before the saga compensates: `5s`, `1500ms`.
    #[arg(long, env = "STRATA_SAGA_STEP_DEADLINE", global = true)]
    pub saga_step_deadline: Option<String>,
    /// How long an undo (or a step after the confirmation) keeps being
    /// retried before the saga is parked as stuck for an operator: `60s`.
    #[arg(long, env = "STRATA_SAGA_PARK_AFTER", global = true)]
    pub saga_park_after: Option<String>,
    /// The longest pause before a failed worker is started again: `30s`
    /// (pauses start at 250 ms and double up to it, jittered).
    #[arg(long, env = "STRATA_WORKER_BACKOFF_MAX", global = true)]
    pub worker_backoff_max: Option<String>,
    /// The largest event as it travels (stored size plus its bus envelope):
    /// `1MiB`, `512KiB`, `2097152`. Appends over it are refused; every bus
    /// is configured (Kafka) or checked (NATS) to carry it.
    #[arg(long, env = "STRATA_MAX_EVENT_BYTES", global = true)]
    pub max_event_bytes: Option<String>,
    /// Accepted bearer tokens: `role:token[@RFC3339 expiry],…` (roles
    /// client, auditor, operator). Unset: `serve` prints a development token
    /// per role, on the embedded default listening on loopback or with
    /// `--dev`; anywhere else it refuses to start. Set but empty: an error.
    #[arg(long, env = "STRATA_TOKENS", global = true, hide_env_values = true)]
    pub tokens: Option<String>,
    /// Key the hash chain with this secret (32+ characters, no spaces): a
    /// database user can no longer recompute the hashes of events they
    /// rewrite. Every process that appends or verifies needs it.
    #[arg(long, env = "STRATA_CHAIN_KEY", global = true, hide_env_values = true)]
    pub chain_key: Option<String>,
    /// Earlier chain keys, oldest first, separated by spaces: verifying
    /// accepts events sealed under them before the current key took over.
    #[arg(long, env = "STRATA_CHAIN_KEY_RETIRED", global = true, hide_env_values = true)]
    pub chain_key_retired: Option<String>,
    /// Development tokens (one per role, printed, new at every start) even
    /// outside the embedded default on loopback. Never in production.
    #[arg(long, env = "STRATA_DEV", global = true, value_parser = clap::builder::FalseyValueParser::new())]
    #[serde(skip)]
    pub dev: bool,
    /// Verify HS256 JWT bearer tokens with this secret (32+ bytes).
    #[arg(long, env = "STRATA_JWT_SECRET", global = true, hide_env_values = true)]
    pub jwt_secret: Option<String>,
    /// Verify RS256/ES256 JWT bearer tokens with the public keys of this JWKS file.
    #[arg(long, env = "STRATA_JWT_JWKS", global = true)]
    pub jwt_jwks: Option<PathBuf>,
    /// The `iss` a JWT must carry.
    #[arg(long, env = "STRATA_JWT_ISSUER", global = true)]
    pub jwt_issuer: Option<String>,
    /// The `aud` a JWT must carry.
    #[arg(long, env = "STRATA_JWT_AUDIENCE", global = true)]
    pub jwt_audience: Option<String>,
    /// The claim a JWT names its role in (default `role`).
    #[arg(long, env = "STRATA_JWT_ROLE_CLAIM", global = true)]
    pub jwt_role_claim: Option<String>,
    /// Requests per second per token on `/graphql` (`1000/s`, `600/min`, `off`).
    #[arg(long, env = "STRATA_RATE_LIMIT", global = true)]
    pub rate_limit: Option<String>,
    /// Requests per second per client address, before the token is checked.
    #[arg(long, env = "STRATA_RATE_LIMIT_IP", global = true)]
    pub rate_limit_ip: Option<String>,
    /// Longest a client may take to send a request's headers (`10s`); a
    /// connection that sends nothing is closed then too.
    #[arg(long, env = "STRATA_HTTP_HEADER_TIMEOUT", global = true)]
    pub http_header_timeout: Option<String>,
    /// Longest a client may take to send a request's body (`30s`).
    #[arg(long, env = "STRATA_HTTP_BODY_TIMEOUT", global = true)]
    pub http_body_timeout: Option<String>,
    /// Most HTTP connections open at once (`10000`).
    #[arg(long, env = "STRATA_MAX_CONNECTIONS", global = true)]
    pub max_connections: Option<String>,
    /// Settings file (read only if it exists; default ./strata.toml).
    #[arg(long, env = "STRATA_CONFIG", global = true)]
    #[serde(skip)]
    pub config: Option<PathBuf>,
}

/// What a process does (docs/design.md §3, §9).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Roles {
    /// Serves HTTP (GraphQL, health, metrics).
    pub api: bool,
    /// Tails the log onto the bus (one active at a time, by lease).
    pub relay: bool,
    /// Runs the projection workers.
    pub projector: bool,
    /// Runs the saga orchestrator (order fulfilment), which calls the
    /// simulated services in its own process.
    pub saga: bool,
    /// The simulated services (orders, inventory, payments, shipping): with
    /// the saga role they are called in process; without it they serve the
    /// saga's commands from the bus.
    pub services: bool,
}

impl std::fmt::Display for Roles {
    /// The comma list [`Roles::parse`] reads.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names =
            [("api", self.api), ("relay", self.relay), ("projector", self.projector), ("saga", self.saga), ("services", self.services)];
        let on: Vec<&str> = names.iter().filter(|(_, on)| *on).map(|(name, _)| *name).collect();
        f.write_str(&on.join(","))
    }
}

impl Roles {
    /// Every role.
    pub const ALL: Roles = Roles { api: true, relay: true, projector: true, saga: true, services: true };

    /// Parses `all` or a comma list.
    pub fn parse(text: &str) -> anyhow::Result<Self> {
        if text.trim() == "all" {
            return Ok(Self::ALL);
        }
        let mut roles = Roles { api: false, relay: false, projector: false, saga: false, services: false };
        for role in text.split(',').map(str::trim) {
            match role {
                "api" => roles.api = true,
                "relay" => roles.relay = true,
                "projector" => roles.projector = true,
                "saga" => roles.saga = true,
                "services" => roles.services = true,
                other => bail!("STRATA_ROLES: unknown role {other:?}; expected all or a comma list of api,relay,projector,saga,services"),
            }
        }
        Ok(roles)
    }
}

/// Resolved settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// Event store URL.
    pub event_store: EventStoreUrl,
    /// HTTP listen address.
    pub listen: SocketAddr,
    /// True when the listen address was configured (flag, environment or
    /// file): then a process without the api role serves `/healthz`,
    /// `/readyz` and `/metrics` there too.
    pub listen_configured: bool,
    /// Where `/metrics` is served instead of the HTTP address, if set
    /// (with `/healthz`); the HTTP address then answers it 404.
    pub metrics_listen: Option<SocketAddr>,
    /// The bus (`memory`, `nats://…` or `kafka://…`) and its settings.
    pub bus: BusUrl,
    /// The read models (`memory`, `redis://…` or `mongodb://…`) and their settings.
    pub read_model: ReadModelUrl,
    /// What this process does.
    pub roles: Roles,
    /// How long a failable saga step may take (from when it began).
    pub saga_step_deadline: Duration,
    /// How long a part that cannot fail is retried before the saga parks.
    pub saga_park_after: Duration,
    /// The longest pause before a failed worker is started again.
    pub worker_backoff_max: Duration,
    /// What one append may hold (the event size bound every bus carries).
    pub append_limits: strata_store::AppendLimits,
    /// The accepted opaque tokens (`None`: development tokens where they
    /// are allowed, see [`Settings::development_tokens`], unless JWTs are
    /// configured).
    pub tokens: Option<String>,
    /// `--dev` / `STRATA_DEV`: development tokens anywhere.
    pub dev: bool,
    /// How JWT bearer tokens are verified.
    pub jwt: crate::auth::JwtSettings,
    /// Requests per token (`None`: unlimited).
    pub rate_per_token: Option<governor::Quota>,
    /// Requests per client address (`None`: unlimited).
    pub rate_per_ip: Option<governor::Quota>,
    /// Slow clients and open connections.
    pub http_bounds: crate::http::ServerBounds,
    /// The keys of the hash chain.
    pub chain: ChainSecrets,
}

/// `STRATA_CHAIN_KEY` and `STRATA_CHAIN_KEY_RETIRED`, checked at start; their
/// `Debug` never shows them.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct ChainSecrets {
    current: Option<String>,
    retired: Vec<String>,
}

impl std::fmt::Debug for ChainSecrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChainSecrets").field("keyed", &self.current.is_some()).field("retired", &self.retired.len()).finish()
    }
}

impl ChainSecrets {
    /// Checks both settings: a set key must be a valid [`ChainKey`]; retired
    /// keys need a current one (an unkeyed writer after keyed events would
    /// break the chain).
    pub fn parse(current: Option<String>, retired: Option<String>) -> anyhow::Result<Self> {
        if let Some(text) = &current {
            ChainKey::new(text).map_err(|reason| anyhow::anyhow!("STRATA_CHAIN_KEY: {reason}"))?;
        }
        let retired: Vec<String> = retired.as_deref().unwrap_or_default().split_whitespace().map(str::to_owned).collect();
        for (index, text) in retired.iter().enumerate() {
            ChainKey::new(text).map_err(|reason| anyhow::anyhow!("STRATA_CHAIN_KEY_RETIRED: key {}: {reason}", index + 1))?;
        }
        if current.is_none() && !retired.is_empty() {
            bail!("STRATA_CHAIN_KEY_RETIRED is set without STRATA_CHAIN_KEY: unkeyed hashes after keyed ones would read as tampering; set the current key too");
        }
        Ok(Self { current, retired })
    }

    /// The key new events are sealed with, if the chain is keyed.
    pub fn key(&self) -> Option<ChainKey> {
        self.current.as_deref().and_then(|text| ChainKey::new(text).ok())
    }

    /// Every key a verifier accepts, oldest first.
    pub fn keyring(&self) -> ChainKeyring {
        ChainKeyring::new(self.retired.iter().filter_map(|text| ChainKey::new(text).ok()).collect(), self.key())
    }
}

/// An authentication setting that is set must say something: an empty one
/// (compose's `${STRATA_TOKENS:-}`, a typo in a secret manager) used to
/// count as unset and turn development tokens on.
fn not_empty(name: &str, value: Option<String>) -> anyhow::Result<Option<String>> {
    match value {
        Some(text) if text.trim().is_empty() => {
            bail!("{name} is set but empty: set it, or unset it (development tokens need --dev / STRATA_DEV=1)")
        }
        other => Ok(other),
    }
}

impl Settings {
    /// Whether `serve` may make development tokens when no authentication
    /// is configured: with `--dev`, or on the embedded default (SQLite or
    /// in-memory log) listening on loopback only, where nobody else can
    /// reach them.
    pub fn development_tokens(&self) -> bool {
        self.dev || (self.event_store.is_embedded() && self.listen.ip().is_loopback())
    }
}

/// `STRATA_SAGA_STEP_DEADLINE` when nothing is set.
pub const DEFAULT_SAGA_STEP_DEADLINE: &str = "5s";
/// `STRATA_SAGA_PARK_AFTER` when nothing is set.
pub const DEFAULT_SAGA_PARK_AFTER: &str = "60s";
/// `STRATA_WORKER_BACKOFF_MAX` when nothing is set.
pub const DEFAULT_WORKER_BACKOFF_MAX: &str = "30s";

/// Parses `1500ms`, `5s` or `5` (seconds); 100 ms to one hour.
fn parse_deadline(text: &str) -> anyhow::Result<Duration> {
    parse_duration("STRATA_SAGA_STEP_DEADLINE", text)
}

/// Parses `1500ms`, `5s` or `5` (seconds) for `variable`; 100 ms to one hour.
fn parse_duration(variable: &str, text: &str) -> anyhow::Result<Duration> {
    let text = text.trim();
    let (number, unit_ms) = match text.strip_suffix("ms") {
        Some(number) => (number, 1.0),
        None => (text.strip_suffix('s').unwrap_or(text), 1_000.0),
    };
    let millis = number
        .trim()
        .parse::<f64>()
        .ok()
        .map(|n| n * unit_ms)
        .filter(|ms| (100.0..=3_600_000.0).contains(ms))
        .with_context(|| format!("{variable}: {text:?} is not a duration from 100ms to 3600s, like 5s or 1500ms"))?;
    Ok(Duration::from_millis(millis as u64))
}

/// Parses `1MiB`, `512KiB` or a number of bytes for `variable`; 64 KiB to 64 MiB.
fn parse_bytes(variable: &str, text: &str) -> anyhow::Result<usize> {
    let text = text.trim();
    let (number, unit) = if let Some(number) = text.strip_suffix("MiB") {
        (number, 1 << 20)
    } else if let Some(number) = text.strip_suffix("KiB") {
        (number, 1 << 10)
    } else {
        (text, 1)
    };
    number
        .trim()
        .parse::<usize>()
        .ok()
        .and_then(|n| n.checked_mul(unit))
        .filter(|bytes| ((64 << 10)..=(64 << 20)).contains(bytes))
        .with_context(|| format!("{variable}: {text:?} is not a size from 64KiB to 64MiB, like 1MiB, 512KiB or 1048576"))
}

impl Settings {
    /// How the supervisor pauses between a worker's attempts.
    pub fn worker_backoff(&self) -> crate::supervisor::Backoff {
        crate::supervisor::Backoff { max: self.worker_backoff_max, ..crate::supervisor::Backoff::default() }
    }

    /// Merges flags/env over the file over the defaults, and validates.
    pub fn resolve(overrides: &Overrides) -> anyhow::Result<Self> {
        let (path, explicit) = match &overrides.config {
            Some(path) => (path.clone(), true),
            None => (PathBuf::from("strata.toml"), false),
        };
        let file = read_file(&path, explicit)?;
        let event_store = overrides.event_store.clone().or(file.event_store).unwrap_or_else(|| DEFAULT_EVENT_STORE.to_owned());
        let event_store = EventStoreUrl::parse(&event_store)?;
        let configured_listen = overrides.listen.clone().or(file.listen);
        let listen_configured = configured_listen.is_some();
        let listen = configured_listen.unwrap_or_else(|| DEFAULT_LISTEN.to_owned());
        let listen: SocketAddr =
            listen.parse().with_context(|| format!("STRATA_LISTEN: {listen:?} is not an address like 127.0.0.1:8080"))?;
        let metrics_listen = match not_empty("STRATA_METRICS_LISTEN", overrides.metrics_listen.clone().or(file.metrics_listen))? {
            Some(address) => Some(
                address
                    .parse::<SocketAddr>()
                    .with_context(|| format!("STRATA_METRICS_LISTEN: {address:?} is not an address like 127.0.0.1:9100"))?,
            ),
            None => None,
        };
        let bus = BusUrl::parse(&overrides.bus.clone().or(file.bus).unwrap_or_else(|| DEFAULT_BUS.to_owned()))?;
        let read_model =
            ReadModelUrl::parse(&overrides.read_model.clone().or(file.read_model).unwrap_or_else(|| DEFAULT_READ_MODEL.to_owned()))?;
        let memory_bus = bus == BusUrl::Memory;
        let roles = overrides.roles.clone().or(file.roles).unwrap_or_else(|| DEFAULT_ROLES.to_owned());
        let roles = Roles::parse(&roles)?;
        if memory_bus && roles.relay != roles.projector {
            bail!("STRATA_ROLES: with STRATA_BUS=memory the relay and the projector must run in the same process (the bus is in-process); use nats://… or kafka://… to split them");
        }
        if memory_bus && roles.saga && !roles.relay {
            bail!("STRATA_ROLES: with STRATA_BUS=memory the saga role must run with the relay (the bus is in-process); use nats://… or kafka://… to split them");
        }
        if memory_bus && roles.saga != roles.services {
            bail!("STRATA_ROLES: with STRATA_BUS=memory the saga and services roles must run in the same process (the bus is in-process); use nats://… or kafka://… to split them");
        }
        if read_model == ReadModelUrl::Memory && roles.api != roles.projector {
            bail!("STRATA_ROLES: with STRATA_READ_MODEL=memory the api and the projector must run in the same process (the read models are in-process); use redis://… or mongodb://… to split them");
        }
        // An embedded log wakes its subscribers (the relay) only in the
        // process that wrote: another process's commits would wait for the
        // relay's poll, and two processes would both write one file.
        if event_store.is_embedded() && roles != Roles::ALL {
            let scheme = if matches!(event_store, EventStoreUrl::Memory(_)) { "memory" } else { "sqlite" };
            bail!(
                "STRATA_ROLES: the {scheme} event store is embedded in one process, so every role must run in it (STRATA_ROLES=all); use postgres://… to split roles across processes"
            );
        }
        let deadline =
            overrides.saga_step_deadline.clone().or(file.saga_step_deadline).unwrap_or_else(|| DEFAULT_SAGA_STEP_DEADLINE.to_owned());
        Ok(Self {
            event_store,
            listen,
            listen_configured,
            metrics_listen,
            bus,
            read_model,
            roles,
            saga_step_deadline: parse_deadline(&deadline)?,
            saga_park_after: parse_duration(
                "STRATA_SAGA_PARK_AFTER",
                &overrides.saga_park_after.clone().or(file.saga_park_after).unwrap_or_else(|| DEFAULT_SAGA_PARK_AFTER.to_owned()),
            )?,
            worker_backoff_max: parse_duration(
                "STRATA_WORKER_BACKOFF_MAX",
                &overrides.worker_backoff_max.clone().or(file.worker_backoff_max).unwrap_or_else(|| DEFAULT_WORKER_BACKOFF_MAX.to_owned()),
            )?,
            append_limits: strata_store::AppendLimits {
                max_event_bytes: match overrides.max_event_bytes.clone().or(file.max_event_bytes) {
                    Some(text) => parse_bytes("STRATA_MAX_EVENT_BYTES", &text)?,
                    None => strata_store::MAX_EVENT_BYTES,
                },
                ..strata_store::AppendLimits::default()
            },
            tokens: not_empty("STRATA_TOKENS", overrides.tokens.clone().or(file.tokens))?,
            dev: overrides.dev,
            jwt: crate::auth::JwtSettings {
                secret: not_empty("STRATA_JWT_SECRET", overrides.jwt_secret.clone().or(file.jwt_secret))?,
                jwks: overrides.jwt_jwks.clone().or(file.jwt_jwks).filter(|path| !path.as_os_str().is_empty()),
                issuer: not_empty("STRATA_JWT_ISSUER", overrides.jwt_issuer.clone().or(file.jwt_issuer))?,
                audience: not_empty("STRATA_JWT_AUDIENCE", overrides.jwt_audience.clone().or(file.jwt_audience))?,
                role_claim: not_empty("STRATA_JWT_ROLE_CLAIM", overrides.jwt_role_claim.clone().or(file.jwt_role_claim))?,
            },
            rate_per_token: match overrides.rate_limit.clone().or(file.rate_limit) {
                Some(text) => crate::rate::parse_rate("STRATA_RATE_LIMIT", &text)?,
                None => crate::rate::per_second(crate::rate::DEFAULT_PER_TOKEN),
            },
            rate_per_ip: match overrides.rate_limit_ip.clone().or(file.rate_limit_ip) {
                Some(text) => crate::rate::parse_rate("STRATA_RATE_LIMIT_IP", &text)?,
                None => crate::rate::per_second(crate::rate::DEFAULT_PER_IP),
            },
            http_bounds: {
                let defaults = crate::http::ServerBounds::default();
                crate::http::ServerBounds {
                    header_timeout: match overrides.http_header_timeout.clone().or(file.http_header_timeout) {
                        Some(text) => parse_duration("STRATA_HTTP_HEADER_TIMEOUT", &text)?,
                        None => defaults.header_timeout,
                    },
                    body_timeout: match overrides.http_body_timeout.clone().or(file.http_body_timeout) {
                        Some(text) => parse_duration("STRATA_HTTP_BODY_TIMEOUT", &text)?,
                        None => defaults.body_timeout,
                    },
                    max_connections: match overrides.max_connections.clone().or(file.max_connections) {
                        Some(text) => text
                            .trim()
                            .parse::<usize>()
                            .ok()
                            .filter(|n| (1..=1_000_000).contains(n))
                            .with_context(|| format!("STRATA_MAX_CONNECTIONS: {text:?} is not a number from 1 to 1000000"))?,
                        None => defaults.max_connections,
                    },
                }
            },
            chain: ChainSecrets::parse(
                overrides.chain_key.clone().or(file.chain_key),
                overrides.chain_key_retired.clone().or(file.chain_key_retired),
            )?,
        })
    }
}

fn read_file(path: &Path, explicit: bool) -> anyhow::Result<Overrides> {
    match std::fs::read_to_string(path) {
        Ok(text) => toml::from_str(&text).with_context(|| format!("reading settings from {}", path.display())),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound && !explicit => Ok(Overrides::default()),
        Err(err) => bail!("cannot read settings file {}: {err}", path.display()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(text: &str) -> tempfile::NamedTempFile {
        let file = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(file.path(), text).unwrap();
        file
    }

    #[test]
    fn defaults_apply_when_nothing_is_set() {
        let empty = file("");
        let settings = Settings::resolve(&Overrides { config: Some(empty.path().to_owned()), ..Overrides::default() }).unwrap();
        assert_eq!(settings.event_store, DEFAULT_EVENT_STORE);
        assert_eq!(settings.listen.to_string(), DEFAULT_LISTEN);
        assert_eq!(settings.bus, DEFAULT_BUS);
        assert_eq!(settings.read_model, DEFAULT_READ_MODEL);
        assert_eq!(settings.roles, Roles::ALL);
        assert_eq!(settings.rate_per_token, crate::rate::per_second(crate::rate::DEFAULT_PER_TOKEN));
        assert_eq!(settings.rate_per_ip, crate::rate::per_second(crate::rate::DEFAULT_PER_IP));
    }

    #[test]
    fn the_event_size_bound_and_the_worker_backoff_are_parsed_and_bounded() {
        let toml = file("max_event_bytes = \"512KiB\"\nworker_backoff_max = \"5s\"\n");
        let with = |max_event_bytes: Option<&str>| {
            Settings::resolve(&Overrides {
                config: Some(toml.path().to_owned()),
                max_event_bytes: max_event_bytes.map(str::to_owned),
                ..Overrides::default()
            })
        };
        let from_file = with(None).unwrap();
        assert_eq!(from_file.append_limits.max_event_bytes, 512 << 10);
        assert_eq!(from_file.worker_backoff().max, Duration::from_secs(5));
        assert_eq!(with(Some("2MiB")).unwrap().append_limits.max_event_bytes, 2 << 20);
        assert_eq!(with(Some("1048576")).unwrap().append_limits.max_event_bytes, 1 << 20);
        for bad in ["1KiB", "65MiB", "lots", "-1", ""] {
            let err = with(Some(bad)).unwrap_err();
            assert!(err.to_string().contains("STRATA_MAX_EVENT_BYTES"), "{bad}: {err}");
        }
        let empty = file("");
        let defaults = Settings::resolve(&Overrides { config: Some(empty.path().to_owned()), ..Overrides::default() }).unwrap();
        assert_eq!(defaults.append_limits, strata_store::AppendLimits::default());
        assert_eq!(defaults.worker_backoff(), crate::supervisor::Backoff::default());
    }

    #[test]
    fn rate_limits_come_from_the_file_or_flags_and_turn_off() {
        let toml = file("rate_limit = \"600/min\"\nrate_limit_ip = \"off\"\n");
        let from_file = Settings::resolve(&Overrides { config: Some(toml.path().to_owned()), ..Overrides::default() }).unwrap();
        assert_eq!(from_file.rate_per_token, crate::rate::parse_rate("x", "600/min").unwrap());
        assert_eq!(from_file.rate_per_ip, None);
        let from_flag = Settings::resolve(&Overrides {
            config: Some(toml.path().to_owned()),
            rate_limit: Some("off".into()),
            rate_limit_ip: Some("50".into()),
            ..Overrides::default()
        })
        .unwrap();
        assert_eq!(from_flag.rate_per_token, None);
        assert_eq!(from_flag.rate_per_ip, crate::rate::per_second(50));
        let err =
            Settings::resolve(&Overrides { config: Some(toml.path().to_owned()), rate_limit: Some("lots".into()), ..Overrides::default() })
                .unwrap_err();
        assert!(err.to_string().contains("STRATA_RATE_LIMIT"), "{err}");
    }

    #[test]
    fn roles_and_read_models_are_checked_and_splits_need_shared_backends() {
        let empty = file("");
        let with = |roles: &str, bus: &str, read_model: &str| {
            Settings::resolve(&Overrides {
                config: Some(empty.path().to_owned()),
                event_store: Some("postgres://postgres@127.0.0.1:5432/strata".into()),
                roles: Some(roles.into()),
                bus: Some(bus.into()),
                read_model: Some(read_model.into()),
                ..Overrides::default()
            })
        };
        let split = with("relay", "nats://127.0.0.1:4222", "redis://127.0.0.1:6379").unwrap();
        assert!(split.roles.relay && !split.roles.projector && !split.roles.api);
        let saga_apart = with("saga", "nats://127.0.0.1:4222", "memory").unwrap();
        assert!(saga_apart.roles.saga && !saga_apart.roles.services);
        let mongo = with("api", "kafka://127.0.0.1:9092", "mongodb://127.0.0.1:27017/strata?replicaSet=rs0").unwrap();
        assert_eq!(mongo.read_model, "mongodb://127.0.0.1:27017/strata?replicaSet=rs0");
        let both = with("api, projector", "nats://127.0.0.1:4222", "memory").unwrap();
        assert!(both.roles.api && both.roles.projector && !both.roles.relay);
        for (roles, bus, read_model, says) in [
            ("relay,cook", "memory", "memory", "unknown role \"cook\""),
            ("relay", "memory", "memory", "STRATA_BUS=memory"),
            ("api,relay,projector", "nats://h:4222", "mongodb+srv://h/db", "STRATA_READ_MODEL"),
            ("api", "nats://h:4222", "memory", "STRATA_READ_MODEL=memory"),
            ("relay,projector,saga", "memory", "memory", "saga and services roles must run in the same process"),
            ("saga", "memory", "memory", "the saga role must run with the relay"),
        ] {
            let err = with(roles, bus, read_model).unwrap_err().to_string();
            assert!(err.contains(says), "{roles} {bus} {read_model}: {err}");
        }
        for store in ["sqlite://strata.db", "memory://"] {
            let embedded = |roles: &str| {
                Settings::resolve(&Overrides {
                    config: Some(empty.path().to_owned()),
                    event_store: Some(store.into()),
                    roles: Some(roles.into()),
                    bus: Some("nats://127.0.0.1:4222".into()),
                    read_model: Some("redis://127.0.0.1:6379".into()),
                    ..Overrides::default()
                })
            };
            let err = embedded("api").unwrap_err().to_string();
            assert!(err.contains("embedded in one process") && err.contains("postgres://"), "{store}: {err}");
            assert!(embedded("api,relay,projector,saga,services").is_ok(), "every role named is all of them");
        }
    }

    #[test]
    fn saga_step_deadlines_parse_with_units_and_refuse_nonsense() {
        assert_eq!(parse_deadline("5s").unwrap(), Duration::from_secs(5));
        assert_eq!(parse_deadline("1500ms").unwrap(), Duration::from_millis(1500));
        assert_eq!(parse_deadline("12").unwrap(), Duration::from_secs(12));
        for bad in ["", "soon", "0s", "-5s", "5h", "50ms"] {
            let err = parse_deadline(bad).unwrap_err().to_string();
            assert!(err.contains("STRATA_SAGA_STEP_DEADLINE"), "{bad}: {err}");
        }
    }

    #[test]
    fn a_named_settings_file_that_is_missing_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("absent.toml");
        let err = Settings::resolve(&Overrides { config: Some(missing), ..Overrides::default() }).unwrap_err();
        assert!(err.to_string().contains("cannot read settings file"), "{err}");
    }

    #[test]
    fn flags_win_over_the_file_and_the_file_over_defaults() {
        let toml = file("event_store = \"postgres://db/strata\"\nlisten = \"127.0.0.1:9000\"\n");
        let from_file = Settings::resolve(&Overrides { config: Some(toml.path().to_owned()), ..Overrides::default() }).unwrap();
        assert_eq!(from_file.event_store, "postgres://db/strata");
        assert_eq!(from_file.listen.port(), 9000);
        let from_flag = Settings::resolve(&Overrides {
            config: Some(toml.path().to_owned()),
            event_store: Some("sqlite://other.db".into()),
            ..Overrides::default()
        })
        .unwrap();
        assert_eq!(from_flag.event_store, "sqlite://other.db");
        assert_eq!(from_flag.listen.port(), 9000);
    }

    #[test]
    fn unknown_keys_and_bad_addresses_are_clear_errors() {
        let toml = file("evnt_store = \"x\"\n");
        let err = Settings::resolve(&Overrides { config: Some(toml.path().to_owned()), ..Overrides::default() }).unwrap_err();
        assert!(format!("{err:#}").contains("evnt_store"), "{err:#}");
        let toml = file("");
        let err = Settings::resolve(&Overrides {
            config: Some(toml.path().to_owned()),
            listen: Some("localhost".into()),
            ..Overrides::default()
        })
        .unwrap_err();
        assert!(err.to_string().contains("STRATA_LISTEN"), "{err}");
    }
}
