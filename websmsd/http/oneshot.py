"""A small HTTP/1.1 client: one request per connection, the answer read whole.

For a peer polled on the LAN (SMS Gateway for Android's local server): twisted.web's
Agent would do, but its modules (twisted.web.client, _newclient, twisted.web.http) hold
1.3 MB of a Raspberry Pi's memory from the first poll on (issue #18), for pooling,
proxies and redirects this peer does not need.  This client writes the request with
`Connection: close`, reads the answer with websmsd.http.h1response (Content-Length,
chunked or until the close; at most `max_body` bytes, then `truncated`) and closes.
HTTPS verifies the server's certificate and name (optionsForClientTLS, the platform's
trust roots), as the Agent's BrowserLikePolicyForHTTPS does.

`OneShot.request(method, url, headers=, data=)` has treq's signature (as
websmsd.android.smsgate_client calls it); its Deferred fires with an `Answer` (code,
headers, content, truncated) or fails with a connection error, `NoAnswer` or
`ResponseError`.  Cancelling it aborts the connection.
"""

from __future__ import annotations

from typing import Any, List, Optional, Tuple
from urllib.parse import urlsplit

from twisted.internet import defer
from twisted.internet.protocol import Factory, Protocol
from twisted.web.http_headers import Headers

from websmsd.endpoints import tcp_client
from websmsd.http.h1 import _TARGET_BAD, _is_token
from websmsd.http.h1response import _BAD_IN_LINE, NoAnswer, ResponseError, ResponseReader

__all__ = ["OneShot", "Answer", "NoAnswer", "ResponseError"]



class Answer:
    """An answer read whole: `code`, `headers` (a twisted Headers), `content`, and
    whether the content was cut at the client's limit (`truncated`)."""

    def __init__(self, code: int, headers: List[Tuple[bytes, bytes]], content: bytes,
                 truncated: bool) -> None:
        self.code = code
        self.headers = Headers()
        for name, value in headers:
            self.headers.addRawHeader(name, value)
        self.content = content
        self.truncated = truncated


class _Exchange(Protocol):
    def __init__(self, request: bytes, reader: ResponseReader) -> None:
        self.request = request
        self.reader = reader
        self.done: defer.Deferred = defer.Deferred(self._cancel)

    def _cancel(self, _: defer.Deferred) -> None:
        if self.transport is not None:
            self.transport.abortConnection()

    def connectionMade(self) -> None:
        self.transport.write(self.request)

    def dataReceived(self, data: bytes) -> None:
        if self.done.called:
            return
        try:
            complete = self.reader.feed(data)
        except ResponseError as e:
            self.done.errback(e)
            self.transport.abortConnection()
            return
        if complete:
            self._answer()
            self.transport.loseConnection()

    def connectionLost(self, reason: Any = None) -> None:
        if self.done.called:
            return
        try:
            self.reader.eof()
        except NoAnswer:
            # Closed or reset before a byte of the answer: the connection's own reason
            # (a reset, a TLS failure) says more than "no answer".
            cause = getattr(reason, "value", None)
            if cause is not None and not _is_plain_close(cause):
                self.done.errback(reason)
            else:
                self.done.errback(NoAnswer("closed the connection without answering"))
            return
        except ResponseError as e:
            self.done.errback(e)
            return
        self._answer()

    def _answer(self) -> None:
        r = self.reader
        self.done.callback(Answer(r.status or 0, r.headers, r.body, r.truncated))


def _is_plain_close(exc: BaseException) -> bool:
    from twisted.internet.error import ConnectionDone

    return isinstance(exc, ConnectionDone)


class OneShot:
    """Requests to one origin or several, each on its own connection."""

    def __init__(self, reactor: Any, *, max_body: int = 4 * 1024 * 1024,
                 connect_timeout: float = 30, tls_options: Any = None) -> None:
        self.reactor = reactor
        self.max_body = max_body
        self.connect_timeout = connect_timeout
        self._tls_options = tls_options  # tests: a client context trusting their CA

    def request(self, method: str, url: str, *, headers: Optional[Headers] = None,
                data: Optional[bytes] = None, allow_redirects: bool = False,
                unbuffered: bool = True) -> defer.Deferred:
        if allow_redirects:
            raise ValueError("OneShot follows no redirects")
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("only http:// and https:// URLs with a host")
        host = parts.hostname
        port = parts.port or (443 if parts.scheme == "https" else 80)
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        authority = f"[{host}]" if ":" in host else host
        if parts.port is not None:
            authority += f":{parts.port}"
        request = _request_bytes(method, target, authority, headers, data)
        endpoint = tcp_client(self.reactor, host, port, timeout=self.connect_timeout)
        if parts.scheme == "https":
            from twisted.internet.endpoints import wrapClientTLS

            options = self._tls_options
            if options is None:
                from twisted.internet.ssl import optionsForClientTLS

                options = optionsForClientTLS(host)
            endpoint = wrapClientTLS(options, endpoint)
        exchange = _Exchange(request, ResponseReader(method.encode("ascii"),
                                                     max_body=self.max_body))
        # Cancelling it cancels the connection attempt, or the exchange once connected
        # (a Deferred waiting on another cancels that one).
        return endpoint.connect(Factory.forProtocol(lambda: exchange)).addCallback(
            lambda _protocol: exchange.done)


def _request_bytes(method: str, target: str, authority: str, headers: Optional[Headers],
                   data: Optional[bytes]) -> bytes:
    """The request's bytes; ValueError for anything that could split it (CR, LF, space
    in the request line; a control character in a header)."""
    verb, path, host = (part.encode("ascii") for part in (method, target, authority))
    if not _is_token(verb) or any(not part or part.translate(None, _TARGET_BAD) != part
                                  for part in (path, host)):
        raise ValueError("a request line that would not be one line")
    out = [b"%s %s HTTP/1.1" % (verb, path), b"Host: " + host, b"Connection: close"]
    if headers is not None:
        for name, values in headers.getAllRawHeaders():
            if name.lower() in (b"host", b"connection", b"content-length"):
                continue
            for value in values:
                if value.translate(None, _BAD_IN_LINE) != value:
                    raise ValueError("a control character in a request header")
                out.append(name + b": " + value)
    if data is not None or method in ("POST", "PUT", "PATCH"):
        out.append(b"Content-Length: %d" % len(data or b""))
    return b"\r\n".join(out) + b"\r\n\r\n" + (data or b"")
