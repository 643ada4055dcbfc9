-- The `streams` projection: one row per stream, built from the log.
CREATE TABLE keel_stream_index (
    stream_id     TEXT PRIMARY KEY,
    category      TEXT NOT NULL,
    version       BIGINT NOT NULL,
    last_type     TEXT NOT NULL,
    last_position BIGINT NOT NULL,
    updated_at    TIMESTAMPTZ NOT NULL
);
CREATE INDEX keel_stream_index_category ON keel_stream_index (category, stream_id);
