"""Signed webhooks: each provider's documented way of proving a request came from it.

Pure Python (hashlib, hmac; the `cryptography` package for Telnyx's Ed25519, imported
only when a Telnyx signature is checked).  No Twisted here: `verify` takes what the web
layer read from the request and raises SignatureError, whose text is one line that says
what did not match, never a secret and never the request's content.

The URL a provider signs is the one it was configured with, the public one: behind a
reverse proxy the request line we see differs (another host, scheme, port, perhaps a
path prefix).  The web layer builds it as ``sig_url`` + the request's path and query.

Algorithms, as the providers document them:

- **twilio** (X-Twilio-Signature): base64(HMAC-SHA1(auth token, URL + for a form POST
  each parameter's name and value, sorted by name)).  For a JSON body the URL carries
  ``bodySHA256=<hex SHA-256 of the body>`` and the signature covers the URL alone.
  SignalWire's compatibility API signs the same way in ``X-SignalWire-Signature`` with
  its Signing Key: the check reads that header when there is no X-Twilio-Signature.
  Published vector (Twilio's security docs): URL
  ``https://mycompany.com/myapp.php?foo=1&bar=2``, token ``12345`` ->
  ``0/KCTR6DLpKmkAf8muzZqo1nDgQ=``.  Twilio's own libraries also accept the URL with
  or without the default port (some requests were signed with ``:443``); so do we.
- **telnyx** (telnyx-signature-ed25519, telnyx-timestamp): Ed25519 signature, base64,
  of ``timestamp|raw body``, verified with the account's public key (sig_secret, the
  base64 key shown in the portal, or PEM); the timestamp must be within sig_tolerance.
- **plivo** (X-Plivo-Signature-V3 or -Ma-V3, X-Plivo-Signature-V3-Nonce): base64
  (HMAC-SHA256(auth token, URL + "." + nonce)) where URL is scheme://host/path, then
  ``?`` and the query parameters sorted (``k=v&...``), and for a POST with parameters
  ``.`` (if there was a query) and the POST parameters sorted, each name followed by its
  value; the header may hold several signatures separated by commas.  Plivo's messaging
  callbacks are documented with the older V2 headers (X-Plivo-Signature-V2 or -Ma-V2,
  -V2-Nonce: base64(HMAC-SHA256(token, scheme://host/path + nonce))); ``plivo`` checks
  V3 when present, else V2.  V2 covers neither the query nor the body, so one captured
  V2 pair lets anyone post any body: ``plivo-v3`` takes V3 only (the preset's choice).
- **vonage**: the Messages API's signed webhooks carry ``Authorization: Bearer <JWT>``,
  HS256 with the signature secret; its ``payload_hash`` claim is the hex SHA-256 of the
  body, its ``iat`` the time it was issued.  The SMS API's older signed requests carry a
  ``sig`` parameter instead: the other parameters sorted, written ``&name=value`` with
  ``&`` and ``=`` in values replaced by ``_``; md5hash is MD5(that + secret), lower-case
  hex; the HMAC methods are HMAC-MD5/SHA1/SHA256/SHA512(secret, that), upper-case hex.
  The hash is told by the signature's length (both MD5 kinds are tried), and the
  ``timestamp`` parameter must be within sig_tolerance.
- **zadarma** (Signature header): base64 of the *hex* HMAC-SHA1 (PHP's ``hash_hmac``
  returns hex) with the API secret, of some of the form's fields concatenated: for
  ``NOTIFY_START`` ``caller_id . called_did . call_start`` (Zadarma's API documentation),
  for an ``SMS`` event the raw ``result`` field, and for the other call events the fields
  of `_ZADARMA_FIELDS` (what Zadarma's own PHP library, user-api-v1, checks; the SMS
  and speech events are in a commit of that library that is not on its main branch).
  An event with no known scheme is refused, since it cannot be verified.

`verify` returns what the signature covers (`Signed`): the web layer reads the message
from that part alone, so that fields added around a signed part change nothing.
"""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import hmac
import json
from typing import Dict, List, Mapping, Optional, Sequence, Tuple
from urllib.parse import parse_qs, parse_qsl, urlsplit, urlunsplit

from websmsd.record import frozen

