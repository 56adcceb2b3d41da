"""Black-box tests: the real daemon (`twistd -n websmsd`) driven by real clients."""

import base64
import http.client
import json
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.parse
from pathlib import Path

import pytest

from blackbox import ROOT, FakeITSP, api_json, curl, free_port, status_and_body

FIXTURES = ROOT / "tests" / "fixtures" / "asterisk"


def test_form_webhook_becomes_exact_call_file(make_daemon):
    d = make_daemon(websmsd='resp_ack = "<Response></Response>"',
                    astqueue="channel_context = dp_entry_answer\ncontext = dp_entry_text_in\n"
                             'archive = "yes"')
    r = curl("-d", "To=%2B12025550160", "-d", "From=%2B15017122661",
             "--data-urlencode", "Body=Incoming message! 100% ;# ok\nline 2",
             d.webhook_url + "/")
    code, body = status_and_body(r)
    assert (code, body) == (200, "<Response></Response>")
    [f] = d.wait_callfiles(1)
    assert f.read_bytes() == (
        b"Channel: Local/+12025550160@dp_entry_answer\n"
        b'CallerID: "" <+15017122661>\n'
        b"WaitTime: 45\nMaxRetries: 0\nRetryTime: 300\n"
        b"Context: dp_entry_text_in\nExtension: +12025550160\nPriority: 1\nArchive: yes\n"
        b"setvar: MESSAGE(to)=+12025550160\n"
        b"setvar: MESSAGE(from)=+15017122661\n"
        b"setvar: MESSAGE(body)=Incoming%20message%21%20100%25%20%3B%23%20ok%0Aline%202\n"
        b"setvar: MESSAGE_ENCODE=rfc3986\n"
    )
    assert list(d.staging.iterdir()) == []
    # Recorded just after the rename into the spool.
    assert d.wait_rows("SELECT status, direction FROM messages", [("sent", "in")]) == [
        ("sent", "in")]


def test_json_and_get_webhooks(make_daemon):
    d = make_daemon()
    r = curl("-H", "Content-Type: application/json",
             "--data-binary", json.dumps({"data": {"To": "+111", "From": "+222", "Body": "json ✓"}}),
             d.webhook_url + "/")
    assert status_and_body(r)[0] == 200
    r = curl(d.webhook_url + "/?To=%2B333&From=%2B444&Body=get%20it")
    assert status_and_body(r)[0] == 200
    files = d.wait_callfiles(2)
    text = b"".join(f.read_bytes() for f in files)
    assert b"setvar: MESSAGE(body)=json%20%E2%9C%93\n" in text
    assert b"setvar: MESSAGE(body)=get%20it\n" in text


@pytest.mark.parametrize("field,value", [
    ("From", "+1501\nApplication: System\nData: touch /tmp/websmsd-pwned"),
    ("From", "+1501\rApplication: System"),
    ("To", "../../etc/x"),
    ("To", "100@evil/context"),
    ("From", "#1234"),
    ("To", "+1;comment"),
])
def test_injection_is_refused_and_nothing_is_written(make_daemon, field, value):
    d = make_daemon()
    fields = {"To": "+12025550160", "From": "+15017122661", "Body": "hi"}
    fields[field] = value
    r = curl("--data-binary", urllib.parse.urlencode(fields), d.webhook_url + "/")
    code, body = status_and_body(r)
    assert code == 400, body
    assert "\n" not in body.strip()
    time.sleep(0.3)
    assert d.callfiles() == []
    assert d.rows("SELECT COUNT(*) FROM messages") == [(0,)]
    assert not Path("/tmp/websmsd-pwned").exists()


