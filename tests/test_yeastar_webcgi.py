"""websmsd.yeastar.webcgi: the tolerant WebCGI client.

Deterministic tests drive it with MemoryReactorClock and StringTransport (bytes on the
wire, answers fed byte by byte, timeouts on the fake clock); one black-box test runs it
on a real reactor, in a subprocess, against tgpeer's WebCGI server and its malformed
headers.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from twisted.internet import defer
from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone, ConnectionRefusedError
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.logger import Logger, formatEvent
from twisted.python.failure import Failure

from tgpeer import FakeTG, device_url_decode
from websmsd.yeastar import tg, tg_answers
from websmsd.yeastar.webcgi import MAX_ANSWER, WebCGIClient, WebCGINoAnswer, WebCGIUnreachable

ROOT = Path(__file__).resolve().parent.parent
PASSWORD = "pa&ss+w0rd"

BOA = (b"HTTP/1.0 200 OK\r\nDate: Thu, 06 Mar 2025 06:12:09 GMT\r\nServer: Boa/0.94.14rc21\r\n"
       b"Connection: close\r\n<Content-Type:text/html>\n\n")
STRAY = b"\r\n\r\nHTTP/1.0 200 OK\r\n\r\n\r\nServer: Boa/0.94.14rc21\r\n<Content-Type:text/html>\n\n"
QUEUED = b"Response: Success\r\nMessage: Commit successfully!\r\n"


class Harness:
    """A WebCGIClient on a MemoryReactorClock, with its log captured."""

    def __init__(self, host="192.0.2.10", port=80, **kw):
        self.reactor = MemoryReactorClock()
        self.events = []
        self.client = WebCGIClient(self.reactor, host, port, "apiuser", PASSWORD, **kw)
        self.client.log = Logger(observer=self.events.append)
        self.results = []

    def call(self, d):
        d.addBoth(self.results.append)
        return d

    def connect(self, n=0):
        host, port, factory, timeout, _ = self.reactor.tcpClients[n]
        proto = factory.buildProtocol(IPv4Address("TCP", host, port))
        transport = StringTransport()
        proto.makeConnection(transport)
        return proto, transport

    def answer(self, proto, data, *, close=True, chunk=None):
        step = chunk or len(data) or 1
        for i in range(0, len(data), step):
            proto.dataReceived(data[i:i + step])
        if close:
            proto.connectionLost(Failure(ConnectionDone()))

    @property
    def result(self):
        assert len(self.results) == 1, self.results
        return self.results[0]

    def logged(self):
        return "\n".join(formatEvent(e) + repr(e) for e in self.events)


def request_line(transport):
    return transport.value().split(b"\r\n", 1)[0].decode()


def test_send_writes_one_http10_get_and_reads_the_malformed_answer():
    h = Harness()
    h.call(h.client.send(1, "+79991234567", 'Привет "мир" & +1'))
    assert [(c[0], c[1]) for c in h.reactor.tcpClients] == [("192.0.2.10", 80)]
    proto, transport = h.connect()
    target = tg.webcgi_send_target("apiuser", PASSWORD, 1, "+79991234567", 'Привет "мир" & +1')
    assert transport.value() == (f"GET {target} HTTP/1.0\r\nHost: 192.0.2.10:80\r\nUser-Agent: websmsd\r\n"
                                 "Accept: */*\r\nConnection: close\r\n\r\n").encode()
    query = target.split("?", 1)[1].split("=", 1)[1]
    args = dict(kv.split("=", 1) for kv in query.split("&"))
    assert device_url_decode(args["content"]) == 'Привет "мир" & +1'
    assert device_url_decode(args["password"]) == PASSWORD
    assert h.results == []
    h.answer(proto, BOA + QUEUED)
    assert h.result == (True, "Commit successfully!")
    assert "queued" in h.logged()


@pytest.mark.parametrize("head", [BOA, STRAY, b"", b"HTTP/1.1 200 OK\n<Content-type:text/html>\n"])
def test_send_byte_by_byte_through_every_quirk(head):
    h = Harness()
    h.call(h.client.send(2, "89991234567", "test"))
    proto, _ = h.connect()
    h.answer(proto, head + QUEUED, chunk=1)
    assert h.result == (True, "Commit successfully!")


@pytest.mark.parametrize("answer, expected", [
    (BOA + b"Response: Error\r\nMessage: Authentication failed\r\n", (False, "Authentication failed")),
    (BOA + b"<html><body>Forbidden</body></html>\n", (False, "<html><body>Forbidden</body></html>")),
    (b"HTTP/1.0 404 Not Found\r\n\r\n<html>404</html>\r\n", (False, "HTTP 404 Not Found: <html>404</html>")),
    (b"HTTP/1.0 500 Internal Error\r\n\r\n" + QUEUED, (False, "HTTP 500 Internal Error: Commit successfully!")),
])
def test_send_refusals_are_results(answer, expected):
    h = Harness()
    h.call(h.client.send(1, "1", "x"))
    proto, _ = h.connect()
    h.answer(proto, answer)
    assert h.result == expected
    assert "refused" in h.logged()


def test_content_length_ends_the_wait():
    h = Harness()
    h.call(h.client.send(1, "1", "x"))
    proto, transport = h.connect()
    h.answer(proto, b"HTTP/1.0 200 OK\r\nContent-Length: %d\r\n\r\n" % len(QUEUED) + QUEUED, close=False)
    assert transport.disconnecting and h.results == []
    proto.connectionLost(Failure(ConnectionDone()))
    assert h.result == (True, "Commit successfully!")


def test_connection_refused_is_unreachable():
    h = Harness()
    h.call(h.client.send(1, "1", "x"))
    _, _, factory, _, _ = h.reactor.tcpClients[0]
    factory.clientConnectionFailed(h.reactor.connectors[0], Failure(ConnectionRefusedError()))
    assert isinstance(h.result, Failure) and h.result.check(WebCGIUnreachable)
    assert "192.0.2.10:80" in str(h.result.value) and "refused" in str(h.result.value)
    assert PASSWORD not in str(h.result.value)


def test_timeout_while_connecting_is_unreachable():
    h = Harness(timeout=10)
    h.call(h.client.send(1, "1", "x"))
    h.reactor.advance(9.9)
    assert h.results == []
    h.reactor.advance(0.1)
    assert h.result.check(WebCGIUnreachable) and "within 10 s" in str(h.result.value)
    assert h.reactor.connectors[0].stoppedConnecting
    assert not h.reactor.getDelayedCalls()


def test_timeout_after_the_request_is_no_answer():
    h = Harness(timeout=10)
    h.call(h.client.send(1, "1", "x"))
    proto, transport = h.connect()
    h.answer(proto, BOA + b"Respo", close=False)
    h.reactor.advance(10)
    assert transport.disconnected  # aborted
    proto.connectionLost(Failure(ConnectionDone()))
    assert h.result.check(WebCGINoAnswer) and "within 10 s" in str(h.result.value)
    assert "no complete answer" in h.logged()


def test_timeout_with_an_answer_but_no_close_still_counts():
    h = Harness(timeout=10)
    h.call(h.client.send(1, "1", "x"))
    proto, transport = h.connect()
    h.answer(proto, BOA + QUEUED, close=False)
    h.reactor.advance(10)
    proto.connectionLost(Failure(ConnectionDone()))
    assert h.result == (True, "Commit successfully!")


def test_closed_without_answer_is_no_answer():
    h = Harness()
    h.call(h.client.send(1, "1", "x"))
    proto, _ = h.connect()
    h.answer(proto, b"\r\n")
    assert h.result.check(WebCGINoAnswer) and "without answering" in str(h.result.value)
    assert not h.reactor.getDelayedCalls()


def test_answer_over_the_cap_is_dropped():
    h = Harness(max_answer=1000)
    h.call(h.client.send(1, "1", "x"))
    proto, transport = h.connect()
    h.answer(proto, BOA + b"x" * 2000, close=False)
    assert transport.disconnected
    proto.dataReceived(b"more")  # ignored
    proto.connectionLost(Failure(ConnectionDone()))
    assert h.result.check(WebCGINoAnswer) and "larger than 1000 bytes" in str(h.result.value)
    assert MAX_ANSWER >= 64 * 1024


def test_caller_cancel_drops_the_connection():
    h = Harness()
    d = h.call(h.client.send(1, "1", "x"))
    proto, transport = h.connect()
    d.cancel()
    assert transport.disconnected and h.result.check(defer.CancelledError)
    proto.connectionLost(Failure(ConnectionDone()))
    assert len(h.results) == 1 and not h.reactor.getDelayedCalls()


@pytest.mark.parametrize("args", [(0, "1", "x"), (1, "12 3", "x"), (1, "1", ""), (1, "1", "a" * 1025), (1, "+", "x")])
def test_bad_send_arguments_fail_before_connecting(args):
    h = Harness()
    h.call(h.client.send(*args))
    assert h.result.check(tg.YeastarError) and h.reactor.tcpClients == []


def test_bad_settings_fail_at_construction():
    for kw in (dict(host="a/b"), dict(port=0), dict(account=""), dict(password="a\nb")):
        args = dict(reactor=MemoryReactorClock(), host="192.0.2.1", port=80, account="a", password="b")
        args.update(kw)
        with pytest.raises(tg.YeastarError):
            WebCGIClient(**args)


def test_ussd_success_and_failures():
    h = Harness(ussd_timeout=40)
    h.call(h.client.ussd(1, "*100#"))
    proto, transport = h.connect()
    assert request_line(transport).startswith("GET /cgi/WebCGI?1500102=account=apiuser&password=")
    assert request_line(transport).endswith("&port=1&content=%2A100%23 HTTP/1.0")
    h.answer(proto, STRAY + "Request: 1,*100#\r\nResponse: Success\r\nMessage: Баланс: 36.3 р.\r\n".encode())
    assert h.result == tg_answers.UssdResult(True, "Баланс: 36.3 р.", span=2)

    h = Harness()
    h.call(h.client.ussd(2, "*000#"))
    proto, _ = h.connect()
    h.answer(proto, BOA + b"Request: 2,*000#\r\nResponse: Error\r\nMessage: Send USSD failed\r\n")
    assert h.result == tg_answers.UssdResult(False, error="Send USSD failed", span=3)

    h = Harness()
    h.call(h.client.ussd(2, "*000#"))
    proto, _ = h.connect()
    h.answer(proto, b"HTTP/1.0 403 Forbidden\r\n\r\n")
    assert not h.result.ok and h.result.error.startswith("HTTP 403 Forbidden")

    # The USSD wait is the longer one; no answer is a result, not an exception.
    h = Harness(timeout=5, ussd_timeout=40)
    h.call(h.client.ussd(1, "*100#"))
    proto, transport = h.connect()
    h.reactor.advance(39)
    assert h.results == [] and not transport.disconnected
    h.reactor.advance(1)
    assert transport.disconnected
    proto.connectionLost(Failure(ConnectionDone()))  # what aborting the real transport does
    assert not h.result.ok and h.result.error == "no complete answer within 40 s"


def test_ussd_transport_failure_is_a_result():
    h = Harness()
    h.call(h.client.ussd(1, "*100#"))
    _, _, factory, _, _ = h.reactor.tcpClients[0]
    factory.clientConnectionFailed(h.reactor.connectors[0], Failure(ConnectionRefusedError()))
    assert not h.result.ok and "cannot reach" in h.result.error


def test_bad_ussd_code_fails_before_connecting():
    h = Harness()
    h.call(h.client.ussd(1, "%2A100%23"))
    assert h.result.check(tg.YeastarError) and h.reactor.tcpClients == []


def test_credentials_never_logged_or_shown():
    h = Harness(timeout=3)
    for d in (h.client.send(1, "1", "x"), h.client.send(1, "1", "y"), h.client.send(1, "1", "z")):
        h.call(d)
    p0, _ = h.connect(0)
    h.answer(p0, BOA + QUEUED)
    p1, _ = h.connect(1)
    h.answer(p1, BOA + b"Response: Error\r\nMessage: Authentication failed\r\n")
    h.reactor.advance(3)  # the third never connects
    assert len(h.results) == 3 and len(h.events) == 3
    text = h.logged() + repr(h.client) + "".join(str(r.value) for r in h.results if isinstance(r, Failure))
    for secret in (PASSWORD, "pa%26ss", "password="):
        assert secret not in text


def test_ipv6_and_injected_endpoint_and_tls():
    h = Harness(host="::1", port=8080)
    h.call(h.client.send(1, "1", "x"))
    assert h.reactor.tcpClients[0][:2] == ("::1", 8080)
    _, transport = h.connect()
    assert b"Host: [::1]:8080\r\n" in transport.value()

    class Endpoint:
        def __init__(self):
            self.transport = StringTransport()

        def connect(self, factory):
            proto = factory.buildProtocol(None)
            proto.makeConnection(self.transport)
            self.proto = proto
            return defer.succeed(proto)

    ep = Endpoint()
    h = Harness(host="tg.example", endpoint=ep)
    h.call(h.client.send(3, "1", "x"))
    assert b"Host: tg.example:80\r\n" in ep.transport.value()
    h.answer(ep.proto, BOA + QUEUED)
    assert h.result == (True, "Commit successfully!")

    from twisted.internet.ssl import CertificateOptions
    h = Harness(tls=True, tls_options=CertificateOptions())
    h.call(h.client.send(1, "1", "x"))
    _, transport = h.connect()
    # A TLS handshake record (ClientHello), not the plain GET, goes out first.
    assert transport.value()[:1] == b"\x16" and b"GET " not in transport.value()
    assert repr(h.client).startswith("<WebCGIClient https://192.0.2.10:80")


# ------------------------------------------------------------------------- black box

SCRIPT = r"""
import json, sys
from twisted.internet import defer, task
from websmsd.yeastar.webcgi import WebCGIClient

