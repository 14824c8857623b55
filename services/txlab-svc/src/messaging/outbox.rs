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
//! When the relay runs in the writer's own process, the writer hands it
//! the rows it committed ([`RelayWake::committed`]) and the relay sends
//! them without reading them back: the table is read when the relay takes
//! over and at each fallback poll, which finds whatever a handover missed
//! (a writer that failed between its commit and the handover).
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

/// How the writer of an outbox row gets it to the relay that publishes it.
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
    /// The relay runs in this process (the role's only replica): the
    /// writer hands it the rows once it has committed
    /// ([`RelayWake::committed`]), so the relay need not read them back.
    InProcess(Arc<Handoff>),
}

/// Rows committed by this process's writers, waiting for its relay.
#[derive(Default)]
pub struct Handoff {
    rows: std::sync::Mutex<Vec<Outgoing>>,
    bell: tokio::sync::Notify,
}

impl Handoff {
    /// The rows handed over so far, in the order their writers committed.
    fn take(&self) -> Vec<Outgoing> {
        std::mem::take(&mut *self.rows.lock().unwrap_or_else(|poisoned| poisoned.into_inner()))
    }
}

/// An outbox row as the producer needs it.
pub struct Outgoing {
    row: RowId,
    topic: String,
    key: String,
    body: String,
}

/// Outbox rows a transaction wrote: the relay's once it has committed.
#[must_use = "hand the rows to the relay with RelayWake::committed after the commit"]
#[derive(Default)]
pub struct Written(Vec<Outgoing>);

impl Written {
    /// The rows of a statement ending in [`RelayWake::written_sql`], with
    /// the key and payload it wrote to each.
    pub fn from_rows(rows: Vec<(i64, i64, String)>, key: &str, payload: &serde_json::Value) -> Written {
        let body = payload.to_string();
        Written(
            rows.into_iter()
                .map(|(id, created_ms, topic)| Outgoing {
                    row: (id, created_ms),
                    topic,
                    key: key.to_string(),
                    body: body.clone(),
                })
                .collect(),
        )
    }

    /// Whether the statement wrote any row.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
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

    /// To be called once the transaction that wrote `written` has
    /// committed (before, the relay must not see them). A writer that
    /// does not call it leaves its rows to the relay's next poll.
    pub fn committed(&self, written: Written) {
        if let RelayWake::InProcess(handoff) = self {
            if written.is_empty() {
                return;
            }
            handoff
                .rows
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .extend(written.0);
            handoff.bell.notify_one();
        }
    }

    /// The SQL that ends a statement writing outbox rows from the CTE
    /// `written` (`RETURNING id, created_ms, topic`): with a NOTIFY per
    /// row when the relay needs one. It returns those three columns of
    /// each row written, for [`Written::from_rows`].
    pub fn written_sql(&self) -> &'static str {
        match self {
            RelayWake::Notify => {
                concat!(
                    "SELECT id, created_ms, topic FROM written CROSS JOIN LATERAL (SELECT pg_notify('",
                    channel!(),
                    "', '')) AS woken"
                )
            }
            RelayWake::InProcess(_) => "SELECT id, created_ms, topic FROM written",
        }
    }
}

/// Writes an event with the caller's transaction, a row for each of
/// `topics`; the caller hands the rows to the relay with
/// [`RelayWake::committed`] after its commit.
pub async fn enqueue(
    conn: &mut PgConnection,
    wake: &RelayWake,
    topics: &[&str],
    key: &str,
    payload: &serde_json::Value,
) -> sqlx::Result<Written> {
    // One statement, one round trip.
    let rows: Vec<(i64, i64, String)> = sqlx::query_as(&format!(
        "WITH written AS (INSERT INTO outbox (topic, key, payload, created_ms) \
                          SELECT topic, $2, $3, $4 FROM UNNEST($1::text[]) AS t(topic) \
                          RETURNING id, created_ms, topic) {}",
        wake.written_sql()
    ))
    .bind(topics)
    .bind(key)
    .bind(payload)
    .bind(txlab_tx::now_ms())
    .fetch_all(&mut *conn)
    .await?;
    Ok(Written::from_rows(rows, key, payload))
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
    /// rows found only by the poll waited up to [`Relay::poll_every`] for it;
    /// and the rows it sent by how it got them
    /// (`txlab_events_total{kind="relayed"}`: `handed`, `read`).
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
        // Rows this process's writers handed over, waiting for the batch
        // in flight to be acknowledged.
        let mut handed: Vec<Outgoing> = Vec::new();
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
                // Handed over before the read began, so committed before
                // it: the read finds them.
                drop(self.take_handed());
                handed.clear();
                match self.read_new(&state).await {
                    Ok(rows) => {
                        read_now = rows.len() as i64 == self.batch_size;
                        for out in rows {
                            state.sent.insert(out.row);
                            self.metrics.event("relayed", "read");
                            sends.spawn(self.send(out));
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
            if !handed.is_empty() && sends.is_empty() && !paused {
                for out in handed.drain(..) {
                    if state.sent.insert(out.row) {
                        self.metrics.event("relayed", "handed");
                        sends.spawn(self.send(out));
                    }
                }
                continue;
            }
            let in_process = async {
                match &self.wake {
                    RelayWake::InProcess(handoff) => handoff.bell.notified().await,
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
                    // A row a read has already sent (its writer handed it
                    // over after the read began) is dropped now, while it
                    // is still among the rows sent: once marked it is not,
                    // and would go out twice.
                    let sent = &state.sent;
                    handed.extend(self.take_handed().into_iter().filter(|out| !sent.contains(&out.row)));
                }
                Some(sent) = sends.join_next() => match sent {
                    Ok(Ok(acked)) => state.acked.push(acked),
                    Ok(Err(e)) => {
                        tracing::warn!(error = %e, cause = ?std::error::Error::source(&e), "outbox relay failed to publish; the row goes out again");
                        state.sent.remove(&e.row);
                        failed_at = Some(std::time::Instant::now());
                        // After the pause the table, not the handover, says
                        // what goes next: the failed row again, in id order
                        // with the rows written after it.
                        read_now = true;
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

    /// The rows this process's writers have handed over since the last call.
    fn take_handed(&self) -> Vec<Outgoing> {
        match &self.wake {
            RelayWake::InProcess(handoff) => handoff.take(),
            RelayWake::Notify => Vec::new(),
        }
    }

    /// Unpublished rows not already handed to the producer, oldest first.
    async fn read_new(&self, state: &InFlight) -> sqlx::Result<Vec<Outgoing>> {
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
            .map(|(id, created_ms, topic, key, payload)| Outgoing {
                row: (id, created_ms),
                topic,
                key,
                body: payload.to_string(),
            })
            .collect())
    }

    /// Hands one row to the producer; resolves when the broker acknowledged
    /// it, with the time it did.
    fn send(
        &self,
        out: Outgoing,
    ) -> impl std::future::Future<Output = Result<(RowId, i64), RelayError>> + Send + 'static {
        let Outgoing {
            row,
            topic,
            key,
            body,
        } = out;
        // Handed over now, in the order read or committed: the idempotent
        // producer keeps each partition's order from here.
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
