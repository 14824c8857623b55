//! Notification: consumes order outcomes from Kafka and records exactly one
//! notification per event, deduplicated by the inbox in the same
//! transaction, with the offset committed only after that transaction
//! (see [`crate::messaging::consumer`]).

use axum::extract::{Path, State};
use axum::routing::get;
use axum::{Json, Router};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use txlab_api::event::{OrderOutcome, ORDER_EVENTS_TOPIC};
use uuid::Uuid;

use crate::config::Config;
use crate::http::ApiError;
use crate::messaging::consumer::{consume, Ack};
use crate::messaging::inbox::{self, Delivery};
use crate::roles::AppState;

pub async fn build(
    config: &Config,
    state: AppState,
    stop: watch::Receiver<bool>,
) -> anyhow::Result<(Router, Vec<JoinHandle<()>>)> {
    let brokers = config.kafka_brokers.clone().unwrap_or_default();
    super::order::ensure_topics_with_retry(&brokers).await?;
    let offsets = crate::messaging::consumer::Offsets {
        pool: state.pool.clone(),
        consumer: "notification",
        topic: ORDER_EVENTS_TOPIC,
    };
    let consumer = crate::messaging::consumer::assigned(&brokers, &offsets, state.replica).await?;
    let st = state.clone();
    let handler = move |event: OrderOutcome, _| {
        let st = st.clone();
        async move {
            let first = apply(&st, &event).await?;
            st.metrics
                .event("notification", if first { "sent" } else { "duplicate" });
            Ok(Ack::Now)
        }
    };
    let task = tokio::spawn(consume(consumer, offsets, state.metrics.clone(), stop, handler));
    let router = Router::new()
        .route("/notifications/{order_id}", get(list))
        .with_state(state);
    Ok((router, vec![task]))
}

/// Stores one notification unless the inbox has seen the event (or it is
/// from a cell the lab has reset away); returns whether it was the first
/// delivery. The inbox row and the notification are one statement: one
/// round trip and one commit.
#[tracing::instrument(skip_all, fields(order_id = %event.order_id))]
async fn apply(state: &AppState, event: &OrderOutcome) -> sqlx::Result<bool> {
    let (current, first): (bool, bool) = sqlx::query_as(&format!(
        "WITH {}, \
              noted AS (INSERT INTO notifications (order_id, kind, received_ms) SELECT $4, $5, $3 FROM seen) \
         SELECT current, EXISTS (SELECT FROM seen) FROM lab",
        inbox::ADMIT_CTES
    ))
    .bind(&event.epoch)
    .bind(event.event_id.to_string())
    .bind(txlab_tx::now_ms())
    .bind(event.order_id)
    .bind(event.state.as_str())
    .fetch_one(&state.pool)
    .await?;
    let first = inbox::delivery(current, first) == Delivery::First;
    if first {
        tracing::info!(kind = event.state.as_str(), "notified");
    }
    Ok(first)
}

/// One notification as `GET /notifications/{order_id}` shows it.
#[derive(Debug, serde::Serialize, sqlx::FromRow)]
struct NotificationRow {
    order_id: Uuid,
    /// The order state the notification announces.
    kind: String,
    /// When the event was applied, ms since the Unix epoch.
    received_ms: i64,
}

async fn list(
    State(state): State<AppState>,
    path: Result<Path<Uuid>, axum::extract::rejection::PathRejection>,
) -> Result<Json<Vec<NotificationRow>>, ApiError> {
    let Path(order_id) = path?;
    let rows = sqlx::query_as(
        "SELECT order_id, kind, received_ms FROM notifications WHERE order_id = $1 ORDER BY id",
    )
    .bind(order_id)
    .fetch_all(&state.pool)
    .await?;
    Ok(Json(rows))
}
