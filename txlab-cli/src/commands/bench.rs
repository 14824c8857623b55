//! `txlab bench`: the performance benchmarks of docs/performance.md, on the
//! local platform. Per method of the profile (first scenario, its seed data
//! and arrival process): the durable commits a checkout costs, the knee
//! (highest rate sustained), and an overload at twice the knee; once per
//! run, PostgreSQL's own commit ceiling with pgbench. Every cell run is
//! audited and kept in the results directory with `bench.json` and `knee.csv`.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use comfy_table::Table;
use serde::Serialize;
use txlab_api::{Role, TxMode};

use crate::bench::driver;
use crate::bench::{ceiling, commits, hops, knee, overload};
use crate::commands::run::{admin_client, measure_cell, prepare_cell, print_cell_line, EXIT_INTERRUPTED};
use crate::load::{drive, driver::first_request, driver::Target};
use crate::metrics::resources::{self, Use};
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
    /// The order service frozen for 2 s under load: the stall must show
    /// in the latency measured from intended send times.
    Stall,
    /// The driver against a stub endpoint, next to wrk.
    Driver,
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
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "ceiling,commits,knee,overload,stall,driver"
    )]
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
    /// Offered rate during the stall test, orders/s.
    #[arg(long, default_value_t = 100.0)]
    pub stall_rate: f64,
    /// Rate at which commits per checkout are counted (over 400 orders).
    #[arg(long, default_value_t = 100.0)]
    pub commits_rate: f64,
    /// Run the driver part at this one arrival rate instead of searching
    /// for the highest it keeps: CPU per request at a fixed rate is what
    /// compares two builds of the driver on a machine whose speed varies.
    #[arg(long)]
    pub driver_rate: Option<f64>,
    /// Seconds pgbench runs at each client count.
    #[arg(long, default_value_t = 10)]
    pub pgbench_s: u32,
    /// Processes per service (1 to 3; more than one runs every link
    /// through the proxy, which balances them).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=txlab_api::event::TOPIC_PARTITIONS as i64))]
    pub replicas: u32,
    /// Route every link through txlab's proxy even with one replica (to
    /// compare with several on equal terms).
    #[arg(long)]
    pub proxy: bool,
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
    /// Event-driven methods: each hop's share of the commits cell's
    /// checkouts (after its warm-up).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    hops: Vec<hops::Stage>,
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
    /// Statements (round trips to the database) per checkout, per database
    /// and in all; left out where PostgreSQL lacks pg_stat_statements.
    statements_per_database: BTreeMap<String, f64>,
    statements_per_checkout: Option<f64>,
    /// The statements run most often, per checkout: where the round trips
    /// go, and the server's execution time for each.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    top_statements: Vec<StatementFigures>,
}

/// One statement's share of a checkout.
#[derive(Debug, Clone, Serialize)]
struct StatementFigures {
    database: String,
    /// pg_stat_statements' normalised text, on one line.
    statement: String,
    calls_per_checkout: f64,
    exec_ms_per_checkout: f64,
}

/// How many statements bench.json keeps per method, and the terminal shows.
const TOP_STATEMENTS_KEPT: usize = 30;
const TOP_STATEMENTS_SHOWN: usize = 12;

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
    /// CPU of every component together, per order sent.
    cpu_ms_per_checkout: f64,
    resources: BTreeMap<String, Use>,
    /// Share of the machine's CPU time stolen by the hypervisor while the
    /// step ran, %: over the step and in its worst second (a failed step
    /// with a burst is run again).
    steal_pct: Option<f64>,
    steal_peak_pct: Option<f64>,
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

#[derive(Debug, Clone, Serialize)]
struct StallFigures {
    method: String,
    offered: f64,
    pause_ms: u64,
    decided_p50_ms: f64,
    decided_p99_ms: f64,
    decided_max_ms: f64,
    /// Decided p99 of the arrivals due in each second of the load.
    p99_by_second_ms: Vec<f64>,
    cell: String,
}

