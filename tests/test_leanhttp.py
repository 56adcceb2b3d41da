"""The lean HTTP/1.1 server of the webhook listener (websmsd.http.leanhttp), byte for byte.

tests/test_webhook.py runs every webhook HTTP test through both this server and
twisted.web's; this file has what only the lean server has: its request object, its
timeouts, pipelining and back-pressure, the drain after an early refusal, and the
resources channels mount.  tests/test_h1.py has the parser.
"""

import pytest
from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET

from websmsd.config import InboundInterface, InboundSettings
from websmsd.http.site import WebhookRoot
from websmsd.http.leanhttp import LeanWebhookFactory
from websmsd.itsp.webhook import WebhookResource
from test_webhook import Conn as WebhookConn
from test_webhook import RecordingSocket

PEER = IPv4Address("TCP", "203.0.113.5", 40000)


class Echo(Resource):
    """Answers METHOD URI BODY; a body of "later" is answered when the test says so."""

    isLeaf = True

    def __init__(self):
        super().__init__()
        self.pending = []
        self.seen = []

    def render(self, request):
        self.seen.append(request)
        body = request.content.getvalue()
        if body == b"later":
            self.pending.append(request)
            return NOT_DONE_YET
        if body == b"boom":
            raise ZeroDivisionError("a bug")
        request.setHeader(b"Content-Type", b"text/plain")
        return request.method + b" " + request.uri + b" " + body


class Socket(RecordingSocket):
    """A socket of the reactor's, as test_webhook's, that also records an abort."""

    def abortConnection(self):
        self.events.append(("abort",))
        StringTransport.loseConnection(self)


class Conn(WebhookConn):
    """test_webhook's connection (send, take, lose) to a lean server of its own, with
    its own clock, optionally over a socket-like transport."""

    def __init__(self, resource, socket=False, timeout=60, **channel_attrs):
        self.clock = Clock()
        self.factory = LeanWebhookFactory(resource, reactor=self.clock, timeout=timeout,
                                          max_body=1000)
        kind = Socket if socket else StringTransport
        self.transport = kind(hostAddress=IPv4Address("TCP", "192.0.2.1", 8080),
                              peerAddress=PEER)
        self.channel = self.factory.buildProtocol(PEER)
        for name, value in channel_attrs.items():
            setattr(self.channel, name, value)
        self.channel.makeConnection(self.transport)


def post(path=b"/", body=b"", extra=b""):
    return (b"POST %s HTTP/1.1\r\nHost: pbx\r\nContent-Type: application/x-www-form-urlencoded"
            b"\r\nContent-Length: %d\r\n%s\r\n%s" % (path, len(body), extra, body))


def test_answers_in_order_each_when_its_turn_comes():
    r = Echo()
    conn = Conn(r)
    conn.send(post(b"/a", b"later") + post(b"/b", b"x") + post(b"/c", b"y"))
    assert conn.take() == b"" and len(r.seen) == 1  # /b waits for /a's answer
    r.pending[0].write(b"first")
    r.pending[0].finish()
    out = conn.take()
    assert out.index(b"first") < out.index(b"POST /b x") < out.index(b"POST /c y")
    assert out.count(b"HTTP/1.1 200 OK\r\n") == 3
    assert b"Content-Length: 5\r\n" in out and b"Connection" not in out
    assert not conn.transport.disconnecting


def test_http10_closes_unless_keep_alive_is_asked_for():
    conn = Conn(Echo())
    conn.send(b"GET /x HTTP/1.0\r\n\r\n")
    out = conn.take()
    assert out.startswith(b"HTTP/1.1 200 OK\r\n") and b"Connection: close\r\n" in out
    assert out.endswith(b"\r\n\r\nGET /x ") and conn.transport.disconnecting
    conn = Conn(Echo())
    conn.send(b"GET /x HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n")
    assert b"Connection: keep-alive\r\n" in conn.take()
    assert not conn.transport.disconnecting
    conn = Conn(Echo())
    conn.send(post(b"/a", b"1", b"Connection: close\r\n") + post(b"/b", b"2"))
    out = conn.take()
    assert b"Connection: close\r\n" in out and b"/b" not in out
    assert conn.transport.disconnecting


