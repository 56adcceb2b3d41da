"""Black-box: every provider preset in one real daemon (`twistd -n websmsd`).

One websms.conf holds an interface per preset in [websms] and in [websmsd], written as
an owner would (`preset [x] = x`, credentials, `url_path [x] = /x`), except that each
[websms] url_host points at an independent fake ITSP on loopback.  Then:

- each provider's documented example webhook (tests/fixtures/providers, see the README
  and the *.source files there) is replayed byte for byte (method, Content-Type, body),
  signed with the provider's algorithm where the preset checks signatures (the signers
  below are written from the providers' documentation, not taken from websmsd), and must
  give exactly one call file with the example's To, From and text;
- a message sent through the local API reaches the fake ITSP in the provider's
  documented shape (method, path, authentication, body), and the provider's documented
  success answer gives it the provider's message id;
- a delivery report replayed after that moves exactly that message to delivered/failed.

No preset here needs `sig_method = ""`: every signing preset's example is signed.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import http.client
import json
import time
import urllib.parse
from pathlib import Path

import pytest

from blackbox import Daemon, FakeITSP, api_json

FIXTURES = Path(__file__).parent / "fixtures" / "providers"
FORM = "application/x-www-form-urlencoded"
JSON = "application/json"
PUBLIC = "https://pbx.example.com"  # sig_url of the URL-signing presets

TWILIO_SID, TWILIO_TOKEN = "AC0123456789abcdef0123456789abcdef", "twilio-auth-token-0123"
PLIVO_ID, PLIVO_TOKEN = "MAXXXXXXXXXXXXXXXXXX", "plivo-auth-token"
VONAGE_KEY, VONAGE_SECRET, VONAGE_SIG = "abcd1234", "VonageSecret01", "vonage-signature-secret-0123"
ZADARMA_KEY, ZADARMA_SECRET = "1a2b3c", "zadarma-api-secret"
SIGNALWIRE_PROJECT = "ea108133-d6b3-407c-9536-9fad8a929a6a"

pytest.importorskip("cryptography")
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey  # noqa: E402
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat  # noqa: E402

TELNYX_KEY = Ed25519PrivateKey.generate()
TELNYX_PUBLIC = base64.b64encode(
    TELNYX_KEY.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)).decode()

# [websms] and [websmsd] lines per preset, besides `preset [x] = x` and (inbound)
# `url_path [x] = /x`; `@ITSP@` is the fake ITSP's URL.
OUTBOUND = {
    "twilio": f"auth_user = {TWILIO_SID}\nauth_secret = {TWILIO_TOKEN}",
    "signalwire": f"url_host = @ITSP@\nauth_user = {SIGNALWIRE_PROJECT}\nauth_secret = PTsignalwire",
    "telnyx": "auth_secret = KEY0123456789ABCDEF_telnyx",
    "vonage": f"auth_user = {VONAGE_KEY}\nauth_secret = {VONAGE_SECRET}",
    "plivo": f"auth_user = {PLIVO_ID}\nauth_secret = {PLIVO_TOKEN}",
    "bandwidth": "url_path = /api/v2/users/9900000/messages\nauth_user = api-user\n"
                 "auth_secret = api-password\n"
                 'val_static = "applicationId=93de2206-9669-4e07-948d-329f4b722ee2"',
    "sinch": "auth_user = jd63jf88477ll123ab4567cd89012ef3\nauth_secret = sinch-api-token-0123",
    "46elks": "auth_user = u0123456789abcdef0123456789abcdef\nauth_secret = ELKSPASSWORD0123",
    "zadarma": f"auth_user = {ZADARMA_KEY}\nauth_secret = {ZADARMA_SECRET}",
    "voipms": 'auth_user = pbx@example.com\nauth_secret = "s3cret pass&="',
    "flowroute": "auth_user = 12345678\nauth_secret = flowroute-secret-key",
    "clicksend": "auth_user = pbx-owner\nauth_secret = CLICKSEND-API-KEY",
}
INBOUND = {
    "twilio": f"sig_secret = {TWILIO_TOKEN}\nsig_url = {PUBLIC}",
    "signalwire": "",
    "telnyx": f'sig_secret = "{TELNYX_PUBLIC}"',
    "vonage": f"sig_secret = {VONAGE_SIG}",
    "plivo": f"sig_secret = {PLIVO_TOKEN}\nsig_url = {PUBLIC}",
    "bandwidth": "",
    "sinch": "",
    "46elks": "",
    "zadarma": f"sig_secret = {ZADARMA_SECRET}",
    "voipms": "",
    "flowroute": "",
    "clicksend": "",
}


def indexed(name: str, lines: str) -> str:
    out = []
    for line in filter(None, lines.split("\n")):
        key, _, value = line.partition(" = ")
        out.append(f"{key} [{name}] = {value}")
    return "\n".join(out)


@pytest.fixture(scope="module")
def itsp():
    fake = FakeITSP()
    yield fake
    fake.close()


@pytest.fixture(scope="module")
def daemon(tmp_path_factory, itsp):
    websms, websmsd = [], []
    for name, lines in OUTBOUND.items():
        websms.append(f"preset [{name}] = {name}\nurl_host [{name}] = {itsp.url}\n"
                      + indexed(name, lines.replace("url_host = @ITSP@", "")))
    for name, lines in INBOUND.items():
        websmsd.append(f"preset [{name}] = {name}\nurl_path [{name}] = /{name}\n" + indexed(name, lines))
    d = Daemon(tmp_path_factory.mktemp("presets"), websms="\n".join(websms),
               websmsd="\n".join(websmsd), daemon="retry_base = 1\nretry_max = 1")
    d.start()
    yield d
    d.stop()


# -- the providers' signatures, from their documentation ----------------------------------


def twilio_headers(path: str, body: bytes) -> dict:
    # twilio.com/docs/usage/webhooks/webhooks-security: base64 HMAC-SHA1, with the auth
    # token, of the full URL followed by each POST parameter name and value, sorted.
    params = sorted(urllib.parse.parse_qsl(body.decode(), keep_blank_values=True))
    data = PUBLIC + path + "".join(k + v for k, v in params)
    mac = hmac.new(TWILIO_TOKEN.encode(), data.encode(), hashlib.sha1).digest()
    return {"X-Twilio-Signature": base64.b64encode(mac).decode()}


def telnyx_headers(path: str, body: bytes) -> dict:
    # developers.telnyx.com, webhook signing: Ed25519 over "timestamp|body".
    stamp = str(int(time.time()))
    signature = TELNYX_KEY.sign(stamp.encode() + b"|" + body)
    return {"telnyx-timestamp": stamp, "telnyx-signature-ed25519": base64.b64encode(signature).decode()}


def vonage_headers(path: str, body: bytes) -> dict:
    # developer.vonage.com, signed webhooks: Authorization: Bearer <JWT>, HS256 with the
    # signature secret, its payload_hash the SHA-256 of the body.
    def part(obj) -> str:
        return base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()

    head = part({"alg": "HS256", "typ": "JWT"})
    claims = part({"iat": int(time.time()), "jti": "b1a2c3d4", "iss": "Vonage",
                   "payload_hash": hashlib.sha256(body).hexdigest(), "api_key": VONAGE_KEY})
    mac = hmac.new(VONAGE_SIG.encode(), f"{head}.{claims}".encode(), hashlib.sha256).digest()
    token = f"{head}.{claims}.{base64.urlsafe_b64encode(mac).rstrip(b'=').decode()}"
    return {"Authorization": f"Bearer {token}"}


def plivo_headers(path: str, body: bytes) -> dict:
    # plivo.com, validating requests: Plivo sends V2 and V3 headers.  V2: base64
    # HMAC-SHA256, with the auth token, of the URL without its query + the nonce.  V3:
    # of the URL, "?", the sorted query (none here), then each POST parameter's name and
    # value sorted by name, then "." and the nonce.
    nonce = "05429567804466091622"
    v2 = hmac.new(PLIVO_TOKEN.encode(), (PUBLIC + path + nonce).encode(), hashlib.sha256).digest()
    params = sorted(urllib.parse.parse_qsl(body.decode(), keep_blank_values=True))
    signed = PUBLIC + path + "?" + "".join(k + v for k, v in params) + "." + nonce
    v3 = hmac.new(PLIVO_TOKEN.encode(), signed.encode(), hashlib.sha256).digest()
    return {"X-Plivo-Signature-V2": base64.b64encode(v2).decode(), "X-Plivo-Signature-V2-Nonce": nonce,
            "X-Plivo-Signature-V3": base64.b64encode(v3).decode(),
            "X-Plivo-Signature-V3-Nonce": nonce}


def zadarma_headers(path: str, body: bytes) -> dict:
    # zadarma.com API notifications: Signature = base64 of the hex HMAC-SHA1 of the result
    # field (the text of the JSON), keyed with the API secret.
    result = dict(urllib.parse.parse_qsl(body.decode()))["result"]
    mac = hmac.new(ZADARMA_SECRET.encode(), result.encode(), hashlib.sha1).hexdigest()
    return {"Signature": base64.b64encode(mac.encode()).decode()}


SIGNERS = {"twilio": twilio_headers, "telnyx": telnyx_headers, "vonage": vonage_headers,
           "plivo": plivo_headers, "zadarma": zadarma_headers}


def replay(d: Daemon, name: str, fixture: str, method: str = "POST", raw: bytes = None):
    """The fixture (or `raw` in its format), as the provider sends it, at interface
    `name`'s url_path."""
    if raw is None:
        raw = (FIXTURES / fixture).read_bytes()
    path = f"/{name}"
    headers = {}
    if method == "GET":
        path, body = f"{path}?{raw.decode().strip()}", b""
    else:
        body = raw
        headers["Content-Type"] = FORM if fixture.endswith(".txt") else JSON
    if name in SIGNERS:
        headers.update(SIGNERS[name](path, body))
    conn = http.client.HTTPConnection("127.0.0.1", d.webhook_port, timeout=30)
    try:
        conn.request(method, path, body=body if method != "GET" else None, headers=headers)
        response = conn.getresponse()
        return response.status, response.getheader("Content-Type"), response.read()
    finally:
        conn.close()


