-- Delivery attempts of the log bus (keel-logbus) that survive a crash, so a message
-- that kills its consumer's process is dead-lettered after the consumer's
-- max_attempts instead of coming back at attempt 1 for ever. Neither table is written
-- per first delivery.

-- How far (by position) the process feeding a consumer group (named as its
-- checkpoint, bus:<topic>:<group>) has read. It is stored with the checkpoint before
-- what was read can be handed out, and cleared when the group stops cleanly: after a
-- crash, every event between the checkpoint and the mark may have been delivered once.
CREATE TABLE keel_bus_read_marks (
    name     TEXT PRIMARY KEY,
    position INTEGER NOT NULL
) WITHOUT ROWID;

-- The highest attempt at which an event may have been handed out to the group: stored
-- before each redelivery (attempt 2 on) and at a clean stop; deleted with the
-- checkpoint's move past the event.
CREATE TABLE keel_bus_attempts (
    name     TEXT NOT NULL,
    position INTEGER NOT NULL,
    attempts INTEGER NOT NULL,
    PRIMARY KEY (name, position)
) WITHOUT ROWID;
