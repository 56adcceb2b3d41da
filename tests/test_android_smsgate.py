"""SMS Gateway for Android, Local Server mode (websmsd.android.smsgate).

The phone's side is tests/phonepeers.FakeSMSGate, written from the notes on the app's
Kotlin source (v1.68.0): 202/409, states, the inbox newest first with X-Total-Count and
offset paging, Ktor's `+`-is-a-space query decoding, an empty 401.  The client is tested
through treq's StubTreq on a task.Clock, and once over a real socket with a real reactor
in a child process.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import random
import subprocess
import sys

import pytest

from phonepeers import FakeSMSGate, _ktor_date
from websmsd.android import smsgate as g
from websmsd.android import smsgate_client as gc
from websmsd.android import smsgate_inbox as gi

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PLUS7 = dt.timezone(dt.timedelta(hours=7))
MIN = 60_000
HOUR = 60 * MIN
DAY = 24 * HOUR
NOW = 1_775_000_000_000  # the fake phone's clock


# --------------------------------------------------------------------------------------
# Dates and query strings
# --------------------------------------------------------------------------------------


def test_format_datetime():
    assert g.format_datetime(0) == "1970-01-01T00:00:00.000Z"
    assert g.format_datetime(1_775_000_000_123) == "2026-03-31T23:33:20.123Z"
    assert g.format_datetime(dt.datetime(2026, 4, 10, 14, 37, 37, 123456, tzinfo=PLUS7)) == \
        "2026-04-10T14:37:37.123+07:00"
    minus = dt.timezone(-dt.timedelta(hours=3, minutes=30))
    assert g.format_datetime(dt.datetime(2026, 1, 1, tzinfo=minus)) == "2026-01-01T00:00:00.000-03:30"
    assert g.format_datetime(dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)) == "2026-01-01T00:00:00.000Z"
    with pytest.raises(ValueError):
        g.format_datetime(dt.datetime(2026, 1, 1))  # naive
    with pytest.raises(ValueError):
        g.format_datetime(-1)


@pytest.mark.parametrize("moment", [0, 1, 999, 1_775_000_000_123, g.MAX_EPOCH_MS,
                                    dt.datetime(2026, 4, 10, 14, 37, 37, 5000, tzinfo=PLUS7)])
def test_dates_round_trip_through_the_apps_parser(moment):
    text = g.format_datetime(moment)
    assert _ktor_date(text) == g.to_ms(moment) == g.parse_datetime(text)


@pytest.mark.parametrize("text,ms", [
    ("2026-04-10T14:37:37.123+07:00", 1775806657123),
    ("2026-04-10T07:37:37.123Z", 1775806657123),
    ("2026-04-10T07:37:37Z", 1775806657000),
    ("2026-04-10T07:37:37.1Z", 1775806657100),
    ("2026-04-10T07:37:37.123456789Z", 1775806657123),
    ("2026-04-10T04:07:37.123-03:30", 1775806657123),
])
def test_parse_datetime(text, ms):
    assert g.parse_datetime(text) == ms


@pytest.mark.parametrize("text", [None, 5, "", "2026-04-10T07:37:37", "2026-04-10 07:37:37Z",
                                  "2026-13-10T07:37:37Z", "2026-04-10T07:37:37.123 07:00", "x" * 100])
def test_parse_datetime_refuses(text):
    assert g.parse_datetime(text) is None


def test_inbox_query_encodes_the_plus():
    q = g.inbox_query(dt.datetime(2026, 4, 10, 14, 0, tzinfo=PLUS7), 1_775_000_000_000, 100, 0)
    assert q == ("type=SMS&limit=100&offset=0&from=2026-04-10T14%3A00%3A00.000%2B07%3A00"
                 "&to=2026-03-31T23%3A33%3A20.000Z")
    assert "+" not in q
    assert g.inbox_query() == "type=SMS&limit=50&offset=0"  # the offset is always there
    for bad in ({"limit": 0}, {"limit": 501}, {"limit": True}, {"offset": -1}):
        with pytest.raises(ValueError):
            g.inbox_query(**bad)


def test_a_raw_plus_would_reach_the_phone_as_a_space():
    fake = FakeSMSGate()
    status, _, body = fake.handle("GET", "/inbox?from=2026-03-10T14:00:00.000+07:00", auth_headers(fake), b"")
    assert (status, json.loads(body)) == (400, {"message": "Invalid from datetime"})
    status, _, _ = fake.handle("GET", "/inbox?from=2026-03-10T14%3A00%3A00.000%2B07%3A00", auth_headers(fake), b"")
    assert status == 200


def auth_headers(fake):
    from websmsd.android.basicauth import basic_header

    return {"Authorization": basic_header(fake.user, fake.password)}


# --------------------------------------------------------------------------------------
# POST /message: body and outcomes
# --------------------------------------------------------------------------------------


def test_send_body_exact():
    assert g.send_body("0000018f00000001", "+46701234567", "Hej 😀") == (
        b'{"id":"0000018f00000001","textMessage":{"text":"Hej \\ud83d\\ude00"},'
        b'"phoneNumbers":["+46701234567"],"withDeliveryReport":true}')
    body = json.loads(g.send_body("a", "+1", "x", 2, with_delivery_report=False, priority=100, ttl=3600))
    assert body == {"id": "a", "textMessage": {"text": "x"}, "phoneNumbers": ["+1"], "withDeliveryReport": False,
                    "simNumber": 2, "priority": 100, "ttl": 3600}


@pytest.mark.parametrize("args", [
    ("", "+1", "x"), ("a/b", "+1", "x"), ("a\n", "+1", "x"), ("a" * 65, "+1", "x"), ("a", "", "x"),
    ("a", "+1\r\n", "x"), ("a", "+1", ""), ("a", "+1", "\ud800"), ("a", "+1", "x", 0), ("a", "+1", "x", True),
])
def test_check_send_refuses(args):
    assert g.check_send(*args) is not None
    with pytest.raises(ValueError):
        g.send_body(*args)


@pytest.mark.parametrize("status,body,ok,permanent,down", [
    (202, b'{"id":"m1","state":"Pending"}', True, False, False),
    (202, b"", True, False, False),
    (200, b"{}", True, False, False),
    (409, b'{"message":"Message with the same ID already exists"}', True, False, False),
    (400, b'{"message":"phoneNumbers is empty"}', False, True, False),
    (413, b"", False, True, False),
    (401, b"", False, False, True),
    (403, b"", False, False, True),
    (404, b"", False, False, True),
    (429, b"", False, False, False),
    (500, b'{"message":"Parameter specified as non-null is null"}', False, False, False),
    (503, b"<html>busy</html>", False, False, False),
    (302, b"", False, False, False),
])
def test_send_outcome(status, body, ok, permanent, down):
    out = g.send_outcome(status, body, "m1")
    assert (out.ok, out.permanent, out.down, out.status) == (ok, permanent, down, status)
    assert out.reason and "\n" not in out.reason
    if ok:
        assert out.provider_id == "m1"
    if status == 400:
        assert "phoneNumbers is empty" in out.reason


def test_send_outcome_when_the_app_ignores_our_id():
    out = g.send_outcome(202, b'{"id":"V1StGXR8_Z5jdHi6B-myT"}', "m1")
    assert out.ok and out.provider_id == "V1StGXR8_Z5jdHi6B-myT" and "own id" in out.reason


# --------------------------------------------------------------------------------------
# States and health
# --------------------------------------------------------------------------------------


def test_parse_state_from_the_fake():
    fake = FakeSMSGate()
    fake.handle("POST", "/message", auth_headers(fake), g.send_body("m1", "+46701234567", "x"))
    fake.set_state("m1", "Failed", "Send result: RESULT_ERROR_NO_SERVICE (No service)")
    status, _, body = fake.handle("GET", "/message/m1", auth_headers(fake), b"")
    st = g.parse_state("m1", body)
    assert (status, st.found, st.state, st.lifecycle) == (200, True, "Failed", "failed")
    assert st.reason == "Send result: RESULT_ERROR_NO_SERVICE (No service)"
    assert st.recipients == (g.Recipient("+46701234567", "Failed", st.reason),)
    assert dict(st.states).keys() == {"Pending", "Failed"}


@pytest.mark.parametrize("state,lifecycle", [
    ("Pending", "sending"), ("Processed", "sending"), ("Sent", "sent"), ("Delivered", "delivered"),
    ("Failed", "failed"), ("Cancelling", "sending"), ("Cancelled", "cancelled"), ("Quarantined", None),
])
def test_state_lifecycle(state, lifecycle):
    assert g.parse_state("m", json.dumps({"id": "m", "state": state}).encode()).lifecycle == lifecycle


@pytest.mark.parametrize("body", [b"", b"[]", b"{}", b'{"state":5}', b"{"])
def test_parse_state_malformed(body):
    with pytest.raises(g.SMSGateError):
        g.parse_state("m", body)


def test_parse_health():
    fake = FakeSMSGate()
    status, _, body = fake.handle("GET", "/health", {}, b"")
    h = g.parse_health(status, body)
    assert (h.reachable, h.http_status, h.status, h.version) == (True, 200, "pass", "1.68.0")
    fake.health_status = "fail"
    status, _, body = fake.handle("GET", "/health", {}, b"")
    h = g.parse_health(status, body)
    assert (h.reachable, h.http_status, h.status) == (True, 500, "fail")
    assert "usable" in h.reason and "battery:level" in h.reason
    h = g.parse_health(404, b"")
    assert h.reachable and h.status is None and "not this app" in h.reason


# --------------------------------------------------------------------------------------
# The inbox answer
# --------------------------------------------------------------------------------------


def test_parse_inbox_from_the_fake():
    fake = FakeSMSGate()
    fake.receive("+46701234567", "first", NOW - 2 * MIN)
    fake.receive("Vodafone", "second\nline 😀", NOW - MIN)
    status, headers, body = fake.handle("GET", "/inbox?" + g.inbox_query(), auth_headers(fake), b"")
    page = g.parse_inbox(body, g.parse_total(headers["X-Total-Count"]))
    assert status == 200 and page.total == 2 and page.invalid == ()
    assert [e.text for e in page.entries] == ["second\nline 😀", "first"]  # newest first
    e = page.entries[0]
    assert (e.sender, e.created_ms, e.type, e.sim_number) == ("Vodafone", NOW - MIN, "SMS", 1)
    assert e.created_at.endswith("+07:00") and e.id.startswith("text:")
    assert len(e.key) == 32 and e.key != page.entries[1].key


def test_entry_key_ignores_the_id():
    a = g.InboxEntry("text:1", "SMS", "+1", "hi", 5, "x")
    b = g.InboxEntry("other", "SMS", "+1", "hi", 5, "y")
    assert a.key == b.key and a.identity != b.identity


def test_parse_inbox_keeps_unreadable_rows_aside():
    body = json.dumps([
        {"id": "a", "type": "SMS", "sender": "+1", "contentPreview": "ok", "createdAt": "2026-01-01T00:00:00.000Z"},
        {"id": "b", "sender": "+1", "contentPreview": "no date"},
        {"id": "c", "sender": "+1\n", "contentPreview": "x", "createdAt": "2026-01-01T00:00:00.000Z"},
        "junk", None,
    ]).encode()
    page = g.parse_inbox(body, 5)
    assert [e.id for e in page.entries] == ["a"] and len(page.invalid) == 4 and page.size == 5
    for bad in (b"{}", b"", b"[", b'{"a":[]}'):
        with pytest.raises(g.SMSGateError):
            g.parse_inbox(bad)


@pytest.mark.parametrize("value,expected", [(b"12", 12), ("0", 0), (None, None), (b"-1", None), (b"1e3", None),
                                            (b" 7 ", 7)])
def test_parse_total(value, expected):
    assert g.parse_total(value) == expected


# --------------------------------------------------------------------------------------
# InboxReader, against the fake phone in-process
# --------------------------------------------------------------------------------------


class Drive:
    """Runs scans against a FakeSMSGate through the real JSON; `between` runs between pages."""

    def __init__(self, fake, reader):
        self.fake, self.reader = fake, reader
        self.requests = 0

    def poll(self, state, between=None, total_header=True):
        scan = self.reader.begin(state)
        first = True
        while True:
            request = scan.next_request()
            if request is None:
                break
            if between and not first:
                between()
            first = False
            query = g.inbox_query(request.since_ms, request.until_ms, request.limit, request.offset)
            status, headers, body = self.fake.handle("GET", "/inbox?" + query, auth_headers(self.fake), b"")
            assert status == 200, body
            total = g.parse_total(headers.get("X-Total-Count")) if total_header else None
            scan.feed(g.parse_inbox(body, total))
            self.requests += 1
        return scan.result()


def fresh(fake, since=NOW - 10 * MIN):
    return gi.InboxState.start(since)


def test_first_poll_takes_only_what_is_newer_than_the_start():
    fake = FakeSMSGate()
    for i in range(30):
        fake.receive("+1", f"history {i}", NOW - DAY + i * MIN)
    fake.receive("+2", "new b", NOW - 2 * MIN)
    fake.receive("+2", "new a", NOW - 3 * MIN)
    result = Drive(fake, gi.InboxReader(page_size=10)).poll(fresh(fake))
    assert [e.text for e in result.new] == ["new a", "new b"]  # oldest first
    assert result.complete and result.late == 0 and result.state.below == 30


def test_quiet_poll_is_one_request_and_changes_nothing():
    fake = FakeSMSGate()
    fake.receive("+1", "x", NOW - MIN)
    drive = Drive(fake, gi.InboxReader())
    state = drive.poll(fresh(fake)).state
    drive.requests = 0
    result = drive.poll(state)
    assert result.new == () and result.state == state and drive.requests == 1


def test_each_sms_is_taken_once():
    fake = FakeSMSGate()
    drive = Drive(fake, gi.InboxReader(page_size=5))
    state = fresh(fake)
    taken = []
    for i in range(20):
        fake.receive(f"+{i % 3}", f"msg {i}", NOW - 9 * MIN + i * 1000)
        if i % 4 == 0:
            result = drive.poll(state)
            taken += [e.text for e in result.new]
            state = result.state
    result = drive.poll(state)
    taken += [e.text for e in result.new]
    assert taken == [f"msg {i}" for i in range(20)]


def test_a_new_sms_on_top_of_many_known_costs_few_requests():
    fake = FakeSMSGate()
    for i in range(300):
        fake.receive("+1", f"m{i}", NOW - 9 * MIN + i * 100)
    drive = Drive(fake, gi.InboxReader(page_size=50))
    state = drive.poll(fresh(fake)).state
    fake.receive("+1", "the new one", NOW - MIN)
    drive.requests = 0
    result = drive.poll(state)
    assert [e.text for e in result.new] == ["the new one"]
    assert drive.requests == 1  # the probe's count says its page holds everything new


def test_late_sms_with_an_old_time_is_found_deep_in_the_list():
    fake = FakeSMSGate()
    for i in range(100):
        fake.receive("+1", f"m{i}", NOW - 2 * DAY + i * MIN)
    drive = Drive(fake, gi.InboxReader(page_size=10))
    state = drive.poll(fresh(fake, NOW - 3 * DAY)).state
    assert len(state.seen) == 100
    # The phone was off: an SMS sent a day and a half ago arrives now.
    fake.receive("+9", "delayed", NOW - 2 * DAY + 30 * MIN + 30_000)
    result = drive.poll(state)
    assert [e.text for e in result.new] == ["delayed"] and result.late == 0


def test_sms_older_than_the_horizon_is_reported_not_taken():
    fake = FakeSMSGate()
    fake.receive("+1", "now", NOW - MIN)
    reader = gi.InboxReader(horizon_ms=DAY)
    drive = Drive(fake, reader)
    state = drive.poll(fresh(fake)).state
    state = drive.poll(state).state
    fake.receive("+2", "from last week", NOW - 7 * DAY)
    result = drive.poll(state)
    assert result.new == () and result.late == 1
    assert any("older than the horizon" in w for w in result.warnings)
    assert drive.poll(result.state).late == 0  # reported once


def test_offsets_shifted_by_arrivals_lose_and_repeat_nothing():
    fake = FakeSMSGate()
    for i in range(40):
        fake.receive("+1", f"old {i}", NOW - 9 * MIN + i * 1000)
    drive = Drive(fake, gi.InboxReader(page_size=7))
    counter = iter(range(1000))

    def arrive():
        n = next(counter)
        fake.receive("+5", f"during scan {n}", NOW - 8 * MIN + n * 10)  # lands mid-list

    result = drive.poll(fresh(fake), between=arrive)
    taken = [e.text for e in result.new]
    state = result.state
    for _ in range(3):
        result = drive.poll(state)
        taken += [e.text for e in result.new]
        state = result.state
    expected = {f"old {i}" for i in range(40)} | {f"during scan {n}" for n in range(next(counter))}
    assert sorted(taken) == sorted(expected)  # each once


def test_the_same_sms_under_two_ids_is_taken_once():
    fake = FakeSMSGate()
    fake.receive("+1", "twice", NOW - MIN, id="text:111")
    fake.receive("+1", "twice", NOW - MIN, id="text:222")  # e.g. re-read by /inbox/refresh
    result = Drive(fake, gi.InboxReader()).poll(fresh(fake))
    assert [e.text for e in result.new] == ["twice"] and len(result.duplicates) == 1


def test_two_sms_sharing_an_id_are_both_taken_when_seen():
    # Before v1.63 ids hashed sender and time only: a second SMS in the same ms replaced the
    # first.  Each is taken if a poll saw the first.
    fake = FakeSMSGate()
    drive = Drive(fake, gi.InboxReader())
    fake.receive("+1", "one", NOW - MIN, id="b8f0")
    result = drive.poll(fresh(fake))
    fake.receive("+1", "two", NOW - MIN, id="b8f0")
    result2 = drive.poll(result.state)
    assert [e.text for e in result.new + result2.new] == ["one", "two"]


def test_two_sms_in_the_same_millisecond_are_two():
    fake = FakeSMSGate()
    fake.receive("+1", "yes", NOW - MIN)
    fake.receive("+1", "no", NOW - MIN)
    assert sorted(e.text for e in Drive(fake, gi.InboxReader()).poll(fresh(fake)).new) == ["no", "yes"]


def test_near_window_for_v1_66_1_duplicates():
    fake = FakeSMSGate()
    fake.receive("+1", "hello", NOW - 5 * MIN)
    fake.receive("+1", "hello", NOW - 5 * MIN + 4000)  # the phone's receiving time, other id
    fake.receive("+1", "hello", NOW - 2 * MIN)  # really sent again, 3 min later
    plain = Drive(fake, gi.InboxReader()).poll(fresh(fake))
    assert len(plain.new) == 3
    tuned = Drive(fake, gi.InboxReader(near_window_ms=gi.near_window_for_version("1.66.1"))).poll(fresh(fake))
    assert [e.created_ms for e in tuned.new] == [NOW - 5 * MIN, NOW - 2 * MIN] and len(tuned.duplicates) == 1
    assert gi.near_window_for_version("1.66.2") == 0 and gi.near_window_for_version(None) == 0
    assert gi.near_window_for_version("v1.66.1") == 120_000


def test_restart_with_the_persisted_state():
    fake = FakeSMSGate()
    drive = Drive(fake, gi.InboxReader(page_size=4))
    fake.receive("+1", "a", NOW - 3 * MIN)
    saved = drive.poll(fresh(fake)).state.to_json()
    fake.receive("+1", "b", NOW - 2 * MIN)
    fake.receive("+1", "c", NOW - 4 * MIN)  # late, older than "a"
    state = gi.InboxState.from_json(saved)
    result = drive.poll(state)
    assert [e.text for e in result.new] == ["c", "b"]
    assert drive.poll(gi.InboxState.from_json(result.state.to_json())).new == ()


def test_state_json_is_small_and_strict():
    fake = FakeSMSGate()
    for i in range(100):
        fake.receive("+46701234567", "some text " * 10, NOW - 9 * MIN + i)
    state = Drive(fake, gi.InboxReader()).poll(fresh(fake)).state
    text = state.to_json()
    assert len(text) < 60 * 100 and "+4670" not in text and "some text" not in text
    assert gi.InboxState.from_json(text) == gi.InboxState(state.floor_ms, state.below, tuple(sorted(state.seen)))
    for bad in ("", "[]", '{"v":2}', '{"v":1,"floor":-1,"seen":[]}', '{"v":1,"floor":0,"below":"x","seen":[]}',
                '{"v":1,"floor":0,"seen":["1:zz:00"]}', '{"v":1,"floor":0,"seen":{}}', "[" * 5000):
        with pytest.raises(ValueError):
            gi.InboxState.from_json(bad)


def test_memory_is_bounded_by_the_horizon_and_max_keys():
    fake = FakeSMSGate()
    fake.now_ms = NOW
    reader = gi.InboxReader(horizon_ms=2 * DAY, max_keys=50, page_size=100)
    drive = Drive(fake, reader)
    state = fresh(fake, NOW - MIN)
    for day in range(10):
        for i in range(20):
            fake.now_ms = NOW + day * DAY + i * HOUR
            fake.receive("+1", f"d{day} n{i}", fake.now_ms - 1000)
        result = drive.poll(state)
        assert len(result.new) == 20
        state = result.state
        assert len(state.seen) <= 50
    drive.requests = 0
    assert drive.poll(state).new == () and drive.requests == 1  # still a one-request quiet poll
    assert state.below == 200 - len(state.seen)


def test_missing_total_header_still_finds_everything():
    fake = FakeSMSGate()
    drive = Drive(fake, gi.InboxReader(page_size=3))
    fake.receive("+1", "a", NOW - 2 * MIN)
    result = drive.poll(fresh(fake), total_header=False)
    fake.receive("+1", "b", NOW - MIN)
    result2 = drive.poll(result.state, total_header=False)
    assert [e.text for e in result.new + result2.new] == ["a", "b"]
    assert any("X-Total-Count" in w for w in result.warnings)


def test_inbox_emptied_by_an_app_upgrade():
    fake = FakeSMSGate()
    drive = Drive(fake, gi.InboxReader())
    for i in range(5):
        fake.receive("+1", f"old {i}", NOW - DAY + i)
    fake.receive("+1", "a", NOW - 2 * MIN)
    state = drive.poll(fresh(fake)).state
    fake.rows = []  # MIGRATION_21_22
    fake.receive("+1", "b", NOW - MIN)
    result = drive.poll(state)
    assert [e.text for e in result.new] == ["b"]
    assert any("lost" in w for w in result.warnings)
    assert drive.poll(result.state).new == ()


def test_other_types_and_unreadable_rows_are_counted_not_taken():
    reader = gi.InboxReader(page_size=10)
    scan = reader.begin(gi.InboxState.start(0))
    assert scan.next_request() == gi.InboxRequest(None, None, 10, 0, "probe")
    rows = [g.InboxEntry("m", "MMS", "+1", "pic", 5, "t"), g.InboxEntry("s", "SMS", "+1", "txt", 4, "t")]
    bad = (g.InvalidRow("0123456789abcdef", None, "no sender"),)
    scan.feed(g.InboxPage(tuple(rows), 3, bad))
    assert scan.next_request() == gi.InboxRequest(0, None, 10, 0, "range")  # floor 0: nothing below
    scan.feed(g.InboxPage(tuple(rows), 3, bad))
    result = scan.result()
    assert [e.id for e in result.new] == ["s"] and len(result.skipped) == 2
    assert len(result.state.seen) == 3


def test_scan_misuse():
    scan = gi.InboxReader().begin(gi.InboxState.start(0))
    with pytest.raises(RuntimeError):
        scan.result()
    scan.next_request()
    scan.feed(g.InboxPage((), 0))
    with pytest.raises(RuntimeError):
        scan.feed(g.InboxPage((), 0))
    for bad in ({"page_size": 0}, {"page_size": 501}, {"max_keys": 0}, {"near_window_ms": -1},
                {"max_requests": 63}):
        with pytest.raises(ValueError):
            gi.InboxReader(**bad)


def test_stopping_at_max_new_continues_next_poll():
    fake = FakeSMSGate()
    for i in range(50):
        fake.receive("+1", f"m{i:02d}", NOW - 9 * MIN + i * 1000)
    drive = Drive(fake, gi.InboxReader(page_size=10, max_new=20))
    taken = []
    state = fresh(fake)
    for _ in range(6):
        result = drive.poll(state)
        taken += [e.text for e in result.new]
        state = result.state
    assert sorted(taken) == [f"m{i:02d}" for i in range(50)] and len(taken) == 50


def _random_traffic(seed, *, max_keys=10_000, max_new=1000):
    """Arrivals (on time, late within the horizon, in the same ms as another, the same SMS
    under a second id) at random, also between the requests of a scan; random page
    sizes; restarts through JSON.  Returns (keys taken, keys that reached the phone, late)."""
    rng = random.Random(seed)
    fake = FakeSMSGate()
    reader = gi.InboxReader(page_size=rng.choice([1, 2, 3, 5, 10, 50]), horizon_ms=rng.choice([2 * DAY, 3 * DAY]),
                           max_keys=max_keys, max_requests=rng.choice([64, 200]), max_new=max_new)
    drive = Drive(fake, reader)
    state = fresh(fake, NOW - 10 * DAY)
    sent = set()
    counter = [0]
    lateness = rng.choice([HOUR, DAY, int(1.9 * DAY)])

    def arrive():
        counter[0] += 1
        n = counter[0]
        created = fake.now_ms - (rng.randrange(1, lateness) if rng.random() < 0.25 else rng.randrange(0, 5000))
        if rng.random() < 0.05 and fake.rows:
            created = rng.choice(fake.rows).created_ms  # the same ms as another row (maybe old)
        row = fake.receive(f"+{rng.randrange(3)}", f"text {n}", created)
        sent.add(g.InboxEntry(row.id, "SMS", row.sender, row.text, created, "").key)
        if rng.random() < 0.1:
            fake.receive(row.sender, row.text, created, id=f"dup{n}")

    taken, late = [], 0
    for _ in range(40):
        fake.now_ms += rng.randrange(1000, 3 * HOUR)
        for _ in range(rng.randrange(0, 5)):
            arrive()
        result = drive.poll(state, between=arrive if rng.random() < 0.3 else None)
        assert result.requests <= reader.max_requests
        assert len(result.state.seen) <= 2 * max_keys + reader.page_size * reader.max_requests
        taken += [e.key for e in result.new]
        late += result.late
        state = gi.InboxState.from_json(result.state.to_json()) if rng.random() < 0.3 else result.state
    for _ in range(100):  # quiet polls let the last arrivals and any backlog in
        result = drive.poll(state)
        taken += [e.key for e in result.new]
        late += result.late
        state = result.state
        if result.complete and not result.new:
            break
    return taken, sent, late


@pytest.mark.parametrize("seed", range(16))
def test_random_traffic_each_sms_taken_exactly_once(seed):
    taken, sent, late = _random_traffic(seed)
    assert len(taken) == len(set(taken)), "an SMS was taken twice"
    lost = sent - set(taken)
    assert len(lost) <= late, "an SMS was lost without being reported"
    if not late:
        assert set(taken) == sent


@pytest.mark.parametrize("seed", range(8))
def test_random_traffic_with_too_little_memory_reports_every_loss(seed):
    # 60 rows of memory for hundreds of SMS a day: some must be given up, none silently.
    taken, sent, late = _random_traffic(seed, max_keys=60, max_new=rng_pick(seed))
    assert len(taken) == len(set(taken))
    assert len(sent - set(taken)) <= late


def rng_pick(seed):
    return [1, 5, 1000][seed % 3]


# --------------------------------------------------------------------------------------
# SMSGateClient through StubTreq, on a task.Clock
# --------------------------------------------------------------------------------------

pytest.importorskip("treq")

from twisted.internet import defer, error as net_error, task  # noqa: E402
from twisted.logger import globalLogPublisher  # noqa: E402
from twisted.python.failure import Failure  # noqa: E402
from twisted.web.resource import Resource  # noqa: E402
from treq.testing import StubTreq  # noqa: E402


class FakeResource(Resource):
    """The fake phone behind twisted.web, for StubTreq."""

    isLeaf = True

    def __init__(self, fake):
        super().__init__()
        self.fake = fake

    def render(self, request):
        headers = {k.decode(): v[0].decode() for k, v in request.requestHeaders.getAllRawHeaders()}
        status, out, body = self.fake.handle(request.method.decode(), request.uri.decode(), headers,
                                             request.content.read())
        request.setResponseCode(status)
        for name, value in out.items():
            if name.lower() != "content-length":
                request.setHeader(name, value)
        return body


def fired(d):
    results = []
    d.addBoth(results.append)
    assert results, "the Deferred did not fire"
    if isinstance(results[0], Failure):
        results[0].raiseException()
    return results[0]


def failed(d, kind=g.SMSGateError):
    results = []
    d.addBoth(results.append)
    assert results and isinstance(results[0], Failure), results
    assert results[0].check(kind), results[0]
    return results[0].value


@pytest.fixture
def phone():
    return FakeSMSGate()


def client(fake, password=None, **kw):
    return gc.SMSGateClient(StubTreq(FakeResource(fake)), "http://phone.lan:8080", fake.user,
                           fake.password if password is None else password, clock=kw.pop("clock", task.Clock()), **kw)


@pytest.fixture
def log():
    events = []
    globalLogPublisher.addObserver(events.append)
    yield events
    globalLogPublisher.removeObserver(events.append)


def test_client_send_exact_request_and_repeat(phone, log):
    c = client(phone)
    out = fired(c.send("0000018f00000001", "+46701234567", "Hello secret text"))
    assert (out.ok, out.provider_id, out.status, out.down) == (True, "0000018f00000001", 202, False)
    method, target, headers, body = phone.requests[0]
    assert (method, target) == ("POST", "/message")
    assert headers["Content-Type"] == "application/json" and headers["Accept"] == "application/json"
    assert headers["Authorization"] == "Basic c21zOlp4OF9xITJw"  # sms:Zx8_q!2p
    assert json.loads(body) == {"id": "0000018f00000001", "textMessage": {"text": "Hello secret text"},
                                "phoneNumbers": ["+46701234567"], "withDeliveryReport": True}
    # A restart repeats the send: the phone has it, nothing is sent twice.
    again = fired(c.send("0000018f00000001", "+46701234567", "Hello secret text"))
    assert (again.ok, again.status) == (True, 409) and len(phone.messages) == 1
    dump = repr([e for e in log if e.get("log_namespace") == "websmsd.smsgate"])
    assert "Zx8_q!2p" not in dump and "secret text" not in dump and "0000018f00000001" in dump


def test_client_send_before_v1_58(phone):
    phone.legacy_repeat = True
    c = client(phone)
    fired(c.send("m1", "+46701234567", "x"))
    out = fired(c.send("m1", "+46701234567", "x"))
    assert (out.ok, out.status) == (True, 202) and len(phone.messages) == 1


def test_client_send_options(phone):
    c = client(phone, skip_phone_validation=True, with_delivery_report=False, priority=100)
    fired(c.send("m1", "*100#", "x", sim=2))
    method, target, _, body = phone.requests[0]
    assert target == "/message?skipPhoneValidation=true"
    assert json.loads(body)["simNumber"] == 2 and json.loads(body)["priority"] == 100
    assert phone.messages["m1"].skip_validation and not phone.messages["m1"].with_delivery_report


def test_client_send_refused_locally_makes_no_request(phone):
    out = fired(client(phone).send("m1", "+1\n", "x"))
    assert (out.ok, out.permanent) == (False, True) and phone.requests == []


def test_client_wrong_password_is_a_route_problem(phone):
    out = fired(client(phone, password="wrong").send("m1", "+46701234567", "x"))
    assert (out.ok, out.permanent, out.down, out.status) == (False, False, True, 401)
    assert phone.messages == {}


def test_client_400_is_permanent_with_the_apps_message():
    class Refuse(Resource):
        isLeaf = True

        def render(self, request):
            request.setResponseCode(400)
            return b'{"message":"simNumber must be >= 1"}'

    c = gc.SMSGateClient(StubTreq(Refuse()), "http://p:8080", "u", "p", clock=task.Clock())
    out = fired(c.send("m1", "+1", "x"))
    assert (out.ok, out.permanent, out.status) == (False, True, 400) and "simNumber" in out.reason


def test_client_5xx_is_transient():
    class Boom(Resource):
        isLeaf = True

        def render(self, request):
            request.setResponseCode(503)
            return b"busy"

    out = fired(gc.SMSGateClient(StubTreq(Boom()), "http://p:8080", "u", "p", clock=task.Clock()).send("m", "+1", "x"))
    assert (out.ok, out.permanent, out.down) == (False, False, False)


class Refusing:
    """A treq stand-in whose connection is refused."""

    def request(self, *args, **kwargs):
        return defer.fail(net_error.ConnectionRefusedError("Connection refused"))


class Hanging:
    """A treq stand-in whose phone never answers."""

    def __init__(self):
        self.pending = []

    def request(self, *args, **kwargs):
        d = defer.Deferred()
        self.pending.append(d)
        return d


def test_client_connection_refused_is_down():
    c = gc.SMSGateClient(Refusing(), "http://phone.lan:8080", "u", "p", clock=task.Clock())
    out = fired(c.send("m1", "+1", "x"))
    assert (out.ok, out.permanent, out.down, out.status) == (False, False, True, None)
    assert "connection refused by phone.lan:8080" in out.reason
    err = failed(c.state("m1"))
    assert err.down
    assert failed(c.inbox()).down
    h = fired(c.health())
    assert not h.reachable and "refused" in h.reason


def test_client_timeout_is_down_and_cancels():
    clock = task.Clock()
    hanging = Hanging()
    c = gc.SMSGateClient(hanging, "http://phone.lan:8080", "u", "p", clock=clock, timeout=30)
    d = c.send("m1", "+1", "x")
    results = []
    d.addBoth(results.append)
    clock.advance(29.9)
    assert results == []
    clock.advance(0.2)
    [out] = results
    assert (out.ok, out.down) == (False, True) and "within 30 s" in out.reason
    assert hanging.pending[0].called  # the request was cancelled
    assert clock.getDelayedCalls() == []


def test_client_cancel_by_the_caller_propagates():
    clock = task.Clock()
    c = gc.SMSGateClient(Hanging(), "http://p:8080", "u", "p", clock=clock)
    d = c.send("m1", "+1", "x")
    d.cancel()
    failed(d, defer.CancelledError)
    assert clock.getDelayedCalls() == []


def test_client_state(phone):
    c = client(phone)
    fired(c.send("m1", "+46701234567", "x"))
    phone.set_state("m1", "Delivered")
    st = fired(c.state("m1"))
    assert (st.found, st.state, st.lifecycle, st.reason) == (True, "Delivered", "delivered", None)
    assert phone.requests[-1][1] == "/message/m1"
    missing = fired(c.state("nope"))
    assert missing == g.MessageState("nope", False)
    assert failed(client(phone, password="x").state("m1")).down


def test_client_state_id_is_path_encoded(phone):
    fired(client(phone).state("a b?c#d"))
    assert phone.requests[-1][1] == "/message/a%20b%3Fc%23d"


def test_client_inbox_query_and_total(phone):
    phone.receive("+46701234567", "hello", NOW - MIN)
    page = fired(client(phone).inbox(since=dt.datetime(2026, 3, 31, 12, 0, tzinfo=PLUS7), limit=10, offset=0))
    assert page.total == 1 and [e.text for e in page.entries] == ["hello"]
    target = phone.requests[-1][1]
    assert target == "/inbox?type=SMS&limit=10&offset=0&from=2026-03-31T12%3A00%3A00.000%2B07%3A00"


def test_client_inbox_errors(phone):
    class Old(Resource):
        isLeaf = True

        def render(self, request):
            request.setResponseCode(404)
            return b""

    c = gc.SMSGateClient(StubTreq(Old()), "http://p:8080", "u", "p", clock=task.Clock())
    err = failed(c.inbox())
    assert "v1.59.0" in err.reason and err.down

    class Garbage(Resource):
        isLeaf = True

        def render(self, request):
            return b"<html>"

    c = gc.SMSGateClient(StubTreq(Garbage()), "http://p:8080", "u", "p", clock=task.Clock())
    assert not failed(c.inbox()).down


def test_client_inbox_oversize_answer(phone):
    for i in range(20):
        phone.receive("+1", "x" * 100, NOW - MIN + i)
    err = failed(client(phone, max_response=500).inbox())
    assert "over 500 bytes" in err.reason


def test_client_health(phone):
    h = fired(client(phone).health())
    assert (h.reachable, h.status) == (True, "pass")
    assert "Authorization" in phone.requests[-1][2]  # harmless: /health ignores it
    phone.health_status = "fail"
    h = fired(client(phone).health())
    assert (h.reachable, h.http_status, h.status) == (True, 500, "fail")


def test_client_poll_inbox(phone, log):
    phone.receive("+1", "one", NOW - 2 * MIN)
    phone.receive("+2", "two", NOW - MIN)
    c = client(phone)
    result = fired(c.poll_inbox(gi.InboxState.start(NOW - 10 * MIN), gi.InboxReader(page_size=1)))
    assert [e.text for e in result.new] == ["one", "two"]
    assert fired(c.poll_inbox(result.state, gi.InboxReader(page_size=1))).new == ()


def test_client_poll_inbox_error_midway_changes_nothing(phone):
    phone.receive("+1", "one", NOW - MIN)
    c = client(phone)
    original = phone.handle
    calls = [0]

    def flaky(method, target, headers, body):
        calls[0] += 1
        if calls[0] == 3:
            return 500, {}, b'{"message":"Failed to count incoming messages"}'
        return original(method, target, headers, body)

    phone.handle = flaky
    err = failed(c.poll_inbox(gi.InboxState.start(NOW - 10 * MIN), gi.InboxReader()))
    assert "Failed to count" in err.reason and not err.down


def test_client_construction_checks():
    for base in ("", "phone:8080", "ftp://x"):
        with pytest.raises(ValueError):
            gc.SMSGateClient(Refusing(), base, "u", "p", clock=task.Clock())
    with pytest.raises(ValueError):
        gc.SMSGateClient(Refusing(), "http://p", "u:x", "p", clock=task.Clock())


def test_client_base_url_with_a_prefix(phone):
    class Prefixed(Resource):
        isLeaf = True

        def render(self, request):
            self.uri = request.uri
            request.setResponseCode(202)
            return b"{}"

    res = Prefixed()
    fired(gc.SMSGateClient(StubTreq(res), "http://p:8080/gw/", "u", "p", clock=task.Clock()).send("m", "+1", "x"))
    assert res.uri == b"/gw/message"


def test_smsgate_import_pulls_in_no_twisted():
    code = ("import sys, websmsd.android.smsgate, websmsd.android.smsgate_inbox, websmsd.android.smsgate_client, "
            "websmsd.android.medic; "
            "bad = [m for m in sys.modules if m == 'twisted' or m.startswith(('twisted.', 'treq'))]; "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT, timeout=60)


# --------------------------------------------------------------------------------------
# The fake phone itself, over a real port with plain urllib (as black-box tests use it)
# --------------------------------------------------------------------------------------


def test_fake_phone_over_urllib():
    import socket
    import urllib.error
    import urllib.request

    from websmsd.android.basicauth import basic_header

    fake = FakeSMSGate().serve()
    try:
        with urllib.request.urlopen(fake.url + "/health", timeout=10) as r:
            assert r.status == 200 and json.load(r)["status"] == "pass"
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(fake.url + "/inbox", timeout=10)
        assert e.value.code == 401 and e.value.read() == b""
        assert e.value.headers["WWW-Authenticate"] == 'Basic realm="Access to SMS Gateway", charset="UTF-8"'
        auth = {"Authorization": basic_header(fake.user, fake.password), "Content-Type": "application/json"}
        post = urllib.request.Request(fake.url + "/messages", data=g.send_body("m1", "+46701234567", "x"),
                                      headers=auth, method="POST")
        with urllib.request.urlopen(post, timeout=10) as r:
            assert r.status == 202 and json.load(r)["state"] == "Pending"
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(post, timeout=10)
        assert e.value.code == 409
        fake.receive("+46701234567", "hi", NOW - MIN)
        get = urllib.request.Request(fake.url + "/inbox?limit=1&offset=0", headers=auth)
        with urllib.request.urlopen(get, timeout=10) as r:
            assert r.headers["X-Total-Count"] == "1" and json.load(r)[0]["contentPreview"] == "hi"
        fake.silent = True
        with pytest.raises((socket.timeout, urllib.error.URLError, TimeoutError)):
            urllib.request.urlopen(fake.url + "/health", timeout=0.5)
    finally:
        fake.close()


@pytest.mark.parametrize("query,status,message", [
    ("limit=0", 400, "limit must be between 1 and 500"), ("limit=501", 400, "limit must be between 1 and 500"),
    ("limit=abc", 200, None), ("offset=-1", 400, "offset must be >= 0"), ("type=FAX", 400, "Invalid type"),
    ("from=2026-03-01T00:00:00", 400, "Invalid from datetime"), ("to=yesterday", 400, "Invalid to datetime"),
    ("from=2026-03-31T00:00:00Z&to=2026-03-01T00:00:00Z", 400, "Start date cannot be after end date"),
    ("deviceId=other", 400, "Invalid device ID"),
])
def test_fake_phone_inbox_validation(query, status, message):
    fake = FakeSMSGate()
    got, _, body = fake.handle("GET", "/inbox?" + query, auth_headers(fake), b"")
    assert got == status
    if message:
        assert json.loads(body) == {"message": message}


# --------------------------------------------------------------------------------------
# A real socket, a real reactor and real treq (in a child process), against FakeSMSGate
# --------------------------------------------------------------------------------------

WIRE_TIMEOUT = 60


@pytest.fixture(scope="module")
def wire():
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([ROOT, os.path.join(ROOT, "tests"),
                                                       os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run([sys.executable, os.path.abspath(__file__), "--wire"], capture_output=True,
                          timeout=WIRE_TIMEOUT, env=env, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr.decode(errors="replace")[-3000:]
    return json.loads(proc.stdout.decode().strip().splitlines()[-1])


def test_wire_send_and_repeat(wire):
    assert wire["send"] == [True, 202, "0000018f00000001"]
    assert wire["repeat"] == [True, 409]
    assert wire["post_target"] == "/message"


def test_wire_state(wire):
    assert wire["state"] == ["Sent", "sent"]


def test_wire_inbox_offset_travels_as_percent_2b(wire):
    assert "%2B07%3A00" in wire["inbox_target"] and "+" not in wire["inbox_target"]
    assert wire["inbox"] == [["late"], 1]
    assert wire["poll"] == ["late"]


def test_wire_silent_phone_times_out_as_down(wire):
    assert wire["silent"][:2] == [False, True] and "within 1 s" in wire["silent"][2]


def test_wire_closed_port_is_down(wire):
    assert wire["closed"][:2] == [False, True] and "refused" in wire["closed"][2]


def test_wire_health_fail_is_reachable(wire):
    assert wire["health"] == [True, 500, "fail"]


def _wire_main():  # pragma: no cover - runs in the child process
    import socket

    import treq
    from twisted.internet import reactor

    fake = FakeSMSGate().serve()
    fake.receive("+46701234567", "late", NOW - DAY)

    async def main():
        out = {}
        c = gc.SMSGateClient(treq, fake.url, fake.user, fake.password, clock=reactor, timeout=10)
        o = await c.send("0000018f00000001", "+46701234567", "hi")
        out["send"] = [o.ok, o.status, o.provider_id]
        out["post_target"] = fake.requests[-1][1]
        o = await c.send("0000018f00000001", "+46701234567", "hi")
        out["repeat"] = [o.ok, o.status]
        fake.set_state("0000018f00000001", "Sent")
        st = await c.state("0000018f00000001")
        out["state"] = [st.state, st.lifecycle]
        page = await c.inbox(since=dt.datetime(2026, 3, 1, tzinfo=PLUS7), limit=5, offset=0)
        out["inbox_target"] = fake.requests[-1][1]
        out["inbox"] = [[e.text for e in page.entries], page.total]
        result = await c.poll_inbox(gi.InboxState.start(NOW - 3 * DAY), gi.InboxReader())
        out["poll"] = [e.text for e in result.new]
        fake.health_status = "fail"
        h = await c.health()
        out["health"] = [h.reachable, h.http_status, h.status]
        fake.silent = True
        quick = gc.SMSGateClient(treq, fake.url, fake.user, fake.password, clock=reactor, timeout=1)
        o = await quick.send("0000018f00000002", "+46701234567", "hi")
        out["silent"] = [o.ok, o.down, o.reason]
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        s.close()
        closed = gc.SMSGateClient(treq, f"http://127.0.0.1:{port}", "u", "p", clock=reactor, timeout=5)
        o = await closed.send("0000018f00000003", "+46701234567", "hi")
        out["closed"] = [o.ok, o.down, o.reason]
        return out

    outcome = {}

    def start():
        d = defer.ensureDeferred(main())
        d.addCallbacks(lambda r: outcome.setdefault("result", r),
                       lambda f: outcome.setdefault("error", f.getTraceback()))
        d.addBoth(lambda _: reactor.stop())

    reactor.callWhenRunning(start)
    reactor.callLater(WIRE_TIMEOUT - 10, reactor.stop)
    reactor.run()
    fake.close()
    if "result" not in outcome:
        sys.stderr.write(outcome.get("error", "timed out\n"))
        sys.exit(1)
    print(json.dumps(outcome["result"]))


if __name__ == "__main__" and sys.argv[1:] == ["--wire"]:
    _wire_main()