def call_fields(path: Path) -> tuple:
    fields = {}
    for line in path.read_text().splitlines():
        for name in ("to", "from", "body"):
            prefix = f"setvar: MESSAGE({name})="
            if line.startswith(prefix):
                fields[name] = line[len(prefix):]
    return fields["to"], fields["from"], urllib.parse.unquote(fields["body"])


def new_call_file(d: Daemon, before: set) -> tuple:
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and not set(d.callfiles()) - before:
        time.sleep(0.02)
    time.sleep(0.2)  # and nothing more follows
    new = sorted(set(d.callfiles()) - before)
    assert len(new) == 1, (new, d.output()[-3000:])
    return call_fields(new[0])


# -- inbound: the documented examples -----------------------------------------------------

TWILIO_MEDIA = "\n".join(
    "https://api.twilio.com/2010-04-01/Accounts/ACXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXX/Messages/"
    f"SM1f0e8ae6ade43cb3c0ce4525424e404f/Media/ME{i}" for i in range(2))

# preset: (fixture, method, answer body, (to, from, text) of the call file)
MESSAGES = {
    "twilio": ("twilio-inbound-message.txt", "POST", b"<Response></Response>",
               ("+15558675310", "+15017122661", "Ahoy! Pictures attached.\n\n" + TWILIO_MEDIA)),
    "signalwire": ("signalwire-inbound-message.txt", "POST", b"<Response></Response>",
                   ("+15551234567", "+15557654321", "Hello World!")),
    "telnyx": ("telnyx-message-received.json", "POST", b"",
               ("+1773005000", "+1312500000", "Hello from Telnyx!")),
    "vonage": ("vonage-inbound-sms.json", "POST", b"",
               ("447700900000", "447700900001", "Hello From Vonage!")),
    "plivo": ("plivo-incoming-sms.txt", "POST", b"<Response></Response>",
              ("14156667777", "14156667778", "Hello, from Plivo!")),
    "bandwidth": ("bandwidth-message-received.json", "POST", b"",
                  ("+12345678902", "+12345678901", "Hey, check this out!\n\nhttps://messaging.bandwidth.com"
                   "/api/v2/users/{userId}/media/14762070468292kw2fuqty55yp2b2/0/bw.png")),
    "sinch": ("sinch-mo-text.json", "POST", b"", ("12017777777", "12015555555", "Hello John!")),
    "46elks": ("46elks-incoming-sms.txt", "POST", b"",
               ("+46706860000", "+46706861004", "Hello how are you?")),
    "zadarma": ("zadarma-sms.txt", "POST", b"", ("442037691880", "+447700900123", "Hello from Zadarma")),
    "voipms": ("voipms-sms-url-callback.txt", "GET", b"ok",
               ("5551234567", "5559876543", "Hello from VoIP.ms!")),
    "flowroute": ("flowroute-inbound-sms.json", "POST", b"",
                  ("12066418000", "18553569768", "Hello there from Flowroute!")),
    "clicksend": ("clicksend-inbound-sms.txt", "POST", b"",
                  ("+61481074400", "+61411111111", "Hello from ClickSend")),
}


