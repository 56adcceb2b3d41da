"""What a webhook says: messages, delivery reports and events to ignore, per interface.

- ``msg_filter`` / ``dlr_filter`` (``path=value``: the text at path equals value;
  ``path``: present and not empty) say what an event is.  A matching ``msg_filter``
  makes a message (it wins over ``dlr_filter``); else a matching ``dlr_filter`` makes a
  delivery report; else the event is a message when no ``msg_filter`` is set, and is
  ignored (acknowledged, counted) when one is.
- A JSON array of objects is a batch of events (Bandwidth), or ``key_events`` names the
  array in a wrapped body (Infobip ``results``).
- Delivery report words are mapped by `REPORT_WORDS` (case-insensitive), overridden by
  ``dlr_map``: delivered, failed or sent.  Intermediate and unknown words are ignored.
- ``val_to`` is the recipient when the event has none; ``val_urldecode`` percent-decodes
  To/From (``+`` stays ``+``) and the text (``+`` is a space, as in a form);
  ``num_country`` writes To and From in E.164; ``key_media`` links are appended to the
  text (nothing is downloaded).

Pure Python: no Twisted.
"""

from __future__ import annotations

import functools
from typing import Any, Dict, Iterable, List, NamedTuple, Optional, Tuple, Union
from urllib.parse import unquote, urlsplit

from websmsd.channel import route_name
from websmsd.config.websmsd import InboundInterface
from websmsd.itsp.body import FieldError, Tree
from websmsd.itsp.fields import View
from websmsd.message import (DELIVERED, FAILED, IN, SENT, Message, UnsafeValue, check_recipient,
                             check_sender)
from websmsd.numbers import NumberError, normalise
from websmsd.text import one_line


SOURCE = "webhook"  # a message's source: webhook:<[websmsd] interface>
MAX_PROVIDER_ID = 200  # characters


MAX_EVENTS = 1000  # events in one JSON array body


MAX_MEDIA = 20  # media links appended to one message


MAX_MEDIA_URL = 2000  # characters of one media link


MAX_DETAIL = 200  # characters of a delivery report's detail


class MissingField(FieldError):
    """The request has no To or no From (under the interface's key names)."""


class Fields(NamedTuple):
    """What one webhook request says, validated."""

    recipient: str
    sender: str
    body: str
    provider_id: Optional[str]
    dropped_media: int = 0  # media links left out (not http(s), too long, too many)


class Report(NamedTuple):
    """A delivery report: what became of the message the provider knows as provider_id."""

    provider_id: str
    status: str  # SENT, DELIVERED or FAILED
    detail: Optional[str]  # the provider's word, and its reason if it gave one


class Ignored(NamedTuple):
    """An event taken for what it is and then left alone (acknowledged, counted)."""

    reason: str  # a fixed text: the key of WebhookResource.ignored
    detail: str = ""  # what makes this one so, for the log (never message text)


MESSAGE = "message"


REPORT = "report"


IGNORED = "ignored"


def view_for(iface: InboundInterface, tree: Tree) -> View:
    """The event `tree` as interface `iface` reads it: its text opaque, its keys
    searched or taken as exact paths (key_lookup)."""
    return tree if isinstance(tree, View) else View(
        tree, iface.key_body, exact=iface.key_lookup == "path")


