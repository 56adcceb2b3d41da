"""The webhook listener's HTTP/1.1 server: `h1.H1Parser` in a plain Twisted Protocol.

twisted.web's Site/HTTPChannel/Request cost about three quarters of the reactor thread's
time per webhook (issue #18: a Request object with two Headers objects, a producer
dance and several writes per answer).  The webhook listener needs much less: a whole
request in memory (bodies are capped), one answer written as one buffer, requests of one
connection answered in order.  So `LeanHTTPChannel` feeds `h1.H1Parser` and hands each
request to the listener's root resource (`websmsd.http.site.WebhookRoot`: the ITSP
webhook and the paths channels mount) through `LeanRequest`, which has the part of
twisted.web's IRequest those resources use: method, uri, path, args, clientproto,
content, requestHeaders/getHeader, getClientAddress, isSecure, setResponseCode,
setHeader, write, finish, finished, notifyFinish.  `WEBSMSD_HTTP=twisted` in the
environment serves the listener with twisted.web instead (websmsd.service).

What it keeps from the twisted.web path (websmsd.http.twsite): bodies over max_body refused
with 413 before they are buffered (Content-Length and chunked alike), framing errors
answered with a one-line reason and counted as refusals, an early refusal half-closed and
drained so that the client reads it, no access-log line per request.  Timeouts: a
connection is closed when no request has come `timeout` seconds after the last answer
(or the connection's start), or when a request has taken that long to arrive whole;
while a request is being answered (the store committing, a phone's long poll) no
timeout runs.
"""

from __future__ import annotations

import io
import time
from collections import deque
from email.utils import formatdate
from typing import Any, Optional

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import (IProtocolNegotiationFactory, IPushProducer,
                                         ISSLTransport)
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from zope.interface import implementer

from websmsd.http.h1 import CONTINUE, H1Parser, ParseError, Request
from websmsd.http.site import NOT_DONE_YET, RESPONSES, TEXT, early_answer

log = Logger()

# Pipelined requests held (parsed, not answered yet) before the channel stops reading.
_MAX_QUEUED = 8

_date_cache = [0, b""]


def _date(now: float) -> bytes:
    second = int(now)
    if _date_cache[0] != second:
        _date_cache[0] = second
        _date_cache[1] = formatdate(second, usegmt=True).encode("ascii")
    return _date_cache[1]


class _Headers:
    """The read side of twisted.web.http_headers.Headers that the resources use."""

    __slots__ = ("_raw",)

    def __init__(self, raw) -> None:
        self._raw = raw

    def getRawHeaders(self, name: bytes, default=None):
        name = name.lower()
        values = [v for n, v in self._raw if n == name]
        return values or default

    def hasHeader(self, name: bytes) -> bool:
        name = name.lower()
        return any(n == name for n, _ in self._raw)

    def getAllRawHeaders(self):
        grouped: dict = {}
        for n, v in self._raw:
            grouped.setdefault(n, []).append(v)
        return iter(grouped.items())


class LeanRequest:
    """One request of a LeanHTTPChannel, as the webhook listener's resources see it."""

    __slots__ = ("channel", "method", "uri", "path", "clientproto", "content",
                 "requestHeaders", "keep_alive", "code", "_out_headers", "_written",
                 "finished", "_disconnected", "_notify", "_args")

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
        self._notify: Optional[list] = None
        self._args: Optional[dict] = None

    # -- the request ---------------------------------------------------------------------

    def getHeader(self, name: bytes) -> Optional[bytes]:
        """The last value of a request header, as twisted.web's Request.getHeader."""
        name = name.lower()
        found = None
        for n, v in self.requestHeaders._raw:
            if n == name:
                found = v
        return found

    @property
    def args(self) -> dict:
        """The query's arguments (bytes -> [bytes]), parsed on first use; form bodies are
        not parsed into it (the resources read their bodies themselves)."""
        if self._args is None:
            from urllib.parse import parse_qs

            query = self.uri.partition(b"?")[2]
            self._args = parse_qs(query, 1) if query else {}
        return self._args

    def getClientAddress(self) -> Any:
        return self.channel.peer

    def isSecure(self) -> bool:
        return self.channel.secure

    # -- the answer ----------------------------------------------------------------------

    def setResponseCode(self, code: int) -> None:
        self.code = code

    def setHeader(self, name: bytes, value: bytes) -> None:
        if b"\r" in value or b"\n" in value or b"\r" in name or b"\n" in name:
            raise ValueError("header name or value with a line break")
        lower = name.lower()
        self._out_headers = [(n, v) for n, v in self._out_headers if n.lower() != lower]
        self._out_headers.append((name, value))

    def write(self, data: bytes) -> None:
        if self.finished:
            raise RuntimeError("write() after finish()")
        if self._disconnected:
            return  # as twisted.web: writing to a request whose client is gone is a no-op
        self._written.append(data)

    def finish(self) -> None:
        if self._disconnected:
            raise RuntimeError("finish() on a request whose connection was lost")
        if self.finished:
            raise RuntimeError("finish() called twice")
        self.finished = True
        self.channel.request_done(self)
        self._fire(None)

    def notifyFinish(self) -> Deferred:
        """Fires when the answer was handed to the connection; fails if the connection
        was lost before."""
        if self.finished:
            return succeed(None)
        if self._disconnected:
            return fail(ConnectionDone("the connection was lost before the answer"))
        d: Deferred = Deferred()
        if self._notify is None:
            self._notify = []
        self._notify.append(d)
        return d

    def _fire(self, failure: Any) -> None:
        waiting, self._notify = self._notify, None
        for d in waiting or ():
            if failure is None:
                d.callback(None)
            else:
                d.errback(failure)

    def connection_lost(self) -> None:
        self._disconnected = True
        self._fire(ConnectionDone("the connection was lost before the answer"))

    def encode(self) -> bytes:
        """The whole answer: status line, headers, body."""
        body = b"".join(self._written)
        code = self.code
        out = [b"HTTP/1.1 %d %s\r\nDate: %s\r\n"
               % (code, RESPONSES.get(code, b"Unknown"), _date(time.time()))]
        has_length = False
        for n, v in self._out_headers:
            if not has_length and n.lower() == b"content-length":
                has_length = True
            out += (n, b": ", v, b"\r\n")
        if not has_length and code >= 200 and code not in (204, 304):
            out.append(b"Content-Length: %d\r\n" % len(body))
        if not self.keep_alive:
            out.append(b"Connection: close\r\n")
        elif self.clientproto == b"HTTP/1.0":
            out.append(b"Connection: keep-alive\r\n")
        out.append(b"\r\n")
        if self.method != b"HEAD":
            out.append(body)
        return b"".join(out)


