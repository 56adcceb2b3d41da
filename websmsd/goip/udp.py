"""The GoIP "SMS server" protocol over UDP, sans-IO.

Each GoIP line is configured (Configurations -> SMS) with an SMS server address, an
"SMS Client ID" and a password, and talks to that server in plain UTF-8 text, one message
per datagram.  This module turns one datagram into one typed event (`parse_datagram`),
builds every packet the server sends (`keepalive_ack`, `receive_ack`, `msg_packet`...),
and holds the two dialogues the server leads as pure state machines (`SendSession`,
`UssdSession`): they are given events and the current time and say what to send and when
to wake them up.  Nothing here touches a socket or imports Twisted; `udpserver.py` is the
Twisted side.

Sources (facts only): DBL's "GOIP SMS Interface" (two copies that differ: the one in
iivorait/FSG-GOIP-snippet says keepalive ack status 200 means ok and `OK <sendid> <telid>
<sms_no>`, the older one in NiceLabs/dbltek-goip-agent says 0 means ok, gives
`reg:10;status:0;` as its example, and writes `OK <sendid> <telid>` without sms_no), and
captures from real devices published with NiceLabs/dbltek-goip-agent and styryl/node-goip.

Packets from the GoIP
    `req:<count>;id:..;pass:..;num:..;signal:..;gsm_status:..;...`   keepalive, every 30 s
    `RECEIVE:<recvid>;id:..;password:..;srcnum:..;msg:<text>`         an incoming SMS
    `DELIVER:<recvid>;id:..;password:..;sms_no:..;state:..;num:..`      a delivery report
    `<KIND>:<recvid>;id:..;password:..;...`  STATE, RECORD, REMAIN, CELLS, USSN, ...
    `PASSWORD <sendid>`, `SEND <sendid>`, `OK <sendid> <telid> [<sms_no>]`,
    `WAIT <sendid> <telid>`, `ERROR <sendid> ...`, `DONE <sendid>`    the send dialogue
    `USSD <sendid> <text>`, `USSDERROR <sendid> <msg>`, `USSDEXIT <sendid>`      USSD

Parsing rules that real packets force:
* `msg:` is the last field and takes everything after it, `;` and `:` included; the text
  is never trimmed (a GoIP packet has no terminator, so its end is the end of the SMS).
* Other values may contain `:` (`CELLINFO:LAC:7E5,CELL ID:5E5B`) and may be empty
  (`num:;`); names come in either case (`gsm_status`, `SMS_LOGIN`); the vendor's own
  example writes `pass:` where RECEIVE has `password:`: both are accepted everywhere.
* A repeated field name keeps its first value, so an appended `id:` cannot override.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import field
from typing import Dict, List, Optional, Sequence, Tuple, Union

from websmsd.goip.outcome import SendOutcome
from websmsd.record import frozen

# A GoIP packet is a few hundred bytes (a keepalive ~400, one SMS part at most ~700).
# Anything much larger is not from a GoIP; the cap also bounds the work per datagram.
MAX_DATAGRAM = 16 * 1024
# The document: "The SMS content should be limited to 3000 bytes or less".
MAX_TEXT_BYTES = 3000
MAX_SENDID = 2**31 - 1  # NiceLabs parses sendids as 31-bit integers
MAX_USSD_CODE = 64

_WORD_HEAD = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)([ \t:])")
_INT = re.compile(r"-?[0-9]{1,20}\Z")
_COUNT = re.compile(r"[0-9]{1,12}\Z")
_SENDID = re.compile(r"[0-9]{1,10}\Z")
_KIND = re.compile(r"[A-Za-z][A-Za-z0-9_]{0,31}\Z")
# A number the GoIP dials: digits with an optional leading +, or a service code.
_NUMBER = re.compile(r"\+?[0-9*#]{1,32}\Z")
_USSD_CODE = re.compile(r"[0-9*#+]{1,%d}\Z" % MAX_USSD_CODE)
_PASSWORD_FIELDS = ("password", "pass")


class GoIPProtocolError(ValueError):
    """A value cannot be put into a GoIP packet (it would break it or exceed a limit)."""


# ---------------------------------------------------------------------------------------
# Settings that clients disagree on
# ---------------------------------------------------------------------------------------


@frozen
class Dialect:
    """The forms that differ between GoIP firmware, documents and clients.

    ack_prefix, ack_status: the keepalive answer `<prefix>:<count>;status:<status>;`.
        The vendor document gives `reg` and (newer copy) 200 = ok; its older copy and
        NiceLabs use 0; styryl/node-goip and lszabados/GoIPSms answer `req:...;status:200;`.
        Which forms the firmware accepts is unconfirmed; the default is the document's.
    length_unit: the unit of `<length>` in `MSG <sendid> <length> <text>`.  "utf8"
        (UTF-8 bytes, the default) or "utf16" (UTF-16 code units).  The document says
        "length in utf8 format" and NiceLabs (Go, `len(string)`) sends bytes; node-goip
        and lszabados send their language's string length, i.e. UTF-16 units.  For
        ASCII texts both agree; for others the document's wording decides the default.
    line_end: appended to every server packet of the send and USSD dialogues and to the
        RECEIVE/DELIVER/notice answers (the document ends them with `\\n`; the keepalive
        answer never gets one).
    """

    ack_prefix: str = "reg"
    ack_status: str = "200"
    length_unit: str = "utf8"
    line_end: str = "\n"

    def __post_init__(self) -> None:
        if self.ack_prefix not in ("reg", "req"):
            raise GoIPProtocolError(f"ack_prefix must be 'reg' or 'req', not {self.ack_prefix!r}")
        if not re.fullmatch(r"-?[0-9]{1,6}", self.ack_status):
            raise GoIPProtocolError(f"ack_status must be an integer, not {self.ack_status!r}")
        if self.length_unit not in ("utf8", "utf16"):
            raise GoIPProtocolError(
                f"length_unit must be 'utf8' or 'utf16', not {self.length_unit!r}"
            )
        if self.line_end not in ("", "\n", "\r\n"):
            raise GoIPProtocolError("line_end must be '', '\\n' or '\\r\\n'")


DEFAULT_DIALECT = Dialect()


# ---------------------------------------------------------------------------------------
# Events: what one datagram from a GoIP says
# ---------------------------------------------------------------------------------------

Fields = Tuple[Tuple[str, str], ...]


def _safe_fields(fields: Fields) -> Fields:
    return tuple((k, v) for k, v in fields if k.lower() not in _PASSWORD_FIELDS)


@frozen
class Keepalive:
    """`req:<count>;id:..;pass:..;...`: a line says it is alive (every 30 s).

    `count` is echoed in the answer.  `signal` is AT+CSQ (0..31, 99 unknown) or None when
    missing or not a number.  String fields are "" when absent.  `fields` holds every
    field in order as received (password included: it is hidden from repr; use
    `safe_fields()` for logs).
    """

    count: int
    goip_id: str
    password: str = field(repr=False)
    num: str = ""
    signal: Optional[int] = None
    gsm_status: str = ""
    voip_status: str = ""
    imei: str = ""
    imsi: str = ""
    iccid: str = ""
    sms_login: str = ""
    fields: Fields = field(default=(), repr=False)

    def safe_fields(self) -> Fields:
        return _safe_fields(self.fields)


@frozen
class Receive:
    """`RECEIVE:<recvid>;id:..;password:..;srcnum:..;msg:<text>`: an incoming SMS (part).

    `recvid` is kept as the decimal string the GoIP sent (it may be negative on a GoIP
    whose clock was never set).  `lossy` is True when the datagram was not valid UTF-8
    and undecodable bytes became U+FFFD.
    """

    recvid: str
    goip_id: str
    password: str = field(repr=False)
    srcnum: str = ""
    text: str = field(default="", repr=False)
    lossy: bool = False
    fields: Fields = field(default=(), repr=False)


@frozen
class Deliver:
    """`DELIVER:<recvid>;id:..;password:..;sms_no:..;state:..;num:..`: a delivery report.

    state "0" means received by the handset; other values are unconfirmed.
    """

    recvid: str
    goip_id: str
    password: str = field(repr=False)
    sms_no: str = ""
    state: str = ""
    num: str = ""
    fields: Fields = field(default=(), repr=False)


@frozen
class Notice:
    """Any other `<KIND>:<recvid>;id:..;password:..;...` packet (STATE, RECORD, REMAIN,
    CELLS, EXPIRY, HANGUP, USSN, BCCH, GSM, AT, ...).  `kind` is upper-cased."""

    kind: str
    recvid: str
    goip_id: str
    password: str = field(repr=False)
    fields: Fields = field(default=(), repr=False)

    def get(self, name: str, default: str = "") -> str:
        """The first value of field `name` (any case)."""
        wanted = name.lower()
        for k, v in self.fields[1:]:
            if k.lower() == wanted:
                return v
        return default

    def safe_fields(self) -> Fields:
        return _safe_fields(self.fields)


@frozen
class Answer:
    """Base of the GoIP's answers to server packets; `sendid` names the dialogue."""

    sendid: int


