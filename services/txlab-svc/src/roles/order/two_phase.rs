//! The two-phase coordinator for `twopc` and `tcc`: ask every participant
//! to prepare (or try), log one decision durably, then drive that decision
//! (commit or rollback; confirm or cancel) to every participant until done.
//! The decision can also be read by participants resolving an in-doubt
//! branch (`GET /twopc/{id}/decision`), which presumes abort for a
//! transaction stuck undecided.

use std::sync::Arc;

use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::Json;
use txlab_api::fault::FaultPoint;
use txlab_api::participant::{Decision as WireDecision, DecisionKind};
use txlab_api::{Step, TxMode};
use txlab_tx::saga::Forward;
use txlab_tx::two_phase::{Decision, Next, Phase2, Vote};
use uuid::Uuid;

use super::calls::{ask, insist, CallError, Op};
use super::outcome::{finish, state_of};
use super::store::{load_order, load_two_phase, log_decision, mark, Mark};
use super::Orders;
use crate::faults::Faults;
use crate::http::ApiError;

/// How long a transaction's vote phase may make no progress (no vote asked
/// or recorded) before a participant's question makes the coordinator
/// presume abort. Counted from its last progress, not from the order's age,
/// so a slow vote phase that is still moving is never aborted.
const PRESUME_ABORT_AFTER_MS: i64 = 10_000;

/// The operations of each phase under a method.
fn ops(method: TxMode) -> (Op, Op, Op) {
    match method {
        TxMode::Tcc => (Op::Try, Op::Confirm, Op::Cancel),
        _ => (Op::Prepare, Op::Commit, Op::Rollback),
    }
}

/// Runs the two-phase transaction of `id` until it is decided and done
/// everywhere. A cancel after the commit decision is handed to the saga
/// engine's compensation (a business compensation, not an abort).
pub async fn run(orders: &Orders, id: Uuid) -> anyhow::Result<()> {
    loop {
        let mut conn = orders.app.pool.acquire().await?;
        let Some(order) = load_order(&mut conn, id).await? else {
            return Ok(());
        };
        if order.state.is_terminal() {
            return Ok(()); // decided; a cancel moves it back to compensating first
        }
        let tp = load_two_phase(&mut conn, &order).await?;
        drop(conn);
        let method = order.method;
        let (vote_op, commit_op, abort_op) = ops(method);
        let pool = &orders.app.pool;
        match tp.next() {
            Next::Ask(i) => {
                let step = Step::ALL[i];
                mark(pool, id, step, Mark::Vote(Vote::Asked), None).await?;
                let (vote, reason) = match ask(orders, &order, step, vote_op).await {
                    Ok(()) => (Vote::Yes, None),
                    Err(CallError::Refused(code)) => (Vote::No, Some(format!("{}: {code}", step.as_str()))),
                    Err(CallError::Transient(e)) => (
                        Vote::Unknown,
                        Some(format!("{}: no vote after retries ({e})", step.as_str())),
                    ),
                };
                orders.app.metrics.event("vote", vote.as_str());
                tracing::info!(step = step.as_str(), vote = vote.as_str(), "vote");
                mark(pool, id, step, Mark::Vote(vote), reason.as_deref()).await?;
            }
            Next::Decide(decision) => {
                let stands = log_decision(pool, id, decision, false).await?;
                orders.app.metrics.event("decision", stands.as_str());
                tracing::info!(decision = stands.as_str(), "decision logged");
                // The coordinator's own crash point: decided, nobody told yet.
                // Only a delay or a crash makes sense here; an injected error
                // would merely stall the coordinator.
                let faults = Faults::parse(order.fault.as_deref(), orders.app.faults.clone())?;
                let point = if method == TxMode::Tcc {
                    FaultPoint::DuringConfirm
                } else {
                    FaultPoint::DuringCommit
                };
                if let Err(e) = faults.fire(point).await {
                    tracing::warn!(error = %e, "injected coordinator error ignored");
                }
            }
            Next::Complete(i, decision) => {
                let step = Step::ALL[i];
                mark(pool, id, step, Mark::Phase2(Phase2::Started), None).await?;
                insist(
                    orders,
                    &order,
                    step,
                    if decision == Decision::Commit {
                        commit_op
                    } else {
                        abort_op
                    },
                )
                .await;
                mark(pool, id, step, Mark::Phase2(Phase2::Done), None).await?;
            }
            Next::Finish(outcome) => {
                if tp.decision == Some(Decision::Commit) {
                    // Every effect now stands, exactly as after a saga's
                    // forward steps: a later cancel compensates them.
                    sqlx::query("UPDATE saga_steps SET forward = $2 WHERE order_id = $1 AND forward <> $2")
                        .bind(id)
                        .bind(Forward::Done.as_str())
                        .execute(pool)
                        .await?;
                    if order.cancel_requested {
                        return super::saga::run(orders, id).await;
                    }
                }
                if finish(orders, &order, state_of(outcome)).await? {
                    return Ok(());
                }
            }
        }
    }
}

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DecisionQuery {
    /// Ask the coordinator to presume abort if it is stuck undecided.
    #[serde(default)]
    presume_abort: bool,
}

/// `GET /twopc/{id}/decision[?presume_abort=true]`
pub async fn decision(
    State(orders): State<Arc<Orders>>,
    path: Result<Path<Uuid>, PathRejection>,
    query: Result<Query<DecisionQuery>, QueryRejection>,
) -> Result<Json<WireDecision>, ApiError> {
    let Path(id) = path?;
    let Query(q) = query?;
    let mut conn = orders.app.pool.acquire().await?;
    let mut decision = super::store::load_decision(&mut conn, id).await?;
    if decision.is_none() && q.presume_abort && may_presume_abort(&orders, &mut conn, id).await? {
        // The decision's primary key keeps this from racing with a commit.
        let d = log_decision(&orders.app.pool, id, Decision::Abort, true).await?;
        tracing::warn!(order_id = %id, decision = d.as_str(), "decision presumed for an in-doubt branch");
        decision = Some(d);
        orders.clone().drive(id);
    }
    Ok(Json(WireDecision {
        order_id: id,
        decision: decision.map(|d| match d {
            Decision::Commit => DecisionKind::Commit,
            Decision::Abort => DecisionKind::Abort,
        }),
    }))
}

/// Whether an undecided transaction may be presumed aborted: it is unknown
/// here (never started, or reset away), or it is a `twopc` transaction no
/// live coordinator is driving and whose vote phase has not moved for
/// [`PRESUME_ABORT_AFTER_MS`]. Orders of other methods are never presumed.
async fn may_presume_abort(orders: &Orders, conn: &mut sqlx::PgConnection, id: Uuid) -> sqlx::Result<bool> {
    let found: Option<(String, Option<i64>)> = sqlx::query_as(
        "SELECT o.method, (SELECT max(b.updated_ms) FROM tx_branches b WHERE b.order_id = o.id) FROM orders o WHERE o.id = $1",
    )
    .bind(id)
    .fetch_optional(conn)
    .await?;
    let Some((method, last_progress)) = found else {
        return Ok(true);
    };
    if method != TxMode::Twopc.as_str() || orders.is_driving(id) {
        return Ok(false);
    }
    Ok(last_progress.is_none_or(|t| txlab_tx::now_ms() - t > PRESUME_ABORT_AFTER_MS))
}
