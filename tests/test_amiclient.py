"""websmsd.ami.client: the Twisted AMI client service.

Deterministic: a fake endpoint hands out StringTransports, MemoryReactorClock is the
clock.  The last test runs the real client on a real (private) reactor against
tests/amipeer.py, the fake AMI server black-box tests use.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import List

import pytest
from twisted.application.internet import backoffPolicy
from twisted.internet import defer, error
from twisted.internet.address import IPv4Address
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.logger import formatEvent, globalLogPublisher
from twisted.python.failure import Failure

from websmsd.ami.protocol import AMIEncodeError, ActionResult, message_send
from websmsd.ami.client import (
    CONNECTING,
    DISCONNECTED,
    LOGGED_IN,
    LOGIN_FAILED,
    STOPPED,
    ActionFailed,
    ActionLost,
    ActionTimeout,
    AMIClient,
    NotConnected,
)

_HERE = Path(__file__).resolve().parent
TRANSCRIPTS = json.loads((_HERE / "fixtures" / "asterisk" / "ami_transcripts.json").read_text())
SECRET = "s3cret-never-logged"


def parse_actions(data: bytes) -> List[dict]:
    """What the client wrote, read independently of websmsd's parser."""
    out = []
    for block in data.split(b"\r\n\r\n"):
        if not block:
            continue
        fields = [line.split(b": ", 1) for line in block.split(b"\r\n")]
        out.append({k.decode(): v.decode() for k, v in fields})
    return out


class Conn:
    def __init__(self, proto, transport):
        self.proto = proto
        self.transport = transport
        self._seen = 0

    def say(self, data):
        if isinstance(data, str):
            data = data.encode()
        self.proto.dataReceived(data)

    def actions(self):
        return parse_actions(self.transport.value())

    def new_actions(self):
        acts = self.actions()
        new, self._seen = acts[self._seen:], len(acts)
        return new

    def last(self):
        return self.actions()[-1]

    def lose(self, exc=error.ConnectionDone):
        self.proto.connectionLost(Failure(exc()))

    @property
    def closing(self):
        return self.transport.disconnecting


class FakeEndpoint:
    def __init__(self):
        self.attempts: List[defer.Deferred] = []
        self.factory = None
        self.conns: List[Conn] = []

    def connect(self, factory):
        self.factory = factory
        d = defer.Deferred()
        self.attempts.append(d)
        return d

    def accept(self):
        d = self.attempts[-1]
        proto = self.factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 5038))
        tr = StringTransport(peerAddress=IPv4Address("TCP", "127.0.0.1", 5038))
        proto.makeConnection(tr)
        conn = Conn(proto, tr)
        self.conns.append(conn)
        d.callback(proto)
        return conn

    def refuse(self):
        self.attempts[-1].errback(error.ConnectionRefusedError("Connection refused"))


class Harness:
    def __init__(self, **kw):
        self.reactor = MemoryReactorClock()
        self.endpoint = FakeEndpoint()
        self.states = []
        kw.setdefault("retry_policy", backoffPolicy(initialDelay=1.0, factor=2.0, jitter=lambda: 0))
        self.client = AMIClient(self.reactor, self.endpoint, "admin", SECRET,
                                on_state=lambda kind, detail: self.states.append((kind, detail)),
                                name="pbx", **kw)
        self.events = []
        self.client.subscribe(self.events.append)

    def start(self):
        self.client.startService()
        return self

    def login(self, banner="Asterisk Call Manager/11.0.0\r\n"):
        conn = self.endpoint.accept()
        conn.say(banner)
        login = conn.new_actions()[-1]
        assert login["Action"] == "Login"
        conn.say(f"Response: Success\r\nActionID: {login['ActionID']}\r\n"
                 "Message: Authentication accepted\r\n\r\n")
        assert self.client.state == LOGGED_IN
        return conn

    def advance(self, seconds):
        self.reactor.advance(seconds)

    @property
    def attempts(self):
        return len(self.endpoint.attempts)


