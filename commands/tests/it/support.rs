//! Helpers: the backends as one trait object, handlers, event builders and
//! store wrappers that inject faults at the store seam.

use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use strata_commands::inventory::{Inventory, InventoryCommand};
use strata_commands::{Aggregate, CommandHandler, Envelope, HandlerConfig};
use strata_schemas::values::Sku;
use strata_schemas::{catalog, SchemaRegistry};
use strata_store::{
    AppendError, AppendOutcome, BackendError, EventStore, ExpectedVersion, ReadStream, SnapshotStore, StreamAppend, StreamId,
};
use uuid::Uuid;

/// The log and the snapshots beside it, as every backend offers them.
pub trait Backend: EventStore + SnapshotStore {}
impl<T: EventStore + SnapshotStore> Backend for T {}

pub type Store = Arc<dyn Backend>;

pub fn registry() -> Arc<SchemaRegistry> {
    Arc::new(catalog::registry().expect("catalog builds"))
}

pub fn handler<A: Aggregate>(store: &Store, config: HandlerConfig) -> CommandHandler<A> {
    CommandHandler::new(store.clone(), Some(store.clone()), config)
}

pub fn at() -> DateTime<Utc> {
    DateTime::from_timestamp(1_800_000_000, 0).unwrap()
}

/// A SKU no other test uses.
pub fn fresh_sku() -> Sku {
    Sku::parse(&format!("SKU-{}", Uuid::new_v4().simple()).to_uppercase()).unwrap()
}

/// The catalog price test SKUs are given ([`price`]) and reserved at.
pub const PRICE: i64 = 1250;

/// Sets the SKU's catalog price to [`PRICE`]: reservations need one.
pub fn price(sku: &Sku) -> Envelope<InventoryCommand> {
    Envelope::new(Uuid::new_v4(), InventoryCommand::SetPrice { sku: sku.clone(), unit_price_cents: PRICE, at: at() })
}

pub fn restock(sku: &Sku, quantity: i64) -> Envelope<InventoryCommand> {
    Envelope::new(Uuid::new_v4(), InventoryCommand::Restock { sku: sku.clone(), quantity, unit_price_cents: None, at: at() })
}

pub fn reserve(sku: &Sku, order_id: Uuid, quantity: i64) -> Envelope<InventoryCommand> {
    Envelope::new(
        Uuid::new_v4(),
        InventoryCommand::Reserve { sku: sku.clone(), order_id, quantity, unit_price_cents: Some(PRICE), at: at() },
    )
}

pub fn inventory_stream(sku: &Sku) -> StreamId {
    StreamId::new("inventory", sku).unwrap()
}

pub async fn stream_len(store: &Store, stream_id: &StreamId) -> usize {
    store.read_stream(stream_id, ReadStream::forward(100_000)).await.unwrap().len()
}

pub use strata_store::testkit::Cleanup;

/// What a [`Faulty`] store does around each append.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Appends, then reports a lost connection: the caller never hears back.
    LoseReplyAfterAppend,
    /// Another writer appends to the same stream just before every append.
    RaceEveryAppend,
}

/// Wraps a store and injects a [`Fault`] at the append seam; reads pass through.
pub struct Faulty {
    pub inner: Store,
    pub fault: Fault,
}

strata_store::forward_event_reader!(Faulty, inner);

#[async_trait]
impl EventStore for Faulty {
    async fn append(&self, request: Vec<StreamAppend>) -> Result<AppendOutcome, AppendError> {
        match self.fault {
            Fault::LoseReplyAfterAppend => {
                self.inner.append(request).await?;
                Err(AppendError::Backend(BackendError::new("waiting for the commit reply", "connection reset by peer")))
            }
            Fault::RaceEveryAppend => {
                let stream_id = &request[0].stream_id;
                let sku = Sku::parse(stream_id.id()).unwrap();
                let rival = restock(&sku, 1);
                let InventoryCommand::Restock { .. } = &rival.command else { unreachable!() };
                let events = Inventory::decide(&Default::default(), rival.command).unwrap();
                let rival_append = vec![StreamAppend {
                    stream_id: stream_id.clone(),
                    expected: ExpectedVersion::Any,
                    events: events
                        .iter()
                        .map(|event| strata_store::NewEvent {
                            event_id: Uuid::new_v4(),
                            event_type: strata_schemas::DomainEvent::event_type(event).into(),
                            schema_version: 1,
                            payload: strata_schemas::DomainEvent::to_payload(event),
                            metadata: Default::default(),
                        })
                        .collect(),
                }];
                self.inner.append(rival_append).await?;
                self.inner.append(request).await
            }
        }
    }
}
