//! summary.csv: a run's cells grouped by their coordinates (method,
//! scenario, chaos, replicas, rate) over their repetitions, with polars.
//! Counts add up over repetitions, rates and resources are averaged, and
//! the spread of decided p99 between repetitions is kept. Latency
//! percentiles come from the repetitions' HDR histograms merged, so the p99
//! of three repetitions is the p99 of all their orders, not a mean of
//! three p99s.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::Path;

use anyhow::Context;
use hdrhistogram::Histogram;
use polars::prelude::*;

use crate::results::{CellSummary, Percentiles};

/// The columns a group is made of, in summary.csv's order.
const KEYS: [&str; 5] = ["method", "scenario", "chaos", "replicas", "target_rate"];

/// Components that are not txlab's services: the load driver (with the
/// proxy), the database and the broker.
const NOT_SERVICES: [&str; 3] = ["driver", "postgres", "tansu"];

/// How the repetitions of a cell combine into one figure.
#[derive(Debug, Clone, Copy)]
enum Combine {
    /// Summed, written as a whole number.
    Total,
    Mean,
    Lowest,
    Highest,
}

/// One column of summary.csv besides the keys and the latencies.
struct Figure {
    name: &'static str,
    combine: Combine,
    /// None where a repetition has no such figure (left out of the mean).
    value: fn(&CellSummary) -> Option<f64>,
}

fn outcome(s: &CellSummary, state: txlab_api::order::OrderState) -> Option<f64> {
    Some(s.outcomes.get(state.as_str()).copied().unwrap_or(0) as f64)
}

fn event(s: &CellSummary, name: &str) -> Option<f64> {
    Some(s.events.get(name).copied().unwrap_or(0.0))
}

/// What the lab's components (all but the driver) used.
fn lab_use(s: &CellSummary) -> impl Iterator<Item = &crate::metrics::resources::Use> {
    s.resources
        .iter()
        .filter(|(c, _)| c.as_str() != "driver")
        .map(|(_, u)| u)
}

/// The rates, right after the keys and the repetition count.
const RATES: &[Figure] = &[
    Figure::new("achieved_rate", Combine::Mean, |s| Some(s.achieved_rate)),
    Figure::new("committed_per_s", Combine::Mean, |s| Some(s.committed_per_s())),
    Figure::new("goodput_per_s", Combine::Mean, |s| Some(s.goodput_per_s())),
];