def test_head_has_the_length_but_no_body():
    conn = Conn(Echo())
    conn.send(b"HEAD /x HTTP/1.1\r\nHost: a\r\n\r\n")
    out = conn.take()
    assert out.startswith(b"HTTP/1.1 200 OK\r\n")
    assert b"Content-Length: 8\r\n" in out and out.endswith(b"\r\n\r\n")


def test_request_object_as_resources_see_it():
    r = Echo()
    conn = Conn(r, socket=True)
    conn.send(b"POST /p/q?a=1&b=&a=2 HTTP/1.1\r\nHost: pbx\r\nX-Two: 1\r\nx-two: 2\r\n"
              b"Content-Length: 5\r\n\r\nlater")
    [req] = r.seen
    assert (req.method, req.uri, req.path, req.clientproto) == (
        b"POST", b"/p/q?a=1&b=&a=2", b"/p/q", b"HTTP/1.1")
    assert req.args == {b"a": [b"1", b"2"], b"b": [b""]}
    assert req.getHeader(b"X-TWO") == b"2"
    assert req.requestHeaders.getRawHeaders(b"x-two") == [b"1", b"2"]
    assert req.requestHeaders.getRawHeaders(b"nope", []) == []
    assert req.requestHeaders.hasHeader(b"Host")
    assert dict(req.requestHeaders.getAllRawHeaders())[b"x-two"] == [b"1", b"2"]
    assert req.getClientAddress() == PEER and req.isSecure() is False
    assert req.content.read() == b"later"
    with pytest.raises(ValueError):
        req.setHeader(b"X-Evil", b"a\r\nSet-Cookie: x=1")
    req.setHeader(b"X-A", b"1")
    req.setHeader(b"x-a", b"2")  # replaces, whatever the case
    req.setResponseCode(202)
    req.write(b"ok")
    req.finish()
    out = conn.take()
    assert out.startswith(b"HTTP/1.1 202 Accepted\r\n")
    assert b"x-a: 2\r\n" in out and b"X-A" not in out and out.endswith(b"\r\n\r\nok")
    with pytest.raises(RuntimeError):
        req.finish()
    with pytest.raises(RuntimeError):
        req.write(b"more")


def test_notify_finish_fires_or_fails():
    r = Echo()
    conn = Conn(r)
    conn.send(post(b"/a", b"later"))
    [req] = r.pending
    fired = []
    req.notifyFinish().addCallbacks(lambda _: fired.append("done"),
                                    lambda f: fired.append("lost"))
    req.finish()
    assert fired == ["done"]
    req.notifyFinish().addCallback(lambda _: fired.append("after"))
    assert fired == ["done", "after"]
    conn.send(post(b"/b", b"later"))
    req = r.pending[1]
    req.notifyFinish().addCallbacks(lambda _: fired.append("done"),
                                    lambda f: fired.append("lost"))
    conn.lose()
    assert fired[-1] == "lost" and req._disconnected
    req.write(b"ignored")  # as twisted.web: no error, nothing sent
    with pytest.raises(RuntimeError):
        req.finish()
    failed = []
    req.notifyFinish().addErrback(lambda f: failed.append(f))
    assert failed


def test_a_resource_that_raises_gets_500_and_the_connection_goes_on(capsys):
    conn = Conn(Echo())
    conn.send(post(b"/a", b"boom") + post(b"/b", b"ok"))
    out = conn.take()
    assert out.startswith(b"HTTP/1.1 500 Internal Server Error\r\n")
    assert b"internal error\n" in out and b"ZeroDivisionError" not in out
    assert out.endswith(b"POST /b ok")


