//! Consuming Kafka with effects that happen once: a handler stores its
//! effect (with an inbox row) before the offset is committed, a failing
//! handler is retried with backoff, and an unreadable message is skipped
//! visibly rather than blocking its partition.
//!
//! A message whose handler still fails after [`MAX_EVENT_ATTEMPTS`] is a
//! poison message: it is dead-lettered (a `dead_letters` row and a message
//! on the dead-letter topic, in one transaction), counted, and the
//! partition moves on. The audit names the orders it left unfinished.
//!
//! Messages are handled concurrently across keys but in order within a key
//! (one worker per key hash), so one slow order does not hold up the rest
//! of its partition. An offset is stored only once every message before it
//! in its partition is done, so a crash redelivers anything unfinished.
//!
//! Each consumer reads its share of the topic's partitions and keeps its
//! offsets in its own database (`consumer_offsets`), not in a Kafka consumer
//! group: a restarted service resumes at once, with no group session to
//! expire (seen with tansu: a crashed member could stall its group for
//! good). The share is an explicit split by replica index (partition mod
//! replica count), so with several replicas every partition has exactly one
//! reader and its offsets one writer; a replica that is down holds up its
//! partitions until it is back, as a StatefulSet's member would.
//!
//! A handler may also keep a message's [`Receipt`] and say it is done
//! later ([`Ack::Later`]): the order service holds back results that decide
//! nothing yet and writes them with a later transaction. Until then the
//! partition's stored offset stays before the message, so a crash
//! delivers it again.

use std::collections::BTreeMap;
use std::future::Future;
use std::hash::{Hash, Hasher};
use std::time::Duration;

use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::OwnedMessage;
use rdkafka::{Message, Offset, TopicPartitionList};
use serde::de::DeserializeOwned;
use sqlx::PgPool;
use tokio::sync::{mpsc, watch};

use crate::http::Metrics;

/// Workers per consumer: orders handled at once.
const WORKERS: usize = 16;
/// How often finished offsets are stored.
const OFFSET_FLUSH: Duration = Duration::from_millis(200);
/// Attempts at handling one message before it is dead-lettered. With the
/// compensations' backoff (50 ms doubling, capped at 2 s) that is about
/// 5 s: long enough to ride out a restarting database, short enough that
/// one poison message does not hold up its worker's other orders for long.
pub const MAX_EVENT_ATTEMPTS: u32 = 10;

/// Where a consumer's offsets are kept.
#[derive(Clone)]
pub struct Offsets {
    pub pool: PgPool,
    /// The consumer's name, e.g. `payment`.
    pub consumer: &'static str,
    pub topic: &'static str,
}

impl Offsets {
    /// Sets where a partition resumes, even backwards (a new topic incarnation).
    async fn reset(&self, partition: i32, next: i64) -> sqlx::Result<()> {
        self.save(&[partition], &[next], "EXCLUDED.next_offset").await
    }

    /// Records that everything before each partition's `next` is done
    /// (never moving backwards), all partitions in one statement.
    async fn store(&self, next: &BTreeMap<i32, i64>) -> sqlx::Result<()> {
        let (partitions, offsets): (Vec<i32>, Vec<i64>) = next.iter().map(|(p, n)| (*p, *n)).unzip();
        self.save(
            &partitions,
            &offsets,
            "GREATEST(consumer_offsets.next_offset, EXCLUDED.next_offset)",
        )
        .await
    }

    async fn save(&self, partitions: &[i32], next: &[i64], on_conflict: &str) -> sqlx::Result<()> {
        sqlx::query(&format!(
            "INSERT INTO consumer_offsets (consumer, topic, partition, next_offset) \
             SELECT $1, $2, p, n FROM UNNEST($3::int[], $4::bigint[]) AS t(p, n) \
             ON CONFLICT (consumer, topic, partition) DO UPDATE SET next_offset = {on_conflict}"
        ))
        .bind(self.consumer)
        .bind(self.topic)
        .bind(partitions)
        .bind(next)
        .execute(&self.pool)
        .await
        .map(drop)
    }
}

