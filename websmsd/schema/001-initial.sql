-- websmsd store, schema version 1.
-- Every message, in either direction, is one row with its lifecycle; attempts keep
-- the history of each try.  dedupe_key makes a peer's resent copy recognisable.
CREATE TABLE messages (
    id           TEXT PRIMARY KEY,
    direction    TEXT NOT NULL CHECK (direction IN ('in', 'out')),
    channel      TEXT NOT NULL,
    interface    TEXT NOT NULL,
    recipient    TEXT NOT NULL,
    sender       TEXT NOT NULL,
    body         TEXT NOT NULL,
    status       TEXT NOT NULL,
    reason       TEXT,
    attempts     INTEGER NOT NULL DEFAULT 0,
    created      REAL NOT NULL,
    updated      REAL NOT NULL,
    next_attempt REAL NOT NULL DEFAULT 0,
    provider_id  TEXT,
    dedupe_key   TEXT UNIQUE,
    progress     INTEGER NOT NULL DEFAULT 0
);
-- The dispatcher's question: what is due now, oldest first.
CREATE INDEX messages_due ON messages (direction, next_attempt)
    WHERE status IN ('queued', 'sending');
CREATE INDEX messages_created ON messages (created);
CREATE INDEX messages_numbers ON messages (recipient, sender);

CREATE TABLE attempts (
    message_id TEXT NOT NULL REFERENCES messages (id) ON DELETE CASCADE,
    at         REAL NOT NULL,
    ok         INTEGER NOT NULL,
    detail     TEXT
);
CREATE INDEX attempts_message ON attempts (message_id);
