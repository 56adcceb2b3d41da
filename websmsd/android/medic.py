"""The "SMS Gateway" app (medic/CHT gateway 1.8.x, and the SysCo/multiOTP fork).  Pure.

The phone is the HTTP client and uses one URL that websmsd serves:

- ``GET``: only when its user saves the settings, a URL check.  Answer
  `handshake_answer()` (2xx with ``{"medic-gateway": true}``), or `unauthorised_answer()`
  (the app says "unauthorised" only for 401).
- ``POST``: the poll, every 30 s or so and at once after an SMS arrives.  The body is
  ``{"messages": [...], "updates": [...]}``: received SMS (at most 10) and status updates
  of the SMS websmsd handed over (at most 20).  `parse_poll` reads it strictly; the answer
  `poll_answer` lists the SMS the phone is to send.

What the answers must respect (from the app's code):

- The phone marks the posted messages and updates as forwarded on any 2xx, **before** it
  reads the answer.  So a request that could not be processed (malformed, or the store
  failed to commit) must get a non-2xx status: it then sends the same data again on the
  next poll.  `Refusal.status` is that status; use 503 for a store failure.
- A 2xx answer needs a JSON object body: an empty 200 or a 204 is a failed poll.
- Updates for ids websmsd does not know must still be acknowledged with a 2xx, or the
  phone sends them forever.
- A message id the phone already has is not sent again (the phone re-reports its status).
  Stop offering a message once any status update for its id has arrived
  (`Poll.acknowledged_ids`): the first update of every handed-over message is UNSENT,
  "stored on the phone".
- The phone strips ``-`` and spaces from ``to`` and sends only to numbers Android deems
  global phone numbers; others come back FAILED with reason ``destination.invalid``.

Basic auth, as the app sends it: the password percent-encoded by Android's `Uri.encode`
(``pa$s`` arrives as ``pa%24s``) and never decoded, the credentials encoded as
ISO-8859-1; `check_credentials` accepts the password as sent and percent-decoded.  In
the configured ``https://user:pass@host/path`` the app takes the password up to the
**last** ``@``: a ``@`` later in the URL (path or query) corrupts the password.  The user
name must not contain ``# / ? @ :``.
"""

from __future__ import annotations

import gzip
import zlib
from typing import Any, Dict, FrozenSet, Iterable, List, Optional, Sequence, Tuple, Union

from .answer import (
    JSON_TYPE,
    Answer,
    JSONError,
    epoch_ms,
    is_clean,
    is_text,
    json_answer,
    json_bytes,
    load_json,
    one_line,
)
from .basicauth import Header, check_basic
from websmsd.record import frozen

# The phone sends at most 10 messages and 20 updates; ten times that is still sane, more
# is not this app.
MAX_MESSAGES = 100
MAX_UPDATES = 200
MAX_BODY = 1024 * 1024  # as received (compressed or not)
MAX_INFLATED = 2 * 1024 * 1024  # after gunzip
MAX_ID = 128
MAX_NUMBER = 64
MAX_TEXT = 40_000
MAX_REASON = 500

# Statuses in the updates.  UNSENT is not in the API docs: the first update of every
# message handed over, and the status after a temporary send failure.
UNSENT = "UNSENT"
PENDING = "PENDING"
SENT = "SENT"
DELIVERED = "DELIVERED"
FAILED = "FAILED"
STATUSES = (UNSENT, PENDING, SENT, DELIVERED, FAILED)

# What each status means for websmsd's message lifecycle (websmsd.message): the phone has
# it (sending), the network took it (sent), the handset got it (delivered), or failed.
# FAILED is final unless the phone's user presses Retry (UNSENT again).
LIFECYCLE = {UNSENT: "sending", PENDING: "sending", SENT: "sent", DELIVERED: "delivered", FAILED: "failed"}

HANDSHAKE = "handshake"
POLL = "poll"

WWW_AUTHENTICATE = 'Basic realm="websmsd", charset="ISO-8859-1"'
# Compressing a few bytes only makes them longer.
GZIP_MIN = 128


