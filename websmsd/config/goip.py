"""[goip]: GoIP GSM gateways, one interface per SIM (goip:sim1, goip:sim2...).

    [goip]
    smpp_host        = 192.168.1.190
    smpp_port        = 7777
    system_id        = goip              ; channel N binds as goip + two digits: goip01
    password         = secret
    enquire_link     = 30
    registered_delivery = yes
    http_url         = http://192.168.1.190   ; the web API: send.html, USSD
    http_user        = admin
    http_password    = admin
    udp_listen       = 44444             ; the GoIP "SMS server" protocol
    channel  [sim1]  = 1
    number   [sim1]  = +46701234567      ; the SIM's own number: MESSAGE(to) of its SMS
    transport[sim1]  = smpp              ; smpp (default) | udp | http
    channel  [sim2]  = 2
    number   [sim2]  = +46701234568
    transport[sim2]  = udp
    goip_id  [sim2]  = goip2             ; the line's SMS client ID on the GoIP
    goip_password[sim2] = linepass

An unindexed key applies to every SIM; `smpp_host [sim3] = ...` puts one SIM on another
gateway.  The keys of the UDP listener (udp_listen, keepalive...) are one for all SIMs.
What each SIM needs for its transport is checked here, with file:line, so that the daemon
refuses to start rather than bind with a system_id or password SMPP cannot carry.
"""

from __future__ import annotations

import re
from dataclasses import fields
from typing import Any, Dict, List, Optional, Tuple

from websmsd.config.ini import IniSection
from websmsd.config.reader import (_Context, _convert, _interface_names, _Key, _keys,
                                   _Read, _read_section, _Setting)
from websmsd.config.values import (_boolean, _choice, _duration, _numbers,
                                   _positive_integer, _single_line, Note)
from websmsd.endpoints import is_ip
from websmsd.record import frozen

NAME = "goip"
KIND = "goip"

TRANSPORTS = ("smpp", "udp", "http")
LONG_METHODS = ("payload", "udh", "sar")
# auto: GSM 03.38 (with its extension table) when the text fits it, else UCS-2.
DATA_CODINGS = ("auto", "gsm", "ucs2", "ia5", "latin1")
# What data_coding 0 ("the SMSC's default alphabet") means in a deliver_sm.
INBOUND_DC0 = ("gsm", "ia5", "latin1")

# SMPP 3.4 (5.2.1, 5.2.2): system_id is a C-octet string of at most 16 octets with its
# NUL, password of at most 9.
SYSTEM_ID_MAX = 15
PASSWORD_MAX = 8
MAX_CHANNEL = 64  # the largest GoIP has 32 lines; the web API takes up to 64


@frozen
class GoIPSim:
    """One SIM of a GoIP, as [goip] describes it (field names are the keys)."""

    name: str
    number: Tuple[str, ...] = ()
    transport: str = "smpp"
    channel: Optional[int] = None
    # SMPP (transport smpp): the GoIP is the SMSC.
    smpp_host: Optional[str] = None
    smpp_port: int = 7777
    system_id: str = "goip"
    system_id_suffix: bool = True  # bind as system_id + the two-digit channel
    password: Optional[str] = None
    enquire_link: float = 30.0
    response_timeout: float = 20.0
    registered_delivery: bool = True
    window: int = 1
    long_method: str = "payload"
    data_coding: str = "auto"
    inbound_dc0: str = "gsm"
    dest_ton: str = "auto"
    reconnect_max: float = 60.0
    bind_failed_delay: float = 300.0
    parts_timeout: float = 600.0
    resend_window: float = 600.0
    # Every transport.
    send_interval: float = 0.0
    # The web API (transport http; USSD for smpp and http SIMs).
    http_url: Optional[str] = None
    http_user: str = "admin"
    http_password: Optional[str] = None
    http_method: str = "get"
    http_timeout: float = 30.0
    http_poll: float = 2.0
    http_deadline: float = 120.0
    # The SMS-server protocol (transport udp).
    goip_id: Optional[str] = None
    goip_password: Optional[str] = None

    @property
    def bind_system_id(self) -> str:
        """The system_id this SIM binds with: goip01 for system_id goip, channel 1."""
        if self.system_id_suffix and self.channel is not None:
            return f"{self.system_id}{self.channel:02d}"
        return self.system_id


