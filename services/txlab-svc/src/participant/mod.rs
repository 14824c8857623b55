//! The record-keeping shared by payment, inventory and shipping, for every
//! transaction method.
//!
//! Each participant keeps one record per order in its own table, written in
//! the same local transaction as its business change. The record's state
//! says what this participant did for the order, and every operation of
//! every method is a transition on it:
//!
//! Every business change also appends to the `ledger` table (see
//! [`ledger`]), in the same transaction, which is what the audit counts.
//!
//! | state        | meaning                                    | reached by                        |
//! |--------------|--------------------------------------------|-----------------------------------|
//! | `tried`      | resources held, not yet taken (TCC)        | TCC try                           |
//! | applied      | resources taken (`captured`, `reserved`, `booked`) | saga step, TCC confirm, 2PC commit |
//! | undone       | taken resources given back (`refunded`, …) | compensation after applied        |
//! | `aborted`    | a held resource let go                     | TCC cancel after try              |
//! | `rejected`   | refused on business grounds; nothing held  | any forward call                  |
//! | `voided`     | compensated before anything ran            | compensation / cancel / rollback first |
//!
//! So every call is idempotent by (order, operation), a compensation that
//! overtakes its forward call leaves a `voided` record (null compensation),
//! and the forward call arriving after it is refused (no hanging effect) —
//! the TCC barrier, applied to every method.
//!
//! - [`saga`]: apply and compensate (also the business compensation of a
//!   confirmed order under every method).
//! - [`tcc`]: try, confirm, cancel.
//! - [`twopc`]: prepare, commit, rollback, and the recovery of in-doubt
//!   prepared transactions.
//! - [`choreography`]: the event-driven methods: react to checkout events with
//!   the same apply and compensate, emitting events through an outbox.

/// Declares the axum handler of one participant operation: it reads the
/// order id, the caller's epoch fence (and the request body, validated),
/// then runs `$call` inside
/// [`around`] (fault points, metrics, a log line). The operations differ
/// only in that call.
macro_rules! participant_op {
    (fn $name:ident, $op:expr, |$st:ident, $f:ident, $fence:ident, $id:ident, $req:ident| $call:expr) => {
        #[tracing::instrument(skip_all, fields(order_id = tracing::field::Empty, role = %P::ROLE, op = $op))]
        async fn $name<P: Participant>(
            axum::extract::State($st): axum::extract::State<AppState>,
            $f: Faults,
            $fence: Fence,
            path: Result<axum::extract::Path<Uuid>, axum::extract::rejection::PathRejection>,
            body: Result<axum::Json<P::Request>, axum::extract::rejection::JsonRejection>,
        ) -> Result<axum::Json<StepReply>, ApiError> {
            let $id = super::order_id(path)?;
            let axum::Json($req) = body?;
            P::validate(&$req).map_err(ApiError::BadRequest)?;
            super::around(&$st, &$f, $op, || $call).await
        }
    };
    (fn $name:ident, $op:expr, |$st:ident, $f:ident, $fence:ident, $id:ident| $call:expr) => {
        #[tracing::instrument(skip_all, fields(order_id = tracing::field::Empty, role = %P::ROLE, op = $op))]
        async fn $name<P: Participant>(
            axum::extract::State($st): axum::extract::State<AppState>,
            $f: Faults,
            $fence: Fence,
            path: Result<axum::extract::Path<Uuid>, axum::extract::rejection::PathRejection>,
        ) -> Result<axum::Json<StepReply>, ApiError> {
            let $id = super::order_id(path)?;
            super::around(&$st, &$f, $op, || $call).await
        }
    };
}

pub mod choreography;
pub mod error;
pub mod fence;
pub mod ledger;
pub mod saga;
pub mod tcc;
pub mod twopc;

use std::future::Future;

use axum::extract::{Path, State};
use axum::routing::get;
use axum::{Json, Router};
use serde::de::DeserializeOwned;
use serde::Serialize;
use sqlx::PgConnection;
use txlab_api::fault::FaultPoint;
use txlab_api::participant::{RecordState, StepReply};
use txlab_api::{Role, Step};
use uuid::Uuid;

use crate::faults::Faults;
use crate::http::ApiError;
use crate::roles::AppState;
pub use error::OpError;
pub use fence::Fence;

/// A refusal on business grounds, e.g. insufficient funds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub code: &'static str,
    pub message: String,
}

