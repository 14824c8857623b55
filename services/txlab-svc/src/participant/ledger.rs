//! The business operations of a participant, each appending what it moved
//! to the `ledger` table in the caller's transaction. The audit counts
//! these rows (per order, per item) instead of trusting a counter kept
//! beside the state: an effect applied twice shows up as two rows.

use sqlx::PgConnection;
use txlab_api::participant::LedgerOp;
use uuid::Uuid;

use super::{Participant, Refusal};

async fn append<P: Participant>(
    conn: &mut PgConnection,
    order_id: Uuid,
    op: LedgerOp,
    req: &P::Request,
) -> sqlx::Result<()> {
    let (items, qty): (Vec<String>, Vec<i64>) = P::items(req).into_iter().unzip();
    sqlx::query(
        "INSERT INTO ledger (order_id, op, item, qty, at_ms) \
         SELECT $1, $2, item, qty, $5 FROM UNNEST($3::text[], $4::bigint[]) AS l (item, qty)",
    )
    .bind(order_id)
    .bind(op.as_str())
    .bind(&items)
    .bind(&qty)
    .bind(txlab_tx::now_ms())
    .execute(conn)
    .await
    .map(drop)
}

/// Holds the order's items, or refuses (and then appends nothing).
pub async fn hold<P: Participant>(
    conn: &mut PgConnection,
    order_id: Uuid,
    req: &P::Request,
) -> sqlx::Result<Result<(), Refusal>> {
    let held = P::hold(&mut *conn, req).await?;
    if held.is_ok() {
        append::<P>(conn, order_id, LedgerOp::Hold, req).await?;
    }
    Ok(held)
}

/// Takes held items for good.
pub async fn capture<P: Participant>(
    conn: &mut PgConnection,
    order_id: Uuid,
    req: &P::Request,
) -> sqlx::Result<()> {
    P::capture(&mut *conn, req).await?;
    append::<P>(conn, order_id, LedgerOp::Capture, req).await
}

/// Lets held items go.
pub async fn release<P: Participant>(
    conn: &mut PgConnection,
    order_id: Uuid,
    req: &P::Request,
) -> sqlx::Result<()> {
    P::release(&mut *conn, req).await?;
    append::<P>(conn, order_id, LedgerOp::Release, req).await
}

/// Gives captured items back.
pub async fn restore<P: Participant>(
    conn: &mut PgConnection,
    order_id: Uuid,
    req: &P::Request,
) -> sqlx::Result<()> {
    P::restore(&mut *conn, req).await?;
    append::<P>(conn, order_id, LedgerOp::Restore, req).await
}
