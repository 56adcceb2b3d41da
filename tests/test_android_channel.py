"""The Android channel layer (websmsd.android.service and the modules it wires), in-process.

Config: the issue's websms.conf loads as written; errors name file:line.  Then each
phone app against the real resources, the real dispatcher and an inline store on a
task.Clock: the requests are the apps' own (tests/phonepeers.py: SMSsyncPhone,
MedicPhone, written from the notes on the apps' code), put byte for byte into the
daemon's own HTTP site (make_site, its request class and limits) over a StringTransport,
and the apps' own logic judges the answers.  SMS Gateway for Android is FakeSMSGate
behind treq's StubTreq.
"""

from __future__ import annotations

import gzip
import json
from typing import Any, List, Optional

import pytest
from twisted.application.service import MultiService
from twisted.internet import defer, error as net_error, task
from twisted.internet.address import IPv4Address
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.web.resource import Resource

import phonepeers
from conftest import fired
from phonepeers import FakeSMSGate, MedicPhone, Reply, SMSsyncPhone, WireRequest
from websmsd.android import service as android_service
from websmsd.android import smsgate_client as gc
from websmsd.android import smsgate_inbox as gi
from websmsd.android.presence import parse_user_agent, safe_sender
from websmsd.android.smsgate_channel import SMSGateChannel
from websmsd.config import ConfigError, load, loads, report
from websmsd.dispatch import Dispatcher, RetryPolicy
from websmsd.http.board import ChannelBoard
from websmsd.http.site import WebhookRoot
from websmsd.http.twsite import make_site
from websmsd.message import DELIVERED, FAILED, IN, OUT, QUEUED, SENDING, SENT, Message
from websmsd.metrics import Metrics
from websmsd.service import Wiring
from websmsd.store import Store, StoreError

T0 = 1_775_000_000.0
POLICY = RetryPolicy(base=30, max_delay=300, max_attempts=4, max_age=86400)

EXAMPLE = """\
[smssync]
url_path [phone1] = /smssync/phone1   ; the Sync URL path, on the webhook listener
secret   [phone1] = s3cr3t
number   [phone1] = +254700000001     ; the phone's own number: MESSAGE(to) of its SMS

[smsgateway]
url_path [phone2] = /smsgateway/phone2
user     [phone2] = gw
password [phone2] = pa$s
number   [phone2] = +254700000002

[smsgate]                             ; SMS Gateway for Android, local server mode
url      [phone3] = http://192.168.1.50:8080
user     [phone3] = sms
password [phone3] = secret
number   [phone3] = +254700000003
poll     [phone3] = 5                 ; seconds
"""


# --------------------------------------------------------------------------------------
# Config
# --------------------------------------------------------------------------------------


def test_the_issues_example_loads_as_written(tmp_path):
    path = tmp_path / "websms.conf"
    path.write_text(EXAMPLE)
    settings = load(path)
    [p1] = settings.channels["smssync"].interfaces
    assert (p1.name, p1.url_path, p1.secret, p1.number, p1.own_number) == (
        "phone1", "/smssync/phone1", "s3cr3t", ("+254700000001",), "+254700000001")
    assert (p1.poll, p1.results_api, p1.instant_reply, p1.user) == (300.0, "auto", False, None)
    [p2] = settings.channels["smsgateway"].interfaces
    assert (p2.url_path, p2.user, p2.password, p2.number, p2.poll) == (
        "/smsgateway/phone2", "gw", "pa$s", ("+254700000002",), 60.0)
    [p3] = settings.channels["smsgate"].interfaces
    assert (p3.url, p3.user, p3.password, p3.number, p3.poll, p3.timeout) == (
        "http://192.168.1.50:8080", "sms", "secret", ("+254700000003",), 5.0, 30.0)
    assert (p3.sim, p3.delivery_report, p3.skip_validation) == (None, True, False)
    # Each phone is an interface WEBSMS_INDEX can name, owning its number for replies.
    assert [i for i in settings.interfaces() if i[1] != "itsp"] == [
        ("phone1", "smssync", ("+254700000001",), False),
        ("phone2", "smsgateway", ("+254700000002",), False),
        ("phone3", "smsgate", ("+254700000003",), False)]
    text = report(settings)
    assert "[smssync] interface 'phone1'" in text and "[smsgate] interface 'phone3'" in text
    for secret in ("s3cr3t", "pa$s", "= secret"):
        assert secret not in text
    assert text.count("****") >= 3


def test_routes_and_replies_reach_the_phones():
    from websmsd.routing import router_for

    settings = loads(EXAMPLE + "[route]\ndefault = phone3\n")
    router = router_for(settings)
    assert router.outbound("+15550100", "+1555", index="phone1").routes == ("smssync:phone1",)
    assert router.outbound("+15550100", "+254700000002").routes == (
        "smsgateway:phone2", "smsgate:phone3")
    assert router.outbound("+15550100", "+1555").routes == ("smsgate:phone3",)


def test_defaults_and_more_keys():
    settings = loads(
        "[smssync]\nsecret = x\nnumber [a] = \"+1 (202) 555-0100\"\nnumber [b] = +12025550101\n"
        "results_api [b] = yes\ninstant_reply [b] = \"yes\"\npoll [b] = 2m\n"
        "user [b] = u\npassword [b] = p\n"
        "[smsgate]\nurl = https://phone.lan:8443/\npassword = pw\nnumber = +46701234567\n"
        "sim = 2\ndelivery_report = no\nskip_validation = yes\ntimeout = 5s\n")
    a, b = settings.channels["smssync"].interfaces
    assert (a.url_path, a.own_number, a.secret, a.results_api) == (
        "/smssync/a", "+12025550100", "x", "auto")
    assert (b.url_path, b.results_api, b.instant_reply, b.poll, b.user, b.password) == (
        "/smssync/b", "yes", True, 120.0, "u", "p")
    for text, value in (("no", "no"), ('"off"', "no"), ("AUTO", "auto"), ("true", "yes")):
        conf = f"[smssync]\nnumber = +1\nresults_api = {text}\n"
        assert loads(conf).channels["smssync"].interfaces[0].results_api == value
    [c] = settings.channels["smsgate"].interfaces
    assert (c.name, c.url, c.user, c.sim, c.delivery_report, c.skip_validation, c.timeout) == (
        "", "https://phone.lan:8443", "sms", 2, False, True, 5.0)
    assert loads("[smssync]\n").channels["smssync"].interfaces == ()


def test_warnings_for_open_urls():
    settings = loads("[smssync]\nnumber [p] = +1555\n[smsgateway]\nnumber [q] = +1556\n"
                     "[smsgate]\nurl [r] = http://10.0.0.2\npassword [r] = x\nnumber [r] = +1\n")
    text = "\n".join(settings.warnings)
    assert "<string>:2: secret[p]: no secret" in text
    assert "<string>:4: user[q]: no user and password" in text
    assert "no port: the app's local server listens on 8080" in text


@pytest.mark.parametrize("text,where", [
    ("[smssync]\nsecret [p] = x\n", "<string>:2: number[p]: is required: the phone's own number"),
    ("[smssync]\nnumber [p] = +1\nuser [p] = u\n", "<string>:3: user[p]: needs password too"),
    ("[smsgateway]\nnumber [p] = +1\n\npassword [p] = u\n",
     "<string>:4: password[p]: needs user too"),
    ("[smssync]\nnumber [a] = +1\nnumber [b] = +2\nurl_path = /same\n",
     "<string>:4: url_path: /same is also the path of 'a' (line 4)"),
    ("[smssync]\nnumber [a] = +1\nurl_path [a] = \"/x?y=1\"\n", "<string>:3: url_path[a]: '/x?y=1': a path only"),
    ("[smssync]\nnumber [a] = +1\nurl_path [a] = relative\n", "<string>:3: url_path[a]: 'relative' must start with '/'"),
    ("[smssync]\nnumber [a] = +1\npoll [a] = soon\n", "<string>:3: poll[a]: 'soon' is not a duration"),
    ("[smssync]\nnumber [a] = +1\nresults_api [a] = maybe\n", "<string>:3: results_api[a]: 'maybe' is not yes, no or auto"),
    ("[smssync]\nnumber [a] = +1\nsecrets [a] = x\n", "<string>:3: secrets: unknown key in [smssync]; did you mean secret?"),
    ("[smssync]\nnumber [a] = call me\n", "<string>:2: number[a]: 'call me' is not a phone number"),
    ("[smsgateway]\nnumber [a] = +1\nuser [a] = a:b\npassword [a] = x\n",
     "<string>:3: user[a]: a user name here cannot contain"),
    ("[smsgate]\nnumber [a] = +1\npassword [a] = x\n", "<string>:2: url[a]: is required: the app's local server"),
    ("[smsgate]\nnumber [a] = +1\nurl [a] = http://10.0.0.2:8080\n", "<string>:2: password[a]: is required"),
    ("[smsgate]\nurl [a] = ftp://10.0.0.2\n", "<string>:2: url[a]: 'ftp://10.0.0.2' is not http://host:port"),
    ("[smsgate]\nurl [a] = http://sms:pw@10.0.0.2:8080\n", "<string>:2: url[a]: credentials belong in user"),
    ("[smsgate]\nurl [a] = http://10.0.0.2:99999\n", "<string>:2: url[a]: '99999' is not a TCP port"),
    ("[smsgate]\nurl [a] = http://10.0.0.2\nsim [a] = 0\n", "<string>:3: sim[a]: '0' is not a whole number"),
    ("[smssync]\nnumber [phone1] = +1\n[smsgate]\nurl [phone1] = http://10.0.0.2:1\n",
     "<string>:4: interface name 'phone1' is used in [smssync] and [smsgate]"),
])
def test_config_errors_name_file_line_and_key(text, where):
    with pytest.raises(ConfigError) as e:
        loads(text)
    assert str(e.value).startswith(where), str(e.value)


