"""The GoIP web API with treq: send an SMS and follow it to DONE, send USSD.

    client = GoIPWebClient(treq, "http://192.168.1.190", "admin", "secret", clock=reactor)
    outcome = await client.send(1, "+79991234567", "text")       # SendOutcome
    answer = await client.ussd(1, "*100#")                        # str, or UssdError

A GoIP line sends one SMS at a time and refuses another while busy, and its status page
holds only each line's last job, so jobs of one line are serialised here (a per-line
lock) and each is followed by polling send_status.xml until its smskey shows DONE or
ERRORDONE.  Network trouble and HTTP errors become outcomes, never errbacks.  No
credential is ever logged: logs name the page without query.  Certificates of an https
GoIP are verified by treq's default agent (the caller may pass any treq-like client).
"""

from __future__ import annotations

import os
from typing import Any, Callable, Dict, Optional, Tuple

from twisted.internet import defer, task
from twisted.logger import Logger

from websmsd.goip import web
from websmsd.goip.outcome import SendOutcome, UssdError


class _HTTPTrouble(Exception):
    """No usable HTTP answer; `reached` says whether the GoIP may have seen the request."""

    def __init__(self, reason: str, reached: bool) -> None:
        super().__init__(reason)
        self.reason = reason
        self.reached = reached


def _describe(exc: BaseException) -> Tuple[str, bool]:
    """(one line, whether the request may have reached the GoIP)."""
    from twisted.internet import error

    seen = [exc]
    for inner in getattr(exc, "reasons", None) or ():
        value = getattr(inner, "value", inner)
        if isinstance(value, BaseException):
            seen.append(value)
    for e in seen:
        module = type(e).__module__
        if module.startswith("OpenSSL") or module.startswith("service_identity"):
            return "TLS certificate verification or handshake failed", False
        if isinstance(e, error.DNSLookupError):
            return "DNS lookup failed", False
        if isinstance(e, error.ConnectionRefusedError):
            return "connection refused", False
        if isinstance(e, (error.TimeoutError, error.ConnectingCancelledError)):
            return "timeout connecting", False
        if isinstance(e, error.NoRouteError):
            return "no route to the GoIP", False
        if isinstance(e, error.ConnectError):
            return "cannot connect", False
    # Anything later (a lost connection, a broken answer): the request went out.
    return f"no complete answer ({type(seen[-1]).__name__})", True


