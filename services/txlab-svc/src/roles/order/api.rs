//! The public handlers: create, read (with long-poll) and cancel orders.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::Json;
use txlab_api::order::{CreateOrder, GetOrderQuery, OrderState, OrderView, IDEMPOTENCY_KEY_HEADER};
use txlab_api::TxMode;
use txlab_tx::saga::Forward;
use uuid::Uuid;

use super::store::{self, load_order, Mark, OrderRow};
use super::Orders;
use crate::faults::Faults;
use crate::http::ApiError;
use crate::messaging::outbox::Written;

/// Longest a `GET /orders/{id}?wait_ms=` may hold the connection.
const MAX_WAIT_MS: u64 = 30_000;

fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    match headers.get(IDEMPOTENCY_KEY_HEADER) {
        None => Ok(None),
        Some(v) => {
            let key = v
                .to_str()
                .map_err(|_| ApiError::BadRequest("Idempotency-Key must be visible ASCII".into()))?;
            if key.is_empty() || key.len() > 200 {
                return Err(ApiError::BadRequest(
                    "Idempotency-Key must hold 1 to 200 characters".into(),
                ));
            }
            Ok(Some(key.to_string()))
        }
    }
}

/// Finds the order an idempotency key already created, if any; the same
/// key with a different request is the client's mistake.
async fn replay(
    orders: &Orders,
    key: &str,
    request: &serde_json::Value,
) -> Result<Option<OrderView>, ApiError> {
    let found: Option<(serde_json::Value, Uuid)> =
        sqlx::query_as("SELECT request, order_id FROM idempotency_keys WHERE key = $1")
            .bind(key)
            .fetch_optional(&orders.app.pool)
            .await?;
    match found {
        None => Ok(None),
        Some((stored, _)) if &stored != request => Err(ApiError::refused(
            "idempotency_key_reused",
            "this Idempotency-Key was used with a different request",
        )),
        Some((_, id)) => {
            let mut conn = orders.app.pool.acquire().await?;
            let order = load_order(&mut conn, id).await?;
            Ok(order.map(|o| o.view()))
        }
    }
}

pub async fn create(
    State(orders): State<Arc<Orders>>,
    headers: HeaderMap,
    faults: Faults,
    body: Result<Json<CreateOrder>, JsonRejection>,
) -> Result<(StatusCode, Json<OrderView>), ApiError> {
    let Json(req) = body?;
    req.validate().map_err(ApiError::BadRequest)?;
    let key = idempotency_key(&headers)?;
    let request = serde_json::to_value(&req).map_err(anyhow::Error::from)?;
    // A repeated key is found when it is claimed below (and answered with
    // its order), so a first request costs no lookup.
    orders.admission.admit().map_err(|open| {
        orders.app.metrics.event("order", "shed");
        ApiError::Overloaded(format!(
            "{open} orders are open, the most this service takes on at once ({}); retry later",
            orders.admission.limit()
        ))
    })?;
    let amount = req
        .amount()
        .ok_or_else(|| ApiError::BadRequest("order total overflows".into()))?;
    let order = OrderView {
        id: Uuid::new_v4(),
        state: OrderState::Pending,
        customer: req.customer,
        amount,
        slot: req.slot,
        items: req.items,
        reason: None,
        method: orders.method,
        created_ms: txlab_tx::now_ms(),
        decided_ms: None,
    };
    let mut tx = orders.app.pool.begin().await?;
    // This replica drives the orders it takes (methods with an engine).
    let driver = (!order.method.is_event_driven()).then(|| orders.driver.key());
    let (epoch, written) =
        insert_order(&mut tx, &orders.app.relay, &order, faults.raw.as_deref(), driver).await?;
    if let Some(key) = &key {
        if !claim_key(&mut tx, key, &request, &order).await? {
            // A concurrent request with the same key won: answer with its order.
            drop(tx);
            return match replay(&orders, key, &request).await? {
                Some(view) => Ok((StatusCode::OK, Json(view))),
                None => Err(ApiError::Unavailable("idempotency key race; retry".into())),
            };
        }
    }
    // The engine starts from the row as written. It is left for the
    // engine before the commit, when nothing can have run the order yet,
    // so whichever run comes first (this request's, or a reconcile that
    // found the committed order first) starts from it, and no later one.
    let engine = !order.method.is_event_driven();
    let left = engine.then(|| orders.leave_for_engine(OrderRow::written(&order, faults.raw, epoch)));
    tx.commit().await?;
    orders.app.relay.committed(written); // the order's event, if any
    if let Some(left) = left {
        left.keep();
    }
    tracing::info!(order_id = %order.id, amount, "order accepted");
    orders.app.metrics.event("order", "accepted");
    // Without a coordinator the order's own event (in the outbox) starts
    // the checkout; an engine run now could only find nothing heard yet.
    if engine {
        orders.clone().drive_new(order.id);
    }
    Ok((StatusCode::ACCEPTED, Json(order)))
}