# --------------------------------------------------------------------------------------
# Pure helpers
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("agent,expected", [
    ("SMSSync-Android/v3.1.1", ("SMSSync-Android", "3.1.1")),
    ("Dalvik/2.1.0 (Linux; U; Android 11; Pixel 4 Build/RQ3A.211001.001) "
     "medic.gateway.alert.generic/1.8.0", ("medic.gateway.alert.generic", "1.8.0")),
    ("Dalvik/2.1.0 (Linux; U; Android 9)", ("Dalvik", "2.1.0")),
    (b"okhttp/3.12.1", ("okhttp", "3.12.1")),
    ("", (None, None)), (None, (None, None)), ("\x00\xff" * 400, (None, None)),
])
def test_user_agents(agent, expected):
    assert parse_user_agent(agent) == expected


@pytest.mark.parametrize("raw,safe", [
    ("+254700000009", "+254700000009"), ("M-PESA", "M-PESA"), ("My Bank", "My Bank"),
    ("", "unknown"), ("  ", "unknown"), ("+", "unknown"), ("a\nApplication: System", "a_Application_ System"),
    ("@bank", "bank"), ("+@x", "+x"), ("<sip:x@y>", "sip_x_y_"), ("x" * 99, "x" * 64),
])
def test_inbound_senders_are_made_safe_for_call_files(raw, safe):
    assert safe_sender(raw) == safe


# --------------------------------------------------------------------------------------
# The rig: the daemon's own parts, in-process
# --------------------------------------------------------------------------------------


class Rig:
    """The parts make_service builds, on a task.Clock with an inline store."""

    def __init__(self, tmp_path, conf: str, policy: RetryPolicy = POLICY):
        self.clock = task.Clock()
        self.clock.advance(T0)
        self.settings = loads(conf + '\n[daemon]\nwebhook_listen = "tcp:8080"\n')
        self.store = Store(str(tmp_path / "store.sqlite3"), self.clock, run_inline=True)
        self.store.open()
        self.metrics = Metrics()
        self.dispatcher = Dispatcher(self.store, self.clock, policy, self.metrics)
        self.board = ChannelBoard()
        self.root = WebhookRoot(_NotHere())
        self.parent = MultiService()
        self.accept_fails = False
        self.accept_hold: Optional[defer.Deferred] = None
        self.wiring = Wiring(self.clock, self.parent, self.settings, self.store, self.dispatcher,
                             self.board, self.metrics, self.root, self.accept, self.clock.seconds())
        self.site = make_site(self.root, 64 * 1024, reactor=self.clock)

    def accept(self, messages: list, state: Any = None) -> defer.Deferred:
        if self.accept_fails:
            return defer.fail(StoreError("commit failed: disk I/O error"))
        for m in messages:
            m.route = "callfile"
        if self.accept_hold is not None:
            held, self.accept_hold = self.accept_hold, None
            return held.addCallback(lambda _: fired(self.store.add(messages, state=state)))
        return self.store.add(messages, state=state)

    def build(self, *sections: str) -> "Rig":
        for name in sections:
            android_service.build(self.wiring, self.settings.channels[name])
        self.dispatcher.startService()
        self.parent.startService()
        return self

    def stop(self) -> None:
        self.parent.stopService()
        self.dispatcher.stopService()
        self.store.close()

    # -- messages ------------------------------------------------------------------------

    def outbound(self, route: str, to: str = "+254711000001", body: str = "hello from the PBX",
                 **kw: Any) -> Message:
        m = Message(OUT, route, recipient=to, sender="+254700000099", body=body,
                    created=self.clock.seconds(), **kw)
        fired(self.store.add([m]))
        return m

    def get(self, message_id: str) -> Message:
        return fired(self.store.get(message_id))

    def inbound(self) -> List[Message]:
        rows = self.store._db.execute(
            "SELECT id FROM messages WHERE direction = 'in' ORDER BY created, id").fetchall()
        return [self.get(r[0]) for r in rows]

    def attempts(self, message_id: str) -> list:
        return fired(self.store.reader.attempts(message_id))

    def rows(self) -> dict:
        return {s.info["route"]: s for s in fired(self.board.collect()) if s.info}


class _NotHere(Resource):
    """The ITSP webhook stand-in: every path no phone owns."""

    isLeaf = True

    def render(self, request):
        request.setResponseCode(404)
        return b"no such path\n"

    def refused_early(self, *args):
        pass


def exchange(site, wire: WireRequest, *, keep: Optional[list] = None) -> Optional[Reply]:
    """Put the phone's request byte for byte into the daemon's HTTP site; its answer, or
    None when none came (yet).  `keep` gets the (protocol, transport) to finish later."""
    proto = site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 8080))
    transport = StringTransport(peerAddress=IPv4Address("TCP", "192.0.2.7", 40123))
    proto.makeConnection(transport)
    head = f"{wire.method} {wire.target} HTTP/1.1\r\n".encode("latin-1")
    head += b"".join(f"{k}: {v}\r\n".encode("latin-1") for k, v in wire.headers)
    proto.dataReceived(head + b"\r\n" + wire.body)
    if keep is not None:
        keep.extend([proto, transport])
    reply = parse_reply(transport.value())
    if keep is None:
        proto.connectionLost(Failure(net_error.ConnectionDone()))
    return reply


def parse_reply(raw: bytes) -> Optional[Reply]:
    if b"\r\n\r\n" not in raw:
        return None
    head, _, rest = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ")[1])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    body = rest[: int(headers.get("content-length", len(rest)))]
    if headers.get("content-encoding") == "gzip":
        body = gzip.decompress(body)
    return Reply(status, headers, body)


@pytest.fixture
def rigs(tmp_path):
    made = []

    def make(conf: str, *sections: str, policy: RetryPolicy = POLICY, sub: str = "") -> Rig:
        root = tmp_path / sub if sub else tmp_path
        root.mkdir(exist_ok=True)
        rig = Rig(root, conf, policy)
        made.append(rig)
        return rig.build(*sections)

    yield make
    for rig in made:
        if rig.store.is_open:
            rig.stop()


@pytest.fixture
def wired(monkeypatch):
    """Route the phone stand-ins' requests into a rig's site instead of a socket."""

    def wire(rig: Rig) -> None:
        monkeypatch.setattr(phonepeers, "send", lambda request, timeout=30.0: exchange(rig.site, request))

    return wire


SMSSYNC = """\
[smssync]
url_path [phone1] = /smssync/phone1
secret   [phone1] = s3cr3t
number   [phone1] = +254700000001
poll     [phone1] = 60
"""
URL1 = "http://127.0.0.1:8080/smssync/phone1"
ROUTE1 = "smssync:phone1"


# --------------------------------------------------------------------------------------
# SMSsync
# --------------------------------------------------------------------------------------


def smssync_rig(rigs, extra: str = "", **kw) -> Rig:
    return rigs(SMSSYNC + extra, "smssync", **kw)


