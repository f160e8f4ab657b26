//! The handler suite on PostgreSQL (a fresh database per test): the
//! no-oversell, idempotency and snapshot cases against the production log.

use std::sync::Arc;

use strata_store::testkit::postgres::TestDatabase;
use strata_store::{PostgresConfig, PostgresEventStore};

use crate::suite::handler_suite;
use crate::support::{registry, Cleanup, Store};

async fn open() -> Option<(Store, Cleanup)> {
    let database = TestDatabase::create().await?;
    let mut config = PostgresConfig::new(&database.url);
    config.max_connections = 8;
    let store = PostgresEventStore::connect(config, registry()).await.unwrap();
    store.migrate().await.unwrap();
    Some((Arc::new(store), Cleanup::new(move || database.drop_database())))
}

handler_suite!(open);