/// Seconds from nothing to a lab that answers.
#[derive(Debug, Clone, Default, Serialize)]
struct Startup {
    /// PostgreSQL and tansu started, databases created.
    infrastructure_s: f64,
    /// The five services of the first method started and healthy.
    services_s: f64,
}

#[derive(Debug, Default, Serialize)]
struct BenchReport {
    p99_bound_ms: f64,
    /// Processes per service.
    replicas: u32,
    startup: Option<Startup>,
    pgbench: Vec<ceiling::Point>,
    methods: Vec<MethodFigures>,
    stall: Option<StallFigures>,
    driver: Option<driver::Figures>,
}

/// The stall test's freeze: this service, this long, this far into the load.
const STALL: (Role, Duration, Duration) = (Role::Order, Duration::from_secs(2), Duration::from_secs(4));

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
    if !(args.commits_rate > 0.0
        && args.stall_rate > 0.0
        && args.p99_ms > 0.0
        && args.step_s > 0.0
        && args.overload_s > 0)
    {
        bail!("--commits-rate, --stall-rate, --p99-ms, --step-s and --overload-s must be above 0");
    }
    if args
        .driver_rate
        .is_some_and(|r| !(1.0..=1_000_000.0).contains(&r))
    {
        bail!("--driver-rate must be between 1 and 1000000 arrivals/s");
    }
    if args.parts.contains(&Part::Driver) && crate::platform::local::on_path("wrk").is_none() {
        bail!(
            "the driver part compares txlab's driver with wrk, which is not on PATH: \
             install it (Debian package `wrk`) or leave `driver` out of --parts"
        );
    }
    let run = RunDir::create(&args.results, &format!("bench-{}", plan.profile.name))?;
    eprintln!("txlab: bench {} → {}", run.id, run.root.display());
    let mut report = BenchReport {
        p99_bound_ms: args.p99_ms,
        replicas: args.replicas,
        ..BenchReport::default()
    };
    let interrupted = tokio::signal::ctrl_c();
    tokio::pin!(interrupted);
    let finished = tokio::select! {
        r = bench(&plan, &methods, &args, &run, &mut report) => Some(r),
        _ = &mut interrupted => None,
    };
    // Whatever was measured is kept, even after an error or Ctrl-C.
    run.write_json("bench.json", &report)?;
    std::fs::write(run.root.join("knee.csv"), knee_csv(&report.methods)?)?;
    print_report(&report);
    println!("results: {}", run.root.display());
    match finished {
        None => {
            eprintln!(
                "txlab: interrupted; what was measured so far is in {}",
                run.root.display()
            );
            Ok(ExitCode::from(EXIT_INTERRUPTED))
        }
        Some(r) => r.map(|()| ExitCode::SUCCESS),
    }
}

/// Runs the parts: the driver's without the lab, the others on one local platform.
async fn bench(
    plan: &Plan,
    methods: &[TxMode],
    args: &BenchArgs,
    run: &RunDir,
    report: &mut BenchReport,
) -> anyhow::Result<()> {
    if args.parts.contains(&Part::Driver) {
        report.driver = Some(driver_bench(plan, run, args.driver_rate).await?);
    }
    if args.parts.iter().all(|p| *p == Part::Driver) {
        return Ok(());
    }
    let began = Instant::now();
    let opts = LocalOptions {
        log_dir: run.services_log_dir(),
        proxy: args.proxy || args.replicas > 1,
        ..LocalOptions::default()
    };
    let mut platform = LocalPlatform::start(opts).await?;
    let infrastructure_s = began.elapsed().as_secs_f64();
    let deployed = Instant::now();
    let result = match platform.deploy(methods[0], args.replicas).await {
        Ok(_) => {
            report.startup = Some(Startup {
                infrastructure_s,
                services_s: deployed.elapsed().as_secs_f64(),
            });
            on_platform(&mut platform, plan, methods, args, run, report).await
        }
        Err(e) => Err(e),
    };
    eprintln!("txlab: stopping services and infrastructure");
    platform.shutdown().await?;
    result
}

