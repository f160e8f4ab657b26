//! Payments, one per order (stream `payment-<orderId>`), against a simulated
//! gateway whose answers are a pure function of the request.
//!
//! # Gateway rules ([`gateway_rule`], deterministic)
//!
//! | payment method | amount | answer |
//! |---|---|---|
//! | `card-declined` | any | declined: "card declined" |
//! | `card-no-answer` | any | the gateway never answers ([`PaymentError::NoAnswer`]): a payments service must not reply, so the caller's deadline fires |
//! | anything else | over [`AMOUNT_LIMIT`] cents (5,000.00) | declined: "amount over the limit" |
//! | anything else | up to the limit | authorized |
//!
//! # Rules
//!
//! - Authorize once per order; amounts are 0 to 10^14 cents.
//! - Capture an authorization within [`AUTHORIZATION_VALIDITY`] (7 days) of
//!   it; later is [`PaymentError::AuthorizationExpired`]. Captures are whole.
//! - Void only an uncaptured authorization (compensation before capture);
//!   refund only a captured payment (compensation after capture).
//! - **Fencing.** A void that finds no payment (the authorization never
//!   arrived, or was declined) records [`PaymentFenced`]: an authorization
//!   for the order arriving later (a late or repeated forward command of a
//!   compensated saga) is refused ([`PaymentError::Fenced`]).
//! - Voided, refunded and fenced are terminal.
//!
//! A refusal writes nothing: a declined authorization leaves no payment.

use chrono::{DateTime, Duration, Utc};
use serde::{Deserialize, Serialize};
use strata_schemas::events::{PaymentAuthorized, PaymentCaptured, PaymentEvent, PaymentFenced, PaymentRefunded, PaymentVoided};
use strata_schemas::values::{Cents, InvalidValue};
use uuid::Uuid;

use crate::Aggregate;

/// Amounts above this many cents are declined by the simulated gateway.
pub const AMOUNT_LIMIT: u64 = 500_000;
/// The payment method the simulated gateway always declines.
pub const METHOD_DECLINED: &str = "card-declined";
/// The payment method the simulated gateway never answers.
pub const METHOD_NO_ANSWER: &str = "card-no-answer";
/// How long an authorization can be captured.
pub const AUTHORIZATION_VALIDITY: Duration = Duration::days(7);

/// What the simulated gateway answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GatewayAnswer {
    /// The amount is held.
    Authorized,
    /// Refused, with the gateway's reason.
    Declined(&'static str),
    /// No answer, ever.
    NoAnswer,
}

/// The simulated gateway's deterministic answer (see the module docs).
pub fn gateway_rule(payment_method: &str, amount: Cents) -> GatewayAnswer {
    match payment_method {
        METHOD_DECLINED => GatewayAnswer::Declined("card declined"),
        METHOD_NO_ANSWER => GatewayAnswer::NoAnswer,
        _ if amount.get() > AMOUNT_LIMIT => GatewayAnswer::Declined("amount over the limit"),
        _ => GatewayAnswer::Authorized,
    }
}

/// The payment aggregate.
#[derive(Debug)]
pub enum Payment {}

/// Where a payment is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum PaymentStatus {
    /// Amount held.
    Authorized,
    /// Amount charged.
    Captured,
    /// Authorization released (terminal).
    Voided,
    /// Charge given back (terminal).
    Refunded,
    /// Voided before any authorization arrived (terminal).
    Fenced,
}

/// A payment as folded from its stream.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PaymentState {
    /// `None` before authorization.
    pub status: Option<PaymentStatus>,
    /// The authorized amount.
    pub amount: Cents,
    /// When it was authorized.
    pub authorized_at: Option<DateTime<Utc>>,
}

