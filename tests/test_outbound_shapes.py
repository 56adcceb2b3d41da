"""Today's ITSPs, outbound: the request each provider documents, from a websms.conf.

Each test writes the [websms] section a PBX owner would write for one provider, reads
it with websmsd.config.loads, builds the request, and checks it against the shape the
provider's public API documentation shows (the page is named next to each test).
Account ids, keys and tokens below are made up; numbers are from fictional ranges.

Then the same through ITSPClient against an ITSP stand-in (treq's StubTreq), and over
a real loopback socket in a child process: bytes as sent, GET queries, message ids,
204 answers, invalid numbers, and secrets that never reach a reason or a log line.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import textwrap

import pytest

from conftest import fired
from websmsd.config import loads
from websmsd.itsp.request import build_request, json_document
from websmsd.itsp.response import check_response, response_id
from websmsd.numbers import NumberError, normalise

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)

TO, FROM, TEXT = "+14155550100", "+14155550199", "Hello from the PBX 😀"


def interface(conf: str):
    """The one [websms] interface of a websms.conf text."""
    settings = loads(textwrap.dedent(conf))
    [iface] = settings.outbound.interfaces
    return iface


def request(conf: str, to: str = TO, sender: str = FROM, body: str = TEXT):
    req = build_request(interface(conf), to, sender, body)
    assert req.warnings == ()
    return req


def basic(user: str, secret: str) -> bytes:
    return b"Basic " + base64.b64encode(f"{user}:{secret}".encode())


def compact(document) -> bytes:
    """JSON as websmsd sends it: UTF-8, no spaces, members in the order given."""
    return json.dumps(document, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def form(req) -> list:
    from urllib.parse import parse_qsl

    return parse_qsl(req.body.decode("ascii"), keep_blank_values=True, strict_parsing=True)


def answer_id(conf: str, status: int, body: dict) -> str:
    out = check_response(interface(conf), status, json.dumps(body).encode())
    assert out.ok, out.reason
    return out.provider_id


# ---------------------------------------------------------------------------------------
# Form APIs
# ---------------------------------------------------------------------------------------

# https://www.twilio.com/docs/messaging/api/message-resource#create-a-message-resource
# POST /2010-04-01/Accounts/{AccountSid}/Messages.json, form To/From/Body, HTTP Basic
# AccountSid:AuthToken; 201 with the Message resource, whose id is "sid".
TWILIO = """
    [websms]
    url_host    = https://api.twilio.com
    url_path    = /2010-04-01/Accounts/AC0123456789abcdef0123456789abcdef/Messages.json
    auth_user   = AC0123456789abcdef0123456789abcdef
    auth_secret = twilio-auth-token
    resp_id     = sid
"""


def test_twilio():
    req = request(TWILIO)
    assert (req.method, req.url) == (
        "POST", "https://api.twilio.com/2010-04-01/Accounts/AC0123456789abcdef0123456789abcdef/Messages.json")
    assert req.header("Authorization") == basic("AC0123456789abcdef0123456789abcdef", "twilio-auth-token")
    assert req.header("Content-Type") == b"application/x-www-form-urlencoded"
    assert req.body == b"Body=Hello+from+the+PBX+%F0%9F%98%80&From=%2B14155550199&To=%2B14155550100"
    sid = "SM0123456789abcdef0123456789abcdef"
    assert answer_id(TWILIO, 201, {"sid": sid, "status": "queued", "error_code": None}) == sid


# https://46elks.com/docs/send-sms: POST https://api.46elks.com/a1/sms, form from/to/
# message, HTTP Basic with the API username and password; the answer carries "id".
ELKS = """
    [websms]
    url_host    = https://api.46elks.com
    url_path    = /a1/sms
    auth_user   = u0123456789abcdef0123456789abcdef
    auth_secret = ELKSPASSWORD0123
    key_to      = to
    key_from    = from
    key_body    = message
    resp_id     = id
"""


def test_46elks_with_an_alphanumeric_sender():
    req = request(ELKS, "+46700000000", "CurlyElk", "Bring a sweater, it's cold outside")
    assert (req.method, req.url) == ("POST", "https://api.46elks.com/a1/sms")
    assert req.header("Authorization") == basic("u0123456789abcdef0123456789abcdef", "ELKSPASSWORD0123")
    assert form(req) == [("from", "CurlyElk"), ("message", "Bring a sweater, it's cold outside"),
                         ("to", "+46700000000")]
    assert answer_id(ELKS, 200, {"status": "created", "id": "s17a6dafb12d6b1cabc053d57dac2b9d8"}) \
        == "s17a6dafb12d6b1cabc053d57dac2b9d8"


# https://developer.vonage.com/en/api/sms (the legacy SMS API): POST
# https://rest.nexmo.com/sms/json, form api_key/api_secret/to/from/text, numbers without
# "+"; HTTP 200 even for errors, so success is messages[].status "0".
VONAGE_SMS = """
    [websms]
    url_host    = https://rest.nexmo.com
    url_path    = /sms/json
    auth_method = plain
    key_user    = api_key
    auth_user   = abcd1234
    key_secret  = api_secret
    auth_secret = VonageSecret01
    key_to      = to
    key_from    = from
    key_body    = text
    val_numform = no+
    resp_check  = "status=0"
    resp_id     = messages.0.message-id
