"""The status listener: a status page for the PBX owner, the JSON API and /metrics.

One root resource serves `[daemon] status_listen`:

    GET  /                          the status page (?number=, ?hours=, ?limit=)
    GET  /messages/<id>             one message: its text, attempts, delivery reports
    POST /messages/<id>/resend      the page's buttons (form + CSRF token)
    POST /messages/<id>/cancel
    GET  /static/<file>             the page's CSS (no CDN, no script)
    GET  /metrics                   Prometheus text format
    *    /api/...                   the JSON API (websmsd.http.api)

Everything passes the same access rule first (`api.Access`).  Every value that comes
from a message or a peer is HTML-escaped: pages are built only with `fill()`, which
escapes whatever is not already `Safe`.

Channels report their state through a `ChannelBoard`: a channel (or service.py on its
behalf) registers a callable returning `ChannelState`s, and the page, /api/status and
/metrics show them, so a new channel adds rows without touching this module.
"""

from __future__ import annotations

import hmac
import html
import os
import re
import socket
import string
import time
from hashlib import sha256
from typing import Any, Callable, Dict, Iterable, List, NamedTuple, Optional, Tuple
from urllib.parse import parse_qs, urlencode, urlsplit

from twisted.internet import defer
from twisted.logger import Logger
from twisted.web import resource, server

from websmsd import __version__
from websmsd.http import api
from websmsd.metrics import Family, Metrics, exposition
from websmsd.message import CANCELLED, DELIVERED, FAILED, QUEUED, RECEIVED, SENDING, SENT

log = Logger()

WEB_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "web")

# The page stays fast however big the store: it shows at most this many messages.
DEFAULT_LIMIT = 200
MAX_LIMIT = 1000
DEFAULT_HOURS = 24
MAX_HOURS = 24 * 366
RECENT_REFUSALS = 20
BODY_PREVIEW = 160
CSRF_LIFETIME = 12 * 3600.0
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
STATUS_COLUMNS = (QUEUED, SENDING, SENT, DELIVERED, FAILED, CANCELLED, RECEIVED)
# Webhook refusal classes (websmsd.http.webhook), always exported, also when zero.
REFUSAL_KINDS = ("bad_request", "forbidden", "method", "store_failed", "too_large")


# -- channel state ----------------------------------------------------------------------


class ChannelState(NamedTuple):
    """One row of the page's channel table.

    state is a short word: ok, listening, up, idle, failing, degraded, down, error...
    since: when it entered that state (epoch seconds) or None; detail: one line for a
    person; kind groups rows (itsp, spool, webhook, fastagi, smpp...); info: any more
    JSON-able facts for /api/status.
    """

    name: str
    state: str
    since: Optional[float]
    detail: str
    kind: str = ""
    info: Optional[dict] = None

    def json(self) -> dict:
        return {"kind": self.kind, "name": self.name, "state": self.state,
                "since": self.since, "detail": self.detail, "info": self.info or {}}


Reporter = Callable[[], Any]  # -> ChannelState | [ChannelState] | Deferred of either


class ChannelBoard:
    """Where channels say how they are.  `register(reporter)` returns `reporter`, so that
    `board.unregister(it)` removes it again (a channel that is stopped for good)."""

    def __init__(self) -> None:
        self._reporters: List[Tuple[str, Reporter]] = []

    def register(self, reporter: Reporter, label: str = "") -> Reporter:
        self._reporters.append((label or getattr(reporter, "__name__", "channel"), reporter))
        return reporter

    def unregister(self, reporter: Reporter) -> None:
        self._reporters = [(l, r) for l, r in self._reporters if r is not reporter]

    def collect(self) -> defer.Deferred:
        """Fires with every reporter's ChannelStates, in registration order.  A reporter
        that fails shows as one row in state "error" rather than hiding the page."""
        ds = []
        for label, reporter in self._reporters:
            d = defer.maybeDeferred(reporter)
            d.addCallback(_as_states)
            d.addErrback(_reporter_failed, label)
            ds.append(d)
        d = defer.gatherResults(ds)
        d.addCallback(lambda lists: [s for states in lists for s in states])
        return d


