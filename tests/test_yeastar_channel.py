"""The Yeastar TG channel: [yeastar] config, pieces and ids, and the channel layer.

The channel layer runs on a MemoryReactorClock with StringTransports: the TG's side is
written here byte for byte as the captures in shared/goip-yeastar.md give it (the banner
without a blank line, `Response: Follows` ... `--END COMMAND--`, events ending with
`--END SMS EVENT--` and a blank line).  The store is the real one, inline; the dispatcher
is the real one.  The last tests run the channel on a real (private) reactor against
tests/tgpeer.py's FakeTG.
"""

from __future__ import annotations

import urllib.parse
from typing import List

import pytest
from twisted.application import service
from twisted.internet import defer, error
from twisted.internet.address import IPv4Address
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure

from conftest import fired
from websmsd.ami.protocol import MAX_ACTION_LINE, encode_action
from websmsd.config import ConfigError, loads, report
from websmsd.dispatch import Dispatcher, RetryPolicy
from websmsd.http.board import ChannelBoard
from websmsd.message import OUT, Message
from websmsd.metrics import Metrics
from websmsd.service import Wiring
from websmsd.store import Store
from websmsd.yeastar import messages as ym
from websmsd.yeastar import tg
from websmsd.yeastar.service import USSDError, build

EXAMPLE = """\
[yeastar]
host      = 192.168.5.150
ami_port  = 5038
http_port = 80
username  = apiuser
secret    = Api-S3cret
transport = ami                  ; ami (default) | http, for sending
port   [tg1] = 1                 ; GSM port 1 (AMI span 2)
number [tg1] = +79991234567      ; the port's own number: MESSAGE(to) of its SMS
port   [tg2] = 2
number [tg2] = +79991234568
"""


def conf(text: str = EXAMPLE, path: str = "websms.conf"):
    return loads(text + "[astqueue]\n", path, environ={})


# ======================================================================= configuration


def test_the_issue_example_loads_as_written():
    settings = conf()
    y = settings.channels["yeastar"]
    assert [p.name for p in y.interfaces] == ["tg1", "tg2"]
    tg1, tg2 = y.interfaces
    assert (tg1.host, tg1.ami_port, tg1.http_port, tg1.username, tg1.secret, tg1.transport) == (
        "192.168.5.150", 5038, 80, "apiuser", "Api-S3cret", "ami")
    assert (tg1.port, tg1.span, tg1.number, tg1.own_number) == (1, 2, ("+79991234567",), "+79991234567")
    assert (tg2.port, tg2.span, tg2.own_number) == (2, 3, "+79991234568")
    assert tg1.min_interval == 10.0 and tg1.account == "apiuser" and tg1.password == "Api-S3cret"
    assert list(y.gateways()) == [("192.168.5.150", 5038)]
    assert settings.interfaces()[-2:] == [("tg1", "yeastar", ("+79991234567",), True),
                                          ("tg2", "yeastar", ("+79991234568",), True)]
    assert settings.warnings == ()
    text = report(settings)
    assert "[yeastar] interface 'tg1'" in text and "Api-S3cret" not in text
    assert "    secret = ****" in text


def test_routing_knows_the_ports():
    from websmsd.routing import router_for

    settings = conf(EXAMPLE + "[route]\ndefault = tg2\n")
    router = router_for(settings)
    assert router.outbound("+4912345", "+79991234567").routes == ("yeastar:tg1", "yeastar:tg2")
    assert router.outbound("+4912345", "+15550001").routes == ("yeastar:tg2",)
    assert router.outbound("+4912345", "x", index="tg1").routes == ("yeastar:tg1",)


def test_a_port_on_a_second_tg_and_per_port_keys():
    first = EXAMPLE.replace("host      = 192.168.5.150\n",
                            "host [tg1] = 192.168.5.150\nhost [tg2] = 192.168.5.150\n")
    text = first + ("host [tg3] = tg-b.example.net\nport [tg3] = 1\nnumber [tg3] = \"+7 (999) 123-45-69\"\n"
                      "transport [tg3] = http\nhttp_password [tg3] = web-pass\nmin_interval [tg2] = 20s\n")
    settings = conf(text)
    y = settings.channels["yeastar"]
    tg3 = y.interfaces[2]
    assert (tg3.host, tg3.port, tg3.transport, tg3.own_number, tg3.password) == (
        "tg-b.example.net", 1, "http", "+79991234569", "web-pass")
    assert y.interfaces[1].min_interval == 20.0 and y.interfaces[0].min_interval == 10.0
    assert list(y.gateways()) == [("192.168.5.150", 5038), ("tg-b.example.net", 5038)]
    assert "web-pass" not in report(settings)
    # PHP ini: host [tg3] after a plain host replaces it; the error says how to write it.
    with pytest.raises(ConfigError) as e:
        conf(EXAMPLE + "host [tg3] = 192.168.5.151\nport [tg3] = 1\nnumber [tg3] = +1555\n")
    assert str(e.value).startswith("websms.conf:8: host[tg1]: missing: the TG's address; once one"
                                   " port has its own host (host [tg3] = ...), a plain host = ..."
                                   " no longer counts (PHP ini replaces it): give every port its"
                                   " own, as host[tg1] = ...")


