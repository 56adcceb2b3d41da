"""One HTTP/1.1 response, read from the bytes of a connection (sans-IO).

For websmsd's own small client (websmsd.http.oneshot): one request per connection, the
answer read whole, within bounds.  The framing is RFC 9112's (section 6.3): no body for
HEAD, 1xx, 204 and 304; else chunked when Transfer-Encoding says so; else the
Content-Length; else until the server closes.  Interim 1xx answers are skipped.  A body
over `max_body` is cut there and the answer marked `truncated` (the caller closes).

    reader = ResponseReader(b"GET")
    done = reader.feed(data)        # True once the answer is complete
    reader.eof()                    # the server closed: complete, or ResponseError
    reader.status, reader.headers, reader.body, reader.truncated
"""

from __future__ import annotations

import re
from typing import List, Optional, Tuple

__all__ = ["ResponseReader", "ResponseError", "NoAnswer"]

from websmsd.http.h1 import _CTL, _HEX, _MAX_CHUNK_DIGITS, _is_token

# The grammar is websmsd.http.h1's (tokens, control characters, chunk sizes): requests
# and answers are held to the same rules.
_STATUS_LINE = re.compile(rb"HTTP/1\.([01]) ([0-9]{3})(?: ([^\r\n]*))?")
_BAD_IN_LINE = _CTL + b"\r\n"  # a bare CR or LF left inside a line counts too


class ResponseError(Exception):
    """The answer broke off or cannot be read as HTTP/1.1."""


class NoAnswer(ResponseError):
    """The server closed the connection without a byte of an answer."""