/// The figures after the latencies, in summary.csv's order.
const FIGURES: &[Figure] = &[
    Figure::new("decided_p99_ms_best_repetition", Combine::Lowest, |s| {
        Some(s.decided_ms.p99)
    }),
    Figure::new("decided_p99_ms_worst_repetition", Combine::Highest, |s| {
        Some(s.decided_ms.p99)
    }),
    Figure::new("sent", Combine::Total, |s| Some(s.sent as f64)),
    Figure::new("confirmed", Combine::Total, |s| {
        outcome(s, txlab_api::order::OrderState::Confirmed)
    }),
    Figure::new("rejected", Combine::Total, |s| {
        outcome(s, txlab_api::order::OrderState::Rejected)
    }),
    Figure::new("cancelled", Combine::Total, |s| {
        outcome(s, txlab_api::order::OrderState::Cancelled)
    }),
    Figure::new("needs_attention", Combine::Total, |s| {
        outcome(s, txlab_api::order::OrderState::NeedsAttention)
    }),
    Figure::new("unexpected", Combine::Total, |s| Some(s.unexpected as f64)),
    Figure::new("errors", Combine::Total, |s| Some(s.errors as f64)),
    Figure::new("undecided", Combine::Total, |s| Some(s.undecided as f64)),
    Figure::new("dropped", Combine::Total, |s| Some(s.dropped as f64)),
    Figure::new("late", Combine::Total, |s| Some(s.late as f64)),
    Figure::new("censored", Combine::Total, |s| Some(s.censored as f64)),
    Figure::new("retries", Combine::Total, |s| event(s, "retry")),
    Figure::new("compensations", Combine::Total, |s| event(s, "compensation")),
    Figure::new("taken_over", Combine::Total, |s| event(s, "taken_over")),
    Figure::new("restarts", Combine::Total, |s| {
        Some(s.restarts.values().sum::<u32>() as f64)
    }),
    // After the load, until every order was terminal and notified.
    Figure::new("time_to_consistency_ms", Combine::Mean, |s| {
        Some(s.quiesce_ms as f64)
    }),
    Figure::new("time_to_consistency_ms_max", Combine::Highest, |s| {
        Some(s.quiesce_ms as f64)
    }),
    Figure::new("notification_lag_p50_ms", Combine::Mean, |s| {
        s.notification_lag_p50_ms.map(|v| v as f64)
    }),
    // Cores busy on average: services, database and broker where the
    // platform runs them (locally); a cluster's run namespace holds only the
    // services.
    Figure::new("cpu_cores", Combine::Mean, |s| {
        Some(lab_use(s).map(|u| u.cores).sum())
    }),
    Figure::new("cpu_ms_per_order", Combine::Mean, |s| {
        let cpu_s: f64 = lab_use(s).map(|u| u.cpu_s).sum();
        (s.sent > 0).then(|| cpu_s * 1000.0 / s.sent as f64)
    }),
    // PostgreSQL's RSS counts its shared buffers once per backend.
    Figure::new("service_rss_mib", Combine::Highest, |s| {
        Some(
            s.resources
                .iter()
                .filter(|(c, _)| !NOT_SERVICES.contains(&c.as_str()))
                .map(|(_, u)| u.rss_mib)
                .sum(),
        )
    }),
    // Seen where traffic crosses the lab's proxy (chaos cells).
    Figure::new("network_mib", Combine::Mean, |s| {
        Some(s.network.values().sum::<u64>() as f64 / (1024.0 * 1024.0))
    }),
    Figure::new("violations", Combine::Total, |s| Some(s.violations as f64)),
    Figure::new("by_design", Combine::Total, |s| Some(s.by_design as f64)),
    // Repetitions that did not settle before the quiesce timeout.
    Figure::new("unsettled", Combine::Total, |s| {
        Some(if s.settled { 0.0 } else { 1.0 })
    }),
    Figure::new("thresholds_broken", Combine::Total, |s| {
        Some(s.threshold_failures.len() as f64)
    }),
];

impl Figure {
    const fn new(name: &'static str, combine: Combine, value: fn(&CellSummary) -> Option<f64>) -> Figure {
        Figure { name, combine, value }
    }

    fn column(&self, cells: &[CellSummary]) -> Column {
        let values: Vec<Option<f64>> = cells.iter().map(self.value).collect();
        Column::new(self.name.into(), values)
    }

    fn expr(&self) -> Expr {
        let c = col(self.name);
        match self.combine {
            Combine::Total => c.sum().cast(DataType::UInt64),
            Combine::Mean => c.mean(),
            Combine::Lowest => c.min(),
            Combine::Highest => c.max(),
        }
        .alias(self.name)
    }
}

/// Latency columns, pooled over repetitions: (name, latency, quantile;
/// `None` for the maximum).
const LATENCIES: [(&str, &str, Option<f64>); 10] = [
    ("accepted_p50_ms", "accepted", Some(0.5)),
    ("accepted_p90_ms", "accepted", Some(0.9)),
    ("accepted_p99_ms", "accepted", Some(0.99)),
    ("accepted_p999_ms", "accepted", Some(0.999)),
    ("accepted_max_ms", "accepted", None),
    ("decided_p50_ms", "decided", Some(0.5)),
    ("decided_p90_ms", "decided", Some(0.9)),
    ("decided_p99_ms", "decided", Some(0.99)),
    ("decided_p999_ms", "decided", Some(0.999)),
    ("decided_max_ms", "decided", None),
];

/// A group's coordinates, comparable (the rate by its bits).
type Key = (String, String, String, u64, u64);

fn key_of(s: &CellSummary) -> Key {
    (
        s.method.clone(),
        s.scenario.clone(),
        s.chaos.clone(),
        u64::from(s.replicas),
        s.target_rate.to_bits(),
    )
}

