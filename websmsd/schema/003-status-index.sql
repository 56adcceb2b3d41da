-- websmsd store, schema version 3: the status page and /metrics count messages by
-- direction, interface and status on every view; an index keeps that flat as the
-- store grows.
CREATE INDEX messages_status ON messages (direction, interface, status);