def _as_states(value: Any) -> List[ChannelState]:
    if value is None:
        return []
    if isinstance(value, ChannelState):
        return [value]
    return list(value)


def _reporter_failed(failure: Any, label: str) -> List[ChannelState]:
    log.failure("status: channel reporter {label} failed", failure, label=label)
    return [ChannelState(label, "error", None,
                         f"its state could not be read: {failure.getErrorMessage()}")]


def _url_without_secrets(url: str) -> str:
    try:
        parts = urlsplit(url)
    except ValueError:
        return "(unparsable URL)"
    netloc = parts.netloc.rpartition("@")[2]
    return f"{parts.scheme}://{netloc}{parts.path}"


def _iface_label(name: str) -> str:
    return name if name else "(default)"


def itsp_reporter(outbound: Any, measured: Any) -> Reporter:
    """One row per [websms] interface: how its last sends went (since start)."""

    def itsp() -> List[ChannelState]:
        rows = []
        for iface in outbound.interfaces:
            r = measured.record(iface.name) if measured is not None else None
            bits = []
            if r is None or r.state == "idle":
                state, since = "idle", None
                bits.append("no send since start")
            else:
                state, since = r.state, r.since
            if r is not None and r.last_ok is not None:
                bits.append(f"last success {_clock(r.last_ok)}")
            if r is not None and r.last_failure is not None:
                bits.append(f"last failure {_clock(r.last_failure)}: {r.last_reason}")
            rows.append(ChannelState(
                _iface_label(iface.name), state, since, "; ".join(bits), "itsp",
                {"interface": iface.name, "url": _url_without_secrets(iface.url),
                 "sends": r.sends if r else 0,
                 "last_success": r.last_ok if r else None,
                 "last_failure": r.last_failure if r else None,
                 "last_failure_reason": r.last_reason if r else None}))
        return rows

    return itsp


def spool_reporter(calls: Any, spool: Any, run_in_thread: Optional[Callable] = None,
                   since: Optional[float] = None,
                   clock: Callable[[], float] = time.time) -> Reporter:
    """The Asterisk call-file spool: problems with its directories, the last write
    error, how many files were handed over and how many Asterisk has not taken yet."""
    if run_in_thread is None:
        from twisted.internet.threads import deferToThread as run_in_thread

    def look() -> Tuple[List[str], Optional[int]]:
        # As the first call file would, create missing spool directories (one level):
        # what remains is a real problem.
        problems = spool.check(create=True)
        try:
            waiting: Optional[int] = len(spool.pending())
        except OSError:
            waiting = None
        return problems, waiting

    state_since = {"state": None, "since": since}

    def asterisk() -> defer.Deferred:
        d = run_in_thread(look)

        def row(result: Tuple[List[str], Optional[int]]) -> ChannelState:
            problems, waiting = result
            last_error = getattr(calls, "last_error", None)
            state = "error" if (problems or last_error) else "ok"
            if state != state_since["state"]:
                if state_since["state"] is not None:
                    state_since["since"] = clock()
                state_since["state"] = state
            bits = [f"{calls.handed_over} call files handed over since start"]
            if waiting:
                bits.append(f"{waiting} not yet taken by Asterisk")
            if last_error:
                bits.append(f"last error: {last_error}")
            bits.extend(problems)
            return ChannelState(
                spool.outgoingdir, state, state_since["since"], "; ".join(bits), "spool",
                {"handed_over": calls.handed_over, "last_error": last_error,
                 "problems": problems, "waiting": waiting,
                 "outgoingdir": spool.outgoingdir, "stagingdir": spool.stagingdir})

        return d.addCallback(row)

    return asterisk