def test_every_preset_with_a_webhook_is_replayed():
    from websmsd.itsp import presets

    assert set(MESSAGES) == set(INBOUND) == {p.name for p in presets.PRESETS.values() if p.websmsd}


@pytest.mark.parametrize("name", sorted(MESSAGES))
def test_documented_inbound_message_becomes_one_call_file(daemon, name):
    fixture, method, answer, expected = MESSAGES[name]
    before = set(daemon.callfiles())
    status, _, body = replay(daemon, name, fixture, method)
    assert (status, body) == (200, answer), body
    assert new_call_file(daemon, before) == expected
    # The provider retries: the same event again is acknowledged and stored once.
    if name not in ("zadarma",):  # Zadarma's example carries no message id
        before = set(daemon.callfiles())
        assert replay(daemon, name, fixture, method)[0] == 200
        time.sleep(0.2)
        assert set(daemon.callfiles()) == before


# Texts that look like the fields of every preset: anyone can text them to the number.
LOOKALIKES = [
    json.dumps({"To": "100", "From": "911", "Body": "spoofed", "to": "100", "from": "911",
                "text": "spoofed", "body": "spoofed", "Text": "spoofed", "message": "x",
                "caller_id": "911", "caller_did": "100", "owner": "100",
                "data": {"payload": {"to": [{"phone_number": "100"}]}}}, separators=(",", ":")),
    "To=100&From=911&Body=spoofed&to=100&from=911&text=spoofed&message=spoofed&Text=spoofed"
    "&caller_did=100&caller_id=911&result=%7B%7D",
]


