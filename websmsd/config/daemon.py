"""[daemon]: what is new in websmsd (listeners, store, retry policy, status access)."""

from __future__ import annotations

import ipaddress
import re
from dataclasses import field
from typing import Any, Dict, Mapping, Optional, Sequence, Tuple

from websmsd.config.ini import IniSection
from websmsd.config.astqueue import _NO_INDEX
from websmsd.config.reader import FILE, _Context, _Key, _keys, _read_section, _Setting, _which
from websmsd.config.websmsd import InboundSettings, _InboundLines
from websmsd.config.values import (_duration, _listener, _optional_text, _positive_integer,
                                   _size, _text)
from websmsd.endpoints import parse_endpoint as _parse_endpoint
from websmsd.net import Network
from websmsd.record import frozen


@frozen
class DaemonSettings:
    """[daemon]: what is new in websmsd (listeners, store, retry policy)."""

    # Endpoint strings (twisted.internet.endpoints.serverFromString).  The webhook
    # listener defaults to WEBSMSD_PORT (all interfaces, as php -S 0.0.0.0 did) when
    # that variable is numeric, else to none at all, as in the PHP service.
    webhook_listen: Tuple[str, ...] = ()
    agi_listen: Tuple[str, ...] = ("tcp:4573:interface=127.0.0.1",)
    status_listen: Tuple[str, ...] = ("tcp:8480:interface=127.0.0.1",)
    # TLS for every ssl: webhook endpoint that names no key/cert itself.
    tls_key: Optional[str] = None
    tls_cert: Optional[str] = None
    store: str = "/var/lib/websmsd/websmsd.sqlite3"
    max_body: int = 1024 * 1024  # bytes of a webhook request body
    http_timeout: float = 30.0  # seconds for one outbound HTTP request
    agi_wait: float = 10.0  # seconds a FastAGI session waits for the first attempt
    retry_base: float = 30.0  # first retry delay, doubled on each attempt...
    retry_max: float = 3600.0  # ...up to this
    max_attempts: int = 10  # then the message fails for good
    max_age: float = 2 * 86400.0  # or once it is this old (seconds)
    spool_poll: float = 0.5  # seconds between checks that Asterisk took a call file part
    # The status page and local API answer loopback clients freely; any other client
    # must give HTTP Basic credentials (status_user + status_password) or the token
    # (Authorization: Bearer <status_token>).  Without either, only loopback is served.
    status_user: Optional[str] = None
    status_password: Optional[str] = None
    status_token: Optional[str] = None
    # webhook_listen came from WEBSMSD_PORT (the PHP service's way), not from the file.
    webhook_from_port: bool = False
    # Which fields websms.conf (or a preset) gave, for check-config: ((name, origin), ...).
    origins: Tuple[Tuple[str, str], ...] = field(default=(), compare=False, repr=False)



_LISTENER_KEYS = ("webhook_listen", "agi_listen", "status_listen")


KEYS = _keys(
    *(_Key(name, _listener, reads_booleans=True) for name in _LISTENER_KEYS),
    _Key("tls_key", _optional_text, (), _NO_INDEX),
    _Key("tls_cert", _optional_text, (), _NO_INDEX),
    _Key("store", _text, (), _NO_INDEX),
    _Key("max_body", _size, (), _NO_INDEX),
    _Key("http_timeout", _duration, (), _NO_INDEX),
    _Key("agi_wait", _duration, (), _NO_INDEX),
    _Key("retry_base", _duration, (), _NO_INDEX),
    _Key("retry_max", _duration, (), _NO_INDEX),
    _Key("max_attempts", _positive_integer, (), _NO_INDEX),
    _Key("max_age", _duration, (), _NO_INDEX),
    _Key("spool_poll", _duration, (), _NO_INDEX),
    _Key("status_user", _optional_text, (), _NO_INDEX),
    _Key("status_password", _optional_text, (), _NO_INDEX),
    _Key("status_token", _optional_text, (), _NO_INDEX),
)


# -- [daemon] ----------------------------------------------------------------------------


def read(
    section: Optional[IniSection], environ: Mapping[str, str], context: _Context
) -> DaemonSettings:
    settings = _read_section(section, context, KEYS) if section is not None else {}
    values: Dict[str, Any] = {}
    for name, setting in settings.items():
        if name in _LISTENER_KEYS:
            # Several listeners via key[] or key[name]; "" and none add none.
            values[name] = tuple(read.value for read in setting.reads() if read.value is not None)
        else:
            values[name] = setting.plain.value
    values["origins"] = tuple(sorted((name, FILE) for name in settings))
    port = environ.get("WEBSMSD_PORT")
    if "webhook_listen" not in values:
        values["webhook_listen"] = _webhook_from_port(port, context)
        values["webhook_from_port"] = bool(values["webhook_listen"])
        if values["webhook_from_port"]:
            values["origins"] += (("webhook_listen", "WEBSMSD_PORT"),)
    elif port:
        context.warn(settings["webhook_listen"].reads()[0].line, "WEBSMSD_PORT",
                     "ignored: [daemon] webhook_listen is set")
    _check_tls(settings, values, context)
    daemon = DaemonSettings(**values)
    if daemon.retry_base > daemon.retry_max:
        read = (settings.get("retry_base") or settings["retry_max"]).plain
        raise context.error(
            read.line, read.label,
            f"retry_base ({daemon.retry_base:g}s) is longer than retry_max ({daemon.retry_max:g}s)",
        )
    return daemon


