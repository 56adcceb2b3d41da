"""SMSsync (Ushahidi, v3.1.1): the requests the phone makes and the answers it needs.  Pure.

The phone is the HTTP client and talks to one "Sync URL" that websmsd serves:

====================  =========================================  ==========================
request               what it is                                 answer
====================  =========================================  ==========================
POST (or PUT), no     a received SMS (`parse_incoming`), or the  `incoming_accepted`,
``task``              "Test integration" button                  `test_integration_answer`,
                                                                 `incoming_refused`
GET ``?task=send``    poll for SMS to send                       `send_task_answer`
POST ``?task=sent``   "I queued these uuids" (Message Results    `sent_ack_answer`
                      API on; no secret in it)
GET ``?task=result``  "which uuids want a result?"               `result_query_answer`
POST ``?task=result`` delivery results, double-encoded JSON      `result_report_answer`
====================  =========================================  ==========================

`classify(method, query)` tells these apart.  Give it the *raw* query string (everything
after the first ``?`` of the request URI): the phone appends ``?task=...`` to a Sync URL
by plain concatenation, so a Sync URL with its own query yields a second ``?``.

Facts that shape the answers (from the app's code):

- An incoming SMS counts as delivered only on status 200 or 201 with a JSON body whose
  ``payload.success`` is true.  Anything else and the phone stores the SMS and posts it
  again later, with the same ``message_id`` (de-duplicate on it), up to its "Retries"
  setting (default 3).  It shows ``payload.error`` to its user only on 200/201.
- "Test integration" passes on exactly 200 with a ``payload`` object, whatever
  ``success`` says: answer a wrong secret with 403 so that the test fails.
- The ``task=send`` answer is parsed whatever its status.  The phone acts only if
  ``payload.task == "send"`` and, when it has a secret, ``payload.secret`` equals it.
  Message objects carry only ``to``, ``message`` and ``uuid``: a ``timestamp`` key makes
  Gson fail on the whole answer.
- With the Message Results API off (the default) the phone sends every message it is
  given, at once, never acknowledges, and does not de-duplicate: a uuid offered twice is
  sent twice.  The caller must offer a message at most once in that mode and count it as
  handed over when it was offered.
- Delivery results are hints (see `result_hint`); the ``task=sent`` acknowledgement is the
  one dependable signal that the phone took a message.
"""

from __future__ import annotations

import contextlib
import hmac
import re
from typing import Any, Container, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple, Union
from urllib.parse import parse_qsl, unquote_plus

from .answer import (
    JSON_TYPE,
    Answer,
    JSONError,
    is_clean,
    is_text,
    json_answer,
    load_json,
    one_line,
)
from websmsd.record import frozen

# Request bodies: an SMS of 255 joined parts in UCS-2 is ~17,000 characters, up to 9 bytes
# each once percent-encoded; twice that is plenty.
MAX_BODY = 320 * 1024
MAX_FIELDS = 64
MAX_TEXT = 40_000
MAX_ID = 128
MAX_NUMBER = 64
# Lists in task=sent / task=result bodies: the phone sends what it was given in one poll.
MAX_UUIDS = 1000

FORM, JSON, XML = "form", "json", "xml"

# What the "Test integration" button posts (AppHttpClient in the app).
TEST_FROM = "+000000000000"
TEST_MESSAGE = "Test Message From SMSSync Integration"

# The request kinds `classify` returns.
INCOMING = "incoming"
SEND_POLL = "send-poll"  # GET ?task=send
SENT_ACK = "sent-ack"  # POST ?task=sent
RESULT_QUERY = "result-query"  # GET ?task=result
RESULT_REPORT = "result-report"  # POST ?task=result


@frozen
class FieldNames:
    """The body's field names; the phone's user can rename each in the app."""

    secret: str = "secret"
    sender: str = "from"
    message: str = "message"
    sent_timestamp: str = "sent_timestamp"
    sent_to: str = "sent_to"
    message_id: str = "message_id"
    device_id: str = "device_id"

    def all(self) -> Tuple[str, ...]:
        return (self.secret, self.sender, self.message, self.sent_timestamp, self.sent_to,
                self.message_id, self.device_id)


