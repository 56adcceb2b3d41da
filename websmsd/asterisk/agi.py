"""FastAGI server: the dialplan hands an outbound message to websmsd.

The dialplan runs

    AGI(agi://127.0.0.1:4573/websms,${EXTEN},${MESSAGE(from)},${QUOTE(${MESSAGE(body)})},${WEBSMS_INDEX})

and websmsd answers by setting WEBSMS_STATUS (SENT, QUEUED or FAILED), WEBSMS_ID and, on
failure, WEBSMS_REASON, then closing the connection.  It never sends HANGUP: on the
Message channel that stops the dialplan, so the lines after AGI() would never run.

This module is the protocol core, sans-IO (no Twisted): `AGISession` takes bytes and
gives events (`Environment`, `Reply`, `Hangup`); `command_bytes` / `set_variable` build
command lines.  websmsd.asterisk.fastagi is the thin Twisted protocol around it.

Facts measured on Asterisk 22 (fixtures/asterisk/fastagi_*.json) that shape the parser:
AGI() undoes QUOTE(), so `agi_arg_3` is the body byte for byte *including raw
newlines*.  A multi-line body therefore adds environment lines without an `agi_` prefix,
a CRLF body leaves a `\\r`, and a body with a blank line ends the environment early: the
rest of it, and `agi_arg_4`, arrive where command answers are expected.  The session
keeps such stray lines and merges them back; the protocol reads the exact body from the
channel with `GET FULL VARIABLE ${BASE64_ENCODE(${MESSAGE(body)})}`.
"""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import field
from typing import Dict, List, Optional, Sequence, Union

from websmsd.text import shown
from websmsd.record import frozen

# ---------------------------------------------------------------------------------------
# Sans-IO core: nothing from Twisted above the "Twisted layer" line.
# ---------------------------------------------------------------------------------------

# A 1023-byte SIP body is a ~1040-byte environment line; messages from other channels
# may be longer.  Both caps only stop abuse (a peer that is not Asterisk, a flood).
MAX_LINE = 64 * 1024
MAX_ENVIRONMENT = 64 * 1024
# res_agi reads a command into a 2048-byte buffer (AGI_BUF_LEN); longer ones are cut.
MAX_COMMAND = 2000

SENT = "SENT"
QUEUED = "QUEUED"
FAILED = "FAILED"
STATUSES = (SENT, QUEUED, FAILED)

# The command that fetches the exact body: base64 survives every byte the environment
# mangles (newlines, blank lines, CR) and ends the answer on one line.
BODY_COMMAND = ("GET", "FULL", "VARIABLE", "${BASE64_ENCODE(${MESSAGE(body)})}")


class AGIProtocolError(ValueError):
    """The peer broke the FastAGI protocol (or a cap); the session cannot go on."""


@frozen
class Environment:
    """The `agi_*` variables Asterisk sent first.

    `amended` is True when stray lines that arrived after an early blank line (a body
    with an empty line) were merged back: the session emits `Environment` once at the
    blank line and, if that changed anything, once more just before the first `Reply`.
    The latest one is the one to use.
    """

    variables: Dict[str, str]
    script: str
    args: List[str]
    amended: bool = False


@frozen
class Reply:
    """One answer to a command: `200 result=1 (data)`, `510 ...`, `520-...`/`520 ...`."""

    code: int
    result: Optional[str]  # the text after `result=`, None if the answer has none
    data: Optional[str]  # the text in (...) after the result, or the message of a 5xx
    lines: List[str] = field(default_factory=list)  # the raw lines, newline removed


@frozen
class Hangup:
    """A `HANGUP` line: Asterisk is done with this session."""


Event = Union[Environment, Reply, Hangup]

_KEY = re.compile(r"(agi_[A-Za-z0-9_]+): ?(.*)\Z", re.S)
_ARG = re.compile(r"agi_arg_([1-9][0-9]*)\Z")
_REPLY_START = re.compile(r"[0-9]{3}[ -]")
_RESULT = re.compile(r"result=([^\s(]*)")
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_VARIABLE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\([A-Za-z0-9_,]*\))?\Z")

