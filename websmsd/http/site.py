"""The HTTP sites of the daemon, with the limits twisted.web lacks.

twisted.web's defaults are not enough for a listener on the internet: it buffers a
request body of any size, answers 501 to unknown methods and a bare 400 to framing
errors.  `make_site` gives a Site whose requests refuse an oversize body (413) before
buffering it, whose channel explains a framing error in one line, and that writes no
access-log line per request.  `WebhookRoot` is the webhook listener's root: channels
mount their resources at exact paths (the Android apps' URLs); everything else goes to
the ITSP webhook, as the PHP websmsd.php served every path.
"""

from __future__ import annotations

import functools
import io
from typing import Any, Optional

from twisted.logger import Logger
from twisted.web.http import RESPONSES, HTTPChannel
from twisted.web.resource import Resource
from twisted.web.server import Request, Site

from websmsd.text import shorten

log = Logger()

TEXT = b"text/plain; charset=utf-8"
TOO_LARGE = "too_large"

# What the webhook listener counts (websmsd.metrics): refused requests by kind, events
# acknowledged but not taken by reason, delivery reports by our status.
REFUSALS = "webhook_refusals"
IGNORED_EVENTS = "webhook_ignored"
REPORTS = "delivery_reports"


def record_refusal(metrics: Any, now: float, kind: str, status: int, source: str, path: str,
                   reason: str) -> None:
    """Count, remember and log one refused request (never its body or secrets)."""
    path = shorten(path)
    metrics.count(REFUSALS, kind)
    metrics.note(REFUSALS, {"time": now, "kind": kind, "status": status, "source": source,
                            "path": path, "reason": reason})
    log.warn("webhook refused ({status}) a request from {source} for {path}: {reason}",
             kind=kind, status=status, source=source, path=path, reason=reason)


def early_answer(status: int, reason: str) -> bytes:
    """The whole answer to a request refused before any resource saw it (an oversize
    body, a framing error): the reason as text, and the connection closes."""
    body = (reason + "\n").encode("utf-8")
    return (b"HTTP/1.1 %d %s\r\nContent-Type: %s\r\nContent-Length: %d\r\n"
            b"X-Content-Type-Options: nosniff\r\nConnection: close\r\n\r\n%s"
            % (status, RESPONSES.get(status, b"Error"), TEXT, len(body), body))


def body_of(request) -> bytes:
    content = getattr(request, "content", None)
    if content is None:
        return b""
    getvalue = getattr(content, "getvalue", None)
    if getvalue is not None:
        return getvalue()
    content.seek(0)
    data = content.read()
    content.seek(0)
    return data


def answer(request, status: int, body: bytes, content_type: bytes) -> bytes:
    """Prepare a synchronous answer; render() returns what this returns."""
    request.setResponseCode(status)
    request.setHeader(b"Content-Type", content_type)
    request.setHeader(b"Content-Length", b"%d" % len(body))
    if content_type is TEXT:
        # Refusal reasons and echoes carry client text: never let a browser sniff HTML.
        request.setHeader(b"X-Content-Type-Options", b"nosniff")
    return b"" if request.method == b"HEAD" else body


def finish(request, status: int, body: bytes, content_type: bytes) -> None:
    body = answer(request, status, body, content_type)
    if body:
        request.write(body)
    request.finish()


def gone(request) -> bool:
    # Both Twisted 22.4 and 26 set Request._disconnected in connectionLost; finish()
    # raises on such a request.
    return bool(getattr(request, "_disconnected", False))


