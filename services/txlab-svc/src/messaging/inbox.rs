//! Inbox: the consumer side of exactly-once effects. A message id is
//! recorded in the same transaction as the effect, so a redelivered message
//! finds its id and applies nothing.
//!
//! The service's schema must hold:
//! `CREATE TABLE inbox (message_id TEXT PRIMARY KEY, received_ms BIGINT NOT NULL);`

use sqlx::PgConnection;

/// Records `message_id`; returns false when it was seen before, in which case
/// the caller must skip the effect.
pub async fn first_delivery(conn: &mut PgConnection, message_id: &str) -> sqlx::Result<bool> {
    let inserted =
        sqlx::query("INSERT INTO inbox (message_id, received_ms) VALUES ($1, $2) ON CONFLICT DO NOTHING")
            .bind(message_id)
            .bind(txlab_tx::now_ms())
            .execute(&mut *conn)
            .await?
            .rows_affected();
    Ok(inserted == 1)
}
