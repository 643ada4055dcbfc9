-- Keel's event log on SQLite (DESIGN 2.1). SQLite commits one writer at a time, so
-- position order is commit order and subscriptions read "position > checkpoint".

CREATE TABLE keel_streams (
    stream_id TEXT PRIMARY KEY,
    version   INTEGER NOT NULL
) WITHOUT ROWID;

CREATE TABLE keel_events (
    position        INTEGER PRIMARY KEY AUTOINCREMENT,
    stream_id       TEXT NOT NULL,
    stream_version  INTEGER NOT NULL,
    event_id        TEXT NOT NULL UNIQUE,
    topic           TEXT NOT NULL,
    event_type      TEXT NOT NULL,
    source          TEXT NOT NULL,
    time            TEXT NOT NULL,
    time_micros     INTEGER NOT NULL,
    datacontenttype TEXT,
    dataschema      TEXT,
    data            BLOB,
    extensions      TEXT NOT NULL DEFAULT '{}',
    UNIQUE (stream_id, stream_version)
);

CREATE INDEX keel_events_time ON keel_events (time_micros);

CREATE TABLE keel_checkpoints (
    name       TEXT PRIMARY KEY,
    position   INTEGER NOT NULL,
    updated_at TEXT NOT NULL
) WITHOUT ROWID;

CREATE TABLE keel_inbox (
    group_name   TEXT NOT NULL,
    event_id     TEXT NOT NULL,
    processed_at TEXT NOT NULL,
    PRIMARY KEY (group_name, event_id)
) WITHOUT ROWID;

-- Leases (one active relay or projection runner per name across processes).
CREATE TABLE keel_leases (
    name       TEXT PRIMARY KEY,
    owner      TEXT NOT NULL,
    expires_at INTEGER NOT NULL
) WITHOUT ROWID;
