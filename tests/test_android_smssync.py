"""SMSsync's protocol (websmsd.android.smssync), against the app's request shapes.

The requests come from tests/phonepeers.py (written from the notes on SMSsync v3.1.1's
code: OkHttp form encoding, Android org.json, the XML body labelled as JSON, Gson's
double-encoded task=result); the app's verdict on each answer comes from there too.  The
last part runs the phone over a real loopback socket against a small test server that
answers with the pure functions, the way the lead's resource will.
"""

from __future__ import annotations

import http.server
import json
import os
import random
import subprocess
import sys
import threading
from urllib.parse import unquote

import pytest

from phonepeers import Reply, SMSsyncPhone, WireRequest, android_json_object, okhttp_form_encode
from websmsd.android import smssync as s
from websmsd.android.answer import Answer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SECRET = "s3cret pass+1/ä"
URL = "http://127.0.0.1:9/sms/smssync"


def parse(request: WireRequest, secret=SECRET, fields=s.DEFAULT_FIELDS):
    return s.parse_incoming(request.method, request.header("Content-Type"), request.body,
                            request.query, secret=secret, fields=fields)


def as_reply(answer: Answer) -> Reply:
    return Reply(answer.status, {"content-type": answer.content_type}, answer.body)


# --------------------------------------------------------------------------------------
# Purity
# --------------------------------------------------------------------------------------


def test_pure_modules_import_nothing_from_twisted():
    code = ("import sys; import websmsd.android.smssync, websmsd.android.basicauth, "
            "websmsd.android.answer; "
            "bad = [m for m in sys.modules if m == 'twisted' or m.startswith(('twisted.', 'treq'))]; "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT, timeout=60)


# --------------------------------------------------------------------------------------
# The query string
# --------------------------------------------------------------------------------------


def test_query_second_question_mark_and_plus_for_space():
    q = s.parse_query(b"id=7?task=send&secret=s3cret+pass%2B1%2F%C3%A4")
    assert (q.task, q.secret) == ("send", SECRET)
    assert q.params[0] == ("id", "7")


def test_query_from_twisted_args_mapping():
    # twisted's request.args for the same URI: the second `?` stayed inside a value.
    q = s.parse_query({b"id": [b"7?task=send"], b"secret": [SECRET.encode()]})
    assert (q.task, q.secret) == ("send", SECRET)
    q = s.parse_query({b"x?task": [b"result"]})
    assert q.task == "result"


def test_query_last_task_and_secret_win_and_leading_question_mark():
    q = s.parse_query("?task=foo&secret=a&task=send&secret=b")
    assert (q.task, q.secret) == ("send", "b")
    assert s.parse_query(None) == s.Query(None, None, ())
    assert s.parse_query(b"").task is None


def test_query_invalid_utf8_secret_never_matches():
    q = s.parse_query(b"task=send&secret=%FF")
    assert q.secret is not None and s.check_secret(q.secret, "\xff") is not None
    assert s.check_secret(q.secret, "\ufffd") is not None


@pytest.mark.parametrize("method,query,kind", [
    ("POST", b"", s.INCOMING),
    ("PUT", b"", s.INCOMING),
    (b"POST", b"id=3", s.INCOMING),
    ("GET", b"task=send&secret=x", s.SEND_POLL),
    ("GET", b"id=3?task=send", s.SEND_POLL),
    ("POST", b"task=sent", s.SENT_ACK),
    ("GET", b"task=result&secret=x", s.RESULT_QUERY),
    ("POST", b"task=result&secret=x", s.RESULT_REPORT),
])
def test_classify(method, query, kind):
    assert s.classify(method, query) == kind


@pytest.mark.parametrize("method,query,status", [
    ("HEAD", b"", 405), ("DELETE", b"task=send", 405), ("GET", b"", 400),
    ("POST", b"task=send", 400), ("GET", b"task=sent", 400), ("PUT", b"task=nope", 400),
])
def test_classify_refusals(method, query, status):
    refusal = s.classify(method, query)
    assert isinstance(refusal, s.Refusal) and refusal.status == status and refusal.reason


