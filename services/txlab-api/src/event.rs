//! Messages that travel over Kafka, always keyed by order id.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::order::{OrderItem, OrderState};
use crate::Role;

/// Producer settings every service uses, recorded with each run.
/// `linger.ms=0`: the 5 ms default would dominate a sub-ms round trip to a
/// local broker and hide the methods' own costs.
pub const PRODUCER_SETTINGS: [(&str, &str); 4] = [
    ("enable.idempotence", "true"),
    ("acks", "all"),
    ("linger.ms", "0"),
    ("message.timeout.ms", "30000"),
];

/// The PostgreSQL advisory lock (in each service's own database) held by
/// the one outbox relay that publishes; the service's other replicas wait
/// for it.
pub const OUTBOX_RELAY_LOCK: i64 = 0x7478_6c61_625f_6f62; // "txlab_ob"

/// Partitions of every lab topic. Replicas of a consuming role split a
/// topic's partitions among them, so this is also the most replicas a role
/// may have.
pub const TOPIC_PARTITIONS: i32 = 3;

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
    /// The lab epoch (cell) the event belongs to; see [`crate::admin::Reset`].
    #[serde(default)]
    pub epoch: String,
}

/// Topics of [`CheckoutEvent`]s, through which the event-driven methods
/// (`saga_chor`, `outbox`) coordinate: one per service that reads them,
/// and an event goes only to the services that act on it
/// (`txlab_tx::choreography::audience`). On one shared topic every
/// reader fetched, decoded and skipped every other service's events: four
/// fetches per event where one or two were wanted, the broker's largest
/// cost per checkout. Keyed by order id, so each reader gets an order's
/// events in one partition, in the order they were produced.
pub const CHECKOUT_TOPICS: [(Role, &str); 4] = [
    (Role::Order, "txlab.checkout.order"),
    (Role::Payment, "txlab.checkout.payment"),
    (Role::Inventory, "txlab.checkout.inventory"),
    (Role::Shipping, "txlab.checkout.shipping"),
];

/// The topic of the checkout events `reader` acts on (none for the
/// notification service, which hears only outcomes).
pub fn checkout_topic(reader: Role) -> Option<&'static str> {
    CHECKOUT_TOPICS
        .iter()
        .find(|(r, _)| *r == reader)
        .map(|(_, t)| *t)
}

/// Dead-letter topic: business failures under `outbox`, for people to handle.
pub const DEAD_LETTER_TOPIC: &str = "txlab.checkout.dead-letter";

/// The checkout events' topics, in [`CHECKOUT_TOPICS`]' order.
pub fn checkout_topics() -> impl Iterator<Item = &'static str> {
    CHECKOUT_TOPICS.into_iter().map(|(_, topic)| topic)
}

/// Every topic the services create and use.
pub fn lab_topics() -> impl Iterator<Item = &'static str> {
    [ORDER_EVENTS_TOPIC]
        .into_iter()
        .chain(checkout_topics())
        .chain([DEAD_LETTER_TOPIC])
}

/// What an order needs from each participant, carried by every event so a
/// participant can act on it alone.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderSpec {
    pub customer: String,
    pub amount: i64,
    pub items: Vec<OrderItem>,
    pub slot: String,
    /// The order's `X-Txlab-Fault` header, so scenarios reach event handlers too.
    pub fault: Option<String>,
}

impl OrderSpec {
    /// The payment participant's part.
    pub fn charge(&self) -> crate::participant::ChargeRequest {
        crate::participant::ChargeRequest {
            customer: self.customer.clone(),
            amount: self.amount,
        }
    }

    /// The inventory participant's part.
    pub fn reserve(&self) -> crate::participant::ReserveRequest {
        crate::participant::ReserveRequest {
            lines: self
                .items
                .iter()
                .map(|i| crate::participant::ReserveLine {
                    sku: i.sku.clone(),
                    qty: i.qty,
                })
                .collect(),
        }
    }

    /// The shipping participant's part.
    pub fn book(&self) -> crate::participant::BookRequest {
        crate::participant::BookRequest {
            slot: self.slot.clone(),
        }
    }
}

/// What happened, and at which step of the checkout.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum CheckoutKind {
    OrderPlaced,
    CancelRequested,
    Applied { step: crate::Step },
    Rejected { step: crate::Step, reason: String },
    Compensated { step: crate::Step },
}

impl CheckoutKind {
    /// The kind's name, as its `kind` tag on the wire says it.
    pub fn name(&self) -> &'static str {
        match self {
            CheckoutKind::OrderPlaced => "order_placed",
            CheckoutKind::CancelRequested => "cancel_requested",
            CheckoutKind::Applied { .. } => "applied",
            CheckoutKind::Rejected { .. } => "rejected",
            CheckoutKind::Compensated { .. } => "compensated",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckoutEvent {
    /// Unique per event; consumers' inboxes deduplicate on it.
    pub event_id: Uuid,
    pub order_id: Uuid,
    #[serde(flatten)]
    pub kind: CheckoutKind,
    pub order: OrderSpec,
    /// The lab epoch (cell) the event belongs to; see [`crate::admin::Reset`].
    #[serde(default)]
    pub epoch: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checkout_events_carry_their_kind_inline() {
        let e = CheckoutEvent {
            event_id: Uuid::nil(),
            order_id: Uuid::nil(),
            kind: CheckoutKind::Rejected {
                step: crate::Step::Inventory,
                reason: "out_of_stock".into(),
            },
            order: OrderSpec {
                customer: "c".into(),
                amount: 5,
                items: vec![],
                slot: "s".into(),
                fault: None,
            },
            epoch: "cell-1".into(),
        };
        let v = serde_json::to_value(&e).unwrap();
        assert_eq!(v["kind"], e.kind.name(), "name() is the wire tag");
        assert_eq!(v["step"], "inventory");
        assert_eq!(serde_json::from_value::<CheckoutEvent>(v).unwrap(), e);
    }
}
