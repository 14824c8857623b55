//! `txlab bench`: the performance benchmarks of docs/performance.md, on the
//! local platform. Per method of the profile (first scenario, its seed data
//! and arrival process): the durable commits a checkout costs, the knee
//! (highest rate sustained), and an overload at twice the knee; once per
//! run, PostgreSQL's own commit ceiling with pgbench. Every cell run is
//! audited and kept in the results directory with `bench.json` and `knee.csv`.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context};
use comfy_table::presets::UTF8_FULL_CONDENSED;
use comfy_table::{ContentArrangement, Table};
use serde::Serialize;
use txlab_api::TxMode;

use crate::bench::{ceiling, commits, knee, overload};
use crate::commands::run::{admin_client, measure_cell, prepare_cell, print_cell_line, EXIT_INTERRUPTED};
use crate::metrics::resources::Use;
use crate::platform::local::{LocalOptions, LocalPlatform};
use crate::platform::Platform;
use crate::results::{CellSummary, RunDir};
use crate::spec::{Cell, Plan, Stage};

/// A part of the benchmark.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, clap::ValueEnum, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Part {
    /// pgbench's commit rate on the lab's PostgreSQL.
    Ceiling,
    /// Durable commits and all transactions per checkout.
    Commits,
    /// The highest rate each method sustains.
    Knee,
    /// Twice the knee, then half of it: goodput and recovery.
    Overload,
}

#[derive(Debug, clap::Args)]
pub struct BenchArgs {
    /// Profile naming the methods, the scenario (its first), seed data,
    /// arrival process and warm-up; its rate and duration are not used.
    #[arg(long, short, default_value = "profiles/bench.yaml")]
    pub profile: PathBuf,
    /// Directory of scenario files [default: scenarios/ beside the profile's folder].
    #[arg(long)]
    pub scenarios: Option<PathBuf>,
    /// Parts to run, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "ceiling,commits,knee,overload")]
    pub parts: Vec<Part>,
    /// Only these methods (comma-separated) instead of the profile's.
    #[arg(long, value_delimiter = ',')]
    pub methods: Option<Vec<TxMode>>,
    /// A rate is sustained only if its decided p99 is within this many ms.
    #[arg(long, default_value_t = 500.0)]
    pub p99_ms: f64,
    /// First rate of the knee search, orders/s.
    #[arg(long, default_value_t = 50.0)]
    pub start_rate: f64,
    /// Highest rate the knee search tries, orders/s.
    #[arg(long, default_value_t = 1600.0)]
    pub max_rate: f64,
    /// Seconds of load per knee step.
    #[arg(long, default_value_t = 10.0)]
    pub step_s: f64,
    /// Seconds of the overload at twice the knee (and of the recovery after it).
    #[arg(long, default_value_t = 30)]
    pub overload_s: u64,
    /// Use this knee (orders/s) for the overload instead of searching.
    #[arg(long)]
    pub knee: Option<f64>,
    /// Seconds pgbench runs at each client count.
    #[arg(long, default_value_t = 10)]
    pub pgbench_s: u32,
    /// Where the run directory is created.
    #[arg(long, default_value = "results", env = "TXLAB_RESULTS")]
    pub results: PathBuf,
}

/// Everything measured about one method.
#[derive(Debug, Clone, Default, Serialize)]
struct MethodFigures {
    method: String,
    commits: Option<CommitFigures>,
    /// pgbench's best rate / durable commits per checkout.
    ceiling: Option<f64>,
    knee: Option<f64>,
    curve: Vec<Step>,
    overload: Option<OverloadFigures>,
}

#[derive(Debug, Clone, Serialize)]
struct CommitFigures {
    orders: u64,
    /// Durable commits per checkout, all types.
    per_checkout: f64,
    /// Per checkout by record type (COMMIT, PREPARE, COMMIT_PREPARED...).
    by_type: BTreeMap<String, f64>,
    /// Every transaction per checkout, read-only included, per database.
    all_per_database: BTreeMap<String, f64>,
    all_per_checkout: f64,
}