__all__ = [
    "METHODS",
    "SignatureError",
    "Signed",
    "verify",
    "twilio_signature",
    "plivo_v3_signature",
    "plivo_v2_signature",
    "vonage_jwt",
    "vonage_sig",
    "zadarma_signature",
]

METHODS = ("twilio", "telnyx", "plivo", "plivo-v3", "vonage", "zadarma")

Pairs = List[Tuple[str, str]]


class SignatureError(ValueError):
    """The request's signature is missing or wrong; str() says why in one line."""


@frozen
class Signed:
    """What a valid signature vouches for: the only parts a message may be read from.

    body / query: the whole body, the URL's query string.  fields: when the provider
    signs some fields only (Zadarma signs an SMS event's `result`), exactly those
    name/value pairs, as the check read them; the message comes from them alone.
    """

    body: bool
    query: bool
    fields: Optional[Tuple[Tuple[str, str], ...]] = None

    @property
    def anything(self) -> bool:
        return self.body or self.query or self.fields is not None


_BODY = Signed(body=True, query=False)
_QUERY = Signed(body=False, query=True)
_BOTH = Signed(body=True, query=True)
# Plivo's V2 signs the URL's path and a nonce: one captured request lets anyone post
# any body to that URL.  Accepted by `plivo` for the installations that have only V2.
_NOTHING = Signed(body=False, query=False)


def verify(
    method_name: str,
    secret: Optional[str],
    *,
    http_method: str,
    url: str,
    headers: Mapping[str, str],
    body: bytes,
    content_type: Optional[str],
    now: float,
    tolerance: float = 300.0,
) -> Signed:
    """Check one request's signature by `method_name`'s rules; raise SignatureError.

    `headers` maps lower-case header names to their (first) value.  `url` is the
    public URL the provider called, query string included.  Returns what the signature
    covers: the caller must read the message from that part of the request alone.
    """
    if not secret:
        raise SignatureError("sig_method is set but sig_secret is not")
    check = _CHECKS.get(method_name)
    if check is None:
        raise SignatureError(f"unknown sig_method {method_name!r}")
    return check(secret, http_method.upper(), url, headers, body, _media(content_type), now,
                 tolerance)


# -- helpers ---------------------------------------------------------------------------


def _media(content_type: Optional[str]) -> str:
    return (content_type or "").partition(";")[0].strip().lower()


def _is_json(media: str) -> bool:
    return media in ("application/json", "text/json") or (
        media.startswith("application/") and media.endswith("+json")
    )


def _form_pairs(body: bytes, media: str) -> Pairs:
    """The decoded name/value pairs of a form body (none for other bodies)."""
    if media != "application/x-www-form-urlencoded" or not body:
        return []
    try:
        return parse_qsl(body.decode("utf-8"), keep_blank_values=True, errors="strict")
    except (UnicodeDecodeError, ValueError):
        raise SignatureError("the form body is not UTF-8, it cannot be verified") from None


def _query_pairs(url: str) -> Pairs:
    try:
        return parse_qsl(urlsplit(url).query, keep_blank_values=True, errors="strict")
    except (UnicodeDecodeError, ValueError):
        raise SignatureError("the query string is not UTF-8, it cannot be verified") from None


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _b64decode(text: str, what: str) -> bytes:
    text = text.strip()
    try:
        if "-" in text or "_" in text:
            return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
        return base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise SignatureError(f"{what} is not base64") from None


def _equal(a: str, b: str) -> bool:
    return hmac.compare_digest(a.encode("utf-8"), b.encode("utf-8"))


def _header(headers: Mapping[str, str], name: str) -> str:
    value = headers.get(name.lower())
    if not value:
        raise SignatureError(f"no {name} header")
    return value.strip()


def _fresh(timestamp: float, now: float, tolerance: float, what: str) -> None:
    if abs(now - timestamp) > tolerance:
        raise SignatureError(
            f"{what} is {abs(now - timestamp):.0f} s off our clock (sig_tolerance {tolerance:g} s)"
        )


# -- Twilio ----------------------------------------------------------------------------


def twilio_signature(token: str, url: str, params: Sequence[Tuple[str, str]] = ()) -> str:
    """X-Twilio-Signature of a request to `url` with POST parameters `params`."""
    data = url + "".join(name + value for name, value in sorted(params))
    return _b64(hmac.new(token.encode("utf-8"), data.encode("utf-8"), hashlib.sha1).digest())


