"""Delivery notices: the phone that wrote an SMS learns what became of it.  Pure Python.

When an outbound SMS written on a PBX phone (source `agi:<endpoint>`) is delivered (a
delivery report from the ITSP, an SMPP receipt, an SMS Gateway DELIVERED...) or fails for
good, the endpoint gets a short SIP MESSAGE from the number it wrote to, so that it
shows in the same conversation: `✓ delivered 12:03` or `✗ not sent: <reason>`, as its
[phones] `notify` asks (none, failed, all).

Promises:
- only to the endpoint that wrote the SMS, over its own route (`ami:<endpoint>`): never
  to a number outside the PBX;
- never for a notice (a notice is an inbound message: nothing reports on it);
- at most one per message and state: the notice's dedupe key is
  `notice:<message id>:<status>`, so a report repeated, or arriving after a restart,
  adds nothing.
"""

from __future__ import annotations

import time
from typing import Any, Callable, Optional

from websmsd.channel import route_name
from websmsd.message import DELIVERED, FAILED, IN, OUT, Message, UnsafeValue, check_sender
from websmsd.text import one_line

__all__ = ["SOURCE", "notice_for", "notice_text", "endpoint_of"]

SOURCE = "notice"
KIND = "ami"
MAX_REASON = 120  # characters of the reason: a notice is a glance, not a log


def endpoint_of(source: str) -> Optional[str]:
    """The endpoint of an SMS written on a PBX phone (`agi:john.doe`), else None."""
    kind, _, endpoint = source.partition(":")
    return endpoint if kind == "agi" and endpoint else None


def notice_text(status: str, reason: Optional[str], when: float,
                clock: Callable[[float], Any] = time.localtime) -> str:
    if status == DELIVERED:
        return f"\u2713 delivered {time.strftime('%H:%M', clock(when))}"
    why = one_line(reason or "no reason given", MAX_REASON)
    return f"\u2717 not sent: {why}"


def notice_for(message: Message, phones: Any, now: float,
               clock: Callable[[float], Any] = time.localtime) -> Optional[Message]:
    """The notice `message` (just delivered or failed) earns, or None.

    `phones`: websmsd.config.phones.PhonesSettings (notify per endpoint, its number)."""
    if message.direction != OUT or message.status not in (DELIVERED, FAILED):
        return None
    endpoint = endpoint_of(message.source)
    phone = phones.phone(endpoint) if endpoint else None
    if phone is None or phone.notify == "none":
        return None
    if phone.notify == "failed" and message.status != FAILED:
        return None
    number = phones.number_of(endpoint)
    if number is None:
        return None
    try:
        # From the number it wrote to: the notice lands in that conversation.
        sender = check_sender(message.recipient)
    except UnsafeValue:
        return None
    notice = Message(IN, route_name(KIND, endpoint), number, sender,
                     notice_text(message.status, message.reason, now, clock), source=SOURCE,
                     dedupe_key=f"{SOURCE}:{message.id}:{message.status}")
    notice.created = now
    return notice