/// A consumer reading `replica`'s share of the partitions of
/// `offsets.topic` from their stored offsets. A partition never read before starts at its current end, which
/// is stored at once, so nothing produced while the service is down is missed.
///
/// A stored offset above the partition's end belongs to another
/// incarnation of the topic (a broker with in-memory storage restarted,
/// the database reused by another run): trusting it would skip that many
/// messages of this one. Such a partition is treated as never read and
/// starts at its current end, like a first start. (tansu was also seen to
/// report an end a few messages below offsets already read; starting at
/// the end then reads those few again, which the inbox absorbs.) An offset
/// below the start (messages deleted) starts at the start.
pub async fn assigned(
    brokers: &str,
    offsets: &Offsets,
    replica: crate::config::Replica,
) -> anyhow::Result<Assigned> {
    let consumer = crate::messaging::kafka::consumer(brokers, &format!("txlab-{}", offsets.consumer))?;
    let timeout = Duration::from_secs(10);
    let metadata = consumer.fetch_metadata(Some(offsets.topic), timeout)?;
    let partitions = metadata
        .topics()
        .first()
        .map(|t| t.partitions().len())
        .unwrap_or(0);
    anyhow::ensure!(partitions > 0, "topic {} has no partitions", offsets.topic);
    let stored: Vec<(i32, i64)> = sqlx::query_as(
        "SELECT partition, next_offset FROM consumer_offsets WHERE consumer = $1 AND topic = $2",
    )
    .bind(offsets.consumer)
    .bind(offsets.topic)
    .fetch_all(&offsets.pool)
    .await?;
    let stored: BTreeMap<i32, i64> = stored.into_iter().collect();
    if replica.count as usize > partitions {
        tracing::warn!(
            consumer = offsets.consumer,
            topic = offsets.topic,
            partitions,
            replicas = replica.count,
            "more replicas than partitions: some replicas read nothing"
        );
    }
    let mut tpl = TopicPartitionList::new();
    let mut starts = BTreeMap::new();
    for p in (0..partitions as i32).filter(|p| replica.reads(*p)) {
        let (low, high) = consumer.fetch_watermarks(offsets.topic, p, timeout)?;
        let next = match stored.get(&p).copied() {
            Some(n) if (low..=high).contains(&n) => n,
            Some(n) => {
                let start = if n < low { low } else { high };
                tracing::warn!(
                    consumer = offsets.consumer,
                    topic = offsets.topic,
                    partition = p,
                    stored = n,
                    low,
                    high,
                    start,
                    "stored offset is outside the partition's range (another topic incarnation?); not trusting it"
                );
                offsets.reset(p, start).await?;
                start
            }
            None => {
                offsets.reset(p, high).await?;
                high
            }
        };
        tpl.add_partition_offset(offsets.topic, p, Offset::Offset(next))?;
        starts.insert(p, next);
    }
    consumer.assign(&tpl)?;
    Ok(Assigned { consumer, starts })
}

/// How far back to fetch for the missing offset of a gap, per partition.
///
/// tansu serves a fetch that starts inside a record batch (several events
/// the relay produced at once) from the next batch, so a consumer resuming
/// at an offset in the middle of a batch was silently given the messages
/// after it — two orders of a crash cell were never seen by payment. Asking
/// again for the same offset gets the same answer; each retry asks from
/// twice as far back (1, 2, 4... offsets, down to the partition's start),
/// and the inbox drops what was handled already.
#[derive(Default)]
struct GapSeeks(BTreeMap<i32, (i64, i64)>);

