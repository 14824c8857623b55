//! Which order-service replica drives which transaction.
//!
//! Any replica may take an order's POST, its cancel or a participant's
//! question about it, but only one may run its engine (saga orchestrator,
//! two-phase coordinator) at a time: two engines of one order could
//! disagree, one compensating what the other confirms.
//!
//! Each replica registers at start: a key from `order_driver_keys`, and the
//! advisory lock (`ORDER_DRIVERS`, key) held on a session of its own for as
//! long as it lives. An order's `driver` column names the replica whose
//! engine runs it; the replica that takes the POST writes its own key with
//! the order, so the happy path costs no extra write.
//!
//! - Takeover: every [`RECONCILE`] (and at start) a replica claims the open
//!   orders whose driver holds no lock any more — a killed replica's
//!   session ends with its process, and the lock with it — and drives them.
//!   It also drives its own open orders that no engine runs here (a
//!   cancel whose wake-up was lost, an engine stopped by an error).
//! - Fencing: every engine write locks the order row and checks that its
//!   driver is still this replica, in the statement that writes the marks
//!   (`store::write_marks_fenced`) or, with nothing to write, on its own
//!   ([`fence`]), so a replica that lost its session, and with it its
//!   orders, stops their engines at their next write instead of racing the
//!   replica that took them over.
//! - Wake-ups: the same session LISTENs on [`CHANNEL`]: `d:<id>` (an order
//!   was decided somewhere: wake the long-polls waiting here; sent only
//!   when the service runs several replicas) and `l:<id>` (a cancel: the
//!   order's driver looks at it again).

use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use sqlx::postgres::PgListener;
use sqlx::{PgConnection, PgPool};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use txlab_api::order::OrderState;
use txlab_api::TxMode;
use uuid::Uuid;

use super::Orders;
use crate::db::locks::ORDER_DRIVERS;

/// The channel of the order service's wake-ups.
pub const CHANNEL: &str = "txlab_orders";

/// How often a replica looks for orders nobody alive drives.
const RECONCILE: Duration = Duration::from_millis(500);

/// The methods whose orders have an engine, and so a driver.
const DRIVEN: [TxMode; 3] = [TxMode::SagaOrch, TxMode::Twopc, TxMode::Tcc];

/// The driver keys whose replica is alive: their lock is held (in this
/// database; advisory locks are per database).
fn alive() -> String {
    format!(
        "SELECT objid::bigint FROM pg_locks WHERE locktype = 'advisory' AND objsubid = 2 AND granted \
         AND classid::bigint = {ORDER_DRIVERS} \
         AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"
    )
}

/// SQL: the order is someone else's and nobody alive drives it, where
/// `$me` is the placeholder of this replica's key.
fn orphaned(me: &str) -> String {
    format!(
        "driver IS DISTINCT FROM {me} AND (driver IS NULL OR driver::bigint NOT IN ({}))",
        alive()
    )
}

/// The order is driven by another replica now (it took the order over).
#[derive(Debug, thiserror::Error)]
#[error("order {0} is driven by another replica now")]
pub struct NotDriver(pub Uuid);

/// This replica's driver key (replaced if its session is lost).
#[derive(Debug)]
pub struct Driver(AtomicI32);

impl Driver {
    pub fn key(&self) -> i32 {
        self.0.load(Ordering::Relaxed)
    }
}

/// Registers this replica: a new key, its lock held on a session of its
/// own, which also listens for wake-ups.
pub async fn register(pool: &PgPool) -> anyhow::Result<(Driver, PgListener)> {
    let (key, session) = session(pool).await?;
    Ok((Driver(AtomicI32::new(key)), session))
}

async fn session(pool: &PgPool) -> anyhow::Result<(i32, PgListener)> {
    let mut session = PgListener::connect_with(pool).await?;
    // A lost session must not come back by itself: its lock would not.
    session.eager_reconnect(false);
    let key: i32 = sqlx::query_scalar("SELECT nextval('order_driver_keys')::int")
        .fetch_one(&mut session)
        .await?;
    sqlx::query("SELECT pg_advisory_lock($1, $2)")
        .bind(ORDER_DRIVERS)
        .bind(key)
        .execute(&mut session)
        .await?;
    session.listen(CHANNEL).await?;
    tracing::info!(driver = key, "registered as an order driver");
    Ok((key, session))
}

/// Checks, in the caller's transaction, that this replica still drives
/// `id`, and locks the order row until the transaction ends, so a takeover
/// waits for this write and then sees it. An order reset away passes (the
/// write that follows finds nothing to change).
pub async fn fence(conn: &mut PgConnection, id: Uuid, key: i32) -> anyhow::Result<()> {
    let driver: Option<Option<i32>> =
        sqlx::query_scalar("SELECT driver FROM orders WHERE id = $1 FOR NO KEY UPDATE")
            .bind(id)
            .fetch_optional(conn)
            .await?;
    match driver {
        Some(d) if d != Some(key) => Err(NotDriver(id).into()),
        _ => Ok(()),
    }
}

