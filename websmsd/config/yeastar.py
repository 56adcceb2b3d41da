"""[yeastar]: Yeastar TG GSM gateways (TG100/200/400/800/1600), one interface per GSM port.

    [yeastar]
    host      = 192.168.5.150
    ami_port  = 5038
    http_port = 80
    username  = apiuser
    secret    = Api-S3cret
    transport = ami                  ; ami (default) | http, for sending
    port   [tg1] = 1                 ; GSM port 1 (AMI span 2)
    number [tg1] = +79991234567      ; the port's own number: MESSAGE(to) of its SMS
    port   [tg2] = 2
    number [tg2] = +79991234568
    host   [tg3] = 192.168.5.151     ; a port of a second TG
    port   [tg3] = 1
    number [tg3] = +79991234569

Every key may be plain (every port) or indexed (one port).  Ports with the same host and
ami_port are one TG: websmsd keeps one AMI session per TG (a second session with events
on would receive every SMS twice), so the keys of that session (username, secret and the
timers of the link) must agree between its ports.
"""

from __future__ import annotations

import re
from typing import Dict, List, Optional, Tuple

from websmsd.config.ini import IniSection
from websmsd.config.reader import (_Context, _interface_names, _Key, _keys, _Read,
                                   _read_section, _reads_for)
from websmsd.config.values import (_HOST_NAME, Note, _boolean, _choice, _duration, _is_ip,
                                   _numbers, _optional_text, _single_line, _text)
from websmsd.record import frozen

NAME = "yeastar"
KIND = "yeastar"

TRANSPORTS = ("ami", "http")
# Yeastar asks for at most one SMS per 10 seconds per port, on AMI and HTTP alike.
YEASTAR_INTERVAL = 10.0
MAX_PORT = 128  # as websmsd.yeastar.tg: a TG1600 has 16, the margin covers stacked units


def _host(text: str, note: Note) -> str:
    text = _single_line(text).strip()
    if text.startswith("[") and text.endswith("]"):
        text = text[1:-1]
    if "://" in text or "/" in text:
        raise ValueError(f"{text!r}: give the TG's address or name only (no http://, no path)")
    if not text or not (_is_ip(text) or _HOST_NAME.fullmatch(text)):
        raise ValueError(f"{text!r} is not a host name or IP address")
    return text


def _tcp_port(text: str, note: Note) -> int:
    if not re.fullmatch(r"[0-9]{1,5}", text) or not 1 <= int(text) <= 65535:
        raise ValueError(f"{text!r} is not a TCP port (1-65535)")
    return int(text)


def _gsm_port(text: str, note: Note) -> int:
    if not re.fullmatch(r"[0-9]{1,3}", text) or not 1 <= int(text) <= MAX_PORT:
        raise ValueError(f"{text!r} is not a GSM port number (1, 2... as the TG's web"
                         " interface numbers them)")
    return int(text)


def _interval(text: str, note: Note) -> float:
    if re.fullmatch(r"0+(\.0*)?[ \t]*[smhd]?", text.strip()):
        return 0.0
    return _duration(text, note)


def _port_numbers(text: str, note: Note) -> Tuple[str, ...]:
    numbers = _numbers(text, note)
    if not numbers:
        raise ValueError("must not be empty: the port's own number (SMS to it reach the PBX"
                         " with it as MESSAGE(to))")
    return numbers


@frozen
class YeastarPort:
    """One GSM port of a TG: an interface (route yeastar:<name>)."""

    name: str
    host: str = ""
    ami_port: int = 5038
    http_port: int = 80
    username: str = ""
    secret: str = ""
    transport: str = "ami"
    port: int = 0
    number: Tuple[str, ...] = ()
    http_account: Optional[str] = None  # WebCGI account; unset: username
    http_password: Optional[str] = None  # WebCGI password; unset: secret
    http_tls: bool = False
    http_timeout: float = 15.0
    min_interval: float = YEASTAR_INTERVAL
    send_timeout: float = 60.0
    reassembly_timeout: float = 300.0
    ping_interval: float = 30.0
    action_timeout: float = 10.0
    ussd_timeout: float = 30.0
    status_interval: float = 60.0
    login_retry: float = 30.0

    @property
    def span(self) -> int:
        """The port's AMI span: the port number plus one (port 1 is span 2)."""
        return self.port + 1

    @property
    def own_number(self) -> str:
        """The number SMS to this port are addressed to (the first `number`), compact."""
        return "".join(c for c in self.number[0] if c.isdigit() or c == "+") if self.number else ""

    @property
    def gateway(self) -> Tuple[str, int]:
        """Which TG (one AMI session) the port belongs to."""
        return (self.host.lower(), self.ami_port)

    @property
    def account(self) -> str:
        return self.http_account or self.username

    @property
    def password(self) -> str:
        return self.http_password or self.secret


