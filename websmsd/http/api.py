"""The local JSON API: send a message, look messages up, resend or cancel one, read the
daemon's state.  Used by the `websms` command; served with the status page on
`[daemon] status_listen`.

Who may use it (`Access`, shared with the status page): loopback clients freely; any
other client with HTTP Basic credentials (status_user + status_password) or
`Authorization: Bearer <status_token>`; nobody else.  Requests that change something
(POST) must also be `Content-Type: application/json` unless they carry the token: a
page on another site can make a browser POST a form to a loopback address, but never
with that content type (it would need a CORS preflight, which is refused).
"""

from __future__ import annotations

import base64
import binascii
import hmac
import json
import re
from typing import Any, Callable, Dict, Optional, Tuple
from urllib.parse import urlsplit

from twisted.internet import defer
from twisted.logger import Logger
from twisted.web import resource, server

from websmsd.net import parse_address

log = Logger()

MAX_REQUEST = 64 * 1024
# Message ids are 20 hex digits today; accept what any future channel might use, but
# nothing that could leave a URL path segment.
MESSAGE_ID = re.compile(r"[A-Za-z0-9_.\-]{1,64}")
USSD_CODE = re.compile(r"[0-9*#+]{1,64}")


# -- who may use the status listener ----------------------------------------------------


class Refusal(Exception):
    """A request the access rule refuses: HTTP status, one-line reason, extra headers."""

    def __init__(self, status: int, reason: str, headers: Tuple[Tuple[bytes, bytes], ...] = ()):
        super().__init__(reason)
        self.status = status
        self.reason = reason
        self.headers = headers


def _host_name(host_header: bytes) -> str:
    """The host of a Host header value, without port or IPv6 brackets, lower case."""
    text = host_header.decode("latin-1").strip().lower()
    if text.startswith("["):
        return text[1:text.index("]")] if "]" in text else text[1:]
    return text.rsplit(":", 1)[0] if text.count(":") == 1 else text


class Access:
    """The status listener's rule: loopback, or Basic credentials, or the bearer token.

    A loopback client without credentials must also name the daemon by address or as
    "localhost" in its Host header: a web page whose host name its owner re-points to
    127.0.0.1 (DNS rebinding) would otherwise be same-origin with this listener and
    could read every message in a browser running on the appliance.
    """

    realm = "websmsd"

    def __init__(self, user: Optional[str] = None, password: Optional[str] = None,
                 token: Optional[str] = None):
        self.user = user or None
        self.password = password or None
        self.token = token or None

    @classmethod
    def from_settings(cls, daemon: Any) -> "Access":
        return cls(daemon.status_user, daemon.status_password, daemon.status_token)

    @property
    def basic(self) -> bool:
        return self.user is not None and self.password is not None

    def bearer(self, request: Any) -> bool:
        """True if the request carries the configured token."""
        if self.token is None:
            return False
        given = request.getHeader(b"authorization") or b""
        scheme, _, value = given.partition(b" ")
        if scheme.lower() != b"bearer":
            return False
        return hmac.compare_digest(value.strip(), self.token.encode("utf-8"))

    def _basic_ok(self, request: Any) -> bool:
        if not self.basic:
            return False
        given = request.getHeader(b"authorization") or b""
        scheme, _, value = given.partition(b" ")
        if scheme.lower() != b"basic":
            return False
        try:
            decoded = base64.b64decode(value.strip(), validate=True)
        except (binascii.Error, ValueError):
            return False
        user, sep, password = decoded.partition(b":")
        if not sep:
            return False
        # Both compared, always: how long this takes says nothing about which was wrong.
        ok_user = hmac.compare_digest(user, self.user.encode("utf-8"))
        ok_password = hmac.compare_digest(password, self.password.encode("utf-8"))
        return ok_user and ok_password

    def check(self, request: Any) -> None:
        """Raise Refusal unless the rule lets this request through."""
        if self.bearer(request) or self._basic_ok(request):
            return
        if is_local(request):
            host = request.getHeader(b"host")
            if host is None or _local_host_name(_host_name(host)):
                return
            raise Refusal(403, "the Host header names neither an address nor localhost: "
                               "open the page by address (e.g. http://127.0.0.1:8480/) or "
                               "give credentials")
        if self.basic or self.token:
            challenges = []
            if self.basic:
                challenges.append((b"WWW-Authenticate",
                                   b'Basic realm="%s", charset="UTF-8"' % self.realm.encode()))
            if self.token:
                challenges.append((b"WWW-Authenticate", b'Bearer realm="%s"' % self.realm.encode()))
            raise Refusal(401, "credentials required", tuple(challenges))
        raise Refusal(403, "the status listener serves loopback clients only (set [daemon] "
                           "status_user and status_password, or status_token, to allow others)")


