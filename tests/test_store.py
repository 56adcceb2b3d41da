"""The store: schema, dedupe, lifecycle queries, reports, group commit."""

import sqlite3
import threading
import time

import pytest

from conftest import fired
from websmsd.message import IN, OUT, Message
from websmsd.store import Store, StoreError, schema_scripts


@pytest.fixture
def store(tmp_path):
    s = Store(str(tmp_path / "db.sqlite3"), run_inline=True)
    s.open()
    yield s
    s.close()


def msg(body="hi", direction=IN, **kw):
    route = kw.pop("route", "callfile" if direction == IN else "itsp")
    return Message(direction, route, kw.pop("to", "+1555"), kw.pop("sender", "+1666"), body,
                   **kw)


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
    old = fired(s.get("00000000000000000001"))
    assert (old.body, old.route, old.source) == ("old", "itsp", "agi")
    assert (tmp_path / "old.sqlite3.v1.bak").exists()
    assert fired(s.report("P1", ["itsp"], "delivered")) is None
    s.close()


def test_upgrade_of_a_store_written_by_the_release_before_routes(tmp_path):
    # tests/fixtures/store/websmsd-v4.sqlite3 was written by the release before the
    # channel seam (schema 4: `channel` and `interface` columns, no routes).
    import shutil
    from pathlib import Path

    path = tmp_path / "websmsd.sqlite3"
    shutil.copy(Path(__file__).parent / "fixtures" / "store" / "websmsd-v4.sqlite3", path)
    s = Store(str(path), run_inline=True)
    s.open()
    backup = tmp_path / "websmsd.sqlite3.v4.bak"
    assert backup.exists()
    assert sqlite3.connect(backup).execute("PRAGMA user_version").fetchone()[0] == 4
    got = {m.id[-1]: m for m in fired(s.reader.recent(limit=10))}
    assert {k: (m.direction, m.source, m.route, m.status) for k, m in got.items()} == {
        "1": ("in", "webhook", "callfile", "sent"),
        "2": ("in", "webhook:tw", "callfile", "queued"),
        "3": ("out", "agi", "itsp:api-1", "sent"),
        "4": ("out", "cli", "itsp:api-1", "delivered"),
        "5": ("out", "api", "itsp", "queued"),
        "6": ("out", "agi", "itsp:api-2", "failed"),
    }
    assert (got["2"].progress, got["2"].provider_id, got["2"].dedupe_key) == (1, "SM123", "tw\x1fSM123")
    assert (got["5"].attempts, got["5"].next_attempt, got["5"].reason) == (3, 1_780_000_500.0, "HTTP 503")
    # What was due is due on its route; reports and attempts are kept; a report finds
    # its message by route.
    assert [m.body for m in fired(s.due("itsp", 1_780_001_000.0))] == ["outbound, retrying"]
    assert [m.body for m in fired(s.due("callfile", 1_780_001_000.0))] == ["inbound, waiting for part 2"]
    assert [r[1] for r in fired(s.reader.reports([got["4"].id]))[got["4"].id]] == ["delivered"]
    assert [r[2] for r in fired(s.reader.attempts(got["6"].id))] == ["HTTP 400: bad number"]
    assert fired(s.report("prov-1", ["itsp:api-2"], "delivered")) is None
    assert fired(s.report("prov-1", ["itsp:api-1"], "delivered")) == got["3"].id
    assert s.owners == {"+15550001000": "webhook:tw"}
    db = sqlite3.connect(path)
    columns = [r[1] for r in db.execute("PRAGMA table_info(messages)")]
    assert "channel" not in columns and "interface" not in columns
    assert {"route", "source", "fallback"} <= set(columns)
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
    assert fired(store.add([msg(dedupe_key="x\x1fSM1")])) == [True]
    assert fired(store.add([msg(dedupe_key="x\x1fSM1"), msg(dedupe_key=None)])) == [False, True]
    assert len(fired(store.reader.recent())) == 2


def test_due_is_oldest_first_and_skips_in_flight_and_future(store):
    a, b, c = msg("a", created=1.0), msg("b", created=2.0), msg("c", created=3.0, next_attempt=50.0)
    fired(store.add([c, b, a, msg("d", direction=OUT, route="itsp:x")]))
    assert [m.body for m in fired(store.due("callfile", 10.0))] == ["a", "b"]
    assert [m.body for m in fired(store.due("callfile", 10.0, exclude=[a.id]))] == ["b"]
    assert [m.body for m in fired(store.due("callfile", 60.0))] == ["a", "b", "c"]
    assert fired(store.due("itsp", 60.0)) == []
    assert [m.body for m in fired(store.due("itsp:x", 60.0))] == ["d"]
    assert fired(store.next_due("callfile")) == 0.0


def test_claim_takes_only_what_still_waits(store):
    a, b, c = msg("a", direction=OUT), msg("b", direction=OUT), msg("c", direction=OUT)
    fired(store.add([a, b, c]))
    fired(store.cancel(b.id))
    assert fired(store.claim([a.id, b.id, c.id])) == [a.id, c.id]
    assert fired(store.get(a.id)).status == "sending"
    assert fired(store.claim([a.id])) == [a.id]  # "sending" (after a crash) is claimed again


