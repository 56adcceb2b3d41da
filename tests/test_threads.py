"""Conversations (websmsd.threads): the index, its catch-up, and the pages' reads."""

import itertools
import sqlite3

import pytest
from twisted.internet import defer

from conftest import fired
from websmsd.message import DELIVERED, IN, OUT, QUEUED, SENT, Message
from websmsd.routing import fan_out
from websmsd.store import Store, _split_sql, schema_scripts
from websmsd.threads import MARK, Entry, Results, Threads, plan_search

OWN = "+46701234567"
OWN_KEY = "46701234567"
PEER = "+12025550160"
PEER_KEY = "12025550160"

_clock = itertools.count(1_700_000_000)


@pytest.fixture
def store(tmp_path):
    s = Store(str(tmp_path / "db.sqlite3"), run_inline=True)
    s.open()
    yield s
    s.close()


@pytest.fixture
def threads(store):
    return Threads(store)


def sms(direction, own=OWN, peer=PEER, body="hi", created=None, **kw):
    route = kw.pop("route", "callfile" if direction == IN else "itsp")
    to, sender = (own, peer) if direction == IN else (peer, own)
    m = Message(direction, route, to, sender, body, **kw)
    m.created = float(next(_clock)) if created is None else created
    return m


def add(store, *messages):
    fired(store.add(list(messages)))
    return messages[0] if len(messages) == 1 else messages


def shape(entries):
    return [(e.message.direction, e.message.body, e.own, e.peer) for e in entries]


def test_one_conversation_whatever_the_spelling_of_either_number(store, threads):
    add(store, sms(IN, OWN, PEER, "one"),
        sms(OUT, "0046701234567", "12025550160", "two"),
        sms(IN, "46701234567", "001 202 555 0160", "three"),
        sms(IN, OWN, "+12025550199", "other"))
    convs = fired(threads.conversations("owner", OWN_KEY))
    assert [(c.peer_key, c.count, c.unread, c.last.message.body) for c in convs] == [
        ("12025550199", 1, 1, "other"), (PEER_KEY, 3, 2, "three")]
    # Display forms are those of the newest entry.
    assert (convs[1].own, convs[1].peer) == ("46701234567", "001 202 555 0160")
    assert shape(fired(threads.thread(OWN_KEY, PEER_KEY))) == [
        ("in", "one", OWN, PEER), ("out", "two", "0046701234567", "12025550160"),
        ("in", "three", "46701234567", "001 202 555 0160")]
    entry = fired(threads.thread(OWN_KEY, PEER_KEY))[0]
    assert (entry.own_key, entry.peer_key, entry.copies) == (OWN_KEY, PEER_KEY, ())
    [number] = fired(threads.own_numbers("owner", None))
    assert (number.own, number.own_key, number.conversations, number.unread) == (
        OWN, OWN_KEY, 2, 3)


def test_thread_is_the_end_of_the_conversation_oldest_first_and_pages_back(store, threads):
    add(store, *[sms(IN if i % 2 else OUT, body=f"m{i}") for i in range(10)])
    page = fired(threads.thread(OWN_KEY, PEER_KEY, limit=4))
    assert [e.message.body for e in page] == ["m6", "m7", "m8", "m9"]
    earlier = fired(threads.thread(OWN_KEY, PEER_KEY, limit=4, before=page[0].message.created))
    assert [e.message.body for e in earlier] == ["m2", "m3", "m4", "m5"]
    assert fired(threads.thread(OWN_KEY, "999")) == []


def test_fan_out_copies_are_one_entry_with_copies(store, threads):
    m = sms(IN, body="for the desk and alice", dedupe_key="tw\x1fSM1", source="webhook:tw")
    add(store, *fan_out(m, ["ami:desk", "ami:alice", "ami:bob"]))
    # The same text from the same number later is another SMS.
    add(store, sms(IN, body="for the desk and alice", route="ami:desk", source="webhook:tw"))
    entries = fired(threads.thread(OWN_KEY, PEER_KEY))
    assert [(e.message.route, [c.route for c in e.copies]) for e in entries] == [
        ("ami:desk", ["ami:alice", "ami:bob"]), ("ami:desk", [])]
    [conv] = fired(threads.conversations("owner", OWN_KEY))
    assert (conv.count, conv.unread) == (2, 2)
    # Each copy keeps its own status.
    fired(store.update([(entries[0].copies[0].id, {"status": SENT})]))
    again = fired(threads.thread(OWN_KEY, PEER_KEY))[0]
    assert [c.status for c in again.copies] == [SENT, QUEUED]


