"""Tests for websmsd.asterisk.callfile: call-file rendering, splitting and the spool."""

from __future__ import annotations

import errno
import json
import os
import pathlib
import random
import re
import stat
import subprocess
import sys
import unicodedata
import urllib.parse

import pytest

from websmsd.asterisk.callfile import (
    BODY_PREFIX,
    MAX_LINE,
    CallFileSpool,
    CrossDeviceError,
    LineTooLong,
    callfile_name,
    parse_callfile_name,
    parse_fileowner,
    raw_body,
    render,
    rfc3986,
    split_body,
)
from websmsd.message import UnsafeValue, new_id
from websmsd.config import AstQueueSettings

# --------------------------------------------------------------------------- fixtures

_HERE = pathlib.Path(__file__).resolve().parent
_CANDIDATES = [
    os.environ.get("WEBSMSD_ASTERISK_FIXTURES", ""),
    str(_HERE / "fixtures" / "asterisk"),
    "/work/shared/fixtures/asterisk",
]
FIXTURE_DIR = next(
    (pathlib.Path(p) for p in _CANDIDATES if p and (pathlib.Path(p) / "callfiles.json").is_file()),
    None,
)
needs_fixtures = pytest.mark.skipif(FIXTURE_DIR is None, reason="callfiles.json not found")


def _cases():
    if FIXTURE_DIR is None:
        return {}
    with open(FIXTURE_DIR / "callfiles.json", encoding="utf-8") as f:
        return json.load(f)["cases"]


CASES = _cases()

# Fixture cases that are not in the format render() writes, and why.
NOT_RENDERED = {
    "raw_literal_plus": "hand-made non-canonical encoding (a+b%2Bc+d)",
    "raw_lowercase_hex": "hand-made lowercase hex",
    "raw_invalid_escapes": "hand-made invalid escapes",
    "raw_unencoded_utf8_space": "hand-made unencoded UTF-8 with MESSAGE_ENCODE=rfc3986",
    "unknown_lines": "extra 'Foo: bar' and colon-less lines",
    "newline_injection_in_from": "the injection render() must refuse",
}
# Cases whose body line is too long for Asterisk (it delivered an empty body).
TOO_LONG = {"ascii_1001_unreserved", "ascii_1000_with_spaces", "cyrillic_1000"}

_LINE_KEYS = {
    "Channel": "channel",
    "CallerID": "callerid",
    "WaitTime": "waittime",
    "MaxRetries": "maxretries",
    "RetryTime": "retrytime",
    "Account": "account",
    "Application": "application",
    "Data": "data",
    "Context": "context",
    "Extension": "extension",
    "Priority": "priority",
    "Archive": "archive",
}


def parse_fixture(text: str):
    """(AstQueueSettings, to, from, encoded body) read back from a WebSMS call file."""
    fields = {}
    setvars = {}
    for line in text.split("\n")[:-1]:
        key, _, value = line.partition(": ")
        if key == "setvar":
            var, _, val = value.partition("=")
            setvars[var] = val
        else:
            fields[_LINE_KEYS[key]] = value
    m = re.fullmatch(r"Local/(.*)@(.*)", fields["channel"])
    to, channel_context = m.group(1), m.group(2)
    m = re.fullmatch(r'"" <(.*)>', fields["callerid"])
    from_ = m.group(1)
    assert fields["extension"] == to == setvars["MESSAGE(to)"]
    assert setvars["MESSAGE(from)"] == from_
    q = AstQueueSettings(
        waittime=fields["waittime"],
        maxretries=fields["maxretries"],
        retrytime=fields["retrytime"],
        archive=fields["archive"],
        channel_context=channel_context,
        context=fields["context"],
        priority=fields["priority"],
        message_encode=setvars["MESSAGE_ENCODE"],
        account=fields.get("account"),
        application=fields.get("application"),
        data=fields.get("data"),
    )
    return q, to, from_, setvars["MESSAGE(body)"]


def fixture_body(case) -> str:
    if "body" in case:
        return case["body"]
    return urllib.parse.unquote(parse_fixture(case["callfile"])[3])


RENDERED = sorted(set(CASES) - set(NOT_RENDERED) - TOO_LONG)
WITH_BODY = sorted(name for name, case in CASES.items() if "body" in case)

Q = AstQueueSettings(channel_context="dp_entry_answer", context="dp_entry_text_in", archive="yes")
TO = "+15015550199"
FROM = "+15015550100"


def body_value(rendered: bytes) -> str:
    for line in rendered.decode("utf-8").split("\n"):
        if line.startswith(BODY_PREFIX):
            return line[len(BODY_PREFIX) :]
    raise AssertionError("no body line")


def assert_lines_fit(rendered: bytes):
    assert rendered.endswith(b"\n")
    for line in rendered.split(b"\n")[:-1]:
        assert len(line) + 1 <= MAX_LINE + 1 == 1023, line[:60]


_MARKER = re.compile(r"\((\d+)/(\d+)\) ")


def strip_markers(parts):
    n = len(parts)
    out = []
    for i, part in enumerate(parts, 1):
        m = _MARKER.match(part)
        assert m, part[:20]
        assert (int(m.group(1)), int(m.group(2))) == (i, n)
        out.append(part[m.end() :])
    return out