/// What can be asked of a payment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", rename_all_fields = "camelCase")]
pub enum PaymentCommand {
    /// Hold the order's amount.
    Authorize {
        /// The order.
        order_id: Uuid,
        /// Cents, as sent.
        amount_cents: i64,
        /// Payment method (1 to 64 characters).
        payment_method: String,
        /// When.
        at: DateTime<Utc>,
    },
    /// Charge the held amount.
    Capture {
        /// The order.
        order_id: Uuid,
        /// When.
        at: DateTime<Utc>,
    },
    /// Release an uncaptured authorization.
    Void {
        /// The order.
        order_id: Uuid,
        /// When.
        at: DateTime<Utc>,
    },
    /// Give a captured payment back.
    Refund {
        /// The order.
        order_id: Uuid,
        /// When.
        at: DateTime<Utc>,
    },
}

/// Why a payment command was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PaymentError {
    /// Negative or too large amount.
    #[error(transparent)]
    InvalidAmount(InvalidValue),
    /// Payment method empty, too long, or with a control character.
    #[error("the payment method must have 1 to 64 characters and no control character")]
    InvalidPaymentMethod,
    /// The gateway declined.
    #[error("payment declined: {reason}")]
    Declined {
        /// The gateway's reason.
        reason: String,
    },
    /// The gateway never answers this request; a service must not reply.
    #[error("the payment gateway does not answer")]
    NoAnswer,
    /// The order already has a payment.
    #[error("order {order_id} already has a payment")]
    AlreadyAuthorized {
        /// The order.
        order_id: Uuid,
    },
    /// The order's payment was voided before this authorization arrived.
    #[error("the payment of order {order_id} was voided before this authorization arrived")]
    Fenced {
        /// The order.
        order_id: Uuid,
    },
    /// No payment was authorized for the order.
    #[error("order {order_id} has no payment")]
    NotAuthorized {
        /// The order.
        order_id: Uuid,
    },
    /// The payment's status does not allow the command.
    #[error("cannot {action} a payment that is {status:?}")]
    WrongStatus {
        /// Current status.
        status: PaymentStatus,
        /// What was asked (`capture`, `void`, `refund`).
        action: &'static str,
    },
    /// The authorization is older than [`AUTHORIZATION_VALIDITY`].
    #[error("the authorization expired at {expired_at}")]
    AuthorizationExpired {
        /// When it expired.
        expired_at: DateTime<Utc>,
    },
}

impl Aggregate for Payment {
    const CATEGORY: &'static str = "payment";
    const SNAPSHOT_VERSION: u32 = 1;
    type State = PaymentState;
    type Command = PaymentCommand;
    type Event = PaymentEvent;
    type Error = PaymentError;

    fn aggregate_id(command: &PaymentCommand) -> String {
        match command {
            PaymentCommand::Authorize { order_id, .. }
            | PaymentCommand::Capture { order_id, .. }
            | PaymentCommand::Void { order_id, .. }
            | PaymentCommand::Refund { order_id, .. } => order_id.to_string(),
        }
    }

    fn creates_stream(command: &Self::Command) -> bool {
        matches!(command, PaymentCommand::Authorize { .. })
    }

