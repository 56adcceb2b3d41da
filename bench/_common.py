"""Helpers shared by the benchmarks: the daemon (from tests/blackbox.py), figures, /proc.

Nothing here asserts anything; the benchmarks print figures.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.parse
from collections import Counter
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.insert(0, str(ROOT / "tests"))

from blackbox import Daemon, free_port, process_tree, wait_port  # noqa: E402,F401

CLK_TCK = os.sysconf("SC_CLK_TCK")
BODY_PREFIX = b"setvar: MESSAGE(body)="


# -- the machine -------------------------------------------------------------------------


def machine() -> str:
    model = "?"
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = "?"
    try:
        for line in open("/proc/meminfo"):
            if line.startswith("MemTotal:"):
                mem = f"{int(line.split()[1]) // 1024 // 1024 + 1} GiB"
                break
    except OSError:
        pass
    return f"{os.cpu_count()} cores ({model}), {mem}, Linux {platform.release()}"


def software() -> str:
    import twisted

    return (f"Python {platform.python_version()} ({sys.executable}), "
            f"Twisted {twisted.__version__}")


def fsync_ms(directory: str, n: int = 100) -> float:
    """Median time of write(100 bytes)+fsync on `directory`'s file system, in ms."""
    path = os.path.join(directory, ".fsync-probe")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    times = []
    try:
        for _ in range(n):
            t = time.perf_counter()
            os.write(fd, b"x" * 100)
            os.fsync(fd)
            times.append(time.perf_counter() - t)
    finally:
        os.close(fd)
        os.unlink(path)
    return statistics.median(times) * 1000


def file_cost(directory: Path, n: int = 256, group: int = 64) -> tuple:
    """What a call file costs `directory`'s file system, (wall ms, kernel CPU ms) per file:
    create, write 300 bytes, fsync (a group written first), rename into a sibling
    directory, fsync both directories, as websmsd's spool does.  On one ext4 disk this
    moved between 0.05 and 0.4 ms of kernel CPU per file with the directory (the block
    group it landed in), which moves websmsd's CPU figures with it."""
    import resource

    src, dst = Path(directory) / ".probe-staging", Path(directory) / ".probe-outgoing"
    for d in (src, dst):
        d.mkdir(parents=True, exist_ok=True)
    data = b"x" * 300

    def fsync_dir(path: Path) -> None:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    r0, t0 = resource.getrusage(resource.RUSAGE_THREAD), time.perf_counter()
    try:
        for start in range(0, n, group):
            names = [f"p{i}.call" for i in range(start, min(n, start + group))]
            fds = []
            try:
                for name in names:
                    fds.append(os.open(src / name, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600))
                    os.write(fds[-1], data)
                for fd in fds:
                    os.fsync(fd)
            finally:
                for fd in fds:
                    os.close(fd)
            fsync_dir(src)
            for name in names:
                os.rename(src / name, dst / name)
            fsync_dir(dst)
            fsync_dir(src)
        r1, t1 = resource.getrusage(resource.RUSAGE_THREAD), time.perf_counter()
    finally:
        shutil.rmtree(src, ignore_errors=True)
        shutil.rmtree(dst, ignore_errors=True)
    return (t1 - t0) * 1000 / n, (r1.ru_stime - r0.ru_stime) * 1000 / n


def file_cost_text(directory: Path) -> str:
    wall, kernel = file_cost(directory)
    return (f"a call file's create+write+fsync+rename costs {kernel:.3f} ms of kernel CPU "
            f"({wall:.3f} ms wall) here")


def header(title: str, workdir: str) -> None:
    print(f"== {title}")
    print(f"   date     {time.strftime('%Y-%m-%d %H:%M:%S %z')}")
    print(f"   machine  {machine()}")
    print(f"   software {software()}")
    print(f"   disk     {workdir}: fsync of a small write {fsync_ms(workdir):.2f} ms (median); "
          f"{file_cost_text(Path(workdir))}")
    sys.stdout.flush()


