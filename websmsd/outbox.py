"""Messages from the PBX (FastAGI, the `websms` command, the local API) enter here.

The outbox checks a message, asks the router which interface carries it (and which ones
take over if that one fails it or is down), stores it, and waits a bounded time for its
first try, so that the dialplan can tell the sender SENT, QUEUED or FAILED.
"""

from __future__ import annotations

from typing import Any, NamedTuple, Optional

from twisted.internet import defer
from twisted.logger import Logger

from websmsd.message import (DELIVERED, FAILED, OUT, SENT, Message, UnsafeValue, check_recipient,
                             check_sender)
from websmsd.routing import Router

log = Logger()

MAX_BODY = 10_000  # characters; a long SMS is 1,600 at most, this only stops abuse


class Submitted(NamedTuple):
    status: str  # "SENT", "QUEUED" or "FAILED": what the dialplan sees in WEBSMS_STATUS
    message_id: Optional[str]
    reason: Optional[str]


class Outbox:
    def __init__(self, store: Any, dispatcher: Any, router: Router, reactor: Any,
                 wait: float = 10.0):
        self.store = store
        self.dispatcher = dispatcher
        self.router = router
        self.reactor = reactor
        self.wait = wait

    def prepare(self, to: str, sender: str, body: str, index: Optional[str] = None,
                source: str = "agi") -> "Message | str":
        """The message to store, routed, or why it cannot be sent (a str)."""
        if not body:
            return "empty body (Asterisk empties SIP bodies over 1023 bytes)"
        if len(body) > MAX_BODY:
            return f"body of {len(body)} characters is too long"
        try:
            check_sender(sender)
        except UnsafeValue as e:
            return str(e)
        decision = self.router.outbound(to, sender, index or None,
                                        came_in_on=self.store.owners.get(sender))
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
