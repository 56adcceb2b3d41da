"""What the daemon measures about itself, for /metrics and the status page.

Small on purpose: counters by reason, a bounded list of recent events of each kind, what
each route achieved (sends timed in a histogram, last success and last failure), all
rendered in the Prometheus text format (version 0.0.4) by `exposition`.  Channels and the
dispatcher write here; the status listener only reads.  Pure Python.
"""

from __future__ import annotations

import math
from collections import Counter, deque
from dataclasses import dataclass
from typing import Deque, Dict, Iterable, List, Optional, Sequence, Tuple

Labels = Tuple[Tuple[str, str], ...]

# Seconds.  A peer answers in tens of milliseconds to a few seconds; http_timeout (30 s
# by default) caps an ITSP's send.
SEND_BUCKETS = (0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


def _number(value: float) -> str:
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, int):
        return str(value)
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if math.isnan(value):
        return "NaN"
    if value == int(value) and abs(value) < 1e15:
        return str(int(value))
    return repr(float(value))


def _label_value(value: str) -> str:
    # The format's three escapes; anything else (any Unicode) is taken literally.
    return str(value).replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(labels: Iterable[Tuple[str, str]]) -> str:
    pairs = [f'{k}="{_label_value(v)}"' for k, v in labels]
    return "{" + ",".join(pairs) + "}" if pairs else ""


class Family:
    """One metric family: name, type, help and its samples, ready to be written out."""

    def __init__(self, name: str, kind: str, help: str):
        self.name = name
        self.kind = kind
        self.help = help
        self.samples: List[Tuple[str, Labels, float]] = []

    def add(self, value: float, suffix: str = "", **labels: str) -> "Family":
        self.samples.append((suffix, tuple(labels.items()), value))
        return self

    def lines(self) -> List[str]:
        help_text = self.help.replace("\\", "\\\\").replace("\n", "\\n")
        out = [f"# HELP {self.name} {help_text}", f"# TYPE {self.name} {self.kind}"]
        for suffix, labels, value in self.samples:
            out.append(f"{self.name}{suffix}{_labels(labels)} {_number(value)}")
        return out


def exposition(families: Iterable[Family]) -> str:
    """The Prometheus text format for these families."""
    lines: List[str] = []
    for family in families:
        lines.extend(family.lines())
    return "\n".join(lines) + "\n"


class Histogram:
    """A Prometheus histogram with one label (e.g. the route)."""

    def __init__(self, name: str, help: str, label: str,
                 buckets: Sequence[float] = SEND_BUCKETS):
        self.name = name
        self.help = help
        self.label = label
        self.buckets = tuple(sorted(buckets))
        # per label value: [count per bucket (not cumulative)..., +Inf], sum, count
        self._series: Dict[str, Tuple[List[int], List[float]]] = {}

    def observe(self, value: float, label_value: str = "") -> None:
        counts, total = self._series.setdefault(
            label_value, ([0] * (len(self.buckets) + 1), [0.0, 0])
        )
        for i, bound in enumerate(self.buckets):
            if value <= bound:
                counts[i] += 1
                break
        else:
            counts[-1] += 1
        total[0] += value
        total[1] += 1

    def count(self, label_value: str = "") -> int:
        series = self._series.get(label_value)
        return int(series[1][1]) if series else 0

    def family(self, label_values: Iterable[str] = ()) -> Family:
        """Samples for every label value seen, and zeros for `label_values` not seen."""
        f = Family(self.name, "histogram", self.help)
        names = sorted(set(self._series) | set(label_values))
        for name in names:
            counts, (total, n) = self._series.get(
                name, ([0] * (len(self.buckets) + 1), (0.0, 0))
            )
            running = 0
            for bound, c in zip(self.buckets + (math.inf,), counts):
                running += c
                f.add(running, "_bucket", **{self.label: name, "le": _number(bound)})
            f.add(total, "_sum", **{self.label: name})
            f.add(int(n), "_count", **{self.label: name})
        return f


@dataclass
class RouteRecord:
    """What one route achieved since the daemon started."""

    sends: int = 0
    last_success: Optional[float] = None
    last_failure: Optional[float] = None
    last_reason: Optional[str] = None  # of the last failure
    down: Optional[str] = None  # why the route is down now (None: up)
    down_since: Optional[float] = None

    @property
    def state(self) -> str:
        if not self.sends:
            return "idle"
        if self.last_failure is not None and (self.last_success is None
                                              or self.last_failure > self.last_success):
            return "failing"
        return "ok"


RECENT = 50  # events kept of each kind


class Metrics:
    """The daemon's own measurements, shared by the channels and the status listener."""

    def __init__(self) -> None:
        self.send_seconds = Histogram(
            "websmsd_send_seconds",
            "Duration of each attempt to hand a message on, by route.",
            "route",
        )
        self.routes: Dict[str, RouteRecord] = {}
        # Counters by name, then by key (e.g. "webhook_refusals" by reason).
        self.counters: Dict[str, Counter] = {}
        # The last RECENT events of each kind (e.g. "refusals": time, source, path,
        # reason; never message text).
        self.events: Dict[str, Deque[dict]] = {}

    def route(self, route: str) -> RouteRecord:
        return self.routes.setdefault(route, RouteRecord())

    def sent(self, route: str, started: float, now: float, ok: bool,
             reason: Optional[str] = None) -> None:
        """An attempt on `route` that began at `started` ended now, well or not."""
        self.send_seconds.observe(max(0.0, now - started), route)
        r = self.route(route)
        r.sends += 1
        if ok:
            r.last_success = now
        else:
            r.last_failure, r.last_reason = now, reason or "unknown"

    def count(self, name: str, key: str, n: int = 1) -> None:
        self.counters.setdefault(name, Counter())[key] += n

    def counter(self, name: str) -> Counter:
        return self.counters.setdefault(name, Counter())

    def note(self, kind: str, event: dict) -> None:
        self.events.setdefault(kind, deque(maxlen=RECENT)).append(event)

    def recent(self, kind: str, n: int = RECENT) -> List[dict]:
        """The last `n` events of `kind`, newest first."""
        found = list(self.events.get(kind, ()))[-n:]
        found.reverse()
        return found