# --------------------------------------------------------------------------------------
# Incoming SMS in the three formats
# --------------------------------------------------------------------------------------

TEXT = "Hi there + 100% & <ok> \"quoted\" / ü 😀\nsecond line"


@pytest.mark.parametrize("fmt", ["form", "json", "xml"])
def test_incoming_each_format(fmt):
    phone = SMSsyncPhone(URL, SECRET, fmt=fmt, device_id="dev 1", sent_to="+46700000001")
    request = phone.incoming_request("+46701234567", TEXT, sent_timestamp_ms=1_700_000_123_456,
                                     message_id="1f0e8b52-9a6b-4c8e-8f0e-6f2b1c3d4e5f")
    sms = parse(request)
    assert sms == s.IncomingSMS(
        message_id="1f0e8b52-9a6b-4c8e-8f0e-6f2b1c3d4e5f", sender="+46701234567",
        text=TEXT if fmt != "xml" else TEXT,  # XML keeps \n (the app writes it raw)
        sent_timestamp_ms=1_700_000_123_456, sent_to="+46700000001", device_id="dev 1",
        body_format=fmt,
    )


def test_form_body_is_okhttp_shaped_and_both_space_forms_decode():
    phone = SMSsyncPhone(URL, SECRET)
    request = phone.incoming_request("+4670", "a b+c", message_id="m1")
    assert b"message=a%20b%2Bc" in request.body
    assert request.header("Content-Type") == "application/x-www-form-urlencoded"
    # A form written by another client, with `+` for the space, decodes the same.
    body = b"secret=s3cret+pass%2B1%2F%C3%A4&from=%2B4670&message=a+b%2Bc&message_id=m1&sent_timestamp=1"
    sms = s.parse_incoming("POST", "application/x-www-form-urlencoded", body, b"", secret=SECRET)
    assert (sms.text, sms.sender, sms.sent_timestamp_ms) == ("a b+c", "+4670", 1)


def test_xml_is_recognised_although_labelled_json():
    phone = SMSsyncPhone(URL, SECRET, fmt="xml")
    request = phone.incoming_request("Vodafone", "x", message_id="m1")
    assert request.header("Content-Type") == "application/json; charset=UTF-8"
    assert request.body.startswith(b"<?xml version='1.0' encoding='UTF-8' standalone='yes' ?><payload>")
    assert parse(request).sender == "Vodafone"


def test_json_body_uses_android_slash_escape():
    phone = SMSsyncPhone(URL, SECRET, fmt="json")
    request = phone.incoming_request("+1", "a/b", message_id="m1")
    assert b'"a\\/b"' in request.body
    assert parse(request).text == "a/b"


def test_empty_optional_fields_are_none_and_text_may_be_empty():
    phone = SMSsyncPhone(URL, SECRET)
    sms = parse(phone.incoming_request("+1", "", message_id="m1"))
    assert (sms.sent_to, sms.device_id, sms.text) == (None, None, "")


def test_renamed_fields():
    keys = {"secret": "key", "from": "sender", "message": "body", "message_id": "id",
            "sent_timestamp": "ts", "sent_to": "to", "device_id": "dev"}
    phone = SMSsyncPhone(URL, SECRET, keys=keys)
    fields = s.FieldNames(secret="key", sender="sender", message="body", message_id="id",
                          sent_timestamp="ts", sent_to="to", device_id="dev")
    sms = parse(phone.incoming_request("+1", "hello", message_id="m9"), fields=fields)
    assert (sms.sender, sms.text, sms.message_id) == ("+1", "hello", "m9")
    # With the default names the same request has no `from`.
    assert isinstance(parse(phone.incoming_request("+1", "hello", message_id="m9")), s.Refusal)


@pytest.mark.parametrize("fmt", ["form", "json", "xml"])
def test_test_integration_is_not_an_sms(fmt):
    phone = SMSsyncPhone(URL, SECRET, fmt=fmt)
    result = parse(phone.test_request())
    assert result == s.TestIntegration(s.TEST_FROM, s.TEST_MESSAGE, fmt)
    assert phone.test_passes(as_reply(s.test_integration_answer()))


