"""The inbound webhook: ITSPs post SMS here, websmsd stores them for Asterisk.

Two layers, one file:

1. Field extraction (pure Python, no Twisted): `parse_fields` turns a request body or
   query string into a tree of dicts, lists and text; `find` looks a key up in it the
   way the PHP websmsd.php did; `extract` reads one interface's To/From/Body/id.
2. The Twisted web layer: `WebhookResource` answers every request on purpose (403, 400,
   405, 413, 415, 503, or 200 with resp_ack only once the message is committed),
   `WebhookRequest` refuses oversize bodies before buffering them, and `make_site`
   wires both into a `Site`.

Decisions (see also websms-reference.md, "Inbound request handling"):

- Fields come from the request body when it is non-empty and yields any field;
  otherwise from the query string.  The two are never merged, so a query string cannot
  add to or override what a form or JSON body says.  The PHP read form bodies only.
- Accepted bodies: application/x-www-form-urlencoded and multipart/form-data (PHP form
  array names such as ``a[b][]`` nest, as in PHP), application/json, text/json and
  application/*+json (any JSON value).  Text is UTF-8 (or US-ASCII); anything else is
  refused with a reason instead of being guessed.
- PHP's quirk is kept: a string value whose JSON decoding is a non-empty object or array
  is replaced by the decoded value (a Zadarma ``result={"caller_id":...}`` field is
  searched inside).  Unlike PHP, values keep their text: numbers are never converted
  (``+15551234567`` and ``1e3`` stay as written), JSON true/false read as "true"/"false",
  and the key of such a field still reads as its original text (an SMS text that is
  itself JSON, ``Body=[1,2]``, arrives intact; the PHP delivered an empty body).
- A body of "0" stays "0" (the PHP turned it into "").  A missing body is "".

Today's ITSPs (settings of InboundInterface; see `extract`, `classify`, `extract_report`):

- Keys are names searched at any depth (the shallowest match; a tie or a repeated key
  is refused, never guessed; the text itself is never searched: see `View`), or paths
  into the document (``data.payload.to.0.phone_number``); with key_lookup = path (the
  presets) every key is an exact path.  ``key_media`` is a path whose parts may be
  ``*`` or a glob (``MediaUrl*``, ``data.payload.media.*.url``); its http(s) links are
  appended to the text, one per line after a blank line.  Nothing is downloaded.
- A JSON array of objects is a batch of events (Bandwidth): each element is classified
  and read on its own.  A request whose events can none of them be taken is refused
  (400); otherwise the good ones are taken and each bad one is recorded as a refusal, so
  that one malformed event cannot make a provider retry (and us refuse) a batch forever.
- ``msg_filter`` / ``dlr_filter`` (``path=value``: the text at path equals value;
  ``path``: present and not empty) say what an event is.  A matching ``msg_filter``
  makes a message (it wins over ``dlr_filter``); else a matching ``dlr_filter`` makes a
  delivery report; else the event is a message when no ``msg_filter`` is set, and is
  ignored (acknowledged, counted) when one is.
- Delivery report words are mapped by `REPORT_WORDS` (case-insensitive), overridden by
  ``dlr_map``: delivered, failed or sent.  Intermediate words (queued, accepted,
  sending...) and unknown ones are ignored: a report only ever moves a message forward,
  and "queued at the provider" says nothing our own status does not.
- ``val_to`` is the recipient when the event has none; ``val_urldecode`` percent-decodes
  To/From (``+`` stays ``+``) and the text (``+`` is a space, as in a form);
  ``num_country`` writes To and From in E.164 (an alphanumeric sender or a short code
  sender of up to 8 digits is left as it is; a recipient that cannot be a number is
  refused with the reason, never guessed).
- ``sig_method`` (twilio, telnyx, plivo, vonage, zadarma): the request's signature is
  checked (`websmsd.http.signatures`) against the public URL ``sig_url`` + path and
  query before its body is even parsed; a missing or wrong one is refused with 403
  (refusal kind ``bad_signature``).  The message is then read only from what the
  signature covers (the body, the query, or Zadarma's signed `result` field alone).
  The key_echo probe is answered before the check.
- Answers: ``resp_ack`` with Content-Type ``resp_type`` for messages, reports and
  ignored events alike; 503 + Retry-After when the store cannot commit.
"""

from __future__ import annotations

import contextlib
import functools
import re
from fnmatch import fnmatchcase
from typing import Any, Dict, Iterable, List, NamedTuple, Optional, Sequence, Tuple, Union
from urllib.parse import unquote, urlsplit

