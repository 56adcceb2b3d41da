"""The status listener: page, access rule, CSRF, JSON API, /metrics.

Unit tests drive a real twisted.web Site (the one service.py builds, with its capped
requests) over a StringTransport, with an inline Store; the black-box test at the end
runs the real daemon against a fake ITSP.
"""

from __future__ import annotations

import base64
import json
import re
import time
import urllib.error
import urllib.request
from types import SimpleNamespace
from typing import Dict, Optional, Tuple

import pytest
from twisted.internet import defer
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.error import ConnectionDone
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure

from websmsd.asterisk.callfile import CallFileSpool
from websmsd.asterisk.spool import CallFileChannel
from websmsd.channel import ChannelState
from websmsd.http import status
from websmsd.http.api import Access
from websmsd.http.board import ChannelBoard, listener_reporter
from websmsd.http.model import StatusModel
from websmsd.http.pages import CSRF, CSRF_LIFETIME
from websmsd.http.twsite import make_site
from websmsd.itsp.sink import ITSPSink
from websmsd.itsp.webhook import WebhookResource
from websmsd.message import CANCELLED, FAILED, IN, OUT, QUEUED, SENDING, SENT, Message
from websmsd.metrics import Family, Histogram, Metrics, exposition
from websmsd.outbox import Submitted
from websmsd.config import (AstQueueSettings, InboundSettings, OutboundInterface,
                              OutboundSettings)
from websmsd.store import Store

XSS = "<script>alert(1)</script>"
LOCAL = IPv4Address("TCP", "127.0.0.1", 40000)
REMOTE = IPv4Address("TCP", "192.0.2.10", 40000)


