"""Sends an `OutboundRequest` to an ITSP with treq: TLS verified, bounded in time and size.

Every result, network errors included, becomes an `Outcome`: the dispatcher decides what
to do with it.  Certificates are always verified (the system store, or `tls_ca`), redirects
are not followed, and the whole exchange is bounded by `timeout` seconds.
"""

from __future__ import annotations

import functools
import re
from dataclasses import replace
from typing import Any, Dict, List, Optional, Sequence, Tuple
from urllib.parse import urlsplit

from websmsd.channel import Outcome
from websmsd.config.websms import OutboundInterface
from websmsd.itsp.request import Header, InvalidNumber, RequestError, build_request, safe_url
from websmsd.itsp.response import redact, secrets_of, check_response, excerpt


# --------------------------------------------------------------------------------------
# Twisted / treq
# --------------------------------------------------------------------------------------

MAX_RESPONSE = 1024 * 1024  # bytes of a response body kept; the rest is read and dropped


_PEM_CERT = re.compile(rb"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", re.S)


class TLSConfigError(Exception):
    """tls_ca cannot be used (unreadable, or no certificate in it)."""


def load_ca_bundle(path: str) -> Any:
    """A Twisted trust root made of every certificate in the PEM file `path`.

    For an ITSP (or a test server) with a private CA or a self-signed certificate:
    only these certificates are trusted, the system store is not consulted, and the
    host name is still verified.  Raises TLSConfigError.
    """
    from twisted.internet import ssl

    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise TLSConfigError(f"tls_ca {path}: {e.strerror or e}") from None
    certificates = []
    for block in _PEM_CERT.findall(data):
        try:
            certificates.append(ssl.Certificate.loadPEM(block))
        except Exception as e:
            raise TLSConfigError(f"tls_ca {path}: a certificate cannot be read ({e})") from None
    if not certificates:
        raise TLSConfigError(f"tls_ca {path}: no PEM certificate in it")
    return ssl.trustRootFromCertificates(certificates)


def _failure_reasons(exc: BaseException) -> List[BaseException]:
    """The exception and those wrapped in it (twisted.web's ResponseFailed & co.)."""
    seen: List[BaseException] = []
    pending = [exc]
    while pending and len(seen) < 20:
        current = pending.pop(0)
        seen.append(current)
        for inner in getattr(current, "reasons", None) or ():
            value = getattr(inner, "value", inner)
            if isinstance(value, BaseException):
                pending.append(value)
    return seen


def _describe_error(exc: BaseException, url: str) -> str:
    """One line naming what went wrong on the way to the ITSP."""
    from twisted.internet import error
    from twisted.web.error import SchemeNotSupported

    try:
        parts = urlsplit(url)
        where = parts.hostname or "?"
        if parts.port is not None:
            where += f":{parts.port}"
    except ValueError:
        where = "?"
    reasons = _failure_reasons(exc)
    for e in reasons:
        name = type(e).__name__
        module = type(e).__module__
        if name == "VerificationError" and module.startswith("service_identity"):
            return (
                "TLS certificate verification failed: "
                f"the certificate of {where} is not valid for that name"
            )
    for e in reasons:
        if type(e).__module__.startswith("OpenSSL"):
            text = str(e)
            if "certificate verify failed" in text:
                return f"TLS certificate verification failed for {where} (certificate not trusted)"
            return f"TLS handshake with {where} failed ({excerpt(text, limit=80)})"
    for e in reasons:
        if isinstance(e, error.ConnectionRefusedError):
            return f"connection refused by {where}"
        if isinstance(e, error.DNSLookupError):
            return f"DNS lookup failed for {where}"
        if isinstance(e, error.TimeoutError):
            return f"timeout connecting to {where}"
        if isinstance(e, error.NoRouteError):
            return f"no route to {where}"
        if isinstance(e, SchemeNotSupported):
            return f"unsupported URL scheme ({safe_url(url)})"
        if isinstance(e, error.ConnectError):
            return f"cannot connect to {where} ({excerpt(str(e), limit=80)})"
    for e in reasons:
        if isinstance(e, (error.ConnectionLost, error.ConnectionDone)):
            return f"connection to {where} closed before a complete answer"
    last = reasons[-1]
    return f"request to {where} failed ({type(last).__name__}: {excerpt(str(last), limit=80)})"


@functools.lru_cache(maxsize=None)
def _quiet_factory(factory_class: type) -> type:
    """`factory_class` (the pool's factory for each new connection) without its
    "Starting factory" / "Stopping factory" lines: two log lines per connection to an
    ITSP, of no use to anyone.  HTTPConnectionPool makes its factories from its
    `_factory` attribute in Twisted 22.4 and 26 alike."""
    return type("Quiet" + factory_class.__name__.lstrip("_"), (factory_class,), {"noisy": False})


