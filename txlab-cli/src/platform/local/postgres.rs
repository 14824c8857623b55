//! A throw-away PostgreSQL cluster: initdb into the scratch directory, then
//! the postmaster as a contained child on a free loopback port.

use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Context};
use sqlx::{Connection, PgConnection};
use txlab_api::Role;

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

/// The data directory's name inside the scratch directory.
pub const DATA_DIR: &str = "pgdata";

pub struct Postgres {
    pub proc: Supervised,
    pub admin_url: String,
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
        for (k, v) in SETTINGS {
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
        Ok(Postgres { proc, admin_url })
    }
}

/// The database each service owns, on a server reached by `admin_url`.
pub fn database_name(role: Role) -> String {
    format!("txlab_{role}")
}

/// `admin_url` with its database replaced by `db`, query string kept.
pub fn database_url(admin_url: &str, db: &str) -> String {
    let (base, query) = match admin_url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (admin_url, None),
    };
    let authority_end = base.find("://").map(|i| i + 3).unwrap_or(0);
    let root = match base[authority_end..].find('/') {
        Some(i) => &base[..authority_end + i],
        None => base,
    };
    match query {
        Some(q) => format!("{root}/{db}?{q}"),
        None => format!("{root}/{db}"),
    }
}

/// Creates each service's database unless it exists.
pub async fn create_databases(admin_url: &str) -> anyhow::Result<()> {
    let mut conn = PgConnection::connect(admin_url)
        .await
        .with_context(|| format!("connecting to PostgreSQL at {}", redact(admin_url)))?;
    for role in Role::ALL {
        let name = database_name(role);
        let exists: Option<i32> = sqlx::query_scalar("SELECT 1 FROM pg_database WHERE datname = $1")
            .bind(&name)
            .fetch_optional(&mut conn)
            .await?;
        if exists.is_none() {
            // Names come from our own fixed set, never from input.
            sqlx::query(&format!("CREATE DATABASE \"{name}\""))
                .execute(&mut conn)
                .await
                .with_context(|| format!("creating database {name}"))?;
        }
    }
    Ok(())
}

/// A URL with its password hidden, for messages.
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.find('@')) {
        (Some(s), Some(at)) if at > s => {
            let creds = &url[s + 3..at];
            match creds.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..s + 3], &url[at..]),
                None => url.to_string(),
            }
        }
        _ => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn database_urls_swap_only_the_database() {
        assert_eq!(
            database_url("postgres://u@h:5/postgres", "txlab_order"),
            "postgres://u@h:5/txlab_order"
        );
        assert_eq!(database_url("postgres://u@h:5", "d"), "postgres://u@h:5/d");
        assert_eq!(
            database_url("postgres://u:p@h/x?sslmode=disable", "d"),
            "postgres://u:p@h/d?sslmode=disable"
        );
    }

    #[test]
    fn passwords_are_hidden_in_messages() {
        assert_eq!(redact("postgres://u:secret@h/x"), "postgres://u:***@h/x");
        assert_eq!(redact("postgres://u@h/x"), "postgres://u@h/x");
    }
}