class Response:
    def __init__(self, raw: bytes):
        head, _, body = raw.partition(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        self.status = int(lines[0].split(b" ")[1])
        self.headers: Dict[str, list] = {}
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            self.headers.setdefault(name.decode().lower(), []).append(value.strip().decode())
        if self.header("transfer-encoding") == "chunked":
            out = b""
            while body:
                size, _, rest = body.partition(b"\r\n")
                n = int(size, 16)
                if n == 0:
                    break
                out += rest[:n]
                body = rest[n + 2:]
            body = out
        self.body = body
        self.text = body.decode("utf-8")

    def header(self, name: str) -> Optional[str]:
        values = self.headers.get(name.lower())
        return values[-1] if values else None

    def json(self) -> dict:
        return json.loads(self.text)


class Harness:
    """The status listener's Site with an inline store and real channel objects."""

    def __init__(self, tmp_path, access: Optional[Access] = None, csrf_clock=None):
        self.store = Store(str(tmp_path / "store.sqlite3"), run_inline=True)
        self.store.open()
        self.now = 1_800_000_000.0
        self.clock = lambda: self.now
        self.board = ChannelBoard()
        self.metrics = Metrics()
        self.outbound = OutboundSettings((
            OutboundInterface(name="", url_host="https://user:pw@sms.example.net",
                              url_path="/send?key=SECRET"),
            OutboundInterface(name="backup", url_host="http://127.0.0.1:9"),
        ))
        self.sent = []
        self.sinks = {i.name: ITSPSink(i, None, self.metrics) for i in self.outbound.interfaces}
        for sink in self.sinks.values():
            self.board.register(sink.status)
        self.spool = CallFileSpool(AstQueueSettings(
            outgoingdir=str(tmp_path / "outgoing"), stagingdir=str(tmp_path / "staging")))
        self.calls = CallFileChannel(self.spool, None, SimpleNamespace(seconds=self.clock),
                                     run_in_thread=lambda f, *a: defer.maybeDeferred(f, *a),
                                     since=self.now - 3600, metrics=self.metrics)
        self.calls.handed_over = 3
        self.board.register(self.calls.status)
        self.webhook = WebhookResource(InboundSettings(), self.store.add, now=self.clock,
                                       metrics=self.metrics)
        self.board.register(listener_reporter("webhook", "tcp:8080", None, self.now - 3600))
        self.woken = []
        self.store.listeners.append(self.woken.append)
        self.model = StatusModel(
            self.store, self.board, self.metrics,
            routes=["callfile", *(s.route for s in self.sinks.values())],
            started=self.now - 3600, clock=self.clock)

        harness = self

        class Outbox:
            def submit(self, to, sender, body, index="", channel="agi", wait=None):
                harness.sent.append((to, sender, body, index, channel))
                return defer.succeed(Submitted("QUEUED", "0123456789abcdef0123", None))

        self.csrf = CSRF(clock=csrf_clock or self.clock)
        self.access = access or Access()
        self.resource = status.make_status_resource(self.model, Outbox(), self.access, self.csrf)
        self.site = make_site(self.resource, status.MAX_REQUEST_BODY, reactor=Clock())

    def send(self, interface: str, ok: bool, reason: Optional[str] = None) -> None:
        """One attempt on that interface's route, as the dispatcher measures it (0.3 s)."""
        route = self.sinks[interface].route
        self.metrics.sent(route, self.now, self.now + 0.3, ok, reason or (None if ok else "HTTP 500"))
        self.now += 0.3

    def close(self) -> None:
        self.store.close()

    def add(self, direction=OUT, status_=FAILED, body="hello", to="+12025550160",
            sender="+15017122661", reason=None, created=None, route=None, **kw) -> Message:
        if route is None:
            route = "itsp" if direction == OUT else "callfile"
        m = Message(direction, route, to, sender, body, status=status_, reason=reason,
                    source="api" if direction == OUT else "webhook", **kw)
        m.created = self.now - 60 if created is None else created
        self.store.add([m])
        return m

    def request(self, method: str, path: str, headers: Optional[dict] = None,
                body: bytes = b"", peer=LOCAL, host: Optional[str] = "127.0.0.1:8480") -> Response:
        headers = dict(headers or {})
        if host is not None:
            headers.setdefault("Host", host)
        headers.setdefault("Connection", "close")
        if body or method == "POST":
            headers["Content-Length"] = str(len(body))
        raw = f"{method} {path} HTTP/1.1\r\n".encode()
        for k, v in headers.items():
            raw += f"{k}: {v}\r\n".encode("latin-1")
        raw += b"\r\n" + body
        proto = self.site.buildProtocol(peer)
        server_addr = (IPv6Address("TCP", "::1", 8480) if isinstance(peer, IPv6Address)
                       else IPv4Address("TCP", "127.0.0.1", 8480))
        transport = StringTransport(hostAddress=server_addr, peerAddress=peer)
        proto.makeConnection(transport)
        proto.dataReceived(raw)
        out = transport.value()
        proto.connectionLost(Failure(ConnectionDone()))
        assert out, f"no answer to {method} {path}"
        return Response(out)

    def get(self, path: str, **kw) -> Response:
        return self.request("GET", path, **kw)

    def post_form(self, path: str, fields: dict, headers: Optional[dict] = None, **kw) -> Response:
        from urllib.parse import urlencode

        h = {"Content-Type": "application/x-www-form-urlencoded"}
        h.update(headers or {})
        return self.request("POST", path, h, urlencode(fields).encode(), **kw)

    def post_json(self, path: str, payload=None, headers: Optional[dict] = None, **kw) -> Response:
        h = {"Content-Type": "application/json"}
        h.update(headers or {})
        body = b"" if payload is None else json.dumps(payload).encode()
        return self.request("POST", path, h, body, **kw)


@pytest.fixture
def h(tmp_path):
    harness = Harness(tmp_path)
    yield harness
    harness.close()


def _token(page: str, message_id: str, action: str) -> str:
    m = re.search(r'action="\./messages/%s/%s".*?name="csrf" value="([^"]+)"'
                  % (re.escape(message_id), action), page)
    assert m, f"no {action} form for {message_id}"
    return m.group(1)


def _basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


# -- the page ------------------------------------------------------------------------------


def test_message_text_and_peer_values_are_escaped(h):
    m = h.add(body=XSS, reason='ITSP said <b>"no"</b>', sender="+1<i>2</i>")
    h.webhook.record_refusal("forbidden", 403, "192.0.2.7", "/<img src=x onerror=alert(2)>",
                             "path <img> is not in url_path")
    r = h.get("/")
    assert r.status == 200
    assert r.header("content-type") == "text/html; charset=utf-8"
    assert XSS not in r.text and "&lt;script&gt;alert(1)&lt;/script&gt;" in r.text
    assert "<b>" not in r.text and "&lt;b&gt;&quot;no&quot;&lt;/b&gt;" in r.text
    assert "<i>" not in r.text and "+1&lt;i&gt;2&lt;/i&gt;" in r.text
    assert "<img" not in r.text and "/&lt;img src=x onerror=alert(2)&gt;" in r.text
    detail = h.get(f"/messages/{m.id}")
    assert detail.status == 200
    assert XSS not in detail.text and "&lt;script&gt;alert(1)&lt;/script&gt;" in detail.text


def test_page_shows_channels_queues_refusals_and_messages(h):
    failed = h.add(body="first", reason="HTTP 500: down")
    queued = h.add(status_=QUEUED, body="second", to="+4930123")
    inbound = h.add(direction=IN, status_=SENT, body="third", to="100", sender="+4940111")
    reported = h.add(status_=SENT, body="fourth", provider_id="SM1")
    h.store.report("SM1", ["itsp"], "delivered", "handset")
    old = h.add(body="two days old", created=h.now - 2 * 86400)
    h.send("", True)
    h.send("backup", False)
    h.webhook.record_refusal("bad_request", 400, "192.0.2.8", "/hook", "missing field From")
    page = h.get("/").text
    # channels: both ITSP interfaces (no credentials or query shown), spool, webhook
    assert "(default)" in page and "backup" in page
    assert "SECRET" not in page and "user:pw" not in page
    assert "HTTP 500" in page and "last success" in page
    assert "3 call files handed over" in page
    assert "tcp:8080" in page and "1 request refused since start" in page
    # refusals by reason and the last ones (source, path, reason; never message text)
    assert "bad_request: <strong>1</strong>" in page
    assert "192.0.2.8" in page and "missing field From" in page
    # messages of the last 24 h, newest first, with status, tries, error, report
    ids = re.findall(r'<tr id="m-([0-9a-f]+)"', page)
    assert set(ids) == {failed.id, queued.id, inbound.id, reported.id}
    assert old.id not in ids
    row = re.search(r'<tr id="m-%s".*?</tr>' % reported.id, page).group(0)
    assert _cell(row, "report") == "delivered" and 'title="reported ' in row
    row = re.search(r'<tr id="m-%s".*?</tr>' % failed.id, page).group(0)
    assert "HTTP 500: down" in row and 'class="resend"' in row and 'class="cancel"' not in row
    row = re.search(r'<tr id="m-%s".*?</tr>' % queued.id, page).group(0)
    assert 'class="cancel"' in row and 'class="resend"' not in row
    # older messages: ask for more hours
    page = h.get("/?hours=72").text
    assert old.id in page


def _row(page: str, m: Message) -> str:
    return re.search(r'<tr id="m-%s".*?</tr>' % m.id, page).group(0)


def _cell(row: str, name: str) -> str:
    """A cell's text, tags dropped."""
    html = re.search(r'<td[^>]*class="[^"]*\b%s\b[^"]*">(.*?)</td>' % name, row).group(1)
    return " ".join(re.sub(r"<[^>]+>", " ", html).split())


def test_inbound_sent_says_it_was_handed_to_asterisk(h):
    inbound = h.add(direction=IN, status_=SENT, to="100", sender="+4940111")
    outbound = h.add(status_=SENT)
    page = h.get("/").text
    row = _row(page, inbound)
    assert 'data-status="sent"' in row and "st-sent" in row  # for machines, unchanged
    assert _cell(row, "status") == "handed to Asterisk"
    assert "Asterisk&#x27;s spool" in row  # the badge's title says where the file is
    assert _cell(_row(page, outbound), "status") == "sent"
    detail = h.get(f"/messages/{inbound.id}").text
    assert "handed to Asterisk" in detail and "Asterisk&#x27;s spool" in detail
    assert ">sent<" in h.get(f"/messages/{outbound.id}").text


def test_waiting_messages_show_their_next_try_and_last_error(h):
    later = h.add(status_=QUEUED, reason="HTTP 503: busy", attempts=2,
                  next_attempt=h.now + 600)
    due = h.add(status_=QUEUED)
    busy = h.add(status_=SENDING, next_attempt=h.now - 5)
    failed = h.add(status_=FAILED, reason="HTTP 400: bad number", next_attempt=h.now + 600)
    page = h.get("/").text
    at = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(h.now + 600))
    text = _cell(_row(page, later), "reason")
    assert text.startswith(f"next try {at} ") and text.endswith(" HTTP 503: busy"), text
    assert 'title="in 10 min"' in _row(page, later)
    assert _cell(_row(page, due), "reason") == "next try: due now"
    assert _cell(_row(page, busy), "reason") == ""
    assert _cell(_row(page, failed), "reason") == "HTTP 400: bad number"
    detail = h.get(f"/messages/{later.id}").text
    assert re.search(r"<th>Next attempt</th><td><time [^>]*>%s " % at, detail)


