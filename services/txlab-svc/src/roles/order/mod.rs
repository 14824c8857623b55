//! Order: the public checkout API and, under `saga_orch`, the orchestrator.
//!
//! - `POST /orders` stores the order, its saga log and its idempotency key
//!   in one transaction, answers 202, and starts the saga in the background.
//! - `GET /orders/{id}?wait_ms=` long-polls until the order is terminal.
//! - `POST /orders/{id}/cancel` asks for compensation at any stage.
//! - `GET /orders/{id}/workflow` shows the order's records with their times.
//! - `GET /twopc/{id}/decision` tells participants the logged decision.
//!
//! The engine is chosen per order by its method: `saga_orch` runs the saga
//! orchestrator ([`saga`]); `twopc` and `tcc` run the two-phase coordinator
//! ([`two_phase`]), whose participant operations differ only in name;
//! `saga_chor` and `outbox` coordinate through checkout events ([`choreography`]).
//!
//! Terminal outcomes leave through the outbox (one event per outcome), which
//! the relay task publishes to Kafka for the notification service.

mod admission;
mod api;
mod calls;
mod choreography;
mod drivers;
mod held;
mod outcome;
mod saga;
mod store;
mod two_phase;
mod waiters;
mod workflow;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use axum::routing::{get, post};
use axum::Router;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use txlab_api::event::{checkout_topics, ORDER_EVENTS_TOPIC};
use txlab_api::TxMode;
use uuid::Uuid;

use crate::config::{Config, Peers};
use crate::faults::{FaultSwitch, HasFaults};
use crate::roles::AppState;

/// Everything the order handlers and the orchestrator share.
pub struct Orders {
    pub app: AppState,
    pub http: reqwest::Client,
    pub peers: Peers,
    pub method: TxMode,
    /// Orders whose saga runs in this process, and whether it must run once
    /// more when it ends (a cancel arrived while it was finishing).
    running: Mutex<HashMap<Uuid, bool>>,
    /// Orders created here whose engine has not started: it takes the
    /// order from here instead of reading back what was just written.
    born: Mutex<HashMap<Uuid, store::OrderRow>>,
    /// This replica's key as the driver of orders (see [`drivers`]).
    driver: drivers::Driver,
    /// Wakes long-polling readers when an order is decided here.
    decided: waiters::Waiters,
    /// How many orders may be open at once (load shedding).
    admission: admission::Admission,
    /// Event-driven methods: participants' results not written yet.
    held: held::Held,
    /// 2PC transactions between their first prepare and the end of phase
    /// two, at most [`TWOPC_AT_ONCE`] (see there).
    twopc_at_once: tokio::sync::Semaphore,
}

/// Prepared branches hold row locks until phase two; with too many
/// transactions at once on 20 slots and 50 SKUs they mostly wait on each
/// other's locks, each wait lengthening every other hold, until prepares
/// time out and the happy path is rejected (measured without a limit: 943
/// of 1000 rejected at 200/s; with 32, twice the knee still fell to 12
/// decisions/s). At the knee about 18 are under way at once.
/// Transactions beyond this wait their turn before locking anything.
pub const TWOPC_AT_ONCE: usize = 16;

