"""The Yeastar TG's HTTP API (WebCGI), with a client that tolerates its malformed HTTP.

A TG's web server writes headers such as `<Content-Type:text/html>` and, on some TG1600
units, stray blank lines before the headers.  Strict HTTP clients (treq, twisted.web's
Agent) reject such answers although the device queued the SMS, so this client speaks
HTTP/1.0 over a raw TCP connection: it writes one GET with `Connection: close`, reads
until the device closes (or until a Content-Length is satisfied), within a size cap and
a timeout on the injected reactor's clock, and hands the bytes to
`websmsd.yeastar.tg_answers.parse_http_answer`.

What the answers mean:

* a send that succeeds means *queued*: the device sends when the port is free and
  reports nothing later (no UpdateSMSSend for HTTP sends); the AMI channel is the one
  that learns whether the SMS centre took the message;
* `WebCGIUnreachable`: no connection, nothing was sent, safe to retry;
* `WebCGINoAnswer`: the request went out but no answer came back (timeout, closed, too
  big): the device may have queued the SMS, so a retry may send it twice.

The request carries the account and password in its query string: neither the request,
its URL nor the password is ever logged or put in an error message.
"""

from __future__ import annotations

import re
from typing import Any, Tuple

from twisted.internet import defer
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure

from websmsd.yeastar import tg, tg_answers

__all__ = ["WebCGIClient", "WebCGIError", "WebCGIUnreachable", "WebCGINoAnswer", "MAX_ANSWER"]

# WebCGI answers are a few lines; an error page is a few KiB.
MAX_ANSWER = 64 * 1024
_RESPONSE_LINE = re.compile(rb"^\s*Response\s*:", re.I | re.M)


class WebCGIError(Exception):
    """The WebCGI request got no usable answer from the device."""


class WebCGIUnreachable(WebCGIError):
    """No connection to the device: nothing was sent."""


class WebCGINoAnswer(WebCGIError):
    """The request was sent but no complete answer came back: the device may have acted."""


class _OneGet(Protocol):
    """Writes one request, collects the answer until the close, a cap or completion."""

    def __init__(self, request: bytes, max_size: int) -> None:
        self.request = request
        self.max_size = max_size
        self.buffer = bytearray()
        self.too_big = False
        self.timed_out = False
        self.done: defer.Deferred = defer.Deferred(self._cancel)

    def _cancel(self, _: defer.Deferred) -> None:
        # The caller gave up: drop the connection too (done then fails with CancelledError).
        if self.transport is not None:
            self.transport.abortConnection()

    def connectionMade(self) -> None:
        self.transport.write(self.request)

    def dataReceived(self, data: bytes) -> None:
        if self.too_big or self.done.called:
            return
        self.buffer += data
        if len(self.buffer) > self.max_size:
            self.too_big = True
            self.transport.abortConnection()
        elif tg_answers.http_answer_complete(bytes(self.buffer)):
            # The device should close after HTTP/1.0; a Content-Length it honours lets
            # the answer count without waiting for that.
            self.transport.loseConnection()

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        if not self.done.called:
            self.done.callback(bytes(self.buffer))

    def give_up(self) -> None:
        self.timed_out = True
        self.transport.abortConnection()