/// One row per repetition: the keys and every figure.
fn per_repetition(cells: &[CellSummary]) -> PolarsResult<DataFrame> {
    let text = |f: fn(&CellSummary) -> &str| -> Vec<&str> { cells.iter().map(f).collect() };
    let mut columns = vec![
        Column::new("method".into(), text(|s| &s.method)),
        Column::new("scenario".into(), text(|s| &s.scenario)),
        Column::new("chaos".into(), text(|s| &s.chaos)),
        Column::new(
            "replicas".into(),
            cells.iter().map(|s| u64::from(s.replicas)).collect::<Vec<u64>>(),
        ),
        Column::new(
            "target_rate".into(),
            cells.iter().map(|s| s.target_rate).collect::<Vec<f64>>(),
        ),
    ];
    columns.extend(RATES.iter().chain(FIGURES).map(|f| f.column(cells)));
    DataFrame::new(cells.len(), columns)
}

/// The repetitions' accepted and decided histograms of each group, merged.
fn pooled(run: &Path, cells: &[CellSummary]) -> anyhow::Result<HashMap<Key, [Histogram<u64>; 2]>> {
    let mut out: HashMap<Key, [Histogram<u64>; 2]> = HashMap::new();
    for s in cells {
        let dir = run.join("cells").join(&s.cell);
        let read = |name: &str| crate::results::read_histogram(&dir.join(format!("{name}.hdr")));
        let (accepted, decided) = (read("accepted")?, read("decided")?);
        match out.get_mut(&key_of(s)) {
            Some([a, d]) => {
                a.add(&accepted)
                    .with_context(|| format!("merging {}'s accepted latencies", s.cell))?;
                d.add(&decided)
                    .with_context(|| format!("merging {}'s decided latencies", s.cell))?;
            }
            None => {
                out.insert(key_of(s), [accepted, decided]);
            }
        }
    }
    Ok(out)
}

fn quantile_ms(h: &Histogram<u64>, q: Option<f64>) -> f64 {
    if h.is_empty() {
        return 0.0;
    }
    let us = match q {
        Some(q) => h.value_at_quantile(q),
        None => h.max(),
    };
    us as f64 / 1000.0
}

/// The run's cells grouped over repetitions, in the order the groups first
/// ran; reads each cell's histograms from `run`.
pub fn by_cell(run: &Path, cells: &[CellSummary]) -> anyhow::Result<DataFrame> {
    let aggregations: Vec<Expr> = std::iter::once(len().cast(DataType::UInt64).alias("repetitions"))
        .chain(RATES.iter().chain(FIGURES).map(Figure::expr))
        .collect();
    let mut frame = per_repetition(cells)?
        .lazy()
        .group_by_stable(KEYS.map(col))
        .agg(aggregations)
        .collect()
        .map_err(|e| anyhow::anyhow!("grouping cells over repetitions: {e}"))?;

    let histograms = pooled(run, cells)?;
    let keys: Vec<Key> = (0..frame.height())
        .map(|row| row_key(&frame, row))
        .collect::<anyhow::Result<_>>()?;
    for (name, latency, q) in LATENCIES {
        let values: Vec<f64> = keys
            .iter()
            .map(|k| {
                let [a, d] = &histograms[k];
                quantile_ms(if latency == "accepted" { a } else { d }, q)
            })
            .collect();
        frame.with_column(Column::new(name.into(), values))?;
    }

    let order: Vec<&str> = KEYS
        .iter()
        .copied()
        .chain(["repetitions"])
        .chain(RATES.iter().map(|f| f.name))
        .chain(LATENCIES.iter().map(|(name, _, _)| *name))
        .chain(FIGURES.iter().map(|f| f.name))
        .collect();
    Ok(frame.select(order)?)
}

fn row_key(frame: &DataFrame, row: usize) -> anyhow::Result<Key> {
    let text = |name: &str| -> anyhow::Result<String> {
        Ok(frame
            .column(name)?
            .str()?
            .get(row)
            .unwrap_or_default()
            .to_string())
    };
    Ok((
        text("method")?,
        text("scenario")?,
        text("chaos")?,
        frame.column("replicas")?.u64()?.get(row).unwrap_or_default(),
        frame
            .column("target_rate")?
            .f64()?
            .get(row)
            .unwrap_or_default()
            .to_bits(),
    ))
}

/// One value as summary.csv writes it: whole numbers as such, the rest
/// to three decimals, nothing for a figure no repetition had.
fn field(v: &AnyValue) -> String {
    match v {
        AnyValue::Null => String::new(),
        AnyValue::Float64(x) => format!("{:.3}", x),
        AnyValue::String(s) => s.to_string(),
        other => other.to_string(),
    }
}

