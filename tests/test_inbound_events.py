"""Today's ITSPs on the inbound webhook: key paths, media links, batches of events,
message and delivery report filters, fixed and decoded fields, E.164, answers, and
signed webhooks, with the providers' documented payloads (tests/fixtures/providers).

The pure parts are tested as functions; the resource over raw HTTP bytes, as in
test_webhook.py, with fake accept/report callables whose Deferreds the tests fire.
"""

import base64
import hashlib
import hmac
import json
from pathlib import Path
from urllib.parse import quote, urlencode

import pytest
from twisted.internet import defer
from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.python.failure import Failure

from test_webhook import Conn, http_request, parse_response
from websmsd.itsp import signatures
from websmsd.http.site import IGNORED_EVENTS
from websmsd.http.twsite import make_site
from websmsd.itsp.body import FieldError, parse_fields
from websmsd.itsp.fields import find_all
from websmsd.itsp.inbound import (IGNORED, MESSAGE, REPORT, BadNumber, Ignored, MissingField,
                                  Report, classify, events_of, extract, extract_report, matches,
                                  media_links, report_status)
from websmsd.itsp.webhook import WebhookResource
from websmsd.message import DELIVERED, FAILED, SENT, UnsafeValue
from websmsd.config import InboundInterface, InboundSettings

FIXTURES = Path(__file__).parent / "fixtures" / "providers"
FORM = "application/x-www-form-urlencoded"
JSON = "application/json"
NOW = 1_700_000_000.0
PEER = IPv4Address("TCP", "203.0.113.5", 40000)


def fixture(name: str) -> bytes:
    return (FIXTURES / name).read_bytes()


def tree_of(name: str):
    return parse_fields(FORM if name.endswith(".txt") else JSON, fixture(name), b"")


# Interface settings as a PBX owner would write them for each provider.
TELNYX = InboundInterface(
    name="telnyx",
    key_to="data.payload.to.0.phone_number",
    key_from="data.payload.from.phone_number",
    key_body="data.payload.text",
    key_id="data.payload.id",
    key_media="data.payload.media.*.url",
    msg_filter="data.event_type=message.received",
    dlr_filter="data.event_type=message.finalized",
    dlr_id="data.payload.id",
    dlr_status="data.payload.to.0.status",
    dlr_reason="data.payload.errors.0.detail",
    resp_type="application/json",
    resp_ack='{"ok": true}',
)
BANDWIDTH = InboundInterface(
    name="bandwidth",
    key_to="message.owner",
    key_from="message.from",
    key_body="message.text",
    key_id="message.id",
    key_media="message.media",
    msg_filter="type=message-received",
    dlr_filter="message.direction=out",
    dlr_id="message.id",
    dlr_status="type",
    dlr_reason="description",
)
SINCH = InboundInterface(
    name="sinch",
    key_to="to",
    key_from="from",
    key_body="body",
    key_id="id",
    msg_filter="type=mo_text",
    dlr_filter="type=recipient_delivery_report_sms",
    dlr_id="batch_id",
    dlr_status="status",
    dlr_reason="code",
)
TWILIO = InboundInterface(
    name="twilio",
    key_id="MessageSid",
    key_media="MediaUrl*",
    msg_filter="SmsStatus=received",
    dlr_filter="MessageStatus",
    dlr_id="MessageSid",
    dlr_status="MessageStatus",
    dlr_reason="ErrorCode",
    resp_type="text/xml",
    resp_ack="<Response></Response>",
)


# ---------------------------------------------------------------------------------
# Pure layer
# ---------------------------------------------------------------------------------


def test_find_all_paths_globs_and_document_order():
    tree = parse_fields(FORM, b"MediaUrl1=https%3A%2F%2Fb&NumMedia=2&MediaUrl0=https%3A%2F%2Fa"
                              b"&MediaContentType0=image%2Fpng", b"")
    assert find_all(tree, "MediaUrl*") == ["https://b", "https://a"]  # as posted
    doc = {"data": {"payload": {"media": [{"url": "u1", "size": 1}, {"url": "u2"}, {"x": 1}]}},
           "list": ["a", {"b": 1}, "c"], "deep": {"x": {"url": "d1"}, "y": {"url": "d2"}}}
    tree = parse_fields(JSON, json.dumps(doc).encode(), b"")
    assert find_all(tree, "data.payload.media.*.url") == ["u1", "u2"]
    assert find_all(tree, "data.payload.media.1.url") == ["u2"]
    assert find_all(tree, "list") == ["a", "c"]  # an array's texts
    assert find_all(tree, "deep.*.url") == ["d1", "d2"]
    assert find_all(tree, "deep.[xz].url") == ["d1"]
    assert find_all(tree, "nothing.*") == []
    # Without wildcards and without a path, the bare-name search of `find`: the
    # shallowest "url" is given twice (deep.x, deep.y): refused rather than guessed.
    with pytest.raises(FieldError, match="'url' appears 2 times"):
        find_all(tree, "url")
    assert find_all(tree, "size") == ["1"]