@pytest.mark.parametrize("extra, where, message", [
    ("port [tg3] = 3\n", "websms.conf:12: number[tg3]", "missing: the port's own number"),
    ("number [tg3] = +1555\n", "websms.conf:12: port[tg3]", "missing: the GSM port"),
    ("port [tg3] = 1\nnumber [tg3] = +1555\n", "websms.conf:12: port[tg3]",
     "port 1 of the TG at 192.168.5.150 is already interface 'tg1'"),
    ("port [tg3] = 0\n", "websms.conf:12: port[tg3]", "is not a GSM port number"),
    ("secret [tg1] = Api-S3cret\nsecret [tg2] = other\n", "websms.conf:13: secret[tg2]",
     "differs between 'tg2' and 'tg1', ports of the same TG (192.168.5.150:5038)"),
    ("ping_interval [tg2] = 5\n", "websms.conf:12: ping_interval[tg2]",
     "differs between 'tg2' and 'tg1' (5.0, 30.0)"),
    ("transport [tg1] = smpp\n", "websms.conf:12: transport[tg1]", "is not one of ami, http"),
    ("host [tg1] = http://192.168.5.150/\n", "websms.conf:12: host[tg1]", "no http://"),
    ("ami_port [tg1] = 70000\n", "websms.conf:12: ami_port[tg1]", "is not a TCP port"),
    ("number [tg1] = call me\n", None, None),
    ("send_timeout = soon\n", "websms.conf:12: send_timeout", "is not a duration"),
    ("colour = red\n", "websms.conf:12: colour", "unknown key in [yeastar]"),
])
def test_errors_name_file_line_and_key(extra, where, message):
    with pytest.raises(ConfigError) as e:
        conf(EXAMPLE + extra)
    if where is not None:
        assert str(e.value).startswith(where + ": "), str(e.value)
        assert message in str(e.value)
    assert "Api-S3cret" not in str(e.value) and "other" not in str(e.value).split(":")[-1]


def test_missing_session_keys_and_a_short_interval():
    with pytest.raises(ConfigError, match=r"websms.conf:1: username: missing"):
        conf("[yeastar]\nhost = 10.0.0.1\nsecret = x\nport = 1\nnumber = +1555\n")
    settings = conf(EXAMPLE + "min_interval [tg1] = 2\n")
    assert settings.channels["yeastar"].interfaces[0].min_interval == 2.0
    assert settings.warnings == ("websms.conf:12: min_interval[tg1]: 2 s: Yeastar asks for at"
                                 " most one SMS per 10 s per port",)
    plain = conf(EXAMPLE + "min_interval = 0\n")
    assert plain.warnings == ("websms.conf:12: min_interval: 0 s: Yeastar asks for at most one"
                              " SMS per 10 s per port",)
    assert {p.min_interval for p in plain.channels["yeastar"].interfaces} == {0.0}
    # A single port needs no index: the interface is unnamed, its route is "yeastar".
    one = conf("[yeastar]\nhost = 10.0.0.1\nusername = u\nsecret = s\nport = 4\nnumber = +1555\n")
    assert [(p.name, p.port) for p in one.channels["yeastar"].interfaces] == [("", 4)]


def test_the_readme_examples_load_without_warnings():
    import re
    from pathlib import Path

    text = (Path(__file__).parent.parent / "README.md").read_text(encoding="utf-8")
    start = text.index("### Yeastar TG gateways")
    section = text[start:text.index("\n## ", start)]
    section = section[:section.find("\n### ", 1)] if "\n### " in section else section
    examples = re.findall(r"```ini\n(.*?)```", section, re.DOTALL)
    assert len(examples) == 2 and examples[0] == EXAMPLE
    for example in examples:
        settings = conf(example)
        assert settings.warnings == () and len(settings.channels["yeastar"].interfaces) == 2
    assert [p.host for p in conf(examples[1]).channels["yeastar"].interfaces] == [
        "192.168.5.150", "192.168.5.151"]
    # Every key is documented in the table.
    from websmsd.config import yeastar

    for key in yeastar.KEYS:
        assert f"`{key}`" in section, key


def test_interface_names_are_unique_across_sections():
    with pytest.raises(ConfigError, match="interface name 'tg1' is used in"):
        conf("[websms]\nurl_host [tg1] = https://api.example.com\n" + EXAMPLE)


# ======================================================================= pieces and ids


def encoded_line(span, number, text, ident):
    return encode_action("smscommand", [("Command", tg.sms_command(span, number, text, ident))], "1")


def test_a_short_text_is_one_piece_and_long_ones_fit_an_ami_line():
    budget = ym.encoded_budget(2, "+79991234567")
    assert ym.pieces("Hello", budget) == ["Hello"]
    assert ym.pieces("", budget) == []
    ident = ym.send_ident("0193f2a1b2c3d4e5f6a7", 12, 3, 10)
    assert len(ident) <= ym.IDENT_MAX and ym.parse_ident(ident) == ("0193f2a1b2c3d4e5f6a7", 12, 3, 10)
    for text in ["Привет, мир! " * 130, "x" * 3000, "a b " * 700, "😀" * 400,
                 'quotes " and \\ backslash\nnew line + plus % percent ' * 40]:
        parts = ym.pieces(text, budget)
        assert "".join(parts) == text
        assert len(parts) > 1
        for n, part in enumerate(parts, 1):
            assert len(part.encode()) <= tg.MAX_TEXT_BYTES
            line = encoded_line(2, "+79991234567", part, ym.send_ident("0" * 20, 999, n, len(parts)))
            assert max(len(l) + 2 for l in line.split(b"\r\n")) <= MAX_ACTION_LINE
    # Words stay whole where a blank is near the end of a piece.
    parts = ym.pieces("word " * 500, budget)
    assert all(p.endswith(" ") for p in parts[:-1])
    # Cyrillic: six encoded characters per letter, about 160 letters per piece.
    assert 150 <= len(ym.pieces("Я" * 1600, budget)[0]) <= 170