    fn decide(state: &PaymentState, command: PaymentCommand) -> Result<Vec<PaymentEvent>, PaymentError> {
        match command {
            PaymentCommand::Authorize { order_id, amount_cents, payment_method, at } => {
                match state.status {
                    Some(PaymentStatus::Fenced) => return Err(PaymentError::Fenced { order_id }),
                    Some(_) => return Err(PaymentError::AlreadyAuthorized { order_id }),
                    None => {}
                }
                let amount = Cents::new(amount_cents).map_err(PaymentError::InvalidAmount)?;
                if payment_method.trim().is_empty()
                    || payment_method.chars().count() > 64
                    || payment_method.chars().any(strata_schemas::values::is_forbidden_in_text)
                {
                    return Err(PaymentError::InvalidPaymentMethod);
                }
                match gateway_rule(&payment_method, amount) {
                    GatewayAnswer::Authorized => {
                        Ok(vec![PaymentAuthorized { order_id, amount_cents: amount, payment_method, authorized_at: at }.into()])
                    }
                    GatewayAnswer::Declined(reason) => Err(PaymentError::Declined { reason: reason.into() }),
                    GatewayAnswer::NoAnswer => Err(PaymentError::NoAnswer),
                }
            }
            PaymentCommand::Capture { order_id, at } => {
                require(state, order_id, PaymentStatus::Authorized, "capture")?;
                let authorized_at = state.authorized_at.unwrap_or(at);
                let expired_at = authorized_at + AUTHORIZATION_VALIDITY;
                if at > expired_at {
                    return Err(PaymentError::AuthorizationExpired { expired_at });
                }
                Ok(vec![PaymentCaptured { order_id, amount_cents: state.amount, captured_at: at }.into()])
            }
            PaymentCommand::Void { order_id, at } => {
                if state.status.is_none() {
                    return Ok(vec![PaymentFenced { order_id, fenced_at: at }.into()]);
                }
                require(state, order_id, PaymentStatus::Authorized, "void")?;
                Ok(vec![PaymentVoided { order_id, amount_cents: state.amount, voided_at: at }.into()])
            }
            PaymentCommand::Refund { order_id, at } => {
                require(state, order_id, PaymentStatus::Captured, "refund")?;
                Ok(vec![PaymentRefunded { order_id, amount_cents: state.amount, refunded_at: at }.into()])
            }
        }
    }

    fn evolve(mut state: PaymentState, event: &PaymentEvent) -> PaymentState {
        match event {
            PaymentEvent::PaymentAuthorized(event) => {
                state.status = Some(PaymentStatus::Authorized);
                state.amount = event.amount_cents;
                state.authorized_at = Some(event.authorized_at);
            }
            PaymentEvent::PaymentCaptured(_) => state.status = Some(PaymentStatus::Captured),
            PaymentEvent::PaymentVoided(_) => state.status = Some(PaymentStatus::Voided),
            PaymentEvent::PaymentRefunded(_) => state.status = Some(PaymentStatus::Refunded),
            PaymentEvent::PaymentFenced(_) => state.status = Some(PaymentStatus::Fenced),
        }
        state
    }
}

