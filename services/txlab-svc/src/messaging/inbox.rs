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

/// [`admit`] for a message heard at `received_ms` and written only now.
async fn admit_heard_at(
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

/// One message for [`admit_all`].
pub struct Received<'a> {
    pub epoch: &'a str,
    pub message_id: String,
    /// When the consumer heard it (it is written only now).
    pub received_ms: i64,
}

/// [`admit`] for several messages in one round trip (results the order
/// service held back, written together): their deliveries in the order
/// given. An id given twice is [`Delivery::Repeated`] the second time.
pub async fn admit_all(conn: &mut PgConnection, messages: &[Received<'_>]) -> sqlx::Result<Vec<Delivery>> {
    match messages {
        [] => return Ok(Vec::new()),
        [one] => {
            return Ok(vec![
                admit_heard_at(conn, one.epoch, &one.message_id, one.received_ms).await?,
            ])
        }
        _ => {}
    }
    let epochs: Vec<&str> = messages.iter().map(|m| m.epoch).collect();
    let ids: Vec<&str> = messages.iter().map(|m| m.message_id.as_str()).collect();
    let received: Vec<i64> = messages.iter().map(|m| m.received_ms).collect();
    let rows: Vec<(bool, bool)> = sqlx::query_as(
        "WITH lab AS (SELECT epoch FROM lab_epoch FOR SHARE), \
              m AS (SELECT * FROM unnest($1::text[], $2::text[], $3::int8[]) \
                    WITH ORDINALITY AS m (epoch, message_id, received_ms, n)), \
              seen AS (INSERT INTO inbox (message_id, received_ms) \
                       SELECT m.message_id, m.received_ms FROM m JOIN lab ON m.epoch = lab.epoch \
                       ON CONFLICT DO NOTHING RETURNING message_id) \
         SELECT m.epoch = lab.epoch, EXISTS (SELECT FROM seen WHERE seen.message_id = m.message_id) \
         FROM m, lab ORDER BY m.n",
    )
    .bind(&epochs)
    .bind(&ids)
    .bind(&received)
    .fetch_all(&mut *conn)
    .await?;
    if rows.len() != messages.len() {
        return Err(sqlx::Error::RowNotFound); // no lab_epoch row: as `admit` fails
    }
    let mut deliveries: Vec<Delivery> = rows
        .into_iter()
        .map(|(current, first)| delivery(current, first))
        .collect();
    first_copy_only(&ids, &mut deliveries);
    Ok(deliveries)
}

/// Both copies of an id given twice read the one row it inserted: the
/// later copy is a repeat.
fn first_copy_only(ids: &[&str], deliveries: &mut [Delivery]) {
    for i in 1..ids.len() {
        if deliveries[i] == Delivery::First && ids[..i].contains(&ids[i]) {
            deliveries[i] = Delivery::Repeated;
        }
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_id_given_twice_is_first_once() {
        use Delivery::*;
        let mut d = [First, First, Stale, First, Repeated];
        first_copy_only(&["a", "b", "c", "a", "b"], &mut d);
        assert_eq!(d, [First, First, Stale, Repeated, Repeated]);
    }
}
