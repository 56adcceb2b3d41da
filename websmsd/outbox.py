"""Messages from the PBX (FastAGI, the `websms` command, the local API) enter here."""

from __future__ import annotations

from typing import Any, NamedTuple, Optional

from twisted.internet import defer
from twisted.logger import Logger

from websmsd.message import FAILED, OUT, SENT, Message, UnsafeValue, check_recipient, check_sender

log = Logger()

MAX_BODY = 10_000  # characters; a long SMS is 1,600 at most, this only stops abuse


class Submitted(NamedTuple):
    status: str  # "SENT", "QUEUED" or "FAILED": what the dialplan sees in WEBSMS_STATUS
    message_id: Optional[str]
    reason: Optional[str]


class Outbox:
    def __init__(self, store: Any, dispatcher: Any, outbound: Any, reactor: Any,
                 wait: float = 10.0):
        self.store = store
        self.dispatcher = dispatcher
        self.outbound = outbound
        self.reactor = reactor
        self.wait = wait

    def check(self, to: str, sender: str, body: str, index: Optional[str]) -> Optional[str]:
        """Why this message cannot be sent, or None."""
        iface = self.outbound.select(index or "")
        if iface is None:
            return f"no [websms] interface named {index!r}"
        try:
            check_recipient(_compact(to) if iface.num_country else to)
            check_sender(sender)
        except UnsafeValue as e:
            return str(e)
        if not body:
            return "empty body (Asterisk empties SIP bodies over 1023 bytes)"
        if len(body) > MAX_BODY:
            return f"body of {len(body)} characters is too long"
        return None

    @defer.inlineCallbacks
    def submit(self, to: str, sender: str, body: str, index: Optional[str] = None,
               channel: str = "agi", wait: Optional[float] = None) -> Any:
        """Store the message, wait a bounded time for its first try, say how it went."""
        problem = self.check(to, sender, body, index)
        if problem:
            log.warn("outbound message refused: {reason}", reason=problem)
            return Submitted("FAILED", None, problem)
        iface = self.outbound.select(index or "")
        if iface.num_country:
            # "(206) 555-0100" is a fine number once the interface knows its country; the
            # ITSP request normalises it to E.164 (and refuses what cannot be a number).
            to = _compact(to)
        m = Message(OUT, iface.name, to, sender, body, channel=channel)
        m.created = self.reactor.seconds()
        yield self.store.add([m])
        waiter = self.dispatcher.wait_for_attempt(m.id)
        wait = self.wait if wait is None else wait
        timer = self.reactor.callLater(wait, waiter.cancel) if wait > 0 else None
        if timer is None:
            waiter.cancel()
        try:
            status, reason = yield waiter
        except defer.CancelledError:
            return Submitted("QUEUED", m.id, None)
        finally:
            if timer is not None and timer.active():
                timer.cancel()
        if status == SENT:
            return Submitted("SENT", m.id, None)
        if status == FAILED:
            return Submitted("FAILED", m.id, reason)
        return Submitted("QUEUED", m.id, reason)


def _compact(number: str) -> str:
    """A number as people write it, without its punctuation: (206) 555-0100 -> 2065550100."""
    return "".join(ch for ch in number if ch not in " ()-./")
