"""SMS Gateway for Android (Local Server mode): a pushed route, and a poller.

The phone is the server here (websmsd.android.smsgate has the protocol, smsgate_inbox the
inbox reader and smsgate_client the client).

- Sending (the route's sink): ``POST /message`` with websmsd's message id as the app's
  id.  202 and 409 both mean the phone has it (409: it had it already, a retry after a
  lost answer or a restart), so it counts as sent, with our id as the phone's.  No
  answer, or credentials refused: the route is down (no attempt spent, the messages
  wait); a refusal of the message itself fails it.
- Polling, every `poll` seconds: the phone's inbox (InboxReader: new SMS only, across
  polls and restarts), committed together with the reader's state in one transaction;
  then the state of what it took and has not finished (Sent -> sent, Delivered ->
  delivered, Failed -> failed with the recipient's error), each until final; and, every
  few minutes, ``/health`` for the app's version (a 500 there is the phone rating itself
  "fail", not a dead server).
- A phone that does not answer is a route that is down, from the first unanswered poll
  until one is answered; the status row says since when.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, List, Optional

from twisted.application.service import Service
from twisted.internet import defer
from twisted.logger import Logger

from websmsd.channel import Outcome, route_name
from websmsd.http.site import REPORTS
from websmsd.message import DELIVERED, FAILED, IN, SENT, Message

from . import smsgate, smsgate_client, smsgate_inbox
from .presence import PhonePresence, clock, safe_sender

log = Logger()

KIND = "smsgate"
APP = "SMS Gateway for Android"
HEALTH_EVERY = 300.0  # seconds between /health requests
STATES_PER_POLL = 10  # GET /message/{id} per poll at most
FIRST_START_MARGIN = 600.0  # seconds before the first start whose SMS are read too


@dataclass
class Followed:
    """A message the phone took, followed until its state is final."""

    id: str
    since: float
    next_check: float
    sent_reported: bool = False


class SMSGateChannel(Service):
    """One phone running SMS Gateway for Android: the route's sink and the poller."""

    def __init__(self, wiring: Any, phone: Any, client: Any = None) -> None:
        self.wiring = wiring
        self.phone = phone
        self.reactor = wiring.reactor
        self.dispatcher = wiring.dispatcher
        self.store = wiring.store
        self.metrics = wiring.metrics
        self.route = route_name(KIND, phone.name)
        self.name = self.route
        self.state_name = f"{self.route}:inbox"
        self.presence = PhonePresence(self.route, phone.name, KIND, phone.poll, wiring.started)
        self.presence.app = APP
        if client is None:
            client = self._make_client()
        self.client = client
        self.followed: Dict[str, Followed] = {}
        self.inbox: Optional[smsgate_inbox.InboxState] = None
        self._inbox_json: Optional[str] = None
        self.version: Optional[str] = None
        self.health: Optional[smsgate.Health] = None
        self._health_at = float("-inf")
        self.late = 0
        self._timer: Any = None
        self._polling: Optional[defer.Deferred] = None

    def _make_client(self) -> Any:
        # websmsd.http.oneshot: a request per connection, the answer read whole; not
        # twisted.web's Agent, whose modules hold 1.3 MB from the first poll on (#18).
        from websmsd.http.oneshot import OneShot

        requests = OneShot(self.reactor, max_body=4 * 1024 * 1024)
        p = self.phone
        return smsgate_client.SMSGateClient(
            requests, p.url, p.user, p.password or "", timeout=p.timeout,
            clock=self.reactor, with_delivery_report=p.delivery_report,
            skip_phone_validation=p.skip_validation)

    # -- the route's sink ----------------------------------------------------------------

    def send(self, message: Message) -> defer.Deferred:
        return defer.ensureDeferred(self._send(message))

    async def _send(self, message: Message) -> Outcome:
        out = await self.client.send(message.id, message.recipient, message.body, self.phone.sim)
        now = self.reactor.seconds()
        if out.ok:
            self._reached(now, poll=False)
            self.followed[message.id] = Followed(message.id, now, now + self.phone.poll)
            self.presence.count("handed_over")
            self.presence.result(now, f"{message.id} taken by the phone (HTTP {out.status})")
            return Outcome.sent(out.reason, provider_id=out.provider_id or message.id, code=out.status)
        if out.down:
            self._unreachable(now, out.reason)
            if message.fallback:
                return Outcome.route_down(out.reason, code=out.status)
            # Not an attempt; the poller says when the phone answers again (the route is
            # down until then, since the first unanswered request).
            return Outcome.later(self.phone.poll, f"waiting: the phone does not answer: {out.reason}",
                                 code=out.status)
        self.presence.result(now, f"{message.id} not taken: {out.reason}")
        if out.permanent:
            return Outcome.failed(out.reason, permanent=True, code=out.status)
        # The phone answered with an error: it may have stored the message all the same;
        # the retry posts the same id, which it does not send twice.
        return Outcome.failed(out.reason, code=out.status)

    # -- start and stop --------------------------------------------------------------------

    def startService(self) -> None:
        super().startService()
        d = defer.ensureDeferred(self._resume())
        d.addErrback(lambda f: log.failure("{route}: could not read what it remembered",
                                           f, route=self.route))
        d.addBoth(lambda _: self._schedule(0))

    def stopService(self) -> Any:
        super().stopService()
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        if self._polling is not None:
            # A poll waiting for the phone: what it read is in the store, or not at all.
            self._polling.cancel()
        return defer.succeed(None)

    async def _resume(self) -> None:
        """The inbox reader's state, and the messages the phone took and has not
        finished, as they were before a restart."""
        text = await self.store.state(self.state_name)
        if text is not None:
            try:
                self.inbox = smsgate_inbox.InboxState.from_json(text)
                self._inbox_json = text
            except ValueError as e:
                log.error("{route}: the stored inbox position is unreadable ({why}): reading"
                          " from now on", route=self.route, why=str(e))
        if self.inbox is None:
            # First start: SMS stamped a little before it are read too (the SMS centre's
            # clock and ours differ), none of the older history.
            since = int((self.reactor.seconds() - FIRST_START_MARGIN) * 1000)
            self.inbox = smsgate_inbox.InboxState.start(max(0, since))
            self._inbox_json = self.inbox.to_json()
            await self.wiring.accept([], state=(self.state_name, self._inbox_json))
        now = self.reactor.seconds()
        max_age = self.dispatcher.policy.max_age
        recent = await self.store.reader.recent(now - max_age, 10_000)
        for m in recent:
            if m.route == self.route and m.direction != IN and m.status == SENT:
                self.followed[m.id] = Followed(m.id, m.updated or now, now)

    # -- polling ---------------------------------------------------------------------------

    def _schedule(self, delay: float) -> None:
        if not self.running:
            return
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = self.reactor.callLater(delay, self._tick)

    def _tick(self) -> None:
        self._timer = None
        d = self._polling = defer.ensureDeferred(self.poll_once())
        d.addErrback(self._poll_failed)
        d.addBoth(self._polled)

    def _poll_failed(self, failure: Any) -> None:
        if not (failure.check(defer.CancelledError) and not self.running):
            log.failure("{route}: a poll failed", failure, route=self.route)

    def _polled(self, _: Any) -> None:
        self._polling = None
        self._schedule(self.phone.poll)

    async def poll_once(self) -> None:
        """One poll: health now and then, the inbox, the states of what is followed."""
        now = self.reactor.seconds()
        if now - self._health_at >= HEALTH_EVERY:
            self._health_at = now
            health = await self.client.health()
            if not health.reachable:
                self._unreachable(now, health.reason)
                return
            self.health = health
            if health.version:
                self.version = self.presence.version = health.version
        problems: List[str] = []
        try:
            scan = await self.client.poll_inbox(self.inbox, self._reader())
        except smsgate.SMSGateError as e:
            if self._is_down(e):
                self._unreachable(self.reactor.seconds(), e.reason)
                return
            problems.append(f"inbox: {e.reason}")
            log.warn("{route}: reading the inbox failed: {reason}", route=self.route,
                     reason=e.reason)
        else:
            await self._take(scan)
        try:
            problems += await self._follow()
        except smsgate.SMSGateError as e:
            self._unreachable(self.reactor.seconds(), e.reason)
            return
        now = self.reactor.seconds()
        self._reached(now)
        if problems:
            self.presence.troubled(now, "; ".join(problems))
        else:
            self.presence.untroubled()

    @staticmethod
    def _is_down(e: smsgate.SMSGateError) -> bool:
        # No answer, or credentials refused: nothing works.  A 404 from /inbox is an app
        # older than v1.59.0: it still sends, so the route is not down for that.
        return e.down and e.status not in (404, 405)

    def _reader(self) -> smsgate_inbox.InboxReader:
        return smsgate_inbox.InboxReader(near_window_ms=smsgate_inbox.near_window_for_version(self.version))

    async def _take(self, scan: smsgate_inbox.ScanResult) -> None:
        """Commit the new SMS with the reader's new state, in one transaction."""
        own = self.phone.own_number
        messages = [Message(IN, "", recipient=own, sender=safe_sender(e.sender), body=e.text,
                            source=self.route, dedupe_key=f"{self.route}:{e.key}")
                    for e in scan.new]
        text = scan.state.to_json()
        if messages or text != self._inbox_json:
            new = await self.wiring.accept(messages, state=(self.state_name, text))
        else:
            new = []
        self.inbox, self._inbox_json = scan.state, text
        for m, is_new in zip(messages, new):
            self.presence.count("received" if is_new else "duplicates")
            self.metrics.count("android_received", self.route)
            log.info("{route}: SMS {id} read from the phone's inbox ({how})", route=self.route,
                     id=m.id, how="stored" if is_new else "stored before")
        if scan.duplicates:
            self.presence.count("inbox_duplicates", len(scan.duplicates))
        if scan.late:
            self.late += scan.late
            log.error("{route}: {count} SMS arrived in the phone's inbox stamped older than"
                      " the reader's horizon: not taken (look at the phone)",
                      route=self.route, count=scan.late)

    async def _follow(self) -> List[str]:
        """Ask the phone for the state of what it took, a few per poll, until final.
        The problems met (a state the phone could not give); SMSGateError when the phone
        stopped answering."""
        now = self.reactor.seconds()
        max_age = self.dispatcher.policy.max_age
        due = sorted((f for f in self.followed.values() if f.next_check <= now),
                     key=lambda f: f.next_check)[:STATES_PER_POLL]
        problems = []
        for f in due:
            if now - f.since > max_age:
                del self.followed[f.id]  # no final state within max_age: stays "sent"
                continue
            try:
                state = await self.client.state(f.id)
            except smsgate.SMSGateError as e:
                if self._is_down(e):
                    raise
                problems.append(f"state of {f.id}: {e.reason}")
                state = None
            now = self.reactor.seconds()
            if state is not None and await self._state(f, state, now):
                self.followed.pop(f.id, None)
            else:
                # Fresh messages often, older ones less (a delivery report can take hours).
                f.next_check = now + min(max(self.phone.poll, (now - f.since) / 4), 600.0)
        return problems

    async def _state(self, f: Followed, state: smsgate.MessageState, now: float) -> bool:
        """Record what the phone says of one message; True when that is final."""
        if not state.found:
            log.warn("{route}: the phone no longer knows {id} (app reinstalled?): left as sent",
                     route=self.route, id=f.id)
            return True
        lifecycle = state.lifecycle
        if lifecycle == SENT:
            if not f.sent_reported:
                f.sent_reported = True
                await self._report(f.id, SENT, "the phone sent it")
            return not self.phone.delivery_report
        if lifecycle == DELIVERED:
            await self._report(f.id, DELIVERED, "delivered to the handset")
            return True
        if lifecycle in (FAILED, "cancelled"):
            why = state.reason or ("cancelled on the phone" if lifecycle == "cancelled"
                                   else "failed on the phone (no reason given)")
            await self._report(f.id, FAILED, why)
            return True
        return False  # Pending, Processed, Cancelling, or a state added later

    async def _report(self, message_id: str, status: str, detail: str) -> None:
        found = await self.store.report(message_id, [self.route], status, detail,
                                        message_id=message_id)
        if found is None:
            return
        self.metrics.count(REPORTS, status)
        self.presence.count(f"reported_{status}")
        self.presence.result(self.reactor.seconds(), f"{message_id} {status}: {detail}")
        log.info("{route}: {id} {status} ({detail})", route=self.route, id=message_id,
                 status=status, detail=detail)

    # -- up and down -----------------------------------------------------------------------

    def _reached(self, now: float, poll: bool = True) -> None:
        if self.presence.reached(now, poll):
            log.info("{route}: the phone answers again", route=self.route)
        if self.dispatcher.is_down(self.route) is not None:
            self.dispatcher.set_down(self.route, None)

    def _unreachable(self, now: float, reason: str) -> None:
        self._health_at = float("-inf")  # ask for its version again once it answers
        if self.presence.unreachable(now, reason):
            log.warn("{route}: the phone does not answer: {reason}; its messages wait",
                     route=self.route, reason=reason)
        why = f"phone unreachable since {clock(self.presence.unreachable_since)}: {reason}"
        if self.dispatcher.is_down(self.route) != why:
            self.dispatcher.set_down(self.route, why)

    # -- the status page -------------------------------------------------------------------

    def status(self, waiting: Optional[int]) -> Any:
        info: Dict[str, Any] = {"url": self.phone.url, "followed": len(self.followed),
                                "late_sms": self.late}
        if self.health is not None:
            info["health"] = self.health.status
            info["health_checks"] = {name: status for name, status, _ in self.health.checks}
        row = self.presence.row(self.reactor.seconds(), waiting, info)
        if self.late:
            row = row._replace(detail=row.detail + f"; {self.late} SMS reached the phone stamped"
                               " too long ago to tell from its history: not taken (see the log)")
        return row


__all__: List[str] = ["SMSGateChannel", "KIND"]