pub async fn build(
    config: &Config,
    app: AppState,
    stop: watch::Receiver<bool>,
) -> anyhow::Result<(Router, Vec<JoinHandle<()>>)> {
    let brokers = config.kafka_brokers.clone().unwrap_or_default();
    ensure_topics_with_retry(&brokers).await?;
    let produced: Vec<&str> = checkout_topics().chain([ORDER_EVENTS_TOPIC]).collect();
    let relay = crate::messaging::outbox::Relay::new(
        app.pool.clone(),
        crate::messaging::kafka::ready_producer(&brokers, &produced).await?,
        app.relay.clone(),
        app.metrics.clone(),
    );
    let relay_task = tokio::spawn(relay.run(crate::stopped(stop.clone())));
    let (driver, session) = drivers::register(&app.pool)
        .await
        .context("registering as an order driver")?;

    let orders = Arc::new(Orders {
        app,
        http: reqwest::Client::builder()
            .timeout(Duration::from_secs(3))
            .pool_max_idle_per_host(32)
            .build()
            .context("building the HTTP client")?,
        peers: config.peers.clone(),
        method: config.tx_mode,
        running: Mutex::new(HashMap::new()),
        born: Mutex::new(HashMap::new()),
        driver,
        decided: waiters::Waiters::default(),
        admission: admission::Admission::new(config.max_open_orders),
        held: held::Held::default(),
        twopc_at_once: tokio::sync::Semaphore::new(TWOPC_AT_ONCE),
    });
    if config.tx_mode.is_event_driven() {
        // Judged again in case a crash came between hearing and judging.
        for id in store::open_orders(&orders.app.pool).await? {
            orders.clone().drive(id);
        }
    } else {
        // Transactions in flight when their driver stopped (this service's
        // previous process, or another replica) are taken over now.
        drivers::reconcile(&orders).await?;
    }
    let counting = orders.clone();
    let pool = orders.app.pool.clone();
    let recount_stop = stop.clone();
    let mut background = vec![
        relay_task,
        tokio::spawn(async move { counting.admission.recount(pool, recount_stop).await }),
    ];
    background.extend(drivers::start(orders.clone(), session, stop.clone()));
    if config.tx_mode.is_event_driven() {
        background.push(choreography::start(orders.clone(), &brokers, stop).await?);
    }
    let router = Router::new()
        .route("/orders", post(api::create))
        .route("/orders/{id}", get(api::get))
        .route("/orders/{id}/cancel", post(api::cancel))
        .route("/orders/{id}/workflow", get(workflow::workflow))
        .route("/twopc/{id}/decision", get(two_phase::decision))
        .with_state(orders);
    Ok((router, background))
}

/// Creates the lab's topics; the broker may still be starting when a
/// service starts, so this retries for a while.
pub async fn ensure_topics_with_retry(brokers: &str) -> anyhow::Result<()> {
    for topic in txlab_api::event::lab_topics() {
        let mut attempt = 0u32;
        loop {
            attempt += 1;
            match crate::messaging::kafka::ensure_topic(brokers, topic, txlab_api::event::TOPIC_PARTITIONS)
                .await
            {
                Ok(()) => break,
                Err(e) if attempt < 20 => {
                    tracing::warn!(error = %e, attempt, topic, "Kafka topic set-up failed; retrying");
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
                Err(e) => return Err(e).with_context(|| format!("creating topic {topic} on {brokers}")),
            }
        }
    }
    Ok(())
}

/// A new order's row left for its engine (see [`Orders::leave_for_engine`]).
pub struct LeftForEngine<'a> {
    orders: &'a Orders,
    id: Uuid,
    kept: bool,
}

impl LeftForEngine<'_> {
    /// The order is committed: the row stays for its engine's first run.
    pub fn keep(mut self) {
        self.kept = true;
    }
}

impl Drop for LeftForEngine<'_> {
    fn drop(&mut self) {
        if !self.kept {
            // Not committed (or not known to be): a run reads the order
            // itself, if reconciling finds it committed after all.
            self.orders.take_born(self.id);
        }
    }
}

impl HasFaults for Arc<Orders> {
    fn fault_switch(&self) -> Arc<FaultSwitch> {
        self.app.faults.clone()
    }
}

impl Orders {
    /// Runs the engine of the order's method.
    #[tracing::instrument(skip(self), fields(order_id = %id))]
    async fn run_engine(&self, id: Uuid) -> anyhow::Result<()> {
        let born = self.take_born(id);
        let method = match &born {
            Some(order) => Some(Ok(order.method)),
            None => sqlx::query_scalar::<_, String>("SELECT method FROM orders WHERE id = $1")
                .bind(id)
                .fetch_optional(&self.app.pool)
                .await?
                .map(|m| m.parse::<TxMode>()),
        };
        match method {
            None => Ok(()), // reset away between cells
            Some(Ok(TxMode::SagaOrch)) => saga::run(self, id, born).await,
            Some(Ok(TxMode::Twopc | TxMode::Tcc)) => two_phase::run(self, id, born).await,
            Some(Ok(TxMode::SagaChor | TxMode::Outbox)) => choreography::evaluate(self, id).await,
            Some(Err(e)) => anyhow::bail!("order {id} has an unreadable method: {e}"),
        }
    }

    /// Whether an engine of `id` runs in this process right now.
    fn is_driving(&self, id: Uuid) -> bool {
        self.running
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains_key(&id)
    }

    /// Whether someone asked the running engine of `id` to look at its
    /// order again (a cancel arrived); the request is taken, so the run
    /// need not be repeated after it ends.
    fn take_rerun(&self, id: Uuid) -> bool {
        let mut running = self.running.lock().unwrap_or_else(|p| p.into_inner());
        match running.get_mut(&id) {
            Some(again) => std::mem::take(again),
            None => false,
        }
    }

