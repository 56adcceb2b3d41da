"""SMS Gateway for Android (capcom6, "SMSGate") in Local Server mode.

Here the phone is the HTTP server (Ktor, default port 8080, Basic auth) and websmsd the
client: it posts each SMS to ``POST /message`` with websmsd's own stable id, asks
``GET /message/{id}`` for its state, and polls ``GET /inbox`` for received SMS.

The module has two halves:

- pure (no Twisted): request bodies and query strings (`send_body`, `inbox_query`,
  `format_datetime`), answer readers (`send_outcome`, `parse_state`, `parse_inbox`,
  `parse_health`), and `InboxReader`, the policy that finds new inbox entries;
- `SMSGateClient`, a thin treq client over them.  Twisted is imported lazily, only when a
  client is made, so importing this module pulls in nothing from Twisted.

Facts that shape it (the app's Kotlin source, v1.68.0):

- A repeated ``id`` gets 409 since v1.58.0 (before: 202, ignored); either way the phone
  keeps one message per id, so a POST whose answer was lost can be repeated safely.
- 401 with an empty body for bad credentials; ``GET /health`` needs none and answers 500
  whenever the phone rates itself "fail" (battery under 10 %, messages that failed in the
  last hour, or no validated internet connection, e.g. a Wi-Fi without internet): the
  server is up then.
- Inbox dates need an offset (``Z`` or ``+hh:mm``); Ktor reads ``+`` in a query as a
  space, so it must travel as ``%2B``.
- The inbox has no cursor: newest first (createdAt, then id, descending), offset paging,
  ``X-Total-Count``; createdAt is the SMS centre's time (a late SMS is old); ids are
  hashes that need not be unique, and one SMS can appear under two ids.  See
  `InboxReader`.
"""

from __future__ import annotations

import bisect
import datetime as _dt
import hashlib
import json
import re
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Tuple, Union
from urllib.parse import quote

from .answer import JSONError, is_clean, is_text, json_bytes, load_json, one_line

MAX_ID = 64
MAX_NUMBER = 64
MAX_TEXT = 40_000
MAX_LIMIT = 500  # the app's bound for /inbox?limit=

# --------------------------------------------------------------------------------------
# Outcomes and errors
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Outcome:
    """What one `send` achieved.

    ok: the phone has the message (202, or 409: it had it already).
    permanent: refused for good; sending the same request again would not help.
    down: the route cannot be used now (no answer, credentials refused, not this app's
    server): not a failure of this message; pause the route rather than count an attempt.
    provider_id: the phone's id for the message (websmsd's own id, echoed).
    status: the HTTP status, None when no answer came.
    """

    ok: bool
    permanent: bool
    reason: str
    provider_id: Optional[str] = None
    down: bool = False
    status: Optional[int] = None


class SMSGateError(Exception):
    """A request other than `send` that got no usable answer.

    down: no answer, or credentials/URL wrong (the route is unusable now); otherwise the
    phone answered but not as expected (a transient error or a bug: the reason says).
    """

    def __init__(self, reason: str, *, down: bool = False, status: Optional[int] = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.down = down
        self.status = status


# --------------------------------------------------------------------------------------
# Dates
# --------------------------------------------------------------------------------------

_EPOCH = _dt.datetime(1970, 1, 1, tzinfo=_dt.timezone.utc)
_ONE_MS = _dt.timedelta(milliseconds=1)
MAX_EPOCH_MS = 253402300799999

Moment = Union[int, _dt.datetime]


def to_ms(value: Moment) -> int:
    """Milliseconds since the epoch from an int (taken as is) or an aware datetime."""
    if isinstance(value, bool):
        raise TypeError("a bool is not a time")
    if isinstance(value, int):
        return value
    if isinstance(value, _dt.datetime):
        if value.tzinfo is None or value.utcoffset() is None:
            raise ValueError("a datetime without a time zone is ambiguous")
        return (value - _EPOCH) // _ONE_MS
    raise TypeError(f"not a time: {value!r}")


def format_datetime(value: Moment) -> str:
    """``yyyy-MM-dd'T'HH:mm:ss.SSSXXX`` as the app's DateTimeParser wants it.

    An int (ms since the epoch) is written in UTC with ``Z``; an aware datetime keeps its
    offset (``+07:00``).  Percent-encode it in a query (`inbox_query` does): a raw ``+``
    would arrive as a space.
    """
    if isinstance(value, _dt.datetime):
        ms = to_ms(value)
        offset = value.utcoffset()
        assert offset is not None
        local = _EPOCH + _dt.timedelta(milliseconds=ms) + offset
        total = int(offset.total_seconds())
        if offset % _dt.timedelta(minutes=1):
            raise ValueError("the app's offsets are whole minutes")
        sign = "-" if total < 0 else "+"
        hours, minutes = divmod(abs(total) // 60, 60)
        suffix = "Z" if total == 0 else f"{sign}{hours:02d}:{minutes:02d}"
    else:
        ms = to_ms(value)
        local = _EPOCH + _dt.timedelta(milliseconds=ms)
        suffix = "Z"
    if not 0 <= ms <= MAX_EPOCH_MS:
        raise ValueError("time out of range")
    return f"{local:%Y-%m-%dT%H:%M:%S}.{local.microsecond // 1000:03d}{suffix}"


_DATE_RE = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,9})?(Z|[+-]\d{2}:?\d{2})")


