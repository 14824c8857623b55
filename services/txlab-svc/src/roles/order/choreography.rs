//! The event-driven methods at the order service (`saga_chor`, `outbox`):
//! there is no coordinator to call anyone. The order is placed (and
//! cancelled) by an event in the same transaction as the order row; the
//! participants' events are recorded as they arrive, and the order's state
//! follows from what has been heard ([`txlab_tx::choreography::verdict`]).

use std::sync::Arc;

use anyhow::Context;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use txlab_api::event::{checkout_topic, CheckoutEvent, CheckoutKind, OrderSpec};
use txlab_api::order::OrderState;
use txlab_api::{Role, TxMode};
use txlab_tx::choreography::{applied_may_decide, audience, verdict, Heard};
use txlab_tx::saga::{Compensation, Forward};
use uuid::Uuid;

use super::held::{HeldResult, HOLD_LIMIT};
use super::outcome::{announce, decide_in, Decided};
use super::store::{load_order_and_saga, write_marks, Mark, OrderRow, Unwritten};
use super::Orders;
use crate::messaging::consumer::{Ack, Receipt};
use crate::messaging::inbox::{self, Delivery};
use crate::messaging::outbox::{RelayWake, Written};

/// Writes a checkout event with the caller's transaction. `epoch` must
/// have been read first thing in that transaction (see [`crate::epoch::epoch`]).
/// The caller hands the rows to the relay after its commit ([`RelayWake::committed`]).
pub async fn emit(
    conn: &mut sqlx::PgConnection,
    relay: &RelayWake,
    method: TxMode,
    order_id: Uuid,
    spec: OrderSpec,
    kind: CheckoutKind,
    epoch: String,
) -> sqlx::Result<Written> {
    let event = CheckoutEvent {
        event_id: Uuid::new_v4(),
        order_id,
        kind,
        order: spec,
        epoch,
    };
    let payload = serde_json::to_value(&event).map_err(|e| sqlx::Error::Encode(Box::new(e)))?;
    let to = audience(method, &event.kind);
    crate::messaging::outbox::enqueue(conn, relay, &to, &order_id.to_string(), &payload).await
}

/// Consumes the participants' checkout events, and writes held results
/// that waited too long.
pub async fn start(
    orders: Arc<Orders>,
    brokers: &str,
    stop: watch::Receiver<bool>,
) -> anyhow::Result<JoinHandle<()>> {
    let offsets = crate::messaging::consumer::Offsets {
        pool: orders.app.pool.clone(),
        consumer: "order",
        topic: checkout_topic(Role::Order).context("the order service has no checkout topic")?,
    };
    let consumer = crate::messaging::consumer::assigned(brokers, &offsets, orders.app.replica).await?;
    Ok(tokio::spawn(async move {
        let metrics = orders.app.metrics.clone();
        let sweeping = tokio::spawn(sweep(orders.clone(), stop.clone()));
        let handler = move |event: CheckoutEvent, receipt: Receipt| {
            let orders = orders.clone();
            async move { handle(&orders, event, receipt).await }
        };
        crate::messaging::consumer::consume(consumer, offsets, metrics, stop, handler).await;
        let _ = sweeping.await;
    }))
}

#[tracing::instrument(skip_all, fields(order_id = %event.order_id, event = ?event.kind))]
async fn handle(orders: &Orders, event: CheckoutEvent, receipt: Receipt) -> anyhow::Result<Ack> {
    // The event-driven methods record what they hear in the saga log.
    let (step, heard, reason) = match &event.kind {
        CheckoutKind::Applied { step } => (*step, Mark::Forward(Forward::Done), None),
        CheckoutKind::Rejected { step, reason } => (
            *step,
            Mark::Forward(Forward::Rejected),
            Some(format!("{step}: {reason}")),
        ),
        CheckoutKind::Compensated { step } => (*step, Mark::Compensation(Compensation::Done), None),
        // Our own events: not sent here (`audience`).
        CheckoutKind::OrderPlaced | CheckoutKind::CancelRequested => return Ok(Ack::Now),
    };
    let mut this = HeldResult {
        event_id: event.event_id,
        epoch: event.epoch,
        step,
        heard_ms: txlab_tx::now_ms(),
        receipt,
    };
    if matches!(heard, Mark::Forward(Forward::Done)) {
        let method = orders.method;
        match orders.held.hold(event.order_id, this, |applied| {
            applied_may_decide(method, applied)
        }) {
            Ok(()) => {
                orders.app.metrics.event("result", "held");
                return Ok(Ack::Later);
            }
            Err(back) => this = back,
        }
    }
    write_heard(orders, event.order_id, Some((this, heard, reason))).await
}

