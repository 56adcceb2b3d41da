"""FastAGI: the sans-IO session against real Asterisk 22 bytes, and the Twisted protocol.

The fixtures (fixtures/asterisk/fastagi_*.json) are byte-exact sessions with a real
Asterisk 22.10.  Their fake server sent other commands than websmsd does, so the answer to
websmsd's `GET FULL VARIABLE ${BASE64_ENCODE(${MESSAGE(body)})}` is built here from what
that Asterisk said MESSAGE(body) was (its answer to `GET FULL VARIABLE ${QUOTE(...)}`).
"""

from __future__ import annotations

import base64
import errno
import json
import os
import random
import socket
import time
from pathlib import Path
from typing import Any, List, Optional

import pytest
from twisted.internet import defer
from twisted.internet.address import IPv4Address
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.logger import LogLevel, capturedLogs, formatEvent
from twisted.python.failure import Failure

from websmsd.asterisk.agi import (
    BODY_COMMAND, FAILED, QUEUED, SENT, AGIProtocolError, AGISession, Environment, Hangup,
    Reply, command_bytes, decode_body_reply, message_body, parse_environment, quote,
    set_variable)
from websmsd.asterisk.fastagi import AGIRequest, AGIResult, FastAGIFactory

ROOT = Path(__file__).resolve().parent.parent


def _fixture_dir() -> Path:
    shared = Path(os.environ.get("WEBSMSD_SHARED", ROOT.parent / "shared"))
    for d in (ROOT / "tests" / "fixtures" / "asterisk", shared / "fixtures" / "asterisk"):
        if (d / "fastagi_bodies.json").exists():
            return d
    pytest.skip("Asterisk fixtures not found (set WEBSMSD_SHARED)", allow_module_level=True)


FIXTURES = _fixture_dir()
BODIES = json.loads((FIXTURES / "fastagi_bodies.json").read_text(encoding="utf-8"))["cases"]
COMMANDS = json.loads((FIXTURES / "fastagi_commands.json").read_text(encoding="utf-8"))["cases"]
CASES = {c["case"]: c for c in BODIES}

GET_BODY = b"GET FULL VARIABLE ${BASE64_ENCODE(${MESSAGE(body)})}\n"


def sip_body(case: dict) -> str:
    """What alice sent, as the Message channel has it: res_pjsip strips trailing CR/LF
    and drops a body over 1023 bytes (both shown by the fixtures)."""
    raw = case["sip_request"].encode("utf-8").split(b"\r\n\r\n", 1)[1]
    return "" if len(raw) > 1023 else raw.decode("utf-8").rstrip("\r\n")


def channel_body(case: dict) -> str:
    """MESSAGE(body) as Asterisk rendered it with QUOTE(), read back with our parser."""
    s = AGISession()
    s.feed(case["env_raw"].encode())
    s.send(b"GET FULL VARIABLE ${QUOTE(${MESSAGE(body)})}\n")
    [reply] = [e for e in s.feed(case["quote_rendering"].encode()) if isinstance(e, Reply)]
    quoted = reply.data
    assert quoted.startswith('"') and quoted.endswith('"')
    out, chars = [], iter(quoted[1:-1])
    for ch in chars:
        out.append(next(chars) if ch == "\\" else ch)
    return "".join(out)


def base64_answer(text: str) -> bytes:
    """Asterisk's answer to BODY_COMMAND: BASE64_ENCODE of "" is "" (so `()`)."""
    return b"200 result=1 (" + base64.b64encode(text.encode("utf-8")) + b")\n"


def run_session(env: bytes, answer: bytes, chunk: Optional[int] = None) -> tuple:
    s = AGISession()
    events: List[Any] = []
    pieces = [env] if chunk is None else [env[i:i + chunk] for i in range(0, len(env), chunk)]
    for piece in pieces:
        events += s.feed(piece)
    assert any(isinstance(e, Environment) for e in events)
    s.send(command_bytes(*BODY_COMMAND))
    events += s.feed(answer)
    replies = [e for e in events if isinstance(e, Reply)]
    assert len(replies) == 1, events
    return s, replies[0], events


# -- the fixtures themselves -----------------------------------------------------------

