//! `txlab compare <baseline> <current>`: what changed between two runs,
//! written as CSV and Markdown; exit code 5 on a regression.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;

use crate::compare::{self, Options, Verdict};
use crate::results::read_summaries;

/// Exit code when the current run regressed against the baseline.
pub const EXIT_REGRESSION: u8 = 5;

#[derive(Debug, clap::Args)]
pub struct CompareArgs {
    /// The baseline run directory (results/<run-id>).
    pub baseline: PathBuf,
    /// The run to judge against it.
    pub current: PathBuf,
    /// Relative change below which nothing is flagged (0.10 = 10%).
    #[arg(long, default_value_t = 0.10)]
    pub noise: f64,
    /// Significance level of the rank test over the repetitions.
    #[arg(long, default_value_t = 0.05)]
    pub alpha: f64,
    /// Where comparison.csv and comparison.md go
    /// (default: reports/compare-<baseline-id>-vs-<current-id>).
    #[arg(long)]
    pub out: Option<PathBuf>,
}

fn run_id(run: &Path) -> String {
    run.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| run.display().to_string())
}

pub fn execute(args: CompareArgs) -> anyhow::Result<ExitCode> {
    anyhow::ensure!(
        (0.0..1.0).contains(&args.noise),
        "--noise: a fraction between 0 and 1, e.g. 0.10 for 10%"
    );
    anyhow::ensure!(
        args.alpha > 0.0 && args.alpha < 1.0,
        "--alpha: a probability between 0 and 1, e.g. 0.05"
    );
    let baseline = read_summaries(&args.baseline)?;
    let current = read_summaries(&args.current)?;
    let options = Options {
        noise: args.noise,
        alpha: args.alpha,
    };
    let c = compare::compare(&baseline, &current, options);
    anyhow::ensure!(
        !c.rows.is_empty(),
        "{} and {} have no cell in common (method, scenario, chaos, replicas and rate must match)",
        args.baseline.display(),
        args.current.display()
    );
    let (base_id, cur_id) = (run_id(&args.baseline), run_id(&args.current));
    let out = args
        .out
        .unwrap_or_else(|| PathBuf::from("reports").join(format!("compare-{base_id}-vs-{cur_id}")));
    std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    let md = compare::markdown(&c, &base_id, &cur_id);
    std::fs::write(out.join("comparison.md"), &md)?;
    std::fs::write(out.join("comparison.csv"), compare::csv(&c)?)?;
    print!("{md}");
    println!("\nwritten: {}", out.display());
    let regressed = !c.regressions().is_empty();
    if c.rows.iter().any(|r| r.verdict == Verdict::TooFewRepetitions) {
        eprintln!(
            "txlab: some changes could not be tested: with n repetitions per side the rank test's smallest p is 2/C(2n, n) (n = 4 gives 0.029); set repetitions in the profile"
        );
    }
    Ok(if regressed {
        ExitCode::from(EXIT_REGRESSION)
    } else {
        ExitCode::SUCCESS
    })
}
