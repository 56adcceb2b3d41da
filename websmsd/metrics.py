"""What the daemon measures about itself, for /metrics and the status page.

Small on purpose: a histogram, a gauge channels can set, and a wrapper that times an
ITSP client's sends.  Rendered in the Prometheus text format (version 0.0.4) by
`exposition`.  Nothing here imports twisted.web; the wrapper needs only Deferreds.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple

from twisted.internet import defer

Labels = Tuple[Tuple[str, str], ...]

# Seconds.  An ITSP answers in tens of milliseconds to a few seconds; http_timeout
# (30 s by default) caps a send.
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
    """A Prometheus histogram with one label (e.g. the interface)."""

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


class Gauge:
    """Values channels set by name, e.g. whether each SMPP bind is up (1) or not (0)."""

    def __init__(self) -> None:
        self.values: Dict[str, float] = {}

    def set(self, name: str, value: float) -> None:
        self.values[name] = value

    def remove(self, name: str) -> None:
        self.values.pop(name, None)

    def total(self) -> float:
        return sum(self.values.values())


class SendRecord:
    """What is known of one ITSP interface since the daemon started."""

    __slots__ = ("state", "since", "last_ok", "last_failure", "last_reason", "sends")

    def __init__(self) -> None:
        self.state = "idle"  # idle (no send yet), ok, failing
        self.since: Optional[float] = None  # when the state began
        self.last_ok: Optional[float] = None
        self.last_failure: Optional[float] = None
        self.last_reason: Optional[str] = None  # of the last failure
        self.sends = 0


class MeasuredClient:
    """An ITSP client that times each send and remembers how each interface fares.

    It wraps the client the ITSP sink uses (`send(iface, to, sender, body)` firing with
    an Outcome that has `ok` and `reason`), so delivery code needs no hook.
    """

    def __init__(self, client: Any, histogram: Histogram, clock: Callable[[], float]):
        self._client = client
        self.histogram = histogram
        self.clock = clock
        self.interfaces: Dict[str, SendRecord] = {}

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)

    def record(self, name: str) -> SendRecord:
        return self.interfaces.setdefault(name, SendRecord())

    def send(self, iface: Any, *args: Any, **kw: Any) -> defer.Deferred:
        started = self.clock()
        d = defer.maybeDeferred(self._client.send, iface, *args, **kw)

        def done(outcome: Any) -> Any:
            self._outcome(iface.name, started, bool(outcome.ok),
                          getattr(outcome, "reason", None))
            return outcome

        def failed(failure: Any) -> Any:
            self._outcome(iface.name, started, False, f"internal error: {failure.value}")
            return failure

        d.addCallbacks(done, failed)
        return d

    def _outcome(self, name: str, started: float, ok: bool, reason: Optional[str]) -> None:
        now = self.clock()
        self.histogram.observe(max(0.0, now - started), name)
        r = self.record(name)
        r.sends += 1
        state = "ok" if ok else "failing"
        if state != r.state:
            r.state, r.since = state, now
        if ok:
            r.last_ok = now
        else:
            r.last_failure, r.last_reason = now, reason or "unknown"


class Metrics:
    """The daemon's own measurements, shared by the channels and the status listener."""

    def __init__(self) -> None:
        self.send_seconds = Histogram(
            "websmsd_itsp_send_seconds",
            "Duration of each request to an ITSP's HTTP API, by [websms] interface.",
            "interface",
        )
        # SMPP binds (and the like) set themselves here: 1 up, 0 down.
        self.binds = Gauge()
