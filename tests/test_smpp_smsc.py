"""SMPPBind against an independent SMSC that plays a GoIP (tests/peers/goip-smsc, on the
npm package `smpp`), over loopback TCP with the real reactor (driven by iterate()).

Needs node and the peer's packages: `npm ci --prefix tests/peers/goip-smsc`.
"""

import gc
import json
import queue
import shutil
import subprocess
import threading
import time
from pathlib import Path

import pytest
from twisted.internet import defer
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.logger import globalLogPublisher

from websmsd import sms
from websmsd.smpp import pdu as P
from websmsd.smpp import receipt as R
from websmsd.smpp.esme import DeliverRefused, SMPPBind

ROOT = Path(__file__).resolve().parent.parent
PEER = ROOT / "tests" / "peers" / "goip-smsc"
NODE = shutil.which("node")
WAIT = 20.0  # a guard against hanging, not a timing claim

pytestmark = [
    pytest.mark.skipif(NODE is None, reason="node is not installed (the GoIP SMSC peer is "
                                            "a node program)"),
    pytest.mark.skipif(not (PEER / "node_modules" / "smpp").is_dir(),
                       reason="the SMSC peer's packages are missing: "
                              "npm ci --prefix tests/peers/goip-smsc"),
]


def reactor():
    from twisted.internet import reactor as r
    return r


def spin(until, what, timeout=WAIT):
    deadline = time.monotonic() + timeout
    while not until():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        reactor().iterate(0.01)


class SMSC:
    """The node SMSC in a subprocess; its events are read by a thread into a queue."""

    def __init__(self, password="secret"):
        self.proc = subprocess.Popen(
            [NODE, str(PEER / "smsc.js"), "--port", "0", "--password", password],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True, encoding="utf-8", cwd=PEER)
        self.queue = queue.Queue()
        self.events = []     # everything seen, in order
        self.unread = []
        threading.Thread(target=self._read, daemon=True).start()
        self.port = self.wait("listening")["port"]

    def _read(self):
        for line in self.proc.stdout:
            self.queue.put(json.loads(line))

    def _drain(self):
        while True:
            try:
                ev = self.queue.get_nowait()
            except queue.Empty:
                return
            self.events.append(ev)
            self.unread.append(ev)

    def wait(self, event, timeout=WAIT, **match):
        """The next unread event named ``event`` whose fields match ``match``."""
        found = []

        def ready():
            self._drain()
            for ev in self.unread:
                if ev["event"] == event and all(ev.get(k) == v for k, v in match.items()):
                    self.unread.remove(ev)
                    found.append(ev)
                    return True
            return False

        try:
            spin(lambda: self.check() or ready(), f"SMSC event {event} {match}", timeout)
        except AssertionError:
            raise AssertionError(f"no {event} {match}; SMSC said: {self.events}") from None
        return found[0]

    def check(self):
        """Fails the test with the SMSC's own words when it has died."""
        if self.proc.poll() is not None:
            raise AssertionError(f"the SMSC exited ({self.proc.returncode}): "
                                 f"{self.proc.stderr.read()}")
        return False

    def count(self, event, **match):
        self._drain()
        return sum(1 for ev in self.events if ev["event"] == event and
                   all(ev.get(k) == v for k, v in match.items()))

    def command(self, **cmd):
        self.proc.stdin.write(json.dumps(cmd) + "\n")
        self.proc.stdin.flush()
        if cmd["cmd"] != "quit":
            self.wait("sent", cmd=cmd["cmd"])

    def close(self):
        try:
            self.command(cmd="quit")
            self.proc.wait(timeout=5)
        except Exception:
            self.proc.kill()
            self.proc.wait()
        self.proc.stdout.close()
        self.proc.stderr.close()