def parse_datetime(text: Any) -> Optional[int]:
    """ms since the epoch from the app's dates (``2026-04-10T14:37:37.123+07:00``), or None."""
    if not isinstance(text, str) or len(text) > 40 or not _DATE_RE.fullmatch(text):
        return None
    value = text[:-1] + "+00:00" if text.endswith("Z") else text
    head, dot, rest = value.partition(".")
    if dot:  # fromisoformat in 3.11 takes 3 or 6 fraction digits; normalise to 6
        digits = re.match(r"\d+", rest).group(0)  # type: ignore[union-attr]
        value = head + "." + (digits + "000000")[:6] + rest[len(digits):]
    try:
        moment = _dt.datetime.fromisoformat(value)
    except ValueError:
        return None
    if moment.tzinfo is None:
        return None
    ms = (moment - _EPOCH) // _ONE_MS
    return ms if 0 <= ms <= MAX_EPOCH_MS else None


# --------------------------------------------------------------------------------------
# Sending: POST /message
# --------------------------------------------------------------------------------------


def check_send(message_id: str, phone: str, text: str, sim: Optional[int] = None) -> Optional[str]:
    """None when these can be posted; else why not (a permanent problem of the message)."""
    if not is_clean(message_id, MAX_ID) or "/" in message_id:
        return f"unusable message id {one_line(message_id, 70)!r}"
    if not is_clean(phone, MAX_NUMBER):
        return "unusable phone number"
    if not is_text(text, MAX_TEXT) or text == "":
        return "empty or unusable text"
    if sim is not None and (isinstance(sim, bool) or not isinstance(sim, int) or sim < 1):
        return "sim must be a number from 1"
    return None


def send_body(message_id: str, phone: str, text: str, sim: Optional[int] = None, *,
              with_delivery_report: bool = True, priority: Optional[int] = None,
              ttl: Optional[int] = None) -> bytes:
    """The JSON for ``POST /message``: websmsd's id as the app's id, one recipient.

    Raises ValueError for what `check_send` refuses.
    """
    problem = check_send(message_id, phone, text, sim)
    if problem is not None:
        raise ValueError(problem)
    body: Dict[str, Any] = {
        "id": message_id,
        "textMessage": {"text": text},
        "phoneNumbers": [phone],
        "withDeliveryReport": bool(with_delivery_report),
    }
    if sim is not None:
        body["simNumber"] = sim
    if priority is not None:
        if not -128 <= priority <= 127:
            raise ValueError("priority is -128..127")
        body["priority"] = priority
    if ttl is not None:
        if ttl < 1:
            raise ValueError("ttl is seconds from 1")
        body["ttl"] = ttl
    return json_bytes(body)


def _error_message(body: bytes) -> str:
    """The app's ``{"message": ...}``, one line; or a short excerpt of a body."""
    try:
        data = load_json(body)
    except JSONError:
        data = None
    if isinstance(data, dict) and isinstance(data.get("message"), str):
        return one_line(data["message"], 160)
    text = body[:120].decode("utf-8", "replace").strip()
    return one_line(text, 120) if text else "no body"


