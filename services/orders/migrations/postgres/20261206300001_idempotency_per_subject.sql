-- Idempotency keys are scoped per subject and expire: the table is rebuilt with the
-- subject in the primary key and the creation time in Unix seconds (indexed for the
-- purge). Existing keys belonged to no verified subject: they keep an empty one.
CREATE TABLE orders_idempotency_next (
    subject    TEXT NOT NULL,
    key        TEXT NOT NULL,
    request    TEXT NOT NULL,
    status     BIGINT NOT NULL,
    body       TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (subject, key)
);
INSERT INTO orders_idempotency_next (subject, key, request, status, body, created_at)
    SELECT '', key, request, status, body, COALESCE(CAST(EXTRACT(EPOCH FROM CAST(created_at AS TIMESTAMPTZ)) AS BIGINT), 0)
    FROM orders_idempotency;
DROP TABLE orders_idempotency;
ALTER TABLE orders_idempotency_next RENAME TO orders_idempotency;
CREATE INDEX orders_idempotency_created ON orders_idempotency (created_at);