def listener_reporter(kind: str, description: str, svc: Any, since: Optional[float],
                      detail: Callable[[], str] = lambda: "") -> Reporter:
    """A listener (webhook, FastAGI, status): listening while its service runs."""

    def listener() -> ChannelState:
        running = svc is None or getattr(svc, "running", True)
        return ChannelState(description, "listening" if running else "stopped", since,
                            detail(), kind)

    return listener


def webhook_detail(webhook: Any) -> Callable[[], str]:
    def detail() -> str:
        total = sum(webhook.refusals.values())
        return f"{total} requests refused since start" if total else "no refusals"

    return detail


# -- the model behind the page, /api/status and /metrics ----------------------------------


class StatusModel:
    """What the status listener shows, gathered from the running daemon."""

    def __init__(self, store: Any, board: ChannelBoard, *, metrics: Optional[Metrics] = None,
                 measured: Any = None, calls: Any = None, webhook: Any = None,
                 outbound: Any = None, inbound: Any = None, started: Optional[float] = None,
                 clock: Callable[[], float] = time.time,
                 wake: Optional[Callable[[str], None]] = None):
        self.store = store
        self.board = board
        self.metrics = metrics or Metrics()
        self.measured = measured
        self.calls = calls
        self.webhook = webhook
        self.outbound = outbound
        self.inbound = inbound
        self.clock = clock
        self.started = clock() if started is None else started
        self.wake = wake or (lambda direction: None)

    def _interfaces(self) -> Dict[str, List[str]]:
        out = {"in": [], "out": []}
        if self.inbound is not None:
            out["in"] = [i.name for i in self.inbound.interfaces]
        if self.outbound is not None:
            out["out"] = [i.name for i in self.outbound.interfaces]
        return out

    def queues(self, counts: Dict[tuple, int]) -> List[dict]:
        """Per direction and interface: the count of each status (configured interfaces
        always appear, also when empty)."""
        table: Dict[Tuple[str, str], Dict[str, int]] = {}
        for direction, names in self._interfaces().items():
            for name in names:
                table.setdefault((direction, name), {})
        for (direction, iface, status), n in counts.items():
            table.setdefault((direction, iface), {})[status] = n
        rows = []
        for (direction, iface), by_status in sorted(table.items()):
            rows.append({"direction": direction, "interface": iface,
                         "depth": by_status.get(QUEUED, 0) + by_status.get(SENDING, 0),
                         "statuses": dict(sorted(by_status.items())),
                         "total": sum(by_status.values())})
        return rows

    def refusals(self) -> dict:
        if self.webhook is None:
            return {"refusals": {}, "ignored": {}, "reports": {}, "recent": []}
        recent = list(self.webhook.recent_refusals)[-RECENT_REFUSALS:]
        recent.reverse()
        # Events acknowledged but not stored (other event types a provider posts to the
        # same URL), and delivery reports by outcome: most "my webhooks never arrive"
        # questions are answered by one of these three counters.
        ignored = getattr(self.webhook, "ignored", {})
        reports = getattr(self.webhook, "reports", {})
        return {"refusals": dict(sorted(self.webhook.refusals.items())),
                "ignored": dict(sorted(ignored.items())),
                "reports": dict(sorted(reports.items())),
                "recent": [{k: r.get(k) for k in ("time", "kind", "status", "source",
                                                   "path", "reason")} for r in recent]}

    @defer.inlineCallbacks
    def snapshot(self) -> Any:
        """Everything but the messages: JSON-able."""
        channels, counts = yield defer.gatherResults(
            [self.board.collect(), self.store.counts()], consumeErrors=True
        ).addErrback(api.first_error)
        by_direction: Dict[str, Dict[str, int]] = {"in": {}, "out": {}}
        for (direction, _, status), n in counts.items():
            d = by_direction.setdefault(direction, {})
            d[status] = d.get(status, 0) + n
        return {
            "version": __version__,
            "host": socket.gethostname(),
            "now": self.clock(),
            "started": self.started,
            "channels": [c.json() for c in channels],
            "queues": self.queues(counts),
            "messages": by_direction,
            "webhook": self.refusals(),
            "binds_up": self.metrics.binds.total(),
        }

    @defer.inlineCallbacks
    def metrics_text(self) -> Any:
        counts = yield self.store.counts()
        families: List[Family] = []
        f = Family("websmsd_messages", "gauge",
                   "Messages in the store, by direction and status.")
        totals: Dict[Tuple[str, str], int] = {}
        for (direction, _, status), n in counts.items():
            totals[(direction, status)] = totals.get((direction, status), 0) + n
        for direction in ("in", "out"):
            for status in sorted(set(STATUS_COLUMNS) | {s for d, s in totals if d == direction}):
                f.add(totals.get((direction, status), 0), direction=direction, status=status)
        families.append(f)
        f = Family("websmsd_queue_depth", "gauge",
                   "Messages waiting to be handed on (queued or sending), by interface.")
        for q in self.queues(counts):
            f.add(q["depth"], direction=q["direction"], interface=q["interface"])
        families.append(f)
        f = Family("websmsd_webhook_refusals_total", "counter",
                   "Webhook requests refused since start, by reason.")
        refusals = self.webhook.refusals if self.webhook is not None else {}
        for kind in sorted(set(REFUSAL_KINDS) | set(refusals)):
            f.add(refusals.get(kind, 0), reason=kind)
        families.append(f)
        for name, attr, label, text in (
                ("websmsd_webhook_ignored_total", "ignored", "reason",
                 "Webhook events acknowledged but neither a message nor a report."),
                ("websmsd_delivery_reports_total", "reports", "status",
                 "Delivery reports received, by the status they reported.")):
            f = Family(name, "counter", text)
            for key, n in sorted(getattr(self.webhook, attr, {}).items()):
                f.add(n, **{label: key})
            families.append(f)
        families.append(Family("websmsd_callfiles_handed_over_total", "counter",
                               "Call files handed over to Asterisk since start.")
                        .add(getattr(self.calls, "handed_over", 0)))
        outbound = [i.name for i in self.outbound.interfaces] if self.outbound else []
        families.append(self.metrics.send_seconds.family(outbound))
        ok = Family("websmsd_itsp_last_success_timestamp_seconds", "gauge",
                    "When an ITSP last took a message, by interface (since start).")
        bad = Family("websmsd_itsp_last_failure_timestamp_seconds", "gauge",
                     "When a send to an ITSP last failed, by interface (since start).")
        if self.measured is not None:
            for name, r in sorted(self.measured.interfaces.items()):
                if r.last_ok is not None:
                    ok.add(r.last_ok, interface=name)
                if r.last_failure is not None:
                    bad.add(r.last_failure, interface=name)
        families += [ok, bad]
        binds = self.metrics.binds
        families.append(Family("websmsd_binds_up", "gauge",
                               "SMPP binds (and similar channel connections) that are up.")
                        .add(binds.total()))
        f = Family("websmsd_bind_up", "gauge", "Whether each bind is up (1) or not (0).")
        for name, value in sorted(binds.values.items()):
            f.add(value, bind=name)
        families.append(f)
        families.append(Family("websmsd_store_commits_total", "counter",
                               "Store transactions committed since start.")
                        .add(getattr(self.store, "commits", 0)))
        families.append(Family("websmsd_start_time_seconds", "gauge",
                               "When the daemon started (epoch seconds).").add(self.started))
        return exposition(families)

    def messages(self, number: Optional[str], since: float, limit: int) -> defer.Deferred:
        """The newest messages (and delivery reports of those a provider knows)."""

        @defer.inlineCallbacks
        def gather() -> Any:
            found = yield self.store.recent(since, limit, number)
            with_id = [m for m in found if m.provider_id]
            # Issued together, these reads share one store transaction (group commit).
            lists = yield defer.gatherResults(
                [self.store.reports(m.id) for m in with_id], consumeErrors=True
            ).addErrback(api.first_error)
            reports = {m.id: r for m, r in zip(with_id, lists)}
            return found, reports

        return gather()


