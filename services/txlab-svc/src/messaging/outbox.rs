//! Transactional outbox: an event is written in the same local transaction
//! as the business change, and a relay publishes it afterwards.
//!
//! The service's schema must hold:
//! ```sql
//! CREATE TABLE outbox (
//!     id BIGSERIAL PRIMARY KEY, topic TEXT NOT NULL, key TEXT NOT NULL,
//!     payload JSONB NOT NULL, created_ms BIGINT NOT NULL, published_ms BIGINT);
//! ```
//! One relay per database publishes at a time: the replica holding the
//! advisory lock [`OUTBOX_RELAY_LOCK`] on a connection of its own. The others wait
//! for that lock and take over when its holder's connection ends (a crash
//! closes it). With a single publisher the relay needs no row locks: it
//! reads new rows, hands them to the producer, and marks what the broker
//! acknowledged every [`MARK_EVERY`] in one statement — rather than one
//! transaction per batch held open across the broker's round trip, a
//! durable commit per batch (at 100 orders/s nearly one per event).
//!
//! A crash between an acknowledgement and its mark makes the row go out
//! again, as does a relay that lost its lock without noticing yet: delivery
//! is at-least-once and consumers deduplicate (see [`crate::inbox`]).

use std::sync::Arc;
use std::time::Duration;

use rdkafka::producer::{FutureProducer, FutureRecord};
use sqlx::{postgres::PgListener, PgConnection, PgPool};
use txlab_api::event::OUTBOX_RELAY_LOCK;

use crate::http::Metrics;

/// The NOTIFY channel that wakes relays (a macro, to be spelled into SQL).
macro_rules! channel {
    () => {
        "txlab_outbox"
    };
}
pub const CHANNEL: &str = channel!();

/// The broker did not acknowledge an outbox row.
#[derive(Debug, thiserror::Error)]
#[error("publishing outbox row {} to {topic} failed", row.0)]
pub struct RelayError {
    row: (i64, i64),
    topic: String,
    #[source]
    source: rdkafka::error::KafkaError,
}

/// How the writer of an outbox row wakes the relay that publishes it.
///
/// A NOTIFY is dear: PostgreSQL serializes the commits of all
/// transactions that NOTIFY, cluster-wide, by a lock it takes before the
/// commit and holds until after its WAL flush, so notifying commits get
/// no group commit and wait for each other (pgbench here: 17,500 commits/s
/// of a one-row insert from 16 clients, 5,100–6,900 with a NOTIFY each).
/// So a writer notifies only when the relay may be another process's.
#[derive(Clone)]
pub enum RelayWake {
    /// The relay may run in another replica: a NOTIFY, delivered at commit.
    Notify,
    /// The relay runs in this process (the role's only replica): woken in
    /// memory once the writer has committed ([`RelayWake::committed`]).
    InProcess(Arc<tokio::sync::Notify>),
}

impl RelayWake {
    /// For `replica` of its role.
    pub fn for_replica(replica: &crate::config::Replica) -> RelayWake {
        if replica.is_lone() {
            RelayWake::InProcess(Arc::default())
        } else {
            RelayWake::Notify
        }
    }

    /// To be called once the transaction that wrote outbox rows has
    /// committed (before, the relay would not see them). A writer that
    /// does not call it leaves its rows to the relay's next poll.
    pub fn committed(&self) {
        if let RelayWake::InProcess(bell) = self {
            bell.notify_one();
        }
    }

    /// The SQL that ends a statement writing outbox rows from the CTE
    /// `written`: with a NOTIFY per row when the relay needs one. It
    /// returns one row per outbox row written.
    pub fn wake_sql(&self) -> &'static str {
        match self {
            RelayWake::Notify => {
                concat!(
                    "SELECT true FROM written CROSS JOIN LATERAL (SELECT pg_notify('",
                    channel!(),
                    "', '')) AS woken"
                )
            }
            RelayWake::InProcess(_) => "SELECT true FROM written",
        }
    }
}