@pytest.mark.parametrize("fmt", ["form", "json", "xml"])
def test_smssync_received_sms_is_committed_before_the_answer_and_stored_once(rigs, wired, fmt):
    rig = smssync_rig(rigs)
    wired(rig)
    phone = SMSsyncPhone(URL1, "s3cr3t", fmt=fmt, device_id="d1", sent_to="+254700000001")
    text = "Habari & karibu+ 100% ✓\nline two"
    assert phone.receive_sms("+254722000111", text, message_id="6f1c2e0a-1111-4a2b-9c3d-000000000001")
    [m] = rig.inbound()
    assert (m.direction, m.route, m.source, m.recipient, m.sender, m.body) == (
        IN, "callfile", ROUTE1, "+254700000001", "+254722000111", text)
    assert m.dedupe_key == f"{ROUTE1}:6f1c2e0a-1111-4a2b-9c3d-000000000001"
    # The phone resends with the same message_id (its answer was lost): accepted, not stored again.
    assert phone.receive_sms("+254722000111", text, message_id="6f1c2e0a-1111-4a2b-9c3d-000000000001")
    assert len(rig.inbound()) == 1
    row = rig.rows()[ROUTE1]
    assert (row.state, row.info["app"], row.info["version"]) == ("up", "SMSSync-Android", "3.1.1")
    assert row.info["counters"]["received"] == 1 and row.info["counters"]["duplicates"] == 1


def test_smssync_test_integration_passes_and_stores_nothing(rigs, wired):
    rig = smssync_rig(rigs)
    wired(rig)
    assert SMSsyncPhone(URL1, "s3cr3t").test_integration()
    assert rig.inbound() == []
    # A wrong secret fails the app's test, and a posted SMS with it is not accepted.
    bad = SMSsyncPhone(URL1, "wrong")
    assert not bad.test_integration()
    assert not bad.receive_sms("+254722000111", "x")
    assert rig.inbound() == [] and len(bad.pending) == 1
    assert rig.metrics.counter("webhook_refusals")["forbidden"] == 2


def test_smssync_store_failure_makes_the_phone_keep_the_sms_and_post_it_again(rigs, wired):
    rig = smssync_rig(rigs)
    wired(rig)
    phone = SMSsyncPhone(URL1, "s3cr3t")
    rig.accept_fails = True
    reply = exchange(rig.site, phone.incoming_request("+254722000111", "keep me", message_id="m-1"))
    assert reply.status == 503 and reply.json()["payload"]["success"] is False
    assert not phone.accepts_incoming(reply)
    assert not phone.receive_sms("+254722000111", "keep me", message_id="m-1")
    assert phone.pending and rig.inbound() == []
    rig.accept_fails = False
    assert phone.sync_pending() == 1
    assert [m.body for m in rig.inbound()] == ["keep me"]
    assert rig.metrics.counter("webhook_refusals")["store_failed"] == 2


def test_smssync_refusals(rigs):
    rig = smssync_rig(rigs)
    phone = SMSsyncPhone(URL1, "s3cr3t")
    poll = phone.send_poll_request()
    delete = WireRequest("DELETE", "http", "127.0.0.1", 8080, "/smssync/phone1", poll.headers)
    assert exchange(rig.site, delete).status == 405
    bare = WireRequest("GET", "http", "127.0.0.1", 8080, "/smssync/phone1", poll.headers)
    assert exchange(rig.site, bare).status == 400
    garbage = phone.incoming_request("+1", "x")
    garbage = WireRequest("POST", "http", "127.0.0.1", 8080, garbage.target,
                          tuple((k, v) for k, v in garbage.headers if k != "Content-Length")
                          + (("Content-Length", "15"),), b"secret=s3cr3t&x")
    assert exchange(rig.site, garbage).status == 400
    huge = phone.incoming_request("+1", "x" * 70_000)
    reply = exchange(rig.site, huge)
    assert reply.status == 413 and rig.inbound() == []
    # Paths no phone owns are not the phone's.
    other = WireRequest("GET", "http", "127.0.0.1", 8080, "/smssync/phone9?task=send", poll.headers)
    assert exchange(rig.site, other).status == 404


def test_smssync_basic_auth_when_configured(rigs, wired):
    rig = smssync_rig(rigs, "user [phone1] = gw\npassword [phone1] = \"pä:ss\"\n")
    wired(rig)
    assert not SMSsyncPhone(URL1, "s3cr3t").receive_sms("+1555", "no credentials")
    wrong = SMSsyncPhone("http://gw:nope@127.0.0.1:8080/smssync/phone1", "s3cr3t")
    reply = exchange(rig.site, wrong.incoming_request("+1555", "x"))
    assert reply.status == 401 and "basic" in reply.headers["www-authenticate"].lower()
    # The Sync URL's user:pass@ is percent-decoded by the app and sent as UTF-8.
    good = SMSsyncPhone("http://gw:p%C3%A4%3Ass@127.0.0.1:8080/smssync/phone1", "s3cr3t")
    assert good.receive_sms("+1555", "with credentials")
    assert [m.body for m in rig.inbound()] == ["with credentials"]


def test_smssync_task_send_echoes_the_secret_and_hands_over_once(rigs, wired):
    rig = smssync_rig(rigs, "results_api [phone1] = no\n")
    wired(rig)
    m = rig.outbound(ROUTE1, body="Hi there")
    phone = SMSsyncPhone(URL1, "s3cr3t")
    reply = exchange(rig.site, phone.send_poll_request())
    payload = reply.json()["payload"]
    assert (payload["task"], payload["secret"]) == ("send", "s3cr3t")
    assert payload["messages"] == [{"to": "+254711000001", "message": "Hi there", "uuid": m.id}]
    # The answer went out: the phone sends it (no acknowledgement in this mode) -> sent.
    assert rig.get(m.id).status == SENT
    assert [ok for _, ok, _ in rig.attempts(m.id)] == [1]
    # Offered at most once: the next poll has nothing.
    assert phone.check_tasks() == []
    assert rig.get(m.id).status == SENT


def test_smssync_auto_learns_a_phone_that_does_not_confirm(rigs, wired):
    rig = smssync_rig(rigs)  # results_api = auto
    wired(rig)
    a = rig.outbound(ROUTE1, body="first")
    phone = SMSsyncPhone(URL1, "s3cr3t")  # the app's default: Results API off
    assert [x["uuid"] for x in phone.check_tasks()] == [a.id]
    # Not known yet whether the phone confirms: "sending", and kept from fallbacks.
    got = rig.get(a.id)
    assert got.status == SENDING and got.next_attempt >= T0 + POLICY.max_age
    assert rig.rows()[ROUTE1].info["results_api"] == "not known yet"
    # It polls again without a task=sent: it sent what it was given.  Never offered twice.
    b = rig.outbound(ROUTE1, body="second")
    assert [x["uuid"] for x in phone.check_tasks()] == [b.id]
    assert rig.get(a.id).status == SENT and [ok for _, ok, _ in rig.attempts(a.id)] == [1]
    assert rig.get(b.id).status == SENT  # known now: counted when offered
    assert rig.rows()[ROUTE1].info["results_api"] == "off (learned)"
    assert phone.check_tasks() == []
    assert phone.outbox == [{"to": "+254711000001", "message": "first", "uuid": a.id},
                            {"to": "+254711000001", "message": "second", "uuid": b.id}]


def test_smssync_auto_learns_a_phone_that_confirms_and_remembers_it(rigs, wired, tmp_path):
    rig = smssync_rig(rigs)
    wired(rig)
    a = rig.outbound(ROUTE1, body="first")
    phone = SMSsyncPhone(URL1, "s3cr3t", results_api=True)
    assert [x["uuid"] for x in phone.check_tasks()] == [a.id]
    assert rig.get(a.id).status == SENT
    assert rig.rows()[ROUTE1].info["results_api"] == "on (learned)"
    assert fired(rig.store.state(f"{ROUTE1}:results_api")) == "on"
    # The same confirmation again: no longer waiting, not confirmed twice.
    assert exchange(rig.site, phone.sent_ack_request([a.id])).json() == {"message_uuids": []}
    rig.stop()
    again = Rig(tmp_path, SMSSYNC).build("smssync")
    try:
        assert again.rows()[ROUTE1].info["results_api"] == "on (learned)"
    finally:
        again.stop()


def test_smssync_auto_learns_it_from_a_result_query(rigs, wired):
    rig = smssync_rig(rigs)
    wired(rig)
    assert exchange(rig.site, SMSsyncPhone(URL1, "s3cr3t").result_query_request()).status == 200
    assert rig.rows()[ROUTE1].info["results_api"] == "on (learned)"


