//! `txlab run`: run a profile's matrix on the local platform.
//!
//! The flags and the profile are resolved into one [`RunPlan`] before
//! anything starts; then each cell is deployed, reset and seeded, loaded,
//! quiesced, audited and written out. Ctrl-C stops the run between or inside
//! cells and still tears everything down.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, SystemTime};

use anyhow::{bail, Context};
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::json;
use txlab_api::Role;

use crate::audit::{check, quiesce, Reader};
use crate::chaos::fault::{FaultKind, PodAction};
use crate::load::{drive, driver::Target as LoadTarget, LoadReport};
use crate::metrics::resources;
use crate::platform::local::{LocalOptions, LocalPlatform};
use crate::platform::Target;
use crate::platform::{Endpoints, Platform};
use crate::results::{copy_log_slices, log_marks, rfc3339, write_cell, CellSummary, ChaosWindow, RunDir};
use crate::spec::{Cell, Plan};

/// Exit code when the audit found violations.
pub const EXIT_VIOLATIONS: u8 = 3;
/// Exit code when a cell broke the profile's thresholds (unexpected
/// outcomes, drops, undecided orders, errors, no quiescence, latency).
pub const EXIT_THRESHOLDS: u8 = 4;
/// Exit code after Ctrl-C.
pub const EXIT_INTERRUPTED: u8 = 130;

#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// The experiment profile to run.
    #[arg(long, short, default_value = "profiles/quick.yaml")]
    pub profile: PathBuf,
    /// Run every cell of the profile's matrix. That is what `run` does by
    /// default; say it to make a script's intent explicit (it refuses --only).
    #[arg(long, conflicts_with = "only")]
    pub matrix: bool,
    /// Run only cells whose id contains this text, e.g. `fail-payment`.
    #[arg(long)]
    pub only: Option<String>,
    /// Directory of scenario files [default: scenarios/ beside the profile's folder].
    #[arg(long)]
    pub scenarios: Option<PathBuf>,
    /// Where run directories are created.
    #[arg(long, default_value = "results", env = "TXLAB_RESULTS")]
    pub results: PathBuf,
    /// Keep the scratch directory (PostgreSQL's data) after the run.
    #[arg(long)]
    pub keep: bool,
    /// Use this PostgreSQL server (an admin URL) instead of starting one.
    #[arg(long, env = "TXLAB_DATABASE_URL")]
    pub database_url: Option<String>,
    /// Use this Kafka-API broker (host:port) instead of starting tansu.
    #[arg(long, env = "TXLAB_KAFKA_BROKERS")]
    pub kafka_brokers: Option<String>,
    /// Check the profile and print the cells without running anything;
    /// with `--target k8s`, print every object the run would apply.
    #[arg(long)]
    pub dry_run: bool,
    /// Where the run happens: the embedded local lab, or the Kubernetes
    /// cluster of the current kubeconfig.
    #[arg(long, value_enum, default_value_t = Target::Local)]
    pub target: Target,
    /// The workload's Helm chart (k8s target).
    #[arg(long, default_value = "charts/txlab")]
    pub chart: PathBuf,
    /// A Helm value file applied before txlab's own values: image, database
    /// Secret, broker address (k8s target; repeatable).
    #[arg(long = "values")]
    pub values: Vec<PathBuf>,
    /// A Prometheus with cAdvisor's series, for each cell's CPU, memory and
    /// network on the cluster (k8s target).
    #[arg(long, env = "TXLAB_PROMETHEUS_URL")]
    pub prometheus_url: Option<String>,
    /// The namespace of PostgreSQL and the broker, where chaos aimed at
    /// them (`app: postgres`, `app: kafka`) selects (k8s target).
    #[arg(long, default_value = crate::platform::k8s::INFRA_NAMESPACE)]
    pub infra_namespace: String,
    /// Run inside the cluster as a Job of this txlab image (the Dockerfile's
    /// cli target), for when txlab runs outside it (k8s target).
    #[arg(long, value_name = "IMAGE")]
    pub in_cluster: Option<String>,
    /// A directory on the nodes the in-cluster run writes its results to;
    /// without one they stay in the pod and only its output remains.
    #[arg(long, requires = "in_cluster")]
    pub results_host_path: Option<String>,
}

