"""Policy: take due messages out of the store, hand them to a sink, retry with backoff.

A sink is a channel that carries messages away: the ITSP HTTP client for messages
from the PBX, the Asterisk call-file spool for messages to it.  The dispatcher keeps
one loop per direction: when the store says something was committed, or when the
earliest retry falls due, it asks the store for what is due and gives it to the sink.
A message is never given to a sink twice at once (the in-flight set), and whatever
happens to it is recorded in the store by the sink before the next round.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional

from twisted.application.service import Service
from twisted.internet import defer
from twisted.logger import Logger

from websmsd.message import FAILED, QUEUED, Message

log = Logger()


@dataclass(frozen=True)
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


class Dispatcher(Service):
    """One delivery loop per direction, woken by commits and by the retry timer."""

    batch_size = 500

    def __init__(self, store: Any, reactor: Any):
        self.store = store
        self.reactor = reactor
        self._sinks: Dict[str, Callable[[List[Message]], defer.Deferred]] = {}
        self._running: Dict[str, bool] = {}
        self._again: Dict[str, bool] = {}
        self._timers: Dict[str, Any] = {}
        self._linger: Dict[str, float] = {}
        self.in_flight: Dict[str, set] = {}
        self._waiters: Dict[str, List[defer.Deferred]] = {}
        self.rounds = 0

    def add_sink(self, direction: str, deliver: Callable[[List[Message]], defer.Deferred],
                 linger: float = 0.0) -> None:
        """`deliver(messages)` hands them on, records each outcome in the store, and
        fires when it is done with all of them.  `linger`: seconds to let more messages
        gather after a wake-up, so that a burst is handed on in few large rounds (each
        round costs commits and directory fsyncs whatever its size)."""
        self._sinks[direction] = deliver
        self._linger[direction] = linger
        self._running[direction] = False
        self._again[direction] = False
        self.in_flight[direction] = set()

    def startService(self) -> None:
        super().startService()
        self.store.listeners.append(self.wake)
        for direction in self._sinks:
            self.wake(direction)

    def stopService(self) -> defer.Deferred:
        super().stopService()
        if self.wake in self.store.listeners:
            self.store.listeners.remove(self.wake)
        for timer in self._timers.values():
            if timer.active():
                timer.cancel()
        self._timers.clear()
        return defer.succeed(None)

    # -- the loop -----------------------------------------------------------------------

    def wake(self, direction: str) -> None:
        """Something may be due in `direction`: look soon (once, however often called)."""
        if direction not in self._sinks or not self.running:
            return
        if self._running[direction]:
            self._again[direction] = True
            return
        timer = self._timers.get(direction)
        linger = self._linger[direction]
        if timer is not None and timer.active():
            if timer.getTime() <= self.reactor.seconds() + linger:
                return
            timer.cancel()
        self._timers[direction] = self.reactor.callLater(linger, self._round, direction)

    def _round(self, direction: str) -> None:
        self._running[direction] = True
        self._again[direction] = False
        self.rounds += 1
        d = self.store.due(direction, self.reactor.seconds(), self.batch_size,
                           exclude=self.in_flight[direction])
        d.addCallback(self._hand_over, direction)
        d.addErrback(self._round_failed, direction)
        d.addBoth(self._round_done, direction)

    def _hand_over(self, messages: List[Message], direction: str) -> Any:
        if not messages:
            return False
        each = getattr(self._sinks[direction], "deliver_one", None)
        if each is not None:
            return self._hand_over_each(messages, direction, each)
        flying = self.in_flight[direction]
        ids = [m.id for m in messages]
        flying.update(ids)

        def landed(result: Any) -> Any:
            flying.difference_update(ids)
            return result

        d = defer.maybeDeferred(self._sinks[direction], messages)
        d.addBoth(landed)
        d.addCallback(lambda _: len(messages) >= self.batch_size)
        return d

    def _hand_over_each(self, messages: List[Message], direction: str, deliver: Any) -> bool:
        """For a sink that takes messages one by one (`deliver(m) -> Deferred`): each is
        in flight until its own Deferred fires, and the round ends at once, so that a
        slow peer does not hold up messages that arrive meanwhile."""
        flying = self.in_flight[direction]
        for m in messages:
            flying.add(m.id)
            d = defer.maybeDeferred(deliver, m)
            d.addErrback(self._round_failed, direction)
            d.addBoth(self._landed, direction, m.id)
        return len(messages) >= self.batch_size

    def _landed(self, _: Any, direction: str, message_id: str) -> None:
        # Its outcome is recorded: a retry may now be due at some time; plan for it.
        self.in_flight[direction].discard(message_id)
        if self.running and not self._running[direction]:
            self._plan(direction)

    def _round_failed(self, failure: Any, direction: str) -> bool:
        log.failure("dispatcher: {direction} round failed", failure, direction=direction)
        return False

    def _round_done(self, full: Any, direction: str) -> None:
        self._running[direction] = False
        if not self.running:
            return
        if full or self._again[direction]:
            self.wake(direction)
            return
        self._plan(direction)

    def _plan(self, direction: str) -> None:
        """Set the timer for the earliest retry of what is not in flight."""
        d = self.store.next_due(direction, self.in_flight[direction])
        d.addCallback(self._schedule, direction)
        d.addErrback(self._round_failed, direction)

    def _schedule(self, when: Optional[float], direction: str) -> None:
        if when is None or not self.running or self._running[direction]:
            return
        delay = max(0.0, when - self.reactor.seconds())
        timer = self._timers.get(direction)
        if timer is not None and timer.active():
            if timer.getTime() <= self.reactor.seconds() + delay:
                return
            timer.cancel()
        self._timers[direction] = self.reactor.callLater(delay, self._round, direction)

    # -- outcomes -------------------------------------------------------------------------

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

    def attempted(self, message_id: str, status: str, reason: Optional[str]) -> None:
        """A sink recorded a try of `message_id` with this outcome."""
        for d in self._waiters.pop(message_id, []):
            d.callback((status, reason))
