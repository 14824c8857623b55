//! Calls from the order service to the participants. Every call names the
//! order it belongs to; repeating a call is harmless (the participants
//! deduplicate by order id and operation).

use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// `POST /payments/{order_id}/charge`
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChargeRequest {
    pub customer: String,
    pub amount: i64,
}

/// One line of `POST /reservations/{order_id}/reserve`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReserveLine {
    pub sku: String,
    pub qty: i32,
}

/// `POST /reservations/{order_id}/reserve`
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReserveRequest {
    pub lines: Vec<ReserveLine>,
}

/// `POST /shipments/{order_id}/book`
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BookRequest {
    pub slot: String,
}

/// The 200 reply of every participant operation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepReply {
    pub order_id: Uuid,
    /// The participant's record state after the call, e.g. `captured`.
    pub state: String,
    /// True when the call found the operation already done and changed nothing.
    pub repeated: bool,
}

/// Error codes with which a participant refuses on business grounds (HTTP 422).
/// The order service treats these as final; anything else is retried.
pub mod reasons {
    pub const INSUFFICIENT_FUNDS: &str = "insufficient_funds";
    pub const UNKNOWN_CUSTOMER: &str = "unknown_customer";
    pub const OUT_OF_STOCK: &str = "out_of_stock";
    pub const UNKNOWN_SKU: &str = "unknown_sku";
    pub const NO_SLOT: &str = "no_slot";
    pub const UNKNOWN_SLOT: &str = "unknown_slot";
    /// The operation's compensation already ran, so it may not run now.
    pub const ALREADY_COMPENSATED: &str = "already_compensated";
}

/// A two-phase decision (2PC and TCC share the coordinator log).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DecisionKind {
    Commit,
    Abort,
}

/// `GET /twopc/{order_id}/decision` on the order service: the logged
/// decision, or `null` while the transaction is still undecided.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Decision {
    pub order_id: Uuid,
    pub decision: Option<DecisionKind>,
}
