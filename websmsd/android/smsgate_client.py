"""SMS Gateway for Android, Local Server mode: websmsd's HTTP client.

A thin client over the pure protocol (`websmsd.android.smsgate`) and inbox reader
(`websmsd.android.smsgate_inbox`).  Twisted is imported lazily, only when a client is
made or used, so importing this module pulls in nothing from Twisted.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Tuple
from urllib.parse import quote

from .answer import is_clean, one_line
from .smsgate import (
    MAX_ID, Health, InboxPage, MessageState, Moment, Outcome, SMSGateError, _error_message, check_send,
    inbox_query, parse_health, parse_inbox, parse_state, parse_total, send_body, send_outcome,
)

if TYPE_CHECKING:
    from .smsgate_inbox import InboxReader, InboxState, ScanResult

# --------------------------------------------------------------------------------------
# The client (Twisted, treq)
# --------------------------------------------------------------------------------------

class SMSGateClient:
    """websmsd's HTTP client for one phone running SMS Gateway for Android (Local Server).

    `treq_like`: anything with treq's ``request(method, url, headers=, data=,
    unbuffered=True)``: the daemon gives websmsd.http.oneshot.OneShot (its answers come
    read whole), tests `treq.testing.StubTreq`; treq itself would do.
    `base_url`: ``http://phone:8080`` (a path prefix is kept).  `clock`: the reactor, or a
    `task.Clock` in tests; every request is cancelled after `timeout` seconds.

    `send` never fails: its Deferred fires with an Outcome.  `state`, `inbox` and
    `poll_inbox` fail with SMSGateError only (`down` tells a route problem).  `health`
    never fails: an unreachable phone is ``Health(reachable=False)``.
    """

    def __init__(self, treq_like: Any, base_url: str, user: str, password: str, *, timeout: float = 30.0,
                 clock: Any, max_response: int = 4 * 1024 * 1024, with_delivery_report: bool = True,
                 skip_phone_validation: bool = False, priority: Optional[int] = None) -> None:
        from twisted.logger import Logger

        from .basicauth import basic_header

        if not re.match(r"https?://[^/?#\s]+", base_url or ""):
            raise ValueError("base_url must be http://host:port")
        if ":" in user:
            raise ValueError("a Basic user name cannot contain ':'")
        self._treq = treq_like
        self._base = base_url.rstrip("/")
        # The app's Ktor decodes Basic credentials as UTF-8.
        self._auth = basic_header(user, password, charset="utf-8").encode("ascii")
        self._timeout = timeout
        self._clock = clock
        self._max_response = max_response
        self._with_delivery_report = with_delivery_report
        self._skip_validation = skip_phone_validation
        self._priority = priority
        self._where = one_line(re.sub(r"^https?://", "", self._base), 80)
        self._log = Logger(namespace="websmsd.smsgate")

    # -- plumbing ----------------------------------------------------------------------

    def _headers(self, with_body: bool) -> Any:
        from twisted.web.http_headers import Headers

        headers = Headers({b"Authorization": [self._auth], b"Accept": [b"application/json"],
                           b"User-Agent": [b"websmsd"]})
        if with_body:
            headers.addRawHeader(b"Content-Type", b"application/json")
        return headers

    def _describe(self, exc: BaseException) -> str:
        name = type(exc).__name__
        if name == "ConnectionRefusedError":
            return f"connection refused by {self._where} (is the app's local server running?)"
        if name in ("TimeoutError", "UserError"):
            return f"no connection to {self._where} (timeout)"
        if name == "DNSLookupError":
            return f"DNS lookup failed for {self._where}"
        if name == "NoRouteError":
            return f"no route to {self._where}"
        if name in ("ResponseNeverReceived", "RequestTransmissionFailed", "RequestNotSent",
                    "NoAnswer"):
            return f"{self._where} closed the connection without answering"
        if name in ("ResponseFailed", "ResponseError"):
            return f"the answer from {self._where} broke off"
        return f"cannot reach {self._where} ({one_line(name, 40)})"

    def _is_network(self, exc: BaseException) -> bool:
        import sys

        from twisted.internet import error as net_error

        from websmsd.http.h1response import ResponseError

        if isinstance(exc, (net_error.ConnectError, net_error.ConnectionLost, net_error.ConnectionDone,
                            net_error.DNSLookupError, net_error.TimeoutError, OSError, ResponseError)):
            return True
        if type(exc).__module__.split(".")[0] in ("OpenSSL", "service_identity"):
            return True  # TLS: the handshake, the certificate or its name failed
        # twisted.web's Agent (treq): its wrappers, if it is what this client runs on
        # (never imported here for the question).
        web_client = sys.modules.get("twisted.web.client")
        return web_client is not None and any(
            isinstance(exc, getattr(web_client, n)) for n in
            ("ResponseNeverReceived", "ResponseFailed", "RequestTransmissionFailed", "RequestNotSent")
            if hasattr(web_client, n))

    async def _call(self, method: str, path: str, body: Optional[bytes] = None) -> Tuple[int, Any, bytes, bool]:
        """(status, headers, body, truncated); SMSGateError(down=True) when no answer came."""
        from twisted.internet import defer

        state: Dict[str, Any] = {"step": None, "timed_out": False}

        def on_timeout() -> None:
            state["timed_out"] = True
            if state["step"] is not None:
                state["step"].cancel()

        timer = self._clock.callLater(self._timeout, on_timeout)
        try:
            state["step"] = defer.maybeDeferred(
                self._treq.request, method, self._base + path,
                headers=self._headers(body is not None), data=body,
                allow_redirects=False, unbuffered=True,
            )
            response = await state["step"]
            if isinstance(getattr(response, "content", None), bytes):
                # websmsd.http.oneshot's Answer: read whole already (treq's content is a
                # method)
                content, truncated = response.content, response.truncated
            else:
                state["step"] = _read_body(response, self._max_response)
                content, truncated = await state["step"]
        except defer.CancelledError:
            if state["timed_out"]:
                raise SMSGateError(f"no answer from {self._where} within {self._timeout:g} s", down=True) from None
            raise
        except Exception as e:
            if state["timed_out"]:
                raise SMSGateError(f"no answer from {self._where} within {self._timeout:g} s", down=True) from None
            if self._is_network(e):
                raise SMSGateError(self._describe(_root(e)), down=True) from None
            self._log.failure("smsgate {where}: internal error on {method} {path}", where=self._where,
                              method=method, path=path.split("?", 1)[0])
            raise SMSGateError("internal error talking to the phone (see the log)") from None
        finally:
            if timer.active():
                timer.cancel()
        return response.code, response.headers, content, truncated

    # -- sending -----------------------------------------------------------------------

    def send(self, message_id: str, phone: str, text: str, sim: Optional[int] = None) -> Any:
        """Post one SMS under websmsd's id; a Deferred that fires with an Outcome.

        A repeat after a lost answer or a restart is safe: the phone answers 409 (or,
        before v1.58.0, 202 and ignores it) and does not send twice.
        """
        from twisted.internet import defer

        return defer.ensureDeferred(self._send(message_id, phone, text, sim))

    async def _send(self, message_id: str, phone: str, text: str, sim: Optional[int]) -> Outcome:
        from twisted.internet import defer

        problem = check_send(message_id, phone, text, sim)
        if problem is not None:
            return Outcome(False, True, f"not sent: {problem}")
        body = send_body(message_id, phone, text, sim, with_delivery_report=self._with_delivery_report,
                         priority=self._priority)
        path = "/message" + ("?skipPhoneValidation=true" if self._skip_validation else "")
        try:
            status, _headers, content, _ = await self._call("POST", path, body)
        except defer.CancelledError:
            raise
        except SMSGateError as e:
            outcome = Outcome(False, False, e.reason, down=e.down, status=e.status)
        except Exception:
            self._log.failure("smsgate {where}: internal error sending {message_id}", where=self._where,
                              message_id=message_id)
            outcome = Outcome(False, False, "internal error while sending (see the log)")
        else:
            outcome = send_outcome(status, content, message_id)
        if outcome.ok:
            self._log.info("smsgate {where}: {message_id} taken (HTTP {status})", where=self._where,
                           message_id=message_id, status=outcome.status)
        else:
            self._log.warn("smsgate {where}: {message_id} not taken: {reason}", where=self._where,
                           message_id=message_id, reason=outcome.reason, down=outcome.down,
                           permanent=outcome.permanent)
        return outcome

    # -- state -------------------------------------------------------------------------

    def state(self, message_id: str) -> Any:
        """A Deferred MessageState (found=False for an id the phone does not know)."""
        from twisted.internet import defer

        return defer.ensureDeferred(self._state(message_id))

    async def _state(self, message_id: str) -> MessageState:
        if not is_clean(message_id, MAX_ID):
            raise SMSGateError(f"unusable message id {one_line(message_id, 70)!r}")
        status, _h, content, _ = await self._call("GET", "/message/" + quote(message_id, safe=""))
        if status == 200:
            return parse_state(message_id, content)
        if status == 404:
            return MessageState(message_id, False)
        raise self._status_error(status, content, "state")

    def _status_error(self, status: int, content: bytes, what: str) -> SMSGateError:
        if status in (401, 403):
            return SMSGateError(f"HTTP {status}: the phone refused the credentials", down=True, status=status)
        if status in (404, 405):
            return SMSGateError(f"HTTP {status} for {what}: not this app's Local Server, or an app too old",
                                down=True, status=status)
        return SMSGateError(f"HTTP {status} for {what}: {_error_message(content)}", status=status)

    # -- inbox -------------------------------------------------------------------------

    def inbox(self, since: Optional[Moment] = None, until: Optional[Moment] = None, limit: int = 50,
              offset: int = 0) -> Any:
        """A Deferred InboxPage: entries newest first, and X-Total-Count as `total`."""
        from twisted.internet import defer

        return defer.ensureDeferred(self._inbox(since, until, limit, offset))

    async def _inbox(self, since: Optional[Moment], until: Optional[Moment], limit: int, offset: int) -> InboxPage:
        query = inbox_query(since, until, limit, offset)
        status, headers, content, truncated = await self._call("GET", "/inbox?" + query)
        if status != 200:
            raise self._status_error(status, content, "/inbox (v1.59.0 or later needed)")
        if truncated:
            raise SMSGateError(f"inbox page over {self._max_response} bytes: use a smaller page size")
        total = parse_total((headers.getRawHeaders(b"x-total-count") or [None])[0])
        return parse_inbox(content, total)

    def poll_inbox(self, state: InboxState, reader: InboxReader) -> Any:
        """One InboxReader scan over the network; a Deferred ScanResult.

        On SMSGateError the scan is dropped: persist nothing, poll again later.
        """
        from twisted.internet import defer

        return defer.ensureDeferred(self._poll_inbox(state, reader))

    async def _poll_inbox(self, state: InboxState, reader: InboxReader) -> ScanResult:
        scan = reader.begin(state)
        while True:
            request = scan.next_request()
            if request is None:
                break
            page = await self._inbox(request.since_ms, request.until_ms, request.limit, request.offset)
            scan.feed(page)
        result = scan.result()
        for warning in result.warnings:
            self._log.warn("smsgate {where}: {warning}", where=self._where, warning=warning)
        return result

    # -- health ------------------------------------------------------------------------

    def health(self) -> Any:
        """A Deferred Health; never fails (unreachable is ``reachable=False``)."""
        from twisted.internet import defer

        return defer.ensureDeferred(self._health())

    async def _health(self) -> Health:
        try:
            status, _h, content, _ = await self._call("GET", "/health")
        except SMSGateError as e:
            return Health(False, None, None, None, (), e.reason)
        return parse_health(status, content)


def _root(exc: BaseException) -> BaseException:
    """The first underlying reason of twisted.web's wrapper exceptions."""
    reasons = getattr(exc, "reasons", None)
    if reasons:
        first = reasons[0]
        value = getattr(first, "value", first)
        if isinstance(value, BaseException):
            return _root(value) if getattr(value, "reasons", None) else value
    return exc


