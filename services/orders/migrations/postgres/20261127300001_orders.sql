-- Orders are event-sourced (streams order-<id> in the event log); the service's only
-- table holds the answers to idempotency keys.
CREATE TABLE IF NOT EXISTS orders_idempotency (
    key        TEXT PRIMARY KEY,
    request    TEXT NOT NULL,
    status     BIGINT NOT NULL,
    body       TEXT NOT NULL,
    created_at TEXT NOT NULL
);
