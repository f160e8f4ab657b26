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

/// The first process appends and dies before replying; a second process
/// (its own pool, its own handler) gets the command again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_repeated_by_another_process_after_a_lost_reply_has_one_effect() {
    use strata_commands::inventory::Inventory;
    use strata_commands::{CommandError, CommandHandler, HandlerConfig};

    use crate::support::{fresh_sku, inventory_stream, restock, stream_len, Fault, Faulty};

    let Some(database) = TestDatabase::create().await else { return };
    let connect = || async {
        let store = PostgresEventStore::connect(PostgresConfig::new(&database.url), registry()).await.unwrap();
        store.migrate().await.unwrap();
        Arc::new(store) as Store
    };
    let (first_process, second_process) = (connect().await, connect().await);
    let sku = fresh_sku();
    let command = restock(&sku, 3);
    let dying = CommandHandler::<Inventory>::new(
        Arc::new(Faulty { inner: first_process.clone(), fault: Fault::LoseReplyAfterAppend }),
        None,
        HandlerConfig::default(),
    );
    assert!(matches!(dying.handle(command.clone()).await, Err(CommandError::Append(_))));
    drop(dying);
    drop(first_process);

    let handler = CommandHandler::<Inventory>::new(second_process.clone(), Some(second_process.clone()), HandlerConfig::default());
    let outcome = handler.handle(command.clone()).await.unwrap();
    assert!(outcome.replayed);
    let again = handler.handle(command).await.unwrap();
    assert_eq!(again.events, outcome.events);
    assert_eq!(stream_len(&second_process, &inventory_stream(&sku)).await, 1);
    assert_eq!(handler.load(sku.as_str()).await.unwrap().state.on_hand, 3);
    drop(handler);
    drop(second_process);
    database.drop_database().await;
}
