//! Saga operations: apply a step in one local transaction, and compensate
//! it. The compensation is also every method's business compensation when
//! a confirmed order is cancelled.

use axum::routing::post;
use axum::Router;
use sqlx::{Acquire, PgConnection, PgPool};
use txlab_api::participant::StepReply;
use uuid::Uuid;

use super::*;

/// Applies the step inside the caller's transaction (an HTTP call's own, or
/// an event's together with its inbox and outbox rows). A refusal is
/// recorded too and returned as `Err`, so the caller must still commit.
pub async fn apply_in<P: Participant>(
    conn: &mut PgConnection,
    order_id: Uuid,
    req: &P::Request,
) -> Result<StepReply, OpError> {
    if forward_at_once::<P>(
        conn,
        &Fence::default(),
        order_id,
        req,
        ledger::Forward::Take,
        P::APPLIED,
    )
    .await?
    {
        return Ok(reply(order_id, P::APPLIED, false));
    }
    apply_step_by_step::<P>(conn, order_id, req).await
}

/// [`apply_in`] statement by statement: answers from the order's record
/// when it has one, records a refusal.
async fn apply_step_by_step<P: Participant>(
    conn: &mut PgConnection,
    order_id: Uuid,
    req: &P::Request,
) -> Result<StepReply, OpError> {
    if let Some(record) = lock_record::<P>(conn, order_id).await? {
        return match record.state {
            s if s == P::APPLIED => Ok(reply(order_id, s, true)),
            _ => Err(refused_by_record(order_id, &record)),
        };
    }
    let request = stored_request::<P>(req)?;
    match forward_refusable::<P>(conn, order_id, req, ledger::Forward::Take).await? {
        Ok(()) => {
            insert_record::<P>(conn, order_id, P::APPLIED, None, &request).await?;
            Ok(reply(order_id, P::APPLIED, false))
        }
        Err(refusal) => {
            insert_record::<P>(
                conn,
                order_id,
                RecordState::Rejected,
                Some(refusal.code),
                &request,
            )
            .await?;
            Err(OpError::refused(refusal.code, refusal.message))
        }
    }
}

/// Undoes whatever this participant holds or took for the order, inside
/// the caller's transaction.
pub async fn compensate_in<P: Participant>(
    conn: &mut PgConnection,
    order_id: Uuid,
) -> Result<StepReply, OpError> {
    Ok(match lock_record::<P>(conn, order_id).await? {
        None => void_record::<P>(conn, order_id).await?,
        Some(r) if r.state == P::APPLIED => {
            ledger::restore::<P>(conn, order_id, &r.request::<P>()?).await?;
            advance_record::<P>(conn, order_id, P::UNDONE).await?;
            reply(order_id, P::UNDONE, false)
        }
        Some(r) if r.state == RecordState::Tried => {
            ledger::release::<P>(conn, order_id, &r.request::<P>()?).await?;
            advance_record::<P>(conn, order_id, RecordState::Aborted).await?;
            reply(order_id, RecordState::Aborted, false)
        }
        Some(r) => reply(order_id, r.state, true),
    })
}

/// The common case in one statement, outside any transaction; anything
/// else (a record already there, a refusal, a basket) step by step.
async fn apply_once<P: Participant>(
    pool: &PgPool,
    fence: &Fence,
    order_id: Uuid,
    req: &P::Request,
) -> Result<StepReply, OpError> {
    let mut conn = pool.acquire().await?;
    if forward_at_once::<P>(&mut conn, fence, order_id, req, ledger::Forward::Take, P::APPLIED).await? {
        return Ok(reply(order_id, P::APPLIED, false));
    }
    let mut tx = conn.begin().await?;
    fence.check(&mut tx).await?;
    let out = apply_step_by_step::<P>(&mut tx, order_id, req).await;
    // A refusal is an answer too: its `rejected` record must stick.
    if matches!(out, Ok(_) | Err(OpError::Refused { .. })) {
        tx.commit().await?;
    }
    out
}

async fn compensate_once<P: Participant>(
    pool: &PgPool,
    fence: &Fence,
    order_id: Uuid,
) -> Result<StepReply, OpError> {
    let mut tx = pool.begin().await?;
    fence.check(&mut tx).await?;
    let out = compensate_in::<P>(&mut tx, order_id).await?;
    tx.commit().await?;
    Ok(out)
}

participant_op!(fn forward, P::FORWARD_OP, |state, faults, fence, id, req| apply_once::<P>(&state.pool, &fence, id, &req));
participant_op!(fn compensate, P::UNDO_OP, |state, faults, fence, id| compensate_once::<P>(&state.pool, &fence, id));

pub fn routes<P: Participant>() -> Router<AppState> {
    Router::new()
        .route(
            &format!("/{}/{{order_id}}/{}", P::COLLECTION, P::FORWARD_OP),
            post(forward::<P>),
        )
        .route(
            &format!("/{}/{{order_id}}/{}", P::COLLECTION, P::UNDO_OP),
            post(compensate::<P>),
        )
}
