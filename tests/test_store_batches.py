"""The writer's batches: the new messages of several `add` calls stored together.

Each statement the writer runs gives up the GIL and must take it back from the reactor
thread; so a run of `add` calls in one batch is one INSERT (and a batch of nothing but
new messages is committed by SQLite's own transaction around that INSERT).  These tests
drive the writer's batch by hand (the jobs `add` queued, run as one batch) and check
what is stored, what each caller is told, and which statements ran.
"""

import sqlite3
import time

import pytest

from websmsd.message import IN, Message
from websmsd.store import Store


class ThreadReactor:
    def callFromThread(self, f, *args):
        f(*args)

    def seconds(self):
        return time.time()


class Recording:
    """The writer's connection, recording each statement's first word (INSERT, BEGIN...)
    and how many rows each INSERT carried."""

    def __init__(self, db, fail_on=None):
        self.db = db
        self.statements = []
        self.fail_on = fail_on

    def execute(self, sql, *args):
        word = sql.split(None, 1)[0].upper()
        if word == "INSERT" and sql.startswith("INSERT INTO messages"):
            word = f"INSERT x{sql.count('(?')}"
        self.statements.append(word)
        if self.fail_on is not None and self.fail_on in sql:
            raise sqlite3.OperationalError("disk I/O error")
        return self.db.execute(sql, *args)

    def __getattr__(self, name):
        return getattr(self.db, name)


@pytest.fixture
def store(tmp_path):
    s = Store(str(tmp_path / "b.sqlite3"), ThreadReactor())
    s.open()
    s._queue.put(None)  # stop the writer thread: the batches are run by hand
    s._thread.join()
    yield s
    s._db.close()


def msg(body, **kw):
    return Message(IN, "callfile", "+1555", "+1666", body, **kw)


def run(store, db=None):
    """Run everything queued as one batch, as the writer would; the answers."""
    batch = []
    while not store._queue.empty():
        batch.append(store._queue.get())
    results = store._run_batch(db or store._db, batch)
    store._deliver(results)
    return results


def outcome(d):
    got = []
    d.addBoth(got.append)
    return got[0]


def bodies(store):
    return sorted(r[0] for r in store._db.execute("SELECT body FROM messages"))


def test_a_batch_of_new_messages_is_one_insert_without_begin_or_commit(store):
    calls = [store.add([msg(f"m{i}")]) for i in range(5)] + [store.add([msg("x"), msg("y")])]
    db = Recording(store._db)
    run(store, db)
    assert db.statements == ["INSERT x7"]
    assert [outcome(d) for d in calls] == [[True]] * 5 + [[True, True]]
    other = sqlite3.connect(store.path)  # committed: another connection sees it
    assert other.execute("SELECT COUNT(*) FROM messages").fetchone()[0] == 7
    assert store.commits == 1 and store.batched == 6


def test_resent_copies_in_one_batch_and_of_stored_messages_are_told_apart(store):
    first = store.add([msg("a", dedupe_key="k1")])
    run(store)
    calls = [
        store.add([msg("a again", dedupe_key="k1")]),  # stored before
        store.add([msg("b", dedupe_key="k2"), msg("c")]),
        store.add([msg("b again", dedupe_key="k2")]),  # earlier in this batch
        store.add([msg("d", dedupe_key="k3")]),
    ]
    db = Recording(store._db)
    run(store, db)
    assert outcome(first) == [True]
    assert [outcome(d) for d in calls] == [[False], [True, True], [False], [True]]
    assert bodies(store) == ["a", "b", "c", "d"]
    assert db.statements == ["BEGIN", "SELECT", "INSERT x3", "COMMIT"]


def test_channel_state_and_other_operations_keep_their_order(store):
    store.add([msg("1")], state=("sim1", "one"))
    read_between = store.state("sim1")
    store.add([msg("2")], state=("sim1", "two"))
    store.add([msg("3")])
    read_after = store.state("sim1")
    db = Recording(store._db)
    run(store, db)
    assert outcome(read_between) == "one"
    assert outcome(read_after) == "two"
    assert bodies(store) == ["1", "2", "3"]
    assert db.statements == ["BEGIN", "INSERT x1", "INSERT", "SELECT", "INSERT x2",
                             "INSERT", "SELECT", "COMMIT"]


def test_more_rows_than_one_statement_takes(store):
    calls = [store.add([msg(f"m{i:03d}") for i in range(30)]) for _ in range(4)]
    db = Recording(store._db)
    run(store, db)
    assert [s for s in db.statements if s.startswith("INSERT")] == ["INSERT x50", "INSERT x50",
                                                                  "INSERT x20"]
    assert all(outcome(d) == [True] * 30 for d in calls)
    assert len(bodies(store)) == 120


def test_one_add_that_cannot_be_stored_fails_alone(store):
    taken = msg("first")
    first = store.add([taken])
    run(store)
    assert outcome(first) == [True]
    calls = [store.add([msg("ok 1")]), store.add([msg("same id", id=taken.id)]),
             store.add([msg("ok 2")])]
    run(store)
    ok1, bad, ok2 = (outcome(d) for d in calls)
    assert ok1 == [True] and ok2 == [True]
    assert isinstance(bad.value, sqlite3.IntegrityError)
    assert bodies(store) == ["first", "ok 1", "ok 2"]


def test_a_failed_commit_of_new_messages_fails_them_all_and_stores_nothing(store):
    calls = [store.add([msg(f"m{i}")]) for i in range(3)]
    run(store, Recording(store._db, fail_on="INSERT INTO messages"))
    for d in calls:
        failure = outcome(d)
        assert "disk I/O error" in str(failure.value)
    assert bodies(store) == []
