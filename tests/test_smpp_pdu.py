"""websmsd.smpp.pdu and websmsd.smpp.receipt: bytes in, values out, and back."""

import random
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from websmsd import sms
from websmsd.smpp import pdu as P
from websmsd.smpp import receipt as R
from websmsd.smpp.pdu import PDU, DecodeError, FramingError, PDUError, PDUReader

ROOT = Path(__file__).resolve().parent.parent


def header(length, command_id, status=0, seq=1):
    return struct.pack(">IIII", length, command_id, status, seq)


def roundtrip(pdu):
    out = P.decode(pdu.encode())
    assert isinstance(out, PDU), out
    return out


def test_pure_modules_import_nothing_from_twisted():
    code = ("import sys, websmsd.smpp.pdu, websmsd.smpp.receipt; "
            "bad = [m for m in sys.modules if m == 'twisted' or m.startswith('twisted.')]; "
            "print(bad); sys.exit(1 if bad else 0)")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                          text=True)
    assert done.returncode == 0, done.stdout + done.stderr


# -- golden bytes ---------------------------------------------------------------------------


def test_enquire_link_bytes():
    assert PDU("enquire_link", 7).encode() == bytes.fromhex("00000010000000150000000000000007")
    assert PDU("enquire_link", 7).resp().encode() == bytes.fromhex(
        "00000010800000150000000000000007")


def test_bind_transceiver_bytes():
    pdu = PDU("bind_transceiver", 1, system_id="goip01", password="secret",
              interface_version=0x34)
    body = b"goip01\x00secret\x00\x00\x34\x00\x00\x00"
    assert pdu.encode() == header(16 + len(body), 9) + body
    assert "secret" not in repr(pdu)


def test_submit_sm_bytes():
    pdu = PDU("submit_sm", 2, source_addr_ton=5, source_addr_npi=1, dest_addr_ton=1,
              dest_addr_npi=1, destination_addr="15551234", registered_delivery=1,
              data_coding=8, short_message="Я".encode("utf-16-be"))
    body = (b"\x00" + b"\x05\x01" + b"\x00" + b"\x01\x01" + b"15551234\x00" +
            b"\x00\x00\x00" + b"\x00" + b"\x00" + b"\x01\x00\x08\x00" + b"\x02\x04\x2f")
    assert pdu.encode() == header(16 + len(body), 4, seq=2) + body


def test_goip_bind_resp_without_nul():
    # A GoIP-4 capture: 25 octets, system_id "goipsms04" with no NUL after it.
    data = bytes.fromhex("00000019800000090000000000000001676f6970736d733034")
    out = P.decode(data)
    assert isinstance(out, PDU)
    assert out.command == "bind_transceiver_resp" and out["system_id"] == "goipsms04"
    assert PDUReader().feed(data) == [out]


def test_error_response_without_body():
    out = P.decode(header(16, 0x80000004, P.ESME_RTHROTTLED, 9))
    assert out.command == "submit_sm_resp" and out.status == P.ESME_RTHROTTLED
    assert out["message_id"] == ""
    out = P.decode(header(16, 0x80000009, P.ESME_RINVPASWD, 1))
    assert out["system_id"] == "" and out.status == 0x0E


def test_bind_resp_with_sc_interface_version():
    data = b"SMSC\x00" + b"\x02\x10\x00\x01\x34"
    out = P.decode(header(16 + len(data), 0x80000009) + data)
    assert out["system_id"] == "SMSC" and out["sc_interface_version"] == 0x34


# -- round trips ----------------------------------------------------------------------------


@pytest.mark.parametrize("command", sorted(P.COMMAND_IDS))
def test_every_command_round_trips_empty(command):
    pdu = PDU(command, 42, 0)
    out = roundtrip(pdu)
    assert out.command == command and out.sequence == 42
    for name, kind, _ in P.BODIES[command]:
        assert out[name] == {"int": 0, "cstr": "", "sm": b""}[kind]


