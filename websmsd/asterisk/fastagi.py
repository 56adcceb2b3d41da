"""FastAGI over Twisted: the dialplan's `AGI(agi://...)` sessions, answered.

A thin protocol around the sans-IO session of `websmsd.asterisk.agi`: it reads the
environment, fetches the body from the channel, hands the request to the handler (the
outbox), sets WEBSMS_STATUS / WEBSMS_ID / WEBSMS_REASON and closes (never HANGUP, which
would stop the dialplan).
"""

from __future__ import annotations

from typing import Any, Callable, Dict, List, Optional, Sequence

from twisted.internet import defer, protocol
from twisted.logger import Logger

from websmsd.asterisk.agi import (BODY_COMMAND, FAILED, STATUSES, AGIProtocolError,
                                  AGISession, Environment, Event, Hangup, Reply, command_bytes,
                                  decode_body_reply, message_body, set_variable)
from websmsd.text import shown
from websmsd.record import frozen

log = Logger(namespace="websmsd.asterisk.fastagi")

# Longest WEBSMS_REASON / WEBSMS_ID written: they end up in a dialplan and its log.
MAX_REASON = 200
MAX_ID = 100


@frozen
class AGIRequest:
    """One outbound message as the dialplan handed it over."""

    script: str  # agi_network_script, e.g. "websms"
    to: str  # agi_arg_1 (${EXTEN})
    sender: str  # agi_arg_2 (${MESSAGE(from)})
    body: str  # exact: MESSAGE(body) from the channel, else agi_arg_3
    index: str  # agi_arg_4 (${WEBSMS_INDEX}), "" if absent
    env: Dict[str, str]  # every agi_* variable (agi_uniqueid is no message key)
    peer: Any = None  # the peer's IAddress


@frozen
class AGIResult:
    status: str  # SENT, QUEUED or FAILED
    message_id: Optional[str] = None
    reason: Optional[str] = None


Handler = Callable[[AGIRequest], Any]  # -> AGIResult or Deferred[AGIResult]


def _address(peer: Any) -> str:
    host, port = getattr(peer, "host", None), getattr(peer, "port", None)
    return f"{host}:{port}" if host is not None else str(peer)


def _failure_reason(failure: Any) -> str:
    # A value error (a refused number, say) is the caller's problem and says why; any
    # other exception is ours, and its text is no business of the dialplan.
    if failure.check(ValueError):
        text = str(failure.value).strip()
        if text:
            return text
    return "internal error"