/// Makes this replica the driver of `id` if its driver is gone (or there
/// is none); true when this replica drives it now.
pub async fn claim(pool: &PgPool, id: Uuid, key: i32) -> sqlx::Result<bool> {
    sqlx::query_scalar(&format!(
        "WITH taken AS (UPDATE orders SET driver = $2 WHERE id = $1 AND {} RETURNING id) \
         SELECT EXISTS (SELECT 1 FROM taken) OR EXISTS (SELECT 1 FROM orders WHERE id = $1 AND driver = $2)",
        orphaned("$2")
    ))
    .bind(id)
    .bind(key)
    .fetch_one(pool)
    .await
}

/// Whether the driver of `id` is alive (so its engine will go on).
pub async fn driver_alive(conn: &mut PgConnection, id: Uuid) -> sqlx::Result<bool> {
    sqlx::query_scalar(&format!(
        "SELECT COALESCE((SELECT driver::bigint IN ({}) FROM orders WHERE id = $1), false)",
        alive()
    ))
    .bind(id)
    .fetch_one(conn)
    .await
}

/// Open orders of driven methods that this replica should be running: the
/// ones it just took over from dead drivers (true) and its own (false).
async fn to_drive(pool: &PgPool, key: i32) -> sqlx::Result<Vec<(Uuid, bool)>> {
    let open = OrderState::texts(&OrderState::OPEN);
    let driven: Vec<String> = DRIVEN.iter().map(|m| m.as_str().to_string()).collect();
    sqlx::query_as(&format!(
        "WITH taken AS (UPDATE orders SET driver = $1 WHERE state = ANY($2) AND method = ANY($3) AND {} RETURNING id) \
         SELECT id, true FROM taken \
         UNION ALL SELECT id, false FROM orders WHERE state = ANY($2) AND method = ANY($3) AND driver = $1",
        orphaned("$1")
    ))
    .bind(key)
    .bind(open)
    .bind(driven)
    .fetch_all(pool)
    .await
}

/// Drives every order this replica should be running and is not.
pub async fn reconcile(orders: &Arc<Orders>) -> anyhow::Result<()> {
    for (id, taken) in to_drive(&orders.app.pool, orders.driver.key()).await? {
        if taken {
            tracing::info!(order_id = %id, "taking over an order whose driver is gone");
            orders.app.metrics.event("taken_over", "order");
        }
        if taken || !orders.is_driving(id) {
            orders.clone().drive(id);
        }
    }
    Ok(())
}

/// The replica's background work: wake-ups from its session, and every
/// [`RECONCILE`] the orders to drive. A lost session is replaced by a new
/// one with a new key; the orders of the old key are then nobody's and are
/// taken over (perhaps by this replica) like a crashed replica's.
pub fn start(orders: Arc<Orders>, session: PgListener, stop: watch::Receiver<bool>) -> Vec<JoinHandle<()>> {
    let listening = tokio::spawn(listen(orders.clone(), session, stop.clone()));
    let reconciling = tokio::spawn(async move {
        if !DRIVEN.contains(&orders.method) {
            return;
        }
        let stopped = crate::stopped(stop);
        tokio::pin!(stopped);
        let mut tick = tokio::time::interval(RECONCILE);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = &mut stopped => return,
                _ = tick.tick() => {}
            }
            if let Err(e) = reconcile(&orders).await {
                tracing::warn!(error = format!("{e:#}"), "looking for orders to drive failed");
            }
        }
    });
    vec![listening, reconciling]
}

async fn listen(orders: Arc<Orders>, mut session: PgListener, stop: watch::Receiver<bool>) {
    let stopped = crate::stopped(stop);
    tokio::pin!(stopped);
    loop {
        let received = tokio::select! {
            _ = &mut stopped => return,
            r = session.try_recv() => r,
        };
        match received {
            Ok(Some(n)) => on_wake_up(&orders, n.payload()),
            Ok(None) | Err(_) => {
                tracing::warn!("lost the driver session; registering again");
                orders.app.metrics.event("driver_session_lost", "order");
                loop {
                    tokio::select! {
                        _ = &mut stopped => return,
                        _ = tokio::time::sleep(Duration::from_millis(200)) => {}
                    }
                    match self::session(&orders.app.pool).await {
                        Ok((key, s)) => {
                            orders.driver.0.store(key, Ordering::Relaxed);
                            session = s;
                            break;
                        }
                        Err(e) => tracing::warn!(error = format!("{e:#}"), "registering again failed"),
                    }
                }
            }
        }
    }
}

fn on_wake_up(orders: &Arc<Orders>, payload: &str) {
    let Some((kind, id)) = payload.split_once(':') else {
        return;
    };
    let Ok(id) = id.parse::<Uuid>() else { return };
    match kind {
        "d" => {
            orders.admission.heard_decision();
            orders.decided.wake(id, None)
        }
        "l" => orders.clone().claim_and_drive(id),
        _ => tracing::warn!(payload, "unknown wake-up"),
    }
}

/// Sends `kind:id` to every replica (this one too) when the caller's
/// transaction commits.
pub async fn wake_up(conn: &mut PgConnection, kind: char, id: Uuid) -> sqlx::Result<()> {
    sqlx::query("SELECT pg_notify($1, $2)")
        .bind(CHANNEL)
        .bind(format!("{kind}:{id}"))
        .execute(conn)
        .await
        .map(drop)
}