def test_deliver_sm_round_trip_with_tlvs():
    pdu = PDU("deliver_sm", 0x7FFFFFFF, source_addr="+15550001", destination_addr="goip01",
              esm_class=4, data_coding=8, short_message=b"",
              message_payload="hello".encode("utf-16-be"), receipted_message_id="abc",
              message_state=2, network_error_code=b"\x03\x00\x0b", sar_msg_ref_num=0x1234,
              sar_total_segments=3, sar_segment_seqnum=2, tlvs=[(0x1400, b"vendor")])
    out = roundtrip(pdu)
    assert out["message_payload"] == pdu["message_payload"]
    assert out["receipted_message_id"] == "abc" and out["message_state"] == 2
    assert out["sar_msg_ref_num"] == 0x1234
    assert out.tlvs == [(0x1400, b"vendor")]
    assert out.encode() == pdu.encode()


def test_unknown_tlv_kept_raw_and_known_with_bad_length_too():
    body = PDU("deliver_sm", 1).encode()[16:]
    tlvs = (b"\xfe\xed\x00\x02hi" +               # unknown vendor tag
            b"\x04\x27\x00\x02\x00\x02" +         # message_state with 2 octets
            b"\x04\x23\x00\x01\x05" +             # network_error_code with 1 octet
            b"\x04\x27\x00\x01\x05" +             # message_state, proper
            b"\x04\x27\x00\x01\x06")              # repeated: kept raw
    out = P.decode(header(16 + len(body) + len(tlvs), 5) + body + tlvs)
    assert isinstance(out, PDU)
    assert out["message_state"] == 5
    assert (0xFEED, b"hi") in out.tlvs
    assert (0x0427, b"\x00\x02") in out.tlvs and (0x0423, b"\x05") in out.tlvs
    assert (0x0427, b"\x06") in out.tlvs


def test_cstr_at_pdu_end_without_nul_in_any_position():
    out = P.decode(header(16 + 3, 0x80000004) + b"abc")
    assert out["message_id"] == "abc"
    # a request whose last string has no NUL is still read
    enc = PDU("outbind", 1, system_id="smsc", password="pw").encode()[:-1]
    enc = struct.pack(">I", len(enc)) + enc[4:]
    out = P.decode(enc)
    assert out["password"] == "pw"


def test_cstr_read_as_latin1():
    out = P.decode(header(16 + 3, 0x80000004) + b"\xe9\xff\x00")
    assert out["message_id"] == "\xe9\xff"


def test_resp_and_is_response():
    req = PDU("deliver_sm", 5)
    resp = req.resp(P.ESME_RX_T_APPN)
    assert resp.command == "deliver_sm_resp" and resp.sequence == 5
    assert resp.status == 0x64 and resp.is_response and not req.is_response
    with pytest.raises(PDUError):
        resp.resp()
    with pytest.raises(PDUError):
        PDU("alert_notification").resp()
    with pytest.raises(PDUError):
        PDU("query_sm")


# -- encode errors --------------------------------------------------------------------------


@pytest.mark.parametrize("kw", [
    {"no_such_field": 1},
    {"esm_class": 256},
    {"esm_class": -1},
    {"esm_class": "x"},
    {"destination_addr": "1" * 21},
    {"destination_addr": "12\x003"},
    {"destination_addr": "Я"},
    {"short_message": "text"},
    {"short_message": b"x" * 255},
    {"message_payload": "text"},
    {"message_payload": b"x" * 65536},
    {"network_error_code": b"\x00"},
    {"sar_msg_ref_num": 70000},
])
def test_encode_refuses(kw):
    with pytest.raises(PDUError):
        PDU("submit_sm", 1, **kw).encode()


def test_encode_refuses_bad_header_numbers():
    with pytest.raises(PDUError):
        PDU("enquire_link", 1 << 32).encode()
    with pytest.raises(PDUError):
        PDU("enquire_link", 1, tlvs=[(0x10000, b"")]).encode()