def test_expect_continue_waits_for_the_answers_before_it():
    r = Echo()
    conn = Conn(r)
    conn.send(post(b"/a", b"later"))
    conn.send(b"POST /b HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\n")
    assert conn.take() == b""  # /a is not answered yet: no interim answer for /b
    r.pending[0].finish()
    out = conn.take()
    assert out.startswith(b"HTTP/1.1 200 OK\r\n") and out.endswith(b"HTTP/1.1 100 Continue\r\n\r\n")
    conn.send(b"hi")
    assert conn.take().endswith(b"POST /b hi")
    # With the body in the same read as the head: no 100 at all.
    conn.send(b"POST /c HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\nho")
    out = conn.take()
    assert b"100 Continue" not in out and out.endswith(b"POST /c ho")


def test_reading_pauses_when_pipelined_requests_pile_up():
    r = Echo()
    conn = Conn(r)
    conn.send(post(b"/0", b"later") + post(b"/n", b"x") * 12)
    assert conn.transport.producerState == "paused"
    r.pending[0].finish()
    assert conn.transport.producerState == "producing"
    assert conn.take().count(b"HTTP/1.1 200 OK") == 13


def root_with_webhook():
    iface = InboundInterface(resp_ack="OK")
    settings = InboundSettings(interfaces=(iface,), default=iface)
    accepted = []

    def accept(messages):
        accepted.extend(messages)
        return [True] * len(messages)

    webhook = WebhookResource(settings, accept, max_body=1000, now=lambda: 1000.0)
    return WebhookRoot(webhook), webhook, accepted


def test_oversize_refused_half_closed_drained_and_counted():
    root, webhook, accepted = root_with_webhook()
    conn = Conn(root, socket=True, drain_bytes=200_000)
    conn.send(b"POST /hook?x=1 HTTP/1.1\r\nHost: pbx\r\nContent-Length: 3000000\r\n"
              b"Expect: 100-continue\r\n\r\n" + b"a" * 1000)
    events = conn.transport.events
    assert [e[0] for e in events] == ["write", "half-close"]
    answer = events[0][1]
    assert answer.startswith(b"HTTP/1.1 413 Request Entity Too Large\r\n")
    assert b"100 Continue" not in answer and b"Connection: close\r\n" in answer
    assert answer.endswith(b"request body of 3000000 bytes is larger than the limit of 1000\n")
    assert webhook.refusals["too_large"] == 1
    [refusal] = webhook.recent_refusals
    assert (refusal["source"], refusal["path"], refusal["status"]) == ("203.0.113.5", "/hook", 413)
    # The rest of the upload is read and thrown away, reading never paused.
    for _ in range(19):
        conn.send(b"b" * 10_000)
    assert [e[0] for e in events] == ["write", "half-close"]
    assert conn.transport.producerState == "producing"
    conn.send(b"b" * 10_000)  # past drain_bytes
    assert [e[0] for e in events] == ["write", "half-close", "close"]
    assert accepted == [] and conn.clock.getDelayedCalls() == []


def test_drain_is_bounded_in_time_and_a_wrapper_is_not_half_closed():
    root, webhook, _ = root_with_webhook()
    conn = Conn(root, socket=True)
    conn.send(post(b"/", b"x" * 1001)[:-500])
    conn.clock.advance(conn.channel.drain_seconds - 0.1)
    conn.send(b"x" * 500)
    assert [e[0] for e in conn.transport.events] == ["write", "half-close"]
    conn.clock.advance(0.1)
    assert [e[0] for e in conn.transport.events] == ["write", "half-close", "close"]
    # TLS: half-closing the socket under the wrapper would cut TLS off.
    conn = Conn(root)
    conn.transport.loseWriteConnection = lambda: pytest.fail("half-closed a wrapper")
    conn.send(post(b"/", b"x" * 5000))
    assert conn.take().startswith(b"HTTP/1.1 413 ")
    assert not conn.transport.disconnecting
    conn.clock.advance(conn.channel.drain_seconds)
    assert conn.transport.disconnecting


