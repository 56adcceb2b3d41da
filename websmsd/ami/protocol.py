"""Asterisk Manager Interface (AMI), sans-IO: framing, action encoding, correlation.

Nothing here imports Twisted (`websmsd.ami.client` is the Twisted side).  Three pieces:

* `AMIParser`: bytes in, events out (`Banner`, `Packet`, `ParseError`).  It reads two
  dialects: Asterisk's own (measured on Asterisk 22, fixtures/asterisk/ami_*.txt/json)
  and the Yeastar TG's SMS API, an Asterisk 1.x manager with its own quirks
  (shared/goip-yeastar.md).
* `encode_action` / `message_send`: actions as bytes, refusing what Asterisk would
  mangle (CR/LF in a value, a line over 1,024 bytes, too many lines).
* `AMISession`: pending actions by ActionID, answers matched to them, list actions
  (`EventList: start` ... `EventList: Complete`) gathered into one `ActionResult`,
  unsolicited events handed out separately.

Why the parser keeps every header as an ordered (name, value) pair instead of a dict:
since Asterisk 14 a Command answer carries one `Output:` header per line of output,
and ChanVariable repeats too; a dict would keep only the last one.
"""

from __future__ import annotations

import base64
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from typing import Deque, Iterable, List, Optional, Sequence, Tuple, Union

from websmsd.record import frozen

# ---------------------------------------------------------------------------------------
# Limits
# ---------------------------------------------------------------------------------------

# Asterisk reads an action line into a 1,025-byte buffer (`inbuf`): a line of at most
# 1,024 bytes *with* its CRLF is read whole; a longer one is refused ("line too long",
# measured on 22.10.1) and the action never runs.
MAX_ACTION_LINE = 1024
# manager.c keeps fewer than AST_MAX_MANHEADERS (128) header lines of one action; older
# versions drop the rest silently, newer ones refuse the action.
MAX_ACTION_LINES = 127
# "Base64Body: " + 1,008 base64 characters + CRLF = 1,022 bytes; 1,012 would be 1,026.
MESSAGE_SEND_MAX_BASE64 = 1008
MESSAGE_SEND_MAX_BODY_BYTES = MESSAGE_SEND_MAX_BASE64 // 4 * 3  # 756

# What we accept from a peer before calling it broken.  Asterisk's biggest answers (a
# long `Command` output, a big list event) stay far below; the cap only stops a peer
# that is not AMI, or a flood, from growing memory without bound.
DEFAULT_MAX_PACKET = 1024 * 1024

# The Yeastar TG (and Asterisk up to 13) ends a `Response: Follows` command answer with
# this suffix, which can follow the last output text without a newline.
END_COMMAND = b"--END COMMAND--"


class AMIError(Exception):
    """Base of every AMI error raised by websmsd."""


class AMIEncodeError(AMIError, ValueError):
    """An action that cannot be sent as asked (CR/LF in a value, a line too long...)."""


# ---------------------------------------------------------------------------------------
# Events out of the parser
# ---------------------------------------------------------------------------------------


@frozen
class Banner:
    """The first line a manager writes, e.g. `Asterisk Call Manager/11.0.0`."""

    text: str


@frozen
class ParseError:
    """The peer broke the framing or a cap; the parser is done, drop the connection."""

    reason: str


