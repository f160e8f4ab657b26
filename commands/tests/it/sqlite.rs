//! The handler suite on SQLite (a scratch file per test).

use std::sync::Arc;

use strata_store::{SqliteConfig, SqliteEventStore};

use crate::suite::handler_suite;
use crate::support::{registry, Cleanup, Store};

async fn open() -> Option<(Store, Cleanup)> {
    let dir = std::env::temp_dir().join(format!("strata-commands-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    let url = format!("sqlite://{}", dir.join("log.db").display());
    let store = SqliteEventStore::connect(SqliteConfig::new(&url), registry()).await.unwrap();
    store.migrate().await.unwrap();
    Some((
        Arc::new(store),
        Cleanup::new(move || async move {
            let _ = std::fs::remove_dir_all(dir);
        }),
    ))
}

handler_suite!(open);