def test_smssync_auto_restart_between_an_offer_and_the_next_poll(rigs, tmp_path, wired):
    rig = smssync_rig(rigs)
    m = rig.outbound(ROUTE1)
    exchange(rig.site, SMSsyncPhone(URL1, "s3cr3t").send_poll_request())
    rig.stop()
    again = Rig(tmp_path, SMSSYNC).build("smssync")
    wired(again)
    try:
        # The offer left before the restart: the phone may have sent it.  Its next poll,
        # without a confirmation, settles it as sent; it is not offered again.
        assert again.get(m.id).status == SENDING
        assert SMSsyncPhone(URL1, "s3cr3t").check_tasks() == []
        assert again.get(m.id).status == SENT
    finally:
        again.stop()


def test_smssync_task_send_with_a_wrong_secret_hands_out_nothing(rigs, wired):
    rig = smssync_rig(rigs)
    wired(rig)
    m = rig.outbound(ROUTE1)
    for secret in ("wrong", ""):
        phone = SMSsyncPhone(URL1, secret)
        reply = exchange(rig.site, phone.send_poll_request())
        assert reply.status == 403 and "messages" not in reply.json()["payload"]
        assert "task" not in reply.json()["payload"]
        assert phone.check_tasks() == []
    assert rig.get(m.id).status == QUEUED
    assert rig.rows()[ROUTE1].state == "idle"  # a refused request is no contact


def test_smssync_secret_with_spaces_and_symbols_is_echoed_exactly(rigs, wired):
    rig = rigs('[smssync]\nsecret [p] = "s3 cr+t/ä"\nnumber [p] = +1555\n', "smssync")
    wired(rig)
    m = rig.outbound("smssync:p")
    phone = SMSsyncPhone("http://127.0.0.1:8080/smssync/p", "s3 cr+t/ä")
    assert [x["uuid"] for x in phone.check_tasks()] == [m.id]


def test_smssync_an_answer_that_never_left_gives_the_sms_back(rigs, wired):
    rig = smssync_rig(rigs)
    wired(rig)
    m = rig.outbound(ROUTE1)
    held = defer.Deferred()
    take = rig.dispatcher.take
    rig.dispatcher.take = lambda route, limit=10: held.addCallback(lambda _: fired(take(route, limit)))
    keep: list = []
    assert exchange(rig.site, SMSsyncPhone(URL1, "s3cr3t").send_poll_request(), keep=keep) is None
    proto, transport = keep
    proto.connectionLost(Failure(net_error.ConnectionLost()))  # the phone gave up waiting
    held.callback(None)
    assert transport.value() == b""
    got = rig.get(m.id)
    assert (got.status, got.attempts) == (QUEUED, 0)
    rig.dispatcher.take = take
    assert [x["uuid"] for x in SMSsyncPhone(URL1, "s3cr3t").check_tasks()] == [m.id]


def test_smssync_results_api_hands_over_only_what_the_phone_confirms(rigs, wired):
    rig = smssync_rig(rigs, "results_api [phone1] = yes\n")
    wired(rig)
    a = rig.outbound(ROUTE1, body="first")
    b = rig.outbound(ROUTE1, body="second")
    phone = SMSsyncPhone(URL1, "s3cr3t", results_api=True)
    # task=send offers both; nothing is sent until task=sent.
    payload = exchange(rig.site, phone.send_poll_request()).json()["payload"]
    assert [x["uuid"] for x in payload["messages"]] == [a.id, b.id]
    assert rig.get(a.id).status == SENDING
    # A forged or stale uuid is never confirmed (task=sent carries no secret).
    ack = exchange(rig.site, phone.sent_ack_request([a.id, "0000forged0000", a.id]))
    assert ack.status == 200 and ack.json() == {"message_uuids": [a.id]}
    assert (rig.get(a.id).status, rig.get(b.id).status) == (SENT, SENDING)
    # b was not confirmed by the next poll (the phone did not take it): a failed attempt,
    # offered again by the retry policy.
    assert phone.check_tasks() == []
    got_b = rig.get(b.id)
    assert (got_b.status, got_b.attempts) == (QUEUED, 1) and "not confirmed" in got_b.reason
    rig.clock.advance(POLICY.base)
    sent = phone.check_tasks()
    assert [x["uuid"] for x in sent] == [b.id] and rig.get(b.id).status == SENT
    assert phone.check_tasks() == []
    # A confirmation for something handed over already confirms nothing.
    assert exchange(rig.site, phone.sent_ack_request([a.id])).json() == {"message_uuids": []}


def test_smssync_results_api_confirmation_whose_answer_never_left_is_not_counted(rigs):
    rig = smssync_rig(rigs, "results_api [phone1] = yes\n")
    m = rig.outbound(ROUTE1)
    phone = SMSsyncPhone(URL1, "s3cr3t", results_api=True)
    exchange(rig.site, phone.send_poll_request())
    held = defer.Deferred()
    get = rig.store.get
    rig.store.get = lambda message_id: held.addCallback(lambda _: fired(get(message_id)))
    keep: list = []
    assert exchange(rig.site, phone.sent_ack_request([m.id]), keep=keep) is None
    keep[0].connectionLost(Failure(net_error.ConnectionLost()))
    held.callback(None)
    rig.store.get = get
    # The phone did not get the confirmation, so it did not send: not counted as sent,
    # and once its next poll shows it was not taken, offered again by the retry policy.
    assert rig.get(m.id).status == SENDING
    assert exchange(rig.site, phone.send_poll_request()).json()["payload"]["messages"] == []
    assert (rig.get(m.id).status, rig.get(m.id).attempts) == (QUEUED, 1)
    rig.clock.advance(POLICY.base)
    payload = exchange(rig.site, phone.send_poll_request()).json()["payload"]
    assert [x["uuid"] for x in payload["messages"]] == [m.id]


def test_smssync_confirmations_from_a_phone_configured_without_them_still_work(rigs, wired, events):
    rig = smssync_rig(rigs, "results_api [phone1] = no\n")  # but the app has it on
    wired(rig)
    m = rig.outbound(ROUTE1)
    phone = SMSsyncPhone(URL1, "s3cr3t", results_api=True)
    assert [x["uuid"] for x in phone.check_tasks()] == [m.id]
    assert rig.get(m.id).status == SENT
    assert any("set results_api = yes" in e.get("log_format", "") for e in events)


def test_smssync_results_are_hints_that_never_go_backwards(rigs, wired):
    rig = smssync_rig(rigs)
    wired(rig)
    a = rig.outbound(ROUTE1, body="a")
    b = rig.outbound(ROUTE1, body="b")
    c = rig.outbound(ROUTE1, body="c")
    phone = SMSsyncPhone(URL1, "s3cr3t", results_api=True)
    assert len(phone.check_tasks()) == 3
    query, posted = phone.report_results({
        a.id: {"sent_result_code": 0, "delivered_result_code": -1,
               "delivered_timestamp": "Feb 21, 2017 3:36:40 PM"},
        b.id: {"sent_result_code": 2, "sent_result_message": "radio off"},
        c.id: {"sent_result_code": 0, "delivered_result_code": 0},
    })
    assert query.status == 200 and set(query.json()["message_uuids"]) == {a.id, b.id, c.id}
    assert posted.status == 200
    assert rig.get(a.id).status == DELIVERED
    assert (rig.get(b.id).status, rig.get(b.id).reason) == (
        FAILED, "the phone could not send it: radio off (radio off)")
    assert rig.get(c.id).status == SENT  # "no report" says nothing
    # A later failure hint for a delivered SMS changes nothing; unknown uuids are ignored.
    body = json.dumps({"message_result": [{"uuid": a.id, "sent_result_code": 1},
                                          {"uuid": "nope", "delivered_result_code": -1}]})
    report = phone.result_report_request([])
    again = WireRequest(report.method, report.scheme, report.host, report.port, report.target,
                        tuple((k, v) for k, v in report.headers if k != "Content-Length")
                        + (("Content-Length", str(len(body))),), body.encode())
    assert exchange(rig.site, again).status == 200
    assert rig.get(a.id).status == DELIVERED
    # Every report received is counted, whether it moved the message or not.
    assert rig.metrics.counter("delivery_reports") == {"delivered": 1, "failed": 2}
    # The result query needs the secret.
    assert exchange(rig.site, SMSsyncPhone(URL1, "nope").result_query_request()).status == 403


def test_smssync_instant_reply_rides_in_the_answer_to_a_posted_sms(rigs, wired):
    rig = smssync_rig(rigs, "instant_reply [phone1] = yes\n")
    wired(rig)
    m = rig.outbound(ROUTE1, to="+254722000111", body="auto reply")
    phone = SMSsyncPhone(URL1, "s3cr3t")
    assert phone.receive_sms("+254722000111", "hello")
    assert phone.outbox == [{"to": "+254722000111", "message": "auto reply", "uuid": m.id}]
    assert rig.get(m.id).status == SENT
    assert phone.check_tasks() == []