"""


def test_vonage_legacy_sms_api():
    req = request(VONAGE_SMS, "+447700900000", "+447700900001", "Hi")
    assert (req.method, req.url) == ("POST", "https://rest.nexmo.com/sms/json")
    assert req.header("Authorization") is None
    assert req.body == (b"api_key=abcd1234&api_secret=VonageSecret01&from=447700900001"
                        b"&text=Hi&to=447700900000")
    ok = {"message-count": "1", "messages": [{"to": "447700900000", "message-id": "0C000000F00ABD35", "status": "0"}]}
    assert answer_id(VONAGE_SMS, 200, ok) == "0C000000F00ABD35"
    bad = {"message-count": "1", "messages": [{"status": "2", "error-text": "Missing to param"}]}
    out = check_response(interface(VONAGE_SMS), 200, json.dumps(bad).encode())
    assert (out.ok, out.permanent, out.provider_id) == (False, True, None)


# voip.ms REST/JSON API (https://voip.ms/m/apidocs.php, function sendSMS): GET
# https://voip.ms/api/v1/rest.php?api_username=...&api_password=...&method=sendSMS&did=
# &dst=&message=, ten-digit NANP numbers; {"status":"success","sms":23434}.
VOIPMS = """
    [websms]
    url_host    = https://voip.ms
    url_path    = /api/v1/rest.php
    method      = GET
    auth_method = query
    key_user    = api_username
    auth_user   = pbx@example.com
    key_secret  = api_password
    auth_secret = "s3cret pass&="
    key_to      = dst
    key_from    = did
    key_body    = message
    val_static  = "method=sendSMS"
    resp_check  = "status=success"
    resp_id     = sms
"""


def test_voipms_get_with_query_credentials():
    req = request(VOIPMS, "5559876543", "5551234567", "Hello 😀 ~")
    assert req.method == "GET"
    assert req.url == (
        "https://voip.ms/api/v1/rest.php?api_username=pbx%40example.com&api_password=s3cret+pass%26%3D"
        "&did=5551234567&dst=5559876543&message=Hello+%F0%9F%98%80+%7E&method=sendSMS"
    )
    assert req.body == b""
    assert req.header("Content-Type") is None and req.header("Authorization") is None
    assert "s3cret" not in repr(req) and "pbx" not in repr(req)
    assert answer_id(VOIPMS, 200, {"status": "success", "sms": 23434}) == "23434"
    out = check_response(interface(VOIPMS), 200, b'{"status":"invalid_dst"}')
    assert (out.ok, out.permanent) == (False, True)


# ---------------------------------------------------------------------------------------
# JSON APIs
# ---------------------------------------------------------------------------------------

# https://developers.telnyx.com/docs/messaging/messages/send-message: POST
# https://api.telnyx.com/v2/messages, Authorization: Bearer <API key>, JSON from/to/text;
# the answer is {"data": {"id": ..., "record_type": "message", ...}}.
TELNYX = """
    [websms]
    url_host    = https://api.telnyx.com
    url_path    = /v2/messages
    encoding    = json
    auth_method = bearer
    auth_secret = KEY0123456789ABCDEF_telnyx
    key_to      = to
    key_from    = from
    key_body    = text
    resp_id     = data.id
"""


def test_telnyx():
    req = request(TELNYX)
    assert (req.method, req.url) == ("POST", "https://api.telnyx.com/v2/messages")
    assert req.header("Authorization") == b"Bearer KEY0123456789ABCDEF_telnyx"
    assert req.header("Content-Type") == b"application/json"
    assert req.body == (
        '{"to":"+14155550100","from":"+14155550199","text":"Hello from the PBX 😀"}'.encode("utf-8")
    )
    answer = {"data": {"record_type": "message", "id": "40385f64-5717-4562-b3fc-2c963f66afa6"}}
    assert answer_id(TELNYX, 200, answer) == "40385f64-5717-4562-b3fc-2c963f66afa6"


# https://developer.vonage.com/en/api/messages (Messages API, SMS channel): POST
# https://api.nexmo.com/v1/messages, JSON message_type "text", text, to, from, channel
# "sms", numbers in E.164 without "+"; HTTP Basic (API key and secret) or a Bearer JWT;
# 202 {"message_uuid": ...}.
VONAGE_MESSAGES = """
    [websms]
    url_host    = https://api.nexmo.com
    url_path    = /v1/messages
    encoding    = json
    auth_user   = abcd1234
    auth_secret = VonageSecret01
    key_to      = to
    key_from    = from
    key_body    = text
    val_numform = no+
    val_static  = "message_type=text,channel=sms"
    resp_id     = message_uuid
