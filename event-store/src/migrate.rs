//! Schema migrations for the SQL backends, embedded in the binary and applied
//! with sqlx's migrator (which records them in `_sqlx_migrations` and refuses a
//! database whose applied migrations were edited).

use std::borrow::Cow;

use futures_util::future::BoxFuture;
use sqlx::error::BoxDynError;
use sqlx::migrate::{Migration, MigrationSource, MigrationType, Migrator};

/// `(version, description, SQL)` of one dialect.
#[derive(Debug)]
pub(crate) struct Embedded(pub(crate) &'static [(i64, &'static str, &'static str)]);

#[cfg(feature = "postgres")]
pub(crate) const POSTGRES: Embedded = Embedded(&[
    (1, "event log", include_str!("../migrations/postgres/0001_event_log.sql")),
    (2, "snapshots", include_str!("../migrations/postgres/0002_snapshots.sql")),
    (3, "checkpoints", include_str!("../migrations/postgres/0003_checkpoints.sql")),
    (4, "log identity", include_str!("../migrations/postgres/0004_log_identity.sql")),
    (5, "append-only events", include_str!("../migrations/postgres/0005_append_only.sql")),
]);

#[cfg(feature = "sqlite")]
pub(crate) const SQLITE: Embedded = Embedded(&[
    (1, "event log", include_str!("../migrations/sqlite/0001_event_log.sql")),
    (2, "snapshots", include_str!("../migrations/sqlite/0002_snapshots.sql")),
    (3, "checkpoints", include_str!("../migrations/sqlite/0003_checkpoints.sql")),
    (4, "log identity", include_str!("../migrations/sqlite/0004_log_identity.sql")),
]);

impl<'s> MigrationSource<'s> for Embedded {
    fn resolve(self) -> BoxFuture<'s, Result<Vec<Migration>, BoxDynError>> {
        Box::pin(async move {
            Ok(self
                .0
                .iter()
                .map(|&(version, description, sql)| {
                    Migration::new(version, Cow::Borrowed(description), MigrationType::Simple, Cow::Borrowed(sql), false)
                })
                .collect())
        })
    }
}

pub(crate) async fn migrator(source: Embedded) -> Result<Migrator, crate::BackendError> {
    Migrator::new(source).await.map_err(|err| crate::BackendError::new("loading migrations", err))
}
