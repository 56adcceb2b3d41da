"""SMS Gateway for Android: which inbox entries are new (pure, no Twisted).

The app's ``GET /inbox`` has no cursor: newest first (createdAt, then id, descending),
offset paging and ``X-Total-Count``; createdAt is the SMS centre's time (a late SMS is
old); ids are hashes that need not be unique, and one SMS can appear under two ids.
`InboxReader` is the policy over that; `InboxState` is what the caller persists between
polls.  The protocol (entries, pages, query strings) is in `websmsd.android.smsgate`.
"""

from __future__ import annotations

import bisect
import json
import re
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Tuple, Union

from .smsgate import MAX_LIMIT, InboxEntry, InboxPage, Moment, format_datetime, to_ms
from websmsd.record import frozen

# --------------------------------------------------------------------------------------
# InboxReader: which inbox entries are new
# --------------------------------------------------------------------------------------


@dataclass(frozen=True, order=True)
class Seen:
    """One inbox row the reader has dealt with (taken, or skipped as history/duplicate)."""

    created_ms: int
    identity: str  # the row (InboxEntry.identity)
    content: str  # sender + text (InboxEntry.content_digest), for same-SMS-other-id


@frozen
class InboxState:
    """What the caller persists between polls, in the same transaction as the SMS taken.

    floor_ms: entries stamped before this (phone/SMSC time) are below the horizon: the
    reader no longer remembers them one by one.
    below: how many entries the inbox held below the floor when last counted (None:
    not counted yet).  More later means SMS arrived stamped older than the horizon.
    seen: the rows at or above the floor already dealt with.

    `to_json()` is about 50 bytes per remembered row (no text, no number).
    """

    floor_ms: int
    below: Optional[int] = None
    seen: Tuple[Seen, ...] = ()

    VERSION = 1

    @classmethod
    def start(cls, since: Moment) -> "InboxState":
        """A first state: take what is stamped `since` or later, none of the history before."""
        return cls(max(0, to_ms(since)))

    @property
    def watermark_ms(self) -> int:
        return max([self.floor_ms] + [s.created_ms for s in self.seen])

    def to_json(self) -> str:
        return json.dumps({
            "v": self.VERSION,
            "floor": self.floor_ms,
            "below": self.below,
            "seen": [f"{s.created_ms}:{s.identity}:{s.content}" for s in sorted(self.seen)],
        }, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: Union[str, bytes]) -> "InboxState":
        """Raises ValueError for anything `to_json` did not write."""
        try:
            data = json.loads(text)
        except (ValueError, RecursionError) as e:
            raise ValueError(f"inbox state: {e}") from None
        if not isinstance(data, dict) or data.get("v") != cls.VERSION:
            raise ValueError("inbox state: unknown version")
        floor, below, seen = data.get("floor"), data.get("below"), data.get("seen")
        if isinstance(floor, bool) or not isinstance(floor, int) or floor < 0:
            raise ValueError("inbox state: bad floor")
        if below is not None and (isinstance(below, bool) or not isinstance(below, int) or below < 0):
            raise ValueError("inbox state: bad count")
        if not isinstance(seen, list):
            raise ValueError("inbox state: bad rows")
        rows = []
        for item in seen:
            m = re.fullmatch(r"([0-9]{1,15}):([0-9a-f]{16}):([0-9a-f]{16})", item) if isinstance(item, str) else None
            if not m:
                raise ValueError("inbox state: bad row")
            rows.append(Seen(int(m.group(1)), m.group(2), m.group(3)))
        return cls(floor, below, tuple(rows))


@frozen
class InboxRequest:
    """One ``GET /inbox`` the scan needs next (pass to `SMSGateClient.inbox`)."""

    since_ms: Optional[int]
    until_ms: Optional[int]
    limit: int
    offset: int
    purpose: str  # "probe", "below", "range" (or "window" when the phone gives no counts)


@frozen
class ScanResult:
    """The end of one scan.

    new: the SMS to hand to the store, oldest first; store each under `entry.key`.
    duplicates: rows that repeat an SMS already seen under another id (not taken).
    skipped: rows of another type (DATA_SMS, MMS) and unreadable rows (not taken).
    state: persist it together with `new`, in one transaction.
    late: how many rows turned up below the floor (stamped older than the horizon, or
    given up when memory was full): they cannot be told apart from the history there and
    are not taken; say so loudly.
    complete: every unknown row of the window was found; False when the scan stopped at
    max_requests/max_new (the next poll goes on).
    """

    new: Tuple[InboxEntry, ...]
    duplicates: Tuple[InboxEntry, ...]
    skipped: Tuple[Any, ...]
    state: InboxState
    late: int
    requests: int
    complete: bool
    warnings: Tuple[str, ...] = ()