/// Writes a new order with the caller's transaction: the order row (with
/// the lab epoch, read first as every epoch reader does), the step log its
/// method's engine keeps, and, without a coordinator, the event that
/// places it. `driver` is the replica whose engine will run it. Returns
/// the epoch the order was born in and the outbox rows written.
async fn insert_order(
    tx: &mut sqlx::PgConnection,
    relay: &crate::messaging::outbox::RelayWake,
    order: &OrderView,
    fault: Option<&str>,
    driver: Option<i32>,
) -> sqlx::Result<(String, Written)> {
    let epoch = crate::epoch::epoch(&mut *tx).await?;
    let (id, now) = (order.id, order.created_ms);
    sqlx::query(
        "INSERT INTO orders (id, customer, items, amount, slot, method, state, fault, created_ms, updated_ms, epoch, driver) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $9, $10, $11)",
    )
    .bind(id)
    .bind(&order.customer)
    .bind(sqlx::types::Json(&order.items))
    .bind(order.amount)
    .bind(&order.slot)
    .bind(order.method.as_str())
    .bind(order.state.as_str())
    .bind(fault)
    .bind(now)
    .bind(&epoch)
    .bind(driver)
    .execute(&mut *tx)
    .await?;
    // The saga orchestrator's first call goes out with no write of its
    // own: its intent is logged with the order.
    let first = (order.method == TxMode::SagaOrch).then_some(Mark::Forward(Forward::Started));
    store::insert_saga_log(tx, id, now, first).await?;
    if matches!(order.method, TxMode::Twopc | TxMode::Tcc) {
        store::insert_two_phase_log(tx, id, now).await?;
    }
    let mut written = Written::default();
    if order.method.is_event_driven() {
        let spec = txlab_api::event::OrderSpec {
            customer: order.customer.clone(),
            amount: order.amount,
            items: order.items.clone(),
            slot: order.slot.clone(),
            fault: fault.map(str::to_string),
        };
        written = super::choreography::emit(
            tx,
            relay,
            order.method,
            id,
            spec,
            txlab_api::event::CheckoutKind::OrderPlaced,
            epoch.clone(),
        )
        .await?;
    }
    Ok((epoch, written))
}

/// Records the idempotency key of a new order with the caller's
/// transaction; false when a concurrent request with the same key won.
async fn claim_key(
    tx: &mut sqlx::PgConnection,
    key: &str,
    request: &serde_json::Value,
    order: &OrderView,
) -> sqlx::Result<bool> {
    let inserted = sqlx::query(
        "INSERT INTO idempotency_keys (key, request, order_id, created_ms) VALUES ($1, $2, $3, $4)",
    )
    .bind(key)
    .bind(request)
    .bind(order.id)
    .bind(order.created_ms)
    .execute(tx)
    .await;
    match inserted {
        Ok(_) => Ok(true),
        Err(e) if crate::db::is_unique_violation(&e) => Ok(false),
        Err(e) => Err(e),
    }
}