/// `scenarios/` beside the folder holding the profile (profiles/x.yaml → scenarios/).
pub fn default_scenarios_dir(profile: &Path) -> PathBuf {
    let dir = profile.parent().unwrap_or(Path::new("."));
    let dir = if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    };
    dir.join("..").join("scenarios")
}

/// Everything a run needs, resolved from the flags and the profile before
/// anything starts (as ripgrep turns its raw flags into one plan).
#[derive(Debug)]
pub struct RunPlan {
    /// The profile's validated matrix, narrowed by `--only`.
    pub plan: Plan,
    /// Where the run directory is created.
    pub results: PathBuf,
    /// How the local platform is started (its log directory is set once
    /// the run directory exists).
    pub platform: LocalOptions,
    /// Only validate and list the cells.
    pub dry_run: bool,
}

impl RunArgs {
    /// Reads and checks the profile and its scenarios and applies the flags.
    pub fn resolve(&self) -> anyhow::Result<RunPlan> {
        let scenarios = self
            .scenarios
            .clone()
            .unwrap_or_else(|| default_scenarios_dir(&self.profile));
        let mut plan = Plan::load(&self.profile, &scenarios)?;
        if let Some(only) = &self.only {
            plan.cells.retain(|c| c.id.contains(only.as_str()));
            if plan.cells.is_empty() {
                bail!("--only {only}: no cell of {} matches", self.profile.display());
            }
        }
        // Every cell of a profile with chaos goes through the proxy, those
        // without chaos too, so they compare on equal terms.
        // Replicas need it too: it balances them as a Kubernetes Service would.
        let proxy = plan
            .cells
            .iter()
            .any(|c| !c.chaos.faults.is_empty() || c.replicas > 1);
        Ok(RunPlan {
            plan,
            results: self.results.clone(),
            platform: LocalOptions {
                keep: self.keep,
                database_url: self.database_url.clone(),
                kafka_brokers: self.kafka_brokers.clone(),
                log_dir: PathBuf::new(),
                proxy,
            },
            dry_run: self.dry_run,
        })
    }
}

pub async fn execute(args: RunArgs) -> anyhow::Result<ExitCode> {
    if args.target == Target::K8s {
        return k8s(args).await;
    }
    let RunPlan {
        plan,
        results,
        platform: mut opts,
        dry_run,
    } = args.resolve()?;
    if dry_run {
        println!(
            "{} is valid: {} cells",
            plan.profile_path.display(),
            plan.cells.len()
        );
        for c in &plan.cells {
            println!("  {}", c.id);
        }
        return Ok(ExitCode::SUCCESS);
    }
    let run = RunDir::create(&results, &plan.profile.name)?;
    eprintln!(
        "txlab: run {} ({} cells) → {}",
        run.id,
        plan.cells.len(),
        run.root.display()
    );
    let started = SystemTime::now();
    opts.log_dir = run.services_log_dir();
    let keep = opts.keep;
    let interrupted = tokio::signal::ctrl_c();
    tokio::pin!(interrupted);
    let mut platform = tokio::select! {
        p = LocalPlatform::start(opts) => match p {
            Ok(p) => p,
            Err(e) => {
                // Keep the directory self-describing: it holds the start-up logs.
                let status = format!("failed to start: {e:#}");
                run.write_json("run.json", &run_metadata(&plan, &run, started, &status, json!({"name": "local"})).await)?;
                return Err(e);
            }
        },
        _ = &mut interrupted => {
            // The half-started platform was dropped; the reaper cleans up after it.
            eprintln!("txlab: interrupted during start-up");
            return Ok(ExitCode::from(EXIT_INTERRUPTED));
        }
    };
    let outcome = tokio::select! {
        r = run_cells(&mut platform, &plan, &run) => Some(r),
        _ = &mut interrupted => None,
    };
    let scratch = platform.scratch_dir().to_path_buf();
    close(platform, &plan, &run, started, &outcome).await?;
    if keep {
        eprintln!("txlab: kept the scratch directory {}", scratch.display());
    }
    exit_code(outcome, &run)
}