def _read_body(response: Any, limit: int) -> Any:
    """A Deferred (bytes, truncated) of at most `limit` bytes; cancelling closes the connection."""
    from twisted.internet import defer, protocol
    from twisted.web.client import ResponseDone
    from twisted.web.http import PotentialDataLoss

    finished: Any = None

    class Collector(protocol.Protocol):
        def __init__(self) -> None:
            self.chunks: List[bytes] = []
            self.size = 0
            self.truncated = False

        def dataReceived(self, data: bytes) -> None:
            room = limit - self.size
            if len(data) > room:
                data = data[:max(room, 0)]
                self.truncated = True
            if data:
                self.chunks.append(data)
                self.size += len(data)

        def connectionLost(self, reason: Any = protocol.connectionDone) -> None:
            if finished.called:
                return
            if reason.check(ResponseDone, PotentialDataLoss):
                finished.callback((b"".join(self.chunks), self.truncated))
            else:
                finished.errback(reason)

    collector = Collector()

    def cancel(_d: Any) -> None:
        transport = collector.transport
        stop = getattr(transport, "abortConnection", None) or getattr(transport, "stopProducing", None)
        if stop is not None:
            stop()

    finished = defer.Deferred(cancel)
    response.deliverBody(collector)
    return finished


__all__ = ["SMSGateClient"]
