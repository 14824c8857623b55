-- What really moved, for the audit. Participants append one row per item
-- for each business change (hold, capture, release, restore) in the same
-- transaction as the change; the audit counts these rows instead of trusting
-- a counter kept beside the state. Rows are never updated nor deleted (the
-- lab's reset truncates the table between cells, which row triggers allow).
CREATE TABLE ledger (
    id       BIGSERIAL PRIMARY KEY,
    order_id UUID   NOT NULL,
    op       TEXT   NOT NULL CHECK (op IN ('hold', 'capture', 'release', 'restore')),
    -- The customer, SKU or courier slot the change moved.
    item     TEXT   NOT NULL,
    qty      BIGINT NOT NULL CHECK (qty >= 0),
    at_ms    BIGINT NOT NULL
);
CREATE INDEX ledger_order ON ledger (order_id);

CREATE FUNCTION ledger_is_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'the ledger is append-only';
END
$$;
CREATE TRIGGER ledger_is_append_only BEFORE UPDATE OR DELETE ON ledger
    FOR EACH ROW EXECUTE FUNCTION ledger_is_append_only();

-- Events a consumer gave up on after its attempts ran out: kept here (and
-- published to the dead-letter topic) so the partition moves on and the
-- audit can name the orders whose effect never happened.
CREATE TABLE dead_letters (
    id       BIGSERIAL PRIMARY KEY,
    consumer TEXT   NOT NULL,
    topic    TEXT   NOT NULL,
    key      TEXT,
    event    JSONB  NOT NULL,
    error    TEXT   NOT NULL,
    attempts INT    NOT NULL,
    at_ms    BIGINT NOT NULL
);