def test_parse_ident_takes_only_ours():
    assert ym.parse_ident(None) is None and ym.parse_ident("244") is None
    assert ym.parse_ident("0193f2a1b2c3d4e5f6a7-1-1-1").piece == 1
    with pytest.raises(ValueError):
        ym.send_ident("bad id!", 1, 1, 1)


def test_the_reassembler_says_which_parts_it_holds():
    r = tg.Reassembler(60)
    first = tg.parse_received({"GsmSpan": "2", "Sender": "+7", "ID": "1", "Index": "1",
                               "Total": "2", "Content": "a"})
    again = tg.parse_received({"GsmSpan": "2", "Sender": "+7", "ID": "1", "Index": "1",
                               "Total": "2", "Content": "a"})
    second = tg.parse_received({"GsmSpan": "2", "Sender": "+7", "ID": "1", "Index": "2",
                                "Total": "2", "Content": "b"})
    assert r.add(first, 0) == [] and r.holds(first)
    assert r.add(again, 1) == [] and not r.holds(again) and r.holds(first)  # a copy: ignored
    [sms] = r.add(second, 2)
    assert sms.text == "ab" and not r.holds(first) and not r.holds(second)


def test_sender_made_safe_for_a_call_file():
    assert ym.safe_sender("+79991234567") == "+79991234567"
    assert ym.safe_sender("My Bank") == "My Bank"
    assert ym.safe_sender("Tele2 <€>") == "Tele2 ___"
    assert ym.safe_sender(";;;") == "unknown"


# ======================================================================= the TG's wire

BANNER = b"Asterisk Call Manager/1.1\r\n"
END_COMMAND = b"--END COMMAND--\r\n\r\n"

SPANS = ("GSM span 2: Power on, Provisioned, Up, Active,Standard\n"
         "GSM span 3: Power on, Provisioned, Undetected SIM Card, Active,Standard\n"
         "GSM span 4: Power on, Provisioned, Up, Active,Standard\n"
         "GSM span 5: Power on, Provisioned, Up, Active,Standard\n")
SPAN2 = ("D-channel: 2\nStatus: Power on, Provisioned, Up, Active,Standard\nType: CPE\n"
         "Manufacturer: SIMCOM_Ltd\nModel Name: SIMCOM_SIM800\nModel IMEI: 862951028263962\n"
         "Revision: 1308B05SIM800M32_20140625_1100\nNetwork Name: Bee Line GSM\n"
         "Network Status: Registered (Home network)\nSignal Quality (0,31): 23\n"
         "SIM IMSI: 250990000000002\nSIM SMS Center Number: +79037011111\n"
         "Send SMS Center Number: Undefined\nLast event: SMS send OK\nState: READY\n"
         "Last send AT: AT+CREG?\\r\\n")


def content(text: str, bom: bool = True) -> str:
    data = text.encode()
    if bom:
        data = b"\xef\xbb\xbf" + data
    return urllib.parse.quote(data, safe="*'()!~").replace("%20", "+")


def received_event(span, sender, text, *, ident="", index=0, total=1, field="GsmSpan",
                   recvtime="2025-03-06 06:12:09", bom=True) -> bytes:
    return ("Event: ReceivedSMS\r\nPrivilege: all,smscommand\r\n"
            f"ID: {ident}\r\n{field}: {span}\r\nSender: {sender}\r\nRecvtime: {recvtime}\r\n"
            f"Index: {index}\r\nTotal: {total}\r\nSmsc: +79037011111\r\n"
            f"Content: {content(text, bom)}\r\n--END SMS EVENT--\r\n\r\n").encode()


def update_event(ident, status=1) -> bytes:
    return (f"Event: UpdateSMSSend\r\nPrivilege: all,smscommand\r\nID: {ident}\r\n"
            f"Smsc: +79037011111\r\nStatus: {status}\r\n--END SMS EVENT--\r\n\r\n").encode()


def parse_actions(data: bytes) -> List[dict]:
    out = []
    for block in data.split(b"\r\n\r\n"):
        if block:
            out.append({k.decode().lower(): v.decode() for k, v in
                        (line.split(b": ", 1) for line in block.split(b"\r\n"))})
    return out


