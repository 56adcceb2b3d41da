"""The GoIP UDP "SMS server" protocol: the sans-IO core (websmsd.goip.udp) and the
Twisted server (websmsd.goip.udpserver).

Packets quoted here come from real devices as published (NiceLabs/dbltek-goip-agent
`notify_test.go`, styryl/node-goip `test/samples.js`, iivorait/GoIP-SMS-receiver) or
from the vendor's document.
"""

from __future__ import annotations

import random
import subprocess
import sys
import textwrap

import pytest

from websmsd.goip import udp
from websmsd.goip.outcome import SendOutcome
from websmsd.goip.udp import (
    CommandReply, Deliver, DoneAnswer, ErrorAnswer, Garbage, GoIPProtocolError, Keepalive,
    Notice, PasswordPrompt, Receive, SendOk, SendPrompt, SendSession, SendWait, UssdExited,
    UssdFailed, UssdReply, UssdSession, parse_datagram,
)

NODE_GOIP_KEEPALIVE = (
    b"req:27;id:gateway_name;pass:gateway_password;num:;signal:29;gsm_status:LOGIN;"
    b"voip_status:LOGOUT;voip_state:IDLE;remain_time:-1;imei:867495023958030;"
    b"imsi:260060172091324;iccid:89480611000720913242;pro:POL;idle:11;disable_status:0;"
    b"SMS_LOGIN:N;SMB_LOGIN:;CELLINFO:LAC:7E5,CELL ID:5E5B;CGATT:Y;"
)
NICELABS_RECEIVE = "RECEIVE:1571812849;id:goip-1;password:goip;srcnum:1380013800;msg:测试".encode()
IIVORAIT_RECEIVE = b"RECEIVE:1734804704;id:goip01;password:xxxxxx;srcnum:+358401234567;msg:Hello"
NICELABS_DELIVER = b"DELIVER:1571812803;id:goip-1;password:goip;sms_no:32;state:0;num:+861380013800"


# ---------------------------------------------------------------------------------------
# Parsing
# ---------------------------------------------------------------------------------------


def test_real_keepalive_every_field():
    ev = parse_datagram(NODE_GOIP_KEEPALIVE)
    assert isinstance(ev, Keepalive)
    assert ev.count == 27
    assert ev.goip_id == "gateway_name"
    assert ev.password == "gateway_password"
    assert ev.num == ""  # empty value
    assert ev.signal == 29
    assert ev.gsm_status == "LOGIN"
    assert ev.voip_status == "LOGOUT"
    assert (ev.imei, ev.imsi, ev.iccid) == ("867495023958030", "260060172091324", "89480611000720913242")
    assert ev.sms_login == "N"  # upper-case name
    fields = dict(ev.fields)
    assert fields["CELLINFO"] == "LAC:7E5,CELL ID:5E5B"  # a value with ':' and a blank
    assert fields["SMB_LOGIN"] == ""
    assert fields["voip_state"] == "IDLE"
    assert list(ev.fields)[0] == ("req", "27")
    assert len(ev.fields) == 19


def test_keepalive_password_never_in_repr_or_safe_fields():
    ev = parse_datagram(NODE_GOIP_KEEPALIVE)
    assert "gateway_password" not in repr(ev)
    assert all(k != "pass" for k, _ in ev.safe_fields())
    assert ("CGATT", "Y") in ev.safe_fields()


def test_vendor_keepalive_minimal_and_upper_case_names():
    ev = parse_datagram(b"REQ:10;ID:goipid1;PASS:password1;NUM:12345;SIGNAL:23;GSM_STATUS:LOGIN;VOIP_STATUS:LOGIN;")
    assert isinstance(ev, Keepalive)
    assert (ev.count, ev.goip_id, ev.password, ev.num, ev.signal) == (10, "goipid1", "password1", "12345", 23)
    assert ev.imei == "" and ev.sms_login == ""


def test_keepalive_signal_not_a_number_is_none():
    ev = parse_datagram(b"req:1;id:a;pass:b;signal:;")
    assert ev.signal is None
    assert parse_datagram(b"req:1;id:a;pass:b;signal:x9;").signal is None


@pytest.mark.parametrize("data, why", [
    (b"req:abc;id:a;pass:b;", "count"),
    (b"req:;id:a;pass:b;", "count"),
    (b"req:1;pass:b;", "without id"),
    (b"req:1;id:a;", "without id"),
])
def test_bad_keepalives_are_garbage(data, why):
    ev = parse_datagram(data)
    assert isinstance(ev, Garbage)
    assert why in ev.reason


def test_real_receive_packets():
    ev = parse_datagram(NICELABS_RECEIVE)
    assert ev == Receive(recvid="1571812849", goip_id="goip-1", password="goip", srcnum="1380013800",
                         text="测试", fields=ev.fields)
    ev = parse_datagram(IIVORAIT_RECEIVE)
    assert (ev.recvid, ev.goip_id, ev.srcnum, ev.text) == ("1734804704", "goip01", "+358401234567", "Hello")
    assert "xxxxxx" not in repr(ev) and "Hello" not in repr(ev)


def test_msg_takes_everything_after_it():
    text = "a;b:c;id:evil;password:x;msg:again\r\n  "
    ev = parse_datagram(f"RECEIVE:5;id:g;password:p;srcnum:123;msg:{text}".encode())
    assert ev.text == text  # ';' ':' the fields inside and trailing blanks all kept
    assert ev.goip_id == "g" and ev.password == "p"


def test_msg_text_is_never_trimmed_and_may_be_empty():
    ev = parse_datagram(b"RECEIVE:5;id:g;password:p;srcnum:123;msg:  spaced  ")
    assert ev.text == "  spaced  "
    ev = parse_datagram(b"RECEIVE:5;id:g;password:p;srcnum:123;msg:")
    assert isinstance(ev, Receive) and ev.text == ""


def test_leading_blanks_and_trailing_nuls_are_trimmed_around_the_packet():
    ev = parse_datagram(b"\r\n  RECEIVE:5;id:g;password:p;srcnum:1;msg:hi \x00\x00")
    assert isinstance(ev, Receive) and ev.text == "hi "
    ev = parse_datagram(b"req:3;id:g;pass:p;num:5 \r\n")
    assert ev.count == 3 and ev.num == "5"


def test_vendor_document_example_with_pass_and_spaces():
    # The document's own example: `pass:` for `password:` and blanks around values.
    ev = parse_datagram(b"RECEIVE: 1270197307 ; id: goipid1 ;pass: password1 ;srcnum: +8613513415667 ;msg:just a test")
    assert isinstance(ev, Receive)
    assert (ev.recvid, ev.goip_id, ev.password, ev.srcnum, ev.text) == (
        "1270197307", "goipid1", "password1", "+8613513415667", "just a test")