/// The driver's knee against the stub, and wrk's rate on the same stub.
async fn driver_bench(plan: &Plan, run: &RunDir, fixed_rate: Option<f64>) -> anyhow::Result<driver::Figures> {
    let stub = driver::Stub::start().await?;
    let result = driver_against(&stub, plan, run, fixed_rate).await;
    stub.stop().await;
    result
}

/// The highest arrival rate the driver's search tries: well above what
/// it reached on any machine here (40,000 arrivals/s passed on a fast
/// hour when this was the cap), so that the figure is the driver's limit,
/// not the search's.
const DRIVER_MAX_RATE: f64 = 200_000.0;

async fn driver_against(
    stub: &driver::Stub,
    plan: &Plan,
    run: &RunDir,
    fixed_rate: Option<f64>,
) -> anyhow::Result<driver::Figures> {
    const WRK_CONNECTIONS: u32 = 64;
    const WRK_S: u32 = 10;
    let (body, key) = first_request(plan, &plan.cells[0], &run.id)?;
    let script = run.root.join("wrk-mix.lua");
    let text = driver::mix_script(&body, &key);
    std::fs::write(&script, text).with_context(|| format!("writing {}", script.display()))?;
    let wrk = |load| async move {
        let before = stub.cpu_seconds();
        let rate = driver::wrk(stub, load, WRK_CONNECTIONS, WRK_S).await?;
        let (cpu_us, stub_cpu_us) =
            driver::cpu_us_per_request(before, stub.cpu_seconds(), rate * f64::from(WRK_S));
        anyhow::Ok(driver::WrkFigures {
            requests_per_s: rate,
            cpu_us,
            stub_cpu_us,
        })
    };
    eprintln!("txlab: wrk -t2 -c{WRK_CONNECTIONS} -d{WRK_S}s against the stub endpoint: the GET of an order");
    let wrk_get = wrk(driver::WrkLoad::Get).await?;
    eprintln!(
        "txlab: the same with the driver's requests in turn ({})",
        script.display()
    );
    let wrk_mix = wrk(driver::WrkLoad::Mix(&script)).await?;
    let mut cpu_at_pass = None;
    // A fixed rate is a search that starts and ends at it.
    let search = knee::Search {
        start: fixed_rate.unwrap_or(1000.0),
        max: fixed_rate.unwrap_or(DRIVER_MAX_RATE),
        floor: 50.0,
        resolution: 0.05,
    };
    let mut seen = knee::Progress::default();
    let mut attempt = 1;
    while let Some(rate) = search.next(&seen) {
        let mut cell = plan.cells[0].clone();
        cell.id = format!("driver-{rate}ps-run{attempt}");
        cell.stages = vec![Stage {
            rate,
            duration_s: 5.0,
        }];
        let target = Target {
            base_url: &stub.base_url,
            run_id: &run.id,
        };
        let before = stub.cpu_seconds();
        let (load, steal) =
            resources::watch_steal(drive(target, plan, &cell, &indicatif::ProgressBar::hidden())).await;
        let load = load?;
        // Each arrival sent is a POST and a GET.
        let cpu = driver::cpu_us_per_request(before, stub.cpu_seconds(), 2.0 * load.sent as f64);
        let kept_up = load.achieved_rate >= 0.97 * rate
            && load.errors == 0
            && load.dropped == 0
            && load.late * 100 <= load.sent;
        eprintln!(
            "txlab: driver at {rate}/s: sent {:.0}/s, decided p50 / p99 {:.1} / {:.1} ms, CPU per request: driver {:.1} µs, stub {:.1} µs, {} late, {} errors, {} dropped, host stole {} at worst{}",
            load.achieved_rate,
            load.decided_us.value_at_quantile(0.5) as f64 / 1000.0,
            load.decided_us.value_at_quantile(0.99) as f64 / 1000.0,
            cpu.0,
            cpu.1,
            load.late,
            load.errors,
            load.dropped,
            steal.map_or("–".into(), |st| format!("{:.0} %", 100.0 * st.peak)),
            if kept_up { "" } else { " — fell behind" }
        );
        // As in the lab's knee search: a step lost to a burst of stolen
        // time is run again rather than taken as the driver's limit.
        if let (true, Some(st)) = (knee::run_again(kept_up, steal, attempt), steal) {
            eprintln!("txlab: {}", knee::rerun_note(rate, st));
            attempt += 1;
            continue;
        }
        attempt = 1;
        seen.record(rate, kept_up);
        if kept_up && seen.pass == Some(rate) {
            cpu_at_pass = Some(cpu);
        }
        if fixed_rate.is_some() {
            break;
        }
    }
    let requests = seen.pass.map(|a| 2.0 * a);
    Ok(driver::Figures {
        driver_arrivals_per_s: seen.pass,
        driver_requests_per_s: requests,
        ratio: requests.map(|r| r / wrk_mix.requests_per_s),
        ratio_to_get: requests.map(|r| r / wrk_get.requests_per_s),
        wrk_mix,
        wrk_get,
        driver_cpu_us: cpu_at_pass.map(|c| c.0),
        stub_cpu_us_under_driver: cpu_at_pass.map(|c| c.1),
        driver_peak_rss_mib: resources::own_peak_rss_mib(),
    })
}

