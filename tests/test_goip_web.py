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


# =======================================================================================
# The treq client
# =======================================================================================

from twisted.internet import defer, task  # noqa: E402
from twisted.logger import Logger, formatEvent  # noqa: E402
from twisted.web.resource import Resource  # noqa: E402
from twisted.web.server import NOT_DONE_YET  # noqa: E402
from treq.testing import StubTreq  # noqa: E402

from websmsd.goip.outcome import SendOutcome, UssdError  # noqa: E402
from websmsd.goip.webclient import GoIPWebClient  # noqa: E402


def status_xml(jobs):
    """jobs: {line: (id, status, error)} -> an 8-line send_status.xml, empty tags self-closed."""
    out = ['<?xml version="1.0" encoding="utf-8"?>', "<send-sms-status>"]
    for n in range(1, 9):
        for tag, value in zip(("id", "status", "error"), jobs.get(n, ("", "", ""))):
            out.append(f"<{tag}{n}>{value}</{tag}{n}>" if value else f"<{tag}{n}/>")
    out.append("</send-sms-status>")
    return "\n".join(out).encode()


class ScriptedGoIP(Resource):
    """Answers each page from a list of (status, body) or callables; records requests."""

    isLeaf = True

    def __init__(self):
        super().__init__()
        self.requests = []
        self.answers = {"send.html": [], "send_status.xml": [], "sms_info.html": []}
        self.hold = False  # keep requests open (for timeouts)
        self.held = []

    def render(self, request):
        page = request.path.decode().rsplit("/", 1)[-1]
        body = request.content.read() if request.content else b""
        self.requests.append({
            "method": request.method.decode(), "page": page, "uri": request.uri.decode(),
            "args": {k.decode(): [x.decode() for x in v] for k, v in request.args.items()},
            "body": body, "auth": request.getHeader("authorization"),
        })
        if self.hold:
            self.held.append(request)
            return NOT_DONE_YET
        queue = self.answers.get(page)
        if not queue:
            request.setResponseCode(404)
            return b"not found"
        status, answer = queue[0] if len(queue) == 1 else queue.pop(0)
        request.setResponseCode(status)
        return answer


class Harness:
    def __init__(self, **kw):
        self.clock = task.Clock()
        self.goip = ScriptedGoIP()
        self.stub = StubTreq(self.goip)
        self.events = []
        args = dict(clock=self.clock, timeout=10.0, poll_interval=2.0, deadline=120.0)
        args.update(kw)
        self.client = GoIPWebClient(self.stub, "http://192.168.1.190", "admin", "s3cret", **args)
        self.client._log = Logger(namespace="test", observer=self.events.append)

    def run(self, d, step=2.0, limit=400):
        """Advance the clock until d fires; its result (or Failure)."""
        out = []
        d.addBoth(out.append)
        for _ in range(limit):
            self.stub.flush()
            if out:
                return out[0]
            self.clock.advance(step)
        raise AssertionError("never fired")

    def pages(self):
        return [r["page"] for r in self.goip.requests]

    def log_text(self):
        return "\n".join(formatEvent(e) + repr(e) for e in self.events)


def test_send_polls_until_done():
    h = Harness()
    h.goip.answers["send.html"] = [(200, b"Sending, L1 Send SMS to +79991234567; ID:55c489da")]
    h.goip.answers["send_status.xml"] = [
        (200, status_xml({1: ("0000000a", "DONE", "")})),  # the line's previous job
        (200, status_xml({1: ("55c489da", "", "")})),  # ours, still sending
        (200, status_xml({1: ("55c489da", "DONE", "")})),
    ]
    outcome = h.run(h.client.send(1, "+79991234567", "Привет"))
    assert outcome == SendOutcome(True, reason="sent", provider_id="55c489da")
    assert h.pages() == ["send.html", "send_status.xml", "send_status.xml", "send_status.xml"]
    first = h.goip.requests[0]
    assert first["method"] == "GET"
    assert first["args"] == {"u": ["admin"], "p": ["s3cret"], "l": ["1"], "n": ["+79991234567"], "m": ["Привет"]}
    assert base64.b64decode(first["auth"][6:]) == b"admin:s3cret"
    assert h.goip.requests[1]["args"] == {"u": ["admin"], "p": ["s3cret"]}
    assert "s3cret" not in h.log_text() and "Привет" not in h.log_text()
    assert h.clock.getDelayedCalls() == []