class ResponseReader:
    def __init__(self, method: bytes, max_head: int = 16 * 1024,
                 max_body: int = 4 * 1024 * 1024) -> None:
        self.method = method.upper()
        self.max_head = max_head
        self.max_body = max_body
        self.status: Optional[int] = None
        self.reason = b""
        self.headers: List[Tuple[bytes, bytes]] = []
        self.body = b""
        self.truncated = False
        self.done = False
        self._buf = bytearray()
        self._seen = False
        self._framing: Optional[str] = None  # "none", "length", "chunked", "close"
        self._length = 0
        self._chunks: List[bytes] = []
        self._received = 0

    # -- feeding ---------------------------------------------------------------------------

    def feed(self, data: bytes) -> bool:
        """Take more bytes; True once the answer is complete (more bytes are ignored)."""
        if self.done:
            return True
        self._seen = self._seen or bool(data)
        self._buf += data
        if self._framing is None and not self._head():
            return False
        return self._body(eof=False)

    def eof(self) -> None:
        """The server closed the connection: the answer is complete now or never."""
        if self.done:
            return
        if not self._seen:
            raise NoAnswer("closed without answering")
        if self._framing is None:
            raise ResponseError("the answer's head broke off")
        if not self._body(eof=True):
            raise ResponseError("the answer's body broke off")

    # -- the head --------------------------------------------------------------------------

    def _head(self) -> bool:
        while True:
            end = self._buf.find(b"\r\n\r\n")
            if end < 0:
                if len(self._buf) > self.max_head:
                    raise ResponseError(f"an answer head over {self.max_head} bytes")
                return False
            if end > self.max_head:
                raise ResponseError(f"an answer head over {self.max_head} bytes")
            lines = bytes(self._buf[:end]).split(b"\r\n")
            del self._buf[:end + 4]
            status, reason, headers = self._parse_head(lines)
            if 100 <= status < 200 and status != 101:
                continue  # interim (100 Continue, 103 Early Hints): the answer follows
            self.status, self.reason, self.headers = status, reason, headers
            self._framing = self._framing_of(status, headers)
            return True

    @staticmethod
    def _parse_head(lines: List[bytes]) -> Tuple[int, bytes, List[Tuple[bytes, bytes]]]:
        m = _STATUS_LINE.fullmatch(lines[0])
        if m is None:
            raise ResponseError("not an HTTP/1.x status line")
        headers = []
        for line in lines[1:]:
            name, colon, value = line.partition(b":")
            if not colon or not _is_token(name):
                raise ResponseError("a malformed header line in the answer")
            value = value.strip(b" \t")
            if value.translate(None, _BAD_IN_LINE) != value:
                raise ResponseError("a control character in an answer header")
            headers.append((name.lower(), value))
        return int(m.group(2)), m.group(3) or b"", headers

    def _framing_of(self, status: int, headers: List[Tuple[bytes, bytes]]) -> str:
        if self.method == b"HEAD" or status in (204, 304) or status < 200:
            return "none"
        codings = [v.strip().lower() for n, value in headers if n == b"transfer-encoding"
                   for v in value.split(b",") if v.strip()]
        if codings:
            if codings[-1] != b"chunked" or codings.count(b"chunked") != 1:
                raise ResponseError("an answer coding other than chunked")
            return "chunked"
        lengths = {value.strip() for n, value in headers if n == b"content-length"}
        if not lengths:
            return "close"
        if len(lengths) != 1 or not next(iter(lengths)).isdigit():
            raise ResponseError("a bad Content-Length in the answer")
        self._length = int(next(iter(lengths)))
        return "length"

    # -- the body --------------------------------------------------------------------------

    def _body(self, eof: bool) -> bool:
        if self._framing == "none":
            return self._finish(b"")
        if self._framing == "length":
            if len(self._buf) > self.max_body and self._length > self.max_body:
                return self._finish(bytes(self._buf[:self.max_body]), truncated=True)
            if len(self._buf) >= self._length:
                return self._finish(bytes(self._buf[:self._length]))
            return False
        if self._framing == "close":
            if len(self._buf) > self.max_body:
                return self._finish(bytes(self._buf[:self.max_body]), truncated=True)
            return self._finish(bytes(self._buf)) if eof else False
        return self._chunked()

    def _chunked(self) -> bool:
        buf = self._buf
        while True:
            line_end = buf.find(b"\r\n")
            if line_end < 0:
                if len(buf) > 1024:
                    raise ResponseError("a chunk size line over 1 KiB")
                return False
            digits, semi, extensions = bytes(buf[:line_end]).partition(b";")
            if semi:
                digits = digits.rstrip(b" \t")  # extensions are ignored
            if (not digits or digits.translate(None, _HEX) or len(digits) > _MAX_CHUNK_DIGITS
                    or extensions.translate(None, _BAD_IN_LINE) != extensions):
                raise ResponseError("a malformed chunk size in the answer")
            size = int(digits, 16)
            if size == 0:
                # Then the trailers (dropped), which end with an empty line.
                rest = line_end + 2
                if buf[rest:rest + 2] == b"\r\n" or buf.find(b"\r\n\r\n", rest) >= 0:
                    return self._finish(b"".join(self._chunks))
                if len(buf) - rest > self.max_head:
                    raise ResponseError("answer trailers over the head's limit")
                return False
            if len(buf) < line_end + 2 + size + 2:
                if self._received + len(buf) - line_end - 2 > self.max_body:
                    room = self.max_body - self._received
                    self._chunks.append(bytes(buf[line_end + 2:line_end + 2 + room]))
                    return self._finish(b"".join(self._chunks), truncated=True)
                return False
            start = line_end + 2
            if buf[start + size:start + size + 2] != b"\r\n":
                raise ResponseError("a chunk not followed by CRLF")
            room = self.max_body - self._received
            if size > room:
                self._chunks.append(bytes(buf[start:start + room]))
                return self._finish(b"".join(self._chunks), truncated=True)
            self._chunks.append(bytes(buf[start:start + size]))
            self._received += size
            del buf[:start + size + 2]

    def _finish(self, body: bytes, truncated: bool = False) -> bool:
        self.body = body
        self.truncated = truncated
        self.done = True
        self._buf = bytearray()
        self._chunks = []
        return True
