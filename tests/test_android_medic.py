"""The SMS Gateway app's protocol (websmsd.android.medic) and Basic auth (basicauth).

Requests come from tests/phonepeers.MedicPhone, written from the notes on the app's code
(org.json bodies, the percent-encoded Basic password, the poll's re-sending after an
error).  The last part runs the phone over a real loopback socket against a test server
built on the pure functions, the way the lead's resource will use them.
"""

from __future__ import annotations

import base64
import gzip
import http.server
import json
import random
import threading

import pytest

from phonepeers import MedicPhone, Reply, android_json, android_uri_encode, send
from websmsd.android import medic as m
from websmsd.android.basicauth import basic_header, check_basic, parse_basic

URL = "http://127.0.0.1:9/gw"


def body_of(messages=(), updates=()):
    return MedicPhone(URL).poll_request(list(messages), list(updates)).body


MSG = {"id": "5b2c1a9e-0d1f-4e0b-9f7a-3c1d2e4f5a6b", "from": "+46701234567",
       "content": "Hej / då 😀\nrad två", "sms_sent": 1700000000000, "sms_received": 1700000001234}


# --------------------------------------------------------------------------------------
# Basic auth
# --------------------------------------------------------------------------------------


def test_parse_basic():
    assert parse_basic("Basic " + base64.b64encode(b"u:p:q").decode()) == ("u", "p:q")
    assert parse_basic(b"basic   " + base64.b64encode(b"u:")) == ("u", "")
    for bad in (None, "", "Bearer x", "Basic", "Basic !!!", "Basic " + base64.b64encode(b"nocolon").decode(),
                "Basic " + base64.b64encode(b"\xff:x").decode(), "Basic " + "A" * 5000, "Basic ü"):
        assert parse_basic(bad) is None
    assert parse_basic("Basic " + base64.b64encode(b"\xe4:\xff").decode(), charset="latin-1") == ("ä", "ÿ")


@pytest.mark.parametrize("password", ["pa$s", "p@ss:w0rd#/?", "pä ss", "plain", "100%", "a+b=c&d"])
def test_medic_password_as_the_app_sends_it(password):
    phone = MedicPhone(f"http://gw:{password}@127.0.0.1:9/path")
    header = phone.poll_request([], []).header("Authorization")
    user, sent = parse_basic(header, charset="latin-1")
    assert (user, sent) == ("gw", android_uri_encode(password))
    assert m.check_credentials(header, "gw", password)
    assert not m.check_credentials(header, "gw", password + "x")
    assert not m.check_credentials(header, "gx", password)


def test_medic_password_sent_plain_by_another_client_also_passes():
    assert m.check_credentials(basic_header("gw", "pa$s", charset="latin-1"), "gw", "pa$s")
    assert m.check_credentials(basic_header("gw", "pa%24s", charset="latin-1"), "gw", "pa$s")
    # A literal password that looks percent-encoded is compared as sent too.
    assert m.check_credentials(basic_header("gw", "pa%24s", charset="latin-1"), "gw", "pa%24s")


def test_check_basic_without_percent_decoding():
    header = basic_header("u", "pa%24s")
    assert check_basic(header, "u", "pa%24s")
    assert not check_basic(header, "u", "pa$s")
    assert not check_basic(None, "u", "x")
    assert not check_basic("Basic " + base64.b64encode(b"u:%ff").decode(), "u", "\ufffd", percent_encoded=True)


def test_uri_encode_table():
    assert android_uri_encode("aZ9_-!.~'()* $@:/ä") == "aZ9_-!.~'()*%20%24%40%3A%2F%C3%A4"


# --------------------------------------------------------------------------------------
# Routing and the settings check
# --------------------------------------------------------------------------------------


def test_classify():
    assert m.classify("GET") == m.HANDSHAKE and m.classify(b"POST") == m.POLL
    refusal = m.classify("PUT")
    assert refusal.status == 405


def test_handshake_answer_passes_the_app_check():
    a = m.handshake_answer()
    assert (a.status, a.body, a.content_type) == (200, b'{"medic-gateway":true}', "application/json; charset=utf-8")


def test_unauthorised_answer():
    a = m.unauthorised_answer()
    assert a.status == 401 and a.header("www-authenticate").startswith("Basic realm=")
    assert json.loads(a.body) == {"error": True, "message": "unauthorised"}


