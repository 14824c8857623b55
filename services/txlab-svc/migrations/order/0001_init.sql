-- The order service: orders, the saga log and idempotency keys.
CREATE TABLE orders (
    id               UUID PRIMARY KEY,
    customer         TEXT    NOT NULL,
    items            JSONB   NOT NULL,
    amount           BIGINT  NOT NULL,
    slot             TEXT    NOT NULL,
    method           TEXT    NOT NULL,
    state            TEXT    NOT NULL,
    reason           TEXT,
    -- The X-Txlab-Fault header of the request, forwarded on every step,
    -- including steps resumed after a restart.
    fault            TEXT,
    cancel_requested BOOLEAN NOT NULL DEFAULT false,
    created_ms       BIGINT  NOT NULL,
    decided_ms       BIGINT,
    updated_ms       BIGINT  NOT NULL
);
CREATE INDEX orders_open ON orders (state) WHERE state IN ('pending', 'compensating');

-- One row per (saga, step): written before and after every call.
CREATE TABLE saga_steps (
    order_id     UUID    NOT NULL REFERENCES orders (id) ON DELETE CASCADE,
    step         INT     NOT NULL,
    name         TEXT    NOT NULL,
    forward      TEXT    NOT NULL,
    compensation TEXT    NOT NULL,
    attempts     INT     NOT NULL DEFAULT 0,
    reason       TEXT,
    updated_ms   BIGINT  NOT NULL,
    PRIMARY KEY (order_id, step)
);

CREATE TABLE idempotency_keys (
    key        TEXT PRIMARY KEY,
    request    JSONB  NOT NULL,
    order_id   UUID   NOT NULL,
    created_ms BIGINT NOT NULL
);
