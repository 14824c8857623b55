//! Wire types shared by the `txlab` CLI and the checkout services.
//!
//! - [`order`]: the public checkout API (`POST /orders`, `GET /orders/{id}`, cancel).
//! - [`participant`]: the calls the order service makes to payment, inventory
//!   and shipping, and their replies.
//! - [`admin`]: reset, seed and audit snapshots, used by the lab between cells.
//! - [`event`]: messages that travel over Kafka.
//! - [`fault`]: the per-request fault header a scenario uses to fail one step.
//! - [`ErrorBody`]: the JSON body of every non-2xx reply.
//!
//! This crate does no IO, so both sides agree on the wire by construction.

pub mod admin;
pub mod event;
pub mod fault;
pub mod order;
pub mod participant;

use serde::{Deserialize, Serialize};

/// The JSON body of every error reply: a stable machine-readable `error`
/// code and a sentence for people.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: String,
    pub message: String,
}

/// The five services of the checkout. One binary, `txlab-svc <role>`, runs any of them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Order,
    Payment,
    Inventory,
    Shipping,
    Notification,
}

impl Role {
    pub const ALL: [Role; 5] = [
        Role::Order,
        Role::Payment,
        Role::Inventory,
        Role::Shipping,
        Role::Notification,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Order => "order",
            Role::Payment => "payment",
            Role::Inventory => "inventory",
            Role::Shipping => "shipping",
            Role::Notification => "notification",
        }
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Role {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Role::ALL
            .into_iter()
            .find(|r| r.as_str() == s)
            .ok_or_else(|| {
                format!("unknown role `{s}`; expected one of order, payment, inventory, shipping, notification")
            })
    }
}

/// The transaction method a deployment runs (`TX_MODE`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TxMode {
    Twopc,
    Tcc,
    Outbox,
    SagaChor,
    SagaOrch,
}

impl TxMode {
    pub const ALL: [TxMode; 5] = [
        TxMode::Twopc,
        TxMode::Tcc,
        TxMode::Outbox,
        TxMode::SagaChor,
        TxMode::SagaOrch,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            TxMode::Twopc => "twopc",
            TxMode::Tcc => "tcc",
            TxMode::Outbox => "outbox",
            TxMode::SagaChor => "saga_chor",
            TxMode::SagaOrch => "saga_orch",
        }
    }

    /// Whether the services coordinate through events (no coordinator calls).
    pub fn is_event_driven(self) -> bool {
        matches!(self, TxMode::SagaChor | TxMode::Outbox)
    }
}

impl std::fmt::Display for TxMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for TxMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        TxMode::ALL
            .into_iter()
            .find(|m| m.as_str() == s)
            .ok_or_else(|| {
                format!("unknown transaction method `{s}`; expected one of twopc, tcc, outbox, saga_chor, saga_orch")
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn role_and_mode_names_round_trip() {
        for r in Role::ALL {
            assert_eq!(r.as_str().parse::<Role>().unwrap(), r);
            assert_eq!(serde_json::to_string(&r).unwrap(), format!("\"{r}\""));
        }
        for m in TxMode::ALL {
            assert_eq!(m.as_str().parse::<TxMode>().unwrap(), m);
            assert_eq!(serde_json::to_string(&m).unwrap(), format!("\"{m}\""));
        }
        assert!("saga".parse::<TxMode>().unwrap_err().contains("saga_orch"));
    }
}