# --------------------------------------------------------------------------------------
# The poll body
# --------------------------------------------------------------------------------------


def test_poll_as_the_app_sends_it():
    request = MedicPhone(URL).poll_request([MSG], [
        {"id": "0000018f00000001", "status": "UNSENT"},
        {"id": "0000018f00000002", "status": "FAILED", "reason": "generic; errorCode=7"},
    ])
    assert request.header("Content-Type") == "application/json"
    assert request.header("Accept") == "application/json" and request.header("Cache-Control") == "no-cache"
    assert request.header("User-Agent").endswith(" medic.gateway.alert.generic/1.8.0")
    assert b"\\/" in request.body  # org.json escapes the slash
    poll = m.parse_poll(request.body, request.header("Content-Encoding"))
    assert poll == m.Poll(
        (m.IncomingSMS(MSG["id"], "+46701234567", "Hej / då 😀\nrad två", 1700000000000, 1700000001234),),
        (m.StatusUpdate("0000018f00000001", "UNSENT"),
         m.StatusUpdate("0000018f00000002", "FAILED", "generic; errorCode=7")),
    )
    assert poll.acknowledged_ids == {"0000018f00000001", "0000018f00000002"}


def test_empty_poll_and_absent_or_null_arrays():
    assert m.parse_poll(body_of()) == m.Poll((), ())
    assert m.parse_poll(b"{}") == m.Poll((), ())
    assert m.parse_poll(b'{"messages":null,"updates":null}') == m.Poll((), ())


def test_from_absent_and_zero_timestamps():
    body = android_json({"messages": [{"id": "a", "content": "x", "sms_sent": 0, "sms_received": 5}]}).encode()
    assert m.parse_poll(body).messages[0] == m.IncomingSMS("a", "", "x", None, 5)


def test_unknown_status_is_kept_not_refused():
    poll = m.parse_poll(b'{"messages":[],"updates":[{"id":"a","status":"QUEUED_LATER"}]}')
    assert poll.updates == (m.StatusUpdate("a", "QUEUED_LATER"),)


def test_gzip_request_body_is_accepted_within_bounds():
    raw = body_of([MSG])
    assert m.parse_poll(gzip.compress(raw), "gzip").messages[0].id == MSG["id"]
    assert m.parse_poll(gzip.compress(raw), b"x-gzip").messages[0].id == MSG["id"]
    bomb = gzip.compress(b'{"messages":[' + b" " * (m.MAX_INFLATED + 10) + b"]}")
    assert len(bomb) < m.MAX_BODY and m.parse_poll(bomb, "gzip").status == 413
    assert m.parse_poll(gzip.compress(raw)[:-12], "gzip").status == 400
    assert m.parse_poll(b"not gzip", "gzip").status == 400
    assert m.parse_poll(raw, "br").status == 415


def _msg(**changes):
    item = dict(MSG)
    item.update(changes)
    return {k: v for k, v in item.items() if v is not ...}


@pytest.mark.parametrize("body,status", [
    (b"", 400), (b"[]", 400), (b"{", 400), (b'{"messages":{}}', 400), (b'{"updates":"x"}', 400),
    (b"\xff\xfe{}", 400),
    (json.dumps({"messages": [_msg(id=...)]}).encode(), 400),
    (json.dumps({"messages": [_msg(id="")]}).encode(), 400),
    (json.dumps({"messages": [_msg(id="a\nb")]}).encode(), 400),
    (json.dumps({"messages": [_msg(content=...)]}).encode(), 400),
    (json.dumps({"messages": [_msg(content=5)]}).encode(), 400),
    (json.dumps({"messages": [_msg(**{"from": "+1\r\nX: y"})]}).encode(), 400),
    (json.dumps({"messages": [_msg(**{"from": 46701234567})]}).encode(), 400),
    (json.dumps({"messages": [_msg(sms_sent="1700000000000")]}).encode(), 400),
    (json.dumps({"messages": [_msg(sms_sent=-1)]}).encode(), 400),
    (json.dumps({"messages": [_msg(sms_sent=1.5)]}).encode(), 400),
    (json.dumps({"messages": [_msg(sms_received=True)]}).encode(), 400),
    (json.dumps({"messages": [_msg(sms_received=10 ** 20)]}).encode(), 400),
    (b'{"messages":[{"id":"a","content":"\\udc00"}]}', 400),
    (json.dumps({"messages": ["x"]}).encode(), 400),
    (json.dumps({"updates": [{"id": "a"}]}).encode(), 400),
    (json.dumps({"updates": [{"status": "SENT"}]}).encode(), 400),
    (json.dumps({"updates": [{"id": "a", "status": "SE NT"}]}).encode(), 400),
    (json.dumps({"updates": [{"id": "a", "status": 3}]}).encode(), 400),
    (json.dumps({"updates": [{"id": "a", "status": "FAILED", "reason": 7}]}).encode(), 400),
    (json.dumps({"updates": [[]]}).encode(), 400),
    (json.dumps({"messages": [MSG] * (m.MAX_MESSAGES + 1)}).encode(), 413),
    (json.dumps({"updates": [{"id": "a", "status": "SENT"}] * (m.MAX_UPDATES + 1)}).encode(), 413),
    (b"[" * 200000, 400),
])
def test_malformed_poll_is_refused_whole(body, status):
    result = m.parse_poll(body)
    assert isinstance(result, m.Refusal) and result.status == status, result
    a = m.refusal_answer(result)
    assert not 200 <= a.status < 300 and json.loads(a.body)["error"] is True