def test_negative_recvid_from_a_goip_without_clock():
    ev = parse_datagram(b"RECEIVE:-1245;id:g;password:p;srcnum:1;msg:x")
    assert ev.recvid == "-1245"


def test_first_of_repeated_fields_wins():
    ev = parse_datagram(b"RECEIVE:5;id:good;password:pw;id:evil;password:other;srcnum:1;msg:x")
    assert (ev.goip_id, ev.password) == ("good", "pw")


def test_field_names_in_either_case_for_receive():
    ev = parse_datagram(b"receive:5;ID:g;PASSWORD:p;SrcNum:77;MSG:Hi;there")
    assert isinstance(ev, Receive) and (ev.srcnum, ev.text) == ("77", "Hi;there")


def test_invalid_utf8_text_is_kept_with_replacement():
    ev = parse_datagram(b"RECEIVE:5;id:g;password:p;srcnum:1;msg:caf\xe9")
    assert isinstance(ev, Receive) and ev.lossy and ev.text == "caf\ufffd"


@pytest.mark.parametrize("data", [
    b"RECEIVE:5;id:g;password:p;msg:no sender",
    b"RECEIVE:5;id:g;password:p;srcnum:1",
    b"RECEIVE:x5;id:g;password:p;srcnum:1;msg:a",
    b"RECEIVE:;id:g;password:p;srcnum:1;msg:a",
    b"RECEIVE:5;password:p;srcnum:1;msg:a",
    b"RECEIVE:5;id:g;srcnum:1;msg:a",
    b"DELIVER:5;id:g;password:p;state:0",
    b"STATE:abc;id:g;password:p",
])
def test_incomplete_packets_are_garbage(data):
    assert isinstance(parse_datagram(data), Garbage)


def test_real_deliver():
    ev = parse_datagram(NICELABS_DELIVER)
    assert ev == Deliver(recvid="1571812803", goip_id="goip-1", password="goip", sms_no="32",
                         state="0", num="+861380013800", fields=ev.fields)


@pytest.mark.parametrize("kind", ["STATE", "RECORD", "REMAIN", "CELLS", "EXPIRY", "HANGUP", "USSN", "BCCH", "GSM", "AT"])
def test_other_kinds_are_notices(kind):
    ev = parse_datagram(f"{kind}:7568;id:goip1;password:password1;gsm_remain_state:IDLE;x:a:b".encode())
    assert isinstance(ev, Notice)
    assert (ev.kind, ev.recvid, ev.goip_id, ev.password) == (kind, "7568", "goip1", "password1")
    assert ev.get("GSM_REMAIN_STATE") == "IDLE" and ev.get("x") == "a:b" and ev.get("nope", "-") == "-"
    assert "password1" not in repr(ev)
    assert all(k != "password" for k, _ in ev.safe_fields())


def test_lower_case_kind_is_upper_cased():
    assert parse_datagram(b"record:1;id:g;password:p;dir:2;num:10086").kind == "RECORD"


@pytest.mark.parametrize("data, expected", [
    (b"PASSWORD 11", PasswordPrompt(11)),
    (b"PASSWORD 11\n", PasswordPrompt(11)),
    (b"SEND 11", SendPrompt(11)),
    (b"OK 11 1 160", SendOk(11, telid=1, sms_no="160")),
    (b"OK 11 1", SendOk(11, telid=1, sms_no=None)),  # the older document's form
    (b"ok 11 2 161\r\n", SendOk(11, telid=2, sms_no="161")),
    (b"WAIT 11 2", SendWait(11, telid=2)),
    (b"ERROR 11 PASSWORD", ErrorAnswer(11, detail="PASSWORD")),
    (b"ERROR 11 1 errorstatus:1", ErrorAnswer(11, detail="1 errorstatus:1")),
    (b"ERROR 11 too many request", ErrorAnswer(11, detail="too many request")),
    (b"ERROR 11", ErrorAnswer(11, detail="")),
    (b"DONE 11", DoneAnswer(11)),
    (b"USSD 111 You are going to transfer 10.00 EGP; press 1\n", UssdReply(111, text="You are going to transfer 10.00 EGP; press 1")),
    (b"USSDERROR 111 timeout", UssdFailed(111, message="timeout")),
    (b"USSDEXIT 111", UssdExited(111)),
    (b"get_gsm_num 879901 13800138000", CommandReply(879901, command="get_gsm_num", detail="13800138000")),
    (b"CFOK 5", CommandReply(5, command="CFOK", detail="")),
])
def test_dialogue_answers(data, expected):
    assert parse_datagram(data) == expected


def test_error_answer_helpers():
    e = parse_datagram(b"ERROR 11 1 errorstatus:1")
    assert (e.telid, e.errorstatus, e.is_password) == (1, "1", False)
    e = parse_datagram(b"ERROR 11 PASSWORD")
    assert (e.telid, e.errorstatus, e.is_password) == (None, None, True)


@pytest.mark.parametrize("data", [
    b"OK", b"OK x 1", b"OK 11", b"OK 11 1 2 3", b"WAIT 11", b"PASSWORD 11 extra", b"DONE 11 x",
    b"SEND 11 1 +123", b"USSDEXIT 1 2", b"PASSWORD 99999999999",
])
def test_malformed_answers_are_garbage(data):
    assert isinstance(parse_datagram(data), Garbage)


@pytest.mark.parametrize("data", [
    b"", b"   ", b"\x00\x00", b"\r\n", b";;;", b":x", b"123", b"\xff\xfe\xfd", b"{json: 1}",
    b"GET / HTTP/1.1\r\n\r\n", b"req", b"=\n",
])
def test_garbage(data):
    assert isinstance(parse_datagram(data), Garbage)


def test_oversize_and_not_bytes():
    assert "over" in parse_datagram(b"req:1;id:a;pass:b;x:" + b"y" * udp.MAX_DATAGRAM).reason
    assert isinstance(parse_datagram("req:1;id:a;pass:b"), Garbage)  # str, not bytes
    assert isinstance(parse_datagram(None), Garbage)
    assert isinstance(parse_datagram(bytearray(b"DONE 3")), DoneAnswer)


def test_every_prefix_of_real_packets_parses_without_raising():
    for packet in (NODE_GOIP_KEEPALIVE, NICELABS_RECEIVE, NICELABS_DELIVER, b"OK 11 1 160", b"USSD 5 hi"):
        for i in range(len(packet) + 1):
            ev = parse_datagram(packet[:i])
            assert isinstance(ev, (Garbage, Keepalive, Receive, Deliver, Notice, udp.Answer))


