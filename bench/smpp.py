"""submit_sm throughput of one SMPPBind against the GoIP-like node SMSC.

    /usr/bin/python3 bench/smpp.py [--messages 5000] [--window 10] [--repeat 3]
                                   [--text "..."] [--long-method payload]

Starts tests/peers/goip-smsc/smsc.js (needs node and `npm ci --prefix
tests/peers/goip-smsc`) on 127.0.0.1 with --quiet (no line per submit_sm), binds one
SMPPBind (transceiver, window --window) and keeps --window submits outstanding (closed
loop: each answer lets the next message go) until --messages have been answered. The
submit_sm fields are built per message with pdu.submits_for, as a channel would.
Prints messages per second for each run (first submit -> last answer), the best and
the median, this process's CPU per message, and the SMSC's count of submit_sm seen.

The aim is 500 msg/s or more at window 10. Figures only; nothing is asserted.
Bounded by --messages and by --limit seconds per run.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

PEER = ROOT / "tests" / "peers" / "goip-smsc"


def cpu_seconds() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


class SMSC:
    def __init__(self, node: str):
        self.proc = subprocess.Popen([node, str(PEER / "smsc.js"), "--port", "0", "--quiet"],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     text=True, cwd=PEER)
        self.lines: list = []
        self.cond = threading.Condition()
        threading.Thread(target=self._read, daemon=True).start()
        self.port = self.wait("listening")["port"]

    def _read(self):
        for line in self.proc.stdout:
            with self.cond:
                self.lines.append(json.loads(line))
                self.cond.notify_all()

    def wait(self, event: str, timeout: float = 10.0) -> dict:
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                for i, ev in enumerate(self.lines):
                    if ev["event"] == event:
                        return self.lines.pop(i)
                left = deadline - time.monotonic()
                if left <= 0:
                    raise SystemExit(f"the SMSC did not say {event!r}")
                self.cond.wait(left)

    def stats(self) -> dict:
        self.proc.stdin.write('{"cmd":"stats"}\n')
        self.proc.stdin.flush()
        return self.wait("stats")

    def close(self):
        try:
            self.proc.stdin.write('{"cmd":"quit"}\n')
            self.proc.stdin.flush()
            self.proc.wait(timeout=5)
        except Exception:
            self.proc.kill()
            self.proc.wait()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--messages", type=int, default=5000)
    ap.add_argument("--window", type=int, default=10)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--text", default="Bench message {n}: hello from websmsd")
    ap.add_argument("--long-method", default="payload", choices=("payload", "udh", "sar"))
    ap.add_argument("--limit", type=float, default=120.0, help="seconds per run at most")
    args = ap.parse_args()

    node = shutil.which("node")
    if node is None or not (PEER / "node_modules" / "smpp").is_dir():
        print("skipped: needs node and `npm ci --prefix tests/peers/goip-smsc`")
        return 0

    from twisted.internet import defer, task
    from twisted.internet.endpoints import TCP4ClientEndpoint

    from websmsd.smpp import pdu as P
    from websmsd.smpp.esme import SMPPBind

    import twisted

    smsc = SMSC(node)
    print(f"machine: {os.cpu_count()} cores, Linux {platform.release()}; "
          f"Python {platform.python_version()} ({sys.executable}), Twisted {twisted.__version__}")
    print(f"SMSC: tests/peers/goip-smsc (node {subprocess.check_output([node, '--version'], text=True).strip()}, "
          f"npm smpp), 127.0.0.1:{smsc.port}")
    print(f"load: {args.messages} submit_sm per run, window {args.window}, "
          f"{args.repeat} runs, text {args.text!r} ({args.long_method} for long texts)")

    async def run(reactor):
        bind = SMPPBind(reactor, TCP4ClientEndpoint(reactor, "127.0.0.1", smsc.port),
                        "goip01", "secret", window=args.window, enquire_link=30,
                        response_timeout=20)
        bind.startService()
        await bind.when_bound()
        figures = []
        for r in range(args.repeat):
            statuses: dict = {}
            errors: dict = {}
            counter = iter(range(args.messages))
            cpu0 = cpu_seconds()
            t0 = time.perf_counter()
            deadline = t0 + args.limit

            async def worker():
                for n in counter:
                    if time.perf_counter() > deadline:
                        return
                    fields = P.submits_for("15551234567", args.text.format(n=n),
                                           long_method=args.long_method, ref=n)
                    for f in fields:
                        try:
                            result = await bind.submit(f)
                        except Exception as e:  # a figure to print, not to stop on
                            errors[type(e).__name__] = errors.get(type(e).__name__, 0) + 1
                        else:
                            statuses[result.status] = statuses.get(result.status, 0) + 1

            await defer.gatherResults([defer.ensureDeferred(worker())
                                       for _ in range(args.window)])
            elapsed = time.perf_counter() - t0
            cpu = cpu_seconds() - cpu0
            done = sum(statuses.values()) + sum(errors.values())
            rate = done / elapsed if elapsed else 0.0
            figures.append(rate)
            ok = statuses.get(0, 0)
            print(f"run {r + 1}: {done} answered in {elapsed:.3f} s = {rate:,.0f} msg/s; "
                  f"accepted {ok}, other statuses "
                  f"{ {P.status_name(k): v for k, v in statuses.items() if k} or 'none'}, "
                  f"errors {errors or 'none'}; CPU {1000 * cpu / max(done, 1):.3f} ms/msg "
                  f"(this process)")
        await bind.stopService()
        return figures

    result = {}

    def go(reactor):
        d = defer.ensureDeferred(run(reactor))
        d.addCallback(lambda figs: result.update(figures=figs))
        return d

    try:
        _react(task, go)
    finally:
        seen = None
        try:
            seen = smsc.stats()
        except SystemExit:
            pass
        smsc.close()
    figures = result.get("figures") or []
    if figures:
        print(f"best {max(figures):,.0f} msg/s, median {statistics.median(figures):,.0f} msg/s "
              f"(aim: >= 500 msg/s at window 10)")
    if seen:
        print(f"the SMSC counted {seen['submits']} submit_sm")
    return 0


def _react(task, go):
    # task.react exits the process; run it in a way that returns here.
    try:
        task.react(go)
    except SystemExit as e:
        if e.code not in (0, None):
            raise


if __name__ == "__main__":
    sys.exit(main())