def results(d):
    out = []
    d.addBoth(out.append)
    return out


def answer(conn, action, *lines):
    conn.say(f"Response: Success\r\nActionID: {action['ActionID']}\r\n"
             + "".join(line + "\r\n" for line in lines) + "\r\n")


@pytest.fixture
def captured_logs():
    events = []
    globalLogPublisher.addObserver(events.append)
    yield events
    globalLogPublisher.removeObserver(events.append)


# ------------------------------------------------------------------- login


def test_login_after_banner_with_credentials_and_events(captured_logs):
    h = Harness(events="system,message").start()
    assert h.client.state == CONNECTING and h.attempts == 1
    conn = h.endpoint.accept()
    assert conn.transport.value() == b""  # nothing before the banner
    conn.say("Asterisk Call Manager/11.0.0\r\n")
    (login,) = conn.new_actions()
    assert login == {"Action": "Login", "ActionID": login["ActionID"], "Username": "admin",
                     "Secret": SECRET, "Events": "system,message"}
    waited = results(h.client.whenLoggedIn())
    assert waited == [] and not h.client.logged_in
    assert results(h.client.action("Ping"))[0].check(NotConnected)
    conn.say(f"Response: Success\r\nActionID: {login['ActionID']}\r\n"
             "Message: Authentication accepted\r\n\r\n"
             "Event: FullyBooted\r\nPrivilege: system,all\r\nStatus: Fully Booted\r\n\r\n")
    assert waited == [h.client]
    assert h.client.logged_in and h.client.state == LOGGED_IN
    assert h.client.banner == "Asterisk Call Manager/11.0.0"
    assert h.states == [(CONNECTING, ""), (LOGGED_IN, "")]
    assert [e.event for e in h.events] == ["FullyBooted"]
    assert results(h.client.whenLoggedIn()) == [h.client]
    text = "\n".join(formatEvent(e) + repr(e) for e in captured_logs)
    assert "admin" in text and SECRET not in text


def test_login_replayed_from_the_fixture_session():
    h = Harness().start()
    conn = h.endpoint.accept()
    chunks = [e["data"] for e in TRANSCRIPTS["session"] if e["dir"] == "asterisk->client" and "data" in e]
    conn.say(chunks[0])
    assert conn.new_actions()[0]["ActionID"] == "1"  # the fixture's Login had ActionID 1
    conn.say(chunks[1])
    assert h.client.state == LOGGED_IN
    assert [e.event for e in h.events] == ["FullyBooted", "SuccessfulAuth"]


def test_events_off_none_and_list():
    h = Harness(events=None).start()
    conn = h.endpoint.accept()
    conn.say("Asterisk Call Manager/1.1\r\n")
    assert "Events" not in conn.last()
    h2 = Harness(events=["system", "call"]).start()
    c2 = h2.endpoint.accept()
    c2.say("Asterisk Call Manager/1.1\r\n")
    assert c2.last()["Events"] == "system,call"


def test_bad_credentials_refused_at_construction():
    with pytest.raises(AMIEncodeError):
        AMIClient(MemoryReactorClock(), FakeEndpoint(), "admin\r\nAction: Originate", "x")
    with pytest.raises(AMIEncodeError):
        AMIClient(MemoryReactorClock(), FakeEndpoint(), "admin", "x\ny")
    with pytest.raises(AMIEncodeError):
        AMIClient(MemoryReactorClock(), FakeEndpoint(), "admin", "x", ping_action=("Bad Name", ()))


