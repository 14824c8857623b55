//! PNG charts of a run, one bar (or stack) per cell, so a reader sees at a
//! glance which method is fastest, which lost data, and what each cost.
//! Every method keeps one colour in every chart.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use anyhow::{anyhow, Context};
use plotters::coord::ranged1d::SegmentValue;
use plotters::prelude::*;

use crate::load::SecondStats;
use crate::results::CellSummary;

/// Where a font is looked for, after `TXLAB_FONT`.
const FONT_PATHS: &[&str] = &[
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
    "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
];

pub(super) const FONT: &str = "sans-serif";
pub(super) const WIDTH: u32 = 1200;
const ROW: u32 = 26;

/// Registers a TrueType font with plotters once (it draws no text without).
fn font() -> anyhow::Result<()> {
    static LOADED: OnceLock<Result<(), String>> = OnceLock::new();
    LOADED
        .get_or_init(|| {
            let candidates: Vec<PathBuf> = std::env::var_os("TXLAB_FONT")
                .map(PathBuf::from)
                .into_iter()
                .chain(FONT_PATHS.iter().map(PathBuf::from))
                .collect();
            let path = candidates.iter().find(|p| p.is_file()).ok_or_else(|| {
                "no TrueType font for the charts: install Debian's fonts-dejavu-core or set TXLAB_FONT to a .ttf file"
                    .to_string()
            })?;
            let bytes = std::fs::read(path).map_err(|e| format!("reading {}: {e}", path.display()))?;
            // plotters keeps fonts for the life of the process.
            let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
            plotters::style::register_font(FONT, FontStyle::Normal, bytes)
                .map_err(|_| format!("{} is not a font plotters can read", path.display()))
        })
        .clone()
        .map_err(|e| anyhow!(e))
}

/// The colour of a method, the same in every chart.
pub fn method_colour(method: &str) -> RGBColor {
    match method {
        "saga_orch" => RGBColor(31, 119, 180),
        "tcc" => RGBColor(255, 127, 14),
        "twopc" => RGBColor(44, 160, 44),
        "saga_chor" => RGBColor(214, 39, 40),
        "outbox" => RGBColor(148, 103, 189),
        _ => RGBColor(127, 127, 127),
    }
}

/// A cell's row label: method, scenario, chaos and repetition when they vary.
fn label(s: &CellSummary) -> String {
    let mut l = format!("{} · {}", s.method, s.scenario);
    if s.chaos != crate::spec::NO_CHAOS {
        l += &format!(" [{}]", s.chaos);
    }
    if s.repetition > 1 {
        l += &format!(" #{}", s.repetition);
    }
    l
}

fn height(cells: usize) -> u32 {
    170 + ROW * cells.max(1) as u32
}

/// The title and, under it, a row of coloured swatches with their names
/// (so no reader has to guess which colour is what); returns the area
/// left for the chart.
pub(super) fn header<'a>(
    root: &Area<'a>,
    title: &str,
    items: &[(String, RGBColor)],
) -> anyhow::Result<Area<'a>> {
    let (top, body) = root.split_vertically(76);
    top.draw(&Text::new(title.to_string(), (350, 12), (FONT, 22)))
        .map_err(drawing_error)?;
    let mut x = 350;
    for (name, colour) in items {
        top.draw(&Rectangle::new([(x, 48), (x + 14, 62)], colour.filled()))
            .map_err(drawing_error)?;
        top.draw(&Text::new(name.clone(), (x + 19, 48), (FONT, 14)))
            .map_err(drawing_error)?;
        x += 34 + 8 * name.chars().count() as i32;
    }
    Ok(body)
}

/// Each method of `cells` with its colour, in order of appearance.
fn method_legend(cells: &[CellSummary]) -> Vec<(String, RGBColor)> {
    let mut seen: Vec<(String, RGBColor)> = Vec::new();
    for s in cells {
        if !seen.iter().any(|(m, _)| *m == s.method) {
            seen.push((s.method.clone(), method_colour(&s.method)));
        }
    }
    seen
}

pub(super) fn drawing_error<E: std::fmt::Debug>(e: E) -> anyhow::Error {
    anyhow!("drawing a chart: {e:?}")
}

pub(super) type Area<'a> = DrawingArea<BitMapBackend<'a>, plotters::coord::Shift>;

/// A white PNG canvas at `path` of `size` pixels, the font loaded.
pub(super) fn canvas(path: &Path, size: (u32, u32)) -> anyhow::Result<Area<'_>> {
    font()?;
    let root = BitMapBackend::new(path, size).into_drawing_area();
    root.fill(&WHITE).map_err(drawing_error)?;
    Ok(root)
}

