//! The validated plan: a profile resolved against its scenario files.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use serde::Serialize;
use txlab_api::admin::{Seed, Slot, StockLevel, Wallet};
use txlab_api::fault::FaultSpec;
use txlab_api::TxMode;

use super::yaml::{load_yaml, SpecError};
use super::{Profile, Scenario, SeedData};

/// Seeded entities every cell has, for scenarios that must fail a step.
pub const BROKE_CUSTOMER: &str = "broke";
pub const SOLD_OUT_SKU: &str = "sold-out";
/// A SKU with little stock that many orders compete for (`seed_data.hot_stock`).
pub const HOT_SKU: &str = "hot";
pub const FULL_SLOT: &str = "full";

/// One cell of the matrix: a method, a scenario, a replica count, a rate,
/// a repetition.
#[derive(Debug, Clone, Serialize)]
pub struct Cell {
    /// Unique in the run and safe as a directory name.
    pub id: String,
    pub method: TxMode,
    pub scenario: Scenario,
    pub replicas: u32,
    pub repetition: u32,
    pub chaos: CellChaos,
    /// The load: one stage for a profile's cell; benchmarks chain several
    /// (an overload, then a lighter load to recover under).
    pub stages: Vec<Stage>,
}

/// The chaos a cell runs under.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CellChaos {
    /// As the profile names it (`none`, `latency-10ms+kill-inventory`).
    pub name: String,
    pub faults: Vec<crate::chaos::Fault>,
}

impl CellChaos {
    pub fn none() -> CellChaos {
        CellChaos {
            name: super::profile::NO_CHAOS.to_string(),
            faults: Vec::new(),
        }
    }
}

/// A stretch of load at one offered rate.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Stage {
    /// Orders per second.
    pub rate: f64,
    pub duration_s: f64,
}

impl Cell {
    /// Length of the whole load.
    pub fn duration_s(&self) -> f64 {
        self.stages.iter().map(|s| s.duration_s).sum()
    }

    /// Mean offered rate over the whole load.
    pub fn offered_rate(&self) -> f64 {
        let orders: f64 = self.stages.iter().map(|s| s.rate * s.duration_s).sum();
        orders / self.duration_s()
    }
}

/// What every cell is seeded with, and the names generated orders draw from.
#[derive(Debug, Clone, Serialize)]
pub struct SeedPlan {
    pub seed: Seed,
    pub customers: Vec<String>,
    pub skus: Vec<String>,
    pub slots: Vec<String>,
}

impl SeedPlan {
    pub fn new(data: &SeedData) -> SeedPlan {
        let customers: Vec<String> = (0..data.customers).map(|i| format!("c{i:05}")).collect();
        let skus: Vec<String> = (0..data.skus).map(|i| format!("sku-{i:04}")).collect();
        let slots: Vec<String> = (0..data.slots).map(|i| format!("slot-{i:03}")).collect();
        let seed = Seed {
            wallets: customers
                .iter()
                .map(|c| Wallet {
                    customer: c.clone(),
                    balance: data.balance,
                })
                .chain([Wallet {
                    customer: BROKE_CUSTOMER.into(),
                    balance: 0,
                }])
                .collect(),
            stock: skus
                .iter()
                .map(|s| StockLevel {
                    sku: s.clone(),
                    available: data.stock,
                })
                .chain([
                    StockLevel {
                        sku: SOLD_OUT_SKU.into(),
                        available: 0,
                    },
                    StockLevel {
                        sku: HOT_SKU.into(),
                        available: data.hot_stock,
                    },
                ])
                .collect(),
            slots: slots
                .iter()
                .map(|s| Slot {
                    slot: s.clone(),
                    capacity: data.capacity,
                })
                .chain([Slot {
                    slot: FULL_SLOT.into(),
                    capacity: 0,
                }])
                .collect(),
        };
        SeedPlan {
            seed,
            customers,
            skus,
            slots,
        }
    }
}

/// A profile resolved and checked: nothing is started before this exists.
#[derive(Debug, Clone, Serialize)]
pub struct Plan {
    pub profile_path: PathBuf,
    pub profile: Profile,
    pub cells: Vec<Cell>,
    pub seed: SeedPlan,
}

fn invalid(path: &Path, message: impl Into<String>) -> SpecError {
    SpecError::Invalid {
        path: path.to_path_buf(),
        message: message.into(),
    }
}