@pytest.mark.parametrize("name", sorted(CASES))
def test_fixture_channel_body_is_the_sip_body(name):
    # What Asterisk's own QUOTE() rendering says MESSAGE(body) is, is alice's body as
    # res_pjsip keeps it: the expectation used below is right.
    case = CASES[name]
    assert channel_body(case) == sip_body(case)


def test_fixtures_cover_the_hard_cases():
    assert {"newline_lf", "newline_crlf", "blank_line", "trailing_newline", "empty",
            "ascii_1023", "ascii_1024", "websms_index"} <= set(CASES)
    assert CASES["blank_line"]["agi_arg_4"] is None  # the capture's own parser broke
    assert sip_body(CASES["ascii_1024"]) == "" and len(sip_body(CASES["ascii_1023"])) == 1023


# -- body recovery over every fixture session --------------------------------------------

@pytest.mark.parametrize("name", sorted(CASES))
@pytest.mark.parametrize("chunk", [None, 1, 7])
def test_body_from_the_channel(name, chunk):
    case = CASES[name]
    s, reply, _ = run_session(case["env_raw"].encode(), base64_answer(channel_body(case)), chunk)
    assert message_body(s.environment, reply) == sip_body(case)
    assert s.environment.script == "websms"
    assert s.environment.args[:2] == ["+15015550123", "+12025550160"]


@pytest.mark.parametrize("name", sorted(CASES))
@pytest.mark.parametrize("answer", [b"200 result=0\n", b"200 result=1 ()\n",
                                    b"510 Invalid or unknown command\n"])
def test_body_from_agi_arg_3_when_the_channel_has_none(name, answer):
    # No MESSAGE(body) (not a message channel): agi_arg_3 with its continuation lines,
    # and for a blank line the stray lines, merged back.
    case = CASES[name]
    s, reply, _ = run_session(case["env_raw"].encode(), answer)
    assert decode_body_reply(reply) is None
    assert message_body(s.environment, reply) == sip_body(case)
    assert s.environment.args[3] == ("api-2" if name == "websms_index" else "")
    assert len(s.environment.args) == 4


def test_blank_line_environment_is_amended_before_the_first_answer():
    case = CASES["blank_line"]
    s, reply, events = run_session(case["env_raw"].encode(), b"200 result=0\n")
    first, second = [e for e in events if isinstance(e, Environment)]
    assert first.args == ["+15015550123", "+12025550160", "para one"] and not first.amended
    assert second.amended and second.args[2:] == ["para one\n\npara two", ""]
    assert events[-1] is reply and s.ignored == 0


@pytest.mark.parametrize("name", sorted(CASES))
def test_fixture_transcripts_replay(name):
    # The capture's own exchange (two SETs pipelined right after the environment, then
    # GET FULL VARIABLE ${QUOTE(...)}), fed exactly as it came: answers parse, the
    # environment is whole.
    case = CASES[name]
    s = AGISession()
    events: List[Any] = []
    for step in case["transcript"]:
        if step["dir"] == "asterisk->agi":
            events += s.feed(step["data"].encode())
        else:
            s.send(step["data"].encode())
    replies = [e for e in events if isinstance(e, Reply)]
    assert [(r.code, r.result) for r in replies] == [(200, "1")] * 3
    assert replies[0].data is None
    assert replies[2].data == case["quote_rendering"][len("200 result=1 ("):-2]
    assert s.environment.args[2] == sip_body(case)
    assert s.environment.args[3] == ("api-2" if name == "websms_index" else "")
    assert s.pending == 0 and s.ignored == 0


# -- fastagi_commands.json ----------------------------------------------------------------

def replay(case: dict) -> tuple:
    s = AGISession()
    events: List[Any] = []
    for step in case["transcript"]:
        if step["dir"] == "asterisk->agi":
            events += s.feed(step["data"].encode())
        else:
            s.send(step["data"].encode())
    return s, events


