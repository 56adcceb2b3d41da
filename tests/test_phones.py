"""The phones channel (websmsd.phones.service and .sink) on a MemoryReactorClock: the real
AMIClient over a StringTransport, the real store (inline) and dispatcher.  The test plays
Asterisk 22 with the bytes it writes (fixtures/asterisk, asterisk-findings.md)."""

from __future__ import annotations

import base64
import time
from types import SimpleNamespace
from typing import Dict, List

import pytest
from twisted.application.internet import backoffPolicy
from twisted.application.service import MultiService
from twisted.internet import defer, error
from twisted.internet.address import IPv4Address
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure

from conftest import fired
from websmsd.ami.client import AMIClient
from websmsd.channel import Outcome
from websmsd.config import loads
from websmsd.dispatch import Dispatcher, RetryPolicy
from websmsd.http.board import ChannelBoard
from websmsd.message import DELIVERED, FAILED, IN, OUT, Message
from websmsd.phones.service import NO_SESSION, build
from websmsd.routing import fan_out, router_for
from websmsd.store import Store

CONF = """\
[ami]
host = 127.0.0.1
port = 5038
username = websmsd
secret = amisecret
[astqueue]
delivery = ami
[phones]
number [john.doe] = +12025550160
number [jane.doe] = +12025550183
number [desk]     = +12025550160
notify [john.doe] = all
notify [desk] = failed
"""
JOHN = "+12025550160"
OUTSIDE = "+15551234567"
POLICY = RetryPolicy(base=30, max_delay=300, max_attempts=3, max_age=86400)


def parse_actions(data: bytes) -> List[Dict[str, str]]:
    out = []
    for block in data.split(b"\r\n\r\n"):
        if block:
            out.append(dict(line.decode().split(": ", 1) for line in block.split(b"\r\n")))
    return out


class FakeEndpoint:
    def __init__(self):
        self.attempts: List[defer.Deferred] = []
        self.factory = None

    def connect(self, factory):
        self.factory = factory
        d = defer.Deferred()
        self.attempts.append(d)
        return d


