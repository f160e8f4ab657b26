//! The three backend URLs, parsed once when the settings are resolved:
//! [`EventStoreUrl`] (`STRATA_EVENT_STORE`), [`BusUrl`] (`STRATA_BUS`) and
//! [`ReadModelUrl`] (`STRATA_READ_MODEL`). Each carries the typed
//! configuration of its backend, Strata's own URL options (`?stream=…`,
//! `?topic_prefix=…`, `?key_prefix=…`) checked and removed, so a bad URL
//! or option stops the process at start, naming the variable, and nothing
//! after it sniffs a prefix again. A backend left out of the build is
//! refused here too.
//!
//! Each keeps the text it was given ([`EventStoreUrl::as_str`], …): child
//! processes and scratch places are made from it. `Debug` shows only that
//! text, never options taken from the environment (Kafka secrets).

use std::fmt;

use anyhow::{bail, Context};

/// Where the log lives.
#[derive(Clone, PartialEq, Eq)]
pub enum EventStoreUrl {
    /// `memory://`: nothing kept.
    Memory(String),
    /// `sqlite://PATH`: one file, the embedded default.
    Sqlite(String),
    /// `postgres://…` or `postgresql://…`.
    Postgres(String),
}

impl EventStoreUrl {
    /// Classifies `url`, refusing anything but the three forms.
    pub fn parse(url: &str) -> anyhow::Result<Self> {
        let Some((scheme, rest)) = url.split_once("://") else {
            bail!("STRATA_EVENT_STORE: {url:?} is not a URL; expected sqlite://PATH, postgres://USER@HOST/DB or memory://");
        };
        match scheme {
            "memory" => Ok(Self::Memory(url.to_owned())),
            "sqlite" if !rest.is_empty() => Ok(Self::Sqlite(url.to_owned())),
            "sqlite" => bail!("STRATA_EVENT_STORE: {url:?} names no file; expected sqlite://PATH"),
            "postgres" | "postgresql" => Ok(Self::Postgres(url.to_owned())),
            other => bail!(
                "STRATA_EVENT_STORE: unsupported scheme {other:?} in {url:?}; expected sqlite://PATH, postgres://USER@HOST/DB or memory://"
            ),
        }
    }

    /// The URL as given.
    pub fn as_str(&self) -> &str {
        match self {
            Self::Memory(url) | Self::Sqlite(url) | Self::Postgres(url) => url,
        }
    }

    /// Whether the log lives inside this process (memory or one SQLite
    /// file): then every role must run in it.
    pub fn is_embedded(&self) -> bool {
        matches!(self, Self::Memory(_) | Self::Sqlite(_))
    }
}

/// The bus and its settings.
#[derive(Clone)]
pub enum BusUrl {
    /// `memory`: in this process.
    Memory,
    /// `nats://HOST:4222[?stream=NAME&subject_prefix=PREFIX]` (default
    /// `STRATA` and `strata`, so several deployments or tests can share one
    /// NATS).
    #[cfg(feature = "nats")]
    Nats {
        /// The URL as given.
        url: String,
        /// The JetStream settings it names.
        config: strata_store::bus::JetStreamConfig,
    },
    /// `kafka://HOST:9092[,HOST2:9092][?topic_prefix=P&partitions=N&
    /// replication=R&min_insync_replicas=M&create_topics=false&
    /// fetch_wait_ms=100&session_timeout_ms=15000&metadata_refresh_ms=30000&
    /// rdkafka.<property>=<value>…]`, with each `STRATA_KAFKA_<PROPERTY>`
    /// variable of the environment as one more librdkafka property (`_` for
    /// `.`: `STRATA_KAFKA_SASL_PASSWORD` sets `sasl.password`).
    #[cfg(feature = "kafka")]
    Kafka {
        /// The URL as given.
        url: String,
        /// The Kafka settings it names.
        config: strata_store::bus::KafkaConfig,
    },
}

impl BusUrl {
    /// Parses `url`, its options and (Kafka) the `STRATA_KAFKA_*` variables.
    pub fn parse(url: &str) -> anyhow::Result<Self> {
        Self::parse_with(url, std::env::vars())
    }

