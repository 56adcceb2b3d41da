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
import hashlib
import http.client
import json
import socket
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
