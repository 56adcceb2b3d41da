"""A GoIP SIM over SMPP: one transceiver bind per SIM (system_id + two-digit channel).

Outbound, `send(message)` submits the text as `websmsd.smpp.pdu.submits_for` builds it (a
long text in message_payload by default: a GoIP does not join UDH parts) and maps the
answer onto an Outcome: accepted is *sent* (a receipt may move it on later; none is
waited for), ESME_RTHROTTLED / ESME_RMSGQFUL slow the SIM down and try again later
without spending an attempt, a lost bind pauses the route, no answer (or a connection
lost before it) is a transient failure that may have been sent.

Inbound, each deliver_sm is answered only after what it carries is committed:
- a delivery receipt moves the message whose submit_sm_resp id it names (in any of the
  forms `receipt.id_variants` gives: GoIP firmware writes the id in decimal where the
  resp had hex) to delivered or failed;
- a text is handed to the PBX, unless it is the SMSC's resend of one committed before a
  reconnect (see `websmsd.goip.inbox`);
- a part of a long text is kept (durably) until the rest has come, or delivered marked
  incomplete after `parts_timeout`.
The bind's state drives the route: not bound, the route pauses (no attempt spent).
"""

from __future__ import annotations

import os
from collections import OrderedDict
from typing import Any, Dict, List, Optional

from twisted.application import service
from twisted.application.internet import backoffPolicy
from twisted.internet import defer, task
from twisted.logger import Logger

from websmsd import sms
from websmsd.channel import ChannelState, Outcome
from websmsd.goip.inbox import InboundLog, content_key
from websmsd.goip.sim import SimInfo, clock_text
from websmsd.message import Message
from websmsd.smpp import pdu as P
from websmsd.smpp import receipt as R
from websmsd.smpp.esme import (BIND_FAILED, BOUND, STOPPED, BindLost, NotBound, SMPPBind,
                               SubmitTimeout)

log = Logger()

# Statuses after which the same submit_sm cannot succeed.
PERMANENT = frozenset({
    P.ESME_RINVMSGLEN, P.ESME_RINVESMCLASS, P.ESME_RINVDSTADR, P.ESME_RINVDSTTON,
    P.ESME_RINVDSTNPI, P.ESME_RINVSRCADR, P.ESME_RINVSRCTON, P.ESME_RINVSRCNPI,
    P.ESME_RINVREGDLVFLG, P.ESME_RINVDFTMSGID, P.ESME_RX_P_APPN, P.ESME_RINVOPTPARSTREAM,
    P.ESME_ROPTPARNOTALLWD, P.ESME_RINVPARLEN, P.ESME_RMISSINGOPTPARAM,
    P.ESME_RINVOPTPARAMVAL, P.ESME_RINVNUMDESTS,
})
# "Not now": the SMSC's queue is full or it wants us slower.
THROTTLE = frozenset({P.ESME_RTHROTTLED, P.ESME_RMSGQFUL})

THROTTLE_FIRST = 1.0  # seconds the SIM waits after a first throttle answer...
THROTTLE_MAX = 60.0  # ...doubled at each one after it, up to this
COMMIT_RETRY = 5.0  # a failed commit with no deliver_sm to retry it is tried again


class _Commit:
    """Messages, content keys and answers that go into one store transaction."""

    def __init__(self) -> None:
        self.messages: List[Message] = []
        self.keys: Dict[str, str] = {}  # content key -> connection it came on
        self.waiters: List[defer.Deferred] = []