def send_outcome(status: int, body: bytes, message_id: str) -> Outcome:
    """What the answer to ``POST /message`` means."""
    if status in (200, 201, 202):
        provider_id = message_id
        try:
            data = load_json(body)
        except JSONError:
            data = None
        if isinstance(data, dict) and isinstance(data.get("id"), str) and is_clean(data["id"], 128):
            provider_id = data["id"]
        reason = f"HTTP {status}: the phone took it"
        if provider_id != message_id:
            reason += f" under its own id {provider_id} (an app that ignores ours)"
        return Outcome(True, False, reason, provider_id, status=status)
    if status == 409:
        # v1.58.0 and later: the id exists, the SMS is not sent again.
        return Outcome(True, False, "HTTP 409: the phone already has this id", message_id, status=status)
    if status in (400, 413, 422):
        return Outcome(False, True, f"refused by the phone (HTTP {status}): {_error_message(body)}", status=status)
    if status in (401, 403):
        return Outcome(False, False, f"HTTP {status}: the phone refused the credentials (check user and password)",
                       down=True, status=status)
    if status in (404, 405):
        return Outcome(False, False, f"HTTP {status}: no /message here (is this the app's Local Server URL?)",
                       down=True, status=status)
    if status == 429 or status >= 500:
        return Outcome(False, False, f"HTTP {status} from the phone: {_error_message(body)}", status=status)
    return Outcome(False, False, f"unexpected HTTP {status} from the phone", status=status)


# --------------------------------------------------------------------------------------
# State: GET /message/{id}
# --------------------------------------------------------------------------------------

# The app's ProcessingState values and what they mean for websmsd's lifecycle.
LIFECYCLE = {
    "Pending": "sending",  # queued on the phone (its own pacing can hold it there)
    "Processed": "sending",  # handed to Android's SmsManager
    "Sent": "sent",
    "Delivered": "delivered",
    "Failed": "failed",
    "Cancelling": "sending",  # DELETE /message/{id} under way (v1.67.0+)
    "Cancelled": "cancelled",
}


@dataclass(frozen=True)
class Recipient:
    phone_number: str
    state: Optional[str]
    error: Optional[str] = None


@dataclass(frozen=True)
class MessageState:
    """A message's state on the phone.

    found: False when the phone does not know the id (404).
    state: the app's word (Pending, Processed, Sent, Delivered, Failed, Cancelling,
    Cancelled, or one added later); lifecycle: its websmsd meaning (LIFECYCLE), None for
    a state this module does not know (keep asking).
    reason: the recipients' errors (the app gives none for the message itself).
    States do not only move forward: Failed can follow Sent or Delivered (a later part of
    a long SMS, a permanent delivery error).
    """

    message_id: str
    found: bool
    state: Optional[str] = None
    lifecycle: Optional[str] = None
    reason: Optional[str] = None
    recipients: Tuple[Recipient, ...] = ()
    states: Tuple[Tuple[str, str], ...] = ()  # (state, time as the app wrote it)


def parse_state(message_id: str, body: bytes) -> MessageState:
    """The 200 answer of ``GET /message/{id}``; raises SMSGateError if it is not one."""
    try:
        data = load_json(body)
    except JSONError as e:
        raise SMSGateError(f"state of {message_id}: {e}") from None
    if not isinstance(data, dict) or not isinstance(data.get("state"), str):
        raise SMSGateError(f"state of {message_id}: no state in the answer")
    state = one_line(data["state"], 40)
    recipients = []
    errors: List[str] = []
    raw = data.get("recipients")
    for item in raw if isinstance(raw, list) else []:
        if not isinstance(item, dict):
            continue
        number = item.get("phoneNumber")
        r_state = item.get("state")
        error = item.get("error")
        recipient = Recipient(
            one_line(number, MAX_NUMBER) if isinstance(number, str) else "",
            one_line(r_state, 40) if isinstance(r_state, str) else None,
            one_line(error, 300) if isinstance(error, str) and error else None,
        )
        recipients.append(recipient)
        if recipient.error and recipient.error not in errors:
            errors.append(recipient.error)
    states = []
    raw_states = data.get("states")
    if isinstance(raw_states, dict):
        for name, when in raw_states.items():
            if isinstance(name, str) and isinstance(when, str):
                states.append((one_line(name, 40), one_line(when, 40)))
    return MessageState(
        message_id=message_id,
        found=True,
        state=state,
        lifecycle=LIFECYCLE.get(state),
        reason="; ".join(errors) if errors else None,
        recipients=tuple(recipients),
        states=tuple(states),
    )


