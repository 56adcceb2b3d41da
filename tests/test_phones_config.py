"""[ami], [astqueue] delivery, [phones] as issue #16 writes them; the inbound fan-out;
the parts a long text becomes for MessageSend."""

from __future__ import annotations

import unicodedata

import pytest

from websmsd.config import ConfigError, load, loads, report
from websmsd.message import IN, Message
from websmsd.phones.sink import parts_of
from websmsd.routing import fan_out, router_for
from websmsd.textsplit import clusters, split_marked

EXAMPLE = """\
[ami]                                ; the PBX's own Asterisk manager interface
host     = 127.0.0.1
port     = 5038
username = websmsd
secret   = amisecret

[astqueue]
delivery = ami                       ; callfile (default, as today) | ami

[phones]                             ; PJSIP endpoint name -> its numbers
number [john.doe] = +12025550160
number [jane.doe] = +12025550183
number [desk]     = +12025550160     ; two endpoints may share a number: both get it
notify [john.doe] = all              ; none (default) | failed | all
"""


def test_the_issue_example_loads_as_written(tmp_path):
    path = tmp_path / "websms.conf"
    path.write_text(EXAMPLE)
    s = load(path)
    ami = s.channels["ami"]
    assert (ami.host, ami.port, ami.username, ami.secret) == (
        "127.0.0.1", 5038, "websmsd", "amisecret")
    assert (ami.keepalive, ami.timeout) == (30.0, 10.0)
    assert ami.endpoint == "tcp:host=127.0.0.1:port=5038"
    assert s.astqueue.delivery == "ami"
    assert s.phones.endpoints_of("+12025550160") == ["john.doe", "desk"]
    assert [(p.name, p.notify) for p in s.phones.interfaces] == [
        ("john.doe", "all"), ("jane.doe", "none"), ("desk", "none")]
    # [ami] adds no interface out of the PBX (and the example has no [websms] url_host:
    # nothing goes out, and check-config says so as its one error).
    assert s.interfaces() == []
    assert len(s.problems) == 1 and "no interface configured for outbound SMS" in s.problems[0]
    text = report(s)
    assert "[ami]" in text and "secret = ****" in text and "amisecret" not in text
    assert "delivery = ami" in text


def test_defaults_and_ipv6():
    s = loads("[ami]\nusername = u\nsecret = s\nhost = ::1\nkeepalive = 2m\ntimeout = 5\n"
              "[astqueue]\n", "websms.conf")
    ami = s.channels["ami"]
    assert ami.endpoint == "tcp:host=\\:\\:1:port=5038" and ami.keepalive == 120.0
    assert loads("[astqueue]\n", "w").astqueue.delivery == "callfile"
    assert "ami" not in loads("[astqueue]\n", "w").channels


@pytest.mark.parametrize("text, where", [
    ("[astqueue]\ndelivery = ami\n", "websms.conf:2: delivery: delivery = ami needs an [ami]"),
    ("[astqueue]\ndelivery = sms\n", "websms.conf:2: delivery: 'sms' is not one of callfile, ami"),
    ("[ami]\nusername = u\n[astqueue]\n", "websms.conf:1: [ami] needs secret"),
    ("[ami]\nsecret = s\n[astqueue]\n", "websms.conf:1: [ami] needs username"),
    ("[ami]\nusername = u\nsecret = s\nport = 70000\n[astqueue]\n",
     "websms.conf:4: port: '70000' is not a TCP port"),
    ("[ami]\nusername = u\nsecret = s\nhost = a b\n[astqueue]\n",
     "websms.conf:4: host: 'a b' is not a host name"),
    ("[ami]\nusername = u\nsecret = \" s\"\n[astqueue]\n",
     "websms.conf:3: secret: must not begin or end with a blank"),
    ("[ami]\nusername [x] = u\nsecret = s\n[astqueue]\n",
     "websms.conf:2: username[x]: cannot be indexed"),
    ("[ami]\nusername = u\nsecret = s\nevents = on\n[astqueue]\n",
     "websms.conf:4: events: unknown key in [ami]"),
    ("[ami]\nusername = u\nsecret = s\ntimeout = 0\n[astqueue]\n",
     "websms.conf:4: timeout: must be more than 0"),
])
def test_errors_name_file_line_and_key(text, where):
    with pytest.raises(ConfigError) as e:
        loads(text, "websms.conf")
    assert str(e.value).startswith(where), str(e.value)


def test_notify_without_ami_is_a_warning():
    s = loads("[phones]\nnumber [a] = +1202555\nnotify [a] = failed\n[astqueue]\n", "websms.conf")
    assert any("websms.conf:3: notify: notices are sent over AMI" in w for w in s.warnings)