def test_test_integration_with_a_wrong_secret_fails_the_test():
    phone = SMSsyncPhone(URL, "wrong")
    refusal = parse(phone.test_request())
    assert refusal == s.Refusal(403, "the secret does not match")
    assert not phone.test_passes(as_reply(s.refusal_answer(refusal)))


@pytest.mark.parametrize("phone_secret,configured,ok", [
    (SECRET, SECRET, True), ("wrong", SECRET, False), ("", SECRET, False),
    ("", None, True), ("anything", None, True), ("anything", "", True),
    (SECRET + " ", SECRET, False), (SECRET[:-1], SECRET, False),
])
def test_secret(phone_secret, configured, ok):
    result = parse(SMSsyncPhone(URL, phone_secret).incoming_request("+1", "x", message_id="m"),
                   secret=configured)
    assert isinstance(result, s.IncomingSMS) is ok
    if not ok:
        assert result.status == 403


def test_json_without_secret_key_is_checked_as_empty():
    body = android_json_object([("from", "+1"), ("message", "x"), ("message_id", "m"),
                                ("sent_timestamp", "5")]).encode()
    assert s.parse_incoming("POST", "application/json", body, None, secret=None).sender == "+1"
    assert s.parse_incoming("POST", "application/json", body, None, secret="k").status == 403


def test_json_timestamp_as_number_is_taken():
    body = b'{"from":"+1","message":"x","message_id":"m","sent_timestamp":1700000000000}'
    assert s.parse_incoming("POST", None, body, None, secret=None).sent_timestamp_ms == 1700000000000


# --------------------------------------------------------------------------------------
# Malformed and hostile incoming requests
# --------------------------------------------------------------------------------------

GOOD = b"from=%2B1&message=x&message_id=m&sent_timestamp=1"


@pytest.mark.parametrize("body,status", [
    (b"from=%2B1&message=%FF&message_id=m", 400),  # not UTF-8
    (b"from=%2B1%0A&message=x&message_id=m", 400),  # CR/LF in the sender
    (b"from=&message=x&message_id=m", 400),
    (b"message=x&message_id=m", 400),
    (b"from=%2B1&message_id=m", 400),
    (b"from=%2B1&message=x&sent_timestamp=1", 400),  # a timestamp but no id
    (b"from=%2B1&message=x&message_id=m&sent_timestamp=yesterday", 400),
    (b"from=%2B1&message=x&message_id=m&sent_timestamp=-5", 400),
    (b"from=%2B1&message=x&message_id=m%0Dx", 400),
    (b"from=%2B1&message=x&message_id=m&sent_to=%0A", 400),
    (b"from=%2B1&from=%2B2&message=x&message_id=m", 400),  # a field twice
    (b"from=" + b"1" * 65 + b"&message=x&message_id=m", 400),
    (b"&".join(b"f%d=1" % i for i in range(200)), 413),
    (b"{" + b"[" * 100000, 400),
    (b'{"from":"+1","message":"x","message_id":"m","extra":{"a":1}}', 400),
    (b'{"from":"+1","message":"x","message_id":true}', 400),
    (b'{"from":"+1","message":"\\ud800","message_id":"m"}', 400),  # lone surrogate
    (b'{"from":"+1","message":"x","message_id":"m","sent_timestamp":NaN}', 400),
    (b'{"from":"+1","from":"+2"', 400),
    (b'["from","+1"]', 400),
    (b"\xef\xbb\xbf{\"from\":\"+1\",\"message\":\"x\",\"message_id\":\"m\"}", None),  # a BOM is fine
])
def test_malformed_incoming(body, status):
    result = s.parse_incoming("POST", "application/x-www-form-urlencoded", body, b"", secret=None)
    if status is None:
        assert isinstance(result, s.IncomingSMS)
    else:
        assert isinstance(result, s.Refusal) and result.status == status, result
        assert "\n" not in result.reason


def test_oversize_body_is_refused_before_parsing():
    body = GOOD + b"&pad=" + b"a" * s.MAX_BODY
    assert s.parse_incoming("POST", None, body, None, secret=None).status == 413