@pytest.fixture
def zone(monkeypatch):
    """Sets the process's time zone (POSIX TZ rules: no tz database needed)."""

    def set_zone(tz: str) -> None:
        monkeypatch.setenv("TZ", tz)
        time.tzset()

    yield set_zone
    monkeypatch.undo()
    time.tzset()


@pytest.mark.parametrize("tz,shown", [("UTC0", "UTC"), ("XYZ-1", "+0100"),
                                      ("ABC+5:30", "-0530")])
def test_every_time_shown_carries_its_zone(h, zone, tz, shown):
    zone(tz)
    m = h.add(status_=QUEUED, next_attempt=h.now + 60, provider_id="P-1")
    h.store.report("P-1", ["itsp"], "delivered", "handset")
    h.store.update([], [(m.id, False, "HTTP 503 busy")])
    h.send("", False)
    h.webhook.record_refusal("bad_request", 400, "192.0.2.8", "/hook", "missing field From")
    for path in ("/", f"/messages/{m.id}"):
        page = h.get(path).text
        shown_times = re.findall(r"<time [^>]*>([^<]*)</time>", page)
        assert len(shown_times) >= 4, path
        for t in shown_times:
            assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d " + re.escape(shown), t), t
        titles = re.findall(r'title="reported ([^"(]*) \(', page)
        assert titles or path != "/"  # the list has the report's time in its title
        for title in titles:
            assert title.endswith(" " + shown), title
        meta = re.search(r'<p class="meta">(.*?)</p>', page).group(1)
        meta = re.sub(r"<[^>]+>", "", meta)
        assert re.fullmatch(r"up since \S+ \S+ %s \(1 h 0 min\) \u00b7 now \S+ \S+ %s"
                            % (re.escape(shown), re.escape(shown)), meta), meta