def test_send_failed_with_the_error_text():
    h = Harness()
    h.goip.answers["send.html"] = [(200, b"Sending,L2 Send SMS to:123; ID:00000e7c")]
    h.goip.answers["send_status.xml"] = [(200, status_xml({2: ("00000e7c", "ERRORDONE", "sim card error")}))]
    o = h.run(h.client.send(2, "123", "x"))
    assert not o.ok and not o.maybe_sent and "sim card error" in o.reason and o.provider_id == "00000e7c"


def test_provider_not_reply_may_have_been_sent():
    h = Harness()
    h.goip.answers["send.html"] = [(200, b"Sending,L2 Send SMS to:123; ID:00000e7c")]
    h.goip.answers["send_status.xml"] = [
        (200, status_xml({2: ("00000e7c", "ERRORDONE", "send, but provider not reply.")}))]
    o = h.run(h.client.send(2, "123", "x"))
    assert not o.ok and o.maybe_sent


def test_deadline_means_it_may_have_been_sent():
    h = Harness(deadline=20.0)
    h.goip.answers["send.html"] = [(200, b"Sending, L1 Send SMS to 123; ID:abc")]
    h.goip.answers["send_status.xml"] = [(200, status_xml({1: ("abc", "", "")}))]
    o = h.run(h.client.send(1, "123", "x"))
    assert not o.ok and o.maybe_sent and "may have been sent" in o.reason and o.provider_id == "abc"
    assert h.pages().count("send_status.xml") == 10  # every 2 s for 20 s
    assert h.clock.seconds() == 20.0


def test_unreadable_status_is_retried_and_reported_at_the_deadline():
    h = Harness(deadline=6.0)
    h.goip.answers["send.html"] = [(200, b"Sending, L1 Send SMS to 123; ID:abc")]
    h.goip.answers["send_status.xml"] = [(200, b"<html>busy</html>"), (500, b"oops")]
    o = h.run(h.client.send(1, "123", "x"))
    assert o.maybe_sent and "HTTP 500" in o.reason


@pytest.mark.parametrize("body, down, auth, words", [
    (b"ERROR,L1 GSM logout", True, False, "GSM logout"),
    (b"ERROR,user or password error", True, True, "user and password"),
    (b"ERROR,L1 busy", False, False, "retry later"),
])
def test_refused_sends(body, down, auth, words):
    h = Harness()
    h.goip.answers["send.html"] = [(200, body)]
    o = h.run(h.client.send(1, "123", "x"))
    assert not o.ok and not o.permanent and not o.maybe_sent
    assert (o.down, o.auth_failed) == (down, auth) and words in o.reason
    assert h.pages() == ["send.html"]


def test_http_errors_are_outcomes():
    h = Harness()
    h.goip.answers["send.html"] = [(401, b"no")]
    o = h.run(h.client.send(1, "123", "x"))
    assert o.auth_failed and o.down
    h.goip.answers["send.html"] = [(500, b"no")]
    o = h.run(h.client.send(1, "123", "x"))
    assert not o.ok and not o.down and not o.maybe_sent and "HTTP 500" in o.reason
    h.goip.answers["send.html"] = [(200, b"<html>Login</html>")]
    o = h.run(h.client.send(1, "123", "x"))
    assert o.maybe_sent  # HTTP 200 yet an unknown answer


def test_send_timeout_may_have_been_sent():
    h = Harness(timeout=10.0)
    h.goip.hold = True
    o = h.run(h.client.send(1, "123", "x"), step=1.0)
    assert not o.ok and o.maybe_sent and "no answer within 10 s" in o.reason
    assert h.clock.getDelayedCalls() == []


class RefusingTreq:
    """A treq whose connections are refused (no GoIP listening)."""

    def __init__(self):
        self.calls = 0

    def request(self, method, url, **kw):
        from twisted.internet.error import ConnectionRefusedError
        self.calls += 1
        return defer.fail(ConnectionRefusedError("refused"))


