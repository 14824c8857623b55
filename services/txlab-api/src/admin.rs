//! Admin endpoints the lab uses between cells: reset, seed, audit snapshot.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::order::OrderView;

/// `POST /admin/reset`: empties the service's tables and starts a new lab
/// epoch. Events from an earlier epoch are dropped from then on, so work
/// still in flight when one cell ends cannot leak into the next.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Reset {
    #[serde(default)]
    pub epoch: String,
}

/// `POST /admin/seed`: every service takes the part that is its own.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Seed {
    #[serde(default)]
    pub wallets: Vec<Wallet>,
    #[serde(default)]
    pub stock: Vec<StockLevel>,
    #[serde(default)]
    pub slots: Vec<Slot>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Wallet {
    pub customer: String,
    pub balance: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StockLevel {
    pub sku: String,
    pub available: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Slot {
    pub slot: String,
    pub capacity: i64,
}

/// `GET /admin/audit`: everything the audit needs from one service, read in
/// one repeatable-read transaction so the figures agree with each other.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "role", rename_all = "snake_case")]
pub enum Snapshot {
    Order(OrderSnapshot),
    Payment(PaymentSnapshot),
    Inventory(InventorySnapshot),
    Shipping(ShippingSnapshot),
    Notification(NotificationSnapshot),
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderSnapshot {
    pub orders: Vec<OrderView>,
    /// Outbox rows not yet published to Kafka.
    pub outbox_unpublished: i64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PaymentSnapshot {
    pub wallets: Vec<WalletRow>,
    pub payments: Vec<PaymentRow>,
    /// 2PC branches prepared and not yet decided.
    #[serde(default)]
    pub prepared_transactions: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WalletRow {
    pub customer: String,
    pub balance: i64,
    pub reserved: i64,
}

/// A payment record. States: `captured` (money taken), `refunded`,
/// `rejected` (refused on business grounds), `voided` (compensated before
/// it ever ran, so a late charge is refused).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PaymentRow {
    pub order_id: Uuid,
    pub customer: String,
    pub amount: i64,
    pub state: String,
    /// How many times money moved for this record (debits plus credits);
    /// more than the state implies means a step ran twice.
    pub movements: i32,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct InventorySnapshot {
    pub stock: Vec<StockRow>,
    pub reservations: Vec<ReservationRow>,
    /// 2PC branches prepared and not yet decided.
    #[serde(default)]
    pub prepared_transactions: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StockRow {
    pub sku: String,
    pub available: i64,
    pub reserved: i64,
}

/// A reservation record. States: `reserved`, `released`, `rejected`, `voided`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReservationRow {
    pub order_id: Uuid,
    pub state: String,
    pub lines: Vec<crate::participant::ReserveLine>,
    pub movements: i32,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShippingSnapshot {
    pub slots: Vec<SlotRow>,
    pub shipments: Vec<ShipmentRow>,
    /// 2PC branches prepared and not yet decided.
    #[serde(default)]
    pub prepared_transactions: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SlotRow {
    pub slot: String,
    pub capacity: i64,
    pub booked: i64,
}

/// A shipment record. States: `booked`, `cancelled`, `rejected`, `voided`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShipmentRow {
    pub order_id: Uuid,
    pub slot: String,
    pub state: String,
    pub movements: i32,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NotificationSnapshot {
    pub notifications: Vec<NotificationRow>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NotificationRow {
    pub order_id: Uuid,
    /// The order state the notification announces.
    pub kind: String,
    /// When the event was applied, ms since the Unix epoch.
    pub received_ms: i64,
}
