//! What the user writes: scenarios and profiles as YAML, and the validated
//! [`Plan`] built from them before anything is started.
//!
//! Raw files ([`Profile`], [`Scenario`]) are kept apart from the resolved
//! plan, so every check happens up front and a mistake is reported with
//! file, line and field instead of surfacing half-way through a run.

mod plan;
mod profile;
mod scenario;
pub mod schema;
pub mod yaml;

pub use plan::{Cell, CellChaos, Plan, SeedPlan, Stage};
pub use profile::{Arrival, LoadSpec, Profile, Rates, SeedData, Thresholds, NO_CHAOS};
pub use scenario::{OrderTemplate, Scenario, ScenarioFault};
pub use yaml::{load_yaml, SpecError};
