"""The GoIP web API, pure: request building and answer parsing (no Twisted, no I/O).

Requests (credentials: `u`/`p` in the query where the device wants them, and HTTP
Basic auth on every request, which the sms_info.html form needs):
    GET  /default/en_US/send.html?u=&p=&l=<line>&n=<number>&m=<text>
    POST /default/en_US/sms_info.html?type=sms   line, smskey, action=SMS, telnum, smscontent, send=Send
    POST /default/en_US/sms_info.html?type=ussd  line1, smskey, action=USSD, telnum=<code>, send=Send
    GET  /default/en_US/send_status.xml?u=&p=

Answers:
* send.html: `Sending, L1 Send SMS to 89991234567; ID:55c489da` or, on other firmware,
  `Sending,L1 Send SMS to:89991234567; ID:00000e7c`; errors start with `ERROR`
  (`ERROR,L2 GSM logout`, `ERROR,user or password error`).
* send_status.xml: `<send-sms-status>` with `<idN>`, `<statusN>` (DONE, ERRORDONE, empty
  while sending) and `<errorN>` for every line (8 entries even on a 4-line device, empty
  ones possibly written `<id2/>`), holding only the last job of each line.  A USSD answer
  is written into the error field of its line with status DONE.  It is read with regular
  expressions: no XML parser, so no entity is ever resolved (only the five predefined
  ones and character references are decoded).
"""

from __future__ import annotations

import base64
import re
from dataclasses import field
from typing import Dict, Optional, Tuple
from urllib.parse import quote, urlencode, urlsplit

from websmsd.record import frozen

SEND_PATH = "/default/en_US/send.html"
STATUS_PATH = "/default/en_US/send_status.xml"
INFO_PATH = "/default/en_US/sms_info.html"

MAX_TEXT_BYTES = 3000  # as for the UDP protocol; keeps a GET request within reason
MAX_ANSWER = 256 * 1024  # a status XML is ~1 KB; anything this big is not one
MAX_LINE = 64
_NUMBER = re.compile(r"\+?[0-9*#]{1,32}\Z")
_USSD_CODE = re.compile(r"[0-9*#+]{1,64}\Z")
_SMSKEY = re.compile(r"[0-9A-Za-z]{1,32}\Z")

# Job states (job_state)
PENDING = "pending"
DONE = "done"
FAILED = "failed"

# Kinds of a refused send (SendAnswer.kind)
ACCEPTED = "accepted"
AUTH = "auth"  # user or password wrong
LINE_DOWN = "line-down"  # GSM logout, no SIM, not registered
REFUSED = "refused"  # anything else (busy line...): retry later


class WebAPIError(ValueError):
    """A request cannot be built, or an answer is not one the GoIP gives."""


@frozen
class WebRequest:
    """One HTTP request to a GoIP.  `url` and `headers` carry credentials and are kept
    out of repr; log `log_url` (no query, no credentials)."""

    method: str
    url: str = field(repr=False)
    log_url: str
    headers: Tuple[Tuple[str, str], ...] = field(default=(), repr=False)
    form: Optional[Tuple[Tuple[str, str], ...]] = field(default=None, repr=False)

    @property
    def body(self) -> Optional[bytes]:
        """The urlencoded (UTF-8) form for a POST, None for a GET."""
        if self.form is None:
            return None
        return urlencode(self.form, quote_via=quote, safe="").encode("ascii")


@frozen
class SendAnswer:
    """What send.html said.  kind ACCEPTED: line, number and smskey are set; otherwise
    `error` holds the GoIP's text (one printable line) and kind says what it means."""

    kind: str
    line: Optional[int] = None
    number: Optional[str] = None
    smskey: Optional[str] = None
    error: Optional[str] = None

    @property
    def accepted(self) -> bool:
        return self.kind == ACCEPTED


@frozen
class LineJob:
    """The last job of one line in send_status.xml ("" for empty tags)."""

    line: int
    smskey: str
    status: str
    error: str


# ---------------------------------------------------------------------------------------
# Requests
# ---------------------------------------------------------------------------------------


def _base(base_url: str) -> Tuple[str, str]:
    """(base without trailing slash, its form for logs)."""
    if not isinstance(base_url, str):
        raise WebAPIError("the GoIP URL must be a string")
    try:
        parts = urlsplit(base_url)
        port = parts.port
    except ValueError:
        raise WebAPIError("the GoIP URL is not valid") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise WebAPIError("the GoIP URL must be http:// or https:// with a host")
    if parts.username is not None or parts.password is not None:
        raise WebAPIError("give the GoIP user and password as settings, not in the URL")
    if parts.query or parts.fragment:
        raise WebAPIError("the GoIP URL must not have a query or fragment")
    if any(ch in base_url for ch in "\r\n\t "):
        raise WebAPIError("the GoIP URL must not contain blanks")
    base = base_url.rstrip("/")
    prefix = parts.path.rstrip("/")
    if prefix.endswith("/default/en_US"):
        base = base[: -len("/default/en_US")]  # accept the page folder as the base too
    host = parts.hostname if ":" not in parts.hostname else f"[{parts.hostname}]"
    log = f"{parts.scheme}://{host}" + (f":{port}" if port is not None else "")
    return base, log


