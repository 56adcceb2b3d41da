"""Black-box helpers: the real daemon in a subprocess, and an independent fake ITSP.

The daemon is started exactly as a user would (`twistd -n websmsd --config FILE`), on
loopback ports picked free for each test; the fake ITSP is Python's own http.server,
sharing no code with websmsd.
"""

from __future__ import annotations

import http.server
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Dict, List, Optional

ROOT = Path(__file__).resolve().parent.parent
TWISTD = "from twisted.scripts.twistd import run; run()"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _self_connected(s: socket.socket) -> bool:
    """A connect() to a loopback port nobody listens on yet can pick that very port as
    its own source port and "succeed", connected to itself (TCP simultaneous open):
    the port is then taken for that instant, and the daemon about to bind it fails
    with "address already in use" while the caller believes it is listening."""
    return s.getsockname() == s.getpeername()


def process_tree(pid: int) -> List[int]:
    """`pid` and every process descending from it (from /proc/*/stat)."""
    children: Dict[int, List[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", encoding="ascii", errors="replace") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        children.setdefault(ppid, []).append(int(entry))
    tree, todo = [], [pid]
    while todo:
        p = todo.pop()
        tree.append(p)
        todo.extend(children.get(p, ()))
    return tree


def _listens(pid: int, port: int) -> bool:
    """Is the socket listening on `port` the process `pid`'s?  free_port() hands out a
    port that another process may take before the daemon binds it: then the daemon
    exits ("address already in use") while the port accepts, and a test talking to it
    reaches the other process or, a moment later, nothing.  Linux only (/proc); True
    where /proc cannot tell."""
    if not os.path.isdir(f"/proc/{pid}/fd"):
        return True
    inodes = set()
    for member in process_tree(pid):  # the daemon may run under a shell or runuser
        try:
            fds = os.listdir(f"/proc/{member}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                link = os.readlink(f"/proc/{member}/fd/{fd}")
            except OSError:
                continue
            if link.startswith("socket:["):
                inodes.add(link[8:-1])
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = open(table, encoding="ascii").read().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            # local address "ADDR:PORT" (hex), state 0A = LISTEN, inode
            if (len(fields) > 9 and fields[3] == "0A"
                    and int(fields[1].rsplit(":", 1)[1], 16) == port and fields[9] in inodes):
                return True
    return False


def wait_port(port: int, timeout: float = 15.0, proc: Optional[subprocess.Popen] = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"daemon exited with {proc.returncode}")
        if proc is not None and os.path.isdir(f"/proc/{proc.pid}/fd"):
            # /proc tells whether the daemon listens, without a connection: a connection
            # to the status port builds the status page's Site (websmsd.http.ondemand),
            # which a test of what an idle daemon holds must not do.
            if _listens(proc.pid, port):
                return
        else:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.5) as s:
                    if not _self_connected(s):
                        return
            except OSError:
                pass
        time.sleep(0.05)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port}")


class Daemon:
    """websmsd in a subprocess, with its own config, spool and store under `root`."""

    def __init__(self, root: Path, websms: str = "", websmsd: str = "", astqueue: str = "",
                 daemon: str = "", env: Optional[Dict[str, str]] = None, **sections: str):
        """`sections`: more sections by name ([route], [goip]...), each a text."""
        self.root = root
        (root / "spool").mkdir(parents=True, exist_ok=True)
        self.webhook_port = free_port()
        self.agi_port = free_port()
        self.status_port = free_port()
        self.outgoing = root / "spool" / "outgoing"
        self.staging = root / "spool" / "staging"
        self.store = root / "websmsd.sqlite3"
        self.config = root / "websms.conf"
        self.log = root / "twistd.log"
        self.env = env or {}
        self.proc: Optional[subprocess.Popen] = None
        self.config.write_text(
            f"[websms]\n{websms}\n"
            f"[websmsd]\n{websmsd}\n"
            f"[astqueue]\noutgoingdir = {self.outgoing}\nstagingdir = {self.staging}\n{astqueue}\n"
            f"[daemon]\n"
            f'webhook_listen = "tcp:{self.webhook_port}:interface=127.0.0.1"\n'
            f'agi_listen = "tcp:{self.agi_port}:interface=127.0.0.1"\n'
            f'status_listen = "tcp:{self.status_port}:interface=127.0.0.1"\n'
            f"store = {self.store}\n{daemon}\n"
            + "".join(f"[{name}]\n{text}\n" for name, text in sections.items())
        )

    @property
    def webhook_url(self) -> str:
        return f"http://127.0.0.1:{self.webhook_port}"

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.status_port}"

    def start(self, wait: bool = True) -> "Daemon":
        env = dict(os.environ)
        env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
        env.update(self.env)
        self.proc = subprocess.Popen(
            [sys.executable, "-c", TWISTD, "-n", "--pidfile=", "--logfile", str(self.log),
             "websmsd", "--config", str(self.config)],
            cwd=str(self.root), env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        )
        if wait:
            try:
                for port in (self.webhook_port, self.agi_port, self.status_port):
                    wait_port(port, proc=self.proc)
            except RuntimeError:
                if not self._took_a_taken_port():
                    raise
                return self.start(wait)  # on new ports
        return self

    def _took_a_taken_port(self) -> bool:
        """free_port() hands out a port that another process may bind before the daemon
        does (exit 2, "cannot listen"): pick new ports for the daemon's own listeners."""
        if self.proc is None or self.proc.returncode != 2 or not self.log.exists():
            return False
        if "address already in use" not in self.log.read_text(errors="replace"):
            return False
        text = self.config.read_text()
        for name in ("webhook_port", "agi_port", "status_port"):
            old, new = getattr(self, name), free_port()
            if f"tcp:{old}:" not in text:
                return False
            text = text.replace(f"tcp:{old}:", f"tcp:{new}:")
            setattr(self, name, new)
        self.config.write_text(text)
        self.log.unlink()
        return True

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15.0) -> int:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()

    def kill(self) -> None:
        self.stop(signal.SIGKILL)

    def output(self) -> str:
        out = ""
        if self.proc is not None and self.proc.stdout is not None and self.proc.poll() is not None:
            out = self.proc.stdout.read().decode("utf-8", "replace")
        if self.log.exists():
            out += self.log.read_text(errors="replace")
        return out

    def callfiles(self) -> List[Path]:
        return sorted(self.outgoing.glob("*.call")) if self.outgoing.exists() else []

    def wait_callfiles(self, n: int, timeout: float = 15.0) -> List[Path]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            files = self.callfiles()
            if len(files) >= n:
                return files
            time.sleep(0.05)
        raise AssertionError(f"{len(self.callfiles())} call files, expected {n}\n{self.output()[-3000:]}")

    def rows(self, sql: str, args: tuple = ()) -> list:
        import sqlite3

        db = sqlite3.connect(f"file:{self.store}?mode=ro", uri=True)
        try:
            return db.execute(sql, args).fetchall()
        finally:
            db.close()


    def wait_rows(self, sql: str, expected: list, args: tuple = (), timeout: float = 15.0) -> list:
        """The rows of `sql` once they equal `expected` (the store records an outcome
        just after the file or request it describes), or the last ones seen."""
        deadline = time.monotonic() + timeout
        rows = self.rows(sql, args)
        while rows != expected and time.monotonic() < deadline:
            time.sleep(0.02)
            rows = self.rows(sql, args)
        return rows