def test_media_links_are_validated():
    good = ["https://example.com/a.png", "http://example.com:8080/b?x=1&y={id}"]
    bad = ["ftp://example.com/x", "javascript:alert(1)", "https://", "https://a b/",
           "https://example.com/\nApplication: x", "https://example.com/\x00", "/relative",
           "https://example.com/" + "x" * 2000]
    links, dropped = media_links(good + bad)
    assert links == good and dropped == len(bad)
    links, dropped = media_links([f"https://e.com/{i}" for i in range(25)])
    assert len(links) == 20 and dropped == 5


def test_matches_and_classify():
    tree = {"type": "message-received", "message": {"direction": "in", "empty": ""}}
    assert matches(tree, "type=message-received")
    assert not matches(tree, "type=message-delivered")
    assert matches(tree, "message.direction=in") and matches(tree, "direction=in")
    assert matches(tree, "message.direction") and not matches(tree, "message.empty")
    assert not matches(tree, "absent") and matches(tree, "message.empty=")
    assert matches({"data": {"event_type": "message.received"}},
                   "data.event_type=message.received")  # "=" splits once, value has dots

    both = InboundInterface(msg_filter="kind=sms", dlr_filter="status")
    assert classify(both, {"kind": "sms", "status": "received"}) == MESSAGE  # msg wins
    assert classify(both, {"kind": "dlr", "status": "delivered"}) == REPORT
    assert classify(both, {"kind": "call"}) == IGNORED
    dlr_only = InboundInterface(dlr_filter="MessageStatus")
    assert classify(dlr_only, {"To": "1", "From": "2"}) == MESSAGE
    assert classify(dlr_only, {"MessageStatus": "sent"}) == REPORT
    assert classify(InboundInterface(), {"anything": "x"}) == MESSAGE


def test_report_words_and_dlr_map():
    for word in ("delivered", "DELIVRD", "delivery_succeeded", "message-delivered", " Delivered "):
        assert report_status(word) == DELIVERED
    for word in ("failed", "undelivered", "delivery_failed", "sending_failed", "rejected",
                 "expired", "UNDELIV", "REJECTD", "EXPIRED", "message-failed", "Deleted"):
        assert report_status(word) == FAILED
    for word in ("sent", "Dispatched", "delivery_unconfirmed", "submitted"):
        assert report_status(word) == SENT
    for word in ("queued", "accepted", "sending", "ENROUTE", "gibberish"):
        assert report_status(word) is None
    assert report_status("queued", "queued=sent") == SENT
    assert report_status("DELIVRD", "delivrd=sent, done = delivered") == SENT
    assert report_status("Done", "delivrd=sent, done = delivered") == DELIVERED


def test_extract_report_and_what_is_ignored():
    iface = InboundInterface(dlr_id="id", dlr_status="st", dlr_reason="why")
    assert extract_report(iface, {"id": "m1", "st": "UNDELIV", "why": "absent\nsubscriber"}) == (
        Report("m1", FAILED, "UNDELIV: absent subscriber")
    )
    assert extract_report(iface, {"id": "m1", "st": "delivered"}) == Report("m1", DELIVERED, "delivered")
    ignored = extract_report(iface, {"id": "m1", "st": "queued"})
    assert ignored == Ignored("intermediate delivery status", "queued")
    ignored = extract_report(iface, {"id": "m1", "st": "weird"})
    assert ignored.reason == "unknown delivery status" and "dlr_map" in ignored.detail
    assert extract_report(iface, {"st": "delivered"}).reason == "delivery report without a message id"
    assert extract_report(iface, {"id": "m1"}).reason == "delivery report without a status"
    assert extract_report(InboundInterface(), {"id": "m1"}).reason == "dlr_id or dlr_status is not set"
    with pytest.raises(UnsafeValue, match="provider id"):
        extract_report(iface, {"id": "m\n1", "st": "delivered"})
    long_reason = extract_report(iface, {"id": "m1", "st": "failed", "why": "x" * 500})
    assert len(long_reason.detail) == 200


