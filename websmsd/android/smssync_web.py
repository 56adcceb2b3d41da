"""SMSsync's Sync URL on the webhook listener: one resource per phone.

What each request does (the protocol itself is websmsd.android.smssync):

- a posted SMS is committed (de-duplicated on the phone's message_id) before the 200
  that makes the phone mark it synced; a store failure gets a failure payload (503), so
  the phone keeps the SMS and posts it again.  The "Test integration" POST is answered
  and never stored.  With `instant_reply`, SMS due on the route ride in that answer.
- ``GET ?task=send`` (secret checked, and echoed: the phone sends nothing otherwise)
  offers the SMS due on the route.
- When is an SMS handed over?  With the app's Message Results API off (its default)
  the phone sends whatever it is given, at once, and never says so; with it on, it first
  asks ``POST ?task=sent`` which of the offered SMS to send, and sends only those
  confirmed.  `results_api` says which (yes, no), or `auto` (the default) learns it: a
  ``task=sent`` or a ``GET ?task=result`` (made only with the API on) shows it is on
  (remembered in the store); a ``task=send`` poll with no ``task=sent`` since the last
  offer shows it is off.  So:

  - off: an SMS counts as sent once the answer offering it left websmsd, and is never
    offered again;
  - on: it counts as sent once the answer confirming it left websmsd (only what was
    offered to this phone and is still waiting is confirmed: the request has no
    secret); one the phone did not confirm before its next poll was not taken: a
    failed attempt, offered again by the retry policy;
  - not known yet: an offered SMS is "sending" until the phone confirms it (then as
    on) or polls again without confirming anything (then as off: it sent it).  Until
    then it is kept from fallback routes (the phone may be sending it).

  The store is written *after* the answer went out: a daemon killed between the phone's
  request and the answer never counts an SMS the phone did not get.
- ``task=result`` reports are hints (the app never fills sent codes; a sent SMS usually
  has no entry): a delivery report moves an SMS to delivered, a send failure to failed,
  never backwards.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any, Dict, List, Optional, Tuple

from twisted.logger import Logger

from websmsd.channel import Outcome
from websmsd.http.site import REPORTS
from websmsd.message import DELIVERED, FAILED, SENDING, SENT, Message

from . import smssync
from .answer import Answer
from .basicauth import check_basic
from .polled import PER_ANSWER, PhoneResource, PolledPhone
from .presence import clock

log = Logger()

# SMS handed over and remembered for task=result (and a late task=sent): how many, how long.
REMEMBER = 500
REMEMBER_FOR = 86400.0


def outgoing(messages: List[Message]) -> List[smssync.OutgoingSMS]:
    return [smssync.OutgoingSMS(m.id, m.recipient, m.body) for m in messages]


class SMSsyncResource(PhoneResource):
    """One SMSsync phone's Sync URL."""

    def __init__(self, phone: PolledPhone, max_age: float) -> None:
        super().__init__(phone)
        self.settings = phone.phone
        self.max_age = max_age
        self.state_name = f"{phone.route}:results_api"
        # The app's Message Results API: True (on), False (off), None (not known yet).
        self.results_api: Optional[bool] = {"yes": True, "no": False}.get(self.settings.results_api)
        self.learned = False  # results_api learned from the phone (not configured)
        # Offered in a task=send answer, waiting for the phone's confirmation (or, not
        # knowing its Results API yet, for its next poll).
        self.offered: Dict[str, Tuple[Message, float]] = {}
        self.confirmed_since_poll = False  # a task=sent came after the last task=send
        # Handed over lately: uuid -> when (for task=result).
        self.handed: "OrderedDict[str, float]" = OrderedDict()
        # Counted as sent when offered (Results API off), not confirmed yet: a phone whose
        # user turned the API on meanwhile asks task=sent for them once.
        self.confirmable: "OrderedDict[str, float]" = OrderedDict()
        phone.info.append(self.info)

    def internal_error(self) -> Answer:
        return smssync.incoming_refused("websmsd failed on this request; it will be retried", 500)

    def info(self) -> dict:
        known = {True: "on", False: "off", None: "not known yet"}[self.results_api]
        how = "learned" if self.learned else ("configured" if self.results_api is not None else "")
        return {"results_api": f"{known} ({how})" if how else known, "offered": len(self.offered)}

    async def resume(self) -> None:
        """At start: the Results API as learned before; an SMS left "sending" was either
        offered in an answer that left (kept from the dispatcher until the phone's next
        poll settles it) or claimed for an answer that may never have left: that one waits
        for the phone's next poll again."""
        if self.settings.results_api == "auto":
            if await self.phone.store.state(self.state_name) == "on":
                self.results_api, self.learned = True, True
        now = self.reactor.seconds()
        due = await self.phone.store.due(self.phone.route, float("inf"), 10_000)
        stale = []
        for m in due:
            if m.status != SENDING:
                continue
            if m.next_attempt > now:
                self.offered[m.id] = (m, m.updated)
            else:
                stale.append(m)
        if stale:
            log.info("{route}: {count} SMS claimed before the restart and not offered:"
                     " offered again", route=self.phone.route, count=len(stale))
            await self.phone.release(stale, "claimed before websmsd restarted; not handed over")

    async def _learn(self, on: bool, why: str) -> None:
        if self.settings.results_api != "auto" or self.results_api is on:
            return
        self.results_api, self.learned = on, True
        log.info("{route}: the app's Message Results API is {state} ({why})", route=self.phone.route,
                 state="on" if on else "off", why=why)
        if on:
            await self.phone.store.add([], state=(self.state_name, "on"))

    # -- dispatch ------------------------------------------------------------------------

    async def handle(self, request: Any) -> None:
        query = self.raw_query(request)
        kind = smssync.classify(request.method, query)
        if isinstance(kind, smssync.Refusal):
            await self.refuse(request, smssync.refusal_answer(kind), kind.reason)
            return
        s = self.settings
        if s.user and not check_basic(request.getHeader(b"authorization"), s.user, s.password or ""):
            answer = smssync.incoming_refused("user or password wrong (the Sync URL's user:pass@)", 401)
            answer = Answer(answer.status, answer.body, answer.content_type,
                            (("WWW-Authenticate", 'Basic realm="websmsd", charset="UTF-8"'),))
            await self.refuse(request, answer, "Basic credentials missing or wrong")
            return
        if kind == smssync.INCOMING:
            await self.incoming(request, query)
            return
        if kind == smssync.SENT_ACK:
            await self.sent_ack(request)  # the app sends no secret with it
            return
        secret = smssync.parse_query(query).secret
        refused = smssync.check_secret(secret, s.secret)
        if refused is not None:
            # No task and no messages in the answer: the phone does nothing.
            await self.refuse(request, smssync.task_refused(refused.reason, refused.status),
                              f"{kind}: {refused.reason}")
            return
        if kind == smssync.SEND_POLL:
            await self.send_poll(request, secret)
        elif kind == smssync.RESULT_QUERY:
            self.phone.contact(request)
            await self._learn(True, "it asks task=result")
            await self.write(request, smssync.result_query_answer(self._awaiting_results()))
        else:
            await self.result_report(request)

    # -- a received SMS --------------------------------------------------------------------

    async def incoming(self, request: Any, query: bytes) -> None:
        parsed = smssync.parse_incoming(request.method, request.getHeader(b"content-type"),
                                        self.body(request), query, secret=self.settings.secret)
        if isinstance(parsed, smssync.Refusal):
            await self.refuse(request, smssync.refusal_answer(parsed), parsed.reason)
            return
        phone = self.phone
        phone.contact(request)
        if isinstance(parsed, smssync.TestIntegration):
            log.info("{route}: the app's \"Test integration\" (not an SMS)", route=phone.route)
            await self.write(request, smssync.test_integration_answer())
            return
        message = phone.inbound(parsed.sender, parsed.text, parsed.message_id)
        try:
            new = (await phone.wiring.accept([message]))[0]
        except Exception:
            log.failure("{route}: could not store an SMS from the phone; it will post it again",
                        route=phone.route)
            await self.refuse(request, smssync.incoming_refused(
                "websmsd could not store the SMS; the phone keeps it and posts it again", 503),
                "could not store the SMS")
            return
        phone.presence.count("received" if new else "duplicates")
        phone.metrics.count("android_received", phone.route)
        log.info("{route}: SMS {id} from the phone ({how})", route=phone.route, id=message.id,
                 how="stored" if new else f"a repeat of message_id {parsed.message_id}, stored before")
        replies = await phone.take(PER_ANSWER) if self.settings.instant_reply else []
        sent = await self.write(request, smssync.incoming_accepted(outgoing(replies)))
        if sent:
            # The app sends an instant reply at once, without asking task=sent.
            await phone.handed_over(replies, "in the answer to a posted SMS (instant reply)")
            self._remember(m.id for m in replies)
        else:
            await phone.release(replies, "the phone left before the answer offering it")

    # -- task=send ---------------------------------------------------------------------------

    async def send_poll(self, request: Any, secret: Optional[str]) -> None:
        phone = self.phone
        phone.contact(request, poll=True)
        await self._settle_offers()
        self.confirmed_since_poll = False
        now = self.reactor.seconds()
        taken = await phone.take(PER_ANSWER)
        sent = await self.write(request, smssync.send_task_answer(outgoing(taken), secret))
        if not sent:
            await phone.release(taken, "the phone left before the answer offering it")
        elif self.results_api is False:
            await phone.handed_over(taken, "offered to the phone, which sends what it is given"
                                           " (Message Results API off)")
            self._remember((m.id for m in taken), confirmable=True)
        else:
            for m in taken:
                self.offered[m.id] = (m, now)
            if self.results_api is None and taken:
                # The phone may be sending them (if its Results API is off): not for a
                # fallback route while it is silent.
                until = now + self.max_age
                await phone.store.update([(m.id, {"next_attempt": until}) for m in taken])

    async def _settle_offers(self) -> None:
        """What became of the SMS offered at an earlier task=send, now that the phone
        polls again (the app asks task=sent right after each task=send, when it does)."""
        if not self.offered:
            return
        if self.results_api is None and not self.confirmed_since_poll:
            await self._learn(False, "it polled again without confirming what it was offered")
        pending = []
        for uuid, (_, offered_at) in list(self.offered.items()):
            del self.offered[uuid]
            current = await self.phone.ours(uuid, (SENDING,))
            if current is not None:
                pending.append((current, offered_at))
        if not pending:
            return
        if self.results_api is False:
            await self.phone.handed_over([m for m, _ in pending],
                                         "offered to the phone, which sends what it is given"
                                         " (Message Results API off)",
                                         min(t for _, t in pending))
            self._remember((m.id for m, _ in pending), confirmable=True)
            return
        if self.confirmed_since_poll:
            log.warn("{route}: {count} SMS offered at the last poll were not confirmed by the"
                     " phone (task=sent): offered again later", route=self.phone.route,
                     count=len(pending))
        else:
            # Known to confirm, yet no task=sent at all: lost on the way, or the app's
            # Results API was turned off (then it sent them, and sends each offer again).
            log.warn("{route}: the phone polled again without confirming the {count} SMS it"
                     " was offered: offered again later (if its Message Results API was"
                     " turned off, set results_api = no, or each offer is sent)",
                     route=self.phone.route, count=len(pending))
        await self.phone.dispatcher.record_all([(m, Outcome.failed(
            f"offered at {clock(t)}, not confirmed by the phone (task=sent), so not sent;"
            " offered again later")) for m, t in pending])

    # -- task=sent ---------------------------------------------------------------------------

    async def sent_ack(self, request: Any) -> None:
        uuids = smssync.parse_sent_ack(self.body(request))
        if isinstance(uuids, smssync.Refusal):
            await self.refuse(request, smssync.refusal_answer(uuids), uuids.reason)
            return
        phone = self.phone
        phone.contact(request)
        self.confirmed_since_poll = True
        if self.results_api is False and self.settings.results_api == "no":
            log.warn("{route}: the phone confirms what it sends (task=sent): its Message Results"
                     " API is on; set results_api = yes (or auto)", route=phone.route)
        await self._learn(True, "it confirms with task=sent")
        pending: Dict[str, Message] = {}
        earlier: List[str] = []
        for uuid in uuids:
            if uuid in pending or uuid in earlier:
                continue
            if uuid in self.offered:
                current = await phone.ours(uuid, (SENDING,))
                if current is not None:
                    pending[uuid] = current
                else:
                    del self.offered[uuid]
            elif uuid in self.confirmable:
                earlier.append(uuid)  # counted as sent when offered: confirm it once
        refused = len(set(uuids)) - len(pending) - len(earlier)
        if refused:
            log.warn("{route}: task=sent names {count} uuids not offered to this phone or no"
                     " longer waiting: not confirmed", route=phone.route, count=refused)
        sent = await self.write(request, smssync.sent_ack_answer(uuids, set(pending) | set(earlier)))
        if not sent:
            return  # the phone got no confirmation: it sends nothing
        for uuid in earlier:
            self.confirmable.pop(uuid, None)
        if pending:
            since = min(self.offered[u][1] for u in pending)
            for uuid in pending:
                del self.offered[uuid]
            await phone.handed_over(list(pending.values()), "confirmed by the phone (task=sent)",
                                    since)
            self._remember(pending)

    # -- task=result ---------------------------------------------------------------------------

    def _remember(self, uuids: Any, confirmable: bool = False) -> None:
        now = self.reactor.seconds()
        for uuid in uuids:
            self.handed[uuid] = now
            self.handed.move_to_end(uuid)
            if confirmable:
                self.confirmable[uuid] = now
        self._expire()

    def _expire(self) -> None:
        now = self.reactor.seconds()
        for remembered, keep_for in ((self.handed, REMEMBER_FOR), (self.confirmable, 3600.0)):
            while remembered and (len(remembered) > REMEMBER
                                  or next(iter(remembered.values())) < now - keep_for):
                remembered.popitem(last=False)

    def _awaiting_results(self) -> List[str]:
        self._expire()
        return list(self.handed)

    async def result_report(self, request: Any) -> None:
        report = smssync.parse_result_report(self.body(request))
        if isinstance(report, smssync.Refusal):
            await self.refuse(request, smssync.refusal_answer(report), report.reason)
            return
        phone = self.phone
        phone.contact(request)
        for result in report.results:
            hint = smssync.result_hint(result)
            if hint is None:
                continue
            try:
                m = await phone.ours(result.uuid, (SENDING, SENT, DELIVERED, FAILED))
                if m is None:
                    continue
                await phone.store.report(result.uuid, [phone.route], hint.status, hint.reason,
                                         message_id=result.uuid)
            except Exception:
                log.failure("{route}: could not record a result", route=phone.route)
                continue
            phone.metrics.count(REPORTS, hint.status)
            phone.presence.count(f"reported_{hint.status}")
            phone.presence.result(self.reactor.seconds(), f"{result.uuid} {hint.status}: {hint.reason}")
            if hint.status in (DELIVERED, FAILED):
                self.handed.pop(result.uuid, None)
            log.info("{route}: {id} {status} ({reason})", route=phone.route, id=result.uuid,
                     status=hint.status, reason=hint.reason)
        # The phone ignores this answer.
        await self.write(request, smssync.result_report_answer())