/// One rate of the knee search.
#[derive(Debug, Clone, Serialize)]
struct Step {
    offered: f64,
    achieved: f64,
    /// Orders decided as expected per second of load.
    goodput: f64,
    decided_p50_ms: f64,
    decided_p99_ms: f64,
    passed: bool,
    reasons: Vec<String>,
    resources: BTreeMap<String, Use>,
    cell: String,
}

#[derive(Debug, Clone, Serialize)]
struct OverloadFigures {
    knee: f64,
    offered: f64,
    #[serde(flatten)]
    figures: overload::Figures,
    /// Goodput during the overload over the knee's goodput.
    goodput_ratio: f64,
    cell: String,
}

#[derive(Debug, Serialize)]
struct BenchReport {
    p99_bound_ms: f64,
    pgbench: Vec<ceiling::Point>,
    methods: Vec<MethodFigures>,
}

pub async fn execute(args: BenchArgs) -> anyhow::Result<ExitCode> {
    let scenarios = args
        .scenarios
        .clone()
        .unwrap_or_else(|| super::run::default_scenarios_dir(&args.profile));
    let plan = Plan::load(&args.profile, &scenarios)?;
    let methods = args
        .methods
        .clone()
        .unwrap_or_else(|| plan.profile.methods.clone());
    if !(args.start_rate > 0.0 && args.start_rate <= args.max_rate) {
        bail!("--start-rate must be above 0 and at most --max-rate");
    }
    let run = RunDir::create(&args.results, &format!("bench-{}", plan.profile.name))?;
    eprintln!("txlab: bench {} → {}", run.id, run.root.display());
    let opts = LocalOptions {
        log_dir: run.services_log_dir(),
        ..LocalOptions::default()
    };
    let interrupted = tokio::signal::ctrl_c();
    tokio::pin!(interrupted);
    let mut platform = tokio::select! {
        p = LocalPlatform::start(opts) => p?,
        _ = &mut interrupted => return Ok(ExitCode::from(EXIT_INTERRUPTED)),
    };
    let result = tokio::select! {
        r = bench(&mut platform, &plan, &methods, &args, &run) => Some(r),
        _ = &mut interrupted => None,
    };
    eprintln!("txlab: stopping services and infrastructure");
    platform.shutdown().await?;
    let Some(report) = result else {
        eprintln!(
            "txlab: interrupted; cells run so far are in {}",
            run.root.display()
        );
        return Ok(ExitCode::from(EXIT_INTERRUPTED));
    };
    let report = report?;
    run.write_json("bench.json", &report)?;
    std::fs::write(run.root.join("knee.csv"), knee_csv(&report.methods)?)?;
    print_report(&report);
    println!("results: {}", run.root.display());
    Ok(ExitCode::SUCCESS)
}

async fn bench(
    platform: &mut LocalPlatform,
    plan: &Plan,
    methods: &[TxMode],
    args: &BenchArgs,
    run: &RunDir,
) -> anyhow::Result<BenchReport> {
    let server = platform
        .postgres_server()
        .context("the benchmarks need the embedded PostgreSQL")?;
    let mut report = BenchReport {
        p99_bound_ms: args.p99_ms,
        pgbench: Vec::new(),
        methods: Vec::new(),
    };
    if args.parts.contains(&Part::Ceiling) {
        eprintln!(
            "txlab: pgbench -N at 8, 16 and 32 clients, {} s each",
            args.pgbench_s
        );
        report.pgbench =
            ceiling::measure(&server.bin_dir, &server.admin_url, &[8, 16, 32], args.pgbench_s).await?;
    }
    let best_tps = report
        .pgbench
        .iter()
        .map(|p| p.tps)
        .fold(None, |a: Option<f64>, t| Some(a.map_or(t, |a| a.max(t))));
    let mut bench = Bencher {
        platform,
        plan,
        run,
        client: admin_client()?,
        cells: 0,
    };
    for &method in methods {
        let mut m = MethodFigures {
            method: method.to_string(),
            ..Default::default()
        };
        if args.parts.contains(&Part::Commits) {
            let c = bench.commits(method, &server).await?;
            m.ceiling = best_tps.map(|t| t / c.per_checkout);
            m.commits = Some(c);
        }
        if args.parts.contains(&Part::Knee) {
            let search = knee::Search {
                start: args.start_rate,
                max: args.max_rate,
                floor: 5.0,
                resolution: 0.1,
            };
            let (rate, curve) = bench.knee(method, search, args).await?;
            m.knee = rate;
            m.curve = curve;
        }
        if args.parts.contains(&Part::Overload) {
            if let Some(k) = args.knee.or(m.knee) {
                m.overload = Some(bench.overload(method, k, args).await?);
            } else {
                eprintln!("txlab: {method}: no knee to overload (pass --knee or include the knee part)");
            }
        }
        report.methods.push(m);
    }
    Ok(report)
}