def test_smssync_unusable_messages_fail_instead_of_breaking_the_answer(rigs, wired):
    rig = smssync_rig(rigs)
    wired(rig)
    empty = rig.outbound(ROUTE1, body="")
    good = rig.outbound(ROUTE1, body="fine")
    assert [x["uuid"] for x in SMSsyncPhone(URL1, "s3cr3t").check_tasks()] == [good.id]
    assert rig.get(empty.id).status == FAILED


def test_smssync_restart_gives_back_what_was_offered_and_not_handed_over(rigs, tmp_path):
    rig = smssync_rig(rigs, "results_api [phone1] = yes\n")
    m = rig.outbound(ROUTE1)
    exchange(rig.site, SMSsyncPhone(URL1, "s3cr3t").send_poll_request())
    assert rig.get(m.id).status == SENDING
    rig.stop()  # the daemon stops before the phone confirmed it
    again = Rig(tmp_path, SMSSYNC + "results_api [phone1] = yes\n").build("smssync")
    try:
        got = again.get(m.id)
        assert (got.status, got.attempts) == (QUEUED, 0)
        payload = exchange(again.site, SMSsyncPhone(URL1, "s3cr3t").send_poll_request()).json()
        assert [x["uuid"] for x in payload["payload"]["messages"]] == [m.id]
    finally:
        again.stop()


def test_smssync_a_phone_silent_for_three_polls_is_down_until_it_polls(rigs, wired):
    rig = smssync_rig(rigs)
    wired(rig)
    phone = SMSsyncPhone(URL1, "s3cr3t")
    phone.check_tasks()
    rig.clock.advance(179)
    assert rig.dispatcher.is_down(ROUTE1) is None and rig.rows()[ROUTE1].state == "up"
    assert rig.rows()[ROUTE1].since == T0
    rig.clock.advance(1)
    reason = rig.dispatcher.is_down(ROUTE1)
    assert reason is not None and reason.startswith("phone silent since ")
    row = rig.rows()[ROUTE1]
    assert row.state == "silent" and row.since == T0 and "phone silent since" in row.detail
    # A queued message waits (no attempt spent); the next poll brings the phone back.
    m = rig.outbound(ROUTE1)
    rig.clock.advance(600)
    assert (rig.get(m.id).status, rig.get(m.id).attempts) == (QUEUED, 0)
    assert [x["uuid"] for x in phone.check_tasks()] == [m.id]
    row = rig.rows()[ROUTE1]
    assert rig.dispatcher.is_down(ROUTE1) is None and row.state == "up"
    assert row.since == rig.clock.seconds() == T0 + 780  # up again since then


def test_smssync_a_phone_that_never_polls_is_silent_three_intervals_after_start(rigs):
    rig = smssync_rig(rigs)
    assert rig.rows()[ROUTE1].state == "idle"
    rig.clock.advance(180)
    assert "since websmsd started" in rig.dispatcher.is_down(ROUTE1)
    assert rig.metrics.route(ROUTE1).down is not None


def test_smssync_a_silent_phone_lets_messages_take_their_fallback_route(rigs, wired):
    rig = smssync_rig(rigs)
    wired(rig)

    class Sink:
        def __init__(self):
            self.sent = []

        def send(self, message):
            self.sent.append(message.id)
            from websmsd.channel import Outcome

            return defer.succeed(Outcome.sent("ok"))

    sink = Sink()
    rig.dispatcher.add_route("itsp:backup", sink)
    m = rig.outbound(ROUTE1, fallback=("itsp:backup",))
    rig.clock.advance(180)
    rig.clock.advance(1)
    assert sink.sent == [m.id] and rig.get(m.id).route == "itsp:backup"


# --------------------------------------------------------------------------------------
# The SMS Gateway app (medic / multiOTP)
# --------------------------------------------------------------------------------------

GATEWAY = """\
[smsgateway]
url_path [phone2] = /smsgateway/phone2
user     [phone2] = gw
password [phone2] = pa$s
number   [phone2] = +254700000002
poll     [phone2] = 30
"""
URL2 = "http://gw:pa$s@127.0.0.1:8080/smsgateway/phone2"
ROUTE2 = "smsgateway:phone2"


def gateway_rig(rigs, **kw) -> Rig:
    return rigs(GATEWAY, "smsgateway", **kw)


def test_gateway_settings_check_with_the_apps_percent_encoded_password(rigs, wired):
    rig = gateway_rig(rigs)
    wired(rig)
    phone = MedicPhone(URL2)
    assert "pa%24s" in phone._effective_url()  # what the app really sends
    assert phone.settings_check() == (True, "ok")
    # A client that sends the password as it is (not percent-encoded) passes too.
    check = MedicPhone("http://127.0.0.1:8080/smsgateway/phone2").settings_check_request()
    raw = WireRequest(check.method, check.scheme, check.host, check.port, check.target,
                      check.headers + (("Authorization", "Basic Z3c6cGEkcw=="),))  # gw:pa$s
    assert exchange(rig.site, raw).json() == {"medic-gateway": True}
    assert MedicPhone("http://gw:wrong@127.0.0.1:8080/smsgateway/phone2").settings_check() == (
        False, "unauthorised")
    assert MedicPhone("http://127.0.0.1:8080/smsgateway/phone2").settings_check() == (
        False, "unauthorised")
    row = rig.rows()[ROUTE2]
    assert (row.info["app"], row.info["version"]) == ("medic.gateway.alert.generic", "1.8.0")


def test_gateway_received_sms_stored_once_and_the_answer_is_always_an_object(rigs, wired):
    rig = gateway_rig(rigs)
    wired(rig)
    phone = MedicPhone(URL2)
    first = phone.receive_sms("+254733000111", "Jambo ✓\n2nd line")
    phone.receive_sms("M-PESA", "You have received KES 100")
    reply, full = phone.poll()
    assert reply.status == 200 and reply.json() == {"messages": []} and not full
    got = rig.inbound()
    assert [(m.sender, m.body, m.recipient, m.source) for m in got] == [
        ("+254733000111", "Jambo ✓\n2nd line", "+254700000002", ROUTE2),
        ("M-PESA", "You have received KES 100", "+254700000002", ROUTE2)]
    assert got[0].dedupe_key == f"{ROUTE2}:{first}"
    # The same poll again (the phone did not get the answer): nothing stored twice.
    request = phone.poll_request([{"id": first, "from": "+254733000111", "content": "Jambo ✓\n2nd line",
                                   "sms_sent": 1, "sms_received": 2}], [])
    assert exchange(rig.site, request).status == 200
    assert len(rig.inbound()) == 2


def test_gateway_a_poll_that_cannot_be_processed_is_never_answered_2xx(rigs, wired):
    rig = gateway_rig(rigs)
    wired(rig)
    phone = MedicPhone(URL2)
    phone.receive_sms("+254733000111", "keep me")
    rig.accept_fails = True
    reply, _ = phone.poll()
    assert reply.status == 503 and reply.json()["error"] is True
    assert len(phone.waiting) == 1  # the phone keeps it for the next poll
    rig.accept_fails = False
    reply, _ = phone.poll()
    assert reply.status == 200 and phone.waiting == []
    assert [m.body for m in rig.inbound()] == ["keep me"]
    # Malformed: 400, not 2xx.
    base = phone.poll_request([], [])
    for body in (b"{not json", b'{"messages": {"a": 1}}', b'{"messages": [{"id": 5}]}'):
        bad = WireRequest("POST", "http", "127.0.0.1", 8080, base.target,
                          tuple((k, v) for k, v in base.headers if k != "Content-Length")
                          + (("Content-Length", str(len(body))),), body)
        assert exchange(rig.site, bad).status == 400
    put = WireRequest("PUT", "http", "127.0.0.1", 8080, base.target, base.headers, base.body)
    assert exchange(rig.site, put).status == 405


