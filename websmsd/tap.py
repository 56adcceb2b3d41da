"""`twistd websmsd`: command-line options and makeService."""

from __future__ import annotations

import os
import sys

from twisted.python import usage

DEFAULT_CONFIGS = ("/etc/websmsd/websms.conf", "/etc/asterisk/websms.conf")


def default_config() -> str:
    """The first of the usual places that exists (the PHP read /etc/asterisk)."""
    for path in DEFAULT_CONFIGS:
        if os.path.exists(path):
            return path
    return DEFAULT_CONFIGS[0]


class Options(usage.Options):
    synopsis = "[--config FILE]"
    longdesc = ("websmsd carries SMS between Asterisk and ITSPs: webhooks become call "
                "files, FastAGI requests become HTTP requests.")
    optParameters = [
        ["config", "c", None,
         "websms.conf to read (default: /etc/websmsd/websms.conf, else "
         "/etc/asterisk/websms.conf)"],
    ]

    def parseArgs(self, *args: str) -> None:
        if args:
            raise usage.UsageError(f"unexpected argument {args[0]!r}: use --config FILE")

    def postOptions(self) -> None:
        if self["config"] is None:
            self["config"] = default_config()
        elif not self["config"]:
            raise usage.UsageError("--config needs a file name")


def _status_url(description: str) -> str:
    from websmsd.endpoints import client_address

    try:
        host, port = client_address(description)
    except ValueError:
        return "(not a TCP listener)"
    scheme = "https" if description.startswith("ssl:") else "http"
    return f"{scheme}://[{host}]:{port}/" if ":" in host else f"{scheme}://{host}:{port}/"


def makeService(options: Options):
    from websmsd.config import ConfigError, load
    from websmsd.service import make_service

    try:
        settings = load(options["config"])
    except (ConfigError, OSError) as e:
        # twistd prints a traceback for anything else; a config error deserves one line.
        sys.stderr.write(f"websmsd: {e}\n")
        raise SystemExit(2)
    from twisted.logger import Logger

    log = Logger(namespace="websmsd")
    log.info("websmsd reading {path}", path=settings.path)
    for warning in settings.warnings:  # each names file:line already
        log.warn("{warning}", warning=warning)
    for problem in settings.problems:
        log.error("{path}: {problem}", path=settings.path, problem=problem)
    for description in settings.daemon.status_listen:
        log.info("status page and API: {url} ({description})",
                 url=_status_url(description), description=description)
    # The store's writer thread and the reactor share the GIL: with the default 5 ms
    # switch interval a webhook can wait that long behind a commit being prepared.
    sys.setswitchinterval(0.0005)
    return make_service(settings)
