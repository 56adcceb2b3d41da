"""Signed webhooks (websmsd.http.signatures): each provider's documented algorithm.

Where a provider publishes a test vector it is used (Twilio); otherwise the expected
signature is computed here, independently, from the documented recipe (hashlib, hmac,
base64 written out step by step), and every check is paired with tampered requests.
"""

import base64
import hashlib
import hmac
import json
from urllib.parse import urlencode

import pytest

from websmsd.itsp import signatures
from websmsd.itsp.signatures import SignatureError, verify

FORM = "application/x-www-form-urlencoded"
JSON = "application/json"
NOW = 1_700_000_000.0


def check(method, secret, *, url, headers=None, body=b"", ctype=FORM, http_method="POST",
          now=NOW, tolerance=300.0):
    verify(
        method,
        secret,
        http_method=http_method,
        url=url,
        headers={k.lower(): v for k, v in (headers or {}).items()},
        body=body,
        content_type=ctype,
        now=now,
        tolerance=tolerance,
    )


def refused(match, method, secret, **kw):
    with pytest.raises(SignatureError, match=match) as info:
        check(method, secret, **kw)
    text = str(info.value)
    assert "\n" not in text
    if secret:
        assert secret not in text
    return text


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


# ---------------------------------------------------------------------------------
# Twilio
# ---------------------------------------------------------------------------------

# Twilio's published example (docs/usage/security, "Validating requests").
TWILIO_URL = "https://mycompany.com/myapp.php?foo=1&bar=2"
TWILIO_TOKEN = "12345"
TWILIO_PARAMS = {
    "CallSid": "CA1234567890ABCDE",
    "Caller": "+12349013030",
    "Digits": "1234",
    "From": "+12349013030",
    "To": "+18005551212",
}
TWILIO_SIGNATURE = "0/KCTR6DLpKmkAf8muzZqo1nDgQ="


def test_twilio_published_vector():
    assert (
        signatures.twilio_signature(TWILIO_TOKEN, TWILIO_URL, list(TWILIO_PARAMS.items()))
        == TWILIO_SIGNATURE
    )
    body = urlencode(TWILIO_PARAMS).encode()
    check("twilio", TWILIO_TOKEN, url=TWILIO_URL, body=body,
          headers={"X-Twilio-Signature": TWILIO_SIGNATURE})
    # The order of the POST parameters does not matter: they are sorted.
    body = urlencode(sorted(TWILIO_PARAMS.items(), reverse=True)).encode()
    check("twilio", TWILIO_TOKEN, url=TWILIO_URL, body=body,
          headers={"X-Twilio-Signature": TWILIO_SIGNATURE})


def test_twilio_tampered():
    headers = {"X-Twilio-Signature": TWILIO_SIGNATURE}
    good = dict(TWILIO_PARAMS)
    for changed in ({**good, "Digits": "1235"}, {**good, "Extra": ""},
                    {k: v for k, v in good.items() if k != "To"}):
        refused("does not match", "twilio", TWILIO_TOKEN, url=TWILIO_URL,
                body=urlencode(changed).encode(), headers=headers)
    body = urlencode(good).encode()
    refused("does not match", "twilio", TWILIO_TOKEN, url=TWILIO_URL + "&baz=3", body=body,
            headers=headers)
    refused("does not match", "twilio", TWILIO_TOKEN,
            url=TWILIO_URL.replace("https:", "http:"), body=body, headers=headers)
    refused("does not match", "twilio", "54321", url=TWILIO_URL, body=body, headers=headers)
    refused("no X-Twilio-Signature header", "twilio", TWILIO_TOKEN, url=TWILIO_URL, body=body)


def test_signalwire_header_is_read_like_twilio():
    body = urlencode(TWILIO_PARAMS).encode()
    check("twilio", TWILIO_TOKEN, url=TWILIO_URL, body=body,
          headers={"X-SignalWire-Signature": TWILIO_SIGNATURE})
    refused("X-SignalWire-Signature does not match|does not match", "twilio", "54321",
            url=TWILIO_URL, body=body, headers={"X-SignalWire-Signature": TWILIO_SIGNATURE})


