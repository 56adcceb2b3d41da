"""A lean HTTP/1.1 listener for the ITSP webhook (PROTOTYPE, issue #18: measurement only).

Instead of twisted.web's Site/HTTPChannel/Request, a plain Protocol feeds `h1.H1Parser`
and hands each request to the webhook's `render()` through `LeanRequest`, an adapter
with just the attributes WebhookResource reads; the answer is written as one buffer.
Requests of one connection are answered in order (pipelining): the next one is rendered
once the previous one is answered, as twisted.web does.
"""

from __future__ import annotations

import io
import time
from collections import deque
from email.utils import formatdate
from typing import Any, Optional

from twisted.internet.interfaces import IProtocolNegotiationFactory, ISSLTransport
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from twisted.protocols.policies import TimeoutMixin
from twisted.web.http import RESPONSES
from twisted.web.server import NOT_DONE_YET
from zope.interface import implementer

from websmsd.itsp.h1 import CONTINUE, H1Parser, ParseError, Request

log = Logger()

_TEXT = b"text/plain; charset=utf-8"
_MAX_QUEUED = 8  # pipelined requests held before reading pauses

_date_cache = [0, b""]


def _date(now: float) -> bytes:
    second = int(now)
    if _date_cache[0] != second:
        _date_cache[0] = second
        _date_cache[1] = formatdate(second, usegmt=True).encode("ascii")
    return _date_cache[1]


class _Headers:
    """The read side of twisted.web.http_headers.Headers that WebhookResource uses."""

    __slots__ = ("_raw",)

    def __init__(self, raw) -> None:
        self._raw = raw

    def getRawHeaders(self, name: bytes, default=None):
        name = name.lower()
        values = [v for n, v in self._raw if n == name]
        return values or default

    def getAllRawHeaders(self):
        grouped: dict = {}
        for n, v in self._raw:
            grouped.setdefault(n, []).append(v)
        return iter(grouped.items())


class LeanRequest:
    """What WebhookResource.render() reads and calls on a twisted.web Request."""

    __slots__ = ("channel", "method", "uri", "path", "clientproto", "content",
                 "requestHeaders", "keep_alive", "code", "_out_headers", "_written",
                 "finished", "_disconnected")

    def __init__(self, channel: "LeanHTTPChannel", req: Request) -> None:
        self.channel = channel
        self.method = req.method
        self.uri = req.target
        self.path = req.target.partition(b"?")[0]
        self.clientproto = req.version
        self.content = io.BytesIO(req.body)
        self.requestHeaders = _Headers(req.headers)
        self.keep_alive = req.keep_alive
        self.code = 200
        self._out_headers: list = []
        self._written: list = []
        self.finished = False
        self._disconnected = False

    def getHeader(self, name: bytes) -> Optional[bytes]:
        name = name.lower()
        found = None
        for n, v in self.requestHeaders._raw:
            if n == name:
                found = v
        return found

    def getClientAddress(self) -> Any:
        return self.channel.peer

    def isSecure(self) -> bool:
        return self.channel.secure

    def setResponseCode(self, code: int) -> None:
        self.code = code

    def setHeader(self, name: bytes, value: bytes) -> None:
        lower = name.lower()
        self._out_headers = [(n, v) for n, v in self._out_headers if n.lower() != lower]
        self._out_headers.append((name, value))

    def write(self, data: bytes) -> None:
        if self.finished:
            raise RuntimeError("write() after finish()")
        self._written.append(data)

    def finish(self) -> None:
        if self._disconnected:
            raise RuntimeError("finish() on a request whose connection is gone")
        if self.finished:
            raise RuntimeError("finish() called twice")
        self.finished = True
        self.channel.request_done(self)

    def encode(self) -> bytes:
        body = b"".join(self._written)
        out = [b"HTTP/1.1 %d %s\r\n" % (self.code, RESPONSES.get(self.code, b"Unknown")),
               b"Date: ", _date(time.time()), b"\r\n"]
        has_length = False
        for n, v in self._out_headers:
            if n.lower() == b"content-length":
                has_length = True
            out += (n, b": ", v, b"\r\n")
        if not has_length:
            out.append(b"Content-Length: %d\r\n" % len(body))
        out.append(b"\r\n" if self.keep_alive else b"Connection: close\r\n\r\n")
        out.append(body)
        return b"".join(out)