DAY_MS = 24 * 3600 * 1000
MIN_REQUESTS = 64


@frozen
class InboxReader:
    """The policy for reading the phone's inbox without a cursor.  Pure.

    Each poll is one `scan` driven by the caller: ``scan.next_request()`` says which
    ``GET /inbox`` to make, ``scan.feed(page)`` takes its answer, ``scan.result()`` ends it.
    An error halfway: drop the scan (the state is unchanged; nothing is lost).

    How it decides (the inbox only grows: rows are never marked read nor deleted):

    1. probe: the newest page and ``X-Total-Count``.  When the total is the rows below
       the floor plus the rows remembered plus the unknown rows on that page, the page
       holds everything new: one request per poll, the usual case.
    2. below: the count of rows stamped before the floor (``to=floor-1ms``).  Growth
       there is an SMS that reached the phone stamped older than the horizon: it cannot
       be told from the history there, so it is counted (`ScanResult.late`), not taken.
    3. ranges: otherwise the window [floor, now] is searched by time.  For each range
       (``from``/``to``, both inclusive) the phone's count is compared with the rows
       remembered there; a range with more rows than known is narrowed (the part its
       newest page did not cover, halved) until every unknown row is found.  A late SMS
       (an old createdAt, deep in the list) costs a few requests per halving, not a walk
       through the whole inbox, and offsets shifted by arrivals do not matter.  An arrival
       that slips between a count and its page is found by the next poll's probe.

    A row is new when its identity (id + content + time) is unknown and its SMS (sender +
    createdAt + text) is not already known under another id.  With `near_window_ms` > 0
    the same sender and text within that many ms also count as the same SMS: the app
    (v1.66.1, and re-reads before v1.66.2) stored some SMS a second time under the phone's
    receiving time; see `near_window_for_version`.  Leave it 0 otherwise: the same text
    sent twice by one person is two SMS.

    Memory is bounded: rows are remembered for `horizon_ms` below the newest one
    (default 7 days, longer than SMS centres keep an undelivered SMS) and at most
    `max_keys` of them (twice that while a backlog is being read); older ones are only
    counted.  A scan makes at most `max_requests` requests and takes at most `max_new`
    rows; the next poll goes on.  Every SMS given up is counted in `ScanResult.late`.
    """

    horizon_ms: int = 7 * DAY_MS
    max_keys: int = 10_000
    page_size: int = 100
    near_window_ms: int = 0
    max_requests: int = 200
    max_new: int = 1000

    def __post_init__(self) -> None:
        if not 1 <= self.page_size <= MAX_LIMIT:
            raise ValueError(f"page_size is 1..{MAX_LIMIT}")
        if self.horizon_ms < 0 or self.max_keys < 1 or self.max_new < 1:
            raise ValueError("bounds must be positive")
        if self.max_requests < MIN_REQUESTS:
            # A halving search down to one millisecond takes up to ~60 requests: fewer and
            # a deep late SMS might never be reached.
            raise ValueError(f"max_requests is at least {MIN_REQUESTS}")
        if self.near_window_ms < 0:
            raise ValueError("near_window_ms is 0 or more")

    def begin(self, state: InboxState) -> "InboxScan":
        return InboxScan(self, state)


def near_window_for_version(version: Optional[str]) -> int:
    """The `near_window_ms` the app's version needs: 2 minutes for v1.66.1, else 0.

    v1.66.1's content observer stores every received SMS a second time, stamped with the
    phone's receiving time instead of the SMS centre's (fixed in v1.66.2).
    """
    return 120_000 if version is not None and version.lstrip("v").split("-")[0] == "1.66.1" else 0


def _count_in(times: List[int], low: int, high: Optional[int]) -> int:
    """How many of the sorted `times` lie in [low, high] (high None: no upper bound)."""
    start = bisect.bisect_left(times, low)
    end = len(times) if high is None else bisect.bisect_right(times, high)
    return max(0, end - start)