def test_commands_then_hangup_answers():
    case = COMMANDS["commands_then_hangup"]
    s, events = replay(case)
    replies = [e for e in events if isinstance(e, Reply)]
    assert len(replies) == len(case["commands"])
    by_command = dict(zip((c["command"] for c in case["commands"]), replies))
    assert by_command['SET VARIABLE WEBSMS_STATUS "SENT"'] == \
        Reply(200, "1", None, ["200 result=1"])
    assert by_command["GET VARIABLE WEBSMS_ID"].data == 'id with spaces and "quotes"'
    usage = by_command["SET VARIABLE WEBSMS_NOTE unquoted value with spaces"]
    assert usage.code == 520 and usage.result is None and len(usage.lines) == 3
    assert usage.data == ("Invalid command syntax.  Proper usage follows:\n"
                          "Sets a variable to the current channel.\nEnd of proper usage.")
    assert by_command["GET VARIABLE MESSAGE(body)"].data == 'command test, with "quotes"'
    assert by_command["GET VARIABLE MESSAGE(to)"].data == "pjsip:+15015550123@127.0.0.1"
    assert by_command["GET VARIABLE NO_SUCH_VARIABLE"] == Reply(200, "0", None, ["200 result=0"])
    assert by_command["GET FULL VARIABLE ${WEBSMS_STATUS}-${EXTEN}"].data == "SENT-+15015550123"
    unknown = by_command["FOO BAR"]
    assert (unknown.code, unknown.result, unknown.data) == (510, None, "Invalid or unknown command")
    assert by_command["CHANNEL STATUS"].result == "6"
    assert (by_command["HANGUP"].code, by_command["HANGUP"].result) == (200, "1")
    assert isinstance(events[-1], Hangup) and isinstance(events[-2], Reply)
    assert s.pending == 0 and s.ignored == 0


@pytest.mark.parametrize("name", ["set_then_close", "close_without_commands",
                                  "slow_5s_before_commands", "slow_5s_before_accept"])
def test_other_command_sessions_parse(name):
    s, events = replay(COMMANDS[name])
    assert isinstance(events[0], Environment)
    assert s.environment.args[:2] == ["+15015550123", "+12025550160"]
    assert all(r.code == 200 for r in events if isinstance(r, Reply))
    assert s.pending == 0


def test_failure_line_is_answered_with_hangup():
    s, events = replay(COMMANDS["failure_line"])
    assert isinstance(events[-1], Hangup)


# -- the parser alone ---------------------------------------------------------------------

ENV = CASES["ascii"]["env_raw"].encode()


def env_with(body: str, index: Optional[str] = "") -> bytes:
    """The ascii fixture's environment with another agi_arg_3 (and agi_arg_4)."""
    head = ENV.decode().split("agi_arg_3: ", 1)[0]
    tail = "" if index is None else f"agi_arg_4: {index}\n"
    return f"{head}agi_arg_3: {body}\n{tail}\n".encode()


def test_multiline_get_answer_and_same_line_parentheses():
    s = AGISession()
    s.feed(ENV)
    for _ in range(3):
        s.send(b"GET FULL VARIABLE x\n")
    # A value with raw newlines ends at the first line that ends with ")".
    assert s.feed(b'200 result=1 ("para one\n\npara two) x') == []
    events = s.feed(b'")\n200 result=0 (timeout) endpos=1234\n200 result=1 (a) b)\n')
    assert [(e.code, e.result, e.data) for e in events] == [
        (200, "1", '"para one\n\npara two) x"'), (200, "0", "timeout"), (200, "1", "a) b")]
    assert events[0].lines == ['200 result=1 ("para one', "", 'para two) x")']


def test_multiline_get_answer_keeps_cr():
    s = AGISession()
    s.feed(ENV)
    s.send(b"GET FULL VARIABLE x\n")
    [r] = s.feed(b"200 result=1 (line one\r\nline two)\n")
    assert r.data == "line one\r\nline two" and len(r.lines) == 2


def test_answers_to_nothing_and_noise_are_ignored():
    s = AGISession()
    s.feed(ENV)
    s.send(b"NOOP\n")
    events = s.feed(b"200 result=0\n200 result=0\nwhatever\n")
    assert events == [Reply(200, "0", None, ["200 result=0"])] and s.ignored == 2


def test_body_posing_as_answers_and_keys_stays_body():
    body = "x\nagi_arg_1: +1900\nagi_arg_4: api-9\n\n200 result=1 (eA==)\nHANGUP\n520-y\nz"
    s, reply, events = run_session(env_with(body), b"200 result=0\n")
    assert s.environment.args == ["+15015550123", "+12025550160", body, ""]
    assert not any(isinstance(e, Hangup) for e in events)
    assert message_body(s.environment, reply) == body


