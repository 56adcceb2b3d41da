"""What websmsd knows about one phone, and what the status page says about it.  Pure.

A phone that calls websmsd (SMSsync, the SMS Gateway app) is *silent* once it has made
no request for three of its poll intervals: its route is then down (messages wait, or
go on to a fallback route) until its next request.  A phone that websmsd polls (SMS
Gateway for Android) is *down* from the first poll that got no answer until one does.

Also here: the app and version a request's User-Agent names, and the sender of an
inbound SMS made safe for a call file.
"""

from __future__ import annotations

import contextlib
import re
from dataclasses import dataclass, field
from typing import Dict, Optional, Tuple, Union

from websmsd.text import local_time
from websmsd.channel import ChannelState
from websmsd.message import UnsafeValue, check_sender

from .answer import one_line

SILENT_AFTER = 3  # poll intervals without a request


def clock(t: Optional[float]) -> str:
    return "never" if t is None else local_time(t)


# --------------------------------------------------------------------------------------
# User-Agent
# --------------------------------------------------------------------------------------

_PRODUCT = re.compile(r"([A-Za-z][A-Za-z0-9._-]{0,63})/v?([0-9][A-Za-z0-9._+-]{0,31})")
# Tokens that name the platform, not the app.
_PLATFORM = {"dalvik", "mozilla", "okhttp", "java", "linux", "android"}


def parse_user_agent(value: Union[bytes, str, None]) -> Tuple[Optional[str], Optional[str]]:
    """(app, version) from a User-Agent, or (None, None).

    SMSsync sends ``SMSSync-Android/v3.1.1``; the SMS Gateway app ``Dalvik/2.1.0 (Linux;
    ...) medic.gateway.alert.generic/1.8.0``: the last product token that is not the
    platform's, outside parentheses."""
    if value is None:
        return None, None
    if isinstance(value, (bytes, bytearray)):
        value = bytes(value[:512]).decode("latin-1")
    value = re.sub(r"\([^)]*\)", " ", value[:512])
    found = [(m.group(1), m.group(2)) for m in _PRODUCT.finditer(value)]
    apps = [f for f in found if f[0].lower() not in _PLATFORM]
    if apps:
        return apps[-1]
    return found[0] if found else (None, None)


# --------------------------------------------------------------------------------------
# Senders
# --------------------------------------------------------------------------------------

_UNSAFE = re.compile(r"[^A-Za-z0-9.*_\-+ ]")


def safe_sender(raw: str) -> str:
    """The sender of an inbound SMS as it may go into a call file.

    A number or an alphanumeric sender id passes as it is; anything else has each
    character a call file could not carry replaced by ``_`` (an SMS is never refused for
    its sender: the SMS Gateway app would send the whole poll again forever).  An empty
    sender (Android can give none) becomes ``unknown``."""
    with contextlib.suppress(UnsafeValue):
        return check_sender(raw)
    text = re.sub(r" +", " ", _UNSAFE.sub("_", raw or "")).strip()
    plus = "+" if text.startswith("+") else ""
    # A sender begins with a letter or a digit (after an optional +).
    text = (plus + re.sub(r"^[^A-Za-z0-9]+", "", text))[:64].rstrip()
    try:
        return check_sender(text)
    except UnsafeValue:
        return "unknown"


# --------------------------------------------------------------------------------------
# Presence
# --------------------------------------------------------------------------------------