# States of AGISession
_ENV = "environment"
_SYNC = "after environment"  # stray lines possible until the first answer
_COMMANDS = "commands"
_ERROR = "error"


def parse_environment(lines: Sequence[str], free_text_arg: int = 3) -> Dict[str, str]:
    """`agi_key: value` lines to a dict; a line that starts no new key continues a value.

    Asterisk writes the standard keys, then `agi_arg_1`, `agi_arg_2`, ... in order, and
    only an argument can hold newlines: in the websms dialplan argument 3, the body,
    which may hold any text, `agi_arg_4: ...` included.  So that a body cannot pose as a
    key: a standard key counts only the first time and only before the arguments; after
    `agi_arg_N` only `agi_arg_N+1` starts a new value: its first occurrence, except
    after the free-text argument, where the real one is the last (it follows the body).
    Everything else continues the value before it, joined with "\\n" (CR kept).
    """
    last_at: Dict[str, int] = {}
    for i, line in enumerate(lines):
        m = _KEY.match(line)
        if m and _ARG.match(m.group(1)):
            last_at[m.group(1)] = i
    variables: Dict[str, str] = {}
    parts: List[str] = []
    key: Optional[str] = None
    args = 0
    for i, line in enumerate(lines):
        m = _KEY.match(line)
        new = None
        if m:
            name = m.group(1)
            if _ARG.match(name):
                if name == f"agi_arg_{args + 1}" and (
                        args + 1 <= free_text_arg or last_at.get(name) == i):
                    new = name
                    args += 1
            elif args == 0 and name not in variables:
                new = name
        if new is not None:
            if key is not None:
                variables[key] = "\n".join(parts)
            key, parts = new, [m.group(2)]
            variables[key] = ""
        elif key is not None:
            parts.append(line)
        # A continuation before any key cannot happen: feed() refuses such a start.
    if key is not None:
        variables[key] = "\n".join(parts)
    return variables


def _make_environment(lines: Sequence[str], free_text_arg: int,
                      amended: bool = False) -> Environment:
    variables = parse_environment(lines, free_text_arg)
    args = []
    n = 1
    while f"agi_arg_{n}" in variables:
        args.append(variables[f"agi_arg_{n}"])
        n += 1
    script = variables.get("agi_network_script", "")
    if not script:
        # agi://host:port/script?...  (agi_network_script is missing before Asterisk 1.6)
        request = variables.get("agi_request", "")
        if "://" in request:
            script = request.split("://", 1)[1].partition("/")[2]
    return Environment(variables, script, args, amended)


def _make_reply(lines: List[str]) -> Reply:
    first = lines[0]
    code = int(first[:3])
    if first[3] == "-":
        # 520-Invalid command syntax.  Proper usage follows: / usage / 520 End of ...
        text = [first[4:]] + lines[1:-1] + ([lines[-1][4:]] if len(lines) > 1 else [])
        return Reply(code, None, "\n".join(text), list(lines))
    rest = "\n".join([first[4:]] + lines[1:])
    m = _RESULT.match(rest)
    if not m:
        return Reply(code, None, rest.rstrip("\r"), list(lines))
    after = rest[m.end():]
    data = None
    if after.startswith(" ("):
        close = after.rfind(")")
        data = after[2:close] if close >= 2 else after[2:]
    return Reply(code, m.group(1), data, list(lines))


def _open_paren(first: str) -> bool:
    """Does this answer line open a `(value` that goes on in the next lines?

    GET (FULL) VARIABLE answers `200 result=1 (value)` with raw newlines in the value;
    `(timeout) endpos=...` and the like close on the same line.
    """
    m = _RESULT.match(first, 4)
    if not m:
        return False
    after = first[m.end():]
    return after.startswith(" (") and ")" not in after


