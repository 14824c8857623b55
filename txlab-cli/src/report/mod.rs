//! Turning cell summaries into what a person reads: the terminal table at
//! the end of a run, and `txlab report`'s summary.csv, PNG charts
//! ([`charts`]) and HTML page ([`html`]).

pub mod charts;
pub mod html;
pub mod orders;

use std::fmt::Write as _;

use comfy_table::presets::UTF8_FULL_CONDENSED;
use comfy_table::{Cell as TableCell, CellAlignment, Color, ContentArrangement, Table};

use txlab_api::order::OrderState;

use crate::results::CellSummary;

fn outcome(s: &CellSummary, state: OrderState) -> u64 {
    s.outcomes.get(state.as_str()).copied().unwrap_or(0)
}

/// One row per cell: throughput, outcomes, latency, audit.
pub fn table(summaries: &[CellSummary]) -> Table {
    let mut t = Table::new();
    t.load_preset(UTF8_FULL_CONDENSED)
        .set_content_arrangement(ContentArrangement::Dynamic);
    t.set_header(vec![
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
    t
}

/// The same figures, one line per cell, for spreadsheets and scripts.
pub fn csv(summaries: &[CellSummary]) -> String {
    let mut out = String::from(
        "cell,method,scenario,chaos,replicas,repetition,target_rate,achieved_rate,sent,confirmed,rejected,cancelled,\
         unexpected,errors,undecided,dropped,late,accepted_p50_ms,accepted_p99_ms,decided_p50_ms,decided_p99_ms,\
         decided_p999_ms,censored,quiesce_ms,settled,violations,by_design,needs_attention,retries,compensations,restarts,\
         notification_lag_p50_ms,network_bytes,thresholds_broken\n",
    );
    for s in summaries {
        let _ = writeln!(
            out,
            "{},{},{},{},{},{},{},{:.3},{},{},{},{},{},{},{},{},{},{:.3},{:.3},{:.3},{:.3},{:.3},{},{},{},{},{},{},{},{},{},{},{},{}",
            s.cell,
            s.method,
            s.scenario,
            s.chaos,
            s.replicas,
            s.repetition,
            s.target_rate,
            s.achieved_rate,
            s.sent,
            outcome(s, OrderState::Confirmed),
            outcome(s, OrderState::Rejected),
            outcome(s, OrderState::Cancelled),
            s.unexpected,
            s.errors,
            s.undecided,
            s.dropped,
            s.late,
            s.accepted_ms.p50,
            s.accepted_ms.p99,
            s.decided_ms.p50,
            s.decided_ms.p99,
            s.decided_ms.p999,
            s.censored,
            s.quiesce_ms,
            s.settled,
            s.violations,
            s.by_design,
            outcome(s, OrderState::NeedsAttention),
            s.events.get("retry").copied().unwrap_or(0.0),
            s.events.get("compensation").copied().unwrap_or(0.0),
            s.restarts.values().sum::<u32>(),
            s.notification_lag_p50_ms.map(|v| v.to_string()).unwrap_or_default(),
            s.network.values().sum::<u64>(),
            s.threshold_failures.len()
        );
    }
    out
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
    fn csv_rows_have_as_many_fields_as_the_header() {
        let text = csv(&[summary()]);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2);
        let header: Vec<&str> = lines[0].split(',').collect();
        let row: Vec<&str> = lines[1].split(',').collect();
        assert_eq!(header.len(), row.len());
        let field = |name: &str| row[header.iter().position(|h| *h == name).unwrap()];
        assert_eq!(
            (field("needs_attention"), field("by_design"), field("retries")),
            ("19", "19", "3")
        );
        assert_eq!((field("dropped"), field("decided_p99_ms")), ("1", "80.000"));
        assert_eq!((field("censored"), field("thresholds_broken")), ("1", "1"));
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