class Asterisk:
    """Plays the PBX's Asterisk on one connection of the client."""

    def __init__(self, endpoint: FakeEndpoint):
        proto = endpoint.factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 5038))
        self.transport = StringTransport(peerAddress=IPv4Address("TCP", "127.0.0.1", 5038))
        proto.makeConnection(self.transport)
        endpoint.attempts[-1].callback(proto)
        self.proto = proto
        self.seen = 0

    def say(self, data: str) -> None:
        self.proto.dataReceived(data.encode())

    def actions(self) -> List[Dict[str, str]]:
        return parse_actions(self.transport.value())

    def new(self) -> List[Dict[str, str]]:
        acts = self.actions()
        new, self.seen = acts[self.seen:], len(acts)
        for a in new:
            if a["Action"] == "Ping":  # the keepalive of an idle session
                self.reply(a, ("Response", "Success"), ("Ping", "Pong"))
        return [a for a in new if a["Action"] != "Ping"]

    def reply(self, action: Dict[str, str], *pairs) -> None:
        lines = [pairs[0], ("ActionID", action["ActionID"])] + list(pairs[1:])
        self.say("".join(f"{k}: {v}\r\n" for k, v in lines) + "\r\n")

    def event(self, name: str, **fields) -> None:
        self.say(f"Event: {name}\r\nPrivilege: system,all\r\n"
                 + "".join(f"{k}: {v}\r\n" for k, v in fields.items()) + "\r\n")

    def login(self, contacts=(), listing="ok") -> None:
        self.say("Asterisk Call Manager/11.0.0\r\n")
        [login] = self.new()
        assert login["Action"] == "Login" and login["Username"] == "websmsd"
        assert login["Secret"] == "amisecret" and login["Events"] == "system"
        self.reply(login, ("Response", "Success"), ("Message", "Authentication accepted"))
        self.event("FullyBooted", Uptime="648", LastReload="648", Status="Fully Booted")
        [show] = self.new()
        assert show["Action"] == "PJSIPShowContacts"
        if listing == "denied":
            self.reply(show, ("Response", "Error"), ("Message", "Permission denied"))
        elif not contacts:
            # Asterisk 22 (res_pjsip/pjsip_options.c) when nothing is registered.
            self.reply(show, ("Response", "Error"), ("Message", "No Contacts found"))
        else:
            self.reply(show, ("Response", "Success"), ("EventList", "start"),
                       ("Message", "A listing of Contacts follows, presented as ContactList events"))
            for endpoint in contacts:
                self.say(f"Event: ContactList\r\nActionID: {show['ActionID']}\r\n"
                         f"ObjectType: contact\r\nObjectName: {endpoint};@f28087\r\n"
                         f"Endpoint: {endpoint}\r\nUri: sip:{endpoint}@127.0.0.1:5062\r\n"
                         "Status: NonQualified\r\nRoundtripUsec: N/A\r\n\r\n")
            self.say(f"Event: ContactListComplete\r\nActionID: {show['ActionID']}\r\n"
                     f"EventList: Complete\r\nListItems: {len(contacts)}\r\n\r\n")

    def register(self, endpoint: str, port: int = 5062) -> None:
        self.event("PeerStatus", ChannelType="PJSIP", Peer=f"PJSIP/{endpoint}",
                   PeerStatus="Reachable")
        self.event("ContactStatus", URI=f"sip:{endpoint}@127.0.0.1:{port}",
                   ContactStatus="NonQualified", AOR=endpoint, EndpointName=endpoint,
                   RoundtripUsec="0")

    def unregister(self, endpoint: str, port: int = 5062) -> None:
        self.event("PeerStatus", ChannelType="PJSIP", Peer=f"PJSIP/{endpoint}",
                   PeerStatus="Unreachable")
        self.event("ContactStatus", URI=f"sip:{endpoint}@127.0.0.1:{port}",
                   ContactStatus="Removed", AOR=endpoint, EndpointName=endpoint,
                   RoundtripUsec="0")

    def sends(self) -> List[Dict[str, str]]:
        return [a for a in self.new() if a["Action"] == "MessageSend"]

    def ok(self, action) -> None:
        self.reply(action, ("Response", "Success"), ("Message", "Message successfully sent"))

    def failed(self, action) -> None:
        self.reply(action, ("Response", "Error"), ("Message", "Message failed to send."))

    def lose(self) -> None:
        self.proto.connectionLost(Failure(error.ConnectionDone()))


def body(action) -> str:
    return base64.b64decode(action["Base64Body"]).decode("utf-8")


class PBX:
    def __init__(self, tmp_path, conf=CONF):
        self.clock = MemoryReactorClock()
        self.clock.advance(1_800_000_000)
        self.settings = loads(conf, "websms.conf")
        self.store = Store(str(tmp_path / "s.sqlite3"), self.clock, run_inline=True)
        self.store.open()
        self.dispatcher = Dispatcher(self.store, self.clock, POLICY)
        self.endpoint = FakeEndpoint()
        client = AMIClient(self.clock, self.endpoint, "websmsd", "amisecret", events="system",
                           name="ami", ping_interval=30,
                           retry_policy=backoffPolicy(initialDelay=1.0, factor=2.0,
                                                      jitter=lambda: 0))
        self.parent = MultiService()
        self.board = ChannelBoard()
        wiring = SimpleNamespace(reactor=self.clock, parent=self.parent, settings=self.settings,
                                 store=self.store, dispatcher=self.dispatcher, board=self.board,
                                 metrics=self.dispatcher.metrics)
        self.channel = build(wiring, self.settings.channels["ami"], client=client)
        self.router = router_for(self.settings)
        self.dispatcher.startService()
        self.parent.startService()
        self.ast = Asterisk(self.endpoint)

    def inbound(self, to: str, text: str, sender: str = OUTSIDE) -> List[Message]:
        m = Message(IN, "", to, sender, text, source="webhook:tw")
        m.created = self.clock.seconds()
        copies = fan_out(m, self.router.inbound_routes(to))
        fired(self.store.add(copies))
        return copies

    def run(self, seconds: float = 0.0) -> None:
        self.clock.advance(0)
        self.clock.advance(seconds)
        self.clock.advance(0)

    def row(self, message_id: str):
        m = fired(self.store.get(message_id))
        return m.status, m.attempts, m.reason, m.progress

    def attempts(self, message_id: str):
        return fired(self.store.reader.attempts(message_id))

    def down(self, endpoint: str):
        return self.dispatcher.is_down(f"ami:{endpoint}")

    def rows(self) -> Dict[str, dict]:
        return {r.name: r for r in fired(self.board.collect())}


