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
"""

from __future__ import annotations

import re
from typing import Any, Dict, Iterable, List, NamedTuple, Optional, Sequence, Union
from urllib.parse import unquote

from websmsd.message import IN, Message, UnsafeValue, check_recipient, check_sender
from websmsd.settings import InboundInterface, InboundSettings

# A field tree: what a form, a multipart body or a JSON document decodes to.  Form
# arrays are dicts (PHP arrays are ordered maps), JSON arrays are lists, leaves are
# text (JSON true/false stay booleans and null stays None until `find` reads them).
Tree = Union[Dict[str, Any], List[Any], str, bool, None]

MAX_FIELDS = 1000  # PHP's max_input_vars
MAX_NESTING = 64  # PHP's max_input_nesting_level
MAX_PROVIDER_ID = 200  # characters


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


def find(tree: Tree, key: str) -> Optional[str]:
    """The text of `key` in `tree`, or None.

    The tree is walked depth-first in document order over leaf values; a leaf whose key
    equals `key` (case-sensitive) sets the result, the last occurrence wins, and a key
    whose value is an object or array never matches (unless that value was decoded from
    a JSON string: see expand_json_strings).  Array elements have no name.

    A key with a dot is first tried as a path from the root through objects and arrays
    (``data.payload.to.0.phone_number``); if that path leads to no leaf, the whole key
    is looked up as one name.
    """
    return lookup(tree, (key,))[key]


def lookup(tree: Tree, keys: Sequence[str]) -> Dict[str, Optional[str]]:
    """`find` for several keys at once, in one walk of the tree."""
    result: Dict[str, Optional[str]] = {}
    names = set()
    for key in keys:
        if "." in key:
            found, value = _resolve_path(tree, key)
            if found:
                result[key] = _text(value)
                continue
        names.add(key)
    if names:
        leaves = _collect(tree, names)
        for name in names:
            result[name] = _text(leaves.get(name))
    return result


def extract(iface: InboundInterface, tree: Tree) -> Fields:
    """The SMS fields of a request for interface `iface`.

    Raises MissingField naming the missing To/From key(s), or message.UnsafeValue when
    To, From or the provider id could smuggle anything into a call file or a log.
    """
    keys = [iface.key_to, iface.key_from, iface.key_body]
    if iface.key_id:
        keys.append(iface.key_id)
    values = lookup(tree, keys)
    recipient = values[iface.key_to]
    sender = values[iface.key_from]
    if recipient is None or sender is None:
        missing = [k for k, v in ((iface.key_to, recipient), (iface.key_from, sender)) if v is None]
        raise MissingField("missing " + " and ".join(missing))
    check_recipient(recipient)
    check_sender(sender)
    body = values[iface.key_body] or ""
    provider_id = values[iface.key_id] if iface.key_id else None
    if provider_id == "":
        provider_id = None
    if provider_id is not None and (
        len(provider_id) > MAX_PROVIDER_ID or not provider_id.isprintable()
    ):
        shown = repr(provider_id)
        if len(shown) > 40:
            shown = shown[:37] + "..."
        raise UnsafeValue(f"provider id {shown} is too long or has control characters")
    return Fields(recipient, sender, body, provider_id)


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


# -- helpers of the pure layer --------------------------------------------------------


class _PhpArray(dict):
    """A PHP array: an ordered map that knows its next free integer index."""

    __slots__ = ("next_index",)

    def __init__(self) -> None:
        super().__init__()
        self.next_index = 0


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
        _decoder = json.JSONDecoder(parse_int=str, parse_float=str, parse_constant=_no_constant)
    return _decoder


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

    __slots__ = ("text",)


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
    elif isinstance(decoded, list):
        expanded = _JsonList(decoded)
    else:
        return None
    expanded.text = value
    return expanded


def _children(node: Union[dict, list]):
    if isinstance(node, dict):
        return iter(node.items())
    return ((None, v) for v in node)


def _collect(tree: Tree, names: set) -> Dict[str, Any]:
    """The last leaf value of each of `names`, walking depth-first in document order.

    An object or array never matches, except one decoded from a string value: its key
    reads as that string (and what is inside it comes after it in document order).
    """
    found: Dict[str, Any] = {}
    if isinstance(tree, dict):
        # The common flat form: no walk needed unless something nests.
        for key, value in tree.items():
            if isinstance(value, (dict, list)):
                break
            if key in names:
                found[key] = value
        else:
            return found
        found.clear()
    elif not isinstance(tree, list):
        return found
    stack = [_children(tree)]
    while stack:
        for key, value in stack[-1]:
            if isinstance(value, (dict, list)):
                if key in names and isinstance(value, _EXPANDED):
                    found[key] = value.text
                stack.append(_children(value))
                break
            if key in names:
                found[key] = value
        else:
            stack.pop()
    return found


def _resolve_path(tree: Tree, path: str) -> "tuple[bool, Any]":
    node: Any = tree
    for step in path.split("."):
        if isinstance(node, dict):
            if step not in node:
                return False, None
            node = node[step]
        elif isinstance(node, list):
            if not (step.isdigit() and step.isascii()) or int(step) >= len(node):
                return False, None
            node = node[int(step)]
        else:
            return False, None
    if isinstance(node, _EXPANDED):
        return True, node.text
    if isinstance(node, (dict, list)):
        return False, None
    return True, node


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

import functools  # noqa: E402
import io  # noqa: E402
import time  # noqa: E402
from collections import Counter, deque  # noqa: E402
from typing import Callable  # noqa: E402

from twisted.internet.defer import Deferred, maybeDeferred  # noqa: E402
from twisted.logger import Logger  # noqa: E402
from twisted.web.http import RESPONSES  # noqa: E402
from twisted.web.server import NOT_DONE_YET, Request, Site  # noqa: E402
from twisted.web.resource import Resource  # noqa: E402

log = Logger()

Accept = Callable[[List[Message]], "Deferred[List[bool]]"]

_TEXT = b"text/plain; charset=utf-8"
_HTML = b"text/html; charset=UTF-8"  # what the PHP sent; ITSPs parse TwiML etc.
_ALLOWED = (b"GET", b"HEAD", b"POST")
_ALLOW_HEADER = b"GET, HEAD, POST"

# Refusal classes counted in WebhookResource.refusals.
FORBIDDEN = "forbidden"
BAD_REQUEST = "bad_request"
TOO_LARGE = "too_large"
METHOD = "method"
STORE_FAILED = "store_failed"


class WebhookResource(Resource):
    """Every path and method of the webhook listener.

    `accept(messages)` commits messages durably and fires with one bool per message
    (True: new, False: a provider id already stored); it errbacks if it cannot commit.
    The ITSP gets 200 + resp_ack only after it fired, 503 (retry) if it failed.
    """

    isLeaf = True

    def __init__(
        self,
        settings: InboundSettings,
        accept: Accept,
        max_body: int = 1024 * 1024,
        *,
        retry_after: int = 30,
        now: Callable[[], float] = time.time,
    ) -> None:
        super().__init__()
        self.settings = settings
        self.accept = accept
        self.max_body = max_body
        self.retry_after = b"%d" % retry_after
        self.refusals: Counter = Counter()
        self.recent_refusals: deque = deque(maxlen=50)
        self._now = now
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
            tree: Tree = None
            if body:
                content_type = request.getHeader(b"content-type")
                tree = parse_body(
                    None if content_type is None else content_type.decode("latin-1"), body
                )
            if not _has_fields(tree):
                if query_tree is not None:
                    tree = query_tree
                else:
                    tree = parse_form(query) if query else {}
            expand_json_strings(tree)
            fields = extract(iface, tree)
        except FieldError as e:  # 400, or 415 for a body in a format not read here
            return self._refuse(request, e.status, BAD_REQUEST, source, path, str(e))
        except UnsafeValue as e:
            return self._refuse(request, 400, BAD_REQUEST, source, path, f"unsafe value: {e}")

        message = make_message(iface, fields)
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
        new = bool(results[0]) if results else True
        log.info(
            "webhook: inbound SMS {id} {what} from {source} on interface {interface!r}"
            " to {recipient} from {sender}",
            id=message.id,
            what="stored" if new else "already stored (provider id seen before)",
            source=source,
            interface=iface.name,
            recipient=message.recipient,
            sender=message.sender,
            provider_id=message.provider_id,
            duplicate=not new,
        )
        if _gone(request):
            log.info(
                "webhook: {source} went away before SMS {id} was acknowledged",
                source=source,
                id=message.id,
            )
            return
        _finish(request, 200, iface.resp_ack.encode("utf-8"), _HTML)

    def _store_failed(self, failure, request, message, source, path) -> None:
        log.failure(
            "webhook: could not store inbound SMS {id} from {source}",
            failure,
            id=message.id,
            source=source,
        )
        reason = "the message could not be stored; retry later"
        self.record_refusal(STORE_FAILED, 503, source, path, reason)
        if _gone(request):
            return
        request.setHeader(b"Retry-After", self.retry_after)
        _finish(request, 503, (reason + "\n").encode("utf-8"), _TEXT)

    def _bug(self, failure, request) -> None:
        log.failure("webhook: failed to answer a request", failure)
        if not _gone(request) and not getattr(request, "finished", False):
            try:
                _finish(request, 500, b"internal error\n", _TEXT)
            except Exception:
                pass

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
    return site