/// A participant's business table: one row per key (customer, SKU, slot)
/// with an amount and how much of it is held (reserved or booked).
pub struct BusinessTable {
    pub table: &'static str,
    pub key: &'static str,
    pub amount: &'static str,
    pub held: &'static str,
}

/// How a forward operation changes the row of one item, as SQL over the
/// row's columns and `req.qty` (the quantity the request moves of that
/// item): `set` is the SET list, `only_if` what the row must satisfy first
/// (a refusal otherwise).
#[derive(Debug, Clone, Copy)]
pub struct GuardedChange {
    pub set: &'static str,
    pub only_if: &'static str,
}

/// A participant's business operations, as changes to its business rows
/// (run by [`ledger`], which also records what moved). Methods compose
/// them: a saga step or 2PC branch is `TAKE` (what `HOLD` + `CAPTURE`
/// would do, in one change), a TCC try is `HOLD`, its confirm `CAPTURE`,
/// its cancel `RELEASE`; `RESTORE` gives back what was captured (a
/// refund). The SET lists read `req.qty` as [`GuardedChange`] does.
pub trait Participant: Send + Sync + 'static {
    const ROLE: Role;
    /// Place in the checkout.
    const STEP: Step;
    const BUSINESS: BusinessTable;
    /// Table of per-order records.
    const RECORDS: &'static str;
    /// Record state once resources are taken, e.g. `captured`.
    const APPLIED: RecordState;
    /// Record state once taken resources are given back, e.g. `refunded`.
    const UNDONE: RecordState;
    /// URL segment of the participant's records, e.g. `payments`.
    const COLLECTION: &'static str;
    /// Saga operation names: `/{COLLECTION}/{order_id}/{FORWARD_OP}` and `/{UNDO_OP}`.
    const FORWARD_OP: &'static str;
    const UNDO_OP: &'static str;

    /// Holds the resources, or refuses.
    const HOLD: GuardedChange;
    /// Leaves what `HOLD` then `CAPTURE` would, or refuses as `HOLD` would.
    const TAKE: GuardedChange;
    /// Takes held resources for good (`None`: holding them was taking them).
    const CAPTURE: Option<&'static str>;
    /// Lets held resources go.
    const RELEASE: &'static str;
    /// Gives captured resources back.
    const RESTORE: &'static str;

    type Request: Serialize + DeserializeOwned + Clone + Send + Sync + 'static;

    /// Checks the request's shape before any database work.
    fn validate(req: &Self::Request) -> Result<(), String>;

    /// This participant's part of an order, as carried by checkout events.
    fn request_for(order: &txlab_api::event::OrderSpec) -> Self::Request;

    /// What the request moves, as (item, quantity), one entry per item, in
    /// the order rows are locked in — ascending byte order of the items,
    /// the order the one-statement path locks them in, so that two
    /// baskets never wait for each other's rows: the business rows
    /// changed, and the ledger's lines.
    fn items(req: &Self::Request) -> Vec<(String, i64)>;

    /// Why `item`'s row refused to give `qty`, given its
    /// [`BusinessTable::amount`] (`None`: there is no such row).
    fn refusal(item: &str, qty: i64, amount: Option<i64>) -> Refusal;
}

/// Whether a forward operation may be refused after changing part of what
/// the request moves (a basket whose second SKU is out of stock): callers
/// then run it inside a savepoint.
pub fn may_refuse_partway<P: Participant>(req: &P::Request) -> bool {
    P::items(req).len() > 1
}

/// A racing duplicate insert is retried this many times before giving up.
const RACE_RETRIES: usize = 3;

pub fn reply(order_id: Uuid, state: RecordState, repeated: bool) -> StepReply {
    StepReply {
        order_id,
        state,
        repeated,
    }
}

/// The record of `order_id`, locked for the rest of the transaction.
pub struct Record {
    pub state: RecordState,
    pub reason: Option<String>,
    pub request: serde_json::Value,
}

/// A request as its record stores it.
pub fn stored_request<P: Participant>(req: &P::Request) -> Result<serde_json::Value, OpError> {
    serde_json::to_value(req)
        .map_err(|e| OpError::Internal(format!("cannot store the {} request: {e}", P::ROLE)))
}

impl Record {
    pub fn request<P: Participant>(&self) -> Result<P::Request, OpError> {
        serde_json::from_value(self.request.clone())
            .map_err(|e| OpError::Internal(format!("stored {} request is unreadable: {e}", P::ROLE)))
    }
}