class ITSPClient:
    """Sends SMS to ITSP HTTP APIs with treq.

    One persistent connection pool per trust configuration (the system store, or one
    per tls_ca file), so a connection verified against one CA is never reused for an
    interface that trusts another.  Certificates are always verified
    (BrowserLikePolicyForHTTPS: chain and host name); redirects are not followed; the
    whole exchange, body included, is bounded by `timeout` seconds.

    `treq_client` replaces the real HTTP client (treq.testing.StubTreq in tests); it is
    then used for every interface.
    """

    def __init__(
        self,
        reactor: Any,
        timeout: float = 30.0,
        treq_client: Any = None,
        max_response: int = MAX_RESPONSE,
    ) -> None:
        from twisted.logger import Logger

        self._reactor = reactor
        self.timeout = timeout
        self.max_response = max_response
        self._injected = treq_client
        self._clients: Dict[Optional[str], Tuple[Any, Any]] = {}
        self._log = Logger(namespace="websmsd.itsp", source=self)

    # -- plumbing ---------------------------------------------------------------------

    def policy_for(self, iface: OutboundInterface) -> Any:
        """The TLS policy for this interface: verifying, against tls_ca if it is set."""
        from twisted.web.client import BrowserLikePolicyForHTTPS

        if iface.tls_ca:
            return BrowserLikePolicyForHTTPS(trustRoot=load_ca_bundle(iface.tls_ca))
        return BrowserLikePolicyForHTTPS()

    def client_for(self, iface: OutboundInterface) -> Any:
        """The treq HTTPClient for this interface (built on first use)."""
        if self._injected is not None:
            return self._injected
        key = iface.tls_ca or None
        entry = self._clients.get(key)
        if entry is None:
            from http.cookiejar import CookieJar, DefaultCookiePolicy

            from treq.client import HTTPClient
            from twisted.web.client import Agent, HTTPConnectionPool

            pool = HTTPConnectionPool(self._reactor, persistent=True)
            pool._factory = _quiet_factory(pool._factory)
            agent = Agent(self._reactor, contextFactory=self.policy_for(iface), pool=pool)
            # The PHP kept no cookies between requests; neither do we.
            jar = CookieJar(policy=DefaultCookiePolicy(allowed_domains=[]))
            entry = (HTTPClient(agent, cookiejar=jar), pool)
            self._clients[key] = entry
        return entry[0]

    def close(self) -> Any:
        """Close the pooled connections (at shutdown).  Returns a Deferred."""
        from twisted.internet import defer

        pools = [pool for _, pool in self._clients.values()]
        self._clients.clear()
        return defer.gatherResults([pool.closeCachedConnections() for pool in pools])

    # -- sending ----------------------------------------------------------------------

    def send(self, iface: OutboundInterface, to: str, sender: str, body: str) -> Any:
        """Send one SMS; a Deferred that fires with an Outcome.

        It does not errback for network trouble: a refused connection, a DNS failure, a
        TLS verification failure, a timeout or an unusable configuration become a
        transient Outcome whose reason names the error.
        """
        from twisted.internet import defer

        return defer.ensureDeferred(self._send(iface, to, sender, body))

    async def _send(self, iface: OutboundInterface, to: str, sender: str, body: str) -> Outcome:
        from twisted.internet import defer

        log_url = safe_url(iface.url)
        started = self._reactor.seconds()
        try:
            outcome = await self._attempt(iface, to, sender, body)
        except defer.CancelledError:
            raise  # the caller cancelled send(): that is its answer
        except Exception:
            # A bug, not the network: still an answer the dispatcher can act on.
            self._log.failure("interface {iface!r} {url}: internal error", iface=iface.name, url=log_url)
            outcome = Outcome(False, "internal error while sending (see the log)")
        elapsed_ms = int(round((self._reactor.seconds() - started) * 1000))
        fields = dict(
            iface=iface.name, url=log_url, status=outcome.code, elapsed_ms=elapsed_ms,
            ok=outcome.ok, permanent=outcome.permanent,
        )
        if outcome.ok:
            # No reason here: the answer may quote the text of the message.
            if outcome.provider_id is not None:
                self._log.info(
                    "interface {iface!r} {url}: sent, HTTP {status} in {elapsed_ms} ms,"
                    " id {provider_id}",
                    provider_id=outcome.provider_id,
                    **fields,
                )
            else:
                self._log.info(
                    "interface {iface!r} {url}: sent, HTTP {status} in {elapsed_ms} ms", **fields
                )
        else:
            # The time is the request's: when to try again is the dispatcher's retry
            # policy, unknown here ("will retry after 2 ms" read as a retry delay).
            self._log.warn(
                "interface {iface!r} {url}: {verdict}: {reason} (the request took"
                " {elapsed_ms} ms)",
                verdict="failed for good" if outcome.permanent else "not sent, to be retried",
                reason=outcome.reason,
                **fields,
            )
        return outcome

    async def _attempt(self, iface: OutboundInterface, to: str, sender: str, body: str) -> Outcome:
        from twisted.internet import defer

        secrets = secrets_of(iface)
        try:
            request = build_request(iface, to, sender, body)
            client = self.client_for(iface)
        except InvalidNumber as e:
            # The message itself is wrong: no request, and no retry would help.
            return Outcome(False, f"not sent: {redact(str(e), secrets)}", permanent=True)
        except (RequestError, TLSConfigError) as e:
            return Outcome(False, f"cannot send: {redact(str(e), secrets)}")
        for warning in request.warnings:
            self._log.warn("interface {iface!r}: {warning}", iface=iface.name, warning=warning)

        async def exchange() -> Tuple[Any, bytes, bool]:
            response = await defer.maybeDeferred(
                client.request,
                request.method,
                request.url,
                headers=_twisted_headers(request.headers),
                # No body at all for GET (not even Content-Length: 0).
                data=request.body if request.method != "GET" else None,
                allow_redirects=False,
                unbuffered=True,
            )
            content, truncated = await _read_body(response, self.max_response)
            return response, content, truncated

        # One deadline for the whole exchange, the body included: cancelling it on time
        # cancels whichever step it is waiting on (the connection, or the body's read),
        # and whatever error that cancellation becomes (treq wraps it) reads as a timeout.
        exchanged = defer.ensureDeferred(exchange())
        exchanged.addTimeout(self.timeout, self._reactor, onTimeoutCancel=_timed_out)
        try:
            result = await exchanged
        except Exception as e:
            return Outcome(False, redact(_describe_error(e, iface.url), secrets))
        if result is _TIMED_OUT:
            return Outcome(False, f"timeout: no complete answer within {self.timeout:g} s")
        response, content, truncated = result

        location = response.headers.getRawHeaders(b"location", [None])[0]
        if isinstance(location, bytes):
            location = location.decode("latin-1")
        outcome = check_response(iface, response.code, content, location)
        if truncated:
            outcome = replace(
                outcome,
                reason=f"{outcome.reason} (response over {self.max_response} bytes, truncated)",
            )
        if outcome.ok and iface.resp_id and outcome.provider_id is None:
            # Not a failure: the message went out; only its delivery reports cannot be
            # matched to it.
            self._log.debug(
                "interface {iface!r}: no usable message id at resp_id {resp_id} in the answer",
                iface=iface.name, resp_id=iface.resp_id,
            )
        return outcome


