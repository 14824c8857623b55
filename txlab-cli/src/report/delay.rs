//! Decided latency against the delay a cell's chaos injected: a line per
//! method (and replica count), for runs whose cells differ by a network
//! delay, so a reader sees how each method's latency grows with it.

use std::path::Path;

use plotters::prelude::*;

use super::charts::{canvas, drawing_error, header, lighter, method_colour, FONT, WIDTH};
use crate::results::CellSummary;

/// The one-way delay (ms) a cell's chaos adds, from its cell.json: 0
/// without chaos, the sum of its delays when every fault is a plain
/// delay (loss, partitions, bandwidth and kills make the cell something
/// else), None otherwise or when unreadable.
pub fn injected_ms(cell_dir: &Path) -> Option<f64> {
    let text = std::fs::read_to_string(cell_dir.join("cell.json")).ok()?;
    let cell: serde_json::Value = serde_json::from_str(&text).ok()?;
    let faults = cell.pointer("/chaos/faults")?.as_array()?;
    let mut total = 0.0;
    for f in faults {
        let effect = f.pointer("/kind/effect")?;
        let plain = effect.get("action")?.as_str()? == "shape"
            && effect.get("loss").is_none_or(|l| l.is_null())
            && effect.get("duplicate").is_none_or(|d| d.is_null());
        if !plain {
            return None;
        }
        let latency = effect.pointer("/delay/latency")?;
        total += latency.get("secs")?.as_f64()? * 1000.0 + latency.get("nanos")?.as_f64()? / 1e6;
    }
    Some(total)
}

/// One line: a method at a replica count, its (delay, p50, p99) points.
type Line = ((String, u32), Vec<(f64, f64, f64)>);

/// The lines of `cells` with their injected delays; None when no method
/// has cells at two different delays (nothing to draw).
pub fn lines(cells: &[(CellSummary, Option<f64>)]) -> Option<Vec<Line>> {
    let mut out: Vec<Line> = Vec::new();
    for (s, delay) in cells {
        let Some(d) = delay else { continue };
        let key = (s.method.clone(), s.replicas);
        let point = (*d, s.decided_ms.p50, s.decided_ms.p99);
        match out.iter_mut().find(|(k, _)| *k == key) {
            Some((_, points)) => points.push(point),
            None => out.push((key, vec![point])),
        }
    }
    for (_, points) in &mut out {
        points.sort_by(|a, b| a.0.total_cmp(&b.0));
    }
    let spread = |p: &Vec<(f64, f64, f64)>| p.first().map(|a| a.0) != p.last().map(|b| b.0);
    out.iter().any(|(_, p)| spread(p)).then_some(out)
}

pub const HEIGHT: u32 = 520;

