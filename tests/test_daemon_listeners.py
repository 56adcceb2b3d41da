"""Black-box: TLS and IPv6 webhook listeners, WEBSMSD_PORT, check-config."""

import json
import os
import socket
import subprocess
import sys
import time

import pytest

from blackbox import ROOT, Daemon, curl, free_port, status_and_body, wait_port


def make_cert(directory):
    key, cert = directory / "key.pem", directory / "cert.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
         "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1",
         "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True)
    return key, cert


def test_tls_webhook_with_tls_key_and_cert(tmp_path, make_daemon):
    key, cert = make_cert(tmp_path)
    port = free_port()
    d = make_daemon(start=False, daemon=f"tls_key = {key}\ntls_cert = {cert}\n")
    # A second webhook listener, TLS on its own port, beside the plain one.
    d.config.write_text(d.config.read_text().replace(
        'webhook_listen = "tcp:', f'webhook_listen [tls] = "ssl:{port}:interface=127.0.0.1"\n'
                                  'webhook_listen [plain] = "tcp:'))
    d.start()
    wait_port(port)
    url = f"https://127.0.0.1:{port}/"
    code, _ = status_and_body(curl("--cacert", str(cert), "-d", "To=%2B1&From=%2B2&Body=tls", url))
    assert code == 200
    [f] = d.wait_callfiles(1)
    assert b"MESSAGE(body)=tls\n" in f.read_bytes()
    # Plain HTTP to the TLS port is not served as a webhook.
    r = curl("-d", "To=%2B1&From=%2B2&Body=plain", f"http://127.0.0.1:{port}/")
    assert status_and_body(r)[0] != 200
    assert len(d.callfiles()) == 1


@pytest.mark.skipif(not socket.has_ipv6, reason="no IPv6 on this machine")
def test_ipv6_listener_and_remt_addr(make_daemon):
    port = free_port()
    d = make_daemon(start=False, websmsd="remt_addr = ::1/128")
    d.config.write_text(d.config.read_text().replace(
        f'webhook_listen = "tcp:{d.webhook_port}:interface=127.0.0.1"',
        f'webhook_listen [v6] = "tcp6:{port}:interface=\\:\\:1"\n'
        f'webhook_listen [v4] = "tcp:{d.webhook_port}:interface=127.0.0.1"'))
    d.start()
    code, _ = status_and_body(curl("-g", "-d", "To=%2B1&From=%2B2&Body=v6", f"http://[::1]:{port}/"))
    assert code == 200
    code, body = status_and_body(curl("-d", "To=%2B1&From=%2B2&Body=v4", d.webhook_url + "/"))
    assert code == 403 and "127.0.0.1" in body
    [f] = d.wait_callfiles(1)
    assert b"MESSAGE(body)=v6\n" in f.read_bytes()


def test_websmsd_port_keeps_its_php_meaning(tmp_path):
    port = free_port()
    d = Daemon(tmp_path, env={"WEBSMSD_PORT": str(port)})
    d.config.write_text("\n".join(
        line for line in d.config.read_text().splitlines() if not line.startswith("webhook_listen")))
    try:
        d.start(wait=False)
        wait_port(port, proc=d.proc)
        code, _ = status_and_body(curl("-d", "To=%2B1&From=%2B2&Body=port", f"http://127.0.0.1:{port}/"))
        assert code == 200
        d.wait_callfiles(1)
    finally:
        d.stop()


def test_check_config_prints_effective_settings_with_secrets_masked(tmp_path):
    conf = tmp_path / "websms.conf"
    conf.write_text(
        "[websms]\nurl_host [api-1] = https://api.example.com\nauth_user = AC123\n"
        "auth_secret = s3cr3t-token\nurl_path = /sms\n"
        "[websmsd]\nremt_addr [api-1] = 185.45.152.42\n[astqueue]\n")
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    cmd = [sys.executable, "-c", "import sys; from websmsd.cli import websmsd_main; sys.exit(websmsd_main())"]
    r = subprocess.run(cmd + ["check-config", str(conf)], capture_output=True, text=True, env=env)
    assert r.returncode == 0, r.stderr
    assert "[websms] interface 'api-1'" in r.stdout
    assert "url_host = https://api.example.com" in r.stdout
    assert "auth_secret = ****" in r.stdout and "s3cr3t" not in r.stdout
    assert "185.45.152.42" in r.stdout
    conf.write_text("[websmsd]\nremt_addr = 10.0.0.0/33\n")
    r = subprocess.run(cmd + ["check-config", str(conf)], capture_output=True, text=True, env=env)
    assert r.returncode == 2
    assert f"{conf}:2: remt_addr:" in r.stderr


