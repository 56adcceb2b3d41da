"""websmsd.sms: GSM 03.38 / UCS-2 / IA5 / Latin-1, segments, UDH, reassembly."""

import random
import subprocess
import sys
from pathlib import Path

import pytest

from websmsd import sms
from websmsd.sms import SMSError

ROOT = Path(__file__).resolve().parent.parent

GSM_BASIC = ("@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞ\x1bÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?"
             "¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà")
GSM_EXT = {"\x0c": 0x0A, "^": 0x14, "{": 0x28, "}": 0x29, "\\": 0x2F, "[": 0x3C,
           "~": 0x3D, "]": 0x3E, "|": 0x40, "€": 0x65}


def test_imports_nothing_from_twisted():
    code = ("import sys, websmsd.sms; "
            "bad = [m for m in sys.modules if m == 'twisted' or m.startswith('twisted.')]; "
            "print(bad); sys.exit(1 if bad else 0)")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                          text=True)
    assert done.returncode == 0, done.stdout + done.stderr


# -- GSM 03.38 ----------------------------------------------------------------------------


def test_every_basic_septet_round_trips():
    for code, char in enumerate(GSM_BASIC):
        if code == 0x1B:
            continue
        assert sms.gsm_encode(char) == bytes([code])
        assert sms.gsm_decode(bytes([code])) == char
        assert sms.gsm_encodable(char)


def test_extension_table_uses_escape():
    for char, code in GSM_EXT.items():
        assert sms.gsm_encode(char) == bytes([0x1B, code])
        assert sms.gsm_decode(bytes([0x1B, code])) == char
    assert sms.gsm_encode("a€b") == b"a\x1b\x65b"


def test_not_gsm():
    for text in ["ç", "привет", "😀", "`", "\t", "\x00", "©"]:
        assert not sms.gsm_encodable(text)
        with pytest.raises(SMSError):
            sms.gsm_encode(text)
    assert sms.gsm_encodable("")


def test_gsm_decode_oddities_never_raise():
    # unknown escape -> default alphabet character (23.038); ESC ESC -> space;
    # trailing ESC -> nothing
    assert sms.gsm_decode(b"\x1b\x41") == "A"
    assert sms.gsm_decode(b"\x1b\x1bX") == " X"
    assert sms.gsm_decode(b"ab\x1b") == "ab"
    rnd = random.Random(1)
    for _ in range(300):
        data = bytes(rnd.randrange(256) for _ in range(rnd.randrange(40)))
        assert isinstance(sms.gsm_decode(data), str)


def test_gsm_all_text_round_trip():
    text = GSM_BASIC.replace("\x1b", "") + "".join(GSM_EXT)
    assert sms.gsm_decode(sms.gsm_encode(text)) == text


# -- codecs -------------------------------------------------------------------------------


def test_encode_each_encoding():
    assert sms.encode("Hi@", "gsm") == (0, b"Hi\x00")
    assert sms.encode("Hi@", "ia5") == (1, b"Hi@")
    assert sms.encode("Grüße", "latin1") == (3, "Grüße".encode("latin-1"))
    assert sms.encode("Я😀", "ucs2") == (8, b"\x04\x2f\xd8\x3d\xde\x00")
    with pytest.raises(SMSError):
        sms.encode("Grüße", "ia5")
    with pytest.raises(SMSError):
        sms.encode("Я", "latin1")
    with pytest.raises(SMSError):
        sms.encode("x", "utf8")
    with pytest.raises(SMSError):
        sms.encode("bad \ud800 surrogate", "ucs2")


def test_decode_ucs2_emoji_and_bom():
    assert sms.decode(8, "Привет 😀!".encode("utf-16-be")) == "Привет 😀!"
    assert sms.decode(8, b"\xfe\xff\x00A") == "A"
    d = sms.decode_detail(8, b"\x00A\x00")
    assert d.text == "A" and "odd" in d.note
    d = sms.decode_detail(8, b"\xd8\x3d\x00A")
    assert d.text == "\ufffdA" and "surrogate" in d.note


