-- The two-phase coordinator's log (2PC and TCC): one vote and one phase-two
-- state per participant, and one decision per transaction. Inserting the
-- decision is the commit point; its primary key makes a presumed abort and
-- a commit decision mutually exclusive.
CREATE TABLE tx_branches (
    order_id   UUID   NOT NULL REFERENCES orders (id) ON DELETE CASCADE,
    step       INT    NOT NULL,
    name       TEXT   NOT NULL,
    vote       TEXT   NOT NULL,
    phase2     TEXT   NOT NULL,
    attempts   INT    NOT NULL DEFAULT 0,
    reason     TEXT,
    updated_ms BIGINT NOT NULL,
    PRIMARY KEY (order_id, step)
);

CREATE TABLE tx_decisions (
    order_id   UUID   PRIMARY KEY,
    decision   TEXT   NOT NULL,
    presumed   BOOLEAN NOT NULL DEFAULT false,
    decided_ms BIGINT NOT NULL
);
