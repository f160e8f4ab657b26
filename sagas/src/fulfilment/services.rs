//! [`FulfilmentServices`]: carries the saga's commands to the command
//! handlers of orders, inventory, payments and shipping in this process,
//! and classifies their answers into [`Outcome`]s.
//!
//! Classification (the saga's view of each service's rules):
//! - a refusal that will not change (out of stock, declined, undeliverable,
//!   an order no longer pending) is `Refused`;
//! - the payment gateway not answering is `NoAnswer`;
//! - a compensation with nothing left to undo is `Done`: the services fence
//!   it when nothing was there (a release without a reservation, a void
//!   without a payment, a cancellation without a shipment record a fence, so
//!   a late forward command is refused), and an undo already done (released,
//!   voided, refunded, cancelled, fenced, an order already cancelled, a
//!   refund of a payment never captured, a return of a SKU never stocked) is
//!   `Done` too; so is an action already applied under another id (already
//!   reserved, authorized, created, captured);
//! - a forward command that arrives after its compensation (fenced) is
//!   `Refused`;
//! - a void of a captured payment becomes a refund (its own derived id);
//! - every infrastructure error is `Transient`.

use std::sync::Arc;

use async_trait::async_trait;
use strata_commands::inventory::{Inventory, InventoryCommand, InventoryError};
use strata_commands::orders::{Order, OrderError, OrderStatus};
use strata_commands::payments::{Payment, PaymentCommand, PaymentError, PaymentStatus};
use strata_commands::shipping::{Shipment, ShipmentCommand, ShippingError};
use strata_commands::{Aggregate, CommandContext, CommandError, CommandHandler, Envelope, HandlerConfig};
use strata_store::{EventStore, SnapshotStore};
use uuid::Uuid;

use crate::saga::{Outcome, Services};

/// A command of the fulfilment saga, for one of the four services.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "service", content = "command", rename_all = "camelCase")]
pub enum FulfilmentCommand {
    /// To the orders service.
    Order(strata_commands::orders::OrderCommand),
    /// To the inventory service.
    Inventory(strata_commands::inventory::InventoryCommand),
    /// To the payments service.
    Payment(PaymentCommand),
    /// To the shipping service.
    Shipment(ShipmentCommand),
}

/// The four services, in process, on one event store.
#[derive(Clone)]
pub struct FulfilmentServices {
    orders: CommandHandler<Order>,
    inventory: CommandHandler<Inventory>,
    payments: CommandHandler<Payment>,
    shipping: CommandHandler<Shipment>,
    actor: String,
}

impl FulfilmentServices {
    /// Services writing to `store` as `actor`.
    pub fn new(
        store: Arc<dyn EventStore>,
        snapshots: Option<Arc<dyn SnapshotStore>>,
        config: HandlerConfig,
        actor: impl Into<String>,
    ) -> Self {
        Self {
            orders: CommandHandler::new(store.clone(), snapshots.clone(), config.clone()),
            inventory: CommandHandler::new(store.clone(), snapshots.clone(), config.clone()),
            payments: CommandHandler::new(store.clone(), snapshots.clone(), config.clone()),
            shipping: CommandHandler::new(store, snapshots, config),
            actor: actor.into(),
        }
    }

    fn envelope<C>(&self, command_id: Uuid, correlation_id: Uuid, command: C) -> Envelope<C> {
        Envelope {
            command_id,
            command,
            context: CommandContext {
                correlation_id: Some(correlation_id),
                causation_id: Some(command_id),
                actor: Some(self.actor.clone()),
                traceparent: None,
            },
        }
    }
}

fn classify<A: Aggregate>(
    result: Result<strata_commands::CommandOutcome, CommandError<A::Error>>,
    refusal: impl FnOnce(&A::Error) -> Outcome,
) -> Outcome {
    match result {
        Ok(_) => Outcome::Done,
        Err(CommandError::Rejected(error)) => refusal(&error),
        Err(error) => Outcome::Transient(strata_store::chain(&error)),
    }
}

#[async_trait]
impl Services<FulfilmentCommand> for FulfilmentServices {
    async fn execute(&self, command_id: Uuid, correlation_id: Uuid, command: &FulfilmentCommand) -> Outcome {
        // Each arm clones its command once, into the envelope.
        match command {
            FulfilmentCommand::Order(command) => {
                let cancelling = matches!(command, strata_commands::orders::OrderCommand::Cancel { .. });
                let result = self.orders.handle(self.envelope(command_id, correlation_id, command.clone())).await;
                classify::<Order>(result, |error| match error {
                    OrderError::WrongStatus { status: OrderStatus::Cancelled, .. } if cancelling => Outcome::Done,
                    error => Outcome::Refused(strata_store::chain(error)),
                })
            }
            FulfilmentCommand::Inventory(command) => {
                let result = self.inventory.handle(self.envelope(command_id, correlation_id, command.clone())).await;
                classify::<Inventory>(result, |error| match (error, command) {
                    (InventoryError::AlreadyReserved { .. }, _) => Outcome::Done,
                    (InventoryError::NoReservation { .. }, InventoryCommand::Release { .. }) => Outcome::Done,
                    (InventoryError::UnknownSku { .. }, InventoryCommand::Return { .. }) => Outcome::Done,
                    (error, _) => Outcome::Refused(strata_store::chain(error)),
                })
            }
            FulfilmentCommand::Payment(command) => {
                let void_of = match command {
                    PaymentCommand::Void { order_id, at } => Some((*order_id, *at)),
                    _ => None,
                };
                let refunding = matches!(command, PaymentCommand::Refund { .. });
                let result = self.payments.handle(self.envelope(command_id, correlation_id, command.clone())).await;
                if let (
                    Some((order_id, at)),
                    Err(CommandError::Rejected(PaymentError::WrongStatus { status: PaymentStatus::Captured, .. })),
                ) = (void_of, &result)
                {
                    let refund_id = Uuid::new_v5(&command_id, b"refund");
                    let result =
                        self.payments.handle(self.envelope(refund_id, correlation_id, PaymentCommand::Refund { order_id, at })).await;
                    return classify::<Payment>(result, |error| match error {
                        PaymentError::WrongStatus { status: PaymentStatus::Refunded, .. } => Outcome::Done,
                        error => Outcome::Refused(strata_store::chain(error)),
                    });
                }
                classify::<Payment>(result, |error| match error {
                    PaymentError::NoAnswer => Outcome::NoAnswer,
                    PaymentError::AlreadyAuthorized { .. } => Outcome::Done,
                    // Nothing captured to refund: the authorization's own
                    // compensation voids (or fences) what is there.
                    PaymentError::NotAuthorized { .. } | PaymentError::WrongStatus { .. } if refunding => Outcome::Done,
                    PaymentError::WrongStatus {
                        status: PaymentStatus::Voided | PaymentStatus::Refunded | PaymentStatus::Fenced,
                        action: "void",
                    } => Outcome::Done,
                    PaymentError::WrongStatus { status: PaymentStatus::Captured, action: "capture" } => Outcome::Done,
                    error => Outcome::Refused(strata_store::chain(error)),
                })
            }
            FulfilmentCommand::Shipment(command) => {
                let cancelling = matches!(command, ShipmentCommand::Cancel { .. });
                let result = self.shipping.handle(self.envelope(command_id, correlation_id, command.clone())).await;
                classify::<Shipment>(result, |error| match error {
                    ShippingError::AlreadyCreated { .. } => Outcome::Done,
                    ShippingError::AlreadyCancelled { .. } if cancelling => Outcome::Done,
                    error => Outcome::Refused(strata_store::chain(error)),
                })
            }
        }
    }
}
