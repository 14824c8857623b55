//! `txlab compare`: per cell and metric, how a run differs from a baseline
//! run, with the spread of their repetitions deciding what is a change.
//!
//! Cells are matched by method, scenario, chaos, replicas and rate. A
//! latency or throughput change is a **regression** only when it is worse
//! by more than the noise band *and* the repetitions say it is unlikely to
//! be chance (Mann-Whitney, [`stats`]). Correctness needs no statistics:
//! more audit violations, unexpected outcomes or failed orders than the
//! baseline ever had is a regression at once.

pub mod stats;

use std::collections::BTreeMap;

use serde::Serialize;

use crate::results::CellSummary;

#[derive(Debug, Clone, Copy)]
pub struct Options {
    /// Relative change (0.10 = 10%) below which nothing is flagged.
    pub noise: f64,
    /// Significance level of the rank test.
    pub alpha: f64,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            noise: 0.10,
            alpha: 0.05,
        }
    }
}

/// What identifies a cell across runs (its id also holds the repetition).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct CellKey {
    pub method: String,
    pub scenario: String,
    pub chaos: String,
    pub replicas: u32,
    /// Offered orders per second, as the profile set it.
    pub rate: String,
}

impl CellKey {
    fn of(s: &CellSummary) -> CellKey {
        CellKey {
            method: s.method.clone(),
            scenario: s.scenario.clone(),
            chaos: s.chaos.clone(),
            replicas: s.replicas,
            rate: format!("{}", s.target_rate),
        }
    }

    pub fn label(&self) -> String {
        let chaos = if self.chaos == crate::spec::NO_CHAOS {
            String::new()
        } else {
            format!(" [{}]", self.chaos)
        };
        format!(
            "{} {} r{} {}/s{chaos}",
            self.method, self.scenario, self.replicas, self.rate
        )
    }
}

#[derive(Clone, Copy, PartialEq)]
enum Worse {
    Higher,
    Lower,
}

struct Metric {
    name: &'static str,
    worse: Worse,
    /// Compared by counts, not statistics (correctness; higher is worse).
    count: bool,
    value: fn(&CellSummary) -> f64,
}

const METRICS: &[Metric] = &[
    Metric {
        name: "decided_p50_ms",
        worse: Worse::Higher,
        count: false,
        value: |s| s.decided_ms.p50,
    },
    Metric {
        name: "decided_p99_ms",
        worse: Worse::Higher,
        count: false,
        value: |s| s.decided_ms.p99,
    },
    Metric {
        name: "accepted_p99_ms",
        worse: Worse::Higher,
        count: false,
        value: |s| s.accepted_ms.p99,
    },
    Metric {
        // Orders decided as expected per second of offered load.
        name: "goodput_per_s",
        worse: Worse::Lower,
        count: false,
        value: CellSummary::goodput_per_s,
    },
    Metric {
        name: "audit_violations",
        worse: Worse::Higher,
        count: true,
        value: |s| s.violations as f64,
    },
    Metric {
        name: "unexpected_outcomes",
        worse: Worse::Higher,
        count: true,
        value: |s| s.unexpected as f64,
    },
    Metric {
        name: "failed_orders",
        worse: Worse::Higher,
        count: true,
        value: |s| (s.errors + s.undecided + s.dropped) as f64,
    },
];

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    Regression,
    Improvement,
    /// Beyond the noise band, but the repetitions could be chance.
    NotSignificant,
    /// Beyond the noise band, and too few repetitions for any test to tell.
    TooFewRepetitions,
    Unchanged,
}

/// One metric of one cell, in both runs.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    pub cell: String,
    pub metric: &'static str,
    pub baseline_median: f64,
    pub current_median: f64,
    /// (current - baseline) / baseline; None when the baseline is 0.
    pub change: Option<f64>,
    /// 95% bootstrap interval of the median's change, in the metric's unit.
    pub interval_low: f64,
    pub interval_high: f64,
    pub p_value: f64,
    pub baseline_n: usize,
    pub current_n: usize,
    pub verdict: Verdict,
}

pub struct Comparison {
    pub rows: Vec<Row>,
    /// Cells that ran in only one of the two.
    pub only_baseline: Vec<String>,
    pub only_current: Vec<String>,
    pub options: Options,
}

impl Comparison {
    pub fn regressions(&self) -> Vec<&Row> {
        self.rows
            .iter()
            .filter(|r| r.verdict == Verdict::Regression)
            .collect()
    }
}

fn group(summaries: &[CellSummary]) -> BTreeMap<CellKey, Vec<&CellSummary>> {
    let mut out: BTreeMap<CellKey, Vec<&CellSummary>> = BTreeMap::new();
    for s in summaries {
        out.entry(CellKey::of(s)).or_default().push(s);
    }
    out
}

