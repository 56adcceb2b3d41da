"""Outbound SMS to an ITSP's HTTP API: the request websms.php sent, sent with treq.

Two layers, so that the part that must match the PHP byte for byte can be tested as plain
function calls:

1. Pure functions (this half of the module imports nothing from Twisted or treq):
   `http_build_query` and `php_ksort` (PHP's, exactly), `build_request` (the fields,
   the val_* rules, num_country, the auth methods, the form or JSON body or the GET
   query) and `check_response` (status classes, resp_check and resp_id).
2. `ITSPClient`: sends an `OutboundRequest` with treq over a persistent connection pool,
   verifies TLS certificates, enforces a timeout and turns every result, network errors
   included, into an `Outcome`.  Twisted is imported only when this class is used.

What differs from websms.php on purpose (see websms-reference.md, "Known defects"):
certificates are verified, there is a timeout, a `User-Agent: websmsd/<version>` header
is sent, success is a 2xx status plus (when set) resp_check, and a failed attempt is
reported as transient (retry) or permanent (do not resend).

What websms.php could not do, for today's JSON APIs (all off by default, so that a PHP
websms.conf sends exactly what it sent before): `encoding = json` (key_* and val_static
keys are paths into a JSON document), `method = GET|PUT`, `auth_method = bearer|header|
query`, `num_country` (numbers in E.164 first) and `resp_id` (the provider's message id
from the answer).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import math
import re
from dataclasses import dataclass, field, replace
from functools import cmp_to_key
from typing import (
    Any,
    Callable,
    Dict,
    Iterable,
    List,
    Mapping,
    MutableMapping,
    Optional,
    Sequence,
    Tuple,
    Union,
)
from urllib.parse import urlsplit

from websmsd import __version__
from websmsd.settings import OutboundInterface

__all__ = [
    "ITSPClient",
    "InvalidNumber",
    "Outcome",
    "OutboundRequest",
    "RequestError",
    "TLSConfigError",
    "build_fields",
    "build_request",
    "check_response",
    "encode_form",
    "encode_json",
    "evaluate_resp_check",
    "excerpt",
    "http_build_query",
    "json_document",
    "load_ca_bundle",
    "php_ksort",
    "response_id",
    "safe_url",
    "zadarma_signature",
]

# --------------------------------------------------------------------------------------
# PHP's http_build_query and ksort
# --------------------------------------------------------------------------------------

# PHP urlencode() (what http_build_query uses with the default PHP_QUERY_RFC1738) leaves
# only these bytes alone; a space becomes "+", every other byte %XX in upper case.  Note
# that "~" is NOT among them (Python's quote_plus leaves it alone; PHP does not).
_UNRESERVED = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.")
_BYTE_CODES = tuple(
    chr(b) if b in _UNRESERVED else "+" if b == 0x20 else "%%%02X" % b for b in range(256)
)

Pairs = Iterable[Tuple[Any, Any]]


def _has_surrogates(text: str) -> bool:
    """Whether `text` holds surrogates (bytes smuggled in by surrogateescape)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def _to_bytes(value: Union[str, bytes]) -> bytes:
    """A PHP string is bytes: UTF-8, and raw bytes smuggled in by surrogateescape."""
    if isinstance(value, bytes):
        return value
    if not _has_surrogates(value):
        return value.encode("utf-8")
    try:
        return value.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:  # a lone surrogate that stands for no byte
        return value.encode("utf-8", "replace")


def _urlencode(value: Union[str, bytes]) -> str:
    return "".join([_BYTE_CODES[b] for b in _to_bytes(value)])


def _scalar_text(value: Any) -> Optional[Union[str, bytes]]:
    """How http_build_query writes a scalar; None (PHP null) writes nothing at all."""
    if value is None:
        return None
    if value is True:
        return "1"
    if value is False:
        return "0"
    if isinstance(value, (str, bytes)):
        return value
    if isinstance(value, int):
        return str(value)
    raise TypeError(f"http_build_query: cannot encode a {type(value).__name__}")


def _items(data: Union[Mapping[Any, Any], Pairs]) -> List[Tuple[Any, Any]]:
    if isinstance(data, Mapping):
        return list(data.items())
    return list(data)


def _build(prefix: Optional[str], data: Any, out: List[str]) -> None:
    if prefix is not None and isinstance(data, (list, tuple)):
        items: List[Tuple[Any, Any]] = list(enumerate(data))
    else:
        items = _items(data)  # type: ignore[arg-type]
    for key, value in items:
        name = _urlencode(str(key) if isinstance(key, int) else key)
        if prefix is not None:
            name = f"{prefix}%5B{name}%5D"
        if isinstance(value, (Mapping, list)):
            _build(name, value, out)
            continue
        text = _scalar_text(value)
        if text is not None:
            out.append(f"{name}={_urlencode(text)}")


def http_build_query(pairs: Union[Mapping[Any, Any], Pairs]) -> str:
    """PHP's ``http_build_query($data)`` with its defaults, byte for byte.

    `pairs` is a mapping or an iterable of (key, value) pairs, written in the order given
    (sort first with `php_ksort` to get what websms.php sent).  Keys and values are
    UTF-8 encoded and percent-encoded as PHP's ``urlencode()``: ``A-Z a-z 0-9 - _ .``
    unchanged, space as ``+``, every other byte ``%XX`` in upper case (``~`` is
    ``%7E``); pairs are joined with ``&``.  Like PHP: a None value is left out, True and
    False are ``1`` and ``0``, and a nested mapping or list becomes ``key[sub]=value``
    (brackets encoded, list positions as sub-keys), ready for nested key paths.
    """
    out: List[str] = []
    _build(None, pairs, out)
    return "&".join(out)


_PHP_INT_MIN = -(2**63)
_PHP_INT_MAX = 2**63 - 1
_CANONICAL_INT = re.compile(r"0|-?[1-9][0-9]*")
_WS = " \t\n\r\v\f"
_NUMERIC = re.compile(
    r"[ \t\n\r\v\f]*([+-]?(?:[0-9]+(\.[0-9]*)?|(\.)[0-9]+)([eE][+-]?[0-9]+)?)[ \t\n\r\v\f]*"
)


def _array_key(key: str) -> Union[int, str]:
    """What a PHP array does with a string key: "12" becomes the integer 12.

    Only canonical decimal integers within PHP_INT_MIN..PHP_INT_MAX are converted:
    "012", "-0", "+1", " 1", "1.0" and "9223372036854775808" stay strings.
    """
    if _CANONICAL_INT.fullmatch(key):
        number = int(key)
        if _PHP_INT_MIN <= number <= _PHP_INT_MAX:
            return number
    return key