class Client:
    """One SMPPBind to the SMSC, recording what it is handed."""

    def __init__(self, smsc, system_id="goip01", password="secret", **kw):
        self.smsc = smsc
        self.delivered = []
        self.states = []
        self.refuse = False
        kw.setdefault("enquire_link", 5.0)
        kw.setdefault("response_timeout", 2.0)
        kw.setdefault("retry_policy", lambda n: 0.1)
        self.bind = SMPPBind(reactor(), TCP4ClientEndpoint(reactor(), "127.0.0.1", smsc.port),
                             system_id, password, on_deliver=self.on_deliver,
                             on_state=lambda s, d: self.states.append((s, d)), **kw)
        self.bind.startService()

    def on_deliver(self, pdu):
        if self.refuse:
            return defer.fail(DeliverRefused(P.ESME_RX_T_APPN, "store unavailable"))
        self.delivered.append(pdu)
        return defer.succeed(None)

    def wait_for(self, until, what):
        try:
            spin(lambda: self.smsc.check() or until(), what)
        except AssertionError as e:
            raise AssertionError(f"{e} (states: {self.states})") from None

    def wait_bound(self):
        self.wait_for(lambda: self.bind.state == "bound", f"{self.bind.system_id} bound")

    def result(self, d):
        box = []
        d.addBoth(box.append)
        self.wait_for(lambda: box, "a result")
        return box[0]

    def stop(self):
        self.result(self.bind.stopService())


@pytest.fixture
def smsc():
    s = SMSC()
    yield s
    s.close()


@pytest.fixture
def clients():
    made = []
    seen = []

    def observer(event):
        if "log_failure" in event:
            seen.append(event["log_failure"])

    globalLogPublisher.addObserver(observer)
    yield made
    for c in made:
        if c.bind.running:
            c.stop()
    gc.collect()
    globalLogPublisher.removeObserver(observer)
    assert seen == [], [f.getTraceback() for f in seen]
    # nothing of ours is left scheduled on the global reactor
    assert [c for c in reactor().getDelayedCalls()
            if "websmsd" in repr(c) or "ClientService" in repr(c)] == []


def client(clients, smsc, **kw):
    c = Client(smsc, **kw)
    clients.append(c)
    return c


# -- bind -----------------------------------------------------------------------------------


def test_per_sim_binds_accept_nul_less_bind_resp(smsc, clients):
    one = client(clients, smsc, system_id="goip01")
    two = client(clients, smsc, system_id="goip02")
    one.wait_bound()
    two.wait_bound()
    for c, sim in ((one, "goip01"), (two, "goip02")):
        ev = smsc.wait("bind", system_id=sim)
        assert ev["command"] == "bind_transceiver" and ev["interface_version"] == 0x34
        raw = bytes.fromhex(ev["resp"])
        assert raw[16:] == sim.encode() and len(raw) == 16 + len(sim)   # no NUL
        assert c.bind.peer_system_id == sim


def test_wrong_password_is_bind_failed(smsc, clients):
    c = client(clients, smsc, password="wrong")
    c.wait_for(lambda: c.bind.state == "bind failed", "bind failed")
    assert c.bind.detail.startswith("check system_id/password (status 0x0000000E")
    assert smsc.wait("bind", system_id="goip01")["status"] == P.ESME_RINVPASWD
    unknown = client(clients, smsc, system_id="goip99")
    unknown.wait_for(lambda: unknown.bind.state == "bind failed", "bind failed")
    assert "0x0000000F" in unknown.bind.detail


# -- inbound --------------------------------------------------------------------------------


