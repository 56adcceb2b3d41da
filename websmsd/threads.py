"""Conversations: the SMS of each own number, grouped by the other party (issue #19).

A conversation is (own key, peer key) with websmsd.numbers.number_key applied to both
numbers: an inbound SMS is to the own number from the peer, an outbound one from the own
number to the peer.  The daemon's delivery notices to phones (source "notice") are not
SMS and stay out.  An inbound SMS to a number several phones share is stored once per
phone (websmsd.routing.fan_out): those rows are one entry with copies.

The index (schema 007) is filled after the fact: `catch_up` reads the messages stored
since the last indexed rowid in bounded writer operations, so that storing a message
costs what it did before, and a large backlog (an upgraded store) is indexed in steps
that webhooks interleave with.  Because the catch-up runs on the writer's connection,
every rowid below its mark is committed: no message is skipped.  Statuses, reasons and
attempts change after indexing; every read takes them from `messages` by rowid.

Every read runs on the store's reader (never in the writer's transaction) and catches
up first, so a page shows every message committed before it was asked for.
"""

from __future__ import annotations

import json
import math
import sqlite3
import time
from typing import (Any, Callable, Collection, Dict, Iterator, List, NamedTuple, Optional,
                    Sequence, Tuple)

from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure

from websmsd.message import IN, Message
from websmsd.numbers import number_key
from websmsd.phones.notices import SOURCE as NOTICE
from websmsd.store import COLUMNS, row_to_message
from websmsd.record import frozen

log = Logger()

__all__ = ["Entry", "Conversation", "OwnNumber", "Threads", "Results", "SearchPlan",
           "plan_search", "MARK", "MIN_SEARCH"]

# The last rowid of messages indexed, in channel_state (committed with the index rows).
MARK = "threads.indexed"
# Trigrams: a text of fewer characters matches nothing in the full-text index.
MIN_SEARCH = 3
# A search is a glance, not a document: longer text is cut (the trigram query of a very
# long phrase only gets slower, not better).
MAX_SEARCH = 200

_M = ", ".join("m." + c for c in COLUMNS)


@frozen
class Entry:
    """One SMS of a conversation."""

    message: Message  # the first copy, with its current status, reason, next_attempt...
    copies: Tuple[Message, ...]  # the other fan-out copies (usually none)
    own: str  # the own number as stored in the message
    peer: str  # the other party as stored
    own_key: str
    peer_key: str


@frozen
class Conversation:
    own: str  # display forms, from the newest entry
    peer: str
    own_key: str
    peer_key: str
    last: Entry  # the newest entry
    count: int  # entries in it
    unread: int  # inbound entries newer than the viewer's read mark
    read_upto: Optional[float] = None  # the viewer's read mark (None: never read)


@frozen
class OwnNumber:
    own: str  # display form, from the newest entry
    own_key: str
    conversations: int
    unread: int
    last_at: float


class Results(list):
    """Search results (a list of Entry, newest first) with `note`: why there are none or
    fewer than one might expect (a query too short for the text index), else None."""

    note: Optional[str] = None


class SearchPlan(NamedTuple):
    match: Optional[str]  # an FTS5 query of literal phrases, or None
    prefix: Optional[str]  # a short query: number keys starting with this, or None
    note: Optional[str]  # what the viewer should know about the search


def _phrase(text: str) -> str:
    # Inside an FTS5 string only `"` is special (doubled): NEAR, *, -, :, ( and ) are
    # text there.
    return '"' + text.replace('"', '""') + '"'


def plan_search(text: str) -> SearchPlan:
    """How `text` is searched.  Pure.

    Words of 3 characters or more are all required (in any order); a query with a
    shorter word is searched as one piece of text.  A number in any spelling (+1 202...,
    001202..., 1202...) also finds its key.  Shorter queries cannot use the trigram
    index: they match the start of the other party's number key (or sender name)."""
    if not isinstance(text, str):
        text = str(text)
    # Control characters never reach the FTS5 parser (a NUL would cut a phrase).
    text = "".join(ch if ch >= " " and ch != "\x7f" else " " for ch in text)
    text = " ".join(text.split())[:MAX_SEARCH].strip()
    if not text:
        return SearchPlan(None, None, "Nothing to search for.")
    key = number_key(text)
    is_number = key.isdigit()
    if len(text) < MIN_SEARCH or (is_number and len(key) < MIN_SEARCH):
        return SearchPlan(None, key, f"Text is searched from {MIN_SEARCH} characters on;"
                                     " shown are the conversations whose number (or"
                                     " sender name) starts so.")
    words = text.split(" ")
    if all(len(w) >= MIN_SEARCH for w in words):
        match = " AND ".join(_phrase(w) for w in words)
    else:
        match = _phrase(text)
    if is_number and key != text:
        match = f"({match}) OR {_phrase(key)}"
    return SearchPlan(match, None, None)


