//! The five roles. Each builds its routes and background tasks; everything
//! around them (health, metrics, errors, limits) comes from [`crate::http`].

pub mod inventory;
pub mod notification;
pub mod order;
pub mod payment;
pub mod shipping;

use std::sync::Arc;

use anyhow::Context;
use axum::extract::{FromRef, State};
use axum::routing::{get, post};
use axum::{Json, Router};
use sqlx::PgPool;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use txlab_api::admin::{Reset, Seed};
use txlab_api::{Role, TxMode};

use crate::config::Config;
use crate::faults::{FaultSwitch, HasFaults};
use crate::http::{common, ApiError, Metrics};
use crate::participant::Participant;

/// State every handler can reach.
#[derive(Clone)]
pub struct AppState {
    pub pool: PgPool,
    pub metrics: Arc<Metrics>,
    pub faults: Arc<FaultSwitch>,
    /// Which of the role's processes this is.
    pub replica: crate::config::Replica,
    /// How this process's writers of outbox rows wake the relay.
    pub relay: crate::messaging::outbox::RelayWake,
}

impl HasFaults for AppState {
    fn fault_switch(&self) -> Arc<FaultSwitch> {
        self.faults.clone()
    }
}

impl FromRef<AppState> for Arc<FaultSwitch> {
    fn from_ref(state: &AppState) -> Self {
        state.faults.clone()
    }
}

/// A built service: its router and the background tasks to wait for at shutdown.
pub struct App {
    pub router: Router,
    pub background: Vec<JoinHandle<()>>,
}

pub async fn build(config: &Config, pool: PgPool, stop: watch::Receiver<bool>) -> anyhow::Result<App> {
    let metrics = Arc::new(Metrics::new(config.role));
    let faults = FaultSwitch::new(config.role, config.standing_fault.clone());
    let state = AppState {
        pool,
        metrics: metrics.clone(),
        faults,
        replica: config.replica,
        relay: crate::messaging::outbox::RelayWake::for_replica(&config.replica),
    };
    let admin = admin_routes(config.role).with_state(state.clone());
    let (routes, background) = match config.role {
        Role::Order => order::build(config, state, stop).await?,
        Role::Payment => participant::<payment::Payment>(config, state, stop).await?,
        Role::Inventory => participant::<inventory::Inventory>(config, state, stop).await?,
        Role::Shipping => participant::<shipping::Shipping>(config, state, stop).await?,
        Role::Notification => notification::build(config, state, stop).await?,
    };
    Ok(App {
        router: common(routes.merge(admin), metrics),
        background,
    })
}

/// A participant's routes, and its background tasks: in-doubt recovery
/// under `twopc`, the event consumer and outbox relay under the
/// event-driven methods.
async fn participant<P: Participant>(
    config: &Config,
    state: AppState,
    stop: watch::Receiver<bool>,
) -> anyhow::Result<(Router, Vec<JoinHandle<()>>)> {
    let mut background = Vec::new();
    if config.tx_mode.is_event_driven() {
        let brokers = config
            .kafka_brokers
            .as_deref()
            .context("KAFKA_BROKERS is needed under event-driven methods")?;
        background.extend(
            crate::participant::choreography::start::<P>(
                brokers,
                config.tx_mode,
                state.clone(),
                stop.clone(),
            )
            .await?,
        );
    }
    if config.tx_mode == TxMode::Twopc {
        let order_url = config
            .order_url
            .clone()
            .context("ORDER_URL is needed under TX_MODE=twopc")?;
        let http = reqwest::Client::builder()
            .timeout(std::time::Duration::from_secs(3))
            .build()?;
        background.push(tokio::spawn(crate::participant::twopc::recover::<P>(
            state.pool.clone(),
            http,
            order_url,
            stop,
        )));
    }
    Ok((crate::participant::routes::<P>().with_state(state), background))
}

