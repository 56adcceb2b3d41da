"""The status listener's Site is built with its first connection (websmsd.http.ondemand):
twisted.web.server and the pages are not in a daemon nobody has looked at yet."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

from twisted.internet.address import IPv4Address
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.testing import StringTransport
from twisted.logger import globalLogPublisher

from websmsd.http.ondemand import OnFirstConnection

ROOT = Path(__file__).resolve().parent.parent
ADDR = IPv4Address("TCP", "127.0.0.1", 40000)


class Counting(Factory):
    protocol = Protocol

    def __init__(self):
        self.starts = self.stops = 0

    def doStart(self):
        self.starts += 1

    def doStop(self):
        self.stops += 1


def test_nothing_is_built_until_the_first_connection_then_once():
    built = []

    def build():
        built.append(Counting())
        return built[-1]

    lazy = OnFirstConnection(build, "status page")
    lazy.doStart()
    lazy.doStart()  # two listeners (IPv4 and IPv6, say)
    assert built == []
    assert lazy.logPrefix() == "status page"
    assert lazy.acceptableProtocols() == [b"http/1.1"]
    first = lazy.buildProtocol(ADDR)
    second = lazy.buildProtocol(ADDR)
    assert len(built) == 1 and lazy.factory is built[0]
    assert isinstance(first, Protocol) and first.factory is built[0] and second is not first
    # The real factory counts both listeners, as if it had listened from the start.
    assert built[0].starts == 2
    lazy.doStop()
    lazy.doStop()
    assert built[0].stops == 2


def test_a_listener_stopped_before_any_connection_builds_nothing():
    built = []
    lazy = OnFirstConnection(lambda: built.append(1) or Counting())
    lazy.doStart()
    lazy.doStop()
    assert built == [] and lazy.factory is None


def test_a_failed_build_answers_503_and_is_tried_again():
    calls = []
    events = []

    def build():
        calls.append(1)
        if len(calls) == 1:
            raise FileNotFoundError("the status page's files (web/) are missing")
        return Counting()

    lazy = OnFirstConnection(build, "status page")
    lazy.doStart()
    globalLogPublisher.addObserver(events.append)
    try:
        refused = lazy.buildProtocol(ADDR)
    finally:
        globalLogPublisher.removeObserver(events.append)
    assert lazy.factory is None
    # That connection gets a 503 once its request's head is in, then the close.
    transport = StringTransport()
    refused.makeConnection(transport)
    refused.dataReceived(b"GET / HTTP/1.1\r\nHost: pbx\r\n")
    assert transport.value() == b""
    refused.dataReceived(b"\r\n")
    assert transport.value().startswith(b"HTTP/1.1 503 Service Unavailable\r\n")
    assert transport.value().endswith(b"\r\n\r\n" + refused.BODY)
    assert transport.disconnecting
    assert any(e.get("log_failure") is not None and "web/" in str(e["log_failure"].value)
               for e in events)
    assert isinstance(lazy.buildProtocol(ADDR), Protocol)
    assert len(calls) == 2 and lazy.factory.starts == 1


def test_the_wired_daemon_imports_no_twisted_web_server_until_the_page_is_asked_for(tmp_path):
    # A fresh interpreter: the test process has imported everything already.
    conf = tmp_path / "websms.conf"
    conf.write_text(textwrap.dedent(f"""\
        [websms]
        [websmsd]
        [astqueue]
        outgoingdir = {tmp_path}/outgoing
        stagingdir = {tmp_path}/staging
        [daemon]
        store = {tmp_path}/websmsd.sqlite3
        webhook_listen = "tcp:0:interface=127.0.0.1"
        agi_listen = "tcp:0:interface=127.0.0.1"
        status_listen = "tcp:0:interface=127.0.0.1"
        """))
    (tmp_path / "outgoing").mkdir()
    (tmp_path / "staging").mkdir()
    script = textwrap.dedent(f"""\
        import json, sys
        from twisted.internet import reactor
        from websmsd.config import load
        from websmsd.service import make_service
        top = make_service(load({str(conf)!r}), reactor)
        top.privilegedStartService()
        top.startService()
        def heavy():
            return sorted(m for m in sys.modules
                          if m in ("twisted.web.server", "twisted.spread.pb",
                                   "websmsd.http.status", "websmsd.http.pages"))
        before = heavy()
        port = [s for s in top if s.name.startswith("status_listen")][0]._waitingForPort.result
        host = port.getHost()
        def ask():
            from twisted.internet import threads
            import urllib.request
            url = "http://127.0.0.1:%d/" % host.port
            return threads.deferToThread(lambda: urllib.request.urlopen(url, timeout=10).status)
        def done(status):
            print(json.dumps({{"before": before, "after": heavy(), "status": status}}))
            top.stopService().addBoth(lambda _: reactor.stop())
        def failed(f):
            print(json.dumps({{"error": str(f.value)}}))
            reactor.stop()
        reactor.callWhenRunning(lambda: ask().addCallbacks(done, failed))
        reactor.run()
        """)
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                       cwd=str(ROOT), timeout=120,
                       env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin",
                            "WEBSMSD_WEB": str(ROOT / "web")})
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out.get("error") is None, out
    assert out["before"] == []
    assert out["status"] in (200, 401)
    assert "twisted.web.server" in out["after"] and "websmsd.http.status" in out["after"]