class Conn:
    def __init__(self, proto, transport):
        self.proto = proto
        self.transport = transport
        self.seen = 0

    def say(self, data: bytes, bytewise: bool = False):
        if bytewise:
            for i in range(len(data)):
                self.proto.dataReceived(data[i:i + 1])
        else:
            self.proto.dataReceived(data)

    def actions(self):
        return parse_actions(self.transport.value())

    def new(self):
        acts = self.actions()
        new, self.seen = acts[self.seen:], len(acts)
        return new

    def others(self, spans: str = SPANS) -> List[dict]:
        """New actions other than the status commands, which are answered as a TG would
        (the status refresh and the keepalive come and go with the clock)."""
        out = []
        for a in self.new():
            command = a.get("command", "")
            if command == "gsm show spans":
                self.follows(a, spans)
            elif command.startswith("gsm show span "):
                span = command.rsplit(" ", 1)[1]
                self.follows(a, SPAN2.replace("D-channel: 2", f"D-channel: {span}"))
            else:
                out.append(a)
        return out

    def follows(self, action: dict, output: str):
        self.say(b"Response: Follows\r\nPrivilege: SMSCommand\r\n"
                 + f"ActionID: {action['actionid']}\r\n".encode() + output.encode() + END_COMMAND)

    def lose(self):
        self.proto.connectionLost(Failure(error.ConnectionLost("gone")))


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

    def accept(self) -> Conn:
        d = self.attempts[-1]
        proto = self.factory.buildProtocol(IPv4Address("TCP", "192.168.5.150", 5038))
        tr = StringTransport(peerAddress=IPv4Address("TCP", "192.168.5.150", 5038))
        proto.makeConnection(tr)
        conn = Conn(proto, tr)
        self.conns.append(conn)
        d.callback(proto)
        return conn


class World:
    """The channel built by build() on a clock, with the real store and dispatcher."""

    def __init__(self, tmp_path, text: str = EXAMPLE, accept=None, webcgi_endpoint=None):
        self.reactor = MemoryReactorClock()
        self.reactor.advance(1_000_000)
        self.settings = conf(text)
        self.store = Store(str(tmp_path / "s.sqlite3"), self.reactor, run_inline=True)
        self.store.open()
        self.metrics = Metrics()
        self.dispatcher = Dispatcher(self.store, self.reactor,
                                     RetryPolicy(base=30, max_delay=300, max_attempts=5),
                                     self.metrics)
        self.board = ChannelBoard()
        self.parent = service.MultiService()
        self.dispatcher.setServiceParent(self.parent)
        self.endpoints = {}
        self.ussd = {}

        def store_accept(messages):
            for m in messages:
                m.route = "callfile"
            return self.store.add(messages)

        wiring = Wiring(self.reactor, self.parent, self.settings, self.store, self.dispatcher,
                        self.board, self.metrics, None, accept or store_accept, 0.0, self.ussd)
        self.channel = build(wiring, self.settings.channels["yeastar"], connect=self.connect,
                             webcgi_endpoint=webcgi_endpoint)
        self.link = self.channel.links[0]
        self.parent.startService()

    def connect(self, host, port, timeout):
        return self.endpoints.setdefault((host, port), FakeEndpoint())

    @property
    def endpoint(self) -> FakeEndpoint:
        return next(iter(self.endpoints.values()))

    def login(self, endpoint: FakeEndpoint = None, spans: str = SPANS) -> Conn:
        endpoint = endpoint or self.endpoint
        while not endpoint.attempts or endpoint.attempts[-1].called:
            self.reactor.advance(1)  # the reconnect's backoff
        conn = endpoint.accept()
        conn.say(BANNER)
        [login] = conn.new()
        assert login["action"] == "Login" and login["events"] == "on"
        conn.say(b"Response: Success\r\nActionID: " + login["actionid"].encode()
                 + b"\r\nMessage: Authentication accepted\r\n\r\n")
        self.answer_status(conn, spans)
        self.reactor.advance(0)  # the routes that came up look for work
        return conn

    def answer_status(self, conn: Conn, spans: str = SPANS) -> int:
        """Answer the status commands (the refresh: gsm show spans, then gsm show span N
        per port; and the keepalive) until none is left; how many were answered."""
        n = 0
        while True:
            new = conn.new()
            if not new:
                return n
            for a in new:
                assert a["command"].startswith("gsm show span"), a
                n += 1
                if a["command"] == "gsm show spans":
                    conn.follows(a, spans)
                else:
                    span = int(a["command"].rsplit(" ", 1)[1])
                    conn.follows(a, SPAN2.replace("D-channel: 2", f"D-channel: {span}"))

    def rows(self, sql, args=()):
        return self.store._db.execute(sql, args).fetchall()

    def inbound(self):
        return self.rows("SELECT recipient, sender, body, source, provider_id, route FROM messages"
                         " WHERE direction = 'in' ORDER BY created, id")

    def queue(self, to="+79161234567", body="Hello", route="yeastar:tg1") -> Message:
        m = Message(OUT, route, to, "+79991234567", body, source="api")
        m.created = self.reactor.seconds()
        fired(self.store.add([m]))
        self.reactor.advance(0)
        return m

    def message(self, m):
        return fired(self.store.get(m.id))


@pytest.fixture
def world(tmp_path):
    w = World(tmp_path)
    yield w
    w.parent.stopService()


# ======================================================================= session and liveness