def test_decode_named_codings():
    assert sms.decode(0, b"Hello \x00 \x1b\x65") == "Hello @ €"
    assert sms.decode_detail(0, b"Hi").note is None
    assert sms.decode(1, b"Hi@") == "Hi@"
    assert sms.decode(3, b"Gr\xfc\xdfe") == "Grüße"
    assert sms.decode(6, "Привет".encode("iso8859_5")) == "Привет"
    assert sms.decode(7, "שלום".encode("iso8859_8")) == "שלום"
    assert sms.decode(10, "日本".encode("iso2022_jp")) == "日本"
    assert sms.decode(14, "한국".encode("euc_kr")) == "한국"
    # JIS X 0208 travels as the bare two-octet codes
    jis = bytes(b & 0x7F for b in "日本".encode("euc_jp"))
    assert sms.decode(5, jis) == "日本"


def test_decode_dc0_alternatives():
    assert sms.decode(0, b"a_$", dc0="ia5") == "a_$"
    assert sms.decode(0, b"a_$") == "a§¤"   # the same octets read as GSM 03.38
    assert sms.decode(0, b"\x11\x02") == "_$"
    assert sms.decode(0, b"\xe9t\xe9", dc0="latin1") == "été"


def test_decode_best_effort_with_note():
    d = sms.decode_detail(0, "été".encode("utf-8"))
    assert d.text == "été" and d.note and "UTF-8" in d.note
    d = sms.decode_detail(1, b"\xe9t\xe9")
    assert d.text == "été" and "Latin-1" in d.note
    d = sms.decode_detail(4, b"\x00\xff")
    assert d.text == "\x00\xff" and "binary" in d.note
    d = sms.decode_detail(0x99, b"abc")
    assert d.text == "abc" and d.note
    # 23.038 coding groups
    assert sms.decode(0x18, "Я".encode("utf-16-be")) == "Я"   # general group, UCS2
    assert sms.decode(0x10, b"\x00") == "@"                     # general group, GSM
    assert sms.decode(0xF0, b"Hi") == "Hi"                      # class 0 flash, GSM
    assert sms.decode(0xE0, "Я".encode("utf-16-be")) == "Я"     # MWI store, UCS2
    assert "compressed" in sms.decode_detail(0x30, b"xx").note


def test_decode_never_raises_for_any_coding():
    rnd = random.Random(7)
    for dc in range(256):
        for _ in range(8):
            data = bytes(rnd.randrange(256) for _ in range(rnd.randrange(30)))
            out = sms.decode_detail(dc, data)
            assert isinstance(out.text, str)
        assert sms.decode(dc, b"") == ""


# -- segments and split -------------------------------------------------------------------


@pytest.mark.parametrize("text,enc,parts,units", [
    ("", "gsm", 1, 0),
    ("a" * 160, "gsm", 1, 160),
    ("a" * 161, "gsm", 2, 161),
    ("a" * 306, "gsm", 2, 306),
    ("a" * 307, "gsm", 3, 307),
    ("€" * 80, "gsm", 1, 160),
    ("€" * 81, "gsm", 2, 162),
    ("Я" * 70, "ucs2", 1, 70),
    ("Я" * 71, "ucs2", 2, 71),
    ("Я" * 134, "ucs2", 2, 134),
    ("Я" * 135, "ucs2", 3, 135),
    ("😀" * 35, "ucs2", 1, 70),
    ("😀" * 36, "ucs2", 2, 72),
    ("a" * 159 + "é", "gsm", 1, 160),
    ("a" * 159 + "ç", "ucs2", 3, 160),
])
def test_segments_auto(text, enc, parts, units):
    info = sms.segments(text)
    assert (info.encoding, info.parts, info.units) == (enc, parts, units)
    assert info.data_coding == {"gsm": 0, "ucs2": 8}[enc]
    split = sms.split(text)
    assert len(split) == parts and "".join(split) == text


