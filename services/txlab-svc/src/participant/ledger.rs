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

use sqlx::postgres::{PgArguments, PgRow};
use sqlx::query::QueryAs;
use sqlx::{FromRow, PgConnection, Postgres};
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
    /// Nothing was written: the order has a record here already, or a row
    /// cannot give its quantity. The step-by-step path answers (from the
    /// record, or with the refusal's reason, inside a savepoint).
    StepByStep,
}

/// The CTEs of a forward call in one statement, after a `lab` CTE the
/// caller defines: `prior` (the order's record, if any), `req` (the
/// items), `locked` (every item's row, locked in key byte order, with
/// whether it can give its quantity; nothing is locked unless `gate`
/// holds and there is no record), `go` (one row when every item's row
/// can), and the writes behind `go`: `moved`, `lines`, `record`.
/// Parameters: `$1` items, `$2` quantities, `$4` order, `$5` now (ms),
/// `$6` ledger ops, `$7` record state, `$8` stored request.
///
/// `go` counts every locked row before anything is written, so the
/// epoch row `gate` reads is held (a reset under way waited for) and
/// all the items' rows are locked, in key order, before the first change.
pub fn forward_ctes<P: Participant>(how: Forward, gate: &str) -> String {
    let BusinessTable { table, key, .. } = P::BUSINESS;
    let GuardedChange { set, only_if } = how.change::<P>();
    let records = P::RECORDS;
    format!(
        "prior AS (SELECT FROM {records} WHERE order_id = $4), \
         req AS (SELECT * FROM UNNEST($1::text[], $2::bigint[]) AS req (item, qty)), \
         locked AS (SELECT ({only_if}) AS can FROM {table} JOIN req ON {table}.{key} = req.item \
                    WHERE NOT EXISTS (SELECT FROM prior) AND {gate} \
                    ORDER BY {table}.{key} COLLATE \"C\" FOR UPDATE OF {table}), \
         go AS (SELECT WHERE (SELECT count(*) FILTER (WHERE can) FROM locked) = cardinality($1::text[])), \
         moved AS (UPDATE {table} SET {set} FROM req \
                   WHERE {table}.{key} = req.item AND EXISTS (SELECT FROM go)), \
         lines AS (INSERT INTO ledger (order_id, op, item, qty, at_ms) \
                   SELECT $4, o.op, l.item, l.qty, $5 \
                   FROM UNNEST($6::text[]) WITH ORDINALITY AS o (op, n) \
                   CROSS JOIN UNNEST($1::text[], $2::bigint[]) WITH ORDINALITY AS l (item, qty, n) \
                   WHERE EXISTS (SELECT FROM go) ORDER BY o.n, l.n), \
         record AS (INSERT INTO {records} (order_id, state, request, updated_ms) \
                    SELECT $4, $7, $8, $5 WHERE EXISTS (SELECT FROM go))"
    )
}

/// A statement built on [`forward_ctes`] with its parameters `$1` to `$8`
/// bound (`$3` is `epoch`); the caller binds any after them.
pub fn forward_query<'q, P: Participant, O>(
    sql: &'q str,
    epoch: Option<&'q str>,
    order_id: Uuid,
    req: &P::Request,
    how: Forward,
    state: RecordState,
    request: &'q serde_json::Value,
) -> QueryAs<'q, Postgres, O, PgArguments>
where
    O: for<'r> FromRow<'r, PgRow>,
{
    let (items, qty): (Vec<String>, Vec<i64>) = P::items(req).into_iter().unzip();
    sqlx::query_as(sql)
        .bind(items)
        .bind(qty)
        .bind(epoch)
        .bind(order_id)
        .bind(txlab_tx::now_ms())
        .bind(op_names(how.ops()))
        .bind(state.as_str())
        .bind(request)
}