def test_missing_fields_forbidden_source_and_oversize(make_daemon):
    d = make_daemon(websmsd="remt_addr [a] = 127.0.0.0/8\nurl_path [a] = /hook",
                    daemon="max_body = 4k")
    code, body = status_and_body(curl("-d", "To=%2B1", d.webhook_url + "/hook"))
    assert code == 400 and "From" in body
    code, _ = status_and_body(curl("-d", "To=%2B1&From=%2B2&Body=x", d.webhook_url + "/other"))
    assert code == 403
    code, _ = status_and_body(curl("--data-binary", "Body=" + "x" * 10000 + "&To=1&From=2",
                                   d.webhook_url + "/hook"))
    assert code == 413
    code, _ = status_and_body(curl("-X", "PUT", "-d", "To=1", d.webhook_url + "/hook"))
    assert code == 405
    assert d.callfiles() == []


def test_provider_id_dedupes_retries(make_daemon):
    d = make_daemon(websmsd="key_id = MessageSid")
    for _ in range(3):
        r = curl("-d", "To=%2B1&From=%2B2&Body=once&MessageSid=SM123", d.webhook_url + "/")
        assert status_and_body(r)[0] == 200
    d.wait_callfiles(1)
    time.sleep(0.5)
    assert len(d.callfiles()) == 1
    assert d.rows("SELECT COUNT(*) FROM messages") == [(1,)]


def test_long_cyrillic_sms_is_split_and_handed_over_in_order(make_daemon):
    d = make_daemon(daemon="spool_poll = 0.1")
    text = ("Привет, это очень длинное сообщение. " * 50)[:1600]
    r = curl("--data-urlencode", f"Body={text}", "-d", "To=%2B1", "-d", "From=%2B2",
             d.webhook_url + "/")
    assert status_and_body(r)[0] == 200
    received = []
    deadline = time.monotonic() + 30
    # Play Asterisk: take each call file as it appears, as pbx_spool would.
    while time.monotonic() < deadline:
        for f in d.callfiles():
            lines = f.read_bytes().split(b"\n")
            assert all(len(line) + 1 <= 1023 for line in lines)
            [body] = [l for l in lines if l.startswith(b"setvar: MESSAGE(body)=")]
            received.append(urllib.parse.unquote(body.split(b"=", 1)[1].decode()))
            f.unlink()
        if d.rows("SELECT status FROM messages") == [("sent",)] and not d.callfiles():
            break
        time.sleep(0.05)
    n = len(received)
    assert n >= 8  # about 180 characters of this text fit in one call-file line
    for i, part in enumerate(received, 1):
        assert part.startswith(f"({i}/{n}) ")
    assert "".join(p.split(") ", 1)[1] for p in received) == text


# -- FastAGI ---------------------------------------------------------------------------

def asterisk_env(port: int, to: str, sender: str, body_arg: str, index: str) -> bytes:
    """The environment a real Asterisk 22 sends (from the fixture capture), with our args."""
    case = json.loads((FIXTURES / "fastagi_bodies.json").read_text())["cases"]
    first = case[0] if isinstance(case, list) else next(iter(case.values()))
    lines = []
    for line in first["env_lines"]:
        if line.startswith("agi_arg_") or line.startswith("agi_network_script") or not line:
            continue
        if line.startswith("agi_request:"):
            line = f"agi_request: agi://127.0.0.1:{port}/websms"
        lines.append(line)
    lines += ["agi_network_script: websms", f"agi_arg_1: {to}", f"agi_arg_2: {sender}",
              f"agi_arg_3: {body_arg}", f"agi_arg_4: {index}"]
    return ("\n".join(lines) + "\n\n").encode()


