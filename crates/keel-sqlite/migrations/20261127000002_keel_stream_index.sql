-- The `streams` projection: one row per stream, built from the log.
CREATE TABLE keel_stream_index (
    stream_id     TEXT PRIMARY KEY,
    category      TEXT NOT NULL,
    version       INTEGER NOT NULL,
    last_type     TEXT NOT NULL,
    last_position INTEGER NOT NULL,
    updated_at    TEXT NOT NULL
) WITHOUT ROWID;
CREATE INDEX keel_stream_index_category ON keel_stream_index (category, stream_id);
