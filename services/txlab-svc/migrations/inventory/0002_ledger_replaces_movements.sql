-- Movements are counted from the ledger now, not from a counter written in
-- the same UPDATE as the state it was meant to check.
ALTER TABLE reservations DROP COLUMN movements;
-- Only the record states of txlab_api::participant::RecordState.
ALTER TABLE reservations ADD CONSTRAINT reservations_state_known CHECK (state IN
    ('tried', 'captured', 'reserved', 'booked', 'refunded', 'released', 'cancelled', 'aborted', 'rejected', 'voided'));
