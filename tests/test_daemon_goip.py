"""Black-box: GoIP SIMs in the real daemon (`twistd -n websmsd`).

SMPP against an SMSC built on an independent SMPP implementation (the npm package `smpp`,
tests/peers/goip-smsc) that plays a GoIP: a system_id per SIM, a bind_resp without its
NUL, hex message ids and decimal receipt ids.  Those tests need node and the peer's
packages (`npm ci --prefix tests/peers/goip-smsc`) and are skipped, saying so, without.
The SMS-server protocol (UDP) and the web API run against the fakes in tests/goippeer.py.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from blackbox import ROOT, api_json
from goippeer import FakeGoIPLine, FakeGoIPWeb

PEER = ROOT / "tests" / "peers" / "goip-smsc"
NODE = shutil.which("node")
WAIT = 20.0  # a guard against hanging, not a timing claim


# -- the SMSC, in a subprocess -----------------------------------------------------------------


class SMSC:
    """The node SMSC; its JSON events are collected by a thread."""

    def __init__(self, password: str = "secret", quiet: bool = False, port: int = 0):
        args = [NODE, str(PEER / "smsc.js"), "--port", str(port), "--password", password]
        if quiet:
            args.append("--quiet")
        self.proc = subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True, encoding="utf-8",
                                     cwd=PEER)
        self.events: list = []
        self.taken: set = set()
        self.cond = threading.Condition()
        threading.Thread(target=self._read, daemon=True).start()
        self.port = self.wait("listening")["port"]

    def _read(self) -> None:
        for line in self.proc.stdout:
            with self.cond:
                self.events.append(json.loads(line))
                self.cond.notify_all()

    def _match(self, event: str, match: dict, take: bool):
        for i, ev in enumerate(self.events):
            if i in self.taken or ev["event"] != event:
                continue
            if all(ev.get(k) == v for k, v in match.items()):
                if take:
                    self.taken.add(i)
                return ev
        return None

    def wait(self, event: str, timeout: float = WAIT, **match) -> dict:
        """The next event named `event` whose fields match, not returned before."""
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                found = self._match(event, match, True)
                if found is not None:
                    return found
                left = deadline - time.monotonic()
                if left <= 0 or self.proc.poll() is not None:
                    raise AssertionError(f"no {event} {match}; the SMSC said: {self.events[-30:]}")
                self.cond.wait(min(left, 0.2))

    def count(self, event: str, **match) -> int:
        with self.cond:
            return sum(1 for ev in self.events if ev["event"] == event
                       and all(ev.get(k) == v for k, v in match.items()))

    def command(self, **cmd) -> None:
        self.proc.stdin.write(json.dumps(cmd) + "\n")
        self.proc.stdin.flush()
        self.wait("sent", cmd=cmd["cmd"])

    def close(self) -> None:
        try:
            self.proc.stdin.write('{"cmd": "quit"}\n')
            self.proc.stdin.flush()
            self.proc.wait(timeout=5)
        except Exception:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
def smsc():
    if NODE is None:
        pytest.skip("node is not installed (the GoIP SMSC peer is a node program)")
    if not (PEER / "node_modules" / "smpp").is_dir():
        pytest.skip("the SMSC peer's packages are missing: npm ci --prefix tests/peers/goip-smsc")
    s = SMSC()
    yield s
    s.close()


def smpp_conf(port: int, extra: str = "", daemon: str = "") -> dict:
    return dict(goip=(
        f"smpp_host = 127.0.0.1\nsmpp_port = {port}\nsystem_id = goip\npassword = secret\n"
        "enquire_link = 5\nresponse_timeout = 2\nreconnect_max = 1\nregistered_delivery = yes\n"
        "channel [sim1] = 1\nnumber [sim1] = +46701234567\n"
        "channel [sim2] = 2\nnumber [sim2] = +46701234568\n" + extra),
        daemon="retry_base = 1\nretry_max = 2\n" + daemon)


# -- helpers ------------------------------------------------------------------------------------


def until(predicate, what: str, timeout: float = WAIT):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def status(d) -> dict:
    with urllib.request.urlopen(d.api_url + "/api/status", timeout=10) as r:
        return json.load(r)


def row(d, name: str) -> dict:
    return next(c for c in status(d)["channels"] if c["kind"] == "goip" and c["name"] == name)


def route(d, name: str) -> dict:
    return next(r for r in status(d)["routes"] if r["route"] == name)


def wait_state(d, name: str, state: str) -> dict:
    return until(lambda: (lambda r: r if r["state"] == state else None)(row(d, name)),
                 f"{name} {state}")


def fields(callfile: Path) -> dict:
    out = {}
    for line in callfile.read_text().splitlines():
        if line.startswith("setvar: MESSAGE("):
            key, _, value = line[len("setvar: MESSAGE("):].partition(")=")
            out[key] = urllib.parse.unquote(value)
    return out


def calls(d, n: int) -> list:
    return [fields(f) for f in d.wait_callfiles(n)]


def send(d, to: str, body: str, interface: str, wait: float = 10) -> dict:
    return api_json(d.api_url + "/api/send", {"to": to, "from": "+15550001111", "body": body,
                                              "interface": interface, "wait": wait})


def message(d, message_id: str) -> tuple:
    return d.rows("SELECT status, attempts, provider_id, reason FROM messages WHERE id = ?",
                  (message_id,))[0]


def websms(d, *args: str) -> subprocess.CompletedProcess:
    cli = [sys.executable, "-c", "import sys; from websmsd.cli import websms_main; "
                                 "sys.exit(websms_main())"]
    return subprocess.run(cli + list(args) + ["--config", str(d.config)], capture_output=True,
                          text=True, env=dict(os.environ, PYTHONPATH=str(ROOT)), timeout=60)


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# -- SMPP ----------------------------------------------------------------------------------------


def test_each_sim_binds_as_its_own_system_id_and_inbound_sms_become_call_files(make_daemon,
                                                                               smsc):
    d = make_daemon(**smpp_conf(smsc.port))
    for sid in ("goip01", "goip02"):
        bind = smsc.wait("bind", system_id=sid, status=0)
        assert bind["command"] == "bind_transceiver" and bind["interface_version"] == 0x34
        assert bind["resp"].endswith(sid.encode().hex())  # no NUL after it: the GoIP way
    for sim in ("sim1", "sim2"):
        r = wait_state(d, sim, "up")
        assert r["info"]["system_id"] == f"goip0{sim[-1]}"
    smsc.command(cmd="deliver", sim="goip01", **{"from": "+46709876543"}, text="Привет 👋",
                 coding="ucs2", label="ucs2")
    assert smsc.wait("deliver_sm_resp", label="ucs2")["status"] == 0
    smsc.command(cmd="deliver", sim="goip02", **{"from": "+46709876544"},
                 text="Hej {du} ü €5", coding="gsm", label="gsm")
    assert smsc.wait("deliver_sm_resp", label="gsm")["status"] == 0
    got = sorted(calls(d, 2), key=lambda f: f["to"])
    assert got == [
        {"to": "+46701234567", "from": "+46709876543", "body": "Привет 👋"},
        {"to": "+46701234568", "from": "+46709876544", "body": "Hej {du} ü €5"},
    ]


def test_a_two_part_and_a_message_payload_text_arrive_whole(make_daemon, smsc):
    d = make_daemon(**smpp_conf(smsc.port))
    wait_state(d, "sim1", "up")
    long_text = "Ett långt meddelande, " * 9 + "slut."
    smsc.command(cmd="deliver", sim="goip01", text=long_text, coding="ucs2", mode="udh",
                 ref=42, order=[2, 1], label="udh")
    assert [smsc.wait("deliver_sm_resp", label="udh")["status"] for _ in range(2)] == [0, 0]
    smsc.command(cmd="deliver", sim="goip01", text="Payload " * 40, coding="ucs2",
                 mode="payload", label="payload")
    assert smsc.wait("deliver_sm_resp", label="payload")["status"] == 0
    bodies = sorted(f["body"] for f in calls(d, 2))
    assert bodies == sorted([long_text, "Payload " * 40])
    time.sleep(0.3)
    assert len(d.callfiles()) == 2


def test_sent_through_the_sim_then_receipts_move_the_messages(make_daemon, smsc):
    d = make_daemon(**smpp_conf(smsc.port))
    wait_state(d, "sim1", "up")
    r = send(d, "+46701112233", "Hej då", "sim1")
    assert r["status"] == "SENT", r
    submit = smsc.wait("submit_sm", system_id="goip01")
    assert (submit["destination_addr"], submit["dest_addr_ton"], submit["source_addr"],
            submit["source_addr_ton"], submit["registered_delivery"], submit["text"]) == (
        "46701112233", 1, "", 5, 1, "Hej då")
    long = send(d, "+46701112234", "Длинное сообщение " * 10, "sim1")
    assert long["status"] == "SENT", long
    submit2 = smsc.wait("submit_sm", system_id="goip01")
    assert submit2["data_coding"] == 8 and submit2["payload_text"] == "Длинное сообщение " * 10
    assert submit2["text"] in (None, "")
    # The SMSC answered hex ids; its receipts write them in decimal, or in the TLVs.
    first_id, second_id = submit["message_id"], submit2["message_id"]
    assert message(d, r["id"])[2] == first_id.lstrip("0").lower()
    smsc.command(cmd="receipt", sim="goip01", id=str(int(first_id, 16)), stat="DELIVRD")
    smsc.wait("deliver_sm_resp", label="receipt")
    smsc.command(cmd="receipt", sim="goip01", id=second_id, stat="UNDELIV", tlv=True,
                 label="tlv")
    assert smsc.wait("deliver_sm_resp", label="tlv")["status"] == 0
    until(lambda: message(d, r["id"])[0] == "delivered", "delivered")
    until(lambda: message(d, long["id"])[0] == "failed", "failed")
    assert message(d, long["id"])[3] == "UNDELIVERABLE"
    reports = status(d)["webhook"]["reports"]
    assert reports.get("delivered") == 1 and reports.get("failed") == 1


def test_a_dropped_connection_pauses_the_route_and_a_resend_is_not_delivered_twice(
        make_daemon, smsc):
    d = make_daemon(**smpp_conf(smsc.port, daemon="agi_wait = 1\n"))
    wait_state(d, "sim1", "up")
    smsc.command(cmd="deliver", sim="goip01", text="once only", coding="ucs2", label="a")
    assert smsc.wait("deliver_sm_resp", label="a")["status"] == 0
    calls(d, 1)
    # The SMSC restarts and forgets everything it had not sent yet; the route pauses.
    smsc.close()
    until(lambda: route(d, "goip:sim1")["down"], "the route down")
    r = api_json(d.api_url + "/api/send", {"to": "+46701112233", "from": "+1", "body": "wait",
                                           "interface": "sim1", "wait": 1})
    assert r["status"] == "QUEUED", r
    time.sleep(1.5)
    assert message(d, r["id"])[:2] == ("queued", 0)
    assert route(d, "goip:sim1")["waiting"] == 1
    assert wait_state(d, "sim1", "down")["detail"]
    port = smsc.port
    again = SMSCOnPort(port)
    try:
        again.wait("bind", system_id="goip01", status=0)
        until(lambda: message(d, r["id"])[0] == "sent", "sent after the bind")
        assert message(d, r["id"])[1] == 1
        # It never saw our answer: it sends the same deliver_sm on the new bind.
        again.command(cmd="deliver", sim="goip01", text="once only", coding="ucs2", label="b")
        assert again.wait("deliver_sm_resp", label="b")["status"] == 0
        time.sleep(0.5)
        assert len(d.callfiles()) == 1
        assert row(d, "sim1")["info"]["resends"] == 1
    finally:
        again.close()


def SMSCOnPort(port: int) -> SMSC:
    """An SMSC on a given port (the address the daemon knows), retried while it frees."""
    deadline = time.monotonic() + WAIT
    while True:
        try:
            return SMSC(port=port)
        except AssertionError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def test_an_unanswered_enquire_link_reconnects(make_daemon, smsc):
    d = make_daemon(**smpp_conf(smsc.port, "enquire_link [sim1] = 1\nresponse_timeout = 1\n"))
    smsc.wait("bind", system_id="goip01", status=0)
    wait_state(d, "sim1", "up")
    smsc.command(cmd="mute", on=True)
    smsc.wait("enquire_link", system_id="goip01", answered=False)
    smsc.wait("close", system_id="goip01")
    smsc.command(cmd="mute", on=False)
    smsc.wait("bind", system_id="goip01", status=0)
    wait_state(d, "sim1", "up")


def test_throttled_submits_are_tried_again_without_spending_attempts(make_daemon, smsc):
    d = make_daemon(**smpp_conf(smsc.port))
    wait_state(d, "sim1", "up")
    smsc.command(cmd="throttle", n=2)
    r = send(d, "+46701112233", "slow down", "sim1", wait=1)
    until(lambda: message(d, r["id"])[0] == "sent", "sent after the throttle")
    assert smsc.count("submit_sm", status=0x58) == 2 and smsc.count("submit_sm", status=0) == 1
    assert message(d, r["id"])[1] == 1
    assert row(d, "sim1")["info"]["throttled"] == 2


def test_a_wrong_password_shows_check_system_id_and_password(make_daemon, smsc):
    conf = smpp_conf(smsc.port)
    conf["goip"] = conf["goip"].replace("password = secret", "password = wrong")
    d = make_daemon(**conf)
    assert smsc.wait("bind", system_id="goip01")["status"] == 0x0E
    r = wait_state(d, "sim1", "error")
    assert "check system_id/password" in r["detail"]
    assert route(d, "goip:sim1")["down"]


def test_sigkill_while_the_smsc_delivers_loses_nothing_and_doubles_nothing(make_daemon, smsc):
    d = make_daemon(**smpp_conf(smsc.port))
    wait_state(d, "sim1", "up")
    texts = [f"message {i}" for i in range(300)]
    stop = threading.Event()

    def stream() -> None:
        for t in texts:
            if stop.is_set():
                return
            smsc.proc.stdin.write(json.dumps({"cmd": "deliver", "sim": "goip01", "text": t,
                                              "coding": "ucs2", "label": t}) + "\n")
            smsc.proc.stdin.flush()
            time.sleep(0.002)

    writer = threading.Thread(target=stream)
    writer.start()
    until(lambda: smsc.count("deliver_sm_resp", status=0) >= 60, "some answers")
    d.kill()
    stop.set()
    writer.join()
    time.sleep(0.3)  # the SMSC notices the connection is gone
    with smsc.cond:
        answered = {e["label"] for e in smsc.events
                    if e["event"] == "deliver_sm_resp" and e["status"] == 0}
    assert 60 <= len(answered) < len(texts)
    d.start()
    until(lambda: smsc.count("bind", system_id="goip01", status=0) >= 2, "the new bind")
    # What the SMSC never saw answered, it delivers again on the new bind.
    pending = [t for t in texts if t not in answered]
    for t in pending:
        smsc.command(cmd="deliver", sim="goip01", text=t, coding="ucs2", label="again " + t)
    for t in pending:
        assert smsc.wait("deliver_sm_resp", label="again " + t)["status"] == 0
    calls(d, len(texts))
    time.sleep(0.5)
    bodies = [fields(f)["body"] for f in d.callfiles()]
    assert sorted(bodies) == sorted(texts)


def test_ussd_of_an_smpp_sim_goes_through_the_web_api(make_daemon, smsc):
    with FakeGoIPWeb(password="webpw", ussd_answers={"*100#": "Saldo: 10,00 kr"}) as web:
        d = make_daemon(**smpp_conf(smsc.port, f"http_url = {web.url}\nhttp_password = webpw\n"
                                               "http_poll = 0.1\n"))
        out = websms(d, "ussd", "sim1", "*100#")
        assert out.returncode == 0, out.stderr
        assert out.stdout.strip() == "Saldo: 10,00 kr"
        (req,) = [q for q in web.requests if q["path"].endswith("sms_info.html")]
        assert req["form"]["line1"] == "1" and req["form"]["telnum"] == "*100#"
        missing = websms(d, "ussd", "nosuch", "*100#")
        assert missing.returncode == 1 and "sim1" in missing.stderr


# -- the SMS-server protocol (UDP) ------------------------------------------------------------


def udp_conf(port: int, extra: str = "") -> dict:
    return dict(goip=(
        f"udp_listen = 127.0.0.1:{port}\nkeepalive = 1\ndown_after = 3\nudp_resend = 0.5\n"
        "transport [sim2] = udp\ngoip_id [sim2] = goip2\ngoip_password [sim2] = linepass\n"
        "number [sim2] = +46701234568\n" + extra),
        daemon="retry_base = 1\nretry_max = 2\n")


@pytest.fixture
def udp_daemon(make_daemon):
    port = free_udp_port()
    d = make_daemon(**udp_conf(port))
    return d, ("127.0.0.1", port)


def test_a_udp_line_registers_and_its_sms_are_stored_once_before_the_answer(udp_daemon):
    d, server = udp_daemon
    with FakeGoIPLine(server, "goip2", "linepass", signal=21, resend_interval=0.3) as line:
        until(lambda: (line.keepalive(), line.keepalive_acks)[1], "a keepalive answer")
        assert line.keepalive_acks[0].startswith(b"reg:")
        r = wait_state(d, "sim2", "up")
        assert r["info"]["signal"] == 21 and "-71 dBm" in r["detail"]
        text = "Hej 👋; msg:with;semicolons"
        recvid = line.sms("+46709876543", text)
        assert line.wait_acked("RECEIVE", recvid)
        assert calls(d, 1) == [{"to": "+46701234568", "from": "+46709876543", "body": text}]
        line.sms("+46709876543", text, recvid=recvid)  # our answer was lost: sent again
        assert line.wait_for(lambda: len(line.acks[("RECEIVE", recvid)]) >= 2)
        time.sleep(0.3)
        assert len(d.callfiles()) == 1
    with FakeGoIPLine(server, "goip2", "guessed", resend_interval=0.3, max_resends=1) as bad:
        recvid = bad.sms("+1555", "forged")
        assert not bad.wait_acked("RECEIVE", recvid, timeout=1.0)
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM).sendto(b"\x00\xffgarbage", server)
    info = until(lambda: (lambda r: r if r["info"]["bad_password"] >= 2 else None)(
        row(d, "sim2")), "the wrong passwords counted")["info"]
    assert "wrong password" in row(d, "sim2")["detail"]
    listener = next(c for c in status(d)["channels"] if c["name"].startswith("udp "))
    assert listener["info"]["bad_password"] >= 2 and listener["info"]["garbage"] >= 1
    assert len(d.callfiles()) == 1 and info["received"] == 1


def test_sent_through_a_udp_line_then_its_delivery_report(udp_daemon):
    d, server = udp_daemon
    with FakeGoIPLine(server, "goip2", "linepass", keepalive_interval=0.5) as line:
        wait_state(d, "sim2", "up")
        r = send(d, "+46701112233", "Hej från PBX:en", "sim2")
        assert r["status"] == "SENT", r
        (sent,) = line.wait_sent(1)
        assert (sent["number"], sent["text"]) == ("+46701112233", "Hej från PBX:en")
        assert message(d, r["id"])[2] == str(sent["sms_no"])
        recvid = line.report(str(sent["sms_no"]), "0", "+46701112233")
        assert line.wait_acked("DELIVER", recvid)
        until(lambda: message(d, r["id"])[0] == "delivered", "delivered")


def test_a_silent_line_pauses_its_route_until_it_comes_back(udp_daemon):
    d, server = udp_daemon
    r = api_json(d.api_url + "/api/send", {"to": "+46701112233", "from": "+1", "body": "later",
                                           "interface": "sim2", "wait": 1})
    assert r["status"] == "QUEUED"
    assert "has not registered" in route(d, "goip:sim2")["down"]
    assert message(d, r["id"])[:2] == ("queued", 0)
    with FakeGoIPLine(server, "goip2", "linepass", keepalive_interval=0.5) as line:
        (sent,) = line.wait_sent(1, timeout=WAIT)
        assert sent["text"] == "later"
        until(lambda: message(d, r["id"])[0] == "sent", "sent")
        assert message(d, r["id"])[1] == 1
    until(lambda: route(d, "goip:sim2")["down"], "down without keepalives")
    assert "no keepalive" in wait_state(d, "sim2", "down")["detail"]


def test_ussd_through_a_udp_line(udp_daemon):
    d, server = udp_daemon
    with FakeGoIPLine(server, "goip2", "linepass", keepalive_interval=0.5,
                      ussd_answers={"*100#": "Your balance is 5 EUR"}) as line:
        wait_state(d, "sim2", "up")
        out = websms(d, "ussd", "sim2", "*100#")
        assert out.returncode == 0, out.stderr
        assert out.stdout.strip() == "Your balance is 5 EUR"
        assert line.ussd_requests == ["*100#"]
        r = api_json(d.api_url + "/api/ussd", {"interface": "sim2", "code": "*100#"})
        assert r == {"interface": "sim2", "code": "*100#", "reply": "Your balance is 5 EUR"}
        bad = websms(d, "ussd", "sim2", "*999#")
        assert bad.returncode == 1 and "unknown code" in bad.stderr


def test_sigkill_between_a_receive_and_its_answer_loses_nothing(make_daemon):
    port = free_udp_port()
    d = make_daemon(**udp_conf(port))
    server = ("127.0.0.1", port)
    with FakeGoIPLine(server, "goip2", "linepass", keepalive_interval=0.5, resend_interval=0.5,
                      max_resends=60) as line:
        wait_state(d, "sim2", "up")
        ids = [line.sms("+46709876543", f"sms {i}") for i in range(30)]
        until(lambda: any(line.acks.get(("RECEIVE", i)) for i in ids), "a first answer")
        d.kill()
        d.start()
        for recvid in ids:
            assert line.wait_acked("RECEIVE", recvid, timeout=WAIT)
        calls(d, 30)
        time.sleep(0.5)
        bodies = sorted(fields(f)["body"] for f in d.callfiles())
        assert bodies == sorted(f"sms {i}" for i in range(30))


# -- the web API --------------------------------------------------------------------------------


def web_conf(url: str, password: str = "webpw") -> dict:
    return dict(goip=(
        f"http_url = {url}\nhttp_password = {password}\nhttp_poll = 0.1\nhttp_deadline = 5\n"
        "transport [sim3] = http\nchannel [sim3] = 3\nnumber [sim3] = +46701234569\n"),
        daemon="retry_base = 1\nretry_max = 2\nagi_wait = 1\n")


def test_sent_through_the_web_api_one_at_a_time(make_daemon):
    with FakeGoIPWeb(password="webpw", answer_form="colon", polls_until_done=2) as web:
        d = make_daemon(**web_conf(web.url))
        first = send(d, "+46701112233", "första", "sim3", wait=10)
        second = send(d, "+46701112234", "andra", "sim3", wait=10)
        assert first["status"] == second["status"] == "SENT", (first, second)
        assert [(s["line"], s["number"], s["text"]) for s in web.sent] == [
            (3, "+46701112233", "första"), (3, "+46701112234", "andra")]
        assert message(d, first["id"])[2] == web.sent[0]["smskey"]
        assert not any("busy" in str(q) for q in web.requests)
        r = wait_state(d, "sim3", "ok")
        assert "web API line 3" in r["detail"]


def test_a_wrong_web_password_pauses_the_route(make_daemon):
    with FakeGoIPWeb(password="webpw") as web:
        d = make_daemon(**web_conf(web.url, password="nope"))
        r = api_json(d.api_url + "/api/send", {"to": "+46701112233", "from": "+1",
                                               "body": "x", "interface": "sim3", "wait": 2})
        assert r["status"] == "QUEUED", r
        down = until(lambda: route(d, "goip:sim3")["down"], "the route down")
        assert "user and password" in down
        assert message(d, r["id"])[:2] == ("queued", 0)
        assert wait_state(d, "sim3", "down") and web.sent == []
