"""The store: schema, dedupe, lifecycle queries, reports, group commit."""

import sqlite3
import threading
import time

import pytest

from websmsd.message import IN, OUT, Message
from websmsd.store import Store, StoreError, schema_scripts


def result(d):
    out = []
    d.addBoth(out.append)
    assert out, "Deferred did not fire"
    if hasattr(out[0], "raiseException"):
        out[0].raiseException()
    return out[0]


@pytest.fixture
def store(tmp_path):
    s = Store(str(tmp_path / "db.sqlite3"), run_inline=True)
    s.open()
    yield s
    s.close()


def msg(body="hi", direction=IN, **kw):
    return Message(direction, kw.pop("interface", ""), kw.pop("to", "+1555"),
                   kw.pop("sender", "+1666"), body, **kw)


def test_fresh_store_has_every_schema_version_and_wal(tmp_path, store):
    db = sqlite3.connect(store.path)
    assert db.execute("PRAGMA user_version").fetchone()[0] == len(schema_scripts()) >= 2
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert {"messages", "attempts", "reports"} <= tables


def test_upgrade_from_version_1_keeps_rows_and_backs_up(tmp_path):
    path = tmp_path / "old.sqlite3"
    db = sqlite3.connect(path)
    from websmsd.store import _split_sql

    for statement in _split_sql(schema_scripts()[0]):
        db.execute(statement)
    db.execute("INSERT INTO messages (id, direction, channel, interface, recipient, sender,"
               " body, status, created, updated) VALUES ('00000000000000000001', 'out', 'agi',"
               " '', '+1', '+2', 'old', 'sent', 1, 1)")
    db.execute("PRAGMA user_version=1")
    db.commit()
    db.close()
    s = Store(str(path), run_inline=True)
    s.open()
    assert result(s.get("00000000000000000001")).body == "old"
    assert (tmp_path / "old.sqlite3.v1.bak").exists()
    assert result(s.report("P1", "delivered")) is None
    s.close()


def test_newer_schema_is_refused(tmp_path):
    path = tmp_path / "new.sqlite3"
    db = sqlite3.connect(path)
    db.execute("PRAGMA user_version=99")
    db.commit()
    db.close()
    with pytest.raises(StoreError, match="newer"):
        Store(str(path), run_inline=True).open()


def test_dedupe_key_stores_a_resent_message_once(store):
    assert result(store.add([msg(dedupe_key="x\x1fSM1")])) == [True]
    assert result(store.add([msg(dedupe_key="x\x1fSM1"), msg(dedupe_key=None)])) == [False, True]
    assert len(result(store.recent())) == 2


def test_due_is_oldest_first_and_skips_in_flight_and_future(store):
    a, b, c = msg("a", created=1.0), msg("b", created=2.0), msg("c", created=3.0, next_attempt=50.0)
    result(store.add([c, b, a]))
    assert [m.body for m in result(store.due(IN, 10.0))] == ["a", "b"]
    assert [m.body for m in result(store.due(IN, 10.0, exclude=[a.id]))] == ["b"]
    assert [m.body for m in result(store.due(IN, 60.0))] == ["a", "b", "c"]
    assert result(store.due(OUT, 60.0)) == []
    assert result(store.next_due(IN)) == 0.0


def test_update_records_attempts_and_refuses_unknown_columns(store):
    m = msg(direction=OUT)
    result(store.add([m]))
    result(store.update([(m.id, {"status": "sent", "attempts": 1})], [(m.id, True, "200")]))
    assert result(store.get(m.id)).status == "sent"
    [(at, ok, detail)] = result(store.attempts(m.id))
    assert (ok, detail) == (1, "200")
    with pytest.raises(ValueError):
        store.update([(m.id, {"direction": "in"})])


def test_reports_move_a_message_forward_only(store):
    m = msg(direction=OUT, provider_id="P-1", status="sent")
    result(store.add([m]))
    assert result(store.report("P-1", "delivered")) == m.id
    assert result(store.report("P-1", "sent")) == m.id  # late, out of order
    assert result(store.get(m.id)).status == "delivered"
    assert result(store.report("P-1", "delivered")) == m.id  # resent by the provider
    assert [r[1] for r in result(store.reports(m.id))] == ["delivered", "sent"]
    assert result(store.report("unknown", "delivered")) is None
    f = msg(direction=OUT, provider_id="P-2", status="sent")
    result(store.add([f]))
    result(store.report("P-2", "failed", "30003 unreachable"))
    got = result(store.get(f.id))
    assert (got.status, got.reason) == ("failed", "30003 unreachable")


