"""The request to an ITSP's HTTP API: websms.php's, byte for byte, and today's shapes.

`build_request` turns an interface and a message into an `OutboundRequest`: the fields
(key_to/key_from/key_body), the val_* rules of websms.php, num_country, the auth methods,
and a form body (PHP's, exactly), a JSON document (key paths) or a GET query.  Pure
Python: no Twisted, no I/O.

What websms.php could not do, for today's JSON APIs (all off by default, so that a PHP
websms.conf sends exactly what it sent before): `encoding = json`, `method = GET|PUT`,
`auth_method = bearer|header|query`, `num_country` (numbers in E.164 first).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
from dataclasses import field
from typing import TYPE_CHECKING, Any, Callable, Dict, List, Mapping, MutableMapping, Optional, Tuple, Union
from urllib.parse import urlsplit

from websmsd import __version__
from websmsd.itsp.phpcompat import (Pairs, _items, has_surrogates, http_build_query, php_ksort,
                                    to_bytes, urlencode)
from websmsd.text import escape_controls
from websmsd.record import frozen

if TYPE_CHECKING:  # config reads this module to check request shapes: no cycle
    from websmsd.config.websms import OutboundInterface


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


@frozen
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
    if not has_surrogates(text):
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
    query_bytes = to_bytes(query)
    message = to_bytes(url_path) + query_bytes + hashlib.md5(query_bytes).hexdigest().encode("ascii")
    digest = hmac.new(to_bytes(secret), message, hashlib.sha1).hexdigest()
    return base64.b64encode(digest.encode("ascii")).decode("ascii")


Encoder = Callable[[Mapping[str, Any]], Tuple[str, bytes]]


Query = List[Tuple[str, str]]


# An auth method may add fields or URL query parameters and returns the headers it
# needs; it gets the encoder so that a signature covers exactly the bytes that are sent.
AuthMethod = Callable[["OutboundInterface", Fields, Encoder, Query], List[Header]]


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
    token = base64.b64encode(to_bytes(f"{iface.auth_user}:{iface.auth_secret}"))
    return [(b"Authorization", b"Basic " + token)]


def _auth_zadarma(iface: OutboundInterface, fields: Fields, encode: Encoder, query: Query) -> List[Header]:
    if _php_empty(iface.auth_user) or _php_empty(iface.auth_secret):
        raise _Incomplete()
    _, signed = encode(fields)
    user, secret = str(iface.auth_user), str(iface.auth_secret)
    sign = zadarma_signature(iface.url_path, signed, secret)
    return [(b"Authorization", to_bytes(user) + b":" + sign.encode("ascii"))]


def _auth_bearer(iface: OutboundInterface, fields: Fields, encode: Encoder, query: Query) -> List[Header]:
    """`Authorization: Bearer <auth_secret>` (an API token or a JWT, RFC 6750)."""
    if _php_empty(iface.auth_secret):
        raise _Incomplete()
    return [(b"Authorization", b"Bearer " + to_bytes(str(iface.auth_secret)))]


_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")  # an HTTP header name (RFC 9110)


def _auth_header(iface: OutboundInterface, fields: Fields, encode: Encoder, query: Query) -> List[Header]:
    """`<auth_header>: [<auth_scheme> ]<auth_secret>`, the header Authorization unless
    auth_header names another (`AccessKey xxx`, `App xxx`, `X-API-Key: xxx`)."""
    if _php_empty(iface.auth_secret):
        raise _Incomplete()
    name = iface.auth_header or "Authorization"
    if not _TOKEN.fullmatch(name):
        raise RequestError(f"auth_header {name!r} is not an HTTP header name")
    value = to_bytes(str(iface.auth_secret))
    if iface.auth_scheme:
        value = to_bytes(iface.auth_scheme) + b" " + value
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
    url = _with_query(url, "&".join(f"{urlencode(k)}={urlencode(v)}" for k, v in auth_query))
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
        return escape_controls(url.split("?", 1)[0])[:200]
    return escape_controls(f"{parts.scheme}://{host}{port}{parts.path}")[:200]