# -- HTML ----------------------------------------------------------------------------------


class Safe(str):
    """Text that is already HTML (made by `esc` or `fill`): not escaped again."""


def esc(value: Any) -> Safe:
    if isinstance(value, Safe):
        return value
    if value is None:
        return Safe("")
    return Safe(html.escape(str(value), quote=True))


def fill(template: str, **values: Any) -> Safe:
    """`template` with each $name replaced by the escaped value (Safe values as they are)."""
    return Safe(string.Template(template).substitute({k: esc(v) for k, v in values.items()}))


def join(parts: Iterable[Safe]) -> Safe:
    return Safe("".join(esc(p) for p in parts))


_TEMPLATES: Dict[str, str] = {}


def template(name: str) -> str:
    text = _TEMPLATES.get(name)
    if text is None:
        with open(os.path.join(WEB_DIR, "templates", name), encoding="utf-8") as f:
            text = _TEMPLATES[name] = f.read()
    return text


def _clock(t: Optional[float]) -> str:
    if t is None:
        return ""
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t))


def _iso(t: Optional[float]) -> str:
    if t is None:
        return ""
    return time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(t))


def _duration(seconds: float) -> str:
    s = max(0, int(seconds))
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min"
    if s < 86400:
        return f"{s // 3600} h {s % 3600 // 60} min"
    return f"{s // 86400} d {s % 86400 // 3600} h"