    /// [`BusUrl::parse`] with the environment given.
    pub fn parse_with(url: &str, environment: impl IntoIterator<Item = (String, String)>) -> anyhow::Result<Self> {
        if url == "memory" {
            return Ok(Self::Memory);
        }
        let _ = &environment;
        #[cfg(feature = "nats")]
        if url.starts_with("nats://") {
            let (base, pairs) = options("STRATA_BUS", url, &["stream", "subject_prefix"])?;
            let mut config = strata_store::bus::JetStreamConfig::new(base);
            for (key, value) in pairs {
                match key {
                    "stream" => config.stream_name = value.to_owned(),
                    _ => config.subject_prefix = value.to_owned(),
                }
            }
            return Ok(Self::Nats { url: url.to_owned(), config });
        }
        #[cfg(feature = "kafka")]
        if url.starts_with("kafka://") {
            return Ok(Self::Kafka { url: url.to_owned(), config: kafka_config(url, environment)? });
        }
        let scheme = url.split_once("://").map_or(url, |(scheme, _)| scheme);
        if matches!(scheme, "nats" | "kafka") {
            bail!("STRATA_BUS: this strata was built without the `{scheme}` feature ({url:?})");
        }
        bail!("STRATA_BUS: unsupported bus {url:?}; expected memory, nats://HOST:4222 or kafka://HOST:9092")
    }

    /// The URL as given.
    pub fn as_str(&self) -> &str {
        match self {
            Self::Memory => "memory",
            #[cfg(feature = "nats")]
            Self::Nats { url, .. } => url,
            #[cfg(feature = "kafka")]
            Self::Kafka { url, .. } => url,
        }
    }

    /// `memory`, `nats` or `kafka`.
    pub fn backend_name(&self) -> &'static str {
        match self {
            Self::Memory => "memory",
            #[cfg(feature = "nats")]
            Self::Nats { .. } => "nats",
            #[cfg(feature = "kafka")]
            Self::Kafka { .. } => "kafka",
        }
    }
}

/// The read models and their settings.
#[derive(Clone, PartialEq, Eq)]
pub enum ReadModelUrl {
    /// `memory`: in this process.
    Memory,
    /// `redis://HOST:6379[?key_prefix=PREFIX]` (default `strata`).
    #[cfg(feature = "redis")]
    Redis {
        /// The URL as given.
        url: String,
        /// The sink's settings.
        config: strata_projections::RedisSinkConfig,
    },
    /// `mongodb://HOST/DB?…`, with the driver's own options (`replicaSet`,
    /// `directConnection`, `tls`, …).
    #[cfg(feature = "mongo")]
    Mongo {
        /// The URL as given.
        url: String,
        /// The sink's settings.
        config: strata_projections::MongoSinkConfig,
    },
}

impl ReadModelUrl {
    /// Parses `url` and its options.
    pub fn parse(url: &str) -> anyhow::Result<Self> {
        if url == "memory" {
            return Ok(Self::Memory);
        }
        #[cfg(feature = "redis")]
        if url.starts_with("redis://") {
            let (base, pairs) = options("STRATA_READ_MODEL", url, &["key_prefix"])?;
            let mut config = strata_projections::RedisSinkConfig::new(base);
            if let Some((_, prefix)) = pairs.first() {
                config.key_prefix = (*prefix).to_owned();
            }
            return Ok(Self::Redis { url: url.to_owned(), config });
        }
        #[cfg(feature = "mongo")]
        if url.starts_with("mongodb://") {
            return Ok(Self::Mongo { url: url.to_owned(), config: strata_projections::MongoSinkConfig::new(url) });
        }
        bail!(
            "STRATA_READ_MODEL: unsupported read model {url:?}; expected memory, redis://HOST:6379 or mongodb://HOST:27017/DB (this build has: {})",
            read_models_built()
        )
    }