class WebhookRequest(Request):
    """A Request that refuses an oversize body instead of buffering it.

    twisted.web buffers any request body in full (in memory or a temporary file)
    before a resource sees it.  Here a Content-Length above `max_body` is answered 413
    as soon as the headers are in, and a chunked body is cut off once it exceeds it;
    either way nothing is rendered and the connection is closed, after a bounded
    drain of what the client is still sending (ExplainingHTTPChannel.drain_and_close).  The body is kept in
    memory (it is capped), and form bodies are not pre-parsed into `args`: the resource
    reads them itself.
    """

    max_body = 1024 * 1024
    _refused = False
    _received = 0

    def __init__(self, channel, *args, max_body=None, on_refusal=None, **kw):
        super().__init__(channel, *args, **kw)
        if max_body is not None:
            self.max_body = max_body
        self._on_refusal = on_refusal

    def gotLength(self, length):
        self.content = io.BytesIO()
        if length is not None and length > self.max_body:
            self._refuse_too_large(
                f"request body of {length} bytes is larger than the limit of {self.max_body}"
            )

    def handleContentChunk(self, data):
        if self._refused:
            return
        self._received += len(data)
        if self._received > self.max_body:
            self._refuse_too_large(f"request body larger than {self.max_body} bytes")
            return
        self.content.write(data)

    def requestReceived(self, command, path, version):
        if self._refused:
            return  # answered already; the connection is closing
        # What http.Request.requestReceived does, minus parsing form bodies into args
        # (wasted work here, and Twisted 22.4 answers a bare 400 to a bad multipart).
        self.content.seek(0, 0)
        self.method, self.uri = command, path
        self.clientproto = version
        self.path = path.split(b"?", 1)[0]
        self.process()

    @property
    def args(self):
        """The query arguments (bytes -> [bytes]), parsed on first use."""
        args = self.__dict__.get("_args")
        if args is None:
            uri = self.__dict__.get("uri")
            if uri is None:
                return {}  # not received yet
            from urllib.parse import parse_qs

            query = uri.partition(b"?")[2]
            args = parse_qs(query, 1) if query else {}
            self.__dict__["_args"] = args
        return args

    @args.setter
    def args(self, value):
        self.__dict__["_args"] = value

    def _refuse_too_large(self, reason: str) -> None:
        self._refused = True
        channel = self.channel
        # Otherwise the channel would send "100 Continue" after our answer.
        self.requestHeaders.removeHeader(b"expect")
        # No Request machinery here: the request line has not been handed over yet and
        # must never be, so the answer goes straight to the transport, the way the
        # channel itself answers framing errors (but with a reason).
        channel.transport.write(early_answer(413, reason))
        drain = getattr(channel, "drain_and_close", None)
        if drain is not None:
            drain()
        else:
            channel.loseConnection()
        if self._on_refusal is not None:
            path = getattr(channel, "_path", b"") or b""
            try:
                self._on_refusal(self, 413, TOO_LARGE, path, reason)
            except Exception:
                log.failure("webhook: recording a refusal failed")


def make_site(
    resource: Resource,
    max_body: Optional[int] = None,
    *,
    timeout: float = 60,
    reactor=None,
    log_path: Optional[str] = None,
) -> Site:
    """A Site serving `resource` whose requests refuse bodies over `max_body` bytes.

    `max_body` defaults to the resource's own max_body.  Oversize refusals are counted
    by the resource when it has a `refused_early` method (WebhookResource has).
    """
    if max_body is None:
        max_body = getattr(resource, "max_body", WebhookRequest.max_body)
    factory = functools.partial(
        WebhookRequest,
        max_body=max_body,
        on_refusal=getattr(resource, "refused_early", None),
    )
    site = Site(
        resource, requestFactory=factory, timeout=timeout, reactor=reactor, logPath=log_path
    )
    site.displayTracebacks = False
    # Plain HTTP/1.1 (no HTTP/2 negotiation wrapper: nothing here speaks h2).
    site.protocol = ExplainingHTTPChannel
    if log_path is None and hasattr(resource, "log_summary"):
        # No access log line per webhook: the resource logs refusals one by one and a
        # summary of what it stored (the access line doubled the cost of a request).
        site.log = _no_access_log
    return site


def _no_access_log(request) -> None:
    """Site.log replacement for the webhook: no access line per request."""