def test_fan_out_copies_split_over_two_catch_up_steps_stay_one_entry(store):
    threads = Threads(store, chunk=2)
    add(store, sms(OUT, body="before"))
    add(store, *fan_out(sms(IN, body="shared"), ["ami:desk", "ami:alice", "ami:bob"]))
    assert fired(threads.catch_up()) == 4
    entries = fired(threads.thread(OWN_KEY, PEER_KEY))
    assert [(e.message.body, len(e.copies)) for e in entries] == [("before", 0), ("shared", 2)]


def test_notices_to_phones_are_not_part_of_a_conversation(store, threads):
    add(store, sms(OUT, body="hello"))
    add(store, sms(IN, body="\u2713 delivered 12:03", route="ami:desk", source="notice"))
    assert fired(threads.catch_up()) == 1
    assert shape(fired(threads.thread(OWN_KEY, PEER_KEY))) == [("out", "hello", OWN, PEER)]
    assert fired(threads.search("owner", "delivered", None)) == []
    [conv] = fired(threads.conversations("owner", OWN_KEY))
    assert (conv.count, conv.unread) == (1, 0)


def test_a_viewer_limited_to_own_numbers_sees_only_those(store, threads):
    other = "+46709999999"
    add(store, sms(IN, OWN, PEER, "mine"), sms(IN, other, PEER, "not mine"),
        sms(OUT, other, "+4455512345", "not mine either"))
    numbers = fired(threads.own_numbers("bob", [OWN_KEY]))
    assert [n.own_key for n in numbers] == [OWN_KEY]
    assert fired(threads.own_numbers("bob", [])) == []
    assert [n.own_key for n in fired(threads.own_numbers("owner", None))] == [
        "46709999999", OWN_KEY]
    assert [e.message.body for e in fired(threads.search("bob", "mine", [OWN_KEY]))] == ["mine"]
    assert fired(threads.search("bob", "mine", [])) == []
    assert fired(threads.search("bob", "4455512", [OWN_KEY])) == []
    assert [e.message.body for e in fired(threads.search("owner", "mine", None))] == [
        "not mine either", "not mine", "mine"]
    # Short queries are scoped too.
    assert [e.own_key for e in fired(threads.search("bob", "12", [OWN_KEY]))] == [OWN_KEY]


def test_unread_counts_are_per_viewer_and_marks_never_move_back(store, threads):
    first, reply, second, third = add(store, sms(IN, body="1"), sms(OUT, body="r"),
                                      sms(IN, body="2"), sms(IN, body="3"))
    assert fired(threads.conversations("owner", OWN_KEY))[0].unread == 3
    fired(threads.mark_read("owner", OWN_KEY, PEER_KEY, second.created))
    [conv] = fired(threads.conversations("owner", OWN_KEY))
    assert (conv.unread, conv.read_upto) == (1, second.created)
    assert fired(threads.conversations("alice", OWN_KEY))[0].unread == 3
    fired(threads.mark_read("owner", OWN_KEY, PEER_KEY, first.created))
    assert fired(threads.conversations("owner", OWN_KEY))[0].unread == 1
    assert [n.unread for n in fired(threads.own_numbers("owner", None))] == [1]
    for bad in (float("nan"), float("inf")):
        with pytest.raises(ValueError):
            fired(threads.mark_read("owner", OWN_KEY, PEER_KEY, bad))
    fired(threads.mark_read("owner", OWN_KEY, PEER_KEY, third.created))
    assert fired(threads.conversations("owner", OWN_KEY))[0].unread == 0
    # Only inbound SMS are unread: a reply after the mark is not.
    add(store, sms(OUT, body="r2"))
    assert fired(threads.own_numbers("owner", None))[0].unread == 0
    add(store, sms(IN, "46701234567", "0012025550160", body="4"))
    assert fired(threads.own_numbers("owner", None))[0].unread == 1
    assert fired(threads.own_numbers("alice", None))[0].unread == 4


