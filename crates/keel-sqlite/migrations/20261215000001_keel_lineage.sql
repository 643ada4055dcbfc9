-- Causal lineage (`keel why`, the console): find what an event caused and what one
-- request caused without scanning the log.
CREATE INDEX keel_events_causation ON keel_events (json_extract(extensions, '$.causationid'))
    WHERE json_extract(extensions, '$.causationid') IS NOT NULL;
CREATE INDEX keel_events_correlation ON keel_events (json_extract(extensions, '$.correlationid'))
    WHERE json_extract(extensions, '$.correlationid') IS NOT NULL;