@frozen
class IncomingSMS:
    """An SMS the phone received.

    id: the phone's UUID, the same when the phone posts it again (the dedupe key).
    sender: as the phone got it; "" when the phone had none (Android can give no address).
    sms_sent_ms / sms_received_ms: the SMS centre's time and the phone's receiving time,
    ms since the epoch; None when absent or 0 (rows from before the app stored them).
    """

    id: str
    sender: str
    content: str
    sms_sent_ms: Optional[int]
    sms_received_ms: Optional[int]


@frozen
class StatusUpdate:
    """A status of an SMS websmsd handed over.  `status` may be one not in STATUSES."""

    id: str
    status: str
    reason: Optional[str] = None


@frozen
class Poll:
    messages: Tuple[IncomingSMS, ...]
    updates: Tuple[StatusUpdate, ...]

    @property
    def acknowledged_ids(self) -> FrozenSet[str]:
        """Ids the phone reported on: stop offering them (it has them)."""
        return frozenset(u.id for u in self.updates)


@frozen
class Refusal:
    """A request that must not get a 2xx: its status and a one-line reason."""

    status: int
    reason: str


@frozen
class OutgoingSMS:
    """An SMS for the phone to send; `id` is websmsd's stable message id."""

    id: str
    to: str
    content: str


def classify(method: Union[bytes, str]) -> Union[str, Refusal]:
    """HANDSHAKE for GET, POLL for POST, a 405 Refusal for anything else."""
    m = method.decode("latin-1") if isinstance(method, (bytes, bytearray)) else str(method)
    m = m.upper()
    if m == "GET":
        return HANDSHAKE
    if m == "POST":
        return POLL
    return Refusal(405, f"the SMS Gateway app does not use {one_line(m, 20)}")


def check_credentials(authorization: Header, user: str, password: str) -> bool:
    """True when the Authorization header carries `user` and `password` as the app sends them."""
    return check_basic(authorization, user, password, charset="latin-1", percent_encoded=True)


# --------------------------------------------------------------------------------------
# Answers
# --------------------------------------------------------------------------------------


def handshake_answer() -> Answer:
    """200 ``{"medic-gateway":true}``: the app's settings check passes."""
    return json_answer(200, {"medic-gateway": True})


def error_answer(status: int, message: str) -> Answer:
    """``{"error":true,"message":...}``; the app logs `message` for statuses >= 400."""
    return json_answer(status, {"error": True, "message": one_line(message)})


def refusal_answer(refusal: Refusal) -> Answer:
    return error_answer(refusal.status, refusal.reason)


def unauthorised_answer() -> Answer:
    """401 with a WWW-Authenticate challenge: the app shows "unauthorised"."""
    answer = error_answer(401, "unauthorised")
    return Answer(answer.status, answer.body, answer.content_type, (("WWW-Authenticate", WWW_AUTHENTICATE),))


def accepts_gzip(accept_encoding: Union[bytes, str, None]) -> bool:
    """True when an Accept-Encoding value allows gzip (``gzip;q=0`` does not)."""
    if not accept_encoding:
        return False
    if isinstance(accept_encoding, (bytes, bytearray)):
        accept_encoding = bytes(accept_encoding).decode("latin-1")
    for item in accept_encoding.split(","):
        name, _, params = item.partition(";")
        if name.strip().lower() not in ("gzip", "x-gzip"):
            continue
        q = 1.0
        for param in params.split(";"):
            key, _, value = param.partition("=")
            if key.strip().lower() == "q":
                try:
                    q = float(value.strip())
                except ValueError:
                    q = 0.0
        if q > 0:
            return True
    return False


def poll_answer(messages: Sequence[OutgoingSMS], accept_encoding: Union[bytes, str, None] = None) -> Answer:
    """200 ``{"messages":[{"id","to","content"},...]}``, gzipped when the request allows it.

    Always a JSON object, also with no message.  Raises ValueError for an unusable
    message (an id, number or text that the phone could not take).
    """
    listed: List[Dict[str, str]] = []
    for m in messages:
        if not is_clean(m.id, MAX_ID):
            raise ValueError(f"unusable id {m.id!r}")
        if not is_clean(m.to, MAX_NUMBER):
            raise ValueError(f"message {m.id}: unusable recipient {m.to!r}")
        if not is_text(m.content, MAX_TEXT) or m.content == "":
            raise ValueError(f"message {m.id}: empty or unusable text")
        listed.append({"id": m.id, "to": m.to, "content": m.content})
    body = json_bytes({"messages": listed})
    headers: Tuple[Tuple[str, str], ...] = (("Vary", "Accept-Encoding"),)
    if len(body) >= GZIP_MIN and accepts_gzip(accept_encoding):
        # mtime=0: the same answer gives the same bytes.
        body = gzip.compress(body, compresslevel=6, mtime=0)
        headers += (("Content-Encoding", "gzip"),)
    return Answer(200, body, JSON_TYPE, headers)


