"""The status listener: a status page for the PBX owner, the JSON API and /metrics.

One root resource serves `[daemon] status_listen`:

    GET  /                          the status page (?number=, ?hours=, ?limit=)
    GET  /messages/<id>             one message: its text, attempts, delivery reports
    POST /messages/<id>/resend      the page's buttons (form + CSRF token)
    POST /messages/<id>/cancel
    GET  /static/<file>             the page's CSS (no CDN, no script)
    GET  /metrics                   Prometheus text format
    *    /api/...                   the JSON API (websmsd.http.api)
    *    /conversations..., /login  SMS per own number (websmsd.http.conversations)

Everything passes the same access rule first (`api.Access`), the owner's; the static
files also serve the sign-in page when [web] has users.  A [web] user's session (websmsd.http.users) opens the conversations of that
user's numbers and nothing else.
"""

from __future__ import annotations

import os
import re
from typing import Any, Dict, Optional, Tuple
from urllib.parse import urlencode

from twisted.internet import defer
from twisted.logger import Logger
from twisted.web import resource, server

from websmsd.http import api
from websmsd.http.conversations import form_fields
from websmsd.http.model import StatusModel
from websmsd.http.pages import CSRF, Page, web_dir

log = Logger()


# The page stays fast however big the store: it shows at most this many messages.
DEFAULT_LIMIT = 200


MAX_LIMIT = 1000


DEFAULT_HOURS = 24


MAX_HOURS = 24 * 366


MAX_REQUEST_BODY = api.MAX_REQUEST  # the listener refuses larger bodies (413)


SECURITY_HEADERS = (
    (b"Content-Security-Policy",
     b"default-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"),
    (b"X-Frame-Options", b"DENY"),
    (b"X-Content-Type-Options", b"nosniff"),
    (b"Referrer-Policy", b"same-origin"),
    (b"Cache-Control", b"no-store"),
)


_HTML = b"text/html; charset=utf-8"


_TEXT = b"text/plain; charset=utf-8"


METRICS_TYPE = b"text/plain; version=0.0.4; charset=utf-8"


_STATIC_TYPES = {".css": b"text/css; charset=utf-8", ".js": b"text/javascript; charset=utf-8",
                 ".svg": b"image/svg+xml", ".png": b"image/png", ".ico": b"image/x-icon"}


# -- the root resource ---------------------------------------------------------------------


_MESSAGE_PATH = re.compile(rb"/messages/([A-Za-z0-9_.\-]{1,64})")


_ACTION_PATH = re.compile(rb"/messages/([A-Za-z0-9_.\-]{1,64})/(resend|cancel)")


_STATIC_PATH = re.compile(rb"/static/([A-Za-z0-9_\-]+\.[a-z]{2,4})")


def _gone(request: Any) -> bool:
    return bool(getattr(request, "_disconnected", False)) or bool(request.finished)


def _security(request: Any) -> None:
    for name, value in SECURITY_HEADERS:
        request.setHeader(name, value)


def _send(request: Any, status: int, body: bytes, ctype: bytes = _HTML) -> None:
    """Finish an asynchronous answer (unless the client went away)."""
    if _gone(request):
        return
    request.setResponseCode(status)
    request.setHeader(b"Content-Type", ctype)
    request.setHeader(b"Content-Length", b"%d" % len(body))
    request.write(body)
    request.finish()


def _arg(request: Any, name: bytes) -> str:
    values = request.args.get(name) or [b""]
    return values[0].decode("utf-8", "replace").strip()


