//! Picks the event store from its URL (docs/design.md §3): `sqlite://PATH` (the
//! embedded default), `postgres://…` / `postgresql://…` (feature `postgres`),
//! or `memory://` (nothing kept; for demos and tests). Anything else is a
//! clear error naming the variable and the accepted forms.

use std::sync::Arc;

use anyhow::{bail, Context};

use crate::urls::EventStoreUrl;
use strata_schemas::SchemaRegistry;
use strata_store::lease::{Lease, MemoryLease};
use strata_store::{
    AppendLimits, ChainKey, CheckpointStore, EventReader, EventStore, MemoryEventStore, SnapshotStore, SqliteConfig, SqliteEventStore,
};

/// An opened event store, by backend.
#[derive(Clone)]
pub enum EventStoreBackend {
    /// In-process, forgets everything.
    Memory(MemoryEventStore),
    /// One SQLite file.
    Sqlite(SqliteEventStore),
    /// PostgreSQL.
    #[cfg(feature = "postgres")]
    Postgres(strata_store::PostgresEventStore),
}

/// The backend a URL names, before connecting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    /// `memory://`
    Memory,
    /// `sqlite://…`
    Sqlite,
    /// `postgres://…`
    Postgres,
}

/// Classifies an event store URL without connecting ([`EventStoreUrl::parse`]).
pub fn scheme(url: &str) -> anyhow::Result<Scheme> {
    Ok(match EventStoreUrl::parse(url)? {
        EventStoreUrl::Memory(_) => Scheme::Memory,
        EventStoreUrl::Sqlite(_) => Scheme::Sqlite,
        EventStoreUrl::Postgres(_) => Scheme::Postgres,
    })
}

impl EventStoreBackend {
    /// Connects to the store `url` names ([`EventStoreUrl::parse`]); see [`EventStoreBackend::connect`].
    pub async fn open(url: &str, registry: Arc<SchemaRegistry>, limits: AppendLimits, chain_key: Option<ChainKey>) -> anyhow::Result<Self> {
        Self::connect(&EventStoreUrl::parse(url)?, registry, limits, chain_key).await
    }

    /// Connects to the store the URL names (does not migrate), taking
    /// appends within `limits` and sealing them with `chain_key` if given.
    pub async fn connect(
        url: &EventStoreUrl,
        registry: Arc<SchemaRegistry>,
        limits: AppendLimits,
        chain_key: Option<ChainKey>,
    ) -> anyhow::Result<Self> {
        match url {
            EventStoreUrl::Memory(_) => Ok(Self::Memory(MemoryEventStore::keyed(registry, limits, chain_key))),
            EventStoreUrl::Sqlite(url) => Ok(Self::Sqlite(
                SqliteEventStore::connect(SqliteConfig { limits, chain_key, ..SqliteConfig::new(url) }, registry)
                    .await
                    .with_context(|| format!("opening the SQLite event store {url}"))?,
            )),
            #[cfg(feature = "postgres")]
            EventStoreUrl::Postgres(url) => Ok(Self::Postgres(
                strata_store::PostgresEventStore::connect(
                    strata_store::PostgresConfig { limits, chain_key, ..strata_store::PostgresConfig::new(url) },
                    registry,
                )
                .await
                .context("connecting to the PostgreSQL event store")?,
            )),
            #[cfg(not(feature = "postgres"))]
            EventStoreUrl::Postgres(_) => bail!("this strata binary was built without the `postgres` feature"),
        }
    }

    /// Raises the log's epoch after a restore (docs/design.md §8); the new identity.
    pub async fn raise_epoch(&self) -> anyhow::Result<strata_store::LogIdentity> {
        match self {
            Self::Memory(_) => bail!("the in-memory log keeps nothing: there is no restore to mark"),
            Self::Sqlite(store) => Ok(store.raise_epoch().await?),
            #[cfg(feature = "postgres")]
            Self::Postgres(store) => Ok(store.raise_epoch().await?),
        }
    }

    /// Applies the schema migrations (nothing to do in memory).
    pub async fn migrate(&self) -> anyhow::Result<()> {
        match self {
            Self::Memory(_) => Ok(()),
            Self::Sqlite(store) => Ok(store.migrate().await?),
            #[cfg(feature = "postgres")]
            Self::Postgres(store) => Ok(store.migrate().await?),
        }
    }

    /// The store as the seam, its appends counted for `/metrics`.
    pub fn store(&self) -> Arc<dyn EventStore> {
        let store: Arc<dyn EventStore> = match self {
            Self::Memory(store) => Arc::new(store.clone()),
            Self::Sqlite(store) => Arc::new(store.clone()),
            #[cfg(feature = "postgres")]
            Self::Postgres(store) => Arc::new(store.clone()),
        };
        Arc::new(crate::metrics::MeteredStore::new(store, crate::metrics::process_metrics()))
    }
}

impl EventStoreBackend {
    /// The store as a reader only (projections, auditors).
    pub fn reader(&self) -> Arc<dyn EventReader> {
        match self {
            Self::Memory(store) => Arc::new(store.clone()),
            Self::Sqlite(store) => Arc::new(store.clone()),
            #[cfg(feature = "postgres")]
            Self::Postgres(store) => Arc::new(store.clone()),
        }
    }

    /// The checkpoints kept beside the log (the relay's).
    pub fn checkpoints(&self) -> Arc<dyn CheckpointStore> {
        match self {
            Self::Memory(store) => Arc::new(store.clone()),
            Self::Sqlite(store) => Arc::new(store.clone()),
            #[cfg(feature = "postgres")]
            Self::Postgres(store) => Arc::new(store.clone()),
        }
    }

    /// The snapshots kept beside the log (the command handlers').
    pub fn snapshots(&self) -> Arc<dyn SnapshotStore> {
        match self {
            Self::Memory(store) => Arc::new(store.clone()),
            Self::Sqlite(store) => Arc::new(store.clone()),
            #[cfg(feature = "postgres")]
            Self::Postgres(store) => Arc::new(store.clone()),
        }
    }

    /// The lease that elects one relay: an advisory lock on PostgreSQL (across
    /// processes), in-process otherwise (one process owns an SQLite file).
    pub fn lease(&self, url: &str) -> anyhow::Result<Arc<dyn Lease>> {
        match self {
            #[cfg(feature = "postgres")]
            Self::Postgres(_) => Ok(Arc::new(strata_store::lease::PostgresLease::new(url, std::time::Duration::from_millis(500))?)),
            _ => {
                let _ = url;
                Ok(Arc::new(MemoryLease::default()))
            }
        }
    }
}

/// The reference domain's schema registry.
pub fn registry() -> anyhow::Result<Arc<SchemaRegistry>> {
    Ok(Arc::new(strata_schemas::catalog::registry().context("building the schema registry")?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_pick_their_backend_and_bad_ones_say_what_is_expected() {
        assert_eq!(scheme("sqlite://strata.db").unwrap(), Scheme::Sqlite);
        assert_eq!(scheme("postgres://u@h/db").unwrap(), Scheme::Postgres);
        assert_eq!(scheme("postgresql://u@h/db").unwrap(), Scheme::Postgres);
        assert_eq!(scheme("memory://").unwrap(), Scheme::Memory);
        for bad in ["mysql://h/db", "strata.db", "sqlite://", ""] {
            let err = scheme(bad).unwrap_err().to_string();
            assert!(err.contains("STRATA_EVENT_STORE") && err.contains("expected"), "{bad}: {err}");
        }
    }
}