def _default_port_variants(url: str) -> List[str]:
    """`url` as written, then with the scheme's default port added or removed."""
    parts = urlsplit(url)
    default = {"https": 443, "http": 80}.get(parts.scheme)
    variants = [url]
    if default is None or parts.hostname is None:
        return variants
    try:
        port = parts.port
    except ValueError:
        return variants
    host = parts.netloc.rpartition("@")[2]
    userinfo = parts.netloc[: len(parts.netloc) - len(host)]
    if port is None:
        variants.append(urlunsplit(parts._replace(netloc=f"{userinfo}{host}:{default}")))
    elif port == default:
        bare = host.rpartition(":")[0]
        variants.append(urlunsplit(parts._replace(netloc=userinfo + bare)))
    return variants


def _twilio(secret, http_method, url, headers, body, media, now, tolerance) -> Signed:
    # SignalWire's compatibility API signs the same way under its own header name, with
    # its Signing Key as the secret.
    if not headers.get("x-twilio-signature") and headers.get("x-signalwire-signature"):
        name = "X-SignalWire-Signature"
    else:
        name = "X-Twilio-Signature"
    signature = _header(headers, name)
    if _is_json(media):
        expected_hash = dict(_query_pairs(url)).get("bodySHA256")
        if not expected_hash:
            raise SignatureError("a JSON body needs the bodySHA256 query parameter")
        if not _equal(hashlib.sha256(body).hexdigest(), expected_hash.lower()):
            raise SignatureError("the body does not match bodySHA256")
        params: Pairs = []
        covered = _BOTH
    elif http_method == "POST" and media == "application/x-www-form-urlencoded":
        params = _form_pairs(body, media)
        covered = _BOTH
    else:
        # A GET, or a body Twilio's scheme does not sign (multipart): the URL only.
        params = []
        covered = _QUERY
    for candidate in _default_port_variants(url):
        if _equal(twilio_signature(secret, candidate, params), signature):
            return covered
    raise SignatureError(f"{name} does not match")


# -- Telnyx ----------------------------------------------------------------------------


@functools.lru_cache(maxsize=8)
def _ed25519_key(text: str):
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    if text.lstrip().startswith("-----BEGIN"):
        from cryptography.hazmat.primitives.serialization import load_pem_public_key

        try:
            key = load_pem_public_key(text.encode("ascii"))
        except ValueError:
            raise SignatureError("sig_secret is not a readable PEM public key") from None
        if not isinstance(key, Ed25519PublicKey):
            raise SignatureError("sig_secret is not an Ed25519 public key")
        return key
    raw = _b64decode(text, "sig_secret (the Telnyx public key)")
    if len(raw) != 32:
        raise SignatureError("sig_secret is not a 32-byte Ed25519 public key")
    return Ed25519PublicKey.from_public_bytes(raw)


def _telnyx(secret, http_method, url, headers, body, media, now, tolerance) -> Signed:
    from cryptography.exceptions import InvalidSignature

    signature = _b64decode(_header(headers, "telnyx-signature-ed25519"), "the signature")
    timestamp = _header(headers, "telnyx-timestamp")
    try:
        when = int(timestamp)
    except ValueError:
        raise SignatureError("telnyx-timestamp is not a Unix time") from None
    _fresh(when, now, tolerance, "telnyx-timestamp")
    key = _ed25519_key(secret)
    try:
        key.verify(signature, timestamp.encode("ascii") + b"|" + body)
    except InvalidSignature:
        raise SignatureError("telnyx-signature-ed25519 does not match") from None
    return _BODY


# -- Plivo -----------------------------------------------------------------------------


def _sorted_query(params: Mapping[str, List[str]]) -> str:
    return "&".join(f"{name}={value}" for name in sorted(params) for value in sorted(params[name]))


def _sorted_params(params: Mapping[str, object]) -> str:
    out = []
    for name in sorted(params):
        value = params[name]
        if isinstance(value, list):
            out.extend(name + _plivo_text(v) for v in sorted(_plivo_text(v) for v in value))
        elif isinstance(value, dict):
            out.append(name + _sorted_params(value))
        else:
            out.append(name + _plivo_text(value))
    return "".join(out)