class StatusResource(resource.Resource):
    """Everything on the status listener (see the module docstring)."""

    isLeaf = True

    def __init__(self, model: StatusModel, api_resource: api.APIResource,
                 access: Optional[api.Access] = None, csrf: Optional[CSRF] = None):
        super().__init__()
        self.model = model
        self.api = api_resource
        self.access = access or api_resource.access
        self.csrf = csrf or CSRF()
        self.page = Page(self.csrf)
        self.conversations: Any = None  # websmsd.http.conversations, when wired
        self.users: Any = None  # websmsd.http.users.Users
        self._static: Dict[str, Tuple[bytes, bytes]] = {}

    def render(self, request: Any) -> Any:
        path = request.path
        is_api = path == b"/api" or path.startswith(b"/api/")
        _security(request)
        m = _STATIC_PATH.fullmatch(path)
        if m and self.users is not None and self.users.enabled:
            # The pages' CSS and script, also for the sign-in page: nothing secret.
            if request.method not in (b"GET", b"HEAD"):
                return self._not_allowed(request, b"GET, HEAD")
            return self._static_file(request, m.group(1).decode("ascii"))
        viewer, refusal = self._viewer(request)
        conversations = self.conversations
        if conversations is not None and conversations.handles(path):
            return conversations.render(request, viewer, refusal)
        if refusal is not None:
            if viewer is not None:
                # A [web] user: the conversations are theirs, the rest is the owner's.
                if path == b"/" and request.method in (b"GET", b"HEAD"):
                    request.setResponseCode(303)
                    request.setHeader(b"Location", b"conversations")
                    return self._plain(request, 303, "see conversations")
                return self._plain(request, 403, "this page is the owner's")
            r = refusal
            if r.status == 403:
                log.info("status listener refused {source}: {reason}",
                         source=getattr(request.getClientAddress(), "host", "?"),
                         reason=r.reason)
            if is_api:
                return api.refuse(request, r)
            for name, value in r.headers:
                request.responseHeaders.addRawHeader(name, value)
            return self._plain(request, r.status, r.reason)
        if is_api:
            return self.api.route(request)
        method = request.method
        if path == b"/metrics":
            if method not in (b"GET", b"HEAD"):
                return self._not_allowed(request, b"GET, HEAD")
            d = self.model.metrics_text()
            d.addCallback(lambda text: _send(request, 200, text.encode("utf-8"), METRICS_TYPE))
            d.addErrback(self._failed, request)
            return server.NOT_DONE_YET
        if path == b"/":
            if method not in (b"GET", b"HEAD"):
                return self._not_allowed(request, b"GET, HEAD")
            return self._status_page(request)
        m = _STATIC_PATH.fullmatch(path)
        if m:
            if method not in (b"GET", b"HEAD"):
                return self._not_allowed(request, b"GET, HEAD")
            return self._static_file(request, m.group(1).decode("ascii"))
        m = _MESSAGE_PATH.fullmatch(path)
        if m:
            if method not in (b"GET", b"HEAD"):
                return self._not_allowed(request, b"GET, HEAD")
            return self._message_page(request, m.group(1).decode("ascii"))
        m = _ACTION_PATH.fullmatch(path)
        if m:
            if method != b"POST":
                return self._not_allowed(request, b"POST")
            return self._action(request, m.group(1).decode("ascii"),
                                m.group(2).decode("ascii"))
        return self._html(request, 404, "no such page")

    def _viewer(self, request: Any) -> Tuple[Any, Optional[api.Refusal]]:
        """Who asks: (OWNER, None) when the access rule lets the request through, else
        (the [web] user of its session or None, the rule's refusal)."""
        from websmsd.http.users import OWNER

        try:
            self.access.check(request)
        except api.Refusal as r:
            users = self.users
            viewer = users.session(request) if users is not None and users.enabled else None
            return viewer, r
        return OWNER, None

    # -- answers

    def _plain(self, request: Any, status: int, reason: str) -> bytes:
        request.setResponseCode(status)
        request.setHeader(b"Content-Type", _TEXT)
        return (reason + "\n").encode("utf-8")

    def _html(self, request: Any, status: int, reason: str) -> bytes:
        request.setResponseCode(status)
        request.setHeader(b"Content-Type", _HTML)
        return self.page.error_page(status, reason, _root_of(request.path))

    def _not_allowed(self, request: Any, allow: bytes) -> bytes:
        request.setHeader(b"Allow", allow)
        return self._plain(request, 405, f"use {allow.decode()}")

    def _failed(self, failure: Any, request: Any) -> None:
        log.failure("status page failed", failure)
        _send(request, 503, self.page.error_page(
            503, "the store could not answer; try again", _root_of(request.path)))

    def _static_file(self, request: Any, name: str) -> bytes:
        cached = self._static.get(name)
        if cached is None:
            ctype = _STATIC_TYPES.get(os.path.splitext(name)[1])
            path = os.path.join(web_dir(), "static", name)
            if ctype is None or not os.path.isfile(path):
                return self._plain(request, 404, "no such file")
            with open(path, "rb") as f:
                cached = self._static[name] = (ctype, f.read())
        request.setHeader(b"Content-Type", cached[0])
        return cached[1]

    # -- pages

    def _query(self, request: Any) -> dict:
        number = _arg(request, b"number")[:64] or None
        hours_text = _arg(request, b"hours")
        try:
            hours = min(max(float(hours_text), 0.01), MAX_HOURS) if hours_text else DEFAULT_HOURS
        except ValueError:
            hours, hours_text = DEFAULT_HOURS, ""
        try:
            limit = min(max(int(_arg(request, b"limit") or DEFAULT_LIMIT), 1), MAX_LIMIT)
        except ValueError:
            limit = DEFAULT_LIMIT
        hours_shown = int(hours) if hours == int(hours) else hours
        return {"number": number, "hours": hours_shown, "hours_text": hours_text,
                "limit": limit,
                # A number search looks at every age unless hours are given.
                "since": 0.0 if number and not hours_text else self.model.clock() - hours * 3600}

    def _status_page(self, request: Any) -> Any:
        query = self._query(request)

        async def build() -> None:
            snapshot, (found, reports) = await defer.gatherResults(
                [self.model.snapshot(),
                 self.model.messages(query["number"], query["since"], query["limit"])],
                consumeErrors=True).addErrback(api.first_error)
            _send(request, 200, self.page.status_page(snapshot, found, reports, query))

        defer.ensureDeferred(build()).addErrback(self._failed, request)
        return server.NOT_DONE_YET

    def _message_page(self, request: Any, message_id: str) -> Any:
        reader = self.model.store.reader

        async def build() -> None:
            m = await reader.get(message_id)
            if m is None:
                _send(request, 404, self.page.error_page(404, "no such message",
                                                         _root_of(request.path)))
                return
            snapshot, attempts, reports = await defer.gatherResults(
                [self.model.snapshot(), reader.attempts(message_id), reader.reports([message_id])],
                consumeErrors=True).addErrback(api.first_error)
            _send(request, 200, self.page.message_page(snapshot, m, attempts,
                                                       reports.get(message_id, [])))

        defer.ensureDeferred(build()).addErrback(self._failed, request)
        return server.NOT_DONE_YET

    def _action(self, request: Any, message_id: str, action: str) -> Any:
        why = api.cross_origin(request)
        form = form_fields(request)
        if why is None and not self.csrf.valid(form.get("csrf", ""), action, message_id):
            why = "the form is stale or not from this page (reload the page and try again)"
        if why is not None:
            log.info("status page refused a {action} of {id}: {why}", action=action,
                     id=message_id, why=why)
            request.setResponseCode(403)
            request.setHeader(b"Content-Type", _HTML)
            return self.page.error_page(403, f"refused: {why}", _root_of(request.path))
        if form.get("back") == "message":
            location = "../" + message_id
        else:
            back = {k: form[k] for k in ("number", "hours") if form.get(k)}
            location = "../../" + ("?" + urlencode(back) if back else "")

        def done(result: Tuple[int, dict]) -> None:
            status, payload = result
            if status == 200:
                if _gone(request):
                    return
                request.setResponseCode(303)
                request.setHeader(b"Location", location.encode("utf-8"))
                request.setHeader(b"Content-Type", _TEXT)
                request.write(b"done\n")
                request.finish()
                return
            _send(request, status, self.page.error_page(status, payload["error"],
                                                        _root_of(request.path)))

        d = api.resend_or_cancel(self.model.store, message_id, action)
        d.addCallback(done)
        d.addErrback(self._failed, request)
        return server.NOT_DONE_YET


def _root_of(path: bytes) -> str:
    """The relative way back to "/" from `path` (the page works under a proxy prefix)."""
    depth = max(path.count(b"/") - 1, 0)
    return "../" * depth or "./"


def make_status_resource(model: StatusModel, outbox: Any, access: api.Access,
                         csrf: Optional[CSRF] = None,
                         ussd: Optional[Dict[str, Any]] = None,
                         threads: Any = None, users: Any = None,
                         configured: Any = ()) -> StatusResource:
    """The root of the status listener: page, static files, /metrics, the JSON API and,
    given `threads` (websmsd.threads), the conversations with `users` ([web])."""
    json_api = api.APIResource(outbox, model.store, access, status=model.snapshot, ussd=ussd)
    root = StatusResource(model, json_api, access, csrf)
    if threads is not None:
        from websmsd.http.conversations import ConversationsResource

        root.users = users
        import socket

        root.conversations = ConversationsResource(
            threads, outbox, users, root.csrf, model.clock, configured, socket.gethostname())
    return root
