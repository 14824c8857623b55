-- For the event-driven methods (saga_chor, outbox): outgoing events are
-- written with the business change (outbox), incoming ones deduplicated in
-- the same transaction as their effect (inbox).
CREATE TABLE outbox (
    id           BIGSERIAL PRIMARY KEY,
    topic        TEXT   NOT NULL,
    key          TEXT   NOT NULL,
    payload      JSONB  NOT NULL,
    created_ms   BIGINT NOT NULL,
    published_ms BIGINT
);
CREATE INDEX outbox_unpublished ON outbox (id) WHERE published_ms IS NULL;

CREATE TABLE inbox (
    message_id  TEXT PRIMARY KEY,
    received_ms BIGINT NOT NULL
);

-- Faults planned for an event fire once: the mark is committed before the
-- fault fires, so a crash does not repeat on the redelivered event.
CREATE TABLE fault_log (
    key      TEXT PRIMARY KEY,
    fired_ms BIGINT NOT NULL
);