def test_random_datagrams_never_raise():
    rng = random.Random(1234)
    alphabet = b"req:;RECEIVE DELIVER OK ERROR msg id password pass 0123456789 -\n\r\x00\xff\xc3\xa9"
    for _ in range(3000):
        n = rng.randrange(0, 120)
        if rng.random() < 0.5:
            data = bytes(rng.randrange(256) for _ in range(n))
        else:
            data = bytes(rng.choice(alphabet) for _ in range(n))
        ev = parse_datagram(data)
        assert ev is not None


# ---------------------------------------------------------------------------------------
# Encoding
# ---------------------------------------------------------------------------------------


def test_keepalive_ack_forms():
    assert udp.keepalive_ack(27) == b"reg:27;status:200;"
    assert udp.keepalive_ack(10, udp.Dialect(ack_status="0")) == b"reg:10;status:0;"
    assert udp.keepalive_ack(3, udp.Dialect(ack_prefix="req")) == b"req:3;status:200;"


@pytest.mark.parametrize("kwargs", [
    dict(ack_prefix="rex"), dict(ack_status="ok"), dict(length_unit="chars"), dict(line_end="\r"),
])
def test_bad_dialects_are_refused(kwargs):
    with pytest.raises(GoIPProtocolError):
        udp.Dialect(**kwargs)


def test_answers_to_the_goip():
    assert udp.receive_ack("1571812849") == b"RECEIVE 1571812849 OK\n"
    assert udp.receive_ack("-5", udp.Dialect(line_end="")) == b"RECEIVE -5 OK"
    assert udp.deliver_ack("1571812803") == b"DELIVER 1571812803 OK\n"
    assert udp.notice_ack("state", "7568") == b"STATE 7568 OK\n"
    assert udp.receive_error("5", "store\r\nfailed;\x00now") == b"RECEIVE 5 ERROR store failed; now\n"
    for bad in ("5 OK\nRECEIVE 6", "", "1.5", "abc"):
        with pytest.raises(GoIPProtocolError):
            udp.receive_ack(bad)
    with pytest.raises(GoIPProtocolError):
        udp.notice_ack("ST ATE", "1")


def test_send_dialogue_packets_match_the_document_example():
    assert udp.msg_packet(11, "hello") == b"MSG 11 5 hello\n"
    assert udp.password_packet(11, "password1") == b"PASSWORD 11 password1\n"
    assert udp.send_packet(11, 1, "+8613800138000") == b"SEND 11 1 +8613800138000\n"
    assert udp.done_packet(11) == b"DONE 11\n"
    assert udp.ussd_packet(111, "password1", "557*0112220248*10#") == b"USSD 111 password1 557*0112220248*10#\n"
    assert udp.ussd_exit_packet(112, "password1") == b"USSDEXIT 112 password1\n"


def test_msg_length_units():
    text = "Привет 😀"
    utf8 = udp.msg_packet(1, text)
    assert utf8 == b"MSG 1 17 " + text.encode() + b"\n"  # 6*2 + 1 + 4 bytes
    utf16 = udp.msg_packet(1, text, udp.Dialect(length_unit="utf16"))
    assert utf16 == b"MSG 1 9 " + text.encode() + b"\n"  # 6 + 1 + a surrogate pair
    assert udp.text_length("hello", "utf16") == udp.text_length("hello") == 5


def test_msg_keeps_line_breaks_inside_the_length_prefixed_text():
    assert udp.msg_packet(2, "a\nb;c") == b"MSG 2 5 a\nb;c\n"


def test_text_limits():
    assert udp.msg_packet(1, "x" * 3000).startswith(b"MSG 1 3000 ")
    with pytest.raises(GoIPProtocolError, match="3002 bytes"):
        udp.msg_packet(1, "Ж" * 1501)
    for bad in ("", "a\x00b", "\ud800"):
        with pytest.raises(GoIPProtocolError):
            udp.msg_packet(1, bad)


@pytest.mark.parametrize("number", [
    "+7999\r\n1234", "123\n", "12 34", "", "abc", "+", "1" * 33, "12;34", "++12", None,
])
def test_numbers_that_could_break_a_packet_are_refused(number):
    with pytest.raises(GoIPProtocolError):
        udp.send_packet(1, 1, number)


def test_other_encoder_checks():
    for bad in (-1, 2**31, True, "5"):
        with pytest.raises(GoIPProtocolError):
            udp.done_packet(bad)
    for bad in ("two words", "", "a\nb", "é"):
        with pytest.raises(GoIPProtocolError):
            udp.password_packet(1, bad)
    for bad in ("*100# ", "*100#\n", "", "abc", "1" * 65):
        with pytest.raises(GoIPProtocolError):
            udp.ussd_packet(1, "pw", bad)
    with pytest.raises(GoIPProtocolError):
        udp.keepalive_ack(-1)
    with pytest.raises(GoIPProtocolError):
        udp.send_packet(1, -1, "123")


# ---------------------------------------------------------------------------------------
# The send session
# ---------------------------------------------------------------------------------------


def session(**kw):
    args = dict(resend_interval=3.0, answer_timeout=15.0, deadline=90.0)
    args.update(kw)
    return SendSession(11, "password1", "+8613800138000", "hello", **args)


def test_session_follows_the_document_example():
    s = session()
    assert s.start(0.0) == [b"MSG 11 5 hello\n"]
    assert s.next_timer == 3.0
    assert s.receive(PasswordPrompt(11), 0.5) == [b"PASSWORD 11 password1\n"]
    assert s.receive(SendPrompt(11), 0.6) == [b"SEND 11 1 +8613800138000\n"]
    assert s.outcome is None
    assert s.receive(SendOk(11, telid=1, sms_no="160"), 2.0) == [b"DONE 11\n"]
    assert s.outcome == SendOutcome(True, reason="sent", provider_id="160")
    assert not s.finished
    assert s.receive(DoneAnswer(11), 2.1) == []
    assert s.finished and s.next_timer is None


def test_session_repeats_send_after_wait_and_on_silence_until_ok():
    s = session()
    s.start(0.0)
    s.receive(PasswordPrompt(11), 0.1)
    s.receive(SendPrompt(11), 0.2)
    assert s.receive(SendWait(11, telid=1), 0.4) == []
    assert s.next_timer == pytest.approx(3.4)
    assert s.tick(3.0) == []  # too early
    assert s.tick(3.4) == [b"SEND 11 1 +8613800138000\n"]  # same telid: never sent twice
    # silence: repeated again
    assert s.tick(6.4) == [b"SEND 11 1 +8613800138000\n"]
    assert s.send_count == 3 and s.waits == 1
    s.receive(SendOk(11, telid=1, sms_no="161"), 7.0)
    assert s.outcome.ok and s.outcome.provider_id == "161"


