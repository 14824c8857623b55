-- When each record of the engines' logs was made (ms since the Unix epoch),
-- for the per-order workflow view: set by the statements that record the
-- marks, so they cost no write of their own.
ALTER TABLE saga_steps
    ADD COLUMN forward_started_ms BIGINT,
    ADD COLUMN forward_ended_ms BIGINT,
    ADD COLUMN compensation_started_ms BIGINT,
    ADD COLUMN compensation_ended_ms BIGINT;
ALTER TABLE tx_branches
    ADD COLUMN asked_ms BIGINT,
    ADD COLUMN voted_ms BIGINT,
    ADD COLUMN phase2_started_ms BIGINT,
    ADD COLUMN phase2_ended_ms BIGINT;