def test_twilio_default_port_either_way():
    body = urlencode(TWILIO_PARAMS).encode()
    headers = {"X-Twilio-Signature": TWILIO_SIGNATURE}
    check("twilio", TWILIO_TOKEN, url="https://mycompany.com:443/myapp.php?foo=1&bar=2",
          body=body, headers=headers)
    signed_with_port = signatures.twilio_signature(
        TWILIO_TOKEN, "https://mycompany.com:443/myapp.php?foo=1&bar=2", sorted(TWILIO_PARAMS.items())
    )
    check("twilio", TWILIO_TOKEN, url=TWILIO_URL, body=body,
          headers={"X-Twilio-Signature": signed_with_port})
    # Another port is another URL.
    refused("does not match", "twilio", TWILIO_TOKEN,
            url="https://mycompany.com:8443/myapp.php?foo=1&bar=2", body=body, headers=headers)


def test_twilio_get_signs_the_url_only():
    url = "https://pbx.example.com/sms?To=%2B15558675310&From=%2B15017122661&Body=Hi"
    expected = b64(hmac.new(b"tok", url.encode(), hashlib.sha1).digest())
    check("twilio", "tok", url=url, http_method="GET", body=b"",
          headers={"X-Twilio-Signature": expected})
    refused("does not match", "twilio", "tok", url=url.replace("Hi", "Ho"), http_method="GET",
            headers={"X-Twilio-Signature": expected})


def test_twilio_json_body_sha256():
    body = b'{"MessageSid": "SM1", "MessageStatus": "delivered"}'
    digest = hashlib.sha256(body).hexdigest()
    url = f"https://pbx.example.com/status?bodySHA256={digest}"
    expected = b64(hmac.new(b"tok", url.encode(), hashlib.sha1).digest())
    headers = {"X-Twilio-Signature": expected}
    check("twilio", "tok", url=url, body=body, ctype=JSON, headers=headers)
    refused("bodySHA256", "twilio", "tok", url=url, body=body.replace(b"delivered", b"failed"),
            ctype=JSON, headers=headers)
    refused("needs the bodySHA256", "twilio", "tok", url="https://pbx.example.com/status",
            body=body, ctype=JSON, headers=headers)


# ---------------------------------------------------------------------------------
# Telnyx (Ed25519)
# ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def telnyx_key():
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    private = Ed25519PrivateKey.generate()
    raw = private.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    pem = private.public_key().public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)
    return private, b64(raw), pem.decode()


def telnyx_headers(private, timestamp, body):
    signature = private.sign(str(timestamp).encode() + b"|" + body)
    return {"telnyx-signature-ed25519": b64(signature), "telnyx-timestamp": str(timestamp)}


def test_telnyx(telnyx_key):
    private, public, pem = telnyx_key
    body = b'{"data": {"event_type": "message.received"}}'
    headers = telnyx_headers(private, int(NOW), body)
    check("telnyx", public, url="https://pbx.example.com/t", body=body, ctype=JSON, headers=headers)
    check("telnyx", pem, url="https://pbx.example.com/t", body=body, ctype=JSON, headers=headers)
    # Within the tolerance, either way.
    check("telnyx", public, url="https://x/", body=body, ctype=JSON, now=NOW + 299,
          headers=headers)
    check("telnyx", public, url="https://x/", body=body, ctype=JSON, now=NOW - 299,
          headers=headers)


def test_telnyx_tampered(telnyx_key):
    private, public, _ = telnyx_key
    body = b'{"data": {"event_type": "message.received", "payload": {"text": "hi"}}}'
    headers = telnyx_headers(private, int(NOW), body)
    url = "https://pbx.example.com/t"
    refused("does not match", "telnyx", public, url=url, body=body.replace(b"hi", b"ho"),
            ctype=JSON, headers=headers)
    # The timestamp is signed too.
    moved = dict(headers, **{"telnyx-timestamp": str(int(NOW) + 1)})
    refused("does not match", "telnyx", public, url=url, body=body, ctype=JSON, headers=moved)
    refused("s off our clock", "telnyx", public, url=url, body=body, ctype=JSON,
            now=NOW + 301, headers=headers)
    refused("not a Unix time", "telnyx", public, url=url, body=body, ctype=JSON,
            headers=dict(headers, **{"telnyx-timestamp": "yesterday"}))
    refused("no telnyx-signature-ed25519", "telnyx", public, url=url, body=body, ctype=JSON,
            headers={"telnyx-timestamp": str(int(NOW))})
    refused("not base64", "telnyx", public, url=url, body=body, ctype=JSON,
            headers=dict(headers, **{"telnyx-signature-ed25519": "***"}))

    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    other = Ed25519PrivateKey.generate()
    refused("does not match", "telnyx", public, url=url, body=body, ctype=JSON,
            headers=telnyx_headers(other, int(NOW), body))
    refused("32-byte", "telnyx", b64(b"short"), url=url, body=body, ctype=JSON, headers=headers)