def test_events_of():
    assert events_of({"a": "1"}) == [{"a": "1"}]
    batch = [{"a": "1"}, {"a": "2"}]
    assert events_of(batch) == batch
    assert events_of(["a", "b"]) == [["a", "b"]]  # not objects: one request as before
    assert events_of([]) == [[]]
    with pytest.raises(FieldError, match="more than 1000 events"):
        events_of([{}] * 1001)


def test_events_wrapped_in_an_object():
    infobip = {"results": [{"messageId": "a", "from": "385916242493"},
                           {"messageId": "b", "from": "385916242494"}],
               "messageCount": 2, "pendingMessageCount": 0}
    assert [e["messageId"] for e in events_of(infobip, "results")] == ["a", "b"]
    assert events_of({"other": 1}, "results") == [{"other": 1}]  # not wrapped: one event
    with pytest.raises(FieldError, match="results"):
        events_of({"results": [{"a": 1}, "x"]}, "results")


def test_infobip_style_wrapped_batch_over_http():
    # Infobip posts received SMS as {"results": [...], "messageCount": N, ...}
    # (numbers without "+"); key_events names the array.
    iface = InboundInterface(name="infobip", key_events="results", key_to="to",
                             key_from="from", key_body="text", key_id="messageId")
    hook = Hook(iface)
    body = json.dumps({"results": [
        {"messageId": "m-1", "from": "385916242493", "to": "385921004026", "text": "QUIZ one"},
        {"messageId": "m-2", "from": "385916242493", "to": "385921004026", "text": "QUIZ two"}],
        "messageCount": 2, "pendingMessageCount": 0}).encode()
    resp = hook.roundtrip(post("x.json", body=body))
    assert resp.status == 200
    [(messages, _)] = hook.sinks.accepts
    assert [(m.body, m.provider_id) for m in messages] == [("QUIZ one", "m-1"), ("QUIZ two", "m-2")]


def test_val_to_for_payloads_without_a_recipient():
    # Bird-style: the event names the sender and the text, not our number.
    iface = InboundInterface(key_from="sender", key_body="text", val_to="+46701234567")
    fields = extract(iface, {"sender": "+46709876543", "text": "hej"})
    assert (fields.recipient, fields.sender, fields.body) == ("+46701234567", "+46709876543", "hej")
    # A payload that has one keeps it.
    assert extract(iface, {"To": "+46700000000", "sender": "1"}).recipient == "+46700000000"
    # val_to is the owner's literal: never decoded or normalised.
    iface = InboundInterface(key_from="sender", val_to="200", num_country="SE",
                             val_urldecode=("to",))
    assert extract(iface, {"sender": "0709876543"}).recipient == "200"
    with pytest.raises(MissingField, match="^missing sender$"):
        extract(iface, {"text": "x"})


def test_val_urldecode():
    # BulkVS sends the text URL-encoded inside JSON.
    iface = InboundInterface(key_body="Message", val_urldecode=("body",))
    fields = extract(iface, {"To": "1", "From": "2", "Message": "Hello%20world+%2B%20caf%C3%A9"})
    assert fields.body == "Hello world + café"
    iface = InboundInterface(val_urldecode=("to", "from", "body"))
    fields = extract(iface, {"To": "%2B15551234567", "From": "+15550000000", "Body": "a+b"})
    assert (fields.recipient, fields.sender, fields.body) == ("+15551234567", "+15550000000", "a b")
    # Decoding cannot smuggle a line break past the checks.
    with pytest.raises(UnsafeValue):
        extract(iface, {"To": "100%0AApplication:%20System", "From": "2"})
    with pytest.raises(FieldError, match="not valid percent-encoded UTF-8"):
        extract(iface, {"To": "1", "From": "2", "Body": "%FF"})
    # Not listed: left as sent.
    assert extract(InboundInterface(), {"To": "1", "From": "2", "Body": "a%20b"}).body == "a%20b"


def test_num_country():
    iface = InboundInterface(num_country="SE")
    fields = extract(iface, {"To": "070-123 45 67", "From": "0046 8 123 456 78"})
    assert (fields.recipient, fields.sender) == ("+46701234567", "+46812345678")
    # Alphanumeric senders and short codes are not numbers to rewrite.
    assert extract(iface, {"To": "0701234567", "From": "My Bank"}).sender == "My Bank"
    assert extract(iface, {"To": "0701234567", "From": "72345"}).sender == "72345"
    # A number that cannot be one is refused with the reason, never guessed.
    with pytest.raises(BadNumber, match="^recipient '123' ") as info:
        extract(iface, {"To": "123", "From": "0701234567"})
    assert info.value.status == 400
    with pytest.raises(BadNumber, match="^sender "):
        extract(iface, {"To": "0701234567", "From": "+1312500000"})