def test_routes_wait_for_the_login_then_come_up(world):
    assert world.dispatcher.is_down("yeastar:tg1").startswith("not logged in to TG 192.168.5.150:5038")
    conn = world.login()
    assert world.link.logged_in
    assert world.dispatcher.is_down("yeastar:tg1") is None
    # Port 2 has no SIM: its route stays down, and says why.
    assert world.dispatcher.is_down("yeastar:tg2") == (
        "port 2 (span 3) is not up: Undetected SIM Card")
    rows = {r.name: r for r in fired(world.board.collect())}
    assert rows["tg1"].state == "up" and rows["tg2"].state == "down"
    assert "logged in; span 2 Up, signal 23/31, Bee Line GSM; +79991234567" in rows["tg1"].detail
    assert rows["tg1"].info["signal"] == 23 and rows["tg1"].info["span_state"] == "Up"
    assert rows["tg2"].info["span_state"] == "Undetected SIM Card"
    # The link drops: every route pauses, the row says why; a new login brings them back.
    conn.lose()
    assert world.dispatcher.is_down("yeastar:tg1").startswith("not logged in")
    assert {r.state for r in fired(world.board.collect())} == {"down"}
    world.reactor.advance(5)
    world.login(spans=SPANS.replace("Undetected SIM Card", "Up"))
    assert world.dispatcher.is_down("yeastar:tg1") is None
    assert world.dispatcher.is_down("yeastar:tg2") is None


def test_a_port_the_tg_does_not_have_is_down(tmp_path):
    w = World(tmp_path, EXAMPLE + "port [tg9] = 9\nnumber [tg9] = +79991234569\n")
    try:
        w.login()
        assert w.dispatcher.is_down("yeastar:tg9") == "the TG has no port 9 (its ports: 1, 2, 3, 4)"
        assert w.dispatcher.is_down("yeastar:tg1") is None
    finally:
        w.parent.stopService()


def test_the_keepalive_is_gsm_show_spans_and_a_silent_tg_is_dropped(world):
    conn = world.login()
    world.reactor.advance(30)
    [ping] = conn.new()
    assert ping["action"] == "smscommand" and ping["command"] == "gsm show spans"
    world.reactor.advance(10)  # no answer
    assert conn.transport.disconnecting


def test_status_is_refreshed_periodically_not_per_request(world):
    conn = world.login()
    assert world.link.refreshes == 1
    fired(world.board.collect())
    fired(world.board.collect())
    assert conn.new() == []  # reading the page sends nothing to the TG
    world.reactor.advance(60)
    assert world.answer_status(conn) == 4  # the refresh (3) and the keepalive
    assert world.link.refreshes == 2


def test_a_refused_login_is_shown_and_backed_off(world):
    conn = world.endpoint.accept()
    conn.say(BANNER)
    [login] = conn.new()
    conn.say(b"Response: Error\r\nActionID: " + login["actionid"].encode()
             + b"\r\nMessage: Authentication failed\r\n\r\n")
    assert world.dispatcher.is_down("yeastar:tg1") == (
        "not logged in to TG 192.168.5.150:5038 (login failed: Authentication failed)")
    conn.lose()
    row = fired(world.board.collect())[0]
    assert row.state == "down" and "login failed: Authentication failed" in row.detail
    attempts = len(world.endpoint.attempts)
    world.reactor.advance(29)
    assert len(world.endpoint.attempts) == attempts  # no reconnect storm
    world.reactor.advance(2)
    assert len(world.endpoint.attempts) == attempts + 1
    assert b"Api-S3cret" not in repr(row).encode()


# ======================================================================= receiving


def test_a_single_part_sms_is_stored_for_the_ports_number(world):
    conn = world.login()
    conn.say(received_event(2, "+79161112233", "Привет мир"), bytewise=True)
    [(to, sender, body, source, provider_id, route)] = world.inbound()
    assert (to, sender, body, source, route) == (
        "+79991234567", "+79161112233", "Привет мир", "yeastar:tg1", "callfile")
    assert provider_id == "span 2 at 2025-03-06 06:12:09 (TG clock)"
    # A GSM 7-bit message has no BOM; Index 1 (older firmware) is a single part too.
    conn.say(received_event(3, "1126", "Balance 5 EUR", index=1, bom=False, field="GsmPort"))
    assert world.inbound()[1][:4] == ("+79991234568", "1126", "Balance 5 EUR", "yeastar:tg2")
    assert world.metrics.counter("yeastar_received") == {"yeastar:tg1": 1, "yeastar:tg2": 1}
    rows = {r.name: r for r in fired(world.board.collect())}
    assert rows["tg1"].info["received"] == 1


def test_the_same_event_twice_is_stored_once(world):
    conn = world.login()
    event = received_event(2, "+79161112233", "twice")
    conn.say(event + event)
    assert len(world.inbound()) == 1
    # The same words again later (another Recvtime) are another SMS.
    conn.say(received_event(2, "+79161112233", "twice", recvtime="2025-03-06 06:13:00"))
    assert len(world.inbound()) == 2


def test_parts_out_of_order_are_joined_by_index(world):
    conn = world.login()
    parts = ["Это длинное сообщение, ", "разрезанное посреди сло", "ва на три части."]
    for i in (3, 1, 2):
        assert len(world.inbound()) == 0
        conn.say(received_event(2, "+79161112233", parts[i - 1], ident="244", index=i, total=3,
                                recvtime=f"2025-03-06 06:12:0{i}"), bytewise=(i == 1))
    [(to, sender, body, *_)] = world.inbound()
    assert body == "".join(parts)


def test_a_message_missing_a_part_is_kept_marked_incomplete(world):
    conn = world.login()
    conn.say(received_event(2, "+79161112233", "first ", ident="7", index=1, total=3))
    conn.say(received_event(2, "+79161112233", "third", ident="7", index=3, total=3))
    world.reactor.advance(299)
    assert world.inbound() == []
    world.reactor.advance(2)
    [(_, _, body, *_)] = world.inbound()
    assert body == "first third\n[incomplete SMS: part 2 of 3 never arrived]"
    assert world.metrics.counter("yeastar_incomplete") == {"yeastar:tg1": 1}


