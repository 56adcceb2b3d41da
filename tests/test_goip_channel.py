"""The GoIP channel layer: [goip] config, the SMPP SIM (bytes on a StringTransport, a
fake clock, a real store run inline), the UDP and web SIMs' mapping and status rows."""

from __future__ import annotations

import json
import textwrap
from collections import Counter

import pytest
from twisted.internet import defer
from twisted.internet.error import ConnectionDone, ConnectionLost
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure

from websmsd import sms
from websmsd.channel import Outcome
from websmsd.config import ConfigError, loads, report
from websmsd.config.goip import GoIPSim
from websmsd.goip.inbox import InboundLog, content_key
from websmsd.goip.linesim import UDPSim, WebSim
from websmsd.goip.outcome import SendOutcome
from websmsd.goip.sim import SimInfo, outcome_of, sender_from
from websmsd.goip.smppsim import SMPPSim
from websmsd.message import DELIVERED, FAILED, OUT, SENT, Message
from websmsd.metrics import Metrics
from websmsd.routing import router_for
from websmsd.smpp import pdu as P
from websmsd.store import Store

from conftest import fired

EXAMPLE = """\
[goip]
smpp_host        = 192.168.1.190
smpp_port        = 7777
system_id        = goip              ; channel N binds as goip + two digits: goip01
password         = secret
enquire_link     = 30
registered_delivery = yes
http_url         = http://192.168.1.190   ; GoIP web API: send.html, send_status.xml, USSD
http_user        = admin
http_password    = admin
udp_listen       = 44444             ; the GoIP "SMS server" protocol: the GoIP sends to us
channel  [sim1]  = 1
number   [sim1]  = +46701234567      ; the SIM's own number: MESSAGE(to) of its inbound SMS
transport[sim1]  = smpp              ; smpp (default) | udp | http
channel  [sim2]  = 2
number   [sim2]  = +46701234568
transport[sim2]  = udp
goip_id  [sim2]  = goip2             ; the line's SMS client ID in the GoIP's SMS-server page
goip_password[sim2] = linepass
"""


def conf(text):
    return loads(textwrap.dedent(text), "websms.conf", environ={})


def refused(text, line, key, *words):
    with pytest.raises(ConfigError) as caught:
        conf(text)
    e = caught.value
    assert (e.line, e.key) == (line, key), str(e)
    for word in words:
        assert word in str(e), str(e)
    return e


# -- config --------------------------------------------------------------------------------


def test_the_issue_example_loads_as_written():
    s = conf(EXAMPLE)
    goip = s.channels["goip"]
    sim1, sim2 = goip.interfaces
    assert (sim1.name, sim1.transport, sim1.channel, sim1.number) == (
        "sim1", "smpp", 1, ("+46701234567",))
    assert (sim1.smpp_host, sim1.smpp_port, sim1.bind_system_id, sim1.password) == (
        "192.168.1.190", 7777, "goip01", "secret")
    assert sim1.enquire_link == 30.0 and sim1.registered_delivery is True
    assert (sim1.http_url, sim1.http_user, sim1.http_password) == (
        "http://192.168.1.190", "admin", "admin")
    assert (sim2.transport, sim2.goip_id, sim2.goip_password, sim2.number) == (
        "udp", "goip2", "linepass", ("+46701234568",))
    assert goip.udp_address == ("", 44444)
    assert sim1.long_method == "payload" and sim1.window == 1
    assert ("sim1", "goip", ("+46701234567",), True) in s.interfaces()
    # WEBSMS_INDEX=sim1 sends through SIM 1; a reply leaves through the SIM it came to.
    router = router_for(s, inbound_route="callfile")
    assert router.outbound("+46709999999", "+100", "sim1").route == "goip:sim1"
    assert router.outbound("+46709999999", "+46701234568", None).route == "goip:sim2"


def test_unindexed_keys_apply_to_every_sim_and_an_indexed_host_is_another_gateway():
    s = conf("""
        [goip]
        smpp_host = 192.0.2.1
        password = pw
        system_id = gw
        channel [sim1] = 1
        channel [sim2] = 2
        channel [sim3] = 1
        smpp_host [sim3] = 192.0.2.2
        window = 10
        long_method [sim3] = udh
        """)
    sims = {i.name: i for i in s.channels["goip"].interfaces}
    assert [(i.smpp_host, i.bind_system_id, i.window, i.long_method) for i in sims.values()] == [
        ("192.0.2.1", "gw01", 10, "payload"), ("192.0.2.1", "gw02", 10, "payload"),
        ("192.0.2.2", "gw01", 10, "udh")]