impl GapSeeks {
    /// Where to fetch `partition` from to get `missing` back; None once the
    /// partition's start was tried and the broker still skipped it.
    fn seek_for(&mut self, partition: i32, missing: i64) -> Option<i64> {
        let (wanted, back) = self.0.entry(partition).or_insert((missing, 0));
        if *wanted != missing {
            (*wanted, *back) = (missing, 0);
        }
        if *back > 0 && missing - *back <= 0 {
            self.0.remove(&partition);
            return None;
        }
        *back = (*back * 2).max(1);
        Some((missing - *back).max(0))
    }

    /// A message of `partition` at `offset` was taken: a gap it closes is over.
    fn reached(&mut self, partition: i32, offset: i64) {
        if self
            .0
            .get(&partition)
            .is_some_and(|(missing, _)| offset >= *missing)
        {
            self.0.remove(&partition);
        }
    }
}

/// A consumer and the offset each of its partitions starts at.
pub struct Assigned {
    consumer: StreamConsumer,
    starts: BTreeMap<i32, i64>,
}

/// When a handler's message counts as done.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ack {
    /// Now: its effect is stored.
    Now,
    /// When the handler calls [`Receipt::done`] on the receipt it kept.
    Later,
}

/// A message's claim to be counted done, which a handler may keep (see [`Ack::Later`]).
#[derive(Clone)]
pub struct Receipt {
    partition: i32,
    offset: i64,
    done: mpsc::UnboundedSender<(i32, i64)>,
}

impl std::fmt::Debug for Receipt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Receipt({}@{})", self.partition, self.offset)
    }
}

impl Receipt {
    /// The message's effect is stored: its offset may be committed once
    /// everything before it is done too.
    pub fn done(self) {
        let _ = self.done.send((self.partition, self.offset));
    }
}

#[cfg(test)]
impl Receipt {
    /// A receipt nobody listens to.
    pub fn for_test() -> Receipt {
        let (done, _) = mpsc::unbounded_channel();
        Receipt {
            partition: 0,
            offset: 0,
            done,
        }
    }
}

