"""What the two apps that call websmsd share (SMSsync, the SMS Gateway app).

`PolledPhone` is one phone's route: a polled route of the dispatcher, whose messages the
phone's requests take (`take`), hand over (`handed_over`) or give back (`release`); the
phone's presence (last request, app and version, silent after three poll intervals: the
route is then down until the next request); its row on the status page.

`PhoneResource` is the twisted.web side both resources build on: one request at a time
handled by a coroutine, refusals counted like the ITSP webhook's, answers written from
`answer.Answer` values, and whether an answer was handed to the connection at all (an
SMS offered in an answer that never left is given back).
"""

from __future__ import annotations

import abc
from typing import Any, Iterable, List, Optional, Sequence

from twisted.application.service import Service
from twisted.internet import defer
from twisted.logger import Logger
from twisted.web.resource import Resource

from websmsd.channel import Outcome, route_name
from websmsd.http.site import NOT_DONE_YET, body_of, gone, record_refusal
from websmsd.message import IN, Message

from .answer import Answer, is_clean, is_text
from .presence import PhonePresence, safe_sender

log = Logger()

# Messages offered per answer: the phone sends what it is given at once, and Android
# asks its user before an app sends more than 30 SMS in 30 minutes.
PER_ANSWER = 10


def unusable(message: Message) -> Optional[str]:
    """Why the phone could not take `message` (None: it can)."""
    if not is_clean(message.id, 128):
        return "its id cannot be given to the phone"
    if not is_clean(message.recipient, 64):
        return "its recipient cannot be given to the phone"
    if not is_text(message.body, 40_000) or message.body == "":
        return "an empty text cannot be sent as SMS"
    return None


class PolledPhone(Service):
    """One phone that calls websmsd: its route, presence and status row."""

    def __init__(self, wiring: Any, kind: str, phone: Any) -> None:
        self.wiring = wiring
        self.reactor = wiring.reactor
        self.dispatcher = wiring.dispatcher
        self.store = wiring.store
        self.metrics = wiring.metrics
        self.phone = phone
        self.kind = kind
        self.route = route_name(kind, phone.name)
        self.name = self.route  # the service's name under the daemon's MultiService
        self.presence = PhonePresence(self.route, phone.name, kind, phone.poll, wiring.started)
        self._timer: Any = None
        # Run once when the daemon starts (the store is open by then): async callables.
        self.on_start: List[Any] = []
        # More facts for the status row: callables returning a dict.
        self.info: List[Any] = []

    # -- the silence watch ---------------------------------------------------------------

    def startService(self) -> None:
        super().startService()
        self._arm()
        for action in self.on_start:
            d = defer.ensureDeferred(action())
            d.addErrback(lambda f: log.failure("{route}: resuming failed", f, route=self.route))

    def stopService(self) -> Any:
        super().stopService()
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        return defer.succeed(None)

    def _arm(self) -> None:
        if not self.running:
            return
        delay = max(0.0, self.presence.deadline() - self.reactor.seconds())
        if self._timer is not None and self._timer.active():
            self._timer.reset(delay)
        else:
            self._timer = self.reactor.callLater(delay, self._check)

    def _check(self) -> None:
        self._timer = None
        if self.presence.check_silent(self.reactor.seconds()):
            reason = self.presence.silence_reason()
            log.warn("{route}: {reason}; its messages wait (or take their fallback route)",
                     route=self.route, reason=reason)
            self.dispatcher.set_down(self.route, reason)
        if not self.presence.silent:
            self._arm()

    def contact(self, request: Any, poll: bool = False) -> None:
        """The phone made a request that passed its credentials."""
        agent = request.getHeader(b"user-agent")
        if self.presence.contact(self.reactor.seconds(), agent, poll):
            log.info("{route}: the phone is back", route=self.route)
            self.dispatcher.set_down(self.route, None)
        self.presence.count("polls" if poll else "requests")
        self.metrics.count("android_requests", self.route)
        self._arm()

    # -- messages ------------------------------------------------------------------------

    def inbound(self, sender: str, text: str, key: str) -> Message:
        """A received SMS as a Message for the PBX; `key` is the phone's id of it."""
        return Message(IN, "", recipient=self.phone.own_number, sender=safe_sender(sender),
                       body=text, source=self.route, dedupe_key=f"{self.route}:{key}")

    async def take(self, limit: int) -> List[Message]:
        """Up to `limit` due messages for the phone, claimed ("sending"); those the phone
        could never take fail here."""
        if limit <= 0:
            return []
        taken = await self.dispatcher.take(self.route, limit)
        good, bad = [], []
        for m in taken:
            why = unusable(m)
            (bad if why else good).append((m, why))
        if bad:
            await self.dispatcher.record_all(
                [(m, Outcome.failed(f"not for this phone: {why}", permanent=True)) for m, why in bad])
        return [m for m, _ in good]

    async def handed_over(self, messages: Sequence[Message], how: str,
                          since: Optional[float] = None) -> None:
        """The phone has these to send: they count as sent."""
        if not messages:
            return
        now = self.reactor.seconds()
        await self.dispatcher.record_all([(m, Outcome.sent(how)) for m in messages])
        for m in messages:
            self.metrics.sent(self.route, now if since is None else since, now, True)
        self.presence.count("handed_over", len(messages))
        self.presence.result(now, f"{messages[-1].id} handed over ({how})")
        log.info("{route}: {count} SMS handed over to the phone ({how})", route=self.route,
                 count=len(messages), how=how)

    async def release(self, messages: Iterable[Message], why: str) -> None:
        """Give back messages the phone did not get: offered again at its next poll."""
        messages = list(messages)
        if messages:
            await self.dispatcher.record_all([(m, Outcome.later(0, why)) for m in messages])

    async def ours(self, message_id: str, statuses: Sequence[str]) -> Optional[Message]:
        """The message `message_id` if it is an outbound one of this route in one of
        `statuses` (None otherwise)."""
        m = await self.store.get(message_id)
        if m is None or m.direction == IN or m.route != self.route or m.status not in statuses:
            return None
        return m

    # -- the status page -------------------------------------------------------------------

    def status(self, waiting: Optional[int]) -> Any:
        info: dict = {}
        for more in self.info:
            info.update(more())
        return self.presence.row(self.reactor.seconds(), waiting, info)


