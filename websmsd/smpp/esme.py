"""An SMPP 3.4 client bind (ESME side) on Twisted: one reconnecting bind to an SMSC.

``SMPPBind`` is a service built on ``twisted.application.internet.ClientService``: it
connects, binds (in the protocol, as soon as the connection is made), keeps the link
alive with enquire_link on an idle timer, and reconnects with backoff when the link
drops. The protocol is thin: bytes go to ``websmsd.smpp.pdu.PDUReader``, events come
back, and the session rules live here.

Promises the channel layer can build on:

- ``submit(fields)`` never resends anything: a submit_sm is written once. Its Deferred
  fires with a :class:`SubmitResult` for every submit_sm_resp (an error status such as
  ESME_RTHROTTLED is a result, for the caller's policy), or fails with
  :class:`NotBound` (nothing was sent), :class:`SubmitTimeout` or :class:`BindLost`
  (sent, outcome unknown). Pending submits fail the moment the connection is lost.
- A deliver_sm is answered ESME_ROK only after ``on_deliver(pdu)``'s Deferred fired
  successfully; when it fails the answer is an error status (ESME_RX_T_APPN, or the
  one a :class:`DeliverRefused` names), so the SMSC delivers it again later.
- A bind refused by the SMSC (bad system_id / password) is state ``bind failed`` and
  waits ``bind_failed_delay`` seconds before the next attempt: no reconnect storm.
"""

from __future__ import annotations

import contextlib
import collections
from typing import Callable, Dict, NamedTuple, Optional

from twisted.application import service
from twisted.application.internet import ClientService, backoffPolicy
from twisted.internet import defer, protocol
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from websmsd.smpp import pdu as P

__all__ = [
    "SMPPBind", "ESMEProtocol", "SubmitResult", "SMPPError", "NotBound", "SubmitTimeout",
    "BindLost", "BindFailed", "DeliverRefused",
]

# States of an SMPPBind, as the status page shows them.
STOPPED = "stopped"
CONNECTING = "connecting"
BINDING = "binding"
BOUND = "bound"
UNBINDING = "unbinding"
BIND_FAILED = "bind failed"
DISCONNECTED = "disconnected"

_MAX_SEQUENCE = 0x7FFFFFFF


class SMPPError(Exception):
    """Base of the errors a submit can fail with."""


class NotBound(SMPPError):
    """The bind is not bound: the submit_sm was not sent."""


class SubmitTimeout(SMPPError):
    """The submit_sm was sent and no answer came in time: it may or may not go out."""


class BindLost(SMPPError):
    """The connection was lost after the submit_sm was sent, before its answer: it may
    or may not go out."""


class BindFailed(SMPPError):
    """The SMSC refused the bind (``status``), or did not answer it."""

    def __init__(self, message: str, status: Optional[int] = None):
        super().__init__(message)
        self.status = status


class DeliverRefused(Exception):
    """Raised (or failed with) by ``on_deliver`` to answer a deliver_sm with ``status``
    (e.g. ESME_RX_P_APPN: do not send it again) instead of ESME_RX_T_APPN."""

    def __init__(self, status: int = P.ESME_RX_T_APPN, reason: str = ""):
        super().__init__(reason or P.status_name(status))
        self.status = status


class SubmitResult(NamedTuple):
    """The answer to one submit_sm: ``status`` (command_status; 0 is accepted) and the
    ``message_id`` the SMSC gave (None when it gave none)."""

    status: int
    message_id: Optional[str]

    @property
    def ok(self) -> bool:
        return self.status == P.ESME_ROK

    @property
    def status_name(self) -> str:
        return P.status_name(self.status)


class _Timeout(Exception):
    """No answer within the request's deadline."""


class _Pending:
    __slots__ = ("command", "deferred", "timer")

    def __init__(self, command, deferred, timer):
        self.command, self.deferred, self.timer = command, deferred, timer