class FastAGIProtocol(protocol.Protocol):
    """One FastAGI session: environment, body, handler, SET VARIABLEs, close."""

    def __init__(self, handler: Handler, reactor: Any, timeout: float = 30.0,
                 scripts: Sequence[str] = ("websms",)):
        self.handler = handler
        self.reactor = reactor
        self.timeout = timeout
        self.scripts = tuple(scripts)
        self.session = AGISession()
        # connecting -> environment -> body -> handler -> answering -> done
        self.phase = "connecting"
        self.request: Optional[AGIRequest] = None
        self.result: Optional[AGIResult] = None
        self.closed = False  # the transport is gone
        self._peer = "?"
        self._timer: Any = None
        self._sets: List[bytes] = []

    # -- Twisted callbacks -----------------------------------------------------------

    def connectionMade(self) -> None:
        self._peer = _address(self.transport.getPeer())
        self.phase = "environment"
        self._arm()

    def dataReceived(self, data: bytes) -> None:
        if self.phase == "done" or self.closed:
            return
        try:
            events = self.session.feed(data)
        except AGIProtocolError as e:
            # Close at once: even events parsed before the error are not acted on, so
            # that no message is stored for a session that cannot be answered.
            log.warn("FastAGI session from {peer} broke the protocol ({phase}): {error}",
                     peer=self._peer, phase=self.phase, error=str(e))
            self._finish()
            return
        for event in events:
            if self.phase == "done" or self.closed:
                return
            self._event(event)

    def connectionLost(self, reason: Any = None) -> None:
        self.closed = True
        self._disarm()
        if self.phase == "handler":
            log.info("Asterisk ({peer}) left before the result of its message was known",
                     peer=self._peer)
        elif self.phase not in ("done", "connecting"):
            log.info("FastAGI session from {peer} closed by the peer ({phase})",
                     peer=self._peer, phase=self.phase)
        self.phase = "done"

    # -- the conversation ------------------------------------------------------------

    def _event(self, event: Event) -> None:
        if isinstance(event, Hangup):
            log.info("Asterisk ({peer}) sent HANGUP ({phase})", peer=self._peer,
                     phase=self.phase)
            self._finish()
        elif isinstance(event, Environment):
            if self.phase == "environment":
                self.phase = "body"
                self._send(command_bytes(*BODY_COMMAND))
        elif self.phase == "body":
            self._start(event)
        elif self.phase == "answering":
            self._set_answered(event)
        else:
            log.debug("unexpected AGI answer {code} from {peer} ({phase})",
                      code=event.code, peer=self._peer, phase=self.phase)

    def _start(self, reply: Reply) -> None:
        env = self.session.environment
        assert env is not None
        args = env.args
        body = message_body(env, reply)
        request = AGIRequest(
            script=env.script,
            to=args[0] if args else "",
            sender=args[1] if len(args) > 1 else "",
            body=body,
            index=args[3] if len(args) > 3 else "",
            env=dict(env.variables),
            peer=self.transport.getPeer(),
        )
        self.request = request
        log.debug("FastAGI {script!r} from {peer}: to={to!r} from={sender!r} index={index!r} "
                  "body of {length} characters from {source}",
                  script=request.script, peer=self._peer, to=request.to,
                  sender=request.sender, index=request.index, length=len(body),
                  source="agi_arg_3" if decode_body_reply(reply) is None else "the channel")
        problem = self._refusal(request)
        if problem:
            log.warn("FastAGI request from {peer} refused: {reason}", peer=self._peer,
                     reason=problem)
            self._answer(AGIResult(FAILED, None, problem))
            return
        self.phase = "handler"
        self._arm()
        d = defer.maybeDeferred(self.handler, request)
        d.addCallbacks(self._handled, self._handler_failed)
        d.addErrback(lambda f: log.failure("FastAGI answer to {peer} failed", f,
                                           peer=self._peer))

    def _refusal(self, request: AGIRequest) -> Optional[str]:
        if request.script not in self.scripts:
            return f"unknown FastAGI script {shown(request.script)}"
        if not request.to.strip():
            return "no recipient (agi_arg_1 is empty)"
        if not request.sender.strip():
            return "no sender (agi_arg_2 is empty)"
        if not request.body:
            # Asterisk drops a SIP MESSAGE body over 1023 bytes and still runs the
            # dialplan: never turn that into an empty SMS.
            return "empty message body (Asterisk drops SIP MESSAGE bodies over 1023 bytes)"
        return None

    def _handled(self, result: Any) -> None:
        if not isinstance(result, AGIResult) or result.status not in STATUSES:
            log.error("FastAGI handler returned {result!r}, not an AGIResult", result=result)
            result = AGIResult(FAILED, None, "internal error")
        self._conclude(result)

    def _handler_failed(self, failure: Any) -> None:
        log.failure("FastAGI handler failed for a message to {to!r}", failure,
                    to=self.request.to if self.request else None)
        self._conclude(AGIResult(FAILED, None, _failure_reason(failure)))

    def _conclude(self, result: AGIResult) -> None:
        request = self.request
        log.info("FastAGI message to {to!r} from {sender!r}: {status} {message_id} {reason}",
                 to=request.to if request else None,
                 sender=request.sender if request else None, status=result.status,
                 message_id=result.message_id or "", reason=result.reason or "")
        if self.closed or self.phase != "handler":
            # Timed out or gone: the message is in the store all the same.
            log.info("the result for {peer} came after the session ended; not sent",
                     peer=self._peer)
            return
        self._answer(result)

    def _answer(self, result: AGIResult) -> None:
        self.result = result
        reason = result.reason
        if result.status == FAILED and not reason:
            reason = "not sent"
        sets = [set_variable("WEBSMS_STATUS", result.status)]
        if result.message_id:
            sets.append(set_variable("WEBSMS_ID", str(result.message_id)[:MAX_ID]))
        if reason:
            sets.append(set_variable("WEBSMS_REASON", str(reason)[:MAX_REASON]))
        self._sets = sets
        self.phase = "answering"
        self._next_set()

    def _set_answered(self, reply: Reply) -> None:
        if reply.code != 200:
            log.warn("Asterisk ({peer}) refused a SET VARIABLE: {code} {data}",
                     peer=self._peer, code=reply.code, data=reply.data)
        self._next_set()

    def _next_set(self) -> None:
        if not self._sets:
            self._finish()
            return
        self._arm()
        self._send(self._sets.pop(0))

    # -- plumbing --------------------------------------------------------------------

    def _send(self, line: bytes) -> None:
        if self.closed or self.phase == "done":
            return
        self.transport.write(self.session.send(line))

    def _finish(self) -> None:
        """Close (never HANGUP): AGI() returns and the dialplan goes on."""
        self._disarm()
        if self.phase == "done":
            return
        self.phase = "done"
        if not self.closed:
            self.transport.loseConnection()

    def _arm(self) -> None:
        self._disarm()
        self._timer = self.reactor.callLater(self.timeout, self._timed_out)

    def _disarm(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None

    def _timed_out(self) -> None:
        self._timer = None
        log.warn("FastAGI session from {peer} timed out after {timeout} s ({phase})",
                 peer=self._peer, timeout=self.timeout, phase=self.phase)
        # A pending handler is not cancelled: the message completes in the store, and
        # WEBSMS_STATUS stays empty (unknown) for the dialplan.
        self._finish()


class FastAGIFactory(protocol.Factory):
    """Builds a `FastAGIProtocol` per connection from Asterisk.

    `handler(request: AGIRequest)` returns an `AGIResult` or a Deferred firing with one;
    it is not called for an unknown script, a missing recipient or sender, or an empty
    body (those are answered FAILED at once).  `timeout` bounds each wait: for the
    environment and each answer from Asterisk, and for the handler.
    """

    protocol = FastAGIProtocol
    noisy = False

    def __init__(self, handler: Handler, reactor: Any = None, timeout: float = 30.0,
                 scripts: Sequence[str] = ("websms",)):
        if reactor is None:
            from twisted.internet import reactor as default_reactor

            reactor = default_reactor
        self.handler = handler
        self.reactor = reactor
        self.timeout = timeout
        self.scripts = tuple(scripts)

    def buildProtocol(self, addr: Any) -> FastAGIProtocol:
        p = FastAGIProtocol(self.handler, self.reactor, self.timeout, self.scripts)
        p.factory = self
        return p
