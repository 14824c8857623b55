//! Turning cell summaries into what a person reads: the terminal table at
//! the end of a run, and `txlab report`'s summary.csv, PNG charts
//! ([`charts`]) and HTML page ([`html`]).

pub mod aggregate;
pub mod charts;
pub mod delay;
pub mod html;
pub mod knee;
pub mod orders;
pub mod replicas;

use std::fmt::Write as _;

use comfy_table::presets::UTF8_FULL_CONDENSED;
use comfy_table::{Cell as TableCell, CellAlignment, Color, ContentArrangement, Table};

use txlab_api::order::OrderState;

use crate::results::CellSummary;

fn outcome(s: &CellSummary, state: OrderState) -> u64 {
    s.outcomes.get(state.as_str()).copied().unwrap_or(0)
}

/// A table in the style of every terminal table txlab prints, with `header`.
pub fn terminal_table(header: impl Into<comfy_table::Row>) -> Table {
    let mut t = Table::new();
    t.load_preset(UTF8_FULL_CONDENSED)
        .set_content_arrangement(ContentArrangement::Dynamic)
        .set_header(header);
    t
}

/// One row per cell: throughput, outcomes, latency, audit.
pub fn table(summaries: &[CellSummary]) -> Table {
    let mut t = terminal_table(vec![
        "method",
        "scenario",
        "rate/s\ntarget→got",
        "orders",
        "confirmed",
        "rejected",
        "cancelled",
        "needs\nattention",
        "unexpected",
        "errors",
        "accepted ms\np50 / p99",
        "decided ms\np50 / p99",
        "audit\nviolations",
    ]);
    for s in summaries {
        let by_design = if s.by_design > 0 {
            format!(" +{} by design", s.by_design)
        } else {
            String::new()
        };
        let violations = if !s.settled {
            TableCell::new(format!("{} (unsettled){by_design}", s.violations)).fg(Color::Red)
        } else if s.violations == 0 {
            TableCell::new(format!("0{by_design}")).fg(if s.by_design > 0 {
                Color::Yellow
            } else {
                Color::Green
            })
        } else {
            TableCell::new(format!("{}{by_design}", s.violations)).fg(Color::Red)
        };
        let mut scenario = if s.repetition > 1 {
            format!("{} #{}", s.scenario, s.repetition)
        } else {
            s.scenario.clone()
        };
        if s.chaos != crate::spec::NO_CHAOS {
            let _ = write!(scenario, "\nchaos: {}", s.chaos);
        }
        t.add_row(vec![
            TableCell::new(&s.method),
            TableCell::new(scenario),
            TableCell::new(format!("{:.0}→{:.1}", s.target_rate, s.achieved_rate)),
            TableCell::new(s.sent),
            TableCell::new(outcome(s, OrderState::Confirmed)),
            TableCell::new(outcome(s, OrderState::Rejected)),
            TableCell::new(outcome(s, OrderState::Cancelled)),
            TableCell::new(outcome(s, OrderState::NeedsAttention)),
            if s.unexpected > 0 {
                TableCell::new(s.unexpected).fg(Color::Yellow)
            } else {
                TableCell::new(0)
            },
            TableCell::new(s.errors + s.undecided + s.dropped),
            TableCell::new(format!("{:.1} / {:.1}", s.accepted_ms.p50, s.accepted_ms.p99)),
            // Censored arrivals (dropped, failed, undecided) sit at the follow limit.
            if s.censored > 0 {
                TableCell::new(format!(
                    "{:.1} / {:.1}\n{} censored",
                    s.decided_ms.p50, s.decided_ms.p99, s.censored
                ))
                .fg(Color::Red)
            } else {
                TableCell::new(format!("{:.1} / {:.1}", s.decided_ms.p50, s.decided_ms.p99))
            },
            violations,
        ]);
    }
    for i in 2..13 {
        if let Some(c) = t.column_mut(i) {
            c.set_cell_alignment(CellAlignment::Right);
        }
    }
    if let Some(width) = t.width() {
        fit_columns(&mut t, width);
    }
    t
}

/// Columns of [`table`] a narrow terminal may go without, least needed
/// first (the CSVs keep every one): accepted latency, rates, the
/// rarer outcomes, errors. What is left still says which method is fast
/// and which lost data.
const LEFT_OUT_FIRST: [usize; 6] = [10, 2, 7, 6, 5, 9];

