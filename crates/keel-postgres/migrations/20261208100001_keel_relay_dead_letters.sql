-- Relay dead letters: events a relay could never publish (too large for the broker,
-- an invalid record), with the reason. The event stays in keel_events; the relay
-- stores its checkpoint past it only once this row is committed.
CREATE TABLE keel_relay_dead_letters (
    relay            TEXT NOT NULL,
    position         BIGINT NOT NULL,
    event_id         TEXT NOT NULL,
    topic            TEXT NOT NULL,
    event_type       TEXT NOT NULL,
    reason           TEXT NOT NULL,
    dead_lettered_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (relay, position)
);
