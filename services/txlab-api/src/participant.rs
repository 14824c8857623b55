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

crate::text_enum! {
    /// The state of a participant's record of one order: what this participant
    /// did for it. Stored as text in the records' `state` column (a CHECK
    /// constraint keeps the database to these names); the audit reads it back.
    pub enum RecordState ("record state") {
        /// TCC: resources held, not yet taken.
        Tried = "tried",
        /// Payment: money taken.
        Captured = "captured",
        /// Inventory: stock taken.
        Reserved = "reserved",
        /// Shipping: slot taken.
        Booked = "booked",
        /// Payment: money given back.
        Refunded = "refunded",
        /// Inventory: stock given back.
        Released = "released",
        /// Shipping: slot given back.
        Cancelled = "cancelled",
        /// TCC: a held resource let go.
        Aborted = "aborted",
        /// Refused on business grounds; nothing held.
        Rejected = "rejected",
        /// Compensated before anything ran, so a late forward call is refused.
        Voided = "voided",
        /// 2PC: the branch's work is prepared and awaits the decision. Only
        /// ever in a reply: the record itself appears when the branch commits.
        Prepared = "prepared",
    }
}

impl RecordState {
    /// What the ledger must hold for a record in this state: how many times
    /// each operation moved the order's items. The same under every method:
    /// a saga step or 2PC branch holds and captures in one transaction, a
    /// TCC try holds and its confirm captures.
    pub fn ledger_ops(self) -> LedgerCount {
        use RecordState::*;
        let (hold, capture, release, restore) = match self {
            Rejected | Voided => (0, 0, 0, 0),
            Tried => (1, 0, 0, 0),
            Aborted => (1, 0, 1, 0),
            Captured | Reserved | Booked | Prepared => (1, 1, 0, 0),
            Refunded | Released | Cancelled => (1, 1, 0, 1),
        };
        LedgerCount {
            hold,
            capture,
            release,
            restore,
        }
    }
}

crate::text_enum! {
    /// A business change a participant makes, one ledger row per item moved.
    /// The ledger is append-only and written in the same transaction as the
    /// change, so the audit counts what really moved rather than trusting a
    /// counter kept beside the state.
    pub enum LedgerOp ("ledger operation") {
        /// Set aside (balance → reserved, available → reserved, a slot booked).
        Hold = "hold",
        /// Take what was held, for good.
        Capture = "capture",
        /// Give back what was held.
        Release = "release",
        /// Give back what was captured (a refund, a restock, a freed slot).
        Restore = "restore",
    }
}

/// How many ledger operations of each kind an order's record implies.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LedgerCount {
    pub hold: u32,
    pub capture: u32,
    pub release: u32,
    pub restore: u32,
}

impl LedgerCount {
    /// How many times `op` is counted.
    pub fn times(&self, op: LedgerOp) -> u32 {
        match op {
            LedgerOp::Hold => self.hold,
            LedgerOp::Capture => self.capture,
            LedgerOp::Release => self.release,
            LedgerOp::Restore => self.restore,
        }
    }
}

/// The 200 reply of every participant operation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepReply {
    pub order_id: Uuid,
    /// The participant's record state after the call, e.g. `captured`.
    pub state: RecordState,
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

crate::text_enum! {
    /// A two-phase decision (2PC and TCC share the coordinator log).
    pub enum DecisionKind ("decision") {
        Commit = "commit",
        Abort = "abort",
    }
}

/// `GET /twopc/{order_id}/decision` on the order service: the logged
/// decision, or `null` while the transaction is still undecided.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Decision {
    pub order_id: Uuid,
    pub decision: Option<DecisionKind>,
}
