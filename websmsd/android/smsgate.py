"""SMS Gateway for Android (capcom6, "SMSGate") in Local Server mode.

Here the phone is the HTTP server (Ktor, default port 8080, Basic auth) and websmsd the
client: it posts each SMS to ``POST /message`` with websmsd's own stable id, asks
``GET /message/{id}`` for its state, and polls ``GET /inbox`` for received SMS.

The protocol is split in three modules:

- this one (pure, no Twisted): request bodies and query strings (`send_body`,
  `inbox_query`, `format_datetime`) and answer readers (`send_outcome`, `parse_state`,
  `parse_inbox`, `parse_health`);
- `websmsd.android.smsgate_inbox` (pure): `InboxReader`, the policy that finds new inbox
  entries;
- `websmsd.android.smsgate_client`: `SMSGateClient`, a thin treq client over both.

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
  `smsgate_inbox.InboxReader`.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import re
from typing import Any, Dict, List, Optional, Tuple, Union
from urllib.parse import quote

from .answer import JSONError, is_clean, is_text, json_bytes, load_json, one_line
from websmsd.record import frozen

MAX_ID = 64
MAX_NUMBER = 64
MAX_TEXT = 40_000
MAX_LIMIT = 500  # the app's bound for /inbox?limit=

# --------------------------------------------------------------------------------------
# Outcomes and errors
# --------------------------------------------------------------------------------------


@frozen
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


@frozen
class Recipient:
    phone_number: str
    state: Optional[str]
    error: Optional[str] = None


@frozen
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


@frozen
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


@frozen
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


@frozen
class InvalidRow:
    """An inbox entry that could not be read: counted by the reader, never taken."""

    identity: str
    created_ms: Optional[int]
    why: str


@frozen
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


__all__ = [
    "LIFECYCLE", "Health", "InboxEntry", "InboxPage", "InvalidRow", "MessageState", "Outcome", "Recipient",
    "SMSGateError", "check_send", "format_datetime", "inbox_query", "parse_datetime", "parse_health",
    "parse_inbox", "parse_state", "parse_total", "send_body", "send_outcome", "to_ms",
]