def test_a_framing_error_is_explained_and_counted():
    root, webhook, accepted = root_with_webhook()
    conn = Conn(root, socket=True)
    conn.send(b"POST /hook HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab")
    answer = conn.transport.events[0][1]
    assert answer.startswith(b"HTTP/1.1 400 Bad Request\r\n")
    assert b"X-Content-Type-Options: nosniff\r\n" in answer
    assert webhook.refusals["bad_request"] == 1 and accepted == []
    # A framing error behind a request being answered waits for that answer.
    r = Echo()
    conn = Conn(r)
    conn.send(post(b"/a", b"later") + b"BAD\r\n\r\n")
    assert conn.take() == b""
    r.pending[0].finish()
    out = conn.take()
    assert out.index(b"200 OK") < out.index(b"400 Bad Request")


def test_timeouts():
    r = Echo()
    conn = Conn(r, socket=True, timeout=60)
    conn.clock.advance(59)
    assert conn.transport.events == []
    conn.clock.advance(1)  # nothing came: closed
    assert conn.transport.events == [("abort",)]
    # A request dripping in, byte after byte, does not hold the connection forever.
    conn = Conn(r, socket=True, timeout=60)
    request = post(b"/", b"x")
    for i in range(len(request) - 1):
        conn.send(request[i:i + 1])
        conn.clock.advance(1)
    assert conn.transport.events[-1] == ("abort",)
    # While a request is being answered (the store committing, a long poll) no timeout;
    # after the answer the clock starts again.
    conn = Conn(r, socket=True, timeout=60)
    conn.send(post(b"/", b"later"))
    conn.clock.advance(600)
    assert conn.transport.events == []
    r.pending[-1].finish()
    conn.clock.advance(59)
    conn.send(post(b"/", b"y"))
    conn.clock.advance(59)
    assert [e[0] for e in conn.transport.events] == ["write", "write"]
    conn.clock.advance(1)
    assert conn.transport.events[-1] == ("abort",)
    conn.lose()
    assert conn.clock.getDelayedCalls() == []


def test_mounted_resources_and_the_webhook_share_the_listener():
    root, webhook, accepted = root_with_webhook()
    sync = Echo()
    root.mount("/sync", sync)
    conn = Conn(root)
    conn.send(post(b"/sync?task=send", b"hello") + post(b"/any", b"To=100&From=200&Body=hi"))
    out = conn.take()
    assert out.index(b"POST /sync?task=send hello") < out.index(b"\r\n\r\nOK")
    assert [(m.recipient, m.body) for m in accepted] == [("100", "hi")]


def test_tls_negotiates_http11():
    assert LeanWebhookFactory(Echo(), reactor=Clock()).acceptableProtocols() == [b"http/1.1"]


def raw_exchange(port, data, until=None):
    """Send `data` on a new connection; read until the server closes (or `until` is in)."""
    import socket

    out = b""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(data)
        while until is None or until not in out:
            chunk = s.recv(65536)
            if not chunk:
                break
            out += chunk
    return out


@pytest.mark.parametrize("http", ["lean", "twisted"])
def test_the_daemon_answers_alike_with_either_server(make_daemon, http):
    # The daemon serves its webhook listener with the lean server; WEBSMSD_HTTP=twisted
    # with twisted.web (whose answers name it in a Server header).  Same results.
    from tests.blackbox import curl, status_and_body

    d = make_daemon(start=False, daemon="max_body = 4k",
                    env={"WEBSMSD_HTTP": http} if http == "twisted" else None)
    d.start()
    # Three webhooks pipelined in one write, the last one closing the connection.
    body = [b"To=100&From=200&Body=pipelined+%d" % i for i in range(3)]
    out = raw_exchange(d.webhook_port, post(b"/", body[0]) + post(b"/", body[1])
                       + post(b"/", body[2], b"Connection: close\r\n"))
    assert out.count(b"HTTP/1.1 200 OK\r\n") == 3
    assert (b"Server: TwistedWeb" in out) == (http == "twisted")
    # curl: a chunked upload, an Expect: 100-continue upload, an oversize one.
    for extra in (["-H", "Transfer-Encoding: chunked"], ["-H", "Expect: 100-continue"]):
        code, _ = status_and_body(curl(*extra, "--data-binary", "To=100&From=200&Body=curl",
                                       d.webhook_url + "/"))
        assert code == 200
    code, text = status_and_body(curl("-H", "Transfer-Encoding: chunked", "--data-binary",
                                      "Body=" + "x" * 10000, d.webhook_url + "/"))
    assert code == 413 and "4096" in text
    files = d.wait_callfiles(5)
    bodies = sorted(f.read_text() for f in files)
    assert sum("pipelined" in b for b in bodies) == 3 and sum("curl" in b for b in bodies) == 2
    assert d.rows("SELECT count(*) FROM messages") == [(5,)]