async fn on_platform(
    platform: &mut LocalPlatform,
    plan: &Plan,
    methods: &[TxMode],
    args: &BenchArgs,
    run: &RunDir,
    report: &mut BenchReport,
) -> anyhow::Result<()> {
    let server = platform
        .postgres_server()
        .context("the benchmarks need the embedded PostgreSQL")?;
    if args.parts.contains(&Part::Ceiling) {
        eprintln!(
            "txlab: pgbench -N at 8, 16 and 32 clients, {} s each",
            args.pgbench_s
        );
        report.pgbench =
            ceiling::measure(&server.bin_dir, &server.admin_url, &[8, 16, 32], args.pgbench_s).await?;
    }
    let best_tps = report.pgbench.iter().map(|p| p.tps).reduce(f64::max);
    let mut bench = Bencher {
        platform,
        plan,
        run,
        client: admin_client()?,
        cells: 0,
        replicas: args.replicas,
    };
    for &method in methods {
        let mut m = MethodFigures {
            method: method.to_string(),
            ..Default::default()
        };
        if args.parts.contains(&Part::Commits) {
            let c = bench
                .commits(method, &server, args.commits_rate, 400.0 / args.commits_rate)
                .await?;
            m.ceiling = best_tps.map(|t| t / c.per_checkout);
            m.commits = Some(c);
            if method.is_event_driven() {
                // Read before the next cell's reset clears the tables.
                let warmup_ms = (bench.plan.profile.load.warmup_s * 1000.0) as i64;
                m.hops = hops::measure(&bench.platform.endpoints().databases, warmup_ms).await?;
            }
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
    if args.parts.contains(&Part::Stall) {
        report.stall = Some(bench.stall(methods[0], args.stall_rate).await?);
    }
    Ok(())
}

/// Runs benchmark cells on the platform, numbering them.
struct Bencher<'a> {
    platform: &'a mut LocalPlatform,
    plan: &'a Plan,
    run: &'a RunDir,
    client: reqwest::Client,
    cells: usize,
    replicas: u32,
}

impl Bencher<'_> {
    fn cell(&self, method: TxMode, name: &str, stages: Vec<Stage>) -> Cell {
        let scenario = self.plan.cells[0].scenario.clone();
        Cell {
            id: format!("{method}-{}-{name}", scenario.name),
            method,
            scenario,
            replicas: self.replicas,
            repetition: 1,
            chaos: crate::spec::CellChaos::none(),
            stages,
        }
    }

    /// Runs one cell; with a server, counts its transactions from after
    /// the seeding to after the audit; with a stall, freezes that service
    /// for that long, that far into the load.
    async fn measure(
        &mut self,
        cell: &Cell,
        server: Option<&commits::Server>,
        stall: Option<(Role, Duration, Duration)>,
    ) -> anyhow::Result<(CellSummary, crate::load::LoadReport, Option<commits::Counted>)> {
        let endpoints = prepare_cell(self.platform, self.plan, self.run, &self.client, cell).await?;
        let mark = match server {
            Some(s) => Some(s.mark().await?),
            None => None,
        };
        let freeze = match stall {
            Some((role, pause, after)) => {
                let freeze = self.platform.stall(role, pause)?;
                Some(tokio::spawn(async move {
                    tokio::time::sleep(after).await;
                    freeze.await;
                }))
            }
            None => None,
        };
        let measured = measure_cell(
            self.platform,
            self.plan,
            self.run,
            &self.client,
            self.cells,
            cell,
            &endpoints,
        )
        .await;
        if let Some(f) = freeze {
            f.await?; // never leave a service frozen
        }
        let (summary, load) = measured?;
        let counted = match (server, mark) {
            (Some(s), Some(m)) => Some(s.since(&m).await?),
            _ => None,
        };
        self.cells += 1;
        print_cell_line(self.cells - 1, self.cells, &summary);
        Ok((summary, load, counted))
    }

    /// Durable commits per checkout over `rate` × `secs` orders. Relays
    /// and consumers batch their bookkeeping, so the figure falls as the
    /// rate rises; measure near the rates being compared.
    async fn commits(
        &mut self,
        method: TxMode,
        server: &commits::Server,
        rate: f64,
        secs: f64,
    ) -> anyhow::Result<CommitFigures> {
        let cell = self.cell(
            method,
            &format!("commits-{rate}ps"),
            vec![Stage {
                rate,
                duration_s: secs,
            }],
        );
        let (summary, _, counted) = self.measure(&cell, Some(server), None).await?;
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
            statements_per_database: counted
                .statements_per_database
                .iter()
                .flatten()
                .map(|(k, v)| (k.clone(), per(*v as f64)))
                .collect(),
            statements_per_checkout: counted.statements_total().map(|n| per(n as f64)),
            top_statements: counted
                .statements
                .iter()
                .take(TOP_STATEMENTS_KEPT)
                .map(|st| StatementFigures {
                    database: st.database.clone(),
                    statement: st.query.split_whitespace().collect::<Vec<_>>().join(" "),
                    calls_per_checkout: per(st.calls as f64),
                    exec_ms_per_checkout: per(st.exec_ms),
                })
                .collect(),
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
        let mut attempt = 1;
        while let Some(rate) = search.next(&seen) {
            let name = match attempt {
                1 => format!("{rate}ps"),
                n => format!("{rate}ps-run{n}"),
            };
            let cell = self.cell(
                method,
                &name,
                vec![Stage {
                    rate,
                    duration_s: args.step_s,
                }],
            );
            let (measured, steal) = resources::watch_steal(self.measure(&cell, None, None)).await;
            let (s, load, _) = measured?;
            let verdict = knee::judge(&s, args.p99_ms);
            if let (true, Some(st)) = (knee::run_again(verdict.passed, steal, attempt), steal) {
                eprintln!("txlab: {}", knee::rerun_note(rate, st));
                attempt += 1;
            } else {
                seen.record(rate, verdict.passed);
                attempt = 1;
            }
            let expected: u64 = load.completions.iter().sum();
            curve.push(Step {
                offered: rate,
                achieved: s.achieved_rate,
                goodput: expected as f64 / cell.duration_s(),
                decided_p50_ms: s.decided_ms.p50,
                decided_p99_ms: s.decided_ms.p99,
                passed: verdict.passed,
                reasons: verdict.reasons,
                cpu_ms_per_checkout: 1000.0 * s.resources.values().map(|u| u.cpu_s).sum::<f64>()
                    / s.sent.max(1) as f64,
                resources: s.resources.clone(),
                steal_pct: steal.map(|s| 100.0 * s.mean),
                steal_peak_pct: steal.map(|s| 100.0 * s.peak),
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
        let (_, load, _) = self.measure(&cell, None, None).await?;
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

impl Bencher<'_> {
    /// Ten seconds at `rate` with the order service frozen for 2 s after 4 s.
    async fn stall(&mut self, method: TxMode, rate: f64) -> anyhow::Result<StallFigures> {
        let cell = self.cell(
            method,
            "stall",
            vec![Stage {
                rate,
                duration_s: 10.0,
            }],
        );
        let (s, load, _) = self.measure(&cell, None, Some(STALL)).await?;
        Ok(StallFigures {
            method: method.to_string(),
            offered: rate,
            pause_ms: STALL.1.as_millis() as u64,
            decided_p50_ms: s.decided_ms.p50,
            decided_p99_ms: s.decided_ms.p99,
            decided_max_ms: s.decided_ms.max,
            p99_by_second_ms: load.seconds.iter().map(|x| x.decided_p99_ms).collect(),
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
        steal_pct: Option<f64>,
        steal_peak_pct: Option<f64>,
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
                steal_pct: s.steal_pct,
                steal_peak_pct: s.steal_peak_pct,
                cell: &s.cell,
            })?;
        }
    }
    Ok(w.into_inner()?)
}

fn print_report(r: &BenchReport) {
    if let Some(s) = &r.startup {
        println!(
            "lab start-up: infrastructure {:.1} s, services healthy {:.1} s later",
            s.infrastructure_s, s.services_s
        );
    }
    if !r.pgbench.is_empty() {
        let tps: Vec<String> = r
            .pgbench
            .iter()
            .map(|p| format!("{} clients {:.0}/s", p.clients, p.tps))
            .collect();
        println!("pgbench -N (durable commits/s): {}", tps.join(", "));
    }
    if !r.methods.is_empty() {
        if r.replicas > 1 {
            println!(
                "{} processes per service, every link through the proxy",
                r.replicas
            );
        }
        println!("{}", methods_table(&r.methods));
        print_footprint(&r.methods);
        print_hops(&r.methods);
        print_statements(&r.methods);
    }
    if let Some(s) = &r.stall {
        println!(
            "stall: {} at {}/s, order service frozen {} ms: decided p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
            s.method, s.offered, s.pause_ms, s.decided_p50_ms, s.decided_p99_ms, s.decided_max_ms
        );
    }
    if let Some(d) = &r.driver {
        let ratio = |r: Option<f64>| r.map_or("–".into(), |a| format!("{a:.2}"));
        println!(
            "driver: wrk {:.0} requests/s with the driver's requests (POST an order, GET an order), {:.0} with GETs alone; \
             txlab's driver kept schedule up to {}{} arrivals/s ({} requests/s, {} of wrk with the same requests, {} of wrk's GETs)",
            d.wrk_mix.requests_per_s,
            d.wrk_get.requests_per_s,
            // Passing the highest rate tried says nothing of the driver's limit.
            if d.driver_arrivals_per_s == Some(DRIVER_MAX_RATE) { "at least " } else { "" },
            d.driver_arrivals_per_s.map_or("–".into(), |a| format!("{a:.0}")),
            d.driver_requests_per_s.map_or("–".into(), |a| format!("{a:.0}")),
            ratio(d.ratio),
            ratio(d.ratio_to_get),
        );
        println!(
            "driver: CPU per request: wrk {:.1} µs, the stub {:.1} µs under it (GETs alone: {:.1} and {:.1}); \
             txlab's driver {} µs, the stub {} µs under it; the driver's memory at most {} MiB",
            d.wrk_mix.cpu_us,
            d.wrk_mix.stub_cpu_us,
            d.wrk_get.cpu_us,
            d.wrk_get.stub_cpu_us,
            d.driver_cpu_us.map_or("–".into(), |a| format!("{a:.1}")),
            d.stub_cpu_us_under_driver.map_or("–".into(), |a| format!("{a:.1}")),
            d.driver_peak_rss_mib.map_or("–".into(), |m| format!("{m:.0}")),
        );
    }
}

/// One row per method: commits, ceiling, knee, latency and CPU at the knee, overload.
fn methods_table(methods: &[MethodFigures]) -> Table {
    let mut t = crate::report::terminal_table(vec![
        "method",
        "commits per\ncheckout",
        "all tx per\ncheckout",
        "statements\nper checkout",
        "ceiling\norders/s",
        "knee\norders/s",
        "knee /\nceiling",
        "p50 / p99 ms\nat the knee",
        "cores at the knee\n(busiest three)",
        "overload 2×: goodput\n/ knee, recovery",
    ]);
    let num = |v: Option<f64>, prec: usize| v.map_or("–".to_string(), |v| format!("{v:.prec$}"));
    for m in methods {
        let at_knee = m.curve.iter().find(|s| Some(s.offered) == m.knee && s.passed);
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
            num(m.commits.as_ref().and_then(|c| c.statements_per_checkout), 1),
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
    t
}

/// Per event-driven method: p50 / p99 of each hop of the commits cell.
fn print_hops(methods: &[MethodFigures]) {
    for m in methods.iter().filter(|m| !m.hops.is_empty()) {
        let mut t = crate::report::terminal_table(vec![
            format!("{}: where a checkout's time goes", m.method),
            "p50 ms".into(),
            "p90 ms".into(),
            "p99 ms".into(),
        ]);
        for s in &m.hops {
            t.add_row(vec![
                s.stage.clone(),
                format!("{:.0}", s.p50_ms),
                format!("{:.0}", s.p90_ms),
                format!("{:.0}", s.p99_ms),
            ]);
        }
        println!("{t}");
    }
}

/// Per method: the statements it runs most often per checkout.
fn print_statements(methods: &[MethodFigures]) {
    for m in methods {
        let Some(c) = m.commits.as_ref().filter(|c| !c.top_statements.is_empty()) else {
            continue;
        };
        let mut t = crate::report::terminal_table(vec![
            format!("{}: statements run most per checkout", m.method),
            "database".into(),
            "calls".into(),
            "exec ms".into(),
        ]);
        for st in c.top_statements.iter().take(TOP_STATEMENTS_SHOWN) {
            t.add_row(vec![
                shortened(&st.statement, 80),
                st.database.trim_start_matches("txlab_").to_string(),
                format!("{:.2}", st.calls_per_checkout),
                format!("{:.3}", st.exec_ms_per_checkout),
            ]);
        }
        println!("{t}");
    }
}

/// `text` cut to at most `max` characters, marked where cut.
fn shortened(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        Some((at, _)) => format!("{}…", &text[..at]),
        None => text.to_string(),
    }
}

/// CPU per checkout and memory of each method at its knee.
fn print_footprint(methods: &[MethodFigures]) {
    let mut t = crate::report::terminal_table(vec![
        "at the knee",
        "CPU ms per\ncheckout (all)",
        "largest service\nRSS MiB",
        "RSS MiB per component",
    ]);
    for m in methods {
        let Some(s) = m.curve.iter().find(|s| Some(s.offered) == m.knee && s.passed) else {
            continue;
        };
        let services = s
            .resources
            .iter()
            // A service's process: `order`, or `order-1` with replicas.
            .filter(|(n, _)| {
                let role = n.split_once('-').map_or(n.as_str(), |(r, _)| r);
                Role::ALL.iter().any(|r| r.as_str() == role)
            })
            .map(|(_, u)| u.rss_mib)
            .fold(0.0, f64::max);
        let all: Vec<String> = s
            .resources
            .iter()
            .map(|(n, u)| format!("{n} {:.0}", u.rss_mib))
            .collect();
        t.add_row(vec![
            m.method.clone(),
            format!("{:.1}", s.cpu_ms_per_checkout),
            format!("{services:.1}"),
            all.join(", "),
        ]);
    }
    if t.row_count() > 0 {
        println!("{t}");
    }
}
