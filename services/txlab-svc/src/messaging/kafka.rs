//! Kafka clients with the settings the lab relies on and records
//! (`txlab_api::event::PRODUCER_SETTINGS`).

use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::StreamConsumer;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{FutureProducer, Producer};

pub fn producer(brokers: &str) -> Result<FutureProducer, KafkaError> {
    let mut cfg = ClientConfig::new();
    cfg.set("bootstrap.servers", brokers);
    for (k, v) in txlab_api::event::PRODUCER_SETTINGS {
        cfg.set(k, v);
    }
    cfg.create()
}

/// A producer that has connected and knows where `topics` live. A fresh
/// producer does both on its first send, so the first events of a run
/// would wait for them (with tansu, the first relay batch took 0.8 s)
/// and the backlog would spill into the measured load.
pub async fn ready_producer(brokers: &str, topics: &[&str]) -> anyhow::Result<FutureProducer> {
    use anyhow::Context;
    let started = std::time::Instant::now();
    let producer = producer(brokers).context("creating the Kafka producer")?;
    for topic in topics {
        let client = producer.clone();
        let topic = topic.to_string();
        tokio::task::spawn_blocking(move || {
            let deadline = std::time::Instant::now() + Duration::from_secs(10);
            loop {
                let known = client
                    .client()
                    .fetch_metadata(Some(&topic), Duration::from_secs(2))
                    .map(|m| {
                        m.topics().iter().any(|t| {
                            t.error().is_none()
                                && !t.partitions().is_empty()
                                && t.partitions()
                                    .iter()
                                    .all(|p| p.error().is_none() && p.leader() >= 0)
                        })
                    });
                match known {
                    Ok(true) => return Ok(()),
                    _ if std::time::Instant::now() < deadline => {
                        std::thread::sleep(Duration::from_millis(50))
                    }
                    Ok(false) => anyhow::bail!("topic {topic} has no leader for every partition"),
                    Err(e) => {
                        return Err(e).with_context(|| format!("reading the metadata of topic {topic}"))
                    }
                }
            }
        })
        .await??;
    }
    tracing::info!(ms = started.elapsed().as_millis() as u64, "Kafka producer ready");
    Ok(producer)
}

/// A consumer for explicit partition assignment: the caller keeps the
/// offsets (in its own database) and commits nothing to the broker. The
/// group id only names the client; no group is joined.
pub fn consumer(brokers: &str, group: &str) -> Result<StreamConsumer, KafkaError> {
    ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        // Kafka's default. The broker answers a waiting fetch as soon as a
        // record arrives (tansu does with txlab's patch), so this bounds
        // only how often an idle consumer asks again: at 10 ms, the idle lab's
        // consumers and broker spent 0.2 of a core on empty fetches.
        .set("fetch.wait.max.ms", "500")
        .create()
}

/// Creates `topic` unless it exists.
pub async fn ensure_topic(brokers: &str, topic: &str, partitions: i32) -> Result<(), KafkaError> {
    let admin: AdminClient<DefaultClientContext> =
        ClientConfig::new().set("bootstrap.servers", brokers).create()?;
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    let results = admin
        .create_topics(
            &[NewTopic::new(topic, partitions, TopicReplication::Fixed(1))],
            &opts,
        )
        .await?;
    for r in results {
        match r {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((name, code)) => {
                return Err(KafkaError::AdminOp(code))
                    .inspect_err(|_| tracing::warn!(topic = %name, "topic creation failed"));
            }
        }
    }
    Ok(())
}