def test_counts_are_pluralised(h):
    h.webhook.record_refusal("bad_request", 400, "192.0.2.8", "/hook", "missing field From")
    m = h.add()
    page = h.get("/").text
    assert "1 request refused since start<" in page
    assert "1 message of the last 24 h, newest first<" in page
    assert "requests refused" not in page and "1 messages" not in page
    h.webhook.record_refusal("forbidden", 403, "192.0.2.9", "/x", "path /x is not in url_path")
    h.add(body="another")
    page = h.get("/").text
    assert "2 requests refused since start<" in page
    assert "2 messages of the last 24 h, newest first<" in page
    page = h.get("/?limit=1").text
    assert "(only the newest is shown: search by number to see others)" in page
    assert "newest 1 are" not in page
    for _ in range(30):
        h.webhook.record_refusal("bad_request", 400, "192.0.2.8", "/hook", "missing From")
    assert "32 requests refused since start (the last 20 below)<" in h.get("/").text
    page = h.get(f"/?number={m.recipient.replace('+', '%2B')}&hours=1").text
    assert "2 messages with +12025550160 in the last 1 h" in page


def test_search_by_number_and_limits_with_10000_messages(h):
    base = h.now - 3600
    batch = []
    for i in range(10_000):
        m = Message(OUT, "", f"+1202555{i:04d}", "+15017122661", f"message {i}", status=SENT)
        m.created = base + i * 0.1
        batch.append(m)
    h.store.add(batch)
    page = h.get("/").text
    assert page.count('class="msg ') == status.DEFAULT_LIMIT
    assert "only the newest 200 are shown" in page
    assert page.index("message 9999<") < page.index("message 9998<")  # newest first
    page = h.get("/?limit=5").text
    assert page.count('class="msg ') == 5
    page = h.get("/?number=%2B12025551234").text
    assert page.count('class="msg ') == 1 and "message 1234<" in page
    assert 'value="+12025551234"' in page
    page = h.get("/?limit=bogus&hours=nope").text  # bad values fall back to defaults
    assert page.count('class="msg ') == status.DEFAULT_LIMIT


def test_message_page_shows_attempts_and_reports(h):
    m = h.add(status_=SENT, provider_id="P-1")
    h.store.update([], [(m.id, False, "HTTP 503 busy"), (m.id, True, "accepted")])
    h.store.report("P-1", ["itsp"], "delivered", "DELIVRD")
    page = h.get(f"/messages/{m.id}").text
    assert "HTTP 503 busy" in page and "accepted" in page and "DELIVRD" in page
    assert h.get("/messages/ffffffffffffffffffff").status == 404


def test_security_headers_everywhere(h):
    for path in ("/", "/static/status.css", "/metrics", "/api/status", "/nope"):
        r = h.get(path)
        assert r.header("content-security-policy").startswith("default-src 'self'"), path
        assert r.header("x-frame-options") == "DENY", path
        assert r.header("cache-control") == "no-store", path
        assert r.header("x-content-type-options") == "nosniff", path
    assert h.get("/static/status.css").header("content-type").startswith("text/css")
    assert h.get("/static/../status.py").status == 404
    assert h.get("/nope").status == 404
    r = h.request("DELETE", "/")
    assert r.status == 405 and r.header("allow") == "GET, HEAD"
    r = h.request("HEAD", "/")
    assert r.status == 200 and r.body == b""


def test_page_refers_to_nothing_outside(h):
    h.add()
    page = h.get("/").text
    for url in re.findall(r'(?:href|src|action)="([^"]*)"', page):
        assert not re.match(r"(?i)(https?:)?//", url), url
    assert "<script" not in page


# -- who may look ---------------------------------------------------------------------------


@pytest.mark.parametrize("peer", [LOCAL, IPv6Address("TCP", "::1", 40000),
                                  IPv6Address("TCP", "::ffff:127.0.0.1", 40000)])
def test_loopback_clients_need_nothing(h, peer):
    assert h.get("/", peer=peer).status == 200
    assert h.get("/api/status", peer=peer).status == 200
    assert h.get("/metrics", peer=peer).status == 200


def test_other_clients_are_refused_without_configured_credentials(h):
    for path in ("/", "/api/status", "/api/messages", "/metrics", "/static/status.css"):
        r = h.get(path, peer=REMOTE)
        assert r.status == 403, path
        assert r.header("www-authenticate") is None
    r = h.get("/", peer=REMOTE, headers={"Authorization": _basic("admin", "")})
    assert r.status == 403
    assert "loopback" in h.get("/api/status", peer=REMOTE).json()["error"]


