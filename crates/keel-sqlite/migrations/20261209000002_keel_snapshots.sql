-- Aggregate snapshots (keel-aggregate): the latest one per stream, written in the same
-- transaction as the append that reached `version`. `snapshot_version` is the format of
-- `state` (the aggregate's SNAPSHOT_VERSION); a snapshot the code cannot read is
-- ignored and the state folded from the events.
CREATE TABLE keel_snapshots (
    stream_id        TEXT PRIMARY KEY,
    version          INTEGER NOT NULL,
    snapshot_version INTEGER NOT NULL,
    state            TEXT NOT NULL,
    taken_at         TEXT NOT NULL DEFAULT CURRENT_TIMESTAMP
) WITHOUT ROWID;
