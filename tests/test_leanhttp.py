"""The lean webhook HTTP path (prototype, issue #18): parser and protocol."""

import random

from twisted.internet.defer import Deferred
from twisted.internet.testing import StringTransport
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET

from websmsd.itsp.h1 import CONTINUE, H1Parser, ParseError, Request
from websmsd.itsp.leanhttp import LeanWebhookFactory

POST = (b"POST /sms?x=1 HTTP/1.1\r\nHost: a\r\nContent-Type: application/x-www-form-urlencoded"
        b"\r\nContent-Length: 7\r\n\r\nto=1234")


def test_one_request():
    [r] = H1Parser().feed(POST)
    assert r == Request(b"POST", b"/sms?x=1", b"HTTP/1.1",
                        [(b"host", b"a"), (b"content-type", b"application/x-www-form-urlencoded"),
                         (b"content-length", b"7")], b"to=1234", True)


def test_byte_by_byte_and_pipelined():
    p = H1Parser()
    events = []
    for i in range(len(POST * 3)):
        events += p.feed((POST * 3)[i:i + 1])
    assert [e.body for e in events] == [b"to=1234"] * 3


def test_random_splits():
    rnd = random.Random(7)
    data = POST * 5 + b"GET / HTTP/1.0\r\n\r\n"
    for _ in range(50):
        p, events, i = H1Parser(), [], 0
        while i < len(data):
            n = rnd.randint(1, 40)
            events += p.feed(data[i:i + n])
            i += n
        assert len(events) == 6 and events[-1].keep_alive is False


def test_errors():
    cases = {
        b"GARBAGE\r\n\r\n": 400,
        b"GET / HTTP/2.0\r\n\r\n": 505,
        b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n": 501,
        b"POST / HTTP/1.1\r\nContent-Length: -1\r\n\r\n": 400,
        b"POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n": 400,
        b"POST / HTTP/1.1\r\nContent-Length: 999999999\r\n\r\n": 413,
        b"GET / HTTP/1.1\r\n folded\r\n\r\n": 400,
        b"GET / HTTP/1.1\r\n" + b"X: y\r\n" * 5000: 431,
    }
    for data, status in cases.items():
        events = H1Parser().feed(data)
        assert isinstance(events[-1], ParseError) and events[-1].status == status, data


def test_garbage_never_raises():
    rnd = random.Random(1)
    for _ in range(300):
        p = H1Parser(max_head=512, max_body=512)
        for _ in range(20):
            p.feed(bytes(rnd.randrange(256) for _ in range(rnd.randint(0, 64))))
            assert len(p._buf) <= 512 + 512 + 64 + 4


def test_expect_continue():
    p = H1Parser()
    events = p.feed(b"POST / HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\n")
    assert events == [CONTINUE]
    assert p.feed(b"abc")[0].body == b"abc"


class Echo(Resource):
    isLeaf = True

    def __init__(self):
        super().__init__()
        self.pending = []

    def render(self, request):
        body = request.content.getvalue()
        if body == b"later":
            d = Deferred()
            self.pending.append((d, request))
            return NOT_DONE_YET
        request.setHeader(b"Content-Type", b"text/plain")
        return request.method + b" " + request.uri + b" " + body


def connect(resource):
    proto = LeanWebhookFactory(resource).buildProtocol(None)
    t = StringTransport()
    proto.makeConnection(t)
    return proto, t


def test_protocol_answers_in_order():
    r = Echo()
    proto, t = connect(r)
    proto.dataReceived(b"POST /a HTTP/1.1\r\nContent-Length: 5\r\n\r\nlater"
                       b"POST /b HTTP/1.1\r\nContent-Length: 1\r\n\r\nx")
    assert t.value() == b""
    _, request = r.pending[0]
    request.write(b"first")
    request.finish()
    out = t.value()
    assert out.index(b"first") < out.index(b"POST /b x")
    assert out.count(b"HTTP/1.1 200 OK") == 2 and b"Content-Length: 5\r\n" in out
    proto.connectionLost(None)


def test_protocol_close_and_refusal():
    proto, t = connect(Echo())
    proto.dataReceived(b"GET /x HTTP/1.0\r\n\r\n")
    assert b"Connection: close" in t.value() and t.disconnecting
    proto, t = connect(Echo())
    proto.dataReceived(b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n")
    assert t.value().startswith(b"HTTP/1.1 501 ") and t.disconnecting
    proto.connectionLost(None)


def test_gone_before_answer():
    r = Echo()
    proto, t = connect(r)
    proto.dataReceived(b"POST /a HTTP/1.1\r\nContent-Length: 5\r\n\r\nlater")
    proto.connectionLost(None)
    assert r.pending[0][1]._disconnected