def test_basic_credentials(tmp_path):
    h = Harness(tmp_path, access=Access("admin", "s3cret: ü"))
    try:
        r = h.get("/", peer=REMOTE)
        assert r.status == 401 and r.header("www-authenticate").startswith("Basic realm=")
        for wrong in (_basic("admin", "nope"), _basic("root", "s3cret: ü"), "Basic !!!",
                      "Bearer s3cret: ü"):
            assert h.get("/", peer=REMOTE, headers={"Authorization": wrong}).status == 401
        good = "Basic " + base64.b64encode("admin:s3cret: ü".encode()).decode()
        assert h.get("/", peer=REMOTE, headers={"Authorization": good}).status == 200
        assert h.get("/api/status", peer=REMOTE, headers={"Authorization": good}).status == 200
        assert h.get("/metrics", peer=REMOTE, headers={"Authorization": good}).status == 200
    finally:
        h.close()


def test_bearer_token(tmp_path):
    h = Harness(tmp_path, access=Access(token="tok-123"))
    try:
        r = h.get("/api/status", peer=REMOTE)
        assert r.status == 401 and r.header("www-authenticate").startswith("Bearer")
        assert h.get("/api/status", peer=REMOTE,
                     headers={"Authorization": "Bearer tok-999"}).status == 401
        ok = {"Authorization": "Bearer tok-123"}
        assert h.get("/api/status", peer=REMOTE, headers=ok).status == 200
        assert h.get("/metrics", peer=REMOTE, headers=ok).status == 200
        # The token also lets a script POST without JSON (no browser sends it by itself).
        m = h.add()
        r = h.request("POST", f"/api/messages/{m.id}/resend", ok, peer=REMOTE)
        assert r.status == 200 and r.json()["status"] == "queued"
    finally:
        h.close()


def test_loopback_host_must_be_an_address_or_localhost(h):
    # A page re-pointed to 127.0.0.1 by DNS (rebinding) sends its own host name.
    for host in ("evil.example", "evil.example:8480", "127.0.0.1.nip.io"):
        r = h.get("/", host=host)
        assert r.status == 403, host
        assert h.get("/api/messages", host=host).status == 403
    for host in ("127.0.0.1:8480", "localhost:8480", "[::1]:8480", "LOCALHOST", None):
        assert h.get("/", host=host).status == 200, host


def test_credentials_let_any_host_name_through(tmp_path):
    h = Harness(tmp_path, access=Access("admin", "pw"))
    try:
        r = h.get("/", host="pbx.example.net", headers={"Authorization": _basic("admin", "pw")})
        assert r.status == 200
    finally:
        h.close()


# -- resend and cancel buttons (CSRF) ------------------------------------------------------


def test_resend_needs_a_good_csrf_token(h):
    m = h.add(reason="HTTP 500", attempts=1)
    token = _token(h.get("/").text, m.id, "resend")
    path = f"/messages/{m.id}/resend"
    assert h.post_form(path, {}).status == 403
    assert h.post_form(path, {"csrf": "0-00.deadbeef"}).status == 403
    assert h.post_form(path, {"csrf": token + "0"}).status == 403
    assert h.post_form(f"/messages/{m.id}/cancel", {"csrf": token}).status == 403  # other action
    other = h.add()
    assert h.post_form(f"/messages/{other.id}/resend", {"csrf": token}).status == 403
    r = h.post_form(path, {"csrf": token}, {"Origin": "http://evil.example"})
    assert r.status == 403 and "another site" in r.text
    r = h.post_form(path, {"csrf": token}, {"Referer": "http://evil.example/x"})
    assert r.status == 403
    assert h.request("GET", path).status == 405
    assert h.store.get(m.id).result.status == FAILED  # nothing changed so far
    h.woken.clear()
    r = h.post_form(path, {"csrf": token, "number": "+1202", "hours": "48"},
                    {"Origin": "http://127.0.0.1:8480"})
    assert r.status == 303
    assert r.header("location") == "../../?number=%2B1202&hours=48"
    got = h.store.get(m.id).result
    assert (got.status, got.attempts, got.reason) == (QUEUED, 0, None)
    assert h.woken == ["itsp"]  # the dispatcher is told where to look
    # The message is queued now: resending it again is refused with a reason.
    r = h.post_form(path, {"csrf": token})
    assert r.status == 409 and "only failed or cancelled" in r.text


def test_cancel_button_and_expired_token(h):
    m = h.add(status_=QUEUED)
    page = h.get("/").text
    token = _token(page, m.id, "cancel")
    h.now += CSRF_LIFETIME + 1
    assert h.post_form(f"/messages/{m.id}/cancel", {"csrf": token}).status == 403
    token = _token(h.get("/").text, m.id, "cancel")
    r = h.post_form(f"/messages/{m.id}/cancel", {"csrf": token, "back": "message"})
    assert r.status == 303 and r.header("location") == f"../{m.id}"
    assert h.store.get(m.id).result.status == CANCELLED
    # A cancelled message can be resent from its own page.
    page = h.get(f"/messages/{m.id}").text
    m2 = re.search(r'action="\.\./messages/%s/resend".*?name="csrf" value="([^"]+)"' % m.id, page)
    assert h.post_form(f"/messages/{m.id}/resend", {"csrf": m2.group(1)}).status == 303
    assert h.store.get(m.id).result.status == QUEUED