def test_media_appended_as_links():
    iface = InboundInterface(key_media="media")
    fields = extract(iface, {"To": "1", "From": "2", "Body": "look",
                             "media": ["https://e.com/1.png", "ftp://e.com/2", "https://e.com/3"]})
    assert fields.body == "look\n\nhttps://e.com/1.png\nhttps://e.com/3"
    assert fields.dropped_media == 1
    fields = extract(iface, {"To": "1", "From": "2", "media": ["https://e.com/1.png"]})
    assert fields.body == "https://e.com/1.png"
    assert extract(iface, {"To": "1", "From": "2", "Body": "x"}).body == "x"


def test_documented_payloads_read_as_expected():
    received = extract(TELNYX, tree_of("telnyx-message-received.json"))
    assert (received.recipient, received.sender, received.body, received.provider_id) == (
        "+1773005000", "+1312500000", "Hello from Telnyx!", "84cca175-9755-4859-b67f-4730d7f58aa3")
    assert extract_report(TELNYX, tree_of("telnyx-message-finalized.json")) == Report(
        "ac012cbf-5e09-46af-a69a-7c0e2d90993c", DELIVERED, "delivered")
    mo = extract(SINCH, tree_of("sinch-mo-text.json"))
    assert (mo.recipient, mo.sender, mo.body, mo.provider_id) == (
        "12017777777", "12015555555", "Hello John!", "01W4FFL35P4NC4K35INBOUND01")
    assert extract_report(SINCH, tree_of("sinch-recipient-delivery-report.json")) == Report(
        "{batch_id}", DELIVERED, "Delivered: 0")


# ---------------------------------------------------------------------------------
# HTTP layer
# ---------------------------------------------------------------------------------


class Sinks:
    """Fake accept() and report(): they record the calls and hand back Deferreds."""

    def __init__(self):
        self.accepts = []
        self.reports = []

    def accept(self, messages):
        d = defer.Deferred()
        self.accepts.append((messages, d))
        return d

    def report(self, provider_id, status, detail, interface=""):
        d = defer.Deferred()
        self.reports.append(((provider_id, status, detail), d))
        return d

    @property
    def messages(self):
        return [m for ms, _ in self.accepts for m in ms]

    @property
    def report_calls(self):
        return [call for call, _ in self.reports]

    def fire(self):
        """Commit everything pending: new messages, known provider ids."""
        for messages, d in self.accepts:
            if not d.called:
                d.callback([True] * len(messages))
        for (provider_id, _, _), d in self.reports:
            if not d.called:
                d.callback("our-id-of-" + provider_id)


class Hook:
    def __init__(self, *interfaces, report=True, **settings):
        if len(interfaces) == 1:
            settings.setdefault("default", interfaces[0])
            settings.setdefault("interfaces", interfaces)
        else:
            settings.setdefault("interfaces", interfaces)
            settings.setdefault("url_path_indexed", True)
        self.sinks = Sinks()
        self.resource = WebhookResource(
            InboundSettings(**settings),
            self.sinks.accept,
            report=self.sinks.report if report else None,
            now=lambda: NOW,
        )
        self.site = make_site(self.resource, reactor=Clock())

    def send(self, raw, peer=PEER):
        conn = Conn(self.site, peer)
        conn.send(raw)
        return conn

    def roundtrip(self, raw, fire=True, peer=PEER):
        conn = self.send(raw, peer)
        if fire:
            if self.sinks.accepts or self.sinks.reports:
                assert conn.transport.value() == b""  # nothing before the commit
            self.sinks.fire()
        return conn.response()


def post(name, path="/", headers=(), body=None):
    body = fixture(name) if body is None else body
    return http_request(path=path, body=body, ctype=FORM if name.endswith(".txt") else JSON,
                        headers=headers)


def test_telnyx_message_received():
    hook = Hook(TELNYX)
    resp = hook.roundtrip(post("telnyx-message-received.json"))
    assert (resp.status, resp.body) == (200, b'{"ok": true}')
    assert resp.header("content-type") == "application/json"
    [(messages, _)] = hook.sinks.accepts
    [msg] = messages
    assert (msg.recipient, msg.sender, msg.body) == ("+1773005000", "+1312500000", "Hello from Telnyx!")
    assert msg.provider_id == "84cca175-9755-4859-b67f-4730d7f58aa3"
    assert msg.dedupe_key == "telnyx\x1f84cca175-9755-4859-b67f-4730d7f58aa3"
    assert hook.sinks.reports == []


