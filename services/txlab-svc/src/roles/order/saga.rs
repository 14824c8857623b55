//! The saga orchestrator: persists each step's start before its call and
//! its result with the next write (before any further call), asks the pure
//! state machine ([`txlab_tx::saga`]) what comes next — so a restart
//! resumes where it stopped, repeating at most the call in flight.
//!
//! Every method uses its compensation half to undo a confirmed order that
//! is cancelled (a business compensation after the commit point).

use txlab_api::Step;
use txlab_tx::saga::{Compensation, Forward, Next, Saga};
use uuid::Uuid;

use super::calls::{ask, insist, CallError, Op};
use super::outcome::{finish_with, set_compensating, state_of};
use super::store::{load_order_and_saga, Mark, OrderRow, Unwritten};
use super::Orders;

/// The order and its saga log as the engine last read them.
async fn load(orders: &Orders, id: Uuid) -> anyhow::Result<Option<(OrderRow, Saga)>> {
    // None: reset away between cells.
    Ok(load_order_and_saga(&mut *orders.app.pool.acquire().await?, id).await?)
}

/// Runs the saga of `id` until it finishes (or the order is gone).
///
/// The log is read once and then kept in memory; it is read again only
/// when a cancel asked this process to look (or a confirmation lost to a
/// cancel). Each step's result is written in one transaction with the
/// next step's start (or with the outcome), so a step costs one commit
/// here besides the participant's own.
///
/// `born` is the order as its creation wrote it, when this process created
/// it: its log then holds the first call's intent and nothing else.
pub async fn run(orders: &Orders, id: Uuid, born: Option<OrderRow>) -> anyhow::Result<()> {
    let mut unwritten: Vec<Unwritten> = Vec::new();
    let loaded = match born {
        Some(order) => {
            let mut saga = Saga::new(Step::ALL.len());
            saga.record_forward(0, Forward::Started);
            Some((order, saga))
        }
        None => load(orders, id).await?,
    };
    let Some((mut order, mut saga)) = loaded else {
        return Ok(());
    };
    loop {
        if orders.take_rerun(id) {
            orders.commit_marks(id, &mut unwritten).await?;
            let Some(fresh) = load(orders, id).await? else {
                return Ok(());
            };
            (order, saga) = fresh;
        }
        if order.state.is_terminal() {
            return Ok(()); // decided; a cancel moves it back to compensating first
        }
        match saga.next() {
            Next::Run(i) => {
                let step = Step::ALL[i];
                if saga.steps[i].forward != Forward::Started {
                    saga.record_forward(i, Forward::Started);
                    unwritten.push(Unwritten::now(step, Mark::Forward(Forward::Started), None));
                }
                // The first call's intent was written with the order: no
                // transaction to open for it (the call is idempotent, and
                // its result's write checks that this replica still drives).
                orders.commit_marks(id, &mut unwritten).await?;
                let (forward, reason) = match ask(orders, &order, step, Op::Apply).await {
                    Ok(()) => (Forward::Done, None),
                    Err(CallError::Refused(code)) => {
                        (Forward::Rejected, Some(format!("{}: {code}", step.as_str())))
                    }
                    Err(CallError::Transient(e)) => (
                        Forward::Unknown,
                        Some(format!("{}: gave up after retries ({e})", step.as_str())),
                    ),
                };
                orders.app.metrics.event("step", forward.as_str());
                tracing::info!(step = step.as_str(), outcome = forward.as_str(), "step");
                saga.record_forward(i, forward);
                unwritten.push(Unwritten::now(step, Mark::Forward(forward), reason));
            }
            Next::Compensate(i) => {
                let step = Step::ALL[i];
                let mut tx = orders.app.pool.begin().await?;
                set_compensating(&mut tx, id).await?;
                unwritten.push(Unwritten::now(
                    step,
                    Mark::Compensation(Compensation::Started),
                    None,
                ));
                orders.write_marks(&mut tx, id, &mut unwritten).await?;
                tx.commit().await?;
                insist(orders, &order, step, Op::Compensate).await;
                orders.app.metrics.event("compensation", step.as_str());
                tracing::info!(step = step.as_str(), "compensated");
                saga.record_compensation(i, Compensation::Done);
                unwritten.push(Unwritten::now(step, Mark::Compensation(Compensation::Done), None));
            }
            Next::Finish(outcome) => {
                if finish_with(orders, &order, state_of(outcome), &mut unwritten).await? {
                    return Ok(());
                }
                // A cancel raced with the confirmation: read the log again.
                let Some(fresh) = load(orders, id).await? else {
                    return Ok(());
                };
                (order, saga) = fresh;
            }
        }
    }
}