def test_login_failure_backs_off_long_and_never_storms(captured_logs):
    h = Harness().start()
    conn = h.endpoint.accept()
    chunks = [e["data"] for e in TRANSCRIPTS["login_failure"] if e["dir"] == "asterisk->client" and "data" in e]
    conn.say(chunks[0])
    conn.say(chunks[1].replace("ActionID: 1", f"ActionID: {conn.last()['ActionID']}"))
    assert h.client.state == "login failed: Authentication failed"
    assert h.client.state_kind == LOGIN_FAILED and h.client.detail == "Authentication failed"
    assert conn.closing  # we close too, not relying on Asterisk
    conn.lose()
    assert h.client.state == "login failed: Authentication failed"  # not overwritten
    # 30 s, then 60, 120, 240, 300, 300...
    expected_gaps = [30, 60, 120, 240, 300, 300]
    for gap in expected_gaps:
        before = h.attempts
        h.advance(gap - 0.5)
        assert h.attempts == before, gap
        h.advance(0.5)
        assert h.attempts == before + 1, gap
        c = h.endpoint.accept()
        c.say("Asterisk Call Manager/11.0.0\r\n")
        c.say(f"Response: Error\r\nActionID: {c.last()['ActionID']}\r\n"
              "Message: Authentication failed\r\n\r\n")
        c.lose()
    # In the first hour: 1 + 6 attempts above plus at most one per 5 minutes.
    before = h.attempts
    h.advance(600 - 1)
    assert h.attempts == before + 1
    text = "\n".join(formatEvent(e) + repr(e) for e in captured_logs)
    assert "Authentication failed" in text and SECRET not in text


def test_login_success_after_failures_resets_the_backoff():
    h = Harness().start()
    c = h.endpoint.accept()
    c.say("Banner\r\n")
    c.say(f"Response: Error\r\nActionID: {c.last()['ActionID']}\r\nMessage: Authentication failed\r\n\r\n")
    c.lose()
    h.advance(30)
    c = h.login()
    c.lose()
    assert h.client.state == "disconnected: connection closed by the peer"
    h.advance(2)  # backoffPolicy(1, factor 2)(1) = 2 s, not the login backoff
    assert h.attempts == 3


def test_login_without_actionid_echo_tg_style():
    h = Harness().start()
    c = h.endpoint.accept()
    c.say(b"Asterisk Call Manager/1.1\r\nResponse: Success\r\nMessage: Authentication accepted\r\n\r\n")
    assert h.client.state == LOGGED_IN


def test_no_banner_drops_and_retries():
    h = Harness(action_timeout=5).start()
    c = h.endpoint.accept()
    h.advance(5)
    assert c.closing and c.transport.disconnected  # aborted
    c.lose(error.ConnectionAborted)
    assert h.client.state == "disconnected: no AMI banner within 5 s"
    # A session that never logged in counts as a failed attempt: policy(2) = 4 s.
    h.advance(3.9)
    assert h.attempts == 1
    h.advance(0.1)
    assert h.attempts == 2


def test_no_answer_to_login_drops():
    h = Harness(action_timeout=5).start()
    c = h.endpoint.accept()
    c.say("Asterisk Call Manager/11.0.0\r\n")
    h.advance(5)
    assert c.closing
    c.lose()
    assert h.client.state == "disconnected: no answer to Login within 5 s"


def test_connection_refused_state_and_backoff():
    h = Harness().start()
    h.endpoint.refuse()
    assert h.client.state_kind == DISCONNECTED
    assert "refused" in h.client.detail.lower()
    h.advance(1.99)
    assert h.attempts == 1
    h.advance(0.01)
    assert h.attempts == 2 and h.client.state == CONNECTING


def test_peer_that_accepts_and_closes_gets_a_growing_backoff():
    h = Harness().start()
    gaps = []
    for _ in range(6):
        c = h.endpoint.accept()
        c.lose()
        start = h.reactor.seconds()
        n = h.attempts
        while h.attempts == n:
            h.advance(0.5)
        gaps.append(h.reactor.seconds() - start)
    assert gaps == sorted(gaps) and gaps[-1] >= 8 * gaps[0]


# ------------------------------------------------------------------- actions


