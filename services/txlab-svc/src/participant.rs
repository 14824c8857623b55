//! The record-keeping shared by payment, inventory and shipping.
//!
//! Each participant keeps one record per order in its own table, written in
//! the same local transaction as its business change:
//!
//! | record found   | forward call (charge/reserve/book) | compensation (refund/release/cancel) |
//! |----------------|------------------------------------|--------------------------------------|
//! | none           | apply; record `applied` or `rejected` | record `voided` (null compensation) |
//! | applied        | no-op, same answer                 | undo; record `undone`                 |
//! | rejected       | same refusal again                 | no-op                                 |
//! | undone, voided | refused: already compensated       | no-op                                 |
//!
//! So every operation is idempotent by (order, operation), a compensation
//! that overtakes its forward call leaves nothing behind, and the forward
//! call that arrives after it is refused instead of leaving a hanging effect.

use std::future::Future;

use axum::extract::{Path, State};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::de::DeserializeOwned;
use serde::Serialize;
use sqlx::{Acquire, PgConnection, PgPool};
use txlab_api::fault::FaultPoint;
use txlab_api::participant::{reasons, StepReply};
use txlab_api::Role;
use uuid::Uuid;

use crate::faults::Faults;
use crate::http::ApiError;
use crate::roles::AppState;

/// A refusal on business grounds, e.g. insufficient funds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub code: &'static str,
    pub message: String,
}

/// A participant's business table: one row per key (customer, SKU, slot)
/// with an amount and how much of it is held (reserved or booked).
pub struct BusinessTable {
    pub table: &'static str,
    pub key: &'static str,
    pub amount: &'static str,
    pub held: &'static str,
}

/// What a participant does to its business table; the record-keeping around
/// it is shared (see the module docs).
pub trait Participant: Send + Sync + 'static {
    const ROLE: Role;
    const BUSINESS: BusinessTable;
    /// Table of per-order records.
    const RECORDS: &'static str;
    /// Record state once the forward operation applied, e.g. `captured`.
    const APPLIED: &'static str;
    /// Record state once the compensation undid it, e.g. `refunded`.
    const UNDONE: &'static str;
    /// URL segments: `/{COLLECTION}/{order_id}/{FORWARD_OP}` and `/{UNDO_OP}`.
    const COLLECTION: &'static str;
    const FORWARD_OP: &'static str;
    const UNDO_OP: &'static str;

    type Request: Serialize + DeserializeOwned + Send + Sync + 'static;

    /// Checks the request's shape before any database work.
    fn validate(req: &Self::Request) -> Result<(), String>;

    /// Applies the effect inside the caller's transaction. A refusal must
    /// leave the transaction as it found it or the caller rolls it back.
    fn apply(conn: &mut PgConnection, req: &Self::Request) -> impl Future<Output = sqlx::Result<Result<(), Refusal>>> + Send;

    /// Undoes an applied effect inside the caller's transaction.
    fn undo(conn: &mut PgConnection, req: &Self::Request) -> impl Future<Output = sqlx::Result<()>> + Send;
}

const REJECTED: &str = "rejected";
const VOIDED: &str = "voided";
/// A racing duplicate insert is retried this many times before giving up.
const RACE_RETRIES: usize = 3;

fn reply(order_id: Uuid, state: &str, repeated: bool) -> StepReply {
    StepReply { order_id, state: state.to_string(), repeated }
}

