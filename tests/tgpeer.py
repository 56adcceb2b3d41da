"""A fake Yeastar TG gateway for black-box tests: plain sockets and threads.

It answers byte for byte like the captures in /work/shared/goip-yeastar.md (Yeastar
part) and does not use websmsd's code, so it can check websmsd against an independent
reading of the device:

* AMI (SMS API) on 127.0.0.1, port 0 (`FakeTG.ami_port`): the banner
  `Asterisk Call Manager/1.1\\r\\n` without a blank line; Login answered exactly
  `Response: Success\\r\\nMessage: Authentication accepted\\r\\n\\r\\n` or
  `Response: Error` and the connection closed; `Action: smscommand` answered with the
  Follows framing (`Response: Follows`, `Privilege: SMSCommand`, raw output with bare
  `\\n`, `--END COMMAND--\\r\\n\\r\\n`, glued to output that does not end with a newline);
  `gsm send sms` parsed the way the device does (CLI words, then URL-decoding with `+` as
  space) and answered ~`send_delay` s later by an UpdateSMSSend event (no event for a bad
  span); ReceivedSMS events pushed on demand (`push_sms`), each part encoded on its own
  with its own BOM; `gsm show spans`, `gsm show span N`, `gsm send ussd`; `drop()` closes
  every session.  Everything received is recorded.
* WebCGI on 127.0.0.1, port 0 (`FakeTG.http_port`), writing the device's malformed
  headers (`<Content-Type:text/html>`; with `http_quirk="stray"` blank lines before the
  status line and before the headers, as some TG1600 units do).

Texts the notes do not give (the error for an unknown span, a failed WebCGI login) are
invented and marked so; tests must not depend on their wording.
"""

from __future__ import annotations

import socket
import threading
import time
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence, Tuple
from urllib.parse import quote, unquote_to_bytes

BANNER = b"Asterisk Call Manager/1.1\r\n"
END_COMMAND = b"--END COMMAND--\r\n\r\n"
END_SMS_EVENT = b"--END SMS EVENT--\r\n"
MAX_REQUEST = 64 * 1024


# ---------------------------------------------------------------------------------------
# The device's text handling, written independently of websmsd.yeastar.tg
# ---------------------------------------------------------------------------------------

def cli_words(line: str) -> List[str]:
    """Split a command like the Asterisk CLI: blanks separate, quotes group, a backslash
    takes the next character as it is."""
    words: List[str] = []
    cur: List[str] = []
    in_word = quoted = escaped = False
    for ch in line:
        if escaped:
            cur.append(ch)
            escaped = False
            in_word = True
        elif ch == "\\":
            escaped = True
            in_word = True
        elif ch == '"':
            quoted = not quoted
            in_word = True
        elif ch in " \t" and not quoted:
            if in_word:
                words.append("".join(cur))
                cur, in_word = [], False
        else:
            cur.append(ch)
            in_word = True
    if in_word:
        words.append("".join(cur))
    return words


def device_url_decode(text: str) -> str:
    """URL-decoding as the TG applies it to an SMS text: `+` is a space."""
    return unquote_to_bytes(text.replace("+", " ")).decode("utf-8", "replace")


@dataclass
class SentSMS:
    span: int
    number: str
    text: str
    ident: Optional[str]
    command: str = ""
    via: str = "ami"


def parse_sms_command(command: str) -> Optional[SentSMS]:
    """`gsm send sms <span> <number> "<text>" [<id>]` as the device reads it."""
    words = cli_words(command)
    if len(words) < 6 or [w.lower() for w in words[:3]] != ["gsm", "send", "sms"]:
        return None
    if not words[3].isdigit():
        return None
    ident = words[6] if len(words) > 6 else None
    return SentSMS(int(words[3]), words[4], device_url_decode(words[5]), ident, command)


def is_gsm7(text: str) -> bool:
    # Close enough for a fake: ASCII printable and line ends travel as GSM 7-bit.
    return all(" " <= ch <= "~" or ch in "\r\n" for ch in text)


def encode_content(text: str) -> str:
    """How a TG writes one part's Content: UTF-8, a BOM for UCS-2 parts, `+` for a space,
    and `*'()!~` (with letters, digits, `-_.`) left as they are."""
    data = text.encode("utf-8")
    if not is_gsm7(text):
        data = b"\xef\xbb\xbf" + data
    return quote(data, safe="*'()!~").replace("%20", "+")