def test_telnyx_message_finalized_is_a_report_answered_after_it_is_recorded():
    hook = Hook(TELNYX)
    conn = hook.send(post("telnyx-message-finalized.json"))
    assert hook.sinks.accepts == []  # a report never becomes a message (or a call file)
    assert hook.sinks.report_calls == [("ac012cbf-5e09-46af-a69a-7c0e2d90993c", DELIVERED, "delivered")]
    assert conn.transport.value() == b""
    hook.sinks.reports[0][1].callback("0123")
    resp = conn.response()
    assert (resp.status, resp.body) == (200, b'{"ok": true}')
    assert hook.resource.reports == {DELIVERED: 1}


def test_other_event_types_are_acknowledged_and_counted(events):
    hook = Hook(TELNYX)
    body = fixture("telnyx-message-finalized.json").replace(b"message.finalized", b"message.sent")
    resp = hook.roundtrip(post("x.json", body=body), fire=False)
    assert (resp.status, resp.body) == (200, b'{"ok": true}')
    assert hook.sinks.accepts == [] and hook.sinks.reports == []
    assert hook.resource.ignored == {"matches neither msg_filter nor dlr_filter": 1}
    [entry] = hook.resource.metrics.recent(IGNORED_EVENTS)
    assert entry["time"] == NOW and entry["source"] == "203.0.113.5" and entry["path"] == "/"
    assert hook.resource.refusals == {}
    [event] = [e for e in events if "ignored an event" in e.get("log_format", "")]
    assert "Hello there" not in repr(event)


def test_bandwidth_batch_one_accept_call_and_reports():
    hook = Hook(BANDWIDTH)
    batch = []
    for name in ("bandwidth-message-received.json", "bandwidth-message-delivered.json",
                 "bandwidth-message-failed.json"):
        batch.extend(json.loads(fixture(name)))
    conn = hook.send(post("x.json", body=json.dumps(batch, indent=1).encode()))
    [(messages, accept)] = hook.sinks.accepts  # all messages of the request: one commit
    [msg] = messages
    assert (msg.recipient, msg.sender) == ("+12345678902", "+12345678901")
    assert msg.body == (
        "Hey, check this out!\n\n"
        "https://messaging.bandwidth.com/api/v2/users/{userId}/media/14762070468292kw2fuqty55yp2b2/0/bw.png"
    )
    assert msg.provider_id == "14762070468292kw2fuqty55yp2b2"
    assert hook.sinks.report_calls == [
        ("14762070468292kw2fuqty55yp2b2", DELIVERED, "message-delivered: ok"),
        ("14762070468292kw2fuqty55yp2b2", FAILED, "message-failed: forbidden to country"),
    ]
    # The answer waits for the commit and for every report.
    accept.callback([True])
    hook.sinks.reports[0][1].callback("a")
    assert conn.transport.value() == b""
    hook.sinks.reports[1][1].callback(None)  # no message of ours has that id
    resp = conn.response()
    assert resp.status == 200 and resp.body == b""
    assert resp.header("content-type") == "text/html; charset=UTF-8"  # resp_type default
    assert hook.resource.reports == {DELIVERED: 1, "unknown": 1}


@pytest.mark.parametrize("failing", ["accept", "report"])
def test_batch_store_failure_is_503_with_retry_after(failing, events):
    hook = Hook(BANDWIDTH)
    batch = json.loads(fixture("bandwidth-message-received.json")) + json.loads(
        fixture("bandwidth-message-delivered.json"))
    conn = hook.send(post("x.json", body=json.dumps(batch).encode()))
    [(_, accept)] = hook.sinks.accepts
    [(_, report)] = hook.sinks.reports
    if failing == "accept":
        accept.errback(Failure(OSError("disk full")))
        report.callback("x")
    else:
        accept.callback([True])
        report.errback(Failure(OSError("disk full")))
    resp = conn.response()
    assert resp.status == 503 and resp.header("retry-after") == "30"
    assert hook.resource.refusals == {"store_failed": 1}
    assert [e for e in events if e.get("log_failure") is not None]
    assert not any("check this out" in repr(e) for e in events)


