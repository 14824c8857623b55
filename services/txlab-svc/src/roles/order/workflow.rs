//! `GET /orders/{id}/workflow`: everything the order service recorded of
//! one order's transaction, with the time of each record, whatever the
//! method — for a person (or the report's timeline chart) to see where an
//! order spent its time and what happened when.

use std::sync::Arc;

use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::Json;
use txlab_api::order::{BranchView, DecisionView, EventView, StepRecordView, Workflow};
use txlab_api::Step;
use uuid::Uuid;

use super::store::load_order;
use super::Orders;
use crate::http::ApiError;

#[derive(sqlx::FromRow)]
struct StepRow {
    step: i32,
    forward: String,
    compensation: String,
    attempts: i32,
    reason: Option<String>,
    forward_started_ms: Option<i64>,
    forward_ended_ms: Option<i64>,
    compensation_started_ms: Option<i64>,
    compensation_ended_ms: Option<i64>,
}

#[derive(sqlx::FromRow)]
struct BranchRow {
    step: i32,
    vote: String,
    phase2: String,
    attempts: i32,
    reason: Option<String>,
    asked_ms: Option<i64>,
    voted_ms: Option<i64>,
    phase2_ended_ms: Option<i64>,
}

fn step(index: i32) -> Result<Step, ApiError> {
    usize::try_from(index).ok().and_then(Step::at).ok_or_else(|| {
        ApiError::Internal(anyhow::anyhow!(
            "a log row names step {index}, which does not exist"
        ))
    })
}

pub async fn workflow(
    State(orders): State<Arc<Orders>>,
    path: Result<Path<Uuid>, PathRejection>,
) -> Result<Json<Workflow>, ApiError> {
    let Path(id) = path?;
    // One snapshot, so the parts agree with each other.
    let mut tx = orders.app.pool.begin().await?;
    sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
        .execute(&mut *tx)
        .await?;
    let order = load_order(&mut tx, id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("no order {id}")))?;
    let driver: Option<i32> = sqlx::query_scalar("SELECT driver FROM orders WHERE id = $1")
        .bind(id)
        .fetch_one(&mut *tx)
        .await?;
    let steps: Vec<StepRow> = sqlx::query_as(
        "SELECT step, forward, compensation, attempts, reason, forward_started_ms, forward_ended_ms, \
         compensation_started_ms, compensation_ended_ms FROM saga_steps WHERE order_id = $1 ORDER BY step",
    )
    .bind(id)
    .fetch_all(&mut *tx)
    .await?;
    let branches: Vec<BranchRow> = sqlx::query_as(
        "SELECT step, vote, phase2, attempts, reason, asked_ms, voted_ms, phase2_ended_ms \
         FROM tx_branches WHERE order_id = $1 ORDER BY step",
    )
    .bind(id)
    .fetch_all(&mut *tx)
    .await?;
    let decision: Option<(String, bool, i64)> =
        sqlx::query_as("SELECT decision, presumed, decided_ms FROM tx_decisions WHERE order_id = $1")
            .bind(id)
            .fetch_optional(&mut *tx)
            .await?;
    let events: Vec<(String, String, i64, Option<i64>)> = sqlx::query_as(
        "SELECT topic, COALESCE(payload->>'kind', payload->>'state', ''), created_ms, published_ms \
         FROM outbox WHERE key = $1 ORDER BY id",
    )
    .bind(id.to_string())
    .fetch_all(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(Json(Workflow {
        order: order.view(),
        driver,
        steps: steps
            .into_iter()
            .map(|r| {
                Ok(StepRecordView {
                    step: step(r.step)?,
                    forward: r.forward,
                    compensation: r.compensation,
                    attempts: r.attempts,
                    reason: r.reason,
                    forward_started_ms: r.forward_started_ms,
                    forward_ended_ms: r.forward_ended_ms,
                    compensation_started_ms: r.compensation_started_ms,
                    compensation_ended_ms: r.compensation_ended_ms,
                })
            })
            .collect::<Result<_, ApiError>>()?,
        branches: branches
            .into_iter()
            .map(|r| {
                Ok(BranchView {
                    step: step(r.step)?,
                    vote: r.vote,
                    phase2: r.phase2,
                    attempts: r.attempts,
                    reason: r.reason,
                    asked_ms: r.asked_ms,
                    voted_ms: r.voted_ms,
                    phase2_ended_ms: r.phase2_ended_ms,
                })
            })
            .collect::<Result<_, ApiError>>()?,
        decision: decision.map(|(decision, presumed, decided_ms)| DecisionView {
            decision,
            presumed,
            decided_ms,
        }),
        events: events
            .into_iter()
            .map(|(topic, kind, created_ms, published_ms)| EventView {
                topic,
                kind,
                created_ms,
                published_ms,
            })
            .collect(),
    }))
}