def _local_host_name(name: str) -> bool:
    return (name == "localhost" or name.endswith(".localhost")
            or parse_address(name) is not None)


def is_local(request: Any) -> bool:
    """The peer is on this machine: a loopback address or a UNIX socket."""
    addr = request.getClientAddress()
    host = getattr(addr, "host", None)
    if host is None:
        return getattr(addr, "type", None) != "TCP" and hasattr(addr, "name")  # UNIX
    parsed = parse_address(host)
    return parsed is not None and parsed.is_loopback


def cross_origin(request: Any) -> Optional[str]:
    """Why this request comes from another site (Origin, else Referer), or None.

    Compared with the Host header (or X-Forwarded-Host, which a reverse proxy sets and a
    cross-site form cannot), scheme and default ports aside.
    """
    hosts = set()
    for name in (b"host", b"x-forwarded-host"):
        value = request.getHeader(name)
        if value:
            hosts.add(_strip_default_port(value.decode("latin-1").split(",")[-1].strip().lower()))
    for header in (b"origin", b"referer"):
        value = request.getHeader(header)
        if value is None:
            continue
        text = value.decode("latin-1").strip()
        if text == "null":
            return f"{header.decode().title()} is null"
        try:
            parts = urlsplit(text)
            netloc = parts.netloc.lower()
        except ValueError:
            return f"{header.decode().title()} is not a URL"
        if parts.scheme not in ("http", "https") or not netloc:
            return f"{header.decode().title()} is not an http(s) URL"
        netloc = netloc.rpartition("@")[2]
        if not hosts or _strip_default_port(netloc) not in hosts:
            return f"{header.decode().title()} is another site"
        return None
    return None


def _strip_default_port(hostport: str) -> str:
    for port in (":80", ":443"):
        if hostport.endswith(port):
            return hostport[: -len(port)]
    return hostport


# -- answers -------------------------------------------------------------------------


def message_json(m: Any) -> dict:
    return {
        "id": m.id, "direction": m.direction, "route": m.route, "source": m.source,
        "fallback": list(m.fallback), "to": m.recipient, "from": m.sender, "body": m.body,
        "status": m.status, "reason": m.reason, "attempts": m.attempts,
        "created": m.created, "updated": m.updated, "next_attempt": m.next_attempt,
        "provider_id": m.provider_id, "parts_handed_over": m.progress,
    }


def _answer(request: Any, code: int, payload: Any) -> bytes:
    request.setResponseCode(code)
    request.setHeader(b"Content-Type", b"application/json")
    request.setHeader(b"Cache-Control", b"no-store")
    request.setHeader(b"X-Content-Type-Options", b"nosniff")
    return json.dumps(payload, ensure_ascii=False).encode("utf-8") + b"\n"


def _finish(request: Any, code: int, payload: Any) -> None:
    if getattr(request, "_disconnected", False) or request.finished:
        return
    request.write(_answer(request, code, payload))
    request.finish()


def refuse(request: Any, refusal: Refusal) -> bytes:
    for name, value in refusal.headers:
        request.responseHeaders.addRawHeader(name, value)
    return _answer(request, refusal.status, {"error": refusal.reason})


def _is_json(request: Any) -> bool:
    ctype = (request.getHeader(b"content-type") or b"").split(b";")[0].strip().lower()
    return ctype == b"application/json"


def _read_body(request: Any) -> bytes:
    content = getattr(request, "content", None)
    if content is None:
        return b""
    content.seek(0)
    return content.read(MAX_REQUEST + 1)


# -- the resource ---------------------------------------------------------------------