def test_smpp_limits_are_checked_at_start_with_file_and_line():
    # system_id + two digits must fit SMPP's 15 characters
    refused("""
        [goip]
        smpp_host = 192.0.2.1
        password = pw
        system_id = goipgateway123
        channel [sim1] = 1
        """, 5, "system_id", "'goipgateway12301'", "at most 15")
    refused("""
        [goip]
        smpp_host = 192.0.2.1
        password = ninechars
        channel [sim1] = 1
        """, 4, "password", "9 characters", "at most 8")
    # the exact system_id when it is not suffixed
    s = conf("""
        [goip]
        smpp_host = 192.0.2.1
        password = pw
        system_id_suffix = no
        system_id [sim1] = goipsms04
        """)
    assert s.channels["goip"].interfaces[0].bind_system_id == "goipsms04"


@pytest.mark.parametrize("text, line, key, word", [
    ("[goip]\nchannel [sim1] = 1\npassword = x\n", 2, "smpp_host[sim1]", "smpp_host"),
    ("[goip]\nsmpp_host = h\nchannel [sim1] = 1\n", 3, "password[sim1]", "SMPP password"),
    ("[goip]\nsmpp_host = h\npassword = p\nnumber [sim1] = +1555\n", 4, "channel[sim1]",
     "two digits"),
    ("[goip]\ntransport [sim2] = udp\ngoip_id [sim2] = a\ngoip_password [sim2] = b\n", 2,
     "transport[sim2]", "udp_listen"),
    ("[goip]\nudp_listen = 9991\ntransport [sim2] = udp\ngoip_id [sim2] = a\n", 3,
     "goip_password[sim2]", "SMS server password"),
    ("[goip]\ntransport [s] = http\nchannel [s] = 3\n", 2, "http_url[s]", "web API"),
    ("[goip]\ntransport [s] = http\nhttp_url = http://h\nhttp_password = p\n", 2,
     "channel[s]", "line number"),
    ("[goip]\ntransport [s] = http\nhttp_url = http://h\nchannel [s] = 1\n", 2,
     "http_password[s]", "admin"),
    ("[goip]\ntransport [s] = sms\n", 2, "transport[s]", "smpp, udp, http"),
    ("[goip]\nchannel [s] = 99\n", 2, "channel[s]", "1-64"),
    ("[goip]\nudp_listen [s] = 9991\n", 2, "udp_listen[s]", "one UDP listener"),
    ("[goip]\nudp_listen = 70000\n", 2, "udp_listen", "port"),
    ("[goip]\nudp_listen = example.com:9991\n", 2, "udp_listen", "IP address"),
    ("[goip]\nhttp_url = http://admin:admin@h\n", 2, "http_url", "http_user"),
    ("[goip]\nsmpp_host = a b\n", 2, "smpp_host", "host name"),
    ("[goip]\nlong_method = concat\n", 2, "long_method", "payload, udh, sar"),
    ("[goip]\nsmpp_hots = h\n", 2, "smpp_hots", "smpp_host"),
])
def test_what_each_sim_needs_is_named_with_its_line(text, line, key, word):
    refused(text, line, key, word)


def test_two_sims_on_one_line_or_bind_are_refused():
    refused("""
        [goip]
        udp_listen = 9991
        transport = udp
        goip_id [a] = line1
        goip_password [a] = x
        goip_id [b] = line1
        goip_password [b] = y
        """, 7, "goip_id[b]", "both", "same")
    refused("""
        [goip]
        smpp_host = h
        password = p
        channel [a] = 1
        channel [b] = 1
        """, 6, "system_id[b]", "'a' and 'b'")


def test_udp_listen_forms():
    for text, expected in (("44444", ("", 44444)), ("127.0.0.1:9", ("127.0.0.1", 9)),
                           ("[::1]:9", ("::1", 9)), ('"udp:9:interface=10.0.0.1"', ("10.0.0.1", 9))):
        s = conf(f"[goip]\nudp_listen = {text}\ngoip_id [a] = x\ngoip_password [a] = y\n"
                 "transport [a] = udp\n")
        assert s.channels["goip"].udp_address == expected
    assert conf("[goip]\nudp_listen = none\nsmpp_host = h\npassword = p\nchannel [a] = 1\n"
                ).channels["goip"].udp_address is None
    unused = conf("[goip]\nudp_listen = 9991\nsmpp_host = h\npassword = p\nchannel [a] = 1\n")
    assert any("websms.conf:2: udp_listen: no SIM has transport = udp" in w
               for w in unused.warnings)


def test_check_config_shows_the_sims_and_masks_every_password():
    text = report(conf(EXAMPLE))
    assert "[goip] interface 'sim1'" in text and "[goip] interface 'sim2'" in text
    for secret in ("= secret", "linepass", "http_password = admin"):
        assert secret not in text
    assert "http_password = ****" in text and "goip_password = ****" in text
    assert "password = ****" in text


def test_a_sim_without_number_is_a_warning_naming_its_extension():
    s = conf("[goip]\nsmpp_host = h\npassword = p\nchannel [sim4] = 4\n")
    assert any("no number (SIM 'sim4')" in w and "'sim4'" in w for w in s.warnings)
    assert SimInfo(s.channels["goip"].interfaces[0]).recipient == "sim4"


