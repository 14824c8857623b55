//! The business operations of a participant, each appending what it moved
//! to the `ledger` table in the caller's transaction. The audit counts
//! these rows (per order, per item) instead of trusting a counter kept
//! beside the state: an effect applied twice shows up as two rows.
//!
//! Each operation is the participant's declared change
//! ([`Participant::HOLD`] and the rest) applied to the row of every item
//! the request moves. [`forward_at_once`] does a whole forward call —
//! epoch check, record check, change, ledger lines, record — in one
//! statement, the common case's one round trip.

use sqlx::PgConnection;
use txlab_api::participant::{LedgerOp, RecordState};
use uuid::Uuid;

use super::{BusinessTable, GuardedChange, Participant, Refusal};

/// The change of one item's row, with the item and quantity bound as `$1`
/// and `$2` and read as `req.item` and `req.qty`.
fn row_update<P: Participant>(set: &str, only_if: &str) -> String {
    let BusinessTable { table, key, .. } = P::BUSINESS;
    format!(
        "UPDATE {table} SET {set} FROM (SELECT $1::text AS item, $2::bigint AS qty) AS req \
         WHERE {table}.{key} = req.item AND ({only_if})"
    )
}

/// Appends one line per op and item, in one statement.
async fn append<P: Participant>(
    conn: &mut PgConnection,
    order_id: Uuid,
    ops: &[LedgerOp],
    req: &P::Request,
) -> sqlx::Result<()> {
    let (items, qty): (Vec<String>, Vec<i64>) = P::items(req).into_iter().unzip();
    sqlx::query(
        "INSERT INTO ledger (order_id, op, item, qty, at_ms) \
         SELECT $1, o.op, l.item, l.qty, $5 \
         FROM UNNEST($2::text[]) WITH ORDINALITY AS o (op, n), \
              UNNEST($3::text[], $4::bigint[]) AS l (item, qty) \
         ORDER BY o.n",
    )
    .bind(order_id)
    .bind(op_names(ops))
    .bind(&items)
    .bind(&qty)
    .bind(txlab_tx::now_ms())
    .execute(conn)
    .await
    .map(drop)
}

fn op_names(ops: &[LedgerOp]) -> Vec<&'static str> {
    ops.iter().map(|op| op.as_str()).collect()
}

/// What a forward operation moves: a TCC try holds the items; a saga step
/// or a 2PC branch takes them (holds and captures at once, so its ledger
/// shows both lines, as if it had run the two one after the other).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Forward {
    Hold,
    Take,
}

impl Forward {
    fn change<P: Participant>(self) -> GuardedChange {
        match self {
            Forward::Hold => P::HOLD,
            Forward::Take => P::TAKE,
        }
    }

    fn ops(self) -> &'static [LedgerOp] {
        match self {
            Forward::Hold => &[LedgerOp::Hold],
            Forward::Take => &[LedgerOp::Hold, LedgerOp::Capture],
        }
    }
}

/// Holds or takes the order's items, item by item in the order
/// [`Participant::items`] gives, or refuses at the first item whose row
/// cannot give its quantity (and then appends nothing). A refusal leaves
/// the items before that one changed; see [`super::forward_refusable`].
pub async fn forward<P: Participant>(
    conn: &mut PgConnection,
    order_id: Uuid,
    req: &P::Request,
    how: Forward,
) -> sqlx::Result<Result<(), Refusal>> {
    let GuardedChange { set, only_if } = how.change::<P>();
    let update = row_update::<P>(set, only_if);
    for (item, qty) in P::items(req) {
        let changed = sqlx::query(&update)
            .bind(&item)
            .bind(qty)
            .execute(&mut *conn)
            .await?
            .rows_affected();
        if changed == 0 {
            let BusinessTable {
                table, key, amount, ..
            } = P::BUSINESS;
            let found: Option<i64> =
                sqlx::query_scalar(&format!("SELECT {amount} FROM {table} WHERE {key} = $1"))
                    .bind(&item)
                    .fetch_optional(&mut *conn)
                    .await?;
            return Ok(Err(P::refusal(&item, qty, found)));
        }
    }
    append::<P>(conn, order_id, how.ops(), req).await?;
    Ok(Ok(()))
}

/// Applies `set` to every item's row and appends `op` for them.
async fn settle<P: Participant>(
    conn: &mut PgConnection,
    order_id: Uuid,
    req: &P::Request,
    set: Option<&str>,
    op: LedgerOp,
) -> sqlx::Result<()> {
    if let Some(set) = set {
        let update = row_update::<P>(set, "true");
        for (item, qty) in P::items(req) {
            sqlx::query(&update)
                .bind(&item)
                .bind(qty)
                .execute(&mut *conn)
                .await?;
        }
    }
    append::<P>(conn, order_id, &[op], req).await
}