def test_numbers_are_compared_by_their_digits():
    s = loads(EXAMPLE, "w")
    for written in ("+12025550160", "12025550160", "0012025550160", "+1 (202) 555-0160"):
        assert s.phones.endpoints_of(written) == ["john.doe", "desk"], written
    assert s.phones.endpoints_of("2025550160") == []
    assert s.phones.endpoints_of("john.doe") == [] and s.phones.endpoints_of("") == []


# -- the inbound router ---------------------------------------------------------------------


def test_with_delivery_ami_an_sms_goes_to_every_phone_that_has_the_number():
    router = router_for(loads(EXAMPLE, "w"))
    assert router.inbound_routes("+12025550160") == ("ami:john.doe", "ami:desk")
    assert router.inbound_routes("+12025550183") == ("ami:jane.doe",)
    # A number no phone has: the call files (the dialplan decides, as before).
    assert router.inbound_routes("+19995550000") == ("callfile",)
    assert router.inbound("+12025550160") == "ami:john.doe"
    # delivery = callfile: every SMS to the call files, [phones] or not.
    plain = router_for(loads(EXAMPLE.replace("delivery = ami", "delivery = callfile"), "w"))
    assert plain.inbound_routes("+12025550160") == ("callfile",)


def test_fan_out_gives_each_copy_its_own_id_and_dedupe_key():
    m = Message(IN, "", "+12025550160", "+1555", "hi", source="webhook:tw", dedupe_key="tw:SM1")
    copies = fan_out(m, ("ami:john.doe", "ami:desk"))
    assert copies[0] is m and m.route == "ami:john.doe"
    assert copies[1].route == "ami:desk" and copies[1].id != m.id
    assert copies[1].dedupe_key == "tw:SM1|ami:desk"
    assert (copies[1].body, copies[1].recipient, copies[1].source) == ("hi", m.recipient, m.source)
    assert len(copies[1].id) == 20
    bare = Message(IN, "", "+1", "+2", "x")
    assert [c.dedupe_key for c in fan_out(bare, ("a", "b"))] == [None, None]


def test_the_reply_of_a_phone_leaves_through_the_interface_that_owns_its_number():
    s = loads("[websms]\nurl_host [a] = http://a\nurl_host [b] = http://b\nnumber [b] = +12025550160\n"
              + EXAMPLE, "w")
    from websmsd.outbox import Outbox

    class Store:
        owners = {}

    from twisted.internet import task

    outbox = Outbox(Store(), None, router_for(s), task.Clock(), phone_numbers=s.phones.numbers())
    m = outbox.prepare("+4670123", '"John" <sip:john.doe@192.0.2.10>', "hej")
    assert (m.sender, m.route, m.source) == ("+12025550160", "itsp:b", "agi:john.doe")
    # A number no interface owns: the one its last SMS came in on.
    Store.owners = {"+12025550183": "webhook:a"}
    m = outbox.prepare("+4670123", "Jane <sip:jane.doe@192.0.2.10>", "hej")
    assert (m.sender, m.route) == ("+12025550183", "itsp:a")
    Store.owners = {"12025550183": "webhook:b"}  # the ITSP wrote the To without "+"
    m = outbox.prepare("+4670123", "Jane <sip:jane.doe@192.0.2.10>", "hej")
    assert (m.sender, m.route) == ("+12025550183", "itsp:b")


# -- parts for MessageSend ------------------------------------------------------------------


def test_a_text_that_fits_goes_whole():
    assert parts_of("x" * 756) == [b"x" * 756]
    assert parts_of("ж" * 378) == ["ж".encode() * 378]


@pytest.mark.parametrize("text", [
    "x" * 757,
    "Привет, мир! " * 130,
    "😀" * 500,
    "a\u0301" * 700,  # combining marks
    "👨‍👩‍👧‍👦 " * 120,  # ZWJ families
    "🇸🇪🇫🇮" * 200,  # flags: pairs of regional indicators
    "line\r\n" * 300,
    "  leading blanks kept " * 80,
])
def test_long_texts_split_into_clean_parts_of_at_most_756_bytes(text):
    parts = parts_of(text)
    n = len(parts)
    assert n > 1 and all(len(p) <= 756 for p in parts)
    decoded = [p.decode("utf-8") for p in parts]  # each part is UTF-8 on its own
    assert [d.split(" ", 1)[0] for d in decoded] == [f"({i}/{n})" for i in range(1, n + 1)]
    bodies = [d.split(" ", 1)[1] for d in decoded]
    assert "".join(bodies) == text
    # No grapheme cluster is cut: the clusters of the parts are those of the text.
    assert [c for b in bodies for c in clusters(b)] == clusters(text)
    assert not any(unicodedata.category(b[0]) == "Mn" for b in bodies)


def test_parts_are_cut_after_a_blank_when_that_keeps_them_full():
    parts = [p.decode() for p in parts_of("word " * 400)]
    assert all(p.endswith(" ") for p in parts[:-1])


def test_split_refuses_a_limit_that_holds_no_text():
    with pytest.raises(ValueError):
        split_marked("x" * 100, 8)
