-- Durable timers and delayed messages (crate keel-timers): one row per pending timer,
-- written in the scheduling transaction. Its dispatcher appends `event` to
-- `stream_id` and deletes the row in one transaction once `due_at` has passed.
-- Times are microseconds since the Unix epoch (UTC). `id` changes whenever the timer
-- is (re)scheduled: the dispatcher deletes by id, so a replaced timer is never fired
-- in its old form, and two dispatchers never both fire one row. `failed` holds the
-- reason when the message could never be appended (the row is kept, not fired).
CREATE TABLE keel_timers (
    dispatcher   TEXT NOT NULL,
    timer_key    TEXT NOT NULL,
    id           TEXT NOT NULL UNIQUE,
    due_at       INTEGER NOT NULL,
    stream_id    TEXT NOT NULL,
    event        TEXT NOT NULL,
    scheduled_at INTEGER NOT NULL,
    failed       TEXT,
    PRIMARY KEY (dispatcher, timer_key)
) WITHOUT ROWID;

CREATE INDEX keel_timers_due ON keel_timers (dispatcher, due_at) WHERE failed IS NULL;
