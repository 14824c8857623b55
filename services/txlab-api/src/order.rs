//! The public checkout API served by the order service.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// One line of an order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OrderItem {
    pub sku: String,
    pub qty: i32,
    /// Unit price in cents.
    pub unit_price: i64,
}

/// `POST /orders`. Send an `Idempotency-Key` header to make retries safe.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateOrder {
    pub customer: String,
    pub items: Vec<OrderItem>,
    /// The courier slot to book.
    pub slot: String,
}

impl CreateOrder {
    /// Total in cents; `None` on overflow.
    pub fn amount(&self) -> Option<i64> {
        self.items.iter().try_fold(0i64, |acc, it| {
            acc.checked_add(it.unit_price.checked_mul(i64::from(it.qty))?)
        })
    }

    /// Checks what the type system cannot; the message names the field.
    pub fn validate(&self) -> Result<(), String> {
        if self.customer.trim().is_empty() {
            return Err("`customer` must not be empty".into());
        }
        if self.slot.trim().is_empty() {
            return Err("`slot` must not be empty".into());
        }
        if self.items.is_empty() {
            return Err("`items` must hold at least one item".into());
        }
        if self.items.len() > 100 {
            return Err("`items` holds more than 100 items".into());
        }
        for (i, it) in self.items.iter().enumerate() {
            if it.sku.trim().is_empty() {
                return Err(format!("`items[{i}].sku` must not be empty"));
            }
            if it.qty <= 0 {
                return Err(format!("`items[{i}].qty` must be positive, got {}", it.qty));
            }
            if it.unit_price < 0 {
                return Err(format!("`items[{i}].unit_price` must not be negative"));
            }
        }
        if self.amount().is_none() {
            return Err("order total overflows".into());
        }
        Ok(())
    }
}

crate::text_enum! {
    /// Where an order stands. `Confirmed`, `Rejected`, `Cancelled` and
    /// `NeedsAttention` are terminal, though a confirmed or needs-attention
    /// order can still be cancelled (a business compensation).
    pub enum OrderState ("order state") {
        /// The transaction is running forward.
        Pending = "pending",
        /// Undoing the effects already applied (after a failure or a cancel).
        Compensating = "compensating",
        Confirmed = "confirmed",
        Rejected = "rejected",
        Cancelled = "cancelled",
        /// `outbox` only: a participant failed on business grounds and there is
        /// no compensation; the order waits for a person (by design).
        NeedsAttention = "needs_attention",
    }
}

impl OrderState {
    /// The states whose transaction is still running.
    pub const OPEN: [OrderState; 2] = [OrderState::Pending, OrderState::Compensating];

    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            OrderState::Confirmed | OrderState::Rejected | OrderState::Cancelled | OrderState::NeedsAttention
        )
    }
}

/// An order as the API shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderView {
    pub id: Uuid,
    pub state: OrderState,
    pub customer: String,
    pub amount: i64,
    pub slot: String,
    pub items: Vec<OrderItem>,
    /// Why the order was rejected or cancelled, when it was.
    pub reason: Option<String>,
    pub method: crate::TxMode,
    pub created_ms: i64,
    pub decided_ms: Option<i64>,
}

/// `GET /orders/{id}/workflow`: what the order service recorded of one
/// order's transaction, with the time of every record (ms since the Unix
/// epoch), under every method. Times are when the order service wrote or
/// heard something, not when a participant did it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Workflow {
    pub order: OrderView,
    /// The order-service replica's driver key (methods with an engine).
    pub driver: Option<i32>,
    /// The saga log: saga_orch's steps, what saga_chor and outbox heard,
    /// and, for twopc and tcc, the effects that stood after a commit (and
    /// their business compensation after a cancel).
    pub steps: Vec<StepRecordView>,
    /// The two-phase log of twopc and tcc: each participant's vote and
    /// phase two.
    pub branches: Vec<BranchView>,
    /// The two-phase decision (the commit point), when there is one.
    pub decision: Option<DecisionView>,
    /// Events the order service wrote to its outbox for this order
    /// (checkout events under saga_chor and outbox, the outcome event).
    pub events: Vec<EventView>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepRecordView {
    pub step: crate::Step,
    pub forward: String,
    pub compensation: String,
    /// Calls made (saga_orch) for this step, retries included.
    pub attempts: i32,
    pub reason: Option<String>,
    pub forward_started_ms: Option<i64>,
    pub forward_ended_ms: Option<i64>,
    pub compensation_started_ms: Option<i64>,
    pub compensation_ended_ms: Option<i64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BranchView {
    pub step: crate::Step,
    pub vote: String,
    pub phase2: String,
    pub attempts: i32,
    pub reason: Option<String>,
    /// When the intent to ask was written (one write for every vote).
    pub asked_ms: Option<i64>,
    pub voted_ms: Option<i64>,
    pub phase2_ended_ms: Option<i64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DecisionView {
    /// `commit` or `abort`.
    pub decision: String,
    /// Presumed by the coordinator for an abandoned transaction.
    pub presumed: bool,
    pub decided_ms: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventView {
    pub topic: String,
    /// The event's kind: the checkout event's, or the outcome's state.
    pub kind: String,
    pub created_ms: i64,
    /// When the relay had the broker acknowledge it.
    pub published_ms: Option<i64>,
}

/// Query of `GET /orders/{id}`: with `wait_ms` the call long-polls until the
/// order is terminal or the time is up.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GetOrderQuery {
    pub wait_ms: Option<u64>,
}

/// The header that carries the idempotency key of `POST /orders`.
pub const IDEMPOTENCY_KEY_HEADER: &str = "idempotency-key";