DEFAULT_FIELDS = FieldNames()


@frozen
class IncomingSMS:
    """A received SMS as the phone posted it.

    message_id: the phone's random UUID, the same on every retry (the dedupe key).
    sent_timestamp_ms: the SMS centre's time in ms since the epoch; None when absent.
    sent_to / device_id: None when the phone sent an empty string or nothing.
    body_format: FORM, JSON or XML, as detected from the body.
    """

    message_id: str
    sender: str
    text: str
    sent_timestamp_ms: Optional[int]
    sent_to: Optional[str]
    device_id: Optional[str]
    body_format: str = FORM


@frozen
class TestIntegration:
    """The "Test integration" button: not an SMS, never to be stored as one."""

    sender: str
    text: str
    body_format: str = FORM


@frozen
class Refusal:
    """A request that cannot be taken: the HTTP status to answer and a one-line reason."""

    status: int
    reason: str


@frozen
class Query:
    """`task` and `secret` from a request's query; `params` keeps every pair in order."""

    task: Optional[str]
    secret: Optional[str]
    params: Tuple[Tuple[str, str], ...] = ()


@frozen
class OutgoingSMS:
    """An SMS for the phone to send; `uuid` is websmsd's stable message id."""

    uuid: str
    to: str
    text: str


@frozen
class MessageResult:
    """One entry of a POST ?task=result body.  Codes are ints; dates stay strings."""

    uuid: str
    sent_result_code: Optional[int] = None
    sent_result_message: Optional[str] = None
    delivered_result_code: Optional[int] = None
    delivered_result_message: Optional[str] = None
    sent_timestamp: Optional[str] = None
    delivered_timestamp: Optional[str] = None


@frozen
class ResultReport:
    results: Tuple[MessageResult, ...]
    skipped: int = 0  # entries that were not objects with a usable uuid


@frozen
class Hint:
    """What a delivery result suggests: status "delivered" or "failed", and why."""

    status: str
    reason: str


# --------------------------------------------------------------------------------------
# The query string
# --------------------------------------------------------------------------------------

QueryInput = Union[bytes, str, Mapping[Any, Any], None]

# The phone joins `?task=...` to the Sync URL by concatenation: both separators split pairs.
_PAIR_SEPARATORS = re.compile(r"[&?]")


def _text(value: Any) -> str:
    if isinstance(value, (bytes, bytearray)):
        return bytes(value).decode("utf-8", "surrogateescape")
    return str(value)


def _pairs_from_raw(raw: str) -> List[Tuple[str, str]]:
    pairs = []
    for part in _PAIR_SEPARATORS.split(raw):
        if not part:
            continue
        name, _, value = part.partition("=")
        # `+` is a space (java.net.URLEncoder on the phone); invalid UTF-8 is kept as
        # surrogate escapes, so that it can never equal a configured secret.
        pairs.append((unquote_plus(name, errors="surrogateescape"),
                      unquote_plus(value, errors="surrogateescape")))
    return pairs


def parse_query(query: QueryInput) -> Query:
    """Find `task` and `secret` in a query.

    `query` is best the raw query string (bytes or str, what follows the first ``?`` of
    the request URI; a leading ``?`` is ignored).  A mapping such as twisted's
    `request.args` also works: a value or name that holds a second ``?`` is split again,
    but there a ``%3F`` in a value cannot be told from ``?``.  The last `task` and the
    last `secret` win: they are the ones the phone appended.
    """
    if query is None:
        return Query(None, None, ())
    if isinstance(query, Mapping):
        pairs: List[Tuple[str, str]] = []
        for name, values in query.items():
            if isinstance(values, (bytes, bytearray, str)):
                values = [values]
            for value in values:
                name_s, value_s = _text(name), _text(value)
                if "?" in name_s:
                    head, _, name_s = name_s.rpartition("?")
                    pairs.extend(_pairs_from_raw(head))
                first, _, rest = value_s.partition("?")
                pairs.append((name_s, first))
                if rest:
                    pairs.extend(_pairs_from_raw(rest))
    else:
        raw = _text(query)
        if raw.startswith("?"):
            raw = raw[1:]
        pairs = _pairs_from_raw(raw)
    task = secret = None
    for name, value in pairs:
        if name == "task":
            task = value
        elif name == "secret":
            secret = value
    return Query(task, secret, tuple(pairs))