def test_catch_up_in_bounded_steps_then_only_what_is_new_then_nothing(store):
    threads = Threads(store, chunk=2000)
    fired(store.add([sms(IN if i % 3 else OUT, peer=f"+1202555{i % 50:04d}", body=f"n{i}")
                     for i in range(5000)]))
    commits = store.commits
    assert fired(threads.catch_up()) == 5000
    assert store.commits - commits == 3  # 2000 + 2000 + 1000
    reads = []
    real_run = store.reader.run
    store.reader.run = lambda fn: reads.append(fn) or real_run(fn)
    commits = store.commits
    assert fired(threads.catch_up()) == 0  # one read: its own commits changed the count
    assert fired(threads.catch_up()) == 0
    assert fired(threads.catch_up()) == 0
    assert (store.commits, len(reads)) == (commits, 1)
    assert store.reader._db.execute("SELECT value FROM channel_state WHERE name = ?",
                                    (MARK,)).fetchone()[0] == "5000"
    convs = fired(threads.conversations("owner", OWN_KEY, limit=1000))
    assert len(convs) == 50 and sum(c.count for c in convs) == 5000
    assert convs[0].last.message.body == "n4999"
    assert len(reads) == 2  # the page's own read; no catch-up read, nothing committed

    add(store, sms(IN, peer="+12025550001", body="new"), sms(OUT, body="newer"))
    commits = store.commits
    assert fired(threads.catch_up()) == 2
    assert store.commits - commits == 1
    assert fired(threads.thread(OWN_KEY, PEER_KEY))[-1].message.body == "newer"


def test_reads_catch_up_first(store, threads):
    fired(threads.catch_up())
    add(store, sms(IN, body="just now"))
    assert [c.last.message.body for c in fired(threads.conversations("owner", OWN_KEY))] == [
        "just now"]


def test_status_changes_show_without_indexing_again(store, threads):
    m = add(store, sms(OUT, body="going out"))
    assert fired(threads.thread(OWN_KEY, PEER_KEY))[0].message.status == QUEUED
    rows = store.reader._db.execute("SELECT COUNT(*) FROM thread_entries").fetchone()[0]
    for status in (SENT, DELIVERED):
        fired(store.update([(m.id, {"status": status})]))
        [entry] = fired(threads.thread(OWN_KEY, PEER_KEY))
        assert entry.message.status == status
    fired(store.update([(m.id, {"status": "failed", "reason": "no credit"})]))
    assert fired(threads.conversations("owner", OWN_KEY))[0].last.message.reason == "no credit"
    assert store.reader._db.execute("SELECT COUNT(*) FROM thread_entries").fetchone()[0] == rows


def test_a_store_upgraded_from_schema_6_indexes_its_messages(tmp_path):
    path = tmp_path / "old.sqlite3"
    db = sqlite3.connect(path)
    for script in schema_scripts()[:6]:
        for statement in _split_sql(script):
            db.execute(statement)
    db.execute("PRAGMA user_version=6")
    for i, (direction, to, sender) in enumerate([
            ("in", OWN, PEER), ("out", PEER, "0046701234567"), ("in", OWN, "+4420")]):
        db.execute("INSERT INTO messages (id, direction, route, source, recipient, sender,"
                   " body, status, created, updated) VALUES (?, ?, 'itsp', 'webhook', ?, ?,"
                   " ?, 'sent', ?, ?)", (f"{i:020d}", direction, to, sender, f"old {i}", i, i))
    db.commit()
    db.close()
    s = Store(str(path), run_inline=True)
    s.open()
    try:
        threads = Threads(s)
        assert fired(threads.catch_up()) == 3
        assert [(c.peer_key, c.count) for c in fired(threads.conversations("owner", OWN_KEY))] == [
            ("4420", 1), (PEER_KEY, 2)]
        assert [e.message.id for e in fired(threads.search("owner", "old", None))] == [
            f"{i:020d}" for i in (2, 1, 0)]
    finally:
        s.close()


def test_search_by_word_and_by_any_part_or_spelling_of_a_number(store, threads):
    add(store, sms(IN, body="Meet me at the station"),
        sms(OUT, body="Which station?"),
        sms(IN, peer="+4420794600", body="Your code is 8812"),
        sms(IN, peer="VODAFONE", body="Your balance"))
    assert [e.message.body for e in fired(threads.search("owner", "STATION", None))] == [
        "Which station?", "Meet me at the station"]
    assert [e.message.body for e in fired(threads.search("owner", "meet station", None))] == [
        "Meet me at the station"]
    assert [e.message.body for e in fired(threads.search("owner", "tati", None))] == [
        "Which station?", "Meet me at the station"]
    # The middle of a number, and other spellings of one.
    for query in ("5550", "+1 202 555", "001202555", "(202) 555-0160", "4670123"):
        got = {e.message.body for e in fired(threads.search("owner", query, None))}
        assert {"Meet me at the station", "Which station?"} <= got, query
    assert [e.message.body for e in fired(threads.search("owner", "794", None))] == [
        "Your code is 8812"]
    assert [e.peer for e in fired(threads.search("owner", "vodaf", None))] == ["VODAFONE"]
    assert fired(threads.search("owner", "nowhere", None)) == []
    assert [e.message.body for e in fired(threads.search("owner", "station", None, limit=1))] == [
        "Which station?"]