/// `POST /admin/reset`, `POST /admin/seed` (what the lab calls between
/// cells) and `GET`/`PUT /admin/faults`. The audit reads the databases
/// itself: no service reports on its own correctness.
fn admin_routes(role: Role) -> Router<AppState> {
    Router::new()
        .route(
            "/admin/faults",
            get(crate::faults::get_standing).put(crate::faults::put_standing),
        )
        .route(
            "/admin/reset",
            post(move |s: State<AppState>, body: axum::body::Bytes| reset(s, role, body)),
        )
        .route(
            "/admin/seed",
            post(
                move |s: State<AppState>,
                      body: Result<Json<Seed>, axum::extract::rejection::JsonRejection>| {
                    seed(s, role, body)
                },
            ),
        )
}

/// How often a reset tries again when a lock it needs is still held (by a
/// 2PC branch prepared after the previous attempt rolled the others back).
const RESET_ATTEMPTS: u32 = 20;

async fn reset(
    State(state): State<AppState>,
    role: Role,
    body: axum::body::Bytes,
) -> Result<Json<serde_json::Value>, ApiError> {
    let Reset { epoch } = if body.is_empty() {
        Reset::default()
    } else {
        serde_json::from_slice(&body).map_err(|e| ApiError::BadRequest(format!("reset body: {e}")))?
    };
    let own = match role {
        Role::Order => "orders, saga_steps, tx_branches, tx_decisions, idempotency_keys",
        Role::Payment => "wallets, payments",
        Role::Inventory => "stock, reservations",
        Role::Shipping => "slots, shipments",
        Role::Notification => "notifications",
    };
    let tables = format!("{own}, outbox, inbox, fault_log, ledger, dead_letters");
    let mut rolled_back = 0;
    for attempt in 1..=RESET_ATTEMPTS {
        // Prepared branches of the ending cell hold row locks (and a share
        // lock on the epoch row) until decided; nobody will decide them now.
        rolled_back += crate::db::roll_back_lab_branches(&state.pool).await?;
        // The new epoch first: the update waits for any event handler or
        // participant call holding the old one (FOR SHARE), whose effect
        // the truncate then removes, and everything after it refuses the
        // old epoch.
        let mut tx = state.pool.begin().await?;
        sqlx::query("SET LOCAL lock_timeout = '1s'")
            .execute(&mut *tx)
            .await?;
        let done = async {
            sqlx::query("UPDATE lab_epoch SET epoch = $1")
                .bind(&epoch)
                .execute(&mut *tx)
                .await?;
            sqlx::query(&format!("TRUNCATE {tables} RESTART IDENTITY CASCADE"))
                .execute(&mut *tx)
                .await?;
            tx.commit().await
        }
        .await;
        match done {
            Ok(()) => {
                tracing::info!(epoch = %epoch, rolled_back, "reset");
                return Ok(Json(
                    serde_json::json!({ "reset": tables, "epoch": epoch, "rolled_back_branches": rolled_back }),
                ));
            }
            Err(e) if crate::db::is_lock_timeout(&e) => {
                tracing::warn!(
                    attempt,
                    "reset waited too long for a lock; rolling back branches and trying again"
                );
            }
            Err(e) => return Err(e.into()),
        }
    }
    Err(ApiError::Unavailable(format!(
        "reset could not take its locks in {RESET_ATTEMPTS} attempts; retry"
    )))
}

async fn seed(
    State(state): State<AppState>,
    role: Role,
    body: Result<Json<Seed>, axum::extract::rejection::JsonRejection>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let Json(seed) = body?;
    let mut tx = state.pool.begin().await?;
    let rows = match role {
        Role::Payment => payment::seed(&mut tx, &seed.wallets).await?,
        Role::Inventory => inventory::seed(&mut tx, &seed.stock).await?,
        Role::Shipping => shipping::seed(&mut tx, &seed.slots).await?,
        Role::Order | Role::Notification => 0,
    };
    tx.commit().await?;
    Ok(Json(serde_json::json!({ "seeded": rows })))
}