/// Hides columns of `t` until its rows fit in `width` characters without
/// wrapping every cell into slivers; returns how many were hidden.
pub fn fit_columns(t: &mut Table, width: u16) -> usize {
    let natural = |t: &Table| -> usize {
        let shown: Vec<usize> = t
            .column_iter()
            .zip(t.column_max_content_widths())
            .filter(|(c, _)| !c.is_hidden())
            .map(|(_, w)| w as usize + 2)
            .collect();
        shown.iter().sum::<usize>() + shown.len() + 1
    };
    let mut hidden = 0;
    for i in LEFT_OUT_FIRST {
        if natural(t) <= width as usize {
            break;
        }
        if let Some(c) = t.column_mut(i) {
            c.set_constraint(comfy_table::ColumnConstraint::Hidden);
            hidden += 1;
        }
    }
    hidden
}

/// One line of repetitions.csv: a repetition's figures, for spreadsheets
/// and scripts (summary.csv groups them, [`aggregate`]).
#[derive(Debug, serde::Serialize)]
struct SummaryRow<'a> {
    cell: &'a str,
    method: &'a str,
    scenario: &'a str,
    chaos: &'a str,
    replicas: u32,
    repetition: u32,
    target_rate: f64,
    achieved_rate: f64,
    sent: u64,
    confirmed: u64,
    rejected: u64,
    cancelled: u64,
    unexpected: u64,
    errors: u64,
    undecided: u64,
    dropped: u64,
    late: u64,
    accepted_p50_ms: f64,
    accepted_p99_ms: f64,
    decided_p50_ms: f64,
    decided_p99_ms: f64,
    decided_p999_ms: f64,
    censored: u64,
    quiesce_ms: u64,
    settled: bool,
    violations: usize,
    by_design: usize,
    needs_attention: u64,
    retries: f64,
    compensations: f64,
    taken_over: f64,
    restarts: u32,
    notification_lag_p50_ms: Option<i64>,
    network_bytes: u64,
    thresholds_broken: usize,
}

/// The same figures, one line per cell (written by the csv crate, so a
/// name with a comma stays one field).
pub fn csv(summaries: &[CellSummary]) -> anyhow::Result<String> {
    let mut w = ::csv::Writer::from_writer(Vec::new());
    for s in summaries {
        let event = |k: &str| s.events.get(k).copied().unwrap_or(0.0);
        w.serialize(SummaryRow {
            cell: &s.cell,
            method: &s.method,
            scenario: &s.scenario,
            chaos: &s.chaos,
            replicas: s.replicas,
            repetition: s.repetition,
            target_rate: s.target_rate,
            achieved_rate: s.achieved_rate,
            sent: s.sent,
            confirmed: outcome(s, OrderState::Confirmed),
            rejected: outcome(s, OrderState::Rejected),
            cancelled: outcome(s, OrderState::Cancelled),
            unexpected: s.unexpected,
            errors: s.errors,
            undecided: s.undecided,
            dropped: s.dropped,
            late: s.late,
            accepted_p50_ms: s.accepted_ms.p50,
            accepted_p99_ms: s.accepted_ms.p99,
            decided_p50_ms: s.decided_ms.p50,
            decided_p99_ms: s.decided_ms.p99,
            decided_p999_ms: s.decided_ms.p999,
            censored: s.censored,
            quiesce_ms: s.quiesce_ms,
            settled: s.settled,
            violations: s.violations,
            by_design: s.by_design,
            needs_attention: outcome(s, OrderState::NeedsAttention),
            retries: event("retry"),
            compensations: event("compensation"),
            taken_over: event("taken_over"),
            restarts: s.restarts.values().sum(),
            notification_lag_p50_ms: s.notification_lag_p50_ms,
            network_bytes: s.network.values().sum(),
            thresholds_broken: s.threshold_failures.len(),
        })?;
    }
    Ok(String::from_utf8(w.into_inner()?)?)
}

/// One line of the report's percentiles.csv: one quantile of one latency
/// of one cell, with the cell's coordinates (long format, for plotting
/// and for comparing spectra across cells).
#[derive(Debug, serde::Serialize)]
struct SpectrumRow<'a> {
    cell: &'a str,
    method: &'a str,
    scenario: &'a str,
    chaos: &'a str,
    replicas: u32,
    target_rate: f64,
    repetition: u32,
    latency: &'a str,
    quantile: f64,
    value_ms: f64,
    count: u64,
}