def play_asterisk(port: int, env: bytes, channel_body: str, timeout: float = 30) -> dict:
    """Talk to websmsd like Asterisk does; return the variables it set."""
    variables, commands = {}, []
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(env)
        f = s.makefile("rb")
        while True:
            line = f.readline()
            if not line:
                break
            cmd = line.decode().rstrip("\n")
            commands.append(cmd)
            if cmd.startswith("GET FULL VARIABLE ${BASE64_ENCODE(${MESSAGE(body)})}"):
                b64 = base64.b64encode(channel_body.encode()).decode()
                s.sendall(f"200 result=1 ({b64})\n".encode() if channel_body else b"200 result=0\n")
            elif cmd.startswith("SET VARIABLE "):
                name, value = cmd[len("SET VARIABLE "):].split(" ", 1)
                assert value.startswith('"') and value.endswith('"'), cmd
                variables[name] = value[1:-1].replace('\\"', '"').replace("\\\\", "\\")
                s.sendall(b"200 result=1\n")
            elif cmd == "HANGUP":
                raise AssertionError("websmsd must not send HANGUP on the message channel")
            else:
                s.sendall(b"510 Invalid or unknown command\n")
    variables["_commands"] = commands
    return variables


def test_fastagi_to_itsp(make_daemon, fake_itsp):
    d = make_daemon(websms=f"url_host = {fake_itsp.url}\nurl_path = /send\nauth_method = basic\n"
                          "auth_user = user\nauth_secret = secret")
    body = 'Line one, "quoted" \\ back\n\npara two ✓'
    env = asterisk_env(d.agi_port, "+12025550183", "+12025550160", body, "")
    got = play_asterisk(d.agi_port, env, body)
    assert got["WEBSMS_STATUS"] == "SENT", got
    assert len(got["WEBSMS_ID"]) == 20
    [req] = fake_itsp.wait(1)
    assert req["path"] == "/send"
    assert req["headers"]["authorization"] == "Basic " + base64.b64encode(b"user:secret").decode()
    assert urllib.parse.parse_qs(req["body"].decode()) == {
        "Body": [body], "From": ["+12025550160"], "To": ["+12025550183"]}
    assert d.rows("SELECT status, attempts FROM messages WHERE id = ?", (got["WEBSMS_ID"],)) == [("sent", 1)]


def test_fastagi_empty_body_fails_without_sending(make_daemon, fake_itsp):
    d = make_daemon(websms=f"url_host = {fake_itsp.url}\nauth_method = none")
    env = asterisk_env(d.agi_port, "+12025550183", "+12025550160", "", "")
    got = play_asterisk(d.agi_port, env, "")
    assert got["WEBSMS_STATUS"] == "FAILED"
    assert "empty" in got["WEBSMS_REASON"]
    time.sleep(0.3)
    assert fake_itsp.requests == []


def test_websms_cli_exit_codes(make_daemon, fake_itsp):
    d = make_daemon(websms=f"url_host [api-1] = {fake_itsp.url}\nauth_method = none")
    cli = [sys.executable, "-c", "import sys; from websmsd.cli import websms_main; sys.exit(websms_main())"]
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    ok = subprocess.run(cli + ["+1555", "+1666", "hello", "api-1", "--config", str(d.config)],
                        capture_output=True, text=True, env=env, timeout=60)
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.startswith("SENT ")
    bad = subprocess.run(cli + ["+1555", "+1666", "hello", "nope", "--config", str(d.config)],
                         capture_output=True, text=True, env=env, timeout=60)
    assert bad.returncode == 1 and bad.stdout.startswith("FAILED")
    fake_itsp.default = (400, b'{"error":"bad number"}')
    bad = subprocess.run(cli + ["+1555", "+1666", "hello", "api-1", "--config", str(d.config)],
                         capture_output=True, text=True, env=env, timeout=60)
    assert bad.returncode == 1 and "400" in bad.stdout