"""


def test_vonage_messages_api_basic_and_jwt():
    req = request(VONAGE_MESSAGES, "+447700900000", "+447700900001", "Hi")
    assert (req.method, req.url) == ("POST", "https://api.nexmo.com/v1/messages")
    assert req.header("Authorization") == basic("abcd1234", "VonageSecret01")
    assert req.body == compact({"to": "447700900000", "from": "447700900001", "text": "Hi",
                                "message_type": "text", "channel": "sms"})
    assert answer_id(VONAGE_MESSAGES, 202, {"message_uuid": "aaaaaaaa-bbbb-4ccc-8ddd-0123456789ab"}) \
        == "aaaaaaaa-bbbb-4ccc-8ddd-0123456789ab"

    jwt = VONAGE_MESSAGES.replace("auth_user   = abcd1234\n", "auth_method = bearer\n").replace(
        "VonageSecret01", "eyJhbGciOiJSUzI1NiJ9.eyJhcHBsaWNhdGlvbl9pZCI6IngifQ.c2ln")
    req = request(jwt, "+447700900000", "+447700900001", "Hi")
    assert req.header("Authorization") == b"Bearer eyJhbGciOiJSUzI1NiJ9.eyJhcHBsaWNhdGlvbl9pZCI6IngifQ.c2ln"


# https://dev.bandwidth.com/docs/messaging/createMessage: POST
# https://messaging.bandwidth.com/api/v2/users/{accountId}/messages, HTTP Basic, JSON
# {"to": ["+1..."], "from": "+1...", "text": ..., "applicationId": ...}; 202 with "id".
BANDWIDTH = """
    [websms]
    url_host    = https://messaging.bandwidth.com
    url_path    = /api/v2/users/9900000/messages
    encoding    = json
    auth_user   = api-user
    auth_secret = api-password
    key_to      = "to[]"
    key_from    = from
    key_body    = text
    val_static  = "applicationId=93de2206-9669-4e07-948d-329f4b722ee2"
    resp_id     = id
"""


def test_bandwidth_v2():
    req = request(BANDWIDTH)
    assert (req.method, req.url) == ("POST", "https://messaging.bandwidth.com/api/v2/users/9900000/messages")
    assert req.header("Authorization") == basic("api-user", "api-password")
    assert req.body == compact({"to": [TO], "from": FROM, "text": TEXT,
                                "applicationId": "93de2206-9669-4e07-948d-329f4b722ee2"})
    assert answer_id(BANDWIDTH, 202, {"id": "1589228074636lm4k2je7j7jklbn2", "to": [TO]}) \
        == "1589228074636lm4k2je7j7jklbn2"


# https://developers.sinch.com/docs/sms/api-reference/sms/tag/Batches/ (Send): POST
# https://us.sms.api.sinch.com/xms/v1/{service_plan_id}/batches, Bearer token, JSON
# from, to (a list), body; 201 with the batch "id".
SINCH = """
    [websms]
    url_host    = https://us.sms.api.sinch.com
    url_path    = /xms/v1/jd63jf88477ll123ab4567cd89012ef3/batches
    encoding    = json
    auth_method = bearer
    auth_secret = sinch-api-token-0123
    key_to      = "to[]"
    key_from    = from
    key_body    = body
    resp_id     = id
"""


def test_sinch():
    req = request(SINCH)
    assert req.url == "https://us.sms.api.sinch.com/xms/v1/jd63jf88477ll123ab4567cd89012ef3/batches"
    assert req.header("Authorization") == b"Bearer sinch-api-token-0123"
    assert req.body == compact({"to": [TO], "from": FROM, "body": TEXT})
    assert answer_id(SINCH, 201, {"id": "01FC66621XXXXX119Z8PMV1QPQ", "canceled": False}) \
        == "01FC66621XXXXX119Z8PMV1QPQ"


# https://www.plivo.com/docs/messaging/api/message/send-a-message: POST
# https://api.plivo.com/v1/Account/{auth_id}/Message/, HTTP Basic auth_id:auth_token,
# JSON src/dst/text; 202 {"message": "message(s) queued", "message_uuid": [...]}.
PLIVO = """
    [websms]
    url_host    = https://api.plivo.com
    url_path    = /v1/Account/MAXXXXXXXXXXXXXXXXXX/Message/
    encoding    = json
    auth_user   = MAXXXXXXXXXXXXXXXXXX
    auth_secret = plivo-auth-token
    key_to      = dst
    key_from    = src
    key_body    = text
    resp_id     = message_uuid.0