/// `--target k8s`: with `--dry-run`, the objects of every deployment and
/// chaos of the profile, rendered from the chart and checked; otherwise
/// the cells on the cluster of the current kubeconfig, in a namespace of
/// the run's own.
async fn k8s(args: RunArgs) -> anyhow::Result<ExitCode> {
    use crate::platform::k8s::{chart, cluster, lab};
    let plan = args.resolve()?.plan;
    let chart = chart::Chart {
        dir: args.chart.clone(),
        values: args.values.clone(),
        helm: chart::find_helm()?,
    };
    if args.dry_run {
        let run_id = RunDir::id_now(&plan.profile.name);
        let scope = crate::platform::k8s::RunScope {
            infra_namespace: args.infra_namespace.clone(),
            ..crate::platform::k8s::RunScope::of(&run_id)
        };
        let objects = crate::platform::k8s::RunObjects::of(&plan, &chart, &scope)?;
        print!(
            "# txlab run --target k8s --dry-run: {} ({} cells) as run {run_id}\n{}",
            plan.profile_path.display(),
            plan.cells.len(),
            objects.to_yaml()?
        );
        return Ok(ExitCode::SUCCESS);
    }
    let needs = |flag: &str, what: &str| {
        format!(
            "--target k8s needs {flag}: {what}, as the services in the cluster and txlab reach it \
             (txlab runs where cluster DNS resolves: in a pod, see docs/kubernetes.md)"
        )
    };
    let database_url = args
        .database_url
        .clone()
        .with_context(|| needs("--database-url", "an admin URL of the PostgreSQL server"))?;
    let brokers = args
        .kafka_brokers
        .clone()
        .with_context(|| needs("--kafka-brokers", "the Kafka-API broker's bootstrap servers"))?;
    if let Some(image) = &args.in_cluster {
        let id = RunDir::id_now(&plan.profile.name);
        return in_cluster(&args, &id, image, database_url, brokers).await;
    }
    // Everything is checked before anything is created.
    let client = cluster::connect().await?;
    let run = RunDir::create(&args.results, &plan.profile.name)?;
    eprintln!(
        "txlab: run {} ({} cells) on Kubernetes → {}",
        run.id,
        plan.cells.len(),
        run.root.display()
    );
    let started = SystemTime::now();
    let scope = crate::platform::k8s::RunScope {
        infra_namespace: args.infra_namespace.clone(),
        ..crate::platform::k8s::RunScope::of(&run.id)
    };
    let opts = lab::K8sOptions {
        chart,
        run_id: run.id.clone(),
        database_url,
        brokers,
        rollout_timeout: Duration::from_secs(300),
        prometheus: args.prometheus_url.clone(),
    };
    let mut platform =
        match lab::K8sPlatform::start(cluster::Cluster::new(client.clone(), scope.clone()), opts).await {
            Ok(p) => p,
            Err(e) => {
                let status = format!("failed to start: {e:#}");
                run.write_json(
                    "run.json",
                    &run_metadata(&plan, &run, started, &status, json!({"name": "k8s"})).await,
                )?;
                // Whatever was created goes, by the run's label.
                let _ = cluster::Cluster::new(client, scope).teardown().await;
                return Err(e);
            }
        };
    // Ctrl-C, or SIGTERM when the runner's Job is deleted or times out:
    // either way the run's objects are deleted before txlab exits.
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("listening for SIGTERM")?;
    let outcome = tokio::select! {
        r = run_cells(&mut platform, &plan, &run) => Some(r),
        _ = tokio::signal::ctrl_c() => None,
        _ = terminate.recv() => None,
    };
    close(platform, &plan, &run, started, &outcome).await?;
    exit_code(outcome, &run)
}