def test_itsp_down_is_retried_after_restart(make_daemon):
    port = free_port()
    d = make_daemon(websms=f"url_host = http://127.0.0.1:{port}\nauth_method = none",
                    daemon="retry_base = 1\nretry_max = 1")
    r = api_json(d.api_url + "/api/send", {"to": "+1555", "from": "+1666", "body": "later", "wait": 5})
    assert r["status"] == "QUEUED", r
    d.stop()
    [(status, attempts)] = d.rows("SELECT status, attempts FROM messages")
    assert status in ("queued", "sending") and attempts >= 1
    itsp = FakeITSP(port)  # the ITSP comes back, on the address the daemon knows
    try:
        d.start()
        itsp.wait(1, timeout=20)
        assert len(itsp.requests) == 1
        deadline = time.monotonic() + 10
        while d.rows("SELECT status FROM messages") != [("sent",)] and time.monotonic() < deadline:
            time.sleep(0.05)
        assert d.rows("SELECT status FROM messages") == [("sent",)]
    finally:
        itsp.close()


def test_sigkill_during_webhook_stream_loses_nothing_and_duplicates_nothing(make_daemon):
    d = make_daemon()
    acked, lock = set(), threading.Lock()
    stop = threading.Event()

    def client(worker: int) -> None:
        conn = None
        for i in range(250):
            if stop.is_set():
                return
            token = f"w{worker}n{i}"
            try:
                if conn is None:
                    conn = http.client.HTTPConnection("127.0.0.1", d.webhook_port, timeout=10)
                conn.request("POST", "/", body=f"To=%2B1&From=%2B2&Body={token}",
                             headers={"Content-Type": "application/x-www-form-urlencoded"})
                resp = conn.getresponse()
                resp.read()
                if resp.status == 200:
                    with lock:
                        acked.add(token)
            except (OSError, http.client.HTTPException):
                conn = None
                if stop.is_set():
                    return
                time.sleep(0.01)

    threads = [threading.Thread(target=client, args=(w,)) for w in range(4)]
    for t in threads:
        t.start()
    while len(acked) < 300:
        time.sleep(0.005)
    d.kill()
    stop.set()
    for t in threads:
        t.join()
    assert len(acked) >= 300
    d.start()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if d.rows("SELECT COUNT(*) FROM messages WHERE status != 'sent'") == [(0,)]:
            break
        time.sleep(0.1)
    bodies = []
    for f in d.callfiles():
        [line] = [l for l in f.read_bytes().split(b"\n") if l.startswith(b"setvar: MESSAGE(body)=")]
        bodies.append(line.split(b"=", 1)[1].decode())
    assert len(bodies) == len(set(bodies)), "a message was written twice"
    missing = acked - set(bodies)
    assert not missing, f"{len(missing)} acknowledged messages have no call file"
    assert list(d.staging.iterdir()) == []


def test_bad_config_refuses_to_start(tmp_path):
    conf = tmp_path / "websms.conf"
    conf.write_text("[websms]\nurl_host = http://x\nno_such_key = 1\n[astqueue]\n")
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    r = subprocess.run([sys.executable, "-c", "from twisted.scripts.twistd import run; run()",
                        "-n", "--pidfile=", "websmsd", "--config", str(conf)],
                       capture_output=True, text=True, env=env, timeout=30, cwd=tmp_path)
    assert r.returncode != 0
    assert f"{conf}:3" in r.stdout + r.stderr and "no_such_key" in r.stdout + r.stderr


def test_delivery_report_updates_the_sent_message(make_daemon, fake_itsp):
    fake_itsp.default = (200, b'{"data": {"id": "prov-42", "status": "queued"}}')
    d = make_daemon(
        websms=f"url_host = {fake_itsp.url}\nauth_method = none\nencoding = json\n"
               "resp_id = data.id",
        websmsd='msg_filter = "data.event_type=message.received"\n'
                'dlr_filter = "data.event_type=message.finalized"\n'
                "dlr_id = data.payload.id\ndlr_status = data.payload.to.0.status\n"
                "key_to = data.payload.to.0.phone_number\n"
                "key_from = data.payload.from.phone_number\nkey_body = data.payload.text")
    r = api_json(d.api_url + "/api/send", {"to": "+1555", "from": "+1666", "body": "hi", "wait": 5})
    assert r["status"] == "SENT"
    receipt = {"data": {"event_type": "message.finalized",
                        "payload": {"id": "prov-42", "to": [{"phone_number": "+1555",
                                                             "status": "delivered"}]}}}
    code, _ = status_and_body(curl("-H", "Content-Type: application/json",
                                   "--data-binary", json.dumps(receipt), d.webhook_url + "/"))
    assert code == 200
    assert d.rows("SELECT status, provider_id FROM messages WHERE id = ?", (r["id"],)) == [
        ("delivered", "prov-42")]
    assert d.rows("SELECT status FROM reports") == [("delivered",)]
    time.sleep(0.3)
    assert d.callfiles() == []  # a report never becomes a call file


