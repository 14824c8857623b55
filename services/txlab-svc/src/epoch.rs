//! The lab epoch: which cell the lab is in, set by every reset. Events and
//! participant calls carry the epoch they were born in; work of another
//! epoch is dropped or refused, so a cell cannot leak into the next.
//! Consumers check an event's epoch together with their inbox, in one
//! statement ([`crate::messaging::inbox::admit`]).

/// The lab's current epoch, to stamp on a new event. Read it first in the
/// transaction, before touching other tables: a reset takes the epoch row
/// first and the tables after, and the same order everywhere rules out a
/// deadlock between the two.
pub async fn epoch(conn: &mut sqlx::PgConnection) -> sqlx::Result<String> {
    sqlx::query_scalar("SELECT epoch FROM lab_epoch FOR SHARE")
        .fetch_one(conn)
        .await
}

/// The lab's current epoch, read without holding its row: for a check that
/// no work follows in the same transaction (the lock would end with the
/// read anyway, and taking it would make the read a write transaction — a
/// durable commit of its own).
pub async fn epoch_unlocked(conn: &mut sqlx::PgConnection) -> sqlx::Result<String> {
    sqlx::query_scalar("SELECT epoch FROM lab_epoch")
        .fetch_one(conn)
        .await
}