def test_batch_with_a_bad_event_takes_the_others():
    hook = Hook(BANDWIDTH)
    good = json.loads(fixture("bandwidth-message-received.json"))[0]
    bad = json.loads(json.dumps(good))
    bad["message"]["from"] = "+1501\nApplication: System"
    resp = hook.roundtrip(post("x.json", body=json.dumps([bad, good]).encode()))
    assert resp.status == 200
    assert [m.sender for m in hook.sinks.messages] == ["+12345678901"]
    assert hook.resource.refusals == {"bad_request": 1}
    [refusal] = hook.resource.recent_refusals
    assert refusal["status"] == 400 and "one event of 2" in refusal["reason"]
    assert "\n" not in refusal["reason"]
    # Nothing takeable: the whole request is refused, nothing stored.
    hook = Hook(BANDWIDTH)
    resp = hook.roundtrip(post("x.json", body=json.dumps([bad, bad]).encode()))
    assert resp.status == 400 and resp.body.startswith(b"unsafe value: ")
    assert b"(and 1 more events)" in resp.body
    assert hook.sinks.accepts == []


def test_sinch_mo_and_delivery_report():
    hook = Hook(SINCH)
    resp = hook.roundtrip(post("sinch-mo-text.json"))
    assert resp.status == 200
    [msg] = hook.sinks.messages
    assert (msg.recipient, msg.sender, msg.body) == ("12017777777", "12015555555", "Hello John!")
    resp = hook.roundtrip(post("sinch-recipient-delivery-report.json"))
    assert resp.status == 200
    assert hook.sinks.report_calls == [("{batch_id}", DELIVERED, "Delivered: 0")]
    assert len(hook.sinks.accepts) == 1


def test_twilio_inbound_and_status_callbacks_on_one_url():
    hook = Hook(TWILIO)
    resp = hook.roundtrip(post("twilio-inbound-message.txt"))
    assert (resp.status, resp.body) == (200, b"<Response></Response>")
    assert resp.header("content-type") == "text/xml"
    [msg] = hook.sinks.messages
    assert (msg.recipient, msg.sender) == ("+15558675310", "+15017122661")
    body, _, links = msg.body.partition("\n\n")
    assert body == "Ahoy! Pictures attached."
    assert links.split("\n") == [
        "https://api.twilio.com/2010-04-01/Accounts/ACXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXX/Messages/"
        f"SM1f0e8ae6ade43cb3c0ce4525424e404f/Media/ME{i}" for i in range(2)
    ]
    hook.roundtrip(post("twilio-status-delivered.txt"))
    hook.roundtrip(post("twilio-status-undelivered.txt"))
    assert hook.sinks.report_calls == [
        ("SM2f6e6a9e1e9b4c1f8c8a6b0f3d1e2a7b", DELIVERED, "delivered"),
        ("SM2f6e6a9e1e9b4c1f8c8a6b0f3d1e2a7b", FAILED, "undelivered: 30003"),
    ]
    assert len(hook.sinks.accepts) == 1
    # Intermediate statuses are acknowledged and left alone.
    body = fixture("twilio-status-delivered.txt").replace(b"delivered", b"sending")
    resp = hook.roundtrip(post("x.txt", body=body), fire=False)
    assert (resp.status, resp.body) == (200, b"<Response></Response>")
    assert hook.resource.ignored == {"intermediate delivery status": 1}
    assert hook.resource.metrics.recent(IGNORED_EVENTS)[0]["detail"] == "sending"


def test_reports_without_a_report_sink_are_ignored():
    hook = Hook(TWILIO, report=False)
    resp = hook.roundtrip(post("twilio-status-delivered.txt"), fire=False)
    assert resp.status == 200
    assert hook.resource.ignored == {"delivery reports are not taken here": 1}


def test_client_gone_before_the_report_is_recorded(events):
    hook = Hook(TWILIO)
    conn = hook.send(post("twilio-status-delivered.txt"))
    conn.lose()
    hook.sinks.fire()
    assert conn.transport.value() == b""
    assert not [e for e in events if e.get("log_failure") is not None]
    assert [e for e in events if "went away" in e.get("log_format", "")]


def test_num_country_refuses_numbers_that_cannot_be(events):
    hook = Hook(InboundInterface(**{**TELNYX.__dict__, "num_country": "US"}))
    resp = hook.roundtrip(post("telnyx-message-received.json"))
    # The documented example's numbers are one digit short: refused, with the reason.
    assert resp.status == 400
    assert resp.body.startswith(b"recipient '+1773005000' is too short")
    assert hook.sinks.accepts == []
    hook = Hook(InboundInterface(**{**BANDWIDTH.__dict__, "num_country": "US"}))
    resp = hook.roundtrip(post("bandwidth-message-received.json"))
    assert resp.status == 200
    assert hook.sinks.messages[0].recipient == "+12345678902"