def test_a_client_that_reads_no_answers_gets_no_more_of_them():
    # The channel is the transport's streaming producer: when the client does not read
    # and the write buffer fills (the transport calls pauseProducing), it answers
    # nothing more and stops reading, until the buffer drains.
    r = Echo()
    conn = Conn(r)
    assert conn.transport.producer is conn.channel and conn.transport.streaming
    conn.send(post(b"/a", b"1"))
    assert conn.take().endswith(b"POST /a 1")
    conn.channel.pauseProducing()  # the write buffer is full
    assert conn.transport.producerState == "paused"
    conn.send(post(b"/b", b"2") + post(b"/c", b"3"))
    assert conn.take() == b"" and len(r.seen) == 1
    conn.channel.resumeProducing()  # written out
    out = conn.take()
    assert out.index(b"POST /b 2") < out.index(b"POST /c 3")
    assert conn.transport.producerState == "producing"
    # Blocked while a request is being answered: its answer is written (it is buffered
    # by the transport anyway), the next one waits.
    conn.send(post(b"/d", b"later") + post(b"/e", b"4"))
    conn.channel.pauseProducing()
    r.pending[-1].finish()
    out = conn.take()
    assert out.startswith(b"HTTP/1.1 200 OK") and b"/e" not in out
    conn.channel.resumeProducing()
    assert conn.take().endswith(b"POST /e 4")


def test_closing_unregisters_the_producer_first():
    # A transport with a paused streaming producer registered would never close.
    conn = Conn(Echo(), socket=True)
    conn.channel.pauseProducing()
    conn.channel.resumeProducing()
    conn.send(b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n")
    assert conn.transport.producer is None and conn.transport.disconnecting
    root, _, _ = root_with_webhook()
    conn = Conn(root, socket=True)
    conn.send(post(b"/", b"x" * 5000))
    assert conn.transport.producer is None
    assert [e[0] for e in conn.transport.events] == ["write", "half-close"]
    conn = Conn(Echo(), socket=True, timeout=1)
    conn.clock.advance(1)
    assert conn.transport.producer is None and conn.transport.events == [("abort",)]


def test_the_daemon_stops_reading_a_client_that_reads_no_answers(make_daemon):
    # A client pipelines requests and never reads: the daemon answers until the socket
    # buffers are full, then stops reading it, instead of buffering answers.
    import socket
    import time

    d = make_daemon(daemon="max_body = 4k")
    rss = (lambda: int(next(line.split()[1] for line in open(f"/proc/{d.proc.pid}/status")
                           if line.startswith("VmRSS"))))
    before = rss()
    request = b"GET /?x=1 HTTP/1.1\r\nHost: pbx\r\n\r\n"  # refused (400): no fields
    sent, stalled = 0, None
    with socket.create_connection(("127.0.0.1", d.webhook_port), timeout=10) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
        s.setblocking(False)
        chunk = request * 2000
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                sent += s.send(chunk)
                stalled = None
            except BlockingIOError:
                stalled = stalled or time.monotonic()
                if time.monotonic() - stalled > 2.0:
                    break
                time.sleep(0.05)
        requests = sent // len(request)
        grown = rss() - before
    # Reading stopped (the client's send stalled) well before 60 s of requests, and the
    # daemon holds no more than its socket buffers' worth of answers.
    assert stalled is not None, f"the daemon read {requests} requests without stopping"
    # (Without it: +23 MB for ~500,000 requests; with it: ~1 MB.)
    assert grown < 8 * 1024, f"RSS grew by {grown} kB for {requests} unread answers"