def test_segments_other_encodings_and_refs():
    assert sms.segments("a" * 140, "latin1").parts == 1
    assert sms.segments("a" * 141, "latin1")[2:5] == (2, 141, 134)
    assert sms.segments("a" * 160, "ia5").parts == 1
    assert sms.segments("a" * 161, "ia5").per_part == 153
    assert sms.segments("a" * 161, udh16=True).per_part == 152
    assert sms.segments("Я" * 71, udh16=True).per_part == 66
    assert sms.segments("abc", "ucs2").data_coding == 8
    assert sms.segments("abc").remaining == 157
    with pytest.raises(SMSError):
        sms.segments("Я", "gsm")
    with pytest.raises(SMSError):
        sms.segments("x", "koi8")


def test_split_never_cuts_an_escape_pair():
    text = "a" * 152 + "€" + "b" * 10     # the € would straddle septets 153/154
    parts = sms.split(text)
    assert parts == ["a" * 152, "€" + "b" * 10]
    for p in parts:
        assert len(sms.gsm_encode(p)) <= 153
    assert "".join(parts) == text


def test_split_never_cuts_a_surrogate_pair():
    text = "x" * 66 + "😀" + "y" * 10      # the pair would straddle units 67/68
    parts = sms.split(text)
    assert parts == ["x" * 66, "😀" + "y" * 10]
    for p in parts:
        assert len(p.encode("utf-16-be")) <= 134
        p.encode("utf-16-be")  # a lone surrogate would raise here


def test_split_random_texts_respect_limits():
    rnd = random.Random(3)
    alphabet = ["a", "€", "{", "Я", "😀", " ", "\n"]
    for _ in range(200):
        text = "".join(rnd.choice(alphabet) for _ in range(rnd.randrange(400)))
        info = sms.segments(text)
        parts = sms.split(text)
        assert "".join(parts) == text
        assert len(parts) == info.parts
        for p in parts:
            if info.encoding == "gsm":
                assert len(sms.gsm_encode(p)) <= info.per_part
            else:
                assert len(p.encode("utf-16-be")) // 2 <= info.per_part


# -- UDH ----------------------------------------------------------------------------------


def test_build_and_parse_udh_8bit():
    udh = sms.build_udh(0x42, 3, 2)
    assert udh == b"\x05\x00\x03\x42\x03\x02"
    head, rest = sms.parse_udh(udh + b"text")
    assert rest == b"text"
    assert head.concat == sms.Concat(0x42, 3, 2, 8)
    assert head.elements == ((0, b"\x42\x03\x02"),)


def test_build_and_parse_udh_16bit():
    udh = sms.build_udh(0x1234, 2, 1, ref16=True)
    assert udh == b"\x06\x08\x04\x12\x34\x02\x01"
    head, rest = sms.parse_udh(udh + "Я".encode("utf-16-be"))
    assert head.concat == sms.Concat(0x1234, 2, 1, 16)
    assert rest == b"\x04\x2f"


def test_parse_udh_other_elements_and_bad_numbers():
    # port addressing element (0x05) then concatenation
    head, rest = sms.parse_udh(b"\x0b\x05\x04\x0b\x84\x23\xf0\x00\x03\x07\x02\x01xyz")
    assert head.elements[0] == (0x05, b"\x0b\x84\x23\xf0")
    assert head.concat == sms.Concat(7, 2, 1, 8) and rest == b"xyz"
    # part 0 and part past the total are no concatenation
    assert sms.parse_udh(b"\x05\x00\x03\x01\x02\x00x")[0].concat is None
    assert sms.parse_udh(b"\x05\x00\x03\x01\x02\x03x")[0].concat is None
    assert sms.parse_udh(b"\x05\x00\x03\x01\x00\x00x")[0].concat is None


@pytest.mark.parametrize("bad", [b"", b"\x05\x00\x03", b"\x02\x00\x03", b"\x01\x00",
                                 b"\x03\x00\x05\x01"])
def test_parse_udh_malformed(bad):
    with pytest.raises(SMSError):
        sms.parse_udh(bad)


def test_parse_udh_garbage_raises_only_smserror():
    rnd = random.Random(11)
    for _ in range(500):
        data = bytes(rnd.randrange(256) for _ in range(rnd.randrange(20)))
        try:
            sms.parse_udh(data)
        except SMSError:
            pass