def test_session_ok_without_sms_no():
    s = session()
    s.start(0)
    s.receive(PasswordPrompt(11), 0)
    s.receive(SendPrompt(11), 0)
    s.receive(SendOk(11, telid=1), 1)
    assert s.outcome.ok and s.outcome.provider_id is None


def test_answers_of_other_sessions_and_telids_are_ignored():
    s = session()
    s.start(0)
    assert s.receive(PasswordPrompt(12), 0.1) == []
    assert s.receive(Keepalive(count=1, goip_id="a", password="b"), 0.1) == []
    s.receive(PasswordPrompt(11), 0.2)
    s.receive(SendPrompt(11), 0.3)
    assert s.receive(SendOk(11, telid=2, sms_no="9"), 0.4) == []
    assert s.receive(ErrorAnswer(11, detail="2 errorstatus:1"), 0.4) == []
    assert s.outcome is None


def test_msg_refused_means_line_busy_retry_later():
    s = session()
    s.start(0)
    assert s.receive(ErrorAnswer(11, detail="too many request"), 0.3) == []
    assert s.finished
    o = s.outcome
    assert not o.ok and not o.permanent and not o.down and not o.maybe_sent
    assert "busy" in o.reason and "retry later" in o.reason and "too many request" in o.reason


def test_wrong_password_is_an_auth_failure_for_the_line():
    s = session()
    s.start(0)
    s.receive(PasswordPrompt(11), 0.1)
    assert s.receive(ErrorAnswer(11, detail="PASSWORD"), 0.2) == [b"DONE 11\n"]
    o = s.outcome
    assert not o.ok and o.auth_failed and o.down and not o.permanent and not o.maybe_sent
    assert "password1" not in o.reason


def test_send_error_is_a_failure_that_was_not_sent():
    s = session()
    s.start(0)
    s.receive(PasswordPrompt(11), 0.1)
    s.receive(SendPrompt(11), 0.2)
    assert s.receive(ErrorAnswer(11, detail="1 errorstatus:1"), 3) == [b"DONE 11\n"]
    o = s.outcome
    assert not o.ok and not o.permanent and not o.maybe_sent and "errorstatus:1" in o.reason


def test_undocumented_error_while_sending_may_have_sent():
    s = session()
    s.start(0)
    s.receive(PasswordPrompt(11), 0.1)
    s.receive(SendPrompt(11), 0.2)
    s.receive(ErrorAnswer(11, detail="no such session"), 3)
    assert s.outcome.maybe_sent and not s.outcome.ok


def test_silence_resends_msg_then_gives_up_as_down():
    s = session()
    sent = s.start(0.0)
    t = 0.0
    while s.outcome is None:
        t = s.next_timer
        sent += s.tick(t)
    assert sent.count(b"MSG 11 5 hello\n") == 5  # at 0, 3, 6, 9, 12
    assert t == 15.0
    assert sent[-1] == b"DONE 11\n"
    o = s.outcome
    assert o.down and not o.maybe_sent and not o.ok and "no answer" in o.reason


def test_deadline_while_sending_may_have_sent():
    s = session()
    s.start(0.0)
    s.receive(PasswordPrompt(11), 0.0)
    s.receive(SendPrompt(11), 0.0)
    sends = 1
    # The GoIP answers every SEND with WAIT half a second later, forever.
    assert s.receive(SendWait(11, telid=1), 0.5) == []
    while s.outcome is None:
        t = s.next_timer
        out = s.tick(t)
        if out == [b"SEND 11 1 +8613800138000\n"]:
            sends += 1
            assert s.receive(SendWait(11, telid=1), t + 0.5) == []
    assert s.outcome.maybe_sent and not s.outcome.ok and "may have been sent" in s.outcome.reason
    assert t == 90.0  # the document's 90 s after MSG
    assert sends == 26  # at 0, 3.5, 7, ... 87.5: every 3.5 s
    # DONE is repeated twice more on silence, then the session ends.
    dones = 1
    while not s.finished:
        dones += s.tick(s.next_timer).count(b"DONE 11\n")
    assert dones == 3


def test_repeated_password_prompt_is_answered_again():
    s = session()
    s.start(0)
    s.tick(3)  # MSG again
    assert s.receive(PasswordPrompt(11), 3.1) == [b"PASSWORD 11 password1\n"]
    assert s.receive(PasswordPrompt(11), 3.2) == [b"PASSWORD 11 password1\n"]
    assert s.receive(SendPrompt(11), 3.3) == [b"SEND 11 1 +8613800138000\n"]
    assert s.receive(SendPrompt(11), 3.4) == []  # a late duplicate: SEND is on our timer


def test_abort():
    s = session()
    s.start(0)
    s.receive(PasswordPrompt(11), 0)
    s.receive(SendPrompt(11), 0)
    assert s.abort(1, "cancelled") == [b"DONE 11\n"]
    assert s.finished and s.outcome.maybe_sent and s.outcome.reason.startswith("cancelled")
    s = session()
    assert s.abort(0, "stopped") == [] and s.outcome.reason == "stopped" and not s.outcome.maybe_sent


def test_session_refuses_bad_input_before_sending_anything():
    with pytest.raises(GoIPProtocolError):
        SendSession(1, "pw", "+1\r\nDONE 1", "hi")
    with pytest.raises(GoIPProtocolError):
        SendSession(1, "pw", "+123", "x" * 3001)
    with pytest.raises(GoIPProtocolError):
        SendSession(1, "pass word", "+123", "hi")


# ---------------------------------------------------------------------------------------
# USSD
# ---------------------------------------------------------------------------------------


def test_ussd_session_answer():
    u = UssdSession(111, "password1", "*100#", timeout=60)
    assert u.start(0) == [b"USSD 111 password1 *100#\n"]
    assert u.next_timer == 60
    u.receive(UssdReply(112, text="other"), 1)
    assert not u.finished
    u.receive(UssdReply(111, text="Balance 5.00"), 2)
    assert u.result == "Balance 5.00" and u.error is None and u.next_timer is None


@pytest.mark.parametrize("event, words", [
    (UssdFailed(111, message="network\nbusy"), "USSD failed: network busy"),
    (UssdExited(111), "ended"),
    (ErrorAnswer(111, detail="PASSWORD"), "password"),
    (ErrorAnswer(111, detail="line busy"), "line busy"),
])
def test_ussd_session_errors(event, words):
    u = UssdSession(111, "password1", "*100#")
    u.start(0)
    u.receive(event, 1)
    assert u.finished and u.result is None and words in u.error