def test_action_correlation_with_interleaved_events():
    h = Harness().start()
    c = h.login()
    d1 = results(h.client.action("MessageSend", message_send("pjsip:bob", "+1", b"hi")))
    d2 = results(h.client.action("Ping"))
    a1, a2 = c.new_actions()
    assert a1["Action"] == "MessageSend" and a1["Base64Body"] == "aGk="
    assert a1["ActionID"] != a2["ActionID"]
    c.say("Event: PeerStatus\r\nPrivilege: system,all\r\nPeer: PJSIP/alice\r\nPeerStatus: Reachable\r\n\r\n"
          f"Response: Success\r\nActionID: {a2['ActionID']}\r\nPing: Pong\r\n\r\n"
          "Event: ContactStatus\r\nContactStatus: NonQualified\r\n\r\n")
    assert d1 == [] and d2[0].ok and d2[0].get("Ping") == "Pong"
    c.say(f"Response: Error\r\nActionID: {a1['ActionID']}\r\nMessage: Message failed to send.\r\n\r\n")
    r = d1[0]
    assert isinstance(r, ActionResult) and not r.ok and r.message == "Message failed to send."
    assert [e.event for e in h.events] == ["PeerStatus", "ContactStatus"]


def test_list_action_gathers_events_pjsipshowcontacts():
    h = Harness().start()
    c = h.login()
    d = results(h.client.action("PJSIPShowContacts"))
    (a,) = c.new_actions()
    aid = a["ActionID"]
    c.say(f"Response: Success\r\nActionID: {aid}\r\nEventList: start\r\n"
          "Message: A listing of Contacts follows, presented as ContactList events\r\n\r\n"
          f"Event: ContactList\r\nActionID: {aid}\r\nEndpoint: alice\r\nStatus: NonQualified\r\n\r\n"
          "Event: PeerStatus\r\nPeerStatus: Unreachable\r\n\r\n"
          f"Event: ContactList\r\nActionID: {aid}\r\nEndpoint: bob\r\nStatus: Reachable\r\n\r\n")
    assert d == []
    c.say(f"Event: ContactListComplete\r\nActionID: {aid}\r\nEventList: Complete\r\nListItems: 2\r\n\r\n")
    (r,) = d
    assert [(e.get("Endpoint"), e.get("Status")) for e in r.events] == [
        ("alice", "NonQualified"), ("bob", "Reachable")]
    assert r.list_complete.get("ListItems") == "2"
    assert [e.event for e in h.events] == ["PeerStatus"]


def test_action_timeout_and_late_answer_is_ignored(captured_logs):
    h = Harness(action_timeout=10).start()
    c = h.login()
    d = results(h.client.action("MessageSend", [("To", "pjsip:bob")], timeout=3))
    (a,) = c.new_actions()
    h.advance(2.9)
    assert d == []
    h.advance(0.1)
    assert d[0].check(ActionTimeout)
    c.say(f"Response: Success\r\nActionID: {a['ActionID']}\r\nMessage: late\r\n\r\n")
    assert h.client.logged_in and not c.closing
    assert any("abandoned ActionID" in formatEvent(e) for e in captured_logs)


def test_action_not_logged_in_and_encode_errors_send_nothing():
    h = Harness()
    assert results(h.client.action("Ping"))[0].check(NotConnected)
    h.start()
    c = h.login()
    before = c.transport.value()
    f = results(h.client.action("MessageSend", [("From", "+1\r\nAction: Originate")]))[0]
    assert f.check(AMIEncodeError)
    f = results(h.client.action("MessageSend", message_send("pjsip:a", "+1", b"x" * 756)
                                + [("X", "y" * 1100)]))[0]
    assert f.check(AMIEncodeError)
    assert c.transport.value() == before


def test_cancelling_an_action_forgets_it():
    h = Harness().start()
    c = h.login()
    d = h.client.action("Ping")
    out = results(d)
    d.cancel()
    assert out[0].check(defer.CancelledError)
    (a,) = c.new_actions()
    answer(c, a, "Ping: Pong")  # late answer: logged, harmless
    assert h.client.logged_in