def _auth_headers(user: str, password: str) -> Tuple[Tuple[str, str], ...]:
    for name, value in (("user", user), ("password", password)):
        if not isinstance(value, str) or any(ord(ch) < 0x20 or ord(ch) == 0x7F for ch in value):
            raise WebAPIError(f"the GoIP {name} must be text without control characters")
    if ":" in user:
        raise WebAPIError("the GoIP user must not contain ':'")
    token = base64.b64encode(f"{user}:{password}".encode("utf-8")).decode("ascii")
    return (("Authorization", f"Basic {token}"), ("Accept", "*/*"))


def _query(pairs: Tuple[Tuple[str, str], ...]) -> str:
    # %20 rather than '+': the device's decoder is unknown and %20 is read by all.
    return urlencode(pairs, quote_via=quote, safe="")


def check_line(line: int) -> int:
    if isinstance(line, bool) or not isinstance(line, int) or not 1 <= line <= MAX_LINE:
        raise WebAPIError(f"a GoIP line is a number 1..{MAX_LINE}")
    return line


def check_number(number: str) -> str:
    if not isinstance(number, str) or not _NUMBER.match(number):
        raise WebAPIError("the destination number must be digits with an optional leading +")
    return number


def check_text(text: str) -> str:
    if not isinstance(text, str) or text == "":
        raise WebAPIError("the text is empty")
    if "\x00" in text:
        raise WebAPIError("the text contains a NUL character")
    try:
        size = len(text.encode("utf-8"))
    except UnicodeEncodeError:
        raise WebAPIError("the text is not valid Unicode (lone surrogate)") from None
    if size > MAX_TEXT_BYTES:
        raise WebAPIError(f"the text is {size} bytes in UTF-8; at most {MAX_TEXT_BYTES} are sent")
    return text


def check_smskey(smskey: str) -> str:
    if not isinstance(smskey, str) or not _SMSKEY.match(smskey):
        raise WebAPIError("an smskey is 1..32 letters and digits")
    return smskey


def send_request(base_url: str, user: str, password: str, line: int, number: str, text: str) -> WebRequest:
    """GET send.html: the GoIP picks the smskey and says it in the answer."""
    base, log = _base(base_url)
    query = _query((("u", user), ("p", password), ("l", str(check_line(line))),
                    ("n", check_number(number)), ("m", check_text(text))))
    return WebRequest("GET", f"{base}{SEND_PATH}?{query}", log + SEND_PATH, _auth_headers(user, password))


def send_form_request(base_url: str, user: str, password: str, line: int, number: str, text: str,
                      smskey: str) -> WebRequest:
    """POST sms_info.html?type=sms: the web form's request, with our own smskey."""
    base, log = _base(base_url)
    form = (("line", str(check_line(line))), ("smskey", check_smskey(smskey)), ("action", "SMS"),
            ("telnum", check_number(number)), ("smscontent", check_text(text)), ("send", "Send"))
    return WebRequest("POST", f"{base}{INFO_PATH}?type=sms", log + INFO_PATH,
                      _auth_headers(user, password) + (("Content-Type", "application/x-www-form-urlencoded"),),
                      form)


def ussd_request(base_url: str, user: str, password: str, line: int, code: str, smskey: str) -> WebRequest:
    """POST sms_info.html?type=ussd; the answer comes later in send_status.xml."""
    if not isinstance(code, str) or not _USSD_CODE.match(code):
        raise WebAPIError("a USSD code is 1..64 of 0-9 * # +")
    base, log = _base(base_url)
    form = (("line1", str(check_line(line))), ("smskey", check_smskey(smskey)), ("action", "USSD"),
            ("telnum", code), ("send", "Send"))
    return WebRequest("POST", f"{base}{INFO_PATH}?type=ussd", log + INFO_PATH,
                      _auth_headers(user, password) + (("Content-Type", "application/x-www-form-urlencoded"),),
                      form)


def status_request(base_url: str, user: str, password: str) -> WebRequest:
    """GET send_status.xml."""
    base, log = _base(base_url)
    query = _query((("u", user), ("p", password)))
    return WebRequest("GET", f"{base}{STATUS_PATH}?{query}", log + STATUS_PATH, _auth_headers(user, password))


# ---------------------------------------------------------------------------------------
# Answers
# ---------------------------------------------------------------------------------------