from websmsd.message import (
    DELIVERED,
    FAILED,
    IN,
    SENT,
    Message,
    UnsafeValue,
    check_recipient,
    check_sender,
)
from websmsd.numbers import NumberError, normalise
from websmsd.settings import InboundInterface, InboundSettings

# A field tree: what a form, a multipart body or a JSON document decodes to.  Form
# arrays are dicts (PHP arrays are ordered maps), JSON arrays are lists, leaves are
# text (JSON true/false stay booleans and null stays None until `find` reads them).
Tree = Union[Dict[str, Any], List[Any], str, bool, None]

MAX_FIELDS = 1000  # PHP's max_input_vars
MAX_NESTING = 64  # PHP's max_input_nesting_level
MAX_PROVIDER_ID = 200  # characters
MAX_EVENTS = 1000  # events in one JSON array body
MAX_MEDIA = 20  # media links appended to one message
MAX_MEDIA_URL = 2000  # characters of one media link
MAX_DETAIL = 200  # characters of a delivery report's detail


class FieldError(ValueError):
    """The request's fields cannot be read; str(error) is a one-line reason."""

    status = 400


class UnsupportedMediaType(FieldError):
    """A body in a format (or charset) the webhook does not read."""

    status = 415


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


# ---------------------------------------------------------------------------------
# 1. Field extraction (no Twisted here)
# ---------------------------------------------------------------------------------

FORM = "application/x-www-form-urlencoded"
MULTIPART = "multipart/form-data"
_JSON_TYPES = frozenset({"application/json", "text/json"})
_CHARSETS = frozenset({"utf-8", "utf8", "us-ascii", "ascii"})
_WS = " \t\r\n"

# `name=value` or `name="quoted value"` parameters of a header such as Content-Type.
_PARAM = re.compile(r';\s*([!#$%&\'*+.^_`|~0-9A-Za-z-]+)\s*=\s*("(?:[^"\\]|\\.)*"|[^;]*)')
_QUOTED_PAIR = re.compile(r"\\(.)")
# PHP turns ' ' and '.' in a top-level variable name into '_' (and '[' too, in a name
# whose bracket is never closed).
_MANGLE_NAME = str.maketrans(" .", "__")
_MANGLE_REST = str.maketrans(" .[", "___")
_PHP_INT_MAX = 9223372036854775807


def parse_fields(content_type: Optional[str], body: bytes, query: bytes = b"") -> Tree:
    """The fields of a request: from `body` if it has any, else from `query`.

    `content_type` is the request's Content-Type header (None if absent); it matters
    only for a non-empty body.  Raises FieldError (UnsupportedMediaType for a format
    or charset not read here) with a one-line reason.
    """
    tree: Tree = None
    if body:
        tree = parse_body(content_type, body)
    if not _has_fields(tree):
        tree = parse_form(query) if query else {}
    expand_json_strings(tree)
    return tree


def parse_body(content_type: Optional[str], body: bytes) -> Tree:
    """Decode a request body by its Content-Type (no JSON-string expansion yet)."""
    if not content_type:
        raise UnsupportedMediaType("request body without a Content-Type")
    media, _, params = content_type.partition(";")
    media = media.strip().lower()
    if media == FORM:
        _check_charset(media, params)
        return parse_form(body)
    if media == MULTIPART:
        _check_charset(media, params)
        return parse_multipart(body, _boundary(params))
    if media in _JSON_TYPES or (media.startswith("application/") and media.endswith("+json")):
        _check_charset(media, params)
        return parse_json(body)
    raise UnsupportedMediaType(
        f"Content-Type {media or '(empty)'!r} is not read here: send "
        f"{FORM}, {MULTIPART} or application/json"
    )


def parse_form(data: bytes) -> Dict[str, Any]:
    """A URL-encoded form (a POST body or a query string), nested like PHP's $_POST."""
    text = _utf8(data, "form data")
    root = _PhpArray()
    count = 0
    # Like PHP (and urllib.parse.parse_qsl): split on "&" only, "name" alone means
    # "name=", "+" is a space; but decoding is skipped for the common plain field.
    for field in text.split("&"):
        if not field:
            continue
        count += 1
        if count > MAX_FIELDS:
            raise FieldError(f"form data has more than {MAX_FIELDS} fields")
        name, _, value = field.partition("=")
        try:
            if "%" in name or "+" in name:
                name = _unquote_plus(name)
            if "%" in value or "+" in value:
                value = _unquote_plus(value)
        except UnicodeDecodeError:
            raise FieldError("form data is not valid UTF-8 once percent-decoded") from None
        _php_insert(root, name, value)
    return root


