"""Fakes that behave like a GoIP, for tests of websmsd (black-box ones included).

* `FakeGoIPLine`: one GoIP line speaking the "SMS server" protocol over real UDP on
  127.0.0.1.  It sends keepalives, incoming SMS (RECEIVE), delivery reports (DELIVER)
  and other notices, resending each every `resend_interval` seconds (at most
  `max_resends` times, like the document says) until the server answers it; and it
  answers the server's send dialogue (MSG / PASSWORD / SEND / DONE) and USSD requests.
* `FakeGoIPWeb`: a GoIP's web API (send.html, send_status.xml, sms_info.html) on
  127.0.0.1.

Both run in their own thread and need no reactor.  They are written from the protocol
notes, not from websmsd's code, so a test checks websmsd against an independent peer.
"""

from __future__ import annotations

import base64
import html
import http.server
import itertools
import select
import socket
import threading
import time
from typing import Any, Callable, Dict, List, Optional, Tuple
from urllib.parse import parse_qs, urlsplit

Address = Tuple[str, int]


class FakeGoIPLine:
    """One GoIP line on 127.0.0.1 talking to the SMS server at `server`.

    keepalive_interval: send keepalives on its own every so many seconds (None: only
        when `keepalive()` is called).
    resend_interval, max_resends: for RECEIVE / DELIVER / notices not yet answered.
    session_password: what `PASSWORD <sendid> <pw>` must carry (default: `password`).
    waits: how many times a SEND of a new number is answered WAIT before OK/ERROR.
    refuse_sessions: answer this many MSG with `ERROR <sendid> too many request`.
    send_errors: number -> error id: SEND to that number ends in
        `ERROR <sendid> <telid> errorstatus:<id>`.
    ok_with_sms_no: False gives the older document's `OK <sendid> <telid>`.
    length_unit: how `<length>` of MSG is checked ("utf8" or "utf16"); a mismatch is
        recorded in `length_mismatches` (the SMS is still taken).
    ussd_answers: code -> answer text; other codes get `USSDERROR <sendid> unknown code`.
    drop: called with every datagram from the server; True means "lost on the way".
    """

    def __init__(
        self,
        server: Address,
        goip_id: str,
        password: str,
        *,
        keepalive_interval: Optional[float] = None,
        resend_interval: float = 3.0,
        max_resends: int = 3,
        num: str = "",
        signal: int = 25,
        gsm_status: str = "LOGIN",
        session_password: Optional[str] = None,
        waits: int = 1,
        refuse_sessions: int = 0,
        send_errors: Optional[Dict[str, int]] = None,
        ok_with_sms_no: bool = True,
        sms_no_start: int = 100,
        length_unit: str = "utf8",
        ussd_answers: Optional[Dict[str, str]] = None,
        drop: Optional[Callable[[bytes], bool]] = None,
    ) -> None:
        self.server = server
        self.goip_id = goip_id
        self.password = password
        self.keepalive_interval = keepalive_interval
        self.resend_interval = resend_interval
        self.max_resends = max_resends
        self.num = num
        self.signal = signal
        self.gsm_status = gsm_status
        self.session_password = password if session_password is None else session_password
        self.waits = waits
        self.refuse_sessions = refuse_sessions
        self.send_errors = dict(send_errors or {})
        self.ok_with_sms_no = ok_with_sms_no
        self.length_unit = length_unit
        self.ussd_answers = dict(ussd_answers or {})
        self.drop = drop

        self.from_server: List[bytes] = []  # every datagram received (dropped ones too)
        self.keepalive_acks: List[bytes] = []
        self.acks: Dict[Tuple[str, str], List[bytes]] = {}  # (KIND, recvid) -> answers
        self.sent_sms: List[Dict[str, Any]] = []  # what this "GoIP" sent to the network
        self.length_mismatches: List[Tuple[int, int, int]] = []  # (sendid, said, expected)
        self.ussd_requests: List[str] = []
        self.sessions: Dict[int, Dict[str, Any]] = {}
        self.closed_sessions: List[int] = []

        self._count = 0
        self._recvid = itertools.count(int(time.time()))
        self._sms_no = itertools.count(sms_no_start)
        self._pending: Dict[Tuple[str, str], Dict[str, Any]] = {}
        self._cond = threading.Condition()
        self._stop = False
        self._next_keepalive = time.monotonic() if keepalive_interval else None
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self._thread = threading.Thread(target=self._run, name=f"fake-goip-{goip_id}", daemon=True)
        self._thread.start()

    # -- plumbing -----------------------------------------------------------------------

    @property
    def address(self) -> Address:
        return self.sock.getsockname()

    def __enter__(self) -> "FakeGoIPLine":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        with self._cond:
            self._stop = True
            self._cond.notify_all()
        self._thread.join(5)
        self.sock.close()

    def _send(self, text: str) -> None:
        self.sock.sendto(text.encode("utf-8"), self.server)

    def _run(self) -> None:
        while True:
            with self._cond:
                if self._stop:
                    return
                now = time.monotonic()
                self._fire_timers(now)
                wake = [p["next"] for p in self._pending.values()]
                if self._next_keepalive is not None:
                    wake.append(self._next_keepalive)
                timeout = min([0.2] + [max(0.0, w - now) for w in wake])
            try:
                ready, _, _ = select.select([self.sock], [], [], timeout)
            except (OSError, ValueError):
                return
            if ready:
                try:
                    data, addr = self.sock.recvfrom(65535)
                except OSError:
                    continue
                with self._cond:
                    self.from_server.append(data)
                    if self.drop is None or not self.drop(data):
                        self._handle(data.decode("utf-8", "replace"))
                    self._cond.notify_all()

    def _fire_timers(self, now: float) -> None:
        if self._next_keepalive is not None and now >= self._next_keepalive:
            self._send_keepalive()
            self._next_keepalive = now + (self.keepalive_interval or 30.0)
        for key, p in list(self._pending.items()):
            if now < p["next"]:
                continue
            if p["left"] <= 0:
                del self._pending[key]  # the document: at most 3 resends, then given up
                self._cond.notify_all()
                continue
            p["left"] -= 1
            p["sends"] += 1
            p["next"] = now + self.resend_interval
            self._send(p["packet"])

    def wait_for(self, predicate: Callable[[], Any], timeout: float = 10.0) -> Any:
        """Wait until predicate() is true (checked under the lock); its value or None."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                value = predicate()
                if value:
                    return value
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self._cond.wait(min(left, 0.2))

    # -- what a GoIP line sends ---------------------------------------------------------

    def _send_keepalive(self) -> int:
        self._count += 1
        self._send(
            f"req:{self._count};id:{self.goip_id};pass:{self.password};num:{self.num};"
            f"signal:{self.signal};gsm_status:{self.gsm_status};voip_status:LOGOUT;"
            "voip_state:IDLE;remain_time:-1;imei:867495023958030;imsi:260060172091324;"
            "iccid:89480611000720913242;pro:POL;idle:11;disable_status:0;SMS_LOGIN:N;"
            "SMB_LOGIN:;CELLINFO:LAC:7E5,CELL ID:5E5B;CGATT:Y;"
        )
        return self._count

    def keepalive(self) -> int:
        """Send one keepalive now; its count."""
        with self._cond:
            return self._send_keepalive()

    def _notify(self, kind: str, body: str, recvid: Optional[str]) -> str:
        recvid = recvid if recvid is not None else str(next(self._recvid))
        packet = f"{kind}:{recvid};id:{self.goip_id};password:{self.password};{body}"
        with self._cond:
            self._pending[(kind, recvid)] = {
                "packet": packet, "left": self.max_resends, "sends": 1,
                "next": time.monotonic() + self.resend_interval,
            }
            self._send(packet)
        return recvid

    def sms(self, srcnum: str, text: str, recvid: Optional[str] = None) -> str:
        """An SMS from `srcnum` reaches this line: RECEIVE, resent until answered."""
        return self._notify("RECEIVE", f"srcnum:{srcnum};msg:{text}", recvid)

    def report(self, sms_no: str, state: str = "0", num: str = "", recvid: Optional[str] = None) -> str:
        """A delivery report: DELIVER, resent until answered."""
        return self._notify("DELIVER", f"sms_no:{sms_no};state:{state};num:{num}", recvid)

    def notice(self, kind: str, body: str = "", recvid: Optional[str] = None) -> str:
        """Any other notice, e.g. notice("STATE", "gsm_remain_state:IDLE")."""
        return self._notify(kind, body, recvid)

    def wait_acked(self, kind: str, recvid: str, timeout: float = 10.0) -> bool:
        return bool(self.wait_for(lambda: self.acks.get((kind, recvid)), timeout))

    def sends_of(self, kind: str, recvid: str) -> int:
        """How many times that packet went out so far (1 + resends); 0 when done."""
        with self._cond:
            p = self._pending.get((kind, recvid))
            return p["sends"] if p else 0

    def wait_sent(self, n: int, timeout: float = 10.0) -> List[Dict[str, Any]]:
        self.wait_for(lambda: len(self.sent_sms) >= n, timeout)
        with self._cond:
            return list(self.sent_sms)

    # -- what a GoIP line answers -------------------------------------------------------

    def _handle(self, text: str) -> None:
        if text.startswith(("reg:", "req:")):
            self.keepalive_acks.append(text.encode("utf-8"))
            return
        stripped = text.rstrip("\n")
        words = stripped.split(" ")
        head = words[0]
        if len(words) >= 3 and words[2] in ("OK", "ERROR"):  # RECEIVE <recvid> OK, ...
            key = (head, words[1])
            self.acks.setdefault(key, []).append(text.encode("utf-8"))
            if words[2] == "OK":
                self._pending.pop(key, None)
            return
        if head == "MSG" and len(words) >= 3:
            self._msg(stripped)
        elif head == "PASSWORD" and len(words) == 3:
            self._password(int(words[1]), words[2])
        elif head == "SEND" and len(words) == 4:
            self._send_number(int(words[1]), int(words[2]), words[3])
        elif head == "DONE" and len(words) == 2:
            sendid = int(words[1])
            self.sessions.pop(sendid, None)
            self.closed_sessions.append(sendid)
            self._send(f"DONE {sendid}")
        elif head == "USSD" and len(words) == 4:
            self._ussd(int(words[1]), words[2], words[3])
        elif head == "USSDEXIT" and len(words) == 3:
            self._send(f"USSDEXIT {words[1]}")

    def _msg(self, packet: str) -> None:
        _, sendid_text, length_text, *rest = packet.split(" ", 3)
        sendid = int(sendid_text)
        text = rest[0] if rest else ""
        if self.refuse_sessions > 0:
            self.refuse_sessions -= 1
            self._send(f"ERROR {sendid} too many request")
            return
        expected = (len(text.encode("utf-16-le")) // 2 if self.length_unit == "utf16"
                    else len(text.encode("utf-8")))
        if int(length_text) != expected:
            self.length_mismatches.append((sendid, int(length_text), expected))
        session = self.sessions.setdefault(sendid, {"text": text, "authed": False, "numbers": {}})
        session["text"] = text
        self._send(f"PASSWORD {sendid}")

    def _password(self, sendid: int, password: str) -> None:
        session = self.sessions.get(sendid)
        if session is None:
            self._send(f"ERROR {sendid} no session")
        elif password != self.session_password:
            self._send(f"ERROR {sendid} PASSWORD")
        else:
            session["authed"] = True
            self._send(f"SEND {sendid}")

    def _send_number(self, sendid: int, telid: int, number: str) -> None:
        session = self.sessions.get(sendid)
        if session is None or not session["authed"]:
            self._send(f"ERROR {sendid} no session")
            return
        numbers = session["numbers"]
        state = numbers.get(telid)
        if state is None:
            # First SEND of this number: the SMS goes out (once, whatever follows).
            state = numbers[telid] = {"waits": self.waits, "sms_no": None}
            if number not in self.send_errors:
                state["sms_no"] = next(self._sms_no)
                self.sent_sms.append({
                    "number": number, "text": session["text"], "sms_no": state["sms_no"],
                    "sendid": sendid, "telid": telid,
                })
        if state["waits"] > 0:
            state["waits"] -= 1
            self._send(f"WAIT {sendid} {telid}")
        elif number in self.send_errors:
            self._send(f"ERROR {sendid} {telid} errorstatus:{self.send_errors[number]}")
        elif self.ok_with_sms_no:
            self._send(f"OK {sendid} {telid} {state['sms_no']}")
        else:
            self._send(f"OK {sendid} {telid}")

    def _ussd(self, sendid: int, password: str, code: str) -> None:
        if password != self.session_password:
            self._send(f"ERROR {sendid} PASSWORD")
            return
        self.ussd_requests.append(code)
        answer = self.ussd_answers.get(code)
        if answer is None:
            self._send(f"USSDERROR {sendid} unknown code")
        else:
            self._send(f"USSD {sendid} {answer}")


# ---------------------------------------------------------------------------------------
# The web API
# ---------------------------------------------------------------------------------------


class FakeGoIPWeb:
    """A GoIP's web API on 127.0.0.1, in a thread.

    send.html (GET, u/p in the query), send_status.xml (GET), sms_info.html?type=sms|ussd
    (POST form, HTTP Basic auth).  Each line holds its last job only, like the device;
    a job becomes final after `polls_until_done` reads of send_status.xml.

    answer_form: "space" -> `Sending, L1 Send SMS to 899...; ID:55c489da`,
                 "colon" -> `Sending,L1 Send SMS to:899...; ID:00000e7c`.
    empty_tags: "pair" (`<id2></id2>`) or "self" (`<id2/>`).
    line_errors: line -> text: send.html answers `ERROR,L<n> <text>` (e.g. "GSM logout").
    fail_numbers: number -> error text: the job ends ERRORDONE with that text.
    ussd_answers: code -> answer text (appears in the status's error field).
    """

    def __init__(
        self,
        user: str = "admin",
        password: str = "admin",
        *,
        lines: int = 8,
        answer_form: str = "space",
        empty_tags: str = "pair",
        polls_until_done: int = 1,
        line_errors: Optional[Dict[int, str]] = None,
        fail_numbers: Optional[Dict[str, str]] = None,
        ussd_answers: Optional[Dict[str, str]] = None,
    ) -> None:
        self.user = user
        self.password = password
        self.lines = lines
        self.answer_form = answer_form
        self.empty_tags = empty_tags
        self.polls_until_done = polls_until_done
        self.line_errors = dict(line_errors or {})
        self.fail_numbers = dict(fail_numbers or {})
        self.ussd_answers = dict(ussd_answers or {})
        self.requests: List[Dict[str, Any]] = []
        self.sent: List[Dict[str, Any]] = []  # SMS this "GoIP" sent to the network
        self.jobs: Dict[int, Dict[str, Any]] = {}  # line -> its last job
        self._keys = itertools.count(0x55C489DA)
        self._lock = threading.Lock()
        fake = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _answer(self, status: int, body: str, ctype: str = "text/html") -> None:
                data = body.encode("utf-8")
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _handle(self) -> None:
                parts = urlsplit(self.path)
                query = {k: v[-1] for k, v in parse_qs(parts.query, keep_blank_values=True).items()}
                form: Dict[str, str] = {}
                if self.command == "POST":
                    length = int(self.headers.get("Content-Length") or 0)
                    raw = self.rfile.read(length).decode("utf-8", "replace")
                    form = {k: v[-1] for k, v in parse_qs(raw, keep_blank_values=True).items()}
                basic = fake._basic_ok(self.headers.get("Authorization"))
                with fake._lock:
                    fake.requests.append({
                        "method": self.command, "path": parts.path, "query": query,
                        "form": form, "basic_auth": basic,
                    })
                    status, body, ctype = fake._route(self.command, parts.path, query, form, basic)
                self._answer(status, body, ctype)

            do_GET = _handle
            do_POST = _handle

            def log_message(self, *args: object) -> None:
                return  # keep test output clean

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> "FakeGoIPWeb":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def _basic_ok(self, header: Optional[str]) -> bool:
        if not header or not header.lower().startswith("basic "):
            return False
        try:
            user, _, password = base64.b64decode(header[6:]).decode("utf-8").partition(":")
        except Exception:
            return False
        return (user, password) == (self.user, self.password)

    def _route(self, method: str, path: str, query: Dict[str, str], form: Dict[str, str],
               basic: bool) -> Tuple[int, str, str]:
        query_ok = (query.get("u"), query.get("p")) == (self.user, self.password)
        if path == "/default/en_US/send.html" and method == "GET":
            if not (query_ok or basic):
                return 200, "ERROR,user or password error", "text/html"
            return (200, *self._send_html(query))
        if path == "/default/en_US/send_status.xml" and method == "GET":
            if not (query_ok or basic):
                return 401, "Unauthorized", "text/html"
            return 200, self._status_xml(), "text/xml"
        if path == "/default/en_US/sms_info.html" and method == "POST":
            if not basic:
                return 401, "Unauthorized", "text/html"
            if query.get("type") == "ussd" and form.get("action") == "USSD":
                return 200, self._start_job(form.get("line1", ""), form.get("smskey", ""),
                                            form.get("telnum", ""), None), "text/html"
            if query.get("type") == "sms" and form.get("action") == "SMS":
                return 200, self._start_job(form.get("line", ""), form.get("smskey", ""),
                                            form.get("telnum", ""), form.get("smscontent", "")), "text/html"
            return 200, "<html><body>unknown action</body></html>", "text/html"
        return 404, "Not Found", "text/html"

    def _line(self, text: str) -> Optional[int]:
        return int(text) if text.isdigit() and 1 <= int(text) <= self.lines else None

    def _busy(self, line: int) -> bool:
        job = self.jobs.get(line)
        return job is not None and job["status"] == ""

    def _send_html(self, query: Dict[str, str]) -> Tuple[str, str]:
        line = self._line(query.get("l", ""))
        number, text = query.get("n", ""), query.get("m", "")
        if line is None:
            return "ERROR,line error", "text/html"
        if line in self.line_errors:
            return f"ERROR,L{line} {self.line_errors[line]}", "text/html"
        if self._busy(line):
            return f"ERROR,L{line} busy", "text/html"
        key = f"{next(self._keys):08x}"
        self._new_job(line, key, number, text)
        if self.answer_form == "colon":
            return f"Sending,L{line} Send SMS to:{number}; ID:{key}", "text/html"
        return f"Sending, L{line} Send SMS to {number}; ID:{key}", "text/html"

    def _start_job(self, line_text: str, key: str, number: str, text: Optional[str]) -> str:
        line = self._line(line_text)
        if line is None or not key:
            return "<html><body>ERROR</body></html>"
        if self._busy(line):
            return "<html><body>busy</body></html>"
        self._new_job(line, key, number, text)
        return "<html><body><p>Sending...</p></body></html>"

    def _new_job(self, line: int, key: str, number: str, text: Optional[str]) -> None:
        self.jobs[line] = {"id": key, "status": "", "error": "", "number": number, "text": text,
                           "polls": self.polls_until_done}
        if text is not None:
            self.sent.append({"line": line, "number": number, "text": text, "smskey": key})

    def _status_xml(self) -> str:
        for job in self.jobs.values():
            if job["status"] != "":
                continue
            job["polls"] -= 1
            if job["polls"] > 0:
                continue
            if job["text"] is None:  # USSD: the answer is written as the "error"
                answer = self.ussd_answers.get(job["number"])
                job["status"], job["error"] = ("DONE", answer) if answer is not None else (
                    "ERRORDONE", "USSD send failed")
            elif job["number"] in self.fail_numbers:
                job["status"], job["error"] = "ERRORDONE", self.fail_numbers[job["number"]]
            else:
                job["status"] = "DONE"
        out = ['<?xml version="1.0" encoding="utf-8"?>', "<send-sms-status>"]
        for line in range(1, 9):
            job = self.jobs.get(line, {"id": "", "status": "", "error": ""})
            for tag in ("id", "status", "error"):
                value = job[tag]
                if value == "" and self.empty_tags == "self":
                    out.append(f"<{tag}{line}/>")
                else:
                    out.append(f"<{tag}{line}>{html.escape(value, quote=False)}</{tag}{line}>")
        out.append("</send-sms-status>")
        return "\n".join(out)