def test_connection_refused_is_down_and_not_sent():
    clock = task.Clock()
    client = GoIPWebClient(RefusingTreq(), "http://goip", "admin", "pw", clock=clock)
    out = []
    client.send(1, "123", "x").addBoth(out.append)
    o = out[0]
    assert not o.ok and o.down and not o.maybe_sent and "connection refused" in o.reason


def test_bad_values_are_permanent_and_send_nothing():
    h = Harness()
    for args in ((1, "12\r\n3", "x"), (0, "123", "x"), (1, "123", ""), (1, "123", "x" * 3001)):
        o = h.run(h.client.send(*args))
        assert o.permanent and not o.ok
    assert h.goip.requests == []


def test_one_job_per_line_at_a_time():
    h = Harness()
    h.goip.answers["send.html"] = [
        (200, b"Sending, L1 Send SMS to 1; ID:k1"),
        (200, b"Sending, L1 Send SMS to 2; ID:k2"),
    ]
    h.goip.answers["send_status.xml"] = [
        (200, status_xml({1: ("k1", "DONE", "")})),
        (200, status_xml({1: ("k2", "DONE", "")})),
    ]
    d1 = h.client.send(1, "1", "a")
    d2 = h.client.send(1, "2", "b")
    o1 = h.run(d1)
    o2 = h.run(d2)
    assert (o1.provider_id, o2.provider_id) == ("k1", "k2")
    # The second send.html only after the first job was final.
    assert h.pages() == ["send.html", "send_status.xml", "send.html", "send_status.xml"]


def test_post_form_send_with_own_smskey():
    h = Harness(send_method="post", smskey_factory=lambda: "57867a25")
    h.goip.answers["sms_info.html"] = [(200, b"<html>whatever page</html>")]
    h.goip.answers["send_status.xml"] = [(200, status_xml({3: ("57867a25", "DONE", "")}))]
    o = h.run(h.client.send(3, "89991234567", "Hi & bye"))
    assert o.ok and o.provider_id == "57867a25"
    post = h.goip.requests[0]
    assert post["method"] == "POST" and post["uri"] == "/default/en_US/sms_info.html?type=sms"
    assert parse_qsl(post["body"].decode()) == [
        ("line", "3"), ("smskey", "57867a25"), ("action", "SMS"), ("telnum", "89991234567"),
        ("smscontent", "Hi & bye"), ("send", "Send")]
    assert base64.b64decode(post["auth"][6:]) == b"admin:s3cret"


def test_ussd_answer_from_the_error_field():
    h = Harness(smskey_factory=lambda: "57876006")
    h.goip.answers["sms_info.html"] = [(200, b"<html>ok</html>")]
    h.goip.answers["send_status.xml"] = [
        (200, status_xml({1: ("57876006", "", "")})),
        (200, ARTICLE_STATUS.replace(b"<id3>57876006", b"<id3>x").replace(b"<id1>57867a25</id1>\n<status1>DONE</status1> <error1></error1>",
                                                                          b"<id1>57876006</id1><status1>DONE</status1><error1>Balance: 57.2</error1>")),
    ]
    text = h.run(h.client.ussd(1, "*100#"))
    assert text == "Balance: 57.2"
    post = h.goip.requests[0]
    assert post["uri"] == "/default/en_US/sms_info.html?type=ussd"
    assert parse_qsl(post["body"].decode()) == [("line1", "1"), ("smskey", "57876006"), ("action", "USSD"),
                                                ("telnum", "*100#"), ("send", "Send")]


def test_ussd_failures_are_ussd_errors():
    h = Harness(smskey_factory=lambda: "k", deadline=10.0)
    h.goip.answers["sms_info.html"] = [(200, b"ok")]
    h.goip.answers["send_status.xml"] = [(200, status_xml({1: ("k", "ERRORDONE", "USSD timeout")}))]
    f = h.run(h.client.ussd(1, "*100#"))
    assert f.check(UssdError) and "USSD timeout" in str(f.value)
    h.goip.answers["send_status.xml"] = [(200, status_xml({1: ("k", "", "")}))]
    f = h.run(h.client.ussd(1, "*100#"))
    assert f.check(UssdError) and "no USSD answer" in str(f.value)
    h.goip.answers["sms_info.html"] = [(401, b"no")]
    f = h.run(h.client.ussd(1, "*100#"))
    assert f.check(UssdError) and "401" in str(f.value)
    f = h.run(h.client.ussd(1, "*100#; reboot"))
    assert f.check(UssdError)


