//! Notification: consumes order outcomes from Kafka and records exactly one
//! notification per event, deduplicated by the inbox in the same
//! transaction, with the offset committed only after that transaction.

use std::time::Duration;

use axum::extract::{Path, State};
use axum::routing::get;
use axum::{Json, Router};
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::Message;
use sqlx::PgConnection;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use txlab_api::admin::{NotificationRow, NotificationSnapshot};
use txlab_api::event::{OrderOutcome, ORDER_EVENTS_TOPIC};
use uuid::Uuid;

use crate::config::Config;
use crate::http::ApiError;
use crate::roles::AppState;

pub const CONSUMER_GROUP: &str = "txlab-notification";

pub async fn build(config: &Config, state: AppState, stop: watch::Receiver<bool>) -> anyhow::Result<(Router, Vec<JoinHandle<()>>)> {
    let brokers = config.kafka_brokers.clone().unwrap_or_default();
    super::order::ensure_topic_with_retry(&brokers).await?;
    let consumer = txlab_tx::kafka::consumer(&brokers, CONSUMER_GROUP)?;
    consumer.subscribe(&[ORDER_EVENTS_TOPIC])?;
    let task = tokio::spawn(consume(consumer, state.clone(), stop));
    let router = Router::new()
        .route("/notifications/{order_id}", get(list))
        .with_state(state);
    Ok((router, vec![task]))
}

async fn consume(consumer: StreamConsumer, state: AppState, stop: watch::Receiver<bool>) {
    let stopped = crate::stopped(stop.clone());
    tokio::pin!(stopped);
    loop {
        let msg = tokio::select! {
            _ = &mut stopped => return,
            m = consumer.recv() => m,
        };
        let msg = match msg {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!(error = %e, "kafka receive failed");
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
        };
        let event = msg.payload().map(serde_json::from_slice::<OrderOutcome>);
        match event {
            Some(Ok(event)) => {
                // Retry the effect until it is stored; the offset is only
                // committed after, so a crash here means redelivery, and the
                // inbox turns redelivery into a no-op.
                let mut attempt = 0u32;
                loop {
                    match apply(&state, &event).await {
                        Ok(first) => {
                            state.metrics.event("notification", if first { "sent" } else { "duplicate" });
                            break;
                        }
                        Err(e) => {
                            attempt += 1;
                            tracing::warn!(order_id = %event.order_id, error = %e, attempt, "storing notification failed; retrying");
                            if *stop.borrow() {
                                return;
                            }
                            let delay = txlab_tx::retry::Backoff::UNTIL_DONE.delay(attempt, &mut rand::thread_rng());
                            tokio::time::sleep(delay).await;
                        }
                    }
                }
            }
            Some(Err(e)) => {
                // A message we cannot read will never become readable: skip
                // it visibly instead of blocking the partition.
                state.metrics.event("notification", "unreadable");
                tracing::error!(error = %e, offset = msg.offset(), "unreadable order event skipped");
            }
            None => tracing::warn!(offset = msg.offset(), "empty order event skipped"),
        }
        if let Err(e) = consumer.commit_message(&msg, CommitMode::Async) {
            tracing::warn!(error = %e, "offset commit failed; the event may be redelivered");
        }
    }
}

/// Stores one notification unless the inbox has seen the event; returns
/// whether it was the first delivery.
#[tracing::instrument(skip_all, fields(order_id = %event.order_id))]
async fn apply(state: &AppState, event: &OrderOutcome) -> sqlx::Result<bool> {
    let mut tx = state.pool.begin().await?;
    let first = txlab_tx::inbox::first_delivery(&mut tx, &event.event_id.to_string()).await?;
    if first {
        sqlx::query("INSERT INTO notifications (order_id, kind, received_ms) VALUES ($1, $2, $3)")
            .bind(event.order_id)
            .bind(event.state.as_str())
            .bind(txlab_tx::now_ms())
            .execute(&mut *tx)
            .await?;
        tracing::info!(kind = event.state.as_str(), "notified");
    }
    tx.commit().await?;
    Ok(first)
}

async fn list(
    State(state): State<AppState>,
    path: Result<Path<Uuid>, axum::extract::rejection::PathRejection>,
) -> Result<Json<Vec<NotificationRow>>, ApiError> {
    let Path(order_id) = path?;
    Ok(Json(rows(&mut *state.pool.acquire().await?, Some(order_id)).await?))
}

async fn rows(conn: &mut PgConnection, order: Option<Uuid>) -> sqlx::Result<Vec<NotificationRow>> {
    let rows: Vec<(Uuid, String, i64)> = sqlx::query_as(
        "SELECT order_id, kind, received_ms FROM notifications WHERE $1::uuid IS NULL OR order_id = $1 ORDER BY id",
    )
    .bind(order)
    .fetch_all(conn)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(order_id, kind, received_ms)| NotificationRow { order_id, kind, received_ms })
        .collect())
}

pub async fn snapshot(conn: &mut PgConnection) -> sqlx::Result<NotificationSnapshot> {
    Ok(NotificationSnapshot { notifications: rows(conn, None).await? })
}
