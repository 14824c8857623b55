//! The per-cell summary: what a report and a comparison read back.

use std::collections::BTreeMap;

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

use crate::audit::AuditReport;
use crate::load::LoadReport;
use crate::spec::{Cell, Thresholds};

/// Latency figures in milliseconds.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Percentiles {
    pub count: u64,
    pub mean: f64,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
}

impl Percentiles {
    /// From a histogram of microseconds.
    pub fn of(h: &Histogram<u64>) -> Percentiles {
        if h.is_empty() {
            return Percentiles::default();
        }
        let ms = |v: u64| v as f64 / 1000.0;
        Percentiles {
            count: h.len(),
            mean: h.mean() / 1000.0,
            p50: ms(h.value_at_quantile(0.5)),
            p90: ms(h.value_at_quantile(0.9)),
            p99: ms(h.value_at_quantile(0.99)),
            p999: ms(h.value_at_quantile(0.999)),
            max: ms(h.max()),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CellSummary {
    /// Position in the plan, for ordering.
    pub index: usize,
    pub cell: String,
    pub method: String,
    pub scenario: String,
    pub replicas: u32,
    pub repetition: u32,
    pub expect: String,
    pub target_rate: f64,
    pub achieved_rate: f64,
    pub scheduled: u64,
    pub sent: u64,
    pub accepted: u64,
    pub decided: u64,
    pub late: u64,
    pub dropped: u64,
    pub errors: u64,
    pub undecided: u64,
    pub unexpected: u64,
    pub outcomes: BTreeMap<String, u64>,
    pub error_kinds: BTreeMap<String, u64>,
    pub unexpected_examples: Vec<(uuid::Uuid, String)>,
    /// Over every measured arrival; unanswered ones at the follow limit.
    pub accepted_ms: Percentiles,
    /// Over every measured arrival; undecided ones at the follow limit.
    pub decided_ms: Percentiles,
    /// Measured arrivals recorded at the follow limit (dropped, failed or
    /// undecided): when non-zero, the upper percentiles are censored.
    #[serde(default)]
    pub censored: u64,
    /// Time after the load until every order was terminal and notified.
    pub quiesce_ms: u64,
    pub settled: bool,
    /// What was still moving when the quiesce timed out.
    #[serde(default)]
    pub unsettled: Vec<String>,
    /// The profile's thresholds this cell broke (empty: it passed).
    #[serde(default)]
    pub threshold_failures: Vec<String>,
    /// Violations that are bugs: anything but the by-design ones.
    pub violations: usize,
    /// Inconsistencies the method accepts by its contract (outbox orders
    /// needing attention), reported apart from bugs.
    #[serde(default)]
    pub by_design: usize,
    pub violations_by_invariant: BTreeMap<String, usize>,
    pub notification_lag_p50_ms: Option<i64>,
    pub notification_lag_max_ms: Option<i64>,
    /// Business events during the cell, from the services' counters:
    /// `retry`, `compensation`, `vote`, `decision`, `step`, `outcome`...
    #[serde(default)]
    pub events: BTreeMap<String, f64>,
    /// Service restarts during the cell (injected crashes), per role.
    #[serde(default)]
    pub restarts: BTreeMap<String, u32>,
    /// CPU and memory per component (each service, postgres, tansu, the
    /// driver) from the start of the load until the driver saw its last
    /// decision.
    #[serde(default)]
    pub resources: BTreeMap<String, crate::metrics::resources::Use>,
    /// The chaos the cell ran under (`none`, or the profile's entry).
    #[serde(default = "no_chaos")]
    pub chaos: String,
    /// What the platform could not show of that chaos.
    #[serde(default)]
    pub chaos_notes: Vec<String>,
    /// Bytes per link during the cell, `sender→receiver`, where the
    /// platform sees them (through the local proxy).
    #[serde(default)]
    pub network: BTreeMap<String, u64>,
    /// When each fault of the cell's chaos was on, from the load's start.
    #[serde(default)]
    pub chaos_windows: Vec<ChaosWindow>,
}

/// A fault's time on during a cell, in seconds from the start of its load
/// (a pod kill: from the kill until the service was healthy again).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChaosWindow {
    pub name: String,
    pub from_s: f64,
    pub until_s: f64,
}

fn no_chaos() -> String {
    crate::spec::NO_CHAOS.to_string()
}

impl CellSummary {
    pub fn new(
        index: usize,
        cell: &Cell,
        load: &LoadReport,
        audit: &AuditReport,
        quiesce_ms: u64,
        unsettled: Vec<String>,
    ) -> CellSummary {
        CellSummary {
            index,
            cell: cell.id.clone(),
            method: cell.method.to_string(),
            scenario: cell.scenario.name.clone(),
            replicas: cell.replicas,
            repetition: cell.repetition,
            expect: cell.scenario.expect_for(cell.method).to_string(),
            target_rate: load.target_rate,
            achieved_rate: load.achieved_rate,
            scheduled: load.scheduled,
            sent: load.sent,
            accepted: load.accepted,
            decided: load.decided,
            late: load.late,
            dropped: load.dropped,
            errors: load.errors,
            undecided: load.undecided,
            unexpected: load.unexpected,
            outcomes: load.outcomes.clone(),
            error_kinds: load.error_kinds.clone(),
            unexpected_examples: load.unexpected_examples.clone(),
            accepted_ms: Percentiles::of(&load.accepted_us),
            decided_ms: Percentiles::of(&load.decided_us),
            censored: load.censored,
            quiesce_ms,
            settled: unsettled.is_empty(),
            unsettled,
            threshold_failures: Vec::new(),
            violations: audit.violations.iter().filter(|v| !v.by_design).count(),
            by_design: audit.violations.iter().filter(|v| v.by_design).count(),
            violations_by_invariant: audit
                .by_invariant
                .iter()
                .map(|(k, v)| (k.to_string(), *v))
                .collect(),
            notification_lag_p50_ms: audit.notification_lag_p50_ms,
            notification_lag_max_ms: audit.notification_lag_max_ms,
            events: BTreeMap::new(),
            restarts: BTreeMap::new(),
            resources: BTreeMap::new(),
            chaos: cell.chaos.name.clone(),
            chaos_notes: Vec::new(),
            network: BTreeMap::new(),
            chaos_windows: Vec::new(),
        }
    }
}

impl CellSummary {
    /// Orders decided as the scenario expects, per second of offered load.
    pub fn goodput_per_s(&self) -> f64 {
        self.per_second_of(self.outcomes.get(&self.expect).copied().unwrap_or(0))
    }

    /// Confirmed (committed) orders per second of offered load.
    pub fn committed_per_s(&self) -> f64 {
        self.per_second_of(
            self.outcomes
                .get(txlab_api::order::OrderState::Confirmed.as_str())
                .copied()
                .unwrap_or(0),
        )
    }

    /// `orders` of those sent, as a rate: the achieved rate scaled by
    /// their share.
    fn per_second_of(&self, orders: u64) -> f64 {
        if self.sent == 0 {
            0.0
        } else {
            self.achieved_rate * orders as f64 / self.sent as f64
        }
    }
}

impl Thresholds {
    /// The limits `s` breaks, in words.
    pub fn broken_by(&self, s: &CellSummary) -> Vec<String> {
        let mut out = Vec::new();
        for (what, got, limit) in [
            ("unexpected outcomes", s.unexpected, self.unexpected),
            ("dropped arrivals", s.dropped, self.dropped),
            ("undecided orders", s.undecided, self.undecided),
            ("errors", s.errors, self.errors),
        ] {
            if let Some(max) = limit.filter(|max| got > *max) {
                out.push(format!("{got} {what} (at most {max} allowed)"));
            }
        }
        if !s.settled && !self.allow_unsettled {
            out.push(format!("did not settle: {}", s.unsettled.join("; ")));
        }
        if let Some(max) = self.decided_p99_ms.filter(|max| s.decided_ms.p99 > *max) {
            out.push(format!(
                "decided p99 {:.1} ms (at most {max} ms allowed)",
                s.decided_ms.p99
            ));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn passing() -> CellSummary {
        serde_json::from_value(serde_json::json!({
            "index": 0, "cell": "c", "method": "saga_orch", "scenario": "s", "replicas": 1, "repetition": 1,
            "expect": "confirmed", "target_rate": 10.0, "achieved_rate": 10.0, "scheduled": 10, "sent": 10,
            "accepted": 10, "decided": 10, "late": 0, "dropped": 0, "errors": 0, "undecided": 0, "unexpected": 0,
            "outcomes": {"confirmed": 10}, "error_kinds": {}, "unexpected_examples": [],
            "accepted_ms": Percentiles::default(), "decided_ms": Percentiles { p99: 80.0, ..Default::default() },
            "quiesce_ms": 5, "settled": true, "violations": 0, "violations_by_invariant": {},
            "notification_lag_p50_ms": null, "notification_lag_max_ms": null
        }))
        .unwrap()
    }

    #[test]
    fn default_thresholds_allow_nothing_and_null_lifts_a_limit() {
        let strict = Thresholds::default();
        assert_eq!(strict.broken_by(&passing()), Vec::<String>::new());
        let mut s = passing();
        s.unexpected = 2;
        s.settled = false;
        s.unsettled = vec!["3 orders not decided".into()];
        let broken = strict.broken_by(&s);
        assert_eq!(broken.len(), 2, "{broken:?}");
        assert!(
            broken[0].contains("2 unexpected outcomes") && broken[1].contains("3 orders not decided"),
            "{broken:?}"
        );

        let lenient: Thresholds =
            serde_yaml::from_str("unexpected: ~\nallow_unsettled: true\ndecided_p99_ms: 50\n").unwrap();
        assert_eq!(
            lenient.broken_by(&s),
            vec!["decided p99 80.0 ms (at most 50 ms allowed)".to_string()]
        );
    }
}
