//! given / when / then for aggregates, with no IO: the state is folded from
//! the given events with `evolve`, the command is decided with `decide`, and
//! the result is compared with the expected events or refusal.
//!
//! ```
//! # use strata_commands::testing::given;
//! # use strata_commands::inventory::{Inventory, InventoryCommand, InventoryError};
//! # use strata_schemas::values::Sku;
//! # let at = chrono::Utc::now();
//! let sku = Sku::parse("SKU-1").unwrap();
//! given::<Inventory>([])
//!     .when(InventoryCommand::Reserve { sku: sku.clone(), order_id: uuid::Uuid::nil(), quantity: 1, unit_price_cents: Some(1250), at })
//!     .then_error(InventoryError::UnknownSku { sku });
//! ```

use std::fmt::Debug;

use strata_schemas::DomainEvent;

use crate::Aggregate;

/// The state built from past events, waiting for a command.
pub struct Given<A: Aggregate> {
    state: A::State,
}

/// Starts a scenario from past events (none for a new stream).
pub fn given<A: Aggregate>(events: impl IntoIterator<Item = A::Event>) -> Given<A> {
    let events: Vec<A::Event> = events.into_iter().collect();
    Given { state: A::fold(A::State::default(), &events) }
}

impl<A: Aggregate> Given<A> {
    /// Decides `command` against the given state.
    pub fn when(self, command: A::Command) -> Then<A> {
        let result = A::decide(&self.state, command);
        Then { state: self.state, result }
    }

    /// The folded state, for assertions on `evolve`.
    pub fn state(&self) -> &A::State {
        &self.state
    }
}

/// The decision, waiting for the expectation.
pub struct Then<A: Aggregate> {
    state: A::State,
    result: Result<Vec<A::Event>, A::Error>,
}

impl<A: Aggregate> Then<A> {
    /// Asserts the command was accepted with exactly these events, and returns
    /// the state after them.
    #[track_caller]
    pub fn then(self, expected: impl IntoIterator<Item = A::Event>) -> A::State {
        let expected: Vec<A::Event> = expected.into_iter().collect();
        match self.result {
            Ok(events) => {
                assert_eq!(events, expected, "the command decided other events");
                A::fold(self.state, &events)
            }
            Err(refusal) => panic!("expected events {expected:?}, the command was refused: {refusal:?}"),
        }
    }

    /// Asserts the command was refused with exactly this error (and so wrote nothing).
    #[track_caller]
    pub fn then_error(self, expected: A::Error)
    where
        A::Error: PartialEq,
    {
        match self.result {
            Ok(events) => panic!("expected refusal {expected:?}, the command decided {}", describe(&events)),
            Err(refusal) => assert_eq!(refusal, expected, "the command was refused for another reason"),
        }
    }

    /// Asserts the command was refused with an error matching `check`.
    #[track_caller]
    pub fn then_error_matches(self, check: impl FnOnce(&A::Error) -> bool) {
        match self.result {
            Ok(events) => panic!("expected a refusal, the command decided {}", describe(&events)),
            Err(refusal) => assert!(check(&refusal), "unexpected refusal: {refusal:?}"),
        }
    }

    /// The raw decision.
    pub fn result(self) -> Result<Vec<A::Event>, A::Error> {
        self.result
    }
}

fn describe<E: DomainEvent + Debug>(events: &[E]) -> String {
    if events.is_empty() {
        "no events".to_owned()
    } else {
        format!("{events:?}")
    }
}