/// Every cell's percentile spectrum (its percentiles.csv) in one table.
pub fn spectra_csv(run: &std::path::Path, summaries: &[CellSummary]) -> anyhow::Result<String> {
    let mut w = ::csv::Writer::from_writer(Vec::new());
    for s in summaries {
        for p in crate::results::read_percentiles(&run.join("cells").join(&s.cell))? {
            w.serialize(SpectrumRow {
                cell: &s.cell,
                method: &s.method,
                scenario: &s.scenario,
                chaos: &s.chaos,
                replicas: s.replicas,
                target_rate: s.target_rate,
                repetition: s.repetition,
                latency: &p.latency,
                quantile: p.quantile,
                value_ms: p.value_ms,
                count: p.count,
            })?;
        }
    }
    Ok(String::from_utf8(w.into_inner()?)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::results::Percentiles;

    fn summary() -> CellSummary {
        CellSummary {
            index: 0,
            cell: "outbox-fail-payment-r1-1".into(),
            method: "outbox".into(),
            scenario: "fail-payment".into(),
            replicas: 1,
            repetition: 1,
            expect: "needs_attention".into(),
            target_rate: 10.0,
            achieved_rate: 9.5,
            scheduled: 20,
            sent: 19,
            accepted: 19,
            decided: 19,
            late: 0,
            dropped: 1,
            errors: 0,
            undecided: 0,
            unexpected: 0,
            outcomes: [("needs_attention".to_string(), 19)].into(),
            error_kinds: Default::default(),
            unexpected_examples: vec![],
            accepted_ms: Percentiles {
                p50: 1.5,
                p99: 4.0,
                ..Default::default()
            },
            decided_ms: Percentiles {
                p50: 20.0,
                p99: 80.0,
                ..Default::default()
            },
            censored: 1,
            quiesce_ms: 120,
            settled: true,
            unsettled: vec![],
            threshold_failures: vec!["1 dropped arrivals (at most 0 allowed)".into()],
            violations: 0,
            by_design: 19,
            violations_by_invariant: Default::default(),
            notification_lag_p50_ms: Some(7),
            notification_lag_max_ms: Some(30),
            events: [("retry".to_string(), 3.0)].into(),
            restarts: Default::default(),
            resources: Default::default(),
            chaos: "none".into(),
            chaos_notes: vec![],
            network: Default::default(),
            chaos_windows: vec![],
        }
    }

    #[test]
    fn csv_rows_read_back_field_by_field_even_with_a_comma_in_a_name() {
        let mut odd = summary();
        odd.chaos = "latency-10ms+a,b".into();
        let text = csv(&[summary(), odd]).unwrap();
        let mut reader = ::csv::Reader::from_reader(text.as_bytes());
        let header = reader.headers().unwrap().clone();
        let rows: Vec<::csv::StringRecord> = reader.records().map(Result::unwrap).collect();
        assert_eq!(rows.len(), 2);
        let field = |row: &::csv::StringRecord, name: &str| {
            row[header.iter().position(|h| h == name).unwrap()].to_string()
        };
        let row = &rows[0];
        assert_eq!(
            (
                field(row, "needs_attention"),
                field(row, "by_design"),
                field(row, "retries")
            ),
            ("19".to_string(), "19".to_string(), "3.0".to_string())
        );
        assert_eq!(
            (field(row, "dropped"), field(row, "decided_p99_ms")),
            ("1".into(), "80.0".into())
        );
        assert_eq!(
            (field(row, "censored"), field(row, "thresholds_broken")),
            ("1".into(), "1".into())
        );
        assert_eq!(field(&rows[1], "chaos"), "latency-10ms+a,b", "quoted, one field");
    }

    #[test]
    fn a_narrow_terminal_loses_the_least_needed_columns_first() {
        let mut wide = table(&[summary()]);
        assert_eq!(fit_columns(&mut wide, 400), 0);
        let mut narrow = table(&[summary()]);
        let hidden = fit_columns(&mut narrow, 100);
        let text = narrow.to_string();
        assert!(hidden > 0 && !text.contains("accepted ms"), "{text}");
        for kept in [
            "method",
            "fail-payment",
            "decided ms",
            "20.0 / 80.0",
            "violations",
        ] {
            assert!(text.contains(kept), "{kept} kept: {text}");
        }
        assert!(
            text.lines().all(|l| l.chars().count() <= 100),
            "fits in 100 columns:\n{text}"
        );
    }

    #[test]
    fn the_table_shows_by_design_apart_from_bugs() {
        let text = table(&[summary()]).to_string();
        assert!(text.contains("0 +19 by design"), "{text}");
        assert!(text.contains("10→9.5"), "{text}");
        assert!(
            text.contains("1 censored"),
            "censored latencies are marked: {text}"
        );
    }
}
