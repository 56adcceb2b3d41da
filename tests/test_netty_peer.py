"""websmsd's SMS Gateway for Android client against a Netty server (black-box).

The app's local server is Ktor 2.2.4 on Netty.  tests/peers/netty-smsgate/SmsGatePeer.java
plays it on Netty's own HTTP codec (HttpServerCodec, HttpObjectAggregator; HttpUtil's
keep-alive rule, the connection closed after the answer to a `Connection: close`
request; /inbox answered chunked, the rest with a Content-Length), emulating the app as
the project notes (../shared/android-gateways.md) describes it and as tests/phonepeers.py's FakeSMSGate
does.  Two levels, over real sockets on 127.0.0.1:

- the client: SMSGateClient on websmsd.http.oneshot.OneShot, built as
  websmsd.android.smsgate_channel builds it, with the real reactor in a child process
  (as tests/test_oneshot.py's loopback does);
- the daemon: `twistd -n websmsd` with an [smsgate] phone at the Netty peer.

Needs a JDK (javac, java) and Debian's libnetty-java (jars in /usr/share/java); skipped,
saying so, without them.  The peer is compiled once per module run.
"""

from __future__ import annotations

import base64
import datetime as _dt
import json
import os
import select
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any, Dict, List, Optional

import pytest

ROOT = Path(__file__).resolve().parent.parent
PEER_SOURCE = ROOT / "tests" / "peers" / "netty-smsgate" / "SmsGatePeer.java"
JARS = Path("/usr/share/java")
# Debian's libnetty-java splits Netty by module; the peer needs these five ...
NETTY_JARS = ("netty-common", "netty-buffer", "netty-transport", "netty-codec", "netty-codec-http")
# ... and Debian's netty-common refers to JCTools unshaded on some paths
# (libjctools-java, a dependency of libnetty-java).
OPTIONAL_JARS = ("jctools-core",)
WAIT = 20.0  # a guard against hanging, not a timing claim

USER = "sms"
# Ktor decodes Basic credentials as UTF-8 and splits them at the first ':'.
PASSWORD = "Zx8_q!2p:ü✓"