# --------------------------------------------------------------------------------------
# The POST body
# --------------------------------------------------------------------------------------


def _inflate(body: bytes) -> Union[bytes, Refusal]:
    inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
    try:
        data = inflater.decompress(body, MAX_INFLATED + 1)
    except zlib.error:
        return Refusal(400, "the gzip body is corrupt")
    if len(data) > MAX_INFLATED or inflater.unconsumed_tail:
        return Refusal(413, f"the body inflates to over {MAX_INFLATED} bytes")
    if not inflater.eof:
        return Refusal(400, "the gzip body is truncated")
    return data


def _list(data: Dict[str, Any], key: str, limit: int) -> Union[List[Any], Refusal]:
    value = data.get(key)
    # The phone always sends both arrays; the API docs allow a missing key or null for
    # an empty list, and an empty list loses nothing.
    if value is None:
        return []
    if not isinstance(value, list):
        return Refusal(400, f"{key} is not an array")
    if len(value) > limit:
        return Refusal(413, f"more than {limit} {key}")
    return value


def _message(item: Any, index: int) -> Union[IncomingSMS, Refusal]:
    where = f"messages[{index}]"
    if not isinstance(item, dict):
        return Refusal(400, f"{where} is not an object")
    msg_id = item.get("id")
    if not isinstance(msg_id, str) or not is_clean(msg_id, MAX_ID):
        return Refusal(400, f"{where}: id is missing or unusable")
    sender = item.get("from")
    if sender is None:
        sender = ""
    if not isinstance(sender, str) or not is_clean(sender, MAX_NUMBER, allow_empty=True):
        return Refusal(400, f"{where}: from is not a phone number or name")
    content = item.get("content")
    if not isinstance(content, str) or not is_text(content, MAX_TEXT):
        return Refusal(400, f"{where}: content is missing or not text")
    stamps = []
    for key in ("sms_sent", "sms_received"):
        value = item.get(key)
        if value is None:
            stamps.append(None)
            continue
        ms = epoch_ms(value)
        if ms is None:
            return Refusal(400, f"{where}: {key} is not milliseconds since the epoch")
        stamps.append(ms or None)
    return IncomingSMS(msg_id, sender, content, stamps[0], stamps[1])


def _update(item: Any, index: int) -> Union[StatusUpdate, Refusal]:
    where = f"updates[{index}]"
    if not isinstance(item, dict):
        return Refusal(400, f"{where} is not an object")
    upd_id = item.get("id")
    if not isinstance(upd_id, str) or not is_clean(upd_id, MAX_ID):
        return Refusal(400, f"{where}: id is missing or unusable")
    status = item.get("status")
    # A status this module does not know is kept (a newer app may add one): refusing it
    # would make the phone send this poll again forever.
    if not isinstance(status, str) or not is_clean(status, 32) or not status.replace("_", "").isalnum():
        return Refusal(400, f"{where}: status is missing or unusable")
    reason = item.get("reason")
    if reason is not None:
        if not isinstance(reason, str) or not is_text(reason, 100_000):
            return Refusal(400, f"{where}: reason is not text")
        reason = one_line(reason, MAX_REASON)
    return StatusUpdate(upd_id, status, reason)