class FakeITSP:
    """An ITSP HTTP API on loopback that records each request and answers as told."""

    def __init__(self, port: int = 0) -> None:
        self.requests: List[dict] = []
        self.answers: List[tuple] = []  # (status, body) to give, in order; then default
        self.default = (200, b'{"status":"success"}')
        self.got = threading.Event()
        fake = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length)
                fake.requests.append({
                    "method": self.command, "path": self.path,
                    "headers": {k.lower(): v for k, v in self.headers.items()},
                    "body": body,
                })
                status, answer = fake.answers.pop(0) if fake.answers else fake.default
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)
                fake.got.set()

            do_GET = do_POST

            def log_message(self, *args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def wait(self, n: int, timeout: float = 15.0) -> List[dict]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and len(self.requests) < n:
            time.sleep(0.02)
        return self.requests

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def curl(*args: str, timeout: float = 30.0) -> subprocess.CompletedProcess:
    """curl, printing the status code on the last line (-w)."""
    return subprocess.run(["curl", "-sS", "-w", "\n%{http_code}", *args],
                          capture_output=True, timeout=timeout, text=True)


def status_and_body(result: subprocess.CompletedProcess) -> tuple:
    body, _, code = result.stdout.rpartition("\n")
    return int(code), body


def api_json(url: str, payload: dict) -> dict:
    import urllib.request

    req = urllib.request.Request(url, data=json.dumps(payload).encode(),
                                 headers={"Content-Type": "application/json"}, method="POST")
    with urllib.request.urlopen(req, timeout=60) as r:
        return json.load(r)
