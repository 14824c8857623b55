//! The service's own database: a bounded pool and embedded migrations.

use std::time::Duration;

use anyhow::Context;
use sqlx::{migrate::Migrator, postgres::PgPoolOptions, PgPool};
use txlab_api::Role;

static ORDER: Migrator = sqlx::migrate!("migrations/order");
static PAYMENT: Migrator = sqlx::migrate!("migrations/payment");
static INVENTORY: Migrator = sqlx::migrate!("migrations/inventory");
static SHIPPING: Migrator = sqlx::migrate!("migrations/shipping");
static NOTIFICATION: Migrator = sqlx::migrate!("migrations/notification");

pub async fn connect(url: &str) -> anyhow::Result<PgPool> {
    PgPoolOptions::new()
        .max_connections(16)
        .acquire_timeout(Duration::from_secs(5))
        .connect(url)
        .await
        .context("connecting to the service database (DATABASE_URL)")
}

pub async fn migrate(pool: &PgPool, role: Role) -> anyhow::Result<()> {
    let migrator = match role {
        Role::Order => &ORDER,
        Role::Payment => &PAYMENT,
        Role::Inventory => &INVENTORY,
        Role::Shipping => &SHIPPING,
        Role::Notification => &NOTIFICATION,
    };
    migrator.run(pool).await.context("running migrations")
}

/// Whether `e` is a unique violation of the named constraint: how a racing
/// duplicate surfaces, to be turned into a domain outcome by the caller.
pub fn is_unique_violation(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(d) if d.is_unique_violation())
}