def test_gateway_offers_until_the_phone_reports_and_follows_its_updates(rigs, wired):
    rig = gateway_rig(rigs)
    wired(rig)
    phone = MedicPhone(URL2)
    m = rig.outbound(ROUTE2, to="+254-711 000 001", body="Hello from the PBX")
    reply, _ = phone.poll()
    assert reply.json() == {"messages": [{"id": m.id, "to": "+254-711 000 001",
                                          "content": "Hello from the PBX"}]}
    assert phone.store[m.id].to == "+254711000001" and rig.get(m.id).status == SENDING
    # The phone says UNSENT (it has it): not offered again, and kept from the dispatcher.
    reply, _ = phone.poll()
    assert reply.json() == {"messages": []} and rig.get(m.id).status == SENDING
    assert rig.get(m.id).next_attempt >= T0 + POLICY.max_age
    phone.set_status(m.id, "PENDING")
    phone.set_status(m.id, "SENT")
    phone.poll()
    assert rig.get(m.id).status == SENT and rig.get(m.id).attempts == 1
    phone.set_status(m.id, "DELIVERED")
    phone.poll()
    assert rig.get(m.id).status == DELIVERED
    # A late, repeated SENT never overwrites DELIVERED.
    phone.updates.append((m.id, "SENT", None))
    phone.poll()
    assert rig.get(m.id).status == DELIVERED
    assert rig.rows()[ROUTE2].info["last_result"].startswith(f"{m.id} delivered")


def test_gateway_failed_with_reason_only_before_sent(rigs, wired):
    rig = gateway_rig(rigs)
    wired(rig)
    phone = MedicPhone(URL2)
    a = rig.outbound(ROUTE2, body="a")
    b = rig.outbound(ROUTE2, body="b")
    phone.poll()
    phone.set_status(a.id, "FAILED", "destination.invalid")
    phone.set_status(b.id, "SENT")
    phone.set_status(b.id, "FAILED", "generic; errorCode=1")  # the app never does this; ignored
    phone.poll()
    got_a, got_b = rig.get(a.id), rig.get(b.id)
    assert (got_a.status, got_a.reason) == (FAILED, "the phone could not send it: destination.invalid")
    assert got_b.status == SENT
    # The user pressed Retry: UNSENT, then SENT: the message is sent after all.
    phone.set_status(a.id, "UNSENT")
    phone.set_status(a.id, "SENT")
    phone.poll()
    assert rig.get(a.id).status == SENT


def test_gateway_delivered_without_sent_and_unknown_ids(rigs, wired):
    rig = gateway_rig(rigs)
    wired(rig)
    phone = MedicPhone(URL2)
    m = rig.outbound(ROUTE2)
    other = rig.outbound("itsp:elsewhere")
    phone.poll()
    phone.set_status(m.id, "DELIVERED")
    phone.updates += [("never-ours", "SENT", None), (other.id, "DELIVERED", None),
                      (m.id, "WEIRD_NEW_STATUS", None)]
    reply, _ = phone.poll()
    assert reply.status == 200 and phone.updates == []  # all acknowledged
    assert rig.get(m.id).status == DELIVERED
    assert rig.get(other.id).status == QUEUED  # not this phone's: untouched


def test_gateway_an_offer_whose_answer_was_lost_is_offered_again_and_sent_once(rigs, wired):
    rig = gateway_rig(rigs)
    wired(rig)
    phone = MedicPhone(URL2)
    m = rig.outbound(ROUTE2)
    # The phone got the answer, but its next poll fails on the way (no update arrives).
    phone.poll()
    rig.clock.advance(30)
    request = phone.poll_request([], [])  # as if the UNSENT update had not been posted yet
    again = exchange(rig.site, request)
    assert [x["id"] for x in again.json()["messages"]] == [m.id]
    # The phone ignores an id it has and re-reports its status: stored once on the phone.
    before = dict(phone.store)
    phone.poll()
    assert phone.store.keys() == before.keys()
    reply, _ = phone.poll()
    assert reply.json() == {"messages": []}


def test_gateway_gzip_answers_when_asked(rigs):
    rig = gateway_rig(rigs)
    check = MedicPhone(URL2).settings_check_request()
    assert exchange(rig.site, check).headers["content-encoding"] == "gzip"
    small = exchange(rig.site, MedicPhone(URL2).poll_request([], []))
    assert small.headers["content-encoding"] == "gzip" and small.json() == {"messages": []}
    assert exchange(rig.site, MedicPhone(URL2.replace("pa$s", "x")).poll_request([], [])
                    ).headers["content-encoding"] == "gzip"
    for i in range(3):
        rig.outbound(ROUTE2, body=f"message number {i} " + "x" * 60)
    request = MedicPhone(URL2).poll_request([], [])
    proto_reply = exchange(rig.site, request)
    assert proto_reply.headers["content-encoding"] == "gzip"
    assert len(proto_reply.json()["messages"]) == 3
    plain = WireRequest(request.method, request.scheme, request.host, request.port, request.target,
                        tuple((k, v) for k, v in request.headers if k != "Accept-Encoding"),
                        request.body)
    reply = exchange(rig.site, plain)
    assert "content-encoding" not in reply.headers
    assert len(reply.json()["messages"]) == 3  # offered again: no update yet


def test_gateway_restart_offers_again_what_the_phone_may_have(rigs, wired, tmp_path):
    rig = gateway_rig(rigs)
    wired(rig)
    phone = MedicPhone(URL2)
    a = rig.outbound(ROUTE2, body="a")
    b = rig.outbound(ROUTE2, body="b")
    phone.poll()  # offered both; the phone stores them
    phone.poll()  # UNSENT for both
    phone.set_status(a.id, "SENT")
    rig.stop()
    again = Rig(tmp_path, GATEWAY).build("smsgateway")
    wired(again)
    try:
        assert again.get(b.id).status == SENDING
        reply, _ = phone.poll()  # a: SENT arrives now; b is offered again
        assert again.get(a.id).status == SENT
        assert [x["id"] for x in reply.json()["messages"]] == [b.id]
        assert len(phone.store) == 2  # nothing stored (or sent) twice on the phone
        reply, _ = phone.poll()  # b re-reported: no more offers
        assert reply.json() == {"messages": []}
    finally:
        again.stop()


def test_gateway_silent_phone_keeps_what_it_has_and_fallbacks_take_the_rest(rigs, wired):
    rig = gateway_rig(rigs)
    wired(rig)
    from websmsd.channel import Outcome

    sent = []

    class Sink:
        def send(self, message):
            sent.append(message.id)
            return defer.succeed(Outcome.sent("ok"))

    rig.dispatcher.add_route("itsp:backup", Sink())
    phone = MedicPhone(URL2)
    held = rig.outbound(ROUTE2, body="with the phone", fallback=("itsp:backup",))
    phone.poll()
    phone.poll()  # UNSENT: the phone has it
    waiting = rig.outbound(ROUTE2, body="not offered yet", fallback=("itsp:backup",))
    rig.clock.advance(90)
    assert rig.dispatcher.is_down(ROUTE2).startswith("phone silent since")
    rig.clock.advance(1)
    assert sent == [waiting.id]
    assert (rig.get(held.id).route, rig.get(held.id).status) == (ROUTE2, SENDING)
    # It comes back and reports: sent through the phone, once.
    phone.set_status(held.id, "SENT")
    phone.poll()
    assert rig.get(held.id).status == SENT and rig.dispatcher.is_down(ROUTE2) is None


# --------------------------------------------------------------------------------------
# SMS Gateway for Android (local server), websmsd polling FakeSMSGate
# --------------------------------------------------------------------------------------

from treq.testing import StubTreq  # noqa: E402

GATE = """\
[smsgate]
url      [phone3] = http://phone.lan:8080
user     [phone3] = sms
password [phone3] = "Zx8_q!2p"
number   [phone3] = +254700000003
poll     [phone3] = 5
"""
ROUTE3 = "smsgate:phone3"


class FakeResource(Resource):
    """FakeSMSGate behind twisted.web, for StubTreq."""

    isLeaf = True

    def __init__(self, fake):
        super().__init__()
        self.fake = fake

    def render(self, request):
        headers = {k.decode(): v[0].decode() for k, v in request.requestHeaders.getAllRawHeaders()}
        status, out, body = self.fake.handle(request.method.decode(), request.uri.decode(), headers,
                                             request.content.read())
        request.setResponseCode(status)
        for name, value in out.items():
            if name.lower() != "content-length":
                request.setHeader(name, value)
        return body


class Line:
    """treq over StubTreq, with a switch that makes the phone unreachable."""

    def __init__(self, fake):
        self.stub = StubTreq(FakeResource(fake))
        self.down = False
        self.hang = False  # requests that never get an answer
        self.hanging: List[defer.Deferred] = []

    def request(self, method, url, **kw):
        if self.down:
            return defer.fail(net_error.ConnectionRefusedError("refused"))
        if self.hang:
            self.hanging.append(defer.Deferred())
            return self.hanging[-1]
        return self.stub.request(method, url, **kw)


