"""Stand-ins for the Android apps, written from the notes on their code, not from websmsd's.

- `SMSsyncPhone`: SMSsync v3.1.1 as an HTTP client: the exact request shapes (OkHttp form
  encoding, Android org.json, the XML body labelled as JSON, Gson's double-encoded
  task=result) and the app's verdict on each answer, with the retry of a failed post.
- `MedicPhone`: the medic/CHT "SMS Gateway" app (and the multiOTP fork): the settings
  check (GET), the poll (POST) with both arrays, the percent-encoded Basic password, and
  the app's handling of answers (data re-sent after a failed poll, ids de-duplicated).
- `FakeSMSGate`: "SMS Gateway for Android" in Local Server mode, a real HTTP server on
  127.0.0.1 in a thread, answering like the app (202/409 on POST /message, states, the
  inbox newest first with X-Total-Count, /health, an empty 401) and able to go silent.

Only the standard library (http.client, http.server): usable by black-box tests against
a real daemon as well as by unit tests.  Requests are built as `WireRequest` values first,
so a test can also look at them without a network.
"""

from __future__ import annotations

import base64
import datetime as _dt
import gzip
import http.client
import http.server
import json
import threading
import uuid as _uuid
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple
from urllib.parse import quote, unquote, urlsplit

# --------------------------------------------------------------------------------------
# HTTP plumbing
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class WireRequest:
    """One request as the phone puts it on the wire (the target is path + raw query)."""

    method: str
    scheme: str
    host: str
    port: int
    target: str
    headers: Tuple[Tuple[str, str], ...]
    body: bytes = b""

    def header(self, name: str) -> Optional[str]:
        for key, value in self.headers:
            if key.lower() == name.lower():
                return value
        return None

    @property
    def query(self) -> str:
        return self.target.split("?", 1)[1] if "?" in self.target else ""


@dataclass(frozen=True)
class Reply:
    status: int
    headers: Dict[str, str]  # lower-case names
    body: bytes  # decompressed when the answer was gzip

    def json(self) -> Any:
        return json.loads(self.body.decode("utf-8"))


def send(request: WireRequest, timeout: float = 30.0) -> Reply:
    """Put `request` on the wire byte for byte (http.client adds nothing of its own).

    Raises OSError when no answer comes (refused, timeout), as a phone's client would.
    """
    if request.scheme != "http":
        raise ValueError("phonepeers speaks plain http only")
    conn = http.client.HTTPConnection(request.host, request.port, timeout=timeout)
    try:
        conn.putrequest(request.method, request.target, skip_host=True, skip_accept_encoding=True)
        for name, value in request.headers:
            conn.putheader(name, value)
        conn.endheaders(request.body if request.body or request.method != "GET" else None)
        response = conn.getresponse()
        body = response.read()
        headers = {k.lower(): v for k, v in response.getheaders()}
        if headers.get("content-encoding", "").lower() == "gzip":
            # OkHttp and Android's HttpURLConnection decompress transparently when they
            # asked for gzip themselves.
            body = gzip.decompress(body)
        return Reply(response.status, headers, body)
    finally:
        conn.close()


def _split_url(url: str) -> Tuple[str, str, int, str, Optional[str]]:
    """scheme, host, port, path-with-query as written, raw userinfo (or None)."""
    parts = urlsplit(url)
    netloc = parts.netloc
    userinfo = None
    if "@" in netloc:
        userinfo, _, netloc = netloc.rpartition("@")
    host, _, port = netloc.partition(":")
    if host.startswith("["):
        host, _, port = netloc[1:].partition("]")
        port = port.lstrip(":")
    default = 443 if parts.scheme == "https" else 80
    target = parts.path or "/"
    if parts.query or url.endswith("?"):
        target += "?" + parts.query
    return parts.scheme, host, int(port) if port else default, target, userinfo


# --------------------------------------------------------------------------------------
# SMSsync v3.1.1
# --------------------------------------------------------------------------------------

# okhttp3 HttpUrl.FORM_ENCODE_SET: what FormBody percent-encodes besides controls,
# non-ASCII, `%` and `+` (which becomes %2B because a form `+` means a space).
_OKHTTP_FORM_SET = set(" \"':;<=>@[]^`{}|/\\?#&!$(),~")


def okhttp_form_encode(text: str) -> str:
    out = []
    for ch in text:
        code = ord(ch)
        if ch == "+" or ch == "%" or code < 0x20 or code == 0x7F or code >= 0x80 or ch in _OKHTTP_FORM_SET:
            out.extend("%%%02X" % b for b in ch.encode("utf-8", "surrogatepass"))
        else:
            out.append(ch)
    return "".join(out)


def java_url_encode(text: str) -> str:
    """java.net.URLEncoder.encode(text, "UTF-8"): space as `+`, `.-*_` and letters kept."""
    out = []
    for ch in text:
        if ch.isascii() and (ch.isalnum() or ch in ".-*_"):
            out.append(ch)
        elif ch == " ":
            out.append("+")
        else:
            out.extend("%%%02X" % b for b in ch.encode("utf-8"))
    return "".join(out)


