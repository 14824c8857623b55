//! Admin endpoints the lab uses between cells: reset, seed, audit snapshot.

use serde::{Deserialize, Serialize};

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

/// The header that carries the lab epoch of an order on every call the
/// order service makes to a participant. A participant refuses a call from
/// another epoch (409 `stale_epoch`), as event handlers drop events of
/// another epoch: work left over from a reset cell cannot touch the next.
pub const EPOCH_HEADER: &str = "x-txlab-epoch";

/// The error code of a call fenced off by [`EPOCH_HEADER`].
pub const STALE_EPOCH: &str = "stale_epoch";