class Gate:
    """A rig with one SMS Gateway for Android phone wired as build() wires it."""

    def __init__(self, rig: Rig, fake: FakeSMSGate):
        self.rig, self.fake = rig, fake
        self.line = Line(fake)
        [settings] = rig.settings.channels["smsgate"].interfaces
        client = gc.SMSGateClient(self.line, settings.url, settings.user, settings.password,
                                 clock=rig.clock, timeout=settings.timeout)
        self.channel = SMSGateChannel(rig.wiring, settings, client=client)
        rig.dispatcher.add_route(self.channel.route, self.channel, concurrency=1)
        self.channel.setServiceParent(rig.parent)
        rig.board.register(lambda: self.channel.status(0), "smsgate")

    def tick(self, seconds: float = 5.0) -> None:
        self.fake.now_ms += int(seconds * 1000)
        self.rig.clock.advance(seconds)


@pytest.fixture
def gate(rigs):
    def make(sub: str = "", fake: Optional[FakeSMSGate] = None) -> Gate:
        rig = rigs(GATE, sub=sub)  # built without sections: Gate wires the phone itself
        rig.parent.stopService()
        gate = Gate(rig, fake or FakeSMSGate(now_ms=int(T0 * 1000)))
        rig.parent.startService()
        rig.clock.advance(0)  # the first poll
        return gate

    return make


def test_gate_sends_with_our_id_and_a_repeat_never_sends_twice(gate):
    gt = gate()
    m = gt.rig.outbound(ROUTE3, to="+254711000001", body="Habari ✓")
    gt.rig.clock.advance(0)
    got = gt.rig.get(m.id)
    assert (got.status, got.provider_id, got.attempts) == (SENT, m.id, 1)
    posted = [json.loads(body) for method, target, _, body in gt.fake.requests
              if method == "POST" and target == "/message"]
    assert posted == [{"id": m.id, "textMessage": {"text": "Habari ✓"},
                       "phoneNumbers": ["+254711000001"], "withDeliveryReport": True}]
    # A restart resends what it had not recorded: the phone answers 409 and keeps one.
    again = fired(gt.channel.send(gt.rig.get(m.id)))
    assert again.ok and again.code == 409 and again.provider_id == m.id
    assert list(gt.fake.messages) == [m.id]


def test_gate_follows_states_until_final_and_never_backwards(gate):
    gt = gate()
    a = gt.rig.outbound(ROUTE3, body="a")
    b = gt.rig.outbound(ROUTE3, body="b")
    gt.rig.clock.advance(0)
    gt.rig.clock.advance(0)
    assert set(gt.fake.messages) == {a.id, b.id}
    gt.fake.set_state(a.id, "Sent")
    gt.fake.set_state(b.id, "Failed", "Send result: RESULT_ERROR_NO_SERVICE (No service)")
    gt.tick(6)
    assert gt.rig.get(a.id).status == SENT
    got_b = gt.rig.get(b.id)
    assert (got_b.status, got_b.reason) == (FAILED, "Send result: RESULT_ERROR_NO_SERVICE (No service)")
    gt.fake.set_state(a.id, "Delivered")
    gt.tick(60)
    assert gt.rig.get(a.id).status == DELIVERED
    gt.fake.set_state(a.id, "Failed", "Delivery result: 64")  # a later part failed: kept delivered
    gt.tick(600)
    assert gt.rig.get(a.id).status == DELIVERED
    # Final states are not asked for again.
    asked = [t for method, t, _, _ in gt.fake.requests if t.startswith("/message/")]
    gt.tick(600)
    assert [t for method, t, _, _ in gt.fake.requests if t.startswith("/message/")] == asked
    assert gt.rig.metrics.counter("delivery_reports") == {"sent": 1, "failed": 1, "delivered": 1}


def test_gate_reads_the_inbox_once_across_polls_and_restarts(gate, tmp_path):
    gt = gate()
    fake = gt.fake
    fake.receive("+254722000111", "first", int(T0 * 1000) + 1000)
    fake.receive("M-PESA", "second", int(T0 * 1000) + 2000)
    gt.tick(5)
    got = gt.rig.inbound()
    assert [(m.sender, m.body, m.recipient, m.source) for m in got] == [
        ("+254722000111", "first", "+254700000003", ROUTE3),
        ("M-PESA", "second", "+254700000003", ROUTE3)]
    assert all(m.dedupe_key.startswith(ROUTE3 + ":") for m in got)
    state = fired(gt.rig.store.state("smsgate:phone3:inbox"))
    assert gi.InboxState.from_json(state).seen
    gt.tick(5)
    gt.tick(5)
    assert len(gt.rig.inbound()) == 2
    # A restart reads the state back: nothing twice, the next SMS once.
    gt.rig.stop()
    fake.receive("+254722000111", "third", fake.now_ms - 1)
    again = Rig(tmp_path, GATE)
    again.dispatcher.startService()
    second = Gate(again, fake)
    again.parent.startService()
    again.clock.advance(0)
    try:
        assert [m.body for m in again.inbound()] == ["first", "second", "third"]
        second.tick(5)
        assert len(again.inbound()) == 3
    finally:
        again.stop()


def test_gate_a_failed_commit_loses_nothing(gate):
    gt = gate()
    gt.fake.receive("+254722000111", "keep me", gt.fake.now_ms + 100)
    gt.rig.accept_fails = True
    before = fired(gt.rig.store.state("smsgate:phone3:inbox"))
    gt.tick(5)
    assert gt.rig.inbound() == []
    assert fired(gt.rig.store.state("smsgate:phone3:inbox")) == before
    gt.rig.accept_fails = False
    gt.tick(5)
    gt.tick(5)
    assert [m.body for m in gt.rig.inbound()] == ["keep me"]


def test_gate_a_phone_that_does_not_answer_is_a_route_that_is_down(gate):
    gt = gate()
    gt.line.down = True
    gt.tick(5)
    reason = gt.rig.dispatcher.is_down(ROUTE3)
    assert reason.startswith("phone unreachable since ") and "connection refused" in reason
    row = gt.rig.rows()[ROUTE3]
    assert row.state == "down" and row.since == T0 + 5 and "no answer since" in row.detail
    # Messages wait without spending attempts, however long it takes.
    m = gt.rig.outbound(ROUTE3)
    for _ in range(20):
        gt.tick(5)
    got = gt.rig.get(m.id)
    assert got.status in (QUEUED, SENDING) and got.attempts == 0
    assert gt.rig.rows()[ROUTE3].since == T0 + 5  # since the first failure
    # It answers again: up, and the message goes.
    gt.line.down = False
    gt.tick(5)
    assert gt.rig.dispatcher.is_down(ROUTE3) is None and gt.rig.rows()[ROUTE3].state == "up"
    gt.rig.clock.advance(0)
    assert gt.rig.get(m.id).status == SENT and list(gt.fake.messages) == [m.id]


def test_gate_a_send_that_finds_the_phone_gone_spends_no_attempt(gate):
    gt = gate()
    gt.line.down = True
    m = gt.rig.outbound(ROUTE3)
    gt.rig.clock.advance(0)
    got = gt.rig.get(m.id)
    assert (got.status, got.attempts) == (QUEUED, 0)
    assert got.reason.startswith("waiting: the phone does not answer: connection refused")
    assert gt.rig.dispatcher.is_down(ROUTE3) is not None
    # With a fallback route, it moves on at once.
    moved = gt.rig.outbound("smsgate:phone3", fallback=("itsp:backup",))
    from websmsd.channel import Outcome

    class Sink:
        sent: list = []

        def send(self, message):
            self.sent.append(message.id)
            return defer.succeed(Outcome.sent("ok"))

    gt.rig.dispatcher.add_route("itsp:backup", Sink())
    gt.rig.dispatcher.set_down(ROUTE3, None)  # as if the phone had answered a poll
    gt.rig.clock.advance(0)
    assert gt.rig.get(moved.id).route == "itsp:backup" and Sink.sent == [moved.id]
    assert gt.rig.get(m.id).attempts == 0


def test_gate_health_500_is_not_down_and_wrong_credentials_are(gate):
    fake = FakeSMSGate(now_ms=int(T0 * 1000), version="1.66.1")
    fake.health_status = "fail"
    gt = gate(fake=fake)
    row = gt.rig.rows()[ROUTE3]
    assert row.state == "up" and row.info["health"] == "fail" and row.info["version"] == "1.66.1"
    assert gt.rig.dispatcher.is_down(ROUTE3) is None
    fake.password = "changed on the phone"
    gt.tick(5)
    assert "credentials" in gt.rig.dispatcher.is_down(ROUTE3)


