"""[astqueue]: how inbound messages become Asterisk call files."""

from __future__ import annotations

import os
from dataclasses import field
from typing import Optional, Tuple

from websmsd.config.ini import IniSection
from websmsd.config.reader import _Context, _Key, _keys, _read_section, _values_for
from websmsd.config.values import (_archive, _choice, _call_file_value, _count, _directory, _file_mode,
                                   _file_owner, _message_encode, _optional_call_file_value,
                                   _priority)
from websmsd.record import frozen


@frozen
class AstQueueSettings:
    """[astqueue]: how inbound messages become Asterisk call files."""

    outgoingdir: str = "/var/spool/asterisk/outgoing"
    stagingdir: str = "/var/spool/asterisk/staging"
    waittime: str = "45"
    maxretries: str = "0"
    retrytime: str = "300"
    archive: str = "no"
    channel_context: str = "default"
    context: str = "default"
    priority: str = "1"
    message_encode: str = "rfc3986"
    account: Optional[str] = None
    application: Optional[str] = None
    data: Optional[str] = None
    # Known to the PHP but without effect there; websmsd applies them to each call file
    # so that an Asterisk running as another user can read and delete it.
    filemode: Optional[int] = None
    fileowner: Optional[str] = None  # "user" or "user:group"
    # How an inbound SMS reaches the phones: "callfile" (the dialplan decides, as the
    # PHP did) or "ami" (MessageSend to each [phones] endpoint that has the number).
    delivery: str = "callfile"
    # Which fields websms.conf (or a preset) gave, for check-config: ((name, origin), ...).
    origins: Tuple[Tuple[str, str], ...] = field(default=(), compare=False, repr=False)

    @property
    def donedir(self) -> str:
        """Where Asterisk archives call files (`Archive: yes`): pbx_spool's
        <spooldir>/outgoing_done, next to outgoingdir."""
        return os.path.join(os.path.dirname(os.path.normpath(self.outgoingdir)), "outgoing_done")

    @property
    def archives(self) -> bool:
        """Does Asterisk archive our call files (and append their Status)?  Asterisk
        reads Archive with ast_true()."""
        return self.archive.strip().lower() in ("yes", "true", "y", "t", "1", "on")


_NO_INDEX = "cannot be indexed: it has one value, not one per interface"


KEYS = _keys(
    _Key("outgoingdir", _directory, (), _NO_INDEX),
    _Key("stagingdir", _directory, (), _NO_INDEX),
    _Key("waittime", _count, (), _NO_INDEX),
    _Key("maxretries", _count, (), _NO_INDEX),
    _Key("retrytime", _count, (), _NO_INDEX),
    _Key("archive", _archive, (), _NO_INDEX, reads_booleans=True),
    _Key("channel_context", _call_file_value, (), _NO_INDEX),
    _Key("context", _call_file_value, (), _NO_INDEX),
    _Key("priority", _priority, (), _NO_INDEX),
    _Key("message_encode", _message_encode, (), _NO_INDEX),
    _Key("account", _optional_call_file_value, (), _NO_INDEX),
    _Key("application", _optional_call_file_value, (), _NO_INDEX),
    _Key("data", _optional_call_file_value, (), _NO_INDEX),
    _Key("filemode", _file_mode, (), _NO_INDEX),
    _Key("fileowner", _file_owner, (), _NO_INDEX),
    _Key("delivery", _choice("callfile", "ami"), (), _NO_INDEX),
)


# -- [astqueue] --------------------------------------------------------------------------


def read(section: Optional[IniSection], context: _Context) -> AstQueueSettings:
    if section is None:
        context.warn(None, None, "no [astqueue] section: call files use the defaults"
                     " (the PHP service failed every webhook without it)")
        return AstQueueSettings()
    settings = _read_section(section, context, KEYS)
    astqueue = AstQueueSettings(**_values_for(settings, "", AstQueueSettings))
    if os.path.normpath(astqueue.stagingdir) == os.path.normpath(astqueue.outgoingdir):
        where = (settings.get("stagingdir") or settings["outgoingdir"]).plain
        raise context.error(
            where.line, where.label,
            "stagingdir and outgoingdir are the same: Asterisk would read call files half written",
        )
    return astqueue