def test_ussd_no_resend_by_default_then_timeout():
    u = UssdSession(111, "pw", "*100#", timeout=30)
    u.start(0)
    assert u.tick(10) == [] and not u.finished
    assert u.tick(30) == [] and "no USSD answer" in u.error


def test_ussd_resend_once_when_asked():
    u = UssdSession(111, "pw", "*100#", timeout=30, resend_after=10)
    u.start(0)
    assert u.next_timer == 10
    assert u.tick(10) == [b"USSD 111 pw *100#\n"]
    assert u.next_timer == 30
    assert u.tick(20) == []


def test_pure_modules_import_nothing_from_twisted():
    code = textwrap.dedent("""
        import sys
        import websmsd.goip.udp, websmsd.goip.outcome, websmsd.goip
        bad = sorted(m for m in sys.modules if m.split('.')[0] in ('twisted', 'treq'))
        print(bad)
        sys.exit(1 if bad else 0)
    """)
    from pathlib import Path
    root = Path(__file__).resolve().parent.parent
    result = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


# =======================================================================================
# The Twisted server
# =======================================================================================

from twisted.internet import defer, task  # noqa: E402
from twisted.logger import Logger, formatEvent  # noqa: E402

from websmsd.goip.outcome import UssdError  # noqa: E402
from websmsd.goip.udpserver import GoIPUDPServer  # noqa: E402

GOIP = ("192.0.2.10", 9991)
OTHER = ("192.0.2.99", 9991)


class FakeDatagramTransport:
    def __init__(self):
        self.written = []

    def write(self, data, addr):
        self.written.append((data, addr))

    def take(self):
        out, self.written = self.written, []
        return out


class Harness:
    def __init__(self, **kw):
        self.clock = task.Clock()
        self.clock.advance(1000)
        self.received = []
        self.reports = []
        self.store = []  # pending Deferreds of on_receive / on_report, in call order
        self.auto = True  # answer the callbacks at once
        self.events = []

        def on_receive(line, recvid, srcnum, text, key):
            self.received.append((line, recvid, srcnum, text, key))
            if self.auto:
                return defer.succeed(None)
            d = defer.Deferred()
            self.store.append(d)
            return d

        def on_report(line, sms_no, state, num):
            self.reports.append((line, sms_no, state, num))
            if self.auto:
                return None
            d = defer.Deferred()
            self.store.append(d)
            return d

        args = dict(clock=self.clock, on_receive=on_receive, on_report=on_report, sendid_start=500)
        args.update(kw)
        self.server = GoIPUDPServer({"sim1": ("goip01", "secret"), "sim2": ("goip02", "other")}, **args)
        self.server._log = Logger(namespace="test", observer=self.events.append)
        self.transport = FakeDatagramTransport()
        self.server.makeConnection(self.transport)

    def feed(self, data, addr=GOIP):
        if isinstance(data, str):
            data = data.encode()
        self.server.datagramReceived(data, addr)
        return self.transport.take()

    def register(self, goip_id="goip01", password="secret", addr=GOIP, gsm="LOGIN"):
        return self.feed(f"req:1;id:{goip_id};pass:{password};num:;signal:20;gsm_status:{gsm};", addr)

    def log_text(self):
        return "\n".join(formatEvent(e) + " " + repr(e) for e in self.events)


def test_keepalive_is_answered_and_recorded():
    h = Harness()
    assert h.server.line_status("sim1").registered is False
    out = h.feed(NODE_GOIP_KEEPALIVE.replace(b"gateway_name", b"goip01").replace(b"gateway_password", b"secret"))
    assert out == [(b"reg:27;status:200;", GOIP)]
    st = h.server.line_status("sim1")
    assert st.registered and st.since == 1000 and st.last_keepalive == 1000 and st.address == GOIP
    assert (st.signal, st.gsm_status, st.voip_status, st.sms_login, st.keepalives) == (29, "LOGIN", "LOGOUT", "N", 1)
    h.clock.advance(30)
    h.register()
    st = h.server.line_status("sim1")
    assert st.since == 1000 and st.last_keepalive == 1030 and st.keepalives == 2
    h.clock.advance(91)
    assert not h.server.line_status("sim1").registered
    h.register()
    assert h.server.line_status("sim1").since == 1121  # a new registration


def test_keepalive_ack_form_is_a_setting():
    h = Harness(dialect=udp.Dialect(ack_prefix="req", ack_status="0"))
    assert h.register() == [(b"req:1;status:0;", GOIP)]


def test_wrong_password_changes_nothing_and_is_counted_without_the_password():
    h = Harness()
    for packet in (
        "req:1;id:goip01;pass:guess;num:;signal:20;gsm_status:LOGIN;",
        "RECEIVE:5;id:goip01;password:guess;srcnum:1;msg:hi",
        "DELIVER:6;id:goip01;password:guess;sms_no:3;state:0;num:1",
        "STATE:7;id:goip01;password:guess;gsm_remain_state:IDLE",
        "req:1;id:goip01;pass:secre;",
        "req:1;id:goip01;pass:secret2;",
    ):
        assert h.feed(packet) == []
    st = h.server.line_status("sim1")
    assert st.bad_password == 6 and not st.registered and st.address is None
    assert h.server.totals["bad_password"] == 6
    assert h.received == [] and h.reports == []
    assert "guess" not in h.log_text() and "secret" not in h.log_text()
    assert "wrong password" in h.log_text()


def test_another_lines_password_is_wrong():
    h = Harness()
    assert h.register(goip_id="goip01", password="other") == []
    assert h.server.line_status("sim1").bad_password == 1


def test_unknown_ids_and_garbage_are_counted_and_dropped():
    h = Harness()
    assert h.feed("req:1;id:stranger;pass:x;") == []
    assert h.feed(b"\xff\x00garbage") == []
    assert h.feed(b"") == []
    assert h.feed(b"OK 77 1 5") == []  # an answer for no session
    assert h.server.totals["unknown_peer"] == 1
    assert h.server.totals["garbage"] == 2
    assert h.server.totals["unmatched_answer"] == 1


def test_garbage_logging_is_bounded():
    h = Harness()
    for _ in range(2500):
        h.feed(b"junk")
    assert h.server.totals["garbage"] == 2500
    assert len(h.events) == 12  # the first ten, then the 1000th and 2000th


def test_datagram_received_never_raises():
    h = Harness()

    def boom(*a):
        raise RuntimeError("bug")

    h.server._keepalive = boom
    h.register()  # logged, not raised
    assert "internal error" in h.log_text()
    h.server.datagramReceived(b"req:1;id:goip01;pass:secret;", None)  # a bad address


