//! The saga orchestrator: persists each step before and after its call, asks
//! the pure state machine ([`txlab_tx::saga`]) what comes next, and never
//! keeps progress only in memory — so a restart resumes where it stopped.

use anyhow::Context;
use serde_json::json;
use txlab_api::event::{OrderOutcome, ORDER_EVENTS_TOPIC};
use txlab_api::fault::FAULT_HEADER;
use txlab_api::order::OrderState;
use txlab_api::participant::{BookRequest, ChargeRequest, ReserveLine, ReserveRequest};
use txlab_api::ErrorBody;
use txlab_tx::retry::{retry, Attempt, Backoff};
use txlab_tx::saga::{Compensation, Forward, Next, Outcome};
use uuid::Uuid;

use super::store::{load_order, load_saga, OrderRow, STEPS};
use super::Orders;

/// Why a participant call did not succeed.
#[derive(Debug)]
enum CallError {
    /// A final refusal (business reason or bad request): do not retry.
    Refused(String),
    /// Timeout, connection error, 5xx: worth retrying.
    Transient(String),
}

/// The HTTP call for one step: (url, body). `None` body for compensations.
fn step_call(orders: &Orders, order: &OrderRow, step: usize, forward: bool) -> (String, Option<serde_json::Value>) {
    let p = &orders.peers;
    let id = order.id;
    match (step, forward) {
        (0, true) => (
            format!("{}/payments/{id}/charge", p.payment),
            Some(json!(ChargeRequest { customer: order.customer.clone(), amount: order.amount })),
        ),
        (0, false) => (format!("{}/payments/{id}/refund", p.payment), None),
        (1, true) => (
            format!("{}/reservations/{id}/reserve", p.inventory),
            Some(json!(ReserveRequest {
                lines: order.items.0.iter().map(|i| ReserveLine { sku: i.sku.clone(), qty: i.qty }).collect()
            })),
        ),
        (1, false) => (format!("{}/reservations/{id}/release", p.inventory), None),
        (2, true) => (format!("{}/shipments/{id}/book", p.shipping), Some(json!(BookRequest { slot: order.slot.clone() }))),
        _ => (format!("{}/shipments/{id}/cancel", p.shipping), None),
    }
}

async fn call(orders: &Orders, url: &str, body: &Option<serde_json::Value>, fault: &Option<String>) -> Attempt<(), CallError> {
    let mut req = orders.http.post(url);
    if let Some(b) = body {
        req = req.json(b);
    }
    if let Some(f) = fault {
        req = req.header(FAULT_HEADER, f);
    }
    let resp = match req.send().await {
        Ok(r) => r,
        Err(e) => return Attempt::Retry(CallError::Transient(e.to_string())),
    };
    let status = resp.status();
    if status.is_success() {
        return Attempt::Done(());
    }
    let body: Option<ErrorBody> = resp.json().await.ok();
    let code = body.as_ref().map(|b| b.error.clone()).unwrap_or_else(|| status.to_string());
    if status.is_client_error() && status.as_u16() != 408 && status.as_u16() != 429 {
        Attempt::Fail(CallError::Refused(code))
    } else {
        Attempt::Retry(CallError::Transient(code))
    }
}

async fn set_step(orders: &Orders, id: Uuid, step: usize, column: &str, value: &str, reason: Option<&str>) -> sqlx::Result<()> {
    let bump = if value == "started" { ", attempts = attempts + 1" } else { "" };
    sqlx::query(&format!(
        "UPDATE saga_steps SET {column} = $3, reason = COALESCE($4, reason), updated_ms = $5{bump} \
         WHERE order_id = $1 AND step = $2"
    ))
    .bind(id)
    .bind(step as i32)
    .bind(value)
    .bind(reason)
    .bind(txlab_tx::now_ms())
    .execute(&orders.app.pool)
    .await
    .map(drop)
}