@implementer(IPushProducer)
class LeanHTTPChannel(Protocol):
    peer: Any = None
    secure = False
    # After an early answer (413, a framing error) read and discard at most this much of
    # what the client still sends, for at most this long, then close.
    drain_bytes = 8 * 1024 * 1024
    drain_seconds = 5.0

    def __init__(self, factory: "LeanWebhookFactory") -> None:
        self.factory = factory
        self.parser = H1Parser(max_body=factory.max_body)
        self.queue: deque = deque()
        self.current: Optional[LeanRequest] = None
        self.paused = False  # reading paused (by _reading)
        self.blocked = False  # the transport's write buffer is full: answer nothing more
        self.closing = False
        self.rendering = False
        self._drain_left: Optional[int] = None
        self._timer: Any = None
        self._producing = False

    # -- timeouts ------------------------------------------------------------------------

    def _arm(self) -> None:
        """(Re)start the clock for the next request to arrive whole."""
        timer = self._timer
        if timer is not None and timer.active():
            timer.reset(self.factory.timeout)
        else:
            self._timer = self.factory.reactor.callLater(self.factory.timeout, self._timed_out)

    def _disarm(self) -> None:
        timer, self._timer = self._timer, None
        if timer is not None and timer.active():
            timer.cancel()

    def _timed_out(self) -> None:
        self._timer = None
        if self.current is not None and self._drain_left is None:
            return  # being answered: no timeout until the answer is written (request_done)
        self._unregister()
        if self._drain_left is not None:
            self.transport.loseConnection()
        else:
            self.transport.abortConnection()

    # -- the connection ------------------------------------------------------------------

    def connectionMade(self) -> None:
        self.peer = self.transport.getPeer()
        self.secure = ISSLTransport.providedBy(self.transport)
        # As a streaming producer of answers, the channel hears when the client does not
        # read them (pauseProducing): it stops answering and reading until the buffer
        # drains, so that a client pipelining requests it never reads the answers of
        # cannot make the daemon buffer answers without bound.
        self.transport.registerProducer(self, True)
        self._producing = True
        self._arm()

    def _unregister(self) -> None:
        # Before any close: a transport with a paused producer registered would wait
        # for it forever instead of closing once its buffer is written.
        if self._producing:
            self._producing = False
            self.transport.unregisterProducer()

    # -- IPushProducer: the transport's write buffer -------------------------------------

    def pauseProducing(self) -> None:
        self.blocked = True
        self._reading()

    def resumeProducing(self) -> None:
        self.blocked = False
        if self.current is None and self.queue and not self.rendering:
            self._next()
        else:
            self._reading()

    def stopProducing(self) -> None:
        self.blocked = True  # the connection is going: connectionLost follows

    def _reading(self) -> None:
        """Pause reading while the queue is long or answers cannot be written, resume
        when neither holds (with some slack for the queue)."""
        if self.closing or self._drain_left is not None:
            return
        if self.paused:
            if not self.blocked and len(self.queue) <= _MAX_QUEUED // 2:
                self.paused = False
                self.transport.resumeProducing()
        elif self.blocked or len(self.queue) > _MAX_QUEUED:
            self.paused = True
            self.transport.pauseProducing()

    def dataReceived(self, data: bytes) -> None:
        if self._drain_left is not None:
            self._drain(len(data))
            return
        events = self.parser.feed(data)
        if not events:
            return
        # Requests, CONTINUE and a ParseError alike, in order: each after the answers
        # to the requests before it (a 100 Continue is an interim answer of its own
        # request, so it too waits for the answers before it).
        self.queue.extend(events)
        if self.current is None and not self.rendering:
            self._next()
        else:
            self._reading()

    def _next(self) -> None:
        self.rendering = True
        try:
            self._render_queued()
        finally:
            self.rendering = False
        self._reading()

    def _render_queued(self) -> None:
        while self.current is None and self.queue and not self.closing and not self.blocked:
            event = self.queue.popleft()
            if event is CONTINUE:
                self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")
                continue
            if isinstance(event, ParseError):
                self._refuse(event)
                return
            request = LeanRequest(self, event)
            # The timer is left running (cancelling it and starting another per request
            # costs more than the rest of the channel's work): _timed_out ignores it
            # while the request is being answered, request_done restarts it.
            self.current = request
            try:
                result = self.factory.resource.render(request)
            except Exception:
                log.failure("webhook listener: a resource failed on {path}",
                            path=request.path.decode("latin-1")[:200])
                if request.finished or request._disconnected:
                    continue
                request._written = [b"internal error\n"]
                request.code = 500
                request._out_headers = [(b"Content-Type", TEXT)]
                result = b""
            if result is not NOT_DONE_YET and not request.finished:
                if result:
                    request._written.append(result)
                request.finish()

    def request_done(self, request: LeanRequest) -> None:
        """`request` finished: write its answer, go on with the next one."""
        if request is not self.current:
            return
        self.transport.write(request.encode())
        self.current = None
        if not request.keep_alive:
            self.closing = True
            self.queue.clear()
            self._unregister()
            self.transport.loseConnection()
            return
        self._arm()
        if self.queue and not self.rendering:
            self._next()

    # -- refusals ------------------------------------------------------------------------

    def _refuse(self, error: ParseError) -> None:
        self.closing = True
        self.queue.clear()
        self.transport.write(early_answer(error.status, error.reason))
        refused = getattr(self.factory.resource, "refused_early", None)
        if refused is not None:
            kind = "too_large" if error.status == 413 else "bad_request"
            try:
                refused(_Peer(self), error.status, kind, error.target, error.reason)
            except Exception:
                log.failure("webhook listener: recording a refusal failed")
        self._drain_and_close()

    def _drain_and_close(self) -> None:
        """Close after an answer the client may not be reading yet, without losing it.

        Closing a socket with unread data makes the kernel send a reset, which may
        discard the answer at the client before it reads it.  So (RFC 9112 9.6): half-
        close where the transport is a socket of our own (through TLS that would end the
        TCP connection without a TLS close), read and discard whatever still arrives,
        and close when the client does, or after drain_bytes or drain_seconds.
        """
        self._drain_left = self.drain_bytes
        if self.paused:
            self.paused = False
            self.transport.resumeProducing()
        self._disarm()
        self._timer = self.factory.reactor.callLater(self.drain_seconds, self._timed_out)
        from twisted.internet.abstract import FileDescriptor

        self._unregister()
        if isinstance(self.transport, FileDescriptor):
            self.transport.loseWriteConnection()

    def _drain(self, size: int) -> None:
        if self._drain_left is None or self._drain_left <= 0:
            return
        self._drain_left -= size
        if self._drain_left <= 0:
            self._disarm()
            self._unregister()
            self.transport.loseConnection()

    def connectionLost(self, reason: Any = None) -> None:
        self._producing = False
        self._disarm()
        self.queue.clear()
        current, self.current = self.current, None
        if current is not None:
            current.connection_lost()