# ---------------------------------------------------------------------------------------
# USSD answers
# ---------------------------------------------------------------------------------------

@dataclass
class UssdReply:
    """kind: ucs2 (DCS 72, hex of UCS-2BE), text (DCS 15), tg400 (the TG400 success
    line, DCS 15), fail, timeout."""

    kind: str
    text: str = ""
    more: bool = False

    def ami_output(self, span: int) -> str:
        if self.kind == "fail":
            return f"0:Send USSD failed on span {span}\n"
        if self.kind == "timeout":
            return f"0:Send USSD timeout on span {span}\n"
        if self.kind == "ucs2":
            message, code = self.text.encode("utf-16-be").hex().upper(), 72
        else:
            message, code = self.text, 15
        head = (f"1:Recive USSD sucess on span {span}" if self.kind == "tg400"
                else f"1:Received USSD success on span: {span}")
        return (f"{head}\n\tUSSD Responses: {1 if self.more else 0}\n\tUSSD Code: {code}\n"
                f"\tUSSD Len: {len(message)}\n\tUSSD Message: {message}\n")

    def webcgi_body(self, port: int, code: str) -> str:
        if self.kind in ("fail", "timeout"):
            # Invented: the notes give no WebCGI USSD error text.
            return f"Request: {port},{code}\r\nResponse: Error\r\nMessage: Send USSD {self.kind}\r\n"
        return f"Request: {port},{code}\r\nResponse: Success\r\nMessage: {self.text}\r\n"


def default_ussd_replies() -> Dict[str, UssdReply]:
    return {
        "*100#": UssdReply("ucs2", "Баланс: 36.3 руб."),
        "*101#": UssdReply("text", "Solde Principal: 170 FCFA. Tapez *101*1#."),
        "*102#": UssdReply("tg400", "Balance 5 EUR"),
        "*111#": UssdReply("text", "1. Balance\n2. Tariff", more=True),
        "*000#": UssdReply("fail"),
        "*999#": UssdReply("timeout"),
    }


# ---------------------------------------------------------------------------------------
# The fake gateway
# ---------------------------------------------------------------------------------------

class _Session:
    def __init__(self, tg: "FakeTG", sock: socket.socket, number: int) -> None:
        self.tg = tg
        self.sock = sock
        self.number = number
        self.logged_in = False
        self.events = True
        self.closed = False
        self.lock = threading.Lock()

    def send(self, data: bytes) -> None:
        with self.lock:
            if self.closed:
                return
            try:
                self.sock.sendall(data)
            except OSError:
                self.closed = True

    def close(self) -> None:
        with self.lock:
            if self.closed:
                return
            self.closed = True
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()


