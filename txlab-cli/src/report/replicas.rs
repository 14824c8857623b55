//! Throughput against replicas: committed orders per second at each replica
//! count, a line per method, a panel per scenario, chaos and offered rate
//! (from summary.csv's groups), so a reader sees which methods gain from
//! more replicas and which the database or broker holds back.

use std::path::Path;

use plotters::prelude::*;

use super::aggregate::Row;
use super::charts::{canvas, drawing_error, header, method_colour, FONT, WIDTH};

/// One panel: its title and a line per method of (replicas, committed/s).
type Panel = (String, Vec<(String, Vec<(u64, f64)>)>);

/// The panels of `rows` where some method ran at two replica counts or
/// more; empty when none did (nothing to draw).
pub fn panels(rows: &[Row]) -> Vec<Panel> {
    let mut out: Vec<Panel> = Vec::new();
    for r in rows {
        let mut title = format!("{} at {} orders/s", r.scenario, r.target_rate);
        if r.chaos != crate::spec::NO_CHAOS {
            title = format!("{} [{}] at {} orders/s", r.scenario, r.chaos, r.target_rate);
        }
        let panel = match out.iter_mut().find(|(t, _)| *t == title) {
            Some(p) => p,
            None => {
                out.push((title, Vec::new()));
                out.last_mut().expect("just pushed")
            }
        };
        let point = (r.replicas, r.committed_per_s);
        match panel.1.iter_mut().find(|(m, _)| *m == r.method) {
            Some((_, points)) => points.push(point),
            None => panel.1.push((r.method.clone(), vec![point])),
        }
    }
    for (_, lines) in &mut out {
        for (_, points) in lines.iter_mut() {
            points.sort_by_key(|p| p.0);
        }
    }
    out.retain(|(_, lines)| {
        lines
            .iter()
            .any(|(_, p)| p.first().map(|a| a.0) != p.last().map(|b| b.0))
    });
    out
}

const PANEL_HEIGHT: u32 = 300;
const COLUMNS: usize = 2;

/// The chart's height for `panels` panels.
pub fn height(panels: usize) -> u32 {
    76 + PANEL_HEIGHT * panels.div_ceil(COLUMNS).max(1) as u32
}

pub fn draw(panels: &[Panel], path: &Path) -> anyhow::Result<()> {
    let root = canvas(path, (WIDTH, height(panels.len())))?;
    let mut items: Vec<(String, RGBColor)> = Vec::new();
    for (method, _) in panels.iter().flat_map(|(_, lines)| lines) {
        if !items.iter().any(|(m, _)| m == method) {
            items.push((method.clone(), method_colour(method)));
        }
    }
    let body = header(&root, "Committed orders per second against replicas", &items)?;
    let rows = panels.len().div_ceil(COLUMNS).max(1);
    let areas = body.split_evenly((rows, COLUMNS));
    for ((title, lines), area) in panels.iter().zip(&areas) {
        let points = lines.iter().flat_map(|(_, p)| p.iter());
        let x_max = points.clone().map(|p| p.0).max().unwrap_or(1).max(2);
        let y_max = points.map(|p| p.1).fold(1.0, f64::max) * 1.15;
        let mut chart = ChartBuilder::on(area)
            .caption(title, (FONT, 15))
            .margin(10)
            .x_label_area_size(40)
            .y_label_area_size(60)
            .build_cartesian_2d(0.5f64..x_max as f64 + 0.5, 0f64..y_max)
            .map_err(drawing_error)?;
        chart
            .configure_mesh()
            .x_desc("replicas of each service")
            .y_desc("committed orders/s")
            .x_labels(x_max as usize + 1)
            .x_label_formatter(&|x| {
                if x.fract().abs() < 1e-9 && *x >= 1.0 {
                    format!("{x:.0}")
                } else {
                    String::new()
                }
            })
            .label_style((FONT, 12))
            .draw()
            .map_err(drawing_error)?;
        // Methods often reach the same figure: each drawn thinner than the
        // one before, so lines on top of each other still show every colour.
        for (k, (method, p)) in lines.iter().enumerate() {
            let c = method_colour(method);
            let wider = (lines.len() - 1 - k) as u32;
            let at = |(r, v): &(u64, f64)| (*r as f64, *v);
            chart
                .draw_series(LineSeries::new(p.iter().map(at), c.stroke_width(2 + 2 * wider)))
                .map_err(drawing_error)?;
            chart
                .draw_series(p.iter().map(|q| Circle::new(at(q), 4 + 2 * wider, c.filled())))
                .map_err(drawing_error)?;
        }
    }
    root.present().map_err(drawing_error)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::results::Percentiles;

    fn row(method: &str, chaos: &str, replicas: u64, committed: f64) -> Row {
        Row {
            method: method.into(),
            scenario: "happy-path".into(),
            chaos: chaos.into(),
            replicas,
            target_rate: 100.0,
            repetitions: 1,
            committed_per_s: committed,
            goodput_per_s: committed,
            decided: Percentiles::default(),
            sent: 1000,
            unexpected: 0,
            failed: 0,
            violations: 0,
            by_design: 0,
        }
    }

    #[test]
    fn a_panel_per_scenario_and_chaos_with_two_replica_counts() {
        let one_count = vec![row("tcc", "none", 1, 90.0), row("twopc", "none", 1, 60.0)];
        assert!(
            panels(&one_count).is_empty(),
            "one replica count: nothing to draw"
        );

        let rows = vec![
            row("tcc", "none", 3, 99.0),
            row("tcc", "none", 1, 90.0),
            row("twopc", "none", 1, 60.0),
            row("twopc", "none", 3, 45.0),
            row("tcc", "latency-10ms", 1, 80.0),
            row("tcc", "latency-10ms", 3, 95.0),
            row("saga_orch", "loss", 1, 70.0),
        ];
        let p = panels(&rows);
        assert_eq!(p.len(), 2, "the loss panel has one replica count: {p:?}");
        assert_eq!(p[0].0, "happy-path at 100 orders/s");
        assert_eq!(
            p[0].1,
            vec![
                ("tcc".to_string(), vec![(1, 90.0), (3, 99.0)]),
                ("twopc".to_string(), vec![(1, 60.0), (3, 45.0)]),
            ]
        );
        assert_eq!(p[1].0, "happy-path [latency-10ms] at 100 orders/s");

        let path = std::env::temp_dir().join(format!("txlab-replicas-{}.png", std::process::id()));
        draw(&p, &path).unwrap();
        let (w, h, _, _) = crate::report::charts::tests::decode(&path);
        assert_eq!((w, h), (WIDTH, height(2)));
        for method in ["tcc", "twopc"] {
            let c = method_colour(method);
            assert!(
                crate::report::charts::tests::count_rgb(&path, [c.0, c.1, c.2]) > 150,
                "{method}'s line drawn"
            );
        }
        std::fs::remove_file(&path).unwrap();
    }
}
