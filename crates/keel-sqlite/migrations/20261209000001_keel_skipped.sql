-- Events a subscriber (a projection) could not read and skipped by its policy, with
-- the reason: `keel status` counts them; nothing unreadable is dropped silently. A
-- rebuild of the subscriber clears its rows and records again what it skips.
CREATE TABLE keel_skipped (
    subscriber  TEXT NOT NULL,
    event_id    TEXT NOT NULL,
    position    INTEGER NOT NULL,
    event_type  TEXT NOT NULL,
    reason      TEXT NOT NULL,
    skipped_at  TEXT NOT NULL,
    PRIMARY KEY (subscriber, event_id)
) WITHOUT ROWID;
