"""End-to-end checks of the real-Asterisk harness (tests/realasterisk.py, tests/sipua.py).

They need an Asterisk 22 installed at /opt/asterisk (see /work/shared/asterisk-build.md)
and skip without one, except the first few, which check the UA's digest and framing
against published test vectors.  No websmsd here: the phones are `sipua.SipUA`, the FastAGI peer
is a tiny fake server, AMI is spoken over a raw socket.  One Asterisk serves the module.
"""

import base64
import socket
import threading
import urllib.parse

import pytest

import realasterisk
from realasterisk import AMI, Phone, RealAsterisk
from sipua import SipUA, digest_authorization, parse, split_stream


def test_digest_md5_matches_rfc2617_example():
    challenge = ('Digest realm="testrealm@host.com", qop="auth,auth-int", '
                 'nonce="dcd98b7102dd2f0e8b11d0f600bfb0c093", opaque="5ccc069c403ebaf9f0171e9517f40e41"')
    answer = digest_authorization(challenge, "GET", "/dir/index.html", "Mufasa", "Circle Of Life",
                                  cnonce="0a4f113b")
    assert 'response="6629fae49393a05397450978507c4ef1"' in answer
    assert 'opaque="5ccc069c403ebaf9f0171e9517f40e41"' in answer
    assert "nc=00000001" in answer


def test_digest_sha256_matches_rfc7616_example():
    challenge = ('Digest realm="http-auth@example.org", qop="auth, auth-int", algorithm=SHA-256, '
                 'nonce="7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v", '
                 'opaque="FQhe/qaU925kfnzjCev0ciny7QMkPqMAFRtzCUYo5tdS"')
    answer = digest_authorization(challenge, "GET", "/dir/index.html", "Mufasa", "Circle of Life",
                                  cnonce="f2/wE4q74E6zIJEtWaHKaf5wv/H5QzzpXusqGemxURZJ")
    assert 'response="753927fa0e85d155564e2e272a28d1802ca10daf4496794697cf8db5856cb6c1"' in answer


def test_stream_framing_keeps_partial_messages():
    one = b"MESSAGE sip:a@h SIP/2.0\r\nl: 5\r\n\r\nhello"
    two = b"OPTIONS sip:a@h SIP/2.0\r\nContent-Length: 0\r\n\r\n"
    stream = b"\r\n\r\n" + one + two
    for cut in range(len(stream) + 1):
        first, rest = split_stream(stream[:cut])
        second, rest = split_stream(rest + stream[cut:])
        assert first + second == [one, two]
        assert rest == b""
    assert parse(one).body == b"hello"
    assert parse(one).header("content-length") == "5"

needs_asterisk = pytest.mark.skipif(realasterisk.skip_reason() is not None,
                                    reason=realasterisk.skip_reason() or "")