# -- the SMPP SIM, bytes on a StringTransport ------------------------------------------------


class Transport(StringTransport):
    """Closing reaches the protocol on the next turn of the clock, as with a reactor."""

    def __init__(self, clock):
        super().__init__()
        self.clock = clock
        self.protocol = None
        self.closed = False

    def loseConnection(self):
        super().loseConnection()
        self._later(ConnectionDone())

    def abortConnection(self):
        super().abortConnection()
        self._later(ConnectionLost("aborted"))

    def _later(self, reason):
        if not self.closed:
            self.closed = True
            self.clock.callLater(0, self.protocol.connectionLost, Failure(reason))

    def drop(self):
        if not self.closed:
            self.closed = True
            self.protocol.connectionLost(Failure(ConnectionLost("dropped")))


class Endpoint:
    def __init__(self, clock):
        self.clock = clock
        self.transports = []

    def connect(self, factory):
        proto = factory.buildProtocol(None)
        tr = Transport(self.clock)
        tr.protocol = proto
        proto.makeConnection(tr)
        self.transports.append(tr)
        return defer.succeed(proto)

    @property
    def tr(self):
        return self.transports[-1]


def take(tr):
    data = tr.value()
    tr.clear()
    events = P.PDUReader().feed(data)
    assert all(isinstance(e, P.PDU) for e in events), events
    return events


class Dispatcher:
    def __init__(self):
        self.down = {}
        self.calls = []

    def set_down(self, route, reason):
        self.calls.append((route, reason))
        self.down[route] = reason


class Harness:
    """An SMPPSim on a fake clock and transport, with a real store run inline."""

    def __init__(self, path, store=None, **sim):
        self.clock = Clock()
        self.clock.advance(1_700_000_000)
        self.path = path
        self.store = store or self.open_store()
        self.gates = []  # commits wait for these when `hold` is set
        self.hold = False
        self.fail = 0
        self.commits = []
        sim.setdefault("smpp_host", "192.0.2.1")
        sim.setdefault("password", "secret")
        sim.setdefault("channel", 1)
        sim.setdefault("number", ("+46701234567",))
        self.info = SimInfo(GoIPSim(name="sim1", **sim))
        self.endpoint = Endpoint(self.clock)
        self.dispatcher = Dispatcher()
        self.metrics = Metrics()
        self.reports = Counter()
        self.sim = SMPPSim(self.info, reactor=self.clock, endpoint=self.endpoint,
                           accept=self.accept, store=self.store, dispatcher=self.dispatcher,
                           metrics=self.metrics, reports=self.reports)

    def open_store(self):
        store = Store(str(self.path / "store.sqlite3"), self.clock, run_inline=True)
        store.open()
        return store

    def accept(self, messages, state=None):
        for m in messages:
            m.route = "callfile"
        if self.fail:
            self.fail -= 1
            return defer.fail(RuntimeError("disk full"))
        if self.hold:
            gate = defer.Deferred()
            self.gates.append(gate)
            return gate.addCallback(lambda _: self._add(messages, state))
        return self._add(messages, state)

    def _add(self, messages, state):
        self.commits.append((list(messages), state))
        return self.store.add(messages, state=state)

    def start(self, bound=True):
        self.sim.startService()
        if bound:
            self.accept_bind()
        return self

    def accept_bind(self):
        (req,) = take(self.endpoint.tr)
        assert req.command == "bind_transceiver"
        body = req.get("system_id").encode()  # a GoIP leaves out the NUL
        self.feed(P.HEADER.pack(16 + len(body), 0x80000009, 0, req.sequence) + body)
        assert self.sim.bind.bound
        return req

    def feed(self, *items):
        self.endpoint.tr.protocol.dataReceived(
            b"".join(i.encode() if isinstance(i, P.PDU) else i for i in items))

    def deliver(self, seq, **fields):
        fields.setdefault("source_addr", "+46709876543")
        fields.setdefault("destination_addr", "goip01")
        self.feed(P.PDU("deliver_sm", seq, fields=fields))

    def answers(self):
        return [(p.command, p.sequence, p.status) for p in take(self.endpoint.tr)]

    def inbound(self):
        return rows(
            self.store, "SELECT recipient, sender, body, source, route FROM messages WHERE direction = 'in'"
            " ORDER BY created, id")

    def out(self, body="hello", to="+46701112233", **kw):
        m = Message(OUT, "goip:sim1", to, "+100", body, **kw)
        m.created = self.clock.seconds()
        return m

    def sent(self, message):
        """Send `message` through the SIM; (outcome or None, the submit_sm PDUs)."""
        results = []
        self.sim.send(message).addBoth(results.append)
        return results, take(self.endpoint.tr)


def rows(store, sql, args=()):
    return store._db.execute(sql, args).fetchall()