def test_deliver_ucs2_gsm_two_part_udh_and_message_payload(smsc, clients):
    c = client(clients, smsc)
    c.wait_bound()
    smsc.command(cmd="deliver", sim="goip01", text="Привет 😀 мир", coding="ucs2")
    smsc.command(cmd="deliver", sim="goip01", text="Hello {world} €5 @home_", coding="gsm")
    long_text = "Длинное сообщение из двух частей 😀 " * 2
    smsc.command(cmd="deliver", sim="goip01", text=long_text, coding="ucs2", mode="udh",
                 ref=42, order=[2, 1])
    payload_text = "Весь текст в message_payload, как у GoIP. " * 8
    smsc.command(cmd="deliver", sim="goip01", text=payload_text, coding="ucs2",
                 mode="payload")
    for _ in range(5):
        assert smsc.wait("deliver_sm_resp")["status"] == 0
    texts = [P.deliver_text(p) for p in c.delivered]
    assert texts[0] == ("Привет 😀 мир", None)
    assert texts[1] == ("Hello {world} €5 @home_", None)
    assert c.delivered[0]["destination_addr"] == "goip01"
    assert c.delivered[0]["source_addr"] == "+15550001000"
    assembler = sms.Reassembler()
    done = []
    for pdu, (text, concat) in zip(c.delivered[2:4], texts[2:4]):
        assert concat is not None and concat.ref == 42 and concat.total == 2
        done += assembler.add((pdu["source_addr"], pdu["destination_addr"], concat.ref),
                              concat.total, concat.seq, text, now=0)
    assert [(m.text, m.complete) for m in done] == [(long_text, True)]
    assert c.delivered[4]["short_message"] == b""
    assert texts[4] == (payload_text, None)


def test_deliver_not_taken_is_answered_with_an_error(smsc, clients):
    c = client(clients, smsc)
    c.wait_bound()
    c.refuse = True
    smsc.command(cmd="deliver", sim="goip01", text="later please", coding="gsm")
    assert smsc.wait("deliver_sm_resp")["status"] == P.ESME_RX_T_APPN
    c.refuse = False
    smsc.command(cmd="deliver", sim="goip01", text="now", coding="gsm")
    assert smsc.wait("deliver_sm_resp")["status"] == 0
    assert [P.deliver_text(p)[0] for p in c.delivered] == ["now"]


# -- outbound and receipts ------------------------------------------------------------------


def test_submits_as_the_smsc_reads_them_and_receipts(smsc, clients):
    c = client(clients, smsc)
    c.wait_bound()
    gsm_text = "Hello {world} €"
    ucs_text = "Привет 😀"
    long_text = "Длинный текст для GoIP. " * 10
    results = []
    for text in (gsm_text, ucs_text, long_text):
        (fields,) = P.submits_for("+15551234567", text)
        results.append(c.result(c.bind.submit(fields)))
    seen = [smsc.wait("submit_sm") for _ in range(3)]
    assert [(s["destination_addr"], s["dest_addr_ton"], s["source_addr_ton"],
             s["source_addr"], s["registered_delivery"]) for s in seen] == [
        ("15551234567", 1, 5, "", 1)] * 3
    assert (seen[0]["data_coding"], seen[0]["text"]) == (0, gsm_text)
    assert (seen[1]["data_coding"], seen[1]["text"]) == (8, ucs_text)
    assert (seen[2]["data_coding"], seen[2]["payload_text"]) == (8, long_text)
    assert [r.status for r in results] == [0, 0, 0]
    assert [r.message_id for r in results] == [s["message_id"] for s in seen]

    # GoIP-style text receipt with the id in decimal; the resp gave it in hex
    first = results[0].message_id
    smsc.command(cmd="receipt", sim="goip01", id=str(int(first, 16)), stat="DELIVRD")
    assert smsc.wait("deliver_sm_resp", label="receipt")["status"] == 0
    rec = R.parse_receipt(c.delivered[-1])
    assert rec.state == "delivered" and rec.raw_stat == "DELIVRD"
    assert rec.message_id == str(int(first, 16)) and R.ids_match(first, rec.message_id)
    assert rec.fields["text"] == "hello"
    # receipt in TLVs
    smsc.command(cmd="receipt", sim="goip01", id=results[1].message_id, stat="UNDELIV",
                 tlv=True)
    smsc.wait("deliver_sm_resp", label="receipt")
    rec = R.parse_receipt(c.delivered[-1])
    assert (rec.message_id, rec.state) == (results[1].message_id, "failed")
    # an ordinary SMS is no receipt
    smsc.command(cmd="deliver", sim="goip01", text="id:1 stat:DELIVRD", coding="gsm")
    smsc.wait("deliver_sm_resp")
    assert R.parse_receipt(c.delivered[-1]) is None


