//! `txlab report <run-dir>`: the summary table, summary.csv, PNG charts
//! (per run, per chaos cell over time, per cell's sampled orders) and an
//! HTML page of a run.

use std::path::PathBuf;

use anyhow::Context;

#[derive(Debug, clap::Args)]
pub struct ReportArgs {
    /// A run directory, e.g. results/20261122-002806-quick; default: the newest under --results.
    pub run: Option<PathBuf>,
    /// Where runs are looked for when no run directory is given.
    #[arg(long, default_value = "results", env = "TXLAB_RESULTS")]
    pub results: PathBuf,
    /// Where reports are written: <reports>/<run-id>/summary.csv and the rest.
    #[arg(long, default_value = "reports")]
    pub reports: PathBuf,
}

/// The newest run directory under `results` (names start with a timestamp).
fn newest_run(results: &std::path::Path) -> anyhow::Result<PathBuf> {
    let mut runs: Vec<PathBuf> = std::fs::read_dir(results)
        .with_context(|| {
            format!(
                "no results directory at {}; run `txlab run` first",
                results.display()
            )
        })?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.join("run.json").is_file())
        .collect();
    runs.sort();
    runs.pop()
        .with_context(|| format!("no runs under {}; run `txlab run` first", results.display()))
}

pub fn execute(args: ReportArgs) -> anyhow::Result<()> {
    let run = match args.run {
        Some(r) => r,
        None => newest_run(&args.results)?,
    };
    let summaries = crate::results::read_summaries(&run)?;
    anyhow::ensure!(!summaries.is_empty(), "{} holds no finished cells", run.display());
    let id = run.file_name().and_then(|n| n.to_str()).unwrap_or("run");
    let out = args.reports.join(id);
    std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    let write = |name: &str, text: String| -> anyhow::Result<PathBuf> {
        let path = out.join(name);
        std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
        Ok(path)
    };
    // One row per cell over its repetitions, and one per repetition.
    let grouped = crate::report::aggregate::by_cell(&run, &summaries)?;
    let rows = crate::report::aggregate::rows(&grouped)?;
    let mut tables = vec![
        write("summary.csv", crate::report::aggregate::csv(&grouped)?)?,
        write("repetitions.csv", crate::report::csv(&summaries)?)?,
        write("percentiles.csv", crate::report::spectra_csv(&run, &summaries)?)?,
        write("summary.md", crate::report::aggregate::markdown(id, &rows))?,
    ];
    let mut charts = crate::report::charts::write_all(&summaries, &out)?;
    let panels = crate::report::replicas::panels(&rows);
    if !panels.is_empty() {
        let path = out.join("replicas.png");
        crate::report::replicas::draw(&panels, &path)
            .with_context(|| format!("writing {}", path.display()))?;
        charts.push(path);
    }
    // Over time, for the cells that ran under chaos.
    for s in summaries.iter().filter(|s| !s.chaos_windows.is_empty()) {
        let series = crate::results::read_timeseries(&run.join("cells").join(&s.cell))?;
        let path = out.join(format!("timeline-{}.png", s.cell));
        crate::report::charts::timeline(s, &series, &path)
            .with_context(|| format!("writing {}", path.display()))?;
        charts.push(path);
    }
    // Latency against injected delay, when cells differ by one.
    let with_delay: Vec<_> = summaries
        .iter()
        .map(|s| {
            (
                s.clone(),
                crate::report::delay::injected_ms(&run.join("cells").join(&s.cell)),
            )
        })
        .collect();
    if let Some(lines) = crate::report::delay::lines(&with_delay) {
        let path = out.join("delay.png");
        crate::report::delay::draw(&lines, &path).with_context(|| format!("writing {}", path.display()))?;
        charts.push(path);
    }
    // A bench run's knee curves.
    if let Some(bench) = crate::report::knee::read(&run)? {
        let path = out.join("knee.png");
        crate::report::knee::draw(&bench, &path).with_context(|| format!("writing {}", path.display()))?;
        charts.push(path);
    }
    // A few orders of each cell, step by step (cells run before the
    // order service kept its records' times have none).
    for s in &summaries {
        let sampled = crate::results::workflows::read(&run.join("cells").join(&s.cell))?;
        if sampled.is_empty() {
            continue;
        }
        let path = out.join(format!("orders-{}.png", s.cell));
        crate::report::orders::draw(&s.cell, &s.method, &sampled, &path)
            .with_context(|| format!("writing {}", path.display()))?;
        charts.push(path);
    }
    let names: Vec<String> = charts
        .iter()
        .filter_map(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        .collect();
    let manifest: serde_json::Value = std::fs::read_to_string(run.join("run.json"))
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or(serde_json::Value::Null);
    tables.push(write(
        "index.html",
        crate::report::html::page(id, &manifest, &summaries, &names),
    )?);
    println!("{}", crate::report::table(&summaries));
    println!(
        "wrote {} and the charts {} in {}",
        tables
            .iter()
            .filter_map(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
            .collect::<Vec<_>>()
            .join(", "),
        names.join(", "),
        out.display()
    );
    Ok(())
}