@pytest.fixture
def h(tmp_path):
    harness = Harness(tmp_path)
    yield harness
    harness.store.close()


def test_binds_as_the_sims_system_id_and_the_route_follows_the_bind(h):
    h.start(bound=False)
    assert h.dispatcher.down["goip:sim1"] and "binding" in h.dispatcher.down["goip:sim1"]
    req = h.accept_bind()
    assert (req.get("system_id"), req.get("password"), req.get("interface_version")) == (
        "goip01", "secret", 0x34)
    assert h.dispatcher.down["goip:sim1"] is None
    row = h.sim.status()
    assert (row.state, row.kind, row.name) == ("up", "goip", "sim1")
    assert "bound as goip01 to 192.0.2.1:7777" in row.detail and "+46701234567" in row.detail
    h.endpoint.tr.drop()
    assert "connection lost" in h.dispatcher.down["goip:sim1"]
    assert h.sim.status().state == "down"
    h.clock.advance(5)
    h.accept_bind()
    assert h.dispatcher.down["goip:sim1"] is None


def test_a_refused_bind_says_check_system_id_and_password(h):
    h.start(bound=False)
    (req,) = take(h.endpoint.tr)
    h.feed(P.PDU("bind_transceiver_resp", req.sequence, P.ESME_RINVPASWD))
    h.clock.advance(0)
    row = h.sim.status()
    assert row.state == "error" and "check system_id/password" in row.detail
    assert "check system_id/password" in h.dispatcher.down["goip:sim1"]


def test_submit_sm_as_a_goip_takes_it_and_sent_without_waiting_for_a_receipt(h):
    h.start()
    results, (submit,) = h.sent(h.out("Hej då"))
    f = submit.fields
    assert (f["destination_addr"], f["dest_addr_ton"], f["dest_addr_npi"]) == ("46701112233", 1, 1)
    assert (f["source_addr"], f["source_addr_ton"], f["source_addr_npi"]) == ("", 5, 1)
    assert f["registered_delivery"] == 1 and f["data_coding"] == 0
    assert sms.gsm_decode(f["short_message"]) == "Hej då"
    assert results == []  # nothing until the answer
    h.feed(P.PDU("submit_sm_resp", submit.sequence, message_id="00000E7C"))
    assert results == [Outcome.sent(provider_id="e7c")]


def test_a_long_text_goes_in_message_payload_and_ucs2_when_needed(h):
    h.start()
    text = "Привет " * 30
    results, (submit,) = h.sent(h.out(text, to="0701112233"))
    assert submit.get("short_message") == b"" and submit.get("data_coding") == 8
    assert submit.get("message_payload").decode("utf-16-be") == text
    assert submit.get("dest_addr_ton") == 0  # a national number is no international one


def test_udh_parts_resume_where_a_throttle_stopped_them(tmp_path):
    h = Harness(tmp_path, long_method="udh").start()
    m = h.out("x" * 200)
    results, (first,) = h.sent(m)
    h.feed(P.PDU("submit_sm_resp", first.sequence, message_id="10"))
    (second,) = take(h.endpoint.tr)
    h.feed(P.PDU("submit_sm_resp", second.sequence, P.ESME_RTHROTTLED))
    (outcome,) = results
    assert outcome.retry_in == 1.0 and outcome.progress == 1 and not outcome.ok
    m.progress = 1
    h.clock.advance(1.5)
    results, (again,) = h.sent(m)
    assert again.get("short_message")[:6] == second.get("short_message")[:6]  # part 2 of 2
    h.feed(P.PDU("submit_sm_resp", again.sequence, message_id="11"))
    assert results[0].ok


def test_throttled_slows_the_sim_down_without_spending_attempts(h):
    h.start()
    results, (submit,) = h.sent(h.out())
    h.feed(P.PDU("submit_sm_resp", submit.sequence, P.ESME_RTHROTTLED))
    assert results[0].retry_in == 1.0 and results[0].code == P.ESME_RTHROTTLED
    # while held, a send waits for the hold to end
    results, submits = h.sent(h.out())
    assert submits == [] and results == []
    h.clock.advance(1)
    (submit,) = take(h.endpoint.tr)
    h.feed(P.PDU("submit_sm_resp", submit.sequence, P.ESME_RMSGQFUL))
    assert results[0].retry_in == 2.0  # doubled
    h.clock.advance(2)
    results, (submit,) = h.sent(h.out())
    h.feed(P.PDU("submit_sm_resp", submit.sequence, message_id="5"))
    assert results[0].ok and h.sim.counts["throttled"] == 2
    results, (submit,) = h.sent(h.out())
    h.feed(P.PDU("submit_sm_resp", submit.sequence, P.ESME_RTHROTTLED))
    assert results[0].retry_in == 1.0  # a success reset it


