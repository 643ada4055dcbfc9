-- Causal lineage (`keel why`, the console): find what an event caused and what one
-- request caused without scanning the log.
CREATE INDEX keel_events_causation ON keel_events ((extensions ->> 'causationid'))
    WHERE extensions ->> 'causationid' IS NOT NULL;
CREATE INDEX keel_events_correlation ON keel_events ((extensions ->> 'correlationid'))
    WHERE extensions ->> 'correlationid' IS NOT NULL;
