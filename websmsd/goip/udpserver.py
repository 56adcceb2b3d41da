"""The GoIP "SMS server" over UDP: a thin Twisted DatagramProtocol around `udp.py`.

    server = GoIPUDPServer(
        {"sim1": ("goip01", "secret")},        # line name -> (SMS Client ID, password)
        clock=reactor, on_receive=store_sms, on_report=store_report,
    )
    reactor.listenUDP(9991, server, interface="0.0.0.0", maxPacketSize=65535)

What it promises:
* Every packet's id AND password are checked (constant-time).  A wrong one changes
  nothing and gets no answer that accepts anything; it is counted per line and in total
  and logged without the password.  Unknown ids, garbage and answers from strangers are
  counted and dropped; `datagramReceived` never raises.
* A keepalive from a known line records its source address (commands go there), time,
  signal, GSM status and number, and is answered `reg:<count>;status:200;` (the dialect's
  form).
* RECEIVE calls `on_receive(line, recvid, srcnum, text, dedupe_key) -> Deferred` and is
  answered `RECEIVE <recvid> OK` only when that Deferred has fired: once per copy that
  arrived, so the GoIP stops resending.  Copies arriving while the first is being stored
  are not stored again.  If storing fails there is no answer, and the GoIP resends.
  DELIVER likewise calls `on_report(line, sms_no, state, num) -> Deferred` and is
  answered `DELIVER <recvid> OK` after it fires.  Other kinds get `<KIND> <recvid> OK`.
* `send(line, number, text) -> Deferred[SendOutcome]` runs one send dialogue at a time
  per line (later ones queue), to the line's last keepalive address; it never errbacks
  except when cancelled.  `ussd(line, code) -> Deferred[str]` (errback `UssdError`).
"""

from __future__ import annotations

import hmac
import random
from collections import OrderedDict
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple

from twisted.internet import defer
from twisted.internet.protocol import DatagramProtocol
from twisted.logger import Logger

from websmsd.goip import udp
from websmsd.goip.outcome import SendOutcome, UssdError
from websmsd.record import frozen

Address = Tuple[str, int]


@frozen
class LineStatus:
    """What the status page shows for one GoIP line (times are clock seconds)."""

    line: str
    goip_id: str
    registered: bool  # a keepalive came within `down_after` seconds
    since: Optional[float]  # start of the current (or last) unbroken run of keepalives
    last_keepalive: Optional[float]
    address: Optional[Address]  # where the last keepalive came from
    signal: Optional[int]  # AT+CSQ 0..31, 99 unknown
    gsm_status: str  # LOGIN / LOGOUT as the GoIP said, "" before the first keepalive
    voip_status: str
    number: str  # `num:` of the keepalive (often empty)
    sms_login: str  # Y once the GoIP counts itself registered with us
    last_error: Optional[str]  # the reason of the last failed send, USSD or store
    bad_password: int  # packets with this line's id and a wrong password
    keepalives: int
    received: int  # incoming SMS handed over and acknowledged
    reports: int  # delivery reports handed over and acknowledged
    sent: int
    failed: int


class _Line:
    def __init__(self, name: str, goip_id: str, password: str) -> None:
        self.name = name
        self.goip_id = goip_id
        self.password = password
        self.lock = defer.DeferredLock()
        self.address: Optional[Address] = None
        self.last_keepalive: Optional[float] = None
        self.since: Optional[float] = None
        self.signal: Optional[int] = None
        self.gsm_status = ""
        self.voip_status = ""
        self.number = ""
        self.sms_login = ""
        self.last_error: Optional[str] = None
        self.bad_password = 0
        self.keepalives = 0
        self.received = 0
        self.reports = 0
        self.sent = 0
        self.failed = 0


