-- websmsd store, schema version 5: every message has a route.
-- The route is the interface that carries a message ("itsp:api-1", "callfile",
-- "goip:sim1"...); the source says where it came from ("webhook:tw", "agi", "cli"...);
-- fallback lists the routes to try next (comma-separated), when this one fails the
-- message for good or is down.  Due work and delivery reports are looked up by route
-- (two SIMs may hand out the same message id).
ALTER TABLE messages ADD COLUMN route TEXT NOT NULL DEFAULT '';
ALTER TABLE messages ADD COLUMN source TEXT NOT NULL DEFAULT '';
ALTER TABLE messages ADD COLUMN fallback TEXT NOT NULL DEFAULT '';
-- Until now: inbound messages went to the call-file spool; outbound ones to the
-- [websms] interface named in `interface` ("" is the unnamed one); `channel` was the
-- source ("webhook", "agi", "cli", "api").
UPDATE messages SET
    route = CASE
        WHEN direction = 'in' THEN 'callfile'
        WHEN interface = '' THEN 'itsp'
        ELSE 'itsp:' || interface END,
    source = CASE
        WHEN direction = 'in' AND interface != '' THEN channel || ':' || interface
        ELSE channel END;
DROP INDEX messages_due;
DROP INDEX messages_status;
DROP INDEX messages_provider_id;
ALTER TABLE messages DROP COLUMN interface;
ALTER TABLE messages DROP COLUMN channel;
CREATE INDEX messages_due ON messages (route, next_attempt) WHERE status IN ('queued', 'sending');
CREATE INDEX messages_status ON messages (direction, route, status);
CREATE INDEX messages_provider_id ON messages (route, provider_id) WHERE provider_id IS NOT NULL