class _Peer:
    """Enough of a request for WebhookResource.client_of(): a refused request has no
    headers to trust (a proxy's included)."""

    def __init__(self, channel: LeanHTTPChannel) -> None:
        self.channel = channel
        self.requestHeaders = _Headers([])

    def getClientAddress(self) -> Any:
        return self.channel.peer


@implementer(IProtocolNegotiationFactory)
class LeanWebhookFactory(Factory):
    """The webhook listener's factory: every connection a LeanHTTPChannel serving
    `resource` (the listener's root)."""

    def __init__(self, resource: Any, max_body: Optional[int] = None, timeout: float = 60,
                 reactor: Any = None) -> None:
        self.resource = resource
        self.max_body = max_body if max_body is not None else getattr(
            resource, "max_body", 1024 * 1024)
        self.timeout = timeout
        if reactor is None:
            from twisted.internet import reactor
        self.reactor = reactor

    def acceptableProtocols(self) -> list:
        # Over TLS, Twisted 26 answers a client's ALPN offer (curl offers h2 and
        # http/1.1) with an internal-error alert when the factory names no protocol.
        return [b"http/1.1"]

    def buildProtocol(self, addr: Any) -> LeanHTTPChannel:
        return LeanHTTPChannel(self)

    def log_summary(self) -> None:
        summary = getattr(self.resource, "log_summary", None)
        if summary is not None:
            summary()