/// Writes an event with the caller's transaction, a row for each of
/// `topics`; the relay is woken as `wake` says (the caller calls
/// [`RelayWake::committed`] after its commit).
pub async fn enqueue(
    conn: &mut PgConnection,
    wake: &RelayWake,
    topics: &[&str],
    key: &str,
    payload: &serde_json::Value,
) -> sqlx::Result<()> {
    // One statement, one round trip.
    sqlx::query(&format!(
        "WITH written AS (INSERT INTO outbox (topic, key, payload, created_ms) \
                          SELECT topic, $2, $3, $4 FROM UNNEST($1::text[]) AS t(topic) RETURNING 1) {}",
        wake.wake_sql()
    ))
    .bind(topics)
    .bind(key)
    .bind(payload)
    .bind(txlab_tx::now_ms())
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// How often acknowledged rows are marked published.
pub const MARK_EVERY: Duration = Duration::from_millis(200);

/// How long after a failed send the relay waits before reading again.
const FAILURE_PAUSE: Duration = Duration::from_millis(500);

/// How long the lock's session may take to answer its liveness check; a
/// session that does not answer is treated as lost (the relay gives up
/// publishing rather than hang on it).
const LOCK_CHECK_TIMEOUT: Duration = Duration::from_secs(2);

/// Publishes unpublished outbox rows to Kafka.
pub struct Relay {
    pub pool: PgPool,
    pub producer: FutureProducer,
    /// Rows read at a time.
    pub batch_size: i64,
    /// Fallback poll, in case a notification is missed (e.g. while
    /// reconnecting); also how often a waiting replica asks for the lock
    /// and the publishing one checks it still holds it.
    pub poll_every: Duration,
    /// How this process's writers wake it, besides a NOTIFY.
    pub wake: RelayWake,
    /// Counts the relay's wake-ups by what woke it
    /// (`txlab_relay_wakeups_total{cause}`: `memory`, `notify`, `poll`):
    /// rows found only by the poll waited up to [`Relay::poll_every`] for it.
    pub metrics: Arc<Metrics>,
}

/// A row handed to the producer: its id and when it was written (ids
/// restart after the lab's reset, so the pair names the row).
type RowId = (i64, i64);

/// What the publishing relay keeps between rounds.
#[derive(Default)]
struct InFlight {
    /// Handed to the producer and not yet marked; left out of the next read.
    sent: std::collections::BTreeSet<RowId>,
    /// Acknowledged, with the time of the acknowledgement, to be marked.
    acked: Vec<(RowId, i64)>,
}

impl Relay {
    pub fn new(pool: PgPool, producer: FutureProducer, wake: RelayWake, metrics: Arc<Metrics>) -> Relay {
        Relay {
            pool,
            producer,
            wake,
            metrics,
            batch_size: 100,
            poll_every: Duration::from_millis(500),
        }
    }

    /// Relays until `shutdown` resolves: waits for the relay lock, then
    /// publishes while it holds it. Errors are logged and retried after a
    /// pause: the rows stay in the table, so nothing is lost.
    pub async fn run(self, shutdown: impl std::future::Future<Output = ()>) {
        tokio::pin!(shutdown);
        loop {
            let lock = tokio::select! {
                _ = &mut shutdown => return,
                lock = self.take_lock() => lock,
            };
            tracing::info!("outbox relay holds the relay lock; publishing");
            if self.publish_while_holding(lock, &mut shutdown).await {
                return;
            }
            tracing::warn!("outbox relay stopped publishing; waiting for the relay lock again");
        }
    }

    /// A connection holding [`OUTBOX_RELAY_LOCK`], once this process gets it.
    async fn take_lock(&self) -> PgConnection {
        loop {
            let attempt = async {
                let mut conn = self.pool.acquire().await?;
                let held: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
                    .bind(OUTBOX_RELAY_LOCK)
                    .fetch_one(&mut *conn)
                    .await?;
                // The lock's session leaves the pool; a refused one goes back.
                Ok::<_, sqlx::Error>(held.then(|| conn.detach()))
            };
            match attempt.await {
                Ok(Some(conn)) => return conn,
                Ok(None) => {}
                Err(e) => tracing::warn!(error = %e, "outbox relay cannot ask for the relay lock; retrying"),
            }
            tokio::time::sleep(self.poll_every).await;
        }
    }

    /// Publishes until shutdown (returns true) or until the lock's
    /// connection fails or a send task dies (false; the lock is let go).
    async fn publish_while_holding(
        &self,
        mut lock: PgConnection,
        shutdown: &mut std::pin::Pin<&mut impl std::future::Future<Output = ()>>,
    ) -> bool {
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
        let mut state = InFlight::default();
        // Each send is a task of its own, so its acknowledgement is timed
        // when it arrives, not when this loop is next free (it waits on
        // the database while it reads and marks).
        let mut sends = tokio::task::JoinSet::new();
        let mut mark = tokio::time::interval(MARK_EVERY);
        mark.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut check = tokio::time::interval(self.poll_every);
        check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // Read at once on taking over: rows may be waiting.
        let mut read_now = true;
        // After a send failed, rows are read again no sooner than
        // FAILURE_PAUSE: a broker refusing at once must not make a loop of
        // reads and refusals.
        let mut failed_at: Option<std::time::Instant> = None;
        loop {
            // One batch at a time: rows written while a batch awaits its
            // acknowledgements go out together in the next. tansu takes
            // a few milliseconds per produce request whatever its size, so
            // a request per row as soon as it is written falls behind.
            let paused = failed_at.is_some_and(|t| t.elapsed() < FAILURE_PAUSE);
            if read_now && sends.is_empty() && !paused {
                match self.read_new(&state).await {
                    Ok(rows) => {
                        read_now = rows.len() as i64 == self.batch_size;
                        for (row, topic, key, payload) in rows {
                            state.sent.insert(row);
                            sends.spawn(self.send(row, topic, key, payload));
                        }
                    }
                    Err(e) => {
                        // Tried again at the next wake-up or poll.
                        tracing::warn!(error = %e, "outbox relay cannot read the outbox; retrying");
                        read_now = false;
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                }
                continue;
            }
            let in_process = async {
                match &self.wake {
                    RelayWake::InProcess(bell) => bell.notified().await,
                    RelayWake::Notify => std::future::pending().await,
                }
            };
            let woken = async {
                match listener.as_mut() {
                    Some(l) => {
                        // A lost connection fails at once on every try to
                        // reconnect: pause rather than spin.
                        if l.recv().await.is_err() {
                            tokio::time::sleep(Duration::from_millis(200)).await;
                        }
                        // Every commit that wrote rows notifies; one read
                        // takes all of them.
                        while l.next_buffered().is_some() {}
                    }
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = &mut *shutdown => {
                    // Acknowledgements still due are not waited for: those
                    // rows go out again from the next relay.
                    self.mark(&mut state).await;
                    return true;
                }
                _ = woken => {
                    self.metrics.relay_woken("notify");
                    read_now = true;
                }
                _ = in_process => {
                    self.metrics.relay_woken("memory");
                    read_now = true;
                }
                Some(sent) = sends.join_next() => match sent {
                    Ok(Ok(acked)) => state.acked.push(acked),
                    Ok(Err(e)) => {
                        tracing::warn!(error = %e, cause = ?std::error::Error::source(&e), "outbox relay failed to publish; the row goes out again");
                        state.sent.remove(&e.row);
                        failed_at = Some(std::time::Instant::now());
                    }
                    // A send task that panicked leaves a row this relay
                    // would never read again: start over from the table.
                    Err(e) => {
                        tracing::error!(error = %e, "outbox send task failed; the relay starts over");
                        self.mark(&mut state).await;
                        return false;
                    }
                },
                _ = mark.tick(), if !state.acked.is_empty() => self.mark(&mut state).await,
                _ = check.tick() => {
                    self.metrics.relay_woken("poll");
                    read_now = true; // the fallback poll
                    let check = sqlx::query("SELECT 1").execute(&mut lock);
                    let alive = match tokio::time::timeout(LOCK_CHECK_TIMEOUT, check).await {
                        Ok(Ok(_)) => Ok(()),
                        Ok(Err(e)) => Err(e.to_string()),
                        Err(_) => Err("no answer in time".to_string()),
                    };
                    if let Err(e) = alive {
                        tracing::warn!(error = %e, "outbox relay's lock connection failed");
                        self.mark(&mut state).await;
                        return false;
                    }
                }
            }
        }
    }

    /// Unpublished rows not already handed to the producer, oldest first.
    async fn read_new(
        &self,
        state: &InFlight,
    ) -> sqlx::Result<Vec<(RowId, String, String, serde_json::Value)>> {
        let (ids, created): (Vec<i64>, Vec<i64>) = state.sent.iter().copied().unzip();
        let rows: Vec<(i64, i64, String, String, serde_json::Value)> = sqlx::query_as(
            "SELECT id, created_ms, topic, key, payload FROM outbox o WHERE published_ms IS NULL \
             AND NOT EXISTS (SELECT 1 FROM UNNEST($1::bigint[], $2::bigint[]) AS s(id, created_ms) \
                             WHERE s.id = o.id AND s.created_ms = o.created_ms) \
             ORDER BY id LIMIT $3",
        )
        .bind(&ids)
        .bind(&created)
        .bind(self.batch_size)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(|(id, created_ms, topic, key, payload)| ((id, created_ms), topic, key, payload))
            .collect())
    }

    /// Hands one row to the producer; resolves when the broker acknowledged
    /// it, with the time it did.
    fn send(
        &self,
        row: RowId,
        topic: String,
        key: String,
        payload: serde_json::Value,
    ) -> impl std::future::Future<Output = Result<(RowId, i64), RelayError>> + Send + 'static {
        let body = payload.to_string();
        // Handed over now, in the order read: the idempotent producer keeps
        // each partition's order from here.
        let delivery = self
            .producer
            .send_result(FutureRecord::to(&topic).key(&key).payload(&body))
            .map_err(|(source, _)| source);
        async move {
            let fail = |source| RelayError {
                row,
                topic: topic.clone(),
                source,
            };
            match delivery {
                Err(source) => Err(fail(source)),
                Ok(ack) => match ack.await {
                    Ok(Ok(_)) => Ok((row, txlab_tx::now_ms())),
                    Ok(Err((source, _))) => Err(fail(source)),
                    Err(_cancelled) => Err(fail(rdkafka::error::KafkaError::Canceled)),
                },
            }
        }
    }

    /// Marks the acknowledged rows published, with the time each was
    /// acknowledged; on failure they stay for the next tick.
    async fn mark(&self, state: &mut InFlight) {
        if state.acked.is_empty() {
            return;
        }
        let ids: Vec<i64> = state.acked.iter().map(|((id, _), _)| *id).collect();
        let created: Vec<i64> = state.acked.iter().map(|((_, c), _)| *c).collect();
        let at: Vec<i64> = state.acked.iter().map(|(_, at)| *at).collect();
        let marked = sqlx::query(
            "UPDATE outbox o SET published_ms = a.at FROM UNNEST($1::bigint[], $2::bigint[], $3::bigint[]) \
             AS a(id, created_ms, at) WHERE o.id = a.id AND o.created_ms = a.created_ms",
        )
        .bind(&ids)
        .bind(&created)
        .bind(&at)
        .execute(&self.pool)
        .await;
        match marked {
            // Rows the lab's reset removed meanwhile match nothing; they
            // leave the in-flight set all the same.
            Ok(_) => {
                for (row, _) in state.acked.drain(..) {
                    state.sent.remove(&row);
                }
            }
            Err(e) => tracing::warn!(error = %e, "outbox relay cannot mark rows published; retrying"),
        }
    }
}