/// A horizontal bar chart with one row per cell; `draw` adds the bars.
fn rows_chart(
    root: &Area<'_>,
    cells: &[CellSummary],
    x_desc: &str,
    x_max: f64,
    log_x: bool,
    draw: impl FnOnce(
        &mut dyn FnMut(Vec<Rectangle<(f64, SegmentValue<usize>)>>) -> anyhow::Result<()>,
    ) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    // Row 0 is drawn at the bottom: label rows so the first cell is on top.
    let labels: Vec<String> = cells.iter().rev().map(label).collect();
    let y = (0..cells.len()).into_segmented();
    let mut builder = ChartBuilder::on(root);
    builder.margin(12).x_label_area_size(44).y_label_area_size(330);
    let y_fmt = |v: &SegmentValue<usize>| match v {
        SegmentValue::CenterOf(i) => labels.get(*i).cloned().unwrap_or_default(),
        _ => String::new(),
    };
    // The two x axes are different types; the rest of the chart is the same.
    macro_rules! with_x {
        ($x:expr) => {{
            let mut chart = builder.build_cartesian_2d($x, y).map_err(drawing_error)?;
            chart
                .configure_mesh()
                .x_desc(x_desc)
                .y_labels(cells.len())
                .y_label_formatter(&y_fmt)
                .label_style((FONT, 13))
                .draw()
                .map_err(drawing_error)?;
            draw(&mut |bars| chart.draw_series(bars).map(|_| ()).map_err(drawing_error))
        }};
    }
    if log_x {
        with_x!((0.5f64..x_max.max(1.0) * 1.5).log_scale())
    } else {
        with_x!(0f64..x_max.max(1e-9) * 1.1)
    }
}

/// The bar of cell `i` of `n` (the first cell on top).
fn bar(i: usize, n: usize, from: f64, to: f64, style: ShapeStyle) -> Rectangle<(f64, SegmentValue<usize>)> {
    let i = n - 1 - i;
    // A gap above and below each bar, by drawing it inside its own row.
    let mut r = Rectangle::new(
        [(from, SegmentValue::Exact(i)), (to, SegmentValue::Exact(i + 1))],
        style,
    );
    r.set_margin(3, 3, 0, 0);
    r
}

/// Decided latency per cell: p50 solid, p99 light behind it (log scale).
pub fn latency(cells: &[CellSummary], path: &Path) -> anyhow::Result<()> {
    let root = canvas(path, (WIDTH, height(cells.len())))?;
    let body = header(
        &root,
        "Decided latency per cell: p50 (solid) and p99 (light)",
        &method_legend(cells),
    )?;
    let max = cells.iter().map(|s| s.decided_ms.p99).fold(1.0, f64::max);
    rows_chart(
        &body,
        cells,
        "decided latency, ms (log scale; censored orders count at the follow limit)",
        max,
        true,
        |draw| {
            let mut bars = Vec::new();
            for (i, s) in cells.iter().enumerate() {
                let c = method_colour(&s.method);
                bars.push(bar(
                    i,
                    cells.len(),
                    0.5,
                    s.decided_ms.p99.max(0.5),
                    c.mix(0.35).filled(),
                ));
                bars.push(bar(i, cells.len(), 0.5, s.decided_ms.p50.max(0.5), c.filled()));
            }
            draw(bars)
        },
    )?;
    root.present().map_err(drawing_error)
}

/// Outcomes per cell as stacked counts; audit violations in red after the bar.
pub fn outcomes(cells: &[CellSummary], path: &Path) -> anyhow::Result<()> {
    let root = canvas(path, (WIDTH, height(cells.len())))?;
    let parts: [(&str, RGBColor); 5] = [
        ("confirmed", RGBColor(44, 160, 44)),
        ("rejected", RGBColor(255, 127, 14)),
        ("cancelled", RGBColor(31, 119, 180)),
        ("needs_attention", RGBColor(188, 189, 34)),
        ("failed", RGBColor(127, 127, 127)),
    ];
    let count = |s: &CellSummary, part: &str| -> f64 {
        match part {
            "failed" => (s.errors + s.undecided + s.dropped) as f64,
            other => s.outcomes.get(other).copied().unwrap_or(0) as f64,
        }
    };
    let max = cells
        .iter()
        .map(|s| parts.iter().map(|(p, _)| count(s, p)).sum::<f64>())
        .fold(1.0, f64::max);
    let mut items: Vec<(String, RGBColor)> = parts.iter().map(|(p, c)| (p.to_string(), *c)).collect();
    items.push(("audit violations".into(), RED));
    let body = header(
        &root,
        "Outcomes per cell (failed: errors, undecided or dropped)",
        &items,
    )?;
    rows_chart(&body, cells, "orders", max * 1.25, false, |draw| {
        let mut bars = Vec::new();
        for (i, s) in cells.iter().enumerate() {
            let mut at = 0.0;
            for (part, colour) in &parts {
                let n = count(s, part);
                if n > 0.0 {
                    bars.push(bar(i, cells.len(), at, at + n, colour.filled()));
                    at += n;
                }
            }
            // A red block after the stack, as long as the violations.
            if s.violations > 0 {
                let width = (max * 0.02).max(s.violations as f64);
                bars.push(bar(i, cells.len(), at, at + width, RED.filled()));
            }
        }
        draw(bars)
    })?;
    root.present().map_err(drawing_error)
}