def test_stray_lines_that_arrive_after_the_first_command():
    # A slow environment: part of a blank-line body arrives after websmsd asked for
    # the body; it is still environment until the first real answer line.
    env = env_with("para one\n\npara two", "api-2")
    cut = env.index(b"para two")
    s = AGISession()
    assert [type(e) for e in s.feed(env[:cut])] == [Environment]
    s.send(command_bytes(*BODY_COMMAND))
    events = s.feed(env[cut:] + b"HANGUP\n" + base64_answer("para one\n\npara two"))
    assert [type(e) for e in events] == [Environment, Hangup, Reply]
    assert events[0].args[2:] == ["para one\n\npara two", "api-2"]


def test_parse_environment_rules():
    lines = ["agi_network: yes", "agi_arg_1: a", "agi_network: no", "agi_arg_2: b",
             "agi_arg_1: c", "agi_arg_3: d", "agi_arg_3: e", "agi_arg_4: f", "g",
             "agi_arg_4: h", "agi_arg_5: i"]
    assert parse_environment(lines) == {
        "agi_network": "yes", "agi_arg_1": "a\nagi_network: no", "agi_arg_2": "b\nagi_arg_1: c",
        "agi_arg_3": "d\nagi_arg_3: e\nagi_arg_4: f\ng", "agi_arg_4": "h", "agi_arg_5": "i"}
    assert parse_environment(["agi_x:", "agi_y: 1"]) == {"agi_x": "", "agi_y": "1"}


def test_script_from_request_when_network_script_is_missing():
    s = AGISession()
    [env] = s.feed(b"agi_request: agi://127.0.0.1:4573/websms\nagi_arg_1: x\n\n")
    assert env.script == "websms" and env.args == ["x"]


