"""Yeastar TG gateways: reading what the TG answers to a command (pure, no Twisted).

The requests and events are in `websmsd.yeastar.tg`; this module reads the answers:

* command outputs (AMI `smscommand` / CLI): `parse_ussd_output` -> `UssdResult`,
  `parse_spans` -> `SpanStatus`, `parse_span` -> `SpanInfo`;
* WebCGI: `parse_http_answer` for the device's malformed HTTP, `http_answer_complete`,
  `parse_webcgi_answer`, `parse_webcgi_ussd_answer`.

Facts behind the code are in /work/shared/goip-yeastar.md (Yeastar part).
"""

from __future__ import annotations

import re
from typing import Any, Dict, List, Optional, Tuple, Union

from .tg import SPAN_OFFSET, _clean_line, _output_text
from websmsd.record import frozen


# ---------------------------------------------------------------------------------------
# Command outputs
# ---------------------------------------------------------------------------------------


@frozen
class UssdResult:
    """The answer to a USSD request.

    `ok` with `text` (decoded) and `more_expected` (the network waits for a reply, `USSD
    Responses: 1`); or not `ok`, with `error` (the device's words: failed, timeout, or
    what it said).  `span` and `dcs` (the data coding scheme) when the device gave them.
    """

    ok: bool
    text: str = ""
    more_expected: bool = False
    error: Optional[str] = None
    span: Optional[int] = None
    dcs: Optional[int] = None


def _dcs_is_ucs2(dcs: int) -> bool:
    # 3GPP TS 23.038 section 5 (the CBS coding USSD uses): 0001 0001 is UCS-2 preceded by
    # a language; groups 01xx (general) and 1001 (message with UDH) carry the alphabet in
    # bits 3..2, where 10 is UCS-2.  72 = 0x48 is one of these; 15 = 0x0F is GSM 7-bit.
    if dcs == 0x11:
        return True
    return ((dcs & 0xC0) == 0x40 or (dcs & 0xF0) == 0x90) and (dcs & 0x0C) == 0x08


_HEX_TEXT = re.compile(r"(?:[0-9A-Fa-f]{4})+")


def _decode_ussd(message: str, dcs: Optional[int]) -> str:
    if dcs is not None and _dcs_is_ucs2(dcs):
        compact = re.sub(r"\s+", "", message)
        if _HEX_TEXT.fullmatch(compact):
            return bytes.fromhex(compact).decode("utf-16-be", "replace")
    return message


_USSD_STATUS = re.compile(r"^\s*([01]):(.*)$")
_USSD_SPAN = re.compile(r"span:?\s*(\d+)", re.I)
_USSD_RESPONSES = re.compile(r"(?:USSD Responses:|responses:)\s*(\d+)", re.I)
_USSD_CODE = re.compile(r"(?:USSD Code:|\bcode:)\s*(\d+)", re.I)
_USSD_MESSAGE = re.compile(r"USSD Message:[ \t]?", re.I)
_USSD_OLD_TEXT = re.compile(r"\bText:", re.I)


def parse_ussd_output(output: Any) -> UssdResult:
    """The output of `gsm send ussd` -> `UssdResult`.

    Success starts with `1:` (`1:Received USSD success on span: 2`, on some TG400
    firmware `1:Recive USSD sucess on span 2`), followed by tab-indented `USSD Responses`,
    `USSD Code` (the DCS: 72 = hex of UCS-2BE, 15 = plain text), `USSD Len` and `USSD
    Message` (the last field; a plain-text message may run over several lines).  Older
    firmware writes `1:Recive USSD on span 1,responses:0,code:15` and `Text:...`.
    Failure and timeout start with `0:`.  Anything else is a failure with the device's
    first line as the error.
    """
    text = _output_text(output)
    lines = text.split("\n")
    for n, line in enumerate(lines):
        m = _USSD_STATUS.match(line)
        if m:
            break
    else:
        first = next((ln for ln in lines if ln.strip()), "")
        return UssdResult(False, error=_clean_line(first, 200) or "no answer")
    head = m.group(2)
    span_m = _USSD_SPAN.search(head)
    span = int(span_m.group(1)) if span_m else None
    if m.group(1) == "0":
        return UssdResult(False, error=_clean_line(head, 200) or "USSD failed", span=span)
    rest = "\n".join([head] + lines[n + 1:])
    msg_m = _USSD_MESSAGE.search(rest) or _USSD_OLD_TEXT.search(rest)
    fields_part = rest[:msg_m.start()] if msg_m else rest
    message = rest[msg_m.end():] if msg_m else ""
    if message.endswith("\n"):
        message = message[:-1]
    responses_m = _USSD_RESPONSES.search(fields_part)
    dcs_m = _USSD_CODE.search(fields_part)
    dcs = int(dcs_m.group(1)) if dcs_m else None
    if dcs is not None and dcs > 255:
        dcs = None
    return UssdResult(True, text=_decode_ussd(message, dcs),
                      more_expected=bool(responses_m and responses_m.group(1) == "1"),
                      span=span, dcs=dcs)


