"""The SMS Gateway app's URL on the webhook listener: one resource per phone.

The protocol itself is websmsd.android.medic.  What each request does:

- ``GET``: the app's settings check: ``{"medic-gateway": true}``, or 401 for wrong
  credentials (a percent-encoded password, as the app sends it, is accepted).
- Answers are gzipped whenever the request says ``Accept-Encoding: gzip``.
- ``POST``: the poll.  Everything in it is done before the 2xx, because on any 2xx the
  phone forgets what it posted: the received SMS are committed (de-duplicated on the
  phone's id), the status updates applied; anything that fails gets a non-2xx and the
  phone posts the same again.  Updates move a message forward only (websmsd.android.
  medic.next_state): UNSENT or PENDING: the phone has it (stop offering it); SENT: sent;
  DELIVERED: delivered; FAILED (only before SENT): failed, with the phone's reason;
  updates for ids websmsd does not know are acknowledged and ignored.
- The answer offers the SMS due on the route.  The phone never sends an id twice (for an
  id it has, it reports that message's status again), so an SMS offered in an answer
  that may not have arrived is simply offered again until the phone reports on it.
- An SMS the phone may have is kept from the dispatcher: its next attempt is pushed out
  by the retry policy's max_age, so that a phone that goes silent (Android stretching
  its polls, no data) does not see it sent a second time through a fallback route.
"""

from __future__ import annotations

import gzip
from typing import Any, Dict, List, Optional

from twisted.logger import Logger

from websmsd.channel import Outcome
from websmsd.http.site import REPORTS
from websmsd.message import DELIVERED, FAILED, QUEUED, SENDING, SENT, Message

from . import medic
from .answer import Answer
from .polled import PER_ANSWER, PhoneResource, PolledPhone

log = Logger()

# What a store status says about the phone's own (medic) status.
_STORED_AS = {SENT: medic.SENT, DELIVERED: medic.DELIVERED, FAILED: medic.FAILED}
REMEMBER = 2000  # phone statuses kept for messages still "sending"


def outgoing(messages: List[Message]) -> List[medic.OutgoingSMS]:
    return [medic.OutgoingSMS(m.id, m.recipient, m.body) for m in messages]