@pytest.mark.parametrize("data, message", [
    (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", "not a FastAGI environment"),
    (b"\n", "empty environment"),
    (b"agi_network: yes\n" + b"x" * 70000, "line longer"),
    (b"agi_network: yes\n" + (b"agi_x: " + b"y" * 1000 + b"\n") * 100, "environment longer"),
    (b"agi_network: yes\n\n" + b"para\n" * 10000, "environment longer"),
], ids=["http", "blank", "long line", "long environment", "long stray lines"])
def test_malformed_input_raises_one_error_type(data, message):
    s = AGISession(max_environment=32 * 1024)
    with pytest.raises(AGIProtocolError, match=message):
        s.feed(data)
    with pytest.raises(AGIProtocolError):
        s.feed(b"agi_network: yes\n")


def test_send_before_environment_is_refused():
    with pytest.raises(AGIProtocolError):
        AGISession().send(b"NOOP\n")


def test_over_long_answer_is_an_error():
    s = AGISession(max_line=100, max_environment=1000)
    s.feed(b"agi_network: yes\n\n")
    s.send(b"GET FULL VARIABLE x\n")
    with pytest.raises(AGIProtocolError, match="answer longer"):
        s.feed(b"200 result=1 (a\n" + b"bbbbbbbbb\n" * 200)


def test_random_input_never_raises_anything_else():
    rng = random.Random(4573)
    alphabet = [b"agi_arg_1: x", b"agi_", b": ", b"\n", b"\n\n", b"200 result=1 (", b")", b"520-",
                b"520 ", b"HANGUP", b"\r", b"\xff\xfe", b"\xd0", b"x" * 50, b"(", b"510 a"]
    for _ in range(500):
        s = AGISession(max_line=200, max_environment=2000)
        noise = b"".join(rng.choice(alphabet) for _ in range(rng.randrange(80)))
        data = b"agi_network: yes\n" + noise
        try:
            for i in range(0, len(data), rng.randrange(1, 20)):
                s.feed(data[i:i + 19])
                if s.state != "environment" and rng.random() < 0.3:
                    s.send(b"NOOP\n")
        except AGIProtocolError:
            pass


# -- building commands ----------------------------------------------------------------------

def test_set_variable_bytes():
    assert set_variable("WEBSMS_STATUS", "SENT") == b'SET VARIABLE WEBSMS_STATUS "SENT"\n'
    # The fixture's command that Asterisk took (stored as: id with spaces and "quotes").
    assert (set_variable("WEBSMS_ID", 'id with spaces and "quotes"').decode().rstrip("\n")
            == COMMANDS["commands_then_hangup"]["commands"][1]["command"])
    assert set_variable("WEBSMS_REASON", 'a\\b "c"\r\nd\te\x00\x7f') == \
        b'SET VARIABLE WEBSMS_REASON "a\\\\b \\"c\\"de"\n'
    assert set_variable("WEBSMS_REASON", "Привет") == \
        'SET VARIABLE WEBSMS_REASON "Привет"\n'.encode()
    assert set_variable("MESSAGE(body)", "") == b'SET VARIABLE MESSAGE(body) ""\n'


@pytest.mark.parametrize("name", ["", "A B", "A\nB", 'A"', "1A", "A;B"])
def test_set_variable_refuses_bad_names(name):
    with pytest.raises(ValueError):
        set_variable(name, "x")


def test_command_bytes():
    assert command_bytes(*BODY_COMMAND) == GET_BODY
    assert command_bytes("VERBOSE", quote("hello from websmsd"), "1") == \
        b'VERBOSE "hello from websmsd" 1\n'
    for bad in (("NOOP\nHANGUP",), ("A", "b\r"), ("A\x00",), ()):
        with pytest.raises(ValueError):
            command_bytes(*bad)
    with pytest.raises(ValueError):
        set_variable("WEBSMS_REASON", "x" * 3000)


def test_decode_body_reply():
    assert decode_body_reply(Reply(200, "1", "SGk=", [])) == "Hi"
    assert decode_body_reply(Reply(200, "1", "not base64!", [])) is None
    assert decode_body_reply(Reply(200, "1", "//79", [])) == "\ufffd\ufffd\ufffd"
    assert decode_body_reply(Reply(200, "0", None, [])) is None
    assert decode_body_reply(Reply(511, None, "dead", [])) is None


# -- the Twisted protocol --------------------------------------------------------------------

class Handler:
    """Records requests; answers with `result` (a value, a Deferred, or an exception)."""

    def __init__(self, result: Any = None):
        self.result = AGIResult(SENT, "m1") if result is None else result
        self.requests: List[AGIRequest] = []

    def __call__(self, request: AGIRequest) -> Any:
        self.requests.append(request)
        if isinstance(self.result, Exception):
            raise self.result
        return self.result


class Session:
    """One FastAGIProtocol on a StringTransport with a fake clock."""

    def __init__(self, handler: Any = None, timeout: float = 30, **kw: Any):
        self.handler = Handler() if handler is None else handler
        self.clock = MemoryReactorClock()
        self.factory = FastAGIFactory(self.handler, reactor=self.clock, timeout=timeout, **kw)
        self.proto = self.factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 40000))
        self.transport = StringTransport(peerAddress=IPv4Address("TCP", "127.0.0.1", 40000))
        self.proto.makeConnection(self.transport)
        self.written: List[bytes] = []

    def take(self) -> bytes:
        data = self.transport.value()
        self.transport.clear()
        self.written.append(data)
        return data

    def feed(self, data: bytes) -> bytes:
        self.proto.dataReceived(data)
        return self.take()

    @property
    def closed(self) -> bool:
        return self.transport.disconnecting

    def lose(self) -> None:
        self.proto.connectionLost(Failure(ConnectionError("gone")))

    def answer_sets(self, data: bytes) -> dict:
        """Answer `data` (a SET VARIABLE line) and every one after it with 200 until
        websmsd writes nothing more; return the values set."""
        variables = {}
        while data.startswith(b"SET VARIABLE "):
            name, value = data.decode()[len("SET VARIABLE "):-1].split(" ", 1)
            assert value[0] == value[-1] == '"'
            variables[name] = value[1:-1].replace('\\"', '"').replace("\\\\", "\\")
            data = self.feed(b"200 result=1\n")
        assert data == b""
        return variables


def converse(env: bytes, body_answer: bytes, **kw: Any) -> tuple:
    s = Session(**kw)
    assert s.feed(env) == GET_BODY
    return s, s.answer_sets(s.feed(body_answer))


def test_exact_bytes_of_a_sent_message():
    s = Session(Handler(AGIResult(SENT, "0193abc")))
    assert s.feed(ENV) == GET_BODY
    assert s.feed(base64_answer("Hello from alice")) == b'SET VARIABLE WEBSMS_STATUS "SENT"\n'
    assert s.feed(b"200 result=1\n") == b'SET VARIABLE WEBSMS_ID "0193abc"\n'
    assert not s.closed
    assert s.feed(b"200 result=1\n") == b""
    assert s.closed
    assert b"HANGUP" not in b"".join(s.written)
    assert s.clock.getDelayedCalls() == []
    s.lose()