def workdir() -> Path:
    """A scratch directory on a real disk (fsync must cost what it costs)."""
    base = os.environ.get("WEBSMSD_BENCH_DIR") or "/var/tmp"
    if not os.path.isdir(base):
        base = tempfile.gettempdir()
    return Path(tempfile.mkdtemp(prefix="websmsd-bench-", dir=base))


def cleanup(path: Path, keep: bool) -> None:
    if keep:
        print(f"   (kept {path})")
    else:
        shutil.rmtree(path, ignore_errors=True)


# -- processes ---------------------------------------------------------------------------


def rss_mb(pid: int) -> Optional[float]:
    """VmRSS of one process, MB."""
    try:
        for line in open(f"/proc/{pid}/status"):
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def rss_tree(pid: int) -> List[tuple]:
    """[(pid, name, MB)] of `pid` and its descendants."""
    out = []
    for p in process_tree(pid):
        mb = rss_mb(p)
        if mb is None:
            continue
        try:
            name = open(f"/proc/{p}/comm").read().strip()
        except OSError:
            name = "?"
        out.append((p, name, mb))
    return out


def rss_total(pid: int) -> Optional[float]:
    """RSS of `pid` and its descendants together, MB (every process counts)."""
    tree = rss_tree(pid)
    return sum(mb for _, _, mb in tree) if tree else None


def rss_text(pid: int) -> str:
    tree = rss_tree(pid)
    if len(tree) == 1:
        return f"{tree[0][2]:.1f} MB (one process)"
    return (f"{sum(mb for _, _, mb in tree):.1f} MB in {len(tree)} processes ("
            + ", ".join(f"{name} {mb:.1f}" for _, name, mb in tree) + ")")


def cpu_seconds(pid: int) -> Dict[str, float]:
    """CPU seconds (user+system) of the process and its descendants: all threads of all
    of them, the first process's main thread, the rest.  (Children that exited and were
    waited for count in their parent's cutime/cstime, added too.)"""
    def fields_of(stat_path: str) -> List[str]:
        with open(stat_path) as f:
            return f.read().rsplit(")", 1)[1].split()

    def ticks(fields: List[str], children: bool = False) -> float:
        t = int(fields[11]) + int(fields[12])  # utime, stime
        if children:
            t += int(fields[13]) + int(fields[14])  # cutime, cstime
        return t / CLK_TCK

    try:
        main = ticks(fields_of(f"/proc/{pid}/task/{pid}/stat"))
        total = 0.0
        for p in process_tree(pid):
            try:
                total += ticks(fields_of(f"/proc/{p}/stat"), children=True)
            except OSError:
                continue  # exited meanwhile
    except OSError:
        return {"total": 0.0, "main": 0.0, "threads": 0.0}
    return {"total": total, "main": main, "threads": max(0.0, total - main)}


def cpu_delta(before: Dict[str, float], after: Dict[str, float]) -> Dict[str, float]:
    return {k: after[k] - before[k] for k in before}


def machine_busy() -> float:
    """CPU seconds all cores of the machine spent busy since boot (/proc/stat)."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return (sum(fields[:8]) - idle) / CLK_TCK


def wait_quiet(max_wait: float, threshold: float = 0.25, window: float = 0.5) -> float:
    """Wait (at most max_wait s) until the machine's other work uses under `threshold`
    cores over `window` s: other sessions' tests on a shared machine skew figures.
    Returns the seconds waited.  Call it while the benchmark's own servers are idle."""
    t0 = time.monotonic()
    while True:
        busy = machine_busy()
        time.sleep(window)
        if (machine_busy() - busy) / window < threshold or time.monotonic() - t0 >= max_wait:
            return time.monotonic() - t0


def loadavg() -> str:
    try:
        return open("/proc/loadavg").read().split()[0]
    except OSError:
        return "?"


