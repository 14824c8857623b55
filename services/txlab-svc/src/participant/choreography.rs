//! The event-driven methods at a participant: `saga_chor` and `outbox`
//! react to checkout events (rules in [`txlab_tx::choreography`]) with the
//! same apply and compensate as every other method. The effect, the inbox
//! row of the event that caused it and the outgoing event are one local
//! transaction; a relay publishes the outgoing event afterwards.

use anyhow::Context;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use txlab_api::event::{checkout_topic, checkout_topics, CheckoutEvent, CheckoutKind, DEAD_LETTER_TOPIC};
use txlab_api::fault::FaultPoint;
use txlab_api::TxMode;
use txlab_tx::choreography::{audience, react, Reaction};
use uuid::Uuid;

use super::ledger::{self, Forward};
use super::saga::{apply_in, compensate_in};
use super::{stored_request, OpError, Participant};
use crate::faults::Faults;
use crate::messaging::consumer::{consume, Ack};
use crate::messaging::inbox::{self, Delivery};
use crate::messaging::outbox::Written;
use crate::roles::AppState;

/// Starts the participant's outbox relay and its checkout-event consumer.
pub async fn start<P: Participant>(
    brokers: &str,
    method: TxMode,
    state: AppState,
    stop: watch::Receiver<bool>,
) -> anyhow::Result<Vec<JoinHandle<()>>> {
    crate::roles::order::ensure_topics_with_retry(brokers).await?;
    let produced: Vec<&str> = checkout_topics().chain([DEAD_LETTER_TOPIC]).collect();
    let relay = crate::messaging::outbox::Relay::new(
        state.pool.clone(),
        crate::messaging::kafka::ready_producer(brokers, &produced).await?,
        state.relay.clone(),
        state.metrics.clone(),
    );
    let relay_task = tokio::spawn(relay.run(crate::stopped(stop.clone())));
    let offsets = crate::messaging::consumer::Offsets {
        pool: state.pool.clone(),
        consumer: P::ROLE.as_str(),
        topic: checkout_topic(P::ROLE).with_context(|| format!("{} has no checkout topic", P::ROLE))?,
    };
    let consumer = crate::messaging::consumer::assigned(brokers, &offsets, state.replica).await?;
    let metrics = state.metrics.clone();
    let handler = move |event: CheckoutEvent, _| {
        let state = state.clone();
        async move { handle::<P>(&state, method, event).await.map(|()| Ack::Now) }
    };
    let consumer_task = tokio::spawn(consume(consumer, offsets, metrics, stop, handler));
    Ok(vec![relay_task, consumer_task])
}

/// Fires the fault planned for `point`: a fault from the order's header
/// fires once per event (it is logged first), a standing fault every time.
pub async fn fire_once(state: &AppState, event: &CheckoutEvent, point: FaultPoint) -> anyhow::Result<()> {
    let planned = Faults::parse(event.order.fault.as_deref(), state.faults.clone())?;
    let header = if planned.spec.action_at(state.faults.role, point).is_some()
        && crate::faults::first_firing(&state.pool, &format!("{}:{}", event.event_id, point.as_str())).await?
    {
        event.order.fault.as_deref()
    } else {
        None
    };
    Faults::parse(header, state.faults.clone())?.fire(point).await?;
    Ok(())
}

#[tracing::instrument(skip_all, fields(order_id = %event.order_id, role = %P::ROLE, event = ?event.kind))]
async fn handle<P: Participant>(
    state: &AppState,
    method: TxMode,
    event: CheckoutEvent,
) -> anyhow::Result<()> {
    let Some(reaction) = react(method, P::STEP, &event.kind) else {
        return Ok(());
    };
    fire_once(state, &event, FaultPoint::BeforeDb).await?;
    let step = P::STEP;
    if reaction == Reaction::Apply && !may_fire(state, &event, FaultPoint::AfterEvent)? {
        let out = outgoing(&event, CheckoutKind::Applied { step });
        if let Some(written) = apply_at_once::<P>(state, method, &event, &out).await? {
            state.relay.committed(written);
            return handled(state, &event, reaction, &out.kind).await;
        }
    }
    let mut tx = state.pool.begin().await?;
    match inbox::admit(&mut tx, &event.epoch, &event.event_id.to_string()).await? {
        Delivery::Stale => {
            state.metrics.event("stale_event", P::ROLE.as_str());
            return Ok(()); // from a cell the lab has reset away
        }
        Delivery::Repeated => return Ok(()), // its effect is already stored
        Delivery::First => {}
    }
    let kind = match reaction {
        Reaction::Apply => {
            match apply_in::<P>(&mut tx, event.order_id, &P::request_for(&event.order)).await {
                Ok(_) => CheckoutKind::Applied { step },
                Err(OpError::Refused { code, .. }) => CheckoutKind::Rejected { step, reason: code },
                Err(e) => return Err(anyhow::Error::new(e)),
            }
        }
        Reaction::Compensate => {
            compensate_in::<P>(&mut tx, event.order_id).await?;
            CheckoutKind::Compensated { step }
        }
    };
    let out = outgoing(&event, kind);
    let payload = serde_json::to_value(&out)?;
    let mut to = audience(method, &out.kind);
    if method == TxMode::Outbox && matches!(out.kind, CheckoutKind::Rejected { .. }) {
        // No compensation under outbox: the failure waits for a person.
        to.push(DEAD_LETTER_TOPIC);
    }
    let key = event.order_id.to_string();
    let written = crate::messaging::outbox::enqueue(&mut tx, &state.relay, &to, &key, &payload).await?;
    fire_once(state, &event, FaultPoint::AfterEvent).await?;
    tx.commit().await?;
    state.relay.committed(written);
    handled(state, &event, reaction, &out.kind).await
}