def test_receive_is_answered_only_after_it_is_stored():
    h = Harness()
    h.auto = False
    packet = NICELABS_RECEIVE.replace(b"goip-1", b"goip01").replace(b"password:goip", b"password:secret")
    assert h.feed(packet) == []
    (line, recvid, srcnum, text, key) = h.received[0]
    assert (line, recvid, srcnum, text) == ("sim1", "1571812849", "1380013800", "测试")
    assert key.startswith("goip:sim1:1571812849:")
    # Two retransmits while storing: not handed over again.
    assert h.feed(packet) == []
    assert h.feed(packet, ("192.0.2.10", 9992)) == []
    assert len(h.received) == 1
    h.store[0].callback(None)
    assert h.transport.take() == [
        (b"RECEIVE 1571812849 OK\n", GOIP), (b"RECEIVE 1571812849 OK\n", GOIP),
        (b"RECEIVE 1571812849 OK\n", ("192.0.2.10", 9992)),
    ]
    # A late copy (our answer lost): answered at once, not handed over again.
    assert h.feed(packet) == [(b"RECEIVE 1571812849 OK\n", GOIP)]
    assert len(h.received) == 1
    assert h.server.line_status("sim1").received == 1
    assert h.server.totals["duplicate"] == 3


def test_receive_not_stored_gets_no_answer_and_the_retransmit_is_stored():
    h = Harness()
    h.auto = False
    packet = b"RECEIVE:42;id:goip01;password:secret;srcnum:+358401234567;msg:Hello"
    h.feed(packet)
    h.store[0].errback(RuntimeError("disk full"))
    assert h.transport.take() == []
    assert "disk full" in h.server.line_status("sim1").last_error
    h.feed(packet)  # the GoIP resends after 3 s
    assert len(h.received) == 2 and h.received[0] == h.received[1]  # same dedupe key
    h.store[1].callback(None)
    assert h.transport.take() == [(b"RECEIVE 42 OK\n", GOIP)]


def test_receive_callback_raising_synchronously_is_not_acknowledged():
    h = Harness(on_receive=lambda *a: 1 / 0)
    h.server._log = Logger(namespace="test", observer=h.events.append)
    assert h.feed(b"RECEIVE:42;id:goip01;password:secret;srcnum:1;msg:x") == []
    assert "ZeroDivisionError" in h.log_text() or "division" in h.log_text()


def test_same_recvid_with_another_text_is_another_sms():
    h = Harness()
    h.feed(b"RECEIVE:42;id:goip01;password:secret;srcnum:1;msg:first")
    h.feed(b"RECEIVE:42;id:goip01;password:secret;srcnum:1;msg:second")
    assert [r[3] for r in h.received] == ["first", "second"]
    assert h.received[0][4] != h.received[1][4]


def test_same_text_twice_with_two_recvids_is_two_sms():
    h = Harness()
    h.feed(b"RECEIVE:42;id:goip01;password:secret;srcnum:1;msg:same")
    h.feed(b"RECEIVE:43;id:goip01;password:secret;srcnum:1;msg:same")
    assert len(h.received) == 2


def test_deliver_is_answered_after_the_report_is_stored():
    h = Harness()
    h.auto = False
    packet = b"DELIVER:1571812803;id:goip02;password:other;sms_no:32;state:0;num:+861380013800"
    assert h.feed(packet) == []
    assert h.feed(packet) == []
    assert h.reports == [("sim2", "32", "0", "+861380013800")]
    h.store[0].callback(None)
    assert h.transport.take() == [(b"DELIVER 1571812803 OK\n", GOIP)] * 2
    assert h.server.line_status("sim2").reports == 1


def test_other_kinds_are_answered_ok():
    h = Harness()
    assert h.feed(b"STATE:7568;id:goip01;password:secret;gsm_remain_state:IDLE") == [(b"STATE 7568 OK\n", GOIP)]
    assert h.feed(b"HANGUP:9;id:goip01;password:secret;num:1") == [(b"HANGUP 9 OK\n", GOIP)]


def test_constructor_checks():
    clock = task.Clock()
    kw = dict(clock=clock, on_receive=lambda *a: None, on_report=lambda *a: None)
    with pytest.raises(ValueError, match="same goip_id"):
        GoIPUDPServer({"a": ("g", "p"), "b": ("g", "q")}, **kw)
    with pytest.raises(ValueError, match="password"):
        GoIPUDPServer({"a": ("g", "two words")}, **kw)
    with pytest.raises(ValueError, match="goip_id"):
        GoIPUDPServer({"a": ("", "p")}, **kw)


# -- sending ----------------------------------------------------------------------------


def results(d):
    out = []
    d.addBoth(out.append)
    return out


def test_send_needs_a_registered_line():
    h = Harness()
    r = results(h.server.send("sim1", "+8613800138000", "hello"))
    assert r[0].down and not r[0].ok and "not registered" in r[0].reason
    assert h.transport.take() == []
    r = results(h.server.send("nope", "+1", "x"))
    assert r[0].down and "unknown" in r[0].reason


def test_send_to_a_line_gone_silent_or_logged_out():
    h = Harness()
    h.register()
    h.clock.advance(91)
    r = results(h.server.send("sim1", "+1", "x"))
    assert r[0].down and "no keepalive for 91 s" in r[0].reason
    h.register(gsm="LOGOUT")
    r = results(h.server.send("sim1", "+1", "x"))
    assert r[0].down and "GSM" in r[0].reason


def test_send_refuses_what_cannot_go_into_a_packet():
    h = Harness()
    h.register()
    r = results(h.server.send("sim1", "+7999\r\nDONE 1", "x"))
    assert r[0].permanent and not r[0].ok
    r = results(h.server.send("sim1", "+7999", "x" * 3001))
    assert r[0].permanent and "3001 bytes" in r[0].reason
    assert h.transport.take() == []


def test_send_dialogue_to_the_keepalive_address():
    h = Harness()
    h.register(addr=("192.0.2.10", 40001))
    addr = ("192.0.2.10", 40001)
    r = results(h.server.send("sim1", "+8613800138000", "hello"))
    assert h.transport.take() == [(b"MSG 500 5 hello\n", addr)]
    assert h.feed(b"PASSWORD 500", addr) == [(b"PASSWORD 500 secret\n", addr)]
    assert h.feed(b"SEND 500", addr) == [(b"SEND 500 1 +8613800138000\n", addr)]
    assert h.feed(b"WAIT 500 1", addr) == []
    h.clock.advance(3)
    assert h.transport.take() == [(b"SEND 500 1 +8613800138000\n", addr)]
    assert r == []
    assert h.feed(b"OK 500 1 160", addr) == [(b"DONE 500\n", addr)]
    assert r == [SendOutcome(True, reason="sent", provider_id="160")]
    assert h.feed(b"DONE 500", addr) == []
    assert h.server._dialogues == {}
    assert h.clock.getDelayedCalls() == []
    st = h.server.line_status("sim1")
    assert st.sent == 1 and st.failed == 0
    assert "secret" not in h.log_text() and "hello" not in h.log_text()


