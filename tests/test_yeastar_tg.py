"""websmsd.yeastar.tg: the pure Yeastar TG layer, against the notes' captures and tgpeer."""

from __future__ import annotations

import random
import socket
import subprocess
import sys
from pathlib import Path
from urllib.parse import unquote

import pytest

from tgpeer import FakeTG, cli_words, device_url_decode, encode_content, parse_sms_command
from websmsd.yeastar import tg, tg_answers
from websmsd.yeastar.tg import BadEvent, Reassembler, ReceivedPart, ReceivedSMS, SendUpdate, YeastarError
from websmsd.yeastar.tg_answers import UssdResult

ROOT = Path(__file__).resolve().parent.parent

# The notes' ReceivedSMS capture, as (name, value) pairs plus the bare end line.
NOTES_EVENT = [
    ("Event", "ReceivedSMS"), ("Privilege", "all,smscommand"), ("ID", ""), ("GsmSpan", "3"),
    ("Sender", "+79991234567"), ("Recvtime", "2025-03-06 06:12:09"), ("Index", "0"),
    ("Total", "1"), ("Smsc", "+79000000000"),
    ("Content", "%EF%BB%BF%D0%9F%D1%80%D0%B8%D0%B2%D0%B5%D1%82+%D0%BC%D0%B8%D1%80"),
    "--END SMS EVENT--",
]


def pairs(raw: bytes) -> list:
    """One AMI block -> (name, value) pairs, a bare line kept as a string (what the AMI
    client hands over)."""
    out: list = []
    for line in raw.decode("utf-8").split("\r\n"):
        if not line:
            continue
        if ":" in line:
            name, _, value = line.partition(":")
            out.append((name, value[1:] if value.startswith(" ") else value))
        else:
            out.append(line)
    return out


def event(**fields) -> list:
    base = dict(Event="ReceivedSMS", ID="", GsmSpan="2", Sender="+15551234", Recvtime="2025-01-01 10:00:00",
                Index="0", Total="1", Smsc="+15550000", Content="Hi")
    base.update({k: v for k, v in fields.items() if v is not None})
    for k in [k for k, v in fields.items() if v is None]:
        del base[k]
    return list(base.items())


def part_events(text_parts, *, ident="244", span=3, sender="+79991234567", order=None):
    tgp = FakeTG.__new__(FakeTG)  # only sms_events' encoding, no sockets
    tgp.smsc = "+79000000000"
    raws = FakeTG.sms_events(tgp, span, sender, parts=text_parts, order=order, ident=ident)
    return [pairs(r) for r in raws]


# ------------------------------------------------------------------------- numbering


def test_port_and_span():
    assert tg.port_to_span(1) == 2
    assert tg.span_to_port(2) == 1
    assert tg.span_to_port(tg.port_to_span(16)) == 16
    for bad in (0, -1, True, "1", 1.0, None, tg.MAX_PORT + 1):
        with pytest.raises(YeastarError):
            tg.port_to_span(bad)
    for bad in (1, 0, False, "2"):
        with pytest.raises(YeastarError):
            tg.span_to_port(bad)


# ------------------------------------------------------------------------- ReceivedSMS


def test_notes_capture():
    part = tg.parse_received(NOTES_EVENT)
    assert part == ReceivedPart(span=3, sender="+79991234567", recvtime="2025-03-06 06:12:09", ident="",
                                index=1, total=1, smsc="+79000000000", text="Привет мир")
    assert part.port == 2 and part.single and not part.damaged


def test_article_capture_index_1_and_mapping_input():
    # The seed article's event: older firmware, Index 1 for a single part, as a dict.
    part = tg.parse_received({
        "Total": "1", "Recvtime": "2016-07-15 17:49:55", "ID": "", "Event": "ReceivedSMS",
        "Privilege": "all,smscommand", "Index": "1", "GsmSpan": "4", "Sender": "+79991234567",
        "Smsc": "+79997456321", "--END SMS EVENT--": None, "Content": "%EF%BB%BF%D0%9A%D1%83-%D0%BA%D1%83"})
    assert (part.text, part.span, part.port, part.index, part.total) == ("Ку-ку", 4, 3, 1, 1)


@pytest.mark.parametrize("index", ["0", "1", "", None])
def test_single_part_decided_by_total(index):
    part = tg.parse_received(event(Index=index) if index is not None else event(Index=None))
    assert isinstance(part, ReceivedPart) and (part.index, part.total) == (1, 1)


def test_missing_total_is_a_single_part():
    assert tg.parse_received(event(Total=None, Index="3")).total == 1


def test_gsmport_and_gsmspan():
    assert tg.parse_received(event(GsmSpan=None, GsmPort="5")).span == 5
    assert tg.parse_received(event(GsmSpan="3", GsmPort="5")).span == 3


def test_header_names_case_insensitive_end_line_forms():
    ev = [(k.upper(), v) for k, v in event(Content="a+b")] + [("--END SMS EVENT--", None), ("--END SMS EVENT--", "")]
    assert tg.parse_received(ev).text == "a b"
    assert tg.parse_received([("content", "x"), ("gsmspan", " 2 "), ("sender", "Orange")]).sender == "Orange"


def test_first_occurrence_wins():
    ev = event(Content="first") + [("Content", "second")]
    assert tg.parse_received(ev).text == "first"


@pytest.mark.parametrize("content, text", [
    ("Hello+world%21", "Hello world!"),
    ("Balance*100#(ok)!~'", "Balance*100#(ok)!~'"),
    ("%2B1+555%2C+%25+done", "+1 555, % done"),
    ("%EF%BB%BF", ""),
    ("", ""),
    ("%e2%82%ac", "€"),
    ("%EF%BB%BF%F0%9F%98%80", "😀"),
    ("line1%0D%0Aline2", "line1\r\nline2"),
])
def test_content_decoding(content, text):
    part = tg.parse_received(event(Content=content))
    assert part.text == text and not part.damaged