    /// The URL as given.
    pub fn as_str(&self) -> &str {
        match self {
            Self::Memory => "memory",
            #[cfg(feature = "redis")]
            Self::Redis { url, .. } => url,
            #[cfg(feature = "mongo")]
            Self::Mongo { url, .. } => url,
        }
    }
}

/// The read-model backends compiled into this binary.
fn read_models_built() -> &'static str {
    match (cfg!(feature = "redis"), cfg!(feature = "mongo")) {
        (true, true) => "memory, redis, mongodb",
        (true, false) => "memory, redis",
        (false, true) => "memory, mongodb",
        (false, false) => "memory",
    }
}

/// Splits `url?a=1&b=2` into the URL and its parameters, refusing any not in
/// `known` (Strata's own options, removed before the client sees the URL).
#[cfg_attr(not(any(feature = "nats", feature = "kafka", feature = "redis")), allow(dead_code))]
fn options<'a>(variable: &str, url: &'a str, known: &[&str]) -> anyhow::Result<(&'a str, Vec<(&'a str, &'a str)>)> {
    let Some((base, query)) = url.split_once('?') else {
        return Ok((url, Vec::new()));
    };
    let mut pairs = Vec::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        // A known name, or a name under a known prefix (ending in '.').
        let known_key = known.iter().any(|known| *known == key || (known.ends_with('.') && key.starts_with(known)));
        if !known_key {
            bail!("{variable}: unknown option {key:?} in {url:?}; known: {}", known.join(", "));
        }
        pairs.push((key, value));
    }
    Ok((base, pairs))
}

/// The Kafka settings of a `kafka://` URL and the `STRATA_KAFKA_*` variables
/// of `environment` ([`BusUrl::Kafka`]).
#[cfg(feature = "kafka")]
pub fn kafka_config(url: &str, environment: impl IntoIterator<Item = (String, String)>) -> anyhow::Result<strata_store::bus::KafkaConfig> {
    const KNOWN: [&str; 9] = [
        "topic_prefix",
        "partitions",
        "replication",
        "min_insync_replicas",
        "create_topics",
        "fetch_wait_ms",
        "session_timeout_ms",
        "metadata_refresh_ms",
        "rdkafka.",
    ];
    let Some(rest) = url.strip_prefix("kafka://") else { bail!("STRATA_BUS: {url:?} is not a kafka:// URL") };
    let (brokers, pairs) = options("STRATA_BUS", rest, &KNOWN)?;
    let mut config = strata_store::bus::KafkaConfig::new(brokers);
    let millis = |key: &str, value: &str, least: u64| -> anyhow::Result<std::time::Duration> {
        let ms = value.parse::<u64>().with_context(|| format!("STRATA_BUS: {key} must be a number of milliseconds, not {value:?}"))?;
        Ok(std::time::Duration::from_millis(ms.max(least)))
    };
    for (key, value) in pairs {
        let number = || value.parse::<i32>().with_context(|| format!("STRATA_BUS: {key} must be a number, not {value:?}"));
        match key {
            "topic_prefix" => config.topic_prefix = value.to_owned(),
            "partitions" => config.partitions = number()?,
            "replication" => config.replication = number()?,
            "min_insync_replicas" => config.min_insync_replicas = Some(number()?),
            "fetch_wait_ms" => config.fetch_wait = millis(key, value, 1)?,
            "session_timeout_ms" => config.session_timeout = millis(key, value, 1_000)?,
            "metadata_refresh_ms" => config.metadata_refresh = millis(key, value, 100)?,
            "create_topics" => {
                config.create_topics =
                    value.parse().with_context(|| format!("STRATA_BUS: create_topics must be true or false, not {value:?}"))?
            }
            property => match property.strip_prefix("rdkafka.") {
                Some(name) if !name.is_empty() => config.properties.push((name.to_owned(), value.to_owned())),
                _ => bail!("STRATA_BUS: {property:?} names no librdkafka property (rdkafka.<property>=<value>)"),
            },
        }
    }
    let mut from_environment: Vec<(String, String)> = environment
        .into_iter()
        .filter_map(|(key, value)| Some((key.strip_prefix("STRATA_KAFKA_")?.to_ascii_lowercase().replace('_', "."), value)))
        .filter(|(name, _)| !name.is_empty())
        .collect();
    from_environment.sort();
    config.properties.extend(from_environment);
    Ok(config)
}