class APIResource(resource.Resource):
    """`/api/...` (and only that).  Mounted in the status listener's root, which
    checks access first; on its own, it checks access itself."""

    isLeaf = True

    def __init__(self, outbox: Any, store: Any, access: Optional[Access] = None,
                 status: Optional[Callable[[], defer.Deferred]] = None,
                 ussd: Optional[Dict[str, Callable[[str], defer.Deferred]]] = None):
        super().__init__()
        self.outbox = outbox
        self.store = store
        self.access = access or Access()
        # status(): Deferred firing with the JSON-able state of the daemon (status page).
        self.status = status
        # ussd[interface](code): Deferred firing with the network's reply text; filled
        # by the channels that can send USSD (a GoIP SIM, a Yeastar port).
        self.ussd = ussd if ussd is not None else {}

    def render(self, request: Any) -> Any:
        try:
            self.access.check(request)
        except Refusal as r:
            return refuse(request, r)
        return self.route(request)

    def route(self, request: Any) -> Any:
        """Answer a request the access rule let through."""
        path = request.path.rstrip(b"/")
        method = request.method
        if method == b"POST":
            problem = self._post_problem(request)
            if problem is not None:
                return problem
        if path == b"/api/send":
            if method != b"POST":
                return self._not_allowed(request, b"POST")
            return self._send(request)
        if path == b"/api/ussd":
            if method != b"POST":
                return self._not_allowed(request, b"POST")
            return self._ussd(request)
        if path == b"/api/status":
            if method not in (b"GET", b"HEAD"):
                return self._not_allowed(request, b"GET, HEAD")
            return self._status(request)
        if path == b"/api/messages":
            if method not in (b"GET", b"HEAD"):
                return self._not_allowed(request, b"GET, HEAD")
            return self._list(request)
        if path.startswith(b"/api/messages/"):
            rest = path[len(b"/api/messages/"):].decode("ascii", "replace").split("/")
            if not MESSAGE_ID.fullmatch(rest[0]):
                return _answer(request, 404, {"error": "no such message"})
            if len(rest) == 1:
                if method not in (b"GET", b"HEAD"):
                    return self._not_allowed(request, b"GET, HEAD")
                return self._one(request, rest[0])
            if len(rest) == 2 and rest[1] in ("resend", "cancel"):
                if method != b"POST":
                    return self._not_allowed(request, b"POST")
                return self._act(request, rest[0], rest[1])
        return _answer(request, 404, {"error": "no such API"})

    def _not_allowed(self, request: Any, allow: bytes) -> bytes:
        request.setHeader(b"Allow", allow)
        return _answer(request, 405, {"error": "use " + allow.decode()})

    def _post_problem(self, request: Any) -> Optional[bytes]:
        if self.access.bearer(request):
            return None
        if not _is_json(request):
            return _answer(request, 415, {
                "error": "the API takes Content-Type: application/json (or the bearer token)"})
        why = cross_origin(request)
        if why:
            return _answer(request, 403, {"error": f"cross-site request refused: {why}"})
        return None

    def _json_fields(self, request: Any) -> dict:
        raw = _read_body(request)
        if len(raw) > MAX_REQUEST:
            raise _TooLarge()
        if not raw.strip():
            return {}
        if _is_json(request):
            fields = json.loads(raw.decode("utf-8"))
            if not isinstance(fields, dict):
                raise ValueError("a JSON object is expected")
            return fields
        from urllib.parse import parse_qs

        return {k: v[-1] for k, v in parse_qs(raw.decode("utf-8"),
                                              keep_blank_values=True).items()}

    def _send(self, request: Any) -> Any:
        try:
            fields = self._json_fields(request)
            to, sender, body = str(fields["to"]), str(fields["from"]), str(fields["body"])
            # "interface" (WEBSMS_INDEX by its meaning), or "index" as the command has it.
            index = str(fields.get("interface") or fields.get("index") or "")
            wait = fields.get("wait")
            wait = None if wait in (None, "") else min(max(float(wait), 0.0), 120.0)
        except _TooLarge:
            return _answer(request, 413, {"error": "request too large"})
        except KeyError as e:
            return _answer(request, 400, {"error": f"missing field {e.args[0]}"})
        except (ValueError, TypeError, UnicodeDecodeError) as e:
            return _answer(request, 400, {"error": f"bad request: {e}"})
        d = self.outbox.submit(to, sender, body, index, channel="api", wait=wait)
        d.addCallback(lambda r: _finish(request, 200, {
            "status": r.status, "id": r.message_id, "reason": r.reason}))
        d.addErrback(self._failed, request)
        return server.NOT_DONE_YET

    def _ussd(self, request: Any) -> Any:
        try:
            fields = self._json_fields(request)
            interface, code = str(fields["interface"]), str(fields["code"])
        except _TooLarge:
            return _answer(request, 413, {"error": "request too large"})
        except KeyError as e:
            return _answer(request, 400, {"error": f"missing field {e.args[0]}"})
        except (ValueError, TypeError, UnicodeDecodeError) as e:
            return _answer(request, 400, {"error": f"bad request: {e}"})
        if not USSD_CODE.fullmatch(code):
            return _answer(request, 400, {"error": "a USSD code is digits, * and # (e.g. *100#)"})
        send = self.ussd.get(interface)
        if send is None:
            known = ", ".join(sorted(self.ussd)) or "none"
            return _answer(request, 404, {"error": f"no interface {interface!r} sends USSD"
                                                   f" (those that do: {known})"})
        log.info("USSD {code} through {interface}", code=code, interface=interface)
        d = defer.maybeDeferred(send, code)
        d.addCallback(lambda reply: _finish(request, 200, {
            "interface": interface, "code": code, "reply": reply}))

        def failed(failure: Any) -> None:
            reason = str(failure.value) or type(failure.value).__name__
            log.warn("USSD {code} through {interface} failed: {reason}", code=code,
                     interface=interface, reason=reason)
            _finish(request, 502, {"interface": interface, "code": code, "error": reason})

        d.addErrback(failed)
        return server.NOT_DONE_YET

    def _failed(self, failure: Any, request: Any) -> None:
        log.failure("local API request failed", failure)
        _finish(request, 503, {"error": "the store could not answer"})

    def _status(self, request: Any) -> Any:
        if self.status is None:
            return _answer(request, 404, {"error": "no status here"})
        d = defer.maybeDeferred(self.status)
        d.addCallback(lambda s: _finish(request, 200, s))
        d.addErrback(self._failed, request)
        return server.NOT_DONE_YET

    def _list(self, request: Any) -> Any:
        args = request.args
        number = (args.get(b"number") or [b""])[0].decode("utf-8", "replace").strip() or None
        try:
            limit = int((args.get(b"limit") or [b"100"])[0])
            since = float((args.get(b"since") or [b"0"])[0])
        except ValueError:
            return _answer(request, 400, {"error": "limit and since must be numbers"})
        limit = min(max(limit, 1), 1000)
        d = self.store.reader.recent(since, limit, number)
        d.addCallback(lambda ms: _finish(request, 200, {
            "messages": [message_json(m) for m in ms]}))
        d.addErrback(self._failed, request)
        return server.NOT_DONE_YET

    def _one(self, request: Any, message_id: str) -> Any:
        reader = self.store.reader

        async def look() -> None:
            m = await reader.get(message_id)
            if m is None:
                _finish(request, 404, {"error": "no such message"})
                return
            tries, reports = await defer.gatherResults(
                [reader.attempts(message_id), reader.reports([message_id])],
                consumeErrors=True)
            reports = reports.get(message_id, [])
            payload = message_json(m)
            payload["attempt_log"] = [
                {"at": at, "ok": bool(ok), "detail": detail} for at, ok, detail in tries
            ]
            payload["reports"] = [
                {"at": at, "status": status, "detail": detail} for at, status, detail in reports
            ]
            _finish(request, 200, payload)

        defer.ensureDeferred(look()).addErrback(first_error).addErrback(self._failed, request)
        return server.NOT_DONE_YET

    def _act(self, request: Any, message_id: str, action: str) -> Any:
        d = resend_or_cancel(self.store, message_id, action)
        d.addCallback(lambda r: _finish(request, r[0], r[1]))
        d.addErrback(self._failed, request)
        return server.NOT_DONE_YET


