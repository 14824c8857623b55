//! `txlab up` and `txlab down`: a local lab kept running between commands,
//! every link through the proxy so `txlab chaos` can act on it.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use tokio::sync::{watch, Mutex};
use txlab_api::TxMode;

use crate::lab::control::{self, Control};
use crate::lab::state::{alive, DEFAULT_DIR};
use crate::lab::LabState;
use crate::platform::local::{kill_group, log_tail, LocalOptions, LocalPlatform};
use crate::platform::Platform;
use crate::spec::{SeedData, SeedPlan};

#[derive(Debug, clap::Args)]
pub struct UpArgs {
    /// The transaction method the services run.
    #[arg(long, default_value = "saga_orch")]
    pub method: TxMode,
    /// Processes per service (1 to 3), balanced by the proxy.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=txlab_api::event::TOPIC_PARTITIONS as i64))]
    pub replicas: u32,
    /// Where the lab keeps its state (lab.json), its log and the services' logs.
    #[arg(long, default_value = DEFAULT_DIR, env = "TXLAB_STATE_DIR")]
    pub state_dir: PathBuf,
    /// Run the lab in this process until Ctrl-C or `txlab down`, instead of
    /// in the background.
    #[arg(long)]
    pub foreground: bool,
}

#[derive(Debug, clap::Args)]
pub struct DownArgs {
    #[arg(long, default_value = DEFAULT_DIR, env = "TXLAB_STATE_DIR")]
    pub state_dir: PathBuf,
}

/// How long `txlab up` waits for the background lab to be ready.
const START_TIMEOUT: Duration = Duration::from_secs(120);

pub async fn up(args: UpArgs) -> anyhow::Result<ExitCode> {
    let dir = &args.state_dir;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    if let Some(lab) = LabState::find(dir)? {
        bail!(
            "a lab is already up with its state in {} (pid {}, {}); `txlab down` first",
            dir.display(),
            lab.pid,
            lab.method
        );
    }
    LabState::remove(dir);
    if args.foreground {
        return serve(&args).await.map(|()| ExitCode::SUCCESS);
    }
    let lab = start_in_background(&args).await?;
    println!("lab up (pid {}, {}):", lab.pid, lab.method);
    println!("  orders:  POST {}/orders  (through the proxy)", lab.order_url);
    println!("  chaos:   txlab chaos on chaos/latency-10ms.yaml | off [name] | status");
    println!("  stop:    txlab down");
    println!("  log:     {}", lab.log.display());
    Ok(ExitCode::SUCCESS)
}

/// Starts `txlab up --foreground` detached (its own process group, output
/// to the lab's log) and waits until it has written its state.
async fn start_in_background(args: &UpArgs) -> anyhow::Result<LabState> {
    let dir = &args.state_dir;
    let log_path = dir.join("lab.log");
    let log = std::fs::File::create(&log_path).with_context(|| format!("creating {}", log_path.display()))?;
    let exe = std::env::current_exe().context("finding the txlab binary")?;
    let mut cmd = std::process::Command::new(exe);
    cmd.arg("up")
        .arg("--foreground")
        .args(["--method", args.method.as_str()])
        .args(["--replicas", &args.replicas.to_string()])
        .arg("--state-dir")
        .arg(dir)
        .stdin(std::process::Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log);
    // Its own group: a Ctrl-C at this terminal later does not reach it.
    std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
    let mut child = cmd.spawn().context("starting the lab")?;
    let deadline = tokio::time::Instant::now() + START_TIMEOUT;
    loop {
        if let Some(lab) = LabState::find(dir)?.filter(|l| l.pid == child.id()) {
            return Ok(lab);
        }
        if let Some(status) = child.try_wait()? {
            bail!(
                "the lab stopped while starting ({status}); its log {} says:\n{}",
                log_path.display(),
                log_tail(&log_path, 15)
            );
        }
        if tokio::time::Instant::now() >= deadline {
            signal(child.id(), libc::SIGTERM);
            bail!(
                "the lab was not up within {} s; its log {} says:\n{}",
                START_TIMEOUT.as_secs(),
                log_path.display(),
                log_tail(&log_path, 15)
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Signals the lab process, which leads a process group of its own (its
/// services, PostgreSQL, tansu and reaper each lead theirs).
fn signal(pid: u32, sig: i32) {
    kill_group(pid as i32, sig);
}

/// The lab itself: platform up, services seeded, control API served until
/// asked to stop (POST /shutdown, Ctrl-C or SIGTERM), then everything down.
async fn serve(args: &UpArgs) -> anyhow::Result<()> {
    let dir = &args.state_dir;
    let mut platform = LocalPlatform::start(LocalOptions {
        log_dir: dir.join("logs"),
        proxy: true,
        ..Default::default()
    })
    .await?;
    let listener = match prepare(&mut platform, args.method, args.replicas).await {
        Ok(l) => l,
        Err(e) => {
            let _ = platform.shutdown().await;
            return Err(e);
        }
    };
    let endpoints = platform.endpoints();
    let (stop, mut stopped) = watch::channel(false);
    let control_url = format!("http://{}", listener.local_addr()?);
    let state = LabState::new(control_url, args.method.as_str(), &endpoints, dir.join("lab.log"))?;
    let control = Arc::new(Control {
        platform: Mutex::new(Some(platform)),
        method: args.method.to_string(),
        order_url: state.order_url.clone(),
        stop,
    });
    state.write(dir)?;
    eprintln!(
        "txlab: lab up (pid {}), control API at {}",
        state.pid, state.control
    );
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let served = axum::serve(listener, control::router(control.clone()))
        .with_graceful_shutdown(async move {
            tokio::select! {
                _ = stopped.wait_for(|s| *s) => {}
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        })
        .await;
    LabState::remove(dir);
    eprintln!("txlab: lab stopping");
    if let Some(platform) = control.platform.lock().await.take() {
        platform.shutdown().await?;
    }
    served.context("serving the control API")
}

/// Deploys `method`, seeds the services, and binds the control API's port.
async fn prepare(
    platform: &mut LocalPlatform,
    method: TxMode,
    replicas: u32,
) -> anyhow::Result<tokio::net::TcpListener> {
    let endpoints = platform.deploy(method, replicas).await?;
    let seed = SeedPlan::new(&SeedData::default());
    let epoch = format!("lab/{}", std::process::id());
    crate::commands::run::reset_and_seed(
        &crate::commands::run::admin_client()?,
        &endpoints,
        &epoch,
        &seed.seed,
    )
    .await?;
    tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .context("binding the control API")
}

pub async fn down(args: DownArgs) -> anyhow::Result<ExitCode> {
    let Some(lab) = LabState::find(&args.state_dir)? else {
        println!("no lab is up with its state in {}", args.state_dir.display());
        return Ok(ExitCode::SUCCESS);
    };
    if let Err(e) = control::call(&lab, reqwest::Method::POST, "/shutdown", None).await {
        eprintln!("txlab: {e:#}; stopping it with SIGTERM");
        signal(lab.pid, libc::SIGTERM);
    }
    // It stops its services and infrastructure before exiting.
    for (wait, then) in [(60, Some(libc::SIGTERM)), (10, Some(libc::SIGKILL)), (5, None)] {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(wait);
        while alive(lab.pid) && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        if !alive(lab.pid) {
            LabState::remove(&args.state_dir);
            println!("lab down (pid {})", lab.pid);
            return Ok(ExitCode::SUCCESS);
        }
        if let Some(sig) = then {
            signal(lab.pid, sig);
        }
    }
    bail!("the lab (pid {}) did not stop", lab.pid)
}