def test_val_to_and_val_urldecode_over_http():
    iface = InboundInterface(key_from="From", key_body="Message", val_to="100",
                             val_urldecode=("body",))
    hook = Hook(iface)
    body = json.dumps({"From": "13135551234", "Message": "Hello%20there%21"}).encode()
    resp = hook.roundtrip(http_request(body=body, ctype=JSON))
    assert resp.status == 200
    [msg] = hook.sinks.messages
    assert (msg.recipient, msg.sender, msg.body) == ("100", "13135551234", "Hello there!")


def test_plain_form_webhook_keeps_its_single_commit_path():
    hook = Hook(InboundInterface(resp_ack="ok", resp_type="text/plain"))
    resp = hook.roundtrip(http_request(body=b"To=1&From=2&Body=x"))
    assert (resp.status, resp.body, resp.header("content-type")) == (200, b"ok", "text/plain")
    assert len(hook.sinks.accepts) == 1 and hook.resource.ignored == {}


# -- signed webhooks -------------------------------------------------------------------


def twilio_sign(token, url, params):
    data = url + "".join(k + v for k, v in sorted(params))
    return base64.b64encode(hmac.new(token.encode(), data.encode(), hashlib.sha1).digest()).decode()


TOKEN = "twilio-auth-token-0123456789abcdef"


def signed_twilio(**overrides):
    return InboundInterface(**{**TWILIO.__dict__, "sig_method": "twilio", "sig_secret": TOKEN,
                               "sig_url": "https://pbx.example.com/sms", **overrides})


def test_twilio_signed_behind_a_reverse_proxy(events):
    hook = Hook(signed_twilio())
    body = fixture("twilio-inbound-message.txt")
    from urllib.parse import parse_qsl

    params = parse_qsl(body.decode(), keep_blank_values=True)
    # Twilio called https://pbx.example.com/sms/twilio?x=1; the proxy forwarded the
    # request to us as /twilio?x=1 on another host and port.
    signature = twilio_sign(TOKEN, "https://pbx.example.com/sms/twilio?x=1", params)
    raw = http_request(path="/twilio?x=1", body=body, headers=[f"X-Twilio-Signature: {signature}"])
    assert b"Host: pbx.example\r\n" in raw
    resp = hook.roundtrip(raw)
    assert resp.status == 200 and len(hook.sinks.messages) == 1

    # The same request with one field changed: refused before anything is stored.
    tampered = body.replace(b"Ahoy", b"Ahem")
    resp = hook.roundtrip(http_request(path="/twilio?x=1", body=tampered,
                                       headers=[f"X-Twilio-Signature: {signature}"]), fire=False)
    assert resp.status == 403
    assert resp.body == b"bad signature: X-Twilio-Signature does not match\n"
    resp = hook.roundtrip(http_request(path="/twilio?x=1", body=body), fire=False)
    assert resp.status == 403 and b"no X-Twilio-Signature header" in resp.body
    assert len(hook.sinks.accepts) == 1
    assert hook.resource.refusals == {"bad_signature": 2}
    refusal = hook.resource.recent_refusals[0]
    assert refusal["kind"] == "bad_signature" and refusal["status"] == 403
    assert refusal["path"] == "/twilio" and refusal["source"] == "203.0.113.5"
    logged = repr([e for e in events if e.get("kind") == "bad_signature"])
    assert "does not match" in logged
    assert TOKEN not in logged and "Ahem" not in logged


def test_signature_without_sig_url_uses_the_request_url():
    hook = Hook(signed_twilio(sig_url=None))
    body = b"To=%2B15558675310&From=%2B15017122661&Body=hi&SmsStatus=received&MessageSid=SM9"
    from urllib.parse import parse_qsl

    signature = twilio_sign(TOKEN, "http://pbx.example/", parse_qsl(body.decode()))
    resp = hook.roundtrip(http_request(body=body, headers=[f"X-Twilio-Signature: {signature}"]))
    assert resp.status == 200


def test_telnyx_signed_over_http():
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    private = Ed25519PrivateKey.generate()
    public = base64.b64encode(
        private.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)).decode()
    hook = Hook(InboundInterface(**{**TELNYX.__dict__, "sig_method": "telnyx",
                                    "sig_secret": public}))
    body = fixture("telnyx-message-finalized.json")
    stamp = str(int(NOW) - 10)
    signature = base64.b64encode(private.sign(stamp.encode() + b"|" + body)).decode()
    headers = [f"telnyx-signature-ed25519: {signature}", f"telnyx-timestamp: {stamp}"]
    resp = hook.roundtrip(post("telnyx-message-finalized.json", headers=headers))
    assert resp.status == 200 and len(hook.sinks.reports) == 1
    old = [f"telnyx-signature-ed25519: {signature}", f"telnyx-timestamp: {stamp}"]
    hook.resource._now = lambda: NOW + 3600  # the same request, replayed an hour later
    resp = hook.roundtrip(post("telnyx-message-finalized.json", headers=old), fire=False)
    assert resp.status == 403 and b"off our clock" in resp.body
    assert len(hook.sinks.reports) == 1


