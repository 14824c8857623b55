//! The service's own database: a bounded pool and embedded migrations.

use std::time::Duration;

use anyhow::Context;
use sqlx::{migrate::Migrator, postgres::PgPoolOptions, PgPool};
use txlab_api::Role;

/// A pooled connection used within this long is handed out without a
/// liveness check first.
const TRUSTED_WHILE_BUSY: Duration = Duration::from_millis(500);

pub async fn connect(url: &str) -> anyhow::Result<PgPool> {
    PgPoolOptions::new()
        .max_connections(16)
        .acquire_timeout(Duration::from_secs(5))
        // sqlx checks every connection it hands out with a round trip to
        // the server, a wake-up of a PostgreSQL backend for each of the
        // dozen or so acquires a checkout makes. Under load connections
        // come back within milliseconds; check only those idle a while (a
        // server restart meanwhile then fails one use of each connection
        // still open, which the callers' retries absorb).
        .test_before_acquire(false)
        .before_acquire(|conn, meta| {
            Box::pin(async move {
                if meta.idle_for >= TRUSTED_WHILE_BUSY {
                    sqlx::Connection::ping(conn).await?;
                }
                Ok(true)
            })
        })
        .connect(url)
        .await
        .context("connecting to the service database (DATABASE_URL)")
}

/// Runs the common migrations (outbox, inbox, fault log), then the role's
/// own. Both sets share one history table, so each tolerates the other's
/// entries.
pub async fn migrate(pool: &PgPool, role: Role) -> anyhow::Result<()> {
    let own: Migrator = match role {
        Role::Order => sqlx::migrate!("migrations/order"),
        Role::Payment => sqlx::migrate!("migrations/payment"),
        Role::Inventory => sqlx::migrate!("migrations/inventory"),
        Role::Shipping => sqlx::migrate!("migrations/shipping"),
        Role::Notification => sqlx::migrate!("migrations/notification"),
    };
    for mut m in [sqlx::migrate!("migrations/common"), own] {
        m.set_ignore_missing(true);
        m.run(pool).await.context("running migrations")?;
    }
    Ok(())
}

/// The advisory locks the services take, in the two-key form
/// (`pg_advisory_lock(int, int)`), whose first key names the use; sqlx's
/// migrator takes single-key locks, which never collide with these.
pub mod locks {
    /// Held by each order-service replica for its life, second key = its
    /// driver key: whoever holds it drives the orders marked with that key.
    pub const ORDER_DRIVERS: i32 = 0x7478_0001;
    /// Held by the participant replica resolving in-doubt branches.
    pub const IN_DOUBT_RECOVERY: i32 = 0x7478_0002;
}

/// Whether `e` is a unique violation of the named constraint: how a racing
/// duplicate surfaces, to be turned into a domain outcome by the caller.
pub fn is_unique_violation(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(d) if d.is_unique_violation())
}

/// SQLSTATE 55P03: a lock was not granted within `lock_timeout`.
pub fn is_lock_timeout(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(d) if d.code().as_deref() == Some("55P03"))
}

/// SQLSTATE 42704: the named prepared transaction does not exist.
pub fn is_unknown_gid(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(d) if d.code().as_deref() == Some("42704"))
}

/// The two-phase commands that name a branch by its gid, which PostgreSQL
/// takes only as a literal.
#[derive(Debug, Clone, Copy)]
pub enum OnBranch {
    Prepare,
    Commit,
    Rollback,
}

/// Runs `what` on the branch `gid` as a simple query: one round trip, and
/// no prepared statement. Through `sqlx::query` each gid's text became a
/// statement of its own: parsed and described in a round trip first, then
/// held in the connection's statement cache (and on the server) until
/// evicted by later gids, each eviction one more message to close it.
pub async fn on_branch<'c, E>(conn: E, what: OnBranch, gid: &str) -> sqlx::Result<()>
where
    E: sqlx::Executor<'c, Database = sqlx::Postgres>,
{
    let command = match what {
        OnBranch::Prepare => "PREPARE TRANSACTION",
        OnBranch::Commit => "COMMIT PREPARED",
        OnBranch::Rollback => "ROLLBACK PREPARED",
    };
    let sql = format!("{command} '{}'", gid.replace('\'', "''"));
    conn.execute(sql.as_str()).await.map(drop)
}