/// The frame as CSV (written by the csv crate: a comma in a name stays
/// one field).
pub fn csv(frame: &DataFrame) -> anyhow::Result<String> {
    let mut w = ::csv::Writer::from_writer(Vec::new());
    w.write_record(frame.get_column_names().iter().map(|n| n.as_str()))?;
    for row in 0..frame.height() {
        let fields: Vec<String> = frame
            .columns()
            .iter()
            .map(|c| c.get(row).map(|v| field(&v)))
            .collect::<PolarsResult<_>>()?;
        w.write_record(&fields)?;
    }
    Ok(String::from_utf8(w.into_inner()?)?)
}

/// A group's row as the charts and the Markdown summary read it.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    pub method: String,
    pub scenario: String,
    pub chaos: String,
    pub replicas: u64,
    pub target_rate: f64,
    pub repetitions: u64,
    pub committed_per_s: f64,
    pub goodput_per_s: f64,
    pub decided: Percentiles,
    pub sent: u64,
    pub unexpected: u64,
    pub failed: u64,
    pub violations: u64,
    pub by_design: u64,
}

/// The frame's rows, typed.
pub fn rows(frame: &DataFrame) -> anyhow::Result<Vec<Row>> {
    let f = |name: &str, row: usize| -> anyhow::Result<f64> {
        Ok(frame.column(name)?.f64()?.get(row).unwrap_or_default())
    };
    let n = |name: &str, row: usize| -> anyhow::Result<u64> {
        Ok(frame.column(name)?.u64()?.get(row).unwrap_or_default())
    };
    (0..frame.height())
        .map(|row| {
            let (method, scenario, chaos, replicas, _) = row_key(frame, row)?;
            Ok(Row {
                method,
                scenario,
                chaos,
                replicas,
                target_rate: f("target_rate", row)?,
                repetitions: n("repetitions", row)?,
                committed_per_s: f("committed_per_s", row)?,
                goodput_per_s: f("goodput_per_s", row)?,
                decided: Percentiles {
                    count: 0,
                    mean: 0.0,
                    p50: f("decided_p50_ms", row)?,
                    p90: f("decided_p90_ms", row)?,
                    p99: f("decided_p99_ms", row)?,
                    p999: f("decided_p999_ms", row)?,
                    max: f("decided_max_ms", row)?,
                },
                sent: n("sent", row)?,
                unexpected: n("unexpected", row)?,
                failed: n("errors", row)? + n("undecided", row)? + n("dropped", row)?,
                violations: n("violations", row)?,
                by_design: n("by_design", row)?,
            })
        })
        .collect()
}

