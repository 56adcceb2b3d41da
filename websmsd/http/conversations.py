"""Conversations in the browser: read and answer the SMS of an own number.

Served on the status listener, beside the status page:

    GET  /conversations                      the viewer's own numbers; a new SMS
    GET  /conversations/<own>                its conversations, newest first
    GET  /conversations/<own>/<peer>         one conversation, with a reply box
    POST /conversations[/<own>[/<peer>]]/send   send (form + CSRF token)
    GET  .../updates?v=N                     the live part of a page, when it changed
    GET  /conversations/search?q=            by number or text (websmsd.threads' index)
    GET|POST /login, POST /logout            users of [web] (websmsd.http.users)

<own> and <peer> are number keys (websmsd.numbers.number_key).  The owner (loopback,
Basic, token: api.Access) sees every number; a [web] user only theirs: any other number
is "no such number" (404), whether or not it has SMS, and a send from it is refused
before anything is stored.  Sending goes through the outbox like an SMS a phone writes:
the routing picks the interface that owns the sending number.
"""

from __future__ import annotations

import json
import re
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple
from urllib.parse import parse_qs, quote, unquote

from twisted.internet import defer
from twisted.logger import Logger
from twisted.web import server

from websmsd.http import api
from websmsd.http.convpages import ConversationPages, action_key, query_string, segment
from websmsd.http.pages import CSRF, Safe
from websmsd.numbers import number_key

log = Logger()

_HTML = b"text/html; charset=utf-8"
_TEXT = b"text/plain; charset=utf-8"
_JSON = b"application/json"

# A number key in a path: digits, or a text sender's name (lower case); percent-encoded.
_KEY = re.compile(r"[^\x00-\x1f\x7f/]{1,64}")
_TO = re.compile(r"\+?[0-9][0-9 ()./-]{2,31}")
# Where a sign-in may lead: a conversation page, by a relative path without dot segments.
_NEXT = re.compile(r"conversations(/[A-Za-z0-9%+._@-]{1,64}){0,2}")


def _safe_next(path: str) -> bool:
    """A conversation page, without "." or ".." segments (also percent-encoded: a
    browser resolves %2e%2e as ..), so that a link cannot lead off the site."""
    return bool(_NEXT.fullmatch(path)) and all(
        unquote(seg) not in (".", "..") for seg in path.split("/"))
MAX_TEXT = 1600  # characters: ten UCS-2 SMS parts and more; the outbox has its own cap
THREAD_LIMIT = 200
LIST_LIMIT = 100


def _gone(request: Any) -> bool:
    return bool(getattr(request, "_disconnected", False)) or bool(request.finished)


def _send(request: Any, status: int, body: bytes, ctype: bytes = _HTML,
          headers: Sequence[Tuple[bytes, bytes]] = ()) -> None:
    if _gone(request):
        return
    request.setResponseCode(status)
    request.setHeader(b"Content-Type", ctype)
    request.setHeader(b"Content-Length", b"%d" % len(body))
    for name, value in headers:
        request.responseHeaders.addRawHeader(name, value)
    if request.method != b"HEAD":
        request.write(body)
    request.finish()


def _arg(request: Any, name: bytes, limit: int = 64) -> str:
    values = request.args.get(name) or [b""]
    return values[0].decode("utf-8", "replace").strip()[:limit]


def root_of(path: bytes) -> str:
    """The relative way back to "/" from `path` (the pages work under a proxy prefix)."""
    depth = max(path.count(b"/") - 1, 0)
    return "../" * depth or "./"


def _secure(request: Any) -> bool:
    if request.isSecure():
        return True
    proto = (request.getHeader(b"x-forwarded-proto") or b"").split(b",")[0].strip().lower()
    return proto == b"https"


def _source(request: Any) -> str:
    return str(getattr(request.getClientAddress(), "host", "?"))


