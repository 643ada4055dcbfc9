-- Aggregate snapshots (keel-aggregate): the latest one per stream, written in the same
-- transaction as the append that reached `version`. `snapshot_version` is the format of
-- `state` (the aggregate's SNAPSHOT_VERSION); a snapshot the code cannot read is
-- ignored and the state folded from the events.
CREATE TABLE keel_snapshots (
    stream_id        TEXT PRIMARY KEY,
    version          BIGINT NOT NULL,
    snapshot_version BIGINT NOT NULL,
    state            JSONB NOT NULL,
    taken_at         TIMESTAMPTZ NOT NULL DEFAULT now()
);
