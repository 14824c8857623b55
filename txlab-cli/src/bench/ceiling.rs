//! The database's commit ceiling: pgbench's simple-update script (`-N`:
//! one UPDATE, one SELECT, one INSERT, one durable commit per transaction)
//! against the lab's own PostgreSQL, with the lab's settings, at several
//! client counts. A method that needs W durable commits per checkout can
//! at best do ceiling / W checkouts per second on this server.

use std::path::Path;

use anyhow::{bail, Context};
use serde::Serialize;
use sqlx::{Connection, PgConnection};

/// Database pgbench gets to itself.
const DATABASE: &str = "txlab_pgbench";
/// pgbench's scale: 10 × 100 000 accounts, enough rows that clients rarely
/// wait for each other's row locks.
const SCALE: &str = "10";

/// Transactions per second at one client count.
#[derive(Debug, Clone, Serialize)]
pub struct Point {
    pub clients: u32,
    pub tps: f64,
}

/// Runs pgbench at each client count for `seconds` and returns its rates.
pub async fn measure(
    bin_dir: &Path,
    admin_url: &str,
    clients: &[u32],
    seconds: u32,
) -> anyhow::Result<Vec<Point>> {
    let mut conn = PgConnection::connect(admin_url).await?;
    sqlx::query(&format!("DROP DATABASE IF EXISTS {DATABASE}"))
        .execute(&mut conn)
        .await?;
    sqlx::query(&format!("CREATE DATABASE {DATABASE}"))
        .execute(&mut conn)
        .await?;
    let url = crate::platform::local::database_url(admin_url, DATABASE);
    let pgbench = bin_dir.join("pgbench");
    pgbench_run(&pgbench, &["-i", "-q", "-s", SCALE, &url]).await?;
    let mut out = Vec::new();
    for &c in clients {
        let text = pgbench_run(
            &pgbench,
            &[
                "-N",
                "-n",
                "-M",
                "prepared",
                "-c",
                &c.to_string(),
                "-j",
                "2",
                "-T",
                &seconds.to_string(),
                &url,
            ],
        )
        .await?;
        let tps = parse_tps(&text).with_context(|| format!("no tps in pgbench's output:\n{text}"))?;
        out.push(Point { clients: c, tps });
    }
    sqlx::query(&format!("DROP DATABASE IF EXISTS {DATABASE}"))
        .execute(&mut conn)
        .await?;
    Ok(out)
}

async fn pgbench_run(pgbench: &Path, args: &[&str]) -> anyhow::Result<String> {
    let out = tokio::process::Command::new(pgbench)
        .args(args)
        .output()
        .await
        .with_context(|| format!("running {}", pgbench.display()))?;
    if !out.status.success() {
        bail!(
            "pgbench {} failed ({}): {}",
            args.first().unwrap_or(&""),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `tps = 2971.123456 (without initial connection time)`
fn parse_tps(text: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with("tps = ") && l.contains("without initial connection time"))?
        .split_whitespace()
        .nth(2)?
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rate_without_connection_time_is_read() {
        let text = "number of failed transactions: 0 (0.000%)\n\
                    latency average = 5.123 ms\n\
                    initial connection time = 12.5 ms\n\
                    tps = 2971.123456 (without initial connection time)\n";
        assert_eq!(parse_tps(text), Some(2971.123456));
        assert_eq!(parse_tps("tps = x"), None);
    }
}