@frozen
class GoIPSettings:
    """[goip]: the SIMs, and the one UDP listener all `transport = udp` SIMs share."""

    interfaces: Tuple[GoIPSim, ...] = ()
    udp_listen: Optional[str] = None  # 44444, 192.168.1.10:44444, [::]:44444
    udp_ack: str = "reg:200"  # the keepalive answer's form: reg|req : status
    udp_length: str = "utf8"  # the unit of MSG's length: utf8 bytes | utf16 units
    keepalive: float = 30.0  # the GoIP's keepalive interval
    down_after: Optional[float] = None  # a line is down without keepalive (3 x keepalive)
    udp_resend: float = 3.0
    udp_answer_timeout: float = 15.0
    udp_deadline: float = 90.0
    ussd_timeout: float = 60.0

    @property
    def udp_address(self) -> Optional[Tuple[str, int]]:
        """(interface address, "" for every IPv4 one; port) of udp_listen."""
        return None if self.udp_listen is None else parse_udp_listen(self.udp_listen)

    @property
    def line_down_after(self) -> float:
        return self.down_after if self.down_after is not None else 3 * self.keepalive


# -- value readers -----------------------------------------------------------------------

_HOST_NAME = re.compile(r"(?!-)[A-Za-z0-9_-]{1,63}(?<!-)(?:\.(?!-)[A-Za-z0-9_-]{1,63}(?<!-))*\.?")
_PRINTABLE = re.compile(r"[\x21-\x7e]+")


def _host(text: str, note: Note) -> str:
    text = _single_line(text).strip()
    if text.startswith("[") and text.endswith("]"):
        text = text[1:-1]
    if not (is_ip(text) or _HOST_NAME.fullmatch(text)):
        raise ValueError(f"{text!r} is not a host name or IP address")
    return text


def _port(text: str, note: Note) -> int:
    if not re.fullmatch(r"[0-9]{1,5}", text) or not 1 <= int(text) <= 65535:
        raise ValueError(f"{text!r} is not a port (1-65535)")
    return int(text)


def _channel(text: str, note: Note) -> int:
    if not re.fullmatch(r"[0-9]{1,2}", text) or not 1 <= int(text) <= MAX_CHANNEL:
        raise ValueError(f"{text!r} is not a GoIP channel (line) number 1-{MAX_CHANNEL}")
    return int(text)


def _word(what: str, limit: int) -> Any:
    def read(text: str, note: Note) -> str:
        if not text:
            raise ValueError("must not be empty")
        if not _PRINTABLE.fullmatch(text):
            raise ValueError(f"{what} must be printable ASCII without blanks")
        if len(text) > limit:
            raise ValueError(f"{what} is {len(text)} characters; at most {limit}")
        return text

    return read


def _http_url(text: str, note: Note) -> Optional[str]:
    text = _single_line(text).strip()
    if not text:
        return None  # `http_url [sim4] = ""`: this SIM has no web API (no USSD)
    match = re.fullmatch(r"(https?)://([^/?#@\s]+)(/[^?#\s]*)?", text, re.IGNORECASE)
    if not match:
        raise ValueError(f"{text!r} is not an http:// or https:// URL of the GoIP"
                         " (no user or password in it: those are http_user and http_password)")
    host = match.group(2)
    if host.startswith("["):
        inner, _, rest = host[1:].partition("]")
        ok = is_ip(inner, 6) and (rest == "" or re.fullmatch(r":[0-9]{1,5}", rest))
    else:
        name, colon, port = host.partition(":")
        ok = bool(_HOST_NAME.fullmatch(name)) and (not colon or re.fullmatch(r"[0-9]{1,5}", port))
    if not ok:
        raise ValueError(f"{host!r} is not a host[:port]")
    return text


def _udp_listen(text: str, note: Note) -> Optional[str]:
    """`44444` (every IPv4 address), `192.168.1.10:44444`, `[::]:44444`, or
    `udp:44444:interface=192.168.1.10`; "" or none: no listener."""
    text = _single_line(text).strip()
    if text == "" or text.lower() == "none":
        return None
    parse_udp_listen(text)
    return text


def parse_udp_listen(text: str) -> Tuple[str, int]:
    """(interface, port) of a udp_listen value; ValueError when it is none."""
    interface = ""
    if text.lower().startswith("udp:"):
        parts = text[4:].split(":", 1)
        port_text = parts[0]
        if len(parts) == 2:
            name, equal, value = parts[1].partition("=")
            if name != "interface" or not equal:
                raise ValueError(f"{text!r}: only interface= may follow the port")
            interface = value.replace("\\:", ":")
    elif text.startswith("["):
        inner, bracket, rest = text[1:].partition("]")
        if not bracket or not rest.startswith(":"):
            raise ValueError(f"{text!r} is not [IPv6 address]:port")
        interface, port_text = inner, rest[1:]
    elif ":" in text:
        interface, _, port_text = text.rpartition(":")
    else:
        port_text = text
    if interface and not is_ip(interface):
        raise ValueError(f"{interface!r} is not an IP address to listen on")
    return interface, _port(port_text, lambda message: None)


