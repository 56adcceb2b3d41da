"""What the status listener shows, gathered from the store, the board and the metrics.

The model knows channels only through the board (their rows) and the metrics (what each
route achieved); messages come from the store's read-only connection (`Store.reader`),
never through the writer's transaction: a page view never holds up a webhook's commit.
"""

from __future__ import annotations

import socket
import time
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from twisted.internet import defer

from websmsd import __version__
from websmsd.http.board import ChannelBoard
from websmsd.http.site import IGNORED_EVENTS, REFUSALS, REPORTS
from websmsd.message import CANCELLED, DELIVERED, FAILED, QUEUED, RECEIVED, SENDING, SENT
from websmsd.metrics import Family, Metrics, exposition

RECENT_REFUSALS = 20
STATUS_COLUMNS = (QUEUED, SENDING, SENT, DELIVERED, FAILED, CANCELLED, RECEIVED)
# Webhook refusal kinds, always exported, also when zero.
REFUSAL_KINDS = ("bad_request", "bad_signature", "forbidden", "method", "store_failed",
                 "too_large")


def first_error(failure: Any) -> Any:
    """Unwrap the first error of a gatherResults failure."""
    from twisted.internet.defer import FirstError

    if failure.check(FirstError):
        return failure.value.subFailure
    return failure