@pytest.fixture
def pbx(tmp_path):
    p = PBX(tmp_path)
    yield p
    p.dispatcher.stopService()


def test_routes_are_down_until_login_then_follow_the_listing(pbx):
    assert {pbx.down(e) for e in ("john.doe", "jane.doe", "desk")} == {NO_SESSION}
    pbx.ast.login(contacts=["john.doe"])
    assert pbx.down("john.doe") is None
    assert pbx.down("jane.doe") == "phone jane.doe is not registered"
    assert pbx.down("desk") == "phone desk is not registered"


def test_an_sms_to_a_shared_number_goes_to_each_phone_over_messagesend(pbx):
    pbx.ast.login(contacts=["john.doe"])
    john, desk = pbx.inbound(JOHN, "hello ✓\r\n  two")
    pbx.run()
    [send] = pbx.ast.sends()
    assert send["To"] == "pjsip:john.doe" and send["From"] == OUTSIDE
    assert body(send) == "hello ✓\r\n  two" and "Body" not in send
    pbx.ast.ok(send)
    pbx.run()
    assert pbx.row(john.id) == (DELIVERED, 1, None, 1)
    assert pbx.attempts(john.id)[0][1:] == (1, "Asterisk sent it to the phone (MessageSend)")
    # desk is not registered: its copy waits and says why, no attempt spent.
    assert pbx.row(desk.id) == (
        "queued", 0, "waiting: route ami:desk is down: phone desk is not registered", 0)
    assert pbx.ast.sends() == []


def test_waiting_messages_go_in_order_once_the_phone_registers(pbx):
    pbx.ast.login()
    sent = [pbx.inbound("+12025550183", f"m{i}")[0] for i in range(3)]
    for _ in range(3):
        pbx.clock.advance(1)
    pbx.run(3600)
    assert pbx.ast.sends() == []  # nothing tried while it is away, no polling either
    pbx.ast.register("jane.doe")
    pbx.run()
    order = []
    for _ in range(3):
        [send] = pbx.ast.sends()  # one at a time: the next only after the answer
        order.append(body(send))
        pbx.ast.ok(send)
        pbx.run()
    assert order == ["m0", "m1", "m2"]
    assert pbx.ast.sends() == []
    assert [pbx.row(m.id)[:2] for m in sent] == [(DELIVERED, 1)] * 3


def test_an_unregister_takes_the_route_down_at_once(pbx):
    pbx.ast.login(contacts=["jane.doe"])
    pbx.ast.unregister("jane.doe")
    assert pbx.down("jane.doe") == "phone jane.doe is not registered"
    # A phone that stops answering its qualify counts as gone too.
    pbx.ast.register("jane.doe")
    assert pbx.down("jane.doe") is None
    pbx.ast.event("PeerStatus", ChannelType="PJSIP", Peer="PJSIP/jane.doe", PeerStatus="Unreachable")
    pbx.ast.event("ContactStatus", URI="sip:jane.doe@127.0.0.1:5062", ContactStatus="Unreachable",
                  AOR="jane.doe", EndpointName="jane.doe", RoundtripUsec="0")
    assert pbx.down("jane.doe") == "phone jane.doe is not registered"


def test_without_a_listing_a_failed_messagesend_shows_the_phone_is_away(pbx):
    # read = system, write = message: PJSIPShowContacts is refused.
    pbx.ast.login(listing="denied")
    assert pbx.down("jane.doe") is None  # not known: tried
    [m] = pbx.inbound("+12025550183", "are you there?")
    pbx.run()
    [send] = pbx.ast.sends()
    pbx.ast.failed(send)
    pbx.run()
    assert pbx.down("jane.doe") == "phone jane.doe is not registered"
    assert pbx.row(m.id)[:2] == ("queued", 0)  # no attempt spent
    pbx.run(3600)
    assert pbx.ast.sends() == []
    pbx.ast.register("jane.doe")
    pbx.run()
    [send] = pbx.ast.sends()
    assert body(send) == "are you there?"
    pbx.ast.ok(send)
    pbx.run()
    assert pbx.row(m.id)[:2] == (DELIVERED, 1)
    assert "events only" in pbx.rows()["AMI 127.0.0.1:5038"].detail