@frozen
class YeastarSettings:
    interfaces: Tuple[YeastarPort, ...] = ()  # one per GSM port, in file order

    def gateways(self) -> Dict[Tuple[str, int], List[YeastarPort]]:
        """The ports by TG ((host, ami_port)), in file order."""
        found: Dict[Tuple[str, int], List[YeastarPort]] = {}
        for p in self.interfaces:
            found.setdefault(p.gateway, []).append(p)
        return found


KEYS = _keys(
    _Key("host", _host),
    _Key("ami_port", _tcp_port),
    _Key("http_port", _tcp_port),
    _Key("username", _text),
    _Key("secret", _text),
    _Key("transport", _choice(*TRANSPORTS)),
    _Key("port", _gsm_port),
    _Key("number", _port_numbers),
    _Key("http_account", _optional_text),
    _Key("http_password", _optional_text),
    _Key("http_tls", _boolean, reads_booleans=True),
    _Key("http_timeout", _duration),
    _Key("min_interval", _interval),
    _Key("send_timeout", _duration),
    _Key("reassembly_timeout", _duration),
    _Key("ping_interval", _duration),
    _Key("action_timeout", _duration),
    _Key("ussd_timeout", _duration),
    _Key("status_interval", _duration),
    _Key("login_retry", _duration),
)

_REQUIRED = {
    "host": "the TG's address",
    "username": "the account of the TG's SMS API (SMS > API Settings)",
    "secret": "the password of that account",
    "port": "the GSM port, 1, 2... as the TG's web interface numbers them",
    "number": "the port's own number (SMS to it reach the PBX with it as MESSAGE(to))",
}
# One AMI session per TG: these belong to the session, so its ports must agree.
_SESSION_KEYS = ("username", "secret", "ping_interval", "action_timeout",
                 "reassembly_timeout", "status_interval", "login_retry")


def read(section: Optional[IniSection], context: _Context) -> YeastarSettings:
    if section is None:
        return YeastarSettings()
    settings = _read_section(section, context, KEYS)
    names = _interface_names(settings)
    ports: List[YeastarPort] = []
    reads_of: Dict[str, Dict[str, _Read]] = {}
    for name in list(names) or [""]:
        reads = _reads_for(settings, name)
        for key, why in _REQUIRED.items():
            if key not in reads:
                label = f"{key}[{name}]" if name else key
                indexed = settings[key].indexed if key in settings else None
                if indexed:
                    # PHP ini: `key[x] = ...` after `key = ...` replaces the plain value.
                    other = next(iter(indexed))
                    why += (f"; once one port has its own {key} ({key} [{other}] = ...), a"
                            f" plain {key} = ... no longer counts (PHP ini replaces it): give"
                            f" every port its own, as {label} = ...")
                raise context.error(names.get(name, section.line), label,
                                    f"missing: {why}{_of(name)}")
        reads_of[name] = reads
        ports.append(YeastarPort(name=name, **{k: r.value for k, r in reads.items()}))
    _check_gateways(ports, reads_of, context)
    short = {reads_of[p.name]["min_interval"] for p in ports if p.min_interval < YEASTAR_INTERVAL}
    for r in sorted(short, key=lambda r: r.line):  # a plain value: one notice, not one per port
        context.warn(r.line, r.label, f"{r.value:g} s: Yeastar asks for at most one SMS per"
                     f" {YEASTAR_INTERVAL:g} s per port")
    return YeastarSettings(tuple(ports))


def _of(name: str) -> str:
    return f" (port {name!r})" if name else ""


def _check_gateways(ports: List[YeastarPort], reads_of: Dict[str, Dict[str, _Read]],
                    context: _Context) -> None:
    first: Dict[Tuple[str, int], YeastarPort] = {}
    used: Dict[Tuple[str, int, int], str] = {}
    for p in ports:
        reads = reads_of[p.name]
        where = used.get((*p.gateway, p.port))
        if where is not None:
            r = reads["port"]
            raise context.error(r.line, r.label, f"port {p.port} of the TG at {p.host} is"
                                f" already interface {where!r}: one interface per GSM port")
        used[(*p.gateway, p.port)] = p.name
        other = first.setdefault(p.gateway, p)
        if other is p:
            continue
        for key in _SESSION_KEYS:
            if getattr(p, key) != getattr(other, key):
                r = reads.get(key) or reads_of[other.name].get(key) or reads["host"]
                values = ("" if key == "secret" else
                          f" ({getattr(p, key)!r}, {getattr(other, key)!r})")
                raise context.error(
                    r.line, r.label,
                    f"differs between {p.name!r} and {other.name!r}{values}, ports of the same"
                    f" TG ({p.host}:{p.ami_port}): websmsd keeps one AMI session per TG, so"
                    f" {key} must be the same for all its ports")


def interfaces(settings: YeastarSettings) -> List[Tuple[str, str, Tuple[str, ...], bool]]:
    # The TG takes the number as the network does: punctuation goes, the digits stay.
    return [(p.name, KIND, p.number, True) for p in settings.interfaces]
