//! The service's own database: a bounded pool and embedded migrations.

use std::time::Duration;

use anyhow::Context;
use sqlx::{migrate::Migrator, postgres::PgPoolOptions, PgPool};
use txlab_api::Role;

pub async fn connect(url: &str) -> anyhow::Result<PgPool> {
    PgPoolOptions::new()
        .max_connections(16)
        .acquire_timeout(Duration::from_secs(5))
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

/// Whether `e` is a unique violation of the named constraint: how a racing
/// duplicate surfaces, to be turned into a domain outcome by the caller.
pub fn is_unique_violation(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(d) if d.is_unique_violation())
}