impl Plan {
    /// Reads the profile and its scenarios (from `scenarios_dir`) and checks
    /// everything that can be checked without running.
    /// Chaos files are read from the `chaos/` folder beside `scenarios_dir`.
    pub fn load(profile_path: &Path, scenarios_dir: &Path) -> Result<Plan, SpecError> {
        let profile: Profile = load_yaml(profile_path)?;
        let scenarios = profile
            .scenarios
            .iter()
            .map(|name| load_scenario(profile_path, scenarios_dir, name))
            .collect::<Result<Vec<_>, _>>()?;
        let chaos_dir = scenarios_dir.join("..").join("chaos");
        let chaos = profile
            .chaos
            .iter()
            .map(|name| load_chaos(profile_path, &chaos_dir, name))
            .collect::<Result<Vec<_>, _>>()?;
        Plan::resolve(profile_path, profile, scenarios, chaos)
    }

    pub fn resolve(
        profile_path: &Path,
        profile: Profile,
        scenarios: Vec<Scenario>,
        chaos: Vec<CellChaos>,
    ) -> Result<Plan, SpecError> {
        let p = profile_path;
        if profile.name.trim().is_empty() {
            return Err(invalid(p, "name: must not be empty"));
        }
        if profile.methods.is_empty() {
            return Err(invalid(
                p,
                "methods: list at least one of twopc, tcc, outbox, saga_chor, saga_orch",
            ));
        }
        let unique: BTreeSet<_> = profile.methods.iter().map(|m| m.as_str()).collect();
        if unique.len() != profile.methods.len() {
            return Err(invalid(p, "methods: a method is listed twice"));
        }
        if profile.scenarios.is_empty() {
            return Err(invalid(p, "scenarios: list at least one scenario"));
        }
        if chaos.is_empty() {
            return Err(invalid(p, "chaos: list at least one entry (`none` for no chaos)"));
        }
        let most = txlab_api::event::TOPIC_PARTITIONS as u32;
        if profile.replicas.is_empty() || profile.replicas.iter().any(|&r| !(1..=most).contains(&r)) {
            return Err(invalid(
                p,
                format!(
                    "replicas: each entry must be between 1 and {most} (replicas of a consuming service split the {most} partitions of each topic)"
                ),
            ));
        }
        if !(1..=100).contains(&profile.repetitions) {
            return Err(invalid(p, "repetitions: must be between 1 and 100"));
        }
        let load = &profile.load;
        if load.rate.0.is_empty() {
            return Err(invalid(p, "load.rate: list at least one rate"));
        }
        if let Some(bad) = load.rate.0.iter().find(|r| !(**r > 0.0 && **r <= 10_000.0)) {
            return Err(invalid(
                p,
                format!("load.rate: must be above 0 and at most 10000 orders/s, got {bad}"),
            ));
        }
        if !(load.duration_s > 0.0 && load.duration_s <= 3_600.0) {
            return Err(invalid(p, "load.duration_s: must be above 0 and at most 3600"));
        }
        if !(load.warmup_s >= 0.0 && load.warmup_s < load.duration_s) {
            return Err(invalid(
                p,
                "load.warmup_s: must be at least 0 and shorter than load.duration_s",
            ));
        }
        if load.max_in_flight == 0 {
            return Err(invalid(p, "load.max_in_flight: must be at least 1"));
        }
        if !(profile.quiesce_timeout_s > 0.0 && profile.quiesce_timeout_s <= 600.0) {
            return Err(invalid(p, "quiesce_timeout_s: must be above 0 and at most 600"));
        }
        let d = &profile.seed_data;
        if d.customers == 0
            || d.skus == 0
            || d.slots == 0
            || d.balance < 0
            || d.stock < 0
            || d.capacity < 0
            || d.hot_stock < 0
        {
            return Err(invalid(
                p,
                "seed_data: counts must be at least 1 and amounts not negative",
            ));
        }
        let seed = SeedPlan::new(d);
        for s in &scenarios {
            check_template(p, s, &seed)?;
        }
        let mut cells = Vec::new();
        for &method in &profile.methods {
            for scenario in &scenarios {
                for &replicas in &profile.replicas {
                    for under in &chaos {
                        for &rate in &load.rate.0 {
                            for repetition in 1..=profile.repetitions {
                                // The rate and chaos are named only when they
                                // vary, so the ids of simple profiles stay short.
                                let at = if load.rate.0.len() > 1 {
                                    format!("-{rate}ps")
                                } else {
                                    String::new()
                                };
                                let with = if chaos.len() > 1 {
                                    format!("-{}", under.name)
                                } else {
                                    String::new()
                                };
                                cells.push(Cell {
                                    id: format!(
                                        "{method}-{}{with}{at}-r{replicas}-{repetition}",
                                        scenario.name
                                    ),
                                    method,
                                    scenario: scenario.clone(),
                                    replicas,
                                    repetition,
                                    chaos: under.clone(),
                                    stages: vec![Stage {
                                        rate,
                                        duration_s: load.duration_s,
                                    }],
                                });
                            }
                        }
                    }
                }
            }
        }
        Ok(Plan {
            profile_path: profile_path.to_path_buf(),
            profile,
            cells,
            seed,
        })
    }
}