def _loopback_only(listeners: Sequence[str]) -> Optional[str]:
    """The loopback address every webhook listener is bound to (the address a reverse
    proxy on this machine connects from), or None if some listener is reachable from
    elsewhere (or is no TCP listener)."""
    seen = set()
    for description in listeners:
        kind, given = _parse_endpoint(description)
        interface = given.get("interface", "")
        if kind not in ("tcp", "tcp6", "ssl") or not interface:
            return None
        address = ipaddress.ip_address(interface)
        if not address.is_loopback:
            return None
        seen.add(str(address))
    return min(seen) if len(seen) == 1 else None


def _warn_behind_a_proxy(
    inbound: InboundSettings, daemon: DaemonSettings, lines: _InboundLines, context: _Context
) -> None:
    """Settings that make every webhook fail once the listener sits behind a reverse
    proxy, the one case where websmsd knows the proxy's address: a listener bound to
    loopback only is reached through a proxy on this machine (or by no one)."""
    proxy = _loopback_only(daemon.webhook_listen)
    if proxy is None:
        return
    listener = daemon.webhook_listen[0]
    address = ipaddress.ip_address(proxy)
    lists = [inbound.remt_addr_plain] if inbound.remt_addr_plain is not None else []
    lists += [i.remt_addr for i in inbound.interfaces if inbound.remt_addr_indexed and i.remt_addr]
    trusted = bool(inbound.proxy_header_name) and _in(address, inbound.prox_addr)
    if lists and lines.remt_addr and not trusted and not any(_in(address, n) for n in lists):
        context.warn(
            lines.remt_addr.line, lines.remt_addr.label,
            f"the webhook listens on loopback only ({listener}), so requests come from a"
            f" reverse proxy on {proxy}, which prox_addr does not trust: remt_addr refuses"
            f" every webhook (403); add {proxy}/{address.max_prefixlen} to prox_addr (the"
            " proxy must send X-Forwarded-For)",
        )
    for name, read in lines.sig_method.items():
        interface = next((i for i in (*inbound.interfaces, inbound.default) if i.name == name), None)
        if read.value in ("twilio", "plivo") and interface is not None and not interface.sig_url:
            context.warn(
                read.line, read.label,
                f"the webhook listens on loopback only ({listener}), behind a reverse proxy:"
                f" {read.value} signs the public URL it calls, which this daemon cannot see;"
                f" set sig_url to it (https://your.public.host) or every webhook{_which(name)}"
                " is refused (403)",
            )


def _in(address: Any, networks: Sequence[Network]) -> bool:
    return any(address.version == n.version and address in n for n in networks)


def _webhook_from_port(port: Optional[str], context: _Context) -> Tuple[str, ...]:
    """WEBSMSD_PORT as the PHP service used it: `php -S 0.0.0.0:$WEBSMSD_PORT` when it is
    numeric, no web server at all when it is undefined or not numeric."""
    if not port:
        return ()
    if not re.fullmatch(r"[0-9]+", port):
        context.warn(
            None, "WEBSMSD_PORT",
            f"{port!r} is not a number: no webhook listener (as in the PHP service)",
        )
        return ()
    if not 1 <= int(port) <= 65535:
        raise context.error(
            None, "WEBSMSD_PORT", f"{port} (from the environment) is not a TCP port (1-65535)"
        )
    return (f"tcp:{int(port)}",)


def _check_tls(
    settings: Mapping[str, _Setting], values: Mapping[str, Any], context: _Context
) -> None:
    if values.get("tls_cert") and not values.get("tls_key"):
        read = settings["tls_cert"].plain
        raise context.error(read.line, read.label, "tls_cert needs a tls_key")
    for name in _LISTENER_KEYS:
        for read in settings[name].reads() if name in settings else ():
            if read.value is None:
                continue
            kind, given = _parse_endpoint(read.value)
            if kind == "ssl" and "privateKey" not in given and not values.get("tls_key"):
                raise context.error(
                    read.line, read.label,
                    "an ssl endpoint needs privateKey=... or a tls_key in [daemon]",
                )