def android_json_string(text: str) -> str:
    """A string as Android's org.json JSONStringer writes it (it escapes `/`)."""
    out = ['"']
    for ch in text:
        if ch == '"':
            out.append('\\"')
        elif ch == "\\":
            out.append("\\\\")
        elif ch == "/":
            out.append("\\/")
        elif ch == "\t":
            out.append("\\t")
        elif ch == "\b":
            out.append("\\b")
        elif ch == "\n":
            out.append("\\n")
        elif ch == "\r":
            out.append("\\r")
        elif ch == "\f":
            out.append("\\f")
        elif ord(ch) <= 0x1F:
            out.append("\\u%04x" % ord(ch))
        else:
            out.append(ch)
    out.append('"')
    return "".join(out)


def android_json_object(pairs: Sequence[Tuple[str, Any]]) -> str:
    """A flat object as Android's org.json JSONObject.toString() writes it (order kept)."""
    items = []
    for name, value in pairs:
        if value is None:
            continue  # JSONObject.put(name, null) removes the key
        if isinstance(value, bool):
            rendered = "true" if value else "false"
        elif isinstance(value, int):
            rendered = str(value)
        else:
            rendered = android_json_string(str(value))
        items.append(android_json_string(name) + ":" + rendered)
    return "{" + ",".join(items) + "}"


def gson_string(text: str) -> str:
    """A string as Gson writes it by default (HTML-safe: < > & = ' as \\u escapes)."""
    out = ['"']
    for ch in text:
        code = ord(ch)
        if ch == '"':
            out.append('\\"')
        elif ch == "\\":
            out.append("\\\\")
        elif ch == "\n":
            out.append("\\n")
        elif ch == "\r":
            out.append("\\r")
        elif ch == "\t":
            out.append("\\t")
        elif ch == "\b":
            out.append("\\b")
        elif ch == "\f":
            out.append("\\f")
        elif code < 0x20 or ch in "<>&='" or code in (0x2028, 0x2029):
            out.append("\\u%04x" % code)
        else:
            out.append(ch)
    out.append('"')
    return "".join(out)


def _kxml_text(text: str) -> str:
    """Element text as Android's KXmlSerializer escapes it (UTF-8 document)."""
    out = []
    for ch in text:
        code = ord(ch)
        if ch == "&":
            out.append("&amp;")
        elif ch == "<":
            out.append("&lt;")
        elif ch == ">":
            out.append("&gt;")
        elif code > 0xFFFF:
            out.append("&#%d;" % code)  # a surrogate pair becomes one character reference
        elif code < 0x20 and ch not in "\t\n\r":
            raise ValueError("KXmlSerializer refuses control characters")
        else:
            out.append(ch)
    return "".join(out)


def android_xml_payload(pairs: Sequence[Tuple[str, str]]) -> str:
    """DataFormatUtil.makeXMLString(pairs, "payload", "UTF-8") in the app."""
    body = "".join(f"<{name}>{_kxml_text(value)}</{name}>" for name, value in pairs)
    return f"<?xml version='1.0' encoding='UTF-8' standalone='yes' ?><payload>{body}</payload>"


DEFAULT_SMSSYNC_KEYS = {
    "secret": "secret", "from": "from", "message": "message",
    "sent_timestamp": "sent_timestamp", "sent_to": "sent_to",
    "message_id": "message_id", "device_id": "device_id",
}


@dataclass
class PendingSMS:
    sender: str
    text: str
    sent_timestamp_ms: int
    message_id: str
    tries: int = 0