@pytest.mark.parametrize("content, text", [
    ("100%", "100%"),
    ("%ZZ%4", "%ZZ%4"),
    ("%D0", "\ufffd"),
    ("a%FFb", "a\ufffdb"),
    ("%ED%A0%BDx", "\ufffdx"),  # a lone surrogate half: mended to U+FFFD
])
def test_malformed_content_is_kept_and_flagged(content, text):
    part = tg.parse_received(event(Content=content))
    assert part.text == text
    part.text.encode("utf-8")  # always safe to store
    assert part.damaged or "\ud83d" in part.units


@pytest.mark.parametrize("text", ["Balance *100# (ok)! ~'x'", "Цена: 5*2=10 (руб.)!", "a+b c%d"])
def test_content_as_tgpeer_writes_it(text):
    content = encode_content(text)
    assert " " not in content and ("%EF%BB%BF" in content) == (not text.isascii())
    assert tg.parse_received(event(Content=content)).text == text


def test_parts_built_by_hand_join():
    parts = [ReceivedPart(2, "+1", "", "9", i, 2, "", t) for i, t in ((2, "world"), (1, "hello "))]
    r = Reassembler()
    [m] = r.add(parts[0], 0) + r.add(parts[1], 0)
    assert m.text == "hello world"


def test_surrogateescape_values_give_their_bytes_back():
    # An AMI client that decoded a raw UTF-8 line with surrogateescape.
    raw = "Привет".encode("utf-8").decode("ascii", "surrogateescape")
    assert tg.parse_received(event(Content=raw)).text == "Привет"


@pytest.mark.parametrize("fields, reason", [
    (event(GsmSpan=None), "GsmSpan"),
    (event(GsmSpan="two"), "not a number"),
    (event(GsmSpan="0"), "does not exist"),
    (event(Sender=None), "Sender"),
    (event(Sender=""), "Sender"),
    (event(Sender="+1\x00"), "control"),
    (event(Content=None), "Content"),
    (event(Content="a" * (tg.MAX_CONTENT + 1)), "longer"),
    (event(Total="3", Index="0"), "Index"),
    (event(Total="3", Index="4"), "Index"),
    (event(Total="3", Index=None), "Index"),
    (event(Total="300", Index="1"), "parts"),
    (event(Total="-1"), "not a number"),
    (event(Event="UpdateSMSSend"), "not ReceivedSMS"),
    (event(ID="x" * 65), "ID"),
    (None, "pairs"),
    (5, "pairs"),
    ("Event: ReceivedSMS", "pairs"),
    (b"raw", "pairs"),
])
def test_bad_events_are_values(fields, reason):
    bad = tg.parse_received(fields)
    assert isinstance(bad, BadEvent), bad
    assert reason in bad.reason and bad.event == "ReceivedSMS"
    assert "ReceivedSMS" in str(bad)


def test_garbage_items_are_skipped():
    ev = event() + [None, 7, ("only-one",), ("a", "b", "c"), (3, "x"), ("Name", 5), b"--END--"]
    assert isinstance(tg.parse_received(ev), ReceivedPart)