@frozen
class Packet:
    """One response or event.

    `fields` keeps every `Name: value` line in order, repeated names included; the
    accessors match names case-insensitively (the TG answers `command:` as well as
    `Command:`).  The value is the text after the colon with one leading space removed:
    an `Output:` line keeps the indentation of the CLI output it carries.
    `bare_lines` are lines without a colon, in order (the TG's `--END SMS EVENT--`).
    `output` is the raw CLI text of a `Response: Follows` answer (TG, Asterisk <= 13),
    None for every other packet.
    """

    fields: Tuple[Tuple[str, str], ...]
    bare_lines: Tuple[str, ...] = ()
    output: Optional[str] = None

    def get(self, name: str, default: Optional[str] = None) -> Optional[str]:
        key = name.lower()
        for n, v in self.fields:
            if n.lower() == key:
                return v
        return default

    def get_all(self, name: str) -> List[str]:
        key = name.lower()
        return [v for n, v in self.fields if n.lower() == key]

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and self.get(name) is not None

    @property
    def response(self) -> Optional[str]:
        """`Success`, `Error`, `Follows`, `Goodbye`... or None for an event."""
        return self.get("Response")

    @property
    def event(self) -> Optional[str]:
        return self.get("Event")

    @property
    def action_id(self) -> Optional[str]:
        return self.get("ActionID")

    @property
    def is_event(self) -> bool:
        return self.response is None and self.event is not None

    def command_output(self) -> Optional[str]:
        """The CLI text of a command answer in either framing, None if it has none.

        Asterisk 14+ sends one `Output:` header per line (joined here with `\\n`); the
        TG and Asterisk <= 13 send `Response: Follows` and raw text (kept as sent).
        """
        if self.output is not None:
            return self.output
        lines = self.get_all("Output")
        return "\n".join(lines) if lines else None


Event = Union[Banner, Packet, ParseError]


def _decode(raw: bytes) -> str:
    return raw.decode("utf-8", "replace")


def _strip_eol(line: bytes) -> bytes:
    if line.endswith(b"\n"):
        line = line[:-1]
    if line.endswith(b"\r"):
        line = line[:-1]
    return line


def _header_name_ok(name: bytes) -> bool:
    # A header name is one token.  This is what tells `Privilege: SMSCommand\r\n` from
    # the first line of TG CLI output such as `GSM span 2: Power on, ...`.
    return bool(name) and all(33 <= c <= 126 for c in name)


# Parser states
_BANNER = "banner"
_HEADERS = "headers"  # between packets, or inside an ordinary packet
_FOLLOWS_HEAD = "follows head"  # after `Response: Follows`, still reading header lines
_FOLLOWS_BODY = "follows body"  # raw CLI output until --END COMMAND--
_FAILED = "failed"


