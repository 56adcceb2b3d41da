"""The message every channel hands to the store, and its lifecycle."""

from __future__ import annotations

import itertools
import os
import re
import time
import urllib.parse
from dataclasses import dataclass, field
from typing import NamedTuple, Optional, Tuple

from websmsd.text import shown

# Directions
IN = "in"  # towards the PBX (ITSP webhook -> Asterisk)
OUT = "out"  # from the PBX (FastAGI / websms CLI -> ITSP)

# Lifecycle: received -> queued -> sending -> sent -> delivered, or -> failed (+ reason).
RECEIVED = "received"
QUEUED = "queued"
SENDING = "sending"
SENT = "sent"
DELIVERED = "delivered"
FAILED = "failed"
CANCELLED = "cancelled"

STATUSES = (RECEIVED, QUEUED, SENDING, SENT, DELIVERED, FAILED, CANCELLED)
FINAL = frozenset({SENT, DELIVERED, FAILED, CANCELLED})


# The id's tail: a counter from a random start.  Unique within a process (2**32 ids per
# millisecond), and across processes and restarts by the random start; cheaper than
# os.urandom per id, a syscall that gives up the GIL on the hot path of every webhook.
_tail = itertools.count(int.from_bytes(os.urandom(4), "big"))


def new_id(now: Optional[float] = None) -> str:
    """A message id: sortable by creation time, unique without coordination.

    12 hex digits of milliseconds since the epoch, then 8 hex digits; safe in a
    file name, a SQL literal, an AGI reply and a URL.
    """
    ms = int((time.time() if now is None else now) * 1000)
    return f"{ms:012x}{next(_tail) & 0xFFFFFFFF:08x}"


@dataclass
class Message:
    direction: str
    # The interface that carries it (websmsd.channel: "itsp:api-1", "callfile",
    # "goip:sim1"...), and where it came from ("webhook:tw", "agi", "cli", "api",
    # "goip:sim1"...).
    route: str
    recipient: str
    sender: str
    body: str
    id: str = field(default_factory=new_id)
    status: str = QUEUED
    source: str = ""
    reason: Optional[str] = None  # why it failed, or the last attempt's error
    attempts: int = 0
    created: float = field(default_factory=time.time)
    updated: float = 0.0
    next_attempt: float = 0.0
    # The peer's id of this message (an ITSP's message id), and the key that makes a
    # resent copy of it recognisable; None when the peer gives none.
    provider_id: Optional[str] = None
    dedupe_key: Optional[str] = None
    # How many parts of it have been handed over (long inbound texts are split into
    # several call files, handed over one at a time).
    progress: int = 0
    # The routes to try next, in order, when this one fails it for good or is down.
    fallback: Tuple[str, ...] = ()


class UnsafeValue(ValueError):
    """A value that must not reach a call file, an AGI reply or a dial string."""


# A recipient becomes `Channel: Local/<to>@<context>`, `Extension: <to>` and a
# `setvar:` line: a number, or a SIP user made of the characters every dialplan and
# the call-file parser take literally.  Nothing that could end a line (CR, LF), start a
# comment (`;`, `#`), change the channel (`@`, `/`, `&`) or quote (`"`, `<`, `>`).
_RECIPIENT = re.compile(r"\+?[A-Za-z0-9][A-Za-z0-9.*_\-+]{0,63}")
# A sender may also be an alphanumeric sender id such as "My Bank" (GSM allows 11
# characters with spaces): single inner spaces are allowed, nothing else more.
_SENDER = re.compile(r"\+?[A-Za-z0-9][A-Za-z0-9.*_\-+]*(?: [A-Za-z0-9.*_\-+]+)*")


def check_recipient(value: str) -> str:
    """Return `value` if it is a plausible number or SIP user to deliver to, else raise."""
    if not isinstance(value, str) or not _RECIPIENT.fullmatch(value):
        raise UnsafeValue(f"recipient {shown(value)} is not a number or SIP user")
    return value


def check_sender(value: str) -> str:
    """Return `value` if it is a plausible sender number or alphanumeric id, else raise."""
    if not isinstance(value, str) or len(value) > 64 or not _SENDER.fullmatch(value):
        raise UnsafeValue(f"sender {shown(value)} is not a number, SIP user or sender id")
    return value




class SipAddress(NamedTuple):
    display: str
    user: str
    host: str


# `"Alice" <sip:alice@192.0.2.10>`, `Smith, Alice <sip:alice@127.0.0.1:5060;transport=udp>`
# (AGI() drops the quotes and keeps the comma), `<sip:+15551234@host>`, `sip:201@host`.
_SIP_URI = re.compile(r"sips?:(?:(?P<user>[^@;>\s]+)@)?(?P<host>[^;>?\s]+)\S*\Z", re.I)


def parse_sip_address(text: str) -> Optional[SipAddress]:
    """The parts of a SIP name-addr or URI as Asterisk's MESSAGE(from) gives it; None when
    `text` is no SIP address (a plain number or sender id).  The address is taken from
    the last `<`, so a display name with commas or `<` of its own cannot hide it."""
    if "sip" not in text.lower():
        return None
    head, bracket, tail = text.rpartition("<")
    if bracket:
        tail = tail.rstrip()
        if not tail.endswith(">"):
            return None
        uri, display = tail[:-1], head.strip().strip('"').strip()
    else:
        uri, display = text.strip(), ""
    u = _SIP_URI.match(uri)
    if u is None or not u.group("user"):
        return None
    return SipAddress(display, urllib.parse.unquote(u.group("user")), u.group("host"))