def test_multipart_is_refused_with_a_hint():
    result = s.parse_incoming("POST", "multipart/form-data; boundary=x", b"--x\r\n", None, secret=None)
    assert result.status == 415 and "form" in result.reason


def test_incoming_with_task_in_query_is_not_an_sms():
    assert s.parse_incoming("POST", None, GOOD, b"task=sent", secret=None).status == 400
    assert s.parse_incoming("GET", None, GOOD, b"", secret=None).status == 400


XML_HEAD = b"<?xml version='1.0' encoding='UTF-8' standalone='yes' ?>"


@pytest.mark.parametrize("doc", [
    # billion laughs: refused at the DOCTYPE, nothing expanded
    b'<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol">'
    + b"".join(b'<!ENTITY lol%d "%s">' % (i, (b"&lol%d;" % (i - 1) if i else b"&lol;") * 10) for i in range(10))
    + b']><payload><from>+1</from><message>&lol9;</message><message_id>m</message_id></payload>',
    # external entity (file read)
    b'<?xml version="1.0"?><!DOCTYPE p [<!ENTITY x SYSTEM "file:///etc/passwd">]>'
    b"<payload><from>+1</from><message>&x;</message><message_id>m</message_id></payload>",
    # parameter entity
    b'<?xml version="1.0"?><!DOCTYPE p [<!ENTITY % x SYSTEM "http://127.0.0.1:9/x"> %x;]><payload/>',
    # a DOCTYPE alone
    b"<!DOCTYPE payload><payload><from>+1</from><message>x</message><message_id>m</message_id></payload>",
    # undefined entity without a DTD
    XML_HEAD + b"<payload><from>&x;</from><message>x</message><message_id>m</message_id></payload>",
    # nested field
    XML_HEAD + b"<payload><from><a>+1</a></from><message>x</message><message_id>m</message_id></payload>",
    # text beside the fields
    XML_HEAD + b"<payload>junk<from>+1</from><message>x</message><message_id>m</message_id></payload>",
    # unclosed
    XML_HEAD + b"<payload><from>+1</from>",
    XML_HEAD + b"<payload><from>+1</from><from>+2</from><message>x</message><message_id>m</message_id></payload>",
    b"<" * 1000,
])
def test_hostile_xml_is_refused(doc):
    result = s.parse_incoming("POST", "application/xml", doc, None, secret=None)
    assert isinstance(result, s.Refusal) and result.status == 400, result


def test_xml_character_references_and_cdata_are_text():
    doc = XML_HEAD + (b"<payload><from>+1</from><message>a&amp;b &#128512; <![CDATA[<c>]]></message>"
                      b"<message_id>m</message_id><sent_timestamp>7</sent_timestamp></payload>")
    sms = s.parse_incoming("POST", "application/json; charset=UTF-8", doc, None, secret=None)
    assert sms.text == "a&b \U0001F600 <c>" and sms.body_format == s.XML


def _valid_bodies():
    for fmt in ("form", "json", "xml"):
        phone = SMSsyncPhone(URL, SECRET, fmt=fmt)
        yield phone.incoming_request("+46701234567", TEXT, message_id="m-1").body


@pytest.mark.parametrize("body", list(_valid_bodies()))
def test_every_truncation_gives_a_value_never_an_exception(body):
    for n in range(len(body) + 1):
        result = s.parse_incoming("POST", None, body[:n], None, secret=SECRET)
        assert isinstance(result, (s.IncomingSMS, s.TestIntegration, s.Refusal))


def test_random_garbage_gives_a_value_never_an_exception():
    rng = random.Random(20240501)
    alphabet = b"<>{}[]&=%+?\":,/\\!-09azAZ \n\x00\xff\xc3\xa4#;"
    for _ in range(3000):
        body = bytes(rng.choice(alphabet) for _ in range(rng.randint(0, 80)))
        result = s.parse_incoming("POST", rng.choice([None, "application/json", "text/xml"]), body,
                                  rng.choice([None, b"", b"task=x", b"?"]), secret=rng.choice([None, "k"]))
        assert isinstance(result, (s.IncomingSMS, s.TestIntegration, s.Refusal))
    for _ in range(500):
        body = bytes(rng.randrange(256) for _ in range(rng.randint(0, 200)))
        for parser in (s.parse_sent_ack, s.parse_result_report):
            assert isinstance(parser(body), (tuple, s.ResultReport, s.Refusal))


