"""Where channels say how they are: the rows of the status page's channel table.

A channel registers a reporter: a callable returning one or more `ChannelState`s (or a
Deferred of them).  The status page, /api/status and /metrics read only the board, so a
new channel adds its rows without touching the status listener.
"""

from __future__ import annotations

from typing import Any, Callable, List, Optional, Tuple

from twisted.internet import defer
from twisted.logger import Logger

from websmsd.channel import ChannelState

log = Logger()


Reporter = Callable[[], Any]  # -> ChannelState | [ChannelState] | Deferred of either


class ChannelBoard:
    """Where channels say how they are.  `register(reporter)` returns `reporter`, so that
    `board.unregister(it)` removes it again (a channel that is stopped for good)."""

    def __init__(self) -> None:
        self._reporters: List[Tuple[str, Reporter]] = []

    def register(self, reporter: Reporter, label: str = "") -> Reporter:
        self._reporters.append((label or getattr(reporter, "__name__", "channel"), reporter))
        return reporter

    def unregister(self, reporter: Reporter) -> None:
        self._reporters = [(l, r) for l, r in self._reporters if r is not reporter]

    def collect(self) -> defer.Deferred:
        """Fires with every reporter's ChannelStates, in registration order.  A reporter
        that fails shows as one row in state "error" rather than hiding the page."""
        ds = []
        for label, reporter in self._reporters:
            d = defer.maybeDeferred(reporter)
            d.addCallback(_as_states)
            d.addErrback(_reporter_failed, label)
            ds.append(d)
        d = defer.gatherResults(ds)
        d.addCallback(lambda lists: [s for states in lists for s in states])
        return d


def _as_states(value: Any) -> List[ChannelState]:
    if value is None:
        return []
    if isinstance(value, ChannelState):
        return [value]
    return list(value)


def _reporter_failed(failure: Any, label: str) -> List[ChannelState]:
    log.failure("status: channel reporter {label} failed", failure, label=label)
    return [ChannelState(label, "error", None,
                         f"its state could not be read: {failure.getErrorMessage()}")]


def listener_reporter(kind: str, description: str, svc: Any, since: Optional[float],
                      detail: Callable[[], str] = lambda: "") -> Reporter:
    """A listener (webhook, FastAGI, status): listening while its service runs."""

    def listener() -> ChannelState:
        running = svc is None or getattr(svc, "running", True)
        return ChannelState(description, "listening" if running else "stopped", since,
                            detail(), kind)

    return listener