def _numeric(text: str) -> Optional[Tuple[Union[int, float], int]]:
    """PHP 8's is_numeric_string(): (number, overflow) for a numeric string, else None.

    Leading and (since PHP 8) trailing whitespace is allowed, hex and "inf" are not.  An
    integer-looking string beyond PHP_INT becomes a float with overflow -1 or 1, as in
    PHP; overflow is 0 otherwise.
    """
    match = _NUMERIC.fullmatch(text)
    if match is None:
        return None
    number, fraction, dot, exponent = match.groups()
    if fraction is None and dot is None and exponent is None:
        value = int(number)
        if _PHP_INT_MIN <= value <= _PHP_INT_MAX:
            return value, 0
        return float(number), (1 if value > 0 else -1)
    return float(number), 0


def _three_way(a: Any, b: Any) -> int:
    return (a > b) - (a < b)


def _compare_strings(a: str, b: str) -> int:
    """zendi_smart_strcmp(): numerically if both are numeric strings, else byte order."""
    na, nb = _numeric(a), _numeric(b)
    if na is not None and nb is not None:
        (va, oa), (vb, ob) = na, nb
        # Integers overflowed to the same side cannot be told apart as numbers; PHP
        # compares their text instead (and so for two equal infinities below).
        if not (oa and oa == ob and float(va) == float(vb)):
            if isinstance(va, float) or isinstance(vb, float):
                if not isinstance(va, float):
                    if ob:
                        return -ob
                    return _three_way(float(va), vb)
                if not isinstance(vb, float):
                    if oa:
                        return oa
                    return _three_way(va, float(vb))
                if not (va == vb and math.isinf(va)):
                    return _three_way(va, vb)
            else:
                return _three_way(va, vb)
    return _three_way(_to_bytes(a), _to_bytes(b))


def _compare_int_string(number: int, text: str) -> int:
    """PHP 8's comparison of an integer with a string (compare_longs_to_string)."""
    parsed = _numeric(text)
    if parsed is not None:
        value = parsed[0]
        if isinstance(value, int):
            return _three_way(number, value)
        return _three_way(float(number), value)
    return _three_way(str(number).encode("ascii"), _to_bytes(text))


def _compare_keys(a: Union[int, str], b: Union[int, str]) -> int:
    if isinstance(a, int) and isinstance(b, int):
        return _three_way(a, b)
    if isinstance(a, str) and isinstance(b, str):
        return _compare_strings(a, b)
    if isinstance(a, int):
        return _compare_int_string(a, b)  # type: ignore[arg-type]
    return -_compare_int_string(b, a)  # type: ignore[arg-type]


def php_ksort(data: Union[Mapping[str, Any], Pairs]) -> List[Tuple[str, Any]]:
    """The (key, value) pairs of `data` in the order PHP 8.2+ ``ksort($data)`` leaves them.

    Keys that PHP stores as integers (canonical decimal integers such as "7" or "-12")
    compare numerically with each other; two other keys compare as PHP 8 compares
    strings: numerically when both are numeric strings ("01", "1.5", " 2"), else byte by
    byte (upper case before lower case, "_" between them, UTF-8 after ASCII); an integer
    key and a string key compare numerically when the string is numeric, else as the
    integer's decimal text against the string, byte by byte.  Keys that compare equal
    keep their order (PHP 8's sort is stable).  Keys keep their original text.

    For ordinary key names (letters, "_", "-") this is plain byte order.  One caveat:
    with digit-only keys mixed with keys that merely start with digits ("9", "10",
    "1a": 9 < 10 < "1a" < 9) PHP's comparison is not an order at all, and PHP's result
    then depends on its sort algorithm and the input order; this function returns a
    deterministic order that may differ from PHP's in exactly those cases.
    """
    items = _items(data)
    decorated = [(_array_key(k) if isinstance(k, str) else k, k, v) for k, v in items]
    decorated.sort(key=cmp_to_key(lambda x, y: _compare_keys(x[0], y[0])))
    return [(k, v) for _, k, v in decorated]


# --------------------------------------------------------------------------------------
# The request websms.php sent
# --------------------------------------------------------------------------------------

USER_AGENT = f"websmsd/{__version__}"
FORM_CONTENT_TYPE = "application/x-www-form-urlencoded"
# RFC 8259: JSON exchanged between systems is UTF-8 and application/json has no charset
# parameter.
JSON_CONTENT_TYPE = "application/json"
# The PHP always POSTs.  PUT sends the same body; GET sends the fields, form-encoded, as
# the query string and no body (voip.ms and other older APIs).
DEFAULT_METHOD = "POST"
METHODS = ("POST", "PUT", "GET")

Fields = MutableMapping[str, Any]  # ordered like a PHP array: insertion order, keys unique
Header = Tuple[bytes, bytes]


class RequestError(ValueError):
    """The configuration cannot produce a request that is safe to send."""


class InvalidNumber(RequestError):
    """num_country is set and To or From cannot be a phone number: sending this message
    again would fail again, so the attempt fails for good (no request is sent)."""


@dataclass(frozen=True)
class OutboundRequest:
    """One HTTP request for an ITSP, ready to be put on the wire.

    `headers` are the ones websmsd sets (Host, Content-Length and the like are the HTTP
    client's); `url` is the full URL, query string (GET fields, query auth) included;
    `fields` are the fields in body order (for JSON: the key paths in document order),
    `warnings` what the PHP would have logged as warnings (incomplete or unknown auth
    settings).  The repr shows no header value, query, field or body: they hold
    credentials and the text of the message.
    """

    method: str
    url: str
    headers: Tuple[Header, ...] = field(repr=False)
    body: bytes = field(repr=False)
    fields: Tuple[Tuple[str, Any], ...] = field(default=(), repr=False)
    warnings: Tuple[str, ...] = ()

    def header(self, name: Union[str, bytes]) -> Optional[bytes]:
        """The value of header `name` (any case), or None."""
        want = (name.encode("ascii") if isinstance(name, str) else name).lower()
        for key, value in self.headers:
            if key.lower() == want:
                return value
        return None

    def __repr__(self) -> str:
        names = ", ".join(k.decode("ascii", "replace") for k, _ in self.headers)
        return (
            f"OutboundRequest({self.method} {safe_url(self.url)}, headers=[{names}], "
            f"{len(self.body)} body bytes)"
        )


def _php_empty(value: Optional[str]) -> bool:
    """PHP's empty() for a config string: unset, "" and "0" all count as empty.

    websms.php tests credentials and resp_check with empty(), so a secret of "0" is
    "not defined" there; websmsd keeps that, so that a config behaves the same.
    """
    return value is None or value == "" or value == "0"


_ASTRAL = re.compile("[\U00010000-\U0010FFFF]")


