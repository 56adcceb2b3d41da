"""`websmsd check-config FILE`: what the daemon will do with the file, secrets masked."""

from __future__ import annotations

import dataclasses
import re
from typing import Any, List, Optional, Sequence, Tuple

from typing import TYPE_CHECKING

from websmsd.config import web as _web
from websmsd.config.daemon import _loopback_only
from websmsd.config.reader import FILE, _is_secret
from websmsd.config.websmsd import InboundInterface, InboundSettings
from websmsd.config.values import _CONTROL
from websmsd.endpoints import parse_endpoint as _parse_endpoint
from websmsd.itsp import presets

if TYPE_CHECKING:
    from websmsd.config import Settings


# ---------------------------------------------------------------------------------------
# `websmsd check-config FILE`: what the daemon will do with the file, secrets masked.

_MASK = "****"


def report(settings: Settings) -> str:
    """The effective settings of every section and interface, then the warnings.

    Each value says where it came from: unmarked, the file; `(preset NAME)`, the
    interface's preset (also when the file repeats the preset's value); `(default)`.
    Each webhook interface begins with the URL to give the provider."""
    lines = [
        f"websmsd check-config: {settings.path}",
        "(values are as the file gives them, unless marked (preset NAME) or (default))",
    ]

    for interface in settings.outbound.interfaces:
        lines += ["", f"[websms] {_interface_title(interface.name)}"]
        lines += _fields(interface, skip=("name",))

    inbound = settings.inbound
    for interface in inbound.interfaces:
        lines += ["", f"[websmsd] {_interface_title(interface.name)}"]
        lines += _webhook_lines(settings, interface)
        lines += _fields(interface, skip=("name",))
    if inbound.interfaces != (inbound.default,):
        lines += ["", "[websmsd] default interface (when remt_addr and url_path choose none)"]
        lines += _fields(inbound.default, skip=("name",))
    lines += ["", "[websmsd] selection"] + [f"    {rule}" for rule in _selection_rules(inbound)]
    lines += _fields(inbound, only=("prox_addr", "prox_header"))

    from websmsd.config import CHANNEL_SECTIONS

    for module in CHANNEL_SECTIONS:
        section = settings.channels.get(module.NAME)
        if section is None:
            continue
        lines += ["", f"[{module.NAME}]"] + _fields(section, skip=("interfaces",))
        for interface in section.interfaces:
            lines += ["", f"[{module.NAME}] {_interface_title(interface.name)}"]
            lines += _fields(interface, skip=("name",))
    if settings.route.rules or settings.route.default:
        lines += ["", "[route]"] + [f"    rule {r.name}: {', '.join(r.prefixes)} -> "
                                    f"{', '.join(r.via)}" for r in settings.route.rules]
        lines += _fields(settings.route, skip=("rules",))
    if settings.web.users:
        # Users and what they see; never a password hash (not even masked field by field).
        lines += ["", "[web] users of the conversation pages"]
        lines += _web.report_lines(settings.web, settings.phones)
    lines += ["", "[astqueue]"] + _fields(settings.astqueue)
    lines += ["", "[daemon]"] + _fields(settings.daemon)

    lines += ["", "warnings:" if settings.warnings else "warnings: none"]
    lines += [f"    {warning}" for warning in settings.warnings]
    if settings.problems:
        lines += ["", "errors (the daemon starts, but this does not work):"]
        lines += [f"    {problem}" for problem in settings.problems]
    return "\n".join(lines) + "\n"


def _interface_title(name: str) -> str:
    return f"interface {name!r}" if name else "interface '' (the only one)"


def _fields(obj: Any, skip: Sequence[str] = (), only: Optional[Sequence[str]] = None,
) -> List[str]:
    """`name = value` for each field, marked by where it came from: unmarked, the file;
    `(preset NAME)`, the interface's preset; `(WEBSMSD_PORT)`; `(default)`, nothing gave
    it.  Marked by origin, never by value: a value the file writes is the file's, also
    when it equals the default."""
    origins = dict(getattr(obj, "origins", None) or ())
    out = []
    for spec in dataclasses.fields(obj):
        if spec.name in skip or spec.name in ("origins", "webhook_from_port") or (
                only is not None and spec.name not in only):
            continue
        value = getattr(obj, spec.name)
        origin = origins.get(spec.name)
        if not hasattr(obj, "origins") or spec.name == "name":
            mark = ""
        elif origin is None:
            mark = "  (default)"
        elif origin == FILE:
            mark = ""
        else:
            mark = f"  ({origin})"
        out.append(f"    {spec.name} = {_show(spec.name, value)}{mark}")
    return out


# -- the webhook URL to give the provider ------------------------------------------------

PUBLIC_ADDRESS = "<this machine's public address>"