def test_handler_gets_the_request():
    s, got = converse(ENV, base64_answer("Hello from alice"))
    [r] = s.handler.requests
    assert (r.script, r.to, r.sender, r.body, r.index) == (
        "websms", "+15015550123", "+12025550160", "Hello from alice", "")
    assert r.env["agi_channel"] == "Message/ast_msg_queue" and r.env["agi_arg_4"] == ""
    assert (r.peer.host, r.peer.port) == ("127.0.0.1", 40000)
    assert got == {"WEBSMS_STATUS": "SENT", "WEBSMS_ID": "m1"}


def test_index_from_agi_arg_4():
    case = CASES["websms_index"]
    s, got = converse(case["env_raw"].encode(), base64_answer(channel_body(case)))
    assert s.handler.requests[0].index == "api-2"
    assert s.handler.requests[0].body == "idx2:hello via api-2"


@pytest.mark.parametrize("name", sorted(CASES))
@pytest.mark.parametrize("from_channel", [True, False])
def test_every_fixture_session_through_the_protocol(name, from_channel):
    case = CASES[name]
    answer = base64_answer(channel_body(case)) if from_channel else b"200 result=0\n"
    s, got = converse(case["env_raw"].encode(), answer)
    expected = sip_body(case)
    if expected:
        [r] = s.handler.requests
        assert r.body == expected and r.to == "+15015550123" and r.sender == "+12025550160"
        assert got == {"WEBSMS_STATUS": "SENT", "WEBSMS_ID": "m1"}
    else:
        assert s.handler.requests == []
        assert got["WEBSMS_STATUS"] == "FAILED" and "empty" in got["WEBSMS_REASON"]
        assert "WEBSMS_ID" not in got


def test_failed_result_sets_the_reason_quoted_and_cleaned():
    reason = 'ITSP said "no"\r\nApplication: System'
    s, got = converse(ENV, base64_answer("x"), handler=Handler(AGIResult(FAILED, "m2", reason)))
    assert got == {"WEBSMS_STATUS": "FAILED", "WEBSMS_ID": "m2",
                   "WEBSMS_REASON": 'ITSP said "no"Application: System'}
    assert b'SET VARIABLE WEBSMS_REASON "ITSP said \\"no\\"Application: System"\n' in s.written


def test_failed_without_reason_and_queued_without_id():
    _, got = converse(ENV, base64_answer("x"), handler=Handler(AGIResult(FAILED)))
    assert got == {"WEBSMS_STATUS": "FAILED", "WEBSMS_REASON": "not sent"}
    _, got = converse(ENV, base64_answer("x"), handler=Handler(AGIResult(QUEUED)))
    assert got == {"WEBSMS_STATUS": "QUEUED"}


def test_long_reason_is_cut():
    _, got = converse(ENV, base64_answer("x"), handler=Handler(AGIResult(FAILED, None, "r" * 5000)))
    assert got["WEBSMS_REASON"] == "r" * 200


def test_deferred_result_is_awaited():
    d: defer.Deferred = defer.Deferred()
    s = Session(Handler(d))
    s.feed(ENV)
    assert s.feed(base64_answer("x")) == b""
    d.callback(AGIResult(QUEUED, "m3"))
    assert s.answer_sets(s.take()) == {"WEBSMS_STATUS": "QUEUED", "WEBSMS_ID": "m3"}
    assert s.closed


@pytest.mark.parametrize("error, reason", [
    (RuntimeError("database is locked /var/lib/x"), "internal error"),
    (ValueError("recipient 'x' is not a number"), "recipient 'x' is not a number"),
])
def test_handler_failure_is_failed_and_logged(error, reason):
    with capturedLogs() as events:
        _, got = converse(ENV, base64_answer("x"), handler=Handler(error))
    assert got == {"WEBSMS_STATUS": "FAILED", "WEBSMS_REASON": reason}
    assert any(e.get("log_failure") is not None and e["log_failure"].value is error
               for e in events)