_TIMED_OUT = object()


def _timed_out(result: Any, timeout: float) -> Any:
    """addTimeout's onTimeoutCancel: whatever the cancelled exchange ended with."""
    return _TIMED_OUT


def _twisted_headers(headers: Sequence[Header]) -> Any:
    from twisted.web.http_headers import Headers

    result = Headers()
    for name, value in headers:
        result.addRawHeader(name, value)
    return result


def _read_body(response: Any, limit: int) -> Any:
    """A Deferred (bytes kept, truncated?) for the response body.

    Keeps at most `limit` bytes and drops the rest (an ITSP's answer is small; a huge
    one must not fill the memory of a Raspberry Pi).  Cancelling it closes the
    connection.
    """
    from twisted.internet import defer, protocol
    from twisted.web.client import ResponseDone
    from twisted.web.http import PotentialDataLoss

    class BodyReader(protocol.Protocol):
        def __init__(self) -> None:
            self.chunks: List[bytes] = []
            self.size = 0
            self.truncated = False

        def dataReceived(self, data: bytes) -> None:
            room = limit - self.size
            if room <= 0:
                self.truncated = True
                return
            if len(data) > room:
                data = data[:room]
                self.truncated = True
            self.chunks.append(data)
            self.size += len(data)

        def connectionLost(self, reason: Any = protocol.connectionDone) -> None:
            if finished.called:
                return
            if reason.check(ResponseDone, PotentialDataLoss):
                finished.callback((b"".join(self.chunks), self.truncated))
            else:
                finished.errback(reason)

    def cancel(d: Any) -> None:
        transport = reader.transport
        abort = getattr(transport, "abortConnection", None) or getattr(
            transport, "stopProducing", None
        )
        if abort is not None:
            abort()

    finished: Any = defer.Deferred(cancel)
    reader = BodyReader()
    response.deliverBody(reader)
    return finished
