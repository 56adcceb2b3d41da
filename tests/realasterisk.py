"""Run a real, installed Asterisk 22 for tests: PJSIP phones, AMI, call files, FastAGI.

Nothing here builds Asterisk: it uses an installation at ``/opt/asterisk`` (or the
binary named by ``$WEBSMSD_ASTERISK``) and skips when there is none (`skip_reason()`).

A `RealAsterisk` runs from a scratch directory of its own: its ``asterisk.conf`` (given
with ``-C``) points every directory there (config, spool, db, logs, control socket), so
it needs no root and touches nothing of a system Asterisk.  It listens on 127.0.0.1
only, on ports that were free when it started: SIP over UDP and TCP (one port number),
and AMI.  The generated configuration is the one websmsd's README asks users for:

* ``pjsip.conf``: one endpoint/aor/auth per `Phone`, digest auth,
  ``endpoint_identifier_order = username,ip,anonymous`` (all phones share 127.0.0.1),
  qualify off unless ``qualify_frequency`` is given.
* ``manager.conf``: the user ``websmsd`` with the least rights for MessageSend,
  PJSIPShowContacts and the contact events (``read = system``: ContactStatus/PeerStatus;
  ``write = system,message``: PJSIPShowContacts is a ``system`` action, MessageSend a
  ``message`` one; an action runs when the user's write classes share one class with
  it).  Beware that ``write = system`` also allows GetConfig (every password in
  pjsip.conf), Reload, ModuleLoad, DBPut...; ``write = message`` alone suffices when
  websmsd relies on the events and on MessageSend failing at once for a phone without
  contact.  Also a ``harness`` user with every right, for the tests themselves.
* ``extensions.conf``: the outbound context (every phone's message context) runs
  ``AGI(agi://<agi_host>:<agi_port>/websms,${EXTEN},${MESSAGE(from)},
  ${QUOTE(${MESSAGE(body)})},${WEBSMS_INDEX})`` for numbers, with WEBSMS_INDEX taken from
  an ``X-WebSMS-Index`` header of the SIP MESSAGE when it has one; the inbound context
  (the call files' ``Context``) URIDECODEs ``MESSAGE(body)`` when ``MESSAGE_ENCODE`` is
  ``rfc3986`` and does ``MessageSend(pjsip:<phone>,${MESSAGE(from)})``; the channel
  context (``Local/<to>@websms-answer``) answers for the phones' names and numbers only,
  so a call file to any other number ends ``Status: Expired``.  Every step logs a
  ``HARNESS-...`` verbose line (`wait_log`): ``HARNESS-OUTBOUND``, ``HARNESS-AGI-RESULT
  agistatus=… status=… id=… reason=…``, ``HARNESS-INBOUND``, ``HARNESS-SEND-STATUS``.

Usage::

    with RealAsterisk(phones=[Phone("alice"), Phone("bob", numbers=("+15015550199",))],
                      agi_port=agi_port) as ast:
        ast.sip_port, ast.ami_port, ast.outgoing, ast.outgoing_done, ast.staging
        ast.cli("pjsip show contacts")
        with ast.ami() as ami:              # logged in as the harness user
            ami.action("MessageSend", To="pjsip:bob", From="+1501", Body="hi")
"""

import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, Iterable, List, Optional, Sequence, Tuple, Union

ASTERISK = os.environ.get("WEBSMSD_ASTERISK", "/opt/asterisk/sbin/asterisk")

# The modules a websmsd installation uses, and what they need.  Loading only these
# (autoload = no) boots in about a second and binds no port but ours.
MODULES = (
    "res_sorcery_config.so", "res_sorcery_memory.so", "res_sorcery_astdb.so",
    "res_sorcery_memory_cache.so", "res_pjproject.so", "res_pjsip.so",
    "res_pjsip_session.so", "chan_pjsip.so", "res_pjsip_registrar.so",
    "res_pjsip_authenticator_digest.so", "res_pjsip_outbound_authenticator_digest.so",
    "res_pjsip_endpoint_identifier_user.so", "res_pjsip_endpoint_identifier_ip.so",
    "res_pjsip_endpoint_identifier_anonymous.so", "res_pjsip_messaging.so",
    "res_pjsip_logger.so", "res_pjsip_pubsub.so", "res_pjsip_nat.so",
    "pbx_config.so", "pbx_spool.so", "res_speech.so", "res_agi.so", "app_verbose.so", "app_userevent.so",
    "func_uri.so", "func_strings.so", "func_base64.so", "func_logic.so", "func_cut.so",
    "func_callerid.so", "func_pjsip_contact.so", "func_pjsip_aor.so",
    "func_pjsip_endpoint.so", "res_pjsip_caller_id.so", "app_exec.so",
    "res_manager_devicestate.so",
)