def parse_json(data: bytes) -> Tree:
    """A JSON document of any shape; numbers keep their text."""
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise FieldError(f"JSON body is not valid UTF-8 (byte {e.start})") from None
    try:
        return _json_decoder().decode(text)
    except RecursionError:
        raise FieldError("JSON body is nested too deeply") from None
    except ValueError as e:
        raise FieldError(f"invalid JSON body: {e}") from None


def parse_multipart(data: bytes, boundary: bytes) -> Dict[str, Any]:
    """The text fields of a multipart/form-data body; file uploads are skipped."""
    delimiter = b"--" + boundary
    pieces = data.split(delimiter)
    if len(pieces) < 2:
        raise FieldError("multipart body does not contain its boundary")
    root = _PhpArray()
    count = 0
    closed = False
    # pieces[0] is the preamble; each following piece is "<padding>CRLF headers CRLF
    # CRLF content CRLF", and the one after the close delimiter starts with "--".
    for piece in pieces[1:]:
        if piece.startswith(b"--"):
            closed = True
            break
        eol = piece.find(b"\n")
        if eol < 0 or piece[:eol].strip(b" \t\r"):
            raise FieldError("multipart boundary line is malformed")
        part = piece[eol + 1 :]
        head_end = part.find(b"\r\n\r\n")
        sep = 4
        if head_end < 0:
            head_end, sep = part.find(b"\n\n"), 2
        if head_end < 0:
            if part.startswith(b"\r\n"):
                head_end, sep = 0, 2
            elif part.startswith(b"\n"):
                head_end, sep = 0, 1
            else:
                raise FieldError("multipart part has no end of headers")
        headers = part[:head_end]
        content = part[head_end + sep :]
        if content.endswith(b"\r\n"):
            content = content[:-2]
        elif content.endswith(b"\n"):
            content = content[:-1]
        name, is_file = _disposition(headers)
        if name is None or is_file:
            continue
        count += 1
        if count > MAX_FIELDS:
            raise FieldError(f"multipart body has more than {MAX_FIELDS} fields")
        _php_insert(root, name, _utf8(content, f"multipart field {name!r}"))
    if not closed:
        raise FieldError("multipart body is not terminated by its close boundary")
    return root


def expand_json_strings(tree: Tree) -> Tree:
    """Replace, in place, each string value that is a JSON-encoded non-empty object or
    array by its decoding (PHP websmsd.php did this to every form value).

    One level only: strings inside a decoded value are left as they are.  The decoded
    value remembers the text it came from (`.text`), so that its own key still reads
    as that text: an SMS whose text happens to be JSON (``Body=[1,2]``) keeps it,
    where the PHP lost it.
    """
    if not isinstance(tree, (dict, list)):
        return tree
    stack: List[Union[dict, list]] = [tree]
    while stack:
        node = stack.pop()
        pairs: Iterable = node.items() if isinstance(node, dict) else enumerate(node)
        for key, value in pairs:
            if isinstance(value, str):
                if _looks_like_container(value):
                    decoded = _try_json(value)
                    if decoded:
                        node[key] = decoded  # an existing key: the dict keeps its size
            elif isinstance(value, (dict, list)):
                stack.append(value)
    return tree


class DuplicateField(FieldError):
    """A key the message is read from appears more than once where it was found."""


# Where a value was found: the container holding it and its key there.
_Place = Tuple[int, Any]


