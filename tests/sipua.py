"""A minimal SIP user agent for tests against a real Asterisk: enough to play a phone.

Plain Python (sockets and one reader thread per socket), UDP or TCP.  It can:

* REGISTER with digest authentication (MD5 or SHA-256, qop=auth or none), and
  un-REGISTER (``Expires: 0``);
* send MESSAGE (answering a 401/407 challenge once) with a chosen From display name,
  body bytes and extra headers;
* answer incoming MESSAGE (200 OK, or the code it is told) and keep each one as it
  arrived (`SipMessage`: start line, headers, body bytes, raw bytes), and answer
  OPTIONS (qualify) with 200 OK, keeping those too.

Not a general SIP stack: no dialogs, no INVITE, no DNS, one registrar.  Over UDP a
request is retransmitted (T1 = 0.5 s, doubling) until a response comes, as RFC 3261
17.1.2 wants.  Over TCP the UA listens on its Contact port, where Asterisk connects to
deliver requests, and sends its own requests over one connection of its own.
"""

import hashlib
import os
import queue
import re
import socket
import threading
import time
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

T1 = 0.5
MAX_MESSAGE = 65535

COMPACT = {"v": "via", "f": "from", "t": "to", "i": "call-id", "m": "contact",
           "l": "content-length", "c": "content-type", "k": "supported", "s": "subject",
           "e": "content-encoding"}


class SipError(Exception):
    """A SIP exchange failed: no answer in time, or bytes that are not SIP."""


class SipMessage:
    """One SIP request or response as it arrived (or was sent)."""

    def __init__(self, start_line: str, headers: List[Tuple[str, str]], body: bytes,
                 raw: bytes = b"", transport: str = "", source: Optional[Tuple[str, int]] = None):
        self.start_line = start_line
        self.headers = headers
        self.body = body
        self.raw = raw
        self.transport = transport
        self.source = source
        self.received_at = time.time()

    @property
    def is_request(self) -> bool:
        return not self.start_line.startswith("SIP/2.0 ")

    @property
    def method(self) -> str:
        return self.start_line.split(" ", 1)[0] if self.is_request else ""

    @property
    def uri(self) -> str:
        return self.start_line.split(" ")[1] if self.is_request else ""

    @property
    def status(self) -> int:
        return 0 if self.is_request else int(self.start_line.split(" ")[1])

    @property
    def reason(self) -> str:
        return "" if self.is_request else self.start_line.split(" ", 2)[2]

    def header_all(self, name: str) -> List[str]:
        name = COMPACT.get(name.lower(), name.lower())
        return [v for k, v in self.headers if COMPACT.get(k.lower(), k.lower()) == name]

    def header(self, name: str) -> Optional[str]:
        values = self.header_all(name)
        return values[0] if values else None

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", "replace")

    def __repr__(self) -> str:
        return f"SipMessage({self.start_line!r}, body={self.body[:60]!r})"


def parse(data: bytes, transport: str = "", source=None) -> SipMessage:
    """Parse one complete SIP message (a UDP datagram or a framed TCP message)."""
    head, sep, body = data.partition(b"\r\n\r\n")
    if not sep:
        raise SipError("no end of headers")
    try:
        lines = head.decode("utf-8").split("\r\n")
    except UnicodeDecodeError as e:
        raise SipError(f"headers are not UTF-8: {e}") from None
    start = lines[0]
    if not (start.startswith("SIP/2.0 ") or start.endswith(" SIP/2.0")):
        raise SipError(f"not a SIP start line: {start!r}")
    headers: List[Tuple[str, str]] = []
    for line in lines[1:]:
        if line[:1] in (" ", "\t") and headers:  # folded continuation
            k, v = headers[-1]
            headers[-1] = (k, v + " " + line.strip())
            continue
        name, colon, value = line.partition(":")
        if not colon:
            raise SipError(f"bad header line {line!r}")
        headers.append((name.strip(), value.strip()))
    msg = SipMessage(start, headers, body, data, transport, source)
    length = msg.header("content-length")
    if length is not None:
        n = int(length)
        if n > len(body):
            raise SipError(f"body shorter ({len(body)}) than Content-Length {n}")
        msg.body = body[:n]
    return msg