# --------------------------------------------------------------------------------------
# Answers to the incoming POST, as the app reads them
# --------------------------------------------------------------------------------------


def test_incoming_accepted_exact_bytes():
    a = s.incoming_accepted()
    assert (a.status, a.body, a.content_type) == (200, b'{"payload":{"success":true,"error":null}}',
                                                  "application/json; charset=utf-8")
    assert SMSsyncPhone(URL).accepts_incoming(as_reply(a))


def test_instant_reply_has_only_to_message_uuid():
    a = s.incoming_accepted([s.OutgoingSMS("0123456789abcdef0123", "+46701234567", "Thanks 😀 </script>")])
    data = json.loads(a.body)
    assert data == {"payload": {"success": True, "error": None, "task": "send", "messages": [
        {"to": "+46701234567", "message": "Thanks 😀 </script>", "uuid": "0123456789abcdef0123"}]}}
    assert all(set(m) == {"to", "message", "uuid"} for m in data["payload"]["messages"])
    assert a.body.isascii()
    assert SMSsyncPhone(URL)._gson_messages(data["payload"]) == data["payload"]["messages"]


@pytest.mark.parametrize("status", [503, 403, 400, 200])
def test_incoming_refused_makes_the_phone_retry(status):
    a = s.incoming_refused("store unavailable\nsecond line", status)
    assert a.status == status
    assert json.loads(a.body) == {"payload": {"success": False, "error": "store unavailable second line"}}
    assert not SMSsyncPhone(URL).accepts_incoming(as_reply(a))


def test_what_the_phone_counts_as_success():
    phone = SMSsyncPhone(URL)
    ok = b'{"payload":{"success":true}}'
    assert phone.accepts_incoming(Reply(201, {}, ok))
    assert phone.accepts_incoming(Reply(200, {}, b'{"payload":{"success":"true"}}'))
    for status, body in ((202, ok), (204, b""), (200, b""), (200, b'{"payload":{"success":1}}'),
                         (200, b"<html>"), (500, ok)):
        assert not phone.accepts_incoming(Reply(status, {}, body))


@pytest.mark.parametrize("bad", [
    s.OutgoingSMS("", "+1", "x"), s.OutgoingSMS("u\n", "+1", "x"), s.OutgoingSMS("u", "+1\r", "x"),
    s.OutgoingSMS("u", "+1", ""), s.OutgoingSMS("u", "+1", "\udc00"),
])
def test_unusable_outgoing_message_raises(bad):
    with pytest.raises(ValueError):
        s.incoming_accepted([bad])
    with pytest.raises(ValueError):
        s.send_task_answer([bad], None)


# --------------------------------------------------------------------------------------
# GET ?task=send
# --------------------------------------------------------------------------------------

OUT = [s.OutgoingSMS("0000018f00000001", "+46701234567", "one"),
       s.OutgoingSMS("0000018f00000002", "+46707654321", "två \"2\"")]


def test_send_task_answer_echoes_the_secret_exactly():
    a = s.send_task_answer(OUT, SECRET)
    payload = json.loads(a.body)["payload"]
    assert a.status == 200
    assert payload == {"success": True, "task": "send", "secret": SECRET, "messages": [
        {"to": "+46701234567", "message": "one", "uuid": "0000018f00000001"},
        {"to": "+46707654321", "message": "två \"2\"", "uuid": "0000018f00000002"}]}
    phone = SMSsyncPhone(URL, SECRET)
    assert phone._gson_messages(payload) is not None


def test_send_task_without_secret_leaves_the_key_out():
    payload = json.loads(s.send_task_answer([], None).body)["payload"]
    assert payload == {"success": True, "task": "send", "messages": []}


def test_send_poll_request_shape():
    phone = SMSsyncPhone("http://127.0.0.1:9/sms?id=7", SECRET)
    request = phone.send_poll_request()
    assert request.method == "GET" and request.body == b""
    assert request.target == "/sms?id=7?task=send&secret=s3cret+pass%2B1%2F%C3%A4"
    q = s.parse_query(request.query)
    assert q.task == "send" and s.check_secret(q.secret, SECRET) is None
    assert SMSsyncPhone(URL).send_poll_request().target == "/sms/smssync?task=send"