class WebCGIClient:
    """Sends SMS and USSD requests through one TG's WebCGI API.

    `host` and `port` are the TG's web server (an IP literal connects directly; a name is
    resolved by the reactor).  `timeout` bounds a send from connect to answer;
    `ussd_timeout` a USSD request, which the device answers only once the network has
    (its own default wait is 30 s).  `endpoint` replaces the TCP/TLS endpoint built from
    host and port (tests, proxies); `tls_options` is the client TLS context for `tls=True`
    (default: `optionsForClientTLS(host)`, which a self-signed device certificate fails).
    """

    log = Logger()

    def __init__(self, reactor: Any, host: str, port: int, account: str, password: str, *,
                 timeout: float = 15.0, ussd_timeout: float = 45.0, tls: bool = False,
                 tls_options: Any = None, endpoint: Any = None, max_answer: int = MAX_ANSWER) -> None:
        # Checked once here so that a bad host or credentials fail at configuration time.
        tg.webcgi_ussd_url(host, port, account, password, 1, "0", tls=tls)
        self.reactor = reactor
        self.host = host
        self.port = port
        self.account = account
        self._password = password
        self.timeout = float(timeout)
        self.ussd_timeout = float(ussd_timeout)
        self.tls = tls
        self.max_answer = max_answer
        self._endpoint = endpoint if endpoint is not None else self._make_endpoint(tls_options)

    def __repr__(self) -> str:
        return f"<WebCGIClient {'https' if self.tls else 'http'}://{self._authority()} account={self.account!r}>"

    def _authority(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    def _make_endpoint(self, tls_options: Any) -> Any:
        from twisted.internet import endpoints

        from websmsd.endpoints import tcp_client

        endpoint = tcp_client(self.reactor, self.host, self.port, timeout=max(1, int(self.timeout)))
        if self.tls:
            if tls_options is None:
                from twisted.internet.ssl import optionsForClientTLS
                tls_options = optionsForClientTLS(self.host)
            endpoint = endpoints.wrapClientTLS(tls_options, endpoint)
        return endpoint

    # ---- the two requests ------------------------------------------------------------

    def send(self, port: int, destination: str, text: str) -> defer.Deferred:
        """Queue one SMS on TG port `port` (1-based, as the web interface numbers it).

        Fires with (ok, message): (True, "Commit successfully!") when the device queued
        it; (False, why) when it answered otherwise (wrong account, bad port, an HTTP
        error).  Fails with `WebCGIUnreachable` or `WebCGINoAnswer` (see the module), or
        with `tg.YeastarError` for arguments that cannot be sent (nothing is sent then).
        """
        try:
            target = tg.webcgi_send_target(self.account, self._password, port, destination, text)
        except tg.YeastarError:
            return defer.fail()
        d = self._get(target, self.timeout, "send", port)

        def answered(answer: tg_answers.HttpAnswer) -> Tuple[bool, str]:
            ok, message = tg_answers.parse_webcgi_answer(answer.body)
            if answer.status is not None and not 200 <= answer.status < 300:
                ok, message = False, _http_error(answer, message)
            self.log.info("WebCGI send on port {tg_port} via {authority}: {outcome}",
                          tg_port=port, authority=self._authority(),
                          outcome="queued" if ok else f"refused ({message})")
            return ok, message

        return d.addCallback(answered)

    def ussd(self, port: int, code: str) -> defer.Deferred:
        """Run a USSD request on TG port `port`; fires with a `tg_answers.UssdResult`.

        The device answers only once the network has.  Every failure, including no
        connection or no answer, is a `UssdResult` with `ok` False and `error` set; only
        a code that cannot be sent fails the Deferred (`tg.YeastarError`).
        """
        try:
            target = tg.webcgi_ussd_target(self.account, self._password, port, code)
        except tg.YeastarError:
            return defer.fail()
        d = self._get(target, self.ussd_timeout, "ussd", port)

        def answered(answer: tg_answers.HttpAnswer) -> tg_answers.UssdResult:
            result = tg_answers.parse_webcgi_ussd_answer(answer.body)
            if answer.status is not None and not 200 <= answer.status < 300:
                result = tg_answers.UssdResult(False, error=_http_error(answer, result.error or ""),
                                       span=result.span)
            return result

        def failed(failure: Failure) -> tg_answers.UssdResult:
            failure.trap(WebCGIError)
            return tg_answers.UssdResult(False, error=str(failure.value))

        return d.addCallbacks(answered, failed)

    # ---- one GET ---------------------------------------------------------------------

    def _get(self, target: str, timeout: float, action: str, tg_port: int) -> defer.Deferred:
        request = (f"GET {target} HTTP/1.0\r\nHost: {self._authority()}\r\n"
                   "User-Agent: websmsd\r\nAccept: */*\r\nConnection: close\r\n\r\n").encode("ascii")
        proto = _OneGet(request, self.max_answer)
        from twisted.internet.endpoints import connectProtocol

        connecting = connectProtocol(self._endpoint, proto)
        state = {"connected": False, "timed_out": False}

        def on_timeout() -> None:
            state["timed_out"] = True
            if state["connected"]:
                proto.give_up()
            else:
                connecting.cancel()

        timer = self.reactor.callLater(timeout, on_timeout)

        def connected(_: Any) -> defer.Deferred:
            state["connected"] = True
            return proto.done

        def not_connected(failure: Failure) -> None:
            why = (f"no connection within {timeout:g} s" if state["timed_out"]
                   else failure.getErrorMessage() or failure.type.__name__)
            raise WebCGIUnreachable(f"cannot reach the TG's web server at {self._authority()}: {why}")

        def collected(data: bytes) -> tg_answers.HttpAnswer:
            if proto.too_big:
                raise WebCGINoAnswer(f"the TG's answer is larger than {self.max_answer} bytes")
            answer = tg_answers.parse_http_answer(data)
            if proto.timed_out and not _RESPONSE_LINE.search(answer.body):
                raise WebCGINoAnswer(f"no complete answer within {timeout:g} s")
            if not data.strip():
                raise WebCGINoAnswer("the TG closed the connection without answering")
            return answer

        def stop_timer(result: Any) -> Any:
            if timer.active():
                timer.cancel()
            return result

        def log_failure(failure: Failure) -> Failure:
            if failure.check(WebCGIError):
                self.log.warn("WebCGI {action} on port {tg_port}: {reason}", action=action,
                              tg_port=tg_port, reason=str(failure.value))
            return failure

        d = connecting.addCallbacks(connected, not_connected)
        d.addCallback(collected)
        d.addBoth(stop_timer)
        d.addErrback(log_failure)
        return d


def _http_error(answer: tg_answers.HttpAnswer, message: str) -> str:
    head = f"HTTP {answer.status} {answer.reason}".strip()
    return f"{head}: {message}" if message else head