class SMPPSim(service.Service):
    """One SIM of a GoIP over SMPP: its bind, its route's sink, its status row."""

    def __init__(self, info: SimInfo, *, reactor: Any, endpoint: Any, accept: Any,
                 store: Any, dispatcher: Any, metrics: Any, reports: Any = None):
        sim = info.sim
        self.info = info
        self.sim = sim
        self.route = info.route
        self.name = f"goip {info.route} smpp"
        self.reactor = reactor
        self.accept = accept
        self.store = store
        self.dispatcher = dispatcher
        self.metrics = metrics
        self.reports = reports  # a Counter of delivery reports by status (or None)
        self.bind = SMPPBind(
            reactor, endpoint, sim.bind_system_id, sim.password or "",
            enquire_link=sim.enquire_link, response_timeout=sim.response_timeout,
            window=sim.window, on_deliver=self._on_deliver, on_state=self._on_state,
            name=info.route, retry_policy=backoffPolicy(1.0, sim.reconnect_max, 2.0),
            bind_failed_delay=sim.bind_failed_delay)
        self.inbound = InboundLog(window=sim.resend_window, parts_timeout=sim.parts_timeout)
        self.state_name = f"{info.route}:smpp-inbound"
        # Which connection a deliver_sm came on: new at every bind, and another after a
        # restart (a resend is recognised by arriving on another one).
        self._token = os.urandom(4).hex()
        self._connections = 0
        self.connection = f"{self._token}:0"
        self._unsaved = _Commit()  # waiting for the next commit (or retried from a failed one)
        self._committing: Optional[_Commit] = None
        self._retry: Any = None
        self._expiry: Any = None
        # Throttling: no submit before hold_until; the next wait doubles.
        self._hold_until = 0.0
        self._throttle_delay = THROTTLE_FIRST
        # Ids of the further parts of a text sent in several submit_sm (udh, sar), to
        # the provider id of its first part, for their receipts.
        self._part_ids: "OrderedDict[str, str]" = OrderedDict()
        self.counts = {"received": 0, "resends": 0, "incomplete": 0, "receipts": 0,
                       "receipts_unmatched": 0, "throttled": 0, "commit_failures": 0}

    # -- service --------------------------------------------------------------------------

    def startService(self) -> None:
        super().startService()
        d = self.store.state(self.state_name)
        d.addCallback(self._restored)
        d.addErrback(lambda f: log.failure(
            "GoIP {route}: could not read the saved SMPP inbound state; starting without it",
            f, route=self.route))
        d.addCallback(lambda _: self._start_bind())

    def _restored(self, text: Optional[str]) -> None:
        for problem in self.inbound.restore(text):
            log.warn("GoIP {route}: {problem}", route=self.route, problem=problem)
        if self.inbound.parts:
            log.info("GoIP {route}: {n} long SMS waiting for more parts since before the"
                     " restart", route=self.route, n=len(self.inbound.parts))
        self._plan_expiry()

    def _start_bind(self) -> None:
        if self.running and not self.bind.running:
            self.bind.startService()

    def stopService(self) -> Any:
        super().stopService()
        for timer in (self._retry, self._expiry):
            if timer is not None and timer.active():
                timer.cancel()
        self._retry = self._expiry = None
        if self.bind.running:
            return self.bind.stopService()
        return None

    # -- the bind's state drives the route --------------------------------------------------

    def check(self) -> None:
        """Tell the dispatcher whether the route can carry messages now."""
        if self.bind.bound:
            self.dispatcher.set_down(self.route, None)
        elif self.bind.state == STOPPED:
            self.dispatcher.set_down(self.route, f"SMPP bind as {self.sim.bind_system_id}:"
                                     " not bound yet")
        else:
            self.dispatcher.set_down(self.route, f"SMPP {self.bind.state}: {self.bind.detail}")

    def _on_state(self, state: str, detail: str) -> None:
        if state == BOUND:
            self._connections += 1
            self.connection = f"{self._token}:{self._connections}"
        self.check()

    # -- outbound ---------------------------------------------------------------------------

    def send(self, message: Message) -> defer.Deferred:
        return defer.ensureDeferred(self._send(message))

    def _submits(self, message: Message) -> List[dict]:
        sim = self.sim
        dest = message.recipient
        if sim.dest_ton == "auto":
            dest_ton = 1 if dest.startswith("+") else 0
        else:
            dest_ton = int(sim.dest_ton)
        # A reference of its own per message, the same at every try (a resumed text's
        # parts must join those sent before).
        ref = int(message.id[-4:], 16) if len(message.id) >= 4 else 0
        return P.submits_for(
            dest, message.body, source="", source_ton=5, source_npi=1, dest_ton=dest_ton,
            dest_npi=1, encoding=None if sim.data_coding == "auto" else sim.data_coding,
            long_method=sim.long_method, ref=ref,
            registered_delivery=sim.registered_delivery)

    async def _send(self, message: Message) -> Outcome:
        hold = self._hold_until - self.reactor.seconds()
        if hold > 0:
            # The GoIP asked us to slow down: this send waits for the hold to end (so
            # the route sends no faster than the GoIP takes), rather than making the
            # dispatcher go through its whole queue answering "later".
            await task.deferLater(self.reactor, hold, lambda: None)
        try:
            submits = self._submits(message)
        except (P.PDUError, sms.SMSError) as e:
            return Outcome.failed(f"cannot be sent as SMS: {e}", permanent=True)
        start = message.progress if 0 < message.progress < len(submits) else 0
        ids: List[str] = []
        for index in range(start, len(submits)):
            part = f" (part {index + 1} of {len(submits)})" if len(submits) > 1 else ""
            resume = {"progress": index} if index > start else {}
            try:
                result = await self.bind.submit(submits[index])
            except NotBound as e:
                if resume:
                    return Outcome.later(1.0, f"bind lost{part}: {e}", **resume)
                if self.bind.bound:  # bound again meanwhile: just try again soon
                    return Outcome.later(1.0, str(e))
                return Outcome.route_down(f"SMPP not bound: {e}")
            except (SubmitTimeout, BindLost) as e:
                reason = f"{e}{part}; the SMS may have been sent"
                if resume:
                    return Outcome.later(self._throttle_delay, reason, **resume)
                return Outcome.failed(reason)
            except P.PDUError as e:
                return Outcome.failed(f"cannot be sent as SMS{part}: {e}", permanent=True)
            if result.ok:
                if result.message_id:
                    ids.append(result.message_id)
                continue
            return self._refused(result.status, part, submits[index], resume)
        self._throttle_delay = THROTTLE_FIRST
        provider_id = None
        if ids:
            variants = R.id_variants(ids[0])
            provider_id = variants[0] if variants else None
            for other in ids[1:]:
                for v in R.id_variants(other):
                    self._part_ids[v] = provider_id or ""
            while len(self._part_ids) > 1000:
                self._part_ids.popitem(last=False)
        return Outcome.sent(provider_id=provider_id)

    def _refused(self, status: int, part: str, fields: dict, resume: dict) -> Outcome:
        name = f"{P.status_name(status)} (0x{status:08X})"
        if status in THROTTLE:
            now = self.reactor.seconds()
            delay = self._throttle_delay
            self._throttle_delay = min(delay * 2, THROTTLE_MAX)
            self._hold_until = max(self._hold_until, now + delay)
            self._count("throttled")
            log.info("GoIP {route}: the GoIP answered {status}; sending again in {delay} s",
                     route=self.route, status=name, delay=delay)
            return Outcome.later(delay, f"the GoIP answered {name}{part}; slowing down",
                                 code=status, **resume)
        if status == P.ESME_RINVBNDSTS:
            return Outcome.route_down(f"the GoIP says the bind is not bound ({name})",
                                      code=status)
        reason = f"the GoIP refused the SMS{part}: {name}"
        if status in PERMANENT:
            if "message_payload" in fields and status in (
                    P.ESME_ROPTPARNOTALLWD, P.ESME_RINVOPTPARSTREAM, P.ESME_RINVPARLEN):
                reason += "; if this GoIP takes no message_payload, set long_method = udh"
            return Outcome.failed(reason, permanent=True, code=status)
        return Outcome.failed(reason, code=status)

    # -- inbound ----------------------------------------------------------------------------

    def _on_deliver(self, pdu: P.PDU) -> defer.Deferred:
        found = R.parse_receipt(pdu)
        if found is not None:
            return self._receipt(found)
        now = self.reactor.seconds()
        key = content_key(pdu)
        connection = self.connection
        if self._committing is not None and key in self._committing.keys:
            return self._wait_for(self._committing)  # a copy of what is being committed
        if key in self._unsaved.keys:
            return self._commit_soon()  # a copy of what a failed commit holds
        if self.inbound.is_resend(key, connection, now):
            self._count("resends")
            log.info("GoIP {route}: deliver_sm resent after a reconnect; answered, not"
                     " delivered again", route=self.route)
            return defer.succeed(None)
        text, concat = P.deliver_text(pdu, dc0=self.sim.inbound_dc0)
        sender = str(pdu.get("source_addr") or "")
        self._unsaved.keys[key] = connection
        if concat is None:
            self._unsaved.messages.append(self.info.inbound(sender, text))
        else:
            finished = self.inbound.add_part((sender, str(concat.kind), concat.ref),
                                             concat.total, concat.seq, text, now)
            self._unsaved.messages.extend(self._assembled(a) for a in finished)
            self._plan_expiry()
        return self._commit_soon()

    def _assembled(self, a: sms.Assembled) -> Message:
        sender = str(a.key[0]) if isinstance(a.key, tuple) and a.key else ""
        if not a.complete:
            self._count("incomplete")
            log.warn("GoIP {route}: long SMS from {sender} delivered incomplete: parts"
                     " {missing} of {total} never came", route=self.route,
                     sender=self.info.inbound(sender, "").sender,
                     missing=",".join(map(str, a.missing)), total=a.total)
        return self.info.inbound(sender, a.text)

    def _plan_expiry(self) -> None:
        deadline = self.inbound.next_deadline()
        if self._expiry is not None and self._expiry.active():
            self._expiry.cancel()
        self._expiry = None
        if deadline is not None and self.running:
            delay = max(0.0, deadline - self.reactor.seconds())
            self._expiry = self.reactor.callLater(delay, self._expire)

    def _expire(self) -> None:
        self._expiry = None
        finished = self.inbound.expire(self.reactor.seconds())
        if finished:
            self._unsaved.messages.extend(self._assembled(a) for a in finished)
            self._commit_soon().addErrback(lambda _: None)  # retried by its own timer
        self._plan_expiry()

    # -- group commit, one at a time per SIM ---------------------------------------------------

    def _wait_for(self, commit: _Commit) -> defer.Deferred:
        d = defer.Deferred()
        commit.waiters.append(d)
        return d

    def _commit_soon(self) -> defer.Deferred:
        d = self._wait_for(self._unsaved)
        if self._committing is None:
            self._commit()
        return d

    def _commit(self) -> None:
        if self._retry is not None and self._retry.active():
            self._retry.cancel()
        self._retry = None
        commit, self._unsaved = self._unsaved, _Commit()
        self._committing = commit
        now = self.reactor.seconds()
        state = (self.state_name, self.inbound.snapshot(commit.keys, now))
        d = defer.maybeDeferred(self.accept, commit.messages, state=state)
        d.addCallbacks(self._committed, self._commit_failed, callbackArgs=(commit, now),
                       errbackArgs=(commit,))

    def _committed(self, _: Any, commit: _Commit, now: float) -> None:
        self._committing = None
        self.inbound.remember(commit.keys, now)
        self._count("received", len(commit.messages))
        for m in commit.messages:
            log.info("GoIP {route}: SMS from {sender} stored as {id}", route=self.route,
                     sender=m.sender, id=m.id)
        for d in commit.waiters:
            d.callback(None)
        self._next()

    def _commit_failed(self, failure: Any, commit: _Commit) -> None:
        self._committing = None
        self._count("commit_failures")
        log.failure("GoIP {route}: storing inbound SMS failed; the SMSC is told to resend",
                    failure, route=self.route)
        # Back in front of what came since: the next commit carries them, and a resend
        # of these deliver_sm waits for it rather than making them twice.
        merged = _Commit()
        merged.messages = commit.messages + self._unsaved.messages
        merged.keys = {**commit.keys, **self._unsaved.keys}
        merged.waiters = self._unsaved.waiters
        self._unsaved = merged
        for d in commit.waiters:
            d.errback(failure)
        if merged.waiters:
            self._commit()
        elif merged.messages and self.running:
            # Texts no deliver_sm waits for (given up on parts): try again on our own.
            self._retry = self.reactor.callLater(COMMIT_RETRY, self._retry_commit)

    def _retry_commit(self) -> None:
        self._retry = None
        if self._committing is None and (self._unsaved.messages or self._unsaved.waiters):
            self._wait_for(self._unsaved).addErrback(lambda _: None)
            self._commit()

    def _next(self) -> None:
        if self._unsaved.waiters:
            self._commit()

    # -- receipts ---------------------------------------------------------------------------

    def _receipt(self, found: R.Receipt) -> defer.Deferred:
        if not found.message_id:
            log.info("GoIP {route}: a receipt without a message id ({stat}); ignored",
                     route=self.route, stat=found.raw_stat)
            self._count_report("unknown")
            return defer.succeed(None)
        ids = list(R.id_variants(found.message_id))
        ids += [self._part_ids[v] for v in list(ids) if self._part_ids.get(v)]
        status = found.state or "sent"
        detail = " ".join(filter(None, (found.raw_stat, f"err:{found.error}" if found.error
                                        else None))) or None
        d = self.store.report(ids, [self.route], status, detail)

        def reported(message_id: Optional[str]) -> None:
            self._count("receipts")
            if message_id is None:
                self._count("receipts_unmatched")
                log.info("GoIP {route}: receipt for id {id} matches no message sent here",
                         route=self.route, id=ids[0])
            self._count_report(status if message_id is not None else "unknown")

        return d.addCallback(reported)

    def _count(self, event: str, n: int = 1) -> None:
        # Also in /metrics: websmsd_goip_<event>_total{event="goip:sim1"}.
        self.counts[event] += n
        self.metrics.count(f"goip_{event}", self.route, n)

    def _count_report(self, status: str) -> None:
        if self.reports is not None:
            self.reports[status] += 1

    # -- status -----------------------------------------------------------------------------

    def status(self) -> ChannelState:
        b = self.bind
        sim = self.sim
        where = f"{sim.smpp_host}:{sim.smpp_port}"
        if b.bound:
            state = "up"
            bits = [f"bound as {sim.bind_system_id} to {where}"]
        else:
            state = "error" if b.state == BIND_FAILED else "down"
            bits = [f"SMPP {b.state} ({where}): {b.detail}"]
            if b.next_attempt is not None:
                bits.append(f"next attempt {clock_text(b.next_attempt)}")
        if sim.number:
            bits.append(f"number {sim.number[0]}")
        now = self.reactor.seconds()
        if now < self._hold_until:
            bits.append(f"throttled by the GoIP until {clock_text(self._hold_until)}")
        if self.inbound.parts:
            bits.append(f"{len(self.inbound.parts)} long SMS waiting for parts")
        bits += self.info.sends_detail(self.metrics)
        info = self.info.base_info(self.metrics)
        info.update({
            "system_id": sim.bind_system_id, "smpp": where, "bind_state": b.state,
            "bind_detail": b.detail, "window": sim.window, "long_method": sim.long_method,
            "peer_system_id": b.peer_system_id, "next_attempt": b.next_attempt,
            "pending_parts": len(self.inbound.parts), "signal": None, "gsm_status": None,
            **self.counts,
        })
        return ChannelState(self.info.name or "(default)", state, b.since, "; ".join(bits),
                            "goip", info)
