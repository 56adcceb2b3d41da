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
import os
import queue
import sqlite3
import threading
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence

from twisted.internet import defer
from twisted.logger import Logger

from websmsd.message import CANCELLED, DELIVERED, FAILED, QUEUED, SENDING, SENT, Message

log = Logger()

_COLUMNS = (
    "id", "direction", "channel", "interface", "recipient", "sender", "body", "status",
    "reason", "attempts", "created", "updated", "next_attempt", "provider_id",
    "dedupe_key", "progress",
)
_SELECT = "SELECT " + ", ".join(_COLUMNS) + " FROM messages"
_INSERT = (
    "INSERT INTO messages (" + ", ".join(_COLUMNS) + ") VALUES ("
    + ", ".join("?" * len(_COLUMNS)) + ") ON CONFLICT (dedupe_key) DO NOTHING"
)
# Columns a caller may change with update(); anything else is a programming error.
_UPDATABLE = frozenset(
    {"status", "reason", "attempts", "next_attempt", "provider_id", "progress", "body"}
)
_MAX_BATCH = 1000
# How far along a message is, for delivery reports that arrive late or twice: a report
# moves a message forward only.
_REPORT_RANK = {QUEUED: 0, SENDING: 1, SENT: 2, DELIVERED: 3, FAILED: 3}


def _row_to_message(row: Sequence[Any]) -> Message:
    return Message(**dict(zip(_COLUMNS, row)))


