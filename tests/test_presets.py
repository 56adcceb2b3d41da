"""Provider presets: `preset = NAME` in websms.conf, what it fills in, what wins over it,
what check-config says about it, and the webhook URL to give the provider.

Each preset is loaded from the smallest websms.conf an owner would write (the preset,
credentials, and what the preset says the owner must add) and its effective settings
are compared with the provider's documented shape, stated here again independently of
websmsd/presets.py; the outbound request is compared, byte for byte, with the one the
hand-written websms.conf of tests/test_outbound_shapes.py builds for the same provider.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from websmsd.itsp import presets
from websmsd.config import ConfigError, loads, report, webhook_url
from websmsd.itsp.request import build_request

PATH = "websms.conf"
ROOT = Path(__file__).resolve().parent.parent


def conf(text: str):
    return loads(textwrap.dedent(text).lstrip("\n"), PATH, environ={})


def outbound(text: str):
    [iface] = conf(text).outbound.interfaces
    return iface


def inbound(text: str):
    settings = conf(text)
    [iface] = settings.inbound.interfaces
    return iface


def warnings_with(settings, *words):
    return [w for w in settings.warnings if all(word in w for word in words)]


# What the owner writes besides the preset line: credentials, and what the preset needs.
OWNER_WEBSMS = {
    "twilio": "auth_user = AC0123456789abcdef0123456789abcdef\nauth_secret = twilio-auth-token",
    "signalwire": "url_host = https://example.signalwire.com\n"
                  "auth_user = 5f2a1c3e-0000-4000-8000-0123456789ab\nauth_secret = PTsignalwiretoken",
    "telnyx": "auth_secret = KEY0123456789ABCDEF_telnyx",
    "vonage": "auth_user = abcd1234\nauth_secret = VonageSecret01",
    "plivo": "auth_user = MAXXXXXXXXXXXXXXXXXX\nauth_secret = plivo-auth-token",
    "bandwidth": "url_path = /api/v2/users/9900000/messages\nauth_user = api-user\n"
                 "auth_secret = api-password\n"
                 'val_static = "applicationId=93de2206-9669-4e07-948d-329f4b722ee2"',
    "sinch": "auth_user = jd63jf88477ll123ab4567cd89012ef3\nauth_secret = sinch-api-token-0123",
    "46elks": "auth_user = u0123456789abcdef0123456789abcdef\nauth_secret = ELKSPASSWORD0123",
    "zadarma": "auth_user = 1a2b3c\nauth_secret = zadarma-secret",
    "voipms": "auth_user = pbx@example.com\nauth_secret = \"s3cret pass&=\"",
    "flowroute": "auth_user = 12345678\nauth_secret = flowroute-secret-key",
    "clicksend": "auth_user = pbx-owner\nauth_secret = CLICKSEND-API-KEY",
    "infobip": "url_host = https://xyz12.api.infobip.com\n"
               "auth_secret = 003026bbc133714df1834b8638bb496e-8f4b3d9a",
    "bird": "auth_secret = test_gshuPaZoeEG6ovbc8M79w0QyM",
    "bulkvs": "auth_user = owner@example.com\nauth_secret = bulkvs-api-password",
    "sipgate": "auth_user = token-0A0AAA\nauth_secret = 12345678-1234-1234-1234-1234567890ab\n"
               'val_static = "smsId=s0"',
}
OWNER_WEBSMSD = {
    "twilio": "sig_secret = twilio-auth-token",
    "signalwire": "",
    "telnyx": 'sig_secret = "jCkX8GyBv8m3y8wq0VD8JC2v0g2XqGmR3xRPbrWzYYY="',
    "vonage": "sig_secret = vonage-signature-secret",
    "plivo": "sig_secret = plivo-auth-token",
    "bandwidth": "",
    "sinch": "",
    "46elks": "",
    "zadarma": "sig_secret = zadarma-secret",
    "voipms": "",
    "flowroute": "",
    "clicksend": "",
}
SENDING_ONLY = ("infobip", "bird", "bulkvs", "sipgate")


def full_conf(name: str) -> str:
    text = f"[websms]\npreset = {name}\n{OWNER_WEBSMS[name]}\n"
    if name in OWNER_WEBSMSD:
        text += f"[websmsd]\npreset = {name}\n{OWNER_WEBSMSD[name]}\n"
    return text + "[astqueue]\n"


# The documented shapes, stated again: (method, URL, auth_method, encoding, (to, from,
# body) keys, resp_id, resp_check).
OUTBOUND = {
    "twilio": ("POST", "https://api.twilio.com/2010-04-01/Accounts/AC0123456789abcdef0123456789abcdef"
               "/Messages.json", "basic", "form", ("To", "From", "Body"), "sid", None),
    "signalwire": ("POST", "https://example.signalwire.com/api/laml/2010-04-01/Accounts/"
                   "5f2a1c3e-0000-4000-8000-0123456789ab/Messages.json", "basic", "form",
                   ("To", "From", "Body"), "sid", None),
    "telnyx": ("POST", "https://api.telnyx.com/v2/messages", "bearer", "json", ("to", "from", "text"),
               "data.id", None),
    "vonage": ("POST", "https://api.nexmo.com/v1/messages", "basic", "json", ("to", "from", "text"),
               "message_uuid", None),
    "plivo": ("POST", "https://api.plivo.com/v1/Account/MAXXXXXXXXXXXXXXXXXX/Message/", "basic", "json",
              ("dst", "src", "text"), "message_uuid.0", None),
    "bandwidth": ("POST", "https://messaging.bandwidth.com/api/v2/users/9900000/messages", "basic",
                  "json", ("to[]", "from", "text"), "id", None),
    "sinch": ("POST", "https://us.sms.api.sinch.com/xms/v1/jd63jf88477ll123ab4567cd89012ef3/batches",
              "bearer", "json", ("to[]", "from", "body"), "id", None),
    "46elks": ("POST", "https://api.46elks.com/a1/sms", "basic", "form", ("to", "from", "message"), "id",
               None),
    "zadarma": ("POST", "https://api.zadarma.com/v1/sms/send/", "zadarma", "form",
                ("number", "caller_id", "message"), None, "status=success"),
    "voipms": ("GET", "https://voip.ms/api/v1/rest.php", "query", "form", ("dst", "did", "message"), "sms",
               "status=success"),
    "flowroute": ("POST", "https://api.flowroute.com/v2.1/messages", "basic", "json", ("to", "from", "body"),
                  "data.id", None),
    "clicksend": ("POST", "https://rest.clicksend.com/v3/sms/send", "basic", "json",
                  ("messages.0.to", "messages.0.from", "messages.0.body"), "data.messages.0.message_id",
                  "response_code=SUCCESS"),
    "infobip": ("POST", "https://xyz12.api.infobip.com/sms/2/text/advanced", "header", "json",
                ("messages.0.destinations.0.to", "messages.0.from", "messages.0.text"),
                "messages.0.messageId", None),
    "bird": ("POST", "https://rest.messagebird.com/messages", "header", "json",
             ("recipients[]", "originator", "body"), "id", None),
    "bulkvs": ("POST", "https://portal.bulkvs.com/api/v1.0/messageSend", "basic", "json",
               ("To[]", "From", "Message"), None, None),
    "sipgate": ("POST", "https://api.sipgate.com/v2/sessions/sms", "basic", "json",
                ("recipient", "smsId", "message"), None, None),
}

# (to, from, body, id) keys; (msg_filter, dlr_filter); (dlr_id, dlr_status); sig_method.
INBOUND = {
    "twilio": (("To", "From", "Body", "MessageSid"), ("SmsStatus=received", "MessageStatus"),
               ("MessageSid", "MessageStatus"), "twilio"),
    "signalwire": (("To", "From", "Body", "MessageSid"), ("SmsStatus=received", "MessageStatus"),
                   ("MessageSid", "MessageStatus"), None),
    "telnyx": (("data.payload.to.0.phone_number", "data.payload.from.phone_number", "data.payload.text",
                "data.payload.id"),
               ("data.event_type=message.received", "data.event_type=message.finalized"),
               ("data.payload.id", "data.payload.to.0.status"), "telnyx"),
    "vonage": (("to", "from", "text", "message_uuid"), ("message_type=text", "status"),
               ("message_uuid", "status"), "vonage"),
    "plivo": (("To", "From", "Text", "MessageUUID"), (None, "Status"), ("MessageUUID", "Status"), "plivo-v3"),
    "bandwidth": (("message.owner", "message.from", "message.text", "message.id"),
                  ("type=message-received", "message.direction=out"), ("message.id", "type"), None),
    "sinch": (("to", "from", "body", "id"), ("type=mo_text", "type=recipient_delivery_report_sms"),
              ("batch_id", "status"), None),
    "46elks": (("to", "from", "message", "id"), ("direction=incoming", "status"), ("id", "status"), None),
    "zadarma": (("result.caller_did", "result.caller_id", "result.text", None), ("event=SMS", None), (None, None), "zadarma"),
    "voipms": (("to", "from", "message", "id"), (None, None), (None, None), None),
    "flowroute": (("to", "from", "body", "id"), (None, None), (None, None), None),
    "clicksend": (("to", "from", "body", "message_id"), (None, "status"), ("message_id", "status"), None),
}


def test_every_preset_is_tested_and_documented():
    assert set(OUTBOUND) == set(presets.NAMES)
    assert set(INBOUND) == {p.name for p in presets.PRESETS.values() if p.websmsd}
    assert set(INBOUND) | set(SENDING_ONLY) == set(presets.NAMES)
    for preset in presets.PRESETS.values():
        assert preset.docs and all(url.startswith("https://") for url in preset.docs), preset.name
        assert preset.title
        for section in ("websms", "websmsd"):
            assert not set(preset.section(section)) & presets.OWNER_KEYS[section], preset.name
            assert not set(preset.needs(section)) & set(preset.section(section)), preset.name
        uses_auth_user = any(presets.AUTH_USER in v for v in preset.websms.values())
        assert bool(preset.auth_user) >= uses_auth_user, preset.name
        if preset.websmsd.get("sig_method"):
            assert preset.sig_secret, preset.name
        if preset.websmsd:
            assert preset.portal, preset.name


@pytest.mark.parametrize("name", sorted(presets.NAMES))
def test_preset_effective_outbound_settings(name):
    settings = conf(full_conf(name))
    [iface] = settings.outbound.interfaces
    method, url, auth, encoding, keys, resp_id, resp_check = OUTBOUND[name]
    assert (iface.method, iface.url, iface.auth_method, iface.encoding) == (method, url, auth, encoding)
    assert (iface.key_to, iface.key_from, iface.key_body) == keys
    assert (iface.resp_id, iface.resp_check) == (resp_id, resp_check)
    assert iface.preset == name
    # Every key the preset defines is in effect, as read by the file's own readers.
    for key, text in presets.PRESETS[name].websms.items():
        value = getattr(iface, key)
        assert value is not None, key
        assert str(value) in presets.fill(text, iface.auth_user) or key == "method", (key, value)
    # No warning: the minimal owner file is complete.
    assert not [w for w in settings.warnings if "preset" in w or "sig_" in w], settings.warnings
    assert build_request(iface, "+14155550100", "+14155550199", "Hi").warnings == ()


@pytest.mark.parametrize("name", sorted(INBOUND))
def test_preset_effective_inbound_settings(name):
    iface = inbound(full_conf(name))
    keys, filters, dlr, sig_method = INBOUND[name]
    assert (iface.key_to, iface.key_from, iface.key_body, iface.key_id) == keys
    assert (iface.msg_filter, iface.dlr_filter) == filters
    assert (iface.dlr_id, iface.dlr_status) == dlr
    assert iface.sig_method == sig_method
    assert iface.preset == name
    assert iface.url_path is None and iface.remt_addr is None  # the owner's, never a preset's


def test_preset_details_that_matter():
    twilio = inbound(full_conf("twilio"))
    assert (twilio.resp_ack, twilio.resp_type, twilio.key_media) == (
        "<Response></Response>", "text/xml", "MediaUrl*")
    elks = inbound(full_conf("46elks"))
    assert elks.resp_ack == ""  # 46elks sends a non-empty answer back as a reply SMS
    voipms = inbound(full_conf("voipms"))
    assert (voipms.resp_ack, voipms.resp_type) == ("ok", "text/plain")
    zadarma = inbound(full_conf("zadarma"))
    assert zadarma.key_echo == "zd_echo"
    plivo = inbound(full_conf("plivo"))
    assert (plivo.resp_type, plivo.key_media) == ("application/xml", "Media[0-9]*")
    vonage = outbound(full_conf("vonage"))
    assert (vonage.val_numform, vonage.val_static) == ("no+", "message_type=text,channel=sms")
    assert outbound(full_conf("voipms")).val_static == "method=sendSMS"
    assert outbound(full_conf("sinch")).val_static == "delivery_report=per_recipient"
    flowroute = outbound(full_conf("flowroute"))
    assert (flowroute.num_country, flowroute.val_numform) == ("US", "no+")


# The hand-written websms.conf of each provider in test_outbound_shapes.py, and the
# request it builds: a preset must build the very same.
SHAPES = {
    "twilio": "TWILIO", "46elks": "ELKS", "voipms": "VOIPMS", "telnyx": "TELNYX",
    "vonage": "VONAGE_MESSAGES", "bandwidth": "BANDWIDTH", "plivo": "PLIVO", "clicksend": "CLICKSEND",
    "flowroute": "FLOWROUTE", "bird": "BIRD", "infobip": "INFOBIP", "bulkvs": "BULKVS",
    "sipgate": "SIPGATE", "sinch": "SINCH",
}


@pytest.mark.parametrize("name", sorted(SHAPES))
def test_preset_builds_the_documented_request(name):
    import test_outbound_shapes as shapes

    hand = outbound(getattr(shapes, SHAPES[name]))
    mine = outbound(full_conf(name))
    if name == "sinch":
        # The preset also asks for per-recipient delivery reports.
        from dataclasses import replace
        mine = replace(mine, val_static=None)
    for to, sender in (("+14155550100", "+14155550199"), ("(206) 555-0100", "206-555-0199")):
        expected = build_request(hand, to, sender, "Hello 😀 & =")
        got = build_request(mine, to, sender, "Hello 😀 & =")
        assert (got.method, got.url, got.body, got.headers) == (
            expected.method, expected.url, expected.body, expected.headers)


def test_sinch_preset_asks_for_delivery_reports():
    req = build_request(outbound(full_conf("sinch")), "+14155550100", "+14155550199", "Hi")
    assert req.body == (b'{"to":["+14155550100"],"from":"+14155550199","body":"Hi",'
                        b'"delivery_report":"per_recipient"}')


# ---------------------------------------------------------------------------------------
# What the file writes wins


def test_explicit_keys_override_the_preset():
    iface = outbound("""
        [websms]
        preset = twilio
        auth_user = AC0123456789abcdef0123456789abcdef
        auth_secret = t
        url_host = http://127.0.0.1:8080
        resp_id = ""
        key_body = Text
    """)
    assert iface.url == ("http://127.0.0.1:8080/2010-04-01/Accounts/AC0123456789abcdef0123456789abcdef"
                         "/Messages.json")
    assert (iface.resp_id, iface.key_body, iface.key_to) == (None, "Text", "To")
    # An API key (SK...) as the user: the URL still needs the Account SID.
    iface = outbound("""
        [websms]
        preset = twilio
        auth_user = SK0123456789abcdef0123456789abcdef
        auth_secret = api-key-secret
        url_path = /2010-04-01/Accounts/AC0123456789abcdef0123456789abcdef/Messages.json
    """)
    assert "/Accounts/AC0123" in iface.url and iface.auth_user.startswith("SK")
    hook = inbound("""
        [websmsd]
        preset = twilio
        sig_method = ""
        resp_ack = ""
        key_media = ""
    """)
    assert (hook.sig_method, hook.resp_ack, hook.key_media) == (None, "", None)
    assert hook.msg_filter == "SmsStatus=received"  # the rest stays the preset's


def test_indexed_presets_and_overrides_per_interface():
    settings = conf("""
        [websms]
        preset [tw] = twilio
        auth_user [tw] = AC1
        auth_secret [tw] = t1
        preset [tx] = telnyx
        auth_secret [tx] = k2
        url_host [tx] = https://telnyx.test
        resp_id = id
        [websmsd]
        preset [tw] = twilio
        url_path [tw] = /twilio
        sig_secret [tw] = t1
        preset [tx] = telnyx
        url_path [tx] = /telnyx
        sig_method [tx] = ""
    """)
    tw, tx = settings.outbound.interfaces
    assert (tw.name, tw.url, tw.auth_method) == (
        "tw", "https://api.twilio.com/2010-04-01/Accounts/AC1/Messages.json", "basic")
    assert (tx.name, tx.url, tx.auth_method) == ("tx", "https://telnyx.test/v2/messages", "bearer")
    assert tw.resp_id == tx.resp_id == "id"  # a plain key applies to every interface
    htw, htx = settings.inbound.interfaces
    assert (htw.key_from, htw.sig_method, htw.url_path) == ("From", "twilio", ("/twilio",))
    assert (htx.key_from, htx.sig_method, htx.url_path) == ("data.payload.from.phone_number", None,
                                                            ("/telnyx",))
    # The default interface (no index) has no preset: the PHP defaults.
    assert settings.inbound.default.preset is None and settings.inbound.default.key_from == "From"
    assert settings.inbound.default.msg_filter is None


def test_a_plain_preset_applies_to_every_interface():
    settings = conf("""
        [websms]
        preset = telnyx
        auth_secret [a] = k1
        auth_secret [b] = k2
    """)
    assert [(i.name, i.url, i.auth_secret) for i in settings.outbound.interfaces] == [
        ("a", "https://api.telnyx.com/v2/messages", "k1"), ("b", "https://api.telnyx.com/v2/messages", "k2")]


def test_preset_names_are_case_insensitive_and_empty_means_none():
    assert outbound("[websms]\npreset = Telnyx\nauth_secret = k\n").preset == "telnyx"
    iface = outbound('[websms]\npreset = ""\nauth_method = none\nurl_host = https://x.example\n')
    assert iface.preset is None and iface.url == "https://x.example/"
    assert not conf('[websms]\npreset = ""\nauth_method = none\n').outbound.interfaces


# ---------------------------------------------------------------------------------------
# Errors and warnings


def test_unknown_preset_names_file_line_key_and_the_known_names():
    with pytest.raises(ConfigError) as caught:
        conf("[websms]\nauth_method = none\n\npreset [x] = twillio\n")
    error = caught.value
    assert (error.path, error.line, error.key) == (PATH, 4, "preset[x]")
    assert str(error).startswith("websms.conf:4: preset[x]: unknown preset 'twillio'; did you mean twilio?")
    for name in presets.NAMES:
        assert name in error.message
    with pytest.raises(ConfigError, match=r"^websms.conf:2: preset: unknown preset 'nope' \(known"):
        conf("[websmsd]\npreset = nope\n")


def test_preset_values_go_through_the_readers(monkeypatch):
    # A preset can hold nothing a file could not: its texts meet the file's readers.
    bad = presets.Preset(name="bad", title="Broken", docs=("https://example.com",),
                         websms={"url_host": "https://itsp.test", "encoding": "xml"})
    monkeypatch.setitem(presets.PRESETS, "bad", bad)
    with pytest.raises(ConfigError) as caught:
        conf("[websms]\nauth_method = none\npreset = bad\n")
    assert (caught.value.line, caught.value.key) == (3, "encoding (preset bad)")
    assert "'xml' is not one of form, json" in caught.value.message
    # {auth_user} is percent-encoded into the path: no path tricks, no spaces.
    iface = outbound("[websms]\npreset = twilio\nauth_user = \"AC/../1 x\"\nauth_secret = t\n")
    assert iface.url_path == "/2010-04-01/Accounts/AC%2F..%2F1%20x/Messages.json"


def test_an_id_the_url_needs_is_required():
    with pytest.raises(ConfigError) as caught:
        conf("[websms]\npreset = sinch\nauth_secret = token\n")
    assert (caught.value.line, caught.value.key) == (2, "preset")
    assert "builds url_path from auth_user (your service plan ID" in caught.value.message


def test_missing_credentials_point_at_the_preset_line():
    with pytest.raises(ConfigError) as caught:
        conf("[websms]\nurl_host = http://x\npreset = plivo\nauth_user = MA1\n")
    assert (caught.value.line, caught.value.key) == (3, "auth_method (preset plivo)")
    assert "auth_method basic needs auth_user, auth_secret; missing: auth_secret" in caught.value.message


def test_a_preset_without_the_section_is_refused():
    with pytest.raises(ConfigError) as caught:
        conf("[websmsd]\npreset [s] = sipgate\n")
    assert (caught.value.line, caught.value.key) == (2, "preset[s]")
    assert "has nothing for [websmsd]" in caught.value.message


def test_warnings_for_what_a_preset_needs():
    settings = conf("[websms]\npreset = bandwidth\nauth_user = u\nauth_secret = p\n")
    [path] = warnings_with(settings, "preset bandwidth needs url_path")
    assert path.startswith("websms.conf:2: preset: ") and "/api/v2/users/YOUR-ACCOUNT-ID/messages" in path
    assert "every message fails" in path
    assert warnings_with(settings, "preset bandwidth needs val_static", "applicationId=")
    settings = conf("[websms]\npreset [sw] = signalwire\nauth_user [sw] = p\nauth_secret [sw] = t\n")
    [host] = warnings_with(settings, "needs url_host")
    assert "YOUR-SPACE.signalwire.com" in host and "(interface 'sw')" in host


def test_sig_method_without_sig_secret_warns():
    settings = conf("[websmsd]\npreset = plivo\n")
    [warning] = warnings_with(settings, "sig_secret")
    assert warning.startswith("websms.conf:2: sig_method (preset plivo): sig_method plivo-v3 is set but")
    assert "every webhook is refused (403)" in warning and "your Auth Token" in warning
    settings = conf("[websmsd]\nsig_method [a] = twilio\nurl_path [a] = /a\n")
    assert warnings_with(settings, "websms.conf:2: sig_method[a]", "(interface 'a') is refused")
    assert not warnings_with(conf("[websmsd]\npreset = plivo\nsig_secret = x\n"), "sig_secret")
    assert not warnings_with(conf('[websmsd]\npreset = plivo\nsig_method = ""\n'), "sig_")


LOOPBACK = '[daemon]\nwebhook_listen = "tcp:8080:interface=127.0.0.1"\n'


def test_remt_addr_behind_an_untrusted_local_proxy_warns():
    text = "[websmsd]\nremt_addr = 54.172.60.0/23\n" + LOOPBACK
    [warning] = warnings_with(conf(text), "remt_addr refuses every webhook")
    assert warning.startswith("websms.conf:2: remt_addr: the webhook listens on loopback only")
    assert "add 127.0.0.1/32 to prox_addr" in warning
    # Trusted proxy, loopback allowed, or a listener others can reach: nothing to say.
    quiet = [
        "[websmsd]\nremt_addr = 54.172.60.0/23\nprox_addr = 127.0.0.1/32\n" + LOOPBACK,
        "[websmsd]\nremt_addr = 54.172.60.0/23,127.0.0.0/8\n" + LOOPBACK,
        "[websmsd]\nremt_addr [a] = 127.0.0.1\nurl_path [a] = /a\n" + LOOPBACK,
        "[websmsd]\nremt_addr = 54.172.60.0/23\n[daemon]\nwebhook_listen = tcp:8080\n",
        "[websmsd]\nremt_addr = 54.172.60.0/23\n[daemon]\n"
        "webhook_listen [] = \"tcp:8080:interface=127.0.0.1\"\n"
        "webhook_listen [] = \"ssl:8443:privateKey=k.pem\"\n",
        "[websmsd]\nremt_addr = 54.172.60.0/23\n",
    ]
    for text in quiet:
        assert not warnings_with(conf(text), "refuses every webhook"), text
    # Without a proxy header the proxy's X-Forwarded-For is never read.
    text = "[websmsd]\nremt_addr = 54.172.60.0/23\nprox_addr = 127.0.0.1/32\nprox_header = \"\"\n" + LOOPBACK
    assert warnings_with(conf(text), "refuses every webhook")
    text = '[websmsd]\nremt_addr = 2001:db8::/32\n[daemon]\nwebhook_listen = "tcp6:8080:interface=\\:\\:1"\n'
    assert warnings_with(conf(text), "reverse proxy on ::1", "add ::1/128 to prox_addr")


def test_url_signatures_behind_a_local_proxy_need_sig_url():
    text = "[websmsd]\npreset = twilio\nsig_secret = t\n" + LOOPBACK
    [warning] = warnings_with(conf(text), "set sig_url")
    assert warning.startswith("websms.conf:2: sig_method (preset twilio): the webhook listens on loopback")
    fixed = "[websmsd]\npreset = twilio\nsig_secret = t\nsig_url = https://pbx.example.com\n" + LOOPBACK
    assert not warnings_with(conf(fixed), "sig_url")
    telnyx = "[websmsd]\npreset = telnyx\nsig_secret = \"a=\"\n" + LOOPBACK
    assert not warnings_with(conf(telnyx), "sig_url")  # Telnyx signs the body, not the URL


# ---------------------------------------------------------------------------------------
# check-config


def test_report_shows_where_each_value_came_from():
    text = report(conf("""
        [websms]
        preset = twilio
        auth_user = AC0123456789abcdef0123456789abcdef
        auth_secret = twilio-auth-token
        url_host = http://127.0.0.1:9999
        [websmsd]
        preset = twilio
        sig_secret = twilio-auth-token
        url_path = /sms/twilio
        [daemon]
        webhook_listen = "ssl:8443:privateKey=/etc/websmsd/key.pem"
    """))
    assert "(values are as the file gives them, unless marked (preset NAME) or (default))" in text
    assert "    url_host = http://127.0.0.1:9999\n" in text  # the file's: unmarked
    assert ("    url_path = /2010-04-01/Accounts/AC0123456789abcdef0123456789abcdef/Messages.json"
            "  (preset twilio)\n") in text
    assert "    resp_id = sid  (preset twilio)\n" in text
    assert "    msg_filter = SmsStatus=received  (preset twilio)\n" in text
    assert "    resp_ack = <Response></Response>  (preset twilio)\n" in text
    assert "    sig_tolerance = 300s  (default)\n" in text
    assert "    preset = twilio\n" in text
    assert "twilio-auth-token" not in text
    assert ("    webhook URL for the provider: https://<this machine's public address>:8443/sms/twilio\n"
            in text)
    assert "      where: Twilio Programmable Messaging: Console > Phone Numbers" in text
    assert "loopback" not in text


def test_report_marks_by_origin_not_by_value():
    # Issue #12: a value the file writes is the file's, also when it equals the default
    # or the preset's; only what nothing gave is (default).
    text = report(conf("""
        [websms]
        preset = twilio
        auth_user = AC0123456789abcdef0123456789abcdef
        auth_secret = t
        resp_id = sid
        key_to = To
        [websmsd]
        key_to = To
        sig_tolerance = 300
    """))
    assert "    resp_id = sid\n" in text  # written, equal to the preset's: unmarked
    assert "    key_to = To\n" in text  # written, equal to the default: unmarked
    assert "    sig_tolerance = 300s\n" in text
    assert "    key_from = From  (preset twilio)\n" in text
    assert "    key_body = Body  (default)\n" in text or "    key_body = Body  (preset twilio)\n" in text
    assert "    url_host = https://api.twilio.com  (preset twilio)\n" in text
    assert "    key_user = (unset)  (default)\n" in text
    ports = report(loads("[websmsd]\n", "w.conf", environ={"WEBSMSD_PORT": "8081"}))
    assert "    webhook_listen = tcp:8081  (WEBSMSD_PORT)\n" in ports


def test_check_config_without_an_outbound_interface_is_an_error(tmp_path):
    conf_file = tmp_path / "websms.conf"
    conf_file.write_text("[websms]\n;url_host = https://itsp.example\n[websmsd]\n[astqueue]\n")
    r = subprocess.run([sys.executable, "-m", "websmsd", "check-config", str(conf_file)],
                       capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 1, r.stderr
    assert "errors (the daemon starts, but this does not work):" in r.stdout
    assert "no interface configured for outbound SMS" in r.stdout
    assert "url_host = http://localhost" not in r.stdout


def test_report_webhook_url_variants():
    def url(text):
        settings = conf(text)
        return webhook_url(settings, settings.inbound.interfaces[0])

    assert url("[websmsd]\npreset = telnyx\nsig_secret = x\n")[0] is None
    assert "nothing listens" in url("[websmsd]\nkey_to = to\n")[1][0]
    got, notes = url('[websmsd]\nurl_path = /a,/b\n[daemon]\nwebhook_listen = "tcp:8080"\n')
    assert got == "http://<this machine's public address>:8080/a"
    assert notes == ["plain http: texts cross the internet unencrypted; prefer an ssl: listener or a"
                     " TLS reverse proxy"]
    got, notes = url("[websmsd]\npreset = telnyx\nsig_secret = x\n" + LOOPBACK)
    assert got == "http://<this machine's public address>:8080/"
    [note] = notes
    assert "bound to loopback only" in note and "the provider cannot reach it" in note
    assert "fine behind a reverse proxy" in note
    got, notes = url("[websmsd]\nsig_url = https://pbx.example.com/hooks\nurl_path = /tw\n" + LOOPBACK)
    assert got == "https://pbx.example.com/hooks/tw"
    assert notes == ["sig_url is the public URL (a reverse proxy forwards it here)",
                     "the listener is bound to loopback (127.0.0.1) behind that proxy"]
    got, _ = url("[websmsd]\npreset = voipms\nurl_path = /voipms\n"
                 "[daemon]\nwebhook_listen = \"ssl:443:privateKey=k\"\n")
    assert got == ("https://<this machine's public address>:443/voipms"
                   "?to={TO}&from={FROM}&message={MESSAGE}&id={ID}&date={TIMESTAMP}")
    got, notes = url('[websmsd]\nurl_path = /u\n[daemon]\nwebhook_listen = "unix:/run/websmsd.sock"\n')
    assert got == "https://<this machine's public address>/u" and "reverse proxy" in notes[0]


def test_report_of_several_preset_interfaces():
    text = report(conf("""
        [websmsd]
        preset [tw] = twilio
        url_path [tw] = /twilio
        sig_secret [tw] = t
        preset [elks] = 46elks
        url_path [elks] = /elks
        [daemon]
        webhook_listen = "tcp:8080"
    """))
    tw = text.index("[websmsd] interface 'tw'")
    elks = text.index("[websmsd] interface 'elks'")
    assert text.index("webhook URL for the provider: http://<this machine's public address>:8080/twilio") > tw
    assert text.index("webhook URL for the provider: http://<this machine's public address>:8080/elks") > elks
    assert "    key_body = message  (preset 46elks)\n" in text
    assert "    resp_ack = ''  (preset 46elks)\n" in text


# ---------------------------------------------------------------------------------------
# The README's examples


def readme_examples():
    import re
    from pathlib import Path

    text = (Path(__file__).parent.parent / "README.md").read_text(encoding="utf-8")
    section = text[text.index("## Providers (presets)"):]
    return re.findall(r"```ini\n(.*?)```", section, re.DOTALL)


def test_readme_preset_examples_load_without_warnings():
    examples = readme_examples()
    assert len(examples) >= 12
    named = set()
    for example in examples:
        settings = loads(example + "[astqueue]\n", PATH, environ={})
        named |= {i.preset for i in settings.outbound.interfaces + settings.inbound.interfaces}
        noticed = [w for w in settings.warnings if "preset" in w or "sig_" in w]
        assert not noticed, (example, noticed)
    assert named >= set(INBOUND)
