//! A throw-away PostgreSQL cluster: initdb into the scratch directory, then
//! the postmaster as a contained child on a free loopback port.

use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Context};
use sqlx::{Connection, PgConnection};

use super::process::{contain, free_port, log_sink, log_tail, RunAs, Supervised};
use super::reaper::Reaper;

/// Server settings the lab depends on; recorded in run.json.
pub const SETTINGS: [(&str, &str); 4] = [
    ("max_connections", "300"),
    // Room for the two-phase-commit engine's prepared transactions.
    ("max_prepared_transactions", "200"),
    ("shared_buffers", "128MB"),
    ("log_min_messages", "warning"),
];

/// Per-statement counters, loaded when the server has the module: the
/// bench counts the statements (round trips) a checkout costs with them.
/// Without it the lab runs the same and that count is left out.
pub const STATEMENT_STATS: (&str, &str) = ("shared_preload_libraries", "pg_stat_statements");

/// Whether the PostgreSQL in `bin` ships pg_stat_statements.
async fn has_statement_stats(bin: &Path) -> bool {
    let Ok(out) = tokio::process::Command::new(bin.join("pg_config"))
        .arg("--pkglibdir")
        .output()
        .await
    else {
        return false;
    };
    let lib = String::from_utf8_lossy(&out.stdout).trim().to_string();
    out.status.success() && Path::new(&lib).join("pg_stat_statements.so").exists()
}

/// The data directory's name inside the scratch directory.
pub const DATA_DIR: &str = "pgdata";

pub struct Postgres {
    pub proc: Supervised,
    pub admin_url: String,
    /// Whether [`STATEMENT_STATS`] is loaded.
    pub statement_stats: bool,
}

async fn run_checked(what: &str, cmd: &mut tokio::process::Command) -> anyhow::Result<()> {
    let out = cmd.output().await.with_context(|| format!("running {what}"))?;
    if !out.status.success() {
        bail!(
            "{what} failed ({}):\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

impl Postgres {
    pub async fn start(
        bin: &Path,
        scratch: &Path,
        log: &Path,
        run_as: Option<&RunAs>,
        reaper: &Reaper,
    ) -> anyhow::Result<Postgres> {
        let data = scratch.join(DATA_DIR);
        std::fs::create_dir_all(&data).with_context(|| format!("creating {}", data.display()))?;
        if let Some(u) = run_as {
            std::os::unix::fs::chown(&data, Some(u.uid), Some(u.gid))
                .with_context(|| format!("giving {} to user {}", data.display(), u.name))?;
        }
        let mut initdb = tokio::process::Command::new(bin.join("initdb"));
        initdb
            .args(["-D"])
            .arg(&data)
            .args([
                "-U",
                "txlab",
                "-A",
                "trust",
                "-E",
                "UTF8",
                "--no-locale",
                "--no-sync",
                "--no-instructions",
            ])
            .current_dir(scratch);
        contain(&mut initdb, run_as);
        run_checked("initdb", &mut initdb).await?;

        let port = free_port()?;
        let mut cmd = tokio::process::Command::new(bin.join("postgres"));
        cmd.arg("-D").arg(&data).args(["-p", &port.to_string()]);
        cmd.args([
            "-c",
            "listen_addresses=127.0.0.1",
            "-c",
            "unix_socket_directories=",
        ]);
        let statement_stats = has_statement_stats(bin).await;
        let (k, v) = STATEMENT_STATS;
        for (k, v) in SETTINGS.into_iter().chain(statement_stats.then_some((k, v))) {
            cmd.arg("-c").arg(format!("{k}={v}"));
        }
        let (out, err) = log_sink(log)?;
        cmd.stdout(out).stderr(err).current_dir(scratch);
        contain(&mut cmd, run_as);
        let mut proc = Supervised::spawn("postgres", &mut cmd, reaper)?;
        let admin_url = format!("postgres://txlab@127.0.0.1:{port}/postgres");
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = proc.exited() {
                bail!(
                    "postgres exited during start-up ({status}); its log says:\n{}",
                    log_tail(log, 15)
                );
            }
            match PgConnection::connect(&admin_url).await {
                Ok(c) => {
                    let _ = c.close().await;
                    break;
                }
                Err(e) if tokio::time::Instant::now() >= deadline => {
                    return Err(e).context(format!(
                        "postgres did not accept connections within 30 s; log:\n{}",
                        log_tail(log, 15)
                    ));
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
        Ok(Postgres {
            proc,
            admin_url,
            statement_stats,
        })
    }
}