def test_task_refused_hands_nothing_out():
    a = s.task_refused("the secret does not match")
    phone = SMSsyncPhone(URL, SECRET)
    payload = phone._payload(as_reply(a))
    assert a.status == 403 and payload.get("task") is None and "messages" not in payload


# --------------------------------------------------------------------------------------
# POST ?task=sent
# --------------------------------------------------------------------------------------


def test_sent_ack_round_trip_and_forged_uuid():
    phone = SMSsyncPhone(URL, SECRET, results_api=True)
    request = phone.sent_ack_request(["u1", "forged", "u2", "u1"])
    assert request.target == "/sms/smssync?task=sent" and request.header("Authorization") is None
    assert "secret" not in request.query and b"secret" not in request.body
    queued = s.parse_sent_ack(request.body)
    assert queued == ("u1", "forged", "u2", "u1")
    a = s.sent_ack_answer(queued, {"u1", "u2", "u3"})
    assert (a.status, json.loads(a.body)) == (200, {"message_uuids": ["u1", "u2"]})
    assert phone.sent_ack_request([]) is None


@pytest.mark.parametrize("body", [
    b"", b"[]", b"{}", b'{"queued_messages":"u1"}', b'{"queued_messages":[1]}',
    b'{"queued_messages":["a\\nb"]}', b'{"queued_messages":[' + b'"u",' * 1000 + b'"u"]}', b"{",
])
def test_sent_ack_malformed(body):
    assert isinstance(s.parse_sent_ack(body), s.Refusal)


# --------------------------------------------------------------------------------------
# GET and POST ?task=result
# --------------------------------------------------------------------------------------


def test_result_query_answer():
    a = s.result_query_answer(["u1", "u2"])
    assert (a.status, a.body) == (200, b'{"message_uuids":["u1","u2"]}')
    with pytest.raises(ValueError):
        s.result_query_answer(["bad\n"])


def test_result_report_double_encoded_as_the_app_sends_it():
    phone = SMSsyncPhone(URL, SECRET, results_api=True)
    request = phone.result_report_request([
        {"uuid": "u1", "sent_result_code": 0, "sent_result_message": "SMSSync Message Sent",
         "delivered_result_code": -1, "delivered_result_message": "", "sent_timestamp": "Feb 21, 2017 3:36:40 PM"},
        {"uuid": "u2", "sent_result_code": 4, "sent_result_message": "No service <&='>"},
    ])
    assert request.body.startswith(b'{"message_result":"[{\\"uuid\\":\\"u1\\",')
    assert b"\\\\u003c" in request.body  # Gson's HTML-safe escape, inside the string
    assert s.parse_query(request.query).secret == SECRET
    report = s.parse_result_report(request.body)
    assert report == s.ResultReport((
        s.MessageResult("u1", 0, "SMSSync Message Sent", -1, "", "Feb 21, 2017 3:36:40 PM", None),
        s.MessageResult("u2", 4, "No service <&='>", None, None, None, None),
    ), 0)
    assert [s.result_hint(r) for r in report.results] == [
        s.Hint("delivered", "the phone received a delivery report"),
        s.Hint("failed", "the phone could not send it: no service (No service <&='>)"),
    ]


def test_result_report_as_documented_array_and_lenient_entries():
    body = json.dumps({"message_result": [
        {"uuid": "u1", "sent_result_code": "1", "delivered_result_code": "0"},
        {"uuid": 5}, "junk", {"sent_result_code": 1},
        {"uuid": "u2", "sent_result_code": True, "delivered_result_code": 1.5},
    ]}).encode()
    report = s.parse_result_report(body)
    assert report.skipped == 3
    assert report.results[0] == s.MessageResult("u1", 1, None, 0)
    assert report.results[1] == s.MessageResult("u2")
    assert s.parse_result_report(b'{"message_result":null}') == s.ResultReport((), 0)
    assert s.parse_result_report(b'{"message_result":"[]"}') == s.ResultReport((), 0)


