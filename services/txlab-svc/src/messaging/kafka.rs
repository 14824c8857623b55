//! Kafka clients with the settings the lab relies on and records
//! (`txlab_api::event::PRODUCER_SETTINGS`).

use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::StreamConsumer;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::FutureProducer;

pub fn producer(brokers: &str) -> Result<FutureProducer, KafkaError> {
    let mut cfg = ClientConfig::new();
    cfg.set("bootstrap.servers", brokers);
    for (k, v) in txlab_api::event::PRODUCER_SETTINGS {
        cfg.set(k, v);
    }
    cfg.create()
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
        // The default 500 ms makes every hop of an event chain wait for the
        // broker's long-poll to expire when traffic is light.
        .set("fetch.wait.max.ms", "10")
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