def wait_accepting(port: int, timeout: float, proc: Optional[subprocess.Popen] = None,
                   interval: float = 0.002) -> float:
    """Poll until 127.0.0.1:port accepts; return the monotonic time it did."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode}")
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            s.connect(("127.0.0.1", port))
            if s.getsockname() != s.getpeername():  # not connected to itself (see
                return time.monotonic()             # tests/blackbox.py _self_connected)
        except OSError:
            pass
        finally:
            s.close()
        time.sleep(interval)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port}")


def stop(proc: Optional[subprocess.Popen], timeout: float = 15.0) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


# -- the load generator ------------------------------------------------------------------


def loadgen(port: int, out_dir: Path, *, count: int, conns: int = 16, kind: str = "form",
            procs: int = 1, rate: float = 0.0, duration: float = 60.0, close: bool = False,
            prefix: str = "t", path: str = "/", python: Optional[str] = None) -> dict:
    """Run bench/loadgen.py in `procs` processes (each with count/procs requests and
    conns/procs connections, started together) and merge what they report."""
    python = python or sys.executable
    start_at = time.time() + 0.3 if procs > 1 else 0.0
    busy0, wall0 = machine_busy(), time.monotonic()
    children = []
    for n in range(procs):
        out = out_dir / f"loadgen-{prefix}-{n}.json"
        share = count // procs + (1 if n < count % procs else 0)
        cmd = [python, str(BENCH / "loadgen.py"), "--port", str(port), "--path", path,
               "--kind", kind, "--conns", str(max(1, conns // procs)), "--count", str(share),
               "--duration", str(duration), "--prefix", f"{prefix}{n}x", "--out", str(out)]
        if rate:
            cmd += ["--rate", str(rate / procs)]
        if close:
            cmd.append("--close")
        if start_at:
            cmd += ["--start-at", repr(start_at)]
        children.append((subprocess.Popen(cmd), out))
    results = []
    for child, out in children:
        rc = child.wait(duration + 120)
        if rc != 0:
            raise RuntimeError(f"loadgen exited with {rc}")
        results.append(json.loads(out.read_text()))
        out.unlink()
    merged = merge(results)
    merged["machine_busy"] = machine_busy() - busy0
    merged["wall"] = time.monotonic() - wall0
    return merged


def merge(results: Sequence[dict]) -> dict:
    m: dict = {"procs": len(results)}
    for key in ("sent", "answered", "errors", "connects", "cpu"):
        m[key] = sum(r[key] for r in results)
    statuses: Counter = Counter()
    kinds: Counter = Counter()
    for r in results:
        statuses.update({int(k): v for k, v in r["statuses"].items()})
        kinds.update(r["error_kinds"])
    m["statuses"] = dict(sorted(statuses.items()))
    m["error_kinds"] = dict(kinds)
    firsts = [r["t_first"] for r in results if r["t_first"]]
    lasts = [r["t_last"] for r in results if r["t_last"]]
    m["t_first"] = min(firsts) if firsts else None
    m["t_last"] = max(lasts) if lasts else None
    m["active"] = (m["t_last"] - m["t_first"]) if firsts and lasts else None
    m["lat"] = [x for r in results for x in r["lat"]]
    m["sched_lat"] = [x for r in results for x in r["sched_lat"]]
    m["acked"] = [x for r in results for x in r["acked"]]
    m["ok"] = statuses.get(200, 0)
    m["rps"] = (m["ok"] / m["active"]) if m["active"] else 0.0
    return m


# -- figures -----------------------------------------------------------------------------


def pct(values: Sequence[float], p: float) -> float:
    """The p-th percentile (nearest rank) of values."""
    if not values:
        return float("nan")
    s = sorted(values)
    k = max(0, min(len(s) - 1, int(round(p / 100 * len(s) + 0.5)) - 1))
    return s[k]


def lat_line(values: Sequence[float]) -> str:
    if not values:
        return "no answers"
    ms = [v * 1000 for v in values]
    return (f"p50 {pct(ms, 50):.2f} ms  p90 {pct(ms, 90):.2f} ms  p99 {pct(ms, 99):.2f} ms  "
            f"max {max(ms):.2f} ms  (n={len(ms)})")


def statuses_line(statuses: Dict[int, int], errors: int) -> str:
    parts = [f"{code}: {n}" for code, n in sorted(statuses.items())]
    if errors:
        parts.append(f"transport errors: {errors}")
    return ", ".join(parts) or "nothing"


# -- call files --------------------------------------------------------------------------


def callfile_tokens(directory: Path) -> tuple:
    """(Counter of body texts, number of call files, latest ctime) of directory's files.

    The ctime of a file changes when it is renamed: for a call file in outgoing it is
    the moment it was handed to Asterisk.
    """
    tokens: Counter = Counter()
    latest = 0.0
    n = 0
    try:
        entries = list(os.scandir(directory))
    except FileNotFoundError:
        return tokens, 0, 0.0
    for e in entries:
        if not e.name.endswith(".call"):
            continue
        n += 1
        try:
            st = e.stat()
            with open(e.path, "rb") as f:
                data = f.read()
        except FileNotFoundError:
            continue
        latest = max(latest, st.st_ctime)
        for line in data.split(b"\n"):
            if line.startswith(BODY_PREFIX):
                tokens[urllib.parse.unquote(line[len(BODY_PREFIX):].decode())] += 1
                break
        else:
            tokens["<no body line>"] += 1
    return tokens, n, latest


def count_callfiles(directory: Path) -> int:
    try:
        return sum(1 for e in os.scandir(directory) if e.name.endswith(".call"))
    except FileNotFoundError:
        return 0


def wait_callfiles(directory: Path, expected: int, timeout: float = 60.0,
                   settle: float = 3.0) -> int:
    """Wait until `expected` call files are there, or the count stopped growing for
    `settle` seconds, or `timeout`; return the count."""
    deadline = time.monotonic() + timeout
    last, since = -1, time.monotonic()
    while time.monotonic() < deadline:
        n = count_callfiles(directory)
        if n >= expected:
            return n
        if n != last:
            last, since = n, time.monotonic()
        elif time.monotonic() - since > settle:
            return n
        time.sleep(0.1)
    return count_callfiles(directory)


def verify(directory: Path, acked: Iterable[str]) -> dict:
    """Compare the tokens acknowledged with 200 to the bodies of the call files."""
    tokens, files, latest = callfile_tokens(directory)
    acked = list(acked)
    acked_set = set(acked)
    return {
        "acked": len(acked),
        "acked_unique": len(acked_set),
        "files": files,
        "missing": len(acked_set - tokens.keys()),  # acknowledged, no call file: LOST
        "duplicated": sum(1 for t in acked_set if tokens.get(t, 0) > 1),
        # Of any message, acknowledged or not: a commit whose answer was lost (a kill)
        # may leave a call file, but never two.
        "duplicated_any": sum(1 for t, n in tokens.items() if n > 1),
        "unacked_files": sum(1 for t in tokens if t not in acked_set),
        "latest_ctime": latest,
    }


def verify_line(v: dict) -> str:
    verdict = "nothing lost, nothing duplicated" if (
        v["missing"] == 0 and v["duplicated"] == 0 and v["acked"] == v["acked_unique"]
        and not v.get("duplicated_any")
    ) else "LOST OR DUPLICATED MESSAGES"
    extra = f", {v['unacked_files']} call files for unacknowledged requests" if v[
        "unacked_files"] else ""
    if v.get("duplicated_any", 0) > v["duplicated"]:
        extra += f", {v['duplicated_any'] - v['duplicated']} unacknowledged ones doubled"
    return (f"{v['acked']} acknowledged (200), {v['files']} call files; "
            f"missing {v['missing']}, duplicated {v['duplicated']}{extra}: {verdict}")