def test_tokens_do_not_survive_a_restart(h):
    m = h.add()
    token = _token(h.get("/").text, m.id, "resend")
    assert not CSRF().valid(token, "resend", m.id)
    assert h.csrf.valid(token, "resend", m.id)


# -- the JSON API ---------------------------------------------------------------------------


def test_api_status_has_the_page_data(h):
    h.add()
    h.add(status_=QUEUED, route="itsp:backup")
    h.send("backup", False)
    h.webhook.record_refusal("forbidden", 403, "192.0.2.9", "/x", "source not allowed")
    s = h.get("/api/status").json()
    kinds = [c["kind"] for c in s["channels"]]
    assert kinds == ["itsp", "itsp", "spool", "webhook"]
    backup = s["channels"][1]
    assert backup["name"] == "backup" and backup["state"] == "failing"
    assert backup["info"]["last_failure_reason"] == "HTTP 500"
    assert s["channels"][0]["info"]["url"] == "https://sms.example.net/send"
    assert s["channels"][2]["info"]["handed_over"] == 3
    routes = {r["route"]: r for r in s["routes"]}
    assert set(routes) == {"callfile", "itsp", "itsp:backup"}
    assert (routes["itsp:backup"]["waiting"], routes["itsp:backup"]["state"]) == (1, "failing")
    assert routes["itsp:backup"]["oldest"] == h.now - 60.3
    assert routes["itsp:backup"]["last_failure_reason"] == "HTTP 500"
    assert routes["itsp"]["waiting"] == 0 and routes["itsp"]["state"] == "idle"
    assert s["messages"]["out"] == {"failed": 1, "queued": 1}
    assert s["webhook"]["refusals"] == {"forbidden": 1}
    assert s["webhook"]["recent"][0]["source"] == "192.0.2.9"


def test_api_resend_and_cancel(h):
    m = h.add()
    r = h.post_json(f"/api/messages/{m.id}/resend")
    assert (r.status, r.json()) == (200, {"id": m.id, "status": "queued"})
    r = h.post_json(f"/api/messages/{m.id}/resend")
    assert r.status == 409 and r.json()["status"] == "queued"
    r = h.post_json(f"/api/messages/{m.id}/cancel")
    assert (r.status, r.json()["status"]) == (200, "cancelled")
    assert h.post_json(f"/api/messages/{m.id}/cancel").status == 409
    assert h.post_json("/api/messages/ffffffffffffffffffff/resend").status == 404
    assert h.get(f"/api/messages/{m.id}/resend").status == 405


def test_api_posts_need_json_from_a_browser(h):
    m = h.add()
    # What a form on another site can send: no JSON content type.
    for ctype in ("application/x-www-form-urlencoded", "text/plain", "multipart/form-data"):
        r = h.request("POST", f"/api/messages/{m.id}/resend", {"Content-Type": ctype})
        assert r.status == 415, ctype
        r = h.request("POST", "/api/send", {"Content-Type": ctype},
                      b"to=%2B1&from=%2B2&body=x")
        assert r.status == 415, ctype
    r = h.post_json(f"/api/messages/{m.id}/resend", headers={"Origin": "https://evil.example"})
    assert r.status == 403
    assert h.store.get(m.id).result.status == FAILED
    assert h.sent == []
    r = h.post_json("/api/send", {"to": "+1", "from": "+2", "body": "hi", "index": "backup"})
    assert r.status == 200 and r.json()["status"] == "QUEUED"
    assert h.sent == [("+1", "+2", "hi", "backup", "api")]


def test_api_messages_list_and_one_with_reports(h):
    m = h.add(status_=SENT, provider_id="P-9", to="+4930999")
    h.add(to="+1555")
    h.store.report("P-9", ["itsp"], "delivered", "DELIVRD")
    found = h.get("/api/messages?number=%2B4930999").json()["messages"]
    assert [x["id"] for x in found] == [m.id]
    one = h.get(f"/api/messages/{m.id}").json()
    assert one["status"] == "delivered"
    assert one["reports"][0]["status"] == "delivered"
    assert one["attempt_log"] == []
    assert h.get("/api/messages?limit=x").status == 400
    assert h.get("/api/nope").status == 404


def test_oversize_request_body_is_refused(h):
    r = h.request("POST", "/api/send", {"Content-Type": "application/json"},
                  b"x" * (status.MAX_REQUEST_BODY + 1))
    assert r.status == 413


# -- channels can add rows -------------------------------------------------------------------