/// Runs the saga of `id` until it finishes (or the order is gone).
#[tracing::instrument(skip(orders), fields(order_id = %id))]
pub async fn run_saga(orders: &Orders, id: Uuid) -> anyhow::Result<()> {
    loop {
        let mut conn = orders.app.pool.acquire().await?;
        let Some(order) = load_order(&mut conn, id).await? else {
            return Ok(()); // reset away between cells
        };
        let saga = load_saga(&mut conn, &order).await?;
        drop(conn);
        match saga.next() {
            Next::Run(step) => {
                set_step(orders, id, step, "forward", Forward::Started.as_str(), None).await?;
                let (url, body) = step_call(orders, &order, step, true);
                let result = retry(
                    Backoff::FORWARD,
                    |_| call(orders, &url, &body, &order.fault),
                    |attempt, e| {
                        orders.app.metrics.event("retry", STEPS[step]);
                        tracing::warn!(step = STEPS[step], attempt, error = ?e, "step failed; retrying");
                    },
                )
                .await;
                let (forward, reason) = match result {
                    Ok(()) => (Forward::Done, None),
                    Err(CallError::Refused(code)) => (Forward::Rejected, Some(format!("{}: {code}", STEPS[step]))),
                    Err(CallError::Transient(e)) => (Forward::Unknown, Some(format!("{}: gave up after retries ({e})", STEPS[step]))),
                };
                orders.app.metrics.event("step", forward.as_str());
                tracing::info!(step = STEPS[step], outcome = forward.as_str(), "step");
                set_step(orders, id, step, "forward", forward.as_str(), reason.as_deref()).await?;
            }
            Next::Compensate(step) => {
                if order.state() != OrderState::Compensating {
                    sqlx::query("UPDATE orders SET state = 'compensating', updated_ms = $2 WHERE id = $1")
                        .bind(id)
                        .bind(txlab_tx::now_ms())
                        .execute(&orders.app.pool)
                        .await?;
                }
                set_step(orders, id, step, "compensation", Compensation::Started.as_str(), None).await?;
                let (url, body) = step_call(orders, &order, step, false);
                // Compensations must succeed: retried until they do.
                let _ = retry(
                    Backoff::UNTIL_DONE,
                    |_| async {
                        match call(orders, &url, &body, &order.fault).await {
                            Attempt::Fail(CallError::Refused(e)) => Attempt::Retry(CallError::Refused(e)),
                            other => other,
                        }
                    },
                    |attempt, e| {
                        orders.app.metrics.event("retry", "compensation");
                        tracing::warn!(step = STEPS[step], attempt, error = ?e, "compensation failed; retrying");
                    },
                )
                .await;
                orders.app.metrics.event("compensation", STEPS[step]);
                tracing::info!(step = STEPS[step], "compensated");
                set_step(orders, id, step, "compensation", Compensation::Done.as_str(), None).await?;
            }
            Next::Finish(outcome) => {
                if finish(orders, &order, outcome).await? {
                    return Ok(());
                }
                // A cancel raced with the confirmation: go round again.
            }
        }
    }
}

/// Records the outcome and its outbox event in one transaction. Returns
/// false when a cancel arrived in between, so the saga must go on.
async fn finish(orders: &Orders, order: &OrderRow, outcome: Outcome) -> anyhow::Result<bool> {
    let state = match outcome {
        Outcome::Confirmed => OrderState::Confirmed,
        Outcome::Rejected => OrderState::Rejected,
        Outcome::Cancelled => OrderState::Cancelled,
    };
    if order.state() == state {
        return Ok(true); // already recorded by an earlier run
    }
    let now = txlab_tx::now_ms();
    let mut tx = orders.app.pool.begin().await?;
    let reason: Option<String> = match outcome {
        Outcome::Confirmed => None,
        Outcome::Cancelled => Some("cancelled on request".into()),
        Outcome::Rejected => sqlx::query_scalar(
            "SELECT reason FROM saga_steps WHERE order_id = $1 AND forward IN ('rejected', 'unknown') ORDER BY step LIMIT 1",
        )
        .bind(order.id)
        .fetch_optional(&mut *tx)
        .await?
        .flatten(),
    };
    let updated = sqlx::query(
        "UPDATE orders SET state = $2, reason = $3, decided_ms = $4, updated_ms = $4 \
         WHERE id = $1 AND NOT ($2 = 'confirmed' AND cancel_requested)",
    )
    .bind(order.id)
    .bind(state.as_str())
    .bind(&reason)
    .bind(now)
    .execute(&mut *tx)
    .await?
    .rows_affected();
    if updated == 0 {
        return Ok(false);
    }
    let event = OrderOutcome {
        event_id: Uuid::new_v4(),
        order_id: order.id,
        state,
        customer: order.customer.clone(),
        decided_ms: now,
    };
    let payload = serde_json::to_value(&event).context("encoding the outcome event")?;
    txlab_tx::outbox::enqueue(&mut tx, ORDER_EVENTS_TOPIC, &order.id.to_string(), &payload).await?;
    tx.commit().await?;
    orders.app.metrics.event("outcome", state.as_str());
    tracing::info!(outcome = state.as_str(), reason = reason.as_deref().unwrap_or(""), "order decided");
    let _ = orders.decided.send(order.id);
    Ok(true)
}
