-- Dead letters of the log bus (keel-logbus): one row per dead-lettered message of a
-- consumer group. A retried letter stays here (retrying = true) until its group
-- settles it again, so a crash in between loses nothing.
CREATE TABLE keel_bus_dead_letters (
    id               TEXT PRIMARY KEY,
    topic            TEXT NOT NULL,
    group_name       TEXT NOT NULL,
    reason           TEXT NOT NULL,
    attempts         BIGINT NOT NULL,
    dead_lettered_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    -- The event in CloudEvents structured mode (JSON), when it decoded.
    event            BYTEA,
    -- Otherwise the raw message: headers (JSON array of [name, value]), body, why.
    raw_headers      TEXT,
    content_type     TEXT,
    body             BYTEA,
    error            TEXT,
    retrying         BOOLEAN NOT NULL DEFAULT false
);

CREATE INDEX keel_bus_dead_letters_group ON keel_bus_dead_letters (topic, group_name, retrying, id);