def test_answers_from_another_host_are_dropped():
    h = Harness()
    h.register()
    r = results(h.server.send("sim1", "+1234", "hi"))
    h.transport.take()
    assert h.feed(b"PASSWORD 500", OTHER) == []
    assert h.server.totals["unknown_peer"] == 1
    h.feed(b"PASSWORD 500")
    h.feed(b"SEND 500")
    assert h.feed(b"OK 500 1 9", OTHER) == [] and r == []


def test_sends_on_one_line_go_one_at_a_time_with_unique_sendids():
    h = Harness()
    h.register()
    h.register(goip_id="goip02", password="other", addr=OTHER)
    r1 = results(h.server.send("sim1", "+1", "one"))
    r2 = results(h.server.send("sim1", "+2", "two"))
    r3 = results(h.server.send("sim2", "+3", "three"))  # another line: not queued
    assert h.transport.take() == [(b"MSG 500 3 one\n", GOIP), (b"MSG 501 5 three\n", OTHER)]
    h.feed(b"PASSWORD 500")
    h.feed(b"SEND 500")
    assert h.feed(b"OK 500 1 7") == [(b"DONE 500\n", GOIP), (b"MSG 502 3 two\n", GOIP)]
    assert r1[0].ok and r2 == [] and r3 == []
    h.feed(b"PASSWORD 502")
    h.feed(b"SEND 502")
    h.feed(b"ERROR 502 1 errorstatus:1")
    assert not r2[0].ok and "errorstatus:1" in r2[0].reason and not r2[0].maybe_sent
    assert h.server.line_status("sim1").last_error == r2[0].reason


def test_silent_line_gives_up_as_down_and_frees_the_line():
    h = Harness()
    h.register()
    r = results(h.server.send("sim1", "+1", "x"))
    h.transport.take()
    for _ in range(5):
        h.clock.advance(3)
    out = h.transport.take()
    assert out.count((b"MSG 500 1 x\n", GOIP)) == 4 and out[-1] == (b"DONE 500\n", GOIP)
    assert r[0].down and "no answer" in r[0].reason
    for _ in range(3):
        h.clock.advance(3)
    assert h.transport.take() == [(b"DONE 500\n", GOIP)] * 2
    assert h.server._dialogues == {} and h.clock.getDelayedCalls() == []


def test_bad_password_outcome():
    h = Harness()
    h.register()
    r = results(h.server.send("sim1", "+1", "x"))
    h.feed(b"PASSWORD 500")
    assert h.feed(b"ERROR 500 PASSWORD") == [(b"DONE 500\n", GOIP)]
    assert r[0].auth_failed and r[0].down


def test_busy_goip_refuses_the_session():
    h = Harness()
    h.register()
    r = results(h.server.send("sim1", "+1", "x"))
    assert h.transport.take() == [(b"MSG 500 1 x\n", GOIP)]
    assert h.feed(b"ERROR 500 too many request") == []
    assert "busy" in r[0].reason and not r[0].down and not r[0].permanent
    assert h.server._dialogues == {}


def test_cancelling_a_send_ends_the_session_and_frees_the_line():
    h = Harness()
    h.register()
    d = h.server.send("sim1", "+1", "x")
    r2 = results(h.server.send("sim1", "+2", "y"))
    h.feed(b"PASSWORD 500")
    h.feed(b"SEND 500")
    r = results(d)
    d.cancel()
    assert isinstance(r[0].value, defer.CancelledError)
    assert h.transport.take() == [(b"DONE 500\n", GOIP), (b"MSG 501 1 y\n", GOIP)]
    assert r2 == []


def test_cancelling_a_queued_send_sends_nothing():
    h = Harness()
    h.register()
    results(h.server.send("sim1", "+1", "x"))
    d = h.server.send("sim1", "+2", "y")
    r = results(d)
    d.cancel()
    assert isinstance(r[0].value, defer.CancelledError)
    h.feed(b"PASSWORD 500")
    h.feed(b"SEND 500")
    h.transport.take()
    assert h.feed(b"OK 500 1 1") == [(b"DONE 500\n", GOIP)]  # nothing queued after it


def test_stopping_answers_running_sends():
    h = Harness()
    h.register()
    r = results(h.server.send("sim1", "+1", "x"))
    h.feed(b"PASSWORD 500")
    h.feed(b"SEND 500")
    h.server.doStop()
    assert r[0].maybe_sent and "stopped" in r[0].reason
    assert h.clock.getDelayedCalls() == []


def test_sendids_wrap_and_skip_running_ones():
    h = Harness(sendid_start=udp.MAX_SENDID)
    h.register()
    h.register(goip_id="goip02", password="other", addr=OTHER)
    results(h.server.send("sim1", "+1", "a"))
    results(h.server.send("sim2", "+1", "b"))
    assert [p for p, _ in h.transport.take()] == [b"MSG 2147483647 1 a\n", b"MSG 1 1 b\n"]


# -- USSD ---------------------------------------------------------------------------------


def test_ussd_answer():
    h = Harness()
    h.register()
    r = results(h.server.ussd("sim1", "*100#"))
    assert h.transport.take() == [(b"USSD 500 secret *100#\n", GOIP)]
    h.feed("USSD 500 Balance: 57.20 руб.".encode())
    assert r == ["Balance: 57.20 руб."]
    assert h.server._dialogues == {} and h.clock.getDelayedCalls() == []


def test_ussd_errors():
    h = Harness(ussd_timeout=30)
    h.register()
    r = results(h.server.ussd("sim1", "*100#"))
    h.feed(b"USSDERROR 500 network error")
    assert isinstance(r[0].value, UssdError) and "network error" in str(r[0].value)
    r = results(h.server.ussd("sim1", "*100#"))
    h.clock.advance(30)
    assert "no USSD answer" in str(r[0].value)
    r = results(h.server.ussd("sim1", "*100# ; reboot"))
    assert isinstance(r[0].value, UssdError)
    r = results(h.server.ussd("sim9", "*100#"))
    assert "unknown" in str(r[0].value)