def test_gate_build_wires_a_pushed_route_polling_the_configured_url(tmp_path):
    from twisted.internet.testing import MemoryReactorClock

    reactor = MemoryReactorClock()
    reactor.advance(T0)
    settings = loads(EXAMPLE)
    store = Store(str(tmp_path / "s.sqlite3"), reactor, run_inline=True)
    store.open()
    dispatcher = Dispatcher(store, reactor, POLICY)
    parent = MultiService()
    board = ChannelBoard()
    root = WebhookRoot(_NotHere())
    wiring = Wiring(reactor, parent, settings, store, dispatcher, board, Metrics(), root,
                    lambda messages, state=None: store.add(messages, state=state), T0)
    for name in ("smssync", "smsgateway", "smsgate"):
        android_service.build(wiring, settings.channels[name])
    assert set(dispatcher.routes) == {"smssync:phone1", "smsgateway:phone2", "smsgate:phone3"}
    assert dispatcher.routes["smsgate:phone3"].sink is not None
    assert dispatcher.routes["smssync:phone1"].sink is None
    assert set(root.mounts) == {b"/smssync/phone1", b"/smsgateway/phone2"}
    assert {s.name for s in parent} == {"smssync:phone1", "smsgateway:phone2", "smsgate:phone3"}
    assert parent.getServiceNamed("smsgate:phone3").client._base == "http://192.168.1.50:8080"
    parent.startService()
    rows = fired(board.collect())
    assert [(r.kind, r.name, r.state) for r in rows] == [
        ("smssync", "phone1", "idle"), ("smsgateway", "phone2", "idle"), ("smsgate", "phone3", "idle")]
    parent.stopService()
    store.close()


class OldGate(FakeSMSGate):
    """An app before v1.59.0 (no /inbox), and one message whose state read fails."""

    broken: str = ""

    def handle(self, method, target, headers, body):
        if target.startswith("/inbox"):
            self.requests.append((method, target, dict(headers), body))
            return 404, {"Content-Length": "0"}, b""
        if self.broken and target == f"/message/{self.broken}":
            self.requests.append((method, target, dict(headers), body))
            return self._json(500, {"message": "database is locked"})
        return super().handle(method, target, headers, body)


def test_gate_an_app_without_an_inbox_still_sends_and_says_why_it_reads_nothing(gate):
    gt = gate(fake=OldGate(now_ms=int(T0 * 1000)))
    assert gt.rig.dispatcher.is_down(ROUTE3) is None
    row = gt.rig.rows()[ROUTE3]
    assert row.state == "failing" and "inbox: HTTP 404" in row.detail
    a = gt.rig.outbound(ROUTE3, body="a")
    b = gt.rig.outbound(ROUTE3, body="b")
    gt.rig.clock.advance(0)
    gt.rig.clock.advance(0)
    assert gt.rig.get(a.id).status == SENT and gt.rig.get(b.id).status == SENT
    # One state that cannot be read does not hold up the others.
    gt.fake.broken = a.id
    gt.fake.set_state(a.id, "Delivered")
    gt.fake.set_state(b.id, "Delivered")
    gt.tick(6)
    assert (gt.rig.get(a.id).status, gt.rig.get(b.id).status) == (SENT, DELIVERED)
    assert "state of " + a.id in gt.rig.rows()[ROUTE3].detail
    gt.fake.broken = ""
    gt.tick(60)
    assert gt.rig.get(a.id).status == DELIVERED


def test_gate_an_sms_stamped_before_the_horizon_is_reported_not_taken(gate):
    gt = gate()
    gt.tick(5)
    gt.fake.receive("+254722000111", "from long ago", int((T0 - 3600) * 1000))
    gt.tick(5)
    assert gt.rig.inbound() == []
    row = gt.rig.rows()[ROUTE3]
    assert row.info["late_sms"] == 1 and "1 SMS reached the phone stamped too long ago" in row.detail


def test_the_readme_example_is_the_issues_and_loads():
    import re
    from pathlib import Path

    text = (Path(__file__).parent.parent / "README.md").read_text(encoding="utf-8")
    section = text[text.index("### Android phones"):]
    section = section[:section.index("\n## ")]
    section = section[:section.find("\n### ", 1)] if "\n### " in section else section
    [example] = re.findall(r"```ini\n(.*?)```", section, re.DOTALL)
    assert example == EXAMPLE
    settings = loads(example)
    assert [len(settings.channels[n].interfaces) for n in ("smssync", "smsgateway", "smsgate")] == [1, 1, 1]
    # Every key the tables name is a key of its section.
    from websmsd.config import smsgate, smsgateway, smssync

    for module in (smssync, smsgateway, smsgate):
        table = section[section.index(f"`[{module.NAME}]`\n"):]
        table = table[:table.index("\n\n", table.index("| ---"))]
        named = set()
        for row in re.findall(r"^\| ([a-z_, ]+) \|", table, re.MULTILINE):
            named |= {k.strip() for k in row.split(",")}
        named.discard("key")
        assert named == set(module.KEYS), module.NAME


def test_gate_a_phone_that_hangs_times_out_into_down_and_a_stop_cancels_quietly(gate, events):
    gt = gate()
    gt.line.hang = True
    gt.tick(5)
    assert len(gt.line.hanging) == 1 and gt.rig.dispatcher.is_down(ROUTE3) is None
    gt.tick(30)  # the request timeout
    assert "no answer from" in gt.rig.dispatcher.is_down(ROUTE3)
    gt.tick(5)
    assert len(gt.line.hanging) == 2
    gt.rig.parent.stopService()
    assert not [e for e in events if e.get("log_failure") is not None]


def test_smssync_an_offer_not_settled_yet_is_kept_from_fallback_routes(rigs, wired):
    rig = smssync_rig(rigs)  # results_api = auto, not known yet
    wired(rig)
    from websmsd.channel import Outcome

    sent = []

    class Sink:
        def send(self, message):
            sent.append(message.id)
            return defer.succeed(Outcome.sent("ok"))

    rig.dispatcher.add_route("itsp:backup", Sink())
    offered = rig.outbound(ROUTE1, body="offered", fallback=("itsp:backup",))
    phone = SMSsyncPhone(URL1, "s3cr3t")
    assert len(phone.check_tasks()) == 1
    waiting = rig.outbound(ROUTE1, body="not offered", fallback=("itsp:backup",))
    rig.clock.advance(181)
    assert rig.dispatcher.is_down(ROUTE1) is not None
    assert sent == [waiting.id]
    assert (rig.get(offered.id).route, rig.get(offered.id).status) == (ROUTE1, SENDING)
    phone.check_tasks()  # back, without a confirmation: the phone sent it
    assert rig.get(offered.id).status == SENT


def test_smssync_put_and_a_sync_url_with_its_own_query(rigs, wired):
    rig = smssync_rig(rigs)
    wired(rig)
    m = rig.outbound(ROUTE1)
    phone = SMSsyncPhone(URL1 + "?id=7&h=x", "s3cr3t", method="PUT")
    assert phone.receive_sms("+254722000111", "put it")
    assert phone.send_poll_request().target.startswith("/smssync/phone1?id=7&h=x?task=send&secret=")
    assert [x["uuid"] for x in phone.check_tasks()] == [m.id]
    assert [x.body for x in rig.inbound()] == ["put it"]


def test_gateway_url_with_a_query_string(rigs, wired):
    rig = gateway_rig(rigs)
    wired(rig)
    phone = MedicPhone(URL2 + "?id=dev1&h=abc")
    phone.receive_sms("+254733000111", "with a query")
    reply, _ = phone.poll()
    assert reply.status == 200 and [m.body for m in rig.inbound()] == ["with a query"]


def test_gateway_a_status_for_a_message_given_back_claims_it_again(rigs, wired):
    rig = gateway_rig(rigs)
    wired(rig)
    from websmsd.channel import Outcome

    phone = MedicPhone(URL2)
    m = rig.outbound(ROUTE2)
    phone.poll()
    # As if websmsd had given it back (an answer it thought lost): the phone has it.
    fired(rig.dispatcher.record(rig.get(m.id), Outcome.later(0, "given back")))
    assert rig.get(m.id).status == QUEUED
    reply, _ = phone.poll()  # UNSENT
    assert rig.get(m.id).status == SENDING and rig.get(m.id).next_attempt > T0 + 3600
    assert reply.json() == {"messages": []}
    assert list(phone.store) == [m.id]
