-- websmsd store, schema version 2: delivery reports.
-- A provider tells, later and maybe more than once, what became of a message it took:
-- each report is kept, and the message's status follows the latest meaningful one.
CREATE TABLE reports (
    message_id TEXT NOT NULL REFERENCES messages (id) ON DELETE CASCADE,
    at         REAL NOT NULL,
    status     TEXT NOT NULL,
    detail     TEXT
);
CREATE INDEX reports_message ON reports (message_id);
CREATE INDEX messages_provider_id ON messages (provider_id) WHERE provider_id IS NOT NULL;
