-- Dead letters of the log bus (keel-logbus): one row per dead-lettered message of a
-- consumer group. A retried letter stays here (retrying = 1) until its group settles
-- it again, so a crash in between loses nothing.
CREATE TABLE keel_bus_dead_letters (
    id               TEXT PRIMARY KEY,
    topic            TEXT NOT NULL,
    group_name       TEXT NOT NULL,
    reason           TEXT NOT NULL,
    attempts         INTEGER NOT NULL,
    dead_lettered_at TEXT NOT NULL,
    -- The event in CloudEvents structured mode (JSON), when it decoded.
    event            BLOB,
    -- Otherwise the raw message: headers (JSON array of [name, value]), body, why.
    raw_headers      TEXT,
    content_type     TEXT,
    body             BLOB,
    error            TEXT,
    retrying         INTEGER NOT NULL DEFAULT 0
) WITHOUT ROWID;

CREATE INDEX keel_bus_dead_letters_group ON keel_bus_dead_letters (topic, group_name, retrying, id);