def test_handler_errback_later():
    d: defer.Deferred = defer.Deferred()
    s = Session(Handler(d))
    s.feed(ENV)
    s.feed(base64_answer("x"))
    with capturedLogs():
        d.errback(RuntimeError("boom"))
    assert s.answer_sets(s.take()) == {"WEBSMS_STATUS": "FAILED", "WEBSMS_REASON": "internal error"}


def test_handler_returning_nonsense_is_failed():
    with capturedLogs():
        _, got = converse(ENV, base64_answer("x"), handler=Handler("SENT"))
        _, got2 = converse(ENV, base64_answer("x"), handler=Handler(AGIResult("DONE")))
    assert got == got2 == {"WEBSMS_STATUS": "FAILED", "WEBSMS_REASON": "internal error"}


@pytest.mark.parametrize("env, reason", [
    (ENV.replace(b"agi_network_script: websms", b"agi_network_script: other"),
     "unknown FastAGI script"),
    (ENV.replace(b"agi_arg_1: +15015550123", b"agi_arg_1: "), "no recipient"),
    (ENV.replace(b"agi_arg_2: +12025550160", b"agi_arg_2: "), "no sender"),
    (env_with(""), "empty message body"),
])
def test_refused_without_calling_the_handler(env, reason):
    s, got = converse(env, b"200 result=1 ()\n")
    assert s.handler.requests == []
    assert got["WEBSMS_STATUS"] == "FAILED" and got["WEBSMS_REASON"].startswith(reason)


def test_more_scripts_can_be_allowed():
    env = ENV.replace(b"agi_network_script: websms", b"agi_network_script: sms2")
    s, got = converse(env, base64_answer("x"), scripts=("websms", "sms2"))
    assert got["WEBSMS_STATUS"] == "SENT" and s.handler.requests[0].script == "sms2"


def test_refused_set_variable_goes_on():
    s = Session(Handler(AGIResult(FAILED, "m4", "bad")))
    s.feed(ENV)
    s.feed(base64_answer("x"))
    usage = b"520-Invalid command syntax.  Proper usage follows:\nusage\n520 End of proper usage.\n"
    assert s.feed(usage) == b'SET VARIABLE WEBSMS_ID "m4"\n'
    assert s.feed(b"510 Invalid or unknown command\n") == b'SET VARIABLE WEBSMS_REASON "bad"\n'
    assert s.feed(b"200 result=1\n") == b"" and s.closed


def test_body_is_not_logged_above_debug():
    body = "secret text 1234"
    with capturedLogs() as events:
        converse(env_with(body), base64_answer(body))
    shown = [formatEvent(e) for e in events if e["log_level"] > LogLevel.debug]
    assert shown and not any(body in text or "secret" in text for text in shown)


# -- bad peers -------------------------------------------------------------------------------

@pytest.mark.parametrize("data", [
    b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n",
    b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(range(256)),
    b"agi_network: yes\n" + b"A" * 200_000,
    b"agi_network: yes\n" + b"agi_x: y\n" * 20_000,
    b"\n",
], ids=["http", "tls", "long line", "long environment", "blank"])
def test_garbage_closes_without_writing(data):
    handler = Handler()
    s = Session(handler)
    with capturedLogs():
        s.feed(data)
        s.feed(data)
    assert s.closed and b"".join(s.written) == b"" and handler.requests == []
    assert s.clock.getDelayedCalls() == []


def test_garbage_after_the_environment_closes():
    s = Session()
    s.feed(ENV)
    with capturedLogs():
        assert s.feed(b"2" * 100_000) == b""
    assert s.closed and s.handler.requests == []


def test_disconnect_mid_environment():
    s = Session()
    s.feed(ENV[:100])
    with capturedLogs():
        s.lose()
    s.proto.dataReceived(ENV[100:])
    assert s.take() == b"" and s.handler.requests == []
    assert s.clock.getDelayedCalls() == []


def test_disconnect_while_the_handler_works():
    cancelled = []
    d: defer.Deferred = defer.Deferred(lambda _: cancelled.append(True))
    s = Session(Handler(d))
    s.feed(ENV)
    s.feed(base64_answer("x"))
    with capturedLogs():
        s.lose()
        d.callback(AGIResult(SENT, "m5"))
    assert s.take() == b"" and cancelled == []
    assert s.clock.getDelayedCalls() == []