# --------------------------------------------------------------------------------------
# Health: GET /health
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Health:
    """What ``GET /health`` said.

    reachable: the app's server answered (a 500 included).  status: "pass", "warn" or
    "fail" as the phone rates itself.  A "fail" (HTTP 500) does *not* mean the route is
    down: the phone fails itself for a battery under 10 %, for messages that failed in
    the last hour with none processed, and for having no validated internet connection
    (a Wi-Fi without internet: always), none of which stops it from taking an SMS.
    /health needs no credentials, so it cannot tell whether websmsd's are right.
    """

    reachable: bool
    http_status: Optional[int]
    status: Optional[str]
    version: Optional[str]
    checks: Tuple[Tuple[str, str, str], ...]  # (name, status, observed value) per check
    reason: str


def parse_health(http_status: int, body: bytes) -> Health:
    try:
        data = load_json(body)
    except JSONError:
        data = None
    if not isinstance(data, dict) or not isinstance(data.get("status"), str):
        if http_status in (401, 403, 404):
            reason = f"HTTP {http_status} from /health: not this app's Local Server?"
        else:
            reason = f"HTTP {http_status} from /health without a health report"
        return Health(True, http_status, None, None, (), reason)
    status = one_line(data["status"], 20)
    version = data.get("version")
    checks = []
    raw = data.get("checks")
    if isinstance(raw, dict):
        for name, check in raw.items():
            if isinstance(check, dict):
                observed = check.get("observedValue")
                checks.append((one_line(str(name), 60), one_line(str(check.get("status")), 20),
                               one_line("" if observed is None else str(observed), 60)))
    failing = [name for name, st, _ in checks if st == "fail"]
    if status == "fail":
        reason = ("the phone rates itself 'fail'" + (f" ({', '.join(failing)})" if failing else "")
                  + "; its server answers, the route is usable")
    else:
        reason = f"the phone rates itself {status!r}"
    return Health(True, http_status, status, one_line(version, 40) if isinstance(version, str) else None,
                  tuple(checks), reason)


# --------------------------------------------------------------------------------------
# The inbox: GET /inbox
# --------------------------------------------------------------------------------------


def _digest(*parts: str, size: int = 16) -> str:
    h = hashlib.sha256()
    for part in parts:
        h.update(part.encode("utf-8", "surrogatepass"))
        h.update(b"\x00")
    return h.hexdigest()[:size]


@dataclass(frozen=True)
class InboxEntry:
    """One entry of ``GET /inbox``.  `text` is contentPreview: the whole SMS for type SMS."""

    id: str
    type: str
    sender: str
    text: str
    created_ms: int
    created_at: str  # as the app wrote it (the phone's time zone)
    recipient: Optional[str] = None
    sim_number: Optional[int] = None

    @property
    def key(self) -> str:
        """The dedupe key for the store: sender + createdAt + text (the id is only a hint)."""
        return _digest(self.sender, str(self.created_ms), self.text, size=32)

    @property
    def content_digest(self) -> str:
        return _digest(self.sender, self.text)

    @property
    def identity(self) -> str:
        """This row of the phone's table (id included): what the reader counts."""
        return _digest(self.id, self.type, self.sender, str(self.created_ms), self.text)


@dataclass(frozen=True)
class InvalidRow:
    """An inbox entry that could not be read: counted by the reader, never taken."""

    identity: str
    created_ms: Optional[int]
    why: str


@dataclass(frozen=True)
class InboxPage:
    entries: Tuple[InboxEntry, ...]
    total: Optional[int]  # X-Total-Count; None when the answer had none
    invalid: Tuple[InvalidRow, ...] = ()

    @property
    def size(self) -> int:
        return len(self.entries) + len(self.invalid)