def _apply_unicode(iface: OutboundInterface, fields: Fields) -> None:
    """val_unicode: `UCS-2` replaces characters above U+FFFF (emoji...) by U+FFFD;
    `key=value` adds that pair when the body has such characters (the ITSP then knows
    to send it as UCS-2 / UTF-16).  Anything else, `UTF-8` included, changes nothing."""
    setting = iface.val_unicode
    if not setting:
        return
    body = fields.get(iface.key_body)
    if not isinstance(body, str):
        return
    if "=" in setting:
        key, value = setting.split("=")[:2]
        if _ASTRAL.search(body):
            fields[key] = value
    elif setting.lower() == "ucs-2":
        fields[iface.key_body] = _ASTRAL.sub("\ufffd", body)


_STRIP_NUMFORMS = frozenset({"e164", "e.164", "no+", "omit+"})


def _strip_international(number: Any) -> Any:
    if not isinstance(number, str):
        return number
    if number.startswith("+"):
        number = number[1:]
    if number.startswith("00"):
        number = number[2:]
    return number


def _apply_numform(iface: OutboundInterface, fields: Fields) -> None:
    """val_numform: `E164`, `E.164`, `no+` (and the older `omit+`), any case, strip a
    leading "+" and then a leading "00" from To and From; `E.123` or anything else
    leaves them as they are."""
    if (iface.val_numform or "").lower() not in _STRIP_NUMFORMS:
        return
    for key in (iface.key_to, iface.key_from):
        if key in fields:
            fields[key] = _strip_international(fields[key])


def _json_body(iface: OutboundInterface) -> bool:
    """Whether the fields go out as a JSON document (GET sends them in the query)."""
    return iface.encoding == "json" and (iface.method or DEFAULT_METHOD).upper() != "GET"


def _json_literal(key: str, text: str) -> Any:
    def constant(name: str) -> Any:
        raise ValueError(f"{name} is not JSON")

    try:
        return json.loads(text, parse_constant=constant)
    except (ValueError, RecursionError) as e:
        reason = getattr(e, "msg", None) or str(e)
        raise RequestError(f"val_static {key}:= is not a JSON value ({reason})") from None


def _apply_static(iface: OutboundInterface, fields: Fields, raw_json: bool = False) -> None:
    """val_static: `k1=v1,k2=v2` added as they are (no trimming); an entry without "="
    is ignored, `a=b=c` adds a=b (PHP's list() takes the first two parts), and a key
    that is already there (To, From, Body...) is overwritten in place.

    For a JSON body (`raw_json`), `k:=<json>` adds the JSON value itself (a number,
    true/false/null, an object) where `k=v` adds the string v."""
    setting = iface.val_static
    if _php_empty(setting):
        return
    for entry in setting.split(","):  # type: ignore[union-attr]
        if "=" in entry:
            key, value = entry.split("=")[:2]
            if raw_json and key.endswith(":") and len(key) > 1:
                key = key[:-1]
                fields[key] = _json_literal(key, value)
            else:
                fields[key] = value


# A letter of any script: an alphanumeric sender ("Acme", "ÅngströmAB") is a name.
_LETTER = re.compile(r"[^\W\d_]")
# A sender short code ("72345"); tried as a number first: 8 digits is a whole national
# number in Denmark or Norway.
_SHORT_CODE = re.compile(r"[0-9]{3,8}")


def normalise_numbers(iface: OutboundInterface, to: str, sender: str) -> Tuple[str, str]:
    """To and From in E.164 (`+46701234567`) when num_country is set, else unchanged.

    Senders that are not phone numbers are left alone: an empty one (the ITSP's
    default), one with a letter in it (an alphanumeric sender ID), and a short code
    (3 to 8 digits that are no number of num_country).  Raises InvalidNumber, naming
    the field and why.
    """
    if not iface.num_country:
        return to, sender
    from websmsd.numbers import NumberError, normalise

    try:
        to = normalise(to, iface.num_country)
    except NumberError as e:
        raise InvalidNumber(f"To {e}") from None
    if sender.strip() and not _LETTER.search(sender):
        try:
            sender = normalise(sender, iface.num_country)
        except NumberError as e:
            if not _SHORT_CODE.fullmatch(sender):
                raise InvalidNumber(f"From {e}") from None
    return to, sender


def build_fields(iface: OutboundInterface, to: str, sender: str, body: str) -> Dict[str, Any]:
    """The SMS fields of the request, before authentication, in PHP array order.

    `{key_to: to, key_from: sender, key_body: body}`, then val_unicode, val_numform and
    val_static, in that order, as websms.php applies them.  With num_country, To and
    From are first put in E.164 (InvalidNumber if they cannot be numbers), so that
    val_numform sees "+...".  For a JSON body the keys are paths (see json_document)
    and val_static may add JSON values (`k:=...`).
    """
    to, sender = normalise_numbers(iface, to, sender)
    fields: Dict[str, Any] = {iface.key_to: to, iface.key_from: sender, iface.key_body: body}
    _apply_unicode(iface, fields)
    _apply_numform(iface, fields)
    _apply_static(iface, fields, raw_json=_json_body(iface))
    return fields


def encode_form(fields: Union[Mapping[str, Any], Pairs]) -> Tuple[str, bytes]:
    """The body websms.php sent: ksort, then http_build_query.  (content type, bytes)

    Keys are taken literally, as the PHP did: `to[]` is the form key "to[]".
    """
    return FORM_CONTENT_TYPE, http_build_query(php_ksort(fields)).encode("ascii")


_APPEND = object()  # a trailing "[]": append the value to a list
_INDEX = re.compile(r"[0-9]+")


def _path_steps(path: str) -> List[Any]:
    """A key path as steps: str (object member), int (array position) or _APPEND."""
    steps: List[Any] = []
    parts = path.split(".")
    for number, part in enumerate(parts):
        listed = part.endswith("[]")
        name = part[:-2] if listed else part
        if name == "":
            raise RequestError(f"key path {path!r} has an empty part")
        # The document is an object, so a first part of digits is a member name.
        steps.append(int(name) if number and _INDEX.fullmatch(name) else name)
        if listed:
            steps.append(_APPEND if number == len(parts) - 1 else 0)
    return steps


def _place(document: Dict[str, Any], path: str, value: Any) -> None:
    steps = _path_steps(path)
    container: Any = document
    where = ""
    for number, step in enumerate(steps):
        last = number == len(steps) - 1
        if step is _APPEND:
            if not isinstance(container, list):
                raise RequestError(f"key path {path!r}: {where} is already an object")
            container.append(value)
            return
        shown = where + (f"[{step}]" if isinstance(step, int) else f".{step}" if where else step)
        if isinstance(step, int) != isinstance(container, list):
            kind = "an array" if isinstance(container, list) else "an object"
            raise RequestError(f"key path {path!r}: {where or 'the document'} is already {kind}")
        if isinstance(step, int) and step > len(container):
            raise RequestError(
                f"key path {path!r}: {shown} skips position {len(container)} of the array"
            )
        present = step < len(container) if isinstance(step, int) else step in container
        if last:
            if present and isinstance(container[step], (dict, list)):
                raise RequestError(f"key path {path!r}: {shown} is already filled by another key")
            if isinstance(step, int) and not present:
                container.append(value)
            else:
                container[step] = value
            return
        if not present:
            following = steps[number + 1]
            child: Any = [] if following is _APPEND or isinstance(following, int) else {}
            if isinstance(step, int):
                container.append(child)
            else:
                container[step] = child
        elif not isinstance(container[step], (dict, list)):
            raise RequestError(f"key path {path!r}: {shown} already holds a value")
        container = container[step]
        where = shown


