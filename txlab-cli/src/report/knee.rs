//! The knee curves of a `txlab bench` run (its bench.json): per method,
//! offered rate against goodput and against decided p99, the knee marked,
//! so a reader sees where each method stops keeping up and how it fails.

use std::path::Path;

use anyhow::Context;
use plotters::prelude::*;
use serde::Deserialize;

use super::charts::{canvas, drawing_error, header, lighter, method_colour, FONT, WIDTH};

/// What the chart needs of bench.json.
#[derive(Debug, Clone, Deserialize)]
pub struct BenchFile {
    pub p99_bound_ms: f64,
    /// Processes per service (absent in runs before replicas).
    #[serde(default = "one")]
    pub replicas: u32,
    pub methods: Vec<MethodCurve>,
}

fn one() -> u32 {
    1
}

#[derive(Debug, Clone, Deserialize)]
pub struct MethodCurve {
    pub method: String,
    pub knee: Option<f64>,
    #[serde(default)]
    pub curve: Vec<CurveStep>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct CurveStep {
    pub offered: f64,
    pub goodput: f64,
    pub decided_p99_ms: f64,
}

/// The run's bench.json, if it is a bench run with knee curves.
pub fn read(run: &Path) -> anyhow::Result<Option<BenchFile>> {
    let path = run.join("bench.json");
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    let file: BenchFile =
        serde_json::from_str(&text).with_context(|| format!("reading {}", path.display()))?;
    Ok(file.methods.iter().any(|m| !m.curve.is_empty()).then_some(file))
}

pub const HEIGHT: u32 = 760;

/// The steps of a curve by offered rate, one per rate: a rate run again
/// (its failure came with time stolen by the host) counts by its last run,
/// which the stable sort keeps last.
fn counted_steps(curve: &[CurveStep]) -> Vec<&CurveStep> {
    let mut steps: Vec<&CurveStep> = curve.iter().collect();
    steps.sort_by(|a, b| a.offered.total_cmp(&b.offered));
    steps.reverse();
    steps.dedup_by(|a, b| a.offered == b.offered);
    steps.reverse();
    steps
}

/// Goodput (top) and decided p99 (bottom, log scale) against the offered
/// rate, a line per method, its knee as a ring.
pub fn draw(bench: &BenchFile, path: &Path) -> anyhow::Result<()> {
    let root = canvas(path, (WIDTH, HEIGHT))?;
    let items: Vec<(String, RGBColor)> = bench
        .methods
        .iter()
        .filter(|m| !m.curve.is_empty())
        .map(|m| (m.method.clone(), method_colour(&m.method)))
        .chain([("p99 bound".to_string(), RGBColor(200, 0, 0))])
        .collect();
    let title = format!(
        "knee curves ({} process{} per service)",
        bench.replicas,
        if bench.replicas == 1 { "" } else { "es" }
    );
    let body = header(&root, &title, &items)?;
    let (top, bottom) = body.split_vertically(body.dim_in_pixel().1 / 2);
    let curves: Vec<(&MethodCurve, Vec<&CurveStep>)> = bench
        .methods
        .iter()
        .map(|m| (m, counted_steps(&m.curve)))
        .filter(|(_, s)| !s.is_empty())
        .collect();
    let x_max = curves
        .iter()
        .flat_map(|(_, s)| s.iter().map(|c| c.offered))
        .fold(1.0, f64::max)
        * 1.05;

    let mut goodput = ChartBuilder::on(&top)
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(0f64..x_max, 0f64..x_max)
        .map_err(drawing_error)?;
    goodput
        .configure_mesh()
        .x_desc("offered, orders/s")
        .y_desc("goodput, orders/s")
        .label_style((FONT, 13))
        .draw()
        .map_err(drawing_error)?;
    // Where every offered order is done as expected.
    goodput
        .draw_series(LineSeries::new(
            [(0.0, 0.0), (x_max, x_max)],
            lighter(BLACK, 0.7).stroke_width(1),
        ))
        .map_err(drawing_error)?;

    let p99_max = curves
        .iter()
        .flat_map(|(_, s)| s.iter().map(|c| c.decided_p99_ms))
        .fold(bench.p99_bound_ms, f64::max)
        * 2.0;
    let mut p99 = ChartBuilder::on(&bottom)
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(0f64..x_max, (1f64..p99_max).log_scale())
        .map_err(drawing_error)?;
    p99.configure_mesh()
        .x_desc("offered, orders/s")
        .y_desc("decided p99, ms (log)")
        .label_style((FONT, 13))
        .draw()
        .map_err(drawing_error)?;
    p99.draw_series(LineSeries::new(
        [(0.0, bench.p99_bound_ms), (x_max, bench.p99_bound_ms)],
        RGBColor(200, 0, 0).stroke_width(1),
    ))
    .map_err(drawing_error)?;

    for (m, steps) in &curves {
        let c = method_colour(&m.method);
        goodput
            .draw_series(LineSeries::new(
                steps.iter().map(|s| (s.offered, s.goodput)),
                c.stroke_width(2),
            ))
            .map_err(drawing_error)?;
        p99.draw_series(LineSeries::new(
            steps.iter().map(|s| (s.offered, s.decided_p99_ms.max(1.0))),
            c.stroke_width(2),
        ))
        .map_err(drawing_error)?;
        for s in steps {
            goodput
                .draw_series([Circle::new((s.offered, s.goodput), 3, c.filled())])
                .map_err(drawing_error)?;
            p99.draw_series([Circle::new((s.offered, s.decided_p99_ms.max(1.0)), 3, c.filled())])
                .map_err(drawing_error)?;
        }
        if let Some(knee) = m.knee.and_then(|k| steps.iter().find(|s| s.offered == k)) {
            goodput
                .draw_series([Circle::new((knee.offered, knee.goodput), 9, c.stroke_width(2))])
                .map_err(drawing_error)?;
            goodput
                .draw_series([Text::new(
                    format!("{} knee {:.0}/s", m.method, knee.offered),
                    (knee.offered, knee.goodput + x_max * 0.04),
                    (FONT, 13),
                )])
                .map_err(drawing_error)?;
        }
    }
    root.present().map_err(drawing_error)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bench_file_draws_its_curves_and_other_runs_have_none() {
        let dir = std::env::temp_dir().join(format!("txlab-knee-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        assert!(read(&dir).unwrap().is_none(), "a run without bench.json");
        let json = serde_json::json!({
            "p99_bound_ms": 500.0, "replicas": 3, "startup": null, "pgbench": [],
            "methods": [
                {"method": "saga_orch", "knee": 100.0, "curve": [
                    {"offered": 50.0, "goodput": 50.0, "decided_p99_ms": 20.0, "cell": "a"},
                    {"offered": 200.0, "goodput": 80.0, "decided_p99_ms": 9000.0, "cell": "b"},
                    {"offered": 100.0, "goodput": 100.0, "decided_p99_ms": 60.0, "cell": "c"}]},
                {"method": "twopc", "knee": null, "curve": []}
            ]
        });
        std::fs::write(dir.join("bench.json"), json.to_string()).unwrap();
        let bench = read(&dir).unwrap().expect("curves");
        assert_eq!((bench.replicas, bench.methods[0].curve.len()), (3, 3));
        let path = dir.join("knee.png");
        draw(&bench, &path).unwrap();
        let (w, h, _, _) = crate::report::charts::tests::decode(&path);
        assert_eq!((w, h), (WIDTH, HEIGHT));
        let c = method_colour("saga_orch");
        let drawn = crate::report::charts::tests::count_rgb(&path, [c.0, c.1, c.2]);
        assert!(drawn > 500, "saga_orch's curves drawn: {drawn} pixels");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_rate_run_again_is_drawn_once_by_its_last_run() {
        let step = |offered, decided_p99_ms| CurveStep {
            offered,
            goodput: offered,
            decided_p99_ms,
        };
        // As bench.json keeps them: by rate, the runs of a rate in order.
        let curve = [
            step(50.0, 20.0),
            step(100.0, 2100.0),
            step(100.0, 30.0),
            step(200.0, 900.0),
        ];
        let drawn: Vec<(f64, f64)> = counted_steps(&curve)
            .iter()
            .map(|s| (s.offered, s.decided_p99_ms))
            .collect();
        assert_eq!(drawn, [(50.0, 20.0), (100.0, 30.0), (200.0, 900.0)]);
    }
}