def inbox_query(since: Optional[Moment] = None, until: Optional[Moment] = None, limit: int = 50,
                offset: int = 0, type: str = "SMS") -> str:
    """The query string for ``GET /inbox`` (no leading ``?``), every value percent-encoded.

    `offset` is always sent; `since`/`until` become ``from``/``to`` (both inclusive;
    ``to`` defaults to the phone's now on the phone).
    """
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_LIMIT:
        raise ValueError(f"limit is 1..{MAX_LIMIT}")
    if isinstance(offset, bool) or not isinstance(offset, int) or offset < 0:
        raise ValueError("offset is 0 or more")
    pairs = [("type", type), ("limit", str(limit)), ("offset", str(offset))]
    if since is not None:
        pairs.append(("from", format_datetime(since)))
    if until is not None:
        pairs.append(("to", format_datetime(until)))
    return "&".join(f"{name}={quote(value, safe='')}" for name, value in pairs)


def parse_inbox(body: bytes, total: Optional[int] = None) -> InboxPage:
    """The entries of a 200 answer, in the order given (newest first).

    Entries that cannot be read (no id, no date, wrong types) are kept aside in `invalid`
    with an identity made from their JSON, so that the reader still counts them.  Raises
    SMSGateError when the body is not a JSON array.
    """
    try:
        data = load_json(body)
    except JSONError as e:
        raise SMSGateError(f"inbox: {e}") from None
    if not isinstance(data, list):
        raise SMSGateError("inbox: the answer is not a list")
    entries: List[InboxEntry] = []
    invalid: List[InvalidRow] = []
    for item in data:
        entry = _inbox_entry(item)
        if isinstance(entry, InboxEntry):
            entries.append(entry)
        else:
            raw = json.dumps(item, sort_keys=True, ensure_ascii=True)
            created = parse_datetime(item.get("createdAt")) if isinstance(item, dict) else None
            invalid.append(InvalidRow(_digest("invalid", raw), created, entry))
    return InboxPage(tuple(entries), total, tuple(invalid))


def _inbox_entry(item: Any) -> Union[InboxEntry, str]:
    if not isinstance(item, dict):
        return "not an object"
    entry_id = item.get("id")
    if not isinstance(entry_id, str) or not is_clean(entry_id, 128):
        return "no usable id"
    sender = item.get("sender")
    if not isinstance(sender, str) or not is_clean(sender, MAX_NUMBER):
        return f"entry {entry_id}: no usable sender"
    text = item.get("contentPreview")
    if text is None:
        text = ""
    if not isinstance(text, str) or not is_text(text, MAX_TEXT):
        return f"entry {entry_id}: contentPreview is not text"
    created_at = item.get("createdAt")
    created_ms = parse_datetime(created_at)
    if created_ms is None:
        return f"entry {entry_id}: no usable createdAt"
    kind = item.get("type", "SMS")
    if not isinstance(kind, str) or not is_clean(kind, 20):
        return f"entry {entry_id}: no usable type"
    recipient = item.get("recipient")
    sim = item.get("simNumber")
    return InboxEntry(
        id=entry_id,
        type=kind,
        sender=sender,
        text=text,
        created_ms=created_ms,
        created_at=created_at,  # type: ignore[arg-type]
        recipient=recipient if isinstance(recipient, str) and is_clean(recipient, MAX_NUMBER) else None,
        sim_number=sim if isinstance(sim, int) and not isinstance(sim, bool) and 0 < sim < 100 else None,
    )


def parse_total(value: Union[bytes, str, None]) -> Optional[int]:
    if isinstance(value, (bytes, bytearray)):
        value = bytes(value).decode("latin-1")
    if value is None or not re.fullmatch(r"\s*[0-9]{1,12}\s*", value):
        return None
    return int(value)


# --------------------------------------------------------------------------------------
# InboxReader: which inbox entries are new
# --------------------------------------------------------------------------------------


@dataclass(frozen=True, order=True)
class Seen:
    """One inbox row the reader has dealt with (taken, or skipped as history/duplicate)."""

    created_ms: int
    identity: str  # the row (InboxEntry.identity)
    content: str  # sender + text (InboxEntry.content_digest), for same-SMS-other-id


@dataclass(frozen=True)
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


@dataclass(frozen=True)
class InboxRequest:
    """One ``GET /inbox`` the scan needs next (pass to `SMSGateClient.inbox`)."""

    since_ms: Optional[int]
    until_ms: Optional[int]
    limit: int
    offset: int
    purpose: str  # "probe", "below", "range" (or "window" when the phone gives no counts)