# ---------------------------------------------------------------------------------------
# The peer
# ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def peer_classpath(tmp_path_factory) -> str:
    """The compiled peer and Netty's jars, as a class path; skips without a JDK or Netty."""
    java, javac = shutil.which("java"), shutil.which("javac")
    if java is None or javac is None:
        pytest.skip("no JDK (javac and java): the Netty peer is a Java program "
                    "(apt-get install openjdk-17-jdk-headless)")
    missing = [name for name in NETTY_JARS if not (JARS / f"{name}.jar").is_file()]
    if missing:
        pytest.skip(f"Netty's jars are missing ({', '.join(missing)} in {JARS}): "
                    "apt-get install libnetty-java")
    jars = [str(JARS / f"{name}.jar") for name in NETTY_JARS + OPTIONAL_JARS
            if (JARS / f"{name}.jar").is_file()]
    out = tmp_path_factory.mktemp("netty-peer-classes")
    done = subprocess.run([javac, "-encoding", "UTF-8", "-nowarn", "-cp", os.pathsep.join(jars),
                           "-d", str(out), str(PEER_SOURCE)],
                          capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, f"javac failed:\n{done.stdout}\n{done.stderr}"
    return os.pathsep.join([str(out)] + jars)


class NettyPeer:
    """SmsGatePeer in a JVM: its port, its control routes, the requests it recorded."""

    def __init__(self, classpath: str, directory: Path, user: str = USER,
                 password: str = PASSWORD) -> None:
        self.user, self.password = user, password
        self.log_path = directory / "requests.jsonl"
        self.err_path = directory / "peer-stderr.txt"
        self._err = open(self.err_path, "wb")
        secret = base64.b64encode(password.encode("utf-8")).decode("ascii")
        self.proc = subprocess.Popen(
            [shutil.which("java") or "java", "-XX:TieredStopAtLevel=1", "-XX:+UseSerialGC",
             "-Xss512k", "-cp", classpath, "SmsGatePeer", "--user", user,
             "--password-b64", secret, "--log", str(self.log_path)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._err, cwd=str(directory))
        try:
            ready, _, _ = select.select([self.proc.stdout], [], [], WAIT)
            line = self.proc.stdout.readline() if ready else b""
            if not line.strip().isdigit():
                raise AssertionError(f"the Netty peer did not start: {line!r}\n{self.stderr()}")
            self.port = int(line)
        except BaseException:
            self.close()
            raise

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stderr(self) -> str:
        self._err.flush()
        return self.err_path.read_text(errors="replace")[-3000:]

    # -- the test's control routes (no credentials, not logged) --------------------------

    def control(self, path: str, payload: Optional[dict] = None) -> Any:
        data = None if payload is None else json.dumps(payload).encode("utf-8")
        req = urllib.request.Request(self.url + path, data=data, method="GET" if data is None else "POST")
        with urllib.request.urlopen(req, timeout=10) as r:
            return json.load(r)

    def receive(self, sender: str, text: str, created_ms: int, **extra: Any) -> dict:
        """The phone receives an SMS: a row of its inbox."""
        return self.control("/_test/receive", dict(sender=sender, text=text, createdAt=created_ms, **extra))

    def set_state(self, message_id: str, state: str, error: Optional[str] = None) -> dict:
        return self.control("/_test/state", {"id": message_id, "state": state, "error": error})

    def messages(self) -> Dict[str, dict]:
        return {m["id"]: m for m in self.control("/_test/messages")}

    # -- what it recorded ----------------------------------------------------------------

    def log(self) -> List[dict]:
        if not self.log_path.exists():
            return []
        return [json.loads(line) for line in self.log_path.read_text("utf-8").splitlines() if line]

    def requests(self) -> List[dict]:
        return [line for line in self.log() if "event" not in line]

    def closed(self) -> Dict[str, int]:
        """connection id -> requests it carried, for the connections closed so far."""
        return {line["conn"]: line["requests"] for line in self.log() if line.get("event") == "closed"}

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                self.proc.stdin.close()  # the peer ends when stdin closes
                self.proc.wait(timeout=5)
            except (OSError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait()
        for stream in (self.proc.stdin, self.proc.stdout):
            if stream is not None and not stream.closed:
                stream.close()
        self._err.close()


@pytest.fixture
def start_peer(peer_classpath, tmp_path):
    """start_peer() -> a running NettyPeer, killed after the test."""
    peers: List[NettyPeer] = []

    def start(**kw: Any) -> NettyPeer:
        directory = tmp_path / f"peer{len(peers)}"
        directory.mkdir()
        peer = NettyPeer(peer_classpath, directory, **kw)
        peers.append(peer)
        return peer

    yield start
    for peer in peers:
        peer.close()


def header(request: dict, name: str) -> List[str]:
    """The values of one header of a recorded request (names as the client sent them)."""
    return [v for k, v in request["headers"] if k.lower() == name.lower()]


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode("utf-8")).decode("ascii")


def route_of(target: str) -> str:
    path = target.split("?")[0]
    return "/message/{id}" if path.startswith("/message/") else path


def wait_closed(peer: NettyPeer, conns: List[str]) -> Dict[str, int]:
    deadline = time.monotonic() + WAIT
    while True:
        closed = peer.closed()
        if all(c in closed for c in conns) or time.monotonic() > deadline:
            return closed
        time.sleep(0.02)


# ---------------------------------------------------------------------------------------
# The peer itself: Netty's bytes on the wire, and the app's answers
# ---------------------------------------------------------------------------------------


def raw_exchange(port: int, request: bytes) -> bytes:
    import socket

    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(request)
        out = b""
        while True:
            data = s.recv(65536)
            if not data:
                return out
            out += data


def test_the_peer_answers_as_the_app_with_nettys_framing(start_peer):
    """What websmsd's client meets below: Netty's lower-case header names, `connection:
    close` and the close after the answer, a chunked /inbox, 401 with no body."""
    peer = start_peer()
    auth = basic(USER, PASSWORD)
    peer.receive("+254722000111", "x", int(time.time() * 1000) - 1000)
    answer = raw_exchange(peer.port, b"GET /inbox?limit=1 HTTP/1.1\r\nHost: phone\r\n"
                          b"Authorization: " + auth.encode() + b"\r\nConnection: close\r\n\r\n")
    head, _, body = answer.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    assert lines[0] == b"HTTP/1.1 200 OK"
    assert b"transfer-encoding: chunked" in lines and b"connection: close" in lines
    assert b"Content-Type: application/json; charset=UTF-8" in lines and b"X-Total-Count: 1" in lines
    assert body.endswith(b"\r\n0\r\n\r\n") and body.count(b"\r\n") > 4  # several chunks
    answer = raw_exchange(peer.port, b"GET /inbox HTTP/1.1\r\nHost: phone\r\nConnection: close\r\n\r\n")
    assert answer == (b'HTTP/1.1 401 Unauthorized\r\nWWW-Authenticate: Basic realm="Access to SMS Gateway", '
                      b'charset="UTF-8"\r\ncontent-length: 0\r\nconnection: close\r\n\r\n')
    for body, status, message in ((b'{"phoneNumbers": ["+1"], "textMessage": {"text": ""}}', 400,
                                   "Text message is empty"),
                                  (b'{"phoneNumbers": [], "textMessage": {"text": "x"}}', 400,
                                   "phoneNumbers is empty")):
        answer = raw_exchange(peer.port, b"POST /messages HTTP/1.1\r\nHost: phone\r\nAuthorization: "
                              + auth.encode() + b"\r\nContent-Type: application/json\r\n"
                              + b"Content-Length: %d\r\nConnection: close\r\n\r\n" % len(body) + body)
        head, _, rest = answer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 %d " % status) and json.loads(rest) == {"message": message}
    # A `+` in a query value is a space (Ktor and Netty alike): the offset must be %2B.
    for offset, status in ((b"%2B07:00", b"200"), (b"+07:00", b"400")):
        answer = raw_exchange(peer.port, b"GET /inbox?from=2026-01-01T00:00:00.000" + offset
                              + b" HTTP/1.1\r\nHost: phone\r\nAuthorization: " + auth.encode()
                              + b"\r\nConnection: close\r\n\r\n")
        assert answer.startswith(b"HTTP/1.1 " + status), answer[:200]


# ---------------------------------------------------------------------------------------
# The client (SMSGateClient on OneShot), real reactor, in a child process
# ---------------------------------------------------------------------------------------

TEXT = 'Hello Netty ✓ "quoted" <&> = \\ ünï 😀\nline two'
INBOX_TEXT = "one \"quoted\" <&> ' ✓ 😀\nline two"


def test_the_client_against_netty(start_peer, tmp_path):
    peer = start_peer()
    t0 = (int(time.time()) - 3600) * 1000  # an hour ago: under the inbox's default `to`
    rows = [("+254722000100", "zero", 0, {}), ("+254722000101", INBOX_TEXT, 1000, {}),
            ("M-PESA", "two", 2000, {}), ("+254722000103", "three", 3000, {}),
            ("+254722000104", "four", 4000, {"recipient": "+254700000003", "simNumber": 2})]
    for sender, text, delta, extra in rows:
        peer.receive(sender, text, t0 + delta, **extra)
    peer.receive("+254722000199", "00ff", t0 + 2500, type="DATA_SMS")  # not an SMS: left out
    config = tmp_path / "client.json"
    config.write_text(json.dumps({"url": peer.url, "user": USER, "password": PASSWORD, "t0": t0,
                                  "text": TEXT}), encoding="utf-8")
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.run([sys.executable, os.path.abspath(__file__), "--netty-client", str(config)],
                          capture_output=True, timeout=90, env=env, cwd=str(ROOT))
    assert proc.returncode == 0, proc.stderr.decode(errors="replace")[-3000:] + peer.stderr()
    out = json.loads(proc.stdout.decode().strip().splitlines()[-1])

    # /health: no credentials needed; the app's report read.
    assert out["health"] == {"reachable": True, "http_status": 200, "status": "pass", "version": "1.68.0",
                             "checks": [["battery:level", "pass", "80"], ["connection:status", "pass", "1"]]}
    assert out["bad_health"]["reachable"] and out["bad_health"]["status"] == "pass"
    # Sending: 202, then the same id again: 409, which the client takes as "had it".
    assert out["send"] == {"ok": True, "permanent": False, "down": False, "status": 202,
                           "provider_id": "ws-netty-1", "reason": "HTTP 202: the phone took it"}
    assert out["again"] == {"ok": True, "permanent": False, "down": False, "status": 409,
                            "provider_id": "ws-netty-1", "reason": "HTTP 409: the phone already has this id"}
    assert out["send2"]["ok"] and out["send2"]["status"] == 202
    stored = peer.messages()
    assert list(stored) == ["ws-netty-1", "ws-netty-2"]  # once each: the 409 stored nothing
    assert stored["ws-netty-1"]["textMessage"]["text"] == TEXT
    assert stored["ws-netty-1"]["recipients"][0]["phoneNumber"] == "+254711000001"
    assert stored["ws-netty-1"]["withDeliveryReport"] is True and "simNumber" not in stored["ws-netty-1"]
    assert stored["ws-netty-2"]["simNumber"] == 2
    # States as they move on the phone; an unknown id is a 404 with an empty body.
    assert [s[:3] for s in out["states"]] == [
        [True, "Pending", "sending"], [True, "Sent", "sent"], [True, "Delivered", "delivered"],
        [True, "Failed", "failed"], [False, None, None]]
    pending = out["states"][0]
    assert pending[4] == [["+254711000001", "Pending", None]] and pending[5][0][0] == "Pending"
    assert pending[5][0][1].endswith("+07:00")  # the phone's time zone, with milliseconds
    failed = out["states"][3]
    assert failed[3] == "Send result: RESULT_ERROR_GENERIC_FAILURE (Generic failure cause)"
    # The inbox, page by page (newest first, X-Total-Count 5: the DATA_SMS is left out).
    assert out["pages"] == [[["four", "three"], 5], [["two", INBOX_TEXT], 5], [["zero"], 5]]
    four = out["first_entry"]
    assert four["sender"] == "+254722000104" and four["recipient"] == "+254700000003"
    assert four["sim_number"] == 2 and four["created_ms"] == t0 + 4000
    assert four["created_at"].endswith("+07:00") and four["id"].startswith("text:")
    # from/to with offsets (+07:00, +05:30: sent as %2B) and in UTC (Z).
    assert out["ranged"] == [["three", "two", INBOX_TEXT], 3]
    assert out["since_int"] == [["four", "three"], 2]
    # The daemon's reader over several small pages: every SMS once, oldest first.
    assert out["scan"]["new"] == ["zero", INBOX_TEXT, "two", "three", "four"]
    assert out["scan"]["complete"] and out["scan"]["requests"] > 1 and out["scan"]["late"] == 0
    assert out["rescan"]["new"] == [] and out["rescan"]["complete"]
    # Wrong password: 401 with an empty body is the route's credentials problem.
    assert out["bad_send"] == {"ok": False, "permanent": False, "down": True, "status": 401, "provider_id": None,
                               "reason": "HTTP 401: the phone refused the credentials (check user and password)"}
    for what in ("bad_state", "bad_inbox"):
        assert out[what] == {"status": 401, "down": True,
                             "reason": "HTTP 401: the phone refused the credentials"}, what

    # What the client saw of Netty's answers: the inbox chunked, the rest with a length.
    seen = out["answers"]
    assert {(a["method"], route_of(a["path"])) for a in seen} == {
        ("GET", "/health"), ("POST", "/message"), ("GET", "/message/{id}"), ("GET", "/inbox")}
    for a in seen:
        framing = a["headers"].get("transfer-encoding"), a["headers"].get("content-length")
        if a["path"].startswith("/inbox") and a["code"] == 200:
            assert framing == (["chunked"], None), a
        else:
            assert framing[0] is None and framing[1] == [str(a["length"])], a
        assert a["headers"]["connection"] == ["close"], a
        if a["code"] != 401 and a["length"]:
            assert a["headers"]["content-type"] == ["application/json; charset=UTF-8"], a
    assert [a for a in seen if a["code"] == 401] and all(
        a["length"] == 0 and a["headers"]["www-authenticate"] == [
            'Basic realm="Access to SMS Gateway", charset="UTF-8"'] for a in seen if a["code"] == 401)

    # What Netty received from the client: one request per connection, each closed.
    requests = peer.requests()
    assert len(requests) == len(seen)
    conns = [r["conn"] for r in requests]
    assert len(set(conns)) == len(conns)
    closed = wait_closed(peer, conns)
    assert all(closed.get(c) == 1 for c in conns), closed
    good, bad = basic(USER, PASSWORD), basic(USER, "wrong")
    for r in requests:
        assert r["version"] == "HTTP/1.1" and r["keepAlive"] is False
        assert header(r, "Host") == [f"127.0.0.1:{peer.port}"]
        assert header(r, "Connection") == ["close"]
        assert header(r, "Authorization") in ([good], [bad])
        assert header(r, "Accept") == ["application/json"] and header(r, "User-Agent") == ["websmsd"]
        if r["method"] == "POST":
            assert header(r, "Content-Type") == ["application/json"]
            assert header(r, "Content-Length") == [str(len(r["body"].encode("utf-8")))]
            assert r["uri"] == "/message"
        else:
            assert header(r, "Content-Type") == [] and header(r, "Content-Length") == []
            assert r["body"] == ""
    assert sum(header(r, "Authorization") == [bad] for r in requests) == 4  # health, send, state, inbox
    posted = [json.loads(r["body"]) for r in requests if r["method"] == "POST" and r["status"] == 202]
    assert posted[0] == {"id": "ws-netty-1", "textMessage": {"text": TEXT}, "phoneNumbers": ["+254711000001"],
                         "withDeliveryReport": True}
    inbox_uris = [r["uri"] for r in requests if r["uri"].startswith("/inbox")]
    assert any("%2B07%3A00" in u for u in inbox_uris) and any("%2B05%3A30" in u for u in inbox_uris)
    assert all("+" not in u for u in inbox_uris)
    assert "/message/no-such-id" in [r["uri"] for r in requests]


def _client_main(config_path: str) -> None:
    from twisted.internet import defer, reactor

    from websmsd.android.smsgate import SMSGateError
    from websmsd.android.smsgate_client import SMSGateClient
    from websmsd.android.smsgate_inbox import InboxReader, InboxState
    from websmsd.http.oneshot import OneShot

    config = json.loads(Path(config_path).read_text(encoding="utf-8"))
    base, t0, text = config["url"], config["t0"], config["text"]
    answers: List[dict] = []

    class Recording:
        """OneShot, with each answer's status and headers noted (the client gets the
        Answer itself, unchanged)."""

        def __init__(self, inner: Any) -> None:
            self.inner = inner

        def request(self, method: str, url: str, **kw: Any) -> Any:
            def seen(answer: Any) -> Any:
                answers.append({"method": method, "path": url[len(base):], "code": answer.code,
                                "length": len(answer.content),
                                "headers": {k.decode("latin-1").lower(): [v.decode("latin-1") for v in vs]
                                            for k, vs in answer.headers.getAllRawHeaders()}})
                return answer
            return self.inner.request(method, url, **kw).addCallback(seen)

    def client(password: str) -> SMSGateClient:
        # As websmsd.android.smsgate_channel makes it.
        requests = Recording(OneShot(reactor, max_body=4 * 1024 * 1024))
        return SMSGateClient(requests, base, config["user"], password, timeout=10.0, clock=reactor,
                             with_delivery_report=True, skip_phone_validation=False)

    def control(path: str, payload: dict) -> None:
        # Blocking, briefly: the peer is another process.
        req = urllib.request.Request(base + path, data=json.dumps(payload).encode(), method="POST")
        urllib.request.urlopen(req, timeout=10).read()

    def outcome(o: Any) -> dict:
        return {"ok": o.ok, "permanent": o.permanent, "down": o.down, "status": o.status,
                "provider_id": o.provider_id, "reason": o.reason}

    def state(s: Any) -> list:
        return [s.found, s.state, s.lifecycle, s.reason,
                [[r.phone_number, r.state, r.error] for r in s.recipients], [list(x) for x in s.states]]

    def page(p: Any) -> list:
        return [[e.text for e in p.entries], p.total]

    def error(e: SMSGateError) -> dict:
        return {"status": e.status, "down": e.down, "reason": e.reason}

    out: Dict[str, Any] = {"answers": answers}

    async def run() -> None:
        c = client(config["password"])
        h = await c.health()
        out["health"] = {"reachable": h.reachable, "http_status": h.http_status, "status": h.status,
                         "version": h.version, "checks": [list(x) for x in h.checks]}
        out["send"] = outcome(await c.send("ws-netty-1", "+254711000001", text))
        out["again"] = outcome(await c.send("ws-netty-1", "+254711000001", text))
        out["send2"] = outcome(await c.send("ws-netty-2", "+254711000002", "second", 2))
        states = [state(await c.state("ws-netty-1"))]
        for name in ("Sent", "Delivered"):
            control("/_test/state", {"id": "ws-netty-1", "state": name})
            states.append(state(await c.state("ws-netty-1")))
        control("/_test/state", {"id": "ws-netty-2", "state": "Failed",
                                 "error": "Send result: RESULT_ERROR_GENERIC_FAILURE (Generic failure cause)"})
        states.append(state(await c.state("ws-netty-2")))
        states.append(state(await c.state("no-such-id")))
        out["states"] = states
        pages = []
        for offset in (0, 2, 4):
            p = await c.inbox(limit=2, offset=offset)
            pages.append(page(p))
            if offset == 0:
                e = p.entries[0]
                out["first_entry"] = {"id": e.id, "sender": e.sender, "recipient": e.recipient,
                                      "sim_number": e.sim_number, "created_ms": e.created_ms,
                                      "created_at": e.created_at}
        out["pages"] = pages
        epoch = _dt.datetime(1970, 1, 1, tzinfo=_dt.timezone.utc)
        since = (epoch + _dt.timedelta(milliseconds=t0 + 1000)).astimezone(
            _dt.timezone(_dt.timedelta(hours=7)))
        until = (epoch + _dt.timedelta(milliseconds=t0 + 3000)).astimezone(
            _dt.timezone(_dt.timedelta(hours=5, minutes=30)))
        out["ranged"] = page(await c.inbox(since=since, until=until, limit=10))
        out["since_int"] = page(await c.inbox(since=t0 + 3000, limit=10))
        reader = InboxReader(page_size=2)
        scan = await c.poll_inbox(InboxState.start(t0), reader)
        out["scan"] = {"new": [e.text for e in scan.new], "complete": scan.complete,
                       "requests": scan.requests, "late": scan.late}
        rescan = await c.poll_inbox(scan.state, reader)
        out["rescan"] = {"new": [e.text for e in rescan.new], "complete": rescan.complete}

        bad = client("wrong")
        b = await bad.health()
        out["bad_health"] = {"reachable": b.reachable, "status": b.status}
        out["bad_send"] = outcome(await bad.send("ws-netty-3", "+254711000003", "nope"))
        for name, call in (("bad_state", lambda: bad.state("ws-netty-1")),
                           ("bad_inbox", lambda: bad.inbox(limit=5))):
            try:
                await call()
            except SMSGateError as e:
                out[name] = error(e)
            else:
                out[name] = "no error"

    def done(_: Any) -> None:
        print(json.dumps(out))
        reactor.stop()

    def failed(f: Any) -> None:
        print(f.getTraceback(), file=sys.stderr)
        reactor.stop()

    reactor.callWhenRunning(lambda: defer.ensureDeferred(run()).addCallbacks(done, failed))
    reactor.callLater(60, reactor.stop)
    reactor.run()
    if "rescan" not in out:
        sys.exit(1)


# ---------------------------------------------------------------------------------------
# The real daemon
# ---------------------------------------------------------------------------------------


def test_the_daemon_sends_follows_and_reads_the_inbox_of_a_netty_phone(make_daemon, start_peer):
    from test_daemon_android import callfile_vars, channel_row, gate_conf, message, now_ms, submit, wait_for

    peer = start_peer()
    d = make_daemon(smsgate=gate_conf(peer))  # url, user, password from the peer
    out = submit(d, "+254711000001", "Hello Netty ✓", "phone3")
    stored = wait_for(lambda: peer.messages().get(out), what="the phone got the SMS")
    assert stored["recipients"] == [{"phoneNumber": "+254711000001", "state": "Pending"}]
    assert stored["textMessage"] == {"text": "Hello Netty ✓"} and stored["withDeliveryReport"] is True
    wait_for(lambda: message(d, out)[0] == "sent", what="sent")
    peer.set_state(out, "Sent")
    time.sleep(0.5)  # a few polls: Sent is not final while a delivery report is asked for
    assert message(d, out)[0] == "sent"
    peer.set_state(out, "Delivered")
    wait_for(lambda: message(d, out)[0] == "delivered", what="delivered")
    peer.receive("+254722000111", "inbox ✓ one", now_ms())
    [f] = d.wait_callfiles(1)
    assert callfile_vars(f) == {"to": "+254700000003", "from": "+254722000111", "body": "inbox ✓ one"}
    d.kill()
    peer.receive("M-PESA", "while down", now_ms())
    d.start()
    files = d.wait_callfiles(2)
    time.sleep(1.0)  # several polls
    assert sorted(callfile_vars(f)["body"] for f in d.callfiles()) == ["inbox ✓ one", "while down"]
    assert len(files) == 2
    row = channel_row(d, "smsgate:phone3")
    assert row["state"] == "up" and row["info"]["version"] == "1.68.0"
    assert list(peer.messages()) == [out]  # posted once, across the kill

    # Every request of the daemon: its own connection, closed after one answer.
    requests = peer.requests()
    kinds = {(r["method"], r["uri"].split("?")[0]) for r in requests}
    assert {("GET", "/health"), ("POST", "/message"), ("GET", f"/message/{out}"), ("GET", "/inbox")} <= kinds
    conns = [r["conn"] for r in requests]
    assert len(set(conns)) == len(conns)
    closed = wait_closed(peer, conns[:-1])
    assert all(closed.get(c) == 1 for c in conns[:-1]), closed
    for r in requests:
        assert header(r, "Connection") == ["close"] and header(r, "Host") == [f"127.0.0.1:{peer.port}"]
        assert header(r, "Authorization") == [basic(USER, PASSWORD)]
        assert r["status"] in (200, 202), r
    assert any(r["chunked"] for r in requests if r["uri"].startswith("/inbox"))


if __name__ == "__main__" and sys.argv[1:2] == ["--netty-client"]:
    _client_main(sys.argv[2])
