//! The saga orchestrator: persists each step before and after its call, asks
//! the pure state machine ([`txlab_tx::saga`]) what comes next, and never
//! keeps progress only in memory — so a restart resumes where it stopped.
//!
//! Every method uses its compensation half to undo a confirmed order that
//! is cancelled (a business compensation after the commit point).

use txlab_api::Step;
use txlab_tx::saga::{Compensation, Forward, Next};
use uuid::Uuid;

use super::calls::{ask, insist, CallError, Op};
use super::outcome::{finish, set_compensating, state_of};
use super::store::{load_order, load_saga, mark, Mark};
use super::Orders;

/// Runs the saga of `id` until it finishes (or the order is gone).
pub async fn run(orders: &Orders, id: Uuid) -> anyhow::Result<()> {
    loop {
        let mut conn = orders.app.pool.acquire().await?;
        let Some(order) = load_order(&mut conn, id).await? else {
            return Ok(()); // reset away between cells
        };
        if order.state.is_terminal() {
            return Ok(()); // decided; a cancel moves it back to compensating first
        }
        let saga = load_saga(&mut conn, &order).await?;
        drop(conn);
        let pool = &orders.app.pool;
        match saga.next() {
            Next::Run(i) => {
                let step = Step::ALL[i];
                mark(pool, id, step, Mark::Forward(Forward::Started), None).await?;
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
                mark(pool, id, step, Mark::Forward(forward), reason.as_deref()).await?;
            }
            Next::Compensate(i) => {
                let step = Step::ALL[i];
                set_compensating(orders, id).await?;
                mark(pool, id, step, Mark::Compensation(Compensation::Started), None).await?;
                insist(orders, &order, step, Op::Compensate).await;
                orders.app.metrics.event("compensation", step.as_str());
                tracing::info!(step = step.as_str(), "compensated");
                mark(pool, id, step, Mark::Compensation(Compensation::Done), None).await?;
            }
            Next::Finish(outcome) => {
                if finish(orders, &order, state_of(outcome)).await? {
                    return Ok(());
                }
                // A cancel raced with the confirmation: go round again.
            }
        }
    }
}
