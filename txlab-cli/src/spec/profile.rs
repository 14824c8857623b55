//! An experiment profile: the matrix of cells to run and the load each gets.

use serde::{Deserialize, Serialize};
use txlab_api::TxMode;

/// `profiles/<name>.yaml`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Profile {
    pub name: String,
    #[serde(default)]
    pub description: String,
    /// Seeds the arrival times and the generated orders, so a rerun sends
    /// the same orders at the same offsets.
    #[serde(default = "default_seed")]
    pub seed: u64,
    /// Transaction methods to compare.
    pub methods: Vec<TxMode>,
    /// Scenario names, each `scenarios/<name>.yaml`.
    pub scenarios: Vec<String>,
    /// Processes per service (1 to 3: consumer replicas split the 3
    /// partitions of each topic); one cell per entry.
    #[serde(default = "default_replicas")]
    pub replicas: Vec<u32>,
    /// Chaos per cell, one cell per entry: `none`, or the names of Chaos
    /// Mesh objects in `chaos/<name>.yaml` joined by `+`
    /// (`latency-10ms+kill-inventory`), switched on when the warm-up ends
    /// and off when the load ends.
    #[serde(default = "default_chaos")]
    pub chaos: Vec<String>,
    /// Repetitions of every cell (comparisons use the spread across them).
    #[serde(default = "default_repetitions")]
    pub repetitions: u32,
    pub load: LoadSpec,
    /// Longest wait, after the load, for every order to settle.
    #[serde(default = "default_quiesce")]
    pub quiesce_timeout_s: f64,
    #[serde(default)]
    pub seed_data: SeedData,
    /// What a cell may show and still pass; a cell beyond any of these
    /// makes `txlab run` exit 4 (audit violations always exit 3).
    #[serde(default)]
    pub thresholds: Thresholds,
}

/// Limits per cell, as k6's `thresholds:`. Counts default to 0; `null`
/// (`~`) lifts a limit, e.g. `unexpected: ~` for a scenario whose
/// outcomes vary by design.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Thresholds {
    /// Orders whose outcome differs from the scenario's `expect`.
    #[serde(default = "zero")]
    pub unexpected: Option<u64>,
    /// Arrivals not sent because `max_in_flight` orders were in flight.
    #[serde(default = "zero")]
    pub dropped: Option<u64>,
    /// Orders not decided within the driver's follow limit.
    #[serde(default = "zero")]
    pub undecided: Option<u64>,
    /// Failed requests (create, cancel, follow).
    #[serde(default = "zero")]
    pub errors: Option<u64>,
    /// Whether a cell that did not settle before `quiesce_timeout_s` passes.
    #[serde(default)]
    pub allow_unsettled: bool,
    /// Highest decided p99 in ms (censored arrivals included); none by default.
    #[serde(default)]
    pub decided_p99_ms: Option<f64>,
}

pub const NO_CHAOS: &str = "none";

fn default_chaos() -> Vec<String> {
    vec![NO_CHAOS.to_string()]
}

fn zero() -> Option<u64> {
    Some(0)
}

impl Default for Thresholds {
    fn default() -> Self {
        Thresholds {
            unexpected: zero(),
            dropped: zero(),
            undecided: zero(),
            errors: zero(),
            allow_unsettled: false,
            decided_p99_ms: None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Arrival {
    /// Evenly spaced arrivals.
    Constant,
    /// Exponential gaps: bursts and lulls, as real traffic has.
    Poisson,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LoadSpec {
    pub arrival: Arrival,
    /// Target orders per second (open loop: sent on schedule whatever the
    /// latency); a list makes the rate an axis of the matrix, one cell each.
    pub rate: Rates,
    /// Length of the measured load, warm-up included.
    pub duration_s: f64,
    /// Orders sent in the first seconds are run and audited, not measured.
    #[serde(default)]
    pub warmup_s: f64,
    /// Orders in flight beyond this are dropped (and counted) rather than queued.
    #[serde(default = "default_max_in_flight")]
    pub max_in_flight: usize,
}

/// One rate or several (`rate: 100` or `rate: [50, 100, 200]`).
#[derive(Debug, Clone, PartialEq)]
pub struct Rates(pub Vec<f64>);

impl Serialize for Rates {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self.0.as_slice() {
            [one] => s.serialize_f64(*one),
            many => many.serialize(s),
        }
    }
}

impl schemars::JsonSchema for Rates {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Rates".into()
    }
    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "description": "orders per second, or a list of them (one cell each)",
            "anyOf": [
                {"type": "number", "exclusiveMinimum": 0},
                {"type": "array", "items": {"type": "number", "exclusiveMinimum": 0}, "minItems": 1}
            ]
        })
    }
}

impl<'de> Deserialize<'de> for Rates {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = Rates;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("orders per second, or a list of them")
            }
            fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<Rates, E> {
                Ok(Rates(vec![v]))
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Rates, E> {
                Ok(Rates(vec![v as f64]))
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Rates, E> {
                Ok(Rates(vec![v as f64]))
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Rates, A::Error> {
                let mut out = Vec::new();
                while let Some(v) = seq.next_element::<f64>()? {
                    out.push(v);
                }
                Ok(Rates(out))
            }
        }
        d.deserialize_any(Visitor)
    }
}

/// How much of everything the cell starts with.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SeedData {
    pub customers: u32,
    /// Starting balance of each customer, in cents.
    pub balance: i64,
    pub skus: u32,
    /// Starting stock of each SKU.
    pub stock: i64,
    pub slots: u32,
    /// Capacity of each courier slot.
    pub capacity: i64,
    /// Stock of the `hot` SKU that contention scenarios compete for.
    #[serde(default = "default_hot_stock")]
    pub hot_stock: i64,
}

fn default_hot_stock() -> i64 {
    40
}

impl Default for SeedData {
    fn default() -> Self {
        SeedData {
            customers: 200,
            balance: 10_000_000,
            skus: 50,
            stock: 100_000,
            slots: 20,
            capacity: 100_000,
            hot_stock: default_hot_stock(),
        }
    }
}

fn default_seed() -> u64 {
    42
}
fn default_replicas() -> Vec<u32> {
    vec![1]
}
fn default_repetitions() -> u32 {
    1
}
fn default_quiesce() -> f64 {
    30.0
}
fn default_max_in_flight() -> usize {
    2_000
}