def classify(method: Union[bytes, str], query: QueryInput) -> Union[str, Refusal]:
    """Which request this is: INCOMING, SEND_POLL, SENT_ACK, RESULT_QUERY, RESULT_REPORT.

    Anything else is a Refusal (405 for a method SMSsync never uses, 400 for a task it
    does not know).
    """
    m = _text(method).upper()
    task = parse_query(query).task
    if m in ("POST", "PUT") and task is None:
        return INCOMING
    if m == "GET" and task == "send":
        return SEND_POLL
    if m == "POST" and task == "sent":
        return SENT_ACK
    if m == "GET" and task == "result":
        return RESULT_QUERY
    if m == "POST" and task == "result":
        return RESULT_REPORT
    if m not in ("GET", "POST", "PUT"):
        return Refusal(405, f"SMSsync does not use {one_line(m, 20)}")
    if task is None:
        return Refusal(400, "a GET needs ?task=send or ?task=result")
    return Refusal(400, f"no task {one_line(task, 40)!r} for {m}")


def check_secret(received: Optional[str], configured: Optional[str]) -> Optional[Refusal]:
    """None when `received` may pass; a 403 Refusal otherwise.

    No configured secret (None or "") lets everything pass.  The comparison takes the
    same time whatever the received value shares with the secret.
    """
    if not configured:
        return None
    got = (received or "").encode("utf-8", "surrogateescape")
    if hmac.compare_digest(got, configured.encode("utf-8", "surrogateescape")):
        return None
    return Refusal(403, "the secret does not match")


# --------------------------------------------------------------------------------------
# Incoming SMS (and the "Test integration" button)
# --------------------------------------------------------------------------------------


def parse_incoming(
    method: Union[bytes, str],
    content_type: Union[bytes, str, None],
    body: bytes,
    query: QueryInput = None,
    *,
    secret: Optional[str],
    fields: FieldNames = DEFAULT_FIELDS,
) -> Union[IncomingSMS, TestIntegration, Refusal]:
    """A received SMS, the integration test, or a Refusal to answer with `incoming_refused`.

    The body format is recognised from the body itself: the app labels its XML body
    ``application/json; charset=UTF-8`` (its XML media type is a copy of the JSON one), so
    the Content-Type only rules out multipart forms.  Values are strings; the form is
    UTF-8 with ``%20`` or ``+`` for a space.
    """
    kind = classify(method, query)
    if isinstance(kind, Refusal):
        return kind
    if kind != INCOMING:
        return Refusal(400, f"not an incoming SMS but a {kind} request")
    if not isinstance(body, (bytes, bytearray)):
        return Refusal(400, "no body")
    if len(body) > MAX_BODY:
        return Refusal(413, f"body over {MAX_BODY} bytes")
    ctype = _text(content_type or "").split(";", 1)[0].strip().lower()
    if ctype.startswith("multipart/"):
        return Refusal(415, "multipart bodies are not what SMSsync sends: use a form (-d) or JSON")
    values = _decode_body(bytes(body))
    if isinstance(values, Refusal):
        return values
    data, body_format = values

    refused = check_secret(_optional_string(data.get(fields.secret)), secret)
    if refused is not None:
        return refused

    sender = data.get(fields.sender)
    text = data.get(fields.message)
    message_id = _optional_string(data.get(fields.message_id))
    stamp = data.get(fields.sent_timestamp)
    if not isinstance(sender, str) or not is_clean(sender, MAX_NUMBER):
        return Refusal(400, f"{fields.sender!r} is missing or not a phone number or name")
    if not isinstance(text, str) or not is_text(text, MAX_TEXT):
        return Refusal(400, f"{fields.message!r} is missing or not text")
    if message_id is None and stamp in (None, ""):
        # The test button sends only secret, from and message.
        return TestIntegration(sender, text, body_format)
    if message_id is None or not is_clean(message_id, MAX_ID):
        return Refusal(400, f"{fields.message_id!r} is missing or not a usable id")
    sent_ms = _timestamp(stamp)
    if sent_ms is False:
        return Refusal(400, f"{fields.sent_timestamp!r} is not milliseconds since the epoch")
    extra: Dict[str, Optional[str]] = {}
    for name in (fields.sent_to, fields.device_id):
        value = _optional_string(data.get(name))
        if value is not None and not is_clean(value, MAX_ID):
            return Refusal(400, f"{name!r} is not a usable value")
        extra[name] = value
    return IncomingSMS(
        message_id=message_id,
        sender=sender,
        text=text,
        sent_timestamp_ms=sent_ms,  # type: ignore[arg-type]
        sent_to=extra[fields.sent_to],
        device_id=extra[fields.device_id],
        body_format=body_format,
    )


