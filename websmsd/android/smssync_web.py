"""SMSsync's Sync URL on the webhook listener: one resource per phone.

What each request does (the protocol itself is websmsd.android.smssync):

- a posted SMS is committed (de-duplicated on the phone's message_id) before the 200
  that makes the phone mark it synced; a store failure gets a failure payload (503), so
  the phone keeps the SMS and posts it again.  The "Test integration" POST is answered
  and never stored.  With `instant_reply`, SMS due on the route ride in that answer.
- ``GET ?task=send`` (secret checked, and echoed: the phone sends nothing otherwise)
  offers the SMS due on the route.
- When is an SMS handed over?  With the Message Results API off (the app's default) the
  phone sends whatever it is given, at once, and never says so: an SMS counts as sent
  once the answer offering it left websmsd, and is never offered again.  With it on
  (`results_api = yes`) the phone first asks ``POST ?task=sent`` which of the offered
  SMS to send and sends only those confirmed: an SMS counts as sent once the answer
  confirming it left websmsd.  One offered but not confirmed by the phone's next
  ``task=send`` (the app confirms right after each) was not taken: that attempt failed,
  and the retry policy offers it again later (the phone sends nothing unconfirmed; a
  phone whose Results API is off after all would send each offer: a bounded number).  Either way the
  store is written *after* the answer went out: a daemon killed between the phone's
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

    def __init__(self, phone: PolledPhone) -> None:
        super().__init__(phone)
        self.settings = phone.phone
        # Results API on: offered in a task=send answer, not confirmed yet.
        self.offered: Dict[str, Tuple[Message, float]] = {}
        # Handed over lately: uuid -> when (for task=result, and a task=sent that comes
        # although results_api says the app does not send it).
        self.handed: "OrderedDict[str, float]" = OrderedDict()
        self._told_results_api = False

    def internal_error(self) -> Answer:
        return smssync.incoming_refused("websmsd failed on this request; it will be retried", 500)

    async def resume(self) -> None:
        """At start: an SMS left "sending" was offered before the restart and not known
        to be handed over (the daemon stopped between the phone's request and the
        answer, or before a confirmation): it waits for the phone's next poll again."""
        due = await self.phone.store.due(self.phone.route, float("inf"), 10_000)
        stale = [m for m in due if m.status == SENDING]
        if stale:
            log.info("{route}: {count} SMS offered before the restart and not handed over:"
                     " offered again", route=self.phone.route, count=len(stale))
            await self.phone.release(stale, "offered before websmsd restarted; not handed over")

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
        if isinstance(parsed, smssync.TestIntegration):
            phone.contact(request)
            log.info("{route}: the app's \"Test integration\" (not an SMS)", route=phone.route)
            await self.write(request, smssync.test_integration_answer())
            return
        phone.contact(request)
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
            await phone.handed_over(replies, "in the answer to a posted SMS (instant reply)")
            self._remember(m.id for m in replies)
        else:
            await phone.release(replies, "the phone left before the answer offering it")

    # -- task=send ---------------------------------------------------------------------------

    async def send_poll(self, request: Any, secret: Optional[str]) -> None:
        phone = self.phone
        phone.contact(request, poll=True)
        now = self.reactor.seconds()
        if not self.settings.results_api:
            taken = await phone.take(PER_ANSWER)
            sent = await self.write(request, smssync.send_task_answer(outgoing(taken), secret))
            if sent:
                await phone.handed_over(taken, "offered to the phone, which sends what it is"
                                               " given (Message Results API off)")
                self._remember(m.id for m in taken)
            else:
                await phone.release(taken, "the phone left before the answer offering it")
            return
        await self._not_confirmed(now)
        taken = await phone.take(PER_ANSWER)
        for m in taken:
            self.offered[m.id] = (m, now)
        await self.write(request, smssync.send_task_answer(outgoing(taken), secret))

    async def _not_confirmed(self, now: float) -> None:
        """SMS offered at an earlier task=send and never confirmed: the phone asks task=sent
        right after each task=send, so it did not take them.  Each counts as a failed
        attempt and is offered again by the retry policy (so that a phone whose Message
        Results API is off after all, which sends what it is offered, does not get
        them again at every poll)."""
        pairs = []
        for uuid, (m, offered_at) in list(self.offered.items()):
            del self.offered[uuid]
            current = await self.phone.ours(uuid, (SENDING,))
            if current is not None:
                pairs.append((current, Outcome.failed(
                    f"offered at {clock(offered_at)}, not confirmed by the phone (task=sent);"
                    " offered again later (if the app's Message Results API is off, set"
                    " results_api = no: the phone sent it)")))
        if pairs:
            log.warn("{route}: {count} SMS offered before were not confirmed by task=sent:"
                     " offered again later (if the app's Message Results API is off, set"
                     " results_api = no, or each is sent again)", route=self.phone.route,
                     count=len(pairs))
            await self.phone.dispatcher.record_all(pairs)

    # -- task=sent ---------------------------------------------------------------------------

    async def sent_ack(self, request: Any) -> None:
        uuids = smssync.parse_sent_ack(self.body(request))
        if isinstance(uuids, smssync.Refusal):
            await self.refuse(request, smssync.refusal_answer(uuids), uuids.reason)
            return
        phone = self.phone
        phone.contact(request)
        if not self.settings.results_api:
            if not self._told_results_api:
                self._told_results_api = True
                log.warn("{route}: the phone confirms what it sends (task=sent): its Message"
                         " Results API is on; set results_api = yes", route=phone.route)
            self._expire()
            # Counted as sent when offered: confirm them, or the phone sends nothing.
            await self.write(request, smssync.sent_ack_answer(uuids, self.handed))
            return
        pending: Dict[str, Message] = {}
        for uuid in uuids:
            if uuid in self.offered and uuid not in pending:
                current = await phone.ours(uuid, (SENDING,))
                if current is not None:
                    pending[uuid] = current
                else:
                    del self.offered[uuid]
        unknown = [u for u in uuids if u not in pending]
        if unknown:
            log.warn("{route}: task=sent names {count} uuids not offered to this phone or no"
                     " longer pending: not confirmed", route=phone.route, count=len(unknown))
        sent = await self.write(request, smssync.sent_ack_answer(uuids, pending))
        if sent and pending:
            since = min(self.offered[u][1] for u in pending)
            for uuid in pending:
                del self.offered[uuid]
            await phone.handed_over(list(pending.values()), "confirmed by the phone (task=sent)",
                                    since)
            self._remember(pending)

    # -- task=result ---------------------------------------------------------------------------

    def _remember(self, uuids: Any) -> None:
        now = self.reactor.seconds()
        for uuid in uuids:
            self.handed[uuid] = now
            self.handed.move_to_end(uuid)
        self._expire()

    def _expire(self) -> None:
        now = self.reactor.seconds()
        while self.handed and (len(self.handed) > REMEMBER
                               or next(iter(self.handed.values())) < now - REMEMBER_FOR):
            self.handed.popitem(last=False)

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