/// `--in-cluster <image>`: the same run as a Job inside the cluster, its
/// output printed here and its exit code passed on.
async fn in_cluster(
    args: &RunArgs,
    id: &str,
    image: &str,
    database_url: String,
    brokers: String,
) -> anyhow::Result<ExitCode> {
    use crate::platform::k8s::{chart, cluster, runner};
    let values = args
        .values
        .iter()
        .map(|p| {
            let text = std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?;
            Ok((p.display().to_string(), text))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let spec = runner::JobSpec {
        name: chart::namespace_for(&format!("run-{id}")),
        image: image.to_string(),
        profile: args.profile.display().to_string(),
        results_host_path: args.results_host_path.clone(),
        values,
        database_url,
        brokers,
        prometheus: args.prometheus_url.clone(),
    };
    runner::check(&spec)?;
    let objects = runner::objects(&spec)?;
    crate::platform::k8s::checks::ensure_fit(&objects, "the runner's objects")?;
    let scope = crate::platform::k8s::RunScope {
        namespace: runner::NAMESPACE.to_string(),
        run: "runner".to_string(),
        infra_namespace: args.infra_namespace.clone(),
    };
    let cluster = cluster::Cluster::new(cluster::connect().await?, scope);
    cluster.apply(&objects).await?;
    eprintln!(
        "txlab: Job {} started in {}; waiting for it",
        spec.name,
        runner::NAMESPACE
    );
    let end = cluster.wait_job(&spec.name, Duration::from_secs(95 * 60)).await?;
    print!("{}", end.logs);
    Ok(ExitCode::from(runner::exit_code(&end)))
}

/// Stops the platform, writes `run.json` and prints the table of the cells
/// that finished.
async fn close(
    platform: impl Platform,
    plan: &Plan,
    run: &RunDir,
    started: SystemTime,
    outcome: &Option<anyhow::Result<Vec<CellSummary>>>,
) -> anyhow::Result<()> {
    let description = platform.describe();
    eprintln!("txlab: stopping services and infrastructure");
    platform.shutdown().await?;
    let (summaries, status) = match outcome {
        Some(Ok(s)) => (s.clone(), "finished".to_string()),
        Some(Err(e)) => (
            crate::results::read_summaries(&run.root).unwrap_or_default(),
            format!("failed: {e:#}"),
        ),
        None => (
            crate::results::read_summaries(&run.root).unwrap_or_default(),
            "interrupted".to_string(),
        ),
    };
    let metadata = run_metadata(plan, run, started, &status, description).await;
    run.write_json("run.json", &metadata)?;
    if !summaries.is_empty() {
        println!("{}", crate::report::table(&summaries));
    }
    println!("wall time: {} s", metadata["wall_s"]);
    println!("results: {}", run.root.display());
    Ok(())
}

/// Seconds since `started`, to a tenth.
fn wall_s(started: SystemTime) -> f64 {
    let s = started.elapsed().map_or(0.0, |d| d.as_secs_f64());
    (s * 10.0).round() / 10.0
}

/// 0, or what went wrong: violations (3) before broken thresholds (4).
fn exit_code(outcome: Option<anyhow::Result<Vec<CellSummary>>>, run: &RunDir) -> anyhow::Result<ExitCode> {
    let Some(summaries) = outcome else {
        eprintln!("txlab: interrupted; finished cells are in {}", run.root.display());
        return Ok(ExitCode::from(EXIT_INTERRUPTED));
    };
    let summaries = summaries?;
    let violations: usize = summaries.iter().map(|c| c.violations).sum();
    if violations > 0 {
        eprintln!("txlab: the audit found {violations} violations; see audit.json in each cell");
        return Ok(ExitCode::from(EXIT_VIOLATIONS));
    }
    let failed: Vec<&CellSummary> = summaries
        .iter()
        .filter(|c| !c.threshold_failures.is_empty())
        .collect();
    for c in &failed {
        eprintln!(
            "txlab: {} broke its thresholds: {}",
            c.cell,
            c.threshold_failures.join("; ")
        );
    }
    if !failed.is_empty() {
        eprintln!(
            "txlab: {} of {} cells broke the profile's thresholds",
            failed.len(),
            summaries.len()
        );
        return Ok(ExitCode::from(EXIT_THRESHOLDS));
    }
    Ok(ExitCode::SUCCESS)
}

/// POSTs `body` to `path` on every service (one replica each: what the
/// admin API changes lives in the service's database).
async fn broadcast(
    client: &reqwest::Client,
    endpoints: &Endpoints,
    path: &str,
    body: &serde_json::Value,
) -> anyhow::Result<()> {
    for role in Role::ALL {
        let url = format!("{}{path}", endpoints.url(role)?);
        send_ok(client.post(&url).json(body), &url).await?;
    }
    Ok(())
}

/// Sets (or with `{"mode": "none"}` clears) one service's standing fault,
/// on every replica: each process keeps its own switch.
async fn set_standing_fault(
    client: &reqwest::Client,
    endpoints: &Endpoints,
    role: Role,
    fault: &serde_json::Value,
) -> anyhow::Result<()> {
    let replicas = endpoints.replica_urls(role);
    anyhow::ensure!(!replicas.is_empty(), "no endpoint for the {role} service");
    for base in replicas {
        let url = format!("{base}/admin/faults");
        send_ok(client.put(&url).json(fault), &url).await?;
    }
    Ok(())
}

/// Sends an admin request; anything but a 2xx is an error quoting the answer.
async fn send_ok(request: reqwest::RequestBuilder, url: &str) -> anyhow::Result<()> {
    let resp = request.send().await.with_context(|| format!("calling {url}"))?;
    if !resp.status().is_success() {
        bail!(
            "{url} answered {}: {}",
            resp.status(),
            resp.text().await.unwrap_or_default()
        );
    }
    Ok(())
}

/// Runs every cell in order, writing each as it finishes.
pub async fn run_cells(
    platform: &mut impl Platform,
    plan: &Plan,
    run: &RunDir,
) -> anyhow::Result<Vec<CellSummary>> {
    let client = admin_client()?;
    let mut summaries = Vec::new();
    for (index, cell) in plan.cells.iter().enumerate() {
        let summary = run_cell(platform, plan, run, &client, index, cell).await?;
        print_cell_line(index, plan.cells.len(), &summary);
        summaries.push(summary);
    }
    Ok(summaries)
}

/// One line per finished cell on stderr.
pub fn print_cell_line(index: usize, of: usize, summary: &CellSummary) {
    eprintln!(
        "[{}/{}] {}: {} orders, {} decided ({} unexpected), decided p99 {:.1} ms{}, {} violations{}",
        index + 1,
        of,
        summary.cell,
        summary.sent,
        summary.decided,
        summary.unexpected,
        summary.decided_ms.p99,
        if summary.censored > 0 {
            format!(" ({} censored)", summary.censored)
        } else {
            String::new()
        },
        summary.violations,
        if summary.settled {
            String::new()
        } else {
            format!(" — did not settle: {}", summary.unsettled.join("; "))
        }
    );
}

/// One cell: deploy, reset and seed, load, quiesce, audit, write.
pub async fn run_cell(
    platform: &mut impl Platform,
    plan: &Plan,
    run: &RunDir,
    client: &reqwest::Client,
    index: usize,
    cell: &Cell,
) -> anyhow::Result<CellSummary> {
    let endpoints = prepare_cell(platform, plan, run, client, cell).await?;
    let (summary, _) = measure_cell(platform, plan, run, client, index, cell, &endpoints).await?;
    Ok(summary)
}

/// Deploys the cell's method and resets and seeds every service.
pub async fn prepare_cell(
    platform: &mut impl Platform,
    plan: &Plan,
    run: &RunDir,
    client: &reqwest::Client,
    cell: &Cell,
) -> anyhow::Result<Endpoints> {
    let endpoints = platform
        .deploy(cell.method, cell.replicas)
        .await
        .with_context(|| {
            format!(
                "deploying {} with {} replicas per service",
                cell.method, cell.replicas
            )
        })?;
    // A new epoch per cell: work still in flight from the last one is refused.
    let epoch = format!("{}/{}", run.id, cell.id);
    reset_and_seed(client, &endpoints, &epoch, &plan.seed.seed).await?;
    Ok(endpoints)
}

/// Empties every service's tables under a new epoch and seeds them.
pub async fn reset_and_seed(
    client: &reqwest::Client,
    endpoints: &Endpoints,
    epoch: &str,
    seed: &txlab_api::admin::Seed,
) -> anyhow::Result<()> {
    broadcast(client, endpoints, "/admin/reset", &json!({ "epoch": epoch })).await?;
    broadcast(client, endpoints, "/admin/seed", &serde_json::to_value(seed)?).await
}

/// Loads a prepared cell, waits for it to settle, audits it and writes it
/// out; returns its summary and what the driver measured.
pub async fn measure_cell(
    platform: &mut impl Platform,
    plan: &Plan,
    run: &RunDir,
    client: &reqwest::Client,
    index: usize,
    cell: &Cell,
    endpoints: &Endpoints,
) -> anyhow::Result<(CellSummary, LoadReport)> {
    let endpoints = endpoints.clone();
    let logs = platform.log_files();
    let marks = log_marks(&logs);
    let restarts_before = platform.restarts().await;
    let events_before = crate::metrics::scrape(client, &endpoints).await;

    let progress = ProgressBar::new(0)
        .with_style(progress_style())
        .with_prefix(format!("[{}/{}] {}", index + 1, plan.cells.len(), cell.id));
    let processes = platform.processes();
    let traffic_before = platform.traffic();
    let (resources_before, load_began) = (resources::sample(&processes), std::time::Instant::now());
    let load_from = SystemTime::now();
    let inputs = LoadInputs {
        plan,
        run,
        client,
        endpoints: &endpoints,
        cell,
        progress: &progress,
    };
    let (load, chaos_notes, chaos_windows) = load_under_chaos(platform, &inputs).await?;
    // Sampled anew: a service restarted during the load has a new process
    // (counted from its start), not a gone one.
    let resources = resources::between(
        &resources_before,
        &resources::sample(&platform.processes()),
        load_began.elapsed().as_secs_f64(),
    );
    // Where the platform measures its components itself (a cluster).
    let usage = platform
        .usage(load_from, SystemTime::now())
        .await
        .unwrap_or_else(|e| {
            tracing::warn!(cell = %cell.id, error = %format!("{e:#}"), "no resource figures from the platform");
            None
        });
    progress.set_message("quiescing");
    let timeout = Duration::from_secs_f64(plan.profile.quiesce_timeout_s);
    let reader = Reader::connect(&endpoints).await?;
    let (snapshots, waited, unsettled) = quiesce(&reader, cell.method, timeout).await?;
    let audit = check(&plan.seed.seed, &snapshots, cell.method, Some(&load.client));
    progress.finish_and_clear();

    let mut summary = CellSummary::new(index, cell, &load, &audit, waited.as_millis() as u64, unsettled);
    summary.events = crate::metrics::delta(&events_before, &crate::metrics::scrape(client, &endpoints).await);
    summary.restarts = platform
        .restarts()
        .await
        .into_iter()
        .map(|(role, n)| {
            (
                role.to_string(),
                // A pod replaced during the cell (a kill) counts from zero again.
                n.saturating_sub(restarts_before.get(&role).copied().unwrap_or(0)),
            )
        })
        .filter(|(_, n)| *n > 0)
        .collect();
    summary.resources = resources;
    summary.chaos = cell.chaos.name.clone();
    summary.chaos_notes = chaos_notes;
    summary.chaos_windows = chaos_windows;
    summary.network = crate::results::traffic_between(&traffic_before, &platform.traffic());
    if let Some(u) = usage {
        summary.resources = u.resources;
        summary.network = u.network;
    }
    summary.threshold_failures = plan.profile.thresholds.broken_by(&summary);
    let dir = run.cell_dir(&cell.id);
    write_cell(&dir, cell, &summary, &load, &audit)?;
    crate::results::workflows::save(client, &endpoints, &load.decided_orders, &dir).await?;
    copy_log_slices(&dir, &logs, &marks)?;
    Ok((summary, load))
}

/// The cell's load with its chaos: switched on when the warm-up ends (each
/// fault with a duration switches itself off) and off when the load ends,
/// before the quiesce and the audit. Returns the load, what the platform
/// could not show of the chaos, and when each fault was on.
async fn load_under_chaos(
    platform: &mut impl Platform,
    inputs: &LoadInputs<'_>,
) -> anyhow::Result<(LoadReport, Vec<String>, Vec<ChaosWindow>)> {
    let (plan, cell) = (inputs.plan, inputs.cell);
    let faults = &cell.chaos.faults;
    let began = std::time::Instant::now();
    let mut load = std::pin::pin!(load_cell(inputs));
    if faults.is_empty() {
        return Ok((load.await?, Vec::new(), Vec::new()));
    }
    let warmup = Duration::from_secs_f64(plan.profile.load.warmup_s);
    let mut notes = Vec::new();
    // (name, on, off if known before the load ends)
    let mut spans: Vec<(String, Duration, Option<Duration>)> = Vec::new();
    let (report, switched_on) = {
        let mut chaos = std::pin::pin!(async {
            tokio::time::sleep(warmup).await;
            for fault in faults {
                tracing::info!(cell = %cell.id, fault = %fault.name, "chaos on");
                let on = began.elapsed();
                notes.extend(
                    platform
                        .chaos_on(fault)
                        .await
                        .with_context(|| format!("switching on chaos {}", fault.name))?,
                );
                // A kill lasts until the service is back, which chaos_on waits for.
                let killed = matches!(&fault.kind, FaultKind::Pod(p) if p.action == PodAction::Kill);
                let off = if killed {
                    Some(began.elapsed())
                } else {
                    fault.duration.map(|d| on + d)
                };
                spans.push((fault.name.clone(), on, off));
            }
            anyhow::Ok(())
        });
        let mut switched_on = None;
        let report = loop {
            tokio::select! {
                report = &mut load => break report,
                done = &mut chaos, if switched_on.is_none() => switched_on = Some(done),
            }
        };
        (report, switched_on)
    };
    let ended = began.elapsed();
    // Off even when the load failed, so the next cell starts clean.
    platform.chaos_off(None).await.context("switching chaos off")?;
    let windows = spans
        .into_iter()
        .map(|(name, on, off)| ChaosWindow {
            name,
            from_s: on.as_secs_f64(),
            until_s: off.map_or(ended, |o| o.min(ended)).as_secs_f64(),
        })
        .collect();
    match switched_on {
        None => notes.push(format!(
            "the load ended before the warm-up of {} s did: no chaos was switched on",
            warmup.as_secs_f64()
        )),
        Some(result) => result?,
    }
    for n in &notes {
        eprintln!("txlab: {}: {n}", cell.id);
    }
    Ok((report?, notes, windows))
}

/// What a cell's load needs.
struct LoadInputs<'a> {
    plan: &'a Plan,
    run: &'a RunDir,
    client: &'a reqwest::Client,
    endpoints: &'a Endpoints,
    cell: &'a Cell,
    progress: &'a ProgressBar,
}

/// The cell's load, with the scenario's standing fault set for its length.
async fn load_cell(inputs: &LoadInputs<'_>) -> anyhow::Result<LoadReport> {
    let LoadInputs {
        plan,
        run,
        client,
        endpoints,
        cell,
        progress,
    } = *inputs;
    if let Some(f) = &cell.scenario.standing_fault {
        set_standing_fault(client, endpoints, f.role, &serde_json::to_value(&f.fault)?).await?;
    }
    let target = LoadTarget {
        base_url: endpoints.order_entry()?,
        run_id: &run.id,
    };
    let load = drive(target, plan, cell, progress).await;
    if let Some(f) = &cell.scenario.standing_fault {
        // Cleared even if the load failed. Best effort: a service that is
        // just restarting after a crash has no standing fault anyway.
        if let Err(e) = set_standing_fault(client, endpoints, f.role, &json!({"mode": "none"})).await {
            tracing::warn!(error = format!("{e:#}"), "clearing the standing fault failed");
        }
    }
    load
}

/// The client for the services' admin endpoints.
pub fn admin_client() -> anyhow::Result<reqwest::Client> {
    Ok(reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()?)
}

fn progress_style() -> ProgressStyle {
    ProgressStyle::with_template("{prefix:>40} [{bar:30}] {pos}/{len} orders {msg}")
        .expect("static progress template")
        .progress_chars("=> ")
}

/// Everything needed to know later what this run was.
async fn run_metadata(
    plan: &Plan,
    run: &RunDir,
    started: SystemTime,
    status: &str,
    platform: serde_json::Value,
) -> serde_json::Value {
    json!({
        "run_id": run.id,
        "status": status,
        "started": rfc3339(started),
        "finished": rfc3339(SystemTime::now()),
        // From the command's start to here: the profile's whole wall time,
        // lab start-up, seeding and audits included.
        "wall_s": wall_s(started),
        "txlab_version": env!("CARGO_PKG_VERSION"),
        "git": git_revision().await,
        "profile_path": plan.profile_path,
        "profile": plan.profile,
        "seed": plan.profile.seed,
        "cells": plan.cells.iter().map(|c| &c.id).collect::<Vec<_>>(),
        "machine": machine(),
        "platform": platform,
    })
}

async fn git_revision() -> serde_json::Value {
    let out = |args: &'static [&'static str]| async move {
        tokio::process::Command::new("git")
            .args(args)
            .output()
            .await
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
    };
    let rev = out(&["rev-parse", "HEAD"]).await;
    let dirty = out(&["status", "--porcelain", "--untracked-files=no"])
        .await
        .map(|s| !s.is_empty());
    json!({ "revision": rev, "dirty": dirty })
}

fn machine() -> serde_json::Value {
    let read = |p: &str| std::fs::read_to_string(p).map(|s| s.trim().to_string()).ok();
    let mem_kib = read("/proc/meminfo").and_then(|m| {
        m.lines()
            .find(|l| l.starts_with("MemTotal:"))
            .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
    });
    let cpu_model = read("/proc/cpuinfo").and_then(|c| {
        c.lines()
            .find(|l| l.starts_with("model name"))
            .and_then(|l| l.split_once(':').map(|(_, v)| v.trim().to_string()))
    });
    json!({
        "hostname": read("/proc/sys/kernel/hostname"),
        "kernel": read("/proc/sys/kernel/osrelease"),
        "cpus": std::thread::available_parallelism().map(|n| n.get()).ok(),
        "cpu_model": cpu_model,
        "memory_kib": mem_kib,
        "arch": std::env::consts::ARCH,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scenarios_default_to_the_sibling_folder_of_profiles() {
        assert_eq!(
            default_scenarios_dir(Path::new("profiles/quick.yaml")),
            Path::new("profiles/../scenarios")
        );
        assert_eq!(
            default_scenarios_dir(Path::new("quick.yaml")),
            Path::new("./../scenarios")
        );
    }
}
