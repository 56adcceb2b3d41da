"""AMI client: one logged-in manager session, kept up by a `ClientService`.

Shared by two channels: delivery to PBX phones over the PBX's own Asterisk
(`MessageSend`, registration events) and the Yeastar TG's AMI-like SMS API
(`smscommand`, `ReceivedSMS` / `UpdateSMSSend` events).  Framing and correlation live in
the sans-IO `ami.py`; this module only adds sockets, timers and the service.

Promises:

* Login (Username/Secret, Events) on every connect, after the banner.  A refused login
  is shown as `login failed: <message>` and retried after 30 s, doubling to 5 min:
  never a reconnect storm against a device that refuses us (the TG closes the
  connection after a failed login, as Asterisk does).  A dropped connection is retried
  with ClientService's backoff, which grows too when connections keep closing before a
  login.
* `action()` answers come back on the Deferred that sent them, whatever events are
  interleaved.  An action is written once: if the connection is lost before its answer
  the Deferred fails at once with `ActionLost` (it may or may not have run) and nothing
  is sent again after a reconnect, which could deliver an SMS twice.
* Liveness: after `ping_interval` seconds without a byte from the peer (and no action
  outstanding) the client sends `ping_action`; no answer within `action_timeout`
  drops the connection.  Any answer counts, even an error (the TG has no Ping).
* Subscribers are kept on the service, so they survive reconnects.
* The secret never reaches a log line.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple, Union

from twisted.application import service
from twisted.application.internet import ClientService, backoffPolicy
from twisted.internet import defer, error, protocol
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from websmsd.ami.protocol import (
    DEFAULT_MAX_PACKET,
    ActionDone,
    ActionResult,
    AMIEncodeError,
    AMIError,
    AMIParser,
    AMISession,
    Banner,
    Packet,
    ParseError,
    Stray,
    Unsolicited,
    encode_action,
)

log = Logger(namespace="websmsd.ami")

# State kinds (AMIClient.state_kind); AMIClient.state adds ": <detail>" to the last two.
STOPPED = "stopped"
CONNECTING = "connecting"
LOGGED_IN = "logged in"
LOGIN_FAILED = "login failed"
DISCONNECTED = "disconnected"


class NotConnected(AMIError):
    """No logged-in session right now; nothing was sent."""


class ActionTimeout(AMIError):
    """No answer within the timeout.  The action may still run (or have run)."""


class ActionLost(AMIError):
    """The connection went away before the answer.  The action may or may not have run;
    it is never sent again by the client."""


class ActionFailed(AMIError):
    """`Response: Error` to a `command()`; `.result` is the whole `ActionResult`."""

    def __init__(self, message: str, result: ActionResult):
        super().__init__(message)
        self.result = result


Fields = Iterable[Tuple[str, str]]
Subscriber = Callable[[Packet], Any]


def _why(reason: Optional[Failure]) -> str:
    if reason is None:
        return "connection closed"
    if reason.check(error.ConnectionDone):
        return "connection closed by the peer"
    text = str(reason.value).strip()
    return text or reason.type.__name__


class _Call:
    __slots__ = ("action", "deferred", "timer", "rx_mark", "timeout")

    def __init__(self, action: str, deferred: defer.Deferred, timer: Any, rx_mark: int,
                 timeout: float):
        self.action = action
        self.deferred = deferred
        self.timer = timer
        self.rx_mark = rx_mark  # reads seen when it was sent
        self.timeout = timeout


class AMIProtocol(protocol.Protocol):
    """One manager connection: banner, Login, actions, events, keepalive."""

    def __init__(self, client: "AMIClient"):
        self.client = client
        self.clock = client.clock
        self.parser = AMIParser(max_packet=client.max_packet)
        self.session = AMISession()
        self.logged_in = False
        self.login_failed = False
        self.closed = False
        self._drop_reason: Optional[str] = None
        self._calls: Dict[str, _Call] = {}
        self._reads = 0
        self._banner_timer: Any = None
        self._idle_timer: Any = None
        self._peer = "?"

    # -- Twisted callbacks -----------------------------------------------------------

    def connectionMade(self) -> None:
        peer = self.transport.getPeer()
        host, port = getattr(peer, "host", None), getattr(peer, "port", None)
        self._peer = f"{host}:{port}" if host is not None else str(peer)
        log.debug("AMI {ami}: connected to {peer}, waiting for the banner",
                  ami=self.client.label, peer=self._peer)
        self._banner_timer = self.clock.callLater(self.client.action_timeout, self._no_banner)

    def dataReceived(self, data: bytes) -> None:
        if self.closed or self._drop_reason:
            return
        self._reads += 1
        self._arm_idle()
        for event in self.parser.feed(data):
            if self.closed or self._drop_reason:
                return
            if isinstance(event, Packet):
                self._packet(event)
            elif isinstance(event, Banner):
                self._banner(event)
            elif isinstance(event, ParseError):
                self.drop(f"protocol error: {event.reason}")

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        if self.closed:
            return
        self.closed = True
        for timer in (self._banner_timer, self._idle_timer):
            if timer is not None and timer.active():
                timer.cancel()
        why = self._drop_reason or _why(reason)
        if self.parser.in_packet and not self._drop_reason:
            why += " (in the middle of a packet)"
        self.client._connection_lost(self, why)
        for action_id in self.session.lose():
            call = self._calls.pop(action_id, None)
            if call is None:
                continue
            if call.timer.active():
                call.timer.cancel()
            call.deferred.errback(ActionLost(
                f"AMI {call.action} (ActionID {action_id}): connection lost before the "
                f"answer ({why}); it may or may not have run"))

    # -- sending -----------------------------------------------------------------------

    def send_action(self, action: str, fields: Fields = (),
                    timeout: Optional[float] = None) -> defer.Deferred:
        if self.closed or self._drop_reason:
            return defer.fail(NotConnected(f"AMI {self.client.label}: the connection is closing"))
        try:
            action_id, data = self.session.send(action, fields)
        except AMIEncodeError as e:
            return defer.fail(e)
        timeout = self.client.action_timeout if timeout is None else timeout
        d = defer.Deferred(lambda _: self._forget(action_id))
        timer = self.clock.callLater(timeout, self._timed_out, action_id)
        self._calls[action_id] = _Call(action, d, timer, self._reads, timeout)
        log.debug("AMI {ami}: -> {action} (ActionID {action_id})", ami=self.client.label,
                  action=action, action_id=action_id)
        self.transport.write(data)
        return d

    def drop(self, reason: str, abort: bool = True, quiet: bool = False) -> None:
        """Close the connection; `reason` becomes the client's 'disconnected: ...'."""
        if self.closed or self._drop_reason:
            return
        self._drop_reason = reason
        (log.debug if quiet else log.warn)(
            "AMI {ami}: dropping the connection to {peer}: {reason}",
            ami=self.client.label, peer=self._peer, reason=reason)
        abort_connection = getattr(self.transport, "abortConnection", None)
        if abort and abort_connection is not None:
            # A dead link would keep a graceful close waiting for its write buffer.
            abort_connection()
        else:
            self.transport.loseConnection()

    @property
    def pending(self) -> List[str]:
        return list(self._calls)

    # -- receiving ---------------------------------------------------------------------

    def _banner(self, banner: Banner) -> None:
        if self._banner_timer is not None and self._banner_timer.active():
            self._banner_timer.cancel()
        self.client.banner = banner.text
        log.debug("AMI {ami}: banner {banner!r}", ami=self.client.label, banner=banner.text)
        d = self.send_action("Login", self.client._login_fields(), self.client.action_timeout)
        d.addCallbacks(self._login_answered, self._login_error)

    def _packet(self, packet: Packet) -> None:
        for outcome in self.session.receive(packet):
            if isinstance(outcome, ActionDone):
                call = self._calls.pop(outcome.action_id, None)
                if call is None:
                    continue
                if call.timer.active():
                    call.timer.cancel()
                call.deferred.callback(outcome.result)
            elif isinstance(outcome, Unsolicited):
                self.client._deliver(packet)
            elif isinstance(outcome, Stray):
                log.info("AMI {ami}: ignored a packet: {reason} ({kind})", ami=self.client.label,
                         reason=outcome.reason,
                         kind=packet.response or packet.event or "no Response/Event")

    # -- login -------------------------------------------------------------------------

    def _login_answered(self, result: ActionResult) -> None:
        if self.closed:
            return
        if (result.response.response or "").strip().lower() == "success":
            self.logged_in = True
            self._arm_idle()
            self.client._logged_in(self)
            return
        message = (result.message or result.response.response or "no message").strip()
        self.login_failed = True
        self.client._login_failed(self, message)
        # Asterisk and the TG close after a failed login; do not rely on it.
        self.drop(f"login failed: {message}", abort=False, quiet=True)

    def _login_error(self, failure: Failure) -> None:
        if failure.check(ActionTimeout):
            self.drop(f"no answer to Login within {self.client.action_timeout:g} s")
        elif not failure.check(ActionLost, NotConnected):
            log.failure("AMI {ami}: login failed unexpectedly", failure, ami=self.client.label)
            self.drop("login failed unexpectedly")

    def _no_banner(self) -> None:
        self._banner_timer = None
        self.drop(f"no AMI banner within {self.client.action_timeout:g} s")

    # -- timers ------------------------------------------------------------------------

    def _forget(self, action_id: str) -> None:
        call = self._calls.pop(action_id, None)
        self.session.cancel(action_id)
        if call is not None and call.timer.active():
            call.timer.cancel()

    def _timed_out(self, action_id: str) -> None:
        call = self._calls.pop(action_id, None)
        self.session.cancel(action_id)
        if call is None:
            return
        log.warn("AMI {ami}: no answer to {action} (ActionID {action_id}) within {timeout} s",
                 ami=self.client.label, action=call.action, action_id=action_id,
                 timeout=call.timeout)
        silent = self._reads == call.rx_mark
        call.deferred.errback(ActionTimeout(
            f"AMI {call.action} (ActionID {action_id}): no answer within {call.timeout:g} s"))
        if silent and self.logged_in and not self.closed:
            # Not a byte since it was sent: the link itself is suspect, check it now
            # rather than after a whole ping interval.
            self._arm_idle(0)

    def _arm_idle(self, delay: Optional[float] = None) -> None:
        interval = self.client.ping_interval
        if not interval or not self.logged_in or self.closed:
            return
        delay = interval if delay is None else delay
        if self._idle_timer is not None and self._idle_timer.active():
            self._idle_timer.reset(delay)
        else:
            self._idle_timer = self.clock.callLater(delay, self._idle)

    def _idle(self) -> None:
        self._idle_timer = None
        if self.closed or self._drop_reason:
            return
        if self._calls:
            # Answers still due: each has its own timeout, and an answer is proof of
            # life.  (AMI runs a session's actions in order, so a ping now would wait
            # behind a slow one, e.g. a TG USSD.)
            self._arm_idle()
            return
        name, fields = self.client.ping_action
        d = self.send_action(name, fields, self.client.action_timeout)
        d.addCallbacks(self._pong, self._no_pong, errbackArgs=(name,))

    def _pong(self, result: ActionResult) -> None:
        log.debug("AMI {ami}: keepalive answered ({response})", ami=self.client.label,
                  response=result.response.response)

    def _no_pong(self, failure: Failure, name: str) -> None:
        if failure.check(ActionTimeout):
            self.drop(f"no answer to keepalive {name} within {self.client.action_timeout:g} s")
        elif not failure.check(ActionLost, NotConnected, defer.CancelledError):
            log.failure("AMI {ami}: keepalive failed", failure, ami=self.client.label)


