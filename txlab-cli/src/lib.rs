//! txlab: a lab for distributed transactions.
//!
//! A run flows through these rooms, in order:
//! - [`spec`]: profiles and scenarios (YAML) → a validated [`spec::Plan`].
//! - [`platform`]: where the services run ([`platform::local`] by default).
//! - [`load`]: open-loop arrivals, HDR latencies, a per-second series.
//! - [`audit`]: after quiesce, were money, stock and slots all accounted for?
//! - [`metrics`]: the services' event counters (retries, compensations...).
//! - [`results`]: the self-describing run directory.
//! - [`report`]: tables for the terminal and CSV.
//! - [`compare`]: two runs, cell by cell, with statistics over repetitions.
//! - [`bench`]: the performance benchmarks (`txlab bench`).
//! - [`chaos`]: Chaos Mesh faults, read once for both platforms.
//! - [`proxy`]: the local platform's TCP proxy, which enforces network chaos.
//! - [`lab`]: a local lab kept running between commands (`txlab up`).
//!
//! [`commands`] holds one file per CLI command; `main.rs` only calls [`main`].

pub mod audit;
pub mod bench;
pub mod chaos;
pub mod commands;
pub mod compare;
pub mod lab;
pub mod load;
pub mod metrics;
pub mod platform;
pub mod proxy;
pub mod report;
pub mod results;
pub mod spec;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// A lab for distributed transactions: one checkout, five transaction
/// methods, measured under load and failure, audited for lost or doubled money.
#[derive(Debug, Parser)]
#[command(name = "txlab", version, propagate_version = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a profile's matrix of cells and write a results directory.
    Run(commands::run::RunArgs),
    /// Print the summary table of a finished run and write its CSVs, charts and HTML page.
    Report(commands::report::ReportArgs),
    /// Compare a run with a baseline run, cell by cell, over their
    /// repetitions; exits 5 on a regression.
    Compare(commands::compare::CompareArgs),
    /// Print the JSON Schema of profile or scenario files (or write both).
    Schema(commands::schema::SchemaArgs),
    /// Find each method's knee, its commits per checkout, the database's
    /// ceiling and its behaviour under overload (docs/performance.md).
    Bench(commands::bench::BenchArgs),
    /// Start a local lab in the background (every link through the proxy)
    /// and keep it running for `txlab chaos` and your own requests.
    Up(commands::lab::UpArgs),
    /// Stop the lab `txlab up` started, and everything it started.
    Down(commands::lab::DownArgs),
    /// Switch Chaos Mesh objects on and off on a running lab (docs/chaos.md).
    Chaos(commands::chaos::ChaosArgs),
    /// A stub of the order API that decides every order at once (for `bench --parts driver`).
    #[command(hide = true)]
    Stub {
        #[arg(long)]
        port: u16,
    },
}

/// Sets up logging and runs the command; errors are printed with their causes.
pub async fn main(cli: Cli) -> ExitCode {
    let filter = tracing_subscriber::EnvFilter::try_from_env("TXLAB_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(filter)
        .try_init();
    let result = match cli.command {
        Command::Run(args) => commands::run::execute(args).await,
        Command::Report(args) => commands::report::execute(args).map(|()| ExitCode::SUCCESS),
        Command::Compare(args) => commands::compare::execute(args),
        Command::Schema(args) => commands::schema::execute(args),
        Command::Bench(args) => commands::bench::execute(args).await,
        Command::Up(args) => commands::lab::up(args).await,
        Command::Down(args) => commands::lab::down(args).await,
        Command::Chaos(args) => commands::chaos::execute(args).await,
        Command::Stub { port } => bench::driver::serve_stub(port).await.map(|()| ExitCode::SUCCESS),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("txlab: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