def _fire(d: defer.Deferred, value) -> None:
    # The caller may have cancelled it; an answer that comes later changes nothing.
    if not d.called:
        if isinstance(value, (Failure, BaseException)):
            d.errback(value)
        else:
            d.callback(value)


class ESMEProtocol(protocol.Protocol):
    """One connection to the SMSC: binds on connect, then carries PDUs both ways."""

    log = Logger()

    def __init__(self, bind: "SMPPBind"):
        self.bind = bind
        self.clock = bind.clock
        self.state = "new"
        self.reader = P.PDUReader(bind.max_pdu)
        self._seq = 0
        self._pending: Dict[int, _Pending] = {}
        self._inflight = 0
        self._queue: "collections.deque" = collections.deque()
        self._idle = None
        self._enquiring = False
        self._connected = False
        self._why_closed: Optional[str] = None

    # -- connection -------------------------------------------------------------------

    def connectionMade(self):
        self._connected = True
        if self.bind._stopping:
            self._close("stopping")
            return
        self.state = BINDING
        self.bind._binding(self)
        b = self.bind
        d = self._request(f"bind_{b.mode}", {
            "system_id": b.system_id, "password": b.password, "system_type": b.system_type,
            "interface_version": 0x34,
        })
        d.addCallbacks(self._bind_answered, self._bind_unanswered)

    def _bind_answered(self, resp: P.PDU):
        if self.state != BINDING:
            return
        if resp.status == P.ESME_ROK and resp.command != "generic_nack":
            self.state = BOUND
            self.bind._bound(self, resp.get("system_id") or "")
            self._touch()
            return
        status = resp.status or P.ESME_RBINDFAIL
        self.bind._bind_failed(self, status)
        self._close(f"bind refused ({P.status_name(status)})")

    def _bind_unanswered(self, failure: Failure):
        if failure.check(_Timeout):
            self.bind._bind_failed(self, None)
            self._close("no answer to bind", abort=True)

    def connectionLost(self, reason=ConnectionDone):
        self._connected = False
        was = self.state
        self.state = "closed"
        if self._idle is not None and self._idle.active():
            self._idle.cancel()
        self._idle = None
        why = self._why_closed or _reason_text(reason)
        pending, self._pending = self._pending, {}
        queue, self._queue = self._queue, collections.deque()
        self._inflight = 0
        for p in pending.values():
            if p.timer.active():
                p.timer.cancel()
            if p.command == "submit_sm":
                _fire(p.deferred, BindLost(f"connection lost before the answer ({why})"))
            else:
                _fire(p.deferred, BindLost(why))
        for _, d in queue:
            _fire(d, NotBound(f"connection lost ({why})"))
        self.bind._lost(self, was, why)

    def _close(self, why: str, abort: bool = False):
        if self._why_closed is None:
            self._why_closed = why
        if not self._connected:
            return
        self.state = "closing" if self.state != "closed" else self.state
        if abort and hasattr(self.transport, "abortConnection"):
            self.transport.abortConnection()
        else:
            self.transport.loseConnection()

    # -- incoming ---------------------------------------------------------------------

    def dataReceived(self, data: bytes):
        self._touch()
        for event in self.reader.feed(data):
            if not self._connected or self._why_closed:
                return
            if isinstance(event, P.PDU):
                self._on_pdu(event)
            elif isinstance(event, P.DecodeError):
                self._on_decode_error(event)
            else:
                self.log.warn("SMPP {bind}: framing lost ({reason}); dropping the connection",
                              bind=self.bind.label, reason=event.reason)
                self._write(event.generic_nack())
                self._close(f"framing lost: {event.reason}", abort=True)
                return

    def _on_pdu(self, pdu: P.PDU):
        if pdu.is_response:
            self._answered(pdu.sequence, pdu)
            return
        handler = self._handlers.get(pdu.command)
        if handler is not None:
            handler(self, pdu)
            return
        if pdu.command in ("alert_notification", "outbind"):
            # no response is defined for these; nothing to do on a client bind
            self.log.debug("SMPP {bind}: ignored {command}", bind=self.bind.label,
                           command=pdu.command)
            return
        # a request only an SMSC takes (bind, submit_sm...)
        self._write(pdu.resp(P.ESME_RINVCMDID))

    def _on_decode_error(self, err: P.DecodeError):
        self.log.warn("SMPP {bind}: bad {command} (seq {seq}): {reason}",
                      bind=self.bind.label, command=err.command or hex(err.command_id),
                      seq=err.sequence, reason=err.reason)
        if err.is_response:
            # an answer we cannot read still answers its request, with no message id
            name = err.command or "generic_nack"
            self._answered(err.sequence, P.PDU(name, err.sequence, err.header_status))
            return
        self._write(err.error_response())

    def _on_enquire_link(self, pdu: P.PDU):
        self._write(pdu.resp())

    def _on_unbind(self, pdu: P.PDU):
        self._write(pdu.resp())
        self._close("unbound by the SMSC")

    def _on_data_sm(self, pdu: P.PDU):
        # GoIP implements no data_sm; a client bind does not take it either.
        self._write(pdu.resp(P.ESME_RINVCMDID))

    def _on_deliver_sm(self, pdu: P.PDU):
        if self.state not in (BOUND, UNBINDING):
            self._write(pdu.resp(P.ESME_RINVBNDSTS))
            return
        on_deliver = self.bind.on_deliver
        if on_deliver is None:
            self.log.warn("SMPP {bind}: deliver_sm refused: no handler", bind=self.bind.label)
            self._write(pdu.resp(P.ESME_RX_T_APPN))
            return
        d = defer.maybeDeferred(on_deliver, pdu)
        d.addCallbacks(lambda _: self._write(pdu.resp(P.ESME_ROK)),
                       lambda f: self._deliver_failed(pdu, f))

    def _deliver_failed(self, pdu: P.PDU, failure: Failure):
        refused = failure.check(DeliverRefused)
        status = failure.value.status if refused else P.ESME_RX_T_APPN
        if refused:
            self.log.info("SMPP {bind}: deliver_sm (seq {seq}) refused: {reason}",
                          bind=self.bind.label, seq=pdu.sequence, reason=str(failure.value))
        else:
            self.log.failure("SMPP {bind}: deliver_sm (seq {seq}) not taken; the SMSC "
                             "will retry", failure, bind=self.bind.label, seq=pdu.sequence)
        self._write(pdu.resp(status))

    _handlers = {
        "enquire_link": _on_enquire_link,
        "unbind": _on_unbind,
        "data_sm": _on_data_sm,
        "deliver_sm": _on_deliver_sm,
    }

    # -- requests ---------------------------------------------------------------------

    def _next_sequence(self) -> int:
        self._seq = self._seq + 1 if self._seq < _MAX_SEQUENCE else 1
        return self._seq

    def _write(self, pdu: P.PDU) -> None:
        if self._connected:
            self.transport.write(pdu.encode())

    def _request(self, command: str, fields: dict,
                 timeout: Optional[float] = None) -> defer.Deferred:
        seq = self._next_sequence()
        return self._send_request(command, seq, P.PDU(command, seq, fields=fields).encode(),
                                  timeout)

    def _send_request(self, command: str, seq: int, data: bytes,
                      timeout: Optional[float] = None) -> defer.Deferred:
        d = defer.Deferred()
        timer = self.clock.callLater(
            self.bind.response_timeout if timeout is None else timeout, self._timed_out, seq)
        self._pending[seq] = _Pending(command, d, timer)
        self.transport.write(data)
        return d

    def _answered(self, seq: int, resp: P.PDU):
        pending = self._pending.get(seq)
        if pending is None:
            self.log.info("SMPP {bind}: answer to no request: {command} seq {seq}",
                          bind=self.bind.label, command=resp.command, seq=seq)
            return
        expected = P.COMMAND_NAMES.get(P.COMMAND_IDS[pending.command] | P.RESPONSE_BIT)
        if resp.command not in (expected, "generic_nack"):
            self.log.warn("SMPP {bind}: {command} answers {request} (seq {seq}); ignored",
                          bind=self.bind.label, command=resp.command,
                          request=pending.command, seq=seq)
            return
        del self._pending[seq]
        if pending.timer.active():
            pending.timer.cancel()
        if pending.command == "submit_sm":
            self._inflight -= 1
            _fire(pending.deferred, SubmitResult(resp.status, resp.get("message_id") or None))
            self._pump()
        else:
            _fire(pending.deferred, resp)

    def _timed_out(self, seq: int):
        pending = self._pending.pop(seq, None)
        if pending is None:
            return
        if pending.command == "submit_sm":
            self._inflight -= 1
            _fire(pending.deferred, SubmitTimeout(
                f"no submit_sm_resp within {self.bind.response_timeout} s"))
            self._pump()
        else:
            _fire(pending.deferred, _Timeout(pending.command))

    # -- submit -----------------------------------------------------------------------

    def submit(self, fields: dict) -> defer.Deferred:
        if self.state != BOUND:
            return defer.fail(NotBound(f"bind {self.bind.label} is {self.state}"))
        entry = [fields, None]

        def cancel(d):
            # still waiting for the window: it never goes out
            # Already sent (not queued): the answer, when it comes, is dropped.
            with contextlib.suppress(ValueError):
                self._queue.remove(entry)

        d = defer.Deferred(cancel)
        entry[1] = d
        self._queue.append(entry)
        self._pump()
        return d

    def _pump(self):
        while self._queue and self._inflight < self.bind.window and self.state == BOUND:
            fields, d = self._queue.popleft()
            if d.called:
                continue
            seq = self._next_sequence()
            try:
                data = P.PDU("submit_sm", seq, fields=fields).encode()
            except P.PDUError as e:
                d.errback(e)
                continue
            self._inflight += 1
            self._send_request("submit_sm", seq, data).addBoth(lambda r, d=d: _fire(d, r))

    # -- keepalive and unbind ----------------------------------------------------------

    def _touch(self):
        if self.state not in (BOUND, UNBINDING):
            return
        if self._idle is not None and self._idle.active():
            self._idle.reset(self.bind.enquire_link)
        else:
            self._idle = self.clock.callLater(self.bind.enquire_link, self._idle_fired)

    def _idle_fired(self):
        self._idle = None
        if self.state != BOUND or self._enquiring:
            return
        self._enquiring = True
        d = self._request("enquire_link", {})

        def answered(_):
            self._enquiring = False

        def unanswered(f):
            self._enquiring = False
            if f.check(_Timeout):
                self.log.warn("SMPP {bind}: no answer to enquire_link; reconnecting",
                              bind=self.bind.label)
                self._close("no answer to enquire_link", abort=True)

        d.addCallbacks(answered, unanswered)
        self._touch_after_request()

    def _touch_after_request(self):
        # Another idle period later, check again (the enquiry's own timeout drops a
        # dead link; this only keeps the keepalive going on a quiet live one).
        if self._idle is None:
            self._idle = self.clock.callLater(self.bind.enquire_link, self._idle_fired)

    def unbind(self, timeout: float) -> defer.Deferred:
        """Send unbind, wait for its answer at most ``timeout`` seconds, then close.
        Submits not yet sent fail with NotBound; those in flight keep their chance to be
        answered until the connection closes."""
        if self.state != BOUND:
            self._close("stopping")
            return defer.succeed(None)
        self.state = UNBINDING
        queue, self._queue = self._queue, collections.deque()
        for _, d in queue:
            _fire(d, NotBound("unbinding"))
        d = self._request("unbind", {}, timeout=timeout)
        d.addBoth(lambda _: self._close("unbound"))
        return d