@pytest.mark.parametrize("query", [
    '"', '""', 'say "hi', 'NEAR(a b)', 'NEAR', 'foo*', '*', '-foo', 'a - b', 'body:foo',
    'peer:12', '(x', 'x)', 'a OR b', 'AND', 'NOT this', '^start', "it's", '{body own}: x',
    'a + b', '\x00\x01nul', '\\', '%_%', "'; DROP TABLE messages; --", 'x' * 5000,
])
def test_search_takes_fts5_syntax_literally(store, threads, query):
    add(store, sms(IN, body="plain text"), sms(IN, body=f"literally {query} here"))
    found = fired(threads.search("owner", query, None))
    assert isinstance(found, Results)
    bodies = [e.message.body for e in found]
    assert "plain text" not in bodies
    assert store.reader._db.execute("SELECT COUNT(*) FROM messages").fetchone()[0] == 2


def test_syntax_words_are_found_as_text(store, threads):
    add(store, sms(IN, body="meet NEAR(the station) at 5"), sms(IN, body="the station"),
        sms(IN, body='she said "ok" -- fine*'), sms(IN, body="a OR b"), sms(IN, body="a b"))
    assert [e.message.body for e in fired(threads.search("owner", "NEAR(the", None))] == [
        "meet NEAR(the station) at 5"]
    assert [e.message.body for e in fired(threads.search("owner", '"ok" -- fine*', None))] == [
        'she said "ok" -- fine*']
    assert [e.message.body for e in fired(threads.search("owner", "a OR b", None))] == ["a OR b"]


def test_short_queries_match_the_start_of_numbers_and_say_why(store, threads):
    add(store, sms(IN, peer="+12025550160", body="us"), sms(IN, peer="+4420794600", body="uk"),
        sms(IN, peer="Ok Bank", body="bank"))
    found = fired(threads.search("owner", "12", None))
    assert [e.message.body for e in found] == ["us"]
    assert found.note and "3 characters" in found.note
    assert [e.message.body for e in fired(threads.search("owner", "+4", None))] == ["uk"]
    assert [e.message.body for e in fired(threads.search("owner", "ok", None))] == ["bank"]
    assert [e.message.body for e in fired(threads.search("owner", "us", None))] == []
    empty = fired(threads.search("owner", "  \n ", None))
    assert empty == [] and empty.note


def test_plan_search():
    assert plan_search("hello world").match == '"hello" AND "world"'
    assert plan_search("ok then").match == '"ok then"'
    assert plan_search('say "hi"').match == '"say" AND """hi"""'
    assert plan_search('say no').match == '"say no"'
    assert plan_search("+1 202 555").match == '("+1 202 555") OR "1202555"'
    assert plan_search("5550160").match == '"5550160"'
    assert plan_search("+46") == (None, "46", plan_search("+46").note)
    assert plan_search("a\nb\x00") == plan_search("a b")
    assert plan_search("").match is None and plan_search("").prefix is None


def _plans(db, statements):
    out = []
    for sql in statements:
        if not sql.lstrip().upper().startswith("SELECT"):
            continue
        plan = [row[3] for row in db.execute("EXPLAIN QUERY PLAN " + sql)]
        out.append((sql, plan))
    return out


