"""README's first command, as a new user types it: it installs (apt, skipped here: the
packages are there), then runs the daemon on the example config, which must work.

It runs in a copy of the source tree (the example config writes var/ beside itself),
on the example's own ports: it skips when another program holds them.
"""

import os
import re
import shutil
import signal
import socket
import subprocess
import time
import urllib.parse

import pytest

from blackbox import ROOT, curl, status_and_body, wait_port


def first_command() -> str:
    text = (ROOT / "README.md").read_text()
    return re.search(r"```sh\n(.*?)\n```", text, re.S).group(1)


def test_readme_starts_with_install_and_run_then_the_tests():
    text = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```sh\n(.*?)\n```", text, re.S)
    install = blocks[0]
    assert install.startswith("sudo apt-get update && sudo apt-get install -y ")
    # "prefixed with sudo" works only per command: every apt-get has its own.
    assert install.count("apt-get") == install.count("sudo apt-get") == 2
    assert blocks[1] == "./run-tests"
    ci = (ROOT / ".ci" / "run").read_text()
    assert "\n./run-tests\n" in ci


def test_readme_first_command_runs_the_daemon_on_the_example_config(tmp_path):
    ports = (8080, 4573, 8480)
    for port in ports:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                pytest.skip(f"port {port} is in use here")
    run = first_command().split(" && ")[-1]
    assert run == "PYTHONPATH=. twistd3 -n websmsd --config examples/websms.conf"
    if shutil.which("twistd3") is None:
        pytest.skip("twistd3 (python3-twisted) is not installed")
    tree = tmp_path / "websmsd"
    for part in ("websmsd", "twisted", "web", "examples"):
        shutil.copytree(ROOT / part, tree / part,
                        ignore=shutil.ignore_patterns("__pycache__", "var", "dropin.cache"))
    # As typed: a shell runs the line (in a process group of its own, stopped as a whole).
    proc = subprocess.Popen(["sh", "-c", run], cwd=tree, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, start_new_session=True)
    try:
        for port in ports:
            wait_port(port, proc=proc)
        body = urllib.parse.urlencode({"To": "+12025550160", "From": "+15017122661",
                                       "Body": "Hello"})
        code, _ = status_and_body(curl("-d", body, "http://127.0.0.1:8080/"))
        assert code == 200
        outgoing = tree / "examples" / "var" / "spool" / "asterisk" / "outgoing"
        deadline = time.monotonic() + 10
        while not list(outgoing.glob("*.call")) and time.monotonic() < deadline:
            time.sleep(0.05)
        [call] = list(outgoing.glob("*.call"))
        assert b"MESSAGE(body)=Hello\n" in call.read_bytes()
        code, page = status_and_body(curl("http://127.0.0.1:8480/"))
        assert code == 200 and "+15017122661" in page
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        out = proc.communicate(timeout=15)[0].decode(errors="replace")
    # The shell took the SIGTERM too; twistd shut down cleanly.
    assert "Server Shut Down." in out, out
    assert "Traceback" not in out, out