/// Hands every decoded message, with its [`Receipt`], to `handle` until
/// `stop` is raised. A message is done when `handle` returns [`Ack::Now`],
/// or when the receipt it kept says so.
pub async fn consume<T, F, Fut>(
    assigned: Assigned,
    offsets: Offsets,
    metrics: std::sync::Arc<Metrics>,
    stop: watch::Receiver<bool>,
    handle: F,
) where
    T: DeserializeOwned + Send + 'static,
    F: Fn(T, Receipt) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = anyhow::Result<Ack>> + Send + 'static,
{
    let what = offsets.consumer;
    let (done_tx, mut done_rx) = mpsc::unbounded_channel::<(i32, i64)>();
    let workers: Vec<mpsc::Sender<OwnedMessage>> = (0..WORKERS)
        .map(|_| {
            let (tx, rx) = mpsc::channel::<OwnedMessage>(64);
            tokio::spawn(work(
                rx,
                done_tx.clone(),
                offsets.clone(),
                metrics.clone(),
                stop.clone(),
                handle.clone(),
            ));
            tx
        })
        .collect();
    let Assigned { consumer, starts } = assigned;
    let mut gaps = GapSeeks::default();
    let mut progress = txlab_tx::offsets::Progress::default();
    // The first message of a partition is checked against where it was
    // assigned to start, like every later one against its predecessor: a
    // broker that starts a fetch past the offset asked for is caught.
    for (partition, next) in starts {
        progress.resume_at(partition, next);
    }
    // Offsets done but not yet stored. They are stored together every
    // OFFSET_FLUSH rather than one write per message: a crash in between
    // redelivers a few messages, which the handlers' inboxes absorb.
    let mut unstored: BTreeMap<i32, i64> = BTreeMap::new();
    let mut failures_in_a_row = 0_u32;
    let mut flush = tokio::time::interval(OFFSET_FLUSH);
    flush.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let stopped = crate::stopped(stop);
    tokio::pin!(stopped);
    loop {
        tokio::select! {
            _ = &mut stopped => {
                store_offsets(&offsets, &mut unstored).await;
                return;
            }
            _ = flush.tick(), if !unstored.is_empty() => store_offsets(&offsets, &mut unstored).await,
            Some((partition, offset)) = done_rx.recv() => {
                if let Some(next) = progress.finished(partition, offset) {
                    unstored.insert(partition, next);
                }
            }
            m = consumer.recv() => match m {
                Ok(msg) => {
                    failures_in_a_row = 0;
                    let msg = msg.detach();
                    let (partition, offset) = (msg.partition(), msg.offset());
                    if let Some(expected) = progress.started(partition, offset) {
                        // Offsets of this topic are dense, so a jump means the
                        // broker skipped messages: fetch them again rather
                        // than lose them (the inbox absorbs any repeat).
                        metrics.event("offset_gap", what);
                        match gaps.seek_for(partition, expected) {
                            Some(from) => {
                                tracing::warn!(what, partition, expected, got = offset, from, "offset gap: fetching the skipped messages again");
                                progress.rewind(partition, offset, expected);
                                if let Err(e) = consumer.seek(msg.topic(), partition, Offset::Offset(from), Duration::from_secs(5)) {
                                    tracing::error!(error = %e, what, "seeking back over an offset gap failed");
                                }
                                continue;
                            }
                            None => tracing::error!(what, partition, expected, got = offset, "offset gap the broker cannot fill, even from the partition's start: those messages are lost"),
                        }
                    }
                    gaps.reached(partition, offset);
                    let mut h = std::collections::hash_map::DefaultHasher::new();
                    msg.key().hash(&mut h);
                    let worker = &workers[(h.finish() as usize) % WORKERS];
                    if worker.send(msg).await.is_err() {
                        return; // workers stop only when stopping
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, what, "kafka receive failed");
                    // librdkafka goes on fetching after the errors it
                    // reports, so a lone one is not waited on (the pause
                    // held every partition of this consumer); a run of
                    // them, a broker gone, is, so failures do not spin.
                    failures_in_a_row += 1;
                    if failures_in_a_row > 1 {
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                }
            },
        }
    }
}

/// Stores the offsets done so far; on failure they stay for the next try.
async fn store_offsets(offsets: &Offsets, unstored: &mut BTreeMap<i32, i64>) {
    match offsets.store(unstored).await {
        Ok(()) => unstored.clear(),
        Err(e) => tracing::warn!(error = %e, what = offsets.consumer, "storing offsets failed; retrying"),
    }
}

async fn work<T, F, Fut>(
    mut rx: mpsc::Receiver<OwnedMessage>,
    done: mpsc::UnboundedSender<(i32, i64)>,
    offsets: Offsets,
    metrics: std::sync::Arc<Metrics>,
    stop: watch::Receiver<bool>,
    handle: F,
) where
    T: DeserializeOwned,
    F: Fn(T, Receipt) -> Fut,
    Fut: Future<Output = anyhow::Result<Ack>>,
{
    let what = offsets.consumer;
    'messages: while let Some(msg) = rx.recv().await {
        let receipt = Receipt {
            partition: msg.partition(),
            offset: msg.offset(),
            done: done.clone(),
        };
        match msg.payload().map(serde_json::from_slice::<T>) {
            Some(Ok(_)) => {
                // Decoded afresh for each attempt: handlers take events by value.
                let mut attempt = 0u32;
                while let Some(Ok(event)) = msg.payload().map(serde_json::from_slice::<T>) {
                    match handle(event, receipt.clone()).await {
                        Ok(Ack::Now) => break,
                        Ok(Ack::Later) => continue 'messages,
                        Err(err) => {
                            attempt += 1;
                            if attempt >= MAX_EVENT_ATTEMPTS {
                                tracing::error!(
                                    error = format!("{err:#}"),
                                    attempt,
                                    what,
                                    "event failed every attempt; dead-lettering it"
                                );
                                if !dead_letter(&offsets, &msg, &format!("{err:#}"), attempt, &stop).await {
                                    return; // stopping before it was stored: redelivered after restart
                                }
                                metrics.event(what, "dead_lettered");
                                break;
                            }
                            tracing::warn!(
                                error = format!("{err:#}"),
                                attempt,
                                what,
                                "handling an event failed; retrying"
                            );
                            if *stop.borrow() {
                                return; // not marked done: redelivered after restart
                            }
                            let delay =
                                txlab_tx::retry::Backoff::UNTIL_DONE.delay(attempt, &mut rand::thread_rng());
                            tokio::time::sleep(delay).await;
                        }
                    }
                }
            }
            Some(Err(e)) => {
                metrics.event(what, "unreadable");
                tracing::error!(error = %e, offset = msg.offset(), what, "unreadable event skipped");
            }
            None => tracing::warn!(offset = msg.offset(), what, "empty event skipped"),
        }
        receipt.done();
    }
}