def _set_at(node, path: str, value: str):
    """Set the text at a dotted path of a decoded document; return the old text."""
    *steps, last = path.split(".")
    if isinstance(node, list):  # a batch of events (Bandwidth): the first one
        node = node[0]
    for step in steps:
        node = node[int(step)] if isinstance(node, list) else node[step]
    old, node[last] = node[last], value
    return old


def with_text(name: str, fixture: str, text: str, tag: str):
    """The fixture with its SMS text replaced by `text` (and its message id made new,
    so that the provider's retry rule does not hide it); and the text it had."""
    from websmsd.itsp import presets

    keys = presets.PRESETS[name].websmsd
    raw = (FIXTURES / fixture).read_bytes()
    if fixture.endswith(".json"):
        doc = json.loads(raw)
        old = _set_at(doc, keys["key_body"], text)
        if "key_id" in keys:
            _set_at(doc, keys["key_id"], f"{tag}-{name}")
        return json.dumps(doc).encode(), old
    pairs = urllib.parse.parse_qsl(raw.decode().strip(), keep_blank_values=True)
    first, _, rest = keys["key_body"].partition(".")
    out, old = [], None
    for k, v in pairs:
        if k == first and rest:  # a JSON document in a form field (Zadarma's result)
            inner = json.loads(v)
            old = _set_at(inner, rest, text)
            v = json.dumps(inner, ensure_ascii=False)
        elif k == first:
            old, v = v, text
        elif k == keys.get("key_id"):
            v = f"{tag}-{name}"
        out.append((k, v))
    return urllib.parse.urlencode(out, quote_via=urllib.parse.quote).encode(), old