/// Takes held items for good.
pub async fn capture<P: Participant>(
    conn: &mut PgConnection,
    order_id: Uuid,
    req: &P::Request,
) -> sqlx::Result<()> {
    settle::<P>(conn, order_id, req, P::CAPTURE, LedgerOp::Capture).await
}

/// Lets held items go.
pub async fn release<P: Participant>(
    conn: &mut PgConnection,
    order_id: Uuid,
    req: &P::Request,
) -> sqlx::Result<()> {
    settle::<P>(conn, order_id, req, Some(P::RELEASE), LedgerOp::Release).await
}

/// Gives captured items back.
pub async fn restore<P: Participant>(
    conn: &mut PgConnection,
    order_id: Uuid,
    req: &P::Request,
) -> sqlx::Result<()> {
    settle::<P>(conn, order_id, req, Some(P::RESTORE), LedgerOp::Restore).await
}

/// What [`forward_at_once`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AtOnce {
    /// The items moved, their ledger lines and the order's record are written.
    Done,
    /// Nothing was written: the caller's epoch is not the lab's, which is this one.
    Stale(String),
    /// Nothing was written: the order has a record here already, the row
    /// refused, or the request moves more than one item. The step-by-step
    /// path answers (from the record, with the refusal's reason, inside a
    /// savepoint).
    StepByStep,
}

/// A forward call that moves one item, in one statement: checks the
/// caller's `epoch` (`None`: not fenced) holding the lab's epoch row as
/// [`super::Fence::check`] does, finds no record of the order, changes the
/// item's row if it can give the quantity, appends the ledger lines and
/// inserts the record in `state`. Outside a transaction it is one durable
/// commit; inside one it saves the step-by-step path's round trips.
///
/// The record is not locked: a call for the same order that inserts its
/// record meanwhile makes this statement fail on the records' primary key,
/// and the retry ([`super::with_race_retry`]) then finds that record.
pub async fn forward_at_once<P: Participant>(
    conn: &mut PgConnection,
    epoch: Option<&str>,
    order_id: Uuid,
    req: &P::Request,
    how: Forward,
    state: RecordState,
    request: &serde_json::Value,
) -> sqlx::Result<AtOnce> {
    let items = P::items(req);
    let [(item, qty)] = items.as_slice() else {
        return Ok(AtOnce::StepByStep);
    };
    let BusinessTable { table, key, .. } = P::BUSINESS;
    let GuardedChange { set, only_if } = how.change::<P>();
    let records = P::RECORDS;
    // `go` is read by the update before it changes a row, so the epoch row
    // is held (and a reset under way waited for) before anything is written.
    let sql = format!(
        "WITH lab AS (SELECT epoch FROM lab_epoch WHERE $3::text IS NOT NULL FOR SHARE), \
              prior AS (SELECT FROM {records} WHERE order_id = $4), \
              go AS (SELECT WHERE NOT EXISTS (SELECT FROM prior) \
                     AND ($3::text IS NULL OR $3::text = (SELECT epoch FROM lab))), \
              moved AS (UPDATE {table} SET {set} \
                        FROM (SELECT $1::text AS item, $2::bigint AS qty) AS req \
                        WHERE {table}.{key} = req.item AND ({only_if}) \
                          AND EXISTS (SELECT FROM go) \
                        RETURNING 1), \
              lines AS (INSERT INTO ledger (order_id, op, item, qty, at_ms) \
                        SELECT $4, o.op, $1, $2, $5 FROM UNNEST($6::text[]) WITH ORDINALITY AS o (op, n) \
                        WHERE EXISTS (SELECT FROM moved) ORDER BY o.n), \
              record AS (INSERT INTO {records} (order_id, state, request, updated_ms) \
                        SELECT $4, $7, $8, $5 WHERE EXISTS (SELECT FROM moved)) \
         SELECT (SELECT epoch FROM lab), EXISTS (SELECT FROM moved)"
    );
    let (lab, moved): (Option<String>, bool) = sqlx::query_as(&sql)
        .bind(item)
        .bind(qty)
        .bind(epoch)
        .bind(order_id)
        .bind(txlab_tx::now_ms())
        .bind(op_names(how.ops()))
        .bind(state.as_str())
        .bind(request)
        .fetch_one(conn)
        .await?;
    Ok(match (epoch, lab) {
        (Some(theirs), Some(ours)) if theirs != ours => AtOnce::Stale(ours),
        _ if moved => AtOnce::Done,
        _ => AtOnce::StepByStep,
    })
}