pub fn compare(baseline: &[CellSummary], current: &[CellSummary], options: Options) -> Comparison {
    let (base, cur) = (group(baseline), group(current));
    let mut rows = Vec::new();
    for (key, b) in &base {
        let Some(c) = cur.get(key) else { continue };
        for (i, m) in METRICS.iter().enumerate() {
            let bv: Vec<f64> = b.iter().map(|s| (m.value)(s)).collect();
            let cv: Vec<f64> = c.iter().map(|s| (m.value)(s)).collect();
            // A seed per cell and metric: reruns give the same answer.
            let seed = key
                .label()
                .bytes()
                .fold(i as u64, |h, x| h.wrapping_mul(31).wrapping_add(x as u64));
            rows.push(row(key.label(), m, &bv, &cv, options, seed));
        }
    }
    let only = |a: &BTreeMap<CellKey, Vec<&CellSummary>>, b: &BTreeMap<CellKey, Vec<&CellSummary>>| {
        a.keys()
            .filter(|k| !b.contains_key(k))
            .map(CellKey::label)
            .collect()
    };
    Comparison {
        rows,
        only_baseline: only(&base, &cur),
        only_current: only(&cur, &base),
        options,
    }
}

fn row(cell: String, m: &Metric, b: &[f64], c: &[f64], o: Options, seed: u64) -> Row {
    let (bm, cm) = (stats::median(b), stats::median(c));
    let change = (bm != 0.0).then(|| (cm - bm) / bm.abs());
    let (lo, hi) = stats::median_shift_interval(b, c, seed);
    let p = stats::mann_whitney_p(b, c, seed);
    // Worse is positive whichever way the metric runs.
    let signed = |x: f64| if m.worse == Worse::Higher { x } else { -x };
    let verdict = if m.count {
        let worst = |xs: &[f64]| xs.iter().copied().fold(f64::MIN, f64::max);
        match worst(c).partial_cmp(&worst(b)) {
            Some(std::cmp::Ordering::Greater) => Verdict::Regression,
            Some(std::cmp::Ordering::Less) => Verdict::Improvement,
            _ => Verdict::Unchanged,
        }
    } else {
        let moved = change.map_or(cm != bm, |ch| signed(ch).abs() > o.noise);
        // The smallest p any relabelling can give: 2 / C(n+m, n).
        let total = b.len() + c.len();
        let smallest_p =
            2.0 / (1..=b.len()).fold(1.0, |acc, i| acc * (total - b.len() + i) as f64 / i as f64);
        if !moved {
            Verdict::Unchanged
        } else if smallest_p > o.alpha {
            Verdict::TooFewRepetitions
        } else if p >= o.alpha {
            Verdict::NotSignificant
        } else if signed(cm - bm) > 0.0 {
            Verdict::Regression
        } else {
            Verdict::Improvement
        }
    };
    Row {
        cell,
        metric: m.name,
        baseline_median: bm,
        current_median: cm,
        change,
        interval_low: lo,
        interval_high: hi,
        p_value: p,
        baseline_n: b.len(),
        current_n: c.len(),
        verdict,
    }
}

/// Every row as CSV.
pub fn csv(c: &Comparison) -> anyhow::Result<String> {
    let mut w = csv::Writer::from_writer(Vec::new());
    for r in &c.rows {
        w.serialize(r)?;
    }
    Ok(String::from_utf8(w.into_inner()?)?)
}

fn change_text(r: &Row) -> String {
    match r.change {
        Some(ch) => format!("{:+.1}%", ch * 100.0),
        None => format!("{:+}", r.current_median - r.baseline_median),
    }
}