class FakeTG:
    """A TG with `ports` GSM ports (spans 2..ports+1); ports in `empty_ports` have no SIM.

    Knobs (plain attributes, change them any time): `send_status` (1 or 0, or a callable
    (number) -> status), `send_delay` (seconds before UpdateSMSSend; None = never),
    `glue_end` (glue `--END COMMAND--` to every output), `ussd_replies` (code ->
    UssdReply), `http_quirk` ("boa", "stray", "plain", "close", "silent").
    Records: `received` (raw bytes per AMI session), `actions` (pairs per action),
    `commands`, `sms` (SentSMS, AMI and HTTP), `ussd` ((span, code)), `http_requests`.
    """

    def __init__(self, *, username: str = "websmsd", secret: str = "tg-secret", ports: int = 4,
                 empty_ports: Sequence[int] = (), smsc: str = "+79037011111",
                 send_status: object = 1, send_delay: Optional[float] = 0.05,
                 http_quirk: str = "boa") -> None:
        self.username = username
        self.secret = secret
        self.ports = ports
        self.empty_ports = set(empty_ports)
        self.smsc = smsc
        self.send_status = send_status
        self.send_delay = send_delay
        self.glue_end = False
        self.ussd_replies = default_ussd_replies()
        self.http_quirk = http_quirk
        self.received: Dict[int, bytearray] = {}
        self.actions: List[Tuple[int, List[Tuple[str, str]]]] = []
        self.commands: List[str] = []
        self.sms: List[SentSMS] = []
        self.ussd: List[Tuple[int, str]] = []
        self.http_requests: List[bytes] = []
        self.logins = 0
        self._sessions: List[_Session] = []
        self._timers: List[threading.Timer] = []
        self._threads: List[threading.Thread] = []
        self._cond = threading.Condition()
        self._stopping = False
        self._ami = self._listen()
        self._http = self._listen()
        self.ami_port = self._ami.getsockname()[1]
        self.http_port = self._http.getsockname()[1]
        self._spawn(self._accept, self._ami, self._serve_ami)
        self._spawn(self._accept, self._http, self._serve_http)

    # ---- lifecycle -------------------------------------------------------------------

    @staticmethod
    def _listen() -> socket.socket:
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", 0))
        s.listen(16)
        return s

    def _spawn(self, target: Callable[..., None], *args: object) -> None:
        t = threading.Thread(target=target, args=args, daemon=True)
        self._threads.append(t)
        t.start()

    def close(self) -> None:
        self._stopping = True
        for t in self._timers:
            t.cancel()
        for s in (self._ami, self._http):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()
        self.drop()
        for t in self._threads:
            t.join(timeout=5)

    def __enter__(self) -> "FakeTG":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def drop(self) -> None:
        """Close every AMI session (the device going away); keep listening."""
        with self._cond:
            sessions = list(self._sessions)
        for s in sessions:
            s.close()
        self._changed()

    def _changed(self) -> None:
        with self._cond:
            self._cond.notify_all()

    def wait_for(self, predicate: Callable[[], bool], timeout: float = 10.0) -> bool:
        """Block until `predicate()` holds (re-checked at every change); False on timeout."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while not predicate():
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(min(left, 0.2))
        return True

    def _accept(self, listener: socket.socket, serve: Callable[[socket.socket], None]) -> None:
        while not self._stopping:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            self._spawn(serve, conn)

    # ---- spans ------------------------------------------------------------------------

    def spans(self) -> List[int]:
        return list(range(2, self.ports + 2))

    def _span_state(self, span: int) -> str:
        return "Undetected SIM Card" if span - 1 in self.empty_ports else "Up"

    def _spans_output(self) -> str:
        return "".join(f"GSM span {s}: Power on, Provisioned, {self._span_state(s)}, Active,Standard\n"
                       for s in self.spans())

    def _span_output(self, span: int) -> str:
        if span not in self.spans():
            return _no_span(span)
        up = self._span_state(span) == "Up"
        return (f"D-channel: {span}\n"
                f"Status: Power on, Provisioned, {self._span_state(span)}, Active,Standard\n"
                "Type: CPE\nManufacturer: SIMCOM_Ltd\nModel Name: SIMCOM_SIM800\n"
                f"Model IMEI: 86295102826396{span % 10}\n"
                "Model CBAND:  DCS_MODE,ALL_BAND\nRevision: 1308B05SIM800M32_20140625_1100\n"
                f"Network Name: {'Bee Line GSM' if up else ''}\n"
                f"Network Status: {'Registered (Home network)' if up else 'Unregistered'}\n"
                f"Signal Quality (0,31): {17 + span if up else -1}\n"
                f"SIM IMSI: {'25099000000000' + str(span % 10) if up else ''}\n"
                f"SIM SMS Center Number: {self.smsc if up else ''}\n"
                "Send SMS Center Number: Undefined\nLast event: SMS send OK\nState: READY\n"
                # Literal backslashes, and no newline: `--END COMMAND--` gets glued here.
                "Last send AT: AT+CREG?\\r\\n")

    # ---- AMI ----------------------------------------------------------------------------

    def _serve_ami(self, sock: socket.socket) -> None:
        with self._cond:
            session = _Session(self, sock, len(self._sessions) + 1)
            self._sessions.append(session)
            self.received[session.number] = bytearray()
        session.send(BANNER)
        buf = b""
        headers: List[Tuple[str, str]] = []
        try:
            while not session.closed:
                try:
                    data = sock.recv(65536)
                except OSError:
                    break
                if not data:
                    break
                with self._cond:
                    self.received[session.number] += data
                buf += data
                while b"\n" in buf:
                    line, buf = buf.split(b"\n", 1)
                    line = line.rstrip(b"\r")
                    if line:
                        name, _, value = line.decode("utf-8", "replace").partition(":")
                        headers.append((name.strip(), value.strip()))
                    elif headers:
                        action, headers = headers, []
                        self._action(session, action)
                        if session.closed:
                            break
                if len(buf) > MAX_REQUEST:
                    break
                self._changed()
        finally:
            session.close()
            self._changed()

    def _action(self, session: _Session, pairs: List[Tuple[str, str]]) -> None:
        with self._cond:
            self.actions.append((session.number, pairs))
        get = {}
        for name, value in pairs:
            get.setdefault(name.lower(), value)
        name = get.get("action", "").lower()
        aid = f"ActionID: {get['actionid']}\r\n".encode() if "actionid" in get else b""
        if name == "login":
            if get.get("username") == self.username and get.get("secret") == self.secret:
                session.logged_in = True
                session.events = get.get("events", "on").lower() != "off"
                with self._cond:
                    self.logins += 1
                session.send(b"Response: Success\r\n" + aid + b"Message: Authentication accepted\r\n\r\n")
            else:
                session.send(b"Response: Error\r\n" + aid + b"Message: Authentication failed\r\n\r\n")
                session.close()
        elif name == "logoff":
            session.send(b"Response: Goodbye\r\n" + aid + b"Message: Thanks for all the fish.\r\n\r\n")
            session.close()
        elif not session.logged_in:
            session.send(b"Response: Error\r\n" + aid + b"Message: Authentication Required\r\n\r\n")
        elif name == "ping":
            session.send(b"Response: Pong\r\n" + aid + b"\r\n")
        elif name == "smscommand":
            output = self._command(get.get("command", ""))
            data = output.encode("utf-8")
            if self.glue_end and data.endswith(b"\n"):
                data = data[:-1]
            session.send(b"Response: Follows\r\nPrivilege: SMSCommand\r\n" + aid + data + END_COMMAND)
        else:
            session.send(b"Response: Error\r\n" + aid + b"Message: Invalid/unknown command\r\n\r\n")

    def _command(self, command: str) -> str:
        with self._cond:
            self.commands.append(command)
        words = cli_words(command)
        lower = [w.lower() for w in words]
        if lower == ["gsm", "show", "spans"]:
            return self._spans_output()
        if lower[:3] == ["gsm", "show", "span"] and len(words) == 4 and words[3].isdigit():
            return self._span_output(int(words[3]))
        if lower[:3] == ["gsm", "send", "sms"]:
            return self._send_sms(command)
        if lower[:3] == ["gsm", "send", "ussd"] and len(words) >= 5 and words[3].isdigit():
            span = int(words[3])
            if span not in self.spans():
                return _no_span(span)
            with self._cond:
                self.ussd.append((span, words[4]))
            return self.ussd_replies.get(words[4], UssdReply("fail")).ami_output(span)
        return f"No such command '{command}' (type 'help' for help)\n"

    def _send_sms(self, command: str) -> str:
        sent = parse_sms_command(command)
        if sent is None:
            return "Usage: gsm send sms <span> <destination> <message> [id]\n"
        if sent.span not in self.spans():
            return _no_span(sent.span)
        with self._cond:
            self.sms.append(sent)
        if self.send_delay is not None:
            status = self.send_status(sent.number) if callable(self.send_status) else self.send_status
            if sent.span - 1 in self.empty_ports:
                status = 0
            event = (b"Event: UpdateSMSSend\r\nPrivilege: all,smscommand\r\n"
                     + f"ID: {sent.ident if sent.ident is not None else '(null)'}\r\n".encode()
                     + f"Smsc: {self.smsc}\r\nStatus: {status}\r\n".encode()
                     + END_SMS_EVENT + b"\r\n")
            timer = threading.Timer(self.send_delay, self.push_raw, (event,))
            timer.daemon = True
            self._timers.append(timer)
            timer.start()
        return ""

    def push_raw(self, data: bytes) -> int:
        """Write `data` to every logged-in session with events on; returns how many."""
        with self._cond:
            sessions = [s for s in self._sessions if s.logged_in and s.events and not s.closed]
        for s in sessions:
            s.send(data)
        self._changed()
        return len(sessions)

    def push_event(self, pairs: Sequence[object]) -> int:
        """An event from (name, value) pairs; a bare string is written as a line."""
        lines = [p if isinstance(p, str) else f"{p[0]}: {p[1]}" for p in pairs]
        return self.push_raw("".join(line + "\r\n" for line in lines).encode("utf-8") + b"\r\n")

    def sms_events(self, span: int, sender: str, text: str = "", *, parts: Optional[Sequence[str]] = None,
                   order: Optional[Sequence[int]] = None, ident: str = "", index_base: int = 0,
                   recvtime: str = "2025-03-06 06:12:09", field: str = "GsmSpan") -> List[bytes]:
        """The ReceivedSMS events a TG writes for one message (in `order`, 1-based)."""
        pieces = list(parts) if parts is not None else [text]
        total = len(pieces)
        if total > 1 and not ident:
            ident = "244"
        events = []
        for n, piece in enumerate(pieces, 1):
            index = n if total > 1 else index_base
            events.append(
                b"Event: ReceivedSMS\r\nPrivilege: all,smscommand\r\n"
                + f"ID: {ident}\r\n{field}: {span}\r\n".encode()
                + f"Sender: {sender}\r\nRecvtime: {recvtime}\r\nIndex: {index}\r\n".encode()
                + f"Total: {total}\r\nSmsc: {self.smsc}\r\nContent: {encode_content(piece)}\r\n".encode()
                + END_SMS_EVENT + b"\r\n")
        if order is not None:
            events = [events[i - 1] for i in order]
        return events

    def push_sms(self, span: int, sender: str, text: str = "", **kw: object) -> List[bytes]:
        """Push a received SMS (see `sms_events`) to every session with events on."""
        events = self.sms_events(span, sender, text, **kw)  # type: ignore[arg-type]
        for e in events:
            self.push_raw(e)
        return events

    # ---- WebCGI -----------------------------------------------------------------------

    def _serve_http(self, sock: socket.socket) -> None:
        try:
            sock.settimeout(10)
            data = b""
            while b"\r\n\r\n" not in data and b"\n\n" not in data and len(data) < MAX_REQUEST:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                data += chunk
            with self._cond:
                self.http_requests.append(data)
            self._changed()
            if self.http_quirk == "close":
                return
            if self.http_quirk == "silent":
                while not self._stopping and sock.recv(65536):
                    pass
                return
            status, body = self._webcgi(data)
            sock.sendall(self._http_answer(status, body.encode("utf-8")))
        except OSError:
            pass
        finally:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            sock.close()
            self._changed()

    def _webcgi(self, request: bytes) -> Tuple[str, str]:
        line = request.split(b"\n", 1)[0].decode("latin-1").strip()
        parts = line.split(" ")
        if len(parts) < 2 or parts[0] != "GET":
            return "400 Bad Request", "<html><body>400 Bad Request</body></html>\n"
        path, _, query = parts[1].partition("?")
        if path != "/cgi/WebCGI" or "=" not in query:
            return "404 Not Found", "<html><body>404 Not Found</body></html>\n"
        action, _, rest = query.partition("=")
        args: Dict[str, str] = {}
        for item in rest.split("&"):
            k, _, v = item.partition("=")
            args.setdefault(k, device_url_decode(v))
        if args.get("account") != self.username or args.get("password") != self.secret:
            # Invented: the notes give no WebCGI error text.
            return "200 OK", "Response: Error\r\nMessage: Authentication failed\r\n"
        port = int(args["port"]) if args.get("port", "").isdigit() else 0
        if not 1 <= port <= self.ports:
            return "200 OK", "Response: Error\r\nMessage: Invalid port\r\n"
        if action == "1500101":
            with self._cond:
                self.sms.append(SentSMS(port + 1, args.get("destination", ""), args.get("content", ""),
                                        None, rest, via="http"))
            return "200 OK", "Response: Success\r\nMessage: Commit successfully!\r\n"
        if action == "1500102":
            code = args.get("content", "")
            with self._cond:
                self.ussd.append((port + 1, code))
            return "200 OK", self.ussd_replies.get(code, UssdReply("fail")).webcgi_body(port, code)
        return "200 OK", "Response: Error\r\nMessage: Unknown action\r\n"

    def _http_answer(self, status: str, body: bytes) -> bytes:
        date = time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime())
        if self.http_quirk == "plain":
            return (f"HTTP/1.0 {status}\r\nServer: Boa/0.94.14rc21\r\nContent-Type: text/html\r\n"
                    f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode() + body
        head = f"HTTP/1.0 {status}\r\nDate: {date}\r\nServer: Boa/0.94.14rc21\r\nConnection: close\r\n"
        if self.http_quirk == "stray":
            head = f"\r\n\r\nHTTP/1.0 {status}\r\n\r\n\r\nDate: {date}\r\nServer: Boa/0.94.14rc21\r\n"
        # The CGI prints its own malformed header and blank line with bare LFs.
        return head.encode() + b"<Content-Type:text/html>\n\n" + body


def _no_span(span: int) -> str:
    # Invented wording: the notes only say the output is an error text.
    return f"GSM span {span} does not exist\n"