def test_vonage_signed_jwt_over_http():
    secret = "vonage-signature-secret-0123456789"
    hook = Hook(InboundInterface(key_to="to", key_from="from", key_body="text",
                                 sig_method="vonage", sig_secret=secret))
    body = b'{"channel":"sms","to":"447700900000","from":"447700900001","text":"Hello"}'
    token = signatures.vonage_jwt(secret, {"iat": int(NOW),
                                           "payload_hash": hashlib.sha256(body).hexdigest()})
    resp = hook.roundtrip(http_request(body=body, ctype=JSON,
                                       headers=[f"Authorization: Bearer {token}"]))
    assert resp.status == 200 and hook.sinks.messages[0].body == "Hello"
    resp = hook.roundtrip(http_request(body=body.replace(b"Hello", b"Hellp"), ctype=JSON,
                                       headers=[f"Authorization: Bearer {token}"]), fire=False)
    assert resp.status == 403 and b"payload_hash" in resp.body


def test_plivo_signed_over_http():
    token = "plivo-auth-token"
    hook = Hook(InboundInterface(key_to="To", key_from="From", key_body="Text",
                                 sig_method="plivo", sig_secret=token,
                                 sig_url="https://pbx.example.com"))
    body = urlencode({"To": "15558675310", "From": "15017122661", "Text": "Hi",
                      "Type": "sms", "MessageUUID": "u1"}).encode()
    nonce = "123456789"
    signed = ("https://pbx.example.com/plivo?From15017122661MessageUUIDu1TextHiTo15558675310"
              "Typesms." + nonce)
    signature = base64.b64encode(hmac.new(token.encode(), signed.encode(), hashlib.sha256).digest())
    headers = [f"X-Plivo-Signature-V3: {signature.decode()}", f"X-Plivo-Signature-V3-Nonce: {nonce}"]
    resp = hook.roundtrip(http_request(path="/plivo", body=body, headers=headers))
    assert resp.status == 200
    resp = hook.roundtrip(http_request(path="/plivo", body=body.replace(b"Hi", b"Ho"),
                                       headers=headers), fire=False)
    assert resp.status == 403


def test_zadarma_signed_sms_and_unsigned_echo():
    secret = "zadarma-api-secret"
    hook = Hook(InboundInterface(key_to="caller_did", key_from="caller_id", key_body="text",
                                 key_echo="zd_echo", msg_filter="event=SMS",
                                 sig_method="zadarma", sig_secret=secret))
    # Zadarma checks the URL with an unsigned echo request: answered before verification.
    resp = hook.roundtrip(http_request("GET", "/?zd_echo=abc"), fire=False)
    assert (resp.status, resp.body) == (200, b"abc")
    result = json.dumps({"caller_id": "+79001234567", "caller_did": "74951234567",
                         "text": "Привет"}, ensure_ascii=False)
    mac = hmac.new(secret.encode(), result.encode(), hashlib.sha1).hexdigest().encode()
    body = b"event=SMS&result=" + quote(result).encode()
    resp = hook.roundtrip(http_request(
        body=body, headers=[f"Signature: {base64.b64encode(mac).decode()}"]))
    assert resp.status == 200
    [msg] = hook.sinks.messages
    assert (msg.recipient, msg.sender, msg.body) == ("74951234567", "+79001234567", "Привет")
    resp = hook.roundtrip(http_request(body=body), fire=False)
    assert resp.status == 403 and hook.resource.refusals == {"bad_signature": 1}


def test_sig_method_without_secret_is_refused_not_stored():
    hook = Hook(InboundInterface(sig_method="twilio"))
    resp = hook.roundtrip(http_request(body=b"To=1&From=2"), fire=False)
    assert resp.status == 403 and b"sig_secret is not" in resp.body
    assert hook.sinks.accepts == []


def test_head_of_an_ignored_event():
    hook = Hook(TWILIO)
    conn = hook.send(http_request("HEAD", "/?MessageStatus=queued&MessageSid=SM1"))
    resp, rest = parse_response(conn.take(), head=True)
    assert resp.status == 200 and rest == b""
    assert resp.header("content-length") == str(len(b"<Response></Response>"))