def test_a_failure_for_a_registered_phone_is_retried_then_fails_with_the_reason(pbx):
    pbx.ast.login(contacts=["jane.doe"])
    [m] = pbx.inbound("+12025550183", "x")
    pbx.run()
    for attempt in (1, 2):
        [send] = pbx.ast.sends()
        pbx.ast.failed(send)
        pbx.run()
        status, attempts, reason, _ = pbx.row(m.id)
        assert (status, attempts, reason) == ("queued", attempt,
                                             "Asterisk: Message failed to send.")
        assert pbx.down("jane.doe") is None  # registered by the events: not paused
        pbx.run(POLICY.delay(attempt))
    [send] = pbx.ast.sends()
    pbx.ast.failed(send)
    pbx.run()
    assert pbx.row(m.id)[:3] == (FAILED, 3, "gave up after 3 attempts: Asterisk: Message failed"
                                           " to send.")


def test_a_long_text_goes_in_parts_and_resumes_after_a_failure(pbx):
    pbx.ast.login(contacts=["jane.doe"])
    text = "Привет! " * 150  # 2,100 bytes: 3 parts
    [m] = pbx.inbound("+12025550183", text)
    pbx.run()
    [first] = pbx.ast.sends()
    assert body(first).startswith("(1/3) ")
    assert len(base64.b64decode(first["Base64Body"])) <= 756
    pbx.ast.ok(first)
    pbx.run()
    [second] = pbx.ast.sends()
    assert body(second).startswith("(2/3) ")
    pbx.ast.failed(second)
    pbx.run()
    assert pbx.row(m.id)[:2] == ("queued", 1) and pbx.row(m.id)[3] == 1  # 1 part went
    pbx.run(30)
    [again] = pbx.ast.sends()
    assert body(again) == body(second)  # resumes with part 2, not part 1
    pbx.ast.ok(again)
    pbx.run()
    [third] = pbx.ast.sends()
    pbx.ast.ok(third)
    pbx.run()
    assert pbx.row(m.id) == (DELIVERED, 2, None, 3)
    joined = "".join(body(a).split(" ", 1)[1] for a in (first, again, third))
    assert joined == text


def test_the_session_lost_pauses_every_route_and_login_resumes(pbx):
    pbx.ast.login(contacts=["john.doe"])
    pbx.ast.lose()
    assert pbx.down("john.doe") == NO_SESSION
    john, desk = pbx.inbound(JOHN, "while away")
    pbx.run()
    assert pbx.row(john.id)[:3] == (
        "queued", 0, f"waiting: route ami:john.doe is down: {NO_SESSION}")
    tries = len(pbx.endpoint.attempts)
    pbx.run(5.0)  # the reconnect, after ClientService's backoff
    assert len(pbx.endpoint.attempts) == tries + 1
    ast = pbx.ast = Asterisk(pbx.endpoint)
    ast.login(contacts=["john.doe", "desk"])
    pbx.run()
    sends = ast.sends()
    assert sorted(s["To"] for s in sends) == ["pjsip:desk", "pjsip:john.doe"]


def test_an_answer_lost_with_the_session_is_a_try_that_may_have_arrived(pbx):
    pbx.ast.login(contacts=["john.doe"])
    [john, _] = pbx.inbound(JOHN, "x")
    pbx.run()
    [send] = pbx.ast.sends()
    pbx.ast.lose()
    pbx.run()
    status, attempts, reason, _ = pbx.row(john.id)
    assert (status, attempts) == ("queued", 1)
    assert "connection lost before the answer" in reason and "may have reached the phone" in reason


def test_asterisk_refusing_messagesend_itself_pauses_the_routes(pbx):
    pbx.ast.login(contacts=["john.doe"])
    [john, _] = pbx.inbound(JOHN, "x")
    pbx.run()
    [send] = pbx.ast.sends()
    pbx.ast.reply(send, ("Response", "Error"), ("Message", "Permission denied"))
    pbx.run()
    assert "write = message" in pbx.down("john.doe")
    assert pbx.row(john.id)[:2] == ("queued", 0)
    assert pbx.rows()["AMI 127.0.0.1:5038"].state == "error"