def test_connection_loss_fails_pending_at_once_and_nothing_is_resent():
    h = Harness().start()
    c = h.login()
    d1 = results(h.client.action("MessageSend", message_send("pjsip:bob", "+1", b"once")))
    d2 = results(h.client.action("PJSIPShowContacts"))
    c.lose(error.ConnectionLost)
    assert d1[0].check(ActionLost) and d2[0].check(ActionLost)
    assert "may or may not have run" in str(d1[0].value)
    assert h.client.state_kind == DISCONNECTED and not h.client.logged_in
    assert results(h.client.action("Ping"))[0].check(NotConnected)
    h.advance(2)
    c2 = h.login()
    assert [a["Action"] for a in c2.actions()] == ["Login"]
    assert b"once" not in c2.transport.value() and b"b25jZQ" not in c2.transport.value()


def test_action_fired_from_a_lost_callback_is_not_connected():
    h = Harness().start()
    c = h.login()
    retried = []
    h.client.action("Ping").addErrback(lambda f: retried.append(results(h.client.action("Ping"))[0]))
    c.lose()
    assert retried[0].check(NotConnected)


def test_protocol_error_drops_the_connection():
    h = Harness(max_packet=1000).start()
    c = h.login()
    c.say(b"Event: Flood\r\nData: " + b"x" * 2000)
    assert c.closing
    c.lose(error.ConnectionAborted)
    assert h.client.state.startswith("disconnected: protocol error: a line of over 1000 bytes")


# ------------------------------------------------------------------- commands


def test_command_asterisk_output_lines():
    h = Harness().start()
    c = h.login()
    d = results(h.client.command("pjsip show endpoints"))
    (a,) = c.new_actions()
    assert (a["Action"], a["Command"]) == ("Command", "pjsip show endpoints")
    answer(c, a, "Message: Command output follows", "Output: ", "Output:  Endpoint:  alice",
           "Output: Objects found: 1")
    assert d == ["\n Endpoint:  alice\nObjects found: 1"]


def test_command_error_fails_with_the_output():
    h = Harness().start()
    c = h.login()
    d = results(h.client.command("no such cli command"))
    (a,) = c.new_actions()
    c.say(f"Response: Error\r\nActionID: {a['ActionID']}\r\nMessage: Command output follows\r\n"
          "Output: No such command 'no such cli command'\r\n\r\n")
    f = d[0]
    assert f.check(ActionFailed)
    assert "No such command" in str(f.value)
    assert f.value.result.command_output() == "No such command 'no such cli command'"


def test_command_tg_follows_framing_glued_end():
    h = Harness().start()
    c = h.login(banner="Asterisk Call Manager/1.1\r\n")
    d = results(h.client.command("gsm show span 2", action="smscommand"))
    (a,) = c.new_actions()
    assert a["Action"] == "smscommand" and a["Command"] == "gsm show span 2"
    c.say(f"Response: Follows\r\nPrivilege: SMSCommand\r\nActionID: {a['ActionID']}\r\n"
          "Signal Quality (0,31): 25\nLast send AT: AT+CREG?\\r\\n--END COMMAND--\r\n\r\n")
    assert d == ["Signal Quality (0,31): 25\nLast send AT: AT+CREG?\\r\\n"]
    d = results(h.client.command("gsm send sms 2 123 \"hi\" 7", action="smscommand"))
    (a,) = c.new_actions()
    c.say(f"Response: Follows\r\nPrivilege: SMSCommand\r\nActionID: {a['ActionID']}\r\n"
          "--END COMMAND--\r\n\r\n")
    assert d == [""]


# ------------------------------------------------------------------- liveness


def test_ping_only_when_idle_and_answered_ping_keeps_the_link():
    h = Harness(ping_interval=30, action_timeout=10).start()
    c = h.login()
    h.advance(29)
    c.say("Event: Noise\r\n\r\n")  # traffic resets the idle timer
    h.advance(29)
    assert c.new_actions() == []
    h.advance(1)
    (ping,) = c.new_actions()
    assert ping["Action"] == "Ping"
    h.advance(9)
    answer(c, ping, "Ping: Pong")
    h.advance(29.9)
    assert c.new_actions() == []
    h.advance(0.1)
    assert [a["Action"] for a in c.new_actions()] == ["Ping"]
    assert not c.closing