def split_stream(buf: bytes) -> Tuple[List[bytes], bytes]:
    """Cut complete messages off a TCP stream buffer: (messages, rest)."""
    out = []
    while True:
        stripped = buf.lstrip(b"\r\n")  # RFC 5626 keep-alive CRLFs between messages
        end = stripped.find(b"\r\n\r\n")
        if end < 0:
            return out, stripped
        m = re.search(rb"(?im)^(?:content-length|l)[ \t]*:[ \t]*(\d+)", stripped[:end])
        total = end + 4 + (int(m.group(1)) if m else 0)
        if len(stripped) < total:
            return out, stripped
        out.append(stripped[:total])
        buf = stripped[total:]


def _params(challenge: str) -> Dict[str, str]:
    return {k.lower(): (v[1:-1].replace('\\"', '"') if v.startswith('"') else v)
            for k, v in re.findall(r'([\w-]+)\s*=\s*("(?:[^"\\]|\\.)*"|[^,\s]+)', challenge)}


HASHES = {"MD5": hashlib.md5, "SHA-256": hashlib.sha256}


def digest_authorization(challenge: str, method: str, uri: str, username: str, password: str,
                         nc: int = 1, cnonce: Optional[str] = None) -> str:
    """The Authorization value answering one ``Digest ...`` challenge (RFC 7616)."""
    p = _params(challenge.split(None, 1)[1] if challenge.lower().startswith("digest") else challenge)
    algorithm = p.get("algorithm", "MD5")
    if algorithm.upper() not in HASHES:
        raise SipError(f"unsupported digest algorithm {algorithm}")
    h = lambda s: HASHES[algorithm.upper()](s.encode()).hexdigest()  # noqa: E731
    ha1 = h(f"{username}:{p['realm']}:{password}")
    ha2 = h(f"{method}:{uri}")
    fields = [f'username="{username}"', f'realm="{p["realm"]}"', f'nonce="{p["nonce"]}"',
              f'uri="{uri}"', f"algorithm={algorithm}"]
    qops = [q.strip() for q in p.get("qop", "").split(",") if q.strip()]
    if "auth" in qops:
        cnonce = cnonce or os.urandom(8).hex()
        ncs = f"{nc:08x}"
        response = h(f"{ha1}:{p['nonce']}:{ncs}:{cnonce}:auth:{ha2}")
        fields += [f'response="{response}"', "qop=auth", f"nc={ncs}", f'cnonce="{cnonce}"']
    else:
        fields.append(f'response="{h(ha1 + ":" + p["nonce"] + ":" + ha2)}"')
    if "opaque" in p:
        fields.append(f'opaque="{p["opaque"]}"')
    return "Digest " + ", ".join(fields)


def quote_display(name: str) -> str:
    """A display name as an RFC 3261 quoted-string."""
    return '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'