def test_channels_register_their_state(h):
    h.board.register(lambda: ChannelState("goip-1 bind", "up", h.now - 5, "bound TRX",
                                                 "smpp"))
    h.board.register(lambda: defer.succeed([
        ChannelState("yeastar AMI", "down", None, "connection refused", "ami")]))

    def broken():
        raise RuntimeError("boom <x>")

    h.board.register(broken, "phones")
    page = h.get("/").text
    assert "goip-1 bind" in page and "bound TRX" in page
    assert "yeastar AMI" in page and "connection refused" in page
    assert "boom &lt;x&gt;" in page
    names = [c["name"] for c in h.get("/api/status").json()["channels"]]
    assert names[-3:] == ["goip-1 bind", "yeastar AMI", "phones"]
    h.board.unregister(broken)
    assert "phones" not in [c["name"] for c in h.get("/api/status").json()["channels"]]


def test_spool_problems_show(h, tmp_path):
    (tmp_path / "outgoing").write_text("not a directory")
    h.calls.last_error = "spool: [Errno 28] No space left on device"
    s = h.get("/api/status").json()
    spool = [c for c in s["channels"] if c["kind"] == "spool"][0]
    assert spool["state"] == "error"
    assert "is not a directory" in spool["detail"] and "No space left" in spool["detail"]


# -- /metrics ------------------------------------------------------------------------------

_SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{([a-zA-Z_][a-zA-Z0-9_]*="(\\.|[^"\\])*"'
                     r'(,[a-zA-Z_][a-zA-Z0-9_]*="(\\.|[^"\\])*")*)\})? (?P<value>\S+)$')


def _parse_metrics(text: str) -> Dict[Tuple[str, str], float]:
    assert text.endswith("\n")
    samples, typed = {}, {}
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ", 3)
            assert kind in ("counter", "gauge", "histogram", "summary", "untyped")
            typed[name] = kind
            continue
        if line.startswith("# HELP "):
            continue
        m = _SAMPLE.match(line)
        assert m, f"not a sample line: {line!r}"
        name = m.group(1)
        family = re.sub(r"_(bucket|sum|count)$", "", name) if name not in typed else name
        assert family in typed, f"{name} has no TYPE line before it"
        samples[(name, m.group(3) or "")] = float(m.group("value"))
    return samples


def test_metrics_format_and_values(h):
    h.add()
    h.add(status_=QUEUED, route="itsp:backup")
    h.add(direction=IN, status_=SENT)
    h.webhook.record_refusal("too_large", 413, "192.0.2.1", "/", "too big")
    h.send("", True)  # 0.3 s each
    h.send("", True)
    r = h.get("/metrics")
    assert r.status == 200
    assert r.header("content-type") == "text/plain; version=0.0.4; charset=utf-8"
    s = _parse_metrics(r.text)
    assert s[("websmsd_messages", 'direction="out",status="failed"')] == 1
    assert s[("websmsd_messages", 'direction="out",status="queued"')] == 1
    assert s[("websmsd_messages", 'direction="in",status="sent"')] == 1
    assert s[("websmsd_messages", 'direction="in",status="failed"')] == 0
    assert s[("websmsd_queue_depth", 'route="itsp:backup"')] == 1
    assert s[("websmsd_queue_depth", 'route="itsp"')] == 0
    assert s[("websmsd_route_up", 'route="itsp"')] == 1
    assert s[("websmsd_webhook_refusals_total", 'reason="too_large"')] == 1
    assert s[("websmsd_webhook_refusals_total", 'reason="forbidden"')] == 0
    assert s[("websmsd_callfiles_total", 'event="handed_over"')] == 3
    assert s[("websmsd_send_seconds_count", 'route="itsp"')] == 2
    assert s[("websmsd_send_seconds_sum", 'route="itsp"')] == pytest.approx(0.6)
    assert s[("websmsd_send_seconds_bucket", 'route="itsp",le="0.25"')] == 0
    assert s[("websmsd_send_seconds_bucket", 'route="itsp",le="0.5"')] == 2
    assert s[("websmsd_send_seconds_bucket", 'route="itsp",le="+Inf"')] == 2
    assert s[("websmsd_send_seconds_count", 'route="itsp:backup"')] == 0
    assert ("websmsd_last_success_timestamp_seconds", 'route="itsp"') in s


def test_histogram_buckets_are_cumulative():
    hist = Histogram("t_seconds", "test", "interface", buckets=(0.1, 1.0))
    for v in (0.05, 0.1, 0.5, 2.0, 100.0):
        hist.observe(v, "a")
    lines = exposition([hist.family(["b"])]).splitlines()
    assert 't_seconds_bucket{interface="a",le="0.1"} 2' in lines
    assert 't_seconds_bucket{interface="a",le="1"} 3' in lines
    assert 't_seconds_bucket{interface="a",le="+Inf"} 5' in lines
    assert 't_seconds_count{interface="a"} 5' in lines
    assert 't_seconds_count{interface="b"} 0' in lines


def test_label_values_are_escaped():
    text = exposition([Family("x_total", "counter", "a\nb").add(1, iface='a"b\\c\nd')])
    assert 'x_total{iface="a\\"b\\\\c\\nd"} 1' in text.splitlines()
    assert "# HELP x_total a\\nb" in text


