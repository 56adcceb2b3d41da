"""Black-box: the real daemon (`twistd -n websmsd`) and the phones in the loop, against
tests/amipeer.py (an independent fake AMI server in plain sockets) and the fake ITSP.

The issue's example websms.conf, as written; inbound SMS to both phones of a shared number
over MessageSend; a phone not registered until a ContactStatus event; the AMI link lost
and back (no attempt spent); the daemon killed while a MessageSend is unanswered (the
message is not lost); a phone's SMS (FastAGI, as Asterisk sends it) out from its number,
and its delivery report as a notice to the phone.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
import urllib.request

import pytest

from amipeer import AMIPeer
from blackbox import ROOT, curl, status_and_body
from test_daemon import asterisk_env, play_asterisk

JOHN, JANE = "+12025550160", "+12025550183"
OUTSIDE = "+15551234567"

# The issue's [ami] as written (blackbox.Daemon writes the section headers).
EXAMPLE = """\
host     = 127.0.0.1
port     = {port}
username = websmsd
secret   = amisecret
keepalive = 5
"""
PHONES = """\
number [john.doe] = +12025550160
number [jane.doe] = +12025550183
number [desk]     = +12025550160     ; two endpoints may share a number: both get it
notify [john.doe] = all              ; none (default) | failed | all
"""


def contact(endpoint: str) -> dict:
    return {"ObjectType": "contact", "ObjectName": f"{endpoint};@f2808715a2",
            "Endpoint": endpoint, "Uri": f"sip:{endpoint}@127.0.0.1:5062",
            "Status": "NonQualified", "RoundtripUsec": "N/A"}


def register_event(peer: AMIPeer, endpoint: str) -> None:
    peer.push_event("PeerStatus", [("Privilege", "system,all"), ("ChannelType", "PJSIP"),
                                   ("Peer", f"PJSIP/{endpoint}"), ("PeerStatus", "Reachable")])
    peer.push_event("ContactStatus", [("Privilege", "system,all"),
                                      ("URI", f"sip:{endpoint}@127.0.0.1:5062"),
                                      ("ContactStatus", "NonQualified"), ("AOR", endpoint),
                                      ("EndpointName", endpoint), ("RoundtripUsec", "0")])


def wait_until(predicate, timeout=15.0, what="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def webhook(d, to, text, sender=OUTSIDE, sid=None):
    args = ["--data-urlencode", f"To={to}", "--data-urlencode", f"From={sender}",
            "--data-urlencode", f"Body={text}"]
    if sid:
        args += ["--data-urlencode", f"MessageSid={sid}"]
    return status_and_body(curl(*args, d.webhook_url + "/"))[0]


def api_status(d) -> dict:
    with urllib.request.urlopen(d.api_url + "/api/status", timeout=10) as r:
        return json.load(r)


def logged_in(d) -> bool:
    return any(c["kind"] == "ami" and c["state"] == "up" for c in api_status(d)["channels"])


@pytest.fixture
def peer():
    p = AMIPeer(username="websmsd", secret="amisecret").start()
    yield p
    p.stop()


def start(make_daemon, peer, astqueue="delivery = ami\n", **sections):
    sections.setdefault("websmsd", "key_id = MessageSid\n")
    d = make_daemon(astqueue=astqueue, ami=EXAMPLE.format(port=peer.port), phones=PHONES,
                    daemon="retry_base = 1\nretry_max = 2\n", **sections)
    wait_until(lambda: logged_in(d), what="the AMI login")
    return d


def bodies(peer, to):
    return [m["body"].decode() for m in peer.messages if m["to"] == to]


def test_the_example_config_and_an_sms_to_a_shared_number(make_daemon, peer):
    peer.contacts = [contact("john.doe"), contact("desk")]
    d = start(make_daemon, peer)
    login = peer.wait_for("Login")
    assert login.get("Username") == "websmsd" and login.get("Events") == "system"
    assert webhook(d, JOHN, "Hello ✓\nsecond line", sid="SM1") == 200
    wait_until(lambda: len(peer.messages) == 2, what="two MessageSends")
    assert sorted(m["to"] for m in peer.messages) == ["pjsip:desk", "pjsip:john.doe"]
    for m in peer.messages:
        assert m["from"] == OUTSIDE and m["body"] == "Hello ✓\nsecond line".encode()
    sends = [a for a in peer.actions if a.name == "MessageSend"]
    assert all(a.get("Base64Body") and a.get("Body") is None for a in sends)
    wait_until(lambda: d.rows("SELECT COUNT(*) FROM messages WHERE status = 'delivered'")[0][0]
               == 2, what="both delivered")
    # The ITSP resends its webhook: nothing new for either phone.
    assert webhook(d, JOHN, "Hello ✓\nsecond line", sid="SM1") == 200
    time.sleep(0.5)
    assert len(peer.messages) == 2 and d.callfiles() == []
    # A number no phone has: the call files, as before (the dialplan decides).
    assert webhook(d, "+19995550000", "to the dialplan") == 200
    d.wait_callfiles(1)
    # check-config shows the sections, the secret masked; so does the status API.
    out = subprocess.run([sys.executable, "-m", "websmsd", "check-config", str(d.config)],
                         capture_output=True, text=True, cwd=ROOT, env={"PYTHONPATH": str(ROOT)})
    # The example has no ITSP (no url_host): that is its one error (exit 1).
    assert out.returncode == (0 if "url_host" in d.config.read_text() else 1), out.stderr
    assert "[ami]" in out.stdout and "secret = ****" in out.stdout
    assert "delivery = ami" in out.stdout and "amisecret" not in out.stdout
    assert "amisecret" not in curl(d.api_url + "/api/status").stdout


def test_a_phone_gets_its_messages_when_it_registers(make_daemon, peer):
    peer.contacts = []  # Asterisk answers "No Contacts found"
    d = start(make_daemon, peer)
    for i in range(3):
        assert webhook(d, JANE, f"m{i}") == 200
    wait_until(lambda: d.rows("SELECT COUNT(*) FROM messages WHERE reason ="
                              " 'waiting: route ami:jane.doe is down: phone jane.doe is not"
                              " registered'")[0][0] == 3, what="three waiting")
    assert [c for c in api_status(d)["channels"] if c["name"] == "jane.doe"][0]["info"][
        "waiting"] == 3
    assert peer.messages == []
    register_event(peer, "jane.doe")
    wait_until(lambda: len(peer.messages) == 3, what="three MessageSends")
    assert bodies(peer, "pjsip:jane.doe") == ["m0", "m1", "m2"]
    assert d.wait_rows("SELECT DISTINCT status, attempts FROM messages", [("delivered", 1)]) == [
        ("delivered", 1)]


def test_the_ami_link_lost_pauses_the_routes_without_spending_attempts(make_daemon, peer):
    peer.contacts = [contact("jane.doe")]
    d = start(make_daemon, peer)
    peer.silent = True  # the next actions get no answer...
    peer.drop()  # ...and the link goes
    wait_until(lambda: not logged_in(d), what="the session seen lost")
    assert webhook(d, JANE, "while the PBX restarts") == 200
    time.sleep(0.5)
    assert d.rows("SELECT status, attempts, reason FROM messages") == [
        ("queued", 0, "waiting: route ami:jane.doe is down: no AMI session with Asterisk")]
    peer.silent = False
    wait_until(lambda: len(peer.messages) == 1, timeout=20, what="sent after the reconnect")
    assert bodies(peer, "pjsip:jane.doe") == ["while the PBX restarts"]
    # Recorded once the peer's answer is in: just after the peer saw the action.
    assert d.wait_rows("SELECT status, attempts FROM messages", [("delivered", 1)]) == [
        ("delivered", 1)]


def test_killed_while_a_messagesend_is_unanswered_the_message_is_not_lost(make_daemon, peer):
    peer.contacts = [contact("jane.doe")]
    d = start(make_daemon, peer)
    peer.on("MessageSend", lambda action, session: None)  # never answered
    assert webhook(d, JANE, "survives a SIGKILL") == 200
    peer.wait_for("MessageSend")
    d.stop(signal.SIGKILL)
    peer.on("MessageSend", AMIPeer._default_messagesend.__get__(peer))
    d.start()
    wait_until(lambda: len(peer.messages) == 1, timeout=20, what="sent after the restart")
    assert bodies(peer, "pjsip:jane.doe") == ["survives a SIGKILL"]
    assert d.wait_rows("SELECT status FROM messages", [("delivered",)]) == [("delivered",)]


def test_a_phones_sms_goes_out_from_its_number_and_comes_back_as_a_notice(
        make_daemon, peer, fake_itsp):
    peer.contacts = [contact("john.doe")]
    fake_itsp.default = (200, b'{"data": {"id": "prov-42", "status": "queued"}}')
    d = start(make_daemon, peer, astqueue="",  # delivery = callfile: notices still use AMI
              websms=f"url_host = {fake_itsp.url}\nauth_method = none\nencoding = json\n"
                     "resp_id = data.id\n",
              websmsd='msg_filter = "data.event_type=message.received"\n'
                      'dlr_filter = "data.event_type=message.finalized"\n'
                      "dlr_id = data.payload.id\ndlr_status = data.payload.to.0.status\n"
                      "key_to = data.payload.to.0.phone_number\n"
                      "key_from = data.payload.from.phone_number\nkey_body = data.payload.text\n")
    # What Asterisk 22 hands the AGI for a SIP MESSAGE of john.doe (agi_arg_2).
    env = asterisk_env(d.agi_port, "+15559876543", "John <sip:john.doe@127.0.0.1>", "hi", "")
    got = play_asterisk(d.agi_port, env, "hi")
    assert got["WEBSMS_STATUS"] == "SENT", got
    [req] = fake_itsp.wait(1)
    assert json.loads(req["body"])["From"] == JOHN
    receipt = {"data": {"event_type": "message.finalized", "payload": {
        "id": "prov-42", "to": [{"phone_number": "+15559876543", "status": "delivered"}]}}}
    for _ in range(2):  # providers repeat their reports
        code, _ = status_and_body(curl("-H", "Content-Type: application/json", "--data-binary",
                                       json.dumps(receipt), d.webhook_url + "/"))
        assert code == 200
    wait_until(lambda: peer.messages, what="the notice")
    time.sleep(0.5)
    [notice] = peer.messages
    assert notice["to"] == "pjsip:john.doe" and notice["from"] == "+15559876543"
    assert notice["body"].decode().startswith("✓ delivered ")
    assert d.rows("SELECT status FROM messages WHERE id = ?", (got["WEBSMS_ID"],)) == [
        ("delivered",)]
    assert d.rows("SELECT source, status FROM messages WHERE direction = 'in'") == [
        ("notice", "delivered")]
