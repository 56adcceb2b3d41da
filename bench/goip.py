"""GoIP over SMPP through the real daemon, against the GoIP-like node SMSC.

    /usr/bin/python3 bench/goip.py [--deliveries 300] [--messages 3000] [--window 10]
                                   [--keep]

1. deliver_sm -> fsynced call file: one SIM bound to tests/peers/goip-smsc; the SMSC
   sends --deliveries deliver_sm one after another (the next once the previous call file
   is in outgoing), each with a unique text.  Latency = the call file's ctime (the
   moment it was renamed into outgoing, after its fsync and the store's commit) minus
   the moment the deliver command was written to the SMSC.  Then the same number as a
   burst (all written at once): call files per second and the latencies under load.
2. submit_sm through the daemon at window --window: --messages are queued through the
   local API while the SIM cannot bind (nothing listens on its port yet), then the SMSC
   (--quiet) starts on that port; throughput = messages answered by the SMSC per second
   from the bind to the last one, and the time until the store says all are sent.

Needs node and `npm ci --prefix tests/peers/goip-smsc`.  Figures only; nothing is
asserted.  The scratch directory is on a real disk (see bench/README.md).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from _common import ROOT, Daemon, cleanup, header, lat_line, workdir

PEER = ROOT / "tests" / "peers" / "goip-smsc"
BODY = b"setvar: MESSAGE(body)="


class SMSC:
    def __init__(self, node: str, port: int = 0, quiet: bool = False):
        args = [node, str(PEER / "smsc.js"), "--port", str(port)] + (["--quiet"] if quiet else [])
        self.proc = subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     text=True, cwd=PEER)
        self.events: list = []
        self.cond = threading.Condition()
        threading.Thread(target=self._read, daemon=True).start()
        self.port = self.wait("listening")["port"]

    def _read(self) -> None:
        for line in self.proc.stdout:
            with self.cond:
                self.events.append(json.loads(line))
                self.cond.notify_all()

    def wait(self, event: str, timeout: float = 30.0, **match) -> dict:
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                for i, ev in enumerate(self.events):
                    if ev["event"] == event and all(ev.get(k) == v for k, v in match.items()):
                        return self.events.pop(i)
                left = deadline - time.monotonic()
                if left <= 0:
                    raise SystemExit(f"the SMSC did not say {event!r} {match}")
                self.cond.wait(left)

    def write(self, **cmd) -> None:
        self.proc.stdin.write(json.dumps(cmd) + "\n")
        self.proc.stdin.flush()

    def stats(self) -> dict:
        self.write(cmd="stats")
        return self.wait("stats")

    def close(self) -> None:
        try:
            self.write(cmd="quit")
            self.proc.wait(timeout=5)
        except Exception:
            self.proc.kill()
            self.proc.wait()


def conf(port: int, window: int) -> dict:
    return dict(goip=(f"smpp_host = 127.0.0.1\nsmpp_port = {port}\nsystem_id = goip\n"
                      f"password = secret\nreconnect_max = 0.5\nwindow = {window}\n"
                      "channel [sim1] = 1\nnumber [sim1] = +46701234567\n"),
                daemon="agi_wait = 0.001\n")


def bound(d: Daemon, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with urllib.request.urlopen(d.api_url + "/api/status", timeout=10) as r:
            rows = json.load(r)["channels"]
        if any(c["kind"] == "goip" and c["state"] == "up" for c in rows):
            return
        time.sleep(0.05)
    raise SystemExit("the SIM did not bind")


def call_ctimes(outgoing: Path) -> dict:
    found = {}
    for e in os.scandir(outgoing):
        if not e.name.endswith(".call"):
            continue
        with open(e.path, "rb") as f:
            for line in f.read().split(b"\n"):
                if line.startswith(BODY):
                    found[urllib.parse.unquote(line[len(BODY):].decode())] = e.stat().st_ctime
                    break
    return found


def wait_files(outgoing: Path, n: int, timeout: float) -> int:
    deadline = time.monotonic() + timeout
    count = 0
    while time.monotonic() < deadline:
        count = sum(1 for e in os.scandir(outgoing) if e.name.endswith(".call"))
        if count >= n:
            break
        time.sleep(0.0005)
    return count


def deliveries(node: str, root: Path, n: int) -> None:
    smsc = SMSC(node)
    d = Daemon(root / "deliver", **conf(smsc.port, 1))
    try:
        d.start()
        bound(d)
        sent = {}
        for i in range(n):
            text = f"one by one {i}"
            sent[text] = time.time()
            smsc.write(cmd="deliver", sim="goip01", text=text, coding="ucs2")
            wait_files(d.outgoing, i + 1, 10.0)
        found = call_ctimes(d.outgoing)
        lat = [found[t] - t0 for t, t0 in sent.items() if t in found]
        print(f"deliver_sm -> call file, one at a time: {len(lat)}/{n} call files; "
              f"{lat_line(lat)}")
        burst = {}
        t_start = time.time()
        for i in range(n):
            text = f"burst {i}"
            burst[text] = time.time()
            smsc.write(cmd="deliver", sim="goip01", text=text, coding="ucs2")
        wait_files(d.outgoing, 2 * n, 60.0)
        found = call_ctimes(d.outgoing)
        got = [found[t] for t in burst if t in found]
        lat = [found[t] - t0 for t, t0 in burst.items() if t in found]
        span = (max(got) - t_start) if got else 0.0
        print(f"deliver_sm -> call file, a burst of {n}: {len(got)}/{n} call files in "
              f"{span:.3f} s = {len(got) / span if span else 0:,.0f}/s; {lat_line(lat)}")
        print("   (the SMSC reads a burst of commands in one go and writes their deliver_sm"
              " together: these latencies are mostly its own queue)")
        files = sum(1 for e in os.scandir(d.outgoing) if e.name.endswith(".call"))
        if files != len(found):
            print(f"   {files - len(found)} texts were written twice")
    finally:
        d.stop()
        smsc.close()


def submits(node: str, root: Path, n: int, window: int) -> None:
    from blackbox import free_port

    port = free_port()
    d = Daemon(root / "submit", **conf(port, window))
    smsc = None
    try:
        d.start()

        def queue(i: int) -> str:
            body = json.dumps({"to": "+46701112233", "from": "+15550001111",
                               "body": f"bench {i}", "interface": "sim1", "wait": 0}).encode()
            req = urllib.request.Request(d.api_url + "/api/send", data=body, method="POST",
                                         headers={"Content-Type": "application/json"})
            with urllib.request.urlopen(req, timeout=30) as r:
                return json.load(r)["status"]

        t0 = time.perf_counter()
        with ThreadPoolExecutor(8) as pool:
            states = list(pool.map(queue, range(n)))
        print(f"submit_sm: {n} messages queued through /api/send in "
              f"{time.perf_counter() - t0:.1f} s ({dict((s, states.count(s)) for s in set(states))})")
        smsc = SMSC(node, port=port, quiet=True)
        smsc.wait("bind", status=0)
        t_bind = time.perf_counter()
        seen = 0
        while seen < n and time.perf_counter() - t_bind < 300:
            time.sleep(0.05)
            seen = smsc.stats()["submits"]
        t_smsc = time.perf_counter() - t_bind
        while time.perf_counter() - t_bind < 300:
            (left,) = d.rows("SELECT COUNT(*) FROM messages WHERE status != 'sent'")[0]
            if left == 0:
                break
            time.sleep(0.05)
        t_store = time.perf_counter() - t_bind
        print(f"submit_sm at window {window}: the SMSC answered {seen} in {t_smsc:.2f} s = "
              f"{seen / t_smsc if t_smsc else 0:,.0f} msg/s (from the bind); all {n} 'sent' "
              f"in the store after {t_store:.2f} s (aim: >= 500 msg/s)")
    finally:
        d.stop()
        if smsc is not None:
            smsc.close()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--deliveries", type=int, default=300)
    ap.add_argument("--messages", type=int, default=3000)
    ap.add_argument("--window", type=int, default=10)
    ap.add_argument("--keep", action="store_true", help="keep the scratch directory")
    args = ap.parse_args()
    node = shutil.which("node")
    if node is None or not (PEER / "node_modules" / "smpp").is_dir():
        print("skipped: needs node and `npm ci --prefix tests/peers/goip-smsc`")
        return 0
    root = workdir()
    header("GoIP over SMPP through the daemon", str(root))
    try:
        deliveries(node, root, args.deliveries)
        submits(node, root, args.messages, args.window)
    finally:
        cleanup(root, args.keep)
    return 0


if __name__ == "__main__":
    sys.exit(main())
