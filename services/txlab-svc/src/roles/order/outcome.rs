//! Recording an order's outcome: state, reason and the outbox event, in one
//! transaction, then waking long-polling readers.

use anyhow::Context;
use txlab_api::event::{OrderOutcome, ORDER_EVENTS_TOPIC};
use txlab_api::order::{OrderState, OrderView};
use txlab_tx::saga::{Forward, Outcome};
use txlab_tx::two_phase::Vote;
use uuid::Uuid;

use super::store::{OrderRow, Unwritten};
use super::Orders;
use crate::messaging::outbox::Written;
use crate::roles::AppState;

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
///
/// The engine's `unwritten` marks are written in the same transaction
/// (whether or not the order is decided).
pub async fn finish_with(
    orders: &Orders,
    order: &OrderRow,
    state: OrderState,
    unwritten: &mut Vec<Unwritten>,
) -> anyhow::Result<bool> {
    let mut tx = orders.app.pool.begin().await?;
    orders.write_marks(&mut tx, order.id, unwritten).await?;
    let decided = decide_in(&mut tx, &orders.app, order, state).await?;
    tx.commit().await?;
    Ok(announce(orders, order, state, decided))
}

/// What [`decide_in`] did.
pub enum Decided {
    /// This transaction records the outcome (once it commits): the order
    /// as it then reads, and the outcome event's outbox row.
    Now(OrderView, Written),
    /// Reset away, or decided before: nothing to do.
    Already,
    /// Still open: a cancel overtook the confirmation; the engine goes on.
    Reopened,
}

/// The outcome's compare-and-set and outbox event, inside the caller's
/// transaction, so an engine can commit it with the write that decided it.
/// Call [`announce`] after the commit.
pub async fn decide_in(
    tx: &mut sqlx::PgConnection,
    app: &AppState,
    order: &OrderRow,
    state: OrderState,
) -> anyhow::Result<Decided> {
    let now = txlab_tx::now_ms();
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
        return Ok(match now_in {
            None => Decided::Already,
            Some((current,)) if OrderState::parse(&current).is_some_and(OrderState::is_terminal) => {
                tracing::debug!(wanted = state.as_str(), current, "order already decided");
                Decided::Already
            }
            Some(_) => Decided::Reopened,
        });
    }
    // The order's own epoch is the lab's: a reset deletes the orders of the
    // epoch it ends (the update above then finds nothing), so no read of
    // the epoch row is needed here.
    let event = OrderOutcome {
        event_id: Uuid::new_v4(),
        order_id: order.id,
        state,
        customer: order.customer.clone(),
        decided_ms: now,
        epoch: order.epoch.clone(),
    };
    let payload = serde_json::to_value(&event).context("encoding the outcome event")?;
    let written = crate::messaging::outbox::enqueue(
        &mut *tx,
        &app.relay,
        &[ORDER_EVENTS_TOPIC],
        &order.id.to_string(),
        &payload,
    )
    .await?;
    // Long-polls of this order may wait on another replica. A lone
    // replica sends no NOTIFY (`messaging::outbox::RelayWake` says what
    // one costs): `announce` wakes its readers.
    if !app.replica.is_lone() {
        super::drivers::wake_up(&mut *tx, 'd', order.id).await?;
    }
    tracing::info!(
        outcome = state.as_str(),
        reason = reason.as_deref().unwrap_or(""),
        "order decided"
    );
    let mut view = order.view();
    view.state = state;
    view.reason = reason;
    view.decided_ms = Some(now);
    Ok(Decided::Now(view, written))
}

/// After the commit of a [`decide_in`]: counts the outcome and wakes
/// long-polling readers. Returns whether the order is decided (false: a
/// cancel reopened it and the engine must go on).
pub fn announce(orders: &Orders, order: &OrderRow, state: OrderState, decided: Decided) -> bool {
    match decided {
        Decided::Now(view, written) => {
            orders.app.relay.committed(written); // the outcome event
            if orders.app.replica.is_lone() {
                // Otherwise heard with the other replicas' decisions, from the NOTIFY.
                orders.admission.heard_decision();
            }
            orders.app.metrics.event("outcome", state.as_str());
            orders.decided.wake(order.id, Some(&view));
            true
        }
        Decided::Already => true,
        Decided::Reopened => false,
    }
}
