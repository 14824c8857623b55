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
use txlab_tx::two_phase::{Decision, Next, Phase2, TwoPhase, Vote};
use uuid::Uuid;

use futures_util::future::join_all;

use super::calls::{ask, insist, CallError, Op};
use super::outcome::{finish_with, state_of};
use super::store::{load_order, load_two_phase, log_decision, Mark, OrderRow, Unwritten};
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

/// The order and its two-phase log as the coordinator last read them.
async fn load(orders: &Orders, id: Uuid) -> anyhow::Result<Option<(OrderRow, TwoPhase)>> {
    let mut conn = orders.app.pool.acquire().await?;
    let Some(order) = load_order(&mut conn, id).await? else {
        return Ok(None);
    };
    let tp = load_two_phase(&mut conn, &order).await?;
    Ok(Some((order, tp)))
}

/// Runs the two-phase transaction of `id` until it is decided and done
/// everywhere. A cancel after the commit decision is handed to the saga
/// engine's compensation (a business compensation, not an abort).
///
/// TCC's tries are asked all at once, 2PC's prepares one after the other
/// in a fixed order (see [`TwoPhase::votes_at_once`]); the decision is
/// driven to all participants at once. The log is kept in memory between writes, as
/// the saga engine does: the intent to ask every participant is written
/// once before the first call, the votes with the decision, and the end
/// of phase two with the outcome. What must be durable before a call is:
/// that votes were asked (so a restarted coordinator knows branches may
/// exist) and the decision (the commit point).
///
/// `born` is the order as its creation wrote it, when this process created
/// it: nothing asked, nothing decided yet.
pub async fn run(orders: &Orders, id: Uuid, born: Option<OrderRow>) -> anyhow::Result<()> {
    let mut unwritten: Vec<Unwritten> = Vec::new();
    let loaded = match born {
        Some(order) => {
            let tp = TwoPhase::new(Step::ALL.len(), order.method == TxMode::Tcc);
            Some((order, tp))
        }
        None => load(orders, id).await?,
    };
    let Some((mut order, mut tp)) = loaded else {
        return Ok(());
    };
    let _turn = if order.method == TxMode::Twopc {
        Some(orders.twopc_at_once.acquire().await?)
    } else {
        None
    };
    loop {
        if orders.take_rerun(id) {
            orders.commit_marks(id, &mut unwritten).await?;
            let Some(fresh) = load(orders, id).await? else {
                return Ok(());
            };
            (order, tp) = fresh;
        }
        if order.state.is_terminal() {
            return Ok(()); // decided; a cancel moves it back to compensating first
        }
        let method = order.method;
        let (vote_op, commit_op, abort_op) = ops(method);
        match tp.next() {
            Next::Ask(asked) => {
                // One intent for every vote still to come, written before
                // the first call; the votes themselves wait for the decision.
                let intents: Vec<usize> = (0..tp.votes.len())
                    .filter(|&i| tp.votes[i] == Vote::NotAsked)
                    .collect();
                for &i in &intents {
                    tp.votes[i] = Vote::Asked;
                    unwritten.push(Unwritten::now(Step::ALL[i], Mark::Vote(Vote::Asked), None));
                }
                if !intents.is_empty() {
                    orders.commit_marks(id, &mut unwritten).await?;
                }
                let votes =
                    join_all(asked.iter().map(|&i| vote(orders, &order, Step::ALL[i], vote_op))).await;
                for (&i, (vote, reason)) in asked.iter().zip(votes) {
                    tp.votes[i] = vote;
                    unwritten.push(Unwritten::now(Step::ALL[i], Mark::Vote(vote), reason));
                }
            }
            Next::Decide(decision) => {
                let mut tx = orders.app.pool.begin().await?;
                orders.write_marks(&mut tx, id, &mut unwritten).await?;
                let stands = log_decision(&mut tx, id, decision, false).await?;
                tx.commit().await?;
                tp.decision = Some(stands);
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
            Next::Complete(told, decision) => {
                let op = if decision == Decision::Commit {
                    commit_op
                } else {
                    abort_op
                };
                join_all(told.iter().map(|&i| insist(orders, &order, Step::ALL[i], op))).await;
                for &i in &told {
                    tp.phase2[i] = Phase2::Done;
                    unwritten.push(Unwritten::now(Step::ALL[i], Mark::Phase2(Phase2::Done), None));
                }
            }
            Next::Finish(outcome) => {
                if tp.decision == Some(Decision::Commit) {
                    // Every effect now stands, exactly as after a saga's
                    // forward steps: a later cancel compensates them.
                    unwritten.extend(
                        Step::ALL
                            .iter()
                            .map(|&step| Unwritten::now(step, Mark::Forward(Forward::Done), None)),
                    );
                    if order.cancel_requested {
                        orders.commit_marks(id, &mut unwritten).await?;
                        return super::saga::run(orders, id, None).await;
                    }
                }
                if finish_with(orders, &order, state_of(outcome), &mut unwritten).await? {
                    return Ok(());
                }
                let Some(fresh) = load(orders, id).await? else {
                    return Ok(());
                };
                (order, tp) = fresh;
            }
        }
    }
}

/// Asks one participant for its vote: the vote and, for anything but a
/// yes, the reason.
async fn vote(orders: &Orders, order: &OrderRow, step: Step, op: Op) -> (Vote, Option<String>) {
    let (vote, reason) = match ask(orders, order, step, op).await {
        Ok(()) => (Vote::Yes, None),
        Err(CallError::Refused(code)) => (Vote::No, Some(format!("{}: {code}", step.as_str()))),
        Err(CallError::Transient(e)) => (
            Vote::Unknown,
            Some(format!("{}: no vote after retries ({e})", step.as_str())),
        ),
    };
    orders.app.metrics.event("vote", vote.as_str());
    tracing::info!(step = step.as_str(), vote = vote.as_str(), "vote");
    (vote, reason)
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
    if decision.is_none() && q.presume_abort && may_presume_abort(&mut conn, id).await? {
        // The decision's primary key keeps this from racing with a commit.
        let d = log_decision(&mut conn, id, Decision::Abort, true).await?;
        tracing::warn!(order_id = %id, decision = d.as_str(), "decision presumed for an in-doubt branch");
        decision = Some(d);
        orders.clone().claim_and_drive(id);
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
/// here (never started, or reset away), or it is a `twopc` transaction
/// whose driver (the replica running its coordinator) is gone and whose
/// vote phase has not moved for
/// [`PRESUME_ABORT_AFTER_MS`]. Orders of other methods are never presumed.
async fn may_presume_abort(conn: &mut sqlx::PgConnection, id: Uuid) -> sqlx::Result<bool> {
    let found: Option<(String, Option<i64>)> = sqlx::query_as(
        "SELECT o.method, (SELECT max(b.updated_ms) FROM tx_branches b WHERE b.order_id = o.id) FROM orders o WHERE o.id = $1",
    )
    .bind(id)
    .fetch_optional(&mut *conn)
    .await?;
    let Some((method, last_progress)) = found else {
        return Ok(true);
    };
    if method != TxMode::Twopc.as_str() || super::drivers::driver_alive(conn, id).await? {
        return Ok(false);
    }
    Ok(last_progress.is_none_or(|t| txlab_tx::now_ms() - t > PRESUME_ABORT_AFTER_MS))
}
