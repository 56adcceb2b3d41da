"""The conversation pages' HTML (websmsd.http.conversations): SMS per own number, as
threads, with their delivery ticks.  Built only with `fill()`, which escapes whatever is
not `Safe`: a message's text, numbers and reasons are escaped wherever they appear.

A page works without its script; web/static/conversations.js adds the live updates
(the parts marked `data-updates`) and the reply box's SMS part counter.
"""

from __future__ import annotations

from typing import Any, Iterable, List, Optional, Sequence
from urllib.parse import quote, urlencode

from websmsd.http.pages import (CSRF, Safe, _clock, _iso, _relative, _when, esc, fill, join,
                                plural, template)
from websmsd.message import (CANCELLED, DELIVERED, FAILED, IN, QUEUED, RECEIVED, SENDING,
                             SENT)

# What the reply box's counter needs to count as websmsd.sms does (the GSM 03.38
# alphabet and its extension table), given to the script as data attributes.
_GSM_BASIC: Optional[str] = None
_GSM_EXT: Optional[str] = None


def gsm_tables() -> tuple:
    global _GSM_BASIC, _GSM_EXT
    if _GSM_BASIC is None:
        from websmsd import sms

        _GSM_BASIC = "".join(c for c in sms._GSM_BASIC if c != "\x1b")
        _GSM_EXT = "".join(sms._GSM_EXT.values())
    return _GSM_BASIC, _GSM_EXT


def segment(key: str) -> str:
    """A number key as one URL path segment."""
    return quote(key, safe="+")


def parts_note(text: str) -> str:
    """"2 SMS · GSM 7-bit · 146 left": what the counter shows, said by websmsd.sms."""
    from websmsd import sms

    if not text:
        return "GSM 7-bit \u00b7 160 characters per SMS"
    seg = sms.segments(text)
    enc = "GSM 7-bit" if seg.encoding == "gsm" else "UCS-2 (Unicode)"
    return f"{plural(seg.parts, 'SMS', 'SMS')} \u00b7 {enc} \u00b7 {seg.remaining} left"


# -- a message's state, as ticks ---------------------------------------------------------

_TICKS = {QUEUED: ("\u25f7", "queued", "warn"), SENDING: ("\u25f7", "sending", "warn"),
          SENT: ("\u2713", "sent", "good"), DELIVERED: ("\u2713\u2713", "delivered", "good"),
          FAILED: ("\u2717", "failed", "bad"), CANCELLED: ("\u2717", "cancelled", "quiet"),
          RECEIVED: ("", "received", "quiet")}


def _copies_note(entry: Any) -> str:
    """Where an inbound SMS went: "handed to desk, alice" (phones), or to Asterisk."""
    copies = (entry.message, *entry.copies)
    done = [c for c in copies if c.status in (SENT, DELIVERED)]
    if not done:
        return ""
    names = [c.route.partition(":")[2] or c.route for c in done]
    if all(c.route == "callfile" for c in done):
        return "handed to Asterisk"
    return "handed to " + ", ".join(names)


def state_of(entry: Any, now: float) -> Safe:
    """The meta line of one SMS: its ticks, state, reason and next try."""
    m = entry.message
    parts: List[Safe] = []
    if m.direction == IN:
        statuses = {c.status for c in (m, *entry.copies)}
        if FAILED in statuses and not statuses & {SENT, DELIVERED}:
            parts.append(fill('<span class="tick bad" title="not handed to a phone">\u2717'
                              '</span> <span class="state-text">not handed to a phone: $why'
                              "</span>", why=m.reason or "failed"))
        elif statuses & {SENT, DELIVERED}:
            parts.append(fill('<span class="state-text">$note</span>', note=_copies_note(entry)))
        else:
            parts.append(Safe('<span class="state-text">received</span>'))
        return join(parts)
    tick, label, cls = _TICKS.get(m.status, ("", m.status, "quiet"))
    parts.append(fill('<span class="tick $cls" aria-hidden="true">$tick</span> '
                      '<span class="state-text st-$st">$label</span>',
                      cls=cls, tick=tick, st=label, label=label))
    if m.status in (FAILED, CANCELLED) and m.reason:
        parts.append(fill(' <span class="why">$why</span>', why=m.reason))
    elif m.status in (QUEUED, SENDING):
        if m.next_attempt and m.next_attempt > now:
            parts.append(fill(' <span class="next">next try $when</span>',
                              when=_when(m.next_attempt, now)))
        if m.reason:
            parts.append(fill(' <span class="why">(last try: $why)</span>', why=m.reason))
    return join(parts)