class _TooLarge(Exception):
    """A request body over the API's limit."""


def first_error(failure: Any) -> Any:
    """gatherResults wraps errors in FirstError: hand on the one that happened."""
    if failure.check(defer.FirstError):
        return failure.value.subFailure
    return failure


def resend_or_cancel(store: Any, message_id: str, action: str) -> defer.Deferred:
    """Resend or cancel a message: fires with (HTTP status, JSON payload).

    Shared by the API and the status page's buttons.  Only a failed or cancelled message
    can be resent (it is queued again with its attempts reset), only a queued one
    cancelled; anything else is a 409 that says why.
    """
    return defer.ensureDeferred(_resend_or_cancel(store, message_id, action))


async def _resend_or_cancel(store: Any, message_id: str, action: str) -> Tuple[int, dict]:
    m = await store.get(message_id)
    if m is None:
        return 404, {"error": "no such message", "id": message_id}
    if action == "resend":
        done = await store.requeue(message_id)
        if done:
            log.info("message {id} requeued by the owner", id=message_id)
            return 200, {"id": message_id, "status": "queued"}
        return 409, {"id": message_id, "status": m.status,
                     "error": f"the message is {m.status}: only failed or cancelled "
                              "messages can be resent"}
    done = await store.cancel(message_id)
    if done:
        log.info("message {id} cancelled by the owner", id=message_id)
        return 200, {"id": message_id, "status": "cancelled"}
    return 409, {"id": message_id, "status": m.status,
                 "error": f"the message is {m.status}: only queued messages can be cancelled"}