class AGISession:
    """The FastAGI conversation as a state machine: `feed(bytes) -> [events]`.

    Register every command written to the peer with `send()`: an answer is possible only
    to a command the peer has received, so lines that arrive after the environment while
    nothing is outstanding are stray environment lines (a body with a blank line), never
    answers, whatever they look like.  After the first command, stray lines are kept
    until a real answer line (`NNN ` or `NNN-`) and merged back into the environment.

    Errors (over-long line or environment, input that is not a FastAGI environment)
    raise `AGIProtocolError`; after one, every `feed` raises again.
    """

    def __init__(self, max_line: int = MAX_LINE, max_environment: int = MAX_ENVIRONMENT,
                 free_text_arg: int = 3):
        self.max_line = max_line
        self.max_environment = max_environment
        self.free_text_arg = free_text_arg  # see parse_environment
        self.state = _ENV
        self.environment: Optional[Environment] = None
        self.pending = 0  # commands sent and not yet answered
        self.ignored = 0  # lines that were neither environment nor an expected answer
        self.error: Optional[str] = None
        self._buffer = bytearray()
        self._scanned = 0  # bytes of _buffer known to hold no newline
        self._env_lines: List[str] = []
        self._env_size = 0
        self._stray: List[str] = []
        self._reply: List[str] = []  # a multi-line answer being read
        self._reply_size = 0

    # -- outgoing ------------------------------------------------------------------

    def send(self, line: bytes) -> bytes:
        """Note that `line` (from `command_bytes`/`set_variable`) goes to the peer; return it."""
        if self.state == _ENV:
            raise AGIProtocolError("no command may be sent before the environment ends")
        self.pending += 1
        return line

    # -- incoming ------------------------------------------------------------------

    def feed(self, data: bytes) -> List[Event]:
        if self.state == _ERROR:
            raise AGIProtocolError(self.error or "session failed")
        events: List[Event] = []
        buffer = self._buffer
        buffer += data
        start = 0
        try:
            while True:
                end = buffer.find(b"\n", max(start, self._scanned))
                if end < 0:
                    self._scanned = len(buffer)
                    if len(buffer) - start > self.max_line:
                        raise AGIProtocolError(f"line longer than {self.max_line} bytes")
                    break
                if end - start > self.max_line:
                    raise AGIProtocolError(f"line longer than {self.max_line} bytes")
                raw = bytes(buffer[start:end])
                start = end + 1
                self._line(raw.decode("utf-8", "replace"), len(raw) + 1, events)
        except AGIProtocolError as e:
            self.state = _ERROR
            self.error = str(e)
            self._buffer = bytearray()
            raise
        # One copy per feed, not per line; `_scanned` spares rescanning a long line
        # that arrives a few bytes at a time.
        del buffer[:start]
        self._scanned = len(buffer)
        return events

    def _line(self, line: str, size: int, events: List[Event]) -> None:
        if self.state == _ENV:
            self._environment_line(line, size, events)
        elif self.state == _SYNC:
            self._sync_line(line, size, events)
        else:
            self._command_line(line, events)

    def _grow_environment(self, size: int) -> None:
        self._env_size += size
        if self._env_size > self.max_environment:
            raise AGIProtocolError(f"environment longer than {self.max_environment} bytes")

    def _environment_line(self, line: str, size: int, events: List[Event]) -> None:
        if line == "":
            if not self._env_lines:
                raise AGIProtocolError("empty environment")
            self.environment = _make_environment(self._env_lines, self.free_text_arg)
            self.state = _SYNC
            events.append(self.environment)
            return
        if not self._env_lines and not _KEY.match(line):
            raise AGIProtocolError(f"not a FastAGI environment: {shown(line)}")
        self._grow_environment(size)
        self._env_lines.append(line)

    def _sync_line(self, line: str, size: int, events: List[Event]) -> None:
        # Before the first command nothing can be an answer, whatever it looks like: a
        # body cannot pose as one.  (res_agi sends each `agi_*: value` line in one
        # write, so a body's stray lines come with the blank line that cut it short.)
        if self.pending == 0 or not (_REPLY_START.match(line) or line.rstrip("\r") == "HANGUP"):
            self._grow_environment(size)
            self._stray.append(line)
            return
        self._merge_stray(events)
        self.state = _COMMANDS
        self._command_line(line, events)

    def _merge_stray(self, events: List[Event]) -> None:
        if not self._stray:
            return
        lines = self._env_lines + [""] + self._stray
        # The real end of the environment is its last empty line: Asterisk writes the
        # whole environment (body included) before it reads a command, and nothing
        # it sends outside the environment is empty.
        end = max(i for i, line in enumerate(lines) if line == "")
        after = lines[end + 1:]
        self._stray = []
        if end > len(self._env_lines):
            self._env_lines = lines[:end]
            self.environment = _make_environment(self._env_lines, self.free_text_arg,
                                                 amended=True)
            events.append(self.environment)
        for line in after:
            if line.rstrip("\r") == "HANGUP":
                events.append(Hangup())
            else:
                self.ignored += 1

    def _command_line(self, line: str, events: List[Event]) -> None:
        if self._reply:
            self._reply_size += len(line) + 1
            if self._reply_size > self.max_environment:
                raise AGIProtocolError(f"answer longer than {self.max_environment} bytes")
            self._reply.append(line)
            first = self._reply[0]
            if first[3] == "-":
                done = line.startswith(first[:3] + " ")
            else:
                done = line.rstrip("\r").endswith(")")
            if done:
                self._answered(self._reply, events)
            return
        if line.rstrip("\r") == "HANGUP":
            events.append(Hangup())
            return
        if not _REPLY_START.match(line) or self.pending == 0:
            # Not an answer, or an answer to nothing: the tail of a value that broke the
            # one-line rule, or noise.  Never fatal.
            self.ignored += 1
            return
        if line[3] == "-" or _open_paren(line):
            self._reply = [line]
            self._reply_size = len(line) + 1
            return
        self._answered([line], events)

    def _answered(self, lines: List[str], events: List[Event]) -> None:
        self._reply = []
        self._reply_size = 0
        self.pending = max(0, self.pending - 1)
        events.append(_make_reply(lines))