/// A bar per cell stacked from its named parts (components or links),
/// each part one colour in every row.
fn stacked(
    cells: &[CellSummary],
    path: &Path,
    title: &str,
    x_desc: &str,
    parts: impl Fn(&CellSummary) -> Vec<(String, f64)>,
) -> anyhow::Result<()> {
    let root = canvas(path, (WIDTH, height(cells.len())))?;
    let per_cell: Vec<Vec<(String, f64)>> = cells.iter().map(&parts).collect();
    let mut names: Vec<&String> = per_cell.iter().flatten().map(|(n, _)| n).collect();
    names.sort();
    names.dedup();
    let palette = |k: usize| {
        let c = Palette99::pick(k).to_rgba();
        RGBColor(c.0, c.1, c.2)
    };
    let items: Vec<(String, RGBColor)> = names
        .iter()
        .enumerate()
        .map(|(k, n)| (n.to_string(), palette(k)))
        .collect();
    let body = header(&root, title, &items)?;
    let max = per_cell
        .iter()
        .map(|p| p.iter().map(|(_, v)| v).sum::<f64>())
        .fold(0.01, f64::max);
    rows_chart(&body, cells, x_desc, max, false, |draw| {
        let mut bars = Vec::new();
        for (i, p) in per_cell.iter().enumerate() {
            let mut at = 0.0;
            for (k, name) in names.iter().enumerate() {
                if let Some((_, v)) = p.iter().find(|(n, v)| n == *name && *v > 0.0) {
                    bars.push(bar(i, cells.len(), at, at + v, palette(k).filled()));
                    at += v;
                }
            }
        }
        draw(bars)
    })?;
    root.present().map_err(drawing_error)
}

/// CPU per component per cell (cores busy on average during the load).
pub fn cpu(cells: &[CellSummary], path: &Path) -> anyhow::Result<()> {
    stacked(
        cells,
        path,
        "CPU per cell, stacked by component",
        "cores busy on average during the load (CPU seconds per second)",
        |s| s.resources.iter().map(|(c, u)| (c.clone(), u.cores)).collect(),
    )
}

/// Resident memory per component per cell, PostgreSQL left out: its RSS
/// counts the shared buffers once per backend and would hide the rest.
pub fn memory(cells: &[CellSummary], path: &Path) -> anyhow::Result<()> {
    stacked(
        cells,
        path,
        "Memory per cell, stacked by component (PostgreSQL left out)",
        "resident memory at the end of the load, MiB",
        |s| {
            s.resources
                .iter()
                .filter(|(c, _)| c.as_str() != "postgres")
                .map(|(c, u)| (c.clone(), u.rss_mib))
                .collect()
        },
    )
}

/// Bytes per link per cell, where the lab's proxy saw them.
pub fn network(cells: &[CellSummary], path: &Path) -> anyhow::Result<()> {
    stacked(
        cells,
        path,
        "Network per cell, stacked by link (proxied cells only)",
        "MiB sent from sender to receiver during the cell",
        |s| {
            s.network
                .iter()
                .map(|(link, bytes)| (link.clone(), *bytes as f64 / (1024.0 * 1024.0)))
                .collect()
        },
    )
}

/// `c` blended towards white, `amount` of the way.
pub(super) fn lighter(c: RGBColor, amount: f64) -> RGBColor {
    let mix = |v: u8| (v as f64 + (255.0 - v as f64) * amount).round() as u8;
    RGBColor(mix(c.0), mix(c.1), mix(c.2))
}

pub const TIMELINE_HEIGHT: u32 = 440;
const CHAOS_SHADE: RGBColor = RGBColor(255, 205, 205);