def _udp_ack(text: str, note: Note) -> str:
    if not re.fullmatch(r"(reg|req):-?[0-9]{1,6}", text):
        raise ValueError(f"{text!r} is not reg:STATUS or req:STATUS (e.g. reg:200, req:200, reg:0)")
    return text


def _dest_ton(text: str, note: Note) -> str:
    if text.lower() == "auto" or re.fullmatch(r"[0-6]", text):
        return text.lower()
    raise ValueError(f"{text!r} is not auto or a type of number 0-6")


def _non_negative_duration(text: str, note: Note) -> float:
    if text.strip() in ("0", "0s"):
        return 0.0
    return _duration(text, note)


def _window(text: str, note: Note) -> int:
    value = _positive_integer(text, note)
    if value > 100:
        raise ValueError("at most 100 submits may be outstanding")
    return value


_ONE = "cannot be indexed: one UDP listener serves every SIM"

KEYS = _keys(
    _Key("number", _numbers),
    _Key("transport", _choice(*TRANSPORTS)),
    _Key("channel", _channel),
    _Key("smpp_host", _host),
    _Key("smpp_port", _port),
    _Key("system_id", _word("system_id", SYSTEM_ID_MAX)),
    _Key("system_id_suffix", _boolean, reads_booleans=True),
    _Key("password", _word("the SMPP password", PASSWORD_MAX)),
    _Key("enquire_link", _duration),
    _Key("response_timeout", _duration),
    _Key("registered_delivery", _boolean, reads_booleans=True),
    _Key("window", _window),
    _Key("long_method", _choice(*LONG_METHODS)),
    _Key("data_coding", _choice(*DATA_CODINGS)),
    _Key("inbound_dc0", _choice(*INBOUND_DC0)),
    _Key("dest_ton", _dest_ton),
    _Key("reconnect_max", _duration),
    _Key("bind_failed_delay", _duration),
    _Key("parts_timeout", _duration),
    _Key("resend_window", _non_negative_duration),
    _Key("send_interval", _non_negative_duration),
    _Key("http_url", _http_url),
    _Key("http_user", _word("http_user", 64)),
    _Key("http_password", _word("http_password", 64)),
    _Key("http_method", _choice("get", "post")),
    _Key("http_timeout", _duration),
    _Key("http_poll", _duration),
    _Key("http_deadline", _duration),
    _Key("goip_id", _word("goip_id", 64)),
    _Key("goip_password", _word("goip_password", 64)),
    _Key("udp_listen", _udp_listen, not_indexable=_ONE, reads_booleans=True),
    _Key("udp_ack", _udp_ack, not_indexable=_ONE),
    _Key("udp_length", _choice("utf8", "utf16"), not_indexable=_ONE),
    _Key("keepalive", _duration, not_indexable=_ONE),
    _Key("down_after", _duration, not_indexable=_ONE),
    _Key("udp_resend", _duration, not_indexable=_ONE),
    _Key("udp_answer_timeout", _duration, not_indexable=_ONE),
    _Key("udp_deadline", _duration, not_indexable=_ONE),
    _Key("ussd_timeout", _duration, not_indexable=_ONE),
)

_SECTION_FIELDS = {f.name for f in fields(GoIPSettings)} - {"interfaces"}


_SIM_FIELDS = {f.name for f in fields(GoIPSim)} - {"name"}


def read(section: IniSection, context: _Context) -> GoIPSettings:
    settings = _read_section(section, context, KEYS)
    # `smpp_host = A` then `smpp_host [sim3] = B`: A for every SIM but sim3 (PHP would
    # have dropped A; no PHP ever read [goip]).
    defaults = {name: _convert(KEYS[name], name, key.replaced, context)
                for name, key in section.keys.items()
                if key.replaced is not None and name in KEYS}
    names = _interface_names(settings)
    first_line = dict(names)
    sims = tuple(GoIPSim(name=name, **_sim_values(settings, defaults, name))
                 for name in (list(names) or [""]))
    globals_ = {name: s.plain.value for name, s in settings.items()
                if name in _SECTION_FIELDS and s.plain is not None}
    result = GoIPSettings(interfaces=sims, **globals_)
    where = _Where(settings, defaults)
    for sim in sims:
        _check_sim(sim, where, first_line.get(sim.name, section.line), result, context)
    _check_unique(sims, where, first_line, section.line, context)
    if result.udp_listen is not None and not any(s.transport == "udp" for s in sims):
        line = settings["udp_listen"].plain.line
        context.warn(line, "udp_listen", "no SIM has transport = udp: nothing listens there")
    return result


