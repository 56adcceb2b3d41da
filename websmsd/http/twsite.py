"""twisted.web's Site, with the limits it lacks for a listener on the internet.

twisted.web's defaults are not enough there: it buffers a request body of any size,
answers 501 to unknown methods and a bare 400 to framing errors.  `make_site` gives a
Site whose requests refuse an oversize body (413) before buffering it, whose channel
explains a framing error in one line, and that writes no access-log line per request.
It serves the status page and API, and the webhook listener when WEBSMSD_HTTP=twisted
(websmsd.http.leanhttp serves it otherwise).
"""

from __future__ import annotations

import functools
import io
from typing import Optional

from twisted.logger import Logger
from twisted.web.http import HTTPChannel
from twisted.web.resource import Resource
from twisted.web.server import Request, Site

from websmsd.http.site import MAX_BODY, TOO_LARGE, early_answer

log = Logger()


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

    max_body = MAX_BODY
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