@dataclass(frozen=True)
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


@dataclass(frozen=True)
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


# --------------------------------------------------------------------------------------
# The client (Twisted, treq)
# --------------------------------------------------------------------------------------

class SMSGateClient:
    """websmsd's HTTP client for one phone running SMS Gateway for Android (Local Server).

    `treq_like`: treq itself, a `treq.HTTPClient`, or `treq.testing.StubTreq` (anything
    with treq's ``request(method, url, headers=, data=, unbuffered=True)``).
    `base_url`: ``http://phone:8080`` (a path prefix is kept).  `clock`: the reactor, or a
    `task.Clock` in tests; every request is cancelled after `timeout` seconds.

    `send` never fails: its Deferred fires with an Outcome.  `state`, `inbox` and
    `poll_inbox` fail with SMSGateError only (`down` tells a route problem).  `health`
    never fails: an unreachable phone is ``Health(reachable=False)``.
    """

    def __init__(self, treq_like: Any, base_url: str, user: str, password: str, *, timeout: float = 30.0,
                 clock: Any, max_response: int = 4 * 1024 * 1024, with_delivery_report: bool = True,
                 skip_phone_validation: bool = False, priority: Optional[int] = None) -> None:
        from twisted.logger import Logger

        from .basicauth import basic_header

        if not re.match(r"https?://[^/?#\s]+", base_url or ""):
            raise ValueError("base_url must be http://host:port")
        if ":" in user:
            raise ValueError("a Basic user name cannot contain ':'")
        self._treq = treq_like
        self._base = base_url.rstrip("/")
        # The app's Ktor decodes Basic credentials as UTF-8.
        self._auth = basic_header(user, password, charset="utf-8").encode("ascii")
        self._timeout = timeout
        self._clock = clock
        self._max_response = max_response
        self._with_delivery_report = with_delivery_report
        self._skip_validation = skip_phone_validation
        self._priority = priority
        self._where = one_line(re.sub(r"^https?://", "", self._base), 80)
        self._log = Logger(namespace="websmsd.smsgate")

    # -- plumbing ----------------------------------------------------------------------

    def _headers(self, with_body: bool) -> Any:
        from twisted.web.http_headers import Headers

        headers = Headers({b"Authorization": [self._auth], b"Accept": [b"application/json"],
                           b"User-Agent": [b"websmsd"]})
        if with_body:
            headers.addRawHeader(b"Content-Type", b"application/json")
        return headers

    def _describe(self, exc: BaseException) -> str:
        name = type(exc).__name__
        if name == "ConnectionRefusedError":
            return f"connection refused by {self._where} (is the app's local server running?)"
        if name in ("TimeoutError", "UserError"):
            return f"no connection to {self._where} (timeout)"
        if name == "DNSLookupError":
            return f"DNS lookup failed for {self._where}"
        if name == "NoRouteError":
            return f"no route to {self._where}"
        if name in ("ResponseNeverReceived", "RequestTransmissionFailed", "RequestNotSent"):
            return f"{self._where} closed the connection without answering"
        if name == "ResponseFailed":
            return f"the answer from {self._where} broke off"
        return f"cannot reach {self._where} ({one_line(name, 40)})"

    def _is_network(self, exc: BaseException) -> bool:
        from twisted.internet import error as net_error
        from twisted.web import client as web_client

        if isinstance(exc, (net_error.ConnectError, net_error.ConnectionLost, net_error.ConnectionDone,
                            net_error.DNSLookupError, net_error.TimeoutError, OSError)):
            return True
        return any(isinstance(exc, getattr(web_client, n)) for n in
                   ("ResponseNeverReceived", "ResponseFailed", "RequestTransmissionFailed", "RequestNotSent")
                   if hasattr(web_client, n))

    async def _call(self, method: str, path: str, body: Optional[bytes] = None) -> Tuple[int, Any, bytes, bool]:
        """(status, headers, body, truncated); SMSGateError(down=True) when no answer came."""
        from twisted.internet import defer

        state: Dict[str, Any] = {"step": None, "timed_out": False}

        def on_timeout() -> None:
            state["timed_out"] = True
            if state["step"] is not None:
                state["step"].cancel()

        timer = self._clock.callLater(self._timeout, on_timeout)
        try:
            state["step"] = defer.maybeDeferred(
                self._treq.request, method, self._base + path,
                headers=self._headers(body is not None), data=body,
                allow_redirects=False, unbuffered=True,
            )
            response = await state["step"]
            state["step"] = _read_body(response, self._max_response)
            content, truncated = await state["step"]
        except defer.CancelledError:
            if state["timed_out"]:
                raise SMSGateError(f"no answer from {self._where} within {self._timeout:g} s", down=True) from None
            raise
        except Exception as e:
            if state["timed_out"]:
                raise SMSGateError(f"no answer from {self._where} within {self._timeout:g} s", down=True) from None
            if self._is_network(e):
                raise SMSGateError(self._describe(_root(e)), down=True) from None
            self._log.failure("smsgate {where}: internal error on {method} {path}", where=self._where,
                              method=method, path=path.split("?", 1)[0])
            raise SMSGateError("internal error talking to the phone (see the log)") from None
        finally:
            if timer.active():
                timer.cancel()
        return response.code, response.headers, content, truncated

    # -- sending -----------------------------------------------------------------------

    def send(self, message_id: str, phone: str, text: str, sim: Optional[int] = None) -> Any:
        """Post one SMS under websmsd's id; a Deferred that fires with an Outcome.

        A repeat after a lost answer or a restart is safe: the phone answers 409 (or,
        before v1.58.0, 202 and ignores it) and does not send twice.
        """
        from twisted.internet import defer

        return defer.ensureDeferred(self._send(message_id, phone, text, sim))

    async def _send(self, message_id: str, phone: str, text: str, sim: Optional[int]) -> Outcome:
        from twisted.internet import defer

        problem = check_send(message_id, phone, text, sim)
        if problem is not None:
            return Outcome(False, True, f"not sent: {problem}")
        body = send_body(message_id, phone, text, sim, with_delivery_report=self._with_delivery_report,
                         priority=self._priority)
        path = "/message" + ("?skipPhoneValidation=true" if self._skip_validation else "")
        try:
            status, _headers, content, _ = await self._call("POST", path, body)
        except defer.CancelledError:
            raise
        except SMSGateError as e:
            outcome = Outcome(False, False, e.reason, down=e.down, status=e.status)
        except Exception:
            self._log.failure("smsgate {where}: internal error sending {message_id}", where=self._where,
                              message_id=message_id)
            outcome = Outcome(False, False, "internal error while sending (see the log)")
        else:
            outcome = send_outcome(status, content, message_id)
        if outcome.ok:
            self._log.info("smsgate {where}: {message_id} taken (HTTP {status})", where=self._where,
                           message_id=message_id, status=outcome.status)
        else:
            self._log.warn("smsgate {where}: {message_id} not taken: {reason}", where=self._where,
                           message_id=message_id, reason=outcome.reason, down=outcome.down,
                           permanent=outcome.permanent)
        return outcome

    # -- state -------------------------------------------------------------------------

    def state(self, message_id: str) -> Any:
        """A Deferred MessageState (found=False for an id the phone does not know)."""
        from twisted.internet import defer

        return defer.ensureDeferred(self._state(message_id))

    async def _state(self, message_id: str) -> MessageState:
        if not is_clean(message_id, MAX_ID):
            raise SMSGateError(f"unusable message id {one_line(message_id, 70)!r}")
        status, _h, content, _ = await self._call("GET", "/message/" + quote(message_id, safe=""))
        if status == 200:
            return parse_state(message_id, content)
        if status == 404:
            return MessageState(message_id, False)
        raise self._status_error(status, content, "state")

    def _status_error(self, status: int, content: bytes, what: str) -> SMSGateError:
        if status in (401, 403):
            return SMSGateError(f"HTTP {status}: the phone refused the credentials", down=True, status=status)
        if status in (404, 405):
            return SMSGateError(f"HTTP {status} for {what}: not this app's Local Server, or an app too old",
                                down=True, status=status)
        return SMSGateError(f"HTTP {status} for {what}: {_error_message(content)}", status=status)

    # -- inbox -------------------------------------------------------------------------

    def inbox(self, since: Optional[Moment] = None, until: Optional[Moment] = None, limit: int = 50,
              offset: int = 0) -> Any:
        """A Deferred InboxPage: entries newest first, and X-Total-Count as `total`."""
        from twisted.internet import defer

        return defer.ensureDeferred(self._inbox(since, until, limit, offset))

    async def _inbox(self, since: Optional[Moment], until: Optional[Moment], limit: int, offset: int) -> InboxPage:
        query = inbox_query(since, until, limit, offset)
        status, headers, content, truncated = await self._call("GET", "/inbox?" + query)
        if status != 200:
            raise self._status_error(status, content, "/inbox (v1.59.0 or later needed)")
        if truncated:
            raise SMSGateError(f"inbox page over {self._max_response} bytes: use a smaller page size")
        total = parse_total((headers.getRawHeaders(b"x-total-count") or [None])[0])
        return parse_inbox(content, total)

    def poll_inbox(self, state: InboxState, reader: InboxReader) -> Any:
        """One InboxReader scan over the network; a Deferred ScanResult.

        On SMSGateError the scan is dropped: persist nothing, poll again later.
        """
        from twisted.internet import defer

        return defer.ensureDeferred(self._poll_inbox(state, reader))

    async def _poll_inbox(self, state: InboxState, reader: InboxReader) -> ScanResult:
        scan = reader.begin(state)
        while True:
            request = scan.next_request()
            if request is None:
                break
            page = await self._inbox(request.since_ms, request.until_ms, request.limit, request.offset)
            scan.feed(page)
        result = scan.result()
        for warning in result.warnings:
            self._log.warn("smsgate {where}: {warning}", where=self._where, warning=warning)
        return result

    # -- health ------------------------------------------------------------------------

    def health(self) -> Any:
        """A Deferred Health; never fails (unreachable is ``reachable=False``)."""
        from twisted.internet import defer

        return defer.ensureDeferred(self._health())

    async def _health(self) -> Health:
        try:
            status, _h, content, _ = await self._call("GET", "/health")
        except SMSGateError as e:
            return Health(False, None, None, None, (), e.reason)
        return parse_health(status, content)


