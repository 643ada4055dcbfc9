-- Blue/green rebuilds of projections in progress: one row per projection whose new
-- generation (its tables `<table>__keel_next`, its checkpoint
-- `projection-rebuild:<name>`) is being built beside the live one. `state` is
-- `building` while the rebuild replays the log, `ready` once it caught up and asks the
-- projection's live runner (or whoever holds the projection's lease) to switch. The
-- switch deletes the row in the same transaction; a discarded rebuild deletes it too.
CREATE TABLE keel_rebuilds (
    projection  TEXT PRIMARY KEY NOT NULL,
    state       TEXT NOT NULL,
    started_at  TEXT NOT NULL
) WITHOUT ROWID;
