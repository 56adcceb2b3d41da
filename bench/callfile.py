"""Call files: stage (write + fsync each) then publish (rename into outgoing) in batches.

    /usr/bin/python3 bench/callfile.py [--count 1000] [--batch 1000] [--repeat 3] [--keep]

No daemon: CallFileSpool itself, as the store's worker thread calls it, on a scratch
directory on a real disk (WEBSMSD_BENCH_DIR, default /var/tmp: fsync must cost what it
costs). Each run stages --count call files of a short message in batches of --batch
(one staging-directory fsync per batch), then publishes each batch (renames, then one
fsync of each directory). Prints, per run, the stage and publish times, the time per
file, and files per second; then the best and the median run.

Figures only; nothing is asserted (tests/test_callfile.py checks the behaviour).
Bounded by --count and --repeat.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import _common as c  # noqa: E402

sys.path.insert(0, str(c.ROOT))

from websmsd.asterisk.callfile import CallFileSpool, callfile_name, render  # noqa: E402
from websmsd.config import AstQueueSettings  # noqa: E402
from websmsd.message import new_id  # noqa: E402

TO = "+15015550199"
FROM = "+15015550100"


def one_run(base: str, run: int, count: int, batch: int) -> dict:
    q = AstQueueSettings(
        stagingdir=os.path.join(base, f"run{run}", "staging"),
        outgoingdir=os.path.join(base, f"run{run}", "outgoing"),
        channel_context="dp_entry_answer", context="dp_entry_text_in", archive="yes",
    )
    spool = CallFileSpool(q)
    spool.ensure_dirs()
    mid = new_id()
    items = [(callfile_name(mid, i + 1), render(q, TO, FROM, f"bench message {i}"))
             for i in range(count)]
    stage = publish = 0.0
    for start in range(0, count, batch):
        chunk = items[start:start + batch]
        t0 = time.perf_counter()
        spool.stage(chunk)
        t1 = time.perf_counter()
        spool.publish([name for name, _ in chunk])
        t2 = time.perf_counter()
        stage += t1 - t0
        publish += t2 - t1
    published = len(os.listdir(spool.outgoingdir))
    return {"stage": stage, "publish": publish, "size": len(items[0][1]),
            "published": published, "left": len(os.listdir(spool.stagingdir))}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--count", type=int, default=1000, help="call files per run")
    ap.add_argument("--batch", type=int, default=1000, help="call files per stage/publish")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="100 files, one run")
    ap.add_argument("--keep", action="store_true", help="keep the scratch directory")
    ap.add_argument("--quiet-wait", type=float, default=0.0,
                    help="accepted for bench/run-all; not used")
    args = ap.parse_args()
    if args.quick:
        args.count, args.repeat = min(args.count, 100), 1
    count, batch = max(1, args.count), max(1, args.batch)

    work = c.workdir()
    try:
        c.header("call files: stage + publish (CallFileSpool, no daemon)", str(work))
        rates = []
        for run in range(max(1, args.repeat)):
            r = one_run(str(work), run, count, batch)
            total = r["stage"] + r["publish"]
            rate = count / total if total else 0.0
            rates.append(rate)
            print(f"run {run + 1}: {count} call files of {r['size']} bytes in batches of {batch}:"
                  f" stage {r['stage']:.3f} s ({r['stage'] / count * 1e3:.2f} ms/file),"
                  f" publish {r['publish']:.3f} s ({r['publish'] / count * 1e3:.3f} ms/file),"
                  f" total {total:.3f} s = {rate:,.0f} files/s;"
                  f" published {r['published']}, left in staging {r['left']}")
            sys.stdout.flush()
        print(f"best {max(rates):,.0f} files/s, median {statistics.median(rates):,.0f} files/s")
    finally:
        c.cleanup(work, args.keep)
    return 0


if __name__ == "__main__":
    sys.exit(main())