def command_bytes(*words: str) -> bytes:
    """One AGI command line: the words joined by spaces, UTF-8, ended by a newline.

    Words are written as they are (quote a value with `quote`); a word holding CR, LF or
    NUL would end the command early or inject another, so it is refused.
    """
    if not words:
        raise ValueError("empty AGI command")
    for word in words:
        if not isinstance(word, str) or any(c in word for c in "\r\n\x00"):
            raise ValueError(f"AGI command word {shown(word)} holds a line break or NUL")
    line = (" ".join(words) + "\n").encode("utf-8")
    if len(line) > MAX_COMMAND:
        raise ValueError(f"AGI command of {len(line)} bytes is over {MAX_COMMAND}")
    return line


def quote(value: str) -> str:
    """`value` as one AGI argument: in double quotes, `"` and `\\` escaped, control
    characters (CR, LF, tab, ...) removed.  Asterisk's argument parser undoes exactly the
    quoting; an unquoted value with a space would be a syntax error (520)."""
    value = _CONTROL.sub("", value)
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def set_variable(name: str, value: str) -> bytes:
    """`SET VARIABLE NAME "value"` as bytes (see `quote`)."""
    if not isinstance(name, str) or not _VARIABLE_NAME.match(name):
        raise ValueError(f"bad channel variable name {shown(name)}")
    return command_bytes("SET", "VARIABLE", name, quote(value))


def decode_body_reply(reply: Reply) -> Optional[str]:
    """The body from the answer to `BODY_COMMAND`, or None if the channel gave none.

    None for `200 result=0`, an error answer, an empty value (no MESSAGE(body) on this
    channel, or a SIP body Asterisk dropped) or one that is not base64.
    """
    if reply.code != 200 or reply.result != "1" or not reply.data:
        return None
    try:
        raw = base64.b64decode(reply.data.strip(), validate=True)
    except (binascii.Error, ValueError):
        return None
    return raw.decode("utf-8", "replace") or None


def message_body(environment: Environment, reply: Optional[Reply]) -> str:
    """The body to send: MESSAGE(body) from the channel when it has one (exact even when
    a blank line broke the environment), else `agi_arg_3` (stray lines merged back):
    the channel is not a message channel, or the dialplan passes the body some other
    way.  "" when neither holds text: Asterisk dropped a SIP body over 1023 bytes."""
    body = decode_body_reply(reply) if reply is not None else None
    if body is not None:
        return body
    return environment.args[2] if len(environment.args) > 2 else ""