def test_status_names():
    assert P.status_name(0x58) == "ESME_RTHROTTLED"
    assert P.status_name(0x14) == "ESME_RMSGQFUL"
    assert P.status_name(0x0D) == "ESME_RBINDFAIL"
    assert P.status_name(0x64) == "ESME_RX_T_APPN"
    assert P.status_name(0) == "ESME_ROK"
    assert P.status_name(0x400) == "0x00000400"
    assert P.ESME_RINVPASWD == 0x0E and P.ESME_RINVSYSID == 0x0F and P.ESME_RSYSERR == 8


# -- decode errors --------------------------------------------------------------------------


def test_unknown_command_is_decode_error_answered_with_generic_nack():
    ev = P.decode(header(20, 0x00000003, seq=77) + b"abcd")   # query_sm: not handled
    assert isinstance(ev, DecodeError)
    assert (ev.status, ev.sequence, ev.command) == (P.ESME_RINVCMDID, 77, None)
    ans = ev.error_response()
    assert ans.command == "generic_nack" and ans.status == P.ESME_RINVCMDID
    assert ans.encode() == header(16, 0x80000000, 3, 77)


def test_sm_length_overrun():
    body = PDU("deliver_sm", 1).encode()[16:-1] + b"\x10abc"
    ev = P.decode(header(16 + len(body), 5, seq=4) + body)
    assert isinstance(ev, DecodeError)
    assert ev.status == P.ESME_RINVMSGLEN and ev.command == "deliver_sm"
    ans = ev.error_response()
    assert (ans.command, ans.status, ans.sequence) == ("deliver_sm_resp", 1, 4)


def test_truncated_request_body():
    body = PDU("deliver_sm", 1).encode()[16:20]
    ev = P.decode(header(16 + len(body), 5) + body)
    assert isinstance(ev, DecodeError) and ev.status == P.ESME_RINVCMDLEN


@pytest.mark.parametrize("tail", [b"\x04", b"\x04\x24\x00", b"\x04\x24\x00\x05ab"])
def test_broken_tlv_stream(tail):
    body = PDU("deliver_sm", 1).encode()[16:] + tail
    ev = P.decode(header(16 + len(body), 5) + body)
    assert isinstance(ev, DecodeError) and ev.status == P.ESME_RINVOPTPARSTREAM


def test_decode_error_on_a_response_is_not_answered():
    data = header(16 + 3, 0x80000004, 0, 3) + b"\x00\x04\x24"
    ev = P.decode(data)
    assert isinstance(ev, DecodeError) and ev.is_response and ev.error_response() is None
    assert ev.header_status == 0


def test_decode_of_not_one_pdu():
    assert isinstance(P.decode(b"\x00\x00"), FramingError)
    assert isinstance(P.decode(header(20, 0x15)), FramingError)


# -- the reader -----------------------------------------------------------------------------


def sample_stream():
    pdus = [
        PDU("bind_transceiver_resp", 1, system_id="goip01"),
        PDU("deliver_sm", 2, source_addr="123", data_coding=8,
            short_message="Привет".encode("utf-16-be")),
        PDU("enquire_link", 3),
        PDU("submit_sm_resp", 4, message_id="0a1b"),
        PDU("deliver_sm", 5, message_payload=b"x" * 1000),
    ]
    data = b"".join(p.encode() for p in pdus)
    return [P.decode(p.encode()) for p in pdus], data


def test_reader_byte_by_byte():
    pdus, data = sample_stream()
    r = PDUReader()
    events = []
    for i in range(len(data)):
        events += r.feed(data[i:i + 1])
    assert events == pdus and r.pending == 0


def test_reader_every_split_point():
    pdus, data = sample_stream()
    for cut in range(len(data) + 1):
        r = PDUReader()
        assert r.feed(data[:cut]) + r.feed(data[cut:]) == pdus


