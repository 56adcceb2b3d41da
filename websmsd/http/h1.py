"""A sans-IO HTTP/1.1 request parser for the internet-facing webhook listener (issue #18).

`H1Parser.feed(data) -> [events]`: `Request` (a whole request with its decoded body),
`CONTINUE` (the client sent ``Expect: 100-continue`` and waits before sending its body)
or `ParseError` (status, one-line reason safe to send and log, and the request target
when the request line was good; the parser is dead afterwards and the connection must
be closed after the answer).  Pipelined requests come out in order.  Nothing here
imports Twisted.

Framing (RFC 9112 6): Content-Length (digits only; repeats must agree) or
``Transfer-Encoding: chunked`` (the only coding taken; trailers are checked and
dropped).  Both at once, or Transfer-Encoding on HTTP/1.0, is refused: a front proxy
that reads the other one would see a different request (request smuggling, RFC 9112
6.1 and 6.3).

Bounds: request line, header lines and their final empty line at most `max_head` bytes
(chunked trailers count against the same budget and header count), at most
`max_headers` header lines, a decoded body at most `max_body` bytes (413 as soon as a
Content-Length or a chunk size says more), a chunk-size line at most 4 KiB (or max_head if less).  The
buffer never holds more than max_head + max_body + one read.

The outcome depends only on the bytes, never on how they were split over reads: every
check below is decided at a byte position of the stream, and the first one wins.  The
one exception is `CONTINUE`, which by its meaning is only sent while the body is still
missing.  Line ends are strict CRLF: a bare CR or LF is a 400 (RFC 9112 2.2 allows it,
and the parsers disagreeing on it is what smuggling feeds on).
"""

from __future__ import annotations

from typing import List, NamedTuple, Optional, Tuple

Headers = List[Tuple[bytes, bytes]]  # (lower-case name, value), in arrival order


class Request(NamedTuple):
    method: bytes
    target: bytes  # origin-form path[?query] (an absolute-form target is cut down), or b"*"
    version: bytes  # b"HTTP/1.1" or b"HTTP/1.0"
    headers: Headers
    body: bytes
    keep_alive: bool


class Continue(NamedTuple):
    """Answer ``100 Continue`` now: the client waits for it before sending the body."""


class ParseError(NamedTuple):
    status: int
    reason: str  # one line, no peer bytes in it
    target: bytes = b""  # the request target when the request line was good


CONTINUE = Continue()