/// The event a participant answers `event` with.
fn outgoing(event: &CheckoutEvent, kind: CheckoutKind) -> CheckoutEvent {
    CheckoutEvent {
        event_id: Uuid::new_v4(),
        order_id: event.order_id,
        kind,
        order: event.order.clone(),
        epoch: event.epoch.clone(),
    }
}

/// After the commit: metrics, a log line, the fault planned after it.
async fn handled(
    state: &AppState,
    event: &CheckoutEvent,
    reaction: Reaction,
    kind: &CheckoutKind,
) -> anyhow::Result<()> {
    let label = kind.name();
    state.metrics.event(
        if reaction == Reaction::Apply {
            "step"
        } else {
            "compensation"
        },
        label,
    );
    tracing::info!(outcome = label, "event handled");
    fire_once(state, event, FaultPoint::AfterDb).await
}

/// Whether a fault may fire at `point` for this event (from its order's
/// header or a standing fault).
fn may_fire(state: &AppState, event: &CheckoutEvent, point: FaultPoint) -> anyhow::Result<bool> {
    Ok(Faults::parse(event.order.fault.as_deref(), state.faults.clone())?.may_fire(point))
}

/// The common case of [`handle`] in one statement, outside any
/// transaction: the event's epoch is the lab's (its row held, as the
/// inbox's check holds it), the inbox has not seen the event, the order
/// has no record here and every item can be taken. Then the items are
/// taken, their ledger lines, the record, the inbox row and `out` are
/// written (the caller hands `out`'s rows to the relay): one round trip
/// and one durable commit instead of the transaction's five round trips.
/// Otherwise nothing is written and `None` leaves the answer to the
/// transaction path (a stale or repeated event, a record, a refusal).
///
/// Neither the inbox nor the record is locked: the same event (or the
/// same order's) handled meanwhile makes this statement fail on their
/// primary keys, and the transaction path then finds what it wrote.
async fn apply_at_once<P: Participant>(
    state: &AppState,
    method: TxMode,
    event: &CheckoutEvent,
    out: &CheckoutEvent,
) -> anyhow::Result<Option<Written>> {
    let to = audience(method, &out.kind);
    if to.is_empty() {
        // The statement says it applied by the outbox rows it wrote.
        return Ok(None);
    }
    let sql = format!(
        "WITH lab AS (SELECT epoch = $3 AS current FROM lab_epoch FOR SHARE), {}, \
              seen AS (INSERT INTO inbox (message_id, received_ms) SELECT $9, $5 WHERE EXISTS (SELECT FROM go)), \
              written AS (INSERT INTO outbox (topic, key, payload, created_ms) \
                          SELECT topic, $11, $12, $5 FROM UNNEST($10::text[]) AS t(topic) \
                          WHERE EXISTS (SELECT FROM go) RETURNING id, created_ms, topic) {}",
        ledger::forward_ctes::<P>(
            Forward::Take,
            "(SELECT current FROM lab) AND NOT EXISTS (SELECT FROM inbox WHERE message_id = $9)",
        ),
        state.relay.written_sql()
    );
    let req = P::request_for(&event.order);
    let request = stored_request::<P>(&req)?;
    let payload = serde_json::to_value(out)?;
    let key = event.order_id.to_string();
    let applied: sqlx::Result<Vec<(i64, i64, String)>> = ledger::forward_query::<P, _>(
        &sql,
        Some(&event.epoch),
        event.order_id,
        &req,
        Forward::Take,
        P::APPLIED,
        &request,
    )
    .bind(event.event_id.to_string())
    .bind(&to)
    .bind(&key)
    .bind(&payload)
    .fetch_all(&state.pool)
    .await;
    match applied {
        Ok(rows) if rows.is_empty() => Ok(None),
        Ok(rows) => Ok(Some(Written::from_rows(rows, &key, &payload))),
        Err(e) if crate::db::is_unique_violation(&e) => Ok(None),
        Err(e) => Err(e.into()),
    }
}