def test_requeue_and_cancel(store):
    m = msg(direction=OUT, status="failed", attempts=10, reason="gave up")
    q = msg(direction=OUT)
    result(store.add([m, q]))
    assert result(store.requeue(m.id)) is True
    got = result(store.get(m.id))
    assert (got.status, got.attempts, got.reason) == ("queued", 0, None)
    assert result(store.requeue(q.id)) is False  # not failed: nothing to do
    assert result(store.cancel(q.id)) is True
    assert result(store.get(q.id)).status == "cancelled"


def test_search_by_number_treats_like_wildcards_literally(store):
    result(store.add([msg(to="+1555"), msg(to="+1_55"), msg(to="+1999", sender="100%")]))
    assert [m.recipient for m in result(store.recent(number="_55"))] == ["+1_55"]
    assert [m.sender for m in result(store.recent(number="%"))] == ["100%"]
    assert len(result(store.recent(number="55"))) == 2


def test_counts(store):
    result(store.add([msg(), msg(), msg(direction=OUT, interface="api-1", status="failed")]))
    assert result(store.counts()) == {("in", "", "queued"): 2, ("out", "api-1", "failed"): 1}


class ThreadReactor:
    """Just enough reactor for the writer thread: run callbacks at once, in that thread."""

    def callFromThread(self, f, *args):
        f(*args)

    def seconds(self):
        return time.time()


def test_group_commit_batches_concurrent_writers(tmp_path):
    s = Store(str(tmp_path / "g.sqlite3"), ThreadReactor())
    s.open()
    done, fired = threading.Event(), []
    n = 2000

    def got(value):
        fired.append(value)
        if len(fired) == n:
            done.set()

    for i in range(n):
        s.add([msg(f"m{i}")]).addCallback(got)
    assert done.wait(30)
    assert all(v == [True] for v in fired)
    assert s.batched == n
    assert s.commits < n / 4, f"{s.commits} commits for {n} writes: no group commit"
    s._queue.put(None)
    s._thread.join()


def test_a_failed_commit_fails_every_operation_of_the_batch(tmp_path):
    s = Store(str(tmp_path / "f.sqlite3"), ThreadReactor())
    s.open()

    class FailingCommit:
        def __init__(self, db):
            self.db = db

        def execute(self, sql, *args):
            if sql == "COMMIT":
                raise sqlite3.OperationalError("disk I/O error")
            return self.db.execute(sql, *args)

        def __getattr__(self, name):
            return getattr(self.db, name)

    batch = [(lambda db: db.execute("INSERT INTO reports VALUES ('x', 1, 's', NULL)"), None, "")]
    results = s._run_batch(FailingCommit(s._db), batch)
    [(d, ok, error, kind)] = results
    assert not ok and isinstance(error, StoreError) and "disk I/O error" in str(error)
    assert s._db.execute("SELECT COUNT(*) FROM reports").fetchone()[0] == 0
    s._queue.put(None)
    s._thread.join()


def test_one_failing_operation_fails_alone(tmp_path):
    s = Store(str(tmp_path / "i.sqlite3"), ThreadReactor())
    s.open()
    result_of_add = []
    s._inline = True  # add the parent rows synchronously
    s.add([msg(id="x" * 20)]).addBoth(result_of_add.append)
    s._inline = False

    def good(db):
        db.execute("INSERT INTO reports VALUES ('xxxxxxxxxxxxxxxxxxxx', 1, 'ok', NULL)")
        return "fine"

    def bad(db):
        db.execute("INSERT INTO reports VALUES ('xxxxxxxxxxxxxxxxxxxx', 1, 'half', NULL)")
        raise ValueError("a bug")

    results = s._run_batch(s._db, [(good, None, ""), (bad, None, ""), (good, None, "")])
    assert [(ok, value if ok else str(value)) for _, ok, value, _ in results] == [
        (True, "fine"), (False, "a bug"), (True, "fine")]
    assert s._db.execute("SELECT status FROM reports").fetchall() == [("ok",), ("ok",)]
    s._queue.put(None)
    s._thread.join()