    /// Writes an engine's `unwritten` marks in the caller's transaction,
    /// checking in the same statement that this replica still drives the
    /// order (with nothing to write, the check alone: it also locks the
    /// order row for the rest of the transaction).
    async fn write_marks(
        &self,
        conn: &mut sqlx::PgConnection,
        id: Uuid,
        unwritten: &mut Vec<store::Unwritten>,
    ) -> anyhow::Result<()> {
        let key = self.driver.key();
        if unwritten.is_empty() {
            return drivers::fence(conn, id, key).await;
        }
        if !store::write_marks_fenced(conn, id, unwritten, key).await? {
            return Err(drivers::NotDriver(id).into());
        }
        Ok(())
    }

    /// Commits an engine's `unwritten` marks on their own (before a call
    /// that needs them durable). When one statement holds them all it runs
    /// without a transaction around it: one round trip instead of five.
    async fn commit_marks(&self, id: Uuid, unwritten: &mut Vec<store::Unwritten>) -> anyhow::Result<()> {
        if unwritten.is_empty() {
            return Ok(());
        }
        if store::one_statement(unwritten) == unwritten.len() {
            let mut conn = self.app.pool.acquire().await?;
            return self.write_marks(&mut conn, id, unwritten).await;
        }
        let mut tx = self.app.pool.begin().await?;
        self.write_marks(&mut tx, id, unwritten).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Drives `id` if its driver is this replica or gone (a cancel or a
    /// presumed abort may reach any replica).
    pub fn claim_and_drive(self: Arc<Self>, id: Uuid) {
        tokio::spawn(async move {
            match drivers::claim(&self.app.pool, id, self.driver.key()).await {
                Ok(true) => self.drive(id),
                Ok(false) => {} // its live driver was woken too
                Err(e) => {
                    tracing::warn!(order_id = %id, error = %e, "claiming the order failed; reconciling will retry")
                }
            }
        });
    }

    /// Leaves the row of an order being created here for the first run of
    /// its engine, which then need not read back what was just written.
    /// Call before the order's commit, so no run can come first; keep the
    /// returned guard once the commit is through (dropped before that, on
    /// an error or a request given up mid-way, it takes the row back).
    pub fn leave_for_engine(&self, order: store::OrderRow) -> LeftForEngine<'_> {
        let id = order.id;
        self.born
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id, order);
        LeftForEngine {
            orders: self,
            id,
            kept: false,
        }
    }

    /// The row left for `id`'s engine, taken (by its first run, or back
    /// when the order's creation did not get through its commit).
    fn take_born(&self, id: Uuid) -> Option<store::OrderRow> {
        self.born.lock().unwrap_or_else(|p| p.into_inner()).remove(&id)
    }

    /// Starts the engine of an order this replica has just created (and
    /// drives), unless a run has already taken its row: reconciling may
    /// have found the committed order first.
    pub fn drive_new(self: Arc<Self>, id: Uuid) {
        let left = self
            .born
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains_key(&id);
        if left {
            self.drive(id);
        }
    }

    /// Runs (or re-runs) the engine of `id` in the background, at most once
    /// at a time per order in this process. The caller knows this replica
    /// is the order's driver (or the method has none).
    pub fn drive(self: Arc<Self>, id: Uuid) {
        {
            let mut running = self.running.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(again) = running.get_mut(&id) {
                *again = true;
                return;
            }
            running.insert(id, false);
        }
        tokio::spawn(async move {
            loop {
                if let Err(e) = self.run_engine(id).await {
                    if e.downcast_ref::<drivers::NotDriver>().is_some() {
                        tracing::warn!(order_id = %id, "another replica took the order over; this engine stops");
                        self.app.metrics.event("driver_lost", "order");
                        self.running.lock().unwrap_or_else(|p| p.into_inner()).remove(&id);
                        return;
                    }
                    // The records stay; a later drive (reconcile, cancel, restart) resumes.
                    tracing::error!(order_id = %id, error = format!("{e:#}"), "saga stopped on an error");
                    self.app.metrics.event("saga", "error");
                }
                let mut running = self.running.lock().unwrap_or_else(|p| p.into_inner());
                match running.get_mut(&id) {
                    Some(again) if *again => *again = false,
                    _ => {
                        running.remove(&id);
                        return;
                    }
                }
            }
        });
    }
}