class _Dialogue:
    """A running send or USSD session and what the server keeps for it."""

    def __init__(self, line: _Line, session: Any, address: Address, kind: str) -> None:
        self.line = line
        self.session = session
        self.address = address
        self.kind = kind  # "sms" or "ussd"
        self.deferred: Optional[defer.Deferred] = None
        self.timer: Any = None
        self.reported = False


def _log_every(count: int) -> bool:
    # The first few, then one in a thousand: a flood cannot flood the log.
    return count <= 10 or count % 1000 == 0


class GoIPUDPServer(DatagramProtocol):
    """The SMS server GoIP lines register with.  See the module docstring.

    lines: line name -> (goip_id, password), as configured on the GoIP.
    clock: an IReactorTime (the reactor; task.Clock in tests).
    on_receive(line, recvid, srcnum, text, dedupe_key) -> Deferred (or a plain value).
    on_report(line, sms_no, state, num) -> Deferred (or a plain value).
    keepalive_interval: the GoIP's (30 s); a line is down after `down_after` seconds
        without one (default three intervals).
    resend_interval, answer_timeout, send_deadline: see udp.SendSession.
    ussd_timeout, ussd_resend_after: see udp.UssdSession.
    sendid_start: the first session id (random by default, so that a restarted
        websmsd does not reuse the ids of sessions the GoIP may still hold).
    remember: how many stored RECEIVE/DELIVER keys are kept to answer late copies
        without handing them over again.
    """

    def __init__(
        self,
        lines: Mapping[str, Tuple[str, str]],
        *,
        clock: Any,
        on_receive: Callable[..., Any],
        on_report: Callable[..., Any],
        dialect: udp.Dialect = udp.DEFAULT_DIALECT,
        keepalive_interval: float = 30.0,
        down_after: Optional[float] = None,
        resend_interval: float = 3.0,
        answer_timeout: float = 15.0,
        send_deadline: float = 90.0,
        ussd_timeout: float = 60.0,
        ussd_resend_after: Optional[float] = None,
        sendid_start: Optional[int] = None,
        remember: int = 1024,
    ) -> None:
        self._lines: Dict[str, _Line] = {}
        self._by_id: Dict[str, _Line] = {}
        for name, pair in lines.items():
            goip_id, password = pair
            if not goip_id or not isinstance(goip_id, str):
                raise ValueError(f"GoIP line {name!r}: goip_id must be set")
            try:
                udp.password_packet(0, password)
            except udp.GoIPProtocolError:
                raise ValueError(
                    f"GoIP line {name!r}: the password must be 1..64 printable ASCII characters, no spaces"
                ) from None
            if goip_id in self._by_id:
                raise ValueError(
                    f"GoIP lines {self._by_id[goip_id].name!r} and {name!r} have the same goip_id"
                )
            line = _Line(name, goip_id, password)
            self._lines[name] = line
            self._by_id[goip_id] = line
        self._clock = clock
        self.on_receive = on_receive
        self.on_report = on_report
        self.dialect = dialect
        self.keepalive_interval = keepalive_interval
        self.down_after = 3 * keepalive_interval if down_after is None else down_after
        self.resend_interval = resend_interval
        self.answer_timeout = answer_timeout
        self.send_deadline = send_deadline
        self.ussd_timeout = ussd_timeout
        self.ussd_resend_after = ussd_resend_after
        if sendid_start is None:
            sendid_start = random.SystemRandom().randrange(1, 2**30)
        self._next_id = sendid_start
        self._dialogues: Dict[int, _Dialogue] = {}
        self._inflight: Dict[Tuple[str, ...], List[Address]] = {}
        self._done: "OrderedDict[Tuple[str, ...], None]" = OrderedDict()
        self._remember = remember
        self.totals = {
            "garbage": 0,
            "unknown_peer": 0,
            "bad_password": 0,
            "unmatched_answer": 0,
            "duplicate": 0,
        }
        self._log = Logger(namespace="websmsd.goip.udp", source=self)

    # -- status -------------------------------------------------------------------------

    @property
    def lines(self) -> List[str]:
        return list(self._lines)

    def _registered(self, line: _Line, now: float) -> bool:
        return line.last_keepalive is not None and now - line.last_keepalive <= self.down_after

    def line_status(self, line: str) -> LineStatus:
        """The state of one line (KeyError for an unknown name)."""
        s = self._lines[line]
        return LineStatus(
            line=s.name, goip_id=s.goip_id, registered=self._registered(s, self._clock.seconds()),
            since=s.since, last_keepalive=s.last_keepalive, address=s.address, signal=s.signal,
            gsm_status=s.gsm_status, voip_status=s.voip_status, number=s.number,
            sms_login=s.sms_login, last_error=s.last_error, bad_password=s.bad_password,
            keepalives=s.keepalives, received=s.received, reports=s.reports, sent=s.sent,
            failed=s.failed,
        )

    def down_reason(self, line: str) -> Optional[str]:
        """Why `line` cannot send now, or None when it can."""
        return self._down_reason(self._lines[line], self._clock.seconds())

    def _down_reason(self, line: _Line, now: float) -> Optional[str]:
        if line.last_keepalive is None or line.address is None:
            return f"GoIP line {line.name!r} has not registered (no keepalive yet)"
        age = now - line.last_keepalive
        if age > self.down_after:
            return f"GoIP line {line.name!r} is down: no keepalive for {age:.0f} s"
        if line.gsm_status.upper() == "LOGOUT":
            return f"GoIP line {line.name!r}: the SIM is not logged in to the GSM network"
        return None

    # -- datagrams ----------------------------------------------------------------------

    def datagramReceived(self, data: bytes, addr: Any) -> None:
        try:
            self._datagram(data, tuple(addr[:2]))
        except Exception:
            # A bug must not stop the listener: the next packet is handled as usual.
            self._log.failure("GoIP UDP: internal error handling a datagram from {addr}", addr=addr)

    def _datagram(self, data: bytes, addr: Address) -> None:
        event = udp.parse_datagram(data)
        if isinstance(event, udp.Garbage):
            self.totals["garbage"] += 1
            if _log_every(self.totals["garbage"]):
                self._log.info(
                    "GoIP UDP: dropped a datagram from {addr} ({reason}; {count} so far)",
                    addr=addr, reason=event.reason, count=self.totals["garbage"],
                )
            return
        if isinstance(event, udp.Answer):
            self._answer(event, addr)
            return
        line = self._by_id.get(event.goip_id)
        if line is None:
            self.totals["unknown_peer"] += 1
            if _log_every(self.totals["unknown_peer"]):
                self._log.warn(
                    "GoIP UDP: packet from {addr} with unknown id {goip_id!r} dropped ({count} so far)",
                    addr=addr, goip_id=event.goip_id[:64], count=self.totals["unknown_peer"],
                )
            return
        if not hmac.compare_digest(
            event.password.encode("utf-8", "surrogatepass"), line.password.encode("utf-8")
        ):
            line.bad_password += 1
            self.totals["bad_password"] += 1
            if _log_every(line.bad_password):
                self._log.warn(
                    "GoIP UDP: wrong password from {addr} for line {line!r} (id {goip_id!r});"
                    " packet dropped ({count} so far)",
                    addr=addr, line=line.name, goip_id=line.goip_id, count=line.bad_password,
                )
            return
        if isinstance(event, udp.Keepalive):
            self._keepalive(line, event, addr)
        elif isinstance(event, udp.Receive):
            self._receive(line, event, addr)
        elif isinstance(event, udp.Deliver):
            self._deliver(line, event, addr)
        else:
            self._notice(line, event, addr)

    def _write(self, packets: List[bytes], address: Address) -> None:
        transport = self.transport
        if transport is None:
            return
        for packet in packets:
            try:
                transport.write(packet, address)
            except Exception as e:
                # UDP send errors (no route, message too long) are the peer's loss, not
                # ours: log and carry on; the resend timers try again.
                self._log.warn(
                    "GoIP UDP: cannot send to {address}: {error}", address=address, error=str(e)
                )

    def _keepalive(self, line: _Line, ev: udp.Keepalive, addr: Address) -> None:
        now = self._clock.seconds()
        if not self._registered(line, now):
            line.since = now
            self._log.info(
                "GoIP line {line!r} registered from {addr} (signal {signal}, GSM {gsm})",
                line=line.name, addr=addr, signal=ev.signal, gsm=ev.gsm_status[:16],
            )
        elif line.address != addr:
            self._log.info(
                "GoIP line {line!r} now sends from {addr} (was {old})",
                line=line.name, addr=addr, old=line.address,
            )
        line.address = addr
        line.last_keepalive = now
        line.keepalives += 1
        line.signal = ev.signal
        line.gsm_status = ev.gsm_status[:32]
        line.voip_status = ev.voip_status[:32]
        line.number = ev.num[:32]
        line.sms_login = ev.sms_login[:8]
        self._write([udp.keepalive_ack(ev.count, self.dialect)], addr)

    def _remember_done(self, key: Tuple[str, ...]) -> None:
        self._done[key] = None
        self._done.move_to_end(key)
        while len(self._done) > self._remember:
            self._done.popitem(last=False)

    def _handover(
        self, key: Tuple[str, ...], addr: Address, ack: bytes, call: Callable[[], Any],
        on_done: Callable[[], None], what: str, line: _Line, recvid: str,
    ) -> None:
        """Hand a RECEIVE/DELIVER over once; answer every copy once it is stored."""
        if key in self._done:
            # A late copy (our answer was lost): already stored, just answer again.
            self.totals["duplicate"] += 1
            self._write([ack], addr)
            return
        waiting = self._inflight.get(key)
        if waiting is not None:
            self.totals["duplicate"] += 1
            waiting.append(addr)
            return
        self._inflight[key] = [addr]

        def stored(_: Any) -> None:
            addresses = self._inflight.pop(key, [])
            self._remember_done(key)
            on_done()
            # One answer per copy that arrived: each copy is a question the GoIP asked.
            for address in addresses:
                self._write([ack], address)

        def failed(failure: Any) -> None:
            # No answer: the GoIP sends the packet again and we try again then.
            self._inflight.pop(key, None)
            line.last_error = f"could not store {what} {recvid}: {failure.getErrorMessage()[:120]}"
            self._log.failure(
                "GoIP line {line!r}: storing {what} {recvid} failed; not acknowledged, the GoIP"
                " will resend", failure, line=line.name, what=what, recvid=recvid,
            )

        d = defer.maybeDeferred(call)
        d.addCallbacks(stored, failed)

    def _receive(self, line: _Line, ev: udp.Receive, addr: Address) -> None:
        dedupe_key = udp.receive_dedupe_key(line.name, ev.recvid, ev.srcnum, ev.text)
        if ev.lossy:
            self._log.warn(
                "GoIP line {line!r}: SMS {recvid} was not valid UTF-8; undecodable bytes replaced",
                line=line.name, recvid=ev.recvid,
            )

        def done() -> None:
            line.received += 1
            self._log.info("GoIP line {line!r}: SMS {recvid} stored", line=line.name, recvid=ev.recvid)

        self._handover(
            ("receive", dedupe_key), addr, udp.receive_ack(ev.recvid, self.dialect),
            lambda: self.on_receive(line.name, ev.recvid, ev.srcnum, ev.text, dedupe_key),
            done, "SMS", line, ev.recvid,
        )

    def _deliver(self, line: _Line, ev: udp.Deliver, addr: Address) -> None:
        def done() -> None:
            line.reports += 1

        self._handover(
            ("deliver", line.name, ev.recvid, ev.sms_no, ev.state, ev.num), addr,
            udp.deliver_ack(ev.recvid, self.dialect),
            lambda: self.on_report(line.name, ev.sms_no, ev.state, ev.num),
            done, "delivery report", line, ev.recvid,
        )

    def _notice(self, line: _Line, ev: udp.Notice, addr: Address) -> None:
        self._log.debug(
            "GoIP line {line!r}: {kind} {fields}", line=line.name, kind=ev.kind,
            fields=ev.safe_fields()[1:],
        )
        self._write([udp.notice_ack(ev.kind, ev.recvid, self.dialect)], addr)

    # -- dialogues ----------------------------------------------------------------------

    def _answer(self, event: udp.Answer, addr: Address) -> None:
        dialogue = self._dialogues.get(event.sendid)
        if dialogue is None:
            self.totals["unmatched_answer"] += 1
            self._log.debug(
                "GoIP UDP: answer for no running session ({event!r}) from {addr}", event=event, addr=addr,
            )
            return
        if addr[0] != dialogue.address[0]:
            self.totals["unknown_peer"] += 1
            self._log.warn(
                "GoIP UDP: answer for session {sendid} from {addr}, not from line {line!r} at"
                " {expected}; dropped",
                sendid=event.sendid, addr=addr, line=dialogue.line.name, expected=dialogue.address,
            )
            return
        packets = dialogue.session.receive(event, self._clock.seconds())
        self._write(packets, dialogue.address)
        self._step(dialogue)

    def _new_sendid(self) -> int:
        while True:
            sendid = self._next_id
            self._next_id = sendid + 1 if sendid < udp.MAX_SENDID else 1
            if sendid not in self._dialogues:
                return sendid

    def _start(self, dialogue: _Dialogue) -> defer.Deferred:
        def cancel(_: defer.Deferred) -> None:
            self._abort(dialogue, "cancelled")

        dialogue.deferred = defer.Deferred(cancel)
        self._dialogues[dialogue.session.sendid] = dialogue
        self._write(dialogue.session.start(self._clock.seconds()), dialogue.address)
        self._step(dialogue)
        return dialogue.deferred

    def _on_timer(self, dialogue: _Dialogue) -> None:
        dialogue.timer = None
        try:
            packets = dialogue.session.tick(self._clock.seconds())
            self._write(packets, dialogue.address)
            self._step(dialogue)
        except Exception:
            self._log.failure("GoIP UDP: internal error in a session timer")
            self._abort(dialogue, "internal error (see the log)")

    def _step(self, dialogue: _Dialogue) -> None:
        """After any input: report a result, end or re-arm the timer."""
        session = dialogue.session
        if dialogue.timer is not None and dialogue.timer.active():
            dialogue.timer.cancel()
        dialogue.timer = None
        if session.finished:
            self._dialogues.pop(session.sendid, None)
        else:
            wake = session.next_timer
            if wake is not None:
                delay = max(0.0, wake - self._clock.seconds())
                dialogue.timer = self._clock.callLater(delay, self._on_timer, dialogue)
        # Fire last: a queued send of this line starts inside the callback.
        self._report(dialogue)

    def _report(self, dialogue: _Dialogue) -> None:
        if dialogue.reported or dialogue.deferred is None:
            return
        session = dialogue.session
        line = dialogue.line
        if dialogue.kind == "sms":
            outcome: Optional[SendOutcome] = session.outcome
            if outcome is None:
                return
            dialogue.reported = True
            if outcome.ok:
                line.sent += 1
                self._log.info(
                    "GoIP line {line!r}: SMS sent (session {sendid}, sms_no {sms_no})",
                    line=line.name, sendid=session.sendid, sms_no=outcome.provider_id,
                )
            else:
                line.failed += 1
                line.last_error = outcome.reason
                self._log.warn(
                    "GoIP line {line!r}: SMS not sent (session {sendid}): {reason}",
                    line=line.name, sendid=session.sendid, reason=outcome.reason,
                )
            dialogue.deferred.callback(outcome)
            return
        if not session.finished:
            return
        dialogue.reported = True
        if session.error is not None:
            line.last_error = session.error
            self._log.warn("GoIP line {line!r}: USSD: {reason}", line=line.name, reason=session.error)
            dialogue.deferred.errback(UssdError(session.error))
        else:
            dialogue.deferred.callback(session.result)

    def _abort(self, dialogue: _Dialogue, reason: str) -> None:
        """Cancelled or stopping: end the session now (DONE if one is open)."""
        session = dialogue.session
        if dialogue.timer is not None and dialogue.timer.active():
            dialogue.timer.cancel()
        dialogue.timer = None
        self._dialogues.pop(session.sendid, None)
        if dialogue.kind == "sms":
            self._write(session.abort(self._clock.seconds(), reason), dialogue.address)
        else:
            session.abort(reason)
        if reason == "cancelled":
            # Deferred.cancel() errbacks with CancelledError itself.
            dialogue.reported = True
            return
        self._report(dialogue)

    def send(self, line: str, number: str, text: str) -> defer.Deferred:
        """Send one SMS through `line`; a Deferred that fires with a SendOutcome.

        Fails at once (down=True) for an unknown line or one that has not sent a
        keepalive within `down_after` seconds; permanently for a number or text that
        cannot go into a packet.  Otherwise it waits its turn behind the line's earlier
        sends, then runs the dialogue (checking the line again when its turn comes).
        """
        state = self._lines.get(line)
        if state is None:
            return defer.succeed(SendOutcome(False, reason=f"unknown GoIP line {line!r}", down=True))
        try:
            udp.check_number(number)
            udp.check_text(text)
        except udp.GoIPProtocolError as e:
            return defer.succeed(SendOutcome(False, permanent=True, reason=f"not sent: {e}"))
        reason = self._down_reason(state, self._clock.seconds())
        if reason is not None:
            return defer.succeed(SendOutcome(False, reason=reason, down=True))
        return state.lock.run(self._run_send, state, number, text)

    def _run_send(self, line: _Line, number: str, text: str) -> defer.Deferred:
        now = self._clock.seconds()
        reason = self._down_reason(line, now)
        if reason is not None:
            return defer.succeed(SendOutcome(False, reason=reason, down=True))
        assert line.address is not None
        session = udp.SendSession(
            self._new_sendid(), line.password, number, text, dialect=self.dialect,
            resend_interval=self.resend_interval, answer_timeout=self.answer_timeout,
            deadline=self.send_deadline,
        )
        return self._start(_Dialogue(line, session, line.address, "sms"))

    def ussd(self, line: str, code: str) -> defer.Deferred:
        """Send a USSD code through `line`; a Deferred firing with the network's answer
        text, or failing with UssdError.  Queued behind the line's sends."""
        state = self._lines.get(line)
        if state is None:
            return defer.fail(UssdError(f"unknown GoIP line {line!r}"))
        try:
            udp.check_ussd_code(code)
        except udp.GoIPProtocolError as e:
            return defer.fail(UssdError(str(e)))
        reason = self._down_reason(state, self._clock.seconds())
        if reason is not None:
            return defer.fail(UssdError(reason))
        return state.lock.run(self._run_ussd, state, code)

    def _run_ussd(self, line: _Line, code: str) -> defer.Deferred:
        reason = self._down_reason(line, self._clock.seconds())
        if reason is not None:
            return defer.fail(UssdError(reason))
        assert line.address is not None
        session = udp.UssdSession(
            self._new_sendid(), line.password, code, dialect=self.dialect,
            timeout=self.ussd_timeout, resend_after=self.ussd_resend_after,
        )
        return self._start(_Dialogue(line, session, line.address, "ussd"))

    def stopProtocol(self) -> None:
        # The port is closing: end every running dialogue with an answer now.
        for dialogue in list(self._dialogues.values()):
            self._abort(dialogue, "websmsd stopped listening for GoIP lines")
