"""websmsd.ami.protocol: the sans-IO AMI parser, encoder and correlation.

Asterisk's side comes from fixtures/asterisk/ami_transcripts.json (a real Asterisk
22.10.1); the Yeastar TG's framings are written byte for byte from
shared/goip-yeastar.md.
"""

from __future__ import annotations

import base64
import json
import random
import subprocess
import sys
from pathlib import Path

import pytest

from websmsd.ami.protocol import (
    MAX_ACTION_LINE,
    MAX_ACTION_LINES,
    MESSAGE_SEND_MAX_BODY_BYTES,
    ActionDone,
    AMIEncodeError,
    AMIParser,
    AMISession,
    Banner,
    Packet,
    ParseError,
    Stray,
    Unsolicited,
    encode_action,
    message_send,
)

_HERE = Path(__file__).resolve().parent
TRANSCRIPTS = json.loads((_HERE / "fixtures" / "asterisk" / "ami_transcripts.json").read_text())


def server_chunks(name):
    return [e["data"].encode("utf-8") for e in TRANSCRIPTS[name]
            if e["dir"] == "asterisk->client" and "data" in e]


def client_chunks(name):
    return [e["data"].encode("utf-8") for e in TRANSCRIPTS[name]
            if e["dir"] == "client->asterisk" and "data" in e]


def feed_all(chunks, parser=None):
    parser = parser or AMIParser()
    events = []
    for c in chunks:
        events += parser.feed(c)
    return events


def feed_bytewise(data, parser=None):
    parser = parser or AMIParser()
    events = []
    for i in range(len(data)):
        events += parser.feed(data[i:i + 1])
    return events


def packets(events):
    return [e for e in events if isinstance(e, Packet)]


# ------------------------------------------------------------------- purity