def _message_row(m: Message) -> tuple:
    return tuple(getattr(m, c) for c in _COLUMNS)


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
        self.listeners: List[Callable[[str], None]] = []  # told "in"/"out" after commits
        self.commits = 0  # transactions committed, for metrics
        self.batched = 0  # operations committed

    # -- opening, schema ------------------------------------------------------------

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

    def _submit(self, fn: Callable[[sqlite3.Connection], Any], kind: str = "") -> defer.Deferred:
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
            if kind:
                self._notify({kind})
            return defer.succeed(result)
        d = defer.Deferred()
        self._queue.put((fn, d, kind))
        return d

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
            return [(d, False, StoreError(f"commit failed: {e}"), kind) for fn, d, kind in batch]

    @staticmethod
    def _transaction(db: sqlite3.Connection, batch: list, isolate: bool) -> list:
        results = []
        db.execute("BEGIN IMMEDIATE")
        for fn, d, kind in batch:
            if not isolate:
                try:
                    results.append((d, True, fn(db), kind))
                except Exception as e:
                    db.execute("ROLLBACK")
                    raise _OperationFailed() from e
                continue
            db.execute("SAVEPOINT op")
            try:
                value = fn(db)
            except Exception as e:
                db.execute("ROLLBACK TO op")
                results.append((d, False, e, kind))
            else:
                results.append((d, True, value, kind))
            db.execute("RELEASE op")
        db.execute("COMMIT")
        return results

    def _deliver(self, results: list) -> None:
        self.commits += 1
        self.batched += len(results)
        kinds = set()
        for d, ok, value, kind in results:
            if ok:
                if kind:
                    kinds.add(kind)
                d.callback(value)
            else:
                d.errback(value)
        self._notify(kinds)

    def _notify(self, kinds: Iterable[str]) -> None:
        for kind in kinds:
            for listener in self.listeners:
                listener(kind)

    # -- operations -------------------------------------------------------------------

    def add(self, messages: List[Message]) -> defer.Deferred:
        """Store new messages; fires with one bool each: True if new, False if a copy
        with the same dedupe_key was already stored (the peer resent it)."""
        now = self._reactor.seconds()
        rows = []
        for m in messages:
            m.updated = now
            rows.append(_message_row(m))

        def add(db: sqlite3.Connection) -> List[bool]:
            out = []
            for row in rows:
                cur = db.execute(_INSERT, row)
                out.append(cur.rowcount == 1)
            return out

        kinds = {m.direction for m in messages}
        return self._submit(add, kinds.pop() if len(kinds) == 1 else "in")

    def get(self, message_id: str) -> defer.Deferred:
        def get(db: sqlite3.Connection) -> Optional[Message]:
            row = db.execute(_SELECT + " WHERE id = ?", (message_id,)).fetchone()
            return _row_to_message(row) if row else None

        return self._submit(get)

    def due(self, direction: str, now: float, limit: int = 200,
            exclude: Iterable[str] = ()) -> defer.Deferred:
        """Messages of `direction` waiting to be handed on, oldest first."""
        exclude = set(exclude)

        def due(db: sqlite3.Connection) -> List[Message]:
            rows = db.execute(
                _SELECT + " WHERE direction = ? AND status IN ('queued', 'sending')"
                " AND next_attempt <= ? ORDER BY created, id LIMIT ?",
                (direction, now, limit + len(exclude)),
            ).fetchall()
            found = [_row_to_message(r) for r in rows if r[0] not in exclude]
            return found[:limit]

        return self._submit(due)

    def next_due(self, direction: str, exclude: Iterable[str] = ()) -> defer.Deferred:
        """When the earliest waiting message of `direction` not in `exclude` (those in
        flight) is due; None when none waits."""
        exclude = set(exclude)

        def next_due(db: sqlite3.Connection) -> Optional[float]:
            rows = db.execute(
                "SELECT id, next_attempt FROM messages WHERE direction = ?"
                " AND status IN ('queued', 'sending') ORDER BY next_attempt LIMIT ?",
                (direction, len(exclude) + 1),
            ).fetchall()
            return next((when for i, when in rows if i not in exclude), None)

        return self._submit(next_due)

    def update(self, changes: List[tuple], attempt: Optional[List[tuple]] = None) -> defer.Deferred:
        """Apply `[(message_id, {column: value})]` and record `[(message_id, ok, detail)]`
        attempts, all in one transaction."""
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
            groups.setdefault(cols, []).append([fields[c] for c in cols] + [now, message_id])

        def update(db: sqlite3.Connection) -> int:
            n = 0
            for cols, rows in groups.items():
                sets = ", ".join(f"{c} = ?" for c in cols)
                cur = db.executemany(
                    f"UPDATE messages SET {sets}, updated = ? WHERE id = ?", rows)
                n += cur.rowcount
            for message_id, ok, detail in attempt or ():
                db.execute(
                    "INSERT INTO attempts (message_id, at, ok, detail) VALUES (?, ?, ?, ?)",
                    (message_id, now, 1 if ok else 0, detail),
                )
            return n

        return self._submit(update)

    def report(self, provider_id: str, status: str, detail: Optional[str] = None,
               direction: str = "out") -> defer.Deferred:
        """A delivery report from a provider about the message it knows as `provider_id`.

        Fires with the id of our message, or None when no message has that provider id.
        Reports arrive out of order and repeated: a message that is already delivered or
        failed keeps that status (the report is still kept).
        """
        now = self._reactor.seconds()

        def report(db: sqlite3.Connection) -> Optional[str]:
            row = db.execute(
                "SELECT id, status FROM messages WHERE provider_id = ? AND direction = ?"
                " ORDER BY created DESC LIMIT 1", (provider_id, direction),
            ).fetchone()
            if row is None:
                return None
            message_id, current = row
            # Providers resend reports (and whole batches of events): keep each once.
            seen = db.execute(
                "SELECT 1 FROM reports WHERE message_id = ? AND status = ? AND detail IS ?",
                (message_id, status, detail),
            ).fetchone()
            if seen is None:
                db.execute(
                    "INSERT INTO reports (message_id, at, status, detail) VALUES (?, ?, ?, ?)",
                    (message_id, now, status, detail),
                )
            if _REPORT_RANK.get(status, -1) > _REPORT_RANK.get(current, -1):
                db.execute(
                    "UPDATE messages SET status = ?, reason = ?, updated = ? WHERE id = ?",
                    (status, detail if status == FAILED else None, now, message_id),
                )
            return message_id

        return self._submit(report)

    def reports(self, message_id: str) -> defer.Deferred:
        def reports(db: sqlite3.Connection) -> List[tuple]:
            return db.execute(
                "SELECT at, status, detail FROM reports WHERE message_id = ? ORDER BY at",
                (message_id,),
            ).fetchall()

        return self._submit(reports)

    def claim(self, message_id: str, attempts: int) -> defer.Deferred:
        """Mark a due message "sending" for its `attempts`-th try; fires False when it is
        no longer waiting (cancelled meanwhile), so that it is not sent."""

        def claim(db: sqlite3.Connection) -> bool:
            cur = db.execute(
                "UPDATE messages SET status = ?, attempts = ?, updated = ? WHERE id = ?"
                " AND status IN (?, ?)",
                (SENDING, attempts, self._reactor.seconds(), message_id, QUEUED, SENDING),
            )
            return cur.rowcount == 1

        return self._submit(claim)

    def requeue(self, message_id: str) -> defer.Deferred:
        """Send a failed or cancelled message again (resend button, API)."""

        def requeue(db: sqlite3.Connection) -> bool:
            cur = db.execute(
                "UPDATE messages SET status = ?, reason = NULL, next_attempt = 0,"
                " attempts = 0, updated = ? WHERE id = ? AND status IN (?, ?)",
                (QUEUED, self._reactor.seconds(), message_id, FAILED, CANCELLED),
            )
            return cur.rowcount == 1

        return self._submit(requeue, "out")

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

    def recent(self, since: float = 0.0, limit: int = 100, number: Optional[str] = None) -> defer.Deferred:
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
            return [_row_to_message(r) for r in db.execute(sql, args).fetchall()]

        return self._submit(recent)

    def attempts(self, message_id: str) -> defer.Deferred:
        def attempts(db: sqlite3.Connection) -> List[tuple]:
            return db.execute(
                "SELECT at, ok, detail FROM attempts WHERE message_id = ? ORDER BY at",
                (message_id,),
            ).fetchall()

        return self._submit(attempts)

    def counts(self) -> defer.Deferred:
        """{(direction, interface, status): count} over the whole store."""

        def counts(db: sqlite3.Connection) -> dict:
            return {
                (d, i, s): n
                for d, i, s, n in db.execute(
                    "SELECT direction, interface, status, COUNT(*) FROM messages"
                    " GROUP BY direction, interface, status"
                )
            }

        return self._submit(counts)


def _split_sql(script: str) -> List[str]:
    """Statements of a schema script (ours: no `;` inside strings or triggers)."""
    lines = [l for l in script.splitlines() if not l.lstrip().startswith("--")]
    return [s.strip() for s in "\n".join(lines).split(";") if s.strip()]
