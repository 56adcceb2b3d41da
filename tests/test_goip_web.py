"""The GoIP web API: pure request building and answer parsing (websmsd.goip.web) and the
treq client (websmsd.goip.webclient), with treq.testing.StubTreq and task.Clock; and one
run of the real client against the fake GoIP web server (tests/goippeer.py).

Answers quoted here are the ones published for real devices (the seed article's GoIP-4
status XML, the two send.html answer forms, node-goip's samples).
"""

from __future__ import annotations

import base64
import json
import random
import subprocess
import sys
import textwrap
from pathlib import Path
from urllib.parse import parse_qsl, urlsplit

import pytest

from websmsd.goip import web
from websmsd.goip.web import LineJob, WebAPIError

ROOT = Path(__file__).resolve().parent.parent

ARTICLE_STATUS = """<?xml version="1.0" encoding="utf-8"?> <send-sms-status> <id1>57867a25</id1>
<status1>DONE</status1> <error1></error1> <id2>57867277</id2> <status2>ERRORDONE</status2>
<error2>send, but provider not reply.</error2> <id3>57876006</id3> <status3>DONE</status3>
<error3>Баланс: 57.2 руб.</error3> <id4></id4> <status4>DONE</status4> <error4></error4> <id5></id5>
<status5></status5> <error5></error5> <id6></id6> <status6></status6> <error6></error6> <id7></id7>
<status7></status7> <error7></error7> <id8></id8> <status8></status8> <error8></error8>
</send-sms-status>""".encode()


# ---------------------------------------------------------------------------------------
# Requests
# ---------------------------------------------------------------------------------------


def test_send_request():
    r = web.send_request("http://192.168.1.190", "admin", "p&w d", 1, "+79991234567", "Привет мир & co\n2")
    assert r.method == "GET" and r.body is None
    parts = urlsplit(r.url)
    assert (parts.scheme, parts.netloc, parts.path) == ("http", "192.168.1.190", "/default/en_US/send.html")
    assert parse_qsl(parts.query) == [("u", "admin"), ("p", "p&w d"), ("l", "1"), ("n", "+79991234567"),
                                       ("m", "Привет мир & co\n2")]
    assert "+" not in parts.query  # spaces as %20, plus signs as %2B
    assert r.log_url == "http://192.168.1.190/default/en_US/send.html"
    headers = dict(r.headers)
    assert base64.b64decode(headers["Authorization"][6:]) == b"admin:p&w d"
    assert "p&w d" not in repr(r) and "Authorization" not in repr(r)


def test_base_url_forms():
    for base in ("http://10.0.0.5:8080", "http://10.0.0.5:8080/", "http://10.0.0.5:8080/default/en_US/"):
        r = web.status_request(base, "admin", "admin")
        assert r.url == "http://10.0.0.5:8080/default/en_US/send_status.xml?u=admin&p=admin"
        assert r.log_url == "http://10.0.0.5:8080/default/en_US/send_status.xml"
    assert web.status_request("https://[::1]:8443", "a", "b").log_url == "https://[::1]:8443/default/en_US/send_status.xml"


@pytest.mark.parametrize("base", [
    "ftp://x", "http://", "http://admin:admin@goip", "http://goip/?a=1", "http://goip/#x", "goip",
    "http://go ip", "http://goip:99999", None,
])
def test_bad_base_urls(base):
    with pytest.raises(WebAPIError):
        web.status_request(base, "admin", "admin")


def test_form_requests():
    r = web.send_form_request("http://goip", "admin", "admin", 2, "89991234567", "Hi there!", "57867a25")
    assert r.method == "POST" and r.url == "http://goip/default/en_US/sms_info.html?type=sms"
    assert parse_qsl(r.body.decode()) == [("line", "2"), ("smskey", "57867a25"), ("action", "SMS"),
                                          ("telnum", "89991234567"), ("smscontent", "Hi there!"), ("send", "Send")]
    assert dict(r.headers)["Content-Type"] == "application/x-www-form-urlencoded"
    r = web.ussd_request("http://goip", "admin", "admin", 1, "*100#", "57876006")
    assert r.url == "http://goip/default/en_US/sms_info.html?type=ussd"
    assert r.body == b"line1=1&smskey=57876006&action=USSD&telnum=%2A100%23&send=Send"


@pytest.mark.parametrize("call", [
    lambda: web.send_request("http://g", "a", "b", 0, "+1", "x"),
    lambda: web.send_request("http://g", "a", "b", 65, "+1", "x"),
    lambda: web.send_request("http://g", "a", "b", True, "+1", "x"),
    lambda: web.send_request("http://g", "a", "b", 1, "+1\r\n", "x"),
    lambda: web.send_request("http://g", "a", "b", 1, "abc", "x"),
    lambda: web.send_request("http://g", "a", "b", 1, "+1", ""),
    lambda: web.send_request("http://g", "a", "b", 1, "+1", "x" * 3001),
    lambda: web.send_request("http://g", "a", "b", 1, "+1", "\ud800"),
    lambda: web.send_request("http://g", "a:b", "b", 1, "+1", "x"),
    lambda: web.send_request("http://g", "a", "b\r\nX: y", 1, "+1", "x"),
    lambda: web.send_form_request("http://g", "a", "b", 1, "+1", "x", "bad key"),
    lambda: web.ussd_request("http://g", "a", "b", 1, "*100#\r\n", "k"),
    lambda: web.ussd_request("http://g", "a", "b", 1, "", "k"),
])
def test_bad_request_values(call):
    with pytest.raises(WebAPIError):
        call()