class _AMIFactory(protocol.Factory):
    noisy = False

    def __init__(self, client: "AMIClient"):
        self.client = client

    def buildProtocol(self, addr: Any) -> AMIProtocol:
        p = AMIProtocol(self.client)
        p.factory = self
        return p


@implementer(IStreamClientEndpoint)
class _StateEndpoint:
    """The real endpoint, plus 'connecting' / 'disconnected: <why>' on the client."""

    def __init__(self, client: "AMIClient", endpoint: Any):
        self.client = client
        self.endpoint = endpoint

    def connect(self, factory: Any) -> defer.Deferred:
        self.client._set_state(CONNECTING)
        d = self.endpoint.connect(factory)
        d.addErrback(self.client._connect_failed)
        return d

    def __repr__(self) -> str:
        return repr(self.endpoint)


class AMIClient(service.Service):
    """A manager session kept logged in; see the module docstring for the promises.

    `reactor` gives the clock (callLater/seconds); `endpoint` is an
    IStreamClientEndpoint (e.g. from `clientFromString(reactor, "tcp:127.0.0.1:5038")`).
    `events` goes into Login as `Events:` ('on', 'off', a mask such as 'system', or a
    sequence of classes); None leaves it out (the peer's default).  `ping_action` is
    (action, fields); the TG has no Ping, so its channel passes e.g.
    `('smscommand', [('command', 'gsm show spans')])`.  `on_state(kind, detail)` is
    called on every change of state, kind being one of STOPPED, CONNECTING, LOGGED_IN,
    LOGIN_FAILED, DISCONNECTED.  `retry_policy(attempt) -> seconds` paces reconnects
    after a lost or refused connection (default: ClientService's backoff);
    `login_retry=(first, most)` paces them after a refused login.
    """

    def __init__(
        self,
        reactor: Any,
        endpoint: Any,
        username: str,
        secret: str,
        *,
        events: Union[str, Sequence[str], None] = "on",
        ping_interval: Optional[float] = 30.0,
        ping_action: Tuple[str, Fields] = ("Ping", ()),
        action_timeout: float = 10.0,
        on_state: Optional[Callable[[str, str], Any]] = None,
        name: str = "",
        retry_policy: Optional[Callable[[int], float]] = None,
        login_retry: Tuple[float, float] = (30.0, 300.0),
        logoff_timeout: float = 2.0,
        max_packet: int = DEFAULT_MAX_PACKET,
    ):
        self.clock = reactor
        self.endpoint = endpoint
        self.username = username
        self._secret = secret
        if events is not None and not isinstance(events, str):
            events = ",".join(events)
        self.events = events
        self.ping_interval = ping_interval
        action_name, action_fields = ping_action
        self.ping_action = (action_name, tuple(action_fields))
        self.action_timeout = action_timeout
        self.on_state = on_state
        self.name = name or None  # Service.name: None keeps it unnamed in a MultiService
        self.label = name  # for log lines
        self.retry_policy = retry_policy or backoffPolicy()
        self.login_retry = login_retry
        self.logoff_timeout = logoff_timeout
        self.max_packet = max_packet
        # Refuse bad credentials or a bad keepalive now, not at every connect.
        encode_action("Login", self._login_fields(), "0")
        encode_action(self.ping_action[0], self.ping_action[1], "0")

        self.banner: Optional[str] = None
        self.state_kind = STOPPED
        self.detail = ""
        self.state = STOPPED
        self.since = reactor.seconds()
        self._protocol: Optional[AMIProtocol] = None
        self._subscribers: List[Tuple[Subscriber, Optional[frozenset]]] = []
        self._login_waiters: List[defer.Deferred] = []
        self._login_failures = 0
        self._unready_sessions = 0
        self._stopping = False
        self._connector = ClientService(_StateEndpoint(self, endpoint), _AMIFactory(self),
                                        retryPolicy=self._retry_delay, clock=reactor)

    def __repr__(self) -> str:
        return f"<AMIClient {self.label} {self.username}@{self.endpoint!r} {self.state}>"

    # -- public API --------------------------------------------------------------------

    @property
    def logged_in(self) -> bool:
        return self._protocol is not None and not self._stopping

    def subscribe(self, callback: Subscriber,
                  event: Union[str, Iterable[str], None] = None) -> Callable[[], None]:
        """Call `callback(packet)` for every unsolicited event (optionally only those
        named `event`, case-insensitively).  Returns a function that unsubscribes."""
        if event is None:
            names = None
        elif isinstance(event, str):
            names = frozenset([event.lower()])
        else:
            names = frozenset(e.lower() for e in event)
        entry = (callback, names)
        self._subscribers.append(entry)

        def unsubscribe() -> None:
            if entry in self._subscribers:
                self._subscribers.remove(entry)

        return unsubscribe

    def action(self, name: str, fields: Fields = (), *,
               timeout: Optional[float] = None) -> defer.Deferred:
        """Send one action; fires with its `ActionResult` (even for `Response: Error`).

        Fails with NotConnected (not logged in: nothing sent), AMIEncodeError (CR/LF
        or an over-long line: nothing sent), ActionTimeout, or ActionLost.  Cancelling
        the Deferred forgets the action (a late answer is logged and dropped).
        """
        p = self._protocol
        if p is None or self._stopping:
            return defer.fail(NotConnected(f"AMI {self.label}: not logged in ({self.state})"))
        return p.send_action(name, fields, timeout)

    def command(self, cli: str, *, action: str = "Command",
                timeout: Optional[float] = None) -> defer.Deferred:
        """Run a CLI command; fires with its output text.

        Works with Asterisk 14+ (`Output:` lines, joined with newlines) and the
        `Response: Follows` ... `--END COMMAND--` framing of the TG and Asterisk <= 13
        (raw text as sent).  The TG's channel passes `action='smscommand'`.  A
        `Response: Error` fails with ActionFailed (its output is in `.result`).
        """
        d = self.action(action, [("Command", cli)], timeout=timeout)

        def answered(result: ActionResult) -> str:
            text = result.command_output()
            if not result.ok:
                raise ActionFailed(
                    f"AMI {action} {cli!r}: {result.message or 'error'}"
                    + (f": {text}" if text else ""), result)
            return text or ""

        return d.addCallback(answered)

    def whenLoggedIn(self) -> defer.Deferred:
        """Fires with this client once logged in (at once if it is); fails with
        NotConnected if the service stops first."""
        if self.logged_in:
            return defer.succeed(self)
        d: defer.Deferred = defer.Deferred(lambda d: self._login_waiters.remove(d))
        self._login_waiters.append(d)
        return d

    def startService(self) -> None:
        if self.running:
            return
        service.Service.startService(self)
        self._stopping = False
        self._connector.startService()

    def stopService(self) -> defer.Deferred:
        """Logoff (waiting at most `logoff_timeout` for Goodbye), then close."""
        if not self.running:
            return defer.succeed(None)
        service.Service.stopService(self)
        self._stopping = True
        p = self._protocol
        if p is not None and not p.closed:
            d = p.send_action("Logoff", (), self.logoff_timeout)
            # Goodbye, an error, a timeout or a lost link: all end the wait.
            d.addErrback(lambda f: None)
        else:
            d = defer.succeed(None)
        d.addCallback(lambda _: self._connector.stopService())

        def stopped(result: Any) -> Any:
            self._set_state(STOPPED)
            waiters, self._login_waiters = self._login_waiters, []
            for w in waiters:
                w.errback(NotConnected(f"AMI {self.label}: stopped"))
            return result

        return d.addBoth(stopped)

    # -- called by the protocol / endpoint --------------------------------------------

    def _login_fields(self) -> List[Tuple[str, str]]:
        fields = [("Username", self.username), ("Secret", self._secret)]
        if self.events is not None:
            fields.append(("Events", self.events))
        return fields

    def _set_state(self, kind: str, detail: str = "", logged: bool = False) -> None:
        text = f"{kind}: {detail}" if detail else kind
        if text == self.state:
            return
        self.state_kind, self.detail, self.state = kind, detail, text
        self.since = self.clock.seconds()
        if not logged:  # else the caller wrote a fuller line
            (log.debug if kind == CONNECTING else log.info)(
                "AMI {ami}: {state}", ami=self.label, state=text, state_kind=kind)
        if self.on_state is not None:
            try:
                self.on_state(kind, detail)
            except Exception:
                log.failure("AMI {ami}: on_state callback failed", ami=self.label)

    def _connect_failed(self, failure: Failure) -> Failure:
        if not self._stopping and not failure.check(defer.CancelledError):
            self._set_state(DISCONNECTED, _why(failure))
        return failure

    def _logged_in(self, p: AMIProtocol) -> None:
        self._protocol = p
        self._login_failures = 0
        self._unready_sessions = 0
        log.info("AMI {ami}: logged in as {username} at {peer} ({banner})", ami=self.label,
                 username=self.username, peer=p._peer, banner=self.banner, state_kind=LOGGED_IN)
        self._set_state(LOGGED_IN, logged=True)
        waiters, self._login_waiters = self._login_waiters, []
        for w in waiters:
            w.callback(self)

    def _login_failed(self, p: AMIProtocol, message: str) -> None:
        self._login_failures += 1
        log.error("AMI {ami}: login as {username} at {peer} refused: {message}",
                  ami=self.label, username=self.username, peer=p._peer, message=message,
                  state_kind=LOGIN_FAILED)
        self._set_state(LOGIN_FAILED, message, logged=True)

    def _connection_lost(self, p: AMIProtocol, why: str) -> None:
        if self._protocol is p:
            self._protocol = None
        if not p.logged_in and not p.login_failed:
            self._unready_sessions += 1
        if not self._stopping and not p.login_failed:
            self._set_state(DISCONNECTED, why)

    def _retry_delay(self, attempt: int) -> float:
        if self._login_failures:
            first, most = self.login_retry
            delay = min(first * 2 ** min(self._login_failures - 1, 32), most)
        else:
            delay = self.retry_policy(attempt + self._unready_sessions)
        return delay  # ClientService logs the retry

    def _deliver(self, packet: Packet) -> None:
        name = (packet.event or "").lower()
        for callback, names in list(self._subscribers):
            if names is not None and name not in names:
                continue
            try:
                result = callback(packet)
            except Exception:
                log.failure("AMI {ami}: event subscriber failed on {event}",
                            ami=self.label, event=packet.event)
                continue
            if isinstance(result, defer.Deferred):
                result.addErrback(lambda f, e=packet.event: log.failure(
                    "AMI {ami}: event subscriber failed on {event}", f,
                    ami=self.label, event=e))