def test_reader_whole_stream_at_once_and_empty_feed():
    pdus, data = sample_stream()
    r = PDUReader()
    assert r.feed(b"") == []
    assert r.feed(data) == pdus


def test_reader_bad_field_keeps_going():
    bad = header(16 + 3, 0x00000005, 0, 9) + b"abc"      # deliver_sm cut short
    good = PDU("enquire_link", 10).encode()
    ev = PDUReader().feed(bad + good)
    assert isinstance(ev[0], DecodeError) and ev[0].sequence == 9
    assert ev[1] == PDU("enquire_link", 10)


@pytest.mark.parametrize("length", [0, 1, 15, P.MAX_PDU_LENGTH + 1, 0xFFFFFFFF])
def test_reader_framing_errors(length):
    r = PDUReader()
    ev = r.feed(struct.pack(">IIII", length, 4, 0, 33) + b"rest")
    assert len(ev) == 1 and isinstance(ev[0], FramingError)
    assert ev[0].sequence == 33 and ev[0].length == length
    nack = ev[0].generic_nack()
    assert nack.encode() == header(16, 0x80000000, P.ESME_RINVCMDLEN, 33)
    assert r.broken and r.pending == 0
    assert r.feed(PDU("enquire_link", 1).encode()) == []


def test_reader_framing_error_before_whole_header():
    r = PDUReader()
    ev = r.feed(b"\x00\x00\x00\x05")
    assert isinstance(ev[0], FramingError) and ev[0].sequence is None
    assert ev[0].generic_nack().sequence == 0


def test_reader_memory_is_bounded_by_cap():
    r = PDUReader(max_length=1024)
    big = PDU("deliver_sm", 1, message_payload=b"x" * 2000).encode()
    ev = r.feed(big[:100])
    assert isinstance(ev[0], FramingError) and r.pending == 0
    r = PDUReader()
    ev = r.feed(PDU("deliver_sm", 1, message_payload=b"y" * 60000).encode())
    assert ev[0]["message_payload"] == b"y" * 60000


def test_reader_largest_pdu_byte_by_byte():
    data = PDU("deliver_sm", 1, message_payload=b"z" * (P.MAX_PDU_LENGTH - 100)).encode()
    r = PDUReader()
    out = []
    for i in range(len(data)):
        out += r.feed(data[i:i + 1])
    assert len(out) == 1 and len(out[0]["message_payload"]) == P.MAX_PDU_LENGTH - 100


def test_reader_garbage_never_raises_and_ends_or_waits():
    rnd = random.Random(5)
    for _ in range(400):
        r = PDUReader()
        blob = bytes(rnd.randrange(256) for _ in range(rnd.randrange(200)))
        for ev in r.feed(blob):
            assert isinstance(ev, (PDU, DecodeError, FramingError))
        assert r.pending <= P.MAX_PDU_LENGTH


def test_mutated_pdus_never_raise():
    _, data = sample_stream()
    rnd = random.Random(9)
    for _ in range(600):
        blob = bytearray(data)
        for _ in range(rnd.randrange(1, 6)):
            blob[rnd.randrange(len(blob))] = rnd.randrange(256)
        events = PDUReader().feed(bytes(blob))
        for ev in events:
            assert isinstance(ev, (PDU, DecodeError, FramingError))


def test_valid_header_random_bodies_never_raise():
    rnd = random.Random(13)
    for command_id in list(P.COMMAND_NAMES) + [0x3, 0x7, 0x21, 0x12345678]:
        for _ in range(40):
            body = bytes(rnd.randrange(256) for _ in range(rnd.randrange(120)))
            ev = P.decode(header(16 + len(body), command_id) + body)
            assert isinstance(ev, (PDU, DecodeError))


# -- submits_for ----------------------------------------------------------------------------