class View:
    """One event of a request, read the way an interface says.

    Keys are looked up the way a mature reader of untrusted input must, not the way the
    PHP websmsd.php did (which walked every leaf and took the last match, so that an SMS
    whose text is JSON could name its own sender):

    - the text is found first (`opaque`, the interface's key_body) and its value is
      opaque: nothing is ever looked up inside it, whatever it holds (JSON, a form);
    - a key with a dot is a path from the root (``data.payload.to.0.phone_number``;
      through JSON-encoded string values too, as Zadarma's ``result.caller_did``);
    - a plain key is the shallowest match at any depth (``exact``: at the root only);
      when it appears more than once at that depth, the request is refused rather than
      guessed (DuplicateField), and so is a form or JSON object that repeats it;
    - a key whose value is an object or array never matches, unless that value was
      decoded from a string (see expand_json_strings): it reads as that string.
    """

    __slots__ = ("tree", "exact", "_skip", "_opaque", "_opaque_place")

    def __init__(self, tree: Tree, opaque: Optional[str] = None, exact: bool = False):
        self.tree = tree
        self.exact = exact
        self._skip: Optional[_Place] = None
        self._opaque = opaque
        self._opaque_place = None
        if opaque is not None:
            place = self._opaque_place = self._place(opaque)
            if place is not None:
                self._skip = (id(place[0]), place[1])

    def get(self, key: str) -> Optional[str]:
        """The text at `key`, or None."""
        place = self._opaque_place if key == self._opaque else self._place(key)
        if place is None:
            return None
        value = place[0][place[1]]
        return value.text if isinstance(value, _EXPANDED) else _text(value)

    def values(self, keys: Sequence[str]) -> Dict[str, Optional[str]]:
        return {key: self.get(key) for key in keys}

    def all(self, pattern: str) -> List[str]:
        """Every text `pattern` reaches, in document order.

        A part of the dotted pattern may be ``*`` or a glob (``MediaUrl*``) matching any
        key or array index; a path that ends at an array yields its texts.  A pattern
        without wildcards that reaches nothing is looked up like `get`.
        """
        nodes: List[Any] = [self.tree]
        skip = self._skip
        for part in pattern.split("."):
            glob = not _GLOB.isdisjoint(part)
            reached: List[Any] = []
            for node in nodes:
                if isinstance(node, dict):
                    pairs = [(k, v) for k, v in node.items() if fnmatchcase(k, part)] if glob else (
                        [(part, node[part])] if part in node else [])
                elif isinstance(node, list):
                    if glob:
                        pairs = [(i, v) for i, v in enumerate(node) if fnmatchcase(str(i), part)]
                    elif part.isdigit() and part.isascii() and int(part) < len(node):
                        pairs = [(int(part), node[int(part)])]
                    else:
                        pairs = []
                else:
                    continue
                reached.extend(v for k, v in pairs if skip is None or (id(node), k) != skip)
            nodes = reached
            if not nodes:
                break
        found: List[str] = []
        for node in nodes:
            if isinstance(node, list):
                found.extend(v for v in node if isinstance(v, str))
            elif isinstance(node, str):
                found.append(node)
        if not found and _GLOB.isdisjoint(pattern):
            value = self.get(pattern)
            if value:
                found.append(value)
        return found

    def matches(self, rule: str) -> bool:
        """Whether the event matches a filter: ``path=value`` (the text at path equals
        value) or ``path`` (the text at path is present and not empty)."""
        path, equals, value = rule.partition("=")
        found = self.get(path)
        if equals:
            return found == value
        return bool(found)

    # -- where a key is -----------------------------------------------------------------

    def _place(self, key: str) -> Optional[Tuple[Any, Any]]:
        if "." in key:
            place = self._path(key)
            if place is not None or self.exact:
                return place
        return self._shallowest(key)

    def _path(self, path: str) -> Optional[Tuple[Any, Any]]:
        node: Any = self.tree
        place = None
        skip = self._skip
        for step in path.split("."):
            if isinstance(node, dict):
                if step not in node:
                    return None
                key: Any = step
            elif isinstance(node, list):
                if not (step.isdigit() and step.isascii()) or int(step) >= len(node):
                    return None
                key = int(step)
            else:
                return None
            if skip is not None and (id(node), key) == skip:
                return None  # a path into the text: the text is opaque
            _refuse_repeated(node, key)
            place = (node, key)
            node = node[key]
        if place is None or (isinstance(node, (dict, list)) and not isinstance(node, _EXPANDED)):
            return None
        return place

    def _shallowest(self, name: str) -> Optional[Tuple[Any, Any]]:
        tree = self.tree
        if isinstance(tree, dict):
            # The common case, a flat form or object: a match at the root is the
            # shallowest, and a dict holds a key once (`repeated` says if it was sent twice).
            if name in tree and (self._skip is None or self._skip != (id(tree), name)):
                value = tree[name]
                if not isinstance(value, (dict, list)) or isinstance(value, _EXPANDED):
                    if tree.__class__ is not dict:
                        _refuse_repeated(tree, name)
                    return (tree, name)
        elif not isinstance(tree, list):
            return None
        skip = self._skip
        level: List[Any] = [tree]
        while level:
            found: List[Tuple[Any, Any]] = []
            deeper: List[Any] = []
            for node in level:
                if isinstance(node, dict):
                    if name in node and (skip is None or (id(node), name) != skip):
                        value = node[name]
                        if not isinstance(value, (dict, list)) or isinstance(value, _EXPANDED):
                            _refuse_repeated(node, name)
                            found.append((node, name))
                    if self.exact:
                        continue
                    for key, value in node.items():
                        if isinstance(value, (dict, list)) and (skip is None or (id(node), key) != skip):
                            deeper.append(value)
                elif not self.exact:
                    deeper.extend(v for v in node if isinstance(v, (dict, list)))
            if len(found) > 1:
                raise DuplicateField(
                    f"{_short_key(name)} appears {len(found)} times at the same depth:"
                    " refused rather than guessed"
                )
            if found:
                return found[0]
            if self.exact:
                return None
            level = deeper
        return None