def test_unanswered_ping_drops_and_reconnects():
    h = Harness(ping_interval=30, action_timeout=10).start()
    c = h.login()
    h.advance(30)
    (ping,) = c.new_actions()
    h.advance(10)
    assert c.closing and c.transport.disconnected
    c.lose(error.ConnectionAborted)
    assert h.client.state == "disconnected: no answer to keepalive Ping within 10 s"
    h.advance(2)
    assert h.attempts == 2


def test_tg_keepalive_smscommand_error_answer_counts_as_alive():
    h = Harness(ping_interval=30, action_timeout=10,
                ping_action=("smscommand", [("command", "gsm show spans")])).start()
    c = h.login(banner="Asterisk Call Manager/1.1\r\n")
    h.advance(30)
    (ping,) = c.new_actions()
    assert (ping["Action"], ping["command"]) == ("smscommand", "gsm show spans")
    c.say(f"Response: Error\r\nActionID: {ping['ActionID']}\r\nMessage: whatever\r\n\r\n")
    h.advance(10)
    assert not c.closing and h.client.logged_in


def test_no_ping_while_an_action_is_outstanding_then_quick_check_after_silent_timeout():
    h = Harness(ping_interval=30, action_timeout=10).start()
    c = h.login()
    d = results(h.client.action("smscommand", [("command", "gsm send ussd 2 \"*100#\" 40")], timeout=45))
    c.new_actions()
    h.advance(44)
    assert c.new_actions() == []  # no ping queued behind the slow action
    h.advance(1)
    assert d[0].check(ActionTimeout)
    h.advance(0)
    (ping,) = c.new_actions()  # nothing heard since the action went out: check now
    assert ping["Action"] == "Ping"
    h.advance(10)
    assert c.closing


def test_ping_disabled():
    h = Harness(ping_interval=None).start()
    c = h.login()
    h.advance(3600)
    assert [a["Action"] for a in c.actions()] == ["Login"]


# ------------------------------------------------------------------- subscribers


def test_subscribers_survive_reconnect_filters_and_errors(captured_logs):
    h = Harness().start()
    sms = []
    boom = []

    def bad(packet):
        boom.append(packet)
        raise RuntimeError("subscriber bug")

    h.client.subscribe(bad)
    h.client.subscribe(sms.append, event="ReceivedSMS")
    unsub = h.client.subscribe(lambda p: None)
    unsub()
    unsub()
    c = h.login()
    received = (b"Event: ReceivedSMS\r\nPrivilege: all,smscommand\r\nID: \r\nGsmSpan: 2\r\n"
                b"Content: hi\r\n--END SMS EVENT--\r\n\r\n")
    c.say(received)
    c.say("Event: UpdateSMSSend\r\nID: 1\r\nStatus: 1\r\n--END SMS EVENT--\r\n\r\n")
    c.lose()
    h.advance(2)
    c2 = h.login()
    c2.say(received)
    assert [p.get("GsmSpan") for p in sms] == ["2", "2"]
    assert sms[0].bare_lines == ("--END SMS EVENT--",)
    assert [e.event for e in h.events] == ["ReceivedSMS", "UpdateSMSSend", "ReceivedSMS"]
    assert len(boom) == 3
    assert any("subscriber failed" in formatEvent(e) for e in captured_logs)


# ------------------------------------------------------------------- stop


