//! The business operations of a participant, each appending what it moved
//! to the `ledger` table in the caller's transaction. The audit counts
//! these rows (per order, per item) instead of trusting a counter kept
//! beside the state: an effect applied twice shows up as two rows.

use sqlx::PgConnection;
use txlab_api::participant::LedgerOp;
use uuid::Uuid;

use super::{Participant, Refusal};

/// Appends one line per op and item, in one statement.
async fn append<P: Participant>(
    conn: &mut PgConnection,
    order_id: Uuid,
    ops: &[LedgerOp],
    req: &P::Request,
) -> sqlx::Result<()> {
    let (items, qty): (Vec<String>, Vec<i64>) = P::items(req).into_iter().unzip();
    let ops: Vec<&str> = ops.iter().map(|op| op.as_str()).collect();
    sqlx::query(
        "INSERT INTO ledger (order_id, op, item, qty, at_ms) \
         SELECT $1, o.op, l.item, l.qty, $5 \
         FROM UNNEST($2::text[]) WITH ORDINALITY AS o (op, n), \
              UNNEST($3::text[], $4::bigint[]) AS l (item, qty) \
         ORDER BY o.n",
    )
    .bind(order_id)
    .bind(&ops)
    .bind(&items)
    .bind(&qty)
    .bind(txlab_tx::now_ms())
    .execute(conn)
    .await
    .map(drop)
}

/// What a forward operation moves: a TCC try holds the items; a saga step
/// or a 2PC branch takes them (holds and captures at once, so its ledger
/// shows both lines, as if it had run the two one after the other).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Forward {
    Hold,
    Take,
}

/// Holds or takes the order's items, or refuses (and then appends
/// nothing). A refusal may leave partial changes where
/// [`Participant::may_refuse_partway`] says so; see
/// [`super::forward_refusable`].
pub async fn forward<P: Participant>(
    conn: &mut PgConnection,
    order_id: Uuid,
    req: &P::Request,
    how: Forward,
) -> sqlx::Result<Result<(), Refusal>> {
    let moved = match how {
        Forward::Hold => P::hold(&mut *conn, req).await?,
        Forward::Take => P::take(&mut *conn, req).await?,
    };
    if moved.is_ok() {
        let ops: &[LedgerOp] = match how {
            Forward::Hold => &[LedgerOp::Hold],
            Forward::Take => &[LedgerOp::Hold, LedgerOp::Capture],
        };
        append::<P>(conn, order_id, ops, req).await?;
    }
    Ok(moved)
}

/// Takes held items for good.
pub async fn capture<P: Participant>(
    conn: &mut PgConnection,
    order_id: Uuid,
    req: &P::Request,
) -> sqlx::Result<()> {
    P::capture(&mut *conn, req).await?;
    append::<P>(conn, order_id, &[LedgerOp::Capture], req).await
}

/// Lets held items go.
pub async fn release<P: Participant>(
    conn: &mut PgConnection,
    order_id: Uuid,
    req: &P::Request,
) -> sqlx::Result<()> {
    P::release(&mut *conn, req).await?;
    append::<P>(conn, order_id, &[LedgerOp::Release], req).await
}

/// Gives captured items back.
pub async fn restore<P: Participant>(
    conn: &mut PgConnection,
    order_id: Uuid,
    req: &P::Request,
) -> sqlx::Result<()> {
    P::restore(&mut *conn, req).await?;
    append::<P>(conn, order_id, &[LedgerOp::Restore], req).await
}