def skip_reason() -> Optional[str]:
    """Why real-Asterisk tests cannot run here, or None when they can."""
    if not os.access(ASTERISK, os.X_OK):
        return (f"no Asterisk at {ASTERISK}: build Asterisk 22 as /work/shared/asterisk-build.md "
                "says (or set WEBSMSD_ASTERISK) to run the real-Asterisk tests")
    return None


class AsteriskError(Exception):
    """Asterisk did not start, did not answer, or an expected thing never happened."""


@dataclass
class Phone:
    """A PJSIP endpoint (with aor and digest auth of the same name) for a test phone.

    ``numbers`` are extra extensions of the inbound context that deliver to this phone
    (its own name always does).  ``from_number``, when set, makes the dialplan replace
    MESSAGE(from) with it before calling the AGI, as a PBX that maps phones to DIDs
    would.
    """

    name: str
    password: Optional[str] = None
    numbers: Tuple[str, ...] = ()
    from_number: Optional[str] = None
    max_contacts: int = 1
    # The endpoint's (message) context, when not the harness's own outbound dialplan:
    # e.g. a context of `extra_dialplan` holding README's dialplan as written.
    context: Optional[str] = None

    def secret(self) -> str:
        return self.password if self.password is not None else f"pw-{self.name}-7Qx"


DEFAULT_PHONES = (Phone("alice"), Phone("bob"), Phone("john.doe"))


def free_port(kinds: Sequence[int] = (socket.SOCK_STREAM,), host: str = "127.0.0.1") -> int:
    """A port number free right now for every socket kind given (UDP and TCP alike)."""
    for _ in range(50):
        probe = socket.socket(socket.AF_INET, kinds[0])
        try:
            probe.bind((host, 0))
            port = probe.getsockname()[1]
            others = []
            try:
                for kind in kinds[1:]:
                    s = socket.socket(socket.AF_INET, kind)
                    others.append(s)
                    s.bind((host, port))
            except OSError:
                continue
            finally:
                for s in others:
                    s.close()
            return port
        finally:
            probe.close()
    raise AsteriskError("no free port found")


# --------------------------------------------------------------------------- AMI


class Packet:
    """One AMI packet: its ``Key: Value`` lines in order (keys may repeat)."""

    def __init__(self, lines: List[Tuple[str, str]], raw: bytes):
        self.lines = lines
        self.raw = raw

    def get(self, key: str, default: Optional[str] = None) -> Optional[str]:
        key = key.lower()
        for k, v in self.lines:
            if k.lower() == key:
                return v
        return default

    def __getitem__(self, key: str) -> str:
        value = self.get(key)
        if value is None:
            raise KeyError(key)
        return value

    def __contains__(self, key: str) -> bool:
        return self.get(key) is not None

    def getall(self, key: str) -> List[str]:
        key = key.lower()
        return [v for k, v in self.lines if k.lower() == key]

    @property
    def event(self) -> Optional[str]:
        return self.get("Event")

    def __repr__(self) -> str:
        return f"Packet({self.lines!r})"


