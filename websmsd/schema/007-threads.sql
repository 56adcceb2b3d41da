-- websmsd store, schema version 7: conversations in the browser (websmsd.threads).
-- An index of its own, filled after the fact by catching up with new messages
-- (rowid > the mark in channel_state 'threads.indexed'): nothing here is written when a
-- message is stored, so a webhook's insert costs what it cost before.  Messages are
-- never deleted and their numbers and text never change, so an indexed row stays
-- right; what does change (status, reason...) is read from messages by rowid.
--
-- One row per SMS of a conversation (own key, peer key: websmsd.numbers.number_key);
-- message_rowid is the rowid in messages of its first copy.
CREATE TABLE thread_entries (
    message_rowid INTEGER PRIMARY KEY,
    own           TEXT NOT NULL,
    peer          TEXT NOT NULL,
    direction     TEXT NOT NULL,
    created       REAL NOT NULL
);
CREATE INDEX thread_entries_pair ON thread_entries (own, peer, created);
-- Unread counts: the inbound entries after a read mark, without reading the outbound.
CREATE INDEX thread_entries_inbound ON thread_entries (own, peer, created)
    WHERE direction = 'in';
-- An inbound SMS to a number several phones share is one row per phone (fan-out): the
-- other rows are copies of the entry.
CREATE TABLE thread_copies (
    entry_rowid   INTEGER NOT NULL,
    message_rowid INTEGER NOT NULL,
    PRIMARY KEY (entry_rowid, message_rowid)
) WITHOUT ROWID;
-- One row per conversation, so that the list of conversations of a number reads one
-- row each, not all their entries.
CREATE TABLE thread_conversations (
    own          TEXT NOT NULL,
    peer         TEXT NOT NULL,
    last_rowid   INTEGER NOT NULL,
    last_created REAL NOT NULL,
    count        INTEGER NOT NULL,
    inbound      INTEGER NOT NULL,
    last_in      REAL,
    PRIMARY KEY (own, peer)
) WITHOUT ROWID;
CREATE INDEX thread_conversations_recent ON thread_conversations (own, last_created);
CREATE INDEX thread_conversations_peer ON thread_conversations (peer);
-- How far each user has read each conversation (the created time of the newest entry
-- seen).
CREATE TABLE thread_reads (
    viewer    TEXT NOT NULL,
    own       TEXT NOT NULL,
    peer      TEXT NOT NULL,
    read_upto REAL NOT NULL,
    PRIMARY KEY (viewer, own, peer)
) WITHOUT ROWID;
-- Search by any part of a text or a number (keys): trigrams, so that a fragment in the
-- middle of a word or number is found through the index.  Contentless: the text is in
-- messages already, and nothing is ever deleted.
CREATE VIRTUAL TABLE thread_search USING fts5 (
    body, own, peer, content = '', tokenize = 'trigram'
)
