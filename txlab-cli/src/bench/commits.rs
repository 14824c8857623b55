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
//! database — are counted per database and per statement from
//! pg_stat_statements when the server has it loaded, with the time the
//! server spent executing each.

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
    /// Each statement's use so far, if pg_stat_statements is loaded.
    statements: Option<BTreeMap<StatementKey, StatementUse>>,
}

/// A statement as pg_stat_statements tells them apart: its database and
/// the id of its normalised text.
type StatementKey = (String, i64);

/// What one statement (normalised: constants replaced by `$n`) cost.
#[derive(Debug, Clone, Default, Serialize)]
pub struct StatementUse {
    pub database: String,
    pub query: String,
    pub calls: i64,
    /// Time the server spent executing it, in ms (planning not included).
    pub exec_ms: f64,
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
    /// Every statement run at least once, most calls first (empty without
    /// pg_stat_statements).
    pub statements: Vec<StatementUse>,
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
        let statements = match (&before.statements, &after.statements) {
            (Some(b), Some(a)) => Some(statements_between(b, a)),
            _ => None,
        };
        Ok(Counted {
            flushed,
            all_per_database: growth(&before.per_database, &after.per_database),
            statements_per_database: statements.as_ref().map(|s| per_database(s)),
            statements: statements.unwrap_or_default(),
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

/// Each statement's use so far in the lab's databases; None where
/// pg_stat_statements is not loaded (its view then fails).
async fn statements(conn: &mut PgConnection) -> Option<BTreeMap<StatementKey, StatementUse>> {
    let rows: Vec<(String, i64, String, i64, f64)> = sqlx::query_as(
        "SELECT d.datname, coalesce(s.queryid, 0), min(s.query), sum(s.calls)::bigint, \
                sum(s.total_exec_time) \
         FROM pg_stat_statements s JOIN pg_database d ON d.oid = s.dbid \
         WHERE d.datname LIKE 'txlab_%' GROUP BY 1, 2",
    )
    .fetch_all(conn)
    .await
    .ok()?;
    Some(
        rows.into_iter()
            .map(|(database, id, query, calls, exec_ms)| {
                let key = (database.clone(), id);
                (
                    key,
                    StatementUse {
                        database,
                        query,
                        calls,
                        exec_ms,
                    },
                )
            })
            .collect(),
    )
}

/// What each statement cost between two readings, most calls first.
/// A statement the view evicted in between (it keeps the most used few
/// thousand) counts from zero.
fn statements_between(
    before: &BTreeMap<StatementKey, StatementUse>,
    after: &BTreeMap<StatementKey, StatementUse>,
) -> Vec<StatementUse> {
    let mut grown: Vec<StatementUse> = after
        .iter()
        .filter_map(|(key, a)| {
            let (calls, exec_ms) = before.get(key).map_or((0, 0.0), |b| (b.calls, b.exec_ms));
            (a.calls > calls).then(|| StatementUse {
                calls: a.calls - calls,
                exec_ms: a.exec_ms - exec_ms,
                ..a.clone()
            })
        })
        .collect();
    grown.sort_by(|a, b| b.calls.cmp(&a.calls).then(b.exec_ms.total_cmp(&a.exec_ms)));
    grown
}

/// Statements per database.
fn per_database(statements: &[StatementUse]) -> BTreeMap<String, i64> {
    let mut sums = BTreeMap::new();
    for s in statements {
        *sums.entry(s.database.clone()).or_insert(0) += s.calls;
    }
    sums
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
    fn statements_count_what_grew_between_readings() {
        let usage = |db: &str, id: i64, calls: i64, exec_ms: f64| {
            let u = StatementUse {
                database: db.into(),
                query: format!("q{id}"),
                calls,
                exec_ms,
            };
            ((db.to_string(), id), u)
        };
        let before: BTreeMap<_, _> =
            [usage("txlab_order", 1, 10, 5.0), usage("txlab_order", 2, 4, 1.0)].into();
        let after: BTreeMap<_, _> = [
            usage("txlab_order", 1, 30, 9.0),
            usage("txlab_order", 2, 4, 1.0),
            usage("txlab_payment", 1, 7, 2.0),
        ]
        .into();
        let grown = statements_between(&before, &after);
        let seen: Vec<(&str, &str, i64)> = grown
            .iter()
            .map(|s| (s.database.as_str(), s.query.as_str(), s.calls))
            .collect();
        // Most calls first; an unchanged statement is left out; one new
        // since the first reading counts from zero.
        assert_eq!(seen, [("txlab_order", "q1", 20), ("txlab_payment", "q1", 7)]);
        assert_eq!(grown[0].exec_ms, 4.0);
        assert_eq!(
            per_database(&grown),
            [("txlab_order".to_string(), 20), ("txlab_payment".to_string(), 7)].into()
        );
    }

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