@pytest.mark.parametrize("name", sorted(MESSAGES))
def test_a_text_that_looks_like_fields_is_delivered_as_sent(daemon, name):
    # Signed where the preset checks signatures (the provider signs what it was sent),
    # unsigned elsewhere: either way, the call file has the text as sent and the real
    # sender and recipient.
    fixture, method, answer, (to, sender, text) = MESSAGES[name]
    for i, lookalike in enumerate(LOOKALIKES):
        raw, old = with_text(name, fixture, lookalike, f"lookalike{i}")
        before = set(daemon.callfiles())
        status, _, body = replay(daemon, name, fixture, method, raw=raw)
        assert (status, body) == (200, answer), body
        assert new_call_file(daemon, before) == (to, sender, text.replace(old, lookalike))


def test_signed_presets_refuse_what_is_not_signed(daemon):
    for name, (fixture, method, _, _) in MESSAGES.items():
        if name not in SIGNERS:
            continue
        raw = (FIXTURES / fixture).read_bytes()
        conn = http.client.HTTPConnection("127.0.0.1", daemon.webhook_port, timeout=30)
        conn.request("POST", f"/{name}", body=raw,
                     headers={"Content-Type": FORM if fixture.endswith(".txt") else JSON})
        response = conn.getresponse()
        assert (name, response.status) == (name, 403), response.read()
        conn.close()


def test_zadarma_echo_check(daemon):
    conn = http.client.HTTPConnection("127.0.0.1", daemon.webhook_port, timeout=30)
    conn.request("GET", "/zadarma?zd_echo=1f6c2a")
    response = conn.getresponse()
    assert (response.status, response.read()) == (200, b"1f6c2a")


def test_twilio_answer_is_twiml(daemon):
    _, content_type, _ = replay(daemon, "twilio", "twilio-status-delivered.txt")
    assert content_type == "text/xml"


# -- outbound: the documented request shapes ----------------------------------------------