def test_parts_waiting_survive_a_restart(tmp_path):
    w = World(tmp_path)
    conn = w.login()
    conn.say(received_event(2, "+79161112233", "first half, ", ident="9", index=1, total=2))
    conn.say(received_event(2, "+79161112233", "Другое ", ident="5", index=1, total=2,
                            recvtime="2025-03-06 06:00:00"))
    # The daemon dies (no stop at all): the waiting parts are in the store already.
    w2 = World(tmp_path)
    try:
        w2.reactor.advance(5)
        conn2 = w2.login()
        conn2.say(received_event(2, "+79161112233", "second half", ident="9", index=2, total=2))
        assert [r[2] for r in w2.inbound()] == ["first half, second half"]
        # The other message's rest never comes: what came is kept, marked, once.
        w2.reactor.advance(300)
        assert [r[2] for r in w2.inbound()][1] == (
            "Другое \n[incomplete SMS: part 2 of 2 never arrived]")
    finally:
        w2.parent.stopService()
    w3 = World(tmp_path)  # nothing waits any more: nothing comes back
    try:
        w3.reactor.advance(400)
        assert len(w3.inbound()) == 2
        assert w3.link.reassembler.next_expiry() is None
    finally:
        w3.parent.stopService()


def test_parts_waiting_at_a_stop_go_on_waiting(tmp_path):
    w = World(tmp_path)
    conn = w.login()
    conn.say(received_event(2, "+79161112233", "half", ident="9", index=1, total=2))
    stopped = w.parent.stopService()
    w.reactor.advance(2)  # no Goodbye to the Logoff
    conn.lose()
    fired(stopped)
    assert w.inbound() == []
    w2 = World(tmp_path)
    try:
        conn2 = w2.login()
        conn2.say(received_event(2, "+79161112233", " and half", ident="9", index=2, total=2))
        assert [r[2] for r in w2.inbound()] == ["half and half"]
    finally:
        w2.parent.stopService()


def test_an_sms_on_a_port_no_interface_names_is_not_lost(world):
    conn = world.login()
    conn.say(received_event(5, "+79161112233", "to port 4"))
    [(to, sender, body, source, *_)] = world.inbound()
    assert (to, body, source) == ("yeastar-port4", "to port 4", "yeastar:192.168.5.150:port4")


def test_a_bad_event_is_counted_not_stored(world):
    conn = world.login()
    conn.say(b"Event: ReceivedSMS\r\nPrivilege: all,smscommand\r\nID: \r\nSender: +7\r\n"
             b"Content: x\r\n--END SMS EVENT--\r\n\r\n")
    assert world.inbound() == [] and world.link.logged_in
    assert world.metrics.counter("yeastar_bad_events") == {"ReceivedSMS": 1}


def test_a_commit_that_fails_is_offered_again(tmp_path):
    calls = []

    def accept(messages):
        calls.append([m.body for m in messages])
        if len(calls) == 1:
            return defer.fail(OSError("disk full"))
        for m in messages:
            m.route = "callfile"
        return w.store.add(messages)

    w = World(tmp_path, accept=accept)
    conn = w.login()
    conn.say(received_event(2, "+79161112233", "keep me"))
    assert w.inbound() == []
    w.reactor.advance(5)
    assert calls == [["keep me"], ["keep me"]]
    assert [r[2] for r in w.inbound()] == ["keep me"]
    w.parent.stopService()


def test_a_message_the_store_refused_is_offered_again_at_the_stop(tmp_path):
    refused = []

    def accept(messages):
        if not refused:
            refused.append(messages)
            return defer.fail(OSError("disk full"))
        for m in messages:
            m.route = "callfile"
        return w.store.add(messages)

    w = World(tmp_path, accept=accept)
    conn = w.login()
    conn.say(received_event(2, "+79161112233", "keep me"))
    assert w.inbound() == []
    w.parent.stopService()  # before the retry's timer
    assert [r[2] for r in w.inbound()] == ["keep me"]


# ======================================================================= sending


def send_command(conn):
    [a] = conn.others()
    assert a["action"] == "smscommand"
    words = a["command"].split(" ")
    assert words[:3] == ["gsm", "send", "sms"]
    return a, int(words[3]), words[4], urllib.parse.unquote(words[5].strip('"')), words[6]


def test_a_send_is_sent_once_the_tg_says_so(world):
    conn = world.login()
    text = 'Say "hi" \\ 1+1=2\nnext line 100% ok'
    m = world.queue(body=text)
    a, span, number, sent_text, ident = send_command(conn)
    assert (span, number, sent_text) == (2, "+79161234567", text)
    assert ym.parse_ident(ident) == (m.id, 1, 1, 1)
    assert '"' not in a["command"][a["command"].index('"') + 1:-len(ident) - 2]
    conn.follows(a, "")
    assert world.message(m).status == "sending"
    world.reactor.advance(3)
    conn.say(update_event(ident, 1))
    got = world.message(m)
    assert got.status == "sent" and got.attempts == 1
    tries = world.rows("SELECT ok, detail FROM attempts WHERE message_id = ?", (m.id,))
    assert tries == [(1, "accepted by the SMS centre +79037011111")]
    row = {r.name: r for r in fired(world.board.collect())}["tg1"]
    assert row.info["sent"] == 1 and "sent: accepted by the SMS centre" in row.detail


