-- Keel's event log (DESIGN 2.1-2.2). The log is also the outbox.

-- One row per database cluster the log has lived in. Restoring a dump into another
-- cluster starts a new epoch, because the new cluster's transaction ids start lower
-- than the ones stored; subscription order is (epoch, transaction_id, position).
CREATE TABLE keel_epochs (
    system_identifier TEXT PRIMARY KEY,
    epoch             BIGINT NOT NULL UNIQUE,
    registered_at     TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- The epoch of the cluster we are running in (NULL until registered at start-up).
CREATE FUNCTION keel_epoch() RETURNS BIGINT LANGUAGE sql STABLE AS $$
    SELECT epoch FROM keel_epochs
    WHERE system_identifier = (SELECT system_identifier::text FROM pg_control_system())
$$;

CREATE TABLE keel_events (
    position        BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    epoch           BIGINT NOT NULL,
    transaction_id  BIGINT NOT NULL,
    stream_id       TEXT NOT NULL,
    stream_version  BIGINT NOT NULL,
    event_id        TEXT NOT NULL,
    topic           TEXT NOT NULL,
    event_type      TEXT NOT NULL,
    source          TEXT NOT NULL,
    time            TIMESTAMPTZ NOT NULL,
    datacontenttype TEXT,
    dataschema      TEXT,
    data            BYTEA,
    extensions      JSON NOT NULL DEFAULT '{}'::json,
    CONSTRAINT keel_events_event_id_key UNIQUE (event_id),
    -- Optimistic concurrency: two writers of the same version cannot both commit.
    -- Its index also finds a stream's head (its last event and who wrote it).
    CONSTRAINT keel_events_stream_version_key UNIQUE (stream_id, stream_version)
);

-- Subscription order.
CREATE INDEX keel_events_order ON keel_events (epoch, transaction_id, position);
-- Reading from a time.
CREATE INDEX keel_events_time ON keel_events (time);

-- Checkpoints of relays, projections and log-bus consumer groups.
CREATE TABLE keel_checkpoints (
    name           TEXT PRIMARY KEY,
    epoch          BIGINT NOT NULL,
    transaction_id BIGINT NOT NULL,
    position       BIGINT NOT NULL,
    updated_at     TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- Events each consumer group has processed (effectively-once handlers).
CREATE TABLE keel_inbox (
    group_name   TEXT NOT NULL,
    event_id     TEXT NOT NULL,
    processed_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (group_name, event_id)
);
