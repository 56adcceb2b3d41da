-- websmsd store, schema version 6: what a channel must remember across restarts (an
-- Android phone's inbox read so far...), written in the same transaction as the
-- messages it took, so that nothing is taken twice or lost after a crash.
CREATE TABLE channel_state (
    name    TEXT PRIMARY KEY,
    value   TEXT NOT NULL,
    updated REAL NOT NULL
)
