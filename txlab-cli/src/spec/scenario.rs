//! A workload scenario: what each order of a cell looks like, which fault
//! it carries, whether it is cancelled, and what its outcome should be.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use txlab_api::fault::StandingFault;
use txlab_api::order::OrderState;
use txlab_api::{Role, TxMode};

/// `scenarios/<name>.yaml`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    /// Must equal the file name without `.yaml`.
    pub name: String,
    /// One or two sentences on what the scenario shows.
    pub description: String,
    /// How orders are built.
    #[serde(default)]
    pub order: OrderTemplate,
    /// `X-Txlab-Fault` header sent with every order, e.g.
    /// `inventory.before_db=delay:300` (grammar: `txlab_api::fault`).
    #[serde(default)]
    pub fault: Option<String>,
    /// A fault one service carries for the whole cell, set through its
    /// `/admin/faults` before the load and cleared after it. A service that
    /// crashes comes back without it, as a restarted pod comes back with
    /// its original configuration, so a crash fault crashes it once.
    #[serde(default)]
    pub standing_fault: Option<ScenarioFault>,
    /// Cancel each order this many ms after it was accepted.
    #[serde(default)]
    pub cancel_after_ms: Option<u64>,
    /// The outcome every order should reach; others count as unexpected.
    pub expect: OrderState,
    /// Methods whose contract makes a different outcome right, e.g.
    /// `{outbox: needs_attention}` for a refused step (outbox never compensates).
    #[serde(default)]
    pub expect_by_method: BTreeMap<TxMode, OrderState>,
}

/// `standing_fault:` of a scenario: which service, and the fault.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ScenarioFault {
    pub role: Role,
    #[serde(flatten)]
    pub fault: StandingFault,
}

impl Scenario {
    /// The outcome expected under `method`.
    pub fn expect_for(&self, method: TxMode) -> OrderState {
        self.expect_by_method.get(&method).copied().unwrap_or(self.expect)
    }
}

/// Who buys what. `any` picks from the seeded pool (deterministically, from
/// the profile's seed); any other value names a seeded entity, such as the
/// always-seeded `broke` customer, `sold-out` SKU or `full` slot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct OrderTemplate {
    #[serde(default = "any")]
    pub customer: String,
    #[serde(default = "any")]
    pub sku: String,
    #[serde(default = "any")]
    pub slot: String,
    /// Lines per order: 1 to this many.
    #[serde(default = "default_max_lines")]
    pub max_lines: u32,
}

fn any() -> String {
    "any".into()
}
fn default_max_lines() -> u32 {
    3
}

impl Default for OrderTemplate {
    fn default() -> Self {
        OrderTemplate {
            customer: any(),
            sku: any(),
            slot: any(),
            max_lines: default_max_lines(),
        }
    }
}