_POWER_ON, _POWER_OFF = "power on", "power off"
_KNOWN_FLAGS = {_POWER_ON, _POWER_OFF, "provisioned", "unprovisioned", "active", "inactive",
                "standard", "in alarm"}


@frozen
class SpanStatus:
    """One span's status line: `Power on, Provisioned, Up, Active,Standard`.

    `state` is what is left once the known flags are taken out: `Up`, `Down`,
    `Undetected SIM Card`, `Block`...  `flags` keeps every comma-separated word.
    """

    span: int
    status: str
    power: Optional[bool]
    provisioned: bool
    state: str
    active: Optional[bool]
    flags: Tuple[str, ...]

    @property
    def port(self) -> int:
        return self.span - SPAN_OFFSET

    @property
    def up(self) -> bool:
        return self.power is not False and self.state.lower() == "up"


def _span_status(span: int, status: str) -> SpanStatus:
    flags = tuple(w.strip() for w in status.split(",") if w.strip())
    lower = [w.lower() for w in flags]
    power = True if _POWER_ON in lower else False if _POWER_OFF in lower else None
    active = True if "active" in lower else False if "inactive" in lower else None
    state = next((w for w, lw in zip(flags, lower) if lw not in _KNOWN_FLAGS), "")
    return SpanStatus(span=span, status=status, power=power, provisioned="provisioned" in lower,
                      state=state, active=active, flags=flags)


_SPANS_LINE = re.compile(r"^\s*GSM span\s+(\d{1,4})\s*:\s*(.*?)\s*$", re.I)


def parse_spans(output: Any) -> List[SpanStatus]:
    """The output of `gsm show spans` -> one `SpanStatus` per `GSM span N:` line.

    Other lines are ignored.
    """
    spans: List[SpanStatus] = []
    for line in _output_text(output).split("\n"):
        m = _SPANS_LINE.match(line)
        if m:
            spans.append(_span_status(int(m.group(1)), _clean_line(m.group(2), 200)))
    return spans


@frozen
class SpanInfo:
    """The output of `gsm show span N`.

    `signal` is `Signal Quality (0,31)` (AT+CSQ), None when the module reports none
    (-1, 99 or missing).  `fields` holds every `Name: value` line as written, so lines
    this class does not name are still there.
    """

    span: Optional[int]
    status: Optional[SpanStatus]
    signal: Optional[int]
    network_name: str
    network_status: str
    imei: str
    imsi: str
    smsc: str
    manufacturer: str
    model: str
    revision: str
    state: str
    last_event: str
    fields: Dict[str, str]

    @property
    def port(self) -> Optional[int]:
        return None if self.span is None else self.span - SPAN_OFFSET


_SPAN_KEYS = ("d-channel", "status", "signal quality (0,31)", "model imei", "sim imsi",
              "network name", "network status", "sim sms center number", "state")
_KEY_VALUE = re.compile(r"^\s*([A-Za-z][A-Za-z0-9 ()/,._-]{0,60}?)\s*:\s?(.*?)\s*$")