/// A forward call in one statement: checks the caller's `epoch` (`None`:
/// not fenced) holding the lab's epoch row as [`super::Fence::check`]
/// does, finds no record of the order, locks the rows of all its items in
/// byte order of their keys (the step-by-step path's: [`Participant::items`]
/// sorts them so), and only if
/// every row can give its quantity changes them all, appends the ledger
/// lines and inserts the record in `state`. Outside a transaction it is
/// one durable commit; inside one it saves the step-by-step path's round
/// trips.
///
/// The rows are changed by what `locked` checked, not by `only_if` again:
/// the update sees the rows as the statement's snapshot had them, and a
/// row another order changed since could fail (or pass) the guard there
/// while its locked, current version passes (or fails) it; re-checked,
/// a basket could move some of its items and not others.
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
    let sql = format!(
        "WITH lab AS (SELECT epoch FROM lab_epoch WHERE $3::text IS NOT NULL FOR SHARE), {} \
         SELECT (SELECT epoch FROM lab), EXISTS (SELECT FROM go)",
        forward_ctes::<P>(how, "($3::text IS NULL OR $3::text = (SELECT epoch FROM lab))")
    );
    let (lab, moved): (Option<String>, bool) =
        forward_query::<P, _>(&sql, epoch, order_id, req, how, state, request)
            .fetch_one(conn)
            .await?;
    Ok(match (epoch, lab) {
        (Some(theirs), Some(ours)) if theirs != ours => AtOnce::Stale(ours),
        _ if moved => AtOnce::Done,
        _ => AtOnce::StepByStep,
    })
}

/// What [`capture_at_once`] found, having done what the record allowed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Captured {
    /// Nothing was written: the caller's epoch is not the lab's, which is this one.
    Stale(String),
    /// The order's record as it was when locked (`None`: there is none).
    /// Only a `tried` one was captured: its items taken, their ledger
    /// lines written and the record moved to [`Participant::APPLIED`].
    Record(Option<RecordState>),
}

/// A TCC confirm in one statement: checks the caller's `epoch` as
/// [`forward_at_once`] does, locks the order's record and, when it is
/// `tried`, captures what the order's hold lines in the ledger say was
/// held (what its try moved: a try writes them with the record), locking
/// those rows in key order first as the step-by-step path does, then
/// advances the record. One durable commit, as the seven round trips of
/// the step-by-step path were.
pub async fn capture_at_once<P: Participant>(
    conn: &mut PgConnection,
    epoch: Option<&str>,
    order_id: Uuid,
) -> sqlx::Result<Captured> {
    let BusinessTable { table, key, .. } = P::BUSINESS;
    let records = P::RECORDS;
    // A participant whose hold already took the resources (`CAPTURE` is
    // `None`) only writes the capture lines and the record.
    let take = match P::CAPTURE {
        Some(set) => format!(
            "locked AS (SELECT FROM {table} JOIN req ON {table}.{key} = req.item \
                        ORDER BY {table}.{key} COLLATE \"C\" FOR UPDATE OF {table}), \
             moved AS (UPDATE {table} SET {set} FROM req \
                       WHERE {table}.{key} = req.item AND (SELECT count(*) FROM locked) > 0), "
        ),
        None => String::new(),
    };
    // The main query reads `lab` then `rec`, which takes the epoch row's
    // share lock before the record's lock, as the fence check does; the
    // writes run after, behind `go`.
    let sql = format!(
        "WITH lab AS (SELECT epoch FROM lab_epoch WHERE $2::text IS NOT NULL FOR SHARE), \
              rec AS (SELECT state FROM {records} WHERE order_id = $1 FOR UPDATE), \
              go AS (SELECT WHERE (SELECT state FROM rec) = $3 \
                     AND ($2::text IS NULL OR $2::text = (SELECT epoch FROM lab))), \
              req AS (SELECT item, qty FROM ledger \
                      WHERE order_id = $1 AND op = $4 AND EXISTS (SELECT FROM go)), \
              {take}\
              lines AS (INSERT INTO ledger (order_id, op, item, qty, at_ms) \
                        SELECT $1, $5, item, qty, $6 FROM req ORDER BY item), \
              advanced AS (UPDATE {records} SET state = $7, updated_ms = $6 \
                           WHERE order_id = $1 AND EXISTS (SELECT FROM go)) \
         SELECT (SELECT epoch FROM lab), (SELECT state FROM rec)"
    );
    let (lab, before): (Option<String>, Option<String>) = sqlx::query_as(&sql)
        .bind(order_id)
        .bind(epoch)
        .bind(RecordState::Tried.as_str())
        .bind(LedgerOp::Hold.as_str())
        .bind(LedgerOp::Capture.as_str())
        .bind(txlab_tx::now_ms())
        .bind(P::APPLIED.as_str())
        .fetch_one(conn)
        .await?;
    if let (Some(theirs), Some(ours)) = (epoch, lab) {
        if theirs != ours {
            return Ok(Captured::Stale(ours));
        }
    }
    Ok(Captured::Record(
        before.as_deref().map(super::record_state).transpose()?,
    ))
}
