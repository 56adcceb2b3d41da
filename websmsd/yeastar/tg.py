"""Yeastar TG gateways: the pure protocol layer (no I/O, nothing from Twisted).

The TG runs Asterisk (manager protocol 1.1) with its own GSM driver.  Its "SMS API" is
an AMI-like service: SMS arrive as `ReceivedSMS` events, sends and USSD go out as
`Action: smscommand` with a CLI command, and the outcome of a send comes back later as
an `UpdateSMSSend` event.  A second, HTTP API (WebCGI) can send and run USSD but never
receives.  Facts behind the code are in /work/shared/goip-yeastar.md (Yeastar part),
checked against Yeastar's API guide and captures from real TG200/TG400/TG800 units.

What this module offers:

* numbering: `port_to_span` / `span_to_port` (span = port + 1 on AMI; HTTP uses ports);
* events: `parse_received` -> `ReceivedPart`, `Reassembler` -> `ReceivedSMS`,
  `parse_update_sms_send` -> `SendUpdate`; a bad event is a `BadEvent` value, never an
  exception;
* commands: `sms_command`, `ussd_command` (raise `YeastarError` for what cannot be sent),
  `send_output_error` (the immediate answer to a send);
* WebCGI: `webcgi_send_url` / `webcgi_ussd_url` (and the `*_target` request paths).

What the TG answers (command outputs: `parse_ussd_output`, `parse_spans`, `parse_span`;
WebCGI answers: `parse_http_answer`, `parse_webcgi_answer`, `parse_webcgi_ussd_answer`)
is read by `websmsd.yeastar.tg_answers`.

Events reach `parse_*` as an ordered list of (name, value) pairs (a mapping works too);
header names are case-insensitive and a bare `--END SMS EVENT--` line is ignored.
"""

from __future__ import annotations

import contextlib
import re
from collections import OrderedDict
from dataclasses import field
from typing import Any, Dict, Iterable, List, Mapping, NamedTuple, Optional, Tuple, Union
from urllib.parse import quote

from websmsd.record import frozen

__all__ = [
    "YeastarError", "BadEvent", "ReceivedPart", "ReceivedSMS", "Reassembler", "SendUpdate",
    "port_to_span", "span_to_port", "url_decode", "encode_text",
    "parse_received", "parse_update_sms_send", "sms_command", "send_output_error", "ussd_command",
    "webcgi_send_target", "webcgi_ussd_target", "webcgi_send_url", "webcgi_ussd_url",
]


class YeastarError(ValueError):
    """Something websmsd was asked to send cannot go to the TG as it is."""


# ---------------------------------------------------------------------------------------
# Numbering
# ---------------------------------------------------------------------------------------

# On AMI every span is the port number plus one (port 1 is span 2, the minimum GsmSpan);
# the HTTP API takes the port number itself.
SPAN_OFFSET = 1
# A TG1600 has 16 ports; the margin covers stacked or future units.
MAX_PORT = 128