def parse_span(output: Any) -> Optional[SpanInfo]:
    """The output of `gsm show span N` -> `SpanInfo`; None when it holds none of the
    known lines (an error text such as an unknown span)."""
    fields: Dict[str, str] = {}
    lower: Dict[str, str] = {}
    for line in _output_text(output).split("\n"):
        m = _KEY_VALUE.match(line)
        if not m:
            continue
        name, value = m.group(1), _clean_line(m.group(2), 200)
        if name.lower() in lower:
            continue
        fields[name] = value
        lower[name.lower()] = value
    if not any(k in lower for k in _SPAN_KEYS):
        return None
    d_channel = lower.get("d-channel", "")
    span = int(d_channel) if re.fullmatch(r"\d{1,4}", d_channel) else None
    status = _span_status(span if span is not None else 0, lower["status"]) if "status" in lower else None
    signal_text = lower.get("signal quality (0,31)", "")
    signal_m = re.match(r"-?\d+", signal_text)
    signal = int(signal_m.group(0)) if signal_m else None
    if signal is not None and not 0 <= signal <= 31:
        signal = None
    return SpanInfo(
        span=span, status=status, signal=signal,
        network_name=lower.get("network name", ""), network_status=lower.get("network status", ""),
        imei=lower.get("model imei", lower.get("card imei", "")), imsi=lower.get("sim imsi", ""),
        smsc=lower.get("sim sms center number", ""), manufacturer=lower.get("manufacturer", ""),
        model=lower.get("model name", ""), revision=lower.get("revision", ""),
        state=lower.get("state", ""), last_event=lower.get("last event", ""), fields=fields)


@frozen
class HttpAnswer:
    """An HTTP answer as far as it could be read: `status` is None without a status line."""

    status: Optional[int]
    reason: str
    headers: Tuple[Tuple[str, str], ...]
    body: bytes

    def header(self, name: str) -> Optional[str]:
        name = name.lower()
        return next((v for k, v in self.headers if k.lower() == name), None)


# Header names a TG's web server (Boa) or a proxy may write.  A line counts as a header
# only if its name is one of these or it is wrapped in <...>, so that a body starting with
# `Response: Success` or `Request: 1,*100#` is never taken for headers.
_HTTP_HEADERS = frozenset(h.lower() for h in (
    "Accept-Ranges", "Access-Control-Allow-Origin", "Access-Control-Allow-Methods",
    "Access-Control-Allow-Headers", "Age", "Allow", "Cache-Control", "Connection",
    "Content-Disposition", "Content-Encoding", "Content-Language", "Content-Length",
    "Content-Location", "Content-Type", "Date", "ETag", "Expires", "Keep-Alive",
    "Last-Modified", "Location", "Pragma", "Server", "Set-Cookie", "Strict-Transport-Security",
    "Transfer-Encoding", "Vary", "Via", "WWW-Authenticate", "X-Content-Type-Options",
    "X-Frame-Options", "X-Powered-By", "X-XSS-Protection"))
_HEADER_LINE = re.compile(rb"^\s*<?\s*([A-Za-z][A-Za-z0-9-]{0,63})\s*:\s*(.*?)\s*>?\s*$")
_STATUS_LINE = re.compile(rb"^\s*HTTP/\d(?:\.\d)?\s+(\d{3})(?:\s+(.*?))?\s*$")


def _header(line: bytes) -> Optional[Tuple[str, str]]:
    m = _HEADER_LINE.match(line)
    if not m:
        return None
    name = m.group(1).decode("ascii")
    wrapped = line.lstrip().startswith(b"<") and line.rstrip().endswith(b">")
    if name.lower() not in _HTTP_HEADERS and not (wrapped or name.lower().startswith("x-")):
        return None
    return name, m.group(2).decode("latin-1")


def _lines(data: bytes) -> List[bytes]:
    # Lines keep their ends so the body can be cut out byte for byte.
    return data.splitlines(keepends=True)


def _dechunk(body: bytes) -> Optional[bytes]:
    out = bytearray()
    rest = body
    while True:
        line, sep, rest = rest.partition(b"\n")
        if not sep:
            return None
        m = re.match(rb"\s*([0-9A-Fa-f]{1,8})", line)
        if not m:
            return None
        size = int(m.group(1), 16)
        if size == 0:
            return bytes(out)
        if len(rest) < size:
            return None
        out += rest[:size]
        rest = rest[size:]
        rest = rest[2:] if rest.startswith(b"\r\n") else rest[1:] if rest.startswith(b"\n") else rest