def test_module_imports_no_twisted():
    code = (
        "import sys, websmsd.asterisk.callfile\n"
        "print(sorted(m for m in sys.modules if m.startswith('twisted')))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        cwd=str(_HERE.parent),
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert out.strip() == "[]"


# --------------------------------------------------------------------------- rfc3986


def test_rfc3986_basics():
    assert rfc3986("a b") == "a%20b"
    assert rfc3986("1+1=2") == "1%2B1%3D2"
    assert rfc3986("AZaz09-_.~") == "AZaz09-_.~"
    assert rfc3986("\n\r%") == "%0A%0D%25"
    assert rfc3986("é") == "%C3%A9"  # uppercase hex
    assert rfc3986("") == ""


def test_rfc3986_every_byte_and_random_text_like_urllib():
    rng = random.Random(1)
    samples = [chr(c) for c in range(0, 0x800)]
    samples += ["".join(chr(rng.randrange(0x20, 0x2FFFF)) for _ in range(50)) for _ in range(200)]
    samples = [s for s in samples if not any(0xD800 <= ord(c) <= 0xDFFF for c in s)]
    for s in samples:
        enc = rfc3986(s)
        assert enc == urllib.parse.quote(s, safe="-_.~")
        assert re.fullmatch(r"[A-Za-z0-9\-_.~%]*", enc)
        assert "+" not in enc and " " not in enc
        assert urllib.parse.unquote(enc, errors="strict") == s


def test_rfc3986_lone_surrogate_is_a_clear_value_error():
    with pytest.raises(ValueError, match="surrogate"):
        rfc3986("a\ud83d")


# --------------------------------------------------------------------------- render vs fixtures


@needs_fixtures
def test_fixture_case_list_is_what_these_tests_expect():
    # If the fixtures change, the lists above must be looked at again.
    assert set(NOT_RENDERED) <= set(CASES)
    assert TOO_LONG <= set(CASES)
    assert len(RENDERED) >= 12


@needs_fixtures
@pytest.mark.parametrize("name", RENDERED)
def test_render_reproduces_fixture_byte_for_byte(name):
    case = CASES[name]
    q, to, from_, encoded = parse_fixture(case["callfile"])
    body = fixture_body(case)
    assert rfc3986(body) == encoded  # the fixture uses the canonical encoding
    assert render(q, to, from_, body) == case["callfile"].encode("utf-8")


@needs_fixtures
@pytest.mark.parametrize("name", WITH_BODY)
def test_fixture_bodies_round_trip(name):
    case = CASES[name]
    body = case["body"]
    encoded = rfc3986(body)
    assert urllib.parse.unquote(encoded) == body
    if name not in TOO_LONG:
        q, to, from_, _ = parse_fixture(case["callfile"])
        assert urllib.parse.unquote(body_value(render(q, to, from_, body))) == body
        # and it is what the phone received (res_pjsip strips trailing CR/LF)
        received = case["bob_received"][0]["body"]
        assert received == body.rstrip("\r\n")


@needs_fixtures
@pytest.mark.parametrize("name", sorted(TOO_LONG))
def test_fixture_lines_that_asterisk_skipped_are_refused(name):
    case = CASES[name]
    assert case["bob_received"][0]["body"] == ""  # what Asterisk did with it
    assert any("Skipping extremely long line" in line for line in case["asterisk_log"])
    q, to, from_, encoded = parse_fixture(case["callfile"])
    with pytest.raises(LineTooLong):
        render(q, to, from_, case["body"])
    assert len(BODY_PREFIX + encoded) > MAX_LINE


@needs_fixtures
def test_longest_line_asterisk_read_whole_is_accepted():
    case = CASES["ascii_1000_unreserved"]
    assert case["bob_received"][0]["body"] == case["body"]
    q, to, from_, _ = parse_fixture(case["callfile"])
    out = render(q, to, from_, case["body"])
    longest = max(len(line) for line in out.split(b"\n"))
    assert longest == MAX_LINE == 1022  # 1023 bytes with its "\n"
    assert split_body(q, to, from_, case["body"]) == [case["body"]]


@needs_fixtures
@pytest.mark.parametrize("name", sorted(TOO_LONG))
def test_fixture_long_bodies_split_into_parts_that_fit(name):
    case = CASES[name]
    q, to, from_, _ = parse_fixture(case["callfile"])
    parts = split_body(q, to, from_, case["body"])
    assert len(parts) >= 2
    for part in parts:
        assert_lines_fit(render(q, to, from_, part))
    assert "".join(strip_markers(parts)) == case["body"]


@needs_fixtures
def test_raw_message_encode_writes_text_as_the_raw_fixture():
    # raw_unencoded_utf8_space: unencoded UTF-8 in the file arrived intact.
    case = CASES["raw_unencoded_utf8_space"]
    q, to, from_, value = parse_fixture(case["callfile"])
    q = AstQueueSettings(**{**q.__dict__, "message_encode": "none"})
    assert body_value(render(q, to, from_, value)) == value == case["bob_received"][0]["body"]


# --------------------------------------------------------------------------- injection


@needs_fixtures
def test_fixture_newline_injection_is_refused_and_nothing_written(tmp_path):
    case = CASES["newline_injection_in_from"]
    evil = case["from_value_used"]
    assert "\n" in evil and "Application: System" in case["callfile"]
    spool = CallFileSpool(
        AstQueueSettings(stagingdir=str(tmp_path / "st"), outgoingdir=str(tmp_path / "out"))
    )
    with pytest.raises(UnsafeValue):
        spool.stage([(callfile_name(new_id(), 1), render(Q, TO, evil, "injection test"))])
    with pytest.raises(UnsafeValue):
        split_body(Q, TO, evil, "x" * 2000)
    assert not (tmp_path / "st").exists() and not (tmp_path / "out").exists()


BAD_VALUES = [
    "+1501\nApplication: System",
    "+1501\r\nData: x",
    "+1501\r",
    "\n",
    "+1501;comment",
    "+1501 #comment",
    "+1501#x",
    "bob@evil",
    "Local/x",
    "../etc",
    "a&b",
    '"x"',
    "<x>",
    "",
    "+1501\x00",
    "+1501\t",
    "x\u2028y",
]


@pytest.mark.parametrize("bad", BAD_VALUES)
def test_unsafe_to_and_from_are_refused(bad):
    with pytest.raises(UnsafeValue):
        render(Q, bad, FROM, "hi")
    with pytest.raises(UnsafeValue):
        render(Q, TO, bad, "hi")
    with pytest.raises(UnsafeValue):
        split_body(Q, bad, FROM, "hi")
    with pytest.raises(UnsafeValue):
        split_body(Q, TO, bad, "hi")


def test_non_string_values_are_refused():
    with pytest.raises(UnsafeValue):
        render(Q, 15015550199, FROM, "hi")
    with pytest.raises(TypeError):
        render(Q, TO, FROM, b"hi")


def test_sender_id_with_space_is_written_as_is():
    out = render(Q, TO, "My Bank", "hi").decode()
    assert 'CallerID: "" <My Bank>\n' in out and "setvar: MESSAGE(from)=My Bank\n" in out


@pytest.mark.parametrize(
    "field", ["channel_context", "context", "waittime", "archive", "message_encode", "data"]
)
def test_config_values_with_control_characters_are_refused(field):
    q = AstQueueSettings(**{field: "x\ny: z"})
    with pytest.raises(ValueError, match=field):
        render(q, TO, FROM, "hi")


def test_body_can_never_add_a_line_in_any_mode():
    evil = "x\nApplication: System\r\nData: touch /tmp/x\x00\x0b\x0c\x85\x7f"
    for q in (Q, AstQueueSettings(message_encode="none"), AstQueueSettings(message_encode="")):
        out = render(q, TO, FROM, evil)
        lines = out.split(b"\n")
        assert len(lines) == 14 and lines[-1] == b""
        assert not any(line.startswith((b"Application", b"Data")) for line in lines)
        assert not re.search(rb"[\x00-\x09\x0b-\x1f\x7f]", out)


# --------------------------------------------------------------------------- format details


def test_line_order_with_optional_lines():
    q = AstQueueSettings(account="acc1", application="MessageSend", data="pjsip:bob")
    keys = [line.split(":")[0] for line in render(q, TO, FROM, "hi").decode().splitlines()]
    assert keys == [
        "Channel", "CallerID", "WaitTime", "MaxRetries", "RetryTime",
        "Account", "Application", "Data",
        "Context", "Extension", "Priority", "Archive",
        "setvar", "setvar", "setvar", "setvar",
    ]  # fmt: skip
    out = render(AstQueueSettings(account=""), TO, FROM, "hi").decode()
    assert "Account" not in out and "Application" not in out and "Data" not in out


def test_defaults_render_like_the_php():
    assert render(AstQueueSettings(), "100", "200", "a b").decode() == (
        "Channel: Local/100@default\n"
        'CallerID: "" <200>\n'
        "WaitTime: 45\n"
        "MaxRetries: 0\n"
        "RetryTime: 300\n"
        "Context: default\n"
        "Extension: 100\n"
        "Priority: 1\n"
        "Archive: no\n"
        "setvar: MESSAGE(to)=100\n"
        "setvar: MESSAGE(from)=200\n"
        "setvar: MESSAGE(body)=a%20b\n"
        "setvar: MESSAGE_ENCODE=rfc3986\n"
    )


def test_raw_mode_keeps_text_but_never_control_characters_or_comments():
    assert raw_body("a\r\nb\tc\x00d") == "a  b c d"
    assert raw_body("a;b") == "a\\;b"  # pbx_spool turns \; back into ;
    assert raw_body("a\\;b") == "a\\\\;b"  # ... and only the one backslash before ;
    assert raw_body("a #b") == "a\u00a0#b"  # a # after a space would start a comment
    assert raw_body("a#b #") == "a#b\u00a0#"
    assert raw_body("Привет, мир 😀") == "Привет, мир 😀"
    q = AstQueueSettings(message_encode="plain")
    assert body_value(render(q, TO, FROM, "1+1 = 2; ok #1")) == "1+1 = 2\\; ok\u00a0#1"
    assert render(q, TO, FROM, "x").endswith(b"setvar: MESSAGE_ENCODE=plain\n")


def test_line_length_counts_bytes_in_raw_mode():
    q = AstQueueSettings(message_encode="none")
    render(q, TO, FROM, "é" * 500)  # 1000 bytes
    with pytest.raises(LineTooLong):
        render(q, TO, FROM, "é" * 501)
    parts = split_body(q, TO, FROM, "é" * 501 + " x;y" * 300)
    for part in parts:
        assert_lines_fit(render(q, TO, FROM, part))
    assert "".join(strip_markers(parts)) == "é" * 501 + " x;y" * 300


def test_other_overlong_lines_are_refused_too():
    q = AstQueueSettings(data="x" * (MAX_LINE - len("Data: ") + 1))
    with pytest.raises(LineTooLong, match="Data"):
        render(q, TO, FROM, "hi")
    with pytest.raises(LineTooLong):
        split_body(q, TO, FROM, "hi")
    render(AstQueueSettings(data="x" * (MAX_LINE - len("Data: "))), TO, FROM, "hi")


def test_body_budget_is_1000_encoded_bytes():
    render(Q, TO, FROM, "a" * 1000)
    render(Q, TO, FROM, "a" * 997 + " ")
    with pytest.raises(LineTooLong):
        render(Q, TO, FROM, "a" * 998 + " ")
    with pytest.raises(LineTooLong):
        render(Q, TO, FROM, "a" * 1001)
    render(Q, TO, FROM, "Ж" * 166)
    with pytest.raises(LineTooLong):
        render(Q, TO, FROM, "Ж" * 167)


# --------------------------------------------------------------------------- split_body


def test_short_body_is_returned_unchanged():
    for body in ("", "hi", "a" * 1000, "Ж" * 166, "x\ny"):
        assert split_body(Q, TO, FROM, body) == [body]


def _check_split(body, q=Q, max_parts=None):
    parts = split_body(q, TO, FROM, body)
    assert len(parts) >= 2
    for part in parts:
        assert_lines_fit(render(q, TO, FROM, part))
        assert len(rfc3986(part)) <= 1000
    pieces = strip_markers(parts)
    assert "".join(pieces) == body
    if max_parts is not None:
        assert len(parts) <= max_parts
    return parts, pieces


def _no_broken_cluster(pieces):
    for piece in pieces[1:]:
        first = piece[0]
        assert not unicodedata.category(first).startswith("M"), repr(piece[:5])
        assert first not in "\u200d\ufe0f\ufe0e" and not 0x1F3FB <= ord(first) <= 0x1F3FF
    for prev in pieces[:-1]:
        assert prev[-1] != "\u200d"


def test_split_1600_cyrillic_letters_without_spaces():
    letters = "АБВГДЕЖЗИЙКЛМНОПРСТУФХЦЧШЩЪЫЬЭЮЯабвгдежзийклмнопрстуфхцчшщъыьэюя"
    rng = random.Random(2)
    body = "".join(rng.choice(letters) for _ in range(1600))
    parts, pieces = _check_split(body, max_parts=10)
    assert len(parts) == 10  # 164 letters (984 bytes) per part with a "(nn/10) " marker
    assert all(len(piece) >= 160 for piece in pieces[:-1])


def test_split_1600_char_cyrillic_sms_cuts_at_spaces():
    words = "съешь же ещё этих мягких французских булок, да выпей чаю. ".split(" ")
    rng = random.Random(3)
    body = ""
    while len(body) < 1600:
        body += rng.choice(words) + " "
    body = body[:1600].rstrip() + "."
    parts, pieces = _check_split(body, max_parts=11)
    for piece in pieces[:-1]:
        assert piece.endswith(" "), repr(piece[-10:])
        assert len(piece) > 120


def test_split_1600_chars_of_emoji_keeps_sequences_together():
    seqs = [
        "😀",
        "👍🏽",  # skin tone
        "👨‍👩‍👧‍👦",  # ZWJ family
        "🏳️‍🌈",  # flag with VS16 + ZWJ
        "🇸🇪",  # regional indicator pair
        "1️⃣",  # keycap
        "❤️",
        "🏴\U000e0067\U000e0062\U000e0073\U000e0063\U000e0074\U000e007f",  # tag sequence
    ]
    rng = random.Random(4)
    body = ""
    while len(body) < 1600:
        body += rng.choice(seqs)
        if rng.random() < 0.1:
            body += " "
    parts, pieces = _check_split(body)
    _no_broken_cluster(pieces)
    # every piece is made of whole sequences
    for piece in pieces:
        rest = piece.replace(" ", "")
        for s in sorted(seqs, key=len, reverse=True):
            rest = rest.replace(s, "")
        assert rest == "", repr(rest[:10])


def test_split_zwj_sequences_without_spaces_are_never_cut():
    family = "\U0001F468\u200d\U0001F469\u200d\U0001F467\u200d\U0001F466"
    rainbow = "\U0001F3F3\ufe0f\u200d\U0001F308"
    for seq in (family, rainbow, "\U0001F1F8\U0001F1EA", "\U0001F44D\U0001F3FD"):
        for offset in range(0, 40, 3):  # move the cuts around inside the sequences
            body = "x" * offset + seq * (1600 // len(seq))
            parts, pieces = _check_split(body)
            for piece in pieces:
                assert piece.replace(seq, "").strip("x") == "", (seq, offset, piece[:8])


def test_split_plain_emoji_1600():
    body = "😀" * 1600
    parts, pieces = _check_split(body)
    assert len(parts) == 20  # 81 emoji (972 bytes) per part with a "(nn/20) " marker


def test_split_keeps_combining_marks_with_their_letter():
    body = ("e\u0301\u0323" + "a\u0308") * 400  # decomposed accents, no spaces
    parts, pieces = _check_split(body)
    _no_broken_cluster(pieces)


def test_absurd_cluster_is_cut_between_code_points_not_inside_one():
    body = "a" + "\u0301" * 600  # one "character" of 1201 encoded... bytes
    parts, pieces = _check_split(body)
    assert all(len(rfc3986(p)) <= 1000 for p in parts)


def test_split_lines_break_after_newline():
    body = "\n".join(f"line {i:03d} " + "x" * 60 for i in range(40))
    parts, pieces = _check_split(body)
    for piece in pieces[:-1]:
        assert piece[-1].isspace()


def test_split_many_parts_gets_wider_markers():
    body = "Ж" * 20000  # > 99 parts
    parts = split_body(Q, TO, FROM, body)
    assert len(parts) > 99
    assert parts[0].startswith(f"(1/{len(parts)}) ")
    for part in parts:
        assert_lines_fit(render(Q, TO, FROM, part))
    assert "".join(strip_markers(parts)) == body


def test_split_in_the_order_of_the_text():
    body = " ".join(f"w{i}" for i in range(1000))
    pieces = strip_markers(split_body(Q, TO, FROM, body))
    numbers = [int(w[1:]) for piece in pieces for w in piece.split()]
    assert numbers == list(range(1000))


# --------------------------------------------------------------------------- names


def test_callfile_name():
    mid = "0123456789abcdef0123"
    assert callfile_name(mid, 1) == "websmsd-0123456789abcdef0123-1.call"
    assert parse_callfile_name(callfile_name(mid, 17)) == (mid, 17)
    assert parse_callfile_name("0123.1700000000.123.call") is None
    assert parse_callfile_name("websmsd-0123456789abcdef0123-01.call") is None


@pytest.mark.parametrize(
    "mid", ["../../etc/passwd", "0123456789ABCDEF0123", "0123456789abcdef012", "0123456789abcdef01234",
            "0123456789abcdef012/", "", None, 123, "0123456789abcdef012\n"]  # fmt: skip
)
def test_callfile_name_refuses_bad_ids(mid):
    with pytest.raises(ValueError):
        callfile_name(mid, 1)


@pytest.mark.parametrize("part", [-1, True, 1.0, "1", 10**6, None])
def test_callfile_name_refuses_bad_parts(part):
    with pytest.raises(ValueError):
        callfile_name("0123456789abcdef0123", part)


def test_thousands_of_names_are_unique():
    ids = [new_id() for _ in range(5000)]
    names = [callfile_name(i, p) for i in ids for p in (1, 2, 3)]
    assert len(set(names)) == len(names) == 15000
    for name in names[:100]:
        assert "/" not in name and not name.startswith(".")


# --------------------------------------------------------------------------- the spool


def make_spool(tmp_path, **kw):
    q = AstQueueSettings(
        stagingdir=str(tmp_path / "staging"), outgoingdir=str(tmp_path / "outgoing"), **kw
    )
    return CallFileSpool(q)


def listing(path):
    return sorted(os.listdir(path)) if os.path.isdir(path) else []


def test_stage_then_publish(tmp_path):
    spool = make_spool(tmp_path)
    mid = new_id()
    items = [
        (callfile_name(mid, i), render(Q, TO, FROM, f"part {i} 😀")) for i in (1, 2, 3)
    ]
    names = [n for n, _ in items]
    assert spool.check() == []  # creates both directories
    spool.stage(items)
    assert listing(spool.stagingdir) == sorted(names)
    assert listing(spool.outgoingdir) == []
    assert all(spool.is_staged(n) and not spool.is_pending(n) for n in names)
    assert spool.staged() == sorted(names) and spool.pending() == []

    spool.publish(names[:1])
    assert not spool.is_staged(names[0]) and spool.is_pending(names[0])
    spool.publish(names[1:])
    assert listing(spool.stagingdir) == []
    for name, data in items:
        assert (tmp_path / "outgoing" / name).read_bytes() == data
        assert not spool.is_staged(name) and spool.is_pending(name)
    # Asterisk takes a file: neither staged nor pending any more.
    os.unlink(tmp_path / "outgoing" / names[0])
    assert not spool.is_staged(names[0]) and not spool.is_pending(names[0])


def test_stage_creates_missing_dirs_with_their_parents(tmp_path):
    spool = make_spool(tmp_path)
    spool.stage([("a.call", b"x\n")])
    assert (tmp_path / "staging" / "a.call").read_bytes() == b"x\n"
    assert (tmp_path / "outgoing").is_dir()
    deep = CallFileSpool(
        AstQueueSettings(stagingdir=str(tmp_path / "no" / "such"), outgoingdir=str(tmp_path / "o"))
    )
    deep.stage([("a.call", b"x\n")])
    assert (tmp_path / "no" / "such" / "a.call").exists()
    (tmp_path / "file").write_text("")
    blocked = CallFileSpool(
        AstQueueSettings(stagingdir=str(tmp_path / "file" / "such"), outgoingdir=str(tmp_path / "o"))
    )
    with pytest.raises(OSError, match="file/such"):
        blocked.stage([("a.call", b"x\n")])
    problems = blocked.check()
    assert len(problems) == 1 and "file/such" in problems[0]


def test_restage_overwrites_and_publish_replaces(tmp_path):
    spool = make_spool(tmp_path)
    spool.stage([("a.call", b"a much longer first version\n")])
    spool.stage([("a.call", b"short\n")])  # O_TRUNC
    spool.publish(["a.call"])
    assert (tmp_path / "outgoing" / "a.call").read_bytes() == b"short\n"


def test_publish_of_unstaged_name_raises_with_path(tmp_path):
    spool = make_spool(tmp_path)
    spool.ensure_dirs()
    with pytest.raises(FileNotFoundError, match="nothere.call"):
        spool.publish(["nothere.call"])


def test_partial_publish_keeps_state_recoverable(tmp_path):
    spool = make_spool(tmp_path)
    spool.stage([("a.call", b"a\n"), ("b.call", b"b\n")])
    os.unlink(tmp_path / "staging" / "b.call")  # something went wrong with b
    with pytest.raises(FileNotFoundError):
        spool.publish(["a.call", "b.call", "c.call"])
    assert spool.is_pending("a.call") and not spool.is_staged("a.call")


def test_modes_applied(tmp_path):
    old = os.umask(0o077)
    try:
        spool = make_spool(tmp_path, filemode=0o664)
        spool.stage([("a.call", b"x\n")])
        assert stat.S_IMODE(os.stat(tmp_path / "staging" / "a.call").st_mode) == 0o664
        spool.publish(["a.call"])
        assert stat.S_IMODE(os.stat(tmp_path / "outgoing" / "a.call").st_mode) == 0o664
        spool = make_spool(tmp_path, filemode=0o600)
        spool.stage([("b.call", b"x\n")])
        assert stat.S_IMODE(os.stat(tmp_path / "staging" / "b.call").st_mode) == 0o600
    finally:
        os.umask(old)


def test_no_filemode_follows_umask(tmp_path):
    old = os.umask(0o027)
    try:
        spool = make_spool(tmp_path)
        spool.stage([("a.call", b"x\n")])
        assert stat.S_IMODE(os.stat(tmp_path / "staging" / "a.call").st_mode) == 0o640
    finally:
        os.umask(old)


@pytest.mark.parametrize("mode", [-1, 0o10000, "0644", True, 6.4])
def test_bad_filemode_is_refused(tmp_path, mode):
    with pytest.raises(ValueError, match="filemode"):
        make_spool(tmp_path, filemode=mode)


def test_parse_fileowner():
    import grp
    import pwd

    root_group = grp.getgrgid(0).gr_name
    assert parse_fileowner("root") == (0, -1)
    assert parse_fileowner(f"root:{root_group}") == (0, 0)
    assert parse_fileowner(":0") == (-1, 0)
    assert parse_fileowner("4242:4343") == (4242, 4343)
    me = pwd.getpwuid(os.geteuid()).pw_name
    assert parse_fileowner(me)[0] == os.geteuid()
    for bad in ("", ":", "a:b:c", "no-such-user-xyz", "root:no-such-group-xyz", "-1"):
        with pytest.raises(ValueError):
            parse_fileowner(bad)
    with pytest.raises(ValueError, match="fileowner"):
        make_spool(pathlib.Path("/nonexistent"), fileowner="a:b:c")


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to give files away")
def test_fileowner_applied_as_root(tmp_path):
    spool = make_spool(tmp_path, fileowner="4242:4343", filemode=0o640)
    spool.stage([("a.call", b"x\n")])
    spool.publish(["a.call"])
    st = os.stat(tmp_path / "outgoing" / "a.call")
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (4242, 4343, 0o640)
    spool = make_spool(tmp_path, fileowner="4242")
    spool.stage([("b.call", b"x\n")])
    st = os.stat(tmp_path / "staging" / "b.call")
    assert (st.st_uid, st.st_gid) == (4242, os.getegid())


def test_fileowner_of_another_user_without_root_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    spool = make_spool(tmp_path, fileowner="4242")
    with pytest.raises(PermissionError, match="not root"):
        spool.stage([("a.call", b"x\n")])
    assert listing(tmp_path / "staging") == [] and listing(tmp_path / "outgoing") == []
    assert any("not root" in p for p in spool.check())


def test_unknown_fileowner_is_reported(tmp_path):
    spool = make_spool(tmp_path, fileowner="no-such-user-xyz")
    assert any("no such user" in p for p in spool.check())
    with pytest.raises(ValueError, match="no such user"):
        spool.stage([("a.call", b"x\n")])


def test_unwritable_staging_raises_and_leaves_nothing(tmp_path, monkeypatch):
    spool = make_spool(tmp_path)
    spool.ensure_dirs()
    real_open = os.open

    def deny(path, flags, *args, **kw):
        if str(path).startswith(spool.stagingdir + os.sep):
            raise PermissionError(errno.EACCES, "Permission denied")
        return real_open(path, flags, *args, **kw)

    monkeypatch.setattr(os, "open", deny)
    with pytest.raises(PermissionError) as info:
        spool.stage([("a.call", b"x\n")])
    assert spool.stagingdir in str(info.value) and "a.call" in str(info.value)
    assert listing(tmp_path / "outgoing") == [] and listing(tmp_path / "staging") == []


def test_disk_full_raises_with_path_and_leaves_nothing(tmp_path, monkeypatch):
    spool = make_spool(tmp_path)
    real_write = os.write
    calls = []

    def write(fd, data):
        calls.append(1)
        if len(calls) == 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(fd, data)

    monkeypatch.setattr(os, "write", write)
    with pytest.raises(OSError) as info:
        spool.stage([("a.call", b"a\n"), ("b.call", b"b\n"), ("c.call", b"c\n")])
    assert info.value.errno == errno.ENOSPC and "b.call" in str(info.value)
    assert listing(tmp_path / "staging") == []  # the batch is all or nothing
    assert listing(tmp_path / "outgoing") == []


def test_fsync_failure_is_an_error(tmp_path, monkeypatch):
    spool = make_spool(tmp_path)
    spool.ensure_dirs()

    def fsync(fd):
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(os, "fsync", fsync)
    with pytest.raises(OSError, match="a.call") as info:
        spool.stage([("a.call", b"x\n")])
    assert info.value.errno == errno.EIO
    assert listing(tmp_path / "staging") == [] and listing(tmp_path / "outgoing") == []


@pytest.mark.skipif(os.geteuid() != 0, reason="drops privileges from root")
def test_really_unwritable_dir_as_unprivileged_user(tmp_path):
    """A real permission error: a child process as 'nobody' writes into root's dirs."""
    import tempfile

    base = tempfile.mkdtemp(prefix="websmsd-perm-")
    try:
        os.chmod(base, 0o755)
        for sub in ("staging", "outgoing"):
            os.mkdir(os.path.join(base, sub), 0o755)
        code = (
            "import sys, os\n"
            "from websmsd.asterisk.callfile import CallFileSpool\n"
            "from websmsd.config import AstQueueSettings\n"
            f"q = AstQueueSettings(stagingdir={base + '/staging'!r},\n"
            f"    outgoingdir={base + '/outgoing'!r}, fileowner='root')\n"
            "s = CallFileSpool(q)\n"
            "print('\\n'.join(s.check()))\n"
            "q = AstQueueSettings(stagingdir=q.stagingdir, outgoingdir=q.outgoingdir)\n"
            "try:\n"
            "    CallFileSpool(q).stage([('a.call', b'x')])\n"
            "except PermissionError as e:\n"
            "    print('RAISED', e)\n"
        )
        env = dict(os.environ, PYTHONPATH=str(_HERE.parent), PYTHONDONTWRITEBYTECODE="1")
        try:
            r = subprocess.run(
                [sys.executable, "-c", code], user=65534, group=65534, extra_groups=[],
                env=env, cwd="/", capture_output=True, text=True, timeout=60,
            )  # fmt: skip
        except (PermissionError, OSError) as e:
            pytest.skip(f"cannot run as nobody here: {e}")
        if "No module named" in r.stderr:
            pytest.skip("repository not readable by nobody")
        assert r.returncode == 0, r.stderr
        assert "staging is not writable by uid 65534" in r.stdout
        assert "not root" in r.stdout
        assert "RAISED" in r.stdout and "staging/a.call" in r.stdout
        assert os.listdir(os.path.join(base, "outgoing")) == []
    finally:
        import shutil

        shutil.rmtree(base)


def test_cross_device_rename_is_a_clear_error(tmp_path, monkeypatch):
    spool = make_spool(tmp_path)
    spool.stage([("a.call", b"x\n")])

    def rename(src, dst):
        raise OSError(errno.EXDEV, "Invalid cross-device link")

    monkeypatch.setattr(os, "rename", rename)
    with pytest.raises(CrossDeviceError) as info:
        spool.publish(["a.call"])
    assert isinstance(info.value, OSError) and info.value.errno == errno.EXDEV
    msg = str(info.value)
    assert spool.stagingdir in msg and spool.outgoingdir in msg and "file system" in msg
    assert spool.is_staged("a.call") and listing(tmp_path / "outgoing") == []


@pytest.mark.skipif(
    not os.path.isdir("/dev/shm") or not os.access("/dev/shm", os.W_OK),
    reason="no /dev/shm",
)
def test_real_cross_device(tmp_path):
    import shutil
    import tempfile

    shm = tempfile.mkdtemp(dir="/dev/shm", prefix="websmsd-test-")
    try:
        if os.stat(shm).st_dev == os.stat(tmp_path).st_dev:
            pytest.skip("/dev/shm is on the same file system here")
        spool = CallFileSpool(
            AstQueueSettings(stagingdir=os.path.join(shm, "st"), outgoingdir=str(tmp_path / "out"))
        )
        problems = spool.check()
        assert len(problems) == 1 and "different file systems" in problems[0]
        spool.stage([("a.call", b"x\n")])
        with pytest.raises(CrossDeviceError, match="different file systems"):
            spool.publish(["a.call"])
        assert spool.is_staged("a.call") and not spool.is_pending("a.call")
    finally:
        shutil.rmtree(shm)


def test_check_reports_problems(tmp_path):
    spool = make_spool(tmp_path)
    # Missing, but websmsd will create them: only looking, nothing to say.
    assert spool.check(create=False) == []
    assert not (tmp_path / "staging").exists()
    (tmp_path / "blocker").write_text("x")
    blocked = CallFileSpool(AstQueueSettings(stagingdir=str(tmp_path / "blocker" / "st"),
                                             outgoingdir=str(tmp_path / "outgoing")))
    [problem] = blocked.check(create=False)
    assert problem.startswith(f"stagingdir {tmp_path}/blocker/st does not exist, and websmsd"
                              " could not create it")
    assert spool.check() == []
    out = str(tmp_path / "outgoing")
    same = CallFileSpool(AstQueueSettings(stagingdir=out, outgoingdir=out))
    assert "same directory" in " ".join(same.check())
    (tmp_path / "file").write_text("x")
    notdir = CallFileSpool(
        AstQueueSettings(stagingdir=str(tmp_path / "file"), outgoingdir=str(tmp_path / "outgoing"))
    )
    assert "not a directory" in " ".join(notdir.check())
    assert "no one read" in " ".join(make_spool(tmp_path, filemode=0).check())


def test_check_says_when_asterisk_could_not_read_or_remove_a_call_file(tmp_path):
    # Issue #12: found at start, not when the first message arrives.  "nobody" stands
    # for the Asterisk user (a user that exists everywhere, with its own group nogroup).
    import grp as _grp
    import pwd as _pwd

    user = _pwd.getpwnam("nobody")
    spool = make_spool(tmp_path, filemode=0o600)
    spool.ensure_dirs()
    os.chmod(tmp_path / "outgoing", 0o755)
    problems = spool.check(asterisk_user="nobody")
    if os.geteuid() == user.pw_uid:  # pragma: no cover - tests run as nobody
        pytest.skip("running as the stand-in Asterisk user")
    assert len(problems) == 2, problems
    assert "user 'nobody' (Asterisk) cannot read them" in problems[0]
    assert "filemode = 0644" in problems[0]
    assert "not writable by user 'nobody'" in problems[1] and "chown nobody" in problems[1]
    os.chmod(tmp_path / "outgoing", 0o777)
    assert len(make_spool(tmp_path, filemode=0o644).check(asterisk_user="nobody")) == 0
    # Readable through the group: fileowner gives the files Asterisk's group.
    group = _grp.getgrgid(user.pw_gid).gr_name
    if os.geteuid() == 0:
        ok = make_spool(tmp_path, filemode=0o640, fileowner=f":{group}")
        assert ok.check(asterisk_user="nobody") == []
    # A user that does not exist: nothing to say (Asterisk may run as root).
    assert spool.check(asterisk_user="no-such-user-websmsd") == []


def test_check_problems_name_their_fix(tmp_path):
    out = str(tmp_path / "outgoing")
    [same] = CallFileSpool(AstQueueSettings(stagingdir=out, outgoingdir=out)).check()
    assert f"stagingdir to a directory of its own beside outgoingdir (e.g. {tmp_path}/staging)" in same
    blocker = tmp_path / "blocker"
    blocker.write_text("x")
    [missing] = CallFileSpool(AstQueueSettings(stagingdir=str(blocker / "st"),
                                               outgoingdir=out)).check()
    assert "cannot be created" in missing and "install -d" in missing


def test_names_are_validated_by_the_spool(tmp_path):
    spool = make_spool(tmp_path)
    for bad in ("../x.call", "/etc/x", ".hidden.call", "a/b", "", "a\nb", "..", None):
        with pytest.raises(ValueError):
            spool.stage([(bad, b"x")])
        with pytest.raises(ValueError):
            spool.publish([bad])
        with pytest.raises(ValueError):
            spool.is_staged(bad)
    with pytest.raises(ValueError, match="twice"):
        spool.stage([("a.call", b"x"), ("a.call", b"y")])
    with pytest.raises(TypeError):
        spool.stage([("a.call", "text")])
    assert listing(tmp_path / "staging") == []


def test_discard(tmp_path):
    spool = make_spool(tmp_path)
    spool.stage([("a.call", b"x"), ("b.call", b"y")])
    spool.discard(["a.call", "zzz.call"])
    assert listing(tmp_path / "staging") == ["b.call"]


def test_fsync_protocol_order(tmp_path, monkeypatch):
    """Each file is fsynced before any rename; one fsync per directory per batch."""
    spool = make_spool(tmp_path)
    spool.ensure_dirs()
    events = []
    real_fsync, real_rename, real_open = os.fsync, os.rename, os.open
    fd_paths = {}

    def opener(path, flags, *a, **kw):
        fd = real_open(path, flags, *a, **kw)
        fd_paths[fd] = str(path)
        return fd

    def fsync(fd):
        events.append(("fsync", os.path.basename(fd_paths[fd])))
        return real_fsync(fd)

    def rename(src, dst):
        events.append(("rename", os.path.basename(src)))
        return real_rename(src, dst)

    monkeypatch.setattr(os, "open", opener)
    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "rename", rename)
    names = [f"{i}.call" for i in range(5)]
    spool.stage([(n, b"x\n") for n in names])
    spool.publish(names)
    assert events == (
        [("fsync", n) for n in names]
        + [("fsync", "staging")]
        + [("rename", n) for n in names]
        + [("fsync", "outgoing"), ("fsync", "staging")]
    )


def test_stage_publish_many(tmp_path):
    """A batch of 1000 call files is staged and published whole, each byte for byte.

    (What it costs is measured by bench/callfile.py, not here.)"""
    count = 1000
    spool = make_spool(tmp_path)
    spool.ensure_dirs()
    mid = new_id()
    items = [(callfile_name(mid, i), render(Q, TO, FROM, f"message {i}")) for i in range(count)]
    spool.stage(items)
    assert sorted(spool.staged()) == sorted(n for n, _ in items)
    assert os.listdir(spool.outgoingdir) == []
    spool.publish([n for n, _ in items])
    assert os.listdir(spool.stagingdir) == []
    assert sorted(os.listdir(spool.outgoingdir)) == sorted(n for n, _ in items)
    for name, data in items[:: count // 10]:
        assert (pathlib.Path(spool.outgoingdir) / name).read_bytes() == data
