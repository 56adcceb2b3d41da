"""A fake AMI server for black-box tests: plain sockets in threads, no Twisted.

It shares no code with websmsd (its own line reader and writer), so a test that runs
the real daemon against it checks websmsd against an independent peer.  Two dialects:

* Asterisk (default): banner `Asterisk Call Manager/11.0.0`, answers and events as a
  real Asterisk 22 wrote them in fixtures/asterisk/ami_transcripts.json (Login, Ping,
  Command with `Output:` lines, MessageSend, Logoff), plus PJSIPShowContacts as an
  EventList.
* Yeastar TG (`tg=True`): banner `Asterisk Call Manager/1.1` (no blank line), no Ping,
  `smscommand` answered in the `Response: Follows` ... `--END COMMAND--` framing, and
  `gsm send sms` followed by an `UpdateSMSSend` event, as shared/goip-yeastar.md says.

Usage:

    with AMIPeer(username="admin", secret="s3cret", tg=True) as peer:
        ... point the daemon at 127.0.0.1:peer.port ...
        action = peer.wait_for("smscommand")
        peer.push_received_sms(span=2, sender="+15550001", text="Hi")
        peer.drop()

Answers can be scripted per action with `peer.on(name, handler)`; `handler(action,
session)` returns what to send back: None (nothing), a list of (name, value) pairs
(one response; the ActionID is added), a list of such lists (several packets, each
with the ActionID: a response and its list events), or bytes/str sent as they are.
"""

from __future__ import annotations

import base64
import contextlib
import socket
import threading
import time
import urllib.parse
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple, Union

ASTERISK_BANNER = "Asterisk Call Manager/11.0.0"
TG_BANNER = "Asterisk Call Manager/1.1"
MAX_LINE = 1024  # Asterisk's input buffer: a longer line (CRLF included) is refused

Pairs = Sequence[Tuple[str, str]]
Reply = Union[None, bytes, str, Pairs, Sequence[Pairs]]
Handler = Callable[["ReceivedAction", "PeerSession"], Reply]


def packet_bytes(pairs: Iterable[Tuple[str, str]], action_id: Optional[str] = None,
                 extra_lines: Sequence[str] = ()) -> bytes:
    """`Name: value` lines, ActionID after the first one, bare lines, a blank line."""
    lines = []
    for i, (name, value) in enumerate(pairs):
        lines.append(f"{name}: {value}")
        if i == 0 and action_id is not None:
            lines.append(f"ActionID: {action_id}")
    lines.extend(extra_lines)
    return ("\r\n".join(lines) + "\r\n\r\n").encode("utf-8")


def follows_bytes(output: str, action_id: Optional[str] = None, privilege: str = "SMSCommand",
                  glued: bool = False) -> bytes:
    """A TG command answer: headers, raw output (bare LF lines), `--END COMMAND--`."""
    head = f"Response: Follows\r\nPrivilege: {privilege}\r\n"
    if action_id is not None:
        head += f"ActionID: {action_id}\r\n"
    if output and not output.endswith("\n") and not glued:
        output += "\n"
    return (head + output + "--END COMMAND--\r\n\r\n").encode("utf-8")


class ReceivedAction:
    """One action as the peer read it."""

    def __init__(self, fields: List[Tuple[str, str]], raw: bytes, session: int,
                 too_long: bool = False):
        self.fields = fields
        self.raw = raw
        self.session = session
        self.too_long = too_long

    def get(self, name: str, default: Optional[str] = None) -> Optional[str]:
        for n, v in self.fields:
            if n.lower() == name.lower():
                return v
        return default

    @property
    def name(self) -> str:
        return self.get("Action") or ""

    @property
    def action_id(self) -> Optional[str]:
        return self.get("ActionID")

    def __repr__(self) -> str:
        shown = [(n, "***" if n.lower() == "secret" else v) for n, v in self.fields]
        return f"<ReceivedAction session={self.session} {shown}>"


