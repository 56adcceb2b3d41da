"""The status page's HTML: built only with `fill()`, which escapes whatever is not `Safe`.

Every value that comes from a message or a peer is HTML-escaped.  The templates and the
static files are in web/ (see `web_dir`).
"""

from __future__ import annotations

import hmac
import html
import os
import re
import string
import sys
import time
from hashlib import sha256
from typing import Any, Callable, Dict, Iterable, Optional, Tuple

from websmsd.text import local_time
from websmsd.message import CANCELLED, FAILED, IN, QUEUED, SENDING, SENT


BODY_PREVIEW = 160


CSRF_LIFETIME = 12 * 3600.0


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


def web_dir() -> str:
    """Where the page's templates and static files are: $WEBSMSD_WEB; web/ beside the
    package when run from the source tree (or an editable install); else where the
    package installed them (<prefix>/share/websmsd/web, /usr/share/websmsd/web)."""
    candidates = [os.environ.get("WEBSMSD_WEB") or "",
                  os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(
                      os.path.abspath(__file__)))), "web"),
                  os.path.join(sys.prefix, "share", "websmsd", "web"),
                  "/usr/local/share/websmsd/web",
                  "/usr/share/websmsd/web"]
    for path in candidates:
        if path and os.path.isfile(os.path.join(path, "templates", "layout.html")):
            return path
    raise FileNotFoundError("the status page's files (web/) are missing: set WEBSMSD_WEB")


_TEMPLATES: Dict[str, str] = {}


def template(name: str) -> str:
    text = _TEMPLATES.get(name)
    if text is None:
        with open(os.path.join(web_dir(), "templates", name), encoding="utf-8") as f:
            text = _TEMPLATES[name] = f.read()
    return text


def _clock(t: Optional[float]) -> str:
    return "" if t is None else local_time(t)


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


def _relative(t: Optional[float], now: float) -> str:
    if t is None:
        return ""
    return f"in {_duration(t - now)}" if t > now else _duration(now - t) + " ago"


def _when(t: Optional[float], now: float) -> Safe:
    if t is None:
        return Safe("")
    return fill('<time datetime="$iso" title="$rel">$clock</time>',
                iso=_iso(t), rel=_relative(t, now), clock=_clock(t))


def plural(n: int, one: str, many: Optional[str] = None) -> str:
    """"1 message", "2 messages"; `many` for words that do not just take an s."""
    return f"{n} {one if n == 1 else (many or one + 's')}"


_WORD = re.compile(r"[^a-z0-9-]")


def _css_word(text: str) -> str:
    return _WORD.sub("", str(text).lower())[:20] or "none"


_STATE_CLASS = {"ok": "good", "listening": "good", "up": "good", "sent": "good",
                "delivered": "good", "idle": "quiet", "received": "quiet",
                "queued": "warn", "sending": "warn", "failing": "bad", "degraded": "warn",
                "down": "bad", "error": "bad", "failed": "bad", "stopped": "bad",
                "cancelled": "quiet"}


def _state(state: str, label: Optional[str] = None, title: str = "") -> Safe:
    """A badge coloured by `state`, saying `label` (the state itself by default)."""
    if title:
        return fill('<span class="state $cls" title="$title">$label</span>',
                    cls=_STATE_CLASS.get(state, "quiet"), title=title, label=label or state)
    return fill('<span class="state $cls">$label</span>',
                cls=_STATE_CLASS.get(state, "quiet"), label=label or state)


def status_label(m: Any) -> Tuple[str, str]:
    """What a message's status means to an owner, and a longer explanation (or "").

    An inbound message is "sent" once its call file is in Asterisk's spool (or Asterisk
    took it over AMI): what Asterisk then did is not known to websmsd, so say what
    happened, not "sent", which reads as if the phone had it."""
    if m.direction == IN and m.status == SENT:
        where = ("its call file is in Asterisk's spool" if m.route == "callfile"
                 else f"handed to Asterisk by {m.route}")
        return "handed to Asterisk", where + "; Asterisk delivers it from there"
    return m.status, ""


def _message_state(m: Any) -> Safe:
    label, title = status_label(m)
    return _state(m.status, label, title)