def test_ussd_waits_for_the_lines_send():
    h = Harness()
    h.register()
    results(h.server.send("sim1", "+1", "x"))
    r = results(h.server.ussd("sim1", "*100#"))
    h.transport.take()
    h.feed(b"PASSWORD 500")
    h.feed(b"SEND 500")
    assert h.feed(b"OK 500 1 1") == [(b"DONE 500\n", GOIP), (b"USSD 501 secret *100#\n", GOIP)]
    assert r == []


# =======================================================================================
# Real sockets: websmsd's server in a subprocess, the fake GoIP line in this process
# =======================================================================================

DRIVER = r'''
import json, sys
sys.path.insert(0, sys.argv[1])
from twisted.internet import reactor, stdio
from twisted.protocols.basic import LineReceiver
from websmsd.goip.udpserver import GoIPUDPServer

def out(**kw):
    sys.stdout.write(json.dumps(kw) + "\n"); sys.stdout.flush()

def on_receive(line, recvid, srcnum, text, key):
    out(event="receive", line=line, recvid=recvid, srcnum=srcnum, text=text, key=key)

def on_report(line, sms_no, state, num):
    out(event="report", line=line, sms_no=sms_no, state=state, num=num)

server = GoIPUDPServer({"sim1": ("goip01", "secret")}, clock=reactor, on_receive=on_receive,
                       on_report=on_report, resend_interval=0.2)

class Commands(LineReceiver):
    delimiter = b"\n"
    def lineReceived(self, line):
        cmd = json.loads(line)
        if cmd["op"] == "send":
            d = server.send("sim1", cmd["number"], cmd["text"])
            d.addCallback(lambda o: out(event="outcome", ok=o.ok, reason=o.reason, provider_id=o.provider_id))
        elif cmd["op"] == "ussd":
            d = server.ussd("sim1", cmd["code"])
            d.addBoth(lambda r: out(event="ussd", result=str(getattr(r, "value", r))))
        elif cmd["op"] == "status":
            s = server.line_status("sim1")
            out(event="status", registered=s.registered, signal=s.signal, received=s.received)
        elif cmd["op"] == "stop":
            reactor.stop()

port = reactor.listenUDP(0, server, interface="127.0.0.1", maxPacketSize=65535)
stdio.StandardIO(Commands())
out(event="port", port=port.getHost().port)
reactor.run()
'''


class Driver:
    def __init__(self):
        import json
        from pathlib import Path

        self.json = json
        root = Path(__file__).resolve().parent.parent
        self.proc = subprocess.Popen(
            [sys.executable, "-c", DRIVER, str(root)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, text=True,
        )
        self.port = self.expect("port")["port"]

    def expect(self, event, timeout=15.0):
        import selectors
        sel = selectors.DefaultSelector()
        sel.register(self.proc.stdout, selectors.EVENT_READ)
        import time
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if sel.select(timeout=deadline - time.monotonic()):
                line = self.proc.stdout.readline()
                if not line:
                    break
                msg = self.json.loads(line)
                if msg["event"] == event:
                    return msg
        raise AssertionError(f"no {event} from the driver; stderr: {self.proc.stderr.read() if self.proc.poll() is not None else ''}")

    def command(self, **kw):
        self.proc.stdin.write(self.json.dumps(kw) + "\n")
        self.proc.stdin.flush()

    def close(self):
        if self.proc.poll() is None:
            self.command(op="stop")
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture
def driver():
    d = Driver()
    yield d
    d.close()


def test_real_udp_with_a_fake_goip_line(driver):
    from goippeer import FakeGoIPLine

    dropped = []

    def lose_first_receive_ack(data):
        if data.startswith(b"RECEIVE") and not dropped:
            dropped.append(data)
            return True
        return False

    with FakeGoIPLine(("127.0.0.1", driver.port), "goip01", "secret", resend_interval=0.3,
                      waits=2, ussd_answers={"*100#": "Balance 5.00; ok"},
                      drop=lose_first_receive_ack) as goip:
        goip.keepalive()
        assert goip.wait_for(lambda: goip.keepalive_acks) == [b"reg:1;status:200;"]
        driver.command(op="status")
        assert driver.expect("status")["registered"] is True

        # An incoming SMS whose first answer is lost: resent, stored once, answered.
        recvid = goip.sms("+358401234567", "Hei; maailma: ä 😀")
        got = driver.expect("receive")
        assert (got["line"], got["recvid"], got["srcnum"], got["text"]) == (
            "sim1", recvid, "+358401234567", "Hei; maailma: ä 😀")
        assert goip.wait_acked("RECEIVE", recvid)
        assert dropped  # the first answer was lost and the GoIP resent

        # Sending, with WAIT answers: the SMS goes out once.
        driver.command(op="send", number="+8613800138000", text="Привет, мир")
        outcome = driver.expect("outcome")
        assert outcome["ok"] is True and outcome["provider_id"] == "100"
        sent = goip.wait_sent(1)
        assert sent == [{"number": "+8613800138000", "text": "Привет, мир", "sms_no": 100,
                         "sendid": sent[0]["sendid"], "telid": 1}]
        assert goip.length_mismatches == []
        assert goip.wait_for(lambda: sent[0]["sendid"] in goip.closed_sessions)

        # A delivery report for it.
        recvid = goip.report("100", "0", "+8613800138000")
        assert driver.expect("report")["sms_no"] == "100"
        assert goip.wait_acked("DELIVER", recvid)

        driver.command(op="ussd", code="*100#")
        assert driver.expect("ussd")["result"] == "Balance 5.00; ok"


def test_fake_goip_line_resends_three_times_then_gives_up():
    # The fake keeps the document's promise: no answer -> resent every resend_interval,
    # at most 3 times.  Checked with a bare socket standing in for the server.
    import socket
    from goippeer import FakeGoIPLine

    server = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    server.bind(("127.0.0.1", 0))
    server.settimeout(5)
    try:
        with FakeGoIPLine(server.getsockname(), "goip01", "secret", resend_interval=0.05) as goip:
            recvid = goip.sms("+1555", "hello;there")
            copies = [server.recvfrom(2048)[0] for _ in range(4)]
            assert copies == [f"RECEIVE:{recvid};id:goip01;password:secret;srcnum:+1555;msg:hello;there".encode()] * 4
            assert goip.wait_for(lambda: goip.sends_of("RECEIVE", recvid) == 0)
            server.settimeout(0.3)
            with pytest.raises(socket.timeout):
                server.recvfrom(2048)  # no fifth copy
            # An answer stops the resending at once.
            recvid = goip.report("160")
            data, addr = server.recvfrom(2048)
            server.sendto(f"DELIVER {recvid} OK\n".encode(), addr)
            assert goip.wait_acked("DELIVER", recvid)
            assert goip.sends_of("DELIVER", recvid) == 0
    finally:
        server.close()