macro_rules! shown_as_text {
    ($($url:ty),+) => {$(
        impl fmt::Debug for $url {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.debug_tuple(stringify!($url)).field(&self.as_str()).finish()
            }
        }

        impl fmt::Display for $url {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl PartialEq<&str> for $url {
            fn eq(&self, other: &&str) -> bool {
                self.as_str() == *other
            }
        }
    )+};
}

shown_as_text!(EventStoreUrl, BusUrl, ReadModelUrl);

/// Two bus URLs are the same when their text is (their settings follow
/// from it and the environment).
impl PartialEq for BusUrl {
    fn eq(&self, other: &Self) -> bool {
        self.as_str() == other.as_str()
    }
}

impl Eq for BusUrl {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_store_urls_pick_their_backend_and_bad_ones_say_what_is_expected() {
        assert!(matches!(EventStoreUrl::parse("sqlite://strata.db").unwrap(), EventStoreUrl::Sqlite(_)));
        assert!(matches!(EventStoreUrl::parse("postgres://u@h/db").unwrap(), EventStoreUrl::Postgres(_)));
        assert!(matches!(EventStoreUrl::parse("postgresql://u@h/db").unwrap(), EventStoreUrl::Postgres(_)));
        assert!(EventStoreUrl::parse("memory://").unwrap().is_embedded());
        assert_eq!(EventStoreUrl::parse("sqlite://a.db").unwrap(), "sqlite://a.db");
        for bad in ["mysql://h/db", "strata.db", "sqlite://", ""] {
            let err = EventStoreUrl::parse(bad).unwrap_err().to_string();
            assert!(err.contains("STRATA_EVENT_STORE") && err.contains("expected"), "{bad}: {err}");
        }
    }

    #[test]
    fn bus_and_read_model_urls_carry_their_options_and_refuse_unknown_ones() {
        #[cfg(feature = "nats")]
        match BusUrl::parse_with("nats://n:4222?stream=S&subject_prefix=p", []).unwrap() {
            BusUrl::Nats { config, .. } => {
                assert_eq!((config.url.as_str(), config.stream_name.as_str(), config.subject_prefix.as_str()), ("nats://n:4222", "S", "p"))
            }
            other => panic!("{other:?}"),
        }
        #[cfg(feature = "redis")]
        match ReadModelUrl::parse("redis://r:6379?key_prefix=shop").unwrap() {
            ReadModelUrl::Redis { config, .. } => assert_eq!((config.url.as_str(), config.key_prefix.as_str()), ("redis://r:6379", "shop")),
            other => panic!("{other:?}"),
        }
        for (bad, says) in [("nats://n:4222?stream=S&colour=red", "unknown option \"colour\""), ("amqp://h", "unsupported bus")] {
            let err = BusUrl::parse_with(bad, []).unwrap_err().to_string();
            assert!(err.contains("STRATA_BUS") && err.contains(says), "{bad}: {err}");
        }
        let err = ReadModelUrl::parse("redis://r:6379?prefix=x").unwrap_err().to_string();
        assert!(err.contains("STRATA_READ_MODEL") && err.contains("unknown option"), "{err}");
        assert_eq!(BusUrl::parse("memory").unwrap().backend_name(), "memory");
    }

    #[cfg(feature = "kafka")]
    #[test]
    fn a_kafka_url_shows_only_its_text_never_the_secrets_of_the_environment() {
        let url = BusUrl::parse_with("kafka://b:9092", [("STRATA_KAFKA_SASL_PASSWORD".to_owned(), "s3cret".to_owned())]).unwrap();
        assert_eq!(url.backend_name(), "kafka");
        assert!(!format!("{url:?} {url}").contains("s3cret"));
        let BusUrl::Kafka { config, .. } = url else { panic!("kafka") };
        assert!(config.properties.contains(&("sasl.password".to_owned(), "s3cret".to_owned())));
    }
}