def basic(user: str, secret: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{secret}".encode()).decode()


def form(body: bytes) -> dict:
    return dict(urllib.parse.parse_qsl(body.decode(), keep_blank_values=True, strict_parsing=True))


def zadarma_authorization(path: str, body: bytes) -> str:
    # zadarma.com/en/support/api, authorization: base64(hex HMAC-SHA1(secret,
    # method path + sorted query + md5(sorted query))).
    query = body.decode()
    signed = path + query + hashlib.md5(query.encode()).hexdigest()
    mac = hmac.new(ZADARMA_SECRET.encode(), signed.encode(), hashlib.sha1).hexdigest()
    return f"{ZADARMA_KEY}:{base64.b64encode(mac.encode()).decode()}"


# preset: (to, from) as the dialplan passes them, the provider's documented success
# answer (status, JSON), the provider id it carries, and a check of the request.
SENDS = {
    "twilio": ("+15558675310", "+15017122661",
               (201, {"sid": "SM2f6e6a9e1e9b4c1f8c8a6b0f3d1e2a7b", "account_sid": TWILIO_SID,
                      "status": "queued", "error_code": None, "num_segments": "1"}),
               "SM2f6e6a9e1e9b4c1f8c8a6b0f3d1e2a7b"),
    "signalwire": ("+15557654321", "+15551234567",
                   (201, {"sid": "0a059168-ead0-41af-9d1f-343dae832527", "status": "queued",
                          "account_sid": SIGNALWIRE_PROJECT}), "0a059168-ead0-41af-9d1f-343dae832527"),
    "telnyx": ("+13125000000", "+13125550001",
               (200, {"data": {"record_type": "message", "id": "ac012cbf-5e09-46af-a69a-7c0e2d90993c",
                               "type": "SMS"}}), "ac012cbf-5e09-46af-a69a-7c0e2d90993c"),
    "vonage": ("+447700900000", "+447700900001",
               (202, {"message_uuid": "aaaaaaaa-bbbb-4ccc-8ddd-0123456789ab"}),
               "aaaaaaaa-bbbb-4ccc-8ddd-0123456789ab"),
    "plivo": ("+14157778888", "+14156667777",
              (202, {"message": "message(s) queued",
                     "message_uuid": ["db3ce55a-7f1d-11e1-8ea7-1231380bc196"],
                     "api_id": "db342550-7f1d-11e1-8ea7-1231380bc196"}),
              "db3ce55a-7f1d-11e1-8ea7-1231380bc196"),
    "bandwidth": ("+12345678902", "+12345678901",
                  (202, {"id": "14762070468292kw2fuqty55yp2b2", "owner": "+12345678901",
                         "to": ["+12345678902"], "from": "+12345678901", "direction": "out"}),
                  "14762070468292kw2fuqty55yp2b2"),
    "sinch": ("+12017777777", "+12015555555",
              (201, {"id": "{batch_id}", "to": ["12017777777"], "from": "12015555555", "canceled": False}),
              "{batch_id}"),
    "46elks": ("+46700000000", "+46706860000",
               (200, {"status": "created", "id": "s17a6dafb12d6b1cabc053d57dac2b9d8",
                      "from": "+46706860000", "to": "+46700000000", "direction": "outgoing"}),
               "s17a6dafb12d6b1cabc053d57dac2b9d8"),
    "zadarma": ("+447700900123", "+442037691880",
                (200, {"status": "success", "messages": 1, "cost": 0.24, "currency": "USD"}), None),
    "voipms": ("5559876543", "5551234567", (200, {"status": "success", "sms": 23434}), "23434"),
    "flowroute": ("2065550100", "2065550199",  # as dialled: num_country US makes them E.164
                  (202, {"data": {"type": "message", "id": "mdr2-39cadeace66e11e7aff806cd7f24ba2d"}}),
                  "mdr2-39cadeace66e11e7aff806cd7f24ba2d"),
    "clicksend": ("+61411111111", "+61481074400",
                  (200, {"http_code": 200, "response_code": "SUCCESS",
                         "response_msg": "Messages queued for delivery.",
                         "data": {"messages": [{"message_id": "BF7AD270-0DE2-418B-B606-71D527D9C1AE",
                                                "status": "SUCCESS"}]}}),
                  "BF7AD270-0DE2-418B-B606-71D527D9C1AE"),
}
TEXT = "Hi from the PBX ✓ & = +"


def check_request(name: str, req: dict) -> None:
    h, body = req["headers"], req["body"]
    split = urllib.parse.urlsplit(req["path"])
    path = split.path
    if name == "twilio":
        assert (req["method"], path) == ("POST", f"/2010-04-01/Accounts/{TWILIO_SID}/Messages.json")
        assert h["authorization"] == basic(TWILIO_SID, TWILIO_TOKEN)
        assert h["content-type"] == FORM
        assert form(body) == {"To": "+15558675310", "From": "+15017122661", "Body": TEXT}
    elif name == "signalwire":
        assert path == f"/api/laml/2010-04-01/Accounts/{SIGNALWIRE_PROJECT}/Messages.json"
        assert h["authorization"] == basic(SIGNALWIRE_PROJECT, "PTsignalwire")
        assert form(body) == {"To": "+15557654321", "From": "+15551234567", "Body": TEXT}
    elif name == "telnyx":
        assert (req["method"], path) == ("POST", "/v2/messages")
        assert h["authorization"] == "Bearer KEY0123456789ABCDEF_telnyx"
        assert h["content-type"] == JSON
        assert json.loads(body) == {"to": "+13125000000", "from": "+13125550001", "text": TEXT}
    elif name == "vonage":
        assert path == "/v1/messages" and h["authorization"] == basic(VONAGE_KEY, VONAGE_SECRET)
        assert json.loads(body) == {"to": "447700900000", "from": "447700900001", "text": TEXT,
                                    "message_type": "text", "channel": "sms"}
    elif name == "plivo":
        assert path == f"/v1/Account/{PLIVO_ID}/Message/"
        assert h["authorization"] == basic(PLIVO_ID, PLIVO_TOKEN)
        assert json.loads(body) == {"dst": "+14157778888", "src": "+14156667777", "text": TEXT}
    elif name == "bandwidth":
        assert path == "/api/v2/users/9900000/messages"
        assert h["authorization"] == basic("api-user", "api-password")
        assert json.loads(body) == {"to": ["+12345678902"], "from": "+12345678901", "text": TEXT,
                                    "applicationId": "93de2206-9669-4e07-948d-329f4b722ee2"}
    elif name == "sinch":
        assert path == "/xms/v1/jd63jf88477ll123ab4567cd89012ef3/batches"
        assert h["authorization"] == "Bearer sinch-api-token-0123"
        assert json.loads(body) == {"to": ["+12017777777"], "from": "+12015555555", "body": TEXT,
                                    "delivery_report": "per_recipient"}
    elif name == "46elks":
        assert path == "/a1/sms"
        assert h["authorization"] == basic("u0123456789abcdef0123456789abcdef", "ELKSPASSWORD0123")
        assert form(body) == {"to": "+46700000000", "from": "+46706860000", "message": TEXT}
    elif name == "zadarma":
        assert path == "/v1/sms/send/" and h["content-type"] == FORM
        assert form(body) == {"number": "+447700900123", "caller_id": "+442037691880", "message": TEXT}
        assert h["authorization"] == zadarma_authorization(path, body)
    elif name == "voipms":
        assert (req["method"], path, body) == ("GET", "/api/v1/rest.php", b"")
        assert "authorization" not in h
        assert dict(urllib.parse.parse_qsl(split.query)) == {
            "api_username": "pbx@example.com", "api_password": "s3cret pass&=", "method": "sendSMS",
            "did": "5551234567", "dst": "5559876543", "message": TEXT}
    elif name == "flowroute":
        assert path == "/v2.1/messages"
        assert h["authorization"] == basic("12345678", "flowroute-secret-key")
        assert json.loads(body) == {"to": "12065550100", "from": "12065550199", "body": TEXT}
    elif name == "clicksend":
        assert path == "/v3/sms/send" and h["authorization"] == basic("pbx-owner", "CLICKSEND-API-KEY")
        assert json.loads(body) == {"messages": [{"to": "+61411111111", "from": "+61481074400",
                                                  "body": TEXT, "source": "websmsd"}]}
    else:  # pragma: no cover
        raise AssertionError(name)


def send(d: Daemon, itsp: FakeITSP, name: str) -> tuple:
    to, sender, (status, answer), _ = SENDS[name]
    itsp.answers = [(status, json.dumps(answer).encode())]
    count = len(itsp.requests)
    result = api_json(d.api_url + "/api/send",
                      {"to": to, "from": sender, "body": TEXT, "index": name, "wait": 10})
    assert result["status"] == "SENT", result
    requests = itsp.wait(count + 1)
    assert len(requests) == count + 1
    return result["id"], requests[-1]


def test_every_preset_with_a_webhook_sends():
    assert set(SENDS) == set(OUTBOUND) == set(MESSAGES)


@pytest.mark.parametrize("name", sorted(SENDS))
def test_outbound_message_reaches_the_provider_in_its_shape(daemon, itsp, name):
    message_id, request = send(daemon, itsp, name)
    check_request(name, request)
    assert daemon.rows("SELECT status, provider_id, route FROM messages WHERE id = ?",
                       (message_id,)) == [("sent", SENDS[name][3], f"itsp:{name}")]


# -- delivery reports -----------------------------------------------------------------

# preset: the documented report, and the status it must give the message sent before.
REPORTS = {
    "twilio": [("twilio-status-delivered.txt", "delivered"), ("twilio-status-undelivered.txt", "failed")],
    "telnyx": [("telnyx-message-finalized.json", "delivered")],
    "vonage": [("vonage-message-status-delivered.json", "delivered")],
    "plivo": [("plivo-status-delivered.txt", "delivered")],
    "bandwidth": [("bandwidth-message-delivered.json", "delivered"),
                  ("bandwidth-message-failed.json", "failed")],
    "sinch": [("sinch-recipient-delivery-report.json", "delivered")],
    "46elks": [("46elks-delivery-report.txt", "delivered")],
}


@pytest.mark.parametrize("name, fixture, status", [
    (name, fixture, status) for name, reports in sorted(REPORTS.items()) for fixture, status in reports])
def test_documented_delivery_report_updates_the_message_sent(daemon, itsp, name, fixture, status):
    message_id, _ = send(daemon, itsp, name)
    before = set(daemon.callfiles())
    answer = replay(daemon, name, fixture)
    assert answer[0] == 200, answer
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        rows = daemon.rows("SELECT status FROM messages WHERE id = ?", (message_id,))
        if rows != [("sent",)]:
            break
        time.sleep(0.02)
    assert rows == [(status,)], daemon.output()[-2000:]
    assert daemon.rows("SELECT COUNT(*) FROM reports WHERE message_id = ?", (message_id,)) == [(1,)]
    assert set(daemon.callfiles()) == before  # a report is no message


def test_check_config_gives_each_webhook_url(daemon):
    import os
    import subprocess
    import sys

    from blackbox import ROOT

    env = dict(os.environ, PYTHONPATH=str(ROOT))
    code = "import sys; from websmsd.cli import websmsd_main; sys.exit(websmsd_main())"
    r = subprocess.run([sys.executable, "-c", code, "check-config", str(daemon.config)],
                       capture_output=True, text=True, env=env, timeout=60)
    assert r.returncode == 0, r.stderr
    base = f"http://<this machine's public address>:{daemon.webhook_port}"
    for name in INBOUND:
        suffix = "?to={TO}&from={FROM}&message={MESSAGE}&id={ID}&date={TIMESTAMP}" if name == "voipms" else ""
        host = PUBLIC if name in ("twilio", "plivo") else base  # sig_url: the public URL
        assert f"    webhook URL for the provider: {host}/{name}{suffix}\n" in r.stdout, name
    assert "bound to loopback only" in r.stdout
    assert "warnings: none\n" in r.stdout
    for secret in (TWILIO_TOKEN, PLIVO_TOKEN, VONAGE_SECRET, VONAGE_SIG, ZADARMA_SECRET):
        assert secret not in r.stdout