def test_disconnect_while_setting_variables():
    s = Session()
    s.feed(ENV)
    s.feed(base64_answer("x"))
    with capturedLogs():
        s.lose()
        s.proto.dataReceived(b"200 result=1\n")
    assert s.take() == b""


def test_hangup_from_asterisk_ends_the_session():
    d: defer.Deferred = defer.Deferred()
    s = Session(Handler(d))
    s.feed(ENV)
    s.feed(base64_answer("x"))
    with capturedLogs():
        assert s.feed(b"HANGUP\n") == b""
    assert s.closed
    d.callback(AGIResult(SENT, "m6"))
    assert s.take() == b""


def test_timeout_waiting_for_the_environment():
    s = Session(timeout=30)
    s.feed(ENV[:50])
    s.clock.advance(29)
    assert not s.closed
    with capturedLogs():
        s.clock.advance(1)
    assert s.closed and s.take() == b""


def test_timeout_waiting_for_the_body_answer():
    s = Session(timeout=5)
    s.feed(ENV)
    with capturedLogs():
        s.clock.advance(5)
    assert s.closed and s.handler.requests == []


def test_timeout_while_the_handler_works_does_not_cancel_it():
    cancelled = []
    d: defer.Deferred = defer.Deferred(lambda _: cancelled.append(True))
    s = Session(Handler(d), timeout=10)
    s.feed(ENV)
    s.clock.advance(9)  # each wait has its own timeout
    s.feed(base64_answer("x"))
    s.clock.advance(9)
    assert not s.closed
    with capturedLogs():
        s.clock.advance(1)
        assert s.closed and cancelled == []
        d.callback(AGIResult(SENT, "m7"))
    s.proto.connectionLost(Failure(ConnectionError("closed")))
    assert s.take() == b""
    assert s.clock.getDelayedCalls() == []


def test_timeout_waiting_for_a_set_answer():
    s = Session(timeout=10)
    s.feed(ENV)
    assert s.feed(base64_answer("x")).startswith(b"SET VARIABLE WEBSMS_STATUS")
    with capturedLogs():
        s.clock.advance(10)
    assert s.closed


def test_factory_defaults_to_the_global_reactor():
    from twisted.internet import reactor

    f = FastAGIFactory(Handler())
    assert f.reactor is reactor and f.timeout == 30 and f.scripts == ("websms",)


# -- a real socket ---------------------------------------------------------------------------

def test_over_loopback_tcp():
    """The global reactor, driven by iterate(), and a plain blocking-free socket client
    that plays Asterisk for a blank-line body."""
    from twisted.internet import reactor

    handler = Handler(defer.succeed(AGIResult(QUEUED, "tcp-1")))
    port = reactor.listenTCP(0, FastAGIFactory(handler, reactor=reactor), interface="127.0.0.1")
    client = socket.create_connection(("127.0.0.1", port.getHost().port), timeout=5)
    client.setblocking(False)
    received = b""
    deadline = time.monotonic() + 20

    def exchange(answer: Optional[bytes]) -> bytes:
        nonlocal received
        if answer:
            client.sendall(answer)
        while b"\n" not in received:
            assert time.monotonic() < deadline, "no answer from websmsd"
            reactor.iterate(0.01)
            try:
                chunk = client.recv(65536)
            except OSError as e:
                if e.errno in (errno.EAGAIN, errno.EWOULDBLOCK):
                    continue
                raise
            if not chunk:
                return b""
            received += chunk
        line, _, received = received.partition(b"\n")
        return line + b"\n"

    try:
        case = CASES["blank_line"]
        assert exchange(case["env_raw"].encode()) == GET_BODY
        variables = {}
        line = exchange(base64_answer(channel_body(case)))
        while line.startswith(b"SET VARIABLE "):
            name, value = line.decode()[13:-1].split(" ", 1)
            variables[name] = value.strip('"')
            line = exchange(b"200 result=1\n")
        assert line == b""  # closed by websmsd, no HANGUP
        assert variables == {"WEBSMS_STATUS": "QUEUED", "WEBSMS_ID": "tcp-1"}
        assert handler.requests[0].body == "para one\n\npara two"
        assert handler.requests[0].peer.host == "127.0.0.1"
    finally:
        client.close()
        d = port.stopListening()
        while not d.called and time.monotonic() < deadline:
            reactor.iterate(0.01)
        for _ in range(5):
            reactor.iterate(0)