class SMSsyncPhone:
    """SMSsync v3.1.1 pointed at one Sync URL.

    `sync_url` is as the user typed it, `user:pass@` and a query string included.  `fmt`
    is "form" (the default), "json" or "xml"; `keys` renames fields like the app's
    settings; `results_api` is the "Message Results API" setting (default off).
    """

    def __init__(self, sync_url: str, secret: str = "", *, fmt: str = "form", method: str = "POST",
                 keys: Optional[Dict[str, str]] = None, device_id: str = "", sent_to: str = "",
                 version: str = "3.1.1", results_api: bool = False, retries: int = 3,
                 timeout: float = 30.0) -> None:
        if fmt not in ("form", "json", "xml"):
            raise ValueError(fmt)
        self.sync_url = sync_url
        self.secret = secret
        self.fmt = fmt
        self.method = method
        self.keys = dict(DEFAULT_SMSSYNC_KEYS, **(keys or {}))
        self.device_id = device_id
        self.sent_to = sent_to
        self.version = version
        self.results_api = results_api
        self.retries = retries
        self.timeout = timeout
        self.pending: List[PendingSMS] = []  # failed posts, kept for the next sync
        self.given_up: List[PendingSMS] = []
        self.outbox: List[dict] = []  # messages the phone would now send as SMS

    # -- request shapes ----------------------------------------------------------------

    def _base_headers(self, userinfo: Optional[str], host: str, port: int) -> List[Tuple[str, str]]:
        headers = [("Host", host if port == 80 else f"{host}:{port}")]
        if userinfo is not None:
            # java.net.URI.getUserInfo() is percent-decoded; String.getBytes() is UTF-8.
            token = base64.b64encode(unquote(userinfo).encode("utf-8")).decode("ascii")
            headers.append(("Authorization", f"Basic {token}"))
        headers += [("User-Agent", f"SMSSync-Android/v{self.version}"),
                    ("Connection", "Keep-Alive"), ("Accept-Encoding", "gzip")]
        return headers

    def _request(self, method: str, url: str, body: Optional[bytes], content_type: Optional[str]) -> WireRequest:
        scheme, host, port, target, userinfo = _split_url(url)
        # OkHttp canonicalises the query: these characters get percent-encoded there.
        target = "".join("%%%02X" % ord(c) if c in " \"'<>" else c for c in target)
        headers = self._base_headers(userinfo, host, port)
        if body is not None:
            headers += [("Content-Type", content_type or ""), ("Content-Length", str(len(body)))]
        return WireRequest(method, scheme, host, port, target, tuple(headers), body or b"")

    def _body(self, pairs: Sequence[Tuple[str, Optional[str]]]) -> Tuple[bytes, str]:
        named = [(self.keys[k], v) for k, v in pairs]
        if self.fmt == "form":
            text = "&".join(f"{okhttp_form_encode(k)}={okhttp_form_encode(v or '')}" for k, v in named)
            return text.encode("ascii"), "application/x-www-form-urlencoded"
        if self.fmt == "json":
            return android_json_object(named).encode("utf-8"), "application/json; charset=UTF-8"
        # The app's XML MediaType is a copy of the JSON one.
        xml = android_xml_payload([(k, v or "") for k, v in named])
        return xml.encode("utf-8"), "application/json; charset=UTF-8"

    def incoming_request(self, sender: str, text: str, *, sent_timestamp_ms: int = 1_700_000_000_000,
                         message_id: Optional[str] = None) -> WireRequest:
        body, ctype = self._body([
            ("secret", self.secret), ("from", sender), ("message", text),
            ("sent_timestamp", str(sent_timestamp_ms)), ("sent_to", self.sent_to),
            ("message_id", message_id or str(_uuid.uuid4())), ("device_id", self.device_id),
        ])
        return self._request(self.method, self.sync_url, body, ctype)

    def test_request(self) -> WireRequest:
        body, ctype = self._body([("secret", self.secret), ("from", "+000000000000"),
                                  ("message", "Test Message From SMSSync Integration")])
        return self._request(self.method, self.sync_url, body, ctype)

    def _task_url(self, task: str, with_secret: bool) -> str:
        query = f"task={task}"
        if with_secret and self.secret:
            query += "&secret=" + java_url_encode(self.secret)
        return self.sync_url + "?" + query  # plain concatenation, as the app does

    def send_poll_request(self) -> WireRequest:
        return self._request("GET", self._task_url("send", True), None, None)

    def sent_ack_request(self, uuids: Sequence[str]) -> Optional[WireRequest]:
        if not uuids:
            return None  # the app does not post an empty list
        body = ('{"queued_messages":[' + ",".join(gson_string(u) for u in uuids) + "]}").encode("utf-8")
        return self._request("POST", self._task_url("sent", False), body, "application/json; charset=UTF-8")

    def result_query_request(self) -> WireRequest:
        return self._request("GET", self._task_url("result", True), None, None)

    def result_report_request(self, results: Sequence[Dict[str, Any]]) -> WireRequest:
        order = ("uuid", "sent_result_code", "sent_result_message", "delivered_result_code",
                 "delivered_result_message", "sent_timestamp", "delivered_timestamp")
        entries = []
        for result in results:
            items = []
            for key in order:
                value = result.get(key)
                if value is None:
                    continue
                rendered = str(value) if isinstance(value, int) else gson_string(str(value))
                items.append(gson_string(key) + ":" + rendered)
            entries.append("{" + ",".join(items) + "}")
        inner = "[" + ",".join(entries) + "]"
        # The array is serialised first, then put into the body as a string.
        body = ('{"message_result":' + gson_string(inner) + "}").encode("utf-8")
        return self._request("POST", self._task_url("result", True), body, "application/json; charset=UTF-8")

    # -- the app's verdicts on answers -------------------------------------------------

    @staticmethod
    def _payload(reply: Reply) -> Optional[dict]:
        try:
            data = reply.json()
        except (ValueError, UnicodeDecodeError):
            return None
        if not isinstance(data, dict) or not isinstance(data.get("payload"), dict):
            return None
        return data["payload"]

    @staticmethod
    def _gson_true(value: Any) -> bool:
        # Gson reads a boolean from true or from the string "true"; a number fails.
        return value is True or (isinstance(value, str) and value.lower() == "true")

    @staticmethod
    def _gson_messages(payload: dict) -> Optional[List[dict]]:
        """payload.messages as Gson would map them, or None if the answer fails to parse."""
        messages = payload.get("messages")
        if messages is None:
            return []
        if not isinstance(messages, list):
            return None
        for m in messages:
            if not isinstance(m, dict):
                return None
            if "timestamp" in m or "delivered_timestamp" in m:
                return None  # Java Date fields: Gson fails on the whole answer
            for key in ("retries", "sent_result_code", "delivery_result_code"):
                if key in m and (isinstance(m[key], bool) or not isinstance(m[key], int)):
                    return None
        return messages

    def accepts_incoming(self, reply: Reply) -> bool:
        if reply.status not in (200, 201):
            return False
        payload = self._payload(reply)
        return payload is not None and self._gson_true(payload.get("success"))

    def test_passes(self, reply: Reply) -> bool:
        return reply.status == 200 and self._payload(reply) is not None

    # -- the app's behaviour ----------------------------------------------------------

    def receive_sms(self, sender: str, text: str, *, sent_timestamp_ms: int = 1_700_000_000_000,
                    message_id: Optional[str] = None) -> bool:
        """An SMS arrives: post it; on failure keep it for the next sync.  True if synced."""
        sms = PendingSMS(sender, text, sent_timestamp_ms, message_id or str(_uuid.uuid4()))
        return self._post(sms)

    def _post(self, sms: PendingSMS) -> bool:
        sms.tries += 1
        try:
            reply = send(self.incoming_request(sms.sender, sms.text, sent_timestamp_ms=sms.sent_timestamp_ms,
                                               message_id=sms.message_id), self.timeout)
            ok = self.accepts_incoming(reply)
        except OSError:
            ok, reply = False, None
        if ok:
            payload = self._payload(reply)  # type: ignore[arg-type]
            replies = self._gson_messages(payload) if payload else []
            self.outbox.extend(replies or [])
            return True
        if sms.tries > self.retries:
            self.given_up.append(sms)
        else:
            self.pending.append(sms)
        return False

    def sync_pending(self) -> int:
        """Auto-sync: post every stored SMS again (same message_id).  Returns how many went."""
        waiting, self.pending = self.pending, []
        return sum(1 for sms in waiting if self._post(sms))

    def test_integration(self) -> bool:
        try:
            return self.test_passes(send(self.test_request(), self.timeout))
        except OSError:
            return False

    def check_tasks(self) -> List[dict]:
        """One task check: GET ?task=send, then (Results API on) POST ?task=sent.

        Returns the messages the phone now sends as SMS (also appended to `outbox`).
        """
        try:
            reply = send(self.send_poll_request(), self.timeout)
        except OSError:
            return []
        payload = self._payload(reply)  # the status is not looked at
        if payload is None or payload.get("task") != "send":
            return []
        if self.secret and payload.get("secret") != self.secret:
            return []
        messages = self._gson_messages(payload)
        if not messages:
            return []
        if self.results_api:
            request = self.sent_ack_request([str(m.get("uuid")) for m in messages])
            try:
                ack = send(request, self.timeout)  # type: ignore[arg-type]
            except OSError:
                return []
            if ack.status != 200:
                return []
            try:
                confirmed = ack.json().get("message_uuids")
            except (ValueError, AttributeError, UnicodeDecodeError):
                return []
            if not isinstance(confirmed, list):
                return []
            messages = [m for m in messages if m.get("uuid") in confirmed]
        self.outbox.extend(messages)
        return messages

    def report_results(self, results_for: Dict[str, Dict[str, Any]]) -> Tuple[Reply, Optional[Reply]]:
        """GET ?task=result, then always POST ?task=result with the entries asked for."""
        query = send(self.result_query_request(), self.timeout)
        wanted: List[str] = []
        if query.status == 200:
            try:
                listed = query.json().get("message_uuids")
                wanted = [u for u in listed if isinstance(u, str)] if isinstance(listed, list) else []
            except (ValueError, AttributeError, UnicodeDecodeError):
                wanted = []
        entries = [dict(results_for[u], uuid=u) for u in wanted if u in results_for]
        return query, send(self.result_report_request(entries), self.timeout)


