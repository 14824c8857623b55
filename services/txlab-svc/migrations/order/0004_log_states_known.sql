-- The engines' logs take only the values of their state machines
-- (txlab_tx::saga::{Forward, Compensation}, txlab_tx::two_phase::{Vote,
-- Phase2, Decision}, txlab_api::{Step, TxMode}); a unit test checks these
-- lists against the Rust enums.
ALTER TABLE saga_steps ADD CONSTRAINT saga_steps_forward_known
    CHECK (forward IN ('not_started', 'started', 'done', 'rejected', 'unknown'));
ALTER TABLE saga_steps ADD CONSTRAINT saga_steps_compensation_known
    CHECK (compensation IN ('not_started', 'started', 'done'));
ALTER TABLE saga_steps ADD CONSTRAINT saga_steps_name_known
    CHECK (name IN ('payment', 'inventory', 'shipping'));
ALTER TABLE tx_branches ADD CONSTRAINT tx_branches_vote_known
    CHECK (vote IN ('not_asked', 'asked', 'yes', 'no', 'unknown'));
ALTER TABLE tx_branches ADD CONSTRAINT tx_branches_phase2_known
    CHECK (phase2 IN ('pending', 'started', 'done'));
ALTER TABLE tx_branches ADD CONSTRAINT tx_branches_name_known
    CHECK (name IN ('payment', 'inventory', 'shipping'));
ALTER TABLE tx_decisions ADD CONSTRAINT tx_decisions_decision_known
    CHECK (decision IN ('commit', 'abort'));
ALTER TABLE orders ADD CONSTRAINT orders_method_known
    CHECK (method IN ('twopc', 'tcc', 'outbox', 'saga_chor', 'saga_orch'));