def test_module_imports_no_twisted():
    code = ("import sys, websmsd.ami.protocol\n"
            "print(sorted(m for m in sys.modules if m.startswith('twisted')))")
    out = subprocess.run([sys.executable, "-c", code], cwd=str(_HERE.parent),
                         capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


# ------------------------------------------------------------------- Asterisk 22 fixture


@pytest.mark.parametrize("name", ["login_failure", "session"])
def test_fixture_whole_chunks_and_byte_by_byte_give_the_same_events(name):
    chunks = server_chunks(name)
    whole = feed_all(chunks)
    joined = b"".join(chunks)
    assert feed_all([joined]) == whole
    assert feed_bytewise(joined) == whole
    assert not any(isinstance(e, ParseError) for e in whole)
    # Independently: the banner line, then one packet per CRLF CRLF terminator.
    assert whole[0] == Banner("Asterisk Call Manager/11.0.0")
    assert len(packets(whole)) == joined.count(b"\r\n\r\n")


@pytest.mark.parametrize("seed", range(20))
def test_fixture_session_in_random_chunks(seed):
    joined = b"".join(server_chunks("session"))
    rnd = random.Random(seed)
    cuts = sorted(rnd.sample(range(1, len(joined)), 60))
    pieces = [joined[a:b] for a, b in zip([0] + cuts, cuts + [len(joined)])]
    assert feed_all(pieces) == feed_all([joined])


def test_fixture_login_failure():
    ev = feed_all(server_chunks("login_failure"))
    (p,) = packets(ev)
    assert p.response == "Error"
    assert p.action_id == "1"
    assert p.get("message") == "Authentication failed"


def test_fixture_session_contents():
    ps = packets(feed_all(server_chunks("session")))
    login, booted, auth, ping = ps[:4]
    assert (login.response, login.get("Message")) == ("Success", "Authentication accepted")
    assert booted.is_event and booted.event == "FullyBooted"
    assert booted.get("Status") == "Fully Booted"
    assert auth.event == "SuccessfulAuth" and auth.get("ACCOUNTID") == "admin"
    assert ping.get("Ping") == "Pong" and ping.action_id == "2"

    version = next(p for p in ps if p.action_id == "3")
    assert version.command_output().startswith("Asterisk 22.10.1 built by root")
    assert version.output is None  # Asterisk 14+ framing: Output: headers

    endpoints = next(p for p in ps if p.action_id == "4")
    lines = endpoints.get_all("Output")
    raw = next(c for c in server_chunks("session") if b"ActionID: 4\r\n" in c)
    assert len(lines) == raw.count(b"\r\nOutput:") == 23
    assert lines[0] == ""  # "Output: \r\n": the empty first CLI line
    # One space after the colon is the separator; the CLI's own indentation stays.
    assert lines[1] == " Endpoint:  <Endpoint/CID.....................................>  <State.....>  <Channels.>"
    assert lines[-2] == "Objects found: 2"
    assert endpoints.get("Output") == ""  # get() gives the first
    assert "alice/sip:alice@127.0.0.1:5062" in endpoints.command_output()

    unknown = next(p for p in ps if p.action_id == "5")
    assert unknown.response == "Error"
    assert unknown.command_output() == ("No such command 'no such cli command' "
                                        "(type 'core show help no such' for other possible commands)")

    sends = {p.action_id: p for p in ps if p.action_id in ("6", "7", "8", "9")}
    assert [sends[i].get("Message") for i in "6789"] == [
        "Message successfully sent"] * 3 + ["Message failed to send."]

    events = [p for p in ps if p.is_event]
    names = {p.event for p in events}
    assert {"Newchannel", "VarSet", "Hangup", "DeviceStateChange"} <= names
    varsets = [p for p in events if p.event == "VarSet"]
    assert ("MESSAGE_ENCODE", "rfc3986") in [(p.get("Variable"), p.get("Value")) for p in varsets]
    newchan = next(p for p in events if p.event == "Newchannel")
    assert newchan.get("AccountCode") == ""
    assert newchan.get("Channel") == "Local/+15015550199@dp_entry_answer-00000022;1"

    goodbye = ps[-1]
    assert (goodbye.response, goodbye.get("Message")) == ("Goodbye", "Thanks for all the fish.")


def test_fixture_client_actions_are_what_encode_action_writes():
    sent = client_chunks("session")
    assert encode_action("Login", [("Username", "admin"), ("Secret", "adminsecret"),
                                   ("Events", "on")], "1") == sent[0]
    assert encode_action("Ping", [], "2") == sent[1]
    assert encode_action("Command", [("Command", "core show version")], "3") == sent[2]
    assert encode_action("MessageSend", [("To", "pjsip:bob"), ("From", "+15015550100"),
                                         ("Body", 'Hello via AMI, "quoted" Привет 😀')],
                         "6") == sent[5]
    fields = message_send("pjsip:bob", '"Alice Out" <sip:+15015550100@127.0.0.1>',
                          "line one\nline two 😀".encode())
    assert encode_action("MessageSend", fields, "7") == sent[6]
    assert encode_action("Logoff", (), "10") == sent[-1]
    # The base64 body bob received is the text we meant.
    assert TRANSCRIPTS["messagesend_base64body_bob_received"][0]["body"] == "line one\nline two 😀"


# ------------------------------------------------------------------- Yeastar TG framings

TG_BANNER = b"Asterisk Call Manager/1.1\r\n"
TG_LOGIN_OK = b"Response: Success\r\nMessage: Authentication accepted\r\n\r\n"
TG_SPANS = (b"Response: Follows\r\nPrivilege: SMSCommand\r\nActionID: 7\r\n"
            b"GSM span 2: Power on, Provisioned, Up, Active,Standard\n"
            b"GSM span 3: Power on, Provisioned, Undetected SIM Card, Active,Standard\n"
            b"--END COMMAND--\r\n\r\n")
TG_GLUED = (b"Response: Follows\r\nPrivilege: SMSCommand\r\n"
            b"Last send AT: AT+CREG?\\r\\n--END COMMAND--\r\n\r\n")
TG_EMPTY = b"Response: Follows\r\nPrivilege: SMSCommand\r\nActionID: 8\r\n--END COMMAND--\r\n\r\n"
TG_USSD = (b"Response: Follows\r\nPrivilege: SMSCommand\r\n"
           b"1:Received USSD success on span: 2\n\tUSSD Responses: 0\n\tUSSD Code: 72\n"
           b"\tUSSD Len: 276\n\tUSSD Message: 6B228FCE4F7F\n--END COMMAND--\r\n\r\n")
TG_RECEIVED = (b"Event: ReceivedSMS\r\nPrivilege: all,smscommand\r\nID: \r\nGsmSpan: 3\r\n"
               b"Sender: +79991234567\r\nRecvtime: 2025-03-06 06:12:09\r\nIndex: 0\r\n"
               b"Total: 1\r\nSmsc: +79000000000\r\n"
               b"Content: %EF%BB%BF%D0%9F%D1%80%D0%B8%D0%B2%D0%B5%D1%82+%D0%BC%D0%B8%D1%80\r\n"
               b"--END SMS EVENT--\r\n\r\n")
TG_UPDATE = (b"Event: UpdateSMSSend\r\nPrivilege: all,smscommand\r\nID: 1234\r\n"
             b"Smsc: +79000000000\r\nStatus: 1\r\n--END SMS EVENT--\r\n\r\n")
TG_STREAM = TG_BANNER + TG_LOGIN_OK + TG_SPANS + TG_RECEIVED + TG_GLUED + TG_UPDATE + TG_EMPTY + TG_USSD


def test_tg_stream_whole_and_byte_by_byte():
    whole = feed_all([TG_STREAM])
    assert feed_bytewise(TG_STREAM) == whole
    assert whole[0] == Banner("Asterisk Call Manager/1.1")
    login, spans, received, glued, update, empty, ussd = packets(whole)
    assert len(whole) == 8

    assert (login.response, login.get("Message")) == ("Success", "Authentication accepted")

    assert spans.response == "Follows" and spans.action_id == "7"
    assert spans.get("Privilege") == "SMSCommand"
    assert spans.output == ("GSM span 2: Power on, Provisioned, Up, Active,Standard\n"
                            "GSM span 3: Power on, Provisioned, Undetected SIM Card, Active,Standard\n")
    assert spans.command_output() == spans.output
    assert spans.get("GSM span 2") is None  # output lines are never taken for headers

    assert glued.output == "Last send AT: AT+CREG?\\r\\n"
    assert glued.get("Last send AT") is None
    assert empty.output == "" and empty.action_id == "8"
    assert ussd.output.splitlines()[0] == "1:Received USSD success on span: 2"
    assert "\tUSSD Message: 6B228FCE4F7F" in ussd.output.splitlines()

    assert received.event == "ReceivedSMS"
    assert received.get("ID") == ""
    assert received.get("gsmspan") == "3"
    assert received.get("Content").startswith("%EF%BB%BF%D0%9F")
    assert received.bare_lines == ("--END SMS EVENT--",)
    assert update.event == "UpdateSMSSend" and update.get("Status") == "1"
    assert update.bare_lines == ("--END SMS EVENT--",)


def test_follows_output_glued_to_a_multi_line_output():
    data = (b"Response: Follows\r\nPrivilege: Command\r\nline one\nno newline at the end"
            b"--END COMMAND--\r\n\r\nEvent: X\r\n\r\n")
    ps = packets(feed_bytewise(data, AMIParser(expect_banner=False)))
    assert ps[0].output == "line one\nno newline at the end"
    assert ps[1].event == "X"


def test_follows_output_with_crlf_lines_and_colons_after_the_head():
    # Once output started, every line is output, even one that looks like a header.
    data = (b"Response: Follows\r\nPrivilege: Command\r\nplain output\nName: not a header\r\n"
            b"--END COMMAND--\r\n\r\n")
    (p,) = packets(feed_all([data], AMIParser(expect_banner=False)))
    assert p.output == "plain output\nName: not a header\r\n"
    assert p.fields == (("Response", "Follows"), ("Privilege", "Command"))


def test_follows_then_blank_line_is_an_ordinary_packet():
    data = b"Response: Follows\r\nPrivilege: Command\r\n\r\nEvent: Next\r\n\r\n"
    ps = packets(feed_all([data], AMIParser(expect_banner=False)))
    assert ps[0].output == "" and ps[0].response == "Follows"
    assert ps[1].event == "Next"


def test_follows_in_a_later_header_is_not_the_follows_framing():
    data = b"Event: Odd\r\nResponse: Follows\r\n\r\n"
    (p,) = packets(feed_all([data], AMIParser(expect_banner=False)))
    assert p.output is None and p.event == "Odd"


# ------------------------------------------------------------------- framing details


def test_bare_lf_line_ends_and_mixed():
    data = b"Banner\nResponse: Success\nActionID: 1\r\nMessage: ok\n\nEvent: E\r\nA: b\n\r\n"
    ev = feed_all([data])
    assert ev[0] == Banner("Banner")
    p1, p2 = packets(ev)
    assert p1.fields == (("Response", "Success"), ("ActionID", "1"), ("Message", "ok"))
    assert p2.fields == (("Event", "E"), ("A", "b"))


def test_values_keep_all_but_one_separating_space():
    ev = feed_all([b"Response: Success\r\nA:no space\r\nB:  two\r\nC: trailing \r\n"
                   b"D: a: b\r\nE:\r\n\r\n"], AMIParser(expect_banner=False))
    (p,) = packets(ev)
    assert p.get("A") == "no space"
    assert p.get("B") == " two"
    assert p.get("C") == "trailing "
    assert p.get("D") == "a: b"
    assert p.get("E") == ""
    assert p.get("missing") is None and p.get("missing", "x") == "x"
    assert "a" in p and "missing" not in p


def test_repeated_names_are_all_kept_in_order_case_insensitively():
    data = (b"Event: VarSet\r\nChanVariable: A=1\r\nchanvariable: B=2\r\nCHANVARIABLE: C=3\r\n\r\n")
    (p,) = packets(feed_all([data], AMIParser(expect_banner=False)))
    assert p.get_all("ChanVariable") == ["A=1", "B=2", "C=3"]
    assert p.get("chanVARIABLE") == "A=1"


def test_blank_lines_between_packets_make_no_packet():
    data = b"Banner\r\n\r\n\r\n\nEvent: A\r\n\r\n\r\n\r\nEvent: B\r\n\r\n"
    assert [p.event for p in packets(feed_all([data]))] == ["A", "B"]


def test_banner_then_packet_in_one_read_and_no_blank_line_after_banner():
    ev = AMIParser().feed(b"Asterisk Call Manager/1.1\r\nResponse: Success\r\n\r\n")
    assert ev == [Banner("Asterisk Call Manager/1.1"), Packet((("Response", "Success"),))]


def test_split_utf8_survives_every_cut():
    data = "Event: Msg\r\nBody: Привет 😀 ok\r\n\r\n".encode()
    for cut in range(1, len(data)):
        p = AMIParser(expect_banner=False)
        ev = p.feed(data[:cut]) + p.feed(data[cut:])
        (pk,) = packets(ev)
        assert pk.get("Body") == "Привет 😀 ok"


def test_split_utf8_in_follows_output():
    data = "Response: Follows\r\nPrivilege: Command\r\nСпан 😀\n--END COMMAND--\r\n\r\n".encode()
    (p,) = packets(feed_bytewise(data, AMIParser(expect_banner=False)))
    assert p.output == "Спан 😀\n"


def test_invalid_utf8_is_replaced_never_raised():
    ev = feed_all([b"\xff\xfeBanner\r\nEvent: X\r\nBody: a\xc3b\xf0\x9f\r\n\xc3\x28: v\r\n\r\n"])
    assert ev[0] == Banner("\ufffd\ufffdBanner")
    (p,) = packets(ev)
    assert p.get("Body") == "a\ufffdb\ufffd"
    assert p.fields[2][0] == "\ufffd("


def test_oversize_line_without_newline_is_one_error_then_silence():
    p = AMIParser(max_packet=1000)
    assert p.feed(b"Banner\r\n") == [Banner("Banner")]
    assert p.feed(b"A" * 1000) == []
    assert p.feed(b"A") == [ParseError("a line of over 1000 bytes without a newline")]
    assert p.failed
    assert p.feed(b"\r\nEvent: X\r\n\r\n") == []
    assert len(p._buf) == 0  # nothing kept after the error


def test_oversize_packet_of_short_lines_is_an_error():
    p = AMIParser(max_packet=1000, expect_banner=False)
    ev = []
    for i in range(200):
        ev += p.feed(b"Header: value\r\n")
    assert [type(e) for e in ev] == [ParseError]
    assert "packet" in ev[0].reason


def test_oversize_follows_output_is_an_error():
    p = AMIParser(max_packet=1000, expect_banner=False)
    ev = p.feed(b"Response: Follows\r\nPrivilege: Command\r\n")
    for _ in range(100):
        ev += p.feed(b"output line of some length\n")
    assert [type(e) for e in ev] == [ParseError]


def test_packet_at_the_cap_is_fine():
    body = b"Event: X\r\nA: " + b"x" * 100 + b"\r\n\r\n"
    p = AMIParser(max_packet=len(body), expect_banner=False)
    assert packets(p.feed(body))[0].get("A") == "x" * 100
    assert not p.failed


def test_oversize_banner_is_an_error():
    p = AMIParser(max_packet=100)
    assert p.feed(b"B" * 101) == [ParseError("a line of over 100 bytes without a newline")]


@pytest.mark.parametrize("seed", range(30))
def test_garbage_never_raises_and_stays_bounded(seed):
    rnd = random.Random(seed)
    alphabet = b"ab:\r\n \x00\xff\xc3--END COMMAND--Response: Follows\r\n"
    p = AMIParser(max_packet=4096)
    for _ in range(300):
        chunk = bytes(rnd.choice(alphabet) for _ in range(rnd.randint(0, 64)))
        for e in p.feed(chunk):
            assert isinstance(e, (Banner, Packet, ParseError))
        assert len(p._buf) <= 4096 + 64
        assert p._packet_size <= 4096


def test_feed_empty_bytes():
    p = AMIParser()
    assert p.feed(b"") == []
    assert not p.in_packet
    p.feed(b"Banner\r\nEvent: X\r\n")
    assert p.in_packet


# ------------------------------------------------------------------- encoder


def test_encode_action_layout():
    assert encode_action("Ping") == b"Action: Ping\r\n\r\n"
    assert encode_action("smscommand", [("command", 'gsm send sms 2 123 "a%20b" 5')], "x1") == (
        b"Action: smscommand\r\nActionID: x1\r\ncommand: gsm send sms 2 123 \"a%20b\" 5\r\n\r\n")
    assert encode_action("Originate", [("Variable", "A=1"), ("Variable", "B=2")], "1") == (
        b"Action: Originate\r\nActionID: 1\r\nVariable: A=1\r\nVariable: B=2\r\n\r\n")


@pytest.mark.parametrize("bad", ["a\rb", "a\nb", "a\r\nAction: Originate", "nul\x00", "\n"])
def test_encode_refuses_cr_lf_nul_in_values(bad):
    with pytest.raises(AMIEncodeError, match="CR, LF or NUL"):
        encode_action("MessageSend", [("From", bad)])
    with pytest.raises(AMIEncodeError):
        encode_action("Ping", [], bad)


@pytest.mark.parametrize("bad", ["", "Na me", "Na:me", "Na\nme", "Na\rme", " Name", None, 5])
def test_encode_refuses_bad_names(bad):
    with pytest.raises(AMIEncodeError):
        encode_action("Ping", [(bad, "v")])
    with pytest.raises(AMIEncodeError):
        encode_action(bad, [])


def test_encode_refuses_non_string_values_and_bad_pairs():
    with pytest.raises(AMIEncodeError):
        encode_action("Ping", [("A", 1)])
    with pytest.raises(AMIEncodeError):
        encode_action("Ping", [("A",)])
    with pytest.raises(AMIEncodeError):
        encode_action("Ping", ["AB"])
    with pytest.raises(AMIEncodeError, match="surrogate"):
        encode_action("Ping", [("A", "\ud800")])


@pytest.mark.parametrize("name", ["Action", "actionid", "ACTIONID"])
def test_encode_refuses_action_and_actionid_as_fields(name):
    with pytest.raises(AMIEncodeError):
        encode_action("Ping", [(name, "x")])


def test_line_limit_is_1024_bytes_with_crlf():
    ok = "x" * (MAX_ACTION_LINE - len("Body: \r\n"))
    assert max(len(line) + 2 for line in encode_action("M", [("Body", ok)]).split(b"\r\n")) == 1024
    with pytest.raises(AMIEncodeError, match="1025 bytes"):
        encode_action("M", [("Body", ok + "x")])
    # Bytes, not characters.
    with pytest.raises(AMIEncodeError):
        encode_action("M", [("Body", "я" * 510)])


def test_line_count_limit():
    fields = [("Variable", f"V{i}=1") for i in range(MAX_ACTION_LINES - 2)]
    encode_action("Originate", fields, "1")
    with pytest.raises(AMIEncodeError, match="lines"):
        encode_action("Originate", fields + [("Variable", "x=1")], "1")


def test_message_send_fields_and_756_byte_limit():
    assert MESSAGE_SEND_MAX_BODY_BYTES == 756
    body = "ж".encode() * 378  # 756 bytes
    fields = message_send("pjsip:alice", "+15015550100", body)
    assert [n for n, _ in fields] == ["To", "From", "Base64Body"]
    assert base64.b64decode(fields[2][1]) == body
    data = encode_action("MessageSend", fields, "123")
    assert max(len(line) + 2 for line in data.split(b"\r\n")) == 1022
    with pytest.raises(AMIEncodeError, match="756"):
        message_send("pjsip:alice", "+1", body + b"x")
    with pytest.raises(AMIEncodeError, match="empty"):
        message_send("pjsip:alice", "+1", b"")
    with pytest.raises(AMIEncodeError):
        message_send("pjsip:alice", "+1", "text")
    assert [n for n, _ in message_send("pjsip:alice", None, b"hi")] == ["To", "Base64Body"]


def test_message_send_keeps_crlf_and_spaces_and_refuses_them_in_addresses():
    body = " two\r\nlines \n".encode()
    fields = message_send("pjsip:alice", "+1", body)
    assert base64.b64decode(fields[-1][1]) == body
    with pytest.raises(AMIEncodeError):
        message_send("pjsip:alice", "+1501\r\nAction: Originate", b"x")
    with pytest.raises(AMIEncodeError):
        message_send("pjsip:alice\n", "+1", b"x")


# ------------------------------------------------------------------- correlation


def pk(*lines):
    """A packet from 'Name: value' strings (parsed by the parser itself)."""
    data = "".join(line + "\r\n" for line in lines) + "\r\n"
    (p,) = packets(AMIParser(expect_banner=False).feed(data.encode()))
    return p


def test_session_ids_and_bytes():
    s = AMISession(id_prefix="w-")
    aid, data = s.send("Ping")
    assert aid == "w-1" and data == b"Action: Ping\r\nActionID: w-1\r\n\r\n"
    aid2, _ = s.send("Command", [("Command", "x")])
    assert aid2 == "w-2" and s.pending == ["w-1", "w-2"]
    assert s.action_name("w-2") == "Command"


def test_session_encode_error_keeps_nothing():
    s = AMISession()
    with pytest.raises(AMIEncodeError):
        s.send("Ping", [("A", "x\ny")])
    assert s.pending == []
    assert s.send("Ping")[0] == "1"


def test_session_matches_responses_with_interleaved_events():
    s = AMISession()
    a, _ = s.send("Ping")
    b, _ = s.send("MessageSend", [("To", "pjsip:bob")])
    out = s.receive(pk("Event: Newchannel", "Channel: x"))
    assert out == [Unsolicited(pk("Event: Newchannel", "Channel: x"))]
    (done,) = s.receive(pk("Response: Error", f"ActionID: {b}", "Message: Message failed to send."))
    assert isinstance(done, ActionDone) and done.action_id == b
    assert not done.result.ok and done.result.message == "Message failed to send."
    assert done.result.action == "MessageSend" and done.result.events == ()
    assert s.receive(pk("Event: PeerStatus", "PeerStatus: Reachable"))[0].packet.event == "PeerStatus"
    (done,) = s.receive(pk("Response: Success", f"ActionID: {a}", "Ping: Pong"))
    assert done.result.ok and done.result.get("ping") == "Pong"
    assert s.pending == []


def test_session_list_action_gathers_events():
    s = AMISession()
    a, _ = s.send("PJSIPShowContacts")
    assert s.receive(pk("Response: Success", f"ActionID: {a}", "EventList: start",
                        "Message: A listing of Contacts follows, presented as ContactList events")) == []
    assert s.receive(pk("Event: ContactList", f"ActionID: {a}", "Endpoint: alice",
                        "Status: NonQualified")) == []
    # An unrelated event in the middle goes out on its own.
    (u,) = s.receive(pk("Event: ContactStatus", "ContactStatus: Removed"))
    assert isinstance(u, Unsolicited)
    assert s.receive(pk("Event: ContactList", f"ActionID: {a}", "Endpoint: bob")) == []
    (done,) = s.receive(pk("Event: ContactListComplete", f"ActionID: {a}",
                           "EventList: Complete", "ListItems: 2"))
    r = done.result
    assert r.ok and [e.get("Endpoint") for e in r.events] == ["alice", "bob"]
    assert r.list_complete.get("ListItems") == "2"
    assert s.pending == []


def test_session_list_action_error_completes_at_once():
    s = AMISession()
    a, _ = s.send("PJSIPShowContacts")
    (done,) = s.receive(pk("Response: Error", f"ActionID: {a}", "EventList: start",
                           "Message: No Contacts found"))
    assert not done.result.ok and done.result.events == ()


def test_session_list_end_before_response():
    s = AMISession()
    a, _ = s.send("X")
    assert s.receive(pk("Event: Item", f"ActionID: {a}")) == []
    assert s.receive(pk("Event: XComplete", f"ActionID: {a}", "EventList: Complete")) == []
    (done,) = s.receive(pk("Response: Success", f"ActionID: {a}", "EventList: start"))
    assert [e.event for e in done.result.events] == ["Item"]
    assert done.result.list_complete.event == "XComplete"


def test_session_response_without_actionid_answers_the_oldest_waiting_action():
    s = AMISession()
    a, _ = s.send("Login")
    b, _ = s.send("smscommand")
    (d1,) = s.receive(pk("Response: Success", "Message: Authentication accepted"))
    assert d1.action_id == a
    (d2,) = s.receive(pk("Response: Follows", "Privilege: SMSCommand"))
    assert d2.action_id == b
    (stray,) = s.receive(pk("Response: Success"))
    assert isinstance(stray, Stray)


def test_session_unknown_and_abandoned_ids_are_stray():
    s = AMISession()
    a, _ = s.send("PJSIPShowContacts")
    assert s.cancel(a) and not s.cancel(a)
    assert isinstance(s.receive(pk("Response: Success", f"ActionID: {a}", "EventList: start"))[0], Stray)
    assert isinstance(s.receive(pk("Event: ContactList", f"ActionID: {a}"))[0], Stray)
    (st,) = s.receive(pk("Response: Success", "ActionID: nobody"))
    assert isinstance(st, Stray) and "unknown" in st.reason
    # An event naming an ActionID we never used (OriginateResponse of another
    # client...) is just an event.
    assert isinstance(s.receive(pk("Event: OriginateResponse", "ActionID: other"))[0], Unsolicited)


def test_session_second_response_is_stray():
    s = AMISession()
    a, _ = s.send("L")
    s.receive(pk("Response: Success", f"ActionID: {a}", "EventList: start"))
    (st,) = s.receive(pk("Response: Success", f"ActionID: {a}"))
    assert isinstance(st, Stray) and "second" in st.reason


def test_session_lose_returns_waiting_ids():
    s = AMISession()
    a, _ = s.send("A")
    b, _ = s.send("B")
    s.receive(pk("Response: Success", f"ActionID: {a}"))
    assert s.lose() == [b]
    assert s.pending == []
