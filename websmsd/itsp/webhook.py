"""The ITSP webhook: providers post SMS (and delivery reports) here; websmsd stores them.

`WebhookResource` answers every request on purpose: 403 (refused source, path or
signature), 400 with a one-line reason, 405, 415, 503 + Retry-After when the store cannot
commit, or 200 with resp_ack only once everything is committed.  It is what the webhook
listener serves for any path no other channel has mounted (websmsd.http.site).

Interfaces are chosen by the PHP websmsd.php's rules (remt_addr, url_path); with
``sig_method`` the request's signature is checked (`signatures`) against the public URL
``sig_url`` + path and query before its body is parsed, and the message is then read
only from what the signature covers.  The key_echo probe is answered before the check.
"""

from __future__ import annotations

import contextlib
import time
from collections import Counter
from typing import Callable, Dict, List, Optional, Tuple

from twisted.internet.defer import Deferred, DeferredList, maybeDeferred
from twisted.logger import Logger
from twisted.web.resource import Resource

from websmsd.config.websmsd import InboundInterface, InboundSettings
from websmsd.http.site import (IGNORED_EVENTS, NOT_DONE_YET, REFUSALS, REPORTS,
                               record_refusal)
from websmsd.http.site import TEXT as _TEXT
from websmsd.http.site import answer as _answer
from websmsd.http.site import body_of as _body_of
from websmsd.http.site import finish as _finish
from websmsd.http.site import gone as _gone
from websmsd.itsp.body import (FieldError, PhpArray, expand_json_strings, has_fields,
                               parse_body, parse_form, php_insert)
from websmsd.itsp.inbound import (MESSAGE, REPORT, Ignored, Report, classify, events_of,
                                  extract, extract_report, make_message, view_for)
from websmsd.message import Message, UnsafeValue
from websmsd.metrics import Metrics
from websmsd.text import shorten


log = Logger()


Accept = Callable[[List[Message]], "Deferred[List[bool]]"]


# report(provider_id, status, detail, interface=name) -> Deferred[our message id, or None]
ReportSink = Callable[..., "Deferred[Optional[str]]"]


_ALLOWED = (b"GET", b"HEAD", b"POST")


_ALLOW_HEADER = b"GET, HEAD, POST"


# Refusal classes counted in WebhookResource.refusals.
FORBIDDEN = "forbidden"


BAD_REQUEST = "bad_request"


BAD_SIGNATURE = "bad_signature"


TOO_LARGE = "too_large"


METHOD = "method"


STORE_FAILED = "store_failed"


_STORED = (
    "webhook: inbound SMS {id} {what} from {source} on interface {interface!r}"
    " to {recipient} from {sender}"
)


_NO_FILTER = Ignored("matches neither msg_filter nor dlr_filter")


_NO_REPORT_SINK = Ignored("delivery reports are not taken here")