/// Rolls back every prepared 2PC branch of the lab in this database: the
/// lab's reset ends a cell, and a branch left in doubt would otherwise keep
/// its row locks (and block the reset's TRUNCATE) for ever. Returns how many.
pub async fn roll_back_lab_branches(pool: &sqlx::PgPool) -> sqlx::Result<usize> {
    let gids: Vec<String> = sqlx::query_scalar(
        "SELECT gid FROM pg_prepared_xacts WHERE gid LIKE 'txlab\\_%' AND database = current_database()",
    )
    .fetch_all(pool)
    .await?;
    let mut rolled_back = 0;
    for gid in gids {
        // A branch resolved meanwhile is not an error.
        match on_branch(pool, OnBranch::Rollback, &gid).await {
            Ok(()) => rolled_back += 1,
            Err(e) if is_unknown_gid(&e) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(rolled_back)
}

#[cfg(test)]
mod tests {
    use txlab_api::order::OrderState;
    use txlab_api::participant::{LedgerOp, RecordState};
    use txlab_api::{Step, TxMode};
    use txlab_tx::saga::{Compensation, Forward};
    use txlab_tx::two_phase::{Decision, Phase2, Vote};

    /// Every migration, concatenated, with runs of whitespace made one space.
    fn migrations() -> String {
        let mut all = String::new();
        for dir in [
            "common",
            "order",
            "payment",
            "inventory",
            "shipping",
            "notification",
        ] {
            let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("migrations")
                .join(dir);
            for entry in std::fs::read_dir(path).unwrap() {
                all += &std::fs::read_to_string(entry.unwrap().path()).unwrap();
            }
        }
        all.split_whitespace().collect::<Vec<_>>().join(" ")
    }

    /// The quoted values of the CHECK (... IN (...)) that follows `marker`.
    fn check_list<'a>(sql: &'a str, marker: &str) -> Vec<&'a str> {
        let from = sql
            .find(marker)
            .unwrap_or_else(|| panic!("no `{marker}` in the migrations"));
        let list = &sql[from..];
        let open = list.find(" IN (").expect("an IN list") + 5;
        let close = open + list[open..].find(')').expect("a closing parenthesis");
        list[open..close]
            .split(',')
            .map(|v| v.trim().trim_matches('\''))
            .collect()
    }

    #[test]
    fn every_check_constraint_lists_exactly_its_enums_values() {
        let sql = migrations();
        let cases: Vec<(&str, Vec<&str>)> = vec![
            ("orders_state_known", OrderState::texts(&OrderState::ALL)),
            ("orders_method_known", TxMode::texts(&TxMode::ALL)),
            ("saga_steps_forward_known", Forward::texts(&Forward::ALL)),
            (
                "saga_steps_compensation_known",
                Compensation::texts(&Compensation::ALL),
            ),
            ("saga_steps_name_known", Step::texts(&Step::ALL)),
            ("tx_branches_vote_known", Vote::texts(&Vote::ALL)),
            ("tx_branches_phase2_known", Phase2::texts(&Phase2::ALL)),
            ("tx_branches_name_known", Step::texts(&Step::ALL)),
            ("tx_decisions_decision_known", Decision::texts(&Decision::ALL)),
            ("op TEXT NOT NULL CHECK", LedgerOp::texts(&LedgerOp::ALL)),
        ];
        for (marker, want) in cases {
            assert_eq!(check_list(&sql, marker), want, "{marker}");
        }
        // Records never store `prepared` (it is only ever a reply).
        let stored: Vec<&str> = RecordState::ALL
            .iter()
            .filter(|s| **s != RecordState::Prepared)
            .map(|s| s.as_str())
            .collect();
        for table in ["payments", "reservations", "shipments"] {
            assert_eq!(
                check_list(&sql, &format!("{table}_state_known")),
                stored,
                "{table}"
            );
        }
    }
}