async fn forward_once<P: Participant>(pool: &PgPool, order_id: Uuid, req: &P::Request) -> Result<StepReply, ApiError> {
    let mut tx = pool.begin().await?;
    let existing: Option<(String, Option<String>)> =
        sqlx::query_as(&format!("SELECT state, reason FROM {} WHERE order_id = $1 FOR UPDATE", P::RECORDS))
            .bind(order_id)
            .fetch_optional(&mut *tx)
            .await?;
    match existing {
        Some((state, _)) if state == P::APPLIED => Ok(reply(order_id, &state, true)),
        Some((state, reason)) if state == REJECTED => {
            let code = reason.unwrap_or_else(|| REJECTED.into());
            Err(ApiError::refused(&code, format!("order {order_id} was refused before: {code}")))
        }
        Some((state, _)) => Err(ApiError::refused(
            reasons::ALREADY_COMPENSATED,
            format!("order {order_id} is already {state}; the operation may not run after its compensation"),
        )),
        None => {
            let request = serde_json::to_value(req).map_err(anyhow::Error::from)?;
            // A savepoint, so a refusal half-way through drops partial changes
            // but keeps the transaction for the `rejected` record.
            let mut sp = tx.begin().await?;
            let outcome = P::apply(&mut sp, req).await?;
            let (state, reason) = match &outcome {
                Ok(()) => {
                    sp.commit().await?;
                    (P::APPLIED, None)
                }
                Err(refusal) => {
                    sp.rollback().await?;
                    (REJECTED, Some(refusal.code))
                }
            };
            let movements = i32::from(outcome.is_ok());
            sqlx::query(&format!(
                "INSERT INTO {} (order_id, state, reason, request, movements, updated_ms) VALUES ($1, $2, $3, $4, $5, $6)",
                P::RECORDS
            ))
            .bind(order_id)
            .bind(state)
            .bind(reason)
            .bind(&request)
            .bind(movements)
            .bind(txlab_tx::now_ms())
            .execute(&mut *tx)
            .await?;
            tx.commit().await?;
            match outcome {
                Ok(()) => Ok(reply(order_id, state, false)),
                Err(r) => Err(ApiError::refused(r.code, r.message)),
            }
        }
    }
}

async fn compensate_once<P: Participant>(pool: &PgPool, order_id: Uuid) -> Result<StepReply, ApiError> {
    let mut tx = pool.begin().await?;
    let existing: Option<(String, serde_json::Value)> =
        sqlx::query_as(&format!("SELECT state, request FROM {} WHERE order_id = $1 FOR UPDATE", P::RECORDS))
            .bind(order_id)
            .fetch_optional(&mut *tx)
            .await?;
    let out = match existing {
        None => {
            sqlx::query(&format!(
                "INSERT INTO {} (order_id, state, request, updated_ms) VALUES ($1, $2, 'null', $3)",
                P::RECORDS
            ))
            .bind(order_id)
            .bind(VOIDED)
            .bind(txlab_tx::now_ms())
            .execute(&mut *tx)
            .await?;
            reply(order_id, VOIDED, false)
        }
        Some((state, request)) if state == P::APPLIED => {
            let req: P::Request = serde_json::from_value(request).map_err(anyhow::Error::from)?;
            P::undo(&mut tx, &req).await?;
            sqlx::query(&format!(
                "UPDATE {} SET state = $2, movements = movements + 1, updated_ms = $3 WHERE order_id = $1",
                P::RECORDS
            ))
            .bind(order_id)
            .bind(P::UNDONE)
            .bind(txlab_tx::now_ms())
            .execute(&mut *tx)
            .await?;
            reply(order_id, P::UNDONE, false)
        }
        Some((state, _)) => reply(order_id, &state, true),
    };
    tx.commit().await?;
    Ok(out)
}

/// Retries an operation whose first attempt lost a race to insert the same
/// record; the retry then finds the record and answers from it.
async fn with_race_retry<F, Fut>(mut op: F) -> Result<StepReply, ApiError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<StepReply, ApiError>>,
{
    for _ in 0..RACE_RETRIES {
        match op().await {
            Err(ApiError::Internal(e)) if e.downcast_ref::<sqlx::Error>().is_some_and(crate::db::is_unique_violation) => continue,
            other => return other,
        }
    }
    Err(ApiError::Unavailable("lost a race on the same order repeatedly; retry".into()))
}

#[tracing::instrument(skip_all, fields(order_id = tracing::field::Empty, role = %P::ROLE, op = P::FORWARD_OP))]
async fn forward<P: Participant>(
    State(state): State<AppState>,
    faults: Faults,
    path: Result<Path<Uuid>, axum::extract::rejection::PathRejection>,
    body: Result<Json<P::Request>, axum::extract::rejection::JsonRejection>,
) -> Result<Json<StepReply>, ApiError> {
    let Path(order_id) = path?;
    tracing::Span::current().record("order_id", tracing::field::display(order_id));
    let Json(req) = body?;
    P::validate(&req).map_err(ApiError::BadRequest)?;
    faults.fire(P::ROLE, FaultPoint::BeforeDb).await?;
    let result = with_race_retry(|| forward_once::<P>(&state.pool, order_id, &req)).await;
    state.metrics.event(P::FORWARD_OP, if result.is_ok() { "applied" } else { "refused" });
    let out = result?;
    faults.fire(P::ROLE, FaultPoint::AfterDb).await?;
    faults.fire(P::ROLE, FaultPoint::BeforeReply).await?;
    tracing::info!(state = %out.state, repeated = out.repeated, "forward");
    Ok(Json(out))
}

