"""Request bodies of webhooks, decoded: forms (nested like PHP's $_POST), multipart, JSON.

- Accepted bodies: application/x-www-form-urlencoded and multipart/form-data (PHP form
  array names such as ``a[b][]`` nest, as in PHP), application/json, text/json and
  application/*+json (any JSON value).  Text is UTF-8 (or US-ASCII); anything else is
  refused with a reason instead of being guessed.
- Fields come from the request body when it is non-empty and yields any field;
  otherwise from the query string.  The two are never merged.
- PHP's quirk is kept: a string value whose JSON decoding is a non-empty object or array
  is replaced by the decoded value (a Zadarma ``result={"caller_id":...}`` field can be
  read inside).  Unlike PHP, values keep their text (numbers are never converted), the
  decoded value remembers the text it came from, and a key given twice in a form or a
  JSON object is remembered (`repeated`) so that a reader can refuse it.

Pure Python: no Twisted.
"""

from __future__ import annotations

import re
from typing import Any, Dict, Iterable, List, Optional, Tuple, Union
from urllib.parse import unquote


# A field tree: what a form, a multipart body or a JSON document decodes to.  Form
# arrays are dicts (PHP arrays are ordered maps), JSON arrays are lists, leaves are
# text (JSON true/false stay booleans and null stays None until `find` reads them).
Tree = Union[Dict[str, Any], List[Any], str, bool, None]


MAX_FIELDS = 1000  # PHP's max_input_vars


MAX_NESTING = 64  # PHP's max_input_nesting_level


class FieldError(ValueError):
    """The request's fields cannot be read; str(error) is a one-line reason."""

    status = 400


class UnsupportedMediaType(FieldError):
    """A body in a format (or charset) the webhook does not read."""

    status = 415


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
    if not has_fields(tree):
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
    root = PhpArray()
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
        php_insert(root, name, value)
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
    root = PhpArray()
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
        php_insert(root, name, _utf8(content, f"multipart field {name!r}"))
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


# -- helpers of the pure layer --------------------------------------------------------


class PhpArray(dict):
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


def _php_set(array: PhpArray, key: Optional[str], value: Any) -> None:
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


def php_insert(root: PhpArray, name: str, value: str) -> None:
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
        if not isinstance(child, PhpArray):
            child = PhpArray()
            _php_set(array, key, child)
        array, key = child, index
    _php_set(array, key, value)


def _unquote_plus(text: str) -> str:
    return unquote(text.replace("+", " "), errors="strict")


def has_fields(tree: Tree) -> bool:
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


EXPANDED = (_JsonDict, _JsonList)


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
