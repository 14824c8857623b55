-- The lab's current cell, set by every reset. Events carry the epoch they
-- were born in; a handler drops an event from an earlier epoch, so work
-- still in flight when one cell ends cannot leak into the next.
CREATE TABLE lab_epoch (
    id    INT  PRIMARY KEY DEFAULT 1 CHECK (id = 1),
    epoch TEXT NOT NULL
);
INSERT INTO lab_epoch (id, epoch) VALUES (1, '');