class LeanHTTPChannel(Protocol, TimeoutMixin):
    peer: Any = None
    secure = False

    def __init__(self, factory: "LeanWebhookFactory") -> None:
        self.factory = factory
        self.parser = H1Parser(max_body=factory.max_body)
        self.queue: deque = deque()
        self.current: Optional[LeanRequest] = None
        self.paused = False
        self.closing = False
        self.rendering = False

    def connectionMade(self) -> None:
        self.peer = self.transport.getPeer()
        self.secure = ISSLTransport.providedBy(self.transport)
        self.setTimeout(self.factory.timeout)

    def dataReceived(self, data: bytes) -> None:
        self.resetTimeout()
        # Requests, CONTINUE and a ParseError alike, in order: each after the answers
        # to the requests before it.
        self.queue.extend(self.parser.feed(data))
        if self.current is None and not self.rendering:
            self._next()
        if len(self.queue) > _MAX_QUEUED and not self.paused:
            self.paused = True
            self.transport.pauseProducing()

    def _next(self) -> None:
        self.rendering = True
        try:
            self._render_queued()
        finally:
            self.rendering = False
        if self.paused and len(self.queue) <= _MAX_QUEUED // 2 and not self.closing:
            self.paused = False
            self.transport.resumeProducing()

    def _render_queued(self) -> None:
        while self.current is None and self.queue and not self.closing:
            event = self.queue.popleft()
            if event is CONTINUE:
                self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")
                continue
            if isinstance(event, ParseError):
                self._refuse(event)
                return
            request = LeanRequest(self, event)
            self.current = request
            try:
                result = self.factory.resource.render(request)
            except Exception:
                log.failure("webhook: render failed")
                request._written = [b"internal error\n"]
                request.code = 500
                request._out_headers = [(b"Content-Type", _TEXT)]
                result = b""
            if result is not NOT_DONE_YET and not request.finished:
                if result:
                    request._written.append(result)
                request.finish()

    def request_done(self, request: LeanRequest) -> None:
        self.transport.write(request.encode())
        self.current = None
        if not request.keep_alive:
            self.closing = True
            self.transport.loseConnection()
            return
        if self.queue and not self.rendering:
            self._next()

    def _refuse(self, error: ParseError) -> None:
        # PROTOTYPE: closes at once; the real one must drain like ExplainingHTTPChannel.
        self.closing = True
        body = (error.reason + "\n").encode("utf-8")
        self.transport.write(
            b"HTTP/1.1 %d %s\r\nContent-Type: %s\r\nContent-Length: %d\r\n"
            b"X-Content-Type-Options: nosniff\r\nConnection: close\r\n\r\n%s"
            % (error.status, RESPONSES.get(error.status, b"Error"), _TEXT, len(body), body))
        refused = getattr(self.factory.resource, "refused_early", None)
        if refused is not None and error.status == 413:
            try:
                refused(_Peer(self), 413, "too_large", b"", error.reason)
            except Exception:
                log.failure("webhook: recording a refusal failed")
        self.transport.loseConnection()

    def timeoutConnection(self) -> None:
        self.transport.abortConnection()

    def connectionLost(self, reason: Any = None) -> None:
        self.setTimeout(None)
        self.queue.clear()
        if self.current is not None:
            self.current._disconnected = True
            self.current = None


class _Peer:
    """Enough of a request for WebhookResource.client_of()."""

    def __init__(self, channel: LeanHTTPChannel) -> None:
        self.channel = channel
        self.requestHeaders = _Headers([])

    def getClientAddress(self) -> Any:
        return self.channel.peer


@implementer(IProtocolNegotiationFactory)
class LeanWebhookFactory(Factory):
    def __init__(self, resource: Any, max_body: Optional[int] = None, timeout: float = 60,
                 reactor: Any = None) -> None:
        self.resource = resource
        self.max_body = max_body if max_body is not None else getattr(
            resource, "max_body", 1024 * 1024)
        self.timeout = timeout
        if reactor is not None:
            self.reactor = reactor

    def acceptableProtocols(self) -> list:
        # Over TLS, Twisted 26 answers a client's ALPN offer (curl offers h2 and
        # http/1.1) with an internal-error alert when the factory names no protocol.
        return [b"http/1.1"]

    def buildProtocol(self, addr: Any) -> LeanHTTPChannel:
        p = LeanHTTPChannel(self)
        p.factory = self
        if getattr(self, "reactor", None) is not None:
            p.callLater = self.reactor.callLater
        return p