class AMIParser:
    """Bytes from a manager in, events out.  Never raises; never grows without bound.

    `feed(data)` returns the events completed by `data`: a `Banner` for the first line
    (Asterisk and the TG write no blank line after it), then a `Packet` per blank-line
    terminated block, or per `Response: Follows` ... `--END COMMAND--` block.  Line
    ends may be CRLF or bare LF.  Text is decoded as UTF-8 (invalid bytes replaced) only
    once a whole line or packet is in, so a character split across two reads survives.
    A line or packet over `max_packet` bytes gives one `ParseError`, after which the
    parser returns nothing more: the caller drops the connection.
    """

    def __init__(self, max_packet: int = DEFAULT_MAX_PACKET, expect_banner: bool = True):
        self.max_packet = max_packet
        self._buf = bytearray()
        self._scan = 0  # bytes of _buf already searched for a newline
        self._state = _BANNER if expect_banner else _HEADERS
        self._fields: List[Tuple[str, str]] = []
        self._bare: List[str] = []
        self._raw_output = bytearray()
        self._packet_size = 0
        self.banner: Optional[str] = None

    @property
    def failed(self) -> bool:
        return self._state == _FAILED

    @property
    def in_packet(self) -> bool:
        """True while part of a packet has been read (useful to explain a lost link)."""
        return bool(self._buf) or self._packet_size > 0

    def feed(self, data: bytes) -> List[Event]:
        events: List[Event] = []
        if self._state == _FAILED or not data:
            return events
        self._buf += data
        while self._state != _FAILED:
            nl = self._buf.find(b"\n", self._scan)
            if nl < 0:
                self._scan = len(self._buf)
                if self._packet_size + len(self._buf) > self.max_packet:
                    self._fail(events, f"a line of over {self.max_packet} bytes without a newline")
                break
            line = bytes(self._buf[: nl + 1])
            del self._buf[: nl + 1]
            self._scan = 0
            self._line(line, events)
        return events

    # -- one complete line (its newline included) ------------------------------------

    def _line(self, line: bytes, events: List[Event]) -> None:
        if self._state == _BANNER:
            self.banner = _decode(_strip_eol(line))
            self._state = _HEADERS
            events.append(Banner(self.banner))
            return
        self._packet_size += len(line)
        if self._packet_size > self.max_packet:
            self._fail(events, f"a packet of over {self.max_packet} bytes")
            return
        if self._state in (_FOLLOWS_HEAD, _FOLLOWS_BODY):
            self._follows_line(line, events)
            return
        text = _strip_eol(line)
        if not text:
            if self._fields or self._bare:
                self._emit(events)
            else:
                self._packet_size = 0  # blank lines between packets are no packet
            return
        self._header(text)
        if (
            len(self._fields) == 1
            and self._fields[0][0].lower() == "response"
            and self._fields[0][1].strip().lower() == "follows"
        ):
            self._state = _FOLLOWS_HEAD

    def _header(self, text: bytes) -> None:
        name, colon, value = text.partition(b":")
        if not colon:
            self._bare.append(_decode(text))
            return
        if value.startswith(b" "):
            value = value[1:]
        self._fields.append((_decode(name.strip()), _decode(value)))

    def _follows_line(self, line: bytes, events: List[Event]) -> None:
        text = _strip_eol(line)
        if text.endswith(END_COMMAND):
            # The end marker, alone on its line or glued to the last output text.
            # The blank line that follows it is skipped as an empty line between
            # packets.
            self._raw_output += text[: -len(END_COMMAND)]
            self._emit(events)
            return
        if self._state == _FOLLOWS_HEAD:
            if not text:
                # No output and no marker: a peer that says Follows but frames the
                # answer like any other packet.
                self._emit(events)
                return
            name, colon, _ = text.partition(b":")
            # Headers end with CRLF; the CLI output that follows uses bare LF.
            if colon and line.endswith(b"\r\n") and _header_name_ok(name):
                self._header(text)
                return
            self._state = _FOLLOWS_BODY
        self._raw_output += line

    def _emit(self, events: List[Event]) -> None:
        output = None
        if self._state in (_FOLLOWS_HEAD, _FOLLOWS_BODY):
            output = _decode(bytes(self._raw_output))
        events.append(Packet(tuple(self._fields), tuple(self._bare), output))
        self._fields = []
        self._bare = []
        self._raw_output = bytearray()
        self._packet_size = 0
        self._state = _HEADERS

    def _fail(self, events: List[Event], reason: str) -> None:
        self._state = _FAILED
        self._buf = bytearray()
        self._fields = []
        self._bare = []
        self._raw_output = bytearray()
        events.append(ParseError(reason))


# ---------------------------------------------------------------------------------------
# Actions out
# ---------------------------------------------------------------------------------------

Fields = Sequence[Tuple[str, str]]


def _check_name(name: object, what: str) -> str:
    if not isinstance(name, str) or not name:
        raise AMIEncodeError(f"AMI {what} must be a non-empty string, not {name!r}")
    if any(c in name for c in ":\r\n\x00") or name != name.strip() or " " in name:
        raise AMIEncodeError(f"AMI {what} {name!r} may not hold a colon, a space, CR, LF or NUL")
    return name


def _field_line(name: str, value: object) -> bytes:
    _check_name(name, "header name")
    if not isinstance(value, str):
        raise AMIEncodeError(
            f"AMI header {name}: the value must be a string, not {type(value).__name__}")
    if "\r" in value or "\n" in value or "\x00" in value:
        # A newline would end the header (or the whole action) early: the rest of the
        # value would become headers or an action of its own.
        raise AMIEncodeError(f"AMI header {name}: CR, LF or NUL in the value")
    try:
        line = f"{name}: {value}\r\n".encode("utf-8")
    except UnicodeEncodeError:
        raise AMIEncodeError(f"AMI header {name}: the value is not valid Unicode (lone surrogate)")
    if len(line) > MAX_ACTION_LINE:
        raise AMIEncodeError(
            f"AMI header {name}: the line is {len(line)} bytes; Asterisk refuses a line over "
            f"{MAX_ACTION_LINE} bytes (CRLF included) and does not run the action"
        )
    return line