def test_submit_single_gsm_defaults_goip():
    (f,) = P.submits_for("+15551234", "Hello @ €")
    assert f["destination_addr"] == "15551234"
    assert (f["source_addr_ton"], f["source_addr_npi"], f["source_addr"]) == (5, 1, "")
    assert (f["dest_addr_ton"], f["dest_addr_npi"]) == (1, 1)
    assert f["data_coding"] == 0 and f["short_message"] == b"Hello \x00 \x1b\x65"
    assert f["registered_delivery"] == 1 and f["esm_class"] == 0
    PDU("submit_sm", 1, fields=f).encode()


def test_submit_single_ucs2_and_explicit_encodings():
    (f,) = P.submits_for("15551234", "Привет 😀")
    assert f["data_coding"] == 8 and f["short_message"] == "Привет 😀".encode("utf-16-be")
    (f,) = P.submits_for("1", "Hi_", encoding="ia5", registered_delivery=False)
    assert (f["data_coding"], f["short_message"], f["registered_delivery"]) == (1, b"Hi_", 0)
    (f,) = P.submits_for("1", "Grüße", encoding="latin1")
    assert (f["data_coding"], f["short_message"]) == (3, "Grüße".encode("latin-1"))
    (f,) = P.submits_for("+1", "x", dest_ton=0)
    assert f["destination_addr"] == "+1"
    with pytest.raises(sms.SMSError):
        P.submits_for("1", "Я", encoding="gsm")


def test_submit_long_payload_is_one_pdu():
    text = "Длинное сообщение " * 20
    (f,) = P.submits_for("15551234", text)
    assert f["short_message"] == b"" and f["message_payload"] == text.encode("utf-16-be")
    pdu = roundtrip(PDU("submit_sm", 1, fields=f))
    assert P.deliver_text(pdu) == (text, None)


def test_submit_long_udh_parts_reassemble():
    text = "part text with {braces} and € " * 12
    fields = P.submits_for("15551234", text, long_method="udh", ref=300)
    assert len(fields) == sms.segments(text).parts > 1
    r = sms.Reassembler()
    done = []
    for f in reversed(fields):
        assert f["esm_class"] == P.ESM_UDHI and len(f["short_message"]) <= 6 + 153
        pdu = roundtrip(PDU("deliver_sm", 1, fields=f))
        part, concat = P.deliver_text(pdu)
        assert concat.ref == 300 % 256 and concat.kind == 8
        done += r.add(("s", concat.ref), concat.total, concat.seq, part, now=0)
    assert done[0].text == text and done[0].complete


def test_submit_long_udh16_and_sar():
    text = "Я" * 140
    fields = P.submits_for("1", text, long_method="udh", ref=0x1234, udh16=True)
    assert len(fields) == 3
    assert fields[0]["short_message"][:7] == b"\x06\x08\x04\x12\x34\x03\x01"
    assert all(len(f["short_message"]) <= 7 + 132 for f in fields)
    fields = P.submits_for("1", text, long_method="sar", ref=70000)
    assert [(f["sar_msg_ref_num"], f["sar_total_segments"], f["sar_segment_seqnum"])
            for f in fields] == [(70000 % 65536, 3, 1), (4464, 3, 2), (4464, 3, 3)]
    texts = [P.deliver_text(roundtrip(PDU("deliver_sm", 1, fields=f))) for f in fields]
    assert "".join(t for t, _ in texts) == text
    assert texts[1][1] == sms.Concat(4464, 3, 2, "sar")


@pytest.mark.parametrize("dest", ["", "12 34", "1" * 21, "12\n3", "+"])
def test_submit_refuses_bad_destination(dest):
    with pytest.raises(PDUError):
        P.submits_for(dest, "x")


def test_submit_refuses_bad_options():
    with pytest.raises(PDUError):
        P.submits_for("1", "x" * 200, long_method="udh")      # no ref
    with pytest.raises(PDUError):
        P.submits_for("1", "x", long_method="smoke")
    with pytest.raises(PDUError):
        P.submits_for("1", "x", source="bad source")
    with pytest.raises(PDUError):
        P.submits_for("1", "x", source_ton=300)
    with pytest.raises(PDUError):
        P.submits_for("1", "x" * 70000)                        # > message_payload
    with pytest.raises(PDUError):
        P.submits_for("1", "x" * 153 * 256, long_method="sar", ref=1)