def next_try(m: Any, now: float) -> Safe:
    """When a waiting message is tried next: a time, "due now" when it waits only for
    its turn (or for its route to come up), nothing once it is being sent or is done."""
    if m.status not in (QUEUED, SENDING):
        return Safe("")
    if m.next_attempt and m.next_attempt > now:
        return _when(m.next_attempt, now)
    return Safe("due now") if m.status == QUEUED else Safe("")


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
        meta = fill("up since $since ($uptime) \u00b7 now $now",
                    since=_when(snapshot["started"], now),
                    uptime=_duration(now - snapshot["started"]), now=_when(now, now))
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

    # Each cell names its column (data-label): at phone width a row is shown as a card,
    # its cells one under the other, each headed by the label (status.css).  A channel's
    # card heads its name with its kind, one line less on a small screen.

    def channels(self, snapshot: dict) -> Safe:
        now = snapshot["now"]
        rows = [fill('<tr class="channel kind-$kind"><td data-label="Kind" class="kind">$kind</td>'
                     '<td data-label="$kind" class="name">$name</td>'
                     '<td data-label="State">$state</td><td data-label="Since">$since</td>'
                     '<td data-label="Detail" class="detail">$detail</td></tr>\n',
                     kind=c["kind"], name=c["name"], state=_state(c["state"]),
                     since=_when(c["since"], now), detail=c["detail"])
                for c in snapshot["channels"]]
        if not rows:
            rows = [Safe('<tr><td colspan="5" class="none">no channels</td></tr>')]
        return join(rows)

    def routes(self, snapshot: dict) -> Safe:
        now = snapshot["now"]
        rows = []
        for r in snapshot["routes"]:
            if r["down"]:
                state = fill("$s <span class=\"why\">$why</span>", s=_state("down"), why=r["down"])
            elif r["state"] == "failing":
                state = fill("$s <span class=\"why\">$why</span>", s=_state("failing"),
                             why=r["last_failure_reason"] or "")
            else:
                state = _state(r["state"])
            waiting = r["waiting"]
            rows.append(fill(
                '<tr class="route"><td data-label="Interface" class="name">$route</td>'
                '<td data-label="State" class="detail">$state</td>'
                '<td data-label="Waiting" class="n$zero">$waiting</td>'
                '<td data-label="Oldest waiting">$oldest</td>'
                '<td data-label="Last success">$ok</td><td data-label="Last failure">$bad</td>'
                '</tr>\n',
                route=r["route"], state=state, zero="" if waiting else " zero", waiting=waiting,
                oldest=_when(r["oldest"], now) if waiting else "",
                ok=_when(r["last_success"], now), bad=_when(r["last_failure"], now)))
        return join(rows) or Safe('<tr><td colspan="6" class="none">no interface</td></tr>')

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
        rows = [fill('<tr><td data-label="Time">$time</td><td data-label="Source" class="num">'
                     '$source</td><td data-label="Path" class="num">$path</td>'
                     '<td data-label="HTTP">$status</td><td data-label="Kind">$kind</td>'
                     '<td data-label="Reason" class="detail">$reason</td></tr>\n',
                     time=_when(r["time"], now), source=r["source"], path=r["path"],
                     status=r["status"], kind=r["kind"], reason=r["reason"])
                for r in snapshot["webhook"]["recent"]]
        return summary, join(rows) or Safe('<tr><td colspan="6" class="none">none</td></tr>')

    def refusal_title(self, snapshot: dict) -> str:
        refused = sum(snapshot["webhook"]["refusals"].values())
        if not refused:
            return "no request refused since start"
        title = plural(refused, "request") + " refused since start"
        shown = len(snapshot["webhook"]["recent"])
        if shown < refused:
            title += f" (the last {shown} below)" if shown > 1 else " (the last one below)"
        return title

    def message_row(self, m: Any, rep: list, now: float, nonce: str,
                    back: Dict[str, str]) -> Safe:
        last = rep[-1] if rep else None
        # The last report's time is in its title: a second time column would push the
        # list wider than a laptop's screen; the message's page lists every report.
        report = (_state(last[1], title=f"reported {_clock(last[0])} ({_relative(last[0], now)})")
                  if last else "")
        after = next_try(m, now)
        # Both when both exist: the time of the next try and why the last one failed.
        sep = " " if m.next_attempt > now else ": "
        detail = join([fill('<span class="next">next try$sep$when</span>', sep=sep, when=after)
                       if after else Safe(""),
                       fill('<span class="error">$reason</span>', reason=m.reason)
                       if m.reason else Safe("")])
        return fill(
            '<tr id="m-$id" class="msg dir-$dir st-$st" data-id="$id" data-status="$status">'
            '<td data-label="Time" class="when"><a href="./messages/$id">$when</a></td>'
            '<td data-label="Dir" class="dir">$dir</td>'
            '<td data-label="From" class="num from">$sender</td>'
            '<td data-label="To" class="num to">$recipient</td>'
            '<td data-label="Text" class="body">$body</td>'
            '<td data-label="Status" class="status">$state</td>'
            '<td data-label="Tries" class="n attempts">$attempts</td>'
            '<td data-label="Next try / last error" class="detail reason">$detail</td>'
            '<td data-label="Report" class="report">$report</td>'
            '<td class="actions">$actions</td></tr>\n',
            id=m.id, dir=m.direction, st=_css_word(m.status), status=m.status,
            when=_when(m.created, now), sender=m.sender, recipient=m.recipient,
            body=_preview(m.body), state=_message_state(m), attempts=m.attempts,
            detail=detail, report=report, actions=self.actions(m, nonce, "./", back))

    def status_page(self, snapshot: dict, found: list, reports: dict, query: dict) -> bytes:
        now = snapshot["now"]
        nonce = self.csrf.nonce()
        back = {k: v for k, v in (("number", query["number"] or ""),
                                  ("hours", query["hours_text"])) if v}
        rows = [self.message_row(m, reports.get(m.id) or [], now, nonce, back) for m in found]
        if not rows:
            rows.append(Safe('<tr><td colspan="10" class="none">no messages</td></tr>'))
        limit = query["limit"]
        hours = f"{query['hours']} h"
        if query["number"]:
            scope = f"with {query['number']}"
            scope += f" in the last {hours}" if query["hours_text"] else ", of any age"
        else:
            scope = f"of the last {hours}"
        note = f"{plural(len(found), 'message')} {scope}, newest first"
        if len(found) >= limit:
            note += (f" (only the newest {limit} are shown" if limit > 1
                     else " (only the newest is shown") + ": search by number to see others)"
        summary, refusal_rows = self.refusals(snapshot)
        content = fill(template("status.html"), channel_rows=self.channels(snapshot),
                       route_rows=self.routes(snapshot), refusal_summary=summary,
                       refusal_title=self.refusal_title(snapshot),
                       refusal_rows=refusal_rows, number=query["number"] or "",
                       hours=query["hours_text"], limit=limit, messages_note=note,
                       message_rows=join(rows))
        title = f"websmsd \u2013 {snapshot['host']}"
        return self.layout(title, "./", snapshot, content)

    def message_page(self, snapshot: dict, m: Any, attempts: list, reports: list) -> bytes:
        now = snapshot["now"]
        nonce = self.csrf.nonce()
        label, explained = status_label(m)
        status = _message_state(m)
        if explained:
            status = fill("$badge <span class=\"why\">$why</span>", badge=status, why=explained)
        fields = [("Id", m.id), ("Direction", m.direction), ("Came in through", m.source or ""),
                  ("Carried by", m.route or ""),
                  ("Then by", ", ".join(m.fallback) if m.fallback else ""), ("From", m.sender),
                  ("To", m.recipient), ("Status", status),
                  ("Last error", m.reason or ""), ("Attempts", m.attempts),
                  ("Created", _when(m.created, now)), ("Updated", _when(m.updated, now)),
                  ("Next attempt", next_try(m, now)),
                  ("Provider id", m.provider_id or ""), ("Parts handed over", m.progress)]
        field_rows = join(fill("<tr><th>$k</th><td>$v</td></tr>\n", k=k, v=v)
                          for k, v in fields)
        attempt_rows = join(fill('<tr><td data-label="Time">$at</td><td data-label="Outcome">'
                                 '$ok</td><td data-label="Detail" class="detail">$detail'
                                 "</td></tr>\n", at=_when(at, now),
                                 ok=_state("ok" if ok else "failed"), detail=detail or "")
                            for at, ok, detail in attempts) or Safe(
            '<tr><td colspan="3" class="none">none</td></tr>')
        report_rows = join(fill('<tr><td data-label="Time">$at</td><td data-label="Status">'
                                '$status</td><td data-label="Detail" class="detail">$detail'
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
