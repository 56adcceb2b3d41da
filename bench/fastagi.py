"""FastAGI request -> queued/sent: session latency as the dialplan sees it.

    /usr/bin/python3 bench/fastagi.py [--sessions 500] [--concurrency 8]

Starts the real daemon (tests/blackbox.py) and plays Asterisk over a socket, as
tests/test_daemon.py does: it sends the AGI environment a real Asterisk 22 sent (from
tests/fixtures/asterisk/fastagi_bodies.json, with our arguments), answers the
`GET FULL VARIABLE ${BASE64_ENCODE(${MESSAGE(body)})}` with the body in base64 and each
`SET VARIABLE` with `200 result=1`, and waits for websmsd to close the connection.
A session's latency is from connect to that close: what AGI() costs the dialplan.

Two set-ups, each measured with sequential sessions and with --concurrency at once:

* live ITSP: [websms] points at bench/fake_itsp.py (a separate process answering every
  request at once); websmsd waits for the first attempt, so the answer is SENT;
* dead ITSP: nothing listens at the ITSP's address and agi_wait is 1 ms (the config
  refuses 0), so the answer is QUEUED right after the message is committed: this
  measures queueing alone (the attempt, refused, happens in the background).

Figures only; nothing is asserted.  127.0.0.1 only; bounded by --sessions.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import List, Tuple

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import _common as c  # noqa: E402

FIXTURE = c.ROOT / "tests" / "fixtures" / "asterisk" / "fastagi_bodies.json"


def env_template(port: int) -> List[str]:
    """The standard agi_* lines of the fixture's first session (no arguments)."""
    cases = json.loads(FIXTURE.read_text())["cases"]
    first = cases[0] if isinstance(cases, list) else next(iter(cases.values()))
    lines = []
    for line in first["env_lines"]:
        if line.startswith("agi_arg_") or line.startswith("agi_network_script") or not line:
            continue
        if line.startswith("agi_request:"):
            line = f"agi_request: agi://127.0.0.1:{port}/websms"
        lines.append(line)
    return lines + ["agi_network_script: websms"]


def environment(template: List[str], to: str, sender: str, body: str) -> bytes:
    lines = template + [f"agi_arg_1: {to}", f"agi_arg_2: {sender}", f"agi_arg_3: {body}",
                        "agi_arg_4: "]
    return ("\n".join(lines) + "\n\n").encode()


async def session(port: int, template: List[str], i: int, timeout: float) -> Tuple[float, dict]:
    """One AGI session; (seconds from connect to close, variables set)."""
    body = f"bench agi message {i}"
    b64 = base64.b64encode(body.encode()).decode()
    variables: dict = {}
    t0 = time.perf_counter()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(environment(template, "+15550001000", "+16660002000", body))
        while True:
            line = await asyncio.wait_for(reader.readline(), timeout)
            if not line:
                break
            cmd = line.decode().rstrip("\n")
            if cmd.startswith("GET FULL VARIABLE ${BASE64_ENCODE(${MESSAGE(body)})}"):
                writer.write(f"200 result=1 ({b64})\n".encode())
            elif cmd.startswith("SET VARIABLE "):
                name, _, value = cmd[len("SET VARIABLE "):].partition(" ")
                variables[name] = value.strip('"')
                writer.write(b"200 result=1\n")
            else:
                variables.setdefault("_unexpected", []).append(cmd)
                writer.write(b"510 Invalid or unknown command\n")
    finally:
        writer.close()
    return time.perf_counter() - t0, variables


async def drive(port: int, sessions: int, concurrency: int, start: int,
                timeout: float) -> Tuple[List[float], Counter, int, float]:
    template = env_template(port)
    latencies: List[float] = []
    statuses: Counter = Counter()
    errors = 0
    numbers = iter(range(start, start + sessions))

    async def worker() -> None:
        nonlocal errors
        for i in numbers:
            try:
                lat, variables = await session(port, template, i, timeout)
            except (OSError, asyncio.TimeoutError):
                errors += 1
                continue
            latencies.append(lat)
            statuses[variables.get("WEBSMS_STATUS", "(none)")] += 1

    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return latencies, statuses, errors, time.perf_counter() - t0


def itsp_count(port: int) -> int:
    import http.client

    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("GET", "/_count")
        return int(conn.getresponse().read())
    finally:
        conn.close()