@dataclass
class PhonePresence:
    """One phone's contact with websmsd, its app, and the last result of a message.

    `poll`: seconds between the phone's requests (or websmsd's polls of it).
    `started`: when websmsd started (epoch seconds): a phone with no request since then
    is silent three poll intervals later."""

    route: str
    name: str
    kind: str
    poll: float
    started: float
    last_contact: Optional[float] = None
    last_poll: Optional[float] = None
    app: Optional[str] = None
    version: Optional[str] = None
    silent: bool = False
    # websmsd polls the phone: when its polls began to fail, and why.
    unreachable_since: Optional[float] = None
    trouble: Optional[str] = None
    trouble_since: Optional[float] = None
    last_result: Optional[str] = None
    last_result_at: Optional[float] = None
    counters: Dict[str, int] = field(default_factory=dict)
    up_since: Optional[float] = None  # when it last came up (first contact, or back)

    # -- the phone calls websmsd -------------------------------------------------------

    def contact(self, now: float, user_agent: Union[bytes, str, None] = None,
                poll: bool = False) -> bool:
        """A request from the phone.  True when it was silent until now."""
        if self.last_contact is None or self.silent:
            self.up_since = now
        self.last_contact = now
        if poll:
            self.last_poll = now
        app, version = parse_user_agent(user_agent)
        if app is not None:
            self.app, self.version = one_line(app, 64), one_line(version or "", 32) or None
        back = self.silent
        self.silent = False
        return back

    def deadline(self) -> float:
        """When the phone counts as silent unless it makes a request before."""
        return (self.last_contact if self.last_contact is not None else self.started) \
            + SILENT_AFTER * self.poll

    def check_silent(self, now: float) -> bool:
        """True when the phone has just become silent (at `now`)."""
        if self.silent or now < self.deadline():
            return False
        self.silent = True
        return True

    def silence_reason(self) -> str:
        if self.last_contact is None:
            return f"phone silent since websmsd started ({clock(self.started)}): no request yet"
        return f"phone silent since {clock(self.last_contact)}"

    # -- websmsd polls the phone -------------------------------------------------------

    def reached(self, now: float, poll: bool = True) -> bool:
        """A poll (or a send) got its answers.  True when the phone was unreachable until
        now."""
        back = self.unreachable_since is not None
        if self.last_contact is None or back:
            self.up_since = now
        self.last_contact = now
        if poll:
            self.last_poll = now
        if back:
            self.trouble = self.trouble_since = None
        self.unreachable_since = None
        return back

    def untroubled(self) -> None:
        """Everything of a poll went as it should."""
        self.trouble = self.trouble_since = None

    def unreachable(self, now: float, reason: str) -> bool:
        """A poll got no answer.  True when the phone was reachable until now."""
        first = self.unreachable_since is None
        if first:
            self.unreachable_since = now
        self.trouble = one_line(reason, 200)
        return first

    def troubled(self, now: float, reason: str) -> None:
        """The phone answered, but not as it should (a poll step failed)."""
        if self.trouble is None:
            self.trouble_since = now
        self.trouble = one_line(reason, 200)

    # -- results -----------------------------------------------------------------------

    def result(self, now: float, text: str) -> None:
        self.last_result, self.last_result_at = one_line(text, 200), now

    def count(self, what: str, n: int = 1) -> None:
        self.counters[what] = self.counters.get(what, 0) + n

    # -- the status row ----------------------------------------------------------------

    @property
    def state(self) -> str:
        if self.silent:
            return "silent"
        if self.unreachable_since is not None:
            return "down"
        if self.trouble is not None:
            return "failing"
        return "up" if self.last_contact is not None else "idle"

    def row(self, now: float, waiting: Optional[int] = None,
            info: Optional[dict] = None) -> ChannelState:
        state = self.state
        bits = []
        if state == "silent":
            bits.append(self.silence_reason())
            since = self.last_contact if self.last_contact is not None else self.started
        elif state == "down":
            bits.append(f"no answer since {clock(self.unreachable_since)}: {self.trouble}")
            since = self.unreachable_since
        elif state == "idle":
            bits.append(f"no request since websmsd started ({clock(self.started)})")
            since = self.started
        elif state == "failing":
            since = self.trouble_since
        else:
            since = self.up_since
        if self.trouble is not None and state == "failing":
            bits.append(f"failing since {clock(self.trouble_since)}: {self.trouble}")
        if self.last_poll is not None:
            bits.append(f"last poll {clock(self.last_poll)}")
        elif self.last_contact is not None:
            bits.append(f"last contact {clock(self.last_contact)}")
        if self.app:
            bits.append(f"{self.app} {self.version}" if self.version else self.app)
        if waiting is not None:
            bits.append(f"{waiting} waiting")
        if self.last_result is not None:
            bits.append(f"last result {clock(self.last_result_at)}: {self.last_result}")
        facts = {
            "route": self.route, "interface": self.name, "poll": self.poll,
            "up_since": self.up_since,
            "last_contact": self.last_contact, "last_poll": self.last_poll,
            "app": self.app, "version": self.version, "waiting": waiting,
            "silent_after": SILENT_AFTER * self.poll,
            "unreachable_since": self.unreachable_since, "trouble": self.trouble,
            "last_result": self.last_result, "last_result_at": self.last_result_at,
            "counters": dict(self.counters),
        }
        facts.update(info or {})
        return ChannelState(self.name or "(default)", state, since, "; ".join(bits), self.kind,
                            facts)