def _optional_string(value: Any) -> Optional[str]:
    """A non-empty string, or None for absent/empty/null."""
    if value is None or value == "":
        return None
    return value if isinstance(value, str) else None


def _timestamp(value: Any) -> Union[int, None, bool]:
    """ms since the epoch; None when absent or empty; False when it is not a number."""
    if value is None or value == "":
        return None
    if isinstance(value, bool):
        return False
    if isinstance(value, int):
        text = str(value)
    elif isinstance(value, str):
        text = value.strip()
    else:
        return False
    if not re.fullmatch(r"[0-9]{1,15}", text):
        return False
    return int(text)


def _decode_body(body: bytes) -> Union[Tuple[Dict[str, Any], str], Refusal]:
    start = body.lstrip(b" \t\r\n")
    if start.startswith(b"\xef\xbb\xbf"):
        start = start[3:].lstrip(b" \t\r\n")
    if start.startswith(b"{"):
        data = _decode_json(body)
        return data if isinstance(data, Refusal) else (data, JSON)
    if start.startswith(b"<"):
        data = _decode_xml(body)
        return data if isinstance(data, Refusal) else (data, XML)
    data = _decode_form(body)
    return data if isinstance(data, Refusal) else (data, FORM)


def _decode_form(body: bytes) -> Union[Dict[str, Any], Refusal]:
    try:
        text = body.decode("utf-8")
        pairs = parse_qsl(text, keep_blank_values=True, strict_parsing=False,
                          encoding="utf-8", errors="strict", max_num_fields=MAX_FIELDS)
    except UnicodeDecodeError:
        return Refusal(400, "the form is not UTF-8")
    except ValueError:
        return Refusal(413, f"more than {MAX_FIELDS} form fields")
    return _unique(pairs)


def _unique(pairs: Iterable[Tuple[str, Any]]) -> Union[Dict[str, Any], Refusal]:
    # The app never repeats a field; a request that does is forged or broken, and taking
    # either copy could change who the SMS is from.
    data: Dict[str, Any] = {}
    for name, value in pairs:
        if name in data:
            return Refusal(400, f"field {one_line(name, 40)!r} given twice")
        data[name] = value
    return data


def _decode_json(body: bytes) -> Union[Dict[str, Any], Refusal]:
    try:
        data = load_json(body)
    except JSONError as e:
        return Refusal(400, str(e))
    if not isinstance(data, dict):
        return Refusal(400, "the JSON body is not an object")
    if len(data) > MAX_FIELDS:
        return Refusal(413, f"more than {MAX_FIELDS} JSON fields")
    for name, value in data.items():
        if isinstance(value, bool) or not (value is None or isinstance(value, (str, int))):
            return Refusal(400, f"JSON field {one_line(name, 40)!r} is not a string")
    return data


class _XMLRefused(Exception):
    """The XML body is not one the app sends (the reason is the argument)."""