async def main(reactor, port, password, text):
    out = []
    ok = WebCGIClient(reactor, "127.0.0.1", port, "websmsd", password, timeout=10, ussd_timeout=10)
    bad = WebCGIClient(reactor, "127.0.0.1", port, "websmsd", "wrong", timeout=10)
    out.append(list(await ok.send(2, "+79991234567", text)))
    out.append(list(await bad.send(1, "1126", "x")))
    for code in ("*100#", "*000#"):
        r = await ok.ussd(1, code)
        out.append([r.ok, r.text, r.error, r.span])
    print(json.dumps(out))

def run(reactor, *args):
    return defer.ensureDeferred(main(reactor, int(args[0]), *args[1:]))

task.react(run, sys.argv[1:])
"""


@pytest.mark.parametrize("quirk", ["boa", "stray"])
def test_against_tgpeer_on_a_real_reactor(quirk):
    text = 'Привет, "мир"!\nБэкслэш \\ плюс + процент % 😀'
    with FakeTG(secret="tg-secret", http_quirk=quirk) as fake:
        run = subprocess.run([sys.executable, "-c", SCRIPT, str(fake.http_port), "tg-secret", text],
                             cwd=str(ROOT), capture_output=True, text=True, timeout=60)
        assert run.returncode == 0, run.stderr
        sent, refused, ussd_ok, ussd_bad = json.loads(run.stdout)
        assert sent == [True, "Commit successfully!"]
        assert refused[0] is False and refused[1]
        assert ussd_ok == [True, "Баланс: 36.3 руб.", None, 2]
        assert ussd_bad[0] is False and ussd_bad[2]
        [sms] = fake.sms
        assert (sms.via, sms.span, sms.number, sms.text) == ("http", 3, "+79991234567", text)
        assert len(fake.http_requests) == 4
        assert all(r.startswith(b"GET /cgi/WebCGI?15001") and b"Connection: close" in r for r in fake.http_requests)