class InboxScan:
    """One poll of the inbox (see InboxReader).  Feed it the pages it asks for."""

    def __init__(self, reader: InboxReader, state: InboxState) -> None:
        self.reader = reader
        self.state = state
        floor = state.floor_ms
        self._held: Dict[str, Seen] = {s.identity: s for s in state.seen if s.created_ms >= floor}
        self._held_times = sorted(s.created_ms for s in self._held.values())
        self._scanned: Dict[str, Tuple[Optional[InboxEntry], int]] = {}  # identity -> (entry|None, created)
        self._unknown_times: List[int] = []  # created of scanned rows not held, sorted
        self._tasks: List[Tuple[int, Optional[int], int]] = []  # ranges still to search: (from, to, offset)
        self._covered: List[Tuple[int, Optional[int]]] = []  # ranges seen whole
        self._pending: Optional[InboxRequest] = None
        self._phase = "probe"
        self._below: Optional[int] = state.below
        self._late = 0
        self._requests = 0
        self._linear_offset = 0
        self._done = False
        self._complete = False
        self._warnings: List[str] = []

    # -- driving -----------------------------------------------------------------------

    def next_request(self) -> Optional[InboxRequest]:
        if self._done:
            return None
        if self._pending is not None:
            return self._pending
        size, floor = self.reader.page_size, self.state.floor_ms
        if self._phase == "probe":
            request = InboxRequest(None, None, size, 0, "probe")
        elif self._phase == "below":
            request = InboxRequest(None, floor - 1, 1, 0, "below")
        elif self._phase == "window":  # no X-Total-Count: read the whole window
            request = InboxRequest(floor, None, size, self._linear_offset, "window")
        else:
            low, high, offset = self._tasks[-1]
            request = InboxRequest(low, high, size, offset, "range")
        self._pending = request
        return request

    def feed(self, page: InboxPage) -> None:
        request = self._pending
        if request is None or self._done:
            raise RuntimeError("feed() without a request from next_request()")
        self._pending = None
        self._requests += 1
        if request.purpose == "probe":
            self._feed_probe(page)
        elif request.purpose == "below":
            self._feed_below(page)
        elif request.purpose == "window":
            self._feed_window(page)
        else:
            self._tasks.pop()
            self._feed_range(request, page)
        if not self._done:
            self._check_bounds()

    # -- bookkeeping -------------------------------------------------------------------

    def _record(self, page: InboxPage, default_created: int) -> List[int]:
        """Note the page's rows at or above the floor; their times, in page order."""
        floor = self.state.floor_ms
        times = []
        rows: List[Tuple[str, Optional[InboxEntry], int]] = [(e.identity, e, e.created_ms) for e in page.entries]
        rows += [(bad.identity, None, default_created if bad.created_ms is None else bad.created_ms)
                 for bad in page.invalid]
        for identity, entry, created in rows:
            times.append(created)
            if created < floor or identity in self._scanned:
                continue
            self._scanned[identity] = (entry, created)
            if identity not in self._held:
                bisect.insort(self._unknown_times, created)
        return times

    def _check_bounds(self) -> None:
        if len(self._unknown_times) >= self.reader.max_new or self._requests >= self.reader.max_requests:
            self._warnings.append(f"inbox scan stopped after {self._requests} requests "
                                  f"({len(self._unknown_times)} new rows): the next poll goes on")
            self._done = True

    def _finish(self) -> None:
        self._complete = True
        self._done = True

    # -- phases ------------------------------------------------------------------------

    def _feed_probe(self, page: InboxPage) -> None:
        self._record(page, self.state.floor_ms)
        if (page.total is not None and self.state.below is not None
                and page.total == self.state.below + len(self._held) + len(self._unknown_times)):
            self._finish()
            return
        if self.state.floor_ms > 0:
            self._phase = "below"
        else:
            self._below = 0
            self._start_search(page.total is not None)

    def _feed_below(self, page: InboxPage) -> None:
        previous = self.state.below
        if page.total is None:
            self._below = None
        else:
            if previous is not None and page.total > previous:
                self._late = page.total - previous
            elif previous is not None and page.total < previous:
                self._warnings.append(
                    f"the phone's inbox lost {previous - page.total} old rows (an app upgrade empties it once)")
            self._below = page.total
        self._start_search(page.total is not None)

    def _start_search(self, counts: bool) -> None:
        if counts:
            self._phase = "range"
            self._tasks = [(self.state.floor_ms, None, 0)]
        else:
            self._warnings.append("no X-Total-Count in the inbox answer: every poll reads the whole window")
            self._phase = "window"

    def _feed_window(self, page: InboxPage) -> None:
        self._record(page, self.state.floor_ms)
        self._linear_offset += page.size
        if page.size < self.reader.page_size:
            self._covered.append((self.state.floor_ms, None))
            self._finish()

    def _feed_range(self, request: InboxRequest, page: InboxPage) -> None:
        low, high, offset = request.since_ms, request.until_ms, request.offset
        assert low is not None
        times = self._record(page, low)
        total = page.total
        if total is None:
            self._start_search(False)
            self._tasks = []
            return
        if offset + page.size >= total:
            if offset == 0:
                self._covered.append((low, high))
        else:
            deficit = (total - _count_in(self._held_times, low, high)
                       - _count_in(self._unknown_times, low, high))
            if deficit > 0 and times:
                self._narrow(low, high, offset, times)
        if not self._tasks:
            self._finish()

    def _narrow(self, low: int, high: Optional[int], offset: int, times: List[int]) -> None:
        """A range holds unknown rows its page did not show: search what the page missed.

        The page showed every row newer than its oldest time; what is left is [low, oldest].
        """
        oldest = min(times)
        if high is not None and oldest >= high:
            # The whole page sits on the range's last millisecond: page on through it.
            at_high = offset + len(times) if low == high else len(times)
            self._tasks.append((high, high, at_high))
            if low < high:
                self._split(low, high - 1)
            return
        if oldest <= low:
            self._tasks.append((low, low, sum(1 for t in times if t == low)))
            return
        self._split(low, oldest)

    def _split(self, low: int, high: int) -> None:
        if low == high:
            self._tasks.append((low, low, 0))
            return
        middle = (low + high) // 2
        self._tasks.append((low, middle, 0))
        self._tasks.append((middle + 1, high, 0))

    # -- the end -----------------------------------------------------------------------

    def result(self) -> ScanResult:
        if not self._done:
            raise RuntimeError("result() before the scan is done")
        state = self.state
        held = dict(self._held)
        # Rows remembered in a range seen whole but no longer there are gone (the app's
        # one-time table reset): forget them, or the counts never add up again.
        for identity, seen in list(held.items()):
            if identity not in self._scanned and any(
                    low <= seen.created_ms and (high is None or seen.created_ms <= high)
                    for low, high in self._covered):
                del held[identity]

        known_content: Dict[str, List[int]] = {}
        for s in held.values():
            bisect.insort(known_content.setdefault(s.content, []), s.created_ms)
        fresh = [(entry, identity, created) for identity, (entry, created) in self._scanned.items()
                 if identity not in self._held]
        fresh.sort(key=lambda row: (row[2], row[0].id if row[0] else row[1]))
        new: List[InboxEntry] = []
        duplicates: List[InboxEntry] = []
        skipped: List[Any] = []
        rows: Dict[str, Seen] = dict(held)
        for entry, identity, created in fresh:
            if entry is None:
                skipped.append(identity)
                rows[identity] = Seen(created, identity, identity)
                continue
            rows[identity] = Seen(created, identity, entry.content_digest)
            if entry.type.upper() != "SMS":
                skipped.append(entry)
                continue
            if self._same_sms_known(known_content, entry):
                duplicates.append(entry)
            else:
                new.append(entry)
            bisect.insort(known_content.setdefault(entry.content_digest, []), entry.created_ms)

        next_state = self._advance(InboxState(state.floor_ms, self._below, tuple(rows.values())))
        warnings = list(self._warnings)  # after _advance: it may add one
        if self._late:
            warnings.append(f"{self._late} SMS stamped before {format_datetime(state.floor_ms)} "
                            "(older than the horizon, or given up when memory was full): not taken")
        return ScanResult(tuple(new), tuple(duplicates), tuple(skipped), next_state, self._late,
                          self._requests, self._complete, tuple(warnings))

    def _same_sms_known(self, known: Dict[str, List[int]], entry: InboxEntry) -> bool:
        times = known.get(entry.content_digest)
        if not times:
            return False
        window = self.reader.near_window_ms
        i = bisect.bisect_left(times, entry.created_ms - window)
        return i < len(times) and times[i] <= entry.created_ms + window

    def _advance(self, state: InboxState) -> InboxState:
        """Move the floor up to (newest - horizon) and to max_keys rows; count what drops.

        Only after a complete scan: an unfinished one may have left unknown rows that a
        higher floor would hide for good, so until the backlog is read the rows may grow
        past max_keys, up to twice that; beyond, the floor moves anyway (memory stays
        bounded) with a warning, and what is given up is counted as `late` next poll.
        """
        reader = self.reader
        rows = sorted(state.seen)
        floor = state.floor_ms
        forced = False
        if self._complete:
            floor = max(floor, state.watermark_ms - reader.horizon_ms)
            if len(rows) > reader.max_keys:
                floor = max(floor, rows[len(rows) - reader.max_keys].created_ms)
        elif len(rows) > 2 * reader.max_keys:
            floor = max(floor, rows[len(rows) - reader.max_keys].created_ms)
            forced = True
        if floor == state.floor_ms:
            return state
        kept = tuple(r for r in rows if r.created_ms >= floor)
        below = state.below
        if below is not None:
            # Exact after a complete scan; after a forced move, rows not read yet in the
            # gap show up in the next count below the floor and are reported as `late`.
            below += len(rows) - len(kept)
        if forced:
            self._warnings.append(
                f"more than {2 * reader.max_keys} inbox rows to remember with the scan unfinished: "
                f"rows stamped before {format_datetime(floor)} not read yet are given up")
        return InboxState(floor, below, kept)


__all__ = [
    "DAY_MS", "InboxReader", "InboxRequest", "InboxScan", "InboxState", "ScanResult", "Seen",
    "near_window_for_version",
]