def _plivo_text(value: object) -> str:
    return value if isinstance(value, str) else str(value)


def _plivo_base(url: str) -> Tuple[str, Dict[str, List[str]]]:
    parts = urlsplit(url)
    base = urlunsplit((parts.scheme, parts.netloc, parts.path, "", ""))
    try:
        query = parse_qs(parts.query, keep_blank_values=True, errors="strict")
    except (UnicodeDecodeError, ValueError):
        raise SignatureError("the query string is not UTF-8, it cannot be verified") from None
    return base, query


def plivo_v3_signature(
    token: str, http_method: str, url: str, params: Mapping[str, object], nonce: str
) -> str:
    """X-Plivo-Signature-V3 of a request (POST parameters `params`, empty for a GET)."""
    base, query = _plivo_base(url)
    if http_method.upper() == "GET":
        # A GET's parameters are its query: the URL's own values win.
        for name, value in params.items():
            query.setdefault(name, [_plivo_text(v) for v in value] if isinstance(value, list)
                             else [_plivo_text(value)])
        params = {}
    sorted_query = _sorted_query(query)
    signed = base
    if sorted_query or params:
        signed += "?" + sorted_query
    if sorted_query and params:
        signed += "."
    signed += _sorted_params(params) + "." + nonce
    return _b64(hmac.new(token.encode("utf-8"), signed.encode("utf-8"), hashlib.sha256).digest())


def plivo_v2_signature(token: str, url: str, nonce: str) -> str:
    base = _plivo_base(url)[0]
    return _b64(hmac.new(token.encode("utf-8"), (base + nonce).encode("utf-8"), hashlib.sha256).digest())


def _plivo_params(body: bytes, media: str) -> Dict[str, object]:
    if _is_json(media) and body:
        try:
            value = json.loads(body.decode("utf-8"))
        except (UnicodeDecodeError, ValueError):
            raise SignatureError("the JSON body cannot be read, it cannot be verified") from None
        if not isinstance(value, dict):
            raise SignatureError("a JSON body that is not an object cannot be verified")
        return value
    params: Dict[str, object] = {}
    for name, value in _form_pairs(body, media):
        params.setdefault(name, []).append(value)  # type: ignore[union-attr]
    return {k: v[0] if len(v) == 1 else v for k, v in params.items()}  # type: ignore[index]


def _plivo_v3(secret, http_method, url, headers, body, media, now, tolerance) -> Signed:
    """V3 only: the URL, its query and the POST parameters are signed."""
    if not (headers.get("x-plivo-signature-v3") or headers.get("x-plivo-signature-ma-v3")):
        raise SignatureError("no X-Plivo-Signature-V3 header (sig_method plivo-v3 takes no V2)")
    nonce = _header(headers, "X-Plivo-Signature-V3-Nonce")
    params = _plivo_params(body, media) if http_method != "GET" else {}
    expected = plivo_v3_signature(secret, http_method, url, params, nonce)
    given = [
        s.strip()
        for name in ("x-plivo-signature-v3", "x-plivo-signature-ma-v3")
        for s in (headers.get(name) or "").split(",")
    ]
    if any(s and _equal(expected, s) for s in given):
        signs_body = http_method != "GET" and (
            _is_json(media) or media == "application/x-www-form-urlencoded")
        return _BOTH if signs_body else _QUERY
    raise SignatureError("X-Plivo-Signature-V3 does not match")


def _plivo(secret, http_method, url, headers, body, media, now, tolerance) -> Signed:
    """V3 when the request has it, else the older V2, which signs neither the query
    nor the body (prefer sig_method plivo-v3)."""
    if headers.get("x-plivo-signature-v3") or headers.get("x-plivo-signature-ma-v3"):
        return _plivo_v3(secret, http_method, url, headers, body, media, now, tolerance)
    v2 = headers.get("x-plivo-signature-v2") or headers.get("x-plivo-signature-ma-v2")
    if not v2:
        raise SignatureError("no X-Plivo-Signature-V3 (or -V2) header")
    expected = plivo_v2_signature(secret, url, _header(headers, "X-Plivo-Signature-V2-Nonce"))
    given = [headers.get("x-plivo-signature-v2"), headers.get("x-plivo-signature-ma-v2")]
    if any(s and _equal(expected, s.strip()) for s in given):
        return _NOTHING
    raise SignatureError("X-Plivo-Signature-V2 does not match")