@frozen
class PasswordPrompt(Answer):
    """`PASSWORD <sendid>`: the GoIP took `MSG` and asks for the password."""


@frozen
class SendPrompt(Answer):
    """`SEND <sendid>`: the password was right; numbers may follow."""


@frozen
class SendOk(Answer):
    """`OK <sendid> <telid> [<sms_no>]`: the SMS to number `telid` went out.

    sms_no is what a later DELIVER names; the older document's form has none (None)."""

    telid: int = 0
    sms_no: Optional[str] = None


@frozen
class SendWait(Answer):
    """`WAIT <sendid> <telid>`: still sending; ask again in a few seconds."""

    telid: int = 0


@frozen
class ErrorAnswer(Answer):
    """`ERROR <sendid> <detail>`.  Which step it refuses depends on the dialogue's state:

    to MSG: `<errormsg>` (mostly "too many sessions", try later); to PASSWORD: `PASSWORD`;
    to SEND: `<telid> errorstatus:<n>`; to other commands: an error message.
    """

    detail: str = ""

    @property
    def telid(self) -> Optional[int]:
        m = re.match(r"([0-9]{1,10})\s+errorstatus\s*:\s*(\S*)", self.detail, re.I)
        return int(m.group(1)) if m else None

    @property
    def errorstatus(self) -> Optional[str]:
        m = re.match(r"([0-9]{1,10})\s+errorstatus\s*:\s*(\S*)", self.detail, re.I)
        return m.group(2) if m else None

    @property
    def is_password(self) -> bool:
        return self.detail.strip().upper() == "PASSWORD"