class ExplainingHTTPChannel(HTTPChannel):
    """twisted.web's HTTP/1.1 channel, but a request it cannot even frame (a bad request
    line, bad headers, an impossible length) is answered with a reason, not a bare 400,
    and an answer given while the client is still uploading (413) reaches the client."""

    _host = None
    # After an early answer (413) read and discard at most this much of what the client
    # still sends, for at most this long, then close.
    drain_bytes = 8 * 1024 * 1024
    drain_seconds = 5.0
    _drain_left: Optional[int] = None
    _drain_timer = None

    def drain_and_close(self) -> None:
        """Close after an answer the client may not be reading yet, without losing it.

        Closing a socket with unread data in its receive buffer makes the kernel send a
        reset, and a reset may discard the answer at the client before it reads it (curl
        then reports a broken pipe or a reset instead of the 413).  So, as RFC 9112 9.6
        advises: half-close where the transport can (the client reads the answer and an
        end of file), keep reading and discard whatever arrives without parsing or
        buffering it, and close when the client closes, or after `drain_bytes` or
        `drain_seconds`, whichever comes first.
        """
        if self._drain_left is not None:
            return
        self._drain_left = self.drain_bytes
        self.setTimeout(None)
        self._drain_timer = self.callLater(self.drain_seconds, self._drain_done)
        from twisted.internet.abstract import FileDescriptor

        # Only a socket of our own: through a TLS wrapper the call would reach the TCP
        # connection underneath and end it without a TLS close.
        if isinstance(self.transport, FileDescriptor):
            self.transport.loseWriteConnection()

    def dataReceived(self, data: bytes) -> None:
        if self._drain_left is None:
            super().dataReceived(data)
            if self._drain_left is not None:
                # Refused in the middle of `data`: the parser went on with the rest (the
                # request dropped the body) and may have kept what followed it, or
                # paused reading to hold it; neither is wanted while draining.
                self.clearLineBuffer()
                self._dataBuffer = []
                if self._drain_left > 0:
                    self._networkProducer.resumeProducing()
            return
        if self._drain_left <= 0:
            return  # closing already
        self._drain_left -= len(data)
        if self._drain_left <= 0:
            self._drain_done()

    def _drain_done(self) -> None:
        timer, self._drain_timer = self._drain_timer, None
        if timer is not None and timer.active():
            timer.cancel()
        self._drain_left = 0
        self.loseConnection()

    def connectionLost(self, reason) -> None:
        timer, self._drain_timer = self._drain_timer, None
        if timer is not None and timer.active():
            timer.cancel()
        super().connectionLost(reason)

    def getHost(self):
        # Every Request asks for it, and a TCP transport answers with a getsockname()
        # system call each time; it cannot change during a connection.
        if self._host is None:
            self._host = self.transport.getHost()
        return self._host

    def _respondToBadRequestAndDisconnect(self) -> None:
        body = b"400 malformed HTTP request (request line, headers or framing)\n"
        self.transport.write(
            b"HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain; charset=utf-8\r\n"
            b"Content-Length: %d\r\nConnection: close\r\n\r\n%s" % (len(body), body)
        )
        self.loseConnection()


class WebhookRoot(Resource):
    """The root of the webhook listener.

    Channels mount their resources at exact paths (`mount`): the Android apps' Sync
    URLs, for instance.  Every other path goes to `fallback`, the ITSP webhook, which
    chooses its interface by the PHP websmsd.php's rules (remt_addr, url_path).
    """

    isLeaf = True

    def __init__(self, fallback: Resource):
        super().__init__()
        self.fallback = fallback
        self.mounts: dict = {}
        self.max_body = getattr(fallback, "max_body", WebhookRequest.max_body)

    def mount(self, path: str, resource: Resource) -> None:
        if not path.startswith("/") or "?" in path:
            raise ValueError(f"{path!r} is not a path")
        if path in self.mounts:
            raise ValueError(f"{path} is mounted twice")
        self.mounts[path.encode("utf-8")] = resource

    def render(self, request: Any) -> Any:
        resource = self.mounts.get(request.path, self.fallback)
        return resource.render(request)

    def refused_early(self, request: Any, status: int, kind: str, path: bytes, reason: str) -> None:
        # Refused before any resource saw it (an oversize body): counted as the ITSP
        # webhook counts its refusals, whichever channel the path is for.
        self.fallback.refused_early(request, status, kind, path, reason)

    def log_summary(self) -> None:
        self.fallback.log_summary()