_TOKEN_CHARS = (b"!#$%&'*+-.^_`|~0123456789"
                b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz")
_HEX = b"0123456789abcdefABCDEF"
# Control characters other than HTAB, CR and LF: never allowed in a head line (CR and LF
# are looked at apart, as line ends; HTAB is white space in field values).
_CTL = bytes(range(0, 9)) + bytes(range(11, 13)) + bytes(range(14, 32)) + b"\x7f"
_TARGET_BAD = bytes(range(0, 33)) + b"\x7f"
_VERSIONS = (b"HTTP/1.1", b"HTTP/1.0")
_DIGITS = b"0123456789"

_MAX_CHUNK_LINE = 4096  # chunk size, extensions and CRLF
_MAX_CHUNK_DIGITS = 16
_MAX_BLANK_LINES = 16  # empty lines before a request line (RFC 9112 2.2 says skip "at least one")

# states
_HEAD, _BODY, _SIZE, _DATA, _DATA_END, _TRAILER = range(6)

# results of _take_line other than a line
_NEED, _BARE_CR, _BARE_LF, _TOO_LONG = range(4)


def _is_token(value: bytes) -> bool:
    return bool(value) and not value.translate(None, _TOKEN_CHARS)


def _take_line(buf: bytes, i: int, allowance: int):
    """The line starting at `i` if its content is at most `allowance` bytes.

    Returns (content, next index) or one of _NEED, _BARE_CR, _BARE_LF, _TOO_LONG.  A
    result other than _NEED is the same for every longer `buf` with the same prefix:
    it only reads bytes up to i + allowance + 2, and decides only what those fix.
    """
    if allowance < 0:
        return _TOO_LONG
    stop = i + allowance + 2
    j = buf.find(b"\n", i, stop)
    if j >= 0:
        if j > i + 1 and buf.find(b"\r", i, j - 1) >= 0:
            return _BARE_CR
        if j == i or buf[j - 1] != 13:
            return _BARE_LF
        return buf[i:j - 1], j + 1
    if len(buf) >= stop:
        k = buf.find(b"\r", i, stop - 1)
        if 0 <= k < stop - 2:
            return _BARE_CR
        return _TOO_LONG
    if buf.find(b"\r", i, len(buf) - 1) >= 0:
        return _BARE_CR
    return _NEED


def _origin_form(target: bytes) -> Optional[bytes]:
    """`target` as origin-form, or None if it is not a request target taken here."""
    if target[:1] == b"/":
        return target
    if target == b"*":
        return target
    # absolute-form, which a server MUST accept (RFC 9112 3.2.2); the path is what counts.
    scheme = target[:8].lower()
    if scheme.startswith(b"http://"):
        rest = target[7:]
    elif scheme == b"https://":
        rest = target[8:]
    else:
        return None
    cut = len(rest)
    for sep in (b"/", b"?", b"#"):
        k = rest.find(sep)
        if 0 <= k < cut:
            cut = k
    authority = rest[:cut]
    # userinfo in an http(s) URI is to be treated as an error (RFC 9110 4.2.4)
    if not authority or b"@" in authority:
        return None
    path = rest[cut:]
    if path[:1] != b"/":
        path = b"/" + path
    return path


class _Head:
    """A request head being read: the request line, header lines and what they frame."""

    # Class defaults: a new head only writes what it meets (it is made per request).
    method = b""
    target = b""
    version = b""
    length: Optional[int] = None
    te: Optional[bytes] = None
    connection = b""
    expect = False
    used = 0  # head bytes taken so far, CRLFs included
    count = 0  # header (and trailer) lines
    blank = 0  # empty lines skipped before the request line

    def __init__(self) -> None:
        self.headers: Headers = []


def _request_line(line: bytes, head: _Head) -> Optional[ParseError]:
    parts = line.split(b" ")
    if len(parts) != 3:
        return ParseError(400, "malformed request line")
    method, target, version = parts
    if not _is_token(method):
        return ParseError(400, "malformed method")
    if not target or len(target.translate(None, _TARGET_BAD)) != len(target):
        return ParseError(400, "malformed request target")
    if version not in _VERSIONS:
        if (len(version) == 8 and version[:5] == b"HTTP/" and version[6] == 0x2E
                and version[5] in _DIGITS and version[7] in _DIGITS):
            return ParseError(505, "only HTTP/1.0 and HTTP/1.1 are spoken here")
        return ParseError(400, "malformed HTTP version")
    origin = _origin_form(target)
    if origin is None:
        return ParseError(400, "request target is neither a path nor an http(s) URL")
    head.method = method
    head.target = origin
    head.version = version
    return None


def _field(line: bytes, head: _Head, max_headers: int):
    """Check one header or trailer line, counting it: (name, value) or its error."""
    head.count += 1
    if head.count > max_headers:
        return ParseError(431, "too many header lines", head.target)
    name, colon, value = line.partition(b":")
    if not colon or not name or name.translate(None, _TOKEN_CHARS):
        if line[:1] in (b" ", b"\t"):
            # obs-fold: RFC 9112 5.2 lets a server refuse it
            return ParseError(400, "folded header line", head.target)
        return ParseError(400, "malformed header line", head.target)
    if len(value.translate(None, _CTL)) != len(value):
        return ParseError(400, "control character in a header value", head.target)
    return name, value


def _header(line: bytes, head: _Head, max_headers: int) -> Optional[ParseError]:
    got = _field(line, head, max_headers)
    if got.__class__ is ParseError:
        return got
    name = got[0].lower()
    value = got[1].strip(b" \t")
    head.headers.append((name, value))
    if name in _SPECIAL:
        return _special(name, value, head)
    return None


def _special(name: bytes, value: bytes, head: _Head) -> Optional[ParseError]:
    if name == b"content-length":
        if not value or value.translate(None, _DIGITS):
            return ParseError(400, "malformed Content-Length", head.target)
        # The limit is checked when the head is complete; a number this long is over
        # any limit, so it is not worth converting.
        digits = value.lstrip(b"0")
        length = int(digits or b"0") if len(digits) <= 18 else 10 ** 18
        if head.length is not None and head.length != length:
            return ParseError(400, "conflicting Content-Length headers", head.target)
        head.length = length
    elif name == b"transfer-encoding":
        head.te = value if head.te is None else head.te + b"," + value
    elif name == b"connection":
        head.connection += b"," + value.lower()
    else:  # expect
        if value.lower() != b"100-continue":
            return ParseError(417, "only Expect: 100-continue is understood", head.target)
        head.expect = head.version == b"HTTP/1.1"
    return None


_SPECIAL = frozenset((b"content-length", b"transfer-encoding", b"connection", b"expect"))


def _framing(head: _Head, max_body: int) -> Optional[ParseError]:
    """Check the framing once the head is complete (RFC 9112 6.1, 6.3)."""
    if head.te is not None:
        if head.version != b"HTTP/1.1":
            return ParseError(400, "Transfer-Encoding in an HTTP/1.0 request", head.target)
        if head.length is not None:
            return ParseError(400, "both Transfer-Encoding and Content-Length", head.target)
        codings = [c.strip(b" \t").lower() for c in head.te.split(b",")]
        if codings != [b"chunked"]:
            if b"" in codings or codings.count(b"chunked") > 1:
                return ParseError(400, "malformed Transfer-Encoding", head.target)
            return ParseError(501, "only the chunked transfer coding is taken", head.target)
    elif head.length is not None and head.length > max_body:
        if head.length >= 10 ** 18:
            return ParseError(413, f"request body larger than the limit of {max_body} bytes",
                              head.target)
        return ParseError(413, f"request body of {head.length} bytes is larger than the"
                          f" limit of {max_body}", head.target)
    return None


def _keep_alive(head: _Head) -> bool:
    if not head.connection:
        return head.version == b"HTTP/1.1"
    tokens = [t.strip(b" \t") for t in head.connection.split(b",")]
    if head.version == b"HTTP/1.1":
        return b"close" not in tokens
    return b"keep-alive" in tokens


class H1Parser:
    def __init__(self, max_body: int = 1024 * 1024, max_head: int = 16 * 1024,
                 max_headers: int = 100) -> None:
        self.max_body = max_body
        self.max_head = max_head
        self.max_headers = max_headers
        self._buf = b""
        self._dead = False
        self._state = _HEAD
        self._head: Optional[_Head] = None  # the request being read, once begun
        self._left = 0  # Content-Length still to come, or of the current chunk
        # The body read so far when it came over several reads: copied out of the read
        # buffer so that a body dripped in tiny reads costs linear time, and one bytearray
        # rather than a list of bytes so that 1-byte chunks cost a byte each.
        self._body = bytearray()
        self._got = 0  # decoded chunked body bytes so far
        self._continued = False

    @property
    def dead(self) -> bool:
        return self._dead

    def feed(self, data: bytes) -> list:
        if self._dead:
            return []
        buf = self._buf + data if self._buf else data
        pos = 0
        events: list = []
        while True:
            state = self._state
            if state == _HEAD:
                head = self._head
                if head is None:
                    if pos == len(buf):
                        break
                    # The common case: a whole head in this buffer, without anything
                    # odd in it.  It must reach the same verdict as the line by line
                    # path below, which it leaves every odd case to.
                    end = buf.find(b"\r\n\r\n", pos)
                    if end > pos and buf[pos] != 13 and end + 4 - pos <= self.max_head:
                        head = self._fast_head(buf[pos:end])
                        if head is not None:
                            head.used = end + 4 - pos
                            pos = end + 4
                            length = head.length or 0
                            if head.te is None and length <= self.max_body:
                                if pos + length <= len(buf):
                                    events.append(Request(
                                        head.method, head.target, head.version, head.headers,
                                        buf[pos:pos + length], _keep_alive(head)))
                                    pos += length
                                    continue
                                self._head = head
                                self._state = _BODY
                                self._left = length
                                break
                            err = self._begin_body(head)
                            if err is not None:
                                return self._fail(events, err)
                            continue
                    head = self._head = _Head()
                got = self._head_lines(buf, pos, head)
                if isinstance(got, ParseError):
                    return self._fail(events, got)
                if got is None:
                    break
                pos = got
                err = self._begin_body(head)
                if err is not None:
                    return self._fail(events, err)
            elif state == _BODY:
                end = pos + self._left
                if len(buf) < end:
                    if len(buf) > pos:
                        self._body += memoryview(buf)[pos:]
                        self._left -= len(buf) - pos
                        pos = len(buf)
                    break
                head = self._head
                if self._body:
                    self._body += memoryview(buf)[pos:end]
                    body = bytes(self._body)
                    self._body = bytearray()
                else:
                    body = buf[pos:end]
                events.append(Request(head.method, head.target, head.version, head.headers,
                                      body, _keep_alive(head)))
                pos = end
                self._state = _HEAD
                self._head = None
                self._continued = False
            elif state == _DATA:
                take = min(self._left, len(buf) - pos)
                if take == 0:
                    break
                self._body += memoryview(buf)[pos:pos + take]
                pos += take
                self._left -= take
                if not self._left:
                    self._state = _DATA_END
            elif state == _SIZE:
                got = _take_line(buf, pos, min(_MAX_CHUNK_LINE, self.max_head) - 2)
                if got == _NEED:
                    break
                if isinstance(got, int):
                    return self._fail(events, ParseError(
                        400, "chunk size line too long" if got == _TOO_LONG
                        else "chunk size line not ended by CRLF", self._head.target))
                line, pos = got
                err = self._chunk_size(line)
                if err is not None:
                    return self._fail(events, err)
            elif state == _DATA_END:
                if len(buf) - pos < 2:
                    if len(buf) > pos and buf[pos] != 13:
                        return self._fail(events, ParseError(
                            400, "chunk data not followed by CRLF", self._head.target))
                    break
                if buf[pos] != 13 or buf[pos + 1] != 10:
                    return self._fail(events, ParseError(
                        400, "chunk data not followed by CRLF", self._head.target))
                pos += 2
                self._state = _SIZE
            else:  # _TRAILER
                head = self._head
                got = _take_line(buf, pos, self.max_head - head.used - 2)
                if got == _NEED:
                    break
                if isinstance(got, int):
                    return self._fail(events, self._line_error(got, head))
                line, pos = got
                head.used += len(line) + 2
                if line:
                    err = _field(line, head, self.max_headers)
                    if err.__class__ is ParseError:
                        return self._fail(events, err)
                    continue
                body = bytes(self._body)
                self._body = bytearray()
                events.append(Request(head.method, head.target, head.version, head.headers,
                                      body, _keep_alive(head)))
                self._state = _HEAD
                self._head = None
                self._continued = False
        if (self._state != _HEAD and self._head.expect and not self._continued):
            self._continued = True
            events.append(CONTINUE)
        self._buf = buf[pos:] if pos else buf
        return events

    def _fast_head(self, raw: bytes) -> Optional[_Head]:
        """The head in `raw` (without its final CRLFCRLF) if nothing in it is odd, else
        None: the line by line path then decides, so both always agree."""
        lines = raw.split(b"\r\n")
        n = len(lines) - 1
        if (n > self.max_headers or raw.count(b"\n") != n or raw.count(b"\r") != n
                or len(raw.translate(None, _CTL)) != len(raw)):
            return None
        head = _Head()
        if _request_line(lines[0], head) is not None:
            return None
        headers = head.headers
        for line in lines[1:]:
            name, colon, value = line.partition(b":")
            if not colon or not name or name.translate(None, _TOKEN_CHARS):
                return None
            name = name.lower()
            value = value.strip(b" \t")
            headers.append((name, value))
            if name in _SPECIAL and _special(name, value, head) is not None:
                return None
        head.count = n
        return head

    def _fail(self, events: list, err: ParseError) -> list:
        self._dead = True
        self._buf = b""
        self._body = bytearray()
        events.append(err)
        return events

    def _line_error(self, got: int, head: _Head) -> ParseError:
        if got == _TOO_LONG:
            if not head.method:
                return ParseError(414, "request line too long")
            return ParseError(431, "request head too long", head.target)
        return ParseError(400, "line not ended by CRLF", head.target)

    def _head_lines(self, buf: bytes, pos: int, head: _Head):
        """Take the complete head lines from `pos` on; the index after the head, None
        for more data (the lines taken are kept in `head`, the buffer keeps the rest
        from `pos`: this returns `pos` moved only when the head is done), or an error."""
        # Lines already taken from this buffer in an earlier feed are skipped by the
        # byte count they used; self._buf begins where the head began.
        i = pos + head.used + 2 * head.blank
        while True:
            got = _take_line(buf, i, self.max_head - head.used - 2)
            if got == _NEED:
                return None
            if isinstance(got, int):
                return self._line_error(got, head)
            line, i = got
            if not head.method:
                if not line:
                    head.blank += 1
                    if head.blank > _MAX_BLANK_LINES:
                        return ParseError(400, "too many empty lines before a request")
                    continue
                if len(line.translate(None, _CTL)) != len(line):
                    return ParseError(400, "malformed request line")
                head.used = len(line) + 2
                err = _request_line(line, head)
                if err is not None:
                    return err
                continue
            head.used += len(line) + 2
            if not line:
                return i
            err = _header(line, head, self.max_headers)
            if err is not None:
                return err

    def _begin_body(self, head: _Head) -> Optional[ParseError]:
        err = _framing(head, self.max_body)
        if err is not None:
            return err
        self._head = head
        if head.te is not None:
            self._state = _SIZE
            self._got = 0
        else:
            self._state = _BODY
            self._left = head.length or 0
        return None

    def _chunk_size(self, line: bytes) -> Optional[ParseError]:
        target = self._head.target
        size, semi, ext = line.partition(b";")
        if semi:
            # BWS before the extensions (RFC 9112 7.1.1); they are ignored.
            size = size.rstrip(b" \t")
            if len(ext.translate(None, _CTL)) != len(ext):
                return ParseError(400, "control character in a chunk extension", target)
        if not size or size.translate(None, _HEX):
            return ParseError(400, "malformed chunk size", target)
        if len(size) > _MAX_CHUNK_DIGITS:
            return ParseError(400, "chunk size too long", target)
        n = int(size, 16)
        if self._got + n > self.max_body:
            return ParseError(413, f"chunked request body larger than the limit of"
                              f" {self.max_body} bytes", target)
        if n == 0:
            self._state = _TRAILER
            return None
        self._got += n
        self._left = n
        self._state = _DATA
        return None