# -- deliver_text ---------------------------------------------------------------------------


def test_deliver_text_plain_codings():
    assert P.deliver_text(PDU("deliver_sm", data_coding=8,
                              short_message="Hi 😀".encode("utf-16-be"))) == ("Hi 😀", None)
    assert P.deliver_text(PDU("deliver_sm", short_message=b"\x00x")) == ("@x", None)
    assert P.deliver_text(PDU("deliver_sm", short_message=b"\x00x"), dc0="ia5") == ("\x00x", None)
    assert P.deliver_text(PDU("deliver_sm", data_coding=3, short_message=b"\xe9")) == ("é", None)
    assert P.deliver_text(PDU("deliver_sm")) == ("", None)


def test_deliver_text_message_payload_wins_over_empty_short_message():
    pdu = PDU("deliver_sm", data_coding=8, short_message=b"",
              message_payload="long text".encode("utf-16-be"))
    assert P.deliver_text(pdu) == ("long text", None)
    pdu = PDU("deliver_sm", short_message=b"abc", message_payload=b"")
    assert P.deliver_text(pdu) == ("abc", None)


def test_deliver_text_udh_8_and_16():
    pdu = PDU("deliver_sm", esm_class=0x40, data_coding=8,
              short_message=sms.build_udh(9, 2, 2) + "Я".encode("utf-16-be"))
    assert P.deliver_text(pdu) == ("Я", sms.Concat(9, 2, 2, 8))
    pdu = PDU("deliver_sm", esm_class=0x40,
              short_message=sms.build_udh(0xABCD, 3, 1, ref16=True) + b"abc")
    assert P.deliver_text(pdu) == ("abc", sms.Concat(0xABCD, 3, 1, 16))


def test_deliver_text_udh_oddities():
    # a one-part "concatenation" is a single message
    pdu = PDU("deliver_sm", esm_class=0x40, short_message=sms.build_udh(1, 1, 1) + b"x")
    assert P.deliver_text(pdu) == ("x", None)
    # a header that overruns the payload: the payload is text, whole
    pdu = PDU("deliver_sm", esm_class=0x40, data_coding=3, short_message=b"\x09ab")
    assert P.deliver_text(pdu) == ("\x09ab", None)
    # impossible part numbers: no concatenation
    pdu = PDU("deliver_sm", esm_class=0x40, short_message=b"\x05\x00\x03\x01\x02\x05x")
    assert P.deliver_text(pdu) == ("x", None)
    pdu = PDU("deliver_sm", short_message=b"x", sar_msg_ref_num=1, sar_total_segments=2,
              sar_segment_seqnum=3)
    assert P.deliver_text(pdu) == ("x", None)


# -- receipts -------------------------------------------------------------------------------

GOIP_RECEIPT = (b"id:1234 sub:001 dlvrd:001 submit date:2501011200 done date:2501011201 "
                b"stat:DELIVRD err:000 Text:Hello there")


def test_receipt_goip_text():
    pdu = P.decode(PDU("deliver_sm", 1, esm_class=4, short_message=GOIP_RECEIPT).encode())
    rec = R.parse_receipt(pdu)
    assert rec.message_id == "1234" and rec.state == "delivered"
    assert rec.error == "000" and rec.raw_stat == "DELIVRD"
    assert rec.fields["submit date"] == "2501011200" and rec.fields["text"] == "Hello there"


