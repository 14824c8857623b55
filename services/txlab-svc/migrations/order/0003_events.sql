-- For the event-driven methods: the order service consumes participants'
-- checkout events, deduplicated in the same transaction as their effect.
CREATE TABLE inbox (
    message_id  TEXT PRIMARY KEY,
    received_ms BIGINT NOT NULL
);
