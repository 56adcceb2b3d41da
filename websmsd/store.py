"""The durable store: every message in both directions, in SQLite.

One writer thread owns the database connection.  Callers on the reactor thread get a
Deferred for each operation; the writer drains every operation that is waiting into one
transaction (WAL, synchronous=FULL, so COMMIT returns only once the log is fsynced) and
then fires all their Deferreds together: group commit.  A webhook is "accepted" only
once its Deferred fires, i.e. after the fsync; if the commit fails, every operation of
that batch fails and the peer is told to retry.

The store knows nothing of HTTP, SMPP or Asterisk.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import os
import queue
import sqlite3
import threading
import urllib.parse
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple

from twisted.internet import defer
from twisted.logger import Logger

from websmsd.message import CANCELLED, DELIVERED, FAILED, IN, QUEUED, SENDING, SENT, Message

log = Logger()

# The columns of a message row, in the order row_to_message reads them (also for
# modules with tables of their own that join messages: websmsd.threads).
COLUMNS = (
    "id", "direction", "route", "source", "recipient", "sender", "body", "status",
    "reason", "attempts", "created", "updated", "next_attempt", "provider_id",
    "dedupe_key", "progress", "fallback",
)
_SELECT = "SELECT " + ", ".join(COLUMNS) + " FROM messages"
# Columns a caller may change with update(); anything else is a programming error.
_UPDATABLE = frozenset(
    {"status", "reason", "attempts", "next_attempt", "provider_id", "progress", "body",
     "route", "fallback"}
)
_MAX_BATCH = 1000
# How far along a message is, for delivery reports that arrive late or twice: a report
# moves a message forward only.
_REPORT_RANK = {QUEUED: 0, SENDING: 1, SENT: 2, DELIVERED: 3, FAILED: 3}


_FALLBACK = COLUMNS.index("fallback")
_DEDUPE = COLUMNS.index("dedupe_key")
# Rows per INSERT statement: 17 values each stays under SQLite's oldest limit of 999
# variables per statement.
_ROWS_PER_INSERT = 50
_STATE = ("INSERT INTO channel_state (name, value, updated) VALUES (?, ?, ?)"
          " ON CONFLICT (name) DO UPDATE SET value = excluded.value,"
          " updated = excluded.updated")


def row_to_message(row: Sequence[Any]) -> Message:
    values = dict(zip(COLUMNS, row))
    values["fallback"] = tuple(values["fallback"].split(",")) if values["fallback"] else ()
    return Message(**values)


def _message_row(m: Message) -> tuple:
    row = [getattr(m, c) for c in COLUMNS]
    row[_FALLBACK] = ",".join(m.fallback)
    return tuple(row)


@functools.lru_cache(maxsize=_ROWS_PER_INSERT)
def _insert_sql(n: int) -> str:
    # No ON CONFLICT: copies are found by _insert_all's SELECT first (one writer, one
    # transaction), so a conflict here is a bug, and a row must never be skipped
    # silently while its sender is told it was stored.
    row = "(" + ", ".join("?" * len(COLUMNS)) + ")"
    return ("INSERT INTO messages (" + ", ".join(COLUMNS) + ") VALUES "
            + ", ".join([row] * n))


class _Insert:
    """The rows of one `Store.add`: the writer stores those of a whole batch together
    (`_insert_all`).  Called alone, it stores its own."""

    __slots__ = ("rows", "state", "now")

    def __init__(self, rows: List[tuple], state: Optional[Tuple[str, str]], now: float):
        self.rows = rows
        self.state = state
        self.now = now

    def __call__(self, db: sqlite3.Connection) -> List[bool]:
        return _insert_all(db, [self])[0]


def _insert_all(db: sqlite3.Connection, inserts: Sequence[_Insert]) -> List[List[bool]]:
    """Store the rows of several `add` calls in as few statements as possible; for each
    call, one bool per row: True if new, False if its dedupe_key was stored already (or
    earlier in these calls).

    Every statement gives up the GIL while SQLite works and must then take it back from
    the reactor thread, which is busy answering webhooks: with one INSERT per message
    that wait, not SQLite, was most of a group commit's time.
    """
    keys = [row[_DEDUPE] for ins in inserts for row in ins.rows if row[_DEDUPE] is not None]
    seen = set()
    for start in range(0, len(keys), 500):
        chunk = keys[start:start + 500]
        seen.update(r[0] for r in db.execute(
            "SELECT dedupe_key FROM messages WHERE dedupe_key IN ("
            + ", ".join("?" * len(chunk)) + ")", chunk))
    results: List[List[bool]] = []
    fresh: List[tuple] = []
    for ins in inserts:
        out = []
        for row in ins.rows:
            key = row[_DEDUPE]
            if key is not None:
                if key in seen:
                    out.append(False)
                    continue
                seen.add(key)
            out.append(True)
            fresh.append(row)
        results.append(out)
    for start in range(0, len(fresh), _ROWS_PER_INSERT):
        chunk = fresh[start:start + _ROWS_PER_INSERT]
        db.execute(_insert_sql(len(chunk)), list(itertools.chain.from_iterable(chunk)))
    for ins in inserts:
        if ins.state is not None:
            db.execute(_STATE, (ins.state[0], ins.state[1], ins.now))
    return results


def _one_statement(job: tuple) -> Optional[Tuple[str, list]]:
    """(sql, values) when `job` (an `add`, or a run of them) is one INSERT of rows that
    cannot be copies of stored ones (no dedupe_key) and keeps no channel state."""
    inserts = [j[0] for j in job[0]] if type(job[0]) is list else [job[0]]
    rows = []
    for ins in inserts:
        if type(ins) is not _Insert or ins.state is not None:
            return None
        rows += ins.rows
    if not rows or len(rows) > _ROWS_PER_INSERT or any(r[_DEDUPE] is not None for r in rows):
        return None
    return _insert_sql(len(rows)), list(itertools.chain.from_iterable(rows))


def _runs_of_inserts(batch: list) -> list:
    """The batch with each run of consecutive `add` jobs made one job whose fn is the
    list of them (same order of execution and of answers)."""
    out: list = []
    run: list = []
    for job in batch:
        if type(job[0]) is _Insert:
            run.append(job)
            continue
        if run:
            out.append((run, None, None) if len(run) > 1 else run[0])
            run = []
        out.append(job)
    if run:
        out.append((run, None, None) if len(run) > 1 else run[0])
    return out


def _column_value(name: str, value: Any) -> Any:
    return ",".join(value) if name == "fallback" else value


_SCHEMA_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "schema")


def schema_scripts() -> List[str]:
    """The migration scripts in order: 001-*.sql brings version 0 to 1, and so on."""
    names = sorted(n for n in os.listdir(_SCHEMA_DIR) if n.endswith(".sql"))
    scripts = []
    for n in names:
        with open(os.path.join(_SCHEMA_DIR, n), encoding="utf-8") as f:
            scripts.append(f.read())
    return scripts


class StoreError(Exception):
    """The store cannot do what was asked (not open, a newer schema, a failed commit)."""


class _OperationFailed(Exception):
    """An operation of a batch raised: the batch is run again, isolating each."""


class Store:
    """SQLite message store with a single writer thread and group commit.

    `run_inline=True` runs every operation at once on the calling thread (for
    deterministic unit tests of the code that uses the store).
    """

    def __init__(self, path: str, reactor: Any = None, run_inline: bool = False):
        if reactor is None:
            from twisted.internet import reactor as _reactor

            reactor = _reactor
        self.path = path
        self._reactor = reactor
        self._inline = run_inline
        self._queue: "queue.SimpleQueue" = queue.SimpleQueue()
        self._thread: Optional[threading.Thread] = None
        self._db: Optional[sqlite3.Connection] = None
        # Told the route of new or newly due work after each commit (the dispatcher).
        self.listeners: List[Callable[[str], None]] = []
        # The own numbers of the PBX and where messages to each came from last
        # ("webhook:tw", "goip:sim1"): a reply goes out the way the message came in.
        self.owners: Dict[str, str] = {}
        # Told, after the commit, the outbound messages that reached delivered or failed
        # in it (a dispatcher's outcome, a delivery report): [Message] as stored then.
        # (The phones' delivery notices.)
        self.final_listeners: List[Callable[[List[Message]], Any]] = []
        self._reader: Optional["StoreReader"] = None
        self.commits = 0  # transactions committed, for metrics
        self.batched = 0  # operations committed

    # -- opening, schema ------------------------------------------------------------

    @property
    def is_open(self) -> bool:
        return self._db is not None

    def open(self) -> None:
        """Create or upgrade the database.  Runs before the reactor serves anything."""
        directory = os.path.dirname(os.path.abspath(self.path))
        os.makedirs(directory, exist_ok=True)
        scripts = schema_scripts()
        fresh = not os.path.exists(self.path)
        db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")
        db.execute("PRAGMA foreign_keys=ON")
        version = db.execute("PRAGMA user_version").fetchone()[0]
        if version > len(scripts):
            db.close()
            raise StoreError(
                f"{self.path} has schema version {version}, newer than this websmsd "
                f"knows ({len(scripts)}); refusing to touch it"
            )
        if version < len(scripts) and not fresh:
            backup = f"{self.path}.v{version}.bak"
            with sqlite3.connect(backup) as copy:
                db.backup(copy)
            log.info("store: schema {old} -> {new}, backup in {backup}",
                     old=version, new=len(scripts), backup=backup)
        for number, script in enumerate(scripts[version:], start=version + 1):
            # One transaction per step, the version bump inside it: a crash leaves
            # either the old or the new version, never half of one.
            db.execute("BEGIN IMMEDIATE")
            try:
                for statement in _split_sql(script):
                    db.execute(statement)
                db.execute(f"PRAGMA user_version={number}")
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
        # SQLite takes the bare column `source` from the row that has MAX(created).
        self.owners = {recipient: source for recipient, source, _ in db.execute(
            "SELECT recipient, source, MAX(created) FROM messages WHERE direction = 'in'"
            " GROUP BY recipient")}
        self._db = db
        if not self._inline:
            self._thread = threading.Thread(
                target=self._writer, name="websmsd-store", daemon=True
            )
            self._thread.start()

    def close(self) -> defer.Deferred:
        """Finish what is queued, then close the database."""
        if self._db is None:
            return defer.succeed(None)
        if self._inline:
            self._db.close()
            self._db = None
            return defer.succeed(None)
        self._queue.put(None)
        thread = self._thread

        def joined() -> None:
            thread.join()
            self._db.close()
            self._db = None

        from twisted.internet.threads import deferToThreadPool

        return deferToThreadPool(self._reactor, self._reactor.getThreadPool(), joined)

    # -- the writer thread ------------------------------------------------------------

    def _submit(self, fn: Callable[[sqlite3.Connection], Any],
                routes: Any = ()) -> defer.Deferred:
        """Run `fn(db)` in the writer's next transaction; a Deferred of its result.

        `routes`: the routes that may have due work once it committed (an iterable, or a
        callable of the result): the listeners are told."""
        if self._db is None:
            return defer.fail(StoreError("store is not open"))
        if self._inline:
            try:
                self._db.execute("BEGIN IMMEDIATE")
                result = fn(self._db)
                self._db.execute("COMMIT")
            except Exception as e:
                if self._db.in_transaction:
                    self._db.execute("ROLLBACK")
                return defer.fail(e)
            self.commits += 1
            self.batched += 1
            self._notify(_routes_of(routes, result))
            return defer.succeed(result)
        d = defer.Deferred()
        self._queue.put((fn, d, routes))
        return d

    def write(self, fn: Callable[[sqlite3.Connection], Any]) -> defer.Deferred:
        """Run `fn(db)` in one of the writer's transactions (with whatever else is
        committed with it); a Deferred of its result.  For modules that keep tables of
        their own in the store (websmsd.threads): `fn` must be quick and must not commit."""
        return self._submit(fn)

    def _writer(self) -> None:
        db = self._db
        while True:
            job = self._queue.get()
            if job is None:
                return
            batch = [job]
            stop = False
            while len(batch) < _MAX_BATCH:
                try:
                    job = self._queue.get_nowait()
                except queue.Empty:
                    break
                if job is None:
                    stop = True
                    break
                batch.append(job)
            results = self._run_batch(db, batch)
            self._reactor.callFromThread(self._deliver, results)
            if stop:
                return

    def _run_batch(self, db: sqlite3.Connection, batch: list) -> list:
        try:
            try:
                return self._transaction(db, batch, isolate=False)
            except _OperationFailed:
                # One operation failed (a bug, a constraint): run the batch again with a
                # savepoint around each, so that it fails alone and the others commit.
                return self._transaction(db, batch, isolate=True)
        except Exception as e:  # the commit itself failed (disk full, I/O error...)
            # The commit's own error is the one to report; a failed rollback adds nothing.
            with contextlib.suppress(Exception):
                if db.in_transaction:
                    db.execute("ROLLBACK")
            return [(d, False, StoreError(f"commit failed: {e}"), routes)
                    for fn, d, routes in batch]

    @staticmethod
    def _transaction(db: sqlite3.Connection, batch: list, isolate: bool) -> list:
        results = []
        if not isolate:
            batch = _runs_of_inserts(batch)
            if len(batch) == 1:
                alone = _one_statement(batch[0])
                if alone is not None:
                    # New messages only, one INSERT: SQLite's own transaction around
                    # it commits (and fsyncs) in that one step, without BEGIN and
                    # COMMIT, two more waits for the GIL.
                    try:
                        db.execute(*alone)
                    except Exception as e:
                        raise _OperationFailed() from e
                    fn, d, routes = batch[0]
                    jobs = fn if type(fn) is list else [batch[0]]
                    return [(job[1], True, [True] * len(job[0].rows), job[2]) for job in jobs]
        db.execute("BEGIN IMMEDIATE")
        for fn, d, routes in batch:
            if not isolate:
                try:
                    if type(fn) is list:  # several add() calls in a row, stored together
                        stored = _insert_all(db, [job[0] for job in fn])
                        results += [(job[1], True, value, job[2])
                                    for job, value in zip(fn, stored)]
                    else:
                        results.append((d, True, fn(db), routes))
                except Exception as e:
                    if db.in_transaction:
                        db.execute("ROLLBACK")
                    raise _OperationFailed() from e
                continue
            db.execute("SAVEPOINT op")
            try:
                value = fn(db)
            except Exception as e:
                db.execute("ROLLBACK TO op")
                results.append((d, False, e, routes))
            else:
                results.append((d, True, value, routes))
            db.execute("RELEASE op")
        db.execute("COMMIT")
        return results

    def _deliver(self, results: list) -> None:
        self.commits += 1
        self.batched += len(results)
        due: set = set()
        for d, ok, value, routes in results:
            if ok:
                if routes:
                    due.update(_routes_of(routes, value))
                d.callback(value)
            else:
                d.errback(value)
        self._notify(due)

    def _notify(self, routes: Iterable[str]) -> None:
        for route in routes:
            for listener in self.listeners:
                listener(route)

    # -- writes -----------------------------------------------------------------------

    def add(self, messages: List[Message],
            state: Optional[Tuple[str, str]] = None) -> defer.Deferred:
        """Store new messages; fires with one bool each: True if new, False if a copy
        with the same dedupe_key was already stored (the peer resent it).

        `state`: (name, value) a channel remembers with these messages, committed in the
        same transaction (read it back with `state(name)`)."""
        now = self._reactor.seconds()
        rows = []
        for m in messages:
            m.updated = now
            rows.append(_message_row(m))
        add = _Insert(rows, state, now)
        d = self._submit(add, {m.route for m in messages})
        return d.addCallback(self._added, messages)

    def _added(self, new: List[bool], messages: List[Message]) -> List[bool]:
        owners = self.owners
        for m in messages:
            if m.direction == IN and owners.get(m.recipient) != m.source:
                owners[m.recipient] = m.source
        return new

    def update(self, changes: List[tuple], attempt: Optional[List[tuple]] = None,
               wake: Iterable[str] = ()) -> defer.Deferred:
        """Apply `[(message_id, {column: value})]` and record `[(message_id, ok, detail)]`
        attempts, all in one transaction; then wake the routes `wake`."""
        now = self._reactor.seconds()
        for _, fields in changes:
            bad = set(fields) - _UPDATABLE
            if bad:
                raise ValueError(f"cannot update {sorted(bad)}")

        # Rows changing the same columns go in one executemany: a round of call files
        # updates hundreds of rows the same way.
        groups: Dict[tuple, list] = {}
        for message_id, fields in changes:
            cols = tuple(sorted(fields))
            groups.setdefault(cols, []).append(
                [_column_value(c, fields[c]) for c in cols] + [now, message_id])

        final_ids = [message_id for message_id, fields in changes
                     if fields.get("status") in _FINAL] if self.final_listeners else []
        finals: List[Message] = []

        def update(db: sqlite3.Connection) -> int:
            n = 0
            for cols, rows in groups.items():
                sets = ", ".join(f"{c} = ?" for c in cols)
                cur = db.executemany(
                    f"UPDATE messages SET {sets}, updated = ? WHERE id = ?", rows)
                n += cur.rowcount
            if attempt:
                db.executemany(
                    "INSERT INTO attempts (message_id, at, ok, detail) VALUES (?, ?, ?, ?)",
                    [(message_id, now, 1 if ok else 0, detail)
                     for message_id, ok, detail in attempt])
            if final_ids:
                finals.extend(_final_rows(db, final_ids))
            return n

        d = self._submit(update, tuple(wake))
        return d.addCallback(self._tell_finals, finals) if final_ids else d

    def _tell_finals(self, result: Any, finals: List[Message]) -> Any:
        if finals:
            for listener in list(self.final_listeners):
                try:
                    listener(list(finals))
                except Exception:
                    log.failure("store: a listener of final statuses failed")
        return result

    def claim(self, message_ids: Sequence[str]) -> defer.Deferred:
        """Mark due messages "sending" (being handed on); fires with the ids claimed.
        A message that is no longer waiting (cancelled meanwhile) is not claimed, so that
        it is not sent."""
        ids = list(message_ids)
        now = self._reactor.seconds()

        def claim(db: sqlite3.Connection) -> List[str]:
            if len(ids) == 1:
                cur = db.execute("UPDATE messages SET status = ?, updated = ? WHERE id = ?"
                                 " AND status IN (?, ?)", (SENDING, now, ids[0], QUEUED, SENDING))
                return ids if cur.rowcount == 1 else []
            # A batch (a round of call files): which still wait, then one executemany.
            waiting = set()
            for start in range(0, len(ids), 500):
                chunk = ids[start:start + 500]
                waiting.update(r[0] for r in db.execute(
                    "SELECT id FROM messages WHERE id IN (" + ", ".join("?" * len(chunk))
                    + ") AND status IN (?, ?)", (*chunk, QUEUED, SENDING)))
            claimed = [i for i in ids if i in waiting]
            db.executemany("UPDATE messages SET status = ?, updated = ? WHERE id = ?",
                           [(SENDING, now, i) for i in claimed])
            return claimed

        return self._submit(claim)

    def report(self, provider_id: "str | Sequence[str]", routes: Sequence[str], status: str,
               detail: Optional[str] = None, *, message_id: Optional[str] = None) -> defer.Deferred:
        """A delivery report about the message one of `routes` knows as `provider_id`
        (two SIMs may hand out the same id: a report is about the route it came from;
        several ids: any of them, for peers that write one id in two forms), or about
        our `message_id` itself (a phone that knows our ids).

        Fires with the id of our message, or None when no message has that provider id.
        Reports arrive out of order and repeated: a message that is already delivered or
        failed keeps that status (the report is still kept).
        """
        now = self._reactor.seconds()
        routes = list(routes)
        ids = [provider_id] if isinstance(provider_id, str) else list(provider_id)
        finals: List[Message] = []
        tell = status in _FINAL and bool(self.final_listeners)
        marks = ", ".join("?" * len(routes))
        id_marks = ", ".join("?" * len(ids))

        def report(db: sqlite3.Connection) -> Optional[str]:
            if message_id is not None:
                row = db.execute("SELECT id, status FROM messages WHERE id = ?"
                                 " AND direction = 'out'", (message_id,)).fetchone()
            elif not routes or not ids:
                return None
            else:
                row = db.execute(
                    "SELECT id, status FROM messages WHERE route IN (" + marks + ")"
                    " AND provider_id IN (" + id_marks + ") AND direction = 'out'"
                    " ORDER BY created DESC LIMIT 1",
                    (*routes, *ids),
                ).fetchone()
            if row is None:
                return None
            found, current = row
            # Providers resend reports (and whole batches of events): keep each once.
            seen = db.execute(
                "SELECT 1 FROM reports WHERE message_id = ? AND status = ? AND detail IS ?",
                (found, status, detail),
            ).fetchone()
            if seen is None:
                db.execute(
                    "INSERT INTO reports (message_id, at, status, detail) VALUES (?, ?, ?, ?)",
                    (found, now, status, detail),
                )
            if _REPORT_RANK.get(status, -1) > _REPORT_RANK.get(current, -1):
                db.execute(
                    "UPDATE messages SET status = ?, reason = ?, updated = ? WHERE id = ?",
                    (status, detail if status == FAILED else None, now, found),
                )
                if tell:
                    finals.extend(_final_rows(db, [found]))
            return found

        d = self._submit(report)
        return d.addCallback(self._tell_finals, finals) if tell else d

    def requeue(self, message_id: str) -> defer.Deferred:
        """Send a failed or cancelled message again (resend button, API); fires with
        True if it was waiting for that."""

        def requeue(db: sqlite3.Connection) -> Optional[str]:
            row = db.execute("SELECT route FROM messages WHERE id = ? AND status IN (?, ?)",
                             (message_id, FAILED, CANCELLED)).fetchone()
            if row is None:
                return None
            db.execute(
                "UPDATE messages SET status = ?, reason = NULL, next_attempt = 0,"
                " attempts = 0, updated = ? WHERE id = ?",
                (QUEUED, self._reactor.seconds(), message_id))
            return row[0]

        d = self._submit(requeue, lambda route: (route,) if route else ())
        return d.addCallback(lambda route: route is not None)

    def cancel(self, message_id: str) -> defer.Deferred:
        """Stop trying a message that is still waiting."""

        def cancel(db: sqlite3.Connection) -> bool:
            cur = db.execute(
                "UPDATE messages SET status = ?, reason = 'cancelled by the owner',"
                " updated = ? WHERE id = ? AND status = ?",
                (CANCELLED, self._reactor.seconds(), message_id, QUEUED),
            )
            return cur.rowcount == 1

        return self._submit(cancel)

    # -- what the dispatcher reads (in the writer's order: it sees every commit) ------

    def due(self, route: str, now: float, limit: int = 200,
            exclude: Iterable[str] = (), queued_only: bool = False) -> defer.Deferred:
        """Messages of `route` waiting to be handed on, oldest first: queued ones, and
        ones left "sending" (a hand-over to finish), unless `queued_only`."""
        exclude = set(exclude)
        statuses = "('queued')" if queued_only else "('queued', 'sending')"

        def due(db: sqlite3.Connection) -> List[Message]:
            rows = db.execute(
                _SELECT + f" WHERE route = ? AND status IN {statuses}"
                " AND next_attempt <= ? ORDER BY created, id LIMIT ?",
                (route, now, limit + len(exclude)),
            ).fetchall()
            found = [row_to_message(r) for r in rows if r[0] not in exclude]
            return found[:limit]

        return self._submit(due)

    def next_due(self, route: str, exclude: Iterable[str] = ()) -> defer.Deferred:
        """When the earliest waiting message of `route` not in `exclude` (those in
        flight) is due; None when none waits."""
        exclude = set(exclude)

        def next_due(db: sqlite3.Connection) -> Optional[float]:
            rows = db.execute(
                "SELECT id, next_attempt FROM messages WHERE route = ?"
                " AND status IN ('queued', 'sending') ORDER BY next_attempt LIMIT ?",
                (route, len(exclude) + 1),
            ).fetchall()
            return next((when for i, when in rows if i not in exclude), None)

        return self._submit(next_due)

    def get(self, message_id: str) -> defer.Deferred:
        def get(db: sqlite3.Connection) -> Optional[Message]:
            row = db.execute(_SELECT + " WHERE id = ?", (message_id,)).fetchone()
            return row_to_message(row) if row else None

        return self._submit(get)

    def state(self, name: str) -> defer.Deferred:
        """What a channel remembered under `name` (see `add`), or None."""

        def state(db: sqlite3.Connection) -> Optional[str]:
            row = db.execute("SELECT value FROM channel_state WHERE name = ?", (name,)).fetchone()
            return row[0] if row else None

        return self._submit(state)

    # -- reads for people: a read-only connection of their own -------------------------

    @property
    def reader(self) -> "StoreReader":
        """Reads for the status page and the API: never in the writer's transaction, so
        that a slow search does not hold up a webhook's commit (WAL: a reader sees the
        last commit and blocks no writer)."""
        if self._reader is None:
            self._reader = StoreReader(self.path, self._reactor, inline=self._inline,
                                       db=self._db if self._inline else None)
        return self._reader


class StoreReader:
    """Read-only queries on a connection of their own, in a thread of their own."""

    def __init__(self, path: str, reactor: Any, inline: bool = False,
                 db: Optional[sqlite3.Connection] = None):
        self.path = path
        self._reactor = reactor
        self._inline = inline
        self._db = db
        self._pool: Any = None

    def _connect(self) -> sqlite3.Connection:
        if self._db is None:
            uri = "file:" + urllib.parse.quote(os.path.abspath(self.path)) + "?mode=ro"
            self._db = sqlite3.connect(uri, uri=True, check_same_thread=False)
        return self._db

    def run(self, fn: Callable[[sqlite3.Connection], Any]) -> defer.Deferred:
        """Run the read-only query `fn(db)` in the reader's thread; a Deferred of its
        result (modules with tables of their own in the store: websmsd.threads)."""
        return self._run(fn)

    def _run(self, fn: Callable[[sqlite3.Connection], Any]) -> defer.Deferred:
        if self._inline:
            return defer.maybeDeferred(fn, self._connect())
        if self._pool is None:
            from twisted.python.threadpool import ThreadPool

            # One thread, one connection: people's reads come one after the other.
            self._pool = ThreadPool(1, 1, "websmsd-store-reader")
            self._pool.start()
            self._reactor.addSystemEventTrigger("during", "shutdown", self.close)
        from twisted.internet.threads import deferToThreadPool

        return deferToThreadPool(self._reactor, self._pool, lambda: fn(self._connect()))

    def close(self) -> None:
        if self._pool is not None:
            pool, self._pool = self._pool, None
            pool.stop()
        if self._db is not None and not self._inline:
            self._db.close()
            self._db = None

    def get(self, message_id: str) -> defer.Deferred:
        def get(db: sqlite3.Connection) -> Optional[Message]:
            row = db.execute(_SELECT + " WHERE id = ?", (message_id,)).fetchone()
            return row_to_message(row) if row else None

        return self._run(get)

    def recent(self, since: float = 0.0, limit: int = 100,
               number: Optional[str] = None) -> defer.Deferred:
        """The newest messages, newest first; `number` matches sender or recipient."""

        def recent(db: sqlite3.Connection) -> List[Message]:
            sql = _SELECT + " WHERE created >= ?"
            args: list = [since]
            if number:
                sql += " AND (recipient LIKE ? ESCAPE '\\' OR sender LIKE ? ESCAPE '\\')"
                pattern = "%" + number.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
                args += [pattern, pattern]
            sql += " ORDER BY created DESC, id DESC LIMIT ?"
            args.append(limit)
            return [row_to_message(r) for r in db.execute(sql, args).fetchall()]

        return self._run(recent)

    def attempts(self, message_id: str) -> defer.Deferred:
        def attempts(db: sqlite3.Connection) -> List[tuple]:
            return db.execute(
                "SELECT at, ok, detail FROM attempts WHERE message_id = ? ORDER BY at",
                (message_id,),
            ).fetchall()

        return self._run(attempts)

    def reports(self, message_ids: Sequence[str]) -> defer.Deferred:
        """{message id: [(at, status, detail)]} for each of `message_ids` that has any."""
        ids = list(message_ids)

        def reports(db: sqlite3.Connection) -> Dict[str, List[tuple]]:
            out: Dict[str, List[tuple]] = {}
            for start in range(0, len(ids), 500):
                chunk = ids[start:start + 500]
                for message_id, at, status, detail in db.execute(
                        "SELECT message_id, at, status, detail FROM reports WHERE message_id IN ("
                        + ", ".join("?" * len(chunk)) + ") ORDER BY at", chunk):
                    out.setdefault(message_id, []).append((at, status, detail))
            return out

        return self._run(reports)

    def counts(self) -> defer.Deferred:
        """{(direction, route, status): count} over the whole store."""

        def counts(db: sqlite3.Connection) -> dict:
            return {
                (d, r, s): n
                for d, r, s, n in db.execute(
                    "SELECT direction, route, status, COUNT(*) FROM messages"
                    " GROUP BY direction, route, status"
                )
            }

        return self._run(counts)

    def waiting(self) -> defer.Deferred:
        """Per route: (messages waiting, the oldest one's creation time, its last error)."""

        def waiting(db: sqlite3.Connection) -> Dict[str, tuple]:
            out = {}
            for route, n, oldest in db.execute(
                    "SELECT route, COUNT(*), MIN(created) FROM messages"
                    " WHERE status IN ('queued', 'sending') GROUP BY route"):
                row = db.execute(
                    "SELECT reason FROM messages WHERE route = ? AND status IN ('queued', 'sending')"
                    " AND reason IS NOT NULL ORDER BY updated DESC LIMIT 1", (route,)).fetchone()
                out[route] = (n, oldest, row[0] if row else None)
            return out

        return self._run(waiting)


_FINAL = (DELIVERED, FAILED)


def _final_rows(db: sqlite3.Connection, ids: Sequence[str]) -> List[Message]:
    """The outbound messages among `ids` that are delivered or failed now."""
    out: List[Message] = []
    for start in range(0, len(ids), 500):
        chunk = list(ids[start:start + 500])
        out += [row_to_message(r) for r in db.execute(
            _SELECT + " WHERE id IN (" + ", ".join("?" * len(chunk)) + ")"
            " AND direction = 'out' AND status IN (?, ?)", (*chunk, DELIVERED, FAILED))]
    return out


def _routes_of(routes: Any, result: Any) -> Iterable[str]:
    return routes(result) if callable(routes) else routes


def _split_sql(script: str) -> List[str]:
    """Statements of a schema script (ours: no `;` inside strings or triggers)."""
    lines = [l for l in script.splitlines() if not l.lstrip().startswith("--")]
    return [s.strip() for s in "\n".join(lines).split(";") if s.strip()]