/// A Markdown summary for a CI job summary: the verdict, then every row
/// that moved beyond the noise band.
pub fn markdown(c: &Comparison, baseline: &str, current: &str) -> String {
    let regressions = c.regressions();
    let mut out = format!(
        "## txlab compare\n\n`{current}` against baseline `{baseline}` (noise band {:.0}%, alpha {}): **{}**\n\n",
        c.options.noise * 100.0,
        c.options.alpha,
        if regressions.is_empty() {
            "no regression".to_string()
        } else {
            format!("{} regression(s)", regressions.len())
        }
    );
    let moved: Vec<&Row> = c
        .rows
        .iter()
        .filter(|r| r.verdict != Verdict::Unchanged)
        .collect();
    if moved.is_empty() {
        out += "Every metric of every cell within the noise band.\n";
    } else {
        out += "| cell | metric | baseline | current | change | 95% interval of the change | p | n | verdict |\n|---|---|---|---|---|---|---|---|---|\n";
        for r in moved {
            out += &format!(
                "| {} | {} | {:.1} | {:.1} | {} | [{:.1}, {:.1}] | {:.3} | {}/{} | {:?} |\n",
                r.cell,
                r.metric,
                r.baseline_median,
                r.current_median,
                change_text(r),
                r.interval_low,
                r.interval_high,
                r.p_value,
                r.baseline_n,
                r.current_n,
                r.verdict
            );
        }
    }
    for (what, cells) in [
        ("only in the baseline", &c.only_baseline),
        ("only in the current run", &c.only_current),
    ] {
        if !cells.is_empty() {
            out += &format!("\nCells {what}: {}\n", cells.join(", "));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::results::Percentiles;

    /// A summary of one repetition with the given decided p50 and violations.
    fn rep(method: &str, p50: f64, violations: usize) -> CellSummary {
        let mut s: CellSummary = serde_json::from_value(serde_json::json!({
            "index": 0, "cell": "c", "method": method, "scenario": "happy-path", "replicas": 1, "repetition": 1,
            "expect": "confirmed", "target_rate": 20.0, "achieved_rate": 20.0, "scheduled": 100, "sent": 100,
            "accepted": 100, "decided": 100, "late": 0, "dropped": 0, "errors": 0, "undecided": 0, "unexpected": 0,
            "outcomes": {"confirmed": 100}, "error_kinds": {}, "unexpected_examples": [],
            "accepted_ms": Percentiles::default(), "decided_ms": Percentiles::default(),
            "quiesce_ms": 5, "settled": true, "violations": 0, "violations_by_invariant": {},
            "notification_lag_p50_ms": null, "notification_lag_max_ms": null
        }))
        .unwrap();
        s.decided_ms.p50 = p50;
        s.decided_ms.p99 = p50 * 2.0;
        s.violations = violations;
        s
    }

    fn verdict(c: &Comparison, metric: &str) -> Verdict {
        c.rows.iter().find(|r| r.metric == metric).unwrap().verdict
    }

    #[test]
    fn a_slower_step_is_a_regression_and_noise_is_not() {
        let base: Vec<_> = [20.1, 19.8, 20.4, 20.0, 19.9]
            .iter()
            .map(|&p| rep("tcc", p, 0))
            .collect();
        let slower: Vec<_> = [24.9, 25.3, 24.7, 25.1, 25.0]
            .iter()
            .map(|&p| rep("tcc", p, 0))
            .collect();
        let same: Vec<_> = [20.3, 19.7, 20.2, 20.0, 19.6]
            .iter()
            .map(|&p| rep("tcc", p, 0))
            .collect();
        let c = compare(&base, &slower, Options::default());
        assert_eq!(verdict(&c, "decided_p50_ms"), Verdict::Regression);
        assert_eq!(verdict(&c, "goodput_per_s"), Verdict::Unchanged);
        assert_eq!(c.regressions().len(), 2, "p50 and p99");
        let c = compare(&base, &same, Options::default());
        assert!(c.regressions().is_empty());
        assert_eq!(verdict(&c, "decided_p50_ms"), Verdict::Unchanged);
        // Faster is an improvement, not a regression.
        let c = compare(&slower, &base, Options::default());
        assert_eq!(verdict(&c, "decided_p50_ms"), Verdict::Improvement);
        assert!(c.regressions().is_empty());
    }

    #[test]
    fn three_repetitions_cannot_flag_a_latency_change_but_one_violation_does() {
        let base: Vec<_> = [20.0, 20.1, 19.9].iter().map(|&p| rep("twopc", p, 0)).collect();
        let cur: Vec<_> = [30.0, 30.1, 29.9].iter().map(|&p| rep("twopc", p, 0)).collect();
        let c = compare(&base, &cur, Options::default());
        assert_eq!(verdict(&c, "decided_p50_ms"), Verdict::TooFewRepetitions);
        let mut broken = cur.clone();
        broken[1].violations = 1;
        let c = compare(&base, &broken, Options::default());
        assert_eq!(verdict(&c, "audit_violations"), Verdict::Regression);
        let md = markdown(&c, "a", "b");
        assert!(
            md.contains("regression(s)") && md.contains("audit_violations"),
            "{md}"
        );
    }

    #[test]
    fn cells_are_matched_by_what_they_ran_and_the_rest_listed() {
        let base = vec![rep("tcc", 20.0, 0), rep("saga_orch", 10.0, 0)];
        let mut chaotic = rep("tcc", 20.0, 0);
        chaotic.chaos = "latency-10ms".into();
        let cur = vec![rep("tcc", 20.0, 0), chaotic];
        let c = compare(&base, &cur, Options::default());
        assert!(c
            .rows
            .iter()
            .all(|r| r.cell.starts_with("tcc happy-path r1 20/s")));
        assert_eq!(c.only_baseline, vec!["saga_orch happy-path r1 20/s".to_string()]);
        assert_eq!(
            c.only_current,
            vec!["tcc happy-path r1 20/s [latency-10ms]".to_string()]
        );
        let text = csv(&c).unwrap();
        assert_eq!(text.lines().count(), 1 + METRICS.len(), "{text}");
        assert!(text.starts_with("cell,metric,baseline_median,current_median,change,"));
    }
}
