"""What every channel speaks: the Outcome of handing a message on, and the Sink interface.

A *route* is the interface that carries a message: ``itsp:api-1``, ``callfile``,
``goip:sim1``, ``smssync:phone1``...  For each route the dispatcher (websmsd.dispatch)
takes due messages from the store, claims them, hands them to the route's sink and
records the Outcome by its retry policy.  Channels never talk to each other and never
write a message's status themselves.

Two kinds of channel:

- a *pushed* channel implements `Sink.send(message) -> Deferred[Outcome]` (an ITSP's HTTP
  API, an SMPP bind, a GoIP line, AMI);
- a *polled* channel (a phone that fetches its messages) asks the store for what is due
  on its route when the phone polls, and reports each result to the dispatcher with
  `Dispatcher.record(message, outcome)`.

A channel that spools (Asterisk call files) must make a message "sending" only once its
file is staged, so it gets the whole batch and claims what it staged itself:
`BatchSink.send_batch(messages, claim) -> Deferred[[Outcome]]`.

Pure Python: no Twisted here (the Deferreds are the channels').
"""

from __future__ import annotations

from typing import Any, Callable, List, NamedTuple, Optional, Protocol, Sequence

from websmsd.message import DELIVERED, SENT, Message
from websmsd.record import frozen

__all__ = ["Outcome", "Sink", "BatchSink", "ChannelState", "route_name", "route_kind"]


@frozen
class Outcome:
    """What one attempt to hand a message on achieved.

    ok: the peer took it; `status` says how far (SENT: accepted by the next hop,
    DELIVERED: it reached the phone).  Otherwise:

    - permanent: sending the same again would not help (or could send it twice): the
      message fails for good, or goes to the route's fallback;
    - down: the route cannot carry anything now (a bind lost, a phone silent, an
      interface unusable): no attempt is spent, the route pauses, the message waits
      (or goes to a fallback route);
    - retry_in: not an attempt either: look again after that many seconds (a call-file
      part Asterisk has not taken yet, a throttled SMSC);
    - otherwise a transient failure: retried with backoff, and failed once the policy
      gives up (never, with `give_up=False`, for a local fault such as a full spool).

    reason: one line for the log and the status page, no credential and no message text.
    code: the peer's own code (HTTP status, SMPP command_status), when there is one.
    progress: parts handed over so far, for a message that goes in several parts.
    resume: a failure in the middle of a hand-over (see the field).
    """

    ok: bool
    reason: Optional[str] = None
    permanent: bool = False
    code: Optional[int] = None
    provider_id: Optional[str] = None
    down: bool = False
    retry_in: Optional[float] = None
    give_up: bool = True
    status: str = SENT
    progress: Optional[int] = None
    # The hand-over was under way (a call file staged, maybe renamed): the message stays
    # "sending", so that its channel finishes that hand-over instead of starting anew.
    resume: bool = False

    @classmethod
    def sent(cls, reason: Optional[str] = None, **kw: Any) -> "Outcome":
        return cls(True, reason, **kw)

    @classmethod
    def delivered(cls, reason: Optional[str] = None, **kw: Any) -> "Outcome":
        return cls(True, reason, status=DELIVERED, **kw)

    @classmethod
    def failed(cls, reason: str, permanent: bool = False, **kw: Any) -> "Outcome":
        return cls(False, reason, permanent=permanent, **kw)

    @classmethod
    def route_down(cls, reason: str, **kw: Any) -> "Outcome":
        return cls(False, reason, down=True, **kw)

    @classmethod
    def later(cls, seconds: float, reason: Optional[str] = None, **kw: Any) -> "Outcome":
        return cls(False, reason, retry_in=seconds, **kw)


class Sink(Protocol):
    """A pushed channel: one message at a time."""

    def send(self, message: Message) -> Any:
        """Hand `message` on; a Deferred that fires with an Outcome (and never errbacks
        for the peer's or the network's trouble: that is an Outcome too)."""
        raise NotImplementedError


Claim = Callable[[Sequence[Message]], Any]  # -> Deferred[[bool]]: claimed (not cancelled)


class BatchSink(Protocol):
    """A channel that hands messages on in batches and claims them itself."""

    def send_batch(self, messages: List[Message], claim: Claim) -> Any:
        """Deferred[[Outcome]], one per message, in order."""
        raise NotImplementedError


class ChannelState(NamedTuple):
    """One row of the status page's channel table, as a channel reports it.

    state is a short word: ok, listening, up, idle, failing, down, silent, error...
    since: when it entered that state (epoch seconds) or None; detail: one line for a
    person; kind groups rows (itsp, spool, webhook, fastagi, goip...); info: any more
    JSON-able facts for /api/status (counters, last success, last failure...).
    """

    name: str
    state: str
    since: Optional[float]
    detail: str
    kind: str = ""
    info: Optional[dict] = None

    def json(self) -> dict:
        return {"kind": self.kind, "name": self.name, "state": self.state,
                "since": self.since, "detail": self.detail, "info": self.info or {}}


def route_name(kind: str, interface: str = "") -> str:
    """`itsp:api-1`; the unnamed interface of a section is the bare kind: `itsp`."""
    return f"{kind}:{interface}" if interface else kind


def route_kind(route: str) -> str:
    return route.partition(":")[0]


def route_interface(route: str) -> str:
    return route.partition(":")[2]