"""


def test_plivo():
    req = request(PLIVO)
    assert req.url == "https://api.plivo.com/v1/Account/MAXXXXXXXXXXXXXXXXXX/Message/"
    assert req.header("Authorization") == basic("MAXXXXXXXXXXXXXXXXXX", "plivo-auth-token")
    assert req.body == compact({"dst": TO, "src": FROM, "text": TEXT})
    answer = {"message": "message(s) queued", "message_uuid": ["db3ce55a-7f1d-11e1-8ea7-1231380bc196"],
              "api_id": "db342550-7f1d-11e1-8ea7-1231380bc196"}
    assert answer_id(PLIVO, 202, answer) == "db3ce55a-7f1d-11e1-8ea7-1231380bc196"


# https://developers.clicksend.com/docs/messaging/sms (Send SMS): POST
# https://rest.clicksend.com/v3/sms/send, HTTP Basic username:API key, JSON
# {"messages": [{"to", "from", "body", "source"}]}; the answer's
# data.messages[].message_id, and response_code "SUCCESS".
CLICKSEND = """
    [websms]
    url_host    = https://rest.clicksend.com
    url_path    = /v3/sms/send
    encoding    = json
    auth_user   = pbx-owner
    auth_secret = CLICKSEND-API-KEY
    key_to      = messages.0.to
    key_from    = messages.0.from
    key_body    = messages.0.body
    val_static  = "messages.0.source=websmsd"
    resp_check  = "response_code=SUCCESS"
    resp_id     = data.messages.0.message_id
"""


def test_clicksend():
    req = request(CLICKSEND)
    assert req.url == "https://rest.clicksend.com/v3/sms/send"
    assert req.header("Authorization") == basic("pbx-owner", "CLICKSEND-API-KEY")
    assert req.body == compact({"messages": [{"to": TO, "from": FROM, "body": TEXT, "source": "websmsd"}]})
    answer = {"http_code": 200, "response_code": "SUCCESS", "response_msg": "Messages queued for delivery.",
              "data": {"messages": [{"message_id": "BF7AD270-0DE2-418B-B606-71D527D9C1AE",
                                     "status": "SUCCESS"}]}}
    assert answer_id(CLICKSEND, 200, answer) == "BF7AD270-0DE2-418B-B606-71D527D9C1AE"


# https://developer.flowroute.com/api/messages/v2.1/send-an-sms/: POST
# https://api.flowroute.com/v2.1/messages, HTTP Basic access key:secret key, JSON to/
# from/body in 11-digit North American format; 202 {"data": {"id": "mdr2-...", ...}}.
# num_country = US turns what the dialplan passes ("(206) 555-0100") into +12065550100,
# and val_numform = no+ then drops the "+".
FLOWROUTE = """
    [websms]
    url_host    = https://api.flowroute.com
    url_path    = /v2.1/messages
    encoding    = json
    auth_user   = 12345678
    auth_secret = flowroute-secret-key
    key_to      = to
    key_from    = from
    key_body    = body
    num_country = US
    val_numform = no+
    resp_id     = data.id
"""


def test_flowroute_with_num_country():
    req = request(FLOWROUTE, "(206) 555-0100", "206-555-0199", "Hi")
    assert req.url == "https://api.flowroute.com/v2.1/messages"
    assert req.header("Authorization") == basic("12345678", "flowroute-secret-key")
    assert req.body == compact({"to": "12065550100", "from": "12065550199", "body": "Hi"})
    answer = {"data": {"links": {"self": "https://api.flowroute.com/v2.1/messages/mdr2-39cadeace66e11e7aff806cd7f24ba2d"},
                       "type": "message", "id": "mdr2-39cadeace66e11e7aff806cd7f24ba2d"}}
    assert answer_id(FLOWROUTE, 202, answer) == "mdr2-39cadeace66e11e7aff806cd7f24ba2d"


# https://developers.messagebird.com/api/sms-messaging/#send-outbound-sms: POST
# https://rest.messagebird.com/messages, Authorization: AccessKey <key>, JSON
# originator, body, recipients (a list); 201 with "id".
BIRD = """
    [websms]
    url_host    = https://rest.messagebird.com
    url_path    = /messages
    encoding    = json
    auth_method = header
    auth_scheme = AccessKey
    auth_secret = test_gshuPaZoeEG6ovbc8M79w0QyM
    key_to      = "recipients[]"
    key_from    = originator
    key_body    = body
    val_numform = no+
    resp_id     = id