@pytest.mark.parametrize("body", [
    b"", b"{}", b'{"message_result":"[{"}', b'{"message_result":7}', b'{"message_result":"{}"}', b"[",
])
def test_result_report_malformed(body):
    assert isinstance(s.parse_result_report(body), s.Refusal)


@pytest.mark.parametrize("sent,delivered,expected", [
    (0, -1, "delivered"), (None, -1, "delivered"), (0, 0, None), (None, None, None),
    (1, 0, "failed"), (2, None, "failed"), (3, 0, "failed"), (4, 0, "failed"), (5, 0, None),
    (-1, 0, None), (1, -1, "delivered"),
])
def test_result_hint_mapping(sent, delivered, expected):
    hint = s.result_hint(s.MessageResult("u", sent, None, delivered))
    assert (hint.status if hint else None) == expected


def test_result_report_answer():
    assert s.result_report_answer().status == 200


# --------------------------------------------------------------------------------------
# The phone over a real socket, against a test server built on the pure functions
# --------------------------------------------------------------------------------------


class SyncServer:
    """What the lead's resource will do, in a few lines: route, parse, answer."""

    def __init__(self, secret):
        self.secret = secret
        self.stored = {}  # message_id -> IncomingSMS
        self.tests = 0
        self.fail_next = 0
        self.outbox = list(OUT)
        self.offered = set()
        self.reports = []
        self.seen = []
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def handle_any(self):
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length)
                query = self.path.split("?", 1)[1] if "?" in self.path else ""
                server.seen.append((self.command, self.path, dict(self.headers), body))
                answer = server.answer(self.command, self.headers.get("Content-Type"), body, query)
                self.send_response(answer.status)
                self.send_header("Content-Type", answer.content_type)
                self.send_header("Content-Length", str(len(answer.body)))
                self.end_headers()
                self.wfile.write(answer.body)

            do_GET = do_POST = do_PUT = handle_any

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.httpd.server_address[1]
        threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True).start()

    def answer(self, method, ctype, body, query):
        kind = s.classify(method, query)
        if isinstance(kind, s.Refusal):
            return s.refusal_answer(kind)
        q = s.parse_query(query)
        if kind == s.INCOMING:
            result = s.parse_incoming(method, ctype, body, query, secret=self.secret)
            if isinstance(result, s.Refusal):
                return s.refusal_answer(result)
            if isinstance(result, s.TestIntegration):
                self.tests += 1
                return s.test_integration_answer()
            if self.fail_next:
                self.fail_next -= 1
                return s.incoming_refused("store unavailable", 503)
            self.stored.setdefault(result.message_id, result)
            return s.incoming_accepted()
        if kind == s.SENT_ACK:
            queued = s.parse_sent_ack(body)
            if isinstance(queued, s.Refusal):
                return s.refusal_answer(queued)
            pending = {m.uuid for m in self.outbox} & self.offered
            return s.sent_ack_answer(queued, pending)
        refused = s.check_secret(q.secret, self.secret)
        if refused:
            return s.task_refused(refused.reason, refused.status)
        if kind == s.SEND_POLL:
            fresh = [m for m in self.outbox if m.uuid not in self.offered]
            self.offered.update(m.uuid for m in fresh)
            return s.send_task_answer(fresh, q.secret)
        if kind == s.RESULT_QUERY:
            return s.result_query_answer(sorted(self.offered))
        report = s.parse_result_report(body)
        if not isinstance(report, s.Refusal):
            self.reports.append(report)
        return s.result_report_answer()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server():
    srv = SyncServer(SECRET)
    yield srv
    srv.close()


@pytest.mark.parametrize("fmt", ["form", "json", "xml"])
def test_phone_posts_sms_and_retries_with_the_same_id(server, fmt):
    phone = SMSsyncPhone(f"http://127.0.0.1:{server.port}/sms", SECRET, fmt=fmt)
    server.fail_next = 1
    assert not phone.receive_sms("+46701234567", TEXT, message_id="abc-1")
    assert server.stored == {} and [p.message_id for p in phone.pending] == ["abc-1"]
    assert phone.sync_pending() == 1
    assert phone.pending == [] and server.stored["abc-1"].text == TEXT
    # A retry of an SMS already stored (the answer was lost) is stored once.
    assert phone.receive_sms("+46701234567", TEXT, message_id="abc-1")
    assert len(server.stored) == 1