# ---------------------------------------------------------------------------------
# Plivo
# ---------------------------------------------------------------------------------


def plivo_b64(token, text):
    return b64(hmac.new(token.encode(), text.encode(), hashlib.sha256).digest())


PLIVO_TOKEN = "MjAxNjEwMzEwNDEyNTQ4OTQ3NDc1"


def test_plivo_v3_post_with_query():
    url = "https://pbx.example.com/sms?b=2&a=1"
    params = {"To": "15558675310", "From": "15017122661", "Text": "Hi there", "Type": "sms"}
    nonce = "05429567804466091622"
    # scheme://host/path ? sorted query . sorted params (name+value) . nonce
    signed = ("https://pbx.example.com/sms?a=1&b=2."
              "From15017122661TextHi thereTo15558675310Typesms." + nonce)
    expected = plivo_b64(PLIVO_TOKEN, signed)
    assert signatures.plivo_v3_signature(PLIVO_TOKEN, "POST", url, params, nonce) == expected
    body = urlencode(params).encode()
    headers = {"X-Plivo-Signature-V3": expected, "X-Plivo-Signature-V3-Nonce": nonce}
    check("plivo", PLIVO_TOKEN, url=url, body=body, headers=headers)
    # Several signatures, comma-separated: any may match (also the main-account header).
    check("plivo", PLIVO_TOKEN, url=url, body=body,
          headers={"X-Plivo-Signature-V3": "AAAA," + expected,
                   "X-Plivo-Signature-V3-Nonce": nonce})
    check("plivo", PLIVO_TOKEN, url=url, body=body,
          headers={"X-Plivo-Signature-Ma-V3": expected, "X-Plivo-Signature-V3-Nonce": nonce})
    refused("V3 does not match", "plivo", PLIVO_TOKEN, url=url,
            body=body.replace(b"Hi", b"Ho"), headers=headers)
    refused("V3 does not match", "plivo", PLIVO_TOKEN, url=url, body=body,
            headers=dict(headers, **{"X-Plivo-Signature-V3-Nonce": "1"}))
    refused("V3-Nonce", "plivo", PLIVO_TOKEN, url=url, body=body,
            headers={"X-Plivo-Signature-V3": expected})


def test_plivo_v3_post_without_query_and_get():
    nonce = "12345"
    url = "https://pbx.example.com/sms"
    body = urlencode({"To": "1", "From": "2"}).encode()
    # No query: "?" and then the parameters directly, no ".".
    expected = plivo_b64(PLIVO_TOKEN, "https://pbx.example.com/sms?From2To1." + nonce)
    check("plivo", PLIVO_TOKEN, url=url, body=body,
          headers={"X-Plivo-Signature-V3": expected, "X-Plivo-Signature-V3-Nonce": nonce})
    # A GET: the sorted query only.
    url = "https://pbx.example.com/sms?To=1&From=2"
    expected = plivo_b64(PLIVO_TOKEN, "https://pbx.example.com/sms?From=2&To=1." + nonce)
    check("plivo", PLIVO_TOKEN, url=url, http_method="GET",
          headers={"X-Plivo-Signature-V3": expected, "X-Plivo-Signature-V3-Nonce": nonce})


def test_plivo_v2_fallback():
    nonce = "05429567804466091622"
    url = "https://pbx.example.com/answer/?x=1"
    expected = plivo_b64(PLIVO_TOKEN, "https://pbx.example.com/answer/" + nonce)
    headers = {"X-Plivo-Signature-V2": expected, "X-Plivo-Signature-V2-Nonce": nonce}
    check("plivo", PLIVO_TOKEN, url=url, body=b"To=1&From=2", headers=headers)
    refused("V2 does not match", "plivo", PLIVO_TOKEN, url="https://pbx.example.com/other/",
            body=b"To=1&From=2", headers=headers)
    refused("no X-Plivo-Signature-V3", "plivo", PLIVO_TOKEN, url=url, body=b"To=1")