@pytest.mark.parametrize("args", [(256, 2, 1), (1, 0, 1), (1, 2, 3), (1, 256, 1),
                                  (-1, 2, 1)])
def test_build_udh_refuses_bad_numbers(args):
    with pytest.raises(SMSError):
        sms.build_udh(*args)
    with pytest.raises(SMSError):
        sms.build_udh(70000, 2, 1, ref16=True)


# -- reassembly ---------------------------------------------------------------------------


def test_reassembly_out_of_order_and_duplicates():
    r = sms.Reassembler(timeout=60)
    key = ("+15550001", "goip01", 7)
    assert r.add(key, 3, 3, "C", now=0) == []
    assert r.add(key, 3, 1, "A", now=1) == []
    assert r.add(key, 3, 1, "A", now=2) == []   # duplicate
    assert r.duplicates == 1
    done = r.add(key, 3, 2, "B", now=3)
    assert len(done) == 1
    msg = done[0]
    assert (msg.text, msg.complete, msg.missing, msg.total) == ("ABC", True, (), 3)
    assert (msg.first_seen, msg.last_seen) == (0, 3)
    assert len(r) == 0
    # a repeat of a part of the completed message does not start a half message
    assert r.add(key, 3, 2, "B", now=10) == []
    assert len(r) == 0 and r.duplicates == 2
    # ...but after the timeout the same reference is a new message
    assert r.add(key, 3, 2, "B", now=100) == []
    assert len(r) == 1


def test_reassembly_single_part_completes_at_once():
    r = sms.Reassembler()
    (msg,) = r.add("k", 1, 1, "solo", now=0)
    assert msg.complete and msg.text == "solo"


def test_reassembly_total_mismatch_is_another_group():
    r = sms.Reassembler()
    r.add("k", 2, 1, "a", now=0)
    r.add("k", 3, 1, "x", now=0)
    assert len(r) == 2
    (msg,) = r.add("k", 2, 2, "b", now=1)
    assert msg.text == "ab"


def test_reassembly_expire_gives_incomplete_with_marker():
    r = sms.Reassembler(timeout=30, marker="[…]")
    r.add("k", 5, 1, "one ", now=0)
    r.add("k", 5, 4, " four", now=10)
    r.add("other", 2, 1, "x", now=25)
    assert r.next_deadline() == 40
    assert r.expire(39) == []
    (msg,) = r.expire(40)
    assert not msg.complete
    assert msg.text == "one […] four[…]"
    assert msg.missing == (2, 3, 5)
    assert msg.parts == {1: "one ", 4: " four"}
    assert r.next_deadline() == 55
    (msg2,) = r.expire(1000)
    assert msg2.key == "other" and msg2.text == "x[…]"
    assert r.next_deadline() is None


def test_reassembly_is_bounded():
    r = sms.Reassembler(max_groups=3, timeout=1000)
    for i in range(3):
        assert r.add(("s", i), 2, 1, f"p{i}", now=i) == []
    evicted = r.add(("s", 3), 2, 1, "p3", now=3)
    assert [m.key for m in evicted] == [("s", 0)]
    assert not evicted[0].complete and evicted[0].text == "p0[…]"
    assert len(r) == 3
    for i in range(1000):
        r.add(("flood", i), 2, 1, "x", now=10 + i)
        assert len(r) <= 3
    # the memory of completed groups is bounded too
    for i in range(1000):
        r.add(("done", i), 1, 1, "x", now=2000 + i)
    assert len(r._done) <= 3


def test_reassembly_flush():
    r = sms.Reassembler()
    r.add("a", 2, 2, "end", now=0)
    (msg,) = r.flush()
    assert msg.text == "[…]end" and len(r) == 0


@pytest.mark.parametrize("total,seq", [(0, 1), (2, 0), (2, 3), (-1, 1)])
def test_reassembly_refuses_impossible_numbers(total, seq):
    with pytest.raises(SMSError):
        sms.Reassembler().add("k", total, seq, "x", now=0)


def test_reassembler_arguments():
    with pytest.raises(ValueError):
        sms.Reassembler(timeout=0)
    with pytest.raises(ValueError):
        sms.Reassembler(max_groups=0)