@pytest.mark.parametrize("status, permanent", [
    (P.ESME_RINVDSTADR, True), (P.ESME_RSYSERR, False), (P.ESME_RSUBMITFAIL, False),
    (P.ESME_ROPTPARNOTALLWD, True),
])
def test_error_answers(h, status, permanent):
    h.start()
    results, (submit,) = h.sent(h.out())
    h.feed(P.PDU("submit_sm_resp", submit.sequence, status))
    (o,) = results
    assert not o.ok and o.permanent is permanent and o.code == status and not o.down
    assert P.status_name(status) in o.reason


def test_no_answer_or_a_lost_connection_may_have_been_sent(h):
    h.start()
    results, _ = h.sent(h.out())
    h.clock.advance(20)
    assert "may have been sent" in results[0].reason and not results[0].permanent
    assert results[0].retry_in is None and not results[0].down
    results, _ = h.sent(h.out())
    h.endpoint.tr.drop()
    assert "may have been sent" in results[0].reason
    # not bound now: the route is down, no attempt spent
    results = []
    h.sim.send(h.out()).addBoth(results.append)
    assert results[0].down and "not bound" in results[0].reason


def test_a_text_no_sms_can_carry_fails_for_good(h):
    h.start()
    results = []
    h.sim.send(h.out(to="+4670 11")).addBoth(results.append)
    assert results[0].permanent and "cannot be sent as SMS" in results[0].reason


# -- inbound -----------------------------------------------------------------------------------


def test_deliver_sm_is_answered_only_once_committed(h):
    h.start()
    h.hold = True
    h.deliver(7, data_coding=8, short_message="Привет 👋".encode("utf-16-be"))
    assert h.answers() == [] and h.inbound() == []
    h.gates.pop(0).callback(None)
    assert h.answers() == [("deliver_sm_resp", 7, 0)]
    assert h.inbound() == [("+46701234567", "+46709876543", "Привет 👋", "goip:sim1", "callfile")]
    assert h.sim.counts["received"] == 1


def test_a_failed_commit_makes_the_smsc_resend_and_the_resend_is_stored_once(h):
    h.start()
    h.fail = 1
    h.deliver(1, short_message=b"hello")
    assert h.answers() == [("deliver_sm_resp", 1, P.ESME_RX_T_APPN)]
    assert h.inbound() == []
    h.deliver(2, short_message=b"hello")
    assert h.answers() == [("deliver_sm_resp", 2, 0)]
    assert [r[2] for r in h.inbound()] == ["hello"]


def test_a_copy_arriving_while_the_first_is_committed_is_stored_once(h):
    h.start()
    h.hold = True
    h.deliver(1, short_message=b"twice")
    h.deliver(2, short_message=b"twice")
    assert len(h.gates) == 1
    h.gates.pop(0).callback(None)
    assert sorted(h.answers()) == [("deliver_sm_resp", 1, 0), ("deliver_sm_resp", 2, 0)]
    assert len(h.inbound()) == 1


def test_a_resend_after_a_reconnect_is_not_delivered_twice_but_a_repeat_is(tmp_path):
    h = Harness(tmp_path, resend_window=20).start()
    h.deliver(1, short_message=b"OK")
    h.answers()
    h.deliver(2, short_message=b"OK")  # the same text again on the same connection
    h.answers()
    assert len(h.inbound()) == 2
    h.endpoint.tr.drop()
    h.clock.advance(5)
    h.accept_bind()
    h.deliver(1, short_message=b"OK")  # the SMSC missed our answer: resends
    assert h.answers() == [("deliver_sm_resp", 1, 0)]
    assert len(h.inbound()) == 2 and h.sim.counts["resends"] == 1
    # outside the window it is a new SMS again
    h.clock.advance(16)
    h.endpoint.tr.drop()
    h.clock.advance(5)
    h.accept_bind()
    h.deliver(1, short_message=b"OK")
    h.answers()
    assert len(h.inbound()) == 3


def test_a_resend_after_a_restart_is_not_delivered_twice(h, tmp_path):
    h.start()
    h.deliver(1, short_message=b"before the crash")
    h.answers()  # our answer "got lost" with the process
    again = Harness(tmp_path, store=h.store)
    again.clock.advance(30)
    again.start()
    again.deliver(1, short_message=b"before the crash")
    assert again.answers() == [("deliver_sm_resp", 1, 0)]
    assert len(again.inbound()) == 1


def udh_part(ref, total, seq, text):
    return bytes([5, 0, 3, ref, total, seq]) + text.encode("utf-16-be")


def test_udh_parts_out_of_order_make_one_text_each_part_answered(h):
    h.start()
    h.deliver(1, esm_class=0x40, data_coding=8, short_message=udh_part(9, 2, 2, "world"))
    assert h.answers() == [("deliver_sm_resp", 1, 0)] and h.inbound() == []
    h.deliver(2, esm_class=0x40, data_coding=8, short_message=udh_part(9, 2, 1, "hello "))
    assert h.answers() == [("deliver_sm_resp", 2, 0)]
    assert [r[2] for r in h.inbound()] == ["hello world"]