def test_ignored_events_and_reports_show_in_metrics_and_status(make_daemon):
    d = make_daemon(websmsd='msg_filter = "type=message"\ndlr_filter = "type=dlr"\n'
                            "dlr_id = id\ndlr_status = status")
    for payload in ({"type": "typing"}, {"type": "dlr", "id": "nope", "status": "delivered"}):
        code, _ = status_and_body(curl("-H", "Content-Type: application/json",
                                       "--data-binary", json.dumps(payload), d.webhook_url + "/"))
        assert code == 200
    code, metrics = status_and_body(curl(d.api_url + "/metrics"))
    assert code == 200
    assert 'websmsd_webhook_ignored_total{reason=' in metrics
    assert "websmsd_delivery_reports_total{status=\"unknown\"} 1" in metrics
    code, status = status_and_body(curl(d.api_url + "/api/status"))
    webhook = json.loads(status)["webhook"]
    assert sum(webhook["ignored"].values()) == 1 and webhook["reports"] == {"unknown": 1}


def test_unframeable_requests_get_a_reason(make_daemon):
    d = make_daemon()
    for raw in (b"GARBAGE\r\n\r\n", b"POST / HTTP/1.1\r\nContent-Length: x\r\n\r\n",
                b"POST / HTTP/1.1\r\nBad Header Line\r\n\r\n"):
        with socket.create_connection(("127.0.0.1", d.webhook_port), timeout=5) as s:
            s.sendall(raw)
            answer = b""
            while True:
                chunk = s.recv(4096)
                if not chunk:
                    break
                answer += chunk
        head, _, body = answer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 400 "), answer
        assert b"malformed" in body
    assert d.callfiles() == []


def test_wait_port_waits_for_the_daemons_own_listener():
    # A port that accepts is not enough: it must be the daemon's (free_port() can hand
    # out a port another process takes first; the daemon then exits while it accepts).
    import os
    import subprocess as sp

    from blackbox import _listens, wait_port

    other = socket.socket()
    other.bind(("127.0.0.1", 0))
    other.listen(1)
    port = other.getsockname()[1]
    try:
        assert _listens(os.getpid(), port)
        wait_port(port, timeout=1.0)  # anybody's listener will do without a process
        # A daemon under a shell (or runuser): its listener is its child's.
        listener = ("import socket, time; s = socket.socket(); s.bind(('127.0.0.1', 0));"
                    " s.listen(1); print(s.getsockname()[1], flush=True); time.sleep(30)")
        shell = sp.Popen(["sh", "-c", f'"{sys.executable}" -c "{listener}"; true'],
                         stdout=sp.PIPE, text=True, start_new_session=True)
        try:
            child_port = int(shell.stdout.readline())
            assert _listens(shell.pid, child_port) and not _listens(shell.pid, port)
        finally:
            os.killpg(shell.pid, 9)
            shell.wait()
            shell.stdout.close()
        sleeper = sp.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
        try:
            assert not _listens(sleeper.pid, port)
            with pytest.raises(TimeoutError):
                wait_port(port, timeout=0.5, proc=sleeper)
        finally:
            sleeper.kill()
            sleeper.wait()
    finally:
        other.close()
