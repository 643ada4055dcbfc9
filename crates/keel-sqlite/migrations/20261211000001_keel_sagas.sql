-- Saga (process manager) state (crate keel-saga): one row per saga instance, keyed by
-- the saga's name and its correlation id, written in the inbox transaction of the
-- input event that changed it, together with the saga's appended events, its timers
-- and the inbox mark. `state` is the saga's JSON; `version` counts the changes, and a
-- write expects the version it read (two inputs of one saga at once: one retries).
-- Times are microseconds since the Unix epoch (UTC).
CREATE TABLE keel_sagas (
    saga           TEXT NOT NULL,
    correlation_id TEXT NOT NULL,
    state          TEXT NOT NULL,
    version        INTEGER NOT NULL,
    finished       INTEGER NOT NULL DEFAULT 0,
    updated_at     INTEGER NOT NULL,
    PRIMARY KEY (saga, correlation_id)
) WITHOUT ROWID;
