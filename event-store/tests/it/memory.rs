//! The conformance suite on the in-memory backend.

use std::sync::Arc;

use strata_store::MemoryEventStore;

use crate::conformance::{conformance_suite, Backend};
use crate::support::{registry, Cleanup};

async fn open() -> Option<(Arc<dyn Backend>, Cleanup)> {
    Some((Arc::new(MemoryEventStore::new(registry())), Cleanup::none()))
}

conformance_suite!(open);