def webhook_url(settings: Settings, interface: InboundInterface) -> Tuple[Optional[str], List[str]]:
    """The URL a provider must call to reach `interface`, and notes about it.

    Built from the first webhook_listen endpoint (http for tcp, https for ssl) and the
    interface's first url_path (else "/"); the host is sig_url's when set (the public
    URL behind a reverse proxy), else a placeholder for this machine's address.  None
    when nothing listens.  The notes say what stands in the provider's way."""
    listeners = settings.daemon.webhook_listen
    preset = presets.PRESETS.get(interface.preset or "")
    path = interface.url_path[0] if interface.url_path else "/"
    suffix = preset.url_suffix if preset else ""
    if not listeners:
        return None, ['nothing listens for webhooks: set webhook_listen (e.g. "tcp:8080")'
                      " or WEBSMSD_PORT"]
    kind, given = _parse_endpoint(listeners[0])
    notes = []
    if interface.sig_url:
        url = interface.sig_url + path + suffix
        notes.append("sig_url is the public URL (a reverse proxy forwards it here)")
    elif kind in ("tcp", "tcp6", "ssl"):
        scheme = "https" if kind == "ssl" else "http"
        url = f"{scheme}://{PUBLIC_ADDRESS}:{given['port']}{path}{suffix}"
    else:
        url = f"https://{PUBLIC_ADDRESS}{path}{suffix}"
        notes.append(f"{listeners[0]} is reached through a reverse proxy: give its URL")
    proxy = _loopback_only(listeners)
    if proxy is not None:
        if interface.sig_url:
            notes.append(f"the listener is bound to loopback ({proxy}) behind that proxy")
        else:
            notes.append(
                f"the listener is bound to loopback only ({listeners[0]}): the provider"
                " cannot reach it; fine behind a reverse proxy on this machine, then give the"
                " proxy's public URL (and set sig_url to it when signatures are checked)")
    elif kind in ("tcp", "tcp6") and not interface.sig_url:
        notes.append("plain http: texts cross the internet unencrypted; prefer an ssl:"
                     " listener or a TLS reverse proxy")
    return url, notes


def _webhook_lines(settings: Settings, interface: InboundInterface) -> List[str]:
    url, notes = webhook_url(settings, interface)
    lines = [f"    webhook URL for the provider: {url if url else '(none)'}"]
    preset = presets.PRESETS.get(interface.preset or "")
    if preset and preset.portal:
        lines.append(f"      where: {preset.title}: {preset.portal}")
    lines += [f"      note: {note}" for note in notes]
    return lines


def _show(name: str, value: Any) -> str:
    if value is None:
        return "(unset)"
    if _is_secret(name) and value != "":
        return _MASK
    if name == "val_static":
        return ",".join(_mask_pair(entry) for entry in value.split(","))
    if isinstance(value, tuple):
        return ", ".join(str(item) for item in value) if value else "(none)"
    if isinstance(value, float):
        return f"{value:g}s"
    if name == "filemode":
        return f"0{value:o}"
    if isinstance(value, str) and (value == "" or _CONTROL.search(value) or value != value.strip()):
        return repr(value)
    return str(value)


def _mask_pair(entry: str) -> str:
    """A val_static pair with its value masked when the key looks like a credential."""
    key, separator, value = entry.partition("=")
    if separator and (_is_secret(key) or re.search(r"key|auth|pass|sig", key, re.IGNORECASE)):
        return f"{key}={_MASK}"
    return entry


def _selection_rules(inbound: InboundSettings) -> List[str]:
    rules = []
    if inbound.remt_addr_indexed:
        rules.append("remt_addr is per interface: the last interface whose remt_addr holds the source"
                     " is chosen; a source no interface lists is refused")
    elif inbound.remt_addr_plain is not None:
        sources = _show("remt_addr", inbound.remt_addr_plain)
        rules.append(f"remt_addr: every request must come from {sources} (this chooses no interface)")
    else:
        rules.append("remt_addr is unset: every source is allowed")
    if inbound.url_path_indexed:
        rules.append("url_path is per interface: unless remt_addr chose one, the last interface whose"
                     " url_path lists the path is chosen; a path no interface lists is refused")
    elif inbound.url_path_plain is not None:
        paths = _show("url_path", inbound.url_path_plain)
        rules.append(f"url_path: the path must be one of {paths} (this chooses no interface)")
    else:
        rules.append("url_path is unset: every path is allowed")
    rules.append("an interface chosen by remt_addr also needs the path in its own url_path, if any")
    header = inbound.proxy_header_name
    if inbound.prox_addr and header:
        rules.append(f"behind a proxy in prox_addr, the client address is read from {header}")
    else:
        rules.append("no proxy is trusted: the client address is the TCP peer")
    return rules