async def waiting_counts(store: Any) -> dict:
    """{route: messages waiting} from the store's read-only side."""
    counts = await store.reader.waiting()
    return {route: n for route, (n, _, _) in counts.items()}


class PhoneResource(Resource, abc.ABC):
    """A phone app's URL on the webhook listener."""

    isLeaf = True

    def __init__(self, phone: PolledPhone) -> None:
        super().__init__()
        self.phone = phone
        self.metrics = phone.metrics
        self.reactor = phone.reactor

    def render(self, request: Any) -> Any:
        d = defer.ensureDeferred(self.handle(request))
        d.addErrback(self._bug, request)
        return NOT_DONE_YET

    @abc.abstractmethod
    async def handle(self, request: Any) -> None:
        """Answer one request of the phone."""

    def _bug(self, failure: Any, request: Any) -> None:
        log.failure("{route}: handling a request failed", failure, route=self.phone.route)
        if not gone(request) and not request.finished:
            self.write(request, self.internal_error())

    @abc.abstractmethod
    def internal_error(self) -> Answer:
        """The answer to a request websmsd failed on: one the app retries."""

    # -- answers -------------------------------------------------------------------------

    def body(self, request: Any) -> bytes:
        return body_of(request)

    def write(self, request: Any, answer: Answer) -> defer.Deferred:
        """Answer the request; a Deferred that fires True once the whole answer was handed
        to the connection, False when the phone was gone before."""
        if gone(request):
            return defer.succeed(False)
        done = request.notifyFinish()
        request.setResponseCode(answer.status)
        request.setHeader(b"Content-Type", answer.content_type.encode("ascii"))
        for name, value in answer.headers:
            request.setHeader(name.encode("latin-1"), value.encode("latin-1"))
        request.setHeader(b"Content-Length", b"%d" % len(answer.body))
        request.setHeader(b"Cache-Control", b"no-store")
        if request.method != b"HEAD":
            request.write(answer.body)
        request.finish()
        return done.addCallbacks(lambda _: True, lambda _: False)

    def refuse(self, request: Any, answer: Answer, reason: str) -> defer.Deferred:
        """Answer a refused request and count it (never its body or a secret)."""
        status = answer.status
        kind = {401: "forbidden", 403: "forbidden", 405: "method", 413: "too_large",
                503: "store_failed"}.get(status, "bad_request")
        record_refusal(self.metrics, self.reactor.seconds(), kind, status, self.source(request),
                       request.path.decode("latin-1"), f"{self.phone.route}: {reason}")
        return self.write(request, answer)

    @staticmethod
    def source(request: Any) -> str:
        address = request.getClientAddress()
        return getattr(address, "host", None) or str(address)

    @staticmethod
    def raw_query(request: Any) -> bytes:
        return request.uri.partition(b"?")[2]


__all__ = ["PER_ANSWER", "PhoneResource", "PolledPhone", "unusable", "waiting_counts"]
