"""Between websmsd's messages and the TG's commands and events.  Pure (no Twisted).

* `pieces`: an outbound text cut into the pieces that go out as one `gsm send sms` each;
* `send_ident` / `parse_ident`: the id put in a send command (our message id, the attempt
  and the piece), which comes back in its UpdateSMSSend;
* `inbound_fields`: what a received SMS becomes in the store (text, sender, dedupe key).
"""

from __future__ import annotations

import contextlib
import hashlib
import re
from typing import List, NamedTuple, Optional

from websmsd.ami.protocol import MAX_ACTION_LINE
from websmsd.message import UnsafeValue, check_sender
from websmsd.yeastar.tg import MAX_TEXT_BYTES, ReceivedSMS

# ---------------------------------------------------------------------------------------
# Outbound: pieces

# The longest id `send_ident` makes: 20 hex digits, then attempt, piece and count.
IDENT_MAX = 40
# Characters `tg.encode_text` leaves as they are; every other UTF-8 byte becomes %XX.
_UNRESERVED = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.~")
# How far back from a piece's end a blank may be, to cut there rather than mid-word.
_WORD_BACK = 0.25


def encoded_budget(span: int, number: str) -> int:
    """How many characters of percent-encoded text one send command can carry.

    The command travels as one AMI header line, `Command: gsm send sms <span> <number>
    "<text>" <id>`, and an AMI line is at most MAX_ACTION_LINE bytes with its CRLF
    (Asterisk reads a longer one as garbage and runs nothing; the TG's manager is an
    Asterisk 1.x one, and websmsd's AMI encoder refuses such a line anyway).  Yeastar's
    "1024 bytes before encoding" would give lines three times that long for Cyrillic.
    """
    head = len(f'Command: gsm send sms {span} {number} "" '.encode("utf-8"))
    return MAX_ACTION_LINE - head - IDENT_MAX - 2


def _cost(ch: str) -> int:
    return 1 if ch in _UNRESERVED else 3 * len(ch.encode("utf-8", "surrogatepass"))


def pieces(text: str, max_encoded: int, max_bytes: int = MAX_TEXT_BYTES) -> List[str]:
    """`text` cut into pieces of at most `max_bytes` UTF-8 bytes and `max_encoded`
    percent-encoded characters each, at a blank near the end of a piece where there is
    one (else between two characters, never inside one).  "".join(pieces) == text.
    A text that fits is one piece; an empty text is no piece."""
    if max_encoded < 12 or max_bytes < 4:
        raise ValueError("a piece must hold at least one character")
    out: List[str] = []
    start = 0
    n = len(text)
    while start < n:
        enc = size = 0
        end = start
        while end < n:
            ch = text[end]
            c, b = _cost(ch), len(ch.encode("utf-8", "surrogatepass"))
            if enc + c > max_encoded or size + b > max_bytes:
                break
            enc, size, end = enc + c, size + b, end + 1
        if end < n:
            # Cut after the last blank of the piece's tail, if any, so words stay whole.
            floor = start + int((end - start) * (1 - _WORD_BACK))
            blank = max(text.rfind(" ", floor, end), text.rfind("\n", floor, end))
            if blank >= start:
                end = blank + 1
        out.append(text[start:end])
        start = end
    return out


class Ident(NamedTuple):
    message_id: str
    attempt: int
    piece: int  # 1-based
    count: int  # pieces in all


def send_ident(message_id: str, attempt: int, piece: int, count: int) -> str:
    """The id of one send: `<our message id>-<attempt>-<piece>-<pieces>`.  It names our
    message in the TG's own log, and lets a late UpdateSMSSend still count."""
    ident = f"{message_id}-{attempt}-{piece}-{count}"
    if len(ident) > IDENT_MAX or not re.fullmatch(r"[A-Za-z0-9]+-[0-9]+-[0-9]+-[0-9]+", ident):
        raise ValueError(f"cannot make a send id of message {message_id!r}")
    return ident


_IDENT = re.compile(r"([0-9a-f]{20})-([0-9]{1,6})-([0-9]{1,3})-([0-9]{1,3})")


def parse_ident(ident: Optional[str]) -> Optional[Ident]:
    """The parts of an id `send_ident` made; None for any other (another client's)."""
    m = _IDENT.fullmatch(ident or "")
    if m is None:
        return None
    return Ident(m.group(1), int(m.group(2)), int(m.group(3)), int(m.group(4)))


# ---------------------------------------------------------------------------------------
# Inbound


class Inbound(NamedTuple):
    body: str
    sender: str
    provider_id: str  # where and when the TG got it, for people (never searched)
    dedupe_key: str


_SENDER_CHAR = re.compile(r"[^A-Za-z0-9.*_\-+ ]")


def safe_sender(sender: str) -> str:
    """The sender as a call file may carry it: as written when it is a number or a plain
    sender id ("Orange", "My Bank"), else with the other characters as `_`."""
    with contextlib.suppress(UnsafeValue):
        return check_sender(sender)
    cleaned = " ".join(_SENDER_CHAR.sub("_", sender).split())[:64]
    cleaned = cleaned.lstrip("+").lstrip(".*_-") or "unknown"
    try:
        return check_sender(cleaned)
    except UnsafeValue:
        return "unknown"


def incomplete_note(sms: ReceivedSMS) -> str:
    missing = ", ".join(str(i) for i in sms.missing)
    what = "part" if len(sms.missing) == 1 else "parts"
    return f"[incomplete SMS: {what} {missing} of {sms.total} never arrived]"


def inbound_fields(sms: ReceivedSMS, route: str, host: str) -> Inbound:
    """A received SMS as it is stored.

    The dedupe key: an event seen twice (one TG reached twice, a replayed part) is stored
    once.  Single-part messages carry no ID (`ID: ` empty) and the multi-part ID is a
    counter that comes round again, so (span, sender, ID, parts) alone would merge
    different messages: the device's Recvtime and the text are part of the key too.
    """
    body = sms.text
    if not sms.complete:
        body = f"{body}\n{incomplete_note(sms)}" if body else incomplete_note(sms)
    material = "\x1f".join([host.lower(), str(sms.span), sms.sender, sms.ident, str(sms.total),
                            ",".join(map(str, sms.received)), sms.recvtime, sms.text])
    digest = hashlib.sha256(material.encode("utf-8", "surrogatepass")).hexdigest()[:32]
    when = f" at {sms.recvtime} (TG clock)" if sms.recvtime else ""
    ident = f" id {sms.ident}" if sms.ident else ""
    return Inbound(body, safe_sender(sms.sender), f"span {sms.span}{ident}{when}",
                   f"{route}:{digest}")