def _lookup(settings: Dict[str, _Setting], defaults: Dict[str, _Read], key: str,
            name: str) -> Optional[_Read]:
    setting = settings.get(key)
    read = setting.for_interface(name) if setting is not None else None
    return read if read is not None else defaults.get(key)


def _sim_values(settings: Dict[str, _Setting], defaults: Dict[str, _Read],
                name: str) -> Dict[str, Any]:
    values = {}
    for key in set(settings) | set(defaults):
        read = _lookup(settings, defaults, key, name) if key in _SIM_FIELDS else None
        if read is not None:
            values[key] = read.value
    return values


class _Where:
    """Where the value a SIM gets for a key was written."""

    def __init__(self, settings: Dict[str, _Setting], defaults: Dict[str, _Read]):
        self.settings, self.defaults = settings, defaults

    def __call__(self, key: str, sim: GoIPSim, fallback_line: int) -> Tuple[int, str]:
        """(line, label) of `key` for `sim`; where the SIM begins when it is not written."""
        read = _lookup(self.settings, self.defaults, key, sim.name)
        if read is None:
            return fallback_line, f"{key}[{sim.name}]" if sim.name else key
        return read.line, read.label


def _check_sim(sim: GoIPSim, where: _Where, line: int, section: GoIPSettings,
               context: _Context) -> None:
    label = f"[{sim.name}]" if sim.name else ""
    which = f" (SIM {sim.name!r})" if sim.name else ""

    def need(key: str, why: str) -> None:
        if getattr(sim, key) is None:
            at, name = where(key, sim, line)
            raise context.error(at, name, f"not set{which}: {why}")

    if sim.transport == "smpp":
        need("smpp_host", "transport smpp binds to the GoIP's SMPP port (smpp_host = its address)")
        need("password", "the SMPP password set on the GoIP's Preference page")
        if sim.system_id_suffix:
            need("channel", "the SIM's channel (line) number: it binds as system_id + two digits")
        bind_as = sim.bind_system_id
        if len(bind_as) > SYSTEM_ID_MAX:
            at, name = where("system_id", sim, line)
            raise context.error(
                at, name, f"binds as {bind_as!r}{which}: {len(bind_as)} characters, SMPP"
                f" carries at most {SYSTEM_ID_MAX}; shorten system_id")
    elif sim.transport == "http":
        need("http_url", "transport http sends through the GoIP's web API")
        need("channel", "the SIM's line number on the GoIP's web API")
    else:
        need("goip_id", "the line's SMS Client ID (Configurations -> SMS on the GoIP)")
        need("goip_password", "the line's SMS server password (Configurations -> SMS)")
        if section.udp_listen is None:
            at, name = where("transport", sim, line)
            raise context.error(at, name, f"transport udp{which} needs udp_listen (the port"
                                " the GoIP's lines send to, e.g. udp_listen = 44444)")
    if sim.http_url is not None:
        need("http_password", "the GoIP web password (admin on a new GoIP)")
        if sim.channel is None:
            need("channel", "the SIM's line number on the GoIP's web API (for USSD)")
    if not sim.number:
        context.warn(line, f"number{label}",
                     f"no number{which}: its inbound SMS go to extension {sim.name or 'goip'!r};"
                     " set number = the SIM's own number")


def _check_unique(sims: Tuple[GoIPSim, ...], where: _Where, first_line: Dict[str, int],
                  section_line: int, context: _Context) -> None:
    """Two SIMs on one bind or one line would steal each other's messages."""
    binds: Dict[tuple, GoIPSim] = {}
    lines: Dict[str, GoIPSim] = {}
    web: Dict[tuple, GoIPSim] = {}
    for sim in sims:
        if sim.transport == "smpp":
            key: tuple = (sim.smpp_host, sim.smpp_port, sim.bind_system_id)
            other = binds.setdefault(key, sim)
            what, index = "binds as", "system_id"
        elif sim.transport == "udp":
            other = lines.setdefault(sim.goip_id or "", sim)
            what, index = "has goip_id", "goip_id"
        else:
            other = web.setdefault((sim.http_url, sim.channel), sim)
            what, index = "sends through web line", "channel"
        if other is not sim:
            at, name = where(index, sim, first_line.get(sim.name, section_line))
            raise context.error(at, name,
                                f"SIMs {other.name!r} and {sim.name!r} both"
                                f" {what} the same: each SIM needs its own")


def interfaces(settings: GoIPSettings) -> List[Tuple[str, str, Tuple[str, ...], bool]]:
    # compact: a GoIP dials digits; "(070) 123-45 67" is read as 0701234567.
    return [(sim.name, KIND, sim.number, True) for sim in settings.interfaces]