pub async fn lock_record<P: Participant>(
    conn: &mut PgConnection,
    order_id: Uuid,
) -> sqlx::Result<Option<Record>> {
    let row: Option<(String, Option<String>, serde_json::Value)> = sqlx::query_as(&format!(
        "SELECT state, reason, request FROM {} WHERE order_id = $1 FOR UPDATE",
        P::RECORDS
    ))
    .bind(order_id)
    .fetch_optional(conn)
    .await?;
    row.map(|(state, reason, request)| {
        Ok(Record {
            state: record_state(&state)?,
            reason,
            request,
        })
    })
    .transpose()
}

/// A record state read back from the database (a CHECK constraint keeps
/// it to the known ones).
pub fn record_state(text: &str) -> sqlx::Result<RecordState> {
    text.parse().map_err(|e: String| sqlx::Error::Decode(e.into()))
}

pub async fn insert_record<P: Participant>(
    conn: &mut PgConnection,
    order_id: Uuid,
    state: RecordState,
    reason: Option<&str>,
    request: &serde_json::Value,
) -> sqlx::Result<()> {
    sqlx::query(&format!(
        "INSERT INTO {} (order_id, state, reason, request, updated_ms) VALUES ($1, $2, $3, $4, $5)",
        P::RECORDS
    ))
    .bind(order_id)
    .bind(state.as_str())
    .bind(reason)
    .bind(request)
    .bind(txlab_tx::now_ms())
    .execute(conn)
    .await
    .map(drop)
}

/// Moves a record to `state`.
pub async fn advance_record<P: Participant>(
    conn: &mut PgConnection,
    order_id: Uuid,
    state: RecordState,
) -> sqlx::Result<()> {
    sqlx::query(&format!(
        "UPDATE {} SET state = $2, updated_ms = $3 WHERE order_id = $1",
        P::RECORDS
    ))
    .bind(order_id)
    .bind(state.as_str())
    .bind(txlab_tx::now_ms())
    .execute(conn)
    .await
    .map(drop)
}

/// Records a compensation that found nothing to undo, so a late forward
/// call is refused.
pub async fn void_record<P: Participant>(conn: &mut PgConnection, order_id: Uuid) -> sqlx::Result<StepReply> {
    insert_record::<P>(
        conn,
        order_id,
        RecordState::Voided,
        None,
        &serde_json::Value::Null,
    )
    .await?;
    Ok(reply(order_id, RecordState::Voided, false))
}

/// The refusal a forward call gets when the record says it may not run.
pub fn refused_by_record(order_id: Uuid, record: &Record) -> OpError {
    if record.state == RecordState::Rejected {
        let code = record
            .reason
            .clone()
            .unwrap_or_else(|| RecordState::Rejected.to_string());
        return OpError::refused(&code, format!("order {order_id} was refused before: {code}"));
    }
    OpError::refused(
        txlab_api::participant::reasons::ALREADY_COMPENSATED,
        format!(
            "order {order_id} is already {}; the operation may not run after its compensation",
            record.state
        ),
    )
}

/// Holds or takes resources where a refusal must leave nothing behind
/// while the caller's transaction goes on (to record the refusal): inside
/// a savepoint, rolled back on refusal, when the request could be refused
/// partway; as it is otherwise, a savepoint's two round trips saved.
pub async fn forward_refusable<P: Participant>(
    conn: &mut PgConnection,
    order_id: Uuid,
    req: &P::Request,
    how: ledger::Forward,
) -> sqlx::Result<Result<(), Refusal>> {
    use sqlx::Acquire;
    if !may_refuse_partway::<P>(req) {
        return ledger::forward::<P>(conn, order_id, req, how).await;
    }
    let mut sp = conn.begin().await?;
    match ledger::forward::<P>(&mut sp, order_id, req, how).await? {
        Ok(()) => {
            sp.commit().await?;
            Ok(Ok(()))
        }
        Err(refusal) => {
            sp.rollback().await?;
            Ok(Err(refusal))
        }
    }
}