def test_fallback_routes_round_trip_and_reroute(store):
    m = msg(direction=OUT, route="itsp:a", fallback=("itsp:b", "goip:sim1"))
    fired(store.add([m]))
    assert fired(store.get(m.id)).fallback == ("itsp:b", "goip:sim1")
    woken = []
    store.listeners.append(woken.append)
    fired(store.update([(m.id, {"route": "itsp:b", "fallback": ("goip:sim1",)})], wake=["itsp:b"]))
    got = fired(store.get(m.id))
    assert (got.route, got.fallback) == ("itsp:b", ("goip:sim1",))
    assert woken == ["itsp:b"]


def test_owners_remember_where_messages_to_each_number_came_in(tmp_path, store):
    fired(store.add([msg(to="+4670", source="webhook:tw", created=1.0)]))
    fired(store.add([msg(to="+4670", source="goip:sim1", created=2.0),
                      msg(to="+4671", source="goip:sim2", created=2.0)]))
    assert store.owners == {"+4670": "goip:sim1", "+4671": "goip:sim2"}
    store.close()
    again = Store(store.path, run_inline=True)
    again.open()
    assert again.owners == {"+4670": "goip:sim1", "+4671": "goip:sim2"}
    again.close()


def test_update_records_attempts_and_refuses_unknown_columns(store):
    m = msg(direction=OUT)
    fired(store.add([m]))
    fired(store.update([(m.id, {"status": "sent", "attempts": 1})], [(m.id, True, "200")]))
    assert fired(store.get(m.id)).status == "sent"
    [(at, ok, detail)] = fired(store.reader.attempts(m.id))
    assert (ok, detail) == (1, "200")
    with pytest.raises(ValueError):
        store.update([(m.id, {"direction": "in"})])


def test_reports_move_a_message_forward_only(store):
    m = msg(direction=OUT, provider_id="P-1", status="sent")
    fired(store.add([m]))
    assert fired(store.report("P-1", ["itsp"], "delivered")) == m.id
    assert fired(store.report("P-1", ["itsp"], "sent")) == m.id  # late, out of order
    assert fired(store.get(m.id)).status == "delivered"
    assert fired(store.report("P-1", ["itsp"], "delivered")) == m.id  # resent by the provider
    assert [r[1] for r in fired(store.reader.reports([m.id]))[m.id]] == ["delivered", "sent"]
    assert fired(store.report("unknown", ["itsp"], "delivered")) is None
    f = msg(direction=OUT, provider_id="P-2", status="sent")
    fired(store.add([f]))
    fired(store.report("P-2", ["itsp"], "failed", "30003 unreachable"))
    got = fired(store.get(f.id))
    assert (got.status, got.reason) == ("failed", "30003 unreachable")


def test_reports_are_scoped_by_route(store):
    # Two SIMs hand out the same message ids: a report is about its own route's message.
    a = msg("a", direction=OUT, route="goip:sim1", provider_id="17", status="sent", created=1.0)
    b = msg("b", direction=OUT, route="goip:sim2", provider_id="17", status="sent", created=2.0)
    fired(store.add([a, b]))
    assert fired(store.report("17", ["goip:sim1"], "delivered")) == a.id
    assert fired(store.get(b.id)).status == "sent"
    assert fired(store.report("17", ["goip:sim3"], "delivered")) is None


def test_requeue_and_cancel(store):
    m = msg(direction=OUT, status="failed", attempts=10, reason="gave up")
    q = msg(direction=OUT)
    fired(store.add([m, q]))
    assert fired(store.requeue(m.id)) is True
    got = fired(store.get(m.id))
    assert (got.status, got.attempts, got.reason) == ("queued", 0, None)
    assert fired(store.requeue(q.id)) is False  # not failed: nothing to do
    assert fired(store.cancel(q.id)) is True
    assert fired(store.get(q.id)).status == "cancelled"


def test_search_by_number_treats_like_wildcards_literally(store):
    fired(store.add([msg(to="+1555"), msg(to="+1_55"), msg(to="+1999", sender="100%")]))
    assert [m.recipient for m in fired(store.reader.recent(number="_55"))] == ["+1_55"]
    assert [m.sender for m in fired(store.reader.recent(number="%"))] == ["100%"]
    assert len(fired(store.reader.recent(number="55"))) == 2


def test_counts(store):
    fired(store.add([msg(), msg(), msg(direction=OUT, route="itsp:api-1", status="failed")]))
    assert fired(store.reader.counts()) == {("in", "callfile", "queued"): 2,
                                             ("out", "itsp:api-1", "failed"): 1}


def test_reads_for_people_use_a_read_only_connection(tmp_path):
    s = Store(str(tmp_path / "r.sqlite3"), ThreadReactor())
    s.open()
    reader = s.reader
    db = reader._connect()
    with pytest.raises(sqlite3.OperationalError, match="readonly"):
        db.execute("DELETE FROM messages")
    assert db is not s._db
    reader.close()
    s._queue.put(None)
    s._thread.join()


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