@pytest.mark.parametrize("analyzed", [False, True])
def test_no_read_query_scans_messages_or_all_entries(store, threads, analyzed):
    add(store, *[sms(IN if i % 2 else OUT, peer=f"+1202555{i % 7:04d}", body=f"text {i}")
                 for i in range(40)])
    add(store, *fan_out(sms(IN, body="shared"), ["ami:a", "ami:b"]))
    fired(threads.mark_read("owner", OWN_KEY, "12025550001", next(_clock)))
    fired(threads.mark_read("owner", OWN_KEY, "12025550002", 0))
    db = store.reader._db
    fired(threads.catch_up())
    if analyzed:  # statistics change the planner's choices: neither way may scan
        db.execute("ANALYZE")
    seen = []
    db.set_trace_callback(seen.append)
    try:
        add(store, sms(IN, body="one more"))
        fired(threads.own_numbers("owner", None))
        fired(threads.own_numbers("owner", [OWN_KEY, "999"]))
        fired(threads.conversations("owner", OWN_KEY))
        fired(threads.conversations("owner", OWN_KEY, limit=2, before=next(_clock)))
        fired(threads.thread(OWN_KEY, PEER_KEY))
        fired(threads.thread(OWN_KEY, "12025550001", before=next(_clock)))
        for query in ("text", "5550", "+1 202", "12", "ok"):
            fired(threads.search("owner", query, None))
            fired(threads.search("owner", query, [OWN_KEY]))
    finally:
        db.set_trace_callback(None)
    plans = _plans(db, seen)
    assert len(plans) > 20
    # Only these may be scanned: the trigram index (a virtual table's own search), the
    # owns list, and the one-row-per-conversation table for the list of all own numbers.
    allowed = ("SCAN thread_search VIRTUAL TABLE", "SCAN json_each VIRTUAL TABLE",
               "SCAN CONSTANT ROW", "SCAN c USING", "SCAN c\n")
    for sql, plan in plans:
        for line in plan:
            assert not line.startswith("SCAN") or (line + "\n").startswith(allowed), (sql, plan)
    text = "\n".join(line for _, plan in plans for line in plan)
    assert "VIRTUAL TABLE INDEX" in text  # the trigram index answered the searches
    # And the check does catch a scan of messages.
    like = _plans(db, ["SELECT id FROM messages WHERE body LIKE '%text%'"])
    assert any(line.startswith("SCAN messages") for line in like[0][1])


class _HeldStore:
    """A store whose reads and writes wait until the test lets them run."""

    def __init__(self, real):
        self.real = real
        self.commits = 0
        self.held = []
        self.reader = self

    def run(self, fn):
        return self._hold(fn, write=False)

    def write(self, fn):
        return self._hold(fn, write=True)

    def _hold(self, fn, write):
        d = defer.Deferred()
        self.held.append((fn, d, write))
        return d

    def release(self):
        fn, d, write = self.held.pop(0)
        result = fired(self.real.write(fn) if write else self.real.reader.run(fn))
        if write:
            self.commits += 1
        d.callback(result)


def test_concurrent_catch_ups_share_one_run(store):
    held = _HeldStore(store)
    threads = Threads(held)
    add(store, sms(IN, body="a"))
    held.commits = 5
    first, second = threads.catch_up(), threads.catch_up()
    assert len(held.held) == 1
    held.release()  # the read: one new row
    held.release()  # the write
    assert (fired(first), fired(second), threads.runs) == (1, 1, 1)

    # A call after more commits than the running catch-up saw gets a run of its own
    # (here it finds that the first run, whose read came later, indexed "c" too).
    add(store, sms(IN, body="b"))
    held.commits += 1
    early = threads.catch_up()
    add(store, sms(IN, body="c"))
    held.commits += 1
    late = threads.catch_up()
    assert len(held.held) == 1
    while held.held:
        held.release()
    assert (fired(early), fired(late), threads.runs) == (2, 0, 3)
    assert fired(threads.catch_up()) == 0 and not held.held
    assert [e.message.body for e in fired(Threads(store).thread(OWN_KEY, PEER_KEY))] == [
        "a", "b", "c"]


def test_a_failed_catch_up_fails_its_callers_and_the_next_one_runs_again(store, events):
    threads = Threads(store)
    add(store, sms(IN, body="a"))
    fired(threads.catch_up())
    add(store, sms(IN, body="b"))
    real = store.write
    store.write = lambda fn: defer.fail(sqlite3.OperationalError("disk I/O error"))
    with pytest.raises(sqlite3.OperationalError):
        fired(threads.catch_up())
    # A page still shows what is indexed, and says in the log why it is behind.
    assert [e.message.body for e in fired(threads.thread(OWN_KEY, PEER_KEY))] == ["a"]
    assert any("catching up failed" in str(e.get("log_format")) for e in events)
    store.write = real
    assert fired(threads.catch_up()) == 1
    assert [e.message.body for e in fired(threads.thread(OWN_KEY, PEER_KEY))] == ["a", "b"]
    assert isinstance(fired(threads.thread(OWN_KEY, PEER_KEY))[0], Entry)