class FakeFastAGI:
    """Accepts FastAGI sessions: keeps the environment, sets two variables, closes."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(4)
        self.port = self.sock.getsockname()[1]
        self.sessions = []
        self.done = threading.Semaphore(0)
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self):
        n = 0
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            n += 1
            with conn, conn.makefile("rb") as f:
                env = {}
                for line in iter(f.readline, b""):
                    if line == b"\n":
                        break
                    key, _, value = line.decode().rstrip("\n").partition(": ")
                    env[key] = value
                answers = []
                for command in ('SET VARIABLE WEBSMS_STATUS "SENT"', f'SET VARIABLE WEBSMS_ID "fake-{n}"'):
                    conn.sendall(command.encode() + b"\n")
                    answers.append(f.readline().decode().rstrip("\n"))
            self.sessions.append({"env": env, "answers": answers})
            self.done.release()

    def wait_session(self, timeout=10):
        assert self.done.acquire(timeout=timeout), "Asterisk never called the FastAGI server"
        return self.sessions[-1]

    def close(self):
        self.sock.close()


@pytest.fixture(scope="module")
def fastagi():
    server = FakeFastAGI()
    yield server
    server.close()


@pytest.fixture(scope="module")
def asterisk(fastagi):
    phones = [Phone("alice"), Phone("bob", numbers=("+15015550199",)), Phone("john.doe")]
    with RealAsterisk(phones, agi_port=fastagi.port) as ast:
        yield ast


def phone(ast, name, **kw):
    return SipUA(name, ast.phone(name).secret(), registrar=("127.0.0.1", ast.sip_port), **kw)


@needs_asterisk
def test_alice_registers_and_websmsd_user_sees_it(asterisk):
    with asterisk.ami(asterisk.websmsd_user) as ami, phone(asterisk, "alice") as alice:
        mark = ami.mark()
        assert alice.register().status == 200
        status = ami.wait_event("ContactStatus", start=mark, AOR="alice")
        assert status["ContactStatus"] == "NonQualified"
        assert status["URI"] == f"sip:alice@127.0.0.1:{alice.local_port}"
        assert ami.wait_event("PeerStatus", start=mark, Peer="PJSIP/alice")["PeerStatus"] == "Reachable"

        response, contacts = ami.action_list("PJSIPShowContacts")
        assert response["Response"] == "Success"
        # ContactList items name the endpoint; the AOR is ObjectName's part before ";@".
        mine = [c for c in contacts if c.get("Endpoint") == "alice"]
        assert [c["Uri"] for c in mine] == [f"sip:alice@127.0.0.1:{alice.local_port}"]
        assert mine[0]["ObjectName"].startswith("alice;@")
        assert mine[0]["Status"] == "NonQualified"
        assert f"sip:alice@127.0.0.1:{alice.local_port}" in asterisk.cli("pjsip show contacts")

        mark = ami.mark()
        assert alice.unregister().status == 200
        assert ami.wait_event("ContactStatus", start=mark, AOR="alice")["ContactStatus"] == "Removed"


@needs_asterisk
def test_websmsd_user_may_not_originate(asterisk):
    with asterisk.ami(asterisk.websmsd_user) as ami:
        answer = ami.action("Originate", Channel="Local/bob@websms-answer", Application="Wait", Data="1")
    assert answer["Response"] == "Error"
    assert answer["Message"] == "Permission denied"


@needs_asterisk
def test_ami_messagesend_reaches_alice_over_a_raw_socket(asterisk):
    body = "Zeile eins\nline two \U0001F600, \"quoted\" "
    with phone(asterisk, "alice") as alice:
        assert alice.register().status == 200
        sock = socket.create_connection(("127.0.0.1", asterisk.ami_port), timeout=10)
        with sock, sock.makefile("rb") as f:
            assert f.readline().startswith(b"Asterisk Call Manager/")
            user = asterisk.websmsd_user
            b64 = base64.b64encode(body.encode()).decode()
            sock.sendall(f"Action: Login\r\nUsername: {user.name}\r\nSecret: {user.secret}\r\n"
                         "Events: off\r\n\r\n"
                         "Action: MessageSend\r\nActionID: m1\r\nTo: pjsip:alice\r\n"
                         f"From: +15015550100\r\nBase64Body: {b64}\r\n\r\n".encode())
            packets = []
            while not any(b"ActionID: m1" in p for p in packets):
                packet = b""
                for line in iter(f.readline, b""):
                    if line == b"\r\n":
                        break
                    packet += line
                assert packet, "AMI closed the connection"
                packets.append(packet)
        answer = next(p for p in packets if b"ActionID: m1" in p)
        assert b"Response: Success" in answer
        got = alice.wait_message()
        assert got.body == body.encode()
        assert got.header("from").startswith("<sip:+15015550100@127.0.0.1>")
        alice.unregister()


@needs_asterisk
def test_callfile_reaches_bob(asterisk):
    body = "Привет, Bob 😀 100% + more"
    name = "websmsd-test-1.call"
    with phone(asterisk, "bob", transport="tcp") as bob:
        assert bob.register().status == 200
        encoded = urllib.parse.quote(body, safe="-_.~")
        asterisk.drop_callfile(name, asterisk.callfile("+15015550199", "+15015550100", encoded))
        got = bob.wait_message(timeout=10)
        assert got.body == body.encode()
        assert got.header("from").startswith("<sip:+15015550100@127.0.0.1>")
        assert "Status: Completed" in asterisk.wait_archived(name)
        bob.unregister()


@needs_asterisk
def test_callfile_to_an_unknown_number_expires(asterisk):
    name = "websmsd-test-2.call"
    asterisk.drop_callfile(name, asterisk.callfile("+19995550000", "+15015550100", "lost"))
    assert "Status: Expired" in asterisk.wait_archived(name)


@needs_asterisk
def test_message_from_john_runs_the_agi_dialplan(asterisk, fastagi):
    body = 'one, two "three" \\ four'
    mark = asterisk.log_mark()
    with phone(asterisk, "john.doe", display_name="John") as john:
        answer = john.send_message("+12025550160", body, headers=[("X-WebSMS-Index", "api-2")])
        assert answer.status == 202
        session = fastagi.wait_session()
    env = session["env"]
    assert env["agi_network_script"] == "websms"
    assert env["agi_arg_1"] == "+12025550160"
    assert env["agi_arg_2"] == "John <sip:john.doe@127.0.0.1>"
    assert env["agi_arg_3"] == body
    assert env["agi_arg_4"] == "api-2"
    assert session["answers"] == ["200 result=1", "200 result=1"]
    result = asterisk.wait_log(r"HARNESS-AGI-RESULT agistatus=(\S*) status=(\S*) id=(\S*)", start=mark)
    assert result.groups() == ("SUCCESS", "SENT", "fake-1")


@needs_asterisk
def test_failed_login_is_answered_and_closed(asterisk):
    with AMI("127.0.0.1", asterisk.ami_port) as ami:
        answer = ami.login("websmsd", "wrong")
        assert answer["Message"] == "Authentication failed"
        assert ami.wait_closed(), "Asterisk kept the connection after a failed login"


@needs_asterisk
def test_qualify_pings_are_answered():
    with RealAsterisk([Phone("alice")], qualify_frequency=1) as ast, \
            ast.ami(ast.websmsd_user) as ami, phone(ast, "alice") as alice:
        mark = ami.mark()
        assert alice.register().status == 200
        reachable = ami.wait_event("ContactStatus", start=mark, ContactStatus="Reachable")
        assert reachable["AOR"] == "alice"
        assert alice.options_received[0].method == "OPTIONS"