class GoIPWebClient:
    """Talks to one GoIP's web API.

    treq_like: the `treq` module, a treq HTTPClient or treq.testing.StubTreq: anything
        with `request(method, url, headers=, data=)` whose responses have `.code` and
        work with `treq.collect`.
    base_url: `http://host[:port]` (a trailing `/default/en_US` is accepted too).
    timeout: seconds for one HTTP exchange, body included.
    poll_interval, deadline: send_status.xml is read every poll_interval seconds until
        the job is final or `deadline` seconds have passed since the job was handed over.
    send_method: "get" (send.html, the GoIP picks the smskey) or "post" (the web
        form sms_info.html?type=sms with our own smskey).
    smskey_factory: makes our smskeys (8 random hex digits by default).
    """

    def __init__(
        self,
        treq_like: Any,
        base_url: str,
        user: str,
        password: str,
        *,
        clock: Any,
        timeout: float = 30.0,
        poll_interval: float = 2.0,
        deadline: float = 120.0,
        send_method: str = "get",
        smskey_factory: Optional[Callable[[], str]] = None,
        max_answer: int = web.MAX_ANSWER,
    ) -> None:
        if send_method not in ("get", "post"):
            raise ValueError("send_method must be 'get' or 'post'")
        # Building a request checks the URL and credentials now, not at the first send.
        web.status_request(base_url, user, password)
        self._treq = treq_like
        self._base = base_url
        self._user = user
        self._password = password
        self._clock = clock
        self.timeout = timeout
        self.poll_interval = poll_interval
        self.deadline = deadline
        self.send_method = send_method
        self._smskey = smskey_factory or (lambda: os.urandom(4).hex())
        self.max_answer = max_answer
        self._locks: Dict[int, defer.DeferredLock] = {}
        self._log = Logger(namespace="websmsd.goip.web", source=self)

    def _lock(self, line: int) -> defer.DeferredLock:
        lock = self._locks.get(line)
        if lock is None:
            lock = self._locks[line] = defer.DeferredLock()
        return lock

    # -- HTTP -----------------------------------------------------------------------------

    async def _fetch(self, request: web.WebRequest) -> Tuple[int, bytes]:
        """(status, body) of one exchange; _HTTPTrouble on timeout or network error."""
        from treq import collect

        state: Dict[str, Any] = {"step": None, "timed_out": False}

        def on_timeout() -> None:
            state["timed_out"] = True
            if state["step"] is not None:
                state["step"].cancel()

        timer = self._clock.callLater(self.timeout, on_timeout)
        chunks: list = []
        size = [0]

        def keep(data: bytes) -> None:
            if size[0] < self.max_answer:
                chunks.append(data[: self.max_answer - size[0]])
            size[0] += len(data)

        try:
            state["step"] = defer.maybeDeferred(
                self._treq.request,
                request.method,
                request.url,
                headers={k: [v] for k, v in request.headers},
                data=request.body,
            )
            response = await state["step"]
            state["step"] = defer.maybeDeferred(collect, response, keep)
            await state["step"]
        except defer.CancelledError:
            if state["timed_out"]:
                raise _HTTPTrouble(f"no answer within {self.timeout:g} s", True) from None
            raise
        except Exception as e:
            if state["timed_out"]:
                raise _HTTPTrouble(f"no answer within {self.timeout:g} s", True) from None
            reason, reached = _describe(e)
            raise _HTTPTrouble(reason, reached) from None
        finally:
            if timer.active():
                timer.cancel()
        body = b"".join(chunks)
        if size[0] > self.max_answer:
            raise _HTTPTrouble(f"answer over {self.max_answer} bytes", True)
        return response.code, body

    async def _sleep(self, seconds: float) -> None:
        await task.deferLater(self._clock, seconds, lambda: None)

    async def _poll(self, line: int, smskey: str, started: float) -> Tuple[str, str, Optional[str]]:
        """Read send_status.xml until the job is final or the deadline passes.

        (state, text, last problem) with state web.DONE / web.FAILED / web.PENDING (the
        deadline passed); problems reading the status are retried, the last one is kept
        for the outcome's reason.
        """
        request = web.status_request(self._base, self._user, self._password)
        problem: Optional[str] = None
        while True:
            now = self._clock.seconds()
            if now >= started + self.deadline:
                return web.PENDING, "", problem
            await self._sleep(min(self.poll_interval, started + self.deadline - now))
            try:
                code, body = await self._fetch(request)
            except _HTTPTrouble as e:
                problem = e.reason
                continue
            if code != 200:
                problem = f"send_status.xml answered HTTP {code}"
                continue
            try:
                jobs = web.parse_status(body)
            except web.WebAPIError as e:
                problem = str(e)
                continue
            state, text = web.job_state(jobs, line, smskey)
            if state != web.PENDING:
                return state, text, None

    # -- SMS ------------------------------------------------------------------------------

    def send(self, line: int, number: str, text: str) -> defer.Deferred:
        """Send one SMS through GoIP line `line` (1-based); a Deferred[SendOutcome].

        One job per line at a time: later calls wait.  Never errbacks (except when
        cancelled).
        """
        try:
            web.check_line(line)
            web.check_number(number)
            web.check_text(text)
        except web.WebAPIError as e:
            return defer.succeed(SendOutcome(False, permanent=True, reason=f"not sent: {e}"))
        return self._lock(line).run(lambda: defer.ensureDeferred(self._send(line, number, text)))

    async def _send(self, line: int, number: str, text: str) -> SendOutcome:
        try:
            outcome = await self._attempt(line, number, text)
        except defer.CancelledError:
            raise
        except Exception:
            self._log.failure("GoIP web line {line}: internal error while sending", line=line)
            outcome = SendOutcome(False, reason="internal error while sending (see the log)", maybe_sent=True)
        if outcome.ok:
            self._log.info("GoIP web line {line}: SMS sent (smskey {smskey})", line=line,
                           smskey=outcome.provider_id)
        else:
            self._log.warn("GoIP web line {line}: SMS not sent: {reason}", line=line, reason=outcome.reason)
        return outcome

    async def _attempt(self, line: int, number: str, text: str) -> SendOutcome:
        if self.send_method == "post":
            smskey = web.check_smskey(self._smskey())
            request = web.send_form_request(self._base, self._user, self._password, line, number, text, smskey)
        else:
            request = web.send_request(self._base, self._user, self._password, line, number, text)
        started = self._clock.seconds()
        try:
            code, body = await self._fetch(request)
        except _HTTPTrouble as e:
            if e.reached:
                return SendOutcome(
                    False, reason=f"{request.log_url}: {e.reason}; the SMS may have been sent",
                    maybe_sent=True,
                )
            return SendOutcome(False, reason=f"{request.log_url}: {e.reason}", down=True)
        if code == 401:
            return SendOutcome(False, reason="the GoIP refused the web login (HTTP 401): check user and password",
                               down=True, auth_failed=True)
        if code != 200:
            return SendOutcome(False, reason=f"{request.log_url} answered HTTP {code}")
        if self.send_method == "get":
            try:
                answer = web.parse_send_answer(body)
            except web.WebAPIError as e:
                # Not a known answer, yet HTTP 200: the GoIP may have queued it.
                return SendOutcome(False, reason=f"{e}; the SMS may have been sent", maybe_sent=True)
            if not answer.accepted:
                return self._refused(line, answer)
            assert answer.smskey is not None
            smskey = answer.smskey
        state, error, problem = await self._poll(line, smskey, started)
        if state == web.DONE:
            return SendOutcome(True, reason="sent", provider_id=smskey)
        if state == web.FAILED:
            detail = web.one_line(error) or "no reason given"
            if web.maybe_sent_despite_error(error):
                return SendOutcome(False, reason=f"the GoIP reported: {detail} (the SMS may have been sent)",
                                   provider_id=smskey, maybe_sent=True)
            return SendOutcome(False, reason=f"the GoIP could not send the SMS: {detail}", provider_id=smskey)
        reason = f"no final status for smskey {smskey} within {self.deadline:g} s; the SMS may have been sent"
        if problem:
            reason += f" (last status read: {problem})"
        return SendOutcome(False, reason=reason, provider_id=smskey, maybe_sent=True)

    def _refused(self, line: int, answer: web.SendAnswer) -> SendOutcome:
        detail = answer.error or "ERROR"
        if answer.kind == web.AUTH:
            return SendOutcome(False, reason=f"the GoIP refused the web login ({detail}): check user and password",
                               down=True, auth_failed=True)
        if answer.kind == web.LINE_DOWN:
            return SendOutcome(False, reason=f"GoIP line {line} cannot send now: {detail}", down=True)
        return SendOutcome(False, reason=f"GoIP line {line} refused the SMS ({detail}); retry later")

    # -- USSD -----------------------------------------------------------------------------

    def ussd(self, line: int, code: str) -> defer.Deferred:
        """Send USSD `code` through `line`; a Deferred[str] with the network's answer,
        failing with UssdError.  Waits for the line's SMS jobs like they wait for it."""
        try:
            web.check_line(line)
            smskey = web.check_smskey(self._smskey())
            request = web.ussd_request(self._base, self._user, self._password, line, code, smskey)
        except web.WebAPIError as e:
            return defer.fail(UssdError(str(e)))
        return self._lock(line).run(lambda: defer.ensureDeferred(self._ussd(line, request, smskey)))

    async def _ussd(self, line: int, request: web.WebRequest, smskey: str) -> str:
        started = self._clock.seconds()
        try:
            code, _ = await self._fetch(request)
        except _HTTPTrouble as e:
            raise UssdError(f"{request.log_url}: {e.reason}") from None
        if code == 401:
            raise UssdError("the GoIP refused the web login (HTTP 401): check user and password")
        if code != 200:
            raise UssdError(f"{request.log_url} answered HTTP {code}")
        state, text, problem = await self._poll(line, smskey, started)
        if state == web.DONE:
            return text
        if state == web.FAILED:
            raise UssdError(f"USSD failed: {web.one_line(text) or 'no reason given'}")
        raise UssdError(f"no USSD answer within {self.deadline:g} s" + (f" ({problem})" if problem else ""))