def test_one_bad_message_refuses_the_good_ones_too():
    body = json.dumps({"messages": [MSG, _msg(id=7)], "updates": []}).encode()
    assert isinstance(m.parse_poll(body), m.Refusal)


def test_oversize_body():
    assert m.parse_poll(b" " * (m.MAX_BODY + 1)).status == 413


def test_reason_is_one_line_and_bounded():
    body = json.dumps({"updates": [{"id": "a", "status": "FAILED", "reason": "Delivery failed:\n" + "x" * 5000}]})
    reason = m.parse_poll(body.encode()).updates[0].reason
    assert "\n" not in reason and len(reason) <= m.MAX_REASON


def test_truncations_and_garbage_give_values():
    raw = body_of([MSG], [{"id": "x", "status": "SENT"}])
    for n in range(len(raw) + 1):
        assert isinstance(m.parse_poll(raw[:n]), (m.Poll, m.Refusal))
    rng = random.Random(7)
    for _ in range(2000):
        junk = bytes(rng.choice(b'{}[]":,0123456789abcdeIDmsgupt \\u\n\xff') for _ in range(rng.randint(0, 60)))
        assert isinstance(m.parse_poll(junk, rng.choice([None, "gzip", "identity"])), (m.Poll, m.Refusal))


# --------------------------------------------------------------------------------------
# The answer
# --------------------------------------------------------------------------------------

OUT = [m.OutgoingSMS("0000018f00000001", "+46701234567", "Hello 😀"),
       m.OutgoingSMS("0000018f00000002", "+46 70-765 43 21", "x" * 300)]


def test_poll_answer_plain():
    a = m.poll_answer(OUT[:1])
    assert a.status == 200 and a.header("Content-Encoding") is None
    assert a.body == b'{"messages":[{"id":"0000018f00000001","to":"+46701234567","content":"Hello \\ud83d\\ude00"}]}'


def test_poll_answer_empty_is_still_a_json_object():
    a = m.poll_answer([], "gzip")
    assert a.status == 200 and json.loads(a.body) == {"messages": []}


@pytest.mark.parametrize("accept,gzipped", [
    ("gzip", True), ("gzip, deflate", True), ("deflate, GZIP;q=0.5", True), (b"x-gzip", True),
    ("gzip;q=0", False), ("identity", False), (None, False), ("", False), ("gzipx", False),
    ("gzip;q=zero", False),
])
def test_poll_answer_gzip_only_when_asked(accept, gzipped):
    a = m.poll_answer(OUT, accept)
    assert (a.header("Content-Encoding") == "gzip") is gzipped
    body = gzip.decompress(a.body) if gzipped else a.body
    assert [x["id"] for x in json.loads(body)["messages"]] == [o.id for o in OUT]
    assert a.header("Vary") == "Accept-Encoding"


def test_poll_answer_is_deterministic():
    assert m.poll_answer(OUT, "gzip").body == m.poll_answer(OUT, "gzip").body


@pytest.mark.parametrize("bad", [
    m.OutgoingSMS("", "+1", "x"), m.OutgoingSMS("a\n", "+1", "x"), m.OutgoingSMS("a", "", "x"),
    m.OutgoingSMS("a", "+1\n", "x"), m.OutgoingSMS("a", "+1", ""), m.OutgoingSMS("a", "+1", "\ud800"),
])
def test_poll_answer_refuses_unusable_messages(bad):
    with pytest.raises(ValueError):
        m.poll_answer([bad])