@pytest.mark.parametrize("stat,state", [
    ("DELIVRD", "delivered"), ("UNDELIV", "failed"), ("EXPIRED", "failed"),
    ("REJECTD", "failed"), ("DELETED", "failed"), ("ENROUTE", None), ("ACCEPTD", None),
    ("UNKNOWN", None), ("delivrd", "delivered"), ("WEIRD", None),
])
def test_receipt_states(stat, state):
    text = f"ID:ab12 SUB:001 DLVRD:000 SUBMIT DATE:2501011200 DONE DATE:2501011201 " \
           f"STAT:{stat} ERR:012 TEXT:x"
    rec = R.parse_receipt(PDU("deliver_sm", esm_class=4, short_message=text.encode()))
    assert rec.state == state and rec.message_id == "ab12" and rec.error == "012"
    assert rec.raw_stat == stat


def test_receipt_tlvs_first():
    pdu = PDU("deliver_sm", esm_class=4, receipted_message_id="0A1B", message_state=5,
              network_error_code=b"\x03\x00\x22",
              short_message=b"id:999 stat:DELIVRD err:000 text:")
    rec = R.parse_receipt(pdu)
    assert rec.message_id == "0A1B" and rec.state == "failed"
    assert rec.raw_stat == "UNDELIVERABLE" and rec.error == "3:34"
    pdu = PDU("deliver_sm", receipted_message_id="77", message_state=2)   # esm_class 0
    assert R.parse_receipt(pdu)[:4] == ("77", "delivered", None, "DELIVERED")


def test_receipt_intermediate_and_no_id():
    rec = R.parse_receipt(PDU("deliver_sm", esm_class=0x20, short_message=b"stat:ENROUTE"))
    assert rec.message_id is None and rec.state is None and rec.raw_stat == "ENROUTE"


def test_receipt_in_ucs2_and_in_payload():
    text = "id:42 stat:UNDELIV err:001 text:Привет"
    rec = R.parse_receipt(PDU("deliver_sm", esm_class=4, data_coding=8,
                              message_payload=text.encode("utf-16-be")))
    assert (rec.message_id, rec.state, rec.fields["text"]) == ("42", "failed", "Привет")


def test_sms_that_looks_like_a_receipt_is_not_one():
    pdu = PDU("deliver_sm", esm_class=0, short_message=GOIP_RECEIPT)
    assert R.parse_receipt(pdu) is None
    assert R.parse_receipt(PDU("submit_sm", esm_class=4)) is None


def test_receipt_text_field_keeps_keys_inside():
    rec = R.parse_receipt(PDU("deliver_sm", esm_class=4,
                              short_message=b"id:5 stat:DELIVRD text:id:6 stat:UNDELIV"))
    assert (rec.message_id, rec.state, rec.fields["text"]) == ("5", "delivered",
                                                              "id:6 stat:UNDELIV")


def test_receipt_garbage_never_raises():
    rnd = random.Random(17)
    for _ in range(300):
        blob = bytes(rnd.randrange(256) for _ in range(rnd.randrange(80)))
        for dc in (0, 1, 3, 8, 0x99):
            rec = R.parse_receipt(PDU("deliver_sm", esm_class=rnd.choice([4, 0x44, 0x20]),
                                      data_coding=dc, short_message=blob))
            assert rec is not None


@pytest.mark.parametrize("a,b,match", [
    ("00000e7c", "3708", True),      # hex in the resp, decimal in the receipt (GoIP-like)
    ("3708", "E7C", True),
    ("0A1B", "a1b", True),
    ("12345", "12345", True),
    ("000123", "123", True),
    ("abc", "abd", False),
    ("10", "16", True),               # hex 10 == decimal 16
    ("10", "11", False),
    ("", "", False),
])
def test_id_variants(a, b, match):
    assert R.ids_match(a, b) is match


def test_id_variants_first_is_the_id():
    assert R.id_variants("00000E7C") == ("e7c", "3708")
    assert R.id_variants("3708") == ("3708", "e7c", "14088")
    assert R.id_variants("msg-1") == ("msg-1",)
    assert R.id_variants("0") == ("0",)
    assert R.id_variants("") == ()