/// Writes the order's held results and `this` (the event being handled,
/// with its mark and reason) in one transaction, and judges the order there.
/// Held results are done once it commits; on failure they are held again.
async fn write_heard(
    orders: &Orders,
    id: Uuid,
    this: Option<(HeldResult, Mark, Option<String>)>,
) -> anyhow::Result<Ack> {
    let earlier = orders.held.take(id);
    match record(orders, id, &earlier, this.as_ref()).await {
        Ok(decision) => {
            for r in earlier {
                r.receipt.done();
            }
            if let Some((order, state, decided)) = decision {
                orders.held.forget(id);
                announce(orders, &order, state, decided);
            }
            Ok(Ack::Now)
        }
        Err(e) => {
            orders.held.restore(id, earlier);
            Err(e)
        }
    }
}

async fn record(
    orders: &Orders,
    id: Uuid,
    earlier: &[HeldResult],
    this: Option<&(HeldResult, Mark, Option<String>)>,
) -> anyhow::Result<Option<(OrderRow, OrderState, Decided)>> {
    let done = Mark::Forward(Forward::Done);
    let results: Vec<_> = earlier
        .iter()
        .map(|r| (r, done, None))
        .chain(this.map(|(r, mark, reason)| (r, *mark, reason.as_deref())))
        .collect();
    let heard: Vec<inbox::Received> = results
        .iter()
        .map(|(r, ..)| inbox::Received {
            epoch: &r.epoch,
            message_id: r.event_id.to_string(),
            received_ms: r.heard_ms,
        })
        .collect();
    let mut tx = orders.app.pool.begin().await?;
    // One statement for all of them.
    let deliveries = inbox::admit_all(&mut tx, &heard).await?;
    let mut first_heard = Vec::new();
    for ((r, mark, reason), delivery) in results.into_iter().zip(deliveries) {
        match delivery {
            // From a cell the lab has reset away.
            Delivery::Stale => orders.app.metrics.event("stale_event", "order"),
            Delivery::Repeated => {}
            Delivery::First => first_heard.push(Unwritten {
                step: r.step,
                mark,
                reason: reason.map(str::to_string),
                at_ms: r.heard_ms,
            }),
        }
    }
    // Results of different steps share a statement.
    write_marks(&mut tx, id, &mut first_heard).await?;
    // Judged in the same transaction (also after a redelivery: a crash may
    // have come between hearing and judging), so the event that decides an
    // order commits with its outcome.
    let decision = judge(&mut tx, &orders.app, id).await?;
    tx.commit().await?;
    Ok(decision)
}

/// Writes results held longer than [`HOLD_LIMIT`] on their own, so an
/// order whose next event is slow (or lost to a dead letter) still has its
/// results recorded and its consumer's offsets move on.
async fn sweep(orders: Arc<Orders>, stop: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(HOLD_LIMIT / 4);
    let stopped = crate::stopped(stop);
    tokio::pin!(stopped);
    loop {
        tokio::select! {
            _ = &mut stopped => return,
            _ = tick.tick() => {}
        }
        for id in orders.held.overdue(HOLD_LIMIT) {
            orders.app.metrics.event("result", "held_overdue");
            if let Err(e) = write_heard(&orders, id, None).await {
                tracing::warn!(order_id = %id, error = format!("{e:#}"), "writing held results failed; retrying");
            }
        }
    }
}

/// Finishes the order if what has been heard decides it (after a cancel,
/// and when a service resumes open orders).
pub async fn evaluate(orders: &Orders, id: Uuid) -> anyhow::Result<()> {
    write_heard(orders, id, None).await.map(drop)
}

/// Reads the order and what has been heard of it in `tx`; if that decides
/// it, records the outcome there too.
async fn judge(
    tx: &mut sqlx::PgConnection,
    app: &crate::roles::AppState,
    id: Uuid,
) -> anyhow::Result<Option<(OrderRow, OrderState, Decided)>> {
    // The event-driven methods record what they hear in the saga log.
    let Some((order, log)) = load_order_and_saga(&mut *tx, id).await? else {
        return Ok(None);
    };
    if order.state.is_terminal() {
        return Ok(None); // decided; a cancel moves it back to compensating first
    }
    let mut heard = Heard {
        cancel_requested: order.cancel_requested,
        ..Heard::default()
    };
    for (i, step) in log.steps.iter().enumerate() {
        heard.applied[i] = step.forward == Forward::Done;
        heard.rejected[i] = step.forward == Forward::Rejected;
        heard.compensated[i] = step.compensation == Compensation::Done;
    }
    let Some(state) = verdict(order.method, &heard) else {
        return Ok(None);
    };
    let decided = decide_in(&mut *tx, app, &order, state).await?;
    Ok(Some((order, state, decided)))
}
