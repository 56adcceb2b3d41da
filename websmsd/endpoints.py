"""Twisted endpoint strings (``tcp:8080:interface=127.0.0.1``), read without Twisted.

The config checks every listener at start with `parse_endpoint`, the `websms` command
finds the local API with it, and service.py adds the [daemon] TLS files to ``ssl:``
endpoints.  Parsed as ``twisted.internet.endpoints.serverFromString`` splits them.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Any, Dict, List, Optional, Tuple

PORT = re.compile(r"[0-9]{1,5}")


def is_ip(text: str, version: Optional[int] = None) -> bool:
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return False
    return version is None or address.version == version


# Server endpoint strings as twisted.internet.endpoints.serverFromString reads them,
# checked here without Twisted: the parameters of each type, in positional order.
_ENDPOINT_PARAMETERS = {
    "tcp": ("port", "interface", "backlog"),
    "tcp6": ("port", "backlog", "interface"),
    "ssl": ("port", "privateKey", "certKey", "sslmethod", "interface", "backlog",
            "extraCertChain", "dhParameters"),
    "unix": ("address", "mode", "backlog", "lockfile"),
    "systemd": ("domain", "index"),
}


_ENDPOINT_REQUIRED = {"tcp": ("port",), "tcp6": ("port",), "ssl": ("port",),
                      "unix": ("address",), "systemd": ("domain", "index")}


def _check_endpoint_parameter(kind: str, name: str, value: str) -> None:
    if name == "port":
        if not (PORT.fullmatch(value) and int(value) <= 65535):
            raise ValueError(f"port {value!r} is not a TCP port (0-65535)")
    elif name in ("backlog", "index"):
        if not re.fullmatch(r"[0-9]+", value) or (name == "backlog" and int(value) < 1):
            raise ValueError(f"{name} {value!r} is not a whole number")
    elif name == "interface":
        if value and not is_ip(value, version=6 if kind == "tcp6" else None):
            raise ValueError(
                f"interface {value!r} is not an IP{'v6' if kind == 'tcp6' else ''} address"
                " (write a ':' in it as '\\:')"
            )
    elif name == "mode":
        if not re.fullmatch(r"[0-7]{3,4}", value):
            raise ValueError(f"mode {value!r} is not an octal file mode")
    elif name == "lockfile":
        if value not in ("0", "1"):
            raise ValueError(f"lockfile {value!r} is not 0 or 1")
    elif name == "domain":
        if value not in ("INET", "INET6", "UNIX"):
            raise ValueError(f"domain {value!r} is not INET, INET6 or UNIX")
    elif not value:
        raise ValueError(f"{name} is empty")


def split_endpoint(description: str) -> Tuple[List[str], Dict[str, str]]:
    """Positional and keyword parts, split as Twisted splits them: ':' between parts,
    the first '=' of a part between name and value, '\\' escaping the next character."""
    parts: List[List[str]] = [[]]
    current = ""
    separators = ":="
    chars = iter(description)
    for char in chars:
        if char == "\\":
            escaped = next(chars, None)
            if escaped is None:
                raise ValueError("ends in a lone backslash")
            current += escaped
        elif char in separators:
            parts[-1].append(current)
            current = ""
            if char == ":":
                parts.append([])
            separators = ":=" if char == ":" else ":"
        else:
            current += char
    parts[-1].append(current)
    positional, keywords = [], {}
    for part in parts:
        if len(part) == 1:
            positional.append(part[0])
        elif part[0] in keywords:
            raise ValueError(f"{part[0]}= is given twice")
        else:
            keywords[part[0]] = part[1]
    return positional, keywords


def parse_endpoint(description: str) -> Tuple[str, Dict[str, str]]:
    """The type of a server endpoint string and its parameters by name, or ValueError."""
    positional, keywords = split_endpoint(description)
    kind, positional = (positional[0], positional[1:]) if positional else ("", [])
    names = _ENDPOINT_PARAMETERS.get(kind)
    if names is None:
        raise ValueError(
            f"{description!r} is not an endpoint: it starts with tcp:, tcp6:, ssl:, unix: or systemd:"
            " (for example tcp:8080:interface=127.0.0.1, in double quotes)"
        )
    # Too many parts usually means a ':' in a value (an IPv6 address) left unescaped.
    escape_hint = "; write a ':' inside a value as '\\:'"
    if len(positional) > len(names):
        raise ValueError(
            f"a {kind} endpoint has at most {len(names)} parameters ({', '.join(names)}){escape_hint}"
        )
    given = dict(zip(names, positional))
    for name, value in keywords.items():
        if name not in names:
            raise ValueError(
                f"a {kind} endpoint has no parameter {name!r} (it has {', '.join(names)})"
            )
        if name in given:
            raise ValueError(f"{name} is given twice{escape_hint}")
        given[name] = value
    for name in _ENDPOINT_REQUIRED[kind]:
        if name not in given:
            raise ValueError(f"a {kind} endpoint needs its {name}")
    for name, value in given.items():
        _check_endpoint_parameter(kind, name, value)
    return kind, given


def client_address(description: str) -> Tuple[str, int]:
    """(host, port) to connect to a `tcp:`/`tcp6:` listener given as an endpoint string:
    a listener on every address is reached on loopback."""
    kind, given = parse_endpoint(description)
    if kind not in ("tcp", "tcp6", "ssl"):
        raise ValueError(f"{description!r} is no TCP listener")
    host = given.get("interface", "")
    if host in ("", "0.0.0.0"):
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    return host, int(given["port"])


def tcp_client(reactor: Any, host: str, port: int, timeout: float = 30) -> Any:
    """A Twisted client endpoint to host:port.  An IP address connects as it is; a name
    goes through HostnameEndpoint (both address families, the first that answers).
    HostnameEndpoint would look up an address too, with getaddrinfo in a thread of the
    reactor's pool: a thread each (kept, with its memory) for nothing."""
    from twisted.internet import endpoints

    if is_ip(host, 4):
        return endpoints.TCP4ClientEndpoint(reactor, host, port, timeout=timeout)
    if is_ip(host, 6):
        return endpoints.TCP6ClientEndpoint(reactor, host, port, timeout=timeout)
    return endpoints.HostnameEndpoint(reactor, host, port, timeout=timeout)
