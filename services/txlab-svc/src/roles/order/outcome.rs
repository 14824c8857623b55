//! Recording an order's outcome: state, reason and the outbox event, in one
//! transaction, then waking long-polling readers.

use anyhow::Context;
use txlab_api::event::{OrderOutcome, ORDER_EVENTS_TOPIC};
use txlab_api::order::OrderState;
use txlab_tx::saga::{Forward, Outcome};
use txlab_tx::two_phase::Vote;
use uuid::Uuid;

use super::store::{write_marks, OrderRow, Unwritten};
use super::Orders;

/// Marks a running order as compensating. Only a pending order moves here;
/// a confirmed one is moved by the cancel itself, and a terminal one never.
pub async fn set_compensating(conn: &mut sqlx::PgConnection, id: Uuid) -> sqlx::Result<()> {
    sqlx::query("UPDATE orders SET state = $2, updated_ms = $3 WHERE id = $1 AND state = $4")
        .bind(id)
        .bind(OrderState::Compensating.as_str())
        .bind(txlab_tx::now_ms())
        .bind(OrderState::Pending.as_str())
        .execute(conn)
        .await
        .map(drop)
}

/// The order state an engine's outcome stands for.
pub fn state_of(outcome: Outcome) -> OrderState {
    match outcome {
        Outcome::Confirmed => OrderState::Confirmed,
        Outcome::Rejected => OrderState::Rejected,
        Outcome::Cancelled => OrderState::Cancelled,
    }
}

/// Records the terminal `state` and its outbox event in one transaction.
///
/// The update is a compare-and-set: only a `pending` or `compensating`
/// order takes a terminal state, so two engines (a consumer and a drive, a
/// run and its re-run after a cancel) can never record two outcomes, and a
/// terminal state changes only through a cancel, which first moves a
/// confirmed or needs-attention order back to `compensating`.
///
/// Returns true when the order is decided (by this call or an earlier one),
/// false when a cancel arrived before a confirmation, so the engine must go on.
pub async fn finish(orders: &Orders, order: &OrderRow, state: OrderState) -> anyhow::Result<bool> {
    finish_with(orders, order, state, &mut Vec::new()).await
}

/// [`finish`], writing the engine's `unwritten` marks in the same
/// transaction (they are written whether or not the order is decided).
pub async fn finish_with(
    orders: &Orders,
    order: &OrderRow,
    state: OrderState,
    unwritten: &mut Vec<Unwritten>,
) -> anyhow::Result<bool> {
    let now = txlab_tx::now_ms();
    let mut tx = orders.app.pool.begin().await?;
    write_marks(&mut tx, order.id, unwritten).await?;
    let epoch = crate::epoch::epoch(&mut tx).await?;
    let reason: Option<String> = match state {
        OrderState::Cancelled => Some("cancelled on request".into()),
        // The first refusal (or give-up) recorded by whichever engine ran.
        OrderState::Rejected | OrderState::NeedsAttention => sqlx::query_scalar(
            "SELECT reason FROM (SELECT step, reason FROM saga_steps WHERE order_id = $1 AND forward = ANY($2) \
             UNION ALL SELECT step, reason FROM tx_branches WHERE order_id = $1 AND vote = ANY($3)) r \
             ORDER BY step LIMIT 1",
        )
        .bind(order.id)
        .bind(Forward::texts(&[Forward::Rejected, Forward::Unknown]))
        .bind(Vote::texts(&[Vote::No, Vote::Unknown]))
        .fetch_optional(&mut *tx)
        .await?
        .flatten(),
        _ => None,
    };
    let updated = sqlx::query(
        "UPDATE orders SET state = $2, reason = $3, decided_ms = $4, updated_ms = $4 \
         WHERE id = $1 AND state = ANY($5) AND NOT ($2 = $6 AND cancel_requested)",
    )
    .bind(order.id)
    .bind(state.as_str())
    .bind(&reason)
    .bind(now)
    .bind(OrderState::texts(&OrderState::OPEN))
    .bind(OrderState::Confirmed.as_str())
    .execute(&mut *tx)
    .await?
    .rows_affected();
    if updated == 0 {
        let now_in: Option<(String,)> = sqlx::query_as("SELECT state FROM orders WHERE id = $1")
            .bind(order.id)
            .fetch_optional(&mut *tx)
            .await?;
        tx.commit().await?; // the marks stand either way
        return Ok(match now_in {
            // Reset away, or decided by someone else: nothing left to do here.
            None => true,
            Some((current,)) if OrderState::parse(&current).is_some_and(OrderState::is_terminal) => {
                tracing::debug!(wanted = state.as_str(), current, "order already decided");
                true
            }
            // Still open: a cancel overtook the confirmation.
            Some(_) => false,
        });
    }
    let event = OrderOutcome {
        event_id: Uuid::new_v4(),
        order_id: order.id,
        state,
        customer: order.customer.clone(),
        decided_ms: now,
        epoch,
    };
    let payload = serde_json::to_value(&event).context("encoding the outcome event")?;
    crate::messaging::outbox::enqueue(&mut tx, ORDER_EVENTS_TOPIC, &order.id.to_string(), &payload).await?;
    tx.commit().await?;
    orders.app.metrics.event("outcome", state.as_str());
    tracing::info!(
        outcome = state.as_str(),
        reason = reason.as_deref().unwrap_or(""),
        "order decided"
    );
    let _ = orders.decided.send(order.id);
    Ok(true)
}