@pytest.mark.parametrize("setting", ["webhook_listen", "agi_listen", "status_listen", "WEBSMSD_PORT"])
def test_a_busy_port_stops_the_start_in_one_line_with_exit_2(tmp_path, setting):
    # Issue #12: a traceback and exit 1 made systemd restart websmsd every 5 s forever;
    # exit 2 is the unit's RestartPreventExitStatus.
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen(1)
    port = busy.getsockname()[1]
    try:
        env = {}
        d = Daemon(tmp_path)
        text = d.config.read_text()
        if setting == "WEBSMSD_PORT":
            env = {"WEBSMSD_PORT": str(port)}
            text = "\n".join(line for line in text.splitlines() if not line.startswith("webhook_listen"))
        else:
            own = {"webhook_listen": d.webhook_port, "agi_listen": d.agi_port,
                   "status_listen": d.status_port}[setting]
            text = text.replace(f'{setting} = "tcp:{own}:', f'{setting} = "tcp:{port}:')
        d.config.write_text(text)
        d.env = env
        d.start(wait=False)
        assert d.proc.wait(30) == 2
        out = d.output()
        assert "Traceback" not in out
        [line] = [line for line in out.splitlines() if "cannot listen" in line]
        assert f"{setting} 'tcp:{port}" in line
        assert f"127.0.0.1:{port}: address already in use" in line.lower() or \
            f"*:{port}: address already in use" in line.lower()
        assert "exit 2" in line
        # Nothing else of the daemon ran: no store rows, and no listener left behind.
        for other in (d.webhook_port, d.agi_port, d.status_port):
            with socket.socket() as probe:
                assert probe.connect_ex(("127.0.0.1", other)) != 0
    finally:
        busy.close()


def test_start_up_log_names_the_status_page_and_each_warning_once(make_daemon):
    d = make_daemon(websms="key_to = dst\n")
    d.stop()
    out = d.output()
    assert f"status page and API: http://127.0.0.1:{d.status_port}/" in out
    warnings = [line for line in out.splitlines() if "has no url_host" in line]
    assert len(warnings) == 1, warnings
    assert warnings[0].count(str(d.config)) == 1
    # No interface to send through: an error at start, not a silent http://localhost.
    [error] = [line for line in out.splitlines() if "no interface configured for outbound SMS" in line]
    assert "[websmsd#error]" in error


def test_a_spool_websmsd_cannot_use_is_reported_at_start_on_the_page_and_by_check_config(
        make_daemon):
    # Issue #12: found at start, not when the first message arrives.
    d = make_daemon(start=False)
    blocker = d.root / "blocker"
    blocker.write_text("not a directory")
    d.config.write_text(d.config.read_text().replace(
        f"stagingdir = {d.staging}", f"stagingdir = {blocker}/staging"))
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    r = subprocess.run([sys.executable, "-m", "websmsd", "check-config", str(d.config)],
                       capture_output=True, text=True, env=env)
    assert r.returncode == 1, r.stdout + r.stderr
    assert "call-file spool (checked as user" in r.stdout
    assert f"stagingdir {blocker}/staging does not exist, and websmsd could not create it" in r.stdout
    d.start()
    deadline = time.monotonic() + 10
    while "call-file spool:" not in d.log.read_text() and time.monotonic() < deadline:
        time.sleep(0.05)
    [line] = [line for line in d.log.read_text().splitlines() if "call-file spool:" in line]
    assert "cannot be created" in line and "install -d" in line and "#warn]" in line
    code, body = status_and_body(curl(d.api_url + "/api/status"))
    assert code == 200
    [spool] = [c for c in json.loads(body)["channels"] if c["kind"] == "spool"]
    assert spool["state"] == "error" and "cannot be created" in spool["detail"]
    code, page = status_and_body(curl(d.api_url + "/"))
    assert "cannot be created" in page
