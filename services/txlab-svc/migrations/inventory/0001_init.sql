-- The inventory service: its business table and one record per order it served.
CREATE TABLE stock (sku TEXT PRIMARY KEY, available BIGINT NOT NULL CHECK (available >= 0), reserved BIGINT NOT NULL DEFAULT 0 CHECK (reserved >= 0));

-- One record per order and the state of this participant's part in it.
-- The record is written in the same transaction as the business change, so
-- a repeated call finds it (idempotency), a compensation that arrives first
-- leaves a 'voided' record (null compensation) and a late forward call then
-- finds that record and is refused (no hanging effect).
CREATE TABLE reservations (
    order_id   UUID   PRIMARY KEY,
    state      TEXT   NOT NULL,
    reason     TEXT,
    request    JSONB  NOT NULL,
    -- Business changes made for this order (applies + undoes); the audit
    -- compares it with what the state implies.
    movements  INT    NOT NULL DEFAULT 0,
    updated_ms BIGINT NOT NULL
);