# --------------------------------------------------------------------------------------
# Status updates
# --------------------------------------------------------------------------------------

U, P, S, D, F = m.UNSENT, m.PENDING, m.SENT, m.DELIVERED, m.FAILED


@pytest.mark.parametrize("current,reported,expected", [
    (None, U, U), (None, P, P), (None, S, S), (None, D, D), (None, F, F),
    (U, P, P), (P, S, S), (S, D, D), (U, D, D), (P, D, D),  # forward, DELIVERED without SENT
    (U, U, None), (S, S, None), (D, D, None), (F, F, None),  # repeats
    (S, P, None), (S, U, None), (P, U, None), (D, S, None), (D, P, None), (D, U, None),  # never back
    (D, F, None),  # DELIVERED is final
    (S, F, None),  # the app never reports FAILED after SENT
    (U, F, F), (P, F, F),
    (F, U, U), (F, P, P), (F, S, S), (F, D, D),  # the phone's user pressed Retry
    (None, "LATER", None), (S, "LATER", None), ("weird", S, S),
])
def test_next_state(current, reported, expected):
    assert m.next_state(current, reported) == expected


def test_next_state_never_goes_backwards_from_any_sequence():
    rng = random.Random(3)
    rank = {U: 0, P: 1, S: 2, D: 3}
    for _ in range(2000):
        state = None
        for reported in rng.choices([U, P, S, D, F], k=8):
            new = m.next_state(state, reported)
            if new is not None:
                if state == D:
                    pytest.fail("DELIVERED changed")
                if state in rank and new in rank:
                    assert rank[new] > rank[state]
                state = new


def test_fold_updates_in_order_with_unknown_ids():
    updates = [m.StatusUpdate("a", U), m.StatusUpdate("a", P), m.StatusUpdate("a", F, "radio-off"),
               m.StatusUpdate("b", D), m.StatusUpdate("b", S), m.StatusUpdate("zz", S)]
    assert m.fold_updates({"a": None, "b": S}, updates) == {"a": (F, "radio-off"), "b": (D, None)}
    assert m.fold_updates({"a": D}, updates) == {}


def test_lifecycle_names():
    assert m.LIFECYCLE == {U: "sending", P: "sending", S: "sent", D: "delivered", F: "failed"}


# --------------------------------------------------------------------------------------
# The phone over a real socket, against a test server built on the pure functions
# --------------------------------------------------------------------------------------


class GatewayServer:
    def __init__(self, user, password):
        self.user, self.password = user, password
        self.received = {}  # id -> IncomingSMS
        self.outbox = {o.id: o for o in OUT}
        self.states = {o.id: None for o in OUT}
        self.reasons = {}
        self.fail_next = 0
        self.requests = []
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def handle_any(self):
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                server.requests.append((self.command, self.path, dict(self.headers), body))
                a = server.answer(self.command, self.headers, body)
                self.send_response(a.status)
                self.send_header("Content-Type", a.content_type)
                for k, v in a.headers:
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(a.body)))
                self.end_headers()
                self.wfile.write(a.body)

            do_GET = do_POST = do_PUT = handle_any

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.httpd.server_address[1]
        threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True).start()

    def answer(self, method, headers, body):
        kind = m.classify(method)
        if isinstance(kind, m.Refusal):
            return m.refusal_answer(kind)
        if not m.check_credentials(headers.get("Authorization"), self.user, self.password):
            return m.unauthorised_answer()
        if kind == m.HANDSHAKE:
            return m.handshake_answer()
        poll = m.parse_poll(body, headers.get("Content-Encoding"))
        if isinstance(poll, m.Refusal):
            return m.refusal_answer(poll)
        if self.fail_next:  # the store could not commit
            self.fail_next -= 1
            return m.error_answer(503, "store unavailable")
        for sms in poll.messages:
            self.received.setdefault(sms.id, sms)
        for msg_id, (state, reason) in m.fold_updates(self.states, poll.updates).items():
            self.states[msg_id] = state
            self.reasons[msg_id] = reason
        offer = [o for i, o in self.outbox.items() if self.states[i] is None]
        return m.poll_answer(offer, headers.get("Accept-Encoding"))

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def gateway():
    srv = GatewayServer("gw", "pa$s wörd")
    yield srv
    srv.close()


