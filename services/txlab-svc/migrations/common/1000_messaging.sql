-- Messaging tables every service has, whatever its role or method
-- (versions from 1000 so they never collide with a role's own migrations).

-- Transactional outbox: events written in the same transaction as the
-- business change; a relay publishes them (txlab_tx::outbox).
CREATE TABLE outbox (
    id           BIGSERIAL PRIMARY KEY,
    topic        TEXT   NOT NULL,
    key          TEXT   NOT NULL,
    payload      JSONB  NOT NULL,
    created_ms   BIGINT NOT NULL,
    published_ms BIGINT
);
CREATE INDEX outbox_unpublished ON outbox (id) WHERE published_ms IS NULL;

-- Inbox: consumed message ids, stored in the same transaction as their
-- effect, so a redelivered message takes no effect (txlab_tx::inbox).
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