def _valid_text(text: str) -> str:
    """Text that is valid UTF-8: a byte that came in undecodable (surrogateescape) is
    U+FFFD, as JSON has no way to carry it."""
    if not _has_surrogates(text):
        return text
    try:
        return text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    except UnicodeEncodeError:
        return text.encode("utf-8", "replace").decode("utf-8")


def _valid_json(value: Any) -> Any:
    if isinstance(value, str):
        return _valid_text(value)
    if isinstance(value, dict):
        return {_valid_text(k): _valid_json(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_valid_json(v) for v in value]
    return value


def json_document(fields: Union[Mapping[str, Any], Pairs]) -> Dict[str, Any]:
    """The JSON object the fields make, their keys read as paths, in their order.

    Dots separate object members; a part of digits (not the first) is an array
    position (`messages.0.to`: {"messages": [{"to": ...}]}, positions filled in order);
    a trailing "[]" makes the value a list (`to[]`: {"to": ["+1..."]}; another pair
    with the key `to[]` appends, but in the fields of a request each key occurs once)
    and in the middle of a path stands for position 0 (`to[].number`).
    RequestError when two keys would need the same place to be two things.
    """
    document: Dict[str, Any] = {}
    for path, value in _items(fields):
        _place(document, str(path), _valid_json(value))
    return document


def encode_json(fields: Union[Mapping[str, Any], Pairs]) -> Tuple[str, bytes]:
    """The fields as a JSON document (see json_document), UTF-8, compact, keys in the
    order given.  (content type, bytes)"""
    text = json.dumps(
        json_document(fields), ensure_ascii=False, separators=(",", ":"), allow_nan=False
    )
    return JSON_CONTENT_TYPE, text.encode("utf-8")


def zadarma_signature(url_path: str, query: Union[str, bytes], secret: str) -> str:
    """Zadarma's request signature, as its API documentation and websms.php compute it:
    base64(hex(hmac_sha1(secret, url_path + query + md5_hex(query)))).  The HMAC is taken
    as lower-case hex text (PHP's hash_hmac), and that text is base64-encoded."""
    query_bytes = _to_bytes(query)
    message = _to_bytes(url_path) + query_bytes + hashlib.md5(query_bytes).hexdigest().encode("ascii")
    digest = hmac.new(_to_bytes(secret), message, hashlib.sha1).hexdigest()
    return base64.b64encode(digest.encode("ascii")).decode("ascii")


Encoder = Callable[[Mapping[str, Any]], Tuple[str, bytes]]
Query = List[Tuple[str, str]]
# An auth method may add fields or URL query parameters and returns the headers it
# needs; it gets the encoder so that a signature covers exactly the bytes that are sent.
AuthMethod = Callable[[OutboundInterface, Fields, Encoder, Query], List[Header]]

_INCOMPLETE = (
    "auth_method {!r} but not all needed parameters are defined; sending without authentication"
)


class _Incomplete(Exception):
    """The auth method's settings are incomplete (websms.php then sent without auth)."""


def _auth_none(iface: OutboundInterface, fields: Fields, encode: Encoder, query: Query) -> List[Header]:
    return []


def _auth_plain(iface: OutboundInterface, fields: Fields, encode: Encoder, query: Query) -> List[Header]:
    """The credentials as two more fields, key_user and key_secret (form fields, JSON
    members, or query parameters with GET)."""
    needed = (iface.key_user, iface.auth_user, iface.key_secret, iface.auth_secret)
    if any(_php_empty(v) for v in needed):
        raise _Incomplete()
    fields[iface.key_user] = iface.auth_user  # type: ignore[index]
    fields[iface.key_secret] = iface.auth_secret  # type: ignore[index]
    return []


def _auth_basic(iface: OutboundInterface, fields: Fields, encode: Encoder, query: Query) -> List[Header]:
    if _php_empty(iface.auth_user) or _php_empty(iface.auth_secret):
        raise _Incomplete()
    token = base64.b64encode(_to_bytes(f"{iface.auth_user}:{iface.auth_secret}"))
    return [(b"Authorization", b"Basic " + token)]


def _auth_zadarma(iface: OutboundInterface, fields: Fields, encode: Encoder, query: Query) -> List[Header]:
    if _php_empty(iface.auth_user) or _php_empty(iface.auth_secret):
        raise _Incomplete()
    _, signed = encode(fields)
    user, secret = str(iface.auth_user), str(iface.auth_secret)
    sign = zadarma_signature(iface.url_path, signed, secret)
    return [(b"Authorization", _to_bytes(user) + b":" + sign.encode("ascii"))]


def _auth_bearer(iface: OutboundInterface, fields: Fields, encode: Encoder, query: Query) -> List[Header]:
    """`Authorization: Bearer <auth_secret>` (an API token or a JWT, RFC 6750)."""
    if _php_empty(iface.auth_secret):
        raise _Incomplete()
    return [(b"Authorization", b"Bearer " + _to_bytes(str(iface.auth_secret)))]


_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")  # an HTTP header name (RFC 9110)


def _auth_header(iface: OutboundInterface, fields: Fields, encode: Encoder, query: Query) -> List[Header]:
    """`<auth_header>: [<auth_scheme> ]<auth_secret>`, the header Authorization unless
    auth_header names another (`AccessKey xxx`, `App xxx`, `X-API-Key: xxx`)."""
    if _php_empty(iface.auth_secret):
        raise _Incomplete()
    name = iface.auth_header or "Authorization"
    if not _TOKEN.fullmatch(name):
        raise RequestError(f"auth_header {name!r} is not an HTTP header name")
    value = _to_bytes(str(iface.auth_secret))
    if iface.auth_scheme:
        value = _to_bytes(iface.auth_scheme) + b" " + value
    return [(name.encode("ascii"), value)]


def _auth_query(iface: OutboundInterface, fields: Fields, encode: Encoder, query: Query) -> List[Header]:
    """`<key_secret>=<auth_secret>` (after `<key_user>=<auth_user>` when both are set)
    in the URL's query string, whatever the method (voip.ms api_username/api_password)."""
    if _php_empty(iface.key_secret) or _php_empty(iface.auth_secret):
        raise _Incomplete()
    if not _php_empty(iface.key_user) and not _php_empty(iface.auth_user):
        query.append((str(iface.key_user), str(iface.auth_user)))
    query.append((str(iface.key_secret), str(iface.auth_secret)))
    return []


# Case-sensitive, as in the PHP (whose methods are the first four).
AUTH_METHODS: Dict[str, AuthMethod] = {
    "none": _auth_none,
    "plain": _auth_plain,
    "basic": _auth_basic,
    "zadarma": _auth_zadarma,
    "bearer": _auth_bearer,
    "header": _auth_header,
    "query": _auth_query,
}

_UNSAFE_HEADER_VALUE = re.compile(rb"[\x00\r\n]")


def _with_query(url: str, query: str) -> str:
    """`url` with `query` appended to its query string (before any fragment)."""
    if not query:
        return url
    base, hash_, fragment = url.partition("#")
    if "?" not in base:
        base += "?"
    elif not base.endswith(("?", "&")):
        base += "&"
    return base + query + hash_ + fragment


def build_request(iface: OutboundInterface, to: str, sender: str, body: str) -> OutboundRequest:
    """The request for this SMS: the one websms.php would send, plus websmsd's
    User-Agent, for every setting the PHP had; the new settings (encoding, method,
    the bearer, header and query auth methods, num_country) change it as documented.

    Raises RequestError when the settings cannot make a safe request (a URL that is not
    http(s), an auth_user that would break the Authorization header, conflicting JSON
    key paths), and InvalidNumber when num_country is set and To or From cannot be a
    phone number.
    """
    url = iface.url
    scheme = url.split(":", 1)[0].lower() if ":" in url else ""
    if scheme not in ("http", "https"):
        raise RequestError(f"url_host must start with http:// or https:// (got {safe_url(url)!r})")
    method = (iface.method or DEFAULT_METHOD).upper()
    if method not in METHODS:
        raise RequestError(f"method {iface.method!r} is not one of {', '.join(METHODS)}")
    encoding = iface.encoding or "form"
    if encoding not in ("form", "json"):
        raise RequestError(f"encoding {iface.encoding!r} is neither form nor json")

    fields = build_fields(iface, to, sender, body)
    encode: Encoder = encode_json if _json_body(iface) else encode_form
    warnings: List[str] = []
    if encoding == "json" and method == "GET":
        warnings.append("encoding json does not apply to method GET: the fields go in the query string")
    auth = AUTH_METHODS.get(iface.auth_method)
    auth_headers: List[Header] = []
    auth_query: Query = []
    if auth is None:
        warnings.append(
            f"unknown auth_method {iface.auth_method!r}; sending without authentication"
        )
    else:
        try:
            auth_headers = auth(iface, fields, encode, auth_query)
        except _Incomplete:
            warnings.append(_INCOMPLETE.format(iface.auth_method))

    content_type, payload = encode(fields)
    url = _with_query(url, "&".join(f"{_urlencode(k)}={_urlencode(v)}" for k, v in auth_query))
    headers: List[Header] = [(b"Accept", b"*/*")]
    if method == "GET":
        url = _with_query(url, payload.decode("ascii"))
        payload = b""
    else:
        headers.append((b"Content-Type", content_type.encode("ascii")))
    headers += [*auth_headers, (b"User-Agent", USER_AGENT.encode("ascii"))]
    for name, value in headers:
        if _UNSAFE_HEADER_VALUE.search(value):
            raise RequestError(
                f"the {name.decode()} header would contain a line break"
                " (check auth_user, auth_secret and auth_scheme)"
            )
    return OutboundRequest(
        method=method,
        url=url,
        headers=tuple(headers),
        body=payload,
        fields=tuple(fields.items()) if encode is encode_json else tuple(php_ksort(fields)),
        warnings=tuple(warnings),
    )


# --------------------------------------------------------------------------------------
# The answer
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Outcome:
    """What one attempt achieved.

    ok: the ITSP took the message.  permanent: it did not, and sending the same request
    again would not help or could send the SMS twice; otherwise the failure is transient
    and the attempt may be retried.  reason: one line for the log and the status page,
    with no credential in it.  status: the HTTP status, None when no answer came.
    """

    ok: bool
    permanent: bool
    reason: str
    status: Optional[int] = None
    # The ITSP's id for the message, found at resp_id in a successful answer (for
    # delivery reports and the status page); None when resp_id is unset or not there.
    provider_id: Optional[str] = None


EXCERPT_CHARS = 120


def _escape(text: str) -> str:
    out = []
    for ch in text:
        code = ord(ch)
        if ch == "\n":
            out.append("\\n")
        elif ch == "\r":
            out.append("\\r")
        elif ch == "\t":
            out.append("\\t")
        elif code < 0x20 or 0x7F <= code < 0xA0:
            out.append("\\x%02x" % code)
        elif code in (0x2028, 0x2029, 0xFEFF):
            out.append("\\u%04x" % code)
        else:
            out.append(ch)
    return "".join(out)


def _secrets_of(iface: OutboundInterface) -> List[str]:
    """The texts that must never appear in a reason or a log line."""
    secrets: List[str] = []
    secret = iface.auth_secret
    if secret:
        secrets.append(secret)
        # As it may come back: form- or URL-encoded, or escaped in a JSON string.
        escaped = (json.dumps(secret)[1:-1], json.dumps(secret, ensure_ascii=False)[1:-1])
        for encoded in (_urlencode(secret), *escaped):
            if encoded != secret and encoded not in secrets:
                secrets.append(encoded)
        if iface.auth_user is not None:
            secrets.append(
                base64.b64encode(_to_bytes(f"{iface.auth_user}:{secret}")).decode("ascii")
            )
    return sorted(secrets, key=len, reverse=True)


def _redact(text: str, secrets: Sequence[str]) -> str:
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    return text


def excerpt(data: Union[bytes, str], secrets: Sequence[str] = (), limit: int = EXCERPT_CHARS) -> str:
    """A short, single-line, escaped view of a response body for a reason or log line."""
    text = data.decode("utf-8", "replace") if isinstance(data, bytes) else data
    text = _redact(text.strip(), secrets)
    shown = _escape(text[: limit * 2])
    if len(shown) > limit:
        shown = shown[: limit - 3] + "..."
    return shown


def safe_url(url: str) -> str:
    """The URL without user info, query or fragment: fit for a log line."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        if ":" in host:
            host = f"[{host}]"
        port = f":{parts.port}" if parts.port is not None else ""
    except ValueError:
        return "<unparsable URL>"
    if not parts.scheme:
        return _escape(url.split("?", 1)[0])[:200]
    return _escape(f"{parts.scheme}://{host}{port}{parts.path}")[:200]


class _JSONNumber(str):
    """A JSON number kept as its text: `1.0` stays "1.0", `1e3` stays "1e3"."""


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


_MISSING = object()


def _last_leaf(document: Any, key: str) -> Any:
    """The value of the last leaf called `key`, at any depth (depth first, in document
    order), like PHP's array_walk_recursive: objects and arrays are walked into, only
    scalars are leaves, and array positions are not keys.  _MISSING if there is none."""
    found: Any = _MISSING
    stack: List[Any] = [iter([(None, document)])]
    while stack:
        try:
            name, value = next(stack[-1])
        except StopIteration:
            stack.pop()
            continue
        if isinstance(value, dict):
            stack.append(iter(value.items()))
        elif isinstance(value, list):
            stack.append(((None, item) for item in value))
        elif name == key:
            found = value
    return found


def _json_text(value: Any) -> str:
    if value is None:
        return "null"
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, _JSONNumber):
        return str(value)
    return json.dumps(value, ensure_ascii=False)


@dataclass(frozen=True)
class _Verdict:
    ok: bool
    detail: str


_REGEX_FLAGS = {"i": re.IGNORECASE, "m": re.MULTILINE, "s": re.DOTALL, "x": re.VERBOSE, "u": 0}
_BRACKETS = {"(": ")", "[": "]", "{": "}", "<": ">"}


def _split_delimited(check: str) -> Optional[Tuple[str, str]]:
    """(pattern, modifiers) of a PCRE-style `/pattern/flags`, or None if it is not one.

    As preg_match(): leading whitespace is skipped; the delimiter is any character but
    a letter, digit, backslash or NUL; (), [], {} and <> pair up; a backslash escapes
    the closing delimiter.
    """
    text = check.lstrip(_WS)
    if not text:
        return None
    start = text[0]
    if start.isalnum() or start in "\\\x00":
        return None
    end = _BRACKETS.get(start, start)
    depth = 1
    i = 1
    while i < len(text):
        ch = text[i]
        if ch == "\\":
            i += 2
            continue
        if ch == end and end != start:
            depth -= 1
        elif ch == start and end != start:
            depth += 1
        elif ch == end:
            depth = 0
        if depth == 0:
            return text[1:i], text[i + 1 :]
        i += 1
    return None


def _regex_check(pattern: str, modifiers: str, body: bytes) -> _Verdict:
    flags = 0
    for letter in modifiers:
        if letter in " \n\r":
            continue
        if letter not in _REGEX_FLAGS:
            return _Verdict(False, f"resp_check modifier {letter!r} is not supported (use i, m, s, x)")
        flags |= _REGEX_FLAGS[letter]
    try:
        compiled = re.compile(pattern, flags)
    except (re.error, ValueError, OverflowError, RecursionError) as e:
        return _Verdict(False, f"resp_check is not a usable regular expression ({e})")
    text = body.decode("utf-8", "replace")
    try:
        matched = compiled.search(text) is not None
    except (RecursionError, MemoryError) as e:  # pragma: no cover - defensive
        return _Verdict(False, f"resp_check regular expression failed ({type(e).__name__})")
    return _Verdict(matched, "matched" if matched else "did not match")


def _key_value_check(key: str, want: str, body: bytes) -> _Verdict:
    try:
        document = json.loads(
            body,
            parse_int=_JSONNumber,
            parse_float=_JSONNumber,
            parse_constant=_reject_constant,
        )
    except (ValueError, RecursionError):
        return _Verdict(False, "the response is not JSON")
    value = _last_leaf(document, key)
    if value is _MISSING:
        return _Verdict(False, f"no {key!r} in the response")
    # A JSON string matches by its text, a number by its JSON text (1.0 is not 1);
    # true, false and null never match (websms.php compared with ===).
    if isinstance(value, str) and str(value) == want:
        return _Verdict(True, "matched")
    return _Verdict(False, f"{key} is {_escape(_json_text(value))[:60]}")


def evaluate_resp_check(check: Optional[str], body: bytes) -> Optional[Tuple[bool, str]]:
    """Test a 2xx response body against resp_check; None when there is no check.

    A complete `/pattern/flags` (any PCRE delimiter) is a regular expression searched
    in the raw body text (Python `re` syntax, flags i m s x); otherwise a value with "="
    is `key=value` (split on "=", the first two parts), looked up among the leaf keys
    of the JSON response.  websms.php took any value with "=" for key=value, so
    `/status=ok/` was the key "/status" there; here it is the regex it looks like.
    Never raises.  Returns (passed, why).
    """
    if _php_empty(check):
        return None
    assert check is not None
    delimited = _split_delimited(check)
    if delimited is not None:
        verdict = _regex_check(delimited[0], delimited[1], body)
    elif "=" in check:
        key, want = check.split("=")[:2]
        verdict = _key_value_check(key, want, body)
    else:
        verdict = _Verdict(False, "resp_check is neither key=value nor /regex/")
    return verdict.ok, verdict.detail


MAX_PROVIDER_ID = 200  # characters; as the webhook's key_id


def response_id(path: Optional[str], body: bytes) -> Optional[str]:
    """The provider's message id at `path` in a JSON answer, or None.

    The path syntax of the JSON keys: dots between object members, a part of digits is
    an array position when it meets an array (`message_uuid.0`, `data.messages.0.id`;
    against an object it is a member name), and `name[]` is `name.0`.  A string is
    taken as it is, a number as its JSON text; anything else, an empty or unprintable
    value, or one over MAX_PROVIDER_ID characters gives None.  Never raises.
    """
    if not path:
        return None
    try:
        value: Any = json.loads(
            body, parse_int=_JSONNumber, parse_float=_JSONNumber, parse_constant=_reject_constant
        )
    except (ValueError, RecursionError):
        return None
    for part in path.split("."):
        names = [part[:-2], "0"] if part.endswith("[]") else [part]
        for name in names:
            if isinstance(value, dict) and name in value:
                value = value[name]
            elif isinstance(value, list) and _INDEX.fullmatch(name) and int(name) < len(value):
                value = value[int(name)]
            else:
                return None
    if not isinstance(value, str):  # _JSONNumber is a str
        return None
    text = str(value)
    if not text or len(text) > MAX_PROVIDER_ID or not text.isprintable():
        return None
    return text


def check_response(
    iface: OutboundInterface,
    status: int,
    body: bytes,
    location: Optional[str] = None,
) -> Outcome:
    """Judge an ITSP's answer.

    Sent: a 2xx status and, when resp_check is set, a passing resp_check (without one,
    any 2xx counts, even with an empty or non-JSON body; a 204 has no content to
    check and counts too).  Transient (retry): 5xx, 408, 429 and any status outside
    1xx-5xx.  Permanent: 3xx (redirects are not followed; `location`, the Location
    header, says where it pointed), the other 4xx, and a 2xx whose resp_check fails:
    the ITSP answered, so sending again could send twice.  When sent, provider_id is
    the value at resp_id in the answer (see response_id).
    """
    secrets = _secrets_of(iface)
    shown = excerpt(body, secrets)
    tail = f": {shown}" if shown else ""
    if 200 <= status < 300:
        provider_id = response_id(iface.resp_id, body)
        verdict = evaluate_resp_check(iface.resp_check, body)
        if verdict is None:
            return Outcome(True, False, f"HTTP {status}{tail}", status, provider_id)
        if status == 204:
            return Outcome(True, False, "HTTP 204 (no content: resp_check not applied)", status)
        passed, why = verdict
        check = _escape(iface.resp_check or "")
        if passed:
            return Outcome(
                True, False, f"HTTP {status}, resp_check {check} matched{tail}", status, provider_id
            )
        return Outcome(
            False, True, f"HTTP {status} but resp_check {check} failed: {why}{tail}", status
        )
    if 300 <= status < 400:
        where = f" to {safe_url(location)}" if location else ""
        return Outcome(
            False,
            True,
            f"HTTP {status} redirect{where} (not followed; check url_host and url_path)",
            status,
        )
    if status in (408, 429) or 500 <= status < 600:
        return Outcome(False, False, f"HTTP {status}{tail}", status)
    if 400 <= status < 500:
        return Outcome(False, True, f"HTTP {status}{tail}", status)
    return Outcome(False, False, f"unexpected HTTP status {status}{tail}", status)


# --------------------------------------------------------------------------------------
# Twisted / treq
# --------------------------------------------------------------------------------------

MAX_RESPONSE = 1024 * 1024  # bytes of a response body kept; the rest is read and dropped

_PEM_CERT = re.compile(rb"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", re.S)


class TLSConfigError(Exception):
    """tls_ca cannot be used (unreadable, or no certificate in it)."""


def load_ca_bundle(path: str) -> Any:
    """A Twisted trust root made of every certificate in the PEM file `path`.

    For an ITSP (or a test server) with a private CA or a self-signed certificate:
    only these certificates are trusted, the system store is not consulted, and the
    host name is still verified.  Raises TLSConfigError.
    """
    from twisted.internet import ssl

    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise TLSConfigError(f"tls_ca {path}: {e.strerror or e}") from None
    certificates = []
    for block in _PEM_CERT.findall(data):
        try:
            certificates.append(ssl.Certificate.loadPEM(block))
        except Exception as e:
            raise TLSConfigError(f"tls_ca {path}: a certificate cannot be read ({e})") from None
    if not certificates:
        raise TLSConfigError(f"tls_ca {path}: no PEM certificate in it")
    return ssl.trustRootFromCertificates(certificates)


def _failure_reasons(exc: BaseException) -> List[BaseException]:
    """The exception and those wrapped in it (twisted.web's ResponseFailed & co.)."""
    seen: List[BaseException] = []
    pending = [exc]
    while pending and len(seen) < 20:
        current = pending.pop(0)
        seen.append(current)
        for inner in getattr(current, "reasons", None) or ():
            value = getattr(inner, "value", inner)
            if isinstance(value, BaseException):
                pending.append(value)
    return seen


def _describe_error(exc: BaseException, url: str) -> str:
    """One line naming what went wrong on the way to the ITSP."""
    from twisted.internet import error
    from twisted.web.error import SchemeNotSupported

    try:
        parts = urlsplit(url)
        where = parts.hostname or "?"
        if parts.port is not None:
            where += f":{parts.port}"
    except ValueError:
        where = "?"
    reasons = _failure_reasons(exc)
    for e in reasons:
        name = type(e).__name__
        module = type(e).__module__
        if name == "VerificationError" and module.startswith("service_identity"):
            return (
                "TLS certificate verification failed: "
                f"the certificate of {where} is not valid for that name"
            )
    for e in reasons:
        if type(e).__module__.startswith("OpenSSL"):
            text = str(e)
            if "certificate verify failed" in text:
                return f"TLS certificate verification failed for {where} (certificate not trusted)"
            return f"TLS handshake with {where} failed ({excerpt(text, limit=80)})"
    for e in reasons:
        if isinstance(e, error.ConnectionRefusedError):
            return f"connection refused by {where}"
        if isinstance(e, error.DNSLookupError):
            return f"DNS lookup failed for {where}"
        if isinstance(e, error.TimeoutError):
            return f"timeout connecting to {where}"
        if isinstance(e, error.NoRouteError):
            return f"no route to {where}"
        if isinstance(e, SchemeNotSupported):
            return f"unsupported URL scheme ({safe_url(url)})"
        if isinstance(e, error.ConnectError):
            return f"cannot connect to {where} ({excerpt(str(e), limit=80)})"
    for e in reasons:
        if isinstance(e, (error.ConnectionLost, error.ConnectionDone)):
            return f"connection to {where} closed before a complete answer"
    last = reasons[-1]
    return f"request to {where} failed ({type(last).__name__}: {excerpt(str(last), limit=80)})"


class ITSPClient:
    """Sends SMS to ITSP HTTP APIs with treq.

    One persistent connection pool per trust configuration (the system store, or one
    per tls_ca file), so a connection verified against one CA is never reused for an
    interface that trusts another.  Certificates are always verified
    (BrowserLikePolicyForHTTPS: chain and host name); redirects are not followed; the
    whole exchange, body included, is bounded by `timeout` seconds.

    `treq_client` replaces the real HTTP client (treq.testing.StubTreq in tests); it is
    then used for every interface.
    """

    def __init__(
        self,
        reactor: Any,
        timeout: float = 30.0,
        treq_client: Any = None,
        max_response: int = MAX_RESPONSE,
    ) -> None:
        from twisted.logger import Logger

        self._reactor = reactor
        self.timeout = timeout
        self.max_response = max_response
        self._injected = treq_client
        self._clients: Dict[Optional[str], Tuple[Any, Any]] = {}
        self._log = Logger(namespace="websmsd.itsp", source=self)

    # -- plumbing ---------------------------------------------------------------------

    def policy_for(self, iface: OutboundInterface) -> Any:
        """The TLS policy for this interface: verifying, against tls_ca if it is set."""
        from twisted.web.client import BrowserLikePolicyForHTTPS

        if iface.tls_ca:
            return BrowserLikePolicyForHTTPS(trustRoot=load_ca_bundle(iface.tls_ca))
        return BrowserLikePolicyForHTTPS()

    def client_for(self, iface: OutboundInterface) -> Any:
        """The treq HTTPClient for this interface (built on first use)."""
        if self._injected is not None:
            return self._injected
        key = iface.tls_ca or None
        entry = self._clients.get(key)
        if entry is None:
            from http.cookiejar import CookieJar, DefaultCookiePolicy

            from treq.client import HTTPClient
            from twisted.web.client import Agent, HTTPConnectionPool

            pool = HTTPConnectionPool(self._reactor, persistent=True)
            agent = Agent(self._reactor, contextFactory=self.policy_for(iface), pool=pool)
            # The PHP kept no cookies between requests; neither do we.
            jar = CookieJar(policy=DefaultCookiePolicy(allowed_domains=[]))
            entry = (HTTPClient(agent, cookiejar=jar), pool)
            self._clients[key] = entry
        return entry[0]

    def close(self) -> Any:
        """Close the pooled connections (at shutdown).  Returns a Deferred."""
        from twisted.internet import defer

        pools = [pool for _, pool in self._clients.values()]
        self._clients.clear()
        return defer.gatherResults([pool.closeCachedConnections() for pool in pools])

    # -- sending ----------------------------------------------------------------------

    def send(self, iface: OutboundInterface, to: str, sender: str, body: str) -> Any:
        """Send one SMS; a Deferred that fires with an Outcome.

        It does not errback for network trouble: a refused connection, a DNS failure, a
        TLS verification failure, a timeout or an unusable configuration become a
        transient Outcome whose reason names the error.
        """
        from twisted.internet import defer

        return defer.ensureDeferred(self._send(iface, to, sender, body))

    async def _send(self, iface: OutboundInterface, to: str, sender: str, body: str) -> Outcome:
        from twisted.internet import defer

        log_url = safe_url(iface.url)
        started = self._reactor.seconds()
        try:
            outcome = await self._attempt(iface, to, sender, body)
        except defer.CancelledError:
            raise  # the caller cancelled send(): that is its answer
        except Exception:
            # A bug, not the network: still an answer the dispatcher can act on.
            self._log.failure("interface {iface!r} {url}: internal error", iface=iface.name, url=log_url)
            outcome = Outcome(False, False, "internal error while sending (see the log)")
        elapsed_ms = int(round((self._reactor.seconds() - started) * 1000))
        fields = dict(
            iface=iface.name, url=log_url, status=outcome.status, elapsed_ms=elapsed_ms,
            ok=outcome.ok, permanent=outcome.permanent,
        )
        if outcome.ok:
            # No reason here: the answer may quote the text of the message.
            if outcome.provider_id is not None:
                self._log.info(
                    "interface {iface!r} {url}: sent, HTTP {status} in {elapsed_ms} ms,"
                    " id {provider_id}",
                    provider_id=outcome.provider_id,
                    **fields,
                )
            else:
                self._log.info(
                    "interface {iface!r} {url}: sent, HTTP {status} in {elapsed_ms} ms", **fields
                )
        else:
            self._log.warn(
                "interface {iface!r} {url}: {verdict} after {elapsed_ms} ms: {reason}",
                verdict="failed for good" if outcome.permanent else "not sent, will retry",
                reason=outcome.reason,
                **fields,
            )
        return outcome

    async def _attempt(self, iface: OutboundInterface, to: str, sender: str, body: str) -> Outcome:
        from twisted.internet import defer

        secrets = _secrets_of(iface)
        try:
            request = build_request(iface, to, sender, body)
            client = self.client_for(iface)
        except InvalidNumber as e:
            # The message itself is wrong: no request, and no retry would help.
            return Outcome(False, True, f"not sent: {_redact(str(e), secrets)}")
        except (RequestError, TLSConfigError) as e:
            return Outcome(False, False, f"cannot send: {_redact(str(e), secrets)}")
        for warning in request.warnings:
            self._log.warn("interface {iface!r}: {warning}", iface=iface.name, warning=warning)

        state: Dict[str, Any] = {"step": None, "timed_out": False}

        def on_timeout() -> None:
            state["timed_out"] = True
            if state["step"] is not None:
                # Unconditionally: a Deferred that has fired but waits on a chained one
                # (treq's, once connected) is `called` and yet still cancellable.
                state["step"].cancel()

        timeout_outcome = Outcome(False, False, f"timeout: no complete answer within {self.timeout:g} s")
        timer = self._reactor.callLater(self.timeout, on_timeout)
        try:
            state["step"] = defer.maybeDeferred(
                client.request,
                request.method,
                request.url,
                headers=_twisted_headers(request.headers),
                # No body at all for GET (not even Content-Length: 0).
                data=request.body if request.method != "GET" else None,
                allow_redirects=False,
                unbuffered=True,
            )
            response = await state["step"]
            state["step"] = _read_body(response, self.max_response)
            content, truncated = await state["step"]
        except defer.CancelledError:
            if not state["timed_out"]:
                raise
            return timeout_outcome
        except Exception as e:
            if state["timed_out"]:
                return timeout_outcome
            return Outcome(False, False, _redact(_describe_error(e, iface.url), secrets))
        finally:
            if timer.active():
                timer.cancel()

        location = response.headers.getRawHeaders(b"location", [None])[0]
        if isinstance(location, bytes):
            location = location.decode("latin-1")
        outcome = check_response(iface, response.code, content, location)
        if truncated:
            outcome = replace(
                outcome,
                reason=f"{outcome.reason} (response over {self.max_response} bytes, truncated)",
            )
        if outcome.ok and iface.resp_id and outcome.provider_id is None:
            # Not a failure: the message went out; only its delivery reports cannot be
            # matched to it.
            self._log.debug(
                "interface {iface!r}: no usable message id at resp_id {resp_id} in the answer",
                iface=iface.name, resp_id=iface.resp_id,
            )
        return outcome


def _twisted_headers(headers: Sequence[Header]) -> Any:
    from twisted.web.http_headers import Headers

    result = Headers()
    for name, value in headers:
        result.addRawHeader(name, value)
    return result


def _read_body(response: Any, limit: int) -> Any:
    """A Deferred (bytes kept, truncated?) for the response body.

    Keeps at most `limit` bytes and drops the rest (an ITSP's answer is small; a huge
    one must not fill the memory of a Raspberry Pi).  Cancelling it closes the
    connection.
    """
    from twisted.internet import defer, protocol
    from twisted.web.client import ResponseDone
    from twisted.web.http import PotentialDataLoss

    class BodyReader(protocol.Protocol):
        def __init__(self) -> None:
            self.chunks: List[bytes] = []
            self.size = 0
            self.truncated = False

        def dataReceived(self, data: bytes) -> None:
            room = limit - self.size
            if room <= 0:
                self.truncated = True
                return
            if len(data) > room:
                data = data[:room]
                self.truncated = True
            self.chunks.append(data)
            self.size += len(data)

        def connectionLost(self, reason: Any = protocol.connectionDone) -> None:
            if finished.called:
                return
            if reason.check(ResponseDone, PotentialDataLoss):
                finished.callback((b"".join(self.chunks), self.truncated))
            else:
                finished.errback(reason)

    def cancel(d: Any) -> None:
        transport = reader.transport
        abort = getattr(transport, "abortConnection", None) or getattr(
            transport, "stopProducing", None
        )
        if abort is not None:
            abort()

    finished: Any = defer.Deferred(cancel)
    reader = BodyReader()
    response.deliverBody(reader)
    return finished