def _decode_xml(body: bytes) -> Union[Dict[str, Any], Refusal]:
    """The app's XML: ``<payload><secret>..</secret><from>..</from>...</payload>``.

    (DataFormatUtil.makeXMLString in the app: one element per field under a `payload`
    root.)  Any root name is accepted, each child is one field, a child may not have
    children.  A DOCTYPE (and with it any entity declaration) is refused before it is
    read: no entity expansion, internal or external.
    """
    from xml.parsers import expat

    parser = expat.ParserCreate()
    parser.buffer_text = True
    with contextlib.suppress(AttributeError):  # every CPython expat has it
        parser.SetParamEntityParsing(expat.XML_PARAM_ENTITY_PARSING_NEVER)
    fields: List[Tuple[str, str]] = []
    state: Dict[str, Any] = {"depth": 0, "name": None, "chunks": []}

    def forbid(*_args: Any) -> None:
        raise _XMLRefused("XML with a DOCTYPE or entities is refused")

    def start(name: str, _attrs: Any) -> None:
        state["depth"] += 1
        if state["depth"] == 2:
            state["name"], state["chunks"] = name, []
        elif state["depth"] > 2:
            raise _XMLRefused(f"field <{one_line(name, 40)}> has child elements")
        if len(fields) > MAX_FIELDS:
            raise _XMLRefused(f"more than {MAX_FIELDS} XML fields")

    def end(name: str) -> None:
        if state["depth"] == 2:
            fields.append((name, "".join(state["chunks"])))
        state["depth"] -= 1

    def chars(data: str) -> None:
        if state["depth"] == 2:
            state["chunks"].append(data)
        elif state["depth"] == 1 and data.strip():
            raise _XMLRefused("text outside the field elements")

    parser.StartDoctypeDeclHandler = forbid
    parser.EntityDeclHandler = forbid
    parser.UnparsedEntityDeclHandler = forbid
    parser.ExternalEntityRefHandler = forbid
    parser.StartElementHandler = start
    parser.EndElementHandler = end
    parser.CharacterDataHandler = chars
    try:
        parser.Parse(body, True)
    except _XMLRefused as e:
        return Refusal(400, str(e))
    except expat.ExpatError as e:
        return Refusal(400, f"not XML ({one_line(str(e), 80)})")
    except (ValueError, RecursionError) as e:
        return Refusal(400, f"not XML ({one_line(str(e), 80)})")
    return _unique(fields)


# --------------------------------------------------------------------------------------
# Answers to the incoming POST
# --------------------------------------------------------------------------------------


def _message_object(m: OutgoingSMS) -> Dict[str, str]:
    if not is_clean(m.uuid, MAX_ID):
        raise ValueError(f"unusable uuid {m.uuid!r}")
    if not is_clean(m.to, MAX_NUMBER):
        raise ValueError(f"message {m.uuid}: unusable recipient {m.to!r}")
    if not is_text(m.text, MAX_TEXT) or m.text == "":
        raise ValueError(f"message {m.uuid}: empty or unusable text")
    # Only these three keys: Gson parses timestamp keys as Java dates and the whole
    # answer fails with them.
    return {"to": m.to, "message": m.text, "uuid": m.uuid}


def incoming_accepted(replies: Sequence[OutgoingSMS] = ()) -> Answer:
    """200 ``{"payload":{"success":true,"error":null}}``: the phone marks the SMS synced.

    `replies` become an instant reply the phone sends at once, without checking task or
    secret, and only when its "Get reply from server" setting is on: whether they go out
    is not known here.  Raises ValueError for an unusable reply.
    """
    payload: Dict[str, Any] = {"success": True, "error": None}
    if replies:
        payload["task"] = "send"
        payload["messages"] = [_message_object(m) for m in replies]
    return json_answer(200, {"payload": payload})


def incoming_refused(reason: str, status: int = 503) -> Answer:
    """``{"payload":{"success":false,"error":reason}}``: the phone keeps the SMS and retries.

    Any status but 200/201 is a failure for the phone; with 200 or 201 it shows `reason`
    to its user (and still retries).  Use 503 when the store could not commit, the
    Refusal's status for a refused request.
    """
    return json_answer(status, {"payload": {"success": False, "error": one_line(reason)}})