class StatusModel:
    """What the status listener shows, gathered from the running daemon.

    `routes`: the configured routes, so that each has its row even before it carried
    anything."""

    def __init__(self, store: Any, board: ChannelBoard, metrics: Metrics, *,
                 routes: Sequence[str] = (), started: Optional[float] = None,
                 clock: Callable[[], float] = time.time):
        self.store = store
        self.board = board
        self.metrics = metrics
        self.configured_routes = tuple(routes)
        self.clock = clock
        self.started = clock() if started is None else started

    def routes(self, waiting: Dict[str, tuple]) -> List[dict]:
        """Per route what an owner asks: how many wait, since when, whether it fails (and
        why), when it last succeeded, whether it is down."""
        rows = []
        for route in sorted(set(self.configured_routes) | set(waiting)):
            n, oldest, reason = waiting.get(route, (0, None, None))
            r = self.metrics.routes.get(route)
            rows.append({
                "route": route,
                "waiting": n,
                "oldest": oldest,
                "reason": reason,
                "state": (r.state if r is not None else "idle"),
                "last_success": r.last_success if r is not None else None,
                "last_failure": r.last_failure if r is not None else None,
                "last_failure_reason": r.last_reason if r is not None else None,
                "down": r.down if r is not None else None,
                "down_since": r.down_since if r is not None else None,
            })
        return rows

    def webhook(self) -> dict:
        recent = self.metrics.recent(REFUSALS, RECENT_REFUSALS)
        return {"refusals": dict(sorted(self.metrics.counter(REFUSALS).items())),
                "ignored": dict(sorted(self.metrics.counter(IGNORED_EVENTS).items())),
                "reports": dict(sorted(self.metrics.counter(REPORTS).items())),
                "recent": [{k: r.get(k) for k in ("time", "kind", "status", "source",
                                                   "path", "reason")} for r in recent]}

    def snapshot(self) -> defer.Deferred:
        """Everything but the messages: JSON-able."""
        return defer.ensureDeferred(self._snapshot())

    async def _snapshot(self) -> dict:
        reader = self.store.reader
        channels, counts, waiting = await defer.gatherResults(
            [self.board.collect(), reader.counts(), reader.waiting()], consumeErrors=True
        ).addErrback(first_error)
        by_direction: Dict[str, Dict[str, int]] = {"in": {}, "out": {}}
        for (direction, _, status), n in counts.items():
            d = by_direction.setdefault(direction, {})
            d[status] = d.get(status, 0) + n
        return {
            "version": __version__,
            "host": socket.gethostname(),
            "now": self.clock(),
            "started": self.started,
            "channels": [c.json() for c in channels],
            "routes": self.routes(waiting),
            "messages": by_direction,
            "webhook": self.webhook(),
        }

    def metrics_text(self) -> defer.Deferred:
        return defer.ensureDeferred(self._metrics_text())

    async def _metrics_text(self) -> str:
        reader = self.store.reader
        counts, waiting = await defer.gatherResults(
            [reader.counts(), reader.waiting()], consumeErrors=True).addErrback(first_error)
        families: List[Family] = []
        f = Family("websmsd_messages", "gauge",
                   "Messages in the store, by direction and status.")
        totals: Dict[Tuple[str, str], int] = {}
        for (direction, _, status), n in counts.items():
            totals[(direction, status)] = totals.get((direction, status), 0) + n
        for direction in ("in", "out"):
            for status in sorted(set(STATUS_COLUMNS) | {s for d, s in totals if d == direction}):
                f.add(totals.get((direction, status), 0), direction=direction, status=status)
        families.append(f)
        rows = self.routes(waiting)
        f = Family("websmsd_queue_depth", "gauge",
                   "Messages waiting to be handed on (queued or sending), by route.")
        for row in rows:
            f.add(row["waiting"], route=row["route"])
        families.append(f)
        f = Family("websmsd_route_up", "gauge", "Whether each route can carry messages now.")
        for row in rows:
            f.add(0 if row["down"] else 1, route=row["route"])
        families.append(f)
        f = Family("websmsd_webhook_refusals_total", "counter",
                   "Webhook requests refused since start, by reason.")
        refusals = self.metrics.counter(REFUSALS)
        for kind in sorted(set(REFUSAL_KINDS) | set(refusals)):
            f.add(refusals.get(kind, 0), reason=kind)
        families.append(f)
        for name, counter, label, text in (
                ("websmsd_webhook_ignored_total", IGNORED_EVENTS, "reason",
                 "Webhook events acknowledged but neither a message nor a report."),
                ("websmsd_delivery_reports_total", REPORTS, "status",
                 "Delivery reports received, by the status they reported.")):
            f = Family(name, "counter", text)
            for key, n in sorted(self.metrics.counter(counter).items()):
                f.add(n, **{label: key})
            families.append(f)
        for name, counter in sorted(self.metrics.counters.items()):
            # What channels count (call files handed over...): websmsd_<name>_total.
            if name in (REFUSALS, IGNORED_EVENTS, REPORTS):
                continue
            f = Family(f"websmsd_{name}_total", "counter", f"{name} since start, by event.")
            for key, n in sorted(counter.items()):
                f.add(n, event=key)
            families.append(f)
        families.append(self.metrics.send_seconds.family(self.configured_routes))
        ok = Family("websmsd_last_success_timestamp_seconds", "gauge",
                    "When a route last handed a message on, by route (since start).")
        bad = Family("websmsd_last_failure_timestamp_seconds", "gauge",
                     "When an attempt on a route last failed, by route (since start).")
        for route, r in sorted(self.metrics.routes.items()):
            if r.last_success is not None:
                ok.add(r.last_success, route=route)
            if r.last_failure is not None:
                bad.add(r.last_failure, route=route)
        families += [ok, bad]
        families.append(Family("websmsd_store_commits_total", "counter",
                               "Store transactions committed since start.")
                        .add(getattr(self.store, "commits", 0)))
        families.append(Family("websmsd_start_time_seconds", "gauge",
                               "When the daemon started (epoch seconds).").add(self.started))
        return exposition(families)

    def messages(self, number: Optional[str], since: float, limit: int) -> defer.Deferred:
        """The newest messages, and the delivery reports of those a provider knows."""

        async def gather() -> Tuple[list, dict]:
            found = await self.store.reader.recent(since, limit, number)
            reports = await self.store.reader.reports([m.id for m in found if m.provider_id])
            return found, reports

        return defer.ensureDeferred(gather())