/// Runs benchmark cells on the platform, numbering them.
struct Bencher<'a> {
    platform: &'a mut LocalPlatform,
    plan: &'a Plan,
    run: &'a RunDir,
    client: reqwest::Client,
    cells: usize,
}

impl Bencher<'_> {
    fn cell(&self, method: TxMode, name: &str, stages: Vec<Stage>) -> Cell {
        let scenario = self.plan.cells[0].scenario.clone();
        Cell {
            id: format!("{method}-{}-{name}", scenario.name),
            method,
            scenario,
            replicas: 1,
            repetition: 1,
            stages,
        }
    }

    /// Runs one cell, with `between` called after the seeding and after the audit.
    async fn measure(
        &mut self,
        cell: &Cell,
        server: Option<&commits::Server>,
    ) -> anyhow::Result<(CellSummary, crate::load::LoadReport, Option<commits::Counted>)> {
        let endpoints = prepare_cell(self.platform, self.plan, self.run, &self.client, cell).await?;
        let mark = match server {
            Some(s) => Some(s.mark().await?),
            None => None,
        };
        let (summary, load) = measure_cell(
            self.platform,
            self.plan,
            self.run,
            &self.client,
            self.cells,
            cell,
            &endpoints,
        )
        .await?;
        let counted = match (server, mark) {
            (Some(s), Some(m)) => Some(s.since(&m).await?),
            _ => None,
        };
        self.cells += 1;
        print_cell_line(self.cells - 1, self.cells, &summary);
        Ok((summary, load, counted))
    }

    /// Durable commits per checkout over 200 orders at 20/s.
    async fn commits(&mut self, method: TxMode, server: &commits::Server) -> anyhow::Result<CommitFigures> {
        let cell = self.cell(
            method,
            "commits",
            vec![Stage {
                rate: 20.0,
                duration_s: 10.0,
            }],
        );
        let (summary, _, counted) = self.measure(&cell, Some(server)).await?;
        let counted = counted.context("no counters")?;
        let orders = summary.decided.max(1);
        let per = |n: f64| n / orders as f64;
        Ok(CommitFigures {
            orders: summary.decided,
            per_checkout: per(counted.flushed_total() as f64),
            by_type: counted
                .flushed
                .iter()
                .map(|(k, v)| (k.clone(), per(*v as f64)))
                .collect(),
            all_per_database: counted
                .all_per_database
                .iter()
                .map(|(k, v)| (k.clone(), per(*v as f64)))
                .collect(),
            all_per_checkout: per(counted.all_total() as f64),
        })
    }

    async fn knee(
        &mut self,
        method: TxMode,
        search: knee::Search,
        args: &BenchArgs,
    ) -> anyhow::Result<(Option<f64>, Vec<Step>)> {
        let mut seen = knee::Progress::default();
        let mut curve = Vec::new();
        while let Some(rate) = search.next(&seen) {
            let cell = self.cell(
                method,
                &format!("{rate}ps"),
                vec![Stage {
                    rate,
                    duration_s: args.step_s,
                }],
            );
            let (s, load, _) = self.measure(&cell, None).await?;
            let verdict = knee::judge(&s, args.p99_ms);
            seen.record(rate, verdict.passed);
            let expected: u64 = load.completions.iter().sum();
            curve.push(Step {
                offered: rate,
                achieved: s.achieved_rate,
                goodput: expected as f64 / cell.duration_s(),
                decided_p50_ms: s.decided_ms.p50,
                decided_p99_ms: s.decided_ms.p99,
                passed: verdict.passed,
                reasons: verdict.reasons,
                resources: s.resources.clone(),
                cell: cell.id.clone(),
            });
        }
        curve.sort_by(|a, b| a.offered.total_cmp(&b.offered));
        Ok((seen.pass, curve))
    }

    async fn overload(
        &mut self,
        method: TxMode,
        knee: f64,
        args: &BenchArgs,
    ) -> anyhow::Result<OverloadFigures> {
        let secs = args.overload_s as f64;
        let cell = self.cell(
            method,
            "overload",
            vec![
                Stage {
                    rate: 2.0 * knee,
                    duration_s: secs,
                },
                Stage {
                    rate: 0.5 * knee,
                    duration_s: secs,
                },
            ],
        );
        let (_, load, _) = self.measure(&cell, None).await?;
        let figures = overload::figures(&load, args.overload_s, args.p99_ms);
        Ok(OverloadFigures {
            knee,
            offered: 2.0 * knee,
            goodput_ratio: figures.goodput / knee,
            figures,
            cell: cell.id,
        })
    }
}