def test_phone_with_put_method(server):
    phone = SMSsyncPhone(f"http://127.0.0.1:{server.port}/sms", SECRET, method="PUT")
    assert phone.receive_sms("+1", "via PUT", message_id="put-1")
    assert server.seen[-1][0] == "PUT" and server.stored["put-1"].text == "via PUT"


def test_phone_gives_up_after_its_retries(server):
    phone = SMSsyncPhone(f"http://127.0.0.1:{server.port}/sms", "wrong", retries=2)
    phone.receive_sms("+1", "x", message_id="m")
    phone.sync_pending()
    phone.sync_pending()
    assert [p.message_id for p in phone.given_up] == ["m"] and server.stored == {}


def test_phone_test_integration_over_the_wire(server):
    url = f"http://127.0.0.1:{server.port}/sms"
    assert SMSsyncPhone(url, SECRET).test_integration()
    assert not SMSsyncPhone(url, "wrong").test_integration()
    assert server.tests == 1 and server.stored == {}


def test_phone_task_send_without_results_api_gets_each_message_once(server):
    phone = SMSsyncPhone(f"http://127.0.0.1:{server.port}/sms?id=7", SECRET)
    sent = phone.check_tasks()
    assert [m["uuid"] for m in sent] == [m.uuid for m in OUT]
    assert phone.check_tasks() == []
    method, path, _, _ = server.seen[0]
    assert (method, path) == ("GET", "/sms?id=7?task=send&secret=s3cret+pass%2B1%2F%C3%A4")
    assert SMSsyncPhone(f"http://127.0.0.1:{server.port}/sms", "wrong").check_tasks() == []


def test_phone_task_send_with_results_api_and_a_forged_ack(server):
    phone = SMSsyncPhone(f"http://127.0.0.1:{server.port}/sms", SECRET, results_api=True)
    assert [m["uuid"] for m in phone.check_tasks()] == [m.uuid for m in OUT]
    ack = [x for x in server.seen if x[1].endswith("?task=sent")]
    assert ack and json.loads(ack[0][3]) == {"queued_messages": [m.uuid for m in OUT]}
    # Someone without the secret tries to have an unoffered uuid confirmed.
    forger = SMSsyncPhone(f"http://127.0.0.1:{server.port}/sms", "", results_api=True)
    from phonepeers import send
    reply = send(forger.sent_ack_request(["never-offered", OUT[0].uuid]))
    assert reply.json() == {"message_uuids": [OUT[0].uuid]}


def test_phone_reports_results(server):
    phone = SMSsyncPhone(f"http://127.0.0.1:{server.port}/sms", SECRET, results_api=True)
    phone.check_tasks()
    query, report = phone.report_results({OUT[0].uuid: {"sent_result_code": 0, "delivered_result_code": -1}})
    assert query.status == 200 and report.status == 200
    [got] = server.reports
    assert [s.result_hint(r).status for r in got.results] == ["delivered"]


def test_phone_basic_auth_is_percent_decoded_utf8():
    phone = SMSsyncPhone("http://us%20er:p%40ss%C3%A4@127.0.0.1:8080/sms", SECRET)
    request = phone.incoming_request("+1", "x", message_id="m")
    from websmsd.android.basicauth import check_basic, parse_basic
    assert parse_basic(request.header("Authorization")) == ("us er", "p@ssä")
    assert check_basic(request.header("Authorization"), "us er", "p@ssä")
    assert request.header("User-Agent") == "SMSSync-Android/v3.1.1"
    assert request.header("Host") == "127.0.0.1:8080" and request.target == "/sms"


def test_okhttp_form_encoding_table():
    assert okhttp_form_encode("a b+c%~*-._!") == "a%20b%2Bc%25%7E*-._%21"
    assert unquote(okhttp_form_encode("ä😀")) == "ä😀"