def test_a_delivery_report_becomes_one_notice_to_the_phone_that_wrote(pbx):
    pbx.ast.login(contacts=["john.doe"])
    pbx.dispatcher.add_route("itsp", SimpleNamespace(send=lambda m: defer.succeed(
        Outcome.sent(provider_id="prov-1"))))
    out = Message(OUT, "itsp", "+15559876543", JOHN, "hi", source="agi:john.doe")
    out.created = pbx.clock.seconds()
    fired(pbx.store.add([out]))
    pbx.dispatcher.wake("itsp")
    pbx.run()
    assert pbx.row(out.id)[0] == "sent"
    assert fired(pbx.store.report("prov-1", ["itsp"], "delivered", "DELIVRD")) == out.id
    fired(pbx.store.report("prov-1", ["itsp"], "delivered", "again"))  # repeated
    fired(pbx.store.report("prov-1", ["itsp"], "failed", "late"))  # out of order
    pbx.run()
    [send] = pbx.ast.sends()
    assert send["To"] == "pjsip:john.doe" and send["From"] == "+15559876543"
    hhmm = time.strftime("%H:%M", time.localtime(pbx.clock.seconds()))
    assert body(send) == f"\u2713 delivered {hhmm}"
    pbx.ast.ok(send)
    pbx.run()
    assert pbx.ast.sends() == []
    notices = [m for m in fired(pbx.store.reader.recent()) if m.source == "notice"]
    assert [(n.route, n.recipient, n.status) for n in notices] == [
        ("ami:john.doe", JOHN, DELIVERED)]


def test_a_failure_from_the_dispatcher_gives_a_notice_and_none_for_others(pbx):
    pbx.ast.login(contacts=["desk", "jane.doe"])
    for source in ("agi:desk", "agi:jane.doe", "api"):
        m = Message(OUT, "itsp", "+15550000001", JOHN, "x", source=source)
        fired(pbx.store.add([m]))
        fired(pbx.dispatcher.record(m, Outcome.failed("400 number blocked", permanent=True)))
    pbx.run()
    [send] = pbx.ast.sends()
    assert send["To"] == "pjsip:desk" and body(send) == "\u2717 not sent: 400 number blocked"


def test_status_rows(pbx):
    pbx.ast.login(contacts=["john.doe"])
    john, desk = pbx.inbound(JOHN, "x")
    pbx.run()
    [send] = pbx.ast.sends()
    pbx.ast.ok(send)
    pbx.run()
    rows = pbx.rows()
    ami = rows["AMI 127.0.0.1:5038"]
    assert (ami.kind, ami.state) == ("ami", "up")
    assert "PJSIPShowContacts at login" in ami.detail and "amisecret" not in repr(ami)
    j = rows["john.doe"]
    assert (j.kind, j.state) == ("phone", "registered")
    assert j.info["registered"] is True and j.info["waiting"] == 0
    assert j.info["last_delivery"] == pbx.clock.seconds() and "last delivery" in j.detail
    d = rows["desk"]
    assert (d.state, d.info["waiting"]) == ("not registered", 1)
    assert "1 waiting for it" in d.detail and d.info["down"] == "phone desk is not registered"
    assert rows["jane.doe"].info["numbers"] == ["+12025550183"]
    pbx.ast.lose()
    assert {r.state for r in pbx.rows().values() if r.kind == "phone"} == {"down"}
    assert pbx.rows()["AMI 127.0.0.1:5038"].state == "down"


def test_a_session_closing_before_it_says_so_pauses_instead_of_spinning(pbx):
    pbx.ast.login(contacts=["john.doe"])
    pbx.ast.proto.drop("keepalive not answered")  # closing; connectionLost not yet seen
    [john, _] = pbx.inbound(JOHN, "x")
    pbx.run()
    assert pbx.row(john.id)[:2] == ("queued", 0)
    assert pbx.down("john.doe") == f"{NO_SESSION} (closing)"
    pbx.run(60)  # no busy loop: the clock gets through
    pbx.ast.lose()
    assert pbx.down("john.doe") == NO_SESSION
    pbx.run(5.0)
    ast = pbx.ast = Asterisk(pbx.endpoint)
    ast.login(contacts=["john.doe"])
    pbx.run()
    [send] = ast.sends()
    assert body(send) == "x"