def run_setup(base: Path, a, label: str, websms: str, daemon: str,
              itsp_port: int = 0) -> None:
    d = c.Daemon(base / f"d-{label}", websms=websms, daemon=daemon)
    d.start()
    try:
        time.sleep(0.5)
        asyncio.run(drive(d.agi_port, a.warmup, 1, 0, a.timeout))
        next_i = a.warmup
        for concurrency in (1, a.concurrency):
            c.wait_quiet(a.quiet_wait)
            cpu0 = c.cpu_seconds(d.proc.pid)
            busy0 = c.machine_busy()
            lat, statuses, errors, elapsed = asyncio.run(
                drive(d.agi_port, a.sessions, concurrency, next_i, a.timeout))
            cpu = c.cpu_delta(cpu0, c.cpu_seconds(d.proc.pid))
            other = max(0.0, c.machine_busy() - busy0 - cpu["total"]) / elapsed
            next_i += a.sessions
            what = "sequential" if concurrency == 1 else f"{concurrency} at once"
            got = ", ".join(f"{k} {v}" for k, v in sorted(statuses.items()))
            if errors:
                got += f", errors {errors}"
            print(f"   {what:12} {c.lat_line(lat)}")
            print(f"   {'':12} {len(lat) / elapsed:.0f} sessions/s; {got}; daemon CPU "
                  f"{cpu['total'] * 1000 / max(1, len(lat)):.2f} ms/session (main thread "
                  f"{cpu['main'] * 1000 / max(1, len(lat)):.2f}); other processes busy "
                  f"{other:.2f} cores")
            sys.stdout.flush()
        time.sleep(1.0)
        total = next_i
        rows = d.rows("SELECT status, COUNT(*) FROM messages GROUP BY status")
        stored = ", ".join(f"{s} {n}" for s, n in rows)
        line = f"   store: {sum(n for _, n in rows)} messages for {total} sessions ({stored})"
        if itsp_port:
            line += f"; the fake ITSP got {itsp_count(itsp_port)} requests"
        if not itsp_port:
            line += ("\n   (sending: attempts in flight 1 s after the last session; a refused "
                     "connection is retried ~0.3 s later within the attempt, 8 messages at a "
                     "time, so a backlog drains at ~25 messages/s)")
        print(line)
        print(f"   RSS {c.rss_mb(d.proc.pid):.1f} MB after the sessions")
    finally:
        d.stop()


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description="FastAGI session latency benchmark")
    p.add_argument("--sessions", type=int, default=500, help="sessions per measurement")
    p.add_argument("--concurrency", type=int, default=8)
    p.add_argument("--warmup", type=int, default=50)
    p.add_argument("--timeout", type=float, default=30.0, help="per AGI answer, seconds")
    p.add_argument("--skip", action="append", default=[], choices=("live", "dead"))
    p.add_argument("--quiet-wait", type=float, default=10.0,
                   help="before each measurement, wait up to this many seconds for other "
                        "processes to use less than 0.25 cores; 0: never wait")
    p.add_argument("--quick", action="store_true", help="small counts, for a smoke test")
    p.add_argument("--keep", action="store_true", help="keep the scratch directory")
    a = p.parse_args(argv)
    if a.quick:
        a.sessions, a.warmup = 100, 10

    base = c.workdir()
    c.header("websmsd FastAGI benchmark", str(base))
    print(f"   load     {a.sessions} sessions sequential, then {a.sessions} with "
          f"{a.concurrency} at once (after {a.warmup} warm-up sessions); load average "
          f"{c.loadavg()}")
    try:
        if "live" not in a.skip:
            port = c.free_port()
            itsp = subprocess.Popen([sys.executable, str(c.BENCH / "fake_itsp.py"),
                                     "--port", str(port)])
            try:
                c.wait_accepting(port, 15, itsp)
                print("-- live ITSP (bench/fake_itsp.py answers at once), agi_wait 10 s: "
                      "expect SENT")
                run_setup(base, a, "live",
                          websms=f"url_host = http://127.0.0.1:{port}\nurl_path = /send\n"
                                 "auth_method = none",
                          daemon="", itsp_port=port)
            finally:
                c.stop(itsp)
        if "dead" not in a.skip:
            port = c.free_port()  # nothing listens here
            print("-- dead ITSP (connection refused), agi_wait 1 ms: expect QUEUED "
                  "(queueing alone)")
            run_setup(base, a, "dead",
                      websms=f"url_host = http://127.0.0.1:{port}\nauth_method = none",
                      daemon="agi_wait = 0.001\nretry_base = 1h\nretry_max = 1h")
    finally:
        c.cleanup(base, a.keep)
    return 0


if __name__ == "__main__":
    sys.exit(main())