def refusal_answer(refusal: Refusal) -> Answer:
    """The answer for any Refusal: its status and a ``payload.error`` naming the reason."""
    return incoming_refused(refusal.reason, refusal.status)


def test_integration_answer() -> Answer:
    """Exactly 200 with a payload object: the app's "Test integration" then passes."""
    return json_answer(200, {"payload": {"success": True, "error": None}})


# --------------------------------------------------------------------------------------
# GET ?task=send
# --------------------------------------------------------------------------------------


def send_task_answer(messages: Sequence[OutgoingSMS], secret: Optional[str]) -> Answer:
    """200 ``{"payload":{"success":true,"task":"send","secret":..., "messages":[...]}}``.

    `secret` must be the phone's secret exactly (the query's `secret`, once checked):
    a phone with a secret sends nothing unless the answer echoes it.  None leaves the key
    out (a phone without a secret does not look).  Raises ValueError for an unusable
    message.
    """
    payload: Dict[str, Any] = {"success": True, "task": "send"}
    if secret is not None:
        payload["secret"] = secret
    payload["messages"] = [_message_object(m) for m in messages]
    return json_answer(200, {"payload": payload})


def task_refused(reason: str, status: int = 403) -> Answer:
    """An answer to a task request that hands nothing out (no ``task``, no messages)."""
    return json_answer(status, {"payload": {"success": False, "error": one_line(reason)}})


# --------------------------------------------------------------------------------------
# POST ?task=sent
# --------------------------------------------------------------------------------------


def _uuid_list(value: Any, what: str) -> Union[Tuple[str, ...], Refusal]:
    if not isinstance(value, list):
        return Refusal(400, f"{what} is not a list")
    if len(value) > MAX_UUIDS:
        return Refusal(413, f"more than {MAX_UUIDS} uuids")
    out = []
    for item in value:
        if not isinstance(item, str) or not is_clean(item, MAX_ID):
            return Refusal(400, f"{what} holds something that is not a uuid")
        out.append(item)
    return tuple(out)


def parse_sent_ack(body: bytes) -> Union[Tuple[str, ...], Refusal]:
    """The uuids in ``{"queued_messages":[...]}``, in order; a Refusal if malformed."""
    if len(body) > MAX_BODY:
        return Refusal(413, f"body over {MAX_BODY} bytes")
    try:
        data = load_json(body)
    except JSONError as e:
        return Refusal(400, str(e))
    if not isinstance(data, dict) or "queued_messages" not in data:
        return Refusal(400, "no queued_messages")
    return _uuid_list(data["queued_messages"], "queued_messages")


def sent_ack_answer(queued: Iterable[str], offered_pending: Container[str]) -> Answer:
    """200 ``{"message_uuids":[...]}``: the phone sends exactly these.

    The request carries no secret, so only uuids in `offered_pending` (handed to this
    phone by a task=send answer and still waiting for it) are confirmed; a forged or stale
    uuid is left out and the phone does not send it.  Order kept, repeats dropped.
    """
    confirmed: List[str] = []
    seen = set()
    for uuid in queued:
        if uuid in offered_pending and uuid not in seen:
            confirmed.append(uuid)
            seen.add(uuid)
    return json_answer(200, {"message_uuids": confirmed})


# --------------------------------------------------------------------------------------
# GET and POST ?task=result
# --------------------------------------------------------------------------------------


def result_query_answer(uuids: Iterable[str]) -> Answer:
    """Exactly 200 ``{"message_uuids":[...]}``: the uuids websmsd wants results for."""
    listed = list(uuids)
    for uuid in listed:
        if not is_clean(uuid, MAX_ID):
            raise ValueError(f"unusable uuid {uuid!r}")
    return json_answer(200, {"message_uuids": listed})


def _code(value: Any) -> Optional[int]:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value if -(2**31) <= value < 2**31 else None
    if isinstance(value, str) and re.fullmatch(r"-?[0-9]{1,10}", value.strip()):
        number = int(value)
        return number if -(2**31) <= number < 2**31 else None
    return None


def _short(value: Any, limit: int = 500) -> Optional[str]:
    if isinstance(value, str) and is_text(value, 100_000):
        return one_line(value, limit)
    return None