def test_udh_and_sar_submits(smsc, clients):
    c = client(clients, smsc)
    c.wait_bound()
    text = "Часть за частью, " * 10
    udh_fields = P.submits_for("15551234567", text, long_method="udh", ref=9)
    sar_fields = P.submits_for("15551234567", text, long_method="sar", ref=513)
    for f in udh_fields + sar_fields:
        assert c.result(c.bind.submit(f)).status == 0
    udh_seen = [smsc.wait("submit_sm") for _ in udh_fields]
    sar_seen = [smsc.wait("submit_sm") for _ in sar_fields]
    assert "".join(s["text"] for s in udh_seen) == text
    assert [s["udh"] for s in udh_seen] == [["0003090301"], ["0003090302"], ["0003090303"]]
    assert all(s["esm_class"] & 0x40 for s in udh_seen)
    assert "".join(s["text"] for s in sar_seen) == text
    assert [s["sar"] for s in sar_seen] == [[513, 3, 1], [513, 3, 2], [513, 3, 3]]


def test_throttling_is_a_result(smsc, clients):
    c = client(clients, smsc)
    c.wait_bound()
    smsc.command(cmd="throttle", n=2)
    (fields,) = P.submits_for("15551234567", "hi")
    ds = [c.bind.submit(fields) for _ in range(3)]
    results = [c.result(d) for d in ds]
    assert [r.status for r in results] == [P.ESME_RTHROTTLED, P.ESME_RTHROTTLED, 0]
    assert results[0].status_name == "ESME_RTHROTTLED" and results[0].message_id is None
    assert results[2].message_id


# -- the link -------------------------------------------------------------------------------


def test_dropped_connection_rebinds(smsc, clients):
    c = client(clients, smsc)
    c.wait_bound()
    smsc.wait("bind", system_id="goip01")
    smsc.command(cmd="drop", sim="goip01")
    c.wait_for(lambda: c.bind.state != "bound", "the drop to be seen")
    assert c.bind.state in ("disconnected", "connecting", "binding")
    smsc.wait("bind", system_id="goip01")
    c.wait_bound()
    (fields,) = P.submits_for("15551234567", "after the drop")
    assert c.result(c.bind.submit(fields)).status == 0
    assert any(s == "disconnected" for s, _ in c.states)


def test_unanswered_enquire_link_reconnects(smsc, clients):
    c = client(clients, smsc, enquire_link=0.3, response_timeout=0.5)
    c.wait_bound()
    smsc.wait("bind", system_id="goip01")
    assert smsc.wait("enquire_link")["answered"] is True
    smsc.command(cmd="mute", on=True)
    smsc.wait("enquire_link", answered=False)
    smsc.wait("bind", system_id="goip01")          # a new connection, bound again
    smsc.command(cmd="mute", on=False)
    c.wait_bound()
    assert any(s == "disconnected" and "enquire_link" in d for s, d in c.states)


def test_smsc_unbind_then_rebind(smsc, clients):
    c = client(clients, smsc)
    c.wait_bound()
    smsc.wait("bind", system_id="goip01")
    smsc.command(cmd="unbind", sim="goip01")
    smsc.wait("bind", system_id="goip01")
    c.wait_bound()
    assert any("unbound by the SMSC" in d for _, d in c.states)


def test_stop_unbinds(smsc, clients):
    c = client(clients, smsc)
    c.wait_bound()
    c.stop()
    assert smsc.wait("unbind")["system_id"] == "goip01"
    assert c.bind.state == "stopped"