/// Stores a poison message in `dead_letters` and on the dead-letter topic
/// (one transaction), retrying until that works or the service stops;
/// returns whether it was stored.
async fn dead_letter(
    offsets: &Offsets,
    msg: &OwnedMessage,
    error: &str,
    attempts: u32,
    stop: &watch::Receiver<bool>,
) -> bool {
    let key = msg.key().map(|k| String::from_utf8_lossy(k).into_owned());
    let event: serde_json::Value = msg
        .payload()
        .and_then(|p| serde_json::from_slice(p).ok())
        .unwrap_or_default();
    loop {
        match store_dead_letter(offsets, key.as_deref(), &event, error, attempts).await {
            Ok(()) => return true,
            Err(e) if !*stop.borrow() => {
                tracing::warn!(error = %e, "storing a dead letter failed; retrying");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(_) => return false,
        }
    }
}

async fn store_dead_letter(
    offsets: &Offsets,
    key: Option<&str>,
    event: &serde_json::Value,
    error: &str,
    attempts: u32,
) -> sqlx::Result<()> {
    let letter = serde_json::json!({ "consumer": offsets.consumer, "topic": offsets.topic, "error": error, "event": event });
    let mut tx = offsets.pool.begin().await?;
    sqlx::query("INSERT INTO dead_letters (consumer, topic, key, event, error, attempts, at_ms) VALUES ($1, $2, $3, $4, $5, $6, $7)")
        .bind(offsets.consumer)
        .bind(offsets.topic)
        .bind(key)
        .bind(event)
        .bind(error)
        .bind(attempts as i32)
        .bind(txlab_tx::now_ms())
        .execute(&mut *tx)
        .await?;
    // Rare, and written where the relay may be another process's: a NOTIFY
    // wakes it, and it reads the row from the table.
    let _read_by_the_relay = crate::messaging::outbox::enqueue(
        &mut tx,
        &crate::messaging::outbox::RelayWake::Notify,
        &[txlab_api::event::DEAD_LETTER_TOPIC],
        key.unwrap_or(""),
        &letter,
    )
    .await?;
    tx.commit().await
}

#[cfg(test)]
mod tests {
    use super::GapSeeks;

    #[test]
    fn gap_seeks_go_twice_as_far_back_each_time_then_give_up() {
        let mut g = GapSeeks::default();
        assert_eq!(
            (
                g.seek_for(0, 5),
                g.seek_for(0, 5),
                g.seek_for(0, 5),
                g.seek_for(0, 5)
            ),
            (Some(4), Some(3), Some(1), Some(0))
        );
        assert_eq!(g.seek_for(0, 5), None, "from the start it still skipped: lost");
        assert_eq!(g.seek_for(1, 9), Some(8), "partitions apart");
        g.reached(1, 9);
        assert_eq!(g.seek_for(1, 20), Some(19), "a new gap starts close again");
    }
}