class ConversationPages:
    """The HTML of the conversation pages."""

    def __init__(self, csrf: CSRF):
        self.csrf = csrf

    def layout(self, title: str, root: str, viewer: Any, content: Safe, now: float,
               host: str = "") -> bytes:
        if viewer is None:
            nav = Safe("")
        elif viewer.owner:
            nav = fill('<a href="${root}">status</a>', root=root)
        else:
            nav = fill('<span class="who">$name</span> <form method="post" '
                       'action="${root}logout" class="act"><input type="hidden" '
                       'name="csrf" value="$token"><button type="submit">Sign out</button>'
                       "</form>", root=root, name=viewer.name,
                       token=self.csrf.token(self.csrf.nonce(), "logout", ""))
        return fill(template("conversations-layout.html"), title=title, root=root,
                    host=host, nav=nav, content=content, now=_when(now, now)).encode("utf-8")

    def error(self, reason: str, root: str) -> Safe:
        return fill('<p class="error">$reason</p><p><a href="${root}conversations">'
                    "all numbers</a></p>", reason=reason, root=root)

    # -- the list of own numbers and of conversations

    def own_numbers(self, owns: Sequence[Any], now: float, root: str) -> Safe:
        rows = [fill('<li class="own"><a href="${root}conversations/$key">'
                     '<span class="num">$own</span></a> <span class="count">$convs</span>'
                     '$unread <span class="last">$when</span></li>\n',
                     root=root, key=segment(o.own_key), own=o.own,
                     convs=plural(o.conversations, "conversation"),
                     unread=_unread(o.unread), when=_when(o.last_at, now))
                for o in owns]
        return join(rows) or Safe('<li class="none">no SMS yet</li>')

    def conversation_rows(self, convs: Sequence[Any], now: float, root: str) -> Safe:
        rows = []
        for c in convs:
            m = c.last.message
            arrow = "\u2190 " if m.direction == IN else "\u2192 "
            rows.append(fill(
                '<li class="conv${cls}"><a href="${root}conversations/$own/$peer">'
                '<span class="peer num">$peer_shown</span>$unread'
                '<span class="last">$when</span>'
                '<span class="preview"><span class="dir">$arrow</span>$text</span>'
                '<span class="meta">$state</span></a></li>\n',
                cls=" has-unread" if c.unread else "", root=root, own=segment(c.own_key),
                peer=segment(c.peer_key), peer_shown=c.peer, unread=_unread(c.unread),
                when=_when(m.created, now), arrow=arrow, text=_preview(m.body),
                state=state_of(c.last, now)))
        return join(rows) or Safe('<li class="none">no conversations yet</li>')

    def entry_rows(self, entries: Iterable[Any], now: float, root: str, owner: bool) -> Safe:
        rows = []
        for e in entries:
            m = e.message
            link = (fill(' <a class="details" href="${root}messages/$id">details</a>',
                         root=root, id=m.id) if owner else Safe(""))
            rows.append(fill(
                '<li id="m-$id" class="sms $dir st-$status" data-status="$status">'
                '<div class="text">$body</div>'
                '<div class="meta"><time datetime="$iso" title="$rel">$clock</time> '
                "$state$link</div></li>\n",
                id=m.id, dir="in" if m.direction == IN else "out", status=m.status,
                body=m.body, iso=_iso(m.created), rel=_relative(m.created, now),
                clock=_clock(m.created), state=state_of(e, now), link=link))
        return join(rows) or Safe('<li class="none">no SMS in this conversation yet</li>')

    def reply_box(self, action: str, hidden: dict, to: Optional[str], body: str,
                  error: str, can_send: Optional[str], label: str) -> Safe:
        if can_send is not None:
            return fill('<p class="note cannot-send">$why</p>', why=can_send)
        gsm, ext = gsm_tables()
        nonce = self.csrf.nonce()
        fields = join(fill('<input type="hidden" name="$k" value="$v">', k=k, v=v)
                      for k, v in hidden.items())
        to_field = Safe("")
        if to is not None:
            to_field = fill('<label class="to">To <input type="tel" name="to" value="$to" '
                            'required maxlength="32" autocomplete="off" '
                            'placeholder="+12025550100"></label>', to=to)
        error_html = fill('<p class="error" role="alert">$e</p>', e=error) if error else Safe("")
        return fill(
            '<form method="post" action="$action" class="reply">'
            '<input type="hidden" name="csrf" value="$token">$fields$error$to_field'
            '<label class="body"><span class="label">$label</span>'
            '<textarea name="body" rows="3" required maxlength="1600" '
            'data-gsm="$gsm" data-gsm-ext="$ext" aria-describedby="parts">$body</textarea>'
            '</label><p class="parts" id="parts" aria-live="polite">$parts</p>'
            '<button type="submit" class="send">Send</button></form>',
            action=action, token=self.csrf.token(nonce, "send", action_key(action)),
            fields=fields, error=error_html, to_field=to_field, label=label, gsm=gsm,
            ext=ext, body=body, parts=parts_note(body))

    def search_form(self, root: str, query: str) -> Safe:
        return fill('<form method="get" action="${root}conversations/search" class="search">'
                    '<input type="search" name="q" value="$q" maxlength="64" '
                    'placeholder="number or text" aria-label="Search"> '
                    '<button type="submit">Search</button></form>', root=root, q=query)

    # -- pages

    def home(self, viewer: Any, owns: Sequence[Any], now: float, root: str,
             new_box: Safe, v: int) -> Safe:
        return fill(template("conversations.html"), search=self.search_form(root, ""), v=v,
                    updates=f"{root}conversations/updates", own_rows=self.own_numbers(
                        owns, now, root), new_box=new_box)

    def number(self, own: str, own_key: str, convs: Sequence[Any], now: float, root: str,
               new_box: Safe, more: Optional[str], v: int, live: bool = True) -> Safe:
        more_link = (fill('<p class="more"><a href="?$q">older conversations</a></p>',
                          q=more) if more else Safe(""))
        return fill(template("conversations-number.html"), root=root, own=own, v=v,
                    search=self.search_form(root, ""),
                    updates=f"{root}conversations/{segment(own_key)}/updates" if live else "",
                    conv_rows=self.conversation_rows(convs, now, root), more=more_link,
                    new_box=new_box)

    def thread(self, own: str, own_key: str, peer: str, peer_key: str, entries: Sequence[Any],
               now: float, root: str, owner: bool, reply: Safe, older: Optional[str],
               v: int, live: bool = True) -> Safe:
        older_link = (fill('<p class="more"><a href="?$q">older SMS</a></p>', q=older)
                      if older else Safe(""))
        return fill(template("conversations-thread.html"), root=root, own=own, v=v,
                    own_key=segment(own_key), peer=peer, older=older_link,
                    updates=(f"{root}conversations/{segment(own_key)}/{segment(peer_key)}"
                             "/updates") if live else "",
                    entry_rows=self.entry_rows(entries, now, root, owner), reply=reply)

    def search(self, query: str, entries: Sequence[Any], now: float, root: str,
               note: str) -> Safe:
        rows = []
        for e in entries:
            m = e.message
            rows.append(fill(
                '<li class="hit"><a href="${root}conversations/$own/$peer#m-$id">'
                '<span class="num">$own_shown</span> \u2194 <span class="num">$peer_shown'
                '</span> <span class="last">$when</span>'
                '<span class="preview"><span class="dir">$arrow</span>$text</span></a></li>\n',
                root=root, own=segment(e.own_key), peer=segment(e.peer_key), id=m.id,
                own_shown=e.own, peer_shown=e.peer, when=_when(m.created, now),
                arrow="\u2190 " if m.direction == IN else "\u2192 ", text=_preview(m.body)))
        return fill(template("conversations-search.html"), root=root,
                    search=self.search_form(root, query), note=note,
                    hit_rows=join(rows) or Safe('<li class="none">nothing found</li>'))

    def login(self, root: str, name: str, error: str, next_path: str) -> bytes:
        nonce = self.csrf.nonce()
        error_html = fill('<p class="error" role="alert">$e</p>', e=error) if error else Safe("")
        return fill(template("login.html"), root=root, name=name, error=error_html,
                    token=self.csrf.token(nonce, "login", ""), next=next_path).encode("utf-8")


def action_key(action: str) -> str:
    """What a send form's CSRF token is bound to: the conversation part of its action
    (the relative root in front of it differs from page to page)."""
    return action.rpartition("conversations/")[2]


def _unread(n: int) -> Safe:
    if not n:
        return Safe("")
    return fill(' <span class="unread" title="$title">$n</span>', n=n,
                title=plural(n, "unread SMS", "unread SMS"))


def _preview(body: str, limit: int = 90) -> str:
    text = " ".join(body.split())
    return text if len(text) <= limit else text[: limit - 1] + "\u2026"


def query_string(**values: Any) -> str:
    return urlencode({k: v for k, v in values.items() if v not in (None, "")})


__all__ = ["ConversationPages", "state_of", "segment", "parts_note", "action_key",
           "query_string", "esc"]