def test_status_0_fails_the_message(world):
    conn = world.login()
    m = world.queue()
    a, *_, ident = send_command(conn)
    conn.follows(a, "")
    conn.say(update_event(ident, 0))
    got = world.message(m)
    assert got.status == "failed" and "Status 0" in got.reason
    row = {r.name: r for r in fired(world.board.collect())}["tg1"]
    assert row.state == "failing" and row.info["failed"] == 1
    assert "failed: the TG reports it not sent" in row.detail


def test_an_error_output_fails_at_once(world):
    conn = world.login()
    m = world.queue()
    a, *_ = send_command(conn)
    conn.follows(a, "GSM span 2 is not available")
    got = world.message(m)
    assert got.status == "queued" and got.attempts == 1
    assert got.reason == "the TG refused the SMS: GSM span 2 is not available"


def test_no_result_in_time_is_a_failure_to_retry(world):
    conn = world.login()
    m = world.queue()
    a, *_ = send_command(conn)
    conn.follows(a, "")
    world.reactor.advance(59)
    assert world.message(m).status == "sending"
    world.reactor.advance(1)
    got = world.message(m)
    assert got.status == "queued" and got.attempts == 1
    assert got.reason == "no result (UpdateSMSSend) from the TG within 60 s: not sent"


def test_a_drop_while_waiting_says_it_may_have_been_sent(world):
    conn = world.login()
    m = world.queue()
    a, *_ = send_command(conn)
    conn.follows(a, "")
    conn.lose()
    world.reactor.advance(60)
    got = world.message(m)
    assert got.status == "queued"
    assert got.reason.endswith("and the link dropped meanwhile: it may have been sent")


def test_the_result_can_arrive_on_the_next_session(world):
    conn = world.login()
    m = world.queue()
    a, *_, ident = send_command(conn)
    conn.lose()  # before the command's answer: it may have run
    world.reactor.advance(2)
    conn2 = world.login()
    conn2.say(update_event(ident, 1))
    assert world.message(m).status == "sent"


def test_a_late_result_still_counts(world):
    conn = world.login()
    m = world.queue()
    a, *_, ident = send_command(conn)
    conn.follows(a, "")
    world.reactor.advance(60)
    assert world.message(m).status == "queued"
    conn.say(update_event(ident, 1))
    got = world.message(m)
    assert got.status == "sent"
    world.reactor.advance(40)  # the retry finds nothing to send
    assert conn.others() == []


def test_one_sms_per_ten_seconds_per_port(world):
    conn = world.login(spans=SPANS.replace("Undetected SIM Card", "Up"))
    world.queue(body="one")
    world.queue(body="two")
    world.queue(body="three", route="yeastar:tg2")
    got = {}
    for a in conn.others():
        words = a["command"].split(" ")
        got[int(words[3])] = words[5].strip('"')
        conn.follows(a, "")
        conn.say(update_event(words[6]))
    assert got == {2: "one", 3: "three"}  # the two ports do not wait for each other
    world.reactor.advance(9.5)
    assert conn.others() == []
    world.reactor.advance(0.5)
    a, span, _, text, ident = send_command(conn)
    assert (span, text) == (2, "two")


def test_a_long_text_goes_in_pieces_ten_seconds_apart(world):
    conn = world.login()
    text = "Длинное сообщение. " * 30  # 570 letters: four pieces
    m = world.queue(body=text)
    sent = []
    while True:
        a, span, number, piece, ident = send_command(conn)
        sent.append(piece)
        conn.follows(a, "")
        conn.say(update_event(ident))
        if world.message(m).status == "sent":
            break
        assert world.message(m).status == "queued" and world.message(m).progress == len(sent)
        world.reactor.advance(10)
    assert "".join(sent) == text and len(sent) == 4
    got = world.message(m)
    assert got.attempts == 1 and got.progress == 4


def test_nothing_is_sent_while_logged_out(world):
    conn = world.login()
    conn.lose()
    m = world.queue()
    world.reactor.advance(5)
    got = world.message(m)
    assert got.status == "queued" and got.attempts == 0
    row = {r.name: r for r in fired(world.board.collect())}["tg1"]
    assert row.info["waiting"] == 1 and "1 waiting" in row.detail
    conn2 = world.login()
    a, *_ = send_command(conn2)


def test_a_send_waiting_at_shutdown_is_recorded(tmp_path):
    w = World(tmp_path)
    conn = w.login()
    m = w.queue()
    a, *_ = send_command(conn)
    conn.follows(a, "")
    stopped = w.parent.stopService()
    w.reactor.advance(2)
    conn.lose()
    fired(stopped)
    got = w.message(m)
    assert got.status == "queued" and got.attempts == 1
    assert got.reason == "websmsd stopped before the TG gave the result: it may have been sent"


def test_a_number_the_tg_cannot_take_fails_for_good(world):
    world.login()
    m = world.queue(to="alice")
    got = world.message(m)
    assert got.status == "failed" and "digits" in got.reason


# ======================================================================= USSD


