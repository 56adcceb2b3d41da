"""The websms.conf reader: PHP ini text in, typed settings out.

websms.conf files written for the PHP WebSMS service must work unchanged, so the syntax
is that of PHP's ``parse_ini_file(file, true)``, quirks included (see `ini`).  Where PHP
silently ignored or guessed (an unknown key, a bad value, an older key name), this
reader refuses with ``file:line: key: why``, or reads the value and says so in
``Settings.warnings``.

One module per section: `websms` ([websms], outbound ITSPs), `websmsd` ([websmsd],
webhooks), `astqueue`, `daemon`, `route`, `phones`, `web` (browser users); and one per
channel section, listed in `CHANNEL_SECTIONS`: a new channel's section is one new module
with NAME, KIND, KEYS, read(section, context) (settings with `interfaces`, each with
`name` and `number`) and interfaces(settings) (what routing needs).  Pure Python (no
Twisted): the only I/O is reading the one file.

    settings = load("/etc/websmsd/websms.conf")   # or raises ConfigError
    print(report(settings))                        # what `websmsd check-config` prints
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import field
from typing import Any, Dict, List, Mapping, Optional, Tuple

from websmsd.config import ami as _ami
from websmsd.config import astqueue as _astqueue
from websmsd.config import daemon as _daemon
from websmsd.config import goip as _goip
from websmsd.config import phones as _phones
from websmsd.config import route as _route
from websmsd.config import smsgate as _smsgate
from websmsd.config import smsgateway as _smsgateway
from websmsd.config import smssync as _smssync
from websmsd.config import websms as _websms
from websmsd.config import web as _web
from websmsd.config import websmsd as _websmsd
from websmsd.config import yeastar as _yeastar
from websmsd.config.astqueue import AstQueueSettings
from websmsd.config.daemon import DaemonSettings
from websmsd.config.ini import ConfigError, parse_ini
from websmsd.config.phones import PhonesSettings
from websmsd.config.reader import _Context, _index_lines
from websmsd.config.report import report, webhook_url
from websmsd.config.route import RouteSettings
from websmsd.config.web import WebSettings, WebUser
from websmsd.config.values import resp_check_pattern
from websmsd.config.websms import OutboundInterface, OutboundSettings
from websmsd.config.websmsd import InboundInterface, InboundSettings
from websmsd.record import frozen

__all__ = [
    "ConfigError", "Settings", "load", "loads", "report", "parse_ini", "resp_check_pattern",
    "webhook_url", "SECTIONS", "AstQueueSettings", "DaemonSettings", "InboundInterface",
    "InboundSettings", "OutboundInterface", "OutboundSettings", "RouteSettings", "WebSettings",
    "WebUser",
]

# The channel sections: each is an interface kind of its own (goip:sim1, ...).
CHANNEL_SECTIONS: Tuple[Any, ...] = (_goip, _yeastar, _smssync, _smsgateway, _smsgate, _ami)

# Every section websms.conf may have, by name: each module has its KEYS and a read().
SECTIONS = {
    "websms": _websms,
    "websmsd": _websmsd,
    "astqueue": _astqueue,
    "daemon": _daemon,
    "route": _route,
    "phones": _phones,
    "web": _web,
    **{m.NAME: m for m in CHANNEL_SECTIONS},
}


@frozen
class Settings:
    """What websms.conf means: one object per section."""

    path: str = ""
    outbound: OutboundSettings = field(default_factory=OutboundSettings)
    inbound: InboundSettings = field(default_factory=InboundSettings)
    astqueue: AstQueueSettings = field(default_factory=AstQueueSettings)
    daemon: DaemonSettings = field(default_factory=DaemonSettings)
    route: RouteSettings = field(default_factory=RouteSettings)
    phones: PhonesSettings = field(default_factory=PhonesSettings)
    # Who may read and answer SMS in the browser, from which own numbers.
    web: WebSettings = field(default_factory=WebSettings)
    # The channel sections present, by section name (CHANNEL_SECTIONS).
    channels: Mapping[str, Any] = field(default_factory=dict)
    # What the reader noticed but accepted (older key names, PHP quirks), for the log
    # and `websmsd check-config`.
    warnings: Tuple[str, ...] = ()
    # What will not work although the daemon starts (no interface for outbound SMS):
    # logged as errors at start; check-config lists them and exits 1.
    problems: Tuple[str, ...] = ()

    def interfaces(self) -> List[Tuple[str, str, Tuple[str, ...], bool]]:
        """Every interface that can carry a message from the PBX, in file order:
        (name, kind, its own numbers, whether it normalises numbers itself)."""
        found = [(i.name, "itsp", i.number, bool(i.num_country))
                 for i in self.outbound.interfaces]
        for module in CHANNEL_SECTIONS:
            if module.NAME in self.channels:
                found += module.interfaces(self.channels[module.NAME])
        return found


def loads(
    text: str, path: str = "<string>", environ: Optional[Mapping[str, str]] = None
) -> Settings:
    """Settings from websms.conf text, or ConfigError naming file, line and key."""
    environ = os.environ if environ is None else environ
    ini = parse_ini(text, path, environ)
    context = _Context(path, list(ini.warnings))
    for section in ini.sections.values():
        if section.name not in SECTIONS:
            raise context.error(
                section.line, None,
                f"unknown section [{section.name}]; websms.conf has "
                + ", ".join(f"[{name}]" for name in SECTIONS),
            )
    sections = ini.sections
    outbound = _websms.read(sections.get("websms"), context)
    lines = _websmsd._InboundLines()
    inbound = _websmsd.read(sections.get("websmsd"), context, lines)
    astqueue = _astqueue.read(sections.get("astqueue"), context)
    daemon = _daemon.read(sections.get("daemon"), environ, context)
    _daemon._warn_behind_a_proxy(inbound, daemon, lines, context)
    _check_unique_names(sections, context)
    channels = {m.NAME: m.read(sections[m.NAME], context) for m in CHANNEL_SECTIONS
                if m.NAME in sections}
    interfaces = {i.name: ("websms", i) for i in outbound.interfaces}
    for m in CHANNEL_SECTIONS:
        if m.NAME in channels:
            interfaces.update((name, (m.NAME, None)) for name, *_ in m.interfaces(channels[m.NAME]))
    route = _route.read(sections.get("route"), context, interfaces)
    phones = _phones.read(sections.get("phones"), context)
    web = _web.read(sections.get("web"), context, phones)
    if web.users and all(_loopback_only(d) for d in daemon.status_listen):
        context.warn(None, None, "[web] has users, but [daemon] status_listen listens on "
                                 "loopback only: they cannot reach /login from the LAN (listen"
                                 " on the LAN, preferably ssl:, or put a proxy in front)")
    _ami.check(sections, context)  # what needs [ami]: delivery = ami, notify
    if not path.startswith("<"):
        base = os.path.dirname(os.path.abspath(path))
        outbound, astqueue, daemon = _relative_to(base, outbound, astqueue, daemon)
    settings = Settings(
        path=path, outbound=outbound, inbound=inbound, astqueue=astqueue, daemon=daemon,
        route=route, phones=phones, web=web, channels=channels, warnings=tuple(context.warnings),
    )
    problems = []
    if not settings.interfaces():
        problems.append(NO_OUTBOUND)
    return dataclasses.replace(settings, problems=tuple(problems))


NO_OUTBOUND = ("no interface configured for outbound SMS: every message from the PBX (FastAGI,"
               " websms, the API) fails; give [websms] a url_host (or configure a GSM gateway"
               " or a phone)")


def _loopback_only(description: str) -> bool:
    """Whether a listen endpoint serves this machine only (loopback, a UNIX socket)."""
    parts = [p.replace("\0", ":") for p in description.replace("\\:", "\0").split(":")]
    if parts[0] == "unix":
        return True
    for part in parts:
        if part.startswith("interface="):
            host = part[len("interface="):].strip("[]")
            return host.startswith("127.") or host in ("localhost", "::1")
    return False


def _check_unique_names(sections: Mapping[str, Any], context: _Context) -> None:
    """An interface name says which interface WEBSMS_INDEX and [route] mean: unique
    across the sections that carry messages ([websmsd] names may repeat [websms]'s, the
    two sides of one provider)."""
    seen: Dict[str, str] = {}
    for name in ("websms",) + tuple(m.NAME for m in CHANNEL_SECTIONS):
        if name not in sections:
            continue
        for index, line in _index_lines(sections[name]).items():
            if index in seen and seen[index] != name:
                raise context.error(
                    line, None, f"interface name {index!r} is used in [{seen[index]}] and"
                    f" [{name}]: interface names must be unique (WEBSMS_INDEX names one)")
            seen.setdefault(index, name)


def _relative_to(base: str, outbound: OutboundSettings, astqueue: AstQueueSettings,
                 daemon: DaemonSettings) -> Tuple[OutboundSettings, AstQueueSettings, DaemonSettings]:
    """Make relative file names relative to the directory of websms.conf, not to
    wherever the daemon was started from."""

    def absolute(value: Optional[str]) -> Optional[str]:
        return value if not value or os.path.isabs(value) else os.path.normpath(os.path.join(base, value))

    outbound = OutboundSettings(tuple(
        dataclasses.replace(i, tls_ca=absolute(i.tls_ca)) for i in outbound.interfaces))
    astqueue = dataclasses.replace(
        astqueue, outgoingdir=absolute(astqueue.outgoingdir), stagingdir=absolute(astqueue.stagingdir))
    daemon = dataclasses.replace(
        daemon, store=absolute(daemon.store), tls_key=absolute(daemon.tls_key),
        tls_cert=absolute(daemon.tls_cert))
    return outbound, astqueue, daemon


def load(path: "str | os.PathLike[str]", environ: Optional[Mapping[str, str]] = None) -> Settings:
    """Settings from the websms.conf file at `path` (UTF-8, BOM and CRLF accepted)."""
    path = os.fspath(path)
    try:
        with open(path, "rb") as file:
            data = file.read()
    except OSError as exc:
        raise ConfigError(path, None, None, f"cannot read it: {exc.strerror or exc}") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise ConfigError(path, line, None, "not UTF-8 text") from None
    return loads(text, path, environ)