class AMI:
    """A small blocking AMI client (the tests' own, independent of websmsd's).

    A reader thread splits the stream into packets; `action` sends one action and
    returns its Response, `action_list` also collects the events of an EventList, and
    `wait_event` waits for an event.  Everything received is kept in `packets` and the
    raw bytes both ways in `transcript` (for findings).
    """

    def __init__(self, host: str, port: int, timeout: float = 10.0):
        self.timeout = timeout
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.sock.settimeout(None)
        self.transcript: List[Tuple[str, bytes]] = []
        self.packets: List[Packet] = []
        self.closed = False
        self._cond = threading.Condition()
        self._next_id = 0
        self.banner = self._read_banner()
        self._reader = threading.Thread(target=self._read_loop, daemon=True)
        self._reader.start()

    def _read_banner(self) -> str:
        data = b""
        self.sock.settimeout(self.timeout)
        while not data.endswith(b"\r\n"):
            chunk = self.sock.recv(1)
            if not chunk:
                raise AsteriskError("AMI closed before its banner")
            data += chunk
        self.sock.settimeout(None)
        self.transcript.append(("in", data))
        return data.decode().strip()

    def _read_loop(self) -> None:
        buf = b""
        while True:
            try:
                chunk = self.sock.recv(65536)
            except OSError:
                chunk = b""
            if not chunk:
                with self._cond:
                    self.closed = True
                    self._cond.notify_all()
                return
            self.transcript.append(("in", chunk))
            buf += chunk
            while b"\r\n\r\n" in buf:
                raw, buf = buf.split(b"\r\n\r\n", 1)
                lines = []
                for line in raw.decode("utf-8", "replace").split("\r\n"):
                    key, sep, value = line.partition(":")
                    lines.append((key, value[1:] if value.startswith(" ") else value) if sep
                                 else ("", line))
                with self._cond:
                    self.packets.append(Packet(lines, raw + b"\r\n\r\n"))
                    self._cond.notify_all()

    def send_raw(self, data: bytes) -> None:
        self.transcript.append(("out", data))
        self.sock.sendall(data)

    def send(self, action: str, fields: Union[Dict[str, str], Iterable[Tuple[str, str]], None] = None,
             **kw: str) -> str:
        """Send an action; returns its ActionID.  Values must not hold CR/LF."""
        self._next_id += 1
        action_id = f"h{self._next_id}"
        pairs = [("Action", action), ("ActionID", action_id)]
        if fields:
            pairs += list(fields.items()) if isinstance(fields, dict) else list(fields)
        pairs += list(kw.items())
        for k, v in pairs:
            if "\r" in str(v) or "\n" in str(v):
                raise ValueError(f"CR/LF in AMI field {k}")
        self.send_raw("".join(f"{k}: {v}\r\n" for k, v in pairs).encode() + b"\r\n")
        return action_id

    def wait_for(self, predicate: Callable[[Packet], bool], timeout: Optional[float] = None,
                 start: int = 0) -> Packet:
        """The first packet (index >= start) that satisfies predicate."""
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        with self._cond:
            while True:
                for p in self.packets[start:]:
                    if predicate(p):
                        return p
                start = len(self.packets)
                left = deadline - time.monotonic()
                if self.closed or left <= 0:
                    raise AsteriskError("AMI: nothing matched" + (" (closed)" if self.closed else ""))
                self._cond.wait(left)

    def wait_closed(self, timeout: Optional[float] = None) -> bool:
        """True once the peer has closed the connection (False after timeout)."""
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        with self._cond:
            while not self.closed:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(left)
            return True

    def action(self, action: str, fields=None, timeout: Optional[float] = None, **kw: str) -> Packet:
        action_id = self.send(action, fields, **kw)
        return self.wait_for(lambda p: "Response" in p and p.get("ActionID") == action_id, timeout)

    def action_list(self, action: str, fields=None, timeout: Optional[float] = None,
                    **kw: str) -> Tuple[Packet, List[Packet]]:
        """An action answered by an EventList: (response, the list's events)."""
        action_id = self.send(action, fields, **kw)
        mine = lambda p: p.get("ActionID") == action_id  # noqa: E731
        response = self.wait_for(lambda p: mine(p) and "Response" in p, timeout)
        if response.get("EventList") != "start":
            return response, []
        self.wait_for(lambda p: mine(p) and p.get("EventList") == "Complete", timeout)
        with self._cond:
            items = [p for p in self.packets if mine(p) and "Event" in p
                     and p.get("EventList") != "Complete"]
        return response, items

    def wait_event(self, name: str, timeout: Optional[float] = None, start: int = 0,
                   **match: str) -> Packet:
        """The first event called name whose fields equal match (index >= start)."""
        return self.wait_for(lambda p: p.event == name and all(p.get(k) == v for k, v in match.items()),
                             timeout, start)

    def mark(self) -> int:
        """Index for `wait_event(start=...)`: only packets after this call."""
        with self._cond:
            return len(self.packets)

    def login(self, username: str, secret: str, events: str = "on") -> Packet:
        return self.action("Login", Username=username, Secret=secret, Events=events)

    def close(self) -> None:
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass  # already gone: Asterisk closes after a failed login or Logoff
        self.sock.close()
        self._reader.join(2)

    def __enter__(self) -> "AMI":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# --------------------------------------------------------------------------- Asterisk


