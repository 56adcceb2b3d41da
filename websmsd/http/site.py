"""What every HTTP resource of the daemon shares, whichever server serves it.

`WebhookRoot` is the webhook listener's root: channels mount their resources at exact
paths (the Android apps' URLs); everything else goes to the ITSP webhook, as the PHP
websmsd.php served every path.  The helpers answer a request (`answer`, `finish`), read
its body, count a refusal and build the one answer given before any resource saw the
request (`early_answer`).

This module does not import twisted.web.server (2 MB of a Pi's memory, with
twisted.spread): the webhook listener's own server (websmsd.http.leanhttp) does not need
it, and the status page's twisted.web Site (websmsd.http.twsite) is built when its first
connection comes.
"""

from __future__ import annotations

from typing import Any

from twisted.logger import Logger
# twisted.web.http re-exports RESPONSES from here; importing that module would cost
# 0.7 MB for one table.
from twisted.web._responses import RESPONSES
from twisted.web.resource import Resource

from websmsd.text import shorten

log = Logger()

TEXT = b"text/plain; charset=utf-8"
TOO_LARGE = "too_large"
# A resource's render() returns it when it answers later: twisted.web.server's own
# constant (the int 1, compared with `is`), named here without importing that module.
NOT_DONE_YET = 1
# A request body's limit unless the listener or the resource gives one.
MAX_BODY = 1024 * 1024

# What the webhook listener counts (websmsd.metrics): refused requests by kind, events
# acknowledged but not taken by reason, delivery reports by our status.
REFUSALS = "webhook_refusals"
IGNORED_EVENTS = "webhook_ignored"
REPORTS = "delivery_reports"


def record_refusal(metrics: Any, now: float, kind: str, status: int, source: str, path: str,
                   reason: str) -> None:
    """Count, remember and log one refused request (never its body or secrets)."""
    path = shorten(path)
    metrics.count(REFUSALS, kind)
    metrics.note(REFUSALS, {"time": now, "kind": kind, "status": status, "source": source,
                            "path": path, "reason": reason})
    log.warn("webhook refused ({status}) a request from {source} for {path}: {reason}",
             kind=kind, status=status, source=source, path=path, reason=reason)


def early_answer(status: int, reason: str) -> bytes:
    """The whole answer to a request refused before any resource saw it (an oversize
    body, a framing error): the reason as text, and the connection closes."""
    body = (reason + "\n").encode("utf-8")
    return (b"HTTP/1.1 %d %s\r\nContent-Type: %s\r\nContent-Length: %d\r\n"
            b"X-Content-Type-Options: nosniff\r\nConnection: close\r\n\r\n%s"
            % (status, RESPONSES.get(status, b"Error"), TEXT, len(body), body))


def body_of(request) -> bytes:
    content = getattr(request, "content", None)
    if content is None:
        return b""
    getvalue = getattr(content, "getvalue", None)
    if getvalue is not None:
        return getvalue()
    content.seek(0)
    data = content.read()
    content.seek(0)
    return data


def answer(request, status: int, body: bytes, content_type: bytes) -> bytes:
    """Prepare a synchronous answer; render() returns what this returns."""
    request.setResponseCode(status)
    request.setHeader(b"Content-Type", content_type)
    request.setHeader(b"Content-Length", b"%d" % len(body))
    if content_type is TEXT:
        # Refusal reasons and echoes carry client text: never let a browser sniff HTML.
        request.setHeader(b"X-Content-Type-Options", b"nosniff")
    return b"" if request.method == b"HEAD" else body


def finish(request, status: int, body: bytes, content_type: bytes) -> None:
    body = answer(request, status, body, content_type)
    if body:
        request.write(body)
    request.finish()


def gone(request) -> bool:
    # Both Twisted 22.4 and 26 set Request._disconnected in connectionLost; finish()
    # raises on such a request.
    return bool(getattr(request, "_disconnected", False))


class WebhookRoot(Resource):
    """The root of the webhook listener.

    Channels mount their resources at exact paths (`mount`): the Android apps' Sync
    URLs, for instance.  Every other path goes to `fallback`, the ITSP webhook, which
    chooses its interface by the PHP websmsd.php's rules (remt_addr, url_path).
    """

    isLeaf = True

    def __init__(self, fallback: Resource):
        super().__init__()
        self.fallback = fallback
        self.mounts: dict = {}
        self.max_body = getattr(fallback, "max_body", MAX_BODY)

    def mount(self, path: str, resource: Resource) -> None:
        if not path.startswith("/") or "?" in path:
            raise ValueError(f"{path!r} is not a path")
        if path in self.mounts:
            raise ValueError(f"{path} is mounted twice")
        self.mounts[path.encode("utf-8")] = resource

    def render(self, request: Any) -> Any:
        resource = self.mounts.get(request.path, self.fallback)
        return resource.render(request)

    def refused_early(self, request: Any, status: int, kind: str, path: bytes, reason: str) -> None:
        # Refused before any resource saw it (an oversize body): counted as the ITSP
        # webhook counts its refusals, whichever channel the path is for.
        self.fallback.refused_early(request, status, kind, path, reason)

    def log_summary(self) -> None:
        self.fallback.log_summary()
