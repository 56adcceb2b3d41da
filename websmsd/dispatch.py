"""Policy: claim -> send -> retry policy -> record, for every route.

For each route (the interface that carries a message: `itsp:api-1`, `callfile`,
`goip:sim1`...) the dispatcher keeps one loop.  When the store says something was
committed on a route, or when the route's earliest retry falls due, it takes what is due,
claims it (a cancelled message is never sent), hands it to the route's sink and records
the `Outcome` (websmsd.channel) by the retry policy: sent, retry later, failed for good,
or on to the next route of the message's fallback list.  Channels never write a
message's status themselves.

Per route: how many messages may be on their way at once (`concurrency`), a minimum
interval between two sends (a SIM sends one SMS every few seconds; Yeastar asks for one
per 10 s per port), and whether the route is *down* (a bind lost, a phone that stopped
polling): a down route takes nothing, spends no attempts and fails nothing until max_age;
a message that has a fallback route moves on to it.

Polled channels (phones that fetch their messages) take due messages with
`take(route)` and report each result with `record(message, outcome)`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Set, Tuple

from twisted.application.service import Service
from twisted.internet import defer
from twisted.logger import Logger

from websmsd.channel import Outcome
from websmsd.message import FAILED, QUEUED, Message
from websmsd.text import one_line
from websmsd.record import frozen

log = Logger()


@frozen
class RetryPolicy:
    base: float = 30.0
    max_delay: float = 3600.0
    max_attempts: int = 10
    max_age: float = 2 * 86400.0

    def delay(self, attempts: int) -> float:
        """Seconds to wait after the `attempts`-th failed try: base, 2 base, 4 base..."""
        return min(self.base * (2 ** max(attempts - 1, 0)), self.max_delay)

    def after_failure(self, message: Message, attempts: int, reason: str,
                      permanent: bool, now: float, may_give_up: bool = True) -> dict:
        """The store changes after a failed try: try again later, or fail for good."""
        if may_give_up and (
            permanent
            or attempts >= self.max_attempts
            or now - message.created >= self.max_age
        ):
            if not permanent:
                tries = "1 attempt" if attempts == 1 else f"{attempts} attempts"
                reason = f"gave up after {tries}: {reason}"
            return {"status": FAILED, "reason": reason, "attempts": attempts}
        return {
            "status": QUEUED,
            "reason": reason,
            "attempts": attempts,
            "next_attempt": now + self.delay(attempts),
        }

    def expired(self, message: Message, now: float) -> bool:
        return now - message.created >= self.max_age


@dataclass
class _Route:
    name: str
    sink: Any  # Sink, BatchSink, or None for a polled route
    batch: bool
    concurrency: int
    min_interval: float
    linger: float
    in_flight: Set[str] = field(default_factory=set)
    looking: bool = False  # a round is asking the store what is due
    again: bool = False  # woken while looking: look once more
    timer: Any = None
    last_start: float = float("-inf")
    down: Optional[str] = None  # why it is down; None: up
    down_since: Optional[float] = None
    probe: Any = None  # the timer that tries a route marked down by an Outcome again


class Dispatcher(Service):
    """One delivery loop per route, woken by commits and by the retry timer."""

    batch_size = 500

    def __init__(self, store: Any, reactor: Any, policy: Optional[RetryPolicy] = None,
                 metrics: Any = None):
        from websmsd.metrics import Metrics

        self.store = store
        self.reactor = reactor
        self.policy = policy or RetryPolicy()
        self.metrics = metrics if metrics is not None else Metrics()
        self.routes: Dict[str, _Route] = {}
        self._waiters: Dict[str, List[defer.Deferred]] = {}

    # -- configuration ------------------------------------------------------------------

    def add_route(self, route: str, sink: Any, *, concurrency: int = 8,
                  min_interval: float = 0.0, linger: float = 0.0) -> None:
        """A pushed route: `sink.send(message) -> Deferred[Outcome]`, at most
        `concurrency` at once, a send starting at most every `min_interval` seconds."""
        self.routes[route] = _Route(route, sink, False, max(1, concurrency),
                                    max(0.0, min_interval), linger)

    def add_batch_route(self, route: str, sink: Any, *, linger: float = 0.0) -> None:
        """A route whose sink takes every due message at once and claims what it staged:
        `sink.send_batch(messages, claim) -> Deferred[[Outcome]]`.  `linger`: seconds to
        let more messages gather after a wake-up (each round costs commits and fsyncs
        whatever its size)."""
        self.routes[route] = _Route(route, sink, True, 1, 0.0, linger)

    def add_polled_route(self, route: str) -> None:
        """A route whose channel takes its messages itself (`take`) when its peer polls."""
        self.routes[route] = _Route(route, None, False, 1, 0.0, 0.0)

    def startService(self) -> None:
        super().startService()
        self.store.listeners.append(self.wake)
        for route in self.routes:
            self.wake(route)

    def stopService(self) -> defer.Deferred:
        super().stopService()
        if self.wake in self.store.listeners:
            self.store.listeners.remove(self.wake)
        for r in self.routes.values():
            for timer in (r.timer, r.probe):
                if timer is not None and timer.active():
                    timer.cancel()
            r.timer = r.probe = None
        return defer.succeed(None)

    # -- up and down ----------------------------------------------------------------------

    def set_down(self, route: str, reason: Optional[str]) -> None:
        """A channel says its route is down (`reason`) or up again (None)."""
        r = self.routes.get(route)
        if r is None:
            return
        record = self.metrics.route(route)
        if reason is None:
            if r.down is not None:
                log.info("route {route} is up again", route=route)
            r.down, r.down_since = None, None
            record.down, record.down_since = None, None
            if r.probe is not None and r.probe.active():
                r.probe.cancel()
            r.probe = None
        else:
            if r.down is None:
                r.down_since = self.reactor.seconds()
                log.warn("route {route} is down: {reason}", route=route, reason=reason)
            r.down = reason
            record.down, record.down_since = reason, r.down_since
        self.wake(route)

    def is_down(self, route: str) -> Optional[str]:
        r = self.routes.get(route)
        return None if r is None else r.down

    def _went_down(self, r: _Route, reason: str) -> None:
        """A sink answered `down` without its channel having said so: pause the route,
        and try one message again after the retry base delay."""
        if r.down is None:
            self.set_down(r.name, reason)
        if r.probe is None or not r.probe.active():
            r.probe = self.reactor.callLater(self.policy.base, self._probe, r.name)

    def _probe(self, route: str) -> None:
        r = self.routes.get(route)
        if r is not None and r.down is not None and r.probe is not None:
            r.probe = None
            self.set_down(route, None)

    # -- the loop -----------------------------------------------------------------------

    def wake(self, route: str) -> None:
        """Something may be due on `route`: look soon (once, however often called)."""
        r = self.routes.get(route)
        if r is None or not self.running:
            return
        if r.looking:
            r.again = True
            return
        delay = r.linger
        if r.min_interval:
            delay = max(delay, r.last_start + r.min_interval - self.reactor.seconds())
        self._set_timer(r, delay)

    def _set_timer(self, r: _Route, delay: float) -> None:
        delay = max(0.0, delay)
        now = self.reactor.seconds()
        if r.timer is not None and r.timer.active():
            if r.timer.getTime() <= now + delay:
                return
            r.timer.cancel()
        r.timer = self.reactor.callLater(delay, self._round, r.name)

    def _room(self, r: _Route) -> int:
        if r.batch:
            return self.batch_size
        if r.sink is None:
            return 0  # polled: the channel takes them
        room = r.concurrency - len(r.in_flight)
        if r.min_interval:
            room = min(room, 1)
        return max(0, room)

    def _round(self, route: str) -> None:
        r = self.routes[route]
        r.timer = None
        if r.looking:
            r.again = True
            return
        room = self._room(r)
        if r.sink is None and r.down is None:
            return  # a polled route that is up: its peer takes what is due
        if r.min_interval and room:
            wait = r.last_start + r.min_interval - self.reactor.seconds()
            if wait > 0:
                self._set_timer(r, wait)
                return
        r.looking = True
        r.again = False
        limit = room if r.down is None else self.batch_size
        d = self.store.due(route, self.reactor.seconds(), max(limit, 1), exclude=r.in_flight)
        d.addCallback(self._found, r, room)
        d.addErrback(self._failed, route)
        d.addBoth(self._round_done, r)

    def _found(self, messages: List[Message], r: _Route, room: int) -> Any:
        if not messages:
            return False
        if r.down is not None:
            return self._while_down(messages, r)
        if room <= 0:
            return False
        messages = messages[:room]
        if r.batch:
            return self._hand_over_batch(messages, r)
        for m in messages:
            r.in_flight.add(m.id)
            r.last_start = self.reactor.seconds()
            d = defer.ensureDeferred(self._send_one(m, r))
            d.addErrback(self._failed, r.name)
            d.addBoth(self._landed, r, m.id)
        return False

    def _round_done(self, more: Any, r: _Route) -> None:
        r.looking = False
        if not self.running:
            return
        if more is True or r.again:
            self.wake(r.name)
            return
        self._plan(r)

    def _plan(self, r: _Route) -> None:
        """Set the timer for the earliest retry of what is not in flight."""
        if r.sink is None and r.down is None:
            return  # a polled route: its peer comes for what is due
        d = self.store.next_due(r.name, r.in_flight)
        d.addCallback(self._schedule, r)
        d.addErrback(self._failed, r.name)

    def _schedule(self, when: Optional[float], r: _Route) -> None:
        if when is None or not self.running or r.looking or not self._room(r) and r.down is None:
            return
        if r.down is not None:
            # Nothing is sent while down: look again only when messages could expire.
            when = max(when, self.reactor.seconds() + min(self.policy.max_age, 3600.0))
        delay = when - self.reactor.seconds()
        if r.min_interval:
            delay = max(delay, r.last_start + r.min_interval - self.reactor.seconds())
        self._set_timer(r, delay)

    def _landed(self, _: Any, r: _Route, message_id: str) -> None:
        r.in_flight.discard(message_id)
        if self.running:
            self.wake(r.name)

    def _failed(self, failure: Any, route: str) -> bool:
        log.failure("dispatcher: route {route} failed", failure, route=route)
        return False

    # -- handing on -----------------------------------------------------------------------

    async def _send_one(self, m: Message, r: _Route) -> None:
        claimed = await self.store.claim([m.id])
        if not claimed:  # cancelled by the owner since it was found due
            return
        started = self.reactor.seconds()
        try:
            outcome = await defer.maybeDeferred(r.sink.send, m)
        except Exception as e:
            # A bug in a channel, not the peer: still an answer the policy can act on.
            log.failure("route {route}: sending {id} raised", route=r.name, id=m.id)
            outcome = Outcome.failed(f"internal error ({type(e).__name__}; see the log)")
        self._measure(r.name, started, outcome)
        await self.record(m, outcome)

    def _measure(self, route: str, started: float, outcome: Outcome) -> None:
        if outcome.ok or (outcome.retry_in is None and not outcome.down):
            self.metrics.sent(route, started, self.reactor.seconds(), outcome.ok, outcome.reason)

    def _hand_over_batch(self, messages: List[Message], r: _Route) -> Any:
        ids = [m.id for m in messages]
        r.in_flight.update(ids)

        async def run() -> bool:
            started = self.reactor.seconds()
            outcomes = await defer.maybeDeferred(r.sink.send_batch, messages, self._claim)
            for outcome in outcomes:
                self._measure(r.name, started, outcome)
            # A batch route's successes are the bulk of its work (every inbound message):
            # their attempt rows would double the writes; its failures are kept.
            await self.record_all(list(zip(messages, outcomes)), log_success=False)
            return len(messages) >= self.batch_size

        def landed(result: Any) -> Any:
            r.in_flight.difference_update(ids)
            return result

        return defer.ensureDeferred(run()).addBoth(landed)

    def _claim(self, messages: Sequence[Message]) -> defer.Deferred:
        """For a batch sink: claim these (after it staged them); fires with their ids."""
        return self.store.claim([m.id for m in messages])

    def _while_down(self, messages: List[Message], r: _Route) -> Any:
        """What is due on a down route: on to the next route of its fallback list, or
        failed once too old; the rest waits without spending attempts."""
        now = self.reactor.seconds()
        pairs = []
        # The others say why they wait (once: a phone switched off, a bind lost).
        waiting = f"waiting: route {r.name} is down: {one_line(r.down or 'down', 300)}"
        notes = []
        for m in messages:
            if m.fallback:
                pairs.append((m, Outcome.route_down(r.down or "down")))
            elif self.policy.expired(m, now):
                pairs.append((m, Outcome.failed(
                    f"route {r.name} down since {_ago(r.down_since, now)}: {r.down}",
                    permanent=True)))
            elif m.status == QUEUED and m.reason != waiting:
                notes.append((m.id, {"reason": waiting}))
        if not pairs and not notes:
            return False

        async def record() -> bool:
            if pairs:
                await self.record_all(pairs)
            if notes:
                await self.store.update(notes)
            return False

        return defer.ensureDeferred(record())

    # -- recording ----------------------------------------------------------------------

    def record(self, message: Message, outcome: Outcome) -> defer.Deferred:
        """Record what became of one attempt to hand `message` on (pushed and polled
        channels alike), by the retry policy."""
        return defer.ensureDeferred(self.record_all([(message, outcome)]))

    async def record_all(self, pairs: Sequence[Tuple[Message, Outcome]],
                         log_success: bool = True) -> None:
        now = self.reactor.seconds()
        changes: List[tuple] = []
        attempts: List[tuple] = []
        wake: Set[str] = set()
        told: List[Tuple[str, str, Optional[str]]] = []
        for m, outcome in pairs:
            fields, attempt = self._fields(m, outcome, now)
            if outcome.down and m.route in self.routes:
                self._went_down(self.routes[m.route], outcome.reason or "down")
            if "route" in fields:
                wake.add(fields["route"])
            changes.append((m.id, fields))
            if attempt is not None and (log_success or not attempt[0]):
                attempts.append((m.id, *attempt))
            if (outcome.retry_in is None or outcome.ok) and "route" not in fields:
                # Someone may wait for this try (a FastAGI session): not for a "look
                # again later", which is no try, nor for a move to the next route, whose
                # try comes at once.
                told.append((m.id, fields.get("status", m.status), fields.get("reason")))
        await self.store.update(changes, attempts, wake=wake)
        for message_id, status, reason in told:
            for d in self._waiters.pop(message_id, []):
                d.callback((status, reason))

    def _fields(self, m: Message, o: Outcome, now: float) -> Tuple[dict, Optional[tuple]]:
        """The store changes for one outcome, and the attempt row to add (ok, detail)."""
        reason = one_line(o.reason, 300) if o.reason else None
        if o.ok:
            fields = {"status": o.status, "reason": None, "attempts": m.attempts + 1}
            if o.provider_id:
                fields["provider_id"] = o.provider_id
            if o.progress is not None:
                fields["progress"] = o.progress
            return fields, (True, reason)
        if o.retry_in is not None:
            # Not an attempt: look again later (a part Asterisk has not taken yet, a part
            # handed over with more to come, a throttled peer).
            fields = {"status": QUEUED, "next_attempt": now + o.retry_in}
            if o.progress is not None:
                fields["progress"] = o.progress
                fields["reason"] = None
            elif reason:
                fields["reason"] = reason
            return fields, None
        if o.down:
            if m.fallback:
                return self._next_route(m, f"route {m.route} is down: {reason}"), None
            return {"status": QUEUED, "reason": f"waiting: route {m.route} is down: {reason}"}, None
        attempts = m.attempts + 1
        fields = self.policy.after_failure(m, attempts, reason or "failed", o.permanent, now,
                                           may_give_up=o.give_up)
        if o.progress is not None:
            # The parts that did go (a long text to a phone), or the part to hand over
            # again (a call file Asterisk reported Expired).
            fields["progress"] = o.progress
        if fields["status"] == FAILED and m.fallback:
            return self._next_route(m, f"{m.route}: {fields['reason']}"), (False, reason)
        if fields["status"] == FAILED:
            log.warn("route {route}: {id} failed for good: {reason}", route=m.route, id=m.id,
                     reason=fields["reason"])
        elif o.resume:
            del fields["status"]  # stays "sending": its channel resumes the hand-over
        return fields, (False, reason)

    def _next_route(self, m: Message, why: str) -> dict:
        route, rest = m.fallback[0], tuple(m.fallback[1:])
        log.info("{id}: {why}; on to route {route}", id=m.id, why=why, route=route)
        return {"status": QUEUED, "route": route, "fallback": rest, "attempts": 0,
                "next_attempt": 0.0, "reason": f"{one_line(why, 240)}; now via {route}"}

    # -- polled routes --------------------------------------------------------------------

    def take(self, route: str, limit: int = 10) -> defer.Deferred:
        """For a polled channel whose peer came: up to `limit` due messages of `route`,
        claimed (they are "sending" until the channel records what became of them)."""

        async def take() -> List[Message]:
            due = await self.store.due(route, self.reactor.seconds(), limit, queued_only=True)
            claimed = set(await self.store.claim([m.id for m in due]))
            return [m for m in due if m.id in claimed]

        return defer.ensureDeferred(take())

    # -- waiting for an outcome ---------------------------------------------------------

    def wait_for_attempt(self, message_id: str) -> defer.Deferred:
        """Fires with (status, reason) once the next try of `message_id` is recorded."""
        d = defer.Deferred(lambda d: self._forget(message_id, d))
        self._waiters.setdefault(message_id, []).append(d)
        return d

    def _forget(self, message_id: str, d: defer.Deferred) -> None:
        waiters = self._waiters.get(message_id, [])
        if d in waiters:
            waiters.remove(d)
        if not waiters:
            self._waiters.pop(message_id, None)


def _ago(since: Optional[float], now: float) -> str:
    if since is None:
        return "start"
    seconds = int(now - since)
    if seconds < 120:
        return f"{seconds} s"
    if seconds < 7200:
        return f"{seconds // 60} min"
    return f"{seconds // 3600} h"
