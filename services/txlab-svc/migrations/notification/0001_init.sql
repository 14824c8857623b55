-- The notification service: what was sent (each consumed event takes
-- effect once through the common inbox). No unique key on notifications: a
-- duplicate must stay visible to the audit rather than be hidden by an error.
CREATE TABLE notifications (
    id          BIGSERIAL PRIMARY KEY,
    order_id    UUID   NOT NULL,
    kind        TEXT   NOT NULL,
    received_ms BIGINT NOT NULL
);
CREATE INDEX notifications_order ON notifications (order_id);