# -- Vonage ----------------------------------------------------------------------------


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def vonage_jwt(secret: str, claims: Mapping[str, object]) -> str:
    """An HS256 JWT as Vonage signs webhooks (for tests and tools)."""
    head = _b64url(json.dumps({"alg": "HS256", "typ": "JWT"}, separators=(",", ":")).encode())
    body = _b64url(json.dumps(dict(claims), separators=(",", ":")).encode())
    mac = hmac.new(secret.encode("utf-8"), f"{head}.{body}".encode("ascii"), hashlib.sha256)
    return f"{head}.{body}.{_b64url(mac.digest())}"


def _json_part(text: str, what: str) -> dict:
    data = _b64decode(text, f"the JWT {what}")
    try:
        value = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise SignatureError(f"the JWT {what} is not JSON") from None
    if not isinstance(value, dict):
        raise SignatureError(f"the JWT {what} is not a JSON object")
    return value


def _number(value: object, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise SignatureError(f"the JWT claim {what} is not a number")
    return float(value)


def _vonage_bearer(secret: str, token: str, body: bytes, now: float, tolerance: float) -> Signed:
    parts = token.split(".")
    if len(parts) != 3:
        raise SignatureError("the bearer token is not a JWT")
    header = _json_part(parts[0], "header")
    if header.get("alg") != "HS256":
        raise SignatureError(f"the JWT is not signed with HS256 (alg {str(header.get('alg'))[:20]!r})")
    mac = hmac.new(secret.encode("utf-8"), f"{parts[0]}.{parts[1]}".encode("ascii"), hashlib.sha256)
    given = _b64decode(parts[2], "the JWT signature")
    if not hmac.compare_digest(mac.digest(), given):
        raise SignatureError("the JWT signature does not match")
    claims = _json_part(parts[1], "payload")
    if "iat" in claims:
        _fresh(_number(claims["iat"], "iat"), now, tolerance, "the JWT's iat")
    if "nbf" in claims and now + tolerance < _number(claims["nbf"], "nbf"):
        raise SignatureError("the JWT is not valid yet (nbf)")
    if "exp" in claims and now - tolerance > _number(claims["exp"], "exp"):
        raise SignatureError("the JWT has expired (exp)")
    if body or "payload_hash" in claims:
        claimed = claims.get("payload_hash")
        if not isinstance(claimed, str):
            raise SignatureError("the JWT has no payload_hash for the body")
        if not _equal(hashlib.sha256(body).hexdigest(), claimed.lower()):
            raise SignatureError("the body does not match the JWT's payload_hash")
    # The JWT vouches for the body (by its hash) and nothing in the URL.
    return _BODY


_SIG_HASHES = {32: ("md5hash", "md5"), 40: ("sha1",), 64: ("sha256",), 128: ("sha512",)}


def vonage_sig(secret: str, params: Sequence[Tuple[str, str]], method: str = "md5hash") -> str:
    """The `sig` of Vonage's signed SMS API requests (`method`: md5hash, md5, sha1,
    sha256, sha512)."""
    signed = "".join(
        "&" + name + "=" + value.replace("&", "_").replace("=", "_")
        for name, value in sorted(params)
        if name != "sig"
    )
    if method == "md5hash":
        return hashlib.md5((signed + secret).encode("utf-8")).hexdigest()
    digest = getattr(hashlib, method)
    return hmac.new(secret.encode("utf-8"), signed.encode("utf-8"), digest).hexdigest().upper()


def _vonage_params(url: str, body: bytes, media: str) -> Tuple[Pairs, Signed]:
    """The parameters a `sig` covers, and where they came from."""
    if _is_json(media) and body:
        try:
            value = json.loads(body.decode("utf-8"))
        except (UnicodeDecodeError, ValueError):
            raise SignatureError("the JSON body cannot be read, it cannot be verified") from None
        if not isinstance(value, dict):
            raise SignatureError("a JSON body that is not an object cannot be verified")
        return [(k, v if isinstance(v, str) else json.dumps(v)) for k, v in value.items()], _BODY
    pairs = _form_pairs(body, media)
    return (pairs, _BODY) if pairs else (_query_pairs(url), _QUERY)


def _vonage(secret, http_method, url, headers, body, media, now, tolerance) -> Signed:
    authorization = headers.get("authorization", "").strip()
    if authorization:
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise SignatureError("the Authorization header is not a bearer token")
        return _vonage_bearer(secret, token.strip(), body, now, tolerance)
    params, covered = _vonage_params(url, body, media)
    given = dict(params).get("sig")
    if not given:
        raise SignatureError("no Authorization bearer token and no sig parameter")
    timestamp = dict(params).get("timestamp")
    if timestamp is None:
        raise SignatureError("a signed request without its timestamp parameter")
    try:
        when = float(timestamp)
    except ValueError:
        raise SignatureError("the timestamp parameter is not a Unix time") from None
    _fresh(when, now, tolerance, "the timestamp parameter")
    for method in _SIG_HASHES.get(len(given), ()):
        if _equal(vonage_sig(secret, params, method).lower(), given.lower()):
            return covered
    raise SignatureError("the sig parameter does not match")


# -- Zadarma ---------------------------------------------------------------------------


def zadarma_signature(secret: str, signed: str) -> str:
    """The Signature header Zadarma sends: base64 of the hex HMAC-SHA1 of `signed`."""
    mac = hmac.new(secret.encode("utf-8"), signed.encode("utf-8"), hashlib.sha1).hexdigest()
    return _b64(mac.encode("ascii"))


# The fields each event's signature covers, concatenated (Zadarma's PHP library).
_ZADARMA_FIELDS = {
    "SMS": ("result",),
    "NOTIFY_START": ("caller_id", "called_did", "call_start"),
    "NOTIFY_INTERNAL": ("caller_id", "called_did", "call_start"),
    "NOTIFY_END": ("caller_id", "called_did", "call_start"),
    "NOTIFY_ANSWER": ("caller_id", "destination", "call_start"),
    "NOTIFY_OUT_START": ("internal", "destination", "call_start"),
    "NOTIFY_OUT_END": ("internal", "destination", "call_start"),
    "NOTIFY_RECORD": ("pbx_call_id", "call_id_with_rec"),
    "NOTIFY_IVR": ("result",),
    "SPEECH_RECOGNITION": ("result",),
}


def _zadarma(secret, http_method, url, headers, body, media, now, tolerance) -> Signed:
    signature = _header(headers, "Signature")
    pairs = _form_pairs(body, media) or _query_pairs(url)
    fields = dict(pairs)
    event = fields.get("event", "")
    names = _ZADARMA_FIELDS.get(event)
    if names is None:
        raise SignatureError(
            f"no known signature scheme for Zadarma event {event[:30]!r}: it cannot be verified"
        )
    for name in ("event",) + names:
        if sum(1 for n, _ in pairs if n == name) > 1:
            raise SignatureError(f"the field {name!r} is given more than once")
    if event == "SMS":
        # An SMS notification is `event` and the signed `result`, nothing else: a field
        # beside them is someone's attempt to add words to a genuine notification.
        extra = sorted({n for n, _ in pairs} - {"event", "result"})
        if extra:
            shown = ", ".join(repr(n[:20]) for n in extra[:3])
            raise SignatureError(f"unsigned field(s) {shown} beside the signed result")
    signed = "".join(fields.get(name, "") for name in names)
    if not _equal(zadarma_signature(secret, signed), signature):
        raise SignatureError("the Signature header does not match")
    # Only those fields are signed: every other field of the request is the sender's
    # word, and a message must come from the signed ones alone.  `event` is not signed
    # itself, but it picks which fields are: another event either breaks the signature
    # or reads the same signed fields.
    return Signed(body=False, query=False,
                  fields=tuple((n, fields[n]) for n in ("event",) + names if n in fields))


_CHECKS = {
    "twilio": _twilio,
    "telnyx": _telnyx,
    "plivo": _plivo,
    "plivo-v3": _plivo_v3,
    "vonage": _vonage,
    "zadarma": _zadarma,
}