def extract(iface: InboundInterface, tree: "Union[Tree, View]") -> Fields:
    """The SMS fields of a request (or of one event of a batch) for interface `iface`.

    Raises MissingField naming the missing To/From key(s), DuplicateField when one of
    them is given twice, FieldError for a number num_country cannot read or text
    val_urldecode cannot decode, or message.UnsafeValue when To, From or the provider id
    could smuggle anything into a call file or a log.
    """
    view = view_for(iface, tree)
    keys = [iface.key_to, iface.key_from, iface.key_body]
    if iface.key_id:
        keys.append(iface.key_id)
    values = view.values(keys)
    recipient = values[iface.key_to]
    sender = values[iface.key_from]
    body = values[iface.key_body] or ""
    if iface.val_urldecode:
        decode = iface.val_urldecode
        if recipient is not None and "to" in decode:
            recipient = _urldecode(recipient, "To", plus=False)
        if sender is not None and "from" in decode:
            sender = _urldecode(sender, "From", plus=False)
        if "body" in decode:
            body = _urldecode(body, "the text", plus=True)
    fixed_recipient = recipient is None and iface.val_to is not None
    if fixed_recipient:
        recipient = iface.val_to
    if recipient is None or sender is None:
        missing = [k for k, v in ((iface.key_to, recipient), (iface.key_from, sender)) if v is None]
        raise MissingField("missing " + " and ".join(missing))
    if iface.num_country:
        if not fixed_recipient:
            recipient = _e164(recipient, iface.num_country, "recipient")
        if not _leave_sender_alone(sender):
            sender = _e164(sender, iface.num_country, "sender")
    check_recipient(recipient)
    check_sender(sender)
    dropped = 0
    if iface.key_media:
        links, dropped = media_links(view.all(iface.key_media))
        if links:
            body = body + "\n\n" + "\n".join(links) if body else "\n".join(links)
    provider_id = values[iface.key_id] if iface.key_id else None
    if provider_id == "":
        provider_id = None
    if provider_id is not None:
        _check_provider_id(provider_id)
    return Fields(recipient, sender, body, provider_id, dropped)


def make_message(iface: InboundInterface, fields: Fields) -> Message:
    """The Message a webhook hands to the store (its route, the way to the PBX's phones,
    is the inbound router's to set)."""
    pid = fields.provider_id
    return Message(
        direction=IN,
        route="",
        recipient=fields.recipient,
        sender=fields.sender,
        body=fields.body,
        source=route_name(SOURCE, iface.name),
        provider_id=pid,
        dedupe_key=None if pid is None else f"{iface.name}\x1f{pid}",
    )


def events_of(tree: Tree, key_events: Optional[str] = None) -> List[Tree]:
    """The events of a request: the elements of a JSON array of objects (at the path
    `key_events` when the provider wraps them, e.g. Infobip's `results`), else the
    request itself."""
    if key_events is not None:
        wrapped = _resolve_node(tree, key_events)
        if type(wrapped) is list:
            if len(wrapped) > MAX_EVENTS:
                raise FieldError(f"more than {MAX_EVENTS} events in one request")
            events = [e for e in wrapped if isinstance(e, dict)]
            if len(events) != len(wrapped):
                raise FieldError(f"{key_events} holds something else than event objects")
            return events
    if type(tree) is list and tree and all(isinstance(e, dict) for e in tree):
        if len(tree) > MAX_EVENTS:
            raise FieldError(f"more than {MAX_EVENTS} events in one request")
        return tree
    return [tree]


def matches(tree: Tree, rule: str) -> bool:
    """Whether `tree` matches a filter (see View.matches)."""
    return View(tree).matches(rule)


def classify(iface: InboundInterface, tree: "Union[Tree, View]") -> str:
    """MESSAGE, REPORT or IGNORED, by the interface's msg_filter and dlr_filter."""
    view = view_for(iface, tree)
    if iface.msg_filter is not None and view.matches(iface.msg_filter):
        return MESSAGE
    if iface.dlr_filter is not None and view.matches(iface.dlr_filter):
        return REPORT
    return MESSAGE if iface.msg_filter is None else IGNORED


# Delivery report words of common providers (lower case), and what they mean here.
# Twilio (MessageStatus), Telnyx (to[].status), Bandwidth (type), Sinch (status),
# Vonage (status), SMPP-style receipts (stat:) and Plivo (Status).
REPORT_WORDS = {
    **dict.fromkeys(
        ("delivered", "delivrd", "delivery_succeeded", "message-delivered", "read"), DELIVERED
    ),
    **dict.fromkeys(
        (
            "failed", "undelivered", "delivery_failed", "sending_failed", "rejected",
            "expired", "undeliv", "rejectd", "deleted", "aborted", "cancelled", "canceled",
            "undeliverable", "message-failed",
        ),
        FAILED,
    ),
    **dict.fromkeys(("sent", "submitted", "dispatched", "delivery_unconfirmed"), SENT),
}


# Steps before "sent", or no news: acknowledged and left alone.
INTERMEDIATE_WORDS = frozenset(
    (
        "queued", "accepted", "acceptd", "enroute", "sending", "scheduled", "buffered",
        "receiving", "received", "message-sending", "unknown",
    )
)