def test_an_acknowledged_part_survives_a_restart(h, tmp_path):
    h.start()
    h.deliver(1, esm_class=0x40, data_coding=8, short_message=udh_part(3, 2, 1, "first "))
    h.answers()
    again = Harness(tmp_path, store=h.store)
    again.clock.advance(60)
    again.start()
    again.deliver(5, esm_class=0x40, data_coding=8, short_message=udh_part(3, 2, 2, "second"))
    assert again.answers() == [("deliver_sm_resp", 5, 0)]
    assert [r[2] for r in again.inbound()] == ["first second"]
    state = json.loads(rows(again.store, "SELECT value FROM channel_state")[0][0])
    assert state["parts"] == []


def test_sar_parts_and_a_message_payload_text(h):
    h.start()
    for seq, (n, text) in enumerate(((2, b"b"), (1, b"a"), (3, b"c")), 1):
        h.deliver(seq, short_message=text, sar_msg_ref_num=700, sar_total_segments=3,
                  sar_segment_seqnum=n)
    h.deliver(9, short_message=b"", data_coding=8,
              message_payload=("long " * 80).encode("utf-16-be"))
    assert [r[2] for r in h.inbound()] == ["abc", "long " * 80]
    assert all(s == 0 for _, _, s in h.answers())


def test_parts_that_never_complete_are_delivered_marked_incomplete(h):
    h.start()
    h.deliver(1, esm_class=0x40, short_message=bytes([5, 0, 3, 1, 3, 1]) + b"one ")
    h.deliver(2, esm_class=0x40, short_message=bytes([5, 0, 3, 1, 3, 3]) + b" three")
    h.answers()
    assert h.inbound() == [] and "2 long SMS" not in h.sim.status().detail
    assert "1 long SMS waiting for parts" in h.sim.status().detail
    h.clock.advance(600)
    assert [r[2] for r in h.inbound()] == ["one […] three"]
    assert h.sim.counts["incomplete"] == 1


def test_an_odd_sender_is_cleaned_not_refused(h):
    h.start()
    h.deliver(1, source_addr="Bank\nApp: Sys", short_message=b"hi")
    assert h.answers() == [("deliver_sm_resp", 1, 0)]
    assert h.inbound()[0][1] == "BankApp Sys"
    assert sender_from("") == "unknown" and sender_from("Orange") == "Orange"


# -- receipts -----------------------------------------------------------------------------------


def stored_out(h, provider_id, route="goip:sim1"):
    m = Message(OUT, route, "+46701112233", "+100", "hi", status=SENT, provider_id=provider_id)
    h.store.add([m])
    return m.id


def status_of(h, message_id):
    return rows(h.store, "SELECT status, reason FROM messages WHERE id = ?", (message_id,))[0]


def test_a_receipt_in_decimal_moves_the_message_the_hex_resp_named(h):
    h.start()
    mine = stored_out(h, "e7c")
    other = stored_out(h, "e7c", route="goip:sim2")  # the same id on another SIM
    h.hold = True  # (receipts do not go through accept)
    text = ("id:3708 sub:001 dlvrd:001 submit date:2501011200 done date:2501011201"
            " stat:DELIVRD err:000 Text:hello")
    h.deliver(4, esm_class=0x04, short_message=text.encode())
    assert h.answers() == [("deliver_sm_resp", 4, 0)]
    assert status_of(h, mine)[0] == DELIVERED and status_of(h, other)[0] == SENT
    assert h.reports["delivered"] == 1


def test_a_tlv_receipt_fails_the_message_and_an_unknown_one_is_counted(h):
    h.start()
    mine = stored_out(h, "1a2b")
    h.deliver(5, esm_class=0x04, short_message=b"", receipted_message_id="00001A2B",
              message_state=5)
    h.deliver(6, esm_class=0x04, short_message=b"", receipted_message_id="ffff",
              message_state=2)
    assert [a[2] for a in h.answers()] == [0, 0]
    assert status_of(h, mine) == (FAILED, "UNDELIVERABLE")
    assert h.sim.counts["receipts_unmatched"] == 1 and h.reports["unknown"] == 1


def test_a_receipt_for_a_later_part_names_the_message(tmp_path):
    h = Harness(tmp_path, long_method="sar").start()
    m = h.out("y" * 200)
    h.store.add([m])
    results, (first,) = h.sent(m)
    h.feed(P.PDU("submit_sm_resp", first.sequence, message_id="20"))
    (second,) = take(h.endpoint.tr)
    h.feed(P.PDU("submit_sm_resp", second.sequence, message_id="21"))
    assert results[0].provider_id == "20"
    h.store.update([(m.id, {"status": SENT, "provider_id": "20"})])
    h.deliver(3, esm_class=0x04, short_message=b"id:33 stat:UNDELIV err:001")
    assert status_of(h, m.id)[0] == FAILED