fn require(state: &PaymentState, order_id: Uuid, wanted: PaymentStatus, action: &'static str) -> Result<(), PaymentError> {
    match state.status {
        None => Err(PaymentError::NotAuthorized { order_id }),
        Some(status) if status == wanted => Ok(()),
        Some(status) => Err(PaymentError::WrongStatus { status, action }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::given;

    fn at() -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000, 0).unwrap()
    }
    fn id() -> Uuid {
        Uuid::from_u128(5)
    }
    fn cents(n: i64) -> Cents {
        Cents::new(n).unwrap()
    }
    fn authorize(method: &str, amount_cents: i64) -> PaymentCommand {
        PaymentCommand::Authorize { order_id: id(), amount_cents, payment_method: method.into(), at: at() }
    }
    fn authorized(amount: i64) -> PaymentEvent {
        PaymentAuthorized { order_id: id(), amount_cents: cents(amount), payment_method: "card".into(), authorized_at: at() }.into()
    }
    fn captured(amount: i64) -> PaymentEvent {
        PaymentCaptured { order_id: id(), amount_cents: cents(amount), captured_at: at() }.into()
    }

    #[test]
    fn a_card_within_the_limit_is_authorized() {
        let state = given::<Payment>([]).when(authorize("card", 2599)).then([authorized(2599)]);
        assert_eq!(state.status, Some(PaymentStatus::Authorized));
        given::<Payment>([]).when(authorize("card", AMOUNT_LIMIT as i64)).then([authorized(AMOUNT_LIMIT as i64)]);
    }

    #[test]
    fn the_declining_method_is_always_declined() {
        given::<Payment>([]).when(authorize(METHOD_DECLINED, 100)).then_error(PaymentError::Declined { reason: "card declined".into() });
    }

    #[test]
    fn an_amount_over_the_limit_is_declined() {
        given::<Payment>([])
            .when(authorize("card", AMOUNT_LIMIT as i64 + 1))
            .then_error(PaymentError::Declined { reason: "amount over the limit".into() });
    }

    #[test]
    fn the_silent_method_never_gets_an_answer() {
        given::<Payment>([]).when(authorize(METHOD_NO_ANSWER, 100)).then_error(PaymentError::NoAnswer);
    }

    #[test]
    fn bad_amounts_and_methods_are_refused() {
        given::<Payment>([]).when(authorize("card", -1)).then_error_matches(|err| matches!(err, PaymentError::InvalidAmount(_)));
        given::<Payment>([]).when(authorize("", 1)).then_error(PaymentError::InvalidPaymentMethod);
        given::<Payment>([authorized(5)]).when(authorize("card", 5)).then_error(PaymentError::AlreadyAuthorized { order_id: id() });
    }

    #[test]
    fn an_authorization_is_captured_within_seven_days_and_not_after() {
        let capture = |at| PaymentCommand::Capture { order_id: id(), at };
        let in_time = at() + AUTHORIZATION_VALIDITY;
        given::<Payment>([authorized(700)]).when(capture(in_time)).then([PaymentCaptured {
            order_id: id(),
            amount_cents: cents(700),
            captured_at: in_time,
        }
        .into()]);
        given::<Payment>([authorized(700)])
            .when(capture(in_time + Duration::seconds(1)))
            .then_error(PaymentError::AuthorizationExpired { expired_at: in_time });
    }

    #[test]
    fn an_uncaptured_authorization_is_voided_and_a_capture_is_refunded() {
        let state = given::<Payment>([authorized(700)]).when(PaymentCommand::Void { order_id: id(), at: at() }).then([PaymentVoided {
            order_id: id(),
            amount_cents: cents(700),
            voided_at: at(),
        }
        .into()]);
        assert_eq!(state.status, Some(PaymentStatus::Voided));
        given::<Payment>([authorized(700), captured(700)])
            .when(PaymentCommand::Refund { order_id: id(), at: at() })
            .then([PaymentRefunded { order_id: id(), amount_cents: cents(700), refunded_at: at() }.into()]);
    }

    #[test]
    fn void_after_capture_refund_before_capture_and_anything_without_payment_are_refused() {
        given::<Payment>([authorized(700), captured(700)])
            .when(PaymentCommand::Void { order_id: id(), at: at() })
            .then_error(PaymentError::WrongStatus { status: PaymentStatus::Captured, action: "void" });
        given::<Payment>([authorized(700)])
            .when(PaymentCommand::Refund { order_id: id(), at: at() })
            .then_error(PaymentError::WrongStatus { status: PaymentStatus::Authorized, action: "refund" });
        given::<Payment>([])
            .when(PaymentCommand::Refund { order_id: id(), at: at() })
            .then_error(PaymentError::NotAuthorized { order_id: id() });
        given::<Payment>([authorized(700), PaymentVoided { order_id: id(), amount_cents: cents(700), voided_at: at() }.into()])
            .when(PaymentCommand::Capture { order_id: id(), at: at() })
            .then_error(PaymentError::WrongStatus { status: PaymentStatus::Voided, action: "capture" });
    }

    #[test]
    fn a_void_without_a_payment_fences_the_order_against_a_late_authorization() {
        let fenced: PaymentEvent = PaymentFenced { order_id: id(), fenced_at: at() }.into();
        let state = given::<Payment>([]).when(PaymentCommand::Void { order_id: id(), at: at() }).then([fenced.clone()]);
        assert_eq!(state.status, Some(PaymentStatus::Fenced));
        given::<Payment>([fenced.clone()]).when(authorize("card", 5)).then_error(PaymentError::Fenced { order_id: id() });
        given::<Payment>([fenced.clone()])
            .when(PaymentCommand::Void { order_id: id(), at: at() })
            .then_error(PaymentError::WrongStatus { status: PaymentStatus::Fenced, action: "void" });
        given::<Payment>([fenced])
            .when(PaymentCommand::Capture { order_id: id(), at: at() })
            .then_error(PaymentError::WrongStatus { status: PaymentStatus::Fenced, action: "capture" });
    }
}