def _printable(text: str, limit: int = 64) -> str:
    """A peer's string made safe for one log line (no CR/LF or other controls)."""
    return "".join(c if c.isprintable() else "?" for c in text[:limit])


def _reason_text(reason) -> str:
    if isinstance(reason, Failure):
        if reason.check(ConnectionDone):
            return "closed by the SMSC"
        return reason.getErrorMessage()
    return str(reason)


class _Factory(protocol.Factory):
    noisy = False

    def __init__(self, bind: "SMPPBind"):
        self.bind = bind

    def buildProtocol(self, addr):
        p = ESMEProtocol(self.bind)
        p.factory = self
        return p


@implementer(IStreamClientEndpoint)
class _WatchedEndpoint:
    """Tells the bind when a connection attempt starts and why one failed (ClientService
    only hands the count of failures to its retry policy)."""

    def __init__(self, endpoint, bind: "SMPPBind"):
        self._endpoint, self._bind = endpoint, bind

    def __repr__(self):
        return repr(self._endpoint)

    def connect(self, factory):
        self._bind._set_state(CONNECTING, "connecting")
        d = self._endpoint.connect(factory)
        d.addErrback(self._bind._connect_failed)
        return d


class SMPPBind(service.Service):
    """One SMPP bind kept up for as long as the service runs.

    ``state`` is one of ``stopped``, ``connecting``, ``binding``, ``bound``,
    ``unbinding``, ``bind failed``, ``disconnected``; ``since`` is when it became so
    (the reactor's clock) and ``detail`` says why in one line. ``on_state(state,
    detail)`` is called at each change. ``next_attempt`` is when the next connection
    attempt is due (None while connected).
    """

    log = Logger()

    def __init__(self, reactor, endpoint, system_id: str, password: str, *,
                 system_type: str = "", mode: str = "transceiver",
                 enquire_link: float = 30.0, response_timeout: float = 20.0,
                 window: int = 10,
                 on_deliver: Optional[Callable[[P.PDU], object]] = None,
                 on_state: Optional[Callable[[str, str], None]] = None,
                 name: str = "", retry_policy: Optional[Callable[[int], float]] = None,
                 bind_failed_delay: float = 300.0, unbind_timeout: float = 5.0,
                 max_pdu: int = P.MAX_PDU_LENGTH):
        if mode not in ("transceiver", "transmitter", "receiver"):
            raise ValueError(f"unknown bind mode {mode!r}")
        if window < 1 or enquire_link <= 0 or response_timeout <= 0:
            raise ValueError("window >= 1, enquire_link > 0 and response_timeout > 0")
        # fail at construction, not at every bind, when they cannot be encoded
        P.PDU(f"bind_{mode}", 1, system_id=system_id, password=password,
              system_type=system_type).encode()
        self.clock = reactor
        self.system_id, self.password, self.system_type = system_id, password, system_type
        self.mode = mode
        self.enquire_link = float(enquire_link)
        self.response_timeout = float(response_timeout)
        self.window = int(window)
        self.on_deliver = on_deliver
        self.on_state = on_state
        self.name = name or None
        self.label = name or system_id
        self.bind_failed_delay = float(bind_failed_delay)
        self.unbind_timeout = float(unbind_timeout)
        self.max_pdu = max_pdu
        self._policy = retry_policy or backoffPolicy(1.0, 60.0, 2.0)
        self._failures = 0
        self._refused = False
        self._stopping = False
        self._proto: Optional[ESMEProtocol] = None
        self._waiters: list = []
        self.state, self.detail = STOPPED, "not started"
        self.since = reactor.seconds()
        self.next_attempt: Optional[float] = None
        self.peer_system_id: Optional[str] = None
        self._client = ClientService(_WatchedEndpoint(endpoint, self), _Factory(self),
                                     retryPolicy=self._retry_delay, clock=reactor)

    # -- service ----------------------------------------------------------------------

    def startService(self):
        service.Service.startService(self)
        self._stopping = False
        self._client.startService()

    def stopService(self):
        service.Service.stopService(self)
        self._stopping = True
        proto = self._proto
        if proto is not None and proto.state == BOUND:
            self._set_state(UNBINDING, "unbinding")
            d = proto.unbind(self.unbind_timeout)
        else:
            d = defer.succeed(None)
        d.addBoth(lambda _: self._client.stopService())

        def stopped(_):
            self._set_state(STOPPED, "stopped")
            waiters, self._waiters = self._waiters, []
            for w in waiters:
                _fire(w, NotBound("stopped"))

        d.addBoth(stopped)
        return d

    # -- the API ----------------------------------------------------------------------

    @property
    def bound(self) -> bool:
        return self.state == BOUND

    @property
    def protocol(self) -> Optional[ESMEProtocol]:
        """The current connection's protocol (None between connections)."""
        return self._proto

    def submit(self, fields: dict) -> defer.Deferred:
        """Send one submit_sm with ``fields`` (as ``pdu.submits_for`` builds them).
        Fires with SubmitResult; fails with NotBound, SubmitTimeout, BindLost, or
        PDUError for fields that cannot be encoded. At most ``window`` are in flight;
        more wait their turn (cancelling a waiting one withdraws it)."""
        proto = self._proto
        if proto is None or self.state != BOUND:
            return defer.fail(NotBound(f"bind {self.label} is {self.state}: {self.detail}"))
        return proto.submit(fields)

    def when_bound(self) -> defer.Deferred:
        """Fires (with this bind) once bound; at once if bound now. Fails with NotBound
        when the service stops first."""
        if self.state == BOUND:
            return defer.succeed(self)
        d = defer.Deferred()
        self._waiters.append(d)
        return d

    # -- what the protocol and the endpoint report -------------------------------------

    def _set_state(self, state: str, detail: str) -> None:
        if (state, detail) == (self.state, self.detail):
            return
        self.state, self.detail, self.since = state, detail, self.clock.seconds()
        if self.on_state is not None:
            try:
                self.on_state(state, detail)
            except Exception:
                self.log.failure("SMPP {bind}: on_state failed", bind=self.label)

    def _connect_failed(self, failure: Failure):
        if not failure.check(defer.CancelledError):
            self._set_state(DISCONNECTED, f"cannot connect: {failure.getErrorMessage()}")
        return failure

    def _binding(self, proto: ESMEProtocol):
        self._proto = proto
        self._refused = False
        self.next_attempt = None
        self._set_state(BINDING, f"binding as {self.system_id}")

    def _bound(self, proto: ESMEProtocol, peer_system_id: str):
        self._failures = 0
        self._refused = False
        self.peer_system_id = peer_system_id
        self.log.info("SMPP {bind}: bound as {system_id} ({mode}) to {peer}",
                      bind=self.label, system_id=self.system_id, mode=self.mode,
                      peer=_printable(peer_system_id) or "?")
        self._set_state(BOUND, f"bound as {self.system_id}")
        waiters, self._waiters = self._waiters, []
        for w in waiters:
            _fire(w, self)

    def _bind_failed(self, proto: ESMEProtocol, status: Optional[int]):
        if status is None:
            self._set_state(DISCONNECTED, "no answer to bind")
            return
        self._refused = True
        self.log.warn("SMPP {bind}: bind as {system_id} refused: {status}", bind=self.label,
                      system_id=self.system_id, status=P.status_name(status))
        self._set_state(BIND_FAILED,
                        f"check system_id/password (status 0x{status:08X} "
                        f"{P.status_name(status)})")

    def _lost(self, proto: ESMEProtocol, was: str, why: str):
        if proto is self._proto:
            self._proto = None
        if self._stopping:
            return
        if self.state != BIND_FAILED:
            self.log.info("SMPP {bind}: connection lost while {was}: {why}", bind=self.label,
                          was=was, why=why)
            self._set_state(DISCONNECTED, f"connection lost: {why}")

    def _retry_delay(self, attempt: int) -> float:
        if self._stopping:
            delay = 3600.0
        elif self._refused:
            delay = self.bind_failed_delay
        else:
            self._failures += 1
            delay = self._policy(self._failures)
        self.next_attempt = self.clock.seconds() + delay
        return delay
