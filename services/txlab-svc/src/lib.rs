//! The checkout services. One binary serves any role; the business code of
//! a role is the same under every transaction method (`TX_MODE`).
//!
//! - [`config`]: the environment a service is started with.
//! - [`http`]: what every service shares on the wire: JSON errors, the
//!   request extractors that turn bad input into 4xx, `/health`, `/metrics`.
//! - [`messaging`]: the transactional outbox and its relay, the inbox, Kafka
//!   clients, and consumption with once-only effects (retries, dead letters).
//! - [`epoch`]: the lab epoch that keeps one cell's work out of the next.
//! - [`faults`]: fault points, fired from the per-request fault header.
//! - [`participant`]: the record-keeping that makes a participant's
//!   operations idempotent and safe against late or early compensation.
//! - [`roles`]: order (API + saga orchestrator), payment, inventory,
//!   shipping and notification.

pub mod config;
pub mod db;
pub mod epoch;
pub mod faults;
pub mod http;
pub mod messaging;
pub mod participant;
pub mod roles;
pub mod telemetry;

use std::future::Future;

use anyhow::Context;
use tokio::sync::watch;

use crate::config::Config;

/// Runs the service until `shutdown` resolves, then drains in-flight
/// requests and stops its background tasks.
pub async fn run(config: Config, shutdown: impl Future<Output = ()> + Send + 'static) -> anyhow::Result<()> {
    let pool = db::connect(&config.database_url).await?;
    db::migrate(&pool, config.role).await?;
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("binding {}", config.listen))?;
    let (stop_tx, stop_rx) = watch::channel(false);
    let app = roles::build(&config, pool, stop_rx).await?;
    tracing::info!(role = %config.role, addr = %config.listen, method = %config.tx_mode, "listening");
    axum::serve(listener, app.router)
        .with_graceful_shutdown(shutdown)
        .await
        .context("serving HTTP")?;
    let _ = stop_tx.send(true);
    for task in app.background {
        let _ = tokio::time::timeout(std::time::Duration::from_secs(5), task).await;
    }
    Ok(())
}

/// Resolves on SIGTERM or Ctrl-C.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! { _ = ctrl_c => {}, _ = term => {} }
}

/// Waits until the stop flag is raised (used by background loops).
pub async fn stopped(mut stop: watch::Receiver<bool>) {
    while !*stop.borrow() {
        if stop.changed().await.is_err() {
            return;
        }
    }
}
