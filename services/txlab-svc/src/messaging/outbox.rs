//! Transactional outbox: an event is written in the same local transaction
//! as the business change, and a relay publishes it afterwards.
//!
//! The service's schema must hold:
//! ```sql
//! CREATE TABLE outbox (
//!     id BIGSERIAL PRIMARY KEY, topic TEXT NOT NULL, key TEXT NOT NULL,
//!     payload JSONB NOT NULL, created_ms BIGINT NOT NULL, published_ms BIGINT);
//! ```
//! Many replicas may relay at once: each batch is claimed with
//! `FOR UPDATE SKIP LOCKED`, so a row goes out once per claim. A crash
//! between publishing and marking makes the row go out again — delivery is
//! at-least-once and consumers deduplicate (see [`crate::inbox`]).

use std::time::Duration;

use rdkafka::producer::{FutureProducer, FutureRecord};
use sqlx::{postgres::PgListener, PgConnection, PgPool};

/// The NOTIFY channel that wakes relays.
pub const CHANNEL: &str = "txlab_outbox";

#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    /// The database refused or could not be reached.
    #[error("outbox database error")]
    Db(#[from] sqlx::Error),
    /// The broker did not acknowledge the message.
    #[error("publishing outbox row {id} to {topic} failed")]
    Publish {
        id: i64,
        topic: String,
        #[source]
        source: rdkafka::error::KafkaError,
    },
}

/// Writes an event with the caller's transaction and wakes the relays when
/// that transaction commits (NOTIFY is delivered at commit).
pub async fn enqueue(
    conn: &mut PgConnection,
    topic: &str,
    key: &str,
    payload: &serde_json::Value,
) -> sqlx::Result<()> {
    sqlx::query("INSERT INTO outbox (topic, key, payload, created_ms) VALUES ($1, $2, $3, $4)")
        .bind(topic)
        .bind(key)
        .bind(payload)
        .bind(txlab_tx::now_ms())
        .execute(&mut *conn)
        .await?;
    sqlx::query("SELECT pg_notify($1, '')")
        .bind(CHANNEL)
        .execute(&mut *conn)
        .await?;
    Ok(())
}

/// Publishes unpublished outbox rows to Kafka.
pub struct Relay {
    pub pool: PgPool,
    pub producer: FutureProducer,
    pub batch_size: i64,
    /// Fallback poll, in case a notification is missed (e.g. while reconnecting).
    pub poll_every: Duration,
}

impl Relay {
    /// Publishes one batch; returns how many rows went out.
    pub async fn publish_batch(&self) -> Result<usize, RelayError> {
        let mut tx = self.pool.begin().await?;
        let rows: Vec<(i64, String, String, serde_json::Value)> = sqlx::query_as(
            "SELECT id, topic, key, payload FROM outbox WHERE published_ms IS NULL \
             ORDER BY id LIMIT $1 FOR UPDATE SKIP LOCKED",
        )
        .bind(self.batch_size)
        .fetch_all(&mut *tx)
        .await?;
        if rows.is_empty() {
            return Ok(0);
        }
        // All rows of the batch are handed to the producer at once and
        // acknowledged together: one broker round trip per batch, not per
        // row. The idempotent producer keeps each partition's order.
        let bodies: Vec<String> = rows.iter().map(|r| r.3.to_string()).collect();
        let sends = rows
            .iter()
            .zip(&bodies)
            .map(|((id, topic, key, _), body)| async move {
                self.producer
                    .send(
                        FutureRecord::to(topic).key(key).payload(body),
                        Duration::from_secs(10),
                    )
                    .await
                    .map(|_| *id)
                    .map_err(|(source, _)| RelayError::Publish {
                        id: *id,
                        topic: topic.clone(),
                        source,
                    })
            });
        let ids = futures_util::future::try_join_all(sends).await?;
        sqlx::query("UPDATE outbox SET published_ms = $1 WHERE id = ANY($2)")
            .bind(txlab_tx::now_ms())
            .bind(&ids)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(ids.len())
    }

    /// Relays until `shutdown` resolves. Errors are logged and retried after
    /// a pause: the rows stay in the table, so nothing is lost.
    pub async fn run(self, shutdown: impl std::future::Future<Output = ()>) {
        tokio::pin!(shutdown);
        let mut listener = match PgListener::connect_with(&self.pool).await {
            Ok(mut l) => match l.listen(CHANNEL).await {
                Ok(()) => Some(l),
                Err(e) => {
                    tracing::warn!(error = %e, "outbox relay cannot LISTEN; polling only");
                    None
                }
            },
            Err(e) => {
                tracing::warn!(error = %e, "outbox relay cannot LISTEN; polling only");
                None
            }
        };
        loop {
            // Drain everything that is there, then wait for a wake-up. A
            // batch short of the batch size took every row there was, so
            // looking again would only cost a transaction.
            loop {
                match self.publish_batch().await {
                    Ok(n) if (n as i64) < self.batch_size => break,
                    Ok(n) => tracing::debug!(published = n, "outbox batch"),
                    Err(e) => {
                        tracing::warn!(error = %e, cause = ?std::error::Error::source(&e), "outbox relay failed; retrying");
                        tokio::time::sleep(Duration::from_millis(200)).await;
                        break;
                    }
                }
            }
            let wake = async {
                match listener.as_mut() {
                    Some(l) => {
                        let _ = tokio::time::timeout(self.poll_every, l.recv()).await;
                    }
                    None => tokio::time::sleep(self.poll_every).await,
                }
            };
            tokio::select! {
                _ = &mut shutdown => return,
                _ = wake => {}
            }
        }
    }
}