def test_fuzz_never_raises():
    rng = random.Random(1729)
    names = ["Event", "GsmSpan", "GsmPort", "Sender", "ID", "Index", "Total", "Content", "Smsc", "Recvtime", "x"]
    alphabet = "0123456789%+ABCDEFabcdef\x00\n:\ud800é-"
    for _ in range(3000):
        ev = [(rng.choice(names), "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 12))))
              for _ in range(rng.randint(0, 12))]
        r = tg.parse_received(ev)
        assert isinstance(r, (ReceivedPart, BadEvent))
        if isinstance(r, ReceivedPart):
            r.text.encode("utf-8")
        assert isinstance(tg.parse_update_sms_send(ev), (SendUpdate, BadEvent))


# ------------------------------------------------------------------------- reassembly

CYRILLIC = "Съешь же ещё этих мягких французских булок, да выпей чаю. Широкая электрификация южных губерний"


def three_parts(text=CYRILLIC):
    # Cut mid-word, as the device does (at arbitrary points).
    a, b = 23, 61
    assert text[a - 1].isalpha() and text[a].isalpha() and text[b - 1].isalpha() and text[b].isalpha()
    return [text[:a], text[a:b], text[b:]]


def feed(r, evs, now=0.0):
    out = []
    for ev in evs:
        part = tg.parse_received(ev)
        assert isinstance(part, ReceivedPart), part
        out += r.add(part, now)
    return out


def test_three_cyrillic_parts_each_with_bom_out_of_order():
    evs = part_events(three_parts(), order=[3, 1, 2])
    for ev in evs:
        assert dict(p for p in ev if isinstance(p, tuple))["Content"].startswith("%EF%BB%BF")
    r = Reassembler()
    assert feed(r, evs[:2]) == [] and len(r) == 1
    [msg] = feed(r, evs[2:])
    assert msg == ReceivedSMS(span=3, sender="+79991234567", recvtime="2025-03-06 06:12:09", ident="244",
                              smsc="+79000000000", text=CYRILLIC, total=3, received=(1, 2, 3), complete=True)
    assert msg.missing == () and msg.port == 2 and len(r) == 0 and r.next_expiry() is None


@pytest.mark.parametrize("order", [[1, 2, 3], [3, 2, 1], [2, 3, 1], [2, 1, 3]])
def test_every_order(order):
    [msg] = feed(Reassembler(), part_events(three_parts(), order=order))
    assert msg.text == CYRILLIC and msg.complete


def test_duplicates_ignored_during_and_after():
    evs = part_events(three_parts())
    r = Reassembler(timeout=60)
    assert feed(r, [evs[1], evs[1], evs[0], evs[0]]) == []
    [msg] = feed(r, [evs[2]])
    assert msg.text == CYRILLIC
    # A late copy of a part of a finished message is not a new message...
    assert feed(r, [evs[0], evs[2]], now=30) == [] and len(r) == 0
    # ...but the same id reused long after is.
    assert feed(r, [evs[0]], now=200) == [] and len(r) == 1


def test_same_index_other_text_starts_a_new_message():
    r = Reassembler()
    old = part_events(["Первое ", "сообщ", "ение"])
    new = part_events(["Второе ", "сообщ", "ение"])
    assert feed(r, old[:2]) == []
    [gone] = feed(r, [new[0]])
    assert (gone.text, gone.complete, gone.received, gone.missing) == ("Первое сообщ", False, (1, 2), (3,))
    [msg] = feed(r, new[1:])
    assert msg.text == "Второе сообщение" and msg.complete


def test_keyed_on_span_sender_and_id():
    r = Reassembler()
    a = part_events(["aa", "AA"], ident="7", sender="+1")
    b = part_events(["bb", "BB"], ident="7", sender="+2")
    c = part_events(["cc", "CC"], ident="7", sender="+1", span=4)
    d = part_events(["dd", "DD"], ident="8", sender="+1")
    assert feed(r, [a[0], b[0], c[0], d[0]]) == [] and len(r) == 4
    out = feed(r, [d[1], c[1], b[1], a[1]])
    assert [m.text for m in out] == ["ddDD", "ccCC", "bbBB", "aaAA"]


def test_timeout_hands_out_what_arrived():
    evs = part_events(three_parts())
    r = Reassembler(timeout=120)
    feed(r, [evs[2]], now=1000)
    feed(r, [evs[0]], now=1010)
    assert r.next_expiry() == 1130
    assert r.expire(1129) == []
    [msg] = r.expire(1130)
    a, b, c = three_parts()
    assert (msg.text, msg.complete, msg.received, msg.missing) == (a + c, False, (1, 3), (2,))
    assert len(r) == 0 and r.expire(5000) == []
    # The missing part arriving late becomes its own (incomplete) message later.
    feed(r, [evs[1]], now=1200)
    [late] = r.expire(1320)
    assert late.text == b and late.received == (2,)


def test_bounded_groups_and_chars():
    r = Reassembler(max_groups=2)
    evs = [part_events(["x%d" % i, "y"], ident=str(i)) for i in range(3)]
    assert feed(r, [evs[0][0], evs[1][0]]) == []
    [oldest] = feed(r, [evs[2][0]])
    assert oldest.ident == "0" and not oldest.complete and len(r) == 2

    r = Reassembler(max_chars=10)
    assert feed(r, part_events(["12345", "x", "y"], ident="a")[:1]) == []
    [pushed] = feed(r, part_events(["abcdefgh", "z"], ident="b")[:1])
    assert pushed.ident == "a" and len(r) == 1
    # A group bigger than the budget by itself goes out at once, incomplete.
    out = feed(r, part_events(["0123456789abc", "z"], ident="c")[:1])
    assert [(m.ident, m.text, m.complete) for m in out] == [("b", "abcdefgh", False), ("c", "0123456789abc", False)]
    assert len(r) == 0 and r._chars == 0


def test_bounded_memory_under_flood():
    r = Reassembler(max_groups=16, remember=8)
    for i in range(2000):
        feed(r, part_events(["p%d" % i, "q", "r"], ident=str(i))[:2], now=i)
    assert len(r) <= 16 and len(r._done) <= 8


def test_flush():
    r = Reassembler()
    feed(r, part_events(["a", "b"])[:1])
    [m] = r.flush()
    assert (m.text, m.complete) == ("a", False) and len(r) == 0


def test_single_parts_pass_straight_through():
    r = Reassembler()
    [m] = r.add(tg.parse_received(NOTES_EVENT), 0)
    assert (m.text, m.complete, m.total, m.received) == ("Привет мир", True, 1, (1,)) and len(r) == 0


def test_split_inside_a_character_sequence():
    # A combining sequence (и + breve) cut between parts, and an emoji whose UTF-16
    # surrogate halves land in different parts (each half written as its own 3-byte form).
    text = "Привет, и\u0306од"
    [m] = feed(Reassembler(), part_events([text[:9], text[9:]], order=[2, 1]))
    assert m.text == text and m.text[8:10] == "и\u0306"
    halves = [event(ID="5", Total="2", Index="1", Content="%EF%BB%BFhi+%ED%A0%BD"),
              event(ID="5", Total="2", Index="2", Content="%EF%BB%BF%ED%B8%80+there")]
    parts = [tg.parse_received(e) for e in halves]
    assert all("\ufffd" in p.text for p in parts)  # each alone is mended, storable
    r = Reassembler()
    [m] = r.add(parts[1], 0) + r.add(parts[0], 0)
    assert m.text == "hi 😀 there" and not m.damaged


def test_reassembler_arguments():
    for kw in (dict(timeout=0), dict(max_groups=0), dict(max_chars=0), dict(remember=-1)):
        with pytest.raises(ValueError):
            Reassembler(**kw)


# ------------------------------------------------------------------------- UpdateSMSSend


def test_update_sms_send():
    ev = [("Event", "UpdateSMSSend"), ("Privilege", "all,smscommand"), ("ID", "11111"),
          ("Smsc", "+79991234567"), ("Status", "1"), "--END SMS EVENT--"]
    ident, ok, smsc = tg.parse_update_sms_send(ev)
    assert (ident, ok, smsc) == ("11111", True, "+79991234567")
    assert tg.parse_update_sms_send([("id", "(null)"), ("status", "0")]) == SendUpdate(None, False, "")
    assert tg.parse_update_sms_send([("ID", " "), ("Status", "1")]).ident is None


@pytest.mark.parametrize("fields", [
    [("ID", "1"), ("Status", "2")],
    [("ID", "1")],
    [("Event", "ReceivedSMS"), ("Status", "1")],
    [("ID", "1\x1b"), ("Status", "1")],
    None,
])
def test_bad_update_sms_send(fields):
    bad = tg.parse_update_sms_send(fields)
    assert isinstance(bad, BadEvent) and bad.event == "UpdateSMSSend" and bad.reason


# ------------------------------------------------------------------------- commands

ROUND_TRIP = [
    "hello",
    'say "hi"',
    "back\\slash \\\" \\\\n",
    "two\nlines\r\nand CR\r",
    "1+1=2 & 50% off; #tag",
    "%41 is not A, + is not space",
    "emoji 😀👍🏽 and 中文",
    "Привет, мир! Как дела?",
    "  leading and trailing  ",
    "\ttab'quote'(paren)*star!~",
    "a" * 1024,
    "ж" * 512,
]


@pytest.mark.parametrize("text", ROUND_TRIP)
def test_sms_command_round_trip_as_the_device_reads_it(text):
    command = tg.sms_command(3, "+79991234567", text, "ws-42")
    assert "\r" not in command and "\n" not in command
    words = cli_words(command)
    assert words[:5] == ["gsm", "send", "sms", "3", "+79991234567"] and words[6] == "ws-42"
    assert device_url_decode(words[5]) == text
    sent = parse_sms_command(command)
    assert (sent.span, sent.number, sent.text, sent.ident) == (3, "+79991234567", text, "ws-42")
    quoted = command.split('"')[1]
    assert set(quoted) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.~%")


def test_sms_command_exact():
    assert tg.sms_command(2, "89991234567", "Hi there!", "11111") == \
        'gsm send sms 2 89991234567 "Hi%20there%21" 11111'
    assert tg.sms_command(2, "1126", "x") == 'gsm send sms 2 1126 "x"'


def test_sms_command_limits():
    tg.sms_command(2, "+1", "a" * 1024)
    tg.sms_command(2, "+1", "ж" * 512)
    with pytest.raises(YeastarError, match="1025 bytes"):
        tg.sms_command(2, "+1", "a" * 1025)
    with pytest.raises(YeastarError, match="1026 bytes"):
        tg.sms_command(2, "+1", "ж" * 513)
    with pytest.raises(YeastarError, match="11 bytes"):
        tg.sms_command(2, "+1", "a" * 11, max_text_bytes=10)
    with pytest.raises(YeastarError, match="empty"):
        tg.sms_command(2, "+1", "")
    with pytest.raises(YeastarError, match="Unicode"):
        tg.sms_command(2, "+1", "half \ud83d")


@pytest.mark.parametrize("number", ["", "+", "12a", "+1 2", "1\n", "++1", "1+", "１２", None, 12, "1" * 33])
def test_sms_command_bad_number(number):
    with pytest.raises(YeastarError):
        tg.sms_command(2, number, "x")


@pytest.mark.parametrize("ident", ["", "a b", 'x"', "a\\b", "a\n", "é", 5, "x" * 65])
def test_sms_command_bad_ident(ident):
    with pytest.raises(YeastarError):
        tg.sms_command(2, "+1", "x", ident)


@pytest.mark.parametrize("span", [1, 0, True, "2", None, 2.0])
def test_sms_command_bad_span(span):
    with pytest.raises(YeastarError):
        tg.sms_command(span, "+1", "x")


@pytest.mark.parametrize("output, error", [
    ("", None), ("\n", None), (None, None), ("--END COMMAND--", None),
    ("GSM span 9 does not exist\n", "GSM span 9 does not exist"),
    (b"\nUsage: gsm send sms <span> <destination> <message> [id]\n--END COMMAND--",
     "Usage: gsm send sms <span> <destination> <message> [id]"),
])
def test_send_output_error(output, error):
    assert tg.send_output_error(output) == error


def test_ussd_command():
    assert tg.ussd_command(2, "*100#") == 'gsm send ussd 2 "*100#"'
    assert tg.ussd_command(5, "*101*1#", 45) == 'gsm send ussd 5 "*101*1#" 45'
    assert cli_words(tg.ussd_command(2, "#123*+1#")) == ["gsm", "send", "ussd", "2", "#123*+1#"]
    for code in ("%2A100%23", "*100#;", "*100# 1", "abc", "", "*100#\n", None):
        with pytest.raises(YeastarError):
            tg.ussd_command(2, code)
    for timeout in (0, True, 601, "30", 1.5):
        with pytest.raises(YeastarError):
            tg.ussd_command(2, "*100#", timeout)


# ------------------------------------------------------------------------- USSD output


def test_ussd_notes_ucs2():
    out = ("1:Received USSD success on span: 2\n\tUSSD Responses: 0\n\tUSSD Code: 72\n"
           "\tUSSD Len: 16\n\tUSSD Message: 6B228FCE4F7F7528\n")
    assert tg_answers.parse_ussd_output(out) == UssdResult(True, "欢迎使用", False, None, span=2, dcs=72)


def test_ussd_cyrillic_ucs2_glued_end():
    text = "Баланс: 36.3 руб."
    out = ("1:Received USSD success on span: 3\n\tUSSD Responses: 0\n\tUSSD Code: 72\n"
           f"\tUSSD Len: {len(text) * 4}\n\tUSSD Message: {text.encode('utf-16-be').hex().upper()}\n--END COMMAND--")
    assert tg_answers.parse_ussd_output(out).text == text


def test_ussd_text_dcs15_real_capture():
    out = ("1:Received USSD success on span: 3\n\tUSSD Responses: 0\n\tUSSD Code: 15\n\tUSSD Len: 100\n"
           "\tUSSD Message: Solde Principal: 170 FCFA, expire le 2019-11-17. Total Bonus: 0F.Pour plus de "
           "details tapez *101*1#.\n--END COMMAND--")
    r = tg_answers.parse_ussd_output(out)
    assert r.ok and r.dcs == 15 and r.span == 3 and not r.more_expected
    assert r.text == ("Solde Principal: 170 FCFA, expire le 2019-11-17. Total Bonus: 0F.Pour plus de "
                      "details tapez *101*1#.")


def test_ussd_tg400_variant_and_more_expected():
    out = ("1:Recive USSD sucess on span 2\r\n\tUSSD Responses: 1\r\n\tUSSD Code: 15\r\n"
           "\tUSSD Len: 20\r\n\tUSSD Message: 1. Balance\r\n2. Tariff\r\n")
    r = tg_answers.parse_ussd_output(out)
    assert (r.ok, r.text, r.more_expected, r.span) == (True, "1. Balance\n2. Tariff", True, 2)


def test_ussd_older_firmware_forms():
    r = tg_answers.parse_ussd_output("1:Recive USSD on span 12,responses:0,code:15\nText:UNKNOWN APPLICATION")
    assert (r.ok, r.text, r.span, r.dcs, r.more_expected) == (True, "UNKNOWN APPLICATION", 12, 15, False)
    r = tg_answers.parse_ussd_output("1:Recive USSD on span 1,responses:1,code:0 Text:Sisa pulsa Rp.0. 1.YA 2.Info")
    assert (r.text, r.more_expected, r.dcs) == ("Sisa pulsa Rp.0. 1.YA 2.Info", True, 0)


@pytest.mark.parametrize("out, words", [
    ("0:Send USSD failed on span 2\n", "failed"),
    ("0:Send USSD timeout on span 4\n--END COMMAND--", "timeout"),
    ("0:", "USSD failed"),
    ("GSM span 9 does not exist\n", "does not exist"),
    ("", "no answer"),
    (None, "no answer"),
    ("\x00\x01garbage\n", "garbage"),
])
def test_ussd_failures(out, words):
    r = tg_answers.parse_ussd_output(out)
    assert not r.ok and words in r.error and r.text == ""


def test_ussd_failure_span():
    assert tg_answers.parse_ussd_output("0:Send USSD timeout on span 4").span == 4


def test_ussd_ucs2_not_hex_is_kept_and_bytes_input():
    out = b"1:Received USSD success on span: 2\n\tUSSD Code: 72\n\tUSSD Message: not hex\n"
    assert tg_answers.parse_ussd_output(out).text == "not hex"
    assert tg_answers.parse_ussd_output(b"1:ok\n\tUSSD Code: 17\n\tUSSD Message: 0031\n").text == "1"  # 0x11


def test_ussd_emoji_surrogates_and_fuzz():
    text = "Hi 😀"
    out = f"1:Received USSD success on span: 2\n\tUSSD Code: 72\n\tUSSD Message: {text.encode('utf-16-be').hex()}\n"
    assert tg_answers.parse_ussd_output(out).text == text
    rng = random.Random(7)
    for _ in range(500):
        junk = "".join(rng.choice("01:\n\tUSSD Code Message Responses span 72 15 ABCDEF") for _ in range(60))
        assert isinstance(tg_answers.parse_ussd_output(junk), UssdResult)


def test_ussd_outputs_written_by_tgpeer():
    from tgpeer import default_ussd_replies
    for code, reply in default_ussd_replies().items():
        r = tg_answers.parse_ussd_output(reply.ami_output(3))
        assert r.ok == (reply.kind not in ("fail", "timeout")), code
        if r.ok:
            assert (r.text, r.more_expected, r.span) == (reply.text, reply.more, 3)


# ------------------------------------------------------------------------- spans

SPANS = (
    "GSM span 2: Power on, Provisioned, Up, Active,Standard\n"
    "GSM span 3: Power on, Provisioned, Undetected SIM Card, Active,Standard\n"
    "some unknown line\n"
    "GSM span 4: Power on, Down, Active, Standard\n"
    "GSM span 5: Power off\n"
    "GSM span 6: Power on, Provisioned, In Alarm, Up, Active,Standard\n"
    "GSM span 7: Power on, Provisioned, Block, Active,Standard--END COMMAND--"
)


def test_parse_spans():
    spans = tg_answers.parse_spans(SPANS)
    assert [s.span for s in spans] == [2, 3, 4, 5, 6, 7]
    s2, s3, s4, s5, s6, s7 = spans
    assert (s2.power, s2.provisioned, s2.state, s2.active, s2.up, s2.port) == (True, True, "Up", True, True, 1)
    assert s2.flags == ("Power on", "Provisioned", "Up", "Active", "Standard")
    assert (s3.state, s3.up) == ("Undetected SIM Card", False)
    assert (s4.provisioned, s4.state, s4.up) == (False, "Down", False)
    assert (s5.power, s5.state, s5.up, s5.active) == (False, "", False, None)
    assert (s6.state, s6.up, "In Alarm" in s6.flags) == ("Up", True, True)
    assert (s7.state, s7.status) == ("Block", "Power on, Provisioned, Block, Active,Standard")


def test_parse_spans_garbage():
    assert tg_answers.parse_spans("") == [] and tg_answers.parse_spans(None) == [] and tg_answers.parse_spans("No such command") == []
    assert tg_answers.parse_spans(b"GSM span 2: Power on, Provisioned, Up, Active,Standard\r\n")[0].up


SPAN_SIM800 = (
    "D-channel: 2\nStatus: Power on, Provisioned, Up, Active,Standard\nType: CPE\nManufacturer: SIMCOM_Ltd\n"
    "Model Name: SIMCOM_SIM800\nModel IMEI: 894005028759112\nModel CBAND:  EGSM_MODE,ALL_BAND\n"
    "Revision: 1308B08SIM800M32\nNetwork Name: Bee Line GSM\nNetwork Status: Registered (Home network)\n"
    "Signal Quality (0,31): 13\nSIM IMSI: 251225532128772\nSIM SMS Center Number: +79037011111\n"
    "Send SMS Center Number: Undefined\nLast event: USSD received\nState: READY\n"
    "Last send AT: AT+CREG?\\r\\n--END COMMAND--")

SPAN_EC21_DOWN = "D-channel: 3\nStatus: Power on, Down, Active, Standard"

SPAN_UNREGISTERED = ("D-channel: 2\nStatus: Provisioned, Down, Active\nSwitchtype: SimCom 100/300\nType: CPE\n"
                     "Network Status: Unregistered\nNetwork Name:\nSignal Quality (0,31): -1\nSIM IMSI:\n"
                     "Card IMEI: 8600\nBER value (0,7): 0\nPDD: 7\n")


def test_parse_span_capture():
    info = tg_answers.parse_span(SPAN_SIM800)
    assert (info.span, info.port, info.signal, info.network_name, info.imei, info.imsi, info.smsc) == \
        (2, 1, 13, "Bee Line GSM", "894005028759112", "251225532128772", "+79037011111")
    assert (info.manufacturer, info.model, info.revision, info.state, info.last_event) == \
        ("SIMCOM_Ltd", "SIMCOM_SIM800", "1308B08SIM800M32", "READY", "USSD received")
    assert info.status.up and info.network_status == "Registered (Home network)"
    assert info.fields["Last send AT"] == "AT+CREG?\\r\\n"
    assert info.fields["Model CBAND"] == "EGSM_MODE,ALL_BAND"


def test_parse_span_down_and_unregistered():
    info = tg_answers.parse_span(SPAN_EC21_DOWN)
    assert (info.span, info.signal, info.status.state, info.imei) == (3, None, "Down", "")
    info = tg_answers.parse_span(SPAN_UNREGISTERED)
    assert (info.signal, info.network_name, info.imsi, info.imei) == (None, "", "", "8600")
    assert info.fields["PDD"] == "7" and info.fields["BER value (0,7)"] == "0"


@pytest.mark.parametrize("out", ["", None, "GSM span 9 does not exist\n", "No such command 'x'", "Error: x"])
def test_parse_span_errors(out):
    assert tg_answers.parse_span(out) is None


def test_parse_span_signal_out_of_range():
    assert tg_answers.parse_span("D-channel: 2\nSignal Quality (0,31): 99\n").signal is None
    assert tg_answers.parse_span("D-channel: 2\nSignal Quality (0,31): 31\n").signal == 31


# ------------------------------------------------------------------------- WebCGI


def test_webcgi_urls_article_examples():
    assert tg.webcgi_send_url("192.168.5.150", 80, "arttel", "arttel", 1, "89991234567", "test") == (
        "http://192.168.5.150:80/cgi/WebCGI?1500101=account=arttel&password=arttel&port=1"
        "&destination=89991234567&content=test")
    assert tg.webcgi_ussd_url("192.168.5.150", 80, "arttel", "arttel", 1, "*100#") == (
        "http://192.168.5.150:80/cgi/WebCGI?1500102=account=arttel&password=arttel&port=1&content=%2A100%23")


def test_webcgi_values_are_encoded():
    target = tg.webcgi_send_target("a c&", "p&w=d", 2, "+7999", "x & y+z=%\n")
    query = target.split("?", 1)[1]
    args = dict(item.split("=", 1) for item in query.split("=", 1)[1].split("&"))
    assert [unquote(args[k]) for k in ("account", "password", "port", "destination", "content")] == \
        ["a c&", "p&w=d", "2", "+7999", "x & y+z=%\n"]
    assert "+" not in query and " " not in target
    # Decoded the way the device decodes (`+` as a space), every value survives.
    assert [device_url_decode(args[k]) for k in ("account", "password", "destination", "content")] == \
        ["a c&", "p&w=d", "+7999", "x & y+z=%\n"]
    assert tg.webcgi_send_url("::1", 8080, "a", "b", 1, "1", "x", tls=True).startswith("https://[::1]:8080/cgi/")


@pytest.mark.parametrize("kw", [
    dict(host="a/b"), dict(host="u@h"), dict(host=""), dict(port_http=0), dict(account=""),
    dict(password="x\ny"), dict(port=0), dict(destination="12 3"), dict(text=""), dict(text="a" * 1025),
])
def test_webcgi_bad_arguments(kw):
    args = dict(host="10.0.0.1", port_http=80, account="a", password="b", port=1, destination="1", text="x")
    args.update(kw)
    with pytest.raises(YeastarError):
        tg.webcgi_send_url(**args)


def test_webcgi_bad_ussd_code():
    with pytest.raises(YeastarError):
        tg.webcgi_ussd_target("a", "b", 1, "*100#&x=1")


@pytest.mark.parametrize("body, expected", [
    (b"Response: Success\r\nMessage: Commit successfully!\r\n", (True, "Commit successfully!")),
    (b"\n\nresponse: success\nmessage: Commit successfully!", (True, "Commit successfully!")),
    (b"Response: Error\r\nMessage: Authentication failed\r\n", (False, "Authentication failed")),
    (b"Response: Failed\r\n", (False, "Response: Failed")),
    (b"<html><body>404 Not Found</body></html>\n", (False, "<html><body>404 Not Found</body></html>")),
    (b"Message: Commit successfully!\r\n", (False, "Commit successfully!")),
    (b"", (False, "empty answer")),
    (b"\xff\xfeResponse: Success", (False, "\ufffd\ufffdResponse: Success")),
    ("Response: Success\nMessage: ok", (True, "ok")),
])
def test_parse_webcgi_answer(body, expected):
    assert tg_answers.parse_webcgi_answer(body) == expected


def test_parse_webcgi_ussd_answer():
    body = "Request: 1,*100#\r\nResponse: Success\r\nMessage: Баланс: 36.3 р.\r\n2. Меню\r\n".encode()
    assert tg_answers.parse_webcgi_ussd_answer(body) == UssdResult(True, "Баланс: 36.3 р.\n2. Меню", span=2)
    r = tg_answers.parse_webcgi_ussd_answer(b"Request: 1,*000#\r\nResponse: Error\r\nMessage: Send USSD failed\r\n")
    assert (r.ok, r.error, r.span) == (False, "Send USSD failed", 2)


BODY = b"Response: Success\r\nMessage: Commit successfully!\r\n"


@pytest.mark.parametrize("raw", [
    b"HTTP/1.0 200 OK\r\nServer: Boa/0.94.14rc21\r\nContent-Type: text/html\r\n\r\n" + BODY,
    b"HTTP/1.0 200 OK\r\nDate: x\r\nServer: Boa/0.94.14rc21\r\nConnection: close\r\n<Content-Type:text/html>\n\n" + BODY,
    b"HTTP/1.1 200 OK\r\n<Content-Type:text/html>\r\n\r\n" + BODY,
    b"\r\n\r\nHTTP/1.0 200 OK\r\n\r\n\r\nDate: x\r\nServer: Boa\r\n<Content-Type:text/html>\n\n" + BODY,
    b"\n\nHTTP/1.0 200 OK\n<Content-type:text/html>\n\n" + BODY,
    b"<Content-Type:text/html>\n\n" + BODY,
    BODY,
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nRespo\r\n" + b"%x\r\n" % (len(BODY) - 5)
    + BODY[5:] + b"\r\n0\r\n\r\n",
])
def test_parse_http_answer_finds_the_body(raw):
    answer = tg_answers.parse_http_answer(raw)
    assert answer.body.replace(b"\r\n", b"\n").strip() == BODY.replace(b"\r\n", b"\n").strip()
    assert answer.status in (200, None)
    assert tg_answers.parse_webcgi_answer(answer.body) == (True, "Commit successfully!")


def test_parse_http_answer_details():
    a = tg_answers.parse_http_answer(b"HTTP/1.0 401 Unauthorized\r\n<Content-Type:text/html>\r\nX-Odd: 1\r\n\r\n"
                             b"Request: 1,*100#\r\nResponse: Success\r\n")
    assert (a.status, a.reason, a.header("content-type"), a.header("x-odd")) == (401, "Unauthorized", "text/html", "1")
    assert a.body.startswith(b"Request: 1,*100#")
    assert tg_answers.parse_http_answer(b"").status is None and tg_answers.parse_http_answer(b"").body == b""
    html = tg_answers.parse_http_answer(b"HTTP/1.0 200 OK\r\n\r\n<html>\r\n<meta content=\"x\">\r\n")
    assert html.body.startswith(b"<html>")


def test_http_answer_complete():
    assert tg_answers.http_answer_complete(b"HTTP/1.0 200 OK\r\nContent-Length: 4\r\n\r\nabcd")
    assert not tg_answers.http_answer_complete(b"HTTP/1.0 200 OK\r\nContent-Length: 5\r\n\r\nabcd")
    assert not tg_answers.http_answer_complete(b"HTTP/1.0 200 OK\r\n<Content-Type:text/html>\n\nabcd")
    assert not tg_answers.http_answer_complete(b"Content-Length: 4\r\n\r\nabcd")


def test_parse_http_answer_fuzz():
    rng = random.Random(3)
    pieces = [b"HTTP/1.0 200 OK", b"\r\n", b"\n", b"<Content-Type:text/html>", b"Server: Boa", b"Response: Success",
              b"Transfer-Encoding: chunked", b"ff", b"0", b"\xff", b":", b" "]
    for _ in range(2000):
        raw = b"".join(rng.choice(pieces) for _ in range(rng.randint(0, 20)))
        a = tg_answers.parse_http_answer(raw)
        assert isinstance(a.body, bytes)
        tg_answers.http_answer_complete(raw)
        tg_answers.parse_webcgi_answer(a.body)


# ------------------------------------------------------------------------- boundaries


def test_pure_module_imports_no_twisted():
    code = ("import sys, websmsd.yeastar.tg, websmsd.yeastar.tg_answers\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('twisted', 'treq')))")
    out = subprocess.run([sys.executable, "-c", code], cwd=str(ROOT), capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_tgpeer_does_not_use_websmsd():
    # The fake is an independent reading of the device: it imports nothing of websmsd.
    import re
    source = (ROOT / "tests" / "tgpeer.py").read_text()
    imports = re.findall(r"^\s*(?:from|import)\s+(\S+)", source, re.M)
    assert imports and not [m for m in imports if m.split(".")[0] == "websmsd"]


# ------------------------------------------------------------------------- the fake TG


def read_until(sock, marker: bytes, buf: bytearray) -> bytes:
    while marker not in buf:
        chunk = sock.recv(65536)
        if not chunk:
            raise AssertionError(f"closed before {marker!r}; got {bytes(buf)!r}")
        buf += chunk
    end = buf.index(marker) + len(marker)
    out = bytes(buf[:end])
    del buf[:end]
    return out


def test_tgpeer_speaks_like_the_captures():
    with FakeTG(empty_ports=[2], send_delay=0.01) as fake:
        # A wrong password: answered, then the connection closes.
        with socket.create_connection(("127.0.0.1", fake.ami_port), timeout=10) as s:
            buf = bytearray()
            assert read_until(s, b"\r\n", buf) == b"Asterisk Call Manager/1.1\r\n"
            s.sendall(b"Action: Login\r\nUsername: websmsd\r\nSecret: nope\r\n\r\n")
            assert read_until(s, b"\r\n\r\n", buf) == b"Response: Error\r\nMessage: Authentication failed\r\n\r\n"
            assert s.recv(100) == b""

        with socket.create_connection(("127.0.0.1", fake.ami_port), timeout=10) as s:
            buf = bytearray()
            s.sendall(b"action: login\nusername: websmsd\nsecret: tg-secret\n\n")  # bare LF, lower case
            assert read_until(s, b"\r\n\r\n", buf) == (
                b"Asterisk Call Manager/1.1\r\nResponse: Success\r\nMessage: Authentication accepted\r\n\r\n")

            command = tg.sms_command(2, "+79991234567", 'Привет "мир"\n+1', "ws-1")
            s.sendall(f"Action: SMSCommand\r\nActionID: a1\r\ncommand: {command}\r\n\r\n".encode())
            assert read_until(s, b"--END COMMAND--\r\n\r\n", buf) == (
                b"Response: Follows\r\nPrivilege: SMSCommand\r\nActionID: a1\r\n--END COMMAND--\r\n\r\n")
            update = read_until(s, b"\r\n\r\n", buf)
            assert update == (b"Event: UpdateSMSSend\r\nPrivilege: all,smscommand\r\nID: ws-1\r\n"
                              b"Smsc: +79037011111\r\nStatus: 1\r\n--END SMS EVENT--\r\n\r\n")
            assert tg.parse_update_sms_send(pairs(update)) == ("ws-1", True, "+79037011111")
            assert fake.sms[0].text == 'Привет "мир"\n+1'

            s.sendall(b"Action: smscommand\r\nCommand: gsm show span 2\r\n\r\n")
            shown = read_until(s, b"--END COMMAND--\r\n\r\n", buf)
            assert shown.endswith(b"Last send AT: AT+CREG?\\r\\n--END COMMAND--\r\n\r\n")
            assert tg_answers.parse_span(shown.split(b"SMSCommand\r\n", 1)[1].decode()).signal == 19

            s.sendall(b"Action: smscommand\r\nCommand: gsm show spans\r\n\r\n")
            spans = read_until(s, b"--END COMMAND--\r\n\r\n", buf).decode()
            assert [(x.span, x.up) for x in tg_answers.parse_spans(spans)] == [(2, True), (3, False), (4, True), (5, True)]

            s.sendall(b"Action: smscommand\r\nCommand: gsm send ussd 2 \"*100#\"\r\n\r\n")
            ussd = read_until(s, b"--END COMMAND--\r\n\r\n", buf).decode()
            assert tg_answers.parse_ussd_output(ussd.split("SMSCommand\r\n", 1)[1]).text == "Баланс: 36.3 руб."

            # A bad span: an error text and no event.
            s.sendall(b"Action: smscommand\r\nCommand: gsm send sms 9 +1 \"x\" ws-2\r\n\r\n")
            bad = read_until(s, b"--END COMMAND--\r\n\r\n", buf)
            assert tg.send_output_error(bad.split(b"SMSCommand\r\n", 1)[1].decode())

            # A three-part Cyrillic SMS pushed out of order, a BOM in every part.
            assert fake.push_sms(3, "+79991234567", parts=three_parts(), order=[2, 3, 1], ident="244")
            events = [read_until(s, b"\r\n\r\n", buf) for _ in range(3)]
            assert all(e.count(b"Content: %EF%BB%BF") == 1 and e.startswith(b"Event: ReceivedSMS\r\n")
                       for e in events)
            assert [e.split(b"Index: ")[1][:1] for e in events] == [b"2", b"3", b"1"]
            r = Reassembler()
            [msg] = [m for e in events for m in r.add(tg.parse_received(pairs(e)), 0)]
            assert msg.text == CYRILLIC

            fake.drop()
            assert s.recv(100) == b"" and not buf
        assert fake.commands[0] == command and fake.ussd == [(2, "*100#")]


def test_tgpeer_knobs():
    with FakeTG(send_delay=0.01, send_status=lambda number: 0 if number.startswith("+0") else 1) as fake:
        with socket.create_connection(("127.0.0.1", fake.ami_port), timeout=10) as quiet, \
                socket.create_connection(("127.0.0.1", fake.ami_port), timeout=10) as s:
            qbuf, buf = bytearray(), bytearray()
            quiet.sendall(b"Action: Ping\r\n\r\n")
            assert read_until(quiet, b"\r\n\r\n", qbuf).endswith(
                b"Response: Error\r\nMessage: Authentication Required\r\n\r\n")
            quiet.sendall(b"Action: Login\r\nUsername: websmsd\r\nSecret: tg-secret\r\nEvents: off\r\n\r\n")
            read_until(quiet, b"\r\n\r\n", qbuf)
            s.sendall(b"Action: Login\r\nActionID: L\r\nUsername: websmsd\r\nSecret: tg-secret\r\n\r\n")
            assert read_until(s, b"\r\n\r\n", buf).endswith(
                b"Response: Success\r\nActionID: L\r\nMessage: Authentication accepted\r\n\r\n")
            assert fake.wait_for(lambda: fake.logins == 2)

            s.sendall(b"Action: smscommand\r\nCommand: gsm send sms 2 +0123 \"x\" f1\r\n\r\n")
            read_until(s, b"--END COMMAND--\r\n\r\n", buf)
            assert b"Status: 0\r\n" in read_until(s, b"--END SMS EVENT--\r\n\r\n", buf)
            fake.send_delay = None  # the event is lost
            fake.glue_end = True
            s.sendall(b"Action: smscommand\r\nCommand: gsm send sms 2 1126 \"y\"\r\n\r\n"
                      b"Action: smscommand\r\nCommand: gsm send ussd 2 \"*999#\"\r\n\r\n"
                      b"Action: Ping\r\n\r\n")
            assert read_until(s, b"--END COMMAND--\r\n\r\n", buf) == \
                b"Response: Follows\r\nPrivilege: SMSCommand\r\n--END COMMAND--\r\n\r\n"
            assert read_until(s, b"--END COMMAND--\r\n\r\n", buf).endswith(
                b"0:Send USSD timeout on span 2--END COMMAND--\r\n\r\n")
            assert read_until(s, b"\r\n\r\n", buf) == b"Response: Pong\r\n\r\n"
            fake.push_sms(5, "Orange", "Hi *you*", index_base=1, field="GsmPort")
            raw = read_until(s, b"\r\n\r\n", buf)
            assert b"\r\nID: \r\nGsmPort: 5\r\n" in raw and b"\r\nIndex: 1\r\nTotal: 1\r\n" in raw
            assert b"\r\nContent: Hi+*you*\r\n--END SMS EVENT--\r\n\r\n" in raw
            part = tg.parse_received(pairs(raw))
            assert (part.span, part.sender, part.text, part.index) == (5, "Orange", "Hi *you*", 1)
            s.sendall(b"Action: Logoff\r\n\r\n")
            assert read_until(s, b"\r\n\r\n", buf) == b"Response: Goodbye\r\nMessage: Thanks for all the fish.\r\n\r\n"
            assert s.recv(10) == b""
            # The session that asked for no events got none.
            quiet.sendall(b"Action: Logoff\r\n\r\n")
            assert read_until(quiet, b"\r\n\r\n", qbuf).startswith(b"Response: Goodbye")
            assert b"Event:" not in qbuf
        assert [(m.number, m.ident) for m in fake.sms] == [("+0123", "f1"), ("1126", None)]