def _chunks(items: Sequence[Any], size: int = 500) -> Iterator[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


def _ends(direction: str, recipient: str, sender: str) -> Tuple[str, str]:
    """(own, peer) of a message as stored."""
    return (recipient, sender) if direction == IN else (sender, recipient)


def _own_key(own: str, source: str, route: str) -> str:
    """The key of the own number; for an SMS to a phone or SIM whose number is not
    configured (stored to ""), the channel it came through ("smssync:phone1")."""
    return number_key(own) or number_key(source or route or "unknown")


def _load(db: sqlite3.Connection,
          keyed: Sequence[Tuple[int, str, str]]) -> Dict[int, Entry]:
    """{rowid: Entry} of `keyed` [(entry rowid, own key, peer key)]."""
    rowids = [k[0] for k in keyed]
    messages: Dict[int, Message] = {}
    copies: Dict[int, List[Message]] = {}
    for chunk in _chunks(rowids):
        marks = ", ".join("?" * len(chunk))
        for row in db.execute(f"SELECT m.rowid, {_M} FROM messages m"
                              f" WHERE m.rowid IN ({marks})", chunk):
            messages[row[0]] = row_to_message(row[1:])
        for row in db.execute(f"SELECT cp.entry_rowid, {_M} FROM thread_copies cp"
                              " JOIN messages m ON m.rowid = cp.message_rowid"
                              f" WHERE cp.entry_rowid IN ({marks})"
                              " ORDER BY cp.entry_rowid, cp.message_rowid", chunk):
            copies.setdefault(row[0], []).append(row_to_message(row[1:]))
    out = {}
    for rowid, own_key, peer_key in keyed:
        m = messages.get(rowid)
        if m is not None:
            own, peer = _ends(m.direction, m.recipient, m.sender)
            own = own or own_key  # a phone with no number: its channel
            out[rowid] = Entry(m, tuple(copies.get(rowid, ())), own, peer, own_key, peer_key)
    return out


# A viewer's unread entries of the conversation `c` (with its read mark `r`): all
# inbound ones when never read, none when nothing came in since, else a count over the
# inbound entries after the mark only (a partial index).
_UNREAD = (
    "CASE WHEN r.read_upto IS NULL THEN c.inbound"
    " WHEN c.last_in IS NULL OR c.last_in <= r.read_upto THEN 0"
    " ELSE (SELECT COUNT(*) FROM thread_entries e WHERE e.own = c.own AND e.peer = c.peer"
    " AND e.direction = 'in' AND e.created > r.read_upto) END"
)
_READS = ("LEFT JOIN thread_reads r ON r.viewer = ? AND r.own = c.own AND r.peer = c.peer")
_IN_OWNS = "(SELECT value FROM json_each(?))"

_UPSERT_CONVERSATION = (
    "INSERT INTO thread_conversations (own, peer, last_rowid, last_created, count,"
    " inbound, last_in) VALUES (?, ?, ?, ?, ?, ?, ?)"
    " ON CONFLICT (own, peer) DO UPDATE SET"
    " last_rowid = CASE WHEN excluded.last_created >= last_created"
    " THEN excluded.last_rowid ELSE last_rowid END,"
    " last_created = max(last_created, excluded.last_created),"
    " count = count + excluded.count,"
    " inbound = inbound + excluded.inbound,"
    " last_in = CASE WHEN last_in IS NULL OR excluded.last_in > last_in"
    " THEN excluded.last_in ELSE last_in END"
)


class Threads:
    """Conversations over a websmsd.store.Store; every method returns a Deferred.

    One per store (it remembers how far the index is).  `chunk`: messages indexed per
    writer operation (about 50 ms for 2000 on a desktop: a webhook committed in the
    same transaction waits that long)."""

    def __init__(self, store: Any, clock: Callable[[], float] = time.time, chunk: int = 2000):
        if chunk < 1:
            raise ValueError("chunk must be at least 1")
        self.store = store
        self.clock = clock
        self.chunk = chunk
        # store.commits when the last complete catch-up began: nothing new since then
        # means nothing to do, not even a read.
        self._caught_at: Optional[int] = None
        self._running = False
        self._waiting: List[Tuple[int, defer.Deferred]] = []
        self.runs = 0  # catch-up runs that read or wrote (for tests and metrics)

    # -- indexing --------------------------------------------------------------------

    def catch_up(self) -> defer.Deferred:
        """Index the messages committed since the last catch-up; fires with how many.

        Costs nothing when the store committed nothing since the last complete run.
        Calls while a run is under way share it, or the one run after it when the store
        committed more since it began."""
        commits = self.store.commits
        if commits == self._caught_at:
            return defer.succeed(0)
        d: defer.Deferred = defer.Deferred()
        self._waiting.append((commits, d))
        if not self._running:
            self._start()
        return d

    def _start(self) -> None:
        self._running = True
        start = self.store.commits
        self.runs += 1
        self._run(start).addBoth(self._finished, start)

    def _finished(self, result: Any, start: int) -> None:
        self._running = False
        served = [d for c, d in self._waiting if c <= start]
        self._waiting = [(c, d) for c, d in self._waiting if c > start]
        for d in served:
            if isinstance(result, Failure):
                d.errback(result)
            else:
                d.callback(result)
        # Callers that came after more commits than this run saw: one run for them all
        # (unless one of the callbacks above started it already).
        if self._waiting and not self._running:
            self._start()

    @defer.inlineCallbacks
    def _run(self, start: int) -> Any:
        top, mark = yield self.store.reader.run(_top)
        total = 0
        while mark < top:
            indexed, new = yield self.store.write(self._index)
            total += indexed
            if new <= mark:
                break
            mark = new
        self._caught_at = start
        return total

    def _index(self, db: sqlite3.Connection) -> Tuple[int, int]:
        """One bounded step, in the writer's transaction: (messages indexed, new mark)."""
        row = db.execute("SELECT value FROM channel_state WHERE name = ?", (MARK,)).fetchone()
        mark = int(row[0]) if row else 0
        rows = db.execute(
            "SELECT rowid, direction, recipient, sender, body, source, created, route"
            " FROM messages WHERE rowid > ? ORDER BY rowid LIMIT ?", (mark, self.chunk),
        ).fetchall()
        if not rows:
            return 0, mark
        entries: List[tuple] = []
        copies: List[tuple] = []
        search: List[tuple] = []
        pairs: Dict[Tuple[str, str], list] = {}
        # Fan-out copies share everything but id and route; the first copy's (rowid,
        # route) by that signature.
        firsts: Dict[tuple, Tuple[int, str]] = {}
        # The copies of one SMS are stored by one Store.add, so their rowids follow each
        # other: only the rows at the head of a step, before its first entry, can be
        # copies of an entry of an earlier step (one index lookup each).
        head = True
        indexed = 0
        for rowid, direction, recipient, sender, body, source, created, route in rows:
            if source == NOTICE:
                continue
            indexed += 1
            own, peer = _ends(direction, recipient, sender)
            own_key, peer_key = _own_key(own, source, route), number_key(peer)
            inbound = direction == IN
            if inbound:
                signature = (own_key, peer_key, created, recipient, sender, body, source)
                first = firsts.get(signature)
                if first is None and head:
                    first = _earlier_copy(db, signature)
                if first is not None and first[1] != route:
                    copies.append((first[0], rowid))
                    continue
                firsts[signature] = (rowid, route)
            head = False
            entries.append((rowid, own_key, peer_key, direction, created))
            search.append((rowid, body, own_key, peer_key))
            pair = pairs.get((own_key, peer_key))
            if pair is None:
                pairs[(own_key, peer_key)] = [rowid, created, 1, int(inbound),
                                              created if inbound else None]
                continue
            if created >= pair[1]:
                pair[0], pair[1] = rowid, created
            pair[2] += 1
            if inbound:
                pair[3] += 1
                if pair[4] is None or created > pair[4]:
                    pair[4] = created
        db.executemany("INSERT INTO thread_entries (message_rowid, own, peer, direction,"
                       " created) VALUES (?, ?, ?, ?, ?)", entries)
        db.executemany("INSERT INTO thread_copies (entry_rowid, message_rowid)"
                       " VALUES (?, ?)", copies)
        db.executemany("INSERT INTO thread_search (rowid, body, own, peer)"
                       " VALUES (?, ?, ?, ?)", search)
        db.executemany(_UPSERT_CONVERSATION,
                       [(own, peer, *values) for (own, peer), values in pairs.items()])
        mark = rows[-1][0]
        db.execute("INSERT INTO channel_state (name, value, updated) VALUES (?, ?, ?)"
                   " ON CONFLICT (name) DO UPDATE SET value = excluded.value,"
                   " updated = excluded.updated", (MARK, str(mark), self.clock()))
        return indexed, mark

    # -- reads -----------------------------------------------------------------------

    def _read(self, fn: Callable[[sqlite3.Connection], Any]) -> defer.Deferred:
        # A page that cannot bring the index up to date (the store failed a commit)
        # still shows what is indexed, statuses current: better than no page.
        d = self.catch_up()
        d.addErrback(lambda f: log.failure("threads: catching up failed", f))
        return d.addCallback(lambda _: self.store.reader.run(fn))

    def own_numbers(self, viewer: str,
                    owns: Optional[Collection[str]] = None) -> defer.Deferred:
        """[OwnNumber] of the own-number keys `owns` (None: all), newest activity first."""
        wanted = None if owns is None else json.dumps(sorted(set(owns)))

        def own_numbers(db: sqlite3.Connection) -> List[OwnNumber]:
            if wanted == "[]":
                return []
            sql = (f"SELECT c.own, COUNT(*), MAX(c.last_created), c.last_rowid,"
                   f" SUM({_UNREAD}) FROM thread_conversations c {_READS}")
            args: list = [viewer]
            if wanted is not None:
                sql += f" WHERE c.own IN {_IN_OWNS}"
                args.append(wanted)
            rows = db.execute(sql + " GROUP BY c.own", args).fetchall()
            lasts = _load(db, [(r[3], r[0], "") for r in rows])
            out = []
            for own_key, count, last_at, last_rowid, unread in rows:
                entry = lasts.get(last_rowid)
                own = entry.own if entry is not None else own_key
                out.append(OwnNumber(own, own_key, count, unread or 0, last_at))
            out.sort(key=lambda o: o.last_at, reverse=True)
            return out

        return self._read(own_numbers)

    def conversations(self, viewer: str, own_key: str, limit: int = 100,
                      before: Optional[float] = None) -> defer.Deferred:
        """[Conversation] of `own_key`, newest first; `before`: the last_at (the newest
        entry's created) of the last one shown, for the next page."""

        def conversations(db: sqlite3.Connection) -> List[Conversation]:
            sql = (f"SELECT c.own, c.peer, c.last_rowid, c.count, {_UNREAD}, r.read_upto"
                   f" FROM thread_conversations c {_READS} WHERE c.own = ?")
            args: list = [viewer, own_key]
            if before is not None:
                sql += " AND c.last_created < ?"
                args.append(before)
            sql += " ORDER BY c.last_created DESC LIMIT ?"
            args.append(max(0, int(limit)))
            rows = db.execute(sql, args).fetchall()
            by_rowid = _load(db, [(r[2], r[0], r[1]) for r in rows])
            out = []
            for own, peer, last_rowid, count, unread, read_upto in rows:
                e = by_rowid.get(last_rowid)
                if e is None:
                    continue
                out.append(Conversation(e.own, e.peer, own, peer, e, count, unread, read_upto))
            return out

        return self._read(conversations)

    def thread(self, own_key: str, peer_key: str, limit: int = 200,
               before: Optional[float] = None) -> defer.Deferred:
        """[Entry] of a conversation: the newest `limit` (created before `before`),
        oldest first."""

        def thread(db: sqlite3.Connection) -> List[Entry]:
            sql = "SELECT message_rowid FROM thread_entries WHERE own = ? AND peer = ?"
            args: list = [own_key, peer_key]
            if before is not None:
                sql += " AND created < ?"
                args.append(before)
            sql += " ORDER BY created DESC, message_rowid DESC LIMIT ?"
            args.append(max(0, int(limit)))
            rowids = [r[0] for r in db.execute(sql, args)]
            rowids.reverse()
            loaded = _load(db, [(r, own_key, peer_key) for r in rowids])
            return [loaded[r] for r in rowids if r in loaded]

        return self._read(thread)

    def mark_read(self, viewer: str, own_key: str, peer_key: str,
                  upto: float) -> defer.Deferred:
        """`viewer` has read the conversation up to the entry created at `upto`; a mark
        never moves back (two tabs, a page loaded before another)."""
        upto = float(upto)
        if not math.isfinite(upto):
            return defer.fail(ValueError(f"a read mark must be a time, not {upto}"))

        def mark_read(db: sqlite3.Connection) -> None:
            db.execute("INSERT INTO thread_reads (viewer, own, peer, read_upto)"
                       " VALUES (?, ?, ?, ?) ON CONFLICT (viewer, own, peer) DO UPDATE SET"
                       " read_upto = max(read_upto, excluded.read_upto)",
                       (viewer, own_key, peer_key, upto))

        return self.store.write(mark_read)

    def search(self, viewer: str, text: str, owns: Optional[Collection[str]] = None,
               limit: int = 50) -> defer.Deferred:
        """Results [Entry], newest first, of the own-number keys `owns` (None: all),
        whose text or numbers contain `text` (see plan_search)."""
        plan = plan_search(text)
        wanted = None if owns is None else json.dumps(sorted(set(owns)))
        limit = max(0, int(limit))

        def search(db: sqlite3.Connection) -> Results:
            out = Results()
            out.note = plan.note
            if wanted == "[]" or (plan.match is None and plan.prefix is None):
                return out
            if plan.match is not None:
                sql = ("SELECT e.message_rowid, e.own, e.peer FROM thread_search"
                       " JOIN thread_entries e ON e.message_rowid = thread_search.rowid"
                       " WHERE thread_search MATCH ?")
                args: list = [plan.match]
                if wanted is not None:
                    sql += f" AND e.own IN {_IN_OWNS}"
                    args.append(wanted)
                sql += " ORDER BY thread_search.rowid DESC LIMIT ?"
            else:
                # The last entry of each conversation whose peer key starts so, through
                # the index of peer keys (or the (own, peer) key when scoped).
                sql = ("SELECT c.last_rowid, c.own, c.peer FROM thread_conversations c"
                       " WHERE c.peer >= ? AND c.peer < ?")
                args = [plan.prefix, plan.prefix + "\U0010ffff"]
                if wanted is not None:
                    sql += f" AND c.own IN {_IN_OWNS}"
                    args.append(wanted)
                sql += " ORDER BY c.last_created DESC LIMIT ?"
            args.append(limit)
            found = db.execute(sql, args).fetchall()
            loaded = _load(db, found)
            out.extend(loaded[r[0]] for r in found if r[0] in loaded)
            out.sort(key=lambda e: e.message.created, reverse=True)
            return out

        return self._read(search)


def _top(db: sqlite3.Connection) -> Tuple[int, int]:
    """(the newest rowid of messages, the mark of the index)."""
    row = db.execute("SELECT (SELECT MAX(rowid) FROM messages),"
                     " (SELECT value FROM channel_state WHERE name = ?)", (MARK,)).fetchone()
    return row[0] or 0, int(row[1]) if row[1] is not None else 0


def _earlier_copy(db: sqlite3.Connection, signature: tuple) -> Optional[Tuple[int, str]]:
    """The entry (rowid, route) indexed in an earlier step that an inbound message with
    this signature is a fan-out copy of, if any."""
    own_key, peer_key, created, recipient, sender, body, source = signature
    return db.execute(
        "SELECT e.message_rowid, m.route FROM thread_entries e"
        " JOIN messages m ON m.rowid = e.message_rowid"
        " WHERE e.own = ? AND e.peer = ? AND e.direction = 'in' AND e.created = ?"
        " AND m.recipient = ? AND m.sender = ? AND m.body = ? AND m.source = ?"
        " ORDER BY e.message_rowid DESC LIMIT 1",
        (own_key, peer_key, created, recipient, sender, body, source),
    ).fetchone()
