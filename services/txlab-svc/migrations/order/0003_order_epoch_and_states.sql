-- The lab epoch an order was born in: sent with every call to a
-- participant, which refuses calls of another epoch (a reset fences off the
-- work of the cell before it).
ALTER TABLE orders ADD COLUMN epoch TEXT NOT NULL DEFAULT '';
-- Only the states the service knows (txlab_api::order::OrderState).
ALTER TABLE orders ADD CONSTRAINT orders_state_known
    CHECK (state IN ('pending', 'compensating', 'confirmed', 'rejected', 'cancelled', 'needs_attention'));