def parse_result_report(body: bytes) -> Union[ResultReport, Refusal]:
    """The entries of a POST ?task=result body.

    The app double-encodes: ``message_result`` is a JSON *string* holding the array.
    A plain array (the documented form) is accepted too.  Entries that are not objects
    with a usable ``uuid`` are skipped and counted; codes must be integers (or digit
    strings); the dates stay strings ("Feb 21, 2017 3:36:40 PM").
    """
    if len(body) > MAX_BODY:
        return Refusal(413, f"body over {MAX_BODY} bytes")
    try:
        data = load_json(body)
    except JSONError as e:
        return Refusal(400, str(e))
    if not isinstance(data, dict) or "message_result" not in data:
        return Refusal(400, "no message_result")
    entries = data["message_result"]
    if isinstance(entries, str):
        try:
            entries = load_json(entries.encode("utf-8", "surrogatepass"))
        except JSONError as e:
            return Refusal(400, f"message_result: {e}")
    if entries is None:
        entries = []
    if not isinstance(entries, list):
        return Refusal(400, "message_result is not a list")
    if len(entries) > MAX_UUIDS:
        return Refusal(413, f"more than {MAX_UUIDS} results")
    results = []
    skipped = 0
    for entry in entries:
        uuid = entry.get("uuid") if isinstance(entry, dict) else None
        if not isinstance(uuid, str) or not is_clean(uuid, MAX_ID):
            skipped += 1
            continue
        results.append(MessageResult(
            uuid=uuid,
            sent_result_code=_code(entry.get("sent_result_code")),
            sent_result_message=_short(entry.get("sent_result_message")),
            delivered_result_code=_code(entry.get("delivered_result_code")),
            delivered_result_message=_short(entry.get("delivered_result_message")),
            sent_timestamp=_short(entry.get("sent_timestamp"), 64),
            delivered_timestamp=_short(entry.get("delivered_timestamp"), 64),
        ))
    return ResultReport(tuple(results), skipped)


def result_report_answer() -> Answer:
    """200: the phone ignores this answer's body."""
    return json_answer(200, {"payload": {"success": True, "error": None}})


# Android's SmsManager result codes for a sent SMS (RESULT_ERROR_*).
SEND_FAILURES = {
    1: "generic failure",
    2: "radio off",
    3: "null PDU",
    4: "no service",
}


def result_hint(result: MessageResult) -> Optional[Hint]:
    """A hint from one delivery result, or None when it says nothing.

    Hints only, never proof: v3.1.1 never fills ``sent_result_code`` (it is always 0),
    the phone reports only messages it does not hold as SENT (so a sent message usually
    has no entry), and ``delivered_result_code`` is Android's raw broadcast code:
    -1 (RESULT_OK) means a delivery report arrived, 0 means none or cancelled.
    """
    if result.delivered_result_code == -1:
        return Hint("delivered", "the phone received a delivery report")
    failure = SEND_FAILURES.get(result.sent_result_code)  # type: ignore[arg-type]
    if failure is not None:
        detail = f" ({result.sent_result_message})" if result.sent_result_message else ""
        return Hint("failed", f"the phone could not send it: {failure}{detail}")
    return None


__all__ = [
    "DEFAULT_FIELDS", "FORM", "INCOMING", "JSON", "JSON_TYPE", "MAX_BODY", "RESULT_QUERY",
    "RESULT_REPORT", "SENT_ACK", "SEND_POLL", "TEST_FROM", "TEST_MESSAGE", "XML", "Answer",
    "FieldNames", "Hint", "IncomingSMS", "MessageResult", "OutgoingSMS", "Query", "Refusal",
    "ResultReport", "TestIntegration", "check_secret", "classify", "incoming_accepted",
    "incoming_refused", "parse_incoming", "parse_query", "parse_result_report",
    "parse_sent_ack", "refusal_answer", "result_hint", "result_query_answer",
    "result_report_answer", "send_task_answer", "sent_ack_answer", "task_refused",
    "test_integration_answer",
]