def _refuse_repeated(node: Any, key: Any) -> None:
    repeated = getattr(node, "repeated", None)
    if repeated and key in repeated:
        raise DuplicateField(f"{_short_key(key)} is given more than once: refused rather than guessed")


def _short_key(key: Any) -> str:
    text = repr(str(key))
    return text if len(text) <= 42 else text[:39] + "..."


def find(tree: Tree, key: str) -> Optional[str]:
    """The text of `key` in `tree`, or None (`View` says how keys are found)."""
    return View(tree).get(key)


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
    """The Message a webhook hands to the store."""
    pid = fields.provider_id
    return Message(
        direction=IN,
        interface=iface.name,
        recipient=fields.recipient,
        sender=fields.sender,
        body=fields.body,
        channel="webhook",
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
    shown = _one_line(word, 40)
    if status is None:
        if word.strip().lower() in INTERMEDIATE_WORDS:
            return Ignored("intermediate delivery status", shown)
        return Ignored("unknown delivery status", f"{shown} (map it with dlr_map)")
    reason = values[iface.dlr_reason] if iface.dlr_reason else None
    detail = shown if not reason else f"{shown}: {_one_line(reason, MAX_DETAIL)}"
    return Report(provider_id, status, _one_line(detail, MAX_DETAIL))


_GLOB = frozenset("*?[")


def find_all(tree: Tree, pattern: str) -> List[str]:
    """Every text `pattern` reaches in `tree`, in document order (see View.all)."""
    return View(tree).all(pattern)


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


def _one_line(text: str, limit: int) -> str:
    text = "".join(c if c.isprintable() else " " for c in text).strip()
    return text if len(text) <= limit else text[: limit - 3] + "..."


# -- helpers of the pure layer --------------------------------------------------------


class _PhpArray(dict):
    """A PHP array: an ordered map that knows its next free integer index, and which of
    its keys were given more than once (PHP keeps the last; a reader must not guess)."""

    __slots__ = ("next_index", "repeated")

    def __init__(self) -> None:
        super().__init__()
        self.next_index = 0
        self.repeated: Optional[set] = None


_INT_START = frozenset("-0123456789")


def _int_key(key: str) -> Optional[int]:
    """The integer PHP would use for array key `key` ("7", "-3"; not "07" or "+7")."""
    digits = key[1:] if key[:1] == "-" else key
    if not digits.isdigit() or not digits.isascii():
        return None
    if digits[0] == "0" and (len(digits) > 1 or key[0] == "-"):
        return None
    n = int(key)
    return n if -_PHP_INT_MAX - 1 <= n <= _PHP_INT_MAX else None


def _php_set(array: _PhpArray, key: Optional[str], value: Any) -> None:
    if key is None:
        key = str(array.next_index)
        array.next_index += 1
    elif key and key[0] in _INT_START:
        n = _int_key(key)
        if n is not None and n >= array.next_index:
            array.next_index = n + 1
    if key in array:
        if array.repeated is None:
            array.repeated = set()
        array.repeated.add(key)
    array[key] = value


def _php_insert(root: _PhpArray, name: str, value: str) -> None:
    """Store one form field the way PHP registers a request variable."""
    if name[:1] == " ":
        name = name.lstrip(" ")
    bracket = name.find("[")
    if bracket < 0:
        if "." in name or " " in name:
            name = name.translate(_MANGLE_NAME)
        if name:
            _php_set(root, name, value)
        return
    base = name[:bracket].translate(_MANGLE_NAME)
    if not base:
        return
    indexes: List[Optional[str]] = []
    pos = bracket
    end = len(name)
    while True:
        start = pos + 1
        probe = start + 1 if start < end and name[start] == " " else start
        if probe < end and name[probe] == "]":
            indexes.append(None)
            close = probe
        else:
            close = name.find("]", probe)
            if close < 0:
                if not indexes:
                    # "a[b" is the plain name "a_b" in PHP.
                    base = base + "_" + name[start:].translate(_MANGLE_REST)
                break
            indexes.append(name[start:close])
        if len(indexes) >= MAX_NESTING:
            raise FieldError(f"form field nested deeper than {MAX_NESTING} levels")
        pos = close + 1
        if pos >= end or name[pos] != "[":
            break
    array = root
    key: Optional[str] = base
    for index in indexes:
        child = array.get(key) if key is not None else None
        if not isinstance(child, _PhpArray):
            child = _PhpArray()
            _php_set(array, key, child)
        array, key = child, index
    _php_set(array, key, value)


def _unquote_plus(text: str) -> str:
    return unquote(text.replace("+", " "), errors="strict")


def _has_fields(tree: Tree) -> bool:
    return isinstance(tree, (dict, list)) and len(tree) > 0


def _utf8(data: bytes, what: str) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise FieldError(f"{what} is not valid UTF-8 (byte {e.start})") from None


def _params(text: str) -> Dict[str, str]:
    params = {}
    for name, value in _PARAM.findall(";" + text if text and text[0] != ";" else text):
        value = value.strip()
        if value[:1] == '"':
            value = _QUOTED_PAIR.sub(r"\1", value[1:-1])
        params[name.lower()] = value
    return params


def _check_charset(media: str, params: str) -> None:
    if "charset" not in params.lower():
        return
    charset = _params(params).get("charset")
    if charset is not None and charset.lower() not in _CHARSETS:
        raise UnsupportedMediaType(f"charset {charset!r} of {media} is not read here: send UTF-8")


def _boundary(params: str) -> bytes:
    boundary = _params(params).get("boundary")
    if not boundary or len(boundary) > 200:
        raise FieldError("multipart/form-data without a usable boundary parameter")
    try:
        return boundary.encode("ascii")
    except UnicodeEncodeError:
        raise FieldError("multipart boundary is not ASCII") from None


def _disposition(headers: bytes) -> "tuple[Optional[str], bool]":
    """(field name, is a file) from a part's Content-Disposition header."""
    for line in headers.split(b"\n"):
        name, colon, value = line.partition(b":")
        if colon and name.strip().lower() == b"content-disposition":
            text = _utf8(value.strip(), "multipart header")
            kind, _, rest = text.partition(";")
            if kind.strip().lower() != "form-data":
                return None, False
            params = _params(rest)
            return params.get("name"), "filename" in params or "filename*" in params
    return None, False


_decoder = None


def _no_constant(name: str) -> None:
    raise ValueError(f"{name} is not JSON")


def _json_decoder():
    global _decoder
    if _decoder is None:
        import json

        # Numbers keep the text they were written with: "+1555..." style numbers are
        # not JSON anyway, but 15551234567 or 1e3 must reach the store as written.
        _decoder = json.JSONDecoder(parse_int=str, parse_float=str, parse_constant=_no_constant,
                                    object_pairs_hook=_json_object)
    return _decoder


class _RepeatedDict(dict):
    """A JSON object that names a key more than once (JSON keeps the last)."""

    __slots__ = ("repeated",)


def _json_object(pairs: List[Tuple[str, Any]]) -> dict:
    obj = dict(pairs)
    if len(obj) == len(pairs):
        return obj
    seen: set = set()
    repeated = {k for k, _ in pairs if k in seen or seen.add(k)}
    out = _RepeatedDict(obj)
    out.repeated = repeated
    return out


def _looks_like_container(value: str) -> bool:
    first = value[:1]
    if first == "{" or first == "[":
        return True
    if first and first in _WS:
        first = value.lstrip(_WS)[:1]
        return first == "{" or first == "["
    return False


class _JsonDict(dict):
    """An object decoded from a string value; `text` is that string."""

    __slots__ = ("text", "repeated")


class _JsonList(list):
    """An array decoded from a string value; `text` is that string."""

    __slots__ = ("text",)


_EXPANDED = (_JsonDict, _JsonList)


def _try_json(value: str) -> Any:
    try:
        decoded = _json_decoder().decode(value)
    except (ValueError, RecursionError):
        return None
    if isinstance(decoded, dict):
        expanded: Any = _JsonDict(decoded)
        expanded.repeated = getattr(decoded, "repeated", None)
    elif isinstance(decoded, list):
        expanded = _JsonList(decoded)
    else:
        return None
    expanded.text = value
    return expanded


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


def _text(value: Any) -> Optional[str]:
    if value is None or isinstance(value, str):
        return value
    if value is True:
        return "true"
    if value is False:
        return "false"
    return str(value)


# ---------------------------------------------------------------------------------
# 2. The Twisted web layer.  Imported here, below the pure layer, so that the part
#    above can be read (and lifted out) without Twisted.
# ---------------------------------------------------------------------------------

import io  # noqa: E402
import time  # noqa: E402
from collections import Counter, deque  # noqa: E402
from typing import Callable  # noqa: E402

from twisted.internet.defer import Deferred, DeferredList, maybeDeferred  # noqa: E402
from twisted.logger import Logger  # noqa: E402
from twisted.web.http import RESPONSES, HTTPChannel  # noqa: E402
from twisted.web.server import NOT_DONE_YET, Request, Site  # noqa: E402
from twisted.web.resource import Resource  # noqa: E402

from websmsd.http import signatures  # noqa: E402

log = Logger()

Accept = Callable[[List[Message]], "Deferred[List[bool]]"]
# report(provider_id, status, detail) -> Deferred[our message id, or None if unknown]
ReportSink = Callable[[str, str, Optional[str]], "Deferred[Optional[str]]"]

_TEXT = b"text/plain; charset=utf-8"
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

    def __init__(
        self,
        settings: InboundSettings,
        accept: Accept,
        max_body: int = 1024 * 1024,
        *,
        report: Optional[ReportSink] = None,
        retry_after: int = 30,
        now: Callable[[], float] = time.time,
    ) -> None:
        super().__init__()
        self.settings = settings
        self.accept = accept
        self.report = report
        self.max_body = max_body
        self.retry_after = b"%d" % retry_after
        self.refusals: Counter = Counter()
        self.recent_refusals: deque = deque(maxlen=50)
        # Events acknowledged but not taken, by reason; and the last ones (time, source,
        # path, reason: never message text).
        self.ignored: Counter = Counter()
        self.recent_ignored: deque = deque(maxlen=50)
        # Delivery reports taken, by our status ("unknown": no message has that id).
        self.reports: Counter = Counter()
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
                        path=_short(path),
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
                tree = _PhpArray()
                for name, value in signed.fields:
                    _php_insert(tree, name, value)
            else:
                tree = None
                if body and (signed is None or signed.body):
                    content_type = request.getHeader(b"content-type")
                    tree = parse_body(
                        None if content_type is None else content_type.decode("latin-1"), body
                    )
                if not _has_fields(tree):
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
                    f"{_short(reason, 250)} (one event of {len(events)}; the others were taken)",
                )
        if not messages and not reports:
            body, content_type = self._ack(iface)
            return _answer(request, 200, body, content_type)

        work = []
        if messages:
            work.append(maybeDeferred(self.accept, messages))
        for r in reports:
            work.append(maybeDeferred(self.report, r.provider_id, r.status, r.detail))
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
        path = _short(path)
        self.ignored[ignored.reason] += 1
        self.recent_ignored.append(
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
        reason = _short(reason.replace("\r", " ").replace("\n", " "), 300)
        self.record_refusal(kind, status, source, path, reason)
        return _answer(request, status, (reason + "\n").encode("utf-8"), _TEXT)

    def record_refusal(self, kind: str, status: int, source: str, path: str, reason: str) -> None:
        """Count, remember and log one refused request (never its body or secrets)."""
        path = _short(path)
        self.refusals[kind] += 1
        self.recent_refusals.append(
            {
                "time": self._now(),
                "kind": kind,
                "status": status,
                "source": source,
                "path": path,
                "reason": reason,
            }
        )
        log.warn(
            "webhook refused ({status}) a request from {source} for {path}: {reason}",
            kind=kind,
            status=status,
            source=source,
            path=path,
            reason=reason,
        )

    def refused_early(self, request, status: int, kind: str, path: bytes, reason: str) -> None:
        """Called by WebhookRequest when it refused a request before it was rendered."""
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


def _short(path: str, limit: int = 200) -> str:
    return path if len(path) <= limit else path[: limit - 3] + "..."


def _body_of(request) -> bytes:
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


def _answer(request, status: int, body: bytes, content_type: bytes) -> bytes:
    """Prepare a synchronous answer; render() returns what this returns."""
    request.setResponseCode(status)
    request.setHeader(b"Content-Type", content_type)
    request.setHeader(b"Content-Length", b"%d" % len(body))
    if content_type is _TEXT:
        # Refusal reasons and echoes carry client text: never let a browser sniff HTML.
        request.setHeader(b"X-Content-Type-Options", b"nosniff")
    return b"" if request.method == b"HEAD" else body


def _finish(request, status: int, body: bytes, content_type: bytes) -> None:
    body = _answer(request, status, body, content_type)
    if body:
        request.write(body)
    request.finish()


def _gone(request) -> bool:
    # Both Twisted 22.4 and 26 set Request._disconnected in connectionLost; finish()
    # raises on such a request.
    return bool(getattr(request, "_disconnected", False))


class WebhookRequest(Request):
    """A Request that refuses an oversize body instead of buffering it.

    twisted.web buffers any request body in full (in memory or a temporary file)
    before a resource sees it.  Here a Content-Length above `max_body` is answered 413
    as soon as the headers are in, and a chunked body is cut off once it exceeds it;
    either way the connection is closed and nothing is rendered.  The body is kept in
    memory (it is capped), and form bodies are not pre-parsed into `args`: the resource
    reads them itself.
    """

    max_body = 1024 * 1024
    _refused = False
    _received = 0

    def __init__(self, channel, *args, max_body=None, on_refusal=None, **kw):
        super().__init__(channel, *args, **kw)
        if max_body is not None:
            self.max_body = max_body
        self._on_refusal = on_refusal

    def gotLength(self, length):
        self.content = io.BytesIO()
        if length is not None and length > self.max_body:
            self._refuse_too_large(
                f"request body of {length} bytes is larger than the limit of {self.max_body}"
            )

    def handleContentChunk(self, data):
        if self._refused:
            return
        self._received += len(data)
        if self._received > self.max_body:
            self._refuse_too_large(f"request body larger than {self.max_body} bytes")
            return
        self.content.write(data)

    def requestReceived(self, command, path, version):
        if self._refused:
            return  # answered already; the connection is closing
        # What http.Request.requestReceived does, minus parsing form bodies into args
        # (wasted work here, and Twisted 22.4 answers a bare 400 to a bad multipart).
        self.content.seek(0, 0)
        self.method, self.uri = command, path
        self.clientproto = version
        self.path = path.split(b"?", 1)[0]
        self.process()

    @property
    def args(self):
        """The query arguments (bytes -> [bytes]), parsed on first use."""
        args = self.__dict__.get("_args")
        if args is None:
            uri = self.__dict__.get("uri")
            if uri is None:
                return {}  # not received yet
            from urllib.parse import parse_qs

            query = uri.partition(b"?")[2]
            args = parse_qs(query, 1) if query else {}
            self.__dict__["_args"] = args
        return args

    @args.setter
    def args(self, value):
        self.__dict__["_args"] = value

    def _refuse_too_large(self, reason: str) -> None:
        self._refused = True
        channel = self.channel
        # Otherwise the channel would send "100 Continue" after our answer.
        self.requestHeaders.removeHeader(b"expect")
        body = (reason + "\n").encode("utf-8")
        # No Request machinery here: the request line has not been handed over yet and
        # must never be, so the answer goes straight to the transport, the way the
        # channel itself answers framing errors (but with a reason).
        channel.transport.write(
            b"".join(
                [
                    b"HTTP/1.1 413 ",
                    RESPONSES.get(413, b"Request Entity Too Large"),
                    b"\r\nContent-Type: ",
                    _TEXT,
                    b"\r\nContent-Length: %d" % len(body),
                    b"\r\nX-Content-Type-Options: nosniff\r\nConnection: close\r\n\r\n",
                    body,
                ]
            )
        )
        channel.loseConnection()
        if self._on_refusal is not None:
            path = getattr(channel, "_path", b"") or b""
            try:
                self._on_refusal(self, 413, TOO_LARGE, path, reason)
            except Exception:
                log.failure("webhook: recording a refusal failed")


def make_site(
    resource: Resource,
    max_body: Optional[int] = None,
    *,
    timeout: float = 60,
    reactor=None,
    log_path: Optional[str] = None,
) -> Site:
    """A Site serving `resource` whose requests refuse bodies over `max_body` bytes.

    `max_body` defaults to the resource's own max_body.  Oversize refusals are counted
    by the resource when it has a `refused_early` method (WebhookResource has).
    """
    if max_body is None:
        max_body = getattr(resource, "max_body", WebhookRequest.max_body)
    factory = functools.partial(
        WebhookRequest,
        max_body=max_body,
        on_refusal=getattr(resource, "refused_early", None),
    )
    site = Site(
        resource, requestFactory=factory, timeout=timeout, reactor=reactor, logPath=log_path
    )
    site.displayTracebacks = False
    # Plain HTTP/1.1 (no HTTP/2 negotiation wrapper: nothing here speaks h2).
    site.protocol = ExplainingHTTPChannel
    if log_path is None and hasattr(resource, "log_summary"):
        # No access log line per webhook: the resource logs refusals one by one and a
        # summary of what it stored (the access line doubled the cost of a request).
        site.log = _no_access_log
    return site


def _no_access_log(request) -> None:
    """Site.log replacement for the webhook: no access line per request."""


class ExplainingHTTPChannel(HTTPChannel):
    """twisted.web's HTTP/1.1 channel, but a request it cannot even frame (a bad request
    line, bad headers, an impossible length) is answered with a reason, not a bare 400."""

    _host = None

    def getHost(self):
        # Every Request asks for it, and a TCP transport answers with a getsockname()
        # system call each time; it cannot change during a connection.
        if self._host is None:
            self._host = self.transport.getHost()
        return self._host

    def _respondToBadRequestAndDisconnect(self) -> None:
        body = b"400 malformed HTTP request (request line, headers or framing)\n"
        self.transport.write(
            b"HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain; charset=utf-8\r\n"
            b"Content-Length: %d\r\nConnection: close\r\n\r\n%s" % (len(body), body)
        )
        self.loseConnection()