/// How often a long-poll reads the order again without a wake-up (a
/// decision made by another process wakes nobody here).
const RECHECK: Duration = Duration::from_millis(500);

pub async fn get(
    State(orders): State<Arc<Orders>>,
    path: Result<Path<Uuid>, PathRejection>,
    query: Result<Query<GetOrderQuery>, QueryRejection>,
) -> Result<Json<OrderView>, ApiError> {
    let Path(id) = path?;
    let Query(q) = query?;
    let wait = Duration::from_millis(q.wait_ms.unwrap_or(0).min(MAX_WAIT_MS));
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        // Subscribe before reading, so a decision between the read and the wait is not missed.
        let decided = orders.decided.wait(id);
        let order = {
            let mut conn = orders.app.pool.acquire().await?;
            load_order(&mut conn, id).await?
        };
        let order = order.ok_or_else(|| ApiError::NotFound(format!("no order {id}")))?;
        let now = tokio::time::Instant::now();
        if order.state.is_terminal() || now >= deadline {
            return Ok(Json(order.view()));
        }
        // Another replica may decide the order, so re-read now and then even
        // without a local wake-up. A decision made here comes with the order.
        let recheck = (deadline - now).min(RECHECK);
        if let Ok(Ok(Some(view))) = tokio::time::timeout(recheck, decided).await {
            return Ok(Json(view));
        }
    }
}

pub async fn cancel(
    State(orders): State<Arc<Orders>>,
    path: Result<Path<Uuid>, PathRejection>,
) -> Result<(StatusCode, Json<OrderView>), ApiError> {
    let Path(id) = path?;
    let mut tx = orders.app.pool.begin().await?;
    let epoch = crate::epoch::epoch(&mut tx).await?;
    // Decided, but a cancel may still undo it (a business compensation).
    let settled = [OrderState::Confirmed, OrderState::NeedsAttention];
    let flagged: Option<String> = sqlx::query_scalar(
        // A settled order turns back to compensating at once, so readers
        // (and long-polls) never see it as settled while it is being undone.
        // A refused order being compensated is already on its way to
        // `rejected`: its verdict stands, so the cancel is refused below.
        "UPDATE orders SET cancel_requested = true, updated_ms = $2, \
         state = CASE WHEN state = ANY($3) THEN $4 ELSE state END \
         WHERE id = $1 AND (state = ANY($5) OR (state = $4 AND cancel_requested)) RETURNING state",
    )
    .bind(id)
    .bind(txlab_tx::now_ms())
    .bind(OrderState::texts(&settled))
    .bind(OrderState::Compensating.as_str())
    .bind(OrderState::texts(&[OrderState::Pending, settled[0], settled[1]]))
    .fetch_optional(&mut *tx)
    .await?;
    let order = load_order(&mut tx, id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("no order {id}")))?;
    if flagged.is_none() {
        return Err(match order.state {
            OrderState::Compensating => ApiError::Conflict {
                code: "already_failing",
                message: format!("order {id} was refused and is being compensated; it will end rejected"),
            },
            state => ApiError::Conflict {
                code: "already_terminal",
                message: format!("order {id} is already {state}; there is nothing to cancel"),
            },
        });
    }
    // Without a coordinator, the cancel itself is an event every participant hears.
    let mut written = Written::default();
    if order.method.is_event_driven() {
        written = super::choreography::emit(
            &mut tx,
            &orders.app.relay,
            order.method,
            id,
            order.spec(),
            txlab_api::event::CheckoutKind::CancelRequested,
            epoch,
        )
        .await?;
    } else {
        // The order's driver, on whichever replica, looks at it again.
        super::drivers::wake_up(&mut tx, 'l', id).await?;
    }
    tx.commit().await?;
    tracing::info!(order_id = %id, stage = %order.state, "cancel requested");
    orders.app.metrics.event("order", "cancel_requested");
    orders.app.relay.committed(written); // the cancel's event, if any
    if order.method.is_event_driven() {
        orders.clone().drive(id);
    }
    Ok((StatusCode::ACCEPTED, Json(order.view())))
}