def parse_poll(body: bytes, content_encoding: Union[bytes, str, None] = None) -> Union[Poll, Refusal]:
    """The messages and updates of a POST, or a Refusal to answer with a non-2xx status.

    Strict: a request with one malformed element is refused whole, so that the phone
    keeps every item and sends them again (answering 2xx would lose them).  The phone
    never compresses its body; ``Content-Encoding: gzip`` is accepted anyway (the docs
    mention it), within MAX_INFLATED.
    """
    if not isinstance(body, (bytes, bytearray)):
        return Refusal(400, "no body")
    if len(body) > MAX_BODY:
        return Refusal(413, f"body over {MAX_BODY} bytes")
    encoding = content_encoding
    if isinstance(encoding, (bytes, bytearray)):
        encoding = bytes(encoding).decode("latin-1")
    encoding = (encoding or "identity").strip().lower()
    if encoding in ("gzip", "x-gzip"):
        inflated = _inflate(bytes(body))
        if isinstance(inflated, Refusal):
            return inflated
        body = inflated
    elif encoding != "identity":
        return Refusal(415, f"Content-Encoding {one_line(encoding, 30)!r} is not supported")
    try:
        data = load_json(body)
    except JSONError as e:
        return Refusal(400, str(e))
    if not isinstance(data, dict):
        return Refusal(400, "the body is not a JSON object")
    raw_messages = _list(data, "messages", MAX_MESSAGES)
    if isinstance(raw_messages, Refusal):
        return raw_messages
    raw_updates = _list(data, "updates", MAX_UPDATES)
    if isinstance(raw_updates, Refusal):
        return raw_updates
    messages = []
    for i, item in enumerate(raw_messages):
        parsed = _message(item, i)
        if isinstance(parsed, Refusal):
            return parsed
        messages.append(parsed)
    updates = []
    for i, item in enumerate(raw_updates):
        upd = _update(item, i)
        if isinstance(upd, Refusal):
            return upd
        updates.append(upd)
    return Poll(tuple(messages), tuple(updates))


# --------------------------------------------------------------------------------------
# Status updates
# --------------------------------------------------------------------------------------

_RANK = {UNSENT: 0, PENDING: 1, SENT: 2, DELIVERED: 3}


def next_state(current: Optional[str], reported: str) -> Optional[str]:
    """The status to record after the phone reports `reported`, or None to change nothing.

    `current` is the status last recorded for the message (None: none yet).  The rule
    never goes backwards along UNSENT -> PENDING -> SENT -> DELIVERED:

    - a repeated status, or one this module does not know, changes nothing;
    - DELIVERED is final (a late SENT or PENDING never overwrites it);
    - FAILED is taken only before SENT (the app never reports FAILED after SENT; a
      delivery failure comes while still PENDING);
    - after FAILED anything the phone reports is taken: its user pressed Retry, which
      restarts with UNSENT (or the report says more than FAILED did);
    - DELIVERED may come without SENT (multipart SMS, an early report).

    A `current` that is not one of STATUSES counts as None.
    """
    if reported not in STATUSES or reported == current:
        return None
    if current not in STATUSES:
        return reported
    if current == DELIVERED:
        return None
    if current == FAILED:
        return reported
    if reported == FAILED:
        return FAILED if _RANK[current] < _RANK[SENT] else None
    return reported if _RANK[reported] > _RANK[current] else None


def fold_updates(current: Dict[str, Optional[str]], updates: Iterable[StatusUpdate]) -> Dict[str, Tuple[str, Optional[str]]]:
    """Apply a poll's updates in order: {id: (new status, reason)} for the ids that change.

    `current` maps each id websmsd knows to its recorded status; ids it does not hold are
    skipped (they are still acknowledged with the 2xx).  The reason kept is the one of the
    update that made the change (FAILED carries one).
    """
    state = dict(current)
    changes: Dict[str, Tuple[str, Optional[str]]] = {}
    for u in updates:
        if u.id not in state:
            continue
        new = next_state(state[u.id], u.status)
        if new is not None:
            state[u.id] = new
            changes[u.id] = (new, u.reason if new == FAILED else None)
    return changes


__all__ = [
    "DELIVERED", "FAILED", "GZIP_MIN", "HANDSHAKE", "LIFECYCLE", "MAX_BODY", "MAX_MESSAGES",
    "MAX_UPDATES", "PENDING", "POLL", "SENT", "STATUSES", "UNSENT", "WWW_AUTHENTICATE",
    "IncomingSMS", "OutgoingSMS", "Poll", "Refusal", "StatusUpdate", "accepts_gzip",
    "check_credentials", "classify", "error_answer", "fold_updates", "handshake_answer",
    "next_state", "parse_poll", "poll_answer", "refusal_answer", "unauthorised_answer",
]
