CREATE TABLE IF NOT EXISTS users_users (
    id         TEXT PRIMARY KEY,
    name       TEXT NOT NULL,
    email      TEXT NOT NULL UNIQUE,
    created_at TEXT NOT NULL
);

-- Each user's orders: a read model fed by order events (consumer group users-orders).
CREATE TABLE IF NOT EXISTS users_orders (
    order_id   TEXT PRIMARY KEY,
    user_id    TEXT NOT NULL,
    status     TEXT NOT NULL,
    items      TEXT NOT NULL,
    reason     TEXT,
    placed_at  TEXT NOT NULL,
    updated_at TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS users_orders_by_user ON users_orders (user_id, order_id);

CREATE TABLE IF NOT EXISTS users_idempotency (
    key        TEXT PRIMARY KEY,
    request    TEXT NOT NULL,
    status     BIGINT NOT NULL,
    body       TEXT NOT NULL,
    created_at TEXT NOT NULL
);
