//! The event-driven methods at the order service (`saga_chor`, `outbox`):
//! there is no coordinator to call anyone. The order is placed (and
//! cancelled) by an event in the same transaction as the order row; the
//! participants' events are recorded as they arrive, and the order's state
//! follows from what has been heard ([`txlab_tx::choreography::verdict`]).

use std::sync::Arc;

use tokio::sync::watch;
use tokio::task::JoinHandle;
use txlab_api::event::{CheckoutEvent, CheckoutKind, OrderSpec, CHECKOUT_TOPIC};
use txlab_api::order::OrderState;
use txlab_tx::choreography::{verdict, Heard};
use txlab_tx::saga::{Compensation, Forward};
use uuid::Uuid;

use super::outcome::{announce, decide_in, Decided};
use super::store::{load_order, load_saga, mark, Mark, OrderRow};
use super::Orders;
use crate::messaging::inbox::{self, Delivery};

/// Writes a checkout event with the caller's transaction. `epoch` must
/// have been read first thing in that transaction (see [`crate::epoch::epoch`]).
pub async fn emit(
    conn: &mut sqlx::PgConnection,
    order_id: Uuid,
    spec: OrderSpec,
    kind: CheckoutKind,
    epoch: String,
) -> sqlx::Result<()> {
    let event = CheckoutEvent {
        event_id: Uuid::new_v4(),
        order_id,
        kind,
        order: spec,
        epoch,
    };
    let payload = serde_json::to_value(&event).map_err(|e| sqlx::Error::Encode(Box::new(e)))?;
    crate::messaging::outbox::enqueue(conn, CHECKOUT_TOPIC, &order_id.to_string(), &payload).await
}

/// Consumes the participants' checkout events.
pub async fn start(
    orders: Arc<Orders>,
    brokers: &str,
    stop: watch::Receiver<bool>,
) -> anyhow::Result<JoinHandle<()>> {
    let offsets = crate::messaging::consumer::Offsets {
        pool: orders.app.pool.clone(),
        consumer: "order",
        topic: CHECKOUT_TOPIC,
    };
    let consumer = crate::messaging::consumer::assigned(brokers, &offsets, orders.app.replica).await?;
    Ok(tokio::spawn(async move {
        let metrics = orders.app.metrics.clone();
        crate::messaging::consumer::consume(consumer, offsets, metrics, stop, move |event: CheckoutEvent| {
            let orders = orders.clone();
            async move { handle(&orders, event).await }
        })
        .await
    }))
}

#[tracing::instrument(skip_all, fields(order_id = %event.order_id, event = ?event.kind))]
async fn handle(orders: &Orders, event: CheckoutEvent) -> anyhow::Result<()> {
    // The event-driven methods record what they hear in the saga log.
    let (step, heard, reason) = match &event.kind {
        CheckoutKind::Applied { step } => (*step, Mark::Forward(Forward::Done), None),
        CheckoutKind::Rejected { step, reason } => (
            *step,
            Mark::Forward(Forward::Rejected),
            Some(format!("{step}: {reason}")),
        ),
        CheckoutKind::Compensated { step } => (*step, Mark::Compensation(Compensation::Done), None),
        // Our own events, read back from the shared topic.
        CheckoutKind::OrderPlaced | CheckoutKind::CancelRequested => return Ok(()),
    };
    let mut tx = orders.app.pool.begin().await?;
    let delivery = inbox::admit(&mut tx, &event.epoch, &event.event_id.to_string()).await?;
    if delivery == Delivery::Stale {
        orders.app.metrics.event("stale_event", "order");
        return Ok(()); // from a cell the lab has reset away
    }
    if delivery == Delivery::First {
        mark(
            &mut *tx,
            event.order_id,
            step,
            heard,
            reason.as_deref(),
            txlab_tx::now_ms(),
        )
        .await?;
    }
    // Judged in the same transaction (also after a redelivery: a crash may
    // have come between hearing and judging), so the event that decides an
    // order commits with its outcome.
    let decision = judge(&mut tx, event.order_id).await?;
    tx.commit().await?;
    if let Some((order, state, decided)) = decision {
        announce(orders, &order, state, decided);
    }
    Ok(())
}

/// Finishes the order if what has been heard decides it (after a cancel,
/// and when a service resumes open orders).
pub async fn evaluate(orders: &Orders, id: Uuid) -> anyhow::Result<()> {
    let mut tx = orders.app.pool.begin().await?;
    let decision = judge(&mut tx, id).await?;
    tx.commit().await?;
    if let Some((order, state, decided)) = decision {
        announce(orders, &order, state, decided);
    }
    Ok(())
}

/// Reads the order and what has been heard of it in `tx`; if that decides
/// it, records the outcome there too.
async fn judge(
    tx: &mut sqlx::PgConnection,
    id: Uuid,
) -> anyhow::Result<Option<(OrderRow, OrderState, Decided)>> {
    let Some(order) = load_order(&mut *tx, id).await? else {
        return Ok(None);
    };
    if order.state.is_terminal() {
        return Ok(None); // decided; a cancel moves it back to compensating first
    }
    // The event-driven methods record what they hear in the saga log.
    let log = load_saga(&mut *tx, &order).await?;
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
    let decided = decide_in(&mut *tx, &order, state).await?;
    Ok(Some((order, state, decided)))
}