# --------------------------------------------------------------------------------------
# SMS Gateway app (medic/CHT gateway 1.8.x; multiOTP fork: same client code)
# --------------------------------------------------------------------------------------


def android_json(value: Any) -> str:
    """Any JSON value as Android's org.json writes it (objects keep insertion order)."""
    if isinstance(value, dict):
        return "{" + ",".join(android_json_string(str(k)) + ":" + android_json(v)
                              for k, v in value.items() if v is not None) + "}"
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(android_json(v) for v in value) + "]"
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, int):
        return str(value)
    return android_json_string(str(value))


def android_uri_encode(text: str) -> str:
    """android.net.Uri.encode: UTF-8, everything but letters, digits and _-!.~'()* encoded."""
    return quote(text, safe="_-!.~'()*")


_MEDIC_AUTH_URL = __import__("re").compile(r"(.+)://([^:]*):(.*)@(.*)")


@dataclass
class _WtMessage:  # "webapp-terminating": an SMS the phone received
    id: str
    sender: str
    content: str
    sms_sent: int
    sms_received: int


@dataclass
class _WoMessage:  # "webapp-originating": an SMS the server gave the phone to send
    id: str
    to: str
    content: str
    status: str = "UNSENT"
    reason: Optional[str] = None


class MedicPhone:
    """The SMS Gateway app pointed at `url` (as typed in its settings, user:pass@ included)."""

    MAX_WT_MESSAGES = 10
    MAX_STATUS_UPDATES = 20

    def __init__(self, url: str, *, version: str = "1.8.0", app_id: str = "medic.gateway.alert.generic",
                 timeout: float = 30.0) -> None:
        self.url = url
        self.version = version
        self.app_id = app_id
        self.timeout = timeout
        self.waiting: List[_WtMessage] = []  # received, not yet forwarded
        self.forwarded: List[_WtMessage] = []
        self.updates: List[Tuple[str, str, Optional[str]]] = []  # (id, status, reason) to forward
        self.store: Dict[str, _WoMessage] = {}  # SMS to send, by id
        self.last_error: Optional[str] = None

    # -- request shapes ----------------------------------------------------------------

    def _effective_url(self) -> str:
        # SimpleJsonClient2.uriEncodeAuth: the password (up to the last `@`) is
        # Uri.encode'd and never decoded again.
        m = _MEDIC_AUTH_URL.fullmatch(self.url)
        if not m:
            return self.url
        return f"{m.group(1)}://{m.group(2)}:{android_uri_encode(m.group(3))}@{m.group(4)}"

    def _request(self, method: str, body: Optional[bytes]) -> WireRequest:
        scheme, host, port, target, userinfo = _split_url(self._effective_url())
        headers = [
            ("User-Agent", f"Dalvik/2.1.0 (Linux; U; Android 11; Pixel 4 Build/RQ3A.211001.001) "
                           f"{self.app_id}/{self.version}"),
        ]
        if userinfo is not None:
            token = base64.b64encode(userinfo.encode("latin-1", "replace")).decode("ascii")
            headers.append(("Authorization", f"Basic {token}"))
        if method == "POST":
            headers += [("Accept", "application/json"), ("Accept-Charset", "utf-8"),
                        ("Cache-Control", "no-cache")]
        headers += [("Content-Type", "application/json"),
                    ("Host", host if port == 80 else f"{host}:{port}"),
                    ("Connection", "Keep-Alive"), ("Accept-Encoding", "gzip")]
        if body is not None:
            headers.append(("Content-Length", str(len(body))))
        return WireRequest(method, scheme, host, port, target, tuple(headers), body or b"")

    def settings_check_request(self) -> WireRequest:
        return self._request("GET", None)

    def poll_request(self, messages: Sequence[Dict[str, Any]], updates: Sequence[Dict[str, Any]]) -> WireRequest:
        body = android_json({"messages": list(messages), "updates": list(updates)}).encode("utf-8")
        return self._request("POST", body)

    # -- the app's behaviour ----------------------------------------------------------

    def settings_check(self) -> Tuple[bool, str]:
        """WebappUrlVerifier: (ok, what the settings screen says)."""
        try:
            reply = send(self.settings_check_request(), self.timeout)
        except OSError:
            return False, "server not found"
        data: Any = None
        try:
            data = reply.json()
        except (ValueError, UnicodeDecodeError):
            data = None
        if isinstance(data, dict) and reply.status < 400:
            flag = data.get("medic-gateway")
            if flag is True or (isinstance(flag, str) and flag.lower() == "true"):
                return True, "ok"
            return False, "app not found"
        if reply.status == 401:
            return False, "unauthorised"
        return False, "app not found"

    def receive_sms(self, sender: str, content: str, *, sms_sent: int = 1_700_000_000_000,
                    sms_received: int = 1_700_000_001_000, id: Optional[str] = None) -> str:
        msg = _WtMessage(id or str(_uuid.uuid4()), sender, content, sms_sent, sms_received)
        self.waiting.append(msg)
        return msg.id

    def set_status(self, msg_id: str, status: str, reason: Optional[str] = None) -> None:
        """The phone's own progress on an SMS it sends (SmsSender, delivery reports, Retry)."""
        wo = self.store[msg_id]
        wo.status, wo.reason = status, reason
        self.updates.append((msg_id, status, reason if status == "FAILED" else None))

    def poll(self) -> Tuple[Optional[Reply], bool]:
        """One WebappPoller.pollWebapp(): (the reply or None, whether a batch was full)."""
        batch = self.waiting[: self.MAX_WT_MESSAGES]
        updates = self.updates[: self.MAX_STATUS_UPDATES]
        messages = [{"id": m.id, "from": m.sender, "content": m.content, "sms_sent": m.sms_sent,
                     "sms_received": m.sms_received} for m in batch]
        upd = [{"id": i, "status": st, "reason": r} if st == "FAILED" else {"id": i, "status": st}
               for i, st, r in updates]
        try:
            reply = send(self.poll_request(messages, upd), self.timeout)
        except OSError as e:
            self.last_error = str(e)
            return None, False
        try:
            data = reply.json()
        except (ValueError, UnicodeDecodeError):
            data = None
        if not (200 <= reply.status < 300) or not isinstance(data, dict):
            self.last_error = f"{reply.status}: " + (str(data.get("message")) if isinstance(data, dict)
                                                     else reply.body[:80].decode("utf-8", "replace"))
            return reply, False
        # Marked forwarded before the answer's messages are read.
        for m in batch:
            self.waiting.remove(m)
            self.forwarded.append(m)
        del self.updates[: len(updates)]
        new = data.get("messages")
        if isinstance(new, list):
            for item in new:
                if not isinstance(item, dict) or not all(k in item for k in ("id", "to", "content")):
                    continue
                msg_id = str(item["id"])
                if msg_id in self.store:
                    # Db.store() hits the primary key: "touch" re-reports the status.
                    wo = self.store[msg_id]
                    self.updates.append((msg_id, wo.status, wo.reason if wo.status == "FAILED" else None))
                    continue
                to = str(item["to"]).replace("-", "").replace(" ", "")
                self.store[msg_id] = _WoMessage(msg_id, to, str(item["content"]))
                self.updates.append((msg_id, "UNSENT", None))
        full = len(batch) == self.MAX_WT_MESSAGES or len(updates) == self.MAX_STATUS_UPDATES
        return reply, full


