//! Counting the transactions a stretch of work cost PostgreSQL.
//!
//! Durable commits are counted exactly from the write-ahead log between
//! two positions (`pg_waldump --stats=record`): every COMMIT, PREPARE,
//! COMMIT PREPARED and ROLLBACK PREPARED record is one flush to disk, which
//! is what bounds a server's commit rate (and what pgbench's write
//! transactions cost). Read-only transactions leave no commit record; they
//! are counted, per database, from `pg_stat_database`, whose counters
//! backends publish with a delay of up to [`STATS_DELAY`]. Statements —
//! each a round trip from a service (or the driver's status reads) to the
//! database — are counted per database from pg_stat_statements when the
//! server has it loaded.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context};
use serde::Serialize;
use sqlx::{Connection, PgConnection};

/// How long an idle backend may keep its statistics to itself (PostgreSQL
/// 15 flushes them at most every second while busy, after 10 s when idle).
pub const STATS_DELAY: Duration = Duration::from_secs(11);

/// The transaction record types that force a flush of the log.
const FLUSHED: [&str; 4] = ["COMMIT", "PREPARE", "COMMIT_PREPARED", "ABORT_PREPARED"];

/// Where the counters are read from.
#[derive(Debug, Clone)]
pub struct Server {
    pub admin_url: String,
    /// The cluster's `pg_wal` directory.
    pub wal_dir: PathBuf,
    /// PostgreSQL's bin directory (for pg_waldump).
    pub bin_dir: PathBuf,
}

/// The counters at one moment.
#[derive(Debug, Clone)]
pub struct Mark {
    lsn: String,
    /// Committed + rolled back transactions per database.
    per_database: BTreeMap<String, i64>,
    /// Statements run per database, if pg_stat_statements is loaded.
    statements: Option<BTreeMap<String, i64>>,
}

/// Transactions between two marks.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Counted {
    /// Flushed transaction records, by type (COMMIT, PREPARE, ...).
    pub flushed: BTreeMap<String, u64>,
    /// Every transaction, read-only ones too, per database.
    pub all_per_database: BTreeMap<String, i64>,
    /// Statements per database (None without pg_stat_statements).
    pub statements_per_database: Option<BTreeMap<String, i64>>,
}

impl Counted {
    pub fn flushed_total(&self) -> u64 {
        self.flushed.values().sum()
    }
    pub fn all_total(&self) -> i64 {
        self.all_per_database.values().sum()
    }
    pub fn statements_total(&self) -> Option<i64> {
        self.statements_per_database.as_ref().map(|s| s.values().sum())
    }
}

impl Server {
    /// Checkpoints (so the log between the marks is not recycled under
    /// us) and reads the counters.
    pub async fn mark(&self) -> anyhow::Result<Mark> {
        let mut conn = PgConnection::connect(&self.admin_url).await?;
        sqlx::query("CHECKPOINT").execute(&mut conn).await?;
        // The statements' view, once; it answers only where the module is
        // loaded, so a failure here just leaves that count out.
        let _ = sqlx::query("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
            .execute(&mut conn)
            .await;
        self.read(&mut conn).await
    }

    async fn read(&self, conn: &mut PgConnection) -> anyhow::Result<Mark> {
        let lsn: String = sqlx::query_scalar("SELECT pg_current_wal_lsn()::text")
            .fetch_one(&mut *conn)
            .await?;
        let rows: Vec<(String, i64)> = sqlx::query_as(
            "SELECT datname, xact_commit + xact_rollback FROM pg_stat_database WHERE datname LIKE 'txlab_%'",
        )
        .fetch_all(&mut *conn)
        .await?;
        Ok(Mark {
            lsn,
            per_database: rows.into_iter().collect(),
            statements: statements(conn).await,
        })
    }

    /// What happened since `before`. Waits [`STATS_DELAY`] first so the
    /// per-database counters are complete.
    pub async fn since(&self, before: &Mark) -> anyhow::Result<Counted> {
        let mut conn = PgConnection::connect(&self.admin_url).await?;
        let lsn: String = sqlx::query_scalar("SELECT pg_current_wal_lsn()::text")
            .fetch_one(&mut conn)
            .await?;
        tokio::time::sleep(STATS_DELAY).await;
        let after = self.read(&mut conn).await?;
        let flushed = self.flushed_between(&before.lsn, &lsn).await?;
        Ok(Counted {
            flushed,
            all_per_database: growth(&before.per_database, &after.per_database),
            statements_per_database: before
                .statements
                .as_ref()
                .zip(after.statements.as_ref())
                .map(|(b, a)| growth(b, a)),
        })
    }

    async fn flushed_between(&self, from: &str, to: &str) -> anyhow::Result<BTreeMap<String, u64>> {
        let waldump = self.bin_dir.join("pg_waldump");
        let out = tokio::process::Command::new(&waldump)
            .arg("-p")
            .arg(&self.wal_dir)
            .args(["-s", from, "-e", to, "--stats=record"])
            .output()
            .await
            .with_context(|| format!("running {}", waldump.display()))?;
        if !out.status.success() {
            bail!(
                "pg_waldump failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(parse_record_stats(&String::from_utf8_lossy(&out.stdout)))
    }
}

/// How much each database's counter grew between two readings.
fn growth(before: &BTreeMap<String, i64>, after: &BTreeMap<String, i64>) -> BTreeMap<String, i64> {
    after
        .iter()
        .map(|(db, n)| (db.clone(), n - before.get(db).copied().unwrap_or(0)))
        .collect()
}

/// Statements run so far per lab database; None where pg_stat_statements
/// is not loaded (its view then fails).
async fn statements(conn: &mut PgConnection) -> Option<BTreeMap<String, i64>> {
    let rows: Vec<(String, i64)> = sqlx::query_as(
        "SELECT d.datname, sum(s.calls)::bigint FROM pg_stat_statements s \
         JOIN pg_database d ON d.oid = s.dbid WHERE d.datname LIKE 'txlab_%' GROUP BY 1",
    )
    .fetch_all(conn)
    .await
    .ok()?;
    Some(rows.into_iter().collect())
}

/// The flushed transaction records in pg_waldump's `--stats=record` table.
fn parse_record_stats(text: &str) -> BTreeMap<String, u64> {
    text.lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let kind = f.next()?.strip_prefix("Transaction/")?;
            let n = f.next()?.parse().ok()?;
            FLUSHED.contains(&kind).then(|| (kind.to_string(), n))
        })
        .collect()
}

/// The `pg_wal` directory of a data directory.
pub fn wal_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("pg_wal")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_flushed_transaction_records_are_counted() {
        let text = "\
Type                                           N      (%)          Record size      (%)
----                                           -      ---          -----------      ---
Heap/INSERT                                  120 ( 40.00)                 9000 ( 50.00)
Transaction/COMMIT                            90 ( 30.00)                 3000 ( 20.00)
Transaction/ABORT                              4 (  1.00)                  100 (  1.00)
Transaction/PREPARE                           30 ( 10.00)                 3000 ( 20.00)
Transaction/COMMIT_PREPARED                   30 ( 10.00)                 3000 ( 20.00)
                                        --------
Total                                        274";
        let got = parse_record_stats(text);
        assert_eq!(
            got,
            [("COMMIT", 90), ("COMMIT_PREPARED", 30), ("PREPARE", 30)]
                .into_iter()
                .map(|(k, v)| (k.to_string(), v))
                .collect()
        );
    }
}