@frozen
class DoneAnswer(Answer):
    """`DONE <sendid>`: the GoIP released the session."""


@frozen
class UssdReply(Answer):
    """`USSD <sendid> <text>`: the network's answer to a USSD request."""

    text: str = ""


@frozen
class UssdFailed(Answer):
    """`USSDERROR <sendid> <message>`."""

    message: str = ""


@frozen
class UssdExited(Answer):
    """`USSDEXIT <sendid>`: the USSD dialogue was closed (by the network or on request)."""


@frozen
class CommandReply(Answer):
    """Any other `<word> <sendid> [...]` (answers to get_gsm_num, CFOK and the like)."""

    command: str = ""
    detail: str = ""


@frozen
class Garbage:
    """A datagram that is not a GoIP packet; `reason` says why, `data` starts it."""

    reason: str
    data: bytes = field(default=b"", repr=False)


Event = Union[Keepalive, Receive, Deliver, Notice, Answer, Garbage]
PeerPacket = (Keepalive, Receive, Deliver, Notice)


# ---------------------------------------------------------------------------------------
# Parsing
# ---------------------------------------------------------------------------------------


def parse_datagram(data: bytes) -> Event:
    """One datagram -> one event.  Never raises: anything unusable is a `Garbage`."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        return Garbage(f"not bytes ({type(data).__name__})")
    raw = bytes(data)
    if len(raw) > MAX_DATAGRAM:
        return Garbage(f"datagram of {len(raw)} bytes (over {MAX_DATAGRAM})", raw[:64])
    # C firmware may pad with NULs; leading blanks are never part of a value.
    body = raw.lstrip(b" \t\r\n\x00").rstrip(b"\x00")
    if not body:
        return Garbage("empty datagram", raw[:64])
    try:
        text = body.decode("utf-8")
        lossy = False
    except UnicodeDecodeError:
        text = body.decode("utf-8", "replace")
        lossy = True
    m = _WORD_HEAD.match(text)
    if m is None:
        return Garbage("not a GoIP packet (no leading name)", raw[:64])
    if m.group(2) == ":":
        return _parse_fields(text, lossy, raw)
    return _parse_answer(text, raw)


def _split_fields(text: str) -> List[Tuple[str, str]]:
    """`a:1;b:;c:x:y;msg:rest` -> pairs; `msg` swallows the rest of the packet."""
    fields: List[Tuple[str, str]] = []
    pos = 0
    end = len(text)
    while pos < end:
        semi = text.find(";", pos)
        segment = text[pos:] if semi < 0 else text[pos:semi]
        name, colon, value = segment.partition(":")
        name = name.strip(" \t\r\n")
        if colon and name.lower() == "msg":
            start = pos + segment.index(":") + 1
            fields.append((name, text[start:]))
            return fields
        if name or colon:
            fields.append((name, value.strip(" \t\r\n")))
        if semi < 0:
            break
        pos = semi + 1
    return fields


def _lookup(fields: Sequence[Tuple[str, str]]) -> Dict[str, str]:
    found: Dict[str, str] = {}
    for name, value in fields[1:]:
        found.setdefault(name.lower(), value)
    return found


def _password(found: Dict[str, str]) -> Optional[str]:
    for name in _PASSWORD_FIELDS:
        if name in found:
            return found[name]
    return None


def _parse_fields(text: str, lossy: bool, raw: bytes) -> Event:
    pairs = _split_fields(text)
    fields: Fields = tuple(pairs)
    kind, first = pairs[0]
    found = _lookup(pairs)
    goip_id = found.get("id")
    password = _password(found)
    lkind = kind.lower()
    if lkind == "req":
        if not _COUNT.match(first):
            return Garbage("keepalive with a count that is not a number", raw[:64])
        if goip_id is None or password is None:
            return Garbage("keepalive without id or pass", raw[:64])
        signal_text = found.get("signal", "")
        return Keepalive(
            count=int(first),
            goip_id=goip_id,
            password=password,
            num=found.get("num", ""),
            signal=int(signal_text) if re.fullmatch(r"-?[0-9]{1,4}", signal_text) else None,
            gsm_status=found.get("gsm_status", ""),
            voip_status=found.get("voip_status", ""),
            imei=found.get("imei", ""),
            imsi=found.get("imsi", ""),
            iccid=found.get("iccid", ""),
            sms_login=found.get("sms_login", ""),
            fields=fields,
        )
    if not _KIND.match(kind):
        return Garbage("packet kind is not a word", raw[:64])
    if not _INT.match(first):
        return Garbage(f"{kind.upper()} packet whose id is not an integer", raw[:64])
    if goip_id is None or password is None:
        return Garbage(f"{kind.upper()} packet without id or password", raw[:64])
    if lkind == "receive":
        if "msg" not in found or "srcnum" not in found:
            return Garbage("RECEIVE packet without srcnum or msg", raw[:64])
        return Receive(
            recvid=first, goip_id=goip_id, password=password, srcnum=found["srcnum"],
            text=found["msg"], lossy=lossy, fields=fields,
        )
    if lkind == "deliver":
        if "sms_no" not in found:
            return Garbage("DELIVER packet without sms_no", raw[:64])
        return Deliver(
            recvid=first, goip_id=goip_id, password=password, sms_no=found["sms_no"],
            state=found.get("state", ""), num=found.get("num", ""), fields=fields,
        )
    return Notice(kind=kind.upper(), recvid=first, goip_id=goip_id, password=password, fields=fields)


def _parse_answer(text: str, raw: bytes) -> Event:
    # Answers may end with the document's "\n"; their free text is not an SMS.
    text = text.rstrip(" \t\r\n")
    parts = text.split(None, 2)
    word = parts[0].upper()
    if len(parts) < 2 or not _SENDID.match(parts[1]):
        return Garbage(f"{word[:16]} answer without a numeric session id", raw[:64])
    sendid = int(parts[1])
    rest = parts[2] if len(parts) > 2 else ""
    args = rest.split()
    if word == "PASSWORD" and not args:
        return PasswordPrompt(sendid)
    if word == "SEND" and not args:
        return SendPrompt(sendid)
    if word == "OK" and len(args) in (1, 2) and _SENDID.match(args[0]):
        return SendOk(sendid, telid=int(args[0]), sms_no=args[1] if len(args) == 2 else None)
    if word == "WAIT" and len(args) == 1 and _SENDID.match(args[0]):
        return SendWait(sendid, telid=int(args[0]))
    if word == "ERROR":
        return ErrorAnswer(sendid, detail=rest)
    if word == "DONE" and not args:
        return DoneAnswer(sendid)
    if word == "USSD":
        return UssdReply(sendid, text=rest)
    if word == "USSDERROR":
        return UssdFailed(sendid, message=rest)
    if word == "USSDEXIT" and not args:
        return UssdExited(sendid)
    if word in ("PASSWORD", "SEND", "OK", "WAIT", "DONE", "USSDEXIT"):
        return Garbage(f"{word} answer with unexpected arguments", raw[:64])
    return CommandReply(sendid, command=parts[0], detail=rest)


def receive_dedupe_key(line: str, recvid: str, srcnum: str, text: str) -> str:
    """A stable key for one incoming SMS: the same for every retransmit of it.

    The GoIP resends a RECEIVE (same recvid, same text) until it is answered.  Whether a
    recvid can come again after the GoIP restarts is unconfirmed (on a GoIP without a
    clock recvids are small counters), so the key also holds a digest of sender and text:
    a reused recvid with another SMS gets another key.
    """
    digest = hashlib.sha256(
        srcnum.encode("utf-8", "surrogatepass") + b"\x00" + text.encode("utf-8", "surrogatepass")
    ).hexdigest()
    return f"goip:{line}:{recvid}:{digest[:24]}"


# ---------------------------------------------------------------------------------------
# Encoding
# ---------------------------------------------------------------------------------------


def check_number(number: str) -> str:
    """The number as it may go into `SEND`; GoIPProtocolError if it could break a packet."""
    if not isinstance(number, str) or not _NUMBER.match(number):
        raise GoIPProtocolError(
            "the destination number must be digits with an optional leading + "
            "(no spaces, letters or line breaks)"
        )
    return number


def check_text(text: str) -> bytes:
    """The SMS text as UTF-8; GoIPProtocolError if it cannot go into `MSG`."""
    if not isinstance(text, str) or text == "":
        raise GoIPProtocolError("the text is empty")
    if "\x00" in text:
        raise GoIPProtocolError("the text contains a NUL character")
    try:
        data = text.encode("utf-8")
    except UnicodeEncodeError:
        raise GoIPProtocolError("the text is not valid Unicode (lone surrogate)") from None
    if len(data) > MAX_TEXT_BYTES:
        raise GoIPProtocolError(
            f"the text is {len(data)} bytes in UTF-8; a GoIP takes at most {MAX_TEXT_BYTES}"
        )
    return data


def text_length(text: str, unit: str = "utf8") -> int:
    """`<length>` of `MSG` in the given unit ("utf8" bytes or "utf16" code units)."""
    if unit == "utf16":
        return len(text.encode("utf-16-le")) // 2
    return len(text.encode("utf-8"))


def _check_sendid(sendid: int) -> int:
    if isinstance(sendid, bool) or not isinstance(sendid, int) or not 0 <= sendid <= MAX_SENDID:
        raise GoIPProtocolError(f"session id must be an integer 0..{MAX_SENDID}")
    return sendid


def _check_recvid(recvid: str) -> str:
    if not isinstance(recvid, str) or not _INT.match(recvid):
        raise GoIPProtocolError("a packet id must be a decimal integer")
    return recvid


def _check_password(password: str) -> str:
    # The password is one word of a space-separated packet.
    if not isinstance(password, str) or not re.fullmatch(r"[\x21-\x7e]{1,64}", password):
        raise GoIPProtocolError("the line password must be 1..64 printable ASCII characters, no spaces")
    return password


def _one_line(text: str, limit: int = 100) -> str:
    cleaned = "".join(ch if ch.isprintable() else " " for ch in text)
    return " ".join(cleaned.split())[:limit]


def keepalive_ack(count: int, dialect: Dialect = DEFAULT_DIALECT) -> bytes:
    """`reg:<count>;status:200;` (the form is the dialect's)."""
    if isinstance(count, bool) or not isinstance(count, int) or count < 0:
        raise GoIPProtocolError("keepalive count must be a non-negative integer")
    return f"{dialect.ack_prefix}:{count};status:{dialect.ack_status};".encode("ascii")


def receive_ack(recvid: str, dialect: Dialect = DEFAULT_DIALECT) -> bytes:
    """`RECEIVE <recvid> OK`: the SMS is stored."""
    return notice_ack("RECEIVE", recvid, dialect)


def receive_error(recvid: str, reason: str, dialect: Dialect = DEFAULT_DIALECT) -> bytes:
    """`RECEIVE <recvid> ERROR <reason>` (the reason made one short printable line)."""
    reason = _one_line(reason) or "error"
    return f"RECEIVE {_check_recvid(recvid)} ERROR {reason}{dialect.line_end}".encode("utf-8")


def deliver_ack(recvid: str, dialect: Dialect = DEFAULT_DIALECT) -> bytes:
    """`DELIVER <recvid> OK`: the report is recorded."""
    return notice_ack("DELIVER", recvid, dialect)


def notice_ack(kind: str, recvid: str, dialect: Dialect = DEFAULT_DIALECT) -> bytes:
    """`<KIND> <recvid> OK`."""
    if not isinstance(kind, str) or not _KIND.match(kind):
        raise GoIPProtocolError("packet kind must be a word")
    return f"{kind.upper()} {_check_recvid(recvid)} OK{dialect.line_end}".encode("ascii")


def msg_packet(sendid: int, text: str, dialect: Dialect = DEFAULT_DIALECT) -> bytes:
    """`MSG <sendid> <length> <text>`: opens a send session.

    The text is length-prefixed, so line breaks inside it are kept as they are.
    """
    data = check_text(text)
    length = text_length(text, dialect.length_unit)
    head = f"MSG {_check_sendid(sendid)} {length} ".encode("ascii")
    return head + data + dialect.line_end.encode("ascii")


def password_packet(sendid: int, password: str, dialect: Dialect = DEFAULT_DIALECT) -> bytes:
    """`PASSWORD <sendid> <password>`."""
    return (
        f"PASSWORD {_check_sendid(sendid)} {_check_password(password)}{dialect.line_end}"
    ).encode("ascii")


def send_packet(sendid: int, telid: int, number: str, dialect: Dialect = DEFAULT_DIALECT) -> bytes:
    """`SEND <sendid> <telid> <number>`: send (or ask how sending to) number `telid` goes."""
    _check_sendid(sendid)
    if isinstance(telid, bool) or not isinstance(telid, int) or not 0 <= telid <= MAX_SENDID:
        raise GoIPProtocolError("telid must be a non-negative integer")
    return f"SEND {sendid} {telid} {check_number(number)}{dialect.line_end}".encode("ascii")


def done_packet(sendid: int, dialect: Dialect = DEFAULT_DIALECT) -> bytes:
    """`DONE <sendid>`: ends a send session."""
    return f"DONE {_check_sendid(sendid)}{dialect.line_end}".encode("ascii")


def check_ussd_code(code: str) -> str:
    if not isinstance(code, str) or not _USSD_CODE.match(code):
        raise GoIPProtocolError(f"a USSD code is 1..{MAX_USSD_CODE} of 0-9 * # +")
    return code


def ussd_packet(sendid: int, password: str, code: str, dialect: Dialect = DEFAULT_DIALECT) -> bytes:
    """`USSD <sendid> <password> <code>` (document section 6)."""
    return (
        f"USSD {_check_sendid(sendid)} {_check_password(password)} {check_ussd_code(code)}"
        f"{dialect.line_end}"
    ).encode("ascii")


def ussd_exit_packet(sendid: int, password: str, dialect: Dialect = DEFAULT_DIALECT) -> bytes:
    """`USSDEXIT <sendid> <password>`: closes an open USSD dialogue."""
    return (
        f"USSDEXIT {_check_sendid(sendid)} {_check_password(password)}{dialect.line_end}"
    ).encode("ascii")


# ---------------------------------------------------------------------------------------
# The send dialogue
# ---------------------------------------------------------------------------------------

NEW = "new"
AWAIT_PASSWORD_PROMPT = "msg-sent"  # MSG sent, waiting for `PASSWORD <sendid>`
AWAIT_SEND_PROMPT = "password-sent"  # PASSWORD sent, waiting for `SEND <sendid>`
SENDING = "sending"  # SEND sent, waiting for OK / ERROR (WAIT keeps us here)
CLOSING = "closing"  # DONE sent, waiting for `DONE <sendid>`
FINISHED = "finished"


class SendSession:
    """One SMS to one number over one MSG / PASSWORD / SEND / DONE dialogue.

    Drive it with `start(now)`, `receive(event, now)` for every answer carrying its
    sendid, and `tick(now)` whenever `now >= next_timer`; each returns the packets to send
    (to the line's keepalive address), in order.  `outcome` is set as soon as the result
    is known; `finished` once nothing more will be sent (DONE answered or given up).

    Timing (all seconds, from the document unless said):
    * resend_interval: MSG, PASSWORD and SEND are repeated after this much silence, and
      SEND after each WAIT.  The GoIP keeps the state of the last 10 numbers of a
      session, so a repeated SEND (same telid) never sends the SMS twice; a new MSG
      session would.
    * answer_timeout (websmsd's choice): no answer at all to MSG/PASSWORD for this long
      means the line is not listening; the SMS was not sent.
    * deadline: the GoIP drops a session 90 s after its MSG.  Reached while SENDING,
      the SMS may or may not have gone out (`maybe_sent`).
    * DONE is repeated `done_retries` times on silence, then the session just ends.
    """

    def __init__(
        self,
        sendid: int,
        password: str,
        number: str,
        text: str,
        *,
        dialect: Dialect = DEFAULT_DIALECT,
        telid: int = 1,
        resend_interval: float = 3.0,
        answer_timeout: float = 15.0,
        deadline: float = 90.0,
        done_retries: int = 2,
    ) -> None:
        # Encoding everything now refuses a bad number or text before anything is sent.
        self.sendid = sendid
        self.telid = telid
        self._msg = msg_packet(sendid, text, dialect)
        self._password = password_packet(sendid, password, dialect)
        self._send = send_packet(sendid, telid, number, dialect)
        self._done = done_packet(sendid, dialect)
        self.resend_interval = resend_interval
        self.answer_timeout = answer_timeout
        self.deadline = deadline
        self.done_retries = done_retries
        self.state = NEW
        self.outcome: Optional[SendOutcome] = None
        self.started: Optional[float] = None
        self.send_count = 0  # SEND packets sent (1 + repeats)
        self.waits = 0  # WAIT answers seen
        self._heard: Optional[float] = None  # last answer of this session, or start
        self._next: Optional[float] = None
        self._dones_left = done_retries

    @property
    def finished(self) -> bool:
        return self.state == FINISHED

    @property
    def next_timer(self) -> Optional[float]:
        """When `tick` must be called next (absolute time), None when finished."""
        return None if self.state in (NEW, FINISHED) else self._next

    def start(self, now: float) -> List[bytes]:
        if self.state != NEW:
            return []
        self.started = self._heard = now
        self.state = AWAIT_PASSWORD_PROMPT
        self._schedule(now)
        return [self._msg]

    def _fail(self, now: float, reason: str, *, down: bool = False, maybe_sent: bool = False,
              auth_failed: bool = False, close: bool = True) -> List[bytes]:
        self.outcome = SendOutcome(
            False, permanent=False, reason=reason, down=down, maybe_sent=maybe_sent,
            auth_failed=auth_failed,
        )
        if not close:
            self.state = FINISHED
            return []
        return self._close(now)

    def _close(self, now: float) -> List[bytes]:
        self.state = CLOSING
        self._dones_left = self.done_retries
        self._next = now + self.resend_interval
        return [self._done]

    def receive(self, event: Event, now: float) -> List[bytes]:
        if not isinstance(event, Answer) or event.sendid != self.sendid:
            return []
        if self.state in (NEW, FINISHED):
            return []
        self._heard = now
        state = self.state
        if state == AWAIT_PASSWORD_PROMPT:
            if isinstance(event, PasswordPrompt):
                self.state = AWAIT_SEND_PROMPT
                self._schedule(now)
                return [self._password]
            if isinstance(event, SendPrompt):
                # No password asked (not in the document, harmless): go on.
                return self._start_sending(now)
            if isinstance(event, ErrorAnswer):
                # The document: mostly too many sessions (at most 5); stop and retry later.
                return self._fail(
                    now,
                    f"line busy: the GoIP refused a new session ({_one_line(event.detail)}); "
                    "retry later",
                    close=False,
                )
            return []
        if state == AWAIT_SEND_PROMPT:
            if isinstance(event, SendPrompt):
                return self._start_sending(now)
            if isinstance(event, PasswordPrompt):
                # Our MSG was repeated and the GoIP asks again: answer again.
                return [self._password]
            if isinstance(event, ErrorAnswer):
                if event.is_password:
                    return self._fail(
                        now,
                        "the GoIP line refused websmsd's password (check goip_password)",
                        down=True, auth_failed=True,
                    )
                return self._fail(
                    now, f"the GoIP refused the session ({_one_line(event.detail)}); retry later"
                )
            return []
        if state == SENDING:
            if isinstance(event, SendOk) and event.telid == self.telid:
                self.outcome = SendOutcome(True, reason="sent", provider_id=event.sms_no)
                return self._close(now)
            if isinstance(event, SendWait) and event.telid == self.telid:
                self.waits += 1
                self._schedule(now)
                return []
            if isinstance(event, ErrorAnswer):
                if event.telid == self.telid:
                    return self._fail(
                        now, f"the GoIP could not send the SMS (errorstatus:{event.errorstatus})"
                    )
                if event.telid is None:
                    # Not the documented form: the session may have been lost after the
                    # SMS went out.
                    return self._fail(
                        now,
                        f"the GoIP ended the session while sending ({_one_line(event.detail)}); "
                        "the SMS may have been sent",
                        maybe_sent=True,
                    )
            return []
        if state == CLOSING:
            if isinstance(event, DoneAnswer):
                self.state = FINISHED
                self._next = None
            return []
        return []

    def _start_sending(self, now: float) -> List[bytes]:
        self.state = SENDING
        self.send_count += 1
        self._schedule(now)
        return [self._send]

    def _schedule(self, now: float) -> None:
        # The next repeat, but never past the deadline or the silence limit.
        assert self.started is not None and self._heard is not None
        wake = min(now + self.resend_interval, self.started + self.deadline)
        if self.state in (AWAIT_PASSWORD_PROMPT, AWAIT_SEND_PROMPT):
            wake = min(wake, self._heard + self.answer_timeout)
        self._next = wake

    def tick(self, now: float) -> List[bytes]:
        if self._next is None or now < self._next or self.state in (NEW, FINISHED):
            return []
        assert self.started is not None and self._heard is not None
        state = self.state
        if state == CLOSING:
            if self._dones_left <= 0:
                self.state = FINISHED
                self._next = None
                return []
            self._dones_left -= 1
            self._next = now + self.resend_interval
            return [self._done]
        if now >= self.started + self.deadline:
            if state == SENDING:
                return self._fail(
                    now,
                    f"no final answer from the GoIP within {self.deadline:g} s after the SMS "
                    "was handed over; the SMS may have been sent",
                    maybe_sent=True,
                )
            return self._fail(now, f"the GoIP line did not finish the dialogue within {self.deadline:g} s",
                              down=True)
        if state in (AWAIT_PASSWORD_PROMPT, AWAIT_SEND_PROMPT) and now >= self._heard + self.answer_timeout:
            return self._fail(
                now,
                f"no answer from the GoIP line within {self.answer_timeout:g} s (line down?)",
                down=True,
            )
        self._schedule(now)
        if state == AWAIT_PASSWORD_PROMPT:
            return [self._msg]
        if state == AWAIT_SEND_PROMPT:
            return [self._password]
        self.send_count += 1
        return [self._send]

    def abort(self, now: float, reason: str) -> List[bytes]:
        """Give up now (cancelled, shutting down); DONE is returned if a session is open."""
        if self.state in (NEW, FINISHED):
            if self.outcome is None:
                self.outcome = SendOutcome(False, reason=reason)
            self.state = FINISHED
            return []
        if self.outcome is None:
            sending = self.state == SENDING
            self.outcome = SendOutcome(
                False,
                reason=reason + ("; the SMS may have been sent" if sending else ""),
                maybe_sent=sending,
            )
        self.state = FINISHED
        self._next = None
        return [self._done]


# ---------------------------------------------------------------------------------------
# USSD
# ---------------------------------------------------------------------------------------


class UssdSession:
    """One USSD request: `USSD <sendid> <password> <code>` -> `USSD <sendid> <text>`.

    The document asks the server to resend once after 10 s without an answer.  A USSD
    code can move money (the document's own example is a transfer), and the network's
    answer can take longer than 10 s, so the resend is off unless `resend_after` is set.
    Done when `result` (the answer text) or `error` is set.
    """

    def __init__(
        self,
        sendid: int,
        password: str,
        code: str,
        *,
        dialect: Dialect = DEFAULT_DIALECT,
        timeout: float = 60.0,
        resend_after: Optional[float] = None,
    ) -> None:
        self.sendid = sendid
        self._packet = ussd_packet(sendid, password, code, dialect)
        self.timeout = timeout
        self.resend_after = resend_after
        self.result: Optional[str] = None
        self.error: Optional[str] = None
        self.started: Optional[float] = None
        self._resent = False

    @property
    def finished(self) -> bool:
        return self.result is not None or self.error is not None

    @property
    def next_timer(self) -> Optional[float]:
        if self.finished or self.started is None:
            return None
        end = self.started + self.timeout
        if self.resend_after is not None and not self._resent:
            return min(end, self.started + self.resend_after)
        return end

    def start(self, now: float) -> List[bytes]:
        if self.started is not None:
            return []
        self.started = now
        return [self._packet]

    def receive(self, event: Event, now: float) -> List[bytes]:
        if self.finished or self.started is None:
            return []
        if not isinstance(event, Answer) or event.sendid != self.sendid:
            return []
        if isinstance(event, UssdReply):
            self.result = event.text
        elif isinstance(event, UssdFailed):
            self.error = f"USSD failed: {_one_line(event.message, 200) or 'no reason given'}"
        elif isinstance(event, UssdExited):
            self.error = "the USSD dialogue ended without an answer"
        elif isinstance(event, ErrorAnswer):
            detail = _one_line(event.detail, 200)
            if event.is_password:
                self.error = "the GoIP line refused websmsd's password (check goip_password)"
            else:
                self.error = f"the GoIP refused the USSD request ({detail or 'no reason given'})"
        return []

    def tick(self, now: float) -> List[bytes]:
        if self.finished or self.started is None:
            return []
        if now >= self.started + self.timeout:
            self.error = f"no USSD answer within {self.timeout:g} s"
            return []
        if self.resend_after is not None and not self._resent and now >= self.started + self.resend_after:
            self._resent = True
            return [self._packet]
        return []

    def abort(self, reason: str) -> None:
        if not self.finished:
            self.error = reason