impl Plan {
    /// Gives every cell the same evenly spaced load with no warm-up: what
    /// tests and benchmarks use to make cells short and countable.
    pub fn set_constant_load(&mut self, rate: f64, duration_s: f64) {
        let load = &mut self.profile.load;
        load.arrival = super::Arrival::Constant;
        load.rate = super::Rates(vec![rate]);
        load.duration_s = duration_s;
        load.warmup_s = 0.0;
        for cell in &mut self.cells {
            cell.stages = vec![Stage { rate, duration_s }];
        }
    }
}

/// `dir/<name>.yaml`, or an error naming the files that do exist there.
fn named_file(
    profile_path: &Path,
    dir: &Path,
    field: &str,
    what: &str,
    name: &str,
) -> Result<PathBuf, SpecError> {
    let path = dir.join(format!("{name}.yaml"));
    if path.is_file() {
        return Ok(path);
    }
    let mut known: Vec<String> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .filter_map(|e| e.file_name().to_str()?.strip_suffix(".yaml").map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    known.sort();
    Err(invalid(
        profile_path,
        format!(
            "{field}: unknown {what} `{name}` (no {}); known {what}s: {}",
            path.display(),
            if known.is_empty() {
                "none".to_string()
            } else {
                known.join(", ")
            }
        ),
    ))
}

/// A profile's chaos entry: `none`, or chaos objects joined by `+`.
fn load_chaos(profile_path: &Path, dir: &Path, entry: &str) -> Result<CellChaos, SpecError> {
    if entry == super::profile::NO_CHAOS {
        return Ok(CellChaos::none());
    }
    let mut faults: Vec<crate::chaos::Fault> = Vec::new();
    for name in entry.split('+').map(str::trim) {
        let path = named_file(profile_path, dir, "chaos", "chaos object", name)?;
        let fault = crate::chaos::mesh::load(&path)?;
        if faults.iter().any(|f| f.name == fault.name) {
            return Err(invalid(
                profile_path,
                format!("chaos: `{entry}` names two objects called {}", fault.name),
            ));
        }
        faults.push(fault);
    }
    Ok(CellChaos {
        name: entry.to_string(),
        faults,
    })
}

fn load_scenario(profile_path: &Path, dir: &Path, name: &str) -> Result<Scenario, SpecError> {
    let path = named_file(profile_path, dir, "scenarios", "scenario", name)?;
    let scenario: Scenario = load_yaml(&path)?;
    if scenario.name != name {
        return Err(invalid(
            &path,
            format!("name: is `{}` but the file is named `{name}.yaml`", scenario.name),
        ));
    }
    if let Some(f) = &scenario.fault {
        FaultSpec::parse(f).map_err(|e| invalid(&path, format!("fault: {e}")))?;
    }
    if let Some(f) = &scenario.standing_fault {
        f.fault
            .validate()
            .map_err(|e| invalid(&path, format!("standing_fault: {e}")))?;
    }
    if scenario.cancel_after_ms.is_some_and(|ms| ms > 60_000) {
        return Err(invalid(&path, "cancel_after_ms: at most 60000"));
    }
    Ok(scenario)
}

fn check_template(profile_path: &Path, s: &Scenario, seed: &SeedPlan) -> Result<(), SpecError> {
    let t = &s.order;
    let known =
        |v: &str, pool: &[String], special: &str| v == "any" || v == special || pool.iter().any(|x| x == v);
    let place = |field: &str| format!("scenario {}: order.{field}", s.name);
    if !known(&t.customer, &seed.customers, BROKE_CUSTOMER) {
        return Err(invalid(
            profile_path,
            format!(
                "{}: `{}` is not seeded; use any, {BROKE_CUSTOMER} or c00000..",
                place("customer"),
                t.customer
            ),
        ));
    }
    if !(known(&t.sku, &seed.skus, SOLD_OUT_SKU) || t.sku == HOT_SKU) {
        return Err(invalid(
            profile_path,
            format!(
                "{}: `{}` is not seeded; use any, {SOLD_OUT_SKU}, {HOT_SKU} or sku-0000..",
                place("sku"),
                t.sku
            ),
        ));
    }
    if !known(&t.slot, &seed.slots, FULL_SLOT) {
        return Err(invalid(
            profile_path,
            format!(
                "{}: `{}` is not seeded; use any, {FULL_SLOT} or slot-000..",
                place("slot"),
                t.slot
            ),
        ));
    }
    if !(1..=20).contains(&t.max_lines) {
        return Err(invalid(
            profile_path,
            format!("{}: must be between 1 and 20", place("max_lines")),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::yaml::parse_yaml;

    const PROFILE: &str = "name: t\nmethods: [saga_orch]\nscenarios: [happy]\nrepetitions: 2\nload: {arrival: constant, rate: 5, duration_s: 2}\n";
    const HAPPY: &str = "name: happy\ndescription: d\nexpect: confirmed\n";

    fn plan(profile: &str, scenario: &str) -> Result<Plan, SpecError> {
        let p: Profile = parse_yaml(Path::new("p.yaml"), profile)?;
        let s: Scenario = parse_yaml(Path::new("s.yaml"), scenario)?;
        Plan::resolve(Path::new("p.yaml"), p, vec![s], vec![CellChaos::none()])
    }

    #[test]
    fn cells_are_the_product_of_the_matrix() {
        let plan = plan(PROFILE, HAPPY).unwrap();
        let ids: Vec<_> = plan.cells.iter().map(|c| c.id.as_str()).collect();
        assert_eq!(ids, ["saga_orch-happy-r1-1", "saga_orch-happy-r1-2"]);
        // Every cell is seeded with the failure entities scenarios rely on.
        assert!(plan
            .seed
            .seed
            .wallets
            .iter()
            .any(|w| w.customer == BROKE_CUSTOMER && w.balance == 0));
        assert_eq!(plan.seed.seed.wallets.len(), 201);
    }

    #[test]
    fn replicas_are_an_axis_up_to_the_topic_partitions() {
        let axis = plan(&format!("{PROFILE}replicas: [1, 3]\n"), HAPPY).unwrap();
        let cells: Vec<_> = axis.cells.iter().map(|c| (c.id.as_str(), c.replicas)).collect();
        assert_eq!(cells[0], ("saga_orch-happy-r1-1", 1));
        assert_eq!(cells[2], ("saga_orch-happy-r3-1", 3));
        for bad in ["[4]", "[0]", "[]"] {
            let e = plan(&format!("{PROFILE}replicas: {bad}\n"), HAPPY)
                .unwrap_err()
                .to_string();
            assert!(
                e.contains("replicas: each entry must be between 1 and 3"),
                "{bad}: {e}"
            );
        }
    }

    #[test]
    fn a_list_of_rates_is_an_axis_of_the_matrix() {
        let axis = plan(&PROFILE.replace("rate: 5", "rate: [5, 12.5]"), HAPPY).unwrap();
        let cells: Vec<_> = axis
            .cells
            .iter()
            .map(|c| (c.id.as_str(), c.offered_rate()))
            .collect();
        assert_eq!(
            cells,
            [
                ("saga_orch-happy-5ps-r1-1", 5.0),
                ("saga_orch-happy-5ps-r1-2", 5.0),
                ("saga_orch-happy-12.5ps-r1-1", 12.5),
                ("saga_orch-happy-12.5ps-r1-2", 12.5)
            ]
        );
        let e = plan(&PROFILE.replace("rate: 5", "rate: [5, -1]"), HAPPY)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("load.rate: must be above 0") && e.contains("got -1"),
            "{e}"
        );
    }

    #[test]
    fn repeated_methods_and_bad_load_are_refused_with_the_field() {
        let e = plan(&PROFILE.replace("[saga_orch]", "[saga_orch, saga_orch]"), HAPPY)
            .unwrap_err()
            .to_string();
        assert!(e.contains("methods: a method is listed twice"), "{e}");
        let e = plan(&PROFILE.replace("rate: 5", "rate: 0"), HAPPY)
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("p.yaml: load.rate:"), "{e}");
        let e = plan(
            &PROFILE.replace("duration_s: 2", "duration_s: 2, warmup_s: 3"),
            HAPPY,
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("load.warmup_s"), "{e}");
    }

    #[test]
    fn unseeded_names_in_a_scenario_are_refused() {
        let e = plan(PROFILE, &format!("{HAPPY}order: {{customer: alice}}\n"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("order.customer: `alice` is not seeded"), "{e}");
    }

    #[test]
    fn an_unknown_scenario_lists_the_known_ones() {
        let dir = std::env::temp_dir().join(format!("txlab-plan-test-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("scenarios")).unwrap();
        std::fs::write(dir.join("scenarios/happy.yaml"), HAPPY).unwrap();
        std::fs::write(dir.join("p.yaml"), PROFILE.replace("[happy]", "[happy, hapy]")).unwrap();
        let e = Plan::load(&dir.join("p.yaml"), &dir.join("scenarios"))
            .unwrap_err()
            .to_string();
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(
            e.contains("unknown scenario `hapy`") && e.contains("known scenarios: happy"),
            "{e}"
        );
    }
}
