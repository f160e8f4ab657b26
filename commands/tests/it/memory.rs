//! The handler suite on the in-memory store.

use std::sync::Arc;

use strata_store::MemoryEventStore;

use crate::suite::handler_suite;
use crate::support::{registry, Cleanup, Store};

async fn open() -> Option<(Store, Cleanup)> {
    Some((Arc::new(MemoryEventStore::new(registry())), Cleanup::none()))
}

handler_suite!(open);