@dataclass
class AmiUser:
    name: str
    secret: str
    read: str
    write: str


class RealAsterisk:
    """One Asterisk process with a generated configuration (see the module docstring).

    Parameters that point it at a websmsd under test: ``agi_host``/``agi_port`` (the
    FastAGI the outbound dialplan calls) and ``spool_dir`` (pbx_spool reads
    ``<spool_dir>/outgoing`` and archives into ``<spool_dir>/outgoing_done``; the
    harness also makes ``<spool_dir>/staging``).  ``extra_dialplan``/``extra_pjsip``
    are appended to the generated files, ``aor_extra`` to every phone's aor section
    (e.g. ``"minimum_expiration = 1"``), ``global_extra`` to the ``[global]`` section.
    """

    SIP_HOST = "127.0.0.1"
    # For a websmsd under test: [astqueue] channel_context / context.
    CHANNEL_CONTEXT = "websms-answer"
    INBOUND_CONTEXT = "websms-in"
    OUTBOUND_CONTEXT = "websms-out"  # every phone's message context

    def __init__(self, phones: Iterable[Phone] = DEFAULT_PHONES, *, agi_host: str = "127.0.0.1",
                 agi_port: int = 4573, agi_path: str = "websms", spool_dir: Optional[str] = None,
                 workdir: Optional[str] = None, qualify_frequency: int = 0,
                 websmsd_read: str = "system", websmsd_write: str = "system,message",
                 websmsd_secret: str = "websmsd-secret", extra_dialplan: str = "",
                 extra_pjsip: str = "", aor_extra: str = "", global_extra: str = "",
                 boot_timeout: float = 30.0, binary: str = ASTERISK, keep_workdir: bool = False):
        self.phones = list(phones)
        self.agi_host, self.agi_port, self.agi_path = agi_host, agi_port, agi_path
        self.qualify_frequency = qualify_frequency
        self.extra_dialplan, self.extra_pjsip = extra_dialplan, extra_pjsip
        self.aor_extra, self.global_extra = aor_extra, global_extra
        self.boot_timeout = boot_timeout
        self.binary = binary
        self.keep_workdir = keep_workdir
        # A short path: the control socket (<workdir>/run/asterisk.ctl) must fit in
        # sun_path (108 bytes), which pytest's tmp_path may not.
        self._own_workdir = workdir is None
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix="ast-"))
        self.spool_dir = Path(spool_dir) if spool_dir else self.workdir / "spool"
        self.outgoing = self.spool_dir / "outgoing"
        self.outgoing_done = self.spool_dir / "outgoing_done"
        self.staging = self.spool_dir / "staging"
        self.etc = self.workdir / "etc"
        self.run_dir = self.workdir / "run"
        self.log_dir = self.workdir / "log"
        self.log_path = self.log_dir / "full"
        self.conf_path = self.etc / "asterisk.conf"
        self.websmsd_user = AmiUser("websmsd", websmsd_secret, websmsd_read, websmsd_write)
        self.harness_user = AmiUser("harness", "harness-secret", "all", "all")
        self.sip_port = 0
        self.ami_port = 0
        self.proc: Optional[subprocess.Popen] = None
        self._amis: List[AMI] = []

    # ---------------------------------------------------------------- configuration

    def phone(self, name: str) -> Phone:
        for p in self.phones:
            if p.name == name:
                return p
        raise KeyError(name)

    def _asterisk_conf(self) -> str:
        w = self.workdir
        data = Path(self.binary).resolve().parent.parent / "var" / "lib" / "asterisk"
        mod = Path(self.binary).resolve().parent.parent / "lib" / "asterisk" / "modules"
        return f"""[directories]
astetcdir => {self.etc}
astmoddir => {mod}
astvarlibdir => {w}/lib
astdbdir => {w}/lib
astkeydir => {w}/lib
astdatadir => {data}
astagidir => {w}/agi-bin
astspooldir => {self.spool_dir}
astrundir => {self.run_dir}
astlogdir => {self.log_dir}
astcachedir => {w}/cache
astsbindir => {Path(self.binary).resolve().parent}

[options]
verbose = 5
debug = 0
nocolor = yes
"""

    def _modules_conf(self) -> str:
        return "[modules]\nautoload = no\n" + "".join(f"load = {m}\n" for m in MODULES)

    @staticmethod
    def _logger_conf() -> str:
        return """[general]
dateformat = %F %T.%3q

[logfiles]
full => notice,warning,error,verbose
"""

    def _pjsip_conf(self) -> str:
        out = [f"""[global]
type = global
endpoint_identifier_order = username,ip,anonymous
{self.global_extra}
[transport-udp]
type = transport
protocol = udp
bind = {self.SIP_HOST}:{self.sip_port}

[transport-tcp]
type = transport
protocol = tcp
bind = {self.SIP_HOST}:{self.sip_port}
"""]
        for p in self.phones:
            context = p.context or (f"websms-from-{p.name}" if p.from_number else "websms-out")
            out.append(f"""
[{p.name}]
type = endpoint
context = {context}
message_context = {context}
disallow = all
allow = ulaw
auth = {p.name}-auth
aors = {p.name}

[{p.name}-auth]
type = auth
auth_type = userpass
username = {p.name}
password = {p.secret()}

[{p.name}]
type = aor
max_contacts = {p.max_contacts}
remove_existing = yes
qualify_frequency = {self.qualify_frequency}
{self.aor_extra}""")
        out.append(self.extra_pjsip)
        return "".join(out)

    def _manager_conf(self) -> str:
        users = "".join(f"""
[{u.name}]
secret = {u.secret}
read = {u.read}
write = {u.write}
""" for u in (self.websmsd_user, self.harness_user))
        return f"""[general]
enabled = yes
webenabled = no
port = {self.ami_port}
bindaddr = 127.0.0.1
displayconnects = yes
{users}"""

    def _extensions_conf(self) -> str:
        agi = (f"AGI(agi://{self.agi_host}:{self.agi_port}/{self.agi_path},${{EXTEN}},"
               "${MESSAGE(from)},${QUOTE(${MESSAGE(body)})},${WEBSMS_INDEX})")
        outbound = "".join(
            f"exten => {pattern},1,Set(WEBSMS_INDEX=${{MESSAGE_DATA(X-WebSMS-Index)}})\n"
            f" same => n,Verbose(1,HARNESS-OUTBOUND to=${{MESSAGE(to)}} from=${{MESSAGE(from)}})\n"
            f" same => n,{agi}\n"
            " same => n,Verbose(1,websms: ${WEBSMS_STATUS} ${WEBSMS_ID} ${WEBSMS_REASON})\n"
            " same => n,Verbose(1,HARNESS-AGI-RESULT agistatus=${AGISTATUS} "
            "status=${WEBSMS_STATUS} id=${WEBSMS_ID} reason=${WEBSMS_REASON})\n"
            for pattern in ("_X.", "_+X."))
        # Only the phones' own extensions: a call file to anything else cannot create its
        # Local channel and ends "Expired", as on a PBX that does not know the number.
        answer = "".join(f"exten => {ext},1,Answer()\n same => n,Wait(30)\n"
                         for p in self.phones for ext in (p.name,) + tuple(p.numbers))
        out = [f"""[general]
static = yes
writeprotect = yes

; Outbound: what websmsd's README tells users to put in the phones' message context.
[websms-out]
{outbound}
; Inbound: the call files' Channel (Local/<to>@websms-answer) answers, their
; Context/Extension (websms-in, <to>) decodes the body and sends it to the phone.
[websms-answer]
{answer}
[websms-deliver]
exten => s,1,Verbose(1,HARNESS-INBOUND phone=${{WEBSMS_PHONE}} to=${{MESSAGE(to)}} from=${{MESSAGE(from)}})
 same => n,GotoIf($["${{MESSAGE_ENCODE}}" != "rfc3986"]?send)
 same => n,Set(MESSAGE(body)=${{URIDECODE(${{MESSAGE(body)}})}})
 same => n(send),MessageSend(pjsip:${{WEBSMS_PHONE}},${{MESSAGE(from)}})
 same => n,Verbose(1,HARNESS-SEND-STATUS ${{MESSAGE_SEND_STATUS}})
 same => n,Hangup()

[websms-in]
"""]
        for p in self.phones:
            for ext in (p.name,) + tuple(p.numbers):
                out.append(f"exten => {ext},1,Set(WEBSMS_PHONE={p.name})\n"
                           f" same => n,Goto(websms-deliver,s,1)\n")
        for p in self.phones:
            if p.from_number:
                out.append(f"""
[websms-from-{p.name}]
exten => _X.,1,Set(MESSAGE(from)={p.from_number})
 same => n,Goto(websms-out,${{EXTEN}},1)
exten => _+X.,1,Set(MESSAGE(from)={p.from_number})
 same => n,Goto(websms-out,${{EXTEN}},1)
""")
        out.append("\n" + self.extra_dialplan)
        return "".join(out)

    def write_config(self) -> None:
        for d in (self.etc, self.run_dir, self.log_dir, self.workdir / "lib", self.workdir / "cache",
                  self.workdir / "agi-bin", self.outgoing, self.outgoing_done, self.staging):
            d.mkdir(parents=True, exist_ok=True)
        files = {
            "asterisk.conf": self._asterisk_conf(),
            "modules.conf": self._modules_conf(),
            "logger.conf": self._logger_conf(),
            "pjsip.conf": self._pjsip_conf(),
            "manager.conf": self._manager_conf(),
            "extensions.conf": self._extensions_conf(),
            "cdr.conf": "[general]\nenable = no\n",
            "cel.conf": "[general]\nenable = no\n",
            "indications.conf": ("[general]\ncountry = us\n\n"
                                 "[us]\ndescription = United States\ndial = 350+440\n"),
        }
        # Present but empty, so that the core does not log an error for each.
        for name in ("ccss.conf", "features.conf", "acl.conf",
                     "udptl.conf", "pjproject.conf"):
            files.setdefault(name, "")
        for name, text in files.items():
            (self.etc / name).write_text(text)

    # ---------------------------------------------------------------- life cycle

    def start(self) -> "RealAsterisk":
        reason = skip_reason() if self.binary == ASTERISK else None
        if reason:
            raise AsteriskError(reason)
        last = None
        for _ in range(3):  # a port taken between probing and binding: pick new ones
            self.sip_port = free_port((socket.SOCK_DGRAM, socket.SOCK_STREAM))
            self.ami_port = free_port()
            self.write_config()
            try:
                self._boot()
                return self
            except AsteriskError as e:
                last = e
                self._kill()
                if "bind" not in str(e).lower():
                    break
        raise last

    def _boot(self) -> None:
        if self.log_path.exists():
            self.log_path.unlink()
        self._stdout = open(self.workdir / "stdout", "wb")
        self.proc = subprocess.Popen(
            [self.binary, "-C", str(self.conf_path), "-f", "-n"],
            stdin=subprocess.DEVNULL, stdout=self._stdout, stderr=subprocess.STDOUT,
            cwd=str(self.workdir), start_new_session=True)
        deadline = time.monotonic() + self.boot_timeout
        while True:
            if self.proc.poll() is not None:
                raise AsteriskError(f"Asterisk exited with {self.proc.returncode}:\n{self.tail()}")
            text = self.log_text()
            bad = re.search(r"(?m)^.*(Unable to bind|Failed to bind|Address already in use).*$", text)
            if bad:
                raise AsteriskError(f"bind failed: {bad.group(0)}")
            if "Asterisk Ready" in text:
                failed = re.findall(r"(?m)^.*Error loading module.*$", text)
                if failed:
                    raise AsteriskError("\n".join(failed))
                break
            if time.monotonic() > deadline:
                raise AsteriskError(f"Asterisk did not boot in {self.boot_timeout}s:\n{self.tail()}")
            time.sleep(0.05)
        # Fully booted means AMI is up; make sure it also answers.
        with self.ami():
            pass

    def _kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass  # it has just exited by itself
            self.proc.wait(10)
        if getattr(self, "_stdout", None):
            self._stdout.close()

    def stop(self) -> None:
        for ami in self._amis:
            ami.close()
        self._amis.clear()
        if self.proc and self.proc.poll() is None:
            try:
                self.cli("core stop now", timeout=10)
            except (AsteriskError, subprocess.TimeoutExpired):
                self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                pass  # _kill below
        self._kill()
        if self._own_workdir and not self.keep_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> "RealAsterisk":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # ---------------------------------------------------------------- helpers

    def cli(self, command: str, timeout: float = 10) -> str:
        """Run one CLI command (asterisk -C <conf> -rx) and return its output."""
        r = subprocess.run([self.binary, "-C", str(self.conf_path), "-rx", command],
                           capture_output=True, timeout=timeout)
        if r.returncode != 0:
            raise AsteriskError(f"CLI {command!r} failed ({r.returncode}): {r.stdout!r} {r.stderr!r}")
        return r.stdout.decode("utf-8", "replace")

    def ami(self, user: Optional[AmiUser] = None, events: str = "on") -> AMI:
        """A connected AMI client, logged in (as the harness user unless told)."""
        user = user or self.harness_user
        client = AMI("127.0.0.1", self.ami_port)
        self._amis.append(client)
        answer = client.login(user.name, user.secret, events)
        if answer.get("Response") != "Success":
            raise AsteriskError(f"AMI login as {user.name} failed: {answer!r}")
        return client

    def log_text(self) -> str:
        try:
            return self.log_path.read_text("utf-8", "replace")
        except FileNotFoundError:
            return ""

    def tail(self, lines: int = 30) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

    def log_mark(self) -> int:
        """A position in the log: `wait_log(..., start=mark)` looks only after it."""
        return len(self.log_text())

    def wait_log(self, pattern: str, timeout: float = 10.0, start: int = 0) -> "re.Match":
        """Wait until the full log (from character start) matches the regex pattern."""
        rx = re.compile(pattern)
        deadline = time.monotonic() + timeout
        while True:
            m = rx.search(self.log_text(), start)
            if m:
                return m
            if time.monotonic() > deadline:
                raise AsteriskError(f"log never matched {pattern!r}:\n{self.tail()}")
            time.sleep(0.05)

    def drop_callfile(self, name: str, text: str) -> Path:
        """Write a call file the safe way (staging, then rename into outgoing)."""
        staged = self.staging / name
        staged.write_text(text, encoding="utf-8")
        target = self.outgoing / name
        os.rename(staged, target)
        return target

    def wait_archived(self, name: str, timeout: float = 20.0) -> str:
        """The text of outgoing_done/<name> once pbx_spool has finished with it
        (needs ``Archive: yes`` in the file)."""
        path = self.outgoing_done / name
        deadline = time.monotonic() + timeout
        while True:
            if path.exists():
                text = path.read_text("utf-8", "replace")
                if re.search(r"(?m)^Status: ", text):
                    return text
            if time.monotonic() > deadline:
                raise AsteriskError(f"{name} never reached outgoing_done:\n{self.tail()}")
            time.sleep(0.05)

    def callfile(self, to: str, from_: str, body_encoded: str, *, context: str = INBOUND_CONTEXT,
                 channel_context: str = CHANNEL_CONTEXT, archive: str = "yes",
                 encode: str = "rfc3986") -> str:
        """A call file in websmsd's format (body already encoded by the caller)."""
        return (f"Channel: Local/{to}@{channel_context}\n"
                f'CallerID: "" <{from_}>\n'
                "WaitTime: 45\nMaxRetries: 0\nRetryTime: 300\n"
                f"Context: {context}\nExtension: {to}\nPriority: 1\nArchive: {archive}\n"
                f"setvar: MESSAGE(to)={to}\nsetvar: MESSAGE(from)={from_}\n"
                f"setvar: MESSAGE(body)={body_encoded}\nsetvar: MESSAGE_ENCODE={encode}\n")