/// Decided p50 (solid) and p99 (light) against the injected delay.
pub fn draw(lines: &[Line], path: &Path) -> anyhow::Result<()> {
    let root = canvas(path, (WIDTH, HEIGHT))?;
    let mut items: Vec<(String, RGBColor)> = Vec::new();
    for ((method, _), _) in lines {
        if !items.iter().any(|(m, _)| m == method) {
            items.push((method.clone(), method_colour(method)));
        }
    }
    let body = header(
        &root,
        "decided latency against injected delay: p50 solid, p99 light",
        &items,
    )?;
    let points = lines.iter().flat_map(|(_, p)| p.iter());
    let x_max = points.clone().map(|p| p.0).fold(1.0, f64::max) * 1.1;
    let y_max = points.map(|p| p.2).fold(1.0, f64::max) * 2.0;
    let mut chart = ChartBuilder::on(&body)
        .margin(12)
        .x_label_area_size(44)
        .y_label_area_size(80)
        .build_cartesian_2d(0f64..x_max, (1f64..y_max).log_scale())
        .map_err(drawing_error)?;
    chart
        .configure_mesh()
        .x_desc("injected delay, ms one way on the faulted link (0: no chaos)")
        .y_desc("decided latency, ms (log)")
        .label_style((FONT, 13))
        .draw()
        .map_err(drawing_error)?;
    for ((method, replicas), p) in lines {
        let c = method_colour(method);
        // Several replica counts: the dashed-looking thinner line is the larger.
        let width = if *replicas > 1 { 1 } else { 2 };
        chart
            .draw_series(LineSeries::new(
                p.iter().map(|(d, _, p99)| (*d, p99.max(1.0))),
                lighter(c, 0.55).stroke_width(width),
            ))
            .map_err(drawing_error)?;
        chart
            .draw_series(LineSeries::new(
                p.iter().map(|(d, p50, _)| (*d, p50.max(1.0))),
                c.stroke_width(width + 1),
            ))
            .map_err(drawing_error)?;
        if let Some((d, p50, _)) = p.last() {
            chart
                .draw_series([Text::new(
                    format!("{method} ×{replicas}"),
                    (*d, p50.max(1.0)),
                    (FONT, 12),
                )])
                .map_err(drawing_error)?;
        }
    }
    root.present().map_err(drawing_error)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cell_dir(name: &str, chaos: serde_json::Value) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("txlab-delay-{}-{name}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            dir.join("cell.json"),
            serde_json::json!({ "chaos": chaos }).to_string(),
        )
        .unwrap();
        dir
    }

    fn delay(ms: u64, loss: Option<f64>) -> serde_json::Value {
        serde_json::json!({"kind": {"kind": "network", "effect": {"action": "shape",
            "delay": {"latency": {"secs": ms / 1000, "nanos": (ms % 1000) * 1_000_000}},
            "loss": loss.map(|l| serde_json::json!({"percent": l})), "duplicate": null}}})
    }

    #[test]
    fn only_plain_delays_count_and_sum() {
        let none = cell_dir("none", serde_json::json!({"name": "none", "faults": []}));
        let two = cell_dir(
            "two",
            serde_json::json!({"faults": [delay(10, None), delay(1500, None)]}),
        );
        let lossy = cell_dir("lossy", serde_json::json!({"faults": [delay(10, Some(1.0))]}));
        let kill = cell_dir(
            "kill",
            serde_json::json!({"faults": [{"kind": {"kind": "pod", "action": "kill"}}]}),
        );
        assert_eq!(injected_ms(&none), Some(0.0));
        assert_eq!(injected_ms(&two), Some(1510.0));
        assert_eq!(injected_ms(&lossy), None);
        assert_eq!(injected_ms(&kill), None);
        assert_eq!(injected_ms(Path::new("/nonexistent")), None);
        for d in [none, two, lossy, kill] {
            std::fs::remove_dir_all(d).unwrap();
        }
    }

    #[test]
    fn a_line_per_method_drawn_once_delays_differ() {
        use crate::report::charts::tests::cell;
        let same = vec![
            (cell("tcc", "none", 20.0, 0), Some(0.0)),
            (cell("tcc", "x", 25.0, 0), Some(0.0)),
        ];
        assert!(lines(&same).is_none(), "one delay only: nothing to draw");
        let cells = vec![
            (cell("tcc", "none", 20.0, 0), Some(0.0)),
            (cell("tcc", "latency-50ms", 120.0, 0), Some(50.0)),
            (cell("tcc", "latency-10ms", 40.0, 0), Some(10.0)),
            (cell("saga_orch", "loss-1pct", 30.0, 0), None),
        ];
        let l = lines(&cells).expect("tcc at three delays");
        assert_eq!(l.len(), 1, "saga_orch has no plain-delay cell");
        assert_eq!(l[0].1.iter().map(|p| p.0).collect::<Vec<_>>(), [0.0, 10.0, 50.0]);
        let path = std::env::temp_dir().join(format!("txlab-delay-{}.png", std::process::id()));
        draw(&l, &path).unwrap();
        let (w, h, _, _) = crate::report::charts::tests::decode(&path);
        assert_eq!((w, h), (WIDTH, HEIGHT));
        let c = method_colour("tcc");
        assert!(
            crate::report::charts::tests::count_rgb(&path, [c.0, c.1, c.2]) > 200,
            "tcc's line drawn"
        );
        std::fs::remove_file(&path).unwrap();
    }
}
