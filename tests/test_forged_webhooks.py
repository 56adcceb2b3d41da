"""Forged webhooks: what a stranger can do with a captured genuine request, or without one.

Every interface is configured from its provider preset, as an owner would write it. The
signers are written from the providers' documentation (not taken from websmsd). For each
provider with a signature check:

- a correctly signed, realistic webhook is accepted and read as sent;
- refused with 403 and nothing stored: a tampered body, a signature over another URL,
  a stale timestamp (where the scheme has one), no signature, extra unsigned fields that
  would change To, From or the text;
- a genuine SMS whose *text* holds JSON or form-encoded look-alikes of the keys (anyone
  can text that to the number, and the provider signs it faithfully) is delivered with
  that text as sent and the real sender and recipient.

The same look-alike texts through every preset (signed or not) and through the real
daemon, down to the call file, are in test_preset_replay.py.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from urllib.parse import quote, urlencode

import pytest

from test_inbound_events import Hook
from test_webhook import http_request
from websmsd.config import loads
from websmsd.itsp import fields as webhook

NOW = 1_700_000_000
PUBLIC = "https://pbx.example.com"
FORM = "application/x-www-form-urlencoded"
JSON = "application/json"

TWILIO_TOKEN = "twilio-auth-token-0123456789abcdef"
PLIVO_TOKEN = "plivo-auth-token-0123"
VONAGE_SECRET = "vonage-signature-secret-0123456789"
ZADARMA_SECRET = "zadarma-api-secret"

# The texts a stranger would like to be read as fields.
LOOKALIKES = [
    json.dumps({"from": "911", "to": "100", "text": "spoofed"}),
    json.dumps({"To": "100", "From": "911", "Body": "spoofed", "Text": "spoofed",
                "caller_id": "911", "caller_did": "100", "message_uuid": "x", "MessageSid": "SMx",
                "data": {"payload": {"to": [{"phone_number": "100"}],
                                     "from": {"phone_number": "911"}, "text": "spoofed"}}}),
    "To=100&From=911&Body=spoofed&to=100&from=911&text=spoofed&caller_did=100&caller_id=911",
    '[{"to": "100", "from": "911", "text": "spoofed"}]',
]


def preset(name: str, extra: str = ""):
    settings = loads(f"[websmsd]\npreset = {name}\n{extra}\n[astqueue]\n", "websms.conf")
    [iface] = settings.inbound.interfaces
    return iface


# -- the providers' signing, from their documentation ------------------------------------


def twilio(url: str, params, token=TWILIO_TOKEN, header="X-Twilio-Signature"):
    data = url + "".join(k + v for k, v in sorted(params))
    mac = hmac.new(token.encode(), data.encode(), hashlib.sha1).digest()
    return [f"{header}: {base64.b64encode(mac).decode()}"]


def plivo_v3(url: str, params, nonce="43198201742394", token=PLIVO_TOKEN):
    # The URL (no query here), "?", the POST parameters as name+value sorted by name,
    # ".", the nonce; base64 HMAC-SHA256 with the auth token.
    signed = url + "?" + "".join(k + v for k, v in sorted(params)) + "." + nonce
    mac = hmac.new(token.encode(), signed.encode(), hashlib.sha256).digest()
    return [f"X-Plivo-Signature-V3: {base64.b64encode(mac).decode()}",
            f"X-Plivo-Signature-V3-Nonce: {nonce}"]


def plivo_v2(url: str, nonce="43198201742394", token=PLIVO_TOKEN):
    mac = hmac.new(token.encode(), (url + nonce).encode(), hashlib.sha256).digest()
    return [f"X-Plivo-Signature-V2: {base64.b64encode(mac).decode()}",
            f"X-Plivo-Signature-V2-Nonce: {nonce}"]


def vonage_jwt(body: bytes, iat=NOW, secret=VONAGE_SECRET):
    def part(obj):
        return base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()

    head = part({"alg": "HS256", "typ": "JWT"})
    claims = part({"iat": iat, "jti": "j1", "iss": "Vonage",
                   "payload_hash": hashlib.sha256(body).hexdigest()})
    mac = hmac.new(secret.encode(), f"{head}.{claims}".encode(), hashlib.sha256).digest()
    return [f"Authorization: Bearer {head}.{claims}."
            + base64.urlsafe_b64encode(mac).rstrip(b"=").decode()]


def vonage_sig(params, secret=VONAGE_SECRET):
    # SMS API signed requests: "&name=value" for the sorted parameters ("&" and "=" in
    # values become "_"), then md5 of that + the secret.
    text = "".join("&" + k + "=" + v.replace("&", "_").replace("=", "_")
                   for k, v in sorted(params) if k != "sig")
    return hashlib.md5((text + secret).encode()).hexdigest()


def zadarma(result: str, secret=ZADARMA_SECRET):
    mac = hmac.new(secret.encode(), result.encode(), hashlib.sha1).hexdigest()
    return [f"Signature: {base64.b64encode(mac.encode()).decode()}"]


def telnyx_key():
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    private = Ed25519PrivateKey.generate()
    public = private.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    return private, base64.b64encode(public).decode()


def telnyx(private, body: bytes, stamp=NOW):
    signature = base64.b64encode(private.sign(str(stamp).encode() + b"|" + body)).decode()
    return [f"telnyx-signature-ed25519: {signature}", f"telnyx-timestamp: {stamp}"]


# -- one provider, every attack ----------------------------------------------------------


def accepted(hook, raw, expected):
    resp = hook.roundtrip(raw)
    assert resp.status == 200, resp.body
    message = hook.sinks.messages[-1]
    assert (message.recipient, message.sender, message.body) == expected
    return message


def refused(hook, raw, why: bytes = b""):
    before = len(hook.sinks.accepts)
    resp = hook.roundtrip(raw, fire=False)
    assert resp.status == 403, resp.body
    assert resp.body.startswith(b"bad signature: ") and why in resp.body, resp.body
    assert len(hook.sinks.accepts) == before  # nothing stored


class TwilioLike:
    """Twilio, and SignalWire with sig_method twilio and its Signing Key."""

    def __init__(self, header="X-Twilio-Signature", name="twilio"):
        extra = f"sig_secret = {TWILIO_TOKEN}\nsig_url = {PUBLIC}"
        if name == "signalwire":
            extra += "\nsig_method = twilio"
        self.hook = Hook(preset(name, extra))
        self.header = header

    def request(self, fields, url=PUBLIC + "/sms", body=None, path="/sms"):
        body = urlencode(fields).encode() if body is None else body
        return http_request(path=path, body=body,
                            headers=twilio(url, list(fields.items()), header=self.header))


TWILIO_FIELDS = {"ToCountry": "US", "SmsMessageSid": "SM1", "NumMedia": "0", "SmsStatus": "received",
                 "To": "+15558675310", "From": "+15017122661", "MessageSid": "SM1",
                 "Body": "Ahoy!", "AccountSid": "AC1", "ApiVersion": "2010-04-01"}


@pytest.mark.parametrize("header,name", [("X-Twilio-Signature", "twilio"),
                                         ("X-SignalWire-Signature", "signalwire")])
def test_twilio_and_signalwire(header, name):
    t = TwilioLike(header, name)
    accepted(t.hook, t.request(TWILIO_FIELDS), ("+15558675310", "+15017122661", "Ahoy!"))
    # Tampered text, the signature of the genuine one.
    genuine_sig = twilio(PUBLIC + "/sms", list(TWILIO_FIELDS.items()), header=header)
    tampered = urlencode({**TWILIO_FIELDS, "Body": "Your account is locked"}).encode()
    refused(t.hook, http_request(path="/sms", body=tampered, headers=genuine_sig), b"does not match")
    # Signed for another URL (another interface, another host).
    refused(t.hook, t.request(TWILIO_FIELDS, url=PUBLIC + "/other"), b"does not match")
    refused(t.hook, t.request(TWILIO_FIELDS, url="https://evil.example/sms"), b"does not match")
    # No signature.
    refused(t.hook, http_request(path="/sms", body=urlencode(TWILIO_FIELDS).encode()),
            b"no X-Twilio-Signature header")
    # Extra unsigned fields after the signed ones (a later field wins in PHP).
    extra = urlencode(TWILIO_FIELDS).encode() + b"&To=100&From=911&Body=spoofed"
    refused(t.hook, http_request(path="/sms", body=extra, headers=genuine_sig))
    # ...or in the query string, which is signed as part of the URL.
    refused(t.hook, http_request(path="/sms?To=100&From=911&Body=x",
                                 body=urlencode(TWILIO_FIELDS).encode(), headers=genuine_sig))
    # A genuine SMS whose text looks like fields: read as sent.
    for text in LOOKALIKES:
        fields = {**TWILIO_FIELDS, "Body": text, "MessageSid": f"SM{len(text)}{text[:2]}"}
        accepted(t.hook, t.request(fields), ("+15558675310", "+15017122661", text))


def test_telnyx():
    private, public = telnyx_key()
    hook = Hook(preset("telnyx", f'sig_secret = "{public}"'))
    hook.resource._now = lambda: NOW

    def event(text, to="+1773005000", sender="+1312500000", event_id="e1"):
        return json.dumps({"data": {"event_type": "message.received", "id": "ev", "payload": {
            "id": event_id, "from": {"phone_number": sender}, "text": text,
            "to": [{"phone_number": to, "status": "webhook_delivered"}], "type": "SMS"}},
            "meta": {"attempt": 1}}).encode()

    body = event("Hello from Telnyx!")
    accepted(hook, http_request(body=body, ctype=JSON, headers=telnyx(private, body)),
             ("+1773005000", "+1312500000", "Hello from Telnyx!"))
    tampered = event("Your account is locked")
    refused(hook, http_request(body=tampered, ctype=JSON, headers=telnyx(private, body)),
            b"does not match")
    refused(hook, http_request(body=body, ctype=JSON, headers=telnyx(private, body, NOW - 3600)),
            b"off our clock")
    refused(hook, http_request(body=body, ctype=JSON), b"no telnyx-signature-ed25519")
    # Fields added to the JSON: the body is signed as a whole.
    added = body[:-1] + b', "to": "100", "from": "911", "text": "spoofed"}'
    refused(hook, http_request(body=added, ctype=JSON, headers=telnyx(private, body)))
    # The URL is not signed: fields in a query string are never read when only the body
    # is (the message stays the signed one; a replay of its id is acknowledged, stored once).
    body2 = event("Second", event_id="e2")
    accepted(hook, http_request(path="/?to=100&from=911&text=spoofed", body=body2, ctype=JSON,
                                headers=telnyx(private, body2)),
             ("+1773005000", "+1312500000", "Second"))
    for i, text in enumerate(LOOKALIKES):
        body = event(text, event_id=f"l{i}")
        accepted(hook, http_request(body=body, ctype=JSON, headers=telnyx(private, body)),
                 ("+1773005000", "+1312500000", text))


def test_plivo_v3_and_v2():
    hook = Hook(preset("plivo", f"sig_secret = {PLIVO_TOKEN}\nsig_url = {PUBLIC}"))
    assert hook.resource.settings.default.sig_method == "plivo-v3"
    fields = {"From": "14156667778", "To": "14156667777", "Text": "Hello, from Plivo!",
              "Type": "sms", "MessageUUID": "u1", "TotalRate": "0", "Units": "1"}

    def post(fields, headers, path="/sms", body=None):
        body = urlencode(fields).encode() if body is None else body
        return http_request(path=path, body=body, headers=headers)

    good = plivo_v3(PUBLIC + "/sms", list(fields.items()))
    accepted(hook, post(fields, good), ("14156667777", "14156667778", "Hello, from Plivo!"))
    refused(hook, post({**fields, "Text": "locked"}, good), b"does not match")
    refused(hook, post(fields, plivo_v3(PUBLIC + "/other", list(fields.items()))), b"does not match")
    refused(hook, post(fields, []), b"no X-Plivo-Signature-V3")
    refused(hook, post(fields, good, body=urlencode(fields).encode() + b"&To=100&From=911"))
    # V2 signs the URL and a nonce only: one captured pair would let anyone post any text.
    refused(hook, post({**fields, "Text": "any text at all"}, plivo_v2(PUBLIC + "/sms")),
            b"no X-Plivo-Signature-V3")
    for i, text in enumerate(LOOKALIKES):
        f = {**fields, "Text": text, "MessageUUID": f"l{i}"}
        accepted(hook, post(f, plivo_v3(PUBLIC + "/sms", list(f.items()))),
                 ("14156667777", "14156667778", text))
    # sig_method = plivo still takes V2 (older accounts), and check-config says why not to.
    legacy = loads(f"[websmsd]\npreset = plivo\nsig_method = plivo\nsig_secret = {PLIVO_TOKEN}\n"
                   f"sig_url = {PUBLIC}\n[astqueue]\n", "websms.conf")
    assert any("plivo-v3" in w and "V2" in w for w in legacy.warnings)
    hook = Hook(legacy.inbound.interfaces[0])
    accepted(hook, post(fields, plivo_v2(PUBLIC + "/sms")),
             ("14156667777", "14156667778", "Hello, from Plivo!"))


VONAGE_BODY = {"channel": "sms", "message_uuid": "aaaaaaaa-bbbb-4ccc-8ddd-0123456789ab",
               "to": "447700900000", "from": "447700900001", "timestamp": "2025-02-03T12:14:25Z",
               "text": "Hello From Vonage!", "sms": {"num_messages": "1"}, "message_type": "text"}


def test_vonage_jwt():
    hook = Hook(preset("vonage", f"sig_secret = {VONAGE_SECRET}"))
    hook.resource._now = lambda: NOW
    body = json.dumps(VONAGE_BODY).encode()
    accepted(hook, http_request(body=body, ctype=JSON, headers=vonage_jwt(body)),
             ("447700900000", "447700900001", "Hello From Vonage!"))
    tampered = json.dumps({**VONAGE_BODY, "text": "locked"}).encode()
    refused(hook, http_request(body=tampered, ctype=JSON, headers=vonage_jwt(body)), b"payload_hash")
    refused(hook, http_request(body=body, ctype=JSON, headers=vonage_jwt(body, iat=NOW - 3600)),
            b"off our clock")
    refused(hook, http_request(body=body, ctype=JSON), b"no Authorization")
    refused(hook, http_request(body=body[:-1] + b',"to":"100"}', ctype=JSON, headers=vonage_jwt(body)))
    # The JWT says nothing of the URL: a captured token with an empty body and fields in
    # the query string is refused (its payload_hash is the body's), and a query string
    # beside a signed body is never read.
    refused(hook, http_request(path="/?to=100&from=911&text=x", ctype=JSON, headers=vonage_jwt(body)))
    body2 = json.dumps({**VONAGE_BODY, "message_uuid": "u2", "text": "Second"}).encode()
    accepted(hook, http_request(path="/?to=100&from=911&text=x", body=body2, ctype=JSON,
                                headers=vonage_jwt(body2)),
             ("447700900000", "447700900001", "Second"))
    # The attack of the report: a genuine SMS whose text is JSON naming other numbers.
    for i, text in enumerate(LOOKALIKES):
        body = json.dumps({**VONAGE_BODY, "message_uuid": f"l{i}", "text": text}).encode()
        accepted(hook, http_request(body=body, ctype=JSON, headers=vonage_jwt(body)),
                 ("447700900000", "447700900001", text))


def test_vonage_legacy_sig():
    hook = Hook(preset("vonage", f"sig_secret = {VONAGE_SECRET}\nkey_id = messageId\n"
                                 'msg_filter = "type=text"'))
    hook.resource._now = lambda: NOW

    def signed(fields, stamp=NOW):
        params = {**fields, "timestamp": str(stamp)}
        return {**params, "sig": vonage_sig(list(params.items()))}

    fields = {"msisdn": "447700900001", "to": "447700900000", "messageId": "0A0000000123ABCD1",
              "text": "Hello", "type": "text", "from": "447700900001"}
    accepted(hook, http_request(body=urlencode(signed(fields)).encode()),
             ("447700900000", "447700900001", "Hello"))
    good = signed(fields)
    refused(hook, http_request(body=urlencode({**good, "text": "locked"}).encode()), b"does not match")
    refused(hook, http_request(body=urlencode(signed({**fields, "messageId": "2"},
                                                     NOW - 3600)).encode()), b"off our clock")
    refused(hook, http_request(body=urlencode(fields).encode()), b"no Authorization bearer")
    refused(hook, http_request(body=urlencode(good).encode() + b"&to=100&from=911"))
    for i, text in enumerate(LOOKALIKES):
        f = signed({**fields, "text": text, "messageId": f"l{i}"})
        accepted(hook, http_request(body=urlencode(f).encode()),
                 ("447700900000", "447700900001", text))


def test_zadarma():
    hook = Hook(preset("zadarma", f"sig_secret = {ZADARMA_SECRET}"))

    def notification(text, to="442037691880", sender="+447700900123"):
        result = json.dumps({"caller_id": sender, "caller_did": to, "text": text},
                            ensure_ascii=False)
        return result, b"event=SMS&result=" + quote(result).encode()

    result, body = notification("Hello from Zadarma")
    accepted(hook, http_request(body=body, headers=zadarma(result)),
             ("442037691880", "+447700900123", "Hello from Zadarma"))
    _, tampered = notification("Your account is locked")
    refused(hook, http_request(body=tampered, headers=zadarma(result)), b"does not match")
    refused(hook, http_request(body=body), b"no Signature")
    # The report's attack: a captured notification (no timestamp, valid forever) with
    # unsigned fields after `result`.
    forged = body + b"&text=Your+account+is+locked%2C+call+900&caller_id=911&caller_did=100"
    refused(hook, http_request(body=forged, headers=zadarma(result)), b"unsigned field")
    refused(hook, http_request(body=body + b"&result=%7B%7D", headers=zadarma(result)),
            b"more than once")
    # Everything in the query string too (Zadarma posts a form; a query is not signed).
    refused(hook, http_request(path="/?caller_id=911&caller_did=100&text=x", body=body + b"&x=1",
                               headers=zadarma(result)), b"unsigned field")
    accepted_query = hook.roundtrip(http_request(path="/?caller_id=911&caller_did=100&text=x",
                                                 body=notification("q")[1],
                                                 headers=zadarma(notification("q")[0])))
    assert accepted_query.status == 200
    assert (hook.sinks.messages[-1].recipient, hook.sinks.messages[-1].sender) == (
        "442037691880", "+447700900123")
    for text in LOOKALIKES:
        result, body = notification(text)
        accepted(hook, http_request(body=body, headers=zadarma(result)),
                 ("442037691880", "+447700900123", text))


def test_zadarma_with_the_php_era_plain_keys():
    # A websms.conf written for the PHP service: plain keys searched at any depth.  The
    # signature decides what is read: only `result`, whatever else the request holds.
    conf = loads(f"[websmsd]\nkey_to = caller_did\nkey_from = caller_id\nkey_body = text\n"
                 f"key_echo = zd_echo\nsig_method = zadarma\nsig_secret = {ZADARMA_SECRET}\n"
                 "[astqueue]\n", "websms.conf")
    hook = Hook(conf.inbound.interfaces[0])
    result = json.dumps({"caller_id": "+447700900123", "caller_did": "442037691880",
                         "text": '{"caller_id":"911","caller_did":"100","text":"x"}'})
    body = b"event=SMS&result=" + quote(result).encode()
    accepted(hook, http_request(body=body, headers=zadarma(result)),
             ("442037691880", "+447700900123", '{"caller_id":"911","caller_did":"100","text":"x"}'))


# -- without signatures: the text is never searched ----------------------------------------


@pytest.mark.parametrize("text", LOOKALIKES)
def test_plain_php_keys_never_read_inside_the_text(text):
    # A websms.conf of the PHP era: plain keys, no signature.  The text is found first
    # and is opaque; To and From are the shallowest matches outside it.
    hook = Hook(loads("[websmsd]\nkey_to = to\nkey_from = from\nkey_body = text\n[astqueue]\n",
                      "websms.conf").inbound.interfaces[0])
    for body, ctype in (
        (json.dumps({"to": "+15550001111", "from": "+15552223333", "text": text}).encode(), JSON),
        (json.dumps({"msg": {"text": text}, "to": "+15550001111",
                     "from": "+15552223333"}).encode(), JSON),
        (urlencode({"text": text, "from": "+15552223333", "to": "+15550001111"}).encode(), FORM),
        # A form field holding JSON (the PHP quirk that Zadarma-style configs rely on).
        (urlencode({"data": json.dumps({"to": "+15550001111", "from": "+15552223333",
                                        "text": text})}).encode(), FORM),
    ):
        accepted(hook, http_request(body=body, ctype=ctype), ("+15550001111", "+15552223333", text))


def test_two_senders_at_the_same_depth_are_refused():
    hook = Hook(loads("[websmsd]\nkey_to = to\nkey_from = from\nkey_body = text\n[astqueue]\n",
                      "websms.conf").inbound.interfaces[0])
    body = json.dumps({"a": {"from": "+15550001111"}, "b": {"from": "+15552223333"},
                       "to": "+15554445555", "text": "hi"}).encode()
    resp = hook.roundtrip(http_request(body=body, ctype=JSON), fire=False)
    assert resp.status == 400 and b"'from' appears 2 times" in resp.body
    resp = hook.roundtrip(http_request(body=b"to=1&from=2&text=a&from=3"), fire=False)
    assert resp.status == 400 and b"'from' is given more than once" in resp.body
    resp = hook.roundtrip(http_request(body=b'{"to":"1","from":"2","text":"a","to":"3"}',
                                       ctype=JSON), fire=False)
    assert resp.status == 400 and b"'to' is given more than once" in resp.body
    assert hook.sinks.accepts == []


def test_presets_read_exact_places_only():
    # key_lookup = path: a preset's "to" is the root's "to", never one found deeper.
    iface = preset("vonage", 'sig_method = ""')
    assert iface.key_lookup == "path"
    view = webhook.View({"x": {"to": "100"}, "from": "447700900001", "text": "t"},
                        iface.key_body, exact=True)
    assert view.get("to") is None and view.get("from") == "447700900001"
    hook = Hook(iface)
    resp = hook.roundtrip(http_request(body=json.dumps({
        "message_type": "text", "from": "447700900001", "text": "t",
        "extra": {"to": "100"}}).encode(), ctype=JSON), fire=False)
    assert resp.status == 400 and b"missing to" in resp.body


def test_filters_and_reports_never_read_the_text():
    # A text that looks like a delivery report must not become one (nor hide the SMS).
    hook = Hook(preset("vonage", 'sig_method = ""'))
    text = json.dumps({"status": "delivered", "message_uuid": "victim", "message_type": "x"})
    body = json.dumps({**VONAGE_BODY, "text": text}).encode()
    accepted(hook, http_request(body=body, ctype=JSON), ("447700900000", "447700900001", text))
    assert hook.sinks.reports == []
    plain = Hook(loads("[websmsd]\nkey_to = to\nkey_from = from\nkey_body = text\n"
                       "msg_filter = \"kind=sms\"\ndlr_filter = state\ndlr_id = ref\ndlr_status = state\n"
                       "[astqueue]\n", "websms.conf").inbound.interfaces[0])
    body = json.dumps({"kind": "sms", "to": "+15550001111", "from": "+15552223333",
                       "text": json.dumps({"kind": "dlr", "state": "delivered", "ref": "v"})}).encode()
    resp = plain.roundtrip(http_request(body=body, ctype=JSON))
    assert resp.status == 200 and len(plain.sinks.messages) == 1 and plain.sinks.reports == []
    # And a text alone cannot make an event match msg_filter: ignored, not taken.
    body = json.dumps({"to": "+15550001111", "from": "+15552223333",
                       "text": json.dumps({"kind": "sms"})}).encode()
    resp = plain.roundtrip(http_request(body=body, ctype=JSON), fire=False)
    assert resp.status == 200 and len(plain.sinks.messages) == 1
    assert plain.resource.ignored == {"matches neither msg_filter nor dlr_filter": 1}


def test_timestamps_are_checked_against_the_clock_not_the_request():
    # Sanity of this file's signers: the real clock far from NOW refuses the JWT.
    hook = Hook(preset("vonage", f"sig_secret = {VONAGE_SECRET}"))
    hook.resource._now = time.time
    body = json.dumps(VONAGE_BODY).encode()
    refused(hook, http_request(body=body, ctype=JSON, headers=vonage_jwt(body)), b"off our clock")