class ConversationsResource:
    """The conversation pages (see the module docstring); StatusResource hands it the
    requests for its paths with the viewer the access rule found (or None)."""

    def __init__(self, threads: Any, outbox: Any, users: Any, csrf: CSRF,
                 clock: Callable[[], float], configured: Sequence[str] = (),
                 host: str = ""):
        self.threads = threads
        self.store = threads.store
        self.outbox = outbox
        self.users = users
        self.csrf = csrf
        self.clock = clock
        self.host = host
        self.pages = ConversationPages(csrf)
        # Own numbers written in websms.conf ([websms]/[goip]... number, [phones], [web]):
        # offered for a new SMS before any SMS used them, and the form a reply is sent
        # from (routing knows a number as configured).
        self.configured: Dict[str, str] = {}
        for number in configured:
            self.configured.setdefault(number_key(number), number)
        # The read marks written, so that a page polled every few seconds writes one
        # only when there is something newer to mark.
        self._marked: Dict[Tuple[str, str, str], float] = {}

    @staticmethod
    def handles(path: bytes) -> bool:
        return (path in (b"/login", b"/logout", b"/conversations")
                or path.startswith(b"/conversations/"))

    # -- dispatch

    def render(self, request: Any, viewer: Any, refusal: Optional[api.Refusal]) -> Any:
        path, method = request.path, request.method
        if path == b"/login":
            if method in (b"GET", b"HEAD"):
                return self._login_page(request, "", _arg(request, b"next", 300))
            if method == b"POST":
                return self._login(request)
            return self._not_allowed(request, b"GET, HEAD, POST")
        if path == b"/logout":
            if method != b"POST":
                return self._not_allowed(request, b"POST")
            return self._logout(request)
        if viewer is None:
            return self._unknown(request, refusal)
        parts = [unquote(p.decode("utf-8", "replace"))
                 for p in path.split(b"/")[2:]] if path != b"/conversations" else []
        if parts and parts[-1] == "":
            parts = parts[:-1]
        action = None
        if parts and parts[-1] in ("send", "updates"):
            action = parts.pop()
        if parts == ["search"] and action is None:
            return self._get_only(request) or self._search(request, viewer)
        if len(parts) > 2 or not all(_KEY.fullmatch(p) for p in parts):
            return self._html(request, 404, "no such page", viewer)
        keys = [number_key(p) for p in parts]
        if keys and not viewer.may(keys[0]):
            log.info("conversations: {viewer} asked for a number not theirs", viewer=viewer.name)
            return self._html(request, 404, "no such number", viewer)
        if action == "send":
            if method != b"POST":
                return self._not_allowed(request, b"POST")
            return self._send_sms(request, viewer, keys)
        problem = self._get_only(request)
        if problem is not None:
            return problem
        if action == "updates":
            return self._updates(request, viewer, keys)
        return self._page(request, viewer, keys, error="", body="", to="")

    def _get_only(self, request: Any) -> Optional[bytes]:
        if request.method in (b"GET", b"HEAD"):
            return None
        return self._not_allowed(request, b"GET, HEAD")

    # -- answers

    def _not_allowed(self, request: Any, allow: bytes) -> bytes:
        request.setResponseCode(405)
        request.setHeader(b"Allow", allow)
        request.setHeader(b"Content-Type", _TEXT)
        return b"use " + allow + b"\n"

    def _html(self, request: Any, status: int, reason: str, viewer: Any) -> bytes:
        request.setResponseCode(status)
        request.setHeader(b"Content-Type", _HTML)
        root = root_of(request.path)
        content = self.pages.error(reason, root)
        return self.pages.layout(f"SMS \u2013 {status}", root, viewer, content, self.clock(),
                                 self.host)

    def _failed(self, failure: Any, request: Any, viewer: Any) -> None:
        log.failure("conversation page failed", failure)
        if _gone(request):
            return
        body = self._html(request, 503, "the store could not answer; try again", viewer)
        _send(request, 503, body)

    def _unknown(self, request: Any, refusal: Optional[api.Refusal]) -> bytes:
        """No owner access and no session: sign in (when there are users), else the
        access rule's own refusal."""
        if self.users is not None and self.users.enabled:
            if request.method in (b"GET", b"HEAD") and not request.path.endswith(b"/updates"):
                target = request.path.decode("utf-8", "replace").lstrip("/")
                request.setResponseCode(303)
                request.setHeader(b"Location", (root_of(request.path) + "login?" + query_string(
                    next=target)).encode("utf-8"))
                request.setHeader(b"Content-Type", _TEXT)
                return b"sign in first\n"
            request.setResponseCode(401)
            request.setHeader(b"Content-Type", _TEXT)
            return b"signed out: sign in again\n"
        status = refusal.status if refusal is not None else 403
        reason = refusal.reason if refusal is not None else "refused"
        for name, value in (refusal.headers if refusal is not None else ()):
            request.responseHeaders.addRawHeader(name, value)
        request.setResponseCode(status)
        request.setHeader(b"Content-Type", _TEXT)
        return (reason + "\n").encode("utf-8")

    # -- signing in and out

    def _login_page(self, request: Any, error: str, next_path: str, name: str = "",
                    status: int = 200) -> bytes:
        if self.users is None or not self.users.enabled:
            request.setResponseCode(404)
            request.setHeader(b"Content-Type", _TEXT)
            return b"no users: [web] in websms.conf names none\n"
        if not _safe_next(next_path):
            next_path = "conversations"
        request.setResponseCode(status)
        request.setHeader(b"Content-Type", _HTML)
        return self.pages.login(root_of(request.path), name, error, next_path)

    def _login(self, request: Any) -> Any:
        form = form_fields(request)
        name = form.get("user", "")[:64]
        next_path = form.get("next", "")[:300]
        why = api.cross_origin(request)
        if why is None and not self.csrf.valid(form.get("csrf", ""), "login", ""):
            why = "the form is stale (reload the page and try again)"
        if why is not None:
            return self._login_page(request, f"refused: {why}", next_path, name, 403)
        if self.users is None or not self.users.enabled:
            return self._login_page(request, "", next_path)
        d = self.users.login(name, form.get("password", ""), _source(request))

        def done(cookie: Optional[str]) -> None:
            if cookie is None:
                body = self._login_page(request, "wrong user name or password", next_path,
                                        name, 403)
                _send(request, 403, body)
                return
            target = next_path if _safe_next(next_path) else "conversations"
            log.info("conversations: {user} signed in from {source}", user=name,
                     source=_source(request))
            _send(request, 303, b"signed in\n", _TEXT, [
                (b"Location", (root_of(request.path) + target).encode("utf-8")),
                (b"Set-Cookie", self.users.cookie_header(cookie, _secure(request)))])

        d.addCallback(done)
        d.addErrback(self._failed, request, None)
        return server.NOT_DONE_YET

    def _logout(self, request: Any) -> Any:
        form = form_fields(request)
        why = api.cross_origin(request)
        if why is None and not self.csrf.valid(form.get("csrf", ""), "logout", ""):
            why = "the form is stale (reload the page and try again)"
        if why is not None:
            request.setResponseCode(403)
            request.setHeader(b"Content-Type", _TEXT)
            return f"refused: {why}\n".encode("utf-8")
        ended = self.users.logout(request) if self.users is not None else None
        headers = [(b"Location", (root_of(request.path) + "login").encode("utf-8"))]
        if self.users is not None:
            headers.append((b"Set-Cookie", self.users.clear_cookie_header(_secure(request))))
        if ended is None:
            _send(request, 303, b"signed out\n", _TEXT, headers)
            return server.NOT_DONE_YET
        d = self.users.remember_logout(self.store, ended)
        d.addCallback(lambda _: _send(request, 303, b"signed out\n", _TEXT, headers))
        d.addErrback(self._failed, request, None)
        return server.NOT_DONE_YET

    # -- pages

    def _owns(self, viewer: Any) -> Optional[List[str]]:
        return None if viewer.numbers is None else sorted(viewer.numbers)

    async def _offered(self, viewer: Any, known: Sequence[Any]) -> List[Tuple[str, str]]:
        """(key, number) of every own number the viewer may send from: configured ones
        first, then those that SMS used."""
        seen: Dict[str, str] = {}
        for key, number in self.configured.items():
            if viewer.may(key):
                seen.setdefault(key, number)
        for o in known:
            if viewer.may(o.own_key) and _TO.fullmatch(o.own):
                seen.setdefault(o.own_key, o.own)
        if viewer.numbers is not None:
            for key in sorted(viewer.numbers):
                if key.isdigit():
                    seen.setdefault(key, "+" + key)
        return list(seen.items())

    def sender_for(self, own_key: str, shown: str) -> str:
        """The number a web SMS is sent from: as configured, else as SMS wrote it."""
        return self.configured.get(own_key, shown)

    def _page(self, request: Any, viewer: Any, keys: List[str], error: str, body: str,
              to: str, status: int = 200) -> Any:
        # Links are relative to the URL the browser shows: a .../send answered with the
        # page (a refused SMS) has one level more than the page.
        root = root_of(request.path)

        async def build() -> None:
            now = self.clock()
            # The version the page shows: its script asks for what changed after it.
            v = self.store.commits
            if not keys:
                owns = await self.threads.own_numbers(viewer.name, self._owns(viewer))
                offered = await self._offered(viewer, owns)
                content = self.pages.home(viewer, owns, now, root,
                                          self._new_box(root, offered, None, error, body, to), v)
                title = "SMS"
            elif len(keys) == 1:
                own_key = keys[0]
                before = _float(_arg(request, b"before"))
                convs = await self.threads.conversations(viewer.name, own_key, LIST_LIMIT,
                                                         before)
                own = self._shown_own(own_key, convs)
                more = (query_string(before=repr(convs[-1].last.message.created))
                        if len(convs) >= LIST_LIMIT else None)
                content = self.pages.number(own, own_key, convs, now, root, self._new_box(
                    root, [(own_key, self.sender_for(own_key, own))], own_key, error, body,
                    to), more, v, live=before is None)
                title = f"SMS \u2013 {own}"
            else:
                own_key, peer_key = keys
                before = _float(_arg(request, b"before"))
                entries = await self.threads.thread(own_key, peer_key, THREAD_LIMIT, before)
                own, peer = self._shown_pair(own_key, peer_key, entries)
                older = (query_string(before=repr(entries[0].message.created))
                         if len(entries) >= THREAD_LIMIT else None)
                await self._mark(viewer, own_key, peer_key, entries)
                action = f"{root}conversations/{segment(own_key)}/{segment(peer_key)}/send"
                reply = self.pages.reply_box(action, {}, None, body, error,
                                             self._cannot_send(peer, own), f"Reply to {peer}")
                content = self.pages.thread(own, own_key, peer, peer_key, entries, now, root,
                                            viewer.owner, reply, older, v,
                                            live=before is None)
                title = f"SMS \u2013 {peer}"
            _send(request, status, self.pages.layout(title, root, viewer, content, now,
                                                     self.host))

        defer.ensureDeferred(build()).addErrback(self._failed, request, viewer)
        return server.NOT_DONE_YET

    def _new_box(self, root: str, offered: List[Tuple[str, str]], own_key: Optional[str],
                 error: str, body: str, to: str) -> Safe:
        from websmsd.http.pages import fill, join

        if not offered:
            return self.pages.reply_box("", {}, None, "", "", "No own number to send from:"
                                        " none is configured for you.", "")
        if own_key is not None:
            action = f"{root}conversations/{segment(own_key)}/send"
            return self.pages.reply_box(action, {}, to, body, error, None, "Text")
        options = join(fill('<option value="$key">$number</option>', key=key, number=number)
                       for key, number in offered)
        select = fill('<label class="from">From <select name="own">$options</select></label>',
                      options=options)
        box = self.pages.reply_box(f"{root}conversations/send", {}, to, body, error, None,
                                   "Text")
        # The sending number's choice goes first in the form.
        return Safe(box.replace('<input type="hidden" name="csrf"', select +
                                '<input type="hidden" name="csrf"', 1))

    @staticmethod
    def _cannot_send(peer: str, own: str) -> Optional[str]:
        if not _TO.fullmatch(own.strip()):
            return (f"{own} has no number in websms.conf (number [name] = ... in its "
                    "section): SMS cannot be sent from it here.")
        if not _TO.fullmatch(peer.strip()):
            return f"{peer} is a sender name, not a number: SMS cannot be sent to it."
        return None

    def _shown_own(self, own_key: str, convs: Sequence[Any]) -> str:
        if own_key in self.configured:
            return self.configured[own_key]
        return convs[0].own if convs else own_key

    def _shown_pair(self, own_key: str, peer_key: str, entries: Sequence[Any]) -> Tuple[str, str]:
        if entries:
            last = entries[-1]
            return self.configured.get(own_key, last.own), last.peer
        own = self.configured.get(own_key, ("+" + own_key) if own_key.isdigit() else own_key)
        return own, ("+" + peer_key) if peer_key.isdigit() else peer_key

    async def _mark(self, viewer: Any, own_key: str, peer_key: str, entries: Sequence[Any]) -> None:
        newest = max((e.message.created for e in entries if e.message.direction == "in"),
                     default=0.0)
        marker = (viewer.name, own_key, peer_key)
        if newest and newest > self._marked.get(marker, 0.0):
            await self.threads.mark_read(viewer.name, own_key, peer_key, newest)
            self._marked[marker] = newest

    # -- live updates

    def _updates(self, request: Any, viewer: Any, keys: List[str]) -> Any:
        """The live part of a page as {"v": version, "html": ...}; 204 when nothing was
        committed since version `v` (no read at all: browsers poll this)."""
        version = self.store.commits
        if _arg(request, b"v") == str(version):
            request.setResponseCode(204)
            return b""
        root = root_of(request.path[: -len(b"/updates")])

        async def build() -> None:
            now = self.clock()
            if not keys:
                owns = await self.threads.own_numbers(viewer.name, self._owns(viewer))
                html = self.pages.own_numbers(owns, now, root)
            elif len(keys) == 1:
                convs = await self.threads.conversations(viewer.name, keys[0], LIST_LIMIT)
                html = self.pages.conversation_rows(convs, now, root)
            else:
                entries = await self.threads.thread(keys[0], keys[1], THREAD_LIMIT)
                await self._mark(viewer, keys[0], keys[1], entries)
                html = self.pages.entry_rows(entries, now, root, viewer.owner)
            payload = json.dumps({"v": version, "html": html}, ensure_ascii=False)
            _send(request, 200, payload.encode("utf-8"), _JSON)

        defer.ensureDeferred(build()).addErrback(self._failed, request, viewer)
        return server.NOT_DONE_YET

    # -- search

    def _search(self, request: Any, viewer: Any) -> Any:
        query = _arg(request, b"q", 64)
        root = root_of(request.path)

        async def build() -> None:
            now = self.clock()
            entries: List[Any] = []
            if not query:
                note = "search by a number or a text (3 characters or more)"
            else:
                entries = await self.threads.search(viewer.name, query, self._owns(viewer), 50)
                note = (f"{len(entries)} SMS found, newest first" if len(entries) < 50
                        else "the newest 50 SMS found")
                if getattr(entries, "note", None):
                    note = f"{note}: {entries.note}"
            content = self.pages.search(query, entries, now, root, note)
            _send(request, 200, self.pages.layout("SMS \u2013 search", root, viewer, content,
                                                  now, self.host))

        defer.ensureDeferred(build()).addErrback(self._failed, request, viewer)
        return server.NOT_DONE_YET

    # -- sending

    def _send_sms(self, request: Any, viewer: Any, keys: List[str]) -> Any:
        form = form_fields(request)
        body = form.get("body", "").replace("\r\n", "\n")
        to = form.get("to", "").strip()
        page_keys = list(keys)
        why = api.cross_origin(request)
        action = request.path.decode("utf-8", "replace").lstrip("/")
        if why is None and not self.csrf.valid(form.get("csrf", ""), "send", action_key(action)):
            why = "the form is stale or not from this page (reload the page and try again)"
        if why is not None:
            log.info("conversations: refused a send by {viewer}: {why}", viewer=viewer.name,
                     why=why)
            return self._html(request, 403, f"refused: {why}", viewer)
        if not keys:
            own_key = number_key(form.get("own", ""))
            if not own_key or not viewer.may(own_key):
                return self._html(request, 404, "no such number", viewer)
            keys = [own_key]
        own_key = keys[0]
        error = ""
        if len(keys) == 2:
            peer_key = keys[1]
            to = ""
        elif not _TO.fullmatch(to):
            error = "give the number to send to, e.g. +12025550100"
            peer_key = ""
        else:
            # As people write it, "+1 (415) 555-0199"; sent without the punctuation.
            to = re.sub(r"[ ()./-]", "", to)
            peer_key = number_key(to)
        if not error and not body.strip():
            error = "the text is empty"
        if not error and len(body) > MAX_TEXT:
            error = f"the text is longer than {MAX_TEXT} characters"
        if error:
            return self._page(request, viewer, page_keys, error, body, to, 400)

        async def go() -> None:
            own_shown, peer_shown = await self._pair_for_sending(own_key, peer_key, to)
            sender = self.sender_for(own_key, own_shown)
            result = await self.outbox.submit(peer_shown, sender, body, None,
                                              channel=f"web:{viewer.name}", wait=0)
            if result.message_id is None:
                log.info("conversations: {viewer}'s SMS from {own} was not taken: {why}",
                         viewer=viewer.name, own=sender, why=result.reason)
                self._page(request, viewer, page_keys, f"not sent: {result.reason}", body,
                           to, 409)
                return
            log.info("conversations: {viewer} sent SMS {id} from {own}", viewer=viewer.name,
                     id=result.message_id, own=sender)
            location = (f"{root_of(request.path)}conversations/{segment(own_key)}/"
                        f"{segment(peer_key)}#m-{result.message_id}")
            _send(request, 303, b"sent\n", _TEXT, [(b"Location", location.encode("utf-8"))])

        defer.ensureDeferred(go()).addErrback(self._failed, request, viewer)
        return server.NOT_DONE_YET

    async def _pair_for_sending(self, own_key: str, peer_key: str, to: str) -> Tuple[str, str]:
        """The own number and the other party as the conversation wrote them (a reply
        goes to the number as the SMS came from it), or as typed for a new one."""
        if to:
            entries = await self.threads.thread(own_key, peer_key, 1)
            if entries:
                return entries[-1].own, to
            return self.configured.get(own_key, _plus(own_key)), to
        entries = await self.threads.thread(own_key, peer_key, 1)
        if entries:
            return entries[-1].own, entries[-1].peer
        return self.configured.get(own_key, _plus(own_key)), _plus(peer_key)


def _plus(key: str) -> str:
    return "+" + key if key.isdigit() else key


def _float(text: str) -> Optional[float]:
    try:
        value = float(text)
    except ValueError:
        return None
    return value if value == value and 0 < value < 1e11 else None


def form_fields(request: Any) -> Dict[str, str]:
    """The fields of a form POST (the status listener leaves bodies unparsed)."""
    ctype = (request.getHeader(b"content-type") or b"").split(b";")[0].strip().lower()
    if ctype != b"application/x-www-form-urlencoded":
        return {}
    content = getattr(request, "content", None)
    if content is None:
        return {}
    content.seek(0)
    raw = content.read(api.MAX_REQUEST + 1)
    if len(raw) > api.MAX_REQUEST:
        return {}
    try:
        parsed = parse_qs(raw.decode("utf-8"), keep_blank_values=True)
    except UnicodeDecodeError:
        return {}
    return {k: v[-1] for k, v in parsed.items()}


__all__ = ["ConversationsResource", "form_fields", "root_of", "quote"]