# --------------------------------------------------------------------------------------
# SMS Gateway for Android (capcom6), Local Server mode, v1.68.0
# --------------------------------------------------------------------------------------


def java_string_hash(text: str) -> int:
    """java.lang.String.hashCode(): a signed 32-bit number."""
    h = 0
    data = text.encode("utf-16-be")
    for i in range(0, len(data), 2):
        h = (31 * h + int.from_bytes(data[i:i + 2], "big")) & 0xFFFFFFFF
    return h - (1 << 32) if h >= (1 << 31) else h


_KTOR_DATE = __import__("re").compile(
    r"(\d{4})-(\d{2})-(\d{2})T(\d{2}):(\d{2}):(\d{2})(?:\.(\d{3}))?(Z|[+-]\d{2}:\d{2})")


def _ktor_date(text: str) -> Optional[int]:
    """helpers/DateTimeParser: yyyy-MM-dd'T'HH:mm:ss[.SSS]XXX, the offset required."""
    m = _KTOR_DATE.fullmatch(text)
    if not m:
        return None
    y, mo, d, hh, mi, ss, frac, off = m.groups()
    try:
        tz = _dt.timezone.utc if off == "Z" else _dt.timezone(
            (1 if off[0] == "+" else -1) * _dt.timedelta(hours=int(off[1:3]), minutes=int(off[4:6])))
        moment = _dt.datetime(int(y), int(mo), int(d), int(hh), int(mi), int(ss), int(frac or 0) * 1000, tzinfo=tz)
    except ValueError:
        return None
    return int((moment - _dt.datetime(1970, 1, 1, tzinfo=_dt.timezone.utc)) / _dt.timedelta(milliseconds=1))