"""


def test_bird_messagebird():
    req = request(BIRD, "+31612345678", "MessageBird", "Hi")
    assert req.url == "https://rest.messagebird.com/messages"
    assert req.header("Authorization") == b"AccessKey test_gshuPaZoeEG6ovbc8M79w0QyM"
    assert req.body == compact({"recipients": ["31612345678"], "originator": "MessageBird", "body": "Hi"})
    assert answer_id(BIRD, 201, {"id": "e8077d803532c0b5937c639b60216938", "recipients": {"totalCount": 1}}) \
        == "e8077d803532c0b5937c639b60216938"


# https://www.infobip.com/docs/api/channels/sms/send-sms-message: POST
# https://{base}.api.infobip.com/sms/2/text/advanced, Authorization: App <API key>, JSON
# {"messages": [{"destinations": [{"to": "41793026727"}], "from": ..., "text": ...}]};
# the answer lists messages[].messageId.
INFOBIP = """
    [websms]
    url_host    = https://xyz12.api.infobip.com
    url_path    = /sms/2/text/advanced
    encoding    = json
    auth_method = header
    auth_header = Authorization
    auth_scheme = App
    auth_secret = 003026bbc133714df1834b8638bb496e-8f4b3d9a
    key_to      = messages.0.destinations.0.to
    key_from    = messages.0.from
    key_body    = messages.0.text
    val_numform = no+
    resp_id     = messages.0.messageId
"""


def test_infobip():
    req = request(INFOBIP, "+41793026727", "InfoSMS", "This is a sample message")
    assert req.url == "https://xyz12.api.infobip.com/sms/2/text/advanced"
    assert req.header("Authorization") == b"App 003026bbc133714df1834b8638bb496e-8f4b3d9a"
    assert req.body == compact({"messages": [{"destinations": [{"to": "41793026727"}], "from": "InfoSMS",
                                              "text": "This is a sample message"}]})
    answer = {"bulkId": "2034072219640523072", "messages": [
        {"messageId": "2250be2d4219-3af1-78856-aabe-1362af1edfd2", "status": {"groupName": "PENDING"},
         "to": "41793026727"}]}
    assert answer_id(INFOBIP, 200, answer) == "2250be2d4219-3af1-78856-aabe-1362af1edfd2"


# BulkVS REST API (https://portal.bulkvs.com/api/v1.0/documentation, messageSend; the
# page needs a login, so checked against integrations that use it): POST
# https://portal.bulkvs.com/api/v1.0/messageSend, HTTP Basic, JSON From, To (a list),
# Message, numbers as 11 digits without "+".
BULKVS = """
    [websms]
    url_host    = https://portal.bulkvs.com
    url_path    = /api/v1.0/messageSend
    encoding    = json
    auth_user   = owner@example.com
    auth_secret = bulkvs-api-password
    key_to      = "To[]"
    key_from    = From
    key_body    = Message
    val_numform = no+
"""


def test_bulkvs():
    req = request(BULKVS, "+13105551213", "+13105551212", "Hi")
    assert req.url == "https://portal.bulkvs.com/api/v1.0/messageSend"
    assert req.header("Authorization") == basic("owner@example.com", "bulkvs-api-password")
    assert req.body == compact({"To": ["13105551213"], "From": "13105551212", "Message": "Hi"})


# https://api.sipgate.com/v2/doc#/sessions/sendWebSms: POST
# https://api.sipgate.com/v2/sessions/sms, HTTP Basic with a personal access token
# (token id : token), JSON smsId (the web-SMS extension that sends), recipient,
# message; there is no sender field: key_from names smsId and val_static overwrites it.
SIPGATE = """
    [websms]
    url_host    = https://api.sipgate.com
    url_path    = /v2/sessions/sms
    encoding    = json
    auth_user   = token-0A0AAA
    auth_secret = 12345678-1234-1234-1234-1234567890ab
    key_to      = recipient
    key_from    = smsId
    key_body    = message
    val_static  = "smsId=s0"
