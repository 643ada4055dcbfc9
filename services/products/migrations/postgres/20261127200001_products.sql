CREATE TABLE IF NOT EXISTS products_products (
    id          TEXT PRIMARY KEY,
    name        TEXT NOT NULL,
    price_cents BIGINT NOT NULL CHECK (price_cents > 0),
    -- Stock is never negative, whatever the concurrency (belt and braces: the
    -- reservation decrements only where enough is left).
    stock       BIGINT NOT NULL CHECK (stock >= 0),
    created_at  TEXT NOT NULL
);

-- What each order holds, so a cancelled order gives it back.
CREATE TABLE IF NOT EXISTS products_reservations (
    order_id   TEXT NOT NULL,
    product_id TEXT NOT NULL,
    quantity   BIGINT NOT NULL,
    PRIMARY KEY (order_id, product_id)
);

CREATE TABLE IF NOT EXISTS products_idempotency (
    key        TEXT PRIMARY KEY,
    request    TEXT NOT NULL,
    status     BIGINT NOT NULL,
    body       TEXT NOT NULL,
    created_at TEXT NOT NULL
);