# -- the inbound log, pure ---------------------------------------------------------------------


def test_the_inbound_log_round_trips_and_survives_damage():
    log = InboundLog(window=100, parts_timeout=50)
    log.add_part(("+1", "8", 4), 2, 1, "half", 10.0)
    log.remember({"k1": "c1"}, 10.0)
    text = log.snapshot({"k2": "c1"}, 11.0)
    back = InboundLog(window=100, parts_timeout=50)
    assert back.restore(text) == []
    assert back.is_resend("k1", "c2", 20.0) and back.is_resend("k2", "c2", 20.0)
    assert not back.is_resend("k1", "c1", 20.0) and not back.is_resend("k1", "c2", 200.0)
    (done,) = back.add_part(("+1", "8", 4), 2, 2, " and half", 30.0)
    assert done.text == "half and half" and done.complete
    assert InboundLog().restore("{not json") and InboundLog().restore('{"format": 9}')
    damaged = json.dumps({"format": 1, "recent": [["k", "x"]], "parts": [{"key": 5}]})
    assert len(InboundLog().restore(damaged)) == 2


def test_content_keys_ignore_the_sequence_but_not_the_text():
    a = P.PDU("deliver_sm", 1, fields={"source_addr": "1", "short_message": b"x"})
    b = P.PDU("deliver_sm", 2, fields={"source_addr": "1", "short_message": b"x"})
    c = P.PDU("deliver_sm", 1, fields={"source_addr": "1", "short_message": b"y"})
    assert content_key(a) == content_key(b) != content_key(c)


# -- UDP and web SIMs -----------------------------------------------------------------------------


@pytest.mark.parametrize("result, check", [
    (SendOutcome(True, provider_id="160"), lambda o: o.ok and o.provider_id == "160"),
    (SendOutcome(False, reason="not registered", down=True), lambda o: o.down),
    (SendOutcome(False, reason="bad number", permanent=True), lambda o: o.permanent),
    (SendOutcome(False, reason="no OK within 90 s", maybe_sent=True),
     lambda o: "may have been sent" in o.reason and not o.permanent and not o.down),
    (SendOutcome(False, reason="refused, retry later"),
     lambda o: not o.ok and not o.permanent and not o.down and o.retry_in is None),
    (SendOutcome(False, reason="check user and password", down=True, auth_failed=True),
     lambda o: o.down),
])
def test_goip_send_results_become_outcomes(result, check):
    assert check(outcome_of(result))


class FakeServer:
    def __init__(self):
        self.reason = "GoIP line 'sim2' has not registered (no keepalive yet)"
        self.sent = []

    def down_reason(self, line):
        return self.reason

    def send(self, line, number, text):
        self.sent.append((line, number, text))
        return defer.succeed(SendOutcome(True, provider_id="161"))

    def line_status(self, line):
        from websmsd.goip.udpserver import LineStatus

        return LineStatus(line, "goip2", self.reason is None, 10.0, 20.0, ("192.0.2.9", 5060),
                          25, "LOGIN", "LOGOUT", "", "Y", None, 3, 7, 1, 0, 2, 0)


def test_a_udp_sim_follows_its_line_and_reports_signal_and_wrong_passwords(tmp_path):
    clock = Clock()
    store = Store(str(tmp_path / "s.sqlite3"), clock, run_inline=True)
    store.open()
    server, dispatcher, reports = FakeServer(), Dispatcher(), Counter()
    sim = UDPSim(SimInfo(GoIPSim("sim2", ("+46701234568",), transport="udp", goip_id="goip2",
                                 goip_password="x")), server, reactor=clock, store=store,
                 dispatcher=dispatcher, metrics=Metrics(), reports=reports)
    sim.check()
    assert "not registered" in dispatcher.down["goip:sim2"]
    n = len(dispatcher.calls)
    sim.check()
    assert len(dispatcher.calls) == n  # told once
    server.reason = None
    clock.advance(5)
    sim.check()
    assert dispatcher.down["goip:sim2"] is None
    row = sim.status()
    assert row.state == "up" and row.since == 5
    assert "signal 25 (-63 dBm)" in row.detail and "GSM LOGIN" in row.detail
    assert "3 packets with a wrong password" in row.detail and "+46701234568" in row.detail
    assert row.info["signal"] == 25 and row.info["bad_password"] == 3
    outcomes = []
    sim.send(Message(OUT, "goip:sim2", "+4670", "+1", "hi")).addCallback(outcomes.append)
    assert outcomes[0].ok and outcomes[0].provider_id == "161"
    m = Message(OUT, "goip:sim2", "+4670", "+1", "hi", status=SENT, provider_id="161")
    store.add([m])
    sim.report("161", "0", "+4670")
    assert rows(store, "SELECT status FROM messages WHERE id = ?", (m.id,)) == [(DELIVERED,)]
    sim.report("999", "0", "+4670")
    assert reports == Counter({"delivered": 1, "unknown": 1}) and sim.unmatched_reports == 1
    store.close()