_SENDING = re.compile(
    r"Sending\s*,\s*L\s*(\d{1,3})\s+Send\s+SMS\s+to\s*:?\s*([^;\s<]{1,40})\s*;\s*ID\s*:\s*([0-9A-Za-z]{1,32})",
    re.I,
)
_TAGS = re.compile(r"<[^>]{0,200}>")
_ERROR = re.compile(r"ERROR\b\s*[,:]?\s*(.*)", re.I | re.S)


def _text_of(body: bytes) -> str:
    if not isinstance(body, (bytes, bytearray)):
        raise WebAPIError("the answer is not bytes")
    if len(body) > MAX_ANSWER:
        raise WebAPIError(f"the answer is {len(body)} bytes, not a GoIP answer")
    return bytes(body).decode("utf-8", "replace").replace("\x00", "")


def one_line(text: str, limit: int = 200) -> str:
    """Text from the device made fit for a log line or a status page reason."""
    cleaned = "".join(ch if ch.isprintable() else " " for ch in text)
    return " ".join(cleaned.split())[:limit]


def classify_error(text: str) -> str:
    """AUTH, LINE_DOWN or REFUSED for the text after `ERROR`."""
    lower = text.lower()
    if "password" in lower or "user" in lower or "auth" in lower:
        return AUTH
    if any(word in lower for word in ("logout", "log out", "no sim", "not register", "unregister",
                                      "not ready", "disable")):
        return LINE_DOWN
    return REFUSED


def parse_send_answer(body: bytes) -> SendAnswer:
    """The answer of send.html; WebAPIError for anything that is neither form."""
    text = _text_of(body)
    m = _SENDING.search(text)
    if m:
        return SendAnswer(ACCEPTED, line=int(m.group(1)), number=m.group(2), smskey=m.group(3))
    plain = _TAGS.sub(" ", text).strip()
    e = _ERROR.match(plain)
    if e:
        detail = one_line(e.group(1)) or "ERROR"
        return SendAnswer(classify_error(detail), error=detail)
    raise WebAPIError(f"not a send.html answer: {one_line(plain, 80)!r}")


_ENTITY = re.compile(r"&(#[0-9]{1,7}|#x[0-9A-Fa-f]{1,6}|lt|gt|amp|quot|apos);")
_NAMED = {"lt": "<", "gt": ">", "amp": "&", "quot": '"', "apos": "'"}
_STATUS_TAG = re.compile(
    r"<\s*(id|status|error)\s*(\d{1,3})\s*(?:/\s*>|>([^<]{0,4096})<\s*/\s*\1\s*\2\s*>)",
    re.I,
)


def _unescape(text: str) -> str:
    def one(m: "re.Match[str]") -> str:
        name = m.group(1)
        if name in _NAMED:
            return _NAMED[name]
        code = int(name[2:], 16) if name[1] in "xX" else int(name[1:])
        if code == 0 or code > 0x10FFFF or 0xD800 <= code <= 0xDFFF:
            return "\ufffd"
        return chr(code)

    return _ENTITY.sub(one, text)


def parse_status(body: bytes) -> Dict[int, LineJob]:
    """send_status.xml -> {line: LineJob}; WebAPIError if it is not that document.

    Tolerant of empty tags written `<id2/>`, of blanks and line breaks anywhere, of lines
    missing from the document and of tags in any order.  Lines without any tag are
    absent from the result.
    """
    text = _text_of(body)
    if not re.search(r"<\s*send-sms-status\b", text, re.I):
        raise WebAPIError("not a send_status.xml answer (no <send-sms-status>)")
    found: Dict[int, Dict[str, str]] = {}
    for m in _STATUS_TAG.finditer(text):
        line = int(m.group(2))
        if not 1 <= line <= MAX_LINE:
            continue
        value = _unescape(m.group(3) or "").strip()
        found.setdefault(line, {}).setdefault(m.group(1).lower(), value)
    return {
        line: LineJob(line, tags.get("id", ""), tags.get("status", ""), tags.get("error", ""))
        for line, tags in sorted(found.items())
    }


def job_state(jobs: Dict[int, LineJob], line: int, smskey: str) -> Tuple[str, str]:
    """(PENDING | DONE | FAILED, text) of the job `smskey` on `line`.

    The status holds the line's last job only: while its id is another one, ours has not
    shown up yet (PENDING).  text is the error field: the failure reason, or for a USSD
    the network's answer.
    """
    job = jobs.get(line)
    if job is None or job.smskey.lower() != smskey.lower():
        return PENDING, ""
    status = job.status.strip().upper()
    if status == "DONE":
        return DONE, job.error
    if status.startswith("ERROR"):
        return FAILED, job.error
    return PENDING, ""


def maybe_sent_despite_error(error: str) -> bool:
    """Whether an ERRORDONE text says the SMS did leave the GoIP.

    `send, but provider not reply.` (seen on a GoIP-4) means the SMS was handed to the
    network and only the confirmation is missing: sending it again may deliver it twice.
    """
    lower = error.lower()
    return "not reply" in lower or lower.startswith("send,")