/// One cell over time: decided p50 and p99 of the orders due in each
/// second, with the time each fault of its chaos was on shaded and named.
pub fn timeline(cell: &CellSummary, series: &[SecondStats], path: &Path) -> anyhow::Result<()> {
    let root = canvas(path, (WIDTH, TIMELINE_HEIGHT))?;
    let colour = method_colour(&cell.method);
    let items = [
        ("p50".to_string(), colour),
        ("p99".to_string(), lighter(colour, 0.55)),
        ("chaos on".to_string(), CHAOS_SHADE),
    ];
    let body = header(
        &root,
        &format!("{}: decided latency per second", label(cell)),
        &items,
    )?;
    let x_max = series
        .iter()
        .map(|s| s.second as f64 + 1.0)
        .chain(cell.chaos_windows.iter().map(|w| w.until_s))
        .fold(1.0, f64::max);
    let y_max = series.iter().map(|s| s.decided_p99_ms).fold(1.0, f64::max) * 1.1;
    let mut chart = ChartBuilder::on(&body)
        .margin(12)
        .x_label_area_size(44)
        .y_label_area_size(80)
        .build_cartesian_2d(0f64..x_max, 0f64..y_max)
        .map_err(drawing_error)?;
    chart
        .configure_mesh()
        .x_desc("second of the load (orders by their intended send time)")
        .y_desc("decided latency, ms")
        .label_style((FONT, 13))
        .draw()
        .map_err(drawing_error)?;
    for w in &cell.chaos_windows {
        // A kill is short: keep its band visible.
        let until = w.until_s.max(w.from_s + x_max / 200.0);
        chart
            .draw_series([Rectangle::new(
                [(w.from_s, 0.0), (until, y_max)],
                CHAOS_SHADE.filled(),
            )])
            .map_err(drawing_error)?;
        chart
            .draw_series([Text::new(w.name.clone(), (w.from_s, y_max * 0.97), (FONT, 13))])
            .map_err(drawing_error)?;
    }
    let points = |f: fn(&SecondStats) -> f64| -> Vec<(f64, f64)> {
        series
            .iter()
            .filter(|s| s.decided > 0)
            .map(|s| (s.second as f64 + 0.5, f(s)))
            .collect()
    };
    chart
        .draw_series(LineSeries::new(
            points(|s| s.decided_p99_ms),
            lighter(colour, 0.55).stroke_width(2),
        ))
        .map_err(drawing_error)?;
    chart
        .draw_series(LineSeries::new(
            points(|s| s.decided_p50_ms),
            colour.stroke_width(2),
        ))
        .map_err(drawing_error)?;
    root.present().map_err(drawing_error)
}