def url(gateway, password="pa$s wörd"):
    return f"http://gw:{password}@127.0.0.1:{gateway.port}/medic?id=3&h=abc"


def test_settings_check(gateway):
    assert MedicPhone(url(gateway)).settings_check() == (True, "ok")
    assert MedicPhone(url(gateway, "nope")).settings_check() == (False, "unauthorised")
    method, path, headers, _ = gateway.requests[0]
    assert (method, path) == ("GET", "/medic?id=3&h=abc")


def test_full_exchange_with_gzip_retry_and_status_updates(gateway):
    phone = MedicPhone(url(gateway))
    sms_id = phone.receive_sms("+46701234567", "hello / 😀")
    gateway.fail_next = 1
    reply, _ = phone.poll()
    assert reply.status == 503 and phone.waiting and gateway.received == {}
    assert phone.last_error == "503: store unavailable"
    reply, _ = phone.poll()  # the same SMS again, now taken
    assert reply.status == 200 and reply.headers.get("content-encoding") == "gzip"
    assert gateway.received[sms_id].content == "hello / 😀" and not phone.waiting
    # The phone stored both SMS to send ("-" and spaces stripped) and queued UNSENT.
    assert phone.store["0000018f00000002"].to == "+46707654321"
    assert [u[1] for u in phone.updates] == ["UNSENT", "UNSENT"]
    phone.set_status("0000018f00000001", "PENDING")
    phone.set_status("0000018f00000001", "DELIVERED")
    phone.set_status("0000018f00000001", "SENT")  # late: must not win
    phone.set_status("0000018f00000002", "PENDING")
    phone.set_status("0000018f00000002", "FAILED", "destination.invalid")
    reply, _ = phone.poll()
    assert json.loads(reply.body if reply.headers.get("content-encoding") != "gzip"
                      else gzip.decompress(reply.body)) == {"messages": []}
    assert gateway.states == {"0000018f00000001": "DELIVERED", "0000018f00000002": "FAILED"}
    assert gateway.reasons["0000018f00000002"] == "destination.invalid"
    # Retry pressed on the phone: UNSENT again is taken.
    phone.set_status("0000018f00000002", "UNSENT")
    phone.poll()
    assert gateway.states["0000018f00000002"] == "UNSENT"


def test_updates_for_unknown_ids_are_acknowledged(gateway):
    reply = send(MedicPhone(url(gateway)).poll_request([], [{"id": "never-ours", "status": "SENT"}]))
    assert reply.status == 200 and isinstance(reply.json(), dict)


def test_malformed_poll_keeps_the_phone_data(gateway):
    bad = send(MedicPhone(url(gateway)).poll_request([{"id": "", "from": "+1", "content": "x"}], []))
    assert bad.status == 400 and bad.json()["error"] is True


def test_wrong_password_is_401_and_nothing_forwarded(gateway):
    phone = MedicPhone(url(gateway, "wrong"))
    phone.receive_sms("+1", "x")
    reply, _ = phone.poll()
    assert reply.status == 401 and phone.waiting and gateway.received == {}


def test_full_batch_means_poll_again(gateway):
    phone = MedicPhone(url(gateway))
    for i in range(12):
        phone.receive_sms("+1", f"n{i}")
    _, full = phone.poll()
    assert full and len(phone.waiting) == 2
    _, full = phone.poll()
    assert not full and len(gateway.received) == 12


def test_repeated_offer_is_not_sent_twice_by_the_phone(gateway):
    phone = MedicPhone(url(gateway))
    phone.poll()
    assert sorted(phone.store) == sorted(gateway.outbox)
    phone.set_status("0000018f00000001", "SENT")
    # websmsd lost track (say, a restore): it offers the message again.
    gateway.states["0000018f00000001"] = None
    gateway.states["0000018f00000002"] = None
    phone.updates.clear()
    phone.poll()
    assert len(phone.store) == 2  # not stored (or sent) twice...
    assert ("0000018f00000001", "SENT", None) in phone.updates  # ...its status re-reported
    phone.poll()
    assert gateway.states["0000018f00000001"] == "SENT"


def test_reply_helper_json():
    assert Reply(200, {}, b'{"a":1}').json() == {"a": 1}