class SMSGatewayResource(PhoneResource):
    """One SMS Gateway app's URL."""

    def __init__(self, phone: PolledPhone, max_age: float) -> None:
        super().__init__(phone)
        self.settings = phone.phone
        self.max_age = max_age
        # Offered (or found "sending" at start) with no status from the phone yet.
        self.unacknowledged: Dict[str, Message] = {}
        # The phone's last status (UNSENT, PENDING) of messages still "sending".
        self.phone_status: Dict[str, str] = {}

    def internal_error(self) -> Answer:
        return medic.error_answer(500, "websmsd failed on this request; send it again")

    def write(self, request: Any, answer: Answer) -> Any:
        """Every answer gzipped when the request allows it (Android adds Accept-Encoding:
        gzip and inflates the answer itself), however short."""
        if answer.header("Content-Encoding") is None and medic.accepts_gzip(
                request.getHeader(b"accept-encoding")):
            body = gzip.compress(answer.body, mtime=0)
            headers = tuple(h for h in answer.headers if h[0].lower() != "vary")
            answer = Answer(answer.status, body, answer.content_type,
                            headers + (("Content-Encoding", "gzip"), ("Vary", "Accept-Encoding")))
        return super().write(request, answer)

    async def resume(self) -> None:
        """At start: whatever was "sending" on this route may be on the phone, or was
        offered in an answer that never arrived: offer it again (the phone ignores ids it
        has and reports their status)."""
        due = await self.phone.store.due(self.phone.route, float("inf"), 10_000)
        for m in due:
            if m.status == SENDING:
                self.unacknowledged[m.id] = m
        if self.unacknowledged:
            log.info("{route}: {count} SMS were with the phone or offered to it before the"
                     " restart: offered again until it reports on them",
                     route=self.phone.route, count=len(self.unacknowledged))

    # -- dispatch ------------------------------------------------------------------------

    async def handle(self, request: Any) -> None:
        kind = medic.classify(request.method)
        if isinstance(kind, medic.Refusal):
            await self.refuse(request, medic.refusal_answer(kind), kind.reason)
            return
        s = self.settings
        if s.user and not medic.check_credentials(request.getHeader(b"authorization"), s.user,
                                                  s.password or ""):
            await self.refuse(request, medic.unauthorised_answer(),
                              "Basic credentials missing or wrong")
            return
        if kind == medic.HANDSHAKE:
            self.phone.contact(request)
            log.info("{route}: the app checked its settings", route=self.phone.route)
            await self.write(request, medic.handshake_answer())
            return
        await self.poll(request)

    async def poll(self, request: Any) -> None:
        parsed = medic.parse_poll(self.body(request), request.getHeader(b"content-encoding"))
        if isinstance(parsed, medic.Refusal):
            # Never a 2xx: the phone would forget what it posted.
            await self.refuse(request, medic.refusal_answer(parsed), parsed.reason)
            return
        phone = self.phone
        phone.contact(request, poll=True)
        try:
            await self._received(parsed.messages)
            await self._apply(parsed.updates)
            again = await self._still_unacknowledged()
            taken = await phone.take(PER_ANSWER - len(again))
        except Exception:
            log.failure("{route}: could not process the phone's poll; it will post it again",
                        route=phone.route)
            await self.refuse(request, medic.error_answer(
                503, "websmsd could not store this poll; send it again"), "could not store a poll")
            return
        offer = again + taken
        sent = await self.write(request, medic.poll_answer(
            outgoing(offer), request.getHeader(b"accept-encoding")))
        if not sent:
            await phone.release(taken, "the phone left before the answer offering it")
            return
        for m in offer:
            self.unacknowledged[m.id] = m
        if taken:
            await self._keep_for_phone([m.id for m in taken])
            phone.presence.count("offered", len(taken))
            log.info("{route}: {count} SMS offered to the phone", route=phone.route,
                     count=len(taken))

    # -- the phone's received SMS --------------------------------------------------------

    async def _received(self, messages: Any) -> None:
        if not messages:
            return
        phone = self.phone
        inbound = [phone.inbound(m.sender, m.content, m.id) for m in messages]
        new = await phone.wiring.accept(inbound)
        for message, is_new in zip(inbound, new):
            phone.presence.count("received" if is_new else "duplicates")
            phone.metrics.count("android_received", phone.route)
            log.info("{route}: SMS {id} from the phone ({how})", route=phone.route, id=message.id,
                     how="stored" if is_new else "a repeat, stored before")

    # -- status updates ----------------------------------------------------------------

    async def _apply(self, updates: Any) -> None:
        if not updates:
            return
        phone = self.phone
        messages: Dict[str, Message] = {}
        current: Dict[str, Optional[str]] = {}
        for u in updates:
            self.unacknowledged.pop(u.id, None)  # any status: the phone has it
            if u.id in current:
                continue
            m = await phone.ours(u.id, (QUEUED, SENDING, SENT, DELIVERED, FAILED))
            if m is None:
                log.info("{route}: an update for {id}, not a message of this phone: ignored",
                         route=phone.route, id=u.id)
                continue
            messages[u.id] = m
            current[u.id] = _STORED_AS.get(m.status, self.phone_status.get(u.id))
        changes = medic.fold_updates(current, updates)
        pin: List[str] = []
        now = self.reactor.seconds()
        for msg_id, (status, reason) in changes.items():
            m = messages[msg_id]
            if status in (medic.UNSENT, medic.PENDING):
                if m.status == QUEUED:
                    # Offered in an answer thought lost: the phone has it after all.
                    await phone.store.claim([msg_id])
                if m.status in (QUEUED, SENDING):
                    pin.append(msg_id)
                self._note(msg_id, status)
                continue
            self.phone_status.pop(msg_id, None)
            if status == medic.SENT:
                await phone.dispatcher.record(m, Outcome.sent("the phone sent it"))
                phone.metrics.sent(phone.route, m.updated or now, now, True)
            elif status == medic.DELIVERED and m.status == SENT:
                await phone.store.report(msg_id, [phone.route], DELIVERED,
                                         "the phone got a delivery report", message_id=msg_id)
            elif status == medic.DELIVERED:
                await phone.dispatcher.record(m, Outcome.delivered(
                    "the phone got a delivery report"))
                phone.metrics.sent(phone.route, m.updated or now, now, True)
            else:  # FAILED, only before SENT: the phone retried 20 times already
                why = f"the phone could not send it: {reason or 'no reason given'}"
                await phone.dispatcher.record(m, Outcome.failed(why, permanent=True))
                phone.metrics.sent(phone.route, m.updated or now, now, False, why)
            word = {medic.SENT: SENT, medic.DELIVERED: DELIVERED}.get(status, FAILED)
            phone.metrics.count(REPORTS, word)
            phone.presence.count(f"reported_{word}")
            phone.presence.result(now, f"{msg_id} {word}" + (f": {reason}" if reason else ""))
            log.info("{route}: {id} {status}{why}", route=phone.route, id=msg_id, status=word,
                     why=f" ({reason})" if reason else "")
        if pin:
            await self._keep_for_phone(pin)

    def _note(self, msg_id: str, status: str) -> None:
        self.phone_status[msg_id] = status
        while len(self.phone_status) > REMEMBER:
            self.phone_status.pop(next(iter(self.phone_status)))

    async def _keep_for_phone(self, ids: List[str]) -> None:
        """The phone may have these: the dispatcher is not to move them to a fallback
        route while the phone is silent (until they are max_age old)."""
        until = self.reactor.seconds() + self.max_age
        await self.phone.store.update([(i, {"next_attempt": until}) for i in ids])

    async def _still_unacknowledged(self) -> List[Message]:
        again = []
        for msg_id in list(self.unacknowledged):
            if len(again) >= PER_ANSWER:
                break
            current = await self.phone.ours(msg_id, (SENDING,))
            if current is None:
                del self.unacknowledged[msg_id]
            else:
                again.append(current)
        return again