def encode_action(action: str, fields: Iterable[Tuple[str, str]] = (),
                  action_id: Optional[str] = None) -> bytes:
    """One action as bytes: `Action:`, `ActionID:` (if given), the fields, a blank line.

    Raises `AMIEncodeError` for CR/LF/NUL in any name or value, a line over 1,024 bytes
    with its CRLF, more lines than Asterisk keeps, or a field named Action/ActionID
    (those come from the arguments).
    """
    _check_name(action, "action name")
    lines = [_field_line("Action", action)]
    if action_id is not None:
        lines.append(_field_line("ActionID", action_id))
    for item in fields:
        if not isinstance(item, (tuple, list)) or len(item) != 2:
            raise AMIEncodeError(f"AMI fields are (name, value) pairs, not {item!r}")
        name, value = item
        if isinstance(name, str) and name.lower() in ("action", "actionid"):
            raise AMIEncodeError(f"AMI header {name} is set by the action itself, not a field")
        lines.append(_field_line(name, value))
    if len(lines) > MAX_ACTION_LINES:
        raise AMIEncodeError(
            f"AMI action {action} has {len(lines)} lines; Asterisk keeps at most {MAX_ACTION_LINES}"
        )
    return b"".join(lines) + b"\r\n"


def message_send(to: str, from_: Optional[str], body: bytes) -> List[Tuple[str, str]]:
    """The fields of `Action: MessageSend` with the body as `Base64Body`.

    Base64 carries CR/LF, leading/trailing spaces and emoji intact (measured on
    Asterisk 22).  `body` is the UTF-8 text as bytes, at most
    `MESSAGE_SEND_MAX_BODY_BYTES` (756): longer texts go in several MessageSends, in
    order.  `to` is e.g. `pjsip:alice`; `from_` may be None to let Asterisk choose.
    """
    if not isinstance(body, (bytes, bytearray)):
        raise AMIEncodeError("MessageSend body must be bytes (the UTF-8 text)")
    if not body:
        raise AMIEncodeError("MessageSend body is empty; an empty SMS is never sent")
    if len(body) > MESSAGE_SEND_MAX_BODY_BYTES:
        raise AMIEncodeError(
            f"MessageSend body is {len(body)} bytes; one MessageSend carries at most "
            f"{MESSAGE_SEND_MAX_BODY_BYTES} (AMI's 1,024-byte line limit on Base64Body)"
        )
    fields = [("To", to)]
    if from_ is not None:
        fields.append(("From", from_))
    fields.append(("Base64Body", base64.b64encode(bytes(body)).decode("ascii")))
    for name, value in fields:
        _field_line(name, value)  # refuse CR/LF in To/From here, not only when sent
    return fields


# ---------------------------------------------------------------------------------------
# Correlation
# ---------------------------------------------------------------------------------------


@frozen
class ActionResult:
    """The answer to one action: its response and, for a list action, its events.

    `events` are the list items (e.g. ContactList), `list_complete` the closing event
    (`EventList: Complete`, with ListItems), None for an ordinary action.  A
    `Response: Error` is a result too (`ok` is False): for MessageSend it is the
    meaningful "Message failed to send.", not a transport problem.
    """

    action: str
    action_id: str
    response: Packet
    events: Tuple[Packet, ...] = ()
    list_complete: Optional[Packet] = None

    @property
    def ok(self) -> bool:
        return (self.response.response or "").strip().lower() != "error"

    @property
    def message(self) -> Optional[str]:
        return self.response.get("Message")

    def get(self, name: str, default: Optional[str] = None) -> Optional[str]:
        return self.response.get(name, default)

    def command_output(self) -> Optional[str]:
        return self.response.command_output()


@frozen
class ActionDone:
    action_id: str
    result: ActionResult


@frozen
class Unsolicited:
    """An event that answers no pending action: hand it to the subscribers."""

    packet: Packet


@frozen
class Stray:
    """A packet for no pending action (unknown or abandoned ActionID): log it, go on."""

    packet: Packet
    reason: str