# ---------------------------------------------------------------------------------------
# send.html answers
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("body, line, number, key", [
    (b"Sending, L1 Send SMS to 89991234567; ID:55c489da", 1, "89991234567", "55c489da"),
    (b"Sending,L1 Send SMS to:89991234567; ID:00000e7c", 1, "89991234567", "00000e7c"),
    (b"Sending,L4 Send SMS to:+79991234567; ID:00000E7C\r\n", 4, "+79991234567", "00000E7C"),
    (b"<html><body>Sending, L2 Send SMS to 123; ID:abc</body></html>", 2, "123", "abc"),
])
def test_send_answer_accepted(body, line, number, key):
    a = web.parse_send_answer(body)
    assert a.accepted and (a.line, a.number, a.smskey) == (line, number, key)


@pytest.mark.parametrize("body, kind, error", [
    (b"ERROR,L2 GSM logout", web.LINE_DOWN, "L2 GSM logout"),
    (b"ERROR,user or password error", web.AUTH, "user or password error"),
    (b"ERROR, L1 busy\r\n", web.REFUSED, "L1 busy"),
    (b"  error: something\x00 \x1b[31m", web.REFUSED, "something [31m"),
    (b"ERROR", web.REFUSED, "ERROR"),
    (b"<html>ERROR,L3 no sim</html>", web.LINE_DOWN, "L3 no sim"),
])
def test_send_answer_errors(body, kind, error):
    a = web.parse_send_answer(body)
    assert not a.accepted and a.kind == kind and a.error == error


@pytest.mark.parametrize("body", [b"", b"OK", b"<html>login</html>", b"Sending...", b"\xff\xfe", b"x" * (300 * 1024)])
def test_send_answer_garbage(body):
    with pytest.raises(WebAPIError):
        web.parse_send_answer(body)


# ---------------------------------------------------------------------------------------
# send_status.xml
# ---------------------------------------------------------------------------------------


def test_article_status_eight_entries_on_a_four_line_device():
    jobs = web.parse_status(ARTICLE_STATUS)
    assert sorted(jobs) == list(range(1, 9))
    assert jobs[1] == LineJob(1, "57867a25", "DONE", "")
    assert jobs[2] == LineJob(2, "57867277", "ERRORDONE", "send, but provider not reply.")
    assert jobs[3].error == "Баланс: 57.2 руб."
    assert jobs[8] == LineJob(8, "", "", "")
    assert web.job_state(jobs, 1, "57867A25") == (web.DONE, "")
    assert web.job_state(jobs, 2, "57867277") == (web.FAILED, "send, but provider not reply.")
    assert web.job_state(jobs, 3, "57876006") == (web.DONE, "Баланс: 57.2 руб.")
    assert web.job_state(jobs, 1, "other") == (web.PENDING, "")  # not our job (yet)
    assert web.job_state(jobs, 9, "x") == (web.PENDING, "")
    assert web.maybe_sent_despite_error(jobs[2].error)


def test_status_self_closing_tags_and_whitespace():
    body = b"""<?xml version="1.0"?>
    <send-sms-status>
      <id1>0000006d</id1><status1></status1><error1/>
      <id2/><status2 /><error2/>
      < id3 >k3</ id3 ><status3>
        DONE
      </status3><error3>a &lt;b&gt; &amp; &#233;&#x263A; &#0; &nbsp;</error3>
    </send-sms-status>"""
    jobs = web.parse_status(body)
    assert jobs[1] == LineJob(1, "0000006d", "", "")
    assert web.job_state(jobs, 1, "0000006d") == (web.PENDING, "")  # still sending
    assert jobs[2] == LineJob(2, "", "", "")
    assert jobs[3] == LineJob(3, "k3", "DONE", "a <b> & é☺ \ufffd &nbsp;")


def test_status_entities_are_never_expanded():
    body = b"""<?xml version="1.0"?><!DOCTYPE x [<!ENTITY a "aaaaaaaaaa"><!ENTITY b "&a;&a;&a;&a;">]>
    <send-sms-status><id1>k</id1><status1>ERRORDONE</status1><error1>&b;&b;</error1></send-sms-status>"""
    jobs = web.parse_status(body)
    assert jobs[1].error == "&b;&b;"


def test_status_other_error_statuses_and_odd_lines():
    body = b"<send-sms-status><id1>k</id1><status1>Error</status1><error1>x</error1>" \
           b"<id0>z</id0><id99>z</id99><status5>DONE</status5></send-sms-status>"
    jobs = web.parse_status(body)
    assert sorted(jobs) == [1, 5]
    assert web.job_state(jobs, 1, "k") == (web.FAILED, "x")
    assert jobs[5] == LineJob(5, "", "DONE", "")


@pytest.mark.parametrize("body", [
    b"", b"<html>login</html>", b"ERROR,user or password error", b"x" * (300 * 1024), "text",
])
def test_status_garbage(body):
    with pytest.raises(WebAPIError):
        web.parse_status(body)


def test_status_parser_never_raises_anything_else():
    rng = random.Random(7)
    pieces = [b"<send-sms-status>", b"</send-sms-status>", b"<id1>", b"</id1>", b"<status1>", b"DONE",
              b"<error2/>", b"&#x", b"&amp;", b"<", b">", b"\xff", b"1", b"/", b" "]
    for _ in range(3000):
        body = b"".join(rng.choice(pieces) for _ in range(rng.randrange(0, 30)))
        try:
            web.parse_status(body)
        except WebAPIError:
            pass
        try:
            web.parse_send_answer(body)
        except WebAPIError:
            pass


def test_web_module_imports_nothing_from_twisted():
    code = textwrap.dedent("""
        import sys
        import websmsd.goip.web
        bad = sorted(m for m in sys.modules if m.split('.')[0] in ('twisted', 'treq'))
        print(bad)
        sys.exit(1 if bad else 0)
    """)
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
