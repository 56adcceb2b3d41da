"""The Yeastar TG channel: one route per GSM port (`yeastar:tg1`), one AMI session per TG.

build(wiring, settings) makes, for each TG (the ports with one host and ami_port), a
`TGLink`: an AMIClient logged in with events on (only one such session per TG, or every
SMS would arrive twice), which

* receives: `ReceivedSMS` parts are joined (`tg.Reassembler`, with an expiry timer) and
  each whole message, or what arrived of one once it timed out, is committed through
  `wiring.accept` at once; there is no way to fetch an SMS again from the TG, so one the
  store could not take is kept and offered again until it can;
* sends: `gsm send sms <span> <number> "<text>" <id>` with our message id in <id>;
  `UpdateSMSSend` Status 1 means the SMS centre accepted it (sent, not delivered), 0 that
  it failed; no event within `send_timeout` is a failure to retry (which says the SMS may
  have gone out when the link dropped meanwhile).  Or, with `transport = http`, the WebCGI
  send, which only says "queued";
* keeps itself alive with `gsm show spans` as keepalive (the TG has no Ping and is
  silent when idle), backs off after a refused login, and pauses the routes of its ports
  while it is not logged in (and a port's route while the port has no working SIM);
* answers USSD (`wiring.ussd[port]`) and reports each port's state on the status page.

Every port sends at most one SMS per `min_interval` (Yeastar's limit: 10 s).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Tuple

from twisted.application import service
from twisted.internet import defer, task
from twisted.logger import Logger

from websmsd.text import local_time
from websmsd.ami.client import (LOGGED_IN, ActionFailed, ActionLost, ActionTimeout, AMIClient,
                                NotConnected)
from websmsd.ami.protocol import AMIEncodeError, AMIError, Packet
from websmsd.channel import ChannelState, Outcome, route_name
from websmsd.config.yeastar import KIND, YeastarPort, YeastarSettings
from websmsd.message import IN, SENDING, Message
from websmsd.text import one_line
from websmsd.yeastar import messages as ym
from websmsd.yeastar import tg, tg_answers

log = Logger(namespace="websmsd.yeastar")

# The keepalive: any answer proves the link (the TG has no Ping action).
KEEPALIVE = ("smscommand", (("command", "gsm show spans"),))
# A commit the store refused (disk full...) is offered again after this, doubling.
RETRY_COMMIT = (5.0, 300.0)


class USSDError(Exception):
    """A USSD request got no answer, or the network or the TG refused it (the text says
    which, in the device's words where it gave some)."""


def _clock(t: Optional[float]) -> str:
    return "-" if t is None else local_time(t)


@dataclass
class PortState:
    """What is known of one GSM port, for its route and its status row."""

    settings: YeastarPort
    route: str
    span_status: Optional[tg_answers.SpanStatus] = None
    span_info: Optional[tg_answers.SpanInfo] = None
    span_checked: Optional[float] = None
    down: Optional[str] = None  # as told to the dispatcher
    received: int = 0
    sent: int = 0
    failed: int = 0
    last_result: Optional[str] = None
    last_result_at: Optional[float] = None
    webcgi: Any = None  # WebCGIClient, for transport = http

    missing: Optional[str] = None  # the TG lists spans, but not this port's

    @property
    def span_problem(self) -> Optional[str]:
        if self.missing:
            return self.missing
        s = self.span_status
        if s is None or s.up:
            return None
        return f"port {self.settings.port} (span {s.span}) is not up: {s.state or s.status}"


@dataclass
class _Wait:
    """A send waiting for its UpdateSMSSend."""

    deferred: defer.Deferred
    drops: int  # the link's drop count when the command went out
    doubt: Optional[str] = None  # why the command itself may or may not have run
    timer: Any = None


class TGLink(service.MultiService):
    """One TG: its AMI session, its ports' sends and states, what it receives."""

    def __init__(self, reactor: Any, ports: List[YeastarPort], *, accept: Callable[[list], Any],
                 dispatcher: Any = None, metrics: Any = None, store: Any = None,
                 connect: Optional[Callable[[str, int, float], Any]] = None,
                 webcgi_endpoint: Optional[Callable[[YeastarPort], Any]] = None):
        super().__init__()
        first = ports[0]
        self.reactor = reactor
        self.host = first.host
        self.label = f"{first.host}:{first.ami_port}"
        self.setName(f"yeastar {self.label}")
        self.settings = first  # the session's keys agree between its ports (config)
        self.accept = accept
        self.dispatcher = dispatcher
        self.metrics = metrics
        self.store = store
        self.ports: Dict[int, PortState] = {}
        for p in ports:
            state = PortState(p, route_name(KIND, p.name))
            if p.transport == "http":
                state.webcgi = self._webcgi(p, webcgi_endpoint)
            self.ports[p.port] = state
        if connect is None:
            connect = self._tcp_endpoint
        endpoint = connect(first.host, first.ami_port, first.action_timeout)
        self.ami = AMIClient(
            reactor, endpoint, first.username, first.secret, events="on",
            ping_interval=first.ping_interval, ping_action=KEEPALIVE,
            action_timeout=first.action_timeout, on_state=self._on_state,
            name=f"TG {self.label}",
            login_retry=(first.login_retry, max(first.login_retry, 300.0)))
        self.ami.setServiceParent(self)
        self.ami.subscribe(self._received, "ReceivedSMS")
        self.ami.subscribe(self._send_update, "UpdateSMSSend")
        # Bounded well below the store's comfort: the waiting parts are written to it.
        self.reassembler = tg.Reassembler(first.reassembly_timeout, max_groups=64,
                                          max_chars=100_000)
        # The parts waiting for the rest of their message, as they came, with when: kept
        # in the store (channel state) so that a restart loses none (the TG never sends
        # an SMS again).  Reassembler key -> [(time, fields)].
        self._parts: Dict[Tuple[Any, ...], List[Tuple[float, list]]] = {}
        self._state_name = f"{KIND}:{first.host.lower()}:{first.ami_port}:parts"
        self._expiry: Any = None
        self._waits: Dict[str, _Wait] = {}
        self._drops = 0
        self._was_logged_in = False
        self._unsaved: List[Message] = []
        self._commit_retry: Any = None
        self._commit_delay = RETRY_COMMIT[0]
        self._status_loop: Optional[task.LoopingCall] = None
        self.refreshes = 0

    def _tcp_endpoint(self, host: str, port: int, timeout: float) -> Any:
        from websmsd.endpoints import tcp_client

        return tcp_client(self.reactor, host, port, timeout=max(1, int(timeout)))

    def _webcgi(self, p: YeastarPort, endpoint_for: Optional[Callable[[YeastarPort], Any]]) -> Any:
        from websmsd.yeastar.webcgi import WebCGIClient

        return WebCGIClient(self.reactor, p.host, p.http_port, p.account, p.password,
                            timeout=p.http_timeout, ussd_timeout=p.ussd_timeout + p.http_timeout,
                            tls=p.http_tls,
                            endpoint=endpoint_for(p) if endpoint_for is not None else None)

    # -- the session ---------------------------------------------------------------------

    @property
    def logged_in(self) -> bool:
        return self.ami.logged_in

    def _on_state(self, kind: str, detail: str) -> None:
        if kind == LOGGED_IN:
            self._was_logged_in = True
            self._start_status()
        else:
            if self._was_logged_in:
                self._drops += 1
                self._was_logged_in = False
            self._stop_status()
        self.update_routes()

    def update_routes(self, force: bool = False) -> None:
        """Tell the dispatcher which of this TG's routes can carry messages now."""
        for state in self.ports.values():
            self._set_down(state, force)

    def _set_down(self, state: PortState, force: bool = False) -> None:
        reason = None
        if state.settings.transport == "ami" and not self.ami.logged_in:
            reason = f"not logged in to TG {self.label} ({self.ami.state})"
        elif state.span_problem:
            reason = state.span_problem
        if reason != state.down or force:
            state.down = reason
            if self.dispatcher is not None:
                self.dispatcher.set_down(state.route, reason)

    def startService(self) -> None:
        # The AMI session starts once the parts kept at the last stop are back in the
        # reassembler, so that a part arriving now finds its earlier ones.
        service.Service.startService(self)
        if self.store is None:
            self._start_session()
            return
        d = self.store.state(self._state_name)
        d.addCallback(self._restore)
        d.addErrback(lambda f: log.failure("TG {tg}: waiting SMS parts not read back", f,
                                           tg=self.label))
        d.addBoth(lambda _: self._start_session())

    def _start_session(self) -> None:
        if self.running:
            for child in self:
                if not child.running:
                    child.startService()

    def stopService(self) -> defer.Deferred:
        self._stop_status()
        for timer in (self._expiry, self._commit_retry):
            if timer is not None and timer.active():
                timer.cancel()
        # Everything below reaches the store now, in this turn: the store stops with us
        # and closes once what was submitted before its close is committed.
        # Sends still waiting for their result: the record says what is known.
        for ident in list(self._waits):
            self._finish(ident, Outcome.failed(
                "websmsd stopped before the TG gave the result: it may have been sent"))
        # What arrived of a message whose other parts did not is in the store already
        # (channel state), and goes on waiting after a restart.  Without a store, keep it
        # now (marked incomplete) rather than lose it.
        pending = self.reassembler.flush() if self.store is None else []
        saved = defer.succeed(None)
        if pending or self._unsaved:
            messages = self._unsaved + [self._message(sms) for sms in pending]
            self._unsaved = []
            saved = self._save(messages, final=True)
        d = defer.maybeDeferred(super().stopService)
        return defer.gatherResults([d, saved])

    # -- status ----------------------------------------------------------------------------

    def _start_status(self) -> None:
        self._stop_status()
        loop = task.LoopingCall(self.refresh)
        loop.clock = self.reactor
        self._status_loop = loop
        loop.start(self.settings.status_interval, now=True).addErrback(
            lambda f: log.failure("TG {tg}: status loop failed", f, tg=self.label))

    def _stop_status(self) -> None:
        loop, self._status_loop = self._status_loop, None
        if loop is not None and loop.running:
            loop.stop()

    def refresh(self) -> defer.Deferred:
        """Read `gsm show spans` and `gsm show span N` of each port (never raises)."""
        return defer.ensureDeferred(self._refresh())

    async def _refresh(self) -> None:
        try:
            output = await self.ami.command("gsm show spans", action="smscommand")
        except AMIError as e:
            log.debug("TG {tg}: gsm show spans: {why}", tg=self.label, why=str(e))
            return
        now = self.reactor.seconds()
        spans = {s.span: s for s in tg_answers.parse_spans(output)}
        for state in self.ports.values():
            status = spans.get(state.settings.span)
            state.missing = None
            if status is None and spans:
                state.missing = (f"the TG has no port {state.settings.port} (its ports:"
                                 f" {', '.join(str(n - tg.SPAN_OFFSET) for n in sorted(spans))})")
                state.span_status = None
            if status is not None:
                if state.span_status is None or status.status != state.span_status.status:
                    log.info("TG {tg} port {port} (span {span}): {status}", tg=self.label,
                             port=state.settings.port, span=status.span, status=status.status)
                state.span_status = status
                state.span_checked = now
            self._set_down(state)
        for state in self.ports.values():
            try:
                output = await self.ami.command(f"gsm show span {state.settings.span}",
                                                action="smscommand")
            except AMIError as e:
                log.debug("TG {tg}: gsm show span: {why}", tg=self.label, why=str(e))
                return
            info = tg_answers.parse_span(output)
            if info is not None:
                state.span_info = info
        self.refreshes += 1

    # -- receiving ------------------------------------------------------------------------

    def _received(self, packet: Packet) -> None:
        part = tg.parse_received(packet.fields)
        if isinstance(part, tg.BadEvent):
            log.warn("TG {tg}: {bad}", tg=self.label, bad=str(part))
            self._count("yeastar_bad_events", "ReceivedSMS")
            return
        done = self._take(part, [list(pair) for pair in packet.fields], self.reactor.seconds())
        if part.total > 1:
            log.debug("TG {tg}: part {index}/{total} of SMS id {ident} from {sender} on span"
                      " {span}", tg=self.label, index=part.index, total=part.total,
                      ident=part.ident, sender=part.sender, span=part.span)
        self._plan_expiry()
        self._settle(done, part.total > 1)

    def _take(self, part: tg.ReceivedPart, fields: list, at: float) -> List[tg.ReceivedSMS]:
        """Give `part` to the reassembler and keep track of the parts that wait."""
        done = self.reassembler.add(part, at)
        for sms in done:
            self._parts.pop((sms.span, sms.sender, sms.ident, sms.total), None)
        if self.reassembler.holds(part):
            self._parts.setdefault((part.span, part.sender, part.ident, part.total),
                                   []).append((at, fields))
        return done

    def _settle(self, done: List[tg.ReceivedSMS], parts_changed: bool) -> None:
        """Commit the messages `done` (then the parts still waiting), or only the parts."""
        if done:
            self._save([self._message(sms) for sms in done])
        elif parts_changed:
            self._persist()

    def _persist(self) -> None:
        """Write the waiting parts to the store.  Not while received messages wait for a
        commit: the parts kept there until then are their only durable copy."""
        if self.store is None or self._unsaved:
            return
        entries = [[at, fields] for waiting in self._parts.values() for at, fields in waiting]
        d = self.store.add([], state=(self._state_name, json.dumps(entries)))
        d.addErrback(lambda f: log.failure("TG {tg}: waiting SMS parts not written", f,
                                           tg=self.label))

    def _restore(self, value: Optional[str]) -> None:
        if not value:
            return
        try:
            entries = json.loads(value)
        except ValueError:
            log.error("TG {tg}: the waiting SMS parts in the store are unreadable; ignored",
                      tg=self.label)
            return
        done: List[tg.ReceivedSMS] = []
        for entry in entries if isinstance(entries, list) else []:
            try:
                at, fields = float(entry[0]), [(str(n), str(v)) for n, v in entry[1]]
            except (TypeError, ValueError, IndexError):
                continue
            part = tg.parse_received(fields)
            if isinstance(part, tg.ReceivedPart) and part.total > 1:
                done += self._take(part, [list(f) for f in fields], at)
        done += self.reassembler.expire(self.reactor.seconds())
        for sms in done:
            self._parts.pop((sms.span, sms.sender, sms.ident, sms.total), None)
        log.info("TG {tg}: {n} SMS part(s) waiting for the rest of their message since before"
                 " the restart", tg=self.label, n=sum(len(p) for p in self._parts.values()))
        self._plan_expiry()
        self._settle(done, True)

    def _plan_expiry(self) -> None:
        when = self.reassembler.next_expiry()
        if when is None or not self.running:
            return
        delay = max(0.0, when - self.reactor.seconds())
        if self._expiry is not None and self._expiry.active():
            if self._expiry.getTime() <= when:
                return
            self._expiry.cancel()
        self._expiry = self.reactor.callLater(delay, self._expire)

    def _expire(self) -> None:
        self._expiry = None
        done = self.reassembler.expire(self.reactor.seconds())
        for sms in done:
            self._parts.pop((sms.span, sms.sender, sms.ident, sms.total), None)
        self._plan_expiry()
        self._settle(done, bool(done))

    def _message(self, sms: tg.ReceivedSMS) -> Message:
        try:
            port = tg.span_to_port(sms.span)
        except tg.YeastarError:
            port = sms.span - tg.SPAN_OFFSET
        state = self.ports.get(port)
        if state is not None:
            recipient, source = state.settings.own_number, state.route
        else:
            # A port no interface names: the SMS must not be lost, but it has no number
            # to go to.  It is stored (and shown) for a recipient that says where it came.
            recipient, source = f"{KIND}-port{port}", f"{KIND}:{self.host}:port{port}"
            log.warn("TG {tg}: SMS on port {port}, which no [yeastar] interface names: kept"
                     " for recipient {recipient}; add port [name] = {port} and its number",
                     tg=self.label, port=port, recipient=recipient)
        fields = ym.inbound_fields(sms, source, self.host)
        m = Message(IN, "", recipient, fields.sender, fields.body, source=source,
                    provider_id=fields.provider_id, dedupe_key=fields.dedupe_key)
        m.created = self.reactor.seconds()
        if not sms.complete:
            log.warn("TG {tg}: SMS id {ident} from {sender} on span {span}: part(s) {missing}"
                     " of {total} never arrived; keeping what did", tg=self.label,
                     ident=sms.ident, sender=sms.sender, span=sms.span,
                     missing=",".join(map(str, sms.missing)), total=sms.total)
            self._count("yeastar_incomplete", source)
        return m

    def _save(self, messages: List[Message], final: bool = False) -> defer.Deferred:
        """Commit received messages (their dedupe keys make a second offer harmless)."""
        d = defer.maybeDeferred(self.accept, messages)

        def saved(new: List[bool]) -> None:
            self._commit_delay = RETRY_COMMIT[0]
            if not final:
                self._persist()
            for m, fresh in zip(messages, new):
                state = next((s for s in self.ports.values() if s.route == m.source), None)
                if fresh and state is not None:
                    state.received += 1
                if fresh:
                    self._count("yeastar_received", m.source)
                log.info("TG {tg}: SMS from {sender} to {recipient} stored as {id}{again}",
                         tg=self.label, sender=m.sender, recipient=m.recipient, id=m.id,
                         again="" if fresh else " (seen before: not stored again)")

        def failed(failure: Any) -> None:
            if final:
                log.failure("TG {tg}: {n} received SMS could not be stored at shutdown and"
                            " are lost", failure, tg=self.label, n=len(messages))
                return
            log.failure("TG {tg}: {n} received SMS could not be stored; trying again in"
                        " {delay} s", failure, tg=self.label, n=len(messages),
                        delay=self._commit_delay)
            self._unsaved.extend(messages)
            if self._commit_retry is None or not self._commit_retry.active():
                self._commit_retry = self.reactor.callLater(self._commit_delay, self._save_again)
                self._commit_delay = min(self._commit_delay * 2, RETRY_COMMIT[1])

        return d.addCallbacks(saved, failed)

    def _save_again(self) -> None:
        self._commit_retry = None
        messages, self._unsaved = self._unsaved, []
        if messages:
            self._save(messages)

    # -- sending ----------------------------------------------------------------------------

    def send(self, state: PortState, message: Message) -> defer.Deferred:
        """Hand the next piece of `message` to the TG through `state`'s port: a Deferred
        Outcome (never an errback for the TG's or the network's trouble)."""
        return defer.ensureDeferred(self._send(state, message)).addCallback(self._note, state)

    async def _send(self, state: PortState, m: Message) -> Outcome:
        p = state.settings
        if m.status == SENDING:
            log.warn("TG {tg}: {id} was being sent when websmsd stopped; sending it again"
                     " (the phone may get it twice)", tg=self.label, id=m.id)
        parts = ym.pieces(m.body, ym.encoded_budget(p.span, m.recipient))
        if not parts:
            return Outcome.failed("empty text: an empty SMS is never sent", permanent=True)
        if m.progress >= len(parts):
            return Outcome.sent("every piece was handed over", progress=m.progress)
        k = m.progress
        if p.transport == "http":
            outcome = await self._send_http(state, m, parts[k])
        else:
            ident = ym.send_ident(m.id, m.attempts + 1, k + 1, len(parts))
            try:
                command = tg.sms_command(p.span, m.recipient, parts[k], ident)
            except tg.YeastarError as e:
                return Outcome.failed(str(e), permanent=True)
            outcome = await self._send_ami(command, ident)
        if outcome.ok and k + 1 < len(parts):
            # One piece went; the next follows after the port's interval (not an attempt).
            return Outcome.later(0.0, progress=k + 1)
        if outcome.ok and len(parts) > 1:
            return Outcome.sent(f"{outcome.reason} ({len(parts)} pieces)", progress=len(parts))
        return outcome

    async def _send_ami(self, command: str, ident: str) -> Outcome:
        if not self.ami.logged_in:
            return Outcome.route_down(f"not logged in to TG {self.label} ({self.ami.state})")
        wait = _Wait(defer.Deferred(), self._drops)
        self._waits[ident] = wait
        try:
            output = await self.ami.command(command, action="smscommand")
        except NotConnected as e:
            self._forget(ident)
            return Outcome.route_down(str(e))
        except AMIEncodeError as e:
            self._forget(ident)
            return Outcome.failed(f"cannot be sent to the TG: {e}", permanent=True)
        except ActionFailed as e:
            self._forget(ident)
            return Outcome.failed(f"the TG refused the send command: {one_line(str(e))}")
        except (ActionTimeout, ActionLost) as e:
            # The command may have run: its UpdateSMSSend can still come.
            wait.doubt = str(e)
            output = ""
        else:
            error = tg.send_output_error(output)
            if error is not None:
                # A good command has empty output; with an error text no event follows.
                self._forget(ident)
                return Outcome.failed(f"the TG refused the SMS: {error}")
        if ident not in self._waits:  # settled meanwhile (stopped)
            return await wait.deferred
        timeout = self.settings.send_timeout
        wait.timer = self.reactor.callLater(timeout, self._no_result, ident, timeout)
        return await wait.deferred

    def _forget(self, ident: str) -> None:
        wait = self._waits.pop(ident, None)
        if wait is not None and wait.timer is not None and wait.timer.active():
            wait.timer.cancel()

    def _finish(self, ident: str, outcome: Outcome) -> None:
        wait = self._waits.pop(ident, None)
        if wait is None:
            return
        if wait.timer is not None and wait.timer.active():
            wait.timer.cancel()
        wait.deferred.callback(outcome)

    def _no_result(self, ident: str, timeout: float) -> None:
        wait = self._waits.get(ident)
        if wait is None:
            return
        wait.timer = None
        why = f"no result (UpdateSMSSend) from the TG within {timeout:g} s"
        if wait.doubt:
            why += f", and the command got no answer ({wait.doubt}): it may have been sent"
        elif self._drops != wait.drops or not self.ami.logged_in:
            why += ", and the link dropped meanwhile: it may have been sent"
        else:
            why += ": not sent"
        self._finish(ident, Outcome.failed(why))

    def _send_update(self, packet: Packet) -> None:
        update = tg.parse_update_sms_send(packet.fields)
        if isinstance(update, tg.BadEvent):
            log.warn("TG {tg}: {bad}", tg=self.label, bad=str(update))
            self._count("yeastar_bad_events", "UpdateSMSSend")
            return
        smsc = f" {update.smsc}" if update.smsc else ""
        if update.ident in self._waits:
            if update.ok:
                self._finish(update.ident, Outcome.sent(f"accepted by the SMS centre{smsc}"))
            else:
                self._finish(update.ident, Outcome.failed(
                    "the TG reports it not sent (UpdateSMSSend Status 0; e.g. a number the"
                    " network refuses)", permanent=True))
            return
        self._late_update(update, smsc)

    def _late_update(self, update: tg.SendUpdate, smsc: str) -> None:
        ident = ym.parse_ident(update.ident)
        if ident is None:
            # Another client of the TG (every session with events on hears every result).
            log.debug("TG {tg}: result of a send that is not ours (ID {ident})", tg=self.label,
                      ident=update.ident)
            return
        self._count("yeastar_late_results", "ok" if update.ok else "failed")
        if not update.ok or ident.piece != ident.count or self.store is None:
            log.info("TG {tg}: late result for {id} (piece {piece}/{count}): {ok}; already"
                     " counted as not sent", tg=self.label, id=ident.message_id,
                     piece=ident.piece, count=ident.count,
                     ok="sent" if update.ok else "not sent")
            return
        # It went after all: say so, so that the retry does not send it again.
        log.info("TG {tg}: late result for {id}: accepted by the SMS centre after all",
                 tg=self.label, id=ident.message_id)
        d = self.store.report([], [], "sent", f"late result from the TG: accepted by the SMS"
                              f" centre{smsc}", message_id=ident.message_id)
        d.addErrback(lambda f: log.failure("TG {tg}: late result not recorded", f, tg=self.label))

    async def _send_http(self, state: PortState, m: Message, text: str) -> Outcome:
        from websmsd.yeastar.webcgi import WebCGINoAnswer, WebCGIUnreachable

        try:
            ok, answer = await state.webcgi.send(state.settings.port, m.recipient, text)
        except tg.YeastarError as e:
            return Outcome.failed(str(e), permanent=True)
        except WebCGIUnreachable as e:
            return Outcome.route_down(str(e))
        except WebCGINoAnswer as e:
            return Outcome.failed(f"{e}: the TG may have queued it")
        if not ok:
            return Outcome.failed(f"the TG refused it over HTTP: {one_line(answer)}")
        return Outcome.sent("queued by the TG (HTTP sends get no later result)")

    def _note(self, outcome: Outcome, state: PortState) -> Outcome:
        if outcome.retry_in is not None and outcome.ok is False and outcome.progress is not None:
            return outcome  # a piece went; the message is not done
        if outcome.ok:
            state.sent += 1
            state.last_result = f"sent: {outcome.reason}"
        else:
            state.failed += 0 if outcome.down else 1
            state.last_result = f"{'down' if outcome.down else 'failed'}: {outcome.reason}"
        state.last_result_at = self.reactor.seconds()
        return outcome

    # -- USSD -------------------------------------------------------------------------------

    def ussd(self, state: PortState, code: str) -> defer.Deferred:
        """Fires with the network's answer text; fails with USSDError (or YeastarError for
        a code that cannot be sent)."""
        return defer.ensureDeferred(self._ussd(state, code))

    async def _ussd(self, state: PortState, code: str) -> str:
        p = state.settings
        if p.transport == "http":
            result = await state.webcgi.ussd(p.port, code)
        else:
            command = tg.ussd_command(p.span, code, max(1, min(int(p.ussd_timeout),
                                                               tg.MAX_USSD_TIMEOUT)))
            try:
                output = await self.ami.command(command, action="smscommand",
                                                timeout=p.ussd_timeout + p.action_timeout)
            except NotConnected:
                raise USSDError(f"not logged in to TG {self.label} ({self.ami.state})") from None
            except ActionTimeout:
                raise USSDError(f"no answer from TG {self.label} within"
                                f" {p.ussd_timeout + p.action_timeout:g} s") from None
            except ActionLost:
                raise USSDError(f"the link to TG {self.label} dropped before the answer") from None
            except ActionFailed as e:
                raise USSDError(f"TG {self.label} refused the command: {one_line(str(e))}") from None
            result = tg_answers.parse_ussd_output(output)
        if not result.ok:
            raise USSDError(f"port {p.port}: {result.error or 'USSD failed'}")
        log.info("TG {tg} port {port}: USSD {code} answered{more}", tg=self.label, port=p.port,
                 code=code, more=" (the network waits for a reply)" if result.more_expected else "")
        return result.text

    # -- the status page ------------------------------------------------------------------

    def rows(self, waiting: Dict[str, tuple]) -> List[ChannelState]:
        rows = []
        for state in self.ports.values():
            rows.append(self._row(state, waiting.get(state.route, (0, None, None))[0]))
        return rows

    def _row(self, state: PortState, waiting: int) -> ChannelState:
        p = state.settings
        info = state.span_info
        bits = []
        if self.ami.logged_in:
            bits.append("logged in")
        else:
            bits.append(self.ami.state + ("" if p.transport == "ami" else
                                          " (not receiving; sending over HTTP)"))
        s = state.span_status
        if s is not None:
            span = f"span {s.span} {s.state or s.status}"
            if info is not None and info.signal is not None:
                span += f", signal {info.signal}/31"
            if info is not None and info.network_name:
                span += f", {info.network_name}"
            bits.append(span)
        bits.append(p.number[0])
        if waiting:
            bits.append(f"{waiting} waiting")
        if state.last_result:
            bits.append(f"last {_clock(state.last_result_at)} {state.last_result}")
        if not self.ami.logged_in or state.down:
            row_state, since = "down", self.ami.since
        elif state.last_result and not state.last_result.startswith("sent"):
            row_state, since = "failing", state.last_result_at
        else:
            row_state, since = "up", self.ami.since
        return ChannelState(p.name or "(default)", row_state, since, "; ".join(bits), KIND, {
            "route": state.route, "tg": self.label, "port": p.port, "span": p.span,
            "number": p.number[0], "transport": p.transport, "ami": self.ami.state,
            "logged_in": self.ami.logged_in, "ami_since": self.ami.since,
            "down": state.down, "span_state": s.state if s is not None else None,
            "span_status": s.status if s is not None else None,
            "span_checked": state.span_checked,
            "signal": info.signal if info is not None else None,
            "network": info.network_name if info is not None else None,
            "network_status": info.network_status if info is not None else None,
            "waiting": waiting, "received": state.received, "sent": state.sent,
            "failed": state.failed, "last_result": state.last_result,
            "last_result_at": state.last_result_at})

    def _count(self, name: str, key: str) -> None:
        if self.metrics is not None:
            self.metrics.count(name, key)


class PortSink:
    """The dispatcher's sink of one port's route."""

    def __init__(self, link: TGLink, state: PortState):
        self.link = link
        self.state = state
        self.route = state.route

    def send(self, message: Message) -> defer.Deferred:
        return self.link.send(self.state, message)


class YeastarChannel(service.MultiService):
    """Every TG of [yeastar], and the status rows of every port."""

    def __init__(self, reactor: Any, settings: YeastarSettings, *, accept: Callable[[list], Any],
                 dispatcher: Any = None, metrics: Any = None, store: Any = None,
                 connect: Optional[Callable[[str, int, float], Any]] = None,
                 webcgi_endpoint: Optional[Callable[[YeastarPort], Any]] = None):
        super().__init__()
        self.setName(KIND)
        self.store = store
        self.links: List[TGLink] = []
        for ports in settings.gateways().values():
            link = TGLink(reactor, ports, accept=accept, dispatcher=dispatcher, metrics=metrics,
                          store=store, connect=connect, webcgi_endpoint=webcgi_endpoint)
            link.setServiceParent(self)
            self.links.append(link)

    def ports(self) -> List[Tuple[TGLink, PortState]]:
        return [(link, state) for link in self.links for state in link.ports.values()]

    def status(self) -> defer.Deferred:
        """The status rows of every port (a Deferred: the waiting counts come from the
        store)."""
        if self.store is None:
            return defer.succeed(self._rows({}))
        d = self.store.reader.waiting()
        d.addErrback(lambda f: {})
        return d.addCallback(self._rows)

    def _rows(self, waiting: Dict[str, tuple]) -> List[ChannelState]:
        return [row for link in self.links for row in link.rows(waiting)]


def build(wiring: Any, settings: YeastarSettings, *,
          connect: Optional[Callable[[str, int, float], Any]] = None,
          webcgi_endpoint: Optional[Callable[[YeastarPort], Any]] = None) -> YeastarChannel:
    """Routes, sessions, USSD and status rows of every [yeastar] port.  `connect(host,
    port, timeout)` and `webcgi_endpoint(port settings)` replace the TCP endpoints
    (tests)."""
    channel = YeastarChannel(wiring.reactor, settings, accept=wiring.accept,
                             dispatcher=wiring.dispatcher, metrics=wiring.metrics,
                             store=wiring.store, connect=connect,
                             webcgi_endpoint=webcgi_endpoint)
    for link, state in channel.ports():
        p = state.settings
        # One send at a time per port, and at most one per min_interval (Yeastar: 10 s).
        wiring.dispatcher.add_route(state.route, PortSink(link, state), concurrency=1,
                                    min_interval=p.min_interval)
        wiring.ussd[p.name] = lambda code, link=link, state=state: link.ussd(state, code)
    for link in channel.links:
        link.update_routes(force=True)  # the routes exist now: paused until the login
    wiring.board.register(channel.status, KIND)
    channel.setServiceParent(wiring.parent)
    return channel
