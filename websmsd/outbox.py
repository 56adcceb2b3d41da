"""Messages from the PBX (FastAGI, the `websms` command, the local API) enter here.

The outbox checks a message, asks the router which interface carries it (and which ones
take over if that one fails it or is down), stores it, and waits a bounded time for its
first try, so that the dialplan can tell the sender SENT, QUEUED or FAILED.
"""

from __future__ import annotations

import re
from typing import Any, Mapping, NamedTuple, Optional, Tuple

from twisted.internet import defer
from twisted.logger import Logger

from websmsd.message import (DELIVERED, FAILED, OUT, SENT, Message, UnsafeValue, check_recipient,
                             check_sender, parse_sip_address)
from websmsd.routing import Router
from websmsd.text import shown

log = Logger()

MAX_BODY = 10_000  # characters; a long SMS is 1,600 at most, this only stops abuse
# A SIP user that is a phone number (not an extension such as 201).
_NUMBER = re.compile(r"\+[0-9]{3,20}|[0-9]{7,20}")
_ENDPOINT = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,63}")


class Submitted(NamedTuple):
    status: str  # "SENT", "QUEUED" or "FAILED": what the dialplan sees in WEBSMS_STATUS
    message_id: Optional[str]
    reason: Optional[str]


class Outbox:
    """`phone_numbers`: {PJSIP endpoint: the number it writes from} ([phones])."""

    def __init__(self, store: Any, dispatcher: Any, router: Router, reactor: Any,
                 wait: float = 10.0, phone_numbers: Optional[Mapping[str, str]] = None):
        self.store = store
        self.dispatcher = dispatcher
        self.router = router
        self.reactor = reactor
        self.wait = wait
        self.phone_numbers = dict(phone_numbers or {})

    def sender_of(self, sender: str, source: str) -> Tuple[str, str]:
        """(the number a message is sent from, its source); raises UnsafeValue (with how
        to fix it) for a phone that has no number.

        Asterisk's MESSAGE(from) for a PJSIP phone is its SIP address, `"John"
        <sip:john.doe@192.0.2.10>`: the endpoint's number from [phones], else the user
        part when it is a number; the source then names the endpoint (agi:john.doe)."""
        sip = parse_sip_address(sender)
        if sip is None:
            return sender, source
        source = f"{source}:{sip.user}" if _ENDPOINT.fullmatch(sip.user) else source
        number = self.phone_numbers.get(sip.user)
        if number is not None:
            return number, source
        if _NUMBER.fullmatch(sip.user):
            return sip.user, source
        endpoint = sip.user if _ENDPOINT.fullmatch(sip.user) else "ENDPOINT"
        raise UnsafeValue(
            f"the sender {shown(sip.user)} is a phone of the PBX, not a number: give it the"
            f" number it sends from in [phones] (number [{endpoint}] = +...), or"
            " Set(MESSAGE(from)=+...) in the dialplan before AGI()")

    def prepare(self, to: str, sender: str, body: str, index: Optional[str] = None,
                source: str = "agi") -> "Message | str":
        """The message to store, routed, or why it cannot be sent (a str)."""
        if not body:
            return "empty body (Asterisk empties SIP bodies over 1023 bytes)"
        if len(body) > MAX_BODY:
            return f"body of {len(body)} characters is too long"
        try:
            sender, source = self.sender_of(sender, source)
            check_sender(sender)
        except UnsafeValue as e:
            return str(e)
        decision = self.router.outbound(to, sender, index or None,
                                        came_in_on=self._came_in_on(sender))
        if decision.interface is None:
            return decision.reason
        if decision.interface.compact:
            # "(206) 555-0100" is a fine number once the interface knows its country; its
            # request normalises it to E.164 (and refuses what cannot be a number).
            to = _compact(to)
        try:
            check_recipient(to)
        except UnsafeValue as e:
            return str(e)
        m = Message(OUT, decision.route, to, sender, body, source=source,
                    fallback=decision.fallback)
        m.created = self.reactor.seconds()
        return m

    def _came_in_on(self, sender: str) -> Optional[str]:
        """Where the last SMS to `sender` came in (the store's owners), also when the ITSP
        wrote that number without its "+" ([phones] numbers usually have one)."""
        owners = self.store.owners
        bare = sender.lstrip("+")
        for key in (sender, bare, "+" + bare):
            if key in owners:
                return owners[key]
        return None

    def check(self, to: str, sender: str, body: str, index: Optional[str]) -> Optional[str]:
        """Why this message cannot be sent, or None."""
        prepared = self.prepare(to, sender, body, index)
        return prepared if isinstance(prepared, str) else None

    def submit(self, to: str, sender: str, body: str, index: Optional[str] = None,
               channel: str = "agi", wait: Optional[float] = None) -> defer.Deferred:
        """Store the message, wait a bounded time for its first try, say how it went."""
        return defer.ensureDeferred(self._submit(to, sender, body, index, channel, wait))

    async def _submit(self, to: str, sender: str, body: str, index: Optional[str],
                      source: str, wait: Optional[float]) -> Submitted:
        m = self.prepare(to, sender, body, index, source)
        if isinstance(m, str):
            log.warn("outbound message refused: {reason}", reason=m)
            return Submitted("FAILED", None, m)
        await self.store.add([m])
        waiter = self.dispatcher.wait_for_attempt(m.id)
        wait = self.wait if wait is None else wait
        timer = self.reactor.callLater(wait, waiter.cancel) if wait > 0 else None
        if timer is None:
            waiter.cancel()
        try:
            status, reason = await waiter
        except defer.CancelledError:
            return Submitted("QUEUED", m.id, None)
        finally:
            if timer is not None and timer.active():
                timer.cancel()
        if status in (SENT, DELIVERED):
            return Submitted("SENT", m.id, None)
        if status == FAILED:
            return Submitted("FAILED", m.id, reason)
        return Submitted("QUEUED", m.id, reason)


def _compact(number: str) -> str:
    """A number as people write it, without its punctuation: (206) 555-0100 -> 2065550100."""
    return "".join(ch for ch in number if ch not in " ()-./")