Outcome = Union[ActionDone, Unsolicited, Stray]


@dataclass
class _Pending:
    action: str
    response: Optional[Packet] = None
    events: List[Packet] = field(default_factory=list)


def _is_list_start(packet: Packet) -> bool:
    return (packet.get("EventList") or "").strip().lower() == "start"


def _is_list_end(packet: Packet) -> bool:
    return (packet.get("EventList") or "").strip().lower() in ("complete", "cancelled")


class AMISession:
    """Which action each packet answers.  One per connection; no I/O, no clocks.

    `send(action, fields)` encodes an action with a fresh ActionID and remembers it;
    `receive(packet)` returns the outcomes that packet completes.  AMI answers the
    actions of one session in order, so a response without ActionID (a peer that does
    not echo it) answers the oldest action still waiting for its response.
    `cancel(id)` forgets an action (timed out); what arrives for it later is `Stray`.
    `lose()` forgets everything and returns the ids that were waiting: the caller fails
    them (they may or may not have run, and are never sent again).
    """

    def __init__(self, id_prefix: str = "", first_id: int = 1, remember_cancelled: int = 64):
        self._prefix = id_prefix
        self._next = first_id
        self._pending: "OrderedDict[str, _Pending]" = OrderedDict()
        self._cancelled: Deque[str] = deque(maxlen=remember_cancelled)

    @property
    def pending(self) -> List[str]:
        return list(self._pending)

    def action_name(self, action_id: str) -> Optional[str]:
        p = self._pending.get(action_id)
        return p.action if p else None

    def send(self, action: str, fields: Iterable[Tuple[str, str]] = ()) -> Tuple[str, bytes]:
        action_id = f"{self._prefix}{self._next}"
        data = encode_action(action, fields, action_id)  # raises before anything is kept
        self._next += 1
        self._pending[action_id] = _Pending(action)
        return action_id, data

    def cancel(self, action_id: str) -> bool:
        if self._pending.pop(action_id, None) is None:
            return False
        self._cancelled.append(action_id)
        return True

    def lose(self) -> List[str]:
        ids = list(self._pending)
        self._pending.clear()
        return ids

    def receive(self, packet: Packet) -> List[Outcome]:
        action_id = packet.action_id
        if packet.response is not None:
            return self._response(packet, action_id)
        if action_id is not None and action_id in self._pending:
            return self._list_event(packet, action_id)
        if action_id is not None and action_id in self._cancelled:
            return [Stray(packet, f"event for abandoned ActionID {action_id}")]
        return [Unsolicited(packet)]

    def _response(self, packet: Packet, action_id: Optional[str]) -> List[Outcome]:
        if action_id is None:
            action_id = next((k for k, p in self._pending.items() if p.response is None), None)
            if action_id is None:
                return [Stray(packet, "response without ActionID and no action waiting")]
        pending = self._pending.get(action_id)
        if pending is None:
            why = "abandoned" if action_id in self._cancelled else "unknown"
            return [Stray(packet, f"response for {why} ActionID {action_id}")]
        if pending.response is not None:
            return [Stray(packet, f"second response for ActionID {action_id}")]
        pending.response = packet
        ended = bool(pending.events) and _is_list_end(pending.events[-1])
        if _is_list_start(packet) and not ended and packet.response.strip().lower() != "error":
            return []
        return [self._done(action_id)]

    def _list_event(self, packet: Packet, action_id: str) -> List[Outcome]:
        pending = self._pending[action_id]
        if _is_list_end(packet):
            if pending.response is None:
                # An end before the response: keep it; the response completes.
                pending.events.append(packet)
                return []
            return [self._done(action_id, packet)]
        pending.events.append(packet)
        return []

    def _done(self, action_id: str, complete: Optional[Packet] = None) -> ActionDone:
        pending = self._pending.pop(action_id)
        assert pending.response is not None
        events = pending.events
        if complete is None and events and _is_list_end(events[-1]):
            complete = events.pop()
        return ActionDone(
            action_id,
            ActionResult(pending.action, action_id, pending.response, tuple(events), complete),
        )