class WebhookResource(Resource):
    """Every path and method of the webhook listener.

    `accept(messages)` commits messages durably and fires with one bool per message
    (True: new, False: a provider id already stored); it errbacks if it cannot commit.
    All messages of one request go to one `accept` call.  `report(provider_id, status,
    detail)` records a delivery report and fires with our message id (None: no message
    has that provider id); without it, reports are acknowledged and ignored.
    The ITSP gets 200 + resp_ack only after everything fired, 503 + Retry-After (retry)
    if anything failed.  A request with no message and no report in it (an event type
    we do not take) gets 200 + resp_ack at once and is counted in `ignored`.
    """

    isLeaf = True

    @property
    def recent_refusals(self) -> List[dict]:
        """The last refusals, oldest first."""
        return list(self.metrics.events.get(REFUSALS, ()))

    def __init__(
        self,
        settings: InboundSettings,
        accept: Accept,
        max_body: int = 1024 * 1024,
        *,
        report: Optional[ReportSink] = None,
        retry_after: int = 30,
        now: Callable[[], float] = time.time,
        metrics: Optional[Metrics] = None,
    ) -> None:
        super().__init__()
        self.settings = settings
        self.accept = accept
        self.report = report
        self.max_body = max_body
        self.retry_after = b"%d" % retry_after
        self.metrics = metrics if metrics is not None else Metrics()
        # Refused requests by kind, events acknowledged but not taken by reason, delivery
        # reports by our status ("unknown": no message has that id); the last ones of
        # each (time, source, path, reason: never message text) in metrics.events.
        self.refusals: Counter = self.metrics.counter(REFUSALS)
        self.ignored: Counter = self.metrics.counter(IGNORED_EVENTS)
        self.reports: Counter = self.metrics.counter(REPORTS)
        # Messages stored and resent copies recognised, since start.
        self.stored = 0
        self.duplicates = 0
        self._summarised = (0, 0)
        self._now = now
        self._acks: Dict[int, Tuple[bytes, bytes]] = {}
        name = settings.proxy_header_name
        self._proxy_header = name.encode("latin-1") if name and settings.prox_addr else None

    # -- rendering -------------------------------------------------------------------

    def render(self, request):
        source = self.client_of(request)
        path = request.path.decode("latin-1")
        selection = self.settings.select(source, path)
        iface = selection.interface
        if iface is None:
            return self._refuse(request, 403, FORBIDDEN, source, path, selection.reason)

        query = request.uri.partition(b"?")[2]
        query_tree = None
        try:
            if iface.key_echo is not None and query:
                query_tree = parse_form(query)
                echo = query_tree.get(iface.key_echo)
                if isinstance(echo, str):
                    log.info(
                        "webhook echo request from {source} for {path} (interface {interface!r})",
                        source=source,
                        path=shorten(path),
                        interface=iface.name,
                    )
                    return _answer(request, 200, echo.encode("utf-8"), _TEXT)

            method = request.method
            if method not in _ALLOWED:
                request.setHeader(b"Allow", _ALLOW_HEADER)
                return self._refuse(
                    request,
                    405,
                    METHOD,
                    source,
                    path,
                    f"method {method.decode('latin-1')} is not allowed: use POST or GET",
                )

            body = _body_of(request)
            if len(body) > self.max_body:
                return self._refuse(
                    request,
                    413,
                    TOO_LARGE,
                    source,
                    path,
                    f"request body larger than {self.max_body} bytes",
                )
            signed = None
            if iface.sig_method is not None:
                signed = self._check_signature(request, iface, body)
                if isinstance(signed, str):
                    return self._refuse(
                        request, 403, BAD_SIGNATURE, source, path, f"bad signature: {signed}"
                    )
            if signed is not None and signed.fields is not None:
                # The provider signs these fields only: the message comes from them.
                tree = PhpArray()
                for name, value in signed.fields:
                    php_insert(tree, name, value)
            else:
                tree = None
                if body and (signed is None or signed.body):
                    content_type = request.getHeader(b"content-type")
                    tree = parse_body(
                        None if content_type is None else content_type.decode("latin-1"), body
                    )
                if not has_fields(tree):
                    if signed is not None and not signed.query:
                        tree = {}  # the query string is not signed: nothing is read from it
                    elif query_tree is not None:
                        tree = query_tree
                    else:
                        tree = parse_form(query) if query else {}
            expand_json_strings(tree)
            if (iface.msg_filter is not None or iface.dlr_filter is not None
                    or iface.key_events is not None or type(tree) is list):
                return self._render_events(request, iface, tree, source, path)
            fields = extract(iface, tree)
        except FieldError as e:  # 400, or 415 for a body in a format not read here
            return self._refuse(request, e.status, BAD_REQUEST, source, path, str(e))
        except UnsafeValue as e:
            return self._refuse(request, 400, BAD_REQUEST, source, path, f"unsafe value: {e}")

        message = make_message(iface, fields)
        if fields.dropped_media:
            self._dropped_media(fields, message, source)
        d = maybeDeferred(self.accept, [message])
        d.addCallbacks(
            self._stored,
            self._store_failed,
            callbackArgs=(request, iface, message, source),
            errbackArgs=(request, message, source, path),
        )
        d.addErrback(self._bug, request)
        return NOT_DONE_YET

    def _stored(self, results, request, iface, message, source) -> None:
        # The hot path (one message, one commit): kept free of extra calls.  A log line
        # per message costs as much as the rest of the request: messages are counted
        # here and logged once a minute (log_summary); each one is on the status page.
        new = bool(results[0]) if results else True
        if new:
            self.stored += 1
        else:
            self.duplicates += 1
            self._log_stored(message, new, iface, source)
        if _gone(request):
            log.info(
                "webhook: {source} went away before SMS {id} was acknowledged",
                source=source,
                id=message.id,
            )
            return
        ack = self._acks.get(id(iface)) or self._ack(iface)
        _finish(request, 200, ack[0], ack[1])

    def log_summary(self) -> None:
        """One line for what was stored since the last call (called once a minute)."""
        stored, duplicates = self.stored, self.duplicates
        new_stored = stored - self._summarised[0]
        new_duplicates = duplicates - self._summarised[1]
        self._summarised = (stored, duplicates)
        if new_stored or new_duplicates:
            log.info(
                "webhook: {stored} inbound SMS stored, {duplicates} resent copies recognised"
                " (since start: {total})",
                stored=new_stored, duplicates=new_duplicates, total=stored,
            )

    def _log_stored(self, message, new, iface, source) -> None:
        log.info(
            _STORED,
            id=message.id,
            what="stored" if new else "already stored (provider id seen before)",
            source=source,
            interface=iface.name,
            recipient=message.recipient,
            sender=message.sender,
            provider_id=message.provider_id,
            duplicate=not new,
        )

    def _store_failed(self, failure, request, message, source, path) -> None:
        log.failure(
            "webhook: could not store inbound SMS {id} from {source}",
            failure,
            id=message.id,
            source=source,
        )
        self._answer_retry(request, source, path)

    def _answer_retry(self, request, source, path) -> None:
        reason = "the message could not be stored; retry later"
        self.record_refusal(STORE_FAILED, 503, source, path, reason)
        if _gone(request):
            return
        request.setHeader(b"Retry-After", self.retry_after)
        _finish(request, 503, (reason + "\n").encode("utf-8"), _TEXT)

    def _bug(self, failure, request) -> None:
        log.failure("webhook: failed to answer a request", failure)
        if not _gone(request) and not getattr(request, "finished", False):
            # The connection may be half gone; a failure to say so changes nothing.
            with contextlib.suppress(Exception):
                _finish(request, 500, b"internal error\n", _TEXT)

    def _ack(self, iface: InboundInterface) -> Tuple[bytes, bytes]:
        """(resp_ack, resp_type) of an interface, encoded once."""
        ack = self._acks.get(id(iface))
        if ack is None:
            ack = (iface.resp_ack.encode("utf-8"), iface.resp_type.encode("utf-8"))
            self._acks[id(iface)] = ack
        return ack

    def _dropped_media(self, fields, message, source) -> None:
        log.warn(
            "webhook: {count} media link(s) of SMS {id} from {source} left out"
            " (not http(s), too long, or too many)",
            count=fields.dropped_media,
            id=message.id,
            source=source,
        )

    # -- events: batches, filters, delivery reports ------------------------------------

    def _render_events(self, request, iface, tree, source, path):
        """A request as events (one, or a JSON array of them): messages, delivery
        reports and events to ignore."""
        events = events_of(tree, iface.key_events)
        messages: List[Message] = []
        reports: List[Report] = []
        refused: List[Tuple[int, str]] = []
        for event in events:
            try:
                event = view_for(iface, event)
                kind = classify(iface, event)
                if kind == MESSAGE:
                    fields = extract(iface, event)
                    message = make_message(iface, fields)
                    if fields.dropped_media:
                        self._dropped_media(fields, message, source)
                    messages.append(message)
                    continue
                outcome = extract_report(iface, event) if kind == REPORT else _NO_FILTER
            except FieldError as e:
                refused.append((e.status, str(e)))
                continue
            except UnsafeValue as e:
                refused.append((400, f"unsafe value: {e}"))
                continue
            if isinstance(outcome, Report) and self.report is None:
                outcome = _NO_REPORT_SINK
            if isinstance(outcome, Report):
                reports.append(outcome)
            else:
                self.record_ignored(outcome, source, path, iface)
        if refused:
            if not messages and not reports:
                status, reason = refused[0]
                more = f" (and {len(refused) - 1} more events)" if len(refused) > 1 else ""
                return self._refuse(request, status, BAD_REQUEST, source, path, reason + more)
            for status, reason in refused:
                self.record_refusal(
                    BAD_REQUEST, status, source, path,
                    f"{shorten(reason, 250)} (one event of {len(events)}; the others were taken)",
                )
        if not messages and not reports:
            body, content_type = self._ack(iface)
            return _answer(request, 200, body, content_type)

        work = []
        if messages:
            work.append(maybeDeferred(self.accept, messages))
        for r in reports:
            work.append(maybeDeferred(self.report, r.provider_id, r.status, r.detail,
                                      interface=iface.name))
        d = DeferredList(work, consumeErrors=True)
        d.addCallback(self._events_done, request, iface, messages, reports, source, path)
        d.addErrback(self._bug, request)
        return NOT_DONE_YET

    def _events_done(self, results, request, iface, messages, reports, source, path) -> None:
        failed = False
        outcomes = iter(results)
        if messages:
            ok, value = next(outcomes)
            if ok:
                for message, new in zip(messages, list(value) + [True] * len(messages)):
                    if new:
                        self.stored += 1
                    else:
                        self.duplicates += 1
                        self._log_stored(message, False, iface, source)
            else:
                failed = True
                log.failure(
                    "webhook: could not store {count} inbound SMS from {source}",
                    value,
                    count=len(messages),
                    source=source,
                )
        for r, (ok, value) in zip(reports, outcomes):
            if not ok:
                failed = True
                log.failure(
                    "webhook: could not record a delivery report from {source}",
                    value,
                    source=source,
                    provider_id=r.provider_id,
                )
                continue
            self.reports[r.status if value is not None else "unknown"] += 1
            log.info(
                "webhook: delivery report from {source} on interface {interface!r}:"
                " provider message {provider_id} {status} ({detail}){unknown}",
                source=source,
                interface=iface.name,
                provider_id=r.provider_id,
                status=r.status,
                detail=r.detail,
                message_id=value,
                unknown="" if value is not None else "; no message has that id",
            )
        if failed:
            self._answer_retry(request, source, path)
            return
        if _gone(request):
            log.info("webhook: {source} went away before it was acknowledged", source=source)
            return
        _finish(request, 200, *self._ack(iface))

    def record_ignored(self, ignored: Ignored, source: str, path: str, iface=None) -> None:
        """Count, remember and log one event acknowledged but not taken."""
        path = shorten(path)
        self.ignored[ignored.reason] += 1
        self.metrics.note(
            IGNORED_EVENTS,
            {
                "time": self._now(),
                "source": source,
                "path": path,
                "reason": ignored.reason,
                "detail": ignored.detail,
            }
        )
        log.info(
            "webhook: ignored an event from {source} for {path}: {reason}{detail}",
            source=source,
            path=path,
            reason=ignored.reason,
            detail=f" ({ignored.detail})" if ignored.detail else "",
            interface=None if iface is None else iface.name,
        )

    # -- signed webhooks -----------------------------------------------------------------

    def _check_signature(self, request, iface, body: bytes):
        """What the request's signature covers (signatures.Signed), or why it is refused
        (a str)."""
        # Imported by the first signed request: most installations check none.
        from websmsd.itsp import signatures

        headers = {
            name.decode("latin-1").lower(): values[0].decode("latin-1")
            for name, values in request.requestHeaders.getAllRawHeaders()
            if values
        }
        uri = request.uri.decode("utf-8", "replace")
        if iface.sig_url:
            url = iface.sig_url + uri
        else:
            # No public URL configured: the one the client asked for, as it asked.
            host = headers.get("host") or ""
            url = ("https://" if request.isSecure() else "http://") + host + uri
        try:
            signed = signatures.verify(
                iface.sig_method,
                iface.sig_secret,
                http_method=request.method.decode("latin-1"),
                url=url,
                headers=headers,
                body=body,
                content_type=headers.get("content-type"),
                now=self._now(),
                tolerance=iface.sig_tolerance,
            )
        except signatures.SignatureError as e:
            return str(e)
        if not signed.anything:
            # Plivo V2 (sig_method plivo): the request came from Plivo once, but nothing
            # in it is vouched for.  Taken as before, for the installations that have
            # only V2 (check-config warns); plivo-v3 refuses it.
            log.warn("webhook: interface {interface!r} accepted a Plivo V2 signature, which"
                     " covers neither the query nor the body (use sig_method plivo-v3)",
                     interface=iface.name)
            return None
        return signed

    # -- refusals --------------------------------------------------------------------

    def _refuse(self, request, status: int, kind: str, source: str, path: str, reason: str):
        reason = shorten(reason.replace("\r", " ").replace("\n", " "), 300)
        self.record_refusal(kind, status, source, path, reason)
        return _answer(request, status, (reason + "\n").encode("utf-8"), _TEXT)

    def record_refusal(self, kind: str, status: int, source: str, path: str, reason: str) -> None:
        """Count, remember and log one refused request (never its body or secrets)."""
        record_refusal(self.metrics, self._now(), kind, status, source, path, reason)

    def refused_early(self, request, status: int, kind: str, path: bytes, reason: str) -> None:
        """Called by the HTTP server (twsite.WebhookRequest, leanhttp) when it refused a
        request before any resource rendered it."""
        self.record_refusal(
            kind, status, self.client_of(request), path.partition(b"?")[0].decode("latin-1"), reason
        )

    def client_of(self, request) -> str:
        """The client's address, through a trusted proxy's header when there is one."""
        peer = getattr(request.getClientAddress(), "host", None) or ""
        if self._proxy_header is None:
            return peer
        values = request.requestHeaders.getRawHeaders(self._proxy_header)
        if not values:
            return peer
        return self.settings.client_address(peer, [v.decode("latin-1") for v in values])


