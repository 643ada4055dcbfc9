-- A user belongs to the subject that registered it (NULL: registered in the open mode,
-- then only an admin may act for it once identities are verified).
ALTER TABLE users_users ADD COLUMN owner TEXT;

-- Idempotency keys are scoped per subject and expire: the table is rebuilt with the
-- subject in the primary key and the creation time in Unix seconds (indexed for the
-- purge). Existing keys belonged to no verified subject: they keep an empty one.
CREATE TABLE users_idempotency_next (
    subject    TEXT NOT NULL,
    key        TEXT NOT NULL,
    request    TEXT NOT NULL,
    status     INTEGER NOT NULL,
    body       TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    PRIMARY KEY (subject, key)
);
INSERT INTO users_idempotency_next (subject, key, request, status, body, created_at)
    SELECT '', key, request, status, body, COALESCE(CAST(strftime('%s', created_at) AS INTEGER), 0)
    FROM users_idempotency;
DROP TABLE users_idempotency;
ALTER TABLE users_idempotency_next RENAME TO users_idempotency;
CREATE INDEX users_idempotency_created ON users_idempotency (created_at);