def test_route_records_say_idle_ok_or_failing():
    metrics = Metrics()
    assert metrics.route("itsp:a").state == "idle"
    metrics.sent("itsp:a", 100.0, 101.0, False, "HTTP 429")
    r = metrics.route("itsp:a")
    assert (r.state, r.last_failure, r.last_reason, r.last_success, r.sends) == (
        "failing", 101.0, "HTTP 429", None, 1)
    metrics.sent("itsp:a", 102.0, 102.5, True)
    assert (r.state, r.last_success, r.sends) == ("ok", 102.5, 2)
    assert metrics.send_seconds.count("itsp:a") == 2


# -- black box: the real daemon ---------------------------------------------------------------


def _get_json(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=30) as r:
        return json.load(r)


def _post_json(url: str, payload=None) -> Tuple[int, dict]:
    req = urllib.request.Request(url, data=json.dumps(payload or {}).encode(), method="POST",
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, json.load(r)
    except urllib.error.HTTPError as e:
        return e.code, json.load(e)


def test_daemon_api_shows_a_failed_message_and_resends_it(make_daemon, fake_itsp):
    fake_itsp.default = (500, b'{"error":"upstream down"}')
    d = make_daemon(websms=f"url_host [main] = {fake_itsp.url}\nurl_path = /sms\n"
                           "auth_method = none",
                    daemon="max_attempts = 1\nretry_base = 1")
    code, sent = _post_json(d.api_url + "/api/send",
                            {"to": "+12025550188", "from": "+15017122661", "body": XSS,
                             "index": "main", "wait": 10})
    assert code == 200 and sent["status"] == "FAILED", sent
    assert "500" in sent["reason"]
    [listed] = _get_json(d.api_url + "/api/messages?number=%2B12025550188")["messages"]
    assert (listed["id"], listed["status"], listed["body"]) == (sent["id"], "failed", XSS)
    one = _get_json(f"{d.api_url}/api/messages/{sent['id']}")
    assert [a["ok"] for a in one["attempt_log"]] == [False]
    st = _get_json(d.api_url + "/api/status")
    [itsp] = [c for c in st["channels"] if c["kind"] == "itsp"]
    assert itsp["name"] == "main" and itsp["state"] == "failing"
    assert "upstream down" in itsp["info"]["last_failure_reason"]
    assert {c["kind"] for c in st["channels"]} >= {"itsp", "spool", "webhook", "agi",
                                                   "status"}
    with urllib.request.urlopen(d.api_url + "/metrics", timeout=30) as r:
        metrics = _parse_metrics(r.read().decode())
    assert metrics[("websmsd_messages", 'direction="out",status="failed"')] == 1
    assert metrics[("websmsd_send_seconds_count", 'route="itsp:main"')] == 1
    with urllib.request.urlopen(d.api_url + "/", timeout=30) as r:
        page = r.read().decode()
    assert sent["id"] in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert XSS not in page
    # A form-encoded POST (what another site could make a browser send) is refused.
    req = urllib.request.Request(f"{d.api_url}/api/messages/{sent['id']}/resend", data=b"x=1")
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(req, timeout=30)
    assert e.value.code == 415
    # The ITSP is back: resend.
    fake_itsp.default = (200, b'{"status":"success"}')
    code, answer = _post_json(f"{d.api_url}/api/messages/{sent['id']}/resend")
    assert (code, answer["status"]) == (200, "queued")
    fake_itsp.wait(2)
    assert len(fake_itsp.requests) == 2
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        one = _get_json(f"{d.api_url}/api/messages/{sent['id']}")
        if one["status"] == "sent":
            break
        time.sleep(0.05)
    assert one["status"] == "sent" and one["attempts"] == 1
    assert [a["ok"] for a in one["attempt_log"]] == [False, True]


# -- USSD through the API --------------------------------------------------------------------


def test_api_ussd_asks_the_interface_and_answers_its_reply(h):
    asked = []

    def sim1(code):
        asked.append(code)
        return defer.succeed("Balance: 12.50 EUR")

    def broken(code):
        return defer.fail(RuntimeError("USSD timeout on span 2"))

    h.resource.api.ussd.update({"sim1": sim1, "tg1": broken})
    r = h.post_json("/api/ussd", {"interface": "sim1", "code": "*100#"})
    assert (r.status, r.json()) == (200, {"interface": "sim1", "code": "*100#",
                                          "reply": "Balance: 12.50 EUR"})
    assert asked == ["*100#"]
    r = h.post_json("/api/ussd", {"interface": "tg1", "code": "*100#"})
    assert r.status == 502 and r.json()["error"] == "USSD timeout on span 2"
    r = h.post_json("/api/ussd", {"interface": "nope", "code": "*100#"})
    assert r.status == 404 and "sim1, tg1" in r.json()["error"]
    for bad in ("*100#\n", "*100#; rm", "", "1" * 65):
        r = h.post_json("/api/ussd", {"interface": "sim1", "code": bad})
        assert r.status == 400, bad
    assert asked == ["*100#"]
    assert h.request("GET", "/api/ussd").status == 405