/// A forward call in one statement ([`ledger::forward_at_once`]) behind
/// the caller's fence: whether it did the whole call; `false` means it
/// wrote nothing and the step-by-step path must answer.
pub async fn forward_at_once<P: Participant>(
    conn: &mut PgConnection,
    fence: &Fence,
    order_id: Uuid,
    req: &P::Request,
    how: ledger::Forward,
    state: RecordState,
) -> Result<bool, OpError> {
    let request = stored_request::<P>(req)?;
    match ledger::forward_at_once::<P>(conn, fence.epoch(), order_id, req, how, state, &request).await? {
        ledger::AtOnce::Done => Ok(true),
        ledger::AtOnce::StepByStep => Ok(false),
        ledger::AtOnce::Stale(ours) => Err(Fence::stale(fence.epoch().unwrap_or_default(), &ours)),
    }
}

/// Retries an operation whose first attempt lost a race to insert the same
/// record; the retry then finds the record and answers from it.
pub async fn with_race_retry<F, Fut>(mut op: F) -> Result<StepReply, OpError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<StepReply, OpError>>,
{
    for _ in 0..RACE_RETRIES {
        match op().await {
            Err(OpError::Database(e)) if crate::db::is_unique_violation(&e) => continue,
            other => return other,
        }
    }
    Err(OpError::Busy(
        "lost a race on the same order repeatedly; retry".into(),
    ))
}

/// What every participant endpoint does around its operation: faults
/// before and after the database work, metrics and a log line.
pub async fn around<F, Fut>(
    state: &AppState,
    faults: &Faults,
    op_name: &str,
    op: F,
) -> Result<Json<StepReply>, ApiError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<StepReply, OpError>>,
{
    faults.fire(FaultPoint::BeforeDb).await?;
    let result = with_race_retry(op).await;
    state.metrics.event(
        op_name,
        match &result {
            Ok(r) => r.state.as_str(),
            Err(OpError::Conflict { code, .. }) if *code == txlab_api::admin::STALE_EPOCH => code,
            Err(_) => "refused",
        },
    );
    let out = result?;
    faults.fire(FaultPoint::AfterDb).await?;
    faults.fire(FaultPoint::BeforeReply).await?;
    tracing::info!(op = op_name, state = %out.state, repeated = out.repeated, "participant operation");
    Ok(Json(out))
}

/// Parses the path's order id and tags the request's span with it.
pub fn order_id(path: Result<Path<Uuid>, axum::extract::rejection::PathRejection>) -> Result<Uuid, ApiError> {
    let Path(id) = path?;
    tracing::Span::current().record("order_id", tracing::field::display(id));
    Ok(id)
}

/// A record as `GET /{collection}/{order_id}` shows it.
#[derive(Debug, Clone, serde::Serialize, sqlx::FromRow)]
pub struct RecordRow {
    pub order_id: Uuid,
    pub state: String,
    pub request: serde_json::Value,
}

/// Sets each business row's starting amount and clears what it held.
pub async fn seed<P: Participant>(conn: &mut PgConnection, rows: &[(&str, i64)]) -> sqlx::Result<usize> {
    let BusinessTable {
        table,
        key,
        amount,
        held,
    } = P::BUSINESS;
    let keys: Vec<&str> = rows.iter().map(|r| r.0).collect();
    let amounts: Vec<i64> = rows.iter().map(|r| r.1).collect();
    sqlx::query(&format!(
        "INSERT INTO {table} ({key}, {amount}) SELECT * FROM UNNEST($1::text[], $2::bigint[]) \
         ON CONFLICT ({key}) DO UPDATE SET {amount} = EXCLUDED.{amount}, {held} = 0"
    ))
    .bind(&keys)
    .bind(&amounts)
    .execute(conn)
    .await?;
    Ok(rows.len())
}

/// Every endpoint of a participant, for all methods.
pub fn routes<P: Participant>() -> Router<AppState> {
    Router::new()
        .merge(saga::routes::<P>())
        .merge(tcc::routes::<P>())
        .merge(twopc::routes::<P>())
        .route(&format!("/{}/{{order_id}}", P::COLLECTION), get(record::<P>))
}

async fn record<P: Participant>(
    State(state): State<AppState>,
    path: Result<Path<Uuid>, axum::extract::rejection::PathRejection>,
) -> Result<Json<RecordRow>, ApiError> {
    let Path(order_id) = path?;
    sqlx::query_as(&format!(
        "SELECT order_id, state, request FROM {} WHERE order_id = $1",
        P::RECORDS
    ))
    .bind(order_id)
    .fetch_optional(&state.pool)
    .await?
    .map(Json)
    .ok_or_else(|| ApiError::NotFound(format!("no {} record for order {order_id}", P::ROLE)))
}