def _root(exc: BaseException) -> BaseException:
    """The first underlying reason of twisted.web's wrapper exceptions."""
    reasons = getattr(exc, "reasons", None)
    if reasons:
        first = reasons[0]
        value = getattr(first, "value", first)
        if isinstance(value, BaseException):
            return _root(value) if getattr(value, "reasons", None) else value
    return exc


def _read_body(response: Any, limit: int) -> Any:
    """A Deferred (bytes, truncated) of at most `limit` bytes; cancelling closes the connection."""
    from twisted.internet import defer, protocol
    from twisted.web.client import ResponseDone
    from twisted.web.http import PotentialDataLoss

    finished: Any = None

    class Collector(protocol.Protocol):
        def __init__(self) -> None:
            self.chunks: List[bytes] = []
            self.size = 0
            self.truncated = False

        def dataReceived(self, data: bytes) -> None:
            room = limit - self.size
            if len(data) > room:
                data = data[:max(room, 0)]
                self.truncated = True
            if data:
                self.chunks.append(data)
                self.size += len(data)

        def connectionLost(self, reason: Any = protocol.connectionDone) -> None:
            if finished.called:
                return
            if reason.check(ResponseDone, PotentialDataLoss):
                finished.callback((b"".join(self.chunks), self.truncated))
            else:
                finished.errback(reason)

    collector = Collector()

    def cancel(_d: Any) -> None:
        transport = collector.transport
        stop = getattr(transport, "abortConnection", None) or getattr(transport, "stopProducing", None)
        if stop is not None:
            stop()

    finished = defer.Deferred(cancel)
    response.deliverBody(collector)
    return finished


__all__ = [
    "DAY_MS", "LIFECYCLE", "Health", "InboxEntry", "InboxPage", "InboxReader", "InboxRequest",
    "InboxScan", "InboxState", "InvalidRow", "MessageState", "Outcome", "Recipient", "SMSGateClient", "SMSGateError",
    "ScanResult", "Seen", "check_send", "format_datetime", "inbox_query", "near_window_for_version",
    "parse_datetime", "parse_health", "parse_inbox", "parse_state", "parse_total", "send_body",
    "send_outcome", "to_ms",
]
