-- Which order-service replica drives each order's transaction (saga_orch,
-- twopc, tcc). A replica takes a key from the sequence at start and holds
-- the advisory lock (ORDER_DRIVERS, key) for its life; an open order whose
-- driver's lock is gone belongs to nobody alive and is taken over.
CREATE SEQUENCE order_driver_keys AS INT;
ALTER TABLE orders ADD COLUMN driver INT;