class PeerSession:
    """One client connection."""

    def __init__(self, peer: "AMIPeer", sock: socket.socket, number: int):
        self.peer = peer
        self.sock = sock
        self.number = number
        self.logged_in = False
        self.events = "on"
        self.closed = False
        self.close_after_reply = False  # Login refused, Logoff: close once answered
        self._lock = threading.Lock()

    def send(self, data: Union[bytes, str]) -> None:
        if isinstance(data, str):
            data = data.encode("utf-8")
        with self._lock:
            if self.closed:
                return
            try:
                self.sock.sendall(data)
            except OSError:
                # The client went away; its reader thread ends the session.
                self.closed = True

    def close(self) -> None:
        # No lock here: a close must interrupt a sendall() blocked on a full socket.
        if self.closed:
            return
        self.closed = True
        with contextlib.suppress(OSError):  # already shut down by the other side
            self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()

    def wants_events(self) -> bool:
        return self.logged_in and self.events.strip().lower() != "off"


class AMIPeer:
    """A fake AMI server on 127.0.0.1, port 0 (see `port`)."""

    def __init__(self, *, username: str = "admin", secret: str = "secret", tg: bool = False,
                 banner: Optional[str] = None, echo_action_id: bool = True,
                 host: str = "127.0.0.1", endpoints: Optional[Iterable[str]] = None,
                 commands: Optional[Dict[str, str]] = None, sms_status: int = 1,
                 sms_event_delay: float = 0.05, spans: Optional[Iterable[int]] = None):
        self.username = username
        self.secret = secret
        self.tg = tg
        self.banner = banner if banner is not None else (TG_BANNER if tg else ASTERISK_BANNER)
        self.echo_action_id = echo_action_id
        self.host = host
        # MessageSend to pjsip:<endpoint> succeeds only for these (None: any).
        self.endpoints = set(endpoints) if endpoints is not None else None
        # PJSIPShowContacts answers: dicts of ContactList fields (Endpoint, Uri, Status...).
        self.contacts: List[Dict[str, str]] = []
        self.commands: Dict[str, str] = dict(commands or {})
        self.sms_status = sms_status  # UpdateSMSSend Status after `gsm send sms`
        self.sms_event_delay = sms_event_delay
        # TG spans that take `gsm send sms` (None: any).  Another span gets an error text
        # and no UpdateSMSSend, as on the device.
        self.spans = {str(x) for x in spans} if spans is not None else None
        self.silent = False  # True: read actions, answer nothing (a dead link)
        self.actions: List[ReceivedAction] = []
        self.messages: List[Dict[str, Any]] = []  # MessageSend: to, from, body (bytes)
        self.sms_sent: List[Dict[str, str]] = []  # TG `gsm send sms`: span, to, text, id
        self.sessions: List[PeerSession] = []
        self.login_attempts = 0
        self.logins = 0
        self._handlers: Dict[str, Handler] = {}
        self._cond = threading.Condition()
        self._threads: List[threading.Thread] = []
        self._listener: Optional[socket.socket] = None
        self._stopped = threading.Event()
        self.port = 0

    # -- life --------------------------------------------------------------------------

    def start(self) -> "AMIPeer":
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((self.host, 0))
        s.listen(16)
        s.settimeout(0.2)
        self._listener = s
        self.port = s.getsockname()[1]
        self._spawn(self._accept_loop)
        return self

    def stop(self) -> None:
        self._stopped.set()
        if self._listener is not None:
            self._listener.close()
        for session in list(self.sessions):
            session.close()
        for t in self._threads:
            t.join(5)
        with self._cond:
            self._cond.notify_all()

    def __enter__(self) -> "AMIPeer":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    @property
    def address(self) -> Tuple[str, int]:
        return self.host, self.port

    def _spawn(self, target: Callable[..., None], *args: Any) -> None:
        t = threading.Thread(target=target, args=args, daemon=True)
        self._threads.append(t)
        t.start()

    # -- test controls -----------------------------------------------------------------

    def on(self, action: str, handler: Handler) -> None:
        """Script the answer to `action` (case-insensitive); replaces the default."""
        self._handlers[action.lower()] = handler

    def push_raw(self, data: Union[bytes, str], logged_in_only: bool = True) -> int:
        """Send bytes to every (logged-in) session; returns how many got them."""
        n = 0
        for session in list(self.sessions):
            if not session.closed and (session.logged_in or not logged_in_only):
                session.send(data)
                n += 1
        return n

    def push_event(self, event: str, fields: Pairs = (), extra_lines: Sequence[str] = ()) -> int:
        """An event to every logged-in session with events on; returns how many."""
        data = packet_bytes([("Event", event)] + list(fields), extra_lines=extra_lines)
        n = 0
        for session in list(self.sessions):
            if not session.closed and session.wants_events():
                session.send(data)
                n += 1
        return n

    def push_received_sms(self, span: int, sender: str, text: str, *, sms_id: str = "",
                          index: int = 0, total: int = 1, smsc: str = "+10000000000",
                          recvtime: str = "2025-03-06 06:12:09") -> int:
        """A TG `ReceivedSMS` event, Content URL-encoded with `+` for spaces and a BOM
        before texts that are not plain ASCII (the TG marks UCS-2 texts so)."""
        raw = text.encode("utf-8")
        if any(ord(c) > 127 for c in text):
            raw = b"\xef\xbb\xbf" + raw
        content = urllib.parse.quote_plus(raw, safe="*'()!~")
        return self.push_event("ReceivedSMS", [
            ("Privilege", "all,smscommand"), ("ID", sms_id), ("GsmSpan", str(span)),
            ("Sender", sender), ("Recvtime", recvtime), ("Index", str(index)),
            ("Total", str(total)), ("Smsc", smsc), ("Content", content),
        ], extra_lines=["--END SMS EVENT--"])

    def drop(self) -> int:
        """Close every client connection now; returns how many were open."""
        n = 0
        for session in list(self.sessions):
            if not session.closed:
                session.close()
                n += 1
        return n

    def wait_for(self, action: Optional[str] = None, *, count: int = 1,
                 predicate: Optional[Callable[[ReceivedAction], bool]] = None,
                 timeout: float = 10.0) -> ReceivedAction:
        """Block until `count` actions named `action` (and matching `predicate`) were
        received; returns the last of them.  Raises TimeoutError."""

        def matching() -> List[ReceivedAction]:
            return [a for a in self.actions
                    if (action is None or a.name.lower() == action.lower())
                    and (predicate is None or predicate(a))]

        with self._cond:
            if not self._cond.wait_for(lambda: len(matching()) >= count, timeout):
                raise TimeoutError(f"AMIPeer: {count} x {action or 'any action'} not received "
                                   f"within {timeout} s; got {[a.name for a in self.actions]}")
            return matching()[count - 1]

    def wait_for_logins(self, count: int = 1, timeout: float = 10.0) -> None:
        with self._cond:
            if not self._cond.wait_for(lambda: self.logins >= count, timeout):
                raise TimeoutError(f"AMIPeer: {count} logins not seen within {timeout} s "
                                   f"({self.logins} so far)")

    def wait_for_sessions(self, count: int = 1, timeout: float = 10.0) -> None:
        with self._cond:
            if not self._cond.wait_for(lambda: len(self.sessions) >= count, timeout):
                raise TimeoutError(f"AMIPeer: {count} connections not seen within {timeout} s")

    # -- the server --------------------------------------------------------------------

    def _accept_loop(self) -> None:
        assert self._listener is not None
        while not self._stopped.is_set():
            try:
                sock, _ = self._listener.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            sock.settimeout(None)
            with self._cond:
                session = PeerSession(self, sock, len(self.sessions) + 1)
                self.sessions.append(session)
                self._cond.notify_all()
            self._spawn(self._serve, session)

    def _serve(self, session: PeerSession) -> None:
        # Asterisk and the TG write the banner alone, with no blank line after it.
        session.send(self.banner + "\r\n")
        buf = b""
        fields: List[Tuple[str, str]] = []
        raw = b""
        too_long = False
        while not session.closed:
            try:
                data = session.sock.recv(65536)
            except OSError:
                break
            if not data:
                break
            buf += data
            while True:
                nl = buf.find(b"\n")
                if nl < 0:
                    if len(buf) >= MAX_LINE:
                        too_long, buf = True, b""
                    break
                line, buf = buf[: nl + 1], buf[nl + 1:]
                raw += line
                if len(line) > MAX_LINE:
                    too_long = True
                text = line.rstrip(b"\n").rstrip(b"\r").decode("utf-8", "replace")
                if text:
                    name, colon, value = text.partition(":")
                    if colon:
                        fields.append((name.strip(), value.lstrip(" ")))
                    continue
                if fields or too_long:
                    self._handle(session, ReceivedAction(fields, raw, session.number, too_long))
                fields, raw, too_long = [], b"", False
        session.close()

    def _handle(self, session: PeerSession, action: ReceivedAction) -> None:
        with self._cond:
            self.actions.append(action)
            self._cond.notify_all()
        if self.silent:
            return
        aid = action.action_id if self.echo_action_id else None
        if action.too_long:
            session.send(packet_bytes([("Response", "Error"), ("Message",
                         "Failed to parse message: line too long")], aid))
            return
        name = action.name.lower()
        handler = self._handlers.get(name)
        if handler is None:
            if name != "login" and not session.logged_in and name != "logoff":
                session.send(packet_bytes([("Response", "Error"),
                                           ("Message", "Permission denied")], aid))
                return
            handler = getattr(self, "_default_" + name, None) or self._default_unknown
        reply = handler(action, session)
        self._send_reply(session, reply, aid)
        if name == "login" and session.logged_in and not self.tg and handler == self._default_login:
            if session.wants_events():
                session.send(packet_bytes([("Event", "FullyBooted"), ("Privilege", "system,all"),
                                           ("Uptime", "648"), ("LastReload", "648"),
                                           ("Status", "Fully Booted")]))
        if session.close_after_reply:
            session.close()

    def _send_reply(self, session: PeerSession, reply: Reply, aid: Optional[str]) -> None:
        if reply is None:
            return
        if isinstance(reply, (bytes, str)):
            session.send(reply)
            return
        reply = list(reply)
        if reply and isinstance(reply[0], tuple):
            session.send(packet_bytes(reply, aid))  # type: ignore[arg-type]
            return
        for p in reply:
            session.send(packet_bytes(p, aid))  # type: ignore[arg-type]

    # -- default answers -----------------------------------------------------------------

    def _default_login(self, action: ReceivedAction, session: PeerSession) -> Reply:
        with self._cond:
            self.login_attempts += 1
        if action.get("Username") == self.username and action.get("Secret") == self.secret:
            session.logged_in = True
            session.events = action.get("Events") or "on"
            with self._cond:
                self.logins += 1
                self._cond.notify_all()
            return [("Response", "Success"), ("Message", "Authentication accepted")]
        # Asterisk (and the TG) answer, then close the connection.
        session.close_after_reply = True
        return [("Response", "Error"), ("Message", "Authentication failed")]

    def _default_logoff(self, action: ReceivedAction, session: PeerSession) -> Reply:
        session.close_after_reply = True
        return [("Response", "Goodbye"), ("Message", "Thanks for all the fish.")]

    def _default_ping(self, action: ReceivedAction, session: PeerSession) -> Reply:
        if self.tg:
            return self._default_unknown(action, session)
        return [("Response", "Success"), ("Ping", "Pong"), ("Timestamp", f"{time.time():.6f}")]

    def _default_unknown(self, action: ReceivedAction, session: PeerSession) -> Reply:
        return [("Response", "Error"), ("Message", "Invalid/unknown command")]

    def _default_command(self, action: ReceivedAction, session: PeerSession) -> Reply:
        cli = action.get("Command") or ""
        if self.tg:
            return follows_bytes(self.commands.get(cli, ""), action.action_id
                                 if self.echo_action_id else None, privilege="Command")
        aid = action.action_id if self.echo_action_id else None
        if cli not in self.commands:
            word = cli.split(" ")[0] if cli else ""
            return packet_bytes([("Response", "Error"), ("Message", "Command output follows"),
                                 ("Output", f"No such command '{cli}' (type 'core show help "
                                            f"{word}' for other possible commands)")], aid)
        out = [("Response", "Success"), ("Message", "Command output follows")]
        out += [("Output", line) for line in self.commands[cli].rstrip("\n").split("\n")]
        return packet_bytes(out, aid)

    def _default_smscommand(self, action: ReceivedAction, session: PeerSession) -> Reply:
        if not self.tg:
            return self._default_unknown(action, session)
        cli = action.get("Command") or ""
        aid = action.action_id if self.echo_action_id else None
        words = _cli_words(cli)
        if words[:3] == ["gsm", "send", "sms"] and len(words) >= 6:
            span, to, text = words[3], words[4], words[5]
            if self.spans is not None and span not in self.spans:
                # The device's exact wording is not documented; only "no event" matters.
                return follows_bytes(f"GSM span {span} is not available\n", aid)
            sms_id = words[6] if len(words) > 6 else "(null)"  # what the TG reports
            with self._cond:
                self.sms_sent.append({"span": span, "to": to, "raw_text": text,
                                      "text": urllib.parse.unquote_plus(text), "id": sms_id,
                                      "session": str(session.number)})
                self._cond.notify_all()
            timer = threading.Timer(self.sms_event_delay, self.push_event, ("UpdateSMSSend", [
                ("Privilege", "all,smscommand"), ("ID", sms_id), ("Smsc", "+10000000000"),
                ("Status", str(self.sms_status))], ["--END SMS EVENT--"]))
            timer.daemon = True
            timer.start()
            return follows_bytes("", aid)
        return follows_bytes(self.commands.get(cli, ""), aid)

    def _default_messagesend(self, action: ReceivedAction, session: PeerSession) -> Reply:
        to = action.get("To") or ""
        b64 = action.get("Base64Body")
        body = base64.b64decode(b64) if b64 is not None else (action.get("Body") or "").encode()
        endpoint = to[len("pjsip:"):].split("/")[0] if to.startswith("pjsip:") else None
        if endpoint is None or (self.endpoints is not None and endpoint not in self.endpoints):
            return [("Response", "Error"), ("Message", "Message failed to send.")]
        with self._cond:
            self.messages.append({"to": to, "from": action.get("From"), "body": body})
            self._cond.notify_all()
        return [("Response", "Success"), ("Message", "Message successfully sent")]

    def _default_pjsipshowcontacts(self, action: ReceivedAction, session: PeerSession) -> Reply:
        if not self.contacts:
            # Asterisk's answer when nothing is registered (from its source, not captured).
            return [("Response", "Error"), ("Message", "No Contacts found")]
        packets: List[Pairs] = [[("Response", "Success"), ("EventList", "start"),
                                 ("Message", "A listing of Contacts follows, presented as "
                                             "ContactList events")]]
        for c in self.contacts:
            packets.append([("Event", "ContactList")] + list(c.items()))
        packets.append([("Event", "ContactListComplete"), ("EventList", "Complete"),
                        ("ListItems", str(len(self.contacts)))])
        return packets


def _cli_words(cli: str) -> List[str]:
    """Split a CLI line like Asterisk: blanks separate, quotes group, backslash escapes."""
    words: List[str] = []
    cur = ""
    quoted = escaped = started = False
    for ch in cli:
        if escaped:
            cur += ch
            escaped = False
        elif ch == "\\":
            escaped = started = True
        elif ch == '"':
            quoted = not quoted
            started = True
        elif ch in " \t" and not quoted:
            if started:
                words.append(cur)
            cur, started = "", False
        else:
            cur += ch
            started = True
    if started:
        words.append(cur)
    return words
