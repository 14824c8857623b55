//! The order service's tables: orders, the saga log, idempotency keys.

use sqlx::{PgConnection, PgPool};
use txlab_api::admin::OrderSnapshot;
use txlab_api::order::{OrderItem, OrderState, OrderView};
use txlab_tx::saga::{Compensation, Forward, Saga, StepRecord};
use uuid::Uuid;

/// The saga's steps, in forward order.
pub const STEPS: [&str; 3] = ["payment", "inventory", "shipping"];

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct OrderRow {
    pub id: Uuid,
    pub customer: String,
    pub items: sqlx::types::Json<Vec<OrderItem>>,
    pub amount: i64,
    pub slot: String,
    pub method: String,
    pub state: String,
    pub reason: Option<String>,
    pub fault: Option<String>,
    pub cancel_requested: bool,
    pub created_ms: i64,
    pub decided_ms: Option<i64>,
}

impl OrderRow {
    pub fn state(&self) -> OrderState {
        // Written only by this service from OrderState; anything else is a bug.
        OrderState::parse(&self.state).unwrap_or(OrderState::Pending)
    }

    pub fn view(&self) -> OrderView {
        OrderView {
            id: self.id,
            state: self.state(),
            customer: self.customer.clone(),
            amount: self.amount,
            slot: self.slot.clone(),
            items: self.items.0.clone(),
            reason: self.reason.clone(),
            method: self.method.clone(),
            created_ms: self.created_ms,
            decided_ms: self.decided_ms,
        }
    }
}

const ORDER_COLUMNS: &str =
    "id, customer, items, amount, slot, method, state, reason, fault, cancel_requested, created_ms, decided_ms";

pub async fn load_order(conn: &mut PgConnection, id: Uuid) -> sqlx::Result<Option<OrderRow>> {
    sqlx::query_as(&format!("SELECT {ORDER_COLUMNS} FROM orders WHERE id = $1"))
        .bind(id)
        .fetch_optional(conn)
        .await
}

/// The saga's persisted records, as the pure state machine sees them.
pub async fn load_saga(conn: &mut PgConnection, order: &OrderRow) -> sqlx::Result<Saga> {
    let rows: Vec<(i32, String, String)> =
        sqlx::query_as("SELECT step, forward, compensation FROM saga_steps WHERE order_id = $1 ORDER BY step")
            .bind(order.id)
            .fetch_all(conn)
            .await?;
    let mut saga = Saga::new(STEPS.len());
    for (step, fwd, comp) in rows {
        let record = StepRecord {
            forward: Forward::parse(&fwd).ok_or_else(|| sqlx::Error::Decode(format!("bad forward state {fwd}").into()))?,
            compensation: Compensation::parse(&comp)
                .ok_or_else(|| sqlx::Error::Decode(format!("bad compensation state {comp}").into()))?,
        };
        if let Some(slot) = saga.steps.get_mut(step as usize) {
            *slot = record;
        }
    }
    saga.cancel_requested = order.cancel_requested;
    Ok(saga)
}

/// Orders whose saga has work left (a cancel of a confirmed order turns it
/// back to `compensating` in the same statement that records the cancel).
pub async fn open_orders(pool: &PgPool) -> sqlx::Result<Vec<Uuid>> {
    sqlx::query_scalar("SELECT id FROM orders WHERE state IN ('pending', 'compensating') ORDER BY created_ms")
    .fetch_all(pool)
    .await
}

pub async fn snapshot(conn: &mut PgConnection) -> sqlx::Result<OrderSnapshot> {
    let orders: Vec<OrderRow> = sqlx::query_as(&format!("SELECT {ORDER_COLUMNS} FROM orders ORDER BY created_ms, id"))
        .fetch_all(&mut *conn)
        .await?;
    let outbox_unpublished: i64 = sqlx::query_scalar("SELECT count(*) FROM outbox WHERE published_ms IS NULL")
        .fetch_one(&mut *conn)
        .await?;
    Ok(OrderSnapshot { orders: orders.iter().map(OrderRow::view).collect(), outbox_unpublished })
}