def _ago(t: Optional[float], now: float) -> str:
    return "" if t is None else _duration(now - t) + " ago"


def _when(t: Optional[float], now: float) -> Safe:
    if t is None:
        return Safe("")
    return fill('<time datetime="$iso" title="$ago">$clock</time>',
                iso=_iso(t), ago=_ago(t, now), clock=_clock(t))


_WORD = re.compile(r"[^a-z0-9-]")


def _css_word(text: str) -> str:
    return _WORD.sub("", str(text).lower())[:20] or "none"


_STATE_CLASS = {"ok": "good", "listening": "good", "up": "good", "sent": "good",
                "delivered": "good", "idle": "quiet", "received": "quiet",
                "queued": "warn", "sending": "warn", "failing": "bad", "degraded": "warn",
                "down": "bad", "error": "bad", "failed": "bad", "stopped": "bad",
                "cancelled": "quiet"}


def _state(state: str) -> Safe:
    return fill('<span class="state $cls">$state</span>',
                cls=_STATE_CLASS.get(state, "quiet"), state=state)


def _preview(body: str) -> str:
    text = " ".join(body.split())
    return text if len(text) <= BODY_PREVIEW else text[: BODY_PREVIEW - 1] + "\u2026"


class CSRF:
    """Tokens for the page's forms: HMAC(per-process secret, page nonce|action|id).

    A page gets a fresh nonce (its time and random bytes); each form's token binds that
    nonce to one action on one message.  Another site cannot read our pages, so it
    cannot produce a token; a token expires after `lifetime` and with the process.
    """

    def __init__(self, secret: Optional[bytes] = None, clock: Callable[[], float] = time.time,
                 lifetime: float = CSRF_LIFETIME):
        self.secret = secret or os.urandom(32)
        self.clock = clock
        self.lifetime = lifetime

    def nonce(self) -> str:
        return f"{int(self.clock()):x}-{os.urandom(8).hex()}"

    def _mac(self, nonce: str, action: str, message_id: str) -> str:
        data = f"{nonce}|{action}|{message_id}".encode("utf-8")
        return hmac.new(self.secret, data, sha256).hexdigest()[:40]

    def token(self, nonce: str, action: str, message_id: str) -> str:
        return f"{nonce}.{self._mac(nonce, action, message_id)}"

    def valid(self, token: str, action: str, message_id: str) -> bool:
        nonce, _, mac = token.partition(".")
        if not mac or not hmac.compare_digest(mac, self._mac(nonce, action, message_id)):
            return False
        try:
            issued = int(nonce.split("-", 1)[0], 16)
        except ValueError:
            return False
        return -60 <= self.clock() - issued <= self.lifetime