# ---------------------------------------------------------------------------------
# Vonage
# ---------------------------------------------------------------------------------

VONAGE_SECRET = "signature-secret-of-32-characters!"


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def jwt(secret, claims, alg="HS256"):
    head = b64url(json.dumps({"alg": alg, "typ": "JWT"}).encode())
    body = b64url(json.dumps(claims).encode())
    mac = hmac.new(secret.encode(), f"{head}.{body}".encode(), hashlib.sha256).digest()
    return f"{head}.{body}.{b64url(mac)}"


def test_vonage_jwt():
    body = b'{"to":"447700900000","from":"447700900001","channel":"sms","text":"Hello"}'
    claims = {"iat": int(NOW), "jti": "x", "api_key": "abc123",
              "payload_hash": hashlib.sha256(body).hexdigest()}
    token = jwt(VONAGE_SECRET, claims)
    assert signatures.vonage_jwt(VONAGE_SECRET, claims).count(".") == 2
    check("vonage", VONAGE_SECRET, url="https://x/", body=body, ctype=JSON,
          headers={"Authorization": f"Bearer {token}"})
    check("vonage", VONAGE_SECRET, url="https://x/", body=body, ctype=JSON,
          headers={"Authorization": f"Bearer {signatures.vonage_jwt(VONAGE_SECRET, claims)}"})


def test_vonage_jwt_tampered():
    body = b'{"text":"Hello"}'
    claims = {"iat": int(NOW), "payload_hash": hashlib.sha256(body).hexdigest()}
    auth = {"Authorization": "Bearer " + jwt(VONAGE_SECRET, claims)}
    kw = dict(url="https://x/", ctype=JSON)
    refused("payload_hash", "vonage", VONAGE_SECRET, body=b'{"text":"Hellp"}', headers=auth, **kw)
    refused("signature does not match", "vonage", "another secret", body=body, headers=auth, **kw)
    refused("off our clock", "vonage", VONAGE_SECRET, body=body, headers=auth, now=NOW + 3600, **kw)
    no_hash = {"Authorization": "Bearer " + jwt(VONAGE_SECRET, {"iat": int(NOW)})}
    refused("no payload_hash", "vonage", VONAGE_SECRET, body=body, headers=no_hash, **kw)
    unsigned = "Bearer " + jwt(VONAGE_SECRET, claims, alg="none")
    refused("not signed with HS256", "vonage", VONAGE_SECRET, body=body,
            headers={"Authorization": unsigned}, **kw)
    head, payload, sig = jwt(VONAGE_SECRET, claims).split(".")
    forged = b64url(json.dumps(dict(claims, api_key="evil")).encode())
    refused("signature does not match", "vonage", VONAGE_SECRET, body=body,
            headers={"Authorization": f"Bearer {head}.{forged}.{sig}"}, **kw)
    refused("not a JWT", "vonage", VONAGE_SECRET, body=body,
            headers={"Authorization": "Bearer abc"}, **kw)
    refused("not a bearer token", "vonage", VONAGE_SECRET, body=body,
            headers={"Authorization": "Basic abc"}, **kw)
    refused("no Authorization", "vonage", VONAGE_SECRET, body=body, **kw)


def legacy_signed(params, secret, method):
    text = "".join(
        f"&{k}=" + v.replace("&", "_").replace("=", "_") for k, v in sorted(params.items())
    )
    if method == "md5hash":
        return hashlib.md5((text + secret).encode()).hexdigest()
    return hmac.new(secret.encode(), text.encode(), getattr(hashlib, method)).hexdigest().upper()