def parse_http_answer(data: bytes) -> HttpAnswer:
    """Split what a TG's web server wrote into status, headers and body, tolerantly.

    The device writes malformed headers (`<Content-Type:text/html>`) and, on some TG1600
    units, stray blank lines before the status line or before the headers; lines may end
    with CRLF or a bare LF.  Blank lines and header-like lines after the status line are
    skipped; the body starts at the first line that is neither.  A chunked body is
    decoded.  Content-Length does not cut the body: with headers this loose, the device's
    count cannot be trusted to start where this parser starts the body.
    """
    lines = _lines(bytes(data))
    i = 0
    while i < len(lines) and not lines[i].strip():
        i += 1
    status: Optional[int] = None
    reason = ""
    if i < len(lines):
        m = _STATUS_LINE.match(lines[i])
        if m:
            status = int(m.group(1))
            reason = (m.group(2) or b"").decode("latin-1")
            i += 1
    headers: List[Tuple[str, str]] = []
    while i < len(lines):
        line = lines[i]
        if not line.strip():
            i += 1
            continue
        h = _header(line)
        if h is None:
            break
        headers.append(h)
        i += 1
    body = b"".join(lines[i:])
    answer = HttpAnswer(status, reason, tuple(headers), body)
    if (answer.header("transfer-encoding") or "").lower() == "chunked":
        plain = _dechunk(body)
        if plain is not None:
            return HttpAnswer(status, reason, tuple(headers), plain)
    return answer


def http_answer_complete(data: bytes) -> bool:
    """True once `data` holds a status line, headers and a body of the announced
    Content-Length (so a client need not wait for the close)."""
    answer = parse_http_answer(data)
    length = answer.header("content-length")
    if answer.status is None or length is None or not length.isdigit():
        return False
    return len(answer.body) >= int(length) and (int(length) == 0 or bool(answer.body))


_ANSWER_KEY = re.compile(r"^\s*(Response|Message|Request)\s*:\s?(.*)$", re.I)


def _webcgi_fields(body: Union[bytes, str]) -> Tuple[Dict[str, str], str]:
    if isinstance(body, bytes):
        body = body.decode("utf-8", "replace")
    if not isinstance(body, str):
        body = ""
    fields: Dict[str, str] = {}
    current: Optional[str] = None
    first_line = ""
    for raw in body.replace("\r\n", "\n").replace("\r", "\n").split("\n"):
        if not first_line and raw.strip():
            first_line = raw
        m = _ANSWER_KEY.match(raw)
        if m and m.group(1).lower() not in fields:
            current = m.group(1).lower()
            fields[current] = m.group(2).rstrip()
        elif current == "message":
            # The USSD answer text may run over several lines; it is the last field.
            fields["message"] += "\n" + raw.rstrip()
        else:
            current = None
    if "message" in fields:
        fields["message"] = fields["message"].strip("\n")
    return fields, first_line


def _clean_text(text: str, limit: int) -> str:
    text = "".join(ch if ch >= " " or ch in "\n\t" else " " for ch in text.replace("\x7f", " "))
    return text if len(text) <= limit else text[:limit] + "..."


def parse_webcgi_answer(body: Union[bytes, str]) -> Tuple[bool, str]:
    """A WebCGI answer body -> (ok, message).

    Only a `Response: Success` line means success (for a send: queued; the device sends
    when the port is free and reports nothing later).  Error texts are undocumented, so
    the message is the device's `Message:`, its `Response:`, or its first line.
    """
    fields, first_line = _webcgi_fields(body)
    response = fields.get("response", "").strip()
    message = _clean_text(fields.get("message", "").strip(), 2000)
    if response.lower() == "success":
        return True, message
    if message:
        return False, message
    if response:
        return False, f"Response: {_clean_line(response, 200)}"
    return False, _clean_line(first_line, 200) or "empty answer"


def parse_webcgi_ussd_answer(body: Union[bytes, str]) -> UssdResult:
    """A WebCGI USSD answer (`Request: <port>,<code>`, `Response: Success`, `Message:
    <answer text>`) -> `UssdResult`; `span` is derived from the port in `Request:`."""
    ok, message = parse_webcgi_answer(body)
    fields, _ = _webcgi_fields(body)
    request = re.match(r"\s*(\d{1,4})\s*,", fields.get("request", ""))
    span = int(request.group(1)) + SPAN_OFFSET if request else None
    if ok:
        return UssdResult(True, text=message, span=span)
    return UssdResult(False, error=_clean_line(message, 200), span=span)


__all__ = [
    "UssdResult", "SpanStatus", "SpanInfo", "HttpAnswer",
    "parse_ussd_output", "parse_spans", "parse_span",
    "parse_http_answer", "http_answer_complete", "parse_webcgi_answer",
    "parse_webcgi_ussd_answer",
]