def test_stop_sends_logoff_waits_for_goodbye_and_does_not_reconnect():
    h = Harness().start()
    c = h.login()
    pending = results(h.client.action("Ping"))
    done = results(h.client.stopService())
    logoff = c.actions()[-1]
    assert logoff["Action"] == "Logoff"
    assert results(h.client.action("Ping"))[0].check(NotConnected)
    assert not c.closing and done == []
    c.say(f"Response: Goodbye\r\nActionID: {logoff['ActionID']}\r\nMessage: Thanks for all the fish.\r\n\r\n")
    assert c.closing
    c.lose()
    assert done == [None]
    assert pending[0].check(ActionLost)
    assert h.client.state == STOPPED and h.states[-1] == (STOPPED, "")
    h.advance(3600)
    assert h.attempts == 1


def test_stop_bounded_when_logoff_unanswered():
    h = Harness(logoff_timeout=2).start()
    c = h.login()
    done = results(h.client.stopService())
    h.advance(1.9)
    assert not c.closing
    h.advance(0.1)
    assert c.closing
    c.lose()
    assert done == [None] and h.client.state == STOPPED


def test_stop_while_waiting_to_reconnect_and_login_waiters_fail():
    h = Harness().start()
    h.endpoint.refuse()
    waiting = results(h.client.whenLoggedIn())
    done = results(h.client.stopService())
    assert done == [None]
    assert waiting[0].check(NotConnected)
    h.advance(3600)
    assert h.attempts == 1
    h.client.startService()
    assert h.attempts == 2 and h.client.state == CONNECTING


# ------------------------------------------------------------------- amipeer, real reactor


class RealReactor:
    """A private reactor driven step by step (the global one cannot be restarted)."""

    def __init__(self):
        from twisted.internet.selectreactor import SelectReactor

        self.reactor = SelectReactor()

    def endpoint(self, port):
        from twisted.internet.endpoints import TCP4ClientEndpoint

        return TCP4ClientEndpoint(self.reactor, "127.0.0.1", port)

    def until(self, condition, timeout=10.0):
        deadline = self.reactor.seconds() + timeout
        while not condition():
            assert self.reactor.seconds() < deadline, "timed out"
            self.reactor.iterate(0.02)

    def wait(self, d, timeout=10.0):
        out = results(d)
        self.until(lambda: out, timeout)
        if isinstance(out[0], Failure):
            out[0].raiseException()
        return out[0]


def test_amipeer_tg_mode_with_the_real_client_on_a_real_reactor():
    from amipeer import AMIPeer

    rr = RealReactor()
    with AMIPeer(username="admin", secret=SECRET, tg=True, echo_action_id=False, spans=[2]) as peer:
        peer.commands["gsm show spans"] = "GSM span 2: Power on, Provisioned, Up, Active,Standard\n"
        got = []
        client = AMIClient(rr.reactor, rr.endpoint(peer.port), "admin", SECRET,
                           ping_action=("smscommand", [("command", "gsm show spans")]),
                           name="tg", retry_policy=lambda attempt: 0.05)
        client.subscribe(got.append)
        client.startService()
        try:
            assert rr.wait(client.whenLoggedIn()) is client
            assert rr.wait(client.command("gsm show spans", action="smscommand")) == (
                "GSM span 2: Power on, Provisioned, Up, Active,Standard\n")
            out = rr.wait(client.command('gsm send sms 2 5550001 "Hi%20there" 42', action="smscommand"))
            assert out == ""
            assert peer.sms_sent[0]["text"] == "Hi there" and peer.sms_sent[0]["id"] == "42"
            bad = rr.wait(client.command('gsm send sms 9 5550001 "x" 43', action="smscommand"))
            assert bad == "GSM span 9 is not available\n"
            assert len(peer.sms_sent) == 1
            assert not rr.wait(client.action("Ping")).ok  # the TG has no Ping
            rr.until(lambda: got)
            assert got[0].event == "UpdateSMSSend" and got[0].get("ID") == "42"
            assert got[0].get("Status") == "1"
            peer.push_received_sms(span=3, sender="+79991234567", text="Привет мир")
            rr.until(lambda: len(got) == 2)
            assert got[1].get("Content") == (
                "%EF%BB%BF%D0%9F%D1%80%D0%B8%D0%B2%D0%B5%D1%82+%D0%BC%D0%B8%D1%80")
            assert got[1].bare_lines == ("--END SMS EVENT--",)
            peer.drop()
            rr.until(lambda: not client.logged_in)
            assert client.state_kind == DISCONNECTED
            assert rr.wait(client.whenLoggedIn()) is client
            assert peer.logins == 2
        finally:
            rr.wait(client.stopService())
        assert peer.wait_for("Logoff").session == 2