#[tracing::instrument(skip_all, fields(order_id = tracing::field::Empty, role = %P::ROLE, op = P::UNDO_OP))]
async fn compensate<P: Participant>(
    State(state): State<AppState>,
    faults: Faults,
    path: Result<Path<Uuid>, axum::extract::rejection::PathRejection>,
) -> Result<Json<StepReply>, ApiError> {
    let Path(order_id) = path?;
    tracing::Span::current().record("order_id", tracing::field::display(order_id));
    faults.fire(P::ROLE, FaultPoint::BeforeDb).await?;
    let out = with_race_retry(|| compensate_once::<P>(&state.pool, order_id)).await?;
    state.metrics.event(P::UNDO_OP, &out.state);
    faults.fire(P::ROLE, FaultPoint::AfterDb).await?;
    faults.fire(P::ROLE, FaultPoint::BeforeReply).await?;
    tracing::info!(state = %out.state, repeated = out.repeated, "compensate");
    Ok(Json(out))
}

#[derive(Debug, Clone, serde::Serialize, sqlx::FromRow)]
pub struct RecordRow {
    pub order_id: Uuid,
    pub state: String,
    pub request: serde_json::Value,
    pub movements: i32,
}

/// Sets each business row's starting amount and clears what it held.
pub async fn seed<P: Participant>(conn: &mut PgConnection, rows: &[(&str, i64)]) -> sqlx::Result<usize> {
    let BusinessTable { table, key, amount, held } = P::BUSINESS;
    let keys: Vec<&str> = rows.iter().map(|r| r.0).collect();
    let amounts: Vec<i64> = rows.iter().map(|r| r.1).collect();
    sqlx::query(&format!(
        "INSERT INTO {table} ({key}, {amount}) SELECT * FROM UNNEST($1::text[], $2::bigint[]) \
         ON CONFLICT ({key}) DO UPDATE SET {amount} = EXCLUDED.{amount}, {held} = 0"
    ))
    .bind(&keys)
    .bind(&amounts)
    .execute(conn)
    .await?;
    Ok(rows.len())
}

/// Every business row as (key, amount, held), for the audit snapshot.
pub async fn business_rows<P: Participant>(conn: &mut PgConnection) -> sqlx::Result<Vec<(String, i64, i64)>> {
    let BusinessTable { table, key, amount, held } = P::BUSINESS;
    sqlx::query_as(&format!("SELECT {key}, {amount}, {held} FROM {table} ORDER BY {key}"))
        .fetch_all(conn)
        .await
}

/// Every record, for the audit snapshot.
pub async fn records<P: Participant>(conn: &mut PgConnection) -> sqlx::Result<Vec<RecordRow>> {
    sqlx::query_as(&format!("SELECT order_id, state, request, movements FROM {} ORDER BY order_id", P::RECORDS))
        .fetch_all(conn)
        .await
}

/// The participant's forward and compensation endpoints.
pub fn routes<P: Participant>() -> Router<AppState> {
    Router::new()
        .route(&format!("/{}/{{order_id}}/{}", P::COLLECTION, P::FORWARD_OP), post(forward::<P>))
        .route(&format!("/{}/{{order_id}}/{}", P::COLLECTION, P::UNDO_OP), post(compensate::<P>))
        .route(&format!("/{}/{{order_id}}", P::COLLECTION), get(record::<P>))
}

async fn record<P: Participant>(
    State(state): State<AppState>,
    path: Result<Path<Uuid>, axum::extract::rejection::PathRejection>,
) -> Result<Json<RecordRow>, ApiError> {
    let Path(order_id) = path?;
    sqlx::query_as(&format!("SELECT order_id, state, request, movements FROM {} WHERE order_id = $1", P::RECORDS))
        .bind(order_id)
        .fetch_optional(&state.pool)
        .await?
        .map(Json)
        .ok_or_else(|| ApiError::NotFound(format!("no {} record for order {order_id}", P::ROLE)))
}
