"""The local JSON API: send a message, look messages up.  Used by the `websms` command.

It listens on loopback by default.  Whatever the listener, a request that can change
or reveal data is served only to a loopback client, or to one presenting the
configured token (`Authorization: Bearer <token>`).
"""

from __future__ import annotations

import hmac
import json
from typing import Any, Optional
from urllib.parse import parse_qs

from twisted.internet import defer
from twisted.logger import Logger
from twisted.web import resource, server

from websmsd.settings import parse_address

log = Logger()

MAX_REQUEST = 64 * 1024


def message_json(m: Any) -> dict:
    return {
        "id": m.id, "direction": m.direction, "interface": m.interface,
        "channel": m.channel, "to": m.recipient, "from": m.sender, "body": m.body,
        "status": m.status, "reason": m.reason, "attempts": m.attempts,
        "created": m.created, "updated": m.updated, "next_attempt": m.next_attempt,
        "provider_id": m.provider_id, "parts_handed_over": m.progress,
    }


def _answer(request: Any, code: int, payload: Any) -> bytes:
    request.setResponseCode(code)
    request.setHeader(b"Content-Type", b"application/json")
    request.setHeader(b"Cache-Control", b"no-store")
    return json.dumps(payload, ensure_ascii=False).encode("utf-8") + b"\n"


def _finish(request: Any, code: int, payload: Any) -> None:
    if getattr(request, "_disconnected", False) or request.finished:
        return
    request.write(_answer(request, code, payload))
    request.finish()


class APIResource(resource.Resource):
    isLeaf = True

    def __init__(self, outbox: Any, store: Any, token: Optional[str] = None):
        super().__init__()
        self.outbox = outbox
        self.store = store
        self.token = token

    def _allowed(self, request: Any) -> bool:
        addr = parse_address(request.getClientAddress().host
                             if hasattr(request, "getClientAddress")
                             else request.getClientIP() or "")
        if addr is not None and addr.is_loopback:
            return True
        if self.token:
            given = request.getHeader(b"authorization") or b""
            return hmac.compare_digest(given, b"Bearer " + self.token.encode())
        return False

    def render(self, request: Any) -> Any:
        if not self._allowed(request):
            return _answer(request, 403, {"error": "the local API serves loopback clients"
                                                   " or the configured token only"})
        path = request.path.rstrip(b"/")
        method = request.method
        if path == b"/api/send":
            if method != b"POST":
                request.setHeader(b"Allow", b"POST")
                return _answer(request, 405, {"error": "use POST"})
            return self._send(request)
        if path == b"/api/messages" and method in (b"GET", b"HEAD"):
            return self._list(request)
        if path.startswith(b"/api/messages/") and method in (b"GET", b"HEAD"):
            return self._one(request, path[len(b"/api/messages/"):].decode("ascii", "replace"))
        return _answer(request, 404, {"error": "no such API"})

    def _send(self, request: Any) -> Any:
        raw = request.content.read(MAX_REQUEST + 1)
        if len(raw) > MAX_REQUEST:
            return _answer(request, 413, {"error": "request too large"})
        ctype = (request.getHeader(b"content-type") or b"").split(b";")[0].strip()
        try:
            if ctype == b"application/json":
                fields = json.loads(raw.decode("utf-8"))
                if not isinstance(fields, dict):
                    raise ValueError("a JSON object is expected")
            else:
                fields = {k: v[-1] for k, v in parse_qs(raw.decode("utf-8"),
                                                        keep_blank_values=True).items()}
            to, sender, body = str(fields["to"]), str(fields["from"]), str(fields["body"])
            index = str(fields.get("index") or "")
            wait = fields.get("wait")
            wait = None if wait in (None, "") else min(max(float(wait), 0.0), 120.0)
        except KeyError as e:
            return _answer(request, 400, {"error": f"missing field {e.args[0]}"})
        except (ValueError, UnicodeDecodeError) as e:
            return _answer(request, 400, {"error": f"bad request: {e}"})
        d = self.outbox.submit(to, sender, body, index, channel="api", wait=wait)
        d.addCallback(lambda r: _finish(request, 200, {
            "status": r.status, "id": r.message_id, "reason": r.reason}))
        d.addErrback(self._failed, request)
        return server.NOT_DONE_YET

    def _failed(self, failure: Any, request: Any) -> None:
        log.failure("local API request failed", failure)
        _finish(request, 503, {"error": "the store could not take the message"})

    def _list(self, request: Any) -> Any:
        args = request.args
        number = (args.get(b"number") or [b""])[0].decode("utf-8", "replace") or None
        try:
            limit = min(int((args.get(b"limit") or [b"100"])[0]), 1000)
        except ValueError:
            return _answer(request, 400, {"error": "limit must be a number"})
        d = self.store.recent(0.0, limit, number)
        d.addCallback(lambda ms: _finish(request, 200, {
            "messages": [message_json(m) for m in ms]}))
        d.addErrback(self._failed, request)
        return server.NOT_DONE_YET

    def _one(self, request: Any, message_id: str) -> Any:
        @defer.inlineCallbacks
        def look() -> Any:
            m = yield self.store.get(message_id)
            if m is None:
                _finish(request, 404, {"error": "no such message"})
                return
            tries = yield self.store.attempts(message_id)
            payload = message_json(m)
            payload["attempt_log"] = [
                {"at": at, "ok": bool(ok), "detail": detail} for at, ok, detail in tries
            ]
            _finish(request, 200, payload)

        look().addErrback(self._failed, request)
        return server.NOT_DONE_YET