def _whole(value: Any, what: str, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise YeastarError(f"{what} must be a whole number, not {type(value).__name__}")
    if not low <= value <= high:
        raise YeastarError(f"{what} {value} is out of range {low}..{high}")
    return value


def port_to_span(port: int) -> int:
    """The AMI span of a TG port (1 -> 2)."""
    return _whole(port, "port", 1, MAX_PORT) + SPAN_OFFSET


def span_to_port(span: int) -> int:
    """The TG port (as the web interface and HTTP API number it) of an AMI span (2 -> 1)."""
    return _whole(span, "span", 1 + SPAN_OFFSET, MAX_PORT + SPAN_OFFSET) - SPAN_OFFSET


# ---------------------------------------------------------------------------------------
# Text coding
# ---------------------------------------------------------------------------------------

_HEXDIGITS = frozenset(b"0123456789abcdefABCDEF")
_BOM = "\ufeff"


def _to_bytes(value: str) -> Tuple[bytes, bool]:
    # An AMI client that decoded a line with surrogateescape gets the raw bytes back here.
    try:
        return value.encode("utf-8", "surrogateescape"), False
    except UnicodeEncodeError:
        return value.encode("utf-8", "replace"), True


def url_decode(value: str, *, plus_is_space: bool = True) -> Tuple[bytes, bool]:
    """Percent-decode `value` as the TG writes it: `+` for space, `%XX` for bytes.

    Returns (bytes, damaged): a `%` not followed by two hex digits is kept as it is and
    marks the result damaged.  Characters the device leaves unencoded (`*'()!~`, or any
    other) pass through as their UTF-8 bytes.
    """
    raw, damaged = _to_bytes(value)
    out = bytearray()
    i, n = 0, len(raw)
    while i < n:
        c = raw[i]
        if c == 0x25:  # %
            if i + 2 < n and raw[i + 1] in _HEXDIGITS and raw[i + 2] in _HEXDIGITS:
                out.append(int(raw[i + 1:i + 3], 16))
                i += 3
                continue
            damaged = True
        elif c == 0x2B and plus_is_space:  # +
            out.append(0x20)
            i += 1
            continue
        out.append(c)
        i += 1
    return bytes(out), damaged


def _decode_utf8(data: bytes) -> Tuple[str, bool]:
    """UTF-8 to text; invalid bytes become U+FFFD (damaged).

    Surrogates encoded on their own (`ED A0 BD`) are kept as lone surrogates: a part may
    end with the first half of an emoji's UTF-16 pair and the next part start with the
    second half, and joining the parts mends them (`_mend`).
    """
    with contextlib.suppress(UnicodeDecodeError):
        return data.decode("utf-8", "surrogatepass"), False
    out: List[str] = []
    rest = data
    while rest:
        try:
            out.append(rest.decode("utf-8", "surrogatepass"))
            break
        except UnicodeDecodeError as e:
            out.append(rest[:e.start].decode("utf-8", "surrogatepass"))
            out.append("\ufffd")
            rest = rest[max(e.end, e.start + 1):]
    return "".join(out), True


def _mend(text: str) -> str:
    """Join surrogate pairs; a surrogate left alone becomes U+FFFD (text safe to encode)."""
    if not any("\ud800" <= ch <= "\udfff" for ch in text):
        return text
    return text.encode("utf-16-be", "surrogatepass").decode("utf-16-be", "replace")


def encode_text(text: str) -> str:
    """Percent-encode every UTF-8 byte of `text` outside `A-Za-z0-9-_.~`.

    The TG parses the command like an Asterisk CLI word and then URL-decodes it, with `+`
    as a space: encoding everything else keeps quotes, backslashes, `+`, `%`, CR and LF
    (which would end the AMI header line) out of the command and intact on the phone.
    """
    try:
        return quote(text.encode("utf-8"), safe="")
    except UnicodeEncodeError:
        raise YeastarError("text is not valid Unicode (a lone surrogate)") from None


def _clean_line(text: str, limit: int) -> str:
    """One line of device or peer text fit for a log or a status page."""
    text = "".join(ch if ch >= " " and ch != "\x7f" else " " for ch in text).strip()
    return text if len(text) <= limit else text[:limit] + "..."


# ---------------------------------------------------------------------------------------
# Events
# ---------------------------------------------------------------------------------------

@frozen
class BadEvent:
    """An event that cannot be used, with a one-line reason (the value; never raised)."""

    event: str
    reason: str
    fields: Tuple[Tuple[str, str], ...] = ()

    def __str__(self) -> str:
        return f"bad {self.event} event: {self.reason}"


class _Bad(Exception):
    """Internal: turned into a BadEvent before leaving the module."""


def _field_map(fields: Any) -> Tuple[Dict[str, str], Tuple[Tuple[str, str], ...]]:
    """Lower-cased name -> stripped value (first occurrence wins), plus the pairs seen."""
    if isinstance(fields, Mapping):
        items: Iterable[Any] = list(fields.items())
    elif isinstance(fields, (str, bytes)):
        raise _Bad("not a list of (name, value) pairs")
    else:
        try:
            items = list(fields)
        except TypeError:
            raise _Bad("not a list of (name, value) pairs") from None
    out: Dict[str, str] = {}
    seen: List[Tuple[str, str]] = []
    for item in items:
        # A bare line (`--END SMS EVENT--`) may arrive as a string or a pair without value.
        if isinstance(item, (str, bytes)):
            continue
        try:
            name, value = item
        except (TypeError, ValueError):
            continue
        if isinstance(name, bytes):
            name = name.decode("utf-8", "replace")
        if not isinstance(name, str):
            continue
        key = name.strip().lower()
        if not key or key.startswith("--end"):
            continue
        if value is None:
            value = ""
        elif isinstance(value, bytes):
            value = value.decode("utf-8", "surrogateescape")
        elif not isinstance(value, str):
            continue
        value = value.strip(" \t\r\n")
        seen.append((name, value))
        out.setdefault(key, value)
    return out, tuple(seen)


def _check_event(f: Dict[str, str], expected: str) -> None:
    name = f.get("event")
    if name is not None and name.lower() != expected.lower():
        raise _Bad(f"is a {_clean_line(name, 40)!r} event, not {expected}")


_NUMBER_FIELD = re.compile(r"[0-9]{1,6}")


def _number_field(f: Dict[str, str], key: str, label: str) -> Optional[int]:
    value = f.get(key)
    if value is None or value == "":
        return None
    if not _NUMBER_FIELD.fullmatch(value):
        raise _Bad(f"{label} {_clean_line(value, 20)!r} is not a number")
    return int(value)


def _text_field(f: Dict[str, str], key: str, label: str, limit: int) -> str:
    value = f.get(key, "")
    if len(value) > limit:
        raise _Bad(f"{label} is longer than {limit} characters")
    if any(ch < " " or ch == "\x7f" for ch in value):
        raise _Bad(f"{label} contains control characters")
    return value


# A part holds at most 160 characters, 3 UTF-8 bytes each, 3 characters per byte when
# percent-encoded, plus a BOM: 4 KiB is plenty and bounds what one event can hold.
MAX_CONTENT = 4096
# Concatenated SMS count their parts in one octet.
MAX_PARTS = 255


@frozen
class ReceivedPart:
    """One `ReceivedSMS` event, decoded.

    `text` is the part's text (BOM stripped, always safe to encode); `units` is the same
    text before surrogate halves were mended, which `Reassembler` joins.  `recvtime` is
    the device's local clock as it wrote it (no time zone).  `index` is 1-based, and 1 for
    every single-part message whatever the firmware wrote.  `damaged` says that Content
    had invalid escapes or invalid UTF-8 (replaced by U+FFFD or kept as written).
    """

    span: int
    sender: str
    recvtime: str
    ident: str
    index: int
    total: int
    smsc: str
    text: str
    damaged: bool = False
    units: str = field(default="", repr=False, compare=False)

    def __post_init__(self) -> None:
        if not self.units:
            object.__setattr__(self, "units", self.text)

    @property
    def port(self) -> int:
        return self.span - SPAN_OFFSET

    @property
    def single(self) -> bool:
        return self.total <= 1


def parse_received(fields: Any) -> Union[ReceivedPart, BadEvent]:
    """A `ReceivedSMS` event -> `ReceivedPart`, or a `BadEvent` saying what is wrong."""
    seen: Tuple[Tuple[str, str], ...] = ()
    try:
        f, seen = _field_map(fields)
        _check_event(f, "ReceivedSMS")
        return _received(f)
    except _Bad as e:
        return BadEvent("ReceivedSMS", str(e), seen)


def _received(f: Dict[str, str]) -> ReceivedPart:
    # Yeastar's 2013 guide calls the field GsmPort; real devices send GsmSpan.  Both carry
    # the span (port + 1).
    span = _number_field(f, "gsmspan", "GsmSpan")
    if span is None:
        span = _number_field(f, "gsmport", "GsmPort")
    if span is None:
        raise _Bad("no GsmSpan (or GsmPort)")
    if span < 1:
        raise _Bad(f"span {span} does not exist")
    sender = _text_field(f, "sender", "Sender", 64)
    if not sender:
        raise _Bad("no Sender")
    ident = _text_field(f, "id", "ID", 64)
    recvtime = _text_field(f, "recvtime", "Recvtime", 64)
    smsc = _text_field(f, "smsc", "Smsc", 64)
    total = _number_field(f, "total", "Total")
    index = _number_field(f, "index", "Index")
    # Single-part messages carry Index 1 on older firmware and 0 on newer ones: Total
    # decides.  A missing Total is read as a single part rather than losing the message.
    if total is None or total <= 1:
        total, index = 1, 1
    else:
        if total > MAX_PARTS:
            raise _Bad(f"Total {total} is more than {MAX_PARTS} parts")
        if index is None or not 1 <= index <= total:
            raise _Bad(f"Index {index} is not within 1..{total}")
    if "content" not in f:
        raise _Bad("no Content")
    content = f["content"]
    if len(content) > MAX_CONTENT:
        raise _Bad(f"Content is longer than {MAX_CONTENT} characters")
    data, damaged = url_decode(content)
    units, bad_utf8 = _decode_utf8(data)
    # UCS-2 messages start with a UTF-8 BOM, per part; GSM 7-bit ones do not.
    if units.startswith(_BOM):
        units = units[1:]
    return ReceivedPart(span=span, sender=sender, recvtime=recvtime, ident=ident,
                        index=index, total=total, smsc=smsc, text=_mend(units),
                        damaged=damaged or bad_utf8, units=units)


@frozen
class ReceivedSMS:
    """A whole message (or, when `complete` is False, what arrived of one).

    `received` lists the part indexes that arrived; `missing` the ones that did not.
    Recvtime and Smsc are those of the first part that arrived by index.
    """

    span: int
    sender: str
    recvtime: str
    ident: str
    smsc: str
    text: str
    total: int
    received: Tuple[int, ...]
    complete: bool
    damaged: bool = False

    @property
    def port(self) -> int:
        return self.span - SPAN_OFFSET

    @property
    def missing(self) -> Tuple[int, ...]:
        return tuple(i for i in range(1, self.total + 1) if i not in self.received)


class _Group:
    __slots__ = ("key", "total", "parts", "first_seen", "last_seen", "chars")

    def __init__(self, key: Tuple[Any, ...], total: int, now: float) -> None:
        self.key = key
        self.total = total
        self.parts: Dict[int, ReceivedPart] = {}
        self.first_seen = now
        self.last_seen = now
        self.chars = 0


class Reassembler:
    """Joins multi-part messages; bounded, with the clock passed in.

    Parts are keyed on (span, sender, ID, Total) and joined in Index order whatever order
    they arrive in.  A part seen again with the same text (within `timeout` of its
    message) is ignored; a part whose index is already there with a *different* text means
    a new message reused the ID: what arrived of the old one is handed out as incomplete.
    A group that has had no new part for `timeout` seconds is handed out by `expire`, as
    incomplete; so are the oldest groups when more than `max_groups` are open or their
    texts exceed `max_chars`.  Nothing here reads a clock: pass `now` (seconds).
    """

    def __init__(self, timeout: float = 300.0, *, max_groups: int = 128,
                 max_chars: int = 1_000_000, remember: int = 512) -> None:
        if timeout <= 0 or max_groups < 1 or max_chars < 1 or remember < 0:
            raise ValueError("timeout, max_groups and max_chars must be positive")
        self.timeout = float(timeout)
        self.max_groups = max_groups
        self.max_chars = max_chars
        self.remember = remember
        self._groups: "OrderedDict[Tuple[Any, ...], _Group]" = OrderedDict()
        self._chars = 0
        # Recently completed messages: key -> (time, {index: units}), to drop late copies.
        self._done: "OrderedDict[Tuple[Any, ...], Tuple[float, Dict[int, str]]]" = OrderedDict()

    def __len__(self) -> int:
        return len(self._groups)

    def add(self, part: ReceivedPart, now: float) -> List[ReceivedSMS]:
        """Take one part; return the messages this completes or pushes out (may be [])."""
        if part.total <= 1:
            return [_single(part)]
        key = (part.span, part.sender, part.ident, part.total)
        done = self._done.get(key)
        if done is not None and now - done[0] <= self.timeout and done[1].get(part.index) == part.units:
            return []
        out: List[ReceivedSMS] = []
        group = self._groups.get(key)
        if group is not None:
            there = group.parts.get(part.index)
            if there is not None:
                if there.units == part.units:
                    return []
                out.append(self._drop(group, complete=False))
                group = None
        if group is None:
            while len(self._groups) >= self.max_groups:
                out.append(self._drop(next(iter(self._groups.values())), complete=False))
            group = _Group(key, part.total, now)
            self._groups[key] = group
        group.parts[part.index] = part
        group.last_seen = now
        group.chars += len(part.units)
        self._chars += len(part.units)
        if len(group.parts) == group.total:
            out.append(self._drop(group, complete=True))
            self._done[key] = (now, {i: p.units for i, p in group.parts.items()})
            self._done.move_to_end(key)
            while len(self._done) > self.remember:
                self._done.popitem(last=False)
        while self._chars > self.max_chars and self._groups:
            out.append(self._drop(next(iter(self._groups.values())), complete=False))
        return out

    def expire(self, now: float) -> List[ReceivedSMS]:
        """Hand out, as incomplete, every group with no new part for `timeout` seconds."""
        old = [g for g in self._groups.values() if now - g.last_seen >= self.timeout]
        for key in [k for k, (t, _) in self._done.items() if now - t > self.timeout]:
            del self._done[key]
        return [self._drop(g, complete=False) for g in sorted(old, key=lambda g: g.first_seen)]

    def holds(self, part: ReceivedPart) -> bool:
        """Whether `part` itself waits in a group now (taken, not ignored as a copy, and
        its message not yet handed out): what a caller that keeps the waiting parts
        elsewhere (to survive a restart) must keep."""
        group = self._groups.get((part.span, part.sender, part.ident, part.total))
        return group is not None and group.parts.get(part.index) is part

    def next_expiry(self) -> Optional[float]:
        """When the next `expire` call can hand something out (None: nothing pending)."""
        if not self._groups:
            return None
        return min(g.last_seen for g in self._groups.values()) + self.timeout

    def flush(self) -> List[ReceivedSMS]:
        """Hand out everything pending, as incomplete (at shutdown)."""
        return [self._drop(g, complete=False) for g in list(self._groups.values())]

    def _drop(self, group: _Group, complete: bool) -> ReceivedSMS:
        del self._groups[group.key]
        self._chars -= group.chars
        indexes = tuple(sorted(group.parts))
        first = group.parts[indexes[0]]
        return ReceivedSMS(
            span=first.span, sender=first.sender, recvtime=first.recvtime,
            ident=first.ident, smsc=first.smsc,
            text=_mend("".join(group.parts[i].units for i in indexes)),
            total=group.total, received=indexes, complete=complete,
            damaged=any(p.damaged for p in group.parts.values()))


def _single(part: ReceivedPart) -> ReceivedSMS:
    return ReceivedSMS(span=part.span, sender=part.sender, recvtime=part.recvtime,
                       ident=part.ident, smsc=part.smsc, text=part.text, total=1,
                       received=(1,), complete=True, damaged=part.damaged)


class SendUpdate(NamedTuple):
    """An `UpdateSMSSend` event: `ok` means the SMS centre accepted the SMS (not that the
    handset got it).  `ident` is None when the command had no id (`ID: (null)`)."""

    ident: Optional[str]
    ok: bool
    smsc: str


def parse_update_sms_send(fields: Any) -> Union[SendUpdate, BadEvent]:
    """An `UpdateSMSSend` event -> `SendUpdate(ident, ok, smsc)`, or a `BadEvent`."""
    seen: Tuple[Tuple[str, str], ...] = ()
    try:
        f, seen = _field_map(fields)
        _check_event(f, "UpdateSMSSend")
        ident: Optional[str] = _text_field(f, "id", "ID", 64)
        if ident in ("", "(null)"):
            ident = None
        status = f.get("status")
        if status not in ("0", "1"):
            raise _Bad("no Status" if status is None else
                       f"Status {_clean_line(status, 20)!r} is neither 1 (sent) nor 0 (failed)")
        return SendUpdate(ident, status == "1", _text_field(f, "smsc", "Smsc", 64))
    except _Bad as e:
        return BadEvent("UpdateSMSSend", str(e), seen)


# ---------------------------------------------------------------------------------------
# Commands
# ---------------------------------------------------------------------------------------

# Yeastar's guide: at most 1024 bytes of text before URL-encoding.
MAX_TEXT_BYTES = 1024
NUMBER_RE = re.compile(r"\+?[0-9]{1,32}")
# The id comes back in UpdateSMSSend; it is a CLI word, so nothing that quotes, escapes
# or splits one.
IDENT_RE = re.compile(r"[A-Za-z0-9._-]{1,64}")
# The device does not URL-decode a USSD code (`%23` reaches the network as `%23`).
USSD_CODE_RE = re.compile(r"[0-9*#+]{1,64}")
MAX_USSD_TIMEOUT = 600


def _span_arg(span: Any) -> int:
    return _whole(span, "span", 1 + SPAN_OFFSET, MAX_PORT + SPAN_OFFSET)


def _number_arg(number: Any, what: str = "number") -> str:
    if not isinstance(number, str) or not NUMBER_RE.fullmatch(number):
        raise YeastarError(f"{what} must be digits with an optional leading +")
    return number


def _text_arg(text: Any, max_bytes: int) -> str:
    if not isinstance(text, str):
        raise YeastarError("text must be a string")
    if not text:
        raise YeastarError("text is empty (an empty SMS is never sent)")
    encoded = encode_text(text)
    size = len(text.encode("utf-8"))
    if size > max_bytes:
        raise YeastarError(f"text is {size} bytes in UTF-8; the TG takes at most {max_bytes}")
    return encoded


_END_COMMAND = "--END COMMAND--"


def _output_text(output: Any) -> str:
    if isinstance(output, bytes):
        output = output.decode("utf-8", "replace")
    if not isinstance(output, str):
        return ""
    output = output.replace("\r\n", "\n").replace("\r", "\n")
    # The AMI client should have removed the framing; it may be glued to the last line.
    stripped = output.rstrip()
    if stripped.endswith(_END_COMMAND):
        output = stripped[:-len(_END_COMMAND)]
    return output


def sms_command(span: int, number: str, text: str, ident: Optional[str] = None, *,
                max_text_bytes: int = MAX_TEXT_BYTES) -> str:
    """The CLI command for `Action: smscommand` that sends one SMS.

    `gsm send sms <span> <number> "<text>" <id>` with the text percent-encoded
    (`encode_text`).  Without `ident` the device reports the result with `ID: (null)`,
    which cannot be matched to a send: give one.  Raises `YeastarError` for a bad span,
    number or id, an empty text, or more than `max_text_bytes` bytes of UTF-8 text.
    """
    span = _span_arg(span)
    number = _number_arg(number)
    encoded = _text_arg(text, max_text_bytes)
    command = f'gsm send sms {span} {number} "{encoded}"'
    if ident is not None:
        if not isinstance(ident, str) or not IDENT_RE.fullmatch(ident):
            raise YeastarError("id must be 1-64 characters of A-Z a-z 0-9 . _ -")
        command += f" {ident}"
    return command


def send_output_error(output: Any) -> Optional[str]:
    """What the output of `gsm send sms` says went wrong, or None when it is empty.

    The device answers a good command with empty output and reports the outcome later
    (UpdateSMSSend); for a bad span it prints an error text and no event follows, so a
    non-empty output is a failed send at once.
    """
    text = _output_text(output)
    if not text.strip():
        return None
    first = next(ln for ln in text.split("\n") if ln.strip())
    return _clean_line(first, 200)


def ussd_command(span: int, code: str, timeout: Optional[int] = None) -> str:
    """`gsm send ussd <span> "<code>" [<timeout s>]` (the device's default is 30 s).

    The code goes as written (the device does not URL-decode it), so it must be digits,
    `*`, `#` and `+`.
    """
    span = _span_arg(span)
    if not isinstance(code, str) or not USSD_CODE_RE.fullmatch(code):
        raise YeastarError("USSD code must be digits, *, # and + (e.g. *100#)")
    command = f'gsm send ussd {span} "{code}"'
    if timeout is not None:
        command += f" {_whole(timeout, 'USSD timeout', 1, MAX_USSD_TIMEOUT)}"
    return command


# ---------------------------------------------------------------------------------------
# WebCGI (HTTP API)
# ---------------------------------------------------------------------------------------

ACTION_SEND = "1500101"
ACTION_USSD = "1500102"


def _credential(value: Any, what: str) -> str:
    if not isinstance(value, str) or not value:
        raise YeastarError(f"{what} must be a non-empty string")
    if any(ch < " " or ch == "\x7f" for ch in value):
        raise YeastarError(f"{what} contains control characters")
    return quote(value, safe="")


def _port_arg(port: Any) -> int:
    return _whole(port, "port", 1, MAX_PORT)


def webcgi_send_target(account: str, password: str, port: int, destination: str,
                       text: str, *, max_text_bytes: int = MAX_TEXT_BYTES) -> str:
    """The request target (path and query) of a WebCGI send (1500101).

    The query is the device's own shape, `1500101=account=..&password=..&port=..&
    destination=..&content=..`, with every value percent-encoded (`%20` for a space and
    `%2B` for a `+`, since the device decodes `+` as a space).  It holds the password:
    never log it.
    """
    return (f"/cgi/WebCGI?{ACTION_SEND}=account={_credential(account, 'account')}"
            f"&password={_credential(password, 'password')}&port={_port_arg(port)}"
            f"&destination={quote(_number_arg(destination, 'destination'), safe='')}"
            f"&content={_text_arg(text, max_text_bytes)}")


def webcgi_ussd_target(account: str, password: str, port: int, code: str) -> str:
    """The request target of a WebCGI USSD request (1500102); holds the password."""
    if not isinstance(code, str) or not USSD_CODE_RE.fullmatch(code):
        raise YeastarError("USSD code must be digits, *, # and + (e.g. *100#)")
    return (f"/cgi/WebCGI?{ACTION_USSD}=account={_credential(account, 'account')}"
            f"&password={_credential(password, 'password')}&port={_port_arg(port)}"
            f"&content={quote(code, safe='')}")


def _origin(host: str, port_http: int, tls: bool) -> str:
    if not isinstance(host, str) or not re.fullmatch(r"[A-Za-z0-9.:_-]{1,253}", host):
        raise YeastarError("host must be a host name or an IP address")
    _whole(port_http, "HTTP port", 1, 65535)
    name = f"[{host}]" if ":" in host else host
    return f"{'https' if tls else 'http'}://{name}:{port_http}"


def webcgi_send_url(host: str, port_http: int, account: str, password: str, port: int,
                    destination: str, text: str, *, tls: bool = False) -> str:
    """The full URL of a WebCGI send; holds the password: never log it."""
    return _origin(host, port_http, tls) + webcgi_send_target(account, password, port,
                                                              destination, text)


def webcgi_ussd_url(host: str, port_http: int, account: str, password: str, port: int,
                    code: str, *, tls: bool = False) -> str:
    """The full URL of a WebCGI USSD request; holds the password: never log it."""
    return _origin(host, port_http, tls) + webcgi_ussd_target(account, password, port, code)
