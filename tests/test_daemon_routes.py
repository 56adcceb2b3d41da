"""Black-box: routes in the real daemon.  Two ITSP interfaces (two independent fake ITSPs),
[route] rules with a fallback, replies that leave through the DID they came in on, and a
store upgraded in place from the release before routes."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import urllib.parse
from pathlib import Path

import pytest

from blackbox import ROOT, FakeITSP, api_json, curl


@pytest.fixture
def two_itsps():
    a, b = FakeITSP(), FakeITSP()
    yield a, b
    a.close()
    b.close()


def conf(a, b) -> dict:
    return dict(
        websms=(f"url_host [a] = {a.url}\nurl_path [a] = /a\nauth_method [a] = none\n"
                f"url_host [b] = {b.url}\nurl_path [b] = /b\nauth_method [b] = none\n"
                "number [b] = +12025550183\n"),
        websmsd="url_path [a] = /hook/a\nurl_path [b] = /hook/b\n",
        daemon="retry_base = 1\nretry_max = 2\n",
        route="prefix [se] = +46\nvia [se] = a, b\nprefix [us] = +1\nvia [us] = b\ndefault = a\n",
    )


def send(d, to, sender, body, **extra):
    return api_json(d.api_url + "/api/send",
                    {"to": to, "from": sender, "body": body, "wait": 10, **extra})


def routes_of(d, message_id):
    return d.rows("SELECT route, fallback, status FROM messages WHERE id = ?", (message_id,))[0]


def test_each_message_reaches_the_interface_its_route_names(make_daemon, two_itsps):
    a, b = two_itsps
    d = make_daemon(**conf(a, b))
    r = send(d, "+46701234567", "+15550001111", "to sweden")
    assert r["status"] == "SENT", r
    assert [req["path"] for req in a.wait(1)] == ["/a"] and b.requests == []
    r2 = send(d, "+12065550100", "+15550001111", "to the US")
    assert r2["status"] == "SENT" and [req["path"] for req in b.wait(1)] == ["/b"]
    r3 = send(d, "+4412345678", "+15550001111", "default")
    assert r3["status"] == "SENT" and len(a.wait(2)) == 2
    r4 = send(d, "+4412345678", "+15550001111", "named", interface="b")
    assert r4["status"] == "SENT" and len(b.wait(2)) == 2
    assert [routes_of(d, r["id"])[0] for r in (r, r2, r3, r4)] == [
        "itsp:a", "itsp:b", "itsp:a", "itsp:b"]
    # check-config tells the same story without the daemon.
    out = subprocess.run([sys.executable, "-m", "websmsd", "check-config", str(d.config),
                          "--route", "+46701234567"], capture_output=True, text=True, cwd=ROOT,
                         env={"PYTHONPATH": str(ROOT)})
    assert out.returncode == 0, out.stderr
    assert "via itsp:a" in out.stdout and "then itsp:b" in out.stdout
    assert "rule 'se' (prefix +46)" in out.stdout


def test_a_message_refused_for_good_goes_to_the_next_interface(make_daemon, two_itsps):
    a, b = two_itsps
    a.answers = [(400, b'{"error":"number not allowed"}')]
    d = make_daemon(**conf(a, b))
    r = send(d, "+46701234567", "+15550001111", "hej")
    assert r["status"] == "SENT", r  # the fallback took it within the wait
    assert len(a.wait(1)) == 1 and len(b.wait(1)) == 1
    assert routes_of(d, r["id"]) == ("itsp:b", "", "sent")
    tries = d.rows("SELECT ok, detail FROM attempts WHERE message_id = ? ORDER BY at", (r["id"],))
    assert [ok for ok, _ in tries] == [0, 1] and "number not allowed" in tries[0][1]


def test_a_reply_leaves_through_the_did_it_came_in_on(make_daemon, two_itsps):
    a, b = two_itsps
    d = make_daemon(**conf(a, b))
    # An SMS to +15557770000 comes in on b's webhook; the phone answers from that number.
    result = curl("-s", "-o", "/dev/null", "-w", "%{http_code}", "--data-urlencode",
                  "To=+15557770000", "--data-urlencode", "From=+46709999999",
                  "--data-urlencode", "Body=hello", d.webhook_url + "/hook/b")
    assert result.stdout == "200"
    d.wait_callfiles(1)
    r = send(d, "+46709999999", "+15557770000", "reply")
    assert r["status"] == "SENT"
    # Without the reply rule, +46 would go through a: it went through b, then a as fallback.
    assert routes_of(d, r["id"])[:2] == ("itsp:b", "itsp:a")
    assert len(b.wait(1)) == 1 and a.requests == []


def test_a_store_of_the_release_before_routes_is_upgraded_in_place(tmp_path, make_daemon,
                                                                     two_itsps):
    a, b = two_itsps
    d = make_daemon(start=False, **conf(a, b))
    shutil.copy(ROOT / "tests" / "fixtures" / "store" / "websmsd-v4.sqlite3", d.store)
    d.start()
    assert Path(str(d.store) + ".v4.bak").exists()
    rows = dict(d.rows("SELECT body, route FROM messages"))
    assert rows["outbound, retrying"] == "itsp" and rows["inbound, handed over"] == "callfile"
    found = json.loads(urllib.request.urlopen(
        d.api_url + "/api/messages?limit=10", timeout=30).read())["messages"]
    assert {m["route"] for m in found} == {"callfile", "itsp", "itsp:api-1", "itsp:api-2"}


import urllib.request  # noqa: E402
