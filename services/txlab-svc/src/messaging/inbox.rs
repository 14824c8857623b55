//! Inbox: the consumer side of exactly-once effects. A message id is
//! recorded in the same transaction as the effect, so a redelivered message
//! finds its id and applies nothing.
//!
//! The service's schema must hold:
//! `CREATE TABLE inbox (message_id TEXT PRIMARY KEY, received_ms BIGINT NOT NULL);`

use sqlx::PgConnection;

/// What a consumer may do with a delivered message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    /// From a cell the lab has reset away: drop it.
    Stale,
    /// Seen before: its effect is already stored.
    Repeated,
    /// New: apply it in this transaction (its id is now recorded).
    First,
}

/// Checks the message's epoch and records its id, in one round trip:
/// the epoch row is read first and held (FOR SHARE) until the caller's
/// transaction ends — the order every epoch reader keeps, see
/// [`crate::epoch`] — and the id is recorded only for a current epoch.
pub async fn admit(conn: &mut PgConnection, epoch: &str, message_id: &str) -> sqlx::Result<Delivery> {
    admit_heard_at(conn, epoch, message_id, txlab_tx::now_ms()).await
}

/// [`admit`] for a message heard at `received_ms` and written only now
/// (a result the order service held back).
pub async fn admit_heard_at(
    conn: &mut PgConnection,
    epoch: &str,
    message_id: &str,
    received_ms: i64,
) -> sqlx::Result<Delivery> {
    let (current, first): (bool, bool) = sqlx::query_as(&format!(
        "WITH {ADMIT_CTES} SELECT current, EXISTS (SELECT FROM seen) FROM lab"
    ))
    .bind(epoch)
    .bind(message_id)
    .bind(received_ms)
    .fetch_one(&mut *conn)
    .await?;
    Ok(delivery(current, first))
}

/// The common table expressions of [`admit`], for a statement that writes
/// a message's effect with its inbox row: `lab` (`current`: whether the
/// message's epoch `$1` is the lab's, whose row it holds FOR SHARE) and
/// `seen` (one row when the message id `$2` was recorded now, received
/// at `$3`: its first delivery). The statement's effect reads `seen`.
pub const ADMIT_CTES: &str = "lab AS (SELECT epoch = $1 AS current FROM lab_epoch FOR SHARE), \
     seen AS (INSERT INTO inbox (message_id, received_ms) SELECT $2, $3 FROM lab WHERE current \
              ON CONFLICT DO NOTHING RETURNING 1)";

/// What `lab`'s `current` and whether `seen` has a row say.
pub fn delivery(current: bool, first: bool) -> Delivery {
    match (current, first) {
        (false, _) => Delivery::Stale,
        (true, false) => Delivery::Repeated,
        (true, true) => Delivery::First,
    }
}