"""


def test_sipgate_and_its_204():
    req = request(SIPGATE, "+4915112345678", "+4930123456", "Hi")
    assert req.url == "https://api.sipgate.com/v2/sessions/sms"
    assert req.header("Authorization") == basic("token-0A0AAA", "12345678-1234-1234-1234-1234567890ab")
    assert req.body == compact({"recipient": "+4915112345678", "smsId": "s0", "message": "Hi"})
    out = check_response(interface(SIPGATE), 204, b"")
    assert (out.ok, out.code, out.provider_id) == (True, 204, None)


def test_custom_api_key_header_without_scheme():
    req = request("""
        [websms]
        url_host    = https://sms.example.net
        url_path    = /v1/send
        encoding    = json
        method      = PUT
        auth_method = header
        auth_header = X-API-Key
        auth_secret = k-0123
        key_to      = to
        key_from    = from
        key_body    = text
        val_static  = "options.flash:=false,options.validity:=1440,tag=pbx"
    """)
    assert req.method == "PUT"
    assert req.header("X-API-Key") == b"k-0123" and req.header("Authorization") is None
    assert req.body == compact({"to": TO, "from": FROM, "text": TEXT,
                                "options": {"flash": False, "validity": 1440}, "tag": "pbx"})


# ---------------------------------------------------------------------------------------
# websmsd.numbers
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("number, country, e164", [
    ("+1 415 555 0100", "US", "+14155550100"),
    ("(415) 555-0100", "US", "+14155550100"),
    ("14155550100", "US", "+14155550100"),
    ("011 46 70 123 45 67", "US", "+46701234567"),
    ("070-123 45 67", "SE", "+46701234567"),
    ("0046701234567", "se", "+46701234567"),
    ("46701234567", "SE", "+46701234567"),
    ("015112345678", "DE", "+4915112345678"),
    ("447911123456", "US", "+447911123456"),      # no "+", cannot be a US number: abroad
    ("447700900123", "US", None),                  # ...but only a valid one (drama range)
    ("+44 7700 900123\n", "GB", "+447700900123"),  # surrounding whitespace is dropped
])
def test_normalise(number, country, e164):
    if e164 is None:
        with pytest.raises(NumberError, match="too long for a [+]1 number"):
            normalise(number, country)
    else:
        assert normalise(number, country) == e164


@pytest.mark.parametrize("number, country, words", [
    ("", "US", "empty"),
    ("Acme", "US", "not a phone number"),
    ("1-800-FLOWERS", "US", "not a phone number"),
    ("+1 415\n555 0100", "US", "not a phone number"),
    ("555-0100", "US", "area code"),
    ("1001", "US", "too short"),
    ("123", "SE", "too short"),
    ("+46 70 123 45 67 890 1234", "SE", "too long"),
    ("+999 1234567", "SE", "country code"),
    ("++46701234567", "SE", "not a phone number"),
    ("+14155550100", "XX", "country"),
])
def test_normalise_refuses_with_a_reason(number, country, words):
    with pytest.raises(NumberError) as e:
        normalise(number, country)
    assert words in str(e.value)
    assert isinstance(e.value, ValueError) and "\n" not in str(e.value)


def test_numbers_imports_phonenumbers_lazily():
    code = ("import sys, websmsd.numbers; assert 'phonenumbers' not in sys.modules;"
            "websmsd.numbers.normalise('+46701234567', 'SE'); assert 'phonenumbers' in sys.modules")
    env = dict(os.environ, PYTHONPATH=ROOT)
    subprocess.run([sys.executable, "-c", code], check=True, env=env, timeout=60)


# ---------------------------------------------------------------------------------------
# Through ITSPClient: an ITSP stand-in (StubTreq) and a real socket
# ---------------------------------------------------------------------------------------

pytest.importorskip("treq")

from twisted.internet import task  # noqa: E402
from twisted.web.resource import Resource  # noqa: E402
from treq.testing import StubTreq  # noqa: E402

from websmsd.itsp.client import ITSPClient  # noqa: E402


class ITSP(Resource):
    """Records each request as it arrived and answers as told."""

    isLeaf = True

    def __init__(self, status=200, body=b"{}"):
        super().__init__()
        self.status, self.body = status, body
        self.requests = []

    def render(self, request):
        self.requests.append({
            "method": request.method, "uri": request.uri, "body": request.content.read(),
            "headers": {k.lower(): v for k, v in request.requestHeaders.getAllRawHeaders()},
        })
        request.setResponseCode(self.status)
        if self.status == 204:
            return b""
        request.setHeader(b"content-type", b"application/json")
        return self.body


def client_for(itsp):
    return ITSPClient(task.Clock(), treq_client=StubTreq(itsp))


def local(conf: str, url: str = "http://itsp.test"):
    from dataclasses import replace

    return replace(interface(conf), url_host=url)


def test_client_json_bearer_byte_exact_and_the_id(log):
    itsp = ITSP(body=b'{"data":{"record_type":"message","id":"40385f64-5717-4562-b3fc-2c963f66afa6"}}')
    iface = local(TELNYX)
    out = fired(client_for(itsp).send(iface, TO, FROM, TEXT))
    assert (out.ok, out.code, out.provider_id) == (True, 200, "40385f64-5717-4562-b3fc-2c963f66afa6")
    [seen] = itsp.requests
    assert (seen["method"], seen["uri"]) == (b"POST", b"/v2/messages")
    assert seen["body"] == '{"to":"+14155550100","from":"+14155550199","text":"Hello from the PBX 😀"}'.encode()
    assert seen["headers"][b"authorization"] == [b"Bearer KEY0123456789ABCDEF_telnyx"]
    assert seen["headers"][b"content-type"] == [b"application/json"]
    assert seen["headers"][b"content-length"] == [str(len(seen["body"])).encode()]
    dump = repr([e for e in log if e.get("log_namespace") == "websmsd.itsp"])
    assert "KEY0123456789ABCDEF_telnyx" not in dump and "Hello" not in dump
    assert "40385f64-5717-4562-b3fc-2c963f66afa6" in dump  # the id is logged: it is no secret


def test_client_get_query(log):
    itsp = ITSP(body=b'{"status":"success","sms":23434}')
    out = fired(client_for(itsp).send(local(VOIPMS), "5559876543", "5551234567", "Hi there"))
    assert (out.ok, out.provider_id) == (True, "23434")
    [seen] = itsp.requests
    assert seen["method"] == b"GET"
    assert seen["uri"] == (b"/api/v1/rest.php?api_username=pbx%40example.com&api_password=s3cret+pass%26%3D"
                           b"&did=5551234567&dst=5559876543&message=Hi+there&method=sendSMS")
    assert seen["body"] == b""
    assert b"content-type" not in seen["headers"]
    dump = repr([e for e in log if e.get("log_namespace") == "websmsd.itsp"])
    assert "s3cret" not in dump and "Hi there" not in dump and "api_password" not in dump


def test_client_204_is_sent():
    itsp = ITSP(status=204)
    out = fired(client_for(itsp).send(local(SIPGATE), "+4915112345678", "+4930123456", "Hi"))
    assert (out.ok, out.permanent, out.code, out.provider_id) == (True, False, 204, None)


def test_client_missing_id_is_not_a_failure(log):
    itsp = ITSP(status=200, body=b'{"data":{}}')
    out = fired(client_for(itsp).send(local(TELNYX), TO, FROM, "x"))
    assert (out.ok, out.provider_id) == (True, None)
    debug = [e for e in log if e.get("log_namespace") == "websmsd.itsp" and e["log_level"].name == "debug"]
    assert debug and debug[0]["resp_id"] == "data.id"


def test_client_invalid_number_fails_for_good_without_a_request():
    itsp = ITSP()
    client = client_for(itsp)
    out = fired(client.send(local(FLOWROUTE), "555-0100", "+12065550199", "x"))
    assert (out.ok, out.permanent, out.code) == (False, True, None)
    assert out.reason.startswith("not sent: To ") and "area code" in out.reason
    out = fired(client.send(local(FLOWROUTE), "+12065550100", "12", "x"))
    assert (out.ok, out.permanent) == (False, True) and "From" in out.reason
    assert itsp.requests == []
    # An alphanumeric sender is a name, not a number: it goes out as it is.
    fired(client.send(local(FLOWROUTE), "+12065550100", "Acme Inc", "x"))
    assert json.loads(itsp.requests[0]["body"])["from"] == "Acme Inc"


@pytest.mark.parametrize("conf, secret", [
    (TELNYX, "KEY0123456789ABCDEF_telnyx"),
    (INFOBIP, "003026bbc133714df1834b8638bb496e-8f4b3d9a"),
    (VOIPMS, "s3cret pass&="),
    (BANDWIDTH, "api-password"),
])
def test_client_secrets_never_in_reasons_or_logs(conf, secret, log):
    from urllib.parse import quote_plus

    # An ITSP that quotes the credentials back, in every spelling, in an error.
    echoed = {"error": f"bad credentials {secret} / {quote_plus(secret)}", "json": secret,
              "basic": base64.b64encode(f"api-user:{secret}".encode()).decode()}
    itsp = ITSP(status=401, body=json.dumps(echoed).encode())
    out = fired(client_for(itsp).send(local(conf), "5559876543", "5551234567", "x"))
    assert (out.ok, out.permanent, out.code) == (False, True, 401)
    dump = out.reason + repr([e for e in log if e.get("log_namespace") == "websmsd.itsp"])
    spellings = [secret, quote_plus(secret), json.dumps(secret)[1:-1]]
    if conf is BANDWIDTH:  # basic auth: the header's base64 is a credential too
        spellings.append(echoed["basic"])
    for spelling in spellings:
        assert spelling not in dump
    assert "***" in out.reason


def test_json_document_paths():
    assert json_document([("a.b", "1"), ("a.c", "2"), ("x[]", "3"), ("x[]", "4"), ("m.0.k", "5"),
                          ("m.0.l", "6"), ("m.1.k", "7"), ("r[].n", "8"), ("0", "root key")]) == {
        "a": {"b": "1", "c": "2"}, "x": ["3", "4"], "m": [{"k": "5", "l": "6"}, {"k": "7"}],
        "r": [{"n": "8"}], "0": "root key"}
    assert response_id("message_uuid.0", b'{"message_uuid":["u1","u2"]}') == "u1"


# The wire itself: a raw TCP server in a child process (a real reactor, no global one in
# pytest) records the bytes websmsd's treq client puts on a real socket.

WIRE_TIMEOUT = 60


@pytest.fixture(scope="module")
def wire(tmp_path_factory):
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run([sys.executable, os.path.abspath(__file__), "--wire"], capture_output=True,
                          timeout=WIRE_TIMEOUT, env=env, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr.decode(errors="replace")[-3000:]
    return json.loads(proc.stdout.decode().strip().splitlines()[-1])


def _head_and_body(raw_b64):
    raw = base64.b64decode(raw_b64)
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    return lines[0], sorted(lines[1:]), body


def test_wire_json_bearer(wire):
    start, headers, body = _head_and_body(wire["json"]["raw"])
    assert start == b"POST /v2/messages HTTP/1.1"
    expected = '{"to":"+14155550100","from":"+14155550199","text":"Hello from the PBX 😀"}'.encode()
    assert body == expected
    assert b"Authorization: Bearer KEY0123456789ABCDEF_telnyx" in headers
    assert b"Content-Type: application/json" in headers
    assert b"Content-Length: " + str(len(expected)).encode() in headers
    assert wire["json"]["outcome"] == [True, False, 200, "40385f64-5717-4562-b3fc-2c963f66afa6"]


def test_wire_get(wire):
    start, headers, body = _head_and_body(wire["get"]["raw"])
    assert start == (b"GET /api/v1/rest.php?api_username=pbx%40example.com&api_password=s3cret+pass%26%3D"
                     b"&did=5551234567&dst=5559876543&message=Hi&method=sendSMS HTTP/1.1")
    assert body == b""
    assert not [h for h in headers if h.lower().startswith((b"content-", b"transfer-encoding"))]
    assert wire["get"]["outcome"] == [True, False, 200, "23434"]


def _wire_main():  # pragma: no cover - runs in the child process
    from twisted.internet import defer, protocol, reactor

    answers = {
        b"POST": b'{"data":{"id":"40385f64-5717-4562-b3fc-2c963f66afa6"}}',
        b"GET": b'{"status":"success","sms":23434}',
    }

    class RawITSP(protocol.Protocol):
        def connectionMade(self):
            self.buffer = b""

        def dataReceived(self, data):
            self.buffer += data
            if b"\r\n\r\n" not in self.buffer:
                return
            head, _, rest = self.buffer.partition(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            if len(rest) < length:
                return
            self.factory.raw.append(head + b"\r\n\r\n" + rest[:length])
            self.buffer = rest[length:]
            answer = answers[head.split(b" ", 1)[0]]
            self.transport.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: "
                                 + str(len(answer)).encode() + b"\r\n\r\n" + answer)

    async def main():
        from dataclasses import replace

        factory = protocol.Factory.forProtocol(RawITSP)
        factory.raw = []
        port = reactor.listenTCP(0, factory, interface="127.0.0.1")
        url = f"http://127.0.0.1:{port.getHost().port}"
        client = ITSPClient(reactor, timeout=10.0)
        results = {}
        for name, conf, args in (("json", TELNYX, (TO, FROM, TEXT)),
                                 ("get", VOIPMS, ("5559876543", "5551234567", "Hi"))):
            out = await client.send(replace(interface(conf), url_host=url), *args)
            results[name] = {"outcome": [out.ok, out.permanent, out.code, out.provider_id],
                             "raw": base64.b64encode(factory.raw[-1]).decode()}
        await client.close()
        await port.stopListening()
        return results

    outcome = {}

    def start():
        d = defer.ensureDeferred(main())
        d.addCallbacks(lambda r: outcome.setdefault("result", r), lambda f: outcome.setdefault("error", f.getTraceback()))
        d.addBoth(lambda _: reactor.stop())

    reactor.callWhenRunning(start)
    reactor.callLater(WIRE_TIMEOUT - 10, reactor.stop)
    reactor.run()
    if "result" not in outcome:
        sys.stderr.write(outcome.get("error", "timed out\n"))
        sys.exit(1)
    print(json.dumps(outcome["result"]))


if __name__ == "__main__" and sys.argv[1:] == ["--wire"]:
    _wire_main()
