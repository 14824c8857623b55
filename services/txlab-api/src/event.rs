//! Messages that travel over Kafka, always keyed by order id.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::order::OrderState;

/// Producer settings every service uses, recorded with each run.
/// `linger.ms=0`: the 5 ms default would dominate a sub-ms round trip to a
/// local broker and hide the methods' own costs.
pub const PRODUCER_SETTINGS: [(&str, &str); 4] = [
    ("enable.idempotence", "true"),
    ("acks", "all"),
    ("linger.ms", "0"),
    ("message.timeout.ms", "30000"),
];

/// Topic of [`OrderOutcome`] events.
pub const ORDER_EVENTS_TOPIC: &str = "txlab.order-events";

/// Published (through the order service's outbox) each time an order reaches
/// a terminal state. The notification service turns each into one notification.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderOutcome {
    /// Unique per event; the consumer's inbox deduplicates on it.
    pub event_id: Uuid,
    pub order_id: Uuid,
    pub state: OrderState,
    pub customer: String,
    /// When the order service decided, in ms since the Unix epoch.
    pub decided_ms: i64,
}