@functools.lru_cache(maxsize=64)
def _report_map(dlr_map: Optional[str]) -> Dict[str, str]:
    words = dict(REPORT_WORDS)
    for entry in (dlr_map or "").split(","):
        word, equals, status = entry.partition("=")
        if equals and word.strip():
            words[word.strip().lower()] = status.strip()
    return words


def report_status(word: str, dlr_map: Optional[str] = None) -> Optional[str]:
    """SENT, DELIVERED or FAILED for a provider's status word (dlr_map first), or None."""
    return _report_map(dlr_map).get(word.strip().lower())


def extract_report(iface: InboundInterface, tree: "Union[Tree, View]") -> Union[Report, Ignored]:
    """The delivery report an event is, or why it is left alone."""
    if not iface.dlr_id or not iface.dlr_status:
        return Ignored("dlr_id or dlr_status is not set", "a delivery report was not read")
    keys = [iface.dlr_id, iface.dlr_status]
    if iface.dlr_reason:
        keys.append(iface.dlr_reason)
    values = view_for(iface, tree).values(keys)
    provider_id = values[iface.dlr_id]
    word = values[iface.dlr_status]
    if not provider_id:
        return Ignored("delivery report without a message id", f"nothing at {iface.dlr_id}")
    if not word:
        return Ignored("delivery report without a status", f"nothing at {iface.dlr_status}")
    _check_provider_id(provider_id)
    status = report_status(word, iface.dlr_map)
    shown = one_line(word, 40)
    if status is None:
        if word.strip().lower() in INTERMEDIATE_WORDS:
            return Ignored("intermediate delivery status", shown)
        return Ignored("unknown delivery status", f"{shown} (map it with dlr_map)")
    reason = values[iface.dlr_reason] if iface.dlr_reason else None
    detail = shown if not reason else f"{shown}: {one_line(reason, MAX_DETAIL)}"
    return Report(provider_id, status, one_line(detail, MAX_DETAIL))


def media_links(candidates: Iterable[str]) -> Tuple[List[str], int]:
    """The usable media links of `candidates` (http/https with a host, printable, no
    spaces, at most MAX_MEDIA_URL long; at most MAX_MEDIA of them), and how many were
    left out."""
    links: List[str] = []
    dropped = 0
    for text in candidates:
        if len(links) < MAX_MEDIA and _media_url(text):
            links.append(text)
        elif text:
            dropped += 1
    return links, dropped


def _media_url(text: str) -> bool:
    if not text or len(text) > MAX_MEDIA_URL or not text.isprintable() or " " in text:
        return False
    try:
        parts = urlsplit(text)
    except ValueError:
        return False
    return parts.scheme.lower() in ("http", "https") and bool(parts.hostname)


def _urldecode(value: str, what: str, *, plus: bool) -> str:
    if "%" not in value and not (plus and "+" in value):
        return value
    try:
        return unquote(value.replace("+", " ") if plus else value, errors="strict")
    except UnicodeDecodeError:
        raise FieldError(f"{what} is not valid percent-encoded UTF-8") from None


def _leave_sender_alone(sender: str) -> bool:
    """An alphanumeric sender id, or a short code: not numbers num_country can write."""
    if any(c.isalpha() for c in sender):
        return True
    return sender.isdigit() and sender.isascii() and len(sender) <= 8


class BadNumber(FieldError):
    """A To or From that num_country cannot read as a number."""


def _e164(number: str, country: str, what: str) -> str:
    try:
        return normalise(number, country)
    except NumberError as e:
        raise BadNumber(f"{what} {e}") from None


def _check_provider_id(provider_id: str) -> None:
    if len(provider_id) > MAX_PROVIDER_ID or not provider_id.isprintable():
        shown = repr(provider_id)
        if len(shown) > 40:
            shown = shown[:37] + "..."
        raise UnsafeValue(f"provider id {shown} is too long or has control characters")


def _resolve_node(tree: Tree, path: str) -> Any:
    """What `path` leads to, container or leaf; None when it leads nowhere."""
    node: Any = tree
    for step in path.split("."):
        if isinstance(node, dict):
            node = node.get(step)
        elif isinstance(node, list) and step.isdigit() and step.isascii() and int(step) < len(node):
            node = node[int(step)]
        else:
            return None
    return node