/// Writes every chart of a run into `dir`; returns their paths.
pub fn write_all(cells: &[CellSummary], dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    type Draw = fn(&[CellSummary], &Path) -> anyhow::Result<()>;
    let mut charts: Vec<(&str, Draw)> = vec![
        ("latency.png", latency),
        ("outcomes.png", outcomes),
        ("cpu.png", cpu),
        ("memory.png", memory),
    ];
    if cells.iter().any(|s| !s.network.is_empty()) {
        charts.push(("network.png", network));
    }
    charts
        .iter()
        .map(|(name, draw)| {
            let path = dir.join(name);
            draw(cells, &path).with_context(|| format!("writing {}", path.display()))?;
            Ok(path)
        })
        .collect()
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::metrics::resources::Use;
    use crate::results::Percentiles;

    pub(crate) fn cell(method: &str, chaos: &str, p50: f64, violations: usize) -> CellSummary {
        let mut s: CellSummary = serde_json::from_value(serde_json::json!({
            "index": 0, "cell": "c", "method": method, "scenario": "happy-path", "replicas": 1, "repetition": 1,
            "expect": "confirmed", "target_rate": 20.0, "achieved_rate": 20.0, "scheduled": 100, "sent": 100,
            "accepted": 100, "decided": 98, "late": 0, "dropped": 0, "errors": 2, "undecided": 0, "unexpected": 0,
            "outcomes": {"confirmed": 90, "rejected": 8}, "error_kinds": {}, "unexpected_examples": [],
            "accepted_ms": Percentiles::default(), "decided_ms": Percentiles::default(),
            "quiesce_ms": 5, "settled": true, "violations": violations, "violations_by_invariant": {},
            "notification_lag_p50_ms": null, "notification_lag_max_ms": null
        }))
        .unwrap();
        s.chaos = chaos.into();
        s.decided_ms.p50 = p50;
        s.decided_ms.p99 = p50 * 3.0;
        for (component, cores) in [("order", 0.2), ("postgres", 0.4), ("driver", 0.05)] {
            s.resources.insert(
                component.into(),
                Use {
                    cpu_s: cores * 5.0,
                    cores,
                    rss_mib: 10.0,
                },
            );
        }
        s
    }

    /// A PNG's width, height and pixels (each a slice of its samples).
    pub(crate) fn decode(path: &Path) -> (u32, u32, usize, Vec<u8>) {
        let mut reader = png::Decoder::new(std::fs::File::open(path).unwrap())
            .read_info()
            .unwrap();
        let mut buf = vec![0; reader.output_buffer_size()];
        let info = reader.next_frame(&mut buf).unwrap();
        buf.truncate(info.buffer_size());
        (info.width, info.height, info.color_type.samples(), buf)
    }

    pub(crate) fn count_rgb(path: &Path, rgb: [u8; 3]) -> usize {
        let (_, _, n, buf) = decode(path);
        buf.chunks(n).filter(|p| p[..3] == rgb).count()
    }

    #[test]
    fn every_chart_is_a_png_of_the_expected_size_with_the_cells_drawn() {
        let cells = vec![
            cell("saga_orch", "none", 15.0, 0),
            cell("twopc", "latency-10ms", 60.0, 0),
            cell("outbox", "none", 45.0, 3),
        ];
        let dir = std::env::temp_dir().join(format!("txlab-charts-{}", std::process::id()));
        let names = |paths: Vec<PathBuf>| -> Vec<String> {
            paths
                .iter()
                .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
                .collect()
        };
        assert_eq!(
            names(write_all(&cells, &dir).unwrap()),
            ["latency.png", "outcomes.png", "cpu.png", "memory.png"],
            "no network chart without proxied traffic"
        );
        let mut cells = cells;
        cells[1].network = [("order→payment".to_string(), 3 << 20)].into();
        let paths = write_all(&cells, &dir).unwrap();
        assert_eq!(names(paths.clone()).last().unwrap(), "network.png");
        for p in &paths {
            let (w, h, n, buf) = decode(p);
            assert_eq!((w, h), (WIDTH, height(cells.len())), "{}", p.display());
            let mut colours: Vec<&[u8]> = buf.chunks(n).collect();
            colours.sort();
            colours.dedup();
            // White, black text and grid, and the bars' colours at least.
            assert!(colours.len() > 8, "{}: {} colours", p.display(), colours.len());
        }
        // Each method's colour is in the latency chart, as drawn for its bar.
        for method in ["saga_orch", "twopc", "outbox"] {
            let c = method_colour(method);
            assert!(
                count_rgb(&dir.join("latency.png"), [c.0, c.1, c.2]) > 100,
                "{method}'s bar drawn"
            );
        }
        // Violations show as a red bar in the outcomes chart, only when there are some.
        let red_in = |cells: &[CellSummary]| {
            let path = dir.join("o.png");
            outcomes(cells, &path).unwrap();
            count_rgb(&path, [255, 0, 0])
        };
        let (clean, broken) = (red_in(&cells[..2]), red_in(&cells));
        assert!(
            broken > clean + 100,
            "red bar for 3 violations: {clean} → {broken} red pixels"
        );

        // A timeline shades its chaos windows, and only those.
        let series: Vec<SecondStats> = (0..8)
            .map(|second| SecondStats {
                second,
                sent: 20,
                accepted: 20,
                decided: 20,
                errors: 0,
                decided_p50_ms: if (2..5).contains(&second) { 500.0 } else { 20.0 },
                decided_p99_ms: if (2..5).contains(&second) { 900.0 } else { 40.0 },
            })
            .collect();
        let shaded = |windows: Vec<crate::results::ChaosWindow>| {
            let mut c = cells[1].clone();
            c.chaos_windows = windows;
            let path = dir.join("t.png");
            timeline(&c, &series, &path).unwrap();
            let (w, h, _, _) = decode(&path);
            assert_eq!((w, h), (WIDTH, TIMELINE_HEIGHT));
            count_rgb(&path, [CHAOS_SHADE.0, CHAOS_SHADE.1, CHAOS_SHADE.2])
        };
        let window = crate::results::ChaosWindow {
            name: "latency-10ms".into(),
            from_s: 2.0,
            until_s: 5.0,
        };
        let (legend_only, with_window) = (shaded(vec![]), shaded(vec![window]));
        assert!(
            with_window > legend_only + 10_000,
            "3 of 8 seconds shaded: {legend_only} → {with_window} pixels"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
