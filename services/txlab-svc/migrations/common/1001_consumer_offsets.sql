-- Where each consumer of this service resumes, per partition. Offsets live
-- here rather than in a Kafka consumer group: a crashed consumer resumes at
-- once on restart (no group session has to expire first), and the inbox
-- makes any message handled again after a crash a no-op.
CREATE TABLE consumer_offsets (
    consumer    TEXT   NOT NULL,
    topic       TEXT   NOT NULL,
    partition   INT    NOT NULL,
    next_offset BIGINT NOT NULL,
    PRIMARY KEY (consumer, topic, partition)
);