fn knee_csv(methods: &[MethodFigures]) -> anyhow::Result<Vec<u8>> {
    #[derive(Serialize)]
    struct Row<'a> {
        method: &'a str,
        offered: f64,
        achieved: f64,
        goodput: f64,
        decided_p50_ms: f64,
        decided_p99_ms: f64,
        passed: bool,
        cores_total: f64,
        cell: &'a str,
    }
    let mut w = csv::Writer::from_writer(Vec::new());
    for m in methods {
        for s in &m.curve {
            w.serialize(Row {
                method: &m.method,
                offered: s.offered,
                achieved: s.achieved,
                goodput: s.goodput,
                decided_p50_ms: s.decided_p50_ms,
                decided_p99_ms: s.decided_p99_ms,
                passed: s.passed,
                cores_total: s.resources.values().map(|u| u.cores).sum(),
                cell: &s.cell,
            })?;
        }
    }
    Ok(w.into_inner()?)
}

fn print_report(r: &BenchReport) {
    if !r.pgbench.is_empty() {
        let tps: Vec<String> = r
            .pgbench
            .iter()
            .map(|p| format!("{} clients {:.0}/s", p.clients, p.tps))
            .collect();
        println!("pgbench -N (durable commits/s): {}", tps.join(", "));
    }
    let mut t = Table::new();
    t.load_preset(UTF8_FULL_CONDENSED)
        .set_content_arrangement(ContentArrangement::Dynamic);
    t.set_header(vec![
        "method",
        "commits per\ncheckout",
        "all tx per\ncheckout",
        "ceiling\norders/s",
        "knee\norders/s",
        "knee /\nceiling",
        "p50 / p99 ms\nat the knee",
        "cores at the knee\n(busiest three)",
        "overload 2×: goodput\n/ knee, recovery",
    ]);
    let num = |v: Option<f64>, prec: usize| v.map_or("–".to_string(), |v| format!("{v:.prec$}"));
    for m in &r.methods {
        let at_knee = m.curve.iter().find(|s| Some(s.offered) == m.knee);
        let busiest = at_knee.map_or("–".to_string(), |s| {
            let mut v: Vec<(&String, &Use)> = s.resources.iter().collect();
            v.sort_by(|a, b| b.1.cores.total_cmp(&a.1.cores));
            v.iter()
                .take(3)
                .map(|(n, u)| format!("{n} {:.2}", u.cores))
                .collect::<Vec<_>>()
                .join(", ")
        });
        t.add_row(vec![
            m.method.clone(),
            num(m.commits.as_ref().map(|c| c.per_checkout), 1),
            num(m.commits.as_ref().map(|c| c.all_per_checkout), 1),
            num(m.ceiling, 0),
            num(m.knee, 0),
            num(m.knee.zip(m.ceiling).map(|(k, c)| k / c), 2),
            at_knee.map_or("–".into(), |s| {
                format!("{:.1} / {:.1}", s.decided_p50_ms, s.decided_p99_ms)
            }),
            busiest,
            m.overload.as_ref().map_or("–".into(), |o| {
                format!(
                    "{:.2}, {}",
                    o.goodput_ratio,
                    o.figures
                        .recovery_s
                        .map_or("no recovery".into(), |s| format!("{s} s"))
                )
            }),
        ]);
    }
    println!("{t}");
}