class Page:
    """Builds the HTML of the status page and the message page."""

    def __init__(self, csrf: CSRF):
        self.csrf = csrf

    def layout(self, title: str, root: str, snapshot: dict, content: Safe) -> bytes:
        now = snapshot["now"]
        meta = fill("up since $since ($uptime) \u00b7 now $now", since=_clock(snapshot["started"]),
                    uptime=_duration(now - snapshot["started"]), now=_clock(now))
        return fill(template("layout.html"), title=title, root=root, host=snapshot["host"],
                    meta=meta, version=snapshot["version"], content=content).encode("utf-8")

    def actions(self, m: Any, nonce: str, root: str, back: Dict[str, str]) -> Safe:
        forms = []
        todo = []
        if m.status in (FAILED, CANCELLED):
            todo.append(("resend", "Resend"))
        if m.status == QUEUED:
            todo.append(("cancel", "Cancel"))
        for action, label in todo:
            hidden = join(fill('<input type="hidden" name="$k" value="$v">', k=k, v=v)
                          for k, v in back.items())
            forms.append(fill(
                '<form method="post" action="${root}messages/$id/$action" class="act">'
                '<input type="hidden" name="csrf" value="$token">$hidden'
                '<button type="submit" class="$action" name="$action" value="1">$label</button>'
                "</form>",
                root=root, id=m.id, action=action, token=self.csrf.token(nonce, action, m.id),
                hidden=hidden, label=label))
        return join(forms)

    def channels(self, snapshot: dict) -> Safe:
        now = snapshot["now"]
        rows = [fill('<tr class="channel kind-$kind"><td>$kind</td><td class="name">$name</td>'
                     "<td>$state</td><td>$since</td><td class=\"detail\">$detail</td></tr>\n",
                     kind=c["kind"], name=c["name"], state=_state(c["state"]),
                     since=_when(c["since"], now), detail=c["detail"])
                for c in snapshot["channels"]]
        if not rows:
            rows = [Safe('<tr><td colspan="5" class="none">no channels</td></tr>')]
        return join(rows)

    def queues(self, snapshot: dict) -> Tuple[Safe, Safe]:
        heads = join(fill("<th>$s</th>", s=s) for s in STATUS_COLUMNS)
        rows = []
        for q in snapshot["queues"]:
            cells = join(fill('<td class="n$cls">$n</td>', n=q["statuses"].get(s, 0),
                              cls=" zero" if not q["statuses"].get(s) else "")
                         for s in STATUS_COLUMNS)
            rows.append(fill('<tr><td>$direction</td><td>$iface</td><td class="n depth">$depth'
                             "</td>$cells<td class=\"n\">$total</td></tr>\n",
                             direction=q["direction"], iface=_iface_label(q["interface"]),
                             depth=q["depth"], cells=cells, total=q["total"]))
        return heads, join(rows)

    def refusals(self, snapshot: dict) -> Tuple[Safe, Safe]:
        now = snapshot["now"]
        counts = snapshot["webhook"]["refusals"]
        summary = join(fill("<li>$kind: <strong>$n</strong></li>", kind=k, n=n)
                       for k, n in counts.items()) or Safe("<li>none since start</li>")
        extra = [fill("<li>ignored ($kind): <strong>$n</strong></li>", kind=k, n=n)
                 for k, n in snapshot["webhook"].get("ignored", {}).items()]
        extra += [fill("<li>delivery reports ($kind): <strong>$n</strong></li>", kind=k, n=n)
                  for k, n in snapshot["webhook"].get("reports", {}).items()]
        summary = join([summary] + extra)
        rows = [fill("<tr><td>$time</td><td>$source</td><td>$path</td><td>$status</td>"
                     "<td>$kind</td><td class=\"detail\">$reason</td></tr>\n",
                     time=_when(r["time"], now), source=r["source"], path=r["path"],
                     status=r["status"], kind=r["kind"], reason=r["reason"])
                for r in snapshot["webhook"]["recent"]]
        return summary, join(rows) or Safe('<tr><td colspan="6" class="none">none</td></tr>')

    def status_page(self, snapshot: dict, found: list, reports: dict, query: dict) -> bytes:
        now = snapshot["now"]
        nonce = self.csrf.nonce()
        back = {k: v for k, v in (("number", query["number"] or ""),
                                  ("hours", query["hours_text"])) if v}
        rows = []
        for m in found:
            rep = reports.get(m.id) or []
            last = rep[-1] if rep else None
            report = (fill("$status $when", status=last[1], when=_when(last[0], now))
                      if last else "")
            rows.append(fill(
                '<tr id="m-$id" class="msg dir-$dir st-$st" data-id="$id" data-status="$status">'
                '<td><a href="./messages/$id">$when</a></td><td>$dir</td>'
                '<td class="num from">$sender</td><td class="num to">$recipient</td>'
                '<td class="body">$body</td><td class="status">$state</td>'
                '<td class="n attempts">$attempts</td><td class="detail reason">$reason</td>'
                '<td class="report">$report</td><td class="actions">$actions</td></tr>\n',
                id=m.id, dir=m.direction, st=_css_word(m.status), status=m.status,
                when=_when(m.created, now), sender=m.sender, recipient=m.recipient,
                body=_preview(m.body), state=_state(m.status), attempts=m.attempts,
                reason=m.reason or "", report=report,
                actions=self.actions(m, nonce, "./", back)))
        if not rows:
            rows.append(Safe('<tr><td colspan="10" class="none">no messages</td></tr>'))
        limit = query["limit"]
        if query["number"]:
            scope = f"with {query['number']}"
            scope += f" in the last {query['hours']} h" if query["hours_text"] else ", of any age"
        else:
            scope = f"of the last {query['hours']} h"
        note = f"{len(found)} message{'' if len(found) == 1 else 's'} {scope}, newest first"
        if len(found) >= limit:
            note += f" (only the newest {limit} are shown: search by number to see others)"
        heads, queue_rows = self.queues(snapshot)
        summary, refusal_rows = self.refusals(snapshot)
        content = fill(template("status.html"), channel_rows=self.channels(snapshot),
                       status_heads=heads, queue_rows=queue_rows, refusal_summary=summary,
                       refusal_rows=refusal_rows, number=query["number"] or "",
                       hours=query["hours_text"], limit=limit, messages_note=note,
                       message_rows=join(rows))
        title = f"websmsd \u2013 {snapshot['host']}"
        return self.layout(title, "./", snapshot, content)

    def message_page(self, snapshot: dict, m: Any, attempts: list, reports: list) -> bytes:
        now = snapshot["now"]
        nonce = self.csrf.nonce()
        fields = [("Id", m.id), ("Direction", m.direction), ("Channel", m.channel),
                  ("Interface", _iface_label(m.interface)), ("From", m.sender),
                  ("To", m.recipient), ("Status", _state(m.status)),
                  ("Last error", m.reason or ""), ("Attempts", m.attempts),
                  ("Created", _when(m.created, now)), ("Updated", _when(m.updated, now)),
                  ("Next attempt", _when(m.next_attempt, now)
                   if m.status in (QUEUED, SENDING) and m.next_attempt else ""),
                  ("Provider id", m.provider_id or ""), ("Parts handed over", m.progress)]
        field_rows = join(fill("<tr><th>$k</th><td>$v</td></tr>\n", k=k, v=v)
                          for k, v in fields)
        attempt_rows = join(fill("<tr><td>$at</td><td>$ok</td><td class=\"detail\">$detail"
                                 "</td></tr>\n", at=_when(at, now),
                                 ok=_state("ok" if ok else "failed"), detail=detail or "")
                            for at, ok, detail in attempts) or Safe(
            '<tr><td colspan="3" class="none">none</td></tr>')
        report_rows = join(fill("<tr><td>$at</td><td>$status</td><td class=\"detail\">$detail"
                                "</td></tr>\n", at=_when(at, now), status=_state(status),
                                detail=detail or "")
                           for at, status, detail in reports) or Safe(
            '<tr><td colspan="3" class="none">none</td></tr>')
        content = fill(template("message.html"), id=m.id, field_rows=field_rows,
                       actions=self.actions(m, nonce, "../", {"back": "message"}),
                       body=m.body, attempt_rows=attempt_rows, report_rows=report_rows)
        return self.layout(f"websmsd \u2013 message {m.id}", "../", snapshot, content)

    def error_page(self, status: int, reason: str, root: str = "./") -> bytes:
        return fill(template("error.html"), status=status, reason=reason,
                    root=root).encode("utf-8")


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
        self._static: Dict[str, Tuple[bytes, bytes]] = {}

    def render(self, request: Any) -> Any:
        path = request.path
        is_api = path == b"/api" or path.startswith(b"/api/")
        _security(request)
        try:
            self.access.check(request)
        except api.Refusal as r:
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
            path = os.path.join(WEB_DIR, "static", name)
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

        @defer.inlineCallbacks
        def build() -> Any:
            snapshot, (found, reports) = yield defer.gatherResults(
                [self.model.snapshot(),
                 self.model.messages(query["number"], query["since"], query["limit"])],
                consumeErrors=True).addErrback(api.first_error)
            _send(request, 200, self.page.status_page(snapshot, found, reports, query))

        build().addErrback(self._failed, request)
        return server.NOT_DONE_YET

    def _message_page(self, request: Any, message_id: str) -> Any:
        store = self.model.store

        @defer.inlineCallbacks
        def build() -> Any:
            m = yield store.get(message_id)
            if m is None:
                _send(request, 404, self.page.error_page(404, "no such message",
                                                         _root_of(request.path)))
                return
            snapshot, attempts, reports = yield defer.gatherResults(
                [self.model.snapshot(), store.attempts(message_id), store.reports(message_id)],
                consumeErrors=True).addErrback(api.first_error)
            _send(request, 200, self.page.message_page(snapshot, m, attempts, reports))

        build().addErrback(self._failed, request)
        return server.NOT_DONE_YET

    def _action(self, request: Any, message_id: str, action: str) -> Any:
        why = api.cross_origin(request)
        form = _form(request)
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

        d = api.resend_or_cancel(self.model.store, message_id, action, self.model.wake)
        d.addCallback(done)
        d.addErrback(self._failed, request)
        return server.NOT_DONE_YET


def _root_of(path: bytes) -> str:
    """The relative way back to "/" from `path` (the page works under a proxy prefix)."""
    depth = max(path.count(b"/") - 1, 0)
    return "../" * depth or "./"


def _form(request: Any) -> Dict[str, str]:
    """The fields of a form POST (the status listener's requests leave bodies unparsed)."""
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


def make_status_resource(model: StatusModel, outbox: Any, access: api.Access,
                         csrf: Optional[CSRF] = None) -> StatusResource:
    """The root of the status listener: page, static files, /metrics and the JSON API."""
    json_api = api.APIResource(outbox, model.store, access, status=model.snapshot,
                               wake=model.wake)
    return StatusResource(model, json_api, access, csrf)
