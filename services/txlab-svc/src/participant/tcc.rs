//! TCC: Try holds the resources, Confirm takes them, Cancel lets them go.
//! The record is the barrier (see the module above): a repeated call is a
//! no-op, a Cancel before its Try leaves a `voided` record (null
//! compensation), and a Try after its Cancel finds it and is refused (no
//! hanging hold).

use axum::routing::post;
use axum::Router;
use sqlx::{Acquire, PgPool};
use txlab_api::fault::FaultPoint;
use txlab_api::participant::StepReply;
use uuid::Uuid;

use super::*;

/// TCC paths: `/tcc/{collection}/{order_id}/{try|confirm|cancel}`.
pub fn path<P: Participant>(op: &str) -> String {
    format!("/tcc/{}/{{order_id}}/{op}", P::COLLECTION)
}

fn conflict(order_id: Uuid, state: &dyn std::fmt::Display, op: &str) -> OpError {
    OpError::Conflict {
        code: "wrong_state",
        message: format!("cannot {op} order {order_id}: its record is {state}"),
    }
}

pub async fn try_once<P: Participant>(
    pool: &PgPool,
    faults: &Faults,
    fence: &Fence,
    order_id: Uuid,
    req: &P::Request,
) -> Result<StepReply, OpError> {
    let mut conn = pool.acquire().await?;
    // A fault during the try fires inside its transaction, between the
    // hold and the commit: only the step-by-step path has that moment.
    if !faults.may_fire(FaultPoint::DuringTry)
        && forward_at_once::<P>(
            &mut conn,
            fence,
            order_id,
            req,
            ledger::Forward::Hold,
            RecordState::Tried,
        )
        .await?
    {
        return Ok(reply(order_id, RecordState::Tried, false));
    }
    let mut tx = conn.begin().await?;
    fence.check(&mut tx).await?;
    if let Some(record) = lock_record::<P>(&mut tx, order_id).await? {
        return match record.state {
            s if s == RecordState::Tried || s == P::APPLIED => Ok(reply(order_id, s, true)),
            _ => Err(refused_by_record(order_id, &record)),
        };
    }
    let request = stored_request::<P>(req)?;
    match forward_refusable::<P>(&mut tx, order_id, req, ledger::Forward::Hold).await? {
        Ok(()) => {
            insert_record::<P>(&mut tx, order_id, RecordState::Tried, None, &request).await?;
            faults.fire(FaultPoint::DuringTry).await.map_err(OpError::Fault)?;
            tx.commit().await?;
            Ok(reply(order_id, RecordState::Tried, false))
        }
        Err(refusal) => {
            insert_record::<P>(
                &mut tx,
                order_id,
                RecordState::Rejected,
                Some(refusal.code),
                &request,
            )
            .await?;
            tx.commit().await?;
            Err(OpError::refused(refusal.code, refusal.message))
        }
    }
}

pub async fn confirm_once<P: Participant>(
    pool: &PgPool,
    faults: &Faults,
    fence: &Fence,
    order_id: Uuid,
) -> Result<StepReply, OpError> {
    // A fault during the confirm fires between the capture and the commit:
    // only the step-by-step path has that moment.
    if !faults.may_fire(FaultPoint::DuringConfirm) {
        let mut conn = pool.acquire().await?;
        return match ledger::capture_at_once::<P>(&mut conn, fence.epoch(), order_id).await? {
            ledger::Captured::Stale(ours) => Err(Fence::stale(fence.epoch().unwrap_or_default(), &ours)),
            ledger::Captured::Record(before) => confirmed::<P>(order_id, before),
        };
    }
    let mut tx = pool.begin().await?;
    fence.check(&mut tx).await?;
    let record = lock_record::<P>(&mut tx, order_id).await?;
    let before = record.as_ref().map(|r| r.state);
    if let Some(r) = record.filter(|r| r.state == RecordState::Tried) {
        ledger::capture::<P>(&mut tx, order_id, &r.request::<P>()?).await?;
        advance_record::<P>(&mut tx, order_id, P::APPLIED).await?;
        faults
            .fire(FaultPoint::DuringConfirm)
            .await
            .map_err(OpError::Fault)?;
    }
    let out = confirmed::<P>(order_id, before)?;
    tx.commit().await?;
    Ok(out)
}

/// A confirm's answer, from the record as it found it: a `tried` record
/// it has just captured, a captured one a repeat; anything else refuses.
fn confirmed<P: Participant>(order_id: Uuid, before: Option<RecordState>) -> Result<StepReply, OpError> {
    match before {
        None => Err(conflict(order_id, &"missing (no try)", "confirm")),
        Some(RecordState::Tried) => Ok(reply(order_id, P::APPLIED, false)),
        Some(s) if s == P::APPLIED => Ok(reply(order_id, s, true)),
        Some(s) => Err(conflict(order_id, &s, "confirm")),
    }
}

pub async fn cancel_once<P: Participant>(
    pool: &PgPool,
    faults: &Faults,
    fence: &Fence,
    order_id: Uuid,
) -> Result<StepReply, OpError> {
    let mut tx = pool.begin().await?;
    fence.check(&mut tx).await?;
    let out = match lock_record::<P>(&mut tx, order_id).await? {
        None => void_record::<P>(&mut tx, order_id).await?,
        Some(r) if r.state == RecordState::Tried => {
            ledger::release::<P>(&mut tx, order_id, &r.request::<P>()?).await?;
            advance_record::<P>(&mut tx, order_id, RecordState::Aborted).await?;
            reply(order_id, RecordState::Aborted, false)
        }
        Some(r) if r.state == P::APPLIED => return Err(conflict(order_id, &r.state, "cancel")),
        Some(r) => reply(order_id, r.state, true),
    };
    faults
        .fire(FaultPoint::DuringCancel)
        .await
        .map_err(OpError::Fault)?;
    tx.commit().await?;
    Ok(out)
}

participant_op!(fn try_, "try", |state, faults, fence, id, req| try_once::<P>(&state.pool, &faults, &fence, id, &req));
participant_op!(fn confirm, "confirm", |state, faults, fence, id| confirm_once::<P>(&state.pool, &faults, &fence, id));
participant_op!(fn cancel, "cancel", |state, faults, fence, id| cancel_once::<P>(&state.pool, &faults, &fence, id));

pub fn routes<P: Participant>() -> Router<AppState> {
    Router::new()
        .route(&path::<P>("try"), post(try_::<P>))
        .route(&path::<P>("confirm"), post(confirm::<P>))
        .route(&path::<P>("cancel"), post(cancel::<P>))
}