@dataclass
class GateRow:
    """One row of the app's incoming_messages table."""

    id: str
    sender: str
    text: str
    created_ms: int
    type: str = "SMS"
    recipient: Optional[str] = None
    sim_number: Optional[int] = 1


@dataclass
class GateMessage:
    id: str
    phone_numbers: List[str]
    text: str
    state: str = "Pending"
    errors: Dict[str, Optional[str]] = field(default_factory=dict)
    states: Dict[str, int] = field(default_factory=dict)
    sim_number: Optional[int] = None
    with_delivery_report: bool = True
    skip_validation: bool = False


class FakeSMSGate:
    """The app's local server: `handle()` answers one request like the app does.

    `serve()` puts it on 127.0.0.1 in a thread (a real port); `handle()` alone serves
    in-process tests.  `silent = True` makes the server read requests and never answer;
    `now_ms` is the phone's clock (the inbox's default `to`).
    """

    def __init__(self, user: str = "sms", password: str = "Zx8_q!2p", *, version: str = "1.68.0",
                 tz_minutes: int = 7 * 60, now_ms: int = 1_775_000_000_000, legacy_repeat: bool = False,
                 device_id: str = "dev0ZqQ7") -> None:
        self.user, self.password = user, password
        self.version = version
        self.tz = _dt.timezone(_dt.timedelta(minutes=tz_minutes))
        self.now_ms = now_ms
        self.legacy_repeat = legacy_repeat  # before v1.58.0: a repeated id got 202, ignored
        self.device_id = device_id
        self.messages: Dict[str, GateMessage] = {}
        self.rows: List[GateRow] = []
        self.requests: List[Tuple[str, str, Dict[str, str], bytes]] = []
        self.health_status = "pass"
        self.silent = False
        self._release = threading.Event()
        self._lock = threading.Lock()
        self._httpd: Optional[http.server.ThreadingHTTPServer] = None
        self.port: Optional[int] = None

    # -- the phone's side ------------------------------------------------------------

    def receive(self, sender: str, text: str, created_ms: int, *, id: Optional[str] = None,
                type: str = "SMS", sim: int = 1) -> GateRow:
        """An SMS arrives (v1.63+ ids: text: + a Java hash; pass `id` to force one)."""
        if id is None:
            id = "text:%d" % java_string_hash(f"{sender}{created_ms}{sim}{text}")
        row = GateRow(id, sender, text, created_ms, type, None, sim)
        with self._lock:
            self.rows = [r for r in self.rows if r.id != id] + [row]  # the id is the key
        return row

    def set_state(self, msg_id: str, state: str, error: Optional[str] = None) -> None:
        with self._lock:
            msg = self.messages[msg_id]
            msg.state = state
            msg.states[state] = self.now_ms
            for number in msg.phone_numbers:
                msg.errors[number] = error

    # -- HTTP ------------------------------------------------------------------------

    def _date(self, ms: int) -> str:
        moment = _dt.datetime(1970, 1, 1, tzinfo=_dt.timezone.utc) + _dt.timedelta(milliseconds=ms)
        local = moment.astimezone(self.tz)
        off = local.utcoffset() or _dt.timedelta(0)
        minutes = int(off.total_seconds() // 60)
        sign = "+" if minutes >= 0 else "-"
        return (f"{local:%Y-%m-%dT%H:%M:%S}.{local.microsecond // 1000:03d}"
                f"{sign}{abs(minutes) // 60:02d}:{abs(minutes) % 60:02d}")

    @staticmethod
    def _json(status: int, value: Any, extra: Optional[Dict[str, str]] = None) -> Tuple[int, Dict[str, str], bytes]:
        headers = {"Content-Type": "application/json; charset=UTF-8"}
        headers.update(extra or {})
        return status, headers, json.dumps(value, ensure_ascii=False).encode("utf-8")

    def _authorised(self, headers: Dict[str, str]) -> bool:
        value = {k.lower(): v for k, v in headers.items()}.get("authorization", "")
        scheme, _, token = value.partition(" ")
        if scheme.lower() != "basic":
            return False
        try:
            user, _, password = base64.b64decode(token.strip(), validate=True).decode("utf-8").partition(":")
        except (ValueError, UnicodeDecodeError):
            return False
        return (user, password) == (self.user, self.password)

    def _message_json(self, msg: GateMessage) -> dict:
        recipients = []
        for number in msg.phone_numbers:
            item = {"phoneNumber": number, "state": msg.state}
            if msg.errors.get(number):
                item["error"] = msg.errors[number]
            recipients.append(item)
        return {"id": msg.id, "deviceId": self.device_id, "state": msg.state, "isHashed": False,
                "isEncrypted": False, "textMessage": {"text": msg.text}, "recipients": recipients,
                "states": {k: self._date(v) for k, v in msg.states.items()}}

    def handle(self, method: str, target: str, headers: Dict[str, str], body: bytes) -> Tuple[int, Dict[str, str], bytes]:
        from urllib.parse import parse_qsl

        with self._lock:
            self.requests.append((method, target, dict(headers), body))
        path, _, raw_query = target.partition("?")
        # Ktor: `+` in a query value is a space.
        query = dict(parse_qsl(raw_query, keep_blank_values=True))
        if path == "/health" and method == "GET":
            failing = self.health_status == "fail"
            return self._json(500 if failing else 200, {
                "status": self.health_status, "version": self.version, "releaseId": 1,
                "checks": {"battery:level": {"status": "fail" if failing else "pass", "observedValue": 7 if failing else 80,
                                             "observedUnit": "percent", "description": "Battery level in percent"},
                           "connection:status": {"status": "pass", "observedValue": 1, "observedUnit": "boolean",
                                                 "description": "Internet connection status"}}})
        if not self._authorised(headers):
            return 401, {"WWW-Authenticate": 'Basic realm="Access to SMS Gateway", charset="UTF-8"',
                         "Content-Length": "0"}, b""
        if path == "/" and method == "GET":
            return self._json(200, {"status": "ok", "model": "Pixel 4"})
        if path in ("/message", "/messages") and method == "POST":
            return self._post_message(body, query)
        for prefix in ("/message/", "/messages/"):
            if path.startswith(prefix) and method == "GET":
                msg_id = unquote(path[len(prefix):])
                with self._lock:
                    msg = self.messages.get(msg_id)
                    if msg is None:
                        return 404, {"Content-Length": "0"}, b""
                    return self._json(200, self._message_json(msg))
        if path == "/inbox" and method == "GET":
            return self._inbox(query)
        return 404, {"Content-Length": "0"}, b""

    def _post_message(self, body: bytes, query: Dict[str, str]) -> Tuple[int, Dict[str, str], bytes]:
        try:
            data = json.loads(body.decode("utf-8"))
        except (ValueError, UnicodeDecodeError):
            return self._json(400, {"message": "Failed to convert request body"})
        if not isinstance(data, dict):
            return self._json(400, {"message": "Failed to convert request body"})
        kinds = [k for k in ("textMessage", "dataMessage", "message") if data.get(k) is not None]
        if not kinds:
            return self._json(400, {"message": "Must specify exactly one of: textMessage, dataMessage, or message"})
        if len(kinds) > 1:
            return self._json(400, {"message": "Cannot specify multiple message types simultaneously"})
        text = data["textMessage"].get("text", "") if kinds[0] == "textMessage" else str(data.get("message") or "")
        if text == "":
            return self._json(400, {"message": "Text message is empty"})
        if "phoneNumbers" not in data:
            return self._json(500, {"message": "Parameter specified as non-null is null: phoneNumbers"})
        numbers = data["phoneNumbers"]
        if not numbers:
            return self._json(400, {"message": "phoneNumbers is empty"})
        sim = data.get("simNumber")
        if sim is not None and sim < 1:
            return self._json(400, {"message": "simNumber must be >= 1"})
        msg_id = data.get("id") or "".join(__import__("random").choice("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-") for _ in range(21))
        with self._lock:
            if msg_id in self.messages:
                if self.legacy_repeat:
                    return self._json(202, {"id": msg_id, "state": "Pending", "isHashed": False, "isEncrypted": False,
                                            "recipients": [{"phoneNumber": n, "state": "Pending"} for n in numbers],
                                            "states": {"Pending": self._date(self.now_ms)}})
                return self._json(409, {"message": "Message with the same ID already exists"})
            msg = GateMessage(msg_id, list(numbers), text, states={"Pending": self.now_ms}, sim_number=sim,
                              with_delivery_report=data.get("withDeliveryReport", True) is not False,
                              skip_validation=query.get("skipPhoneValidation") == "true")
            self.messages[msg_id] = msg
            answer = self._message_json(msg)
        answer.pop("textMessage", None)
        return self._json(202, answer)

    def _inbox(self, query: Dict[str, str]) -> Tuple[int, Dict[str, str], bytes]:
        kind = query.get("type") or None
        if kind is not None and kind not in ("SMS", "DATA_SMS", "MMS", "MMS_DOWNLOADED"):
            return self._json(400, {"message": "Invalid type"})
        try:
            limit = int(query.get("limit", "50"))
        except ValueError:
            limit = 50
        try:
            offset = int(query.get("offset", "0"))
        except ValueError:
            offset = 0
        if not 1 <= limit <= 500:
            return self._json(400, {"message": "limit must be between 1 and 500"})
        if offset < 0:
            return self._json(400, {"message": "offset must be >= 0"})
        start, end = 0, self.now_ms
        if "from" in query:
            parsed = _ktor_date(query["from"])
            if parsed is None:
                return self._json(400, {"message": "Invalid from datetime"})
            start = parsed
        if "to" in query:
            parsed = _ktor_date(query["to"])
            if parsed is None:
                return self._json(400, {"message": "Invalid to datetime"})
            end = parsed
        if "deviceId" in query and query["deviceId"] != self.device_id:
            return self._json(400, {"message": "Invalid device ID"})
        if start > end:
            return self._json(400, {"message": "Start date cannot be after end date"})
        with self._lock:
            rows = [r for r in self.rows if (kind is None or r.type == kind) and start <= r.created_ms <= end]
        rows.sort(key=lambda r: (r.created_ms, r.id), reverse=True)
        page = rows[offset:offset + limit]
        items = []
        for r in page:
            item = {"id": r.id, "type": r.type, "sender": r.sender, "simNumber": r.sim_number,
                    "contentPreview": r.text, "createdAt": self._date(r.created_ms), "attachments": []}
            if r.recipient is not None:
                item["recipient"] = r.recipient
            items.append(item)
        return self._json(200, items, {"X-Total-Count": str(len(rows))})

    # -- on a real port --------------------------------------------------------------

    def serve(self) -> "FakeSMSGate":
        fake = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _any(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                if fake.silent:
                    fake._release.wait(60)  # read, never answer (the app killed mid-request)
                    self.close_connection = True
                    return
                status, headers, answer = fake.handle(self.command, self.path, dict(self.headers), body)
                self.send_response(status)
                for name, value in headers.items():
                    if name.lower() != "content-length":
                        self.send_header(name, value)
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            do_GET = do_POST = do_DELETE = _any

            def log_message(self, *args: object) -> None:
                pass

        self._httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self.port = self._httpd.server_address[1]
        threading.Thread(target=self._httpd.serve_forever, args=(0.05,), daemon=True).start()
        return self

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def close(self) -> None:
        self._release.set()
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None