class SipUA:
    """A phone: ``SipUA("alice", "secret", registrar=("127.0.0.1", 5060))``.

    ``transport`` is ``"udp"`` or ``"tcp"``.  ``answer_code`` is what incoming MESSAGE
    requests get.  Use as a context manager, or call `start` and `close`.
    """

    def __init__(self, user: str, password: Optional[str], *, registrar: Tuple[str, int],
                 transport: str = "udp", domain: Optional[str] = None,
                 display_name: Optional[str] = None, local_host: str = "127.0.0.1",
                 timeout: float = 5.0, answer_code: int = 200,
                 user_agent: str = "websmsd-test-ua"):
        if transport not in ("udp", "tcp"):
            raise ValueError(transport)
        self.user, self.password = user, password
        self.registrar = registrar
        self.transport = transport
        self.domain = domain or registrar[0]
        self.display_name = display_name
        self.local_host = local_host
        self.timeout = timeout
        self.answer_code = answer_code
        self.user_agent = user_agent
        self.received: List[SipMessage] = []      # incoming MESSAGE requests, in order
        self.options_received: List[SipMessage] = []
        self.requests_seen: List[SipMessage] = []  # every incoming request, retransmits too
        self.sent: List[bytes] = []
        self._cond = threading.Condition()
        self._lock = threading.Lock()
        self._pending: Dict[str, "queue.Queue[SipMessage]"] = {}
        self._answered: Dict[Tuple[str, str, str], bytes] = {}
        self._cseq = 0
        self._reg_call_id = self._token() + "@test-ua"
        self._reg_tag = self._token()
        self._threads: List[threading.Thread] = []
        self._closing = False
        self._udp: Optional[socket.socket] = None
        self._listener: Optional[socket.socket] = None
        self._conn: Optional[socket.socket] = None
        self._conns: List[socket.socket] = []
        self.local_port = 0

    # ---------------------------------------------------------------- sockets

    @staticmethod
    def _token() -> str:
        return os.urandom(6).hex()

    def start(self) -> "SipUA":
        if self.transport == "udp":
            self._udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            self._udp.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
            self._udp.bind((self.local_host, 0))
            self.local_port = self._udp.getsockname()[1]
            self._spawn(self._udp_loop)
        else:
            self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            self._listener.bind((self.local_host, 0))
            self._listener.listen(8)
            self.local_port = self._listener.getsockname()[1]
            self._spawn(self._accept_loop)
        return self

    def _spawn(self, target, *args) -> None:
        t = threading.Thread(target=target, args=args, daemon=True)
        self._threads.append(t)
        t.start()

    def close(self) -> None:
        self._closing = True
        for s in [self._udp, self._listener, self._conn] + self._conns:
            if s is None:
                continue
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass  # not connected (UDP, listener): close() below is enough
            s.close()
        for t in self._threads:
            t.join(2)

    def __enter__(self) -> "SipUA":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()

    def _udp_loop(self) -> None:
        while not self._closing:
            try:
                data, addr = self._udp.recvfrom(MAX_MESSAGE)
            except OSError:
                return
            if data.strip(b"\r\n"):
                self._dispatch(data, "udp", addr, lambda b, a=addr: self._udp.sendto(b, a))

    def _accept_loop(self) -> None:
        while not self._closing:
            try:
                conn, addr = self._listener.accept()
            except OSError:
                return
            self._conns.append(conn)
            self._spawn(self._stream_loop, conn, addr)

    def _stream_loop(self, conn: socket.socket, addr) -> None:
        buf = b""
        while not self._closing:
            try:
                chunk = conn.recv(65536)
            except OSError:
                return
            if not chunk:
                return
            messages, buf = split_stream(buf + chunk)
            for data in messages:
                self._dispatch(data, "tcp", addr, conn.sendall)

    def _connection(self) -> socket.socket:
        if self._conn is None:
            self._conn = socket.create_connection(self.registrar, timeout=self.timeout)
            self._conn.settimeout(None)
            self._spawn(self._stream_loop, self._conn, self.registrar)
        return self._conn

    def _send_to_registrar(self, data: bytes) -> None:
        self.sent.append(data)
        if self.transport == "udp":
            self._udp.sendto(data, self.registrar)
        else:
            self._connection().sendall(data)

    # ---------------------------------------------------------------- incoming

    def _dispatch(self, data: bytes, transport: str, addr, reply: Callable[[bytes], None]) -> None:
        try:
            msg = parse(data, transport, addr)
        except (SipError, ValueError):
            return  # not SIP: a test UA drops it, as a phone would
        if not msg.is_request:
            branch = _branch(msg.header("via") or "")
            with self._lock:
                q = self._pending.get(branch)
            if q is not None:
                q.put(msg)
            return
        with self._cond:
            self.requests_seen.append(msg)
        if msg.method == "ACK":
            return
        key = (msg.header("call-id") or "", msg.header("cseq") or "", _branch(msg.header("via") or ""))
        if key in self._answered:  # a retransmission: same answer, not kept twice
            reply(self._answered[key])
            return
        if msg.method == "MESSAGE":
            code = self.answer_code
            with self._cond:
                self.received.append(msg)
                self._cond.notify_all()
        elif msg.method == "OPTIONS":
            code = 200
            with self._cond:
                self.options_received.append(msg)
                self._cond.notify_all()
        elif msg.method == "NOTIFY":
            code = 200
        else:
            code = 501
        answer = self._response(msg, code)
        self._answered[key] = answer
        reply(answer)

    def _response(self, req: SipMessage, code: int) -> bytes:
        reasons = {200: "OK", 202: "Accepted", 404: "Not Found", 480: "Temporarily Unavailable",
                   486: "Busy Here", 501: "Not Implemented", 503: "Service Unavailable"}
        lines = [f"SIP/2.0 {code} {reasons.get(code, 'Whatever')}"]
        for via in req.header_all("via"):
            lines.append(f"Via: {via}")
        to = req.header("to") or ""
        if ";tag=" not in to:
            to += f";tag={self._token()}"
        lines += [f"From: {req.header('from')}", f"To: {to}", f"Call-ID: {req.header('call-id')}",
                  f"CSeq: {req.header('cseq')}", f"User-Agent: {self.user_agent}"]
        if req.method == "OPTIONS":
            lines += ["Allow: MESSAGE, OPTIONS, NOTIFY", "Accept: text/plain"]
        lines.append("Content-Length: 0")
        return ("\r\n".join(lines) + "\r\n\r\n").encode()

    def wait_message(self, predicate: Optional[Callable[[SipMessage], bool]] = None,
                     timeout: Optional[float] = None, start: int = 0) -> SipMessage:
        """The first received MESSAGE (index >= start) that satisfies predicate."""
        return self._wait(self.received, predicate, timeout, start)

    def wait_options(self, timeout: Optional[float] = None, start: int = 0) -> SipMessage:
        return self._wait(self.options_received, None, timeout, start)

    def _wait(self, items: List[SipMessage], predicate, timeout, start) -> SipMessage:
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        with self._cond:
            while True:
                for m in items[start:]:
                    if predicate is None or predicate(m):
                        return m
                left = deadline - time.monotonic()
                if left <= 0:
                    raise SipError(f"{self.user}: nothing arrived in time")
                self._cond.wait(left)

    # ---------------------------------------------------------------- outgoing

    @property
    def contact_uri(self) -> str:
        tp = ";transport=tcp" if self.transport == "tcp" else ""
        return f"sip:{self.user}@{self.local_host}:{self.local_port}{tp}"

    @property
    def aor(self) -> str:
        return f"sip:{self.user}@{self.domain}"

    def _via(self, branch: str) -> str:
        return f"SIP/2.0/{self.transport.upper()} {self.local_host}:{self.local_port};rport;branch={branch}"

    def request(self, method: str, uri: str, headers: Sequence[Tuple[str, str]], body: bytes = b"",
                *, call_id: Optional[str] = None, from_tag: Optional[str] = None,
                from_header: Optional[str] = None, to_header: Optional[str] = None,
                timeout: Optional[float] = None) -> SipMessage:
        """Send a request and return its final response; a 401/407 is answered once with
        digest credentials (a new CSeq, the same Call-ID and From tag)."""
        call_id = call_id or self._token() + "@test-ua"
        from_tag = from_tag or self._token()
        from_header = (from_header or self._from_value()) + f";tag={from_tag}"
        to_header = to_header or f"<{self.aor}>"
        auth: List[Tuple[str, str]] = []
        for attempt in range(2):
            with self._lock:
                self._cseq += 1
                cseq = self._cseq
            branch = "z9hG4bK" + self._token()
            lines = [f"{method} {uri} SIP/2.0", f"Via: {self._via(branch)}", "Max-Forwards: 70",
                     f"From: {from_header}", f"To: {to_header}", f"Call-ID: {call_id}",
                     f"CSeq: {cseq} {method}", f"User-Agent: {self.user_agent}"]
            lines += [f"{k}: {v}" for k, v in list(headers) + auth]
            lines.append(f"Content-Length: {len(body)}")
            data = ("\r\n".join(lines) + "\r\n\r\n").encode() + body
            response = self._transact(branch, data, timeout)
            if response.status in (401, 407) and attempt == 0 and self.password is not None:
                hname = "WWW-Authenticate" if response.status == 401 else "Proxy-Authenticate"
                challenges = response.header_all(hname)
                challenge = _pick_challenge(challenges)
                aname = "Authorization" if response.status == 401 else "Proxy-Authorization"
                auth = [(aname, digest_authorization(challenge, method, uri, self.user, self.password))]
                continue
            return response
        return response

    def _transact(self, branch: str, data: bytes, timeout: Optional[float]) -> SipMessage:
        q: "queue.Queue[SipMessage]" = queue.Queue()
        with self._lock:
            self._pending[branch] = q
        try:
            deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
            interval = T1
            self._send_to_registrar(data)
            resend_at = time.monotonic() + interval
            provisional = False
            while True:
                now = time.monotonic()
                if now >= deadline:
                    raise SipError(f"{self.user}: no final response to {data.split(b' ', 1)[0]!r}")
                wait = min(deadline, resend_at) - now if (self.transport == "udp" and not provisional) \
                    else deadline - now
                try:
                    response = q.get(timeout=max(wait, 0.001))
                except queue.Empty:
                    if self.transport == "udp" and not provisional and time.monotonic() >= resend_at:
                        self._send_to_registrar(data)
                        interval = min(interval * 2, 4.0)
                        resend_at = time.monotonic() + interval
                    continue
                if response.status < 200:
                    provisional = True
                    continue
                return response
        finally:
            with self._lock:
                self._pending.pop(branch, None)

    def _from_value(self, display_name: Optional[str] = None) -> str:
        name = display_name if display_name is not None else self.display_name
        return (quote_display(name) + " " if name is not None else "") + f"<{self.aor}>"

    def register(self, expires: int = 300, timeout: Optional[float] = None) -> SipMessage:
        """REGISTER the Contact (``expires=0``: remove it).  Returns the final response."""
        return self.request(
            "REGISTER", f"sip:{self.registrar[0]}:{self.registrar[1]}",
            [("Contact", f"<{self.contact_uri}>"), ("Expires", str(expires)),
             ("Allow", "MESSAGE, OPTIONS, NOTIFY")],
            call_id=self._reg_call_id, from_tag=self._reg_tag, from_header=f"<{self.aor}>",
            timeout=timeout)

    def unregister(self, timeout: Optional[float] = None) -> SipMessage:
        return self.register(0, timeout)

    def send_message(self, to: str, body: Union[bytes, str], *, display_name: Optional[str] = None,
                     from_header: Optional[str] = None,
                     content_type: str = "text/plain;charset=UTF-8",
                     headers: Sequence[Tuple[str, str]] = (),
                     timeout: Optional[float] = None) -> SipMessage:
        """Send a MESSAGE to ``to`` (a user part, sent to the registrar's address, or a
        whole ``sip:`` URI).  ``from_header`` replaces the whole From value (without tag)."""
        if isinstance(body, str):
            body = body.encode("utf-8")
        uri = to if to.startswith("sip:") else f"sip:{to}@{self.registrar[0]}:{self.registrar[1]}"
        to_header = f"<{uri if to.startswith('sip:') else f'sip:{to}@{self.domain}'}>"
        return self.request("MESSAGE", uri, [("Content-Type", content_type)] + list(headers), body,
                            from_header=from_header or self._from_value(display_name),
                            to_header=to_header, timeout=timeout)

    def options(self, timeout: Optional[float] = None) -> SipMessage:
        return self.request("OPTIONS", f"sip:{self.registrar[0]}:{self.registrar[1]}",
                            [("Accept", "application/sdp")], timeout=timeout)


def _branch(via: str) -> str:
    m = re.search(r";\s*branch=([^;,\s]+)", via)
    return m.group(1) if m else ""


def _pick_challenge(challenges: List[str]) -> str:
    """The strongest challenge we can answer (Asterisk 22 may offer SHA-256 and MD5)."""
    if not challenges:
        raise SipError("401/407 without a challenge")
    ranked = sorted(challenges, key=lambda c: {"SHA-256": 0, "MD5": 1}.get(
        _params(c.split(None, 1)[1] if " " in c else c).get("algorithm", "MD5").upper(), 9))
    return ranked[0]