@pytest.mark.parametrize("method", ["md5hash", "md5", "sha1", "sha256", "sha512"])
def test_vonage_legacy_sig(method):
    params = {"msisdn": "447700900001", "to": "447700900000", "messageId": "0A0000000123ABCD1",
              "text": "a=b & c", "type": "text", "keyword": "A=B", "timestamp": str(int(NOW))}
    sig = legacy_signed(params, VONAGE_SECRET, method)
    assert signatures.vonage_sig(VONAGE_SECRET, list(params.items()), method) == sig
    form = urlencode(dict(params, sig=sig)).encode()
    check("vonage", VONAGE_SECRET, url="https://pbx.example.com/v", body=form)
    check("vonage", VONAGE_SECRET, url="https://pbx.example.com/v?" + form.decode(),
          http_method="GET")
    tampered = urlencode(dict(params, text="a=b & d", sig=sig)).encode()
    refused("sig parameter does not match", "vonage", VONAGE_SECRET,
            url="https://pbx.example.com/v", body=tampered)
    stale = dict(params, timestamp=str(int(NOW) - 4000))
    form = urlencode(dict(stale, sig=legacy_signed(stale, VONAGE_SECRET, method))).encode()
    refused("off our clock", "vonage", VONAGE_SECRET, url="https://pbx.example.com/v", body=form)


# ---------------------------------------------------------------------------------
# Zadarma
# ---------------------------------------------------------------------------------

ZADARMA_SECRET = "f5e2c5f0a8d3b6e1"


def zadarma(secret, text):
    # PHP: base64_encode(hash_hmac('sha1', $text, $secret)), hash_hmac giving hex.
    return b64(hmac.new(secret.encode(), text.encode(), hashlib.sha1).hexdigest().encode())


def test_zadarma_sms():
    result = json.dumps({"caller_id": "+79001234567", "caller_did": "74951234567",
                         "text": "Привет"}, ensure_ascii=False)
    body = urlencode({"event": "SMS", "result": result}).encode()
    headers = {"Signature": zadarma(ZADARMA_SECRET, result)}
    assert signatures.zadarma_signature(ZADARMA_SECRET, result) == headers["Signature"]
    check("zadarma", ZADARMA_SECRET, url="https://x/", body=body, headers=headers)
    tampered = urlencode({"event": "SMS", "result": result.replace("Привет", "Пока")}).encode()
    refused("does not match", "zadarma", ZADARMA_SECRET, url="https://x/", body=tampered,
            headers=headers)
    refused("no Signature header", "zadarma", ZADARMA_SECRET, url="https://x/", body=body)


def test_zadarma_call_events():
    fields = {"event": "NOTIFY_START", "call_start": "2024-01-01 10:00:00",
              "pbx_call_id": "in_1", "caller_id": "+79001234567", "called_did": "74951234567"}
    signed = fields["caller_id"] + fields["called_did"] + fields["call_start"]
    check("zadarma", ZADARMA_SECRET, url="https://x/", body=urlencode(fields).encode(),
          headers={"Signature": zadarma(ZADARMA_SECRET, signed)})
    fields = {"event": "NOTIFY_OUT_START", "call_start": "2024-01-01 10:00:00",
              "internal": "100", "destination": "+79001234567", "pbx_call_id": "out_1"}
    check("zadarma", ZADARMA_SECRET, url="https://x/", body=urlencode(fields).encode(),
          headers={"Signature": zadarma(ZADARMA_SECRET, "100+790012345672024-01-01 10:00:00")})
    refused("no known signature scheme", "zadarma", ZADARMA_SECRET, url="https://x/",
            body=b"event=NOTIFY_SOMETHING&x=1", headers={"Signature": "x"})


# ---------------------------------------------------------------------------------
# Common
# ---------------------------------------------------------------------------------


def test_no_secret_and_unknown_method():
    refused("sig_secret is not", "twilio", None, url="https://x/")
    refused("sig_secret is not", "twilio", "", url="https://x/")
    refused("unknown sig_method", "acme", "a-long-secret", url="https://x/")
    assert set(signatures.METHODS) == {"twilio", "telnyx", "plivo", "plivo-v3", "vonage",
                                       "zadarma"}


def test_pure_module():
    import ast
    import inspect

    tree = ast.parse(inspect.getsource(signatures))
    imported = {
        name.name.split(".")[0]
        for node in ast.walk(tree)
        if isinstance(node, (ast.Import, ast.ImportFrom))
        for name in (node.names if isinstance(node, ast.Import) else [ast.alias(node.module or "")])
    }
    assert "twisted" not in imported
