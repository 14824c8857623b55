//! Consuming Kafka with effects that happen once: a handler stores its
//! effect (with an inbox row) before the offset is committed, a failing
//! handler is retried with backoff, and an unreadable message is skipped
//! visibly rather than blocking its partition.
//!
//! Messages are handled concurrently across keys but in order within a key
//! (one worker per key hash), so one slow order does not hold up the rest
//! of its partition. An offset is committed only once every message before
//! it in its partition is done, so a crash redelivers anything unfinished.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::hash::{Hash, Hasher};
use std::time::Duration;

use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::message::OwnedMessage;
use rdkafka::{Message, Offset, TopicPartitionList};
use serde::de::DeserializeOwned;
use sqlx::PgPool;
use tokio::sync::{mpsc, watch};

use crate::http::Metrics;

/// Workers per consumer: orders handled at once.
const WORKERS: usize = 16;

/// Which offsets of each partition are still being handled.
#[derive(Debug, Default)]
struct Progress {
    in_flight: BTreeMap<i32, BTreeSet<i64>>,
    next: BTreeMap<i32, i64>,
    committed: BTreeMap<i32, i64>,
}

impl Progress {
    fn started(&mut self, partition: i32, offset: i64) {
        self.in_flight.entry(partition).or_default().insert(offset);
        let next = self.next.entry(partition).or_insert(offset + 1);
        *next = (*next).max(offset + 1);
    }

    /// Marks `offset` done; returns the offset to commit for its partition
    /// if it moved: the lowest one still in flight, or past the last seen.
    fn finished(&mut self, partition: i32, offset: i64) -> Option<i64> {
        let in_flight = self.in_flight.entry(partition).or_default();
        in_flight.remove(&offset);
        let commit = in_flight.first().copied().unwrap_or_else(|| self.next.get(&partition).copied().unwrap_or(offset + 1));
        let last = self.committed.entry(partition).or_insert(-1);
        (commit > *last).then(|| {
            *last = commit;
            commit
        })
    }
}

/// Hands every decoded message to `handle` until `stop` is raised.
pub async fn consume<T, F, Fut>(consumer: StreamConsumer, what: &'static str, metrics: std::sync::Arc<Metrics>, stop: watch::Receiver<bool>, handle: F)
where
    T: DeserializeOwned + Send + 'static,
    F: Fn(T) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = anyhow::Result<()>> + Send + 'static,
{
    let (done_tx, mut done_rx) = mpsc::unbounded_channel::<(i32, i64)>();
    let workers: Vec<mpsc::Sender<OwnedMessage>> = (0..WORKERS)
        .map(|_| {
            let (tx, rx) = mpsc::channel::<OwnedMessage>(64);
            tokio::spawn(work(rx, done_tx.clone(), what, metrics.clone(), stop.clone(), handle.clone()));
            tx
        })
        .collect();
    let topic = consumer.subscription().ok().and_then(|t| t.elements().first().map(|e| e.topic().to_string()));
    let mut progress = Progress::default();
    let stopped = crate::stopped(stop);
    tokio::pin!(stopped);
    loop {
        tokio::select! {
            _ = &mut stopped => return,
            Some((partition, offset)) = done_rx.recv() => {
                if let (Some(commit), Some(topic)) = (progress.finished(partition, offset), topic.as_deref()) {
                    let mut tpl = TopicPartitionList::new();
                    if tpl.add_partition_offset(topic, partition, Offset::Offset(commit)).is_ok() {
                        if let Err(e) = consumer.commit(&tpl, CommitMode::Async) {
                            tracing::warn!(error = %e, what, "offset commit failed; events may be redelivered");
                        }
                    }
                }
            }
            m = consumer.recv() => match m {
                Ok(msg) => {
                    let msg = msg.detach();
                    progress.started(msg.partition(), msg.offset());
                    let mut h = std::collections::hash_map::DefaultHasher::new();
                    msg.key().hash(&mut h);
                    let worker = &workers[(h.finish() as usize) % WORKERS];
                    if worker.send(msg).await.is_err() {
                        return; // workers stop only when stopping
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, what, "kafka receive failed");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            },
        }
    }
}

async fn work<T, F, Fut>(
    mut rx: mpsc::Receiver<OwnedMessage>,
    done: mpsc::UnboundedSender<(i32, i64)>,
    what: &'static str,
    metrics: std::sync::Arc<Metrics>,
    stop: watch::Receiver<bool>,
    handle: F,
) where
    T: DeserializeOwned,
    F: Fn(T) -> Fut,
    Fut: Future<Output = anyhow::Result<()>>,
{
    while let Some(msg) = rx.recv().await {
        match msg.payload().map(serde_json::from_slice::<T>) {
            Some(Ok(_)) => {
                // Decoded afresh for each attempt: handlers take events by value.
                let mut attempt = 0u32;
                while let Some(Ok(event)) = msg.payload().map(serde_json::from_slice::<T>) {
                    match handle(event).await {
                        Ok(()) => break,
                        Err(err) => {
                            attempt += 1;
                            tracing::warn!(error = format!("{err:#}"), attempt, what, "handling an event failed; retrying");
                            if *stop.borrow() {
                                return; // not marked done: redelivered after restart
                            }
                            let delay = txlab_tx::retry::Backoff::UNTIL_DONE.delay(attempt, &mut rand::thread_rng());
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
        let _ = done.send((msg.partition(), msg.offset()));
    }
}

/// Subscribes a new consumer of `group` to `topic`.
pub fn subscriber(brokers: &str, group: &str, topic: &str) -> anyhow::Result<StreamConsumer> {
    let consumer = txlab_tx::kafka::consumer(brokers, group)?;
    consumer.subscribe(&[topic])?;
    Ok(consumer)
}

/// Marks `key` (an event and a fault point) as fired, in its own committed
/// transaction; returns false if it fired before. A planned fault thus fires
/// once even when it crashes the process and the event is redelivered.
pub async fn first_firing(pool: &PgPool, key: &str) -> sqlx::Result<bool> {
    let inserted = sqlx::query("INSERT INTO fault_log (key, fired_ms) VALUES ($1, $2) ON CONFLICT DO NOTHING")
        .bind(key)
        .bind(txlab_tx::now_ms())
        .execute(pool)
        .await?
        .rows_affected();
    Ok(inserted == 1)
}

#[cfg(test)]
mod tests {
    use super::Progress;

    #[test]
    fn offsets_are_committed_only_past_finished_runs() {
        let mut p = Progress::default();
        for o in 10..14 {
            p.started(0, o);
        }
        // 11 and 12 finish first: 10 is still in flight, nothing may be committed past it.
        assert_eq!(p.finished(0, 11), Some(10));
        assert_eq!(p.finished(0, 12), None);
        // 10 finishes: everything up to 13 (still running) is safe.
        assert_eq!(p.finished(0, 10), Some(13));
        assert_eq!(p.finished(0, 13), Some(14));
        // Partitions are independent.
        p.started(1, 5);
        assert_eq!(p.finished(1, 5), Some(6));
    }
}