def ussd_answer(world, conn, output):
    [a] = conn.others()
    assert a["command"].startswith("gsm send ussd 2 ")
    conn.follows(a, output)
    return a


def test_ussd_over_ami(world):
    conn = world.login()
    d = world.ussd["tg1"]("*100#")
    a = ussd_answer(world, conn, "1:Received USSD success on span: 2\n\tUSSD Responses: 0\n"
                    "\tUSSD Code: 72\n\tUSSD Len: 68\n\tUSSD Message: "
                    + "Баланс: 36.3 руб.".encode("utf-16-be").hex().upper() + "\n")
    assert a["command"] == 'gsm send ussd 2 "*100#" 30'
    assert fired(d) == "Баланс: 36.3 руб."
    d = world.ussd["tg1"]("*101#")
    ussd_answer(world, conn, "1:Recive USSD sucess on span 2\n\tUSSD Responses: 0\n\tUSSD Code: 15\n"
                "\tUSSD Len: 13\n\tUSSD Message: Balance 5 EUR\n")
    assert fired(d) == "Balance 5 EUR"
    d = world.ussd["tg1"]("*000#")
    ussd_answer(world, conn, "0:Send USSD failed on span 2\n")
    with pytest.raises(USSDError, match="port 1: Send USSD failed on span 2"):
        fired(d)
    d = world.ussd["tg1"]("*999#")
    ussd_answer(world, conn, "0:Send USSD timeout on span 2\n")
    with pytest.raises(USSDError, match="timeout"):
        fired(d)
    d = world.ussd["tg1"]("*100#")
    world.reactor.advance(40)
    with pytest.raises(USSDError, match="no answer from TG"):
        fired(d)


def test_ussd_while_logged_out(world):
    with pytest.raises(USSDError, match="not logged in to TG"):
        fired(world.ussd["tg2"]("*100#"))


# ======================================================================= HTTP transport

HTTP_EXAMPLE = EXAMPLE.replace("transport = ami ", "transport = http")


class ClosingTransport(StringTransport):
    """Closing it (the client's timeout) ends the connection at once."""

    def abortConnection(self):
        if not self.disconnecting:
            self.disconnecting = True
            self.protocol.connectionLost(Failure(error.ConnectionAborted()))

    loseConnection = abortConnection


class WebEndpoint:
    """Answers each WebCGI request with the next canned answer (bytes), or refuses."""

    def __init__(self):
        self.answers: List[object] = []
        self.requests: List[bytes] = []

    def connect(self, factory):
        answer = self.answers.pop(0)
        if isinstance(answer, Exception):
            return defer.fail(answer)
        proto = factory.buildProtocol(None)
        tr = ClosingTransport()
        tr.protocol = proto
        proto.makeConnection(tr)
        self.requests.append(tr.value())
        if answer is not None:
            proto.dataReceived(answer)
            proto.connectionLost(Failure(error.ConnectionDone()))
        return defer.succeed(proto)


BOA = (b"HTTP/1.0 200 OK\r\nDate: Thu, 06 Mar 2025 06:12:09 GMT\r\nServer: Boa/0.94.14rc21\r\n"
       b"Connection: close\r\n<Content-Type:text/html>\n\n")


def test_http_transport_sends_through_webcgi_despite_broken_headers(tmp_path):
    web = WebEndpoint()
    w = World(tmp_path, HTTP_EXAMPLE, webcgi_endpoint=lambda p: web)
    try:
        # Sending over HTTP does not wait for the AMI login.
        assert w.dispatcher.is_down("yeastar:tg1") is None
        web.answers.append(BOA + b"Response: Success\r\nMessage: Commit successfully!\r\n")
        m = w.queue(body="Hi + there")
        got = w.message(m)
        assert got.status == "sent", got.reason
        request = web.requests[0].decode()
        assert request.startswith("GET /cgi/WebCGI?1500101=account=apiuser&password=Api-S3cret"
                                  "&port=1&destination=%2B79161234567&content=Hi%20%2B%20there ")
        # Refused by the device: a failure; unreachable: the route pauses, no attempt spent.
        web.answers.append(BOA + b"Response: Error\r\nMessage: Invalid port\r\n")
        m2 = w.queue(body="two")
        w.reactor.advance(10)
        got = w.message(m2)
        assert got.status == "queued" and got.attempts == 1
        assert got.reason == "the TG refused it over HTTP: Invalid port"
        web.answers.append(error.ConnectionRefusedError("refused"))
        w.reactor.advance(30)
        got = w.message(m2)
        assert got.attempts == 1 and w.dispatcher.is_down("yeastar:tg1").startswith(
            "cannot reach the TG's web server")
        # USSD over HTTP too.
        web.answers.append(BOA + "Request: 1,*100#\r\nResponse: Success\r\nMessage: Баланс 5\r\n".encode())
        assert fired(w.ussd["tg1"]("*100#")) == "Баланс 5"
    finally:
        w.parent.stopService()


def test_http_answer_without_a_close_may_have_queued(tmp_path):
    web = WebEndpoint()
    w = World(tmp_path, HTTP_EXAMPLE, webcgi_endpoint=lambda p: web)
    try:
        web.answers.append(None)  # connected, never answers
        m = w.queue()
        w.reactor.advance(15)
        got = w.message(m)
        assert got.status == "queued" and got.reason.endswith("the TG may have queued it")
    finally:
        w.parent.stopService()
