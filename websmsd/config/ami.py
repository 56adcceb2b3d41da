"""[ami]: the PBX's own Asterisk manager interface, for the phones in the loop.

    [ami]
    host     = 127.0.0.1
    port     = 5038
    username = websmsd
    secret   = amisecret

With it websmsd logs into the PBX's Asterisk: it learns which phones ([phones]) are
registered, delivers inbound SMS to them with `MessageSend` ([astqueue] delivery = ami)
and sends delivery notices ([phones] notify).  It carries nothing out of the PBX, so it
adds no interface to the outbound routes; its routes are `ami:<endpoint>`.
"""

from __future__ import annotations

import re
from typing import Any, List, Mapping, Tuple

from websmsd.config.ini import IniSection
from websmsd.config.reader import _Context, _Key, _keys, _read_section, _values_for
from websmsd.config.values import _duration
from websmsd.record import frozen

NAME = "ami"
KIND = "ami"

_NO_INDEX = "cannot be indexed: websmsd logs into one Asterisk"
_HOST = re.compile(r"[A-Za-z0-9_.:-]{1,253}|\[[0-9A-Fa-f:.]{2,45}\]")


@frozen
class AMISettings:
    host: str = "127.0.0.1"
    port: int = 5038
    username: str = ""
    secret: str = ""
    # Seconds without a byte from Asterisk before a Ping checks the link; an action's
    # answer is awaited `timeout` seconds (then the link is suspect).
    keepalive: float = 30.0
    timeout: float = 10.0

    @property
    def interfaces(self) -> Tuple[Any, ...]:
        return ()  # no interface out of the PBX: the phones' routes are ami:<endpoint>

    @property
    def endpoint(self) -> str:
        """The client endpoint string (twisted.internet.endpoints.clientFromString)."""
        host = self.host[1:-1] if self.host.startswith("[") else self.host
        host = host.replace(":", "\\:")  # an IPv6 address: its colons escaped
        return f"tcp:host={host}:port={self.port}"


def _host(text: str, note: Any) -> str:
    if not _HOST.fullmatch(text):
        raise ValueError(f"{text!r} is not a host name or address")
    return text


def _port(text: str, note: Any) -> int:
    if not re.fullmatch(r"[0-9]{1,5}", text) or not 1 <= int(text) <= 65535:
        raise ValueError(f"{text!r} is not a TCP port (1-65535)")
    return int(text)


def _ami_value(text: str, note: Any) -> str:
    # Login sends it as an AMI header line: no line break, and no leading or trailing
    # blank (Asterisk strips them, so the login would fail for no visible reason).
    if not text:
        raise ValueError("must not be empty")
    if re.search(r"[\x00-\x1f\x7f]", text):
        raise ValueError("control characters (such as a line break) are not allowed here")
    if text != text.strip():
        raise ValueError("must not begin or end with a blank")
    return text


KEYS = _keys(
    _Key("host", _host, (), _NO_INDEX),
    _Key("port", _port, (), _NO_INDEX),
    _Key("username", _ami_value, (), _NO_INDEX),
    _Key("secret", _ami_value, (), _NO_INDEX),
    _Key("keepalive", _duration, (), _NO_INDEX),
    _Key("timeout", _duration, (), _NO_INDEX),
)


def read(section: IniSection, context: _Context) -> AMISettings:
    settings = _read_section(section, context, KEYS)
    for required in ("username", "secret"):
        if required not in settings:
            raise context.error(section.line, None,
                                f"[ami] needs {required} (the manager.conf user websmsd logs in as)")
    return AMISettings(**_values_for(settings, "", AMISettings))


def interfaces(settings: AMISettings) -> List[Tuple[str, str, Tuple[str, ...], bool]]:
    return []


def check(sections: Mapping[str, IniSection], context: _Context) -> None:
    """What needs [ami] elsewhere in the file: [astqueue] delivery = ami (refused
    without it), and [phones] notify other than none (notices are sent with
    MessageSend: a warning, none is sent without it)."""
    if NAME in sections:
        return
    astqueue = sections.get("astqueue")
    key = astqueue.keys.get("delivery") if astqueue is not None else None
    if key is not None and key.plain is not None and key.plain.text.strip().lower() == "ami":
        raise context.error(key.line, "delivery",
                            "delivery = ami needs an [ami] section (host, port, username, secret)")
    phones = sections.get("phones")
    key = phones.keys.get("notify") if phones is not None else None
    if key is None:
        return
    values = [key.plain] if key.plain is not None else list((key.indexed or {}).values())
    for value in values:
        if value.text.strip().lower() not in ("", "none"):
            context.warn(value.line, "notify",
                         "notices are sent over AMI: without an [ami] section"
                         " (host, port, username, secret) none is sent")
            return