/// A Markdown table of the groups, for a CI job summary.
pub fn markdown(run_id: &str, rows: &[Row]) -> String {
    let bad: u64 = rows.iter().map(|r| r.violations).sum();
    let repetitions: u64 = rows.iter().map(|r| r.repetitions).sum();
    let mut out = format!(
        "### txlab run {run_id}\n\n{} cells ({repetitions} runs of them), audit violations: **{bad}**\n\n\
         | method | scenario | chaos | replicas | rate/s | reps | committed/s | decided p50 / p99 ms | unexpected | failed | violations |\n\
         |---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|\n",
        rows.len()
    );
    for r in rows {
        let by_design = if r.by_design > 0 {
            format!(" (+{} by design)", r.by_design)
        } else {
            String::new()
        };
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} | {:.1} | {:.1} / {:.1} | {} | {} | {}{} |",
            r.method.replace('|', "\\|"),
            r.scenario.replace('|', "\\|"),
            r.chaos.replace('|', "\\|"),
            r.replicas,
            r.target_rate,
            r.repetitions,
            r.committed_per_s,
            r.decided.p50,
            r.decided.p99,
            r.unexpected,
            r.failed,
            if r.violations > 0 {
                format!("**{}**", r.violations)
            } else {
                "0".into()
            },
            by_design
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::charts::tests::cell;

    /// A cell of `method` with `sent` orders whose decided latencies are
    /// `decided_ms`, its histograms written under `run`.
    fn repetition(run: &Path, method: &str, repetition: u32, decided_ms: &[u64]) -> CellSummary {
        let mut s = cell(method, "none", 0.0, 0);
        s.repetition = repetition;
        s.cell = format!("{method}-happy-path-r1-{repetition}");
        s.sent = decided_ms.len() as u64;
        s.outcomes = [("confirmed".to_string(), s.sent)].into();
        let mut h = Histogram::<u64>::new_with_bounds(1, 600_000_000, 3).unwrap();
        for ms in decided_ms {
            h.record(ms * 1000).unwrap();
        }
        s.decided_ms = Percentiles::of(&h);
        let dir = run.join("cells").join(&s.cell);
        std::fs::create_dir_all(&dir).unwrap();
        crate::results::write_histogram(&dir.join("decided.hdr"), &h).unwrap();
        crate::results::write_histogram(&dir.join("accepted.hdr"), &Histogram::new(3).unwrap()).unwrap();
        s
    }

    #[test]
    fn repetitions_fold_into_one_row_with_latencies_of_all_their_orders() {
        let run = std::env::temp_dir().join(format!("txlab-aggregate-{}", std::process::id()));
        let fast: Vec<u64> = vec![10; 90];
        let slow: Vec<u64> = [vec![10; 60], vec![1000; 10]].concat();
        let mut cells = vec![
            repetition(&run, "tcc", 1, &fast),
            repetition(&run, "saga_orch", 1, &[5; 20]),
            repetition(&run, "tcc", 2, &slow),
        ];
        cells[2].violations = 2;
        cells[2].settled = false;
        cells[2].notification_lag_p50_ms = Some(40);

        let frame = by_cell(&run, &cells).unwrap();
        let rows = rows(&frame).unwrap();
        assert_eq!(rows.len(), 2, "{frame}");
        let tcc = &rows[0];
        assert_eq!(
            (tcc.method.as_str(), tcc.repetitions, tcc.sent, tcc.violations),
            ("tcc", 2, 160, 2)
        );
        // 10 of the 160 orders took a second: the pooled p90 is 10 ms and
        // the p99 a second, where neither repetition's p99 alone says so.
        assert!((tcc.decided.p90 - 10.0).abs() < 0.1, "{tcc:?}");
        assert!((tcc.decided.p99 - 1000.0).abs() < 1.0, "{tcc:?}");
        assert_eq!(rows[1].repetitions, 1);

        let text = csv(&frame).unwrap();
        let mut reader = ::csv::Reader::from_reader(text.as_bytes());
        let header = reader.headers().unwrap().clone();
        let first = reader.records().next().unwrap().unwrap();
        let get = |name: &str| first[header.iter().position(|h| h == name).unwrap()].to_string();
        assert_eq!(
            &header.iter().take(7).collect::<Vec<_>>(),
            &KEYS
                .iter()
                .copied()
                .chain(["repetitions", "achieved_rate"])
                .collect::<Vec<_>>()
        );
        assert_eq!(
            (get("sent"), get("confirmed"), get("unsettled")),
            ("160".into(), "160".into(), "1".into())
        );
        assert_eq!(
            get("decided_p99_ms_best_repetition"),
            format!("{:.3}", cells[0].decided_ms.p99)
        );
        assert_eq!(
            get("decided_p99_ms_worst_repetition"),
            format!("{:.3}", cells[2].decided_ms.p99)
        );
        assert_eq!(
            get("notification_lag_p50_ms"),
            "40.000",
            "a repetition without one is left out"
        );
        assert_eq!(get("cpu_cores"), "0.600", "order and postgres, not the driver");

        let md = markdown("run-1", &rows);
        assert!(
            md.contains("audit violations: **2**") && md.contains("| tcc | happy-path | none | 1 | 20 | 2 |"),
            "{md}"
        );
        std::fs::remove_dir_all(&run).unwrap();
    }

    #[test]
    fn a_cell_without_its_histograms_is_named() {
        let run = std::env::temp_dir().join(format!("txlab-aggregate-missing-{}", std::process::id()));
        let err = by_cell(&run, &[cell("tcc", "none", 1.0, 0)]).unwrap_err();
        assert!(format!("{err:#}").contains("cells/c/accepted.hdr"), "{err:#}");
    }
}