def test_amipeer_asterisk_mode_with_the_real_client_on_a_real_reactor():
    from amipeer import AMIPeer

    rr = RealReactor()
    with AMIPeer(username="admin", secret="other", endpoints=["alice"]) as peer:
        peer.commands["core show version"] = "Asterisk 22.10.1 built by root\n"
        peer.contacts = [{"Endpoint": "alice", "Uri": "sip:alice@127.0.0.1:5062",
                          "Status": "NonQualified"}]
        states = []
        got = []
        client = AMIClient(rr.reactor, rr.endpoint(peer.port), "admin", SECRET, name="pbx",
                           events="system", login_retry=(0.05, 0.1),
                           on_state=lambda kind, detail: states.append((kind, detail)))
        client.subscribe(got.append)
        client.startService()
        try:
            rr.until(lambda: client.state_kind == LOGIN_FAILED)
            assert client.state == "login failed: Authentication failed"
            peer.secret = SECRET
            assert rr.wait(client.whenLoggedIn()) is client
            assert peer.login_attempts >= 2
            assert peer.wait_for("Login", count=2).get("Events") == "system"
            rr.until(lambda: got)
            assert got[0].event == "FullyBooted"

            body = "line one\r\n Привет 😀 ".encode()
            r = rr.wait(client.action("MessageSend", message_send("pjsip:alice", "+15015550100", body)))
            assert r.ok and r.message == "Message successfully sent"
            assert peer.messages == [{"to": "pjsip:alice", "from": "+15015550100", "body": body}]
            r = rr.wait(client.action("MessageSend", message_send("pjsip:nobody", "+1", b"x")))
            assert not r.ok and r.message == "Message failed to send."

            r = rr.wait(client.action("PJSIPShowContacts"))
            assert [e.get("Endpoint") for e in r.events] == ["alice"]
            assert r.list_complete.get("ListItems") == "1"
            assert rr.wait(client.command("core show version")) == "Asterisk 22.10.1 built by root"
            with pytest.raises(ActionFailed):
                rr.wait(client.command("no such command"))

            peer.push_event("PeerStatus", [("Privilege", "system,all"), ("ChannelType", "PJSIP"),
                                           ("Peer", "PJSIP/alice"), ("PeerStatus", "Unreachable")])
            rr.until(lambda: len(got) == 2)
            assert got[1].get("PeerStatus") == "Unreachable"
        finally:
            rr.wait(client.stopService())
        assert states[-1] == (STOPPED, "")
        assert (LOGIN_FAILED, "Authentication failed") in states


def test_amipeer_refuses_an_overlong_line_like_asterisk():
    import socket

    from amipeer import AMIPeer

    with AMIPeer() as peer, socket.create_connection(peer.address, timeout=10) as s:
        f = s.makefile("rb")
        assert f.readline() == b"Asterisk Call Manager/11.0.0\r\n"
        s.sendall(b"Action: Login\r\nActionID: 1\r\nUsername: admin\r\nSecret: secret\r\n\r\n")
        assert f.readline() == b"Response: Success\r\n"
        s.sendall(b"Action: MessageSend\r\nActionID: 2\r\nTo: pjsip:bob\r\nBody: "
                  + b"x" * 1100 + b"\r\n\r\n")
        peer.wait_for("MessageSend")
        text = b""
        while b"ActionID: 2" not in text or not text.endswith(b"\r\n\r\n"):
            text += s.recv(4096)
        assert b"Message: Failed to parse message: line too long" in text
        assert peer.messages == []