def test_a_web_sim_shows_down_from_the_route_and_sends_on_its_line():
    metrics = Metrics()
    calls = []

    class Client:
        def send(self, line, number, text):
            calls.append((line, number, text))
            return defer.succeed(SendOutcome(False, reason="GoIP line 3 cannot send now: GSM"
                                             " logout", down=True))

    sim = WebSim(SimInfo(GoIPSim("s3", transport="http", channel=3, http_url="http://h",
                                 http_password="p")), Client(), reactor=Clock(),
                 dispatcher=Dispatcher(), metrics=metrics)
    assert sim.status().state == "idle"
    out = []
    sim.send(Message(OUT, "goip:s3", "+4670", "+1", "hi")).addCallback(out.append)
    assert calls == [(3, "+4670", "hi")] and out[0].down
    record = metrics.route("goip:s3")
    record.down, record.down_since = out[0].reason, 12.0
    row = sim.status()
    assert row.state == "down" and "GSM logout" in row.detail and row.since == 12.0


# -- build(): what the daemon gets ------------------------------------------------------------


def test_build_adds_a_route_a_row_and_ussd_per_sim(tmp_path):
    from twisted.application import service
    from twisted.internet.testing import MemoryReactorClock

    from websmsd.dispatch import Dispatcher
    from websmsd.goip.service import build
    from websmsd.http.board import ChannelBoard
    from websmsd.service import Wiring

    settings = conf(EXAMPLE.replace("udp_listen       = 44444", "udp_listen = 127.0.0.1:9991")
                    + "transport [sim3] = http\nchannel [sim3] = 3\nnumber [sim3] = +4670123\n"
                    "channel [sim4] = 4\nhttp_url [sim4] = \"\"\nwindow [sim4] = 5\n")
    reactor = MemoryReactorClock()
    store = Store(str(tmp_path / "s.sqlite3"), reactor, run_inline=True)
    store.open()
    dispatcher = Dispatcher(store, reactor)
    board = ChannelBoard()
    parent = service.MultiService()
    wiring = Wiring(reactor, parent, settings, store, dispatcher, board, Metrics(), None,
                    lambda messages, state=None: store.add(messages, state=state), 0.0)
    build(wiring, settings.channels["goip"])
    routes = dispatcher.routes
    assert sorted(routes) == ["goip:sim1", "goip:sim2", "goip:sim3", "goip:sim4"]
    assert (routes["goip:sim1"].concurrency, routes["goip:sim4"].concurrency) == (1, 5)
    # not bound, not registered yet: paused; the web line is up until a send finds it down
    assert routes["goip:sim1"].down and "not bound yet" in routes["goip:sim1"].down
    assert "has not registered" in routes["goip:sim2"].down and routes["goip:sim3"].down is None
    # USSD: the UDP line, and the web API for the others that have an http_url
    assert sorted(wiring.ussd) == ["sim1", "sim2", "sim3"]
    rows = fired(board.collect())
    assert [(r.name, r.kind) for r in rows] == [
        ("sim1", "goip"), ("sim2", "goip"), ("sim3", "goip"), ("sim4", "goip"),
        ("udp 127.0.0.1:9991", "goip")]
    assert [s.name for s in parent] == ["goip udp 127.0.0.1:9991", "goip goip:sim1 smpp",
                                        "goip goip:sim4 smpp"]
    store.close()


def test_resend_detection_can_be_turned_off(tmp_path):
    h = Harness(tmp_path, resend_window=0.0).start()
    h.deliver(1, short_message=b"same")
    h.answers()
    h.endpoint.tr.drop()
    h.clock.advance(5)
    h.accept_bind()
    h.deliver(1, short_message=b"same")
    h.answers()
    assert len(h.inbound()) == 2
    assert conf("[goip]\nsmpp_host = h\npassword = p\nchannel [a] = 1\nresend_window = 0\n"
                ).channels["goip"].interfaces[0].resend_window == 0.0


def test_the_web_api_client_imports_treq_only_when_it_is_used():
    # A GoIP web API configured for USSD or a fallback costs no HTTP client in memory
    # until it is used (issue #18: idle RSS; Debian's treq imports requests).
    import subprocess
    import sys

    code = (
        "import sys\n"
        "from websmsd.goip.service import _TreqOnFirstUse\n"
        "lazy = _TreqOnFirstUse()\n"
        "assert 'treq' not in sys.modules\n"
        "import treq\n"
        "assert lazy.request is treq.request and lazy.collect is treq.collect\n"
    )
    import os

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    subprocess.run([sys.executable, "-c", code], check=True, cwd=root)