def test_constructor_refuses_bad_settings():
    with pytest.raises(WebAPIError):
        GoIPWebClient(None, "http://admin:admin@goip", "admin", "admin", clock=task.Clock())
    with pytest.raises(ValueError):
        GoIPWebClient(None, "http://goip", "admin", "admin", clock=task.Clock(), send_method="put")


# ---------------------------------------------------------------------------------------
# The real client against the fake GoIP web server, in a subprocess with a real reactor
# ---------------------------------------------------------------------------------------

WEB_DRIVER = r'''
import json, sys
sys.path.insert(0, sys.argv[1])
import treq
from twisted.internet import defer, task
from websmsd.goip.outcome import UssdError
from websmsd.goip.webclient import GoIPWebClient

async def main(reactor):
    client = GoIPWebClient(treq, sys.argv[2], "admin", "s3cret", clock=reactor, poll_interval=0.05, deadline=10)
    results = []
    for line, number, text in json.loads(sys.argv[3]):
        o = await client.send(line, number, text)
        results.append({"ok": o.ok, "reason": o.reason, "id": o.provider_id, "down": o.down,
                        "auth": o.auth_failed})
    try:
        results.append({"ussd": await client.ussd(1, "*100#")})
    except UssdError as e:
        results.append({"ussd_error": str(e)})
    print(json.dumps(results))

task.react(lambda r: defer.ensureDeferred(main(r)))
'''


def test_real_treq_against_the_fake_goip_web():
    from goippeer import FakeGoIPWeb

    with FakeGoIPWeb("admin", "s3cret", lines=4, answer_form="colon", empty_tags="self",
                     polls_until_done=2, line_errors={2: "GSM logout"},
                     fail_numbers={"+70000000000": "sim card error"},
                     ussd_answers={"*100#": "Баланс 57.2 руб."}) as goip:
        jobs = [(1, "+79991234567", "Привет, мир & co"), (2, "+79991234567", "x"),
                (3, "+70000000000", "y"), (4, "+79990000000", "z")]
        result = subprocess.run([sys.executable, "-c", WEB_DRIVER, str(ROOT), goip.url, json.dumps(jobs)],
                                capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stderr
        out = json.loads(result.stdout.strip().splitlines()[-1])
        assert out[0]["ok"] and out[0]["id"] == goip.sent[0]["smskey"]
        assert goip.sent[0]["text"] == "Привет, мир & co"
        assert out[1]["down"] and "GSM logout" in out[1]["reason"]
        assert not out[2]["ok"] and "sim card error" in out[2]["reason"]
        assert out[3]["ok"]
        assert out[4] == {"ussd": "Баланс 57.2 руб."}
        assert [s["number"] for s in goip.sent] == ["+79991234567", "+70000000000", "+79990000000"]


def test_fake_goip_web_status_shape():
    import urllib.request
    from goippeer import FakeGoIPWeb

    with FakeGoIPWeb("admin", "pw", lines=4, empty_tags="self") as goip:
        with urllib.request.urlopen(goip.url + "/default/en_US/send.html?u=admin&p=pw&l=1&n=%2B123&m=hi%20there") as r:
            answer = r.read()
        assert web.parse_send_answer(answer).smskey == goip.sent[0]["smskey"]
        with urllib.request.urlopen(goip.url + "/default/en_US/send.html?u=admin&p=pw&l=1&n=1&m=x") as r:
            assert r.read() == b"ERROR,L1 busy"  # the first job is not final yet
        with urllib.request.urlopen(goip.url + "/default/en_US/send_status.xml?u=admin&p=pw") as r:
            xml = r.read()
        assert xml.count(b"<id") == 8 and b"<id2/>" in xml
        assert web.parse_status(xml)[1] == LineJob(1, goip.sent[0]["smskey"], "DONE", "")
        with urllib.request.urlopen(goip.url + "/default/en_US/send.html?u=admin&p=no&l=1&n=1&m=x") as r:
            assert r.read() == b"ERROR,user or password error"
