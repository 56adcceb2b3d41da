"""A sans-IO HTTP/1.1 request parser for the webhook listener (PROTOTYPE, issue #18).

`H1Parser.feed(data) -> [events]`: `Request` (a whole request with its body), `Continue`
(the client sent ``Expect: 100-continue`` and waits before sending its body) or
`ParseError` (status + one-line reason; the parser is dead afterwards and the connection
must be closed after the answer).  Requests are framed by Content-Length only: a
Transfer-Encoding (chunked uploads) is answered 501 in this prototype.  Pipelined
requests come out in order.  Nothing here imports Twisted.

Bounds: the request line and headers together at most `max_head` bytes, at most
`max_headers` header lines, a body at most `max_body` bytes (413 as soon as the headers
say more).  The buffer never holds more than max_head + max_body + one read.
"""

from __future__ import annotations

from typing import List, NamedTuple, Optional, Tuple

Headers = List[Tuple[bytes, bytes]]  # (lower-case name, value), in arrival order


class Request(NamedTuple):
    method: bytes
    target: bytes  # as sent: path and query
    version: bytes  # b"HTTP/1.1" or b"HTTP/1.0"
    headers: Headers
    body: bytes
    keep_alive: bool


class Continue(NamedTuple):
    """Answer ``100 Continue`` now: the client waits for it before sending the body."""


class ParseError(NamedTuple):
    status: int
    reason: str


CONTINUE = Continue()

_TOKEN = frozenset(b"!#$%&'*+-.^_`|~0123456789"
                   b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz")
_VERSIONS = (b"HTTP/1.1", b"HTTP/1.0")


def _is_token(value: bytes) -> bool:
    return bool(value) and all(c in _TOKEN for c in value)


def _bad_target(target: bytes) -> bool:
    # Control characters and spaces never belong in a request target (RFC 9112 3.2).
    return not target or any(c < 0x21 or c == 0x7F for c in target)


class H1Parser:
    def __init__(self, max_body: int = 1024 * 1024, max_head: int = 16 * 1024,
                 max_headers: int = 100) -> None:
        self.max_body = max_body
        self.max_head = max_head
        self.max_headers = max_headers
        self._buf = b""
        self._head: Optional[tuple] = None  # (method, target, version, headers, length, keep)
        self._dead = False

    @property
    def dead(self) -> bool:
        return self._dead

    def feed(self, data: bytes) -> list:
        if self._dead:
            return []
        buf = self._buf + data if self._buf else data
        events: list = []
        while True:
            head = self._head
            if head is None:
                end = buf.find(b"\r\n\r\n")
                if end < 0:
                    # Empty lines before a request line are allowed (RFC 9112 2.2).
                    buf = buf.lstrip(b"\r\n") if buf[:1] in (b"\r", b"\n") else buf
                    if len(buf) > self.max_head:
                        return self._fail(events, 431, "request line and headers too long")
                    break
                if end > self.max_head:
                    return self._fail(events, 431, "request line and headers too long")
                raw, buf = buf[:end], buf[end + 4:]
                raw = raw.lstrip(b"\r\n")
                head = self._parse_head(raw)
                if isinstance(head, ParseError):
                    self._dead = True
                    self._buf = b""
                    events.append(head)
                    return events
                if head[4] > self.max_body:
                    return self._fail(events, 413, f"request body of {head[4]} bytes is larger"
                                      f" than the limit of {self.max_body}")
                self._head = head
                if head[6] and len(buf) < head[4]:
                    events.append(CONTINUE)
            length = head[4]
            if len(buf) < length:
                break
            body, buf = buf[:length], buf[length:]
            self._head = None
            events.append(Request(head[0], head[1], head[2], head[3], body, head[5]))
        self._buf = buf
        return events

    def _fail(self, events: list, status: int, reason: str) -> list:
        self._dead = True
        self._buf = b""
        events.append(ParseError(status, reason))
        return events

    def _parse_head(self, raw: bytes):
        lines = raw.split(b"\r\n")
        parts = lines[0].split(b" ")
        if len(parts) != 3:
            return ParseError(400, "malformed request line")
        method, target, version = parts
        if not _is_token(method):
            return ParseError(400, "malformed method")
        if _bad_target(target):
            return ParseError(400, "malformed request target")
        if version not in _VERSIONS:
            if version.startswith(b"HTTP/"):
                return ParseError(505, "only HTTP/1.0 and HTTP/1.1 are spoken here")
            return ParseError(400, "malformed request line")
        if len(lines) - 1 > self.max_headers:
            return ParseError(431, "too many header lines")
        headers: Headers = []
        length = 0
        seen_length = None
        connection = b""
        expect = False
        for line in lines[1:]:
            name, colon, value = line.partition(b":")
            if not colon or not _is_token(name):
                # Also obs-fold (a line starting with white space): RFC 9112 5.2 lets a
                # server refuse it.
                return ParseError(400, "malformed header line")
            value = value.strip(b" \t")
            if b"\r" in value or b"\n" in value or b"\0" in value:
                return ParseError(400, "malformed header value")
            name = name.lower()
            headers.append((name, value))
            if name == b"content-length":
                if not value.isdigit() or len(value) > 18:
                    return ParseError(400, "malformed Content-Length")
                if seen_length is not None and seen_length != value:
                    return ParseError(400, "conflicting Content-Length headers")
                seen_length = value
                length = int(value)
            elif name == b"transfer-encoding":
                return ParseError(501, "Transfer-Encoding (chunked uploads) is not taken"
                                  " here: send a Content-Length")
            elif name == b"connection":
                connection += b"," + value.lower()
            elif name == b"expect":
                if value.lower() != b"100-continue":
                    return ParseError(417, "only Expect: 100-continue is understood")
                expect = version == b"HTTP/1.1"
        tokens = [t.strip() for t in connection.split(b",")] if connection else ()
        if version == b"HTTP/1.1":
            keep = b"close" not in tokens
        else:
            keep = b"keep-alive" in tokens
        return (method, target, version, headers, length, keep, expect)
